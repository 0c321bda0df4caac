"""The port-ban register end to end on SQLite and PostgreSQL: signed feeds, atomic loads, the CLI,
screening, and what a new ban does to badges and nominations (issue 4, "Port bans")."""

from __future__ import annotations

import io
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from identity.bans.loader import LoadResult, load_feed
from identity.bans.persons import NationalIdRefused, set_national_id
from identity.bans.pull import BanFeedPuller
from identity.bans.screening import StoredBanScreening
from identity.domain.bans import FeedRefusal, FeedRefused
from quaygate import cli
from quaygate.crypto import keyed_hash
from quaygate.schema import (
    audit_log,
    badges,
    ban_feed_state,
    memberships,
    metadata,
    persons,
    port_bans,
    webhook_deliveries,
    webhook_subscriptions,
)
from release_service.adapters.sqla.bans import SqlPortBanLookup
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain.errors import DomainError, ErrorCode
from release_service.services import issue, nominate

from .ban_register import Register, ban, changes, national_number, snapshot
from .factories import do, issue_cmd, now, port

PEPPER = b"test-pepper-one"
DAY = timedelta(days=1)


@pytest.fixture
def register() -> Register:
    return Register()


def _load(engine: sa.Engine, register: Register, payload: dict[str, Any] | bytes, **kw: Any) -> LoadResult:
    raw = payload if isinstance(payload, bytes) else register.sign(payload)
    return load_feed(engine, raw, key=register.public_key, pepper=kw.pop("pepper", PEPPER),
                     now=kw.pop("now", now()), max_feed_age=kw.pop("max_feed_age", DAY))


def _list(engine: sa.Engine) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        bans = [tuple(r) for r in conn.execute(sa.select(port_bans).order_by(port_bans.c.reference))]
        state = [tuple(r) for r in conn.execute(sa.select(ban_feed_state))]
    return bans, state


def _refs(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(port_bans.c.reference).order_by(port_bans.c.reference)).scalars())


def _person(engine: sa.Engine, number: str | None, pepper: bytes = PEPPER) -> uuid.UUID:
    pid = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(persons.insert().values(id=pid, given_name="Piet", family_name="Janssens", created_at=now(),
                                             national_id_hash=keyed_hash(pepper, number) if number else None))
    return pid


def _link(engine: sa.Engine, person_id: uuid.UUID, number: str) -> None:
    with engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == person_id)
                     .values(national_id_hash=keyed_hash(PEPPER, number)))


def test_snapshot_then_changes(engine: sa.Engine, register: Register) -> None:
    t = now()
    first = _load(engine, register, snapshot(1, t, [ban(national_number(i), f"R-{i}", start=t - DAY)
                                                    for i in (1, 2, 3)]))
    assert (first.status, first.bans_in_force, first.added) == ("applied", 3, 3)
    second = _load(engine, register, changes(2, t, [ban(national_number(4), "R-4", start=t)], ["R-2"]))
    assert (second.status, second.bans_in_force, second.added, second.lifted) == ("applied", 3, 1, 1)
    assert _refs(engine) == ["R-1", "R-3", "R-4"]
    # an amendment: the register re-sends R-3 with another end date
    _load(engine, register, changes(3, t, [ban(national_number(3), "R-3", start=t - DAY, days=10)]))
    with engine.connect() as conn:
        until = conn.execute(sa.select(port_bans.c.banned_until).where(port_bans.c.reference == "R-3")).scalar_one()
        state = conn.execute(sa.select(ban_feed_state)).mappings().one()
    assert until == t - DAY + timedelta(days=10)
    assert state["sequence"] == 3
    # a new snapshot replaces everything
    _load(engine, register, snapshot(7, t, [ban(national_number(9), "R-9", start=t)]))
    assert _refs(engine) == ["R-9"]


def test_reloading_the_same_file_is_a_no_op_that_says_so(engine: sa.Engine, register: Register) -> None:
    t = now()
    raw = register.sign(snapshot(1, t, [ban(national_number(1), "R-1", start=t)]))
    assert _load(engine, register, raw).status == "applied"
    before = _list(engine)
    again = _load(engine, register, raw, now=t + timedelta(minutes=5))
    assert again.status == "already_loaded" and "already in force" in again.describe()
    assert _list(engine) == before
    with engine.connect() as conn:
        loads = conn.execute(sa.select(sa.func.count()).select_from(audit_log)
                             .where(audit_log.c.kind == "screening.ban.feed_loaded")).scalar_one()
    assert loads == 1


def _tamper(raw: bytes) -> bytes:
    header, payload, sig = raw.split(b".")
    import base64

    body = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    body["bans"] = []  # lift every ban without the register's say
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=")
    return b".".join([header, forged, sig])


def _unsigned_none(payload: dict[str, Any]) -> bytes:
    import base64

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    return b64(b'{"alg":"none"}') + b"." + b64(json.dumps(payload).encode()) + b"."


REFUSALS = {
    "unsigned_json": (lambda reg, t: json.dumps(snapshot(5, t, [])).encode(), FeedRefusal.UNSIGNED, "unsigned"),
    "alg_none": (lambda reg, t: _unsigned_none(snapshot(5, t, [])), FeedRefusal.UNSIGNED, "unsigned"),
    "wrong_key": (lambda reg, t: Register().sign(snapshot(5, t, [])), FeedRefusal.BAD_SIGNATURE, "not signed by"),
    "wrong_key_json": (lambda reg, t: Register("Ed25519").sign(snapshot(5, t, []), serialization="json"),
                       FeedRefusal.BAD_SIGNATURE, "not signed by"),
    "tampered": (lambda reg, t: _tamper(reg.sign(snapshot(5, t, [ban(national_number(7), "R-7", start=t)]))),
                 FeedRefusal.BAD_SIGNATURE, "not signed by"),
    "replayed": (lambda reg, t: reg.sign(snapshot(1, t, [])), FeedRefusal.REPLAYED, "replayed"),
    "out_of_order": (lambda reg, t: reg.sign(changes(4, t, [], ["R-1"])), FeedRefusal.OUT_OF_ORDER, "out-of-order"),
    "stale": (lambda reg, t: reg.sign(snapshot(5, t - 2 * DAY, [])), FeedRefusal.STALE, "stale"),
    "malformed": (lambda reg, t: reg.sign({"register": "BE-AIGIS-TEST", "kind": "snapshot", "sequence": 5,
                                           "issued_at": t.isoformat(), "bans": [{"national_number": "1"}]}),
                  FeedRefusal.MALFORMED, "malformed"),
    "not_json": (lambda reg, t: b"\x00\x01 garbage", FeedRefusal.UNSIGNED, "unsigned"),
    "lifts_unknown": (lambda reg, t: reg.sign(changes(3, t, [], ["R-404"])), FeedRefusal.INCONSISTENT,
                      "does not hold"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refused_feed_leaves_the_list_unchanged(engine: sa.Engine, register: Register, case: str) -> None:
    t = now()
    _load(engine, register, snapshot(1, t, [ban(national_number(1), "R-1", start=t - DAY)]))
    _load(engine, register, changes(2, t, [ban(national_number(2), "R-2", start=t - DAY)]))
    before = _list(engine)
    make, code, words = REFUSALS[case]
    with pytest.raises(FeedRefused) as info:
        _load(engine, register, make(register, t))
    assert info.value.code is code and words in info.value.message
    assert _list(engine) == before
    with engine.connect() as conn:
        refused = conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == "screening.ban.feed_refused"))
        assert [r["reason"] for r in refused.scalars()] == [code.value]


def test_both_serializations_and_both_algorithms_are_taken(engine: sa.Engine) -> None:
    t = now()
    for seq, (alg, serialization) in enumerate([("ES256", "json"), ("Ed25519", "compact")], start=1):
        reg = Register(alg)
        raw = reg.sign(snapshot(seq, t, [ban(national_number(seq), f"R-{seq}", start=t)]), serialization=serialization)
        assert _load(engine, reg, raw).status == "applied"


def test_hs256_signed_with_the_public_key_is_refused(engine: sa.Engine, register: Register) -> None:
    """The classic algorithm-confusion forgery: HMAC keyed with the (public) register key."""
    from joserfc import jws
    from joserfc.jwk import OctKey
    from joserfc.jws import JWSRegistry

    forged_key = OctKey.import_key(register.public_jwk.encode())
    raw = jws.serialize_compact({"alg": "HS256"}, json.dumps(snapshot(5, now(), [])).encode(), forged_key,
                                registry=JWSRegistry(algorithms=["HS256"])).encode()
    with pytest.raises(FeedRefused) as info:
        _load(engine, register, raw)
    assert info.value.code is FeedRefusal.BAD_SIGNATURE and "HS256" in info.value.message
    assert _list(engine) == ([], [])


def test_the_hash_is_keyed_and_the_number_is_stored_nowhere(engine: sa.Engine, register: Register) -> None:
    number = national_number(42)
    assert keyed_hash(b"pepper-a", number) != keyed_hash(b"pepper-b", number)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-42", start=t - DAY)]), pepper=b"pepper-a")
    pid = _person(engine, None)
    set_national_id(engine, pid, number, pepper=b"pepper-a", now=t, actor="test")
    with engine.connect() as conn:
        stored = conn.execute(sa.select(port_bans.c.subject_hash)).scalar_one()
        linked = conn.execute(sa.select(persons.c.national_id_hash).where(persons.c.id == pid)).scalar_one()
        dump = "\n".join(repr(tuple(row)) for table in metadata.sorted_tables
                         for row in conn.execute(sa.select(table)))
    assert stored == linked == keyed_hash(b"pepper-a", number)
    assert number not in dump


def test_screening_clear_banned_unavailable(engine: sa.Engine, register: Register) -> None:
    t = now()
    banned_number, other_number = national_number(1), national_number(2)
    banned, clean, unlinked = _person(engine, banned_number), _person(engine, other_number), _person(engine, None)
    screening = StoredBanScreening(engine, max_list_age=timedelta(hours=3))
    nothing = screening.screen(banned, t)
    assert (nothing.status, nothing.list_age_seconds, nothing.reasons) == ("unavailable", None,
                                                                           ("screening_unavailable",))
    _load(engine, register, snapshot(1, t - timedelta(hours=2), [
        ban(banned_number, "R-1", start=t - DAY), ban(other_number, "R-2", start=t - DAY, scope=["BEZEE"])]))
    hit = screening.screen(banned, t)
    assert hit.status == "banned" and hit.reasons == ("person_banned",)
    assert 7199 <= (hit.list_age_seconds or 0) <= 7201
    # No national number linked: the register cannot find him, so never "clear" (it was, and a banned
    # person re-entered as a fresh record got a badge); unavailable, naming why.
    unknown = screening.screen(unlinked, t)
    assert (unknown.status, unknown.reasons) == ("unavailable", ("screening_unavailable", "person_unidentified"))
    # a ban for listed ports only
    assert screening.screen(clean, t, port="BEANR").status == "clear"
    assert screening.screen(clean, t, port="BEZEE").status == "banned"
    assert screening.screen(clean, t).status == "banned"  # badge issue: any port
    # the list grows old: unavailable for whoever it does not ban
    later = t + timedelta(hours=1, minutes=1)
    assert screening.screen(unlinked, later).status == "unavailable"
    assert screening.screen(banned, later).status == "banned"


def _nominate(engine: sa.Engine, p: Any, right_id: uuid.UUID, driver: uuid.UUID, **uow_kw: Any) -> Any:
    uow = SqlUnitOfWork(engine, **uow_kw)
    with uow:
        result = nominate.nominate(uow, p.haul, right_id, nominate.NominateCommand("1ABC123", "BE", driver), now())
        uow.commit()
    return result


def test_nomination_of_a_banned_driver_is_refused(engine: sa.Engine, register: Register) -> None:
    p = port(engine)
    number = national_number(5)
    _link(engine, p.driver, number)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, to=p.haul.organisation_id), now()))
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-5", start=t - DAY, scope=["BEANR"])]))
    # The load deactivated his badges, his one link to haul (his employer on record is none; review 152,
    # finding 2): haul hears of him what it hears of a stranger, not that he is banned.
    with pytest.raises(DomainError) as stranger:
        _nominate(engine, p, right.id, p.driver)
    assert stranger.value.code is ErrorCode.UNKNOWN_PERSON
    with engine.begin() as conn:  # a driver membership of haul links him whatever his badges: screened
        conn.execute(memberships.insert().values(person_id=p.driver, organisation_id=p.haul.organisation_id,
                                                 role="driver", created_at=now()))
    with pytest.raises(DomainError) as info:
        _nominate(engine, p, right.id, p.driver)
    assert info.value.code is ErrorCode.DRIVER_SCREENING_FAILED
    assert info.value.context["screening"] == "banned" and "person_banned" in info.value.context["reasons"]
    # lifted: he may be nominated again once his badge is active (the ban load deactivated it)
    _load(engine, register, changes(2, t, [], ["R-5"]))
    with engine.begin() as conn:
        conn.execute(badges.update().where(badges.c.person_id == p.driver).values(status="active"))
    assert _nominate(engine, p, right.id, p.driver)[0].nomination.driver_person_id == p.driver


def test_nomination_with_a_stale_list_is_unavailable(engine: sa.Engine, register: Register) -> None:
    p = port(engine)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, to=p.haul.organisation_id), now()))
    with pytest.raises(DomainError) as required:
        _nominate(engine, p, right.id, p.driver, ban_list_required=True)  # a register configured, no list yet
    assert required.value.context["reasons"] == ["screening_unavailable"]
    _load(engine, register, snapshot(1, now() - timedelta(hours=2), []))
    with pytest.raises(DomainError) as info:
        _nominate(engine, p, right.id, p.driver, ban_list_max_age=timedelta(hours=1))
    assert info.value.context["screening"] == "unavailable"
    assert info.value.context["reasons"] == ["screening_unavailable"]
    _link(engine, p.driver, national_number(5))
    assert _nominate(engine, p, right.id, p.driver, ban_list_max_age=timedelta(hours=3))[0].nomination


def test_a_driver_the_register_cannot_name_is_not_screened_clear(engine: sa.Engine, register: Register) -> None:
    """The register names persons by their national register number: a driver with none on file cannot
    be found in it, so with a list in force he is unavailable, never clear (a banned person without a
    linked number would otherwise pass every screening)."""
    p = port(engine)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, to=p.haul.organisation_id), now()))
    assert _nominate(engine, p, right.id, p.driver)[0].nomination  # no register at all: the badge check alone
    _load(engine, register, snapshot(1, now(), []))
    with pytest.raises(DomainError) as info:
        _nominate(engine, p, right.id, p.driver)
    assert (info.value.context["screening"], info.value.context["reasons"]) == ("unavailable",
                                                                                 ["screening_unavailable"])
    _link(engine, p.driver, national_number(8))
    assert _nominate(engine, p, right.id, p.driver)[0].nomination


def test_a_new_ban_deactivates_badges_and_alerts_open_nominations(engine: sa.Engine, register: Register) -> None:
    p = port(engine)
    number = national_number(6)
    _link(engine, p.driver, number)
    with engine.begin() as conn:
        conn.execute(webhook_subscriptions.insert().values(
            id=uuid.uuid4(), organisation_id=p.haul.organisation_id, url="https://haulier.example/hooks",
            secret_enc="x", event_types=["release.nomination.*"], active=True, created_at=now()))
    rights = []
    for n in (1, 2):
        right, _ = do(engine, lambda uow, n=n: issue.issue(uow, p.line, issue_cmd(p, n, to=p.haul.organisation_id),
                                                            now()))
        _nominate(engine, p, right.id, p.driver)
        rights.append(right.id)
    t = now()
    _load(engine, register, snapshot(1, t, []))
    result = _load(engine, register, changes(2, t, [ban(number, "R-6", start=t - DAY)]))
    assert (result.badges_deactivated, result.nomination_alerts) == (1, 2)
    with engine.connect() as conn:
        assert conn.execute(sa.select(badges.c.status).where(badges.c.person_id == p.driver)).scalar_one() \
            == "inactive"
        alerts = conn.execute(sa.select(audit_log.c.subject, audit_log.c.data)
                              .where(audit_log.c.kind == "screening.ban.nomination_alert")).all()
        hooks = conn.execute(sa.select(webhook_deliveries.c.payload)
                             .where(webhook_deliveries.c.event_type == "release.nomination.screening_alert")).all()
    assert sorted(a.subject for a in alerts) == sorted(str(r) for r in rights)
    assert all(a.data["ban_reference"] == "R-6" for a in alerts)
    assert sorted(h.payload["release_id"] for h in hooks) == sorted(str(r) for r in rights)
    assert number not in json.dumps([a.data for a in alerts] + [h.payload for h in hooks])


def test_a_future_ban_does_not_deactivate_yet(engine: sa.Engine, register: Register) -> None:
    p = port(engine)
    number = national_number(8)
    _link(engine, p.driver, number)
    t = now()
    result = _load(engine, register, snapshot(1, t, [ban(number, "R-8", start=t + DAY)]))
    assert result.badges_deactivated == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(badges.c.status).where(badges.c.person_id == p.driver)).scalar_one() == "active"


def _subscribe(engine: sa.Engine, organisation_id: uuid.UUID) -> None:
    with engine.begin() as conn:
        conn.execute(webhook_subscriptions.insert().values(
            id=uuid.uuid4(), organisation_id=organisation_id, url="https://haulier.example/hooks",
            secret_enc="x", event_types=["release.nomination.*"], active=True, created_at=now()))


def _consequences(engine: sa.Engine, person_id: uuid.UUID) -> tuple[list[str], int, int]:
    """The person's badge statuses, the nomination alerts on the audit trail, the alert webhooks."""
    with engine.connect() as conn:
        statuses = list(conn.execute(sa.select(badges.c.status).where(badges.c.person_id == person_id)).scalars())
        alerts = conn.execute(sa.select(sa.func.count()).select_from(audit_log)
                              .where(audit_log.c.kind == "screening.ban.nomination_alert")).scalar_one()
        hooks = conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries)
                             .where(webhook_deliveries.c.event_type == "release.nomination.screening_alert")
                             ).scalar_one()
    return statuses, alerts, hooks


def _nominated_driver(engine: sa.Engine, number: str) -> Any:
    """A linked driver with an active badge and one open nomination, alerts subscribed."""
    p = port(engine)
    _link(engine, p.driver, number)
    _subscribe(engine, p.haul.organisation_id)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, to=p.haul.organisation_id), now()))
    _nominate(engine, p, right.id, p.driver)
    return p


def test_a_future_ban_acts_once_it_starts_and_once_only(engine: sa.Engine, register: Register) -> None:
    """A ban loaded before it starts: the sweep deactivates the badge and alerts the nomination once
    its start has passed, and a second sweep finds nothing to do."""
    from identity.bans.sweep import sweep_bans_in_effect

    number = national_number(13)
    p = _nominated_driver(engine, number)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-13", start=t + timedelta(hours=1))]))
    assert sweep_bans_in_effect(engine, t) == 0  # not started yet
    assert _consequences(engine, p.driver) == (["active"], 0, 0)
    later = t + timedelta(hours=1, minutes=1)
    assert sweep_bans_in_effect(engine, later) == 1
    assert _consequences(engine, p.driver) == (["inactive"], 1, 1)
    assert sweep_bans_in_effect(engine, later + timedelta(minutes=1)) == 0
    assert _consequences(engine, p.driver) == (["inactive"], 1, 1)
    with engine.connect() as conn:
        reason = conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == "identity.badge.status_changed")
                              ).scalar_one()
    assert (reason["reason"], reason["ban_reference"]) == ("port_ban", "R-13")


@pytest.mark.postgres
def test_concurrent_sweeps_alert_once(pg_engine: sa.Engine, register: Register) -> None:
    from identity.bans.sweep import sweep_bans_in_effect

    number = national_number(14)
    p = _nominated_driver(pg_engine, number)
    t = now()
    _load(pg_engine, register, snapshot(1, t, [ban(number, "R-14", start=t + timedelta(hours=1))]))
    later = t + timedelta(hours=2)
    barrier = threading.Barrier(4)
    done: list[int] = []

    def racer() -> None:
        barrier.wait()
        done.append(sweep_bans_in_effect(pg_engine, later))

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(done) == [0, 0, 0, 1]
    assert _consequences(pg_engine, p.driver) == (["inactive"], 1, 1)


@pytest.mark.parametrize("amend", ["window_moved", "subject_corrected", "scope_widened"])
def test_an_amended_ban_made_effective_now_acts_at_load(engine: sa.Engine, register: Register, amend: str) -> None:
    number = national_number(15)
    p = _nominated_driver(engine, number)
    t = now()
    before = {"window_moved": ban(number, "R-15", start=t + DAY),
              "subject_corrected": ban(national_number(16), "R-15", start=t - DAY),
              "scope_widened": ban(number, "R-15", start=t - DAY, scope=["BEZEE"])}[amend]
    _load(engine, register, snapshot(1, t, [before]))
    if amend == "scope_widened":  # loaded in effect elsewhere: his badge acted on then (any scope), his
        # nomination at Antwerp not (review 156, finding 2); let him work here again
        assert _consequences(engine, p.driver) == (["inactive"], 0, 0)
        with engine.begin() as conn:
            conn.execute(badges.update().where(badges.c.person_id == p.driver).values(status="active"))
    else:
        assert _consequences(engine, p.driver) == (["active"], 0, 0)
    alerts_before = _consequences(engine, p.driver)[1]
    result = _load(engine, register, changes(2, t, [ban(number, "R-15", start=t - DAY)]))
    assert (result.added, result.badges_deactivated, result.nomination_alerts) == (0, 1, 1)
    assert _consequences(engine, p.driver) == (["inactive"], alerts_before + 1, alerts_before + 1)


def test_an_amendment_that_changes_nothing_for_now_acts_on_nobody_again(engine: sa.Engine,
                                                                       register: Register) -> None:
    number = national_number(17)
    p = _nominated_driver(engine, number)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-17", start=t - DAY, scope=["BEANR", "BEZEE"])]))
    assert _consequences(engine, p.driver) == (["inactive"], 1, 1)
    # a later end, and a narrower scope: in force as before, nobody to act on again
    result = _load(engine, register, snapshot(2, t, [ban(number, "R-17", start=t - DAY, days=900, scope=["BEANR"])]))
    assert (result.badges_deactivated, result.nomination_alerts) == (0, 0)
    assert _consequences(engine, p.driver) == (["inactive"], 1, 1)


def test_a_snapshot_amendment_made_effective_now_acts_at_load(engine: sa.Engine, register: Register) -> None:
    number = national_number(18)
    p = _nominated_driver(engine, number)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-18", start=t + DAY)]))
    result = _load(engine, register, snapshot(2, t, [ban(number, "R-18", start=t - timedelta(minutes=1))]))
    assert (result.added, result.badges_deactivated, result.nomination_alerts) == (0, 1, 1)
    assert _consequences(engine, p.driver) == (["inactive"], 1, 1)


def test_set_national_id_applies_a_ban_already_in_force(engine: sa.Engine, register: Register) -> None:
    p = port(engine)
    number = national_number(9)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-9", start=t - DAY)]))
    assert set_national_id(engine, p.driver, f"{number[:2]}.{number[2:4]}.{number[4:6]}-{number[6:9]}.{number[9:]}",
                           pepper=PEPPER, now=t, actor="test") == 1
    with pytest.raises(NationalIdRefused, match="already has"):
        set_national_id(engine, _person(engine, None), number, pepper=PEPPER, now=t, actor="test")
    with pytest.raises(NationalIdRefused, match="valid"):
        set_national_id(engine, p.driver, "12345678901", pepper=PEPPER, now=t, actor="test")
    with pytest.raises(NationalIdRefused, match="no such person"):
        set_national_id(engine, uuid.uuid4(), national_number(10), pepper=PEPPER, now=t, actor="test")


# ---- the CLI --------------------------------------------------------------------------------------

@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, register: Register) -> Path:
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", database_url)
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_PEPPER", PEPPER.decode())
    monkeypatch.setenv("QUAYGATE_BAN_REGISTER_JWK", register.public_jwk)
    return tmp_path


def test_cli_bans_load(engine: sa.Engine, register: Register, cli_env: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    t = now()
    feed = cli_env / "snapshot-1.jws"
    feed.write_bytes(register.sign(snapshot(1, t, [ban(national_number(1), "R-1", start=t)])))
    assert cli.main(["bans", "load", str(feed)]) == 0
    assert "loaded snapshot BE-AIGIS-TEST #1: 1 bans in force" in capsys.readouterr().out
    assert cli.main(["bans", "load", str(feed)]) == 0
    assert "already in force: nothing changed" in capsys.readouterr().out
    forged = cli_env / "forged.jws"
    forged.write_bytes(Register().sign(snapshot(2, t, [])))
    assert cli.main(["bans", "load", str(forged)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("feed refused, the list in force is unchanged: bad signature") and "Traceback" not in err
    assert cli.main(["bans", "load", str(cli_env / "missing.jws")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert _refs(engine) == ["R-1"]


def test_cli_bans_load_needs_a_register_key(engine: sa.Engine, cli_env: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    feed = cli_env / "f.jws"
    feed.write_bytes(b"x")
    monkeypatch.delenv("QUAYGATE_BAN_REGISTER_JWK")
    assert cli.main(["bans", "load", str(feed)]) == 2
    assert "no ban register key configured" in capsys.readouterr().err
    private = Register().key.as_dict(private=True)
    monkeypatch.setenv("QUAYGATE_BAN_REGISTER_JWK", json.dumps(private))
    assert cli.main(["bans", "load", str(feed)]) == 2
    assert "public JWK" in capsys.readouterr().err


def test_cli_person_set_national_id(engine: sa.Engine, cli_env: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    pid = _person(engine, None)
    number = national_number(3)
    monkeypatch.setattr("sys.stdin", io.StringIO(number + "\n"))
    assert cli.main(["person", "set-national-id", str(pid)]) == 0
    assert "keyed hash" in capsys.readouterr().out
    with engine.connect() as conn:
        assert conn.execute(sa.select(persons.c.national_id_hash).where(persons.c.id == pid)).scalar_one() \
            == keyed_hash(PEPPER, number)
    monkeypatch.setattr("sys.stdin", io.StringIO("123\n"))
    assert cli.main(["person", "set-national-id", str(pid)]) == 2
    assert "not a valid national register number" in capsys.readouterr().err
    assert cli.main(["person", "set-national-id", "not-a-uuid"]) == 2


# ---- the periodic pull ------------------------------------------------------------------------------

def test_pull_applies_what_follows_and_stops(engine: sa.Engine, register: Register) -> None:
    t = now()
    feeds = {0: register.sign(snapshot(1, t, [ban(national_number(1), "R-1", start=t)])),
             1: register.sign(changes(2, t, [ban(national_number(2), "R-2", start=t)])),
             2: Register().sign(changes(3, t, [], ["R-1"]))}  # a forgery on the wire
    asked: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        after = int(request.url.params["after"])
        asked.append(after)
        return httpx.Response(200, content=feeds[after]) if after in feeds else httpx.Response(204)

    puller = BanFeedPuller(engine, url="https://register.example/feed", key=register.public_key, pepper=PEPPER,
                           max_feed_age=DAY, clock=now,
                           http_client_factory=lambda: httpx.Client(transport=httpx.MockTransport(handler)))
    assert [puller.run_once() for _ in range(4)] == [1, 1, 0, 0]
    assert asked == [0, 1, 2, 2]
    assert _refs(engine) == ["R-1", "R-2"]


def test_pull_survives_an_unreachable_register(engine: sa.Engine, register: Register) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("down")

    puller = BanFeedPuller(engine, url="https://register.example/feed", key=register.public_key, pepper=PEPPER,
                           max_feed_age=DAY, clock=now,
                           http_client_factory=lambda: httpx.Client(transport=httpx.MockTransport(handler)))
    assert puller.run_once() == 0


# ---- two replicas at once -------------------------------------------------------------------------

@pytest.mark.postgres
def test_concurrent_loads_apply_a_change_set_once(pg_engine: sa.Engine, register: Register) -> None:
    t = now()
    _load(pg_engine, register, snapshot(1, t, [ban(national_number(1), "R-1", start=t - DAY)]))
    p = port(pg_engine)
    _link(pg_engine, p.driver, national_number(2))
    raw = register.sign(changes(2, t, [ban(national_number(2), "R-2", start=t - DAY)]))
    for _round in range(3):
        barrier = threading.Barrier(4)
        outcomes: list[str] = []

        def racer() -> None:
            barrier.wait()
            try:
                outcomes.append(_load(pg_engine, register, raw).status)
            except FeedRefused as exc:
                outcomes.append(exc.code.value)

        threads = [threading.Thread(target=racer) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(outcomes) == 4
        assert outcomes.count("applied") <= 1 and set(outcomes) <= {"applied", "already_loaded"}
    with pg_engine.connect() as conn:
        loaded = conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == "screening.ban.feed_loaded")
                              ).scalars().all()
        changed = conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == "identity.badge.status_changed")
                               ).scalars().all()
    assert [d["sequence"] for d in loaded] == [1, 2]
    assert len(changed) == 1  # the badge was deactivated once, by the one load that applied
    assert _refs(pg_engine) == ["R-1", "R-2"]


def test_feed_times_are_utc(engine: sa.Engine, register: Register) -> None:
    t = datetime.now(UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Brussels"))
    _load(engine, register, snapshot(1, t, [ban(national_number(1), "R-1", start=t)]))
    with engine.connect() as conn:
        assert conn.execute(sa.select(ban_feed_state.c.issued_at)).scalar_one() == t


def test_a_snapshot_rewrites_only_what_changed(engine: sa.Engine, register: Register) -> None:
    t = now()
    _load(engine, register, snapshot(1, t, [ban(national_number(i), f"R-{i}", start=t - DAY) for i in (1, 2, 3)]))
    result = _load(engine, register, snapshot(2, t, [
        ban(national_number(1), "R-1", start=t - DAY),  # as before
        ban(national_number(2), "R-2", start=t - DAY, scope=["BEANR"]),  # narrowed
        ban(national_number(4), "R-4", start=t - DAY)]))  # new; R-3 lifted
    assert (result.added, result.lifted, result.bans_in_force) == (1, 1, 3)
    with engine.connect() as conn:
        rows = {r.reference: (r.scope, r.feed_sequence) for r in conn.execute(sa.select(port_bans))}
    assert rows == {"R-1": ("all", 1), "R-2": ("BEANR", 2), "R-4": ("all", 2)}


def test_the_app_wires_screening_and_the_puller_from_settings(engine: sa.Engine, tmp_path: Path,
                                                               register: Register) -> None:
    from fastapi.testclient import TestClient

    from identity.bans.screening import StoredBanScreening
    from quaygate.app import create_app
    from quaygate.cache import MemoryCache
    from quaygate.container import Container, SystemClock
    from quaygate.crypto import DataCipher
    from quaygate.settings import Settings

    url = str(engine.url.render_as_string(hide_password=False))
    for jwk, expected in ((None, type(None)), (register.public_jwk, StoredBanScreening)):
        # The face workers' warm-up (models loaded in a process per core, some 15 s) is beside the point.
        settings = Settings(var_dir=tmp_path, database_url=url, ban_register_jwk=jwk, face_warm_up=False)
        c = Container(settings=settings, engine=engine, cache=MemoryCache(),
                      cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
        app = create_app(settings, container=c)
        with TestClient(app):
            assert isinstance(app.state.ban_screening, expected)
            assert not any(th.name == "ban-feed-puller" for th in threading.enumerate())  # off by default


def test_nomination_screens_bans_for_the_terminal_port_only(engine: sa.Engine, register: Register) -> None:
    p = port(engine)  # the terminal BEANR-K1700 lies in BEANR
    number = national_number(11)
    _link(engine, p.driver, number)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, to=p.haul.organisation_id), now()))
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-11", start=t + DAY, scope=["BEANR"]),  # not yet
                                            ban(number, "R-12", start=t - DAY, scope=["BEZEE"])]))  # elsewhere
    with engine.begin() as conn:  # any new ban deactivates his badges; the badge office lets him work here
        conn.execute(badges.update().where(badges.c.person_id == p.driver).values(status="active"))
    assert _nominate(engine, p, right.id, p.driver)[0].nomination.driver_person_id == p.driver


def test_a_port_limited_ban_applies_at_a_terminal_whose_code_names_no_port(engine: sa.Engine,
                                                                         register: Register) -> None:
    # Review 123, finding 1: the port was "whatever precedes the first hyphen", so a BEANR ban screened
    # clear at a terminal registered as "K1700" (at the gate, at nomination, in the offline gate passes).
    number = national_number(13)
    driver = _person(engine, number)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-13", start=t - DAY, scope=["BEANR"])]))
    with engine.connect() as conn:
        lookup = SqlPortBanLookup(conn)
        assert lookup.screen(driver, terminal="BEANR-K1700", now=t).result == "banned"
        assert lookup.screen(driver, terminal="BEZEE-K1", now=t).result == "clear"  # a port of its own
        for code in ("K1700", "PSA-K1700", "MPET", "BEANRK1700", "BE-ANR-K1700"):
            assert lookup.screen(driver, terminal=code, now=t).result == "banned", code
            assert lookup.screen_many([driver], terminal=code, now=t)[driver].result == "banned", code


def test_the_badge_office_cannot_undo_a_ban_through_the_badges(engine: sa.Engine, register: Register) -> None:
    """The real register behind the badge service: a ban turns the badge inactive, and neither
    reactivating it, renewing it nor issuing a new one gets a banned driver a usable badge."""
    from identity.badges.service import BadgeError, BadgeService, IssueBadge

    p = port(engine)
    number = national_number(7)
    _link(engine, p.driver, number)
    service = BadgeService(engine, StoredBanScreening(engine, max_list_age=DAY))
    t = now()
    _load(engine, register, snapshot(1, t, []))
    _load(engine, register, changes(2, t, [ban(number, "R-7", start=t - DAY)]))
    with engine.connect() as conn:
        badge_id = conn.execute(sa.select(badges.c.id).where(badges.c.person_id == p.driver)).scalar_one()
    for attempt in (
        lambda: service.change_status(badge_id, "active", reason="found", actor="desk", now=now()),
        lambda: service.renew(badge_id, valid_until=now() + 300 * DAY, reason="renewal", actor="desk", now=now()),
        lambda: service.issue(IssueBadge(p.driver, "alfapass", "AP-100248", None, None, now() - DAY,
                                         now() + 300 * DAY), actor="desk", now=now()),
    ):
        with pytest.raises(BadgeError) as refused:
            attempt()
        assert refused.value.code == "person_banned"
    with engine.connect() as conn:
        assert conn.execute(sa.select(badges.c.status).where(badges.c.person_id == p.driver)).scalars().all() \
            == ["inactive"]


def test_no_badge_for_a_person_with_no_national_number_linked(engine: sa.Engine, register: Register) -> None:
    """A banned person re-entered as a fresh record (no national number): the register cannot find
    him, so badge issue is refused (``person_unidentified``, audited) until the number is linked; it
    used to screen ``clear`` and issue the badge."""
    from identity.badges.service import BadgeError, BadgeService, IssueBadge

    t = now()
    _load(engine, register, snapshot(1, t, [ban(national_number(8), "R-8", start=t - DAY)]))
    fresh = _person(engine, None)
    service = BadgeService(engine, StoredBanScreening(engine, max_list_age=DAY))
    cmd = IssueBadge(fresh, "alfapass", "AP-100248", None, None, t - DAY, t + 300 * DAY)
    with pytest.raises(BadgeError) as refused:
        service.issue(cmd, actor="desk", now=t)
    assert refused.value.code == "person_unidentified"
    with engine.connect() as conn:
        assert conn.execute(sa.select(badges.c.id).where(badges.c.person_id == fresh)).first() is None
        kinds = conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == "identity.badge.issue_refused"))
        assert [d["code"] for d in kinds.scalars()] == ["person_unidentified"]
    _link(engine, fresh, national_number(9))  # his own (unbanned) number: screening clears him
    assert service.issue(cmd, actor="desk", now=t).screening.status == "clear"

"""A terminal's gate policy may ask for the badge's chip (``badge_chip_required``, review 142): a badge's
printed number is learnt from a photo of the badge, a nomination, or guessed from an old gate pass, and
then typed at a lane with the nominee's plate and container. Where the policy asks for the chip and the
badge has a card UID on record, a read of the number alone is a doubt (``review``,
``badge_chip_required``), online and offline alike; the chip's UID, with or without the number, is the
badge itself. A badge without a chip on record, or a terminal that does not ask, decides as before."""
# ruff: noqa: F811 - ``env``, ``redis_env``, ``gate`` and ``adapters`` are fixtures, imported here and requested by name

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from quaygate.schema import badges
from release_service.adapters.sqla.gate import SqlGateStore
from release_service.domain import gate as g
from release_service.domain.gate_pass import (
    BadgeHash,
    BadgeProof,
    GatePass,
    LocalUses,
    OfflineLimits,
    chip_wanting,
    decide_offline,
    pass_refuses,
)

from .test_gate_offline import Adapter, adapters, offline_rows  # noqa: F401
from .test_gate_policy import Env, env, redis_env  # noqa: F401
from .test_gate_verify import Gate, gate  # noqa: F401

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
T = "BEANR-K1700"
DRIVER = uuid.uuid4()
CONTAINER = "MSCU1234566"
NUMBER, UID = "AP-123455", "04A1B2C3D4E5F6"
CHIP = g.TerminalPolicy(badge_chip_required=True)


# -- the rule --------------------------------------------------------------------------------------------


def _right() -> g.RightFacts:
    return g.RightFacts(uuid.uuid4(), CONTAINER, T, "nominated", False, "green", "green", "green",
                        NOW - timedelta(days=1), NOW + timedelta(days=1), NOW - timedelta(days=2),
                        g.NominationFacts(DRIVER, "1ABC123", "BE"))


def _request(read: g.BadgeRead) -> g.GateRequest:
    return g.GateRequest("r1", T, "in-3", g.Direction.IN, g.Mode.COMMIT, g.ContainerRead(CONTAINER, 0.97),
                         g.PlateRead("1-ABC-123", "BE", 0.95), read, None, NOW)


def _online(read: g.BadgeRead, policy: g.TerminalPolicy, *, chip: bool = True) -> g.Decision:
    badge = g.BadgeFacts(found=True, status="active", person_id=DRIVER, valid_until=NOW + timedelta(days=300),
                         activated_terminals=frozenset({T}), holder_name="Jan Peeters", card_uid_on_record=chip)
    return g.decide(_request(read), rights=[_right()], badge=badge,
                    screening=g.ScreeningFacts(g.ScreeningResult.CLEAR), policy=policy, now=NOW)


def test_a_number_alone_where_the_chip_is_required_is_a_review() -> None:
    d = _online(g.BadgeRead("alfapass", NUMBER), CHIP)
    assert (d.decision, d.reasons) == (g.Outcome.REVIEW, (g.Reason.BADGE_CHIP_REQUIRED,)), d
    for read in (g.BadgeRead("alfapass", card_uid=UID), g.BadgeRead("alfapass", NUMBER, UID)):
        assert _online(read, CHIP).decision is g.Outcome.ALLOW
    assert _online(g.BadgeRead("alfapass", NUMBER), CHIP, chip=False).decision is g.Outcome.ALLOW  # no chip
    assert _online(g.BadgeRead("alfapass", NUMBER), g.TerminalPolicy()).decision is g.Outcome.ALLOW  # not asked
    # A person at the desk may look at the badge, as at a face where one is required; port security hears
    # of an override that set it aside, as of any that set aside who came.
    assert g.not_overridable([g.Reason.BADGE_CHIP_REQUIRED.value]) == []
    assert g.identity_set_aside(["plate_mismatch", "badge_chip_required"]) == ["badge_chip_required"]
    with pytest.raises(ValueError, match="badge_chip_required"):
        g.TerminalPolicy(badge_chip_required=1)  # type: ignore[arg-type]


def _pass(policy: g.TerminalPolicy, *, chip: bool = True) -> GatePass:
    h = BadgeHash(bytes(range(16)))
    badge = BadgeProof("alfapass", h.of("alfapass", NUMBER), h.of("alfapass", UID) if chip else None, "active",
                       NOW + timedelta(days=300), frozenset({T}))
    return GatePass("p1", T, NOW - timedelta(minutes=1), NOW + timedelta(minutes=9), _right(), (badge,), "J. P***s",
                    g.ScreeningResult.CLEAR, NOW - timedelta(hours=1), policy, badge_hash=h)


def _offline(p: GatePass, read: g.BadgeRead) -> g.Decision:
    return decide_offline(_request(read), passes=[p], uses=LocalUses(), limits=OfflineLimits(),
                          store_refreshed_at=NOW, now=NOW).decision


def test_offline_too_and_the_reconcile_does_not_take_an_allow_on_a_number_alone() -> None:
    p = _pass(CHIP)
    assert GatePass.from_claims(p.to_claims("https://id.example"), issuer="https://id.example") == p  # in the pass
    d = _offline(p, g.BadgeRead("alfapass", NUMBER))
    assert (d.decision, d.reasons) == (g.Outcome.REVIEW, (g.Reason.BADGE_CHIP_REQUIRED,)), d
    assert _offline(p, g.BadgeRead("alfapass", card_uid=UID)).decision is g.Outcome.ALLOW
    assert _offline(_pass(CHIP, chip=False), g.BadgeRead("alfapass", NUMBER)).decision is g.Outcome.ALLOW
    assert _offline(_pass(g.TerminalPolicy()), g.BadgeRead("alfapass", NUMBER)).decision is g.Outcome.ALLOW
    assert pass_refuses(p, _request(g.BadgeRead("alfapass", NUMBER)), decided_at=NOW, state="nominated") == (
        "badge_chip_required",)
    # A pass from before the field: the terminal did not ask.
    older = p.to_claims("https://id.example")
    del older["policy"]["badge_chip_required"]
    assert GatePass.from_claims(older, issuer="https://id.example").policy == replace(CHIP, badge_chip_required=False)


# -- over the admin route and the verify call --------------------------------------------------------------


def _card_uid(env: Env) -> str:
    with env.engine.connect() as conn:
        return str(conn.execute(sa.select(badges.c.card_uid).where(badges.c.person_id == env.p.driver)).scalar_one())


def _verify(env: Env, badge: dict[str, str]) -> tuple[str, list[str]]:
    r = env.verify(env.body(1, badge={"scheme": "alfapass", **badge}))
    assert r.status_code == 200, r.text
    return r.json()["decision"], r.json()["reasons"]


def _chip_required(env: Env) -> None:
    env.pickable(1)
    uid = _card_uid(env)  # the test driver's badge has a chip on record
    assert _verify(env, {"number": env.badge_number}) == ("allow", [])
    r = env.put({"badge_chip_required": True})
    assert r.status_code == 200, r.text
    assert r.json()["changed"] == ["badge_chip_required"] and r.json()["policy"]["badge_chip_required"] is True
    [(_, _, data)] = env.audits()
    assert (data["old"]["badge_chip_required"], data["new"]["badge_chip_required"]) == (False, True)
    assert _verify(env, {"number": env.badge_number}) == ("review", ["badge_chip_required"])
    assert _verify(env, {"number": env.badge_number, "card_uid": uid}) == ("allow", [])
    assert _verify(env, {"card_uid": uid}) == ("allow", [])
    # The badge office's word: a chip on record, or none (then its number is all there is).
    with env.engine.begin() as conn:
        store = SqlGateStore(conn, None)  # type: ignore[arg-type]
        assert store.badge(g.BadgeRead("alfapass", env.badge_number)).card_uid_on_record is True
        conn.execute(badges.update().where(badges.c.person_id == env.p.driver).values(card_uid=None))
        assert store.badge(g.BadgeRead("alfapass", env.badge_number)).card_uid_on_record is False


def test_the_policy_asks_for_the_chip_and_the_very_next_verify_reviews_a_number_alone(env: Env) -> None:
    _chip_required(env)


@pytest.mark.postgres
def test_with_the_redis_cache_too(redis_env: Env) -> None:
    _chip_required(redis_env)


def test_a_cached_copy_that_does_not_say_whether_the_badge_has_a_chip_or_the_terminal_asks_is_a_miss() -> None:
    """Copies from a server of before the field (a rolling upgrade) are read again from PostgreSQL and
    replaced: a copy taken for a chipless badge, or for a terminal that does not ask, would allow a number
    alone where the terminal asks for the chip."""
    from release_service.adapters.gate_facts import _badge_copy, _policy

    copy = {"found": True, "id": str(uuid.uuid4()), "status": "active", "person_id": str(DRIVER), "valid_from": None,
            "valid_until": (NOW + timedelta(days=300)).isoformat(), "activated": [T], "holder": "Jan Peeters",
            "holder_status": "active", "bans": [], "list_issued_at": None, "max_list_age": 86400.0,
            "required": False, "identified": True}
    assert _badge_copy(json.dumps(copy).encode()) is None
    entry = _badge_copy(json.dumps({**copy, "chip": True}).encode())
    assert entry is not None and entry.facts is not None and entry.facts.card_uid_on_record is True
    assert _policy(json.dumps({"face_match_results": "refuse"}).encode()) is None
    assert _policy(json.dumps({"face_match_results": "refuse", "badge_chip_required": True}).encode()) == CHIP


# -- the reconcile: the policy in force when the truck passed ------------------------------------------------


def test_an_offline_allow_on_a_number_alone_after_the_terminal_asked_for_the_chip_is_flagged(
        gate: Gate, adapters: list[Adapter]) -> None:
    """Port security asks for the chip after the lane's last refresh; the service is down and a truck comes
    with the badge's number typed in. The pass, issued before, lets it through (it cannot know); the
    reconcile reads the policy in force when the truck passed (its audit trail, as for the face) and flags
    the gate-in ``badge_chip_required``: the truck is in, so the gate-in is recorded."""
    from .test_gate_offline_face import _audited, _on, _policy, _truck

    rid = gate.pickable(1)
    a = adapters[0]
    clocks = a.clocked()
    a.offline.refresh()  # the pass: no chip asked for
    a.down()
    _policy(gate, badge_chip_required=True)  # the driver's badge has a chip on record
    _on(clocks)
    assert _truck(a, 1)["decision"] == "allow"  # on the pass's policy
    a.up()
    a.offline.reconcile()
    (row,) = offline_rows(gate)
    assert (row.verdict, row.flag) == ("flagged", "changed_after_pass")
    assert gate.state(rid) == "gated_in"
    [data] = _audited(gate)
    assert data["changed_since_pass"] == ["badge_chip_required"]


def test_pure_what_the_terminal_s_policy_says_of_the_badge_read_of_an_offline_allow() -> None:
    chip = g.BadgeFacts(True, "active", DRIVER, card_uid_on_record=True)
    assert chip_wanting(CHIP, g.BadgeRead("alfapass", NUMBER), chip) == ("badge_chip_required",)
    assert chip_wanting(CHIP, g.BadgeRead("alfapass", NUMBER, UID), chip) == ()
    assert chip_wanting(CHIP, g.BadgeRead("alfapass", NUMBER), replace(chip, card_uid_on_record=False)) == ()
    assert chip_wanting(g.TerminalPolicy(), g.BadgeRead("alfapass", NUMBER), chip) == ()
    assert chip_wanting(CHIP, None, None) == ()

"""Review 78: a port ban alerts the nominated driver's live nominations whether he holds a badge or
not, once (identity/bans/alerts.py, identity/bans/sweep.py), and the loader locks persons in a
stable order (identity.bans.loader.ban_consequences). SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import identity.badges.service as badge_service
from identity.bans.loader import LoadResult, load_feed
from identity.bans.sweep import sweep_bans_in_effect
from quaygate.crypto import keyed_hash
from quaygate.schema import audit_log, badges, persons, releases, webhook_deliveries, webhook_subscriptions
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.services import issue, nominate

from .ban_register import Register, ban, changes, national_number, snapshot
from .factories import add_driver, do, issue_cmd, now, port

PEPPER = b"test-pepper-one"
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
ALERT = "screening.ban.nomination_alert"


@pytest.fixture
def register() -> Register:
    return Register()


def _load(engine: sa.Engine, register: Register, payload: dict[str, Any], **kw: Any) -> LoadResult:
    return load_feed(engine, register.sign(payload), key=register.public_key, pepper=PEPPER,
                     now=kw.pop("now", now()), max_feed_age=DAY)


def _link(engine: sa.Engine, person_id: uuid.UUID, number: str) -> None:
    with engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == person_id)
                     .values(national_id_hash=keyed_hash(PEPPER, number)))


def _badges(engine: sa.Engine, person_id: uuid.UUID, status: str) -> None:
    """The badge office changed his badge since his nomination (suspended, expired, withdrawn)."""
    with engine.begin() as conn:
        conn.execute(badges.update().where(badges.c.person_id == person_id).values(status=status))


def _nominated(engine: sa.Engine, number: str, badge: str = "inactive") -> tuple[Any, uuid.UUID]:
    """A linked driver nominated on one right (screened clear, badge active then), whose badge has
    since turned ``badge``; the haulier subscribed to the alerts."""
    p = port(engine)
    _link(engine, p.driver, number)
    with engine.begin() as conn:
        conn.execute(webhook_subscriptions.insert().values(
            id=uuid.uuid4(), organisation_id=p.haul.organisation_id, url="https://haulier.example/hooks",
            secret_enc="x", event_types=["release.nomination.*"], active=True, created_at=now()))
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, to=p.haul.organisation_id), now()))
    _nominate(engine, p, right.id)
    _badges(engine, p.driver, badge)
    return p, right.id


def _nominate(engine: sa.Engine, p: Any, right_id: uuid.UUID) -> None:
    uow = SqlUnitOfWork(engine)
    with uow:
        nominate.nominate(uow, p.haul, right_id, nominate.NominateCommand("1ABC123", "BE", p.driver), now())
        uow.commit()


def _alerts(engine: sa.Engine) -> list[tuple[str | None, dict[str, Any]]]:
    with engine.connect() as conn:
        return [(r.subject, r.data) for r in conn.execute(
            sa.select(audit_log.c.subject, audit_log.c.data).where(audit_log.c.kind == ALERT)
            .order_by(audit_log.c.id))]


def _hooks(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(webhook_deliveries.c.payload).where(
            webhook_deliveries.c.event_type == "release.nomination.screening_alert")).scalars())


@pytest.mark.parametrize("status", ["inactive", "expired", "revoked"])
def test_a_ban_that_starts_later_alerts_a_driver_without_a_badge_once(engine: sa.Engine, register: Register,
                                                                      status: str) -> None:
    """The gap of review 78: the sweep looked only for subjects holding an active badge, so a driver
    whose badge had gone was never announced. Now the sweep alerts his live nomination once its ban
    starts, and never again."""
    number = national_number(31)
    p, right_id = _nominated(engine, number, status)
    t = now()
    result = _load(engine, register, snapshot(1, t, [ban(number, "R-31", start=t + HOUR)]), now=t)
    assert (result.badges_deactivated, result.nomination_alerts) == (0, 0)
    assert sweep_bans_in_effect(engine, t) == 0  # not started yet
    assert _alerts(engine) == []
    later = t + HOUR + timedelta(minutes=1)
    assert sweep_bans_in_effect(engine, later) == 0  # no badge to deactivate ...
    alerts = _alerts(engine)  # ... but the nomination is announced
    assert alerts == [(str(right_id), {"release_id": str(right_id), "driver_person_id": str(p.driver),
                                       "holder_organisation_id": str(p.haul.organisation_id),
                                       "ban_reference": "R-31", "screening": "banned"})]
    hooks = _hooks(engine)
    assert [h["release_id"] for h in hooks] == [str(right_id)]
    assert number not in repr(alerts + hooks)
    # once: later steps find it announced
    for step in (later + timedelta(minutes=1), later + DAY):
        sweep_bans_in_effect(engine, step)
    assert (len(_alerts(engine)), len(_hooks(engine))) == (1, 1)
    with engine.connect() as conn:  # no badge was touched by any of it
        assert conn.execute(sa.select(badges.c.status).where(badges.c.person_id == p.driver)).scalar_one() == status


def test_a_ban_in_effect_at_load_alerts_a_driver_without_a_badge_and_the_sweep_does_not_repeat_it(
        engine: sa.Engine, register: Register) -> None:
    number = national_number(32)
    p, right_id = _nominated(engine, number)
    t = now()
    result = _load(engine, register, snapshot(1, t, [ban(number, "R-32", start=t - HOUR)]), now=t)
    assert (result.badges_deactivated, result.nomination_alerts) == (0, 1)
    assert [s for s, _ in _alerts(engine)] == [str(right_id)]
    for step in (t + timedelta(minutes=1), t + DAY):
        sweep_bans_in_effect(engine, step)
    assert (len(_alerts(engine)), len(_hooks(engine))) == (1, 1)


def test_a_driver_with_a_badge_is_alerted_once_by_the_sweep(engine: sa.Engine, register: Register) -> None:
    """The badge-led step alerts him and deactivates his badge; the nomination step, which runs after
    it in the same transaction, finds that alert and adds none."""
    number = national_number(33)
    p, right_id = _nominated(engine, number, "active")
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-33", start=t + HOUR)]), now=t)
    assert sweep_bans_in_effect(engine, t + 2 * HOUR) == 1
    assert sweep_bans_in_effect(engine, t + 3 * HOUR) == 0
    assert [s for s, _ in _alerts(engine)] == [str(right_id)]
    assert len(_hooks(engine)) == 1


def test_a_nomination_screened_after_the_ban_started_is_not_alerted_by_the_sweep(engine: sa.Engine,
                                                                                 register: Register) -> None:
    """A ban at Zeebrugge only, already in force: the driver may still be nominated at Antwerp
    (screening is per port). The ban did not take effect on that nomination, so the sweep says
    nothing about it, with or without his badge."""
    number = national_number(34)
    p = port(engine)
    _link(engine, p.driver, number)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-34", start=t - HOUR, scope=["BEZEE"])]), now=t)
    _badges(engine, p.driver, "active")  # the load deactivated it; the badge office let him work in Antwerp
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, to=p.haul.organisation_id), now()))
    _nominate(engine, p, right.id)
    _badges(engine, p.driver, "expired")
    before = _alerts(engine)
    sweep_bans_in_effect(engine, now() + timedelta(minutes=1))
    assert _alerts(engine) == before


def test_a_lapsed_right_is_not_alerted(engine: sa.Engine, register: Register) -> None:
    """Past its window the right has lapsed (the gate says right_expired), even before the lapse
    sweeper marks it: nobody is to be re-nominated on it."""
    number = national_number(35)
    p, right_id = _nominated(engine, number)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-35", start=t + HOUR)]), now=t)
    with engine.begin() as conn:
        conn.execute(releases.update().where(releases.c.id == right_id).values(valid_until=t + HOUR / 2))
    sweep_bans_in_effect(engine, t + 2 * HOUR)
    assert _alerts(engine) == []


def test_a_ban_lifted_and_sent_again_later_alerts_again(engine: sa.Engine, register: Register) -> None:
    """Once per ban: another ban (another reference) that starts later is announced in its turn."""
    number = national_number(36)
    p, right_id = _nominated(engine, number)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-36", start=t + HOUR, days=1)]), now=t)
    sweep_bans_in_effect(engine, t + 2 * HOUR)
    _load(engine, register, changes(2, t + 2 * HOUR, [ban(number, "R-37", start=t + 3 * DAY)], ["R-36"]),
          now=t + 2 * HOUR)
    sweep_bans_in_effect(engine, t + 3 * DAY + HOUR)
    sweep_bans_in_effect(engine, t + 3 * DAY + 2 * HOUR)
    assert [d["ban_reference"] for _, d in _alerts(engine)] == ["R-36", "R-37"]


@pytest.mark.postgres
def test_concurrent_sweeps_alert_a_driver_without_a_badge_once(pg_engine: sa.Engine, register: Register) -> None:
    number = national_number(38)
    _nominated(pg_engine, number)
    t = now()
    _load(pg_engine, register, snapshot(1, t, [ban(number, "R-38", start=t + HOUR)]), now=t)
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []

    def racer() -> None:
        barrier.wait()
        try:
            sweep_bans_in_effect(pg_engine, t + 2 * HOUR)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert failures == []
    assert (len(_alerts(pg_engine)), len(_hooks(pg_engine))) == (1, 1)


@pytest.mark.postgres
def test_the_loader_locks_persons_in_ascending_id_order(pg_engine: sa.Engine, register: Register,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 78, finding 2: a load holds every banned person's row lock until it commits; it takes
    them in ascending id order (the order of ``ORDER BY id``), so another writer that locks two persons
    in that order cannot deadlock against it. PostgreSQL only: SQLite has no row locks (and its join
    happens to return the persons in id order anyway)."""
    engine = pg_engine
    p = port(engine)
    people = [add_driver(engine, p.haul.organisation_id) for _ in range(24)]
    for i, person_id in enumerate(people):
        _link(engine, person_id, national_number(100 + i))
    locked: list[uuid.UUID] = []
    real = badge_service.lock_person

    def spy(conn: sa.Connection, person_id: uuid.UUID) -> str | None:
        locked.append(person_id)
        return real(conn, person_id)

    monkeypatch.setattr(badge_service, "lock_person", spy)
    t = now()
    result = _load(engine, register, snapshot(1, t, [ban(national_number(100 + i), f"R-L{i:02d}", start=t - HOUR)
                                                     for i in range(len(people))]), now=t)
    assert result.badges_deactivated == len(people)
    assert sorted(locked) == sorted(people)
    assert locked == sorted(locked)


def test_a_ban_lifted_and_sent_again_under_the_same_reference_alerts_again(engine: sa.Engine,
                                                                          register: Register) -> None:
    """Review 156, finding 1: the trail's alert under R-56 marked the nomination as announced for good,
    so R-56 lifted on appeal and imposed again (re-sent in ``added``, starting later) was never
    announced. An earlier alert counts only if it was raised once the ban's current start had come."""
    number = national_number(56)
    _nominated(engine, number)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-56", start=t + HOUR)]), now=t)
    sweep_bans_in_effect(engine, t + 2 * HOUR)
    assert len(_alerts(engine)) == 1
    _load(engine, register, changes(2, t + 3 * HOUR, lifted=["R-56"]), now=t + 3 * HOUR)
    _load(engine, register, changes(3, t + 4 * HOUR, [ban(number, "R-56", start=t + 3 * DAY)]), now=t + 4 * HOUR)
    sweep_bans_in_effect(engine, t + 3 * DAY - HOUR)  # not started yet
    assert len(_alerts(engine)) == 1
    for step in (t + 3 * DAY + HOUR, t + 3 * DAY + 2 * HOUR, t + 4 * DAY):  # once for this imposition
        sweep_bans_in_effect(engine, step)
    assert [d["ban_reference"] for _, d in _alerts(engine)] == ["R-56", "R-56"]
    assert len(_hooks(engine)) == 2


def test_a_ban_in_force_postponed_alerts_again_when_it_starts(engine: sa.Engine, register: Register) -> None:
    """Review 156, finding 1: a ban in force (alerted by the load) amended to start later is no longer
    in force; when it starts, the sweep announces it again, once."""
    number = national_number(57)
    _nominated(engine, number)
    t = now()
    assert _load(engine, register, snapshot(1, t, [ban(number, "R-57", start=t - HOUR)]), now=t).nomination_alerts == 1
    _load(engine, register, changes(2, t + HOUR, [ban(number, "R-57", start=t + 2 * DAY)]), now=t + HOUR)
    sweep_bans_in_effect(engine, t + DAY)
    assert len(_alerts(engine)) == 1
    for step in (t + 2 * DAY + HOUR, t + 2 * DAY + 2 * HOUR):
        sweep_bans_in_effect(engine, step)
    assert [d["ban_reference"] for _, d in _alerts(engine)] == ["R-57", "R-57"]


def test_a_ban_lifted_and_sent_again_in_force_is_alerted_again_by_the_load(engine: sa.Engine,
                                                                          register: Register) -> None:
    """The load-time path follows the same rule by its own means: it acts on a ban that was not in
    effect for that subject before the load (identity.bans.loader ``_newly_in_effect``), so the same
    reference lifted and sent again with its start already past, even the same start, is announced
    again at that load, and the sweep does not repeat it."""
    number = national_number(59)
    _nominated(engine, number)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-59", start=t - HOUR)]), now=t)
    _load(engine, register, changes(2, t + HOUR, lifted=["R-59"]), now=t + HOUR)
    again = _load(engine, register, changes(3, t + 2 * HOUR, [ban(number, "R-59", start=t - HOUR)]), now=t + 2 * HOUR)
    assert again.nomination_alerts == 1
    sweep_bans_in_effect(engine, t + 3 * HOUR)
    assert [d["ban_reference"] for _, d in _alerts(engine)] == ["R-59", "R-59"]


def test_an_amendment_that_moves_only_the_end_alerts_nobody_again(engine: sa.Engine, register: Register) -> None:
    number = national_number(58)
    _nominated(engine, number)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-58", start=t + HOUR)]), now=t)
    sweep_bans_in_effect(engine, t + 2 * HOUR)
    _load(engine, register, changes(2, t + 3 * HOUR, [ban(number, "R-58", start=t + HOUR, days=30)]), now=t + 3 * HOUR)
    sweep_bans_in_effect(engine, t + 4 * HOUR)
    assert len(_alerts(engine)) == 1


def test_a_ban_at_another_port_deactivates_the_badge_but_alerts_no_nomination_at_load(
        engine: sa.Engine, register: Register) -> None:
    """Review 156, finding 2: a ban limited to Zeebrugge says nothing about a right at Antwerp
    (BEANR-K1700), where the gate lets the driver in (the screening's rule, _BanWindow.covers); his
    badge still turns inactive, as for a ban at any port."""
    number = national_number(60)
    p, _ = _nominated(engine, number, "active")
    t = now()
    result = _load(engine, register, snapshot(1, t, [ban(number, "R-60", start=t - HOUR, scope=["BEZEE"])]), now=t)
    assert (result.badges_deactivated, result.nomination_alerts) == (1, 0)
    assert (_alerts(engine), _hooks(engine)) == ([], [])


def test_a_ban_at_another_port_starting_later_alerts_no_nomination_at_the_sweep(engine: sa.Engine,
                                                                                register: Register) -> None:
    number = national_number(61)
    _, right_id = _nominated(engine, number)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-61", start=t + HOUR, scope=["BEZEE"])]), now=t)
    sweep_bans_in_effect(engine, t + 2 * HOUR)
    assert (_alerts(engine), _hooks(engine)) == ([], [])
    # a ban at his nomination's port, starting later still, is announced under its own reference
    _load(engine, register, changes(2, t + 3 * HOUR, [ban(number, "R-62", start=t + DAY, scope=["BEANR", "BEZEE"])]),
          now=t + 3 * HOUR)
    sweep_bans_in_effect(engine, t + DAY + HOUR)
    assert [(s, d["ban_reference"]) for s, d in _alerts(engine)] == [(str(right_id), "R-62")]


def test_a_ban_widened_to_the_nominations_port_alerts_it_once(engine: sa.Engine, register: Register) -> None:
    """An amendment that widens a ban in force onto Antwerp announces the Antwerp nomination; one that
    widens a ban already covering Antwerp onto another port announces nothing again."""
    number = national_number(63)
    _nominated(engine, number)
    t = now()
    _load(engine, register, snapshot(1, t, [ban(number, "R-63", start=t - HOUR, scope=["BEZEE"])]), now=t)
    assert _alerts(engine) == []
    widened = _load(engine, register, changes(2, t + HOUR, [ban(number, "R-63", start=t - HOUR,
                                                                scope=["BEANR", "BEZEE"])]), now=t + HOUR)
    assert widened.nomination_alerts == 1
    again = _load(engine, register, changes(3, t + 2 * HOUR, [ban(number, "R-63", start=t - HOUR,
                                                                  scope=["BEANR", "BEOST", "BEZEE"])]),
                  now=t + 2 * HOUR)
    assert again.nomination_alerts == 0
    sweep_bans_in_effect(engine, t + 3 * HOUR)
    assert len(_alerts(engine)) == 1

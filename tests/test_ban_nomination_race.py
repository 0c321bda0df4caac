"""Review 147, finding 1: a nomination in flight while a ban loads, on real PostgreSQL.

The nomination screened its driver without a lock on his person row, and the ban load looked for his
live nominations without waiting for it: a nomination screened clear and committed after the load had
looked was never alerted (port security and the haulier not told; its event said ``screening: clear``),
and the sweep's ``due_at_start`` (``nominated_at < banned_from``) skips it for good. Now the nomination
share-locks the driver's row before it screens (``Directory.hold_person``) and the load takes that row
(``deactivate_for_ban``) before ``live_nominations_of``: either the load waits and then alerts the
nomination, or the nomination waits and is screened against the ban.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bans.sweep import sweep_bans_in_effect
from quaygate.schema import badges, releases, webhook_subscriptions
from release_service.domain.errors import DomainError, ErrorCode
from release_service.services import issue
from tests.ban_register import Register, ban, national_number, snapshot
from tests.factories import do, issue_cmd, now, port
from tests.interleave import HeldBeforeCommit, in_thread, waits_on_a_lock
from tests.test_ban_nomination_alert import HOUR, _alerts, _hooks, _link, _load, _nominate

pytestmark = pytest.mark.postgres


@pytest.fixture
def register() -> Register:
    return Register()


def _right(engine: sa.Engine, number: str) -> tuple[Any, uuid.UUID]:
    """A linked driver with an active badge, not banned, and a right held by his haulier, not yet
    nominated; the haulier subscribed to the alerts (tests.test_ban_nomination_alert)."""
    p = port(engine)
    _link(engine, p.driver, number)
    with engine.begin() as conn:
        conn.execute(webhook_subscriptions.insert().values(
            id=uuid.uuid4(), organisation_id=p.haul.organisation_id, url="https://haulier.example/hooks",
            secret_enc="x", event_types=["release.nomination.*"], active=True, created_at=now()))
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, to=p.haul.organisation_id), now()))
    return p, right.id


def _attempt(engine: sa.Engine, p: Any, right_id: uuid.UUID) -> Any:
    try:
        _nominate(engine, p, right_id)
    except DomainError as exc:
        return exc
    return "nominated"


def _state(engine: sa.Engine, right_id: uuid.UUID) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.select(releases.c.state).where(releases.c.id == right_id)).scalar_one())


def test_a_load_during_a_screened_nomination_waits_and_alerts_it(pg_engine: sa.Engine, register: Register) -> None:
    """The nomination screened clear (no ban yet) and holds on just before its COMMIT; a snapshot banning
    its driver loads meanwhile. The load waits for the nomination's lock on the driver, then finds the
    nomination and alerts it, once: the sweeps after it add nothing. Before, the load did not wait, found
    no live nomination ("1 badges deactivated, 0 nomination alerts"), and nobody was ever told."""
    number = national_number(147)
    p, right_id = _right(pg_engine, number)
    t = now()
    with HeldBeforeCommit(pg_engine, "UPDATE releases") as nominating_held:
        nominating, nominated = in_thread(lambda: _attempt(pg_engine, p, right_id))
        assert nominating_held.held.wait(10)
        loading, loaded = in_thread(lambda: _load(pg_engine, register, snapshot(1, t, [
            ban(number, "R-147", start=t - HOUR)]), now=t))
        waited = waits_on_a_lock(pg_engine, loading)
        nominating_held.go.set()
        nominating.join(20)
        loading.join(20)
    assert nominated == ["nominated"]
    assert (loaded[0].badges_deactivated, loaded[0].nomination_alerts) == (1, 1)
    assert [(s, d["ban_reference"]) for s, d in _alerts(pg_engine)] == [(str(right_id), "R-147")]
    for step in (t + timedelta(minutes=1), t + 2 * HOUR):
        sweep_bans_in_effect(pg_engine, step)
    assert (len(_alerts(pg_engine)), len(_hooks(pg_engine))) == (1, 1)
    assert waited  # the load waited for the nomination's lock on the driver


def test_a_nomination_during_a_load_waits_and_is_screened_against_the_ban(pg_engine: sa.Engine,
                                                                          register: Register) -> None:
    """The other order: the load holds the driver's lock just before its COMMIT; the nomination waits
    for it and screens against the committed ban: refused, ``person_banned``. Before, it screened clear
    (the ban not committed), committed after the load had looked, and was never alerted."""
    number = national_number(148)
    p, right_id = _right(pg_engine, number)
    t = now()
    with HeldBeforeCommit(pg_engine, "INSERT INTO ban_feed_state") as loading_held:
        loading, loaded = in_thread(lambda: _load(pg_engine, register, snapshot(1, t, [
            ban(number, "R-148", start=t - HOUR)]), now=t))
        assert loading_held.held.wait(10)
        nominating, nominated = in_thread(lambda: _attempt(pg_engine, p, right_id))
        waited = waits_on_a_lock(pg_engine, nominating)
        loading_held.go.set()
        loading.join(20)
        nominating.join(20)
    assert loaded[0].badges_deactivated == 1
    refused = nominated[0]
    assert isinstance(refused, DomainError), refused
    assert refused.code is ErrorCode.DRIVER_SCREENING_FAILED
    assert "person_banned" in refused.context["reasons"]
    assert _state(pg_engine, right_id) != "nominated"
    with pg_engine.connect() as conn:
        assert conn.execute(sa.select(badges.c.status).where(badges.c.person_id == p.driver)).scalar_one() == \
            "inactive"
    assert waited  # the nomination waited for the load's lock on the driver

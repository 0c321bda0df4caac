"""A badge made usable while a ban load commits, on real PostgreSQL (security review: screening outside
the writing transaction).

Badge issue, reactivation and renewal screened the holder on a connection of their own and then wrote
in another transaction. A ban load committing in between skipped the badge (not active yet, or not
there yet), and the write then committed: a banned person held an active badge. Now the writing
transaction takes the person's row lock first and screens after it, and the ban load takes the same
lock before it reads the person's badges (identity.badges.service ``deactivate_for_ban``): in either
order the badge ends inactive or the write is refused, never banned and active.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from identity.badges.service import BadgeError, BadgeService, IssueBadge
from identity.bans.screening import StoredBanScreening
from identity.domain.badges import Scheme, with_check
from identity.domain.screening import ScreeningResult
from quaygate.schema import badges
from tests.ban_register import Register, ban, changes, national_number, snapshot
from tests.factories import now
from tests.interleave import HeldBeforeCommit, in_thread, waits_on_a_lock
from tests.test_port_bans import DAY, _load, _person

NUMBER = national_number(71)


class PausedScreening:
    """The register's screening, held right after it answered (inside the writer's transaction once
    mended, with the person's lock): ``screened`` is set, and it returns once ``go`` is set."""

    def __init__(self, inner: StoredBanScreening) -> None:
        self.inner = inner
        self.screened, self.go = threading.Event(), threading.Event()

    def screen(self, person_id: uuid.UUID, now: datetime, *, conn: Any = None) -> ScreeningResult:
        result = self.inner.screen(person_id, now, conn=conn)
        self.screened.set()
        assert self.go.wait(30), "never released"
        return result


@pytest.fixture
def register() -> Register:
    return Register()


def _setup(engine: sa.Engine, register: Register) -> tuple[uuid.UUID, uuid.UUID, StoredBanScreening]:
    """A linked person, a list in force that does not ban him, and his badge, inactive (as after an
    earlier ban that was lifted)."""
    _load(engine, register, snapshot(1, now(), []))
    person = _person(engine, NUMBER)
    screening = StoredBanScreening(engine, max_list_age=DAY)
    service = BadgeService(engine, screening)
    badge = service.issue(_issue(person, 10024), actor="desk", now=now()).badge.id
    service.change_status(badge, "inactive", reason="lost", actor="desk", now=now())
    return person, badge, screening


def _issue(person: uuid.UUID, serial: int) -> IssueBadge:
    return IssueBadge(person, "alfapass", with_check(Scheme.ALFAPASS, serial), None, None, now() - DAY,
                      now() + 300 * DAY)


def _ban_load(engine: sa.Engine, register: Register) -> Any:
    t = now()
    return _load(engine, register, changes(2, t, [ban(NUMBER, "R-71", start=t - DAY)]))


def _statuses(engine: sa.Engine, person: uuid.UUID) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(badges.c.status).where(badges.c.person_id == person)
                                 .order_by(badges.c.created_at)).scalars())


@contextmanager
def _paused(service_call: Any, paused: PausedScreening) -> Iterator[tuple[threading.Thread, list[Any]]]:
    def call() -> Any:
        try:
            return service_call()
        except BadgeError as exc:
            return exc
    thread, out = in_thread(call)
    try:
        assert paused.screened.wait(10)
        yield thread, out
    finally:
        paused.go.set()
        thread.join(20)


@pytest.mark.parametrize("action", ["reactivate", "renew", "issue"])
def test_a_ban_load_during_a_screened_write_still_ends_with_no_usable_badge(
        pg_engine: sa.Engine, register: Register, action: str) -> None:
    """The write screened clear (the ban not loaded yet) and holds on; the ban load runs into it. The
    ban load waits for the person's lock, and once the write commits it deactivates the badge the
    write made usable. Before, the ban load committed at once, skipping the inactive (or not yet
    written) badge, and the write then made it active."""
    person, badge, screening = _setup(pg_engine, register)
    paused = PausedScreening(screening)
    service = BadgeService(pg_engine, paused)
    write = {
        "reactivate": lambda: service.change_status(badge, "active", reason="found", actor="desk", now=now()),
        "renew": lambda: service.renew(badge, valid_until=now() + 200 * DAY, reason="renewal", actor="desk",
                                       now=now()),
        "issue": lambda: service.issue(_issue(person, 10026), actor="desk", now=now()),
    }[action]
    if action == "renew":  # a renewal of an expired badge makes it active again
        with pg_engine.begin() as conn:
            conn.execute(badges.update().where(badges.c.id == badge).values(status="expired"))
    with _paused(write, paused) as (writer, written):
        loading, loaded = in_thread(lambda: _ban_load(pg_engine, register))
        waited = waits_on_a_lock(pg_engine, loading)
        paused.go.set()
        writer.join(20)
        loading.join(20)
    assert loaded[0].status == "applied"
    assert not isinstance(written[0], BadgeError), written[0]
    assert "active" not in _statuses(pg_engine, person)  # never banned and active
    assert waited  # the ban load waited for the writer's lock on the person
    assert loaded[0].badges_deactivated == 1


@pytest.mark.parametrize("action", ["reactivate", "issue"])
def test_a_write_during_a_ban_load_waits_and_is_refused(pg_engine: sa.Engine, register: Register,
                                                        action: str) -> None:
    """The other order: the ban load holds the person's lock just before its COMMIT; the write waits
    for it and then screens against the committed ban. Before, it screened clear on a connection of
    its own and then wrote: banned and active."""
    person, badge, screening = _setup(pg_engine, register)
    service = BadgeService(pg_engine, screening)
    write = {
        "reactivate": lambda: service.change_status(badge, "active", reason="found", actor="desk", now=now()),
        "issue": lambda: service.issue(_issue(person, 10026), actor="desk", now=now()),
    }[action]

    def attempt() -> Any:
        try:
            return write()
        except BadgeError as exc:
            return exc

    with HeldBeforeCommit(pg_engine, "INSERT INTO ban_feed_state") as loading_held:
        loading, loaded = in_thread(lambda: _ban_load(pg_engine, register))
        assert loading_held.held.wait(10)
        writer, written = in_thread(attempt)
        waited = waits_on_a_lock(pg_engine, writer)
        loading_held.go.set()
        loading.join(20)
        writer.join(20)
    assert loaded[0].status == "applied"
    assert _statuses(pg_engine, person) == ["inactive"]  # never banned and active
    assert isinstance(written[0], BadgeError) and written[0].code == "person_banned"
    assert waited  # the write waited for the ban load's lock on the person


def test_the_lock_order_is_person_then_badge(pg_engine: sa.Engine, register: Register) -> None:
    """Many reactivations and ban loads of one person at once end without a deadlock, and with no
    active badge once the ban is in."""
    person, badge, screening = _setup(pg_engine, register)
    service = BadgeService(pg_engine, screening)
    results: list[Any] = []

    def reactivate() -> None:
        try:
            results.append(service.change_status(badge, "active", reason="found", actor="desk", now=now()))
        except BadgeError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=reactivate) for _ in range(4)]
    loader = threading.Thread(target=lambda: results.append(_ban_load(pg_engine, register)))
    for t in (*threads[:2], loader, *threads[2:]):
        t.start()
    for t in (*threads, loader):
        t.join(30)
    assert not any(isinstance(r, str) and r not in ("person_banned", "status_unchanged") for r in results), results
    assert _statuses(pg_engine, person) == ["inactive"]

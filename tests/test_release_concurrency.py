"""Races on real PostgreSQL: many parties acting on one right at once, overlapping batches."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import release_events, releases, transfers
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain.errors import DomainError
from release_service.domain.release import State
from release_service.services import issue, nominate
from release_service.services import transfers as transfer_uc

from .factories import do, issue_cmd, now, port

pytestmark = pytest.mark.postgres


def _race(engine: sa.Engine, actions: list[Callable[[Any], Any]]) -> tuple[int, Counter[str]]:
    barrier = threading.Barrier(len(actions))
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def worker(action: Callable[[Any], Any]) -> None:
        barrier.wait()
        try:
            do(engine, action)
            result = "ok"
        except DomainError as exc:
            result = exc.code.value
        with lock:
            outcomes[result] += 1

    threads = [threading.Thread(target=worker, args=(a,)) for a in actions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return outcomes["ok"], outcomes


def test_fifty_concurrent_transfers_accepts_and_nominations(pg_engine: sa.Engine) -> None:
    engine = pg_engine
    p = port(engine)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), now()))
    rid = right.id

    def pending_id(uow: Any) -> uuid.UUID:
        r = uow.releases.get(rid)
        if r.pending_transfer is None:
            raise DomainError(transfer_uc.ErrorCode.TRANSFER_NOT_PENDING, "none pending")  # type: ignore[attr-defined]
        return r.pending_transfer.id  # type: ignore[no-any-return]

    def send(sender: Any, to: Any) -> Callable[[Any], Any]:
        return lambda uow: transfer_uc.transfer(uow, sender, rid, to.organisation_id, now())

    def accept(who: Any) -> Callable[[Any], Any]:
        return lambda uow: transfer_uc.accept(uow, who, pending_id(uow), now())

    def nominate_by(who: Any) -> Callable[[Any], Any]:
        cmd = nominate.NominateCommand("1ABC123", "BE", p.driver)
        return lambda uow: nominate.nominate(uow, who, rid, cmd, now())

    actions: list[Callable[[Any], Any]] = []
    actions += [send(p.fwd, p.haul) for _ in range(8)] + [send(p.fwd, p.haul2) for _ in range(7)]
    actions += [send(p.haul, p.haul2) for _ in range(5)]
    actions += [accept(p.haul) for _ in range(8)] + [accept(p.haul2) for _ in range(7)]
    actions += [nominate_by(p.haul) for _ in range(8)] + [nominate_by(p.haul2) for _ in range(7)]
    random.Random(7).shuffle(actions)
    assert len(actions) == 50
    ok, outcomes = _race(engine, actions)
    assert ok >= 1, outcomes

    with engine.connect() as conn:
        row = conn.execute(sa.select(releases).where(releases.c.id == rid)).mappings().one()
        events = conn.execute(sa.select(release_events).where(release_events.c.release_id == rid)
                              .order_by(release_events.c.seq)).mappings().all()
        ts = conn.execute(sa.select(transfers).where(transfers.c.release_id == rid)).mappings().all()

    # one history: gap-free sequence, one event per successful action, plus the issue
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len(events) == ok + 1
    # one legal state, consistent with that history
    assert sum(1 for t in ts if t["state"] == "pending") <= 1
    accepted = [e for e in events if e["type"] == "release.transfer.accepted"]
    assert len(accepted) == sum(1 for t in ts if t["state"] == "accepted")
    holder = uuid.UUID(accepted[-1]["data"]["to"]) if accepted else p.fwd.organisation_id
    assert row["holder_organisation_id"] == holder
    replayed_holder = p.fwd.organisation_id
    for e in events:
        if e["type"] == "release.transfer.requested":
            assert uuid.UUID(e["data"]["from"]) == replayed_holder  # only the holder of the moment sent it
        if e["type"] == "release.transfer.accepted":
            replayed_holder = uuid.UUID(e["data"]["to"])
        if e["type"] in ("release.nominated", "release.renominated"):
            assert uuid.UUID(e["actor"]["organisation_id"]) == replayed_holder
    if row["state"] == State.NOMINATED.value:
        assert row["nominated_by"] == row["holder_organisation_id"]
    else:
        assert row["state"] == State.ACTIVE.value and row["driver_person_id"] is None
    assert row["version"] == ok


def test_concurrent_overlapping_batches_never_make_two_live_rights(pg_engine: sa.Engine) -> None:
    engine = pg_engine
    p = port(engine)
    ranges = [range(0, 400), range(200, 600), range(100, 500), range(300, 700)]
    results: list[list[issue.BatchItemResult]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(ranges))

    def worker(rng: range) -> None:
        cmds = [issue_cmd(p, n) for n in rng]
        barrier.wait()
        out = do(engine, lambda uow: issue.issue_batch(uow, p.line, cmds, now()))
        with lock:
            results.append(out)

    threads = [threading.Thread(target=worker, args=(r,)) for r in ranges]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 4
    created = sum(1 for batch in results for r in batch if r.release_id)
    with engine.connect() as conn:
        per_key = conn.execute(
            sa.select(releases.c.container_number, sa.func.count())
            .where(releases.c.state.in_(["active", "nominated", "gated_in"]))
            .group_by(releases.c.container_number, releases.c.vessel_call)
        ).all()
    assert len(per_key) == 700 and all(count == 1 for _, count in per_key)
    assert created == 700


def test_concurrent_idempotent_retries_have_one_effect(pg_engine: sa.Engine) -> None:
    from release_service.services.common import IdempotencyRequest, run

    engine = pg_engine
    p = port(engine)
    answers: list[Any] = []
    lock = threading.Lock()
    barrier = threading.Barrier(10)

    def worker() -> None:
        barrier.wait()
        out = run(SqlUnitOfWork(engine), lambda uow: issue.issue(uow, p.line, issue_cmd(p, 42), now()),
                  lambda r: (201, {"release_id": str(r[0].id)}),
                  idempotency=IdempotencyRequest(p.line.client_id, "same-key", "fp"), now=now())
        with lock:
            answers.append(out)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(answers) == 10 and len({str(a) for a in answers}) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(releases)).scalar_one() == 1


def test_a_right_locked_after_a_wait_is_read_as_its_last_holder_left_it(pg_engine: sa.Engine) -> None:
    """The right's lock and its read are two statements: a reader that waited for the lock sees the
    transfer its holder accepted, never the older snapshot's pending one (EvalPlanQual keeps unlocked
    joined rows as they were: one statement let a second accept of the same transfer through)."""
    engine = pg_engine
    p = port(engine)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), now()))
    sent, _ = do(engine, lambda uow: transfer_uc.transfer(uow, p.fwd, right.id, p.haul.organisation_id, now()))
    first = SqlUnitOfWork(engine)
    with first:
        transfer_uc.accept(first, p.haul, sent.id, now())  # holds the right's lock, not committed yet
        seen: list[Any] = []
        started = threading.Event()

        def waiter() -> None:
            with SqlUnitOfWork(engine) as second:
                started.set()
                seen.append(second.releases.get(right.id, for_update=True))  # waits for the lock

        thread = threading.Thread(target=waiter)
        thread.start()
        assert started.wait(10)
        with engine.connect() as watch:  # until the second reader is blocked on the right's lock
            for _ in range(500):
                waiting = watch.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'")).scalar()
                if waiting:
                    break
                threading.Event().wait(0.02)
        assert waiting == 1 and thread.is_alive()
        first.commit()
    thread.join(10)
    assert len(seen) == 1 and seen[0] is not None
    assert seen[0].pending_transfer is None and seen[0].holder_organisation_id == p.haul.organisation_id
    with pytest.raises(DomainError):  # and so a second accept of the same transfer is refused
        do(engine, lambda uow: transfer_uc.accept(uow, p.haul, sent.id, now()))

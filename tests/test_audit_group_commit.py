"""GroupCommit: audit entries without a transaction of their own, committed together, never lost."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from identity.audit import Entry, GroupCommit
from quaygate.db import make_engine
from quaygate.schema import audit_log
from release_service.adapters.audit import WRITER_TXID, append_committed

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _subjects(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.subject).where(audit_log.c.kind == "t.group")).scalars())


def _record(group: GroupCommit, subject: str) -> None:
    group.record("t.group", at=NOW, actor={"client_id": "m"}, subject=subject, data={"n": subject})


def test_one_caller_is_committed_when_record_returns(engine: sa.Engine) -> None:
    group = GroupCommit.on(engine)
    _record(group, "one")
    assert _subjects(engine) == ["one"] and group.batches == 1


def test_concurrent_callers_share_commits_and_each_returns_only_once_committed(engine: sa.Engine) -> None:
    real = GroupCommit.on(engine)._write
    first = threading.Event()

    def slow_write(entries: list[Entry]) -> None:
        if not first.is_set():
            first.set()
            time.sleep(0.2)  # the others queue up behind this write
        real(entries)

    group = GroupCommit(slow_write)
    seen_after_return: dict[str, bool] = {}
    errors: list[BaseException] = []

    def caller(i: int) -> None:
        try:
            if i:
                first.wait(5)
            _record(group, f"s{i}")
            seen_after_return[f"s{i}"] = f"s{i}" in _subjects(engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors and not any(t.is_alive() for t in threads)
    subjects = _subjects(engine)
    assert sorted(subjects) == sorted(f"s{i}" for i in range(30))  # each exactly once
    assert all(seen_after_return.values()) and len(seen_after_return) == 30
    assert group.batches < 30 and group.batches >= 2  # shared: 29 waited behind the first write


def test_a_failed_write_raises_in_every_caller_of_its_batch_and_the_next_batch_is_written(
        engine: sa.Engine) -> None:
    real = GroupCommit.on(engine)._write
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def write(entries: list[Entry]) -> None:
        calls.append(len(entries))
        if len(calls) == 1:
            started.set()
            release.wait(5)  # hold the first write until the others are queued
            real(entries)
        elif len(calls) == 2:
            raise sa.exc.OperationalError("INSERT", {}, Exception("connection lost"))
        else:
            real(entries)

    group = GroupCommit(write)
    outcome: dict[str, str] = {}

    def caller(name: str) -> None:
        try:
            _record(group, name)
            outcome[name] = "ok"
        except sa.exc.OperationalError:
            outcome[name] = "raised"

    lead = threading.Thread(target=caller, args=("lead",))
    lead.start()
    assert started.wait(5)
    queued = [threading.Thread(target=caller, args=(f"q{i}",)) for i in range(5)]
    for t in queued:
        t.start()
    deadline = time.monotonic() + 5
    while len(group._queued) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for t in [lead, *queued]:
        t.join(10)
    assert outcome == {"lead": "ok", **{f"q{i}": "raised" for i in range(5)}}  # the 5 were one batch
    assert calls == [1, 5]
    assert _subjects(engine) == ["lead"]  # the failed batch wrote nothing, and said so to each caller
    _record(group, "after")  # the queue has a writer again
    assert sorted(_subjects(engine)) == ["after", "lead"]


def test_an_interrupted_write_leaves_the_queue_usable(engine: sa.Engine) -> None:
    real = GroupCommit.on(engine)._write
    interrupt = [True]

    def write(entries: list[Entry]) -> None:
        if interrupt.pop() if interrupt else False:
            raise KeyboardInterrupt
        real(entries)

    group = GroupCommit(write)
    with pytest.raises(KeyboardInterrupt):
        _record(group, "lost")
    _record(group, "kept")
    assert _subjects(engine) == ["kept"]


# ---- append_committed: the write behind GroupCommit and audit.record(engine=...) ----------------------


def _entry(subject: str, kind: str | None = "t.alone") -> Entry:
    return (kind, {"client_id": "m"}, subject, {"n": subject}, NOW)  # type: ignore[return-value]


def _rows(engine: sa.Engine, kind: str = "t.alone") -> list[tuple[str, int | None]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            sa.select(audit_log.c.subject, audit_log.c.txid).where(audit_log.c.kind == kind).order_by(audit_log.c.id))]


def test_one_entry_is_committed_alone_and_carries_its_own_txid(engine: sa.Engine) -> None:
    append_committed(engine, [_entry("a")])
    append_committed(engine, [_entry("b")])
    rows = _rows(engine)
    assert [s for s, _ in rows] == ["a", "b"]
    if engine.dialect.name == "postgresql":  # the sealer's horizon needs each writer's txid
        assert all(t is not None for _, t in rows) and rows[0][1] != rows[1][1]


def test_several_entries_are_written_all_or_none(engine: sa.Engine) -> None:
    append_committed(engine, [_entry("x"), _entry("y")])
    assert [s for s, _ in _rows(engine)] == ["x", "y"]
    if engine.dialect.name == "postgresql":
        assert len({t for _, t in _rows(engine)}) == 1  # one transaction
    with pytest.raises(sa.exc.IntegrityError):
        append_committed(engine, [_entry("p"), _entry("q", kind=None)])  # kind is NOT NULL
    assert [s for s, _ in _rows(engine)] == ["x", "y"]


def _rolled(conn: sa.Connection) -> sa.Insert:
    """A plain INSERT of an entry, to be rolled back; on PostgreSQL with its writer's txid, as migration 0021's
    trigger asks."""
    txid = {"txid": WRITER_TXID} if conn.dialect.name == "postgresql" else {}
    return audit_log.insert().values(kind="t.alone", actor={}, subject="rolled", data={}, at=NOW, **txid)


def test_a_refused_single_entry_writes_nothing_and_leaves_the_pool_in_transactions(engine: sa.Engine) -> None:
    one = make_engine(engine.url.render_as_string(hide_password=False), pool_size=1, max_overflow=0)
    try:
        with pytest.raises(sa.exc.IntegrityError):
            append_committed(one, [_entry("r", kind=None)])
        append_committed(one, [_entry("s")])
        # the autocommit of a single entry must not outlive it: the one pooled connection is
        # transactional again, so this write is rolled back
        with one.connect() as conn:
            conn.execute(_rolled(conn))
            conn.rollback()
    finally:
        one.dispose()
    assert [s for s, _ in _rows(engine)] == ["s"]


def test_a_single_entry_on_a_lost_connection_fails_and_the_next_gets_a_live_one(pg_engine: sa.Engine) -> None:
    """The single entry goes on a pooled connection without a SQLAlchemy Connection around it: one that
    the database dropped while it sat in the pool fails that write, is invalidated, and is never given
    out again; the next write gets a live connection and is committed."""
    one = make_engine(pg_engine.url.render_as_string(hide_password=False), pool_size=1, max_overflow=0)
    try:
        append_committed(one, [_entry("before")])
        with one.connect() as conn:  # the pool's one connection, just checked in: no idle ping for it
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
            conn.rollback()
        with pg_engine.connect() as killer:
            killer.execute(sa.text("SELECT pg_terminate_backend(:p, 10000)"), {"p": pid})  # waits till it ended
        with pytest.raises(sa.exc.DBAPIError) as raised:
            append_committed(one, [_entry("lost")])
        assert raised.value.connection_invalidated
        append_committed(one, [_entry("after")])
        with one.connect() as conn:  # the connection given back is transactional, as it came
            conn.execute(_rolled(conn))
            conn.rollback()
    finally:
        one.dispose()
    assert [s for s, _ in _rows(pg_engine)] == ["before", "after"]

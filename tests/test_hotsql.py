"""quaygate/hotsql.py on real PostgreSQL (and the SQLite fallback): the same rows, types and effects
as ``conn.execute``, in the connection's transaction, with SQLAlchemy's errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.hotsql import HotStatement, listed, text_array
from quaygate.schema import audit_log, login_sessions, persons
from release_service.adapters.audit import WRITER_TXID

from .aio import run_async
from .conftest import refusing_connections

_PERSON = persons.insert()
_SESSION = HotStatement(login_sessions.insert())
_READ = sa.select(login_sessions, persons.c.status.label("person_status")).join(
    persons, persons.c.id == login_sessions.c.person_id).where(login_sessions.c.sid == sa.bindparam("sid"))
_HOT_READ = HotStatement(_READ)
_END = HotStatement(login_sessions.update().where(login_sessions.c.sid == sa.bindparam("s"),
                                                  login_sessions.c.ended_at.is_(None))
                    .values(ended_at=sa.bindparam("at", type_=login_sessions.c.ended_at.type)))
# On PostgreSQL with the writer's txid, as migration 0021's trigger asks (and SqlAuditLog writes it).
_AUDIT = {"sqlite": HotStatement(audit_log.insert().inline()),
          "postgresql": HotStatement(audit_log.insert().inline().values(txid=WRITER_TXID))}


def _person(conn: sa.Connection) -> uuid.UUID:
    pid = uuid.uuid4()
    conn.execute(_PERSON, {"id": pid, "given_name": "Hot", "family_name": "Path", "created_at": datetime.now(UTC)})
    return pid


def _session(pid: uuid.UUID, now: datetime) -> dict[str, object]:
    return {"id_hash": uuid.uuid4().hex, "sid": uuid.uuid4().hex, "person_id": pid, "acr": "urn:x",
            "amr": ["hwk", "user"], "auth_time": now, "created_at": now, "expires_at": now + timedelta(hours=1)}


def test_rows_and_types_are_those_of_conn_execute(engine: sa.Engine) -> None:
    now = datetime.now(UTC).replace(microsecond=123456)
    with engine.begin() as conn:
        pid = _person(conn)
        row = _session(pid, now)
        assert _SESSION.execute(conn, row).rowcount == 1
    with engine.connect() as conn:
        hot = _HOT_READ.execute(conn, {"sid": row["sid"]}).first()
        plain = conn.execute(_READ, {"sid": row["sid"]}).first()
    assert hot is not None and plain is not None
    assert tuple(hot) == tuple(plain)
    assert [type(v) for v in hot] == [type(v) for v in plain]
    assert hot.person_id == pid and isinstance(hot.person_id, uuid.UUID)
    assert hot.amr == ["hwk", "user"]  # JSON back as JSON
    assert hot.auth_time == now and hot.auth_time.utcoffset() == timedelta(0)  # UTCDateTime's result side
    assert hot.person_status == "active" and hot.ended_at is None
    with engine.connect() as conn:
        assert _HOT_READ.execute(conn, {"sid": "none such"}).first() is None
        assert _HOT_READ.execute(conn, {"sid": "none such"}).all() == []
        assert _HOT_READ.execute(conn, {"sid": row["sid"]}).scalar() == row["id_hash"]


def test_writes_belong_to_the_connections_transaction(engine: sa.Engine) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        pid = _person(conn)
    kept, dropped, unfinished = _session(pid, now), _session(pid, now), _session(pid, now)
    with engine.connect() as conn:  # a statement sent first on a connection begins its transaction
        _SESSION.execute(conn, kept)
        conn.commit()
        _SESSION.execute(conn, dropped)
        conn.rollback()
        _SESSION.execute(conn, unfinished)  # given back to the pool uncommitted: rolled back
    with engine.connect() as conn:
        sids = set(conn.execute(sa.select(login_sessions.c.sid).where(login_sessions.c.person_id == pid)).scalars())
    assert sids == {kept["sid"]}
    with engine.begin() as conn:  # an UPDATE's rowcount, and a bind type given on the statement
        assert _END.execute(conn, {"s": kept["sid"], "at": now}).rowcount == 1
        assert _END.execute(conn, {"s": kept["sid"], "at": now}).rowcount == 0


def test_bind_types_still_apply(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        pid = _person(conn)
    naive = _session(pid, datetime.now(UTC))
    naive["auth_time"] = datetime(2026, 1, 1)  # noqa: DTZ001 - the point: UTCDateTime refuses it
    with engine.connect() as conn, pytest.raises(sa.exc.StatementError, match="naive datetime"):
        _SESSION.execute(conn, naive)


def test_many_rows_in_one_call_and_driver_errors_as_sqlalchemys(engine: sa.Engine) -> None:
    now = datetime.now(UTC)
    kind = f"test.hotsql.{uuid.uuid4().hex[:8]}"
    entries = [{"kind": kind, "actor": {"n": i}, "subject": None, "data": {"i": i}, "at": now} for i in range(3)]
    with engine.begin() as conn:
        _AUDIT[engine.dialect.name].execute(conn, entries)
    with engine.connect() as conn:
        data = sa.select(audit_log.c.data).where(audit_log.c.kind == kind).order_by(audit_log.c.id)
        assert list(conn.execute(data).scalars()) == [{"i": 0}, {"i": 1}, {"i": 2}]
    with engine.begin() as conn:
        pid = _person(conn)
        row = _session(pid, now)
        _SESSION.execute(conn, row)
    with engine.connect() as conn:
        with pytest.raises(sa.exc.IntegrityError):
            _SESSION.execute(conn, row)  # the same primary key again
        conn.rollback()
        assert _HOT_READ.execute(conn, {"sid": row["sid"]}).first() is not None  # the connection still works


def test_a_statement_that_returns_rows_is_never_sent_many_times(pg_engine: sa.Engine) -> None:
    with pg_engine.connect() as conn, pytest.raises(ValueError, match="executemany"):
        _HOT_READ.execute(conn, [{"sid": "a"}, {"sid": "b"}])


def test_a_lost_connection_is_invalidated_not_given_out_again(pg_engine: sa.Engine) -> None:
    with pg_engine.connect() as victim:
        pid = victim.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        victim.rollback()
        with pg_engine.connect() as killer:
            killer.execute(sa.text("SELECT pg_terminate_backend(:p, 10000)"), {"p": pid})  # waits till it ended
        with pytest.raises(sa.exc.DBAPIError) as raised:
            _HOT_READ.execute(victim, {"sid": "x"})
        assert raised.value.connection_invalidated
        assert victim.invalidated
    with pg_engine.connect() as conn:  # the pool hands out a live one
        assert _HOT_READ.execute(conn, {"sid": "x"}).first() is None


def test_a_listed_parameter_is_the_array_of_its_values(pg_engine: sa.Engine) -> None:
    """``listed`` + ``text_array``: one text parameter, split by PostgreSQL into the array of the values,
    typed as asked; an empty list is an empty array, and a value holding the separator is refused
    (it would become two values)."""
    ids = [uuid.uuid4(), uuid.uuid4()]
    texts = HotStatement(sa.select(text_array("t").label("a")))
    uuids = HotStatement(sa.select(text_array("u", sa.Uuid(as_uuid=True)).label("a")))
    member = HotStatement(sa.select(sa.literal(ids[1], sa.Uuid(as_uuid=True)) == sa.any_(
        text_array("u", sa.Uuid(as_uuid=True)))))
    with pg_engine.connect() as conn:
        assert texts.execute(conn, {"t": listed(["MSCU1234566", "release.*"])}).scalar() == ["MSCU1234566", "release.*"]
        assert texts.execute(conn, {"t": listed([])}).scalar() == []
        assert uuids.execute(conn, {"u": listed(ids)}).scalar() == ids
        assert member.execute(conn, {"u": listed(ids)}).scalar() is True
        assert member.execute(conn, {"u": listed(ids[:1])}).scalar() is False
    with pytest.raises(ValueError, match="separator"):
        listed(["a,b"])


# ---- on the event loop's connections (quaygate/loopdb.py) ------------------------------------------


def _on_loop(engine: sa.Engine, use: Any, **kw: Any) -> Any:
    from quaygate.loopdb import LoopDatabase

    async def run() -> Any:
        db = LoopDatabase(engine, **kw)
        await db.open()
        try:
            return await use(db)
        finally:
            await db.close()

    return run_async(run)


def test_on_the_loop_rows_types_and_errors_are_those_of_conn_execute(pg_engine: sa.Engine) -> None:
    """``execute_async``: the same rows, value types and SQLAlchemy errors as ``conn.execute``; each
    statement committed on its own (autocommit); the connection still usable after an error."""
    now = datetime.now(UTC).replace(microsecond=123456)
    with pg_engine.begin() as conn:
        pid = _person(conn)
    row = _session(pid, now)

    async def use(db: Any) -> Any:
        async with db.connection() as conn:
            assert (await _SESSION.execute_async(conn, db.dialect, row)).rowcount == 1
            with pytest.raises(sa.exc.IntegrityError):
                await _SESSION.execute_async(conn, db.dialect, row)  # the same primary key again
            hot = (await _HOT_READ.execute_async(conn, db.dialect, {"sid": row["sid"]})).first()
            none = (await _HOT_READ.execute_async(conn, db.dialect, {"sid": "none such"})).all()
        return hot, none

    hot, none = _on_loop(pg_engine, use)
    with pg_engine.connect() as conn:  # committed: seen from another connection
        plain = conn.execute(_READ, {"sid": row["sid"]}).first()
    assert plain is not None and none == []
    assert tuple(hot) == tuple(plain) and [type(v) for v in hot] == [type(v) for v in plain]
    assert hot.amr == ["hwk", "user"] and hot.auth_time == now and hot.auth_time.utcoffset() == timedelta(0)


def test_on_the_loop_a_lost_connection_is_never_given_out_again(pg_engine: sa.Engine) -> None:
    async def use(db: Any) -> Any:
        async with db.connection() as conn:
            pid = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]
        with pg_engine.connect() as killer:
            killer.execute(sa.text("SELECT pg_terminate_backend(:p, 10000)"), {"p": pid})  # waits till it ended
        with pytest.raises(sa.exc.DBAPIError) as raised:
            async with db.connection() as conn:  # the pool's only connection: the lost one
                await _HOT_READ.execute_async(conn, db.dialect, {"sid": "x"})
        assert raised.value.connection_invalidated
        async with db.connection() as conn:  # a new one
            assert (await _HOT_READ.execute_async(conn, db.dialect, {"sid": "x"})).first() is None
            return (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0], pid

    now_pid, lost_pid = _on_loop(pg_engine, use, size=1)
    assert now_pid != lost_pid


def test_on_the_loop_no_free_connection_is_busy_with_nothing_sent(pg_engine: sa.Engine) -> None:
    from quaygate.loopdb import Busy

    async def use(db: Any) -> None:
        async with db.connection():
            with pytest.raises(Busy):
                async with db.connection():
                    raise AssertionError("never reached")

    _on_loop(pg_engine, use, size=1, wait=0.2)


def test_on_the_loop_a_wait_that_ran_out_rests_the_pool_till_a_probe_gets_a_connection(pg_engine: sa.Engine) -> None:
    """The database refuses new connections: the first wait runs out (``Busy``), then the pool rests
    and is asked nothing (every commit goes to the worker threads at once); once the rest is over, a
    probe in the background asks for one connection and the pool rests again while refused, and is
    usable again once the database accepts connections."""
    import asyncio

    from quaygate.loopdb import Busy

    now = [0.0]

    async def use(db: Any) -> list[Any]:
        seen: list[Any] = [db.usable()]
        with refusing_connections(pg_engine):
            with pytest.raises(Busy):
                async with db.connection():
                    raise AssertionError("never reached")
            asked = db.stats()["requests_num"]
            now[0] = 59.0
            seen += [db.usable(), db._probe, db.stats()["requests_num"] - asked]  # resting: nothing asked
            now[0] = 60.0
            seen.append(db.usable())  # the rest is over: a probe starts, this caller still goes elsewhere
            probe = db._probe
            seen.append(db.usable())  # one probe at a time
            assert probe is not None and db._probe is probe
            await probe
            seen += [db.stats()["requests_num"] - asked, db._resting_until, db.usable()]  # refused: rests again
        # The pool's own attempts to connect back off (psycopg_pool: 1 s, 2 s, ...): probes, a rest
        # apart, until one finds the connection it made.
        probes = 0
        while not db.usable():
            assert probes < 60, "never usable again"
            now[0] += 120.0
            if not db.usable():
                probes += 1
                await asyncio.wait_for(db._probe, 10)
        seen.append(db.usable())
        async with db.connection() as conn:
            seen.append((await (await conn.execute("SELECT 7")).fetchone())[0])
        return seen

    assert _on_loop(pg_engine, use, size=1, wait=0.3, rest=60.0, clock=lambda: now[0]) == [
        True, False, None, 0, False, False, 1, 120.0, False, True, 7]


def test_on_the_loop_close_ends_a_probe_that_waits(pg_engine: sa.Engine) -> None:
    import asyncio

    from quaygate.loopdb import Busy

    now = [0.0]

    async def use(db: Any) -> None:
        with refusing_connections(pg_engine):
            with pytest.raises(Busy):
                async with db.connection():
                    raise AssertionError("never reached")
            db._pool.timeout = 60.0  # the probe's own wait: longer than this test may take
            now[0] = 10.0
            assert not db.usable() and db._probe is not None
            probe = db._probe
            await asyncio.sleep(0.1)
            assert not probe.done()
            await asyncio.wait_for(db.close(), 10)  # the probe is cancelled, not waited for
            assert probe.done() and db._probe is None and not db.usable()

    _on_loop(pg_engine, use, size=1, wait=0.3, rest=1.0, clock=lambda: now[0])


def test_on_the_loop_work_runs_to_its_end_after_its_caller_left_and_close_waits_for_it(
        pg_engine: sa.Engine, caplog: pytest.LogCaptureFixture) -> None:
    """``run_to_end``: a caller cancelled mid-statement (a gate that hung up) leaves its work running,
    as a worker thread would; ``close`` waits for it before closing the connections; work that fails
    after its caller left is logged."""
    import asyncio

    done: list[str] = []

    async def slow(tag: str, fail: bool = False) -> str:
        async with db_ref[0].connection() as conn:
            await conn.execute("SELECT pg_sleep(0.3)")
        done.append(tag)
        if fail:
            raise RuntimeError("failed after its caller left")
        return tag

    db_ref: list[Any] = []

    async def use(db: Any) -> None:
        db_ref.append(db)
        caller = asyncio.ensure_future(db.run_to_end(slow("kept")))
        failing = asyncio.ensure_future(db.run_to_end(slow("failing", fail=True)))
        await asyncio.sleep(0.05)
        caller.cancel()
        failing.cancel()
        for gone in (caller, failing):
            with pytest.raises(asyncio.CancelledError):
                await gone
        assert done == []  # still running
        await db.close()  # waits for both
        assert sorted(done) == ["failing", "kept"]

    with caplog.at_level("ERROR", logger="quaygate.loopdb"):
        _on_loop(pg_engine, use, size=2)
    assert any(r.message == "quaygate.loop_db.orphan_failed" for r in caplog.records)

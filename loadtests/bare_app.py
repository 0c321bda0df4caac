"""The bare endpoint the gate verify is measured against (bench_gate.py): a FastAPI JSON POST that
validates the same request model as POST /gate/v1/verify and answers a response of the same shape,
with nothing behind it (no token, no database). Served by uvicorn exactly as the app is.

Beside it, the floors (``/bare/verify-floor*``, ``/bare/verify-commit-floor*``): the same endpoint plus
only the Redis and PostgreSQL round trips an exact, idempotent verify cannot skip, to show what the
targets leave for any code (loadtests/RESULTS.md, thirteenth session).

    uvicorn loadtests.bare_app:app --no-access-log
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis
import sqlalchemy as sa
from fastapi import FastAPI, Request

from quaygate.db import make_engine
from quaygate.hotsql import HotStatement
from quaygate.loopdb import LoopDatabase
from quaygate.redisline import Line
from quaygate.threads import threads_for
from release_service.api.gate import VerifyRequest


@contextlib.asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    pool = _async.pop("pool", None)  # the async floor's connections, closed on their own event loop
    _async.pop("lock", None)
    if pool is not None:
        await pool.close()


app = FastAPI(lifespan=_lifespan)
_DECISION = str(uuid.uuid4())


@app.get("/healthz")
def healthz() -> dict[str, str]:  # what bench_identity._wait polls
    return {"status": "ok"}


def _answer(body: VerifyRequest) -> dict[str, Any]:
    return {"decision": "allow", "reasons": [], "decision_id": _DECISION, "release_id": None,
            "container": body.container.number, "driver": None, "screening": "clear",
            "request_id": body.request_id, "mode": body.mode, "direction": body.direction, "committed": False,
            "repairs": []}


@app.post("/bare/verify")
async def bare_verify(body: VerifyRequest) -> dict[str, Any]:
    """The baseline: an ``async def``, as the verify route is (no thread hop)."""
    return _answer(body)


@app.post("/bare/verify-def")
def bare_verify_def(body: VerifyRequest) -> dict[str, Any]:
    """The same as a plain ``def``, which FastAPI runs on its thread pool and whose answer it validates
    there too (two thread hops): the baseline of the figures before 2026-11-22's eleventh session, when
    the verify route was a ``def``. Printed for comparison with them, never the target's baseline."""
    return _answer(body)


# The floors of a check that is exact and idempotent with its facts in Redis, whatever its code:
# - ``floor1``: facts this process read before. It must still keep its decision under the request_id in
#   Redis, so that a twin gets the same answer (here one SET NX): one round trip. The verify does that
#   round trip alone (adapters/gate_facts.py ``keep_if_current``: one EVALSHA that also checks the facts'
#   generations). Here it is sent alone on a held connection (quaygate/redisline.py ``Line``), holding
#   the loop; the verify's is sent with the concurrent requests' (``Pipelined``), which a floor sent
#   alone does not do: a floor of the round trips, not of how they are sent.
# - ``floor`` (two): facts read for the first time. It asks Redis for them and whether the request_id
#   was answered (here one MGET), then keeps its decision (the verify: one EVALSHA to read, one to keep).
_lines: dict[str, Line] = {}
_engines: dict[str, sa.Engine] = {}
_FLOOR_TABLE = sa.table("bare_floor", sa.column("id", sa.Uuid), sa.column("answer", sa.Text))
_RELEASES = sa.table("releases", sa.column("id", sa.Uuid), sa.column("container_number", sa.String),
                     sa.column("version", sa.Integer), sa.column("state", sa.String))
# As the verify sends its statements: compiled by SQLAlchemy once, run on the driver's cursor (hotsql.py).
_READ_RIGHT = HotStatement(sa.select(_RELEASES).where(_RELEASES.c.container_number == sa.bindparam("c")))
_RECORD = HotStatement(_FLOOR_TABLE.insert())


def _line() -> Line:
    line = _lines.get("line")
    if line is None:
        url = os.environ.get("QUAYGATE_REDIS_URL", "redis://127.0.0.1:6379")
        line = _lines["line"] = Line(redis.Redis.from_url(url, socket_timeout=0.25))
    return line


def _request_key(body: VerifyRequest) -> str:
    return f"bare:{body.terminal}:{body.request_id}"


def _read_facts(body: VerifyRequest) -> None:
    """The one Redis read: the request_id's answer, the policy, the rights and the badge."""
    _line().call("MGET", _request_key(body), f"bare:policy:{body.terminal}", f"bare:r:{body.container.number}",
                 f"bare:badge:{body.badge.number if body.badge else ''}")


def _floor(body: VerifyRequest, *, read: bool) -> dict[str, Any]:
    if read:
        _read_facts(body)
    answer = _answer(body)
    _line().call("SET", _request_key(body), json.dumps(answer), "NX", "EX", 60)
    return answer


@app.post("/bare/verify-floor")
async def bare_verify_floor(body: VerifyRequest) -> dict[str, Any]:
    """The bare endpoint and the two Redis round trips of a check on facts read for the first time."""
    return _floor(body, read=True)


@app.post("/bare/verify-floor1")
async def bare_verify_floor1(body: VerifyRequest) -> dict[str, Any]:
    """The bare endpoint and one Redis round trip, the record alone: the floor of a check on facts
    read before."""
    return _floor(body, read=False)


def _engine() -> sa.Engine:
    engine = _engines.get("engine")
    if engine is None:
        engine = make_engine(os.environ["QUAYGATE_DATABASE_URL"])
        with engine.begin() as conn:  # two workers at once: CREATE ... IF NOT EXISTS alone can still collide
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242)"))
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS bare_floor (id uuid PRIMARY KEY, answer text NOT NULL)"))
        _engines["engine"] = engine
    return engine


@app.post("/bare/verify-commit-floor")
async def bare_verify_commit_floor(request: Request, body: VerifyRequest) -> dict[str, Any]:
    return await _commit_floor(request, body, read=True)


@app.post("/bare/verify-commit-floor1")
async def bare_verify_commit_floor1(request: Request, body: VerifyRequest) -> dict[str, Any]:
    """The commit floor without its PostgreSQL read: a design deciding on a right cached with its version,
    its one write guarded by that version."""
    return await _commit_floor(request, body, read=False)


async def _commit_floor(request: Request, body: VerifyRequest, *, read: bool) -> dict[str, Any]:
    """The floor of a commit that is exact and idempotent: the Redis read of the check's floor, then, on
    the thread pool the verify uses (quaygate/threads.py), the right read afresh from PostgreSQL (one
    indexed SELECT; not with ``read=False``) and one autocommitted INSERT that would record the decision
    with the move. The verify's commit does that much and more (its one statement moves the right and
    writes its event, audit entry and webhook deliveries with the decision)."""
    _read_facts(body)
    answer = _answer(body)
    engine = _engine()

    def write() -> None:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if read:
                _READ_RIGHT.execute(conn, {"c": body.container.number}).all()
            _RECORD.execute(conn, {"id": uuid.uuid4(), "answer": json.dumps(answer)})

    await threads_for(request.app).run(write)
    return answer


# The same floor on the event loop: psycopg's async connections, no thread hop, in the pool the
# verify's commit uses (quaygate/loopdb.py), of the same size.
_ASYNC_CONNECTIONS = 4
_async: dict[str, Any] = {}
_READ_RIGHT_SQL = "SELECT id, container_number, version, state FROM releases WHERE container_number = %s"
_RECORD_SQL = "INSERT INTO bare_floor (id, answer) VALUES (%s, %s)"


async def _async_pool() -> LoopDatabase:
    pool = _async.get("pool")
    if pool is None:
        lock = _async.setdefault("lock", asyncio.Lock())
        async with lock:
            pool = _async.get("pool")
            if pool is None:
                pool = LoopDatabase(_engine(), size=_ASYNC_CONNECTIONS)  # the table made, once
                await pool.open()
                _async["pool"] = pool
    return pool


@app.post("/bare/verify-commit-floor-async")
async def bare_verify_commit_floor_async(body: VerifyRequest) -> dict[str, Any]:
    """The commit floor's Redis read and two PostgreSQL statements, awaited on the event loop (psycopg's
    async connection, statements prepared by the driver after their fifth use) instead of run on the
    thread pool: the floor of a commit with an async driver."""
    _read_facts(body)
    answer = _answer(body)
    async with (await _async_pool()).connection() as conn:
        await (await conn.execute(_READ_RIGHT_SQL, (body.container.number,))).fetchall()
        await conn.execute(_RECORD_SQL, (uuid.uuid4(), json.dumps(answer)))
    return answer

"""PostgreSQL connections of the event loop: psycopg's ``AsyncConnection``, pooled (psycopg_pool).

The gate's commit (issue 5) waits for PostgreSQL twice. On a worker thread that costs a thread hop,
a SQLAlchemy unit of work and the GIL passed back and forth with the loop on every round trip; here
the loop serves other requests while PostgreSQL answers. Measured (loadtests/RESULTS.md, seventeenth
session): the same two statements and Redis read reached 0.42 of the bare endpoint awaited on the
loop, 0.32 on the worker threads.

    async with loop_db.connection() as conn:      # autocommitted: each statement its own transaction
        rows = (await STATEMENT.execute_async(conn, loop_db.dialect, params)).all()

- One pool per server process, opened on the loop that serves it (the app's lifespan) and closed
  there. ``usable()`` says whether the running loop is that one: a connection never crosses loops.
- Connections are made when first needed (``min_size`` 0: a server that decides no commit holds
  none), at most ``size``, and closed after a minute idle. A connection that broke goes back to the
  pool, which throws it away; a statement never runs on one that failed before.
- Waiting for a free connection is bounded (``wait``): ``Busy`` then, with nothing sent; the caller
  decides on the worker threads instead, as without this pool. So is a pool closing.
- A wait that ran out rests the pool (``rest`` seconds): ``usable()`` says no, so commits go to the
  worker threads at once instead of each waiting ``wait`` for a database that refuses new connections
  (its ``max_connections`` reached, connections disallowed) or a pool kept full. Once the rest is over,
  the next ``usable()`` starts one probe in the background, which takes a connection (waiting at most
  ``wait``) and gives it back: the pool is usable again when it got one, else it rests again. No
  request ever waits on a resting pool, whatever the traffic.
- ``run_to_end(work)``: work on these connections is awaited to its end even if its caller is
  cancelled (a client that hung up, a server stopping), as a worker thread runs to its end; ``close``
  waits for such work (at most ``drain`` seconds) before it closes the connections. What fails once
  its caller is gone is logged, never dropped unseen.
- Our end of every connection has the serving lease's TCP keepalives and user timeout
  (quaygate/solo.py): a database host gone silent fails the statement in about half a minute, not
  hours. No connection holds a lock between statements (autocommit), so nothing waits on the
  database's end of one that was lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import psycopg_pool
import sqlalchemy as sa

log = logging.getLogger(__name__)

T = TypeVar("T")

_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
               "tcp_user_timeout": 30_000}

APPLICATION_NAME = "quaygate-loop"  # how these connections show in pg_stat_activity


class Busy(Exception):
    """No connection of the loop's pool came free in time: nothing was sent."""


class LoopDatabase:
    def __init__(self, engine: sa.Engine, *, size: int = 4, wait: float = 2.0, connect_timeout: float = 5.0,
                 drain: float = 10.0, rest: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("the loop's connections are PostgreSQL's")
        self.dialect = engine.dialect
        url = engine.url.set(drivername="postgresql")
        params = {k: v for k, v in url.translate_connect_args(username="user", database="dbname").items()
                  if v is not None}
        params.update(url.query)
        self._pool = psycopg_pool.AsyncConnectionPool(
            kwargs={**params, **_KEEPALIVES, "connect_timeout": max(2, round(connect_timeout)), "autocommit": True,
                    "application_name": APPLICATION_NAME},
            min_size=0, max_size=size, timeout=wait, max_idle=60.0, open=False, name="loop-db")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain = drain
        self._running: set[asyncio.Future[Any]] = set()  # ``run_to_end``'s work, held till it ends
        self._rest = rest
        self._clock = clock
        self._resting_until: float | None = None  # a wait ran out: not usable till a probe got a connection
        self._probe: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Open on the running loop (connections are made when first needed)."""
        await self._pool.open(wait=False)
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        """No new work; what runs (``run_to_end``) is waited for, then the connections closed."""
        self._loop = None
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self._running:
            _, late = await asyncio.wait(set(self._running), timeout=self._drain)
            if late:
                log.error("quaygate.loop_db.close_with_work_running", extra={"fields": {"running": len(late)}})
        await self._pool.close()

    async def run_to_end(self, work: Awaitable[T]) -> T:
        """``work`` awaited to its end even if this caller is cancelled meanwhile."""
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_orphan_ended)  # its caller is gone: its outcome is logged
            raise

    def usable(self) -> bool:
        """Open, the running loop the one it was opened on, and not resting (a probe is started once
        the rest is over)."""
        try:
            if self._loop is None or asyncio.get_running_loop() is not self._loop:
                return False
        except RuntimeError:
            return False
        if self._resting_until is None:
            return True
        if self._probe is None and self._clock() >= self._resting_until:
            self._probe = asyncio.ensure_future(self._probe_once())
        return False

    async def _probe_once(self) -> None:
        try:
            conn = await self._pool.getconn()
        except psycopg_pool.PoolTimeout:
            self._resting_until = self._clock() + self._rest
        except psycopg_pool.PoolClosed:
            pass
        else:
            await self._pool.putconn(conn)
            self._resting_until = None
            log.warning("quaygate.loop_db.usable_again")
        finally:
            self._probe = None

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection in autocommit; ``Busy`` when none comes free within ``wait``. Given back to the
        pool however the block ends (a broken one is thrown away there)."""
        try:
            conn = await self._pool.getconn()
        except (psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
            if isinstance(exc, psycopg_pool.PoolTimeout) and self._resting_until is None:
                self._resting_until = self._clock() + self._rest
                log.warning("quaygate.loop_db.resting", extra={"fields": {"seconds": self._rest}})
            log.warning("quaygate.loop_db.busy", extra={"fields": {"reason": type(exc).__name__}})
            raise Busy(str(exc)) from exc
        try:
            yield conn
        finally:
            await self._pool.putconn(conn)

    def stats(self) -> dict[str, int]:
        return dict(self._pool.get_stats())


def _orphan_ended(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        log.error("quaygate.loop_db.orphan_cancelled")
    elif (exc := task.exception()) is not None:
        log.error("quaygate.loop_db.orphan_failed", exc_info=exc)

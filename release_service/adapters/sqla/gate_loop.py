"""A gate commit's statements on the event loop's connections (PostgreSQL; issue 5).

The same prebuilt statements as the worker threads' stores send (``store.py`` ``_BY_CONTAINERS_PG``,
``gate_move.py``'s one statement, the decision's insert), with the same bound values and
result types (``HotStatement.execute_async``), awaited on psycopg's ``AsyncConnection``
(quaygate/loopdb.py) in autocommit: each statement is a transaction of its own, as in the threads'
autocommitted unit of work. What a move changed is not ``touch``-ed on a connection (nothing of
SQLAlchemy's sees these commits): the caller hands the right's container to ``moving`` and
``remember_async``, which send its invalidation before the answer goes out.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import sqlalchemy as sa

from quaygate.hotsql import HotStatement, listed
from quaygate.loopdb import Busy, LoopDatabase
from release_service.domain.release import ReleaseRight
from release_service.ports import DuplicateDecision, LoopUnavailable, RightsRead

from .gate_move import move_statement, record_statement, twin_refused, written
from .store import _BY_CONTAINERS_PG, Reads, read_right

T = TypeVar("T")


class LoopGateDatabase:
    """``ports.LoopGateStore`` over the loop's pool."""

    def __init__(self, db: LoopDatabase) -> None:
        self._db = db

    def usable(self) -> bool:
        return self._db.usable()

    async def run_to_end(self, work: Awaitable[T]) -> T:
        return await self._db.run_to_end(work)

    @asynccontextmanager
    async def unit(self) -> AsyncIterator[LoopGateUnit]:
        try:
            async with self._db.connection() as conn:
                yield LoopGateUnit(conn, self._db.dialect)
        except Busy as exc:  # only ever from taking the connection: nothing was sent
            raise LoopUnavailable(str(exc)) from exc


class LoopGateUnit:
    """``ports.LoopGateUnit`` on one connection."""

    def __init__(self, conn: Any, dialect: sa.Dialect) -> None:
        self._conn = conn
        self._dialect = dialect
        self._reads: Reads = {}  # the rights as read here: a move writes what changed

    async def rights_of(self, containers: Sequence[str]) -> list[ReleaseRight]:
        if not containers:
            return []
        found = await self._sent(_BY_CONTAINERS_PG, {"containers": listed(containers)})
        return [read_right(r._asdict(), self._reads) for r in found.all()]

    async def record(self, row: dict[str, Any]) -> None:
        try:
            await self._sent(*record_statement(row))
        except sa.exc.IntegrityError as exc:
            raise DuplicateDecision(row["request_id"]) from exc

    async def record_move(self, row: dict[str, Any], right: ReleaseRight,
                          audiences: Sequence[frozenset[uuid.UUID]], read: RightsRead) -> bool:
        statement, params = move_statement(row, right, audiences, read, self._reads)
        with twin_refused(row):
            moved = (await self._sent(statement, params)).scalar()
        if not moved:
            return False
        written(right)
        return True

    async def _sent(self, statement: HotStatement, params: dict[str, Any]) -> Any:
        """The statement's result; its connection lost: ``LoopUnavailable`` (whether a write reached
        the database is unknown then, and the worker threads' way finds out under the request_id)."""
        try:
            return await statement.execute_async(self._conn, self._dialect, params)
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise LoopUnavailable(str(exc)) from exc
            raise

"""The hottest statements run on the driver's cursor, compiled by SQLAlchemy once (PostgreSQL only).

A SQLAlchemy Core ``Connection.execute`` costs about 100 microseconds of CPU here beyond what psycopg
itself spends on the statement: the execution context, the result's metadata (psycopg builds a
``Column`` object for every result column each time ``cursor.description`` is read), event dispatch.
On a token refresh or a passkey login, whose whole budget is about 1.7 ms, that is a tenth per
statement. ``HotStatement`` keeps what makes SQLAlchemy worth having (the statement is written and
compiled by SQLAlchemy, with its bind and result types applied: ``UTCDateTime`` refuses naive times
and gives back UTC, JSON goes through the dialect's serializer) and sends it on the connection's own
DBAPI cursor, in the connection's transaction:

    rows = HOT_STATEMENT.execute(conn, {"h": ..., "now": now}).all()

- Only on PostgreSQL. Any other dialect (the embedded SQLite) runs the statement through
  ``conn.execute`` unchanged, so behaviour is one and the same and the tests cover both ways.
- The result answers ``all()``, ``first()``, ``scalar()`` and ``rowcount``; its rows are named tuples
  (``row.client_id``, ``row[0]``), like SQLAlchemy's.
- The connection's transaction is begun first when it has not been (SQLAlchemy's autobegin, which a
  statement sent past it would not trigger): so ``conn.commit()`` commits these writes, and a
  connection given back to the pool rolls them back, exactly as for ``conn.execute``.
- Driver errors are raised as SQLAlchemy's (``sa.exc.IntegrityError`` and so on, from
  ``DBAPIError.instance``), and a lost connection is invalidated so that the pool never hands it out
  again, as SQLAlchemy does.
- A list of parameter sets is sent with ``executemany`` (psycopg pipelines it), for statements that
  return no rows.

It reads three attributes SQLAlchemy marks private (``_bind_processors``, ``_result_columns``,
``_cached_result_processor``); SQLAlchemy is pinned in pyproject.toml and tests/test_hotsql.py holds
the results to ``conn.execute``'s, type for type, so an upgrade that changes them fails there first.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
import sqlalchemy.dialects.postgresql

Params = Mapping[str, Any]


class _Compiled:
    __slots__ = ("compiled", "sql", "binds", "results", "returns_rows", "row")

    def __init__(self, statement: sa.Executable, dialect: sa.Dialect, keys: frozenset[str]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=sorted(keys))
        self.compiled = compiled
        self.sql: str = compiled.string
        self.binds: dict[str, Callable[[Any], Any]] = dict(compiled._bind_processors)  # type: ignore[attr-defined]
        columns = compiled._result_columns  # type: ignore[attr-defined]
        self.results: list[tuple[int, Callable[[Any], Any]]] = []
        for index, column in enumerate(columns):
            process = column.type._cached_result_processor(dialect, None)
            if process is not None:
                self.results.append((index, process))
        self.returns_rows = bool(columns)
        names = [column.keyname for column in columns]
        if len(set(names)) != len(names):
            raise ValueError(f"a hot statement needs distinct result names: {names}")
        self.row = namedtuple("Row", names) if names else None  # type: ignore[misc]  # noqa: PYI024


class HotResult:
    """What the callers of a hot statement use of a SQLAlchemy result."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None


class HotStatement:
    def __init__(self, statement: sa.Executable) -> None:
        self.statement = statement
        self._compiled: dict[frozenset[str], _Compiled] = {}  # per set of parameter names (an INSERT's columns)

    def execute(self, conn: sa.Connection, params: Params | Sequence[Params]) -> Any:
        """Run in ``conn``'s transaction; a HotResult on PostgreSQL, SQLAlchemy's result elsewhere."""
        if conn.dialect.name != "postgresql":
            return conn.execute(self.statement, params)  # type: ignore[arg-type]
        if not isinstance(params, Mapping) and len(params) == 1:
            params = params[0]  # one row: a plain execute (executemany would set up a pipeline)
        many = not isinstance(params, Mapping)
        first: Params = params[0] if many else params  # type: ignore[index,assignment]
        compiled = self._compiled_for(conn.dialect, first)
        if many and compiled.returns_rows:
            raise ValueError("executemany of a statement that returns rows")
        sent = [self._bound(compiled, p) for p in params] if many else self._bound(compiled, first)  # type: ignore[union-attr]
        if not conn.in_transaction():
            conn.begin()
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        cursor = dbapi.cursor()
        try:
            if many:
                cursor.executemany(compiled.sql, sent)
            else:
                cursor.execute(compiled.sql, sent)
            rows = cursor.fetchall() if compiled.returns_rows else []
            count = cursor.rowcount
        except conn.dialect.loaded_dbapi.Error as exc:
            raise _as_sqlalchemys(conn.dialect, compiled, sent, exc, dbapi, cursor, conn.invalidate) from exc
        finally:
            cursor.close()
        return HotResult(self._rows(compiled, rows), count)

    async def execute_async(self, conn: Any, dialect: sa.Dialect, params: Params) -> HotResult:
        """Run on psycopg's ``AsyncConnection`` (in its transaction, or autocommitted), the event loop
        serving others while PostgreSQL answers: the same SQL, bound values and result types as
        ``execute``, and its errors raised as SQLAlchemy's (``sa.exc.IntegrityError`` and so on) with
        ``dialect``, the synchronous engine's. One parameter set; PostgreSQL only. A connection lost
        here is closed by psycopg, and its pool never hands it out again."""
        if dialect.name != "postgresql":
            raise ValueError("execute_async is for PostgreSQL")
        compiled = self._compiled_for(dialect, params)
        sent = self._bound(compiled, params)
        cursor = conn.cursor()
        try:
            await cursor.execute(compiled.sql, sent)
            rows = await cursor.fetchall() if compiled.returns_rows else []
            count = cursor.rowcount
        except dialect.loaded_dbapi.Error as exc:
            raise _as_sqlalchemys(dialect, compiled, sent, exc, conn, cursor) from exc
        finally:
            await cursor.close()
        return HotResult(self._rows(compiled, rows), count)

    @staticmethod
    def _rows(compiled: _Compiled, rows: list[Any]) -> list[Any]:
        """The driver's rows as named tuples, each value through its column type's result processor."""
        if compiled.row is None:
            return rows
        make, results = compiled.row._make, compiled.results
        if not results:
            return [make(raw) for raw in rows]
        out = []
        for raw in rows:
            values = list(raw)
            for index, process in results:
                values[index] = process(values[index])
            out.append(make(values))
        return out

    def execute_autocommitted(self, engine: sa.Engine, params: Params) -> None:
        """Run this statement (one that returns no rows) as a transaction of its own, on a connection
        taken from ``engine``'s pool for it alone, with no SQLAlchemy ``Connection`` around it: its
        setup, isolation-level change, commit events and reset cost as much CPU as the statement did
        (a machine's token writes one audit entry this way). PostgreSQL only. The connection goes back
        to the pool as it came (not in autocommit); a lost one is invalidated, never given out again."""
        dialect = engine.dialect
        compiled = self._compiled_for(dialect, params)
        if compiled.returns_rows:
            raise ValueError("execute_autocommitted is for statements that return no rows")
        sent = self._bound(compiled, params)
        raw = engine.raw_connection()
        try:
            dbapi = raw.dbapi_connection
            assert dbapi is not None
            dbapi.autocommit = True
            try:
                with dbapi.cursor() as cursor:
                    cursor.execute(compiled.sql, sent)
            except dialect.loaded_dbapi.Error as exc:
                raise _as_sqlalchemys(dialect, compiled, sent, exc, dbapi, None, raw.invalidate) from exc
            finally:
                if raw.is_valid:
                    dbapi.autocommit = False  # idle in autocommit: psycopg allows the change
        finally:
            raw.close()

    def _compiled_for(self, dialect: sa.Dialect, params: Params) -> _Compiled:
        keys = frozenset(params)
        compiled = self._compiled.get(keys)
        if compiled is None:
            compiled = self._compiled[keys] = _Compiled(self.statement, dialect, keys)
        return compiled

    @staticmethod
    def _bound(compiled: _Compiled, params: Params) -> dict[str, Any]:
        """The values sent; a bind type that refuses one raises SQLAlchemy's StatementError, as
        ``conn.execute`` does."""
        try:
            return HotStatement._processed(compiled, params)
        except Exception as exc:  # noqa: BLE001 - re-raised as the error conn.execute would raise
            raise sa.exc.StatementError(f"({type(exc).__module__}.{type(exc).__name__}) {exc}", compiled.sql,
                                        None, exc) from exc

    @staticmethod
    def _processed(compiled: _Compiled, params: Params) -> dict[str, Any]:
        values = compiled.compiled.construct_params(params)  # literal values of the statement included
        for name, process in compiled.binds.items():  # as SQLAlchemy does: None included (JSON null)
            values[name] = process(values.get(name))
        return values


def _as_sqlalchemys(dialect: sa.Dialect, compiled: _Compiled, params: Any, exc: Exception, dbapi_conn: Any,
                    cursor: Any, invalidate: Callable[[BaseException], None] | None = None) -> Exception:
    """The driver's error as SQLAlchemy raises it from ``conn.execute``; a lost connection first
    ``invalidate``-d, so that its pool never hands it out again (an async pool throws it away itself)."""
    lost = dialect.is_disconnect(exc, dbapi_conn, cursor)
    if lost and invalidate is not None:
        invalidate(exc)
    return sa.exc.DBAPIError.instance(compiled.sql, params, exc, dialect.loaded_dbapi.Error,
                                      connection_invalidated=lost, dialect=dialect)


# ---- lists as one text parameter ------------------------------------------------------------------
# psycopg chooses a list parameter's array type by looking at its elements, on every call: about as
# much CPU as the rest of a short statement's parameters together. A hot statement takes a list of
# simple values (container numbers, event types, UUIDs) as one text parameter instead, which
# PostgreSQL splits (``string_to_array``); ``listed`` makes that text and refuses a value that holds
# the separator.

_SEPARATOR = ","


def text_array(name: str, element: Any = None) -> Any:
    """``string_to_array(:name, ',')``, cast to an array of ``element`` (text when None): for
    ``column == sa.any_(text_array(...))`` or a JSONB ``has_any``."""
    split = sa.func.string_to_array(sa.bindparam(name, type_=sa.Text), _SEPARATOR,
                                    type_=sa.dialects.postgresql.ARRAY(sa.Text))
    return split if element is None else sa.cast(split, sa.dialects.postgresql.ARRAY(element))


def listed(values: Sequence[Any]) -> str:
    """The value of a ``text_array`` parameter. An empty list is an empty array."""
    texts = [str(v) for v in values]
    if any(_SEPARATOR in t for t in texts):
        raise ValueError("a listed value holds the separator")
    return _SEPARATOR.join(texts)

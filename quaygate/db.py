"""Engines, built by the factory or the lifespan, never at import (STYLE.md #8)."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

# A pooled connection that was used less than this many seconds ago is handed out without a ping.
IDLE_PING_SECONDS = 5.0


def normalise_url(url: str) -> str:
    """Accept plain postgresql:// URLs and use psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20, echo: bool = False,
                idle_ping_seconds: float = IDLE_PING_SECONDS) -> sa.Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=max_overflow,
            # JSON as PostgreSQL takes it: NaN and Infinity are not JSON, and PostgreSQL refuses them; stored
            # here they would stop the audit sealer later (review 160), not the write that made them.
            json_serializer=functools.partial(json.dumps, allow_nan=False),
        )
        _sqlite_pragmas(engine)
        return engine
    engine = sa.create_engine(url, echo=echo, pool_size=pool_size, max_overflow=max_overflow)
    _ping_when_idle(engine, idle_ping_seconds)
    return engine


def _ping_when_idle(engine: sa.Engine, idle_seconds: float) -> None:
    """SQLAlchemy's pessimistic disconnect handling, for idle connections only.

    ``pool_pre_ping`` pings on every checkout: a round trip that cost about 0.1 ms of CPU per checkout
    here, on every request. A connection checked in moments ago by a request that used it is known to
    be alive; one that sat idle (a database restart or a failover may have dropped it) is pinged, and a
    dead one is replaced before any request sees it (the pool retries the checkout on
    DisconnectionError). A connection dropped while in busy use fails that request; SQLAlchemy then
    invalidates the whole pool, so the next requests get fresh connections.
    """

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _fresh(_dbapi_conn: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        used = record.info.get("checked_in_at")
        if used is not None and time.monotonic() - used < idle_seconds:
            return
        try:
            with dbapi_conn.cursor() as cur:
                cur.execute("SELECT 1")
            dbapi_conn.rollback()
        except Exception as exc:  # any failure: this connection is not fit to hand out
            raise sa.exc.DisconnectionError(f"idle connection failed its ping: {exc}") from exc


def _sqlite_pragmas(engine: sa.Engine) -> None:
    """WAL, foreign keys, and BEGIN IMMEDIATE for writes.

    pysqlite's deferred BEGIN lets two writers both read and then fail on the upgrade to a write lock
    (SQLITE_BUSY with no wait). Writers take the lock up front instead, so SQLite serialises them the
    way row locks serialise them on PostgreSQL.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def create_database(server_url: str, name: str) -> str:
    """Create (or re-create) a scratch PostgreSQL database beside ``server_url``; returns its URL."""
    admin = sa.create_engine(normalise_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return sa.make_url(normalise_url(server_url)).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, url: str) -> None:
    admin = sa.create_engine(normalise_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{sa.make_url(url).database}" WITH (FORCE)')
    admin.dispose()

"""The pool pings idle connections only (quaygate.db._ping_when_idle), on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from quaygate.db import make_engine


def _kill_pooled_connection(engine: sa.Engine, admin: sa.Engine) -> None:
    with engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    with admin.connect() as conn:  # a database restart or a failover, as the pooled connection sees it
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid}).scalar() is True  # ended


@pytest.fixture
def admin(pg_database_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(make_engine(pg_database_url).url, isolation_level="AUTOCOMMIT")
    yield eng
    eng.dispose()


def test_an_idle_connection_that_died_is_replaced_before_use(pg_database_url: str, admin: sa.Engine) -> None:
    engine = make_engine(pg_database_url, pool_size=1, max_overflow=0, idle_ping_seconds=0)
    try:
        _kill_pooled_connection(engine, admin)
        with engine.connect() as conn:  # pinged at checkout, found dead, replaced: the caller never knows
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_a_busy_connection_is_not_pinged_and_the_pool_recovers_after_one_failure(
    pg_database_url: str, admin: sa.Engine
) -> None:
    engine = make_engine(pg_database_url, pool_size=1, max_overflow=0, idle_ping_seconds=3600)
    try:
        _kill_pooled_connection(engine, admin)
        with pytest.raises(sa.exc.OperationalError), engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))  # used moments ago, so handed out unpinged: this request fails
        with engine.connect() as conn:  # SQLAlchemy invalidated the pool: the next one is fresh
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()

"""The schema is made only by Alembic: up, down and up again on PostgreSQL, and no drift from the code."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from quaygate.db import create_database, drop_database
from quaygate.migrate import downgrade, upgrade
from quaygate.schema import metadata

from .conftest import PG_URL, need_service

pytestmark = pytest.mark.postgres


@pytest.fixture
def scratch_pg() -> Iterator[str]:
    base = need_service("PostgreSQL", PG_URL)
    url = create_database(base, f"qg_migrate_{os.getpid()}")
    yield url
    drop_database(base, url)


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _drift(url: str) -> list[object]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata))
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(scratch_pg: str) -> None:
    upgrade(scratch_pg)
    assert _tables(scratch_pg) == set(metadata.tables)
    downgrade(scratch_pg, "base")
    assert _tables(scratch_pg) == set()
    upgrade(scratch_pg)
    assert _tables(scratch_pg) == set(metadata.tables)


def test_migrations_match_the_code(scratch_pg: str) -> None:
    upgrade(scratch_pg)
    assert _drift(scratch_pg) == []

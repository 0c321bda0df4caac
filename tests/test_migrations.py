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


def test_0011_counts_the_events_every_right_already_has(scratch_pg: str) -> None:
    """The right's event counter (releases.event_seq) is filled from release_events for rights made
    before it existed; the next event a right gets then follows its last one, with no gap or clash."""
    from release_service.domain.parties import OrgKind
    from release_service.services import issue, lifecycle

    from .factories import add_org, do, issue_cmd, now, port

    upgrade(scratch_pg)
    engine = sa.create_engine(scratch_pg)
    try:
        p = port(engine)
        blocked, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 1), now()))
        plain, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 2), now()))
        do(engine, lambda uow: lifecycle.block(uow, p.line, blocked.id, "hold", now()))
        do(engine, lambda uow: lifecycle.unblock(uow, p.line, blocked.id, "ok", now()))
        assert add_org(engine, OrgKind.SHIPPING_LINE)  # another row in the tables the downgrade keeps
    finally:
        engine.dispose()

    downgrade(scratch_pg, "0010")
    upgrade(scratch_pg)
    engine = sa.create_engine(scratch_pg)
    try:
        with engine.connect() as conn:
            counters = dict(conn.execute(sa.text("SELECT id, event_seq FROM releases")).all())
            last = dict(conn.execute(sa.text(
                "SELECT release_id, max(seq) FROM release_events GROUP BY release_id")).all())
        assert counters == last and counters[blocked.id] == 3 and counters[plain.id] == 1
        _, receipt = do(engine, lambda uow: lifecycle.block(uow, p.line, plain.id, "hold", now()))
        assert receipt.seq == 2
    finally:
        engine.dispose()

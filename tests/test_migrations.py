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


def test_0013_leaves_a_party_row_only_to_those_that_hold_held_or_are_offered_the_right(scratch_pg: str) -> None:
    """Rows written before 0013: a ``recipient`` row for every company ever offered a right, and the
    accepting company's row left ``recipient``. After it: a holder's row says ``holder``, a declined
    offer's company has no row, a pending offer's company keeps its row, the issuer keeps its own."""
    from release_service.services import issue, transfers

    from .factories import do, issue_cmd, now, port

    upgrade(scratch_pg)
    engine = sa.create_engine(scratch_pg)
    try:
        p = port(engine)
        travelled, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 1), now()))
        refused, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 2), now()))
        t, _ = do(engine, lambda uow: transfers.transfer(uow, p.fwd, refused.id, p.haul2.organisation_id, now()))
        do(engine, lambda uow: transfers.decline(uow, p.haul2, t.id, None, now()))
        t, _ = do(engine, lambda uow: transfers.transfer(uow, p.fwd, travelled.id, p.haul.organisation_id, now()))
        do(engine, lambda uow: transfers.accept(uow, p.haul, t.id, now()))
        do(engine, lambda uow: transfers.transfer(uow, p.haul, travelled.id, p.haul2.organisation_id, now()))
        with engine.begin() as conn:  # as the code before 0013 left them
            conn.execute(sa.text("UPDATE release_parties SET relation = 'recipient' WHERE organisation_id = :o"),
                         {"o": p.haul.organisation_id})
            conn.execute(sa.text("INSERT INTO release_parties (organisation_id, release_id, relation) "
                                 "VALUES (:o, :r, 'recipient')"), {"o": p.haul2.organisation_id, "r": refused.id})
    finally:
        engine.dispose()

    downgrade(scratch_pg, "0012")
    upgrade(scratch_pg)
    engine = sa.create_engine(scratch_pg)
    try:
        with engine.connect() as conn:
            rows = {(r, o): rel for o, r, rel in conn.execute(sa.text(
                "SELECT organisation_id, release_id, relation FROM release_parties")).all()}
    finally:
        engine.dispose()
    assert rows == {
        (travelled.id, p.line.organisation_id): "issuer", (travelled.id, p.fwd.organisation_id): "holder",
        (travelled.id, p.haul.organisation_id): "holder", (travelled.id, p.haul2.organisation_id): "recipient",
        (refused.id, p.line.organisation_id): "issuer", (refused.id, p.fwd.organisation_id): "holder",
    }


def test_0030_builds_its_index_concurrently_over_an_invalid_leftover(scratch_pg: str) -> None:
    """Review 141, finding 4: a plain CREATE INDEX holds a SHARE lock on webhook_deliveries for the whole
    build, and every publish (a gate commit's, in the gate move's transaction) waits for it. Built
    CONCURRENTLY, as 0029's are, outside the migration's transaction; a build that failed half-way (here:
    a unique one over two deliveries of one subscription) left an invalid index of the name, dropped first."""
    import uuid
    from datetime import UTC, datetime

    upgrade(scratch_pg, "0028")
    engine = sa.create_engine(scratch_pg, isolation_level="AUTOCOMMIT")
    try:
        at, org, sub = datetime.now(UTC), uuid.uuid4(), uuid.uuid4()
        with engine.connect() as conn:
            conn.execute(sa.text("INSERT INTO organisations (id, name, kind, created_at) "
                                 "VALUES (:o, 'Line', 'shipping_line', :at)"), {"o": org, "at": at})
            conn.execute(sa.text("INSERT INTO webhook_subscriptions (id, organisation_id, url, secret_enc, "
                                 "event_types, active, created_at) VALUES (:s, :o, 'https://h.example/', 'x', "
                                 "'[]', true, :at)"), {"s": sub, "o": org, "at": at})
            for _ in range(2):
                conn.execute(sa.text(
                    "INSERT INTO webhook_deliveries (id, subscription_id, event_id, event_type, payload, status, "
                    "attempts, next_attempt_at, created_at) VALUES (:d, :s, :e, 'release.issued', '{}', "
                    "'pending', 0, :at, :at)"), {"d": uuid.uuid4(), "s": sub, "e": uuid.uuid4(), "at": at})
            with pytest.raises(sa.exc.IntegrityError):
                conn.execute(sa.text("CREATE UNIQUE INDEX CONCURRENTLY ix_webhook_deliveries_pending "
                                     "ON webhook_deliveries (subscription_id)"))
    finally:
        engine.dispose()
    seen: list[str] = []

    def record(conn: sa.Connection, cursor: object, statement: str, *args: object) -> None:
        seen.append(" ".join(statement.split()))

    sa.event.listen(sa.Engine, "before_cursor_execute", record)
    try:
        upgrade(scratch_pg, "0030")
        built = [s for s in seen if "INDEX" in s and "ix_webhook_deliveries_pending" in s]
        downgrade(scratch_pg, "0028")
        dropped = [s for s in seen if "INDEX" in s and "ix_webhook_deliveries_pending" in s][len(built):]
        upgrade(scratch_pg, "0030")
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", record)
    assert [s.split(" ON ")[0] for s in built] == [
        "DROP INDEX CONCURRENTLY IF EXISTS ix_webhook_deliveries_pending",
        "CREATE INDEX CONCURRENTLY ix_webhook_deliveries_pending"], built
    assert dropped == ["DROP INDEX CONCURRENTLY IF EXISTS ix_webhook_deliveries_pending"], dropped
    engine = sa.create_engine(scratch_pg)
    try:
        with engine.connect() as conn:
            valid, unique, definition = conn.execute(sa.text(
                "SELECT i.indisvalid, i.indisunique, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                "WHERE i.indexrelid = 'ix_webhook_deliveries_pending'::regclass")).one()
    finally:
        engine.dispose()
    assert valid and not unique, definition
    assert definition.endswith("(subscription_id, next_attempt_at, id) WHERE ((status)::text = 'pending'::text)")


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_0037_puts_what_may_still_be_sent_in_its_rights_queue(backend: str, scratch_pg: str, tmp_path: object) -> None:
    """Review 171, finding 1: the deliveries that may still be sent (pending; dead and withheld, which
    may be redelivered) get their right from their payload and an ordinal by their created_at, below
    every delivery queued after; finished ones keep both null. A delivery queued after takes the next
    ordinal (the sequence on PostgreSQL, the rowid on SQLite); down and up again."""
    import uuid
    from datetime import UTC, datetime, timedelta

    from quaygate.schema import organisations, webhook_deliveries, webhook_subscriptions

    url = scratch_pg if backend == "postgresql" else f"sqlite:///{tmp_path}/m.db"
    upgrade(url, "0036")
    at, org, sub, right = datetime.now(UTC), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    rows = {"second": ("pending", 2), "first": ("pending", 1), "dead": ("dead", 3), "done": ("delivered", 0)}
    ids = {name: uuid.uuid4() for name in rows}
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(organisations.insert().values(id=org, name="Line", kind="shipping_line", created_at=at))
            conn.execute(webhook_subscriptions.insert().values(
                id=sub, organisation_id=org, url="https://h.example/", secret_enc="x", event_types=[], active=True,
                created_at=at))
            for name, (status, minutes) in rows.items():
                conn.execute(webhook_deliveries.insert().values(
                    id=ids[name], subscription_id=sub, event_id=uuid.uuid4(), event_type="release.issued",
                    payload={"release_id": str(right)}, status=status, attempts=0,
                    next_attempt_at=at, created_at=at + timedelta(minutes=minutes)))
    finally:
        engine.dispose()
    upgrade(url, "0037")
    downgrade(url, "0036")
    upgrade(url, "0037")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            later = uuid.uuid4()
            conn.execute(webhook_deliveries.insert().values(
                id=later, subscription_id=sub, event_id=uuid.uuid4(), event_type="release.issued", payload={},
                status="pending", attempts=0, next_attempt_at=at, created_at=at))
            got = {r.id: (r.release_id, r.ordinal) for r in conn.execute(sa.select(webhook_deliveries))}
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("webhook_deliveries")}
    finally:
        engine.dispose()
    by_name = {name: got[i] for name, i in ids.items()}
    assert {name: r for name, (r, _) in by_name.items()} == {"second": right, "first": right, "dead": right,
                                                             "done": None}
    assert by_name["done"][1] is None
    assert by_name["first"][1] < by_name["second"][1] < by_name["dead"][1] < got[later][1], got
    assert {"ix_webhook_deliveries_queue", "ix_webhook_deliveries_right_queue"} <= indexes
    assert "ix_webhook_deliveries_pending" not in indexes

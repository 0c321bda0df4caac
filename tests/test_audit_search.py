"""The audit search's bounds on PostgreSQL (review of the audit search, finding 5): a search by actor is
served by the actor indexes (migration 0029), and a search that runs past QUAYGATE_AUDIT_SEARCH_TIMEOUT is
cancelled by the server and answers a clear problem, never a 500, its pooled connection free again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.api.audit_search import AuditQuery, audit_query
from tests.ban_register import Register
from tests.test_admin_console import _auth, _console, _officer, _problem, _token, console_flow
from tests.test_identity_code_flow_support import Flow

pytestmark = pytest.mark.postgres


@pytest.fixture
def flow(pg_engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flow]:
    # A millisecond: the search below waits on a lock, so the server cancels it whatever the machine's speed.
    monkeypatch.setenv("QUAYGATE_AUDIT_SEARCH_TIMEOUT", "0.001")
    yield from console_flow(pg_engine, tmp_path, Register())


def _plan(conn: sa.Connection, q: AuditQuery) -> str:
    compiled = audit_query(q).compile(dialect=conn.dialect)
    return "\n".join(conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params).scalars())


def test_a_search_by_actor_reads_the_actor_indexes(pg_engine: sa.Engine) -> None:
    # A trail of 20,000 entries, of two gate clients and of 2,000 persons (one entry each): enough that
    # reading it whole costs more than the indexes, and fewer than ANALYZE samples, so the plan is the
    # same on every run. An actor matching nothing was the case that read the whole trail.
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("""
            INSERT INTO audit_log (at, kind, actor, subject, data, txid)
            SELECT now(), 'release.gate.verified',
                   CASE WHEN g %% 10 = 0 THEN jsonb_build_object('person_id', 'p' || g, 'client_id', 'console')
                        ELSE jsonb_build_object('client_id', 'gate-' || (g %% 2)) END,
                   'subject-' || g, '{}'::jsonb, txid_current()
            FROM generate_series(1, 20000) g""")
    with pg_engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE audit_log")
        for actor in ("nobody", "p10"):
            plan = _plan(conn, AuditQuery(actor=actor))
            assert "ix_audit_log_actor_person_id" in plan and "ix_audit_log_actor_client_id" in plan, plan
            assert "Seq Scan" not in plan, plan


def test_a_search_past_its_time_is_cancelled_and_answers_narrow_it(flow: Flow, pg_engine: sa.Engine) -> None:
    token = _token(flow, _console(flow), _officer(flow, "port_security_admin"))
    assert flow.container.settings.audit_search_timeout == 0.001
    locker = pg_engine.connect()
    locked: list[str] = []

    def lock_the_trail(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # Once the search has set its time (and written its own entry), another transaction locks the
        # trail: the search's SELECT waits for it until the server cancels the statement.
        if "set_config" in statement and not locked:
            locker.exec_driver_sql("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE")
            locked.append(statement)

    sa.event.listen(pg_engine, "after_cursor_execute", lock_the_trail)
    try:
        r = flow.http.get("/admin/v1/audit", params={"actor": "nobody"}, headers=_auth(token))
    finally:
        sa.event.remove(pg_engine, "after_cursor_execute", lock_the_trail)
        locker.rollback()
        locker.close()
    assert locked
    body = _problem(r, 422, "search_too_broad")
    assert "since" in body["detail"]
    assert pg_engine.pool.checkedout() == 0  # type: ignore[attr-defined]  # the search's connection is back
    # The time was the search's transaction's only (SET LOCAL): the pooled connection forgot it.
    with pg_engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "0"

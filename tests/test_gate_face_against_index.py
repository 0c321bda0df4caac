"""Review 149, finding 5: the gate reads each right with the last gate-in decision on it whose face the service
found another person's (``store.FACE_AGAINST``, review 148), on every PostgreSQL read of rights (a commit, a
cache miss, the gate passes, the loop's commit). Through the index on the decisions' release_id alone (or the
one on decided_at, read backwards), that probe read every decision of the right, or of every right, and parsed
its face JSON: 0.57 ms, then 253 ms after 200 000 check decisions on one right (the reviewer's figures). The
partial index ``ix_gate_decisions_face_against`` (migration 0033) holds those decisions alone, by right and time,
its predicate the probe's own, written into the SQL (constants, not parameters), so that a plan the driver
prepared (a generic plan) uses it too: one index probe."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from quaygate.hotsql import listed
from quaygate.schema import FACE_AGAINST_SQL, gate_decisions, releases
from release_service.adapters.sqla import gate as sqlgate
from release_service.adapters.sqla import store
from release_service.services import issue

from .factories import do, issue_cmd, port

pytestmark = pytest.mark.postgres

AGAINST = {"kind": "image", "matched": False, "distance": 0.9, "tolerance": 0.4}
OTHERS: list[dict[str, Any] | None] = [None, {"kind": "none"}, {"kind": "image", "matched": True, "distance": 0.2,
                                                                "tolerance": 0.4}]


def _decision(release_id: uuid.UUID, container: str, at: datetime, face: dict[str, Any] | None) -> dict[str, Any]:
    return dict(id=uuid.uuid4(), terminal="BEANR-K1700", request_id=str(uuid.uuid4()), client_id="c", lane="1",
                direction="in", mode="check", fingerprint="f" * 64, decision="deny", reasons=[], release_id=release_id,
                container_number=container, committed=False, response={}, observed_at=at, decided_at=at,
                nomination=None, face=face)


def _judged(sql: str) -> str:
    """The predicate as the probe writes it, on its alias ``judged``."""
    return re.sub(r"\b(direction|face)\b(?!')", r"judged.\1", sql)


def test_the_probe_names_the_indexs_predicate_in_its_sql() -> None:
    """Written out, constants and all, on PostgreSQL: a parameter in its place would keep a generic plan off
    the partial index. And the same predicate as the index's (quaygate.schema.FACE_AGAINST_SQL)."""
    for statement in (sqlgate._RIGHTS, store._BY_CONTAINERS):
        sql = str(statement.compile(dialect=postgresql.dialect()))
        assert _judged(FACE_AGAINST_SQL) in sql, sql


def test_the_last_face_against_of_a_right_is_one_probe_of_its_index(pg_engine: sa.Engine) -> None:
    p = port(pg_engine)
    right, _ = do(pg_engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), datetime.now(UTC)))
    container = right.container.value
    t0 = datetime.now(UTC) - timedelta(hours=1)
    rows = [_decision(right.id, container, t0, AGAINST)]
    rows += [_decision(right.id, container, t0 + timedelta(milliseconds=i + 1), OTHERS[i % 3]) for i in range(3000)]
    with pg_engine.begin() as conn:
        conn.execute(gate_decisions.insert(), rows)
        conn.exec_driver_sql("ANALYZE gate_decisions")
    with pg_engine.connect() as conn:
        (read,) = sqlgate._RIGHTS_PG.execute(conn, {"containers": listed([container])}).all()
        assert read.fa_id == rows[0]["id"]  # the last decision of the right whose face was another person's
        # The gate's read as a prepared statement planned once for any container (a generic plan).
        probe = sa.select(*sqlgate._RIGHT_COLUMNS, *store.FACE_AGAINST).select_from(
            releases.outerjoin(store.FACE_AGAINST_FROM, store.FACE_AGAINST_ON)).where(
            releases.c.container_number == sa.literal_column("$1"))
        sql = str(probe.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql(f"PREPARE rights_read(text) AS {sql}".replace("%", "%%"))
        plan = "\n".join(conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, COSTS OFF, SUMMARY OFF) EXECUTE rights_read('{container}')").scalars())
        conn.exec_driver_sql("DEALLOCATE rights_read")
        conn.exec_driver_sql("RESET plan_cache_mode")
    assert "ix_gate_decisions_face_against" in plan, plan
    assert "Rows Removed by Filter" not in plan, plan  # no decision read and judged one by one

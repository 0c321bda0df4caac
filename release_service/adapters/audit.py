"""The audit trail's writer: rows appended in the caller's transaction, chained later by the sealer."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from quaygate.schema import audit_log


class SqlAuditLog:
    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn
        self._pg = conn.dialect.name == "postgresql"

    def append(self, kind: str, *, actor: dict[str, Any], subject: str | None, data: dict[str, Any],
               at: datetime) -> None:
        self.append_many([(kind, actor, subject, data, at)])

    def append_many(self, entries: Iterable[tuple[str, dict[str, Any], str | None, dict[str, Any], datetime]]) -> None:
        rows = [
            {"kind": kind, "actor": actor, "subject": subject, "data": data, "at": at}
            for kind, actor, subject, data, at in entries
        ]
        if not rows:
            return
        stmt = audit_log.insert()
        if self._pg:
            stmt = stmt.values(txid=sa.text("pg_current_xact_id()::text::bigint"))
        self._conn.execute(stmt, rows)

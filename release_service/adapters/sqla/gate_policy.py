"""The terminals whose gate policy the admin changes (services/gate_policy.py ``TerminalRegistry``).

- ``exists``: a terminal is an organisation carrying that ``terminal_code``.
- ``lock_policy``: a transaction-scoped PostgreSQL advisory lock per terminal, taken before the policy
  is read, so two admins changing one terminal's policy queue (no lost update, and no duplicate-key
  error when both create its first row). SQLite has one writer at a time (``BEGIN IMMEDIATE``): nothing
  to take.
- ``updated``: who changed the policy last and when (``None``: the terminal runs on the defaults).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from quaygate.schema import organisations, terminal_policies


class SqlTerminalRegistry:
    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def exists(self, terminal: str) -> bool:
        return self._conn.execute(
            sa.select(organisations.c.id).where(organisations.c.terminal_code == terminal)
        ).first() is not None

    def lock_policy(self, terminal: str) -> None:
        if self._conn.dialect.name == "postgresql":
            self._conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                               {"k": f"terminal_policy:{terminal}"})

    def updated(self, terminal: str) -> tuple[str, datetime] | None:
        row = self._conn.execute(
            sa.select(terminal_policies.c.updated_by, terminal_policies.c.updated_at)
            .where(terminal_policies.c.terminal_code == terminal)
        ).first()
        return None if row is None else (str(row.updated_by), row.updated_at)

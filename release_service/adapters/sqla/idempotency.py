"""Idempotency keys, claimed in the use case's own transaction.

The first request inserts the key; a concurrent twin blocks on the unique index until the first
commits and then reads its stored answer, so one key never has two effects.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from quaygate.schema import idempotency_keys
from release_service.domain.errors import DomainError, ErrorCode


class SqlIdempotency:
    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def claim(self, client_id: str, key: str, fingerprint: str, now: datetime) -> tuple[int, Any] | None:
        try:
            with self._conn.begin_nested():
                self._conn.execute(
                    idempotency_keys.insert().values(
                        client_id=client_id, key=key, fingerprint=fingerprint, status_code=0, body={},
                        created_at=now,
                    )
                )
            return None
        except sa.exc.IntegrityError:
            row = self._conn.execute(
                sa.select(idempotency_keys).where(
                    idempotency_keys.c.client_id == client_id, idempotency_keys.c.key == key
                )
            ).mappings().one()
            if row["fingerprint"] != fingerprint:
                raise DomainError(
                    ErrorCode.IDEMPOTENCY_KEY_REUSED,
                    "This Idempotency-Key was already used for a different request.",
                ) from None
            return int(row["status_code"]), row["body"]

    def forget(self, client_id: str, key: str) -> None:
        self._conn.execute(idempotency_keys.delete().where(
            idempotency_keys.c.client_id == client_id, idempotency_keys.c.key == key))

    def complete(self, client_id: str, key: str, status_code: int, body: Any) -> None:
        self._conn.execute(
            idempotency_keys.update()
            .where(idempotency_keys.c.client_id == client_id, idempotency_keys.c.key == key)
            .values(status_code=status_code, body=body)
        )

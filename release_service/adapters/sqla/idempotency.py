"""Idempotency keys, claimed in the use case's own transaction, and kept for a retention.

The first request inserts the key; a concurrent twin blocks on the unique index until the first
commits and then reads its stored answer, so one key never has two effects.

A key is kept ``retention`` from its first request (QUAYGATE_IDEMPOTENCY_RETENTION_SECONDS, 24 hours by
default, as Stripe's; draft-ietf-httpapi-idempotency-key-header §2 lets the resource set the expiry).
Past it the key is absent: its stored answer is never replayed and another request may use it, whether
or not the sweep (``prune_idempotency_keys``, quaygate/workers.py) has deleted the row yet, so what a
client gets never depends on the sweep's timing (review 159). The answers hold personal data (a
nomination's driver and plates) and whole batches; kept for ever, a deterministic key such as the
README's replayed a years-old answer.

Taking an expired key over is one conditional ``UPDATE ... WHERE created_at < :expired``: on PostgreSQL
a twin taking it over at once waits for the row's lock and then finds it fresh (READ COMMITTED checks the
condition again on the row its holder committed), so it reads and replays the winner's answer; had the
winner rolled back, the twin takes it over. The sweep locks the rows it deletes with SKIP LOCKED, so it
never deletes a key a request has taken over; a request that finds the key gone between its insert and
its read (the sweep deleted it meanwhile) claims it afresh.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from quaygate.schema import idempotency_keys
from release_service.domain.errors import DomainError, ErrorCode

DEFAULT_RETENTION = timedelta(hours=24)  # quaygate.settings idempotency_retention_seconds's default
PRUNE_BATCH = 1000
# Insert, take over, read: a key the sweep deletes between them is claimed on the next round. Two rounds
# do: once the sweep's delete has committed, only a twin's insert can refuse ours, and its row is fresh.
_ROUNDS = 3

_keys = idempotency_keys


class SqlIdempotency:
    def __init__(self, conn: sa.Connection, *, retention: timedelta = DEFAULT_RETENTION) -> None:
        self._conn = conn
        self._retention = retention

    def claim(self, client_id: str, key: str, fingerprint: str, now: datetime) -> tuple[int, Any] | None:
        this = sa.and_(_keys.c.client_id == client_id, _keys.c.key == key)
        expired = now - self._retention
        for _ in range(_ROUNDS):
            try:
                with self._conn.begin_nested():
                    self._conn.execute(_keys.insert().values(
                        client_id=client_id, key=key, fingerprint=fingerprint, status_code=0, body={},
                        created_at=now))
                return None
            except sa.exc.IntegrityError:
                pass
            # Stored before: past its retention it is absent, and this request takes it over.
            taken = self._conn.execute(_keys.update().where(this, _keys.c.created_at < expired).values(
                fingerprint=fingerprint, status_code=0, body={}, created_at=now)).rowcount
            if taken:
                return None
            row = self._conn.execute(sa.select(_keys).where(this)).mappings().one_or_none()
            if row is None:
                continue  # swept between the insert and the read: claim it afresh
            if row["fingerprint"] != fingerprint:
                raise DomainError(
                    ErrorCode.IDEMPOTENCY_KEY_REUSED,
                    "This Idempotency-Key was already used for a different request.",
                )
            return int(row["status_code"]), row["body"]
        raise RuntimeError("idempotency key neither claimed nor found")  # pragma: no cover - see _ROUNDS

    def forget(self, client_id: str, key: str) -> None:
        self._conn.execute(_keys.delete().where(_keys.c.client_id == client_id, _keys.c.key == key))

    def complete(self, client_id: str, key: str, status_code: int, body: Any) -> None:
        self._conn.execute(
            _keys.update()
            .where(_keys.c.client_id == client_id, _keys.c.key == key)
            .values(status_code=status_code, body=body)
        )


def prune_idempotency_keys(conn: sa.Connection, *, before: datetime, limit: int = PRUNE_BATCH) -> int:
    """Delete up to ``limit`` keys first used before ``before`` (now less the retention); how many.

    Found through ix_idempotency_keys_created_at. Replicas pruning at once, or a request taking an
    expired key over: on PostgreSQL each takes rows no other holds (SKIP LOCKED), and the delete checks
    the age again, so a key taken over (made fresh) is never deleted.
    """
    picked = sa.select(_keys.c.client_id, _keys.c.key).where(_keys.c.created_at < before).limit(limit)
    if conn.dialect.name == "postgresql":
        picked = picked.with_for_update(skip_locked=True)
    ids = [tuple(row) for row in conn.execute(picked)]
    if not ids:
        return 0
    return int(conn.execute(_keys.delete().where(
        sa.tuple_(_keys.c.client_id, _keys.c.key).in_(ids), _keys.c.created_at < before)).rowcount or 0)

"""The passkey store: rows of ``webauthn_credentials`` (WebAuthn Level 3 §4 "credential record").

Lifecycle of a credential::

    register --> active --counter regression--> suspended (status_reason counter_regression)
                   |                                 |
                   +----------remove()---------------+--> removed   (never deleted: audit and reuse)

Only an ``active`` credential of an ``active`` person logs in. The write methods take the use case's
connection and only execute: the caller owns the one transaction (STYLE.md #5).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from quaygate.hotsql import HotStatement
from quaygate.schema import persons, webauthn_credentials

from .passkeys import NewPasskey

ACTIVE = "active"
SUSPENDED = "suspended"
REMOVED = "removed"

t = webauthn_credentials


# Built once: a passkey login runs these on every attempt (each built per call cost about 0.1 ms).
_GET = HotStatement(sa.select(t, persons.c.status.label("person_status")).join(persons, persons.c.id == t.c.person_id)
                    .where(t.c.credential_id == sa.bindparam("credential_id")))
_USE = (t.update().where(t.c.credential_id == sa.bindparam("id"), t.c.status == ACTIVE)
        .values(sign_count=sa.bindparam("count"), backed_up=sa.bindparam("backed"),
                last_used_at=sa.bindparam("at", type_=t.c.last_used_at.type)))
# WebAuthn §6.1.1: 0 after 0 (no counter kept) is fine; otherwise the counter must go up.
_USE_UNCOUNTED = HotStatement(_USE.where(t.c.sign_count == 0))
_USE_COUNTED = HotStatement(_USE.where(t.c.sign_count < sa.bindparam("count")))


@dataclass(frozen=True, slots=True)
class StoredCredential:
    credential_id: str
    person_id: uuid.UUID
    person_status: str
    name: str
    public_key: bytes
    sign_count: int
    transports: tuple[str, ...]
    status: str
    status_reason: str | None
    backed_up: bool
    created_at: datetime
    last_used_at: datetime | None


class CredentialStore:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    # ---- reads ----------------------------------------------------------------------------------

    def get(self, credential_id: str, conn: sa.Connection | None = None) -> StoredCredential | None:
        """The credential and its person's status; in ``conn``'s transaction when given."""
        if conn is not None:
            row = _GET.execute(conn, {"credential_id": credential_id}).first()
        else:
            with self._engine.connect() as own:
                row = _GET.execute(own, {"credential_id": credential_id}).first()
        return None if row is None else _credential(row)

    def for_person(self, person_id: uuid.UUID, *, include_removed: bool = False) -> list[StoredCredential]:
        stmt = (
            sa.select(t, persons.c.status.label("person_status"))
            .join(persons, persons.c.id == t.c.person_id)
            .where(t.c.person_id == person_id)
            .order_by(t.c.created_at, t.c.credential_id)
        )
        if not include_removed:
            stmt = stmt.where(t.c.status != REMOVED)
        with self._engine.connect() as conn:
            return [_credential(r) for r in conn.execute(stmt)]

    def exists(self, conn: sa.Connection, credential_id: str) -> bool:
        return conn.execute(sa.select(t.c.credential_id).where(t.c.credential_id == credential_id)).first() is not None

    # ---- writes (in the caller's transaction) ---------------------------------------------------

    def add(self, conn: sa.Connection, person_id: uuid.UUID, passkey: NewPasskey, *, name: str, now: datetime) -> None:
        conn.execute(
            t.insert().values(
                credential_id=passkey.credential_id,
                person_id=person_id,
                name=name,
                public_key=passkey.public_key,
                sign_count=passkey.sign_count,
                transports=list(passkey.transports),
                aaguid=passkey.aaguid,
                backup_eligible=passkey.backup_eligible,
                backed_up=passkey.backed_up,
                status=ACTIVE,
                created_at=now,
            )
        )

    def record_use(
        self, conn: sa.Connection, credential_id: str, *, sign_count: int, backed_up: bool, now: datetime
    ) -> bool:
        """Store a verified assertion's counter, atomically: only while the credential is active and
        its stored counter is still below the new one (or both are 0). False when another login moved
        the counter first or the credential was suspended or removed meanwhile (check-then-act free)."""
        result = (_USE_UNCOUNTED if sign_count == 0 else _USE_COUNTED).execute(
            conn, {"id": credential_id, "count": sign_count, "backed": backed_up, "at": now})
        return result.rowcount == 1

    def suspend(self, conn: sa.Connection, credential_id: str, *, reason: str) -> bool:
        result = conn.execute(
            t.update()
            .where(t.c.credential_id == credential_id, t.c.status == ACTIVE)
            .values(status=SUSPENDED, status_reason=reason)
        )
        return result.rowcount == 1

    def rename(self, conn: sa.Connection, person_id: uuid.UUID, credential_id: str, name: str) -> bool:
        result = conn.execute(
            t.update()
            .where(t.c.credential_id == credential_id, t.c.person_id == person_id, t.c.status != REMOVED)
            .values(name=name)
        )
        return result.rowcount == 1

    def remove(self, conn: sa.Connection, person_id: uuid.UUID, credential_id: str) -> bool:
        """Mark removed (never deleted: the audit trail keeps naming it, and its id stays taken)."""
        result = conn.execute(
            t.update()
            .where(t.c.credential_id == credential_id, t.c.person_id == person_id, t.c.status != REMOVED)
            .values(status=REMOVED, status_reason="removed_by_person")
        )
        return result.rowcount == 1

    def count_active(self, conn: sa.Connection, person_id: uuid.UUID) -> int:
        stmt = sa.select(sa.func.count()).where(t.c.person_id == person_id, t.c.status == ACTIVE)
        return int(conn.execute(stmt).scalar_one())


def _credential(row: sa.Row) -> StoredCredential:  # type: ignore[type-arg]
    return StoredCredential(
        credential_id=row.credential_id,
        person_id=row.person_id,
        person_status=row.person_status,
        name=row.name,
        public_key=bytes(row.public_key),
        sign_count=int(row.sign_count),
        transports=tuple(row.transports or ()),
        status=row.status,
        status_reason=row.status_reason,
        backed_up=bool(row.backed_up),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
    )

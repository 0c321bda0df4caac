"""One-time enrolment codes: the badge office hands a person a code to register a first passkey.

A code is 16 characters of Crockford's base32 (80 bits), shown as ``ABCD-EFGH-JKMN-PQRS`` so it can
be read out or typed on a phone; case, spaces and hyphens are ignored when it is entered. Only its
SHA-256 is stored (``enrolment_codes.code_hash``), so a leaked table enrols nobody.

Lifecycle::

    issue_code --> live --consume() at a successful registration--> used (used_at set, never deleted)
                    |
                    +--expires_at (default 72 h)--> expired

``consume`` is one conditional ``UPDATE ... WHERE used_at IS NULL AND expires_at > now`` in the
registration's own transaction (STYLE.md #4): of two racing registrations, exactly one wins, and a
registration that fails later rolls the consumption back with it.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from quaygate.schema import enrolment_codes, persons

DEFAULT_TTL = timedelta(hours=72)
MAX_TTL = timedelta(days=30)
# Crockford's base32: no I, L, O, U (read aloud without confusion).
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CONFUSABLE = str.maketrans({"I": "1", "L": "1", "O": "0"})
LENGTH = 16


class EnrolmentRefused(Exception):
    """``reason``: enrolment_code_unknown, enrolment_code_expired, enrolment_code_used, person_not_active."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class EnrolmentCode:
    code_hash: str
    person_id: uuid.UUID
    expires_at: datetime


def normalise(code: str) -> str:
    return code.strip().upper().replace("-", "").replace(" ", "").translate(_CONFUSABLE)


def code_hash(code: str) -> str:
    return hashlib.sha256(normalise(code).encode()).hexdigest()


def _new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, LENGTH, 4))


def issue_code(
    engine: sa.Engine,
    person_id: uuid.UUID,
    *,
    created_by: str,
    now: datetime,
    ttl: timedelta = DEFAULT_TTL,
    conn: sa.Connection | None = None,
) -> tuple[str, datetime]:
    """A new code for ``person_id``: (the clear code, shown once; its expiry).

    Raises EnrolmentRefused("person_unknown" | "person_not_active") and ValueError for a TTL outside
    (0, 30 days]. Earlier live codes of the person stay valid until used or expired. Pass ``conn`` to
    issue in the caller's transaction (with its audit entry).
    """
    if not timedelta(0) < ttl <= MAX_TTL:
        raise ValueError("an enrolment code lives between 1 second and 30 days")
    code = _new_code()
    expires_at = now + ttl
    if conn is None:
        with engine.begin() as own:
            _insert(own, person_id, code, created_by=created_by, now=now, expires_at=expires_at)
    else:
        _insert(conn, person_id, code, created_by=created_by, now=now, expires_at=expires_at)
    return code, expires_at


def _insert(
    conn: sa.Connection, person_id: uuid.UUID, code: str, *, created_by: str, now: datetime, expires_at: datetime
) -> None:
    status = conn.execute(sa.select(persons.c.status).where(persons.c.id == person_id)).scalar_one_or_none()
    if status is None:
        raise EnrolmentRefused("person_unknown")
    if status != "active":
        raise EnrolmentRefused("person_not_active")
    conn.execute(
        enrolment_codes.insert().values(
            code_hash=code_hash(code),
            person_id=person_id,
            created_by=created_by[:100],
            created_at=now,
            expires_at=expires_at,
        )
    )


def end_live_codes(conn: sa.Connection, person_id: uuid.UUID, *, now: datetime) -> int:
    """End the person's unused, unexpired codes now (they then answer ``enrolment_code_expired``): how many."""
    result = conn.execute(enrolment_codes.update().where(
        enrolment_codes.c.person_id == person_id, enrolment_codes.c.used_at.is_(None),
        enrolment_codes.c.expires_at > now).values(expires_at=now))
    return int(result.rowcount or 0)


def check(engine: sa.Engine, code: str, *, now: datetime) -> EnrolmentCode:
    """The live code's person, without using it (registration options). Raises EnrolmentRefused."""
    if not isinstance(code, str) or not 0 < len(code) <= 64:
        raise EnrolmentRefused("enrolment_code_unknown")
    digest = code_hash(code)
    stmt = (
        sa.select(enrolment_codes, persons.c.status.label("person_status"))
        .join(persons, persons.c.id == enrolment_codes.c.person_id)
        .where(enrolment_codes.c.code_hash == digest)
    )
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        raise EnrolmentRefused("enrolment_code_unknown")
    if row.used_at is not None:
        raise EnrolmentRefused("enrolment_code_used")
    if row.expires_at <= now:
        raise EnrolmentRefused("enrolment_code_expired")
    if row.person_status != "active":
        raise EnrolmentRefused("person_not_active")
    return EnrolmentCode(digest, row.person_id, row.expires_at)


def consume(conn: sa.Connection, digest: str, *, person_id: uuid.UUID, now: datetime) -> None:
    """Use the code, once (conditional UPDATE in the caller's transaction). Raises EnrolmentRefused
    when it was used (a race or a replay) or expired meanwhile."""
    result = conn.execute(
        enrolment_codes.update()
        .where(
            enrolment_codes.c.code_hash == digest,
            enrolment_codes.c.person_id == person_id,
            enrolment_codes.c.used_at.is_(None),
            enrolment_codes.c.expires_at > now,
        )
        .values(used_at=now)
    )
    if result.rowcount != 1:
        row = conn.execute(
            sa.select(enrolment_codes.c.used_at).where(enrolment_codes.c.code_hash == digest)
        ).first()
        raise EnrolmentRefused("enrolment_code_used" if row is not None and row.used_at else "enrolment_code_expired")

"""The passkey store: rows of ``webauthn_credentials`` (WebAuthn Level 3 §4 "credential record").

Lifecycle of a credential::

    register --> active --counter regression--> suspended (status_reason counter_regression)
                   |
                   +--privileged role granted, not a privileged enrolment--> suspended
                   |                                       (status_reason privileged_role_granted)
                   +--remove() (active or suspended)--> removed   (never deleted: audit and reuse)

Only an ``active`` credential of an ``active`` person logs in. The write methods take the use case's
connection and only execute: the caller owns the one transaction (STYLE.md #5).

Each credential keeps where it came from (``Provenance``, review 67): the enrolment code's issuer or
``account``, and whether it rests only on codes whose issuers could have issued them for a person who
holds a privileged role (claims.PRIVILEGED_ROLES: port security, an admin client, the CLI; not the
badge office). A privileged role granted later suspends every active passkey of the person that does
not (``suspend_unprivileged``): the badge office may not hand out a code for an officer, so a passkey
it enrolled must not log in as one because the role came after the code. The credentials registered
before that was recorded say nothing, and count as not privileged (the safe side): their holders get a
new code from port security if they are granted a privileged role.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from quaygate.hotsql import HotStatement
from quaygate.schema import persons, webauthn_credentials

from ..domain import assurance
from ..sessions import LoginSession
from .passkeys import NewPasskey

ACTIVE = "active"
SUSPENDED = "suspended"
REMOVED = "removed"
PRIVILEGED_ROLE_GRANTED = "privileged_role_granted"  # a status_reason
ACCOUNT = "account"  # Provenance.via of a passkey added from a login session
_VIA_MAX = 120

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
class Provenance:
    """Where a passkey came from. ``via``: ``code:<issuer>`` (the enrolment code's ``created_by``) or
    ``account`` (added from a login session). ``privileged``: it rests only on codes whose issuers
    were refused no role, so could have issued them for a person who holds a privileged role."""

    via: str
    privileged: bool

    @classmethod
    def from_code(cls, issuer: str, *, privileged: bool) -> Provenance:
        return cls(f"code:{issuer}"[:_VIA_MAX], privileged)


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

    def from_session(self, conn: sa.Connection, session: LoginSession) -> Provenance:
        """The provenance of a passkey added from a login ``session``: that of the passkey the session
        logged in with, since whoever holds the session holds it. The session does not name it, so
        every passkey of the person that may be it counts: each used or registered at or after the
        session's ``auth_time`` (a login stores its time as the passkey's ``last_used_at`` and as the
        session's ``auth_time``, an enrolment as ``created_at`` and ``auth_time``; a step-up keeps the
        ``auth_time``), in any status (removing a passkey keeps the remover's session). The new one is
        privileged only if there is such a passkey and all of them are: a session opened by the badge
        office's passkey, or by no passkey at all (an upstream login), does not make one.

        A session opened by no passkey (assurance.passkey_login: an upstream login, stepped up or not)
        is not privileged whatever the person's passkeys did: none of them opened it, and the one used
        since its login (the officer's own, on his own phone) is no proof that its holder holds it."""
        if not assurance.passkey_login(session.acr, session.amr):
            return Provenance(ACCOUNT, False)
        since = sa.func.coalesce(t.c.last_used_at, t.c.created_at) >= session.auth_time
        held = [bool(privileged) for privileged in conn.execute(
            sa.select(t.c.privileged_enrolment).where(t.c.person_id == session.person_id, since)).scalars()]
        return Provenance(ACCOUNT, bool(held) and all(held))

    def opened_by_privileged(self, conn: sa.Connection, session: LoginSession) -> bool:
        """Whether a privileged enrolment of the person opened ``session``: a passkey login
        (assurance.passkey_login, never an upstream one) by the passkey the session names
        (``LoginSession.credential_id``), else, for a session that names none (opened before migration
        0022), ``from_session``'s rule. What an officer's session must be to change his passkeys or sign
        him out elsewhere (identity.authn.service ``_officers_own``; review 145, finding 1): by the passkey
        that opened it, so a passkey of his that is not one (added before that rule) can be removed from a
        session his own opened, and its own session removes none of his."""
        if not assurance.passkey_login(session.acr, session.amr):
            return False
        if session.credential_id is None:
            return self.from_session(conn, session).privileged
        return bool(conn.execute(sa.select(t.c.privileged_enrolment).where(
            t.c.credential_id == session.credential_id, t.c.person_id == session.person_id)).scalar())

    # ---- writes (in the caller's transaction) ---------------------------------------------------

    def add(self, conn: sa.Connection, person_id: uuid.UUID, passkey: NewPasskey, *, name: str, now: datetime,
            provenance: Provenance) -> None:
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
                enrolled_via=provenance.via[:_VIA_MAX],
                privileged_enrolment=provenance.privileged,
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


def suspend_unprivileged(conn: sa.Connection, person_id: uuid.UUID) -> tuple[int, int]:
    """A privileged role is being granted to the person (in the caller's transaction, under the
    person's row lock): suspend every active passkey of the person that is not a privileged enrolment
    (the module docstring; one registered before provenance was recorded counts as not). Returns (how
    many were suspended, how many such passkeys the person has in any status): a removed one may still
    be behind a live session, which the caller then ends (identity.authn.cutoff
    ``privileged_role_granted``)."""
    unprivileged = (t.c.person_id == person_id, sa.not_(t.c.privileged_enrolment))
    suspended = conn.execute(t.update().where(*unprivileged, t.c.status == ACTIVE)
                             .values(status=SUSPENDED, status_reason=PRIVILEGED_ROLE_GRANTED)).rowcount
    held = conn.execute(sa.select(sa.func.count()).where(*unprivileged)).scalar_one()
    return int(suspended or 0), int(held)


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

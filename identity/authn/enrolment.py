"""One-time enrolment codes: the badge office hands a person a code to register a first passkey.

A code is 16 characters of Crockford's base32 (80 bits), shown as ``ABCD-EFGH-JKMN-PQRS`` so it can
be read out or typed on a phone; case, spaces and hyphens are ignored when it is entered. Only its
SHA-256 is stored (``enrolment_codes.code_hash``), so a leaked table enrols nobody.

Lifecycle::

    issue_code --> live --consume() at a successful registration--> used (used_at set, never deleted)
                    |
                    +--expires_at (default 72 h)--> expired
                    +--end_live_codes() (a privileged role granted, a suspension, a reinstatement)--> ended
                    +--end_issued_codes() (its issuer lost a role that issues codes, or was suspended)--> ended
                    +--end_codes_issued_in() (its issuer's organisation was deactivated)--> ended
                    +--end_codes_created_by() (the admin client that issued it was deactivated, or its
                                               secret rotated with its tokens revoked)--> ended

``consume`` is one conditional ``UPDATE ... WHERE used_at IS NULL AND ended_at IS NULL AND expires_at >
now`` in the registration's own transaction (STYLE.md #4): of two racing registrations, exactly one
wins, and a registration that fails later rolls the consumption back with it. An ended code is marked
(``ended_at``), not given an earlier expiry: a registration whose clock was read before the ending
would pass an expiry set to the time of the ending (review 67), and no clock passes the marker. It
answers ``enrolment_code_expired``, as an expired one.

Who may have a code issued depends on the person's roles (identity.api.admin: the badge office not for
an officer or a company's dispatcher). That check and the insert are one act (STYLE.md #4, review L5):
``issue_code`` locks the person's row (``lock_person``), then reads the roles and inserts, in one
transaction; every role grant takes the same lock first (identity.api.admin ``add_membership``) and
ends the codes issued before it. So a grant committed before the issue's lock is seen by its read, and
an issue committed first is seen, and ended, by the grant: no live code outlives a privileged role.
The registration that uses a code takes the same lock first too (identity.authn.service
``finish_registration``), so it runs wholly before or wholly after a grant or a suspension.

A code remembers whether its issuer could have issued it for a privileged person
(``privileged_issuer``: the issuer was refused no role), and the passkey registered with it keeps that
(identity.authn.credentials ``Provenance``): a privileged role granted later suspends the passkeys that
rest on a code the badge office issued (identity.authn.cutoff ``privileged_role_granted``).

A code issued through the console names its officer (``issued_by``; ``created_by`` is the console's
client id) and never outlives his role (review 122, finding 3: it did, by up to 30 days). Its expiry
is capped at the earliest end of the roles that let him issue codes (``ISSUING_ROLES``, in force, in an
active organisation), read with a share lock on those membership rows in the issue's transaction, so a
removal or an expiry of one waits for the issue and then sees its code. When he loses one of them
(identity.memberships: removed, or expired by the sweep) his live codes end (``end_issued_codes``), and
when one is given an end (identity.api.admin ``add_membership``) they are capped at it
(``cap_issued_codes``). Losing either role ends them all, the safe side: the other role may not have
let him issue each of them (port security's codes for an officer), nor for as long.

So do his suspension and the deactivation of an organisation where he holds one (review 124, finding 5:
they ended none, and a rogue officer caught and suspended left his accomplices up to 30 days of codes):
identity.authn.cutoff ``suspend_person`` ends the codes he issued (``end_issued_codes``), and
identity.organisations ``set_active`` those issued by its members who hold an issuing role there
(``end_codes_issued_in``), all of them, the safe side again. Neither a reinstatement nor a reactivation
brings them back: they are marked ended. The issue is one act with them, as with a role's removal: it
share-locks the officer's person row (which a suspension's UPDATE takes) and the rows of the
organisations of his issuing roles (which a deactivation's UPDATE takes) before it reads his status and
his roles, in later statements (``lock_person``: under READ COMMITTED a statement sees what was committed
when it began). So a suspension or a deactivation committed first is seen, and the issue refused
(issuer_role_ended); one that comes during the issue waits for it, then ends its code.

A code an admin client issued names no officer (``issued_by`` NULL), only the client (``created_by``),
and is ``privileged_issuer`` (it is refused no role). It ends with the client (review 146, finding 1: it
outlived it by up to 30 days, and a thief of the client's secret, found out and the client deactivated,
registered a passkey for an officer with one days later): ``end_codes_created_by``, in the transaction
that deactivates or deletes the client (identity.registration.service), rotates its secret revoking its
tokens (a leak's answer), or deactivates its organisation (identity.organisations ``set_active``). Only
the codes that name no officer: an officer's code keeps the console's client id in ``created_by`` and
ends with his roles, not with the client that carried his request. The issue is one act with them, as
with an officer's suspension: it share-locks the client's organisation's row, then the client's row
(which a deactivation's, a deletion's or a rotation's UPDATE takes), and reads their status after
(``client_ended``). So a deactivation committed first is seen, and the issue refused
(issuer_role_ended), and one that comes during the issue waits for it, then ends its code. (A rotation
leaves the client active: an issue it waited for goes through, with a token it was about to revoke.)
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from quaygate.schema import (
    enrolment_codes,
    membership_in_force,
    membership_of_active_organisation,
    memberships,
    oauth_clients,
    organisations,
    persons,
)

from ..domain.claims import CONSOLE_ADMIN_ROLES, PRIVILEGED_ROLES
from ..sessions import hold_person
from .credentials import Provenance

DEFAULT_TTL = timedelta(hours=72)
MAX_TTL = timedelta(days=30)
# Crockford's base32: no I, L, O, U (read aloud without confusion).
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CONFUSABLE = str.maketrans({"I": "1", "L": "1", "O": "0"})
LENGTH = 16
# The ``refused_roles`` of an issuer who may have a code made for anyone, a privileged person too: port
# security, an admin client, an operator at the command line (identity.api.admin
# ``enrolment_code_refused_roles``). Its codes are ``privileged_issuer``: there is no default, each
# issuer says which roles it is refused, so nobody gets the permissive choice by leaving it out.
NO_ROLE_REFUSED: frozenset[str] = frozenset()
# The roles that let a console officer issue codes (identity.api.admin ``enrolment_code_caller``): his
# codes live no longer than the earliest of his holds (module docstring).
ISSUING_ROLES: frozenset[str] = CONSOLE_ADMIN_ROLES


# Who issues a person's enrolment codes, so whom the person turns to for a new one, or about a passkey
# or an account suspended (``issuing_office``): the badge office, except for a person who holds a
# privileged role (claims.PRIVILEGED_ROLES: an officer, a company's dispatcher or org_admin), whose codes
# only port security issues (identity.api.admin ``enrolment_code_refused_roles``).
BADGE_OFFICE = "badge_office"
PORT_SECURITY = "port_security"


class EnrolmentRefused(Exception):
    """``reason``: enrolment_code_unknown, enrolment_code_expired, enrolment_code_used, person_unknown,
    person_not_active, insufficient_role (the person holds a role the issuer may not issue for),
    issuer_role_ended (the officer issuing it holds no role that issues codes any more, in an active
    organisation, or is suspended; the client issuing it, or its organisation, is deactivated).
    ``person_id``: the code's person, when a code was found (``check``: the pages tell him whom to ask)."""

    def __init__(self, reason: str, *, person_id: uuid.UUID | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.person_id = person_id


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
    refused_roles: frozenset[str],
    conn: sa.Connection | None = None,
    issued_by: uuid.UUID | None = None,
) -> tuple[str, datetime]:
    """A new code for ``person_id``: (the clear code, shown once; its expiry).

    Raises EnrolmentRefused("person_unknown" | "person_not_active" | "insufficient_role") and
    ValueError for a TTL outside (0, 30 days]. ``refused_roles`` (required, no default): a person who
    holds any of them gets no code from this issuer, read under the person's row lock (see the module
    docstring); an issuer refused no role (``NO_ROLE_REFUSED``) makes a ``privileged_issuer`` code.
    Earlier live codes of the person stay valid until used, expired or ended. Pass ``conn`` to issue in
    the caller's transaction (with its audit entry). ``issued_by``: the console officer issuing it; its
    expiry is then capped at the end of his issuing roles (module docstring), EnrolmentRefused
    ("issuer_role_ended") when none is in force, or he is suspended.
    """
    if not timedelta(0) < ttl <= MAX_TTL:
        raise ValueError("an enrolment code lives between 1 second and 30 days")
    code = _new_code()
    if conn is None:
        with engine.begin() as own:
            expires_at = _insert(own, person_id, code, created_by=created_by, now=now, expires_at=now + ttl,
                                 refused_roles=refused_roles, issued_by=issued_by)
    else:
        expires_at = _insert(conn, person_id, code, created_by=created_by, now=now, expires_at=now + ttl,
                             refused_roles=refused_roles, issued_by=issued_by)
    return code, expires_at


def office_for(roles: Iterable[str]) -> str:
    """The office that issues the codes of a person who holds ``roles`` (``BADGE_OFFICE``,
    ``PORT_SECURITY``): port security for any privileged role (claims.PRIVILEGED_ROLES)."""
    return PORT_SECURITY if PRIVILEGED_ROLES.intersection(roles) else BADGE_OFFICE


def issuing_office(conn: sa.Connection, person_id: uuid.UUID) -> str:
    """``office_for`` the person's roles now, in any organisation (as ``issue_code`` reads them)."""
    return office_for(conn.execute(sa.select(memberships.c.role).where(memberships.c.person_id == person_id))
                      .scalars())


def holds_privileged_role(conn: sa.Connection, person_id: uuid.UUID, *, now: datetime) -> bool:
    """Whether the person holds a privileged role (claims.PRIVILEGED_ROLES, the roles whose grant suspends
    his passkeys that are not privileged enrolments: identity.authn.cutoff ``privileged_role_granted``) in
    force at ``now``, in any organisation, active or not: a reactivation gives it back without suspending
    anything, so it counts here as it does for ``issuing_office``. Read in the caller's transaction, after
    the person's row lock (``lock_person``) or share lock (sessions ``hold_person``) when a grant must be
    seen (review 145, finding 1: identity.authn.service ``finish_registration``)."""
    return conn.execute(sa.select(memberships.c.role).where(
        memberships.c.person_id == person_id, memberships.c.role.in_(sorted(PRIVILEGED_ROLES)),
        membership_in_force(now)).limit(1)).first() is not None


def lock_person(conn: sa.Connection, person_id: uuid.UUID) -> str | None:
    """The person's status (None: no such person), the person's row locked until the caller's
    transaction ends: an enrolment code's issue and a role grant for the same person run one after
    the other. ``FOR NO KEY UPDATE`` on PostgreSQL (the lock of an UPDATE of the row, as a suspension
    takes: it does not hold up the inserts of rows that merely refer to the person); SQLite has no row
    locks and needs none, its writers run one at a time (BEGIN IMMEDIATE, quaygate.db). Take it first in
    the transaction, and read what it guards in later statements: under READ COMMITTED each statement
    sees what was committed when it began, so a read after the wait sees the holder's work, where a
    statement that locked and joined at once would keep the joined rows as they were before it."""
    return conn.execute(
        sa.select(persons.c.status).where(persons.c.id == person_id).with_for_update(key_share=True)
    ).scalar_one_or_none()


def _lock_with_issuer(conn: sa.Connection, person_id: uuid.UUID,
                      issuer: uuid.UUID | None) -> tuple[str | None, str | None]:
    """(the person's status, ``lock_person``; the issuer's status, his row share-locked: FOR SHARE, which a
    suspension's UPDATE of it waits for), the two rows locked in the order of their ids: two officers
    issuing a code for each other at once wait for the same first row, never each hold one the other
    wants. No issuer: (the person's status, None)."""
    def share() -> str | None:
        assert issuer is not None
        return hold_person(conn, issuer)

    if issuer is None:
        return lock_person(conn, person_id), None
    if issuer == person_id:  # refused before the issue (identity.api.admin); one lock does for both
        status = lock_person(conn, person_id)
        return status, status
    if issuer.int < person_id.int:  # PostgreSQL orders uuids by their bytes, as UUID.int does
        issuer_status = share()
        return lock_person(conn, person_id), issuer_status
    status = lock_person(conn, person_id)
    return status, share()


def issuer_ends(conn: sa.Connection, issuer: uuid.UUID, now: datetime) -> datetime | None:
    """The earliest end of ``issuer``'s roles that issue codes (ISSUING_ROLES, in force, in an active
    organisation): None when none of them ends; ``now`` when he holds none. The rows of the organisations
    of his issuing roles are share-locked first, then the membership rows are read, share-locked, in a
    statement of their own, both until the caller's transaction ends (FOR SHARE on PostgreSQL; SQLite's
    writers run one at a time): a removal, an expiry or a new end of one, or a deactivation of its
    organisation, waits for the issue, then sees its code; a deactivation committed first is seen by
    the read (module docstring)."""
    conn.execute(sa.select(organisations.c.id).where(organisations.c.id.in_(
        sa.select(memberships.c.organisation_id).where(
            memberships.c.person_id == issuer, memberships.c.role.in_(sorted(ISSUING_ROLES)))))
        .order_by(organisations.c.id).with_for_update(read=True)).all()
    ends = list(conn.execute(
        sa.select(memberships.c.valid_until).where(
            memberships.c.person_id == issuer, memberships.c.role.in_(sorted(ISSUING_ROLES)),
            membership_in_force(now), membership_of_active_organisation())
        .with_for_update(read=True, of=memberships)).scalars())
    if not ends:
        return now
    dated = [end for end in ends if end is not None]
    return min(dated) if dated else None


def lock_organisation_of(conn: sa.Connection, client_id: str) -> None:
    """Share-lock the row of the organisation of the client ``client_id`` (if any) until the caller's
    transaction ends (FOR SHARE on PostgreSQL; SQLite's writers run one at a time): a deactivation of the
    organisation waits for the caller, and a caller that waited for one reads it in its next statement."""
    conn.execute(sa.select(organisations.c.id).where(organisations.c.id.in_(
        sa.select(oauth_clients.c.organisation_id).where(oauth_clients.c.client_id == client_id)))
        .with_for_update(read=True)).all()


def client_ended(conn: sa.Connection, client_id: str, *, lock: bool = True) -> bool:
    """Whether the client ``client_id``, issuing a code itself (an admin client), or its organisation is
    deactivated; False for no such client (the command line, the demo). Minting an initial access token
    and using one ask it too (identity.registration.service; review 163, finding 1). With ``lock``, the
    organisation's row, then the client's, share-locked until the caller's transaction ends (FOR SHARE on
    PostgreSQL, which their UPDATEs wait for; SQLite's writers run one at a time), the organisation's
    status read after both, in a statement of its own (module docstring: under READ COMMITTED it sees what
    the wait let commit); without, a plain read (a check before the act, which asks again locked)."""
    if lock:
        lock_organisation_of(conn, client_id)
    read = sa.select(oauth_clients.c.active, oauth_clients.c.organisation_id).where(
        oauth_clients.c.client_id == client_id)
    client = conn.execute(read.with_for_update(read=True) if lock else read).first()
    if client is None:
        return False
    if not client.active:
        return True
    return client.organisation_id is not None and not conn.execute(
        sa.select(organisations.c.active).where(organisations.c.id == client.organisation_id)).scalar_one()


def _live(now: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    """A code still usable at ``now``: unused, not ended, not expired."""
    return (enrolment_codes.c.used_at.is_(None), enrolment_codes.c.ended_at.is_(None),
            enrolment_codes.c.expires_at > now)


def _end(conn: sa.Connection, whose: sa.ColumnElement[bool], now: datetime) -> int:
    """End the live codes ``whose`` picks (``ended_at``: they then answer ``enrolment_code_expired``, whatever
    a registration's clock says; review 67), in the caller's transaction: how many."""
    result = conn.execute(enrolment_codes.update().where(whose, *_live(now)).values(ended_at=now))
    return int(result.rowcount or 0)


def end_issued_codes(conn: sa.Connection, issuer: uuid.UUID, *, now: datetime) -> int:
    """End the live codes ``issuer`` issued (he lost a role that issues them), in the caller's
    transaction: how many. Marked ``ended_at``, as ``end_live_codes`` (review 67: no clock passes it)."""
    return _end(conn, enrolment_codes.c.issued_by == issuer, now)


def end_codes_issued_in(conn: sa.Connection, organisation_id: uuid.UUID, *, now: datetime) -> int:
    """End the live codes issued by the persons who hold a role that issues them in ``organisation_id`` (it
    is deactivated: those roles count nowhere now), in the caller's transaction: how many. All their codes,
    as ``end_issued_codes`` on the loss of one role (module docstring); a role there past its end too (its
    codes were capped at it: none is live)."""
    issuers = sa.select(memberships.c.person_id).where(memberships.c.organisation_id == organisation_id,
                                                       memberships.c.role.in_(sorted(ISSUING_ROLES)))
    return _end(conn, enrolment_codes.c.issued_by.in_(issuers), now)


def end_codes_created_by(conn: sa.Connection, client_id: str, *, now: datetime) -> int:
    """End the live codes the client ``client_id`` issued itself, an admin client's (it is deactivated,
    deleted, or its secret rotated with its tokens revoked: module docstring), in the caller's transaction:
    how many. Not those an officer issued through it (``issued_by`` set: they end with his roles)."""
    return _end(conn, sa.and_(enrolment_codes.c.created_by == client_id[:100],
                              enrolment_codes.c.issued_by.is_(None)), now)


def cap_issued_codes(conn: sa.Connection, issuer: uuid.UUID, *, until: datetime, now: datetime) -> int:
    """Cap the expiry of the live codes ``issuer`` issued at ``until`` (a role of his that issues them was
    given that end), in the caller's transaction: how many. ``until`` is to come (a new end is), so a
    registration using one before it still may."""
    result = conn.execute(enrolment_codes.update().where(
        enrolment_codes.c.issued_by == issuer, *_live(now), enrolment_codes.c.expires_at > until,
    ).values(expires_at=until))
    return int(result.rowcount or 0)


def _insert(
    conn: sa.Connection, person_id: uuid.UUID, code: str, *, created_by: str, now: datetime, expires_at: datetime,
    refused_roles: frozenset[str], issued_by: uuid.UUID | None,
) -> datetime:
    status, issuer_status = _lock_with_issuer(conn, person_id, issued_by)
    if status is None:
        raise EnrolmentRefused("person_unknown")
    if status != "active":
        raise EnrolmentRefused("person_not_active")
    # A role past its valid_until refuses nothing (migration 0019): it counts nowhere, as if removed.
    if refused_roles and conn.execute(sa.select(memberships.c.role).where(
            memberships.c.person_id == person_id, memberships.c.role.in_(sorted(refused_roles)),
            membership_in_force(now))).first() is not None:
        raise EnrolmentRefused("insufficient_role")
    if issued_by is not None:
        if issuer_status != "active":  # suspended: his codes ended with it (module docstring)
            raise EnrolmentRefused("issuer_role_ended")
        end = issuer_ends(conn, issued_by, now)
        if end is not None and end <= now:
            raise EnrolmentRefused("issuer_role_ended")
        if end is not None:
            expires_at = min(expires_at, end)
    elif client_ended(conn, created_by[:100]):  # deactivated: its codes ended with it (module docstring)
        raise EnrolmentRefused("issuer_role_ended")
    conn.execute(
        enrolment_codes.insert().values(
            code_hash=code_hash(code),
            person_id=person_id,
            created_by=created_by[:100],
            created_at=now,
            expires_at=expires_at,
            # Refused no role: it could have been issued for a person who holds any (review 67).
            privileged_issuer=not refused_roles,
            issued_by=issued_by,
        )
    )
    return expires_at


def end_live_codes(conn: sa.Connection, person_id: uuid.UUID, *, now: datetime) -> int:
    """End the person's unused, unexpired codes (``ended_at``; they then answer
    ``enrolment_code_expired``, whatever a registration's clock says): how many."""
    return _end(conn, enrolment_codes.c.person_id == person_id, now)


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
        raise EnrolmentRefused("enrolment_code_used", person_id=row.person_id)
    if row.ended_at is not None or row.expires_at <= now:
        raise EnrolmentRefused("enrolment_code_expired", person_id=row.person_id)
    if row.person_status != "active":
        raise EnrolmentRefused("person_not_active", person_id=row.person_id)
    return EnrolmentCode(digest, row.person_id, row.expires_at)


def consume(conn: sa.Connection, digest: str, *, person_id: uuid.UUID, now: datetime) -> Provenance:
    """Use the code, once (conditional UPDATE in the caller's transaction): the provenance of the
    passkey registered with it. Raises EnrolmentRefused when it was used (a race or a replay), or
    expired or ended meanwhile."""
    used = conn.execute(
        enrolment_codes.update()
        .where(
            enrolment_codes.c.code_hash == digest,
            enrolment_codes.c.person_id == person_id,
            enrolment_codes.c.used_at.is_(None),
            enrolment_codes.c.ended_at.is_(None),
            enrolment_codes.c.expires_at > now,
        )
        .values(used_at=now)
        .returning(enrolment_codes.c.created_by, enrolment_codes.c.privileged_issuer)
    ).first()
    if used is not None:
        return Provenance.from_code(used.created_by, privileged=bool(used.privileged_issuer))
    row = conn.execute(sa.select(enrolment_codes.c.used_at).where(enrolment_codes.c.code_hash == digest)).first()
    raise EnrolmentRefused("enrolment_code_used" if row is not None and row.used_at else "enrolment_code_expired")

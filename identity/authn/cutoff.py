"""Cutting a person off: end their login sessions and revoke all their grants.

Ending a credential alone is not enough: whoever logged in with it keeps a live session at the
provider and refresh tokens (and their access tokens) at every client (RFC 9700 §4.14.2 revokes a
family on reuse; here the whole person is the family). Used when a passkey is removed (all sessions
but the remover's), when one is suspended after a counter regression (all), and when port security
suspends the person (all). Always in the caller's transaction, with the change that calls for it.

    person active --suspend_person (port security, a reason)--> suspended: no login, no refresh,
                                                                sessions ended, grants revoked
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from quaygate.schema import persons

from .. import audit
from ..grants import GrantStore
from ..sessions import SessionStore

log = logging.getLogger(__name__)

REASON_MAX = 500


@dataclass(frozen=True, slots=True)
class CutOff:
    sessions_ended: int
    grants_revoked: int


class SuspendRefused(Exception):
    """``code``: reason_required, reason_too_long, not_found, status_unchanged."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def cut_off(conn: sa.Connection, *, sessions: SessionStore, grants: GrantStore, person_id: uuid.UUID,
            keep: str | None, reason: str, now: datetime) -> CutOff:
    """End the person's live login sessions but ``keep`` (a sid) and revoke every grant of the person
    (its refresh tokens and access tokens), in the caller's transaction. ``reason``: the grants'
    ``revoked_reason`` (at most 32 characters)."""
    ended = sessions.end_for_person(conn, person_id, now=now, keep=keep)
    revoked = grants.revoke_person(conn, person_id, reason=reason, now=now)
    return CutOff(ended, revoked)


def suspend_person(engine: sa.Engine, *, sessions: SessionStore, grants: GrantStore, person_id: uuid.UUID,
                   actor: str, reason: str | None, now: datetime) -> CutOff:
    """Suspend an active person and cut them off, in one transaction: the status is set by one
    conditional UPDATE (STYLE.md #4), so of two suspensions at once one is done and the other is told
    status_unchanged. ``actor`` as badge histories store it (identity.audit.actor_fields)."""
    said = " ".join((reason or "").split())
    if not said:
        raise SuspendRefused("reason_required", "Say why (the reason is kept on the audit trail).")
    if len(said) > REASON_MAX:
        raise SuspendRefused("reason_too_long", f"The reason is at most {REASON_MAX} characters.")
    with engine.begin() as conn:
        done = conn.execute(
            persons.update().where(persons.c.id == person_id, persons.c.status == "active")
            .values(status="suspended").returning(persons.c.id)
        ).first()
        if done is None:
            if conn.execute(sa.select(persons.c.id).where(persons.c.id == person_id)).first() is None:
                raise SuspendRefused("not_found", "No such person.")
            log.info("identity.person.suspend.refused.unchanged")
            raise SuspendRefused("status_unchanged", "The person is not active.")
        cut = cut_off(conn, sessions=sessions, grants=grants, person_id=person_id, keep=None,
                      reason="person_suspended", now=now)
        audit.record("identity.admin.person.suspended", at=now, actor=audit.actor_fields(actor),
                     subject=str(person_id), conn=conn,
                     data={"reason": said, "sessions_ended": cut.sessions_ended, "grants_revoked": cut.grants_revoked})
    log.info("identity.person.suspended")
    return cut

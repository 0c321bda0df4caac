"""Cutting a person off: end their login sessions and revoke all their grants.

Ending a credential alone is not enough: whoever logged in with it keeps a live session at the
provider and refresh tokens (and their access tokens) at every client (RFC 9700 §4.14.2 revokes a
family on reuse; here the whole person is the family). Used when a passkey is removed (all sessions
but the remover's), when one is suspended after a counter regression (all), and when port security
suspends the person (all). Always in the caller's transaction, with the change that calls for it.

    person active --suspend_person (port security, a reason)--> suspended: no login, no refresh,
           ^                                                    sessions ended, grants revoked
           +------reinstate_person (port security, a reason)-------+

A suspension also ends the person's live enrolment codes: one handed out before must not register a
passkey, now or after a reinstatement. It ends the live codes the person issued too, as an officer
(identity.authn.enrolment ``end_issued_codes``; review 124, finding 5): a rogue badge officer caught and
suspended, the natural first response, left his accomplices up to 30 days of codes. An issue of his in
flight share-locks his row, so the suspension's UPDATE waits for it and then ends its code; an issue
after the suspension is refused (enrolment ``issuer_role_ended``). Client secrets he was shown (a client
he registered in the console, a secret he rotated) do not end with him: the suspension names the active
clients whose current secret he saw (``client_secrets_shown``), for port security to rotate again.

The webhook subscriptions he made in a company's console close with the suspension, in every
organisation (identity.memberships ``close_webhooks_made_by``; webhook review, finding 1): each on the
trail (``release.webhook.subscription.closed``, reason ``creator_suspended``), all named in the
suspension's entry (``webhook_subscriptions_closed``). A reinstatement opens none again.

A registration in flight takes the person's row lock, as the suspension's UPDATE does
(identity.authn.service ``finish_registration``): it runs wholly before the suspension (whose cut-off
then ends its session) or after it (and is refused person_suspended).

A privileged role granted to a person (``privileged_role_granted``, identity.api.admin
``add_membership``, under the person's row lock) ends the person's live enrolment codes and suspends
every passkey that is not a privileged enrolment (identity.authn.credentials, review 67): the badge
office may not issue a code for an officer, so a passkey enrolled with its code must not log in as one
because the role came after the code. When the person has any such passkey, in any status, every login
session and grant of the person ends too (a session does not say which passkey opened it). The person
gets a new code from port security.

Reinstatement lifts the suspension and nothing more: the person may log in again, with a passkey of
theirs that is active. It does not bring back what the suspension ended or what was decided apart:

- the login sessions ended and the grants revoked stay so: the person logs in again, and the apps ask
  for new tokens (as an organisation's revoked tokens stay revoked when it is reactivated);
- a passkey suspended for a counter regression stays suspended: that is a cloned-key signal, and its
  own decision (the person enrols a new passkey with a code from the badge office); so does one
  suspended when a privileged role was granted;
- enrolment codes issued before the suspension stay ended (the suspension ends them; the reinstatement
  ends any still live, as a suspension made before review 67 left them; none is issued while
  suspended): a code handed out before must not start working again, weeks later, because of the
  reinstatement. So do the codes an officer issued before his suspension: he issues new ones.

Both are one conditional UPDATE of the status (STYLE.md #4): of two at once, one is done and the other
is told status_unchanged.

The release engine reads the status too: a suspended person is refused at nomination and denied at
the gate (``person_suspended``), and gets no offline gate pass; a reinstated one is let through again.
The holders of his live nominations get a screening alert webhook with the suspension
(identity.bans.alerts ``suspension_alerts``), so they can nominate someone else.
So both invalidate the gate's cached badge facts, which carry it (``_set_status``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from quaygate.invalidation import BADGES, touch
from quaygate.schema import persons, webauthn_credentials

from .. import audit
from ..bans.alerts import suspension_alerts
from ..grants import GrantStore
from ..memberships import close_webhooks_made_by
from ..registration.service import secrets_shown_to
from ..sessions import SessionStore
from . import enrolment
from .credentials import ACTIVE, PRIVILEGED_ROLE_GRANTED, SUSPENDED, suspend_unprivileged

log = logging.getLogger(__name__)

REASON_MAX = 500
HOOKS_SUSPENDED = "creator_suspended"  # why a webhook subscription he made was closed


@dataclass(frozen=True, slots=True)
class CutOff:
    sessions_ended: int
    grants_revoked: int
    enrolment_codes_ended: int = 0  # the person's own (a suspension's)
    issued_enrolment_codes_ended: int = 0  # those the person issued, as an officer (a suspension's)
    client_secrets_shown: tuple[str, ...] = ()  # clients whose current secret he was shown (a suspension's)
    webhook_subscriptions_closed: tuple[uuid.UUID, ...] = ()  # those he made, in any organisation (a suspension's)


@dataclass(frozen=True, slots=True)
class Promoted:
    """What a privileged role granted ended (module docstring)."""

    enrolment_codes_ended: int
    passkeys_suspended: int
    sessions_ended: int
    grants_revoked: int


@dataclass(frozen=True, slots=True)
class Reinstated:
    enrolment_codes_ended: int
    passkeys_active: int  # 0: the person needs a new enrolment code to log in
    passkeys_suspended: int  # after a counter regression: they stay suspended


class PersonStatusRefused(Exception):
    """``code``: reason_required, reason_too_long, not_found, status_unchanged."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _said(reason: str | None) -> str:
    """The reason, its whitespace folded; PersonStatusRefused when it is empty or too long."""
    said = " ".join((reason or "").split())
    if not said:
        raise PersonStatusRefused("reason_required", "Say why (the reason is kept on the audit trail).")
    if len(said) > REASON_MAX:
        raise PersonStatusRefused("reason_too_long", f"The reason is at most {REASON_MAX} characters.")
    return said


def _set_status(conn: sa.Connection, person_id: uuid.UUID, *, was: str, to: str, use: str) -> None:
    """One conditional UPDATE ``was`` -> ``to``; PersonStatusRefused not_found or status_unchanged.
    The gate's cached badge facts carry the holder's status (release_service/adapters/gate_facts.py): once
    committed, they are read again, and marked pending before the commit (quaygate/invalidation.py), so
    no gate decides on the old status after it; a refusal rolls back and invalidates nothing."""
    touch(conn, BADGES)
    done = conn.execute(
        persons.update().where(persons.c.id == person_id, persons.c.status == was)
        .values(status=to).returning(persons.c.id)
    ).first()
    if done is None:
        if conn.execute(sa.select(persons.c.id).where(persons.c.id == person_id)).first() is None:
            raise PersonStatusRefused("not_found", "No such person.")
        log.info("identity.person.%s.refused.unchanged", use)
        raise PersonStatusRefused("status_unchanged", f"The person is not {was}.")


def cut_off(conn: sa.Connection, *, sessions: SessionStore, grants: GrantStore, person_id: uuid.UUID,
            keep: str | None, reason: str, now: datetime) -> CutOff:
    """End the person's live login sessions but ``keep`` (a sid) and revoke every grant of the person
    (its refresh tokens and access tokens), in the caller's transaction. ``reason``: the grants'
    ``revoked_reason`` (at most 32 characters)."""
    ended = sessions.end_for_person(conn, person_id, now=now, keep=keep)
    revoked = grants.revoke_person(conn, person_id, reason=reason, now=now)
    return CutOff(ended, revoked)


def suspend_person(engine: sa.Engine, *, sessions: SessionStore, grants: GrantStore, person_id: uuid.UUID,
                   actor: str, reason: str | None, now: datetime,
                   guard: Callable[[sa.Connection], None] | None = None) -> CutOff:
    """Suspend an active person and cut them off, in one transaction: the status is set by one
    conditional UPDATE (STYLE.md #4), so of two suspensions at once one is done and the other is told
    status_unchanged. ``actor`` as badge histories store it (identity.audit.actor_fields). ``guard``:
    run in the transaction once the status is set, its exception refusing the whole suspension (the
    admin API's: port security keeps a standing officer, identity.memberships.keep_an_officer)."""
    said = _said(reason)
    with engine.begin() as conn:
        # The UPDATE locks the person's row (as enrolment.lock_person): a registration in flight ends
        # before it or waits for it (module docstring); so does a login (sessions.hold_person).
        _set_status(conn, person_id, was="active", to="suspended", use="suspend")
        if guard is not None:
            guard(conn)
        cut = cut_off(conn, sessions=sessions, grants=grants, person_id=person_id, keep=None,
                      reason="person_suspended", now=now)
        codes = enrolment.end_live_codes(conn, person_id, now=now)
        # In a statement after the UPDATE: an issue of his that held it up is seen (module docstring).
        issued = enrolment.end_issued_codes(conn, person_id, now=now)
        # Secrets do not follow him out: the clients whose current secret he saw are named, for port
        # security to rotate again (identity.registration ``secrets_shown_to``).
        shown = tuple(secrets_shown_to(conn, person_id))
        # Nor do the webhooks he made: closed, a server of his receives the companies' events no more.
        hooks = close_webhooks_made_by(conn, person_id, None, reason=HOOKS_SUSPENDED,
                                       actor=audit.actor_fields(actor), now=now)
        cut = CutOff(cut.sessions_ended, cut.grants_revoked, codes, issued, shown, hooks)
        # The holders of his live nominations learn it before he reaches the gate, as after a ban.
        alerted = suspension_alerts(conn, person_id, now)
        audit.record("identity.admin.person.suspended", at=now, actor=audit.actor_fields(actor),
                     subject=str(person_id), conn=conn,
                     data={"reason": said, "sessions_ended": cut.sessions_ended, "grants_revoked": cut.grants_revoked,
                           "enrolment_codes_ended": codes, "issued_enrolment_codes_ended": issued,
                           "nominations_alerted": [str(r) for r in alerted],
                           "client_secrets_shown": list(shown),
                           "webhook_subscriptions_closed": [str(h) for h in hooks]})
    log.info("identity.person.suspended")
    return cut


def privileged_role_granted(conn: sa.Connection, *, sessions: SessionStore, grants: GrantStore,
                            person_id: uuid.UUID, now: datetime) -> Promoted:
    """A privileged role is granted to the person, in the caller's transaction, which took the
    person's row lock first (enrolment.lock_person): end the live enrolment codes, suspend the passkeys
    that are not privileged enrolments and, if the person has any such passkey (in any status), end
    every login session and grant of the person (module docstring)."""
    codes = enrolment.end_live_codes(conn, person_id, now=now)
    suspended, unprivileged = suspend_unprivileged(conn, person_id)
    cut = CutOff(0, 0)
    if unprivileged:
        cut = cut_off(conn, sessions=sessions, grants=grants, person_id=person_id, keep=None,
                      reason=PRIVILEGED_ROLE_GRANTED, now=now)
    if suspended:
        log.warning("identity.passkey.suspended.privileged_role_granted")
    return Promoted(codes, suspended, cut.sessions_ended, cut.grants_revoked)


def reinstate_person(engine: sa.Engine, *, person_id: uuid.UUID, actor: str, reason: str | None,
                     now: datetime) -> Reinstated:
    """Lift a person's suspension, in one transaction: one conditional UPDATE suspended -> active (of
    two reinstatements at once one is done, the other is told status_unchanged), the codes issued
    before the suspension ended, audited. What it does not restore: the module docstring. ``actor``
    as badge histories store it (identity.audit.actor_fields)."""
    said = _said(reason)
    with engine.begin() as conn:
        _set_status(conn, person_id, was="suspended", to="active", use="reinstate")
        ended = enrolment.end_live_codes(conn, person_id, now=now)
        held = {status: count for status, count in conn.execute(
            sa.select(webauthn_credentials.c.status, sa.func.count())
            .where(webauthn_credentials.c.person_id == person_id,
                   webauthn_credentials.c.status.in_((ACTIVE, SUSPENDED)))
            .group_by(webauthn_credentials.c.status))}
        done = Reinstated(ended, int(held.get(ACTIVE, 0)), int(held.get(SUSPENDED, 0)))
        audit.record("identity.admin.person.reinstated", at=now, actor=audit.actor_fields(actor),
                     subject=str(person_id), conn=conn,
                     data={"reason": said, "enrolment_codes_ended": done.enrolment_codes_ended,
                           "passkeys_active": done.passkeys_active, "passkeys_suspended": done.passkeys_suspended})
    log.info("identity.person.reinstated")
    return done

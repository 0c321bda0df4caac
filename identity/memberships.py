"""Removing a person's role in an organisation (the admin API's ``DELETE /admin/v1/persons/{person_id}/
memberships/{organisation_id}/{role}``, identity.api.admin ``remove_membership``), one use case.

A role given must be taken away as easily (Keycloak removes a role mapping in one call): a badge officer
who changes job, a driver his haulier let go. Who may is the route's to check, as for a grant; here is
what the removal stops, and how:

- Tokens. The roles reach a token when it is issued: ``person_context`` (identity.oidc.issue) reads the
  memberships afresh at the code exchange and at every refresh (grants.HOLDER_COLUMNS), and the APIs
  read them from the token (release_service Actor.roles, identity.api.admin ``admin_caller``). So no
  token issued after the removal carries the role, and one issued before carries it until it expires.
  For a privileged role (claims.PRIVILEGED_ROLES: the console roles, a company's dispatcher and
  org_admin) that is too long: the grants whose tokens can carry it are revoked at once, with their
  refresh and access tokens (``revoke_carriers``). Narrower than identity.authn.cutoff's cut for a
  privileged role granted: his passkeys, codes and login sessions stay, for the tokens they give from
  now on are read without the role. The driver role opens nothing in a token (the
  driver app shows a person his own nominations whatever his roles; a company's console does not
  honour it, parties.READING_ROLES): it is gone from the person's tokens at their next refresh, and a
  company console that served him for that role alone refuses the refresh (``not_member``).
- Nominations. The driver membership may be what links him to the haulier (release_service
  ``Directory.drives_for``). Removed while that haulier holds live nominations of him, it is refused
  (``driver_has_live_nominations``, naming the rights) and nothing changes: the haulier nominates
  another driver first, so no right is left with a driver it no longer may name, and nothing is lost.
  The row is deleted first, the nominations read after: a nomination in flight share-locks the
  membership row it relied on, so the removal waits for it and then finds it.
- Enrolment codes. A role that lets him issue them (enrolment.ISSUING_ROLES: badge_office,
  port_security_admin) removed or expired ends the live codes he issued (``enrolment.end_issued_codes``;
  review 122, finding 3: an officer's code outlived him by up to 30 days). A dated one's codes were
  capped at its end when issued (enrolment.issue_code), so its expiry finds them expired already; a
  standing role given an end caps the codes he issued before at it (``codes_follow_end``).
- Webhooks. A subscription he made in the company's console (release_service.services.webhooks) is
  closed once no role of his there lets him act for it (dispatcher, org_admin), its queued deliveries
  cancelled, each on the trail (``release.webhook.subscription.closed``, reason ``creator_role_removed``
  or ``creator_role_expired``) and named in the removal's or the expiry's entry
  (``webhook_subscriptions_closed``; webhook review, finding 1: a dated dispatcher's subscription to a
  server of his went on carrying the company's events after his role ended). A machine client's stays.
- Caches. None holds memberships: the gate's facts carry badges, their holders' status and bans, not
  roles (release_service/adapters/gate_facts.py), and nomination reads the links from the database. So
  nothing is touched (quaygate/invalidation.py); a cache that came to hold them would have to be.

All under the person's row lock (enrolment.lock_person), as a grant, in one transaction, on the audit
trail (``identity.admin.membership.removed``: who, what, and how many grants it revoked).

Port security is never left without an officer. A *standing* officer holds ``port_security_admin``
without a ``valid_until``, as an active person, in an active port_authority organisation (the only
place the console honours it, ``honoured_officer_membership``). Removing that role, or giving it a
``valid_until``, is refused (``last_port_security_officer``) unless another standing officer remains
(``keep_an_officer``); a dated officer's expiry never takes a standing one away, so the expiry sweep
needs no such check. The check locks every standing officer's membership row (FOR UPDATE), never a
plain read: two removals of the last two at once would each read the other still there and commit none
left; locked, the second waits for the first and then reads it gone.

Expiry (migration 0019: ``valid_until``). A membership past its ``valid_until`` counts nowhere at once
(quaygate.schema.membership_in_force, in every read that grants something; no access token carries a
dated role beyond its end, identity.oidc.issue). ``expire_due``, a background loop (quaygate.workers),
then applies a removal's consequences and deletes the row, once, on the audit trail
(``identity.membership.expired``). An expiry cannot refuse as a removal does: a driver membership that
expires while the organisation holds live nominations of him is deleted all the same, his nominations
stay (the right's holder chose him; the gate checks his badge, status and bans, as for any driver)
and the holder is told on each (a ``release.nomination.screening_alert`` webhook, reason
``driver_membership_expired``) to nominate again; the audit entry names the rights.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from identity.bans.alerts import ALERT_EVENT
from quaygate import schema
from quaygate.schema import grants as grant_rows
from quaygate.schema import memberships, oauth_clients, organisations, persons
from release_service.adapters.outbox import SqlOutbox
from release_service.adapters.sqla.directory import SqlDirectory
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain.parties import OrgKind
from release_service.ports import PublishedEvent
from release_service.services import webhooks

from . import audit
from .authn import enrolment
from .domain import claims as c
from .domain.roles import ClientRole
from .grants import GrantStore

log = logging.getLogger(__name__)

DRIVER_ROLE = "driver"
PORT_SECURITY_ROLE = "port_security_admin"
PRIVILEGED_ROLE_REMOVED = "privileged_role_removed"  # the grants' revoked_reason
PRIVILEGED_ROLE_EXPIRED = "privileged_role_expired"
EXPIRY_ACTOR = {"client_id": "system:membership-expiry"}
EXPIRED_KIND = "identity.membership.expired"
EXPIRY_BATCH = 100
# Why a webhook subscription he made was closed (release_service.services.webhooks ``creator_left``).
HOOKS_ROLE_REMOVED = "creator_role_removed"
HOOKS_ROLE_EXPIRED = "creator_role_expired"


class MembershipRefused(Exception):
    """``code``: not_found (no such person), membership_not_found, driver_has_live_nominations (with
    ``release_ids``), last_port_security_officer."""

    def __init__(self, code: str, message: str, *, release_ids: tuple[uuid.UUID, ...] = ()) -> None:
        super().__init__(message)
        self.code, self.message, self.release_ids = code, message, release_ids


@dataclass(frozen=True, slots=True)
class Removed:
    """What a removal ended besides the membership."""

    grants_revoked: int
    enrolment_codes_ended: int = 0  # the live codes he issued, when the role let him issue them
    webhook_subscriptions_closed: tuple[uuid.UUID, ...] = ()  # he made them; no role of his there acts now


def remove_membership(engine: sa.Engine, *, grants: GrantStore, person_id: uuid.UUID, organisation_id: uuid.UUID,
                      role: str, actor: str, now: datetime) -> Removed:
    """Remove the person's ``role`` in ``organisation_id``, in one transaction (module docstring), or
    MembershipRefused with nothing changed. ``actor`` as badge histories store it
    (identity.audit.actor_fields)."""
    with engine.begin() as conn:
        # The person's row first, as a grant takes it: an enrolment code issued meanwhile reads the
        # roles before or after the removal, never half of it.
        if enrolment.lock_person(conn, person_id) is None:
            raise MembershipRefused("not_found", "No such person.")
        if role == PORT_SECURITY_ROLE:
            keep_an_officer(conn, person_id, organisation_id)
        key = (memberships.c.person_id == person_id, memberships.c.organisation_id == organisation_id,
               memberships.c.role == role)
        given = conn.execute(memberships.delete().where(*key).returning(memberships.c.created_at)).first()
        if given is None:
            log.info("identity.membership.remove.refused.not_found")
            raise MembershipRefused("membership_not_found", "The person has no such role in that organisation.")
        if role == DRIVER_ROLE:
            live = SqlDirectory(conn).live_nominations(person_id, organisation_id, now=now)
            if live:  # raising rolls the DELETE back
                log.info("identity.membership.remove.refused.live_nominations")
                raise MembershipRefused(
                    "driver_has_live_nominations",
                    "The organisation holds rights nominated to him: it nominates another driver first.",
                    release_ids=tuple(live))
        revoked = 0
        if role in c.PRIVILEGED_ROLES:
            revoked = revoke_carriers(conn, grants, person_id, organisation_id, now)
        codes = enrolment.end_issued_codes(conn, person_id, now=now) if role in enrolment.ISSUING_ROLES else 0
        hooks = close_webhooks_made_by(conn, person_id, organisation_id, reason=HOOKS_ROLE_REMOVED,
                                       actor=audit.actor_fields(actor), now=now)
        audit.record("identity.admin.membership.removed", at=now, actor=audit.actor_fields(actor),
                     subject=str(person_id), conn=conn,
                     data={"organisation_id": str(organisation_id), "role": role,
                           "given_at": given.created_at.isoformat(), "grants_revoked": revoked,
                           "enrolment_codes_ended": codes, "webhook_subscriptions_closed": [str(h) for h in hooks]})
    log.info("identity.membership.removed")
    return Removed(revoked, codes, hooks)


def close_webhooks_made_by(conn: sa.Connection, person_id: uuid.UUID, organisation_id: uuid.UUID | None, *,
                           reason: str, actor: dict[str, Any], now: datetime) -> tuple[uuid.UUID, ...]:
    """Close the webhook subscriptions the person made for ``organisation_id`` if no role of his still in
    force there lets him act for it (module docstring), or for every organisation (None: a suspension,
    identity.authn.cutoff), in the caller's transaction, after it took his row's lock: a subscription he
    was making meanwhile waited for it (release_service.services.webhooks ``create_subscription``)."""
    left: list[str] = []
    if organisation_id is not None:
        left = list(conn.execute(sa.select(memberships.c.role).where(
            memberships.c.person_id == person_id, memberships.c.organisation_id == organisation_id,
            schema.membership_in_force(now))).scalars())
    return webhooks.creator_left(SqlUnitOfWork.on(conn), person_id, organisation_id, roles_left=left,
                                 reason=reason, by=actor, now=now)


def codes_follow_end(conn: sa.Connection, person_id: uuid.UUID, role: str, until: datetime | None, *,
                     now: datetime) -> int:
    """A role given an end (``until``): if it lets him issue enrolment codes, his live codes end by then at
    the latest (identity.authn.enrolment, review 122 finding 3), as those he issues from now on do; how many
    were capped. The third of the rules by which codes follow their issuer's role (module docstring), with
    its removal and its expiry here."""
    if until is None or role not in enrolment.ISSUING_ROLES:
        return 0
    return enrolment.cap_issued_codes(conn, person_id, until=until, now=now)


def revoke_carriers(conn: sa.Connection, grants: GrantStore, person_id: uuid.UUID, organisation_id: uuid.UUID,
                     now: datetime, *, reason: str = PRIVILEGED_ROLE_REMOVED) -> int:
    """Revoke every live grant of the person whose tokens can carry a role in ``organisation_id``, in
    the caller's transaction; how many. ``person_context`` puts in a token the person's roles in the
    client's organisation, or in every organisation for a client bound to none, and never more than
    the driver role for the driver app: so the grants at the driver app and at other organisations'
    clients stay."""
    ids = conn.execute(
        sa.select(grant_rows.c.id)
        .select_from(grant_rows.join(oauth_clients, oauth_clients.c.client_id == grant_rows.c.client_id))
        .where(grant_rows.c.person_id == person_id, grant_rows.c.revoked_at.is_(None),
               oauth_clients.c.role != ClientRole.DRIVER_APP.value,
               sa.or_(oauth_clients.c.organisation_id.is_(None), oauth_clients.c.organisation_id == organisation_id))
        .order_by(grant_rows.c.id)).scalars().all()
    return sum(grants.revoke_grant(conn, gid, reason=reason, now=now) for gid in ids)


def keep_an_officer(conn: sa.Connection, person_id: uuid.UUID, organisation_id: uuid.UUID | None) -> None:
    """Refuse (``last_port_security_officer``) unless a standing officer other than this membership
    remains (module docstring), in the caller's transaction; ``organisation_id`` None: other than this
    person (a suspension takes every role of his away). Only the memberships the console honours count
    (``honoured_officer_membership``: in an active port_authority organisation), for those alone keep
    the console: an unending port_security_admin at a terminal, or at a deactivated port authority, is
    no other standing officer (review 163, finding 3: the port authority's last one was removed), and
    taking it away, or the role of someone who holds no honoured one, takes no officer away.

    Every standing officer's membership row is locked until the transaction ends (FOR UPDATE; SQLite's
    writers run one at a time), whatever the person's status: a concurrent removal, dating or suspension
    of another one waits for it. Then the officers' statuses are read in a statement of their own, so
    under READ COMMITTED a waiter sees a suspension that committed meanwhile (a status in the locking
    statement itself would be its snapshot's). The person rows are not locked: a removal holds its
    person's row (enrolment.lock_person), and two removals locking each other's would deadlock."""
    locked = conn.execute(
        sa.select(memberships.c.person_id, memberships.c.organisation_id)
        .where(honoured_officer_membership(), memberships.c.valid_until.is_(None))
        .order_by(memberships.c.person_id, memberships.c.organisation_id)
        .with_for_update(of=memberships)).all()

    def this(p: uuid.UUID, o: uuid.UUID) -> bool:
        return p == person_id if organisation_id is None else (p, o) == (person_id, organisation_id)

    if not any(this(p, o) for p, o in locked):
        return  # no standing officer the console honours is taken away
    others = [(p, o) for p, o in locked if not this(p, o)]
    active = set(conn.execute(sa.select(persons.c.id).where(
        persons.c.id.in_(sorted({p for p, _ in others})), persons.c.status == "active")).scalars()) if others else set()
    if not any(p in active for p, _ in others):
        log.info("identity.membership.refused.last_port_security_officer")
        raise MembershipRefused("last_port_security_officer",
                                "Port security keeps at least one officer whose role does not expire.")


def honoured_officer_membership() -> sa.ColumnElement[bool]:
    """The membership gives ``port_security_admin`` where the console honours it: in an active
    port_authority organisation. Held elsewhere (a terminal's security desk) it opens no console and
    bounds nothing (identity.api.admin ``admin_caller`` strips it, review 144 finding 1), so neither
    ``officer_ends`` nor ``keep_an_officer`` counts it (review 163, findings 2 and 3). Not whether it is
    still in force: ``membership_in_force``'s, where the reader needs it."""
    port_authorities = sa.select(organisations.c.id).where(organisations.c.active.is_(True),
                                                           organisations.c.kind == OrgKind.PORT_AUTHORITY.value)
    return sa.and_(memberships.c.role == PORT_SECURITY_ROLE, memberships.c.organisation_id.in_(port_authorities))


def officer_ends(conn: sa.Connection, person_id: uuid.UUID, now: datetime) -> datetime | None:
    """When ``person_id``'s port-security role ends: the latest ``valid_until`` of the memberships in
    force that give it to him where the console honours it (``honoured_officer_membership``: one without
    an end at a terminal made a dated officer standing, review 163 finding 2); None when one of them has
    none (a standing officer); ``now`` when none is in force (his role ended, or was taken away, while a
    token still says he holds it: its lifetime is capped at the end, but verified with a leeway, and a
    shortened end revokes nothing). What an officer gives or makes stays within it (reviews 105, 107): a
    dated officer gives privileged roles until his own end at most, and registers no client
    (``admin.add_membership``, ``admin.register_client``); else his end would bound nothing, for he would
    make a stand-in. Asked only of a person his token calls an officer."""
    ends = list(conn.execute(sa.select(memberships.c.valid_until).where(
        memberships.c.person_id == person_id, honoured_officer_membership(),
        schema.membership_in_force(now))).scalars())
    if not ends:
        return now
    if any(end is None for end in ends):
        return None
    return max(ends)


def expire_due(engine: sa.Engine, *, grants: GrantStore, now: datetime, limit: int = EXPIRY_BATCH) -> int:
    """Expire up to ``limit`` memberships whose ``valid_until`` has passed, each in a transaction of its
    own (module docstring); how many. Safe in every replica at once: each row is deleted under its
    person's lock only while it is still due, and only the one that deletes it acts on it."""
    with engine.connect() as conn:
        due = conn.execute(
            sa.select(memberships.c.person_id, memberships.c.organisation_id, memberships.c.role)
            .where(memberships.c.valid_until <= now)
            .order_by(memberships.c.valid_until).limit(limit)).all()
    return sum(_expire(engine, grants, p, o, r, now) for p, o, r in due)


def _expire(engine: sa.Engine, grants: GrantStore, person_id: uuid.UUID, organisation_id: uuid.UUID, role: str,
            now: datetime) -> bool:
    with engine.begin() as conn:
        enrolment.lock_person(conn, person_id)  # as a grant or a removal: one after the other
        gone = conn.execute(memberships.delete().where(
            memberships.c.person_id == person_id, memberships.c.organisation_id == organisation_id,
            memberships.c.role == role, memberships.c.valid_until <= now,  # not extended meanwhile
        ).returning(memberships.c.created_at, memberships.c.valid_until)).first()
        if gone is None:
            return False  # another replica expired it, or it was given again meanwhile
        revoked = revoke_carriers(conn, grants, person_id, organisation_id, now,
                                   reason=PRIVILEGED_ROLE_EXPIRED) if role in c.PRIVILEGED_ROLES else 0
        codes = enrolment.end_issued_codes(conn, person_id, now=now) if role in enrolment.ISSUING_ROLES else 0
        live = SqlDirectory(conn).live_nominations(person_id, organisation_id, now=now) if role == DRIVER_ROLE else []
        hooks = close_webhooks_made_by(conn, person_id, organisation_id, reason=HOOKS_ROLE_EXPIRED,
                                       actor=EXPIRY_ACTOR, now=now)
        SqlOutbox(conn).publish([PublishedEvent(
            id=uuid.uuid4(), type=ALERT_EVENT, release_id=rid, at=now, audience=frozenset({organisation_id}),
            payload={"driver_person_id": str(person_id), "screening": "membership_expired",
                     "reason": "driver_membership_expired"}) for rid in live])
        audit.record(EXPIRED_KIND, at=now, actor=EXPIRY_ACTOR, subject=str(person_id), conn=conn,
                     data={"organisation_id": str(organisation_id), "role": role,
                           "given_at": gone.created_at.isoformat(), "valid_until": gone.valid_until.isoformat(),
                           "grants_revoked": revoked, "enrolment_codes_ended": codes,
                           "live_nominations": [str(r) for r in live],
                           "webhook_subscriptions_closed": [str(h) for h in hooks]})
    log.info("identity.membership.expired")
    if live:
        log.warning("identity.membership.expired.live_nominations")
    return True

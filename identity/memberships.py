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
  refresh and access tokens (``_revoke_carriers``). Narrower than identity.authn.cutoff's cut for a
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
- Caches. None holds memberships: the gate's facts carry badges, their holders' status and bans, not
  roles (release_service/adapters/gate_facts.py), and nomination reads the links from the database. So
  nothing is touched (quaygate/invalidation.py); a cache that came to hold them would have to be.

All under the person's row lock (enrolment.lock_person), as a grant, in one transaction, on the audit
trail (``identity.admin.membership.removed``: who, what, and how many grants it revoked).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from quaygate.schema import grants as grant_rows
from quaygate.schema import memberships, oauth_clients
from release_service.adapters.sqla.directory import SqlDirectory

from . import audit
from .authn import enrolment
from .domain import claims as c
from .domain.roles import ClientRole
from .grants import GrantStore

log = logging.getLogger(__name__)

DRIVER_ROLE = "driver"
PRIVILEGED_ROLE_REMOVED = "privileged_role_removed"  # the grants' revoked_reason


class MembershipRefused(Exception):
    """``code``: not_found (no such person), membership_not_found, driver_has_live_nominations (with
    ``release_ids``)."""

    def __init__(self, code: str, message: str, *, release_ids: tuple[uuid.UUID, ...] = ()) -> None:
        super().__init__(message)
        self.code, self.message, self.release_ids = code, message, release_ids


@dataclass(frozen=True, slots=True)
class Removed:
    """What a removal ended besides the membership."""

    grants_revoked: int


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
            revoked = _revoke_carriers(conn, grants, person_id, organisation_id, now)
        audit.record("identity.admin.membership.removed", at=now, actor=audit.actor_fields(actor),
                     subject=str(person_id), conn=conn,
                     data={"organisation_id": str(organisation_id), "role": role,
                           "given_at": given.created_at.isoformat(), "grants_revoked": revoked})
    log.info("identity.membership.removed")
    return Removed(revoked)


def _revoke_carriers(conn: sa.Connection, grants: GrantStore, person_id: uuid.UUID, organisation_id: uuid.UUID,
                     now: datetime) -> int:
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
    return sum(grants.revoke_grant(conn, gid, reason=PRIVILEGED_ROLE_REMOVED, now=now) for gid in ids)

"""Deactivating and reactivating an organisation (issue 4 "manage organisations"), one use case each.

A deactivated organisation (a company struck off, a contract ended, a suspected fraud) keeps its rows
and its history, but:

- its clients get no new tokens: ``ClientRegistry`` reads a client of an inactive organisation as
  inactive, the same refusal as a deactivated client (``invalid_client`` at the token endpoint);
- the tokens they already hold stop working at once, as when a client is deactivated: their grants
  (refresh tokens) are revoked, and every access token issued to them up to now is refused
  (``RevocationList.revoke_client``);
- it receives no new release rights, transfers or nominations (``organisation_inactive``, checked by
  the release engine: release_service.services.common.receiving_organisation);
- the enrolment codes issued by its members who hold a role there that issues them (a terminal's
  security desk) end (identity.authn.enrolment ``end_codes_issued_in``; review 124, finding 5: those
  roles counted nowhere, but their codes lived on, up to 30 days). An issue in flight share-locks the
  organisation's row, so the deactivation's UPDATE waits for it and then ends its code.

Reactivation lifts the first and the last; revoked tokens stay revoked (the clients ask for new ones),
and ended enrolment codes stay ended (the officers issue new ones).
Both are one conditional UPDATE (``WHERE active = <the other state>``): two officers at once give one
change and one ``status_unchanged``. Each says who, when and why: on the row (the last change) and on
the audit trail (every change: ``identity.admin.organisation.deactivated`` / ``.reactivated``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from quaygate.schema import grants as grants_table
from quaygate.schema import memberships, oauth_clients, organisations

from . import audit
from .authn import enrolment
from .domain import claims
from .grants import GrantStore
from .memberships import revoke_carriers

log = logging.getLogger(__name__)

REASON_MAX = 500


class OrganisationRefused(Exception):
    """``code``: not_found, status_unchanged, reason_required."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True, slots=True)
class StatusChanged:
    organisation_id: uuid.UUID
    active: bool
    clients: tuple[str, ...]  # the organisation's clients (their tokens were revoked on deactivation)
    grants_revoked: int
    enrolment_codes_ended: int = 0  # issued by its officers (on deactivation)


def set_active(engine: sa.Engine, grants: GrantStore, organisation_id: uuid.UUID, *, active: bool,
               actor: str, reason: str, now: datetime, access_token_ttl: int,
               on_change: Callable[[], None] | None = None) -> StatusChanged:
    """Deactivate (``active=False``) or reactivate an organisation, in one transaction; ``actor`` as
    badge histories store it (identity.audit.actor_fields). ``on_change`` runs after the commit: the
    client registry forgets what it remembered (its clients' ``active`` just changed)."""
    reason = " ".join((reason or "").split())
    if not reason:
        raise OrganisationRefused("reason_required", "Say why (the reason is kept on the audit trail).")
    if len(reason) > REASON_MAX:
        raise OrganisationRefused("reason_too_long", f"The reason is at most {REASON_MAX} characters.")
    revoked = codes = 0
    with engine.begin() as conn:
        done = conn.execute(
            organisations.update()
            .where(organisations.c.id == organisation_id, organisations.c.active.is_(not active))
            .values(active=active, status_changed_at=now, status_changed_by=actor, status_reason=reason)
            .returning(organisations.c.id)
        ).first()
        if done is None:
            exists = conn.execute(sa.select(organisations.c.active)
                                  .where(organisations.c.id == organisation_id)).first()
            if exists is None:
                raise OrganisationRefused("not_found", "No such organisation.")
            log.info("identity.organisation.refused.unchanged")
            raise OrganisationRefused("status_unchanged", "The organisation is already "
                                      + ("active." if active else "inactive."))
        clients = tuple(conn.execute(sa.select(oauth_clients.c.client_id)
                                     .where(oauth_clients.c.organisation_id == organisation_id)
                                     .order_by(oauth_clients.c.client_id)).scalars())
        if not active:
            for client_id in clients:
                revoked += _revoke_tokens(conn, grants, client_id, now=now, access_token_ttl=access_token_ttl)
            # Its members' privileged roles (a console role at a terminal's security desk) count nowhere
            # now (grants.HOLDER_MEMBERSHIPS): the grants whose tokens carry them go at once, as on a
            # removal, at clients bound to no organisation too (review 108).
            for person_id in conn.execute(sa.select(memberships.c.person_id).distinct().where(
                    memberships.c.organisation_id == organisation_id,
                    memberships.c.role.in_(sorted(claims.PRIVILEGED_ROLES))).order_by(memberships.c.person_id)
                    ).scalars():
                revoked += revoke_carriers(conn, grants, person_id, organisation_id, now,
                                           reason="organisation_deactivated")
            # After the UPDATE, in a statement of its own: an issue that held it up is seen (module docstring).
            codes = enrolment.end_codes_issued_in(conn, organisation_id, now=now)
        kind = "identity.admin.organisation." + ("reactivated" if active else "deactivated")
        data: dict[str, Any] = {"reason": reason, "clients": list(clients), "grants_revoked": revoked}
        if not active:
            data["enrolment_codes_ended"] = codes
        audit.record(kind, at=now, actor=audit.actor_fields(actor), subject=str(organisation_id), conn=conn,
                     data=data)
    if on_change is not None:
        on_change()
    log.info("identity.organisation.%s", "reactivated" if active else "deactivated")
    return StatusChanged(organisation_id, active, clients, revoked, codes)


def _revoke_tokens(conn: sa.Connection, grants: GrantStore, client_id: str, *, now: datetime,
                   access_token_ttl: int) -> int:
    """As ClientManagement.deactivate does for one client, without deactivating the client itself
    (reactivating the organisation brings its clients back as they were)."""
    ids = conn.execute(sa.select(grants_table.c.id).where(grants_table.c.client_id == client_id,
                                                          grants_table.c.revoked_at.is_(None))).scalars().all()
    for gid in ids:
        grants.revoke_grant(conn, gid, reason="organisation_deactivated", now=now)
    grants.revocations.revoke_client(conn, client_id, now=now, token_ttl=access_token_ttl)
    return len(ids)


def status_fields(row: Any) -> dict[str, Any]:
    """The organisation's status as the admin API shows it."""
    return {"active": bool(row.active), "status_reason": row.status_reason,
            "status_changed_at": row.status_changed_at.isoformat() if row.status_changed_at else None,
            "status_changed_by": audit.actor_fields(row.status_changed_by) if row.status_changed_by else None}

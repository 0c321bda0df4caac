"""Deactivating and reactivating an organisation (issue 4 "manage organisations"), one use case each.

A deactivated organisation (a company struck off, a contract ended, a suspected fraud) keeps its rows
and its history, but:

- its clients get no new tokens: ``ClientRegistry`` reads a client of an inactive organisation as
  inactive, the same refusal as a deactivated client (``invalid_client`` at the token endpoint);
- the tokens they already hold stop working at once, as when a client is deactivated: their grants
  (refresh tokens) are revoked, and every access token issued to them up to now is refused
  (``RevocationList.revoke_client``);
- it receives no new release rights, transfers or nominations (``organisation_inactive``, checked by
  the release engine: release_service.services.common.organisation_kind), and a transfer it sent is not
  accepted (``organisation_inactive``);
- what it set in motion stops (review 130, finding 1; release_service.services.holders, run here on this
  transaction's connection): each transfer it sent or was sent that is still pending is cancelled
  (``release.transfer.cancelled``, reason ``organisation_deactivated``), and the line of each live right
  it holds hears (``release.holder_deactivated``) so that it may revoke or re-issue it; the gate refuses
  those rights (``holder_inactive``, not overridable; every cached copy of the gate's rights facts is
  invalidated: ``quaygate.invalidation.HOLDERS``), and no offline gate pass is issued for them; a
  customs organisation's holds (red or scan) on live rights are any customs' to lift now, with a reason,
  and the audit entry lists them (``customs_holds``; review 141);
- the enrolment codes issued by its members who hold a role there that issues them (a terminal's
  security desk) end (identity.authn.enrolment ``end_codes_issued_in``; review 124, finding 5: those
  roles counted nowhere, but their codes lived on, up to 30 days). An issue in flight share-locks the
  organisation's row, so the deactivation's UPDATE waits for it and then ends its code. So do the codes
  its clients issued themselves, an admin client's (``end_codes_created_by``; review 146, finding 1).
- the initial access tokens its clients minted, an admin client's, and those tied to it, end
  (identity.registration.service ``end_iats_created_by``, ``end_iats_for``; review 163, finding 1: they
  registered clients, a terminal's gate, up to 30 days after); a token tied to it registers nothing while
  it is inactive. A mint or a registration in flight share-locks the organisation's row, so the
  deactivation waits for it, then ends its token or counts its client among the organisation's.

Reactivation lifts the first, the gate's refusal (the facts invalidated again; the lines hear:
``release.holder_reactivated``) and the rest; revoked tokens stay revoked (the clients ask for new ones),
ended enrolment codes stay ended (the officers issue new ones), ended initial access tokens stay ended (an
administrator mints new ones), and cancelled transfers stay cancelled (the sender sends again).
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

from quaygate.invalidation import HOLDERS, touch
from quaygate.schema import memberships, oauth_clients, organisations
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.services import holders

from . import audit
from .authn import enrolment
from .domain import claims
from .grants import GrantStore
from .memberships import revoke_carriers
from .registration.service import end_iats_created_by, end_iats_for

log = logging.getLogger(__name__)

REASON_MAX = 500
PORT_SECURITY = "port_security"  # the ``kind`` of who acted, on the release rights' events


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
    enrolment_codes_ended: int = 0  # issued by its officers or its clients (on deactivation)
    rights: tuple[uuid.UUID, ...] = ()  # the release rights it held or was sent whose lines were told
    transfers_cancelled: int = 0  # pending transfers it sent or was sent (on deactivation)
    initial_access_tokens_ended: int = 0  # minted by its clients or tied to it (on deactivation)


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
    revoked = codes = iats = 0
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
                revoked += grants.revoke_client_tokens(conn, client_id, reason="organisation_deactivated", now=now,
                                                       access_token_ttl=access_token_ttl)
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
            # And the codes its clients issued themselves, an admin client's (review 146, finding 1).
            codes += sum(enrolment.end_codes_created_by(conn, client_id, now=now) for client_id in clients)
            # The initial access tokens they minted, and those tied to it (review 163, finding 1).
            iats = end_iats_for(conn, organisation_id, now=now)
            iats += sum(end_iats_created_by(conn, client_id, now=now) for client_id in clients)
        # The rights it set in motion, after the UPDATE (a transfer accepted meanwhile is waited for on the
        # right's lock, then seen as it ended), and every cached copy of the gate's rights facts, which carry
        # their holder's status (release_service.adapters.gate_facts): pending before the commit, replaced after.
        moved = holders.status_changed(SqlUnitOfWork.on(conn), organisation_id, active=active,
                                       by=_release_actor(actor), now=now)
        touch(conn, HOLDERS)
        kind = "identity.admin.organisation." + ("reactivated" if active else "deactivated")
        data: dict[str, Any] = {"reason": reason, "clients": list(clients), "grants_revoked": revoked,
                                "rights": [str(r) for r in moved.rights]}
        if not active:
            data["enrolment_codes_ended"] = codes
            data["initial_access_tokens_ended"] = iats
            data["transfers_cancelled"] = moved.transfers_cancelled
            # A customs office's holds: any customs lifts them now, with a reason (review 141).
            data["customs_holds"] = [{"release_id": str(h.release_id), "container_number": h.container,
                                      "status": h.status} for h in moved.customs_holds]
        audit.record(kind, at=now, actor=audit.actor_fields(actor), subject=str(organisation_id), conn=conn,
                     data=data)
    if on_change is not None:
        on_change()
    log.info("identity.organisation.%s", "reactivated" if active else "deactivated")
    return StatusChanged(organisation_id, active, clients, revoked, codes, moved.rights, moved.transfers_cancelled,
                         initial_access_tokens_ended=iats)


def _release_actor(actor: str) -> dict[str, str | None]:
    """Port security, as the release rights' events name who acted (release_service.domain.parties
    ``Actor.as_dict``): no organisation, a person only when one acted in a console."""
    fields = audit.actor_fields(actor)
    return {"client_id": fields["client_id"], "organisation_id": None, "kind": PORT_SECURITY,
            "person_id": fields.get("person_id")}


def status_fields(row: Any) -> dict[str, Any]:
    """The organisation's status as the admin API shows it."""
    return {"active": bool(row.active), "status_reason": row.status_reason,
            "status_changed_at": row.status_changed_at.isoformat() if row.status_changed_at else None,
            "status_changed_by": audit.actor_fields(row.status_changed_by) if row.status_changed_by else None}

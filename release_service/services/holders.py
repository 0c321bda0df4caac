"""When port security deactivates or reactivates an organisation, what follows for the release rights it
set in motion (review 130, finding 1), in port security's own transaction (identity.organisations
``set_active`` runs this on its connection, after its UPDATE of the organisation).

Deactivated, a company sets nothing more in motion:

- each transfer it sent or was sent that is still pending is cancelled, as a withdrawal or a decline
  would end it: the transfer closed, a ``release.transfer.cancelled`` event (reason
  ``organisation_deactivated``) on the right's history, the audit trail and the webhooks of the other end;
- the line that issued each live right it holds hears (``release.holder_deactivated``), so that it may
  revoke the right or issue it anew; the gate refuses the right meanwhile (gate reason ``holder_inactive``,
  read with the right, not from this event).

Deactivated, the customs holds (red or scan) it set on live rights are listed (``Changed.customs_holds``,
on port security's audit entry): any customs may lift them now, saying why (review 141;
domain/release.py ``_require_customs_hold_lifter``).

Reactivated, the line of each live right it holds hears again (``release.holder_reactivated``) and the
gate lets the right through again; a cancelled transfer stays cancelled (the sender sends again).

Each right touched is locked (``get(for_update=True)``), in id order, and saved at its next version: a gate
commit that read it before writes nothing and reads again (adapters/sqla/gate_move.py), and so sees the
holder as it now is. A right the company came to hold in a race with its deactivation (an accept committed
after ``rights_in_motion`` was read) is not told of here; its nomination was cleared by that accept, and
the company can nominate no more, so no truck reaches the gate on it; the gate reads the holder's status
anyway. The gate's cached facts are invalidated by the caller (``quaygate.invalidation.HOLDERS``).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from release_service.ports import CustomsHold, UnitOfWork

from .common import persist

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Changed:
    """What a status change did to the rights: their ids, how many transfers it cancelled, and (on a
    deactivation) the customs holds the organisation had set on live rights."""

    rights: tuple[uuid.UUID, ...]
    transfers_cancelled: int
    customs_holds: tuple[CustomsHold, ...] = ()


def status_changed(uow: UnitOfWork, organisation_id: uuid.UUID, *, active: bool, by: dict[str, str | None],
                   now: datetime) -> Changed:
    """The consequences of ``organisation_id`` turned ``active`` (or not) for its rights (module
    docstring); ``by``: port security, as the rights' events name it. Writes in ``uow``'s transaction,
    never commits."""
    changed: list[uuid.UUID] = []
    cancelled = 0
    for release_id in uow.directory.rights_in_motion(organisation_id):
        right = uow.releases.get(release_id, for_update=True)
        if right is None:
            continue
        if active:
            done = right.organisation_reactivated(organisation_id=organisation_id, by=by, now=now)
        else:
            done = right.organisation_deactivated(organisation_id=organisation_id, by=by, now=now)
        if done:
            cancelled += sum(e.type == "release.transfer.cancelled" for e in right.pending_events)
            persist(uow, right)
            changed.append(right.id)
    holds = () if active else tuple(uow.releases.customs_holds_by(organisation_id))
    log.info("release.holder.%s", "reactivated" if active else "deactivated",
             extra={"fields": {"rights": len(changed), "transfers_cancelled": cancelled,
                               "customs_holds": len(holds)}})
    return Changed(tuple(changed), cancelled, holds)

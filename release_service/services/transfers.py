"""Transfer a right onward; the recipient accepts or declines; the sender may withdraw until then."""

from __future__ import annotations

import uuid
from datetime import datetime

from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import Actor
from release_service.domain.release import ReleaseRight, Transfer
from release_service.ports import UnitOfWork

from .common import (
    IfMatch,
    Receipt,
    acting_organisation_active,
    can_see,
    load,
    organisation_kind,
    persist,
    require_current,
)


def transfer(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, to_organisation_id: uuid.UUID,
             now: datetime, *, if_match: IfMatch | None = None) -> tuple[Transfer, Receipt]:
    right = load(uow, release_id, actor, if_match)
    acting_organisation_active(uow, actor)
    # Only the holder may send, and only then is the recipient looked up: a viewer of the right (customs, a
    # terminal, a past holder) learns nothing of whether an organisation exists or is active (review 130).
    right.require_sender(actor, now)
    to_kind = organisation_kind(uow, to_organisation_id)
    t = right.start_transfer(transfer_id=uuid.uuid4(), by=actor, to_organisation_id=to_organisation_id,
                             to_kind=to_kind, now=now)
    return t, persist(uow, right)


def _load_by_transfer(uow: UnitOfWork, transfer_id: uuid.UUID, actor: Actor,
                      if_match: IfMatch | None) -> ReleaseRight:
    """The right of the transfer, locked, for a viewer of the right; with ``if_match``, only at one of those
    versions of the right (the transfer's entity tag is its right's). A former recipient hears only that its
    transfer is no longer pending; anyone else who cannot see the right, that there is no such transfer."""
    right = uow.releases.get_by_transfer(transfer_id, for_update=True)
    if right is None:
        raise DomainError(ErrorCode.NOT_FOUND, "No such transfer.")
    involved = actor.organisation_id is not None and any(
        t.id == transfer_id and actor.organisation_id in (t.from_organisation_id, t.to_organisation_id)
        for t in uow.releases.transfers(right.id)
    )
    if not can_see(uow, right, actor):
        if not involved:
            raise DomainError(ErrorCode.NOT_FOUND, "No such transfer.")
        # An end of the transfer that cannot see the right is a recipient whose offer ended (declined,
        # withdrawn, cancelled): a pending recipient and every sender see it. Its answer is the same at any
        # If-Match, or it could learn the version of a right it no longer sees (review 143); so it hears
        # ``transfer_not_pending`` before ``require_current``, which is only for those who see the right.
        # A company port security deactivated hears that first, as at every other action of its (its own
        # standing: nothing of the right's).
        acting_organisation_active(uow, actor)
        raise DomainError(ErrorCode.TRANSFER_NOT_PENDING, "That transfer is no longer pending.")
    require_current(right, if_match)
    return right


def accept(uow: UnitOfWork, actor: Actor, transfer_id: uuid.UUID, now: datetime, *,
           if_match: IfMatch | None = None) -> tuple[Transfer, Receipt]:
    right = _load_by_transfer(uow, transfer_id, actor, if_match)
    acting_organisation_active(uow, actor)
    t = right.accept_transfer(transfer_id=transfer_id, by=actor, now=now,
                              sender_active=_sender_active(uow, right, transfer_id))
    return t, persist(uow, right)


def _sender_active(uow: UnitOfWork, right: ReleaseRight, transfer_id: uuid.UUID) -> bool:
    """Whether the sender of the pending transfer ``transfer_id`` is active (review 130: a company port
    security deactivated sets nothing more in motion). Read in this transaction, after the right's lock:
    a deactivation committed before is seen, and one after it waits for this accept (its cancellation of
    the company's pending transfers locks the right) and then finds the right held by the recipient."""
    pending = right.pending_transfer
    if pending is None or pending.id != transfer_id:
        return True  # not pending: the domain refuses it as such
    org = uow.directory.organisation(pending.from_organisation_id)
    return org is not None and org.active


def decline(uow: UnitOfWork, actor: Actor, transfer_id: uuid.UUID, reason: str | None,
            now: datetime, *, if_match: IfMatch | None = None) -> tuple[Transfer, Receipt]:
    right = _load_by_transfer(uow, transfer_id, actor, if_match)
    acting_organisation_active(uow, actor)
    t = right.decline_transfer(transfer_id=transfer_id, by=actor, now=now, reason=reason)
    return t, persist(uow, right)


def withdraw(uow: UnitOfWork, actor: Actor, transfer_id: uuid.UUID, now: datetime, *,
             if_match: IfMatch | None = None) -> tuple[Transfer, Receipt]:
    right = _load_by_transfer(uow, transfer_id, actor, if_match)
    acting_organisation_active(uow, actor)
    t = right.withdraw_transfer(transfer_id=transfer_id, by=actor, now=now)
    return t, persist(uow, right)

"""Transfer a right onward; the recipient accepts or declines; the sender may withdraw until then."""

from __future__ import annotations

import uuid
from datetime import datetime

from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import Actor
from release_service.domain.release import ReleaseRight, Transfer
from release_service.ports import UnitOfWork

from .common import Receipt, acting_organisation_active, can_see, load, organisation_kind, persist


def transfer(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, to_organisation_id: uuid.UUID,
             now: datetime) -> tuple[Transfer, Receipt]:
    right = load(uow, release_id, actor)
    acting_organisation_active(uow, actor)
    to_kind = organisation_kind(uow, to_organisation_id)
    t = right.start_transfer(transfer_id=uuid.uuid4(), by=actor, to_organisation_id=to_organisation_id,
                             to_kind=to_kind, now=now)
    return t, persist(uow, right)


def _load_by_transfer(uow: UnitOfWork, transfer_id: uuid.UUID, actor: Actor) -> ReleaseRight:
    right = uow.releases.get_by_transfer(transfer_id, for_update=True)
    if right is None:
        raise DomainError(ErrorCode.NOT_FOUND, "No such transfer.")
    involved = actor.organisation_id is not None and any(
        t.id == transfer_id and actor.organisation_id in (t.from_organisation_id, t.to_organisation_id)
        for t in uow.releases.transfers(right.id)
    )
    if not involved and not can_see(uow, right, actor):
        raise DomainError(ErrorCode.NOT_FOUND, "No such transfer.")
    return right


def accept(uow: UnitOfWork, actor: Actor, transfer_id: uuid.UUID, now: datetime) -> tuple[Transfer, Receipt]:
    right = _load_by_transfer(uow, transfer_id, actor)
    acting_organisation_active(uow, actor)
    t = right.accept_transfer(transfer_id=transfer_id, by=actor, now=now)
    return t, persist(uow, right)


def decline(uow: UnitOfWork, actor: Actor, transfer_id: uuid.UUID, reason: str | None,
            now: datetime) -> tuple[Transfer, Receipt]:
    right = _load_by_transfer(uow, transfer_id, actor)
    acting_organisation_active(uow, actor)
    t = right.decline_transfer(transfer_id=transfer_id, by=actor, now=now, reason=reason)
    return t, persist(uow, right)


def withdraw(uow: UnitOfWork, actor: Actor, transfer_id: uuid.UUID, now: datetime) -> tuple[Transfer, Receipt]:
    right = _load_by_transfer(uow, transfer_id, actor)
    acting_organisation_active(uow, actor)
    t = right.withdraw_transfer(transfer_id=transfer_id, by=actor, now=now)
    return t, persist(uow, right)

"""Reads: one right, a filtered page of rights, a right's history."""

from __future__ import annotations

import uuid

from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import Actor
from release_service.domain.release import ReleaseRight, Transfer
from release_service.ports import ReleaseFilter, StoredEvent, UnitOfWork

from .common import can_see


def get(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID) -> tuple[ReleaseRight, list[uuid.UUID]]:
    right = uow.releases.get(release_id)
    if right is None or not can_see(uow, right, actor):
        raise DomainError(ErrorCode.NOT_FOUND, "No such release right.")
    return right, uow.releases.holders_chain(release_id)


def events(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID) -> list[StoredEvent]:
    get(uow, actor, release_id)
    return uow.releases.events(release_id)


def transfers(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID) -> list[Transfer]:
    get(uow, actor, release_id)
    return uow.releases.transfers(release_id)


def search(uow: UnitOfWork, actor: Actor, flt: ReleaseFilter) -> list[ReleaseRight]:
    return uow.releases.list_visible(actor, flt)

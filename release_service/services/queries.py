"""Reads: one right, a filtered page of rights, a right's history; each as the caller may see it
(``domain.disclosure``: a party sees its own leg of the chain, a driver his own nomination)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime

from release_service.domain import disclosure
from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.iso6346 import ContainerNumber
from release_service.domain.parties import Actor
from release_service.domain.release import ReleaseRight, Transfer, TransferState, terminal_code, vessel_call_key
from release_service.ports import ReleaseFilter, StoredEvent, UnitOfWork

from .common import can_see


def _visible(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID) -> ReleaseRight:
    right = uow.releases.get(release_id)
    if right is None or not can_see(uow, right, actor):
        raise DomainError(ErrorCode.NOT_FOUND, "No such release right.")
    return right


def get(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID) -> tuple[ReleaseRight, list[uuid.UUID] | None]:
    right = _visible(uow, actor, release_id)
    return disclosure.minimise_right(right, actor, uow.releases.holders_chain(release_id))


def events(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID) -> list[StoredEvent]:
    right = _visible(uow, actor, release_id)
    stored = uow.releases.events(release_id)
    shown = disclosure.minimise_events(right, actor, stored)
    return [replace(e, actor=s.actor, data=s.data) for e, s in zip(stored, shown, strict=True)]


def transfers(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID) -> list[Transfer]:
    """The right's transfers as the caller may see them: a company of the chain those it was party to
    and the accepted ones of the chain it is shown (``disclosure.visible_chain``, and the holder). No
    route reads this yet; it answers as ``events`` does, so that one that does cannot tell more."""
    right = _visible(uow, actor, release_id)
    found = uow.releases.transfers(release_id)
    if disclosure.sight(right, actor) is not disclosure.Sight.CHAIN:
        return found
    me = actor.organisation_id
    chain = {*disclosure.visible_chain(uow.releases.holders_chain(release_id), me), right.holder_organisation_id}
    return [t for t in found if me in (t.from_organisation_id, t.to_organisation_id)
            or (t.state is TransferState.ACCEPTED and {t.from_organisation_id, t.to_organisation_id} <= chain)]


def search(uow: UnitOfWork, actor: Actor, flt: ReleaseFilter, now: datetime) -> list[ReleaseRight]:
    found = uow.releases.list_visible(actor, as_compared(flt), now)
    return [disclosure.minimise_right(r, actor)[0] for r in found]


def as_compared(flt: ReleaseFilter) -> ReleaseFilter:
    """The filter's values as rights hold or compare them (review 159, finding 3): a container number in its
    ISO 6346 form (one no right can have is refused, as at issue: ``container_number_malformed`` or
    ``container_check_digit``), a terminal's code, a vessel call's key (``vessel_call_key``: the call the
    one-live-right rule takes it for). An empty value filters on nothing, as before."""
    return replace(
        flt,
        container_number=ContainerNumber.parse(flt.container_number).value if flt.container_number else None,
        terminal=terminal_code(flt.terminal) if flt.terminal else None,
        vessel_call=vessel_call_key(flt.vessel_call) if flt.vessel_call else None,
    )

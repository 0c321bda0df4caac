"""The line's own actions on a right: update, block, unblock, revoke, delete; and the lights.

Each one is an organisation acting (the line; customs or the terminal for their light), so each refuses a
deactivated one (``acting_organisation_active``, review 77) after the right is loaded (a stranger still
hears ``not_found``) and before anything changes."""

from __future__ import annotations

import uuid
from datetime import datetime

from release_service.domain import storable
from release_service.domain.parties import Actor, OrgKind
from release_service.domain.release import Light, LightKind, LightStatus, ReleaseRight, State
from release_service.ports import UnitOfWork

from .common import IfMatch, Receipt, acting_organisation_active, load, persist, require_current


def update(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, now: datetime, *,
           valid_from: datetime | None, valid_until: datetime | None,
           bill_of_lading: str | None, if_match: IfMatch | None = None) -> tuple[ReleaseRight, Receipt]:
    right = load(uow, release_id, actor, if_match)
    acting_organisation_active(uow, actor)
    right.update(by=actor, now=now, valid_from=valid_from, valid_until=valid_until, bill_of_lading=bill_of_lading)
    # As stored, after the domain's normalisation; a refusal rolls the whole change back.
    storable.require_text(right.bill_of_lading, field="bill_of_lading", max_length=storable.MAX_BILL_OF_LADING)
    return right, persist(uow, right)


def block(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, reason: str | None,
          now: datetime, *, if_match: IfMatch | None = None) -> tuple[ReleaseRight, Receipt]:
    right = load(uow, release_id, actor, if_match)
    acting_organisation_active(uow, actor)
    right.block(by=actor, now=now, reason=reason)
    return right, persist(uow, right)


def unblock(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, reason: str | None,
            now: datetime, *, if_match: IfMatch | None = None) -> tuple[ReleaseRight, Receipt]:
    right = load(uow, release_id, actor, if_match)
    acting_organisation_active(uow, actor)
    right.unblock(by=actor, now=now, reason=reason)
    return right, persist(uow, right)


def revoke(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, reason: str | None,
           now: datetime, *, if_match: IfMatch | None = None) -> tuple[ReleaseRight, Receipt]:
    right = load(uow, release_id, actor, if_match)
    acting_organisation_active(uow, actor)
    right.revoke(by=actor, now=now, reason=reason)
    return right, persist(uow, right)


def delete(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, reason: str | None,
           now: datetime, *, if_match: IfMatch | None = None) -> tuple[ReleaseRight, Receipt]:
    right = load(uow, release_id, actor, if_match)
    acting_organisation_active(uow, actor)
    right.delete(by=actor, now=now, reason=reason, travelled=len(uow.releases.holders_chain(right.id)) > 1)
    return right, persist(uow, right)


def set_light(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, kind: LightKind, status: LightStatus,
              reason: str | None, now: datetime, *, if_match: IfMatch | None = None
              ) -> tuple[ReleaseRight, Receipt]:
    """If-Match is honoured for a green only (review of the lights, finding 4). A light made red or scan can
    only make the right less pickable, so it is never refused for a stale version: otherwise the holder,
    nominating again and again, would move the version under customs' conditioned hold and starve it. A
    late green is the one danger (lifting a later hold), and a stale one is still refused 412."""
    right = load(uow, release_id, actor)
    if status is LightStatus.GREEN:
        require_current(right, if_match)
    acting_organisation_active(uow, actor)
    held, setter_active = right.customs, _customs_setter_active(uow, right, kind, actor)
    right.set_light(kind=kind, status=status, reason=reason, by=actor, now=now, setter_active=setter_active)
    receipt = persist(uow, right)
    if kind is LightKind.CUSTOMS and status is LightStatus.GREEN and not held.green and held.set_by is not None:
        _lift_carried(uow, actor, right, held, reason, now, setter_active)
    return right, receipt


def _lift_carried(uow: UnitOfWork, actor: Actor, right: ReleaseRight, held: Light, reason: str | None,
                  now: datetime, setter_active: bool) -> None:
    """Customs lifted ``held`` on ``right``: the same hold on the container's other rights is lifted with it,
    as customs' own green on each (its event on each, the reason the lift's). A hold a right carried from
    another (``carried_customs_hold``: status, reason, time and setter as they were) is one hold on the
    container, and it holds every right of it while any right not used at the gate shows it, ended or not
    (``gate.container_held``, review 149 finding 3): lifted here alone, the right it came from, revoked or
    lapsed, would hold the container still. A hold customs set again since is another, and stays."""
    for other in sorted(uow.releases.of_containers([right.container.value]), key=lambda r: r.id):
        if other.id == right.id or other.customs != held or other.state is State.COMPLETED:
            continue
        locked = uow.releases.get(other.id, for_update=True)
        if locked is None or locked.customs != held:
            continue  # changed since it was read: customs' later word stands
        locked.set_light(kind=LightKind.CUSTOMS, status=LightStatus.GREEN, reason=reason, by=actor, now=now,
                         setter_active=setter_active)
        persist(uow, locked)


def _customs_setter_active(uow: UnitOfWork, right: ReleaseRight, kind: LightKind, actor: Actor) -> bool:
    """Whether the customs organisation whose hold another customs changes is active (review 141: one
    port security deactivated acts no more, so its hold is any customs' to lift). Read only then."""
    held = right.customs
    if (kind is not LightKind.CUSTOMS or actor.kind is not OrgKind.CUSTOMS or held.green or held.set_by is None
            or held.set_by == actor.organisation_id):
        return True
    org = uow.directory.organisation(held.set_by)
    return org is not None and org.active


def lapse_due(uow: UnitOfWork, now: datetime, limit: int = 500) -> int:
    """The sweeper: write down the rights whose window has passed (reads already show them expired)."""
    count = 0
    for release_id in uow.releases.due_to_lapse(now, limit):
        right = uow.releases.get(release_id, for_update=True)
        if right is not None and right.lapse_if_due(now):
            persist(uow, right)
            count += 1
    return count

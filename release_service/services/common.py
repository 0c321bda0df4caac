"""What every use case shares: running in one unit of work, idempotency, persisting with receipts."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import Actor, OrgKind
from release_service.domain.release import ReleaseRight
from release_service.ports import Directory, PublishedEvent, StoredEvent, UnitOfWork

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IdempotencyRequest:
    client_id: str
    key: str
    fingerprint: str  # hash of method, path, body and If-Match: the same key with another request is refused


@dataclass(frozen=True, slots=True)
class Receipt:
    """What each action returns: proof of what was recorded, and where it sits in the right's history."""

    receipt_id: uuid.UUID
    release_id: uuid.UUID
    action: str
    seq: int
    state: str
    at: datetime
    organisation_id: uuid.UUID | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "receipt_id": str(self.receipt_id),
            "release_id": str(self.release_id),
            "action": self.action,
            "seq": self.seq,
            "state": self.state,
            "at": self.at.isoformat(),
            "organisation_id": str(self.organisation_id) if self.organisation_id else None,
        }


def run(
    uow: UnitOfWork,
    action: Callable[[UnitOfWork], T],
    render: Callable[[T], tuple[int, Any]],
    *,
    idempotency: IdempotencyRequest | None,
    now: datetime,
) -> tuple[int, Any]:
    """Run one use case in one transaction; with an Idempotency-Key, the same key gives the same answer.

    The key is claimed inside the same transaction as the effect, so a failure rolls both back, and a
    concurrent twin waits for the first and then replays its answer (no second effect).
    """
    with uow:
        if idempotency is not None:
            stored = uow.idempotency.claim(idempotency.client_id, idempotency.key, idempotency.fingerprint, now)
            if stored is not None:
                return stored
        try:
            result = action(uow)
        except DomainError as exc:
            if exc.keep_effects:
                # The trace stands; the key does not: a retry with it runs again and is refused again.
                if idempotency is not None:
                    uow.idempotency.forget(idempotency.client_id, idempotency.key)
                uow.commit()
            raise
        status, body = render(result)
        if idempotency is not None:
            uow.idempotency.complete(idempotency.client_id, idempotency.key, status, body)
        uow.commit()
        return status, body


@dataclass(frozen=True, slots=True)
class IfMatch:
    """The versions of a right a write is conditioned on: HTTP ``If-Match`` (RFC 9110 §13.1.1), the
    right's version being its entity tag. ``tags``: the opaque tags of the strong entity tags sent
    (a weak one never matches: If-Match compares strongly); ``any`` for ``*``. Without it (the header
    left out) a write goes through whatever the version, as before: late writes win."""

    tags: frozenset[str] = frozenset()
    any: bool = False

    def holds(self, version: int) -> bool:
        return self.any or str(version) in self.tags


def require_current(right: ReleaseRight, if_match: IfMatch | None) -> None:
    """Refuse a write conditioned on a version the right is no longer at (RFC 9110 §13.1.1: 412, nothing
    written). Called once the right is locked and known to be the caller's to see: under the lock the
    version cannot move before the write, and a stranger still hears ``not_found``. A late retry of an
    earlier light (customs' green after its scan hold) is refused instead of lifting the later one."""
    if if_match is not None and not if_match.holds(right.version):
        raise DomainError(ErrorCode.PRECONDITION_FAILED, "The release right changed since the version named in "
                          "If-Match: read it again (its ETag) and decide again.")


def load(uow: UnitOfWork, release_id: uuid.UUID, actor: Actor, if_match: IfMatch | None = None) -> ReleaseRight:
    """Load a right for change (row lock) that the actor may see; otherwise it does not exist for them.
    With ``if_match``, only at one of those versions (``require_current``)."""
    right = uow.releases.get(release_id, for_update=True)
    if right is None or not can_see(uow, right, actor):
        raise DomainError(ErrorCode.NOT_FOUND, "No such release right.")
    require_current(right, if_match)
    return right


def can_see(uow: UnitOfWork, right: ReleaseRight, actor: Actor) -> bool:
    """A party sees the rights it holds or held, by kind; a driver only his own nominations."""
    if actor.is_admin or actor.kind is OrgKind.CUSTOMS:
        return True
    if actor.kind is OrgKind.TERMINAL:
        return actor.terminal_code == right.terminal
    if actor.organisation_id is None:
        return actor.person_id is not None and right.nomination is not None and (
            right.nomination.driver_person_id == actor.person_id
        )
    if actor.organisation_id in (right.issuer_organisation_id, right.holder_organisation_id):
        return True
    if right.pending_transfer is not None and right.pending_transfer.to_organisation_id == actor.organisation_id:
        return True
    return uow.releases.has_been_party(right.id, actor.organisation_id)


def persist(uow: UnitOfWork, right: ReleaseRight) -> Receipt:
    """Save the right; its events go to the audit trail and the webhook outbox in the same transaction."""
    events = uow.releases.save(right)
    record_events(uow, right, events)
    return receipt(right, events[-1])


def record_events(uow: UnitOfWork, right: ReleaseRight, events: list[StoredEvent]) -> None:
    record_many(uow, [(right, events)])


def record_many(uow: UnitOfWork, changes: list[tuple[ReleaseRight, list[StoredEvent]]]) -> None:
    """Audit and outbox for many rights in one statement each (a 10 000-right batch is one round trip)."""
    uow.audit.append_many(
        (e.type, e.actor, str(e.release_id), {"seq": e.seq, **e.data}, e.at) for _, events in changes for e in events
    )
    uow.outbox.publish([PublishedEvent(e.id, e.type, e.release_id, e.at, audience(right, e), e.data, e.seq)
                        for right, events in changes for e in events])


# Events the customs organisation holding the right's customs light hears too (review 141): the right's
# end, and its issue when it took the hold over from the container's last right.
CUSTOMS_HOLD_HEARS = frozenset({"release.issued", "release.revoked", "release.deleted", "release.expired"})


def audience(right: ReleaseRight, event: StoredEvent) -> frozenset[uuid.UUID]:
    """Who hears of an event: the issuer, the holder, and both ends of a transfer it concerns; of the
    right's issue and end, the customs organisation whose hold is on it (``CUSTOMS_HOLD_HEARS``)."""
    ids = {right.issuer_organisation_id, right.holder_organisation_id}
    held = right.customs
    if event.type in CUSTOMS_HOLD_HEARS and held.set_by is not None and not held.green:
        ids.add(held.set_by)
    for key in ("from", "to", "holder"):
        value = event.data.get(key)
        if isinstance(value, str):
            try:
                ids.add(uuid.UUID(value))
            except ValueError:
                pass
    if right.nomination is not None:
        ids.add(right.nomination.nominated_by)
    return frozenset(ids)


def receipt(right: ReleaseRight, event: StoredEvent) -> Receipt:
    org = event.actor.get("organisation_id")
    return Receipt(event.id, right.id, event.type, event.seq, right.state.value, event.at,
                   uuid.UUID(org) if org else None)


class HasDirectory(Protocol):
    """A unit of work that can look an organisation up: every one of ours (ports.UnitOfWork,
    ports.WebhookUnitOfWork)."""

    @property
    def directory(self) -> Directory: ...


def organisation_kind(uow: UnitOfWork, organisation_id: uuid.UUID) -> OrgKind:
    """The kind of an organisation that is to receive a right (issue or transfer): refused when it is
    unknown, or deactivated by port security (issue 4: it receives no new rights or transfers)."""
    org = uow.directory.organisation(organisation_id)
    if org is None:
        raise DomainError(ErrorCode.UNKNOWN_ORGANISATION, f"No organisation {organisation_id}.")
    if not org.active:
        raise DomainError(ErrorCode.ORGANISATION_INACTIVE, "This organisation is deactivated: it receives no "
                          "new release rights, transfers or nominations.")
    return org.kind


def acting_organisation_active(uow: HasDirectory, actor: Actor) -> None:
    """Issue 4 (review 77): a deactivated organisation acts no more, even with a token issued before the
    deactivation. identity.organisations revokes those tokens too, but a resource server may still trust
    one (a revocation list served from a cache): belt and braces, read from the database in the use
    case's own transaction, before anything is written.

    Called by every use case in which an organisation acts: issue (one or a batch), transfer, accept,
    decline and withdraw a transfer, nominate, the line's update, block, unblock, revoke and delete,
    every light, a terminal's override, and every change of a webhook subscription.
    Deliberately not by: a driver's answer (he acts for himself, with no organisation: a no-op here);
    the gate's verify, gate-in and gate-out, as to the terminal asking (their allow is the port's rules
    applied to the right, the driver and the truck, not the terminal's word; a verify is answered from the
    cache, on the hot path). The company holding the right is another matter: what it set in motion stops
    with its deactivation, so the gate reads its status with the right's facts and refuses
    (``holder_inactive``, domain/gate.py; review 130), and its transfers are no longer accepted;
    the offline reconcile (it records a truck that has already passed: refusing would lose the record);
    port security's gate policy (the port authority cannot be deactivated); the lapse sweeper (no actor).
    """
    if actor.organisation_id is None:
        return
    org = uow.directory.organisation(actor.organisation_id)
    if org is not None and not org.active:
        raise DomainError(ErrorCode.ORGANISATION_INACTIVE, "Your organisation is deactivated: it no longer "
                          "issues, transfers, nominates or changes release rights, nor manages webhooks.")

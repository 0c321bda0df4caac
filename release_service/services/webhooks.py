"""Webhook subscriptions and their dead letters, as use cases a thin router calls.

Each function takes a unit of work (entered here, committed once), plain arguments, and returns the
frozen dataclasses of domain/webhooks.py. Everything is scoped to the caller's organisation: another
organisation's subscription or delivery is NOT_FOUND, never FORBIDDEN, so ids reveal nothing.
A caller with no organisation (a driver, a bare admin token) cannot own webhooks: FORBIDDEN. An
organisation port security has deactivated changes none (``organisation_inactive``, review 77), even with
a token issued before: checked in the change's own transaction, before anything is written.

A subscription is a standing copy of the organisation's events to a URL of the caller's choosing, so
every change of one (created, secret rotated, deleted, a dead delivery sent again) writes an audit entry
in the same transaction: who, which subscription, to which URL. Never the secret.

A subscription keeps who made it: the client, and the person when one made it in a company's console.
Such a subscription is the person's doing, not a standing arrangement of the company's: when his acting
role there ends (removed, or expired by the sweep) or port security suspends him, it is closed in that
same transaction (``creator_left``, which identity.memberships and identity.authn.cutoff call), as a
deletion would close it, on the trail. Else a dated dispatcher could point one at a server of his, keep
its secret, and go on receiving the company's events (containers, drivers, plates) after his role ended
(webhook review, finding 1). A machine client's subscription is the company's, and stays. Reinstating
him, or giving him a role again, opens none again: the company subscribes anew.

Secrets are returned in clear exactly once (on create and on rotate) and stored sealed, with the
subscription id as associated data, so a ciphertext copied onto another row does not open.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import ACTING_ROLES, Actor
from release_service.domain.webhooks import (
    MAX_SUBSCRIPTIONS,
    Delivery,
    SigningSecrets,
    Subscription,
    new_secret,
    secret_aad,
    trail_url,
    validate_event_types,
    validate_url,
)
from release_service.ports import Sealer, WebhookUnitOfWork

from .common import acting_organisation_active

log = logging.getLogger("quaygate.webhooks")

DEFAULT_ROTATION_OVERLAP = timedelta(hours=24)


# ---- use cases ---------------------------------------------------------------------------------

def create_subscription(uow: WebhookUnitOfWork, cipher: Sealer, actor: Actor, *,
                        url: str, event_types: list[str], now: datetime,
                        allow_insecure_localhost: bool = False) -> tuple[Subscription, str]:
    """A new endpoint for the actor's organisation; returns it and its ``whsec_`` secret, shown only now."""
    org = _own_org(actor.organisation_id)
    sub = Subscription(
        id=uuid.uuid4(), organisation_id=org, active=True, created_at=now,
        url=validate_url(url, allow_insecure_localhost=allow_insecure_localhost),
        event_types=validate_event_types(event_types),
        created_by_client_id=actor.client_id, created_by_person_id=actor.person_id,
    )
    secret = new_secret()
    with uow:
        count = uow.webhooks.count_locked(org)  # first: a deactivation committed meanwhile is read below
        acting_organisation_active(uow, actor)
        # A person's token carries his roles as they were when it was issued: read them again, with his
        # row share-locked, so that a subscription he makes as his role ends is refused here or seen and
        # closed by that ending (``creator_left``), never left behind (identity.memberships).
        if actor.person_id is not None and not uow.directory.acts_in(actor.person_id, org, ACTING_ROLES, now=now):
            raise DomainError(ErrorCode.FORBIDDEN, "Your role in this organisation no longer lets you manage "
                              "its webhooks.")
        if count >= MAX_SUBSCRIPTIONS:
            raise DomainError(ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                              f"Your organisation has {MAX_SUBSCRIPTIONS} webhook subscriptions, the most it may "
                              "have: delete one first (one subscription can carry many event types).",
                              limit=MAX_SUBSCRIPTIONS)
        uow.webhooks.add_subscription(sub, cipher.seal(SigningSecrets(secret).to_bytes(), secret_aad(sub.id)))
        _audit(uow, "release.webhook.subscription.created", actor, sub, now,
               event_types=list(sub.event_types))
        uow.commit()
    log.info("release.webhook.subscription.created", extra={"fields": {"subscription_id": str(sub.id)}})
    return sub, secret


def list_subscriptions(uow: WebhookUnitOfWork, organisation_id: uuid.UUID | None) -> list[Subscription]:
    org = _own_org(organisation_id)
    with uow:
        return uow.webhooks.subscriptions(org)


def get_subscription(uow: WebhookUnitOfWork, organisation_id: uuid.UUID | None,
                     subscription_id: uuid.UUID) -> Subscription:
    org = _own_org(organisation_id)
    with uow:
        return _load(uow, org, subscription_id)


def delete_subscription(uow: WebhookUnitOfWork, actor: Actor, subscription_id: uuid.UUID, *,
                        now: datetime) -> None:
    """Stops every delivery to the endpoint: the queued ones take the final status ``cancelled``; the rows
    stay for the record."""
    org = _own_org(actor.organisation_id)
    with uow:
        sub = _load(uow, org, subscription_id, for_update=True)
        acting_organisation_active(uow, actor)
        cancelled = uow.webhooks.deactivate(subscription_id)
        _audit(uow, "release.webhook.subscription.deleted", actor, sub, now, deliveries_cancelled=cancelled)
        uow.commit()
    log.info("release.webhook.subscription.deleted",
             extra={"fields": {"subscription_id": str(subscription_id)}})


def rotate_secret(uow: WebhookUnitOfWork, cipher: Sealer, actor: Actor,
                  subscription_id: uuid.UUID, *, now: datetime,
                  overlap: timedelta = DEFAULT_ROTATION_OVERLAP) -> tuple[Subscription, str]:
    """A new secret; the old one keeps signing alongside it for ``overlap`` (zero-downtime rotation).

    Pass ``overlap=timedelta(0)`` after a leak: the old secret stops signing at once.
    """
    org = _own_org(actor.organisation_id)
    secret = new_secret()
    aad = secret_aad(subscription_id)
    with uow:
        sub = _load(uow, org, subscription_id, for_update=True)  # row lock: two rotations cannot interleave
        acting_organisation_active(uow, actor)
        current = _current_secrets(cipher, uow.webhooks.sealed_secret(sub.id), aad)
        rotated = SigningSecrets(secret) if current is None else current.rotated(secret, now=now, overlap=overlap)
        uow.webhooks.set_sealed_secret(sub.id, cipher.seal(rotated.to_bytes(), aad))
        unreadable = {"previous_unreadable": True} if current is None else {}
        _audit(uow, "release.webhook.secret.rotated", actor, sub, now,
               previous_valid_for_seconds=0 if current is None else int(max(overlap, timedelta(0)).total_seconds()),
               **unreadable)
        uow.commit()
    log.info("release.webhook.secret.rotated", extra={"fields": {"subscription_id": str(subscription_id)}})
    return sub, secret


def _current_secrets(cipher: Sealer, sealed: str, aad: bytes) -> SigningSecrets | None:
    """The secrets sealed in the row, or None when they do not open (sealed under a data key this
    deployment no longer holds or may no longer take, altered, unreadable): its deliveries fail ('secret
    unreadable'), and a rotation is the organisation's way out, with a fresh secret and nothing of the old
    (review 171, finding 4: the rotation answered 500, and the subscription could never sign again)."""
    try:
        return SigningSecrets.from_bytes(cipher.open_stored(sealed, aad))
    except Exception:  # noqa: BLE001 - whatever the reason, nothing of the old secret can be kept
        log.warning("release.webhook.secret.unreadable")
        return None


def list_dead_letters(uow: WebhookUnitOfWork, organisation_id: uuid.UUID | None, *,
                      limit: int = 100) -> list[Delivery]:
    """Deliveries that exhausted their retries (or whose endpoint answered 410), and those withheld while
    the organisation was deactivated (never sent; not sent on reactivation either), newest first."""
    org = _own_org(organisation_id)
    with uow:
        return uow.webhooks.dead_letters(org, max(1, min(limit, 500)))


def redeliver(uow: WebhookUnitOfWork, actor: Actor, delivery_id: uuid.UUID, *,
              now: datetime) -> Delivery:
    """Put a dead (or withheld) delivery back in the queue, due now, with the whole retry schedule ahead of
    it. A deactivated organisation redelivers nothing (``organisation_inactive``)."""
    org = _own_org(actor.organisation_id)
    with uow:
        acting_organisation_active(uow, actor)  # before the requeue, the first write
        requeued = uow.webhooks.requeue_dead(org, delivery_id, now)
        delivery = uow.webhooks.delivery(org, delivery_id)
        if delivery is None:
            raise DomainError(ErrorCode.NOT_FOUND, "No such webhook delivery.")
        if not requeued:
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "Only a dead or withheld delivery can be redelivered.",
                              status=delivery.status)
        # requeue_dead succeeded, so the subscription is this organisation's and active.
        sub = _load(uow, org, delivery.subscription_id)
        _audit(uow, "release.webhook.delivery.requeued", actor, sub, now, delivery_id=str(delivery.id),
               event_id=str(delivery.event_id), event_type=delivery.event_type)
        uow.commit()
    log.info("release.webhook.delivery.requeued", extra={"fields": {"delivery_id": str(delivery_id)}})
    return delivery


# ---- their creator leaves -------------------------------------------------------------------

CLOSED_KIND = "release.webhook.subscription.closed"


def creator_left(uow: WebhookUnitOfWork, person_id: uuid.UUID, organisation_id: uuid.UUID | None, *,
                 roles_left: Collection[str] = (), reason: str, by: dict[str, Any],
                 now: datetime) -> tuple[uuid.UUID, ...]:
    """Close the active subscriptions ``person_id`` made for ``organisation_id`` unless ``roles_left``
    (his roles there still in force) still let him act for it (module docstring); ``organisation_id``
    None: in every organisation (a suspension). Each closed as a deletion closes it (its queued
    deliveries cancelled) with an entry on the trail: ``reason``, and ``by`` (who ended his role, the
    expiry sweep, who suspended him). Writes in ``uow``'s transaction, never commits (identity's use
    case owns it, as holders.status_changed); returns the ids closed."""
    if organisation_id is not None and set(roles_left) & ACTING_ROLES:
        return ()  # another acting role of his there: he may still manage its webhooks
    closed: list[uuid.UUID] = []
    for sub in uow.webhooks.made_by(person_id, organisation_id):
        cancelled = uow.webhooks.deactivate(sub.id)
        uow.audit.append(CLOSED_KIND, actor=by, subject=str(sub.id),
                         data={"organisation_id": str(sub.organisation_id), **trail_url(sub.url),
                               "reason": reason, "created_by_person_id": str(person_id),
                               "deliveries_cancelled": cancelled}, at=now)
        closed.append(sub.id)
    if closed:
        log.info("release.webhook.subscription.closed.creator_left",
                 extra={"fields": {"reason": reason, "subscriptions": len(closed)}})
    return tuple(closed)


def _audit(uow: WebhookUnitOfWork, kind: str, actor: Actor, sub: Subscription, now: datetime,
           **data: Any) -> None:
    """One entry on the trail, subject the subscription: who, for which organisation, to which host (the
    URL's digest, never the URL: ``domain.webhooks.trail_url``)."""
    uow.audit.append(kind, actor=actor.as_dict(), subject=str(sub.id),
                     data={"organisation_id": str(sub.organisation_id), **trail_url(sub.url), **data}, at=now)


def _own_org(organisation_id: uuid.UUID | None) -> uuid.UUID:
    if organisation_id is None:
        raise DomainError(ErrorCode.FORBIDDEN, "Only an organisation can subscribe to webhooks.")
    return organisation_id


def _load(uow: WebhookUnitOfWork, organisation_id: uuid.UUID, subscription_id: uuid.UUID, *,
          for_update: bool = False) -> Subscription:
    sub = uow.webhooks.subscription(organisation_id, subscription_id, for_update=for_update)
    if sub is None:
        raise DomainError(ErrorCode.NOT_FOUND, "No such webhook subscription.")
    return sub

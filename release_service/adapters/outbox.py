"""Webhook storage: the transactional outbox, and the subscription and delivery rows behind the use cases.

``SqlOutbox`` queues deliveries in the caller's transaction, so a change and its webhooks commit or
roll back together; the dispatcher (webhook_dispatcher.py) sends them later. ``SqlWebhookStore`` is
the ``WebhookStore`` port of services/webhooks.py; it only flushes, the unit of work commits.

A delivery's status: ``pending`` (queued, or waiting for its next try), then one final status:
``delivered``; ``dead`` (its retries exhausted, or the endpoint answered 410 Gone); ``withheld`` (its
organisation was deactivated before it was sent: the dispatcher never sends it, and a reactivation
does not send it either); ``cancelled`` (its subscription was closed, deleted or disabled by a 410 Gone,
before it was sent: ``close_subscription``). A dead or withheld delivery goes back in the queue only by
``redeliver``; a cancelled one never does (its endpoint is gone).

Order (review 171, finding 1): a delivery carries the right its event is of (``release_id``) and the
order it was queued in (``ordinal``: a sequence on PostgreSQL, the rowid on SQLite; rows inserted in one
statement or transaction take it in the order given, so a change's events keep their order). The
dispatcher sends a subscription the deliveries of one right in that order, none while an earlier one is
pending. One queued behind a pending delivery of its right is due no sooner than it (``due_behind``), so
the claim does not find it due and held at every pass while the earlier one waits for its retry.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from quaygate.schema import organisations, webhook_deliveries, webhook_subscriptions
from release_service.domain.disclosure import published_data
from release_service.domain.webhooks import Delivery, Subscription, matches
from release_service.ports import PublishedEvent

_subs = webhook_subscriptions
_dels = webhook_deliveries
# Literal, as in the queue indexes' predicate (ix_webhook_deliveries_queue, _right_queue): a generic plan
# may use them on it.
PENDING = sa.literal_column("'pending'")
# Final statuses that the organisation may send again (dead letters): redeliver, then as for a new one.
REDELIVERABLE = ("dead", "withheld")


# The active subscriptions of an event's audience, of organisations still active: port security cuts a
# deactivated company off its release events too, not only off acting (identity.organisations).
# Prebuilt (every change of a right publishes).
_AUDIENCE = (sa.select(_subs.c.id, _subs.c.organisation_id, _subs.c.event_types)
             .join(organisations, organisations.c.id == _subs.c.organisation_id)
             .where(_subs.c.active.is_(True), organisations.c.active.is_(True),
                    _subs.c.organisation_id.in_(sa.bindparam("audience", expanding=True))))


def due_behind(subscription_id: sa.ColumnElement[Any], release_id: sa.ColumnElement[Any],
               at: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """When a new delivery of ``release_id`` to ``subscription_id`` is due: at ``at``, or, behind a pending
    delivery of that right to that subscription due later (waiting for a retry, or being sent: its lease),
    when the latest of those is due. The dispatcher brings it forward again once the earlier ones end
    (webhook_dispatcher.py ``_record``). One probe of ix_webhook_deliveries_right_queue."""
    ahead = _dels.alias("ahead")
    latest = (sa.select(sa.func.max(ahead.c.next_attempt_at))
              .where(ahead.c.subscription_id == subscription_id, ahead.c.release_id == release_id,
                     ahead.c.status == PENDING)
              .scalar_subquery())
    return sa.case((latest > at, latest), else_=at)


def held_back(d: sa.TableClause) -> sa.ColumnElement[bool]:
    """Whether the delivery ``d`` (webhook_deliveries, in the query around) waits behind another: a
    delivery of its right to its subscription queued before it and still pending (webhook_dispatcher.py
    sends neither meanwhile). One probe of ix_webhook_deliveries_right_queue."""
    ahead = _dels.alias("ahead")
    return sa.exists().where(ahead.c.subscription_id == d.c.subscription_id, ahead.c.release_id == d.c.release_id,
                             ahead.c.status == PENDING, ahead.c.ordinal < d.c.ordinal)


# Every delivery's insert: one row per parameter set, in the order given (executemany).
_INSERT = _dels.insert().values(next_attempt_at=due_behind(
    sa.bindparam("q_subscription", type_=_dels.c.subscription_id.type),
    sa.bindparam("q_release", type_=_dels.c.release_id.type),
    sa.bindparam("q_at", type_=_dels.c.next_attempt_at.type)))


class SqlOutbox:
    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def publish(self, events: Sequence[PublishedEvent]) -> None:
        if not events:
            return
        audience = set().union(*(e.audience for e in events))
        subs = self._conn.execute(_AUDIENCE, {"audience": list(audience)}).all()
        rows = [
            _delivery_row(event, sub.id)
            for event in events
            for sub in subs
            if sub.organisation_id in event.audience and matches(sub.event_types, event.type)
        ]
        if rows:
            self._conn.execute(_INSERT, rows)


def _delivery_row(event: PublishedEvent, subscription_id: uuid.UUID) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),  # also the webhook-id header: one per endpoint and event, kept across retries
        "subscription_id": subscription_id,
        "event_id": event.id,
        "event_type": event.type,
        "payload": delivery_payload(event),
        "status": "pending",
        "attempts": 0,
        "created_at": event.at,
        "release_id": event.release_id,
        # next_attempt_at: due_behind(these); ordinal: the database's, in this list's order
        "q_subscription": subscription_id, "q_release": event.release_id, "q_at": event.at,
    }


def delivery_payload(event: PublishedEvent) -> dict[str, Any]:
    """What an endpoint receives: Standard Webhooks' recommended shape (type, timestamp, data) plus our
    identifiers. Every webhook's payload is made here, so its data is the event's as anyone but the
    full-sight viewers may read it (``published_data``: no customs reason). ``seq``: the event's number
    in the right's history (``GET /api/v1/releases/{id}/events``), by which a receiver sorts a right's
    events and sees a gap; null for a notice that is not one of them (``PublishedEvent.seq``)."""
    return {
        "id": str(event.id),
        "type": event.type,
        "timestamp": event.at.isoformat(),
        "release_id": str(event.release_id),
        "seq": event.seq,
        "data": published_data(event.type, event.payload),
    }


class SqlWebhookStore:
    """Subscriptions and deliveries, always scoped to the calling organisation."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def add_subscription(self, sub: Subscription, secret_enc: str) -> None:
        self._conn.execute(_subs.insert().values(
            id=sub.id, organisation_id=sub.organisation_id, url=sub.url, event_types=list(sub.event_types),
            secret_enc=secret_enc, active=sub.active, created_at=sub.created_at,
            created_by_client_id=sub.created_by_client_id, created_by_person_id=sub.created_by_person_id,
        ))

    def count_locked(self, organisation_id: uuid.UUID) -> int:
        """The organisation's active subscriptions, counted under its row's lock: two creations of one
        organisation count one after the other (a phantom insert is not held off by locking rows)."""
        # FOR NO KEY UPDATE: two creations wait for each other, a foreign key naming the organisation (a
        # right issued to it: FOR KEY SHARE) does not wait for a creation (review 115).
        self._conn.execute(sa.select(organisations.c.id).where(organisations.c.id == organisation_id)
                           .with_for_update(key_share=True))
        return int(self._conn.execute(sa.select(sa.func.count()).select_from(_subs).where(
            _subs.c.organisation_id == organisation_id, _subs.c.active.is_(True))).scalar_one())

    def subscriptions(self, organisation_id: uuid.UUID) -> list[Subscription]:
        rows = self._conn.execute(
            sa.select(_subs).where(_subs.c.organisation_id == organisation_id, _subs.c.active.is_(True))
            .order_by(_subs.c.created_at, _subs.c.id)
        ).all()
        return [_subscription(r) for r in rows]

    def subscription(self, organisation_id: uuid.UUID, subscription_id: uuid.UUID, *,
                     for_update: bool = False) -> Subscription | None:
        """An active subscription of this organisation; another's is None, as if it did not exist."""
        q = sa.select(_subs).where(_subs.c.id == subscription_id, _subs.c.organisation_id == organisation_id,
                                   _subs.c.active.is_(True))
        row = self._conn.execute(q.with_for_update() if for_update else q).first()
        return _subscription(row) if row else None

    def made_by(self, person_id: uuid.UUID, organisation_id: uuid.UUID | None) -> list[Subscription]:
        """The active subscriptions ``person_id`` made, for ``organisation_id`` (None: for any), locked
        (FOR UPDATE: a rotation or a deletion of one of them waits, then finds it closed)."""
        q = sa.select(_subs).where(_subs.c.created_by_person_id == person_id, _subs.c.active.is_(True))
        if organisation_id is not None:
            q = q.where(_subs.c.organisation_id == organisation_id)
        rows = self._conn.execute(q.order_by(_subs.c.id).with_for_update()).all()
        return [_subscription(r) for r in rows]

    def sealed_secret(self, subscription_id: uuid.UUID) -> str:
        return str(self._conn.execute(
            sa.select(_subs.c.secret_enc).where(_subs.c.id == subscription_id)).scalar_one())

    def set_sealed_secret(self, subscription_id: uuid.UUID, secret_enc: str) -> None:
        self._conn.execute(_subs.update().where(_subs.c.id == subscription_id).values(secret_enc=secret_enc))

    def deactivate(self, subscription_id: uuid.UUID) -> int:
        """Deletion keeps the row (deliveries point at it, history stays readable); nothing more is sent.
        Returns how many queued deliveries were cancelled (``close_subscription``)."""
        return close_subscription(self._conn, subscription_id) or 0

    def dead_letters(self, organisation_id: uuid.UUID, limit: int) -> list[Delivery]:
        rows = self._conn.execute(
            sa.select(_dels)
            .where(_dels.c.status.in_(REDELIVERABLE), _dels.c.subscription_id.in_(self._own(organisation_id)))
            .order_by(_dels.c.created_at.desc(), _dels.c.id).limit(limit)
        ).all()
        return [_delivery(r) for r in rows]

    def delivery(self, organisation_id: uuid.UUID, delivery_id: uuid.UUID) -> Delivery | None:
        row = self._conn.execute(
            sa.select(_dels)
            .where(_dels.c.id == delivery_id, _dels.c.subscription_id.in_(self._own(organisation_id)))
        ).first()
        return _delivery(row) if row else None

    def requeue_dead(self, organisation_id: uuid.UUID, delivery_id: uuid.UUID, now: datetime) -> bool:
        """Dead (or withheld) back to pending with a fresh schedule: one conditional UPDATE, so two clicks
        requeue once."""
        result = self._conn.execute(
            _dels.update()
            .where(_dels.c.id == delivery_id, _dels.c.status.in_(REDELIVERABLE),
                   _dels.c.subscription_id.in_(self._own(organisation_id)))
            .values(status="pending", attempts=0, next_attempt_at=now)
        )
        return result.rowcount == 1

    def _own(self, organisation_id: uuid.UUID) -> sa.Select[tuple[uuid.UUID]]:
        return sa.select(_subs.c.id).where(_subs.c.organisation_id == organisation_id,
                                           _subs.c.active.is_(True))


CANCELLED_ERROR = "subscription closed before delivery"


def close_subscription(conn: sa.Connection, subscription_id: uuid.UUID) -> int | None:
    """Close a subscription, and cancel its queued deliveries in the same transaction; how many.

    Closed by its organisation (delete) or by the dispatcher (410 Gone). A pending delivery of a closed
    subscription is never sent, never listed as a dead letter and never redelivered (both need an active
    subscription): left pending, it would stay so for ever, in the due index and in the subscription's
    queue (ix_webhook_deliveries_queue, through which it is found here). So it takes a final status.
    A delivery being sent at that moment (leased by a dispatcher) is cancelled too: its result is then
    recorded as a lost lease. None when the subscription was already closed (closing twice does nothing).
    """
    closed = conn.execute(_subs.update().where(_subs.c.id == subscription_id, _subs.c.active.is_(True))
                          .values(active=False))
    if closed.rowcount != 1:
        return None
    return int(conn.execute(_dels.update().where(_dels.c.subscription_id == subscription_id,
                                                 _dels.c.status == PENDING)
                            .values(status="cancelled", last_error=CANCELLED_ERROR)).rowcount)


# Rows deleted per round of the prune: a bounded transaction; the worker runs rounds until none is left.
PRUNE_BATCH = 1000


def prune_deliveries(conn: sa.Connection, *, settled_before: datetime, dead_before: datetime,
                     limit: int = PRUNE_BATCH) -> int:
    """Delete up to ``limit`` finished deliveries past their retention; how many (review 110).

    A delivery row keeps its payload (container numbers, drivers, plates): kept for ever, the table grows
    without bound and holds personal data long after anyone needs it. Delivered and cancelled rows go
    once older than ``settled_before``; dead and withheld ones, which the organisation may still send
    again from its dead letters, once older than ``dead_before`` (set further back). A row's age is that
    of its ``next_attempt_at``, its last activity: a delivered or dead row's last lease (just after its
    last attempt), a withheld row's due time, a cancelled row's last schedule; a redelivered row starts
    again from its requeue. It is also the due index's second column, so each status's old rows are
    found through the index. Pending rows are never pruned. Replicas pruning at once: on PostgreSQL
    each takes rows no other holds.
    """
    old = sa.or_(
        sa.and_(_dels.c.status.in_(("delivered", "cancelled")), _dels.c.next_attempt_at < settled_before),
        sa.and_(_dels.c.status.in_(REDELIVERABLE), _dels.c.next_attempt_at < dead_before),
    )
    picked = sa.select(_dels.c.id).where(old).limit(limit)
    if conn.dialect.name == "postgresql":
        picked = picked.with_for_update(skip_locked=True)
    ids = list(conn.execute(picked).scalars())
    if not ids:
        return 0
    return int(conn.execute(_dels.delete().where(_dels.c.id.in_(ids))).rowcount or 0)


def _subscription(row: sa.Row[Any]) -> Subscription:
    return Subscription(row.id, row.organisation_id, row.url, tuple(row.event_types), row.active,
                        row.created_at, row.created_by_client_id, row.created_by_person_id)


def _delivery(row: sa.Row[Any]) -> Delivery:
    return Delivery(row.id, row.subscription_id, row.event_id, row.event_type, row.status, row.attempts,
                    row.next_attempt_at, row.last_error, row.created_at, row.delivered_at, dict(row.payload))

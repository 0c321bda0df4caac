"""Transactional outbox: webhook deliveries are queued in the same transaction as the change."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa

from quaygate.schema import webhook_deliveries, webhook_subscriptions
from release_service.ports import PublishedEvent


class SqlOutbox:
    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def publish(self, events: Sequence[PublishedEvent]) -> None:
        if not events:
            return
        audience = set().union(*(e.audience for e in events))
        subs = self._conn.execute(
            sa.select(webhook_subscriptions.c.id, webhook_subscriptions.c.organisation_id,
                      webhook_subscriptions.c.event_types)
            .where(webhook_subscriptions.c.active.is_(True))
            .where(webhook_subscriptions.c.organisation_id.in_(audience))
        ).all()
        if not subs:
            return
        rows = []
        for event in events:
            for sub in subs:
                if sub.organisation_id in event.audience and _wants(sub.event_types, event.type):
                    rows.append({
                        "id": uuid.uuid4(),
                        "subscription_id": sub.id,
                        "event_id": event.id,
                        "event_type": event.type,
                        "payload": {
                            "id": str(event.id),
                            "type": event.type,
                            "release_id": str(event.release_id),
                            "at": event.at.isoformat(),
                            "data": event.payload,
                        },
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": event.at,
                        "created_at": event.at,
                    })
        if rows:
            self._conn.execute(webhook_deliveries.insert(), rows)


def _wants(event_types: list[str], event_type: str) -> bool:
    """A subscription names event types exactly, or by prefix with a trailing ``*``."""
    for pattern in event_types:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith("*") and event_type.startswith(pattern[:-1]):
            return True
    return False

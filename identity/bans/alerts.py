"""Nomination alerts: a port ban took effect on the nominated driver of a live release right (issue 4).

Port security and the haulier holding the right are told before the driver reaches the gate (the
gate refuses him by itself, ``person_banned``), so the haulier can nominate someone else. One alert
is one ``screening.ban.nomination_alert`` audit entry (what the badge office's alert list,
``GET /admin/v1/bans/alerts``, reads) and one ``release.nomination.screening_alert`` webhook to the
holder, both in the caller's transaction.

Who raises them:

- the loader, for a ban new (or amended) and in effect at the load (identity.bans.loader
  ``ban_consequences``): every live nomination of its subject at a terminal the ban applies to,
  whatever his badges;
- the sweep, for a ban whose start came after its load (identity.bans.sweep): a subject with an
  active badge through ``ban_consequences`` as at a load; a subject with none through
  ``due_at_start`` here, since the badge-led sweep never finds him (review 78, finding 1).

Only where the ban applies (review 156, finding 2): a nomination is alerted only when the ban covers its
terminal's port, by the gate's screening rule (``applies_at``: identity.domain.bans ``scope_covers``
of ``port_of_terminal``; a terminal code that names no port is covered by every ban, as at the gate).
A ban limited to Zeebrugge says nothing to the holder of a right at Antwerp, where the gate lets the
driver in. His badges turn inactive whatever the ban's scope (a badge is not tied to a port).

Once per imposition of a ban and nomination: the badge-led sweep stops finding a subject once his
badges are inactive; a subject without one offers no such state to turn, so the alert itself is the
mark: ``due_at_start`` leaves out a nomination whose driver the trail already names in an alert under
one of the bans now due, raised at or after that ban's current start. An alert raised before it was
about an earlier imposition of the reference (review 156, finding 1): a ban lifted and sent again
starting later, or one in force postponed, is announced again when it starts. The sweep reads that
under the loader's advisory lock, so replicas sweeping at once raise it once.

A suspension (identity.authn.cutoff ``suspend_person``) has the same consequence at the gate
(``person_suspended``), so it tells the holders the same way, in the suspension's transaction:
``suspension_alerts`` queues one ``release.nomination.screening_alert`` (reason ``person_suspended``)
per live nomination of the person; the suspension's own audit entry lists the rights. Port security
suspended him, so no entry is added to its ban alert list.

Why the identity side reads the release rights' table (quaygate.schema ``releases``) rather than the
release engine raising the alert: the ban list, its loader and its lock live here, and the alert is
one of a ban's consequences, raised in the ban's own transaction with the badges'. The release
engine would have to poll the ban list and learn which bans it had already acted on. The import
contracts (pyproject.toml) keep only the domains pure; this adapter-level read of the shared
schema is what the loader already did, and the wire event goes through the engine's own outbox.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from identity import audit
from identity.domain.bans import decode_scope, port_of_terminal, scope_covers
from quaygate.schema import audit_log, persons, port_bans, releases
from release_service.adapters.outbox import SqlOutbox
from release_service.domain.release import State
from release_service.ports import PublishedEvent

log = logging.getLogger(__name__)

ACTOR = {"client_id": "port_ban_register"}
ALERT_KIND = "screening.ban.nomination_alert"
ALERT_EVENT = "release.nomination.screening_alert"


@dataclass(frozen=True, slots=True)
class NominationHit:
    """A live nomination whose driver a ban in effect names."""

    release_id: uuid.UUID
    holder_organisation_id: uuid.UUID
    driver_person_id: uuid.UUID
    ban_reference: str


def _live(now: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    """A live nomination: the right is nominated (not yet gated in, not ended) and still in its window
    (past ``valid_until`` it has lapsed, even before the lapse sweeper marks it)."""
    return releases.c.state == State.NOMINATED.value, releases.c.valid_until > now


@dataclass(frozen=True, slots=True)
class Acting:
    """A ban taking effect on its subject's nominations: its reference, its stored scope
    (quaygate.schema ``port_bans.scope``) and, for an amendment in force before only widened, the
    scope it had, whose nominations it already took effect on."""

    reference: str
    scope: str
    scope_before: str | None = None

    def newly_applies_at(self, terminal: str) -> bool:
        return applies_at(self.scope, terminal) and not (self.scope_before is not None
                                                         and applies_at(self.scope_before, terminal))


def applies_at(scope: str, terminal: str) -> bool:
    """Does a ban of stored ``scope`` apply at ``terminal``? The gate screening's rule: the terminal's
    port (``port_of_terminal``) within the scope, any terminal for an all-ports ban or a code that names
    no port."""
    return scope_covers(decode_scope(scope), port_of_terminal(terminal))


def live_nominations_of(conn: sa.Connection, person_id: uuid.UUID, bans: Sequence[Acting],
                        now: datetime) -> list[NominationHit]:
    """The person's live nominations that one of ``bans`` newly applies at, each a hit of the first
    such ban."""
    hits: list[NominationHit] = []
    for rid, holder, terminal in _live_of(conn, person_id, now):
        ban = next((b for b in bans if b.newly_applies_at(terminal)), None)
        if ban is not None:
            hits.append(NominationHit(rid, holder, person_id, ban.reference))
    return hits


def _live_of(conn: sa.Connection, person_id: uuid.UUID, now: datetime) -> list[tuple[uuid.UUID, uuid.UUID, str]]:
    """The person's live nominations: (release id, holder, terminal)."""
    return [(r[0], r[1], r[2]) for r in conn.execute(
        sa.select(releases.c.id, releases.c.holder_organisation_id, releases.c.terminal)
        .where(releases.c.driver_person_id == person_id, *_live(now)).order_by(releases.c.id))]


def due_at_start(conn: sa.Connection, now: datetime) -> list[NominationHit]:
    """Live nominations whose driver came under a ban in effect after he was nominated, at a terminal
    the ban applies to (``applies_at``), and about which no alert under such a ban, raised since its
    current start, is on the trail yet: one hit per nomination (its first ban).

    ``nominated_at < banned_from``: the nomination was live when the ban started, so the ban took
    effect on it. A nomination made after the ban started was screened against it (refused where it
    applies), and one the load found was alerted by the load; one in flight as the load ran is one or
    the other, since the nomination share-locks its driver's row before it screens and the load locks
    that row before it looks (release_service SqlDirectory ``hold_person``, review 147). The candidates
    are few (drivers under a ban), each checked on the trail by its release id (the ``subject`` index)."""
    rows = conn.execute(
        sa.select(releases.c.id, releases.c.holder_organisation_id, releases.c.driver_person_id,
                  releases.c.terminal, port_bans.c.reference, port_bans.c.scope, port_bans.c.banned_from)
        .select_from(port_bans)
        .join(persons, persons.c.national_id_hash == port_bans.c.subject_hash)
        .join(releases, releases.c.driver_person_id == persons.c.id)
        .where(port_bans.c.banned_from <= now, port_bans.c.banned_until > now,
               releases.c.nominated_at < port_bans.c.banned_from, *_live(now))
        .order_by(releases.c.id, port_bans.c.register, port_bans.c.reference))
    bans: dict[tuple[uuid.UUID, uuid.UUID, uuid.UUID], dict[str, datetime]] = {}
    for rid, holder, driver, terminal, reference, scope, banned_from in rows:
        if not applies_at(scope, terminal):
            continue
        bans.setdefault((rid, holder, driver), {})[reference] = _aware(banned_from)
    return [NominationHit(rid, holder, driver, next(iter(starts))) for (rid, holder, driver), starts in bans.items()
            if not _alerted(conn, rid, driver, starts)]


def _alerted(conn: sa.Connection, release_id: uuid.UUID, driver: uuid.UUID, starts: dict[str, datetime]) -> bool:
    """Does the trail hold an alert on this release naming this driver under one of the bans ``starts``
    (reference: its current start), raised at or after that start? One raised before it announced an
    earlier imposition of the reference (lifted, or postponed, since), not this one."""
    entries = conn.execute(sa.select(audit_log.c.at, audit_log.c.data)
                           .where(audit_log.c.subject == str(release_id), audit_log.c.kind == ALERT_KIND))
    return any(_names(data, driver, starts) and _aware(at) >= starts[data["ban_reference"]] for at, data in entries)


def _names(data: dict[str, Any], driver: uuid.UUID, starts: dict[str, datetime]) -> bool:
    return data.get("driver_person_id") == str(driver) and data.get("ban_reference") in starts


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # a raw SQLite value keeps no zone


def suspension_alerts(conn: sa.Connection, person_id: uuid.UUID, now: datetime) -> list[uuid.UUID]:
    """Queue a screening alert to the holder of each live nomination of ``person_id``, just suspended, in
    the caller's transaction; the rights' ids. The payload says no more than a ban's alert does (the
    driver and the gate's reason), never port security's reason for the suspension."""
    live = _live_of(conn, person_id, now)  # a suspension holds at every port
    SqlOutbox(conn).publish([PublishedEvent(
        id=uuid.uuid4(), type=ALERT_EVENT, release_id=rid, at=now, audience=frozenset({holder}),
        payload={"driver_person_id": str(person_id), "screening": "suspended", "reason": "person_suspended"})
        for rid, holder, _ in live])
    if live:
        log.warning("screening.suspension.nomination_alert")
    return [rid for rid, _, _ in live]


def raise_alerts(conn: sa.Connection, hits: Sequence[NominationHit], now: datetime) -> int:
    """Audit each hit and queue its webhook to the holder, in the caller's transaction; how many."""
    events: list[PublishedEvent] = []
    for hit in hits:
        audit.record(ALERT_KIND, at=now, actor=ACTOR, conn=conn, subject=str(hit.release_id),
                     data={"release_id": str(hit.release_id), "driver_person_id": str(hit.driver_person_id),
                           "holder_organisation_id": str(hit.holder_organisation_id),
                           "ban_reference": hit.ban_reference, "screening": "banned"})
        events.append(PublishedEvent(
            id=uuid.uuid4(), type=ALERT_EVENT, release_id=hit.release_id, at=now,
            audience=frozenset({hit.holder_organisation_id}),
            payload={"driver_person_id": str(hit.driver_person_id), "screening": "banned",
                     "reason": "person_banned"}))
    SqlOutbox(conn).publish(events)
    if hits:
        log.warning("screening.ban.nomination_alert")
    return len(hits)

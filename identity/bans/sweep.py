"""The ban sweep: a ban that starts after it was loaded acts once it starts (docs/port-ban-feed.md).

The loader acts on a ban only when it is new (or amended) and already in effect at the load. A ban
that starts later, or one whose start passed while nothing was loaded, would leave its subject with a
usable badge and his nominations unannounced. Each step does two things, in one transaction:

1. every ban in effect whose subject still holds an active badge goes through the loader's own
   consequences (identity.bans.loader.ban_consequences): the badges turn ``inactive`` (reason
   ``port_ban``) and the person's live nominations are alerted;
2. every live nomination whose driver came under a ban after he was nominated, and which the trail
   shows no alert about under that ban since its current start, is alerted
   (identity.bans.alerts.due_at_start). This is the driver without an active badge (expired,
   suspended, withdrawn since his nomination): step 1 never finds him, but the security office and
   the haulier must hear of him before he reaches the gate (review 78, finding 1). Step 1's alerts
   are already on the trail when step 2 reads it, so a driver with a badge is alerted once, by step 1.

Idempotent: once the badges are inactive the subject is no longer found by step 1, and once a
nomination is alerted step 2 no longer finds it, so a second step does nothing. Replicas sweeping at
once are serialised by the loader's own advisory lock (PostgreSQL; SQLite's BEGIN IMMEDIATE already
serialises writers) and the candidates are read under it, so a step that waited finds nothing left
and raises no second alert. A badge the badge office turns active again while a ban is in effect is
turned inactive again: a banned person holds no usable badge (the badge service refuses that
reactivation itself; this catches a change made around it).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from identity.domain.badges import BadgeStatus
from quaygate.schema import badges, persons, port_bans

from .alerts import due_at_start, raise_alerts
from .loader import LOAD_LOCK_ID, ban_consequences

log = logging.getLogger(__name__)


def sweep_bans_in_effect(engine: sa.Engine, now: datetime) -> int:
    """One step: how many badges were deactivated (0 when none were due; the worker loops on more).
    Nomination alerts are counted in the log, not here: one step raises every one that is due."""
    with engine.connect() as conn:  # the usual answer is none: no write lock taken for it
        if not _due(conn, now) and not due_at_start(conn, now):
            return 0
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LOAD_LOCK_ID)))
        # again under the lock: another replica may have acted meanwhile
        deactivated, alerts = ban_consequences(conn, _due(conn, now), now)
        alerts += raise_alerts(conn, due_at_start(conn, now), now)  # after step 1: it reads step 1's alerts
        if not (deactivated or alerts):
            return 0
    log.warning("screening.ban.sweep.applied",
                extra={"fields": {"badges_deactivated": deactivated, "nomination_alerts": alerts}})
    return deactivated


def _due(conn: sa.Connection, now: datetime) -> list[dict[str, Any]]:
    """Bans in effect whose subject still holds an active badge, as the loader's rows."""
    rows = conn.execute(
        sa.select(port_bans.c.subject_hash, port_bans.c.reference, port_bans.c.scope, port_bans.c.banned_from,
                  port_bans.c.banned_until)
        .join(persons, persons.c.national_id_hash == port_bans.c.subject_hash)
        .where(port_bans.c.banned_from <= now, port_bans.c.banned_until > now,
               sa.exists().where(badges.c.person_id == persons.c.id, badges.c.status == BadgeStatus.ACTIVE.value))
        .order_by(port_bans.c.register, port_bans.c.reference)).mappings()
    return [dict(r) for r in rows]

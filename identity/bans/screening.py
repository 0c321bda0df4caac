"""Port-ban screening over the stored list: the ``identity.domain.screening.BanScreening`` adapter.

Reads the person's ``national_id_hash`` and the bans under it, and lets the pure rule
(identity.domain.bans.screen) say clear / banned / unavailable with the list's age. The same
answer for badge issue (any port) and, with ``port``, for one port. A person with no national
number linked is ``unavailable`` with the reason ``person_unidentified`` (the register cannot name
him), never ``clear``. This adapter exists only once a register is configured (``from_settings``).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from identity.domain.bans import BanCheck, ScreeningStatus, StoredBan, decode_scope, screen
from identity.domain.screening import UNIDENTIFIED, ScreeningResult
from quaygate.schema import ban_feed_state, persons, port_bans

log = logging.getLogger(__name__)

REASONS = {
    ScreeningStatus.CLEAR: (),
    ScreeningStatus.BANNED: ("person_banned",),
    ScreeningStatus.UNAVAILABLE: ("screening_unavailable",),
}


class StoredBanScreening:
    def __init__(self, engine: sa.Engine, *, max_list_age: timedelta) -> None:
        self._engine = engine
        self._max_age = max_list_age

    def screen(self, person_id: uuid.UUID, now: datetime, *, port: str | None = None,
               conn: sa.Connection | None = None) -> ScreeningResult:
        """In ``conn`` (the caller's transaction, under its person lock) when given; else on a
        connection of its own."""
        if conn is not None:
            return screen_person(conn, person_id, now, port=port, max_list_age=self._max_age)
        with self._engine.connect() as own:
            return screen_person(own, person_id, now, port=port, max_list_age=self._max_age)


def screen_person(conn: sa.Connection, person_id: uuid.UUID, now: datetime, *, port: str | None,
                  max_list_age: timedelta) -> ScreeningResult:
    result = ban_check(conn, person_id, now, port=port, max_list_age=max_list_age)
    log.info("screening.ban.%s", result.status.value + (".unidentified" if result.unidentified else ""))
    reasons = (*REASONS[result.status], UNIDENTIFIED) if result.unidentified else REASONS[result.status]
    return ScreeningResult(result.status.value, result.list_age_seconds, reasons)


def ban_check(conn: sa.Connection, person_id: uuid.UUID, now: datetime, *, port: str | None,
              max_list_age: timedelta) -> BanCheck:
    """The pure rule's full answer, with the references of the bans that hit (the console shows them)."""
    issued_at = conn.execute(sa.select(sa.func.max(ban_feed_state.c.issued_at))).scalar()
    subject = conn.execute(sa.select(persons.c.national_id_hash).where(persons.c.id == person_id)).scalar()
    bans: list[StoredBan] = []
    if subject is not None:
        rows = conn.execute(sa.select(port_bans.c.scope, port_bans.c.banned_from, port_bans.c.banned_until,
                                      port_bans.c.reference).where(port_bans.c.subject_hash == subject))
        bans = [StoredBan(decode_scope(s), f, u, r) for s, f, u, r in rows]
    if issued_at is not None and issued_at.tzinfo is None:  # SQLite keeps no zone (quaygate.schema.UTCDateTime)
        issued_at = issued_at.replace(tzinfo=UTC)
    return screen(bans, port=port, now=now, list_issued_at=issued_at, max_list_age=max_list_age,
                  identified=subject is not None)


def from_settings(settings: Any, engine: sa.Engine) -> StoredBanScreening | None:
    """Screening over the stored list once a register is configured (its key set); None before that,
    so a deployment without a register is not refused every badge for want of a list."""
    if not (settings.ban_register_jwk or settings.ban_register_jwk_path):
        return None
    return StoredBanScreening(engine, max_list_age=timedelta(seconds=settings.ban_list_max_age))

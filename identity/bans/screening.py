"""Port-ban screening over the stored list: the ``identity.domain.screening.BanScreening`` adapter.

Reads the person's ``national_id_hash`` and the bans under it, and lets the pure rule
(identity.domain.bans.screen) say clear / banned / unavailable with the list's age. The same
answer for badge issue (any port) and, with ``port``, for one port. A person with no national
number linked is ``unavailable`` with the reason ``person_unidentified`` (the register cannot name
him), never ``clear``. This adapter exists only once a register is configured (``from_settings``).

The logins follow one rule, ``StoredBanScreening.banned`` (review of the driver surface, finding 1): a
person under a ban in force at any port is refused at the brokered login, the passkey login, the first
passkey enrolled with a code, the authorization endpoint and a refresh (identity.oidc.issue
``person_context``), all ``person_banned``. A ban never changes the person's status, so the status
checks alone let him in. ``unavailable`` refuses no one: an old list, no list or an unidentified
person is not a ban, and a login refused for it would lock every driver out while the feed is late.
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

    def banned(self, conn: sa.Connection, person_id: uuid.UUID, now: datetime) -> bool:
        """Is the person under a port ban in force, at any port (screening ``banned``)? The logins' and
        the token issue's rule (module docstring), read in ``conn``, the caller's transaction, after its
        lock on the person's row where it takes one. One statement (``ban_check``)."""
        return self.screen(person_id, now, conn=conn).status == ScreeningStatus.BANNED.value


def screen_person(conn: sa.Connection, person_id: uuid.UUID, now: datetime, *, port: str | None,
                  max_list_age: timedelta) -> ScreeningResult:
    result = ban_check(conn, person_id, now, port=port, max_list_age=max_list_age)
    log.info("screening.ban.%s", result.status.value + (".unidentified" if result.unidentified else ""))
    reasons = (*REASONS[result.status], UNIDENTIFIED) if result.unidentified else REASONS[result.status]
    return ScreeningResult(result.status.value, result.list_age_seconds, reasons)


# The list in force's issue time (ban_feed_state holds a row per register): the one row every read
# below starts from, so it comes back with no person and no ban too.
_LIST = sa.select(sa.func.max(ban_feed_state.c.issued_at).label("issued_at")).subquery("list_in_force")
_PERSON = sa.bindparam("person_id", type_=persons.c.id.type)
# One statement, one round trip (a refresh runs it: identity.oidc.issue ``person_context``): that row,
# the person's national number hash by primary key, and the bans under it by port_bans' subject_hash
# index, a row per ban.
_BAN_CHECK = sa.select(_LIST.c.issued_at, persons.c.national_id_hash, port_bans.c.scope, port_bans.c.banned_from,
                       port_bans.c.banned_until, port_bans.c.reference).select_from(
    _LIST.outerjoin(persons, persons.c.id == _PERSON)
    .outerjoin(port_bans, port_bans.c.subject_hash == persons.c.national_id_hash))


def ban_check(conn: sa.Connection, person_id: uuid.UUID, now: datetime, *, port: str | None,
              max_list_age: timedelta) -> BanCheck:
    """The pure rule's full answer, with the references of the bans that hit (the console shows them)."""
    rows = conn.execute(_BAN_CHECK, {"person_id": person_id}).all()
    issued_at, subject = rows[0][0], rows[0][1]
    bans = [StoredBan(decode_scope(s), f, u, r) for _, _, s, f, u, r in rows if r is not None]
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

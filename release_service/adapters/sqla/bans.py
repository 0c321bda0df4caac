"""The port-ban list read for the release engine, straight from the tables (issue 4).

The register's loader (identity/bans/) owns these tables; the release engine may not import identity
(import-linter), so this adapter reads ``port_bans`` and ``ban_feed_state`` itself, with the same rule
as identity.domain.bans.screen: a ban in effect at ``now`` whose scope is all ports or holds the
terminal's port says ``banned``; otherwise a list missing or older than ``max_list_age`` says
``unavailable``.

"Missing": once a register has ever been loaded into this database, a missing or stale list is
``unavailable``. A database that has never received a feed screens bans only when ``required`` is set
(a deployment with a register configured); until then nomination goes on on the badge check alone,
and says so in the log (``release.screening.ban_list_absent``).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from quaygate.schema import ban_feed_state, persons, port_bans
from release_service.domain.release import Screening

log = logging.getLogger(__name__)

DEFAULT_MAX_LIST_AGE = timedelta(hours=24)  # quaygate.settings ban_list_max_age's default


class SqlPortBanLookup:
    def __init__(self, conn: sa.Connection, *, max_list_age: timedelta = DEFAULT_MAX_LIST_AGE,
                 required: bool = False) -> None:
        self._conn = conn
        self._max_age = max_list_age
        self._required = required

    def screen(self, person_id: uuid.UUID, *, terminal: str, now: datetime) -> Screening:
        port = terminal.split("-", 1)[0].upper()  # terminal codes start with the port's UN/LOCODE
        subject = self._conn.execute(sa.select(persons.c.national_id_hash).where(persons.c.id == person_id)).scalar()
        if subject is not None:
            rows = self._conn.execute(sa.select(port_bans.c.scope).where(
                port_bans.c.subject_hash == subject, port_bans.c.banned_from <= now, port_bans.c.banned_until > now))
            if any(scope == "all" or port in scope.split(",") for (scope,) in rows):
                log.info("release.screening.banned")
                return Screening("banned", ("person_banned",))
        issued_at = self._conn.execute(sa.select(sa.func.max(ban_feed_state.c.issued_at))).scalar()
        if issued_at is None:
            if self._required:
                log.warning("release.screening.unavailable.no_list")
                return Screening("unavailable", ("screening_unavailable",))
            log.info("release.screening.ban_list_absent")
            return Screening("clear")
        if issued_at.tzinfo is None:
            issued_at = issued_at.replace(tzinfo=UTC)
        if now - issued_at > self._max_age:
            log.warning("release.screening.unavailable.stale_list")
            return Screening("unavailable", ("screening_unavailable",))
        return Screening("clear")

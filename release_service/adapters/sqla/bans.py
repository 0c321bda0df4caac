"""The port-ban list read for the release engine, straight from the tables (issue 4).

The register's loader (identity/bans/) owns these tables; the release engine may not import identity
(import-linter), so this adapter reads ``port_bans`` and ``ban_feed_state`` itself and applies the
rule of release_service.domain.screening.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection
from datetime import datetime, timedelta

import sqlalchemy as sa

from quaygate.schema import ban_feed_state, persons, port_bans
from release_service.domain.release import Screening
from release_service.domain.screening import BanWindow, next_ban_start, screen

log = logging.getLogger(__name__)

DEFAULT_MAX_LIST_AGE = timedelta(hours=24)  # quaygate.settings ban_list_max_age's default


class SqlPortBanLookup:
    def __init__(self, conn: sa.Connection, *, max_list_age: timedelta = DEFAULT_MAX_LIST_AGE,
                 required: bool = False) -> None:
        self._conn = conn
        self._max_age = max_list_age
        self._required = required

    def screen(self, person_id: uuid.UUID, *, terminal: str, now: datetime) -> Screening:
        windows, issued_at, identified = self.facts(person_id)
        return self._judge(windows, issued_at, identified, terminal=terminal, now=now)

    def screen_many(self, person_ids: Collection[uuid.UUID], *, terminal: str, now: datetime
                    ) -> dict[uuid.UUID, Screening]:
        """``screen`` for many persons in one statement whatever their number (the gate passes screen every
        nominated driver of a terminal at each fetch): each person's bans and the list in force, joined."""
        return {pid: s for pid, (s, _) in self.screen_ahead_many(person_ids, terminal=terminal, now=now).items()}

    def screen_ahead_many(self, person_ids: Collection[uuid.UUID], *, terminal: str, now: datetime
                          ) -> dict[uuid.UUID, tuple[Screening, datetime | None]]:
        """``screen_many``, each person with the start of his next ban at the terminal's port after ``now``
        (``next_ban_start``; None: none ahead), from the same statement: a gate pass ends there (review
        147, finding 2)."""
        if not person_ids:
            return {}
        # One row at least (the list in force, joined to nobody when none of them is on file), then one per
        # person and ban of his: a person without a number on file, or not on file, is unidentified.
        listed = sa.select(sa.func.max(ban_feed_state.c.issued_at).label("issued_at")).subquery()
        people = (sa.select(persons.c.id, persons.c.national_id_hash, port_bans.c.scope, port_bans.c.banned_from,
                            port_bans.c.banned_until)
                  .select_from(persons.outerjoin(port_bans, port_bans.c.subject_hash == persons.c.national_id_hash))
                  .where(persons.c.id.in_(sorted(person_ids))).subquery())
        rows = self._conn.execute(sa.select(listed.c.issued_at, people).select_from(
            listed.outerjoin(people, sa.true()))).all()
        issued_at = rows[0].issued_at
        windows: dict[uuid.UUID, list[BanWindow]] = {}
        identified: set[uuid.UUID] = set()
        for r in rows:
            if r.id is None:
                continue
            if r.national_id_hash is not None:
                identified.add(r.id)
            if r.scope is not None:
                windows.setdefault(r.id, []).append(BanWindow(r.scope, r.banned_from, r.banned_until))
        return {pid: (self._judge(windows.get(pid, []), issued_at, pid in identified, terminal=terminal, now=now),
                      next_ban_start(windows.get(pid, []), terminal=terminal, after=now))
                for pid in person_ids}

    def _judge(self, windows: list[BanWindow], issued_at: datetime | None, identified: bool, *, terminal: str,
               now: datetime) -> Screening:
        result = screen(windows, issued_at, terminal=terminal, now=now, max_list_age=self._max_age,
                        required=self._required, identified=identified)
        if result.result == "banned":
            log.info("release.screening.banned")
        elif result.result == "unavailable":
            log.warning("release.screening.unavailable." + ("unidentified" if not identified else
                                                            "stale_list" if issued_at else "no_list"))
        elif issued_at is None:
            log.info("release.screening.ban_list_absent")
        return result

    def facts(self, person_id: uuid.UUID) -> tuple[list[BanWindow], datetime | None, bool]:
        """What screening needs: the person's bans (any time, any scope), when the list in force was
        issued (None: no list was ever loaded), and whether the register can name him at all (a national
        register number on file)."""
        subject = self._conn.execute(sa.select(persons.c.national_id_hash).where(persons.c.id == person_id)).scalar()
        windows = [] if subject is None else [
            BanWindow(r.scope, r.banned_from, r.banned_until) for r in self._conn.execute(
                sa.select(port_bans.c.scope, port_bans.c.banned_from, port_bans.c.banned_until)
                .where(port_bans.c.subject_hash == subject))]
        issued_at = self._conn.execute(sa.select(sa.func.max(ban_feed_state.c.issued_at))).scalar()
        return windows, issued_at, subject is not None

    @property
    def policy(self) -> tuple[timedelta, bool]:
        """The screening settings: the list's maximum age and whether a list is required."""
        return self._max_age, self._required

"""Badge rows, their status history and their activations, on one connection (SQLAlchemy Core).

The store only reads and writes inside the caller's transaction; it never commits (STYLE.md #5).
A status change is race-safe twice over: the row is locked (``SELECT ... FOR UPDATE`` on
PostgreSQL), and the UPDATE is conditional on the status read (``WHERE status = :expected``), so a
change computed from a stale status writes nothing (STYLE.md #4: never check-then-act).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from identity.domain.badges import BadgeStatus, StatusChange
from quaygate.invalidation import BADGES, touch
from quaygate.schema import badge_activations, badge_status_events, badges, organisations, persons


@dataclass(frozen=True, slots=True)
class BadgeRow:
    id: uuid.UUID
    person_id: uuid.UUID
    scheme: str
    number: str
    card_uid: str | None
    employer_organisation_id: uuid.UUID | None
    status: BadgeStatus
    status_reason: str | None
    valid_from: datetime
    valid_until: datetime
    created_at: datetime
    updated_at: datetime | None


def _row(r: Any) -> BadgeRow:
    return BadgeRow(r["id"], r["person_id"], r["scheme"], r["number"], r["card_uid"], r["employer_organisation_id"],
                    BadgeStatus(r["status"]), r["status_reason"], r["valid_from"], r["valid_until"], r["created_at"],
                    r["updated_at"])


class BadgeStore:
    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    # ---- reads -----------------------------------------------------------------------------------

    def get(self, badge_id: uuid.UUID, *, lock: bool = False) -> BadgeRow | None:
        stmt = sa.select(badges).where(badges.c.id == badge_id)
        if lock:
            stmt = stmt.with_for_update()  # PostgreSQL row lock; SQLite serialises writers anyway
        r = self._conn.execute(stmt).mappings().first()
        return _row(r) if r else None

    def find_by_number(self, number: str, scheme: str | None = None) -> list[BadgeRow]:
        stmt = sa.select(badges).where(badges.c.number == number)
        if scheme:
            stmt = stmt.where(badges.c.scheme == scheme)
        return [_row(r) for r in self._conn.execute(stmt.order_by(badges.c.created_at)).mappings()]

    def find_by_card_uid(self, card_uid: str) -> list[BadgeRow]:
        stmt = sa.select(badges).where(badges.c.card_uid == card_uid)
        return [_row(r) for r in self._conn.execute(stmt).mappings()]

    def of_person(self, person_id: uuid.UUID, *, lock: bool = False) -> list[BadgeRow]:
        stmt = sa.select(badges).where(badges.c.person_id == person_id).order_by(badges.c.created_at, badges.c.id)
        if lock:
            stmt = stmt.with_for_update()
        return [_row(r) for r in self._conn.execute(stmt).mappings()]

    def person_exists(self, person_id: uuid.UUID) -> bool:
        return self._conn.execute(sa.select(persons.c.id).where(persons.c.id == person_id)).first() is not None

    def organisation_exists(self, organisation_id: uuid.UUID) -> bool:
        stmt = sa.select(organisations.c.id).where(organisations.c.id == organisation_id)
        return self._conn.execute(stmt).first() is not None

    def terminal_exists(self, terminal_code: str) -> bool:
        stmt = sa.select(organisations.c.id).where(organisations.c.terminal_code == terminal_code)
        return self._conn.execute(stmt).first() is not None

    def number_taken(self, scheme: str, number: str) -> bool:
        stmt = sa.select(badges.c.id).where(badges.c.scheme == scheme, badges.c.number == number)
        return self._conn.execute(stmt).first() is not None

    def card_uid_taken(self, card_uid: str) -> bool:
        return self._conn.execute(sa.select(badges.c.id).where(badges.c.card_uid == card_uid)).first() is not None

    def history(self, badge_id: uuid.UUID) -> list[dict[str, Any]]:
        stmt = (sa.select(badge_status_events).where(badge_status_events.c.badge_id == badge_id)
                .order_by(badge_status_events.c.seq))
        return [dict(r) for r in self._conn.execute(stmt).mappings()]

    def live_activations(self, badge_id: uuid.UUID) -> list[dict[str, Any]]:
        stmt = (sa.select(badge_activations)
                .where(badge_activations.c.badge_id == badge_id, badge_activations.c.withdrawn_at.is_(None))
                .order_by(badge_activations.c.terminal_code))
        return [dict(r) for r in self._conn.execute(stmt).mappings()]

    # ---- writes ----------------------------------------------------------------------------------

    def insert(self, *, badge_id: uuid.UUID, person_id: uuid.UUID, scheme: str, number: str, card_uid: str | None,
               employer_organisation_id: uuid.UUID | None, valid_from: datetime, valid_until: datetime,
               issued_by: str, reason: str, now: datetime) -> None:
        touch(self._conn, BADGES)  # the gate's cached badge facts (quaygate/invalidation.py)
        self._conn.execute(badges.insert().values(
            id=badge_id, person_id=person_id, scheme=scheme, number=number, card_uid=card_uid,
            employer_organisation_id=employer_organisation_id, status=BadgeStatus.ACTIVE.value,
            status_reason=reason, valid_from=valid_from, valid_until=valid_until, created_at=now, updated_at=now,
            issued_by=issued_by))

    def due_to_expire(self, now: datetime, *, limit: int) -> list[BadgeRow]:
        """Active or inactive badges whose validity is over, locked and skipped by other sweepers
        (SKIP LOCKED on PostgreSQL: every replica may sweep at once)."""
        stmt = (sa.select(badges).where(badges.c.status.in_(("active", "inactive")), badges.c.valid_until <= now)
                .order_by(badges.c.valid_until).limit(limit).with_for_update(skip_locked=True))
        return [_row(r) for r in self._conn.execute(stmt).mappings()]

    def apply(self, change: StatusChange) -> bool:
        """Write a guarded change: the conditional UPDATE and the next history entry. False when the
        badge's status is no longer ``change.from_status`` (a concurrent change won)."""
        touch(self._conn, BADGES)  # the gate's cached badge facts (quaygate/invalidation.py)
        if change.from_status is None:
            raise ValueError("apply() changes an existing badge; issuing is insert()")
        done = self._conn.execute(
            badges.update()
            .where(badges.c.id == change.badge_id, badges.c.status == change.from_status.value)
            .values(status=change.to_status.value, status_reason=change.reason, updated_at=change.at)
        )
        if done.rowcount != 1:
            return False
        self.append_event(change)
        return True

    def set_validity(self, badge_id: uuid.UUID, expected: BadgeStatus, valid_from: datetime,
                     valid_until: datetime, now: datetime) -> bool:
        touch(self._conn, BADGES)  # the gate's cached badge facts (quaygate/invalidation.py)
        done = self._conn.execute(
            badges.update().where(badges.c.id == badge_id, badges.c.status == expected.value)
            .values(valid_from=valid_from, valid_until=valid_until, updated_at=now))
        return done.rowcount == 1

    def append_event(self, change: StatusChange) -> None:
        last = self._conn.execute(
            sa.select(sa.func.max(badge_status_events.c.seq)).where(badge_status_events.c.badge_id == change.badge_id)
        ).scalar()
        self._conn.execute(badge_status_events.insert().values(
            id=uuid.uuid4(), badge_id=change.badge_id, seq=(last or 0) + 1,
            from_status=change.from_status.value if change.from_status else None, to_status=change.to_status.value,
            actor=change.actor, reason=change.reason, at=change.at))

    def activate(self, badge_id: uuid.UUID, terminal_code: str, *, actor: str, now: datetime) -> uuid.UUID | None:
        """A new live activation, or None when one is live already (the partial unique index)."""
        touch(self._conn, BADGES)  # the gate's cached badge facts (quaygate/invalidation.py)
        live = self._conn.execute(
            sa.select(badge_activations.c.id).where(
                badge_activations.c.badge_id == badge_id, badge_activations.c.terminal_code == terminal_code,
                badge_activations.c.withdrawn_at.is_(None))
        ).first()
        if live is not None:
            return None
        activation_id = uuid.uuid4()
        self._conn.execute(badge_activations.insert().values(
            id=activation_id, badge_id=badge_id, terminal_code=terminal_code, activated_by=actor, activated_at=now))
        return activation_id

    def withdraw(self, badge_id: uuid.UUID, terminal_code: str, *, actor: str, reason: str, now: datetime) -> bool:
        touch(self._conn, BADGES)  # the gate's cached badge facts (quaygate/invalidation.py)
        done = self._conn.execute(
            badge_activations.update()
            .where(badge_activations.c.badge_id == badge_id, badge_activations.c.terminal_code == terminal_code,
                   badge_activations.c.withdrawn_at.is_(None))
            .values(withdrawn_by=actor, withdrawn_at=now, withdraw_reason=reason))
        return done.rowcount == 1

    def activated_at(self, badge_id: uuid.UUID, terminal_code: str) -> bool:
        stmt = sa.select(badge_activations.c.id).where(
            badge_activations.c.badge_id == badge_id, badge_activations.c.terminal_code == terminal_code,
            badge_activations.c.withdrawn_at.is_(None))
        return self._conn.execute(stmt).first() is not None

"""What the gate decision reads and writes, from PostgreSQL (the truth; issue 5).

- ``rights``: every right of the containers the read may be (``reads.container_candidates``), deleted
  ones left out, as ``RightFacts``, each with whether its holder is active and its last gate-in decision
  whose face the service found another person's (``store.FACE_AGAINST``, review 148): one statement.
- ``badge``: the badge read, its holder's name and status (port security's suspension) and the
  terminals where it is activated: one statement (an outer join gives one row per live activation).
- ``screen``: the port-ban screening of the holder (the same lookup as nomination, adapters/sqla/bans).
- ``policy``: the terminal's policy, or the defaults.
- ``find`` / ``record``: the decisions, one per (terminal, request_id).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from identity.domain.badges import BadgeRefused, Scheme, validate_card_uid, validate_number
from quaygate.hotsql import HotStatement, listed, text_array
from quaygate.invalidation import POLICY, RIGHTS, touch
from quaygate.schema import (
    badge_activations,
    badges,
    gate_decisions,
    gate_overrides,
    persons,
    releases,
    terminal_policies,
)
from release_service.domain.gate import (
    BadgeFacts,
    BadgeRead,
    NominationFacts,
    RightFacts,
    ScreeningResult,
    TerminalPolicy,
    customs_holds,
    face_changes_right,
)
from release_service.domain.release import ReleaseRight, State
from release_service.domain.screening import BanWindow
from release_service.ports import DuplicateDecision, RightsRead, StoredDecision

from ..audit import SqlAuditLog
from .bans import SqlPortBanLookup
from .gate_move import record_move, record_statement, split_entries
from .store import FACE_AGAINST, FACE_AGAINST_FROM, FACE_AGAINST_ON, HOLDER_ACTIVE, Reads, face_against_of

_RIGHT_COLUMNS = (
    releases.c.id, releases.c.container_number, releases.c.terminal, releases.c.state, releases.c.blocked,
    releases.c.commercial_status, releases.c.customs_status, releases.c.terminal_status, releases.c.valid_from,
    releases.c.valid_until, releases.c.created_at, releases.c.driver_person_id, releases.c.plate_text,
    releases.c.plate_country, releases.c.nomination_response, releases.c.issuer_organisation_id,
    releases.c.contested_at, HOLDER_ACTIVE, releases.c.customs_set_by,
)
# With each right at the gate, its last gate-in decision whose face the service found another person's
# (review 148). Not in a gate pass (gate_offline.py reads ``_RIGHT_COLUMNS`` alone).
_AT_GATE = sa.select(*_RIGHT_COLUMNS, *FACE_AGAINST).select_from(releases.outerjoin(FACE_AGAINST_FROM, FACE_AGAINST_ON))

_DECISION_COLUMNS = (
    gate_decisions.c.id, gate_decisions.c.fingerprint, gate_decisions.c.response, gate_decisions.c.decision,
    gate_decisions.c.release_id, gate_decisions.c.committed, gate_decisions.c.direction, gate_decisions.c.terminal,
    gate_decisions.c.decided_at, gate_decisions.c.nomination, gate_decisions.c.face,
)


# Prebuilt: the gate's hot path builds no statement per call.
_RIGHTS = _AT_GATE.where(releases.c.container_number.in_(sa.bindparam("containers", expanding=True)),
                         releases.c.state != State.DELETED.value)
# PostgreSQL: the same with an array (= ANY), on the driver's cursor (quaygate.hotsql).
_RIGHTS_PG = HotStatement(_AT_GATE.where(
    releases.c.container_number == sa.any_(text_array("containers")),
    releases.c.state != State.DELETED.value))
_INSERT_DECISION = gate_decisions.insert()


# The cache keys of recent badge reads (``badge_key`` validates the number by its scheme's rules).
_BADGE_KEYS_MAX = 8192
_UNSEEN = object()
_badge_keys: dict[BadgeRead, str | None] = {}


class SqlGateStore:
    def __init__(self, conn: sa.Connection, bans: SqlPortBanLookup, reads: Reads | None = None) -> None:
        self._conn = conn
        self._bans = bans
        self._reads = reads

    # ---- facts ---------------------------------------------------------------------------------

    def rights(self, containers: Sequence[str]) -> list[RightFacts]:
        if not containers:
            return []
        if self._conn.dialect.name == "postgresql":
            rows = _RIGHTS_PG.execute(self._conn, {"containers": listed(containers)}).all()
        else:
            rows = self._conn.execute(_RIGHTS, {"containers": list(containers)}).all()
        return [right_facts(r) for r in rows]

    @staticmethod
    def badge_lookup(read: BadgeRead) -> tuple[Scheme, str | None, str | None] | None:
        """The read as the badge office writes it (scheme, number, card UID), or None when it cannot
        be a badge of that scheme."""
        try:
            scheme = Scheme(read.scheme.strip().lower())
            number = validate_number(scheme, read.number) if read.number else None
            card_uid = validate_card_uid(read.card_uid) if read.card_uid else None
        except (BadgeRefused, ValueError):
            return None
        return scheme, number, card_uid

    @classmethod
    def badge_key(cls, read: BadgeRead) -> str | None:
        """One name for every read that finds the same badge row (the cache's key)."""
        key = _badge_keys.get(read, _UNSEEN)
        if key is _UNSEEN:
            lookup = cls.badge_lookup(read)
            key = None if lookup is None else f"{lookup[0].value}|{lookup[1] or ''}|{lookup[2] or ''}"
            if len(_badge_keys) >= _BADGE_KEYS_MAX:
                _badge_keys.clear()  # a pure function's memo: nothing is lost but time
            _badge_keys[read] = key
        return key

    def badge(self, read: BadgeRead) -> BadgeFacts:
        """The badge as the badge office knows it; not found when the read matches no badge (a misread
        number is not found, so the gate says badge_unknown)."""
        lookup = self.badge_lookup(read)
        if lookup is None:
            return BadgeFacts.not_found()
        scheme, number, card_uid = lookup
        stmt = (
            sa.select(badges.c.id, badges.c.status, badges.c.person_id, badges.c.valid_from, badges.c.valid_until,
                      badges.c.card_uid, persons.c.given_name, persons.c.family_name,
                      persons.c.status.label("holder_status"), badge_activations.c.terminal_code)
            .select_from(badges.join(persons, persons.c.id == badges.c.person_id).outerjoin(
                badge_activations, sa.and_(badge_activations.c.badge_id == badges.c.id,
                                           badge_activations.c.withdrawn_at.is_(None))))
            .where(badges.c.scheme == scheme.value)
        )
        if number:
            stmt = stmt.where(badges.c.number == number)
        if card_uid:
            stmt = stmt.where(badges.c.card_uid == card_uid)  # both given: both must match
        rows = self._conn.execute(stmt).all()
        if not rows:
            return BadgeFacts.not_found()
        first = rows[0]
        return BadgeFacts(
            found=True, status=first.status, person_id=first.person_id, valid_from=first.valid_from,
            valid_until=first.valid_until,
            activated_terminals=frozenset(r.terminal_code for r in rows if r.terminal_code is not None),
            holder_name=f"{first.given_name} {first.family_name}", holder_status=first.holder_status,
            card_uid_on_record=first.card_uid is not None, badge_id=first.id,
        )

    def screen(self, person_id: uuid.UUID, *, terminal: str, now: datetime) -> ScreeningResult:
        return ScreeningResult(self._bans.screen(person_id, terminal=terminal, now=now).result)

    def ban_facts(self, person_id: uuid.UUID) -> tuple[list[BanWindow], datetime | None, bool]:
        return self._bans.facts(person_id)

    @property
    def screening_settings(self) -> tuple[timedelta, bool]:
        return self._bans.policy

    def policy(self, terminal: str) -> TerminalPolicy:
        stored = self._conn.execute(
            sa.select(terminal_policies.c.policy).where(terminal_policies.c.terminal_code == terminal)
        ).scalar()
        return TerminalPolicy.stored(stored) if stored else TerminalPolicy()

    def set_policy(self, terminal: str, policy: TerminalPolicy, *, by: str, now: datetime) -> None:
        values = {"policy": policy_dict(policy), "updated_by": by, "updated_at": now}
        updated = self._conn.execute(
            terminal_policies.update().where(terminal_policies.c.terminal_code == terminal).values(**values)
        ).rowcount
        if not updated:
            self._conn.execute(terminal_policies.insert().values(terminal_code=terminal, **values))
        touch(self._conn, POLICY)

    # ---- decisions -----------------------------------------------------------------------------

    def find(self, terminal: str, request_id: str) -> StoredDecision | None:
        row = self._conn.execute(
            sa.select(*_DECISION_COLUMNS)
            .where(gate_decisions.c.terminal == terminal, gate_decisions.c.request_id == request_id)
        ).first()
        return _stored(row) if row else None

    def get(self, decision_id: uuid.UUID) -> StoredDecision | None:
        row = self._conn.execute(
            sa.select(*_DECISION_COLUMNS)
            .where(gate_decisions.c.id == decision_id)
        ).first()
        return _stored(row) if row else None

    def record(self, row: dict[str, Any]) -> None:
        """Insert a decision; a twin request that committed first raises DuplicateDecision (the caller
        rolls back its whole transaction, gate move included, and answers with the twin's decision).
        Its audit entries (a face match result the gate claimed, port security's badge alarm:
        ``ports.ROW_ENTRIES``) are written with it. A decision whose own
        face the service found another person's is read with its right from now on (``FACE_AGAINST``,
        review 148): the right's copies go."""
        columns, entries = split_entries(row)
        changes = face_changes_right(row)
        if changes is not None:
            touch(self._conn, RIGHTS, changes)
        try:
            if entries and self._conn.dialect.name == "postgresql":  # one statement, all of them
                statement, params = record_statement(row)
                statement.execute(self._conn, params)
                return
            self._conn.execute(_INSERT_DECISION, columns)
        except sa.exc.IntegrityError as exc:
            raise DuplicateDecision(row["request_id"]) from exc
        if entries:  # SQLite: in the same transaction
            SqlAuditLog(self._conn).append_many(entries)

    @property
    def moves_at_once(self) -> bool:
        """Whether ``record_move`` is there: one statement on PostgreSQL (gate_move.py). SQLite has no
        data-modifying CTEs; its writers are serialised by BEGIN IMMEDIATE, so a gate commit there
        saves the right and records the decision statement by statement in its transaction."""
        return self._conn.dialect.name == "postgresql"

    def record_move(self, row: dict[str, Any], right: ReleaseRight,
                    audiences: Sequence[frozenset[uuid.UUID]], read: RightsRead) -> bool:
        """The decision ``row`` and the gate move of ``right`` at once (see gate_move.py): False, with
        nothing written, when the right changed since it was read, or the rights ``read`` beside it did;
        DuplicateDecision as ``record``."""
        return record_move(self._conn, row, right, audiences, read, self._reads)

    def record_override(self, row: dict[str, Any]) -> None:
        self._conn.execute(gate_overrides.insert().values(**row))

    def overridden(self, decision_id: uuid.UUID) -> bool:
        return self._conn.execute(
            sa.select(gate_overrides.c.id).where(gate_overrides.c.decision_id == decision_id)
        ).first() is not None


def right_facts(r: Any) -> RightFacts:
    nomination = None
    if r.driver_person_id is not None and r.plate_text is not None:
        nomination = NominationFacts(r.driver_person_id, r.plate_text, r.plate_country or "",
                                     r.nomination_response or "pending")
    return RightFacts(
        id=r.id, container=r.container_number, terminal=r.terminal, state=r.state, blocked=bool(r.blocked),
        commercial=r.commercial_status, customs=r.customs_status, terminal_light=r.terminal_status,
        valid_from=r.valid_from, valid_until=r.valid_until, created_at=r.created_at, nomination=nomination,
        issuer=r.issuer_organisation_id, contested=r.contested_at is not None,
        holder_active=bool(r.holder_active),  # no such organisation: not active (fail closed)
        customs_held=customs_holds(r.customs_status, r.customs_set_by),
        face_against=face_against_of(r._asdict()),  # None where the statement did not read it
    )


def policy_dict(policy: TerminalPolicy) -> dict[str, Any]:
    """Every field of the policy (a field the domain gains is stored and cached without being listed here)."""
    return {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)}


def _stored(row: Any) -> StoredDecision:
    return StoredDecision(id=row.id, fingerprint=row.fingerprint, response=row.response, decision=row.decision,
                          release_id=row.release_id, committed=row.committed, direction=row.direction,
                          terminal=row.terminal, decided_at=row.decided_at, nomination=row.nomination,
                          face=row.face)

"""Offline gate mode's storage (issue 5): the facts gate passes are made of, and the offline decisions
reconciled from the adapters (``gate_offline_decisions``, one per terminal and request_id).

``pass_subjects`` reads, in five statements whatever the number of rights: the terminal's nominated rights
still valid and its rights gated in since ``gated_in_since``, whose driver is not suspended by port
security and whose holder is not deactivated (review 130), the most relevant first and at most
``limit`` of them; their drivers' badges and live activations; the drivers' names; and the drivers'
port-ban screening, all of them in one statement (``SqlPortBanLookup.screen_ahead_many``, the verify call's
rule), with the start of each one's next ban ahead (a pass ends there, review 147, finding 2).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from quaygate.schema import (
    audit_log,
    badge_activations,
    badges,
    ban_feed_state,
    gate_offline_decisions,
    gate_outbox_marks,
    organisations,
    persons,
    release_events,
    releases,
    terminal_policies,
)
from release_service.domain.gate import PERSON_ACTIVE, ScreeningResult, TerminalPolicy
from release_service.domain.gate_pass import PASS_STATES, OutboxMark
from release_service.domain.release import State
from release_service.domain.screening import banned_within
from release_service.ports import BadgeRef, DuplicateDecision, PassSubject, StoredOfflineDecision

from .bans import DEFAULT_MAX_LIST_AGE, SqlPortBanLookup
from .gate import _RIGHT_COLUMNS, right_facts
from .uow import SqlUnitOfWork

# A terminal's gate policy changes are audited with the whole old and new policy (services/gate_policy.py).
_POLICY_CHANGED = "release.gate_policy.changed"
# Port security's deactivation of an organisation and suspension of a person, as identity audits them
# (identity.organisations, identity.authn.cutoff), subject the organisation's or the person's id.
_DEACTIVATED = "identity.admin.organisation.deactivated"
_SUSPENDED = "identity.admin.person.suspended"
# A ban's consequences, as identity.bans audits them at its load or start: a nomination alert (subject the
# right's id) and each badge of the person deactivated (subject the badge's id, reason ``port_ban``).
_BAN_ALERT = "screening.ban.nomination_alert"
_BADGE_STATUS = "identity.badge.status_changed"
_PORT_BAN = "port_ban"


class SqlGateOfflineStore:
    def __init__(self, conn: sa.Connection, bans: SqlPortBanLookup) -> None:
        self._conn = conn
        self._bans = bans

    # ---- the facts of gate passes ----------------------------------------------------------------

    def pass_subjects(self, terminal: str, *, now: datetime, gated_in_since: datetime, near: timedelta, limit: int
                      ) -> list[PassSubject]:
        t = releases.c
        gated_in = t.state == State.GATED_IN.value
        # The gate decision does not look at slots (domain/gate.py): a truck may come early or late, so a
        # right without a slot, or whose slot lies within ``near`` of now on either side, is as usable now.
        is_near = sa.or_(t.slot_start.is_(None), sa.and_(t.slot_start <= now + near, t.slot_end >= now - near))
        ahead = t.slot_start > now + near
        rows = self._conn.execute(
            # No pass for a suspended driver's nominations (identity.authn.cutoff), nor for the rights of a
            # company port security deactivated (identity.organisations, review 130): offline, the lane would
            # let the truck through on it. The passes the adapter holds are replaced at its next refresh.
            sa.select(*_RIGHT_COLUMNS).select_from(
                releases.join(persons, persons.c.id == t.driver_person_id)
                .join(organisations, organisations.c.id == t.holder_organisation_id)).where(
                t.terminal == terminal, t.state.in_(sorted(PASS_STATES)), persons.c.status == PERSON_ACTIVE,
                organisations.c.active.is_(True),
                # A gated-in right never lapses (release.py ``lapse_if_due``): one whose gate-out was never
                # recorded would have a pass for good. Its gate-out pass only within the longest dwell.
                sa.or_(sa.and_(gated_in, t.gate_in_at >= gated_in_since),
                       sa.and_(sa.not_(gated_in), t.valid_until > now)))
            # The order of ports.GateOfflineStore.pass_subjects: the trucks inside (latest gate-in first),
            # then the rights usable now (the soonest to lapse first), slots further ahead (the nearest
            # first), slots missed long ago (the latest first). The bucket comes first, so the NULLs of the
            # other buckets' keys never mix in.
            .order_by(sa.case((gated_in, 0), (is_near, 1), (ahead, 2), else_=3),
                      sa.case((gated_in, t.gate_in_at), (t.slot_end < now - near, t.slot_end)).desc(),
                      sa.case((ahead, t.slot_start), else_=t.valid_until), t.id)
            .limit(limit)
        ).all()
        rights = [right_facts(r) for r in rows]
        drivers = {r.nomination.driver_person_id for r in rights if r.nomination is not None}
        if not drivers:
            return []
        held: dict[uuid.UUID, list[BadgeRef]] = {}
        for b in self._conn.execute(sa.select(badges).where(badges.c.person_id.in_(drivers))).mappings():
            held.setdefault(b["person_id"], []).append(BadgeRef(
                b["id"], b["person_id"], b["scheme"], b["number"], b["card_uid"], b["status"], b["valid_from"],
                b["valid_until"]))
        ids = [b.id for refs in held.values() for b in refs]
        activations: dict[uuid.UUID, set[str]] = {}
        if ids:
            for badge_id, code in self._conn.execute(
                sa.select(badge_activations.c.badge_id, badge_activations.c.terminal_code).where(
                    badge_activations.c.badge_id.in_(ids), badge_activations.c.withdrawn_at.is_(None))):
                activations.setdefault(badge_id, set()).add(code)
        names = {pid: f"{given} {family}" for pid, given, family in self._conn.execute(
            sa.select(persons.c.id, persons.c.given_name, persons.c.family_name).where(persons.c.id.in_(drivers)))}
        screened = {pid: (ScreeningResult(s.result), ahead)
                    for pid, (s, ahead) in self._bans.screen_ahead_many(drivers, terminal=terminal, now=now).items()}
        out = []
        for right in rights:
            assert right.nomination is not None
            pid = right.nomination.driver_person_id
            refs = tuple(held.get(pid, ()))
            out.append(PassSubject(right, refs, {b.id: frozenset(activations.get(b.id, ())) for b in refs},
                                   names.get(pid), *screened[pid]))
        return out

    def ban_list_as_of(self) -> datetime | None:
        at = self._conn.execute(sa.select(sa.func.max(ban_feed_state.c.issued_at))).scalar()
        if at is not None and at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        return at  # type: ignore[no-any-return]

    # ---- offline decisions -----------------------------------------------------------------------

    def find(self, terminal: str, request_id: str) -> StoredOfflineDecision | None:
        t = gate_offline_decisions.c
        row = self._conn.execute(sa.select(t.id, t.fingerprint, t.response).where(
            t.terminal == terminal, t.request_id == request_id)).first()
        return None if row is None else StoredOfflineDecision(row.id, row.fingerprint, dict(row.response))

    def record(self, row: dict[str, Any]) -> None:
        try:
            self._conn.execute(gate_offline_decisions.insert().values(**row))
        except sa.exc.IntegrityError as exc:
            raise DuplicateDecision(row["request_id"]) from exc

    def last_use(self, release_id: uuid.UUID, event_types: Sequence[str]) -> tuple[uuid.UUID | None, bool]:
        data = self._conn.execute(
            sa.select(release_events.c.data).where(release_events.c.release_id == release_id,
                                                   release_events.c.type.in_(list(event_types)))
            .order_by(release_events.c.seq.desc()).limit(1)).scalar()
        raw = (data or {}).get("decision_id")
        try:
            decision_id = uuid.UUID(str(raw)) if raw else None
        except ValueError:
            decision_id = None
        if decision_id is None:
            return None, False
        offline = self._conn.execute(sa.select(gate_offline_decisions.c.id).where(
            gate_offline_decisions.c.id == decision_id)).first() is not None
        return decision_id, offline


    # ---- adapter outboxes' marks (review 92) -------------------------------------------------------

    def outbox_mark(self, client_id: str, outbox_id: str) -> OutboxMark | None:
        t = gate_outbox_marks.c
        row = self._conn.execute(sa.select(t.seq, t.intact).where(t.client_id == client_id, t.outbox_id == outbox_id)
                                 .with_for_update()).first()
        return None if row is None else OutboxMark(outbox_id, int(row.seq), bool(row.intact))

    def keep_outbox_mark(self, client_id: str, terminal: str, mark: OutboxMark, *, now: datetime) -> None:
        t = gate_outbox_marks.c
        done = self._conn.execute(gate_outbox_marks.update().where(
            t.client_id == client_id, t.outbox_id == mark.outbox_id).values(
            seq=mark.seq, intact=mark.intact, terminal=terminal, seen_at=now))
        if done.rowcount == 0:
            self._conn.execute(gate_outbox_marks.insert().values(
                client_id=client_id, outbox_id=mark.outbox_id, terminal=terminal, seq=mark.seq, intact=mark.intact,
                first_seen_at=now, seen_at=now))

    def outbox_place_used(self, client_id: str, outbox_id: str, seq: int) -> str | None:
        t = gate_offline_decisions.c
        return self._conn.execute(sa.select(t.request_id).where(  # type: ignore[no-any-return]
            t.client_id == client_id, t.outbox_id == outbox_id, t.outbox_seq == seq).limit(1)).scalar()

    def outbox_unreported(self, client_id: str, outbox_id: str) -> list[dict[str, Any]]:
        m, d = gate_outbox_marks.c, gate_offline_decisions.c
        reported = (sa.select(sa.func.max(d.outbox_seq)).where(d.client_id == m.client_id, d.outbox_id == m.outbox_id)
                    .scalar_subquery())
        rows = self._conn.execute(sa.select(m.outbox_id, m.seq, reported.label("reported")).where(
            m.client_id == client_id, m.outbox_id != outbox_id, m.seq > 0).order_by(m.first_seen_at, m.outbox_id))
        return [{"outbox_id": r.outbox_id, "known_seq": int(r.seq),
                 "reported_seq": None if r.reported is None else int(r.reported)}
                for r in rows if r.reported is None or int(r.seq) > int(r.reported)]

    def latest_decided_below(self, client_id: str, outbox_id: str, seq: int) -> datetime | None:
        t = gate_offline_decisions.c
        return self._conn.execute(sa.select(sa.func.max(t.decided_at)).where(  # type: ignore[no-any-return]
            t.client_id == client_id, t.outbox_id == outbox_id, t.outbox_seq < seq)).scalar()

    # ---- the terminal's policy when a truck passed -------------------------------------------------

    def policy_at(self, terminal: str, at: datetime) -> TerminalPolicy:
        """The policy in force at ``at``: the ``old`` of the first change audited after it (a probe of the
        audit trail's subject index), else the one stored now. A field the old policy lacks (one added
        since) takes its default, as the stored policy's would."""
        a = audit_log.c
        old = self._conn.execute(
            sa.select(a.data).where(a.subject == f"terminal:{terminal}", a.kind == _POLICY_CHANGED, a.at > at)
            .order_by(a.at, a.id).limit(1)).scalar()
        stored = old.get("old") if isinstance(old, dict) else self._conn.execute(
            sa.select(terminal_policies.c.policy).where(terminal_policies.c.terminal_code == terminal)).scalar()
        known = {f.name for f in dataclasses.fields(TerminalPolicy)}
        try:
            return TerminalPolicy.stored({k: v for k, v in (stored or {}).items() if k in known})
        except (TypeError, ValueError):
            return TerminalPolicy()

    def cut_off_since(self, organisation_id: uuid.UUID, person_id: uuid.UUID | None, since: datetime
                      ) -> tuple[bool, bool]:
        """Probes of the audit trail's subject index: the status now says nothing of a deactivation or a
        suspension lifted since (review 141, finding 3)."""
        a = audit_log.c

        def audited(kind: str, subject: uuid.UUID | None) -> bool:
            return subject is not None and self._conn.execute(sa.select(sa.literal(1)).where(
                a.subject == str(subject), a.kind == kind, a.at >= since).limit(1)).first() is not None

        return audited(_DEACTIVATED, organisation_id), audited(_SUSPENDED, person_id)

    def banned_between(self, person_id: uuid.UUID, *, terminal: str, release_id: uuid.UUID, since: datetime,
                       until: datetime) -> bool:
        """The bans in force (an ended one is kept), then the audit trail's subject index: a lifted ban's row
        is deleted, its alert on this right and its badge deactivations are not."""
        windows, _, _ = self._bans.facts(person_id)
        if banned_within(windows, terminal=terminal, since=since, until=until):
            return True
        a = audit_log.c
        badge_ids = [str(b) for b in self._conn.execute(
            sa.select(badges.c.id).where(badges.c.person_id == person_id)).scalars()]
        for kind, subjects in ((_BAN_ALERT, [str(release_id)]), (_BADGE_STATUS, badge_ids)):
            if not subjects:
                continue
            for data in self._conn.execute(sa.select(a.data).where(
                    a.subject.in_(subjects), a.kind == kind, a.at >= since, a.at <= until)).scalars():
                if not isinstance(data, dict):
                    continue
                if data.get("driver_person_id") == str(person_id) if kind == _BAN_ALERT else \
                        data.get("reason") == _PORT_BAN:
                    return True
        return False


class SqlOfflineUnitOfWork(SqlUnitOfWork):
    """The release unit of work plus ``offline`` (gate passes and offline decisions), same transaction."""

    def __init__(self, engine: sa.Engine, *, readonly: bool = False,
                 ban_list_max_age: timedelta = DEFAULT_MAX_LIST_AGE, ban_list_required: bool = False) -> None:
        super().__init__(engine, readonly=readonly, ban_list_max_age=ban_list_max_age,
                         ban_list_required=ban_list_required)
        self._max_age, self._required = ban_list_max_age, ban_list_required

    def __enter__(self) -> SqlOfflineUnitOfWork:
        super().__enter__()
        bans = SqlPortBanLookup(self.connection, max_list_age=self._max_age, required=self._required)
        self.offline = SqlGateOfflineStore(self.connection, bans)
        return self

"""Badge use cases: issue (screened), change status, renew, activate and withdraw at a terminal, find.

One transaction per use case (STYLE.md #5): each public method opens ``engine.begin()``, and its
audit entries (``identity.badge.*``) are written in that same transaction, so a change and its
trail commit together or not at all. Errors are ``BadgeError`` with a stable code; the API and the
CLI map codes to problems and messages. Logs are dotted and PII-free (no numbers, no names).

Port-ban screening comes through the ``BanScreening`` port (identity.domain.screening). Until the
port-ban register's adapter is wired, ``NoBanRegister`` stands in and screens everyone ``clear``.

Screening and the write it allows are one act: the writing transaction takes the holder's row lock
first (identity.authn.enrolment ``lock_person``) and screens in that transaction, after the lock.
A ban load takes the same lock before it looks at the person's badges (``deactivate_for_ban``), so
the two run one after the other: either the issue, reactivation or renewal sees the ban and is
refused, or the ban load sees the badge it made usable and deactivates it. Lock order everywhere:
the person's row, then the badge's.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from identity import audit
from identity.authn.enrolment import lock_person
from identity.domain import badges as rules
from identity.domain.badges import BadgeRefused, BadgeStatus, StatusChange
from identity.domain.screening import BANNED, CLEAR, UNIDENTIFIED, BanScreening, ScreeningResult
from quaygate.schema import membership_in_force, memberships, organisations
from release_service.domain.parties import OrgKind

from .store import BadgeRow, BadgeStore

log = logging.getLogger(__name__)

EXPIRY_ACTOR = "system:badge-expiry"  # who the history names when a badge's validity runs out


class BadgeError(Exception):
    """A badge use case refused; ``code`` is stable (domain codes, plus not_found, conflicts, screening)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NoBanRegister:
    """Stand-in BanScreening until the port-ban register is wired: everyone is ``clear``, no list."""

    def screen(self, person_id: uuid.UUID, now: datetime, *, conn: Any = None) -> ScreeningResult:
        return ScreeningResult(CLEAR, None, ())


class _NotClear(Exception):
    """Screening refused inside the writing transaction: raised through it (it rolls back, releasing
    the person's lock), then audited and turned into a BadgeError outside it."""

    def __init__(self, action: str, person_id: uuid.UUID, screening: ScreeningResult) -> None:
        super().__init__(action)
        self.action, self.person_id, self.screening = action, person_id, screening


@dataclass(frozen=True, slots=True)
class Desk:
    """A console officer who activates or withdraws badges (review 144, finding 1): the person, and the
    console roles his token holds that count (identity.api.admin ``AdminCaller.roles``). His token
    carries his roles of every organisation; which terminal he may act at is read from his memberships
    (``_covers``). None for an admin client (the port authority's machine) and the CLI: every terminal."""

    person_id: uuid.UUID
    roles: frozenset[str]


def _covers(conn: sa.Connection, desk: Desk, terminal: str, now: datetime) -> bool:
    """Whether ``desk`` may act at ``terminal``: one of his memberships in force, in an active
    organisation, gives a console role his token holds, in a port_authority organisation (every
    terminal) or in the terminal's own organisation (its security desk). A badge works at a terminal
    once that terminal's security desk activated it there, and the terminal may withdraw it
    (quaygate.schema ``badge_activations``): another terminal's desk does neither."""
    where = sa.or_(organisations.c.kind == OrgKind.PORT_AUTHORITY.value,
                   sa.and_(organisations.c.kind == OrgKind.TERMINAL.value, organisations.c.terminal_code == terminal))
    stmt = (sa.select(memberships.c.organisation_id)
            .join(organisations, organisations.c.id == memberships.c.organisation_id)
            .where(memberships.c.person_id == desk.person_id, memberships.c.role.in_(sorted(desk.roles)),
                   membership_in_force(now), organisations.c.active.is_(True), where)
            .limit(1))
    return conn.execute(stmt).first() is not None


def _at_desk(conn: sa.Connection, desk: Desk | None, terminal: str, now: datetime) -> None:
    """BadgeError ``not_this_terminal`` unless ``desk`` (None: anyone) may act at ``terminal``."""
    if desk is not None and not _covers(conn, desk, terminal, now):
        log.info("identity.badge.activation.refused.not_this_terminal")
        raise BadgeError("not_this_terminal", "A terminal's security desk activates and withdraws badges at "
                         "that terminal only; the port authority at every terminal.")


@dataclass(frozen=True, slots=True)
class IssueBadge:
    person_id: uuid.UUID
    scheme: str
    number: str
    card_uid: str | None
    employer_organisation_id: uuid.UUID | None
    valid_from: datetime
    valid_until: datetime
    reason: str = "issued"


@dataclass(frozen=True, slots=True)
class Issued:
    badge: BadgeRow
    screening: ScreeningResult


def _refused(exc: BadgeRefused) -> BadgeError:
    return BadgeError(exc.code, str(exc))


class BadgeService:
    def __init__(self, engine: sa.Engine, screening: BanScreening | None = None) -> None:
        self._engine = engine
        self._screening = screening or NoBanRegister()

    # ---- issue -----------------------------------------------------------------------------------

    def issue(self, cmd: IssueBadge, *, actor: str, now: datetime) -> Issued:
        try:
            scheme = rules.scheme_of(cmd.scheme)
            number = rules.validate_number(scheme, cmd.number)
            card_uid = rules.validate_card_uid(cmd.card_uid) if cmd.card_uid else None
            rules.check_validity(cmd.valid_from, cmd.valid_until, now=now)
            badge_id = uuid.uuid4()
            first = rules.issued(badge_id, actor=actor, reason=cmd.reason, now=now)
        except BadgeRefused as exc:
            log.info("identity.badge.issue.refused.%s", exc.code)
            raise _refused(exc) from exc
        try:
            with self._engine.begin() as conn:
                store = BadgeStore(conn)
                if lock_person(conn, cmd.person_id) is None:  # the person's lock first (module docstring)
                    raise BadgeError("unknown_person", "No such person.")
                screening = self._screen(conn, cmd.person_id, "issue", now=now)  # issue 4, under the lock
                if cmd.employer_organisation_id and not store.organisation_exists(cmd.employer_organisation_id):
                    raise BadgeError("unknown_organisation", "No such organisation.")
                taken = _taken(store, scheme.value, number, card_uid)
                if taken is not None:
                    raise taken
                store.insert(badge_id=badge_id, person_id=cmd.person_id, scheme=scheme.value, number=number,
                             card_uid=card_uid, employer_organisation_id=cmd.employer_organisation_id,
                             valid_from=cmd.valid_from, valid_until=cmd.valid_until, issued_by=actor,
                             reason=first.reason, now=now)
                store.append_event(first)
                audit.record("identity.badge.issued", at=now, actor=audit.actor_fields(actor),
                             subject=str(badge_id), conn=conn,
                             data={"person_id": str(cmd.person_id), "scheme": scheme.value, "reason": first.reason,
                                   "valid_from": cmd.valid_from.isoformat(),
                                   "valid_until": cmd.valid_until.isoformat(), "screening": screening.status})
                row = store.get(badge_id)
        except _NotClear as refused:
            raise self._refusal(refused, actor=actor, now=now) from None
        except sa.exc.IntegrityError:
            # Two issues at once for two persons (two different locks) both found the number or the
            # card UID free; the second insert then ran into the unique key and waited for the first
            # (uq_badges_scheme_number, uq_badges_card_uid). Once the first committed, its badge is
            # read here, and the loser is refused as a second issue after it is; anything else was
            # not a taken key, and goes on.
            with self._engine.connect() as conn:
                taken = _taken(BadgeStore(conn), scheme.value, number, card_uid)
            if taken is None:
                raise
            log.info("identity.badge.issue.refused.%s", taken.code)
            raise taken from None
        assert row is not None
        log.info("identity.badge.issued")
        return Issued(row, screening)

    def _screen(self, conn: sa.Connection, person_id: uuid.UUID, action: str, *, now: datetime) -> ScreeningResult:
        """Port-ban screening before a badge becomes usable (issued, reactivated, renewed), in the
        writing transaction after the person's lock: a banned person gets no usable badge; with no list
        to screen against we fail closed, and the badge office retries once the register answers; a
        person with no national number linked is refused until it is (the register cannot find him)."""
        screening = self._screening.screen(person_id, now, conn=conn)
        if screening.status != CLEAR:
            raise _NotClear(action, person_id, screening)
        return screening

    def _refusal(self, refused: _NotClear, *, actor: str, now: datetime) -> BadgeError:
        """The refusal, audited in a small transaction of its own once the writing one has rolled back
        (SQLite has one writer at a time)."""
        screening = refused.screening
        if screening.status == BANNED:
            code, message = "person_banned", "The person is under a port ban."
        elif UNIDENTIFIED in screening.reasons:
            code, message = UNIDENTIFIED, ("The person has no national register number linked, so port-ban "
                                           "screening cannot find him: link it first.")
        else:
            code, message = "screening_unavailable", "Port-ban screening is unavailable: try again later."
        log.info("identity.badge.%s.refused.%s", refused.action, code)
        audit.record(f"identity.badge.{refused.action}_refused", at=now, actor=audit.actor_fields(actor),
                     subject=str(refused.person_id), engine=self._engine,
                     data={"code": code, "screening": screening.status,
                           "list_age_seconds": screening.list_age_seconds})
        return BadgeError(code, message)

    def _holder(self, conn: sa.Connection, badge_id: uuid.UUID) -> uuid.UUID:
        """The badge's holder, whose row is then locked (before the badge's: the lock order)."""
        person_id = _row(conn, badge_id).person_id
        lock_person(conn, person_id)
        return person_id

    # ---- status ----------------------------------------------------------------------------------

    def change_status(self, badge_id: uuid.UUID, status: str, *, reason: str, actor: str, now: datetime) -> BadgeRow:
        try:
            target = BadgeStatus(status)
        except ValueError:
            raise BadgeError("invalid_status", f"status is one of {', '.join(s.value for s in BadgeStatus)}") from None
        try:
            with self._engine.begin() as conn:
                store = BadgeStore(conn)
                if target is BadgeStatus.ACTIVE:  # a badge a ban turned inactive must not come back while banned
                    self._screen(conn, self._holder(conn, badge_id), "reactivate", now=now)
                row = store.get(badge_id, lock=True)
                if row is None:
                    raise BadgeError("not_found", "No such badge.")
                try:
                    change = rules.change_status(badge_id, row.status, target, valid_until=row.valid_until,
                                                 actor=actor, reason=reason, now=now)
                except BadgeRefused as exc:
                    log.info("identity.badge.status.refused.%s", exc.code)
                    raise _refused(exc) from exc
                self._apply(conn, store, change, kind="identity.badge.status_changed")
                out = store.get(badge_id)
        except _NotClear as refused:
            raise self._refusal(refused, actor=actor, now=now) from None
        assert out is not None
        log.info("identity.badge.status.%s", target.value)
        return out

    @staticmethod
    def _apply(conn: sa.Connection, store: BadgeStore, change: StatusChange, *, kind: str,
               extra: dict[str, Any] | None = None) -> None:
        if not store.apply(change):
            # Only reachable without the row lock (SQLite): the status moved since we read it.
            log.info("identity.badge.status.refused.concurrent_change")
            raise BadgeError("concurrent_change", "The badge changed meanwhile: read it again.")
        # The why goes to the sealed trail too, not only to the badge's history (review 174, finding 4).
        audit.record(kind, at=change.at, actor=audit.actor_fields(change.actor), subject=str(change.badge_id),
                     conn=conn,
                     data={"from": change.from_status.value if change.from_status else None,
                           "to": change.to_status.value, "reason": change.reason, **(extra or {})})

    # ---- renew -----------------------------------------------------------------------------------

    def renew(self, badge_id: uuid.UUID, *, valid_until: datetime, reason: str, actor: str, now: datetime) -> BadgeRow:
        try:
            with self._engine.begin() as conn:
                store = BadgeStore(conn)
                self._screen(conn, self._holder(conn, badge_id), "renew", now=now)
                row = store.get(badge_id, lock=True)
                if row is None:
                    raise BadgeError("not_found", "No such badge.")
                try:
                    valid_from, until, change = rules.renew(badge_id, row.status, valid_from=row.valid_from,
                                                            valid_until=valid_until, actor=actor, reason=reason,
                                                            now=now)
                except BadgeRefused as exc:
                    log.info("identity.badge.renew.refused.%s", exc.code)
                    raise _refused(exc) from exc
                if not store.set_validity(badge_id, row.status, valid_from, until, now):
                    raise BadgeError("concurrent_change", "The badge changed meanwhile: read it again.")
                if change is not None:
                    self._apply(conn, store, change, kind="identity.badge.status_changed", extra={"renewed": True})
                audit.record("identity.badge.renewed", at=now, actor=audit.actor_fields(actor),
                             subject=str(badge_id), conn=conn,
                             data={"reason": reason.strip(), "valid_from": valid_from.isoformat(),
                                   "valid_until": until.isoformat(),
                                   "previous": {"valid_from": row.valid_from.isoformat(),
                                                "valid_until": row.valid_until.isoformat()}})
                out = store.get(badge_id)
        except _NotClear as refused:
            raise self._refusal(refused, actor=actor, now=now) from None
        assert out is not None
        log.info("identity.badge.renewed")
        return out

    def expire_due(self, now: datetime, *, batch: int = 500) -> int:
        """Turn badges whose validity is over to ``expired`` (the status machine's "validity over"),
        each with its history entry and audit entry; one batch per call, in one transaction. Returns
        how many (the worker loops while there are more)."""
        with self._engine.begin() as conn:
            store = BadgeStore(conn)
            due = store.due_to_expire(now, limit=batch)
            for row in due:
                change = rules.change_status(row.id, row.status, BadgeStatus.EXPIRED, valid_until=row.valid_until,
                                             actor=EXPIRY_ACTOR, reason="validity_over", now=now)
                self._apply(conn, store, change, kind="identity.badge.expired")
        if due:
            log.info("identity.badge.expired", extra={"fields": {"count": len(due)}})
        return len(due)

    # ---- activation per terminal -----------------------------------------------------------------

    def activate(self, badge_id: uuid.UUID, terminal: str, *, actor: str, now: datetime,
                 desk: Desk | None = None) -> uuid.UUID:
        """Activate the badge at ``terminal``; by a console officer (``desk``) only at his own (``_covers``)."""
        with self._engine.begin() as conn:
            store = BadgeStore(conn)
            row = store.get(badge_id, lock=True)
            if row is None:
                raise BadgeError("not_found", "No such badge.")
            if not store.terminal_exists(terminal):
                raise BadgeError("unknown_terminal", "No terminal has this code.")
            _at_desk(conn, desk, terminal, now)
            # Only a badge in use can be activated at a facility; a missing, blocked, revoked or expired
            # one is refused (the gate would refuse it anyway, SPEC.md reason codes).
            if row.status is not BadgeStatus.ACTIVE or now >= row.valid_until:
                code = "badge_expired" if row.status is BadgeStatus.ACTIVE else f"badge_{row.status.value}"
                log.info("identity.badge.activation.refused.%s", code)
                raise BadgeError(code, f"The badge is not in use ({code}).")
            try:
                activation_id = store.activate(badge_id, terminal, actor=actor, now=now)
            except sa.exc.IntegrityError:  # a concurrent activation won the partial unique index
                activation_id = None
            if activation_id is None:
                raise BadgeError("already_activated", "The badge is activated at this terminal already.")
            audit.record("identity.badge.activated", at=now, actor=audit.actor_fields(actor), subject=str(badge_id),
                         conn=conn, data={"terminal": terminal})
        log.info("identity.badge.activated")
        return activation_id

    def withdraw(self, badge_id: uuid.UUID, terminal: str, *, reason: str, actor: str, now: datetime,
                 desk: Desk | None = None) -> None:
        """Withdraw the badge's activation at ``terminal``; by a console officer (``desk``) only at his
        own (``_covers``)."""
        try:
            reason = rules.reason_given(reason)
        except BadgeRefused as exc:
            raise _refused(exc) from None
        with self._engine.begin() as conn:
            store = BadgeStore(conn)
            if store.get(badge_id) is None:
                raise BadgeError("not_found", "No such badge.")
            _at_desk(conn, desk, terminal, now)
            if not store.withdraw(badge_id, terminal, actor=actor, reason=reason, now=now):
                raise BadgeError("not_activated", "The badge is not activated at this terminal.")
            audit.record("identity.badge.activation_withdrawn", at=now, actor=audit.actor_fields(actor),
                         subject=str(badge_id), conn=conn, data={"terminal": terminal, "reason": reason})
        log.info("identity.badge.activation_withdrawn")

    # ---- reads -----------------------------------------------------------------------------------

    def get(self, badge_id: uuid.UUID) -> tuple[BadgeRow, list[dict[str, Any]], list[dict[str, Any]]]:
        """The badge, its live activations and its status history."""
        with self._engine.connect() as conn:
            store = BadgeStore(conn)
            return _row(conn, badge_id), store.live_activations(badge_id), store.history(badge_id)

    def holder(self, badge_id: uuid.UUID) -> uuid.UUID:
        """The badge's holder, in one read (BadgeError not_found): a badge never changes hands."""
        with self._engine.connect() as conn:
            return _row(conn, badge_id).person_id

    def find(self, *, number: str | None = None, card_uid: str | None = None,
             person_id: uuid.UUID | None = None) -> list[BadgeRow]:
        """By number (any scheme, read leniently), card UID or holder."""
        with self._engine.connect() as conn:
            store = BadgeStore(conn)
            if number is not None:
                return store.find_by_number(_canonical_number(number))
            if card_uid is not None:
                try:
                    return store.find_by_card_uid(rules.validate_card_uid(card_uid))
                except BadgeRefused as exc:
                    raise _refused(exc) from exc
            if person_id is not None:
                return store.of_person(person_id)
        raise BadgeError("filter_required", "Give a number, a card UID or a person.")

    def activations(self, badge_id: uuid.UUID) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            return BadgeStore(conn).live_activations(badge_id)


def _taken(store: BadgeStore, scheme: str, number: str, card_uid: str | None) -> BadgeError | None:
    """The refusal of an issue whose number or card UID another badge holds, or None."""
    if store.number_taken(scheme, number):
        return BadgeError("badge_number_taken", "A badge with this number exists already.")
    if card_uid and store.card_uid_taken(card_uid):
        return BadgeError("card_uid_taken", "A badge with this card UID exists already.")
    return None


def _canonical_number(raw: str) -> str:
    """A number as stored, whatever its scheme; an invalid one is still looked up as typed (a
    badge written before the format rules would otherwise be unfindable)."""
    for scheme in rules.Scheme:
        try:
            return rules.validate_number(scheme, raw)
        except BadgeRefused:
            continue
    return raw.strip().upper()


def deactivate_for_ban(conn: sa.Connection, person_id: uuid.UUID, *, reference: str, now: datetime) -> list[uuid.UUID]:
    """A new port ban landed: every active badge of the person turns inactive, reason ``port_ban``.

    Runs in the caller's transaction (the ban load), so the ban and the deactivations commit
    together. The person's row is locked first, then the badges; each change is a guarded,
    conditional update with its history entry and audit entry. Returns the ids of the badges
    deactivated. ``reference`` is the register's reference of the ban; it goes to the audit trail,
    not to the badge.
    """
    store = BadgeStore(conn)
    actor = "port_ban_register"
    done: list[uuid.UUID] = []
    # The person's lock before the badges are read (the lock order, module docstring): an issue,
    # reactivation or renewal screened under it either committed already (its badge is read below and
    # deactivated) or waits, and then screens against this ban once it commits.
    lock_person(conn, person_id)
    for row in store.of_person(person_id, lock=True):
        if row.status is not BadgeStatus.ACTIVE:
            continue
        change = rules.change_status(row.id, row.status, BadgeStatus.INACTIVE, valid_until=row.valid_until,
                                     actor=actor, reason=rules.PORT_BAN_REASON, now=now)
        BadgeService._apply(conn, store, change, kind="identity.badge.status_changed",
                            extra={"ban_reference": reference})
        done.append(row.id)
    if done:
        log.info("identity.badge.deactivated.port_ban")
    return done


def _row(conn: sa.Connection, badge_id: uuid.UUID) -> BadgeRow:
    row = BadgeStore(conn).get(badge_id)
    if row is None:
        raise BadgeError("not_found", "No such badge.")
    return row

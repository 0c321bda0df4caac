"""Offline gate mode, the service side (issue 5): issue gate passes, reconcile offline decisions.

Issue (``GET /gate/v1/passes``): one short-lived signed pass (domain/gate_pass.py) per right nominated
to the caller's terminal, or gated in there within ``max_dwell`` (its gate-out); nothing about any other
terminal; at most ``MAX_PASSES``, the most relevant first (ports.GateOfflineStore.pass_subjects). The
driver's badges go in hashed with scrypt under a random salt per right (``_hash_badges``, review 142).

Reconcile (``POST /gate/v1/offline-decisions``), one transaction per decision, idempotent by
(terminal, request_id). Before it, the badge the lane read is hashed under the pass's salt within a bound
on the hashes at once (``_hash_read``, review 143): none free soon, and nothing is judged (``HashingBusy``)::

    recorded before? ── same fingerprint: the recorded answer; another body: request_id_reused
        v
    the same request_id answered online (the adapter timed out on an answer that did arrive)?
        ── yes: decided_online, that answer stands, nothing moves; an offline allow it did not give
           (a deny, a review, another right) is FLAGGED contradicts_online (still nothing moves)
        v
    not a committed allow (deny, review, check)? ── nothing_to_record (kept, audited)
        v
    a genuine pass of ours, this terminal, this right, valid when decided? ── no: FLAGGED pass_invalid
        v
    the right, locked (FOR UPDATE, so racing reconciles and verifies queue)
        v
    the same offline rules, run on the reported request and that pass alone (gate_pass.pass_refuses),
    allow it? ── no: FLAGGED not_supported_by_pass (the lane's word alone: nothing moves)
        v
    judged by
    gate_pass.judge_use: still before the gate ── gate-in recorded (gate_in at the decision's time;
        refused by the right now (blocked, held, ...) ── an audited override, FLAGGED changed_after_pass;
        the person or truck no longer the pass's (another nomination, the driver banned, his badge
        blocked, revoked or expired, as known now), or no face where the terminal's policy in force when
        the truck passed asked for one (``face_wanting``), or the badge's number alone where it asked for the
        chip (``chip_wanting``), or the service's own face_mismatch on the right standing then
        (``gate.face_standing``, review 148) ── recorded, FLAGGED changed_after_pass with what)
        already used ── FLAGGED used_offline_twice / used_online_meanwhile (the first use stands)
        ended ── FLAGGED changed_after_pass
        v
    record the offline decision (unique per terminal and request_id), audit it; a flag also becomes a
    ``release.gate_offline_flagged`` webhook event for the line, the holder and the terminal, commit

An officer's override of a gate-in the adapter refused offline (review 121, finding 2; gate_adapters/
runtime/overrides.py) is reported as the refused decision with ``override`` (who, why, the adapter's
decision it sets aside), idempotent by (terminal, ``override:<its id>``). The truck is in::

    a genuine pass of ours, this terminal, this right, valid when refused? ── no: FLAGGED pass_invalid
        v
    the refusal it sets aside reported before, word for word (the same request_id, the same report)?
        ── no: FLAGGED not_supported_by_pass (nothing moves: the lane's word alone)
        v
    overridden (``overridden_at``) within OVERRIDE_WITHIN_SECONDS after that refusal, as online? ── no: FLAGGED
        not_supported_by_pass (nothing moves); yes: what follows is judged at overridden_at (never later
        than now), the override's audit entry dated then (review 124, finding 2)
        v
    overridden_at no earlier (CHAIN_SLACK aside) than every decision reported from a lower place of the same
    adapter's outbox chain, taken before it? ── no: its clock was wound back, the time a lie (review 126,
        finding 2): FLAGGED not_supported_by_pass (nothing moves)
        v
    every reason reported, and every reason the pass's own rules give, one an online override may set
    aside (domain/gate.py OVERRIDABLE)? ── no: FLAGGED not_supported_by_pass (nothing moves)
        v
    the badge read, as we know it: another person's than the pass's driver (his badge reads badge_unknown
    offline), or its holder banned or suspended (gate_pass.holder_refusals: driver_mismatch, ...,
    person_banned; online no desk sets these aside)? ── yes: FLAGGED not_supported_by_pass; the truck is
        in, so the right is marked used (an audited override saying the service refused it: no second
        truck takes the right), and port security hears what the badge says (review 124, finding 1)
        v
    judge_use: already used ── FLAGGED used_offline_twice / used_online_meanwhile; ended ── changed_after_pass
        v
    ``override_gate_in`` (audited as an online override, ``release.gate_override``: his reason, and the
    officer beside it, whom only the terminal and port security read); what an online override would have
    refused now (the right blocked or red, the terminal's organisation deactivated, the person or truck no
    longer the pass's) FLAGS it changed_after_pass, the override recorded all the same (no second truck
    takes the right)

An adapter's outbox (review 92; gate_adapters/runtime/outbox.py rule 10) is a sealed chain its adapter
checks; what the chain cannot see, a whole earlier copy of the file put back, we can. Each pass refresh
tells the chain's id and head, each report its place: we keep the highest per gate client and chain
(``gate_outbox_marks``, ``gate_pass.judge_outbox``) and raise port security's alarm
(``release.gate_outbox_alarm`` on the audit trail, ``release.gate.outbox_*`` logged as an error) at a head
that goes back, at one place reported for two decisions, at an outbox its adapter says no longer
holds, and at a new chain while another of the client's told a head above every place it reported from
(``outbox_replaced``, review 155). A chain we never saw is audited (``release.gate_outbox_new``): an
outbox deleted and started afresh shows so. Alarms never refuse: the passes still go out (they carry
what we know, the uses reconciled included) and the decisions are judged as ever.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from release_service.domain import gate as g
from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.gate_pass import (
    LIGHTS_CHANGED,
    PASS_TYP,
    SALT_BYTES,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    BadgeHash,
    BadgeProof,
    Flag,
    GatePass,
    HashBadge,
    OutboxAlarm,
    OutboxMark,
    PassRefused,
    UsedBy,
    Verdict,
    changed_since_pass,
    chip_wanting,
    face_wanting,
    held_since_pass,
    holder_refusals,
    judge_outbox,
    judge_use,
    pass_covers,
    pass_life,
    pass_refuses,
)
from release_service.domain.parties import Actor
from release_service.domain.release import ReleaseRight, State
from release_service.ports import (
    BadgeHasher,
    DuplicateDecision,
    OfflineUnitOfWork,
    PassSigner,
    PassSubject,
    PublishedEvent,
    StoredDecision,
    StoredOfflineDecision,
)

from .common import acting_organisation_active, persist
from .gate import override_alarm
from .verify import require_gate_of

log = logging.getLogger(__name__)

FLAG_EVENT = "release.gate_offline_flagged"
OUTBOX_ALARM_EVENT = "release.gate_outbox_alarm"
# The events that record a use of the right in each direction (release.py).
_MOVES = {g.Direction.IN: ("release.gated_in", "release.gate_override"), g.Direction.OUT: ("release.completed",)}
# Why an override is not supported when the refusal it names was never reported as it says, and when it came
# more than ``gate.OVERRIDE_WITHIN_SECONDS`` after that refusal, or before it (``pass_says``).
NO_REFUSAL = "refusal_not_reported"
OVERRIDE_LATE = "override_too_late"
OVERRIDE_EARLY = "override_before_refusal"
# ... and when it says it came before a decision its adapter took before it (review 126, finding 2).
OVERRIDE_BEHIND_CHAIN = "override_before_earlier_decision"
# The times of one adapter's reports are its reckoning of our clock, anchored at different pass refreshes,
# each up to a call's length off: decisions in chain order may disagree by that much, never by minutes.
CHAIN_SLACK = timedelta(seconds=60)


# ---- issue ---------------------------------------------------------------------------------------

# The most passes one answer carries. A pass lives minutes (QUAYGATE_GATE_PASS_TTL, at most an hour), so an
# answer is used for the trucks inside the terminal and those due before the next one: hundreds at a busy
# terminal, not thousands. Each costs a signature here and a verification on the gate PC at every refresh
# (60 s), and any gate client may fetch in a loop: past the cap the least relevant are left out (the order
# of ports.GateOfflineStore.pass_subjects), and it is logged.
MAX_PASSES = 2000
# Within the cap, a right whose slot lies this near to now (either side) counts as usable now, with the
# rights without a slot: the gate does not judge slots, and trucks come hours early or late.
NEAR_SLOT = timedelta(hours=4)
# A pass's badges are hashed with scrypt (domain/gate_pass.py ``BadgeHash``, review 142): some 65 ms each.
# A right's hashes are kept (``BadgeHashKeeper``: the shared cache) under its driver, so each is computed
# once, not at every fetch (60 s) of every adapter from every replica; one answer computes at most this
# many new ones, the most relevant passes first, and leaves the passes still due out of this answer
# (offline: no pass, a review) for the next fetch: no gate client fetching in a loop, nor the first fetch
# of a busy terminal, holds a core for minutes, and the answer comes within an adapter's timeout (2 s).
MAX_NEW_BADGE_HASHES = 16
_Hashed = tuple[BadgeHash, tuple[tuple[str | None, str | None], ...]]


class BadgeHashKeeper(Protocol):
    """Where a right's badge hashes are kept between fetches (adapters/pass_hashes.py), by key: its salt
    and parameters and, per badge id, the hashes of its number and card UID (a badge's number and card UID
    never change). One that cannot answer keeps nothing: the hashes are computed again."""

    def get(self, keys: Sequence[str]) -> list[Mapping[str, Any] | None]: ...

    def put(self, entries: Mapping[str, Mapping[str, Any]]) -> None: ...


def issue_passes(uow_factory: Callable[[], OfflineUnitOfWork], actor: Actor, *, signer: PassSigner, issuer: str,
                 ttl: timedelta, max_dwell: timedelta, now: datetime, outbox: OutboxMark | None = None,
                 hashes: BadgeHashKeeper | None = None) -> dict[str, Any]:
    """The body of GET /gate/v1/passes: the passes of the caller's terminal, signed, at most MAX_PASSES.
    ``max_dwell``: a right gated in longer ago gets no gate-out pass (QUAYGATE_GATE_PASS_MAX_DWELL).
    ``outbox``: the adapter's outbox chain and its head, kept as its mark (module docstring).
    ``hashes``: where the badges' hashes are kept between fetches (None: nowhere)."""
    terminal = actor.terminal_code or ""
    require_gate_of(actor, terminal)
    with uow_factory() as uow:
        subjects = uow.offline.pass_subjects(terminal, now=now, gated_in_since=now - max_dwell, near=NEAR_SLOT,
                                             limit=MAX_PASSES + 1)
        subjects = _seen_beside(uow, subjects, terminal, now)
        as_of = uow.offline.ban_list_as_of()
        policy = uow.gate.policy(terminal)
        if outbox is not None:
            _note_outbox(uow, actor, terminal, outbox, head=True, now=now)
            uow.commit()
    if len(subjects) > MAX_PASSES:
        log.warning("release.gate.passes_capped", extra={"fields": {"terminal": terminal, "cap": MAX_PASSES}})
        subjects = subjects[:MAX_PASSES]
    issued = now.replace(microsecond=0)
    expires = issued + ttl
    hashed, due = _hash_badges(subjects, hashes)
    if due:
        log.warning("release.gate.passes_deferred", extra={"fields": {"terminal": terminal, "count": due}})
    tokens = [signer.sign(make_pass(s, terminal, policy, as_of, issued, expires, h).to_claims(issuer))
              for s, h in zip(subjects, hashed, strict=True) if h is not None]
    log.info("release.gate.passes_issued", extra={"fields": {"terminal": terminal, "count": len(tokens)}})
    return {"terminal": terminal, "typ": PASS_TYP, "issued_at": issued, "expires_at": expires,
            "ban_list_as_of": as_of, "passes": tokens}


def _seen_beside(uow: OfflineUnitOfWork, subjects: list[PassSubject], terminal: str, now: datetime
                 ) -> list[PassSubject]:
    """The subjects, each right marked with what the container's other rights say of it, which the adapter
    cannot see (it holds passes for nominated rights only): contested when another line holds a live right
    on its container here (``gate.contested``), else offline it would let the other line's driver in; and
    held, its customs light the hold, when customs holds another right of the container
    (``gate.container_held``), else offline it would let out the container customs wants to scan."""
    containers = sorted({s.right.container for s in subjects})
    if not containers:
        return subjects
    rights = uow.gate.rights(containers)
    out = []
    for s in subjects:
        right = s.right
        if g.contested(rights, right, terminal=terminal, now=now):
            right = replace(right, contested=True)
        held = g.container_held(rights, right, now=now)
        if held is not None and right.customs == g.GREEN:
            right = replace(right, customs=held.customs, customs_held=True)
        out.append(s if right is s.right else replace(s, right=right))
    return out


def _hash_badges(subjects: list[PassSubject], keeper: BadgeHashKeeper | None) -> tuple[list[_Hashed | None], int]:
    """Each subject's salt and badge hashes (None: due, left for a later answer) and how many are due: as
    kept, the badges not kept yet hashed under the same salt, up to MAX_NEW_BADGE_HASHES new hashes in all
    (the first subject's always); what was hashed is kept."""
    keys = [f"{s.right.id}:{s.right.nomination.driver_person_id if s.right.nomination else ''}" for s in subjects]
    kept = keeper.get(keys) if keeper is not None and keys else [None] * len(keys)
    out: list[_Hashed | None] = []
    made: dict[str, Mapping[str, Any]] = {}
    spent = due = 0
    for s, key, entry in zip(subjects, keys, kept, strict=True):
        hashing, known = _kept(entry)
        missing = [b for b in s.badges if str(b.id) not in known]
        cost = sum(1 + bool(b.card_uid) for b in missing)
        if missing and spent and spent + cost > MAX_NEW_BADGE_HASHES:
            due += 1
            out.append(None)
            continue
        if hashing is None:
            hashing = BadgeHash(os.urandom(SALT_BYTES))
        for b in missing:
            known[str(b.id)] = (hashing.of(b.scheme, b.number),
                                hashing.of(b.scheme, b.card_uid) if b.card_uid else None)
        if missing:
            spent += cost
            made[key] = {**hashing.claims(), "badges": {k: list(v) for k, v in known.items()}}
        out.append((hashing, tuple(known[str(b.id)] for b in s.badges)))
    if made and keeper is not None:
        keeper.put(made)
    return out, due


def _kept(entry: Mapping[str, Any] | None) -> tuple[BadgeHash | None, dict[str, tuple[str | None, str | None]]]:
    """A kept entry's salt and hashes; nothing of one made under other parameters than ours now, or unreadable."""
    if entry is None:
        return None, {}
    try:
        hashing = BadgeHash.from_claims(entry)
        known = {str(k): (_hash(v[0]), _hash(v[1])) for k, v in entry["badges"].items()}
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None, {}
    if (hashing.n, hashing.r, hashing.p) != (SCRYPT_N, SCRYPT_R, SCRYPT_P):
        return None, {}
    return hashing, known


def _hash(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError("a hash is a string")
    return value


def make_pass(s: PassSubject, terminal: str, policy: g.TerminalPolicy, ban_list_as_of: datetime | None,
              issued: datetime, expires: datetime, hashed: _Hashed) -> GatePass:
    """``hashed``: the salt of this right's passes and its badges' hashes under it (``_hash_badges``)."""
    hashing, digests = hashed
    # A ban the service holds that starts within the pass's life ends the pass there (review 147, finding 2).
    expires, screening = pass_life(s.screening, issued_at=issued, expires_at=expires, next_ban=s.next_ban)
    badges = tuple(BadgeProof(
        scheme=b.scheme, number_digest=number, card_uid_digest=uid, status=b.status,
        valid_from=b.valid_from, valid_until=b.valid_until, activated_terminals=s.activations.get(b.id, frozenset()),
    ) for b, (number, uid) in zip(s.badges, digests, strict=True))
    return GatePass(pass_id=str(uuid.uuid4()), terminal=terminal, issued_at=issued, expires_at=expires,
                    right=s.right, badges=badges, holder=g.mask_name(s.holder_name), screening=screening,
                    ban_list_as_of=ban_list_as_of, policy=policy, badge_hash=hashing)


# ---- reconcile -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfflineOverride:
    """An officer's override of a gate-in the adapter refused offline (module docstring)."""

    id: uuid.UUID  # the adapter's id for it: the report's key, ``override:<id>``
    officer: str
    reason: str
    decision_id: uuid.UUID  # the adapter's offline decision it sets aside
    overridden_at: datetime  # when the officer let the truck in, on the refusal's clock (review 124, finding 2)
    # The fingerprint the refused report it sets aside (the same report, without ``override``) was recorded
    # under: that refusal must have been reported, as it was (review 124, finding 1).
    refusal_fingerprint: str


@dataclass(frozen=True, slots=True)
class OfflineReport:
    """An offline decision as the adapter reports it: what the gate saw, and what it decided locally."""

    request: g.GateRequest
    decision: g.Outcome
    reasons: tuple[g.Reason, ...]  # published codes only, each once (the route refuses any other text)
    release_id: uuid.UUID | None
    basis: str
    decided_at: datetime
    ban_list_age_seconds: int | None
    pass_token: str | None
    outbox: OutboxMark | None = None  # its place in the adapter's outbox chain, when told
    override: OfflineOverride | None = None  # the refusal reported, set aside by an officer at the lane
    face: dict[str, Any] | None = None  # the face evidence it weighed, as the adapter says (gate.FaceRecord)

    @property
    def key(self) -> str:
        """What the report is recorded under: the request's id, or its override's (one refusal, then the
        officer's word on it, are two reports)."""
        return self.request.request_id if self.override is None else f"override:{self.override.id}"


def reconcile(uow_factory: Callable[[], OfflineUnitOfWork], actor: Actor, report: OfflineReport, *,
              signer: PassSigner, issuer: str, fingerprint: str, now: datetime,
              hasher: BadgeHasher | None = None) -> dict[str, Any]:
    """The body of POST /gate/v1/offline-decisions (see the module docstring). ``hasher``: where the badge
    read is hashed under the pass's salt (``_hash_read``; None: right here, unbounded). Raises
    ``HashingBusy`` (nothing judged, nothing recorded) when the hasher has no slot for it."""
    req = report.request
    require_gate_of(actor, req.terminal)
    gate_pass = _genuine(report.pass_token, signer, issuer, req.terminal)
    hash_badge = _hash_read(report, gate_pass, hasher)
    for _ in range(2):  # the second round only when a twin recorded first
        with uow_factory() as uow:
            stored = uow.offline.find(req.terminal, report.key)
            if stored is not None:
                return _replay(stored, fingerprint)
            decision_id = uuid.uuid4()
            if report.outbox is not None:
                _note_place(uow, actor, req, report.outbox, now)
            report = _of_terminal(uow, report)
            j = _judge(uow, actor, report, gate_pass, decision_id, now, hash_badge)
            verdict, flag = j.verdict, j.flag
            body = {"offline_decision_id": str(decision_id), "request_id": report.key,
                    "release_id": str(report.release_id) if report.release_id else None,
                    "verdict": verdict.value, "flag": flag.value if flag else None,
                    "other_decision_id": str(j.other) if j.other else None}
            try:
                uow.offline.record(_row(actor, report, decision_id, fingerprint, verdict, flag, j.other, body, now)
                                   | {"pass_id": gate_pass.pass_id if gate_pass else None})
            except DuplicateDecision:
                continue
            _announce(uow, actor, report, body, j, now)
            uow.commit()
        event = f"release.verify.offline.{verdict.value}" + (f".{flag.value}" if flag else "")
        (log.warning if flag else log.info)(event, extra={"fields": {"terminal": req.terminal, "lane": req.lane,
                                                                     "offline_decision_id": str(decision_id)}})
        return body
    raise DomainError(ErrorCode.REQUEST_ID_REUSED, "This request_id is being used by another request.")


def _note_outbox(uow: OfflineUnitOfWork, actor: Actor, terminal: str, told: OutboxMark, *, head: bool,
                 now: datetime) -> None:
    """Keep the highest place this client's outbox told (``judge_outbox``); a chain never seen is audited, an
    alarm goes to port security (module docstring)."""
    client = actor.client_id or ""
    known = uow.offline.outbox_mark(client, told.outbox_id)
    mark, alarm = judge_outbox(known, told, head=head)
    uow.offline.keep_outbox_mark(client, terminal, mark, now=now)
    data = {"terminal": terminal, "client_id": client, "outbox_id": told.outbox_id, "told_seq": told.seq,
            "known_seq": None if known is None else known.seq, "intact": told.intact}
    if known is None:
        log.info("release.gate.outbox_new", extra={"fields": data})
        uow.audit.append("release.gate_outbox_new", actor=actor.as_dict(), subject=None, data=data, at=now)
        # Review 155, finding 1: another chain of this client told a head above every place it reported
        # from: those decisions went with the old file, unreported. (A chain emptied in the outage that
        # decided on it, before any refresh told its head, leaves nothing here to see: the adapter's pass
        # store sees it, and tells it as not intact.)
        unreported = uow.offline.outbox_unreported(client, told.outbox_id)
        if unreported:
            _outbox_alarm(uow, actor, OutboxAlarm.REPLACED, {**data, "unreported": unreported}, now)
    if alarm is not None:
        _outbox_alarm(uow, actor, alarm, data, now)


def _note_place(uow: OfflineUnitOfWork, actor: Actor, req: g.GateRequest, told: OutboxMark, now: datetime) -> None:
    """A new report's place: one already recorded for another decision says the file went back and decided
    again (the decisions after that place, as first written, were lost)."""
    other = uow.offline.outbox_place_used(actor.client_id or "", told.outbox_id, told.seq)
    if other is not None and other != req.request_id:
        _outbox_alarm(uow, actor, OutboxAlarm.ROLLED_BACK, {
            "terminal": req.terminal, "client_id": actor.client_id, "outbox_id": told.outbox_id,
            "told_seq": told.seq, "request_id": req.request_id, "other_request_id": other}, now)
    _note_outbox(uow, actor, req.terminal, told, head=False, now=now)


def _outbox_alarm(uow: OfflineUnitOfWork, actor: Actor, alarm: OutboxAlarm, data: dict[str, Any],
                  now: datetime) -> None:
    log.error("release.gate.%s", alarm.value, extra={"fields": data})
    uow.audit.append(OUTBOX_ALARM_EVENT, actor=actor.as_dict(), subject=None, data={**data, "alarm": alarm.value},
                     at=now)


def _of_terminal(uow: OfflineUnitOfWork, report: OfflineReport) -> OfflineReport:
    """``report`` with its release id dropped when it names a right of another terminal: a gate client
    speaks for its own terminal's rights only. Judged as naming none (an allow is flagged
    ``pass_invalid``), nothing is written about that right nor announced to its parties: else any gate
    client could raise false alarms on any terminal's rights, and learn from its own webhook that an id
    exists (review 77)."""
    rid = report.release_id
    if rid is None:
        return report
    right = uow.releases.get(rid)
    if right is None or right.terminal == report.request.terminal:
        return report
    log.warning("release.verify.offline.foreign_right", extra={"fields": {
        "terminal": report.request.terminal, "release_id": str(rid)}})
    return replace(report, release_id=None)


def _hash_read(report: OfflineReport, gate_pass: GatePass | None, hasher: BadgeHasher | None) -> HashBadge | None:
    """The pass's hashes of the badge the lane read, taken now, before the transaction: how the judgment
    hashes it (``pass_refuses``' ``hash_badge``). Review 143: a hash costs some 65 to 130 ms of CPU, and a
    gate client may post reports as fast as it likes, so the hasher bounds the hashes at once and remembers
    what it hashed (adapters/badge_hashing.py): a report it has no slot for raises ``HashingBusy`` here,
    before anything is written. Taken inside the transaction, a hash (and its wait for a slot) held a
    database connection and the right's row lock (SQLite's whole write lock) all along.

    Which values to hash is the pass's own rules' to say, not ours: they are run once ahead on the report
    (the badge read is hashed whatever the right's state, ``pass_refuses``), with the hasher; the judgment
    then finds each hash here. Only for a report the judgment holds to its pass (an allow to commit, an
    override) on a pass that hashes its badges; any other asks nothing of the hasher."""
    req = report.request
    if (hasher is None or gate_pass is None or gate_pass.badge_hash is None or req.badge is None
            or (report.override is None and (report.decision is not g.Outcome.ALLOW or req.mode is not g.Mode.COMMIT))):
        return None
    taken: dict[tuple[bytes, str, str], str] = {}

    def ahead(hashing: BadgeHash, scheme: str, value: str) -> str:
        taken[hashing.salt, scheme, value] = digest = hasher.of(hashing, scheme, value)
        return digest

    pass_refuses(gate_pass, req, decided_at=report.decided_at, state=gate_pass.right.state, hash_badge=ahead)

    def recalled(hashing: BadgeHash, scheme: str, value: str) -> str:
        found = taken.get((hashing.salt, scheme, value))
        return found if found is not None else hasher.of(hashing, scheme, value, wait=False)
    return recalled


def _genuine(token: str | None, signer: PassSigner, issuer: str, terminal: str) -> GatePass | None:
    claims = signer.verify(token) if token else None
    if claims is None:
        return None
    try:
        return GatePass.from_claims(claims, issuer=issuer, terminal=terminal)
    except PassRefused:
        return None


def _replay(stored: StoredOfflineDecision, fingerprint: str) -> dict[str, Any]:
    if stored.fingerprint != fingerprint:
        raise DomainError(ErrorCode.REQUEST_ID_REUSED,
                          "This request_id was already reported with another offline decision.")
    return dict(stored.response)


@dataclass(frozen=True, slots=True)
class _Judged:
    verdict: Verdict
    flag: Flag | None = None
    other: uuid.UUID | None = None  # the decision that used the right first, or the online twin
    right: Any = None  # the right, when known: a flag is announced to its parties
    pass_says: tuple[str, ...] = ()  # not_supported_by_pass: why the pass's rules refuse (for the audit)
    changed: tuple[str, ...] = ()  # changed_after_pass: what the pass said that no longer holds (ditto)
    badge_says: tuple[str, ...] = ()  # an override's badge: what refuses the person who held it (ditto)
    holder: uuid.UUID | None = None  # that person, for the audit trail only (port security's to settle)


def _judge(uow: OfflineUnitOfWork, actor: Actor, report: OfflineReport, gate_pass: GatePass | None,
           decision_id: uuid.UUID, now: datetime, hash_badge: HashBadge | None = None) -> _Judged:
    req = report.request
    if report.override is not None:
        return _judge_override(uow, actor, report, gate_pass, decision_id, now, hash_badge)
    allowed = report.decision is g.Outcome.ALLOW
    online = uow.gate.find(req.terminal, req.request_id)
    if online is not None:
        # The online answer stands. But a barrier opened offline on an allow that answer did not give
        # (a block or ban after the last refresh, answered after the client's timeout) must be known.
        if not allowed or _same_allow(online, report):
            return _Judged(Verdict.DECIDED_ONLINE, other=online.id)
        subject = report.release_id or online.release_id
        return _Judged(Verdict.FLAGGED, Flag.CONTRADICTS_ONLINE, online.id,
                       uow.releases.get(subject) if subject else None)
    if not allowed or req.mode is not g.Mode.COMMIT:
        return _Judged(Verdict.NOTHING_TO_RECORD)
    right = uow.releases.get(report.release_id, for_update=True) if report.release_id else None
    if right is None or gate_pass is None or not pass_covers(
            gate_pass, terminal=req.terminal, release_id=report.release_id, decided_at=report.decided_at,
            right_created_at=right.created_at):
        return _Judged(Verdict.FLAGGED, Flag.PASS_INVALID, right=right)
    incoming = req.direction is g.Direction.IN
    # The move happened when the adapter decided (within the pass's life, never in our future): a right
    # that lapsed between the offline allow and this reconcile was still valid when the truck passed.
    at = min(max(report.decided_at, gate_pass.issued_at), now)
    state = right.effective_state(at).value
    # A genuine pass is not a genuine allow: the lane's PC may report any read. The same pure rules the
    # adapter runs must allow this request from this pass, or the allow is the lane's word alone.
    refused = pass_refuses(gate_pass, req, decided_at=report.decided_at, state=state, hash_badge=hash_badge)
    if refused:
        return _Judged(Verdict.FLAGGED, Flag.NOT_SUPPORTED_BY_PASS, right=right, pass_says=refused)
    used_id, used_offline = uow.offline.last_use(right.id, _MOVES[req.direction])
    verdict, flag = judge_use(direction=req.direction, state=state,
                              used_by=UsedBy.OFFLINE if used_offline else UsedBy.ONLINE)
    if verdict is not Verdict.RECORD:
        return _Judged(verdict, flag, used_id, right)
    # The terminal's policy when the truck passed may ask for a face, or the badge's chip, the pass's, issued
    # before, did not.
    policy = uow.offline.policy_at(req.terminal, at)
    chip = chip_wanting(policy, req.badge, uow.gate.badge(req.badge)) if policy.badge_chip_required else ()
    changed = (*_changed_since_pass(uow, gate_pass, right, req, at, now), *face_wanting(policy, req.face), *chip)
    try:
        if incoming:
            right.gate_in(by=actor, now=at, decision_id=decision_id)
        else:
            right.gate_out(by=actor, now=at, decision_id=decision_id)
    except DomainError as exc:
        if not incoming:
            return _Judged(Verdict.FLAGGED, Flag.CHANGED_AFTER_PASS, right=right)
        # The truck is in: mark the right used (an audited override), so no second truck takes it.
        right.override_gate_in(by=actor, now=at, decision_id=decision_id,
                               reason=f"offline gate pass {gate_pass.pass_id}; the right now says {exc.code.value}")
        persist(uow, right)
        return _Judged(Verdict.FLAGGED, Flag.CHANGED_AFTER_PASS, right=right, changed=changed)
    persist(uow, right)
    if changed:  # the truck passed, and is recorded so; what the pass no longer says goes to security
        return _Judged(Verdict.FLAGGED, Flag.CHANGED_AFTER_PASS, right=right, changed=changed)
    return _Judged(Verdict.RECORD, right=right)


def _judge_override(uow: OfflineUnitOfWork, actor: Actor, report: OfflineReport, gate_pass: GatePass | None,
                    decision_id: uuid.UUID, now: datetime, hash_badge: HashBadge | None = None) -> _Judged:
    """An officer's override of an offline refusal (module docstring): the truck is in on his word, so it
    is recorded as an online override is, unless the pass does not back it or the right was used."""
    req, o = report.request, report.override
    assert o is not None
    right = uow.releases.get(report.release_id, for_update=True) if report.release_id else None
    if (right is None or gate_pass is None or req.direction is not g.Direction.IN
            or report.decision is g.Outcome.ALLOW or not pass_covers(
                gate_pass, terminal=req.terminal, release_id=report.release_id, decided_at=report.decided_at,
                right_created_at=right.created_at)):
        return _Judged(Verdict.FLAGGED, Flag.PASS_INVALID, right=right)
    # The refusal it sets aside must be one the adapter reported (its reports go oldest first, one by one:
    # the refusal before its override), and this very one: an override naming a refusal never heard of, or
    # another request, is the lane's word alone.
    refusal = uow.offline.find(req.terminal, req.request_id)
    if refusal is None or refusal.fingerprint != o.refusal_fingerprint:
        return _Judged(Verdict.FLAGGED, Flag.NOT_SUPPORTED_BY_PASS, right=right, pass_says=(NO_REFUSAL,))
    # As online (``gate.require_overridable_decision``): a refusal is set aside while its truck is at the gate,
    # an hour at most; the adapter refuses an older one itself (gate_adapters/runtime/overrides.py rule 6).
    # What the officer let in is judged when he did (never in our future), not when the truck was refused: a
    # ban, block or badge withdrawn in between counts (review 124, finding 2).
    late = (o.overridden_at - report.decided_at).total_seconds()
    if not 0 <= late <= g.OVERRIDE_WITHIN_SECONDS:
        return _Judged(Verdict.FLAGGED, Flag.NOT_SUPPORTED_BY_PASS, right=right,
                       pass_says=(OVERRIDE_LATE if late > 0 else OVERRIDE_EARLY,))
    # A decision at a lower place of the adapter's sealed outbox chain was taken before the override: one
    # stamped earlier than it was made on a wall clock wound back (NTP spoofed, the PC restarted: the
    # adapter's monotonic clock then counts from the start only). Judged at that time, a ban or block issued
    # since would go unseen (review 126, finding 2; the adapter refuses such an override itself).
    before = None if report.outbox is None else uow.offline.latest_decided_below(
        actor.client_id or "", report.outbox.outbox_id, report.outbox.seq)
    if before is not None and o.overridden_at + CHAIN_SLACK < before:
        return _Judged(Verdict.FLAGGED, Flag.NOT_SUPPORTED_BY_PASS, right=right, pass_says=(OVERRIDE_BEHIND_CHAIN,))
    at = min(max(o.overridden_at, gate_pass.issued_at), now)
    state = right.effective_state(at).value
    # Only what an online override may set aside (``gate.require_overridable_decision``): the reasons the
    # lane reported, and those the pass's own rules give on the reported request (the lane's PC may lie).
    says = pass_refuses(gate_pass, req, decided_at=report.decided_at, state=state, hash_badge=hash_badge)
    refused = [r.value for r in report.reasons]
    # The face evidence the adapter says it weighed can only make it stricter (``gate.face_against``).
    if not refused or g.not_overridable([*refused, *says], face=report.face):
        return _Judged(Verdict.FLAGGED, Flag.NOT_SUPPORTED_BY_PASS, right=right, pass_says=says)
    used_id, used_offline = uow.offline.last_use(right.id, _MOVES[g.Direction.IN])
    badge = uow.gate.badge(req.badge) if req.badge is not None else None
    holder = badge.person_id if badge is not None and badge.found else None
    hard = holder_refusals(gate_pass, badge, None if holder is None else uow.gate.screen(
        holder, terminal=req.terminal, now=at), at)
    if hard:
        return _not_the_driver(uow, actor, report, gate_pass, right, decision_id, at, hard, holder, used_id)
    verdict, flag = judge_use(direction=g.Direction.IN, state=state,
                              used_by=UsedBy.OFFLINE if used_offline else UsedBy.ONLINE)
    if verdict is not Verdict.RECORD:
        return _Judged(verdict, flag, used_id, right)
    # What an online override would refuse now; the truck is in, so it is recorded and flagged instead.
    changed = list(_changed_since_pass(uow, gate_pass, right, req, at, now))
    for check in (lambda: right.require_overridable(at), lambda: acting_organisation_active(uow, actor)):
        try:
            check()
        except DomainError as exc:
            changed.append(exc.code.value)
    # The officer beside the reason, not in it: the terminal and port security read him, no one else (review
    # 171, finding 2); the lane is the decision's (``decision_id``).
    reason = f"{o.reason} (offline, setting aside {', '.join(refused)} on gate pass {gate_pass.pass_id})"
    try:
        right.override_gate_in(by=actor, now=at, decision_id=decision_id, reason=reason, set_aside=refused,
                               officer=o.officer)
    except DomainError:
        return _Judged(Verdict.FLAGGED, Flag.CHANGED_AFTER_PASS, right=right, changed=tuple(changed))
    persist(uow, right)
    override_alarm(uow.audit, actor, right, decision_id, refused, reason, at, officer=o.officer)  # review 142
    if changed:
        return _Judged(Verdict.FLAGGED, Flag.CHANGED_AFTER_PASS, right=right, changed=tuple(changed))
    return _Judged(Verdict.RECORD, right=right)


def _not_the_driver(uow: OfflineUnitOfWork, actor: Actor, report: OfflineReport, gate_pass: GatePass,
                    right: ReleaseRight, decision_id: uuid.UUID, at: datetime, hard: tuple[str, ...],
                    holder: uuid.UUID | None, used_id: uuid.UUID | None) -> _Judged:
    """An override that let in a person the service refuses (``holder_refusals``: another person's badge,
    a ban, ...), which no online override lets in. The truck is in all the same: the right is marked used,
    by an override whose reason says the service refused it, so that no second truck takes it (online, or
    offline at another adapter on a later pass); its gate-out is refused online for the same reasons (the
    badge is another person's), and the flag tells port security, the line and the holder what the badge
    says. Nothing moves when the right is used or ended already: the first use stands."""
    o = report.override
    assert o is not None
    reason = (f"NOT SUPPORTED by the service, recorded only because the truck is in: {o.reason} (offline, on "
              f"gate pass {gate_pass.pass_id}; the badge read says {', '.join(hard)})")
    moved, refused = False, [r.value for r in report.reasons]
    try:
        right.override_gate_in(by=actor, now=at, decision_id=decision_id, reason=reason, set_aside=refused,
                               officer=o.officer)
        moved = True
    except DomainError:
        pass
    if moved:
        persist(uow, right)
        override_alarm(uow.audit, actor, right, decision_id, refused, reason, at, officer=o.officer)
    return _Judged(Verdict.FLAGGED, Flag.NOT_SUPPORTED_BY_PASS, None if moved else used_id, right,
                   badge_says=hard, holder=holder)


def _changed_since_pass(uow: OfflineUnitOfWork, gate_pass: GatePass, right: ReleaseRight, req: g.GateRequest,
                        at: datetime, now: datetime) -> tuple[str, ...]:
    """``gate_pass.changed_since_pass`` on what the service knows now: the lane's badge, the pass's
    driver and, for a gate-in, the container's rights (``gate.contested``) as they stood when the adapter
    decided (``at``): a right issued after the truck passed, another line's included, says nothing of that
    gate-in (review 107: else any line could flag a lawful offline gate-in after it), nor does a contest
    mark set after it (``_as_of``). The holder is judged as known now, not as of ``at``: when the truck
    passed is the adapter's word (its clock may be wound back, review 126), and a flag only tells port
    security, who wants to hear of a deactivated company's right used offline either way. So are the
    holds set after the pass (a light made red or scan, a block), lifted since or not (review of the lights,
    finding 2), customs' on another right of the container too (``_held_beside``, review 149 finding 4),
    and the holder's deactivation and the driver's suspension since the pass, lifted since or not (review
    141, finding 3), and a port ban on the driver in effect since the pass, lifted or ended since or not."""
    then = gate_pass.right.nomination
    facts = _as_of(right, at)
    rights = uow.releases.of_containers([facts.container])
    beside = [_as_of(r, at) for r in rights if r.created_at <= at]
    contested = req.direction is g.Direction.IN and (facts.contested or g.contested(
        beside, facts, terminal=req.terminal, now=at))
    holder = uow.directory.organisation(right.holder_organisation_id)
    deactivated, suspended = uow.offline.cut_off_since(
        right.holder_organisation_id, then.driver_person_id if then else None, gate_pass.issued_at)
    holder_inactive = deactivated or (holder is not None and not holder.active)
    # A ban on the pass's driver in effect since the pass, lifted or ended since or not: screened at ``at`` as
    # known now, he is clear. Up to now, as the suspension: ``at`` is the adapter's reckoning of our clock.
    banned = then is not None and uow.offline.banned_between(
        then.driver_person_id, terminal=req.terminal, release_id=right.id, since=gate_pass.issued_at,
        until=now)
    # The holds since the pass, lifted or not, as its history records them up to now (for the same reason).
    held = held_since_pass(gate_pass, ((e.type, e.data, e.at) for e in uow.releases.events(right.id)))
    if gate_pass.right.customs == g.GREEN and _held_beside(uow, gate_pass, right, rights, now):
        held = (*held, g.Reason.CUSTOMS_HOLD.value)  # customs' hold on another right of the container
    changed = changed_since_pass(
        gate_pass, facts, at=at, contested=contested, holder_inactive=holder_inactive,
        driver_suspended=suspended, driver_banned=banned, held=held,
        badge=uow.gate.badge(req.badge) if req.badge is not None else None,
        driver=uow.screening.screen(then.driver_person_id, terminal=req.terminal, now=at) if then else None)
    # The service's own face_mismatch on the right, standing when the truck passed (review 148): online, a
    # gate-in without a capture it matched to the driver is refused then, and no desk sets that aside. The
    # lane's uplink cut after such a refusal, the adapter's pass (which cannot know it) let the truck in: the
    # truck is in, port security hears. Read with the right (``of_containers``: its ``face_against``).
    own = next((r for r in beside if r.id == right.id), None)
    face = g.Reason.FACE_MISMATCH.value
    if face not in changed and g.face_standing(own, req, now=at) is not None:
        changed = (*changed, face)
    return changed


_CUSTOMS_LIGHT = "release.light.customs"


def _held_beside(uow: OfflineUnitOfWork, gate_pass: GatePass, right: ReleaseRight, rights: Sequence[ReleaseRight],
                 now: datetime) -> bool:
    """Customs' hold on another right of ``right``'s container (``gate.container_held``) since the pass, judged
    as the right's own holds are (``held_since_pass``, review 126): held now, or set since the pass and lifted
    since, as that right's history records it; up to now, not to the adapter's reckoning of when the truck
    passed (its word; review 149, finding 4: a hold set after that reckoning, within the second of the pass's
    whole-second iat or on a clock wound back, was not seen). Whenever that right was issued: only customs
    sets a hold, so no line flags a lawful gate-in by issuing a right after it (review 107's concern)."""
    own = g.RightFacts.from_right(right)
    if g.container_held([g.RightFacts.from_right(r) for r in rights], own, now=now) is not None:
        return True
    return any(LIGHTS_CHANGED in held_since_pass(gate_pass, ((e.type, e.data, e.at) for e in uow.releases.events(r.id)
                                                             if e.type == _CUSTOMS_LIGHT))
               for r in rights if r.id != right.id and r.state is not State.COMPLETED)


def _as_of(right: ReleaseRight, at: datetime) -> g.RightFacts:
    """The gate's facts of ``right``, marked contested only if the mark was set by ``at``: a refusal after
    an offline gate-in (the truck passed clean, on its pass) does not make that gate-in suspect. (Customs'
    hold is judged up to now, ``_held_beside``.)"""
    facts = g.RightFacts.from_right(right)
    return replace(facts, contested=right.contested_at is not None and right.contested_at <= at)


def _same_allow(online: StoredDecision, report: OfflineReport) -> bool:
    """The online answer gave the very allow the adapter gave offline: this right, this way, this mode."""
    req = report.request
    return (online.decision == g.Outcome.ALLOW.value and online.release_id == report.release_id
            and online.direction == req.direction.value and online.committed == (req.mode is g.Mode.COMMIT))


def _row(actor: Actor, report: OfflineReport, decision_id: uuid.UUID, fingerprint: str, verdict: Verdict,
         flag: Flag | None, other: uuid.UUID | None, body: dict[str, Any], now: datetime) -> dict[str, Any]:
    req = report.request
    return {
        "id": decision_id, "terminal": req.terminal, "request_id": report.key, "client_id": actor.client_id,
        "lane": req.lane, "direction": req.direction.value, "mode": req.mode.value, "fingerprint": fingerprint,
        "decision": report.decision.value, "reasons": [r.value for r in report.reasons], "basis": report.basis,
        "release_id": report.release_id, "pass_id": None, "ban_list_age_seconds": report.ban_list_age_seconds,
        "verdict": verdict.value, "flag": flag.value if flag else None, "other_decision_id": other,
        "response": body, "observed_at": req.observed_at, "decided_at": report.decided_at, "reconciled_at": now,
        "outbox_id": report.outbox.outbox_id if report.outbox else None,
        "outbox_seq": report.outbox.seq if report.outbox else None, "face": report.face,
    }


def _announce(uow: OfflineUnitOfWork, actor: Actor, report: OfflineReport, body: dict[str, Any], j: _Judged,
              now: datetime) -> None:
    """Every offline decision goes to the audit trail; a flagged one also to port security's webhooks."""
    data = {**body, "terminal": report.request.terminal, "lane": report.request.lane,
            "direction": report.request.direction.value, "decision": report.decision.value,
            "basis": report.basis, "ban_list_age_seconds": report.ban_list_age_seconds}
    if j.pass_says:
        data["pass_says"] = list(j.pass_says)
    if j.changed:
        data["changed_since_pass"] = list(j.changed)
    if j.badge_says:
        data["badge_says"] = list(j.badge_says)
    if report.override is not None:
        o = report.override
        data["override"] = {"officer": o.officer, "reason": o.reason, "decision_id": str(o.decision_id),
                            "request_id": report.request.request_id, "reasons": [r.value for r in report.reasons]}
    right = j.right
    kind = FLAG_EVENT if body["flag"] else "release.gate_offline_reconciled"
    # Whose badge it was, and the face evidence weighed, go to the audit trail (port security), not to the
    # line's and holder's webhooks; nor does the officer (``override.officer``), nulled in every webhook's
    # payload (disclosure.published_data: STAFF_KEYS).
    audited = {**data, "face": report.face}
    if j.holder is not None:
        audited["badge_holder_person_id"] = str(j.holder)
    uow.audit.append(kind, actor=actor.as_dict(), subject=body["release_id"], data=audited, at=now)
    if body["flag"] and right is not None:
        audience = {right.issuer_organisation_id, right.holder_organisation_id}
        if actor.organisation_id is not None:
            audience.add(actor.organisation_id)
        uow.outbox.publish([PublishedEvent(uuid.uuid4(), FLAG_EVENT, right.id, now, frozenset(audience), data)])

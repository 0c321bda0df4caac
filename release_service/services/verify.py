"""Gate verify (SPEC.md "The gate verify call", issue 5): read the facts, decide, and on an allowed
commit record the gate move with the decision, at once, answered the same way for the same request_id.

    find (terminal, request_id) ── recorded? ── same fingerprint: the recorded answer, nothing redone
         │                                   └─ another request under that id: request_id_reused
         v
    facts: policy, the rights of every container the read may be, the badge, the holder's screening;
    a commit reads the rights afresh from PostgreSQL, unlocked (a nomination, hold, block or use that
    committed meanwhile counts)
         v
    decide (domain/gate.py, pure)
         v
    mode commit and allow: gate-in (once) or gate-out of the right decided on, in the domain
         v
    write (``_write``): the decision, and the move with its events, audit entries and webhook
    deliveries, only if the right is still at the version read and the container's other rights are
    still those read, at their versions (``RightsRead``: customs' hold on another of them, or another
    line's right issued on the container, changes the decision, not the right). On PostgreSQL that is
    one autocommitted statement (adapters/sqla/gate_move.py); on SQLite, statements in one transaction
    that holds the write lock from before its read. The rights changed meanwhile: nothing written, read
    and decide again.

A face image (issue 6) is matched before anything is decided, outside any transaction (no
connection is held while a worker process spends about 0.1 s on it): against the enrolled face of
the driver the decision concerns (``gate.face_subject``), through the ``FaceMatcher`` port, with the
terminal's ``face_tolerance``; the pure core then sees only the outcome (``FaceEvidence``). A request
with an image never takes the cached fast path (``answer_from_cache``); a replayed request_id is
answered from the record without matching again. A capture the service found another person's (or
an attack) stays a fact of the right for ``OVERRIDE_WITHIN_SECONDS`` (review 148, ``gate.face_standing``):
read with the right (adapters/sqla/store.py ``FACE_AGAINST``), so such a check is recorded in PostgreSQL at
once and the right's cached copies go, as after a move.

With Redis (``facts``, adapters/gate_facts.py), the facts come from there, exact by invalidation
after every commit; a check is decided and kept there with no PostgreSQL round trip (on facts this
process read before, ``_check_recalled``, in one Redis round trip that keeps the decision only if
those facts are still current) (a drainer moves
it into gate_decisions); a commit reads the policy and badge there on its own connection (what the
cache misses is read there) and its rights from PostgreSQL. Redis failing means deciding from
PostgreSQL, as without it.

On PostgreSQL with Redis, a commit is first tried on the event loop (``commit_on_loop``): the same
first round, its cache calls pipelined and its two statements awaited on the loop's own connections
(quaygate/loopdb.py), so no worker thread waits on a round trip. Whatever that round cannot settle (a
miss, Redis failing, the right changed meanwhile, a twin, no connection free) it leaves unwritten,
and ``verify`` settles it on a worker thread as above.

Racing gates on one right: every one reads it at the same version, the first write moves it, and
every later one updates nothing (the version changed), reads again, finds it gated in and is refused
``already_used``. A twin request (same request_id, e.g. an adapter retrying after a timeout) that
loses the decision's unique key writes nothing, its gate move included (one statement, or a rolled
back transaction), and answers with the winner's recorded decision: the same id never uses a right
twice.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from quaygate.jsonbody import Body
from release_service.domain import gate as g
from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import Actor, OrgKind
from release_service.domain.reads import container_candidates
from release_service.domain.release import ReleaseRight
from release_service.ports import (
    BADGE_ALARM,
    FACE_CLAIM,
    DuplicateDecision,
    FaceMatcher,
    FactsUnavailable,
    GateFacts,
    GateSnapshot,
    LoopGateStore,
    LoopGateUnit,
    LoopUnavailable,
    Recalled,
    RightsRead,
    StoredDecision,
    UnitOfWork,
)

from .common import audience, persist
from .gate import override as override_right

log = logging.getLogger(__name__)

# A commit reads its right unlocked and writes it only at the version read; a round that finds it
# changed reads and decides again. Each such round means another change of that right committed (a
# gate move, a block, a nomination), so a few rounds always settle it.
_ATTEMPTS = 6

# Port security's alarm (review 174): a badge reported lost or stolen, withdrawn, or another person's than the
# nominated driver's, was shown at the gate (``gate.BADGE_ALARMS``). On the audit trail under the badge (beside
# its status changes), written with the decision's row (``ports.BADGE_ALARM``), logged as a warning; beside the
# override alarm (services/gate.py ``OVERRIDE_ALARM_EVENT``). It refuses nothing the decision did not.
BADGE_ALARM_EVENT = "release.gate_badge_alarm"

# A refusal of the domain's gate move that decide() did not foresee maps to the gate reason it means.
_MOVE_REFUSALS: dict[ErrorCode, g.Reason] = {
    ErrorCode.ALREADY_USED: g.Reason.ALREADY_USED,
    ErrorCode.RIGHT_BLOCKED: g.Reason.RIGHT_BLOCKED,
    ErrorCode.RIGHT_EXPIRED: g.Reason.RIGHT_EXPIRED,
    ErrorCode.RIGHT_NOT_YET_VALID: g.Reason.RIGHT_NOT_YET_VALID,
    ErrorCode.NOT_TERMINAL: g.Reason.WRONG_TERMINAL,
}


def require_gate_of(actor: Actor, terminal: str) -> None:
    """Only a terminal's own gate clients ask about, and move rights at, that terminal."""
    if actor.kind is not OrgKind.TERMINAL or not actor.terminal_code or actor.terminal_code != terminal:
        raise DomainError(ErrorCode.NOT_TERMINAL, "This client is not a gate of that terminal.")


async def answer_from_cache(facts: GateFacts, actor: Actor, request: g.GateRequest, *, fingerprint: str,
                            now: datetime, also: Sequence[str] = (),
                            admit: Callable[[Sequence[bytes | None]], None] | None = None) -> dict[str, Any] | None:
    """The answer when the cache alone can give it (a check whose facts are all cached, or its recorded
    request_id), without waiting for PostgreSQL; else None: call verify(). A commit always goes to
    verify(), whose worker reads the cache once (a replayed request_id included). A check on facts
    this process read before is decided on them first and kept only if they are still current
    (``_check_recalled``); else the facts are read, decided on and the decision kept, as before.

    ``also`` and ``admit``: the caller's last word on the caller (its token's revocation entries,
    read in the same round trip as the facts): ``admit`` gets their values before anything is
    decided, recorded or replayed, and raises to refuse."""
    require_gate_of(actor, request.terminal)
    if request.mode is not g.Mode.CHECK:
        return None
    if request.face is not None and request.face.kind == "image":
        return None  # an image is matched first, in a worker: verify()
    recalled = facts.recall(terminal=request.terminal, badge=request.badge,
                            containers=container_candidates(request.container.number), now=now)
    if recalled is not None:
        body = await _check_recalled(facts, actor, request, recalled, fingerprint, now, also, admit)
        if body is not None:
            return body
    snapshot = await _read_on_loop(facts, request, now, container_candidates(request.container.number), also, admit)
    if snapshot is None:
        return None
    if snapshot.replay is not None:
        return _replay(snapshot.replay, fingerprint)
    decision, decision_id, body, row = _cached_check(actor, request, snapshot, fingerprint, now)
    try:
        twin = await facts.record_async(row)
    except FactsUnavailable:
        return None  # a check moves nothing: the caller decides again from PostgreSQL
    return _kept_check(twin, decision, request, decision_id, body, fingerprint)


def verify(uow_factory: Callable[[], UnitOfWork], actor: Actor, request: g.GateRequest, *, fingerprint: str,
           now: datetime, facts: GateFacts | None = None, face_image: bytes | None = None,
           face_matcher: FaceMatcher | None = None, also: Sequence[str] = (),
           admit: Callable[[Sequence[bytes | None] | None], None] | None = None) -> dict[str, Any]:
    """The response body of POST /gate/v1/verify. Raises DomainError (not_terminal, request_id_reused),
    FaceCaptureRefused (an unusable ``face_image``: nothing recorded).

    With ``facts`` (Redis), the facts come from there, and a check is decided and kept there without
    a PostgreSQL round trip; a commit decides on its rights read afresh from PostgreSQL and writes the
    move only at the version it read. When the cache cannot answer, everything is read from PostgreSQL,
    as without it.
    With ``face_image``, the capture is matched first (``_match_face``); blocking: run in a thread.

    ``also`` and ``admit``, as for ``answer_from_cache``: the caller's token's revocation entries, read
    with the facts (no round trip of their own); ``admit`` gets their values, or None when the facts
    were not read, before anything is decided, recorded or replayed, and raises to refuse."""
    require_gate_of(actor, request.terminal)

    def read(within: UnitOfWork | None = None, rights: bool = True) -> GateSnapshot | None:
        snapshot = _snapshot(facts, request, now, within=within, also=also if admit is not None else (),
                             rights=rights)
        if admit is not None:
            admit(snapshot.also if snapshot is not None else None)
        return snapshot

    # A check, or a capture to match, reads the cache first, outside any unit of work; a commit reads
    # it in its own unit of work below, so that what the cache misses is read there on one connection.
    early = face_image is not None or request.mode is g.Mode.CHECK
    snapshot = read() if early else None
    if snapshot is not None and snapshot.replay is not None:
        return _replay(snapshot.replay, fingerprint)
    if face_image is not None:
        recorded, request = _match_face(uow_factory, request, snapshot, face_image, face_matcher, now)
        del face_image
        if recorded is not None:
            return _replay(recorded, fingerprint)
        if request.mode is g.Mode.COMMIT:
            # The match took a while (a worker process, a queue): a badge blocked or a ban loaded
            # meanwhile must count, so the commit reads its facts again, from PostgreSQL, as it decides.
            snapshot = None
    if snapshot is not None:
        if request.mode is g.Mode.CHECK and facts is not None:
            body = _check_cached(facts, actor, request, snapshot, fingerprint, now)
            if body is not None:
                return body
    # A commit's invalidations go with its remember, in one Redis round trip (``GateFacts.holding``).
    with facts.holding() if facts is not None else contextlib.nullcontext():
        for attempt in range(_ATTEMPTS):
            with uow_factory() as uow:
                if not early and not attempt:  # a commit: its rights are read from PostgreSQL below
                    snapshot = read(within=uow, rights=False)
                    if snapshot is not None and snapshot.replay is not None:
                        return _replay(snapshot.replay, fingerprint)
                # The cache answered "not recorded" just now (snapshot.replay is None); a twin recorded
                # since, or a decision the cache missed, loses us the insert below and the next round
                # finds it. So with a snapshot the first round saves the look-up; later rounds read
                # everything again from PostgreSQL.
                stored = uow.gate.find(request.terminal, request.request_id) if attempt or snapshot is None else None
                if stored is not None:
                    return _replay(stored, fingerprint)
                decision_id = uuid.uuid4()
                decision, moved, read = _decide_and_move(uow, actor, request, decision_id, now,
                                                         None if attempt else snapshot)
                body = response_body(request, decision, decision_id, moved is not None)
                row = _row(actor, request, decision, decision_id, moved is not None, fingerprint, body, now)
                if not _written(facts, uow, row, moved, read):
                    # The rights changed since they were read, or a twin was recorded first: nothing of
                    # this attempt stays (one statement, or a rolled-back transaction); read again.
                    continue
                uow.commit()
            if facts is not None:
                facts.remember(row)
            _log(decision, request, decision_id)
            return body
    raise DomainError(ErrorCode.ILLEGAL_TRANSITION,
                      "The release right kept changing while this gate decided; send the request again.")


async def commit_on_loop(db: LoopGateStore, facts: GateFacts, actor: Actor, request: g.GateRequest, *,
                         fingerprint: str, now: datetime, also: Sequence[str] = (),
                         admit: Callable[[Sequence[bytes | None]], None] | None = None) -> dict[str, Any] | None:
    """A commit (no face image) decided and written on the event loop, no worker thread waiting for
    PostgreSQL or Redis: the policy, badge and screening from the cache (one pipelined round trip,
    the token's revocation entries with them), the rights read afresh from PostgreSQL, the move
    written only at the version read (one statement), then remembered in the cache with the
    invalidation of the right, before the answer goes out: ``verify``'s first round, on ``db``'s
    connections instead of a unit of work.

    None whenever that round cannot settle it: something not cached, Redis failing or owed
    invalidations first (``FactsUnavailable``), no connection free (nothing sent) or the connection lost
    (``LoopUnavailable``: a write's outcome unknown), the right changed since it was read, a twin
    recorded first. The caller then runs ``verify`` on a worker thread, which reads what is missing
    through and settles it from PostgreSQL, finding whatever was written under the request_id (a
    write that did land loses it the decision's unique key, and the next round answers with it).
    ``also`` and ``admit`` as for ``answer_from_cache``: the token's revocation is settled before
    anything is decided."""
    require_gate_of(actor, request.terminal)
    if request.mode is not g.Mode.COMMIT or (request.face is not None and request.face.kind == "image"):
        return None
    snapshot = await _read_on_loop(facts, request, now, (), also, admit)  # rights: from PostgreSQL below
    if snapshot is None:
        return None
    if snapshot.replay is not None:
        return _replay(snapshot.replay, fingerprint)
    decision_id = uuid.uuid4()
    try:
        async with db.unit() as unit:
            candidates = container_candidates(request.container.number)
            found = await unit.rights_of(candidates)
            read = RightsRead.of(candidates, found)
            decision, moved = _decide_on(actor, request, decision_id, now, found, snapshot.policy, snapshot.badge,
                                         g.ScreeningFacts(snapshot.screening))
            body = response_body(request, decision, decision_id, moved is not None)
            row = _row(actor, request, decision, decision_id, moved is not None, fingerprint, body, now)
            if moved is None:
                await unit.record(row)
            elif not await _moved_on_loop(unit, facts, row, moved, read):
                return None
    except (LoopUnavailable, DuplicateDecision):
        # No connection (nothing sent); the connection lost (a write's outcome unknown); a twin's
        # decision to find: ``verify`` settles each under the request_id, its unique key in PostgreSQL.
        return None
    await facts.remember_async(row, (moved.container.value,) if moved is not None else ())
    _log(decision, request, decision_id)
    return body


async def _moved_on_loop(unit: LoopGateUnit, facts: GateFacts, row: dict[str, Any], moved: ReleaseRight,
                         read: RightsRead) -> bool:
    """The move and its decision written (True); False, with nothing written, when the rights changed
    since they were read (``read``) or a twin was recorded first (the statement rolled back). The right's
    invalidation is owed from before the statement is sent (``GateFacts.moving``)."""
    with facts.moving((moved.container.value,)):
        try:
            return await unit.record_move(row, moved, [audience(moved, e) for e in moved.pending_events], read)
        except DuplicateDecision:
            return False


async def _read_on_loop(facts: GateFacts, request: g.GateRequest, now: datetime, containers: Sequence[str],
                        also: Sequence[str], admit: Callable[[Sequence[bytes | None]], None] | None
                        ) -> GateSnapshot | None:
    """The cached facts, read from the event loop, the token's revocation settled on the entries read
    with them (``admit``); None when the cache cannot answer (the caller goes to a worker thread)."""
    try:
        snapshot = await facts.read_cached_async(terminal=request.terminal, request_id=request.request_id,
                                                 badge=request.badge, containers=containers, now=now, also=also)
    except FactsUnavailable:
        log.warning("release.verify.facts_from_database")
        return None
    if snapshot is not None and admit is not None:
        admit(snapshot.also)
    return snapshot


def _written(facts: GateFacts | None, uow: UnitOfWork, row: dict[str, Any], moved: ReleaseRight | None,
             read: RightsRead | None) -> bool:
    """``_write``, the moved right's invalidation owed from before its statement is sent
    (``GateFacts.moving``), as on the loop: a move that landed and whose reply was lost (the
    connection dropped: its outcome unknown here, the request refused) leaves it failed, and no copy is
    trusted until Redis took it; else a copy of the right before its gate-in would answer checks until
    its TTL ran out, a retry being answered from the record with no invalidation of its own. False, with
    nothing written, when the rights changed or a twin was recorded first."""
    # A decision whose face the service found another person's changes what is read with its right
    # (``gate.face_refused``, review 148): its copies go too, owed the same way (rare: a mismatch).
    changes = moved.container.value if moved is not None else g.face_changes_right(row)
    owing = facts.moving((changes,)) if facts is not None and changes is not None else contextlib.nullcontext()
    with owing:
        try:
            return _write(uow, row, moved, read)
        except DuplicateDecision:
            return False  # the statement rolled back: nothing written, nothing failed


def _write(uow: UnitOfWork, row: dict[str, Any], moved: ReleaseRight | None, read: RightsRead | None) -> bool:
    """Record the decision, and the gate move it made: at once where the store can (one autocommitted
    statement on PostgreSQL, guarded by the version the right was read at and the container's rights
    ``read`` beside it), else statement by statement in the unit of work's transaction (SQLite: begun
    IMMEDIATE, before the read, so no other write commits between the read and the write). False when
    the rights changed since they were read."""
    if moved is None:
        uow.gate.record(row)
    elif uow.gate.moves_at_once:
        assert read is not None  # a move is decided on the rights read (``_decide_and_move``)
        return uow.gate.record_move(row, moved, [audience(moved, e) for e in moved.pending_events], read)
    else:
        persist(uow, moved)
        uow.gate.record(row)
    return True


def _match_face(uow_factory: Callable[[], UnitOfWork], request: g.GateRequest, snapshot: GateSnapshot | None,
                image: bytes, matcher: FaceMatcher | None, now: datetime
                ) -> tuple[StoredDecision | None, g.GateRequest]:
    """The request with its image replaced by the outcome of the 1:1 match (or the decision already
    recorded under its request_id). Nobody to match, no matcher, no enrolment, a busy pool: an
    outcome without a distance, which ``decide`` turns into ``face_required`` (review), never an allow.
    A capture whose bytes identity matched before under another request_id (``face_replayed``), or
    one its liveness port called a spoof, is ``face_mismatch`` (deny). The match is claimed under this
    request's terminal and request_id, so a retry of the same request (its decision not recorded yet,
    a twin) matches again, never a replay.
    The facts are read in a short transaction of their own; ``decide`` later checks that the face was
    matched against the driver it then judges (a re-nomination in between is not this driver)."""
    if snapshot is not None:
        policy, rights, badge = snapshot.policy, snapshot.rights, snapshot.badge
    else:
        with uow_factory() as uow:
            stored = uow.gate.find(request.terminal, request.request_id)
            if stored is not None:
                return stored, request
            policy = uow.gate.policy(request.terminal)
            rights = uow.gate.rights(container_candidates(request.container.number))
            badge = uow.gate.badge(request.badge) if request.badge is not None else None
    person = g.face_subject(request, rights=rights, badge=badge, policy=policy, now=now)
    if person is None:
        evidence = g.FaceEvidence("image", unavailable="no_driver")
    elif matcher is None:
        evidence = g.FaceEvidence("image", person_id=person, unavailable="face_unavailable")
    else:
        context = {"terminal": request.terminal, "lane": request.lane, "request_id": request.request_id,
                   "direction": request.direction.value, "mode": request.mode.value}
        found = matcher.match(person, image, tolerance=policy.face_tolerance, context=context)
        evidence = g.FaceEvidence("image", matched=found.matched, person_id=person, distance=found.distance,
                                  tolerance=found.tolerance, unavailable=None if found.distance is not None
                                  else (found.reason or "face_unavailable"))
    outcome = "matched" if evidence.matched else ("mismatched" if evidence.compared else "unavailable")
    if evidence.unavailable in g.FACE_ATTACKS:  # a spoof, or a copy of a capture matched before: an attack
        outcome = str(evidence.unavailable).removeprefix("face_")  # not_live | replayed
    log.info("release.verify.face.%s", outcome, extra={"fields": {
        "terminal": request.terminal, "lane": request.lane, "distance": evidence.distance,
        "tolerance": evidence.tolerance, "reason": evidence.unavailable}})
    return None, replace(request, face=evidence)


def _snapshot(facts: GateFacts | None, request: g.GateRequest, now: datetime, *, through: bool = True,
              within: UnitOfWork | None = None, also: Sequence[str] = (), rights: bool = True) -> GateSnapshot | None:
    """The cached facts; None without a cache, when it failed (then PostgreSQL decides), or, with
    ``through=False``, when something is not cached. ``rights=False``: no rights (a commit reads them
    from PostgreSQL)."""
    if facts is None:
        return None
    try:
        return facts.read(terminal=request.terminal, request_id=request.request_id, badge=request.badge,
                          containers=container_candidates(request.container.number) if rights else (), now=now,
                          through=through, within=within, also=also)
    except FactsUnavailable:
        log.warning("release.verify.facts_from_database")
        return None


def _check_cached(facts: GateFacts, actor: Actor, request: g.GateRequest, snapshot: GateSnapshot,
                  fingerprint: str, now: datetime) -> dict[str, Any] | None:
    """A check decided on the cached facts and kept in the cache (drained into PostgreSQL): None when
    the cache failed meanwhile, or its stream of decisions not drained yet is full (the caller decides
    again and records it in PostgreSQL; a check moves nothing)."""
    decision, decision_id, body, row = _cached_check(actor, request, snapshot, fingerprint, now)
    if g.face_changes_right(row) is not None:
        # The service found the face another person's: a fact of the right from now on (``gate.face_refused``,
        # review 148), so recorded in PostgreSQL at once, the right's copies replaced, not drained later.
        return None
    try:
        twin = facts.record(row)
    except FactsUnavailable:
        return None
    return _kept_check(twin, decision, request, decision_id, body, fingerprint)


def _cached_check(actor: Actor, request: g.GateRequest, snapshot: GateSnapshot, fingerprint: str, now: datetime
                  ) -> tuple[g.Decision, uuid.UUID, dict[str, Any], dict[str, Any]]:
    """A check decided on cached facts: the decision, its id, the answer and the row to keep."""
    decision_id = uuid.uuid4()
    decision = g.decide(request, rights=snapshot.rights, badge=snapshot.badge,
                        screening=g.ScreeningFacts(snapshot.screening), policy=snapshot.policy, now=now)
    body = response_body(request, decision, decision_id, False)
    return decision, decision_id, body, _row(actor, request, decision, decision_id, False, fingerprint, body, now)


def _kept_check(twin: StoredDecision | None, decision: g.Decision, request: g.GateRequest, decision_id: uuid.UUID,
                body: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """The answer once the check was kept: its own, or the decision kept first under its request_id."""
    if twin is not None:
        return _replay(twin, fingerprint)
    _log(decision, request, decision_id)
    return body


async def _check_recalled(facts: GateFacts, actor: Actor, request: g.GateRequest, recalled: Recalled,
                          fingerprint: str, now: datetime, also: Sequence[str],
                          admit: Callable[[Sequence[bytes | None]], None] | None) -> dict[str, Any] | None:
    """A check decided on the facts this process read last, kept in the one step that finds them still
    current (``GateFacts.keep_if_current``): one round trip. None when that step kept nothing (the facts
    moved on, a revocation entry to judge, Redis failing, its stream full): the caller decides the long
    way. The token's revocation is settled (``admit``) on the values read in that step, before anything
    is answered."""
    decision, decision_id, body, row = _cached_check(actor, request, recalled.snapshot, fingerprint, now)
    try:
        kept = await facts.keep_if_current_async(row, recalled, also)
    except FactsUnavailable:
        return None
    final = kept.recorded or kept.twin is not None
    if admit is not None and (final or any(v is not None for v in kept.also)):
        admit(kept.also)  # raises when the token is revoked: nothing was kept
    if not final:
        # Nothing kept: the long way reads the facts and the revocation entries again (a token revoked
        # since this step is refused there), so the revocation is not settled on this step's values.
        return None
    return _kept_check(kept.twin, decision, request, decision_id, body, fingerprint)


def _log(decision: g.Decision, request: g.GateRequest, decision_id: uuid.UUID) -> None:
    fields = {"terminal": request.terminal, "lane": request.lane, "decision_id": str(decision_id),
              "mode": request.mode.value}
    log.info(decision.event, extra={"fields": fields})
    if decision.reasons and decision.alarms:  # port security's alarm, on the trail with the row (``_row``)
        log.warning("release.gate.badge_alarm", extra={"fields": {
            **fields, "alarms": [r.value for r in decision.alarms]}})


def _replay(stored: StoredDecision, fingerprint: str) -> dict[str, Any]:
    if stored.fingerprint != fingerprint:
        raise DomainError(ErrorCode.REQUEST_ID_REUSED,
                          "This request_id was already used for another request; use a new one.")
    log.info("release.verify.replayed", extra={"fields": {"decision_id": str(stored.id)}})
    return dict(stored.response)


def _holder_facts(uow: UnitOfWork, request: g.GateRequest, now: datetime
                  ) -> tuple[g.BadgeFacts | None, g.ScreeningFacts]:
    badge = uow.gate.badge(request.badge) if request.badge is not None else None
    if badge is not None and badge.found and badge.person_id is not None:
        screening = uow.gate.screen(badge.person_id, terminal=request.terminal, now=now)
    else:
        screening = g.ScreeningResult.UNAVAILABLE  # nobody to screen: never "clear"
    return badge, g.ScreeningFacts(screening)


def _decide_and_move(uow: UnitOfWork, actor: Actor, request: g.GateRequest, decision_id: uuid.UUID,
                     now: datetime, snapshot: GateSnapshot | None
                     ) -> tuple[g.Decision, ReleaseRight | None, RightsRead | None]:
    """The decision and, for an allowed commit, the right moved (gate-in or gate-out, its events
    pending), and for a commit the rights it was decided on (``RightsRead``). A commit decides on its
    rights as PostgreSQL has them now, read without a lock (a nomination, hold, block or use that
    committed meanwhile counts); ``_write`` saves the move only if the right is still at the version
    read and the container's other rights are still those read."""
    if snapshot is None:
        policy = uow.gate.policy(request.terminal)
        badge, screening = _holder_facts(uow, request, now)
    else:
        policy, badge, screening = snapshot.policy, snapshot.badge, g.ScreeningFacts(snapshot.screening)
    candidates = container_candidates(request.container.number)
    if request.mode is g.Mode.COMMIT:
        found = uow.releases.of_containers(candidates)
        read = RightsRead.of(candidates, found)
        return (*_decide_on(actor, request, decision_id, now, found, policy, badge, screening), read)
    rights = snapshot.rights if snapshot is not None else uow.gate.rights(candidates)
    return g.decide(request, rights=rights, badge=badge, screening=screening, policy=policy, now=now), None, None


def _decide_on(actor: Actor, request: g.GateRequest, decision_id: uuid.UUID, now: datetime,
               found: Sequence[ReleaseRight], policy: g.TerminalPolicy, badge: g.BadgeFacts | None,
               screening: g.ScreeningFacts) -> tuple[g.Decision, ReleaseRight | None]:
    """A commit's decision on its rights as read (``found``), and the right moved when it allows."""
    rights = [g.RightFacts.from_right(r) for r in found]
    decision = g.decide(request, rights=rights, badge=badge, screening=screening, policy=policy, now=now)
    if not decision.allowed or decision.release_id is None:
        return decision, None
    right = next(r for r in found if r.id == decision.release_id)
    try:
        if request.direction is g.Direction.IN:
            right.gate_in(by=actor, now=now, decision_id=decision_id)
        else:
            right.gate_out(by=actor, now=now, decision_id=decision_id)
    except DomainError as exc:
        reason = _MOVE_REFUSALS.get(exc.code)
        if reason is None and exc.context.get("reason") == g.Reason.NOMINATION_REFUSED.value:
            reason = g.Reason.NOMINATION_REFUSED
        log.warning("release.verify.move_refused", extra={"fields": {"code": exc.code.value}})
        return replace(decision, decision=g.Outcome.DENY, reasons=(reason or g.Reason.NO_RELEASE_RIGHT,)), None
    return decision, right


def response_body(request: g.GateRequest, decision: g.Decision, decision_id: uuid.UUID,
                  committed: bool) -> dict[str, Any]:
    """The published response (SPEC.md), plus what was repaired and whether the move was recorded; a
    ``jsonbody.Body``, encoded once for every copy kept and for the gate's answer."""
    return Body({
        "decision": decision.decision.value,
        "reasons": [r.value for r in decision.reasons],
        "decision_id": str(decision_id),
        "release_id": str(decision.release_id) if decision.release_id else None,
        "container": decision.container,
        "driver": decision.driver,
        "screening": decision.screening.value,
        "request_id": request.request_id,
        "mode": request.mode.value,
        "direction": request.direction.value,
        "committed": committed,
        "repairs": [{"field": r.field, "position": r.position, "read": r.read, "understood": r.understood}
                    for r in decision.repairs],
    })


def _row(actor: Actor, request: g.GateRequest, decision: g.Decision, decision_id: uuid.UUID, committed: bool,
         fingerprint: str, body: dict[str, Any], now: datetime) -> dict[str, Any]:
    row = {
        "id": decision_id, "terminal": request.terminal, "request_id": request.request_id,
        "client_id": actor.client_id, "lane": request.lane, "direction": request.direction.value,
        "mode": request.mode.value, "fingerprint": fingerprint, "decision": decision.decision.value,
        "reasons": [r.value for r in decision.reasons], "release_id": decision.release_id,
        "container_number": decision.container, "committed": committed, "response": body,
        "observed_at": request.observed_at, "decided_at": now, "nomination": judged(decision.nomination),
        # What face evidence was weighed, a claimed match told from the service's own (review 131).
        "face": decision.face.as_json() if decision.face is not None else None,
        # The badge the read found and its holder, as found (review 174): ids, never the number or card UID.
        "badge_id": decision.badge_id, "badge_holder_id": decision.holder_id,
    }
    if decision.face is not None and decision.face.kind == "match_result":
        row[FACE_CLAIM] = _face_claim(actor, request, decision, decision.face, decision_id)
    alarms = decision.alarms
    if alarms:  # rare: a badge blocked, revoked or another person's
        row[BADGE_ALARM] = _badge_alarm(actor, request, decision, alarms, decision_id)
    return row


def _badge_alarm(actor: Actor, request: g.GateRequest, decision: g.Decision, alarms: Sequence[g.Reason],
                 decision_id: uuid.UUID) -> dict[str, Any]:
    """Port security's alarm entry (``BADGE_ALARM_EVENT``) of a decision that refused the badge shown as not
    its bearer's to show: under the badge, naming its holder as found (for ``driver_mismatch``, the person
    whose badge it is, not the nominated driver), the right and the lane. Ids only."""
    badge = str(decision.badge_id) if decision.badge_id is not None else None
    return {"kind": BADGE_ALARM_EVENT, "actor": {"client_id": actor.client_id}, "subject": badge,
            "data": {"alarms": [r.value for r in alarms], "reasons": [r.value for r in decision.reasons],
                     "decision": decision.decision.value, "decision_id": str(decision_id), "badge_id": badge,
                     "holder_person_id": str(decision.holder_id) if decision.holder_id is not None else None,
                     "release_id": str(decision.release_id) if decision.release_id is not None else None,
                     "container": decision.container, "terminal": request.terminal, "lane": request.lane,
                     "request_id": request.request_id, "direction": request.direction.value,
                     "mode": request.mode.value}}


def _face_claim(actor: Actor, request: g.GateRequest, decision: g.Decision, face: g.FaceRecord,
                decision_id: uuid.UUID) -> dict[str, Any]:
    """The audit entry of a face match result the gate client claimed: beside the service's own
    ``identity.face.verify.*`` entries, under the same subject (the driver judged), so a search of a
    person's face checks finds the claimed ones too, told apart by kind and ``claimed_by``."""
    return {"kind": "identity.face.verify.claimed", "actor": {"client_id": actor.client_id},
            "subject": str(face.person_id) if face.person_id is not None else None,
            "data": {"purpose": "gate", "claimed_by": "gate", "matched": face.matched, "score": face.score,
                     "min_score": face.min_score, "trusted": face.trusted, "terminal": request.terminal,
                     "lane": request.lane, "request_id": request.request_id, "direction": request.direction.value,
                     "mode": request.mode.value, "decision_id": str(decision_id),
                     "decision": decision.decision.value}}


def judged(n: g.NominationFacts | None) -> list[str | None] | None:
    """The nomination a decision judged, as its row keeps it (``StoredDecision.nomination``)."""
    return None if n is None else n.key


def override(uow_factory: Callable[[], UnitOfWork], actor: Actor, decision_id: uuid.UUID, reason: str,
             now: datetime, officer: str | None = None) -> dict[str, Any]:
    """A terminal lets a refused truck in, with a reason (SPEC.md): audited on the right (the
    ``release.gate_override`` event, with ``officer``, who let it in, as the gate names him) and recorded
    against the decision, once."""
    with uow_factory() as uow:
        stored = uow.gate.get(decision_id)
        if stored is None or actor.terminal_code != stored.terminal:
            raise DomainError(ErrorCode.NOT_FOUND, "No such gate decision at this terminal.")
        require_gate_of(actor, stored.terminal)
        if stored.decision == g.Outcome.ALLOW.value:
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "This decision allowed the truck: nothing to override.")
        if stored.direction != g.Direction.IN.value:
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "Only a refused gate-in can be overridden.")
        if stored.release_id is None:
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION,
                              "This decision found no release right: there is nothing to release.")
        if uow.gate.overridden(decision_id):
            raise DomainError(ErrorCode.ALREADY_USED, "This decision has already been overridden.")
        # The refusals set aside, judged on the face evidence the decision weighed (review 142).
        set_aside = [str(r) for r in stored.response.get("reasons", ())]
        g.require_overridable_decision(set_aside, stored.decided_at, now, face=stored.face)
        right, receipt = override_right(uow, actor, stored.release_id, reason, decision_id, stored.decided_at,
                                       stored.nomination, now, set_aside, face=stored.face, officer=officer)
        uow.gate.record_override({"id": uuid.uuid4(), "decision_id": decision_id, "release_id": right.id,
                                  "terminal": stored.terminal, "client_id": actor.client_id,
                                  "reason": reason.strip(), "at": now})
        uow.commit()
    log.info("release.verify.overridden", extra={"fields": {"decision_id": str(decision_id)}})
    return {"decision_id": str(decision_id), "release_id": str(right.id), "state": right.state.value,
            "receipt": receipt.as_dict()}

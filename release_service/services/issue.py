"""Issue a release right, or a vessel call's worth in one batch (up to 10 000)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from release_service.domain import gate as g
from release_service.domain import storable
from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.iso6346 import ContainerNumber
from release_service.domain.parties import Actor, OrgKind
from release_service.domain.release import MAX_BATCH, LastRight, LightStatus, ReleaseRight
from release_service.ports import ContestedRight, PublishedEvent, UnitOfWork

from .common import Receipt, acting_organisation_active, organisation_kind, receipt, record_events, record_many


@dataclass(frozen=True, slots=True)
class IssueCommand:
    container_number: str
    bill_of_lading: str
    vessel_call: str
    terminal: str
    release_to_organisation_id: uuid.UUID
    valid_from: datetime
    valid_until: datetime
    commercial: LightStatus = LightStatus.GREEN


@dataclass(frozen=True, slots=True)
class BatchItemResult:
    index: int
    container_number: str
    release_id: uuid.UUID | None
    error: DomainError | None


def _build(uow: UnitOfWork, actor: Actor, cmd: IssueCommand, now: datetime,
           kinds: dict[uuid.UUID, OrgKind], last: dict[str, LastRight]) -> ReleaseRight:
    """The right ``cmd`` asks for, or the DomainError that refuses it: every rule of one item, the
    storable shape of its values included, so that a batch refuses a bad item alone (issue_batch).
    ``last``: the containers' last rights (``_last_rights``), whose customs hold the new right takes."""
    container = ContainerNumber.parse(cmd.container_number)
    window = ErrorCode.INVALID_VALIDITY_WINDOW
    valid_from = storable.require_time(cmd.valid_from, field="valid_from", code=window)
    valid_until = storable.require_time(cmd.valid_until, field="valid_until", code=window)
    if cmd.release_to_organisation_id not in kinds:
        kinds[cmd.release_to_organisation_id] = organisation_kind(uow, cmd.release_to_organisation_id)
    right = ReleaseRight.issue(
        id=uuid.uuid4(),
        container=container,
        bill_of_lading=cmd.bill_of_lading,
        vessel_call=cmd.vessel_call,
        terminal=cmd.terminal,
        by=actor,
        release_to=cmd.release_to_organisation_id,
        release_to_kind=kinds[cmd.release_to_organisation_id],
        valid_from=valid_from,
        valid_until=valid_until,
        now=now,
        commercial=cmd.commercial,
        last=last.get(container.value),
    )
    # As stored, after the domain's normalisation (strip; upper() may lengthen a terminal code).
    storable.require_text(right.bill_of_lading, field="bill_of_lading", max_length=storable.MAX_BILL_OF_LADING)
    storable.require_text(right.vessel_call, field="vessel_call", max_length=storable.MAX_VESSEL_CALL)
    storable.require_text(right.terminal, field="terminal", max_length=storable.MAX_TERMINAL)
    return right


def _last_rights(uow: UnitOfWork, commands: Sequence[IssueCommand]) -> dict[str, LastRight]:
    """The last right of each container the commands name (one read for a batch), read before the new
    rights are: customs' hold on it carries over (review 141). Unlocked: a hold set on that right after
    this read stays on it alone, as one set after the new right is issued does."""
    wanted: list[str] = []
    for cmd in commands:
        try:
            wanted.append(ContainerNumber.parse(cmd.container_number).value)
        except DomainError:
            continue  # refused by _build, item by item
    return uow.releases.last_rights(wanted)


def _require_line(actor: Actor) -> None:
    """Before anything is looked up: a caller that may not issue learns nothing of the organisations it
    names (whether one exists, its kind, whether it is active; review 110)."""
    if actor.kind is not OrgKind.SHIPPING_LINE:
        raise DomainError(ErrorCode.WRONG_ORGANISATION_KIND, "Only a shipping line issues release rights.")


def issue(uow: UnitOfWork, actor: Actor, cmd: IssueCommand, now: datetime) -> tuple[ReleaseRight, Receipt]:
    _require_line(actor)
    acting_organisation_active(uow, actor)
    right = _build(uow, actor, cmd, now, {}, _last_rights(uow, [cmd]))
    created, events = uow.releases.add_many([right])
    if right.id not in created:
        refused = DomainError(ErrorCode.ACTIVE_RIGHT_EXISTS, f"A live release right already exists for "
                              f"{right.container.value} on vessel call {right.vessel_call}.")
        refused.keep_effects = contest_holders(uow, actor, [right], now) > 0
        raise refused
    record_events(uow, right, events)
    _contests(uow, actor, [right], now)
    return right, receipt(right, events[-1])


def issue_batch(
    uow: UnitOfWork, actor: Actor, commands: Sequence[IssueCommand], now: datetime
) -> list[BatchItemResult]:
    """Every item is judged on its own: valid ones are issued, the rest come back with their error.

    A container already holding a live right for the vessel call (from an earlier or a concurrent
    batch, or twice in this one) is refused by the database's unique key, never by a prior read.
    """
    _require_line(actor)
    if not commands:
        raise DomainError(ErrorCode.BATCH_EMPTY, "A batch holds at least one right.")
    if len(commands) > MAX_BATCH:
        raise DomainError(ErrorCode.BATCH_TOO_LARGE, f"A batch holds at most {MAX_BATCH} rights.")
    acting_organisation_active(uow, actor)
    kinds: dict[uuid.UUID, OrgKind] = {}
    results: list[BatchItemResult] = []
    built: list[tuple[int, ReleaseRight]] = []
    last = _last_rights(uow, commands)
    for index, cmd in enumerate(commands):
        try:
            right = _build(uow, actor, cmd, now, kinds, last)
        except DomainError as exc:
            results.append(BatchItemResult(index, cmd.container_number, None, exc))
            continue
        built.append((index, right))
    created, events = uow.releases.add_many([r for _, r in built])
    by_release: dict[uuid.UUID, list] = {}
    for e in events:
        by_release.setdefault(e.release_id, []).append(e)
    record_many(uow, [(right, by_release[right.id]) for _, right in built if right.id in created])
    _contests(uow, actor, [right for _, right in built if right.id in created], now)
    contest_holders(uow, actor, [right for _, right in built if right.id not in created], now)
    for index, right in built:
        if right.id in created:
            results.append(BatchItemResult(index, right.container.value, right.id, None))
        else:
            results.append(BatchItemResult(index, right.container.value, None, DomainError(
                ErrorCode.ACTIVE_RIGHT_EXISTS,
                f"A live release right already exists for {right.container.value} on {right.vessel_call}.",
            )))
    results.sort(key=lambda r: r.index)
    return results


# The webhook's event type and the audit entry's kind, as for the engine's own events.
CONTESTED = "release.container_contested"


def _contested_payload(container: str, terminal: str) -> dict[str, str]:
    """What a contest says to a line about its own right: never the other line."""
    return {"container_number": container, "terminal": terminal, "reason": g.Reason.CONTAINER_CONTESTED.value}


def _contests(uow: UnitOfWork, actor: Actor, issued: Sequence[ReleaseRight], now: datetime) -> None:
    """``alert_contested`` and ``inherit_contest`` for the rights just issued whose container holds a
    right issued before: only such a right can be a rival or carry the line's mark. A batch of 10 000 new
    containers reads two columns of its own rows instead of every right's gate facts and an update over
    all of them.

    Issues on one container read one after the other (``serialise_issues``), from here, after the rights
    are inserted, until the commit: of two lines issuing a container at once, the second reads the first's
    right (its read waits for the first's commit), so both are told. Taken this late, the locks are held
    for the reads below and the commit only, not for the whole issue (a 10 000-right batch covers every
    bucket: review 115)."""
    uow.releases.serialise_issues([r.container.value for r in issued])
    shared = uow.releases.containers_with_others([r.container.value for r in issued], {r.id for r in issued})
    concerned = [r for r in issued if r.container.value in shared]
    alert_contested(uow, actor, concerned, now)
    inherit_contest(uow, actor, concerned, now)


def alert_contested(uow: UnitOfWork, actor: Actor, issued: Sequence[ReleaseRight], now: datetime) -> int:
    """Tell each line whose live right a new right contests (another line's, on the same container at the
    same terminal: the gate now answers ``review`` ``container_contested`` for it, domain/gate.py), and
    the new right's own line, by a ``release.container_contested`` webhook about its own right, and port
    security by an audit entry on the new right naming the rights and lines. The payload names no other
    line. How many new rights were contested; one read of the issued containers' rights.

    A line is told of its right's contest once per contesting line while that line holds a live right
    there (review 105): a line that issues the container again and again (any vessel call, a batch of
    thousands) queues no more webhooks to the other line than one; port security's entry is written
    for each new right all the same."""
    if not issued:
        return 0
    by_container: dict[str, list[g.RightFacts]] = {}
    for found in uow.gate.rights(sorted({r.container.value for r in issued})):
        by_container.setdefault(found.container, []).append(found)
    new = {r.id for r in issued}
    events: list[PublishedEvent] = []
    told: set[tuple[uuid.UUID, uuid.UUID | None]] = set()
    entries = []
    for right in issued:
        facts = g.RightFacts.from_right(right)
        same = by_container.get(facts.container, [])  # a batch's 10 000 rights: each against its container's
        others = g.rivals(same, facts, terminal=right.terminal, now=now)
        if not others:
            continue
        payload = _contested_payload(right.container.value, right.terminal)
        if _holds_another(same, facts, new, now):  # the other lines were told when that one came
            told.update((r.id, facts.issuer) for r in others)
        for about in (facts, *others):
            assert about.issuer is not None
            if about is not facts and (about.id, facts.issuer) in told:
                continue
            told.add((about.id, facts.issuer))
            events.append(PublishedEvent(uuid.uuid4(), CONTESTED, about.id, now, frozenset({about.issuer}), payload))
        entries.append((CONTESTED, actor.as_dict(), str(right.id), {
            **payload, "rights": [str(r.id) for r in others],
            "issuers": sorted({str(r.issuer) for r in others})}, now))
    if entries:
        uow.audit.append_many(entries)
        uow.outbox.publish(events)
    return len(entries)


def _holds_another(found: Sequence[g.RightFacts], right: g.RightFacts, new: set[uuid.UUID], now: datetime) -> bool:
    """Whether ``right``'s line held a live right on its container at its terminal before this issue."""
    return any(r.id not in new for r in g.own_others(found, right, now=now))


def contest_holders(uow: UnitOfWork, actor: Actor, refused: Sequence[ReleaseRight], now: datetime) -> int:
    """Rights refused because a live right holds their container and vessel call: each such right that
    another line issued is marked contested (once), and its line and port security are told, as in
    ``alert_contested``. SPEC.md keeps one live right per container and vessel call, so the first issuer
    holds the key; without the mark, a line with nothing to do with the container that issued it first
    (the stay number is public) would lock the real carrier out and get it through the gate. With it,
    the gate answers ``review`` ``container_contested`` for that right. How many were newly marked: the
    caller commits them even though it refuses (``DomainError.keep_effects``).

    The mark is the holding line's on the container, not one right's (reviews 105, 107): the line's other
    rights on it, at any terminal, are marked with it (a right it issued before on another vessel call,
    which its driver would be nominated on), and ``inherit_contest`` marks each right it issues on it after
    (on another vessel call, at another terminal, or on the real call once it revoked the marked right).
    The gate reads it so too (domain/gate.py ``line_marked``), which also covers a right issued in a race
    with the refusal, that neither saw. A completed right's mark stays with it: the line's next voyage of
    the container starts clean."""
    assert actor.organisation_id is not None
    marked = uow.releases.mark_contested(sorted({k for r in refused if (k := r.active_key)}), actor.organisation_id,
                                         now)
    _tell_marked(uow, actor, marked, {"refused_issuer": str(actor.organisation_id)}, now)
    return len(marked)


def inherit_contest(uow: UnitOfWork, actor: Actor, issued: Sequence[ReleaseRight], now: datetime) -> int:
    """Rights just issued by a line whose right on the same container was marked contested
    (``contest_holders``; at any terminal, in any state since but completed, revoked included) are born
    marked, and the line and port security told as for the mark: a line cannot shed a contest by issuing
    the container again. How many."""
    marked = uow.releases.inherit_contest([r.id for r in issued], now)
    ids = {m.id for m in marked}
    for right in issued:
        if right.id in ids:
            right.contested_at = now  # as stored: the answer shows it, at the version the mark made
            right.version += 1
    _tell_marked(uow, actor, marked, {"inherited": True}, now)
    return len(marked)


def _tell_marked(uow: UnitOfWork, actor: Actor, marked: Sequence[ContestedRight], data: dict[str, Any],
                 now: datetime) -> None:
    """Each right newly marked contested: an audit entry for port security, a webhook to its own line."""
    if not marked:
        return
    uow.audit.append_many((CONTESTED, actor.as_dict(), str(m.id), {
        **_contested_payload(m.container, m.terminal), "vessel_call": m.vessel_call, **data}, now) for m in marked)
    uow.outbox.publish([PublishedEvent(uuid.uuid4(), CONTESTED, m.id, now, frozenset({m.issuer}),
                                       _contested_payload(m.container, m.terminal)) for m in marked])

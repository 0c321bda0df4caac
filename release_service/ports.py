"""The release engine's ports: small protocols named by role (STYLE.md). Adapters implement them."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from quaygate.single_use import Claim

from .domain.gate import BadgeFacts, BadgeRead, RightFacts, ScreeningResult, TerminalPolicy
from .domain.gate_pass import BadgeHash, OutboxMark
from .domain.parties import Actor, Organisation
from .domain.plates import Plate
from .domain.release import LastRight, ReleaseRight, Screening, State, Transfer
from .domain.webhooks import Delivery, Subscription

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class PersonRef:
    id: uuid.UUID
    given_name: str
    family_name: str
    # Whom port security registered him for, when it created his row; never updated since, so it says
    # nothing of whom he drives for now and links him to no organisation (Directory.drives_for).
    employer_organisation_id: uuid.UUID | None
    status: str = "active"  # identity's persons.status: active, or suspended by port security


@dataclass(frozen=True, slots=True)
class BadgeRef:
    id: uuid.UUID
    person_id: uuid.UUID
    scheme: str
    number: str
    card_uid: str | None
    status: str
    valid_from: datetime
    valid_until: datetime


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: uuid.UUID
    release_id: uuid.UUID
    seq: int
    type: str
    actor: dict[str, Any]
    data: dict[str, Any]
    at: datetime


@dataclass(frozen=True, slots=True)
class ReleaseFilter:
    """A page of rights. The store takes container_number, terminal and vessel_call as rights compare them
    (``queries.as_compared``): the ISO 6346 number, the terminal's code, the vessel call's key."""

    state: State | None = None
    container_number: str | None = None
    vessel_call: str | None = None
    terminal: str | None = None
    bill_of_lading: str | None = None
    limit: int = 50
    cursor: tuple[datetime, uuid.UUID] | None = None


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    """An event leaving the unit of work for webhooks: who may hear it, and what it says. ``seq``: its
    number in the right's history (``StoredEvent.seq``); None for a notice that is not one of the right's
    events (a contested container, an offline pass flagged, a screening alert)."""

    id: uuid.UUID
    type: str
    release_id: uuid.UUID
    at: datetime
    audience: frozenset[uuid.UUID]
    payload: dict[str, Any] = field(default_factory=dict)
    seq: int | None = None


class ReleaseRightStore(Protocol):
    def get(self, release_id: uuid.UUID, *, for_update: bool = False) -> ReleaseRight | None: ...

    def get_by_transfer(self, transfer_id: uuid.UUID, *, for_update: bool = False) -> ReleaseRight | None: ...

    def of_containers(self, containers: Sequence[str]) -> list[ReleaseRight]:
        """Every right of these containers but deleted ones, unlocked."""
        ...

    def add(self, right: ReleaseRight) -> list[StoredEvent]:
        """Insert a new right; raises DomainError(ACTIVE_RIGHT_EXISTS) on a live duplicate."""
        ...

    def add_many(self, rights: Sequence[ReleaseRight]) -> tuple[set[uuid.UUID], list[StoredEvent]]:
        """Insert many; those colliding with a live right are skipped. Returns the ids inserted."""
        ...

    def containers_with_others(self, containers: Sequence[str], ids: set[uuid.UUID]) -> set[str]:
        """Those of ``containers`` with a right (any state, deleted or not) that is not one of ``ids``."""
        ...

    def serialise_issues(self, containers: Sequence[str]) -> None:
        """Hold, until this transaction ends, every other issue on these containers: each issue reads the
        containers' rights after the one before it committed (no two issuers miss each other)."""
        ...

    def mark_contested(self, keys: Sequence[str], issuer: uuid.UUID, now: datetime) -> list[ContestedRight]:
        """Mark contested (``contested_at``, once) the rights holding these active keys that another
        issuer than ``issuer`` issued, with every other right that issuer holds on the same container
        (at any terminal; any state but completed); those newly marked. A mark is a change of the right:
        at its next version (a gate commit that read it before writes nothing, and decides again)."""
        ...

    def inherit_contest(self, ids: Sequence[uuid.UUID], now: datetime) -> list[ContestedRight]:
        """Mark contested the rights ``ids`` (just issued) whose issuer has a right marked contested on
        the same container (at any terminal; in any state but completed); those newly marked, each at
        its next version."""
        ...

    def save(self, right: ReleaseRight) -> list[StoredEvent]:
        """Persist a changed right, its changed transfers and its pending events (flush only)."""
        ...

    def claim_gate_in(self, right: ReleaseRight, *, expected: State) -> list[StoredEvent] | None:
        """Conditional update: events for the one caller that moved it from ``expected``, else None."""
        ...

    def list_visible(self, actor: Actor, flt: ReleaseFilter, now: datetime) -> list[ReleaseRight]:
        """The rights ``actor`` may see that ``flt`` names, its state as ``effective_state`` shows it at ``now``."""
        ...

    def events(self, release_id: uuid.UUID) -> list[StoredEvent]: ...

    def transfers(self, release_id: uuid.UUID) -> list[Transfer]: ...

    def holders_chain(self, release_id: uuid.UUID) -> list[uuid.UUID]: ...

    def has_been_party(self, release_id: uuid.UUID, organisation_id: uuid.UUID) -> bool: ...

    def last_rights(self, containers: Sequence[str]) -> dict[str, LastRight]:
        """Each of these containers' last right by issue (any state, deleted too) of those customs' own hold
        is on that did not take the container out, else its last right, by container number (the right whose
        hold a new right carries, ``carried_customs_hold``); a container with none is absent. A deleted right
        whose light still shows a hold it only carried (``ReleaseRight.customs_carried``) is left out."""
        ...

    def customs_holds_by(self, organisation_id: uuid.UUID) -> list[CustomsHold]:
        """The holds (red or scan) a customs organisation set on live rights, by right id."""
        ...

    def due_to_lapse(self, now: datetime, limit: int) -> list[uuid.UUID]: ...


class Directory(Protocol):
    """Organisations, persons and badges as the release engine needs to see them."""

    def organisation(self, organisation_id: uuid.UUID) -> Organisation | None: ...

    def person(self, person_id: uuid.UUID) -> PersonRef | None: ...

    def hold_person(self, person_id: uuid.UUID) -> None:
        """Share-lock the person's row until the caller's transaction ends, before he is screened: what
        changes his screening (a ban load, a suspension) waits for it, or is waited for and seen."""
        ...

    def badge(self, *, scheme: str, number: str | None, card_uid: str | None) -> BadgeRef | None: ...

    def badges_of(self, person_id: uuid.UUID) -> list[BadgeRef]: ...

    def trucks_like(self, plate: Plate) -> list[tuple[Plate, uuid.UUID | None]]:
        """The trucks of the register (quaygate.schema ``trucks``, kept by port security: identity.trucks)
        the gate could take for ``plate``: those whose text has its ``reads.plate_skeleton`` (the same
        text, or one differing only in look-alike characters), under any country, the plate itself among
        them when registered; each with the transport operator it is registered to, None when the row
        names none."""
        ...

    def drives_for(self, person_id: uuid.UUID, organisation_id: uuid.UUID, *, now: datetime) -> bool:
        """Whether the badge office links the person to the organisation as its driver, at ``now``: a
        ``driver`` membership there in force (an employee or a subcontractor), or a badge issued for it
        and usable (active and in date: a revoked or expired one no longer links him). Nothing else: the
        employer on his person row (``PersonRef.employer_organisation_id``) is not a link."""
        ...

    def acts_in(self, person_id: uuid.UUID, organisation_id: uuid.UUID, roles: Collection[str], *,
                now: datetime) -> bool:
        """Whether the person is active and holds one of ``roles`` there, in force at ``now``, read under a
        share lock of his row that his role's removal, expiry or his suspension waits for."""
        ...

    def rights_in_motion(self, organisation_id: uuid.UUID) -> list[uuid.UUID]:
        """The rights an organisation set in motion or that are on their way to it: the live rights it
        holds (a transfer it sent is pending only on a right it holds) and those with a transfer to it
        pending. By id, ascending (the order their locks are taken in)."""
        ...


class DriverScreening(Protocol):
    """Screens a driver at nomination (and for an override, and an offline pass's reconcile): a valid
    badge, no port ban (SPEC.md, issue 4), and not suspended by port security (``person_suspended``)."""

    def screen(self, person_id: uuid.UUID, *, terminal: str, now: datetime) -> Screening: ...


class PortBanLookup(Protocol):
    """The national port-ban list as the release engine sees it (issue 4): ``clear``, ``banned``
    (reason ``person_banned``) or ``unavailable`` (reason ``screening_unavailable``) for a driver at the
    port of ``terminal``."""

    def screen(self, person_id: uuid.UUID, *, terminal: str, now: datetime) -> Screening: ...


class AuditLog(Protocol):
    """Appends to the tamper-evident trail in the caller's transaction."""

    def append(self, kind: str, *, actor: dict[str, Any], subject: str | None, data: dict[str, Any],
               at: datetime) -> None: ...

    def append_many(self, entries: Iterable[tuple[str, dict[str, Any], str | None, dict[str, Any], datetime]]) -> None:
        ...


class Outbox(Protocol):
    """Queues webhook deliveries in the caller's transaction (transactional outbox)."""

    def publish(self, events: Sequence[PublishedEvent]) -> None: ...


@dataclass(frozen=True, slots=True)
class ContestedRight:
    """A right marked contested: another line was refused its container and vessel call."""

    id: uuid.UUID
    container: str
    terminal: str
    vessel_call: str
    issuer: uuid.UUID


@dataclass(frozen=True, slots=True)
class CustomsHold:
    """A live right's customs hold (red or scan) and the container it holds."""

    release_id: uuid.UUID
    container: str
    status: str


class IdempotencyStore(Protocol):
    def claim(self, client_id: str, key: str, fingerprint: str, now: datetime) -> tuple[int, Any] | None:
        """Reserve ``key`` in this transaction, or return the stored (status, body) of its first use.

        Raises DomainError(IDEMPOTENCY_KEY_REUSED) when the key was used for a different request. A key
        first used longer than the store's retention before ``now`` is absent: reserved afresh, whatever
        request it carried (review 159).
        """
        ...

    def complete(self, client_id: str, key: str, status_code: int, body: Any) -> None: ...

    def forget(self, client_id: str, key: str) -> None:
        """Release a key reserved in this transaction (a refusal whose effects commit: services.common.run)."""
        ...


# ---- webhooks --------------------------------------------------------------------------------

class Sealer(Protocol):
    """Encryption at rest with associated data (quaygate.crypto.DataCipher)."""

    def seal(self, plaintext: bytes, aad: bytes) -> str: ...

    def open(self, sealed: str, aad: bytes) -> bytes: ...


class WebhookStore(Protocol):
    def add_subscription(self, sub: Subscription, secret_enc: str) -> None: ...

    def count_locked(self, organisation_id: uuid.UUID) -> int:
        """The organisation's active subscriptions, under a lock that serialises its creations."""
        ...

    def subscriptions(self, organisation_id: uuid.UUID) -> list[Subscription]: ...

    def subscription(self, organisation_id: uuid.UUID, subscription_id: uuid.UUID, *,
                     for_update: bool = False) -> Subscription | None: ...

    def made_by(self, person_id: uuid.UUID, organisation_id: uuid.UUID | None) -> list[Subscription]:
        """The active subscriptions the person made, for the organisation (None: any), locked."""
        ...

    def sealed_secret(self, subscription_id: uuid.UUID) -> str: ...

    def set_sealed_secret(self, subscription_id: uuid.UUID, secret_enc: str) -> None: ...

    def deactivate(self, subscription_id: uuid.UUID) -> int:
        """Close it and cancel its queued deliveries; how many were cancelled."""
        ...

    def dead_letters(self, organisation_id: uuid.UUID, limit: int) -> list[Delivery]: ...

    def delivery(self, organisation_id: uuid.UUID, delivery_id: uuid.UUID) -> Delivery | None: ...

    def requeue_dead(self, organisation_id: uuid.UUID, delivery_id: uuid.UUID, now: datetime) -> bool: ...


class WebhookUnitOfWork(Protocol):
    @property
    def webhooks(self) -> WebhookStore: ...  # read-only, so an adapter's own store type satisfies it

    @property
    def audit(self) -> AuditLog: ...  # every change of a subscription is on the trail, in its transaction

    @property
    def directory(self) -> Directory: ...  # a deactivated organisation changes no subscription (review 77)

    def __enter__(self) -> WebhookUnitOfWork: ...

    def __exit__(self, *exc: object) -> None: ...

    def commit(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StoredDecision:
    """A gate decision as recorded (issue 5): ``response`` is the body the gate received."""

    id: uuid.UUID
    fingerprint: str
    response: dict[str, Any]
    decision: str
    release_id: uuid.UUID | None
    committed: bool
    direction: str
    terminal: str
    decided_at: datetime | None = None  # as recorded in the database (a copy in Redis does not say)
    # The nomination it judged, [driver person id, plate, country] (``verify.judged``), as recorded in the
    # database; None when it judged none, or was recorded before migration 0012.
    nomination: Sequence[str | None] | None = None
    # The face evidence it weighed (``gate.FaceRecord.as_json``), as recorded in the database; None in a copy
    # in Redis, or for a row recorded before migration 0025.
    face: Mapping[str, Any] | None = None


# A decision row's keys that are no gate_decisions columns: audit entries ({"kind", "actor", "subject",
# "data"}, at the row's ``decided_at``). Whatever records the row writes them with it, in the same statement
# or transaction (the drainer for a check kept in Redis), and only when the row is written. ``FACE_CLAIM``:
# a face match result the gate claimed (``identity.face.verify.claimed``); ``BADGE_ALARM``: port security's
# alarm on a badge blocked, revoked or another person's (``release.gate_badge_alarm``, review 174).
FACE_CLAIM = "face_claim"
BADGE_ALARM = "badge_alarm"
ROW_ENTRIES = (FACE_CLAIM, BADGE_ALARM)


class FactsUnavailable(Exception):
    """The cache of gate facts could not answer: decide from the unit of work (PostgreSQL)."""


@dataclass(frozen=True, slots=True)
class GateSnapshot:
    """What one read of the cached gate facts found: a decision already recorded under the request_id,
    and the facts (the cache reads what it misses through to PostgreSQL)."""

    replay: StoredDecision | None
    policy: TerminalPolicy
    rights: list[RightFacts]
    badge: BadgeFacts | None
    screening: ScreeningResult
    also: tuple[bytes | None, ...] = ()  # the values of the read's ``also`` names, in their order


@dataclass(frozen=True, slots=True)
class Recalled:
    """The gate facts this process read last (``GateFacts.recall``), with what they were read under:
    a check may be decided on them, and kept only if they are still current when it is recorded
    (``GateFacts.keep_if_current``)."""

    snapshot: GateSnapshot
    under: tuple[tuple[str, bytes], ...]  # (family, generation) the copies were read under


@dataclass(frozen=True, slots=True)
class Kept:
    """What ``GateFacts.keep_if_current`` did: ``recorded``; or found the request_id taken (``twin``);
    or recorded nothing because the facts moved on or a revocation entry is set (neither: decide the
    long way). ``also``: the values of its ``also`` names, read in the same step, in their order."""

    recorded: bool
    twin: StoredDecision | None
    also: tuple[bytes | None, ...]


@dataclass(frozen=True, slots=True)
class FaceOutcome:
    """A gate capture matched 1:1 against one person's enrolled face (issue 6): the Euclidean
    ``distance`` and the ``tolerance`` applied, or, when no comparison was made, ``distance`` None and
    ``reason`` why (face_not_enrolled, face_busy, face_unavailable, face_not_live, face_replayed).
    Never the image."""

    person_id: uuid.UUID
    distance: float | None
    matched: bool
    reason: str | None
    tolerance: float


class FaceCaptureRefused(Exception):
    """The capture itself is unusable (not a JPEG/PNG, too large, no face, two faces, too small,
    blurred): the gate is told to send another one, and no decision is recorded."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class FaceMatcher(Protocol):
    """Identity's face verification, as the gate uses it (wired in the composition root). Blocking:
    call it from a worker thread; the matching itself runs in identity's process pool. Audits the
    distance, the tolerance and the outcome with ``context`` (never the image). Raises
    FaceCaptureRefused for an unusable capture."""

    def match(self, person_id: uuid.UUID, image: bytes, *, tolerance: float,
              context: dict[str, Any]) -> FaceOutcome: ...


class GateFacts(Protocol):
    """The gate decision's facts kept close (issue 5 "Hot path"): exact by invalidation on every
    committed change, PostgreSQL staying the truth. ``read`` and ``record`` may raise FactsUnavailable."""

    def read(self, *, terminal: str, request_id: str, badge: BadgeRead | None, containers: Sequence[str],
             now: datetime, through: bool = True, within: UnitOfWork | None = None,
             also: Sequence[str] = ()) -> GateSnapshot | None:
        """The facts, misses read through to PostgreSQL (in ``within`` when given, else in a unit of
        work of its own) and kept; with ``through=False``, None on a miss. ``also``: names read as they
        are in the same round trip (the caller's token revocation entries), in ``GateSnapshot.also``."""
        ...

    def record(self, row: dict[str, Any]) -> StoredDecision | None:
        """Keep a check decision; the decision recorded first when the request_id is taken."""
        ...

    def remember(self, row: dict[str, Any]) -> None:
        """A committed decision (the row recorded), so that its request_id is answered from here too;
        best effort, never raises. Sends the invalidations held (``holding``) with it."""
        ...

    def holding(self) -> AbstractContextManager[None]:
        """A block whose commits' invalidations, in this thread, wait to go with its ``remember`` (one
        round trip for both); whatever is still held when the block ends is sent then."""
        ...

    def recall(self, *, terminal: str, badge: BadgeRead | None, containers: Sequence[str],
               now: datetime) -> Recalled | None:
        """The facts of a check as this process read them last, with no round trip; None when any of
        them was not read lately. Never to be trusted alone: ``keep_if_current`` checks them."""
        ...

    def keep_if_current(self, row: dict[str, Any], recalled: Recalled, also: Sequence[str] = ()) -> Kept:
        """Keep a check decision made on ``recalled`` facts, in one step, only if those facts are still
        the current ones, the request_id is free and no ``also`` name is set."""
        ...

    async def keep_if_current_async(self, row: dict[str, Any], recalled: Recalled, also: Sequence[str] = ()) -> Kept:
        """``keep_if_current``, awaited on the event loop instead of holding it."""
        ...

    async def read_cached_async(self, *, terminal: str, request_id: str, badge: BadgeRead | None,
                                containers: Sequence[str], now: datetime, also: Sequence[str] = ()
                                ) -> GateSnapshot | None:
        """``read(through=False)``, awaited on the event loop."""
        ...

    async def record_async(self, row: dict[str, Any]) -> StoredDecision | None:
        """``record``, awaited on the event loop."""
        ...

    async def claim_async(self, keys: list[str], args: list[Any]) -> Claim:
        """Another part's single-use claim in the same Redis (a DPoP proof's: quaygate/dataset.py
        ``CLAIM``, its keys and arguments), awaited on the event loop: true when this call claimed it.
        May raise FactsUnavailable."""
        ...

    def moving(self, rights: Sequence[str]) -> AbstractContextManager[None]:
        """The invalidation of the rights of the containers ``rights``, owed from before a statement that
        may move one is sent: when the block raises (the statement's outcome unknown), no copy is
        trusted until Redis took it."""
        ...

    async def remember_async(self, row: dict[str, Any], rights: Sequence[str] = ()) -> None:
        """``remember``, awaited on the event loop, with the invalidation of the rights of the
        containers ``rights`` (a commit decided on the loop, ``LoopGateStore``, moved one)."""
        ...


@dataclass(frozen=True, slots=True)
class RightsRead:
    """What a gate commit decided on beside the right it moves (review 174, finding 2): the containers whose
    rights it read (``ReleaseRightStore.of_containers``) and every right found there, at the version read.
    Customs' hold on another right of the container holds the truck (``gate.container_held``), and another
    line's right issued on it puts the gate-in under review (``gate.container_contested``): neither changes
    the right moved. So the move is written only if the containers' rights are still those, each at that
    version (none changed, none new, none gone); else nothing is written and the commit decides again."""

    containers: tuple[str, ...]
    versions: tuple[tuple[uuid.UUID, int], ...]

    @classmethod
    def of(cls, containers: Sequence[str], found: Sequence[ReleaseRight]) -> RightsRead:
        """Taken as the rights are read, before any of them is moved."""
        return cls(tuple(containers), tuple((r.id, r.version) for r in found))


class LoopGateUnit(Protocol):
    """A gate commit's reads and writes on one of the event loop's connections (PostgreSQL), each
    statement committed on its own, as ``GateStore`` does them in an autocommitted unit of work."""

    async def rights_of(self, containers: Sequence[str]) -> list[ReleaseRight]:
        """Every right of these containers but deleted ones, unlocked, as ``ReleaseStore.of_containers``."""
        ...

    async def record(self, row: dict[str, Any]) -> None:
        """As ``GateStore.record``."""
        ...

    async def record_move(self, row: dict[str, Any], right: ReleaseRight,
                          audiences: Sequence[frozenset[uuid.UUID]], read: RightsRead) -> bool:
        """As ``GateStore.record_move``, for a right read by ``rights_of`` in this unit."""
        ...


class LoopGateStore(Protocol):
    """The event loop's way to PostgreSQL for a gate commit (issue 5): no worker thread waits on it."""

    def usable(self) -> bool:
        """Whether the running loop may use it (it is open on this loop)."""
        ...

    def unit(self) -> AbstractAsyncContextManager[LoopGateUnit]:
        """One connection for the block; raises ``LoopUnavailable`` when none comes free in time, or
        when a statement's connection was lost."""
        ...

    async def run_to_end(self, work: Awaitable[T]) -> T:
        """``work`` awaited to its end even if the caller is cancelled (a gate that hung up, a server
        stopping), as a worker thread would run it: a move written is always remembered."""
        ...


class LoopUnavailable(Exception):
    """No connection of the loop's came free in time (nothing sent), or the one in use was lost (what
    it was sending may or may not have been written): settle it on a worker thread, which finds under
    the request_id whatever was written."""


class GateStore(Protocol):
    """What the gate decision reads (the facts) and writes (the decisions), in the unit of work."""

    def rights(self, containers: Sequence[str]) -> list[RightFacts]: ...

    def badge(self, read: BadgeRead) -> BadgeFacts: ...

    def screen(self, person_id: uuid.UUID, *, terminal: str, now: datetime) -> ScreeningResult: ...

    def policy(self, terminal: str) -> TerminalPolicy: ...

    def find(self, terminal: str, request_id: str) -> StoredDecision | None: ...

    def get(self, decision_id: uuid.UUID) -> StoredDecision | None: ...

    def record(self, row: dict[str, Any]) -> None:
        """Insert a decision; raises ``DuplicateDecision`` when its (terminal, request_id) exists."""

    @property
    def moves_at_once(self) -> bool:
        """Whether ``record_move`` can be used (else: save the right, then ``record``)."""
        ...

    def record_move(self, row: dict[str, Any], right: ReleaseRight,
                    audiences: Sequence[frozenset[uuid.UUID]], read: RightsRead) -> bool:
        """Record a decision and the gate move it made at once: ``right`` (read unlocked, at
        ``right.version``, then moved) saved with its events' audit entries and webhook deliveries.
        False, with nothing written, when the right changed since it was read, or the rights ``read``
        beside it are no longer its containers' rights at those versions (``RightsRead``); raises
        ``DuplicateDecision`` as ``record`` does."""
        ...

    def record_override(self, row: dict[str, Any]) -> None: ...

    def overridden(self, decision_id: uuid.UUID) -> bool: ...


class DuplicateDecision(Exception):
    """A twin request with the same (terminal, request_id) recorded its decision first."""


class UnitOfWork(Protocol):
    releases: ReleaseRightStore
    directory: Directory
    screening: DriverScreening
    audit: AuditLog
    outbox: Outbox
    idempotency: IdempotencyStore
    gate: GateStore

    def __enter__(self) -> UnitOfWork: ...

    def __exit__(self, *exc: object) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


# ---- offline gate mode (issue 5) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PassSubject:
    """A right a gate pass is issued for, with the nominated driver's badges and screening."""

    right: RightFacts
    badges: tuple[BadgeRef, ...]
    activations: dict[uuid.UUID, frozenset[str]]  # badge id -> terminals where it is activated
    holder_name: str | None
    screening: ScreeningResult
    # The start of the next ban on the driver at the terminal's port, as the list held says, after the
    # screening's now (None: none ahead): the pass ends there (gate_pass.pass_life, review 147, finding 2).
    next_ban: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredOfflineDecision:
    id: uuid.UUID
    fingerprint: str
    response: dict[str, Any]


class GateOfflineStore(Protocol):
    """Gate passes' facts and the offline decisions reconciled from the adapters."""

    def pass_subjects(self, terminal: str, *, now: datetime, gated_in_since: datetime, near: timedelta,
                      limit: int) -> list[PassSubject]:
        """The rights a pass is issued for: nominated to ``terminal`` and valid at ``now``, or gated in there
        since ``gated_in_since``, to a driver port security has not suspended; at most ``limit``, the most
        relevant first: the rights gated in (the latest gate-in first), then those usable now, without a
        slot or with a slot within ``near`` of ``now`` on either side (the soonest to lapse first: the gate
        does not judge slots, a truck may be early or late), then slots further ahead (the nearest first),
        then slots missed long ago (the latest first)."""

    def ban_list_as_of(self) -> datetime | None: ...

    def find(self, terminal: str, request_id: str) -> StoredOfflineDecision | None: ...

    def record(self, row: dict[str, Any]) -> None:
        """Insert; raises ``DuplicateDecision`` when its (terminal, request_id) exists."""

    def last_use(self, release_id: uuid.UUID, event_types: Sequence[str]) -> tuple[uuid.UUID | None, bool]:
        """The decision behind the right's latest move of one of ``event_types``, and whether it was offline."""

    def outbox_mark(self, client_id: str, outbox_id: str) -> OutboxMark | None:
        """The highest place this client's outbox ``outbox_id`` told us, locked till the commit."""

    def keep_outbox_mark(self, client_id: str, terminal: str, mark: OutboxMark, *, now: datetime) -> None: ...

    def outbox_place_used(self, client_id: str, outbox_id: str, seq: int) -> str | None:
        """The request_id of a decision recorded at that place of that outbox, if any."""

    def outbox_unreported(self, client_id: str, outbox_id: str) -> list[dict[str, Any]]:
        """This client's other chains (not ``outbox_id``) whose highest place told is above every place it
        reported a decision from: ``outbox_id``, ``known_seq``, ``reported_seq`` (None: none reported)."""

    def latest_decided_below(self, client_id: str, outbox_id: str, seq: int) -> datetime | None:
        """The latest ``decided_at`` of the decisions this client reported from lower places of that outbox
        than ``seq`` (decided before it, in the chain's order), if any."""

    def policy_at(self, terminal: str, at: datetime) -> TerminalPolicy:
        """The terminal's gate policy as it stood at ``at``, as known now: the old policy of the first
        change audited after ``at``, else the policy stored now."""

    def cut_off_since(self, organisation_id: uuid.UUID, person_id: uuid.UUID | None, since: datetime
                      ) -> tuple[bool, bool]:
        """Whether port security deactivated ``organisation_id``, and whether it suspended ``person_id``,
        at ``since`` or after (as audited), whatever their status now."""

    def banned_between(self, person_id: uuid.UUID, *, terminal: str, release_id: uuid.UUID, since: datetime,
                       until: datetime) -> bool:
        """Whether a port ban on ``person_id`` was in effect at ``terminal`` at any time from ``since`` to
        ``until``, as the register's bans in force say and, for a ban lifted since (the lift deletes it), as
        its consequences were audited (an alert on the right ``release_id``, his badges deactivated)."""


class OfflineUnitOfWork(UnitOfWork, Protocol):
    offline: GateOfflineStore


class HashingBusy(Exception):
    """No badge-hash slot came free in time (``BadgeHasher``): nothing was judged; send the report again."""


class BadgeHasher(Protocol):
    """Hashes a badge read under a gate pass's salt (``BadgeHash.of``, scrypt: some 65 to 130 ms of CPU)
    within a bound on the hashes at once in this process, remembering what it hashed
    (adapters/badge_hashing.py, review 143)."""

    def of(self, hashing: BadgeHash, scheme: str, value: str, *, wait: bool = True) -> str:
        """The hash, remembered or taken in a slot: waited for briefly (``wait``), or only if free now.
        Raises ``HashingBusy`` when none comes free."""


class PassSigner(Protocol):
    """Signs gate passes with our key set (ES256) and checks one of ours back."""

    def sign(self, claims: dict[str, Any]) -> str: ...

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a genuine pass of ours (signature, alg, typ), else None. Expiry is not judged."""

"""Lane correlation: group one truck's separate reads into one gate verify request.

A truck stops at a lane; its plate, container, badge and (optional) face reads arrive separately, in
any order, seconds apart, sometimes twice. ``LaneCorrelator`` is the pure state machine of ONE lane:
time is passed in (``now``, monotonic seconds, never read from a clock), and it answers with the
trucks that are ready to verify. Standard library only.

Per pending truck::

                add (required kinds incomplete)
      open ─────────────────────────────────────► collecting ──── window over ───► emitted (timed_out)
                                                      ├─ the oldest of max_pending, one more opens ─► emitted (evicted)
                                                      │
                                  required kinds all present
                                                      ▼
             face present, face required, or no face wait ──► emitted (complete)
             else waiting for face ── face arrives | face wait over | window over |
                                      next truck opens ──────────────► emitted (complete)

Rules (each has a test in tests/test_gate_correlate.py):
1. Placement of a read of kind K, in this order:
   a. a pending truck already holding a SIMILAR K read takes it: the higher confidence is kept (ties:
      the earlier ``observed_at``, then the value), so the choice does not depend on arrival order;
      except that a face match result saying ``matched: false`` wins over any other face (a mismatch
      is sticky: a retry or a spoof that matches later must not hide it). Two plates that are similar
      but not the SAME (equal once look-alikes are folded) are two different plates, maybe two trucks'
      (fleet plates 1-ABC-123 and 1-ABC-124): the truck is DOUBTFUL on its plate (``Ready.doubtful``,
      the other read kept in ``Ready.set_aside``), and its request says so with the plate's
      ``confidence`` 0, so the service answers ``plate_low_confidence`` (review), never a silent allow
      on whichever plate read more confidently (review 109). What is set aside does not depend on the
      order the reads came in: of each folded value the best read, every one not the same as the kept
      read (review 116). Container numbers the same way, except that "the same" is the very same
      number: look-alike folding cannot be trusted there, the check digit being blind to it
      (OOLU1000070 and DOLU1000070 are both valid) and many valid numbers being one serial digit apart
      (MSCU1234530 and MSCU1234550: check digit 0 from remainder 0 or 10). A second, different number
      for one truck makes it doubtful on its container, the other read set aside and the body's
      container ``confidence`` 0, so the service answers ``container_unreadable`` (review), never an
      allow on whichever box read better (review 153); the same number read twice still merges. And a
      container number like no other, read by a camera that has read none of a pending truck's numbers,
      is that truck's too (doubtful, the other number set aside): two cameras reading two numbers on the
      truck at the lane, never a truck of its own that the next truck's plate and badge would fill and
      send with this truck's box, this truck going clean on whichever number came first (review 158).
      One camera reading another number is reading another truck (b or c);
   b. else the OLDEST pending truck lacking K takes it (trucks pass a lane in order);
   c. else a new truck opens.
   Similar: plates and container numbers whose look-alike-folded forms (0/O/D/Q, 1/I, 2/Z, 5/S,
   8/B, 6/G) are at most one edit apart; badges with the same number or card UID; any two faces.
   So a later plate that differs by a lot from the first does NOT replace it: it starts a new
   truck (or fills an older truck still lacking a plate).
2. A truck is emitted exactly once (an eviction too): complete as soon as the required kinds are in (after the
   optional face wait), or timed out ``window_seconds`` after its first read with what it has
   (``missing`` says what), so the service answers review/deny with a reason instead of the truck
   waiting forever. When a new truck opens, older complete trucks stop waiting for a face.
3. A plate, container or badge read that is the same as one of a truck emitted less than
   ``window_seconds`` ago, from whichever source and camera (a rear camera's read, a camera's "update"
   event), is a late duplicate: it is dropped and reported (``late_read``, naming that truck's
   ``request_id``), never opens a phantom truck that the next truck's container and badge would fill
   and send as a clean request with the plate before (review 116). For plates "the same" is equal once
   look-alikes are folded, not similar: the next truck's plate one character off the last one's may be
   that truck's (fleet plates, review 109), so it is placed (rule 1), but it may as well be the last
   truck's plate misread: the truck that takes it is DOUBTFUL on its plate (confidence 0: review), never
   a clean allow on a plate that may be the truck's before (review 116). For containers "the same" is the
   very same number, as in rule 1a (review 153): MSCU1234550 read after a truck went on MSCU1234530 is
   another container, maybe the next truck's, so it is placed (rule 1); before, it was dropped as the
   last truck's, and the next truck carrying it lost its only container read (review 158).
3a. Faces (``_place_face``). A face names no truck: any two faces are "similar", so the content cannot
   say whose it is; only the lane's state and the face's ``observed_at`` can. The rule is chosen so that
   a face never yields a wrong allow: it never makes another truck complete, and it never opens a truck
   that another truck's reads could fill. "Recent" is the truck emitted last within the window.
   - A face match result saying ``matched: false`` is never let go (``_mismatch``). With a truck pending
     it goes to that truck (rule 1, the mismatch winning), whichever truck it was captured for: a
     refusal and an officer at worst, never a driver let through because his mismatch was taken for the
     truck before him. And recent, if its request carried no mismatch, is reported as a
     ``late_face_mismatch`` naming its ``request_id`` (the matcher answered after the request went, or
     changed its mind: the barrier may have opened for the wrong driver, so the caller records it and
     calls an officer, lane.py rule 8). With no truck pending it is that report alone, for recent
     whether it held a face or not; a duplicate (``late_read``) when recent's request carried a
     mismatch already.
   - Any other face (a match, or an image the service matches) is tied to the pending truck rule 1
     chooses, unless it can only be recent's: the very same read recent already holds (an at-least-once
     redelivery, QoS 1), or one observed before the pending truck's first read (trucks stop at the lane
     one after the other: a face captured before the next truck's first read was captured is the
     truck's before). A late duplicate of what recent's request carried is dropped as ``late_read``; a
     face for a recent truck whose request went WITHOUT a face is ``late_face`` (the caller notes it
     beside that request in the outbox): the service has decided, and the face is never a truck of its
     own, so it can never be joined by the next truck's reads and pass for that driver's. Before,
     a match for the next truck was dropped as a duplicate of the one before (face required: review),
     and a late match for a truck sent without one opened a phantom truck the next truck's reads filled.
   - With no truck pending and none recent, a face opens a truck, as any read after the window.
   Recent's reads take in what came late for it, so the same news again is said once.
   Limitation: a face that comes before any other read of its truck, within the window of the truck
   before, cannot be told from that truck's late face: it is reported as recent's, and its own truck
   goes without it (where a face is required: a timed-out request, review). That failure is safe.
3b. A plate that is ANOTHER plate than the one a truck was sent on, read after it was sent, is news for
   that truck, never a truck of its own (``_conflicting``): with nothing pending at the lane, a
   plate read not similar (rule 1) to any plate the truck emitted last within the window ("recent", rule
   3a) held, by a camera that has not read recent's plate, is reported as ``late_plate_mismatch`` naming
   recent's ``request_id`` (the caller records it and calls an officer at once, as for a late face
   mismatch, lane.py rule 8). The attack: the front camera reads a cloned nominated plate, the truck is
   sent as soon as its required reads are in and let through, and the rear camera reads the real plate
   seconds later; before, that read opened a phantom truck that timed out into a review half a minute
   later, and the request that opened the barrier was never marked. A camera that read recent's plate
   (before it was sent, or as a late duplicate) reading another plate is reading the next truck: the
   lane's front camera reading the truck behind is placed as any read (rules 1 and 3), never an officer
   call for every truck that follows within the window. Recent's reads take the plate in, so the same
   news again is a late duplicate. Limitations: a plate one edit off recent's (look-alikes folded) is
   rule 3's doubtful echo, not news (most likely a misread); with a truck pending the read is placed by
   rule 1 (it may be that truck's); and where the next truck's first read is its rear plate, by a camera
   that has not read recent's, it is taken for recent's news: an officer called, and its own truck goes
   without that plate (a review), the safe failure.
3c. Containers the same way (``_conflicting``, review 158): with nothing pending at the lane, a
   container number other than every one the truck emitted last within the window ("recent") held (not
   the very same number: rule 3), read by a camera that has not read recent's container, is reported as
   ``late_container_mismatch`` naming recent's ``request_id`` (the caller records it and calls an officer
   at once, lane.py rule 8). The attack: the front camera reads the nominated number (painted over,
   or the box behind), the truck is sent and let through, the rear camera reads another number seconds
   later; before, that read opened a phantom truck, the next truck's plate and badge filled it (rule 1b)
   and it went complete and clean with this truck's container (a number one digit off was dropped as a
   late duplicate instead). A camera that read recent's container (before it was sent, or as a late
   duplicate) reading another number is reading the next truck: placed as any read (rule 1), so a lane
   whose cameras read every truck calls nobody for trucks in quick succession. Recent's reads take the
   number in, so the same news again is a late duplicate. Limitations, as for plates: with a truck
   pending the read is placed by rule 1 (a truck holding a container is made doubtful by it, rule 1a; one
   lacking a container takes it, rule 1b: it may be its own); where the next truck's first read is its
   container, by a camera that has not read recent's, it is taken for recent's news: an officer called,
   and its own truck goes without that read (a review unless another camera reads its number), the safe
   failure; a truck carrying two boxes read one by each camera is one of these (one container per truck).
4. Bounded memory: at most ``max_pending`` trucks wait; opening one more evicts the oldest, which is
   emitted with outcome ``evicted`` (its reads so far, ``missing`` says what it lacked). An eviction is
   at least as grave as a window ending without every read: reads the lane cannot place (a flood, a
   camera gone wrong, trucks read out of step), so the caller never asks the service about it (an
   incomplete "allow" must not open for a truck that may no longer be the one at the barrier) but holds
   and calls an officer (lane.py rule 7).
5. ``request_id`` is a UUIDv5 over terminal, lane, direction, the earliest ``observed_at`` and the
   chosen reads' values: a restart that replays the same reads gets the same id, which the verify
   endpoint treats as the same request (SPEC.md: idempotency, a right never used twice). A truck with
   reads set aside (rule 1a) adds every distinct folded value of its plate (every distinct number of its
   container, if those were set aside), sorted: never which read happened to be set aside, which depends
   on arrival order (review 116). A truck doubtful only by
   rule 3 has the id its reads give: a replay that has forgotten the truck before then finds the first,
   doubtful, request in the outbox instead of asking again.
Limitation: one container per truck; a second container number more than one edit from the first
(look-alikes folded), read by a camera that read the first, opens a new truck (it is the next truck's);
one within an edit, or read by another camera, makes the truck doubtful (rule 1a); after the truck was
sent, another camera's other number is its late news (rule 3c).
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from .reads import BadgeRead, ContainerRead, FaceRead, PlateRead, Read, ReadKind

REQUEST_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:quaygate:gate:verify-request")
DEFAULT_REQUIRE = frozenset({ReadKind.PLATE, ReadKind.CONTAINER, ReadKind.BADGE})
_FOLD = str.maketrans({"O": "0", "D": "0", "Q": "0", "I": "1", "Z": "2", "S": "5", "B": "8", "G": "6"})


class Outcome(StrEnum):
    COMPLETE = "complete"
    TIMED_OUT = "timed_out"
    EVICTED = "evicted"  # rule 4: pushed out by a newer truck before its window ended


class DropReason(StrEnum):
    LATE_READ = "late_read"  # rules 3 and 3a: a duplicate of what a truck already emitted carried
    LATE_FACE = "late_face"  # rule 3a: a face for a truck emitted without one; never a truck of its own
    LATE_FACE_MISMATCH = "late_face_mismatch"  # rule 3a: a mismatch for a truck already emitted
    LATE_PLATE_MISMATCH = "late_plate_mismatch"  # rule 3b: another plate for a truck already emitted
    LATE_CONTAINER_MISMATCH = "late_container_mismatch"  # rule 3c: another container number, likewise


# rules 3b and 3c: what another plate, or another container number, for a truck already emitted is
_LATE_MISMATCH = {ReadKind.PLATE: DropReason.LATE_PLATE_MISMATCH,
                  ReadKind.CONTAINER: DropReason.LATE_CONTAINER_MISMATCH}


@dataclass(frozen=True, slots=True)
class Ready:
    """One truck's reads: ready for ``POST /gate/v1/verify``, or (``evicted``, rule 4) for an officer."""

    request_id: str
    terminal: str
    lane: str
    direction: str
    outcome: Outcome
    missing: frozenset[ReadKind]
    observed_at: datetime
    plate: PlateRead | None = None
    container: ContainerRead | None = None
    badge: BadgeRead | None = None
    face: FaceRead | None = None
    doubtful: frozenset[ReadKind] = frozenset()  # rule 1a: read as two values; rule 3: maybe the truck before's
    set_aside: tuple[Read, ...] = ()  # rule 1a: the other reads of a doubtful kind (evidence, logs), by kind and value

    @property
    def complete(self) -> bool:
        return self.outcome is Outcome.COMPLETE

    @property
    def kinds(self) -> frozenset[ReadKind]:
        """The kinds of read this truck holds."""
        held = {ReadKind.PLATE: self.plate, ReadKind.CONTAINER: self.container, ReadKind.BADGE: self.badge,
                ReadKind.FACE: self.face}
        return frozenset(kind for kind, read in held.items() if read is not None)

    def verify_fields(self) -> dict[str, Any]:
        """The verify request body minus ``mode`` (the caller's choice), with SPEC.md's names."""
        body: dict[str, Any] = {
            "request_id": self.request_id,
            "terminal": self.terminal,
            "lane": self.lane,
            "direction": self.direction,
            "observed_at": self.observed_at.isoformat(),
        }
        if self.container is not None:
            # rule 1a: two different numbers read for this truck: no confidence in either
            confidence = 0.0 if ReadKind.CONTAINER in self.doubtful else self.container.confidence
            body["container"] = {"number": self.container.number, "confidence": confidence}
        if self.plate is not None:
            body["plate"] = {
                "text": self.plate.text,
                "country": self.plate.country,
                # rule 1a: two different plates read for this truck: no confidence in either
                "confidence": 0.0 if ReadKind.PLATE in self.doubtful else self.plate.confidence,
            }
        if self.badge is not None:
            badge = {"scheme": self.badge.scheme, "number": self.badge.number, "card_uid": self.badge.card_uid}
            body["badge"] = {k: v for k, v in badge.items() if v is not None}
        if self.face is not None:
            if self.face.match is not None:
                body["face"] = {"match": {"matched": self.face.match.matched, "score": self.face.match.score}}
            else:
                body["face"] = {"image": base64.b64encode(self.face.image or b"").decode("ascii")}
        return body


@dataclass(frozen=True, slots=True)
class Dropped:
    """Something the correlator let go of without emitting it; the caller logs it (and, for a late face,
    face mismatch, plate mismatch or container mismatch, notes or acts on it: ``request_id`` and
    ``observed_at`` name the truck it came too late for; ``matched`` and ``score`` say what the face was,
    ``matched`` None for an image; ``plate`` is the other plate read, ``container`` the other number)."""

    reason: DropReason
    lane: str
    kinds: frozenset[ReadKind]
    request_id: str | None = None
    observed_at: datetime | None = None
    score: float | None = None
    matched: bool | None = None
    plate: PlateRead | None = None
    container: ContainerRead | None = None


@dataclass(slots=True)
class _Truck:
    opened_at: float
    reads: dict[ReadKind, Read] = field(default_factory=dict)
    required_done_at: float | None = None
    # rule 1a: per folded plate value (``_folded``) the best read of it, so what is set aside at emission
    # does not depend on the order the reads came in
    plates: dict[str, PlateRead] = field(default_factory=dict)
    containers: dict[str, ContainerRead] = field(default_factory=dict)  # rule 1a: per number, its best read
    echo: bool = False  # rule 3: a plate read as a look-alike of one a truck emitted within the window held
    # rules 1a, 3b and 3c: by kind (plate, container), the cameras that read its plate or its container
    cameras: dict[ReadKind, set[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Emitted:
    emitted_at: float
    reads: tuple[Read, ...]
    request_id: str
    observed_at: datetime
    # rules 3b and 3c: by kind, those that read its plate or its container, late duplicates too
    cameras: Mapping[ReadKind, frozenset[str]] = field(default_factory=dict)


def _edits_at_most_one(a: str, b: str) -> bool:
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) <= 1
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def similar(a: Read, b: Read) -> bool:
    """Two reads of the same kind that are the same thing read twice (rule 1)."""
    if a.kind is not b.kind:
        return False
    if isinstance(a, PlateRead) and isinstance(b, PlateRead):
        return _edits_at_most_one(a.text.translate(_FOLD), b.text.translate(_FOLD))
    if isinstance(a, ContainerRead) and isinstance(b, ContainerRead):
        return _edits_at_most_one(a.number.translate(_FOLD), b.number.translate(_FOLD))
    if isinstance(a, BadgeRead) and isinstance(b, BadgeRead):
        same_number = a.number is not None and a.number == b.number
        same_uid = a.card_uid is not None and a.card_uid == b.card_uid
        return same_number or same_uid
    return True  # faces: one driver per truck


def same(a: Read, b: Read) -> bool:
    """Rules 1a and 3: the same value read twice. Plates: equal once look-alikes are folded (a country
    missing on one read is no difference); containers: the very same number (review 153: the check digit
    is blind to look-alikes and one serial digit can leave it unchanged); any other kind: ``similar``."""
    if isinstance(a, PlateRead) and isinstance(b, PlateRead):
        same_country = a.country is None or b.country is None or a.country == b.country
        return same_country and a.text.translate(_FOLD) == b.text.translate(_FOLD)
    if isinstance(a, ContainerRead) and isinstance(b, ContainerRead):
        return a.number == b.number
    return similar(a, b)


def _folded(plate: PlateRead) -> str:
    """Rules 1a and 5: a plate's value once look-alikes are folded (the country as read)."""
    return f"{plate.text.translate(_FOLD)}|{plate.country or ''}"


def _camera(read: PlateRead | ContainerRead) -> str:
    """Rules 1a, 3b and 3c: which camera read a plate or a container (the source and its camera's name)."""
    return f"{read.source}|{read.camera}"


def _is_mismatch(read: Read) -> bool:
    """A face match result saying the driver is not the nominee (rules 1a and 3)."""
    return isinstance(read, FaceRead) and read.match is not None and not read.match.matched


def _rank(read: Read) -> tuple[bool, float, float, str]:
    """Rule 1a's order between two similar reads: the greater one is kept."""
    return (_is_mismatch(read), read.confidence, -read.observed_at.timestamp(), read.value)


def request_id_for(
    terminal: str, lane: str, direction: str, reads: Iterable[Read], doubt: Iterable[tuple[ReadKind, str]] = ()
) -> str:
    """Deterministic id over the chosen reads (rule 5); ``reads`` must not be empty. ``doubt``: for a truck
    with reads set aside (rule 1a), every distinct folded value of the doubtful kind; nothing otherwise,
    so a truck without doubt has the id it always had."""
    chosen = sorted(reads, key=lambda r: (r.kind.value, r.value))
    first = min(r.observed_at for r in chosen)
    parts = [terminal, lane, direction, first.isoformat()] + [f"{r.kind.value}={r.value}" for r in chosen]
    parts += sorted(f"{kind.value}~{value}" for kind, value in set(doubt))
    return str(uuid.uuid5(REQUEST_NAMESPACE, "\n".join(parts)))


class LaneCorrelator:
    """The correlation state of one lane. Not thread-safe: one lane, one task."""

    def __init__(
        self,
        lane: str,
        terminal: str,
        direction: str,
        window_seconds: float = 30.0,
        require: Iterable[str] = DEFAULT_REQUIRE,
        face_wait_seconds: float = 0.0,
        max_pending: int = 4,
    ) -> None:
        if direction not in ("in", "out"):
            raise ValueError("direction is 'in' or 'out'")
        if window_seconds <= 0 or face_wait_seconds < 0 or max_pending < 1:
            raise ValueError("window_seconds > 0, face_wait_seconds >= 0 and max_pending >= 1")
        self.lane, self.terminal, self.direction = lane, terminal, direction
        self.window_seconds = float(window_seconds)
        self.require = frozenset(ReadKind(k) for k in require)
        if not self.require:
            raise ValueError("require names at least one read kind")
        self.face_wait_seconds = float(face_wait_seconds)
        self.max_pending = max_pending
        self._pending: list[_Truck] = []
        self._emitted: deque[_Emitted] = deque(maxlen=2 * max_pending)
        self._dropped: list[Dropped] = []
        self._now = float("-inf")

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def take_dropped(self) -> list[Dropped]:
        """What was dropped since the last call (late duplicates); clears the list."""
        dropped, self._dropped = self._dropped, []
        return dropped

    def add(self, read: Read, now: float) -> list[Ready]:
        if read.lane != self.lane:
            raise ValueError(f"read for lane {read.lane!r} given to the correlator of lane {self.lane!r}")
        out = self.tick(now)
        now = self._now
        truck: _Truck | None
        echo = False
        if isinstance(read, FaceRead):
            placed = self._place_face(read, now)
            if placed is _DROPPED:
                return out
            truck = placed
        else:
            late_for = self._late_duplicate_of(read, now) or self._conflicting(read, now)
            if late_for is not None:
                self._dropped.append(self._late(read, late_for))
                return out
            echo = self._echoes(read, now)
            truck = self._place(read)
        if truck is None:
            out.extend(self._close_face_waits(now))
            out.extend(self._evict_for_one_more(now))
            truck = self._open(read, now)
        if echo:
            truck.echo = True  # rule 3: maybe the plate of the truck before, read again
        if self._satisfied(truck, now):
            out.append(self._emit(truck, Outcome.COMPLETE, now))
        return out

    def tick(self, now: float) -> list[Ready]:
        """Emit what is due at ``now``: face waits over, windows over. Call it about once a second."""
        self._now = now = max(now, self._now)  # a clock step back never re-opens a closed window
        out: list[Ready] = []
        for truck in list(self._pending):
            window_over = now >= truck.opened_at + self.window_seconds
            if truck.required_done_at is not None:
                if window_over or now >= truck.required_done_at + self.face_wait_seconds:
                    out.append(self._emit(truck, Outcome.COMPLETE, now))
            elif window_over:
                out.append(self._emit(truck, Outcome.TIMED_OUT, now))
        return out

    # -- placement (rule 1) -------------------------------------------------------------------

    def _place(self, read: Read) -> _Truck | None:
        """Rule 1a then 1b; ``None`` means a new truck must open (rule 1c)."""
        truck = self._candidate(read)
        if truck is not None:
            self._take(truck, read)
        return truck

    def _candidate(self, read: Read) -> _Truck | None:
        """The pending truck rules 1a and 1b give ``read`` to, without giving it yet."""
        for truck in self._pending:
            held = truck.reads.get(read.kind)
            if held is not None and similar(held, read):
                return truck
        if isinstance(read, ContainerRead):  # rule 1a: another camera's other number, for the truck it reads
            camera = _camera(read)
            for truck in self._pending:
                if ReadKind.CONTAINER in truck.reads and camera not in truck.cameras.get(ReadKind.CONTAINER, ()):
                    return truck
        return next((truck for truck in self._pending if read.kind not in truck.reads), None)

    @staticmethod
    def _take(truck: _Truck, read: Read) -> None:
        """Rule 1a: of two similar reads the greater ``_rank`` is kept (and of each folded plate value and
        each container number the best read, for what is set aside at emission); rule 1b: a kind it lacked."""
        held = truck.reads.get(read.kind)
        if isinstance(read, PlateRead | ContainerRead):
            truck.cameras.setdefault(read.kind, set()).add(_camera(read))
        if isinstance(read, PlateRead):
            best = truck.plates.get(_folded(read))
            if best is None or _rank(read) > _rank(best):
                truck.plates[_folded(read)] = read
        if isinstance(read, ContainerRead):
            best_box = truck.containers.get(read.number)
            if best_box is None or _rank(read) > _rank(best_box):
                truck.containers[read.number] = read
        if held is None or _rank(read) > _rank(held):
            truck.reads[read.kind] = read

    def _close_face_waits(self, now: float) -> list[Ready]:
        """A new truck at the lane means older complete trucks will not get their face any more."""
        waiting = [t for t in self._pending if t.required_done_at is not None]
        return [self._emit(t, Outcome.COMPLETE, now) for t in waiting]

    def _evict_for_one_more(self, now: float) -> list[Ready]:
        """Rule 4: make room for one more truck by emitting the oldest ones as evicted."""
        out: list[Ready] = []
        while len(self._pending) >= self.max_pending:
            out.append(self._emit(self._pending[0], Outcome.EVICTED, now))
        return out

    def _open(self, read: Read, now: float) -> _Truck:
        truck = _Truck(opened_at=now)
        self._take(truck, read)
        self._pending.append(truck)
        return truck

    def _satisfied(self, truck: _Truck, now: float) -> bool:
        if not self.require <= truck.reads.keys():
            return False
        if ReadKind.FACE in truck.reads or ReadKind.FACE in self.require or self.face_wait_seconds == 0:
            return True
        if truck.required_done_at is None:
            truck.required_done_at = now
        return False

    # -- emission (rules 2 and 3) -------------------------------------------------------------

    def _emit(self, truck: _Truck, outcome: Outcome, now: float) -> Ready:
        self._pending.remove(truck)
        reads = tuple(truck.reads.values())
        kept = truck.reads.get(ReadKind.PLATE)
        # rule 1a: of each folded plate value the best read, those not the same as the kept one; a set,
        # not the reads the arrival order happened to push aside (review 116)
        plates_aside = [p for p in truck.plates.values() if kept is not None and not same(kept, p)]
        # and of each other container number the best read (review 153): a number is only itself
        box = truck.reads.get(ReadKind.CONTAINER)
        boxes_aside = [c for c in truck.containers.values() if box is not None and c.value != box.value]
        set_aside: tuple[Read, ...] = tuple(sorted((*plates_aside, *boxes_aside),
                                                   key=lambda r: (r.kind.value, r.value)))
        # rule 5: the doubt is part of the question too (its body says it), as every folded value read
        doubt = [(ReadKind.PLATE, value) for value in truck.plates] if plates_aside else []
        doubt += [(ReadKind.CONTAINER, number) for number in truck.containers] if boxes_aside else []
        doubtful = {ReadKind.PLATE} if plates_aside or truck.echo else set()
        doubtful |= {ReadKind.CONTAINER} if boxes_aside else set()
        request_id = request_id_for(self.terminal, self.lane, self.direction, reads, doubt)
        observed_at = min(r.observed_at for r in reads)
        self._emitted.append(_Emitted(emitted_at=now, reads=reads + set_aside, request_id=request_id,
                                     observed_at=observed_at,
                                     cameras={kind: frozenset(seen) for kind, seen in truck.cameras.items()}))
        by_kind: dict[ReadKind, Any] = dict(truck.reads)
        return Ready(
            request_id=request_id,
            terminal=self.terminal,
            lane=self.lane,
            direction=self.direction,
            outcome=outcome,
            missing=frozenset(self.require - truck.reads.keys()),
            observed_at=observed_at,
            plate=by_kind.get(ReadKind.PLATE),
            container=by_kind.get(ReadKind.CONTAINER),
            badge=by_kind.get(ReadKind.BADGE),
            face=by_kind.get(ReadKind.FACE),
            doubtful=frozenset(doubtful),
            set_aside=set_aside,
        )

    def _late_duplicate_of(self, read: Read, now: float) -> _Emitted | None:
        """Rule 3: the newest truck emitted within the window that held the same read, from any device."""
        for emitted in reversed(self._emitted):
            if now - emitted.emitted_at >= self.window_seconds:
                continue
            if any(same(held, read) for held in emitted.reads if held.kind is read.kind):
                return emitted
        return None

    def _conflicting(self, read: Read, now: float) -> _Emitted | None:
        """Rules 3b and 3c: recent, when ``read`` is another plate or container number than it was sent on
        and can only be its news: nothing pending at the lane, and a camera that did not read that truck's
        plate (or container). A plate is another when like none it was sent on (``similar``); a container
        number, when not the very same (rule 1a, review 153)."""
        if self._pending or not isinstance(read, PlateRead | ContainerRead):
            return None
        recent = self._recent(now)
        if recent is None or _camera(read) in recent.cameras.get(read.kind, ()):
            return None
        alike = similar if isinstance(read, PlateRead) else same
        held = [h for h in recent.reads if h.kind is read.kind]
        return recent if held and not any(alike(h, read) for h in held) else None

    def _echoes(self, read: Read, now: float) -> bool:
        """Rule 3: ``read`` is a plate similar to (not the same as) one a truck emitted within the window held."""
        return isinstance(read, PlateRead) and any(
            now - emitted.emitted_at < self.window_seconds and similar(held, read)
            for emitted in self._emitted for held in emitted.reads if held.kind is ReadKind.PLATE)

    def _recent(self, now: float) -> _Emitted | None:
        """Rule 3a's "recent": the truck emitted last, if less than ``window_seconds`` ago."""
        return next((e for e in reversed(self._emitted) if now - e.emitted_at < self.window_seconds), None)

    def _place_face(self, read: FaceRead, now: float) -> _Truck | None | object:
        """Rule 3a: the pending truck that takes the face (given it already), ``None`` when it opens a
        truck of its own, or ``_DROPPED`` when it is reported instead (``take_dropped``)."""
        recent, truck = self._recent(now), self._candidate(read)
        if _is_mismatch(read):
            return self._mismatch(read, recent, truck)
        if recent is not None and read in recent.reads:  # the same read again: a redelivery of recent's
            self._dropped.append(self._late(read, recent))
            return _DROPPED
        if truck is not None and (recent is None or read.observed_at >= _first_observed(truck)):
            self._take(truck, read)
            return truck
        if recent is not None:  # captured before the pending truck came, or nothing pending: recent's
            self._dropped.append(self._late(read, recent))
            return _DROPPED
        return None

    def _mismatch(self, read: FaceRead, recent: _Emitted | None, truck: _Truck | None) -> _Truck | None | object:
        """Rule 3a, a face mismatch: never let go, and never taken for a truck it cannot be told from."""
        flagged = None
        if recent is not None and not any(_is_mismatch(held) for held in recent.reads):
            flagged = self._late(read, recent)
            self._dropped.append(flagged)
        if truck is not None:
            self._take(truck, read)
            return truck
        if recent is None:
            return None
        if flagged is None:  # recent's request carried a mismatch already: the same news again
            self._dropped.append(Dropped(DropReason.LATE_READ, self.lane, frozenset({read.kind}),
                                         recent.request_id, recent.observed_at))
        return _DROPPED

    def _late(self, read: Read, emitted: _Emitted) -> Dropped:
        """Rules 3, 3a, 3b and 3c: a harmless late duplicate, or news for the emitted truck (a face it went
        without, a mismatch its request did not carry, another plate, another container number); news is
        added to its reads, so it is said once. A plate's or container's camera is added to those that read
        the truck's plate or container (rules 3b and 3c)."""
        kinds = frozenset({read.kind})
        if isinstance(read, FaceRead):
            mismatch = _is_mismatch(read) and not any(_is_mismatch(held) for held in emitted.reads)
            first_face = not any(held.kind is ReadKind.FACE for held in emitted.reads)
            if mismatch or first_face:
                self._amend(emitted, read)
                matched = None if read.match is None else read.match.matched
                score = None if read.match is None else read.match.score
                reason = DropReason.LATE_FACE_MISMATCH if mismatch else DropReason.LATE_FACE
                return Dropped(reason, self.lane, kinds, emitted.request_id, emitted.observed_at, score, matched)
        if isinstance(read, PlateRead | ContainerRead):
            news = not any(same(held, read) for held in emitted.reads if held.kind is read.kind)
            self._amend(emitted, read if news else None, read)
            if news:
                return Dropped(_LATE_MISMATCH[read.kind], self.lane, kinds, emitted.request_id, emitted.observed_at,
                               plate=read if isinstance(read, PlateRead) else None,
                               container=read if isinstance(read, ContainerRead) else None)
        return Dropped(DropReason.LATE_READ, self.lane, kinds, emitted.request_id, emitted.observed_at)

    def _amend(self, emitted: _Emitted, read: Read | None, seen: Read | None = None) -> None:
        """Add news (``read``) to an emitted truck's reads, and the camera of a plate or container ``seen``
        to those that read its plate or its container (rules 3b and 3c)."""
        reads = emitted.reads if read is None else (*emitted.reads, read)
        cameras = emitted.cameras
        if isinstance(seen, PlateRead | ContainerRead):
            cameras = {**cameras, seen.kind: cameras.get(seen.kind, frozenset()) | {_camera(seen)}}
        self._emitted[self._emitted.index(emitted)] = dataclasses.replace(emitted, reads=reads, cameras=cameras)


_DROPPED = object()  # _place_face: the face was reported, not placed


def _first_observed(truck: _Truck) -> datetime:
    return min(read.observed_at for read in truck.reads.values())

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
   a. a pending truck already holding a SIMILAR K read takes it as a duplicate: the higher
      confidence wins (ties: the earlier ``observed_at``, then the value), so the choice does not
      depend on arrival order; except that a face match result saying ``matched: false`` wins over
      any other face (a mismatch is sticky: a retry or a spoof that matches later must not hide it);
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
3. A read similar to one of a truck emitted less than ``window_seconds`` ago is a late duplicate
   (a camera's "update" event): it is dropped and reported, never opens a phantom truck.
3a. Except a face match result saying ``matched: false``, which is never let go (``_mismatch_placed``):
   a face names no truck, so with a truck pending it goes to that truck (a refusal at worst, never the
   next driver let through because his mismatch was taken for the truck before him), and the truck
   emitted last within the window, if its request carried no mismatch, is reported as a
   ``late_face_mismatch`` naming its ``request_id`` (the matcher answered after the request went, or
   changed its mind: the barrier may have opened for the wrong driver, so the caller records it and
   calls an officer, lane.py rule 8). With no truck pending it is that report alone, for the truck
   emitted last whether it held a face or not; a duplicate when that truck's request carried a mismatch.
4. Bounded memory: at most ``max_pending`` trucks wait; opening one more evicts the oldest, which is
   emitted with outcome ``evicted`` (its reads so far, ``missing`` says what it lacked). An eviction is
   at least as grave as a window ending without every read: reads the lane cannot place (a flood, a
   camera gone wrong, trucks read out of step), so the caller never asks the service about it (an
   incomplete "allow" must not open for a truck that may no longer be the one at the barrier) but holds
   and calls an officer (lane.py rule 7).
5. ``request_id`` is a UUIDv5 over terminal, lane, direction, the earliest ``observed_at`` and the
   chosen reads' values: a restart that replays the same reads gets the same id, which the verify
   endpoint treats as the same request (SPEC.md: idempotency, a right never used twice).
Limitation: one container per truck; a second, different container number opens a new truck.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections import deque
from collections.abc import Iterable
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
    LATE_READ = "late_read"
    LATE_FACE_MISMATCH = "late_face_mismatch"  # rule 3: a mismatch for a truck already emitted


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
            body["container"] = {"number": self.container.number, "confidence": self.container.confidence}
        if self.plate is not None:
            body["plate"] = {
                "text": self.plate.text,
                "country": self.plate.country,
                "confidence": self.plate.confidence,
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
    """Something the correlator let go of without emitting it; the caller logs it (and, for a late face
    mismatch, acts on it: ``request_id`` and ``observed_at`` name the truck it came too late for)."""

    reason: DropReason
    lane: str
    kinds: frozenset[ReadKind]
    request_id: str | None = None
    observed_at: datetime | None = None
    score: float | None = None


@dataclass(slots=True)
class _Truck:
    opened_at: float
    reads: dict[ReadKind, Read] = field(default_factory=dict)
    required_done_at: float | None = None


@dataclass(frozen=True, slots=True)
class _Emitted:
    emitted_at: float
    reads: tuple[Read, ...]
    request_id: str
    observed_at: datetime


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


def _is_mismatch(read: Read) -> bool:
    """A face match result saying the driver is not the nominee (rules 1a and 3)."""
    return isinstance(read, FaceRead) and read.match is not None and not read.match.matched


def _rank(read: Read) -> tuple[bool, float, float, str]:
    """Rule 1a's order between two similar reads: the greater one is kept."""
    return (_is_mismatch(read), read.confidence, -read.observed_at.timestamp(), read.value)


def request_id_for(terminal: str, lane: str, direction: str, reads: Iterable[Read]) -> str:
    """Deterministic id over the chosen reads (rule 5); ``reads`` must not be empty."""
    chosen = sorted(reads, key=lambda r: r.kind.value)
    first = min(r.observed_at for r in chosen)
    parts = [terminal, lane, direction, first.isoformat()] + [f"{r.kind.value}={r.value}" for r in chosen]
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
        if _is_mismatch(read):
            if not self._mismatch_placed(read, now):
                return out
        else:
            late_for = self._late_duplicate_of(read, now)
            if late_for is not None:
                self._dropped.append(self._late(read, late_for))
                return out
        truck = self._place(read)
        if truck is None:
            out.extend(self._close_face_waits(now))
            out.extend(self._evict_for_one_more(now))
            truck = self._open(read, now)
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
        for truck in self._pending:
            held = truck.reads.get(read.kind)
            if held is not None and similar(held, read):
                if _rank(read) > _rank(held):
                    truck.reads[read.kind] = read
                return truck
        for truck in self._pending:
            if read.kind not in truck.reads:
                truck.reads[read.kind] = read
                return truck
        return None

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
        truck = _Truck(opened_at=now, reads={read.kind: read})
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
        request_id = request_id_for(self.terminal, self.lane, self.direction, reads)
        observed_at = min(r.observed_at for r in reads)
        self._emitted.append(_Emitted(emitted_at=now, reads=reads, request_id=request_id, observed_at=observed_at))
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
        )

    def _late_duplicate_of(self, read: Read, now: float) -> _Emitted | None:
        """Rule 3: the newest truck emitted within the window that held a read similar to ``read``."""
        for emitted in reversed(self._emitted):
            if now - emitted.emitted_at >= self.window_seconds:
                continue
            if any(similar(held, read) for held in emitted.reads if held.kind is read.kind):
                return emitted
        return None

    def _mismatch_placed(self, read: Read, now: float) -> bool:
        """Rule 3a: a face mismatch is never let go, and never taken for a truck it cannot be told from.
        A face names no truck: only its time at the lane links it to one. So:

        - a truck pending takes it (True: placed as any read, the mismatch winning, rule 1a), whichever
          truck it was captured for: a refusal and an officer at worst, never a driver let through because
          his mismatch was taken for the truck before him; and the truck emitted last within the window,
          if its request carried no mismatch, is reported too (``late_face_mismatch``: the matcher may
          have spoken of that one; an officer looks);
        - no truck pending: it is the late mismatch of the truck emitted last within the window, with or
          without a face (a truck is sent without one when no face is required), or a duplicate when that
          truck's request carried a mismatch already (False);
        - neither: it opens a truck of its own (True), as any read after the window."""
        recent = next((e for e in reversed(self._emitted) if now - e.emitted_at < self.window_seconds), None)
        flagged = None
        if recent is not None and not any(_is_mismatch(held) for held in recent.reads):
            flagged = self._late(read, recent)
            self._dropped.append(flagged)
        if self._pending:
            return True
        if recent is not None and flagged is None:
            self._dropped.append(Dropped(DropReason.LATE_READ, self.lane, frozenset({read.kind})))
        return recent is None

    def _late(self, read: Read, emitted: _Emitted) -> Dropped:
        """Rule 3: a harmless late duplicate, or a mismatch the emitted truck's request did not carry."""
        if _is_mismatch(read) and not any(_is_mismatch(held) for held in emitted.reads):
            assert isinstance(read, FaceRead) and read.match is not None
            # Said once: the emitted truck now holds the mismatch, so the same news again is a duplicate.
            self._emitted[self._emitted.index(emitted)] = dataclasses.replace(emitted, reads=(*emitted.reads, read))
            return Dropped(DropReason.LATE_FACE_MISMATCH, self.lane, frozenset({read.kind}), emitted.request_id,
                           emitted.observed_at, read.match.score)
        return Dropped(DropReason.LATE_READ, self.lane, frozenset({read.kind}))

"""The gate verify decision, pure (SPEC.md "The gate verify call", issue 5).

``decide`` takes what the gate saw (a ``GateRequest``), snapshots of what we know (the container's
release rights, the badge, the port-ban screening), the terminal's policy and ``now``, and returns a
frozen ``Decision``. It reads no clock, no store and no network; the verify service gathers the facts,
calls it and persists the result (and, in commit mode, records gate-in or gate-out on the right).

How it decides:

1. The container read is understood first (``reads.understand_container``: check digit, at most one
   look-alike repair). The right judged is then chosen by ``select_right`` (see there).
2. Every guard of the rule book ``RULES`` runs; each yields one reason code. All reasons that apply are
   collected, because the gate officer should see everything that is wrong, not the first thing. Guards
   that need a right stay silent when there is none to judge (container unreadable or unknown, right
   at another terminal), and a right that has ended (completed, revoked, expired) yields only its
   state reason: whether its plate matches no longer matters.
3. ``SEVERITY`` classifies each reason as a refusal or a doubt. No reasons: ``allow``. Only doubts (a
   read we cannot trust, missing evidence): ``review``, a person looks. Any refusal: ``deny``. A read
   we cannot trust never becomes a silent allow nor a flat deny.

``container_unknown`` versus ``no_release_right``: ``rights`` holds every right of the container that
is not deleted, whatever its state or terminal. No rights at all: the container is unknown to us
(``container_unknown``). Rights, but none to judge here and none live elsewhere: ``no_release_right``;
a live right at another terminal only: ``wrong_terminal``. The same ``no_release_right`` says, at
gate-out, that nothing was gated in under the right.

Standard library only (import-linter contract "release_service domain is pure"); badge statuses are
mirrored as plain strings because the release domain must not import ``identity``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal

from .errors import DomainError, ErrorCode
from .reads import (
    ContainerReading,
    PlateMatch,
    PlateOutcome,
    Substitution,
    compare_plate,
    understand_container,
)
from .release import (
    NOMINATION_REFUSED,
    DriverResponse,
    FaceAgainst,
    ReleaseRight,
    State,
    customs_holds,
    nomination_key,
)


class Reason(StrEnum):
    """The gate reason codes (SPEC.md, a published contract). Declaration order is the order in which
    a decision lists them: the container, the right, the badge and driver, the truck, the person."""

    CONTAINER_UNREADABLE = "container_unreadable"
    CONTAINER_UNKNOWN = "container_unknown"
    NO_RELEASE_RIGHT = "no_release_right"
    WRONG_TERMINAL = "wrong_terminal"
    NOT_NOMINATED = "not_nominated"
    NOMINATION_REFUSED = NOMINATION_REFUSED
    RIGHT_REVOKED = "right_revoked"
    RIGHT_EXPIRED = "right_expired"
    RIGHT_NOT_YET_VALID = "right_not_yet_valid"
    RIGHT_BLOCKED = "right_blocked"
    HOLDER_INACTIVE = "holder_inactive"  # beyond SPEC.md's list ("at least"): port security deactivated the holder
    ALREADY_USED = "already_used"
    CONTAINER_CONTESTED = "container_contested"  # beyond SPEC.md's list ("at least"): two lines' rights
    COMMERCIAL_HOLD = "commercial_hold"
    CUSTOMS_HOLD = "customs_hold"
    TERMINAL_HOLD = "terminal_hold"
    BADGE_UNKNOWN = "badge_unknown"
    BADGE_INACTIVE = "badge_inactive"
    BADGE_BLOCKED = "badge_blocked"
    BADGE_REVOKED = "badge_revoked"
    BADGE_EXPIRED = "badge_expired"
    BADGE_NOT_ACTIVATED_HERE = "badge_not_activated_here"
    # Beyond SPEC.md's list ("at least"): the terminal asks for the badge's chip and the lane read its printed
    # number alone (review 142). No listed code says a doubt about the badge read.
    BADGE_CHIP_REQUIRED = "badge_chip_required"
    DRIVER_MISMATCH = "driver_mismatch"
    PLATE_MISMATCH = "plate_mismatch"
    PLATE_LOW_CONFIDENCE = "plate_low_confidence"
    FACE_REQUIRED = "face_required"
    FACE_MISMATCH = "face_mismatch"
    PERSON_SUSPENDED = "person_suspended"  # beyond SPEC.md's list ("at least"): port security's suspension
    PERSON_BANNED = "person_banned"
    SCREENING_UNAVAILABLE = "screening_unavailable"


_ORDER: Mapping[Reason, int] = MappingProxyType({r: i for i, r in enumerate(Reason)})


class Outcome(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REVIEW = "review"


class Severity(StrEnum):
    REFUSAL = "refusal"  # evidence against the pickup: deny
    DOUBT = "doubt"  # evidence we cannot trust or do not have: review by a person
    BY_POLICY = "by_policy"  # the terminal's policy says which (TerminalPolicy.screening_unavailable)


# The one table that turns reasons into a decision. Doubts are the reads we cannot trust and the
# evidence that is missing rather than contrary: a camera that read badly, no face capture where one is
# required (an officer can look at the driver), a screening service that did not answer (review or
# fail closed, per terminal). Everything else is evidence against the pickup.
SEVERITY: Mapping[Reason, Severity] = MappingProxyType({
    Reason.CONTAINER_UNREADABLE: Severity.DOUBT,
    Reason.CONTAINER_UNKNOWN: Severity.REFUSAL,
    Reason.NO_RELEASE_RIGHT: Severity.REFUSAL,
    Reason.WRONG_TERMINAL: Severity.REFUSAL,
    Reason.NOT_NOMINATED: Severity.REFUSAL,
    Reason.NOMINATION_REFUSED: Severity.REFUSAL,
    Reason.RIGHT_REVOKED: Severity.REFUSAL,
    Reason.RIGHT_EXPIRED: Severity.REFUSAL,
    Reason.RIGHT_NOT_YET_VALID: Severity.REFUSAL,
    Reason.RIGHT_BLOCKED: Severity.REFUSAL,
    Reason.HOLDER_INACTIVE: Severity.REFUSAL,
    Reason.ALREADY_USED: Severity.REFUSAL,
    Reason.CONTAINER_CONTESTED: Severity.DOUBT,
    Reason.COMMERCIAL_HOLD: Severity.REFUSAL,
    Reason.CUSTOMS_HOLD: Severity.REFUSAL,
    Reason.TERMINAL_HOLD: Severity.REFUSAL,
    Reason.BADGE_UNKNOWN: Severity.REFUSAL,
    Reason.BADGE_INACTIVE: Severity.REFUSAL,
    Reason.BADGE_BLOCKED: Severity.REFUSAL,
    Reason.BADGE_REVOKED: Severity.REFUSAL,
    Reason.BADGE_EXPIRED: Severity.REFUSAL,
    Reason.BADGE_NOT_ACTIVATED_HERE: Severity.REFUSAL,
    Reason.BADGE_CHIP_REQUIRED: Severity.DOUBT,
    Reason.DRIVER_MISMATCH: Severity.REFUSAL,
    Reason.PLATE_MISMATCH: Severity.REFUSAL,
    Reason.PLATE_LOW_CONFIDENCE: Severity.DOUBT,
    Reason.FACE_REQUIRED: Severity.DOUBT,
    Reason.FACE_MISMATCH: Severity.REFUSAL,
    Reason.PERSON_SUSPENDED: Severity.REFUSAL,
    Reason.PERSON_BANNED: Severity.REFUSAL,
    Reason.SCREENING_UNAVAILABLE: Severity.BY_POLICY,
})


# ---- the terminal's override ---------------------------------------------------------------------

# What a person at the terminal may set aside with an audited override (SPEC.md: "a terminal may
# override a refusal only with a reason"): what the gate's machines could not establish and a person
# can, at the desk, with the driver and the truck in front of him: a container number, a plate, a
# face (not one the service itself found another person's, or an attack: ``face_against``, review
# 142), a badge the reader did not find, whose chip it did not read, or that is not yet activated at this
# terminal, the terminal's
# own hold, a screening service that did not answer, the driver who said he would not come. Never
# what another party decided or what the right itself says: the line's block, revocation or
# commercial hold, customs' hold, the validity window, a right used or nominated to nobody, another
# terminal's right, port security's word on the company holding the right (its deactivation), the badge
# office's, port security's (a suspension) or the port-ban register's word on a person, or a driver who
# is not the one nominated (the transport operator re-nominates; a terminal cannot hand the container to
# someone else). A container two lines' rights claim is a doubt
# the terminal settles from its own discharge records (which line's vessel call brought it in).
OVERRIDABLE: frozenset[Reason] = frozenset({
    Reason.CONTAINER_UNREADABLE,
    Reason.CONTAINER_CONTESTED,
    Reason.NOMINATION_REFUSED,
    Reason.TERMINAL_HOLD,
    Reason.BADGE_UNKNOWN,
    Reason.BADGE_NOT_ACTIVATED_HERE,
    Reason.BADGE_CHIP_REQUIRED,
    Reason.PLATE_MISMATCH,
    Reason.PLATE_LOW_CONFIDENCE,
    Reason.FACE_REQUIRED,
    Reason.FACE_MISMATCH,
    Reason.SCREENING_UNAVAILABLE,
})

_OVERRIDABLE_CODES = frozenset(r.value for r in OVERRIDABLE)

# The refusals that say who is at the gate (the badge, the driver, the face): an override that sets one
# aside lets a person in on the desk's word alone, and port security hears of it (review 142).
IDENTITY_CHECKS: frozenset[Reason] = frozenset({
    Reason.BADGE_UNKNOWN, Reason.BADGE_CHIP_REQUIRED, Reason.DRIVER_MISMATCH, Reason.FACE_REQUIRED,
    Reason.FACE_MISMATCH,
})
_IDENTITY_CODES = frozenset(r.value for r in IDENTITY_CHECKS)

# The refusals that say the badge shown is not its bearer's to show (review 174): reported lost or stolen
# (``badge_blocked``), withdrawn by the badge office (``badge_revoked``), or another person's than the
# nominated driver's (``driver_mismatch``). Each such decision raises port security's alarm, whatever the
# mode: someone tried to take a container with it (services/verify.py ``BADGE_ALARM_EVENT``).
BADGE_ALARMS: frozenset[Reason] = frozenset({Reason.BADGE_BLOCKED, Reason.BADGE_REVOKED, Reason.DRIVER_MISMATCH})

# An override lets in the truck that was refused, while it is at the terminal: an older decision is
# verified again, and that new decision is overridden if need be.
OVERRIDE_WITHIN_SECONDS = 3600


def not_overridable(reasons: Iterable[str], *, face: Mapping[str, object] | None = None) -> list[str]:
    """The reasons among ``reasons`` no person at the desk may set aside (``OVERRIDABLE``; an unknown code
    counts as one that cannot), and ``face_mismatch`` where the decision's face evidence (``face``, as its
    row keeps it: ``FaceRecord.as_json``) is the service's own word against the face (``face_against``):
    the one rule of an override online (``require_overridable_decision``), at the adapter's desk offline
    (gate_adapters/runtime/overrides.py) and at its reconcile (services/gate_passes)."""
    against = face_against(face)
    return [r for r in reasons if r not in _OVERRIDABLE_CODES or (against and r == Reason.FACE_MISMATCH.value)]


def face_against(face: Mapping[str, object] | None) -> bool:
    """The face evidence a decision weighed (``FaceRecord.as_json``) says the capture is not the driver's,
    on the service's own judgement (review 142): an image it compared with the driver's enrolled face at a
    distance beyond the tolerance (another person), or one identity caught as an attack (``FACE_ATTACKS``:
    a spoof, a copy of a capture matched before). Not a face it could not judge (no enrolment, nobody to
    match, the matcher down), nor a local matcher's claim: the desk may check the person then. So too a
    decision that kept such evidence of an earlier decision on the right (``against``: ``face_refused``,
    review 148), whatever face it was sent itself."""
    if face is None:
        return False
    earlier = face.get("against")
    return own_face_against(face) or (isinstance(earlier, Mapping) and own_face_against(earlier))


def face_changes_right(row: Mapping[str, object]) -> str | None:
    """The container whose right a decision row changes the facts of by its face alone: a decision on a
    right (``release_id``) whose own face the service found another person's (``own_face_against``; review
    148, ``face_refused``) is read with that right from then on, so it is recorded in the database at once
    and the right's copies go. None for any other decision (a gate move changes its right on its own)."""
    number = row.get("container_number")
    if row.get("release_id") is None or not isinstance(number, str):
        return None
    face = row.get("face")
    return number if isinstance(face, Mapping) and own_face_against(face) else None


def own_face_against(face: Mapping[str, object] | None) -> bool:
    """``face_against`` on a decision's own face evidence, ``against`` aside: such a decision is what the
    gate's statements read with its right as the right's ``FaceAgainst`` (review 148), and the right's
    cached copies are replaced when one is recorded."""
    if face is None:
        return False
    if face.get("kind") != "image":
        return False
    if face.get("unavailable") in FACE_ATTACKS:
        return True
    distance, tolerance = face.get("distance"), face.get("tolerance")
    if not isinstance(distance, int | float) or isinstance(distance, bool):
        return False
    limit = tolerance if isinstance(tolerance, int | float) and not isinstance(tolerance, bool) else FACE_MAX_TOLERANCE
    return face.get("matched") is not True or distance > limit


def own_face_matched(face: Mapping[str, object] | None) -> bool:
    """A decision's own face evidence (``against`` aside) is a capture the service compared with the enrolled
    face of the driver judged and found his, within its tolerance: neither ``own_face_against`` nor a face it
    could not judge, nor a local matcher's claim."""
    if face is None or face.get("kind") != "image" or face.get("matched") is not True:
        return False
    distance = face.get("distance")
    return isinstance(distance, int | float) and not isinstance(distance, bool) and not own_face_against(face)


def identity_set_aside(reasons: Iterable[str]) -> list[str]:
    """The checks of who is at the gate among the refusals an override sets aside (``IDENTITY_CHECKS``):
    port security hears of such an override (review 142)."""
    return [r for r in reasons if r in _IDENTITY_CODES]


def require_overridable_decision(reasons: Sequence[str], decided_at: datetime | None, now: datetime, *,
                                 face: Mapping[str, object] | None = None) -> None:
    """The refused decision itself may be overridden: refused only for reasons a person at the desk may
    set aside (``not_overridable``, on the decision's face evidence ``face``), and recent
    (``OVERRIDE_WITHIN_SECONDS``). The right, as it is now, is the release domain's to judge
    (``ReleaseRight.require_overridable``)."""
    hard = not_overridable(reasons, face=face)
    if hard:
        raise DomainError(ErrorCode.ILLEGAL_TRANSITION,
                          f"A terminal cannot override {', '.join(hard)}: that is not the gate's to set aside.",
                          reasons=hard)
    if decided_at is None or (now - decided_at).total_seconds() > OVERRIDE_WITHIN_SECONDS:
        raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "This decision is too old to override: verify the truck "
                          "again, and override that decision if need be.")


def require_overridable_right(right: RightFacts, rights: Sequence[RightFacts], *, decided_at: datetime | None,
                              face: Mapping[str, object] | None, now: datetime) -> None:
    """What an override may not set aside beside the right itself (``ReleaseRight.require_overridable``), on
    ``rights``, every right of its container as the override's transaction reads them (from the database,
    after the right's lock; never a cached copy), whatever the refused decision said (review 149):

    - customs' hold on the container through another of its rights (``container_held``: it holds every
      right of it, as ``customs_hold`` says at the gate);
    - the service's own face_mismatch standing on ``right`` (``face_stands``: under its nomination, within
      ``OVERRIDE_WITHIN_SECONDS``), as a decision that weighed it is not overridable (``not_overridable``).
      Only the refused decision's own capture, decided (``decided_at``) after that mismatch and matched by
      the service to the driver (``face``, as its row keeps it: ``own_face_matched``), is judged on its own,
      as the gate judges it (``face_standing``): a passenger caught by the lane camera does not lock the
      driver out, and the desk may set aside, say, the plate misread with that capture."""
    if container_held(rights, right, now=now) is not None:
        raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "A terminal cannot override customs_hold: customs holds "
                          "this container on another of its rights.", reasons=[Reason.CUSTOMS_HOLD.value])
    seen = face_stands(right, now=now)
    if seen is not None and not (decided_at is not None and decided_at > seen.at and own_face_matched(face)):
        raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "A terminal cannot override face_mismatch: the service "
                          f"found the face at this right's gate another person's (decision {seen.decision_id}).",
                          reasons=[Reason.FACE_MISMATCH.value])


# ---- the terminal's policy -----------------------------------------------------------------------

ScreeningFallback = Literal["deny", "review"]
# Whether a terminal's local face matcher is trusted (review 131, finding 1): SPEC.md lets ``face`` be "a
# match result from a trusted local matcher", and only port security can establish that trust, per
# terminal, in its policy. "refuse" (the default): a claimed match is no evidence, a claimed mismatch
# still counts; "accept": a match result is judged against ``face_min_score``.
FaceMatchResults = Literal["refuse", "accept"]
MAX_PLATE_LOOKALIKES = 3  # beyond this a "look-alike" plate is another plate

# Face distance tolerance (issue 6), mirrored from identity.domain.face (this domain must not import
# identity): a match is a distance at or under it. A terminal may tighten it to 0.3, never loosen it
# past face_recognition's own default of 0.6: a false accept hands a container to the wrong driver.
FACE_DEFAULT_TOLERANCE = 0.5
FACE_MIN_TOLERANCE = 0.3
FACE_MAX_TOLERANCE = 0.6
# A trusted local matcher's score is a similarity from 0 (another face) to 1 (the same face), and
# ``face_min_score`` the least that counts as a match. Under a half, a result nearer "another face" than
# "this face" would count, and at 0 any claimed match (review of the offline reconcile, finding 3): a terminal
# may ask more, never less. A policy stored before the floor is read at it (``TerminalPolicy.stored``).
FACE_MIN_SCORE_FLOOR = 0.5
FACE_NOT_LIVE = "face_not_live"  # identity's code for a capture its liveness port called a spoof
FACE_REPLAYED = "face_replayed"  # identity's code for bytes already matched for another request: a copy
# Captures identity refused as an attack on the face check, not for want of a comparison: evidence
# against the pickup (face_mismatch, deny), where a missing comparison is a doubt (face_required).
FACE_ATTACKS = frozenset({FACE_NOT_LIVE, FACE_REPLAYED})


def _check_unit(name: str, value: float) -> None:
    """Scores and confidences are numbers from 0 to 1 (NaN compares false with everything, so it is out)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number from 0 to 1")


@dataclass(frozen=True, slots=True)
class TerminalPolicy:
    """What one terminal asks at its gates (SPEC.md: "Each terminal has a policy").

    ``face_min_score`` applies to a match result from a trusted local matcher; ``face_tolerance`` (a
    Euclidean distance, 0.3 to 0.6) to a face image the service matches itself. ``face_match_results``
    says whether this terminal's local matcher is trusted: ``refuse`` (the default, until port security
    says otherwise) counts a claimed match for nothing (a gate client could claim one for anyone), a
    claimed mismatch still as ``face_mismatch``; ``accept`` counts both. ``screening_unavailable``
    says what an unanswered port-ban screening gives: ``review`` (a person checks) or ``deny`` (fail
    closed). It is never ``allow``: an outage must not open the gate (SPEC.md, degraded mode).
    ``badge_chip_required`` (review 142): a badge with a chip (a card UID on record) read by its printed
    number alone is ``badge_chip_required`` (review): a number is learnt from a photo of the badge or a
    pass and typed at a lane, a chip's UID is read off the badge itself.
    """

    face_required: bool = False
    face_min_score: float = 0.8
    face_tolerance: float = FACE_DEFAULT_TOLERANCE
    container_min_confidence: float = 0.7
    plate_min_confidence: float = 0.8
    plate_max_lookalikes: int = 1
    screening_unavailable: ScreeningFallback = "review"
    face_match_results: FaceMatchResults = "refuse"
    badge_chip_required: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.face_required, bool):
            raise ValueError("face_required must be true or false")
        if not isinstance(self.badge_chip_required, bool):
            raise ValueError("badge_chip_required must be true or false")
        m = self.face_min_score
        if isinstance(m, bool) or not isinstance(m, int | float) or not FACE_MIN_SCORE_FLOOR <= m <= 1.0:
            raise ValueError(f"face_min_score must be a number from {FACE_MIN_SCORE_FLOOR} to 1")
        t = self.face_tolerance
        if isinstance(t, bool) or not isinstance(t, int | float) or not FACE_MIN_TOLERANCE <= t <= FACE_MAX_TOLERANCE:
            raise ValueError(f"face_tolerance must be a number from {FACE_MIN_TOLERANCE} to {FACE_MAX_TOLERANCE}")
        _check_unit("container_min_confidence", self.container_min_confidence)
        _check_unit("plate_min_confidence", self.plate_min_confidence)
        n = self.plate_max_lookalikes
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_PLATE_LOOKALIKES:
            raise ValueError(f"plate_max_lookalikes must be a whole number from 0 to {MAX_PLATE_LOOKALIKES}")
        if self.screening_unavailable not in ("deny", "review"):
            raise ValueError("screening_unavailable must be deny or review")
        if self.face_match_results not in ("refuse", "accept"):
            raise ValueError("face_match_results must be refuse or accept")

    @classmethod
    def stored(cls, fields: Mapping[str, Any]) -> TerminalPolicy:
        """A policy as stored: one stored before ``FACE_MIN_SCORE_FLOOR`` with a lower ``face_min_score`` is
        read at the floor (stricter, never looser), not refused (its terminal's gate would stop)."""
        m = fields.get("face_min_score")
        if isinstance(m, int | float) and not isinstance(m, bool) and 0 <= m < FACE_MIN_SCORE_FLOOR:
            fields = {**fields, "face_min_score": FACE_MIN_SCORE_FLOOR}
        return cls(**fields)


# ---- what the gate saw ---------------------------------------------------------------------------


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


class Mode(StrEnum):
    CHECK = "check"  # decide only
    COMMIT = "commit"  # decide and, on allow, record the gate move (the service does that)


@dataclass(frozen=True, slots=True)
class ContainerRead:
    number: str
    confidence: float

    def __post_init__(self) -> None:
        _check_unit("container confidence", self.confidence)


@dataclass(frozen=True, slots=True)
class PlateRead:
    text: str
    country: str | None
    confidence: float

    def __post_init__(self) -> None:
        _check_unit("plate confidence", self.confidence)


@dataclass(frozen=True, slots=True)
class BadgeRead:
    """A badge as the reader gave it: the printed number, the chip's UID, or both."""

    scheme: str
    number: str | None = None
    card_uid: str | None = None

    def __post_init__(self) -> None:
        if not (self.number or self.card_uid):
            raise ValueError("a badge read carries a number or a card UID")


@dataclass(frozen=True, slots=True)
class FaceEvidence:
    """The face at the gate, as the pure core sees it: never an image.

    ``match_result``: a trusted local matcher's answer (``score``, ``matched``), judged against the
    terminal's ``face_min_score``.

    ``image``: the verify call carried a capture, and the service matched it 1:1 against the enrolled
    face of ``person_id`` (``face_subject``) before deciding: ``distance`` and the ``tolerance``
    applied, or, when no comparison was made (no enrolment, the matcher busy or down, nobody to match),
    ``distance`` None and ``unavailable`` saying why. ``image_pending()`` is the placeholder of a
    capture not matched yet: decided as it stands, it can only give ``face_required``.
    """

    kind: Literal["match_result", "image"]
    score: float | None = None
    matched: bool = False
    person_id: uuid.UUID | None = None
    distance: float | None = None
    tolerance: float | None = None
    unavailable: str | None = None

    def __post_init__(self) -> None:
        if self.kind == "match_result":
            _check_unit("face score", self.score)  # type: ignore[arg-type]
        elif self.kind == "image":
            if self.score is not None:
                raise ValueError("an image match has a distance, not a score")
            if self.distance is not None and not (isinstance(self.distance, int | float) and self.distance >= 0):
                raise ValueError("a face distance is a number of at least 0")
        else:
            raise ValueError("face evidence is a match result or a matched image")

    @classmethod
    def image_pending(cls) -> FaceEvidence:
        return cls("image", unavailable="not_matched")

    @property
    def compared(self) -> bool:
        """An image actually compared with an enrolled face (a distance was measured)."""
        return self.kind == "image" and self.distance is not None and self.person_id is not None


@dataclass(frozen=True, slots=True)
class FaceRecord:
    """The face evidence a decision weighed, as its gate_decisions row keeps it (review 131): never an
    image, nor whose face it was.

    ``kind``: ``none`` (no face sent), ``image`` (a capture the service matched itself: ``distance``
    and the ``tolerance`` applied, the stricter of the matcher's and the terminal's; or ``unavailable``
    saying why none was measured) or ``match_result`` (a local matcher's claim: its ``score`` and
    ``matched``, the ``min_score`` it was held to, and ``trusted``, whether the terminal's policy
    accepted match results). An allow on a claimed match thus reads apart from one on the service's.
    ``person_id``, for a match result only: whose face the claim is about (``_driver_of``), for its
    audit entry; never in ``as_json``. ``against``: the face evidence of an earlier decision on the right
    that the service found another person's (``face_refused``, review 148), with that decision's
    ``decision_id`` and ``decided_at``, which this decision weighed too: its face_mismatch is then the
    service's as much as that one's (``face_against``).
    """

    kind: Literal["none", "image", "match_result"]
    matched: bool | None = None
    score: float | None = None
    min_score: float | None = None
    trusted: bool | None = None
    distance: float | None = None
    tolerance: float | None = None
    unavailable: str | None = None
    person_id: uuid.UUID | None = None
    against: Mapping[str, object] | None = None

    @classmethod
    def of(cls, face: FaceEvidence | None, policy: TerminalPolicy, person: uuid.UUID | None = None) -> FaceRecord:
        if face is None:
            return cls("none")
        if face.kind == "match_result":
            return cls("match_result", matched=face.matched, score=face.score, min_score=policy.face_min_score,
                       trusted=policy.face_match_results == "accept", person_id=person)
        tolerance = None if face.distance is None else min(
            policy.face_tolerance, face.tolerance if face.tolerance is not None else FACE_MAX_TOLERANCE)
        return cls("image", matched=face.matched if face.distance is not None else None, distance=face.distance,
                   tolerance=tolerance, unavailable=face.unavailable)

    def as_json(self) -> dict[str, object]:
        """The row's ``face`` column: the fields that apply to its kind, and ``against`` when there is one."""
        own: dict[str, object]
        if self.kind == "none":
            own = {"kind": "none"}
        elif self.kind == "match_result":
            own = {"kind": self.kind, "matched": self.matched, "score": self.score, "min_score": self.min_score,
                   "trusted": self.trusted}
        else:
            own = {"kind": self.kind, "matched": self.matched, "distance": self.distance,
                   "tolerance": self.tolerance, "unavailable": self.unavailable}
        if self.against is not None:
            own["against"] = dict(self.against)
        return own


@dataclass(frozen=True, slots=True)
class GateRequest:
    request_id: str
    terminal: str
    lane: str
    direction: Direction
    mode: Mode
    container: ContainerRead
    plate: PlateRead | None
    badge: BadgeRead | None
    face: FaceEvidence | None
    observed_at: datetime

    def __post_init__(self) -> None:
        # Plain strings from the wire are accepted and checked here ("in", "commit").
        object.__setattr__(self, "direction", Direction(self.direction))
        object.__setattr__(self, "mode", Mode(self.mode))


# When a read may have been observed, against the service's clock, for a verify asked now. A lane asks
# within seconds of its reads, and sends a question again after an outage; a truck seen more than a day
# ago has long left the lane, and its request (a commit would use the right now) is no question about
# it. Ahead: the gate's clock may run ahead of ours by what its client assertions and DPoP proofs are
# allowed anyway (minutes), plus its cameras' own slack. Past either, the time would only stand in the
# decision's record as an absurdity (year 9999 was taken). An offline report is not held to these: it
# may come days late, and its times are judged by the pass it names (gate_pass.pass_covers).
MAX_OBSERVED_AGE_HOURS = 24
MAX_OBSERVED_AHEAD_MINUTES = 10
_OBSERVED_AGE = timedelta(hours=MAX_OBSERVED_AGE_HOURS)
_OBSERVED_AHEAD = timedelta(minutes=MAX_OBSERVED_AHEAD_MINUTES)


def check_observed_at(observed_at: datetime, now: datetime) -> None:
    """DomainError ``invalid_observed_at`` (naming the field) when ``observed_at`` lies more than
    MAX_OBSERVED_AGE_HOURS before ``now`` or more than MAX_OBSERVED_AHEAD_MINUTES after it."""
    if observed_at > now + _OBSERVED_AHEAD:
        raise DomainError(ErrorCode.INVALID_OBSERVED_AT, f"observed_at lies more than {MAX_OBSERVED_AHEAD_MINUTES} "
                          "minutes ahead of the service's clock.", field="observed_at")
    if observed_at < now - _OBSERVED_AGE:
        raise DomainError(ErrorCode.INVALID_OBSERVED_AT, f"observed_at lies more than {MAX_OBSERVED_AGE_HOURS} "
                          "hours before the service's clock.", field="observed_at")


# ---- what we know --------------------------------------------------------------------------------

_LIVE = frozenset({State.ACTIVE.value, State.NOMINATED.value, State.GATED_IN.value})
_PRE_GATE = frozenset({State.ACTIVE.value, State.NOMINATED.value})
GREEN = "green"  # a light's status, as RightFacts carries it
_GREEN = GREEN
_SCAN = "scan"


@dataclass(frozen=True, slots=True)
class NominationFacts:
    driver_person_id: uuid.UUID
    plate_text: str
    plate_country: str
    response: str = DriverResponse.PENDING.value

    @property
    def key(self) -> list[str | None]:
        return nomination_key(self.driver_person_id, self.plate_text, self.plate_country)


@dataclass(frozen=True, slots=True)
class RightFacts:
    """A snapshot of one release right, as much as the gate needs (states and lights as strings)."""

    id: uuid.UUID
    container: str
    terminal: str
    state: str
    blocked: bool
    commercial: str
    customs: str
    terminal_light: str
    valid_from: datetime
    valid_until: datetime
    created_at: datetime
    nomination: NominationFacts | None = None
    # The shipping line that issued the right (None: not known, a gate pass from before it was carried).
    issuer: uuid.UUID | None = None
    # The service's word that the right is contested whatever rights are seen beside it: another line was
    # refused its container and vessel call because this right held them (``ReleaseRight.contested_at``),
    # or, in a gate pass, another line holds a live right on this container at this terminal
    # (``contested``), which the adapter cannot see.
    contested: bool = False
    # Whether the company holding the right is active (port security has not deactivated it: review 130),
    # read with the right, from PostgreSQL and in the cached copies; a gate pass is issued only for a right
    # whose holder is active.
    holder_active: bool = True
    # Whether customs itself set this right's customs light to a hold (red or scan; ``Light.set_by``), not
    # the red a right is issued with, awaiting its release: a hold on the container, which every live right
    # of the container shares (``customs_hold``). In a gate pass, the service folds another right's hold into
    # ``customs`` (the adapter holds the nominated right alone).
    customs_held: bool = False
    # The last gate-in decision on this right whose face the service found another person's (review 148:
    # ``face_refused``), read with the right, from PostgreSQL and in the cached copies. Never in a gate pass.
    face_against: FaceAgainst | None = None

    @classmethod
    def from_right(cls, right: ReleaseRight) -> RightFacts:
        n = right.nomination
        nomination = None if n is None else NominationFacts(
            n.driver_person_id, n.plate.text, n.plate.country, n.response.value
        )
        return cls(
            id=right.id,
            container=right.container.value,
            terminal=right.terminal,
            state=right.state.value,
            blocked=right.blocked,
            commercial=right.commercial.status.value,
            customs=right.customs.status.value,
            terminal_light=right.terminal_light.status.value,
            valid_from=right.valid_from,
            valid_until=right.valid_until,
            created_at=right.created_at,
            nomination=nomination,
            issuer=right.issuer_organisation_id,
            contested=right.contested_at is not None,
            holder_active=right.holder_active,
            customs_held=customs_holds(right.customs.status.value, right.customs.set_by),
            face_against=right.face_against,
        )

    def effective_state(self, now: datetime) -> str:
        """As ``ReleaseRight.effective_state``: past its window a right not yet gated in has lapsed."""
        if self.state in _PRE_GATE and now >= self.valid_until:
            return State.EXPIRED.value
        return self.state


# Badge statuses mirrored from identity.domain.badges.BadgeStatus (this domain must not import it).
BADGE_ACTIVE = "active"
_BADGE_STATUS_REASON: Mapping[str, Reason] = MappingProxyType({
    "inactive": Reason.BADGE_INACTIVE,
    "blocked": Reason.BADGE_BLOCKED,
    "revoked": Reason.BADGE_REVOKED,
    "expired": Reason.BADGE_EXPIRED,
})


# A person's status, mirrored from identity's ``persons.status`` (active | suspended: port security's
# suspension, identity.authn.cutoff), as a plain string: this domain must not import identity.
PERSON_ACTIVE = "active"


@dataclass(frozen=True, slots=True)
class BadgeFacts:
    """The badge read at the gate, as the badge office knows it, with its holder's name (only ever
    shown masked, ``mask_name``) and status (``holder_status``: identity's ``persons.status``; read
    with the badge, so the cached copy of a badge carries it and a suspension invalidates it), and
    whether it has a chip (``card_uid_on_record``: a card UID the badge office knows). ``badge_id``: the
    badge office's id of it, which the decision keeps (review 174); None where it is not known (an
    offline gate pass's proof)."""

    found: bool
    status: str = ""
    person_id: uuid.UUID | None = None
    valid_until: datetime | None = None
    activated_terminals: frozenset[str] = frozenset()
    holder_name: str | None = None
    valid_from: datetime | None = None
    holder_status: str = PERSON_ACTIVE
    card_uid_on_record: bool = False
    badge_id: uuid.UUID | None = None

    @classmethod
    def not_found(cls) -> BadgeFacts:
        return cls(found=False)


class ScreeningResult(StrEnum):
    CLEAR = "clear"
    BANNED = "banned"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class ScreeningFacts:
    """The port-ban screening of the person behind the badge, at the time of the gate read. The service
    passes UNAVAILABLE when it could not screen (register down, or no person to screen)."""

    result: ScreeningResult


# ---- the decision --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Repair:
    """A character understood differently from how a camera read it: never silent (SPEC.md)."""

    field: Literal["container", "plate"]
    position: int
    read: str
    understood: str


@dataclass(frozen=True, slots=True)
class Decision:
    decision: Outcome
    reasons: tuple[Reason, ...]
    release_id: uuid.UUID | None
    container: str | None  # as understood, after repair; None when unreadable
    driver: str | None  # masked ("J. P***s")
    screening: ScreeningResult
    repairs: tuple[Repair, ...] = ()
    nomination: NominationFacts | None = None  # the judged right's, as read: what an override goes in under
    face: FaceRecord | None = None  # the face evidence weighed (``decide`` always sets it)
    # The badge the read found and its holder, ids only (review 174): None when no badge was read or the
    # read found none. Kept on the decision's row, never in the answer (which names the holder masked).
    badge_id: uuid.UUID | None = None
    holder_id: uuid.UUID | None = None

    @property
    def allowed(self) -> bool:
        return self.decision is Outcome.ALLOW

    @property
    def alarms(self) -> tuple[Reason, ...]:
        """Its reasons that raise port security's alarm (``BADGE_ALARMS``), in order; mostly none."""
        return tuple(r for r in self.reasons if r in BADGE_ALARMS)

    @property
    def event(self) -> str:
        """A dotted, PII-free log event (STYLE.md #13): ``release.verify.denied.right_expired``."""
        if not self.reasons:
            return "release.verify.allowed"
        verb = "denied" if self.decision is Outcome.DENY else "review"
        return f"release.verify.{verb}.{self.reasons[0].value}"


def mask_name(name: str | None) -> str | None:
    """First initial and a masked last name, enough for an officer to compare with a face and a
    badge photo, not enough to look someone up: ``Jan Peeters`` -> ``J. P***s``."""
    words = (name or "").split()
    if not words:
        return None
    last = words[-1]
    masked = last[0] + "***" + (last[-1] if len(last) > 2 else "")
    return masked if len(words) == 1 else f"{words[0][0]}. {masked}"


# ---- the context the guards read -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateContext:
    """Everything a guard may look at, computed once. ``right`` is the right judged (None: none);
    ``state`` its effective state now; ``plate`` the plate compared with its nomination (None when
    there is no nomination to compare with)."""

    request: GateRequest
    policy: TerminalPolicy
    now: datetime
    reading: ContainerReading
    rights: tuple[RightFacts, ...]  # the understood container's rights, deleted ones left out
    right: RightFacts | None
    state: str | None
    badge: BadgeFacts | None
    screening: ScreeningFacts
    plate: PlateMatch | None = None
    refused: FaceAgainst | None = None  # the service's own face_mismatch standing for this gate-in (``face_refused``)

    @property
    def live(self) -> bool:
        """A right still in play: the guards beyond its state only judge such a right."""
        return self.state in _LIVE

    @property
    def terminal(self) -> str:
        return _terminal(self.request.terminal)

    @property
    def badge_found(self) -> BadgeFacts | None:
        return self.badge if self.badge is not None and self.badge.found else None


def _terminal(code: str) -> str:
    return code.strip().upper()


_PREFERENCE: Mapping[Direction, tuple[str, ...]] = MappingProxyType({
    Direction.IN: (State.NOMINATED.value, State.ACTIVE.value, State.GATED_IN.value),
    Direction.OUT: (State.GATED_IN.value, State.NOMINATED.value, State.ACTIVE.value),
})


def select_right(
    rights: Sequence[RightFacts], *, terminal: str, direction: Direction, now: datetime,
    driver: uuid.UUID | None = None,
) -> RightFacts | None:
    """The right the gate judges, among the container's (non-deleted) rights.

    1. A live right at this terminal: the one nominated to ``driver`` (whose badge was read), then the
       one in the state this direction expects (nominated for gate-in, gated-in for gate-out), then the
       most recently created. Two parties may hold live rights on one container (another line's right
       on another vessel call, say): a newer right nominated to someone else must not turn the
       nominated driver away (``driver_mismatch`` cannot be overridden).
    2. Else, when a live right exists at another terminal: none (the decision says ``wrong_terminal``).
    3. Else the most recently created ended right at this terminal, so the decision says why it ended
       (``already_used``, ``right_revoked``, ``right_expired``).
    4. Else none (``container_unknown`` when there are no rights, ``no_release_right`` otherwise).
    """
    here = [r for r in rights if _terminal(r.terminal) == _terminal(terminal)]
    live_here = [r for r in here if r.effective_state(now) in _LIVE]
    if live_here:
        order = _PREFERENCE[direction]

        def rank(r: RightFacts) -> tuple[bool, int, float]:
            theirs = driver is not None and r.nomination is not None and r.nomination.driver_person_id == driver
            return not theirs, order.index(r.effective_state(now)), -r.created_at.timestamp()

        return min(live_here, key=rank)
    if any(r.effective_state(now) in _LIVE for r in rights):
        return None
    return max(here, key=lambda r: r.created_at, default=None)


def _context(
    request: GateRequest,
    rights: Sequence[RightFacts],
    badge: BadgeFacts | None,
    screening: ScreeningFacts,
    policy: TerminalPolicy,
    now: datetime,
) -> GateContext:
    kept = tuple(r for r in rights if r.state != State.DELETED.value)
    reading = understand_container(
        request.container.number,
        request.container.confidence,
        known=frozenset(r.container for r in kept),
        policy=policy,
    )
    mine = tuple(r for r in kept if r.container == reading.number) if reading.understood else ()
    driver = badge.person_id if badge is not None and badge.found else None
    right = select_right(mine, terminal=request.terminal, direction=request.direction, now=now, driver=driver)
    state = right.effective_state(now) if right is not None else None
    plate = None
    if right is not None and state in _LIVE and right.nomination is not None:
        read = request.plate or PlateRead("", None, 0.0)
        n = right.nomination
        plate = compare_plate(read.text, read.country, read.confidence, n.plate_text, n.plate_country, policy)
    return GateContext(request, policy, now, reading, mine, right, state, badge, screening, plate,
                       face_standing(right, request, now=now))


# ---- the guards: one per reason ------------------------------------------------------------------


def container_unreadable(ctx: GateContext) -> bool:
    """The container read could not be trusted (malformed, no single repair, no or several known
    repairs, or a repair at low confidence). A doubt: a person reads the number."""
    return not ctx.reading.understood


def container_unknown(ctx: GateContext) -> bool:
    """The number was understood but no release right was ever issued for it (deleted ones aside)."""
    return ctx.reading.understood and not ctx.rights


def wrong_terminal(ctx: GateContext) -> bool:
    """The container's live right is at another terminal only: the truck is at the wrong gate."""
    return ctx.right is None and any(r.effective_state(ctx.now) in _LIVE for r in ctx.rights)


def no_release_right(ctx: GateContext) -> bool:
    """Rights exist, but none live here or elsewhere (all ended at other terminals); or, at gate-out,
    the right was never gated in, so nothing covers this container leaving."""
    if ctx.right is None:
        return bool(ctx.rights) and not wrong_terminal(ctx)
    return ctx.request.direction is Direction.OUT and ctx.state in _PRE_GATE


def not_nominated(ctx: GateContext) -> bool:
    """Gate-in needs a named driver and truck; an active right has none yet."""
    return ctx.request.direction is Direction.IN and ctx.state == State.ACTIVE.value


def nomination_refused(ctx: GateContext) -> bool:
    """The nominated driver refused the pickup (release.py): his nomination no longer admits a truck.
    Gate-in only: once inside (perhaps by an audited override) the truck must still be let out."""
    n = ctx.right.nomination if ctx.right is not None else None
    return (ctx.request.direction is Direction.IN and ctx.live and n is not None
            and n.response == DriverResponse.REFUSED.value)


def right_revoked(ctx: GateContext) -> bool:
    """The shipping line revoked the right (from any live state, also after gate-in)."""
    return ctx.state == State.REVOKED.value


def right_expired(ctx: GateContext) -> bool:
    """The right lapsed: past its validity window before gate-in (even if the sweeper has not run)."""
    return ctx.state == State.EXPIRED.value


def right_not_yet_valid(ctx: GateContext) -> bool:
    """Gate-in before the right's window opens. (A gated-in right is not re-judged on its window.)"""
    r = ctx.right
    return (r is not None and ctx.request.direction is Direction.IN and ctx.state in _PRE_GATE
            and ctx.now < r.valid_from)


def right_blocked(ctx: GateContext) -> bool:
    """The line's block freezes gate use of a live right, in both directions."""
    return ctx.right is not None and ctx.live and ctx.right.blocked


def holder_inactive(ctx: GateContext) -> bool:
    """Port security deactivated the company holding the right (a company struck off, a suspected
    fraud): what it set in motion stops, its nominated truck included, in both directions (a container
    inside is not to leave on its word either), until it is reactivated. Not the desk's to set aside."""
    return ctx.right is not None and ctx.live and not ctx.right.holder_active


def already_used(ctx: GateContext) -> bool:
    """Gate-in uses the right once (SPEC.md); gate-out once after it."""
    if ctx.request.direction is Direction.IN:
        return ctx.state in (State.GATED_IN.value, State.COMPLETED.value)
    return ctx.state == State.COMPLETED.value


def rivals(rights: Sequence[RightFacts], right: RightFacts, *, terminal: str, now: datetime) -> list[RightFacts]:
    """Other shipping lines' live rights on ``right``'s container at ``terminal``: of ``rights``, those
    live here whose issuer is known and not ``right``'s. Nothing ties a container to the line that carries
    it, so a second line's right on it (another vessel call) is a doubt a person settles from the
    terminal's own discharge records; two rights of one line are that line's own affair (it revokes the
    one it issued by mistake)."""
    if right.issuer is None:
        return []
    here = _terminal(terminal)
    return [r for r in rights if r.container == right.container and r.issuer is not None
            and r.issuer != right.issuer and _terminal(r.terminal) == here and r.effective_state(now) in _LIVE]


def own_others(rights: Sequence[RightFacts], right: RightFacts, *, now: datetime) -> list[RightFacts]:
    """``right``'s line's other live rights on its container at its terminal."""
    here = _terminal(right.terminal)
    return [r for r in rights if r.id != right.id and r.container == right.container and r.issuer == right.issuer
            and _terminal(r.terminal) == here and r.effective_state(now) in _LIVE]


def line_marked(rights: Sequence[RightFacts], right: RightFacts) -> bool:
    """Whether the service marked contested a right of ``right``'s line on its container (``contested``:
    another line was refused the container because that right held it), at any terminal (the key the
    refusal met has none), that has not left the terminal (a completed right's mark does not carry to the
    line's next voyage of the container). Read at the gate, so the line cannot shed the mark by issuing
    the container again, wherever or whenever, even in a race with the refusal (review 107)."""
    return right.issuer is not None and any(
        o.contested and o.issuer == right.issuer and o.container == right.container
        and o.state != State.COMPLETED.value for o in rights)


def contested(rights: Sequence[RightFacts], right: RightFacts, *, terminal: str, now: datetime) -> bool:
    """Whether another shipping line holds a live right on ``right``'s container at ``terminal``
    (``rivals``), or ``right``'s line is marked on the container (``line_marked``)."""
    return bool(rivals(rights, right, terminal=terminal, now=now)) or line_marked(rights, right)


def container_contested(ctx: GateContext) -> bool:
    """Another line holds a live right on the container here (``contested``; in a gate pass, the
    service's word ``RightFacts.contested``). Without this guard, any line could issue a right on
    another line's container to its own haulier, whose driver would be let through once the lights of
    that right were green. Gate-in only: the gate-in settled it (no other line claimed the container
    then, or a person overrode the doubt), and only a gate-in can be overridden, so a right issued after
    it must not hold the truck inside."""
    r = ctx.right
    return r is not None and ctx.request.direction is Direction.IN and ctx.live and (
        r.contested or contested(ctx.rights, r, terminal=ctx.request.terminal, now=ctx.now))


def commercial_hold(ctx: GateContext) -> bool:
    """The line's commercial light is not green (e.g. freight unpaid). Checked both ways: a hold set
    after gate-in must still stop the container leaving."""
    return ctx.right is not None and ctx.live and ctx.right.commercial != _GREEN


def customs_hold(ctx: GateContext) -> bool:
    """Customs has not released the container, or selected it for scan: on the judged right, or on another
    right of the container, live or ended unused (``container_held``)."""
    return ctx.right is not None and ctx.live and (
        ctx.right.customs != _GREEN or container_held(ctx.rights, ctx.right, now=ctx.now) is not None)


def container_held(rights: Sequence[RightFacts], right: RightFacts, *, now: datetime) -> RightFacts | None:
    """Another right of ``right``'s container, at any terminal, on which customs set a hold itself
    (``RightFacts.customs_held``) and that did not take the container out (not completed): customs holds the
    goods, not one right of them. A line may hold two live rights on one container (two vessel calls);
    without this, a hold on one let the container out on the other, nominated to another driver or issued
    before the hold (a hold carries to a right issued after it, review 141). The right it was set on may
    have ended since, revoked or lapsed: the hold stays on the container until customs lifts it, on that
    right or on one that carried it (review 149, finding 3; ``ReleaseRight.set_light``), as a right issued
    after the end takes it (``release.carried_customs_hold``): its lapse at ``now`` changes nothing. None when
    there is none."""
    return next((r for r in rights if r.id != right.id and r.customs_held and r.container == right.container
                 and r.state != State.COMPLETED.value), None)


def terminal_hold(ctx: GateContext) -> bool:
    """The terminal's own light is not green (not discharged, or held)."""
    return ctx.right is not None and ctx.live and ctx.right.terminal_light != _GREEN


def badge_unknown(ctx: GateContext) -> bool:
    """No badge was read, or the badge office does not know it."""
    return ctx.badge_found is None


def _status_is(b: BadgeFacts, reason: Reason) -> bool:
    return _BADGE_STATUS_REASON.get(b.status) is reason


def _inactive(b: BadgeFacts, now: datetime) -> bool:
    """Suspended (temporarily missing), or a status we do not know (a badge is only good when it is
    plainly active: fail closed), or issued but not valid yet."""
    return _status_is(b, Reason.BADGE_INACTIVE) or (
        b.status != BADGE_ACTIVE and b.status not in _BADGE_STATUS_REASON
    ) or (b.valid_from is not None and now < b.valid_from)


def _expired(b: BadgeFacts, now: datetime) -> bool:
    """Its validity is over, whether or not the badge office has marked it expired yet."""
    return _status_is(b, Reason.BADGE_EXPIRED) or (b.valid_until is not None and now >= b.valid_until)


# What the badge office's word on a found badge refuses, at a time: the rules of the gate's guards
# below, for the offline reconcile's look at the badge a lane read (``badge_refusals``).
_BADGE_RULES: tuple[tuple[Reason, Callable[[BadgeFacts, datetime], bool]], ...] = (
    (Reason.BADGE_INACTIVE, _inactive),
    (Reason.BADGE_BLOCKED, lambda b, _: _status_is(b, Reason.BADGE_BLOCKED)),
    (Reason.BADGE_REVOKED, lambda b, _: _status_is(b, Reason.BADGE_REVOKED)),
    (Reason.BADGE_EXPIRED, _expired),
)


def badge_refusals(badge: BadgeFacts, now: datetime) -> tuple[Reason, ...]:
    """Why the badge office's word on this badge refuses it at ``now`` (``badge_unknown`` when not found)."""
    if not badge.found:
        return (Reason.BADGE_UNKNOWN,)
    return tuple(reason for reason, rule in _BADGE_RULES if rule(badge, now))


def badge_inactive(ctx: GateContext) -> bool:
    """The badge is suspended, of a status we do not know, or not valid yet (``_inactive``)."""
    b = ctx.badge_found
    return b is not None and _inactive(b, ctx.now)


def badge_blocked(ctx: GateContext) -> bool:
    """The badge was reported lost or stolen: whoever holds it is not its holder."""
    b = ctx.badge_found
    return b is not None and _status_is(b, Reason.BADGE_BLOCKED)


def badge_revoked(ctx: GateContext) -> bool:
    """The badge office withdrew the badge."""
    b = ctx.badge_found
    return b is not None and _status_is(b, Reason.BADGE_REVOKED)


def badge_expired(ctx: GateContext) -> bool:
    """The badge's validity is over (``_expired``)."""
    b = ctx.badge_found
    return b is not None and _expired(b, ctx.now)


def badge_not_activated_here(ctx: GateContext) -> bool:
    """Badges are activated per terminal; this one is not activated at this terminal."""
    b = ctx.badge_found
    return b is not None and ctx.terminal not in {_terminal(t) for t in b.activated_terminals}


def badge_chip_required(ctx: GateContext) -> bool:
    """The terminal asks for the badge's chip (``TerminalPolicy.badge_chip_required``), the badge has one on
    record, and the reader gave its printed number alone. A doubt: an officer looks at the badge."""
    b, read = ctx.badge_found, ctx.request.badge
    return (ctx.policy.badge_chip_required and b is not None and b.card_uid_on_record
            and read is not None and not read.card_uid)


def driver_mismatch(ctx: GateContext) -> bool:
    """The badge belongs to someone other than the nominated driver: the right is bound to one person."""
    b, r = ctx.badge_found, ctx.right
    if b is None or r is None or r.nomination is None or not ctx.live:
        return False
    return b.person_id != r.nomination.driver_person_id


def plate_mismatch(ctx: GateContext) -> bool:
    """A confident read of another plate (or country) than the nominated truck's."""
    return ctx.plate is not None and ctx.plate.outcome is PlateOutcome.MISMATCH


def plate_low_confidence(ctx: GateContext) -> bool:
    """The plate read is too unsure, or too many look-alikes, to tell a misread from another truck."""
    return ctx.plate is not None and ctx.plate.outcome is PlateOutcome.LOW_CONFIDENCE


def _driver_of(ctx: GateContext) -> uuid.UUID | None:
    """Whose enrolled face a gate capture is matched against: the nominated driver of the right
    judged (the right is bound to that person; a badge of someone else is ``driver_mismatch``
    anyway); without a live nomination, the badge holder; else nobody."""
    r = ctx.right
    if r is not None and ctx.live and r.nomination is not None:
        return r.nomination.driver_person_id
    b = ctx.badge_found
    return b.person_id if b is not None else None


def _image_is_of_driver(ctx: GateContext) -> bool:
    face = ctx.request.face
    return face is not None and face.compared and face.person_id == _driver_of(ctx)


def _match_result_says_no(face: FaceEvidence, policy: TerminalPolicy) -> bool:
    """A local matcher's result that says no or scores under ``face_min_score``. It counts whether that
    matcher is trusted or not: a negative claim can only make a decision stricter."""
    return not face.matched or face.score is None or face.score < policy.face_min_score


def face_required(ctx: GateContext) -> bool:
    """No usable face where one is needed: the terminal requires one and none was sent, or only a
    claimed match from a local matcher the terminal's policy does not trust; or an image was sent but
    not compared with this decision's driver (nobody known to match, no enrolment, the
    matcher busy or down, or matched against a driver since re-nominated). A doubt: an officer looks;
    a face that could not be matched never becomes an allow."""
    face = ctx.request.face
    if face is None:
        return ctx.policy.face_required
    if face.kind == "image":
        return face.unavailable not in FACE_ATTACKS and not _image_is_of_driver(ctx)
    # A match result from a terminal whose local matcher port security has not trusted (policy
    # ``face_match_results`` refuse; review 131): a claimed match is no evidence, as if no face was sent.
    # A claimed no is ``face_mismatch`` whatever the trust, and needs no second reason here.
    return (ctx.policy.face_required and ctx.policy.face_match_results != "accept"
            and not _match_result_says_no(face, ctx.policy))


def face_mismatch(ctx: GateContext) -> bool:
    """A matcher's result that says no or scores under ``face_min_score``; an image of another face
    than the driver's enrolled one (a distance over the tolerance: the stricter of the one applied
    and the terminal's now); or an image the liveness port called a spoof, or the very bytes of a
    capture matched before for another request (a copy sent again: ``face_replayed``); or, at a
    gate-in, the service's own such word on the right a moment ago (``face_refused``)."""
    if face_refused(ctx) is not None:
        return True
    face = ctx.request.face
    if face is None:
        return False
    if face.kind == "match_result":
        return _match_result_says_no(face, ctx.policy)
    if face.unavailable in FACE_ATTACKS:
        return True
    if not _image_is_of_driver(ctx) or face.distance is None:
        return False
    limit = min(ctx.policy.face_tolerance, face.tolerance if face.tolerance is not None else FACE_MAX_TOLERANCE)
    return not (face.matched and face.distance <= limit)


def face_refused(ctx: GateContext) -> FaceAgainst | None:
    """The service's own face_mismatch on the right judged, standing for this gate-in (review 148:
    ``face_standing``). Else a gate client asked again without a face, and had a review to override, or an
    allow where no face is required. None: nothing stands. Found once per decision, in ``_context``."""
    return ctx.refused


def face_standing(right: RightFacts | None, request: GateRequest, *, now: datetime) -> FaceAgainst | None:
    """The right's ``face_against`` when it stands for ``request`` at ``now`` (review 148): a gate-in of the
    right before its gate-in, a decision on it within ``OVERRIDE_WITHIN_SECONDS`` of ``now`` (either way: its
    time is the service's clock) that found the face another person's than the driver's (``face_against``),
    under the nomination still on it, and ``request`` brings no capture the service compared with that
    driver: none, a local matcher's claim, or an image it could not judge (or, offline, did not match). A
    fresh capture the service matched to the driver is judged on its own: a passenger caught by the lane
    camera does not lock the driver out. A re-nomination (another driver or truck) or the window's end lifts
    it. The one rule online (``face_mismatch``) and at the reconcile of an offline gate-in
    (services/gate_passes.py). None: nothing stands."""
    seen = face_stands(right, now=now) if request.direction is Direction.IN else None
    if right is None or right.nomination is None or seen is None:
        return None
    face = request.face
    matched_here = face is not None and face.compared and face.person_id == right.nomination.driver_person_id
    return None if matched_here else seen


def face_stands(right: RightFacts | None, *, now: datetime) -> FaceAgainst | None:
    """The right's ``face_against`` when it stands at ``now``, whatever is asked (``face_standing`` then
    looks at the capture sent; an override at the decision overridden, ``require_overridable_right``): the
    right not yet gated in, a decision on it within ``OVERRIDE_WITHIN_SECONDS`` of ``now`` (either way) that
    found the face another person's, under the nomination still on it. None: nothing stands."""
    seen = right.face_against if right is not None else None
    if right is None or seen is None or right.nomination is None or right.effective_state(now) not in _PRE_GATE:
        return None
    if (seen.nomination != tuple(right.nomination.key) or not own_face_against(seen.face)
            or abs((now - seen.at).total_seconds()) > OVERRIDE_WITHIN_SECONDS):
        return None
    return seen


def person_suspended(ctx: GateContext) -> bool:
    """Port security suspended the person behind the badge (suspected identity fraud, say): whoever
    shows his badge is stopped, in both directions, as for a ban. A holder status other than plainly
    active counts as suspended (fail closed, as ``_inactive`` does for badges)."""
    b = ctx.badge_found
    return b is not None and b.holder_status != PERSON_ACTIVE


def person_banned(ctx: GateContext) -> bool:
    """The person behind the badge is on the national port-ban list."""
    return ctx.screening.result is ScreeningResult.BANNED


def screening_unavailable(ctx: GateContext) -> bool:
    """The port-ban screening could not be done; the terminal's policy says review or deny."""
    return ctx.screening.result is ScreeningResult.UNAVAILABLE


Guard = Callable[[GateContext], bool]

# The rule book: every reason code and the one guard that yields it.
RULES: tuple[tuple[Reason, Guard], ...] = (
    (Reason.CONTAINER_UNREADABLE, container_unreadable),
    (Reason.CONTAINER_UNKNOWN, container_unknown),
    (Reason.NO_RELEASE_RIGHT, no_release_right),
    (Reason.WRONG_TERMINAL, wrong_terminal),
    (Reason.NOT_NOMINATED, not_nominated),
    (Reason.NOMINATION_REFUSED, nomination_refused),
    (Reason.RIGHT_REVOKED, right_revoked),
    (Reason.RIGHT_EXPIRED, right_expired),
    (Reason.RIGHT_NOT_YET_VALID, right_not_yet_valid),
    (Reason.RIGHT_BLOCKED, right_blocked),
    (Reason.HOLDER_INACTIVE, holder_inactive),
    (Reason.ALREADY_USED, already_used),
    (Reason.CONTAINER_CONTESTED, container_contested),
    (Reason.COMMERCIAL_HOLD, commercial_hold),
    (Reason.CUSTOMS_HOLD, customs_hold),
    (Reason.TERMINAL_HOLD, terminal_hold),
    (Reason.BADGE_UNKNOWN, badge_unknown),
    (Reason.BADGE_INACTIVE, badge_inactive),
    (Reason.BADGE_BLOCKED, badge_blocked),
    (Reason.BADGE_REVOKED, badge_revoked),
    (Reason.BADGE_EXPIRED, badge_expired),
    (Reason.BADGE_NOT_ACTIVATED_HERE, badge_not_activated_here),
    (Reason.BADGE_CHIP_REQUIRED, badge_chip_required),
    (Reason.DRIVER_MISMATCH, driver_mismatch),
    (Reason.PLATE_MISMATCH, plate_mismatch),
    (Reason.PLATE_LOW_CONFIDENCE, plate_low_confidence),
    (Reason.FACE_REQUIRED, face_required),
    (Reason.FACE_MISMATCH, face_mismatch),
    (Reason.PERSON_SUSPENDED, person_suspended),
    (Reason.PERSON_BANNED, person_banned),
    (Reason.SCREENING_UNAVAILABLE, screening_unavailable),
)


def face_subject(request: GateRequest, *, rights: Sequence[RightFacts], badge: BadgeFacts | None,
                 policy: TerminalPolicy, now: datetime) -> uuid.UUID | None:
    """The person whose enrolled face a capture sent with ``request`` must be matched against (see
    ``_driver_of``), on the same facts ``decide`` would judge; None: nobody is known."""
    ctx = _context(request, rights, badge, ScreeningFacts(ScreeningResult.UNAVAILABLE), policy, now)
    return _driver_of(ctx)


def severity(reason: Reason, policy: TerminalPolicy) -> Severity:
    """A reason's severity under a terminal's policy (``SEVERITY``, with BY_POLICY resolved)."""
    s = SEVERITY[reason]
    if s is Severity.BY_POLICY:
        return Severity.DOUBT if policy.screening_unavailable == "review" else Severity.REFUSAL
    return s


def outcome(reasons: Sequence[Reason], policy: TerminalPolicy) -> Outcome:
    """No reasons: allow. Only doubts: review. Any refusal: deny."""
    if not reasons:
        return Outcome.ALLOW
    if all(severity(r, policy) is Severity.DOUBT for r in reasons):
        return Outcome.REVIEW
    return Outcome.DENY


def _repairs(ctx: GateContext) -> tuple[Repair, ...]:
    def as_repair(kind: Literal["container", "plate"], s: Substitution) -> Repair:
        return Repair(kind, s.position, s.read, s.understood)

    found: list[Repair] = []
    if ctx.reading.substitution is not None:
        found.append(as_repair("container", ctx.reading.substitution))
    if ctx.plate is not None and ctx.plate.outcome is PlateOutcome.LOOKALIKE_MATCH:
        found.extend(as_repair("plate", s) for s in ctx.plate.repairs)
    return tuple(found)


def decide(
    request: GateRequest,
    *,
    rights: Sequence[RightFacts],
    badge: BadgeFacts | None,
    screening: ScreeningFacts,
    policy: TerminalPolicy,
    now: datetime,
) -> Decision:
    """Decide a gate read (see the module docstring).

    ``rights``: every non-deleted right, at any terminal and in any state, of the container as read
    and, when the read needs repair, of each repair candidate (``reads.container_candidates``): the
    repair counts a candidate as known when it has a right here, so the caller must fetch them all
    for an ambiguous read to be seen as one. ``badge``: None when no badge was read.
    """
    ctx = _context(request, rights, badge, screening, policy, now)
    reasons = tuple(sorted({reason for reason, guard in RULES if guard(ctx)}, key=_ORDER.__getitem__))
    holder = ctx.badge_found
    face = FaceRecord.of(request.face, policy, _driver_of(ctx))
    earlier = face_refused(ctx)
    if earlier is not None:  # kept on the row: no desk sets this face_mismatch aside either (``not_overridable``)
        face = replace(face, against={**earlier.face, "decision_id": str(earlier.decision_id),
                                      "decided_at": earlier.at.isoformat()})
    return Decision(
        decision=outcome(reasons, policy),
        reasons=reasons,
        release_id=ctx.right.id if ctx.right is not None else None,
        container=ctx.reading.number,
        driver=mask_name(holder.holder_name) if holder is not None else None,
        screening=screening.result,
        repairs=_repairs(ctx),
        nomination=ctx.right.nomination if ctx.right is not None else None,
        face=face,
        badge_id=holder.badge_id if holder is not None else None,
        holder_id=holder.person_id if holder is not None else None,
    )

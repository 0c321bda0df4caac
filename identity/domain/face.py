"""Face verification rules (issue 6): is a capture good enough, do two faces match, what a match raises.

Standard library only. The engine (``identity.face.engine``) measures a capture: the face boxes found,
the sharpness of the largest face, its 128-number encoding. These functions judge the measures; every
refusal is one stable code.

Quality of a capture (enrolment and verification alike), in this order:

=================== ===========================================================================
code                when
=================== ===========================================================================
face_not_found      no face was detected
face_multiple       a second face is in the picture that is itself large enough to be judged
                    (``min_face_px``) or at least half the size of the largest: we would not know
                    whose face we match (at the gate: the enrolled driver in the passenger seat).
                    Smaller boxes are bystanders far behind or false detections (NOTES.md: take
                    the largest box), and the largest face is the one judged
face_too_small      the largest face is under ``min_face_px`` at the analysed scale (dlib's
                    detection window is 80 px; the encoder works on a 150 px chip, so smaller
                    faces are mostly upscaled noise)
face_blurred        the variance of the Laplacian of the face, resized to 64x64 grey, is under
                    ``min_sharpness`` (sharp sample photos score 350 to 1300; a 3 px Gaussian
                    blur at the 640 px scale scores under 150)
=================== ===========================================================================

Decision: the Euclidean distance between the live encoding and the enrolled one; a match is a
distance at or under the tolerance. face_recognition's default tolerance is 0.6; same-person pairs
measure 0.24 to 0.45 here and different people 0.80 to 0.88 (NOTES.md), so the default is 0.5 and a
terminal may tighten it down to 0.3, never loosen it past 0.6 (a false accept lets the wrong driver
take a container).

Replay: a live camera never gives the same bytes twice, so a capture whose exact bytes were already
matched for this person, for another use (another gate request, another step-up), is a copy of an
earlier capture sent again: ``face_replayed``, never a match. The service keeps a keyed digest of every
capture it matched for ``replay_window`` (identity.face.service), and of every enrolment's photo (review
165, finding 4: an ID photo's scan a company holds, the badge office's capture); the same use again (a
gate's retry of its own request_id) is not a replay. And when the face was enrolled from an ID photo, a
capture closer than ``COPY_DISTANCE`` to it is a copy of that photo, re-encoded or not, not a new capture of
the person: ``face_replayed`` too (``decide``). Not after a live capture: another frame of the person from
a similar camera may be as close.

Who learns what (the enrolment oracle): a caller who is not the person himself (the gate) gets the
same answer for a bad capture whether or not the person has a face enrolled: the capture is judged
first (``first_refusal``), and only a usable capture says that no face was there to compare it with.
The person himself (his step-up) is told at once that he has no face enrolled.

Step-up (OIDC Core §2 ``acr``, RFC 8176 ``amr``): a face match is never a login by itself; it raises a
passkey or national-ID login (``identity.domain.assurance``) to ``urn:quaygate:acr:face`` and adds
``face`` to ``amr``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .assurance import ACR_FACE, ACR_PASSKEY, ACR_UPSTREAM, AMR_FACE

TEMPLATE_SIZE = 128  # dlib's face descriptor
DEFAULT_TOLERANCE = 0.5
MIN_TOLERANCE = 0.3
MAX_TOLERANCE = 0.6
SECOND_FACE_RATIO = 2  # a second face at least 1/2 the size of the largest makes the capture ambiguous
SOURCES = ("id_photo", "live_capture")  # where an enrolment's image came from (kept, the image is not)
# Under this distance from a face enrolled from an ID photo, a capture is a copy of that photo, not a capture
# of the person (review 165, finding 4). An ID photo is a picture of an earlier day, camera and light that
# others hold (the company's scan of it): a capture at the gate or a step-up is never that close to it, and
# the sample photos of one man measure 0.32 to 0.45 apart (a crop of one of them that cuts the face, 0.24
# from it). A copy of one image is: the same pixels 0.0; a JPEG of obama.jpg saved again at quality 30 to 95,
# or at half its size, 0.04 to 0.09; 32bit.png, an RGBA PNG of obama2.jpg, 0.047 from it (measured 2026-11
# with the numpy encoder, which dlib's agrees with within 1e-5). The review's 0.02 would catch only the same
# pixels. Not after a live capture (``COPY_SOURCES``): two frames of one person from one camera, same light
# and pose, a minute apart, may be as close as a copy, so the badge office's capture followed by one from a
# similar camera would be refused face_replayed, at a step-up counted as a guess towards the lockout; its
# exact bytes stay claimed by their digest (the service), a re-encoded copy of it matches. A copy cropped,
# turned or retouched enough goes past it: that is the liveness port's job (docs/face.md).
COPY_DISTANCE = 0.1
COPY_SOURCES = frozenset({"id_photo"})  # the enrolments the near-copy rule applies to


class FaceCode(StrEnum):
    """Every refusal of the face part, as the API, the audit trail and the gate name it."""

    IMAGE_UNREADABLE = "image_unreadable"
    IMAGE_TOO_LARGE = "image_too_large"
    NO_FACE = "face_not_found"
    MULTIPLE_FACES = "face_multiple"
    TOO_SMALL = "face_too_small"
    BLURRED = "face_blurred"
    NOT_ENROLLED = "face_not_enrolled"
    MISMATCH = "face_mismatch"
    TOLERANCE_INVALID = "tolerance_invalid"
    SOURCE_INVALID = "source_invalid"
    NOT_LIVE = "face_not_live"  # the liveness port judged the capture a presentation attack
    BUSY = "face_busy"  # the worker pool's queue is full: try again
    UNAVAILABLE = "face_unavailable"  # the matcher is not running (a worker died, not installed)
    REPLAYED = "face_replayed"  # these bytes were matched or enrolled before (another use), or the enrolment's image


QUALITY_CODES = frozenset({FaceCode.NO_FACE, FaceCode.MULTIPLE_FACES, FaceCode.TOO_SMALL, FaceCode.BLURRED,
                           FaceCode.IMAGE_UNREADABLE, FaceCode.IMAGE_TOO_LARGE})


@dataclass(frozen=True, slots=True)
class Box:
    """A face box in pixels of the analysed (downscaled) image, as dlib gives it."""

    top: int
    right: int
    bottom: int
    left: int

    @property
    def size(self) -> int:
        """The smaller side: a face cut by the picture's edge is as small as its visible part."""
        return min(self.bottom - self.top, self.right - self.left)

    @property
    def area(self) -> int:
        return max(0, self.bottom - self.top) * max(0, self.right - self.left)


@dataclass(frozen=True, slots=True)
class QualityRules:
    min_face_px: int = 80
    min_sharpness: float = 150.0

    def __post_init__(self) -> None:
        if self.min_face_px < 1 or not math.isfinite(self.min_sharpness) or self.min_sharpness < 0:
            raise ValueError("min_face_px must be positive and min_sharpness at least 0")


def first_refusal(enrolment: FaceCode | None, capture: FaceCode | None, *, own_face: bool) -> FaceCode | None:
    """The one refusal a verification answers, of a missing or unreadable enrolment (``enrolment``:
    face_not_enrolled, face_unavailable) and the capture's own (quality, face_busy, face_unavailable).

    The capture's comes first for anyone but the person himself: were a missing enrolment answered
    before the capture is judged, a faceless or blurred image would tell a gate client whether this
    person has a face enrolled (a quality refusal when he has, "no enrolment" when he has not). The
    person himself (``own_face``: his step-up) is entitled to know, and is told first."""
    if own_face and enrolment is not None:
        return enrolment
    return capture if capture is not None else enrolment


def largest(boxes: Sequence[Box]) -> Box | None:
    """The face we judge: the largest box (with upsampling a false second face can appear)."""
    return max(boxes, key=lambda b: b.area, default=None)


def judge_faces(boxes: Sequence[Box], rules: QualityRules) -> FaceCode | None:
    """The refusal for the detected faces (count and size), or None when the largest face may be used."""
    face = largest(boxes)
    if face is None:
        return FaceCode.NO_FACE
    others = [b for b in boxes if b is not face
              and (b.size >= rules.min_face_px or b.size * SECOND_FACE_RATIO >= face.size)]
    if others:
        return FaceCode.MULTIPLE_FACES
    if face.size < rules.min_face_px:
        return FaceCode.TOO_SMALL
    return None


def judge_sharpness(sharpness: float, rules: QualityRules) -> FaceCode | None:
    """The refusal for a blurred face, or None (NaN counts as blurred: never a silent pass)."""
    if not sharpness >= rules.min_sharpness:
        return FaceCode.BLURRED
    return None


def valid_template(values: Sequence[float]) -> bool:
    """A face template is exactly 128 finite numbers (what dlib's encoder returns)."""
    return len(values) == TEMPLATE_SIZE and all(isinstance(v, float) and math.isfinite(v) for v in values)


def tolerance_or_default(tolerance: float | None, default: float = DEFAULT_TOLERANCE) -> float:
    """The tolerance to apply, or ValueError when it is outside [MIN_TOLERANCE, MAX_TOLERANCE]."""
    value = default if tolerance is None else tolerance
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and MIN_TOLERANCE <= value <= MAX_TOLERANCE):
        raise ValueError(f"the face tolerance must be between {MIN_TOLERANCE} and {MAX_TOLERANCE}")
    return float(value)


@dataclass(frozen=True, slots=True)
class FaceMatch:
    """The outcome of a 1:1 verification: what the gate and the audit trail get (never the image).

    ``distance`` is None when no comparison was made (no template, a capture refused for quality);
    ``reason`` is None on a match and a ``FaceCode`` value otherwise.
    """

    distance: float | None
    matched: bool
    reason: str | None
    tolerance: float


def distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean distance between two templates (what face_recognition.face_distance computes)."""
    if len(a) != TEMPLATE_SIZE or len(b) != TEMPLATE_SIZE:
        raise ValueError("face templates have 128 numbers")
    return math.dist(a, b)


def decide(live: Sequence[float], enrolled: Sequence[float], tolerance: float, *, source: str) -> FaceMatch:
    """1:1 decision: a match when the distance is at or under the tolerance. ``source``: where the enrolled
    face came from (``SOURCES``); enrolled from an ID photo (``COPY_SOURCES``), a capture under
    ``COPY_DISTANCE`` is a copy of that photo, ``face_replayed`` (the service answers it as a replay, without
    the distance); enrolled from a live capture, a capture that close may be another frame of the person."""
    d = distance(live, enrolled)
    if source in COPY_SOURCES and d < COPY_DISTANCE:
        return FaceMatch(round(d, 4), False, FaceCode.REPLAYED.value, tolerance)
    matched = d <= tolerance  # NaN compares False: no match
    return FaceMatch(round(d, 4), matched, None if matched else FaceCode.MISMATCH.value, tolerance)


def refused(code: FaceCode, tolerance: float) -> FaceMatch:
    """A verification that made no comparison."""
    return FaceMatch(None, False, code.value, tolerance)


# ---- step-up ------------------------------------------------------------------------------------

STEP_UP_BASES = frozenset({ACR_PASSKEY, ACR_UPSTREAM, ACR_FACE})


def stepped_up(acr: str, amr: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The ``acr`` and ``amr`` of a session after a face match, or ValueError when the session's login
    is not one a face may raise (a face is never a first factor)."""
    if acr not in STEP_UP_BASES:
        raise ValueError("a face match raises only a passkey or national-ID login")
    methods = tuple(dict.fromkeys([*amr, AMR_FACE]))  # keep order, no duplicate
    return ACR_FACE, methods

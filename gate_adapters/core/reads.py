"""Normalised gate read events: what every vendor source turns its payload into.

A truck at a lane produces separate reads (licence plate, container OCR, badge, optional face). Each
vendor module in ``gate_adapters.sources`` parses its own format into these frozen values; the lane
correlator (``gate_adapters.core.correlate``) groups them into one gate verify request whose field
names follow SPEC.md "The gate verify call" (container {number, confidence}, plate {text, country,
confidence}, badge {scheme, number, card_uid}, face, observed_at).

Rules enforced here, once, for every source (a read that breaks one is refused with ``SourceError``):
- ``observed_at`` is timezone-aware and kept in UTC: camera clocks in a port span time zones and a
  naive time would be read differently by the service.
- a read is judged fresh against the time it reached the adapter (``check_fresh``): observed at most
  ``MAX_READ_AGE`` before it and at most ``CLOCK_SLACK`` after it. A read's ``observed_at`` goes into
  the request id (correlate.py rule 5), so an old read sent again (a replay, a camera re-sending its
  buffer) would otherwise make an old request again, and the service answers that with its old decision.
- confidences are floats in 0..1 (vendors that count in percent are scaled by their adapter).
- plate text and container numbers are upper-cased with separators removed, but NOT repaired:
  look-alike and check-digit repair is the service's job (SPEC.md "OCR reads are repaired ...").
- a plate country is ISO 3166-1 alpha-2 (the domain's ``Plate``); alpha-3 codes from cameras are
  mapped by ``country_alpha2`` and an unknown code becomes ``None`` (unknown, never guessed).
- a badge read carries a number, a card UID, or both; card UIDs are ISO/IEC 14443-3 UIDs of 4, 7 or
  10 bytes in upper-case hex.

Standard library only.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import ClassVar


class SourceError(ValueError):
    """A payload we refuse. The message is plain and safe to log (no image bytes, no full payload)."""


class ReadKind(StrEnum):
    PLATE = "plate"
    CONTAINER = "container"
    BADGE = "badge"
    FACE = "face"


_SEPARATORS = re.compile(r"[\s\-./·_]")
_PLATE_TEXT = re.compile(r"^[A-Z0-9]{1,12}$")
_CONTAINER_TEXT = re.compile(r"^[A-Z0-9]{1,15}$")
_LANE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_SCHEME = re.compile(r"^[a-z][a-z0-9_-]{1,31}$")
_BADGE_NUMBER = re.compile(r"^[A-Z0-9-]{1,32}$")
_HEX = re.compile(r"^[0-9A-F]+$")
_UID_LENGTHS = frozenset({8, 14, 20})  # 4, 7 or 10 bytes (ISO/IEC 14443-3)
MAX_FACE_IMAGE_BYTES = 2 * 1024 * 1024
MAX_READ_AGE = timedelta(seconds=30)  # a push arrives within seconds; a buffer re-sent minutes later is refused
CLOCK_SLACK = timedelta(seconds=5)  # camera clocks run a little ahead of ours (NTP keeps them within this)

# ISO 3166-1 alpha-3 -> alpha-2 for the countries whose trucks reach Belgian and Dutch terminals.
# Deliberately short: an unlisted code becomes None (country unknown) instead of a wrong guess.
_ALPHA3_TO_ALPHA2: dict[str, str] = {
    "AUT": "AT", "BEL": "BE", "BGR": "BG", "BLR": "BY", "CHE": "CH", "CZE": "CZ", "DEU": "DE",
    "DNK": "DK", "ESP": "ES", "EST": "EE", "FIN": "FI", "FRA": "FR", "GBR": "GB", "GRC": "GR",
    "HRV": "HR", "HUN": "HU", "IRL": "IE", "ITA": "IT", "LIE": "LI", "LTU": "LT", "LUX": "LU",
    "LVA": "LV", "MDA": "MD", "NLD": "NL", "NOR": "NO", "POL": "PL", "PRT": "PT", "ROU": "RO",
    "SRB": "RS", "SVK": "SK", "SVN": "SI", "SWE": "SE", "TUR": "TR", "UKR": "UA", "MKD": "MK",
    "BIH": "BA", "ALB": "AL", "MNE": "ME", "GEO": "GE", "KAZ": "KZ", "RUS": "RU", "MAR": "MA",
}  # fmt: skip


def require_aware(observed_at: datetime) -> datetime:
    """Return ``observed_at`` in UTC; refuse a naive time (we cannot know which clock it came from)."""
    if not isinstance(observed_at, datetime):
        raise SourceError("observed_at is not a date-time")
    if observed_at.tzinfo is None or observed_at.utcoffset() is None:
        raise SourceError("observed_at has no time zone")
    try:
        return observed_at.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59-05:00 is ISO 8601 and no UTC time: an HTTP source's 500
        raise SourceError("observed_at lies outside the calendar once in UTC") from None


def check_fresh(observed_at: datetime, received_at: datetime, *, max_age: timedelta = MAX_READ_AGE,
                slack: timedelta = CLOCK_SLACK) -> None:
    """Refuse a read observed more than ``max_age`` before it was received, or more than ``slack`` after."""
    age = require_aware(received_at) - require_aware(observed_at)
    if age > max_age:
        raise SourceError(f"observed_at is {age.total_seconds():.0f} s before the read arrived (at most "
                          f"{max_age.total_seconds():.0f} s): an old read sent again")
    if -age > slack:
        raise SourceError(f"observed_at is {-age.total_seconds():.0f} s after the read arrived (at most "
                          f"{slack.total_seconds():.0f} s): the device's clock is ahead")


def check_confidence(value: object, what: str = "confidence") -> float:
    """A float in 0..1. Booleans, NaN and out-of-range numbers are refused, never clamped."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SourceError(f"{what} is not a number")
    number = float(value)
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        raise SourceError(f"{what} is outside 0..1")
    return number


def normalise_plate_text(raw: str) -> str:
    text = _SEPARATORS.sub("", raw).upper()
    if not _PLATE_TEXT.match(text):
        raise SourceError("plate text is empty or not 1 to 12 letters and digits")
    return text


def normalise_container_number(raw: str) -> str:
    text = _SEPARATORS.sub("", raw).upper()
    if not _CONTAINER_TEXT.match(text):
        raise SourceError("container number is empty or not 1 to 15 letters and digits")
    return text


def country_alpha2(raw: str | None) -> str | None:
    """ISO 3166-1 alpha-2 from an alpha-2 or alpha-3 code; ``None`` when absent or not known."""
    if raw is None:
        return None
    code = raw.strip().upper()
    if len(code) == 3:
        return _ALPHA3_TO_ALPHA2.get(code)
    if len(code) == 2 and code.isascii() and code.isalpha():
        return code
    return None


def normalise_card_uid(raw: str) -> str:
    """Upper-case hex without separators (readers print ``04:a2:2b:...``)."""
    text = re.sub(r"[\s:\-]", "", raw).upper()
    if not _HEX.match(text) or len(text) not in _UID_LENGTHS:
        raise SourceError("card UID is not 4, 7 or 10 bytes of hex")
    return text


def _check_common(lane: str, source: str) -> None:
    if not isinstance(lane, str) or not _LANE.match(lane):
        raise SourceError("lane is missing or not a short identifier")
    if not isinstance(source, str) or not source:
        raise SourceError("source is missing")


@dataclass(frozen=True, slots=True)
class PlateRead:
    lane: str
    source: str
    camera: str
    text: str
    country: str | None
    confidence: float
    observed_at: datetime
    kind: ClassVar[ReadKind] = ReadKind.PLATE

    def __post_init__(self) -> None:
        _check_common(self.lane, self.source)
        object.__setattr__(self, "text", normalise_plate_text(self.text))
        object.__setattr__(self, "country", country_alpha2(self.country))
        object.__setattr__(self, "confidence", check_confidence(self.confidence))
        object.__setattr__(self, "observed_at", require_aware(self.observed_at))

    @property
    def value(self) -> str:
        return f"{self.text}|{self.country or ''}"


@dataclass(frozen=True, slots=True)
class ContainerRead:
    lane: str
    source: str
    camera: str
    number: str
    confidence: float
    per_char: tuple[float, ...] | None
    observed_at: datetime
    kind: ClassVar[ReadKind] = ReadKind.CONTAINER

    def __post_init__(self) -> None:
        _check_common(self.lane, self.source)
        object.__setattr__(self, "number", normalise_container_number(self.number))
        object.__setattr__(self, "confidence", check_confidence(self.confidence))
        if self.per_char is not None:
            chars = tuple(check_confidence(c, "character confidence") for c in self.per_char)
            if len(chars) != len(self.number):
                raise SourceError("per-character confidences do not match the container number's length")
            object.__setattr__(self, "per_char", chars)
        object.__setattr__(self, "observed_at", require_aware(self.observed_at))

    @property
    def value(self) -> str:
        return self.number


@dataclass(frozen=True, slots=True)
class BadgeRead:
    lane: str
    source: str
    reader: str
    scheme: str | None
    number: str | None
    card_uid: str | None
    observed_at: datetime
    kind: ClassVar[ReadKind] = ReadKind.BADGE

    def __post_init__(self) -> None:
        _check_common(self.lane, self.source)
        if self.scheme is not None:
            scheme = self.scheme.strip().lower()
            if not _SCHEME.match(scheme):
                raise SourceError("badge scheme is not a short lower-case name")
            object.__setattr__(self, "scheme", scheme)
        if self.number is not None:
            number = re.sub(r"\s", "", self.number).upper()
            if not _BADGE_NUMBER.match(number):
                raise SourceError("badge number is empty or malformed")
            object.__setattr__(self, "number", number)
        if self.card_uid is not None:
            object.__setattr__(self, "card_uid", normalise_card_uid(self.card_uid))
        if self.number is None and self.card_uid is None:
            raise SourceError("a badge read needs a number or a card UID")
        object.__setattr__(self, "observed_at", require_aware(self.observed_at))

    @property
    def confidence(self) -> float:
        """A badge read is exact: a reader either read the card or it did not."""
        return 1.0

    @property
    def value(self) -> str:
        return f"{self.scheme or ''}|{self.number or ''}|{self.card_uid or ''}"


@dataclass(frozen=True, slots=True)
class FaceMatch:
    """The result of a trusted local matcher (SPEC.md: face is an image or a match result)."""

    matched: bool
    score: float

    def __post_init__(self) -> None:
        if not isinstance(self.matched, bool):
            raise SourceError("face match 'matched' is not true or false")
        object.__setattr__(self, "score", check_confidence(self.score, "face match score"))


@dataclass(frozen=True, slots=True)
class FaceRead:
    lane: str
    source: str
    camera: str
    image: bytes | None
    match: FaceMatch | None
    observed_at: datetime
    kind: ClassVar[ReadKind] = ReadKind.FACE

    def __post_init__(self) -> None:
        _check_common(self.lane, self.source)
        if (self.image is None) == (self.match is None):
            raise SourceError("a face read carries either an image or a match result")
        if self.image is not None and not (0 < len(self.image) <= MAX_FACE_IMAGE_BYTES):
            raise SourceError("face image is empty or too large")
        object.__setattr__(self, "observed_at", require_aware(self.observed_at))

    @property
    def confidence(self) -> float:
        """A match result ranks by its score; an image is unscored (0) until the service matches it."""
        return self.match.score if self.match is not None else 0.0

    @property
    def value(self) -> str:
        if self.match is not None:
            return f"match|{self.match.matched}|{self.match.score!r}"
        return "image|" + hashlib.sha256(self.image or b"").hexdigest()


Read = PlateRead | ContainerRead | BadgeRead | FaceRead

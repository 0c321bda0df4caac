"""Repairing OCR reads before the gate judges them (SPEC.md "The gate verify call", issue 5).

Gate cameras misread look-alike characters: ``0/O/D/Q``, ``1/I``, ``2/Z``, ``5/S``, ``8/B``, ``6/G``
(any member of a set may be read as any other member). This module says what a read most plausibly
is, and how sure we are; it never says whether the truck may pass (that is ``gate.decide``).

Two rules carry the safety of the whole gate, and everything below serves them:

* A read we cannot trust never becomes a silent allow, nor a flat deny: it becomes a doubt, which the
  decision turns into ``review`` (a person looks).
* A repair is never silent: every repaired character is reported (position, read, understood), so
  the decision and the audit trail show it.

Container numbers are repaired with the ISO 6346 check digit as the arbiter; plates have no check
digit, so a plate is only ever compared with the plate the transport operator nominated.

Standard library only (import-linter contract "release_service domain is pure").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from .iso6346 import ContainerNumber, normalise

LOOKALIKE_SETS: tuple[frozenset[str], ...] = (
    frozenset("0ODQ"),
    frozenset("1I"),
    frozenset("2Z"),
    frozenset("5S"),
    frozenset("8B"),
    frozenset("6G"),
)

# Each character to the other members of its set ("O" -> {"0", "D", "Q"}).
_ALTERNATIVES: dict[str, frozenset[str]] = {
    ch: group - {ch} for group in LOOKALIKE_SETS for ch in group
}

CONTAINER_LENGTH = 11  # ISO 6346: owner code (3), category (1), serial (6), check digit (1)


def lookalikes(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` are different characters of the same look-alike set."""
    return b in _ALTERNATIVES.get(a, frozenset())


# Each look-alike character to one representative of its set, the lowest ("O", "D", "Q" -> "0").
_REPRESENTATIVE: dict[int, str] = {ord(ch): min(group) for group in LOOKALIKE_SETS for ch in group}


def plate_skeleton(text: str) -> str:
    """``text`` (a plate's normalised text) with each look-alike character replaced by its set's
    representative: two texts have the same skeleton exactly when they are equal or differ only in
    look-alike characters, so when a gate camera could read one for the other (``compare_plate``). The
    truck register keeps it beside each plate (quaygate.schema ``trucks.plate_skeleton``) so a nomination
    finds every registered truck the gate could take for its plate in one indexed look-up (review 175,
    finding 1)."""
    return text.translate(_REPRESENTATIVE)


class ReadPolicy(Protocol):
    """The thresholds the repairs need; ``gate.TerminalPolicy`` satisfies it (kept as a Protocol so
    this module does not import the decision that imports it)."""

    @property
    def container_min_confidence(self) -> float: ...

    @property
    def plate_min_confidence(self) -> float: ...

    @property
    def plate_max_lookalikes(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Substitution:
    """One character understood differently from how it was read (``position`` counts from 0)."""

    position: int
    read: str
    understood: str


# ---- container numbers ---------------------------------------------------------------------------


class ContainerOutcome(StrEnum):
    EXACT = "exact"  # valid ISO 6346 as read
    REPAIRED = "repaired"  # one look-alike substitution gives the one known number
    UNREADABLE = "unreadable"  # nothing we can trust (see ``ContainerReading.why``)
    AMBIGUOUS = "ambiguous"  # several valid numbers one look-alike apart, and nothing tells which


class Unreadable(StrEnum):
    """Why a container read was not understood: for the audit detail, never shown to the driver."""

    MALFORMED = "malformed"  # empty, wrong length, or characters no container number has
    NO_CANDIDATE = "no_candidate"  # no single look-alike substitution gives a valid number
    NO_KNOWN_CANDIDATE = "no_known_candidate"  # valid repairs exist, none has a release right
    LOW_CONFIDENCE = "low_confidence"  # a valid read, or the one known repair, but the camera was not sure enough


@dataclass(frozen=True, slots=True)
class ContainerReading:
    """What a container read was understood to be.

    ``number`` is set only for EXACT and REPAIRED; ``substitution`` only for REPAIRED; ``candidates``
    lists every valid single-substitution repair (for the audit and for review by a person), or the
    valid read itself when it was read too unsurely to be taken as read.
    """

    outcome: ContainerOutcome
    read: str
    number: str | None = None
    substitution: Substitution | None = None
    candidates: tuple[str, ...] = ()
    why: Unreadable | None = None

    @property
    def understood(self) -> bool:
        return self.outcome in (ContainerOutcome.EXACT, ContainerOutcome.REPAIRED)


def container_candidates(raw: str) -> tuple[str, ...]:
    """Every container number the gate may understand ``raw`` as, for the caller to look up.

    The read itself when it is valid ISO 6346; otherwise every valid number one look-alike substitution
    away (sorted). The service fetches the rights of all of them, so that ``gate.decide`` can tell a
    unique repair from an ambiguous one.
    """
    found = _candidates_seen.get(raw)
    if found is None:
        text = normalise(raw)
        found = (text,) if ContainerNumber.is_valid(text) else _repairs(text)
        if len(_candidates_seen) >= _CANDIDATES_MAX:
            _candidates_seen.clear()  # a pure function's memo: nothing is lost but time
        _candidates_seen[raw] = found
    return found


# Every gate read asks for its candidates at least twice (the facts to fetch, then the decision): the
# answers to recent reads, kept. Bounded: a flood of distinct reads only starts it again.
_CANDIDATES_MAX = 8192
_candidates_seen: dict[str, tuple[str, ...]] = {}


def _repairs(text: str) -> tuple[str, ...]:
    """Valid ISO 6346 numbers exactly one look-alike substitution away from ``text``.

    This covers a letter read in a digit slot (``MSCU12345B7``), a digit read in the owner code, and a
    letter read as another letter of its set, which shows up as a wrong check digit.
    """
    if len(text) != CONTAINER_LENGTH or not text.isalnum() or not text.isascii():
        return ()
    found = {
        text[:i] + alt + text[i + 1:]
        for i, ch in enumerate(text)
        for alt in _ALTERNATIVES.get(ch, frozenset())
    }
    return tuple(sorted(c for c in found if ContainerNumber.is_valid(c)))


def _as_predicate(known: Callable[[str], bool] | frozenset[str]) -> Callable[[str], bool]:
    if isinstance(known, frozenset):
        return known.__contains__
    return known


def understand_container(
    raw: str,
    confidence: float,
    *,
    known: Callable[[str], bool] | frozenset[str],
    policy: ReadPolicy,
) -> ContainerReading:
    """Understand a container OCR read, repairing at most one look-alike character.

    * A read that is valid ISO 6346 (shape and check digit) and sure enough (at least
      ``policy.container_min_confidence``) is taken as read, whatever ``known`` says: whether a right
      exists is the decision's question. An unsure valid read is never taken as read: the check digit
      does not catch every single-character misread (check digit 0 comes from remainder 0 or 10, so
      MSCU1234530 and MSCU1234550 are both valid, one serial digit apart; of a 3 000-number sample,
      every number with check digit 0, about 19 %, had another valid number one serial digit away),
      and O, D and Q in an owner code can give the same digit (OAAU0000090 and DAAU0000090). So under
      the threshold the read is AMBIGUOUS when another valid number is one look-alike away, else
      UNREADABLE (``LOW_CONFIDENCE``): both are a doubt, ``review``, even when the read has a right
      (review 153 finding 3).
    * Otherwise the candidates are the valid numbers one look-alike substitution away. The read is
      REPAIRED only when there is exactly one (SPEC.md, issue 5), it is ``known`` (has a release right)
      and the camera's confidence reaches ``policy.container_min_confidence``. Several candidates:
      AMBIGUOUS, even when only one has a right (the box on the truck may be the other one, which
      has none); none known, or too low a confidence: UNREADABLE. Both become ``review`` at the gate.
    * A read that needs more than one substitution, or has the wrong length, is UNREADABLE.
    """
    text = normalise(raw or "")
    if ContainerNumber.is_valid(text):
        if confidence >= policy.container_min_confidence:
            return ContainerReading(ContainerOutcome.EXACT, text, number=text)
        if twins := _repairs(text):
            return ContainerReading(ContainerOutcome.AMBIGUOUS, text, candidates=tuple(sorted((text, *twins))))
        return ContainerReading(ContainerOutcome.UNREADABLE, text, candidates=(text,), why=Unreadable.LOW_CONFIDENCE)
    if len(text) != CONTAINER_LENGTH or not text.isalnum() or not text.isascii():
        return ContainerReading(ContainerOutcome.UNREADABLE, text, why=Unreadable.MALFORMED)
    candidates = _repairs(text)
    if not candidates:
        return ContainerReading(ContainerOutcome.UNREADABLE, text, why=Unreadable.NO_CANDIDATE)
    is_known = _as_predicate(known)
    matching = [c for c in candidates if is_known(c)]
    if not matching:
        return ContainerReading(
            ContainerOutcome.UNREADABLE, text, candidates=candidates, why=Unreadable.NO_KNOWN_CANDIDATE
        )
    if len(candidates) > 1:
        return ContainerReading(ContainerOutcome.AMBIGUOUS, text, candidates=candidates)
    if confidence < policy.container_min_confidence:
        return ContainerReading(
            ContainerOutcome.UNREADABLE, text, candidates=candidates, why=Unreadable.LOW_CONFIDENCE
        )
    number = matching[0]
    position = next(i for i, (a, b) in enumerate(zip(text, number, strict=True)) if a != b)
    return ContainerReading(
        ContainerOutcome.REPAIRED,
        text,
        number=number,
        substitution=Substitution(position, text[position], number[position]),
        candidates=candidates,
    )


# ---- licence plates ------------------------------------------------------------------------------

_PLATE_STRIP = re.compile(r"[\s\-.·_]")  # the same separators as plates.Plate.parse
_ANY_PLATE = re.compile(r"[A-Z0-9]{2,12}")

# Dutch "sidecodes" 1-14 (RDW), L = letter, D = digit, separators removed.
_NL_SIDECODES = (
    "LLDDDD", "DDDDLL", "DDLLDD", "LLDDLL", "LLLLDD", "DDLLLL", "DDLLLD",
    "DLLLDD", "LLDDDL", "LDDDLL", "LLLDDL", "LDDLLL", "DLLDDD", "DDDLLD",
)


def _sidecode(pattern: str) -> str:
    return "".join("[A-Z]" if c == "L" else "[0-9]" for c in pattern)


# Plausible shapes, separators removed. Only for telling a garbled read from a plate: the gate compares
# with the nominated plate, never with these. Personalised and diplomatic plates are left out.
PLATE_FORMATS: dict[str, re.Pattern[str]] = {
    # Belgium: 1-ABC-123 since 2010, 123-ABC in 2008-2010, ABC-123 before. Wider is safer here: a
    # read that may be a plate is never taken as a misread.
    "BE": re.compile(r"[1-9][A-Z]{3}[0-9]{3}|[0-9]{3}[A-Z]{3}|[A-Z]{3}[0-9]{3}"),
    "NL": re.compile("|".join(_sidecode(p) for p in _NL_SIDECODES)),
    # Germany: district (1-3 letters), 1-2 letters, 1-4 digits (no leading 0), optional E or H;
    # at most 8 characters before the suffix.
    "DE": re.compile(r"(?=[A-Z0-9]{3,8}[EH]?$)[A-Z]{1,3}[A-Z]{1,2}[1-9][0-9]{0,3}[EH]?"),
    # France: SIV AA-123-AA since 2009; FNI 123 ABC 75 before (department 01-95, 2A/2B, 971-976).
    "FR": re.compile(r"[A-Z]{2}[0-9]{3}[A-Z]{2}|[0-9]{1,4}[A-Z]{1,3}(?:[0-9]{2}|2A|2B|97[1-6])"),
    # Poland: 2-letter district and 5 characters, or 3-letter district and 4.
    "PL": re.compile(r"[A-Z]{2}[0-9][0-9A-Z]{4}|[A-Z]{3}[0-9A-Z]{4}"),
    # Luxembourg: AB 1234, or the older 4 to 6 digits.
    "LU": re.compile(r"[A-Z]{2}[0-9]{4}|[0-9]{4,6}"),
}


@dataclass(frozen=True, slots=True)
class PlateText:
    """A plate as the gate compares it: separators gone, upper case, and whether it looks like a plate
    of its country (any 2 to 12 letters and digits for a country we do not know, or none given)."""

    text: str
    country: str | None
    plausible: bool


def _country(country: str | None) -> str | None:
    c = (country or "").strip().upper()
    return c or None


def normalise_plate(text: str, country: str | None) -> PlateText:
    """Strip separators (space, ``-``, ``.``, ``·``, ``_``) and upper-case, as ``plates.Plate.parse``."""
    norm = _PLATE_STRIP.sub("", text or "").upper()
    ctry = _country(country)
    shape = PLATE_FORMATS.get(ctry or "", _ANY_PLATE)
    return PlateText(norm, ctry, shape.fullmatch(norm) is not None)


class PlateOutcome(StrEnum):
    MATCH = "match"
    LOOKALIKE_MATCH = "lookalike_match"  # differs only in look-alike characters, few enough
    LOW_CONFIDENCE = "low_confidence"  # we cannot tell a misread from another truck: review
    MISMATCH = "mismatch"  # a confident read of another plate


@dataclass(frozen=True, slots=True)
class PlateMatch:
    """The read plate against the nominated one; ``differences`` are the positions that differ
    (positions past the shorter text count as differing), ``repairs`` the look-alikes accepted."""

    outcome: PlateOutcome
    read: PlateText
    differences: tuple[int, ...] = ()
    repairs: tuple[Substitution, ...] = ()


def _differences(read: str, nominated: str) -> tuple[int, ...]:
    return tuple(
        i for i in range(max(len(read), len(nominated)))
        if i >= len(read) or i >= len(nominated) or read[i] != nominated[i]
    )


def compare_plate(
    read_text: str,
    read_country: str | None,
    read_confidence: float,
    nominated_text: str,
    nominated_country: str,
    policy: ReadPolicy,
) -> PlateMatch:
    """Compare an ANPR read with the nominated plate.

    * A read without a country (many cameras give none) compares the text only; a read with another
      country is a MISMATCH (the country band is read separately and is hard to misread).
    * An empty read is LOW_CONFIDENCE: a camera that saw nothing says nothing about the truck.
    * Same text: MATCH, or LOW_CONFIDENCE under ``policy.plate_min_confidence``.
    * Differing only in look-alike characters: LOOKALIKE_MATCH when the read is confident enough, at
      most ``policy.plate_max_lookalikes`` positions differ, and the read is no plate of its country
      (``PLATE_FORMATS``): 1-AB0-123 is a misread of 1-ABO-123, but 1-ABD-123 is a Belgian plate, maybe
      another truck's. A read without a country may be any country's plate: it must be no plate of the
      nominated plate's country nor of any country in ``PLATE_FORMATS`` (ZABC123, nominated as Belgian
      2ABC123, is a Polish plate, maybe another truck's: review 153 finding 4). Otherwise LOW_CONFIDENCE,
      never a match; so a look-alike read of a country without a known format is always a doubt.
    * Any other difference (or another length): MISMATCH when confident, else LOW_CONFIDENCE.
    """
    read = normalise_plate(read_text, read_country)
    nominated = normalise_plate(nominated_text, nominated_country)
    confident = read_confidence >= policy.plate_min_confidence
    diffs = _differences(read.text, nominated.text)
    if read.country is not None and read.country != nominated.country:
        return PlateMatch(PlateOutcome.MISMATCH, read, diffs)
    if not read.text:
        return PlateMatch(PlateOutcome.LOW_CONFIDENCE, read, diffs)
    if not diffs:
        return PlateMatch(PlateOutcome.MATCH if confident else PlateOutcome.LOW_CONFIDENCE, read)
    only_lookalikes = len(read.text) == len(nominated.text) and all(
        lookalikes(read.text[i], nominated.text[i]) for i in diffs
    )
    if not only_lookalikes:
        return PlateMatch(PlateOutcome.MISMATCH if confident else PlateOutcome.LOW_CONFIDENCE, read, diffs)
    # A read that is itself a plate of its country may be another truck's: only a read no plate of that
    # country has (a digit in a letter's place, say) is a misread. Read without a country, it may be a
    # plate of the nominated country or of any other we know the shape of.
    garbled = not normalise_plate(read.text, read.country or nominated.country).plausible and (
        read.country is not None or not any(shape.fullmatch(read.text) for shape in PLATE_FORMATS.values()))
    if confident and garbled and len(diffs) <= policy.plate_max_lookalikes:
        repairs = tuple(Substitution(i, read.text[i], nominated.text[i]) for i in diffs)
        return PlateMatch(PlateOutcome.LOOKALIKE_MATCH, read, diffs, repairs)
    return PlateMatch(PlateOutcome.LOW_CONFIDENCE, read, diffs)

"""Port badges (Alfapass, Port Pass): numbers, card UIDs, validity, status and masking.

Standard library only (import-linter contract "identity domain is pure"). The caller persists.

Badge numbers, one format per scheme. These are plausible formats of our own: the real formats must
be confirmed with the scheme operators (Alfapass: Port of Antwerp-Bruges; Port Pass: North Sea Port)
before go-live, and only ``validate_number`` changes when they are.

| scheme     | format         | example      | check                                                   |
|------------|----------------|--------------|---------------------------------------------------------|
| `alfapass` | `AP-` 6 digits | `AP-100230`  | last digit: Luhn (ISO/IEC 7812-1 annex B) of the first 5 |
| `portpass` | `PP` 8 digits  | `PP12345676` | last two: ISO 7064 MOD 97-10 of the first 6 (as IBAN)   |

Input is read leniently (case, spaces) and kept in the canonical form above.

Card UIDs are the chip's ISO/IEC 14443-3 UID: 4, 7 or 10 bytes, kept as upper-case hex (8, 14 or 20
characters). Validity: from ``valid_from`` to ``valid_until``, at most five calendar years (issue 4),
starting at most a year ahead and not over when issued.

Status machine (every change names who and why; one guarded function per change)::

                 lost/missing             found
      issue ──► active ───────────────► inactive ─────┐
                 ▲  │  ◄──────────────────────────────┘
       renew     │  │
      (expired   │  ├── lost or stolen ──► blocked   (final: never active again)
       only)     │  ├── withdrawn ───────► revoked   (final)
                 │  └── validity over ───► expired
                 └──────────────────────── expired ──► blocked | revoked

    active   ─► inactive | blocked | revoked | expired
    inactive ─► active | blocked | revoked | expired
    expired  ─► blocked | revoked; back to active only by renewing (new validity)
    blocked, revoked: final. A new badge (new number) is issued instead.

Masking: badge numbers are shown masked (``AP-****30``) to every party except the badge office and
the badge's holder (issue 4, "Badge numbers are shown masked ...").
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Scheme(StrEnum):
    ALFAPASS = "alfapass"
    PORTPASS = "portpass"


class BadgeStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"  # temporarily missing, suspended; may come back
    BLOCKED = "blocked"  # lost or stolen: for good
    REVOKED = "revoked"  # withdrawn by the badge office: for good
    EXPIRED = "expired"  # validity over; renewing brings it back


ALLOWED: dict[BadgeStatus, frozenset[BadgeStatus]] = {
    BadgeStatus.ACTIVE: frozenset({BadgeStatus.INACTIVE, BadgeStatus.BLOCKED, BadgeStatus.REVOKED,
                                   BadgeStatus.EXPIRED}),
    BadgeStatus.INACTIVE: frozenset({BadgeStatus.ACTIVE, BadgeStatus.BLOCKED, BadgeStatus.REVOKED,
                                     BadgeStatus.EXPIRED}),
    BadgeStatus.EXPIRED: frozenset({BadgeStatus.BLOCKED, BadgeStatus.REVOKED}),
    BadgeStatus.BLOCKED: frozenset(),
    BadgeStatus.REVOKED: frozenset(),
}
FINAL = frozenset({BadgeStatus.BLOCKED, BadgeStatus.REVOKED})
RENEWABLE = frozenset({BadgeStatus.ACTIVE, BadgeStatus.INACTIVE, BadgeStatus.EXPIRED})

MAX_VALIDITY_YEARS = 5
MAX_LEAD_DAYS = 365  # a badge is registered at most a year before it becomes valid (a new starter's)
MAX_REASON = 500
MAX_ACTOR = 100
CARD_UID_LENGTHS = frozenset({8, 14, 20})  # ISO/IEC 14443-3: 4, 7 or 10 byte UIDs

# Reason recorded when a new port ban deactivates a person's badges (issue 4).
PORT_BAN_REASON = "port_ban"


class BadgeRefused(ValueError):
    """A badge rule is broken; ``code`` is stable (the edges map it), the message is for operators."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# ---- numbers and card UIDs -----------------------------------------------------------------------

_ALFAPASS = re.compile(r"AP-?([0-9]{6})")  # ASCII digits: "AP-٣…" is no second spelling
_PORTPASS = re.compile(r"PP-?([0-9]{8})")


def scheme_of(value: str) -> Scheme:
    try:
        return Scheme(value.strip().lower())
    except ValueError:
        raise BadgeRefused("invalid_scheme", f"scheme is one of {', '.join(s.value for s in Scheme)}") from None


def luhn_digit(digits: str) -> int:
    """ISO/IEC 7812-1 annex B: the digit that makes ``digits`` + it pass the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return (10 - total % 10) % 10


def mod97_check(digits: str) -> int:
    """ISO 7064 MOD 97-10: the two digits that make ``digits`` + them leave 1 modulo 97."""
    return 98 - (int(digits) * 100) % 97


def validate_number(scheme: Scheme, raw: str) -> str:
    """The badge number in canonical form, or BadgeRefused("invalid_badge_number")."""
    text = re.sub(r"\s+", "", raw or "").upper()
    if scheme is Scheme.ALFAPASS:
        m = _ALFAPASS.fullmatch(text)
        if m is None:
            raise BadgeRefused("invalid_badge_number", "an Alfapass number is AP- and six digits")
        body = m.group(1)
        if luhn_digit(body[:5]) != int(body[5]):
            raise BadgeRefused("invalid_badge_number", "the Alfapass check digit is wrong")
        return f"AP-{body}"
    m = _PORTPASS.fullmatch(text)
    if m is None:
        raise BadgeRefused("invalid_badge_number", "a Port Pass number is PP and eight digits")
    body = m.group(1)
    if mod97_check(body[:6]) != int(body[6:]):
        raise BadgeRefused("invalid_badge_number", "the Port Pass check digits are wrong")
    return f"PP{body}"


def with_check(scheme: Scheme, serial: int) -> str:
    """A valid number for a serial (five digits for Alfapass, six for Port Pass): demo data, tests."""
    if scheme is Scheme.ALFAPASS:
        body = f"{serial:05d}"
        return f"AP-{body}{luhn_digit(body)}"
    body = f"{serial:06d}"
    return f"PP{body}{mod97_check(body):02d}"


def validate_card_uid(raw: str) -> str:
    text = re.sub(r"[\s:]+", "", raw or "").upper()
    if len(text) not in CARD_UID_LENGTHS or re.fullmatch(r"[0-9A-F]+", text) is None:
        raise BadgeRefused("invalid_card_uid", "a card UID is 4, 7 or 10 bytes in hex (8, 14 or 20 characters)")
    return text


# ---- validity ------------------------------------------------------------------------------------


def add_years(at: datetime, years: int) -> datetime:
    """The same day and time ``years`` later (29 February becomes 28 February)."""
    try:
        return at.replace(year=at.year + years)
    except ValueError:
        return at.replace(year=at.year + years, day=28)


def check_validity(valid_from: datetime, valid_until: datetime, *, now: datetime) -> None:
    """A badge's validity as issued or renewed at ``now``: after its start, at most five years long
    (issue 4), not over already, and starting at most MAX_LEAD_DAYS ahead. So a badge's validity lies
    within six years of now: a badge valid from 8999 (taken before) is none, and one starting in 9996
    made ``add_years`` leave the calendar (a 500)."""
    if valid_from.tzinfo is None or valid_until.tzinfo is None:
        raise BadgeRefused("invalid_validity", "validity times carry their time zone")
    if valid_until <= valid_from:
        raise BadgeRefused("invalid_validity", "valid_until must come after valid_from")
    if valid_from - now > timedelta(days=MAX_LEAD_DAYS):  # before add_years, which it keeps in the calendar
        raise BadgeRefused("invalid_validity", f"valid_from lies at most {MAX_LEAD_DAYS} days ahead")
    if valid_until > add_years(valid_from, MAX_VALIDITY_YEARS):  # issue 4: at most 5 years
        raise BadgeRefused("validity_too_long", f"a badge is valid for at most {MAX_VALIDITY_YEARS} years")
    if valid_until <= now:
        raise BadgeRefused("invalid_validity", "the badge would be expired already")


# ---- status changes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One status change, as written to the badge's history and the audit trail."""

    badge_id: uuid.UUID
    from_status: BadgeStatus | None
    to_status: BadgeStatus
    actor: str
    reason: str
    at: datetime


def _who_and_why(actor: str, reason: str) -> tuple[str, str]:
    actor = (actor or "").strip()
    if not actor or len(actor) > MAX_ACTOR:
        raise BadgeRefused("actor_required", "every status change names who made it")
    return actor, reason_given(reason)


# Control characters (Unicode Cc) and lone surrogates (Cs): the class of
# release_service.domain.storable.UNPRINTABLE, which this pure module may not import.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def reason_given(reason: str) -> str:
    """A badge change's reason, stripped: required, at most MAX_REASON characters, one line of printable text
    (a NUL, which PostgreSQL refuses, answered 500 on a status change; SQLite stored it)."""
    reason = (reason or "").strip()
    if not reason:
        raise BadgeRefused("reason_required", "every status change says why")
    if len(reason) > MAX_REASON:
        raise BadgeRefused("reason_too_long", f"a reason has at most {MAX_REASON} characters")
    if _UNPRINTABLE.search(reason):
        raise BadgeRefused("reason_unprintable", "a reason is one line of printable text")
    return reason


def change_status(
    badge_id: uuid.UUID,
    current: BadgeStatus,
    target: BadgeStatus,
    *,
    valid_until: datetime,
    actor: str,
    reason: str,
    now: datetime,
) -> StatusChange:
    """Guard one status change (the diagram above); the caller writes it."""
    actor, reason = _who_and_why(actor, reason)
    if current in FINAL:
        raise BadgeRefused("badge_final", f"a {current} badge never changes again: issue a new one")
    if target is current:
        raise BadgeRefused("status_unchanged", f"the badge is already {current}")
    if current is BadgeStatus.EXPIRED and target is BadgeStatus.ACTIVE:
        raise BadgeRefused("renew_required", "an expired badge comes back only by renewing it")
    if target not in ALLOWED[current]:
        raise BadgeRefused("transition_refused", f"a badge cannot go from {current} to {target}")
    if target is BadgeStatus.ACTIVE and now >= valid_until:
        raise BadgeRefused("badge_expired", "the badge's validity is over: renew it")
    return StatusChange(badge_id, current, target, actor, reason, now)


def renew(
    badge_id: uuid.UUID,
    current: BadgeStatus,
    *,
    valid_from: datetime,
    valid_until: datetime,
    actor: str,
    reason: str,
    now: datetime,
) -> tuple[datetime, datetime, StatusChange | None]:
    """A new validity up to ``valid_until``, for the badge whose validity starts at ``valid_from``.

    A renewal extends: it never makes a badge usable sooner than the badge office decided, so a start
    still ahead (a new starter's badge) is kept; a start already past moves to ``now``, the start of
    the renewed period, from which the five years of issue 4 count. An expired badge becomes active
    again; a blocked or revoked one is never renewed. Returns (valid_from, valid_until, status change)."""
    actor, reason = _who_and_why(actor, reason)
    if current not in RENEWABLE:
        raise BadgeRefused("badge_final", f"a {current} badge is never renewed: issue a new one")
    start = max(valid_from, now)
    check_validity(start, valid_until, now=now)
    change = None
    if current is BadgeStatus.EXPIRED:
        change = StatusChange(badge_id, current, BadgeStatus.ACTIVE, actor, reason, now)
    return start, valid_until, change


def issued(badge_id: uuid.UUID, *, actor: str, reason: str, now: datetime) -> StatusChange:
    """The first entry of a badge's history: issued active."""
    actor, reason = _who_and_why(actor, reason)
    return StatusChange(badge_id, None, BadgeStatus.ACTIVE, actor, reason, now)


# ---- masking -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who looks at a badge: the badge office, or a person (the holder sees his own in full)."""

    badge_office: bool = False
    person_id: uuid.UUID | None = None


def mask_number(number: str) -> str:
    """Keep the scheme prefix and the last two characters: ``AP-100230`` -> ``AP-****30``."""
    prefix = number[:3] if number.startswith("AP-") else number[:2]
    rest = number[len(prefix):]
    if len(rest) <= 2:
        return prefix + "*" * len(rest)
    return prefix + "*" * (len(rest) - 2) + rest[-2:]


def mask_card_uid(card_uid: str) -> str:
    """Keep the last four hex characters: a card can be told apart, not cloned from the listing."""
    return "*" * (len(card_uid) - 4) + card_uid[-4:] if len(card_uid) > 4 else "*" * len(card_uid)


def sees_in_full(*, holder: uuid.UUID, viewer: Viewer) -> bool:
    return viewer.badge_office or (viewer.person_id is not None and viewer.person_id == holder)


def shown_number(number: str, *, holder: uuid.UUID, viewer: Viewer) -> str:
    return number if sees_in_full(holder=holder, viewer=viewer) else mask_number(number)

"""Port bans: the national register's feed, judged and screened (pure; standard library only).

The feed (docs/port-ban-feed.md) is JSON in the shape of a national register (AIGIS), signed by the
register's key; the signature is checked at the edge (identity/bans/feed.py) before this module sees
the parsed payload. Two kinds::

    {"register": "BE-AIGIS", "kind": "snapshot", "sequence": 41, "issued_at": "2026-11-21T06:00:00Z",
     "bans": [{"national_number": "85073100130", "scope": "all", "from": "2026-01-01T00:00:00Z",
               "until": "2031-01-01T00:00:00Z", "reference": "AIGIS-2026-000123"}, ...]}

    {"register": "BE-AIGIS", "kind": "changes", "sequence": 42, "issued_at": "...",
     "added": [<ban>, ...], "lifted": ["AIGIS-2026-000123", ...]}

A ban: the subject's national register number (11 digits, mod-97 check), ``scope`` ("all" or a list
of port codes, UN/LOCODE such as "BEANR"), ``from`` < ``until`` (at most 20 years apart), the
register's ``reference`` (unique within the register).

Sequence rules, for a feed against the state in force (``sequence_verdict``):

    snapshot:  no state, or sequence > in force          -> apply (replaces the whole list)
    changes:   sequence == in force + 1                  -> apply
               sequence >  in force + 1, or no state     -> refused: out_of_order
    both:      sequence == in force, same digest          -> already loaded (a no-op, said so)
               sequence <= in force otherwise             -> refused: replayed
    issued_at older than the maximum feed age            -> refused: stale

Screening (``screen``) says ``clear``, ``banned`` or ``unavailable`` (no list loaded, or the list in
force older than its maximum age), with the list's age, for one person at one port or, for a badge
issue or at a terminal whose code names no port (``port_of_terminal``), at any port.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

MAX_BAN_YEARS = 20  # the issue: a ban lasts at most 20 years
MAX_SEQUENCE = 2**63 - 1  # stored as a BIGINT (ban_feed_state, port_bans)
# The times a feed may carry (as the release engine's storable.EARLIEST/LATEST, which identity's pure
# domain may not import): anything the rules add to them stays inside Python's and PostgreSQL's calendars.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
ALL_PORTS = "all"
CLOCK_SKEW = timedelta(minutes=5)  # a feed issued this far in our future is still taken
_PORT_CODE = re.compile(r"^[A-Z]{2}[A-Z2-9]{3}$")  # UN/LOCODE: country + 3 (letters, digits 2-9)
# A terminal's code: its port's UN/LOCODE, "-", its own code. Reading the port needs only the front
# (port_of_terminal); a new code must have the whole shape (is_terminal_code), 32 characters at most.
_TERMINAL_PORT = re.compile(r"([A-Z]{2}[A-Z2-9]{3})-.", re.ASCII)
_TERMINAL_CODE = re.compile(r"[A-Z]{2}[A-Z2-9]{3}-[A-Z0-9][A-Z0-9-]{0,25}", re.ASCII)
TERMINAL_CODE_FORM = ("its port's UN/LOCODE, a hyphen and the terminal's own code, e.g. BEANR-K1700 (capital "
                      "letters, digits and hyphens, at most 32 characters)")
_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$")
_REGISTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class FeedKind(StrEnum):
    SNAPSHOT = "snapshot"
    CHANGES = "changes"


class FeedRefusal(StrEnum):
    """Why a feed is refused; every refusal leaves the list in force exactly as it was."""

    UNSIGNED = "unsigned"  # not a JWS, or no signature
    BAD_SIGNATURE = "bad_signature"  # wrong key, tampered payload, algorithm not allowed
    MALFORMED = "malformed"  # field shapes, dates, the 20-year cap
    WRONG_REGISTER = "wrong_register"  # another register than the one in force
    REPLAYED = "replayed"  # a sequence at or below the one in force
    OUT_OF_ORDER = "out_of_order"  # a change set that is not exactly the next one
    STALE = "stale"  # issued longer ago than the maximum feed age
    INCONSISTENT = "inconsistent"  # lifts a ban the list does not hold


class FeedRefused(Exception):
    def __init__(self, code: FeedRefusal, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _BanWindow:
    """When and where a ban applies: the same rule for a ban in a feed and a ban as stored."""

    __slots__ = ()
    scope: tuple[str, ...] | None  # None: all ports
    starts_at: datetime
    ends_at: datetime

    def in_effect(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def covers(self, port: str | None) -> bool:
        """Does it apply at ``port``? (``scope_covers``)"""
        return scope_covers(self.scope, port)


def scope_covers(scope: tuple[str, ...] | None, port: str | None) -> bool:
    """Does a ban of ``scope`` (None: all ports) apply at ``port``? With no port (a badge issue, or a
    terminal whose code names no port: ``port_of_terminal``) every ban counts. The screening's rule
    (``screen``) and the nomination alerts' (identity.bans.alerts ``applies_at``)."""
    return scope is None or port is None or port in scope


@dataclass(frozen=True, slots=True)
class Ban(_BanWindow):
    national_number: str  # clear, as the register sends it: hashed at the edge, never stored
    scope: tuple[str, ...] | None  # None: all ports
    starts_at: datetime
    ends_at: datetime
    reference: str


@dataclass(frozen=True, slots=True)
class Feed:
    register: str
    kind: FeedKind
    sequence: int
    issued_at: datetime
    bans: tuple[Ban, ...] = ()  # snapshot
    added: tuple[Ban, ...] = ()  # changes
    lifted: tuple[str, ...] = ()  # changes: references


@dataclass(frozen=True, slots=True)
class FeedState:
    """The list in force: which register, which sequence, when issued and loaded."""

    register: str
    sequence: int
    issued_at: datetime
    loaded_at: datetime
    digest: str


class Verdict(StrEnum):
    APPLY = "apply"
    ALREADY_LOADED = "already_loaded"


# ---- parsing ----------------------------------------------------------------------------------

def national_number_valid(value: str) -> bool:
    """Belgian national register number: 9 digits then a mod-97 check (97 - n mod 97); people born
    from 2000 on are checked with a leading "2" (Rijksregister / Registre national)."""
    if len(value) != 11 or not value.isascii() or not value.isdigit():  # str.isdigit alone takes "²"
        return False
    check = int(value[9:])
    return check == 97 - int(value[:9]) % 97 or check == 97 - int("2" + value[:9]) % 97


def parse_feed(payload: Any, *, max_ban_years: int = MAX_BAN_YEARS) -> Feed:
    """The feed's fields, checked one by one; FeedRefused(MALFORMED) names the first bad one."""
    if not isinstance(payload, Mapping):
        raise _malformed("the feed is not a JSON object")
    register = payload.get("register")
    if not isinstance(register, str) or not _REGISTER.match(register):
        raise _malformed("register: a register id is required")
    try:
        kind = FeedKind(payload.get("kind"))
    except ValueError:
        raise _malformed("kind: 'snapshot' or 'changes'") from None
    sequence = payload.get("sequence")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or not 1 <= sequence <= MAX_SEQUENCE:
        raise _malformed(f"sequence: a positive integer of at most {MAX_SEQUENCE} is required")
    issued_at = _instant(payload.get("issued_at"), "issued_at")
    if kind is FeedKind.SNAPSHOT:
        if "added" in payload or "lifted" in payload:
            raise _malformed("a snapshot carries 'bans', not 'added'/'lifted'")
        bans = _bans(payload.get("bans"), "bans", max_ban_years)
        _unique_references(bans, "bans")
        return Feed(register, kind, sequence, issued_at, bans=bans)
    if "bans" in payload:
        raise _malformed("a change set carries 'added'/'lifted', not 'bans'")
    added = _bans(payload.get("added", []), "added", max_ban_years)
    _unique_references(added, "added")
    lifted_raw = payload.get("lifted", [])
    if not isinstance(lifted_raw, list) or not all(isinstance(r, str) and _REFERENCE.match(r) for r in lifted_raw):
        raise _malformed("lifted: a list of ban references")
    lifted = tuple(lifted_raw)
    if len(set(lifted)) != len(lifted):
        raise _malformed("lifted: a reference appears twice")
    both = set(lifted) & {b.reference for b in added}
    if both:
        raise _malformed(f"reference {sorted(both)[0]} is both added and lifted")
    return Feed(register, kind, sequence, issued_at, added=added, lifted=lifted)


def _bans(raw: Any, field: str, max_years: int) -> tuple[Ban, ...]:
    if not isinstance(raw, list):
        raise _malformed(f"{field}: a list of bans is required")
    return tuple(_ban(item, f"{field}[{i}]", max_years) for i, item in enumerate(raw))


def _ban(raw: Any, where: str, max_years: int) -> Ban:
    if not isinstance(raw, dict):  # parsed JSON: a dict (cheaper to test than the Mapping ABC)
        raise _malformed(f"{where}: a ban is a JSON object")
    number = raw.get("national_number")
    # The message never repeats the number: it is personal data (STYLE.md #13, PII-free logs).
    if not isinstance(number, str) or not national_number_valid(number):
        raise _malformed(f"{where}.national_number: not a valid national register number")
    reference = raw.get("reference")
    if not isinstance(reference, str) or not _REFERENCE.match(reference):
        raise _malformed(f"{where}.reference: a register reference is required")
    scope_raw = raw.get("scope")
    scope: tuple[str, ...] | None
    if scope_raw == ALL_PORTS:
        scope = None
    elif isinstance(scope_raw, list) and scope_raw and all(isinstance(p, str) and _PORT_CODE.match(p)
                                                           for p in scope_raw):
        scope = tuple(sorted(set(scope_raw)))
    else:
        raise _malformed(f"{where}.scope: 'all' or a non-empty list of port codes (UN/LOCODE)")
    starts = _instant(raw.get("from"), f"{where}.from")
    ends = _instant(raw.get("until"), f"{where}.until")
    if ends <= starts:
        raise _malformed(f"{where}: 'until' must come after 'from'")
    if ends > add_years(starts, max_years):
        raise _malformed(f"{where}: a ban lasts at most {max_years} years")
    return Ban(number, scope, starts, ends, reference)


def _unique_references(bans: Sequence[Ban], field: str) -> None:
    seen: set[str] = set()
    for b in bans:
        if b.reference in seen:
            raise _malformed(f"{field}: reference {b.reference} appears twice")
        seen.add(b.reference)


def _instant(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise _malformed(f"{field}: an ISO 8601 date-time with its zone is required")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _malformed(f"{field}: an ISO 8601 date-time with its zone is required") from None
    if parsed.tzinfo is None:
        raise _malformed(f"{field}: the time zone is required")
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is ISO 8601 and no UTC time: a 500, a CLI traceback
        utc = None
    # The register is authoritative on when a ban runs; the calendar is not its to leave. Within these
    # years the 20-year cap (add_years) stays in the calendar and the database hands the times back in
    # any session time zone. A ban starting in 9990 made add_years raise a ValueError, which the admin
    # API answered as a register that was not configured (503).
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise _malformed(f"{field}: a time between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC) is required")
    return utc


def add_years(moment: datetime, years: int) -> datetime:
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:  # 29 February into a common year: the day after 28 February
        return moment.replace(year=moment.year + years, day=28) + timedelta(days=1)


def _malformed(message: str) -> FeedRefused:
    return FeedRefused(FeedRefusal.MALFORMED, f"malformed feed: {message}")


# ---- sequence and age rules ---------------------------------------------------------------------

def sequence_verdict(feed: Feed, digest: str, in_force: FeedState | None, *, now: datetime,
                     max_feed_age: timedelta) -> Verdict:
    """Apply it, or it is already loaded; else FeedRefused. Called inside the loading transaction,
    with the state read under the load lock, so two loaders can never both apply one sequence."""
    if in_force is not None and feed.register != in_force.register:
        raise FeedRefused(FeedRefusal.WRONG_REGISTER,
                          f"feed from register {feed.register}, but the list in force is {in_force.register}'s")
    if in_force is not None and feed.sequence == in_force.sequence and digest == in_force.digest:
        return Verdict.ALREADY_LOADED
    if feed.issued_at > now + CLOCK_SKEW:
        raise _malformed("issued_at lies in the future")
    if in_force is not None and feed.sequence <= in_force.sequence:
        raise FeedRefused(FeedRefusal.REPLAYED,
                          f"replayed feed: sequence {feed.sequence} is not above {in_force.sequence}, in force")
    if feed.kind is FeedKind.CHANGES:
        if in_force is None:
            raise FeedRefused(FeedRefusal.OUT_OF_ORDER, "out-of-order feed: no list in force; load a snapshot first")
        if feed.sequence != in_force.sequence + 1:
            raise FeedRefused(FeedRefusal.OUT_OF_ORDER,
                              f"out-of-order feed: change set {feed.sequence} after {in_force.sequence}; "
                              f"expected {in_force.sequence + 1}")
    if now - feed.issued_at > max_feed_age:
        raise FeedRefused(FeedRefusal.STALE,
                          f"stale feed: issued {feed.issued_at.isoformat()}, more than "
                          f"{int(max_feed_age.total_seconds())} s ago")
    return Verdict.APPLY


# ---- screening ----------------------------------------------------------------------------------

class ScreeningStatus(StrEnum):
    CLEAR = "clear"
    BANNED = "banned"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class BanCheck:
    status: ScreeningStatus
    list_age_seconds: float | None  # None: no list loaded
    references: tuple[str, ...] = ()  # the bans that hit (for port security, never for the driver)
    unidentified: bool = False  # unavailable because the person has no national number on file


@dataclass(frozen=True, slots=True)
class StoredBan(_BanWindow):
    """A ban as stored: no national number, only what screening needs."""

    scope: tuple[str, ...] | None
    starts_at: datetime
    ends_at: datetime
    reference: str


def screen(bans: Iterable[StoredBan], *, port: str | None, now: datetime, list_issued_at: datetime | None,
           max_list_age: timedelta, identified: bool = True) -> BanCheck:
    """clear / banned / unavailable for one person. A ban in force still says ``banned`` on an old list
    (a stale list never clears anyone); with no ban found, an old or missing list says ``unavailable``.

    ``identified``: the person has a national register number on file. The register names persons by
    that number only, so a person without one cannot be found in it: ``unavailable`` (``unidentified``),
    never ``clear``, or a banned person re-entered as a fresh record would pass (the release engine's
    rule too, release_service.domain.screening)."""
    age = None if list_issued_at is None else max(0.0, (now - list_issued_at).total_seconds())
    hits = tuple(sorted(b.reference for b in bans if b.in_effect(now) and b.covers(port)))
    if hits:
        return BanCheck(ScreeningStatus.BANNED, age, hits)
    if not identified:
        return BanCheck(ScreeningStatus.UNAVAILABLE, age, unidentified=True)
    if age is None or age > max_list_age.total_seconds():
        return BanCheck(ScreeningStatus.UNAVAILABLE, age)
    return BanCheck(ScreeningStatus.CLEAR, age)


def encode_scope(scope: tuple[str, ...] | None) -> str:
    return ALL_PORTS if scope is None else ",".join(scope)


def decode_scope(stored: str) -> tuple[str, ...] | None:
    return None if stored == ALL_PORTS else tuple(stored.split(","))


def port_of_terminal(terminal: str) -> str | None:
    """The port a terminal lies in, read from its code ("BEANR-K1700" is in BEANR); None when the code
    does not say (review 123, finding 1).

    The rule (docs/port-ban-feed.md), the release engine's too (release_service.domain.screening.port_of,
    which may not import this; tests/test_terminal_port.py holds them in step): the code, trimmed and
    upper-cased, starts with a UN/LOCODE (two letters, then three letters or digits 2-9), a hyphen and at
    least one more character; the port is those five characters. Any other code ("K1700", "PSA-K1700",
    "BEANRK1700", "BE-ANR-K1700", "BEANR-") names no port, and ``screen`` given None counts every ban,
    port-limited or not: a code we cannot read must not make a port's bans invisible there."""
    found = _TERMINAL_PORT.match(terminal.strip().upper())
    return found.group(1) if found else None


def is_terminal_code(code: str) -> bool:
    """The shape a new terminal code must have (the admin API and the CLI refuse others): exactly as
    ``TERMINAL_CODE_FORM`` says. Codes stored before this rule keep working under ``port_of_terminal``."""
    return _TERMINAL_CODE.fullmatch(code) is not None

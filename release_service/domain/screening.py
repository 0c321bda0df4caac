"""The port-ban screening rule for the release engine, pure (issue 4; read by nomination and the gate).

The same rule as identity.domain.bans.screen (the release engine may not import identity): a ban in
effect at ``now`` whose scope is all ports or lists the terminal's port says ``banned``; otherwise a
list missing or older than ``max_list_age`` says ``unavailable``. A terminal whose code names no port
(``port_of``) is screened against every ban, whatever its ports.

"Missing": once a register has ever been loaded, a missing or stale list is ``unavailable``. A
database that has never received a feed screens bans only when ``required`` is set (a deployment
with a register configured); until then screening says ``clear`` on the badge check alone.

"Unidentified": the register names persons by their national register number. A person with none on
file cannot be found in it, so where a list is in force (or required) he is ``unavailable``, never
``clear``: a banned person without a linked number would otherwise pass every screening.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .release import Screening


@dataclass(frozen=True, slots=True)
class BanWindow:
    scope: str  # "all", or the UN/LOCODEs of the ports, comma separated
    banned_from: datetime
    banned_until: datetime


# The front of a terminal code that names its port: a UN/LOCODE (two letters, then three letters or
# digits 2-9), a hyphen and at least one more character. identity.domain.bans._TERMINAL_PORT is the
# same rule (neither part may import the other; tests/test_terminal_port.py holds them in step).
_TERMINAL_PORT = re.compile(r"([A-Z]{2}[A-Z2-9]{3})-.", re.ASCII)


def port_of(terminal: str) -> str | None:
    """The port a terminal lies in, read from its code, trimmed and upper-cased ("BEANR-K1700" is in
    BEANR); None when the code does not start with a port's code and a hyphen ("K1700", "PSA-K1700",
    "BEANRK1700"). Review 123, finding 1: such a code must not make the port's bans invisible there, so
    ``screen`` then counts every port-limited ban (fails closed)."""
    found = _TERMINAL_PORT.match(terminal.strip().upper())
    return found.group(1) if found else None


def covers(scope: str, port: str | None) -> bool:
    """Does a ban of ``scope`` apply at ``port``? Every ban does where the port cannot be read."""
    return scope == "all" or port is None or port in scope.split(",")


def banned_within(windows: Iterable[BanWindow], *, terminal: str, since: datetime, until: datetime) -> bool:
    """Was a ban of ``windows`` in effect at the terminal's port at any time from ``since`` to ``until``
    (``screen``'s rule, over a span: a ban that ended within it counts)?"""
    port = port_of(terminal)
    return any(_aware(w.banned_from) <= until and since < _aware(w.banned_until) and covers(w.scope, port)
               for w in windows)


def next_ban_start(windows: Iterable[BanWindow], *, terminal: str, after: datetime) -> datetime | None:
    """The earliest start after ``after`` of a ban of ``windows`` at the terminal's port (``screen``'s rule):
    when a person screened at ``after`` is banned next, as the list held says; None for none ahead. A gate
    pass ends there (review 147, finding 2: screened at its issue alone, it said clear past that start)."""
    port = port_of(terminal)
    return min((_aware(w.banned_from) for w in windows
                if after < _aware(w.banned_from) < _aware(w.banned_until) and covers(w.scope, port)), default=None)


def screen(windows: Iterable[BanWindow], list_issued_at: datetime | None, *, terminal: str, now: datetime,
           max_list_age: timedelta, required: bool, identified: bool = True) -> Screening:
    port = port_of(terminal)
    for w in windows:
        if _aware(w.banned_from) <= now < _aware(w.banned_until) and covers(w.scope, port):
            return Screening("banned", ("person_banned",))
    if list_issued_at is None:
        return Screening("unavailable", ("screening_unavailable",)) if required else Screening("clear")
    if now - _aware(list_issued_at) > max_list_age or not identified:
        return Screening("unavailable", ("screening_unavailable",))
    return Screening("clear")


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # SQLite hands back naive UTC

"""The port-ban screening rule for the release engine, pure (issue 4; read by nomination and the gate).

The same rule as identity.domain.bans.screen (the release engine may not import identity): a ban in
effect at ``now`` whose scope is all ports or lists the terminal's port says ``banned``; otherwise a
list missing or older than ``max_list_age`` says ``unavailable``.

"Missing": once a register has ever been loaded, a missing or stale list is ``unavailable``. A
database that has never received a feed screens bans only when ``required`` is set (a deployment
with a register configured); until then screening says ``clear`` on the badge check alone.

"Unidentified": the register names persons by their national register number. A person with none on
file cannot be found in it, so where a list is in force (or required) he is ``unavailable``, never
``clear``: a banned person without a linked number would otherwise pass every screening.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .release import Screening


@dataclass(frozen=True, slots=True)
class BanWindow:
    scope: str  # "all", or the UN/LOCODEs of the ports, comma separated
    banned_from: datetime
    banned_until: datetime


def port_of(terminal: str) -> str:
    return terminal.split("-", 1)[0].upper()  # terminal codes start with the port's UN/LOCODE


def screen(windows: Iterable[BanWindow], list_issued_at: datetime | None, *, terminal: str, now: datetime,
           max_list_age: timedelta, required: bool, identified: bool = True) -> Screening:
    port = port_of(terminal)
    for w in windows:
        if _aware(w.banned_from) <= now < _aware(w.banned_until) and (w.scope == "all" or port in w.scope.split(",")):
            return Screening("banned", ("person_banned",))
    if list_issued_at is None:
        return Screening("unavailable", ("screening_unavailable",)) if required else Screening("clear")
    if now - _aware(list_issued_at) > max_list_age or not identified:
        return Screening("unavailable", ("screening_unavailable",))
    return Screening("clear")


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # SQLite hands back naive UTC

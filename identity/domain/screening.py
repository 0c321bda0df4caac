"""Port-ban screening as the identity part sees it: one port, one result (SPEC.md, issue 4).

Standard library only. The badge register calls a ``BanScreening`` at badge issue; the port-ban
register (AIGIS-shaped feed) provides the adapter. Screening says ``clear``, ``banned`` or
``unavailable``, with the age of the list it used (``None`` when there is no list at all).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

CLEAR = "clear"
BANNED = "banned"
UNAVAILABLE = "unavailable"
UNIDENTIFIED = "person_unidentified"  # a reason of ``unavailable``: no national register number on file


@dataclass(frozen=True, slots=True)
class ScreeningResult:
    status: str  # clear | banned | unavailable
    list_age_seconds: float | None
    reasons: tuple[str, ...] = ()


class BanScreening(Protocol):
    """Is this person under a port ban in force at ``now``?

    ``conn``: the caller's open transaction, which holds the person's row lock. An adapter that reads
    the stored list reads it there, so the answer and the write it allows see the same committed
    list, and a ban load (which takes the same lock) runs wholly before or wholly after both."""

    def screen(self, person_id: uuid.UUID, now: datetime, *, conn: Any = None) -> ScreeningResult: ...

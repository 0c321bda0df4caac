"""The officer's desk: what a lane's latch holds, and the officer's clear (lane.py rule 9).

A lane whose decision called an officer is latched in the outbox (outbox.py rule 6): nothing opens it
until an officer clears it. The desk is the one place a latch is read for an officer and cleared, for
both ways an officer reaches it: the HTTP source (http_source.py, an officer credential) and the command
``quaygate gate-adapter --config ... --clear-latch LANE --latch-id N --officer NAME`` on the adapter's host
(adapter.py). Rules:
1. A clear names the latch it clears (its id, shown with the latch): a latch set after the officer
   looked, or a clear sent twice (a re-run command, a re-sent request), clears nothing
   (``LatchChanged``, ``NotLatched``). One conditional UPDATE (outbox ``clear_latch``), never
   check-then-act.
2. Every clear is logged ``gate.lane.latch_cleared`` with the lane, the latch and who cleared it (the
   officer's configured name, or for the command the name given and the system user who ran it), and
   kept in the outbox with the latch (``cleared_by``, ``note``).
3. Errors carry codes (``code``), never HTTP statuses: the HTTP source maps them, the command prints them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .outbox import LaneLatch, LatchedHold, Outbox

log = logging.getLogger("gate_adapters.lane")

MAX_NOTE = 500  # characters an officer may write with a clear


class LatchError(Exception):
    """A clear refused; ``code`` is stable (the HTTP source's problem code)."""

    code = "latch_error"


class UnknownLane(LatchError):
    code = "unknown_lane"


class NotLatched(LatchError):
    code = "not_latched"


class LatchChanged(LatchError):
    code = "latch_changed"


@dataclass(frozen=True, slots=True)
class LatchView:
    """A lane's latch as an officer sees it: the latch and every decision it held since."""

    latch: LaneLatch
    held: tuple[LatchedHold, ...]

    def as_json(self) -> dict[str, Any]:
        latch = self.latch
        return {"id": latch.id, "since": _iso(latch.latched_at), "request_id": latch.request_id,
                "reason": latch.reason,
                "held": [{"request_id": h.request_id, "instead": h.instead, "reason": h.reason,
                          "at": _iso(h.noted_at)} for h in self.held]}


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat()


class LatchDesk:
    """Reads and clears the latches of the lanes one outbox serves."""

    def __init__(self, outbox: Outbox, lanes: Iterable[str]) -> None:
        self.outbox = outbox
        self.lanes = frozenset(lanes)

    def overview(self) -> dict[str, dict[str, Any]]:
        """Each lane, latched or not (``/healthz``): ``{"latched": false}``, or ``{"latched": true,
        "latch": <id>, "since": <ISO 8601>}``. Not why, nor for which request: that is the officer's
        (``status``), and ``/healthz`` answers a device's token too. One read of the outbox."""
        held = self.outbox.held_latches()
        return {lane: ({"latched": True, "latch": held[lane].id, "since": _iso(held[lane].latched_at)}
                       if lane in held else {"latched": False}) for lane in sorted(self.lanes)}

    def status(self, lane: str) -> LatchView | None:
        """The latch ``lane`` holds now (with what it held), or None; ``UnknownLane``."""
        self._known(lane)
        latch = self.outbox.held_latch(lane)
        return None if latch is None else LatchView(latch, tuple(self.outbox.latched_holds(latch.id)))

    def clear(self, lane: str, latch_id: int, *, by: str, note: str | None = None) -> LaneLatch:
        """Rule 1: clear ``latch_id`` if ``lane`` still holds it; rule 2: logged with ``by``."""
        self._known(lane)
        if note is not None and len(note) > MAX_NOTE:
            raise ValueError(f"the note is longer than {MAX_NOTE} characters")
        cleared = self.outbox.clear_latch(lane, latch_id, by, note)
        if cleared is None:
            held = self.outbox.held_latch(lane)
            if held is None:
                raise NotLatched(f"lane {lane} is not latched")
            raise LatchChanged(f"lane {lane} holds latch {held.id}, not {latch_id}: look at the lane again")
        log.warning("gate.lane.latch_cleared: lane %s latch %d cleared by %s", lane, latch_id, by,
                    extra={"lane": lane, "latch": latch_id, "by": by, "reason": cleared.reason})
        return cleared

    def _known(self, lane: str) -> None:
        if lane not in self.lanes:
            raise UnknownLane(f"no lane {lane!r} here")

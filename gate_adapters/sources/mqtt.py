"""MQTT messages (topic, payload) to reads: a pure mapping; the client library lives at the edge.

Topics (``<prefix>`` defaults to ``quaygate``; each segment is a plain identifier)::

    <prefix>/<terminal>/<lane>/plate | container | badge | face   generic JSON (generic_json schema)
    <prefix>/<terminal>/<lane>/anpr/hikvision                      ISAPI ANPR XML, bare (no multipart)
    <prefix>/<terminal>/<lane>/anpr/axis                           AXIS License Plate Verifier JSON
    <prefix>/<terminal>/<lane>/ocr/portal                          container OCR portal JSON

The lane and terminal come from the topic, so vendor relays need no channel or camera mapping. A
generic payload that names a different lane, or a generic payload of a different ``kind`` than the
topic says, is refused: a mis-published read must not join another lane's truck. Topic filters
(``+``, ``#``) are never valid message topics and are refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from gate_adapters.core.reads import Read, SourceError
from gate_adapters.sources import axis, generic_json, hikvision, load_json_object, ocr_portal

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_GENERIC_KINDS = frozenset({"plate", "container", "badge", "face"})
MAX_BYTES = generic_json.MAX_BYTES


@dataclass(frozen=True, slots=True)
class TopicRead:
    terminal: str
    read: Read


def _hikvision(payload: bytes, lane: str) -> Read | None:
    return hikvision.parse(payload, "application/xml", lane=lane)


def _axis(payload: bytes, lane: str) -> Read | None:
    return axis.parse(payload, lane=lane)


def _ocr(payload: bytes, lane: str) -> Read | None:
    return ocr_portal.parse(payload, lane=lane)


_VENDORS: dict[tuple[str, str], Callable[[bytes, str], Read | None]] = {
    ("anpr", "hikvision"): _hikvision,
    ("anpr", "axis"): _axis,
    ("ocr", "portal"): _ocr,
}


def parse(topic: str, payload: bytes, *, prefix: str = "quaygate") -> TopicRead | None:
    """One message to a ``TopicRead`` (``None``: a vendor heartbeat or ``lost`` event)."""
    if not isinstance(topic, str):
        raise SourceError("topic is not a string")
    # The prefix may have levels of its own (``site/quaygate``, a broker shared with other systems).
    if not topic.startswith(prefix + "/"):
        raise SourceError("topic is not <prefix>/<terminal>/<lane>/<kind>")
    parts = topic[len(prefix) + 1:].split("/")
    if len(parts) < 3:
        raise SourceError("topic is not <prefix>/<terminal>/<lane>/<kind>")
    if not all(_SEGMENT.match(p) for p in parts):
        raise SourceError("topic has an empty, wildcard or malformed segment")
    terminal, lane, rest = parts[0], parts[1], tuple(parts[2:])
    if len(rest) == 1 and rest[0] in _GENERIC_KINDS:
        obj = load_json_object(payload, MAX_BYTES)
        if obj.get("kind", rest[0]) != rest[0]:
            raise SourceError("payload kind does not match the topic")
        read: Read | None = generic_json.parse_object({**obj, "kind": rest[0]}, lane=lane)
    elif len(rest) == 2 and rest in _VENDORS:
        read = _VENDORS[rest](payload, lane)  # type: ignore[index]
    else:
        raise SourceError("topic names no known read kind or vendor")
    return None if read is None else TopicRead(terminal=terminal, read=read)

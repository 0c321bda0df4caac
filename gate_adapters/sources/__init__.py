"""Vendor sources: each module turns one vendor's payload (bytes, plus headers or topic) into a read.

One module per format: ``generic_json`` (our own webhook), ``hikvision`` (ISAPI ANPR alarm),
``axis`` (License Plate Verifier push event), ``ocr_portal`` (container OCR with per-character
confidence) and ``mqtt`` (topic routing onto the others). Every parser is pure: no sockets, no
clock. A payload we cannot trust is refused with ``SourceError`` and never with another exception
(the edge maps ``SourceError`` to a 4xx and a ``gate.source.refused.<vendor>`` log event). A
well-formed payload that carries nothing to correlate (a heartbeat, an Axis ``lost`` event) gives
``None``.

The small helpers below are shared by the JSON-based sources.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gate_adapters.core.reads import SourceError, require_aware

__all__ = [
    "SourceError",
    "check_size",
    "get_number",
    "get_opt_str",
    "get_str",
    "load_json_object",
    "parse_iso_datetime",
]


def check_size(body: bytes, max_bytes: int) -> None:
    """Refuse before parsing: a size cap is the cheapest guard against a hostile or broken sender."""
    if not isinstance(body, bytes | bytearray):
        raise SourceError("payload is not bytes")
    if len(body) > max_bytes:
        raise SourceError(f"payload is larger than {max_bytes} bytes")
    if not body:
        raise SourceError("payload is empty")


def load_json_object(body: bytes, max_bytes: int) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes, or ``SourceError``."""
    check_size(body, max_bytes)
    try:
        value = json.loads(bytes(body).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError: JSONDecodeError and UnicodeDecodeError, and also a number of more digits than
        # Python converts (sys.get_int_max_str_digits, 4300): that one is a plain ValueError, and it
        # ended the MQTT source's network thread (review 109).
        raise SourceError("payload is not valid UTF-8 JSON") from exc
    if not isinstance(value, dict):
        raise SourceError("payload is not a JSON object")
    return value


def get_str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise SourceError(f"'{key}' is missing or not a string")
    return value.strip()


def get_opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SourceError(f"'{key}' is not a string")
    return value.strip() or None


def get_number(obj: Mapping[str, Any], key: str, *, allow_numeric_string: bool = False) -> float:
    """A JSON number (some vendors quote their numbers: only where ``allow_numeric_string`` says so)."""
    value = obj.get(key)
    if isinstance(value, str) and allow_numeric_string:
        try:
            return float(value)
        except ValueError as exc:
            raise SourceError(f"'{key}' is not a number") from exc
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SourceError(f"'{key}' is missing or not a number")
    try:
        return float(value)
    except OverflowError as exc:  # an integer of hundreds of digits: no float holds it
        raise SourceError(f"'{key}' is not a number we can hold") from exc


def parse_iso_datetime(raw: object, what: str = "observed_at") -> datetime:
    """ISO 8601 with a UTC offset (``Z`` accepted), returned in UTC. A naive time is refused."""
    if not isinstance(raw, str):
        raise SourceError(f"'{what}' is missing or not a string")
    try:
        parsed = datetime.fromisoformat(raw.strip())
    except ValueError as exc:
        raise SourceError(f"'{what}' is not an ISO 8601 date-time") from exc
    return require_aware(parsed)


def weakest(overall: float | None, per_char: tuple[float, ...] | None) -> float | None:
    """A container read's confidence: the lower of the overall one and the weakest character, of those
    given (None: neither). An average of 0.95 with one character at 0.2 is a doubtful read."""
    given = [c for c in (overall, min(per_char) if per_char else None) if c is not None]
    return min(given) if given else None

"""JSON for the gate verify's hot path: an answer encoded once, in C (orjson), and embedded as is.

A gate check's answer is written three times: into the Redis stream entry that carries its decision
to PostgreSQL, into the Redis key that answers a repeated ``request_id``, and to the gate as the HTTP
response. ``Body`` keeps its encoding once made, and ``dumps`` embeds a ``Body`` found inside another
value as those very bytes (``orjson.Fragment``), so the answer is encoded once and sent as encoded.

orjson writes what ``json.dumps`` writes for the values used here (str, int, float, bool, None, lists,
dicts with str keys), compactly, and encodes ``uuid.UUID`` and aware ``datetime`` values itself (as
``str(value)`` and ``value.isoformat()`` would). Anything else is a TypeError, as with ``json.dumps``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson


class Body(dict[str, Any]):
    """A JSON object's dict that keeps its encoding once made. Complete it before encoding it: the
    encoding is not made again after a change (a copy, ``dict(body)``, is a plain dict)."""

    __slots__ = ("_encoded",)

    def encoded(self) -> bytes:
        try:
            return self._encoded
        except AttributeError:
            self._encoded: bytes = orjson.dumps(self)
            return self._encoded


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON; a ``Body`` at its top or anywhere in it as its own bytes."""
    if isinstance(value, Body):
        return value.encoded()
    # orjson hands every subclass of a type it writes to ``_embedded`` (OPT_PASSTHROUGH_SUBCLASS): so a
    # Body inside is found by orjson's own walk, in C, instead of a walk in Python first.
    return orjson.dumps(value, default=_embedded, option=orjson.OPT_PASSTHROUGH_SUBCLASS)


def _embedded(value: Any) -> Any:
    """A Body as its encoding; any other subclass of str, int, float, dict or list as its base type's
    value, as ``json.dumps`` writes it; anything else a TypeError."""
    if isinstance(value, Body):
        return orjson.Fragment(value.encoded())
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def loads(raw: bytes | str) -> Any:
    return orjson.loads(raw)


def loads_as_json(raw: bytes) -> Any:
    """``json.loads(raw)``, by orjson (in C) where orjson reads it: what both read, they read as the same
    values; what orjson refuses and ``json`` takes (NaN, Infinity, integers beyond 64 bits, lone
    surrogates, a byte order mark) is read by ``json`` itself, and what both refuse raises as ``json``
    raises. orjson reads an integer beyond 64 bits as a float where ``json`` keeps it exact: a body with
    a run of 19 digits or more is read by ``json``. For a handler that must parse exactly as FastAPI's
    (the gate verify's lean handler)."""
    if _LONG_DIGITS.search(raw) is None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


_LONG_DIGITS = re.compile(rb"[0-9]{19}")

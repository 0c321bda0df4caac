"""Container OCR portal results, with per-character confidence, into container reads.

Gate OCR portals (a gantry of cameras the truck drives through) report the container number with a
confidence for every character. The format we accept (JSON, at most ``MAX_BYTES``)::

    {
      "portalId": "ocr-portal-2",                # camera/portal identity
      "laneId": "in-3",                          # the portal's lane id (mapped by ``portal_lanes``)
      "transactionId": "T-20261121-000731",      # optional, not used
      "timestamp": "2026-11-21T15:30:04.120Z",   # ISO 8601 with an offset
      "containerNumber": "MSCU1234565",
      "isoCode": "45G1",                         # optional, not used
      "confidence": 0.9,                         # optional overall confidence, 0..1
      "characters": [{"char": "M", "confidence": 0.99}, ...]   # optional, one per character
    }

Rules: the confidence is the lower of the portal's own overall one and the MINIMUM per-character
confidence, whichever are given (one doubtful character makes the whole number doubtful, whatever the
portal's average says: a doubtful read is what makes the service look for a valid look-alike twin,
SPEC.md). The per-character list is kept, and must spell the container number character by
character (else the portal's report is inconsistent and refused). With neither an overall nor a
per-character confidence the read is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gate_adapters.core.reads import ContainerRead, SourceError, check_confidence, normalise_container_number
from gate_adapters.sources import get_number, get_opt_str, get_str, load_json_object, parse_iso_datetime, weakest

SOURCE = "ocr_portal"
MAX_BYTES = 256 * 1024


def parse(
    body: bytes,
    *,
    portal_lanes: Mapping[str, str] | None = None,
    lane: str | None = None,
    max_bytes: int = MAX_BYTES,
) -> ContainerRead:
    """``lane`` wins when given; else ``laneId`` through ``portal_lanes`` (or as is, with no mapping)."""
    obj = load_json_object(body, max_bytes)
    number = normalise_container_number(get_str(obj, "containerNumber"))
    per_char = _per_char(obj.get("characters"), number)
    overall = check_confidence(get_number(obj, "confidence")) if obj.get("confidence") is not None else None
    confidence = weakest(overall, per_char)
    if confidence is None:
        raise SourceError("neither 'confidence' nor 'characters' is given")
    return ContainerRead(
        lane=_lane(obj, portal_lanes, lane),
        source=SOURCE,
        camera=get_opt_str(obj, "portalId") or "unknown",
        number=number,
        confidence=confidence,
        per_char=per_char,
        observed_at=parse_iso_datetime(obj.get("timestamp"), "timestamp"),
    )


def _lane(obj: Mapping[str, Any], portal_lanes: Mapping[str, str] | None, lane: str | None) -> str:
    if lane is not None:
        return lane
    portal_lane = get_str(obj, "laneId")
    if portal_lanes is None:
        return portal_lane
    mapped = portal_lanes.get(portal_lane)
    if mapped is None:
        raise SourceError("portal lane is not mapped to a lane")
    return mapped


def _per_char(raw: object, number: str) -> tuple[float, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise SourceError("'characters' is not a non-empty list")
    chars: list[str] = []
    confidences: list[float] = []
    for item in raw:
        if not isinstance(item, dict):
            raise SourceError("'characters' holds something other than objects")
        char = get_str(item, "char")
        if len(char) != 1:
            raise SourceError("a 'characters' entry is not one character")
        chars.append(char.upper())
        confidences.append(check_confidence(get_number(item, "confidence"), "character confidence"))
    if "".join(chars) != number:
        raise SourceError("'characters' do not spell 'containerNumber'")
    return tuple(confidences)

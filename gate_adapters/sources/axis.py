"""AXIS License Plate Verifier (ALPV) HTTP push events, JSON, into plate reads.

The ACAP posts one JSON object per recognition event (its "JSON protocol"); the fields we use::

    packetCounter        counter since start (not used: restarts at 1)
    carState             "new" | "update" | "lost"  (lost: the car left; no new read)
    plateUTF8 / plateUnicode / plateText   the plate text (plateText may be \\u-escaped)
    plateCountry         ISO 3166-1 alpha-3 ("BEL"), mapped to alpha-2
    plateConfidence      recognition confidence, 0..1 (a number or a quoted number)
    capture_timestamp    milliseconds since the Unix epoch, UTC (preferred time)
    datetime             "YYYYMMDD HHMMSSmmm[+HHMM]" camera time (fallback)
    roiID                region of interest 1 or 2 (one camera may watch two lanes)
    camera_info.SerialNumber / MACAddress, sensorProviderID     camera identity

Lane: ``lane`` when given (MQTT topic), else ``camera_lanes["<camera>/<roiID>"]`` or
``camera_lanes["<camera>"]``; unmapped cameras are refused. A ``datetime`` without an offset is
read in ``camera_tz`` when one is configured, and refused otherwise: a guessed clock could join a
read to the wrong truck. ``lost`` events give ``None``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any

from gate_adapters.core.reads import PlateRead, SourceError, check_confidence, require_aware
from gate_adapters.sources import get_number, get_opt_str, load_json_object

SOURCE = "axis"
MAX_BYTES = 64 * 1024  # pictures are not inlined in the JSON we accept
_DATETIME = re.compile(r"^(\d{8}) (\d{6})(\d{3})?\s*([+-]\d{4})?$")
_STATES = frozenset({"new", "update", "updated", "lost"})


def parse(
    body: bytes,
    *,
    camera_lanes: Mapping[str, str] | None = None,
    lane: str | None = None,
    camera_tz: tzinfo | None = None,
    max_bytes: int = MAX_BYTES,
) -> PlateRead | None:
    obj = load_json_object(body, max_bytes)
    state = (get_opt_str(obj, "carState") or "new").lower()
    if state not in _STATES:
        raise SourceError("'carState' is not new, update or lost")
    if state == "lost":
        return None
    text = get_opt_str(obj, "plateUTF8") or get_opt_str(obj, "plateUnicode") or get_opt_str(obj, "plateText")
    if text is None:
        raise SourceError("plate text is missing")
    camera = _camera(obj)
    roi = obj.get("roiID")
    the_lane = lane or (camera_lanes or {}).get(f"{camera}/{roi}") or (camera_lanes or {}).get(camera)
    if the_lane is None:
        raise SourceError("camera is not mapped to a lane")
    confidence = check_confidence(get_number(obj, "plateConfidence", allow_numeric_string=True), "plateConfidence")
    return PlateRead(
        lane=the_lane,
        source=SOURCE,
        camera=camera,
        text=text,
        country=get_opt_str(obj, "plateCountry"),
        confidence=confidence,
        observed_at=_observed_at(obj, camera_tz),
    )


def _camera(obj: Mapping[str, Any]) -> str:
    info = obj.get("camera_info")
    if info is not None and not isinstance(info, dict):
        raise SourceError("'camera_info' is not an object")
    if info:
        serial = get_opt_str(info, "SerialNumber") or get_opt_str(info, "MACAddress")
        if serial:
            return serial.upper()
    sensor = get_opt_str(obj, "sensorProviderID")
    if sensor is None:
        raise SourceError("camera identity is missing (camera_info.SerialNumber or sensorProviderID)")
    return sensor


def _observed_at(obj: Mapping[str, Any], camera_tz: tzinfo | None) -> datetime:
    if obj.get("capture_timestamp") not in (None, ""):
        millis = get_number(obj, "capture_timestamp", allow_numeric_string=True)
        if not math.isfinite(millis) or not 0 < millis < 32503680000000:  # before year 3000
            raise SourceError("'capture_timestamp' is out of range")
        return datetime.fromtimestamp(millis / 1000.0, tz=UTC)
    raw = get_opt_str(obj, "datetime")
    match = _DATETIME.match(raw or "")
    if match is None:
        raise SourceError("'datetime' is missing or not YYYYMMDD HHMMSSmmm")
    day, clock, millis_text, offset = match.groups()
    text = f"{day} {clock}{(millis_text or '000')}000{offset or ''}"
    try:
        parsed = datetime.strptime(text, "%Y%m%d %H%M%S%f%z" if offset else "%Y%m%d %H%M%S%f")
    except ValueError as exc:
        raise SourceError("'datetime' is not a valid date-time") from exc
    if parsed.tzinfo is None:
        if camera_tz is None:
            raise SourceError("'datetime' has no offset and no camera time zone is configured")
        parsed = parsed.replace(tzinfo=camera_tz)
    return require_aware(parsed)

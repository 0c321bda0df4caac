"""Our own JSON webhook: any device (badge reader, local face matcher, a camera bridge) can post it.

Schema (UTF-8 JSON object, at most ``MAX_BYTES``; names follow SPEC.md "The gate verify call")::

    {
      "lane": "in-3",                           # required: our lane id
      "kind": "plate" | "container" | "badge" | "face",
      "observed_at": "2026-11-21T15:30:01.250+01:00",   # required, ISO 8601 WITH an offset ("Z" ok)
      "device": "badge-reader-3",               # optional: the posting device's id
      # exactly the one object named by "kind":
      "plate":     {"text": "1-ABC-234", "country": "BE", "confidence": 0.93},
      "container": {"number": "MSCU 123456-5", "confidence": 0.91,
                    "per_char": [0.99, 0.98, ...]},            # per_char optional
      "badge":     {"scheme": "alfapass", "number": "AP-100230",
                    "card_uid": "04:A2:2B:1C:5D:6E:80"},       # number and/or card_uid
      "face":      {"image": "<base64 JPEG>"}
                 | {"match": {"matched": true, "score": 0.87}} # from a trusted local matcher only
    }

Confidences and scores are numbers in 0..1. ``country`` is ISO 3166-1 alpha-2 or alpha-3, optional.
A container ``confidence`` may be left out when ``per_char`` is given; the read's confidence is the
lower of ``confidence`` and the weakest character (the weakest character bounds the read). Anything
else is refused with ``SourceError``. A face match result parses like any read; whether its sender may
send one is the edge's check (``is_face_match``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from gate_adapters.core.reads import (
    BadgeRead,
    ContainerRead,
    FaceMatch,
    FaceRead,
    PlateRead,
    Read,
    ReadKind,
    SourceError,
)
from gate_adapters.sources import get_number, get_opt_str, get_str, load_json_object, parse_iso_datetime, weakest

SOURCE = "generic_json"
MAX_BYTES = 3 * 1024 * 1024  # a base64 face image is the largest thing we accept here


def parse(body: bytes, *, lane: str | None = None, max_bytes: int = MAX_BYTES) -> Read:
    """Parse one webhook body. ``lane``, when given (MQTT topic), must agree with the payload's."""
    return parse_object(load_json_object(body, max_bytes), lane=lane)


def parse_object(obj: Mapping[str, Any], *, lane: str | None = None, source: str = SOURCE) -> Read:
    payload_lane = get_opt_str(obj, "lane")
    if lane is not None and payload_lane is not None and payload_lane != lane:
        raise SourceError("payload lane does not match the lane it was sent for")
    the_lane = lane or payload_lane
    if the_lane is None:
        raise SourceError("'lane' is missing")
    raw_kind = get_str(obj, "kind")
    try:
        kind = ReadKind(raw_kind)
    except ValueError as exc:
        raise SourceError("'kind' is not plate, container, badge or face") from exc
    body = obj.get(kind.value)
    if not isinstance(body, dict):
        raise SourceError(f"'{kind.value}' object is missing")
    observed_at = parse_iso_datetime(obj.get("observed_at"))
    device = get_opt_str(obj, "device") or "unknown"
    common: dict[str, Any] = {"lane": the_lane, "source": source, "observed_at": observed_at}
    if kind is ReadKind.PLATE:
        return PlateRead(
            camera=device,
            text=get_str(body, "text"),
            country=get_opt_str(body, "country"),
            confidence=get_number(body, "confidence"),
            **common,
        )
    if kind is ReadKind.CONTAINER:
        return _container(body, device, common)
    if kind is ReadKind.BADGE:
        return BadgeRead(
            reader=device,
            scheme=get_opt_str(body, "scheme"),
            number=get_opt_str(body, "number"),
            card_uid=get_opt_str(body, "card_uid"),
            **common,
        )
    return _face(body, device, common)


def is_face_match(read: Read) -> bool:
    """A face *match result* says the driver was already identified (an image is matched by the service):
    the sources accept one only from a device configured as a trusted face matcher."""
    return isinstance(read, FaceRead) and read.match is not None


def _container(body: Mapping[str, Any], device: str, common: dict[str, Any]) -> ContainerRead:
    per_char_raw = body.get("per_char")
    per_char: tuple[float, ...] | None = None
    if per_char_raw is not None:
        if not isinstance(per_char_raw, list) or not per_char_raw:
            raise SourceError("'per_char' is not a non-empty list of numbers")
        per_char = tuple(get_number({"c": c}, "c") for c in per_char_raw)
    confidence = weakest(get_number(body, "confidence") if body.get("confidence") is not None else None, per_char)
    if confidence is None:
        raise SourceError("'confidence' is missing")
    return ContainerRead(
        camera=device, number=get_str(body, "number"), confidence=confidence, per_char=per_char, **common
    )


def _face(body: Mapping[str, Any], device: str, common: dict[str, Any]) -> FaceRead:
    if ("image" in body) == ("match" in body):
        raise SourceError("'face' carries exactly one of 'image' or 'match'")
    if "image" in body:
        try:
            image = base64.b64decode(get_str(body, "image"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SourceError("'face.image' is not base64") from exc
        return FaceRead(camera=device, image=image, match=None, **common)
    match = body["match"]
    if not isinstance(match, dict):
        raise SourceError("'face.match' is not an object")
    result = FaceMatch(matched=match.get("matched"), score=get_number(match, "score"))  # type: ignore[arg-type]
    return FaceRead(camera=device, image=None, match=result, **common)

"""Liveness (presentation attack detection, ISO/IEC 30107): a port, with no detector behind it yet.

**Limitation, documented (docs/face.md):** 1:1 matching compares faces, not people. A printed photo,
a phone screen or a mask showing the enrolled person's face matches like the person. quaygate ships
no presentation-attack detector: ``NotChecked`` answers ``not_checked`` for every capture, and every
verification records that answer on the audit trail. What carries the gate meanwhile: the face is one
factor beside the badge, the plate and the nominated right, and the gate camera is in a lane watched
by the terminal. A step-up from the driver's own phone is weaker (the phone's camera can be shown a
photo): relying parties that need more must not treat ``urn:quaygate:acr:face`` as proof of presence.

A real detector (a depth or IR camera's verdict at the gate, a vendor PAD SDK) plugs in as a
``LivenessDetector``; a capture it calls ``spoof`` is refused as ``face_not_live``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol


class Liveness(StrEnum):
    LIVE = "live"
    SPOOF = "spoof"
    NOT_CHECKED = "not_checked"


class LivenessDetector(Protocol):
    def check(self, image: bytes) -> Liveness:
        """Judge one capture. Must not keep the image."""
        ...


class NotChecked:
    """The default: no presentation attack detection (see the module docstring)."""

    def check(self, image: bytes) -> Liveness:
        return Liveness.NOT_CHECKED

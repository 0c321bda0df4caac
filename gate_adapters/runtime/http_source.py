"""Reads over HTTP: cameras and devices POST to a small FastAPI app, which parses and enqueues.

Routes (``{lane}`` is our lane id; the adapter serves one terminal)::

    POST /hikvision/{lane}   ISAPI ANPR alarm, bare XML or multipart (sources/hikvision.py)
    POST /axis/{lane}        AXIS License Plate Verifier JSON push (sources/axis.py)
    POST /ocr/{lane}         container OCR portal JSON (sources/ocr_portal.py)
    POST /reads/{lane}       our generic JSON read (sources/generic_json.py)
    GET  /healthz            200 {"status": "ok", "terminal", "lanes"} while the adapter runs

A read decides who passes a gate, so each POST is checked in this order, and nothing refused reaches
the lane:
1. 401 (with ``WWW-Authenticate``): no valid device token, as ``Authorization: Bearer <token>`` or, for
   cameras that only know HTTP Basic (RFC 7617), the device's name and its token as the password.
   Tokens are compared as SHA-256 digests in constant time (``hmac.compare_digest``), every device
   tried, so neither a wrong token nor a device's name is told by the time taken.
2. 403: the device is not bound to this lane (checked before the body is read).
3. 404: a lane this adapter does not run (for this source).
4. 413: a body over the vendor's size cap, refused on ``Content-Length`` before a byte is read and
   counted while streaming (no ``Content-Length``, or a lying one): a sender cannot make us buffer more.
5. 400 with a plain-text reason: a refused payload (``SourceError``).
6. 403: a kind of read the device may not send, or a face *match result* from a device that is not a
   ``trusted_face_matcher`` (config rule 6).
7. 503 with ``Retry-After``: the lane already has its ``queue_size`` reads waiting (``LaneBusy``, a flood
   or a lane stuck on the service): refused, not queued, so memory stays bounded; the device sends it
   again later (a read still fresh then is taken, lane.py rule 6).
Otherwise 202 ``{"accepted": true}`` (enqueued) or ``{"accepted": false}`` (a heartbeat, an Axis ``lost``
event: nothing to correlate). With no devices configured (``devices=None``, allowed only with
``dev = true``) steps 1, 2 and the kind check are skipped; a face match result is still refused. Handlers
only parse and enqueue (``LaneWorker.submit``), so the ``async def`` routes never block on the service.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from gate_adapters.core.reads import Read, SourceError
from gate_adapters.sources import axis, generic_json, hikvision, ocr_portal

from .config import HttpSourceSettings, read_secret_file, token_sha256
from .lane import LaneBusy, LaneWorker

log = logging.getLogger("gate_adapters.source.http")

Parser = Callable[[bytes, str | None, str], Read | None]

PARSERS: dict[str, tuple[Parser, int]] = {  # and each vendor's body cap (rule 4)
    "hikvision": (lambda body, ctype, lane: hikvision.parse(body, ctype, lane=lane), hikvision.MAX_BYTES),
    "axis": (lambda body, ctype, lane: axis.parse(body, lane=lane), axis.MAX_BYTES),
    "ocr": (lambda body, ctype, lane: ocr_portal.parse(body, lane=lane), ocr_portal.MAX_BYTES),
    "reads": (lambda body, ctype, lane: generic_json.parse(body, lane=lane), generic_json.MAX_BYTES),
}
CHALLENGE = 'Bearer realm="quaygate-gate", Basic realm="quaygate-gate", charset="UTF-8"'
RETRY_AFTER_SECONDS = 1  # rule 7: soon, so that the read sent again is still fresh (lane.py rule 6)


@dataclass(frozen=True, slots=True)
class Device:
    """A device as the source checks it: the SHA-256 of its token, never the token itself."""

    name: str
    digest: bytes
    lanes: frozenset[str]
    kinds: frozenset[str]
    trusted_face_matcher: bool


def devices_for(http: HttpSourceSettings) -> tuple[Device, ...] | None:
    """The configured devices, token files read now, before anything starts (``ConfigError`` names the
    key). ``None``: no devices configured, so no token is asked (the settings allow that only in dev)."""
    if not http.devices:
        return None
    devices = []
    for i, d in enumerate(http.devices):
        digest = d.token_sha256
        if d.token_file is not None:
            digest = token_sha256(read_secret_file(d.token_file, f"http.devices[{i}].token_file"))
        assert digest is not None
        devices.append(Device(d.name, bytes.fromhex(digest), frozenset(d.lanes), frozenset(d.kinds),
                              d.trusted_face_matcher))
    return tuple(devices)


def authenticate(devices: Sequence[Device], authorization: str | None) -> Device | None:
    """The device whose token the ``Authorization`` header carries, or ``None`` (rule 1)."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    credentials = credentials.strip()
    name: str | None = None
    if scheme.lower() == "bearer":
        token = credentials
    elif scheme.lower() == "basic":
        try:
            name, sep, token = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
    else:
        return None
    if not token:
        return None
    presented = bytes.fromhex(token_sha256(token))
    found = None
    for device in devices:  # no early exit: the time taken does not depend on which device matched
        if hmac.compare_digest(presented, device.digest):
            found = device
    if found is None or (name is not None and not hmac.compare_digest(name.encode(), found.name.encode())):
        return None
    return found


def refusal(device: Device | None, read: Read) -> str | None:
    """Why this device may not send this read (rule 6), or ``None``."""
    if generic_json.is_face_match(read) and (device is None or not device.trusted_face_matcher):
        return "only a trusted face matcher may send a face match result"
    if device is not None and read.kind.value not in device.kinds:
        return f"this device may not send {read.kind.value} reads"
    return None


class _TooLarge(Exception):
    """The body went over its cap: answered 413, the rest never read."""


async def _body(request: Request, max_bytes: int) -> bytes:
    """The body, at most ``max_bytes`` of it (rule 4), else ``_TooLarge``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_source_app(worker: LaneWorker, terminal: str, *, devices: Sequence[Device] | None) -> FastAPI:
    """``devices`` is required so that a caller says so when it serves without tokens (``None``, dev)."""
    app = FastAPI(title="quaygate gate adapter inputs", openapi_url=None, docs_url=None, redoc_url=None)
    if devices is None:
        log.warning("gate.source.http.unauthenticated", extra={"terminal": terminal})

    def route(vendor: str, parser: Parser, max_bytes: int) -> None:
        async def receive(lane: str, request: Request) -> Response:
            device = None
            if devices is not None:
                device = authenticate(devices, request.headers.get("authorization"))
                if device is None:
                    log.warning("gate.source.unauthenticated.%s", vendor, extra={"lane": lane})
                    return PlainTextResponse("a device token is required", status_code=401,
                                             headers={"WWW-Authenticate": CHALLENGE})
                if lane not in device.lanes:
                    log.warning("gate.source.forbidden.lane", extra={"device": device.name, "lane": lane})
                    return PlainTextResponse("this device may not send reads for this lane", status_code=403)
            if not worker.has_lane(terminal, lane):
                return PlainTextResponse("unknown lane", status_code=404)
            try:
                body = await _body(request, max_bytes)
            except _TooLarge:
                log.warning("gate.source.refused.too_large", extra={"vendor": vendor, "lane": lane})
                return PlainTextResponse(f"payload is larger than {max_bytes} bytes", status_code=413)
            try:
                read = parser(body, request.headers.get("content-type"), lane)
            except SourceError as exc:
                log.warning("gate.source.refused.%s", vendor, extra={"lane": lane, "reason": str(exc)})
                return PlainTextResponse(str(exc), status_code=400)
            if read is None:
                return JSONResponse({"accepted": False}, status_code=202)
            reason = refusal(device, read)
            if reason is not None:
                log.warning("gate.source.forbidden.read", extra={"device": device.name if device else None,
                                                                 "lane": lane, "reason": reason})
                return PlainTextResponse(reason, status_code=403)
            try:
                worker.submit(terminal, read)
            except LaneBusy as exc:
                log.warning("gate.source.lane_busy.%s", vendor, extra={"lane": lane, "queue_size": exc.queue_size})
                return PlainTextResponse(f"lane {lane} is busy: {exc.queue_size} reads waiting; send it again",
                                         status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            return JSONResponse({"accepted": True}, status_code=202)

        app.add_api_route(f"/{vendor}/{{lane}}", receive, methods=["POST"], name=f"receive_{vendor}")

    for vendor, (parser, max_bytes) in PARSERS.items():
        route(vendor, parser, max_bytes)

    async def healthz() -> Response:
        return JSONResponse({"status": "ok", "terminal": terminal, "lanes": sorted(ln for _, ln in worker.lanes)})

    app.add_api_route("/healthz", healthz, methods=["GET"], name="healthz")
    return app

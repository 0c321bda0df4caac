"""Reads over HTTP: cameras and devices POST to a small FastAPI app, which parses and enqueues.

Routes (``{lane}`` is our lane id; the adapter serves one terminal)::

    POST /hikvision/{lane}   ISAPI ANPR alarm, bare XML or multipart (sources/hikvision.py)
    POST /axis/{lane}        AXIS License Plate Verifier JSON push (sources/axis.py)
    POST /ocr/{lane}         container OCR portal JSON (sources/ocr_portal.py)
    POST /reads/{lane}       our generic JSON read (sources/generic_json.py)
    GET  /healthz            200 {"status": "ok", "terminal", "lanes", "load"} while the adapter runs

``/healthz`` says more than "up": ``lanes`` are the lanes this source takes reads for, and ``load`` each
lane of the adapter's queue (``queued``, ``queue_size``), what its bounds refused since start (``refused``:
reads, every source; ``evicted``: trucks held for an officer) and, with an MQTT source, ``mqtt_dropped``.
A lane whose counts grow is flooded or stuck, and its drivers wait at a held barrier: a monitor polling
``/healthz`` sees it before they call. It asks no token (nothing in it names a device, a truck or a driver).

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
5. 400 with the reason: a refused payload (``SourceError``).
6. 403: a kind of read the device may not send, or a face *match result* from a device that is not a
   ``trusted_face_matcher`` (config rule 6).
7. 503 with ``Retry-After``: the lane already has its ``queue_size`` reads waiting (``LaneBusy``, a flood
   or a lane stuck on the service): refused, not queued, so memory stays bounded; the device sends it
   again later (a read still fresh then is taken, lane.py rule 6).
Every refusal is an RFC 9457 problem document (``application/problem+json``: ``type``, ``title``,
``status``, ``detail``, and ``code``, the stable name a device's integrator switches on), with the
status and headers above; so are the framework's own errors (an unknown route, a wrong method), so a
device meets one error format only. The ``detail`` is safe to show: it never names a device, a token
or a lane the device may not know.
TLS (config.py rule 5): with ``[http] cert_file`` and ``key_file`` the source speaks only TLS (1.2 or
later), and with ``client_ca_file`` only to a device that shows a certificate that CA signed (mutual
TLS, checked in the handshake, before a byte of HTTP); the device token is asked all the same (a
certificate says "a camera of ours", the token which one, bound to its lanes and kinds).
``server_tls_for`` builds the context before anything starts, so a file it cannot use is a bad setting
naming its key, not a source that dies in its thread.
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
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gate_adapters.core.reads import Read, SourceError
from gate_adapters.sources import axis, generic_json, hikvision, ocr_portal

from .config import ConfigError, HttpSourceSettings, read_secret_file, token_sha256
from .lane import LaneBusy, LaneWorker

log = logging.getLogger("gate_adapters.source.http")

Parser = Callable[[bytes, str | None, str], Read | None]
Health = Callable[[], dict[str, dict[str, int]]]  # lane -> its load, for /healthz

PARSERS: dict[str, tuple[Parser, int]] = {  # and each vendor's body cap (rule 4)
    "hikvision": (lambda body, ctype, lane: hikvision.parse(body, ctype, lane=lane), hikvision.MAX_BYTES),
    "axis": (lambda body, ctype, lane: axis.parse(body, lane=lane), axis.MAX_BYTES),
    "ocr": (lambda body, ctype, lane: ocr_portal.parse(body, lane=lane), ocr_portal.MAX_BYTES),
    "reads": (lambda body, ctype, lane: generic_json.parse(body, lane=lane), generic_json.MAX_BYTES),
}
CHALLENGE = 'Bearer realm="quaygate-gate", Basic realm="quaygate-gate", charset="UTF-8"'
RETRY_AFTER_SECONDS = 1  # rule 7: soon, so that the read sent again is still fresh (lane.py rule 6)
PROBLEM_BASE = "https://quaygate.eu/problems/gate-adapter/"  # the service's base, a folder of our own
PROBLEM_MEDIA_TYPE = "application/problem+json"  # RFC 9457 §3
TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
          405: "Method not allowed", 413: "Content too large", 503: "Service unavailable"}


def problem(status: int, code: str, detail: str, *, headers: dict[str, str] | None = None) -> JSONResponse:
    """An RFC 9457 problem document (§3.1 members, plus ``code``), as the service answers its own
    errors (STYLE.md #6): a device gets one error format whatever refused it."""
    body = {"type": PROBLEM_BASE + code, "title": TITLES.get(status, "Error"), "status": status,
            "detail": detail, "code": code}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


async def _framework_problem(request: Request, exc: Exception) -> Response:
    """The framework's own refusals (no such route, a wrong method) as problems too."""
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return problem(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))


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


def server_tls_for(http: HttpSourceSettings) -> ssl.SSLContext | None:
    """The source's TLS context (module docstring), its files read now (``ConfigError`` names the key);
    ``None``: plain HTTP."""
    if http.cert_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(http.cert_file, http.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("http.cert_file", f"cannot use {http.cert_file} with {http.key_file}: "
                                            f"{getattr(exc, 'strerror', None) or exc}") from None
    if http.client_ca_file is not None:
        try:
            context.load_verify_locations(http.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("http.client_ca_file", f"cannot use {http.client_ca_file}: "
                                                     f"{getattr(exc, 'strerror', None) or exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED  # no certificate of that CA: no handshake
    return context


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


def lane_health(worker: LaneWorker, mqtt_dropped: Callable[[], Mapping[str, int]] | None = None) -> Health:
    """``/healthz``'s ``load``: each lane's ``LaneWorker.load`` and, with an MQTT source, the reads it
    dropped for that lane."""
    def report() -> dict[str, dict[str, int]]:
        dropped = None if mqtt_dropped is None else mqtt_dropped()
        out = {}
        for (_, lane), load in sorted(worker.load().items()):
            entry = load.as_json()
            if dropped is not None:
                entry["mqtt_dropped"] = dropped.get(lane, 0)
            out[lane] = entry
        return out
    return report


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


def create_source_app(worker: LaneWorker, terminal: str, *, devices: Sequence[Device] | None,
                      health: Health | None = None) -> FastAPI:
    """``devices`` is required so that a caller says so when it serves without tokens (``None``, dev).
    ``health``: ``/healthz``'s ``load`` (default: ``worker``'s own lanes; the adapter passes every lane's,
    with its MQTT drops)."""
    health = health or lane_health(worker)
    app = FastAPI(title="quaygate gate adapter inputs", openapi_url=None, docs_url=None, redoc_url=None,
                  exception_handlers={StarletteHTTPException: _framework_problem})
    if devices is None:
        log.warning("gate.source.http.unauthenticated", extra={"terminal": terminal})

    def route(vendor: str, parser: Parser, max_bytes: int) -> None:
        async def receive(lane: str, request: Request) -> Response:
            device = None
            if devices is not None:
                device = authenticate(devices, request.headers.get("authorization"))
                if device is None:
                    log.warning("gate.source.unauthenticated.%s", vendor, extra={"lane": lane})
                    return problem(401, "device_token_required", "a device token is required",
                                   headers={"WWW-Authenticate": CHALLENGE})
                if lane not in device.lanes:
                    log.warning("gate.source.forbidden.lane", extra={"device": device.name, "lane": lane})
                    return problem(403, "lane_forbidden", "this device may not send reads for this lane")
            if not worker.has_lane(terminal, lane):
                return problem(404, "unknown_lane", "unknown lane")
            try:
                body = await _body(request, max_bytes)
            except _TooLarge:
                log.warning("gate.source.refused.too_large", extra={"vendor": vendor, "lane": lane})
                return problem(413, "payload_too_large", f"payload is larger than {max_bytes} bytes")
            try:
                read = parser(body, request.headers.get("content-type"), lane)
            except SourceError as exc:
                log.warning("gate.source.refused.%s", vendor, extra={"lane": lane, "reason": str(exc)})
                return problem(400, "payload_refused", str(exc))
            if read is None:
                return JSONResponse({"accepted": False}, status_code=202)
            reason = refusal(device, read)
            if reason is not None:
                log.warning("gate.source.forbidden.read", extra={"device": device.name if device else None,
                                                                 "lane": lane, "reason": reason})
                return problem(403, "read_forbidden", reason)
            try:
                worker.submit(terminal, read)
            except LaneBusy as exc:
                log.warning("gate.source.lane_busy.%s", vendor, extra={"lane": lane, "queue_size": exc.queue_size})
                return problem(503, "lane_busy", f"lane {lane} is busy: {exc.queue_size} reads waiting; send it "
                                                 f"again", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            return JSONResponse({"accepted": True}, status_code=202)

        app.add_api_route(f"/{vendor}/{{lane}}", receive, methods=["POST"], name=f"receive_{vendor}")

    for vendor, (parser, max_bytes) in PARSERS.items():
        route(vendor, parser, max_bytes)

    async def healthz() -> Response:
        return JSONResponse({"status": "ok", "terminal": terminal, "lanes": sorted(ln for _, ln in worker.lanes),
                             "load": health()})

    app.add_api_route("/healthz", healthz, methods=["GET"], name="healthz")
    return app

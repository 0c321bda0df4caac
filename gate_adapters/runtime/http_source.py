"""Reads over HTTP: cameras and devices POST to a small FastAPI app, which parses and enqueues.

Routes (``{lane}`` is our lane id; the adapter serves one terminal)::

    POST /hikvision/{lane}   ISAPI ANPR alarm, bare XML or multipart (sources/hikvision.py)
    POST /axis/{lane}        AXIS License Plate Verifier JSON push (sources/axis.py)
    POST /ocr/{lane}         container OCR portal JSON (sources/ocr_portal.py)
    POST /reads/{lane}       our generic JSON read (sources/generic_json.py)
    GET  /livez              200 {"status": "ok"} (503 "unavailable"): liveness, nothing else, no token
    GET  /healthz            200 {"status": "ok", "terminal", "lanes", "load", "latches"}: a device token
                             (or an officer's)
    GET  /officer/latch/{lane}         an officer: the lane's latch and what it held (lane.py rule 9)
    POST /officer/latch/{lane}/clear   an officer: {"latch": id, "note": "..."} clears it (latch.py)
    POST /officer/override/{lane}      an officer: {"request_id": "...", "reason": "..."} lets in a truck the
                                       service refused there, and counts its right used here (overrides.py)

``/healthz`` says more than "up": ``lanes`` are the lanes this source takes reads for, and ``load`` each
lane of the adapter's queue (``queued``, ``queue_size``), what its bounds refused since start
(``refused``: reads, every source; ``evicted``: trucks held for an officer) and, with an MQTT source,
``mqtt_dropped``. A lane whose counts grow is flooded or stuck, and its drivers wait at a held barrier:
a monitor polling ``/healthz`` sees it before they call. ``latches`` says, for every lane of the
adapter, whether it is latched for an officer (lane.py rule 9: its barrier holds whatever is decided,
until an officer clears it) and if so which latch and since when (``{"latched": true, "latch": 7,
"since": "..."}``); why, and for which truck, only an officer reads (``/officer/latch/{lane}``). That is
the terminal's load, lane by lane (when a gate is busy, when a lane is stuck), so it asks what a read
asks: a device token (or an officer's), and under mutual TLS the device certificate in the handshake.
``/livez`` says "up" and nothing else, to anyone who reaches the source; under mutual TLS nobody without
a certificate does, so the adapter can serve ``/livez`` on a plain listener of its own (``[http]
health_port``, ``create_health_app``) for a load balancer probe. Why not one TLS listener with
``CERT_OPTIONAL`` and the certificate enforced path by path: that moves the check of every read from the
handshake into our code, for every path, and uvicorn does not hand the peer certificate to the app at
all; a second socket that serves one constant answer risks nothing.

Officers (lane.py rule 9, latch.py): ``[[http.officers]]`` each have a token of their own, never a
device's (the settings refuse a device's digest; ``officers_for`` a token file that holds one), sent as
``Authorization: Bearer`` or HTTP Basic with the officer's name, checked like a device token (digests,
constant time). An officer call is taken only over TLS (where a device certificate is also asked under
mutual TLS) or from this host (loopback): an officer token in clear on the camera network would let a
camera clear the latch the next time (403 ``officer_channel_insecure``, before the token is looked at).
401 ``officer_credential_required``; 404 ``unknown_lane``; 409 ``not_latched`` or ``latch_changed`` (the
clear names a latch the lane no longer holds: look again); 400 ``payload_refused`` for a body that is not
``{"latch": <id>, "note": <text, optional>}``. No device token clears a latch, whatever it may send.
An override (the same officer checks) answers 201 with what the service recorded (a refusal decided offline
is verified again first, overrides.py rule 7; while the service cannot be reached, what this adapter recorded
for the reconcile: rule 6); 404 ``unknown_lane`` or ``unknown_request``; 409 ``not_overridable`` (not a
refusal that could be overridden: pending, allowed, offline without a pass, for a reason no desk sets aside
or over an hour ago, ...), or the service's own refusal with its code
(``illegal_transition``, ``already_used``, ...: its status when 404, 409 or 422, else 409); 503
``service_unavailable`` (no answer: the right counts as used here all the same, overrides.py rule 3); 400
``payload_refused``.

A read decides who passes a gate, so each POST is checked in this order, and nothing refused reaches
the lane:
1. 401 (with ``WWW-Authenticate``): no valid device token, as ``Authorization: Bearer <token>`` or, for
   cameras that only know HTTP Basic (RFC 7617), the device's name and its token as the password.
   Tokens are compared as SHA-256 digests in constant time (``hmac.compare_digest``), every device
   tried, so neither a wrong token nor a device's name is told by the time taken.
2. 403: the device is not bound to this lane (checked before the body is read).
3. 404: a lane this adapter does not run (for this source).
4. 403: a vendor route whose one kind of read the device may not send (``VENDOR_KINDS``: a badge
   reader posting to ``/hikvision``), refused before the body is read, so no device makes us parse
   what it could never send (review 109).
5. 413: a body over the vendor's size cap, refused on ``Content-Length`` before a byte is read and
   counted while streaming (no ``Content-Length``, or a lying one): a sender cannot make us buffer more.
6. 400 with the reason: a refused payload (``SourceError``). The parser runs on a worker thread, never on
   the event loop: a body slow to parse holds up its own request, not every lane's, the officers'
   routes and ``/healthz``. Those threads are ``PARSE_THREADS`` of the app's own (an anyio limiter), not
   the default pool the officer's routes and ``/healthz`` use (review 116: a device keeping some 40 slow
   parses going held all 40 of that pool, and the officer could not unlatch a lane): a flood of parses
   waits for its own few threads.
7. 403: a kind of read the device may not send, or a face *match result* from a device that is not a
   ``trusted_face_matcher`` (config rule 6).
8. 503 with ``Retry-After``: the lane already has its ``queue_size`` reads waiting (``LaneBusy``, a flood
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
import hmac
import ipaddress
import json
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from gate_adapters.core.reads import Read, SourceError
from gate_adapters.sources import axis, generic_json, hikvision, ocr_portal

from .config import ConfigError, HttpSourceSettings, read_secret_file, token_sha256
from .lane import LaneBusy, LaneWorker
from .latch import LatchDesk, LatchError
from .overrides import OverrideDesk, OverrideError, OverrideRefused

log = logging.getLogger("gate_adapters.source.http")

Parser = Callable[[bytes, str | None, str], Read | None]
PARSE_THREADS = 4  # rule 6: the parsers' own threads, apart from the default pool (40)
Health = Callable[[], dict[str, dict[str, int]]]  # lane -> its load, for /healthz

PARSERS: dict[str, tuple[Parser, int]] = {  # and each vendor's body cap (rule 5)
    "hikvision": (lambda body, ctype, lane: hikvision.parse(body, ctype, lane=lane), hikvision.MAX_BYTES),
    "axis": (lambda body, ctype, lane: axis.parse(body, lane=lane), axis.MAX_BYTES),
    "ocr": (lambda body, ctype, lane: ocr_portal.parse(body, lane=lane), ocr_portal.MAX_BYTES),
    "reads": (lambda body, ctype, lane: generic_json.parse(body, lane=lane), generic_json.MAX_BYTES),
}
VENDOR_KINDS: dict[str, frozenset[str]] = {  # rule 4: the one kind a vendor route gives ("reads": any)
    "hikvision": frozenset({"plate"}), "axis": frozenset({"plate"}), "ocr": frozenset({"container"}),
}
CHALLENGE = 'Bearer realm="quaygate-gate", Basic realm="quaygate-gate", charset="UTF-8"'
OFFICER_CHALLENGE = 'Bearer realm="quaygate-gate-officer", Basic realm="quaygate-gate-officer", charset="UTF-8"'
MAX_CLEAR_BYTES = 4096  # {"latch": id, "note": ...}
MAX_OVERRIDE_BYTES = 4096  # {"request_id": ..., "reason": ...}
RETRY_AFTER_SECONDS = 1  # rule 8: soon, so that the read sent again is still fresh (lane.py rule 6)
PROBLEM_BASE = "https://quaygate.eu/problems/gate-adapter/"  # the service's base, a folder of our own
PROBLEM_MEDIA_TYPE = "application/problem+json"  # RFC 9457 §3
TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
          405: "Method not allowed", 409: "Conflict", 413: "Content too large", 500: "Internal server error",
          503: "Service unavailable"}
LATCH_STATUS = {"unknown_lane": 404, "not_latched": 409, "latch_changed": 409}
OVERRIDE_STATUS = {"unknown_lane": 404, "unknown_request": 404, "not_overridable": 409, "service_unavailable": 503,
                   "payload_refused": 400, "override_unrecorded": 500}


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


@dataclass(frozen=True, slots=True)
class Officer:
    """An officer as the source checks them: the SHA-256 of their token."""

    name: str
    digest: bytes


def devices_for(http: HttpSourceSettings, *, strict: bool = True) -> tuple[Device, ...] | None:
    """The configured devices, token files read now, before anything starts (``ConfigError`` names the
    key; ``strict``: outside dev, a token file not the adapter's alone, config.py rule 10). ``None``: no
    devices configured, so no token is asked (the settings allow that only in dev)."""
    if not http.devices:
        return None
    devices = []
    for i, d in enumerate(http.devices):
        digest = d.token_sha256
        if d.token_file is not None:
            digest = token_sha256(read_secret_file(d.token_file, f"http.devices[{i}].token_file", strict=strict))
        assert digest is not None
        devices.append(Device(d.name, bytes.fromhex(digest), frozenset(d.lanes), frozenset(d.kinds),
                              d.trusted_face_matcher))
    return tuple(devices)


def officers_for(http: HttpSourceSettings, devices: Sequence[Device] | None, *,
                 strict: bool = True) -> tuple[Officer, ...]:
    """The configured officers, token files read now (as ``devices_for``); a token that is also a
    device's is refused (``ConfigError``): a camera must never clear a latch."""
    officers = []
    for i, o in enumerate(http.officers):
        key = f"http.officers[{i}].token_file"
        digest = o.token_sha256
        if o.token_file is not None:
            digest = token_sha256(read_secret_file(o.token_file, key, strict=strict))
        else:
            key = f"http.officers[{i}].token_sha256"
        assert digest is not None
        raw = bytes.fromhex(digest)
        if any(hmac.compare_digest(raw, d.digest) for d in devices or ()):
            raise ConfigError(key, "is a device's token: an officer's token is never a camera's (mint one of its own)")
        if any(hmac.compare_digest(raw, other.digest) for other in officers):
            raise ConfigError(key, "is another officer's token: give each officer their own")
        officers.append(Officer(o.name, raw))
    return tuple(officers)


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


Credential = TypeVar("Credential", Device, Officer)


def authenticate(devices: Sequence[Credential], authorization: str | None) -> Credential | None:
    """The device (or officer) whose token the ``Authorization`` header carries, or ``None`` (rule 1)."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    credentials = credentials.strip()
    name: str | None = None
    if scheme.lower() == "bearer":
        token = credentials
    elif scheme.lower() == "basic":
        try:
            name, sep, token = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except ValueError:  # binascii.Error, UnicodeDecodeError, and b64decode's own on non-ASCII text
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
    """Why this device may not send this read (rule 7), or ``None``."""
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
    """The body, at most ``max_bytes`` of it (rule 5), else ``_TooLarge``."""
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


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client is not None else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _liveness(alive: Callable[[], bool]) -> Callable[[], Any]:
    async def livez() -> Response:
        ok = alive()
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)
    return livez


def create_health_app(alive: Callable[[], bool]) -> FastAPI:
    """The liveness listener's app (``[http] health_port``): ``GET /livez`` and nothing else; a problem
    document for any other path. Nothing in it names a lane, a device or a truck."""
    app = FastAPI(title="quaygate gate adapter liveness", openapi_url=None, docs_url=None, redoc_url=None,
                  exception_handlers={StarletteHTTPException: _framework_problem})
    app.add_api_route("/livez", _liveness(alive), methods=["GET"], name="livez")
    return app


def create_source_app(worker: LaneWorker, terminal: str, *, devices: Sequence[Device] | None,
                      health: Health | None = None, officers: Sequence[Officer] = (),
                      latches: LatchDesk | None = None, overrides: OverrideDesk | None = None,
                      alive: Callable[[], bool] | None = None,
                      broker: Callable[[], Mapping[str, object]] | None = None) -> FastAPI:
    """``devices`` is required so that a caller says so when it serves without tokens (``None``, dev).
    ``health``: ``/healthz``'s ``load`` (default: ``worker``'s own lanes; the adapter passes every lane's,
    with its MQTT drops). ``officers``, ``latches`` and ``overrides``: the officer routes (no officers:
    every officer call is 401). ``alive``: what ``/livez`` answers (default: up while it answers). ``broker``:
    with an MQTT source, its broker connection for ``/healthz`` (mqtt_source.py rule 9: never ``/livez``'s)."""
    health = health or lane_health(worker)
    app = FastAPI(title="quaygate gate adapter inputs", openapi_url=None, docs_url=None, redoc_url=None,
                  exception_handlers={StarletteHTTPException: _framework_problem})
    if devices is None:
        log.warning("gate.source.http.unauthenticated", extra={"terminal": terminal})
    parsing = CapacityLimiter(PARSE_THREADS)  # rule 6: this app's parses, never the officers' pool

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
            kinds = VENDOR_KINDS.get(vendor)
            if device is not None and kinds is not None and not kinds & device.kinds:  # rule 4
                log.warning("gate.source.forbidden.kind", extra={"device": device.name, "lane": lane,
                                                                 "vendor": vendor})
                return problem(403, "read_forbidden", f"this device may not send {'/'.join(sorted(kinds))} reads")
            try:
                body = await _body(request, max_bytes)
            except _TooLarge:
                log.warning("gate.source.refused.too_large", extra={"vendor": vendor, "lane": lane})
                return problem(413, "payload_too_large", f"payload is larger than {max_bytes} bytes")
            try:  # rule 6: on a worker thread of the parsers' own, never on the event loop
                read = await anyio.to_thread.run_sync(parser, body, request.headers.get("content-type"), lane,
                                                      limiter=parsing)
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

    async def healthz(request: Request) -> Response:
        if devices is not None:  # what a read asks: a device's token (or an officer's)
            authorization = request.headers.get("authorization")
            if authenticate(devices, authorization) is None and authenticate(officers, authorization) is None:
                return problem(401, "device_token_required", "a device token is required",
                               headers={"WWW-Authenticate": CHALLENGE})
        body: dict[str, Any] = {"status": "ok", "terminal": terminal,
                                "lanes": sorted(ln for _, ln in worker.lanes), "load": health()}
        if broker is not None:
            body["mqtt"] = dict(broker())
        if latches is not None:
            body["latches"] = await run_in_threadpool(latches.overview)  # SQLite: never block the event loop
        return JSONResponse(body)

    app.add_api_route("/livez", _liveness(alive or (lambda: True)), methods=["GET"], name="livez")
    app.add_api_route("/healthz", healthz, methods=["GET"], name="healthz")

    def officer_of(request: Request) -> Officer | Response:
        """Who the officer is, or the refusal (the channel first, then the credential)."""
        peer = request.client.host if request.client is not None else None
        if request.url.scheme != "https" and not _loopback(request):
            log.warning("gate.source.officer.insecure_channel", extra={"peer": peer, "path": request.url.path})
            return problem(403, "officer_channel_insecure", "an officer call needs TLS, or this host")
        officer = authenticate(officers, request.headers.get("authorization"))
        if officer is None:
            log.warning("gate.source.officer.unauthenticated", extra={"peer": peer, "path": request.url.path})
            return problem(401, "officer_credential_required", "an officer's credential is required",
                           headers={"WWW-Authenticate": OFFICER_CHALLENGE})
        return officer

    def latch_problem(exc: LatchError) -> Response:
        return problem(LATCH_STATUS.get(exc.code, 409), exc.code, str(exc))

    def officer_at_desk(request: Request) -> tuple[Officer, LatchDesk] | Response:
        """The officer calling, and the lanes' latches to act on; else the refusal to answer."""
        officer = officer_of(request)
        if isinstance(officer, Response):
            return officer
        if latches is None:
            return problem(404, "unknown_lane", "unknown lane")
        return officer, latches

    async def latch_status(lane: str, request: Request) -> Response:
        at_desk = officer_at_desk(request)
        if isinstance(at_desk, Response):
            return at_desk
        _, desk = at_desk
        try:
            view = await run_in_threadpool(desk.status, lane)  # SQLite: never block the event loop
        except LatchError as exc:
            return latch_problem(exc)
        return JSONResponse({"lane": lane, "latched": view is not None,
                             "latch": None if view is None else view.as_json()})

    async def latch_clear(lane: str, request: Request) -> Response:
        at_desk = officer_at_desk(request)
        if isinstance(at_desk, Response):
            return at_desk
        officer, desk = at_desk
        try:
            raw = await _body(request, MAX_CLEAR_BYTES)
        except _TooLarge:
            return problem(413, "payload_too_large", f"payload is larger than {MAX_CLEAR_BYTES} bytes")
        try:
            latch_id, note = _clear_body(raw)
            who = f"{officer.name} (http)"
            cleared = await run_in_threadpool(lambda: desk.clear(lane, latch_id, by=who, note=note))
        except LatchError as exc:
            return latch_problem(exc)
        except ValueError as exc:
            return problem(400, "payload_refused", str(exc))
        return JSONResponse({"lane": lane, "latch": cleared.id, "cleared_by": cleared.cleared_by})

    async def override(lane: str, request: Request) -> Response:
        officer = officer_of(request)
        if isinstance(officer, Response):
            return officer
        if overrides is None:
            return problem(404, "unknown_lane", "unknown lane")
        try:
            raw = await _body(request, MAX_OVERRIDE_BYTES)
        except _TooLarge:
            return problem(413, "payload_too_large", f"payload is larger than {MAX_OVERRIDE_BYTES} bytes")
        try:
            request_id, reason = _override_body(raw)
        except ValueError as exc:  # the body alone: a failure once the service was asked is never a refused payload
            return problem(400, "payload_refused", str(exc))
        who = f"{officer.name} (http)"
        try:
            # The service is asked (seconds, with the client's retries): on a thread, never on the loop.
            done = await run_in_threadpool(lambda: overrides.override(lane, request_id, reason, by=who))
        except OverrideRefused as exc:
            return problem(exc.status if exc.status in (404, 409, 422) else 409, exc.code, str(exc))
        except OverrideError as exc:  # a reason refused (400) before anything is sent among them (overrides.py rule 8)
            return problem(OVERRIDE_STATUS.get(exc.code, 409), exc.code, str(exc))
        return JSONResponse(done.as_json(), status_code=201)

    app.add_api_route("/officer/latch/{lane}", latch_status, methods=["GET"], name="latch_status")
    app.add_api_route("/officer/latch/{lane}/clear", latch_clear, methods=["POST"], name="latch_clear")
    app.add_api_route("/officer/override/{lane}", override, methods=["POST"], name="override")
    return app


def _override_body(raw: bytes) -> tuple[str, str]:
    """``{"request_id": <the refused request>, "reason": <text>}``; ValueError saying what is wrong."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(body, dict) or set(body) != {"request_id", "reason"}:
        raise ValueError('the body is {"request_id": <the refused request>, "reason": <text>}')
    request_id, reason = body["request_id"], body["reason"]
    if not isinstance(request_id, str) or not request_id or not isinstance(reason, str):
        raise ValueError('"request_id" is the refused request (GET /officer/latch/{lane}), "reason" is text')
    return request_id, reason


def _clear_body(raw: bytes) -> tuple[int, str | None]:
    """``{"latch": <id>, "note": <text, optional>}``; ValueError saying what is wrong."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(body, dict) or set(body) - {"latch", "note"}:
        raise ValueError('the body is {"latch": <id>, "note": <text, optional>}')
    latch_id, note = body.get("latch"), body.get("note")
    if isinstance(latch_id, bool) or not isinstance(latch_id, int):
        raise ValueError('"latch" is the id of the latch to clear (GET /officer/latch/{lane})')
    if note is not None and not isinstance(note, str):
        raise ValueError('"note" is text')
    return latch_id, note

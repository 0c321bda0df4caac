"""The gate adapter as a process: ``quaygate gate-adapter --config lane.toml`` (or ``python -m gate_adapters``).

    settings file ──runtime/config.parse──► AdapterSettings (bad: "key: what is wrong", exit 2)
    build: token provider ─► VerifyClient ─► Outbox ─► (OfflineMode) ─► one LaneRuntime per lane ─► LaneWorker
    start: worker (re-sends what the outbox holds), MQTT source (paho thread), HTTP source (uvicorn thread)
    SIGTERM / SIGINT: sources stop taking reads ─► the worker finishes every read already taken ─►
                      the outbox and pass store are closed (WAL checkpointed) ─► exit 0

Rules:
1. Nothing is started before every setting, file and key is checked: a bad one is a plain message
   naming the key and exit status 2, never a traceback.
2. The secret comes from ``auth.client_secret_file`` or ``QUAYGATE_GATE_CLIENT_SECRET``, never from argv;
   so do device tokens (``token_sha256`` or ``token_file``, ``--mint-token`` makes one) and the MQTT
   password (``mqtt.password_file``).
3. Sources only parse and enqueue (``LaneWorker``); each lane has a worker thread and a bounded queue of
   its own (a lane stuck on the service holds up no other; a full queue refuses, lane.py rule 4). A lane's
   ``sources`` limit which inputs may feed it (``_SourceLanes``).
4. On stop, a request still without an answer stays pending in the outbox and is re-sent at the next
   start (``LaneRuntime.recover``): stopping loses nothing.
5. Keys of the adapter's own (``--make-keys`` makes each one configured and absent, mode 0600, never over
   an existing file): the DPoP key (``auth.dpop_key_file``, RFC 9449; only its thumbprint is printed) and
   the barrier signing key (``[barrier_signing] key_file``; ``--barrier-public-key`` prints the public JWK
   its controllers verify with). Neither is ever logged. Every private key file (these two and
   ``auth.private_key_file``) must be its owner's alone: outside dev one that group or others may read or
   write stops the adapter (exit 2, naming its key and ``chmod 600``), as ssh refuses such a key; in dev
   it is a warning (keys.py ``read_private_file``).
6. Barrier credentials (``token_file``, ``password_file``) are read, and TLS contexts built, before anything
   starts (``barrier_parts``), as is the HTTP source's TLS context (``server_tls_for``); a barrier left
   insecure by ``allow_insecure``, credentials in clear, an HTTP source in clear beyond this host
   (``[http] allow_insecure``), bearer tokens (no DPoP key) and an mqtt barrier without ``presence``
   (``gate.barrier.no_presence``, sinks.py rule 7) are each a warning at every start outside dev
   (config.py rules 5, 8, 9). Every secret file (the client secret, device and officer tokens, the MQTT
   password, barrier credentials) is checked as the private keys are: outside dev, one group or others
   may read or write, or another user owns, stops the adapter (config.py rule 10).
7. A lane latched for an officer (lane.py rule 9) is cleared by an officer only: over the HTTP source with
   an officer credential (``[[http.officers]]``, http_source.py), or here on the adapter's host (an
   officer's override of a refused truck goes over the HTTP source only: it asks the service, overrides.py)::

       quaygate gate-adapter --config ... --latches                      # each lane: latched? since when, why
       quaygate gate-adapter --config ... --clear-latch in-1 --latch-id 7 --officer "J. Peeters" [--note ...]

   The command works on the outbox file itself (the adapter running or not; SQLite lets both at it), so
   it must run as the user the outbox belongs to (whoever may write that file may clear a latch: the
   adapter's user, root by ``sudo -u``); it never creates an outbox. It is logged with the officer's
   name and the system user (latch.py rule 2).
8. ``[http] health_port``: a plain listener of its own answering ``GET /livez`` only (status, nothing about
   lanes), for a load balancer that cannot pass mutual TLS (http_source.py).
9. The pass store is sealed (offline.py rule 1), and so is the outbox's chain of offline decisions
   (outbox.py rule 10; under a key of its own purpose), under the adapter's **seal key** (``seal_key_file``,
   beside the outbox by default, seal.py): made at the first start (0600, never over a file), checked as a
   key file (rule 5), never in the stores. It rotates with nothing (review 172, finding 1): a new client
   secret, ``private_key_jwt`` key or DPoP key leaves the chain whole and every offline decision still to
   be reconciled, and the passes kept. An adapter from before kept both files under a key derived from its
   credential: until the seal key is settled (``settle``, once the outbox's chain holds under it), that
   credential's material is offered as ``previous`` and the files are carried over (outbox.py rule 12).
10. The outbox and the pass store are made 0600; outside dev one that group or others may write, or that
    another user owns (or whose folder is so), stops the adapter (exit 2, naming its key and the fix; also
    with ``--check``), as a key file does (datafiles.py); in dev it is a warning.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import signal
import ssl
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from gate_adapters.core.correlate import LaneCorrelator
from gate_adapters.core.reads import Read
from release_service.domain.gate_pass import OfflineLimits

from .runtime.client import AssertionSigner, ClientCredentials, TokenProvider, VerifyClient
from .runtime.command_signing import CommandSigner
from .runtime.config import (
    AdapterSettings,
    ConfigError,
    LaneSettings,
    barrier_risk,
    http_risk,
    load,
    mint_token,
    presence_risk,
    read_secret_file,
)
from .runtime.datafiles import DataFileExposed, check_data_file
from .runtime.dpop import DPoPKey
from .runtime.keys import KeyFileExposed, create_ec_key, private_key, read_private_file
from .runtime.lane import LaneRuntime, LaneWorker
from .runtime.latch import LatchDesk, LatchError
from .runtime.offline import STORE_RISK, OfflineMode, PassStore
from .runtime.outbox import OUTBOX_RISK, Outbox
from .runtime.overrides import OverrideDesk
from .runtime.seal import SealKey, check_seal_key, key_material, seal_key, secret_material, settle
from .runtime.sinks import (
    BarrierPresence,
    BarrierSink,
    BearerAuth,
    HttpBarrier,
    LogBarrier,
    MqttBarrier,
    status_topic,
)

log = logging.getLogger("gate_adapters.adapter")

SECRET_ENV = "QUAYGATE_GATE_CLIENT_SECRET"  # noqa: S105 - the variable's name, not a secret


class _SourceLanes:
    """What one source sees of the worker: only the lanes that list it (rule 3)."""

    def __init__(self, worker: LaneWorker, lanes: set[tuple[str, str]]) -> None:
        self._worker = worker
        self.lanes = {k: v for k, v in worker.lanes.items() if k in lanes}

    def has_lane(self, terminal: str, lane: str) -> bool:
        return (terminal, lane) in self.lanes

    def submit(self, terminal: str, read: Read) -> None:
        if (terminal, read.lane) not in self.lanes:
            raise KeyError(f"no lane {read.lane!r} at terminal {terminal!r} for this source")
        self._worker.submit(terminal, read)


@dataclass
class Adapter:
    settings: AdapterSettings
    worker: LaneWorker
    outbox: Outbox
    passes: PassStore | None = None
    mqtt: Any = None  # MqttSource
    http_server: Any = None  # uvicorn.Server
    health_server: Any = None  # uvicorn.Server: the liveness listener (rule 8)
    latches: LatchDesk | None = None  # rule 7
    _threads: list[threading.Thread] = field(default_factory=list)

    def alive(self) -> bool:
        """``/livez``: every lane's thread runs, the HTTP source serves, and the MQTT source's network
        thread runs (review 109). A broker outage is not a death (mqtt_source.py rule 9, review 116): a
        restart would not end it and would take the HTTP lanes down too; ``/healthz`` shows it (``mqtt``)."""
        serving = self.http_server is None or (self.http_server.started and not self.http_server.should_exit)
        mqtt_up = self.mqtt is None or self.mqtt.alive()
        return self.worker.alive() and bool(serving) and bool(mqtt_up)

    def start(self) -> None:
        self.worker.start()
        if self.mqtt is not None:
            self.mqtt.start()
        for server, name in ((self.http_server, "gate-http-source"), (self.health_server, "gate-http-health")):
            if server is None:
                continue
            t = threading.Thread(target=server.run, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("gate.adapter.started", extra={"terminal": self.settings.terminal,
                                                "lanes": [ln.lane for ln in self.settings.lanes]})

    def stop(self) -> None:
        """Sources first (no new reads), then the worker (finishes what was taken), then the files."""
        for server in (self.http_server, self.health_server):
            if server is not None:
                server.should_exit = True
        for t in self._threads:
            t.join(timeout=10)
        if self.mqtt is not None:
            self.mqtt.stop()
        self.worker.stop(timeout=60)
        pending = len(self.outbox.pending())
        self.outbox.close()
        if self.passes is not None:
            self.passes.close()
        log.info("gate.adapter.stopped", extra={"pending": pending})


def _read_secret(settings: AdapterSettings) -> str:
    auth = settings.auth
    if auth.client_secret_file is not None:
        return read_secret_file(auth.client_secret_file, "auth.client_secret_file", strict=not settings.dev)
    secret = os.environ.get(SECRET_ENV, "").strip()
    if not secret:
        raise ConfigError("auth.client_secret_file",
                          f"give client_secret_file or private_key_file, or set {SECRET_ENV}")
    return secret


def source_tls_for(settings: AdapterSettings) -> ssl.SSLContext | None:
    """Rule 6: the HTTP source's TLS context, its files read now (``ConfigError`` names the key)."""
    if settings.http is None:
        return None
    from .runtime.http_source import server_tls_for

    return server_tls_for(settings.http)


def _source_credentials(settings: AdapterSettings) -> tuple[Any, Any, Any]:
    """The sources' credentials, their files read now (``ConfigError`` names the key): the MQTT client
    (its password and TLS context), the HTTP devices and the officers (their tokens); None (devices),
    () (officers) for a source not set."""
    mqtt_client = devices = None
    officers: Any = ()
    strict = not settings.dev
    if settings.mqtt is not None:
        from .runtime.mqtt_source import client_for

        mqtt_client = client_for(settings.mqtt, strict=strict)
    if settings.http is not None:
        from .runtime.http_source import devices_for, officers_for

        devices = devices_for(settings.http, strict=strict)
        officers = officers_for(settings.http, devices, strict=strict)
    return mqtt_client, devices, officers


def _key_file_error(key: str, path: Path, exc: Exception) -> ConfigError:
    """A key file we cannot use, named by its settings key; never a word of its content."""
    if isinstance(exc, FileNotFoundError):
        return ConfigError(key, f"{path} does not exist (make it: quaygate gate-adapter --config <this file> "
                                f"--make-keys)")
    if isinstance(exc, OSError):
        return ConfigError(key, f"cannot read {path}: {exc.strerror or exc}")
    return ConfigError(key, str(exc) or "not a usable private key")


def dpop_key_for(settings: AdapterSettings) -> DPoPKey | None:
    """Rule 5: the DPoP key, when ``auth.dpop`` (config.py rule 8)."""
    path = settings.auth.dpop_key_file
    if not settings.auth.dpop or path is None:
        return None
    try:
        return DPoPKey.load(path, strict=not settings.dev)
    except (OSError, ValueError) as exc:
        raise _key_file_error("auth.dpop_key_file", path, exc) from None


def tokens_for(settings: AdapterSettings) -> TokenProvider:
    return client_for(settings)[0]


def client_for(settings: AdapterSettings) -> tuple[TokenProvider, bytes]:
    """The gate token provider, and the secret material an adapter from before its seal key sealed its files
    under (rule 9, offered only while that key is pending): the client credential (the private_key_jwt key,
    or the client secret) and, when set, the DPoP key, each read once."""
    auth, service = settings.auth, settings.service
    token_url = service.base_url + "/oauth2/token"
    dpop = dpop_key_for(settings)
    dpop_part = [] if dpop is None else [("dpop_key", dpop.secret_material())]
    if auth.private_key_file is not None:
        try:
            raw = read_private_file(auth.private_key_file, strict=not settings.dev)
        except OSError as exc:
            raise ConfigError("auth.private_key_file", f"cannot read {auth.private_key_file}: "
                                                       f"{exc.strerror or exc}") from None
        except KeyFileExposed as exc:
            raise ConfigError("auth.private_key_file", str(exc)) from None
        try:
            signer = AssertionSigner(auth.client_id, raw, auth.audience or token_url, kid=auth.key_id,
                                     alg=auth.algorithm)
            material = key_material(private_key(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError("auth.private_key_file", str(exc) or "not a usable private key") from None
        return (ClientCredentials(token_url, auth.client_id, None, signer=signer, dpop=dpop, scope=auth.scope,
                                  timeout=service.timeout),
                secret_material([("private_key_jwt", material), *dpop_part]))
    secret = _read_secret(settings)
    return (ClientCredentials(token_url, auth.client_id, secret, dpop=dpop, scope=auth.scope,
                              timeout=service.timeout),
            secret_material([("client_secret", secret.encode()), *dpop_part]))


@dataclass(frozen=True)
class BarrierParts:
    """Rule 6: what the barriers need, read before anything starts: the command signer, and per http
    barrier lane its credentials and TLS context."""

    signer: CommandSigner | None
    http: dict[str, tuple[httpx.Auth | None, ssl.SSLContext | None]]


def barrier_signer_for(settings: AdapterSettings) -> CommandSigner | None:
    s = settings.barrier_signing
    if s is None:
        return None
    try:
        return CommandSigner.load(s.key_file, terminal=settings.terminal, kid=s.key_id, lifetime=s.lifetime_seconds,
                                  strict=not settings.dev)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _key_file_error("barrier_signing.key_file", s.key_file, exc) from None


def barrier_parts(settings: AdapterSettings) -> BarrierParts:
    http: dict[str, tuple[httpx.Auth | None, ssl.SSLContext | None]] = {}
    for i, ln in enumerate(settings.lanes):
        b, key = ln.barrier, f"lanes[{i}].barrier"
        if b.kind != "http":
            continue
        auth: httpx.Auth | None = None
        if b.token_file is not None:
            auth = BearerAuth(read_secret_file(b.token_file, f"{key}.token_file", strict=not settings.dev))
        elif b.username is not None and b.password_file is not None:
            auth = httpx.BasicAuth(b.username, read_secret_file(b.password_file, f"{key}.password_file",
                                                                strict=not settings.dev))
        tls = None
        if (b.url or "").startswith("https://"):  # the system's CAs unless ca_file; the host name checked
            try:
                tls = ssl.create_default_context(cafile=None if b.ca_file is None else str(b.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"{key}.ca_file", f"cannot use {b.ca_file}: {exc.strerror or exc}") from None
            if b.cert_file is not None:
                try:
                    tls.load_cert_chain(str(b.cert_file), None if b.key_file is None else str(b.key_file))
                except (OSError, ssl.SSLError) as exc:
                    raise ConfigError(f"{key}.cert_file", f"cannot use {b.cert_file} with {b.key_file}: "
                                                          f"{exc.strerror or exc}") from None
        http[ln.lane] = (auth, tls)
    return BarrierParts(barrier_signer_for(settings), http)


def _warn_insecure(settings: AdapterSettings, parts: BarrierParts) -> None:
    """Rule 6: what the settings allow but an attacker on the network could use, said at every start."""
    if settings.dev:
        return
    # The reason is in the message itself: the plain log format shows no ``extra``.
    if not settings.auth.dpop:
        log.warning("gate.adapter.bearer_tokens: no auth.dpop_key_file, so a gate token copied off this host "
                    "works from anywhere until it expires (docs/gate-adapter.md, DPoP)")
    for ln in settings.lanes:
        risk = barrier_risk(ln.barrier, signed=parts.signer is not None)
        if risk is not None:
            log.warning("gate.barrier.insecure: lane %s: %s", ln.lane, risk[0], extra={"lane": ln.lane})
    for ln in settings.lanes:  # not a risk to the gate's security, but to its trucks: said as loudly
        no_presence = presence_risk(ln.barrier, _status_topic(settings, ln))
        if no_presence is not None:
            log.warning("gate.barrier.no_presence: lane %s: %s", ln.lane, no_presence, extra={"lane": ln.lane})
    http_in_clear = None if settings.http is None else http_risk(settings.http)
    if http_in_clear is not None:  # only with [http] allow_insecure = true: else the settings were refused
        log.warning("gate.source.http.insecure: %s (allow_insecure = true)", http_in_clear)


def _status_topic(settings: AdapterSettings, lane: LaneSettings) -> str:
    return status_topic(settings.mqtt.prefix if settings.mqtt is not None else "quaygate", settings.terminal,
                        lane.lane)


def barrier_presence_for(settings: AdapterSettings) -> BarrierPresence | None:
    """The controllers' presence (sinks.py rule 7) for the lanes whose mqtt barrier sets ``presence``."""
    lanes = [ln.lane for ln in settings.lanes if ln.barrier.kind == "mqtt" and ln.barrier.presence]
    if not lanes or settings.mqtt is None:
        return None
    return BarrierPresence(settings.mqtt.prefix, settings.terminal, lanes)


def _sink(lane: LaneSettings, settings: AdapterSettings, mqtt_client: Any, parts: BarrierParts,
          presence: BarrierPresence | None = None) -> BarrierSink:
    b = lane.barrier
    if b.kind == "http":
        assert b.url is not None
        auth, tls = parts.http[lane.lane]
        return HttpBarrier(b.url, timeout=b.timeout, signer=parts.signer, auth=auth, tls=tls)
    if b.kind == "mqtt":
        assert settings.mqtt is not None
        return MqttBarrier(mqtt_client, settings.terminal, prefix=settings.mqtt.prefix, signer=parts.signer,
                           timeout=b.timeout, presence=presence if b.presence else None)
    return LogBarrier()


def make_keys(settings: AdapterSettings) -> list[str]:
    """Rule 5: each configured key file that is absent, made (0600); what was done, one line each."""
    done = []
    path = settings.auth.dpop_key_file
    if path is not None:
        try:
            created, jkt = DPoPKey.create(path, strict=not settings.dev)
        except (OSError, ValueError) as exc:
            raise _key_file_error("auth.dpop_key_file", path, exc) from None
        done.append(f"auth.dpop_key_file: {'made' if created else 'kept the existing'} {path} "
                    f"(EC P-256, thumbprint {jkt})")
    if settings.barrier_signing is not None:
        path = settings.barrier_signing.key_file
        try:
            existed = not create_ec_key(path)
        except OSError as exc:
            raise _key_file_error("barrier_signing.key_file", path, exc) from None
        signer = barrier_signer_for(settings)
        assert signer is not None
        done.append(f"barrier_signing.key_file: {'kept the existing' if existed else 'made'} {path} "
                    f"({signer.alg}, kid {signer.kid}); its public JWK: --barrier-public-key")
    return done or ["nothing to make: set auth.dpop_key_file or [barrier_signing] key_file"]


def check_data_files(settings: AdapterSettings) -> None:
    """Rule 10: the outbox and the pass store, as far as they are there (``ConfigError`` names the key)."""
    files = [("outbox", settings.outbox, OUTBOX_RISK)]
    if settings.offline.enabled and settings.offline.passes is not None:
        files.append(("offline.passes", settings.offline.passes, STORE_RISK))
    for key, path, risk in files:
        try:
            check_data_file(path, strict=not settings.dev, risk=risk)
        except DataFileExposed as exc:
            raise ConfigError(key, str(exc)) from None


def seal_key_for(settings: AdapterSettings, *, make: bool = True) -> SealKey | None:
    """Rule 9: the seal key (made when absent, unless not ``make``: then None), or ``ConfigError`` naming
    ``seal_key_file``."""
    path = settings.seal_key
    try:
        if not make:
            check_seal_key(path, strict=not settings.dev)
            return None
        return seal_key(path, strict=not settings.dev)
    except OSError as exc:
        raise ConfigError("seal_key_file", f"cannot use {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # KeyFileExposed too: its message names the file and chmod 600
        raise ConfigError("seal_key_file", str(exc)) from None


def build(settings: AdapterSettings) -> Adapter:
    """Rule 1: every file and key is read here, before anything starts (ConfigError otherwise)."""
    tokens, credential = client_for(settings)
    # The service's clients (token and verify, client.py) keep httpx's trust_env on purpose, unlike the
    # barriers' (sinks.py rule 4): a terminal may reach the service only through its egress proxy
    # (HTTPS_PROXY, NO_PROXY). Outside dev the service is https:// (config.py rule 4), so such a proxy relays
    # TLS it cannot read (CONNECT): it sees the service's host, never a token, a DPoP proof or a decision.
    client = VerifyClient(settings.service.base_url, tokens, timeout=settings.service.timeout,
                          attempts=settings.service.attempts, max_retry_after=settings.service.max_retry_after)
    barriers = barrier_parts(settings)
    tls = source_tls_for(settings)
    mqtt_client, devices, officers = _source_credentials(settings)  # every secret read before a file is made
    _warn_insecure(settings, barriers)
    strict = not settings.dev
    check_data_files(settings)  # rule 10: both refused before either is made
    key = seal_key_for(settings)
    assert key is not None
    previous = None if key.pending is None else credential  # rule 9: an adapter from before, carried over
    try:
        outbox = Outbox(settings.outbox, strict=strict, secret=key.secret,  # its offline decisions sealed (rule 9)
                        previous=previous)
    except DataFileExposed as exc:
        raise ConfigError("outbox", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - sqlite3 / OSError: a path we cannot use
        raise ConfigError("outbox", f"cannot open {settings.outbox}: {exc}") from None
    offline = passes = None
    if settings.offline.enabled:
        assert settings.offline.passes is not None
        try:
            passes = PassStore(settings.offline.passes, issuer=settings.service.issuer, terminal=settings.terminal,
                               secret=key.secret, previous=previous, strict=strict)
        except Exception as exc:  # noqa: BLE001
            outbox.close()
            if isinstance(exc, DataFileExposed):
                raise ConfigError("offline.passes", str(exc)) from None
            raise ConfigError("offline.passes", f"cannot open {settings.offline.passes}: {exc}") from None
        o = settings.offline
        offline = OfflineMode(client, passes, outbox, refresh_seconds=o.refresh_seconds,
                              reconcile_seconds=o.reconcile_seconds,
                              limits=OfflineLimits(store_max_age=timedelta(seconds=o.store_max_age_seconds),
                                                   ban_list_max_age=timedelta(seconds=o.ban_list_max_age_seconds)))
    if key.pending is not None and outbox.tampered is None:  # rule 9: the chain holds under the seal key
        try:
            settle(key)
        except (OSError, ValueError) as exc:
            outbox.close()
            if passes is not None:
                passes.close()
            raise ConfigError("seal_key_file", f"cannot keep {settings.seal_key}: {exc}") from None
    mqtt_source = None
    presence = barrier_presence_for(settings)  # sinks.py rule 7: heard on the MQTT source's connection
    lanes = [
        LaneRuntime(settings.terminal, ln.lane, ln.direction, ln.mode,  # type: ignore[arg-type]
                    LaneCorrelator(ln.lane, settings.terminal, ln.direction, window_seconds=ln.window_seconds,
                                   require=ln.require, face_wait_seconds=ln.face_wait_seconds,
                                   max_pending=ln.max_pending),
                    client, outbox, _sink(ln, settings, mqtt_client, barriers, presence),
                    badge_scheme=settings.badge_scheme,
                    act_seconds=settings.act_seconds, retry_seconds=settings.retry_seconds, offline=offline,
                    read_age_seconds=ln.read_age_seconds, clock_slack_seconds=ln.clock_slack_seconds)
        for ln in settings.lanes
    ]
    worker = LaneWorker(lanes, tick_seconds=settings.tick_seconds, queue_size=settings.queue_size,
                        queue_sizes={(settings.terminal, ln.lane): ln.queue_size for ln in settings.lanes})
    fed_by = {name: {(settings.terminal, ln.lane) for ln in settings.lanes if name in ln.sources}
              for name in ("http", "mqtt")}
    if settings.mqtt is not None:
        from .runtime.mqtt_source import MqttSource

        m = settings.mqtt
        mqtt_source = MqttSource(_SourceLanes(worker, fed_by["mqtt"]), host=m.host, port=m.port,  # type: ignore[arg-type]
                                 prefix=m.prefix, client=mqtt_client, keepalive=m.keepalive,
                                 connection_grace=m.connection_grace_seconds,
                                 trusted_face_matcher=m.trusted_face_matcher, presence=presence)
    latches = LatchDesk(outbox, [ln.lane for ln in settings.lanes])
    adapter = Adapter(settings, worker, outbox, passes, mqtt_source, latches=latches)
    if settings.http is not None:
        import uvicorn

        from .runtime.http_source import create_health_app, create_source_app, lane_health

        source = mqtt_source
        health = lane_health(worker, None if source is None else lambda: source.dropped)  # every lane's load
        app = create_source_app(_SourceLanes(worker, fed_by["http"]), settings.terminal,  # type: ignore[arg-type]
                                devices=devices, health=health, officers=officers, latches=latches,
                                overrides=OverrideDesk(client, outbox, [ln.lane for ln in settings.lanes],
                                                       store=passes),  # its time seen: overrides.py rule 6
                                alive=adapter.alive, broker=None if source is None else source.broker)
        # No proxy stands in front of an adapter (the devices and officers connect to it): X-Forwarded-*
        # is never believed, whatever uvicorn's FORWARDED_ALLOW_IPS says, so nobody on the camera network
        # passes for this host or for TLS (the officer check, runtime/http_source.py).
        config = uvicorn.Config(app, host=settings.http.host, port=settings.http.port, log_level="warning",
                                access_log=False, lifespan="off", proxy_headers=False,
                                ssl_context_factory=None if tls is None else lambda _config, _default: tls)
        adapter.http_server = uvicorn.Server(config)
        if settings.http.health_port is not None:  # rule 8: plain HTTP, /livez only
            adapter.health_server = uvicorn.Server(uvicorn.Config(
                create_health_app(adapter.alive), host=settings.http.health_host or settings.http.host,
                port=settings.http.health_port, log_level="warning", access_log=False, lifespan="off",
                proxy_headers=False))
    return adapter


def configure_logging(level: str) -> None:
    """Our lines on stderr at ``level``; httpx and httpcore only from WARNING (review 173): httpx logs each
    request's URL at INFO ("HTTP Request: POST ..."), every verify and every barrier command, a line per
    truck that says nothing our own lines do not, and its DEBUG lines are its internals."""
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run(settings: AdapterSettings, stop: threading.Event | None = None) -> int:
    """Build, start, wait for SIGTERM/SIGINT (or ``stop``), stop cleanly."""
    stop = stop or threading.Event()
    adapter = build(settings)

    def on_signal(signum: int, frame: Any) -> None:
        log.info("gate.adapter.stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        adapter.start()
    except OSError as exc:  # the broker or the HTTP port: say which, stop what started
        stop.set()
        adapter.stop()
        print(f"gate-adapter: cannot start: {exc}", file=sys.stderr)
        return 1
    while not stop.wait(0.5):
        if adapter.http_server is not None and not all(t.is_alive() for t in adapter._threads):
            h = settings.http
            ports = " or ".join(str(p) for p in (h.port, h.health_port) if p is not None)  # type: ignore[union-attr]
            print(f"gate-adapter: the HTTP source stopped (is port {ports} free?)", file=sys.stderr)
            adapter.stop()
            return 1
    adapter.stop()
    return 0


def latch_command(settings: AdapterSettings, args: argparse.Namespace) -> int:
    """Rule 7: ``--latches`` and ``--clear-latch`` on the outbox file itself."""
    path = settings.outbox
    try:
        owner = path.stat().st_uid
    except FileNotFoundError:
        if args.latches:
            print(f"no outbox at {path} yet: no lane is latched")
            return 0
        raise ConfigError("outbox", f"{path} does not exist: nothing is latched here") from None
    me = os.geteuid()
    if owner != me:  # root's WAL files beside the adapter's outbox would lock the adapter out of it
        name = _user_name(owner)
        raise ConfigError("outbox", f"{path} belongs to {name}: run this as that user (sudo -u {name} quaygate "
                                    f"gate-adapter ...)")
    try:
        box = Outbox(path, strict=not settings.dev)
    except DataFileExposed as exc:
        raise ConfigError("outbox", str(exc)) from None
    desk = LatchDesk(box, [ln.lane for ln in settings.lanes])
    try:
        if args.latches:
            for lane in sorted(desk.lanes):
                view = desk.status(lane)
                print(f"{lane}: not latched" if view is None else f"{lane}: " + json.dumps(view.as_json()))
            return 0
        who = f"{args.officer.strip()} (cli, {_user_name(me)}"
        who += f", sudo by {os.environ['SUDO_USER']})" if os.environ.get("SUDO_USER") else ")"
        try:
            cleared = desk.clear(args.clear_latch, args.latch_id, by=who, note=args.note)
        except (LatchError, ValueError) as exc:
            print(f"gate-adapter: latch not cleared: {exc}", file=sys.stderr)
            return 1
        print(f"{cleared.lane}: latch {cleared.id} cleared by {cleared.cleared_by}")
        return 0
    finally:
        desk.outbox.close()


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="quaygate gate-adapter", description="Run a terminal's gate adapter: "
                                "read sources, correlate per lane, verify, drive the barriers.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="the settings file (TOML; see docs/gate-adapter.example.toml)")
    what.add_argument("--mint-token", action="store_true",
                      help="print a new device token and the token_sha256 its [[http.devices]] entry holds")
    p.add_argument("--check", action="store_true", help="check the settings and the key files, start nothing")
    p.add_argument("--make-keys", action="store_true",
                   help="make each key file the settings name and that is absent (auth.dpop_key_file, "
                        "[barrier_signing] key_file), never over an existing one; start nothing")
    p.add_argument("--barrier-public-key", action="store_true",
                   help="print the public JWK barrier controllers verify signed commands with; start nothing")
    p.add_argument("--latches", action="store_true",
                   help="show each lane's latch (held for an officer: since when, why, what it held); start nothing")
    p.add_argument("--clear-latch", metavar="LANE",
                   help="as the officer at LANE, clear its latch (with --latch-id and --officer); start nothing")
    p.add_argument("--latch-id", type=int, help="the latch to clear, as --latches shows it")
    p.add_argument("--officer", help="the officer who clears the latch (logged and kept with it)")
    p.add_argument("--note", help="why the officer clears it (kept with the latch)")
    args = p.parse_args(argv)
    actions = ("check", "make_keys", "barrier_public_key", "latches", "clear_latch")
    if args.mint_token and any(getattr(args, a) for a in actions):
        p.error("--check, --make-keys, --barrier-public-key, --latches and --clear-latch go with --config")
    if args.clear_latch is not None and (args.latch_id is None or not (args.officer or "").strip()):
        p.error("--clear-latch needs --latch-id (see --latches) and --officer")
    if args.clear_latch is None and (args.latch_id is not None or args.officer or args.note):
        p.error("--latch-id, --officer and --note go with --clear-latch")
    if args.mint_token:
        token, digest = mint_token()
        print(f"token: {token}\ntoken_sha256 = \"{digest}\"")  # the token is shown once, kept nowhere
        return 0
    try:
        settings = load(args.config)
        if args.make_keys:
            print("\n".join(make_keys(settings)))
            return 0
        if args.latches or args.clear_latch is not None:
            return latch_command(settings, args)
        if args.barrier_public_key:
            signer = barrier_signer_for(settings)
            if signer is None:
                raise ConfigError("barrier_signing", "is not set: no command is signed")
            print(json.dumps(signer.public_jwk(), indent=2))
            return 0
        if args.check:
            tokens_for(settings)
            check_data_files(settings)
            seal_key_for(settings, make=False)
            _source_credentials(settings)
            barrier_parts(settings)
            source_tls_for(settings)
            print(f"settings OK: terminal {settings.terminal}, {len(settings.lanes)} lanes")
            return 0
        configure_logging(settings.log_level)
        return run(settings)
    except ConfigError as exc:
        print(f"gate-adapter: bad settings: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

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
3. Sources only parse and enqueue (``LaneWorker``); one worker thread drives every lane. A lane's
   ``sources`` limit which inputs may feed it (``_SourceLanes``).
4. On stop, a request still without an answer stays pending in the outbox and is re-sent at the next
   start (``LaneRuntime.recover``): stopping loses nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from gate_adapters.core.correlate import LaneCorrelator
from gate_adapters.core.reads import Read
from release_service.domain.gate_pass import OfflineLimits

from .runtime.client import AssertionSigner, ClientCredentials, TokenProvider, VerifyClient
from .runtime.config import AdapterSettings, ConfigError, LaneSettings, load, mint_token, read_secret_file
from .runtime.lane import LaneRuntime, LaneWorker
from .runtime.offline import OfflineMode, PassStore
from .runtime.outbox import Outbox
from .runtime.sinks import BarrierSink, HttpBarrier, LogBarrier, MqttBarrier

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
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.worker.start()
        if self.mqtt is not None:
            self.mqtt.start()
        if self.http_server is not None:
            t = threading.Thread(target=self.http_server.run, name="gate-http-source", daemon=True)
            t.start()
            self._threads.append(t)
        log.info("gate.adapter.started", extra={"terminal": self.settings.terminal,
                                                "lanes": [ln.lane for ln in self.settings.lanes]})

    def stop(self) -> None:
        """Sources first (no new reads), then the worker (finishes what was taken), then the files."""
        if self.http_server is not None:
            self.http_server.should_exit = True
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
        return read_secret_file(auth.client_secret_file, "auth.client_secret_file")
    secret = os.environ.get(SECRET_ENV, "").strip()
    if not secret:
        raise ConfigError("auth.client_secret_file",
                          f"give client_secret_file or private_key_file, or set {SECRET_ENV}")
    return secret


def _source_credentials(settings: AdapterSettings) -> tuple[Any, Any]:
    """The sources' credentials, their files read now (``ConfigError`` names the key): the MQTT client
    (its password and TLS context) and the HTTP devices (their tokens); None for a source not set."""
    mqtt_client = devices = None
    if settings.mqtt is not None:
        from .runtime.mqtt_source import client_for

        mqtt_client = client_for(settings.mqtt)
    if settings.http is not None:
        from .runtime.http_source import devices_for

        devices = devices_for(settings.http)
    return mqtt_client, devices


def tokens_for(settings: AdapterSettings) -> TokenProvider:
    auth, service = settings.auth, settings.service
    token_url = service.base_url + "/oauth2/token"
    if auth.private_key_file is not None:
        try:
            raw = auth.private_key_file.read_bytes()
        except OSError as exc:
            raise ConfigError("auth.private_key_file", f"cannot read {auth.private_key_file}: "
                                                       f"{exc.strerror or exc}") from None
        try:
            signer = AssertionSigner(auth.client_id, raw, auth.audience or token_url, kid=auth.key_id,
                                     alg=auth.algorithm)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError("auth.private_key_file", str(exc) or "not a usable private key") from None
        return ClientCredentials(token_url, auth.client_id, None, signer=signer, scope=auth.scope,
                                 timeout=service.timeout)
    return ClientCredentials(token_url, auth.client_id, _read_secret(settings), scope=auth.scope,
                             timeout=service.timeout)


def _sink(lane: LaneSettings, settings: AdapterSettings, mqtt_client: Any) -> BarrierSink:
    b = lane.barrier
    if b.kind == "http":
        assert b.url is not None
        return HttpBarrier(b.url, timeout=b.timeout)
    if b.kind == "mqtt":
        assert settings.mqtt is not None
        return MqttBarrier(mqtt_client, settings.terminal, prefix=settings.mqtt.prefix)
    return LogBarrier()


def build(settings: AdapterSettings) -> Adapter:
    """Rule 1: every file and key is read here, before anything starts (ConfigError otherwise)."""
    tokens = tokens_for(settings)
    client = VerifyClient(settings.service.base_url, tokens, timeout=settings.service.timeout,
                          attempts=settings.service.attempts)
    try:
        outbox = Outbox(settings.outbox)
    except Exception as exc:  # noqa: BLE001 - sqlite3 / OSError: a path we cannot use
        raise ConfigError("outbox", f"cannot open {settings.outbox}: {exc}") from None
    offline = passes = None
    if settings.offline.enabled:
        assert settings.offline.passes is not None
        try:
            passes = PassStore(settings.offline.passes, issuer=settings.service.issuer, terminal=settings.terminal)
        except Exception as exc:  # noqa: BLE001
            outbox.close()
            raise ConfigError("offline.passes", f"cannot open {settings.offline.passes}: {exc}") from None
        o = settings.offline
        offline = OfflineMode(client, passes, outbox, refresh_seconds=o.refresh_seconds,
                              reconcile_seconds=o.reconcile_seconds,
                              limits=OfflineLimits(store_max_age=timedelta(seconds=o.store_max_age_seconds),
                                                   ban_list_max_age=timedelta(seconds=o.ban_list_max_age_seconds)))
    mqtt_source = None
    try:
        mqtt_client, devices = _source_credentials(settings)
    except ConfigError:
        outbox.close()
        raise
    lanes = [
        LaneRuntime(settings.terminal, ln.lane, ln.direction, ln.mode,  # type: ignore[arg-type]
                    LaneCorrelator(ln.lane, settings.terminal, ln.direction, window_seconds=ln.window_seconds,
                                   require=ln.require, face_wait_seconds=ln.face_wait_seconds),
                    client, outbox, _sink(ln, settings, mqtt_client), badge_scheme=settings.badge_scheme,
                    act_seconds=settings.act_seconds, retry_seconds=settings.retry_seconds, offline=offline)
        for ln in settings.lanes
    ]
    worker = LaneWorker(lanes, tick_seconds=settings.tick_seconds)
    fed_by = {name: {(settings.terminal, ln.lane) for ln in settings.lanes if name in ln.sources}
              for name in ("http", "mqtt")}
    if settings.mqtt is not None:
        from .runtime.mqtt_source import MqttSource

        m = settings.mqtt
        mqtt_source = MqttSource(_SourceLanes(worker, fed_by["mqtt"]), host=m.host, port=m.port,  # type: ignore[arg-type]
                                 prefix=m.prefix, client=mqtt_client, keepalive=m.keepalive,
                                 trusted_face_matcher=m.trusted_face_matcher)
    http_server = None
    if settings.http is not None:
        import uvicorn

        from .runtime.http_source import create_source_app

        app = create_source_app(_SourceLanes(worker, fed_by["http"]), settings.terminal,  # type: ignore[arg-type]
                                devices=devices)
        config = uvicorn.Config(app, host=settings.http.host, port=settings.http.port, log_level="warning",
                                access_log=False, lifespan="off")
        http_server = uvicorn.Server(config)
    return Adapter(settings, worker, outbox, passes, mqtt_source, http_server)


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
        if adapter.http_server is not None and not any(t.is_alive() for t in adapter._threads):
            print(f"gate-adapter: the HTTP source stopped (is port {settings.http.port} free?)",  # type: ignore[union-attr]
                  file=sys.stderr)
            adapter.stop()
            return 1
    adapter.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="quaygate gate-adapter", description="Run a terminal's gate adapter: "
                                "read sources, correlate per lane, verify, drive the barriers.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="the settings file (TOML; see docs/gate-adapter.example.toml)")
    what.add_argument("--mint-token", action="store_true",
                      help="print a new device token and the token_sha256 its [[http.devices]] entry holds")
    p.add_argument("--check", action="store_true", help="check the settings and the key files, start nothing")
    args = p.parse_args(argv)
    if args.mint_token:
        token, digest = mint_token()
        print(f"token: {token}\ntoken_sha256 = \"{digest}\"")  # the token is shown once, kept nowhere
        return 0
    try:
        settings = load(args.config)
        if args.check:
            tokens_for(settings)
            _source_credentials(settings)
            print(f"settings OK: terminal {settings.terminal}, {len(settings.lanes)} lanes")
            return 0
        logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
        return run(settings)
    except ConfigError as exc:
        print(f"gate-adapter: bad settings: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

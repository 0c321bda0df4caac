"""Reads over MQTT: subscribe to each lane's topics, parse with ``gate_adapters.sources.mqtt``, feed.

Topics: ``<prefix>/<terminal>/<lane>/#`` per configured lane, QoS 1 (see ``sources/mqtt.py`` for the
read topics). Rules:
1. The paho network thread only parses and enqueues (``LaneWorker.submit``): a slow service must not
   stall the broker connection (keep-alives, other lanes).
2. ``.../barrier`` is our own output (``MqttBarrier``) under the same ``#``: skipped, never parsed; so is
   ``.../barrier/status``, a barrier controller's own (sinks.py rule 7: ``presence`` hears it, when set).
3. A refused payload is logged as ``gate.source.refused.mqtt`` with the plain reason; a read for a
   lane we do not run is logged as ``gate.source.unknown_lane`` and dropped.
4. Subscriptions are (re)made in ``on_connect``, so a broker restart does not silence a lane.
5. A face match result is dropped (``gate.source.refused.face_match``) unless this source is a trusted
   face matcher (config rule 6): anyone the broker lets publish on ``.../face`` could claim a match.
6. A read for a lane whose queue is full (``LaneBusy``: a flood, or a lane stuck on the service) is
   dropped, never waited for (paho's network thread serves every lane and the keep-alives), and counted
   per lane in ``dropped`` (exact). Its log is rate-limited per lane (``DropLog``): the first drop is
   logged ``gate.source.mqtt.lane_busy`` at once, then at most one line per ``drop_log_seconds`` says how
   many were dropped since the last (a thread of ours writes the last one once the flood is over, and
   ``stop`` whatever is left): a flood of reads must not become a flood of log lines that fills the disk
   and buries the lines that matter.
7. Who may publish on which lane's topics is the broker's ACL, not ours (docs/gate-adapter.md); we give
   the broker our credentials and check its certificate (``client_for``).
8. Nothing one message carries ends paho's network thread (review 109: a 5000-digit number did, and with
   it every lane's reads and the MQTT barrier commands): ``handle`` turns any exception a message causes
   beyond a refusal into a ``gate.source.mqtt.failed`` line (with the traceback: it is a bug of ours) and
   a count (``failed``, in ``/healthz``), and the client is set to ``suppress_exceptions`` so an exception in any other
   callback is logged by paho, not raised out of its loop.
9. ``alive`` (``/livez``) is false when the network thread is gone, and only then: a restart would not
   bring the broker back, and would take the HTTP-fed lanes and the officer's routes down with it
   (review 116: an orchestrator restarted the adapter in a loop through a broker outage). The broker
   connection is ``/healthz``'s (``broker``): ``down`` once it has been lost longer than
   ``connection_grace`` seconds (``[mqtt] connection_grace_seconds``; a broker restart is ridden out:
   paho reconnects).
10. ``presence`` (``BarrierPresence``, sinks.py rule 7, for the lanes whose mqtt barrier sets ``presence =
    true``): its status topics are subscribed (QoS 1) with the reads' at each connect, heard by a callback
    of their own, and every status is forgotten at each connect and disconnect (what a controller said
    before counts for nothing until the broker says it again, as it does at once for a retained status).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gate_adapters.core.reads import Read, SourceError
from gate_adapters.sources import generic_json
from gate_adapters.sources import mqtt as mqtt_format

from .config import ConfigError, MqttSettings, read_secret_file
from .lane import LaneBusy, LaneWorker
from .sinks import BarrierPresence

log = logging.getLogger("gate_adapters.source.mqtt")


def new_client(client_id: str = "", *, username: str | None = None, password: str | None = None) -> mqtt.Client:
    """A paho client with the v2 callback API (the v1 API is deprecated in paho 2)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if username is not None:
        client.username_pw_set(username, password)
    return client


def client_for(m: MqttSettings, *, strict: bool = True) -> mqtt.Client:
    """The client the settings describe, its files read now, before anything starts (``ConfigError``
    names the key): the password (``strict``: outside dev, a file not the adapter's alone is refused,
    config.py rule 10), and with ``tls`` a context that checks the broker's certificate and host name
    against ``ca_file`` (or the system's CAs) and shows our ``cert_file``."""
    password = None
    if m.password_file is not None:
        password = read_secret_file(m.password_file, "mqtt.password_file", strict=strict, may_be_empty=True)
    client = new_client(m.client_id, username=m.username, password=password)
    if m.tls:
        try:
            context = ssl.create_default_context(cafile=m.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("mqtt.ca_file", f"cannot use {m.ca_file}: {exc}") from None
        if m.cert_file is not None:
            try:
                context.load_cert_chain(m.cert_file, m.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError("mqtt.cert_file", f"cannot use {m.cert_file} with {m.key_file}: {exc}") from None
        client.tls_set_context(context)
    return client


@dataclass(frozen=True, slots=True)
class DropLine:
    """One log line about a lane's dropped reads: ``since`` the previous line, ``total`` since start."""

    lane: str
    since: int
    total: int


class DropLog:
    """Rule 6: when to log a lane's dropped reads. The first drop of a lane is a line at once (the
    operator learns of the flood in the same second); the drops after it are counted, and at most one
    line per ``interval`` seconds says how many there were since the previous line. ``total`` is exact:
    the counts are never sampled, only the lines. Time is passed in (``clock``), so it is tested without
    sleeping. Not thread-safe: the caller holds a lock."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        if interval <= 0:
            raise ValueError("interval > 0")
        self.interval, self._clock = interval, clock
        self.totals: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._last_line: dict[str, float] = {}

    def drop(self, lane: str) -> DropLine | None:
        """Count one drop; the line to log now, or ``None`` (counted for the next one)."""
        self.totals[lane] += 1
        self._unlogged[lane] += 1
        last = self._last_line.get(lane)
        if last is not None and self._clock() - last < self.interval:
            return None
        return self._line(lane)

    def due(self, *, everything: bool = False) -> list[DropLine]:
        """The lines for drops not yet logged whose lane's interval is over (``everything``: all of them,
        at stop)."""
        now = self._clock()
        return [self._line(lane) for lane, n in list(self._unlogged.items())
                if n and (everything or now - self._last_line.get(lane, float("-inf")) >= self.interval)]

    def _line(self, lane: str) -> DropLine:
        line = DropLine(lane, self._unlogged.pop(lane), self.totals[lane])
        self._last_line[lane] = self._clock()
        return line


class MqttSource:
    def __init__(
        self,
        worker: LaneWorker,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        prefix: str = "quaygate",
        client: mqtt.Client | None = None,
        keepalive: int = 30,
        trusted_face_matcher: bool = False,
        drop_log_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        connection_grace: float = 60.0,
        presence: BarrierPresence | None = None,
    ) -> None:
        self.worker, self.host, self.port, self.prefix, self.keepalive = worker, host, port, prefix, keepalive
        self.trusted_face_matcher = trusted_face_matcher
        self.client = client or new_client()
        self.client.suppress_exceptions = True  # rule 8
        self.presence = presence  # rule 10
        if presence is not None:
            presence.attach(self.client)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.connection_grace, self._clock = connection_grace, clock
        self._down_since: float | None = clock()  # rule 9: since when not connected (None: connected)
        self._failed = 0  # rule 8
        self.subscribed = threading.Event()  # set once the broker confirmed our subscriptions (health)
        self._drops = DropLog(drop_log_seconds, clock)  # rule 6
        self._drops_lock = threading.Lock()  # paho's thread counts, ours and /healthz read
        self._stopping = threading.Event()
        self._drop_logger: threading.Thread | None = None

    @property
    def dropped(self) -> dict[str, int]:
        """Rule 6: reads dropped because their lane was full, by lane, since start (exact)."""
        with self._drops_lock:
            return dict(self._drops.totals)

    @property
    def failed(self) -> int:
        """Rule 8: messages whose handling raised something other than a refusal, since start."""
        with self._drops_lock:
            return self._failed

    def alive(self) -> bool:
        """Rule 9: paho's network thread runs (the broker connection is ``broker``'s, not liveness)."""
        thread = getattr(self.client, "_thread", None)  # paho keeps its loop thread here (no public name)
        return thread is not None and thread.is_alive()

    def broker(self) -> dict[str, object]:
        """Rule 9, for ``/healthz``: ``status`` ``up``, ``reconnecting`` (lost within ``connection_grace``)
        or ``down`` (lost for longer), since when it is lost (seconds, ``None`` while up), and rule 8's
        ``failed`` count (a monitor alerts on it growing: each is a bug of ours, logged with its traceback)."""
        down_since, failed = self._down_since, self.failed
        if down_since is None:
            return {"status": "up", "down_seconds": None, "failed": failed}
        down_for = max(0.0, self._clock() - down_since)
        return {"status": "reconnecting" if down_for <= self.connection_grace else "down",
                "down_seconds": round(down_for, 1), "failed": failed}

    def topics(self) -> list[str]:
        """The reads' topics, and the barrier controllers' status topics (rule 10)."""
        status = [] if self.presence is None else self.presence.topics()
        return [f"{self.prefix}/{terminal}/{lane}/#" for terminal, lane in self.worker.lanes] + status

    def start(self) -> None:
        """Connect and run paho's network loop on its own thread (it reconnects by itself), and the thread
        that logs the last drops of a flood once it is over (rule 6)."""
        self._down_since = self._clock()  # until on_connect: not connected yet
        self.client.connect(self.host, self.port, self.keepalive)
        self.client.loop_start()
        self._stopping.clear()
        self._drop_logger = threading.Thread(target=self._log_drops_while_running, name="gate-mqtt-drop-log",
                                             daemon=True)
        self._drop_logger.start()

    def stop(self) -> None:
        self._stopping.set()
        self.client.disconnect()
        self.client.loop_stop()
        if self._drop_logger is not None:
            self._drop_logger.join(10)
            self._drop_logger = None
        self.log_drops(everything=True)  # rule 6: no count left unsaid

    def log_drops(self, *, everything: bool = False) -> None:
        """Rule 6: log the drops whose interval is over (``everything``: all not yet logged)."""
        with self._drops_lock:
            lines = self._drops.due(everything=everything)
        for line in lines:
            self._log_drop(line)

    def _log_drops_while_running(self) -> None:
        while not self._stopping.wait(self._drops.interval):
            self.log_drops()

    @staticmethod
    def _log_drop(line: DropLine, queue_size: int | None = None) -> None:
        # The counts are in the message itself: the plain log format shows no ``extra``.
        log.warning("gate.source.mqtt.lane_busy: lane %s: %d reads dropped (%d since start)", line.lane,
                    line.since, line.total,
                    extra={"lane": line.lane, "dropped_since": line.since, "dropped": line.total,
                           "queue_size": queue_size})

    def handle(self, topic: str, payload: bytes) -> Read | None:
        """One message: parse, enqueue for its lane; returns the read (``None``: skipped, refused or failed,
        rule 8)."""
        try:
            return self._handle(topic, payload)
        except Exception:  # noqa: BLE001 - rule 8: paho's thread serves every lane; no message may end it
            with self._drops_lock:
                self._failed += 1
                failed = self._failed
            log.exception("gate.source.mqtt.failed: a message raised (%d since start)", failed,
                          extra={"topic": topic, "failed": failed})
            return None

    def _handle(self, topic: str, payload: bytes) -> Read | None:
        if topic.endswith(("/barrier", "/barrier/status")):
            return None  # rule 2
        try:
            parsed = mqtt_format.parse(topic, payload, prefix=self.prefix)
        except SourceError as exc:
            log.warning("gate.source.refused.mqtt", extra={"topic": topic, "reason": str(exc)})
            return None
        if parsed is None:
            return None
        if not self.worker.has_lane(parsed.terminal, parsed.read.lane):
            log.warning("gate.source.unknown_lane", extra={"topic": topic})
            return None
        if generic_json.is_face_match(parsed.read) and not self.trusted_face_matcher:
            log.warning("gate.source.refused.face_match", extra={"topic": topic})  # rule 5
            return None
        try:
            self.worker.submit(parsed.terminal, parsed.read)
        except LaneBusy as exc:  # rule 6
            with self._drops_lock:
                line = self._drops.drop(exc.lane)
            if line is not None:
                self._log_drop(line, exc.queue_size)
            return None
        return parsed.read

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            log.error("gate.source.mqtt.connect_failed", extra={"reason": str(reason_code)})
            return
        self._down_since = None
        self.subscribed.clear()
        if self.presence is not None:
            self.presence.forget()  # rule 10: the broker sends each retained status again
        client.subscribe([(t, 1) for t in self.topics()])

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self.subscribed.clear()  # until the broker confirms them again (rule 4)
        if self.presence is not None:
            self.presence.forget()  # rule 10
        if self._down_since is None:
            self._down_since = self._clock()
        if not self._stopping.is_set():
            log.warning("gate.source.mqtt.disconnected", extra={"reason": str(reason_code)})

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        if all(not getattr(rc, "is_failure", False) for rc in reason_codes):
            self.subscribed.set()
        else:
            log.error("gate.source.mqtt.subscribe_failed", extra={"topics": self.topics()})

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.handle(message.topic, bytes(message.payload))

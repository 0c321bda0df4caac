"""JSON logs with a request id, and Prometheus metrics, as one small ASGI middleware."""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object a line. Events are dotted and carry no personal data (STYLE.md #13)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            entry["request_id"] = rid
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("uvicorn.access").disabled = True


def log_event(logger: logging.Logger, event: str, **fields: Any) -> None:
    logger.info(event, extra={"fields": fields})


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


SAFEGUARDS = frozenset({"ban_screening", "audit_witness", "production_mode"})  # Settings.safeguards_off


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("quaygate_http_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("quaygate_http_request_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # Issue 5: where gate commits were settled: on the event loop, or on the worker threads (no
        # Redis, a face image, or what the loop could not settle at once: a miss, a race, an outage).
        commits = Counter("quaygate_gate_commits_total", "Gate commits by where they were settled", ["way"],
                          registry=self.registry)
        self.gate_commits = {way: commits.labels(way) for way in ("loop", "threads")}
        # 1 once this process's audit sealer found the trail's head rewritten and stopped sealing (log event
        # audit.tampered; release_service/adapters/audit.py): it stays 1 until an operator acts and restarts.
        self.audit_sealing_stopped = Gauge("quaygate_audit_sealing_stopped",
                                           "1 when the audit sealer refused to seal a rewritten trail",
                                           registry=self.registry)
        self._safeguard_off = Gauge("quaygate_safeguard_off", "1 for a safeguard this process runs without",
                                    ["safeguard"], registry=self.registry)

    def note_safeguards(self, off: Iterable[str]) -> None:
        """``quaygate_safeguard_off{safeguard=...}``: 1 for each safeguard this process runs without
        (``Settings.safeguards_off``: ban screening, the audit witness, production mode), 0 for the
        others, so an alert fires on a production server started without ban screening, not only a line
        in its start log (review 132, finding 3's leftover)."""
        without = set(off)
        for name in sorted(SAFEGUARDS | without):
            self._safeguard_off.labels(name).set(1 if name in without else 0)

    def watch_gate_facts(self, facts: Any) -> None:
        """Issue 5: ``quaygate_gate_stream_full_total``, how many times this process's gate checks found
        the Redis stream of kept checks at its cap (release_service/adapters/gate_facts.py
        ``stream_full``): each such check was recorded in PostgreSQL instead, and any rise says the
        decision drainers are behind (PostgreSQL away, or none running). Read from the facts at each
        scrape: nothing on the gate's path."""
        self.registry.register(_GateFactsCollector(facts))

    def series(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        """The request counter and latency histogram of one (method, route, status), found once: a
        labelled child is looked up under a lock on every ``labels()`` call. Routes are templates and
        methods and statuses few, so the memo stays small."""
        if method not in _METHODS:
            method = "OTHER"  # a client may send any token as a method: never a series of its own
        key = (method, route, status)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = (self.requests.labels(method, route, str(status)),
                                         self.latency.labels(method, route))
        return found


class _GateFactsCollector(Collector):
    def __init__(self, facts: Any) -> None:
        self._facts = facts

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("quaygate_gate_stream_full", "Gate checks that found the stream of kept "
                                  "checks full (recorded in PostgreSQL instead)", value=self._facts.stream_full)


class ObservabilityMiddleware:
    """Assigns or propagates ``X-Request-Id`` and records one metric sample per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        token = request_id_var.set(rid)
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            count, latency = self.metrics.series(scope["method"], template, status)
            count.inc()
            latency.observe(time.perf_counter() - start)
            request_id_var.reset(token)


def metrics_may_read(request: Any, token: bytes | None, *, open_: bool) -> bool:
    """May this request read /metrics (review 137, finding 3)? With a token (QUAYGATE_METRICS_TOKEN), only
    ``Authorization: Bearer <token>`` (compared in constant time); without one, anyone when ``open_`` (dev
    and demo), else only a loopback peer: a scraper on the host. A reverse proxy on the same host makes
    every peer loopback: behind one, set the token."""
    if token is not None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token)
    if open_:
        return True
    peer = request.client.host if request.client is not None else None
    try:
        ip = ipaddress.ip_address(peer) if peer is not None else None
    except ValueError:  # a Unix socket's peer, or a test client's made-up name
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket (--host ::) sees 127.0.0.1 as ::ffff:127.0.0.1
    return ip is not None and ip.is_loopback

"""One lane at run time: correlate reads, ask the service, remember the question, move the barrier.

Per Ready (a truck's correlated reads)::

    body = verify body  ──► outbox.put (durable)  ──► client.verify
        answer  ──► outbox.done ──► sink.act(answer)          (open only on "allow", sinks.py)
        4xx     ──► outbox.done(problem) ──► sink.act(None)   (hold + officer; a re-send cannot help)
        no answer / 401 / 403 / 429 ──► sink.act(None), row stays pending, re-sent later
        no answer, offline mode on  ──► offline.decide (passes; durable with its report) ──► sink.act

Rules:
1. Nothing reaches the network before it is in the outbox; a crash anywhere after ``put`` is
   recovered by re-sending the stored body with the same ``request_id`` (``recover()`` at start,
   ``tick()`` every ``retry_seconds`` while running). The service answers idempotently.
2. A late answer (recovered or retried) moves the barrier only while the truck can still be there:
   within ``act_seconds`` of the request's creation. Older answers are recorded and logged
   (``gate.lane.late_answer``), never acted on: an "open" meant for a truck that left would let the
   next one through.
3. Body: ``Ready.verify_fields()`` plus the lane's ``mode``. A truck that timed out without a
   container read sends ``container {"number": "", "confidence": 0}`` (the service answers
   ``container_unreadable``, review); a badge read without a scheme gets the lane's ``badge_scheme``.
4. A lane is driven by one thread at a time (``LaneWorker``), with a lock besides.
5. Offline mode (``offline.py``, optional): when the service cannot be reached (connect error, timeout,
   5xx, after the client's retries) and the truck is still at the lane, the lane decides from its gate
   passes instead of holding; ``tick()`` also keeps the passes fresh and reconciles offline decisions.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gate_adapters.core.correlate import LaneCorrelator, Ready
from gate_adapters.core.reads import Read

from .client import ServiceUnavailable, VerifyClient, VerifyRefused
from .offline import OfflineMode
from .outbox import Outbox
from .sinks import BarrierSink, Command

log = logging.getLogger("gate_adapters.lane")

Mode = Literal["check", "commit"]


@dataclass(frozen=True, slots=True)
class LaneResult:
    """What happened to one request: the answer (or why none) and what the barrier was told."""

    request_id: str
    lane: str
    response: dict[str, Any] | None
    command: Command | None
    error: str | None
    latency: float
    observed_at: str | None = None
    missing: tuple[str, ...] = ()

    @property
    def decision(self) -> str | None:
        return None if self.response is None else self.response.get("decision")

    @property
    def offline(self) -> bool:
        """True when the lane decided from its gate passes (the service could not be reached)."""
        return self.response is not None and "offline" in self.response

    @property
    def pending(self) -> bool:
        """True while the outbox still holds the request for a re-send (no answer yet)."""
        return self.response is None and (self.error or "").startswith("unavailable")


def verify_body(ready: Ready, mode: Mode, badge_scheme: str) -> dict[str, Any]:
    """Rule 3: the wire body for one Ready."""
    body = ready.verify_fields() | {"mode": mode}
    body.setdefault("container", {"number": "", "confidence": 0.0})
    badge = body.get("badge")
    if isinstance(badge, dict) and "scheme" not in badge:
        body["badge"] = {"scheme": badge_scheme, **badge}
    return body


class LaneRuntime:
    """Runs one lane (rules 1 to 4).

    ``clock``: monotonic seconds for the correlator and retry pacing (a simulator passes a virtual one);
    ``wall``: epoch seconds, compared with the outbox's ``created_at`` (rule 2); ``timer``: latencies.
    """

    def __init__(
        self,
        terminal: str,
        lane: str,
        direction: str,
        mode: Mode,
        correlator: LaneCorrelator,
        client: VerifyClient,
        outbox: Outbox,
        sink: BarrierSink,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
        badge_scheme: str = "alfapass",
        act_seconds: float = 60.0,
        retry_seconds: float = 5.0,
        on_result: Callable[[LaneResult], None] | None = None,
        offline: OfflineMode | None = None,
    ) -> None:
        if (correlator.terminal, correlator.lane, correlator.direction) != (terminal, lane, direction):
            raise ValueError("the correlator belongs to another terminal, lane or direction")
        if mode not in ("check", "commit"):
            raise ValueError("mode is 'check' or 'commit'")
        self.terminal, self.lane, self.direction, self.mode = terminal, lane, direction, mode
        self.correlator, self.client, self.outbox, self.sink = correlator, client, outbox, sink
        self.badge_scheme, self.act_seconds, self.retry_seconds = badge_scheme, act_seconds, retry_seconds
        self._clock, self._wall, self._timer, self._on_result = clock, wall, timer, on_result
        self.offline = offline
        self._lock = threading.RLock()
        self._next_retry = float("-inf")

    def feed(self, read: Read) -> list[LaneResult]:
        with self._lock:
            readies = self.correlator.add(read, self._clock())
            self._log_dropped()
            return [self._send_new(r) for r in readies]

    def tick(self) -> list[LaneResult]:
        """Emit what the correlator has due, and re-send pending requests every ``retry_seconds``."""
        with self._lock:
            out = [self._send_new(r) for r in self.correlator.tick(self._clock())]
            self._log_dropped()
            if self._clock() >= self._next_retry:
                out.extend(self.recover())
            if self.offline is not None:
                self.offline.maintain()  # rule 5: fresh passes, offline decisions reconciled
            return out

    def recover(self) -> list[LaneResult]:
        """Re-send every pending request of this lane, oldest first (rule 1). Call it at start."""
        with self._lock:
            self._next_retry = self._clock() + self.retry_seconds
            out: list[LaneResult] = []
            for row in self.outbox.pending(self.lane):
                may_act = self._wall() - row.created_at <= self.act_seconds
                result = self._send(row.request_id, row.body, act=may_act)
                out.append(result)
                if isinstance(result.error, str) and result.error.startswith("unavailable"):
                    break  # the service is still away: keep the order, try the rest next time
            return out

    # -- one request ----------------------------------------------------------------------------

    def _send_new(self, ready: Ready) -> LaneResult:
        if not ready.complete:
            log.info("gate.lane.timed_out", extra={"lane": self.lane, "missing": sorted(ready.missing)})
        body = self.outbox.put(verify_body(ready, self.mode, self.badge_scheme))
        return self._send(ready.request_id, body, act=True, missing=tuple(sorted(ready.missing)))

    def _send(
        self, request_id: str, body: Mapping[str, Any], *, act: bool, missing: tuple[str, ...] = ()
    ) -> LaneResult:
        started = self._timer()
        self.outbox.attempt(request_id)
        response: dict[str, Any] | None = None
        error: str | None = None
        offline = False
        try:
            response = self.client.verify(body)
        except ServiceUnavailable as exc:
            error = f"unavailable: {exc}"
            log.warning("gate.lane.unavailable", extra={"lane": self.lane, "request_id": request_id})
            if self.offline is not None and act:  # rule 5: recorded durably by decide()
                response = self.offline.decide(request_id, body)
                offline = response is not None
                error = None if offline else error
        except VerifyRefused as exc:
            error = f"refused: {exc.status} {exc.code}" if exc.final else f"unavailable: {exc}"
            log.error("gate.lane.refused.%s", exc.code, extra={"lane": self.lane, "request_id": request_id})
            if exc.final:
                self.outbox.done(request_id, exc.as_response())
        if response is not None and not offline:
            self.outbox.done(request_id, response)
            log.info("gate.lane.decided.%s", response.get("decision"), extra={"lane": self.lane,
                                                                             "request_id": request_id})
        command = None
        if act:
            command = self.sink.act(response, self.lane)
        elif response is not None:
            log.warning("gate.lane.late_answer", extra={"lane": self.lane, "request_id": request_id})
        result = LaneResult(request_id, self.lane, response, command, error, self._timer() - started,
                            body.get("observed_at"), missing)
        if self._on_result is not None:
            self._on_result(result)
        return result

    def _log_dropped(self) -> None:
        for dropped in self.correlator.take_dropped():
            log.warning("gate.correlate.dropped.%s", dropped.reason,
                        extra={"lane": dropped.lane, "kinds": sorted(dropped.kinds)})


class LaneWorker:
    """Feeds reads to lanes from a queue and ticks them, on ONE thread (sources only enqueue).

    Sources (the MQTT network thread, HTTP handlers) must not wait for the service: they ``submit``
    and return. The worker feeds lane by lane and calls ``tick()`` at least every ``tick_seconds``.
    """

    def __init__(self, lanes: Iterable[LaneRuntime], *, tick_seconds: float = 0.5,
                 prune_seconds: float = 3600.0) -> None:
        self.lanes: dict[tuple[str, str], LaneRuntime] = {(ln.terminal, ln.lane): ln for ln in lanes}
        self.tick_seconds = tick_seconds
        self.prune_seconds = prune_seconds  # how often the outboxes drop what they keep past keep_days
        self._queue: queue.Queue[tuple[str, Read] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def has_lane(self, terminal: str, lane: str) -> bool:
        return (terminal, lane) in self.lanes

    def submit(self, terminal: str, read: Read) -> None:
        if (terminal, read.lane) not in self.lanes:
            raise KeyError(f"no lane {read.lane!r} at terminal {terminal!r}")
        self._queue.put((terminal, read))

    def start(self) -> None:
        for lane in self.lanes.values():
            lane.recover()
        self._thread = threading.Thread(target=self._run, name="gate-lanes", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what was submitted, then stop."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        next_tick = next_prune = time.monotonic()
        outboxes = list({id(ln.outbox): ln.outbox for ln in self.lanes.values()}.values())
        while True:
            try:
                item = self._queue.get(timeout=max(next_tick - time.monotonic(), 0.0))
            except queue.Empty:
                item = ()  # type: ignore[assignment]
            if item is None:
                return
            if item:
                terminal, read = item
                self._guard(self.lanes[(terminal, read.lane)].feed, read)
            if time.monotonic() >= next_tick:
                for lane in self.lanes.values():
                    self._guard(lane.tick, None)
                next_tick = time.monotonic() + self.tick_seconds
            if time.monotonic() >= next_prune:  # else the file grows till the disk is full (the lane stops)
                for box in outboxes:
                    self._guard(box.prune, None)
                next_prune = time.monotonic() + self.prune_seconds

    @staticmethod
    def _guard(step: Callable[..., object], read: Read | None) -> None:
        # One lane's bug must not stop every lane's worker; the outbox keeps its request for a re-send.
        try:
            step() if read is None else step(read)
        except Exception:  # noqa: BLE001
            log.exception("gate.lane.crashed")

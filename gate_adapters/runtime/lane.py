"""One lane at run time: correlate reads, ask the service, remember the question, move the barrier.

Per read: fresh? (observed_at against when it arrived, rule 6) ──► correlator ──► Readies.
Per Ready (a truck's correlated reads)::

    body = verify body  ──► outbox.put (durable)  ── already there: a replay ──► act(None) (rule 6)
                                                  ──► client.verify
        answer  ──► outbox.done ──► act(answer)          (open only on "allow", sinks.py; none past act_seconds, rule 2)
        4xx     ──► outbox.done(problem) ──► act(None)   (hold + officer; a re-send cannot help)
        no answer / 401 / 403 / 429 ──► act(None), row stays pending, re-sent later
        no answer, offline mode on  ──► offline.decide (passes; durable with its report) ──► act
        (a 429 is never "no answer": the service is up and asks us to wait, client.py rule 7)
    act: command_for ──► lane latched? (outbox) ── yes ──► note it, sink.send(hold + officer) (rule 9)
                                                 └─ no ──► calls an officer? latch (durable) ──► sink.send
                                                      an "open" not heard ──► latch, sink.send(hold + officer) (rule 10)
         ──► outbox.told(what the barrier was told) (rule 11; recover: an answer without it ──► latch, hold)

Rules:
1. Nothing reaches the network before it is in the outbox, and every truck due at once is put before
   any is sent (a send that fails or dies loses none); a crash anywhere after ``put`` is recovered by
   re-sending the stored body with the same ``request_id`` (``recover()`` at start, ``tick()`` every
   ``retry_seconds`` while running). The service answers idempotently.
2. A late answer (recovered or retried) moves the barrier only while its truck can still be the one at
   the lane and nobody else decided about it: within ``act_seconds`` of the request's creation, no newer
   request made for the lane since, AND no officer called for that truck. In this order: an answer older
   than ``act_seconds`` is recorded and logged (``gate.lane.late_answer``); one overtaken by a newer
   request (or with late news, rule 8) is recorded, logged (``gate.lane.late_answer.superseded``) and
   holds with an officer call; one whose truck was handed to an officer (an earlier try got no answer, a
   429, a 401 or 403: held, the officer called, and the lane latched for that request or its hold noted
   against the latch that held the lane: ``outbox.latched_for``) is recorded and logged
   (``gate.lane.late_answer.officer_called``), and the barrier stays as it is: told nothing once the
   officer cleared the latch (he let the truck through by hand or sent it back), the latched hold while
   it still holds, never offline mode's decision. Never acted on: an "open" meant for truck A would let
   truck B through, and with the latch cleared nothing newer need stand behind A to be let through on it
   (a truck whose reads are not complete, a tailgater without any, an evicted one: none is a request).
   Only a request never tried nor held for an officer (the adapter died after ``put``, before or during
   its first send) opens on its late answer: its truck still waits at the barrier, and nobody decided.
   The age holds for a FIRST send too (review 173, finding 1: before, a first send acted on its answer
   however late it came; httpx's timeout bounds each network read, not the call, and while the lane's
   thread waited the next truck's reads sat in its queue, so the outbox saw no newer request). Each call
   is given what is left of ``act_seconds`` since its request was made as a total deadline (client.py
   rule 8; a request already older, recorded only, gets ``act_seconds`` of its own), and the answer's age
   is checked before acting: one that comes past ``act_seconds`` to a truck still waiting (``LATE``: a
   first send, or a re-send that could have opened) is recorded (a committed allow's right counts as used
   here, outbox.py rule 7), logged ``gate.lane.late_answer.held``, and holds with an officer call (the
   latch's reason ``late_answer``); none at all by then holds and calls an officer as any unanswered
   truck, and offline mode decides nothing for it (its decision would be as late). The settings refuse a
   ``[service] timeout`` times ``attempts`` longer than ``act_seconds`` (config.py).
3. Body: ``Ready.verify_fields()`` plus the lane's ``mode``. A truck that timed out without a
   container read sends ``container {"number": "", "confidence": 0}`` (the service answers
   ``container_unreadable``, review); a badge read without a scheme gets the lane's ``badge_scheme``.
4. A lane is driven by one thread at a time, with a lock besides. ``LaneWorker`` gives every lane a thread
   and a bounded queue of its own: a verify call that hangs (the client's retries and backoff, seconds of
   timeouts) holds up its own lane only, never another lane's trucks. A full queue refuses the read
   (``LaneBusy``) instead of growing without bound; each lane has a bound of its own (``queue_sizes``,
   the lane setting ``queue_size``), and what the bounds refused is counted for ``/healthz``
   (``LaneWorker.load``: queued, queue size, reads refused, trucks evicted). The lanes share the outbox
   (thread-safe, outbox.py rule 4), the client and the offline mode; the worker prunes each outbox once,
   on a thread of its own.
5. Offline mode (``offline.py``, optional): when the service cannot be reached (connect error, timeout,
   5xx, after the client's retries) and the truck is still at the lane, the lane decides from its gate
   passes instead of holding; ``tick()`` also keeps the passes fresh and reconciles offline decisions.
   A service that answers, if only to refuse the adapter (client.py rule 6) or to say "slow down" (a 429
   after its ``Retry-After`` was waited for as long as a truck may wait, client.py rule 7), is no outage:
   the lane holds and calls an officer (the latch's reason ``rate_limited`` for a 429), the request stays
   pending and is re-sent, and offline mode decides nothing.
6. Replays: a read observed more than ``read_age_seconds`` before it reached the adapter, or more than
   ``clock_slack_seconds`` after (the lane's settings; defaults ``reads.MAX_READ_AGE`` and
   ``reads.CLOCK_SLACK``), is refused (``gate.lane.read_refused``): its ``observed_at`` would remake
   an old request id, which the service answers with its old decision. A truck whose request the outbox
   already holds (the same reads correlated again) is never sent nor acted on: hold and call an officer
   (``gate.lane.replayed``); a pending one is re-sent by ``recover`` under rule 2.
7. Evictions (correlate.py rule 4): the reads of a truck pushed out by ``max_pending`` newer ones are
   never sent (an incomplete request answered "allow" could open for whichever truck is at the barrier
   by then): the barrier holds and calls an officer, logged ``gate.lane.evicted`` with the kinds held
   and missing. A window that ends without every read is still asked (review or deny; only an allow
   opens); an eviction is graver: the officer is called without a question to the service.
8. A late face mismatch (correlate.py rule 3a: ``matched: false`` from the matcher for a truck whose
   request already went) is never let go with the harmless duplicates: the barrier may already have
   opened for the wrong driver. Nor a late plate mismatch (correlate.py rule 3b: another plate read, by
   another camera, for the truck whose request went last: it may have passed on a cloned plate), nor a
   late container mismatch (rule 3c: another container number read, by another camera, for that truck:
   it may have passed with another box than the one asked about). Each is logged
   ``gate.lane.late_face_mismatch``, ``gate.lane.late_plate_mismatch`` or
   ``gate.lane.late_container_mismatch`` (error, with the lane and the truck's request id), noted in the
   outbox beside that request (outbox.py rule 5; a plate with its text, country, confidence and camera, a
   container with its number, confidence and camera), and the barrier holds and calls an officer at once,
   the same path for all. The service is not asked again: its decision stands on its books, and
   the same request id would get the same answer; the officer decides at the lane. A late face that is
   news but no refusal (correlate.py rule 3a ``late_face``: a face for a truck whose request went
   without one) is logged ``gate.lane.late_face`` and noted in the outbox the same way; the barrier is
   not told anything (nothing it said changes), and it never becomes a truck of its own.
9. The officer's hold is latched. A command that calls an officer (a review, an allow not committed, no
   answer or a refused request, an eviction, a replay, a superseded late answer, a late mismatch)
   latches the lane in the outbox (outbox.py rule 6) before the barrier hears it: the truck the officer
   was called for may still stand at the barrier, and the next truck's "allow" must not open it for
   him. While latched, every decision is still made, recorded and logged, but the barrier is told
   ``hold`` with ``call_officer`` and the latch's id (sinks.py rule 5), the decision noted against the latch
   (``latched_holds``) and logged ``gate.lane.latched_hold`` with the command it would have given; the
   ``LaneResult`` says which latch held it (``latched``). Only an officer clears it: over the HTTP
   source with an officer credential (http_source.py), or ``quaygate gate-adapter --clear-latch`` on
   the adapter's host; ``gate.lane.latch_cleared`` names who. The latch is read from the outbox at
   each command, so a clear by another process counts at once and a restart never unlatches.
10. An "open" the barrier did not hear (``BarrierUnreachable``, sinks.py rule 6: an HTTP controller that
   did not answer 2xx, an MQTT broker not connected) leaves an allowed truck at a shut barrier: the lane
   latches (reason ``barrier_unreachable``, ``gate.lane.barrier_unreachable``) and the barrier is told
   ``hold`` with the officer and the latch (it may hear that, the link back). Never tried again: an
   "open" heard later could lift the barrier for the truck behind (rule 2). The ``LaneResult`` carries
   the hold and the latch. A hold not heard changes nothing (the barrier stays shut; the sink logged it).
11. What the barrier was told is marked with the answer (outbox.py rule 13, review 173 finding 2: an adapter
   killed between the decision and the barrier's command, say during an "open"'s connect, restarted with
   nothing to do, its allowed truck at a shut barrier, the right used, no officer called). After the
   command went (heard or not, rule 10), the answer is marked with it (``open``, ``hold``); an answer of
   which nothing is to be told (recorded only, rule 2; a truck an officer took over and no latch holds)
   is marked ``none``. ``recover`` (at start, and at each retry) first takes every answered request of
   the lane without a mark that holds (sealed under the adapter's seal key like the chain: walked in full
   at the first ``recover``, their absence after): the barrier may or may not have heard its command, so
   the lane latches for an officer (``barrier_unknown``, ``gate.lane.barrier_unknown``; the hold noted
   against the latch that holds the lane, if one does), the barrier is told ``hold`` with the officer
   and the latch, and the answer is marked; never its command again (an "open" heard late could lift
   the barrier for the truck behind, rule 10). The ``LaneResult`` carries the answer, the hold and the
   latch, its error ``barrier_unknown``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from gate_adapters.core.correlate import Dropped, DropReason, LaneCorrelator, Outcome, Ready
from gate_adapters.core.reads import CLOCK_SLACK, MAX_READ_AGE, Read, SourceError, check_fresh

from .client import RateLimited, ServiceUnavailable, VerifyClient, VerifyRefused
from .offline import OfflineMode
from .outbox import Outbox
from .sinks import BarrierCommand, BarrierSink, BarrierUnreachable, Command, command_for, latched_hold, latches

log = logging.getLogger("gate_adapters.lane")

Mode = Literal["check", "commit"]


class OnAnswer(StrEnum):
    """What an answer may do to the barrier (rule 2)."""

    ACT = "act"  # the truck is at the lane: the answer moves the barrier
    HOLD = "hold"  # a newer truck is at the lane: hold and call an officer, never open
    RECORD = "record"  # the truck has left: record the answer, tell the barrier nothing
    OFFICER = "officer"  # an officer was called for the truck: record, never open, the latch's hold at most
    LATE = "late"  # the answer came past act_seconds while its truck waited: record, hold, call an officer


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
    latched: int | None = None  # rule 9: the latch that held the barrier whatever the decision said

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
    ``wall``: epoch seconds, compared with the outbox's ``created_at`` (rule 2) and with a read's
    ``observed_at`` (rule 6); ``timer``: latencies.
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
        read_age_seconds: float = MAX_READ_AGE.total_seconds(),
        clock_slack_seconds: float = CLOCK_SLACK.total_seconds(),
        on_result: Callable[[LaneResult], None] | None = None,
        offline: OfflineMode | None = None,
    ) -> None:
        if (correlator.terminal, correlator.lane, correlator.direction) != (terminal, lane, direction):
            raise ValueError("the correlator belongs to another terminal, lane or direction")
        if mode not in ("check", "commit"):
            raise ValueError("mode is 'check' or 'commit'")
        if read_age_seconds <= 0 or clock_slack_seconds < 0:
            raise ValueError("read_age_seconds > 0 and clock_slack_seconds >= 0")
        self.terminal, self.lane, self.direction, self.mode = terminal, lane, direction, mode
        self.correlator, self.client, self.outbox, self.sink = correlator, client, outbox, sink
        self.badge_scheme, self.act_seconds, self.retry_seconds = badge_scheme, act_seconds, retry_seconds
        self.read_age_seconds, self.clock_slack_seconds = read_age_seconds, clock_slack_seconds
        self._clock, self._wall, self._timer, self._on_result = clock, wall, timer, on_result
        self.offline = offline
        self.evicted = 0  # rule 7: trucks held for an officer without a question (health: LaneWorker.load)
        self._lock = threading.RLock()
        self._next_retry = float("-inf")
        self._marks_walked = False  # rule 11: the marks' seals are walked at the first recover, their absence after

    def feed(self, read: Read, received_at: float | None = None) -> list[LaneResult]:
        """``received_at``: wall seconds when the read reached the adapter (default: now; rule 6)."""
        with self._lock:
            if not self._fresh(read, self._wall() if received_at is None else received_at):
                return []
            readies = self.correlator.add(read, self._clock())
            return self._take_dropped() + self._send_new(readies)

    def tick(self) -> list[LaneResult]:
        """Emit what the correlator has due, and re-send pending requests every ``retry_seconds``."""
        with self._lock:
            out = self._send_new(self.correlator.tick(self._clock()))
            out.extend(self._take_dropped())
            if self._clock() >= self._next_retry:
                out.extend(self.recover())
            if self.offline is not None:
                self.offline.maintain()  # rule 5: fresh passes, offline decisions reconciled
            return out

    def recover(self) -> list[LaneResult]:
        """Hold for an officer where the barrier may not have heard an answer's command (rule 11), then
        re-send every pending request of this lane, oldest first (rule 1). Call it at start."""
        with self._lock:
            self._next_retry = self._clock() + self.retry_seconds
            out: list[LaneResult] = self._untold()
            newest = self.outbox.newest(self.lane)
            for row in self.outbox.pending(self.lane):
                if self._wall() - row.created_at > self.act_seconds:
                    then = OnAnswer.RECORD
                elif row.request_id != newest or self.outbox.late_reads(row.request_id):
                    # A newer truck at the lane; or a face mismatch came for this one after its request
                    # was made (rule 8): the request does not carry it, so its answer never opens.
                    then = OnAnswer.HOLD
                elif self.outbox.latched_for(row.request_id):
                    then = OnAnswer.OFFICER  # held for an officer: he decides about this truck, not the answer
                else:
                    then = OnAnswer.ACT
                result = self._send(row.request_id, row.body, then, row.created_at)
                out.append(result)
                if isinstance(result.error, str) and result.error.startswith("unavailable"):
                    break  # the service is still away: keep the order, try the rest next time
            return out

    def _untold(self) -> list[LaneResult]:
        """Rule 11: an answer recorded whose command the barrier may not have heard (no mark that holds): the
        lane latched (``barrier_unknown``) or the hold noted against its latch, the barrier told hold with the
        officer and the latch; never the answer's command again."""
        out = []
        for answered in self.outbox.untold(self.lane, full=not self._marks_walked):
            request_id = answered.request_id
            log.error("gate.lane.barrier_unknown: lane %s: the barrier may not have heard the command for %s",
                      self.lane, request_id, extra={"lane": self.lane, "request_id": request_id,
                                                    "decision": answered.response.get("decision")})
            command = command_for(answered.response, self.lane)
            held = self.outbox.held_latch(self.lane)
            if held is None:
                latch = self._latch(request_id, "barrier_unknown")
            else:
                latch = held.id
                self.outbox.latched_hold(latch, self.lane, request_id, str(command.command), "barrier_unknown")
            hold = latched_hold(command, latch)
            try:
                self.sink.send(hold)
            except BarrierUnreachable:
                pass  # logged by the sink; the latch holds the lane whatever the barrier heard
            self.outbox.told(request_id, str(hold.command))
            out.append(self._report(LaneResult(
                request_id, self.lane, answered.response, hold,
                "barrier_unknown: the adapter stopped between the answer and the barrier's command", 0.0,
                latched=latch)))
        self._marks_walked = True
        return out

    # -- one request ----------------------------------------------------------------------------

    def _fresh(self, read: Read, received_at: float) -> bool:
        """Rule 6: a read observed long before it arrived, or after, is refused."""
        try:
            check_fresh(read.observed_at, datetime.fromtimestamp(received_at, UTC),
                        max_age=timedelta(seconds=self.read_age_seconds),
                        slack=timedelta(seconds=self.clock_slack_seconds))
        except SourceError as exc:
            log.warning("gate.lane.read_refused", extra={"lane": self.lane, "kind": str(read.kind),
                                                         "reason": str(exc)})
            return False
        return True

    def _send_new(self, readies: list[Ready]) -> list[LaneResult]:
        """Rule 1: every Ready is in the outbox before any is sent; rule 6: a repeat is not sent; rule 7:
        an eviction is not sent either."""
        stored: list[tuple[Ready, dict[str, Any] | None, bool]] = []
        made = self._wall()  # rule 2: the requests' age is measured from here (the outbox stamps the same)
        for ready in readies:
            if ready.outcome is Outcome.EVICTED:
                stored.append((ready, None, False))
                continue
            if not ready.complete:
                log.info("gate.lane.timed_out", extra={"lane": self.lane, "missing": sorted(ready.missing)})
            if ready.doubtful:  # correlate.py rules 1a and 3: maybe another plate or box; asked at confidence 0
                log.warning("gate.lane.doubtful_read", extra={"lane": self.lane, "request_id": ready.request_id,
                                                              "kinds": sorted(ready.doubtful)})
            body = verify_body(ready, self.mode, self.badge_scheme)
            stored.append((ready, body, self.outbox.put(body)))
        return [self._evicted(ready) if body is None
                else self._send(ready.request_id, body, OnAnswer.ACT, made, missing=tuple(sorted(ready.missing))) if new
                else self._replayed(ready) for ready, body, new in stored]

    def _evicted(self, ready: Ready) -> LaneResult:
        """Rule 7: reads the lane could not finish placing; hold and call an officer, ask nobody."""
        self.evicted += 1
        log.warning("gate.lane.evicted", extra={"lane": self.lane, "request_id": ready.request_id,
                                                "kinds": sorted(ready.kinds), "missing": sorted(ready.missing),
                                                "max_pending": self.correlator.max_pending})
        command, latch = self._act(None, ready.request_id, "evicted")
        return self._report(LaneResult(ready.request_id, self.lane, None, command,
                                       f"evicted: more than {self.correlator.max_pending} trucks pending", 0.0,
                                       ready.observed_at.isoformat(), tuple(sorted(ready.missing)), latch))

    def _replayed(self, ready: Ready) -> LaneResult:
        """Rule 6: the outbox already holds this request; acting on it again could open for a replay."""
        log.warning("gate.lane.replayed", extra={"lane": self.lane, "request_id": ready.request_id})
        command, latch = self._act(None, ready.request_id, "replayed")
        return self._report(LaneResult(ready.request_id, self.lane, None, command, "replayed: request already made",
                                       0.0, ready.observed_at.isoformat(), tuple(sorted(ready.missing)), latch))

    def _send(
        self, request_id: str, body: Mapping[str, Any], then: OnAnswer, made: float, *,
        missing: tuple[str, ...] = ()
    ) -> LaneResult:
        """Ask about one request made at ``made`` (wall seconds) and do ``then`` with the answer (rule 2)."""
        started = self._timer()
        self.outbox.attempt(request_id)
        response: dict[str, Any] | None = None
        error: str | None = None
        why: str | None = None  # the latch's reason, when not the decision nor the error's first word
        offline = False
        failure: ServiceUnavailable | VerifyRefused | None = None
        # Rule 2: the call ends by act_seconds from the request's making (client.py rule 8); a request
        # already older (recorded only) gets act_seconds of its own, so that no call holds the lane for long.
        left = self.act_seconds - (self._wall() - made)
        try:
            response = self.client.verify(body, within=left if left > 0 else self.act_seconds)
        except (ServiceUnavailable, VerifyRefused) as exc:
            failure = exc
        if then is OnAnswer.ACT and self._wall() - made > self.act_seconds:
            then = OnAnswer.LATE  # rule 2: whatever came, it came too late to open (nor to decide offline)
        if isinstance(failure, ServiceUnavailable):
            error = f"unavailable: {failure}"
            log.warning("gate.lane.unavailable", extra={"lane": self.lane, "request_id": request_id})
            if self.offline is not None and then is OnAnswer.ACT:  # rule 5: recorded durably by decide()
                response = self.offline.decide(request_id, body)
                offline = response is not None
                error = None if offline else error
        elif isinstance(failure, RateLimited):  # rule 5: up, and saying slow down; never offline
            error = f"unavailable: {failure}"
            why = "rate_limited"
            log.warning("gate.lane.rate_limited", extra={"lane": self.lane, "request_id": request_id,
                                                         "retry_after": failure.retry_after})
        elif isinstance(failure, VerifyRefused):
            error = f"refused: {failure.status} {failure.code}" if failure.final else f"unavailable: {failure}"
            log.error("gate.lane.refused.%s", failure.code, extra={"lane": self.lane, "request_id": request_id})
            if failure.final:  # rule 11: marked "none" at once where nothing is to be told of it
                self.outbox.done(request_id, failure.as_response(),
                                 told=None if then in (OnAnswer.ACT, OnAnswer.LATE) else "none")
        if response is not None and not offline:
            self.outbox.done(request_id, response, told="none" if then is OnAnswer.RECORD else None)
            log.info("gate.lane.decided.%s", response.get("decision"), extra={"lane": self.lane,
                                                                             "request_id": request_id})
        command, latch = None, None
        if then is OnAnswer.LATE and response is not None:
            log.warning("gate.lane.late_answer.held", extra={"lane": self.lane, "request_id": request_id,
                                                             "decision": response.get("decision")})
            command, latch = self._act(None, request_id, "late_answer")
        elif then in (OnAnswer.ACT, OnAnswer.LATE):  # LATE without an answer: held as any unanswered truck
            if response is not None:
                why = str(response.get("decision"))
            elif why is None:
                why = (error or "no answer").split(":")[0]
            command, latch = self._act(response, request_id, why)
        elif response is not None and then is OnAnswer.HOLD:
            log.warning("gate.lane.late_answer.superseded", extra={"lane": self.lane, "request_id": request_id})
            command, latch = self._act(None, request_id, "late_answer_superseded")
        elif response is not None and then is OnAnswer.OFFICER:
            log.warning("gate.lane.late_answer.officer_called", extra={"lane": self.lane, "request_id": request_id})
            command, latch = self._act(response, request_id, str(response.get("decision")), may_open=False)
        elif response is not None:
            log.warning("gate.lane.late_answer", extra={"lane": self.lane, "request_id": request_id})
        return self._report(LaneResult(request_id, self.lane, response, command, error, self._timer() - started,
                                       body.get("observed_at"), missing, latch))

    def _act(self, response: Mapping[str, Any] | None, request_id: str, why: str, *,
             may_open: bool = True) -> tuple[Command | None, int | None]:
        """Rule 9: the command for ``response``, unless the lane is latched; a command that calls an
        officer latches it. The latch is written before the barrier hears anything (a crash in between
        leaves the lane latched, never open). Returns the command sent and the latch that held it.
        Not ``may_open`` (rule 2, a truck handed to an officer): the latch's hold if one holds, else nothing."""
        command = command_for(response, self.lane)
        held = self.outbox.held_latch(self.lane)
        if held is None:
            if not may_open:
                self.outbox.told(request_id, "none")  # rule 11: nothing to tell
                return None, None  # one read of the latch: a clear in between never lets an open through
            if latches(command):
                self._latch(request_id, why)
            return self._tell(command, request_id)
        self.outbox.latched_hold(held.id, self.lane, request_id, str(command.command), why)
        log.warning("gate.lane.latched_hold: lane %s latched since latch %d: %s (%s) held", self.lane, held.id,
                    command.command, why, extra={"lane": self.lane, "request_id": request_id, "latch": held.id,
                                                 "instead": str(command.command), "reason": why})
        return self._tell(latched_hold(command, held.id), request_id, held.id)

    def _latch(self, request_id: str, why: str) -> int:
        latch, _ = self.outbox.latch(self.lane, request_id, why)
        log.warning("gate.lane.latched: lane %s held for an officer (%s), latch %d", self.lane, why, latch.id,
                    extra={"lane": self.lane, "request_id": request_id, "reason": why, "latch": latch.id})
        return latch.id

    def _tell(self, command: Command, request_id: str, latch: int | None = None) -> tuple[Command, int | None]:
        """Send ``command`` (rule 10), then mark ``request_id``'s answer with what the barrier was told (rule 11)."""
        told, latch = self._say(command, request_id, latch)
        self.outbox.told(request_id, str(told.command))
        return told, latch

    def _say(self, command: Command, request_id: str, latch: int | None) -> tuple[Command, int | None]:
        """Send ``command``; rule 10: an "open" not heard latches the lane and tells the barrier to hold."""
        try:
            return self.sink.send(command), latch
        except BarrierUnreachable:
            if command.command is not BarrierCommand.OPEN:
                return command, latch  # the barrier stays shut; the sink logged it
        log.error("gate.lane.barrier_unreachable: lane %s did not hear its open", self.lane,
                  extra={"lane": self.lane, "request_id": request_id})
        latch = self._latch(request_id, "barrier_unreachable")
        hold = latched_hold(command, latch)
        try:
            self.sink.send(hold)
        except BarrierUnreachable:
            pass  # logged by the sink; the latch holds the lane whatever the barrier heard
        return hold, latch

    def _report(self, result: LaneResult) -> LaneResult:
        if self._on_result is not None:
            self._on_result(result)
        return result

    def _take_dropped(self) -> list[LaneResult]:
        """What the correlator let go of: logged; late news noted, a late mismatch acted on (rule 8)."""
        out = []
        for dropped in self.correlator.take_dropped():
            if dropped.reason in _LATE_MISMATCHES:
                out.append(self._late_mismatch(dropped))
                continue
            if dropped.reason is DropReason.LATE_FACE:
                self._late_face(dropped)
                continue
            log.warning("gate.correlate.dropped.%s", dropped.reason,
                        extra={"lane": dropped.lane, "kinds": sorted(dropped.kinds), "request_id": dropped.request_id})
        return out

    def _late_face(self, dropped: Dropped) -> None:
        """Rule 8: a face for a truck whose request went without one: noted beside that request, never a
        truck of its own; nothing the barrier was told changes."""
        assert dropped.request_id is not None
        log.warning("gate.lane.late_face", extra={"lane": self.lane, "request_id": dropped.request_id})
        self.outbox.late(dropped.request_id, self.lane, str(dropped.reason), _late_detail(dropped))

    def _late_mismatch(self, dropped: Dropped) -> LaneResult:
        """Rule 8: the truck may have passed with the wrong driver, on a cloned plate or with another box:
        record it, hold, call an officer."""
        assert dropped.request_id is not None
        log.error("gate.lane.%s", dropped.reason, extra={"lane": self.lane, "request_id": dropped.request_id})
        self.outbox.late(dropped.request_id, self.lane, str(dropped.reason), _late_detail(dropped))
        command, latch = self._act(None, dropped.request_id, str(dropped.reason))
        observed_at = None if dropped.observed_at is None else dropped.observed_at.isoformat()
        return self._report(LaneResult(dropped.request_id, self.lane, None, command,
                                       f"{dropped.reason}: {_LATE_MISMATCHES[dropped.reason]}",
                                       0.0, observed_at, latched=latch))


_LATE_MISMATCHES = {  # rule 8: late news that calls an officer, and what the LaneResult says of it
    DropReason.LATE_FACE_MISMATCH: "the face matcher said no after the request was sent",
    DropReason.LATE_PLATE_MISMATCH: "another plate was read after the request was sent",
    DropReason.LATE_CONTAINER_MISMATCH: "another container number was read after the request was sent",
}


def _late_detail(dropped: Dropped) -> dict[str, Any]:
    """Rule 8: what came late, as the outbox notes it beside the request (never a face image)."""
    if dropped.plate is not None:
        plate = dropped.plate
        return {"kind": "plate", "text": plate.text, "country": plate.country, "confidence": plate.confidence,
                "camera": plate.camera}
    if dropped.container is not None:
        box = dropped.container
        return {"kind": "container", "number": box.number, "confidence": box.confidence, "camera": box.camera}
    if dropped.matched is None:
        return {"kind": "face", "image": True}
    return {"kind": "face", "matched": dropped.matched, "score": dropped.score}


class LaneBusy(Exception):
    """A lane already has ``queue_size`` reads waiting: this one is refused, not queued (rule 4). The HTTP
    source answers 503 with ``Retry-After``; the MQTT source logs it and counts the drop."""

    def __init__(self, terminal: str, lane: str, queue_size: int) -> None:
        super().__init__(f"lane {lane!r} at terminal {terminal!r} has {queue_size} reads waiting")
        self.terminal, self.lane, self.queue_size = terminal, lane, queue_size


_IDLE = object()  # the queue had nothing before the next tick was due


@dataclass(frozen=True, slots=True)
class LaneLoad:
    """What one lane's bounds are doing (rule 4, rule 7), for ``/healthz``: a lane that refuses reads or
    evicts trucks is flooded or stuck, and its drivers wait at a held barrier until someone looks."""

    queued: int  # reads waiting now
    queue_size: int  # how many may wait; one more is refused
    refused: int  # reads refused because the queue was full, since start (every source)
    evicted: int  # trucks held for an officer because more than max_pending gathered, since start

    def as_json(self) -> dict[str, int]:
        return {"queued": self.queued, "queue_size": self.queue_size, "refused": self.refused,
                "evicted": self.evicted}


@dataclass(eq=False)
class _Lane:
    """One lane's queue, its bound and thread. ``submit_lock`` makes "is there room? put" one step (and
    guards ``refused``)."""

    runtime: LaneRuntime
    queue: queue.Queue[tuple[Read, float] | None]
    submit_lock: threading.Lock
    capacity: int
    refused: int = 0
    thread: threading.Thread | None = None


class LaneWorker:
    """Feeds reads to lanes and ticks them: one thread and one bounded queue PER LANE (rule 4).

    Sources (the MQTT network thread, HTTP handlers) must not wait for the service: they ``submit`` and
    return, or get ``LaneBusy`` when that lane already has its queue size of reads waiting (``queue_sizes``
    by ``(terminal, lane)``, else ``queue_size``). Each lane's
    thread re-sends what the outbox holds for it (``recover``), then feeds its reads in order and calls
    its ``tick()`` at least every ``tick_seconds``; one more thread prunes each outbox every
    ``prune_seconds``.
    """

    def __init__(self, lanes: Iterable[LaneRuntime], *, tick_seconds: float = 0.5,
                 prune_seconds: float = 3600.0, queue_size: int = 1000,
                 queue_sizes: Mapping[tuple[str, str], int] | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.lanes: dict[tuple[str, str], LaneRuntime] = {(ln.terminal, ln.lane): ln for ln in lanes}
        sizes = dict(queue_sizes or {})
        unknown = sorted(sizes.keys() - self.lanes.keys())
        if unknown:
            raise ValueError(f"queue_sizes names lanes the worker does not run: {unknown}")
        if queue_size < 1 or any(size < 1 for size in sizes.values()):
            raise ValueError("queue_size >= 1")
        self.tick_seconds = tick_seconds
        self.prune_seconds = prune_seconds  # how often the outboxes drop what they keep past keep_days
        self.queue_size = queue_size  # the default bound, for a lane queue_sizes does not name
        self._wall = wall  # stamps when a read arrived: its freshness is not eaten by the queue (rule 6)
        self._lanes = {key: _Lane(ln, queue.Queue(), threading.Lock(), sizes.get(key, queue_size))
                       for key, ln in self.lanes.items()}
        self._stopping = threading.Event()
        self._housekeeper: threading.Thread | None = None

    def has_lane(self, terminal: str, lane: str) -> bool:
        return (terminal, lane) in self.lanes

    def alive(self) -> bool:
        """Every lane's thread runs (``/livez``): started and not crashed out."""
        return all(lane.thread is not None and lane.thread.is_alive() for lane in self._lanes.values())

    def queued(self, terminal: str, lane: str) -> int:
        """How many reads wait for this lane (health, tests)."""
        return self._lanes[(terminal, lane)].queue.qsize()

    def capacity(self, terminal: str, lane: str) -> int:
        """How many reads may wait for this lane; one more is refused (rule 4)."""
        return self._lanes[(terminal, lane)].capacity

    def load(self) -> dict[tuple[str, str], LaneLoad]:
        """Each lane's queue and what its bounds refused since start (``/healthz``)."""
        return {key: LaneLoad(lane.queue.qsize(), lane.capacity, lane.refused, lane.runtime.evicted)
                for key, lane in self._lanes.items()}

    def submit(self, terminal: str, read: Read) -> None:
        """Queue ``read`` for its lane, stamped with the time it arrived (rule 6); never waits.
        ``KeyError``: no such lane; ``LaneBusy``: its queue is full (rule 4)."""
        lane = self._lanes.get((terminal, read.lane))
        if lane is None:
            raise KeyError(f"no lane {read.lane!r} at terminal {terminal!r}")
        received_at = self._wall()
        with lane.submit_lock:  # several sources may submit at once: the bound holds for all of them
            if lane.queue.qsize() >= lane.capacity:
                lane.refused += 1
                raise LaneBusy(terminal, read.lane, lane.capacity)
            lane.queue.put((read, received_at))

    def start(self) -> None:
        self._stopping.clear()
        for (terminal, name), lane in self._lanes.items():
            lane.thread = threading.Thread(target=self._run, args=(lane,), name=f"gate-lane-{terminal}-{name}",
                                           daemon=True)
            lane.thread.start()
        self._housekeeper = threading.Thread(target=self._housekeep, name="gate-lanes-housekeeping", daemon=True)
        self._housekeeper.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what was submitted, then stop. A lane still busy after ``timeout`` (a verify call that
        hangs) is left to its daemon thread and logged; its request stays in the outbox for a re-send."""
        deadline = time.monotonic() + timeout
        for lane in self._lanes.values():
            lane.queue.put(None)  # after every read already queued: those are fed first
        self._stopping.set()
        threads = [lane.thread for lane in self._lanes.values()] + [self._housekeeper]
        for thread in threads:
            if thread is not None:
                thread.join(max(deadline - time.monotonic(), 0.0))
                if thread.is_alive():
                    log.error("gate.lane.stop_timeout", extra={"thread": thread.name})
        for lane in self._lanes.values():
            lane.thread = None
        self._housekeeper = None

    def _run(self, lane: _Lane) -> None:
        """One lane's thread: re-send what its outbox holds, then feed and tick it (rule 4)."""
        runtime = lane.runtime
        self._guard(runtime.lane, runtime.recover)
        next_tick = time.monotonic()
        while True:
            try:
                item: object = lane.queue.get(timeout=max(next_tick - time.monotonic(), 0.0))
            except queue.Empty:
                item = _IDLE
            if item is None:
                return
            if isinstance(item, tuple):
                read, received_at = item
                self._guard(runtime.lane, runtime.feed, read, received_at)
            if time.monotonic() >= next_tick:
                self._guard(runtime.lane, runtime.tick)
                next_tick = time.monotonic() + self.tick_seconds

    def _housekeep(self) -> None:
        """Prune each outbox once per ``prune_seconds`` (else the file grows till the disk is full and the
        lanes stop); shared by lanes, so pruned here once, not by every lane racing."""
        outboxes = list({id(ln.outbox): ln.outbox for ln in self.lanes.values()}.values())
        while True:
            for box in outboxes:
                self._guard("*", box.prune)
            if self._stopping.wait(self.prune_seconds):
                return

    @staticmethod
    def _guard(lane: str, step: Callable[..., object], *args: object) -> None:
        # One lane's bug must not stop its thread; the outbox keeps its request for a re-send.
        try:
            step(*args)
        except Exception:  # noqa: BLE001
            log.exception("gate.lane.crashed", extra={"lane": lane})

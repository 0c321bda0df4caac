"""The gate adapter runtime against the real app (real gate tokens, real PostgreSQL/SQLite) and a real
Mosquitto: the durable outbox, the verify client, barrier sinks, lane runtimes, and the HTTP and MQTT
read inputs. Only our own device edge (the barrier) is recorded instead of driven."""
# ruff: noqa: F811 - ``gate`` is test_gate_verify's fixture, imported here and requested by name

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from gate_adapters.core.correlate import LaneCorrelator
from gate_adapters.core.reads import Read
from gate_adapters.runtime.client import (
    ClientCredentials,
    ServiceUnavailable,
    StaticToken,
    TokenError,
    VerifyClient,
    VerifyRefused,
)
from gate_adapters.runtime.http_source import create_source_app
from gate_adapters.runtime.lane import LaneBusy, LaneRuntime, LaneWorker, verify_body
from gate_adapters.runtime.mqtt_source import MqttSource, new_client
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.sinks import BarrierCommand, Command, MqttBarrier, command_for
from gate_adapters.sources import generic_json
from identity.bootstrap import create_client
from quaygate.schema import gate_decisions

from .factories import TERMINAL, container
from .processes import IN_CI
from .test_gate_verify import Gate, gate  # noqa: F401

LANE = "in-3"
FIXTURES = Path(__file__).parent / "fixtures" / "gate"


class RecordingBarrier:
    """Our own device edge, recorded: what the barrier would have been told."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def send(self, cmd: Command) -> Command:
        self.commands.append(cmd)
        return cmd


class SignallingBarrier(RecordingBarrier):
    """Recorded, and ``acted`` is set once the barrier was told something (another thread waits on it)."""

    def __init__(self) -> None:
        super().__init__()
        self.acted = threading.Event()

    def send(self, cmd: Command) -> Command:
        super().send(cmd)
        self.acted.set()
        return cmd


class HangingClient:
    """A verify call that hangs (the client's retries with backoff, seconds of timeouts) until released,
    then finds no service."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.bodies: list[Mapping[str, Any]] = []

    def verify(self, body: Mapping[str, Any], *, within: float | None = None) -> dict[str, Any]:
        self.bodies.append(body)
        self.entered.set()
        self.release.wait(60)
        raise ServiceUnavailable("timed out")


class Crash(BaseException):
    """The process dies here (not an Exception: nothing in the runtime may catch it)."""


class CrashAfterAnswer:
    """The service answered, then the adapter died before writing ``done``."""

    def __init__(self, client: VerifyClient) -> None:
        self.client = client
        self.answers: list[dict[str, Any]] = []

    def verify(self, body: Mapping[str, Any], *, within: float | None = None) -> dict[str, Any]:
        self.answers.append(self.client.verify(body, within=within))
        raise Crash


class FaultyTransport(httpx.BaseTransport):
    """Network faults in front of the real app: the first ``fail`` calls get ``fault``, then pass through."""

    def __init__(self, inner: httpx.BaseTransport, fail: int, fault: str) -> None:
        self.inner, self.fail, self.fault = inner, fail, fault
        self.bodies: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.read())
        if len(self.bodies) <= self.fail:
            if self.fault == "connect":
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(503, json={"detail": "busy"}, request=request)
        return self.inner.handle_request(request)


def _now() -> datetime:
    return datetime.now(UTC)


def reads(plate: str = "1-ABC-123", n: int = 1, *, at: datetime | None = None, lane: str = LANE,
          face: dict[str, Any] | None = None, badge: str = "AP-123455") -> list[Read]:
    """A truck's three reads, as a device would post them (generic JSON)."""
    at = at or _now()
    objs: list[dict[str, Any]] = [
        {"kind": "plate", "plate": {"text": plate, "country": "BE", "confidence": 0.95}},
        {"kind": "container", "container": {"number": container(n), "confidence": 0.97}},
        {"kind": "badge", "badge": {"scheme": "alfapass", "number": badge}},
    ]
    if face is not None:
        objs.insert(0, {"kind": "face", "face": face})
    return [generic_json.parse_object({**o, "lane": lane, "observed_at": (at + timedelta(milliseconds=100 * i))
                                       .isoformat()}) for i, o in enumerate(objs)]


def real_client(gate: Gate, **kw: Any) -> VerifyClient:
    return VerifyClient("http://testserver", StaticToken(gate.gate_token), http=gate.http, **kw)


def runtime(client: Any, outbox: Outbox, sink: Any, *, mode: str = "commit", **kw: Any) -> LaneRuntime:
    return LaneRuntime(TERMINAL, LANE, "in", mode, LaneCorrelator(LANE, TERMINAL, "in"), client, outbox,  # type: ignore[arg-type]
                       sink, **kw)


def decisions(gate: Gate) -> list[tuple[str, bool]]:
    with gate.engine.connect() as conn:
        rows = conn.execute(sa.select(gate_decisions.c.decision, gate_decisions.c.committed)).all()
    return [(str(r[0]), bool(r[1])) for r in rows]


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "lane.sqlite3")
    yield box
    box.close()


# -- the outbox on its own ---------------------------------------------------------------------------


def test_outbox_keeps_the_first_body_orders_pending_and_prunes_only_decided(tmp_path: Path) -> None:
    now = [1000.0]
    box = Outbox(tmp_path / "o.sqlite3", keep_days=1, wall=lambda: now[0])
    assert box.put({"request_id": "a", "lane": LANE, "mode": "commit"}) is True
    now[0] += 1
    # The same request_id again keeps what was stored first (the service refuses another body, 409) and
    # says it was there: the lane treats it as a replay.
    assert box.put({"request_id": "a", "lane": LANE, "mode": "check"}) is False
    box.put({"request_id": "b", "lane": LANE})
    box.put({"request_id": "c", "lane": "in-4"})
    assert [p.request_id for p in box.pending()] == ["a", "b", "c"]
    assert box.pending()[0].body["mode"] == "commit"
    assert (box.newest(LANE), box.newest("in-4"), box.newest("in-9")) == ("b", "c", None)
    assert [p.request_id for p in box.pending(LANE)] == ["a", "b"]
    box.done("a", {"decision": "allow"})
    assert [p.request_id for p in box.pending(LANE)] == ["b"] and box.response("a") == {"decision": "allow"}
    now[0] += 2 * 86400
    assert box.prune() == 1  # "a" only: pending rows are never pruned
    assert box.response("a") is None and [p.request_id for p in box.pending()] == ["b", "c"]
    box.close()


def test_the_lane_worker_prunes_its_outbox(tmp_path: Path) -> None:
    """Nothing else prunes it: a decided row past keep_days goes, a pending one stays."""
    import time as clock

    from gate_adapters.runtime.lane import LaneWorker

    now = [1000.0]
    box = Outbox(tmp_path / "w.sqlite3", keep_days=1, wall=lambda: now[0])
    box.put({"request_id": "old", "lane": "elsewhere", "mode": "commit"})
    box.done("old", {"decision": "allow"})
    box.put({"request_id": "pending", "lane": "elsewhere", "mode": "commit"})
    now[0] += 2 * 86400
    worker = LaneWorker([runtime(object(), box, None)], tick_seconds=3600, prune_seconds=3600)
    worker.start()
    try:
        deadline = clock.monotonic() + 10
        while box.response("old") is not None:
            assert clock.monotonic() < deadline, "never pruned"
            clock.sleep(0.02)
    finally:
        worker.stop()
    assert [p.request_id for p in box.pending()] == ["pending"]
    box.close()


def test_an_outbox_row_survives_sigkill_right_after_put(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite3"
    code = (
        "import os, signal, sys\n"
        "from gate_adapters.runtime.outbox import Outbox\n"
        f"Outbox({str(path)!r}).put({{'request_id': 'r-1', 'lane': 'in-3', 'mode': 'commit'}})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    box = Outbox(path)
    assert [(p.request_id, p.body["mode"]) for p in box.pending()] == [("r-1", "commit")]
    box.close()


# -- barrier rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("response", "command", "officer"), [
    ({"decision": "allow", "decision_id": "d", "mode": "commit", "committed": True}, "open", False),
    ({"decision": "allow", "decision_id": "d", "mode": "check", "committed": False}, "hold", False),  # no right used
    ({"decision": "allow", "decision_id": "d", "committed": True}, "hold", True),  # no mode: not a commit
    ({"decision": "allow", "decision_id": "d", "mode": "commit", "committed": False}, "hold", True),
    ({"decision": "deny", "decision_id": "d", "mode": "commit", "committed": False}, "hold", False),
    ({"decision": "review", "decision_id": "d", "mode": "commit", "committed": False}, "hold", True),
    (None, "hold", True),
    ({"error": {"status": 422}}, "hold", True),
])
def test_only_an_allow_opens(response: dict[str, Any] | None, command: str, officer: bool) -> None:
    cmd = command_for(response, LANE)
    assert (cmd.command, cmd.call_officer, cmd.lane) == (command, officer, LANE)


def test_a_timed_out_truck_without_container_or_badge_scheme_gets_a_valid_body() -> None:
    correlator = LaneCorrelator(LANE, TERMINAL, "in", window_seconds=5)
    badge = generic_json.parse_object({"lane": LANE, "kind": "badge", "observed_at": _now().isoformat(),
                                       "badge": {"number": "AP-123455"}})
    assert correlator.add(badge, 0.0) == []
    (ready,) = correlator.tick(10.0)
    body = verify_body(ready, "commit", "portpass")
    assert body["container"] == {"number": "", "confidence": 0.0}
    assert body["badge"] == {"scheme": "portpass", "number": "AP-123455"} and body["mode"] == "commit"


# -- a lane against the real service ----------------------------------------------------------------


def test_a_pickable_right_opens_the_barrier_and_is_gated_in(gate: Gate, outbox: Outbox) -> None:
    rid = gate.pickable(1)
    sink = RecordingBarrier()
    lane = runtime(real_client(gate), outbox, sink)
    results = [r for read in reads() for r in lane.feed(read)]
    assert [r.decision for r in results] == ["allow"]
    assert [c.command for c in sink.commands] == [BarrierCommand.OPEN]
    assert sink.commands[0].decision_id == results[0].response["decision_id"]  # type: ignore[index]
    assert gate.state(rid) == "gated_in" and decisions(gate) == [("allow", True)]
    assert outbox.pending() == [] and outbox.response(results[0].request_id)["committed"] is True  # type: ignore[index]


def test_a_check_lane_never_opens_the_barrier(gate: Gate, outbox: Outbox) -> None:
    # A check answers "allow" without using the right: were it to open, every truck on one right would pass.
    rid = gate.pickable(1)
    sink = RecordingBarrier()
    results = []
    for _ in range(2):  # two trucks on one right (a lane runtime each: no late-duplicate window between them)
        lane = runtime(real_client(gate), outbox, sink, mode="check")
        results += [r for read in reads() for r in lane.feed(read)]
    assert [(r.decision, r.response["mode"], r.response["committed"]) for r in results] == [  # type: ignore[index]
        ("allow", "check", False), ("allow", "check", False)]
    assert [(c.command, c.call_officer) for c in sink.commands] == [(BarrierCommand.HOLD, False)] * 2
    assert gate.state(rid) == "nominated" and decisions(gate) == [("allow", False), ("allow", False)]


def test_a_wrong_plate_holds_and_uses_nothing(gate: Gate, outbox: Outbox) -> None:
    rid = gate.pickable(2)
    sink = RecordingBarrier()
    lane = runtime(real_client(gate), outbox, sink)
    (result,) = [r for read in reads("9-ZZZ-999", 2) for r in lane.feed(read)]
    assert result.decision == "deny" and "plate_mismatch" in result.response["reasons"]  # type: ignore[index]
    assert [(c.command, c.call_officer) for c in sink.commands] == [(BarrierCommand.HOLD, False)]
    assert gate.state(rid) == "nominated" and outbox.pending() == []


def test_a_crash_after_the_answer_is_recovered_with_the_same_request_id(gate: Gate, tmp_path: Path) -> None:
    rid = gate.pickable(3)
    path = tmp_path / "lane.sqlite3"
    first_box, first_sink = Outbox(path), RecordingBarrier()
    crashing = CrashAfterAnswer(real_client(gate))
    lane = runtime(crashing, first_box, first_sink)
    with pytest.raises(Crash):
        for read in reads(n=3):
            lane.feed(read)
    first_box.close()
    assert first_sink.commands == [] and gate.state(rid) == "gated_in"  # the service did its part
    (pending,) = Outbox(path).pending()

    second_box, second_sink = Outbox(path), RecordingBarrier()
    (recovered,) = runtime(real_client(gate), second_box, second_sink).recover()
    assert recovered.request_id == pending.request_id == crashing.answers[0]["request_id"]
    assert recovered.response == crashing.answers[0]  # same decision, same decision_id
    assert [c.command for c in second_sink.commands] == [BarrierCommand.OPEN]
    assert decisions(gate) == [("allow", True)]  # the right was used once
    assert second_box.pending() == []
    second_box.close()


def test_an_unreachable_service_holds_keeps_the_request_and_sends_it_again(gate: Gate, outbox: Outbox) -> None:
    rid = gate.pickable(4)
    wall = [datetime.now(UTC).timestamp()]
    away = VerifyClient("http://127.0.0.1:9", StaticToken(gate.gate_token), attempts=2, sleep=lambda s: None)
    sink = RecordingBarrier()
    lane = runtime(away, outbox, sink)
    (result,) = [r for read in reads(n=4) for r in lane.feed(read)]
    assert result.response is None and result.pending and result.error.startswith("unavailable")  # type: ignore[union-attr]
    assert [(c.command, c.call_officer, c.decision_id) for c in sink.commands] == [(BarrierCommand.HOLD, True, None)]
    assert gate.state(rid) == "nominated" and [p.request_id for p in outbox.pending()] == [result.request_id]

    back = RecordingBarrier()
    (again,) = runtime(real_client(gate), outbox, back, wall=lambda: wall[0]).recover()
    assert again.request_id == result.request_id and again.decision == "allow"
    # The hold called an officer, which latched the lane (lane.py rule 9, kept in the outbox across the
    # restart): the answer is recorded, and holds until the officer at the lane clears it.
    assert [(c.command, c.call_officer) for c in back.commands] == [(BarrierCommand.HOLD, True)]
    assert again.latched is not None and again.latched == outbox.held_latch(LANE).id  # type: ignore[union-attr]
    assert gate.state(rid) == "gated_in" and outbox.pending() == []


def test_a_late_answer_is_recorded_but_does_not_move_the_barrier(gate: Gate, outbox: Outbox) -> None:
    gate.pickable(5)
    away = VerifyClient("http://127.0.0.1:9", StaticToken(gate.gate_token), attempts=1)
    lane_away = runtime(away, outbox, RecordingBarrier())
    for read in reads(n=5):
        lane_away.feed(read)
    (pending,) = outbox.pending()
    later = pending.created_at + 3600  # the truck is long gone
    sink = RecordingBarrier()
    (late,) = runtime(real_client(gate), outbox, sink, wall=lambda: later, act_seconds=60).recover()
    assert late.decision == "allow" and late.command is None and sink.commands == []
    assert outbox.pending() == [] and outbox.response(pending.request_id)["decision"] == "allow"  # type: ignore[index]


def test_a_late_answer_for_one_truck_never_opens_the_barrier_for_the_next(gate: Gate, outbox: Outbox) -> None:
    """Truck A's verify gets no answer; truck B comes and is decided; A's retry then gets "allow,
    committed". B is at the barrier now: A's answer holds and calls an officer (A's right is used). (A's
    hold latched the lane for its officer, so B's deny calls the officer too, lane.py rule 9.)"""
    rid_a = gate.pickable(13)
    gate.pickable(14)
    clock = [0.0]
    first_fails = httpx.Client(transport=FaultyTransport(gate.http._transport, fail=1, fault="503"))
    client = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=first_fails, attempts=1)
    sink = RecordingBarrier()
    lane = runtime(client, outbox, sink, clock=lambda: clock[0])
    (a,) = [r for read in reads(n=13) for r in lane.feed(read)]
    assert a.pending
    clock[0] += 60.0  # B arrives after A's correlation window
    (b,) = [r for read in reads("9-ZZZ-999", 14) for r in lane.feed(read)]
    assert b.decision == "deny"
    held = outbox.held_latch(LANE)
    assert held is not None and outbox.clear_latch(LANE, held.id, "officer at in-3") is not None  # sorted out
    (late,) = lane.recover()  # A's retry, well within act_seconds
    assert late.request_id == a.request_id and late.decision == "allow" and late.response["committed"] is True  # type: ignore[index]
    assert late.latched is None  # held because B's request came after it, not by the latch (cleared)
    assert [(c.command, c.call_officer) for c in sink.commands] == [(BarrierCommand.HOLD, True)] * 3
    assert outbox.pending() == [] and outbox.response(a.request_id)["decision"] == "allow"  # type: ignore[index]
    assert gate.state(rid_a) == "gated_in"  # on the server's books: the officer sorts truck A out


def test_a_late_answer_for_a_truck_handed_to_an_officer_never_opens_once_he_cleared_the_latch(
        gate: Gate, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """Review finding: truck A's verify gets no answer (a 503): hold, an officer called, the lane latched for A.
    The officer lets A through by hand (or sends him back) and clears the latch; behind A stands a truck whose
    reads are not complete (or a tailgater with none), so A's request is still the lane's newest. A's retry
    then gets "allow, committed": before, it opened the barrier for whoever stood there (one allow, two
    openings). Now the answer is recorded and logged, and the barrier is told nothing (lane.py rule 2)."""
    rid = gate.pickable(16)
    first_fails = httpx.Client(transport=FaultyTransport(gate.http._transport, fail=1, fault="503"))
    client = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=first_fails, attempts=1)
    sink = RecordingBarrier()
    lane = runtime(client, outbox, sink)
    (a,) = [r for read in reads(n=16) for r in lane.feed(read)]
    assert a.pending and [(c.command, c.call_officer, c.decision_id) for c in sink.commands] == [
        (BarrierCommand.HOLD, True, None)]
    latch = outbox.held_latch(LANE)
    assert latch is not None and latch.request_id == a.request_id
    assert lane.feed(reads("7-XYZ-777", 17)[0]) == []  # the truck behind: a plate only, nothing asked
    assert outbox.clear_latch(LANE, latch.id, "officer at in-3") is not None  # he dealt with truck A
    assert outbox.newest(LANE) == a.request_id
    with caplog.at_level(logging.WARNING, logger="gate_adapters.lane"):
        (late,) = lane.recover()  # the uplink is back, well within act_seconds
    assert late.request_id == a.request_id and late.decision == "allow" and late.response["committed"] is True  # type: ignore[index]
    assert late.command is None and late.latched is None
    assert [(c.command, c.call_officer, c.decision_id) for c in sink.commands] == [(BarrierCommand.HOLD, True, None)]
    assert [(r.getMessage(), r.request_id) for r in caplog.records  # type: ignore[attr-defined]
            if r.getMessage().startswith("gate.lane.late_answer")] == [
        ("gate.lane.late_answer.officer_called", a.request_id)]
    assert outbox.pending() == [] and outbox.response(a.request_id)["decision"] == "allow"  # type: ignore[index]
    assert outbox.held_latch(LANE) is None  # nothing to latch: the officer already decided about truck A
    assert gate.state(rid) == "gated_in"  # on the service's books, as the officer let him in


def test_a_request_put_but_never_sent_before_a_crash_still_opens_when_recovered(gate: Gate, tmp_path: Path) -> None:
    """The precise rule above, not "sent before": a crash after the request was put and before its send
    (no officer was ever called for this truck, who still waits at the barrier) is recovered with an open."""
    rid = gate.pickable(18)
    path = tmp_path / "lane.sqlite3"
    first_box = Outbox(path)
    correlator = LaneCorrelator(LANE, TERMINAL, "in")
    (ready,) = [r for i, read in enumerate(reads(n=18)) for r in correlator.add(read, float(i))]
    assert first_box.put(verify_body(ready, "commit", "alfapass"))  # ... and the process dies here
    first_box.close()
    box, sink = Outbox(path), RecordingBarrier()
    (recovered,) = runtime(real_client(gate), box, sink).recover()
    assert recovered.request_id == ready.request_id and recovered.decision == "allow"
    assert [c.command for c in sink.commands] == [BarrierCommand.OPEN] and recovered.latched is None
    assert gate.state(rid) == "gated_in" and box.pending() == []
    box.close()


def test_reads_fed_again_never_move_the_barrier_again(gate: Gate, outbox: Outbox) -> None:
    """The same reads again (a replay, a camera re-sending its buffer, a restart that correlates them once
    more) make the same request id, which the service answers with its stored "allow, committed"."""
    gate.pickable(15)
    truck = reads(n=15)
    first = RecordingBarrier()
    lane = runtime(real_client(gate), outbox, first)
    (allowed,) = [r for read in truck for r in lane.feed(read)]
    assert allowed.decision == "allow" and [c.command for c in first.commands] == [BarrierCommand.OPEN]
    # Soon after, to a restarted lane (no correlator state): the reads are fresh, the request is not.
    again = RecordingBarrier()
    restarted = runtime(real_client(gate), outbox, again)
    (replayed,) = [r for read in truck for r in restarted.feed(read)]
    assert replayed.request_id == allowed.request_id and replayed.error == "replayed: request already made"
    assert [(c.command, c.call_officer, c.decision_id) for c in again.commands] == [(BarrierCommand.HOLD, True, None)]
    # Ten minutes later: the reads themselves are refused.
    later = RecordingBarrier()
    stale = runtime(real_client(gate), outbox, later, wall=lambda: truck[0].observed_at.timestamp() + 600)
    assert [r for read in truck for r in stale.feed(read)] == [] and later.commands == []
    assert decisions(gate) == [("allow", True)]


def test_a_read_observed_long_before_or_after_it_arrived_is_refused(
        outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    now = _now().timestamp()
    lane = runtime(VerifyClient("http://127.0.0.1:9", StaticToken("t")), outbox, RecordingBarrier(),
                   wall=lambda: now)
    (old, *_), (ahead, *_) = reads(at=_now() - timedelta(minutes=10)), reads(at=_now() + timedelta(minutes=1))
    with caplog.at_level(logging.WARNING, logger="gate_adapters.lane"):
        assert lane.feed(old) == [] and lane.feed(ahead) == []
    reasons = [r.reason for r in caplog.records if r.getMessage() == "gate.lane.read_refused"]  # type: ignore[attr-defined]
    assert len(reasons) == 2 and "before the read arrived" in reasons[0] and "after the read arrived" in reasons[1]
    assert lane.correlator.pending_count == 0
    (fresh, *_) = reads(at=_now() - timedelta(seconds=20))
    assert lane.feed(fresh) == [] and lane.correlator.pending_count == 1
    # The worker judges a read by when it was submitted, not when its turn in the queue came.
    queued = runtime(VerifyClient("http://127.0.0.1:9", StaticToken("t")), outbox, RecordingBarrier())
    worker = LaneWorker([queued], wall=lambda: now + 600)
    worker.submit(TERMINAL, reads()[0])
    worker.start()
    worker.stop()
    assert queued.correlator.pending_count == 0


def test_a_garbled_answer_holds_every_truck_due_and_calls_an_officer(outbox: Outbox) -> None:
    """A 200 that is no JSON object (a proxy's error page) is no answer: as if the service were away."""
    html = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, text="<html>")))
    client = VerifyClient("http://testserver", StaticToken("t"), http=html, attempts=2, sleep=lambda s: None)
    clock = [0.0]
    sink = RecordingBarrier()
    lane = runtime(client, outbox, sink, clock=lambda: clock[0], retry_seconds=3600)
    assert lane.recover() == []  # as at start: the next re-send is an hour away
    for plate, n in (("1-ABC-123", 16), ("7-XYZ-777", 17)):  # two trucks, a plate read each
        assert lane.feed(reads(plate, n)[0]) == []
    clock[0] = 31.0
    results = lane.tick()  # both time out in this tick
    assert len(results) == 2 and all(r.pending and "without a JSON object" in r.error for r in results)  # type: ignore[operator]
    assert [p.request_id for p in outbox.pending()] == [r.request_id for r in results]
    assert [(c.command, c.call_officer) for c in sink.commands] == [(BarrierCommand.HOLD, True)] * 2
    with pytest.raises(TokenError, match="not a JSON object"):
        ClientCredentials("http://testserver/oauth2/token", "c", "s", http=html).token()


def test_every_truck_due_is_in_the_outbox_before_the_first_is_sent(gate: Gate, outbox: Outbox) -> None:
    """The adapter dies on the first truck's answer: the second truck due in the same tick is kept."""
    clock = [0.0]
    lane = runtime(CrashAfterAnswer(real_client(gate)), outbox, RecordingBarrier(), clock=lambda: clock[0],
                   retry_seconds=3600)
    assert lane.recover() == []
    for plate, n in (("1-ABC-123", 18), ("7-XYZ-777", 19)):
        assert lane.feed(reads(plate, n)[0]) == []
    clock[0] = 31.0
    with pytest.raises(Crash):
        lane.tick()
    assert len(outbox.pending()) == 2


def test_a_refused_request_is_final_and_holds_with_an_officer(gate: Gate, outbox: Outbox) -> None:
    rid = gate.pickable(6)
    sink = RecordingBarrier()
    lane = runtime(real_client(gate), outbox, sink)
    image = {"image": "aGVsbG8="}  # "hello" is no photo: 422 image_unreadable
    (result,) = [r for read in reads(n=6, face=image) for r in lane.feed(read)]
    assert result.response is None and result.error == "refused: 422 image_unreadable"
    assert [(c.command, c.call_officer) for c in sink.commands] == [(BarrierCommand.HOLD, True)]
    assert outbox.pending() == [] and outbox.response(result.request_id) == {  # a re-send cannot help
        "error": {"status": 422, "code": "image_unreadable", "detail": outbox.response(
            result.request_id)["error"]["detail"]}}  # type: ignore[index]
    assert gate.state(rid) == "nominated"


def test_an_evicted_truck_holds_and_calls_an_officer_without_asking_the_service(
        outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """correlate.py rule 4, lane.py rule 7: a truck pushed out by ``max_pending`` newer ones is not
    dropped in silence: the barrier holds, an officer is called, and nobody is asked about its reads."""
    client, sink = HangingClient(), RecordingBarrier()
    client.release.set()  # were it asked, it would answer at once (no service): it must not be asked
    lane = LaneRuntime(TERMINAL, LANE, "in", "commit", LaneCorrelator(LANE, TERMINAL, "in", max_pending=1),
                       client, outbox, sink)  # type: ignore[arg-type]
    first, second = reads("1-ABC-123", 22)[0], reads("7-XYZ-777", 23)[0]
    assert lane.feed(first) == []
    with caplog.at_level(logging.WARNING, logger="gate_adapters.lane"):
        (evicted,) = lane.feed(second)  # a second truck's plate while the first still lacks container and badge
    assert evicted.error is not None and evicted.error.startswith("evicted") and not evicted.pending
    assert evicted.response is None and evicted.missing == ("badge", "container")
    assert evicted.observed_at == first.observed_at.isoformat()
    assert [(c.command, c.call_officer, c.decision_id) for c in sink.commands] == [(BarrierCommand.HOLD, True, None)]
    assert client.bodies == [] and outbox.pending() == []  # never put, never sent
    [logged] = [r for r in caplog.records if r.getMessage() == "gate.lane.evicted"]
    assert (logged.lane, logged.kinds, logged.missing) == (LANE, ["plate"], ["badge", "container"])  # type: ignore[attr-defined]
    assert lane.correlator.pending_count == 1  # the second truck gathers on


# -- lanes on threads of their own ---------------------------------------------------------------------


def test_a_lane_stuck_on_the_service_never_delays_another_lane(gate: Gate, outbox: Outbox) -> None:
    """Lane in-4's verify call hangs; lane in-3's truck is still decided and its barrier opened meanwhile.
    Both lanes share one outbox file (and its connection) across their threads."""
    rid = gate.pickable(12)
    hanging, stuck_sink, free_sink = HangingClient(), SignallingBarrier(), SignallingBarrier()
    stuck = LaneRuntime(TERMINAL, "in-4", "in", "commit", LaneCorrelator("in-4", TERMINAL, "in"), hanging,  # type: ignore[arg-type]
                        outbox, stuck_sink)
    free = runtime(real_client(gate), outbox, free_sink)
    worker = LaneWorker([stuck, free], tick_seconds=0.05)
    worker.start()
    try:
        for read in reads("7-XYZ-777", 24, lane="in-4"):
            worker.submit(TERMINAL, read)
        assert hanging.entered.wait(10), "lane in-4 never asked"
        for read in reads(n=12):
            worker.submit(TERMINAL, read)
        assert free_sink.acted.wait(20), "lane in-3 waited for lane in-4's verify call"
        assert [c.command for c in free_sink.commands] == [BarrierCommand.OPEN]
        assert gate.state(rid) == "gated_in" and stuck_sink.commands == []  # in-4 still hangs
    finally:
        hanging.release.set()
        worker.stop()
    assert [(c.command, c.call_officer) for c in stuck_sink.commands] == [(BarrierCommand.HOLD, True)]
    assert [p.lane for p in outbox.pending()] == ["in-4"]  # kept for a re-send


def test_offline_upkeep_by_one_lane_never_holds_up_another_lane(tmp_path: Path, outbox: Outbox) -> None:
    """offline.py rule 5: the lanes share the offline mode from their own threads. While one lane's tick
    refreshes the passes from a service that hangs, another lane's tick goes on and a decision is made."""
    from gate_adapters.runtime.offline import OfflineMode, PassStore

    class HangingCalls(HangingClient):
        def call(self, method: str, url: str, body: Mapping[str, Any] | None = None, *,
                 attempts: int | None = None, patience: float | None = None) -> dict[str, Any]:
            return self.verify(body or {})

    client = HangingCalls()
    store = PassStore(tmp_path / "passes.sqlite3", issuer="https://quaygate.example.eu", terminal=TERMINAL,
                      secret=b"adapter")
    offline = OfflineMode(client, store, outbox)  # type: ignore[arg-type]
    upkeep = threading.Thread(target=offline.maintain)
    upkeep.start()
    try:
        assert client.entered.wait(10)  # the refresh hangs
        other_tick = threading.Thread(target=offline.maintain)
        other_tick.start()
        other_tick.join(20)
        assert not other_tick.is_alive(), "another lane's tick waited for the refresh"
        decided: list[Any] = []
        decision = threading.Thread(target=lambda: decided.append(offline.decide("r-1", {"lane": "in-4"})))
        decision.start()
        decision.join(20)
        assert decided == [None], "a decision waited for the refresh"  # a malformed body: not decidable
    finally:
        client.release.set()
        upkeep.join(20)
        store.close()
    assert len(client.bodies) == 1  # one refresh call: the other tick did not start a second one


def test_a_full_lane_queue_refuses_a_read_and_leaves_the_other_lanes_alone(outbox: Outbox) -> None:
    other = LaneRuntime(TERMINAL, "in-4", "in", "commit", LaneCorrelator("in-4", TERMINAL, "in"),
                        HangingClient(), outbox, RecordingBarrier())  # type: ignore[arg-type]
    worker = LaneWorker([runtime(HangingClient(), outbox, RecordingBarrier()), other], queue_size=2)
    plate, container_, badge = reads(n=25)
    worker.submit(TERMINAL, plate)
    worker.submit(TERMINAL, container_)
    with pytest.raises(LaneBusy) as busy:  # not started: nothing takes them; a third one is refused
        worker.submit(TERMINAL, badge)
    assert (busy.value.lane, busy.value.queue_size) == (LANE, 2)
    worker.submit(TERMINAL, reads(n=25, lane="in-4")[0])
    assert (worker.queued(TERMINAL, LANE), worker.queued(TERMINAL, "in-4")) == (2, 1)
    with pytest.raises(ValueError):
        LaneWorker([], queue_size=0)


# -- the verify client -------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["connect", "503"])
def test_the_client_retries_faults_with_the_same_body(gate: Gate, fault: str) -> None:
    rid = gate.pickable(7)
    transport = FaultyTransport(gate.http._transport, fail=2, fault=fault)
    http = httpx.Client(transport=transport)
    client = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=http, attempts=3,
                          sleep=lambda s: None)
    got = client.verify(gate.body(7, mode="commit"))
    assert got["decision"] == "allow" and got["committed"] is True
    assert len(transport.bodies) == 3 and len(set(transport.bodies)) == 1  # same request_id every time
    assert gate.state(rid) == "gated_in"
    with pytest.raises(ServiceUnavailable):
        VerifyClient("http://testserver", StaticToken(gate.gate_token), attempts=2, sleep=lambda s: None,
                     http=httpx.Client(transport=FaultyTransport(gate.http._transport, 5, fault))
                     ).verify(gate.body(7, mode="commit"))


def test_a_problem_answer_is_not_retried_and_says_what_is_wrong(gate: Gate) -> None:
    gate.pickable(8)
    transport = FaultyTransport(gate.http._transport, fail=0, fault="connect")
    client = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=httpx.Client(transport=transport))
    with pytest.raises(VerifyRefused) as refused:
        client.verify(gate.body(8, direction="sideways"))
    assert (refused.value.status, refused.value.code, refused.value.final) == (422, "invalid_request", True)
    assert len(transport.bodies) == 1
    with pytest.raises(VerifyRefused) as unauthorised:
        VerifyClient("http://testserver", StaticToken("not-a-token"), http=gate.http).verify(gate.body(8))
    assert unauthorised.value.status == 401 and not unauthorised.value.final


def test_client_credentials_are_cached_until_shortly_before_expiry(gate: Gate, outbox: Outbox, tmp_path: Path) -> None:
    from gate_adapters.runtime.offline import OfflineMode, PassStore
    from identity.registration.endpoint import management_for

    rid = gate.pickable(9)
    client_id, secret = create_client(gate.engine, name="lane adapter", role="terminal_gate",
                                      organisation_id=gate.p.terminal.organisation_id, terminal_code=TERMINAL,
                                      now=_now())
    now = [0.0]
    tokens = ClientCredentials("http://testserver/oauth2/token", client_id, secret or "", http=gate.http,
                               leeway=30, clock=lambda: now[0])
    first = tokens.token()
    now[0] = 10.0
    assert tokens.token() == first  # cached
    expires_in = gate.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                                auth=(client_id, secret or "")).json()["expires_in"]
    now[0] = expires_in - 29  # inside the leeway: refreshed before it can expire in flight
    assert tokens.token() != first
    got = VerifyClient("http://testserver", tokens, http=gate.http).verify(gate.body(9, mode="commit"))
    assert got["decision"] == "allow" and gate.state(rid) == "gated_in"
    bad = ClientCredentials("http://testserver/oauth2/token", client_id, "wrong", http=gate.http)
    with pytest.raises(VerifyRefused) as refused:  # the token endpoint said no: the lane holds, never final
        VerifyClient("http://testserver", bad, http=gate.http, attempts=1).verify(gate.body(9))
    assert (refused.value.status, refused.value.code, refused.value.final) == (401, "invalid_client", False)

    # The same in offline mode (client.py rule 6): fresh passes stored, then port security deactivates the
    # gate client (its tokens revoked). The truck's verify gets 401, the new token request 401
    # invalid_client: the lane holds and calls an officer, the request stays pending, and the lane does
    # not decide from its passes (they would open the barrier for as long as they live).
    other = gate.pickable(11)
    client = VerifyClient("http://testserver", tokens, http=gate.http, attempts=1)
    store = PassStore(tmp_path / "passes.sqlite3", terminal=TERMINAL, secret=b"adapter",
                      issuer=str(gate.http.app.state.container.settings.issuer))  # type: ignore[attr-defined]
    offline = OfflineMode(client, store, outbox)
    assert offline.refresh() == 2  # 9 (gated in: its gate-out) and 11
    assert management_for(gate.http.app).deactivate(client_id, admin="port-security", now=_now())
    sink = RecordingBarrier()
    lane = runtime(client, outbox, sink, offline=offline)
    (held,) = [r for read in reads(n=11) for r in lane.feed(read)]
    store.close()
    assert held.response is None and not held.offline and held.pending, held
    assert [(c.command, c.call_officer) for c in sink.commands] == [(BarrierCommand.HOLD, True)]
    assert outbox.held_latch(LANE) is not None  # the officer is called, and the lane stays held for him
    assert [p.request_id for p in outbox.pending()] == [held.request_id] and outbox.unreconciled() == []
    assert gate.state(other) == "nominated"


# -- read inputs ------------------------------------------------------------------------------------


def test_the_http_input_parses_enqueues_and_refuses_with_a_problem(gate: Gate, outbox: Outbox) -> None:
    rid = gate.pickable(10)
    sink = RecordingBarrier()
    worker = LaneWorker([runtime(real_client(gate), outbox, sink)])
    inputs = TestClient(create_source_app(worker, TERMINAL, devices=None))
    at = _now()
    bad = inputs.post(f"/reads/{LANE}", content=b'{"kind": "plate"}')
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["code"] == "payload_refused" and "plate" in bad.json()["detail"]
    assert inputs.post("/reads/in-99", content=b"{}").status_code == 404
    lost = (FIXTURES / "axis_lpv_lost.json").read_bytes()
    assert inputs.post(f"/axis/{LANE}", content=lost).json() == {"accepted": False}
    worker.start()
    for i, kind, body in [
        (0, "plate", {"text": "1-ABC-123", "country": "BE", "confidence": 0.95}),
        (1, "container", {"number": container(10), "confidence": 0.97}),
        (2, "badge", {"scheme": "alfapass", "number": "AP-123455"}),
    ]:
        observed = (at + timedelta(milliseconds=100 * i)).isoformat()
        r = inputs.post(f"/reads/{LANE}", json={"kind": kind, kind: body, "observed_at": observed})
        assert (r.status_code, r.json()) == (202, {"accepted": True}), r.text
    worker.stop()
    assert [c.command for c in sink.commands] == [BarrierCommand.OPEN]
    assert gate.state(rid) == "gated_in"


def test_the_mqtt_source_skips_barrier_topics_and_refuses_bad_payloads(outbox: Outbox) -> None:
    worker = LaneWorker([runtime(VerifyClient("http://127.0.0.1:9", StaticToken("t")), outbox, RecordingBarrier())])
    source = MqttSource(worker, prefix="qg")
    assert source.topics() == [f"qg/{TERMINAL}/{LANE}/#"]
    assert source.handle(f"qg/{TERMINAL}/{LANE}/barrier", b'{"command": "open"}') is None
    assert source.handle(f"qg/{TERMINAL}/{LANE}/plate", b"not json") is None
    assert source.handle(f"qg/OTHER/{LANE}/plate", (FIXTURES / "generic_plate.json").read_bytes()) is None
    assert source.handle(f"qgx/{TERMINAL}/{LANE}/plate", (FIXTURES / "generic_plate.json").read_bytes()) is None
    read = source.handle(f"qg/{TERMINAL}/{LANE}/plate", (FIXTURES / "generic_plate.json").read_bytes())
    assert read is not None and read.kind == "plate" and worker.queued(TERMINAL, LANE) == 1


def test_the_mqtt_source_drops_and_counts_a_read_for_a_full_lane(outbox: Outbox,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    worker = LaneWorker([runtime(HangingClient(), outbox, RecordingBarrier())], queue_size=1)
    source = MqttSource(worker, prefix="qg")
    plate = (FIXTURES / "generic_plate.json").read_bytes()
    assert source.handle(f"qg/{TERMINAL}/{LANE}/plate", plate) is not None
    with caplog.at_level(logging.WARNING, logger="gate_adapters.source.mqtt"):
        assert source.handle(f"qg/{TERMINAL}/{LANE}/plate", plate) is None  # returns at once: dropped
    assert source.dropped == {LANE: 1} and worker.queued(TERMINAL, LANE) == 1
    [logged] = _drop_lines(caplog)
    assert (logged.lane, logged.dropped, logged.queue_size) == (LANE, 1, 1)  # type: ignore[attr-defined]


def _drop_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("gate.source.mqtt.lane_busy")]


def test_a_flood_of_drops_is_logged_once_at_once_then_once_per_interval_and_counted_exactly(
        outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """mqtt_source.py rule 6: one line per dropped read would turn a flood of reads into a flood of log
    lines. The first drop of a lane is logged at once; then at most one line per interval says how many
    were dropped since the last; the count stays exact. The clock is ours: nothing sleeps."""
    now = [1000.0]
    lanes = [LaneRuntime(TERMINAL, name, "in", "commit", LaneCorrelator(name, TERMINAL, "in"), HangingClient(),  # type: ignore[arg-type]
                         outbox, RecordingBarrier()) for name in (LANE, "in-4")]
    worker = LaneWorker(lanes, queue_size=1)  # not started: nothing takes the reads
    source = MqttSource(worker, prefix="qg", drop_log_seconds=10, clock=lambda: now[0])

    def flood(lane: str, n: int) -> None:
        plate = json.dumps({"kind": "plate", "lane": lane, "observed_at": _now().isoformat(),
                            "plate": {"text": "1-ABC-123", "country": "BE", "confidence": 0.95}})
        for _ in range(n):
            source.handle(f"qg/{TERMINAL}/{lane}/plate", plate.encode())

    def lines() -> list[tuple[str, int, int]]:
        out = [(r.lane, r.dropped_since, r.dropped) for r in _drop_lines(caplog)]  # type: ignore[attr-defined]
        caplog.clear()
        return out

    caplog.set_level(logging.WARNING, logger="gate_adapters.source.mqtt")
    flood(LANE, 1 + 100)  # the first is queued, the next hundred dropped
    assert lines() == [(LANE, 1, 1)]  # the first drop, at once
    now[0] += 5
    flood(LANE, 10)
    source.log_drops()  # the interval is not over: nothing to say yet
    flood("in-4", 1 + 2)  # another lane's first drop is its own, logged at once
    assert lines() == [("in-4", 1, 1)]
    now[0] += 5  # ten seconds since the first line: the next drop brings the summary
    flood(LANE, 1)
    assert lines() == [(LANE, 110, 111)]
    now[0] += 3
    flood(LANE, 4)
    source.log_drops()
    assert lines() == []
    now[0] += 7  # the flood is over; the lane's interval is: the thread's call says the rest
    source.log_drops()
    assert sorted(lines()) == [(LANE, 4, 115), ("in-4", 1, 2)]
    now[0] += 60  # quiet for a minute: a new flood's first drop is logged at once again
    flood(LANE, 1)
    assert lines() == [(LANE, 1, 116)]
    flood(LANE, 2)
    source.stop()  # what is left is said at stop
    assert lines() == [(LANE, 2, 118)]
    assert source.dropped == {LANE: 118, "in-4": 2}
    assert (worker.queued(TERMINAL, LANE), worker.queued(TERMINAL, "in-4")) == (1, 1)


def _mosquitto() -> tuple[str, int]:
    host, _, port = os.environ.get("QUAYGATE_TEST_MQTT", "127.0.0.1:1883").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        if IN_CI:
            pytest.fail(f"Mosquitto is required under CI but {host}:{port} is not reachable")
        pytest.skip(f"Mosquitto not reachable at {host}:{port} (start it, or set QUAYGATE_TEST_MQTT)")
    return host, int(port)


def test_reads_over_mqtt_open_the_barrier_over_mqtt(gate: Gate, outbox: Outbox) -> None:
    host, port = _mosquitto()
    rid = gate.pickable(11)
    # A topic tree of our own (parallel runs do not cross), of two levels: a broker shared with other systems
    # (review 158, finding 3: a prefix of more than one level was accepted, then every read refused).
    prefix = f"site{uuid.uuid4().hex[:8]}/qgt"
    heard: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    listener = new_client()
    listener.on_message = lambda c, u, m: heard.put((m.topic, json.loads(m.payload)))
    subscribed: queue.Queue[bool] = queue.Queue()
    listener.on_subscribe = lambda *a: subscribed.put(True)
    listener.connect(host, port)
    listener.subscribe(f"{prefix}/#", qos=1)
    listener.loop_start()
    adapter = new_client()
    worker = LaneWorker([runtime(real_client(gate), outbox, MqttBarrier(adapter, TERMINAL, prefix=prefix))],
                        tick_seconds=0.1)
    source = MqttSource(worker, host=host, port=port, prefix=prefix, client=adapter)
    try:
        subscribed.get(timeout=5)
        worker.start()
        source.start()
        at = _now()
        objs = [("plate", {"text": "1-ABC-123", "country": "BE", "confidence": 0.95}),
                ("container", {"number": container(11), "confidence": 0.97}),
                ("badge", {"scheme": "alfapass", "number": "AP-123455"})]
        assert source.subscribed.wait(5)  # a read published before the subscription would not reach us
        for i, (kind, body) in enumerate(objs):
            payload = {"kind": kind, kind: body, "observed_at": (at + timedelta(milliseconds=100 * i)).isoformat()}
            listener.publish(f"{prefix}/{TERMINAL}/{LANE}/{kind}", json.dumps(payload), qos=1).wait_for_publish(5)
        barrier = None
        while barrier is None:
            topic, message = heard.get(timeout=10)
            if topic.endswith("/barrier"):
                barrier = (topic, message)
    finally:
        source.stop()
        worker.stop()
        listener.disconnect()
        listener.loop_stop()
    topic, message = barrier
    assert topic == f"{prefix}/{TERMINAL}/{LANE}/barrier"
    assert message["command"] == "open" and message["lane"] == LANE and message["decision_id"]
    assert gate.state(rid) == "gated_in"


def test_a_flood_on_one_lane_over_mqtt_is_dropped_and_never_holds_up_the_broker_connection(
        outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """paho's network thread serves every lane: a full lane's reads are dropped (and counted), never
    waited for, so the next lane's read still gets through on the same connection."""
    host, port = _mosquitto()
    prefix = f"qgf{uuid.uuid4().hex[:8]}"
    lanes = [LaneRuntime(TERMINAL, name, "in", "commit", LaneCorrelator(name, TERMINAL, "in"), HangingClient(),  # type: ignore[arg-type]
                         outbox, RecordingBarrier()) for name in (LANE, "in-4")]
    worker = LaneWorker(lanes, queue_size=3)  # not started: nothing takes the reads, as if every lane hung
    source = MqttSource(worker, host=host, port=port, prefix=prefix, client=new_client(),
                        clock=lambda: 0.0)  # the drop log's clock stands still: one line, then the rest at stop
    camera = new_client()
    camera.connect(host, port)
    camera.loop_start()
    caplog.set_level(logging.WARNING, logger="gate_adapters.source.mqtt")
    source.start()
    try:
        assert source.subscribed.wait(10)
        at = _now()
        for i in range(10):
            payload = {"kind": "plate", "plate": {"text": f"1-ABC-{100 + i}", "country": "BE", "confidence": 0.9},
                       "observed_at": (at + timedelta(milliseconds=i)).isoformat()}
            camera.publish(f"{prefix}/{TERMINAL}/{LANE}/plate", json.dumps(payload), qos=1).wait_for_publish(5)
        payload = {"kind": "badge", "badge": {"scheme": "alfapass", "number": "AP-123455"},
                   "observed_at": at.isoformat()}
        camera.publish(f"{prefix}/{TERMINAL}/in-4/badge", json.dumps(payload), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10  # one connection, in order: the in-4 read comes after the flood
        while worker.queued(TERMINAL, "in-4") == 0:
            assert time.monotonic() < deadline, "the in-4 read never arrived: the network thread is held up"
            time.sleep(0.02)
    finally:
        source.stop()
        camera.disconnect()
        camera.loop_stop()
    assert (worker.queued(TERMINAL, LANE), worker.queued(TERMINAL, "in-4")) == (3, 1)
    assert source.dropped == {LANE: 7}
    assert [(r.dropped_since, r.dropped) for r in _drop_lines(caplog)] == [(1, 1), (6, 7)]  # type: ignore[attr-defined]

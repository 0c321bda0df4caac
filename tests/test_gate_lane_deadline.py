"""An answer that arrives late on its FIRST send never opens (review 173, finding 1; runtime/lane.py rule 2,
runtime/client.py rule 8, config.py).

Before, rule 2's age check applied only to answers that came back through recovery: a first send acted on
its answer however late it came. httpx's timeout bounds each network operation, not the call, so a
service (or anything between) that sent its answer in pieces, each within the timeout, held the lane's
thread for as long as it liked, and the next truck's reads waited in the lane's queue, unseen by the
outbox: no "newer request" either. Now each verify call has a total deadline measured from when its
request was made (``act_seconds``), and the lane checks the answer's age before acting: past
``act_seconds`` it is recorded (the right counts as used here), and the barrier holds and calls an officer.
The settings refuse a ``[service] timeout`` times ``attempts`` longer than ``act_seconds``.

The service is the real app (a real gate token, SQLite and PostgreSQL) behind a real local HTTP server
that sends its answers in pieces, each at a time of the test's choosing; our own barrier is recorded."""
# ruff: noqa: F811 - ``gate`` is test_gate_verify's fixture, imported here and requested by name

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gate_adapters.runtime.client import StaticToken, VerifyClient
from gate_adapters.runtime.config import ConfigError, parse
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.sinks import BarrierCommand

from .factories import TERMINAL
from .processes import free_port
from .test_gate_runtime import LANE, RecordingBarrier, outbox, reads, runtime  # noqa: F401 - outbox: a fixture
from .test_gate_verify import Gate, gate  # noqa: F401

VERIFY = "/gate/v1/verify"


@dataclass
class Slow:
    """What the server in front of the service does with each verify answer: the service's own bytes
    (with their Content-Length), written in as many pieces as ``times`` holds, each no sooner than its
    time (seconds after the request arrived); every other call is passed through at once. ``sent``:
    pieces of the last verify answer written; ``cut``: its client hung up before the last one; ``ended``
    is set once its handler is done; ``verifies``: verify calls heard."""

    url: str = ""
    times: list[float] = field(default_factory=lambda: [0.0])
    sent: int = 0
    cut: bool = False
    verifies: int = 0
    ended: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def slow(gate: Gate) -> Iterator[Slow]:
    state = Slow()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            arrived = time.monotonic()
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            r = gate.http.request(self.command, self.path, content=body or None, headers={
                k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type", "accept")})
            payload, verify = r.content, self.path == VERIFY
            self.send_response(r.status_code)
            self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            times = state.times if verify else [0.0]
            if verify:
                state.verifies += 1
                state.sent, state.cut = 0, False
                state.ended.clear()
            step = -(-len(payload) // len(times))
            try:
                for i, at in enumerate(times):
                    time.sleep(max(arrived + at - time.monotonic(), 0.0))
                    self.wfile.write(payload[i * step:(i + 1) * step])
                    self.wfile.flush()
                    if verify:
                        state.sent += 1
            except (BrokenPipeError, ConnectionResetError):
                if verify:
                    state.cut = True
            finally:
                if verify:
                    state.ended.set()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that hung up mid-answer: what this test is about

    server = Server(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def commands(sink: RecordingBarrier) -> list[tuple[BarrierCommand, bool]]:
    return [(c.command, c.call_officer) for c in sink.commands]


def test_a_first_answer_whole_only_after_act_seconds_holds_and_calls_an_officer(
        gate: Gate, slow: Slow, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """The finding's proof: an "allow, committed" written in pieces, each well within the client's timeout,
    whole only after ``act_seconds``. Before, the barrier was told open; now the answer is recorded (the
    right counts as used here), the barrier holds and calls an officer, the lane latched ``late_answer``."""
    rid = gate.pickable(1)
    # Whole 2.3 s after the request, past act_seconds (2 s); each piece within the client's timeout of the
    # last, the one before the last within the deadline: the client reads it all.
    slow.times = [0.0, 1.0, 1.7, 2.3]
    client = VerifyClient(slow.url, StaticToken(gate.gate_token), timeout=2.0, attempts=1)
    sink = RecordingBarrier()
    lane = runtime(client, outbox, sink, act_seconds=2.0)
    with caplog.at_level(logging.WARNING, logger="gate_adapters.lane"):
        (result,) = [r for read in reads(n=1) for r in lane.feed(read)]
    assert slow.ended.wait(10) and (slow.sent, slow.cut) == (4, False)  # the answer came, whole
    assert result.decision == "allow" and result.response["committed"] is True, result  # type: ignore[index]
    assert commands(sink) == [(BarrierCommand.HOLD, True)], sink.commands
    latch = outbox.held_latch(LANE)
    assert latch is not None and (latch.request_id, latch.reason) == (result.request_id, "late_answer")
    assert result.latched is None and result.command is not None and result.command.call_officer
    assert [(r.getMessage(), r.request_id) for r in caplog.records  # type: ignore[attr-defined]
            if r.getMessage().startswith("gate.lane.late_answer")] == [
        ("gate.lane.late_answer.held", result.request_id)]
    assert outbox.pending() == [] and outbox.response(result.request_id)["decision"] == "allow"  # type: ignore[index]
    assert outbox.offline_uses()["in"] == {rid}  # the right counts as used here (outbox.py rule 7)
    assert gate.state(rid) == "gated_in"  # on the service's books: the officer sorts the truck out


def test_a_verify_call_ends_at_its_deadline_however_slowly_its_answer_trickles(
        gate: Gate, slow: Slow, outbox: Outbox) -> None:
    """An answer trickling in a piece every 0.3 s (each within the 2 s timeout) for 3.3 s: before, the
    lane waited for all of it, then opened. Now the call ends at its deadline (``act_seconds`` from when
    the request was made), the client hangs up mid-answer and tries no more, and the truck is held with an
    officer called; the request stays pending (a re-send past ``act_seconds`` only records)."""
    gate.pickable(2)
    slow.times = [0.3 * i for i in range(12)]
    client = VerifyClient(slow.url, StaticToken(gate.gate_token), timeout=2.0, attempts=3, backoff=0.05)
    sink = RecordingBarrier()
    lane = runtime(client, outbox, sink, act_seconds=1.0)
    (result,) = [r for read in reads(n=2) for r in lane.feed(read)]
    assert slow.ended.wait(10)
    assert slow.cut and slow.sent < len(slow.times) and slow.verifies == 1, slow  # hung up, not asked again
    assert result.response is None and result.pending and "within" in (result.error or ""), result
    assert commands(sink) == [(BarrierCommand.HOLD, True)], sink.commands
    latch = outbox.held_latch(LANE)
    assert latch is not None and (latch.request_id, latch.reason) == (result.request_id, "unavailable")
    assert [p.request_id for p in outbox.pending()] == [result.request_id]


def test_a_call_given_no_deadline_still_reads_a_slow_answer_whole(gate: Gate, slow: Slow) -> None:
    """Offline mode's upkeep and the override desk ask with no deadline: they are not a truck at a barrier."""
    gate.pickable(3)
    slow.times = [0.0, 0.2, 0.4]
    client = VerifyClient(slow.url, StaticToken(gate.gate_token), timeout=2.0, attempts=1)
    body = gate.body(3)
    assert client.call("POST", VERIFY, body)["decision"] == "allow"
    assert slow.ended.wait(10) and (slow.sent, slow.cut) == (3, False)


def _settings(**top: Any) -> dict[str, Any]:
    service = {"base_url": "http://127.0.0.1:9", **top.pop("service", {})}
    return {"terminal": TERMINAL, "outbox": "outbox.sqlite3", "dev": True, "service": service,
            "auth": {"client_id": "gate"}, "http": {"port": free_port()}, "lanes": [{"lane": "in-1"}], **top}


@pytest.mark.parametrize("top", [
    {"service": {"timeout": 60, "attempts": 10}},  # the finding's: 600 s of tries beside act_seconds 60
    {"act_seconds": 5, "service": {"timeout": 2, "attempts": 3}},
])
def test_settings_whose_tries_outlast_act_seconds_are_refused(tmp_path: Path, top: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(_settings(**top), base=tmp_path)
    assert exc.value.key == "service.attempts" and "act_seconds" in str(exc.value), str(exc.value)


def test_settings_whose_tries_fit_act_seconds_are_taken(tmp_path: Path) -> None:
    assert parse(_settings(), base=tmp_path).service.timeout * 3 <= 60  # the defaults: 2 s x 3 beside 60 s
    taken = parse(_settings(act_seconds=6, service={"timeout": 2, "attempts": 3}), base=tmp_path)
    assert (taken.act_seconds, taken.service.timeout, taken.service.attempts) == (6, 2, 3)


def test_the_answer_body_is_the_services_own(gate: Gate, slow: Slow) -> None:
    """The answer read piece by piece is the service's, byte for byte (its JSON, its decision id)."""
    gate.pickable(4)
    slow.times = [0.0] * 5
    client = VerifyClient(slow.url, StaticToken(gate.gate_token), timeout=2.0, attempts=1)
    body = gate.body(4)
    answer = client.call("POST", VERIFY, body, within=30.0)
    assert answer == json.loads(json.dumps(gate.verify(body).json()))  # the same request id: the same answer

"""What the barrier was told is in the outbox (review 173, finding 2; runtime/lane.py rule 11, outbox.py rule 13).

Before, the outbox never recorded what the barrier was told. An adapter killed between the decision and
the barrier's command (an "allow, committed" recorded, the right used on the service's books, the "open"
on its way to the controller) restarted with nothing to do: its truck stood at a shut barrier, no officer
was called, and the driver's retry got ``already_used``. Now the lane marks each answered request with the
command the barrier heard (``told``), sealed under the adapter's seal key like the outbox's chain; at
start an answered request without a mark that holds latches the lane for an officer (``barrier_unknown``)
and the barrier is told hold, never the answer again.

Against the real service (a real gate token, SQLite and PostgreSQL) behind a real local HTTP server, a real
barrier controller (a local HTTP server that takes the command and, until told, never answers), an adapter
lane in a child process killed with SIGKILL mid-command, and real outbox files."""
# ruff: noqa: F811 - ``gate`` and ``slow`` are fixtures imported here and requested by name

from __future__ import annotations

import json
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gate_adapters.runtime.client import StaticToken, VerifyClient
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.sinks import BarrierCommand, HttpBarrier

from .factories import TERMINAL, container
from .processes import ROOT, free_port
from .test_gate_lane_deadline import Slow, slow  # noqa: F401
from .test_gate_runtime import LANE, RecordingBarrier, reads, real_client, runtime
from .test_gate_verify import Gate, gate  # noqa: F401

SEAL = b"the adapter's seal key, 32 bytes"

# An adapter's lane on its own: its outbox sealed, its barrier an HTTP controller; the reads come on stdin.
CHILD = """
import json, sys
from gate_adapters.core.correlate import LaneCorrelator
from gate_adapters.runtime.client import StaticToken, VerifyClient
from gate_adapters.runtime.lane import LaneRuntime
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.sinks import HttpBarrier
from gate_adapters.sources.generic_json import parse_object
path, terminal, lane, service, token, barrier, seal = sys.argv[1:8]
runtime = LaneRuntime(terminal, lane, "in", "commit", LaneCorrelator(lane, terminal, "in"),
                      VerifyClient(service, StaticToken(token), attempts=1), Outbox(path, secret=seal.encode()),
                      HttpBarrier(barrier, timeout=60.0))
for line in sys.stdin:
    runtime.feed(parse_object(json.loads(line)))
"""


@dataclass
class Controller:
    """A barrier controller: every command it takes goes to ``heard``; it answers 200 once ``answering``
    is set, and until then keeps the adapter waiting for its answer."""

    url: str = ""
    heard: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    answering: threading.Event = field(default_factory=threading.Event)

    def commands(self) -> list[dict[str, Any]]:
        out = []
        while not self.heard.empty():
            out.append(self.heard.get_nowait())
        return out


@pytest.fixture
def controller() -> Iterator[Controller]:
    state = Controller()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            state.heard.put(json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0")))))
            state.answering.wait(30)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # the adapter it was answering was killed

    server = Server(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/barrier"
    try:
        yield state
    finally:
        state.answering.set()
        server.shutdown()
        server.server_close()


def raw_reads(n: int) -> list[dict[str, Any]]:
    """A truck's three reads as a device posts them (generic JSON), as ``reads`` makes them."""
    at = datetime.now(UTC)
    objs: list[dict[str, Any]] = [
        {"kind": "plate", "plate": {"text": "1-ABC-123", "country": "BE", "confidence": 0.95}},
        {"kind": "container", "container": {"number": container(n), "confidence": 0.97}},
        {"kind": "badge", "badge": {"scheme": "alfapass", "number": "AP-123455"}},
    ]
    return [{**o, "lane": LANE, "observed_at": (at + timedelta(milliseconds=100 * i)).isoformat()}
            for i, o in enumerate(objs)]


def told(path: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT request_id, told FROM verify_requests ORDER BY rowid").fetchall()
    db.close()
    return [(str(r[0]), r[1]) for r in rows]


def test_a_kill_during_the_barriers_open_latches_the_lane_at_restart_and_never_opens_again(
        gate: Gate, slow: Slow, controller: Controller, tmp_path: Path) -> None:
    """The finding's proof: the answer ("allow", committed) recorded, the "open" taken by the controller, the
    adapter killed while it waits for the controller's answer. Before: at restart recover() returned [], no
    command, no latch, nothing pending. Now the lane latches for an officer (``barrier_unknown``), the
    controller hears hold with the officer called, and nothing opens; a second restart finds it done."""
    rid = gate.pickable(1)
    path = tmp_path / "outbox.sqlite3"
    args = [sys.executable, "-c", CHILD, str(path), TERMINAL, LANE, slow.url, gate.gate_token, controller.url,
            SEAL.decode()]
    with subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdin is not None
            proc.stdin.write("".join(json.dumps(o) + "\n" for o in raw_reads(1)))
            proc.stdin.flush()
            opened = controller.heard.get(timeout=30)  # the command is on its way: the adapter waits for the answer
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert (opened["command"], opened["call_officer"]) == ("open", False)
    assert gate.state(rid) == "gated_in"  # on the service's books; the truck is at a shut barrier
    controller.answering.set()

    box = Outbox(path, secret=SEAL)
    try:
        newest = box.newest(LANE)
        answered = None if newest is None else box.answered(newest)
        assert answered is not None and (answered.response["decision"], answered.response["committed"]) == (
            "allow", True)
        lane = runtime(real_client(gate), box, HttpBarrier(controller.url))
        (result,) = lane.recover()
        assert result.request_id == answered.request_id and result.decision == "allow", result
        assert (result.error or "").startswith("barrier_unknown"), result
        held = box.held_latch(LANE)
        assert held is not None and (held.request_id, held.reason) == (answered.request_id, "barrier_unknown")
        assert result.command is not None and (result.command.command, result.command.call_officer,
                                               result.command.latch) == (BarrierCommand.HOLD, True, held.id)
        (hold,) = controller.commands()
        assert (hold["command"], hold["call_officer"], hold["latch"]) == ("hold", True, held.id)
        assert box.pending() == [] and told(path) == [(answered.request_id, "hold")]
    finally:
        box.close()

    again = Outbox(path, secret=SEAL)  # restarted once more: the barrier was told, nothing to do
    try:
        assert runtime(real_client(gate), again, HttpBarrier(controller.url)).recover() == []
        assert controller.commands() == [] and again.held_latch(LANE) is not None
    finally:
        again.close()


def _allowed_twice(gate: Gate, path: Path) -> list[str]:
    """Two trucks allowed and let through at a lane whose outbox is sealed: both marked ``open``."""
    gate.pickable(2)
    gate.pickable(3)
    clock = [0.0]
    box, sink = Outbox(path, secret=SEAL), RecordingBarrier()
    lane = runtime(real_client(gate), box, sink, clock=lambda: clock[0])
    ids = []
    for n in (2, 3):
        clock[0] += 60.0
        (allowed,) = [r for read in reads(n=n) for r in lane.feed(read)]
        assert allowed.decision == "allow"
        ids.append(allowed.request_id)
    assert [c.command for c in sink.commands] == [BarrierCommand.OPEN] * 2
    box.close()
    assert told(path) == [(ids[0], "open"), (ids[1], "open")]
    return ids


def _restart(gate: Gate, path: Path) -> tuple[list[Any], RecordingBarrier, Outbox]:
    box, sink = Outbox(path, secret=SEAL), RecordingBarrier()
    return runtime(real_client(gate), box, sink).recover(), sink, box


def test_a_restart_after_marked_commands_does_nothing(gate: Gate, tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    _allowed_twice(gate, path)
    results, sink, box = _restart(gate, path)
    assert results == [] and sink.commands == [] and box.held_latch(LANE) is None
    box.close()


@pytest.mark.parametrize("change", ["deleted", "edited", "copied", "unsealed"])
def test_a_mark_the_adapter_did_not_seal_counts_for_nothing(gate: Gate, tmp_path: Path, change: str) -> None:
    """The mark goes through the outbox's seal (the adapter's seal key, as its chain): one deleted, edited
    (the time it was told), copied from another request, or written without a seal is no mark."""
    path = tmp_path / "outbox.sqlite3"
    first, second = _allowed_twice(gate, path)
    with sqlite3.connect(path) as db:
        if change == "deleted":
            db.execute("UPDATE verify_requests SET told = NULL, told_at = NULL, told_mac = NULL WHERE request_id = ?",
                       (second,))
        elif change == "edited":
            db.execute("UPDATE verify_requests SET told_at = told_at + 1 WHERE request_id = ?", (second,))
        elif change == "copied":
            db.execute("UPDATE verify_requests SET (told, told_at, told_mac) = (SELECT told, told_at, told_mac "
                       "FROM verify_requests WHERE request_id = ?) WHERE request_id = ?", (first, second))
        else:
            db.execute("UPDATE verify_requests SET told_mac = NULL WHERE request_id = ?", (second,))
    db.close()
    results, sink, box = _restart(gate, path)
    try:
        assert [(r.request_id, (r.error or "").split(":")[0]) for r in results] == [(second, "barrier_unknown")]
        held = box.held_latch(LANE)
        assert held is not None and (held.request_id, held.reason) == (second, "barrier_unknown")
        assert [(c.command, c.call_officer, c.latch) for c in sink.commands] == [(BarrierCommand.HOLD, True, held.id)]
    finally:
        box.close()


def test_an_answer_only_recorded_is_marked_with_nothing_told(gate: Gate, tmp_path: Path) -> None:
    """A late answer recorded and never acted on (lane.py rule 2) is marked ``none`` with its answer, in one
    transaction: a restart finds nothing to do."""
    gate.pickable(5)
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path, secret=SEAL)
    away = runtime(VerifyClient("http://127.0.0.1:9", StaticToken(gate.gate_token), attempts=1), box,
                   RecordingBarrier())
    for read in reads(n=5):
        away.feed(read)
    (pending,) = box.pending()
    later = pending.created_at + 3600  # the truck is long gone
    sink = RecordingBarrier()
    (late,) = runtime(real_client(gate), box, sink, wall=lambda: later, act_seconds=60).recover()
    assert late.decision == "allow" and late.command is None and sink.commands == []
    box.close()
    assert told(path) == [(pending.request_id, "none")]
    results, sink, box = _restart(gate, path)
    assert results == [] and sink.commands == []
    box.close()


def _before_marks(path: Path) -> None:
    """The outbox as an adapter before the marks left it (schema 3: no told columns)."""
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX verify_requests_untold")
        for column in ("told", "told_at", "told_mac"):
            db.execute(f"ALTER TABLE verify_requests DROP COLUMN {column}")
        db.execute("PRAGMA user_version = 3")
    db.close()


@pytest.mark.parametrize("first_open", ["adapter", "latch command"])
def test_answers_from_before_the_marks_latch_nothing(gate: Gate, tmp_path: Path, first_open: str) -> None:
    """An adapter upgraded in place: the answers its outbox holds were acted on by a version that kept no
    mark. They are marked ``before`` at the migration, sealed by the adapter (at once, or at its first start
    when the latch command, which opens the file without the seal key, migrated it first)."""
    path = tmp_path / "outbox.sqlite3"
    first, second = _allowed_twice(gate, path)
    _before_marks(path)
    if first_open == "latch command":
        Outbox(path).close()
    results, sink, box = _restart(gate, path)
    try:
        assert results == [] and sink.commands == [] and box.held_latch(LANE) is None
    finally:
        box.close()
    assert told(path) == [(first, "before"), (second, "before")]
    results, sink, box = _restart(gate, path)  # sealed now: a second start finds them so
    assert results == [] and sink.commands == []
    box.close()

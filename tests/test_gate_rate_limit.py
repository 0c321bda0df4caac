"""A 429 from the verify service is the service up and saying "slow down", never an outage (client.py
rule 7, lane.py rule 5): its ``Retry-After`` is honoured (bounded by ``max_retry_after``), the same request
(the same ``request_id``) is asked again, and a truck still unanswered after the wait allowed holds the
barrier and calls an officer, with the request kept for a re-send; offline mode decides nothing, however
fresh its passes. Whoever can make the service rate-limit a lane cannot switch it to its passes.

The service is the real app (real gate token, real ES256 passes, SQLite and PostgreSQL) behind a real
local HTTP server that answers the verify calls it is told to with 429 (or 503) and passes every other
call through; our own barrier is recorded."""
# ruff: noqa: F811 - ``gate`` is test_gate_verify's fixture, imported here and requested by name

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gate_adapters.core.correlate import LaneCorrelator
from gate_adapters.runtime.client import RateLimited, StaticToken, VerifyClient, VerifyRefused
from gate_adapters.runtime.lane import LaneResult, LaneRuntime
from gate_adapters.runtime.offline import OfflineMode, PassStore
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.sinks import BarrierCommand

from .factories import TERMINAL
from .processes import free_port
from .test_gate_runtime import LANE, RecordingBarrier, reads
from .test_gate_verify import Gate, gate  # noqa: F401

VERIFY = "/gate/v1/verify"


@dataclass
class Front:
    """What the server in front of the service does: each verify call takes the next of ``answers``
    (status, Retry-After or None) while any are left, then is passed to the service; ``calls`` is what
    reached it, (monotonic time, path, body)."""

    url: str = ""
    answers: list[tuple[int, str | None]] = field(default_factory=list)
    calls: list[tuple[float, str, bytes]] = field(default_factory=list)

    def verify_calls(self) -> list[tuple[float, dict[str, Any]]]:
        return [(at, json.loads(body)) for at, path, body in self.calls if path == VERIFY]


@pytest.fixture
def front(gate: Gate) -> Iterator[Front]:
    state = Front()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.calls.append((time.monotonic(), self.path, body))
                staged = state.answers.pop(0) if self.path == VERIFY and state.answers else None
            if staged is not None:
                status, retry_after = staged
                code = "rate_limited" if status == 429 else "service_unavailable"
                payload = json.dumps({"type": f"https://quaygate.eu/problems/{code}", "title": "staged",
                                      "status": status, "detail": "staged by the test", "code": code}).encode()
                headers = {"Content-Type": "application/problem+json"}
                if retry_after is not None:
                    headers["Retry-After"] = retry_after
            else:  # the real service
                r = gate.http.request(self.command, self.path, content=body or None, headers={
                    k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type", "accept")})
                status, payload = r.status_code, r.content
                headers = {"Content-Type": r.headers.get("content-type", "application/json")}
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "lane.sqlite3")
    yield box
    box.close()


@pytest.fixture
def offline(gate: Gate, outbox: Outbox, tmp_path: Path) -> Iterator[OfflineMode]:
    """Offline mode, its passes fetched straight from the service (``through``)."""
    direct = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=gate.http)
    store = PassStore(tmp_path / "passes.sqlite3", terminal=TERMINAL, secret=b"adapter",
                      issuer=str(gate.http.app.state.container.settings.issuer))  # type: ignore[attr-defined]
    yield OfflineMode(direct, store, outbox)
    store.close()


def through(front: Front, gate: Gate, offline: OfflineMode, **kw: Any) -> VerifyClient:
    """Fresh, genuine passes fetched straight from the service; then the adapter's client, through the
    front, which offline mode uses too, as the adapter builds them."""
    assert offline.refresh() >= 1
    client = VerifyClient(front.url, StaticToken(gate.gate_token), attempts=3, max_retry_after=3.0, **kw)
    offline.client = client
    return client


def truck(client: VerifyClient, outbox: Outbox, sink: RecordingBarrier, offline: OfflineMode, *, n: int = 1,
          lane: str = LANE) -> tuple[LaneResult, LaneRuntime]:
    run = LaneRuntime(TERMINAL, lane, "in", "commit", LaneCorrelator(lane, TERMINAL, "in"), client, outbox, sink,
                      offline=offline)
    (result,) = [r for read in reads(n=n, lane=lane) for r in run.feed(read)]
    return result, run


def assert_held_not_offline(result: LaneResult, outbox: Outbox, sink: RecordingBarrier, lane: str = LANE) -> None:
    assert result.response is None and not result.offline and result.pending, result
    assert "429" in (result.error or ""), result.error
    assert (sink.commands[-1].command, sink.commands[-1].call_officer) == (BarrierCommand.HOLD, True)
    latch = outbox.held_latch(lane)
    assert latch is not None and latch.reason == "rate_limited"
    assert result.request_id in [p.request_id for p in outbox.pending(lane)]
    assert outbox.unreconciled() == []  # nothing decided from the passes


def test_a_429_is_waited_for_as_retry_after_says_and_the_same_request_is_asked_again(
        gate: Gate, front: Front, outbox: Outbox, offline: OfflineMode) -> None:
    rid = gate.pickable(1)
    front.answers = [(429, "1"), (429, "1")]
    sink = RecordingBarrier()
    result, _ = truck(through(front, gate, offline), outbox, sink, offline)
    assert result.response is not None and not result.offline, result.error
    assert (result.decision, result.response["committed"]) == ("allow", True)
    assert [c.command for c in sink.commands] == [BarrierCommand.OPEN]
    calls = front.verify_calls()
    assert len(calls) == 3 and len({json.dumps(body, sort_keys=True) for _, body in calls}) == 1  # the same request
    assert calls[0][1]["request_id"] == result.request_id
    assert all(later[0] - earlier[0] >= 0.95 for earlier, later in zip(calls, calls[1:], strict=False))
    assert gate.state(rid) == "gated_in" and outbox.pending() == [] and outbox.unreconciled() == []


def _http_date(ahead: timedelta) -> str:
    return format_datetime(datetime.now(UTC) + ahead, usegmt=True)


@pytest.mark.parametrize(("answers", "asked"), [
    pytest.param([(429, "1")] * 9, 3, id="429-each-time-within-the-wait"),
    pytest.param([(429, None)] * 9, 3, id="429-without-retry-after"),
    pytest.param([(429, "0"), (503, "1"), (503, "1")], 3, id="429-then-5xx"),
    pytest.param([(429, "30")], 1, id="retry-after-past-the-wait"),
    pytest.param([(429, _http_date(timedelta(hours=1)))], 1, id="retry-after-a-date-past-the-wait"),
])
def test_a_429_unanswered_after_the_wait_allowed_holds_the_lane_and_never_decides_offline(
        gate: Gate, front: Front, outbox: Outbox, offline: OfflineMode, answers: list[tuple[int, str | None]],
        asked: int) -> None:
    rid = gate.pickable(1)
    front.answers = list(answers)
    sink = RecordingBarrier()
    started = time.monotonic()
    held, _ = truck(through(front, gate, offline, backoff=0.05), outbox, sink, offline)
    assert_held_not_offline(held, outbox, sink)
    assert len(front.verify_calls()) == asked
    assert time.monotonic() - started < 3.0 + 2.0  # never past max_retry_after (and the calls themselves)
    assert gate.state(rid) == "nominated"


def test_a_retry_after_holds_every_call_of_the_adapter_until_it_is_over(
        gate: Gate, front: Front, outbox: Outbox, offline: OfflineMode) -> None:
    """``Retry-After: 30``: no call goes out before it is over, the lane's re-send, another lane's truck
    and offline mode's refresh included (each holds, or is put off, without asking); once over, the
    pending request is asked again with its own request_id and answered."""
    rid = gate.pickable(1)
    now = [1000.0]
    client = through(front, gate, offline, clock=lambda: now[0], sleep=lambda s: pytest.fail(f"waited {s} s"))
    front.answers = [(429, "30")]
    sink = RecordingBarrier()
    held, lane = truck(client, outbox, sink, offline)
    assert_held_not_offline(held, outbox, sink)
    assert len(front.calls) == 1

    now[0] += 20  # still within the 30 s
    (again,) = lane.recover()  # the lane's re-send: not sent
    assert again.request_id == held.request_id and again.pending and not again.offline
    other_sink = RecordingBarrier()
    other, _ = truck(client, outbox, other_sink, offline, n=2, lane="in-4")  # another lane, another truck
    assert_held_not_offline(other, outbox, other_sink, lane="in-4")
    with pytest.raises(VerifyRefused) as refused:  # offline mode's refresh is put off too
        offline.refresh()
    assert isinstance(refused.value, RateLimited) and not refused.value.final
    assert len(front.calls) == 1  # nobody asked
    assert outbox.unreconciled() == []

    now[0] += 11  # over
    (answered,) = lane.recover()
    assert answered.request_id == held.request_id and answered.decision == "allow", answered
    assert not answered.offline and gate.state(rid) == "gated_in"
    assert answered.latched is not None  # the lane latched for the officer holds: he decides at the lane
    assert [body["request_id"] for _, body in front.verify_calls()] == [held.request_id] * 2


def test_a_503_with_retry_after_is_still_an_outage(
        gate: Gate, front: Front, outbox: Outbox, offline: OfflineMode) -> None:
    """The contrast: a 5xx after every attempt is no answer, and the lane decides from its passes."""
    gate.pickable(1)
    front.answers = [(503, "1")] * 3
    sink = RecordingBarrier()
    decided, _ = truck(through(front, gate, offline, backoff=0.05), outbox, sink, offline)
    assert decided.offline and decided.decision == "allow", decided
    assert [c.command for c in sink.commands] == [BarrierCommand.OPEN]
    assert len(front.verify_calls()) == 3


def test_the_wait_allowed_is_a_setting_the_adapter_gives_its_client(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``[service] max_retry_after`` (default 3 s, 0 to 30) is the wait the lanes' client allows."""
    from gate_adapters.adapter import build
    from gate_adapters.runtime.config import parse

    monkeypatch.setenv("QUAYGATE_GATE_CLIENT_SECRET", "s3cret")
    doc: dict[str, Any] = {"terminal": TERMINAL, "outbox": "outbox.sqlite3", "dev": True,
                           "service": {"base_url": "http://127.0.0.1:9"}, "auth": {"client_id": "gate"},
                           "http": {"port": free_port()}, "lanes": [{"lane": "in-1"}]}
    assert parse(doc, base=tmp_path).service.max_retry_after == 3.0
    doc["service"]["max_retry_after"] = 0
    adapter = build(parse(doc, base=tmp_path))
    try:
        (lane,) = adapter.worker.lanes.values()
        assert lane.client.max_retry_after == 0.0
    finally:
        adapter.outbox.close()

"""An "open" the barrier did not hear is never heard later (review 109): runtime/sinks.py rule 6 and
runtime/lane.py rule 10, against the real app, a Mosquitto of this test's own (stopped for the outage,
started again) and a barrier controller subscribed to it with a session that outlives the outage."""
# ruff: noqa: F811 - ``gate`` is test_gate_verify's fixture, imported here and requested by name

from __future__ import annotations

import json
import os
import pwd
import queue
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gate_adapters.runtime.mqtt_source import new_client
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.sinks import BarrierCommand, HttpBarrier, MqttBarrier

from .factories import TERMINAL
from .processes import free_port, listens, start, stop, unavailable
from .test_gate_runtime import LANE, decisions, outbox, reads, real_client, runtime  # noqa: F401
from .test_gate_verify import Gate, gate  # noqa: F401


class Broker:
    """A Mosquitto of the test's own on a free port; ``persistence``: a controller's session (its
    subscription, and the QoS 1 messages queued for it while away) outlives a restart, as on a real
    broker, so what it hears does not depend on who reconnects first."""

    def __init__(self, tmp_path: Path) -> None:
        self.port, self.tmp_path = free_port(), tmp_path
        self.conf = tmp_path / "mosquitto.conf"
        # "user": started as root, mosquitto would switch to the "mosquitto" user, who cannot write here.
        self.conf.write_text(f"user {pwd.getpwuid(os.geteuid()).pw_name}\npersistence true\n"
                             f"persistence_location {tmp_path}/\nallow_anonymous true\n"
                             f"listener {self.port} 127.0.0.1\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start(["mosquitto", "-c", str(self.conf)], log=self.tmp_path / "mosquitto.log",
                          ready=listens(self.port), what="mosquitto")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)  # SIGTERM: mosquitto writes its sessions to persistence_location
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None:
        unavailable("the MQTT outage test", "no mosquitto binary")
    b = Broker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _until(what: str, done: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def _controller(port: int, prefix: str) -> tuple[mqtt.Client, queue.Queue[dict[str, Any]], threading.Event]:
    """A barrier controller: a persistent session (clean_session false), subscribed at QoS 1."""
    heard: queue.Queue[dict[str, Any]] = queue.Queue()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"barrier-{uuid.uuid4().hex[:8]}",
                         clean_session=False)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/#", qos=1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: heard.put(json.loads(m.payload))
    client.reconnect_delay_set(1, 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, heard, subscribed


def test_an_open_published_while_the_broker_is_away_is_never_heard_when_it_returns(
        gate: Gate, outbox: Outbox, broker: Broker) -> None:
    """Truck A is allowed while the broker is away: its "open" is not queued for the reconnect (paho would
    send a QoS 1 one then, and the barrier would lift for truck B, who pulled up since); the lane latches
    instead, and the controller hears the hold with the latch, never the open."""
    rid = gate.pickable(21)
    prefix = f"qgo{uuid.uuid4().hex[:8]}"
    controller, heard, subscribed = _controller(broker.port, prefix)
    adapter = new_client()
    adapter.reconnect_delay_set(1, 1)
    adapter.connect("127.0.0.1", broker.port)
    adapter.loop_start()
    try:
        assert subscribed.wait(10)
        _until("the adapter is connected", adapter.is_connected)
        broker.stop()  # the outage
        _until("the adapter knows the broker is away", lambda: not adapter.is_connected())
        lane = runtime(real_client(gate), outbox, MqttBarrier(adapter, TERMINAL, prefix=prefix))
        [result] = [r for read in reads(n=21) for r in lane.feed(read)]
        broker.start()  # the link returns: paho reconnects and sends what it kept
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while not any(m["command"] == "hold" for m in got) and time.monotonic() < deadline:
            try:
                got.append(heard.get(timeout=0.5))
            except queue.Empty:
                continue
    finally:
        for client in (controller, adapter):
            client.disconnect()
            client.loop_stop()
    assert [m["command"] for m in got if m["command"] == "open"] == [], got  # never the stale open
    assert result.decision == "allow" and gate.state(rid) == "gated_in"  # the service committed the passage
    latch = outbox.held_latch(LANE)
    assert latch is not None and latch.reason == "barrier_unreachable" and result.latched == latch.id
    assert result.command is not None and result.command.command is BarrierCommand.HOLD
    assert result.command.call_officer and result.command.latch == latch.id
    assert [(m["command"], m["call_officer"], m["latch"]) for m in got] == [("hold", True, latch.id)]


def test_an_open_is_published_only_while_connected_and_never_kept_by_paho(broker: Broker) -> None:
    """sinks.py rule 6 on the sink alone: not connected, nothing is handed to paho (no message kept for the
    reconnect); connected, the open goes at QoS 0, which paho never stores."""
    from gate_adapters.runtime.sinks import BarrierUnreachable, Command

    adapter = new_client()
    sink = MqttBarrier(adapter, TERMINAL, prefix="qgo")
    open_ = Command(LANE, BarrierCommand.OPEN, "d-1", call_officer=False)
    with pytest.raises(BarrierUnreachable):
        sink.send(open_)  # never connected at all
    assert adapter._out_messages == {}  # noqa: SLF001 - paho's store of messages for the reconnect: empty
    adapter.connect("127.0.0.1", broker.port)
    adapter.loop_start()
    try:
        _until("the adapter is connected", adapter.is_connected)
        assert sink.send(open_) is open_
        assert adapter._out_messages == {}  # noqa: SLF001 - paho's store of messages for the reconnect
    finally:
        adapter.disconnect()
        adapter.loop_stop()


def test_an_open_an_http_barrier_did_not_hear_latches_the_lane(gate: Gate, outbox: Outbox) -> None:
    """lane.py rule 10 for HTTP: the controller does not answer; the allowed truck stands at a shut barrier,
    so the lane latches and the next truck's allow holds for the officer."""
    rid = gate.pickable(22)
    sink = HttpBarrier(f"http://127.0.0.1:{free_port()}/barrier", timeout=0.5)  # nothing listens there
    lane = runtime(real_client(gate), outbox, sink)
    [result] = [r for read in reads(n=22) for r in lane.feed(read)]
    latch = outbox.held_latch(LANE)
    assert result.decision == "allow" and gate.state(rid) == "gated_in"
    assert latch is not None and latch.reason == "barrier_unreachable" and result.latched == latch.id
    assert result.command is not None and result.command.command is BarrierCommand.HOLD
    assert decisions(gate) == [("allow", True)]


def test_an_open_not_written_in_time_is_dropped_never_written_when_the_broker_reads_again(broker: Broker) -> None:
    """sinks.py rule 6 (review 116): the broker stops reading (SIGSTOP) and the socket fills with other
    messages, so the "open" is still in paho's queue when ``timeout`` is over. It raised BarrierUnreachable
    (the lane latched) but stayed queued, and was written, and heard, once the broker read again. Now the
    connection is cut: the controller never hears it, and paho reconnects."""
    from gate_adapters.runtime.sinks import BarrierUnreachable, Command

    assert broker.proc is not None
    prefix = f"qgo{uuid.uuid4().hex[:8]}"
    controller, heard, subscribed = _controller(broker.port, prefix)
    adapter = new_client()
    adapter.reconnect_delay_set(1, 1)
    adapter.connect("127.0.0.1", broker.port, keepalive=60)
    adapter.loop_start()
    sink = MqttBarrier(adapter, TERMINAL, prefix=prefix, timeout=0.5)
    open_ = Command(LANE, BarrierCommand.OPEN, "d-late", call_officer=False)
    stopped = False
    try:
        assert subscribed.wait(10)
        _until("the adapter is connected", adapter.is_connected)
        broker.proc.send_signal(signal.SIGSTOP)
        stopped = True
        filler = [adapter.publish(f"other{prefix}/filler", b"x" * (1 << 20), qos=0) for _ in range(16)]
        _until("the socket is full", lambda: not all(info.is_published() for info in filler))
        with pytest.raises(BarrierUnreachable):
            sink.send(open_)
        broker.proc.send_signal(signal.SIGCONT)
        stopped = False
        _until("paho reconnected", adapter.is_connected)
        adapter.publish(f"{prefix}/{TERMINAL}/{LANE}/marker", b'{"command": "marker"}', qos=1).wait_for_publish(10)
        got = [heard.get(timeout=10)]
        while got[-1].get("command") != "marker":
            got.append(heard.get(timeout=10))
    finally:
        if stopped:
            broker.proc.send_signal(signal.SIGCONT)
        for client in (controller, adapter):
            client.disconnect()
            client.loop_stop()
    assert [m["command"] for m in got] == ["marker"], got  # never the open


def test_an_open_whose_sink_failed_in_any_way_latches_the_lane(gate: Gate, outbox: Outbox) -> None:
    """Review 173, finding 3: a barrier URL httpx refuses (port 'abc') raised httpx.InvalidURL, not an
    httpx.HTTPError, out of the sink and the lane after the allow was committed: no latch, the truck at a
    shut barrier. Now it is an "open" not heard (sinks.py rule 6): the lane latches."""
    rid = gate.pickable(23)
    lane = runtime(real_client(gate), outbox, HttpBarrier("http://127.0.0.1:abc/barrier", timeout=0.5))
    [result] = [r for read in reads(n=23) for r in lane.feed(read)]
    latch = outbox.held_latch(LANE)
    assert result.decision == "allow" and gate.state(rid) == "gated_in"
    assert latch is not None and latch.reason == "barrier_unreachable" and result.latched == latch.id
    assert result.command is not None and result.command.command is BarrierCommand.HOLD

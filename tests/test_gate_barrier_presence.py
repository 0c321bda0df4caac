"""An MQTT barrier's presence (sinks.py rule 7, review 173 finding 5): an "open" published over MQTT counted
as heard even when no barrier controller was listening: the truck stood at a shut barrier, its right used,
nobody called. With ``presence = true`` each controller keeps a retained status on
``<prefix>/<terminal>/<lane>/barrier/status`` ("online", its last will "offline"); an "open" sent while its
status is not "online" did not reach a barrier, and the lane latches for an officer. On the real Mosquitto
(127.0.0.1:1883), a controller of paho's, the real app for the lane."""
# ruff: noqa: F811 - ``gate`` is test_gate_verify's fixture, imported here and requested by name

from __future__ import annotations

import json
import logging
import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gate_adapters.adapter import _sink, _warn_insecure, barrier_parts, barrier_presence_for
from gate_adapters.runtime.config import ConfigError, parse
from gate_adapters.runtime.lane import LaneWorker
from gate_adapters.runtime.mqtt_source import MqttSource, new_client
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.sinks import BarrierCommand, BarrierUnreachable, Command, MqttBarrier

from .factories import TERMINAL
from .test_gate_barrier_auth import _mqtt_barrier_doc
from .test_gate_barrier_outage import _until
from .test_gate_runtime import LANE, _mosquitto, outbox, reads, real_client, runtime  # noqa: F401
from .test_gate_verify import Gate, gate  # noqa: F401

OPEN = Command(LANE, BarrierCommand.OPEN, "d-1", call_officer=False)
HOLD = Command(LANE, BarrierCommand.HOLD, "d-2", call_officer=True)


def _settings(tmp_path: Path, prefix: str, **barrier: Any) -> Any:
    host, port = _mosquitto()
    return parse({"terminal": TERMINAL, "outbox": "o.sqlite3", "dev": True,
                  "service": {"base_url": "http://127.0.0.1:8000"}, "auth": {"client_id": "g"},
                  "mqtt": {"host": host, "port": port, "prefix": prefix},
                  "lanes": [{"lane": LANE, "barrier": {"kind": "mqtt", **barrier}}]}, base=tmp_path)


class Controller:
    """A barrier controller as docs/gate-adapter.md tells one to behave: its last will "offline" and, once
    connected, "online", both retained on its status topic; it hears its lane's barrier topic."""

    def __init__(self, prefix: str) -> None:
        self.status = f"{prefix}/{TERMINAL}/{LANE}/barrier/status"
        self.heard: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"barrier-{uuid.uuid4().hex[:8]}")
        self.client.will_set(self.status, "offline", qos=1, retain=True)

        def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
            c.subscribe(f"{prefix}/{TERMINAL}/{LANE}/barrier", qos=1)
            c.publish(self.status, "online", qos=1, retain=True)

        self.client.on_connect = on_connect
        self.client.on_message = lambda c, u, m: self.heard.put(json.loads(m.payload))

    def start(self) -> None:
        host, port = _mosquitto()
        self.client.connect(host, port, keepalive=5)
        self.client.loop_start()
        _until("the controller is connected", self.client.is_connected)

    def die(self) -> None:
        """Gone without a word (power cut, cable pulled): the broker publishes its last will."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert sock is not None
        sock.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A prefix of the test's own; its retained statuses are cleared after (the broker is shared)."""
    p = f"qgp{uuid.uuid4().hex[:8]}"
    yield p
    host, port = _mosquitto()
    client = new_client()
    client.connect(host, port)
    client.loop_start()
    try:
        client.publish(f"{p}/{TERMINAL}/{LANE}/barrier/status", b"", qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def adapter_mqtt(tmp_path: Path, prefix: str) -> Iterator[tuple[Any, MqttSource]]:
    """The adapter's MQTT side as ``build`` wires it for a lane with ``presence = true``: its settings, the
    MQTT source (which subscribes the status topics at each connect) and the shared paho client."""
    settings = _settings(tmp_path, prefix, presence=True)
    presence = barrier_presence_for(settings)
    assert presence is not None
    source = MqttSource(LaneWorker([]), host=settings.mqtt.host, port=settings.mqtt.port, prefix=prefix,
                        client=new_client(), presence=presence)
    source.start()
    try:
        _until("the adapter is connected and subscribed", source.subscribed.is_set)
        yield settings, source
    finally:
        source.stop()


def _sink_of(adapter_mqtt: tuple[Any, MqttSource], timeout: float | None = None) -> MqttBarrier:
    settings, source = adapter_mqtt
    sink = _sink(settings.lanes[0], settings, source.client, barrier_parts(settings), source.presence)
    assert isinstance(sink, MqttBarrier) and sink.presence is source.presence
    if timeout is not None:
        sink.timeout = timeout
    return sink


def test_an_open_with_no_controller_listening_is_not_heard(adapter_mqtt: tuple[Any, MqttSource],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Before: the open was published to nobody and counted as heard. Now, no status "online" within the
    barrier's timeout: BarrierUnreachable (the lane latches). A hold needs no presence: heard late or never,
    the barrier stays shut."""
    sink = _sink_of(adapter_mqtt, timeout=0.5)
    caplog.set_level(logging.ERROR, logger="gate_adapters.barrier")
    began = time.monotonic()
    with pytest.raises(BarrierUnreachable) as exc:
        sink.send(OPEN)
    assert 0.4 <= time.monotonic() - began < 3
    assert "not online" in exc.value.reason and [r.getMessage() for r in caplog.records] == ["gate.barrier.unreachable"]
    assert sink.send(HOLD) is HOLD


def test_an_open_is_heard_while_its_controller_is_online_and_not_once_it_is_gone(
        adapter_mqtt: tuple[Any, MqttSource], prefix: str) -> None:
    sink = _sink_of(adapter_mqtt)
    controller = Controller(prefix)
    controller.start()
    try:
        assert sink.send(OPEN) is OPEN  # its "online" came within the timeout
        assert controller.heard.get(timeout=5)["command"] == "open"
        controller.die()
        _until("the broker published the last will", lambda: sink.presence.status(LANE) == "offline")  # type: ignore[union-attr]
        began = time.monotonic()
        with pytest.raises(BarrierUnreachable):
            sink.send(OPEN)
        assert time.monotonic() - began < 0.5  # "offline" is known: no wait
    finally:
        controller.client.loop_stop()
    back = Controller(prefix)  # the controller restarts: "online" again
    back.start()
    try:
        _until("the controller is online again", lambda: sink.presence.status(LANE) == "online")  # type: ignore[union-attr]
        assert sink.send(OPEN) is OPEN
        assert back.heard.get(timeout=5)["command"] == "open"
    finally:
        back.client.disconnect()
        back.client.loop_stop()


def test_the_retained_status_is_learned_at_each_connect(tmp_path: Path, prefix: str) -> None:
    """A controller online before the adapter connects: its retained "online" is what the adapter hears
    when it subscribes; a status from before a reconnect is forgotten until the broker says it again."""
    controller = Controller(prefix)
    controller.start()
    settings = _settings(tmp_path, prefix, presence=True)
    presence = barrier_presence_for(settings)
    assert presence is not None
    source = MqttSource(LaneWorker([]), host=settings.mqtt.host, port=settings.mqtt.port, prefix=prefix,
                        client=new_client(), presence=presence)
    try:
        source.start()
        _until("the retained status", lambda: presence.status(LANE) == "online")
        source.stop()
        assert presence.status(LANE) is None  # disconnected: nothing known
    finally:
        controller.client.disconnect()
        controller.client.loop_stop()


def test_an_allow_with_no_controller_listening_latches_the_lane(gate: Gate, outbox: Outbox,
                                                                adapter_mqtt: tuple[Any, MqttSource]) -> None:
    """The finding, at the lane: before, ('allow', open, None): the right used, the truck at a shut barrier,
    nobody called. Now the lane latches (barrier_unreachable) and the barrier is told hold with the latch."""
    rid = gate.pickable(31)
    lane = runtime(real_client(gate), outbox, _sink_of(adapter_mqtt, timeout=0.5))
    [result] = [r for read in reads(n=31) for r in lane.feed(read)]
    latch = outbox.held_latch(LANE)
    assert result.decision == "allow" and gate.state(rid) == "gated_in"
    assert latch is not None and latch.reason == "barrier_unreachable" and result.latched == latch.id
    assert result.command is not None and result.command.command is BarrierCommand.HOLD


# -- settings --------------------------------------------------------------------------------------------


def test_presence_is_an_mqtt_barriers_and_without_it_every_start_says_what_to_set(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An adapter from before (no presence) starts as it did, and is told at each start what to set: its
    controllers may not publish a status yet, and latching every lane at once would stop the gate."""
    assert parse(_mqtt_barrier_doc(tmp_path, signing=True, presence=True), base=tmp_path).lanes[0].barrier.presence
    caplog.set_level(logging.WARNING, logger="gate_adapters.adapter")
    for doc in (_mqtt_barrier_doc(tmp_path, signing=True), _mqtt_barrier_doc(tmp_path, signing=True, presence=False)):
        caplog.clear()
        settings = parse(doc, base=tmp_path)
        assert settings.lanes[0].barrier.presence is False
        _warn_insecure(settings, barrier_parts(settings))
        [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gate.barrier.no_presence")]
        assert "lane in-1" in line and "presence = true" in line
        assert f"quaygate/{TERMINAL}/in-1/barrier/status" in line
    caplog.clear()
    settings = parse(_mqtt_barrier_doc(tmp_path, signing=True, presence=True), base=tmp_path)
    _warn_insecure(settings, barrier_parts(settings))
    assert not [r for r in caplog.records if r.getMessage().startswith("gate.barrier.no_presence")]
    doc = _mqtt_barrier_doc(tmp_path, signing=True, presence="yes")
    with pytest.raises(ConfigError) as exc:
        parse(doc, base=tmp_path)
    assert exc.value.key == "lanes[0].barrier.presence"
    doc["lanes"] = [{"lane": "in-1", "barrier": {"kind": "http", "url": "https://b.lan/b", "presence": True}}]
    with pytest.raises(ConfigError) as exc:
        parse(doc, base=tmp_path)
    assert exc.value.key == "lanes[0].barrier.presence" and "mqtt" in exc.value.message


def test_a_status_is_never_taken_for_a_read(caplog: pytest.LogCaptureFixture) -> None:
    """mqtt_source.py rule 2: a controller's status under a lane fed by MQTT is skipped, never refused
    as a bad read (a source without presence hears it through its ``#``)."""
    source = MqttSource(LaneWorker([]), prefix="qg", client=new_client())
    caplog.set_level(logging.INFO, logger="gate_adapters.source.mqtt")
    assert source.handle(f"qg/{TERMINAL}/{LANE}/barrier/status", b"online") is None
    assert caplog.records == []

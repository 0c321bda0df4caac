"""``quaygate gate-adapter --config lane.toml`` (issue 5): the adapter as a process a terminal can run.

- settings: the example file parses; each bad setting is a plain message naming its key, exit 2, before
  anything starts;
- on PostgreSQL, with real processes: the app served by uvicorn, the adapter started as a child
  (private_key_jwt with a key file, its tokens DPoP-bound to a key ``--make-keys`` made, the client
  registered ``dpop_bound``), a Hikvision ISAPI XML plate, an OCR portal container and a badge
  read POSTed to its HTTP source: the barrier's "open" is heard on Mosquitto (127.0.0.1:1883) and the
  same decision is in the service, the right used once; SIGTERM stops it cleanly (exit 0, nothing
  pending). A wrong plate at another lane gives a "hold" with the service's deny; the lane simulator
  (``--via http``) drives the running adapter too.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from joserfc.jwk import ECKey

from gate_adapters.adapter import main as adapter_main
from gate_adapters.runtime.config import ConfigError, load, parse
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.simulate import main as simulate
from identity.bootstrap import create_client
from quaygate.cli import main as quaygate_main
from quaygate.schema import gate_decisions

from . import served_long_ago
from .factories import TERMINAL, container
from .processes import ROOT, answers, free_port, serve_app, start, stop, unavailable
from .test_gate_verify import Gate, pickable_in_process

EXAMPLE = ROOT / "docs" / "gate-adapter.example.toml"
BROKER = ("127.0.0.1", 1883)


def _minimal(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "terminal": TERMINAL, "outbox": "outbox.sqlite3", "dev": True,
        "service": {"base_url": "http://127.0.0.1:8000"}, "auth": {"client_id": "gate"},
        "http": {"port": 8089}, "lanes": [{"lane": "in-1"}],
    }
    doc.update(over)
    return doc


# ---- settings --------------------------------------------------------------------------------------


def test_the_example_file_parses() -> None:
    s = load(EXAMPLE)
    assert s.terminal == TERMINAL and [ln.lane for ln in s.lanes] == ["in-1", "in-2", "out-1"]
    assert s.lanes[0].sources == ("http", "mqtt") and s.lanes[1].sources == ("http",)
    assert [ln.barrier.kind for ln in s.lanes] == ["mqtt", "http", "log"] and s.lanes[2].direction == "out"
    assert s.offline.enabled and s.offline.passes == Path("/var/lib/quaygate-gate/outbox-passes.sqlite3")
    assert s.auth.private_key_file == Path("/etc/quaygate-gate/gate-key.jwk") and s.auth.client_secret_file is None


@pytest.mark.parametrize(("over", "key"), [
    ({"terminal": ""}, "terminal"),
    ({"refresh_secnds": 5}, "refresh_secnds"),
    ({"service": {"base_url": "ftp://x"}}, "service.base_url"),
    ({"dev": False}, "service.base_url"),  # http:// outside dev
    ({"service": {"base_url": "http://x", "timeout": -1}}, "service.timeout"),
    ({"service": {"base_url": "http://x", "max_retry_after": -1}}, "service.max_retry_after"),
    ({"service": {"base_url": "http://x", "max_retry_after": 600}}, "service.max_retry_after"),  # a truck waits
    ({"auth": {}}, "auth.client_id"),
    ({"auth": {"client_id": "g", "client_secret_file": "s", "private_key_file": "k"}}, "auth.private_key_file"),
    ({"auth": {"client_id": "g", "algorithm": "HS256"}}, "auth.algorithm"),
    ({"http": {"port": 70000}}, "http.port"),
    ({"mqtt": {"prefix": "quaygate/#"}}, "mqtt.prefix"),
    ({"mqtt": {"prefix": "quaygate/"}}, "mqtt.prefix"),
    ({"mqtt": {"prefix": "/quaygate"}}, "mqtt.prefix"),
    ({"mqtt": {"prefix": "site//quaygate"}}, "mqtt.prefix"),
    ({"offline": {"enabled": "yes"}}, "offline.enabled"),
    ({"lanes": []}, "lanes"),
    ({"lanes": [{"lane": "in-1", "direction": "sideways"}]}, "lanes[0].direction"),
    ({"lanes": [{"lane": "in-1", "mode": "maybe"}]}, "lanes[0].mode"),
    ({"lanes": [{"lane": "in-1"}, {"lane": "in-1"}]}, "lanes[1].lane"),
    ({"lanes": [{"lane": "in/1"}]}, "lanes[0].lane"),
    ({"lanes": [{"lane": "in-1", "sources": ["mqtt"]}]}, "lanes[0].sources"),  # no [mqtt] section
    ({"lanes": [{"lane": "in-1", "require": ["plate", "dna"]}]}, "lanes[0].require"),
    ({"lanes": [{"lane": "in-1", "window_seconds": 0}]}, "lanes[0].window_seconds"),
    ({"lanes": [{"lane": "in-1", "read_age_seconds": 0}]}, "lanes[0].read_age_seconds"),
    ({"lanes": [{"lane": "in-1", "read_age_seconds": 3600}]}, "lanes[0].read_age_seconds"),  # a replay let in
    ({"lanes": [{"lane": "in-1", "read_age_seconds": "30"}]}, "lanes[0].read_age_seconds"),
    ({"lanes": [{"lane": "in-1", "clock_slack_seconds": 0}]}, "lanes[0].clock_slack_seconds"),
    ({"lanes": [{"lane": "in-1", "clock_slack_seconds": 600}]}, "lanes[0].clock_slack_seconds"),
    ({"lanes": [{"lane": "in-1", "max_pending": 0}]}, "lanes[0].max_pending"),
    ({"lanes": [{"lane": "in-1", "max_pending": 2.5}]}, "lanes[0].max_pending"),
    ({"queue_size": 0}, "queue_size"),
    ({"queue_size": 10_000_000}, "queue_size"),
    ({"lanes": [{"lane": "in-1", "queue_size": 0}]}, "lanes[0].queue_size"),
    ({"lanes": [{"lane": "in-1", "queue_size": 100_001}]}, "lanes[0].queue_size"),
    ({"lanes": [{"lane": "in-1", "queue_size": 10.5}]}, "lanes[0].queue_size"),
    ({"lanes": [{"lane": "in-1", "queue_size": True}]}, "lanes[0].queue_size"),
    ({"lanes": [{"lane": "in-1", "barrier": {"kind": "mqtt"}}]}, "lanes[0].barrier.kind"),
    ({"lanes": [{"lane": "in-1", "barrier": {"kind": "http"}}]}, "lanes[0].barrier.url"),
    ({"lanes": [{"lane": "in-1", "barrier": {"kind": "log", "colour": "red"}}]}, "lanes[0].barrier.colour"),
    ({"lanes": [{"lane": "in-1", "mode": "check", "barrier": {"kind": "http", "url": "http://10.20.3.50/b"}}]},
     "lanes[0].mode"),
    ({"mqtt": {}, "lanes": [{"lane": "in-1", "mode": "check", "barrier": {"kind": "mqtt"}}]}, "lanes[0].mode"),
])
def test_a_bad_setting_names_its_key(over: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(_minimal(**over))
    assert exc.value.key == key, str(exc.value)


@pytest.mark.parametrize(("lane", "key", "edit"), [
    ("in-1", "lanes[0].mode", ('mode = "commit"  ', 'mode = "check"   ')),  # its barrier is mqtt
    ("in-2", "lanes[1].mode", ('lane = "in-2"\n', 'lane = "in-2"\nmode = "check"\n')),  # its barrier is http
])
def test_a_check_lane_cannot_drive_a_barrier_that_opens(lane: str, key: str, edit: tuple[str, str], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # A check answers "allow" without using the right: a barrier opened on it lets every truck on one right in.
    text = EXAMPLE.read_text(encoding="utf-8")
    assert edit[0] in text
    bad = tmp_path / "check.toml"
    bad.write_text(text.replace(edit[0], edit[1], 1), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load(bad)
    assert exc.value.key == key and repr(lane) in exc.value.message, str(exc.value)
    for argv in (["--config", str(bad), "--check"], ["--config", str(bad)]):
        assert adapter_main(argv) == 2
        err = capsys.readouterr().err
        assert f"gate-adapter: bad settings: {key}: " in err and repr(lane) in err and "Traceback" not in err
    # A check lane that only logs (a dry run) stays allowed.
    ok = parse(_minimal(lanes=[{"lane": "in-1", "mode": "check", "barrier": {"kind": "log"}}]))
    assert (ok.lanes[0].mode, ok.lanes[0].barrier.kind) == ("check", "log")


def test_the_command_refuses_bad_settings_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('terminal = "BEANR-K1700"\noutbox = "o.sqlite3"\ndev = true\n[service]\nbase_url = "http://x"\n'
                   '[auth]\nclient_id = "g"\nprivate_key_file = "missing.jwk"\n[http]\nport = 8089\n'
                   '[[lanes]]\nlane = "in-1"\nmode = "commit"\n')
    assert quaygate_main(["gate-adapter", "--config", str(bad), "--check"]) == 2
    err = capsys.readouterr().err
    assert "auth.private_key_file: cannot read" in err and "Traceback" not in err
    bad.write_text("terminal = [")
    assert adapter_main(["--config", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert adapter_main(["--config", str(tmp_path / "none.toml")]) == 2
    assert "--config: cannot read" in capsys.readouterr().err
    # A secret neither in a file nor in the environment: refused before anything starts.
    bad.write_text('terminal = "T"\noutbox = "o.sqlite3"\ndev = true\n[service]\nbase_url = "http://x"\n'
                   '[auth]\nclient_id = "g"\n[http]\nport = 8089\n[[lanes]]\nlane = "in-1"\n')
    os.environ.pop("QUAYGATE_GATE_CLIENT_SECRET", None)
    assert adapter_main(["--config", str(bad), "--check"]) == 2
    assert "QUAYGATE_GATE_CLIENT_SECRET" in capsys.readouterr().err
    assert not (tmp_path / "o.sqlite3").exists()


def test_a_lanes_read_age_and_bounds_are_settings_that_change_what_it_refuses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``read_age_seconds`` and ``clock_slack_seconds`` (lane.py rule 6), ``max_pending`` (rule 7) and
    ``queue_size`` (rule 4) go from the settings file to the lanes ``build`` wires."""
    from gate_adapters.adapter import build
    from gate_adapters.runtime.sinks import BarrierCommand
    from gate_adapters.sources import generic_json

    monkeypatch.setenv("QUAYGATE_GATE_CLIENT_SECRET", "s3cret")
    settings = parse(_minimal(queue_size=7, lanes=[
        {"lane": "in-1"},
        {"lane": "in-2", "read_age_seconds": 120, "clock_slack_seconds": 30, "max_pending": 1}]), base=tmp_path)
    assert (settings.lanes[0].read_age_seconds, settings.lanes[0].clock_slack_seconds,
            settings.lanes[0].max_pending, settings.queue_size) == (30.0, 5.0, 4, 7)
    adapter = build(settings)
    try:
        default, relaxed = (adapter.worker.lanes[(TERMINAL, lane)] for lane in ("in-1", "in-2"))
        assert [adapter.worker.capacity(TERMINAL, lane) for lane in ("in-1", "in-2")] == [7, 7]
        now = datetime.now(UTC)

        def read(lane: str, kind: str, body: dict[str, Any], seconds: float) -> Any:
            at = datetime.fromtimestamp(now.timestamp() + seconds, UTC)
            return generic_json.parse_object({"kind": kind, kind: body, "lane": lane, "observed_at": at.isoformat()})

        plate = {"text": "1-ABC-123", "country": "BE", "confidence": 0.9}
        box = {"number": container(1), "confidence": 0.9}
        for lane, taken in ((default, 0), (relaxed, 1)):
            # observed a minute before it arrived, then a container read from a clock 20 s ahead
            assert lane.feed(read(lane.lane, "plate", plate, -60), now.timestamp()) == []
            assert lane.feed(read(lane.lane, "container", box, 20), now.timestamp()) == []
            assert lane.correlator.pending_count == taken, lane.lane
        # in-2 holds one truck at most: a second truck's plate evicts the first (hold, officer).
        (evicted,) = relaxed.feed(read("in-2", "plate", {**plate, "text": "7-XYZ-777"}, 0), now.timestamp())
        assert evicted.error is not None and evicted.error.startswith("evicted")
        assert evicted.missing == ("badge",)  # the plate a minute old and the container 20 s ahead were taken
        assert evicted.command is not None and (evicted.command.command, evicted.command.call_officer) == (
            BarrierCommand.HOLD, True)
    finally:
        adapter.outbox.close()


# ---- the process ------------------------------------------------------------------------------------


def _broker() -> None:
    try:
        socket.create_connection(BROKER, timeout=1).close()
    except OSError as exc:
        unavailable("the gate adapter process test", f"no MQTT broker at {BROKER[0]}:{BROKER[1]} ({exc})")


class Barriers:
    """Listens on the adapter's barrier topics (Mosquitto) and keeps every command heard."""

    def __init__(self, topic: str) -> None:
        from gate_adapters.runtime.mqtt_source import new_client

        self.heard: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client = new_client(f"test-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect(*BROKER, 30)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.cond:
            self.heard.append((message.topic, json.loads(message.payload)))
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = 30) -> list[tuple[str, dict[str, Any]]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.heard) >= n, timeout)
            return list(self.heard)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def served(pg_engine: sa.Engine, tmp_path: Path) -> Iterator[tuple[Gate, str, list[str]]]:
    """Three pickable rights made through the API in process, then the same database served by uvicorn in
    a child."""
    _broker()
    gate, rids = pickable_in_process(pg_engine, tmp_path, (1, 2, 3))
    port = free_port()
    env = {**os.environ, "QUAYGATE_DATABASE_URL": pg_engine.url.render_as_string(hide_password=False),
           "QUAYGATE_VAR_DIR": str(tmp_path),
           "QUAYGATE_BACKGROUND_WORKERS": "false", "QUAYGATE_LOG_LEVEL": "WARNING",
           "QUAYGATE_ISSUER": f"http://127.0.0.1:{port}"}
    env.pop("QUAYGATE_REDIS_URL", None)
    # The adapter gets its first token and makes its first proof as soon as the server is up: a server
    # whose cache held its data since long before (a just-started one refuses them for the leeway).
    server = serve_app(port, env, tmp_path / "server.log", "--log-level", "warning", factory=served_long_ago.FACTORY)
    try:
        yield gate, f"http://127.0.0.1:{port}", rids
    finally:
        stop(server)


def _hikvision(plate: str, at: datetime) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<EventNotificationAlert version="2.0" '
            f'xmlns="http://www.isapi.org/ver20/XMLSchema"><ipAddress>10.20.3.42</ipAddress>'
            f'<channelID>1</channelID><dateTime>{at.isoformat()}</dateTime><activePostCount>1</activePostCount>'
            f'<eventType>ANPR</eventType><eventState>active</eventState><eventDescription>ANPR</eventDescription>'
            f'<ANPR><licensePlate>{plate}</licensePlate><confidenceLevel>95</confidenceLevel>'
            f'<country>BE</country></ANPR></EventNotificationAlert>').encode()


def _ocr(number: str, at: datetime) -> dict[str, Any]:
    return {"portalId": "ocr-portal-2", "laneId": "P2-L3", "transactionId": uuid.uuid4().hex,
            "timestamp": at.isoformat(), "containerNumber": number, "isoCode": "45G1",
            "characters": [{"char": ch, "confidence": 0.97} for ch in number]}


def _truck(source: str, lane: str, plate: str, number: str, badge: str) -> None:
    at = datetime.now(UTC).replace(microsecond=0)
    for path, kw in (
        (f"/hikvision/{lane}", {"content": _hikvision(plate, at), "headers": {"Content-Type": "application/xml"}}),
        (f"/ocr/{lane}", {"json": _ocr(number, at)}),
        (f"/reads/{lane}", {"json": {"kind": "badge", "observed_at": at.isoformat(), "device": "reader-1",
                                     "badge": {"scheme": "alfapass", "number": badge}}}),
    ):
        r = httpx.post(source + path, timeout=5, **kw)  # type: ignore[arg-type]
        assert r.status_code == 202 and r.json() == {"accepted": True}, (path, r.status_code, r.text)


@pytest.mark.postgres
@pytest.mark.slow
def test_the_adapter_process_opens_the_barrier_on_the_services_allow(served: tuple[Gate, str, list[str]],
                                                                    pg_engine: sa.Engine, tmp_path: Path) -> None:
    gate, base_url, (rid, _, rid3) = served
    # The terminal's gate client with private_key_jwt: the adapter holds the private key in a file.
    key = ECKey.generate_key("P-256", parameters={"kid": "gate-key-1"}, private=True)
    client_id, _ = create_client(pg_engine, name="gate adapter", role="terminal_gate",
                                 organisation_id=gate.p.terminal.organisation_id, terminal_code=TERMINAL,
                                 auth_method="private_key_jwt", jwks={"keys": [key.as_dict(private=False)]},
                                 now=datetime.now(UTC), dpop_bound=True)  # no token without a DPoP proof
    (tmp_path / "gate-key.jwk").write_text(json.dumps(key.as_dict(private=True)))
    http_port, prefix = free_port(), f"qg-test-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "gate-adapter.toml"
    config.write_text(f"""
terminal = "{TERMINAL}"
outbox = "outbox.sqlite3"
dev = true
retry_seconds = 0.5
[service]
base_url = "{base_url}"
[auth]
client_id = "{client_id}"
private_key_file = "gate-key.jwk"
dpop_key_file = "dpop-key.jwk"
[http]
port = {http_port}
[mqtt]
prefix = "{prefix}"
[[lanes]]
lane = "in-3"
barrier = {{ kind = "mqtt" }}
[[lanes]]
lane = "in-4"
sources = ["http"]
barrier = {{ kind = "mqtt" }}
[[lanes]]
lane = "in-5"
barrier = {{ kind = "mqtt" }}
""")
    assert adapter_main(["--config", str(config), "--make-keys"]) == 0  # the DPoP key (RFC 9449), made once
    barriers = Barriers(f"{prefix}/{TERMINAL}/+/barrier")
    log = tmp_path / "adapter.log"
    source = f"http://127.0.0.1:{http_port}"
    adapter = start([sys.executable, "-m", "quaygate.cli", "gate-adapter", "--config", str(config)], log=log,
                    ready=answers(source + "/healthz"), what="the gate adapter")
    try:
        _truck(source, "in-3", "1-ABC-123", container(1), gate.badge_number)
        [(topic, command)] = barriers.wait_for(1)
        assert topic == f"{prefix}/{TERMINAL}/in-3/barrier", log.read_text()[-2000:]
        assert command["command"] == "open" and command["call_officer"] is False, (command, log.read_text()[-2000:])
        # Another truck at lane in-4 with the wrong plate: the service denies, the barrier holds.
        _truck(source, "in-4", "9-XYZ-999", container(2), gate.badge_number)
        heard = barriers.wait_for(2)
        assert len(heard) == 2, log.read_text()[-2000:]
        (topic2, hold) = heard[1]
        assert topic2.endswith("/in-4/barrier") and hold["command"] == "hold" and hold["decision_id"]
        # The lane simulator drives the running adapter through its HTTP source and hears its barrier (at
        # a lane of its own: the same driver and badge again at in-3 within its window is a late duplicate).
        script = tmp_path / "sim.json"
        script.write_text(json.dumps({"terminal": TERMINAL, "lanes": [{"lane": "in-5"}], "trucks": [
            {"lane": "in-5", "at": 0, "expect": "allow", "reads": [
                {"kind": "plate", "plate": {"text": "1ABC123", "country": "BE", "confidence": 0.95}},
                {"kind": "container", "container": {"number": container(3), "confidence": 0.97}},
                {"kind": "badge", "badge": {"scheme": "alfapass", "number": gate.badge_number}}]}]}))
        out = io.StringIO()
        assert simulate(["--via", "http", "--adapter", source, "--prefix", prefix, "--speed", "0", "--wait", "3",
                         str(script)], out=out) == 0
        assert "1 allow, 0 deny, 0 review, 0 unanswered, 0 refused reads" in out.getvalue(), out.getvalue()
        # An unknown lane is refused by the source (404), a refused payload is a plain 400.
        assert httpx.post(source + "/reads/in-9", json={}, timeout=5).status_code == 404
        bad = httpx.post(source + "/hikvision/in-3", content=b"<!DOCTYPE x []><x/>", timeout=5)
        assert bad.status_code == 400 and "DOCTYPE" in bad.text.upper()
    finally:
        adapter.send_signal(signal.SIGTERM)
        try:
            code = adapter.wait(timeout=30)
        except subprocess.TimeoutExpired:
            adapter.kill()
            code = None
        barriers.close()
    assert code == 0, log.read_text()[-3000:]
    with pg_engine.connect() as conn:
        rows = {str(r.id): r for r in conn.execute(sa.select(gate_decisions)).all()}
    assert len(rows) == 3 and {command["decision_id"], hold["decision_id"]} < set(rows)
    assert gate.state(rid3) == "gated_in"
    allow, deny = rows[command["decision_id"]], rows[hold["decision_id"]]
    assert (allow.decision, allow.committed, str(allow.release_id), allow.lane) == ("allow", True, rid, "in-3")
    assert (deny.decision, deny.committed) == ("deny", False) and "plate_mismatch" in deny.response["reasons"]
    assert gate.state(rid) == "gated_in"
    box = Outbox(tmp_path / "outbox.sqlite3")  # stopped cleanly: every request answered, nothing pending
    try:
        assert box.pending() == [] and box.response(allow.request_id)["decision_id"] == command["decision_id"]
    finally:
        box.close()


def test_each_lane_refuses_reads_at_its_own_queue_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lane.py rule 4, config.py rule 7: ``queue_size`` is a lane setting; a lane that does not set it
    takes the top-level one. Each lane refuses the read one over its own bound, whatever the others hold."""
    from gate_adapters.adapter import build
    from gate_adapters.runtime.lane import LaneBusy
    from gate_adapters.sources import generic_json

    monkeypatch.setenv("QUAYGATE_GATE_CLIENT_SECRET", "s3cret")
    settings = parse(_minimal(queue_size=3, lanes=[{"lane": "in-1", "queue_size": 2}, {"lane": "in-2"},
                                                   {"lane": "in-3", "queue_size": 5}]), base=tmp_path)
    assert [(ln.lane, ln.queue_size) for ln in settings.lanes] == [("in-1", 2), ("in-2", 3), ("in-3", 5)]
    adapter = build(settings)  # the worker is not started: nothing takes the reads, as if each lane hung
    try:
        now = datetime.now(UTC).isoformat()
        for lane, size in (("in-1", 2), ("in-2", 3), ("in-3", 5)):
            plate = generic_json.parse_object({"kind": "plate", "lane": lane, "observed_at": now,
                                               "plate": {"text": "1-ABC-123", "country": "BE", "confidence": 0.9}})
            for _ in range(size):
                adapter.worker.submit(TERMINAL, plate)
            with pytest.raises(LaneBusy) as busy:
                adapter.worker.submit(TERMINAL, plate)
            assert (busy.value.lane, busy.value.queue_size) == (lane, size)
        assert {lane: load.queued for (_, lane), load in adapter.worker.load().items()} == {
            "in-1": 2, "in-2": 3, "in-3": 5}
    finally:
        adapter.outbox.close()

"""The lane simulator plays its shipped scripts against the real app (real gate token, real database)."""

# ruff: noqa: F811 - ``gate`` is test_gate_verify's fixture, imported here and requested by name
from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from gate_adapters.runtime.client import StaticToken, VerifyClient
from gate_adapters.simulate import drive as drive_script
from gate_adapters.simulate import load_script, main

from .test_gate_verify import Gate, gate  # noqa: F401

SCRIPTS = Path(__file__).parent / "fixtures" / "gate"


def test_the_mixed_script_prints_each_decision_and_the_expected_summary(gate: Gate, tmp_path: Path) -> None:
    rids = {n: gate.pickable(n) for n in (21, 22, 23, 24, 25, 26)}
    out = io.StringIO()
    code = main([str(SCRIPTS / "sim_mixed.json"), "--base-url", "http://testserver", "--token", gate.gate_token,
                 "--outbox", str(tmp_path / "sim.sqlite3"), "--check"], http=gate.http, out=out)
    text = out.getvalue()
    assert code == 0, text
    summary = text.strip().splitlines()[-1]
    # Truck 2's review latches lane in-3 (runtime/lane.py rule 9): trucks 4 and 6 are allowed, and gated
    # in on the service's books, but its barrier holds for the officer, and the summary says so.
    assert summary.startswith("summary: 3 allow, 3 deny, 1 review, 0 unanswered, 1 refused reads, 2 held by a latch; "
                              "latency p50 "), text
    assert "truck 1 lane in-4: deny [plate_mismatch] barrier hold" in text
    assert "truck 2 lane in-3: review [plate_low_confidence] barrier hold " in text
    assert "truck 4 lane in-3: allow [-] barrier hold (latch " in text
    assert "truck 6 lane in-3: read refused" in text
    # Allowed trucks are gated in (the repaired container read too); refused ones are not.
    states = {n: gate.state(rid) for n, rid in rids.items()}
    assert states == {21: "gated_in", 22: "nominated", 23: "nominated", 24: "nominated", 25: "gated_in",
                      26: "gated_in"}


def test_the_clean_rush_allows_every_truck_once(gate: Gate, tmp_path: Path) -> None:
    rids = [gate.pickable(n) for n in (11, 12, 13, 14, 15)]
    script = load_script(SCRIPTS / "sim_clean_rush.json")
    client = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=gate.http)
    out = io.StringIO()
    summary = drive_script(script, client, outbox_path=tmp_path / "rush.sqlite3", out=out)
    assert (dict(summary.decisions), summary.unanswered, summary.mismatches) == ({"allow": 5}, 0, []), out.getvalue()
    assert len(summary.latencies) == 5 and summary.percentile(50) is not None
    assert [gate.state(rid) for rid in rids] == ["gated_in"] * 5


def test_a_failed_expectation_fails_the_check(gate: Gate, tmp_path: Path) -> None:
    script = json.loads((SCRIPTS / "sim_clean_rush.json").read_text())
    script["trucks"] = script["trucks"][:1]  # container 11 was never issued here: container_unknown
    path = tmp_path / "one.json"
    path.write_text(json.dumps(script))
    out = io.StringIO()
    code = main([str(path), "--base-url", "http://testserver", "--token", gate.gate_token, "--check"],
                http=gate.http, out=out)
    assert code == 1 and "mismatch: truck 0: expected allow, got deny" in out.getvalue()


def test_a_script_and_credentials_are_checked_before_anything_runs(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = {"terminal": "T", "lanes": [{"lane": "in-3"}], "trucks": [{"lane": "in-9", "reads": []}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="in-9"):
        load_script(path)
    assert main([str(SCRIPTS / "sim_mixed.json"), "--base-url", "http://127.0.0.1:9"]) == 2
    assert "--client-id" in capsys.readouterr().err


def _two_trucks_over_mqtt(gate: Gate, tmp_path: Path, *, latched: tuple[str, ...] = ()) -> tuple[
        list[str], str, Any, str]:
    """Two trucks of the clean rush, one at lane in-3 and one at in-4, published over the real Mosquitto
    to a running adapter (MQTT source, commit mode, MQTT barriers) with its lanes ``latched`` for an
    officer first: the rights, the topic prefix, the simulator's summary and what it printed."""
    from gate_adapters.core.correlate import LaneCorrelator
    from gate_adapters.runtime.lane import LaneRuntime, LaneWorker
    from gate_adapters.runtime.mqtt_source import MqttSource, new_client
    from gate_adapters.runtime.outbox import Outbox
    from gate_adapters.runtime.sinks import MqttBarrier
    from gate_adapters.simulate import publish

    from .factories import TERMINAL
    from .test_gate_runtime import _mosquitto

    host, port = _mosquitto()
    rids = [gate.pickable(n) for n in (11, 12)]
    raw = json.loads((SCRIPTS / "sim_clean_rush.json").read_text())
    raw["trucks"] = raw["trucks"][:2]  # one truck per lane (in-3, in-4): a real-time adapter sees them at once
    path = tmp_path / "two.json"
    path.write_text(json.dumps(raw))
    # a topic tree of its own: the sqlite and postgresql runs of a test share one broker under xdist
    prefix = f"qgs{uuid.uuid4().hex[:8]}"
    adapter, outbox = new_client(), Outbox(tmp_path / "adapter.sqlite3")
    for lane in latched:
        outbox.latch(lane, "an-earlier-truck", "review")  # the officer was called, and has not come
    client = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=gate.http)
    worker = LaneWorker([LaneRuntime(TERMINAL, lane, "in", "commit", LaneCorrelator(lane, TERMINAL, "in"), client,
                                     outbox, MqttBarrier(adapter, TERMINAL, prefix=prefix))
                         for lane in ("in-3", "in-4")], tick_seconds=0.1)
    source = MqttSource(worker, host=host, port=port, prefix=prefix, client=adapter)
    worker.start()
    source.start()
    try:
        assert source.subscribed.wait(5)
        out = io.StringIO()
        summary = publish(load_script(path), host=host, port=port, prefix=prefix, speed=0, wait=2.0, out=out)
    finally:
        source.stop()
        worker.stop()
        outbox.close()
    return rids, prefix, summary, out.getvalue()


def test_the_mqtt_mode_feeds_a_running_adapter_and_counts_its_barrier_commands(gate: Gate, tmp_path: Path) -> None:
    rids, _, summary, text = _two_trucks_over_mqtt(gate, tmp_path)
    assert (summary.decisions["allow"], summary.unanswered) == (2, 0), text
    assert [gate.state(rid) for rid in rids] == ["gated_in", "gated_in"]


def test_the_mqtt_mode_counts_a_hold_by_a_latched_lane_apart_from_a_review(gate: Gate, tmp_path: Path) -> None:
    """A lane latched for an officer holds its barrier whatever is decided (runtime/lane.py rule 9), and
    says so in the command (``latch``, sinks.py rule 5): the simulator counts that hold as held by a
    latch, not as a review. The truck at the latched lane is allowed (and gated in on the service's
    books); the one at the other lane opens its barrier."""
    from .factories import TERMINAL

    rids, prefix, summary, text = _two_trucks_over_mqtt(gate, tmp_path, latched=("in-3",))
    assert (dict(summary.decisions), summary.latched, summary.unanswered) == ({"allow": 1}, 1, 0), text
    assert "1 allow, 0 deny, 0 review, 0 unanswered, 0 refused reads, 1 held by a latch" in summary.render()
    assert [gate.state(rid) for rid in rids] == ["gated_in", "gated_in"]
    assert f"barrier {prefix}/{TERMINAL}/in-3/barrier: hold" in text, text


def test_the_http_mode_sends_reads_as_a_device_of_the_adapter(tmp_path: Path) -> None:
    """An adapter outside dev takes reads only from the devices it lists (docs/gate-adapter.md "Who may
    send reads"): the simulator sends them as one, with the token kept in a file, and without it every
    read is refused (401) and counted as refused."""
    import hashlib

    from fastapi.testclient import TestClient

    from gate_adapters.adapter import build
    from gate_adapters.runtime.config import parse

    from .factories import TERMINAL
    from .processes import free_port, listens, unavailable

    if not listens(1883)():  # the simulator hears the barrier commands on MQTT
        unavailable("the simulator over HTTP", "no MQTT broker on 127.0.0.1:1883")
    token = "sim-device-" + "e" * 32
    (tmp_path / "device.token").write_text(token + "\n")
    (tmp_path / "client-secret").write_text("s3cret")
    (tmp_path / "client-secret").chmod(0o600)  # a secret file readable by others is refused outside dev
    adapter = build(parse({
        "terminal": TERMINAL, "outbox": "outbox.sqlite3", "service": {"base_url": "https://quaygate.example.eu"},
        "auth": {"client_id": "gate", "client_secret_file": "client-secret"},
        "http": {"port": free_port(), "devices": [{
            "name": "sim", "token_sha256": hashlib.sha256(token.encode()).hexdigest(), "lanes": ["in-5"],
            "kinds": ["plate", "container", "badge"]}]},
        "lanes": [{"lane": "in-5"}]}, base=tmp_path))
    script = tmp_path / "sim.json"
    script.write_text(json.dumps({"terminal": TERMINAL, "lanes": [{"lane": "in-5"}], "trucks": [
        {"lane": "in-5", "at": 0, "reads": [
            {"kind": "plate", "plate": {"text": "1ABC123", "country": "BE", "confidence": 0.95}},
            {"kind": "badge", "badge": {"scheme": "alfapass", "number": "B-1"}}]}]}))
    try:
        with TestClient(adapter.http_server.config.app) as source:
            args = ["--via", "http", "--adapter", "http://testserver", "--speed", "0", "--wait", "0",
                    "--prefix", f"sim-{uuid.uuid4().hex[:8]}", str(script)]
            out = io.StringIO()
            assert main(args, http=source, out=out) == 0
            assert "0 refused reads" not in out.getvalue() and "read refused (401" in out.getvalue(), out.getvalue()
            out = io.StringIO()
            assert main(["--device-token-file", str(tmp_path / "device.token"), *args], http=source, out=out) == 0
            assert "0 refused reads" in out.getvalue() and "read refused" not in out.getvalue(), out.getvalue()
            assert main(["--device-token-file", str(tmp_path / "missing"), *args], http=source, out=out) == 2
    finally:
        adapter.outbox.close()


def test_the_http_mode_reaches_an_adapter_serving_tls_as_a_device_with_its_certificate(tmp_path: Path) -> None:
    """An adapter whose HTTP source serves TLS and asks devices for a certificate (``[http] cert_file``,
    ``client_ca_file``): the simulator checks the source's certificate against ``--ca-file`` and shows
    its own (``--cert-file``, ``--key-file``). Without the CA, or without its certificate, it gets no
    read in; a certificate file it cannot use is a plain message and exit 2."""
    import hashlib

    from gate_adapters.adapter import build
    from gate_adapters.runtime.config import parse

    from .factories import TERMINAL
    from .gate_tls import make_cert
    from .processes import free_port, listens, unavailable
    from .test_gate_source_auth import serving

    if not listens(1883)():  # the simulator hears the barrier commands on MQTT
        unavailable("the simulator over HTTPS", "no MQTT broker on 127.0.0.1:1883")
    ca = make_cert("terminal device CA", None, tmp_path / "ca")
    make_cert("localhost", ca, tmp_path / "source", san=True)
    make_cert("simulator", ca, tmp_path / "device")
    token = "sim-device-" + "f" * 32
    (tmp_path / "device.token").write_text(token + "\n")
    (tmp_path / "client-secret").write_text("s3cret")
    (tmp_path / "client-secret").chmod(0o600)  # a secret file readable by others is refused outside dev
    port = free_port()
    adapter = build(parse({
        "terminal": TERMINAL, "outbox": "outbox.sqlite3", "service": {"base_url": "https://quaygate.example.eu"},
        "auth": {"client_id": "gate", "client_secret_file": "client-secret"},
        "http": {"port": port, "cert_file": str(tmp_path / "source.pem"), "key_file": str(tmp_path / "source.key"),
                 "client_ca_file": str(tmp_path / "ca.pem"), "devices": [{
                     "name": "sim", "token_sha256": hashlib.sha256(token.encode()).hexdigest(), "lanes": ["in-6"],
                     "kinds": ["plate", "badge"]}]},
        "lanes": [{"lane": "in-6"}]}, base=tmp_path))
    script = tmp_path / "sim.json"
    script.write_text(json.dumps({"terminal": TERMINAL, "lanes": [{"lane": "in-6"}], "trucks": [
        {"lane": "in-6", "at": 0, "reads": [
            {"kind": "plate", "plate": {"text": "1ABC123", "country": "BE", "confidence": 0.95}},
            {"kind": "badge", "badge": {"scheme": "alfapass", "number": "B-1"}}]}]}))
    args = ["--via", "http", "--adapter", f"https://localhost:{port}", "--speed", "0", "--wait", "0",
            "--prefix", f"sim-{uuid.uuid4().hex[:8]}", "--device-token-file", str(tmp_path / "device.token"),
            str(script)]
    device = ["--ca-file", str(tmp_path / "ca.pem"), "--cert-file", str(tmp_path / "device.pem"),
              "--key-file", str(tmp_path / "device.key")]
    try:
        with serving(adapter):
            out = io.StringIO()
            assert main([*device, *args], out=out) == 0
            assert "0 refused reads" in out.getvalue() and "read refused" not in out.getvalue(), out.getvalue()
            for partial in (device[2:], device[:2]):  # without the CA; without its certificate
                out = io.StringIO()
                assert main([*partial, *args], out=out) == 0
                assert "0 refused reads" not in out.getvalue(), out.getvalue()
            assert main(["--ca-file", str(tmp_path / "missing.pem"), *args], out=io.StringIO()) == 2
    finally:
        adapter.outbox.close()

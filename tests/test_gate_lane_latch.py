"""The officer's hold is latched (lane.py rule 9, outbox.py rule 6, latch.py): once a lane's decision
called an officer, no later decision opens its barrier (each is still made, recorded and logged, the
barrier told ``hold``) until an officer clears the latch: over the HTTP source with an officer's
credential (never a device's; TLS or this host only), or ``quaygate gate-adapter --clear-latch`` on the
adapter's host. The latch is in the outbox file: a killed and restarted adapter is still latched.

Against the real service (PostgreSQL) where a decision is needed, a real outbox file, a real child
process killed with SIGKILL, real sockets and certificates for the HTTP source; only our own device edge
(the barrier) is recorded."""
# ruff: noqa: F811 - ``gate`` and ``source_pki`` are fixtures imported here and requested by name

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from gate_adapters.adapter import build
from gate_adapters.adapter import main as adapter_main
from gate_adapters.core.correlate import LaneCorrelator
from gate_adapters.runtime.client import StaticToken, VerifyClient
from gate_adapters.runtime.config import ConfigError, parse, token_sha256
from gate_adapters.runtime.lane import LaneRuntime
from gate_adapters.runtime.latch import LatchChanged, LatchDesk, NotLatched, UnknownLane
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.sinks import BarrierCommand
from gate_adapters.sources import generic_json

from .factories import TERMINAL, container
from .gate_tls import make_cert
from .processes import ROOT, free_port, unavailable
from .test_gate_runtime import LANE, RecordingBarrier, _now, outbox, reads, real_client, runtime  # noqa: F401
from .test_gate_source_auth import TOKENS, _doc, bearer, secret, serving
from .test_gate_verify import Gate, gate  # noqa: F401

OFFICER_TOKEN = "officer-token-" + "o" * 32
DEAD = "http://127.0.0.1:9"  # nothing listens: the service is away


def commands(sink: RecordingBarrier) -> list[tuple[BarrierCommand, bool]]:
    return [(c.command, c.call_officer) for c in sink.commands]


def plate(text: str, lane: str = LANE) -> Any:
    return generic_json.parse_object({"kind": "plate", "lane": lane, "observed_at": _now().isoformat(),
                                      "plate": {"text": text, "country": "BE", "confidence": 0.95}})


def evict(lane: LaneRuntime) -> None:
    """Two trucks' plates at a lane that gathers one truck at a time: the first is evicted (hold, officer)."""
    assert lane.correlator.max_pending == 1
    assert lane.feed(plate("1-ABC-123", lane.lane)) == []
    (evicted,) = lane.feed(plate("7-XYZ-777", lane.lane))
    assert evicted.error is not None and evicted.error.startswith("evicted")


def evicting(outbox: Outbox, sink: Any, lane: str = LANE) -> LaneRuntime:
    away = VerifyClient(DEAD, StaticToken("t"), attempts=1)
    return LaneRuntime(TERMINAL, lane, "in", "commit", LaneCorrelator(lane, TERMINAL, "in", max_pending=1), away,
                       outbox, sink)


def config_file(tmp_path: Path, outbox: Path) -> Path:
    """A production settings file for the command (the latch options read the outbox, no secret)."""
    config = tmp_path / "gate-adapter.toml"
    config.write_text(f'terminal = "{TERMINAL}"\noutbox = "{outbox}"\n[service]\nbase_url = "https://q.example"\n'
                      '[auth]\nclient_id = "g"\nclient_secret_file = "client-secret"\n[http]\n'
                      f'[[http.devices]]\nname = "cam"\ntoken_sha256 = "{"0" * 64}"\nlanes = ["{LANE}"]\n'
                      f'kinds = ["plate"]\n[[lanes]]\nlane = "{LANE}"\n[[lanes]]\nlane = "out-1"\ndirection = "out"\n')
    return config


# ---- the latch at a lane ----------------------------------------------------------------------------


def test_a_review_latches_the_lane_and_the_next_allow_holds_until_an_officer_clears_it(
        gate: Gate, outbox: Outbox, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Truck A's plate is read too poorly: review, hold, an officer called, and A's driver still stands at
    the barrier. Truck B's reads come and B's right is good: before, B's allow opened the barrier, for
    whoever stood at it. Now the lane is latched: B is decided (allow, committed, the right used on the
    service's books) and recorded, and the barrier is told hold. The officer clears the latch (here with
    the command, another connection to the outbox than the lane's); truck C's allow opens again."""
    gate.pickable(50)
    rid_b = gate.pickable(51)
    gate.pickable(52)
    clock = [0.0]
    sink = RecordingBarrier()
    lane = runtime(real_client(gate), outbox, sink, clock=lambda: clock[0])
    poor = [generic_json.parse_object({**o, "lane": LANE, "observed_at": _now().isoformat()}) for o in (
        {"kind": "plate", "plate": {"text": "1-ABC-123", "country": "BE", "confidence": 0.3}},
        {"kind": "container", "container": {"number": container(50), "confidence": 0.97}},
        {"kind": "badge", "badge": {"scheme": "alfapass", "number": "AP-123455"}})]
    (a,) = [r for read in poor for r in lane.feed(read)]
    assert a.decision == "review" and commands(sink) == [(BarrierCommand.HOLD, True)] and a.latched is None
    latch = outbox.held_latch(LANE)
    assert latch is not None and (latch.request_id, latch.reason) == (a.request_id, "review")

    clock[0] += 60.0
    with caplog.at_level(logging.WARNING, logger="gate_adapters.lane"):
        (b,) = [r for read in reads(n=51) for r in lane.feed(read)]
    assert (b.decision, b.response["committed"]) == ("allow", True)  # type: ignore[index]
    assert gate.state(rid_b) == "gated_in" and outbox.response(b.request_id)["decision"] == "allow"  # type: ignore[index]
    assert commands(sink)[-1] == (BarrierCommand.HOLD, True) and b.latched == latch.id
    assert sink.commands[-1].decision_id == b.response["decision_id"]  # type: ignore[index]
    assert [(h.request_id, h.instead, h.reason) for h in outbox.latched_holds(latch.id)] == [
        (b.request_id, "open", "allow")]
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("gate.lane.latched_hold")] == [
        f"gate.lane.latched_hold: lane {LANE} latched since latch {latch.id}: open (allow) held"]

    config = config_file(tmp_path, outbox.path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gate_adapters.lane"):
        assert adapter_main(["--config", str(config), "--clear-latch", LANE, "--latch-id", str(latch.id),
                             "--officer", "J. Peeters", "--note", "A reversed out, B checked"]) == 0
    assert capsys.readouterr().out == f"{LANE}: latch {latch.id} cleared by J. Peeters (cli, root)\n"
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("gate.lane.latch_cleared")] == [
        f"gate.lane.latch_cleared: lane {LANE} latch {latch.id} cleared by J. Peeters (cli, root)"]
    [kept] = outbox.latches(LANE)
    assert (kept.cleared_by, kept.note) == ("J. Peeters (cli, root)", "A reversed out, B checked")

    clock[0] += 60.0
    (c,) = [r for read in reads(n=52) for r in lane.feed(read)]
    assert c.decision == "allow" and commands(sink)[-1] == (BarrierCommand.OPEN, False) and c.latched is None
    assert outbox.held_latch(LANE) is None


@pytest.mark.parametrize("cause", ["evicted", "unavailable"])
def test_an_eviction_or_no_answer_latches_the_lane_too(outbox: Outbox, cause: str) -> None:
    """Every hold that calls an officer latches, whatever called him; a hold without one (a deny, a check)
    does not (tests/test_gate_runtime.py: a deny after a deny still holds plainly)."""
    sink = RecordingBarrier()
    if cause == "evicted":
        evict(evicting(outbox, sink))
    else:
        lane = runtime(VerifyClient(DEAD, StaticToken("t"), attempts=1), outbox, sink)
        (result,) = [r for read in reads() for r in lane.feed(read)]
        assert result.pending
    latch = outbox.held_latch(LANE)
    assert latch is not None and latch.reason == cause and commands(sink) == [(BarrierCommand.HOLD, True)]


def test_the_latch_survives_a_kill_and_a_restart(gate: Gate, tmp_path: Path) -> None:
    """An adapter latches its lane (an eviction: nobody is asked), and is killed (SIGKILL: nothing runs
    after). Restarted on the same outbox file, the lane is still latched: the next allow holds."""
    gate.pickable(53)
    path = tmp_path / "outbox.sqlite3"
    child = ("import sys, time\n"
             "from datetime import UTC, datetime\n"
             "from gate_adapters.core.correlate import LaneCorrelator\n"
             "from gate_adapters.runtime.client import StaticToken, VerifyClient\n"
             "from gate_adapters.runtime.lane import LaneRuntime\n"
             "from gate_adapters.runtime.outbox import Outbox\n"
             "from gate_adapters.runtime.sinks import LogBarrier\n"
             "from gate_adapters.sources.generic_json import parse_object\n"
             "terminal, lane = sys.argv[2], sys.argv[3]\n"
             "correlator = LaneCorrelator(lane, terminal, 'in', max_pending=1)\n"
             "runtime = LaneRuntime(terminal, lane, 'in', 'commit', correlator,\n"
             "                      VerifyClient(sys.argv[4], StaticToken('t'), attempts=1), Outbox(sys.argv[1]),\n"
             "                      LogBarrier())\n"
             "for text in ('1-ABC-123', '7-XYZ-777'):  # the second truck evicts the first: hold, officer\n"
             "    at = datetime.now(UTC).isoformat()\n"
             "    runtime.feed(parse_object({'kind': 'plate', 'lane': lane, 'observed_at': at,\n"
             "                               'plate': {'text': text, 'country': 'BE', 'confidence': 0.95}}))\n"
             "print('latched', flush=True)\n"
             "time.sleep(120)\n")
    with subprocess.Popen([sys.executable, "-c", child, str(path), TERMINAL, LANE, DEAD], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "latched\n"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    box, sink = Outbox(path), RecordingBarrier()
    try:
        held = box.held_latch(LANE)
        assert held is not None and held.reason == "evicted"
        lane = runtime(real_client(gate), box, sink)
        (allowed,) = [r for read in reads(n=53) for r in lane.feed(read)]
        assert allowed.decision == "allow" and commands(sink) == [(BarrierCommand.HOLD, True)]
        assert allowed.latched == held.id
    finally:
        box.close()


def test_a_clear_names_the_latch_it_clears(outbox: Outbox) -> None:
    """latch.py rule 1: a clear for a latch the lane no longer holds (a re-run, a re-sent request, a latch
    set after the officer looked) clears nothing."""
    sink = RecordingBarrier()
    desk = LatchDesk(outbox, [LANE])
    evict(evicting(outbox, sink))
    first = desk.status(LANE)
    assert first is not None and first.latch.reason == "evicted" and first.held == ()
    assert desk.clear(LANE, first.latch.id, by="officer 1").cleared_by == "officer 1"
    with pytest.raises(NotLatched):
        desk.clear(LANE, first.latch.id, by="officer 1")  # the same clear again
    evict(evicting(outbox, sink))  # the lane latches again (a restarted lane: a correlator of its own)
    second = desk.status(LANE)
    assert second is not None and second.latch.id > first.latch.id
    with pytest.raises(LatchChanged):
        desk.clear(LANE, first.latch.id, by="officer 1")  # the old latch's id: look again
    with pytest.raises(UnknownLane):
        desk.clear("in-9", second.latch.id, by="officer 1")
    assert outbox.held_latch(LANE) == second.latch


# ---- the command --------------------------------------------------------------------------------------


def test_the_command_shows_and_clears_a_latch_as_the_outboxs_owner_only(
        outbox: Outbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evict(evicting(outbox, RecordingBarrier()))
    held = outbox.held_latch(LANE)
    assert held is not None
    config = config_file(tmp_path, outbox.path)
    assert adapter_main(["--config", str(config), "--latches"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == "in-3: " + json.dumps(LatchDesk(outbox, [LANE]).status(LANE).as_json())  # type: ignore[union-attr]
    assert shown[1:] == ["out-1: not latched"]
    for argv in (["--clear-latch", LANE, "--officer", "X"], ["--clear-latch", LANE, "--latch-id", "1"],
                 ["--latch-id", "1"], ["--mint-token", "--latches"]):
        with pytest.raises(SystemExit) as exc:
            adapter_main(["--config", str(config), *argv] if argv[0] != "--mint-token" else argv)
        assert exc.value.code == 2
    capsys.readouterr()
    assert adapter_main(["--config", str(config), "--clear-latch", LANE, "--latch-id", str(held.id + 1),
                         "--officer", "X"]) == 1
    assert f"latch not cleared: lane {LANE} holds latch {held.id}, not {held.id + 1}" in capsys.readouterr().err
    assert outbox.held_latch(LANE) == held
    # An outbox another user owns: root's files beside it would lock the adapter out; run as its owner.
    os.chown(outbox.path, 65534, 65534)
    assert adapter_main(["--config", str(config), "--clear-latch", LANE, "--latch-id", str(held.id),
                         "--officer", "X"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gate-adapter: bad settings: outbox: {outbox.path} belongs to nobody: run this as that "
                          f"user (sudo -u nobody"), err
    assert outbox.held_latch(LANE) == held
    (tmp_path / "elsewhere").mkdir()
    missing = config_file(tmp_path / "elsewhere", tmp_path / "none.sqlite3")
    assert adapter_main(["--config", str(missing), "--latches"]) == 0
    assert "no outbox at" in capsys.readouterr().out
    assert adapter_main(["--config", str(missing), "--clear-latch", LANE, "--latch-id", "1", "--officer", "X"]) == 2
    assert not (tmp_path / "none.sqlite3").exists()  # never made by the command


# ---- the HTTP source: an officer's credential, never a device's --------------------------------------


@pytest.fixture
def officer_pki(tmp_path: Path) -> Path:
    """The terminal's device CA, the source's certificate, a camera's and the officer console's."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_cert("quaygate test device CA", None, pki / "ca")
    make_cert("localhost", ca, pki / "source", san=True)
    make_cert("anpr-in-1", ca, pki / "camera")
    make_cert("officer console", ca, pki / "officer")
    return pki


def _officer_doc(tmp_path: Path, **http: Any) -> dict[str, Any]:
    doc = _doc(tmp_path, lanes=[{"lane": "in-1", "max_pending": 1}, {"lane": "in-2"}])
    secret(tmp_path / "officer.token", OFFICER_TOKEN + "\n")
    doc["http"].update({"officers": [{"name": "duty-officer", "token_file": "officer.token"}], **http})
    return doc


def _client(pki: Path, port: int, cert: str) -> httpx.Client:
    import ssl

    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    return httpx.Client(base_url=f"https://localhost:{port}", verify=context, timeout=10)


def test_over_mutual_tls_an_officer_clears_a_latch_and_a_device_never_does(
        tmp_path: Path, officer_pki: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki = officer_pki
    adapter = build(parse(_officer_doc(tmp_path, cert_file=str(pki / "source.pem"), key_file=str(pki / "source.key"),
                                       client_ca_file=str(pki / "ca.pem")), base=tmp_path))
    try:
        in_1 = adapter.worker.lanes[(TERMINAL, "in-1")]
        evict(in_1)
        held = adapter.outbox.held_latch("in-1")
        assert held is not None
        officer = {"Authorization": f"Bearer {OFFICER_TOKEN}"}
        with serving(adapter) as port:
            with _client(pki, port, "camera") as camera:  # a device of ours, its certificate and its token
                for headers in (bearer("anpr-in-1"), {}, {"Authorization": f"Bearer {TOKENS['matcher-in-1']}"}):
                    r = camera.get("/officer/latch/in-1", headers=headers)
                    assert (r.status_code, r.json()["code"]) == (401, "officer_credential_required"), r.text
                    r = camera.post("/officer/latch/in-1/clear", json={"latch": held.id}, headers=headers)
                    assert (r.status_code, r.json()["code"]) == (401, "officer_credential_required"), r.text
            assert adapter.outbox.held_latch("in-1") == held
            with _client(pki, port, "officer") as console:
                r = console.get("/officer/latch/in-1", headers=officer)
                assert r.status_code == 200 and r.json() == {"lane": "in-1", "latched": True, "latch": {
                    "id": held.id, "since": r.json()["latch"]["since"], "request_id": held.request_id,
                    "reason": "evicted", "held": []}}, r.text
                assert console.get("/officer/latch/in-2", headers=officer).json() == {
                    "lane": "in-2", "latched": False, "latch": None}
                assert console.get("/officer/latch/in-9", headers=officer).json()["code"] == "unknown_lane"
                for body, status, code in (({"latch": held.id + 1}, 409, "latch_changed"),
                                           ({"latch": str(held.id)}, 400, "payload_refused"),
                                           ({"latch": held.id, "by": "someone else"}, 400, "payload_refused")):
                    r = console.post("/officer/latch/in-1/clear", json=body, headers=officer)
                    assert (r.status_code, r.json()["code"]) == (status, code), r.text
                with caplog.at_level(logging.WARNING, logger="gate_adapters.lane"):
                    r = console.post("/officer/latch/in-1/clear", json={"latch": held.id, "note": "lane empty"},
                                     headers=officer)
                assert r.status_code == 200 and r.json() == {"lane": "in-1", "latch": held.id,
                                                              "cleared_by": "duty-officer (http)"}, r.text
                again = console.post("/officer/latch/in-1/clear", json={"latch": held.id}, headers=officer)
                assert (again.status_code, again.json()["code"]) == (409, "not_latched")
        assert [r.getMessage() for r in caplog.records if "latch_cleared" in r.getMessage()] == [
            f"gate.lane.latch_cleared: lane in-1 latch {held.id} cleared by duty-officer (http)"]
        [kept] = adapter.outbox.latches("in-1")
        assert (kept.cleared_by, kept.note) == ("duty-officer (http)", "lane empty")
    finally:
        adapter.outbox.close()


def _address_beyond_loopback() -> str:
    """An address of this host other than loopback: a connection to it comes from it, as from the network."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only the route is looked up
            address = str(s.getsockname()[0])
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        unavailable("an officer call from beyond this host", "this host has no address but loopback")
    return address


def test_in_clear_an_officer_call_is_taken_from_this_host_only(tmp_path: Path) -> None:
    """A source in clear on the camera network (allow_insecure): an officer's token sent across it could be
    copied by any camera and used the next time. So in clear only a call from this host is taken, and one
    from beyond it is refused before its token is looked at."""
    port = free_port()
    adapter = build(parse(_officer_doc(tmp_path, host="0.0.0.0", port=port, allow_insecure=True), base=tmp_path))
    officer = {"Authorization": f"Bearer {OFFICER_TOKEN}"}
    try:
        with serving(adapter):
            r = httpx.get(f"http://{_address_beyond_loopback()}:{port}/officer/latch/in-1", headers=officer, timeout=10)
            assert (r.status_code, r.json()["code"]) == (403, "officer_channel_insecure"), r.text
            local = httpx.get(f"http://127.0.0.1:{port}/officer/latch/in-1", headers=officer, timeout=10)
            assert local.status_code == 200 and local.json()["latched"] is False, local.text
    finally:
        adapter.outbox.close()


def test_forwarded_headers_never_make_a_call_from_beyond_this_host_local(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapter has no proxy in front of it: cameras and officers connect to it. So X-Forwarded-For
    and X-Forwarded-Proto are never believed, whatever uvicorn's FORWARDED_ALLOW_IPS says; else a
    caller on the camera network writes ``127.0.0.1`` or ``https`` into them and is taken for this host
    or a TLS channel."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    port = free_port()
    adapter = build(parse(_officer_doc(tmp_path, host="0.0.0.0", port=port, allow_insecure=True), base=tmp_path))
    forged = {"Authorization": f"Bearer {OFFICER_TOKEN}", "X-Forwarded-For": "127.0.0.1",
              "X-Forwarded-Proto": "https"}
    try:
        with serving(adapter):
            r = httpx.get(f"http://{_address_beyond_loopback()}:{port}/officer/latch/in-1", headers=forged, timeout=10)
            assert (r.status_code, r.json()["code"]) == (403, "officer_channel_insecure"), r.text
    finally:
        adapter.outbox.close()


def test_an_officers_token_is_never_a_devices(tmp_path: Path) -> None:
    """A camera must never clear a latch: an officer given a device's token does not start."""
    doc = _officer_doc(tmp_path)
    doc["http"]["officers"] = [{"name": "duty-officer", "token_sha256": token_sha256(TOKENS["anpr-in-1"])}]
    with pytest.raises(ConfigError) as exc:
        parse(doc, base=tmp_path)
    assert exc.value.key == "http.officers[0].token_sha256" and "device's token" in exc.value.message
    doc = _officer_doc(tmp_path)
    secret(tmp_path / "officer.token", TOKENS["reader"] + "\n")  # the reader's token, in the officer's file
    with pytest.raises(ConfigError) as exc:
        build(parse(doc, base=tmp_path))
    assert exc.value.key == "http.officers[0].token_file" and "device's token" in exc.value.message

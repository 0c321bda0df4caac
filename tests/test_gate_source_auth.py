"""Who may feed a lane: device tokens on the HTTP source, credentials and TLS for MQTT, face match results
only from a trusted matcher, and the HTTP body cap (docs/gate-adapter.md "Who may send reads").

The adapter is built from its settings by ``gate_adapters.adapter.build`` (the same wiring the process
uses) and its HTTP source is asked over HTTP: in process (``TestClient``) for the rules, under uvicorn on
a real socket for the body cap. What reached the lanes is read from the adapter's own worker queue.
MQTT runs against a Mosquitto of the test's own (TLS, password file, the ACL of the docs) when the
``mosquitto`` binary is there.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import pwd
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gate_adapters.adapter import Adapter, build
from gate_adapters.adapter import main as adapter_main
from gate_adapters.core.reads import Read
from gate_adapters.runtime.config import ConfigError, load, parse
from gate_adapters.runtime.mqtt_source import MqttSource, client_for, new_client
from gate_adapters.sources import generic_json

from .factories import TERMINAL
from .gate_tls import make_cert
from .processes import ROOT, free_port, listens, start, stop, unavailable

FIXTURES = Path(__file__).parent / "fixtures" / "gate"
EXAMPLE = ROOT / "docs" / "gate-adapter.example.toml"
TOKENS = {"anpr-in-1": "anpr-token-" + "a" * 32, "reader": "reader-token-" + "b" * 32,
          "matcher-in-1": "matcher-token-" + "c" * 32, "facecam-in-1": "facecam-token-" + "d" * 32}


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def secret(path: Path, text: str) -> Path:
    """A secret file as it must be outside dev: its owner's alone (config.py rule 10)."""
    path.write_text(text)
    path.chmod(0o600)
    return path


def _doc(tmp_path: Path, **over: Any) -> dict[str, Any]:
    """A production (not dev) adapter: four devices, one of them reading its token from a file."""
    secret(tmp_path / "client-secret", "s3cret")
    secret(tmp_path / "reader.token", TOKENS["reader"] + "\n")
    doc: dict[str, Any] = {
        "terminal": TERMINAL, "outbox": "outbox.sqlite3",
        "service": {"base_url": "https://quaygate.example.eu"},
        "auth": {"client_id": "gate", "client_secret_file": "client-secret"},
        "http": {"port": free_port(), "devices": [
            {"name": "anpr-in-1", "token_sha256": sha(TOKENS["anpr-in-1"]), "lanes": ["in-1"], "kinds": ["plate"]},
            {"name": "reader", "token_file": "reader.token", "lanes": ["in-1", "in-2"], "kinds": ["badge"]},
            {"name": "matcher-in-1", "token_sha256": sha(TOKENS["matcher-in-1"]).upper(), "lanes": ["in-1"],
             "kinds": ["face"], "trusted_face_matcher": True},
            {"name": "facecam-in-1", "token_sha256": sha(TOKENS["facecam-in-1"]), "lanes": ["in-1"],
             "kinds": ["face"]},
        ]},
        "lanes": [{"lane": "in-1"}, {"lane": "in-2"}],
    }
    doc.update(over)
    return doc


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[Adapter]:
    built = build(parse(_doc(tmp_path), base=tmp_path))
    yield built
    built.outbox.close()


def source(adapter: Adapter) -> TestClient:
    return TestClient(adapter.http_server.config.app)


def fed(adapter: Adapter) -> list[Read]:
    """What the HTTP source handed to the lanes, lane by lane (the worker is not started: nothing else
    takes it)."""
    out = []
    for lane in adapter.worker._lanes.values():
        while True:
            try:
                item = lane.queue.get_nowait()
            except queue.Empty:
                break
            assert item is not None
            out.append(item[0])
    return out


def bearer(device: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[device]}"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def generic(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, kind: body, "observed_at": dt.datetime.now(dt.UTC).isoformat()}


PLATE = generic("plate", {"text": "1-ABC-123", "country": "BE", "confidence": 0.95})
BADGE = generic("badge", {"scheme": "alfapass", "number": "AP-123455"})
FACE_MATCH = generic("face", {"match": {"matched": True, "score": 1}})
FACE_IMAGE = generic("face", {"image": base64.b64encode(b"\xff\xd8\xff\xe0 a jpeg").decode()})


# ---- HTTP: device tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer not-a-device-token"},
    {"Authorization": f"Bearer {sha(TOKENS['anpr-in-1'])}"},  # the stored hash is not the token
    {"Authorization": f"Token {TOKENS['anpr-in-1']}"},
    {"Authorization": "Bearer "},
    basic("anpr-in-1", "wrong"),
    basic("reader", TOKENS["anpr-in-1"]),  # another device's token under this device's name
    {"Authorization": "Basic not base64!"},
])
def test_a_read_without_a_valid_device_token_gets_401_and_reaches_no_lane(adapter: Adapter,
                                                                        headers: dict[str, str]) -> None:
    inputs = source(adapter)
    for path, kw in (("/reads/in-1", {"json": PLATE}),
                     ("/hikvision/in-1", {"content": (FIXTURES / "hikvision_anpr.xml").read_bytes(),
                                          "headers": {"Content-Type": "application/xml"}}),
                     ("/reads/in-9", {"json": PLATE})):  # an unknown lane tells nothing either
        r = inputs.post(path, headers={**kw.pop("headers", {}), **headers}, **kw)  # type: ignore[arg-type]
        assert r.status_code == 401, (path, r.status_code, r.text)
        assert r.headers["www-authenticate"].startswith('Bearer realm="quaygate-gate"')
    assert fed(adapter) == []


def test_a_device_sends_only_its_own_lanes_and_kinds(adapter: Adapter) -> None:
    inputs = source(adapter)
    anpr = bearer("anpr-in-1")
    assert inputs.post("/reads/in-2", json=PLATE, headers=anpr).status_code == 403  # not its lane
    assert inputs.post("/reads/in-9", json=PLATE, headers=anpr).status_code == 403  # nor an unknown one
    assert inputs.post("/reads/in-1", json=BADGE, headers=anpr).status_code == 403  # not its kind
    ocr = (FIXTURES / "ocr_portal.json").read_bytes()
    assert inputs.post("/ocr/in-1", content=ocr, headers=anpr).status_code == 403
    assert fed(adapter) == []
    xml = (FIXTURES / "hikvision_anpr.xml").read_bytes()
    for r in (inputs.post("/reads/in-1", json=PLATE, headers=anpr),
              inputs.post("/hikvision/in-1", content=xml, headers={"Content-Type": "application/xml", **anpr}),
              inputs.post("/reads/in-1", json=PLATE, headers=basic("anpr-in-1", TOKENS["anpr-in-1"])),
              inputs.post("/reads/in-2", json=BADGE, headers=bearer("reader"))):  # its token from a file
        assert (r.status_code, r.json()) == (202, {"accepted": True}), r.text
    assert [(read.kind.value, read.lane) for read in fed(adapter)] == [
        ("plate", "in-1"), ("plate", "in-1"), ("plate", "in-1"), ("badge", "in-2")]


def test_a_face_match_is_taken_only_from_a_trusted_matcher(adapter: Adapter) -> None:
    """The attack: someone who knows the nominee's badge, plate and container posts them with a face
    "match" as the truck stops. Only the configured matcher may claim a match."""
    inputs = source(adapter)
    for device in ("facecam-in-1", "reader", "anpr-in-1"):
        r = inputs.post("/reads/in-1", json=FACE_MATCH, headers=bearer(device))
        assert r.status_code == 403, (device, r.text)
    assert fed(adapter) == []
    assert inputs.post("/reads/in-1", json=FACE_IMAGE, headers=bearer("facecam-in-1")).status_code == 202
    assert inputs.post("/reads/in-1", json=FACE_MATCH, headers=bearer("matcher-in-1")).status_code == 202
    assert [read.match is not None for read in fed(adapter)] == [False, True]  # type: ignore[union-attr]


def test_without_devices_in_dev_no_token_is_asked_but_a_face_match_is_still_refused(tmp_path: Path) -> None:
    dev = build(parse(_doc(tmp_path, dev=True, http={"port": free_port()}), base=tmp_path))
    try:
        inputs = source(dev)
        assert inputs.post("/reads/in-1", json=PLATE).status_code == 202
        assert inputs.post("/reads/in-1", json=FACE_MATCH).status_code == 403
        assert [read.kind.value for read in fed(dev)] == ["plate"]
    finally:
        dev.outbox.close()


def test_outside_dev_an_http_source_without_devices_does_not_start(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(_doc(tmp_path, http={"host": "0.0.0.0", "port": 8089}), base=tmp_path)
    assert exc.value.key == "http.devices" and "--mint-token" in exc.value.message
    config = tmp_path / "open.toml"
    config.write_text(f'terminal = "{TERMINAL}"\noutbox = "o.sqlite3"\n[service]\nbase_url = "https://q.example"\n'
                      '[auth]\nclient_id = "g"\nclient_secret_file = "client-secret"\n[http]\nhost = "0.0.0.0"\n'
                      '[[lanes]]\nlane = "in-1"\n')
    for argv in (["--config", str(config), "--check"], ["--config", str(config)]):
        assert adapter_main(argv) == 2
        assert "gate-adapter: bad settings: http.devices: " in capsys.readouterr().err
    assert not (tmp_path / "o.sqlite3").exists()


def test_the_example_settings_are_secure_by_default(tmp_path: Path) -> None:
    example = load(EXAMPLE)
    assert not example.dev and example.http is not None and example.mqtt is not None
    assert [(d.name, d.kinds, d.trusted_face_matcher) for d in example.http.devices] == [
        ("anpr-in-1", ("plate",), False), ("ocr-portal-1", ("container",), False),
        ("badge-readers", ("badge",), False), ("face-matcher", ("face",), True)]
    assert all(d.token_sha256 and d.token_file is None for d in example.http.devices)
    assert example.mqtt.username and example.mqtt.password_file
    # The same file with its devices or its MQTT credentials left out does not start.
    text = EXAMPLE.read_text(encoding="utf-8")
    for cut, key in ((text[text.index("[[http.devices]]"):text.index("[mqtt]")], "http.devices"),
                     ('username = "gate-k1700"\n', "mqtt.username")):
        bad = tmp_path / "bad.toml"
        bad.write_text(text.replace(cut, ""), encoding="utf-8")
        with pytest.raises(ConfigError) as exc:
            load(bad)
        assert exc.value.key == key, str(exc.value)


def _device(**over: Any) -> dict[str, Any]:
    return {"name": "cam", "token_sha256": sha("t"), "lanes": ["in-1"], "kinds": ["plate"], **over}


@pytest.mark.parametrize(("devices", "key"), [
    ({"name": "cam"}, "http.devices"),  # not a list of tables
    ([_device(token_file="t.token")], "http.devices[0].token_sha256"),  # both
    ([_device(token_sha256=None)], "http.devices[0].token_sha256"),  # neither
    ([_device(token_sha256="abc")], "http.devices[0].token_sha256"),
    ([_device(token="t")], "http.devices[0].token"),  # a token itself is never written here
    ([_device(name="cam:1")], "http.devices[0].name"),
    ([_device(), _device(token_sha256=sha("u"))], "http.devices[1].name"),
    ([_device(), _device(name="cam2")], "http.devices[1].token_sha256"),  # one token, two devices
    ([{k: v for k, v in _device().items() if k != "lanes"}], "http.devices[0].lanes"),
    ([_device(kinds=[])], "http.devices[0].kinds"),
    ([_device(kinds=["plate", "dna"])], "http.devices[0].kinds"),
    ([_device(lanes=["in-9"])], "http.devices[0].lanes"),
    ([_device(trusted_face_matcher=True)], "http.devices[0].trusted_face_matcher"),  # kinds has no face
])
def test_bad_device_settings_name_their_key(tmp_path: Path, devices: Any, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(_doc(tmp_path, http={"devices": devices}), base=tmp_path)
    assert exc.value.key == key, str(exc.value)


def test_an_unreadable_or_empty_token_file_stops_the_adapter_before_it_starts(tmp_path: Path) -> None:
    for content in (None, "  \n"):
        token = tmp_path / "reader.token"
        doc = _doc(tmp_path)
        if content is None:
            token.unlink()
        else:
            token.write_text(content)
        with pytest.raises(ConfigError) as exc:
            build(parse(doc, base=tmp_path))
        assert exc.value.key == "http.devices[1].token_file", str(exc.value)


def test_mint_token_prints_a_token_and_the_hash_the_settings_hold(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert adapter_main(["--mint-token"]) == 0
    token_line, hash_line = capsys.readouterr().out.splitlines()
    token = token_line.removeprefix("token: ")
    assert len(token) >= 43 and hash_line == f'token_sha256 = "{sha(token)}"'
    assert adapter_main(["--mint-token"]) == 0
    assert token not in capsys.readouterr().out  # a new one each time
    doc = _doc(tmp_path)
    doc["http"]["devices"][0]["token_sha256"] = hash_line.split('"')[1]
    built = build(parse(doc, base=tmp_path))
    try:
        ok = source(built).post("/reads/in-1", json=PLATE, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 202
    finally:
        built.outbox.close()


# ---- HTTP: the body cap, on a real socket -----------------------------------------------------------


@pytest.fixture
def served(adapter: Adapter) -> Iterator[int]:
    with serving(adapter) as port:
        yield port


@contextlib.contextmanager
def serving(adapter: Adapter) -> Iterator[int]:
    """The adapter's HTTP source (and its liveness listener, with ``health_port``) under uvicorn on real
    sockets, as ``Adapter.start`` runs them; the source's port."""
    servers = [server for server in (adapter.http_server, adapter.health_server) if server is not None]
    threads = [threading.Thread(target=server.run, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while not all(server.started for server in servers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(server.started for server in servers)
    try:
        yield adapter.settings.http.port  # type: ignore[union-attr]
    finally:
        for server in servers:
            server.should_exit = True
        for thread in threads:
            thread.join(10)


def _exchange(port: int, head: str, body: bytes = b"") -> str:
    """Send a request head (and maybe part of a body) and read the answer's status line, without ever
    finishing the body: a source that waits for the whole body times out here."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        try:
            answer = s.recv(4096).decode("latin-1")
        except TimeoutError:
            return "no answer (the source is still reading the body)"
    return answer.split("\r\n", 1)[0]


def test_an_oversized_body_gets_413_before_it_is_read(served: int) -> None:
    auth = f"Authorization: Bearer {TOKENS['anpr-in-1']}\r\n"
    big = 64 * 1024 + 1  # axis.MAX_BYTES + 1
    # Announced too large: refused on the header alone, not one byte of the body sent.
    assert _exchange(served, f"POST /axis/in-1 HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1000000000\r\n") \
        == "HTTP/1.1 413 Request Entity Too Large"
    # Chunked (no Content-Length): counted while it streams, refused once over the cap, never finished.
    chunk = b"%x\r\n%s\r\n" % (big, b"x" * big)
    assert _exchange(served, f"POST /axis/in-1 HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n",
                     chunk) == "HTTP/1.1 413 Request Entity Too Large"
    # The token still comes first.
    assert _exchange(served, "POST /axis/in-1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n") \
        == "HTTP/1.1 401 Unauthorized"


def _problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """RFC 9457 §3.1: the answer is a problem document with its members, ``status`` the answer's own."""
    assert (r.status_code, r.headers["content-type"]) == (status, "application/problem+json"), r.text
    body = r.json()
    assert body == {"type": f"https://quaygate.eu/problems/gate-adapter/{code}", "title": body["title"],
                    "status": status, "detail": body["detail"], "code": code}, body
    assert body["title"] and body["detail"]
    return body


def test_every_refusal_is_a_problem_document_over_a_real_socket(tmp_path: Path) -> None:
    """http_source.py: every error the source answers, with the status and headers it always had, is an
    ``application/problem+json`` document, the framework's own errors included."""
    crowded = build(parse(_doc(tmp_path, queue_size=1), base=tmp_path))
    try:
        with serving(crowded) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            anpr = bearer("anpr-in-1")
            unauthenticated = http.post("/reads/in-1", json=PLATE)
            _problem(unauthenticated, 401, "device_token_required")
            assert unauthenticated.headers["www-authenticate"] == (
                'Bearer realm="quaygate-gate", Basic realm="quaygate-gate", charset="UTF-8"')
            _problem(http.post("/reads/in-2", json=PLATE, headers=anpr), 403, "lane_forbidden")
            _problem(http.post("/axis/in-1", content=b"x" * (64 * 1024 + 1), headers=anpr), 413,
                     "payload_too_large")
            refused = _problem(http.post("/reads/in-1", content=b'{"kind": "plate"}', headers=anpr), 400,
                               "payload_refused")
            assert "plate" in refused["detail"]  # the parser's reason, for the device's integrator
            _problem(http.post("/reads/in-1", json=BADGE, headers=anpr), 403, "read_forbidden")
            _problem(http.post("/reads/in-1", json=FACE_MATCH, headers=bearer("facecam-in-1")), 403, "read_forbidden")
            assert http.post("/reads/in-1", json=PLATE, headers=anpr).status_code == 202
            busy = http.post("/reads/in-1", json=PLATE, headers=anpr)
            _problem(busy, 503, "lane_busy")
            assert busy.headers["retry-after"] == "1"
            _problem(http.post("/nowhere/in-1", json=PLATE, headers=anpr), 404, "not_found")
            _problem(http.get("/reads/in-1", headers=anpr), 405, "method_not_allowed")
        dev = build(parse(_doc(tmp_path, dev=True, http={"port": free_port()}, outbox="dev.sqlite3"), base=tmp_path))
        try:
            with serving(dev) as port:
                _problem(httpx.post(f"http://127.0.0.1:{port}/reads/in-9", json=PLATE, timeout=10), 404,
                         "unknown_lane")
        finally:
            dev.outbox.close()
    finally:
        crowded.outbox.close()


def test_a_read_for_a_full_lane_gets_503_with_retry_after_and_is_not_queued(tmp_path: Path) -> None:
    """lane.py rule 4, http_source.py rule 8: a lane holds at most ``queue_size`` reads waiting; one more
    is refused 503 with ``Retry-After`` (the device sends it again), never queued, and another lane's
    queue is its own."""
    crowded = build(parse(_doc(tmp_path, queue_size=2), base=tmp_path))
    try:
        with serving(crowded) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            anpr = bearer("anpr-in-1")
            for _ in range(2):  # the worker is not started: nothing takes them, as with a lane that hangs
                r = http.post("/reads/in-1", json=PLATE, headers=anpr)
                assert (r.status_code, r.json()) == (202, {"accepted": True}), r.text
            full = http.post("/reads/in-1", json=PLATE, headers=anpr)
            assert full.status_code == 503 and full.headers["retry-after"] == "1", full.text
            assert full.headers["content-type"] == "application/problem+json" and full.json()["code"] == "lane_busy"
            assert http.post("/reads/in-2", json=BADGE, headers=bearer("reader")).status_code == 202
        assert [(read.kind.value, read.lane) for read in fed(crowded)] == [
            ("plate", "in-1"), ("plate", "in-1"), ("badge", "in-2")]
    finally:
        crowded.outbox.close()


# ---- HTTP: TLS, on a real socket ---------------------------------------------------------------------


@pytest.fixture
def source_pki(tmp_path: Path) -> Path:
    """A CA of the terminal's, the source's certificate (localhost, 127.0.0.1), a camera's certificate from
    that CA, and a stranger's from a CA of its own."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_cert("quaygate test device CA", None, pki / "ca")
    make_cert("localhost", ca, pki / "source", san=True)
    make_cert("anpr-in-1", ca, pki / "camera")
    make_cert("stranger", make_cert("stranger CA", None, pki / "stranger-ca"), pki / "stranger")
    return pki


def _tls_doc(tmp_path: Path, pki: Path, **http: Any) -> dict[str, Any]:
    doc = _doc(tmp_path)
    doc["http"].update({"cert_file": str(pki / "source.pem"), "key_file": str(pki / "source.key"), **http})
    return doc


def _https(pki: Path, port: int, client: str | None = None) -> httpx.Client:
    """A device: it checks the source's certificate against the CA, and shows its own if it has one."""
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if client is not None:
        context.load_cert_chain(pki / f"{client}.pem", pki / f"{client}.key")
    return httpx.Client(base_url=f"https://localhost:{port}", verify=context, timeout=10)


def test_with_a_certificate_the_source_speaks_only_tls(tmp_path: Path, source_pki: Path) -> None:
    adapter = build(parse(_tls_doc(tmp_path, source_pki), base=tmp_path))
    try:
        with serving(adapter) as port:
            with _https(source_pki, port) as device:
                r = device.post("/reads/in-1", json=PLATE, headers=bearer("anpr-in-1"))
                assert (r.status_code, r.json()) == (202, {"accepted": True}), r.text
                assert device.post("/reads/in-1", json=PLATE).status_code == 401  # the token is still asked
            with pytest.raises(httpx.TransportError):  # in clear: no answer, the token never read
                httpx.post(f"http://127.0.0.1:{port}/reads/in-1", json=PLATE, headers=bearer("anpr-in-1"), timeout=10)
            with pytest.raises(httpx.ConnectError):  # a device that does not know the terminal's CA stops
                httpx.post(f"https://localhost:{port}/reads/in-1", json=PLATE, timeout=10)
        assert [(read.kind.value, read.lane) for read in fed(adapter)] == [("plate", "in-1")]
    finally:
        adapter.outbox.close()


def test_with_a_client_ca_only_a_device_with_a_certificate_it_signed_gets_in(tmp_path: Path,
                                                                           source_pki: Path) -> None:
    adapter = build(parse(_tls_doc(tmp_path, source_pki, client_ca_file=str(source_pki / "ca.pem")),
                          base=tmp_path))
    try:
        with serving(adapter) as port:
            for client in (None, "stranger"):  # no certificate, or one another CA signed: no handshake
                with _https(source_pki, port, client) as device, pytest.raises(httpx.TransportError):
                    device.post("/reads/in-1", json=PLATE, headers=bearer("anpr-in-1"))
            with _https(source_pki, port, "camera") as device:
                r = device.post("/reads/in-1", json=PLATE, headers=bearer("anpr-in-1"))
                assert (r.status_code, r.json()) == (202, {"accepted": True}), r.text
                assert device.post("/reads/in-1", json=PLATE).status_code == 401  # and its token, still
        assert [(read.kind.value, read.lane) for read in fed(adapter)] == [("plate", "in-1")]
    finally:
        adapter.outbox.close()


@pytest.mark.parametrize(("http", "key"), [
    ({"host": "0.0.0.0"}, "http.cert_file"),  # the camera network, in clear
    ({"host": "10.20.3.7"}, "http.cert_file"),
    ({"cert_file": "source.pem"}, "http.key_file"),
    ({"key_file": "source.key"}, "http.cert_file"),
    ({"client_ca_file": "ca.pem"}, "http.client_ca_file"),  # mutual TLS without TLS
    ({"host": "0.0.0.0", "allow_insecure": "yes"}, "http.allow_insecure"),
])
def test_outside_dev_a_source_in_clear_beyond_this_host_does_not_start(tmp_path: Path, http: dict[str, Any],
                                                                      key: str) -> None:
    doc = _doc(tmp_path)
    doc["http"].update(http)
    with pytest.raises(ConfigError) as exc:
        parse(doc, base=tmp_path)
    assert exc.value.key == key, str(exc.value)
    if key == "http.cert_file" and "host" in http:
        assert "in clear" in exc.value.message and "allow_insecure" in exc.value.message


@pytest.mark.parametrize(("http", "dev", "warned"), [
    ({}, False, False),  # 127.0.0.1: only this host reaches it
    ({"host": "0.0.0.0", "cert_file": "source.pem", "key_file": "source.key"}, False, False),
    ({"host": "0.0.0.0", "allow_insecure": True}, False, True),  # a camera VLAN of its own, said at each start
    ({"host": "0.0.0.0"}, True, False),  # a local test
])
def test_a_source_that_starts_and_whether_its_risk_is_logged(tmp_path: Path, http: dict[str, Any], dev: bool,
                                                             warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    from gate_adapters.adapter import _warn_insecure, barrier_parts

    doc = _doc(tmp_path, dev=dev)
    doc["http"].update(http)
    settings = parse(doc, base=tmp_path)
    caplog.set_level(logging.WARNING, logger="gate_adapters.adapter")
    _warn_insecure(settings, barrier_parts(settings))  # what build() says before it opens anything
    insecure = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gate.source.http.insecure")]
    assert len(insecure) == int(warned), insecure
    if warned:
        assert "0.0.0.0" in insecure[0] and "in clear" in insecure[0]


def test_a_certificate_or_client_ca_the_source_cannot_use_stops_it_before_it_starts(
        tmp_path: Path, source_pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for http, key in (({"cert_file": str(source_pki / "missing.pem")}, "http.cert_file"),
                      ({"key_file": str(source_pki / "camera.key")}, "http.cert_file"),  # not the certificate's key
                      ({"client_ca_file": str(source_pki / "nowhere.pem")}, "http.client_ca_file")):
        with pytest.raises(ConfigError) as exc:
            build(parse(_tls_doc(tmp_path, source_pki, **http), base=tmp_path))
        assert exc.value.key == key, str(exc.value)
    config = tmp_path / "tls.toml"
    config.write_text(f'terminal = "{TERMINAL}"\noutbox = "o.sqlite3"\n[service]\nbase_url = "https://q.example"\n'
                      '[auth]\nclient_id = "g"\nclient_secret_file = "client-secret"\n[http]\nhost = "0.0.0.0"\n'
                      f'cert_file = "{source_pki / "source.pem"}"\nkey_file = "{source_pki / "camera.key"}"\n'
                      f'[[http.devices]]\nname = "cam"\ntoken_sha256 = "{"0" * 64}"\nlanes = ["in-1"]\n'
                      'kinds = ["plate"]\n[[lanes]]\nlane = "in-1"\n')
    for argv in (["--config", str(config), "--check"], ["--config", str(config)]):
        assert adapter_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("gate-adapter: bad settings: http.cert_file: cannot use ") and "Traceback" not in err
    assert not (tmp_path / "o.sqlite3").exists()


def test_healthz_shows_each_lanes_queue_what_its_bounds_refused_and_the_mqtt_drops(tmp_path: Path) -> None:
    """http_source.py ``/healthz``: per lane, the reads waiting and how many may, the reads refused because
    the lane was full (from any source), the trucks evicted, and the reads the MQTT source dropped; asked
    over a real socket of the adapter ``build`` wires, with a device's token as a read is."""
    secret(tmp_path / "mqtt.pw", "mqtt-pw\n")
    doc = _doc(tmp_path, queue_size=2, mqtt={"username": "gate", "password_file": "mqtt.pw"},
               lanes=[{"lane": "in-1", "sources": ["http"], "max_pending": 1}, {"lane": "in-2", "queue_size": 1}])
    adapter = build(parse(doc, base=tmp_path))
    try:
        with serving(adapter) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            monitor = bearer("reader")
            # the worker is not started: nothing takes reads
            assert http.get("/healthz", headers=monitor).json()["load"] == {
                "in-1": {"queued": 0, "queue_size": 2, "refused": 0, "evicted": 0, "mqtt_dropped": 0},
                "in-2": {"queued": 0, "queue_size": 1, "refused": 0, "evicted": 0, "mqtt_dropped": 0}}
            for status in (202, 202, 503):
                assert http.post("/reads/in-1", json=PLATE, headers=bearer("anpr-in-1")).status_code == status
            badge = json.dumps(BADGE).encode()
            for _ in range(3):  # one queued, two dropped
                adapter.mqtt.handle(f"quaygate/{TERMINAL}/in-2/badge", badge)
            in_1 = adapter.worker.lanes[(TERMINAL, "in-1")]
            for text in ("1-ABC-123", "7-XYZ-777"):  # two trucks' plates, fresh: the second evicts the first
                plate = generic("plate", {**PLATE["plate"], "text": text})
                in_1.feed(generic_json.parse_object({**plate, "lane": "in-1"}))
            health = http.get("/healthz", headers=monitor)
        evicted = adapter.outbox.held_latch("in-1")
        assert health.status_code == 200 and evicted is not None
        assert health.json() == {"status": "ok", "terminal": TERMINAL, "lanes": ["in-1", "in-2"], "load": {
            "in-1": {"queued": 2, "queue_size": 2, "refused": 1, "evicted": 1, "mqtt_dropped": 0},
            "in-2": {"queued": 1, "queue_size": 1, "refused": 2, "evicted": 0, "mqtt_dropped": 2}},
            "latches": {"in-1": {"latched": True, "latch": evicted.id,  # the eviction called an officer
                                 "since": dt.datetime.fromtimestamp(evicted.latched_at, dt.UTC).isoformat()},
                        "in-2": {"latched": False}},
            "mqtt": {"status": "reconnecting", "down_seconds": health.json()["mqtt"]["down_seconds"],  # not started
                     "failed": 0}}
    finally:
        adapter.outbox.close()


def test_healthz_shows_which_lanes_are_latched_which_latch_and_since_when(tmp_path: Path) -> None:
    """http_source.py ``/healthz`` ``latches``: every lane, whether an officer's latch holds it (lane.py
    rule 9), and if so its id and since when, read from the outbox at each call (a clear by the command
    on the adapter's host counts at once); never why, nor for which request (the officer's routes say)."""
    adapter = build(parse(_doc(tmp_path), base=tmp_path))
    try:
        with serving(adapter) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            monitor = bearer("reader")
            latch, _ = adapter.outbox.latch("in-2", "req-called-for", "review")
            health = http.get("/healthz", headers=monitor)
            assert health.status_code == 200, health.text
            assert health.json()["latches"] == {
                "in-1": {"latched": False},
                "in-2": {"latched": True, "latch": latch.id,
                         "since": dt.datetime.fromtimestamp(latch.latched_at, dt.UTC).isoformat()}}
            assert "req-called-for" not in health.text and "review" not in health.text
            assert adapter.latches is not None
            adapter.latches.clear("in-2", latch.id, by="duty officer")
            assert http.get("/healthz", headers=monitor).json()["latches"] == {
                "in-1": {"latched": False}, "in-2": {"latched": False}}
    finally:
        adapter.outbox.close()


def test_under_mutual_tls_a_probe_gets_liveness_on_a_listener_of_its_own_and_the_load_asks_a_token(
        tmp_path: Path, source_pki: Path) -> None:
    """http_source.py: with mutual TLS nothing without a device certificate gets a handshake, a load
    balancer's probe included. ``[http] health_port`` is a plain listener of its own with ``/livez`` alone:
    "ok" while the lanes run (503 once they stop), nothing about lanes, nothing else served. The source's
    own ``/livez`` says the same to a device, and ``/healthz`` (each lane's load) asks what a read asks:
    the device's certificate and its token."""
    health_port = free_port()
    adapter = build(parse(_tls_doc(tmp_path, source_pki, client_ca_file=str(source_pki / "ca.pem"),
                                   health_port=health_port), base=tmp_path))
    probe = f"http://127.0.0.1:{health_port}"
    adapter.worker.start()
    try:
        with serving(adapter) as port:
            live = httpx.get(f"{probe}/livez", timeout=10)
            assert (live.status_code, live.json()) == (200, {"status": "ok"})
            for path in ("/healthz", "/reads/in-1", "/officer/latch/in-1"):
                _problem(httpx.get(f"{probe}{path}", timeout=10), 404, "not_found")
            _problem(httpx.post(f"{probe}/reads/in-1", json=PLATE, headers=bearer("anpr-in-1"), timeout=10), 404,
                     "not_found")
            with _https(source_pki, port) as stranger, pytest.raises(httpx.TransportError):
                stranger.get("/livez")  # no certificate: no handshake, whatever the path
            with _https(source_pki, port, "camera") as device:
                assert device.get("/livez").json() == {"status": "ok"}
                refused = device.get("/healthz")
                _problem(refused, 401, "device_token_required")
                assert "load" not in refused.text and "in-1" not in refused.text
                _problem(device.get("/healthz", headers={"Authorization": "Bearer not-a-device-token"}),
                         401, "device_token_required")
                load = device.get("/healthz", headers=bearer("anpr-in-1"))
                assert load.status_code == 200 and set(load.json()["load"]) == {"in-1", "in-2"}, load.text
            adapter.worker.stop()
            down = httpx.get(f"{probe}/livez", timeout=10)
            assert (down.status_code, down.json()) == (503, {"status": "unavailable"})
    finally:
        adapter.worker.stop()
        adapter.outbox.close()


@pytest.mark.parametrize(("http", "key"), [
    ({"health_port": 8089, "port": 8089}, "http.health_port"),  # one socket cannot be two listeners
    ({"health_host": "0.0.0.0"}, "http.health_port"),
    ({"health_port": 0}, "http.health_port"),
])
def test_bad_liveness_listener_settings_name_their_key(tmp_path: Path, http: dict[str, Any], key: str) -> None:
    doc = _doc(tmp_path)
    doc["http"].update(http)
    with pytest.raises(ConfigError) as exc:
        parse(doc, base=tmp_path)
    assert exc.value.key == key, str(exc.value)


# ---- MQTT ---------------------------------------------------------------------------------------------


def _mqtt_doc(tmp_path: Path, **mqtt: Any) -> dict[str, Any]:
    dev = mqtt.pop("dev", False)
    doc = _doc(tmp_path, dev=dev, mqtt=mqtt, lanes=[{"lane": "in-1"}, {"lane": "in-2"}])
    del doc["http"]
    return doc


@pytest.mark.parametrize("grace", [0.5, "60", 3601])
def test_an_mqtt_connection_grace_out_of_range_does_not_start(tmp_path: Path, grace: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(_mqtt_doc(tmp_path, dev=True, connection_grace_seconds=grace), base=tmp_path)
    assert exc.value.key == "mqtt.connection_grace_seconds", str(exc.value)


@pytest.mark.parametrize(("mqtt", "key"), [
    ({}, "mqtt.username"),  # no credentials
    ({"username": "gate"}, "mqtt.username"),  # a user without a password
    ({"password_file": "p"}, "mqtt.username"),
    ({"host": "10.20.3.9", "username": "gate", "password_file": "p"}, "mqtt.tls"),  # a password in clear
    ({"ca_file": "ca.pem", "username": "gate", "password_file": "p"}, "mqtt.ca_file"),  # needs tls = true
    ({"tls": True, "cert_file": "c.pem"}, "mqtt.key_file"),
    ({"tls": "yes"}, "mqtt.tls"),
])
def test_outside_dev_plaintext_or_anonymous_mqtt_does_not_start(tmp_path: Path, mqtt: dict[str, Any],
                                                                key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(_mqtt_doc(tmp_path, **mqtt), base=tmp_path)
    assert exc.value.key == key, str(exc.value)


def test_mqtt_settings_that_do_start(tmp_path: Path) -> None:
    local = parse(_mqtt_doc(tmp_path, username="gate", password_file="p"), base=tmp_path).mqtt
    assert local is not None and (local.port, local.tls) == (1883, False)
    remote = parse(_mqtt_doc(tmp_path, host="broker.k1700", tls=True, cert_file="c.pem", key_file="c.key"),
                   base=tmp_path).mqtt
    assert remote is not None and (remote.port, remote.cert_file) == (8883, tmp_path / "c.pem")
    dev = parse(_mqtt_doc(tmp_path, dev=True), base=tmp_path)  # a local test broker
    assert dev.mqtt is not None and dev.mqtt.username is None


def test_a_face_match_over_mqtt_is_dropped_unless_the_source_is_a_trusted_matcher(adapter: Adapter) -> None:
    topic, match, image = f"quaygate/{TERMINAL}/in-1/face", json.dumps(FACE_MATCH).encode(), json.dumps(FACE_IMAGE)
    untrusted = MqttSource(adapter.worker)
    assert untrusted.handle(topic, match) is None and fed(adapter) == []
    assert untrusted.handle(topic, image.encode()) is not None  # an image is the service's to match
    assert MqttSource(adapter.worker, trusted_face_matcher=True).handle(topic, match) is not None
    assert [read.match is not None for read in fed(adapter)] == [False, True]  # type: ignore[union-attr]


ACL = """\
user gate-k1700
topic read quaygate/{t}/+/#
topic write quaygate/{t}/+/barrier

user anpr-in-1
topic write quaygate/{t}/in-1/plate
topic write quaygate/{t}/in-1/anpr/#
"""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A Mosquitto of this test's own: TLS with client certificates, a password file, the docs' ACL."""
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None:
        unavailable("the MQTT TLS test", "no mosquitto / mosquitto_passwd binary")
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_cert("quaygate test CA", None, pki / "ca")
    make_cert("localhost", ca, pki / "server", san=True)
    for user in ("gate-k1700", "anpr-in-1"):
        make_cert(user, ca, pki / user)
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    for user in ("gate-k1700", "anpr-in-1"):
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, f"{user}-pw"], check=True)  # noqa: S603, S607
    (tmp_path / "acl").write_text(ACL.format(t=TERMINAL))
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    # "user": started as root, mosquitto would switch to the "mosquitto" user, who cannot read our files.
    conf.write_text(f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
                    f"persistence false\nallow_anonymous false\npassword_file {passwd}\nacl_file {tmp_path / 'acl'}\n"
                    f"listener {port} 127.0.0.1\ncafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\n"
                    f"keyfile {pki / 'server.key'}\nrequire_certificate true\n")
    proc = start(["mosquitto", "-c", str(conf)], log=tmp_path / "mosquitto.log", ready=listens(port),
                 what="mosquitto")
    try:
        yield port, pki
    finally:
        stop(proc)


def test_tls_and_credentials_reach_the_broker_and_its_acl_holds_each_camera_to_its_lane(
        tmp_path: Path, broker: tuple[int, Path]) -> None:
    port, pki = broker
    for user in ("gate-k1700", "anpr-in-1"):
        secret(tmp_path / f"{user}.pw", f"{user}-pw\n")

    def settings(user: str, **over: Any) -> Any:
        mqtt = {"host": "localhost", "port": port, "tls": True, "ca_file": str(pki / "ca.pem"),
                "cert_file": str(pki / f"{user}.pem"), "key_file": str(pki / f"{user}.key"), "username": user,
                "password_file": f"{user}.pw", "client_id": f"{user}-{uuid.uuid4().hex[:6]}", **over}
        return parse(_mqtt_doc(tmp_path, **mqtt), base=tmp_path)

    adapter = build(settings("gate-k1700"))
    camera = client_for(settings("anpr-in-1").mqtt)
    try:
        adapter.mqtt.start()
        assert adapter.mqtt.subscribed.wait(10)  # TLS, client certificate, username and password accepted
        camera.connect("localhost", port)
        camera.loop_start()
        plate = json.dumps(PLATE).encode()
        camera.publish(f"quaygate/{TERMINAL}/in-2/plate", plate, qos=1).wait_for_publish(5)  # not its lane
        camera.publish(f"quaygate/{TERMINAL}/in-1/badge", json.dumps(BADGE), qos=1).wait_for_publish(5)  # nor kind
        camera.publish(f"quaygate/{TERMINAL}/in-1/plate", plate, qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while adapter.worker.queued(TERMINAL, "in-1") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # anything the ACL let through would be here by now
        assert [(read.kind.value, read.lane) for read in fed(adapter)] == [("plate", "in-1")]
    finally:
        camera.disconnect()
        camera.loop_stop()
        adapter.mqtt.stop()
        adapter.outbox.close()
    # The same certificate without the password: the broker does not let it in (so the password above
    # is what client_for passed on).
    refused: queue.Queue[Any] = queue.Queue()
    no_password = new_client("no-password")
    no_password.tls_set(ca_certs=str(pki / "ca.pem"), certfile=str(pki / "anpr-in-1.pem"),
                        keyfile=str(pki / "anpr-in-1.key"))
    no_password.on_connect = lambda c, u, f, rc, p: refused.put(rc)
    no_password.connect("localhost", port)
    no_password.loop_start()
    try:
        assert refused.get(timeout=10).is_failure
    finally:
        no_password.loop_stop()

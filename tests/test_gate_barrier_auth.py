"""Who may open a barrier (config.py rule 9, docs/gate-adapter.md "Barrier commands"): the HTTP barrier as
``build`` wires it from its settings, talking to a real local HTTP server standing in for a controller
(plain, and TLS with a client certificate, certificates made here with ``cryptography``); commands
signed with the adapter's key and verified by the controller-side Python of docs/gate-adapter.md (run
as is, joserfc with an explicit algorithm list) with the public JWK ``--barrier-public-key`` prints;
MQTT payloads signed on a real Mosquitto; the start-up refusals outside dev."""

from __future__ import annotations

import base64
import json
import logging
import queue
import re
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import BadSignatureError, ExpiredTokenError
from joserfc.jwk import ECKey, OKPKey
from joserfc.jwt import JWTClaimsRegistry

from gate_adapters.adapter import _sink, _warn_insecure, barrier_parts, barrier_signer_for
from gate_adapters.adapter import main as adapter_main
from gate_adapters.runtime.command_signing import CommandSigner
from gate_adapters.runtime.config import ConfigError, parse
from gate_adapters.runtime.mqtt_source import new_client
from gate_adapters.runtime.sinks import BarrierCommand, BarrierUnreachable, Command, HttpBarrier, MqttBarrier

from .factories import TERMINAL
from .gate_tls import make_cert
from .processes import ROOT, free_port
from .test_gate_runtime import _mosquitto

DOCS = ROOT / "docs" / "gate-adapter.md"
ALLOW = {"decision": "allow", "mode": "commit", "committed": True, "decision_id": "d-1"}
BARRIER_TOKEN = "barrier-token-" + "e" * 32


def controller_code() -> dict[str, Any]:
    """The controller-side verification of docs/gate-adapter.md, run as it is written there."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("In Python with joserfc")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block is not None
    namespace: dict[str, Any] = {"__name__": "controller"}
    exec(compile(block.group(1), "docs/gate-adapter.md", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


# -- a controller: a real local HTTP server -----------------------------------------------------------


@dataclass
class Controller:
    url: str
    heard: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)

    def next(self) -> dict[str, Any]:
        return self.heard.get(timeout=10)


def _serve(tls: ssl.SSLContext | None) -> Iterator[Controller]:
    heard: queue.Queue[dict[str, Any]] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            peer = self.request.getpeercert() if isinstance(self.request, ssl.SSLSocket) else None
            heard.put({"path": self.path, "authorization": self.headers.get("Authorization"),
                       "body": json.loads(body), "peer": peer})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme, host = ("https", "localhost") if tls is not None else ("http", "127.0.0.1")
    try:
        yield Controller(f"{scheme}://{host}:{server.server_address[1]}/barrier", heard)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def controller() -> Iterator[Controller]:
    yield from _serve(None)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, the controller's certificate (localhost, 127.0.0.1) and the adapter's client certificate."""
    ca = make_cert("quaygate test barrier CA", None, tmp_path / "ca")
    make_cert("localhost", ca, tmp_path / "controller", san=True)
    make_cert("gate-adapter", ca, tmp_path / "client")
    make_cert("stranger CA", None, tmp_path / "other-ca")
    return tmp_path


@pytest.fixture
def tls_controller(pki: Path) -> Iterator[Controller]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "controller.pem", pki / "controller.key")
    ctx.load_verify_locations(pki / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: only a client with a certificate from our CA
    yield from _serve(ctx)


# -- the adapter's settings ---------------------------------------------------------------------------


def _doc(tmp_path: Path, barrier: dict[str, Any], *, signing: bool = True, dev: bool = False,
         **over: Any) -> dict[str, Any]:
    """A production (not dev) adapter with one http barrier lane."""
    for name, text in (("client-secret", "s3cret"), ("barrier.token", BARRIER_TOKEN + "\n"),
                       ("barrier.password", "barrier-pass\n")):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)  # its owner's alone, or it does not start outside dev (config.py rule 10)
    doc: dict[str, Any] = {
        "terminal": TERMINAL, "outbox": "outbox.sqlite3", "dev": dev,
        "service": {"base_url": "https://quaygate.example.eu"},
        "auth": {"client_id": "gate", "client_secret_file": "client-secret"},
        "http": {"port": free_port(), "devices": [
            {"name": "cam", "token_sha256": "0" * 64, "lanes": ["in-1"], "kinds": ["plate"]}]},
        "lanes": [{"lane": "in-1", "barrier": {"kind": "http", **barrier}}],
    }
    if signing:
        doc["barrier_signing"] = {"key_file": "barrier-signing.jwk"}
        if not (tmp_path / "barrier-signing.jwk").exists():
            (tmp_path / "barrier-signing.jwk").write_text(
                json.dumps(ECKey.generate_key("P-256", private=True).as_dict(private=True)))
            (tmp_path / "barrier-signing.jwk").chmod(0o600)  # its owner's alone, or it does not start (keys.py)
    doc.update(over)
    return doc


def sink_for(tmp_path: Path, barrier: dict[str, Any], **kw: Any) -> Any:
    settings = parse(_doc(tmp_path, barrier, **kw), base=tmp_path)
    return _sink(settings.lanes[0], settings, None, barrier_parts(settings))


def public_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """The public JWK as ``--barrier-public-key`` prints it, imported as the controller would."""
    config = tmp_path / "gate-adapter.toml"
    config.write_text(f'terminal = "{TERMINAL}"\noutbox = "o.sqlite3"\ndev = true\n[service]\n'
                      'base_url = "http://127.0.0.1:8000"\n[auth]\nclient_id = "g"\n[http]\n'
                      '[barrier_signing]\nkey_file = "barrier-signing.jwk"\n[[lanes]]\nlane = "in-1"\n')
    capsys.readouterr()
    assert adapter_main(["--config", str(config), "--barrier-public-key"]) == 0
    jwk = json.loads(capsys.readouterr().out)
    assert "d" not in jwk and jwk["alg"] == "ES256" and jwk["use"] == "sig" and jwk["kid"]
    return controller_code()["public_key"](jwk)


# -- HTTP: credentials, signatures, TLS ----------------------------------------------------------------


def test_the_controller_gets_the_token_and_a_command_it_verifies_once(tmp_path: Path, controller: Controller,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    sink = sink_for(tmp_path, {"url": controller.url, "token_file": "barrier.token"})
    assert sink.act(ALLOW, "in-1").command is BarrierCommand.OPEN
    got = controller.next()
    assert got["authorization"] == f"Bearer {BARRIER_TOKEN}" and got["path"] == "/barrier"
    body = got["body"]
    assert {k: body[k] for k in ("lane", "command", "decision_id", "call_officer")} == {
        "lane": "in-1", "command": "open", "decision_id": "d-1", "call_officer": False}
    code, key = controller_code(), public_key(tmp_path, capsys)
    seen = code["ReplayCache"]()
    claims = code["verify_command"](body, key, terminal=TERMINAL, lane="in-1", seen=seen)
    assert {k: claims[k] for k in ("terminal", "lane", "command", "decision_id", "call_officer")} == {
        "terminal": TERMINAL, "lane": "in-1", "command": "open", "decision_id": "d-1", "call_officer": False}
    assert 1 <= claims["exp"] - claims["iat"] <= 5 and len(claims["jti"]) >= 16
    with pytest.raises(code["Refused"], match="replayed"):  # the same command heard twice
        code["verify_command"](body, key, terminal=TERMINAL, lane="in-1", seen=seen)
    for terminal, lane in ((TERMINAL, "in-2"), ("OTHER-T1", "in-1")):  # another controller's command
        with pytest.raises(code["Refused"]):
            code["verify_command"](body, key, terminal=terminal, lane=lane, seen=code["ReplayCache"]())
    # A hold without an answer is signed too; each command has its own jti.
    sink.act(None, "in-1")
    held = code["verify_command"](controller.next()["body"], key, terminal=TERMINAL, lane="in-1", seen=seen)
    assert (held["command"], held["decision_id"], held["call_officer"]) == ("hold", None, True)


def test_the_controller_gets_http_basic_credentials(tmp_path: Path, controller: Controller) -> None:
    sink = sink_for(tmp_path, {"url": controller.url, "username": "gate-k1700", "password_file": "barrier.password"},
                    signing=False)
    sink.act(ALLOW, "in-1")
    got = controller.next()
    scheme, _, value = got["authorization"].partition(" ")
    assert scheme == "Basic" and base64.b64decode(value).decode() == "gate-k1700:barrier-pass"
    assert "signature" not in got["body"]  # no [barrier_signing]: the command as before


def test_over_tls_the_controller_is_reached_with_our_ca_and_client_certificate(
        tmp_path: Path, pki: Path, tls_controller: Controller, caplog: pytest.LogCaptureFixture) -> None:
    tls = {"url": tls_controller.url, "token_file": "barrier.token", "ca_file": str(pki / "ca.pem"),
           "cert_file": str(pki / "client.pem"), "key_file": str(pki / "client.key")}
    sink_for(tmp_path, tls).act(ALLOW, "in-1")
    got = tls_controller.next()
    assert got["authorization"] == f"Bearer {BARRIER_TOKEN}" and got["body"]["command"] == "open"
    assert dict(x[0] for x in got["peer"]["subject"])["commonName"] == "gate-adapter"  # mutual TLS
    # Another CA (a controller we do not know), or no client certificate: nothing reaches the controller,
    # the command is still what it was (the barrier stays closed) and the operator is told.
    caplog.set_level(logging.ERROR, logger="gate_adapters.barrier")
    for wrong in ({**tls, "ca_file": str(pki / "other-ca.pem")},
                  {k: v for k, v in tls.items() if k not in ("cert_file", "key_file")}):
        caplog.clear()
        with pytest.raises(BarrierUnreachable) as exc:  # sinks.py rule 6: the lane latches (lane.py rule 10)
            sink_for(tmp_path, wrong).act(ALLOW, "in-1")
        assert exc.value.command.command is BarrierCommand.OPEN
        assert [r.getMessage() for r in caplog.records] == ["gate.barrier.unreachable"]
    assert tls_controller.heard.empty()


# -- signatures, with joserfc itself ------------------------------------------------------------------


def _signed(signer: CommandSigner, command: str = "open") -> str:
    return signer.sign(Command("in-1", BarrierCommand(command), "d-9", call_officer=False).as_json())


def _decode(token: str, key: Any, alg: str, *, now: int | None = None) -> dict[str, Any]:
    decoded = jwt.decode(token, key, algorithms=[alg])
    JWTClaimsRegistry(now=now, exp={"essential": True}, jti={"essential": True}).validate(decoded.claims)
    return decoded.claims


@pytest.mark.parametrize("kind", ["EC", "OKP"])
def test_a_signature_verifies_with_the_public_jwk_and_an_explicit_algorithm(kind: str) -> None:
    key = ECKey.generate_key("P-256", private=True) if kind == "EC" else OKPKey.generate_key("Ed25519", private=True)
    signer = CommandSigner(key, terminal=TERMINAL)
    jwk = signer.public_jwk()
    public = (ECKey if kind == "EC" else OKPKey).import_key(jwk)
    token = _signed(signer)
    assert jwt.decode(token, public, algorithms=[jwk["alg"]]).header == {
        "alg": jwk["alg"], "typ": "quaygate-barrier+jwt", "kid": signer.kid}
    assert _decode(token, public, jwk["alg"])["command"] == "open"
    other = "Ed25519" if kind == "EC" else "ES256"
    with pytest.raises(Exception):  # noqa: B017 - joserfc refuses an algorithm not on the list
        jwt.decode(token, public, algorithms=[other])


def test_an_expired_an_altered_or_a_strangers_command_fails_verification() -> None:
    key = ECKey.generate_key("P-256", private=True)
    public = ECKey.import_key(CommandSigner(key, terminal=TERMINAL).public_jwk())
    old = CommandSigner(key, terminal=TERMINAL, clock=lambda: time.time() - 60)  # signed a minute ago
    with pytest.raises(ExpiredTokenError):
        _decode(_signed(old), public, "ES256")
    signer = CommandSigner(key, terminal=TERMINAL)
    token = _signed(signer, "hold")
    assert _decode(token, public, "ES256")["command"] == "hold"
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "command": "open"}).encode()).rstrip(b"=").decode()
    with pytest.raises(BadSignatureError):  # "hold" turned into "open" on the way
        jwt.decode(f"{header}.{forged}.{signature}", public, algorithms=["ES256"])
    stranger = CommandSigner(ECKey.generate_key("P-256", private=True), terminal=TERMINAL, kid=signer.kid)
    with pytest.raises(BadSignatureError):  # the same kid, another key
        jwt.decode(_signed(stranger), public, algorithms=["ES256"])
    code = controller_code()  # the docs' controller refuses them all
    for bad in (_signed(old), f"{header}.{forged}.{signature}", _signed(stranger)):
        with pytest.raises(code["Refused"]):
            code["verify_command"]({"signature": bad}, public, terminal=TERMINAL, lane="in-1",
                                   seen=code["ReplayCache"]())
    assert "BEGIN" not in repr(signer) and key.as_dict(private=True)["d"] not in repr(signer)


# -- MQTT ------------------------------------------------------------------------------------------------


def test_mqtt_barrier_payloads_are_signed(tmp_path: Path) -> None:
    host, port = _mosquitto()
    prefix = f"qgb{uuid.uuid4().hex[:8]}"
    key = ECKey.generate_key("P-256", private=True)
    (tmp_path / "k.jwk").write_text(json.dumps(key.as_dict(private=True)))
    settings = parse({"terminal": TERMINAL, "outbox": "o.sqlite3", "dev": True,
                      "service": {"base_url": "http://127.0.0.1:8000"}, "auth": {"client_id": "g"},
                      "mqtt": {"host": host, "port": port, "prefix": prefix},
                      "barrier_signing": {"key_file": "k.jwk"},
                      "lanes": [{"lane": "in-1", "barrier": {"kind": "mqtt"}}]}, base=tmp_path)
    heard: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()
    listener, publisher = new_client(), new_client()
    listener.on_message = lambda c, u, m: heard.put((m.topic, json.loads(m.payload)))
    listener.on_subscribe = lambda *a: subscribed.put(True)
    listener.connect(host, port)
    listener.subscribe(f"{prefix}/#", qos=1)
    listener.loop_start()
    publisher.connect(host, port)
    publisher.loop_start()
    try:
        subscribed.get(timeout=5)
        deadline = time.monotonic() + 5
        while not publisher.is_connected() and time.monotonic() < deadline:  # an open goes only when connected
            time.sleep(0.02)
        sink = _sink(settings.lanes[0], settings, publisher, barrier_parts(settings))
        assert isinstance(sink, MqttBarrier)
        sink.act(ALLOW, "in-1")
        topic, payload = heard.get(timeout=10)
    finally:
        for client in (listener, publisher):
            client.disconnect()
            client.loop_stop()
    assert topic == f"{prefix}/{TERMINAL}/in-1/barrier" and payload["command"] == "open"
    code = controller_code()
    claims = code["verify_command"](payload, ECKey.import_key(barrier_signer_for(settings).public_jwk()),  # type: ignore[union-attr]
                                    terminal=TERMINAL, lane="in-1", seen=code["ReplayCache"]())
    assert (claims["command"], claims["decision_id"]) == ("open", "d-1")


# -- what starts outside dev ------------------------------------------------------------------------------


@pytest.mark.parametrize(("barrier", "signing", "key"), [
    ({"url": "http://10.20.3.50/barrier"}, False, "url"),  # in clear and unsigned
    ({"url": "http://10.20.3.50/barrier", "token_file": "barrier.token"}, False, "url"),  # a token in clear
    ({"url": "https://barrier.lan/b"}, False, "url"),  # TLS, but the controller is asked for nothing
    ({"url": "http://10.20.3.50/b", "ca_file": "ca.pem"}, True, "ca_file"),  # TLS settings on http://
    ({"url": "https://barrier.lan/b", "cert_file": "c.pem"}, True, "key_file"),
    ({"url": "https://barrier.lan/b", "token_file": "t", "username": "u", "password_file": "p"}, True, "token_file"),
    ({"url": "https://barrier.lan/b", "username": "u"}, True, "password_file"),
    ({"url": "https://barrier.lan/b", "username": "a:b", "password_file": "p"}, True, "username"),
    ({"url": "https://barrier.lan/b", "allow_insecure": "yes"}, True, "allow_insecure"),
])
def test_an_unprotected_or_inconsistent_http_barrier_does_not_start(tmp_path: Path, barrier: dict[str, Any],
                                                                   signing: bool, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(_doc(tmp_path, barrier, signing=signing), base=tmp_path)
    assert exc.value.key == f"lanes[0].barrier.{key}", str(exc.value)


def _mqtt_barrier_doc(tmp_path: Path, *, signing: bool, **barrier: Any) -> dict[str, Any]:
    """Outside dev, an MQTT broker on this host with the adapter's account, and one mqtt barrier lane."""
    doc = _doc(tmp_path, {}, signing=signing)
    doc["mqtt"] = {"host": "127.0.0.1", "username": "gate-k1700", "password_file": "barrier.password"}
    doc["lanes"] = [{"lane": "in-1", "barrier": {"kind": "mqtt", **barrier}}]
    return doc


def test_an_unsigned_mqtt_barrier_does_not_start_outside_dev(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """config.py rule 9 (review 109): an "open" the broker or the network held back must expire before it
    can be heard; only a signed command does. No allow_insecure for it."""
    with pytest.raises(ConfigError) as exc:
        parse(_mqtt_barrier_doc(tmp_path, signing=False), base=tmp_path)
    assert exc.value.key == "lanes[0].barrier.kind" and "[barrier_signing]" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse(_mqtt_barrier_doc(tmp_path, signing=False, allow_insecure=True), base=tmp_path)
    assert exc.value.key == "lanes[0].barrier.allow_insecure"
    caplog.set_level(logging.WARNING, logger="gate_adapters.adapter")
    settings = parse(_mqtt_barrier_doc(tmp_path, signing=True), base=tmp_path)  # signed: it starts, unwarned
    _warn_insecure(settings, barrier_parts(settings))
    assert not [r for r in caplog.records if r.getMessage().startswith("gate.barrier.insecure")]
    assert parse(_mqtt_barrier_doc(tmp_path, signing=False) | {"dev": True}, base=tmp_path).dev  # dev: allowed


@pytest.mark.parametrize(("lifetime", "starts"), [(10, True), (1, True), (10.5, False), (60, False)])
def test_a_signed_command_lives_at_most_ten_seconds(tmp_path: Path, lifetime: float, starts: bool) -> None:
    """config.py rule 9 (review 116): ``lifetime_seconds`` is the window in which a held-back signed "open"
    still lifts a barrier; 60 was allowed, 10 is the most now."""
    doc = _mqtt_barrier_doc(tmp_path, signing=True)
    doc["barrier_signing"]["lifetime_seconds"] = lifetime
    if starts:
        assert parse(doc, base=tmp_path).barrier_signing.lifetime_seconds == lifetime  # type: ignore[union-attr]
        return
    with pytest.raises(ConfigError) as exc:
        parse(doc, base=tmp_path)
    assert exc.value.key == "barrier_signing.lifetime_seconds"


def test_credential_keys_belong_to_an_http_barrier_only(tmp_path: Path) -> None:
    doc = _doc(tmp_path, {}, signing=False)
    doc["lanes"] = [{"lane": "in-1", "barrier": {"kind": "log", "token_file": "barrier.token"}}]
    with pytest.raises(ConfigError) as exc:
        parse(doc, base=tmp_path)
    assert exc.value.key == "lanes[0].barrier.token_file"


@pytest.mark.parametrize(("barrier", "signing", "warned"), [
    ({"url": "http://127.0.0.1:9/b"}, False, False),  # on this host
    ({"url": "http://10.20.3.50/b"}, True, False),  # signed: the signature protects it
    ({"url": "http://10.20.3.50/b", "token_file": "barrier.token"}, True, True),  # signed, the token in clear
    ({"url": "https://barrier.lan/b", "token_file": "barrier.token"}, False, False),
    ({"url": "https://barrier.lan/b"}, True, False),
    ({"url": "http://10.20.3.50/b", "allow_insecure": True}, False, True),  # a legacy controller, said loudly
])
def test_protected_or_explicitly_insecure_barriers_start_and_the_risk_is_logged(
        tmp_path: Path, barrier: dict[str, Any], signing: bool, warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gate_adapters.adapter")
    settings = parse(_doc(tmp_path, barrier, signing=signing), base=tmp_path)
    _warn_insecure(settings, barrier_parts(settings))  # what build() says before it opens anything
    insecure = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gate.barrier.insecure")]
    assert len(insecure) == int(warned), insecure
    assert any(r.getMessage().startswith("gate.adapter.bearer_tokens") for r in caplog.records)  # no DPoP key


def test_dev_allows_a_plain_barrier_and_sends_what_it_always_sent(tmp_path: Path, controller: Controller) -> None:
    sink = sink_for(tmp_path, {"url": controller.url.replace("127.0.0.1", "localhost")}, signing=False, dev=True)
    assert isinstance(sink, HttpBarrier)
    sink.act(ALLOW, "in-1")
    got = controller.next()
    assert got["authorization"] is None and got["body"] == {"lane": "in-1", "command": "open", "decision_id": "d-1",
                                                            "call_officer": False}


def test_missing_barrier_secrets_and_keys_stop_the_adapter_before_it_starts(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gate-adapter.toml"
    config.write_text(f'terminal = "{TERMINAL}"\noutbox = "o.sqlite3"\ndev = true\n[service]\n'
                      'base_url = "http://127.0.0.1:8000"\n[auth]\nclient_id = "g"\nclient_secret_file = "s"\n'
                      '[http]\n[barrier_signing]\nkey_file = "keys/barrier.jwk"\n[[lanes]]\nlane = "in-1"\n'
                      'barrier = { kind = "http", url = "https://b.lan/x", token_file = "nope.token" }\n')
    (tmp_path / "s").write_text("secret")
    assert adapter_main(["--config", str(config), "--check"]) == 2
    assert "lanes[0].barrier.token_file: cannot read" in capsys.readouterr().err
    (tmp_path / "nope.token").write_text("t")
    assert adapter_main(["--config", str(config), "--check"]) == 2
    err = capsys.readouterr().err
    assert "barrier_signing.key_file: " in err and "does not exist" in err and "--make-keys" in err
    assert adapter_main(["--config", str(config), "--make-keys"]) == 0
    assert "barrier_signing.key_file: made" in capsys.readouterr().out
    assert (tmp_path / "keys" / "barrier.jwk").stat().st_mode & 0o077 == 0
    assert adapter_main(["--config", str(config), "--check"]) == 0
    assert not (tmp_path / "o.sqlite3").exists()  # --check and --make-keys start nothing


# -- no proxy from the environment (review 173, finding 6) -------------------------------------------------


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[queue.Queue[dict[str, Any]]]:
    """A real HTTP proxy of sorts on this host, named in every proxy variable a process may inherit: it
    answers 200 to whatever it is sent, and tells what (the request line's absolute URL, the credentials)."""
    heard: queue.Queue[dict[str, Any]] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            heard.put({"target": self.path, "authorization": self.headers.get("Authorization")})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_CONNECT = do_POST  # noqa: N815 - an https:// barrier would be tunnelled

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield heard
    finally:
        server.shutdown()
        server.server_close()


def test_the_barrier_is_reached_directly_never_through_a_proxy_from_the_environment(
        tmp_path: Path, controller: Controller, proxy: queue.Queue[dict[str, Any]]) -> None:
    """Before: with HTTP_PROXY set, the proxy received http://10.9.8.7/barrier with Authorization: Bearer
    <the barrier token> (and answered 200, so the open counted as heard), and a loopback controller's
    commands went through it too. A barrier controller is on the terminal's own network: the adapter goes
    to it directly, whatever the environment says."""
    sink = sink_for(tmp_path, {"url": controller.url, "token_file": "barrier.token"})
    assert sink.act(ALLOW, "in-1").command is BarrierCommand.OPEN
    assert proxy.empty(), proxy.get_nowait()
    assert controller.next()["authorization"] == f"Bearer {BARRIER_TOKEN}"
    far = sink_for(tmp_path, {"url": "http://10.9.8.7/barrier", "token_file": "barrier.token", "timeout": 0.5})
    try:
        with pytest.raises(BarrierUnreachable):  # nobody there: the barrier stays shut, the lane latches
            far.act(ALLOW, "in-1")
    finally:
        far._http.close()  # noqa: SLF001 - the connection attempt it leaves behind
    assert proxy.empty(), proxy.get_nowait()

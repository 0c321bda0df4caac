"""One hostile sender must not stop the adapter's sources for everyone (review 109).

Over HTTP (the adapter built from its settings, as in test_gate_source_auth): a Hikvision multipart built
to hold the parser for seconds is refused 400 before the parser sees it; a device that may not send a
vendor route's kind is refused before its body is read; a parse, however slow, runs off the event loop,
so another device's read and ``/healthz`` are answered meanwhile; a poison JSON number and a non-ASCII
``Basic`` credential are problems (400, 401), never a 500. Over MQTT, on the real Mosquitto (127.0.0.1:1883,
or ``QUAYGATE_TEST_MQTT``): a poison message ends nothing (the next lane's read arrives), an unexpected
error while handling one is logged and counted, and ``alive`` (``/livez``) tells a dead network thread or
a connection lost for longer than its grace.
"""

from __future__ import annotations

import email.parser
import json
import logging
import os
import pwd
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gate_adapters.adapter import Adapter, build
from gate_adapters.runtime import http_source
from gate_adapters.runtime import mqtt_source as mqtt_source_module
from gate_adapters.runtime.config import parse
from gate_adapters.runtime.mqtt_source import MqttSource, new_client

from .factories import TERMINAL
from .processes import free_port, listens, start, stop, unavailable
from .test_gate_lane_latch import OFFICER_TOKEN, _officer_doc, evict
from .test_gate_runtime import _mosquitto
from .test_gate_source_auth import BADGE, PLATE, _doc, _mqtt_doc, _problem, bearer, fed, serving, source

FIXTURES = Path(__file__).parent / "fixtures" / "gate"
XML = (FIXTURES / "hikvision_anpr.xml").read_bytes()
BOUNDARY = "----HikBoundary7MA4YWxkTrZu0gW"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def _part(headers: bytes, body: bytes) -> bytes:
    return b"--" + BOUNDARY.encode() + b"\r\n" + headers + b"\r\n\r\n" + body + b"\r\n"


CLOSE = b"--" + BOUNDARY.encode() + b"--\r\n"


def _nested(levels: int) -> bytes:
    inner = b"x"
    for i in range(levels, 0, -1):
        inner = (b"--n%d\r\nContent-Type: multipart/mixed; boundary=n%d\r\n\r\n" % (i, i + 1) + inner
                 + b"\r\n--n%d--\r\n" % i)
    return _part(b"Content-Type: multipart/mixed; boundary=n1", inner) + CLOSE


HOSTILE = {  # what review 109 posted: (body, content type)
    "40000-header-parameters": (_part(b'Content-Disposition: form-data; name="anpr.xml"; ' + b"a=b;" * 40_000
                                      + b"\r\nContent-Type: application/xml", XML) + CLOSE, MULTIPART),
    "150000-tiny-parts": (b"--b\r\n\r\nx\r\n" * 150_000 + b"--b--\r\n", "multipart/form-data; boundary=b"),
    "nested-1200-levels": (_nested(1200), MULTIPART),
    # Review 116, each within review 109's bounds yet seconds of the parser's CPU:
    "15-parts-of-2000-content-type-parameters": (b"".join(
        _part(b"Content-Type: image/jpeg;" + b"a=b;" * 2000, b"x") for _ in range(15))
        + _part(b'Content-Type: application/xml', XML) + CLOSE, MULTIPART),
    "4-mib-of-newlines": (_part(b"Content-Type: image/jpeg", b"\n" * (4 * 1024 * 1024 - 2048))
                          + _part(b'Content-Type: application/xml', XML) + CLOSE, MULTIPART),
}


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[Adapter]:
    built = build(parse(_doc(tmp_path), base=tmp_path))
    yield built
    built.outbox.close()


@pytest.fixture
def parsed_bodies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each text email.parser is given (the boundary's header is under 2 KiB; a body more)."""
    sizes: list[int] = []
    real = email.parser.BytesParser.parsebytes

    def spy(self: Any, text: bytes, headersonly: bool = False) -> Any:
        sizes.append(len(text))
        return real(self, text, headersonly)

    monkeypatch.setattr(email.parser.BytesParser, "parsebytes", spy)
    return sizes


# ---- HTTP ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_hikvision_multipart_is_a_400_and_never_reaches_the_parser(
        adapter: Adapter, parsed_bodies: list[int], name: str) -> None:
    body, content_type = HOSTILE[name]
    r = source(adapter).post("/hikvision/in-1", content=body,
                             headers={**bearer("anpr-in-1"), "Content-Type": content_type})
    refused = _problem(r, 400, "payload_refused")
    assert "refused before parsing" in refused["detail"], refused
    assert all(size < 2048 for size in parsed_bodies), parsed_bodies  # the body never went in
    assert fed(adapter) == []
    # The camera's own multipart still goes through.
    camera = source(adapter).post("/hikvision/in-1", content=_part(
        b'Content-Disposition: form-data; name="anpr.xml"; filename="anpr.xml"\r\nContent-Type: application/xml',
        XML) + CLOSE, headers={**bearer("anpr-in-1"), "Content-Type": MULTIPART})
    assert (camera.status_code, camera.json()) == (202, {"accepted": True}), camera.text


def test_a_device_is_refused_a_vendor_route_of_a_kind_it_may_not_send_before_its_body_is_read(
        adapter: Adapter, parsed_bodies: list[int]) -> None:
    """http_source.py rule 4: the badge reader (bound to in-1) posting to /hikvision, or the plate camera
    to /ocr, is a 403 on its token alone: we parse nothing a device could never send."""
    body, content_type = HOSTILE["40000-header-parameters"]
    client = source(adapter)
    r = client.post("/hikvision/in-1", content=body, headers={**bearer("reader"), "Content-Type": content_type})
    assert "plate" in _problem(r, 403, "read_forbidden")["detail"]
    r = client.post("/ocr/in-1", content=b"{" * 100_000, headers=bearer("anpr-in-1"))
    assert "container" in _problem(r, 403, "read_forbidden")["detail"]
    assert parsed_bodies == [] and fed(adapter) == []
    assert client.post("/reads/in-1", json=BADGE, headers=bearer("reader")).status_code == 202  # its own kind


def test_a_parse_that_takes_long_holds_up_only_its_own_request(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """http_source.py rule 6: the parser runs on a worker thread. A Hikvision parse held until the test
    lets it go (as a slow body would hold it) leaves the event loop free: another device's read is taken
    and ``/healthz`` answers meanwhile. On the event loop, both would wait for the parse (and time out)."""
    entered, release = threading.Event(), threading.Event()
    real, cap = http_source.PARSERS["hikvision"]

    def held(body: bytes, content_type: str | None, lane: str) -> Any:
        entered.set()
        release.wait(30)
        return real(body, content_type, lane)

    monkeypatch.setitem(http_source.PARSERS, "hikvision", (held, cap))
    held_adapter = build(parse(_doc(tmp_path), base=tmp_path))
    answers: list[httpx.Response] = []
    try:
        with serving(held_adapter) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            first = threading.Thread(target=lambda: answers.append(http.post(
                "/hikvision/in-1", content=XML, headers={**bearer("anpr-in-1"), "Content-Type": "application/xml"})))
            first.start()
            try:
                assert entered.wait(10)
                other = http.post("/reads/in-2", json=BADGE, headers=bearer("reader"))
                assert (other.status_code, other.json()) == (202, {"accepted": True}), other.text
                assert http.get("/healthz", headers=bearer("reader")).status_code == 200
                assert not answers  # the held parse is still held: the loop served the others around it
            finally:
                release.set()
                first.join(15)
        assert [r.status_code for r in answers] == [202], [r.text for r in answers]
        assert sorted((read.kind.value, read.lane) for read in fed(held_adapter)) == [("badge", "in-2"),
                                                                                      ("plate", "in-1")]
    finally:
        held_adapter.outbox.close()


def test_parses_held_in_every_thread_of_theirs_leave_the_officer_free_to_unlatch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """http_source.py rule 6 (review 116): a device keeping 40 slow parses going used to hold every thread of
    the default pool, and the officer's unlatch (SQLite, on that pool) waited behind them. The parsers have
    ``PARSE_THREADS`` of their own: with all of them held and 40 more parses waiting for them, the officer
    clears the lane's latch at once."""
    entered, release = threading.Semaphore(0), threading.Event()
    real, cap = http_source.PARSERS["hikvision"]

    def held(body: bytes, content_type: str | None, lane: str) -> Any:
        entered.release()
        release.wait(30)
        return real(body, content_type, lane)

    monkeypatch.setitem(http_source.PARSERS, "hikvision", (held, cap))
    adapter = build(parse(_officer_doc(tmp_path), base=tmp_path))
    answers: list[int] = []
    posts: list[threading.Thread] = []
    try:
        evict(adapter.worker.lanes[(TERMINAL, "in-1")])
        latch = adapter.outbox.held_latch("in-1")
        assert latch is not None
        with serving(adapter) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            def post() -> None:
                answers.append(http.post("/hikvision/in-1", content=XML, headers={
                    **bearer("anpr-in-1"), "Content-Type": "application/xml"}).status_code)

            posts = [threading.Thread(target=post) for _ in range(http_source.PARSE_THREADS + 40)]
            for thread in posts:
                thread.start()
            try:
                for _ in range(http_source.PARSE_THREADS):
                    assert entered.acquire(timeout=10)
                assert not entered.acquire(timeout=0.5)  # the other 40 wait for a parser's thread
                assert not answers
                r = http.post("/officer/latch/in-1/clear", json={"latch": latch.id},
                              headers={"Authorization": f"Bearer {OFFICER_TOKEN}"}, timeout=5)
                assert (r.status_code, r.json()["cleared_by"]) == (200, "duty-officer (http)"), r.text
                assert http.get("/healthz", headers=bearer("reader"), timeout=5).status_code == 200
            finally:
                release.set()
                for thread in posts:
                    thread.join(30)
        assert len(answers) == len(posts) and set(answers) <= {202, 503}, answers
    finally:
        adapter.outbox.close()


@pytest.mark.parametrize("digits", [5000, 400])
def test_a_number_of_thousands_of_digits_is_a_400_problem_not_a_500(adapter: Adapter, digits: int) -> None:
    poison = json.dumps(PLATE).replace('"confidence": 0.95', '"confidence": 1' + "0" * (digits - 1))
    assert poison != json.dumps(PLATE)
    r = source(adapter).post("/reads/in-1", content=poison, headers=bearer("anpr-in-1"))
    _problem(r, 400, "payload_refused")
    assert fed(adapter) == []


@pytest.mark.parametrize("authorization", [
    b"Basic \xc3\xa9t\xc3\xa9:\xff",  # UTF-8 and Latin-1 bytes: b64decode raised ValueError (a 500)
    ("Basic " + "é" * 8).encode("latin-1"),
])
def test_a_basic_credential_that_is_not_ascii_is_a_401_problem(adapter: Adapter, authorization: Any) -> None:
    client = source(adapter)
    for path in ("/reads/in-1", "/hikvision/in-1"):
        r = client.post(path, json=PLATE, headers={"Authorization": authorization})
        _problem(r, 401, "device_token_required")
    _problem(client.get("/healthz", headers={"Authorization": authorization}), 401, "device_token_required")


# ---- MQTT, on the real Mosquitto --------------------------------------------------------------------


def _mqtt_adapter(tmp_path: Path, host: str, port: int) -> Adapter:
    """The adapter as its settings build it, with an MQTT source on a topic tree of its own (dev: the
    local broker takes anyone); lanes in-1 and in-2, the worker not started (nothing takes the reads)."""
    prefix = f"qgr{uuid.uuid4().hex[:8]}"
    return build(parse(_mqtt_doc(tmp_path, dev=True, host=host, port=port, prefix=prefix,
                                 client_id=f"gate-{prefix}"), base=tmp_path))


def _until(what: str, done: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


class _Camera:
    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.prefix, self.client = prefix, new_client()
        self.client.connect(host, port)
        self.client.loop_start()

    def send(self, lane: str, kind: str, payload: bytes | str) -> None:
        self.client.publish(f"{self.prefix}/{TERMINAL}/{lane}/{kind}", payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_adapter(tmp_path: Path) -> Iterator[tuple[Adapter, _Camera]]:
    host, port = _mosquitto()
    adapter = _mqtt_adapter(tmp_path, host, port)
    camera = _Camera(host, port, adapter.settings.mqtt.prefix)  # type: ignore[union-attr]
    try:
        yield adapter, camera
    finally:
        camera.close()
        adapter.mqtt.stop()
        adapter.worker.stop(timeout=5)
        adapter.outbox.close()


def _badge_arrives_on_in_2(adapter: Adapter, camera: _Camera) -> None:
    camera.send("in-2", "badge", json.dumps(BADGE))
    _until("the in-2 read never arrived: the network thread is gone",
           lambda: adapter.worker.queued(TERMINAL, "in-2") == 1)


def test_a_poison_number_over_mqtt_is_refused_and_the_next_lanes_read_still_arrives(
        mqtt_adapter: tuple[Adapter, _Camera]) -> None:
    """Review 109: a 5000-digit number made json.loads raise a plain ValueError, which ended paho's network
    thread (every lane's reads, the MQTT barrier commands) while /livez said ok. Now it is a refusal like
    any bad JSON: not even a failure of ours."""
    adapter, camera = mqtt_adapter
    adapter.mqtt.start()
    assert adapter.mqtt.subscribed.wait(10)
    for digits in (5000, 400):
        camera.send("in-1", "plate", json.dumps(PLATE).replace('"confidence": 0.95',
                                                               '"confidence": 1' + "0" * (digits - 1)))
    _badge_arrives_on_in_2(adapter, camera)
    assert [(read.kind.value, read.lane) for read in fed(adapter)] == [("badge", "in-2")]
    assert adapter.mqtt.failed == 0 and adapter.mqtt.alive()


def test_an_unexpected_error_handling_a_message_is_logged_counted_and_ends_nothing(
        mqtt_adapter: tuple[Adapter, _Camera], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """mqtt_source.py rule 8: a parser bug (here, one injected for in-1's topics) is a logged, counted
    failure of that message; the thread goes on and the next lane's read arrives."""
    adapter, camera = mqtt_adapter
    real = mqtt_source_module.mqtt_format.parse

    def buggy(topic: str, payload: bytes, *, prefix: str = "quaygate") -> Any:
        if "/in-1/" in topic:
            raise RuntimeError("a bug of ours")
        return real(topic, payload, prefix=prefix)

    monkeypatch.setattr(mqtt_source_module.mqtt_format, "parse", buggy)
    caplog.set_level(logging.ERROR, logger="gate_adapters.source.mqtt")
    adapter.mqtt.start()
    assert adapter.mqtt.subscribed.wait(10)
    camera.send("in-1", "plate", json.dumps(PLATE))
    _badge_arrives_on_in_2(adapter, camera)
    assert adapter.mqtt.failed == 1 and adapter.mqtt.alive()
    assert adapter.mqtt.broker()["failed"] == 1  # /healthz's mqtt.failed: a monitor sees it grow
    [line] = [r for r in caplog.records if r.getMessage().startswith("gate.source.mqtt.failed")]
    assert line.exc_info is not None and "a bug of ours" in str(line.exc_info[1])


@pytest.mark.parametrize("suppress", [
    pytest.param(True, id="as-built"),
    pytest.param(False, id="paho-raising"),  # the thread's end is what this case shows
])
def test_livez_tells_when_the_mqtt_network_thread_is_gone(mqtt_adapter: tuple[Adapter, _Camera],
                                                          monkeypatch: pytest.MonkeyPatch, suppress: bool) -> None:
    """mqtt_source.py rules 8 and 9. As built (``suppress_exceptions``), an error past ``handle``'s own net
    (injected: ``handle`` itself raising for in-1) is paho's to log, and its thread goes on. Were paho
    to raise it, the thread would end, and ``Adapter.alive`` (/livez) says so: it used to say ok."""
    adapter, camera = mqtt_adapter
    assert adapter.mqtt.client.suppress_exceptions is True
    adapter.mqtt.client.suppress_exceptions = suppress
    real = MqttSource.handle
    handled: list[Any] = []

    def raising(self: MqttSource, topic: str, payload: bytes) -> Any:
        if "/in-1/" in topic:
            raise RuntimeError("past the net")
        handled.append(real(self, topic, payload))
        return handled[-1]

    monkeypatch.setattr(MqttSource, "handle", raising)
    ended: list[BaseException | None] = []
    if not suppress:  # the thread's end is ours to see, not pytest's to report (later, on another test)
        monkeypatch.setattr(threading, "excepthook", lambda args: ended.append(args.exc_value))
    adapter.worker.start()
    adapter.mqtt.start()
    assert adapter.mqtt.subscribed.wait(10)
    assert adapter.alive()
    thread = adapter.mqtt.client._thread  # paho lets go of it (None) in a finally, before the excepthook runs
    camera.send("in-1", "plate", json.dumps(PLATE))
    if suppress:
        camera.send("in-2", "badge", json.dumps(BADGE))
        _until("the in-2 read never arrived: the network thread is gone", lambda: bool(handled))
        assert [(read.kind.value, read.lane) for read in handled] == [("badge", "in-2")]
        assert adapter.mqtt.alive() and adapter.alive()
    else:
        _until("the network thread did not end", lambda: not adapter.mqtt.alive())
        thread.join(10)  # its excepthook has run: nothing of it outlives the test
        assert not adapter.alive()
        assert [str(e) for e in ended] == ["past the net"]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[int, Callable[[], None], Callable[[], None]]]:
    """A plain Mosquitto of this test's own, that the test stops and starts again."""
    if shutil.which("mosquitto") is None:
        unavailable("the MQTT connection test", "no mosquitto binary")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"user {pwd.getpwuid(os.geteuid()).pw_name}\npersistence false\nallow_anonymous true\n"
                    f"listener {port} 127.0.0.1\n")
    procs: list[Any] = []

    def up() -> None:
        procs.append(start(["mosquitto", "-c", str(conf)], log=tmp_path / "mosquitto.log", ready=listens(port),
                           what="mosquitto"))

    def down() -> None:
        stop(procs.pop())

    up()
    try:
        yield port, up, down
    finally:
        while procs:
            down()


def test_a_broker_outage_leaves_livez_ok_and_shows_in_healthz(
        tmp_path: Path, own_broker: tuple[int, Callable[[], None], Callable[[], None]]) -> None:
    """mqtt_source.py rule 9 (review 116): a broker lost for longer than ``connection_grace`` used to make
    /livez fail, and an orchestrator restarted the adapter (its HTTP lanes, the officer's routes) in a loop
    while the broker was down. Liveness is paho's thread only; /healthz says ``reconnecting`` within the
    grace (``[mqtt] connection_grace_seconds``, here 30) and ``down`` past it, ``up`` once paho is back. The
    clock is the test's."""
    port, up, down = own_broker
    doc = _mqtt_doc(tmp_path, dev=True, host="127.0.0.1", port=port, prefix=f"qgr{uuid.uuid4().hex[:8]}",
                    connection_grace_seconds=30)
    doc["http"] = _doc(tmp_path)["http"]
    adapter = build(parse(doc, base=tmp_path))
    now = [1000.0]
    mqtt = adapter.mqtt
    mqtt._clock = lambda: now[0]  # noqa: SLF001 - the test's clock
    adapter.http_server.started = True  # type: ignore[union-attr] - as if serving: /livez asks the rest
    client = source(adapter)

    def broker() -> Any:
        r = client.get("/healthz", headers=bearer("reader"))
        assert r.status_code == 200, r.text
        return r.json()["mqtt"]["status"]

    try:
        adapter.worker.start()
        mqtt.start()
        assert mqtt.subscribed.wait(10) and adapter.alive() and broker() == "up"
        now[0] += 3600  # connected: time alone changes nothing
        assert broker() == "up"
        down()
        _until("the client never saw the broker go", lambda: not mqtt.client.is_connected())
        now[0] += 29
        assert broker() == "reconnecting" and adapter.alive()  # within the grace: a restart
        now[0] += 2
        assert broker() == "down"  # lost for longer: /healthz says so
        assert adapter.alive() and client.get("/livez").json() == {"status": "ok"}  # and /livez does not
        assert not mqtt.subscribed.is_set()
        up()
        _until("paho never reconnected and subscribed again", mqtt.subscribed.is_set, timeout=30)
        assert broker() == "up" and adapter.alive()
    finally:
        mqtt.stop()
        adapter.worker.stop(timeout=5)
        adapter.outbox.close()

"""Review 147, finding 3: the periodic pull of the ban feed is bounded, against a real local HTTP server.

The pull read the whole answer into memory and only then refused one past ``MAX_FEED_BYTES`` (an
endless answer: every replica's API process out of memory), and its 30 s timeout was per read (an
answer dripped a byte every few seconds stalled the puller for good: no new bans, screening going
``unavailable``). Now it reads as a stream and stops past ``MAX_FEED_BYTES`` (refused, audited, nothing
loaded), and one deadline bounds the whole pull, headers and body (``identity.bans.pull``). Production
refuses a plain ``http://`` feed URL.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from identity.bans import pull
from identity.bans.feed import MAX_FEED_BYTES
from identity.bans.loader import current_state
from identity.bans.pull import BanFeedPuller
from quaygate.schema import audit_log
from quaygate.settings import Settings
from tests.ban_register import Register, ban, national_number, snapshot
from tests.factories import now
from tests.test_port_bans import DAY, PEPPER, _refs
from tests.test_settings_production import production

MiB = 1024 * 1024


class Server:
    """A local HTTP server on a socket of its own, one thread per connection: ``answer(server, conn)``
    writes the raw response; ``sent`` counts the bytes it got out before the client went away."""

    def __init__(self, answer: Callable[[Server, socket.socket], None]) -> None:
        self.answer = answer
        self.sent = 0
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/feed"
        self.handlers: list[threading.Thread] = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            handler = threading.Thread(target=self._one, args=(conn,), daemon=True)
            self.handlers.append(handler)
            handler.start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(65536)
                if not data:
                    return
                request += data
            self.requests.append(request)
            try:
                self.answer(self, conn)
            except OSError:  # the client went away
                pass

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.sent += len(data)

    def finish(self) -> None:
        """Wait for the connections' handlers to end (the client gone), then stop listening."""
        for handler in self.handlers:
            handler.join(30)
        self.closed.set()
        self.listener.close()


def _puller(engine: sa.Engine, register: Register, url: str) -> BanFeedPuller:
    return BanFeedPuller(engine, url=url, key=register.public_key, pepper=PEPPER, max_feed_age=DAY, clock=now)


def _refusals(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.data).where(
            audit_log.c.kind == "screening.ban.feed_refused")).scalars())


def test_a_feed_served_over_a_real_socket_still_loads(engine: sa.Engine) -> None:
    register = Register()
    t = now()
    raw = register.sign(snapshot(1, t, [ban(national_number(1), "R-1", start=t)]))

    def answer(server: Server, conn: socket.socket) -> None:
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/jose\r\nConnection: close\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(raw) + raw)

    server = Server(answer)
    try:
        assert _puller(engine, register, server.url).run_once() == 1
    finally:
        server.finish()
    assert _refs(engine) == ["R-1"]
    assert b"accept-encoding: identity" in server.requests[0].lower()  # the length read is the length held


@pytest.mark.parametrize("declared", [False, True], ids=["streamed", "declared"])
def test_an_endless_answer_is_refused_past_the_cap_without_being_read(engine: sa.Engine, declared: bool,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """200 MiB offered, streamed (no length) or declared (Content-Length): the pull stops once past
    MAX_FEED_BYTES (declared: before reading any of it), refuses it, audited, nothing loaded. Before,
    it read all 209 715 200 bytes into memory and only then refused it."""
    register = Register()
    total = 200 * MiB
    chunk = b"x" * MiB

    def answer(server: Server, conn: socket.socket) -> None:
        length = b"Content-Length: %d\r\n" % total if declared else b""
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/jose\r\nConnection: close\r\n"
                          + length + b"\r\n")
        for _ in range(total // MiB):
            server.send(conn, chunk)

    server = Server(answer)
    try:
        assert _puller(engine, register, server.url).run_once() == 0
    finally:
        server.finish()
    # Past the cap the client stops and hangs up; what the sockets' buffers took on top is a few MiB.
    assert server.sent < MAX_FEED_BYTES + 32 * MiB
    if declared:
        assert server.sent < 64 * MiB
    assert current_state(engine) is None and _refs(engine) == []
    assert _refusals(engine) == [{"reason": "malformed", "source": "pull"}]
    assert "screening.ban.pull.too_large" in caplog.messages


def test_an_encoded_answer_is_refused(engine: sa.Engine, caplog: pytest.LogCaptureFixture) -> None:
    """Asked for ``identity``, a register answering gzip anyway is refused: its length on the wire is not
    the length it would take in memory (a small answer can inflate a thousandfold)."""
    register = Register()
    body = gzip.compress(b"0" * (8 * MiB))

    def answer(server: Server, conn: socket.socket) -> None:
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body)

    server = Server(answer)
    try:
        assert _puller(engine, register, server.url).run_once() == 0
    finally:
        server.finish()
    assert current_state(engine) is None
    assert "screening.ban.pull.encoded" in caplog.messages


@pytest.mark.parametrize("part", ["body", "headers"])
def test_a_dripped_answer_is_given_up_at_the_deadline(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture, part: str) -> None:
    """A byte every 0.3 s, far inside the per-read timeout: the pull gives up at its deadline (1 s here),
    headers or body. Before, it read on for as long as the server dripped (12 s here, for ever in the
    wild)."""
    monkeypatch.setattr(pull, "PULL_SECONDS", 1.0, raising=False)
    register = Register()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/jose\r\nConnection: close\r\n\r\n"

    def answer(server: Server, conn: socket.socket) -> None:
        if part == "body":
            server.send(conn, head)
        drip = head if part == "headers" else b"x" * 1000
        until = time.monotonic() + 12
        for byte in drip:
            if time.monotonic() > until:
                return
            server.send(conn, bytes([byte]))
            time.sleep(0.3)

    server = Server(answer)
    started = time.monotonic()
    try:
        assert _puller(engine, register, server.url).run_once() == 0
        took = time.monotonic() - started
    finally:
        server.finish()
    assert took < 8  # it stopped (at about its 1 s deadline), not when the server stopped dripping
    assert "screening.ban.pull.deadline" in caplog.messages
    assert current_state(engine) is None and _refusals(engine) == []


# ---- settings ------------------------------------------------------------------------------------------

@pytest.fixture
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what each test gives counts (as tests.test_settings_production)."""
    for name in ("MODE", "DATA_KEY", "PEPPER", "DATABASE_URL", "VAR_DIR", "ISSUER", "BAN_REGISTER_JWK",
                 "BAN_REGISTER_JWK_PATH", "BAN_SCREENING", "AUDIT_WITNESS", "REDIS_URL", "BAN_FEED_URL"):
        monkeypatch.delenv(f"QUAYGATE_{name}", raising=False)


def test_production_refuses_a_plain_http_feed_url(tmp_path: Path, no_environment: None) -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(**production(tmp_path, ban_feed_url="http://register.example/feed"))
    text = str(exc.value)
    assert "an https port-ban feed URL (QUAYGATE_BAN_FEED_URL)" in text
    assert "register.example" not in text  # the value is never echoed
    assert Settings(**production(tmp_path, ban_feed_url="https://register.example/feed")).ban_feed_url


def test_dev_mode_may_pull_from_a_local_http_register(tmp_path: Path, no_environment: None) -> None:
    assert Settings(var_dir=tmp_path, ban_feed_url="http://127.0.0.1:9000/feed").ban_feed_url

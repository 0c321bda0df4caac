"""A connection's request head has a deadline at the server (review 168, finding 1), against
``quaygate serve`` in a child process.

uvicorn has no header timeout: its keep-alive timer starts only after a response and stops at the first
byte that comes, so a connection that sent nothing, or a head a byte at a time, was never closed, and
enough of them held every file descriptor the server had. ``quaygate serve`` serves HTTP with
quaygate.serving's protocol: a connection that has not sent a whole request head within
QUAYGATE_HEADER_SECONDS of opening, or of its last response, is closed. Here the setting is 1 s and a
connection is given 10 s to be closed, so a slow machine does not make the test flaky.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quaygate.migrate import upgrade
from quaygate.settings import Settings

from .processes import answers, free_port, start, stop

GENEROUS = 10.0  # seconds a connection is given to be closed, with a 1 s deadline
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
SLOW_HEAD = b"POST /gate/v1/verify HTTP/1.1\r\nHost: x\r\nX-a: "


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_database_url: str) -> Iterator[int]:
    var = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("QUAYGATE_REDIS_URL", "QUAYGATE_HEADER_SECONDS")}
    env.update({"QUAYGATE_DATABASE_URL": sqlite_database_url, "QUAYGATE_VAR_DIR": str(var),
                "QUAYGATE_BACKGROUND_WORKERS": "false", "QUAYGATE_LOG_LEVEL": "WARNING",
                "QUAYGATE_HEADER_SECONDS": "1"})
    proc = start([sys.executable, "-m", "quaygate.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                 log=var / "serve.log", env=env, what="quaygate serve",
                 ready=answers(f"http://127.0.0.1:{port}/healthz"))
    try:
        yield port
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def by_hand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """uvicorn run by hand with the protocol named (README): it reads QUAYGATE_HEADER_SECONDS itself. A
    database of its own: one process at a time serves a SQLite database (the serving lease)."""
    var = tmp_path_factory.mktemp("uvicorn")
    sqlite_database_url = f"sqlite:///{var / 'quaygate.db'}"
    upgrade(sqlite_database_url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("QUAYGATE_REDIS_URL", "QUAYGATE_HEADER_SECONDS")}
    env.update({"QUAYGATE_DATABASE_URL": sqlite_database_url, "QUAYGATE_VAR_DIR": str(var),
                "QUAYGATE_BACKGROUND_WORKERS": "false", "QUAYGATE_LOG_LEVEL": "WARNING",
                "QUAYGATE_HEADER_SECONDS": "1"})
    proc = start([sys.executable, "-m", "uvicorn", "--factory", "quaygate.app:app_from_env", "--host", "127.0.0.1",
                  "--port", str(port), "--http", "quaygate.serving:HeadDeadlineProtocol", "--no-access-log"],
                 log=var / "uvicorn.log", env=env, what="uvicorn", ready=answers(f"http://127.0.0.1:{port}/healthz"))
    try:
        yield port
    finally:
        stop(proc)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=GENEROUS)


def _closed_within(conn: socket.socket, seconds: float, *, dribble: bytes = b"") -> float | None:
    """How long until the server closed ``conn`` (None: still open after ``seconds``), sending it a byte
    of ``dribble`` every half second meanwhile."""
    began = time.monotonic()
    left = bytearray(dribble)
    while time.monotonic() - began < seconds:
        if left:
            try:
                conn.sendall(bytes(left[:1]))
            except OSError:  # reset or broken pipe: closed
                return time.monotonic() - began
            del left[:1]
        readable, _, _ = select.select([conn], [], [], 0.5)
        if readable:
            try:
                if conn.recv(65536) == b"":
                    return time.monotonic() - began
            except OSError:
                return time.monotonic() - began
    return None


def _response(conn: socket.socket) -> bytes:
    """One whole response to REQUEST (its body is a small JSON object with a Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_silent_connection_is_closed(server: int) -> None:
    with _connect(server) as conn:
        closed = _closed_within(conn, GENEROUS)
        assert closed is not None  # before: still open after 35 s
        assert closed >= 0.5  # not before its deadline (1 s)


def test_uvicorn_run_by_hand_with_the_protocol_keeps_the_setting(by_hand: int) -> None:
    with _connect(by_hand) as conn:  # silent: before any request, uvicorn's own keep-alive timer is not armed
        # 1 s, read from QUAYGATE_HEADER_SECONDS: closed well before the 10 s default would close it.
        assert _closed_within(conn, GENEROUS / 2) is not None


def test_a_head_sent_a_byte_at_a_time_is_closed(server: int) -> None:
    with _connect(server) as conn:
        conn.sendall(SLOW_HEAD)
        assert _closed_within(conn, GENEROUS, dribble=b"a" * 100) is not None  # before: open for ever


def test_a_slow_head_after_a_keep_alive_response_is_closed(server: int) -> None:
    """Between requests too: uvicorn's keep-alive timer stops at the first byte of the next head."""
    with _connect(server) as conn:
        conn.sendall(REQUEST)
        assert _response(conn).startswith(b"HTTP/1.1 200 ")
        conn.sendall(SLOW_HEAD)
        assert _closed_within(conn, GENEROUS, dribble=b"a" * 100) is not None


def test_a_request_and_a_keep_alive_second_request_are_answered(server: int) -> None:
    with _connect(server) as conn:
        conn.sendall(REQUEST)
        assert _response(conn).startswith(b"HTTP/1.1 200 ")
        conn.sendall(REQUEST)  # the same connection, kept alive
        assert _response(conn).startswith(b"HTTP/1.1 200 ")
        # A head sent in pieces within the deadline is a head like any other.
        conn.sendall(REQUEST[:10])
        time.sleep(0.2)
        conn.sendall(REQUEST[10:])
        assert _response(conn).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "301", "ten"])
def test_the_setting_is_bounded(value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUAYGATE_HEADER_SECONDS", value)
    with pytest.raises(ValueError, match="QUAYGATE_HEADER_SECONDS"):
        Settings(var_dir=tmp_path)


def test_the_setting_defaults_to_ten_seconds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QUAYGATE_HEADER_SECONDS", raising=False)
    assert Settings(var_dir=tmp_path).header_seconds == 10
    monkeypatch.setenv("QUAYGATE_HEADER_SECONDS", "2.5")
    assert Settings(var_dir=tmp_path).header_seconds == 2.5

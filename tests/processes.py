"""What the tests that run real programs share: a free port, a child process started and waited on
until it answers (or its log's tail when it does not), its stop, and the rule for a missing tool.

The rule (DEVELOPERS.md): a test that cannot run for lack of a service or tool skips with the reason
on a newcomer's machine, and fails under CI (CI=true), where nothing may be missing.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str, reason: str) -> NoReturn:
    """``what`` cannot run: skip, or fail under CI."""
    if IN_CI:
        pytest.fail(f"{what} cannot run under CI: {reason}")
    pytest.skip(f"{what} skipped: {reason}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str) -> Callable[[], bool]:
    """Ready once ``url`` (plain http) answers 200. Asked with the standard library: an httpx client
    made for each of the hundreds of polls loads the CA bundle each time (some 20 ms of CPU)."""
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 (a local http URL)
                return bool(answer.status == 200)
        except (OSError, http.client.HTTPException):  # refused, reset, timed out, an error status
            return False
    return ready


def listens(port: int) -> Callable[[], bool]:
    """Ready once something accepts connections on ``port``."""
    def ready() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return True
        except OSError:
            return False
    return ready


def start(argv: list[str], *, log: Path, ready: Callable[[], bool], what: str, cwd: Path = ROOT,
          env: dict[str, str] | None = None, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """Start ``argv`` (its output appended to ``log``) and wait until ``ready()``; RuntimeError with the
    log's tail when it exits first or does not come up in time."""
    with log.open("ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{log.read_text()[-3000:]}")
        if ready():
            return proc
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve_app(port: int, env: dict[str, str], log: Path, *uvicorn_args: str,
              factory: str = "quaygate.app:app_from_env") -> subprocess.Popen[bytes]:
    """The quaygate app under uvicorn in a child process (as ``quaygate serve`` runs it), once /healthz
    answers. ``factory``: another app factory (tests/served_long_ago.py)."""
    return start([sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1",
                  "--port", str(port), *uvicorn_args], log=log, env=env, what="the server",
                 ready=answers(f"http://127.0.0.1:{port}/healthz"))

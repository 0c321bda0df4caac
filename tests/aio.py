"""Coroutines run to their end from a test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio


def run_async(fn: Any, *args: Any) -> Any:
    """``anyio.run(fn, *args)`` in a thread of its own: a suite run may leave an event loop running in
    the main thread (Playwright's sync API does), where a second one cannot start."""
    with ThreadPoolExecutor(1) as one:
        return one.submit(anyio.run, fn, *args).result()


CHUNK = 65_536  # the size of the body messages ``post_counting_body`` hands the app


def chunks_of(body: bytes) -> list[bytes]:
    return [body[i:i + CHUNK] for i in range(0, len(body), CHUNK)]


def post_counting_body(app: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]], *,
                       host: str = "127.0.0.1", port: int = 8000, scheme: str = "http",
                       before: Callable[[int], Awaitable[None]] | None = None, method: str = "POST"
                       ) -> tuple[int, int, dict[str, str], Any]:
    """POST ``body`` (JSON content type) to ``path`` straight through ASGI, in ``chunks_of`` it: the
    status, how many of the body's messages the app read, the answer's headers and its JSON. What the
    tests of "refused before any of the body is read" count (quaygate/routing.py AdmitFirst).
    ``before``: awaited with k before the app is given the body's message k, a slow client's pace (a
    stall; a token revoked while the body comes); a message whose wait the app cut short is not counted."""
    import json

    received: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []
    chunks = chunks_of(body)

    async def receive() -> dict[str, Any]:
        k = len(received)
        if before is not None:
            await before(k)
        message = {"type": "http.request", "body": chunks[k], "more_body": k + 1 < len(chunks)}
        received.append(message)
        return message

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    host_header = host if port in (80, 443) else f"{host}:{port}"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": scheme,
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"host", host_header.encode()), *headers],
             "server": (host, port), "client": ("test", 1), "state": {}}
    run_async(app, scope, receive, send)  # in a thread of its own: the suite may leave a loop running here
    answer_headers = {k.decode(): v.decode() for k, v in sent[0].get("headers", ())}
    return sent[0]["status"], len(received), answer_headers, json.loads(b"".join(m.get("body", b"") for m in sent[1:]))

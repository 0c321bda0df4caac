"""The HTTP protocol ``quaygate serve`` runs uvicorn with: uvicorn's httptools protocol with a deadline
for each request's head (review 168, finding 1).

uvicorn (0.54) has no header timeout. Its keep-alive timer is armed only once a response is complete,
and stopped by the first byte that comes next (``data_received``): a connection that sends nothing
after it opens, or sends a head a byte every few seconds, before its first request or between two, is
never closed, and enough of them hold every file descriptor the server may open (a real ``quaygate
serve`` under ``ulimit -n 100``: 81 such connections open after 40 s, /healthz refused meanwhile).

Here a connection has QUAYGATE_HEADER_SECONDS (``Settings.header_seconds``) to send a whole request
head, counted from when it opens and from the end of each response; past it the server closes it,
without an answer (RFC 9112 §9.5 lets a server close an idle connection at any time). The deadline
stops once a head is complete (``on_headers_complete``): the body then has the routes' own deadline
(QUAYGATE_BODY_SECONDS, quaygate/routing.py), and the app its time to answer.

``quaygate serve`` hands uvicorn this class with the setting bound (``functools.partial``, which its
workers' spawn carries); uvicorn builds one per connection. Named by hand (``uvicorn --http
quaygate.serving:HeadDeadlineProtocol``), it reads QUAYGATE_HEADER_SECONDS itself, once per process, with
the settings' own check. A reverse proxy's own timeouts
(nginx's client_header_timeout and client_body_timeout) are still recommended in front (README).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from .settings import DEFAULT_HEADER_SECONDS, MAX_HEADER_SECONDS, seconds_setting

log = logging.getLogger("quaygate")


@functools.cache
def _from_environment() -> float:
    """QUAYGATE_HEADER_SECONDS for a protocol named by hand, read and checked once per process."""
    return seconds_setting(os.environ.get("QUAYGATE_HEADER_SECONDS", DEFAULT_HEADER_SECONDS),
                           "QUAYGATE_HEADER_SECONDS", MAX_HEADER_SECONDS)


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request head has not all come within
    ``head_seconds`` of its opening or of its last response."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, object],
                 _loop: asyncio.AbstractEventLoop | None = None, *,
                 head_seconds: float | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.head_seconds = head_seconds if head_seconds is not None else _from_environment()
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # A request already waiting (pipelined) has its head in: uvicorn starts it, and nothing is awaited.
        awaiting = not self.pipeline
        super().on_response_complete()
        if awaiting and not self.transport.is_closing():
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.head_seconds, self._head_late)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.info("quaygate.serve.connection.closed.head_timeout")
            self.transport.close()

"""The rate limits' middleware and a Redis that stops answering (review 168, finding 2).

The middleware counts every OAuth request in Redis before the route runs. It did so with a blocking call
on the event loop: a Redis that accepted the command and never answered froze the whole worker for the
cache's timeout (2 s) per request, health checks and gate checks included. Now it waits on the loop's
pipelined connection: the request that counts waits, the others are served.

The Redis here is the real one behind a TCP relay of our own that can stop passing bytes on (a Redis
stuck in a long script, a network that drops packets without a reset).
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa

from quaygate.cache import RedisCache

from .test_identity_ratelimit import serve

pytestmark = pytest.mark.redis


class Relay:
    """A TCP relay to ``target``; ``hold()`` stops passing the client's bytes on (they are kept, unsent)
    and ``held`` is set once some arrived meanwhile."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._holding = threading.Event()
        self.held = threading.Event()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self._holding.set()

    def release(self) -> None:
        self._holding.clear()

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for s in self._socks:
            s.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        pending = b""
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, upstream], [], [], 0.05)
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        return
                    pending += data
                if upstream in ready:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    client.sendall(data)
                if pending and self._holding.is_set():
                    self.held.set()
                elif pending:
                    upstream.sendall(pending)
                    pending = b""
        except OSError:
            return


@pytest.fixture
def relay(redis_url: str) -> Iterator[tuple[Relay, str]]:
    parts = urlsplit(redis_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 6379))
    try:
        yield relay, urlunsplit(parts._replace(netloc=f"127.0.0.1:{relay.port}"))
    finally:
        relay.close()


def test_a_redis_that_stops_answering_holds_the_counted_request_not_the_worker(
        engine: sa.Engine, tmp_path: Path, relay: tuple[Relay, str]) -> None:
    stuck, url = relay
    # The cache's timeout raised from 2 s to 10 s, so that nothing here times out on a loaded machine: the
    # count is released by hand once the health check has been answered.
    cache = RedisCache(f"{url}?socket_timeout=10")
    try:
        for served in serve(engine, tmp_path, cache, rate_limit_per_address=100, raise_server_exceptions=False):
            form = {"grant_type": "client_credentials"}
            assert served.http.post("/oauth2/token", data=form, auth=("nobody", "x")).status_code == 401
            stuck.hold()
            answered: list[int] = []
            counted = threading.Thread(target=lambda: answered.append(
                served.http.post("/oauth2/token", data=form, auth=("nobody", "x")).status_code))
            counted.start()
            assert stuck.held.wait(10), "the token request's count never reached Redis"
            # The token request's count waits for Redis. The worker serves others meanwhile: before, the
            # count held the event loop, this health check waited until the count timed out, and the token
            # request was answered 503 before Redis was let answer below.
            assert served.http.get("/healthz").status_code == 200
            stuck.release()
            counted.join(30)
            assert answered == [401], "the count timed out before the health check was answered"
    finally:
        cache.close()

"""The periodic pull of the register's feed (``QUAYGATE_BAN_FEED_URL``; off when unset).

Each step asks the register for what follows the sequence in force: ``GET <url>?after=<sequence>``
(``after=0`` with no list yet). The register answers with the signed next change set, a fresh
snapshot, or 204 when there is nothing newer. The answer goes through the same atomic loader as the
CLI, so a replica racing another one applies a feed once and sees the other's load as already in
force (or a replay) on its next step. ``run_once`` is the one step (tests call it); ``start`` runs it
every ``interval`` seconds on a daemon thread, at once again after a step that applied something.

Bounded, whoever answers (review 147, finding 3: the register's endpoint or the network path):

- in size: the answer is read as a stream and dropped once past ``MAX_FEED_BYTES`` (refused before any
  of it is read when its Content-Length says so), audited as a refused feed (``malformed``), nothing
  loaded. Before, the whole answer was held in memory and measured after: an endless one took every
  replica's API process down. It is asked for unencoded (``Accept-Encoding: identity``) and an encoded
  one is refused: what a gzip or brotli answer inflates to is not what its bytes on the wire say.
- in time: one deadline for the whole pull (``PULL_SECONDS``, the upload route's 120 s for the same
  64 MiB), headers and body. httpx's timeout is per read, so an answer dripped a byte at a time kept
  the puller reading for ever (no new bans, screening going ``unavailable``). At the deadline a
  watchdog shuts the connection's socket down, which ends a read blocked on it; what was read is
  dropped. The connect has its own timeout (httpx's); the name lookup has only the resolver's.

Production refuses a plain ``http://`` feed URL (quaygate.settings ``production_refusals``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from identity import audit
from identity.domain.bans import FeedRefusal, FeedRefused

from .alerts import ACTOR
from .feed import MAX_FEED_BYTES, RegisterKey, register_key
from .loader import current_state, load_feed

log = logging.getLogger(__name__)

# The whole pull's deadline, seconds: the upload route's for the same largest body (identity.api.bans
# ``FEED_BODY_SECONDS``: 64 MiB at about 4.5 Mbit/s). Read when a puller is made.
PULL_SECONDS = 120.0


class _Unfit(Exception):
    """The answer is not taken: ``event`` is its log event; ``refused`` whether it is audited as a
    refused feed (too large, encoded) rather than a failed pull (the deadline)."""

    def __init__(self, event: str, *, refused: bool) -> None:
        super().__init__(event)
        self.event, self.refused = event, refused


class _Watchdog:
    """Shuts down the socket of the pull's connection once ``seconds`` have passed, which ends a read
    blocked on it (a close from another thread would not). The socket is duplicated when it connects
    (httpcore's ``trace`` extension), so the descriptor shut down is always this connection's, even
    once httpx has closed its own; the duplicate is closed at the end."""

    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._done = False
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True
            for sock in self._sockets:
                sock.close()

    @property
    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self._deadline

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        sock = info["return_value"].get_extra_info("socket")
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            self._sockets.append(sock.dup())
            if self.fired:  # connected after the deadline
                _shut(self._sockets[-1])

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed by the peer
        pass


class BanFeedPuller:
    def __init__(self, engine: sa.Engine, *, url: str, key: RegisterKey, pepper: bytes,
                 max_feed_age: timedelta, clock: Callable[[], datetime],
                 http_client_factory: Callable[[], httpx.Client] | None = None) -> None:
        self._engine = engine
        self._url = url
        self._key = key
        self._pepper = pepper
        self._max_feed_age = max_feed_age
        self._clock = clock
        self._client_factory = http_client_factory or (lambda: httpx.Client(timeout=30.0, follow_redirects=False))
        self._deadline = PULL_SECONDS
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One pull: 1 when a feed was applied, else 0 (nothing newer, already loaded, or refused)."""
        state = current_state(self._engine)
        after = state.sequence if state else 0
        try:
            raw = self._fetch(after)
        except httpx.HTTPError:
            log.warning("screening.ban.pull.unreachable")
            return 0
        except _Unfit as unfit:
            log.warning("screening.ban.pull.%s", unfit.event)
            if unfit.refused:  # as the loader audits a refused feed; the list in force stays
                audit.record("screening.ban.feed_refused", at=self._clock(), actor=ACTOR, engine=self._engine,
                             data={"reason": FeedRefusal.MALFORMED.value, "source": "pull"})
            return 0
        if raw is None:
            return 0
        try:
            result = load_feed(self._engine, raw, key=self._key, pepper=self._pepper,
                               now=self._clock(), max_feed_age=self._max_feed_age, source="pull")
        except FeedRefused:
            return 0  # audited and logged by the loader; the list in force stays
        return 1 if result.status == "applied" else 0

    def _fetch(self, after: int) -> bytes | None:
        """The body of a 200 answer, at most MAX_FEED_BYTES, within the deadline (module docstring); None
        for a 204 (nothing newer) or another status (logged). _Unfit past a bound; what was read of it
        is dropped."""
        with _Watchdog(self._deadline) as watchdog:
            try:
                return self._read(after, watchdog)
            except (httpx.HTTPError, OSError):
                if watchdog.expired:  # the watchdog's shutdown ended the read
                    raise _Unfit("deadline", refused=False) from None
                raise

    def _read(self, after: int, watchdog: _Watchdog) -> bytes | None:
        with self._client_factory() as client, client.stream(
                "GET", self._url, params={"after": after}, headers={"Accept-Encoding": "identity"},
                extensions={"trace": watchdog.trace}) as response:
            if response.status_code == 204:
                return None
            if response.status_code != 200:
                log.warning("screening.ban.pull.http_%s", response.status_code)
                return None
            if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
                raise _Unfit("encoded", refused=True)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_FEED_BYTES:
                raise _Unfit("too_large", refused=True)
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():  # as sent: an encoded answer was refused above
                size += len(chunk)
                if size > MAX_FEED_BYTES:
                    raise _Unfit("too_large", refused=True)
                if watchdog.expired:
                    raise _Unfit("deadline", refused=False)
                chunks.append(chunk)
        if watchdog.expired:  # a body that ends at the connection's close ended at the shutdown: cut short
            raise _Unfit("deadline", refused=False)
        return b"".join(chunks)

    def start(self, interval: float) -> None:
        def body() -> None:
            while not self._stop.is_set():
                try:
                    busy = self.run_once()
                except Exception:  # noqa: BLE001 - the loop must survive a passing fault and say so
                    log.exception("screening.ban.pull.failed")
                    busy = 0
                if not busy:
                    self._stop.wait(interval)

        self._thread = threading.Thread(target=body, name="ban-feed-puller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def start_from_settings(settings: Any, engine: sa.Engine, clock: Callable[[], datetime]) -> BanFeedPuller | None:
    """The puller the settings ask for, started; None when ``ban_feed_url`` is unset (the default)."""
    if not settings.ban_feed_url:
        return None
    puller = BanFeedPuller(
        engine, url=settings.ban_feed_url,
        key=register_key(settings.ban_register_jwk, settings.ban_register_jwk_path),
        pepper=settings.pepper_bytes(), max_feed_age=timedelta(seconds=settings.ban_feed_max_age), clock=clock)
    puller.start(settings.ban_feed_interval)
    log.info("screening.ban.pull.started")
    return puller

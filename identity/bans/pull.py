"""The periodic pull of the register's feed (``QUAYGATE_BAN_FEED_URL``; off when unset).

Each step asks the register for what follows the sequence in force: ``GET <url>?after=<sequence>``
(``after=0`` with no list yet). The register answers with the signed next change set, a fresh
snapshot, or 204 when there is nothing newer. The answer goes through the same atomic loader as the
CLI, so a replica racing another one applies a feed once and sees the other's load as already in
force (or a replay) on its next step. ``run_once`` is the one step (tests call it); ``start`` runs it
every ``interval`` seconds on a daemon thread, at once again after a step that applied something.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from identity.domain.bans import FeedRefused

from .feed import RegisterKey, register_key
from .loader import current_state, load_feed

log = logging.getLogger(__name__)


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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One pull: 1 when a feed was applied, else 0 (nothing newer, already loaded, or refused)."""
        state = current_state(self._engine)
        after = state.sequence if state else 0
        try:
            with self._client_factory() as client:
                response = client.get(self._url, params={"after": after})
        except httpx.HTTPError:
            log.warning("screening.ban.pull.unreachable")
            return 0
        if response.status_code == 204:
            return 0
        if response.status_code != 200:
            log.warning("screening.ban.pull.http_%s", response.status_code)
            return 0
        try:
            result = load_feed(self._engine, response.content, key=self._key, pepper=self._pepper,
                               now=self._clock(), max_feed_age=self._max_feed_age, source="pull")
        except FeedRefused:
            return 0  # audited and logged by the loader; the list in force stays
        return 1 if result.status == "applied" else 0

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

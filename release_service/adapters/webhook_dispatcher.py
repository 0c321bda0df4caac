"""Sends queued webhook deliveries: claim, send, record, with no transaction open across the HTTP call.

One round (``run_once``)::

    claim   (short transaction)  due pending rows of active subscriptions, the earliest one of each
                                 subscription only, FOR UPDATE SKIP LOCKED on PostgreSQL (SQLite's
                                 single writer serialises), and push their next_attempt_at to a lease:
                                 other replicas no longer see them as due; a row whose organisation
                                 port security has deactivated is withheld instead (a final status),
                                 never sent
    send    (no transaction)     sign per Standard Webhooks and POST, all at once up to ``workers``;
                                 redirects are not followed; each send has one deadline for the whole
                                 of it (below)
    record  (short transaction)  each delivery as soon as its own send ends: delivered on 2xx; 410 Gone
                                 disables the endpoint (its other queued deliveries cancelled:
                                 outbox.close_subscription); anything else schedules the next try from
                                 the backoff, or marks the delivery dead

The outcome is written only if the row still carries our lease (a fencing token): if a send outlived
the lease and another replica re-claimed the row, the late outcome is dropped, not written twice.
Delivery is at least once (a crash between send and record resends after the lease); receivers
de-duplicate on ``webhook-id``, as the spec tells them to.

A slow receiver (review 110): httpx's timeout bounds each network operation, not a request; a receiver
that trickles its status line and headers a byte every few seconds would hold a send, and with it the
round, for days (h11 takes some 100 KB of headers), and every company's deliveries with it. So a send has
one deadline for all of it (``send_timeout``: resolving the name, connecting, writing, the status line
and headers), enforced by cancelling it (``asyncio.wait_for``; httpcore closes a connection whose request
is cancelled); past it, the attempt failed ("timeout") and is retried on the backoff, as any timeout.
One send per subscription at most is in flight in a round (the claim takes each subscription's earliest
due delivery only): a slow receiver holds one slot of the pool, never all of them, and the lease, sized
for the deadline, is not outlived. Outcomes are written one by one as their sends end, so the others
of the round are recorded at once, not after the slowest.

Withheld: no new delivery is queued for a deactivated organisation (adapters/outbox.py, gate_move.py),
but one queued before the deactivation, or waiting for a retry, would still carry the release events
(container numbers, drivers, plates) to a company port security has cut off. The claim reads the
organisation's state in its own transaction and gives such a delivery the final status ``withheld``.
A reactivation does not send it: the organisation reads its events through the API, or sends the
delivery again itself (``redeliver``). A deactivation that lands after the claim, during the send,
does not stop that send (the claim's transaction is short, and holds no lock across the HTTP call).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import sqlalchemy as sa

from quaygate.crypto import DataCipher
from quaygate.schema import organisations, webhook_deliveries, webhook_subscriptions
from release_service.adapters.audit import SqlAuditLog
from release_service.adapters.outbox import close_subscription
from release_service.domain.webhooks import (
    LOCAL_HOSTS,
    SigningSecrets,
    encode_body,
    is_public_address,
    parse_retry_after,
    retry_delay,
    secret_aad,
    signed_headers,
    trail_url,
)
from release_service.ports import Clock

log = logging.getLogger("quaygate.webhooks")

_dels = webhook_deliveries
_subs = webhook_subscriptions
_orgs = organisations
# Seconds for the whole of one send (module docstring); each network read or write of it has READ_TIMEOUT.
SEND_TIMEOUT = 10.0
READ_TIMEOUT = 5.0
# What a subscriber reads (last_error, dead letters) when its URL's host is refused: one text whether the
# name did not resolve or resolved to an address that is not public, so that a subscriber cannot probe
# which names exist in the platform's internal DNS (review 110). The server log says which.
REFUSED_ERROR = "destination refused: not a public address"
WITHHELD_ERROR = "organisation deactivated"
USER_AGENT = "quaygate-webhooks/1"
# Who disables an endpoint that answered 410 Gone: the service itself (as in the release engine's events).
SYSTEM_ACTOR: dict[str, str | None] = {"client_id": "quaygate", "organisation_id": None, "kind": "system",
                                       "person_id": None}


def _resolve(host: str, port: int) -> list[str]:
    """Every address the name resolves to (the system resolver)."""
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def default_http_client() -> httpx.AsyncClient:
    """Short timeouts, no redirects: a 3xx is a failure and the integrator should fix the URL (spec). The
    whole send's deadline is the dispatcher's (``send_timeout``)."""
    return httpx.AsyncClient(timeout=READ_TIMEOUT, follow_redirects=False, headers={"user-agent": USER_AGENT})


@dataclass(frozen=True, slots=True)
class _Claimed:
    id: Any
    subscription_id: Any
    url: str
    secret_enc: str
    payload: dict[str, Any]
    attempts: int
    lease_until: datetime


@dataclass(frozen=True, slots=True)
class _Outcome:
    claimed: _Claimed
    status_code: int | None
    error: str | None
    retry_after: timedelta | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookDispatcher:
    def __init__(self, engine: sa.Engine, cipher: DataCipher, *,
                 http_client_factory: Callable[[], httpx.AsyncClient] = default_http_client, clock: Clock,
                 batch: int = 100, workers: int = 8, jitter: Callable[[], float] = random.random,
                 send_timeout: float = SEND_TIMEOUT, allow_local: bool = False,
                 resolve: Callable[[str, int], list[str]] | None = None) -> None:
        self._engine = engine
        self._allow_local = allow_local  # dev: http://localhost receivers (validate_url's allow_insecure_localhost)
        self._resolve = resolve or _resolve
        self._cipher = cipher
        self._client_factory = http_client_factory
        self._clock = clock
        self._batch = batch
        self._workers = max(1, workers)
        self._jitter = jitter
        if not send_timeout > 0:
            raise ValueError("send_timeout must be a positive number of seconds")
        self._send_timeout = send_timeout
        # The lease must outlast the slowest round: every send of the batch hitting its deadline, pool-wide.
        self._lease = timedelta(seconds=send_timeout * math.ceil(batch / self._workers) + 30)
        self._pg = engine.dialect.name == "postgresql"
        # Name lookups run here, not in asyncio's default pool: a lookup outliving its send's deadline
        # goes on in its thread, and asyncio.run waits for the default pool's threads, not for these.
        self._lookups = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="webhook-resolve")

    def run_once(self) -> int:
        """Claim, send and record one batch; returns how many deliveries it took from the queue:
        attempted, or withheld (their organisation deactivated)."""
        claimed, withheld = self._claim(self._clock.now())
        if claimed:
            asyncio.run(self._send_and_record(claimed))
        return len(claimed) + withheld

    async def _send_and_record(self, claimed: list[_Claimed]) -> None:
        """Every claimed delivery sent, at most ``workers`` at once, each recorded in its own transaction as
        soon as its send ends. A failure to record one does not stop the others; the first is raised after
        (the loop logs it), and that delivery is sent again after its lease (at least once)."""
        slots = asyncio.Semaphore(self._workers)

        async def one(client: httpx.AsyncClient, c: _Claimed) -> None:
            async with slots:
                outcome = await self._send(client, c)
            await asyncio.to_thread(self._record, outcome)

        async with self._client_factory() as client:
            results = await asyncio.gather(*(one(client, c) for c in claimed), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def run_forever(self, stop_event: threading.Event, interval: float) -> None:
        """The lifespan thread's loop: drain while there is work, else wait ``interval`` or until stopped."""
        while not stop_event.is_set():
            try:
                busy = self.run_once()
            except Exception:  # noqa: BLE001 - the loop must outlive a database or network blip, and say so
                log.exception("release.webhook.dispatch.failed")
                busy = 0
            if busy < self._batch:
                stop_event.wait(interval)

    # ---- claim ---------------------------------------------------------------------------------

    def _claim(self, now: datetime) -> tuple[list[_Claimed], int]:
        """The due deliveries to send, leased; and how many were withheld instead (module docstring)."""
        lease_until = now + self._lease
        due = sa.and_(_dels.c.status == "pending", _dels.c.next_attempt_at <= now)
        # One send per subscription at most in a round (module docstring): its earliest due delivery. On
        # PostgreSQL, one another replica is claiming right now is skipped, not replaced by the next.
        ranked = (sa.select(_dels.c.id, sa.func.row_number().over(
                      partition_by=_dels.c.subscription_id, order_by=(_dels.c.next_attempt_at, _dels.c.id)
                  ).label("n")).where(due).subquery())
        q = (
            sa.select(_dels.c.id, _dels.c.subscription_id, _dels.c.payload, _dels.c.attempts,
                      _subs.c.url, _subs.c.secret_enc, _orgs.c.active.label("organisation_active"))
            .join(_subs, _subs.c.id == _dels.c.subscription_id)
            .join(_orgs, _orgs.c.id == _subs.c.organisation_id)
            .where(due, _subs.c.active.is_(True), _dels.c.id.in_(sa.select(ranked.c.id).where(ranked.c.n == 1)))
            .order_by(_dels.c.next_attempt_at)
            .limit(self._batch)
        )
        if self._pg:
            # Replicas share the queue: each takes rows no one else holds, and never waits for them.
            q = q.with_for_update(of=_dels, skip_locked=True)
        with self._engine.begin() as conn:
            rows = conn.execute(q).all()
            if not rows:
                return [], 0
            send = [r for r in rows if r.organisation_active]
            withheld = [r for r in rows if not r.organisation_active]
            if send:
                conn.execute(_dels.update().where(_dels.c.id.in_([r.id for r in send]))
                             .values(next_attempt_at=lease_until))
            if withheld:
                # Locked with the rest (SKIP LOCKED): no other replica is sending these.
                conn.execute(_dels.update().where(_dels.c.id.in_([r.id for r in withheld]))
                             .values(status="withheld", last_error=WITHHELD_ERROR))
        for r in withheld:
            log.warning("release.webhook.withheld.organisation_inactive",
                        extra={"fields": {"delivery_id": str(r.id), "subscription_id": str(r.subscription_id),
                                          "attempts": r.attempts}})
        return [_Claimed(r.id, r.subscription_id, r.url, r.secret_enc, dict(r.payload), r.attempts,
                         lease_until) for r in send], len(withheld)

    # ---- send ----------------------------------------------------------------------------------

    async def _send(self, client: httpx.AsyncClient, c: _Claimed) -> _Outcome:
        """One attempt, within the deadline: cancelled past it (the connection closed), a failed attempt."""
        try:
            return await asyncio.wait_for(self._attempt(client, c), self._send_timeout)
        except TimeoutError:
            log.warning("release.webhook.send.deadline_exceeded",
                        extra={"fields": {"delivery_id": str(c.id), "subscription_id": str(c.subscription_id),
                                          "seconds": self._send_timeout}})
            return _Outcome(c, None, "timeout")

    async def _attempt(self, client: httpx.AsyncClient, c: _Claimed) -> _Outcome:
        try:
            sealed = self._cipher.open(c.secret_enc, secret_aad(c.subscription_id))
            secrets = SigningSecrets.from_bytes(sealed)
        except Exception:  # noqa: BLE001 - a secret that will not open is this delivery's failure, not the batch's
            return _Outcome(c, None, "secret unreadable")
        body = encode_body(c.payload)
        at = self._clock.now()  # the attempt's time, not the event's: a retry is signed afresh (spec)
        headers = signed_headers(secrets.active(at), msg_id=str(c.id), at=at, body=body)
        headers["content-type"] = "application/json"
        target = await asyncio.get_running_loop().run_in_executor(self._lookups, self._public_target,
                                                                   c.url, headers)
        if isinstance(target, str):
            return _Outcome(c, None, target)
        url, extensions = target
        try:
            # Streamed and closed unread: a receiver cannot make us buffer a large response body.
            async with client.stream("POST", url, content=body, headers=headers,
                                     extensions=extensions) as response:
                error = None if response.is_success else f"HTTP {response.status_code}"
                retry_after = parse_retry_after(response.headers.get("retry-after"))
                return _Outcome(c, response.status_code, error, retry_after)
        except httpx.TimeoutException:
            return _Outcome(c, None, "timeout")
        except httpx.HTTPError as exc:
            return _Outcome(c, None, type(exc).__name__)  # the class only: messages may echo internal hosts

    def _public_target(self, url: str, headers: dict[str, str]) -> tuple[str, dict[str, Any]] | str:
        """Where to send: the URL with its host resolved now, refused unless every address is public, and
        the connection pinned to the address checked (the name goes in Host and in TLS's SNI, and the
        certificate is checked against it), so a name cannot resolve to a public address for the check
        and to an internal one for the connection (DNS rebinding). An error string when refused."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if self._allow_local and host in LOCAL_HOSTS:
            return url, {}
        try:
            found = [ipaddress.ip_address(a.split("%", 1)[0]) for a in
                     self._resolve(host, parts.port or (443 if parts.scheme == "https" else 80))]
        except (OSError, ValueError):
            found = []
        if not found:
            log.warning("release.webhook.refused.unresolved")  # the reason here only: REFUSED_ERROR
            return REFUSED_ERROR
        if not all(is_public_address(a) for a in found):
            log.warning("release.webhook.refused.internal_address")
            return REFUSED_ERROR
        ip = found[0]
        netloc = f"[{ip}]" if ip.version == 6 else str(ip)
        if parts.port is not None:
            netloc += f":{parts.port}"
        headers["host"] = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), {"sni_hostname": host}

    # ---- record --------------------------------------------------------------------------------

    def _record(self, o: _Outcome) -> None:
        now = self._clock.now()
        with self._engine.begin() as conn:
            c = o.claimed
            attempts = c.attempts + 1
            values: dict[str, Any]
            if o.delivered:
                values = {"status": "delivered", "delivered_at": now, "last_error": None}
                event = "release.webhook.delivered"
            elif o.status_code == 410:
                # "410 Gone: the sender should disable the webhook endpoint" (spec, delivery failure).
                values = {"status": "dead", "last_error": "HTTP 410: endpoint disabled"}
                event = "release.webhook.endpoint_gone"
            else:
                delay = retry_delay(attempts, jitter=self._jitter(), retry_after=o.retry_after)
                if delay is None:
                    values = {"status": "dead", "last_error": o.error}
                    event = "release.webhook.dead"
                else:
                    values = {"next_attempt_at": now + delay, "last_error": o.error}
                    event = "release.webhook.retry_scheduled"
            fenced = conn.execute(
                _dels.update()
                .where(_dels.c.id == c.id, _dels.c.status == "pending",
                       _dels.c.next_attempt_at == c.lease_until)
                .values(attempts=attempts, **values)
            )
            if fenced.rowcount != 1:
                event = "release.webhook.lease_lost"
            elif o.status_code == 410:
                cancelled = close_subscription(conn, c.subscription_id)
                if cancelled is not None:  # a subscription closed is on the trail, whoever closed it
                    SqlAuditLog(conn).append(
                        "release.webhook.subscription.disabled", actor=SYSTEM_ACTOR,
                        subject=str(c.subscription_id),
                        data={**trail_url(c.url), "reason": "HTTP 410 Gone", "delivery_id": str(c.id),
                              "deliveries_cancelled": cancelled},
                        at=now)
            log.info(event, extra={"fields": {"delivery_id": str(c.id), "attempts": attempts,
                                              "status_code": o.status_code}})

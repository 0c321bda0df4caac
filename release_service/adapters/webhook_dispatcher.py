"""Sends queued webhook deliveries: claim, send, record, with no transaction open across the HTTP call.

Each delivery goes through::

    claim   (short transaction)  due pending rows of active subscriptions, FOR UPDATE SKIP LOCKED on
                                 PostgreSQL (SQLite's single writer serialises), and push their
                                 next_attempt_at to a lease: other replicas no longer see them as due; a
                                 row whose organisation port security has deactivated is withheld instead
                                 (a final status), never sent
    send    (no transaction)     sign per Standard Webhooks and POST; redirects are not followed; each
                                 send has one deadline for the whole of it (below)
    record  (short transaction)  as soon as its own send ends: delivered on 2xx; 410 Gone disables the
                                 endpoint (its other queued deliveries cancelled: outbox.close_subscription);
                                 anything else schedules the next try from the backoff, or marks it dead

The background loop (``run_forever``, which quaygate/workers.py runs in a thread of its own) is a
pipeline, not rounds: one asyncio loop keeps up to ``workers`` sends in flight and claims again as soon
as a send ends, for the slots free, so a slow send holds its own slot and nothing else. When nothing is
due it waits ``interval`` (a send ending, or the stop, ends the wait sooner); once stopped it claims
nothing more, and the sends in flight end (each within its deadline) and are recorded. ``run_once`` is
one round of the same (claim a batch, send it, record each as it ends), for tests and one-off runs.

What one claim may take, in this process (replicas may each hold their own; review 110):

- one delivery per subscription, its earliest due (by due time, then the order queued: ``ordinal``)
  that no earlier delivery of its right holds (below), and none of a subscription with a send in flight
  (``subscription_id NOT IN`` those): its deliveries go one at a time, so a slow receiver holds one slot
  and its backlog waits behind its own send, not the others';
- at most ``per_organisation`` (default 4) sends in flight for one organisation: a company holds up to
  MAX_SUBSCRIPTIONS endpoints, and its slow ones hold that many slots of the pool, never all of them,
  so another company's backlog goes on through the rest;
- a send whose name lookup is still running counts as in flight, for its subscription and its
  organisation, until the lookup returns, even past the send's deadline (below, a slow nameserver).

A slow nameserver (review 116): the deadline cancels the send, but not its name lookup (getaddrinfo
cannot be cancelled), which goes on in its thread of the lookup pool. Were the send's share freed at
the deadline, a company pointing its endpoints at a name whose nameserver answers slowly would leave a
blocked thread behind with each send and claim more every deadline, until the pool is full and every
other company's lookups queue behind it and time out. So its lookups still running hold its share
(and its subscriptions) until they return, and it has at most ``per_organisation`` lookups outstanding.
The pool has ``workers + per_organisation`` threads, and the pipeline claims only as many as there are
threads left beside the lookups outstanding, so one company's blocked lookups never take a thread from
another's sends, and several companies' only narrow the pipeline (their sends wait queued in the
database, not for a thread against their deadline). The timed-out delivery itself is recorded at its
deadline, as any timeout; the late lookup's answer is dropped.

A right's events in order (review 171, finding 1): a subscription gets the deliveries of one right in the
order they were queued (``ordinal``, adapters/outbox.py: a change's events in the order they happened,
``release.revoked`` before the ``release.transfer.cancelled`` of the same revocation), and none while an
earlier one of that right to it is still pending: waiting for its retry, or being sent by any replica
(its lease; the rule of one send per subscription holds in one process only). The claim reads that in
its own statement (no pending delivery of the right with a smaller ordinal), so it holds whatever the
times say. A dead letter ends the hold: the later ones go on (each payload carries the event's ``seq``, so
the receiver sees the gap, and reads the right's events or has the dead letter redelivered). Held ones
are not due meanwhile, so the claim's probe does not read them again and again: one queued behind a
pending delivery of its right is due when the latest of those is (``outbox.due_behind``); a failed
attempt's retry time moves the right's later ones with it; a delivery delivered or dead brings those it
held, never tried, forward to now (``_release_followers``). Other rights' deliveries to the same endpoint
are not held: a receiver that refuses one event holds up that right's events only, not the endpoint.

The outcome is written only if the row still carries our lease (a fencing token): if a send outlived
the lease and another replica re-claimed the row, the late outcome is dropped, not written twice. The
lease outlasts ``run_once``'s batch queued on the pool with every send at its deadline; the pipeline's
sends start as they are claimed. Delivery is at least once (a crash between send and record resends
after the lease); receivers de-duplicate on ``webhook-id``, as the spec tells them to.

A slow receiver (review 110): httpx's timeout bounds each network operation, not a request; a receiver
that trickles its status line and headers a byte every few seconds would hold a send for days (h11 takes
some 100 KB of headers). So a send has one deadline for all of it (``send_timeout``: resolving the name,
connecting, writing, the status line and headers), enforced by cancelling it (``asyncio.wait_for``;
httpcore closes a connection whose request is cancelled); past it, the attempt failed ("timeout") and is
retried on the backoff, as any timeout.

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
import itertools
import logging
import math
import random
import socket
import threading
from collections import Counter
from collections.abc import Callable, Collection, Coroutine, Iterable
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
from release_service.adapters.outbox import PENDING, close_subscription, held_back
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
    wire_host,
)
from release_service.ports import Clock

log = logging.getLogger("quaygate.webhooks")

_dels = webhook_deliveries
_subs = webhook_subscriptions
_orgs = organisations
# Seconds for the whole of one send (module docstring); each network read or write of it has READ_TIMEOUT.
SEND_TIMEOUT = 10.0
READ_TIMEOUT = 5.0
# Sends in flight at once in one process, and of those at most PER_ORGANISATION for one organisation: a
# company's slow endpoints (it may hold MAX_SUBSCRIPTIONS) hold that many slots, the rest go on.
WORKERS = 32
PER_ORGANISATION = 4
# What a subscriber reads (last_error, dead letters) when its URL's host is refused: one text whether the
# name did not resolve or resolved to an address that is not public, so that a subscriber cannot probe
# which names exist in the platform's internal DNS (review 110). The server log says which.
REFUSED_ERROR = "destination refused: not a public address"
WITHHELD_ERROR = "organisation deactivated"
# An attempt that failed on our side (``_attempt``): the subscriber reads this, the server log says what.
INTERNAL_ERROR = "internal error"
USER_AGENT = "quaygate-webhooks/1"
# Who disables an endpoint that answered 410 Gone: the service itself (as in the release engine's events).
SYSTEM_ACTOR: dict[str, str | None] = {"client_id": "quaygate", "organisation_id": None, "kind": "system",
                                       "person_id": None}


def _run_to_end(work: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(work)``, from any thread: where an event loop already runs in the caller's thread (an
    async caller, a library's loop left running, as Playwright's sync API leaves one in the main thread),
    a second cannot start there, so the work gets a thread of its own and the caller waits for it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(work)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="webhook-round") as one:
        one.submit(asyncio.run, work).result()


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
    organisation_id: Any
    url: str
    secret_enc: str
    payload: dict[str, Any]
    attempts: int
    lease_until: datetime
    release_id: Any = None  # the right's queue it is in (outbox.py), None for none
    ordinal: Any = None


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
                 batch: int = 100, workers: int = WORKERS, per_organisation: int = PER_ORGANISATION,
                 jitter: Callable[[], float] = random.random, send_timeout: float = SEND_TIMEOUT,
                 allow_local: bool = False, resolve: Callable[[str, int], list[str]] | None = None) -> None:
        self._engine = engine
        self._allow_local = allow_local  # dev: http://localhost receivers (validate_url's allow_insecure_localhost)
        self._resolve = resolve or _resolve
        self._cipher = cipher
        self._client_factory = http_client_factory
        self._clock = clock
        self._batch = batch
        self._workers = max(1, workers)
        self._per_org = max(1, per_organisation)
        self._jitter = jitter
        if not send_timeout > 0:
            raise ValueError("send_timeout must be a positive number of seconds")
        self._send_timeout = send_timeout
        # The lease must outlast the slowest claim's sends: run_once's batch queues on the pool, every send
        # of it hitting its deadline (the pipeline claims only for free slots, so its sends start at once).
        self._lease = timedelta(seconds=send_timeout * math.ceil(batch / self._workers) + 30)
        self._pg = engine.dialect.name == "postgresql"
        # Name lookups run here, not in asyncio's default pool: a lookup outliving its send's deadline
        # goes on in its thread, and asyncio.run waits for the default pool's threads, not for these. A
        # thread for each send in flight, and one organisation's share besides for lookups outliving their
        # sends (module docstring, a slow nameserver); those are tracked until they return.
        self._lookup_threads = self._workers + self._per_org
        self._lookups = ThreadPoolExecutor(max_workers=self._lookup_threads, thread_name_prefix="webhook-resolve")
        self._resolving: dict[int, _Claimed] = {}
        self._resolving_lock = threading.Lock()
        self._lookup_ids = itertools.count()

    def run_once(self) -> int:
        """One round: claim a batch (one delivery per subscription, ``per_organisation`` per organisation),
        send it and record each outcome; returns how many deliveries it took from the queue: attempted, or
        withheld (their organisation deactivated). Ends when its slowest send does. Lookups still running
        from an earlier round's sends hold their subscriptions and organisations' shares."""
        claimed, withheld = self._claim(self._clock.now(), limit=self._batch, in_flight=self._busy(()))
        if claimed:
            _run_to_end(self._send_and_record(claimed))
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
        """The background thread's loop: the pipeline (module docstring) until ``stop_event`` is set and its
        sends in flight have ended. A pipeline that fails (the HTTP client, say) is logged and started
        again after ``interval``; its sends in flight were recorded or are sent again after their lease."""
        while not stop_event.is_set():
            try:
                _run_to_end(self._pipeline(stop_event, interval))
            except Exception:  # noqa: BLE001 - the loop must outlive a passing fault, and say so
                log.exception("release.webhook.dispatch.failed")
                stop_event.wait(interval)

    async def _pipeline(self, stop: threading.Event, interval: float) -> None:
        """Up to ``workers`` sends in flight; a freed slot is claimed for at once, not at the end of a round;
        never two sends of one subscription, nor more than ``per_organisation`` of one organisation, in
        flight here, counting sends whose lookup outlived their deadline until it returns; never more claimed
        than the lookup pool has threads for. Nothing due: wait ``interval`` (a send ending, or stop, ends
        the wait sooner; a late lookup returning does not: its share is claimed for within ``interval``).
        Stopped: no new claim, the sends in flight end (each within its deadline) and are recorded."""
        flight: dict[asyncio.Task[None], _Claimed] = {}

        async def one(client: httpx.AsyncClient, c: _Claimed) -> None:
            outcome = await self._send(client, c)
            await asyncio.to_thread(self._record, outcome)

        async with self._client_factory() as client:
            while True:
                more = False
                busy = self._busy(flight.values())
                # A slot, and a lookup thread for it: one not held by a lookup outliving its send.
                free = min(self._workers - len(flight), self._lookup_threads - len(busy))
                if not stop.is_set() and free > 0:
                    try:
                        claimed, withheld = await asyncio.to_thread(
                            self._claim, self._clock.now(), limit=free, in_flight=busy)
                    except Exception:  # noqa: BLE001 - a database blip: the sends in flight go on
                        log.exception("release.webhook.dispatch.failed")
                        claimed, withheld = [], 0
                    for c in claimed:
                        flight[asyncio.create_task(one(client, c))] = c
                    # Withheld rows took no slot: more may be due at once.
                    more = withheld > 0 and len(flight) < self._workers
                if more:
                    continue
                if not flight:
                    if stop.is_set():
                        return
                    await asyncio.to_thread(stop.wait, interval)
                    continue
                # Full, or nothing more claimable now: until a send ends (a slot, a subscription or an
                # organisation's share freed), or ``interval`` for deliveries that have come due since.
                done, _ = await asyncio.wait(flight, timeout=None if stop.is_set() else interval,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    c = flight.pop(task)
                    if (exc := task.exception()) is not None:
                        # Not recorded: sent again after its lease (at least once).
                        log.error("release.webhook.dispatch.failed", exc_info=exc,
                                  extra={"fields": {"delivery_id": str(c.id)}})

    def _busy(self, in_flight: Iterable[_Claimed]) -> list[_Claimed]:
        """The sends in flight and those whose name lookup is still running, past their deadline or not
        (module docstring, a slow nameserver), each delivery once."""
        with self._resolving_lock:
            resolving = list(self._resolving.values())
        return list({c.id: c for c in (*resolving, *in_flight)}.values())

    # ---- claim ---------------------------------------------------------------------------------

    def _claim(self, now: datetime, *, limit: int,
               in_flight: Collection[_Claimed] = ()) -> tuple[list[_Claimed], int]:
        """Up to ``limit`` due deliveries to send, leased; and how many were withheld instead (module
        docstring). Never one of a subscription with a send in ``in_flight``, never more of an organisation
        than its share (``per_organisation``) left beside its sends in flight (``in_flight`` holds, too, the
        sends whose lookup outlived their deadline: ``_busy``)."""
        lease_until = now + self._lease
        due = sa.and_(_dels.c.status == "pending", _dels.c.next_attempt_at <= now)
        busy_subs = {c.subscription_id for c in in_flight}
        busy_orgs = Counter(c.organisation_id for c in in_flight)
        # One send per subscription at most (module docstring): its earliest due delivery, and none of a
        # subscription sending now. On PostgreSQL, one another replica is claiming right now is skipped, not
        # replaced by the next.
        subs = _subs.c.active.is_(True) if not busy_subs else sa.and_(_subs.c.active.is_(True),
                                                                          _subs.c.id.not_in(busy_subs))
        per_sub = self._first_due_per_subscription(now, subs)
        # Of those, an organisation's earliest, as many as its share left: one company's slow endpoints
        # hold at most ``per_organisation`` slots of the pool, never all of them.
        per_org = (sa.select(per_sub.c.id, per_sub.c.organisation_id,
                             sa.func.row_number().over(partition_by=per_sub.c.organisation_id,
                                                       order_by=(per_sub.c.next_attempt_at, per_sub.c.ordinal))
                             .label("m"))
                   .subquery())
        share: sa.ColumnElement[int] = sa.literal(self._per_org)
        if busy_orgs:
            share = sa.case({org: max(0, self._per_org - n) for org, n in busy_orgs.items()},
                            value=per_org.c.organisation_id, else_=self._per_org)
        q = (
            sa.select(_dels.c.id, _dels.c.subscription_id, _dels.c.payload, _dels.c.attempts,
                      _dels.c.release_id, _dels.c.ordinal, _subs.c.url, _subs.c.secret_enc,
                      _subs.c.organisation_id, _orgs.c.active.label("organisation_active"))
            .join(_subs, _subs.c.id == _dels.c.subscription_id)
            .join(_orgs, _orgs.c.id == _subs.c.organisation_id)
            .where(due, _subs.c.active.is_(True), _dels.c.id.in_(sa.select(per_org.c.id).where(per_org.c.m <= share)))
            .order_by(_dels.c.next_attempt_at, _dels.c.ordinal)
            .limit(limit)
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
        return [_Claimed(r.id, r.subscription_id, r.organisation_id, r.url, r.secret_enc, dict(r.payload),
                         r.attempts, lease_until, r.release_id, r.ordinal) for r in send], len(withheld)

    def _first_due_per_subscription(self, now: datetime, subs: sa.ColumnElement[bool]) -> sa.Subquery:
        """Each subscription's earliest due delivery (by ``next_attempt_at``, then ``ordinal``) that no
        earlier delivery of its right holds (``outbox.held_back``: module docstring), for the subscriptions
        ``subs`` selects: (id, next_attempt_at, ordinal, organisation_id).

        On PostgreSQL, one probe of ``ix_webhook_deliveries_queue`` (subscription, time, ordinal; pending
        rows only) per active subscription, in a LATERAL subquery, and one of
        ``ix_webhook_deliveries_right_queue`` for the row it finds (rows held are rarely due: module
        docstring): the claim's cost follows the number of subscriptions, not of the rows due (webhook
        review, finding 3: a window over every due row, a sequential scan and an external sort, took 99 ms
        at 100 000 due rows and 343 ms at 500 000, for every claim; loadtests/RESULTS.md "Webhooks").
        ``'pending'`` is literal, as in the indexes' predicate, so that a generic plan may use them. SQLite
        (one process, a small queue) keeps the window: the same rows, by the same order."""
        order = (_dels.c.next_attempt_at, _dels.c.ordinal)
        if self._pg:
            first = (sa.select(_dels.c.id, _dels.c.next_attempt_at, _dels.c.ordinal)
                     .where(_dels.c.subscription_id == _subs.c.id, _dels.c.status == PENDING,
                            _dels.c.next_attempt_at <= now, ~held_back(_dels))
                     .order_by(*order)
                     .limit(1)
                     .lateral("first_due"))
            return (sa.select(first.c.id, first.c.next_attempt_at, first.c.ordinal, _subs.c.organisation_id)
                    .select_from(_subs.join(first, sa.true()))
                    .where(subs)
                    .subquery())
        ranked = (sa.select(_dels.c.id, _dels.c.next_attempt_at, _dels.c.ordinal, _subs.c.organisation_id,
                            sa.func.row_number().over(partition_by=_dels.c.subscription_id,
                                                      order_by=order).label("n"))
                  .join(_subs, _subs.c.id == _dels.c.subscription_id)
                  .where(_dels.c.status == PENDING, _dels.c.next_attempt_at <= now, ~held_back(_dels), subs)
                  .subquery())
        return (sa.select(ranked.c.id, ranked.c.next_attempt_at, ranked.c.ordinal, ranked.c.organisation_id)
                .where(ranked.c.n == 1).subquery())

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
        """One attempt's outcome, always: a fault of ours on the way (a bug, or something a receiver sent
        that we did not expect) is a failed attempt too, recorded and counted on the backoff (in the end
        dead), where an exception left the row pending, unrecorded, sent again after every lease for ever
        (webhook review, finding 2). The deadline's cancellation is no Exception: it passes."""
        try:
            return await self._try(client, c)
        except Exception:  # noqa: BLE001 - this delivery's failure, never the row's eternal resend
            log.exception("release.webhook.send.internal_error",
                          extra={"fields": {"delivery_id": str(c.id), "subscription_id": str(c.subscription_id)}})
            return _Outcome(c, None, INTERNAL_ERROR)

    async def _try(self, client: httpx.AsyncClient, c: _Claimed) -> _Outcome:
        try:
            aad = secret_aad(c.subscription_id)
            if self._cipher.is_current(c.secret_enc):
                sealed = self._cipher.open_stored(c.secret_enc, aad)
            else:  # a previous data key's: whether rekey-data has finished may take a database read
                sealed = await asyncio.to_thread(self._cipher.open_stored, c.secret_enc, aad)
            secrets = SigningSecrets.from_bytes(sealed)
        except Exception:  # noqa: BLE001 - a secret that will not open is this delivery's failure, not the batch's
            return _Outcome(c, None, "secret unreadable")
        body = encode_body(c.payload)
        at = self._clock.now()  # the attempt's time, not the event's: a retry is signed afresh (spec)
        headers = signed_headers(secrets.active(at), msg_id=str(c.id), at=at, body=body)
        headers["content-type"] = "application/json"
        target = await self._look_up(c, headers)
        if isinstance(target, str):
            return _Outcome(c, None, target)
        url, extensions = target
        try:
            # Streamed and closed unread: a receiver cannot make us buffer a large response body.
            async with client.stream("POST", url, content=body, headers=headers,
                                     extensions=extensions) as response:
                if response.is_success:  # delivered: a Retry-After is nothing to us
                    return _Outcome(c, response.status_code, None)
                return _Outcome(c, response.status_code, f"HTTP {response.status_code}",
                                parse_retry_after(response.headers.get("retry-after")))
        except httpx.TimeoutException:
            return _Outcome(c, None, "timeout")
        except httpx.HTTPError as exc:
            return _Outcome(c, None, type(exc).__name__)  # the class only: messages may echo internal hosts

    async def _look_up(self, c: _Claimed, headers: dict[str, str]) -> tuple[str, dict[str, Any]] | str:
        """``_public_target`` in the lookup pool, tracked (``_busy``) until its thread returns, not until the
        send's deadline cancels the wait for it (module docstring, a slow nameserver). Cancelled before a
        thread took it, it is dropped from the pool's queue and untracked at once."""
        key = next(self._lookup_ids)
        with self._resolving_lock:
            self._resolving[key] = c

        def untrack(_: object) -> None:
            with self._resolving_lock:
                self._resolving.pop(key, None)

        try:
            lookup = self._lookups.submit(self._public_target, c.url, headers)
        except BaseException:
            untrack(None)
            raise
        lookup.add_done_callback(untrack)  # in the lookup's thread as it returns, or at once if cancelled
        return await asyncio.wrap_future(lookup)

    def _public_target(self, url: str, headers: dict[str, str]) -> tuple[str, dict[str, Any]] | str:
        """Where to send: the URL with its host resolved now, refused unless every address is public, and
        the connection pinned to the address checked (the name goes in Host and in TLS's SNI, and the
        certificate is checked against it), so a name cannot resolve to a public address for the check
        and to an internal one for the connection (DNS rebinding). An error string when refused."""
        parts = urlsplit(url)
        try:  # a subscription stored before its host was kept in ASCII may hold it in Unicode (review 171)
            host = wire_host(parts.hostname or "")
        except ValueError:
            log.warning("release.webhook.refused.unresolved")
            return REFUSED_ERROR
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
        headers["host"] = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port is not None else "")
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
            elif "next_attempt_at" in values:  # a retry: the right's later deliveries wait for it
                _defer_followers(conn, c, values["next_attempt_at"])
            elif o.status_code != 410:  # delivered, or dead: the hold ends
                _release_followers(conn, c, now)
            else:  # all its queue cancelled with it
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


def _followers(c: _Claimed) -> sa.ColumnElement[bool]:
    """The pending deliveries queued after ``c`` of its right to its subscription (module docstring)."""
    return sa.and_(_dels.c.subscription_id == c.subscription_id, _dels.c.release_id == c.release_id,
                   _dels.c.status == PENDING, _dels.c.ordinal > c.ordinal)


def _defer_followers(conn: sa.Connection, c: _Claimed, retry_at: datetime) -> None:
    """``c`` waits for its retry at ``retry_at``: its right's later deliveries to its subscription are not
    due before it (they are held until it ends; due meanwhile, the claim would read them at every pass)."""
    if c.release_id is None or c.ordinal is None:
        return
    conn.execute(_dels.update().where(_followers(c), _dels.c.next_attempt_at < retry_at)
                 .values(next_attempt_at=retry_at))


def _release_followers(conn: sa.Connection, c: _Claimed, now: datetime) -> None:
    """``c`` is delivered or dead: the later deliveries of its right that it held, queued behind it while
    it was being sent (``outbox.due_behind``: its lease) and never tried, are due now, not at the end of
    its lease. One of them still held by another earlier delivery stays held (the claim's rule); one
    whose transaction commits after this one's waits for the lease's end at most."""
    if c.release_id is None or c.ordinal is None:
        return
    conn.execute(_dels.update().where(_followers(c), _dels.c.attempts == 0, _dels.c.next_attempt_at > now,
                                      _dels.c.next_attempt_at <= c.lease_until)
                 .values(next_attempt_at=now))

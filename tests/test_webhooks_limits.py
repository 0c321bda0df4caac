"""Webhook delivery's limits (review 110): a slow receiver holds one send for a bounded time, not the
dispatcher; a refused destination says nothing of the platform's DNS; finished deliveries are pruned.

Real receivers on 127.0.0.1 (one answers normally, one trickles its answer a byte at a time and never
finishes its headers), real SQLite and PostgreSQL.
"""
# ruff: noqa: F811 - ``receiver`` is a fixture imported here and requested by name

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.cache import make_cache
from quaygate.container import Container, SystemClock
from quaygate.schema import webhook_deliveries
from quaygate.workers import BackgroundWorkers
from release_service.adapters.outbox import prune_deliveries
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.services import webhooks as svc

from .test_audit_tamper import settings_for
from .test_webhooks import (  # noqa: F401 - receiver: a fixture requested by name
    CIPHER,
    REFUSED,
    T0,
    FakeClock,
    Receiver,
    delivery_rows,
    dispatcher,
    make_org,
    member,
    publish,
    receiver,
    subscribe,
)

# ---- 1. a receiver trickling its answer holds one send, for the deadline only ---------------------------


class Trickler:
    """A TCP server that reads a request, then sends an HTTP status line and headers a byte at a time,
    for ever (httpx's per-read timeout never fires), until the client closes the connection or the
    test stops it. Counts connections, the most open at once, and those the client closed."""

    def __init__(self, every: float = 0.1) -> None:
        self._every = every
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.closed_by_client = 0
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}{path}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=self._trickle, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _trickle(self, conn: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        answer = b"HTTP/1.1 200 OK\r\n" + b"x-slow: y\r\n" * 100_000
        try:
            for i in range(len(answer)):
                if self.stop.is_set():
                    return
                readable, _, _ = select.select([conn], [], [], self._every)
                if readable and conn.recv(65536) == b"":  # the request, or the client closing
                    with self._lock:
                        self.closed_by_client += 1
                    return
                conn.sendall(answer[i:i + 1])
        except OSError:
            with self._lock:
                self.closed_by_client += 1
        finally:
            with self._lock:
                self.open -= 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self._accepting.join(timeout=5)
        for t in self._threads:
            t.join(timeout=5)
        self._sock.close()


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    t = Trickler()
    yield t
    t.close()


def wait_for(condition: Any, seconds: float = 30.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return False


def status_of(engine: sa.Engine, subscription_id: uuid.UUID) -> list[tuple[str, int, str | None]]:
    return sorted((r.status, r.attempts, r.last_error) for r in delivery_rows(engine)
                  if r.subscription_id == subscription_id)


def test_a_trickling_receiver_holds_its_own_send_for_the_deadline_not_the_others(
        engine: sa.Engine, receiver: Receiver, trickler: Trickler) -> None:
    """Two companies' deliveries in one round; one receiver trickles its headers a byte every 0.1 s (each
    read well inside httpx's timeout). The other company's delivery is recorded delivered while the slow
    send is still open; the slow one is cut at the send's deadline, its connection closed, and recorded
    as a failed attempt with a retry on the backoff. Its second delivery waits: one send in flight per
    subscription."""
    fast_org, slow_org, clock = make_org(engine), make_org(engine), FakeClock()
    fast, _ = subscribe(engine, fast_org, receiver.url("/fast"), ["release.*"])
    slow, _ = subscribe(engine, slow_org, trickler.url("/slow"), ["release.*"])
    publish(engine, {slow_org, fast_org}, "release.issued")
    publish(engine, {slow_org}, "release.revoked")
    d = dispatcher(engine, clock, send_timeout=2.0)
    taken: list[int] = []
    round_ = threading.Thread(target=lambda: taken.append(d.run_once()), daemon=True)
    round_.start()
    try:
        assert wait_for(lambda: status_of(engine, fast.id) == [("delivered", 1, None)])
        # Recorded as its own send ended, with the slow send still hanging on its connection.
        assert trickler.open == 1 and trickler.closed_by_client == 0
        round_.join(timeout=60)  # the deadline is 2 s; generous for a loaded machine
        assert not round_.is_alive(), "the round never ended: the slow send has no deadline"
    finally:
        trickler.stop.set()  # let a send without a deadline end, so that the test does
        round_.join(timeout=10)

    assert taken == [2]  # one per subscription
    assert len(receiver.at("/fast")) == 1
    assert (trickler.connections, trickler.most_open, trickler.closed_by_client) == (1, 1, 1)
    assert status_of(engine, slow.id) == [("pending", 0, None), ("pending", 1, "timeout")]
    retry = next(r for r in delivery_rows(engine) if r.subscription_id == slow.id and r.attempts == 1)
    assert retry.next_attempt_at == T0 + timedelta(seconds=5)  # the backoff's first step (jitter 0)


def test_a_subscriptions_deliveries_go_one_at_a_time_in_order(engine: sa.Engine, receiver: Receiver) -> None:
    """With one send per subscription per round, a backlog still drains, oldest first, each delivered once."""
    org, clock = make_org(engine), FakeClock()
    subscribe(engine, org, receiver.url("/hook"), ["release.*"])
    ids = [publish(engine, {org}, "release.issued", at=T0 + timedelta(seconds=k)) for k in range(4)]
    clock.advance(timedelta(seconds=10))
    d = dispatcher(engine, clock, workers=4)
    assert [d.run_once() for _ in range(5)] == [1, 1, 1, 1, 0]
    got = receiver.at("/hook")
    assert [r.body.count(str(i).encode()) for r, i in zip(got, ids, strict=True)] == [1, 1, 1, 1]
    assert {r.status for r in delivery_rows(engine)} == {"delivered"}


def _queued(engine: sa.Engine, sub: uuid.UUID, at: timedelta, last_hex: int = 0) -> uuid.UUID:
    """A pending delivery of ``sub`` due at ``T0 + at``; its id ``last_hex`` when given (ordered ids)."""
    did = uuid.UUID(int=last_hex) if last_hex else uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(webhook_deliveries.insert().values(
            id=did, subscription_id=sub, event_id=uuid.uuid4(), event_type="release.issued", payload={},
            status="pending", attempts=0, next_attempt_at=T0 + at, created_at=T0))
    return did


def test_each_claim_takes_a_subscriptions_earliest_due_delivery_and_no_other(engine: sa.Engine) -> None:
    """The claim (webhook review, finding 3: per subscription through its pending index, a LATERAL probe on
    PostgreSQL, the window on SQLite) takes, of each active subscription with no send in flight here, its
    earliest due delivery by time then the order queued (review 171, finding 1: not by id), one per claim,
    in time order; never one not yet due, nor one of a closed subscription; what it leased is not due
    again until its lease ends."""
    one, two, clock = make_org(engine), make_org(engine), FakeClock()
    a1 = subscribe(engine, one, "https://hooks.example.com/a1", ["release.*"])[0].id
    a2 = subscribe(engine, one, "https://hooks.example.com/a2", ["release.*"])[0].id
    b1 = subscribe(engine, two, "https://hooks.example.com/b1", ["release.*"])[0].id
    closed = subscribe(engine, two, "https://hooks.example.com/closed", ["release.*"])[0].id
    x_early_id = _queued(engine, a1, timedelta(seconds=-30), last_hex=0x02)
    x_late_id = _queued(engine, a1, timedelta(seconds=-30), last_hex=0x01)  # same time, queued after: later
    x3 = _queued(engine, a1, timedelta(seconds=-10))
    x4 = _queued(engine, a1, timedelta(seconds=60))  # not due yet
    y1 = _queued(engine, a2, timedelta(seconds=5))  # a retry waiting
    y2 = _queued(engine, a2, timedelta(seconds=-5))
    z1 = _queued(engine, b1, timedelta(seconds=-20))
    _queued(engine, closed, timedelta(seconds=-100))
    svc.delete_subscription(SqlUnitOfWork(engine), member(two), closed, now=T0)
    d = dispatcher(engine, clock)

    def claim(in_flight: list[Any] = []) -> list[uuid.UUID]:  # noqa: B006 - read only
        claimed, withheld = d._claim(clock.now(), limit=100, in_flight=in_flight)
        assert withheld == 0
        assert len({c.subscription_id for c in claimed}) == len(claimed)  # one per subscription
        return [c.id for c in claimed]

    sending_b1 = SimpleNamespace(id=uuid.uuid4(), subscription_id=b1, organisation_id=two)
    assert claim([sending_b1]) == [x_early_id, y2]  # b1 has a send in flight here: none of its
    assert claim() == [x_late_id, z1]
    assert claim() == [x3]
    assert claim() == []
    clock.advance(timedelta(seconds=61))  # x4 and y1 due; the leases above (70 s) not ended yet
    assert claim() == [y1, x4]
    assert claim() == []


# ---- 1b. the pipeline: slots freed are claimed at once, shared fairly ---------------------------------------


def run_pipeline(d: Any, interval: float = 0.01) -> tuple[threading.Thread, threading.Event]:
    """The dispatcher's background loop (run_forever) in a thread of its own, as BackgroundWorkers runs it."""
    stop = threading.Event()
    loop = threading.Thread(target=d.run_forever, args=(stop, interval), daemon=True)
    loop.start()
    return loop, stop


def delivered(engine: sa.Engine, subscription_id: uuid.UUID) -> int:
    return sum(1 for r in delivery_rows(engine) if r.subscription_id == subscription_id and r.status == "delivered")


def test_one_organisations_slow_endpoints_hold_its_share_while_another_backlog_drains(
        engine: sa.Engine, receiver: Receiver, trickler: Trickler) -> None:
    """One company has six subscriptions whose receiver trickles (each send held to the deadline); another
    has a backlog of 30 deliveries on one normal receiver. With a pool of 5 and a share of 4 per
    organisation, the tricklers hold 4 connections, never more, and the backlog goes through the fifth
    slot, one send after another as each ends, all delivered before the slow sends reach their deadline
    (rounds would have given it one delivery per deadline). Stopped, the pipeline claims nothing more, and
    the sends in flight end at their deadline and are recorded."""
    slow_org, fast_org, clock = make_org(engine), make_org(engine), FakeClock()
    slow = [subscribe(engine, slow_org, trickler.url(f"/slow{k}"), ["release.*"])[0] for k in range(6)]
    fast, _ = subscribe(engine, fast_org, receiver.url("/fast"), ["release.*"])
    publish(engine, {slow_org}, "release.issued")
    for _ in range(30):
        publish(engine, {fast_org}, "release.issued")
    d = dispatcher(engine, clock, workers=5, per_organisation=4, send_timeout=8.0)
    loop, stop = run_pipeline(d)
    try:
        assert wait_for(lambda: delivered(engine, fast.id) == 30, seconds=60), "the backlog did not drain"
        # Drained while the slow sends were all still open: none had reached its deadline.
        assert trickler.closed_by_client == 0
        assert wait_for(lambda: trickler.open == 4)
        assert trickler.most_open == 4
    finally:
        stop.set()
        loop.join(timeout=60)  # the sends in flight end at their deadline (8 s); generous for a loaded machine
        trickler.stop.set()
    assert not loop.is_alive(), "the pipeline did not stop"

    assert (trickler.connections, trickler.most_open) == (4, 4)
    got = receiver.at("/fast")
    assert len(got) == 30 and len({r.headers["webhook-id"] for r in got}) == 30  # each once
    slow_ids = {s.id for s in slow}
    outcomes = sorted((r.status, r.attempts, r.last_error) for r in delivery_rows(engine)
                      if r.subscription_id in slow_ids)
    # Four cut at their deadline and recorded as they ended, after the stop; two never claimed.
    assert outcomes == [("pending", 0, None)] * 2 + [("pending", 1, "timeout")] * 4


def test_the_pipeline_never_has_two_sends_of_one_subscription_in_flight(engine: sa.Engine,
                                                                        receiver: Receiver) -> None:
    """Two subscriptions, five deliveries each, a receiver that takes 0.2 s per request; the pipeline
    claims every 10 ms while slots are free. The two subscriptions are sent to at once, but each one's
    deliveries go one at a time, in order, each delivered once."""
    org, clock = make_org(engine), FakeClock()
    a, _ = subscribe(engine, org, receiver.url("/a"), ["release.*"])
    b, _ = subscribe(engine, org, receiver.url("/b"), ["release.*"])
    receiver.delay.update({"/a": 0.2, "/b": 0.2})
    ids = [publish(engine, {org}, "release.issued", at=T0 - timedelta(seconds=10 - k)) for k in range(5)]
    loop, stop = run_pipeline(dispatcher(engine, clock, workers=8))
    try:
        assert wait_for(lambda: delivered(engine, a.id) + delivered(engine, b.id) == 10, seconds=60)
    finally:
        stop.set()
        loop.join(timeout=60)
    assert not loop.is_alive()
    assert receiver.most_at_once == {"/a": 1, "/b": 1}
    assert receiver.most_at_once_in_all == 2  # the pipeline does send at once: the 1 above is the rule's
    for path in ("/a", "/b"):
        got = receiver.at(path)
        assert [json.loads(r.body)["id"] for r in got] == [str(i) for i in ids]


def test_a_round_takes_at_most_an_organisations_share(engine: sa.Engine, receiver: Receiver) -> None:
    """run_once follows the pipeline's rules: one delivery per subscription, ``per_organisation`` per
    organisation; the rest wait for the next round."""
    busy, other, clock = make_org(engine), make_org(engine), FakeClock()
    for k in range(6):
        subscribe(engine, busy, receiver.url(f"/busy{k}"), ["release.*"])
    subscribe(engine, other, receiver.url("/other"), ["release.*"])
    publish(engine, {busy, other}, "release.issued")
    d = dispatcher(engine, clock, per_organisation=4)
    assert [d.run_once() for _ in range(3)] == [5, 2, 0]
    assert {r.status for r in delivery_rows(engine)} == {"delivered"} and len(receiver.requests) == 7


def test_the_background_workers_run_the_pipeline(engine: sa.Engine, database_url: str, tmp_path: Path,
                                                  receiver: Receiver) -> None:
    """As the service runs it (quaygate/workers.py): the dispatcher's pipeline in a thread of its own, with
    the settings' pool and share, stopped with the other loops."""
    org = make_org(engine)
    sub, _ = subscribe(engine, org, receiver.url("/hook"), ["release.*"])
    for _ in range(3):
        publish(engine, {org}, "release.issued")
    settings = settings_for(database_url, tmp_path, webhook_interval=0.05, webhook_workers=2,
                            webhook_sends_per_organisation=1)
    workers = BackgroundWorkers(Container(settings=settings, engine=engine, cache=make_cache(None),
                                          cipher=CIPHER, clock=SystemClock()))
    workers.start()
    try:
        assert wait_for(lambda: delivered(engine, sub.id) == 3, seconds=30)
    finally:
        workers.stop()
    assert len(receiver.at("/hook")) == 3
    assert not any(t.name == "webhook-dispatcher" and t.is_alive() for t in threading.enumerate())


class SlowResolver:
    """A name lookup (the dispatcher's ``resolve``) that blocks, as getaddrinfo does on a nameserver that
    answers slowly, until the test releases it (at most ``hold`` seconds); then the name does not
    resolve. Counts the lookups entered and those still blocked."""

    def __init__(self, hold: float = 60.0) -> None:
        self.release = threading.Event()
        self._hold = hold
        self._lock = threading.Lock()
        self.entered = 0
        self.blocked = 0

    def __call__(self, host: str, port: int) -> list[str]:
        with self._lock:
            self.entered += 1
            self.blocked += 1
        try:
            self.release.wait(self._hold)
        finally:
            with self._lock:
                self.blocked -= 1
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


def test_one_organisations_slow_name_lookups_cannot_stop_another_organisations_deliveries(
        engine: sa.Engine, receiver: Receiver) -> None:
    """One company points twelve endpoints at a name whose nameserver never answers in time: each send
    is cut at its deadline (0.5 s), but its lookup thread goes on (getaddrinfo cannot be cancelled). With a
    pool of 8 and a share of 4, the company's lookups still running count against its share until they
    return, so it has four lookups outstanding, never more, however many deadlines pass; another company's
    ten deliveries, queued after, all go through while those four are still blocked. Released, the
    lookups return and the company's share is free again: its other endpoints are tried."""
    slow_org, fast_org, clock = make_org(engine), make_org(engine), FakeClock()
    slow = [subscribe(engine, slow_org, f"https://hooks{k}.slow-dns.example/x", ["release.*"])[0]
            for k in range(12)]
    fast, _ = subscribe(engine, fast_org, receiver.url("/fast"), ["release.*"])
    publish(engine, {slow_org}, "release.issued")
    resolver = SlowResolver()
    d = dispatcher(engine, clock, workers=8, per_organisation=4, send_timeout=0.5, resolve=resolver)
    slow_ids = {s.id for s in slow}

    def slow_timeouts() -> int:
        return sum(1 for r in delivery_rows(engine) if r.subscription_id in slow_ids and r.last_error == "timeout")

    loop, stop = run_pipeline(d)
    try:
        # The first four cut at their deadline, their lookups still blocked; then eight more deadlines'
        # time (without the rule, four more would be claimed each deadline until the lookup pool is full,
        # or all twelve blocked).
        assert wait_for(lambda: slow_timeouts() >= 4, seconds=30)
        wait_for(lambda: resolver.entered == 12, seconds=4.0)
        assert (resolver.entered, resolver.blocked) == (4, 4)
        for _ in range(10):
            publish(engine, {fast_org}, "release.issued")
        assert wait_for(lambda: delivered(engine, fast.id) == 10, seconds=30), (
            f"{delivered(engine, fast.id)} of 10 delivered beside the blocked lookups")
        assert resolver.blocked == 4  # delivered while the slow company's lookups were still blocked
        resolver.release.set()
        # Its lookups returned: its share is free, and its other eight endpoints are tried.
        assert wait_for(lambda: resolver.entered == 12, seconds=30)
    finally:
        resolver.release.set()
        stop.set()
        loop.join(timeout=60)
    assert not loop.is_alive(), "the pipeline did not stop"
    assert len(receiver.at("/fast")) == 10
    assert slow_timeouts() == 4  # recorded at the deadline, as any timeout; the late lookups wrote nothing


# ---- 2. a refused destination: one text, whatever the reason ----------------------------------------------


def test_a_refused_destination_reads_the_same_whether_unresolved_or_internal(
        engine: sa.Engine, caplog: pytest.LogCaptureFixture) -> None:
    """What the subscriber reads (last_error, its dead letters) cannot tell a name missing from the
    platform's DNS from one that resolves to an internal address; the server log can."""
    org, clock = make_org(engine), FakeClock()
    missing, _ = subscribe(engine, org, "https://missing.internal.example/x", ["release.*"])
    internal, _ = subscribe(engine, org, "https://db.internal.example/x", ["release.*"])

    def resolve(host: str, port: int) -> list[str]:
        if host == "missing.internal.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return ["10.0.0.7"]

    publish(engine, {org}, "release.issued")
    d = dispatcher(engine, clock, allow_local=False, resolve=resolve)
    with caplog.at_level(logging.WARNING, logger="quaygate.webhooks"):
        assert d.run_once() == 2
        for _ in range(8):  # through every retry, to the dead letters
            clock.advance(timedelta(hours=7))
            d.run_once()
    errors = {r.subscription_id: r.last_error for r in delivery_rows(engine)}
    assert errors == {missing.id: REFUSED, internal.id: REFUSED}
    dead = svc.list_dead_letters(SqlUnitOfWork(engine), org)
    assert {(x.status, x.last_error) for x in dead} == {("dead", REFUSED)} and len(dead) == 2
    logged = {r.getMessage() for r in caplog.records}
    assert {"release.webhook.refused.unresolved", "release.webhook.refused.internal_address"} <= logged


# ---- 3. finished deliveries are pruned past their retention -----------------------------------------------


def add_delivery(engine: sa.Engine, subscription_id: uuid.UUID, status: str, last: timedelta) -> uuid.UUID:
    """A delivery row whose last activity (next_attempt_at) was ``last`` before T0."""
    did = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(webhook_deliveries.insert().values(
            id=did, subscription_id=subscription_id, event_id=uuid.uuid4(), event_type="release.issued",
            payload={"driver": "someone", "plate": "1-ABC-123"}, status=status, attempts=1,
            next_attempt_at=T0 - last, created_at=T0 - last - timedelta(hours=1),
            delivered_at=T0 - last if status == "delivered" else None))
    return did


def test_finished_deliveries_are_pruned_past_their_retention_in_bounded_rounds(engine: sa.Engine) -> None:
    org = make_org(engine)
    sub, _ = subscribe(engine, org, "https://hooks.example.com/x", ["release.*"])
    days = timedelta(days=1)
    gone = [add_delivery(engine, sub.id, status, age) for status, age in (
        ("delivered", 31 * days), ("cancelled", 31 * days), ("dead", 91 * days), ("withheld", 91 * days),
        ("delivered", 400 * days))]
    kept = [add_delivery(engine, sub.id, status, age) for status, age in (
        ("delivered", 29 * days), ("cancelled", 29 * days),
        ("dead", 31 * days), ("withheld", 89 * days),  # dead letters are kept longer
        ("pending", 400 * days))]  # never a queued one, however old

    rounds = []
    while True:
        with engine.begin() as conn:
            n = prune_deliveries(conn, settled_before=T0 - 30 * days, dead_before=T0 - 90 * days, limit=2)
        rounds.append(n)
        if not n:
            break
    assert rounds == [2, 2, 1, 0]  # bounded per round; the worker runs rounds until none is left
    left = {r.id for r in delivery_rows(engine)}
    assert left == set(kept) and not left & set(gone)


def test_the_background_workers_prune_deliveries(engine: sa.Engine, database_url: str, tmp_path: Path) -> None:
    """As the service runs it (quaygate/workers.py): a loop of its own, with the retention settings."""
    org = make_org(engine)
    sub, _ = subscribe(engine, org, "https://hooks.example.com/x", ["release.*"])
    old = add_delivery(engine, sub.id, "delivered", timedelta(days=8))
    young = add_delivery(engine, sub.id, "delivered", timedelta(days=6))
    dead = add_delivery(engine, sub.id, "dead", timedelta(days=8))
    settings = settings_for(database_url, tmp_path, webhook_delivered_retention_days=7,
                            webhook_dead_retention_days=9)
    workers = BackgroundWorkers(Container(settings=settings, engine=engine, cache=make_cache(None),
                                          cipher=CIPHER, clock=SystemClock()))
    workers.start()
    try:
        assert wait_for(lambda: old not in {r.id for r in delivery_rows(engine)}, seconds=20)
    finally:
        workers.stop()
    assert {r.id for r in delivery_rows(engine)} == {young, dead}

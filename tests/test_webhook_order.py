"""A subscription gets the events of one right in the order they happened (review 171, finding 1).

Real receivers on 127.0.0.1, real SQLite and PostgreSQL, the rights changed through the use cases and the
gate's commit (on PostgreSQL its one-statement move, adapters/sqla/gate_move.py). Two events of one change
share their time, so their order must not be left to their deliveries' random ids; a delivery waiting for
a retry holds back the later deliveries of its right to the same endpoint (a dead letter ends the hold);
every payload carries the event's ``seq`` in the right's history, so a receiver can sort and see gaps.
"""
# ruff: noqa: F811 - ``receiver`` is a fixture imported here and requested by name

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import release_events, webhook_deliveries
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.adapters.webhook_dispatcher import WebhookDispatcher, _Outcome
from release_service.domain import webhooks as wh
from release_service.services import issue, lifecycle, transfers
from release_service.services import webhooks as svc

from .factories import do, issue_cmd, port
from .test_gate_verify import Gate, serve
from .test_webhooks import (  # noqa: F401 - receiver: a fixture requested by name
    CIPHER,
    FakeClock,
    Receiver,
    dispatcher,
    member,
    receiver,
)

RIGHTS = 20


def _subscribe(engine: sa.Engine, org: uuid.UUID, url: str, types: list[str]) -> uuid.UUID:
    return svc.create_subscription(SqlUnitOfWork(engine), CIPHER, member(org), url=url, event_types=types,
                                   now=datetime.now(UTC), allow_insecure_localhost=True)[0].id


def _drain(d: WebhookDispatcher, most: int = 500) -> int:
    """Rounds until nothing is due; how many were sent."""
    sent = 0
    for _ in range(most):
        n = d.run_once()
        if n == 0:
            return sent
        sent += n
    raise AssertionError("the queue did not drain")


def _received(receiver: Receiver, path: str) -> dict[str, list[dict[str, Any]]]:
    """Each right's payloads, in the order the receiver got them."""
    by_right: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in receiver.at(path):
        payload = json.loads(r.body)
        by_right[payload["release_id"]].append(payload)
    return by_right


def _seqs(engine: sa.Engine, rid: str) -> dict[str, int]:
    """Each event's seq in the right's history, by event id."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(release_events.c.id, release_events.c.seq)
                            .where(release_events.c.release_id == uuid.UUID(rid))).all()
    return {str(r.id): r.seq for r in rows}


def test_the_two_events_of_a_revocation_arrive_in_order_with_their_seq(engine: sa.Engine,
                                                                        receiver: Receiver) -> None:
    """A line revokes 20 rights, each with an offer pending: each revocation is ``release.revoked`` then
    ``release.transfer.cancelled`` (one transaction, one time). The offering company's endpoint gets
    them in that order for every right, each payload naming its seq (before: in the order of two uuid4
    ids, swapped for about half the rights, and no seq)."""
    p = port(engine)
    rights = [do(engine, lambda uow, n=n: issue.issue(uow, p.line, issue_cmd(p, n), datetime.now(UTC)))[0]
              for n in range(1, RIGHTS + 1)]
    for right in rights:
        do(engine, lambda uow, right=right: transfers.transfer(uow, p.fwd, right.id, p.haul.organisation_id,
                                                               datetime.now(UTC)))
    _subscribe(engine, p.fwd.organisation_id, receiver.url("/fwd"), ["release.*"])
    for right in rights:
        do(engine, lambda uow, right=right: lifecycle.revoke(uow, p.line, right.id, "fraud", datetime.now(UTC)))

    assert _drain(dispatcher(engine, FakeClock(datetime.now(UTC) + timedelta(seconds=1)))) == 2 * RIGHTS
    got = _received(receiver, "/fwd")
    order = {rid: [x["type"] for x in payloads] for rid, payloads in got.items()}
    in_order = ["release.revoked", "release.transfer.cancelled"]
    assert sum(types == in_order for types in order.values()) == RIGHTS, order
    for rid, payloads in got.items():
        seqs = _seqs(engine, rid)
        assert [x["seq"] for x in payloads] == [seqs[x["id"]] for x in payloads] == [3, 4]  # issued, requested


@pytest.fixture
def gate(engine: sa.Engine, tmp_path: Path) -> Iterator[Gate]:
    yield from serve(engine, tmp_path)


def test_the_gate_in_and_the_offer_it_cancels_arrive_in_order(gate: Gate, receiver: Receiver) -> None:
    """The gate's commit (on PostgreSQL one statement that writes the move, its events and their
    deliveries) of 20 rights, each offered on to another operator: the holder's endpoint gets
    ``release.gated_in`` then ``release.transfer.cancelled`` for each, with their seq."""
    p = gate.p
    rids = []
    for n in range(1, RIGHTS + 1):
        rid = gate.pickable(n)
        r = gate.http.post(f"/api/v1/releases/{rid}/transfers", headers=gate.as_("haul"),
                           json={"to_organisation_id": str(p.haul2.organisation_id)})
        assert r.status_code == 201, r.text
        rids.append(rid)
    _subscribe(gate.engine, p.haul.organisation_id, receiver.url("/haul"), ["release.*"])
    for n in range(1, RIGHTS + 1):
        r = gate.verify(gate.body(n, mode="commit"))
        assert (r.status_code, r.json()["committed"]) == (200, True), r.text

    assert _drain(dispatcher(gate.engine, FakeClock(datetime.now(UTC) + timedelta(seconds=1)))) == 2 * RIGHTS
    got = _received(receiver, "/haul")
    assert sorted(got) == sorted(rids)
    in_order = ["release.gated_in", "release.transfer.cancelled"]
    order = {rid: [x["type"] for x in payloads] for rid, payloads in got.items()}
    assert sum(types == in_order for types in order.values()) == RIGHTS, order
    for rid, payloads in got.items():
        seqs = _seqs(gate.engine, rid)
        assert [x["seq"] for x in payloads] == [seqs[x["id"]] for x in payloads]
        assert payloads[1]["seq"] == payloads[0]["seq"] + 1


def _blocked_then_unblocked(engine: sa.Engine, receiver: Receiver, path: str
                            ) -> tuple[WebhookDispatcher, FakeClock, uuid.UUID, datetime]:
    """A right blocked at T (its delivery answered 503 at T), then unblocked at T + 1 s; the clock at
    T + 2 s."""
    p = port(engine)
    t = datetime.now(UTC).replace(microsecond=0)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), t - timedelta(seconds=10)))
    _subscribe(engine, p.line.organisation_id, receiver.url(path), ["release.blocked", "release.unblocked"])
    do(engine, lambda uow: lifecycle.block(uow, p.line, right.id, "unpaid", t))
    receiver.status[path] = 503
    clock = FakeClock(t)
    d = dispatcher(engine, clock)
    assert d.run_once() == 1  # release.blocked: 503, a retry 5 s on
    do(engine, lambda uow: lifecycle.unblock(uow, p.line, right.id, "paid", t + timedelta(seconds=1)))
    clock.advance(timedelta(seconds=2))
    return d, clock, right.id, t


def _statuses(engine: sa.Engine) -> dict[str, tuple[str, int, datetime]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(webhook_deliveries.c.event_type, webhook_deliveries.c.status,
                                      webhook_deliveries.c.attempts, webhook_deliveries.c.next_attempt_at)).all()
    return {r.event_type: (r.status, r.attempts, r.next_attempt_at) for r in rows}


def test_a_retry_holds_back_the_later_events_of_its_right(engine: sa.Engine, receiver: Receiver) -> None:
    """``release.blocked`` answered 503, ``release.unblocked`` queued a second later: the unblock waits
    for the block's retry and goes after it, so the line's back end ends with the right unblocked
    (before: the unblock went at once, the block after it, and the back end ended with 'blocked')."""
    d, clock, rid, t = _blocked_then_unblocked(engine, receiver, "/line")
    assert d.run_once() == 0  # the unblock is held behind the block's retry
    # Held, it is not due before the block's retry (the claim does not read it again and again).
    assert _statuses(engine)["release.unblocked"][2] == t + timedelta(seconds=5)
    receiver.status["/line"] = 204
    clock.advance(timedelta(seconds=3))  # T + 5 s: the block's retry
    assert _drain(d) == 2
    got = [json.loads(r.body) for r in receiver.at("/line")]
    assert [x["type"] for x in got] == ["release.blocked", "release.blocked", "release.unblocked"]
    assert [x["seq"] for x in got] == [2, 2, 3]
    assert {k: v[:2] for k, v in _statuses(engine).items()} == {
        "release.blocked": ("delivered", 2), "release.unblocked": ("delivered", 1)}


def test_a_dead_letter_ends_the_hold(engine: sa.Engine, receiver: Receiver) -> None:
    """The block's delivery fails until it is dead (its retries spent): the unblock it held goes then."""
    d, clock, rid, t = _blocked_then_unblocked(engine, receiver, "/line")
    for delay in wh.RETRY_DELAYS:
        clock.advance(delay)
        assert d.run_once() == 1
        assert [json.loads(r.body)["type"] for r in receiver.at("/line")][-1] == "release.blocked"
    assert _statuses(engine)["release.blocked"][:2] == ("dead", wh.MAX_ATTEMPTS)
    receiver.status["/line"] = 204
    assert d.run_once() == 1
    assert json.loads(receiver.at("/line")[-1].body)["type"] == "release.unblocked"


def test_a_delivery_in_flight_holds_its_rights_next_from_another_replica(engine: sa.Engine,
                                                                          receiver: Receiver) -> None:
    """Two dispatchers (replicas): while one sends a right's first event, the other does not take its
    second (each process's one-send-per-subscription rule does not reach across processes)."""
    p = port(engine)
    t = datetime.now(UTC).replace(microsecond=0)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), t - timedelta(seconds=10)))
    sub = _subscribe(engine, p.line.organisation_id, receiver.url("/line"), ["release.blocked", "release.unblocked"])
    do(engine, lambda uow: lifecycle.block(uow, p.line, right.id, "unpaid", t))
    do(engine, lambda uow: lifecycle.unblock(uow, p.line, right.id, "paid", t))  # same time: queued after
    clock = FakeClock(t + timedelta(seconds=1))
    one, two = dispatcher(engine, clock), dispatcher(engine, clock)
    [first], _ = one._claim(clock.now(), limit=10)
    assert first.payload["type"] == "release.blocked" and first.subscription_id == sub
    assert two._claim(clock.now(), limit=10) == ([], 0)


def test_an_event_queued_while_the_one_before_it_is_sent_goes_once_that_one_is_delivered(
        engine: sa.Engine, receiver: Receiver) -> None:
    """The unblock is queued while the block is being sent: it waits behind the block's lease (not due
    meanwhile), and once the block is delivered it is due at once, not at the lease's end."""
    p = port(engine)
    t = datetime.now(UTC).replace(microsecond=0)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), t - timedelta(seconds=10)))
    _subscribe(engine, p.line.organisation_id, receiver.url("/line"), ["release.blocked", "release.unblocked"])
    do(engine, lambda uow: lifecycle.block(uow, p.line, right.id, "unpaid", t))
    clock = FakeClock(t + timedelta(seconds=1))
    d = dispatcher(engine, clock)
    [sending], _ = d._claim(clock.now(), limit=10)
    do(engine, lambda uow: lifecycle.unblock(uow, p.line, right.id, "paid", t + timedelta(seconds=1)))
    assert _statuses(engine)["release.unblocked"][2] == sending.lease_until
    assert d.run_once() == 0
    d._record(_Outcome(sending, 204, None))
    assert _statuses(engine)["release.unblocked"] == ("pending", 0, clock.now())
    assert d.run_once() == 1
    assert [json.loads(r.body)["type"] for r in receiver.at("/line")] == ["release.unblocked"]

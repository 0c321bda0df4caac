"""Webhooks stop for an organisation port security has deactivated (issue 4; a company cut off must not
go on receiving release events: container numbers, drivers, plates).

- No writer queues a delivery for it: the outbox (every use case's events, the batch issue, a ban
  alert) and the gate commit's one-statement move on PostgreSQL (adapters/sqla/gate_move.py), while
  an active organisation in the same audience still gets its own.
- A delivery queued before the deactivation, or waiting for a retry, is withheld by the real
  dispatcher (a final status), never sent, and not sent either when the organisation is reactivated.
- The organisation, active again, may send a withheld delivery itself (``redeliver``), as a dead one;
  deactivated, it cannot (``organisation_inactive``).

Real SQLite and PostgreSQL, a real HTTP receiver on 127.0.0.1 (tests/test_webhooks.py).
"""
# ruff: noqa: F811 - ``receiver`` is a fixture imported here and requested by name

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bans.alerts import ALERT_EVENT, NominationHit, raise_alerts
from quaygate.schema import audit_log, organisations, release_events, webhook_deliveries, webhook_subscriptions
from release_service.adapters.sqla.store import SqlReleaseStore
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain.errors import DomainError, ErrorCode
from release_service.services import issue, lifecycle
from release_service.services import webhooks as svc

from . import factories
from .test_gate_verify import Gate, serve
from .test_webhooks import (  # noqa: F401 - receiver: a fixture requested by name
    T0,
    FakeClock,
    Receiver,
    delivery_rows,
    dispatcher,
    independent_verify,
    make_org,
    member,
    publish,
    receiver,
    subscribe,
)


def set_active(engine: sa.Engine, org: uuid.UUID, active: bool) -> None:
    """Port security's deactivation (identity.organisations.set_active) as the release service reads it."""
    with engine.begin() as conn:
        done = conn.execute(organisations.update().where(organisations.c.id == org).values(active=active))
        assert done.rowcount == 1


def queued_for(engine: sa.Engine) -> dict[uuid.UUID, list[str]]:
    """The event types queued, per organisation, in alphabetical order."""
    subs, dels = webhook_subscriptions, webhook_deliveries
    with engine.connect() as conn:
        rows = conn.execute(sa.select(subs.c.organisation_id, dels.c.event_type)
                            .join(subs, subs.c.id == dels.c.subscription_id)
                            .order_by(dels.c.event_type)).all()
    out: dict[uuid.UUID, list[str]] = {}
    for org, event_type in rows:
        out.setdefault(org, []).append(event_type)
    return out


def subscribe_all(engine: sa.Engine, *orgs: uuid.UUID) -> None:
    for org in orgs:
        subscribe(engine, org, f"https://hooks.example.com/{org.hex}", ["release.*"])


# ---- 1. no writer queues a delivery for a deactivated organisation ---------------------------------------


def test_the_outbox_queues_nothing_for_a_deactivated_organisation(engine: sa.Engine) -> None:
    active, cut = make_org(engine), make_org(engine)
    subscribe_all(engine, active, cut)
    set_active(engine, cut, False)

    publish(engine, {active, cut}, "release.issued")
    publish(engine, {cut}, "release.revoked")  # an audience of the deactivated one alone: nothing at all
    assert queued_for(engine) == {active: ["release.issued"]}

    set_active(engine, cut, True)  # reactivated: its events are queued again, from now on
    publish(engine, {active, cut}, "release.blocked")
    assert queued_for(engine) == {active: ["release.blocked", "release.issued"], cut: ["release.blocked"]}


def test_a_change_of_a_right_queues_nothing_for_a_deactivated_party(engine: sa.Engine) -> None:
    """services/common.persist and record_events: the line blocks a right the forwarder holds, after port
    security cut the forwarder off. The line hears of it; the forwarder does not."""
    p = factories.port(engine)
    right, _ = factories.do(engine, lambda uow: issue.issue(uow, p.line, factories.issue_cmd(p), factories.now()))
    line, fwd = p.line.organisation_id, p.fwd.organisation_id
    assert line is not None and fwd is not None
    subscribe_all(engine, line, fwd)
    set_active(engine, fwd, False)

    factories.do(engine, lambda uow: lifecycle.block(uow, p.line, right.id, "fraud inquiry", factories.now()))
    assert queued_for(engine) == {line: ["release.blocked"]}


@pytest.mark.parametrize("batch", [False, True], ids=["issue", "batch"])
def test_an_issue_queues_nothing_for_an_organisation_deactivated_meanwhile(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, batch: bool) -> None:
    """The issue checks its recipient is active first; port security's deactivation may land after that
    check and before the events are queued (another transaction): the outbox reads the organisation's
    state as it writes, so the recipient, deactivated meanwhile, gets nothing (services/common.record_many,
    the batch's one statement for every right's events)."""
    p = factories.port(engine)
    line, fwd = p.line.organisation_id, p.fwd.organisation_id
    assert line is not None and fwd is not None
    subscribe_all(engine, line, fwd)
    add_many = SqlReleaseStore.add_many

    def deactivated_meanwhile(self: SqlReleaseStore, rights: Any) -> Any:
        self._conn.execute(organisations.update().where(organisations.c.id == fwd).values(active=False))
        return add_many(self, rights)

    monkeypatch.setattr(SqlReleaseStore, "add_many", deactivated_meanwhile)
    if batch:
        results = factories.do(engine, lambda uow: issue.issue_batch(
            uow, p.line, [factories.issue_cmd(p, n) for n in (1, 2)], factories.now()))
        assert [r.error for r in results] == [None, None]
    else:
        factories.do(engine, lambda uow: issue.issue(uow, p.line, factories.issue_cmd(p), factories.now()))
    issued = 2 if batch else 1
    assert queued_for(engine) == {line: ["release.issued"] * issued}
    with engine.connect() as conn:  # the rights and their events were written: only the webhooks are held back
        assert conn.execute(sa.select(sa.func.count()).select_from(release_events)).scalar_one() == issued


def test_a_ban_alert_queues_nothing_for_a_deactivated_holder(engine: sa.Engine) -> None:
    """identity/bans/alerts.py queues its webhook through the same outbox: the alert stays on the trail."""
    holder, other = make_org(engine), make_org(engine)
    for org in (holder, other):
        subscribe(engine, org, f"https://hooks.example.com/{org.hex}", [ALERT_EVENT])
    set_active(engine, holder, False)
    hits = [NominationHit(uuid.uuid4(), org, uuid.uuid4(), "BAN-1") for org in (holder, other)]
    with engine.begin() as conn:
        assert raise_alerts(conn, hits, T0) == 2
    assert queued_for(engine) == {other: [ALERT_EVENT]}
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)
                            .where(audit_log.c.kind == "screening.ban.nomination_alert")).scalar_one() == 2


@pytest.fixture
def gate(engine: sa.Engine, tmp_path: Path) -> Iterator[Gate]:
    yield from serve(engine, tmp_path)


def test_a_gate_move_queues_nothing_for_a_deactivated_party(gate: Gate) -> None:
    """The gate commit: on PostgreSQL the move's one statement (gate_move.py, its ``hooks`` CTE), on
    SQLite the outbox. The line, deactivated after it issued, hears nothing of the gate-in; the haulier
    company does. The gate itself is not refused for the line's state, nor for the terminal's
    (services/common.acting_organisation_active); a deactivated holder's right is (``holder_inactive``,
    tests/test_gate_holder_inactive.py)."""
    rid = gate.pickable(1)
    line, haul = gate.p.line.organisation_id, gate.p.haul.organisation_id
    assert line is not None and haul is not None
    with gate.engine.begin() as conn:
        conn.execute(webhook_deliveries.delete())  # the deliveries of the nomination and the lights
        conn.execute(webhook_subscriptions.delete())
    subscribe_all(gate.engine, line, haul)
    set_active(gate.engine, line, False)

    r = gate.verify(gate.body(1, mode="commit"))
    assert r.status_code == 200, r.text
    assert (r.json()["decision"], r.json()["committed"]) == ("allow", True)
    assert gate.state(rid) == "gated_in"
    assert queued_for(gate.engine) == {haul: ["release.gated_in"]}


# ---- 2. a delivery already queued is withheld by the dispatcher, and stays so ----------------------------


def test_a_pending_delivery_is_withheld_not_sent_and_not_sent_on_reactivation(
        engine: sa.Engine, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    active, cut, clock = make_org(engine), make_org(engine), FakeClock()
    subscribe(engine, active, receiver.url("/active"), ["release.*"])
    cut_sub, _ = subscribe(engine, cut, receiver.url("/cut"), ["release.*"])
    publish(engine, {active, cut}, "release.issued")  # queued while both were active
    set_active(engine, cut, False)

    with caplog.at_level(logging.INFO, logger="quaygate.webhooks"):
        assert dispatcher(engine, clock).run_once() == 2  # one sent, one withheld
    assert len(receiver.at("/active")) == 1
    assert receiver.at("/cut") == []
    rows = {r.subscription_id: r for r in delivery_rows(engine)}
    withheld = rows[cut_sub.id]
    assert (withheld.status, withheld.attempts, withheld.last_error, withheld.delivered_at) == (
        "withheld", 0, "organisation deactivated", None)
    logged = [r for r in caplog.records if r.getMessage() == "release.webhook.withheld.organisation_inactive"]
    assert [r.fields["delivery_id"] for r in logged] == [str(withheld.id)]  # type: ignore[attr-defined]

    set_active(engine, cut, True)  # reactivated: what was withheld stays withheld
    clock.advance(timedelta(days=2))
    assert dispatcher(engine, clock).run_once() == 0
    assert receiver.at("/cut") == []
    assert {r.subscription_id: r.status for r in delivery_rows(engine)}[cut_sub.id] == "withheld"
    # The organisation finds it among its dead letters (and may send it again: below).
    [listed] = svc.list_dead_letters(SqlUnitOfWork(engine), cut)
    assert (listed.id, listed.status) == (withheld.id, "withheld")


def test_a_delivery_waiting_for_a_retry_is_withheld_when_it_falls_due(engine: sa.Engine,
                                                                      receiver: Receiver) -> None:
    org, clock = make_org(engine), FakeClock()
    subscribe(engine, org, receiver.url("/down"), ["release.*"])
    receiver.status["/down"] = 500
    publish(engine, {org}, "release.issued")
    d = dispatcher(engine, clock)
    assert d.run_once() == 1  # the first try fails: a retry in 5 s
    set_active(engine, org, False)
    clock.advance(timedelta(seconds=5))

    assert d.run_once() == 1  # taken from the queue, not sent
    assert len(receiver.at("/down")) == 1
    [row] = delivery_rows(engine)
    assert (row.status, row.attempts, row.last_error) == ("withheld", 1, "organisation deactivated")
    clock.advance(timedelta(days=2))
    assert d.run_once() == 0 and len(receiver.at("/down")) == 1


# ---- 3. redelivery of a withheld delivery -----------------------------------------------------------------


def test_a_withheld_delivery_is_redelivered_only_by_its_organisation_active_again(
        engine: sa.Engine, receiver: Receiver) -> None:
    org, other, clock = make_org(engine), make_org(engine), FakeClock()
    _, secret = subscribe(engine, org, receiver.url("/hook"), ["release.*"])
    event_id = publish(engine, {org}, "release.issued")
    set_active(engine, org, False)
    assert dispatcher(engine, clock).run_once() == 1
    [row] = delivery_rows(engine)
    assert row.status == "withheld"

    uow = SqlUnitOfWork(engine)
    with pytest.raises(DomainError) as err:  # deactivated: refused, nothing changes
        svc.redeliver(uow, member(org), row.id, now=clock.now())
    assert err.value.code is ErrorCode.ORGANISATION_INACTIVE
    assert delivery_rows(engine)[0].status == "withheld"

    set_active(engine, org, True)
    with pytest.raises(DomainError) as err:  # another organisation's: as if it did not exist
        svc.redeliver(uow, member(other), row.id, now=clock.now())
    assert err.value.code is ErrorCode.NOT_FOUND
    again = svc.redeliver(uow, member(org), row.id, now=clock.now())
    assert (again.status, again.attempts) == ("pending", 0)
    assert dispatcher(engine, clock).run_once() == 1
    [got] = receiver.at("/hook")
    assert independent_verify(secret, got.headers, got.body, clock.now())
    assert got.headers["webhook-id"] == str(row.id) and json.loads(got.body)["id"] == str(event_id)
    assert delivery_rows(engine)[0].status == "delivered"
    assert svc.list_dead_letters(uow, org) == []
    with pytest.raises(DomainError) as err:
        svc.redeliver(uow, member(org), row.id, now=clock.now())
    assert err.value.code is ErrorCode.ILLEGAL_TRANSITION

"""A gate commit's write (services/verify._write, adapters/sqla/gate_move.py): the decision and the
gate move with its events, audit entries and webhook deliveries, at once and only at the version the
right was read; on PostgreSQL one autocommitted statement, on SQLite statements in one transaction.

Each test fails if the part it holds is taken out: the version guard (a right blocked between the
read and the write would be let through), the decision's unique key rolling the move back, the
subscriptions' audience and event-type patterns, the audit entry's seq and txid."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import (
    audit_log,
    gate_decisions,
    release_events,
    releases,
    transfers,
    webhook_deliveries,
    webhook_subscriptions,
)
from release_service.adapters.sqla.store import SqlReleaseStore
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain.parties import Actor, OrgKind
from release_service.domain.webhooks import KNOWN_EVENT_TYPES, matches, patterns_matching
from release_service.ports import DuplicateDecision, RightsRead

from .factories import TERMINAL
from .test_gate_verify import Gate, serve
from .test_release_api import assert_problem


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def gate(engine: sa.Engine, tmp_path: Path) -> Iterator[Gate]:
    yield from serve(engine, tmp_path)


@pytest.fixture
def pg_gate(pg_engine: sa.Engine, tmp_path: Path) -> Iterator[Gate]:
    yield from serve(pg_engine, tmp_path)


def _subscribe(engine: sa.Engine, organisation_id: uuid.UUID, types: list[str], *, active: bool = True) -> uuid.UUID:
    sid = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(webhook_subscriptions.insert().values(
            id=sid, organisation_id=organisation_id, url="https://hooks.example/q", secret_enc="x",
            event_types=types, active=active, created_at=_now()))
    return sid


def _counts(engine: sa.Engine, rid: uuid.UUID) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            "version": conn.execute(sa.select(releases.c.version).where(releases.c.id == rid)).scalar_one(),
            "state": conn.execute(sa.select(releases.c.state).where(releases.c.id == rid)).scalar_one(),
            "events": conn.execute(sa.select(sa.func.count()).select_from(release_events)
                                   .where(release_events.c.release_id == rid)).scalar_one(),
            "audit": conn.execute(sa.select(sa.func.count()).select_from(audit_log)
                                  .where(audit_log.c.subject == str(rid))).scalar_one(),
            "deliveries": conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries)).scalar_one(),
            "decisions": conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)
                                      .where(gate_decisions.c.release_id == rid)).scalar_one(),
        }


def test_a_gate_in_writes_the_move_its_trail_its_webhooks_and_the_decision(gate: Gate) -> None:
    rid = gate.pickable(1)
    p = gate.p
    wanted = _subscribe(gate.engine, p.haul.organisation_id, ["release.*"])  # the nominator: in the audience
    _subscribe(gate.engine, p.haul.organisation_id, ["release.transfer.*"])  # another kind of event
    _subscribe(gate.engine, p.haul.organisation_id, ["release.gated_in"], active=False)  # switched off
    _subscribe(gate.engine, p.terminal.organisation_id, ["release.gated_in"])  # not in the right's audience
    before = _counts(gate.engine, uuid.UUID(rid))

    r = gate.verify(gate.body(1, mode="commit"))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["decision"], answer["committed"]) == ("allow", True)

    after = _counts(gate.engine, uuid.UUID(rid))
    assert after["state"] == "gated_in"
    assert after["version"] == before["version"] + 1
    assert (after["events"], after["audit"], after["decisions"]) == (
        before["events"] + 1, before["audit"] + 1, before["decisions"] + 1)
    with gate.engine.connect() as conn:
        event = conn.execute(sa.select(release_events).where(release_events.c.release_id == uuid.UUID(rid))
                             .order_by(release_events.c.seq.desc()).limit(1)).mappings().one()
        assert event["seq"] == before["events"] + 1  # the right's own counter: no gap, no twin
        data = {"decision_id": answer["decision_id"], "state": "gated_in"}
        assert (event["type"], event["data"]) == ("release.gated_in", data)
        entry = conn.execute(sa.select(audit_log).where(audit_log.c.subject == rid)
                             .order_by(audit_log.c.id.desc()).limit(1)).mappings().one()
        assert entry["kind"] == "release.gated_in"
        assert entry["data"] == {"seq": event["seq"], **data}
        assert entry["actor"] == event["actor"]
        if conn.dialect.name == "postgresql":
            assert entry["txid"] is not None  # the sealer chains only rows whose writers have finished
        hooks = conn.execute(sa.select(webhook_deliveries)).mappings().all()
        moved = [h for h in hooks if h["event_id"] == event["id"]]
        assert [h["subscription_id"] for h in moved] == [wanted]
        assert moved[0]["status"] == "pending" and moved[0]["attempts"] == 0
        assert moved[0]["release_id"] == uuid.UUID(rid) and moved[0]["ordinal"] is not None  # its queue
        assert moved[0]["payload"] == {"id": str(event["id"]), "type": "release.gated_in",
                                       "timestamp": event["at"].isoformat(), "release_id": rid,
                                       "seq": event["seq"], "data": data}
        decision = conn.execute(sa.select(gate_decisions)
                                .where(gate_decisions.c.id == uuid.UUID(answer["decision_id"]))).mappings().one()
        assert decision["committed"] is True and decision["response"] == answer


def test_a_right_blocked_between_the_read_and_the_write_is_decided_again(
        pg_gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """The right is read without a lock; the shipping line blocks it (a versioned save) right after.
    The write updates nothing, the gate reads again and refuses: without the version guard it would
    let the truck in on a blocked right."""
    rid = pg_gate.pickable(1)
    original = SqlReleaseStore.of_containers
    blocked: list[uuid.UUID] = []

    def read_then_block(self: SqlReleaseStore, containers: Any) -> Any:
        rights = original(self, containers)
        if not blocked:
            blocked.append(rights[0].id)
            with pg_gate.engine.begin() as other:
                other.execute(releases.update().where(releases.c.id == rights[0].id)
                              .values(blocked=True, version=releases.c.version + 1))
        return rights

    monkeypatch.setattr(SqlReleaseStore, "of_containers", read_then_block)
    r = pg_gate.verify(pg_gate.body(1, mode="commit"))
    assert r.status_code == 200, r.text
    assert (r.json()["decision"], r.json()["reasons"], r.json()["committed"]) == ("deny", ["right_blocked"], False)
    assert blocked == [uuid.UUID(rid)]
    after = _counts(pg_gate.engine, uuid.UUID(rid))
    assert after["state"] == "nominated"
    assert after["decisions"] == 1  # the refusal only


def _moved_right(engine: sa.Engine, rid: uuid.UUID, decision_id: uuid.UUID) -> tuple[Any, Actor]:
    actor = Actor(client_id="gate-1", kind=OrgKind.TERMINAL, organisation_id=None, terminal_code=TERMINAL)
    with SqlUnitOfWork(engine) as uow:
        right = uow.releases.get(rid)
    assert right is not None
    right.gate_in(by=actor, now=_now(), decision_id=decision_id)
    return right, actor


def _alone(right: Any) -> RightsRead:
    """The rights a gate read beside ``right``: its container's only one, at its version."""
    return RightsRead.of([right.container.value], [right])


def _decision_row(rid: uuid.UUID, decision_id: uuid.UUID, request_id: str) -> dict[str, Any]:
    now = _now()
    return {"id": decision_id, "terminal": TERMINAL, "request_id": request_id, "client_id": "gate-1",
            "lane": "in-1", "direction": "in", "mode": "commit", "fingerprint": "f" * 64, "decision": "allow",
            "reasons": [], "release_id": rid, "container_number": None, "committed": True,
            "response": {"decision": "allow"}, "observed_at": now, "decided_at": now}


def test_a_stale_right_writes_nothing(pg_gate: Gate) -> None:
    rid = uuid.UUID(pg_gate.pickable(1))
    _subscribe(pg_gate.engine, pg_gate.p.haul.organisation_id, ["release.*"])
    decision_id = uuid.uuid4()
    right, _ = _moved_right(pg_gate.engine, rid, decision_id)
    with pg_gate.engine.begin() as other:  # any committed change of the right: a new version
        other.execute(releases.update().where(releases.c.id == rid).values(version=releases.c.version + 1))
    before = _counts(pg_gate.engine, rid)
    with SqlUnitOfWork(pg_gate.engine, autocommit=True) as uow:
        assert uow.gate.moves_at_once
        assert uow.gate.record_move(_decision_row(rid, decision_id, "stale-1"), right,
                                    [frozenset({pg_gate.p.haul.organisation_id})], _alone(right)) is False
        uow.commit()
    assert _counts(pg_gate.engine, rid) == before  # no move, event, audit entry, delivery nor decision
    assert right.pending_events  # still the caller's: nothing was saved


def test_a_twin_decision_rolls_the_whole_move_back(pg_gate: Gate) -> None:
    rid = uuid.UUID(pg_gate.pickable(1))
    _subscribe(pg_gate.engine, pg_gate.p.haul.organisation_id, ["release.*"])
    with pg_gate.engine.begin() as conn:  # the twin recorded first (a refusal, say)
        conn.execute(gate_decisions.insert().values(_decision_row(None, uuid.uuid4(), "twin-1")))  # type: ignore[arg-type]
    decision_id = uuid.uuid4()
    right, _ = _moved_right(pg_gate.engine, rid, decision_id)
    before = _counts(pg_gate.engine, rid)
    with SqlUnitOfWork(pg_gate.engine, autocommit=True) as uow, pytest.raises(DuplicateDecision):
        uow.gate.record_move(_decision_row(rid, decision_id, "twin-1"), right,
                             [frozenset({pg_gate.p.haul.organisation_id})], _alone(right))
    assert _counts(pg_gate.engine, rid) == before  # the UPDATE ran first in the statement: rolled back with it
    # The connection is usable and the move can still be written under another request_id.
    with SqlUnitOfWork(pg_gate.engine, autocommit=True) as uow:
        assert uow.gate.record_move(_decision_row(rid, decision_id, "twin-2"), right,
                                    [frozenset({pg_gate.p.haul.organisation_id})], _alone(right)) is True
        uow.commit()
    after = _counts(pg_gate.engine, rid)
    assert (after["state"], after["version"], after["events"], after["deliveries"]) == (
        "gated_in", before["version"] + 1, before["events"] + 1, before["deliveries"] + 1)


def test_the_patterns_of_an_event_are_exactly_those_that_match_it() -> None:
    """The store finds an event's subscriptions by these patterns (``?|``), ``matches`` decides for the
    dispatcher: the same rule, for every known type and every pattern a subscription may hold."""
    types = sorted(KNOWN_EVENT_TYPES)
    prefixes = {t.rsplit(".", n)[0] for t in types for n in range(1, t.count(".") + 1)}
    patterns = types + [p + ".*" for p in prefixes] + ["release", "release.", "*", "release.gated_in.*"]
    for event_type, pattern in itertools.product(types, patterns):
        assert (pattern in patterns_matching(event_type)) == matches([pattern], event_type), (event_type, pattern)


def a_pending_transfer_is_cancelled_by_the_gate_in(gate: Gate, n: int) -> None:
    """The holder nominated its driver, then offered the right to another operator; the nominated truck
    comes first. The gate-in cancels the offer (an accept would now fail for ever): the transfer row is
    ``cancelled``, the recipient is told (``release.transfer.cancelled`` after ``release.gated_in``,
    a webhook delivery of its own) and no longer reads the right; the one commit answer says allow."""
    rid = gate.pickable(n)
    p = gate.p
    heard = _subscribe(gate.engine, p.haul2.organisation_id, ["release.transfer.*"])
    r = gate.http.post(f"/api/v1/releases/{rid}/transfers", headers=gate.as_("haul"),
                       json={"to_organisation_id": str(p.haul2.organisation_id)})
    assert r.status_code == 201, r.text
    tid = r.json()["transfer"]["id"]

    r = gate.verify(gate.body(n, mode="commit"))
    assert r.status_code == 200, r.text
    assert (r.json()["decision"], r.json()["committed"]) == ("allow", True)

    assert gate.state(rid) == "gated_in"
    with gate.engine.connect() as conn:
        row = conn.execute(sa.select(transfers).where(transfers.c.id == uuid.UUID(tid))).mappings().one()
        assert (row["state"], row["pending_key"]) == ("cancelled", None)
        assert row["decided_at"] is not None
        last = conn.execute(sa.select(release_events.c.type, release_events.c.data, release_events.c.id)
                            .where(release_events.c.release_id == uuid.UUID(rid))
                            .order_by(release_events.c.seq.desc()).limit(2)).all()
        assert [e.type for e in reversed(last)] == ["release.gated_in", "release.transfer.cancelled"]
        assert last[0].data == {"transfer_id": tid, "from": str(p.haul.organisation_id),
                                "to": str(p.haul2.organisation_id), "state": "gated_in"}
        told = conn.execute(sa.select(webhook_deliveries.c.event_type)
                            .where(webhook_deliveries.c.subscription_id == heard)
                            .order_by(webhook_deliveries.c.created_at)).scalars().all()
        assert told == ["release.transfer.requested", "release.transfer.cancelled"]
    r = gate.http.post(f"/api/v1/transfers/{tid}/accept", headers=gate.as_("haul2"))
    assert_problem(r, 409, "transfer_not_pending")
    assert_problem(gate.http.get(f"/api/v1/releases/{rid}", headers=gate.as_("haul2")), 404, "not_found")


def test_a_gate_in_cancels_a_transfer_still_pending(gate: Gate) -> None:
    a_pending_transfer_is_cancelled_by_the_gate_in(gate, 1)


def test_a_revocation_and_a_withdrawal_tell_the_recipient_of_the_offer(gate: Gate) -> None:
    """The company offered a right hears when the offer ends without its word: the sender withdrew it
    (``release.transfer.withdrawn`` names both ends) or the line revoked the right
    (``release.transfer.cancelled``)."""
    p = gate.p
    heard = _subscribe(gate.engine, p.haul2.organisation_id, ["release.transfer.*"])
    told: list[str] = []
    for n, end in ((1, "withdraw"), (2, "revoke")):
        rid = str(gate.issue(n, release_to_organisation_id=str(p.haul.organisation_id))["release"]["id"])
        r = gate.http.post(f"/api/v1/releases/{rid}/transfers", headers=gate.as_("haul"),
                           json={"to_organisation_id": str(p.haul2.organisation_id)})
        assert r.status_code == 201, r.text
        tid = r.json()["transfer"]["id"]
        if end == "withdraw":
            r = gate.http.post(f"/api/v1/transfers/{tid}/withdraw", headers=gate.as_("haul"))
        else:
            r = gate.http.post(f"/api/v1/releases/{rid}/revoke", headers=gate.as_("line"), json={"reason": "fraud"})
        assert r.status_code == 200, r.text
        with gate.engine.connect() as conn:
            told = conn.execute(sa.select(webhook_deliveries.c.event_type)
                                .where(webhook_deliveries.c.subscription_id == heard)
                                .order_by(webhook_deliveries.c.created_at)).scalars().all()
    assert told == ["release.transfer.requested", "release.transfer.withdrawn",
                    "release.transfer.requested", "release.transfer.cancelled"]


def test_a_decline_is_told_to_both_ends(gate: Gate) -> None:
    """Review 170, finding 4: ``release.transfer.declined`` names both ends, as the withdrawal does, so
    the declining company's own webhooks hear its decline too (before, the event named neither and its
    audience was the line and the holder only: the decliner heard the offer and never its end)."""
    p = gate.p
    decliner = _subscribe(gate.engine, p.haul2.organisation_id, ["release.*"])
    sender = _subscribe(gate.engine, p.haul.organisation_id, ["release.transfer.*"])
    rid = str(gate.issue(1, release_to_organisation_id=str(p.haul.organisation_id))["release"]["id"])
    r = gate.http.post(f"/api/v1/releases/{rid}/transfers", headers=gate.as_("haul"),
                       json={"to_organisation_id": str(p.haul2.organisation_id)})
    assert r.status_code == 201, r.text
    tid = r.json()["transfer"]["id"]
    r = gate.http.post(f"/api/v1/transfers/{tid}/decline", headers=gate.as_("haul2"), json={"reason": "no truck"})
    assert r.status_code == 200, r.text
    with gate.engine.connect() as conn:
        told = {sid: conn.execute(sa.select(webhook_deliveries.c.event_type)
                                  .where(webhook_deliveries.c.subscription_id == sid)
                                  .order_by(webhook_deliveries.c.created_at)).scalars().all()
                for sid in (decliner, sender)}
        declined = conn.execute(sa.select(release_events.c.data)
                                .where(release_events.c.release_id == uuid.UUID(rid))
                                .where(release_events.c.type == "release.transfer.declined")).scalar_one()
    assert told[decliner] == ["release.transfer.requested", "release.transfer.declined"]
    assert told[sender] == ["release.transfer.requested", "release.transfer.declined"]
    assert declined == {"transfer_id": tid, "from": str(p.haul.organisation_id),
                        "to": str(p.haul2.organisation_id), "reason": "no truck", "state": "active"}
    # The sender reads it in full on the right's events (disclosure: a transfer it was party to); the
    # decliner, which never held the right, reads the right no more (common.can_see), as before.
    r = gate.http.get(f"/api/v1/releases/{rid}/events", headers=gate.as_("haul"))
    assert r.status_code == 200, r.text
    [event] = [e for e in r.json()["items"] if e["type"] == "release.transfer.declined"]
    assert (event["data"]["from"], event["data"]["to"]) == (str(p.haul.organisation_id), str(p.haul2.organisation_id))

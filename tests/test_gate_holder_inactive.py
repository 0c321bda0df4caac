"""Port security's deactivation of a company stops what it set in motion (review 130, finding 1).

Proved by the review: forwarder F sends a transfer to an accomplice haulier H, port security deactivates F,
and H still accepted (200), nominated and collected; a deactivated holding haulier's nominated truck was
still let in at gate-in. Now:

- the deactivation cancels each transfer the company sent or was sent that is still pending (events, audit,
  the other end's webhook), tells the line of each live right it holds (``release.holder_deactivated``),
  and a transfer whose sender is inactive is not accepted (``organisation_inactive``, 409);
- the gate refuses a right whose holder is inactive: ``deny`` ``holder_inactive``, in check and commit mode,
  both ways, not overridable, from PostgreSQL and from the Redis hot path (the deactivation invalidates every
  cached rights copy, pending before its commit), and a commit that read the right before the deactivation
  writes nothing (the deactivation moved the right's version) and decides again; no offline gate pass is
  issued for such a right;
- a reactivation lets the rights through again (the line hears), the cancelled transfers stay cancelled.
"""
# ruff: noqa: F811 - ``gate`` is a fixture imported here and requested by name

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.grants import grants_for
from identity.organisations import set_active
from quaygate.schema import audit_log, organisations, release_events, releases, transfers, webhook_deliveries
from release_service.adapters.gate_facts import RedisGateFacts
from release_service.adapters.sqla.store import SqlReleaseStore
from release_service.domain.release import ReleaseRight

from .test_gate_facts import Statements, _lost_after_its_mark, _other_process, _serve
from .test_gate_offline import passes, payload
from .test_gate_person_suspended import _admin, _now, outcome, verify
from .test_gate_verify import Gate, gate, serve  # noqa: F401
from .test_release_api import assert_problem
from .test_webhook_org_inactive import queued_for, subscribe_all

INACTIVE = {"decision": "deny", "reasons": ["holder_inactive"], "committed": False}


def _status(gate: Gate, org: uuid.UUID | None, active: bool) -> None:
    """Port security's deactivation or reactivation, through the admin API."""
    verb = "reactivate" if active else "deactivate"
    r = gate.http.post(f"/admin/v1/organisations/{org}:{verb}", headers=_admin(gate),
                       json={"reason": "suspected fraud" if not active else "cleared"})
    assert r.status_code == 200 and r.json()["active"] is active, r.text


def _transfer(gate: Gate, rid: str, who: str, to: uuid.UUID | None) -> Any:
    return gate.http.post(f"/api/v1/releases/{rid}/transfers", json={"to_organisation_id": str(to)},
                          headers=gate.as_(who))


def _transfer_state(gate: Gate, tid: str) -> str:
    with gate.engine.connect() as conn:
        return str(conn.execute(sa.select(transfers.c.state).where(transfers.c.id == uuid.UUID(tid))).scalar_one())


def _events(gate: Gate, rid: str) -> list[tuple[str, dict[str, Any]]]:
    with gate.engine.connect() as conn:
        return [(t, d) for t, d in conn.execute(sa.select(release_events.c.type, release_events.c.data)
                                                .where(release_events.c.release_id == uuid.UUID(rid))
                                                .order_by(release_events.c.seq))]


def _override(gate: Gate, decision: dict[str, Any]) -> Any:
    return gate.http.post("/gate/v1/overrides", headers={"Authorization": f"Bearer {gate.gate_token}"},
                          json={"decision_id": decision["decision_id"], "reason": "the desk knows him"})


# ---- transfers -----------------------------------------------------------------------------------


def test_a_deactivation_cancels_the_pending_transfer_and_tells_the_line(gate: Gate) -> None:
    """The review's case: F sends to H, port security deactivates F. H accepts nothing (the transfer is
    cancelled, as a withdrawal would end it: an event, an audit entry, H's webhook), and the line hears that
    the holder of its right is deactivated. F's reactivation tells the line again; the transfer stays
    cancelled."""
    p = gate.p
    line, fwd, haul = p.line.organisation_id, p.fwd.organisation_id, p.haul.organisation_id
    assert line is not None and fwd is not None and haul is not None
    rid = str(gate.issue(1)["release"]["id"])  # held by the forwarder
    sent = _transfer(gate, rid, "fwd", haul)
    assert sent.status_code == 201, sent.text
    tid = sent.json()["transfer"]["id"]
    with gate.engine.begin() as conn:
        conn.execute(webhook_deliveries.delete())
    subscribe_all(gate.engine, line, fwd, haul)

    _status(gate, fwd, False)
    assert_problem(gate.http.post(f"/api/v1/transfers/{tid}/accept", headers=gate.as_("haul")),
                   409, "transfer_not_pending")
    assert _transfer_state(gate, tid) == "cancelled"
    (cancelled, said), (told, data) = _events(gate, rid)[-2:]
    assert (cancelled, said["reason"], said["from"], said["to"]) == (
        "release.transfer.cancelled", "organisation_deactivated", str(fwd), str(haul))
    assert (told, data["holder"]) == ("release.holder_deactivated", str(fwd))
    # The deactivated forwarder hears nothing (its webhooks stop with it); the line and the haulier do.
    assert queued_for(gate.engine) == {line: ["release.holder_deactivated", "release.transfer.cancelled"],
                                       haul: ["release.transfer.cancelled"]}
    with gate.engine.connect() as conn:
        kinds = set(conn.execute(sa.select(audit_log.c.kind).where(audit_log.c.subject == rid)).scalars())
        entry = conn.execute(sa.select(audit_log.c.data).where(
            audit_log.c.kind == "identity.admin.organisation.deactivated")).scalar_one()
    assert {"release.transfer.cancelled", "release.holder_deactivated"} <= kinds
    assert (entry["rights"], entry["transfers_cancelled"]) == ([rid], 1)

    _status(gate, fwd, True)
    assert _transfer_state(gate, tid) == "cancelled"
    assert _events(gate, rid)[-1][0] == "release.holder_reactivated"
    assert queued_for(gate.engine)[line] == ["release.holder_deactivated", "release.holder_reactivated",
                                             "release.transfer.cancelled"]
    assert_problem(gate.http.post(f"/api/v1/transfers/{tid}/accept", headers=gate.as_("haul")),
                   409, "transfer_not_pending")


def test_a_transfer_whose_sender_is_inactive_is_not_accepted(gate: Gate) -> None:
    """A transfer still pending with an inactive sender (deactivated in a race with the transfer, or before
    this mend): the recipient's accept is 409 organisation_inactive; it may decline."""
    rid = str(gate.issue(2)["release"]["id"])
    haul = gate.p.haul.organisation_id
    tid = _transfer(gate, rid, "fwd", haul).json()["transfer"]["id"]
    with gate.engine.begin() as conn:  # the row as a deactivation that missed this transfer leaves it
        conn.execute(organisations.update().where(organisations.c.id == gate.p.fwd.organisation_id)
                     .values(active=False))
    got = gate.http.post(f"/api/v1/transfers/{tid}/accept", headers=gate.as_("haul"))
    assert_problem(got, 409, "organisation_inactive")
    assert "sender" in got.json()["detail"]
    with gate.engine.connect() as conn:
        assert conn.execute(sa.select(releases.c.holder_organisation_id)
                            .where(releases.c.id == uuid.UUID(rid))).scalar_one() == gate.p.fwd.organisation_id
    r = gate.http.post(f"/api/v1/transfers/{tid}/decline", headers=gate.as_("haul"), json={"reason": "not ours"})
    assert r.status_code == 200, r.text


# ---- the gate: PostgreSQL (and SQLite), the in-process cache ---------------------------------------


def test_a_deactivated_holders_truck_is_denied_and_let_in_again_once_reactivated(gate: Gate) -> None:
    rid = gate.pickable(4)
    haul = gate.p.haul.organisation_id
    assert verify(gate, 4)["decision"] == "allow"
    _status(gate, haul, False)
    assert outcome(verify(gate, 4)) == INACTIVE
    refused = verify(gate, 4, mode="commit")
    assert outcome(refused) == INACTIVE
    assert gate.state(rid) == "nominated"  # no right used; the nomination stays
    # Not the desk's to set aside; nor is it, set aside otherwise (a plate the desk could vouch for).
    got = _override(gate, refused)
    assert_problem(got, 409, "illegal_transition")
    assert got.json()["reasons"] == ["holder_inactive"]
    wrong_plate = verify(gate, 4, mode="commit", plate={"text": "9ZZZ999", "country": "BE", "confidence": 0.99})
    assert set(wrong_plate["reasons"]) == {"holder_inactive", "plate_mismatch"}
    assert gate.state(rid) == "nominated"

    _status(gate, haul, True)
    assert verify(gate, 4)["decision"] == "allow"
    got = verify(gate, 4, mode="commit")
    assert (got["decision"], got["committed"]) == ("allow", True), got
    assert gate.state(rid) == "gated_in"


def test_an_override_of_an_earlier_refusal_is_refused_once_the_holder_is_deactivated(gate: Gate) -> None:
    rid = gate.pickable(5)
    refused = verify(gate, 5, mode="commit", plate={"text": "9ZZZ999", "country": "BE", "confidence": 0.99})
    assert refused["reasons"] == ["plate_mismatch"]
    _status(gate, gate.p.haul.organisation_id, False)
    got = _override(gate, refused)
    assert_problem(got, 409, "organisation_inactive")
    assert gate.state(rid) == "nominated"


def test_a_deactivated_holders_container_does_not_leave_either(gate: Gate) -> None:
    rid = gate.pickable(6)
    assert verify(gate, 6, mode="commit")["committed"] is True
    _status(gate, gate.p.haul.organisation_id, False)
    assert outcome(verify(gate, 6, mode="commit", direction="out")) == INACTIVE
    assert gate.state(rid) == "gated_in"
    _status(gate, gate.p.haul.organisation_id, True)
    assert verify(gate, 6, mode="commit", direction="out")["committed"] is True


def test_no_gate_pass_is_issued_for_a_deactivated_holders_rights(gate: Gate) -> None:
    """Offline, a lane would let the truck in on it (docs/gate-offline.md: one issued before stays good for
    its lifetime). Another holder's rights keep theirs; a reactivation gives them back."""
    mine = gate.pickable(7)
    inside = gate.pickable(8)
    assert verify(gate, 8, mode="commit")["committed"] is True
    theirs = gate.pickable(9)
    with gate.engine.begin() as conn:
        conn.execute(releases.update().where(releases.c.id == uuid.UUID(theirs))
                     .values(holder_organisation_id=gate.p.haul2.organisation_id))

    def subjects() -> set[str]:
        r = passes(gate)
        assert r.status_code == 200, r.text
        return {payload(t)["sub"] for t in r.json()["passes"]}

    assert subjects() == {mine, inside, theirs}
    _status(gate, gate.p.haul.organisation_id, False)
    assert subjects() == {theirs}
    _status(gate, gate.p.haul.organisation_id, True)
    assert subjects() == {mine, inside, theirs}


@pytest.fixture
def pg_gate(pg_engine: sa.Engine, tmp_path: Path) -> Iterator[Gate]:
    yield from serve(pg_engine, tmp_path)


def test_a_commit_that_read_the_right_before_the_deactivation_decides_again(
        pg_gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit reads its right unlocked, decides, then writes at the version it read. Port security's
    deactivation commits in between: it moved the right's version (its ``release.holder_deactivated``), so
    the move writes nothing, and the commit reads again and refuses."""
    gate = pg_gate
    rid = gate.pickable(10)
    haul = gate.p.haul.organisation_id
    assert haul is not None
    read = SqlReleaseStore.of_containers
    done: list[bool] = []

    def then_deactivated(store: SqlReleaseStore, containers: Any) -> list[ReleaseRight]:
        found = read(store, containers)
        if not done:
            done.append(True)
            set_active(gate.engine, grants_for(gate.http.app), haul, active=False, actor="admin-client",
                       reason="suspected fraud", now=_now(), access_token_ttl=600)
        return found

    monkeypatch.setattr(SqlReleaseStore, "of_containers", then_deactivated)
    got = verify(gate, 10, mode="commit")
    assert done and outcome(got) == INACTIVE, got
    assert gate.state(rid) == "nominated"


# ---- the cached path: PostgreSQL and Redis ------------------------------------------------------------


@pytest.fixture
def cached(pg_engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[Gate]:
    yield from _serve(pg_engine, tmp_path, redis_url)


def test_a_deactivation_is_seen_by_the_next_decision_on_rights_cached_before_it(cached: Gate) -> None:
    gate = cached
    rid = gate.pickable(11)
    haul = gate.p.haul.organisation_id
    assert verify(gate, 11)["decision"] == "allow"  # the rights read through, cached and remembered
    with Statements(gate.engine) as sql:
        assert verify(gate, 11)["decision"] == "allow"
    assert sql.count == 0  # decided on the cached copy

    _status(gate, haul, False)
    assert outcome(verify(gate, 11)) == INACTIVE
    with Statements(gate.engine) as sql:  # cached again, as committed: the copy says the holder is inactive
        assert outcome(verify(gate, 11)) == INACTIVE
    assert sql.count == 0
    assert outcome(verify(gate, 11, mode="commit")) == INACTIVE
    assert gate.state(rid) == "nominated"

    _status(gate, haul, True)
    assert verify(gate, 11)["decision"] == "allow"
    with Statements(gate.engine) as sql:
        assert verify(gate, 11)["decision"] == "allow"
    assert sql.count == 0
    got = verify(gate, 11, mode="commit")
    assert (got["decision"], got["committed"]) == ("allow", True), got
    assert gate.state(rid) == "gated_in"


def test_a_deactivation_whose_invalidation_never_reached_redis_is_never_answered_from_an_old_copy(
        cached: Gate, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process (the CLI, a second server) deactivates the holder: Redis takes the pending mark sent
    just before the commit, and is lost to that process before the invalidation after it. This server's
    copy of the rights, current until then, is never trusted again: its checks read PostgreSQL and refuse."""
    gate = cached
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    gate.pickable(12)
    assert verify(gate, 12)["decision"] == "allow"
    haul = gate.p.haul.organisation_id
    assert haul is not None
    with _other_process(gate, redis_url) as (engine, writer):
        refused = _lost_after_its_mark(writer, monkeypatch)
        set_active(engine, grants_for(gate.http.app), haul, active=False, actor="cli", reason="struck off",
                   now=_now(), access_token_ttl=600)
        assert refused and writer.owed() >= 1
    for mode in ("check", "commit"):
        assert outcome(verify(gate, 12, mode=mode)) == INACTIVE
    assert facts._r.get(facts._p + "g:rights").startswith(b"p")  # type: ignore[union-attr]


def test_a_rights_copy_that_does_not_say_its_holders_status_is_read_again(cached: Gate) -> None:
    """A copy from a server of before this field (a rolling upgrade) is never taken for an active holder."""
    import json

    gate = cached
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    gate.pickable(13)
    _status(gate, gate.p.haul.organisation_id, False)
    assert outcome(verify(gate, 13)) == INACTIVE
    (key,) = list(facts._r.scan_iter(match=facts._p + "r:*"))  # the rights copy (``g:r:...``: generations)
    old = [entry[:14] for entry in json.loads(facts._r.get(key) or b"[]")]
    facts._r.set(key, json.dumps(old), ex=600)
    facts._near.clear()  # as in a process that never read it
    assert outcome(verify(gate, 13)) == INACTIVE
    assert [entry[14] for entry in json.loads(facts._r.get(key) or b"[]")] == [False]  # replaced

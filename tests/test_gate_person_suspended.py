"""Port security's suspension of a person reaches the release engine (security review; the product
owner's open question 11). A person suspended (``POST /admin/v1/persons/{id}:suspend``, identity.authn.cutoff)
on suspected identity fraud is stopped at the gate: his badge gives ``deny`` with ``person_suspended``, in
check and commit mode, on the PostgreSQL path and on the cached path (his badge cached before the
suspension: the suspension invalidates it, pending before its commit), and no right is used; a terminal's
override cannot let him in; nominating him is refused; no offline gate pass is issued for his
nominations. A reinstatement restores all of it: his nominations as they were, his passes, his gate-in.
"""
# ruff: noqa: F811 - ``gate`` is a fixture imported here and requested by name

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.authn import cutoff
from identity.bootstrap import create_client
from identity.grants import grants_for
from identity.sessions import sessions_for
from quaygate.schema import audit_log, gate_decisions, releases, webhook_deliveries, webhook_subscriptions
from release_service.adapters.gate_facts import RedisGateFacts
from release_service.domain import gate as g
from release_service.domain.errors import DomainError
from release_service.domain.parties import OrgKind

from .factories import add_driver, add_org
from .test_gate_domain import NOW, a_badge, a_request, a_right, run
from .test_gate_facts import Statements, _lost_after_its_mark, _other_process, _serve
from .test_gate_offline import _post, _report, offline_rows, passes, payload
from .test_gate_verify import Gate, gate  # noqa: F401
from .test_release_api import assert_problem

SUSPENDED = {"decision": "deny", "reasons": ["person_suspended"], "committed": False}


def _now() -> datetime:
    return datetime.now(UTC)


def _admin(gate: Gate) -> dict[str, str]:
    """Port security's credential on the admin API: an admin client (admin routes admit it as port
    security, identity.api.admin ``require_role``)."""
    if "admin" not in gate.tokens:
        client_id, secret = create_client(gate.engine, name="security system", role="admin",
                                          organisation_id=add_org(gate.engine, OrgKind.PORT_AUTHORITY).organisation_id,
                                          now=_now())
        r = gate.http.post("/oauth2/token", data={"grant_type": "client_credentials", "scope": "admin"},
                           auth=(client_id, secret or ""))
        assert r.status_code == 200, r.text
        gate.tokens["admin"] = r.json()["access_token"]
    return {"Authorization": f"Bearer {gate.tokens['admin']}"}


def suspend(gate: Gate, person: uuid.UUID | None = None) -> None:
    r = gate.http.post(f"/admin/v1/persons/{person or gate.p.driver}:suspend", headers=_admin(gate),
                       json={"reason": "suspected identity fraud"})
    assert r.status_code == 200 and r.json()["status"] == "suspended", r.text


def reinstate(gate: Gate, person: uuid.UUID | None = None) -> None:
    r = gate.http.post(f"/admin/v1/persons/{person or gate.p.driver}:reinstate", headers=_admin(gate),
                       json={"reason": "cleared by the inquiry"})
    assert r.status_code == 200 and r.json()["status"] == "active", r.text


def verify(gate: Gate, n: int, **over: Any) -> dict[str, Any]:
    r = gate.verify(gate.body(n, **over))
    assert r.status_code == 200, r.text
    return dict(r.json())


def outcome(got: dict[str, Any]) -> dict[str, Any]:
    return {"decision": got["decision"], "reasons": got["reasons"], "committed": got["committed"]}


def _override(gate: Gate, decision: dict[str, Any]) -> Any:
    return gate.http.post("/gate/v1/overrides", headers={"Authorization": f"Bearer {gate.gate_token}"},
                          json={"decision_id": decision["decision_id"], "reason": "the desk knows him"})


def _nominate(gate: Gate, rid: str, **driver: Any) -> Any:
    return gate.http.put(f"/api/v1/releases/{rid}/nomination", headers=gate.as_("haul"),
                         json={**(driver or {"driver_person_id": str(gate.p.driver)}),
                               "plate": {"text": "1-ABC-123", "country": "BE"}})


# ---- the rule, pure ------------------------------------------------------------------------------


def test_the_rule_denies_a_suspended_holder_both_ways_and_fails_closed() -> None:
    d = run(badge=a_badge(holder_status="suspended"))
    assert (d.decision, d.reasons, d.event) == (
        g.Outcome.DENY, (g.Reason.PERSON_SUSPENDED,), "release.verify.denied.person_suspended")
    # Gate-out too, as for a ban: port security expects him stopped at the gate, whichever way.
    out = run(request=a_request(direction=g.Direction.OUT), rights=[a_right(state="gated_in")],
              badge=a_badge(holder_status="suspended"))
    assert out.reasons == (g.Reason.PERSON_SUSPENDED,)
    # A status the release engine does not know is not "active": refused.
    assert run(badge=a_badge(holder_status="archived")).reasons == (g.Reason.PERSON_SUSPENDED,)
    # Someone else's badge, its holder suspended: both are said.
    other = run(badge=a_badge(person_id=uuid.uuid4(), holder_status="suspended"))
    assert other.reasons == (g.Reason.DRIVER_MISMATCH, g.Reason.PERSON_SUSPENDED)
    assert run(badge=a_badge()).allowed  # an active holder: nothing said


def test_a_terminal_cannot_override_port_securitys_suspension() -> None:
    """As ``person_banned``: another party's word on the person, never the desk's to set aside."""
    assert g.Reason.PERSON_SUSPENDED not in g.OVERRIDABLE
    with pytest.raises(DomainError, match="person_suspended"):
        g.require_overridable_decision(["person_suspended"], NOW, NOW)


# ---- the PostgreSQL path (and SQLite), the in-process cache --------------------------------------


def test_a_suspended_driver_is_denied_at_the_gate_and_let_in_again_once_reinstated(gate: Gate) -> None:
    rid = gate.pickable(1)
    assert verify(gate, 1)["decision"] == "allow"
    suspend(gate)
    # The nomination made before the suspension stays; the gate refuses him on it.
    assert gate.state(rid) == "nominated"
    check = verify(gate, 1)
    assert outcome(check) == SUSPENDED and check["screening"] == "clear", check
    commit = verify(gate, 1, mode="commit")
    assert outcome(commit) == SUSPENDED, commit
    assert gate.state(rid) == "nominated"  # no right used
    with gate.engine.connect() as conn:
        kept = conn.execute(sa.select(gate_decisions.c.decision, gate_decisions.c.reasons)
                            .where(gate_decisions.c.id == uuid.UUID(commit["decision_id"]))).one()
    assert (kept.decision, kept.reasons) == ("deny", ["person_suspended"])

    reinstate(gate)
    assert verify(gate, 1)["decision"] == "allow"
    got = verify(gate, 1, mode="commit")
    assert (got["decision"], got["committed"]) == ("allow", True), got
    assert gate.state(rid) == "gated_in"


def test_a_suspended_driver_inside_is_stopped_at_gate_out_too(gate: Gate) -> None:
    rid = gate.pickable(2)
    assert verify(gate, 2, mode="commit")["committed"] is True
    suspend(gate)
    assert outcome(verify(gate, 2, mode="commit", direction="out")) == SUSPENDED
    assert gate.state(rid) == "gated_in"
    reinstate(gate)
    assert verify(gate, 2, mode="commit", direction="out")["committed"] is True
    assert gate.state(rid) == "completed"


def test_an_override_never_lets_in_a_suspended_driver(gate: Gate) -> None:
    """Neither the deny for his suspension, nor one the desk could otherwise set aside: no badge shown
    (the decision screened nobody, and the override screens the nominated driver now, as a nomination
    does), or a plate misread."""
    rid = gate.pickable(3)
    suspend(gate)
    refused = verify(gate, 3, mode="commit")
    assert outcome(refused) == SUSPENDED
    got = _override(gate, refused)
    assert_problem(got, 409, "illegal_transition")
    assert "person_suspended" in got.json()["detail"]
    no_badge = verify(gate, 3, mode="commit", badge=None)
    # Overridable reasons only: nobody was screened (no badge, no holder).
    assert set(no_badge["reasons"]) == {"badge_unknown", "screening_unavailable"}, no_badge
    got = _override(gate, no_badge)
    assert_problem(got, 409, "illegal_transition")
    assert got.json()["reasons"] == ["person_suspended"], got.json()
    assert gate.state(rid) == "nominated"

    reinstate(gate)
    got = _override(gate, verify(gate, 3, mode="commit", badge=None))
    assert got.status_code == 201, got.text
    assert gate.state(rid) == "gated_in"


def test_nominating_a_suspended_driver_is_refused(gate: Gate) -> None:
    rid = str(gate.issue(4, release_to_organisation_id=str(gate.p.haul.organisation_id))["release"]["id"])
    suspend(gate)
    for named in ({"driver_person_id": str(gate.p.driver)},
                  {"badge": {"scheme": "alfapass", "number": gate.badge_number}}):
        got = _nominate(gate, rid, **named)
        assert_problem(got, 409, "driver_screening_failed")
        assert (got.json()["screening"], got.json()["reasons"]) == ("refused", ["person_suspended"]), got.json()
    assert gate.state(rid) == "active"
    reinstate(gate)
    got = _nominate(gate, rid)
    assert got.status_code == 200, got.text
    assert gate.state(rid) == "nominated"


def test_no_gate_pass_is_issued_for_a_suspended_drivers_nominations(gate: Gate) -> None:
    """Offline, a lane holding his pass would let him through (``docs/gate-offline.md``): his passes
    are left out of every answer from the suspension on; other drivers' are not; a reinstatement gives
    them back."""
    mine = gate.pickable(5)
    other_driver = add_driver(gate.engine, gate.p.haul.organisation_id)
    theirs = gate.pickable(6)
    with gate.engine.begin() as conn:
        conn.execute(releases.update().where(releases.c.id == uuid.UUID(theirs)).values(driver_person_id=other_driver))
    inside = gate.pickable(7)
    assert verify(gate, 7, mode="commit")["committed"] is True  # his truck inside: a gate-out pass

    def subjects() -> set[str]:
        r = passes(gate)
        assert r.status_code == 200, r.text
        return {payload(t)["sub"] for t in r.json()["passes"]}

    assert subjects() == {mine, theirs, inside}
    suspend(gate)
    assert subjects() == {theirs}
    reinstate(gate)
    assert subjects() == {mine, theirs, inside}


def test_an_offline_allow_on_a_pass_from_before_the_suspension_is_flagged(gate: Gate) -> None:
    """A lane that lost the service before its next refresh lets him in on the pass it holds (it cannot
    know): the reconcile records the gate-in (the truck is in) and flags it, saying what changed."""
    rid = gate.pickable(8)
    (token,) = passes(gate).json()["passes"]
    suspend(gate)
    got = _post(gate, _report(gate, 8, token=token))
    assert got.status_code == 200, got.text
    (row,) = offline_rows(gate)
    assert (row.verdict, row.flag) == ("flagged", "changed_after_pass")
    assert gate.state(rid) == "gated_in"
    with gate.engine.connect() as conn:
        data = conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == "release.gate_offline_flagged")
                            ).scalar_one()
    assert "person_suspended" in data["changed_since_pass"], data


# ---- the cached path: PostgreSQL and Redis ------------------------------------------------------


@pytest.fixture
def cached(pg_engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[Gate]:
    yield from _serve(pg_engine, tmp_path, redis_url)


def _badge_copies(facts: RedisGateFacts) -> dict[bytes, bytes]:
    return {k: v for k in facts._r.scan_iter(match=facts._p + "badge:*") if (v := facts._r.get(k)) is not None}


def test_a_suspension_is_seen_by_the_next_decision_on_a_badge_cached_before_it(cached: Gate) -> None:
    gate = cached
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    rid = gate.pickable(11)
    assert verify(gate, 11)["decision"] == "allow"  # the badge read through, cached and remembered
    with Statements(gate.engine) as sql:
        assert verify(gate, 11)["decision"] == "allow"
    assert sql.count == 0  # decided on the cached copy
    (before,) = _badge_copies(facts).values()
    assert json.loads(before)["holder_status"] == "active"

    suspend(gate)
    assert outcome(verify(gate, 11)) == SUSPENDED
    with Statements(gate.engine) as sql:  # cached again, as committed: the copy carries the status
        assert outcome(verify(gate, 11)) == SUSPENDED
    assert sql.count == 0
    assert outcome(verify(gate, 11, mode="commit")) == SUSPENDED
    assert gate.state(rid) == "nominated"  # no right used

    reinstate(gate)
    assert verify(gate, 11)["decision"] == "allow"
    with Statements(gate.engine) as sql:
        assert verify(gate, 11)["decision"] == "allow"
    assert sql.count == 0
    got = verify(gate, 11, mode="commit")
    assert (got["decision"], got["committed"]) == ("allow", True), got
    assert gate.state(rid) == "gated_in"


def test_a_suspension_whose_invalidation_never_reached_redis_is_never_answered_from_an_old_copy(
        cached: Gate, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process (a second server) suspends him: Redis takes the pending mark sent just before the
    commit, and is lost to that process before the invalidation after it. This server's copy of his
    badge, current until then, is never trusted again: its checks read PostgreSQL and refuse."""
    gate = cached
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    gate.pickable(12)
    assert verify(gate, 12)["decision"] == "allow"
    app = gate.http.app
    with _other_process(gate, redis_url) as (engine, writer):
        refused = _lost_after_its_mark(writer, monkeypatch)
        cutoff.suspend_person(engine, sessions=sessions_for(app), grants=grants_for(app), person_id=gate.p.driver,
                              actor="port security", reason="suspected identity fraud", now=_now())
        assert refused and writer.owed() == 1
    for mode in ("check", "commit"):
        assert outcome(verify(gate, 12, mode=mode)) == SUSPENDED
    assert facts._r.get(facts._p + "g:badges").startswith(b"p")  # type: ignore[union-attr]


def test_a_badge_copy_that_does_not_say_its_holders_status_is_read_again(cached: Gate) -> None:
    """A copy from a server of before this field (a rolling upgrade) is never taken for an active holder:
    it is read again from PostgreSQL, and replaced."""
    gate = cached
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    gate.pickable(13)
    suspend(gate)
    assert outcome(verify(gate, 13)) == SUSPENDED
    (key, raw), = _badge_copies(facts).items()
    old = json.loads(raw)
    del old["holder_status"]
    facts._r.set(key, json.dumps(old), ex=600)
    facts._near.clear()  # as in a process that never read it
    assert outcome(verify(gate, 13)) == SUSPENDED
    assert json.loads(facts._r.get(key) or b"{}")["holder_status"] == "suspended"  # replaced


def test_an_old_badge_copy_of_an_active_holder_is_replaced_too(cached: Gate) -> None:
    gate = cached
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    gate.pickable(14)
    assert verify(gate, 14)["decision"] == "allow"
    (key, raw), = _badge_copies(facts).items()
    old = json.loads(raw)
    del old["holder_status"]
    facts._r.set(key, json.dumps(old), ex=600)
    facts._near.clear()
    assert verify(gate, 14)["decision"] == "allow"
    assert json.loads(facts._r.get(key) or b"{}")["holder_status"] == "active"


# ---- the holders of his nominations are told, as after a ban ----------------------------------------


def test_a_suspension_alerts_the_holder_of_each_live_nomination(gate: Gate) -> None:
    """The haulier learns before its driver reaches the gate (where he would be turned away), so it can
    nominate someone else: one ``release.nomination.screening_alert`` per live nomination, reason
    ``person_suspended``, never port security's reason; the suspension's entry lists the rights. A right
    not nominated to him (still active) gets none; a reinstatement and a second suspension alert again."""
    subscription = uuid.uuid4()
    with gate.engine.begin() as conn:
        conn.execute(webhook_subscriptions.insert().values(
            id=subscription, organisation_id=gate.p.haul.organisation_id, url="https://haulier.example/hooks",
            secret_enc="x", event_types=["release.nomination.*"], active=True, created_at=_now()))
    first, second = gate.pickable(5), gate.pickable(6)
    unnominated = str(gate.issue(7, release_to_organisation_id=str(gate.p.haul.organisation_id))["release"]["id"])

    def alerts() -> list[tuple[str, dict[str, Any]]]:
        with gate.engine.connect() as conn:
            return [(p["release_id"], p["data"]) for p in conn.execute(
                sa.select(webhook_deliveries.c.payload)
                .where(webhook_deliveries.c.event_type == "release.nomination.screening_alert",
                       webhook_deliveries.c.subscription_id == subscription)).scalars()]

    suspend(gate)
    said = {"driver_person_id": str(gate.p.driver), "screening": "suspended", "reason": "person_suspended"}
    got = alerts()
    assert sorted(rid for rid, _ in got) == sorted([first, second]) and unnominated not in {r for r, _ in got}
    assert all({k: data.get(k) for k in said} == said for _, data in got), got
    assert not any("fraud" in json.dumps(data) for _, data in got)  # port security's reason stays with it
    with gate.engine.connect() as conn:
        entry = conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == "identity.admin.person.suspended")
                             .order_by(audit_log.c.id.desc())).scalars().first()
    assert entry is not None and sorted(entry["nominations_alerted"]) == sorted([first, second])

    reinstate(gate)
    suspend(gate)
    assert len(alerts()) == 4

"""A container two shipping lines' rights claim is a doubt at the gate (review 99, high).

Nothing ties a container to the line that carries it, and ``select_right`` accepts several live rights on
one container (another vessel call), picking the one nominated to the badge read. So any line could issue
a right on another line's container to its own haulier, and that haulier's driver was let through once
that right's lights were green. Now a gate-in on a container with live rights here from more than one
issuer gives ``review`` with ``container_contested`` (beyond SPEC.md's list, which says "at least"), for
either line's driver, in check and commit mode, on the PostgreSQL path, the cached path (Redis) and
offline (the gate pass carries the service's word, since the adapter holds passes for nominated rights
only); a terminal may override it (it knows from its discharge records which vessel call brought the
container in); two rights of one line, a right of another line at another terminal or ended, and a
gate-out are not contested.
"""
# ruff: noqa: F811 - ``gate`` is a fixture imported here and requested by name

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import audit_log, releases, webhook_deliveries, webhook_subscriptions
from release_service.adapters import gate_facts
from release_service.adapters.sqla.store import SqlReleaseStore
from release_service.domain import gate as g
from release_service.domain.gate_pass import (
    BadgeProof,
    GatePass,
    LocalUses,
    OfflineLimits,
    badge_digest,
    decide_offline,
)
from release_service.domain.parties import OrgKind
from release_service.services import issue

from . import test_gate_facts
from .factories import TERMINAL, add_org, container, do, issue_cmd, now, port
from .test_gate_domain import DRIVER, NOW, OTHER_TERMINAL, a_badge, a_request, a_right, run
from .test_gate_domain import TERMINAL as TERMINAL_HERE
from .test_gate_offline import _post, _report, passes, payload
from .test_gate_verify import PLATE, Gate, gate  # noqa: F401
from .test_release_api import assert_problem

LINE = uuid.uuid4()
ROGUE = uuid.uuid4()
ROGUE_DRIVER = uuid.uuid4()
CONTESTED = {"decision": "review", "reasons": ["container_contested"]}


def _ours(**kw: Any) -> g.RightFacts:
    return a_right(issuer=LINE, **kw)


def _theirs(**kw: Any) -> g.RightFacts:
    args: dict[str, Any] = dict(id=uuid.uuid4(), issuer=ROGUE, created_at=NOW - timedelta(hours=2),
                                nomination=g.NominationFacts(ROGUE_DRIVER, "1ABC123", "BE"))
    args.update(kw)
    return a_right(**args)


def _said(d: g.Decision) -> dict[str, Any]:
    return {"decision": d.decision.value, "reasons": [r.value for r in d.reasons]}


# ---- the rule ------------------------------------------------------------------------------------


def test_two_lines_live_rights_here_put_either_driver_under_review() -> None:
    ours, theirs = _ours(), _theirs()
    mine = run(rights=[ours, theirs])
    assert _said(mine) == CONTESTED and mine.release_id == ours.id
    rogue = run(rights=[ours, theirs], badge=a_badge(person_id=ROGUE_DRIVER))
    assert _said(rogue) == CONTESTED and rogue.release_id == theirs.id
    # In commit mode too, and only a doubt: with a refusal beside it, deny.
    assert _said(run(request=a_request(mode=g.Mode.COMMIT), rights=[ours, theirs])) == CONTESTED
    assert run(rights=[ours, theirs], badge=a_badge(status="revoked")).decision is g.Outcome.DENY
    # The other line's right only active (not nominated yet) still contests the container.
    assert _said(run(rights=[ours, _theirs(state="active", nomination=None)])) == CONTESTED
    # Each line alone: allow.
    assert run(rights=[ours]).decision is g.Outcome.ALLOW
    assert run(rights=[theirs], badge=a_badge(person_id=ROGUE_DRIVER)).decision is g.Outcome.ALLOW


@pytest.mark.parametrize("other", [
    pytest.param(dict(issuer=LINE), id="the same line's second right"),
    pytest.param(dict(terminal=OTHER_TERMINAL), id="another terminal"),
    pytest.param(dict(state="completed"), id="completed"),
    pytest.param(dict(state="revoked"), id="revoked"),
    pytest.param(dict(valid_until=NOW - timedelta(minutes=1)), id="lapsed"),
    pytest.param(dict(issuer=None), id="issuer not known"),
    pytest.param(dict(container="MSCU1234565"), id="another container"),
])
def test_what_does_not_contest_a_container(other: dict[str, Any]) -> None:
    assert run(rights=[_ours(), _theirs(**other)]).decision is g.Outcome.ALLOW


def test_a_gate_out_is_not_held_by_a_right_issued_after_the_gate_in() -> None:
    inside = _ours(state="gated_in")
    out = run(request=a_request(direction=g.Direction.OUT), rights=[inside, _theirs()])
    assert out.decision is g.Outcome.ALLOW and out.release_id == inside.id


def test_the_services_word_in_a_pass_contests_the_container_alone() -> None:
    assert _said(run(rights=[_ours(contested=True)])) == CONTESTED
    assert g.Reason.CONTAINER_CONTESTED in g.OVERRIDABLE
    assert g.SEVERITY[g.Reason.CONTAINER_CONTESTED] is g.Severity.DOUBT


def _pass(right: g.RightFacts) -> GatePass:
    """A pass for ``right`` with the badge ``a_request`` reads (the driver's, active here)."""
    badge = BadgeProof("alfapass", badge_digest("alfapass", "AP-100230"), None, "active",
                       NOW + timedelta(days=365), frozenset({TERMINAL_HERE}))
    return GatePass(pass_id="p-1", terminal=right.terminal, issued_at=NOW - timedelta(minutes=1),
                    expires_at=NOW + timedelta(minutes=10), right=right, badges=(badge,), holder="J. P***s",
                    screening=g.ScreeningResult.CLEAR, ban_list_as_of=NOW, policy=g.TerminalPolicy())


def test_a_pass_carries_the_issuer_and_the_contest_and_an_older_pass_reads_as_before() -> None:
    contested = _pass(_ours(contested=True))
    back = GatePass.from_claims(contested.to_claims("https://qg"), issuer="https://qg")
    assert back.right.issuer == LINE and back.right.contested is True
    claims = _pass(_ours()).to_claims("https://qg")
    del claims["right"]["issuer"], claims["right"]["contested"]  # a pass of a service from before
    older = GatePass.from_claims(claims, issuer="https://qg")
    assert older.right.issuer is None and older.right.contested is False


def test_offline_a_contested_pass_gives_review() -> None:
    limits = OfflineLimits(store_max_age=timedelta(minutes=5), ban_list_max_age=timedelta(hours=1),
                           policy=g.TerminalPolicy())
    request = a_request(mode=g.Mode.COMMIT)

    def offline(right: g.RightFacts) -> g.Decision:
        return decide_offline(request, passes=[_pass(right)], uses=LocalUses(), limits=limits,
                              store_refreshed_at=NOW, now=NOW).decision

    assert _said(offline(_ours(contested=True))) == CONTESTED
    assert offline(_ours()).decision is g.Outcome.ALLOW


def test_a_cached_copy_without_issuers_is_not_trusted() -> None:
    right = _ours()
    raw = gate_facts._dump_rights([right])
    assert gate_facts._rights(raw) == (right,)
    older = json.dumps([entry[:12] for entry in json.loads(raw)]).encode()  # a server from before
    assert gate_facts._rights(older) is None
    assert gate_facts._rights(json.dumps([entry[:13] for entry in json.loads(raw)]).encode()) is None
    marked = replace(right, contested=True)
    assert gate_facts._rights(gate_facts._dump_rights([marked])) == (marked,)
    assert gate_facts._rights(b"[]") == ()


# ---- over HTTP -----------------------------------------------------------------------------------


def _subscribe(gate: Gate, org: uuid.UUID) -> uuid.UUID:
    subscription = uuid.uuid4()
    with gate.engine.begin() as conn:
        conn.execute(webhook_subscriptions.insert().values(
            id=subscription, organisation_id=org, url=f"https://{org.hex[:8]}.example/hooks", secret_enc="x",
            event_types=["release.container_contested"], active=True, created_at=datetime.now(UTC)))
    return subscription


def _told(gate: Gate, subscription: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    with gate.engine.connect() as conn:
        return [(p["release_id"], p["data"]) for p in conn.execute(
            sa.select(webhook_deliveries.c.payload).where(
                webhook_deliveries.c.event_type == "release.container_contested",
                webhook_deliveries.c.subscription_id == subscription)).scalars()]


def _rogue_line(gate: Gate) -> uuid.UUID:
    if "rogue" not in gate.tokens:
        line = add_org(gate.engine, OrgKind.SHIPPING_LINE)
        gate.tokens["rogue"] = gate.token_for("shipping_line", line.organisation_id)
        gate.tokens["rogue_org"] = str(line.organisation_id)
    return uuid.UUID(gate.tokens["rogue_org"])


def _rogue(gate: Gate, n: int, vessel_call: str = "VC-9") -> str:
    """Another shipping line issues the real line's container ``n`` (another vessel call and B/L) to the
    same haulier, who nominates the same driver and truck; customs and the terminal set its lights green:
    review 99's demonstration."""
    _rogue_line(gate)
    return _pickable_on(gate, n, vessel_call, by="rogue")


def _issue_as(gate: Gate, n: int, vessel_call: str, *, by: str, terminal: str = TERMINAL, to: Any = None) -> Any:
    """POST /api/v1/releases: container ``n`` on ``vessel_call`` at ``terminal``, issued by the real line
    (``by`` "line", to the forwarder) or the rogue line ("rogue", to the haulier), or to ``to``; the answer."""
    now = datetime.now(UTC)
    headers = gate.as_("line") if by == "line" else {"Authorization": f"Bearer {gate.tokens['rogue']}"}
    to = to or (gate.p.fwd if by == "line" else gate.p.haul)
    return gate.http.post("/api/v1/releases", headers=headers, json={
        "container_number": container(n), "bill_of_lading": f"{by.upper()}-{n}-{vessel_call}",
        "vessel_call": vessel_call, "terminal": terminal, "release_to_organisation_id": str(to.organisation_id),
        "valid_from": (now - timedelta(hours=1)).isoformat(), "valid_until": (now + timedelta(days=3)).isoformat()})


def _verify(gate: Gate, n: int, **over: Any) -> dict[str, Any]:
    r = gate.verify(gate.body(n, **over))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _revoke(gate: Gate, rid: str) -> None:
    r = gate.http.post(f"/api/v1/releases/{rid}/revoke", headers={"Authorization": f"Bearer {gate.tokens['rogue']}"},
                       json={"reason": "issued on the wrong container"})
    assert r.status_code == 200, r.text


def test_another_lines_right_on_the_container_puts_the_gate_in_under_review(gate: Gate) -> None:
    real = gate.pickable(1)
    assert _verify(gate, 1)["decision"] == "allow"
    rogue = _rogue(gate, 1)
    for mode in ("check", "commit"):
        got = _verify(gate, 1, mode=mode)
        assert {k: got[k] for k in CONTESTED} == CONTESTED and got["committed"] is False
        assert got["release_id"] in (real, rogue)
    assert gate.state(real) == "nominated" and gate.state(rogue) == "nominated"
    # Once the other line revokes its right, the real right is the container's only one again.
    _revoke(gate, rogue)
    got = _verify(gate, 1, mode="commit")
    assert got["decision"] == "allow" and got["release_id"] == real and gate.state(real) == "gated_in"


def test_a_terminal_overrides_a_contested_gate_in_and_the_truck_leaves(gate: Gate) -> None:
    real = gate.pickable(2)
    rogue = _rogue(gate, 2)
    refused = _verify(gate, 2, mode="commit")
    assert {k: refused[k] for k in CONTESTED} == CONTESTED
    headers = {"Authorization": f"Bearer {gate.gate_token}"}
    done = gate.http.post("/gate/v1/overrides", headers=headers, json={
        "decision_id": refused["decision_id"], "reason": "Discharge list: came in on VC-1"})
    assert done.status_code == 201, done.text
    used = refused["release_id"]
    assert gate.state(used) == "gated_in" and gate.state(rogue if used == real else real) == "nominated"
    out = _verify(gate, 2, direction="out", mode="commit")
    assert out["decision"] == "allow" and out["release_id"] == used
    assert_problem(gate.http.post("/gate/v1/overrides", headers=headers, json={
        "decision_id": refused["decision_id"], "reason": "again"}), 409, "already_used")


def test_the_gate_passes_say_the_container_is_contested(gate: Gate) -> None:
    gate.pickable(3)
    gate.pickable(4)
    _rogue(gate, 3)
    body = passes(gate).json()
    said = {(c["right"]["container"], c["right"]["contested"]) for c in map(payload, body["passes"])}
    assert said == {(container(3), True), (container(4), False)}
    # Decided offline on those passes, the lane holds the truck for a person.
    made = [GatePass.from_claims(c, issuer=c["iss"]) for c in map(payload, body["passes"])]
    mine = next(p for p in made if p.right.container == container(3))
    assert mine.right.issuer == gate.p.line.organisation_id
    limits = OfflineLimits(store_max_age=timedelta(minutes=5), ban_list_max_age=timedelta(days=3650),
                           policy=mine.policy)
    at = mine.issued_at + timedelta(seconds=1)

    def offline(n: int) -> g.Decision:
        request = a_request(container=g.ContainerRead(container(n), 0.97), terminal=TERMINAL, mode=g.Mode.COMMIT,
                            badge=g.BadgeRead("alfapass", gate.badge_number), plate=g.PlateRead("1ABC123", "BE", 0.95))
        return decide_offline(request, passes=made, uses=LocalUses(), limits=limits, store_refreshed_at=at,
                              now=at).decision

    assert _said(offline(3)) == CONTESTED
    assert offline(4).decision is g.Outcome.ALLOW


def test_both_lines_and_port_security_learn_of_a_contested_container_when_it_is_issued(gate: Gate) -> None:
    """Each line is told about its own right (``release.container_contested``), before a truck reaches the
    gate; the payload names no other line; port security reads the audit entry, which names the rights.
    A right of the same line, of another container or at another terminal tells nobody; a batch tells
    as a single issue does."""
    ours, theirs = _subscribe(gate, gate.p.line.organisation_id), _subscribe(gate, _rogue_line(gate))
    real = gate.pickable(8)
    again = str(gate.issue(8, vessel_call="VC-8", bill_of_lading="BL-8b")["release"]["id"])  # its own affair
    gate.issue(9, terminal="BEANR-OTHER")
    assert _told(gate, ours) == [] and _told(gate, theirs) == []
    rogue = _rogue(gate, 8)
    said = {"container_number": container(8), "terminal": TERMINAL, "reason": "container_contested"}
    assert sorted((rid, {k: d.get(k) for k in said}) for rid, d in _told(gate, ours)) == sorted(
        [(real, said), (again, said)])  # each of its rights the new one contests
    assert [(rid, {k: d.get(k) for k in said}) for rid, d in _told(gate, theirs)] == [(rogue, said)]
    assert str(_rogue_line(gate)) not in json.dumps(_told(gate, ours))
    with gate.engine.connect() as conn:
        (entry,) = conn.execute(sa.select(audit_log.c.data).where(
            audit_log.c.kind == "release.container_contested", audit_log.c.subject == rogue)).scalars()
    assert sorted(entry["rights"]) == sorted([real, again])
    assert entry["issuers"] == [str(gate.p.line.organisation_id)]
    # A batch: container 10 is contested, container 11 (no other right) is not.
    gate.pickable(10)
    now = datetime.now(UTC)
    item = {"container_number": container(10), "bill_of_lading": "ROGUE-10", "vessel_call": "VC-9",
            "terminal": TERMINAL, "release_to_organisation_id": str(gate.p.haul.organisation_id),
            "valid_from": (now - timedelta(hours=1)).isoformat(), "valid_until": (now + timedelta(days=3)).isoformat()}
    r = gate.http.post("/api/v1/releases:batch", headers={"Authorization": f"Bearer {gate.tokens['rogue']}"},
                       json={"releases": [item, {**item, "container_number": container(11), "bill_of_lading": "R-11"}]})
    assert r.status_code in (200, 201, 207), r.text
    assert sorted(d["container_number"] for _, d in _told(gate, theirs)) == [container(8), container(10)]
    assert sorted(d["container_number"] for _, d in _told(gate, ours)) == [container(8)] * 2 + [container(10)]


def _squat(gate: Gate, n: int) -> tuple[str, uuid.UUID]:
    """Review 104: the rogue line issues the real line's container on the real vessel call first (the
    stay number is public), to its haulier, nominated and green; its right is the container's only one."""
    theirs = _subscribe(gate, _rogue_line(gate))
    rogue = _rogue(gate, n, vessel_call="vc 1")  # "VC-1" as a key
    assert _verify(gate, n)["decision"] == "allow"
    return rogue, theirs


def test_a_line_that_issued_first_on_the_real_vessel_call_is_contested_when_the_real_line_is_refused(
        gate: Gate) -> None:
    rogue, theirs = _squat(gate, 12)
    ours = _subscribe(gate, gate.p.line.organisation_id)
    key = {"Idempotency-Key": "issue-12", **gate.as_("line")}
    body = {"container_number": container(12), "bill_of_lading": "BL-12", "vessel_call": "VC-1", "terminal": TERMINAL,
            "release_to_organisation_id": str(gate.p.fwd.organisation_id),
            "valid_from": datetime.now(UTC).isoformat(),
            "valid_until": (datetime.now(UTC) + timedelta(days=3)).isoformat()}
    for _ in range(2):  # SPEC.md: one live right per container and vessel call; a retry is refused again
        assert_problem(gate.http.post("/api/v1/releases", json=body, headers=key), 409, "active_right_exists")
    for mode in ("check", "commit"):
        got = _verify(gate, 12, mode=mode)
        assert {k: got[k] for k in CONTESTED} == CONTESTED and got["release_id"] == rogue
    assert gate.state(rogue) == "nominated"
    said = {"container_number": container(12), "terminal": TERMINAL, "reason": "container_contested"}
    assert [(rid, {k: d.get(k) for k in said}) for rid, d in _told(gate, theirs)] == [(rogue, said)]  # once
    assert _told(gate, ours) == []  # the refused line has its 409
    with gate.engine.connect() as conn:
        (entry,) = conn.execute(sa.select(audit_log.c.data).where(
            audit_log.c.kind == "release.container_contested", audit_log.c.subject == rogue)).scalars()
    assert entry["refused_issuer"] == str(gate.p.line.organisation_id) and entry["vessel_call"] == "vc 1"
    # The gate pass says so too.
    said_by_pass = {(c["right"]["id"], c["right"]["contested"]) for c in map(payload, passes(gate).json()["passes"])}
    assert (rogue, True) in said_by_pass
    # A terminal that knows which vessel call brought it in may still override; the rogue line revoking
    # its right lets the real line issue.
    _revoke(gate, rogue)
    assert gate.http.post("/api/v1/releases", json=body, headers=gate.as_("line")).status_code == 201


def test_a_line_refused_its_own_container_again_marks_nothing(gate: Gate) -> None:
    rid = gate.pickable(14)
    r = gate.http.post("/api/v1/releases", headers=gate.as_("line"), json={
        "container_number": container(14), "bill_of_lading": "BL-14b", "vessel_call": "vc-1", "terminal": TERMINAL,
        "release_to_organisation_id": str(gate.p.fwd.organisation_id), "valid_from": datetime.now(UTC).isoformat(),
        "valid_until": (datetime.now(UTC) + timedelta(days=3)).isoformat()})
    assert_problem(r, 409, "active_right_exists")
    assert _verify(gate, 14)["decision"] == "allow"
    with gate.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(
            audit_log.c.kind == "release.container_contested", audit_log.c.subject == rid)).scalar() == 0


def test_a_batch_refused_over_another_lines_rights_marks_them(gate: Gate) -> None:
    rogue, theirs = _squat(gate, 15)
    now = datetime.now(UTC)
    item = {"container_number": container(15), "bill_of_lading": "BL-15", "vessel_call": "VC-1", "terminal": TERMINAL,
            "release_to_organisation_id": str(gate.p.fwd.organisation_id),
            "valid_from": now.isoformat(), "valid_until": (now + timedelta(days=3)).isoformat()}
    r = gate.http.post("/api/v1/releases:batch", headers=gate.as_("line"),
                       json={"releases": [item, {**item, "container_number": container(16),
                                                 "bill_of_lading": "BL-16"}]})
    assert r.status_code == 200, r.text
    assert [i["error"]["code"] if i["error"] else None for i in r.json()["items"]] == ["active_right_exists", None]
    assert {k: _verify(gate, 15)[k] for k in CONTESTED} == CONTESTED
    assert [rid for rid, _ in _told(gate, theirs)] == [rogue]


# ---- the cached path (PostgreSQL and Redis) --------------------------------------------------------


@pytest.fixture
def cached(pg_engine: sa.Engine, tmp_path: Any, redis_url: str) -> Any:
    yield from test_gate_facts._serve(pg_engine, tmp_path, redis_url)


def test_on_the_cache_a_new_right_of_another_line_contests_a_cached_container(cached: Gate) -> None:
    real = cached.pickable(5)
    for _ in range(2):  # the second check is decided on the copies the first one cached
        assert _verify(cached, 5)["decision"] == "allow"
    _rogue(cached, 5)
    for _ in range(2):
        got = _verify(cached, 5)
        assert {k: got[k] for k in CONTESTED} == CONTESTED
    assert cached.state(real) == "nominated"


def test_on_the_cache_a_copy_from_an_older_server_is_read_again(cached: Gate) -> None:
    cached.pickable(6)
    _rogue(cached, 6)
    assert {k: _verify(cached, 6)[k] for k in CONTESTED} == CONTESTED
    client = cached.facts._r  # type: ignore[attr-defined]
    keys = [k for k in client.scan_iter(match=f"*r:{container(6)}:*") if client.type(k) == b"string"]
    assert keys
    for key in keys:  # as a server from before wrote them: no issuers
        client.set(key, json.dumps([entry[:12] for entry in json.loads(client.get(key))]).encode())
    cached.facts._near.clear()  # type: ignore[attr-defined]
    assert {k: _verify(cached, 6)[k] for k in CONTESTED} == CONTESTED
    # ... and replaced by a copy that names them.
    # with the holder's status (review 130), whether customs holds it (test_gate_customs_container_hold.py) and
    # the service's last face_mismatch on it (review 148, test_gate_face_mismatch_sticks.py)
    assert all(len(json.loads(client.get(k))[0]) == 17 for k in keys)


def test_on_the_cache_a_squatted_container_is_contested_once_the_real_line_is_refused(cached: Gate) -> None:
    rogue, _ = _squat(cached, 17)
    assert _verify(cached, 17)["decision"] == "allow"  # decided on the copies the first check cached
    r = cached.http.post("/api/v1/releases", headers=cached.as_("line"), json={
        "container_number": container(17), "bill_of_lading": "BL-17", "vessel_call": "VC-1", "terminal": TERMINAL,
        "release_to_organisation_id": str(cached.p.fwd.organisation_id), "valid_from": datetime.now(UTC).isoformat(),
        "valid_until": (datetime.now(UTC) + timedelta(days=3)).isoformat()})
    assert_problem(r, 409, "active_right_exists")
    for _ in range(2):
        got = _verify(cached, 17)
        assert {k: got[k] for k in CONTESTED} == CONTESTED and got["release_id"] == rogue


def test_a_driver_of_the_line_only_right_stays_unaffected(gate: Gate) -> None:
    """Two rights of the one line on one container (another vessel call): that line's own affair."""
    gate.pickable(7)
    r = gate.issue(7, vessel_call="VC-8", bill_of_lading="BL-7b",
                   release_to_organisation_id=str(gate.p.haul.organisation_id))
    assert r["release"]["state"] == "active"
    assert _verify(gate, 7)["decision"] == "allow"


def test_the_rule_ignores_rights_of_other_containers_in_the_list() -> None:
    ours = _ours()
    stranger = replace(_theirs(), container="MSCU1234565")
    assert g.contested([ours, stranger], ours, terminal=ours.terminal, now=NOW) is False
    assert g.contested([ours, _theirs()], ours, terminal=ours.terminal, now=NOW) is True
    assert DRIVER != ROGUE_DRIVER


@pytest.mark.parametrize("how", ["another_right", "marked"])
def test_an_offline_gate_in_on_a_pass_from_before_the_contest_is_recorded_and_flagged(gate: Gate, how: str) -> None:
    """The adapter's pass said the container was not contested (it was not, then); another line then
    issued it (a live right of its own here) or was refused it over this right (the mark); the service is
    down and the truck comes. The pass allows it, as it must; the reconcile records the gate-in (the truck
    is in) and flags it ``changed_after_pass`` with ``container_contested``, for port security to settle
    from the discharge records, as online would have put it under review."""
    rid = gate.pickable(15)
    token = next(t for t in passes(gate).json()["passes"] if payload(t)["sub"] == rid)
    assert payload(token)["right"]["contested"] is False
    report = _report(gate, 15, token=token)
    if how == "another_right":
        _rogue(gate, 15)
        report["decided_at"] = datetime.now(UTC).isoformat()  # the truck came after it was issued
    else:
        _rogue_line(gate)
        assert_problem(_issue_as(gate, 15, "VC-1", by="rogue"), 409, "active_right_exists")
        report["decided_at"] = datetime.now(UTC).isoformat()  # the truck came after the mark
    got = _post(gate, report)
    assert got.status_code == 200, got.text
    assert (got.json()["verdict"], got.json()["flag"]) == ("flagged", "changed_after_pass")
    assert gate.state(rid) == "gated_in"
    with gate.engine.connect() as conn:
        data = conn.execute(sa.select(audit_log.c.data).where(
            audit_log.c.kind == "release.gate_offline_flagged", audit_log.c.subject == rid)).scalar_one()
    assert data["changed_since_pass"] == ["container_contested"]


@pytest.mark.parametrize("after", [None, "another_right", "marked"])
def test_an_offline_gate_in_with_no_contest_then_is_recorded_clean(gate: Gate, after: str | None) -> None:
    """The same gate-in with no other line's right on the container: no flag (the check above is this
    one's contest, not the reconcile's habit); nor when another line issued it only after the truck
    passed (review 107: else any line could flag a lawful offline gate-in after the fact), nor when
    another line was refused it over this right only after the truck passed (the mark's time counts, not
    the mark)."""
    rid = gate.pickable(16)
    token = next(t for t in passes(gate).json()["passes"] if payload(t)["sub"] == rid)
    report = _report(gate, 16, token=token)
    if after == "another_right":
        _rogue(gate, 16)
    elif after == "marked":
        _rogue_line(gate)
        assert_problem(_issue_as(gate, 16, "VC-1", by="rogue"), 409, "active_right_exists")
        assert _contested_at(gate, rid) is not None
    got = _post(gate, report)
    assert got.status_code == 200, got.text
    assert (got.json()["verdict"], got.json()["flag"]) == ("recorded", None)


def _contested_at(gate: Gate, rid: str) -> datetime | None:
    with gate.engine.connect() as conn:
        return conn.execute(sa.select(releases.c.contested_at).where(releases.c.id == uuid.UUID(rid))).scalar_one()


def _real_issue(gate: Gate, n: int) -> Any:
    return _issue_as(gate, n, "VC-1", by="line")


@pytest.mark.parametrize("shed", ["again_on_another_call", "revoked_and_again_on_the_real_call",
                                  "issued_before_on_another_call"])
def test_a_squatting_line_cannot_shed_the_contest_with_another_right(gate: Gate, shed: str) -> None:
    """Review 105 (high): the contest mark sat on the one right that held the real vessel call, so the
    squatting line, told of it, issued the container again (on another vessel call, or on the real one
    after revoking the marked right), nominated its driver there, and the gate let him through on the
    unmarked right. The mark is the line's on the container at this terminal: its rights there from
    before are marked with the holding one, and those it issues after are born marked."""
    n = 20
    earlier = _rogue(gate, n, vessel_call="VC-66") if shed == "issued_before_on_another_call" else None
    rogue, _ = _squat(gate, n) if earlier is None else (_rogue(gate, n, vessel_call="vc 1"), None)
    assert_problem(_real_issue(gate, n), 409, "active_right_exists")
    if shed == "again_on_another_call":
        newest = _rogue(gate, n, vessel_call="VC-77")
    elif shed == "revoked_and_again_on_the_real_call":
        _revoke(gate, rogue)
        newest = _rogue(gate, n, vessel_call="vc 1")
    else:
        assert earlier is not None
        newest = earlier
    for mode in ("check", "commit"):
        got = _verify(gate, n, mode=mode)
        assert {k: got[k] for k in CONTESTED} == CONTESTED, got
    said = {c["right"]["id"]: c["right"]["contested"] for c in map(payload, passes(gate).json()["passes"])}
    assert said[newest] is True
    with gate.engine.connect() as conn:
        marked = set(conn.execute(sa.select(audit_log.c.subject).where(
            audit_log.c.kind == "release.container_contested")).scalars())
    assert newest in marked  # port security is told of each right marked


def test_on_the_cache_a_squatting_lines_next_right_is_contested(cached: Gate) -> None:
    rogue, _ = _squat(cached, 21)
    assert_problem(_real_issue(cached, 21), 409, "active_right_exists")
    assert {k: _verify(cached, 21)[k] for k in CONTESTED} == CONTESTED  # the copy is warm
    newest = _rogue(cached, 21, vessel_call="VC-78")
    got = _verify(cached, 21, mode="commit")
    assert {k: got[k] for k in CONTESTED} == CONTESTED and got["release_id"] == newest


def test_a_line_whose_right_was_never_contested_issues_again_unmarked(gate: Gate) -> None:
    """Only a marked line's rights are born marked: the real line issuing a container twice (two vessel
    calls) is its own affair, and the gate allows its driver."""
    gate.pickable(22)
    assert _verify(gate, 22)["decision"] == "allow"
    r = gate.http.post("/api/v1/releases", headers=gate.as_("line"), json={
        "container_number": container(22), "bill_of_lading": "BL-22b", "vessel_call": "VC-2", "terminal": TERMINAL,
        "release_to_organisation_id": str(gate.p.fwd.organisation_id), "valid_from": datetime.now(UTC).isoformat(),
        "valid_until": (datetime.now(UTC) + timedelta(days=3)).isoformat()})
    assert r.status_code == 201, r.text
    assert _verify(gate, 22)["decision"] == "allow"
    with gate.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(
            audit_log.c.kind == "release.container_contested")).scalar_one() == 0


def test_the_terminal_reads_that_a_right_is_contested(gate: Gate) -> None:
    """Review 105 (low): the terminal that settles the doubt could not read it on the right; now each
    reader of the right sees when it was marked (and no other line named)."""
    rogue, _ = _squat(gate, 23)
    clean = gate.pickable(24)
    assert_problem(_real_issue(gate, 23), 409, "active_right_exists")
    for who in ("terminal", "customs"):
        got = gate.http.get(f"/api/v1/releases/{rogue}", headers=gate.as_(who))
        assert got.status_code == 200, got.text
        assert datetime.fromisoformat(got.json()["contested_at"]) <= datetime.now(UTC)
        assert str(gate.p.line.organisation_id) not in got.text
        assert gate.http.get(f"/api/v1/releases/{clean}", headers=gate.as_(who)).json()["contested_at"] is None


def test_a_line_issuing_a_container_again_and_again_tells_the_other_line_once(gate: Gate) -> None:
    """Review 105 (low-medium): every right another line issued on the container queued a webhook to the
    real line; a batch of fake vessel calls made thousands. The real line is told once while the other
    line holds a live right there; port security's entry is written for each."""
    ours = _subscribe(gate, gate.p.line.organisation_id)
    _rogue_line(gate)
    real = gate.pickable(25)
    now = datetime.now(UTC)
    items = [{"container_number": container(25), "bill_of_lading": f"X-{i}", "vessel_call": f"FAKE-{i}",
              "terminal": TERMINAL, "release_to_organisation_id": str(gate.p.haul.organisation_id),
              "valid_from": now.isoformat(), "valid_until": (now + timedelta(days=3)).isoformat()} for i in range(50)]
    rogue = {"Authorization": f"Bearer {gate.tokens['rogue']}"}
    r = gate.http.post("/api/v1/releases:batch", headers=rogue, json={"releases": items})
    assert r.status_code == 200, r.text
    _rogue(gate, 25, vessel_call="FAKE-X")  # and once more, alone
    assert [rid for rid, _ in _told(gate, ours)] == [real]
    with gate.engine.connect() as conn:
        entries = conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(
            audit_log.c.kind == "release.container_contested")).scalar_one()
    assert entries == 51


def _pickable_on(gate: Gate, n: int, vessel_call: str, by: str = "line") -> str:
    """As Gate.pickable, on another vessel call, issued by the real line or (``by`` "rogue") the rogue
    line, to the haulier, nominated and green."""
    r = _issue_as(gate, n, vessel_call, by=by, to=gate.p.haul)
    assert r.status_code == 201, r.text
    rid = str(r.json()["release"]["id"])
    r = gate.http.put(f"/api/v1/releases/{rid}/nomination", headers=gate.as_("haul"),
                      json={"driver_person_id": str(gate.p.driver), "plate": PLATE})
    assert r.status_code == 200, r.text
    for who in ("customs", "terminal"):
        r = gate.http.put(f"/api/v1/releases/{rid}/lights/{who}", json={"status": "green"}, headers=gate.as_(who))
        assert r.status_code == 200, r.text
    return rid


def test_a_squat_at_another_terminal_contests_the_lines_rights_here(gate: Gate) -> None:
    """Review 107 (high): the key a refusal meets (container and vessel call) has no terminal, so the rogue
    line squatted the real vessel call at another terminal and took the container here on a right of
    another vessel call, which the mark (then per terminal) did not reach. The mark is the line's on the
    container wherever it is."""
    _rogue_line(gate)
    r = _issue_as(gate, 27, "vc 1", by="rogue", terminal="BEANR-K913")
    assert r.status_code == 201, r.text
    here = _pickable_on(gate, 27, "VC-55", by="rogue")
    assert_problem(_real_issue(gate, 27), 409, "active_right_exists")
    for mode in ("check", "commit"):
        got = _verify(gate, 27, mode=mode)
        assert {k: got[k] for k in CONTESTED} == CONTESTED and got["release_id"] == here


def test_a_right_the_mark_missed_in_a_race_is_contested_at_the_gate(gate: Gate) -> None:
    """Review 107 (high): a right the squatting line issued while the refusal marked its others (neither
    transaction saw the other's) stayed unmarked. The gate reads the line's mark on the container, so
    such a right is under review all the same: here the race's outcome is made by hand."""
    rogue, _ = _squat(gate, 28)
    assert_problem(_real_issue(gate, 28), 409, "active_right_exists")
    missed = _pickable_on(gate, 28, "VC-56", by="rogue")
    with gate.engine.begin() as conn:
        conn.execute(releases.update().where(releases.c.id == uuid.UUID(missed)).values(contested_at=None))
    got = _verify(gate, 28, mode="commit")
    assert {k: got[k] for k in CONTESTED} == CONTESTED and got["release_id"] == missed
    said = {c["right"]["id"]: c["right"]["contested"] for c in map(payload, passes(gate).json()["passes"])}
    assert said[missed] is True


def test_a_marked_right_that_left_the_terminal_does_not_mark_the_next_voyage(gate: Gate) -> None:
    """Review 107 (medium-high): any line refused the real line's container marked the real line's right,
    and then every right the real line issued on the container, voyage after voyage, was born contested.
    A right that completed (the terminal settled the doubt and the container left) marks nothing after."""
    real = gate.pickable(29)
    _rogue_line(gate)
    assert_problem(_issue_as(gate, 29, "VC-1", by="rogue"), 409, "active_right_exists")
    refused = _verify(gate, 29, mode="commit")
    assert {k: refused[k] for k in CONTESTED} == CONTESTED and refused["release_id"] == real
    done = gate.http.post("/gate/v1/overrides", headers={"Authorization": f"Bearer {gate.gate_token}"}, json={
        "decision_id": refused["decision_id"], "reason": "Discharge list: came in on VC-1 of this line"})
    assert done.status_code == 201, done.text
    assert _verify(gate, 29, direction="out", mode="commit")["decision"] == "allow"
    assert gate.state(real) == "completed"
    following = _pickable_on(gate, 29, "VC-NEXT")
    got = gate.http.get(f"/api/v1/releases/{following}", headers=gate.as_("line")).json()
    assert got["contested_at"] is None
    assert _verify(gate, 29)["decision"] == "allow"


def test_a_contested_right_is_revoked_not_deleted(gate: Gate) -> None:
    """Deleting drops a right out of what the gate reads, its mark with it: a contested right is revoked."""
    _rogue_line(gate)
    rid = _rogue_unnominated(gate, 30)
    assert_problem(_real_issue(gate, 30), 409, "active_right_exists")
    r = gate.http.post(f"/api/v1/releases/{rid}/delete", headers={"Authorization": f"Bearer {gate.tokens['rogue']}"},
                       json={"reason": "issued in error"})
    assert_problem(r, 409, "illegal_transition")
    assert gate.state(rid) == "active"
    again = _pickable_on(gate, 30, "VC-57", by="rogue")
    issued = gate.http.get(f"/api/v1/releases/{again}", headers={"Authorization": f"Bearer {gate.tokens['rogue']}"})
    assert issued.json()["contested_at"] is not None  # born marked, and the answer said so
    assert {k: _verify(gate, 30)[k] for k in CONTESTED} == CONTESTED


def _rogue_unnominated(gate: Gate, n: int) -> str:
    r = _issue_as(gate, n, "vc 1", by="rogue")
    assert r.status_code == 201, r.text
    assert r.json()["release"]["contested_at"] is None
    return str(r.json()["release"]["id"])


def test_on_the_cache_a_right_the_mark_missed_is_contested(cached: Gate) -> None:
    rogue, _ = _squat(cached, 31)
    assert_problem(_real_issue(cached, 31), 409, "active_right_exists")
    assert {k: _verify(cached, 31)[k] for k in CONTESTED} == CONTESTED  # the copy is warm
    missed = _pickable_on(cached, 31, "VC-58", by="rogue")
    with cached.engine.begin() as conn:
        conn.execute(releases.update().where(releases.c.id == uuid.UUID(missed)).values(contested_at=None))
    _verify(cached, 31)  # the copy read again after the issue's invalidation, without the mark on ``missed``
    got = _verify(cached, 31, mode="commit")
    assert {k: got[k] for k in CONTESTED} == CONTESTED and got["release_id"] == missed


def test_two_lines_issuing_the_container_at_once_both_hear_of_it(pg_engine: sa.Engine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Two lines issue the same container (two vessel calls) in the same instant: each transaction's read
    of the container's rights ran before the other's insert committed, so neither saw a rival and nobody
    was told (the gate still answered review, from the rights themselves). Issues on one container are
    now serialised (``serialise_issues``): the second reads after the first committed, and both lines
    and port security hear of it. The barrier holds each issue right after its insert, until both have
    inserted or (serialised: the second waits for the first's lock) for at most a few seconds."""
    p = port(pg_engine)
    rogue = add_org(pg_engine, OrgKind.SHIPPING_LINE)
    subscriptions = {}
    with pg_engine.begin() as conn:
        for line in (p.line, rogue):
            subscriptions[line.organisation_id] = uuid.uuid4()
            conn.execute(webhook_subscriptions.insert().values(
                id=subscriptions[line.organisation_id], organisation_id=line.organisation_id,
                url="https://hooks.example/q", secret_enc="x", event_types=["release.container_contested"],
                active=True, created_at=datetime.now(UTC)))
    both_inserted = threading.Barrier(2)
    original = SqlReleaseStore.add_many

    def insert_then_wait(self: SqlReleaseStore, rights: Any) -> Any:
        out = original(self, rights)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_inserted.wait(timeout=3)
        return out

    monkeypatch.setattr(SqlReleaseStore, "add_many", insert_then_wait)
    errors: list[BaseException] = []

    def issue_as(line: Any, vessel_call: str) -> None:
        try:
            do(pg_engine, lambda uow: issue.issue(uow, line, issue_cmd(p, 5, vessel_call=vessel_call), now()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=issue_as, args=(line, call)) for line, call in ((p.line, "VC-1"),
                                                                                       (rogue, "VC-9"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with pg_engine.connect() as conn:
        entries = conn.execute(sa.select(sa.func.count()).select_from(audit_log)
                               .where(audit_log.c.kind == "release.container_contested")).scalar_one()
        told = set(conn.execute(sa.select(webhook_deliveries.c.subscription_id)
                                .where(webhook_deliveries.c.event_type == "release.container_contested")).scalars())
    assert entries == 1  # the second issue's, naming the first right
    assert told == set(subscriptions.values())  # each line about its own right


def test_two_batches_on_the_same_containers_both_go_through_and_the_second_sees_the_first(
        pg_engine: sa.Engine) -> None:
    """Two lines' batches over the same 300 containers at once, one in reverse order: both are issued in
    full (each batch locks its buckets in one ascending order, so two batches cannot deadlock; this run
    rarely interleaves the two lock statements, so it shows the outcome, not the order) and the second
    read the first's rights: one contest entry per right of it."""
    p = port(pg_engine)
    rogue = add_org(pg_engine, OrgKind.SHIPPING_LINE)
    numbers = list(range(100, 400))
    errors: list[BaseException] = []
    issued: list[int] = []
    start = threading.Barrier(2)

    def batch(line: Any, call: str, order: list[int]) -> None:
        cmds = [issue_cmd(p, n, vessel_call=call) for n in order]
        try:
            start.wait(timeout=10)
            results = do(pg_engine, lambda uow: issue.issue_batch(uow, line, cmds, now()))
            issued.append(sum(r.error is None for r in results))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=batch, args=(p.line, "VC-1", numbers)),
               threading.Thread(target=batch, args=(rogue, "VC-9", numbers[::-1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and issued == [300, 300]
    with pg_engine.connect() as conn:
        entries = conn.execute(sa.select(sa.func.count()).select_from(audit_log)
                               .where(audit_log.c.kind == "release.container_contested")).scalar_one()
    assert entries == 300  # the second batch's, one per right: each saw the first's rights


@pytest.fixture(params=["loop", "thread"])
def committing(request: pytest.FixtureRequest, pg_engine: sa.Engine, tmp_path: Any, redis_url: str) -> Any:
    """PostgreSQL and Redis, the gate's commits decided on the event loop or on the worker threads."""
    for served in test_gate_facts._serve(pg_engine, tmp_path, redis_url,
                                         gate_commit_on_loop=request.param == "loop"):
        served.commits_on = request.param  # type: ignore[attr-defined]
        yield served


def test_a_contest_marked_between_a_commits_read_and_its_write_is_decided_again(
        committing: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 130 (low): a gate commit reads its rights unlocked and writes its move only at the version
    it read; the contest mark set ``contested_at`` without a new version, so a commit that read the right
    before the real line was refused wrote allow and gated_in on a right contested by then. The mark is
    now a new version: the write updates nothing, and the gate reads again and holds the truck."""
    from release_service.adapters.sqla.gate_loop import LoopGateUnit
    from release_service.adapters.sqla.uow import SqlUnitOfWork
    from release_service.domain.errors import DomainError
    from release_service.services.common import run as run_use_case

    gate = committing
    rogue, _ = _squat(gate, 32)
    hooked: list[str] = []

    def refuse_the_real_line(on: str) -> None:
        """The real line issues the container on the real vessel call and is refused: the mark."""
        if hooked:
            return
        hooked.append(on)
        with pytest.raises(DomainError, match="live release right"):
            run_use_case(SqlUnitOfWork(gate.engine),
                         lambda uow: issue.issue(uow, gate.p.line, issue_cmd(gate.p, 32, vessel_call="VC-1"), now()),
                         lambda result: (201, None), idempotency=None, now=now())

    read_on_thread, read_on_loop = SqlReleaseStore.of_containers, LoopGateUnit.rights_of

    def read_then_mark(self: SqlReleaseStore, containers: Any) -> Any:
        rights = read_on_thread(self, containers)
        refuse_the_real_line("thread")
        return rights

    async def read_then_mark_on_loop(self: LoopGateUnit, containers: Any) -> Any:
        rights = await read_on_loop(self, containers)
        refuse_the_real_line("loop")
        return rights

    monkeypatch.setattr(SqlReleaseStore, "of_containers", read_then_mark)
    monkeypatch.setattr(LoopGateUnit, "rights_of", read_then_mark_on_loop)
    got = _verify(gate, 32, mode="commit")
    assert hooked == [gate.commits_on]  # type: ignore[attr-defined]
    assert {k: got[k] for k in CONTESTED} == CONTESTED and got["release_id"] == rogue
    assert got["committed"] is False
    assert gate.state(rogue) == "nominated"
    shown = gate.http.get(f"/api/v1/releases/{rogue}", headers={"Authorization": f"Bearer {gate.tokens['rogue']}"})
    assert shown.json()["contested_at"] is not None


def test_a_right_born_marked_is_answered_at_the_version_the_mark_made(gate: Gate) -> None:
    """The mark is a new version (review 130), a right born marked included: the issue's answer shows
    the version stored, so a write conditioned on it (If-Match) is not refused."""
    _squat(gate, 33)
    assert_problem(_real_issue(gate, 33), 409, "active_right_exists")
    r = _issue_as(gate, 33, "VC-59", by="rogue")
    assert r.status_code == 201, r.text
    answered = r.json()["release"]
    shown = gate.http.get(f"/api/v1/releases/{answered['id']}",
                          headers={"Authorization": f"Bearer {gate.tokens['rogue']}"}).json()
    assert answered["contested_at"] is not None and answered["version"] == shown["version"]

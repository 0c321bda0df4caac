"""The face evidence of an offline decision (issue 6 with issue 5's offline mode): the adapter reports
what its decision weighed (``face``, as a verify decision's row keeps it: none, a claimed match result, a
capture nobody matches offline), the service keeps it with the offline decision and on its audit entry,
and the reconcile flags an offline allow that lacked the face the terminal's policy asked for when the
truck passed, which the pass, issued before port security changed that policy, could not know
(``changed_after_pass``, ``face_required`` among ``changed_since_pass``; the truck is in, so the gate-in
is recorded). Real app and real gate tokens, SQLite and PostgreSQL; only the outage is staged."""
# ruff: noqa: F811 - ``gate`` and ``adapters`` are fixtures, imported here and requested by name

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import audit_log
from release_service.adapters.sqla.gate_policy import SqlTerminalRegistry
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain import gate as g
from release_service.domain.gate_pass import face_wanting
from release_service.services import gate_policy

from .factories import TERMINAL
from .test_gate_offline import Adapter, _post, _report, adapters, offline_rows  # noqa: F401
from .test_gate_runtime import reads
from .test_gate_verify import Gate, gate  # noqa: F401

MATCHED = {"match": {"matched": True, "score": 0.97}}
NONE = {"kind": "none"}
TRUSTED = {"kind": "match_result", "matched": True, "score": 0.97, "min_score": 0.8, "trusted": True}


def _now() -> datetime:
    return datetime.now(UTC)


def _policy(gate: Gate, at: datetime | None = None, **changes: Any) -> None:
    """Port security changes the terminal's gate policy (audited with the old and the new)."""
    with SqlUnitOfWork(gate.engine) as uow:
        gate_policy.change(uow, SqlTerminalRegistry(uow.connection), TERMINAL, changes,
                           actor={"client_id": "security"}, by="security", now=at or _now())


def _on(clocks: tuple[list[datetime], list[float]], seconds: float = 5.0) -> None:
    """The adapter's clocks (``Adapter.clocked``) moved on: an offline decision is dated by the service's
    clock as the last refresh read it (whole seconds) plus the time since, so a truck decided before this
    is dated before whatever the service did in the same second."""
    wall, mono = clocks
    wall[0] += timedelta(seconds=seconds)
    mono[0] += seconds


def _truck(a: Adapter, n: int, face: dict[str, Any] | None = None) -> dict[str, Any]:
    lane = a.lane(service_up=False)
    [result] = [r for read in reads("1-ABC-123", n, at=_now(), face=face) for r in lane.feed(read)]
    assert result.response is not None, result.error
    return result.response


def _audited(gate: Gate) -> list[dict[str, Any]]:
    with gate.engine.connect() as conn:
        return [dict(d) for d in conn.execute(
            sa.select(audit_log.c.data).where(audit_log.c.kind.in_(
                ("release.gate_offline_reconciled", "release.gate_offline_flagged"))).order_by(audit_log.c.id)
        ).scalars()]


CLAIM = g.FaceEvidence("match_result", 0.85, True)


@pytest.mark.parametrize(("policy", "face", "want"), [
    ({}, None, ()),
    ({}, CLAIM, ()),
    ({"face_required": True}, None, ("face_required",)),
    ({"face_required": True}, g.FaceEvidence.image_pending(), ("face_required",)),  # nobody matches it offline
    ({"face_required": True}, CLAIM, ("face_required",)),  # a claim the terminal does not trust
    ({"face_required": True, "face_match_results": "accept"}, CLAIM, ()),
    ({"face_required": True, "face_match_results": "accept", "face_min_score": 0.9}, CLAIM, ("face_mismatch",)),
    ({}, g.FaceEvidence("match_result", 0.99, False), ("face_mismatch",)),  # a claimed no, whatever is asked
])
def test_pure_what_the_terminal_s_policy_says_of_the_face_of_an_offline_allow(
        policy: dict[str, Any], face: g.FaceEvidence | None, want: tuple[str, ...]) -> None:
    assert face_wanting(g.TerminalPolicy(**policy), face) == want


def test_the_adapter_reports_the_face_its_offline_decision_weighed_and_the_service_keeps_it(
        gate: Gate, adapters: list[Adapter]) -> None:
    for n in (1, 2, 3):
        gate.pickable(n)
    _policy(gate, face_match_results="accept")  # the passes carry it: a claimed match counts
    a = adapters[0]
    a.offline.refresh()
    a.down()
    assert _truck(a, 1)["decision"] == "allow"  # no face, none asked for
    assert _truck(a, 2, MATCHED)["decision"] == "allow"
    image = _truck(a, 3, {"image": "aGVsbG8="})  # nobody matches a capture offline: a doubt
    assert (image["decision"], image["reasons"]) == ("review", ["face_required"])
    pending = {"kind": "image", "matched": None, "distance": None, "tolerance": None, "unavailable": "not_matched"}
    want = [NONE, TRUSTED, pending]
    assert [report.get("face") for _, report in a.outbox.unreconciled()] == want
    a.up()
    assert a.offline.reconcile() == 3
    rows = offline_rows(gate)
    assert [(r.verdict, r.flag) for r in rows] == [("recorded", None)] * 2 + [("nothing_to_record", None)]
    assert [r.face for r in rows] == want
    assert [d["face"] for d in _audited(gate)] == want


def test_an_offline_allow_without_the_face_the_terminal_required_when_it_passed_is_flagged(
        gate: Gate, adapters: list[Adapter]) -> None:
    rid = gate.pickable(1)
    a = adapters[0]
    clocks = a.clocked()
    a.offline.refresh()  # the pass: no face asked for
    a.down()
    _policy(gate, face_required=True)  # port security, after the lane's last refresh
    _on(clocks)
    assert _truck(a, 1)["decision"] == "allow"  # the pass cannot know
    a.up()
    a.offline.reconcile()
    (row,) = offline_rows(gate)
    assert (row.verdict, row.flag, row.face) == ("flagged", "changed_after_pass", NONE)
    assert gate.state(rid) == "gated_in"  # the truck is in: no second one takes the right
    [data] = _audited(gate)
    assert data["changed_since_pass"] == ["face_required"] and data["face"] == NONE


def test_a_policy_changed_after_the_truck_passed_says_nothing_of_it_and_a_trusted_match_meets_it(
        gate: Gate, adapters: list[Adapter]) -> None:
    for n in (1, 2, 3):
        gate.pickable(n)
    _policy(gate, face_match_results="accept")
    a = adapters[0]
    clocks = a.clocked()
    a.offline.refresh()
    a.down()
    assert _truck(a, 1)["decision"] == "allow"  # no face, none asked for then
    _policy(gate, face_required=True)  # asked for from now on
    _on(clocks)
    assert _truck(a, 2, MATCHED)["decision"] == "allow"  # a trusted claim: the face asked for
    assert _truck(a, 3)["decision"] == "allow"  # no face where one was asked for
    _policy(gate, at=_now() + timedelta(seconds=30), face_required=False)  # again, before the reconcile
    a.up()
    assert a.offline.reconcile() == 3
    assert [(r.verdict, r.flag, r.face) for r in offline_rows(gate)] == [
        ("recorded", None, NONE), ("recorded", None, TRUSTED), ("flagged", "changed_after_pass", NONE)]


def test_a_report_without_a_face_from_an_older_adapter_is_kept_without_one_and_a_bad_face_refused(
        gate: Gate) -> None:
    gate.pickable(1)
    gate.pickable(2)
    older = _report(gate, 1, token=None, decision="review")
    first = _post(gate, older)
    assert first.status_code == 200, first.text
    assert _post(gate, older).json() == first.json()  # sent again: the same report, not another
    (row,) = offline_rows(gate)
    assert row.face is None
    for bad in ({"kind": "selfie"}, {"kind": "match_result", "score": 1.5}, {"kind": "none", "image": "aGVsbG8="}):
        r = _post(gate, _report(gate, 2, token=None, decision="review", face=bad))
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["loc"][:2] == ["body", "face"], r.json()
    assert len(offline_rows(gate)) == 1

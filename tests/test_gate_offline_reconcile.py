"""The reconcile's two checks on an offline allow (issue 5, "Offline mode, never a PIN"), against the
real app and storage (SQLite and PostgreSQL) with real passes signed by the service:

- an offline allow may not hide an online answer to the same request_id that did not allow it (the
  adapter timed out on a deny that was recorded): FLAGGED ``contradicts_online`` (the online answer stands);
- the genuine pass an offline allow names must support it under the same offline rules the adapter
  runs (container, badge, plate, the pass's own screening and lights): else FLAGGED
  ``not_supported_by_pass``, and nothing moves.

Through the published endpoint: its answer lists every flag (a flag it did not list would be a 500,
with the decision recorded and every retry answered the same)."""
# ruff: noqa: F811 - ``gate`` and ``adapters`` are fixtures, imported here and requested by name

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from identity.domain.badges import Scheme, with_check
from quaygate.schema import audit_log, webhook_deliveries
from release_service.services import gate_passes as service

from .factories import container
from .test_gate_offline import Adapter, _post, _report, adapters, offline_rows, passes, payload  # noqa: F401
from .test_gate_verify import Gate, ban_the_driver, gate  # noqa: F401


def _now() -> datetime:
    return datetime.now(UTC)


def reconcile(gate: Gate, report: dict[str, Any]) -> dict[str, Any]:
    """POST /gate/v1/offline-decisions: the answer, as published (OfflineDecisionOut)."""
    r = _post(gate, report)
    assert r.status_code == 200, r.text
    return dict(r.json())


def pass_of(gate: Gate, rid: str) -> str:
    return next(t for t in passes(gate).json()["passes"] if payload(t)["sub"] == rid)


def flagged_events(gate: Gate, rid: str) -> tuple[list[str], int]:
    """The audit kinds of the right, and how many flag webhooks were queued."""
    with gate.engine.connect() as conn:
        kinds = list(conn.execute(sa.select(audit_log.c.kind).where(audit_log.c.subject == rid)).scalars())
        hooks = conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries)
                             .where(webhook_deliveries.c.event_type == service.FLAG_EVENT)).scalar_one()
    return kinds, hooks


def subscribe_line(gate: Gate) -> None:
    r = gate.http.post("/api/v1/webhooks", headers=gate.as_("line"),
                       json={"url": "https://hooks.example.com/q", "event_types": [service.FLAG_EVENT]})
    assert r.status_code == 201, r.text


# -- 1. an offline allow next to an online answer to the same request ---------------------------------


def test_an_offline_allow_of_a_request_denied_online_is_flagged(gate: Gate, adapters: list[Adapter]) -> None:
    """The attack: the right is blocked after the last refresh; the online commit is recorded as a deny,
    but its answer reaches the lane after the client's timeout; the adapter decides offline from its
    stale pass and lets the truck through."""
    rid = gate.pickable(1)
    subscribe_line(gate)
    a = adapters[0]
    a.offline.refresh()
    r = gate.http.post(f"/api/v1/releases/{rid}/block", headers=gate.as_("line"), json={"reason": "fraud alert"})
    assert r.status_code == 200, r.text
    body = gate.body(1, mode="commit")
    assert a.outbox.put(body)  # kept before it is sent, as the lane does
    online = gate.verify(body).json()
    assert (online["decision"], online["committed"]) == ("deny", False)
    local = a.offline.decide(body["request_id"], body)  # the answer came too late: decided from the pass
    assert local is not None and local["decision"] == "allow"
    ((request_id, report),) = a.outbox.unreconciled()
    got = reconcile(gate, report)
    assert (got["verdict"], got["flag"], got["other_decision_id"]) == (
        "flagged", "contradicts_online", online["decision_id"])
    (row,) = offline_rows(gate)
    assert (row.verdict, row.flag, str(row.other_decision_id)) == ("flagged", "contradicts_online",
                                                                   online["decision_id"])
    kinds, hooks = flagged_events(gate, rid)
    assert service.FLAG_EVENT in kinds and hooks == 1  # port security hears of it, as of any other flag
    assert gate.state(rid) == "nominated"  # the online answer stands: nothing moves
    assert reconcile(gate, report) == got  # idempotent, flag included


def test_an_offline_allow_of_another_right_than_the_online_allow_is_flagged(gate: Gate) -> None:
    one, two = gate.pickable(1), gate.pickable(2)
    body = gate.body(2, mode="commit")
    online = gate.verify(body).json()
    assert (online["decision"], online["release_id"]) == ("allow", two)
    got = reconcile(gate, _report(gate, 1, token=pass_of(gate, one)) | {"request": body})
    assert (got["verdict"], got["flag"], got["other_decision_id"]) == (
        "flagged", "contradicts_online", online["decision_id"])
    assert gate.state(one) == "nominated"


@pytest.mark.parametrize("offline", ["deny", "review"])
def test_an_offline_deny_or_review_next_to_an_online_deny_stays_unflagged(gate: Gate, offline: str) -> None:
    rid = gate.pickable(1)
    body = gate.body(1, mode="commit", badge={"scheme": "alfapass", "number": with_check(Scheme.ALFAPASS, 99999)})
    online = gate.verify(body).json()
    assert online["decision"] == "deny"
    got = reconcile(gate, _report(gate, 1, token=pass_of(gate, rid), decision=offline) | {"request": body})
    assert (got["verdict"], got["flag"], got["other_decision_id"]) == ("decided_online", None, online["decision_id"])


def test_an_offline_allow_next_to_the_same_online_allow_stays_unflagged(gate: Gate) -> None:
    rid = gate.pickable(1)
    body = gate.body(1, mode="commit")
    online = gate.verify(body).json()
    assert online["decision"] == "allow"
    got = reconcile(gate, _report(gate, 1, token=pass_of(gate, rid)) | {"request": body})
    assert (got["verdict"], got["flag"]) == ("decided_online", None)
    assert gate.state(rid) == "gated_in"  # once, by the online answer


# -- 2. an offline allow the pass does not support -----------------------------------------------------


LIES = {
    # what someone with write access to the lane PC reports as allowed, with a genuine pass of right 1
    "another_container": ({"container": {"number": container(2), "confidence": 0.97}}, None),
    "another_badge": ({"badge": {"scheme": "alfapass", "number": with_check(Scheme.ALFAPASS, 99999)}}, None),
    "another_plate": ({"plate": {"text": "9ZZZ999", "country": "BE", "confidence": 0.95}}, None),
    "no_badge": ({"badge": None}, None),
    "a_banned_driver": ({}, "banned"),  # the pass's own screening says banned
    "a_red_light": ({}, "red"),  # the pass's own right says customs red
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_an_offline_allow_the_pass_does_not_support_is_flagged_and_moves_nothing(gate: Gate, lie: str) -> None:
    change, setup = LIES[lie]
    subscribe_line(gate)
    rid = gate.pickable(1, green=setup != "red")
    gate.pickable(2)
    if setup == "banned":
        ban_the_driver(gate)  # after the nomination (which screens too), before the pass
    token = pass_of(gate, rid)  # genuine: ours, this terminal, this right, valid now
    report = _report(gate, 1, token=token)
    report["request"] |= change
    got = reconcile(gate, report)
    assert (got["verdict"], got["flag"], got["release_id"]) == ("flagged", "not_supported_by_pass", rid)
    (row,) = offline_rows(gate)
    assert (row.verdict, row.flag, row.pass_id) == ("flagged", "not_supported_by_pass", payload(token)["jti"])
    assert gate.state(rid) == "nominated"  # not a gate-in: nothing moves
    kinds, hooks = flagged_events(gate, rid)
    assert service.FLAG_EVENT in kinds and "release.gated_in" not in kinds and hooks == 1
    with gate.engine.connect() as conn:
        data = conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == service.FLAG_EVENT)).scalar_one()
    assert data["pass_says"]  # why the rules refuse, for port security


def test_the_honest_offline_gate_in_and_gate_out_on_one_pass_are_recorded(gate: Gate) -> None:
    """No false flag: the adapter let the truck in, then out, offline on the same pass (its local use of
    the right made the gate-out possible; the service knows that use from the earlier report)."""
    rid = gate.pickable(1)
    token = pass_of(gate, rid)
    assert reconcile(gate, _report(gate, 1, token=token))["verdict"] == "recorded"
    assert gate.state(rid) == "gated_in"
    out = _report(gate, 1, token=token)
    out["request"] |= {"direction": "out", "lane": "out-1"}
    got = reconcile(gate, out)
    assert (got["verdict"], got["flag"]) == ("recorded", None)
    assert gate.state(rid) == "completed"
    assert [r.flag for r in offline_rows(gate)] == [None, None]


def test_a_lie_about_a_used_right_is_flagged_as_unsupported_first(gate: Gate) -> None:
    """An untrustworthy report says more than a double use: its flag is the one port security sees."""
    rid = gate.pickable(1)
    token = pass_of(gate, rid)
    assert reconcile(gate, _report(gate, 1, token=token))["verdict"] == "recorded"
    lie = _report(gate, 1, token=token)
    lie["request"] |= LIES["another_badge"][0]
    assert reconcile(gate, lie)["flag"] == "not_supported_by_pass"
    twice = reconcile(gate, _report(gate, 1, token=token))
    assert (twice["verdict"], twice["flag"]) == ("flagged", "used_offline_twice")
    assert uuid.UUID(twice["other_decision_id"])


def test_an_offline_report_naming_another_terminals_right_raises_no_alarm_on_it(gate: Gate) -> None:
    """A gate client speaks for its own terminal's rights only: an offline allow (no pass) that names a
    right of another terminal is flagged pass_invalid as naming none. Nothing is written about that right
    or sent to its parties; the reporter's answer does not say the id exists (review 77)."""
    from quaygate.schema import releases

    subscribe_line(gate)
    rid = gate.pickable(1)
    with gate.engine.begin() as conn:
        conn.execute(releases.update().where(releases.c.id == uuid.UUID(rid)).values(terminal="BEANR-OTHER"))
    got = reconcile(gate, _report(gate, 1, token=None))
    assert (got["verdict"], got["flag"], got["release_id"]) == ("flagged", "pass_invalid", None), got
    kinds, hooks = flagged_events(gate, rid)
    assert kinds == ["release.issued", "release.nominated", "release.light.customs", "release.light.terminal"]
    assert hooks == 0
    (row,) = offline_rows(gate)
    assert row.release_id is None
    # Its own terminal's right, named the same way, is flagged and announced to its parties.
    own = gate.pickable(2)
    got = reconcile(gate, _report(gate, 2, token=None))
    assert (got["verdict"], got["flag"], got["release_id"]) == ("flagged", "pass_invalid", own), got
    assert flagged_events(gate, own)[1] == 1

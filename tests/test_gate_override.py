"""An officer's override of a refused truck goes through the adapter (overrides.py), and the right it lets
in counts as used here, as an online commit does (outbox.py rule 7): with the uplink cut before the passes
show the gate-in, offline mode never lets the same right in again at another lane of the adapter.

Against the real app (real gate token, real ES256 passes, SQLite and PostgreSQL); the officer calls the
adapter's own HTTP source (in process, over "https" as the route demands) with an officer's credential.
Only the outage is staged (a closed port), and one lost answer (a transport that drops the answer after
the real app has recorded the override); our own barrier is recorded."""
# ruff: noqa: F811 - ``gate`` and ``adapters`` are fixtures imported here and requested by name

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gate_adapters.adapter import build
from gate_adapters.core.correlate import LaneCorrelator
from gate_adapters.runtime.client import StaticToken, VerifyClient
from gate_adapters.runtime.config import parse, token_sha256
from gate_adapters.runtime.http_source import Officer, create_source_app
from gate_adapters.runtime.lane import LaneResult, LaneRuntime, LaneWorker
from gate_adapters.runtime.offline import OfflineMode, PassStore
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.overrides import (
    VERIFY_AGAIN,
    NotOverridable,
    OverrideDesk,
    OverrideRefused,
    OverrideUnanswered,
    OverrideUnrecorded,
    UnknownLane,
    UnknownRequest,
)
from gate_adapters.runtime.sinks import BarrierCommand

from .factories import TERMINAL
from .processes import free_port
from .test_gate_offline import DEAD, SECRET, Adapter, adapters, issuer  # noqa: F401
from .test_gate_runtime import _now, reads
from .test_gate_verify import Gate, gate  # noqa: F401

OFFICER_TOKEN = "officer-token-" + "o" * 32
LANES = ("in-1", "in-2")
WRONG_PLATE = "9-ZZZ-999"  # refused for the plate alone: what a person at the desk may set aside


def at_lane(a: Adapter, lane: str, *, plate: str = "1-ABC-123", service_up: bool, n: int = 1,
            badge: str = "AP-123455") -> LaneResult:
    """One truck (the test driver's badge unless told, container ``n``) at ``lane`` of adapter ``a``."""
    client = a.online if service_up else VerifyClient(DEAD, StaticToken("x"), attempts=1, timeout=0.5)
    runtime = LaneRuntime(TERMINAL, lane, "in", "commit", LaneCorrelator(lane, TERMINAL, "in"), client, a.outbox,
                          a.barrier, offline=a.offline)
    (result,) = [r for read in reads(plate, n, at=_now(), lane=lane, badge=badge) for r in runtime.feed(read)]
    return result


def refused_online(a: Adapter, lane: str = "in-1", n: int = 1) -> LaneResult:
    refused = at_lane(a, lane, plate=WRONG_PLATE, service_up=True, n=n)
    assert refused.response is not None and not refused.offline, refused.error
    assert (refused.decision, refused.response["reasons"]) == ("deny", ["plate_mismatch"]), refused.response
    return refused


@pytest.fixture
def desk(adapters: list[Adapter]) -> OverrideDesk:
    a = adapters[0]
    return OverrideDesk(a.online, a.outbox, LANES)


@pytest.fixture
def away(adapters: list[Adapter]) -> OverrideDesk:
    """The desk of an adapter whose uplink is cut: the service does not answer it."""
    return OverrideDesk(VerifyClient(DEAD, StaticToken("x"), attempts=1, timeout=0.5), adapters[0].outbox, LANES)


def _console(a: Adapter, desk: OverrideDesk, *, raise_server_exceptions: bool = True) -> Iterator[TestClient]:
    lanes = [LaneRuntime(TERMINAL, ln, "in", "commit", LaneCorrelator(ln, TERMINAL, "in"), a.online, a.outbox,
                         a.barrier) for ln in LANES]
    app = create_source_app(LaneWorker(lanes), TERMINAL, devices=None,
                            officers=(Officer("duty-officer", bytes.fromhex(token_sha256(OFFICER_TOKEN))),),
                            overrides=desk)
    with TestClient(app, base_url="https://adapter.test", raise_server_exceptions=raise_server_exceptions) as http:
        yield http


@pytest.fixture
def console(adapters: list[Adapter], desk: OverrideDesk) -> Iterator[TestClient]:
    """The adapter's HTTP source with its override desk, as an officer's console reaches it."""
    yield from _console(adapters[0], desk)


@pytest.fixture
def away_console(adapters: list[Adapter], away: OverrideDesk) -> Iterator[TestClient]:
    """The same, its uplink cut."""
    yield from _console(adapters[0], away)


def override(console: TestClient, lane: str, body: dict[str, Any], token: str = OFFICER_TOKEN) -> httpx.Response:
    return console.post(f"/officer/override/{lane}", json=body, headers={"Authorization": f"Bearer {token}"})


def test_an_override_through_the_adapter_counts_as_a_use_when_the_uplink_is_cut(
        gate: Gate, adapters: list[Adapter], console: TestClient) -> None:
    """The attack the use closes: the pass is fetched; truck A is refused online at lane 1 (the plate) and
    the officer overrides it through the adapter: the service records the gate-in. The uplink is cut
    before the next refresh; truck B with the lent badge and the nominated plate comes to lane 2. Its
    pass still shows the right unused: only the use noted with the override refuses it (already_used).
    A restart during the outage (new objects over the same files) still knows it."""
    rid = gate.pickable(1)
    a = adapters[0]
    assert a.offline.refresh() == 1  # the pass, fetched before the override
    refused = refused_online(a)
    assert a.outbox.offline_uses() == {"in": set(), "out": set()}  # a refusal uses nothing

    r = override(console, "in-1", {"request_id": refused.request_id, "reason": "hired tractor, plate checked"},
                 token="not-an-officer")
    assert (r.status_code, r.json()["code"]) == (401, "officer_credential_required"), r.text
    r = override(console, "in-1", {"request_id": refused.request_id, "reason": "hired tractor, plate checked"})
    assert r.status_code == 201, r.text
    assert refused.response is not None
    assert r.json() == {"lane": "in-1", "request_id": refused.request_id,
                        "decision_id": refused.response["decision_id"], "release_id": rid, "state": "gated_in",
                        "overridden_by": "duty-officer (http)", "counted_as_used": True}
    assert gate.state(rid) == "gated_in"
    assert a.outbox.offline_uses() == {"in": {rid}, "out": set()}
    [kept] = a.outbox.overrides(refused.request_id)
    assert (kept["outcome"], kept["officer"], kept["reason"]) == (
        "overridden", "duty-officer (http)", "hired tractor, plate checked")
    assert [c.command for c in a.barrier.commands] == [BarrierCommand.HOLD]  # the override opens nothing

    a.down()  # the uplink is cut within the refresh interval
    again = at_lane(a, "in-2", service_up=False)
    assert again.offline and again.response is not None
    assert (again.decision, again.response["reasons"], again.response["committed"]) == (
        "deny", ["already_used"], False), again.response
    assert again.response["offline"]["basis"] == "pass"  # judged on the pass, with the use counted
    assert a.barrier.commands[-1].command == BarrierCommand.HOLD

    a.outbox.close()
    a.store.close()
    a.outbox = Outbox(a.outbox.path)
    a.store = PassStore(a.store.path, issuer=issuer(gate), terminal=TERMINAL, secret=SECRET)
    a.offline = OfflineMode(a.online, a.store, a.outbox)
    a.down()
    third = at_lane(a, "in-1", service_up=False)
    assert third.response is not None and (third.decision, third.response["reasons"]) == ("deny", ["already_used"])
    assert BarrierCommand.OPEN not in [c.command for c in a.barrier.commands]


class LoseOverrideAnswers(httpx.BaseTransport):
    """The real app behind a network that loses the answer to the first ``lose`` override posts: the app
    has recorded each, the adapter hears a read timeout."""

    def __init__(self, inner: httpx.BaseTransport, lose: int) -> None:
        self.inner, self.lose = inner, lose

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path == "/gate/v1/overrides" and self.lose > 0:
            self.lose -= 1
            response.read()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


@pytest.mark.parametrize("lost", ["retried", "every_try"])
def test_an_override_whose_answer_was_lost_counts_as_a_use(
        gate: Gate, adapters: list[Adapter], lost: str) -> None:
    """overrides.py rule 3. The service recorded the override; its answer never came. Retried, the
    service says ``already_used`` (not idempotent); never answered, the adapter cannot know. Either way the
    right counts as used here, and offline mode refuses it."""
    rid = gate.pickable(1)
    a = adapters[0]
    a.offline.refresh()
    refused = refused_online(a)
    lossy = httpx.Client(transport=LoseOverrideAnswers(gate.http._transport, lose=1 if lost == "retried" else 9))
    desk = OverrideDesk(VerifyClient("http://testserver", StaticToken(gate.gate_token), http=lossy, attempts=2,
                                     sleep=lambda s: None), a.outbox, LANES)
    if lost == "retried":
        with pytest.raises(OverrideRefused) as exc:
            desk.override("in-1", refused.request_id, "checked at the desk", by="J. Peeters (test)")
        assert (exc.value.code, exc.value.used) == ("already_used", True)
    else:
        with pytest.raises(OverrideUnanswered):
            desk.override("in-1", refused.request_id, "checked at the desk", by="J. Peeters (test)")
    assert gate.state(rid) == "gated_in"  # recorded by the service, whatever the adapter heard
    assert a.outbox.offline_uses() == {"in": {rid}, "out": set()}
    assert [o["outcome"] for o in a.outbox.overrides(refused.request_id)] == [
        "already_used" if lost == "retried" else "unanswered"]
    a.down()
    got = at_lane(a, "in-2", service_up=False)
    assert got.response is not None and (got.decision, got.response["reasons"]) == ("deny", ["already_used"])


def test_only_a_refusal_the_service_made_here_is_sent_and_a_final_refusal_uses_nothing(
        gate: Gate, adapters: list[Adapter], desk: OverrideDesk, console: TestClient) -> None:
    """overrides.py rule 2: the desk sends only a refused gate-in the service decided at this lane; the
    service's own refusal is relayed, kept, and counts as no use (the right was not let in)."""
    a = adapters[0]
    with pytest.raises(UnknownLane):
        desk.override("in-9", "r-1", "x", by="o")
    with pytest.raises(UnknownRequest):
        desk.override("in-1", "no-such-request", "x", by="o")
    with pytest.raises(ValueError, match="reason"):
        desk.override("in-1", "no-such-request", "   ", by="o")

    gate.pickable(1)
    a.offline.refresh()
    refused = refused_online(a)
    with pytest.raises(UnknownRequest):  # another lane's truck
        desk.override("in-2", refused.request_id, "x", by="o")
    allowed = at_lane(a, "in-2", service_up=True)
    assert (allowed.decision, allowed.response["committed"]) == ("allow", True)  # type: ignore[index]
    with pytest.raises(NotOverridable, match="did not refuse"):
        desk.override("in-2", allowed.request_id, "x", by="o")
    # Now the right is used: the service refuses the override of the earlier refusal (already_used; the
    # use is counted, and it is true), and a decision it can never override (no right) is refused here.
    with pytest.raises(OverrideRefused) as used:
        desk.override("in-1", refused.request_id, "x", by="o")
    assert (used.value.code, used.value.status, used.value.used) == ("already_used", 409, True)
    unknown = refused_online_unknown(a)
    with pytest.raises(NotOverridable, match="no release right"):
        desk.override("in-1", unknown.request_id, "x", by="o")

    gate.pickable(2)
    a.offline.refresh()
    a.down()
    offline = at_lane(a, "in-1", service_up=False, n=78)  # no pass for that container: no right to let in
    assert offline.offline and offline.decision == "review", offline.response
    with pytest.raises(NotOverridable, match="without finding a release right"):
        desk.override("in-1", offline.request_id, "x", by="o")
    a.up()

    # A refusal the service makes for good (its rules: not the desk's to set aside) counts as no use.
    rid = gate.pickable(3)
    a.offline.refresh()
    from quaygate.schema import badges  # the badge office blocks the driver's badge
    with gate.engine.begin() as conn:
        conn.execute(badges.update().where(badges.c.number == gate.badge_number).values(status="blocked"))
    blocked = at_lane(a, "in-1", service_up=True, n=3)
    assert blocked.decision == "deny" and "badge_blocked" in blocked.response["reasons"]  # type: ignore[index]
    before = a.outbox.offline_uses()
    r = override(console, "in-1", {"request_id": blocked.request_id, "reason": "known driver"})
    assert (r.status_code, r.json()["code"]) == (409, "illegal_transition"), r.text
    assert a.outbox.offline_uses() == before and rid not in before["in"]
    assert [o["outcome"] for o in a.outbox.overrides(blocked.request_id)] == ["refused"]
    assert gate.state(rid) == "nominated"
    for body in ({"request_id": blocked.request_id}, {"request_id": 7, "reason": "x"},
                 {"request_id": blocked.request_id, "reason": "x", "by": "someone else"}):
        r = override(console, "in-1", body)
        assert (r.status_code, r.json()["code"]) == (400, "payload_refused"), r.text


def refused_online_unknown(a: Adapter) -> LaneResult:
    """A truck whose container has no right (``container_unknown``): refused, nothing to let in."""
    got = at_lane(a, "in-1", service_up=True, n=77)
    assert got.response is not None and got.response["release_id"] is None and got.decision != "allow", got
    return got


def test_an_override_the_service_cannot_hear_counts_as_a_use_and_says_so(
        gate: Gate, adapters: list[Adapter], tmp_path: Path) -> None:
    """The service is away when the officer overrides: the adapter cannot know whether an earlier try
    landed, so the right counts as used here (fail closed, rule 3) and the officer is told to ask again."""
    rid = gate.pickable(1)
    a = adapters[0]
    a.offline.refresh()
    refused = refused_online(a)
    away = OverrideDesk(VerifyClient(DEAD, StaticToken("x"), attempts=1, timeout=0.5), a.outbox, LANES)
    with pytest.raises(OverrideUnanswered, match="ask again"):
        away.override("in-1", refused.request_id, "checked", by="o")
    assert a.outbox.offline_uses()["in"] == {rid} and gate.state(rid) == "nominated"
    done = OverrideDesk(a.online, a.outbox, LANES).override("in-1", refused.request_id, "checked", by="o")
    assert (done.state, gate.state(rid)) == ("gated_in", "gated_in")
    assert [o["outcome"] for o in a.outbox.overrides(refused.request_id)] == ["unanswered", "overridden"]


def test_the_adapter_as_built_serves_the_override_to_its_officers(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``build`` wires the override desk to the HTTP source: an officer reaches it, for the adapter's lanes."""
    monkeypatch.setenv("QUAYGATE_GATE_CLIENT_SECRET", "s3cret")
    adapter = build(parse({
        "terminal": TERMINAL, "outbox": "outbox.sqlite3", "dev": True,
        "service": {"base_url": "http://127.0.0.1:9"}, "auth": {"client_id": "gate"},
        "http": {"port": free_port(),
                 "officers": [{"name": "duty-officer", "token_sha256": token_sha256(OFFICER_TOKEN)}]},
        "lanes": [{"lane": "in-1"}]}, base=tmp_path))
    try:
        with TestClient(adapter.http_server.config.app, base_url="https://adapter.test") as http:
            for lane, status, code in (("in-1", 404, "unknown_request"), ("in-9", 404, "unknown_lane")):
                r = override(http, lane, {"request_id": "no-such-request", "reason": "checked"})
                assert (r.status_code, r.json()["code"]) == (status, code), r.text
    finally:
        adapter.outbox.close()


# -- an offline refusal overridden at the desk (review 121, finding 2) ---------------------------------------


def _offline_rows(gate: Gate) -> list[Any]:
    import sqlalchemy as sa

    from quaygate.schema import gate_offline_decisions
    with gate.engine.connect() as conn:
        return list(conn.execute(sa.select(gate_offline_decisions).order_by(gate_offline_decisions.c.reconciled_at)))


def _audit(gate: Gate, rid: str, kind: str) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    from quaygate.schema import audit_log
    with gate.engine.connect() as conn:
        return [dict(d) for d in conn.execute(sa.select(audit_log.c.data).where(
            audit_log.c.subject == rid, audit_log.c.kind == kind).order_by(audit_log.c.id)).scalars()]


def refused_offline(a: Adapter, lane: str = "in-1", n: int = 1) -> LaneResult:
    refused = at_lane(a, lane, plate=WRONG_PLATE, service_up=False, n=n)
    assert refused.offline and refused.response is not None
    assert (refused.decision, refused.response["reasons"], refused.response["offline"]["basis"]) == (
        "deny", ["plate_mismatch"], "pass"), refused.response
    return refused


def test_an_offline_refusal_overridden_at_the_desk_counts_as_a_use_and_is_reconciled_as_an_audited_override(
        gate: Gate, adapters: list[Adapter], away_console: TestClient, away: OverrideDesk) -> None:
    """The attack: during an outage a hired tractor (another plate) is refused offline; the officer lets it
    in by hand. Before, the desk refused the override (nothing audited, no use noted, the reconcile heard
    only a deny), and a second truck with the same badge and the nominated plate was allowed offline at
    lane 2 and recorded clean. Now the override is noted as a use under the outbox's seal (lane 2 refuses
    already_used) and reconciled as an audited override (release.gate_override, the officer and his
    reason in it): the right is gated in, once."""
    rid = gate.pickable(1)
    a = adapters[0]
    assert a.offline.refresh() == 1
    a.down()
    refused = refused_offline(a)
    assert refused.response is not None
    r = override(away_console, "in-1", {"request_id": refused.request_id, "reason": "hired tractor, plate checked"})
    assert r.status_code == 201, r.text
    assert r.json() == {
        "lane": "in-1", "request_id": refused.request_id, "decision_id": refused.response["decision_id"],
        "release_id": rid, "state": "recorded_locally", "overridden_by": "duty-officer (http)",
        "counted_as_used": True, "recorded": "locally",
        "note": "decided offline: the override is recorded here and will be reconciled with the service when it "
                "can be reached"}
    assert a.outbox.offline_uses() == {"in": {rid}, "out": set()}
    [kept] = a.outbox.overrides(refused.request_id)
    assert (kept["outcome"], kept["officer"]) == ("offline", "duty-officer (http)")
    assert gate.state(rid) == "nominated"  # the service does not know yet

    again = at_lane(a, "in-2", service_up=False)  # the same badge, the nominated plate
    assert again.offline and again.response is not None
    assert (again.decision, again.response["reasons"]) == ("deny", ["already_used"]), again.response
    with pytest.raises(NotOverridable, match="already_used"):  # not the desk's to set aside
        away.override("in-2", again.request_id, "x", by="o")
    with pytest.raises(NotOverridable, match="used here already"):  # the same refusal, twice
        away.override("in-1", refused.request_id, "again", by="o")
    assert BarrierCommand.OPEN not in [c.command for c in a.barrier.commands]

    a.up()
    assert a.offline.reconcile() == 3  # the refusal, its override, the second truck's refusal
    assert gate.state(rid) == "gated_in"
    rows = {r.request_id: r for r in _offline_rows(gate)}
    [key] = [k for k in rows if k.startswith("override:")]
    assert (rows[key].verdict, rows[key].flag, str(rows[key].release_id)) == ("recorded", None, rid)
    assert rows[refused.request_id].verdict == "nothing_to_record"
    [event] = _audit(gate, rid, "release.gate_override")
    assert "hired tractor, plate checked" in event["reason"] and event["officer"] == "duty-officer (http)"
    assert "duty-officer" not in event["reason"]  # beside it, for the terminal and port security (review 171)
    assert event["decision_id"] == str(rows[key].id)
    # What it set aside (review 142): the plate alone, no check of who came; port security's alarm stays quiet.
    assert event["set_aside"] == ["plate_mismatch"] and _audit(gate, rid, "release.gate_override_alarm") == []
    [audited] = [d for d in _audit(gate, rid, "release.gate_offline_reconciled") if "override" in d]
    assert audited["override"]["officer"] == "duty-officer (http)"
    assert audited["override"]["decision_id"] == refused.response["decision_id"]
    assert a.outbox.unreconciled() == []
    assert a.outbox.offline_result(key)["verdict"] == "recorded"  # type: ignore[index]


def test_an_override_committed_between_an_offline_decisions_read_and_its_write_lets_no_second_truck_in(
        gate: Gate, adapters: list[Adapter], away: OverrideDesk, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 155, finding 2: OfflineMode.decide read the right's uses, then recorded its decision in a later
    transaction that did not look again; an officer's override (Outbox.override_offline, outside offline
    mode's lock) committed between the two let a second truck in on the one right. Interleaved
    deterministically: the override of lane 1's refusal runs right after lane 2's decision read the uses
    (still none). Now the write looks again in its own transaction: lane 2's allow is recorded as the
    refusal the rules give a right used here (deny already_used), never an allow."""
    rid = gate.pickable(1)
    a = adapters[0]
    assert a.offline.refresh() == 1
    a.down()
    refused = refused_offline(a)
    read = a.outbox.offline_uses
    done: list[Any] = []

    def uses_then_override(**kw: Any) -> dict[str, set[str]]:
        got = read(**kw)
        if not done:
            done.append(away.override("in-1", refused.request_id, "hired tractor, plate checked", by="o"))
        return got

    monkeypatch.setattr(a.outbox, "offline_uses", uses_then_override)
    second = at_lane(a, "in-2", service_up=False)  # the same badge, the nominated plate
    monkeypatch.undo()
    assert done and done[0].state == "recorded_locally"
    assert second.offline and second.response is not None
    assert (second.decision, second.response["reasons"]) == ("deny", ["already_used"]), second.response
    assert a.outbox.offline_report(second.request_id)["decision"] == "deny"  # type: ignore[index]
    assert BarrierCommand.OPEN not in [c.command for c in a.barrier.commands]
    a.up()
    assert a.offline.reconcile() == 3
    assert gate.state(rid) == "gated_in"
    assert [r.verdict for r in _offline_rows(gate) if r.request_id == second.request_id] == ["nothing_to_record"]


def test_an_offline_override_of_a_right_used_online_meanwhile_is_flagged(
        gate: Gate, adapters: list[Adapter], away: OverrideDesk) -> None:
    """The right was used online at another gate while this one was cut off: the override is flagged
    used_online_meanwhile (the first use stands), and a report the pass does not back is refused."""
    rid = gate.pickable(1)
    a = adapters[0]
    a.offline.refresh()
    a.down()
    refused = refused_offline(a)
    done = away.override("in-1", refused.request_id, "known driver", by="J. Peeters (test)")
    assert done.offline and done.state == "recorded_locally"
    online = gate.verify(gate.body(1, mode="commit")).json()  # another gate, online, meanwhile
    assert online["committed"] is True
    a.up()
    assert a.offline.reconcile() == 2
    [row] = [r for r in _offline_rows(gate) if r.request_id.startswith("override:")]
    assert (row.verdict, row.flag, str(row.other_decision_id)) == ("flagged", "used_online_meanwhile",
                                                                    online["decision_id"])
    assert _audit(gate, rid, "release.gate_override") == []

    # The lane's PC reports an override of what no desk may set aside: flagged, nothing moves.
    rid2 = gate.pickable(2)
    a.offline.refresh()
    a.down()
    second = refused_offline(a, n=2)
    away.override("in-1", second.request_id, "checked", by="o")
    [(key, report)] = [(k, r) for k, r in a.outbox.unreconciled() if k.startswith("override:")]
    forged = {**report, "reasons": ["badge_blocked"], "override": {**report["override"], "id": str(__import__(
        "uuid").uuid4())}}
    forged.pop("outbox", None)
    got = gate.http.post("/gate/v1/offline-decisions", json=forged,
                         headers={"Authorization": f"Bearer {gate.gate_token}"})
    assert got.status_code == 200, got.text
    assert (got.json()["verdict"], got.json()["flag"]) == ("flagged", "not_supported_by_pass")
    assert gate.state(rid2) == "nominated"
    blank = {**forged, "override": {**forged["override"], "reason": "   "}}
    assert gate.http.post("/gate/v1/offline-decisions", json=blank,
                          headers={"Authorization": f"Bearer {gate.gate_token}"}).status_code == 422
    a.up()
    assert a.offline.reconcile() == 2  # the genuine one: recorded
    assert gate.state(rid2) == "gated_in"
    assert a.outbox.offline_result(key)["verdict"] == "recorded"  # type: ignore[index]


def test_an_offline_override_is_sealed_in_the_outbox_chain(tmp_path: Path) -> None:
    """outbox.py rule 10: the override's use is an offline decision of the sealed chain, so deleting it
    from the file (to let a second truck in on the right) leaves the outbox tampered (every offline
    truck a review), as deleting an offline gate-in does."""
    import sqlite3
    import uuid

    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path, secret=SECRET)
    rid, decision_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"request_id": "r-1", "lane": "in-1", "direction": "in", "mode": "commit"}
    assert box.put(body)
    response = {"decision": "deny", "reasons": ["plate_mismatch"], "decision_id": decision_id, "release_id": rid,
                "direction": "in", "mode": "commit", "offline": {"basis": "pass", "pass_id": "p-1"}}
    assert box.decide_offline("r-1", response, {"request": body, "decision": "deny", "reasons": ["plate_mismatch"],
                                                "release_id": rid, "basis": "pass", "gate_pass": "a.b.c",
                                                "decided_at": "2026-11-24T06:00:00+00:00"})
    done = OverrideDesk(VerifyClient(DEAD, StaticToken("x"), attempts=1, timeout=0.5), box, LANES).override(
        "in-1", "r-1", "hired tractor", by="o")
    assert done.offline and box.offline_uses() == {"in": {rid}, "out": set()}
    assert box.check(full=True) is None
    (_, first), (key, report) = box.unreconciled()
    assert key.startswith("override:") and report["outbox"]["seq"] == first["outbox"]["seq"] + 1
    overridden_at = report["override"].pop("overridden_at")
    assert report["override"] == {"id": key.removeprefix("override:"), "officer": "o", "reason": "hired tractor",
                                  "decision_id": decision_id}
    assert "2026-11-24T06:00:00" <= overridden_at < "2026-11-24T06:00:05"  # the refusal's time, plus a moment
    box.close()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM offline_decisions WHERE request_id = ?", (key,))
    db.close()
    box = Outbox(path, secret=SECRET)
    try:
        assert box.tampered is not None
    finally:
        box.close()


# -- review 124, finding 1: another person's badge, set aside offline ------------------------------------------


def another_driver(gate: Gate, *, banned: bool) -> str:
    """A real driver with an active badge activated at this terminal, not the one nominated; ``banned``: on
    the national port-ban list, in force. Returns his badge number."""
    import uuid
    from datetime import timedelta

    from identity.domain.badges import Scheme, with_check
    from quaygate.schema import badge_activations, badges, ban_feed_state, persons, port_bans

    from .factories import add_driver
    number = with_check(Scheme.ALFAPASS, 54321)
    person = add_driver(gate.engine, gate.p.haul.organisation_id, number=number)  # type: ignore[arg-type]
    with gate.engine.begin() as conn:
        badge_id = conn.execute(sa_select(badges.c.id).where(badges.c.person_id == person)).scalar_one()
        conn.execute(badge_activations.insert().values(id=uuid.uuid4(), badge_id=badge_id, terminal_code=TERMINAL,
                                                       activated_by="desk", activated_at=_now()))
        if banned:
            conn.execute(persons.update().where(persons.c.id == person).values(national_id_hash="b" * 64))
            conn.execute(port_bans.insert().values(
                register="BE-NBR", reference="B-9", subject_hash="b" * 64, scope="all",
                banned_from=_now() - timedelta(days=1), banned_until=_now() + timedelta(days=30), feed_sequence=1))
            conn.execute(ban_feed_state.insert().values(register="BE-NBR", sequence=1, issued_at=_now(),
                                                        loaded_at=_now(), digest="d" * 64))
    return number


def sa_select(*columns: Any) -> Any:
    import sqlalchemy as sa
    return sa.select(*columns)


def test_an_offline_override_of_another_persons_badge_is_flagged_and_the_right_taken_out_of_use(
        gate: Gate, adapters: list[Adapter]) -> None:
    """Review 124, finding 1 (the reviewer's demonstration). During an outage a truck comes with another
    person's real, active badge: a banned driver's own. Online that is driver_mismatch and person_banned,
    which no desk sets aside; offline the adapter knows only the nominated driver's badges, so it reads
    badge_unknown with screening_unavailable (and the plate), all of which a desk may set aside, and the
    officer does. Before, the reconcile replayed only the pass's rules and recorded a clean override. Now
    the service looks the badge up: flagged not_supported_by_pass with what the badge says; the truck is in,
    so the right is marked used by an override saying the service refused it: no second truck takes it."""
    rid = gate.pickable(1)
    other = another_driver(gate, banned=True)
    online = gate.verify(gate.body(1, badge={"scheme": "alfapass", "number": other},
                                   plate={"text": "9ZZZ999", "country": "BE", "confidence": 0.95})).json()
    assert (online["decision"], online["reasons"]) == ("deny", ["driver_mismatch", "plate_mismatch", "person_banned"])
    a = adapters[0]
    assert a.offline.refresh() == 1
    a.down()
    refused = at_lane(a, "in-1", plate=WRONG_PLATE, service_up=False, badge=other)
    assert refused.offline and refused.response is not None
    assert (refused.decision, refused.response["reasons"]) == (
        "deny", ["badge_unknown", "plate_mismatch", "screening_unavailable"]), refused.response
    away = OverrideDesk(VerifyClient(DEAD, StaticToken("x"), attempts=1, timeout=0.5), a.outbox, LANES)
    assert away.override("in-1", refused.request_id, "hired tractor, badge left at home", by="o").offline

    a.up()
    assert a.offline.reconcile() == 2
    [row] = [r for r in _offline_rows(gate) if r.request_id.startswith("override:")]
    assert (row.verdict, row.flag) == ("flagged", "not_supported_by_pass")
    assert gate.state(rid) == "gated_in"  # the truck is in: taken out of use, not left for a second truck
    [flagged] = _audit(gate, rid, "release.gate_offline_flagged")
    assert flagged["badge_says"] == ["driver_mismatch", "person_banned"]
    assert flagged["badge_holder_person_id"] != str(gate.p.driver)
    [event] = _audit(gate, rid, "release.gate_override")
    assert event["reason"].startswith("NOT SUPPORTED by the service") and "person_banned" in event["reason"]
    # What the officer set aside (review 142), a badge nobody offline knew among it: port security's alarm.
    assert event["set_aside"] == ["badge_unknown", "plate_mismatch", "screening_unavailable"]
    [alarm] = _audit(gate, rid, "release.gate_override_alarm")
    assert (alarm["identity_checks"], alarm["decision_id"]) == (["badge_unknown"], event["decision_id"])
    second = gate.verify(gate.body(1, mode="commit")).json()  # the nominated driver and truck, online
    assert second["decision"] == "deny" and "already_used" in second["reasons"], second


def test_an_offline_override_naming_a_refusal_never_reported_moves_nothing(
        gate: Gate, adapters: list[Adapter]) -> None:
    """Review 124, finding 1: an override report names the refusal it sets aside (its request); the service
    holds it to the refusal the adapter reported before, word for word. Another request (never refused),
    or the refusal's report changed, is the lane's word alone: flagged, nothing moves."""
    import uuid

    rid = gate.pickable(1)
    a = adapters[0]
    a.offline.refresh()
    a.down()
    refused = refused_offline(a)
    away = OverrideDesk(VerifyClient(DEAD, StaticToken("x"), attempts=1, timeout=0.5), a.outbox, LANES)
    away.override("in-1", refused.request_id, "hired tractor", by="o")
    [(_, report)] = [(k, r) for k, r in a.outbox.unreconciled() if k.startswith("override:")]
    report.pop("outbox", None)

    def post(forged: dict[str, Any]) -> Any:
        got = gate.http.post("/gate/v1/offline-decisions", json=forged,
                             headers={"Authorization": f"Bearer {gate.gate_token}"})
        assert got.status_code == 200, got.text
        return got.json()

    never = {**report, "request": {**report["request"], "request_id": str(uuid.uuid4())},
             "override": {**report["override"], "id": str(uuid.uuid4())}}
    assert (post(never)["verdict"], post(never)["flag"]) == ("flagged", "not_supported_by_pass")
    assert gate.state(rid) == "nominated"
    a.up()
    assert a.offline.reconcile() == 2  # the refusal, then its override: recorded
    other_time = {**report, "decided_at": _now().isoformat(), "override": {**report["override"],
                                                                           "id": str(uuid.uuid4())}}
    assert (post(other_time)["verdict"], post(other_time)["flag"]) == ("flagged", "not_supported_by_pass")
    assert gate.state(rid) == "gated_in"
    assert [r.flag for r in _offline_rows(gate) if r.request_id.startswith("override:")].count(None) == 1


# -- review 124, finding 2: an offline override's time ---------------------------------------------------------


def ban_driver(gate: Gate, *, since: datetime) -> None:
    """The nominated test driver on the national port-ban list from ``since``, by a list in force."""
    from datetime import timedelta

    from quaygate.schema import ban_feed_state, persons, port_bans
    with gate.engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == gate.p.driver).values(national_id_hash="h" * 64))
        conn.execute(port_bans.insert().values(register="BE-NBR", reference="B-1", subject_hash="h" * 64, scope="all",
                                               banned_from=since, banned_until=since + timedelta(days=30),
                                               feed_sequence=1))
        conn.execute(ban_feed_state.insert().values(register="BE-NBR", sequence=1, issued_at=_now(),
                                                    loaded_at=_now(), digest="d" * 64))


def test_an_offline_refusal_is_overridden_at_the_service_once_it_answers(
        gate: Gate, adapters: list[Adapter], desk: OverrideDesk) -> None:
    """Review 124, finding 2 (the reviewer's demonstration). Two trucks refused offline for the plate; the
    service is back. Before, the desk still recorded their overrides locally, and one of a driver banned
    since was reconciled clean. Now it verifies the truck again and overrides the service's own decision:
    the first is let in by the service at once; the banned driver's is the service's refusal (person_banned
    is not the desk's to set aside), relayed: nothing let in, no use, nothing to reconcile."""
    first, second = gate.pickable(1), gate.pickable(2)
    a = adapters[0]
    assert a.offline.refresh() == 2
    a.down()
    refused = [refused_offline(a, n=n) for n in (1, 2)]
    a.up()

    done = desk.override("in-1", refused[0].request_id, "hired tractor, plate checked", by="o")
    assert (done.state, done.offline, gate.state(first)) == ("gated_in", False, "gated_in")
    assert done.decision_id != refused[0].response["decision_id"]  # type: ignore[index]  # the service's own
    assert [o["outcome"] for o in a.outbox.overrides(refused[0].request_id)] == ["overridden"]
    [event] = _audit(gate, first, "release.gate_override")
    assert event["decision_id"] == done.decision_id

    ban_driver(gate, since=_now())
    online = gate.verify(gate.body(2, plate={"text": "9ZZZ999", "country": "BE", "confidence": 0.95})).json()
    assert online["decision"] == "deny" and "person_banned" in online["reasons"], online
    with pytest.raises(OverrideRefused) as exc:
        desk.override("in-1", refused[1].request_id, "hired tractor, plate checked", by="o")
    assert (exc.value.code, exc.value.used) == ("illegal_transition", False)
    assert "person_banned" in str(exc.value)
    assert gate.state(second) == "nominated"
    assert a.outbox.offline_uses()["in"] == {first}
    assert [o["outcome"] for o in a.outbox.overrides(refused[1].request_id)] == ["refused"]
    assert a.offline.reconcile() == 2  # the two refusals, and no override of the adapter's own
    assert not [r for r in _offline_rows(gate) if r.request_id.startswith("override:")]
    assert gate.state(second) == "nominated"


def test_an_offline_refusal_the_service_now_allows_is_let_in_by_the_service_once(
        gate: Gate, adapters: list[Adapter], desk: OverrideDesk) -> None:
    """overrides.py rule 7: refused offline for the plate; meanwhile the haulier nominated the hired tractor.
    Verified again at the desk, the service allows and records the gate-in itself: no override. Asked
    again, the same request is sent again, and the service answers it the same, never a second gate-in."""
    rid = gate.pickable(1)
    a = adapters[0]
    a.offline.refresh()
    a.down()
    refused = refused_offline(a)
    a.up()
    r = gate.http.put(f"/api/v1/releases/{rid}/nomination", headers=gate.as_("haul"),
                      json={"driver_person_id": str(gate.p.driver), "plate": {"text": WRONG_PLATE, "country": "BE"}})
    assert r.status_code == 200, r.text
    done = desk.override("in-1", refused.request_id, "hired tractor", by="o")
    assert (done.state, done.allowed, gate.state(rid)) == ("gated_in", True, "gated_in")
    assert "no override was needed" in done.as_json()["note"]
    again = desk.override("in-1", refused.request_id, "hired tractor", by="o")
    assert again.decision_id == done.decision_id
    assert len(_audit(gate, rid, "release.gated_in")) == 1 and _audit(gate, rid, "release.gate_override") == []
    assert a.outbox.offline_uses()["in"] == {rid}


class _ServiceClock:
    """The service's clock, ``by`` seconds ahead of the wall clock (hours after the refusal)."""

    def __init__(self, by: float) -> None:
        self.by = by

    def now(self) -> datetime:
        from datetime import timedelta
        return _now() + timedelta(seconds=self.by)


@pytest.mark.parametrize(("hours", "renominated"), [(5, False), (20, True)])
def test_an_offline_refusal_over_an_hour_old_is_not_let_in_once_the_service_answers(
        gate: Gate, adapters: list[Adapter], tmp_path: Path, hours: int, renominated: bool) -> None:
    """Review 162, finding 1 (the reviewer's demonstration). A truck refused offline for the plate; hours
    later (both of the adapter's clocks, and the service's) the uplink is back and an insider overrides that
    old refusal at the desk. Before, the hour (rule 6) was checked only on the local path: the desk verified
    the truck again and overrode the service's fresh refusal (5 h: gated_in, a release.gate_override), or,
    the right re-nominated to the hired tractor's plate meanwhile, took the service's allow (20 h: a plain
    gated_in, no release.gate_override, no alarm): the service's only limit was its 24 h observed_at rule.
    Online, the service refuses the override of a refusal that old (409); the desk now refuses it too, as
    "too old", before it sends anything: nothing verified, nothing let in, no use noted."""
    import uuid

    import sqlalchemy as sa

    from quaygate.schema import gate_decisions

    rid = gate.pickable(1)
    a = adapters[0]
    a.outbox.close()
    wall, mono = [_now().timestamp()], [500.0]
    a.outbox = Outbox(tmp_path / "clocked-outbox.sqlite3", wall=lambda: wall[0], clock=lambda: mono[0])
    a.offline = OfflineMode(a.online, a.store, a.outbox)
    assert a.offline.refresh() == 1
    a.down()
    refused = refused_offline(a)
    a.up()
    if renominated:
        r = gate.http.put(f"/api/v1/releases/{rid}/nomination", headers=gate.as_("haul"), json={
            "driver_person_id": str(gate.p.driver), "plate": {"text": WRONG_PLATE, "country": "BE"}})
        assert r.status_code == 200, r.text
    wall[0] += hours * 3600.0
    mono[0] += hours * 3600.0
    gate.http.app.state.container.clock = _ServiceClock(hours * 3600.0)  # type: ignore[attr-defined]

    desk = OverrideDesk(a.online, a.outbox, LANES)
    with pytest.raises(NotOverridable, match=f"refused offline {hours * 60} minutes ago.*read again at the lane"):
        desk.override("in-1", refused.request_id, "hired tractor, plate checked", by="o")
    assert gate.state(rid) == "nominated"
    assert _audit(gate, rid, "release.gated_in") == [] and _audit(gate, rid, "release.gate_override") == []
    with gate.engine.connect() as conn:  # nothing sent: the service never heard of the truck again
        again = str(uuid.uuid5(VERIFY_AGAIN, refused.request_id))
        assert conn.execute(sa.select(sa.func.count()).select_from(gate_decisions).where(
            gate_decisions.c.request_id == again)).scalar_one() == 0
    assert a.outbox.overrides(refused.request_id) == [] and rid not in a.outbox.offline_uses()["in"]


def test_a_local_override_is_refused_an_hour_after_the_refusal_by_either_clock(tmp_path: Path) -> None:
    """overrides.py rule 6: offline, an override lets in the truck refused while it is at the gate, an hour at
    most (as online). Before, any refusal kept keep_days could be set aside. The age is the larger of the wall
    and monotonic clocks' (outbox.py rule 11): a wall clock held back (NTP spoofed) does not make an old
    refusal young, nor does a restart; one that reads earlier than the refusal tells no age. A refusal
    refused so is refused before the desk verifies the truck again (review 162, finding 1): nothing sent,
    so no use to note (before, the verify tried may have landed, and the right counted as used, rule 7)."""
    from datetime import timedelta

    wall, mono = [1_800_000_000.0], [500.0]
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path, secret=SECRET, wall=lambda: wall[0], clock=lambda: mono[0])
    decided_at = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)

    def refusal(n: int) -> tuple[str, str]:
        return f"r-{n}", offline_refusal(box, f"r-{n}", decided_at)

    def desk() -> OverrideDesk:
        return OverrideDesk(VerifyClient(DEAD, StaticToken("x"), attempts=1, timeout=0.5), box, LANES)

    held_back, rid = refusal(1)
    mono[0] += 3601  # the wall clock held back, the process's own clock runs on
    with pytest.raises(NotOverridable, match="60 minutes ago"):
        desk().override("in-1", held_back, "hired tractor", by="o")
    assert rid not in box.offline_uses()["in"] and box.overrides(held_back) == []  # nothing sent

    late, _ = refusal(2)
    wall[0] += 3601
    with pytest.raises(NotOverridable, match="60 minutes ago"):
        desk().override("in-1", late, "hired tractor", by="o")

    wound_back, _ = refusal(3)
    wall[0] -= 60
    with pytest.raises(NotOverridable, match="reads earlier than the refusal"):
        desk().override("in-1", wound_back, "hired tractor", by="o")

    fresh, _ = refusal(4)
    box.close()  # a restart: the monotonic clock knows nothing older than its start
    mono[0] = 10.0
    box = Outbox(path, secret=SECRET, wall=lambda: wall[0], clock=lambda: mono[0])
    wall[0] += 600
    done = desk().override("in-1", fresh, "hired tractor", by="o")
    assert done.offline
    [report] = [r for k, r in box.unreconciled() if k.startswith("override:")]
    assert report["override"]["overridden_at"] == (decided_at + timedelta(seconds=600)).isoformat()
    restarted, _ = refusal(5)
    box.close()
    mono[0] = 10.0
    box = Outbox(path, secret=SECRET, wall=lambda: wall[0], clock=lambda: mono[0])
    mono[0] += 3700  # since this start alone, longer than an hour: older still
    with pytest.raises(NotOverridable, match="61 minutes ago"):
        desk().override("in-1", restarted, "hired tractor", by="o")
    box.close()


# -- review 126, finding 2: a wall clock wound back across a restart ------------------------------------------

W = 1_800_000_000.0  # the wall clock's reading at the refusal (seconds)
HOURS_3 = 3 * 3600.0


def offline_refusal(box: Outbox, request_id: str, decided_at: datetime) -> str:
    """An offline refusal of a gate-in for the plate (what a desk may set aside) queued in ``box``: its right."""
    import uuid

    rid = str(uuid.uuid4())
    body = {"request_id": request_id, "lane": "in-1", "direction": "in", "mode": "commit"}
    assert box.put(body)
    response = {"decision": "deny", "reasons": ["plate_mismatch"], "decision_id": str(uuid.uuid4()),
                "release_id": rid, "direction": "in", "mode": "commit",
                "offline": {"basis": "pass", "pass_id": "p-1", "decided_at": decided_at.isoformat()}}
    assert box.decide_offline(request_id, response, {
        "request": body, "decision": "deny", "reasons": ["plate_mismatch"], "release_id": rid, "basis": "pass",
        "gate_pass": "a.b.c", "decided_at": decided_at.isoformat()})
    return rid


def test_a_local_override_is_refused_when_the_wall_clock_is_behind_a_decision_sealed_before_a_restart(
        tmp_path: Path) -> None:
    """Review 126, finding 2 (the reviewer's demonstration): the uplink down for hours, NTP spoofed, the lane
    PC rebooted. A refusal stamped at W; three hours on (both clocks), another offline decision is sealed;
    the process restarts (its monotonic clock counts from there) with the wall clock set back to W + 5 min.
    Before, the desk took the override as five minutes old (overridden_at = decided_at + 300 s) and the
    service judged the person then, a ban since unseen. Now the wall clock reads behind a time the outbox
    sealed: the refusal's age cannot be told, refused before the truck is verified again (nothing sent, no
    use to note: review 162, finding 1). The reports then go in the chain's order, the one sealed before
    the restart first."""
    wall, mono = [W], [500.0]
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path, secret=SECRET, wall=lambda: wall[0], clock=lambda: mono[0])
    decided_at = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
    rid = offline_refusal(box, "r-1", decided_at)
    wall[0] += HOURS_3
    mono[0] += HOURS_3
    offline_refusal(box, "r-2", decided_at.replace(hour=9))
    box.close()
    mono[0], wall[0] = 10.0, W + 300  # a restart, the wall clock wound back to five minutes after the refusal
    box = Outbox(path, secret=SECRET, wall=lambda: wall[0], clock=lambda: mono[0])
    desk = OverrideDesk(VerifyClient(DEAD, StaticToken("x"), attempts=1, timeout=0.5), box, LANES)
    try:
        with pytest.raises(NotOverridable, match="reads earlier than the refusal, or than a time it kept"):
            desk.override("in-1", "r-1", "hired tractor", by="o")
        assert not [k for k, _ in box.unreconciled() if k.startswith("override:")]
        assert rid not in box.offline_uses()["in"] and box.overrides("r-1") == []  # nothing sent
        offline_refusal(box, "r-3", decided_at.replace(hour=9, minute=5))  # stamped W + 300 s, sealed last
        assert [k for k, _ in box.unreconciled()] == ["r-1", "r-2", "r-3"]  # chain order, not the stamps'
        wall[0] = W + HOURS_3 + 60  # the clock put right: a fresh refusal is overridden as ever
        offline_refusal(box, "r-4", decided_at.replace(hour=9, minute=1))
        assert desk.override("in-1", "r-4", "hired tractor", by="o").offline
    finally:
        box.close()


def test_a_local_override_is_refused_when_the_wall_clock_is_behind_the_time_offline_mode_saw(
        tmp_path: Path) -> None:
    """Review 126, finding 2: no decision sealed since the refusal, but offline mode's tick kept the wall time
    it saw in the pass store (offline.py rule 3, ``saw``) during the three-hour outage. After a restart with
    the wall clock wound back to W + 5 min, the desk given that store refuses the override (before, it had
    no look at it: the refusal was five minutes old)."""
    wall, mono = [W], [500.0]
    out, passes = tmp_path / "outbox.sqlite3", tmp_path / "passes.sqlite3"
    box = Outbox(out, secret=SECRET, wall=lambda: wall[0], clock=lambda: mono[0])
    store = PassStore(passes, issuer="https://quaygate.example.eu", terminal=TERMINAL, secret=SECRET)
    offline_refusal(box, "r-1", datetime(2026, 11, 24, 6, 0, tzinfo=UTC))
    store.saw(datetime.fromtimestamp(W + HOURS_3, UTC))  # the outage's last tick
    box.close()
    store.close()
    mono[0], wall[0] = 10.0, W + 300
    box = Outbox(out, secret=SECRET, wall=lambda: wall[0], clock=lambda: mono[0])
    store = PassStore(passes, issuer="https://quaygate.example.eu", terminal=TERMINAL, secret=SECRET)
    try:
        desk = OverrideDesk(VerifyClient(DEAD, StaticToken("x"), attempts=1, timeout=0.5), box, LANES, store=store)
        with pytest.raises(NotOverridable, match="reads earlier than the refusal, or than a time it kept"):
            desk.override("in-1", "r-1", "hired tractor", by="o")
        assert not [k for k, _ in box.unreconciled() if k.startswith("override:")]
    finally:
        box.close()
        store.close()


def test_an_offline_override_stamped_before_a_decision_taken_before_it_is_flagged(
        gate: Gate, adapters: list[Adapter], tmp_path: Path) -> None:
    """Review 126, finding 2, the service's side: an override whose overridden_at is earlier than the
    decided_at of a decision at a lower place of the same adapter's outbox chain (taken before it) was made
    on a clock wound back. Here the lane decided a second truck three hours on, then the desk (on a clock
    that reads the refusal as moments old) overrode the first refusal. Before, the service judged it at that
    early time and recorded it clean; now it is flagged not_supported_by_pass and nothing moves."""
    from datetime import timedelta

    rid = gate.pickable(1)
    a = adapters[0]
    a.outbox.close()
    a.outbox = Outbox(tmp_path / "sealed-outbox.sqlite3", secret=SECRET)  # a chain: its reports tell places
    wall, mono = a.clocked()
    a.offline.refresh()
    a.down()
    refused = refused_offline(a)
    wall[0] += timedelta(hours=3)
    mono[0] += HOURS_3
    later = at_lane(a, "in-1", service_up=False, n=2)
    assert later.offline and later.response is not None
    desk = OverrideDesk(VerifyClient(DEAD, StaticToken("x"), attempts=1, timeout=0.5), a.outbox, LANES)
    assert desk.override("in-1", refused.request_id, "hired tractor, plate checked", by="o").offline
    [(key, report)] = [(k, r) for k, r in a.outbox.unreconciled() if k.startswith("override:")]
    assert report["override"]["overridden_at"] < later.response["offline"]["decided_at"]

    a.up()
    assert a.offline.reconcile() == 3
    [row] = [r for r in _offline_rows(gate) if r.request_id == key]
    assert (row.verdict, row.flag) == ("flagged", "not_supported_by_pass")
    said = [d.get("pass_says") for d in _audit(gate, rid, "release.gate_offline_flagged")
            if d.get("request_id") == key]
    assert said == [["override_before_earlier_decision"]]
    assert gate.state(rid) == "nominated" and _audit(gate, rid, "release.gate_override") == []


def test_an_offline_override_is_judged_when_the_officer_let_the_truck_in(
        gate: Gate, adapters: list[Adapter], away: OverrideDesk) -> None:
    """Review 124, finding 2: the report says when the officer overrode (overridden_at, sealed with the rest).
    Before, the reconcile judged it at the refusal's time: the driver banned between the refusal and the
    override was recorded clean. Now it is judged then (flagged changed_after_pass, person_banned), the
    override's audit entry dated then; an override more than an hour after the refusal, or before it, is
    flagged not_supported_by_pass and moves nothing."""
    import uuid
    from datetime import timedelta

    import sqlalchemy as sa

    from quaygate.schema import audit_log

    rid = gate.pickable(1)
    a = adapters[0]
    a.offline.refresh()
    a.down()
    refused = refused_offline(a)
    assert refused.response is not None
    decided_at = datetime.fromisoformat(refused.response["offline"]["decided_at"])
    ban_driver(gate, since=decided_at + timedelta(microseconds=1))  # after the refusal, before the override
    away.override("in-1", refused.request_id, "hired tractor, plate checked", by="o")
    [(key, report)] = [(k, r) for k, r in a.outbox.unreconciled() if k.startswith("override:")]
    overridden_at = datetime.fromisoformat(report["override"]["overridden_at"])
    assert decided_at < overridden_at <= _now()

    report.pop("outbox", None)

    def post(body: dict[str, Any]) -> dict[str, Any]:
        got = gate.http.post("/gate/v1/offline-decisions", json=body,
                             headers={"Authorization": f"Bearer {gate.gate_token}"})
        assert got.status_code == 200, got.text
        return dict(got.json())

    assert post({k: v for k, v in report.items() if k != "override"})["verdict"] == "nothing_to_record"  # the refusal
    for at in (decided_at + timedelta(seconds=3601), decided_at - timedelta(seconds=1)):
        forged = post({**report, "override": {**report["override"], "id": str(uuid.uuid4()),
                                              "overridden_at": at.isoformat()}})
        assert (forged["verdict"], forged["flag"]) == ("flagged", "not_supported_by_pass")
    assert gate.state(rid) == "nominated"

    a.up()
    assert a.offline.reconcile() == 2
    [row] = [r for r in _offline_rows(gate) if r.request_id == key]
    assert (row.verdict, row.flag) == ("flagged", "changed_after_pass")
    assert gate.state(rid) == "gated_in"  # the truck is in
    flagged = [d for d in _audit(gate, rid, "release.gate_offline_flagged") if d.get("request_id") == key]
    assert "person_banned" in flagged[0]["changed_since_pass"]
    said = [d["pass_says"] for d in _audit(gate, rid, "release.gate_offline_flagged") if "pass_says" in d]
    assert sorted(said) == [["override_before_refusal"], ["override_too_late"]]
    with gate.engine.connect() as conn:
        when = conn.execute(sa.select(audit_log.c.at).where(audit_log.c.subject == rid,
                                                            audit_log.c.kind == "release.gate_override")).scalar_one()
    assert when == overridden_at


# -- review 162, finding 2: the reason checked before anything is sent; the use noted first -----------------


def renominated_refused_offline(gate: Gate, a: Adapter) -> tuple[str, LaneResult]:
    """A truck refused offline for the plate (the pass fetched first); the uplink back, the right re-nominated
    to that hired tractor's plate: verified again at the desk, the service allows it and records the gate-in."""
    rid = gate.pickable(1)
    assert a.offline.refresh() == 1
    a.down()
    refused = refused_offline(a)
    a.up()
    r = gate.http.put(f"/api/v1/releases/{rid}/nomination", headers=gate.as_("haul"),
                      json={"driver_person_id": str(gate.p.driver), "plate": {"text": WRONG_PLATE, "country": "BE"}})
    assert r.status_code == 200, r.text
    return rid, refused


def test_a_reason_the_service_would_not_store_is_refused_before_anything_is_sent(
        gate: Gate, adapters: list[Adapter], console: TestClient) -> None:
    """Review 162, finding 2 (the reviewer's demonstration): a reason holding a lone surrogate (``\\ud800`` in
    the JSON). Before, the desk verified the truck again, the service let it in (gated_in), then the outbox
    could not store the reason (SQLite: UnicodeEncodeError, a ValueError): the officer was told 400
    payload_refused, and no use and no override were kept here. Now the reason is checked as the service
    checks it (storable text, multiline: no control character but tab and line breaks, no lone surrogate,
    at most 400 characters) before anything is sent: 400, the service untouched. A reason on two lines is
    taken."""
    import json
    import uuid

    import sqlalchemy as sa

    from quaygate.schema import gate_decisions

    a = adapters[0]
    rid, refused = renominated_refused_offline(gate, a)
    again = str(uuid.uuid5(VERIFY_AGAIN, refused.request_id))
    raw = json.dumps({"request_id": refused.request_id, "reason": "hired tractor \ud800"})  # "\\ud800" in JSON
    assert "\\ud800" in raw
    for body in (raw, json.dumps({"request_id": refused.request_id, "reason": "ok\x1b[2K\rlet in"}),
                 json.dumps({"request_id": refused.request_id, "reason": "nul\x00"}),
                 json.dumps({"request_id": refused.request_id, "reason": "x" * 401})):
        r = console.post("/officer/override/in-1", content=body,
                         headers={"Authorization": f"Bearer {OFFICER_TOKEN}", "Content-Type": "application/json"})
        assert (r.status_code, r.json()["code"]) == (400, "payload_refused"), r.text
        assert gate.state(rid) == "nominated"
        with gate.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(gate_decisions).where(
                gate_decisions.c.request_id == again)).scalar_one() == 0
        assert a.outbox.overrides(refused.request_id) == [] and rid not in a.outbox.offline_uses()["in"]
    with pytest.raises(ValueError, match="lone surrogate"):
        OverrideDesk(a.online, a.outbox, LANES).override("in-1", refused.request_id, "\ud800", by="o")

    r = override(console, "in-1", {"request_id": refused.request_id, "reason": "hired tractor,\n\tplate checked"})
    assert r.status_code == 201 and r.json()["state"] == "gated_in", r.text
    assert gate.state(rid) == "gated_in" and a.outbox.offline_uses()["in"] == {rid}


@pytest.mark.parametrize("how", ["allowed_again", "overridden_online"])
def test_a_record_that_fails_after_the_service_let_the_truck_in_still_notes_the_use(
        gate: Gate, adapters: list[Adapter], desk: OverrideDesk, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Review 162, finding 2: the service let the truck in (verified again and allowed, or its refusal
    overridden), then keeping the override here fails (forced: a ValueError, as SQLite raised for a reason it
    could not encode). Before, the use and the override were one write: both lost, the officer told 400
    payload_refused, and with the uplink cut a second truck on the badge and the pass's plate was allowed
    offline at lane 2 and the barrier opened (the attack review 121 closed). Now the use is noted first, on
    its own: the officer is told 500 override_unrecorded (the truck let in, the right counted as used), and
    lane 2 refuses already_used."""
    a = adapters[0]
    if how == "allowed_again":
        rid, refused = renominated_refused_offline(gate, a)
    else:
        rid = gate.pickable(1)
        assert a.offline.refresh() == 1
        refused = refused_online(a)

    def fails(*args: Any, **kwargs: Any) -> None:
        raise ValueError("the disk said no")

    monkeypatch.setattr(a.outbox, "overridden", fails)
    for console in _console(a, desk, raise_server_exceptions=False):
        r = override(console, "in-1", {"request_id": refused.request_id, "reason": "hired tractor, plate checked"})
        assert (r.status_code, r.json()["code"]) == (500, "override_unrecorded"), r.text
        assert "counts as used" in r.json()["detail"]
    monkeypatch.undo()
    assert gate.state(rid) == "gated_in"
    assert a.outbox.offline_uses()["in"] == {rid}

    a.down()
    second = at_lane(a, "in-2", service_up=False)  # the same badge, the plate of the pass fetched before
    assert second.offline and second.response is not None
    assert (second.decision, second.response["reasons"]) == ("deny", ["already_used"]), second.response
    assert BarrierCommand.OPEN not in [c.command for c in a.barrier.commands]


def test_a_local_record_that_fails_after_a_verify_that_may_have_landed_still_notes_the_use(
        gate: Gate, adapters: list[Adapter], away: OverrideDesk, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 162, finding 2: the desk verified the truck again and heard nothing (the verify may have
    landed, rule 7), then the local override's write fails (forced). Before, that failure lost the use with
    it (only a refusal of the desk's own noted it): a second truck was let in offline. Now the use is noted
    all the same, the officer told 500 override_unrecorded."""
    import sqlite3

    rid = gate.pickable(1)
    a = adapters[0]
    assert a.offline.refresh() == 1
    a.down()
    refused = refused_offline(a)

    def fails(*args: Any, **kwargs: Any) -> bool:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(a.outbox, "override_offline", fails)
    with pytest.raises(OverrideUnrecorded, match="counts as used"):
        away.override("in-1", refused.request_id, "hired tractor, plate checked", by="o")
    monkeypatch.undo()
    assert a.outbox.offline_uses()["in"] == {rid}
    assert [o["outcome"] for o in a.outbox.overrides(refused.request_id)] == ["unanswered"]
    second = at_lane(a, "in-2", service_up=False)
    assert second.response is not None and (second.decision, second.response["reasons"]) == (
        "deny", ["already_used"]), second.response
    assert BarrierCommand.OPEN not in [c.command for c in a.barrier.commands]

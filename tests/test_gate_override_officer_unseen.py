"""Review 171, finding 2: the officer who let a refused truck in is named to the terminal and port security
(the audit trail), never to the haulier or its driver. Before, the adapter wrote "(officer <by>, lane
<lane>)" into the override's reason, and the service did the same on an offline override's reconcile:
``release.gate_override`` carried it to the holder's webhook and to every read of the right's events,
and ``release.gate_offline_flagged`` named the officer in its ``override`` to the line and the holder.
Now the adapter sends the officer beside the reason (``officer``), the event keeps it, and only the
terminal and port security read it (``disclosure.STAFF_KEYS``); everywhere else it is null.

Against the real app and a real adapter (tests/test_gate_override.py), SQLite and PostgreSQL."""
# ruff: noqa: F811 - fixtures imported here and requested by name

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from gate_adapters.runtime.overrides import OverrideDesk
from quaygate.schema import webhook_deliveries, webhook_subscriptions

from .test_gate_offline import Adapter, adapters  # noqa: F401
from .test_gate_override import (  # noqa: F401
    _audit,
    _offline_rows,
    away,
    away_console,
    console,
    desk,
    override,
    refused_offline,
    refused_online,
)
from .test_gate_verify import Gate, gate  # noqa: F401
from .test_release_driver_api import DriverApi

OFFICER = "duty-officer (http)"  # the officer's name as the adapter's HTTP source gives it
REASON = "hired tractor, plate checked"


def _subscribe(gate: Gate, who: str) -> None:
    """``who`` (a company) listens to its rights' events."""
    with gate.engine.begin() as conn:
        conn.execute(webhook_subscriptions.insert().values(
            id=uuid.uuid4(), organisation_id=getattr(gate.p, who).organisation_id,
            url=f"https://hooks.example/{who}", secret_enc="x", event_types=["release.*"], active=True,
            created_at=datetime.now(UTC)))


def _deliveries(gate: Gate, who: str, event_type: str) -> list[dict[str, Any]]:
    with gate.engine.connect() as conn:
        return [dict(p) for p in conn.execute(sa.select(webhook_deliveries.c.payload).join(
            webhook_subscriptions, webhook_subscriptions.c.id == webhook_deliveries.c.subscription_id).where(
            webhook_subscriptions.c.organisation_id == getattr(gate.p, who).organisation_id,
            webhook_deliveries.c.event_type == event_type)).scalars()]


def _events(gate: Gate, rid: str, headers: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
    r = gate.http.get(f"/api/v1/releases/{rid}/events", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"], r.text


def _override_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    [event] = [e for e in events if e["type"] == "release.gate_override"]
    return event["data"]  # type: ignore[no-any-return]


def _readers(gate: Gate) -> dict[str, dict[str, str]]:
    return {"haul": gate.as_("haul"), "driver": DriverApi.driver(gate, gate.p.driver),  # type: ignore[arg-type]
            "line": gate.as_("line"), "customs": gate.as_("customs"), "terminal": gate.as_("terminal")}


def _only_the_terminal_reads_the_officer(gate: Gate, rid: str) -> None:
    for who, headers in _readers(gate).items():
        events, text = _events(gate, rid, headers)
        data = _override_event(events)
        assert data["reason"] is not None and REASON in data["reason"], who
        if who == "terminal":
            assert data["officer"] == OFFICER
        else:
            assert data["officer"] is None and OFFICER not in text, (who, data)


def test_an_online_override_names_the_officer_to_the_terminal_and_port_security_only(
        gate: Gate, adapters: list[Adapter], console: TestClient) -> None:
    """The reviewer's demonstration: the haulier listens; the gate refuses its truck online (the plate) and
    the officer overrides it through the adapter. Before: the haulier's delivery read {'reason': 'hired
    tractor, plate checked (officer duty-officer (http), lane in-1)', ...}."""
    _subscribe(gate, "haul")
    rid = gate.pickable(1)
    refused = refused_online(adapters[0])
    r = override(console, "in-1", {"request_id": refused.request_id, "reason": REASON})
    assert r.status_code == 201, r.text
    assert gate.state(rid) == "gated_in"

    [delivered] = _deliveries(gate, "haul", "release.gate_override")
    assert delivered["data"]["reason"] == REASON and delivered["data"]["officer"] is None, delivered
    assert "officer" not in delivered["data"]["reason"] and OFFICER not in json.dumps(delivered)
    _only_the_terminal_reads_the_officer(gate, rid)
    # The audit trail (port security) keeps him, and the lane is the decision's (decision_id).
    [audited] = _audit(gate, rid, "release.gate_override")
    assert (audited["reason"], audited["officer"]) == (REASON, OFFICER)
    assert audited["decision_id"] == refused.response["decision_id"]  # type: ignore[index]


def test_an_override_from_an_adapter_that_names_no_officer_still_goes_through(gate: Gate) -> None:
    """An adapter of before (no ``officer``): the override is kept as ever, its officer null."""
    rid = gate.pickable(1)
    refused = gate.verify(gate.body(1, plate={"text": "9ZZZ999", "country": "BE", "confidence": 0.95})).json()
    assert refused["reasons"] == ["plate_mismatch"], refused
    r = gate.http.post("/gate/v1/overrides", json={"decision_id": refused["decision_id"], "reason": REASON},
                       headers={"Authorization": f"Bearer {gate.gate_token}"})
    assert r.status_code == 201, r.text
    [audited] = _audit(gate, rid, "release.gate_override")
    assert (audited["reason"], audited["officer"]) == (REASON, None)
    for named in ("x\x00y", "   "):  # a control character; a blank, which names nobody (the last read)
        bad = gate.http.post("/gate/v1/overrides", json={"decision_id": refused["decision_id"], "reason": REASON,
                                                         "officer": named},
                             headers={"Authorization": f"Bearer {gate.gate_token}"})
        assert bad.status_code == 422, bad.text


def test_an_offline_override_reconciled_names_the_officer_to_the_terminal_and_port_security_only(
        gate: Gate, adapters: list[Adapter], away_console: TestClient) -> None:
    """Offline, the service wrote the officer into the reason itself at the reconcile."""
    _subscribe(gate, "haul")
    rid = gate.pickable(1)
    a = adapters[0]
    assert a.offline.refresh() == 1
    a.down()
    refused = refused_offline(a)
    r = override(away_console, "in-1", {"request_id": refused.request_id, "reason": REASON})
    assert r.status_code == 201, r.text
    a.up()
    assert a.offline.reconcile() == 2
    assert gate.state(rid) == "gated_in"

    [delivered] = _deliveries(gate, "haul", "release.gate_override")
    assert delivered["data"]["officer"] is None and OFFICER not in json.dumps(delivered), delivered
    assert delivered["data"]["reason"].startswith(REASON + " (offline, setting aside plate_mismatch")
    _only_the_terminal_reads_the_officer(gate, rid)
    [audited] = _audit(gate, rid, "release.gate_override")
    assert audited["officer"] == OFFICER and OFFICER not in audited["reason"]


def test_an_offline_override_flagged_names_the_officer_on_the_audit_trail_only(
        gate: Gate, adapters: list[Adapter], away: OverrideDesk) -> None:
    """``release.gate_offline_flagged`` goes to the line and the holder: its ``override`` names no officer."""
    _subscribe(gate, "haul")
    _subscribe(gate, "line")
    rid = gate.pickable(1)
    a = adapters[0]
    a.offline.refresh()
    a.down()
    refused = refused_offline(a)
    assert away.override("in-1", refused.request_id, REASON, by=OFFICER).offline
    assert gate.verify(gate.body(1, mode="commit")).json()["committed"] is True  # another gate, meanwhile
    a.up()
    assert a.offline.reconcile() == 2
    [row] = [r for r in _offline_rows(gate) if r.request_id.startswith("override:")]
    assert row.flag == "used_online_meanwhile"

    for who in ("haul", "line"):
        [delivered] = _deliveries(gate, who, "release.gate_offline_flagged")
        assert delivered["data"]["override"]["officer"] is None, delivered
        assert delivered["data"]["override"]["reason"] == REASON and OFFICER not in json.dumps(delivered)
    [audited] = _audit(gate, rid, "release.gate_offline_flagged")
    assert audited["override"]["officer"] == OFFICER

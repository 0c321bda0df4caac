"""Review 152, finding 1: a line's new right tells it nothing of customs' hold it carries.

A new right takes over customs' hold from the container's last right customs holds (review 141; review 149
finding 3: any vessel call, any line), status, customs' reason and setter as they were. The issuing line
has full sight of its right: any line issued a right for a container on a made-up vessel call and terminal,
read ``lights.customs`` (scan, with customs' own grounds) and its ``release.issued`` event
(``customs_carried``: the other line's right), and revoked the probe; a batch does 10 000 containers a call.
Smugglers learnt which boxes customs will scan.

Now the hold keeps binding at the gate (stored on the right as before, and on the right it came from), but a
carried hold customs has not set on the right itself shows to everyone but customs and port security as any
new right's light does (red, "awaiting customs release", set at its issue): in the answers, the reads, the
events, the webhooks; a delete answers as for any new right; the gate answers ``customs_hold`` as it does for
any new right's red. Customs sees the hold and its reason, and lifts it with its green as before.
"""
# ruff: noqa: F811 - ``gate`` is a fixture imported here and requested by name

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import webhook_deliveries, webhook_subscriptions
from release_service.domain import disclosure
from release_service.domain.errors import ErrorCode
from release_service.domain.parties import Actor, OrgKind
from release_service.domain.release import LastRight, Light, LightKind, LightStatus, State

from .factories import TERMINAL, add_org, container
from .test_gate_customs_container_hold import HELD
from .test_gate_person_suspended import outcome, verify
from .test_gate_verify import PLATE, Gate, gate  # noqa: F401
from .test_release_api import assert_problem
from .test_release_customs_hold import _stored
from .test_release_domain import CUSTOMS, LINE, NOW, code, issue

GROUNDS = "risk profile 7: informant tip"
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)$")


class Probe:
    """Another shipping line than the container's (B), with a forwarder of its own, both subscribed to every
    release event."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.line = add_org(gate.engine, OrgKind.SHIPPING_LINE).organisation_id
        self.fwd = add_org(gate.engine, OrgKind.RELEASE_PARTY).organisation_id
        self.as_line = {"Authorization": f"Bearer {gate.token_for('shipping_line', self.line)}"}
        self.as_fwd = {"Authorization": f"Bearer {gate.token_for('release_party', self.fwd)}"}
        self.subscriptions = [_subscribe(gate, org) for org in (self.line, self.fwd)]

    def issue(self, n: int, **extra: Any) -> Any:
        now = datetime.now(UTC).replace(microsecond=0)
        body = {"container_number": container(n), "bill_of_lading": "BL-PROBE", "vessel_call": "PROBE-1",
                "terminal": "NOWHERE", "release_to_organisation_id": str(self.fwd),
                "valid_from": (now - timedelta(hours=1)).isoformat(),
                "valid_until": (now + timedelta(days=3)).isoformat(), **extra}
        return self.gate.http.post("/api/v1/releases", json=body, headers=self.as_line)

    def told(self) -> list[dict[str, Any]]:
        """Every webhook payload queued for B (``to`` 0) and its forwarder (1)."""
        with self.gate.engine.connect() as conn:
            rows = conn.execute(sa.select(webhook_deliveries.c.subscription_id, webhook_deliveries.c.payload)
                                .where(webhook_deliveries.c.subscription_id.in_(self.subscriptions))).all()
        return [{"to": self.subscriptions.index(r.subscription_id), **r.payload} for r in rows]


def _subscribe(gate: Gate, org: uuid.UUID) -> uuid.UUID:
    subscription = uuid.uuid4()
    with gate.engine.begin() as conn:
        conn.execute(webhook_subscriptions.insert().values(
            id=subscription, organisation_id=org, url=f"https://{org.hex[:8]}.example/hooks", secret_enc="x",
            event_types=["release.*"], active=True, created_at=datetime.now(UTC)))
    return subscription


def _scrubbed(value: Any, rid: str, n: int) -> Any:
    """``value`` with what differs between two probes by nature put aside: the right's id, the container,
    the event and receipt ids, and times, each time named by its first place (so a light set before the
    right was issued still shows: its time is not the issue's)."""
    names: dict[str, str] = {}

    def walk(v: Any, key: str | None) -> Any:
        if isinstance(v, dict):
            return {k: walk(x, k) for k, x in sorted(v.items())}
        if isinstance(v, list):
            return [walk(x, key) for x in v]
        if not isinstance(v, str):
            return v
        if v == rid:
            return "<right>"
        if v == container(n):
            return "<container>"
        if key in ("id", "receipt_id", "event_id", "webhook_id"):
            return "<id>"
        if _TIME.match(v):
            return names.setdefault(v, f"<time {len(names)}>")
        return v

    return walk(value, None)


def _seen(gate: Gate, probe: Probe, rid: str, n: int) -> dict[str, Any]:
    """Everything B and its forwarder read of the right, scrubbed."""
    out: dict[str, Any] = {}
    for who, headers in (("line", probe.as_line), ("fwd", probe.as_fwd)):
        got = gate.http.get(f"/api/v1/releases/{rid}", headers=headers)
        assert got.status_code == 200, got.text
        listed = gate.http.get("/api/v1/releases", params={"container_number": container(n)}, headers=headers)
        assert listed.status_code == 200, listed.text
        events = gate.http.get(f"/api/v1/releases/{rid}/events", headers=headers)
        assert events.status_code == 200, events.text
        out[who] = {"get": got.json(), "etag": got.headers["etag"], "list": listed.json(), "events": events.json()}
    out["webhooks"] = sorted((w for w in probe.told() if w["release_id"] == rid), key=lambda w: (w["to"], w["type"]))
    return _scrubbed(out, rid, n)


def _hold_on_a(gate: Gate, n: int, *, end: bool = False) -> str:
    """Line A's right on container ``n``, customs' scan on it with its grounds; revoked if ``end``."""
    rid = str(gate.issue(n)["release"]["id"])
    r = gate.http.put(f"/api/v1/releases/{rid}/lights/customs", headers=gate.as_("customs"),
                      json={"status": "scan", "reason": GROUNDS})
    assert r.status_code == 200, r.text
    if end:
        r = gate.http.post(f"/api/v1/releases/{rid}/revoke", json={"reason": "x"}, headers=gate.as_("line"))
        assert r.status_code == 200, r.text
    return rid


@pytest.mark.parametrize("end", ["revoke", "delete"])
def test_the_reviewers_probe_sees_what_a_probe_on_an_unheld_container_sees(gate: Gate, end: str) -> None:
    """The reviewer's case: A's right, customs' scan with its grounds; B issues the container on a made-up
    vessel call and terminal to its forwarder, reads the answer and the right, and ends the probe. Before:
    201 with lights.customs scan and customs' grounds, its events ``customs_carried`` naming A's right, and a
    delete refused 409 (a right customs holds). Now every answer B and its forwarder get is the one they get
    for a container customs does not hold."""
    a_right = _hold_on_a(gate, 151)
    probe = Probe(gate)
    answers = {}
    for n in (151, 152):  # held, unheld
        r = probe.issue(n)
        assert r.status_code == 201, r.text
        answers[n] = (r.headers["etag"], _scrubbed(r.json(), r.json()["release"]["id"], n))
    assert answers[151] == answers[152]
    held, fresh = (str(gate.http.get("/api/v1/releases", params={"container_number": container(n)},
                                     headers=probe.as_line).json()["items"][0]["id"]) for n in (151, 152))
    shown = answers[151][1]["release"]
    assert shown["lights"]["customs"] == {  # a new right's light, set at its issue
        "status": "red", "reason": "awaiting customs release", "set_at": shown["created_at"]}
    assert _seen(gate, probe, held, 151) == _seen(gate, probe, fresh, 152)
    # The hold is on B's right all the same, and customs reads it there: its status, its grounds, where from.
    assert _stored(gate, held)[:2] == ("scan", gate.p.customs.organisation_id)
    truth = gate.http.get(f"/api/v1/releases/{held}", headers=gate.as_("customs")).json()
    assert (truth["lights"]["customs"]["status"], truth["lights"]["customs"]["reason"]) == ("scan", GROUNDS)
    issued = gate.http.get(f"/api/v1/releases/{held}/events", headers=gate.as_("customs")).json()["items"][0]
    assert issued["data"]["customs_carried"] == {"status": "scan", "from_release": a_right}
    # B ends both probes: the same answers again.
    ended = {}
    for n, rid in ((151, held), (152, fresh)):
        r = gate.http.post(f"/api/v1/releases/{rid}/{end}", json={"reason": "wrong call"}, headers=probe.as_line)
        assert r.status_code == 200, r.text  # before the mend, a delete of the held one: 409
        ended[n] = (r.headers["etag"], _scrubbed(r.json(), rid, n))
    assert ended[151] == ended[152]
    assert _seen(gate, probe, held, 151) == _seen(gate, probe, fresh, 152)
    # A's own right still shows its line the scan and customs' grounds (review 110).
    mine = gate.http.get(f"/api/v1/releases/{a_right}", headers=gate.as_("line")).json()
    assert (mine["lights"]["customs"]["status"], mine["lights"]["customs"]["reason"]) == ("scan", GROUNDS)


def test_the_batch_answers_alike_and_a_deleted_probe_hands_on_no_stale_hold(gate: Gate) -> None:
    """The batch endpoint (10 000 containers a call) answers a held container as an unheld one. B deletes
    its probe (a new right's delete, as for any); customs lifts its hold on A's right; the container's next
    right starts clean: a deleted right that only carried the hold hands it on to no later right."""
    a_right = _hold_on_a(gate, 153)
    probe = Probe(gate)
    now = datetime.now(UTC).replace(microsecond=0)
    items = [{"container_number": container(n), "bill_of_lading": "BL-PROBE", "vessel_call": "PROBE-1",
              "terminal": "NOWHERE", "release_to_organisation_id": str(probe.fwd),
              "valid_from": (now - timedelta(hours=1)).isoformat(),
              "valid_until": (now + timedelta(days=3)).isoformat()} for n in (153, 154)]
    batch = gate.http.post("/api/v1/releases:batch", json={"releases": items}, headers=probe.as_line)
    assert batch.status_code == 200 and batch.json()["created"] == 2, batch.text
    held, fresh = (i for i in batch.json()["items"])
    assert ({k: v for k, v in held.items() if k not in ("index", "release_id", "container_number")}
            == {k: v for k, v in fresh.items() if k not in ("index", "release_id", "container_number")})
    held_id = str(held["release_id"])
    assert _seen(gate, probe, held_id, 153) == _seen(gate, probe, str(fresh["release_id"]), 154)
    r = gate.http.post(f"/api/v1/releases/{held_id}/delete", json={"reason": "wrong call"}, headers=probe.as_line)
    assert r.status_code == 200, r.text
    lifted = gate.http.put(f"/api/v1/releases/{a_right}/lights/customs", headers=gate.as_("customs"),
                           json={"status": "green", "reason": "scanned, clear"})
    assert lifted.status_code == 200, lifted.text
    again = str(gate.issue(153, vessel_call="VC-9")["release"]["id"])
    assert _stored(gate, again)[:2] == ("red", None)  # not B's deleted copy of the lifted scan


def test_the_gate_holds_the_probe_as_any_new_right_and_customs_green_lifts_it(gate: Gate) -> None:
    """At a real terminal, nominated: the gate answers B's right on the held container as it answers B's
    right on an unheld one (deny ``customs_hold``, the new right's red), so the haulier and the driver learn
    nothing either; the haulier's and the driver's reads are alike. Customs' green on B's right lifts the
    hold (with its grounds for the lift, as today), on A's ended right too, and the truck goes in."""
    a_right = _hold_on_a(gate, 155, end=True)  # ended: no live right of another line to contest B's
    probe = Probe(gate)
    got: dict[int, Any] = {}
    rights = {}
    for n in (155, 156):
        r = probe.issue(n, terminal=TERMINAL, release_to_organisation_id=str(gate.p.haul.organisation_id))
        assert r.status_code == 201, r.text
        rid = rights[n] = r.json()["release"]["id"]
        nominated = gate.http.put(f"/api/v1/releases/{rid}/nomination", headers=gate.as_("haul"),
                                  json={"driver_person_id": str(gate.p.driver), "plate": PLATE})
        assert nominated.status_code == 200, nominated.text
        read = gate.http.get(f"/api/v1/releases/{rid}", headers=gate.as_("haul")).json()
        got[n] = (outcome(verify(gate, n)), outcome(verify(gate, n, mode="commit")), _scrubbed(read, rid, n))
    assert got[155] == got[156]
    assert got[155][0]["reasons"] == ["customs_hold", "terminal_hold"]
    held = rights[155]
    for rid in rights.values():
        r = gate.http.put(f"/api/v1/releases/{rid}/lights/terminal", json={"status": "green"},
                          headers=gate.as_("terminal"))
        assert r.status_code == 200, r.text
    assert outcome(verify(gate, 155)) == HELD
    # Customs' hold, customs' word: its green needs its grounds, as on the right it set it on.
    lights = f"/api/v1/releases/{held}/lights/customs"
    assert_problem(gate.http.put(lights, headers=gate.as_("customs"), json={"status": "green"}), 422,
                   "reason_required")
    r = gate.http.put(lights, headers=gate.as_("customs"), json={"status": "green", "reason": "scanned, clear"})
    assert r.status_code == 200, r.text
    assert _stored(gate, a_right)[:2] == ("green", gate.p.customs.organisation_id)
    out = verify(gate, 155, mode="commit")
    assert (out["decision"], out["committed"], out["release_id"]) == ("allow", True, held), out


# ---- the rule, pure --------------------------------------------------------------------------------------------

HOLD = Light(LightStatus.SCAN, GROUNDS, NOW - timedelta(hours=2), CUSTOMS.organisation_id)


def test_who_sees_a_carried_hold() -> None:
    carried = issue(by=LINE, last=LastRight(uuid.uuid4(), State.REVOKED, HOLD), now=NOW)
    fresh = issue(by=LINE, now=NOW)
    assert carried.customs == HOLD and carried.customs_carried and not fresh.customs_carried
    admin = Actor("ps", uuid.uuid4(), OrgKind.PORT_AUTHORITY)
    terminal = Actor("t", uuid.uuid4(), OrgKind.TERMINAL, terminal_code=carried.terminal)
    holder = Actor("f", carried.holder_organisation_id, OrgKind.RELEASE_PARTY)
    for viewer in (LINE, terminal, holder):
        shown, _ = disclosure.minimise_right(carried, viewer)
        assert shown.customs == disclosure.minimise_right(fresh, viewer)[0].customs, viewer
        assert shown.customs.set_at == carried.created_at and shown.customs.set_by is None
        (event,) = disclosure.minimise_events(carried, viewer, carried.pending_events)
        assert "customs_carried" not in event.data, viewer
    for viewer in (CUSTOMS, admin):
        assert disclosure.minimise_right(carried, viewer)[0].customs == HOLD
        (event,) = disclosure.minimise_events(carried, viewer, carried.pending_events)
        assert event.data["customs_carried"]["status"] == "scan"
    assert "customs_carried" not in disclosure.published_data("release.issued", carried.pending_events[0].data)
    # Once customs sets the light on the right itself, it is the right's own: its line reads it (review 110).
    carried.set_light(kind=LightKind.CUSTOMS, status=LightStatus.SCAN, reason="again", by=CUSTOMS,
                      now=NOW + timedelta(minutes=1))
    assert not carried.customs_carried
    assert disclosure.minimise_right(carried, LINE)[0].customs.reason == "again"


def test_a_right_that_only_carries_the_hold_is_deleted_as_any_new_right() -> None:
    """Its hold stays on the right it came from (which, its own, is revoked, not deleted); a hold customs set
    on the right itself still refuses the delete (review 149, finding 3)."""
    carried = issue(by=LINE, last=LastRight(uuid.uuid4(), State.ACTIVE, HOLD), now=NOW)
    carried.delete(by=LINE, now=NOW, reason="wrong call", travelled=False)
    assert carried.state is State.DELETED
    own = issue(by=LINE, last=LastRight(uuid.uuid4(), State.ACTIVE, HOLD), now=NOW)
    own = replace(own, customs=replace(HOLD, set_at=NOW))  # customs set it on this right
    assert code(own.delete, by=LINE, now=NOW, reason="wrong call", travelled=False) is ErrorCode.ILLEGAL_TRANSITION

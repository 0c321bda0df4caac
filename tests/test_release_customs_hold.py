"""Customs' hold is lifted by the customs organisation that set it, with a reason (review of the release
right's lights, finding 1).

Any customs organisation could lift another's scan hold, with no reason: ``set_light`` checked only that
the caller was of kind customs, and the stored light kept no record of who set it. The light now keeps
the organisation that set it (``releases.customs_set_by``, migration 0028); while it is red or scan, only
that organisation changes it (403 ``light_held_by_another`` for any other), and its green after a scan,
or after a red it set, needs a reason (422 ``reason_required``). A hold from before 0028 (no setter known)
is anyone of customs' to lift, as before. Customs is still bound to no port or office."""
# ruff: noqa: F811 - ``api`` is a fixture imported here and requested by name

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from identity.bootstrap import provider_for
from identity.organisations import set_active
from quaygate.schema import audit_log, release_events, releases, webhook_deliveries, webhook_subscriptions
from release_service.domain.errors import ErrorCode
from release_service.domain.parties import Actor, OrgKind
from release_service.domain.release import LastRight, Light, LightKind, LightStatus, State

from .factories import TERMINAL, add_org, container
from .test_release_api import Api, api, assert_problem  # noqa: F401
from .test_release_domain import CUSTOMS, code, issue

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
OTHER_CUSTOMS = Actor("customs2", uuid.uuid4(), OrgKind.CUSTOMS)


def _other_customs(api: Api) -> dict[str, str]:
    org = add_org(api.engine, OrgKind.CUSTOMS)
    return {"Authorization": f"Bearer {api.token_for('customs', org.organisation_id)}"}


def _put(api: Api, rid: str, headers: dict[str, str], body: dict[str, Any]) -> Any:
    return api.http.put(f"/api/v1/releases/{rid}/lights/customs", headers=headers, json=body)


def _stored(api: Api, rid: str) -> tuple[str, uuid.UUID | None, int]:
    with api.engine.connect() as conn:
        status, by = conn.execute(sa.select(releases.c.customs_status, releases.c.customs_set_by)
                                  .where(releases.c.id == uuid.UUID(rid))).one()
        events = conn.execute(sa.select(sa.func.count()).select_from(release_events)
                              .where(release_events.c.release_id == uuid.UUID(rid))).scalar_one()
    return status, by, events


def test_only_the_customs_that_set_a_scan_lifts_it_and_with_a_reason(api: Api) -> None:
    """The reviewer's case: customs A selects for scan with a reason, customs B sends green without one."""
    rid = api.issue(61)["release"]["id"]
    a, b = api.as_("customs"), _other_customs(api)
    held = _put(api, rid, a, {"status": "scan", "reason": "x-ray selection"})
    assert held.status_code == 200, held.text
    before = _stored(api, rid)
    assert before[:2] == ("scan", api.p.customs.organisation_id)
    for body in ({"status": "green"}, {"status": "green", "reason": "released"}, {"status": "red", "reason": "mine"}):
        refused = _put(api, rid, b, body)
        assert_problem(refused, 403, "light_held_by_another")
        assert _stored(api, rid) == before  # nothing written, no event
    assert_problem(_put(api, rid, a, {"status": "green"}), 422, "reason_required")
    assert_problem(_put(api, rid, a, {"status": "green", "reason": "  "}), 422, "reason_required")
    assert _stored(api, rid) == before
    lifted = _put(api, rid, a, {"status": "green", "reason": "scanned, clear"})
    assert lifted.status_code == 200, lifted.text
    assert lifted.json()["release"]["lights"]["customs"]["status"] == "green"
    # Green, the light is anyone of customs' again: B's own hold, then only B lifts it.
    assert _put(api, rid, b, {"status": "red", "reason": "documents"}).status_code == 200
    assert_problem(_put(api, rid, a, {"status": "green", "reason": "released"}), 403, "light_held_by_another")
    assert _put(api, rid, b, {"status": "green", "reason": "documents in"}).status_code == 200


def test_the_first_release_needs_no_reason_and_a_hold_from_before_0028_is_anyones(api: Api) -> None:
    """The red a right is issued with (awaiting customs release) is nobody's hold: the first green needs no
    reason. A scan stored before migration 0028 names no setter: any customs lifts it, as before, with a
    reason."""
    rid = api.issue(62)["release"]["id"]
    assert _put(api, rid, _other_customs(api), {"status": "green"}).status_code == 200
    assert _put(api, rid, api.as_("customs"), {"status": "scan", "reason": "x-ray"}).status_code == 200
    with api.engine.begin() as conn:
        conn.execute(releases.update().where(releases.c.id == uuid.UUID(rid)).values(customs_set_by=None))
    other = _other_customs(api)
    assert_problem(_put(api, rid, other, {"status": "green"}), 422, "reason_required")
    assert _put(api, rid, other, {"status": "green", "reason": "scanned"}).status_code == 200


def test_the_domain_rule() -> None:
    r = issue()
    r.set_light(kind=LightKind.CUSTOMS, status=LightStatus.RED, reason="documents", by=CUSTOMS, now=NOW)
    assert r.customs.set_by == CUSTOMS.organisation_id
    assert code(r.set_light, kind=LightKind.CUSTOMS, status=LightStatus.GREEN, reason="ok", by=OTHER_CUSTOMS,
                now=NOW) is ErrorCode.LIGHT_HELD_BY_ANOTHER
    assert code(r.set_light, kind=LightKind.CUSTOMS, status=LightStatus.GREEN, reason=None, by=CUSTOMS,
                now=NOW) is ErrorCode.REASON_REQUIRED
    r.set_light(kind=LightKind.CUSTOMS, status=LightStatus.SCAN, reason="x-ray", by=CUSTOMS, now=NOW)
    r.set_light(kind=LightKind.CUSTOMS, status=LightStatus.GREEN, reason="clear", by=CUSTOMS, now=NOW)
    assert r.customs.green and r.customs.set_by == CUSTOMS.organisation_id
    # The other lights keep no setter: their owner is one organisation already (the line, the terminal).
    assert r.commercial.set_by is None and r.terminal_light.set_by is None


# ---- review 141, finding 1: the hold stays with the container -----------------------------------------------


def _subscribe(api: Api, org: uuid.UUID) -> uuid.UUID:
    """A webhook subscription of ``org`` to the right's ends and issues (no delivery is attempted here)."""
    subscription = uuid.uuid4()
    with api.engine.begin() as conn:
        conn.execute(webhook_subscriptions.insert().values(
            id=subscription, organisation_id=org, url=f"https://{org.hex[:8]}.example/hooks", secret_enc="x",
            event_types=["release.issued", "release.revoked", "release.deleted", "release.expired"], active=True,
            created_at=datetime.now(UTC)))
    return subscription


def _told(api: Api, subscription: uuid.UUID) -> list[tuple[str, str]]:
    with api.engine.connect() as conn:
        return sorted((p["type"], p["release_id"]) for p in conn.execute(
            sa.select(webhook_deliveries.c.payload).where(webhook_deliveries.c.subscription_id == subscription)
        ).scalars())


def test_a_line_ending_a_right_and_issuing_it_again_does_not_move_customs_hold_off_the_container(api: Api) -> None:
    """Review 141, finding 1: customs A selects the container for scan; the line revokes the right and issues
    the container again. The new right started red "awaiting customs release", nobody's hold, which customs B
    turned green with no reason. It now carries A's hold: only A lifts it, saying why, which lifts it on the
    revoked right too (one hold on the container, review 149 finding 3); and A hears of the right's end and of
    the new right. (A right customs holds is no longer deleted, only revoked: review 149, finding 3,
    tests/test_gate_customs_container_hold.py.)"""
    end = "revoke"
    rid = api.issue(63)["release"]["id"]
    a, b = api.as_("customs"), _other_customs(api)
    told = _subscribe(api, api.p.customs.organisation_id)
    assert _put(api, rid, a, {"status": "scan", "reason": "x-ray selection"}).status_code == 200
    ended = api.http.post(f"/api/v1/releases/{rid}/{end}", headers=api.as_("line"), json={"reason": "again"})
    assert ended.status_code == 200, ended.text
    again = api.issue(63)["release"]
    # Carried, the hold shows to customs alone: to the line as the light any right is issued with (review 152,
    # finding 1: else any line issuing the container learnt customs' selection and grounds).
    assert again["lights"]["customs"] == {"status": "red", "reason": "awaiting customs release",
                                          "set_at": again["created_at"]}
    new = again["id"]
    shown = api.http.get(f"/api/v1/releases/{new}", headers=a).json()["lights"]["customs"]
    assert (shown["status"], shown["reason"]) == ("scan", "x-ray selection")
    assert _stored(api, new)[:2] == ("scan", api.p.customs.organisation_id)
    assert_problem(_put(api, new, b, {"status": "green"}), 403, "light_held_by_another")
    assert_problem(_put(api, new, b, {"status": "green", "reason": "released"}), 403, "light_held_by_another")
    assert_problem(_put(api, new, a, {"status": "green"}), 422, "reason_required")
    lifted = _put(api, new, a, {"status": "green", "reason": "scanned, clear"})
    assert lifted.status_code == 200, lifted.text
    assert _stored(api, rid)[:2] == ("green", api.p.customs.organisation_id)
    assert _told(api, told) == sorted([(f"release.{end}d", rid), ("release.issued", new)])


def test_a_second_live_right_on_another_vessel_call_carries_the_hold_too(api: Api) -> None:
    """The same way in without ending the right: the line names another vessel call (the key is container and
    call), and the new right on the container carries the hold of the live one."""
    rid = api.issue(64)["release"]["id"]
    b = _other_customs(api)
    assert _put(api, rid, api.as_("customs"), {"status": "red", "reason": "documents"}).status_code == 200
    new = api.issue(64, vessel_call="VC-2")["release"]["id"]
    assert _stored(api, new)[:2] == ("red", api.p.customs.organisation_id)
    assert_problem(_put(api, new, b, {"status": "green", "reason": "released"}), 403, "light_held_by_another")
    # A batch reads the containers' last rights as one issue does: a new container alongside starts clean.
    now = datetime.now(UTC)
    items = [{"container_number": container(n), "bill_of_lading": f"BL-{n}", "vessel_call": "VC-3",
              "terminal": TERMINAL, "release_to_organisation_id": str(api.p.fwd.organisation_id),
              "valid_from": (now - timedelta(hours=1)).isoformat(),
              "valid_until": (now + timedelta(days=3)).isoformat()} for n in (64, 65)]
    batch = api.http.post("/api/v1/releases:batch", json={"releases": items}, headers=api.as_("line"))
    assert batch.status_code == 200 and batch.json()["created"] == 2, batch.text
    held, fresh = (i["release_id"] for i in batch.json()["items"])
    assert _stored(api, held)[:2] == ("red", api.p.customs.organisation_id)
    assert _stored(api, fresh)[:2] == ("red", None)


def test_what_a_new_right_takes_from_the_containers_last() -> None:
    """Only a hold someone set, not lifted, on a right not used at the gate: a container that left the
    terminal, a green, or the red a right is issued with start the next right clean."""
    held = Light(LightStatus.SCAN, "x-ray", NOW, CUSTOMS.organisation_id)
    for state in (State.REVOKED, State.DELETED, State.EXPIRED, State.ACTIVE, State.NOMINATED):
        r = issue(last=LastRight(uuid.uuid4(), state, held))
        assert r.customs == held
        assert r.pending_events[-1].data["customs_carried"]["status"] == "scan"
        assert "x-ray" not in repr(r.pending_events[-1].data)  # customs' reason is customs' own (disclosure.py)
    for state, light in ((State.COMPLETED, held), (State.GATED_IN, held),
                         (State.REVOKED, Light(LightStatus.GREEN, "clear", NOW, CUSTOMS.organisation_id)),
                         (State.REVOKED, Light(LightStatus.RED, "awaiting customs release", NOW))):
        r = issue(last=LastRight(uuid.uuid4(), state, light))
        assert r.customs.status is LightStatus.RED and r.customs.set_by is None, state
        assert "customs_carried" not in r.pending_events[-1].data


# ---- review 141, finding 2: the hold of a deactivated customs organisation ---------------------------------


def _deactivate(api: Api, org: uuid.UUID) -> None:
    set_active(api.engine, provider_for(api.http.app).grants, org, active=False, actor="admin-client",
               reason="office closed", now=datetime.now(UTC), access_token_ttl=600)


def test_the_hold_of_a_deactivated_customs_is_lifted_by_another_with_a_reason_and_recorded(api: Api) -> None:
    """Review 141, finding 2: customs A selects for scan and port security deactivates A. Its hold was
    nobody's to lift (B 403, A's tokens revoked) and the deactivation's audit entry named none of it. Any
    customs now lifts it, saying why, the event naming A; the deactivation lists the holds A had set."""
    a_org = api.p.customs.organisation_id
    rid = api.issue(66)["release"]["id"]
    cleared = api.issue(67)["release"]["id"]
    a, b = api.as_("customs"), _other_customs(api)
    assert _put(api, rid, a, {"status": "scan", "reason": "x-ray selection"}).status_code == 200
    assert _put(api, cleared, a, {"status": "green"}).status_code == 200  # not a hold: not listed
    _deactivate(api, a_org)
    with api.engine.connect() as conn:
        entry = conn.execute(sa.select(audit_log.c.data).where(
            audit_log.c.kind == "identity.admin.organisation.deactivated", audit_log.c.subject == str(a_org))
        ).scalar_one()
    assert entry["customs_holds"] == [{"release_id": rid, "container_number": container(66), "status": "scan"}]
    before = _stored(api, rid)
    assert_problem(_put(api, rid, b, {"status": "green"}), 422, "reason_required")
    assert _stored(api, rid) == before
    lifted = _put(api, rid, b, {"status": "green", "reason": "scanned at our office"})
    assert lifted.status_code == 200, lifted.text
    with api.engine.connect() as conn:
        event = conn.execute(sa.select(release_events.c.type, release_events.c.data)
                             .where(release_events.c.release_id == uuid.UUID(rid))
                             .order_by(release_events.c.seq.desc()).limit(1)).one()
    assert event.type == "release.light.customs"
    assert (event.data["status"], event.data["previous_setter"]) == ("green", str(a_org))
    assert _stored(api, rid)[0] == "green"


def test_the_domain_rule_for_an_inactive_setter() -> None:
    r = issue()
    r.set_light(kind=LightKind.CUSTOMS, status=LightStatus.SCAN, reason="x-ray", by=CUSTOMS, now=NOW)
    assert code(r.set_light, kind=LightKind.CUSTOMS, status=LightStatus.GREEN, reason="ok", by=OTHER_CUSTOMS,
                now=NOW) is ErrorCode.LIGHT_HELD_BY_ANOTHER
    assert code(r.set_light, kind=LightKind.CUSTOMS, status=LightStatus.GREEN, reason=" ", by=OTHER_CUSTOMS,
                now=NOW, setter_active=False) is ErrorCode.REASON_REQUIRED
    # Another customs may take the hold over (a red of its own), saying whose it was.
    r.set_light(kind=LightKind.CUSTOMS, status=LightStatus.RED, reason="documents", by=OTHER_CUSTOMS, now=NOW,
                setter_active=False)
    assert r.customs.set_by == OTHER_CUSTOMS.organisation_id
    assert r.pending_events[-1].data["previous_setter"] == str(CUSTOMS.organisation_id)
    # Its own hold, or a green, names no previous setter.
    r.set_light(kind=LightKind.CUSTOMS, status=LightStatus.GREEN, reason="in", by=OTHER_CUSTOMS, now=NOW)
    assert "previous_setter" not in r.pending_events[-1].data

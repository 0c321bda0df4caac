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
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from quaygate.schema import release_events, releases
from release_service.domain.errors import ErrorCode
from release_service.domain.parties import Actor, OrgKind
from release_service.domain.release import LightKind, LightStatus

from .factories import add_org
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

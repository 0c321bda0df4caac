"""Customs' hold is on the container, not on one right of it (the leftover of review 141).

A line may hold two live rights on one container at a terminal, on two vessel calls (issue refuses a second
one only on the same call). Customs selected the container for scan on the first; the second, issued before
that and nominated to a driver, had its own customs light green. The gate judges the right nominated to the
driver whose badge it read (``gate.select_right``): the second, green, so the truck was let in with the
container customs wanted to scan. Now a red or scan customs set itself on any live right of the container
(``RightFacts.customs_held``: not the red a right is issued with, awaiting its release) holds every right of
that container: ``customs_hold`` on each, online from PostgreSQL and from the Redis copies, in check and
commit mode, and in the gate passes the service signs for offline lanes (which hold the nominated right
alone and could not see the other). Review 149, finding 3: the hold stays on the container when the right it
was set on ends unused (revoked, lapsed), until customs lifts it, on that right or on one that carried it.
"""
# ruff: noqa: F811 - ``gate`` and ``cached`` are fixtures imported here and requested by name

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import releases
from release_service.domain import gate as g
from release_service.domain.errors import DomainError
from release_service.services import lifecycle

from .factories import do
from .test_gate_domain import NOW, a_right
from .test_gate_facts import _serve
from .test_gate_offline import passes, payload
from .test_gate_person_suspended import _override, outcome, verify
from .test_gate_verify import PLATE, Gate, gate  # noqa: F401
from .test_release_api import assert_problem
from .test_release_customs_hold import _other_customs, _stored

HELD = {"decision": "deny", "reasons": ["customs_hold"], "committed": False}


def _light(gate: Gate, rid: str, status: str, reason: str | None = None) -> None:
    body: dict[str, Any] = {"status": status, **({"reason": reason} if reason else {})}
    r = gate.http.put(f"/api/v1/releases/{rid}/lights/customs", json=body, headers=gate.as_("customs"))
    assert r.status_code == 200, r.text


def _two_rights(gate: Gate, n: int) -> tuple[str, str]:
    """The line's first right on container ``n`` (vessel call VC-1, not nominated), then its second on
    another call (VC-2), nominated to the test driver and truck with every light green."""
    first = str(gate.issue(n, release_to_organisation_id=str(gate.p.haul.organisation_id))["release"]["id"])
    second = str(gate.issue(n, vessel_call="VC-2", bill_of_lading=f"BL-{n}-2",
                            release_to_organisation_id=str(gate.p.haul.organisation_id))["release"]["id"])
    r = gate.http.put(f"/api/v1/releases/{second}/nomination", headers=gate.as_("haul"),
                      json={"driver_person_id": str(gate.p.driver), "plate": PLATE})
    assert r.status_code == 200, r.text
    _light(gate, second, "green")
    r = gate.http.put(f"/api/v1/releases/{second}/lights/terminal", json={"status": "green"},
                      headers=gate.as_("terminal"))
    assert r.status_code == 200, r.text
    return first, second


@pytest.mark.parametrize("hold", ["scan", "red"])
def test_a_hold_on_the_containers_other_right_holds_the_nominated_one(gate: Gate, hold: str) -> None:
    first, second = _two_rights(gate, 31)
    got = verify(gate, 31)
    assert got["decision"] == "allow" and got["release_id"] == second, got  # the nominated right, judged
    _light(gate, first, hold, "x-ray selection")
    assert outcome(verify(gate, 31)) == HELD
    assert outcome(verify(gate, 31, mode="commit")) == HELD
    assert gate.state(second) == "nominated"  # nothing used
    # Customs lifts its hold (with a reason): the truck goes in on the right nominated to it.
    _light(gate, first, "green", "scanned, clear")
    got = verify(gate, 31, mode="commit")
    assert (got["decision"], got["committed"], got["release_id"]) == ("allow", True, second), got


def test_the_red_a_right_is_issued_with_holds_only_that_right(gate: Gate) -> None:
    """A right awaiting its customs release is no hold on the container: the other right goes through."""
    first, second = _two_rights(gate, 32)
    with gate.engine.connect() as conn:
        row = conn.execute(sa.select(releases.c.customs_status, releases.c.customs_set_by)
                           .where(releases.c.id == uuid.UUID(first))).one()
    assert tuple(row) == ("red", None)
    got = verify(gate, 32, mode="commit")
    assert (got["decision"], got["committed"], got["release_id"]) == ("allow", True, second), got


def _end(gate: Gate, rid: str, end: str) -> None:
    """The line revokes the right; or its window passes, the sweeper not by yet ("lapsed": it has lapsed all
    the same, ``effective_state``) or by ("swept": written down expired)."""
    if end == "revoke":
        r = gate.http.post(f"/api/v1/releases/{rid}/revoke", json={"reason": "wrong call"}, headers=gate.as_("line"))
        assert r.status_code == 200, r.text
        return
    past = datetime.now(UTC) - timedelta(seconds=1)
    with gate.engine.begin() as conn:
        conn.execute(releases.update().where(releases.c.id == uuid.UUID(rid))
                     .values(valid_from=past - timedelta(days=1), valid_until=past))
    if end == "swept":
        assert do(gate.engine, lambda uow: lifecycle.lapse_due(uow, datetime.now(UTC))) == 1
    assert gate.state(rid) == {"lapsed": "active", "swept": "expired"}[end]


@pytest.mark.parametrize("end", ["revoke", "lapsed", "swept"])
def test_the_hold_outlives_the_right_it_was_set_on(gate: Gate, end: str) -> None:
    """Review 149, finding 3: the hold is on the container, so it stays when the right customs set it on ends
    unused (the line revokes it, or it lapses), until customs lifts it: before, the other right went through
    (a line insider only had to revoke the held one). Customs lifts it on the ended right itself, saying why;
    only the customs that set it (its light is its own, as on a live right)."""
    first, second = _two_rights(gate, 33)
    _light(gate, first, "scan", "x-ray selection")
    assert outcome(verify(gate, 33)) == HELD
    _end(gate, first, end)
    assert outcome(verify(gate, 33)) == HELD  # before the mend: allow
    assert outcome(verify(gate, 33, mode="commit")) == HELD
    assert gate.state(second) == "nominated"
    other = _other_customs(gate)
    lights = f"/api/v1/releases/{first}/lights/customs"
    assert_problem(gate.http.put(lights, headers=other, json={"status": "green", "reason": "clear"}), 403,
                   "light_held_by_another")
    assert_problem(gate.http.put(lights, headers=gate.as_("customs"), json={"status": "green"}), 422,
                   "reason_required")
    # An ended right takes no other light: customs only lifts its hold there.
    refused = gate.http.put(lights, headers=gate.as_("customs"), json={"status": "red", "reason": "documents"})
    assert_problem(refused, 409, "illegal_transition" if end == "revoke" else "right_expired")
    refused = gate.http.put(f"/api/v1/releases/{first}/lights/terminal", headers=gate.as_("terminal"),
                            json={"status": "green"})
    assert refused.status_code == 409, refused.text
    _light(gate, first, "green", "scanned, clear")
    got = verify(gate, 33, mode="commit")
    assert (got["decision"], got["committed"], got["release_id"]) == ("allow", True, second), got


def test_a_right_customs_holds_is_revoked_not_deleted(gate: Gate) -> None:
    """A deleted right drops out of what the gate reads: one customs holds would take its hold with it. The line
    revokes it instead (as a contested right), and deletes it once customs has lifted the hold."""
    first, second = _two_rights(gate, 39)
    _light(gate, first, "scan", "x-ray selection")
    deleted = gate.http.post(f"/api/v1/releases/{first}/delete", json={"reason": "error"}, headers=gate.as_("line"))
    assert_problem(deleted, 409, "illegal_transition")  # before the mend: 200, and the container let out
    assert gate.state(first) == "active" and outcome(verify(gate, 39)) == HELD
    _light(gate, first, "green", "scanned, clear")
    deleted = gate.http.post(f"/api/v1/releases/{first}/delete", json={"reason": "error"}, headers=gate.as_("line"))
    assert deleted.status_code == 200, deleted.text
    assert verify(gate, 39)["decision"] == "allow"


def test_a_lift_on_a_right_that_carried_the_hold_lifts_it_on_the_container(gate: Gate) -> None:
    """The line revokes the held right and issues it again: the new right carries the hold (review 141). Customs
    lifts it there: the ended right's hold, the same one, is lifted with it (recorded on it), and the container's
    other right goes through. A hold that is not that one (customs' own on another right) stays."""
    first, second = _two_rights(gate, 40)
    _light(gate, first, "scan", "x-ray selection")
    _end(gate, first, "revoke")
    again = str(gate.issue(40, release_to_organisation_id=str(gate.p.haul.organisation_id))["release"]["id"])
    assert _stored(gate, again)[:2] == ("scan", gate.p.customs.organisation_id)
    assert outcome(verify(gate, 40)) == HELD
    events = _stored(gate, first)[2]
    _light(gate, again, "green", "scanned, clear")
    assert _stored(gate, first)[:3] == ("green", gate.p.customs.organisation_id, events + 1)
    got = verify(gate, 40, mode="commit")
    assert (got["decision"], got["committed"], got["release_id"]) == ("allow", True, second), got


def test_the_gate_pass_of_the_nominated_right_carries_the_containers_hold(gate: Gate) -> None:
    """Offline the adapter holds the pass of the nominated right alone: the service's pass says the hold."""
    first, second = _two_rights(gate, 34)

    def customs_in_pass() -> str:
        r = passes(gate)
        assert r.status_code == 200, r.text
        (right,) = [payload(t)["right"] for t in r.json()["passes"] if payload(t)["sub"] == second]
        return str(right["customs"])

    assert customs_in_pass() == "green"
    _light(gate, first, "scan", "x-ray selection")
    assert customs_in_pass() == "scan"
    _light(gate, first, "green", "scanned, clear")
    assert customs_in_pass() == "green"


@pytest.fixture
def cached(pg_engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[Gate]:
    yield from _serve(pg_engine, tmp_path, redis_url)


def test_the_hold_is_seen_on_copies_in_redis_and_by_a_commit_on_the_event_loop(cached: Gate) -> None:
    gate = cached
    first, second = _two_rights(gate, 35)
    assert verify(gate, 35)["decision"] == "allow"  # the container's rights cached
    _light(gate, first, "scan", "x-ray selection")
    assert outcome(verify(gate, 35)) == HELD  # read through, then from the copy
    assert outcome(verify(gate, 35)) == HELD
    assert outcome(verify(gate, 35, mode="commit")) == HELD
    assert gate.state(second) == "nominated"


def test_a_rights_copy_that_does_not_say_whether_customs_holds_is_read_again(cached: Gate) -> None:
    """A copy from a server of before this field (a rolling upgrade) is never taken for one without a hold."""
    gate = cached
    facts = gate.facts  # type: ignore[attr-defined]
    first, _ = _two_rights(gate, 36)
    _light(gate, first, "scan", "x-ray selection")
    assert outcome(verify(gate, 36)) == HELD
    (key,) = list(facts._r.scan_iter(match=facts._p + "r:*"))
    entries = json.loads(facts._r.get(key) or b"[]")
    old = [entry[:15] for entry in entries]
    facts._r.set(key, json.dumps(old), ex=600)
    facts._near.clear()  # as in a process that never read it
    assert outcome(verify(gate, 36)) == HELD
    assert sorted(entry[15] for entry in json.loads(facts._r.get(key) or b"[]")) == [False, True]  # replaced


def test_the_desk_cannot_set_the_containers_hold_aside(gate: Gate) -> None:
    first, second = _two_rights(gate, 37)
    _light(gate, first, "scan", "x-ray selection")
    refused = verify(gate, 37, mode="commit")
    assert outcome(refused) == HELD
    got = _override(gate, refused)
    assert_problem(got, 409, "illegal_transition")
    assert gate.state(second) == "nominated"


def test_an_override_of_an_earlier_refusal_cannot_let_out_the_container_customs_then_held(gate: Gate) -> None:
    """Review 149, finding 1: the nominated right is refused for a misread plate (the desk's to set aside);
    customs then selects the container for scan on the other right. Its override, asked afterwards, is judged
    on the container as it is now: refused as an override of the customs-held right itself is."""
    first, second = _two_rights(gate, 38)
    refused = verify(gate, 38, mode="commit", plate={"text": "9ZZZ999", "country": "BE", "confidence": 0.95})
    assert (refused["decision"], refused["reasons"], refused["release_id"]) == ("deny", ["plate_mismatch"], second)
    _light(gate, first, "scan", "x-ray selection")
    assert outcome(verify(gate, 38)) == HELD
    got = _override(gate, refused)  # before the mend: 201, gated in
    assert_problem(got, 409, "illegal_transition")
    assert "customs_hold" in got.json()["detail"] and gate.state(second) == "nominated"
    _light(gate, first, "green", "scanned, clear")  # customs lifts it: the desk's word counts again
    got = _override(gate, refused)
    assert got.status_code == 201, got.text
    assert gate.state(second) == "gated_in"


def test_pure_the_override_rule_on_the_containers_other_rights() -> None:
    def rule(right: g.RightFacts, rights: list[g.RightFacts]) -> None:
        g.require_overridable_right(right, rights, decided_at=NOW, face=None, now=NOW)

    right = a_right()
    other = a_right(id=uuid.uuid4(), customs="scan", customs_held=True, nomination=None, state="active")
    with pytest.raises(DomainError) as refused:
        rule(right, [right, other])
    assert refused.value.context["reasons"] == ["customs_hold"]
    rule(right, [right])
    issued_red = replace(other, customs="red", customs_held=False)  # the red of issue: no hold on the container
    rule(right, [right, issued_red])


def test_the_ended_rights_hold_is_seen_on_the_copies_in_redis_and_its_lift_too(cached: Gate) -> None:
    gate = cached
    first, second = _two_rights(gate, 41)
    _light(gate, first, "scan", "x-ray selection")
    assert outcome(verify(gate, 41)) == HELD  # the container's rights cached
    _end(gate, first, "revoke")
    assert outcome(verify(gate, 41)) == HELD
    assert outcome(verify(gate, 41)) == HELD  # from the copy
    assert outcome(verify(gate, 41, mode="commit")) == HELD
    _light(gate, first, "green", "scanned, clear")  # invalidates the container's copies
    got = verify(gate, 41, mode="commit")
    assert (got["decision"], got["committed"], got["release_id"]) == ("allow", True, second), got


def test_the_gate_pass_carries_the_hold_of_an_ended_right(gate: Gate) -> None:
    first, second = _two_rights(gate, 42)
    _light(gate, first, "scan", "x-ray selection")
    _end(gate, first, "revoke")
    r = passes(gate)
    assert r.status_code == 200, r.text
    (right,) = [payload(t)["right"] for t in r.json()["passes"] if payload(t)["sub"] == second]
    assert right["customs"] == "scan"


def test_pure_which_rights_hold_the_container() -> None:
    """Customs' own hold on any right of the container not used at the gate: live, revoked, lapsed (swept or
    not), deleted; not one whose right took the container out (completed), nor the red of issue."""
    right = a_right()
    other = a_right(id=uuid.uuid4(), customs="scan", customs_held=True, nomination=None, state="active")
    lapsed = replace(other, valid_until=NOW - timedelta(seconds=1))
    for state in ("active", "nominated", "gated_in", "revoked", "expired", "deleted"):
        assert g.container_held([right, replace(other, state=state)], right, now=NOW) is not None, state
    assert g.container_held([right, lapsed], right, now=NOW) is lapsed
    assert g.container_held([right, replace(other, state="completed")], right, now=NOW) is None
    assert g.container_held([right, replace(other, customs="red", customs_held=False)], right, now=NOW) is None
    assert g.container_held([right, replace(other, container="MSCU0000000")], right, now=NOW) is None
    assert g.container_held([right], right, now=NOW) is None

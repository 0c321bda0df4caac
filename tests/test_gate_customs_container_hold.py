"""Customs' hold is on the container, not on one right of it (the leftover of review 141).

A line may hold two live rights on one container at a terminal, on two vessel calls (issue refuses a second
one only on the same call). Customs selected the container for scan on the first; the second, issued before
that and nominated to a driver, had its own customs light green. The gate judges the right nominated to the
driver whose badge it read (``gate.select_right``): the second, green, so the truck was let in with the
container customs wanted to scan. Now a red or scan customs set itself on any live right of the container
(``RightFacts.customs_held``: not the red a right is issued with, awaiting its release) holds every right of
that container: ``customs_hold`` on each, online from PostgreSQL and from the Redis copies, in check and
commit mode, and in the gate passes the service signs for offline lanes (which hold the nominated right
alone and could not see the other).
"""
# ruff: noqa: F811 - ``gate`` and ``cached`` are fixtures imported here and requested by name

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import releases
from release_service.domain import gate as g
from release_service.domain.errors import DomainError

from .test_gate_domain import NOW, a_right
from .test_gate_facts import _serve
from .test_gate_offline import passes, payload
from .test_gate_person_suspended import _override, outcome, verify
from .test_gate_verify import PLATE, Gate, gate  # noqa: F401
from .test_release_api import assert_problem

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


def test_a_revoked_right_holds_nothing(gate: Gate) -> None:
    """Only a live right's hold holds the container: the line ended the held right (its hold carries to a
    right issued later, review 141; not to one issued before)."""
    first, second = _two_rights(gate, 33)
    _light(gate, first, "scan", "x-ray selection")
    assert outcome(verify(gate, 33)) == HELD
    r = gate.http.post(f"/api/v1/releases/{first}/revoke", json={"reason": "wrong call"}, headers=gate.as_("line"))
    assert r.status_code == 200, r.text
    assert verify(gate, 33)["decision"] == "allow"


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

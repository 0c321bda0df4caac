"""The service's ``face_mismatch`` sticks to the right (review 148, finding 1), on SQLite and PostgreSQL with
real photos matched in identity's worker (tests/test_face_support.py).

The attack: a terminal insider with the gate client. The capture sent with a gate-in is compared with the
nominated driver's enrolled face and found another person's: deny ``face_mismatch``, not the desk's to set
aside (review 142). The insider then asks again for the same truck, under a new request_id, without a
face: where the terminal requires one, review ``face_required``, which the desk may override; on the
default policy an outright allow, committed; where the terminal accepts match results, a claimed match did
the same. Now, within ``OVERRIDE_WITHIN_SECONDS`` of a decision on the right whose face the service itself
found another person's (``gate.face_against``), under the same nomination, a gate-in without a capture the
service matched to that driver is ``face_mismatch`` too, the earlier evidence kept on its row (so no desk
overrides it either); a fresh capture the service matches to the driver is judged on its own (a passenger
caught by the lane camera does not lock the driver out). With the facts in Redis, a check answered from
the cache sees it at once (the mismatch replaces the container's copies), and so does a commit decided on
the event loop."""
# ruff: noqa: F811 - ``face_pool`` is a fixture imported here and requested by name

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import gate_decisions
from release_service.domain import gate as g
from release_service.domain.errors import DomainError
from release_service.domain.release import FaceAgainst
from tests.test_face_support import fresh

from .test_gate_domain import DRIVER, NOW, a_request, a_right, run
from .test_gate_face import FaceGate, b64, face_pool, serving  # noqa: F401
from .test_gate_offline import _post, _report, passes, payload
from .test_gate_offline_face import _audited
from .test_release_api import assert_problem

CLAIMED_MATCH = {"match": {"matched": True, "score": 1.0}}


@pytest.fixture
def gate(engine: sa.Engine, tmp_path: Path, face_pool: Any) -> Iterator[FaceGate]:
    with serving(engine, tmp_path, face_pool) as fg:
        yield fg


@pytest.fixture
def redis_gate(pg_engine: sa.Engine, tmp_path: Path, redis_url: str, face_pool: Any) -> Iterator[FaceGate]:
    with serving(pg_engine, tmp_path, face_pool, redis_url=redis_url, gate_decision_drain=False) as fg:
        assert fg.app.state.container.gate_facts is not None
        yield fg


def _verify(gate: FaceGate, n: int, **over: Any) -> dict[str, Any]:
    r = gate.verify(gate.body(n, **over))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _override(gate: FaceGate, refused: dict[str, Any]) -> Any:
    return gate.http.post("/gate/v1/overrides", headers={"Authorization": f"Bearer {gate.gate_token}"},
                          json={"decision_id": refused["decision_id"], "reason": "looks like him"})


def _face_of(gate: FaceGate, decision_id: str) -> Any:
    with gate.engine.connect() as conn:
        return conn.execute(sa.select(gate_decisions.c.face)
                            .where(gate_decisions.c.id == uuid.UUID(decision_id))).scalar_one()


def _refused_by_face(gate: FaceGate, n: int, mode: str = "commit") -> dict[str, Any]:
    """The driver enrolled, and another person's face at the lane: the service's own face_mismatch."""
    gate.enrol(gate.p.driver, "obama.jpg")
    first = _verify(gate, n, mode=mode, face={"image": b64(fresh("biden.jpg"))})
    assert (first["decision"], first["reasons"]) == ("deny", ["face_mismatch"]), first
    return first


def _sticks(gate: FaceGate, first: dict[str, Any], again: dict[str, Any], rid: str) -> None:
    assert again["decision"] == "deny" and "face_mismatch" in again["reasons"], again
    assert again["committed"] is False and gate.state(rid) == "nominated"
    against = _face_of(gate, again["decision_id"])["against"]
    assert against["decision_id"] == first["decision_id"] and against["matched"] is False, against
    got = _override(gate, again)
    assert_problem(got, 409, "illegal_transition")  # before the mend: 201, gated in
    assert "face_mismatch" in got.json()["detail"] and gate.state(rid) == "nominated"


def test_where_a_face_is_required_asking_again_without_one_is_no_review_to_override(gate: FaceGate) -> None:
    gate.policy(face_required=True)
    rid = gate.pickable(1)
    first = _refused_by_face(gate, 1)
    assert_problem(_override(gate, first), 409, "illegal_transition")
    again = _verify(gate, 1, mode="commit")  # same truck, new request_id, no face
    # before the mend: review [face_required], and its override 201, gated in
    _sticks(gate, first, again, rid)
    assert again["reasons"] == ["face_required", "face_mismatch"]


def test_on_the_default_policy_asking_again_without_a_face_is_no_allow(gate: FaceGate) -> None:
    rid = gate.pickable(2)
    first = _refused_by_face(gate, 2)
    again = _verify(gate, 2, mode="commit")  # before the mend: allow [], committed, gated in
    assert again["reasons"] == ["face_mismatch"]
    _sticks(gate, first, again, rid)


def test_where_match_results_count_a_claimed_match_is_no_way_round(gate: FaceGate) -> None:
    gate.policy(face_required=True, face_match_results="accept")
    rid = gate.pickable(3)
    first = _refused_by_face(gate, 3)
    again = _verify(gate, 3, mode="commit", face=CLAIMED_MATCH)  # before the mend: allow, committed
    assert again["reasons"] == ["face_mismatch"]
    _sticks(gate, first, again, rid)
    assert _face_of(gate, again["decision_id"])["kind"] == "match_result"  # what was sent, kept as it was


def test_the_driver_s_own_fresh_capture_is_judged_on_its_own(gate: FaceGate) -> None:
    """A passenger caught by the lane camera: the real driver, captured again, goes in."""
    gate.policy(face_required=True)
    rid = gate.pickable(4)
    _refused_by_face(gate, 4)
    assert _verify(gate, 4, face={"image": b64(fresh("obama2.jpg"))})["decision"] == "allow"
    done = _verify(gate, 4, mode="commit", face={"image": b64(fresh("obama2.jpg"))})
    assert (done["decision"], done["committed"]) == ("allow", True) and gate.state(rid) == "gated_in"


def test_a_check_s_mismatch_sticks_too(gate: FaceGate) -> None:
    rid = gate.pickable(5)
    first = _refused_by_face(gate, 5, mode="check")
    _sticks(gate, first, _verify(gate, 5, mode="commit"), rid)


def test_a_face_the_service_could_not_judge_does_not_stick(gate: FaceGate) -> None:
    """No enrolment: nothing judged (the desk checks the person), so nothing sticks."""
    rid = gate.pickable(6)
    unjudged = _verify(gate, 6, face={"image": b64(fresh("biden.jpg"))})
    assert unjudged["reasons"] == ["face_required"], unjudged
    done = _verify(gate, 6, mode="commit")
    assert (done["decision"], done["committed"]) == ("allow", True) and gate.state(rid) == "gated_in"


def test_with_the_facts_in_redis_the_cached_check_and_the_loop_commit_see_it(redis_gate: FaceGate) -> None:
    gate = redis_gate
    rid = gate.pickable(7)
    assert _verify(gate, 7)["decision"] == "allow"  # the facts are cached now
    assert _verify(gate, 7)["decision"] == "allow"  # and remembered by this process
    first = _refused_by_face(gate, 7, mode="check")
    assert _face_of(gate, first["decision_id"])["kind"] == "image"  # in PostgreSQL at once, not drained later
    check = _verify(gate, 7)  # from the cache: before the mend, allow
    assert (check["decision"], check["reasons"]) == ("deny", ["face_mismatch"]), check
    _sticks(gate, first, _verify(gate, 7, mode="commit"), rid)  # on the event loop
    done = _verify(gate, 7, mode="commit", face={"image": b64(fresh("obama2.jpg"))})
    assert (done["decision"], done["committed"]) == ("allow", True) and gate.state(rid) == "gated_in"


def test_offline_a_gate_in_on_the_pass_after_the_service_s_face_mismatch_is_flagged(gate: FaceGate) -> None:
    """The lane's last refresh gave it a pass; the service then found the face another person's; the
    insider cuts the uplink and the adapter lets the truck in on its pass, which cannot know. The truck is
    in (no second one takes the right), and port security hears: changed_after_pass, face_mismatch."""
    rid = gate.pickable(8)
    token = next(t for t in passes(gate).json()["passes"] if payload(t)["sub"] == rid)
    _refused_by_face(gate, 8)
    report = _report(gate, 8, token=token, face={"kind": "none"})
    got = _post(gate, report)
    assert got.status_code == 200, got.text
    assert (got.json()["verdict"], got.json()["flag"]) == ("flagged", "changed_after_pass"), got.json()
    assert gate.state(rid) == "gated_in"
    [data] = _audited(gate)
    assert data["changed_since_pass"] == ["face_mismatch"], data  # before the mend: recorded, no flag


_WRONG_PLATE = {"text": "9ZZZ999", "country": "BE", "confidence": 0.95}


def test_an_override_of_a_decision_before_the_mismatch_does_not_get_round_it(gate: FaceGate) -> None:
    """Review 149, finding 2: the face_required review asked before the impostor's capture was overridden to
    gated_in, the right's standing face_mismatch unseen (the override read only the decision's own face). Now
    an override is judged on the right's standing mismatch too, whichever decision it overrides."""
    gate.policy(face_required=True)
    rid = gate.pickable(9)
    before = _verify(gate, 9, mode="commit")  # no face
    assert (before["decision"], before["reasons"]) == ("review", ["face_required"]), before
    _refused_by_face(gate, 9)
    assert _verify(gate, 9)["reasons"] == ["face_required", "face_mismatch"]  # asked again: it sticks
    got = _override(gate, before)  # before the mend: 201, gated in
    assert_problem(got, 409, "illegal_transition")
    assert "face_mismatch" in got.json()["detail"] and gate.state(rid) == "nominated"


def test_only_a_decision_on_the_driver_s_own_capture_after_the_mismatch_is_the_desk_s_to_override(
        gate: FaceGate) -> None:
    """The rule of the gate (``face_standing``) holds at the desk: a capture the service matched to the driver
    after the mismatch is judged on its own (a passenger caught by the lane camera does not lock the driver
    out), so its refusal for a misread plate is overridden; one matched before the mismatch is not."""
    gate.policy(face_required=True)
    gate.enrol(gate.p.driver, "obama.jpg")
    rid = gate.pickable(10)
    before = _verify(gate, 10, mode="commit", face={"image": b64(fresh("obama2.jpg"))}, plate=_WRONG_PLATE)
    assert (before["decision"], before["reasons"]) == ("deny", ["plate_mismatch"]), before
    mismatch = _verify(gate, 10, face={"image": b64(fresh("biden.jpg"))})
    assert mismatch["reasons"] == ["face_mismatch"], mismatch
    got = _override(gate, before)
    assert_problem(got, 409, "illegal_transition")
    assert "face_mismatch" in got.json()["detail"] and gate.state(rid) == "nominated"
    after = _verify(gate, 10, mode="commit", face={"image": b64(fresh("obama2.jpg"))}, plate=_WRONG_PLATE)
    assert (after["decision"], after["reasons"]) == ("deny", ["plate_mismatch"]), after
    got = _override(gate, after)
    assert got.status_code == 201, got.text
    assert gate.state(rid) == "gated_in"


# ---- the pure rule ---------------------------------------------------------------------------------

_KEY = [str(DRIVER), "1ABC123", "BE"]
_OTHER = {"kind": "image", "matched": False, "distance": 0.81, "tolerance": 0.5, "unavailable": None}
_EARLIER = uuid.uuid4()


def _seen(face: dict[str, Any] = _OTHER, *, ago: float = 60, key: list[str | None] | None = None) -> FaceAgainst:
    return FaceAgainst(_EARLIER, NOW - timedelta(seconds=ago), face, tuple(key or _KEY))


def _right(seen: FaceAgainst | None, **kw: Any) -> list[g.RightFacts]:
    return [a_right(nomination=g.NominationFacts(DRIVER, "1ABC123", "BE", "accepted"), face_against=seen, **kw)]


_MATCHED = g.FaceEvidence("image", matched=True, person_id=DRIVER, distance=0.35, tolerance=0.5)
_UNJUDGED = g.FaceEvidence("image", person_id=DRIVER, unavailable="face_unavailable")


@pytest.mark.parametrize(("seen", "face", "direction", "want"), [
    (_seen(), None, g.Direction.IN, ("deny", ["face_mismatch"])),
    (_seen(), g.FaceEvidence("match_result", 1.0, True), g.Direction.IN, ("deny", ["face_mismatch"])),
    (_seen(), _UNJUDGED, g.Direction.IN, ("deny", ["face_required", "face_mismatch"])),
    (_seen({**_OTHER, "matched": None, "distance": None, "unavailable": g.FACE_REPLAYED}), None, g.Direction.IN,
     ("deny", ["face_mismatch"])),
    (_seen(), _MATCHED, g.Direction.IN, ("allow", [])),  # the driver, captured again
    (_seen(ago=g.OVERRIDE_WITHIN_SECONDS + 1), None, g.Direction.IN, ("allow", [])),  # long ago
    (_seen(key=[str(uuid.uuid4()), "1ABC123", "BE"]), None, g.Direction.IN, ("allow", [])),  # re-nominated
    (_seen({"kind": "image", "matched": None, "distance": None, "tolerance": None,
            "unavailable": "face_unavailable"}), None, g.Direction.IN, ("allow", [])),  # nothing judged
    (None, None, g.Direction.IN, ("allow", [])),
], ids=["no face", "claimed match", "unjudged capture", "replayed", "matched again", "long ago", "re-nominated",
        "unjudged before", "none"])
def test_pure_the_service_s_face_mismatch_sticks_to_the_right(seen: FaceAgainst | None, face: Any,
                                                              direction: g.Direction, want: Any) -> None:
    policy = g.TerminalPolicy(face_match_results="accept")
    d = run(request=a_request(face=face, direction=direction), rights=_right(seen), policy=policy)
    assert (d.decision.value, [r.value for r in d.reasons]) == want
    row = d.face.as_json() if d.face is not None else None
    assert row is not None
    if "face_mismatch" in want[1]:
        assert seen is not None and row["against"] == {**seen.face, "decision_id": str(_EARLIER),
                                                       "decided_at": seen.at.isoformat()}
        assert g.face_against(row) and g.not_overridable(["face_mismatch"], face=row) == ["face_mismatch"]
    else:
        assert "against" not in row


def test_pure_gate_out_and_an_ended_right_are_not_judged_on_it() -> None:
    out = run(request=a_request(direction=g.Direction.OUT), rights=_right(_seen(), state="gated_in"))
    assert "face_mismatch" not in [r.value for r in out.reasons]
    used = run(request=a_request(), rights=_right(_seen(), state="gated_in"))
    assert [r.value for r in used.reasons] == ["already_used"]


def test_pure_a_decision_in_the_future_of_the_clock_still_counts() -> None:
    """The service's own clock wrote it; a clock stepped back must not lift it."""
    d = run(request=a_request(), rights=_right(_seen(ago=-30)))
    assert [r.value for r in d.reasons] == ["face_mismatch"]


def test_pure_only_the_service_s_own_judgement_is_the_fact_and_a_kept_one_counts_for_the_override() -> None:
    assert g.own_face_against(_OTHER) and not g.own_face_against(None)
    assert not g.own_face_against({"kind": "none", "against": _OTHER})  # a decision that kept one: not a new one
    assert g.face_against({"kind": "none", "against": _OTHER})
    assert g.face_against({"kind": "match_result", "matched": True, "score": 1.0, "against": _OTHER})
    assert not g.face_against({"kind": "none", "against": {**_OTHER, "matched": True, "distance": 0.3}})


def test_pure_a_decision_changes_its_right_s_facts_by_its_own_face_alone() -> None:
    """One rule for the three places that act on it (the gate's record, the loop's invalidation, the
    cached check's way to PostgreSQL): a decision on a right whose own face the service found another's."""
    on_right = {"release_id": "r-1", "container_number": "MSCU1234566"}
    assert g.face_changes_right({**on_right, "face": _OTHER}) == "MSCU1234566"
    assert g.face_changes_right({**on_right, "face": {"kind": "none", "against": _OTHER}}) is None  # kept, not new
    assert g.face_changes_right({**on_right, "face": _MATCHED_ROW}) is None
    assert g.face_changes_right({**on_right, "face": None}) is None
    assert g.face_changes_right({"release_id": None, "container_number": "MSCU1234566", "face": _OTHER}) is None


def test_the_cached_copy_keeps_the_fact_and_an_older_copy_is_a_miss() -> None:
    import json

    from release_service.adapters.gate_facts import _dump_rights, _rights

    seen = _seen()
    rights = [replace(a_right(), face_against=seen), a_right(id=uuid.uuid4())]
    assert list(_rights(_dump_rights(rights)) or ()) == rights
    older = [entry[:16] for entry in json.loads(_dump_rights(rights))]  # a server from before the fact
    assert _rights(json.dumps(older).encode()) is None


_MATCHED_ROW = {"kind": "image", "matched": True, "distance": 0.35, "tolerance": 0.5, "unavailable": None}


@pytest.mark.parametrize(("seen", "decided", "face", "refused"), [
    (_seen(), -120, None, True),  # the decision before the mismatch, no face
    (_seen(), -120, _MATCHED_ROW, True),  # the driver matched, then someone else: the later word stands
    (_seen(), -30, {"kind": "none"}, True),  # after it, no capture of the driver
    (_seen(), -30, {"kind": "match_result", "matched": True, "score": 1.0, "trusted": True}, True),  # a claim
    (_seen(), -30, {**_MATCHED_ROW, "distance": 0.6}, True),  # beyond the tolerance
    (_seen(), -30, _MATCHED_ROW, False),  # the driver's own capture after it: judged on its own
    (_seen(ago=g.OVERRIDE_WITHIN_SECONDS + 1), -120, None, False),  # long ago
    (_seen(key=[str(uuid.uuid4()), "1ABC123", "BE"]), -120, None, False),  # re-nominated since
    (None, -120, None, False),
], ids=["before", "matched before", "none after", "claim after", "beyond tolerance", "matched after", "long ago",
        "re-nominated", "none"])
def test_pure_an_override_is_judged_on_the_right_s_standing_mismatch(seen: FaceAgainst | None, decided: float,
                                                                     face: Any, refused: bool) -> None:
    (right,) = _right(seen)
    at = NOW + timedelta(seconds=decided)
    if not refused:
        g.require_overridable_right(right, [right], decided_at=at, face=face, now=NOW)
        return
    with pytest.raises(DomainError) as got:
        g.require_overridable_right(right, [right], decided_at=at, face=face, now=NOW)
    assert got.value.context["reasons"] == ["face_mismatch"]

"""An override at the desk against the service's own word on the face (review 142, finding 1), on real
PostgreSQL with real photos matched in identity's worker (tests/test_face_support.py).

The attack: a terminal insider with the gate client, or a stolen gate client, where the terminal's policy
requires a face and the driver's face is enrolled. Someone else's face, or a copy of the driver's earlier
capture (identity: ``face_replayed``), is denied ``face_mismatch``; one ``POST /gate/v1/overrides`` with
"looks like him" then let the truck in. A face the service compared with the driver's and found another
person's, or one it caught as an attack, is no longer the desk's to set aside (409, as for the other
refusals no desk sets aside); a face it could not judge still is. An override that sets aside identity
checks tells the line and holder what it set aside (``set_aside`` in ``release.gate_override``), and port
security's alarm (``release.gate_override_alarm`` on the audit trail) is raised."""
# ruff: noqa: F811 - ``face_pool`` is a fixture imported here and requested by name

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import audit_log, webhook_deliveries
from release_service.domain import gate as g
from tests.test_face_support import fresh, photo

from .test_gate_face import FaceGate, face_pool, serving  # noqa: F401
from .test_release_api import assert_problem

OVERRIDE = "release.gate_override"
ALARM = "release.gate_override_alarm"


@pytest.fixture
def gate(pg_engine: sa.Engine, tmp_path: Path, face_pool: Any) -> Iterator[FaceGate]:
    with serving(pg_engine, tmp_path, face_pool) as fg:
        fg.policy(face_required=True)
        r = fg.http.post("/api/v1/webhooks", headers=fg.as_("line"),
                         json={"url": "https://hooks.example.com/q", "event_types": [OVERRIDE]})
        assert r.status_code == 201, r.text
        yield fg


def _commit(gate: FaceGate, n: int, **over: Any) -> dict[str, Any]:
    r = gate.verify(gate.body(n, mode="commit", **over))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _override(gate: FaceGate, refused: dict[str, Any]) -> Any:
    return gate.http.post("/gate/v1/overrides", headers={"Authorization": f"Bearer {gate.gate_token}"},
                          json={"decision_id": refused["decision_id"], "reason": "looks like him"})


def _entries(gate: FaceGate, kind: str) -> list[dict[str, Any]]:
    with gate.engine.connect() as conn:
        return [dict(d) for d in conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == kind)
                                              .order_by(audit_log.c.id)).scalars()]


def _hooks(gate: FaceGate) -> list[dict[str, Any]]:
    with gate.engine.connect() as conn:
        return [dict(p) for p in conn.execute(sa.select(webhook_deliveries.c.payload)
                                              .where(webhook_deliveries.c.event_type == OVERRIDE)).scalars()]


def test_someone_else_s_face_is_not_the_desk_s_to_set_aside(gate: FaceGate) -> None:
    rid = gate.pickable(1)
    gate.enrol(gate.p.driver, "obama.jpg")
    refused = _commit(gate, 1, face={"image": _b64(photo("biden.jpg"))})
    assert (refused["decision"], refused["reasons"]) == ("deny", ["face_mismatch"]), refused
    got = _override(gate, refused)
    assert_problem(got, 409, "illegal_transition")  # before the mend: 201, gated_in
    assert "face_mismatch" in got.json()["detail"]
    assert gate.state(rid) == "nominated" and not _entries(gate, OVERRIDE) and not _hooks(gate)


def test_a_replayed_copy_of_the_driver_s_capture_is_not_the_desk_s_to_set_aside(gate: FaceGate) -> None:
    first, second = gate.pickable(2), gate.pickable(3)
    gate.enrol(gate.p.driver, "obama.jpg")
    capture = fresh("obama2.jpg")
    done = _commit(gate, 2, face={"image": _b64(capture)})  # the driver's own visit
    assert (done["decision"], done["committed"]) == ("allow", True) and gate.state(first) == "gated_in"
    copy = _commit(gate, 3, face={"image": _b64(capture)})  # the same bytes, for another container
    assert (copy["decision"], copy["reasons"]) == ("deny", ["face_mismatch"]), copy
    got = _override(gate, copy)
    assert_problem(got, 409, "illegal_transition")  # before the mend: 201, gated_in
    assert gate.state(second) == "nominated"


def test_a_face_the_service_could_not_judge_is_the_desk_s_and_port_security_hears(gate: FaceGate) -> None:
    """No badge and no face: nothing the service could judge, the desk checks the person. The override
    goes through; the line's webhook and the audit entry say what it set aside, and port security's
    alarm names the identity checks set aside."""
    rid = gate.pickable(4)
    refused = _commit(gate, 4, badge=None)
    codes = ["badge_unknown", "face_required", "screening_unavailable"]
    assert (refused["decision"], refused["reasons"]) == ("deny", codes), refused
    got = _override(gate, refused)
    assert got.status_code == 201, got.text
    assert gate.state(rid) == "gated_in"
    [audited] = _entries(gate, OVERRIDE)
    assert audited["set_aside"] == codes and audited["decision_id"] == refused["decision_id"]
    [hook] = _hooks(gate)
    assert hook["data"]["set_aside"] == codes  # before the mend: no set_aside
    [alarm] = _entries(gate, ALARM)  # before the mend: none
    assert (alarm["set_aside"], alarm["identity_checks"]) == (codes, ["badge_unknown", "face_required"])
    assert (alarm["decision_id"], alarm["release_id"], alarm["reason"]) == (
        refused["decision_id"], rid, "looks like him")


def test_an_override_of_a_plate_alone_raises_no_alarm(gate: FaceGate) -> None:
    rid = gate.pickable(5)
    gate.enrol(gate.p.driver, "obama.jpg")
    refused = _commit(gate, 5, face={"image": _b64(fresh("obama2.jpg"))},
                      plate={"text": "9ZZZ999", "country": "BE", "confidence": 0.99})
    assert (refused["decision"], refused["reasons"]) == ("deny", ["plate_mismatch"]), refused
    assert _override(gate, refused).status_code == 201 and gate.state(rid) == "gated_in"
    assert _hooks(gate)[0]["data"]["set_aside"] == ["plate_mismatch"] and not _entries(gate, ALARM)


# ---- the pure rule: one place, online, at the adapter's desk offline and at the reconcile ----------

_IMAGE_OTHER = {"kind": "image", "matched": False, "distance": 0.81, "tolerance": 0.5, "unavailable": None}
_IMAGE_REPLAYED = {"kind": "image", "matched": None, "distance": None, "tolerance": None,
                   "unavailable": g.FACE_REPLAYED}
_IMAGE_SPOOF = {**_IMAGE_REPLAYED, "unavailable": g.FACE_NOT_LIVE}
_IMAGE_UNJUDGED = {"kind": "image", "matched": None, "distance": None, "tolerance": None,
                   "unavailable": "face_unavailable"}
_CLAIMED_NO = {"kind": "match_result", "matched": False, "score": 0.2, "min_score": 0.8, "trusted": False}


@pytest.mark.parametrize(("face", "hard"), [
    (_IMAGE_OTHER, ["face_mismatch"]),
    (_IMAGE_REPLAYED, ["face_mismatch"]),
    (_IMAGE_SPOOF, ["face_mismatch"]),
    (_IMAGE_UNJUDGED, []),  # not a face_mismatch the service judged: the desk checks the person
    (_CLAIMED_NO, []),  # the terminal's own matcher said no: the terminal's desk may check
    ({"kind": "none"}, []),
    (None, []),
], ids=["another person", "replayed", "spoof", "unjudged", "claimed no", "no face", "not kept"])
def test_pure_face_mismatch_is_overridable_unless_the_service_judged_it(face: Any, hard: list[str]) -> None:
    assert g.not_overridable(["plate_mismatch", "face_mismatch"], face=face) == hard
    assert g.not_overridable(["face_required"], face=face) == []


def test_pure_identity_checks_set_aside() -> None:
    assert g.identity_set_aside(["container_unreadable", "badge_unknown", "plate_mismatch", "face_required",
                                 "face_mismatch", "screening_unavailable"]) == [
        "badge_unknown", "face_required", "face_mismatch"]
    assert g.identity_set_aside(["plate_mismatch", "terminal_hold"]) == []


def _b64(image: bytes) -> str:
    import base64

    return base64.b64encode(image).decode()

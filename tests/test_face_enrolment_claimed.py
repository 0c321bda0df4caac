"""The enrolment photo is no capture (review 165, finding 4), on SQLite and PostgreSQL (where the claims
live), with real photos of real people, at the gate (check and commit, with the gate's facts in the
database and in Redis) and at a step-up.

The badge office enrols a face from an ID photo or its own capture; a company may hold a scan of that
ID photo, and the office's capture sits on its PC. Before, the enrolment claimed nothing, so the exact
file sent to the gate matched at distance 0.0 (``FaceMatch(distance=0.0, matched=True)``): only its
second use came back ``face_replayed``. Now the enrolment claims its photo's keyed digest in the person's
claim space, as a matched capture is claimed (``enrol:<template_id>``), and that claim outlives a
replacement and a withdrawal; and a capture closer than ``COPY_DISTANCE`` to the enrolled face is a copy
of the enrolment's image (a re-encoded one too), ``face_replayed``. Another photo of the same person
still matches.
"""
# ruff: noqa: F811 - ``face_pool`` is test_gate_face's fixture, imported and requested by name

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from identity.domain import assurance
from identity.domain.face import COPY_DISTANCE
from identity.face import FaceError, FacePool, face_for
from identity.face.service import Enrolment
from identity.face.store import WITHDRAWN_USE
from identity.sessions import sessions_for
from quaygate.schema import face_captures
from tests.test_face_support import fresh, photo
from tests.test_gate_face import FaceGate, _decide, _now, face_pool, serving  # noqa: F401

IN_REDIS = "postgresql, facts in Redis"


@pytest.fixture(params=["sqlite", "postgresql", IN_REDIS])
def database_url(request: pytest.FixtureRequest) -> str:
    """conftest's two backends, and PostgreSQL once more with the gate's facts in Redis (``gate``): the
    gate's facts go to Redis only beside PostgreSQL, so no SQLite-with-Redis case is made to be skipped."""
    return str(request.getfixturevalue("sqlite_database_url" if request.param == "sqlite" else "pg_database_url"))


@pytest.fixture
def gate(request: pytest.FixtureRequest, engine: sa.Engine, tmp_path: Path, face_pool: FacePool
         ) -> Iterator[FaceGate]:
    """A face gate on SQLite or PostgreSQL; on PostgreSQL also with the gate's facts in Redis (the
    claims stay in the database: PostgreSQL is their truth, docs/face.md "Replayed captures")."""
    if request.node.callspec.params.get("database_url") == IN_REDIS:
        redis_url = request.getfixturevalue("redis_url")
        with serving(engine, tmp_path, face_pool, redis_url=redis_url, gate_decision_drain=False) as fg:
            assert fg.app.state.container.gate_facts is not None
            yield fg
    else:
        with serving(engine, tmp_path, face_pool) as fg:
            yield fg


def _run(fn: Any) -> Any:
    with ThreadPoolExecutor(1) as one:  # Playwright may leave a loop running in this thread
        return one.submit(anyio.run, fn).result()


def _enrol(gate: FaceGate, image: bytes, replace_reason: str | None = None, source: str = "id_photo") -> Enrolment:
    service = face_for(gate.app)

    async def go() -> Enrolment:
        return await service.enrol(gate.p.driver, image, source=source, actor="badge-office", now=_now(),
                                   replace_reason=replace_reason)

    enrolled: Enrolment = _run(go)
    return enrolled


def _step_up(gate: FaceGate, image: bytes) -> str:
    """A step-up of a new passkey session of the driver with ``image``: "stepped_up" or the refusal."""
    service = face_for(gate.app)
    _, session = sessions_for(gate.app).create(gate.p.driver, acr=assurance.ACR_PASSKEY, amr=assurance.AMR_PASSKEY,
                                               now=_now())

    async def go() -> Any:
        return await service.step_up(session=session, image=image, address="192.0.2.7", now=_now())

    try:
        _run(go)
    except FaceError as exc:
        return exc.code
    return "stepped_up"


def resaved(name: str, quality: int = 95) -> bytes:
    """The photo decoded and saved again as a JPEG at ``quality``: other bytes, almost the same pixels."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(photo(name))).convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _denied_as_replay(gate: FaceGate, got: dict[str, Any]) -> dict[str, Any]:
    """A gate answer that denied a copy: face_mismatch, nothing committed, the audit entry face_replayed."""
    assert (got["decision"], got["reasons"], got["committed"]) == ("deny", ["face_mismatch"], False), got
    kind, data = gate.face_audits()[-1]
    assert (kind, data["reason"], data["matched"]) == ("identity.face.verify.refused", "face_replayed", False)
    return data


@pytest.mark.parametrize("mode", ["check", "commit"])
def test_the_enrolment_photo_at_the_gate_is_a_replay(gate: FaceGate, mode: str) -> None:
    rid = gate.pickable(31)
    enrolled = _enrol(gate, photo("obama.jpg"))
    data = _denied_as_replay(gate, _decide(gate, gate.with_face(31, photo("obama.jpg"), mode=mode)))
    assert data["distance"] == 0.0 and data["replay_of"] == "enrolment"
    assert gate.state(rid) == "nominated"
    with gate.engine.connect() as conn:  # the enrolment's claim: its keyed digest, never the image
        [row] = conn.execute(sa.select(face_captures)).all()
    assert (row.person_id, row.used_for) == (gate.p.driver, f"enrol:{enrolled.template_id}")
    assert photo("obama.jpg") not in bytes(row.digest) and len(row.digest) == 32
    # Another photo of the same man is the driver: allowed (and committed).
    done = _decide(gate, gate.with_face(31, fresh("obama2.jpg"), mode=mode))
    assert (done["decision"], done["committed"]) == ("allow", mode == "commit"), done


@pytest.mark.parametrize("mode", ["check", "commit"])
def test_a_re_encoded_copy_of_the_enrolment_photo_at_the_gate_is_a_replay(gate: FaceGate, mode: str) -> None:
    rid = gate.pickable(32)
    _enrol(gate, photo("obama.jpg"))
    data = _denied_as_replay(gate, _decide(gate, gate.with_face(32, resaved("obama.jpg"), mode=mode)))
    assert 0 < data["distance"] < COPY_DISTANCE and data["replay_of"] == "enrolment"
    assert gate.state(rid) == "nominated"
    with gate.engine.connect() as conn:  # the copy claimed nothing: the enrolment's digest alone is there
        [use] = conn.execute(sa.select(face_captures.c.used_for)).scalars().all()
    assert use.startswith("enrol:")


def test_the_enrolment_photo_stays_claimed_after_a_replacement_and_a_withdrawal(gate: FaceGate) -> None:
    """The claim is the photo's, not the template's: replaced by a retake (obama2.jpg, 0.37 from it, so no
    longer a near copy of the face enrolled), the first photo is a replay by its digest, named as the
    enrolment it was; withdrawn and enrolled again, it still is (the withdrawal keeps the digests)."""
    gate.pickable(33)
    first = _enrol(gate, photo("obama.jpg"))
    retake = _enrol(gate, photo("obama2.jpg"))
    assert retake.replaced and retake.distance is not None and retake.distance > 0.3
    for mode in ("check", "commit"):
        data = _denied_as_replay(gate, _decide(gate, gate.with_face(33, photo("obama.jpg"), mode=mode)))
        assert data["replay_of"] == f"enrol:{first.template_id}" and 0.3 < data["distance"] < 0.45
    assert _step_up(gate, photo("obama.jpg")) == "face_replayed"

    face_for(gate.app).withdraw(gate.p.driver, actor="badge-office", now=_now())
    _enrol(gate, fresh("obama2.jpg"), replace_reason="withdrawn by mistake, enrolled again at the desk")
    data = _denied_as_replay(gate, _decide(gate, gate.with_face(33, photo("obama.jpg"), mode="commit")))
    assert data["replay_of"] == WITHDRAWN_USE
    assert _step_up(gate, photo("obama.jpg")) == "face_replayed"


def test_the_enrolment_photo_or_a_copy_of_it_at_a_step_up_is_a_replay(gate: FaceGate) -> None:
    _enrol(gate, photo("obama.jpg"))
    assert _step_up(gate, photo("obama.jpg")) == "face_replayed"
    assert _step_up(gate, resaved("obama.jpg", quality=75)) == "face_replayed"
    replays = [d for k, d in gate.face_audits() if k == "identity.face.verify.refused"]
    assert [(d["purpose"], d["reason"], d["replay_of"]) for d in replays] == [
        ("step_up", "face_replayed", "enrolment")] * 2
    assert replays[0]["distance"] == 0.0 and 0 < replays[1]["distance"] < COPY_DISTANCE
    assert _step_up(gate, fresh("obama2.jpg")) == "stepped_up"  # another photo of the same man


def test_a_capture_near_a_live_capture_enrolment_matches_and_its_exact_bytes_do_not(gate: FaceGate) -> None:
    """The near-copy rule is the ID photo's alone: two frames of one man from one camera, in the same light
    and pose a minute apart, may measure under COPY_DISTANCE, so a capture that close to a face the badge
    office enrolled from its own live capture is the driver (a JPEG of the enrolment photo saved again stands
    in for such a frame: other bytes, almost the same pixels). Before, it was face_replayed, at a step-up a
    guess counted towards the lockout. The enrolment's exact bytes stay claimed by their digest."""
    rid = gate.pickable(34)
    enrolled = _enrol(gate, photo("obama.jpg"), source="live_capture")
    assert _step_up(gate, resaved("obama.jpg", quality=75)) == "stepped_up"
    done = _decide(gate, gate.with_face(34, resaved("obama.jpg"), mode="commit"))
    assert (done["decision"], done["committed"]) == ("allow", True), done
    assert gate.state(rid) != "nominated"
    matched = [d for k, d in gate.face_audits() if k == "identity.face.verify.matched"]
    assert [d["purpose"] for d in matched] == ["step_up", "gate"]
    assert all(0 < d["distance"] < COPY_DISTANCE for d in matched), matched
    # The exact file the badge office enrolled is still a replay, by its digest.
    assert _step_up(gate, photo("obama.jpg")) == "face_replayed"
    replay = [d for k, d in gate.face_audits() if k == "identity.face.verify.refused"][-1]
    assert replay["replay_of"] == f"enrol:{enrolled.template_id}" and replay["distance"] == 0.0


def test_the_enrolment_photo_is_claimed_in_the_person_s_claim_space(gate: FaceGate) -> None:
    """The digest is the one a gate's claim of the same bytes makes (the person's, under the digest key),
    and an enrolment refused claims nothing."""
    from identity.face.service import FaceService

    service = face_for(gate.app)
    with pytest.raises(FaceError):
        _enrol(gate, photo("chelsea.png"))  # a cat: refused
    with gate.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(face_captures)).scalar_one() == 0
    enrolled = _enrol(gate, photo("obama.jpg"))
    digest = FaceService._digest(service._digest_keys[0], gate.p.driver, photo("obama.jpg"))  # noqa: SLF001
    with gate.engine.connect() as conn:
        rows = conn.execute(sa.select(face_captures.c.digest, face_captures.c.used_for)).all()
    assert [(bytes(r.digest), r.used_for) for r in rows] == [(digest, f"enrol:{enrolled.template_id}")]

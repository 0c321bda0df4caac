"""A face replaced step by step is judged against its anchor, not only the face just before it (review 154,
finding 1), on SQLite and PostgreSQL, with real photos and blends of them.

A replacement used to be compared with the enrolled face only: each step within the default tolerance (0.5)
counted as the same face, so a badge officer replaced Obama's face with a 50 % blend of Obama and Biden
(0.40 from Obama), then an 80 % blend (0.46 from the first, 0.70 from Obama), then Biden himself (0.37 from
the second), with no ``replace_reason`` and no ``replaced_other_face`` warning; a capture of Biden then passed
the gate as Obama. Now the anchor is the face of the last enrolment judged on its own (the first one, or the
last one made as another face, with a reason): a new face further than the tolerance from it needs the
reason and is warned of, however close it is to the face enrolled now.

The blends are made as the reviewer made them: both photos aligned on dlib's 5 landmarks (the engine's own
chip, 400 px with padding), mixed pixel by pixel.
"""
# ruff: noqa: F811 - ``env`` and ``shared_pool`` are test_face_api's fixtures, imported and requested by name

from __future__ import annotations

import functools
import io
import logging
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from identity.face import face_for
from quaygate.schema import audit_log, face_templates
from tests.test_face_api import _office, _problem, b64, env, shared_pool  # noqa: F401
from tests.test_face_support import fresh, photo
from tests.test_identity_grants_support import Lifecycle

WARNED = "identity.face.enrolment.replaced_other_face"


@functools.cache
def _chip(name: str) -> Any:
    """The photo's face aligned on its 5 landmarks (what the engine encodes, larger), as float pixels."""
    import dlib
    import numpy as np
    from PIL import Image

    from identity.face import engine

    fr = engine._face_recognition()
    pixels = np.asarray(Image.open(io.BytesIO(photo(name))).convert("RGB"))
    [(top, right, bottom, left)] = fr.face_locations(pixels, number_of_times_to_upsample=0, model="hog")
    landmarks = fr.api.pose_predictor_5_point(pixels, dlib.rectangle(left, top, right, bottom))
    return np.asarray(dlib.get_face_chip(pixels, landmarks, size=400, padding=0.6), dtype=np.float64)


def blend(weight: float) -> bytes:
    """Obama's face with ``weight`` of Biden's mixed in, as a JPEG."""
    import numpy as np
    from PIL import Image

    mixed = (1 - weight) * _chip("obama.jpg") + weight * _chip("biden.jpg")
    out = io.BytesIO()
    Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=95)
    return out.getvalue()


def _enrol(env: Lifecycle, person: uuid.UUID, image: bytes, **kw: Any) -> Any:
    return env.http.post(f"/admin/v1/persons/{person}/face", json={"image": b64(image), **kw}, headers=_office(env))


def _last(env: Lifecycle, kind: str) -> dict[str, Any]:
    with env.engine.connect() as conn:
        data: dict[str, Any] = conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == kind)
                                            .order_by(audit_log.c.id.desc()).limit(1)).scalar_one()
    return data


def _warned(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.getMessage() == WARNED for r in caplog.records)


def _gate(env: Lifecycle, person: uuid.UUID, name: str) -> Any:
    return face_for(env.app).verify_face_blocking(person, fresh(name), context={"terminal": "BEANR-K1700"})


def _row(env: Lifecycle, person: uuid.UUID) -> Any:
    with env.engine.connect() as conn:
        return conn.execute(sa.select(face_templates).where(face_templates.c.person_id == person)).first()


def test_the_reviewers_chain_needs_a_reason_where_it_leaves_the_anchor(
    env: Lifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    driver = env.person()
    first = _enrol(env, driver, photo("obama.jpg"))
    assert first.status_code == 201, first.text
    anchor = first.json()["template_id"]

    half = _enrol(env, driver, blend(0.5))  # 0.40 from Obama: his face still, as far as a match can tell
    assert half.status_code == 201, half.text
    assert half.json()["distance"] < 0.5
    entry = _last(env, "identity.face.enrolled")
    assert (entry["differs"], entry["anchor_template_id"]) == (False, anchor)
    assert entry["anchor_distance"] == half.json()["distance"]  # the face replaced was the anchor
    row = _row(env, driver)
    assert str(row.anchor_template_id) == anchor and row.anchor_sealed
    assert _warned(caplog) == 0

    # 0.46 from the face enrolled now, 0.70 from the anchor: another face, whatever the last step was.
    body = _problem(_enrol(env, driver, blend(0.8)), 409, "face_differs")
    assert "replace_reason" in body["detail"]
    refused = _last(env, "identity.face.enrol.refused")
    assert refused["distance"] < 0.5 and refused["anchor_distance"] > 0.5
    assert (refused["differs"], refused["anchor_template_id"]) == (True, anchor)
    assert _gate(env, driver, "biden.jpg").reason == "face_mismatch"  # nothing was enrolled

    done = _enrol(env, driver, blend(0.8), replace_reason="the officer says so")
    assert done.status_code == 201, done.text
    entry = _last(env, "identity.face.enrolled")
    assert (entry["differs"], entry["anchor_template_id"], entry["replace_reason"]) == (
        True, anchor, "the officer says so")
    assert _warned(caplog) == 1
    row = _row(env, driver)
    assert (row.anchor_template_id, row.anchor_sealed) == (None, None)  # the new face is its own anchor

    # After a reasoned replacement the new face is the anchor: Biden (0.37 from it) needs no reason, and
    # Obama (0.70 from it) needs one.
    _problem(_enrol(env, driver, photo("obama.jpg")), 409, "face_differs")
    last = _enrol(env, driver, photo("biden.jpg"))
    assert last.status_code == 201, last.text
    entry = _last(env, "identity.face.enrolled")
    assert (entry["differs"], entry["anchor_template_id"]) == (False, done.json()["template_id"])
    assert _warned(caplog) == 1


def test_a_retake_of_the_same_person_needs_no_reason(env: Lifecycle, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    driver = env.person()
    first = _enrol(env, driver, photo("obama.jpg"))
    assert first.status_code == 201, first.text
    for image in (photo("obama2.jpg"), blend(0.3), photo("obama.jpg"), photo("obama2.jpg")):
        again = _enrol(env, driver, image)
        assert again.status_code == 201, again.text
        entry = _last(env, "identity.face.enrolled")
        assert (entry["differs"], entry["anchor_template_id"]) == (False, first.json()["template_id"])
        assert entry["anchor_distance"] < 0.5
    assert _warned(caplog) == 0
    assert _gate(env, driver, "obama.jpg").matched


def test_the_chain_back_is_judged_against_the_anchor_and_a_withdrawal_erases_it(env: Lifecycle) -> None:
    """The chain backwards (the reviewer's cover-up) starts from a reasoned replacement, so it is judged
    against that face; the anchor goes with the template when the badge office withdraws it."""
    driver = env.person()
    assert _enrol(env, driver, photo("biden.jpg")).status_code == 201
    assert _enrol(env, driver, blend(0.8)).status_code == 201  # 0.37 from Biden
    _problem(_enrol(env, driver, blend(0.5)), 409, "face_differs")  # 0.46 from the blend, 0.68 from Biden
    assert _row(env, driver).anchor_sealed is not None

    gone = env.http.delete(f"/admin/v1/persons/{driver}/face", headers=_office(env))
    assert gone.status_code == 200, gone.text
    assert _row(env, driver) is None
    assert _enrol(env, driver, photo("obama.jpg"), replace_reason="re-enrolled at the desk").status_code == 201
    row = _row(env, driver)
    assert (row.anchor_template_id, row.anchor_sealed) == (None, None)

"""A face withdrawn by the badge office and then enrolled again is a replacement that cannot be compared
(review 148, finding 2), on SQLite and PostgreSQL, with real photos.

Replacing a driver's face with another is refused 409 ``face_differs`` unless the officer says why, and
with a reason port security is warned (review 131, finding 3). Withdrawing the face first (DELETE) and
enrolling the other one then (POST) left no template to compare with, so nothing was refused, the trail
said ``replaced: false`` and nobody was warned: the accomplice's face then passed the gate as the driver.
Now, when the person's latest enrolment entry is a withdrawal by a person, the new enrolment replaces the
withdrawn template, which is gone (erased: nothing keeps it to compare with), so it counts as another
face: ``replace_reason`` is required, the entry names the withdrawn template with no distance, and the log
warns. A withdrawal by the retention sweep (a person who left the port, back at work) needs no reason.
"""
# ruff: noqa: F811 - ``env`` and ``shared_pool`` are test_face_api's fixtures, imported and requested by name

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from identity.face import face_for
from identity.face.retention import ACTOR as RETENTION
from identity.face.retention import sweep
from quaygate.schema import audit_log, face_templates
from tests.test_face_api import _enrol, _office, _problem, env, shared_pool  # noqa: F401
from tests.test_face_support import fresh, mirrored
from tests.test_identity_grants_support import Lifecycle

WARNED = "identity.face.enrolment.replaced_other_face"


def _entries(env: Lifecycle, kind: str) -> list[tuple[Any, dict[str, Any]]]:
    with env.engine.connect() as conn:
        return [(r.actor, r.data) for r in conn.execute(
            sa.select(audit_log.c.actor, audit_log.c.data).where(audit_log.c.kind == kind).order_by(audit_log.c.id))]


def _warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.levelname for r in caplog.records if r.getMessage() == WARNED]


def _withdraw(env: Lifecycle, person: uuid.UUID) -> None:
    gone = env.http.delete(f"/admin/v1/persons/{person}/face", headers=_office(env))
    assert gone.status_code == 200, gone.text


def _gate(env: Lifecycle, person: uuid.UUID, name: str | bytes) -> Any:
    image = fresh(name) if isinstance(name, str) else name
    return face_for(env.app).verify_face_blocking(person, image, context={"terminal": "BEANR-K1700"})


@pytest.mark.parametrize("name", ["biden.jpg", "obama2.jpg"], ids=["another face", "the same face"])
def test_a_face_enrolled_after_the_badge_office_withdrew_one_needs_a_reason(
    env: Lifecycle, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.set_level(logging.INFO)
    driver = env.person()
    first = _enrol(env, driver)
    assert first.status_code == 201, first.text
    withdrawn = first.json()["template_id"]
    _problem(_enrol(env, driver, "biden.jpg"), 409, "face_differs")  # the direct way: refused

    _withdraw(env, driver)
    body = _problem(_enrol(env, driver, name), 409, "face_differs")
    assert "withdrawn" in body["detail"] and "replace_reason" in body["detail"]
    assert env.http.get(f"/admin/v1/persons/{driver}/face", headers=_office(env)).json()["enrolled"] is False
    refused = [d for _, d in _entries(env, "identity.face.enrol.refused")][-1]
    assert (refused["code"], refused["replaced_template_id"], refused["distance"], refused["differs"],
            refused["after_withdrawal"]) == ("face_differs", withdrawn, None, True, True)
    assert _entries(env, "identity.face.enrolled")[-1][1]["template_id"] == withdrawn  # nothing enrolled
    assert _gate(env, driver, name).reason == "face_not_enrolled"
    assert _warned(caplog) == []

    done = _enrol(env, driver, name, replace_reason="  the driver asked; re-enrolled   at the desk ")
    assert done.status_code == 201, done.text
    assert (done.json()["replaced"], done.json()["distance"]) == (False, None)
    _, entry = _entries(env, "identity.face.enrolled")[-1]
    assert (entry["template_id"], entry["generation"], entry["replaced"]) == (done.json()["template_id"], 3, False)
    assert (entry["replaced_template_id"], entry["distance"], entry["differs"], entry["after_withdrawal"],
            entry["replace_reason"]) == (withdrawn, None, True, True, "the driver asked; re-enrolled at the desk")
    assert _warned(caplog) == ["WARNING"]
    # What was enrolled, with a reason, opens: another capture of that face matches (the photo enrolled,
    # or a copy of it, is no capture: face_replayed, review 165, finding 4).
    assert _gate(env, driver, name).reason == "face_replayed"
    assert _gate(env, driver, mirrored(name)).matched


def test_a_face_enrolled_after_the_retention_sweep_withdrew_one_needs_none(
    env: Lifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    """A person back at work after leaving the port: expected, and no officer makes the sweep withdraw a
    face quickly (30 days with no badge and no membership). The badge office's withdrawal after that
    enrolment decides again: the next enrolment needs a reason."""
    caplog.set_level(logging.INFO)
    driver = env.person()  # no badge, no membership: he has left
    assert _enrol(env, driver).status_code == 201
    now = datetime.now(UTC)
    with env.engine.begin() as conn:
        conn.execute(face_templates.update().where(face_templates.c.person_id == driver)
                     .values(leaving_since=now - timedelta(days=40)))
    assert sweep(env.engine, env.container.cipher, now=now, after=timedelta(days=30)) == 1
    [(actor, _)] = _entries(env, "identity.face.withdrawn")
    assert actor == RETENTION

    back = _enrol(env, driver, "biden.jpg")
    assert back.status_code == 201, back.text
    assert (back.json()["replaced"], back.json()["distance"]) == (False, None)
    _, entry = _entries(env, "identity.face.enrolled")[-1]
    assert "differs" not in entry and "replaced_template_id" not in entry
    assert _warned(caplog) == []

    _withdraw(env, driver)
    _problem(_enrol(env, driver, "obama.jpg"), 409, "face_differs")

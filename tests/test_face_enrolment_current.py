"""Only the current face enrolment opens (review 92), on SQLite and PostgreSQL, with real photos.

An insider with write access to the database (``as_insider``: past the audit tables' triggers) writes a
face template row behind the service: an older enrolment of the driver restored into its row (the one the
badge office replaced because it was an impostor's face), a row written with no enrolment entry, a row put
back after a withdrawal, and the same with forged or copied audit entries beside it. None of them opens:
the gate answers review (``face_required``: the match is ``face_unavailable``), never allow; the service
logs ``identity.face.template.not_current`` at error level and audits it; the console's view says the
stored template is not current. The current enrolment still opens, and an enrolment from before the
entries were tagged is accepted once and upgraded. Then the pure rules (identity.domain.face_enrolment).
"""
# ruff: noqa: F811 - ``gate`` is test_gate_face's fixture, imported here and requested by name

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from identity.domain import face_enrolment as rules
from identity.domain.face_enrolment import EnrolmentEntry, current_enrolment, not_current_reason
from identity.face import face_for
from identity.face.sealing import seal_template
from quaygate.schema import FACE_ENROLMENT_KINDS_SQL, audit_log, face_templates
from tests.test_face_support import fresh

from .test_audit_trail import as_insider
from .test_gate_face import FaceGate, face_pool, gate  # noqa: F401

TAMPER = "identity.face.template.not_current"


def _decide(gate: FaceGate, image: bytes) -> dict[str, Any]:
    r = gate.verify(gate.with_face(1, image))  # check mode: nothing is used up
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _row(gate: FaceGate, person: uuid.UUID) -> dict[str, Any]:
    with gate.engine.connect() as conn:
        return dict(conn.execute(sa.select(face_templates).where(face_templates.c.person_id == person)).one()._mapping)


def _write_row(gate: FaceGate, row: dict[str, Any]) -> None:
    """The insider puts ``row`` into face_templates as it was, past the service."""
    with as_insider(gate.engine) as conn:
        conn.execute(face_templates.delete().where(face_templates.c.person_id == row["person_id"]))
        conn.execute(face_templates.insert().values(**row))


def _insert_entry(gate: FaceGate, person: uuid.UUID, kind: str, data: dict[str, Any]) -> None:
    with as_insider(gate.engine) as conn:
        conn.execute(audit_log.insert().values(kind=kind, actor={"client_id": "badge-office"}, subject=str(person),
                                               data=data, at=datetime.now(UTC)))


def _entries(gate: FaceGate, kind: str) -> list[dict[str, Any]]:
    with gate.engine.connect() as conn:
        return [r.data for r in conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == kind)
                                             .order_by(audit_log.c.id))]


def _not_allowed(got: dict[str, Any]) -> None:
    assert (got["decision"], got["reasons"]) == ("review", ["face_required"]), got


def _console_view(gate: FaceGate, person: uuid.UUID) -> Any:
    found = face_for(gate.app).enrolled(person)
    assert found is not None
    return found.current


def test_an_older_enrolment_restored_into_its_row_does_not_open_and_the_current_one_does(
    gate: FaceGate, caplog: pytest.LogCaptureFixture
) -> None:
    gate.pickable(1)
    driver = gate.p.driver
    gate.enrol(driver, "biden.jpg")  # the impostor's face, enrolled under the driver's name
    impostor = _row(gate, driver)
    # the badge office replaced it with the driver's own, saying why (review 131, finding 3)
    gate.enrol(driver, "obama.jpg", "the enrolled face was an impostor's")
    assert (_decide(gate, fresh("obama2.jpg"))["decision"]) == "allow"
    assert _decide(gate, fresh("biden.jpg"))["reasons"] == ["face_mismatch"]

    _write_row(gate, impostor)  # the insider writes the older row back, whole
    caplog.set_level(logging.INFO)
    # Not opened: no comparison (face_required); and the service's own mismatch a moment ago sticks to the
    # right under this nomination (458aa7b, review 148): a deny, which no desk sets aside.
    got = _decide(gate, fresh("biden.jpg"))
    assert (got["decision"], sorted(got["reasons"])) == ("deny", ["face_mismatch", "face_required"]), got
    assert [r.levelname for r in caplog.records if r.getMessage() == TAMPER] == ["ERROR"]
    (tamper,) = _entries(gate, TAMPER)
    assert (tamper["reason"], tamper["template_id"]) == ("superseded", str(impostor["template_id"]))
    assert tamper["current_template_id"] == str(_entries(gate, rules.ENROLLED)[-1]["template_id"])
    assert _console_view(gate, driver) is False
    # The driver's own step-up on it: no match either (face_unavailable, no comparison).
    stepped = face_for(gate.app).verify_face_blocking(driver, fresh("biden.jpg"), purpose="step_up", own_face=True)
    assert (stepped.matched, stepped.reason, stepped.distance) == (False, "face_unavailable", None)

    # The badge office enrols again: the new enrolment is current. The stored row is not the current
    # one, so nothing says whose face it was: the replacement needs a reason (review 131, finding 3).
    gate.enrol(driver, "obama.jpg", "the stored face was not the current enrolment")
    assert _decide(gate, fresh("obama2.jpg"))["decision"] == "allow"
    assert _console_view(gate, driver) is True


def test_copied_and_forged_entries_do_not_make_an_older_row_current(gate: FaceGate) -> None:
    gate.pickable(1)
    driver = gate.p.driver
    gate.enrol(driver, "biden.jpg")
    impostor = _row(gate, driver)
    old_entry = _entries(gate, rules.ENROLLED)[-1]
    gate.enrol(driver, "obama.jpg", "the enrolled face was an impostor's")
    _write_row(gate, impostor)
    # The insider copies the impostor's own (genuine) entry after the current one, adds one with a
    # higher generation and a made-up tag, and one without a tag, as the trail's older entries were.
    _insert_entry(gate, driver, rules.ENROLLED, old_entry)
    _insert_entry(gate, driver, rules.ENROLLED, {**old_entry, "generation": 99, "tag": "A" * 43})
    _insert_entry(gate, driver, rules.ENROLLED, {"template_id": str(impostor["template_id"])})
    _not_allowed(_decide(gate, fresh("biden.jpg")))
    (tamper,) = _entries(gate, TAMPER)
    assert (tamper["reason"], tamper["forged_entries"]) == ("superseded", 1)


def test_a_row_written_with_no_entry_does_not_open(gate: FaceGate) -> None:
    gate.pickable(1)
    driver = gate.p.driver
    # Sealed as the service seals (the strongest case: a row that opens), written with no entry.
    encoding = gate.app.state.face_pool.analyse_blocking(fresh("biden.jpg")).encoding
    template_id = uuid.uuid4()
    sealed = seal_template(gate.app.state.container.cipher, driver, template_id, encoding)
    _write_row(gate, {"person_id": driver, "template_id": template_id, "sealed": sealed,
                      "key_id": gate.app.state.container.cipher.key_id, "source": "id_photo", "face_px": 150,
                      "sharpness": 500.0, "enrolled_by": "badge-office", "enrolled_at": datetime.now(UTC)})
    _not_allowed(_decide(gate, fresh("biden.jpg")))
    assert [e["reason"] for e in _entries(gate, TAMPER)] == ["no_entry"]
    assert _console_view(gate, driver) is False


def test_a_row_put_back_after_a_withdrawal_does_not_open(gate: FaceGate) -> None:
    gate.pickable(1)
    driver = gate.p.driver
    gate.enrol(driver, "obama.jpg")
    kept = _row(gate, driver)
    face_for(gate.app).withdraw(driver, actor="badge-office", now=datetime.now(UTC))
    (withdrawn,) = _entries(gate, rules.WITHDRAWN)
    assert (withdrawn["template_id"], withdrawn["generation"]) == (str(kept["template_id"]), 2)
    _write_row(gate, kept)
    _not_allowed(_decide(gate, fresh("obama2.jpg")))
    assert [e["reason"] for e in _entries(gate, TAMPER)] == ["withdrawn"]
    assert _console_view(gate, driver) is False


def test_an_enrolment_from_before_the_tags_is_accepted_once_and_upgraded(gate: FaceGate) -> None:
    """A row with the untagged entry the service wrote before this rule: it opens, and is tagged at its
    first use; an untagged entry inserted afterwards then counts for nothing."""
    gate.pickable(1)
    driver = gate.p.driver
    gate.enrol(driver, "biden.jpg")
    impostor = _row(gate, driver)
    gate.enrol(driver, "obama.jpg", "the enrolled face was an impostor's")
    current = _row(gate, driver)
    with as_insider(gate.engine) as conn:  # the trail as the service wrote it before: no generation, no tag
        conn.execute(audit_log.delete().where(audit_log.c.kind.in_(rules.KINDS)))
    _insert_entry(gate, driver, rules.ENROLLED, {"template_id": str(impostor["template_id"])})
    _insert_entry(gate, driver, rules.ENROLLED, {"template_id": str(current["template_id"])})
    assert _decide(gate, fresh("obama2.jpg"))["decision"] == "allow"
    (upgraded,) = _entries(gate, rules.UPGRADED)
    assert (upgraded["template_id"], upgraded["generation"]) == (str(current["template_id"]), 1)
    assert _decide(gate, fresh("obama2.jpg"))["decision"] == "allow"  # upgraded once only
    assert len(_entries(gate, rules.UPGRADED)) == 1

    _write_row(gate, impostor)
    _insert_entry(gate, driver, rules.ENROLLED, {"template_id": str(impostor["template_id"])})
    _not_allowed(_decide(gate, fresh("biden.jpg")))
    assert [e["reason"] for e in _entries(gate, TAMPER)] == ["superseded"]


# ---- the pure rules -----------------------------------------------------------------------------


def _e(row_id: int, kind: str, template: str | None, generation: int | None, ok: bool | None) -> EnrolmentEntry:
    return EnrolmentEntry(row_id, kind, template, generation, ok)


def test_the_highest_verified_generation_decides_whatever_the_row_order() -> None:
    entries = [_e(1, rules.ENROLLED, "a", 1, True), _e(2, rules.ENROLLED, "b", 2, True),
               _e(3, rules.ENROLLED, "a", 1, True),  # a copy of the first, later on the trail
               _e(4, rules.ENROLLED, "a", 7, False),  # a tag that does not verify
               _e(5, rules.ENROLLED, "a", None, None),  # untagged: ignored beside tagged ones
               _e(6, "identity.face.verify.matched", "a", 9, True)]  # not an enrolment entry
    got = current_enrolment(entries)
    assert (got.template_id, got.generation, got.next_generation, got.legacy, got.forged) == ("b", 2, 3, False, 1)
    assert got.row_id == next(e.row_id for e in entries if e.template_id == "b")  # the entry that decides
    assert not_current_reason(got, "b") is None and not_current_reason(got, "a") == "superseded"


def test_a_withdrawal_names_no_template_and_nothing_is_no_entry() -> None:
    withdrawn = current_enrolment([_e(1, rules.ENROLLED, "a", 1, True), _e(2, rules.WITHDRAWN, None, 2, True)])
    assert (withdrawn.template_id, withdrawn.next_generation, withdrawn.row_id) == (None, 3, 2)
    assert not_current_reason(withdrawn, "a") == "withdrawn"
    nothing = current_enrolment([_e(1, rules.ENROLLED, "a", 0, True)])  # generation 0 is never written
    assert (nothing.template_id, nothing.forged, not_current_reason(nothing, "a")) == (None, 1, "no_entry")


def test_untagged_entries_decide_only_while_no_tagged_one_exists() -> None:
    legacy = current_enrolment([_e(1, rules.ENROLLED, "a", None, None), _e(2, rules.ENROLLED, "b", None, None)])
    assert (legacy.template_id, legacy.legacy, legacy.next_generation) == ("b", True, 1)
    gone = current_enrolment([_e(1, rules.ENROLLED, "a", None, None), _e(2, rules.WITHDRAWN, None, None, None)])
    assert (gone.template_id, gone.legacy, not_current_reason(gone, "a")) == (None, False, "withdrawn")
    assert gone.row_id == 2  # the latest untagged entry decides
    upgraded = current_enrolment([_e(1, rules.ENROLLED, "a", None, None), _e(2, rules.UPGRADED, "a", 1, True),
                                  _e(3, rules.ENROLLED, "b", None, None)])
    assert (upgraded.template_id, upgraded.legacy) == ("a", False)


def test_the_index_predicate_names_the_enrolment_kinds() -> None:
    assert set(re.findall(r"'([^']+)'", FACE_ENROLMENT_KINDS_SQL)) == set(rules.KINDS)


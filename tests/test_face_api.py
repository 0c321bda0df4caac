"""Face enrolment (badge office), the face step-up of a login session and the gate's 1:1 call, on the
full app with real photos, on SQLite and PostgreSQL. The database is scanned: no image, no clear
template."""

from __future__ import annotations

import base64
import io
import json
import logging
import struct
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from PIL import Image

from identity.domain import assurance
from identity.face import FaceError, FacePool, FaceService, face_for
from identity.face.engine import analyse
from identity.face.liveness import Liveness
from identity.face.store import CaptureStore
from identity.ratelimit import login_guard_for
from identity.sessions import sessions_for
from quaygate.schema import audit_log, face_captures, face_templates, login_sessions, metadata
from tests.aio import chunks_of, post_counting_body, run_async
from tests.test_admin_console import _auth, _console, _officer, _token
from tests.test_face_image_cost import png
from tests.test_face_support import blurred, fresh, photo, side_by_side
from tests.test_identity_code_flow_support import Flow
from tests.test_identity_grants_support import Lifecycle, make_lifecycle
from tests.test_identity_support import ISSUER

ORIGIN = ISSUER  # the issuer's origin is one of ours (CSRF guard of the step-up)


@pytest.fixture(scope="module")
def shared_pool() -> Iterator[FacePool]:
    """One warm worker for the module: an app's own pool would spawn and load the models per test."""
    pool = FacePool(1, queue_per_worker=8)
    assert all(f.result(timeout=120) for f in pool.warm_up())
    yield pool
    pool.close()


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path, shared_pool: FacePool) -> Iterator[Lifecycle]:
    for lc in make_lifecycle(engine, tmp_path):
        own = lc.app.state.face_pool
        lc.app.state.face_pool = shared_pool
        try:
            yield lc
        finally:
            lc.app.state.face_pool = own  # the lifespan closes its own pool, not the shared one


def b64(image: bytes) -> str:
    return base64.b64encode(image).decode()


def _problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["code"] == code
    return body


def _office(env: Lifecycle) -> dict[str, str]:
    client_id, secret, _ = env.machine("admin")
    return {"Authorization": f"Bearer {env.machine_token(client_id, secret)}"}


def _enrol(env: Lifecycle, person: uuid.UUID, name: str = "obama.jpg", **kw: Any) -> Any:
    return env.http.post(f"/admin/v1/persons/{person}/face", json={"image": b64(photo(name)), **kw},
                         headers=_office(env))


def _kinds(env: Lifecycle) -> list[tuple[str, dict[str, Any]]]:
    with env.engine.connect() as conn:
        return [(r.kind, r.data) for r in conn.execute(sa.select(audit_log).order_by(audit_log.c.id))]


# ---- enrolment ----------------------------------------------------------------------------------


def test_enrolment_routes_refuse_everyone_but_the_badge_office(env: Lifecycle) -> None:
    person = env.person()
    path = f"/admin/v1/persons/{person}/face"
    body = {"image": b64(b"x")}
    _problem(env.http.post(path, json=body), 401, "invalid_request")
    _problem(env.http.post(path, json=body, headers={"Authorization": "Bearer a.b.c"}), 401, "invalid_token")
    line, secret, _ = env.machine("shipping_line")
    _problem(env.http.post(path, json=body, headers={"Authorization": f"Bearer {env.machine_token(line, secret)}"}),
             403, "insufficient_scope")
    admin, admin_secret, _ = env.machine("admin")
    port_security = {"Authorization": f"Bearer {env.machine_token(admin, admin_secret, scope='admin')}"}
    _problem(env.http.post(path, json=body, headers=port_security), 403, "badge_office_required")
    _problem(env.http.delete(path, headers=port_security), 403, "badge_office_required")
    _problem(env.http.delete(path), 401, "invalid_request")
    _problem(env.http.get(path), 401, "invalid_request")
    assert env.http.get(path, headers=port_security).json() == {"person_id": str(person), "enrolled": False}


def test_badge_office_enrols_and_no_image_nor_clear_template_is_stored(
    env: Lifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    person = env.person()
    image = photo("obama.jpg")
    r = _enrol(env, person, source="id_photo")
    assert r.status_code == 201, r.text
    out = r.json()
    assert (out["person_id"], out["source"], out["replaced"], out["face_px"]) == (str(person), "id_photo", False, 150)
    meta = env.http.get(f"/admin/v1/persons/{person}/face", headers=_office(env)).json()
    assert meta["enrolled"] and meta["template_id"] == out["template_id"] and "sealed" not in meta
    # re-enrolment from a live capture replaces the template
    again = env.http.post(f"/admin/v1/persons/{person}/face", headers=_office(env),
                          json={"image": "data:image/png;base64," + b64(photo("32bit.png")), "source": "live_capture"})
    assert again.status_code == 201 and again.json()["replaced"] is True
    assert again.json()["template_id"] != out["template_id"]

    # What would betray the photo or the template: image bytes (raw or base64), the 128 numbers
    # packed (float64, float32) or written out as text.
    template = analyse(photo("32bit.png"), face_for(env.app)._pool.rules).encoding
    assert template is not None
    needles_bytes = [image[100:164], photo("32bit.png")[100:164], struct.pack("<128d", *template)[:64],
                     struct.pack("<128f", *template)[:64]]
    needles_text = [b64(image)[200:264], b64(photo("32bit.png"))[200:264],
                    base64.b64encode(struct.pack("<128d", *template)).decode()[:40],
                    *(f"{v:.6f}"[1:] for v in template[:16]), *(repr(v)[1:12] for v in template[:16])]
    with env.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                for value in row:
                    blob = value if isinstance(value, bytes) else str(value).encode()
                    text = blob.decode("latin-1")
                    assert not any(n in blob for n in needles_bytes), table.name
                    assert not any(n in text for n in needles_text), (table.name, text[:80])
        stored = conn.execute(sa.select(face_templates)).one()
    assert stored.person_id == person and stored.key_id == env.container.cipher.key_id and stored.sealed
    for record in caplog.records:
        assert b64(image)[200:264] not in record.getMessage()
    enrolled = [d for k, d in _kinds(env) if k == "identity.face.enrolled"]
    assert [(d["source"], d["replaced"]) for d in enrolled] == [("id_photo", False), ("live_capture", True)]

    # withdrawal erases it
    gone = env.http.delete(f"/admin/v1/persons/{person}/face", headers=_office(env))
    assert gone.status_code == 200 and gone.json()["enrolled"] is False
    _problem(env.http.delete(f"/admin/v1/persons/{person}/face", headers=_office(env)), 409, "face_not_enrolled")
    assert "identity.face.withdrawn" in [k for k, _ in _kinds(env)]


def test_another_person_s_face_replaces_an_enrolment_only_with_a_reason(
    env: Lifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    """Review 131, finding 3: re-enrolling the same person records the distance between the two faces;
    another person's face (above the default tolerance) is refused 409 face_differs, audited with the
    distance, unless the badge office says why (replace_reason), which the trail keeps and port security
    is warned of."""
    person = env.person()
    assert _enrol(env, person).status_code == 201
    same = _enrol(env, person, "obama2.jpg")  # another photo of the same man
    assert same.status_code == 201, same.text
    assert same.json()["replaced"] is True and 0 < same.json()["distance"] <= 0.5
    current = same.json()["template_id"]

    body = _problem(_enrol(env, person, "biden.jpg"), 409, "face_differs")
    assert "replace_reason" in body["detail"]
    assert env.http.get(f"/admin/v1/persons/{person}/face", headers=_office(env)).json()["template_id"] == current
    [refused] = [d for k, d in _kinds(env) if k == "identity.face.enrol.refused"]
    assert (refused["code"], refused["replaced_template_id"], refused["differs"]) == ("face_differs", current, True)
    assert refused["distance"] > 0.75
    _problem(_enrol(env, person, "biden.jpg", replace_reason=" \n "), 422, "replace_reason_invalid")
    assert env.http.post(f"/admin/v1/persons/{person}/face", headers=_office(env),
                         json={"image": b64(photo("biden.jpg")), "replace_reason": "x" * 501}).status_code == 422

    caplog.set_level(logging.INFO)
    done = _enrol(env, person, "biden.jpg", replace_reason="  the ID photo   on file was not his ")
    assert done.status_code == 201, done.text
    assert done.json()["replaced"] is True and done.json()["distance"] > 0.75
    entries = [d for k, d in _kinds(env) if k == "identity.face.enrolled"]
    assert [("replace_reason" in d, d.get("differs")) for d in entries] == [(False, None), (False, False),
                                                                            (True, True)]
    assert entries[1]["distance"] == same.json()["distance"] and entries[1]["replaced_template_id"]
    assert entries[2]["replace_reason"] == "the ID photo on file was not his"
    assert (entries[2]["replaced_template_id"], entries[2]["distance"]) == (current, done.json()["distance"])
    warned = [r for r in caplog.records if r.getMessage() == "identity.face.enrolment.replaced_other_face"]
    assert [r.levelname for r in warned] == ["WARNING"]


@pytest.mark.parametrize("how", ["unreadable", "not current"])
def test_an_enrolment_that_cannot_be_compared_is_replaced_only_with_a_reason(env: Lifecycle, how: str) -> None:
    """An old template that does not open (tampered, sealed under a retired data key) or that the trail
    does not name: nothing says whose face it was, so even the same face replaces it only with a reason."""
    person = env.person()
    assert _enrol(env, person).status_code == 201
    with env.engine.begin() as conn:
        change = {"sealed": "AAAA" + "B" * 40} if how == "unreadable" else {"template_id": uuid.uuid4()}
        conn.execute(face_templates.update().where(face_templates.c.person_id == person).values(**change))
    _problem(_enrol(env, person, "obama2.jpg"), 409, "face_differs")
    [refused] = [d for k, d in _kinds(env) if k == "identity.face.enrol.refused"]
    assert (refused["distance"], refused["differs"]) == (None, True)
    done = _enrol(env, person, "obama2.jpg", replace_reason="the stored template does not open")
    assert done.status_code == 201 and done.json()["distance"] is None


@pytest.mark.parametrize(("image", "status", "code"), [
    (lambda: photo("chelsea.png"), 422, "face_not_found"),
    (lambda: side_by_side("obama.jpg", "biden.jpg"), 422, "face_multiple"),
    (lambda: photo("obama3.jpg"), 422, "face_too_small"),
    (lambda: blurred("obama.jpg", radius=4), 422, "face_blurred"),
    (lambda: b"GIF89a not really", 422, "image_unreadable"),
], ids=["no face", "two faces", "too small", "blurred", "unreadable"])
def test_enrolment_refuses_a_bad_capture_with_a_clear_error(env: Lifecycle, image: Any, status: int,
                                                             code: str) -> None:
    person = env.person()
    body = _problem(env.http.post(f"/admin/v1/persons/{person}/face", json={"image": b64(image())},
                                  headers=_office(env)), status, code)
    assert body["detail"] and "face" in body["detail"].lower() or code == "image_unreadable"
    with env.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(face_templates)).scalar() == 0
    assert [(k, d["code"]) for k, d in _kinds(env) if k.startswith("identity.face")] == [
        ("identity.face.enrol.refused", code)]


def test_enrolment_refuses_bad_requests(env: Lifecycle) -> None:
    person = env.person()
    office = _office(env)
    path = f"/admin/v1/persons/{person}/face"
    _problem(env.http.post(path, json={"image": "%%% not base64"}, headers=office), 422, "image_unreadable")
    tiff = io.BytesIO()
    Image.open(io.BytesIO(photo("obama.jpg"))).save(tiff, "TIFF")  # a face, in a format we do not decode
    _problem(env.http.post(path, json={"image": b64(tiff.getvalue())}, headers=office), 422, "image_unreadable")
    _problem(env.http.post(path, json={"image": b64(photo("obama.jpg")), "source": "selfie"}, headers=office),
             422, "source_invalid")
    _problem(env.http.post(f"/admin/v1/persons/{uuid.uuid4()}/face", json={"image": b64(photo("obama.jpg"))},
                           headers=office), 404, "not_found")
    face_for(env.app).max_image_bytes = 1000  # QUAYGATE_FACE_MAX_IMAGE_BYTES
    _problem(env.http.post(path, json={"image": b64(photo("obama.jpg"))}, headers=office), 413, "image_too_large")
    suspended = env.person(status="suspended")
    face_for(env.app).max_image_bytes = env.container.settings.face_max_image_bytes
    _problem(env.http.post(f"/admin/v1/persons/{suspended}/face", json={"image": b64(photo("obama.jpg"))},
                           headers=office), 409, "person_not_active")
    r = env.http.post(path, json={"image": b64(photo("obama.jpg")), "extra": 1}, headers=office)
    assert r.status_code == 422


def test_an_officer_does_not_enrol_his_own_face_and_face_views_are_audited(env: Lifecycle) -> None:
    """Through the admin console, on the full app: a badge officer enrols others' faces, never his own
    (the face he would step up and pass the gate with); a view is on the trail, not what it showed."""
    flow = Flow(env.app, env.http, env.container)
    client_id = _console(flow)
    officer = _officer(flow, "badge_office")
    office = _auth(_token(flow, client_id, officer))
    driver = env.person()
    own = env.http.post(f"/admin/v1/persons/{officer}/face", json={"image": b64(photo("obama.jpg"))}, headers=office)
    _problem(own, 403, "own_face")
    assert "www-authenticate" not in own.headers  # separation of duties, not a token challenge
    assert env.http.post(f"/admin/v1/persons/{driver}/face", json={"image": b64(photo("obama.jpg"))},
                         headers=office).status_code == 201
    with env.engine.connect() as conn:
        assert conn.execute(sa.select(face_templates.c.person_id)).scalars().all() == [driver]
    assert env.http.get(f"/admin/v1/persons/{driver}/face", headers=office).json()["enrolled"] is True
    who = {"person_id": str(officer), "client_id": client_id}
    assert _views(env) == [(who, str(driver))]
    # An admin client's lookups are its own traffic (identity.api.admin audit_read), a refused caller's none.
    assert env.http.get(f"/admin/v1/persons/{driver}/face", headers=_office(env)).status_code == 200
    _problem(env.http.get(f"/admin/v1/persons/{driver}/face"), 401, "invalid_request")
    assert len(_views(env)) == 1


def test_an_officer_does_not_withdraw_his_own_face(env: Lifecycle, caplog: pytest.LogCaptureFixture) -> None:
    """His biometric reference is another officer's act either way: enrolled by another, and withdrawn
    by another too (403 own_face, logged as the enrolment's refusal, the template kept), where he
    withdraws another person's face, and another officer his. The refusal is not a token challenge:
    no WWW-Authenticate, where a token without the badge office's scope keeps its challenge."""
    caplog.set_level(logging.INFO)
    flow = Flow(env.app, env.http, env.container)
    client_id = _console(flow)
    officer = _officer(flow, "badge_office")
    office = _auth(_token(flow, client_id, officer))
    driver = env.person()
    for person in (officer, driver):
        assert _enrol(env, person).status_code == 201  # by the badge office's admin client
    own = env.http.delete(f"/admin/v1/persons/{officer}/face", headers=office)
    body = _problem(own, 403, "own_face")
    assert body["instance"] == f"/admin/v1/persons/{officer}/face" and body["status"] == 403
    assert "www-authenticate" not in own.headers
    assert "identity.admin.refused.own_face" in caplog.messages
    with env.engine.connect() as conn:
        assert set(conn.execute(sa.select(face_templates.c.person_id)).scalars()) == {officer, driver}
    assert "identity.face.withdrawn" not in [k for k, _ in _kinds(env)]
    gone = env.http.delete(f"/admin/v1/persons/{driver}/face", headers=office)
    assert gone.status_code == 200 and gone.json() == {"person_id": str(driver), "enrolled": False}
    assert env.http.delete(f"/admin/v1/persons/{officer}/face", headers=_office(env)).status_code == 200
    # A token that lacks the badge office's scope is told so in its challenge (RFC 6750 §3).
    admin, admin_secret, _ = env.machine("admin")
    port_security = {"Authorization": f"Bearer {env.machine_token(admin, admin_secret, scope='admin')}"}
    refused = env.http.delete(f"/admin/v1/persons/{driver}/face", headers=port_security)
    _problem(refused, 403, "badge_office_required")
    assert refused.headers["www-authenticate"].startswith('Bearer error="badge_office_required"')


def _views(env: Lifecycle) -> list[tuple[Any, Any]]:
    with env.engine.connect() as conn:
        return [(r.actor, r.subject) for r in conn.execute(
            sa.select(audit_log.c.actor, audit_log.c.subject)
            .where(audit_log.c.kind == "identity.admin.face.viewed").order_by(audit_log.c.id))]


# ---- the gate's 1:1 call ------------------------------------------------------------------------


def test_gate_verify_face_with_the_terminal_tolerance(env: Lifecycle) -> None:
    person = env.person()
    assert _enrol(env, person).status_code == 201
    face = face_for(env.app)
    same = face.verify_face_blocking(person, photo("obama2.jpg"), None, context={"terminal": "BEANR-K1700"})
    assert same.matched and same.reason is None and same.tolerance == 0.5
    assert same.distance is not None and 0.3 < same.distance < 0.45
    # a stricter terminal refuses the same capture
    strict = face.verify_face_blocking(person, photo("obama2.jpg"), 0.3)
    assert (strict.matched, strict.reason, strict.distance) == (False, "face_mismatch", same.distance)
    other = run_async(lambda: face.verify_face(person, photo("biden.jpg"), 0.6))
    assert not other.matched and other.reason == "face_mismatch" and other.distance is not None
    assert other.distance > 0.75
    nothing = face.verify_face_blocking(person, photo("chelsea.png"))
    assert (nothing.matched, nothing.reason, nothing.distance) == (False, "face_not_found", None)
    two = run_async(lambda: face.verify_face(person, side_by_side("biden.jpg", "obama2.jpg")))
    assert (two.matched, two.reason) == (False, "face_multiple")
    unknown = face.verify_face_blocking(env.person(), photo("obama2.jpg"))
    assert (unknown.matched, unknown.reason) == (False, "face_not_enrolled")
    for bad in (0.61, 0.2):
        with pytest.raises(FaceError) as refused:
            face.verify_face_blocking(person, photo("obama2.jpg"), bad)
        assert refused.value.code == "tolerance_invalid"
    audited = [(k, d) for k, d in _kinds(env) if k.startswith("identity.face.verify")]
    assert [k.rsplit(".", 1)[1] for k, _ in audited] == ["matched", "mismatched", "mismatched", "refused",
                                                         "refused", "refused"]
    first = audited[0][1]
    assert (first["distance"], first["tolerance"], first["matched"], first["terminal"], first["liveness"]) == (
        same.distance, 0.5, True, "BEANR-K1700", "not_checked")


def test_a_replayed_capture_is_refused_within_the_window_and_forgotten_after_it(env: Lifecycle) -> None:
    """The digest of a matched capture refuses the same bytes for another use for ``replay_window``
    (from when they were matched), and not a moment longer: past it the bytes match again and are
    claimed anew; the background loop's forget drops only the rows past it. Explicit clocks."""
    person = env.person()
    assert _enrol(env, person).status_code == 201
    face = face_for(env.app)
    window = face.replay_window
    assert window == timedelta(days=env.container.settings.face_replay_days)
    t0 = env.container.clock.now()
    capture = fresh("obama2.jpg")

    def verify(at: Any, use: str) -> Any:
        return face.verify_face_blocking(person, capture, now=at, used_for=use)

    assert verify(t0, "gate:T:a").matched
    assert verify(t0 + timedelta(seconds=5), "gate:T:a").matched  # the same use: a retry
    within = verify(t0 + window - timedelta(seconds=1), "gate:T:b")
    assert (within.matched, within.reason) == (False, "face_replayed")
    assert verify(t0 + window + timedelta(seconds=10), "gate:T:c").matched  # past the window
    with env.engine.begin() as conn:
        # The enrolment's photo, claimed before t0, is past it; the capture's row was claimed anew: kept.
        assert CaptureStore(conn).forget(t0 + window) == 1
        assert CaptureStore(conn).forget(t0 + 2 * window) == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(face_captures)).scalar_one() == 0


def test_a_capture_matched_before_the_data_key_changed_stays_a_replay_with_the_old_digest_key_alone(
    env: Lifecycle,
) -> None:
    """Review 135, finding 1 (iv): the replay lookup across a data key change needs the old key's digest key
    only (QUAYGATE_FACE_DIGEST_KEYS_PREVIOUS, an HKDF output that opens and tags nothing), not the old data
    key: once the database is sealed again, the old key goes and the capture matched under it is still a
    replay for another use."""
    from identity.face.sealing import TAG_PURPOSE
    from identity.face.service import DIGEST_PURPOSE
    from quaygate import rekey
    from quaygate.crypto import DataCipher

    person = env.person()
    assert _enrol(env, person).status_code == 201
    face = face_for(env.app)
    capture = fresh("obama2.jpg")
    assert face.verify_face_blocking(person, capture, used_for="gate:T:a").matched
    old, new = env.container.settings.data_key_bytes(), bytes(range(100, 132))
    ring = DataCipher(new, [old])
    rekey.rekey(env.engine, ring)
    rekey.retag(env.engine, ring.derive_all(TAG_PURPOSE), actor={"system": "test"}, now=env.container.clock.now())

    def service(*digest_keys: bytes) -> FaceService:  # the old data key dropped
        return FaceService(engine=env.engine, cipher=DataCipher(new), pool=env.app.state.face_pool, tolerance=0.5,
                           max_image_bytes=face.max_image_bytes, previous_digest_keys=digest_keys)

    kept = service(DataCipher(old).derive(DIGEST_PURPOSE)).verify_face_blocking(person, capture, used_for="gate:T:b")
    assert (kept.matched, kept.reason) == (False, "face_replayed")
    assert service().verify_face_blocking(person, capture, used_for="gate:T:c").matched  # nothing kept: fresh


def test_a_bad_capture_to_the_driver_himself_says_first_that_no_face_is_enrolled(env: Lifecycle) -> None:
    """The enrolment oracle is closed for whoever is not the person (the gate: the capture is judged
    first); the driver stepping up on his own face is told first that he has none enrolled."""
    nobody = env.person()
    face = face_for(env.app)
    gate = face.verify_face_blocking(nobody, photo("chelsea.png"))
    assert (gate.matched, gate.reason) == (False, "face_not_found")
    _problem(_step_up(env, _session(env, nobody), "chelsea.png"), 409, "face_not_enrolled")


def test_a_template_moved_to_another_person_does_not_open(env: Lifecycle) -> None:
    obama, mallory = env.person(), env.person()
    assert _enrol(env, obama).status_code == 201
    assert _enrol(env, mallory, "biden.jpg").status_code == 201
    with env.engine.begin() as conn:  # an insider copies Obama's sealed template onto Mallory's row
        row = conn.execute(sa.select(face_templates).where(face_templates.c.person_id == obama)).one()
        conn.execute(face_templates.update().where(face_templates.c.person_id == mallory)
                     .values(sealed=row.sealed, template_id=uuid.uuid4()))
    match = face_for(env.app).verify_face_blocking(mallory, photo("obama2.jpg"))
    assert (match.matched, match.reason, match.distance) == (False, "face_unavailable", None)


# ---- the step-up --------------------------------------------------------------------------------


def _session(env: Lifecycle, person: uuid.UUID, acr: str = assurance.ACR_PASSKEY) -> str:
    cookie, _ = sessions_for(env.app).create(person, acr=acr, amr=assurance.AMR_PASSKEY,
                                             now=env.container.clock.now())
    return cookie


def _step_up(env: Lifecycle, cookie: str | None, name: str | bytes, origin: str | None = ORIGIN) -> Any:
    """A step-up with the photo ``name``, or these bytes."""
    env.http.cookies.clear()
    headers = {"Origin": origin} if origin else {}
    if cookie:
        headers["Cookie"] = f"{env.container.settings.session_cookie}={cookie}"
    image = photo(name) if isinstance(name, str) else name
    return env.http.post("/face/step-up", json={"image": b64(image)}, headers=headers)


def test_step_up_raises_the_session_to_acr_face_and_replaces_it(env: Lifecycle) -> None:
    person = env.person()
    assert _enrol(env, person).status_code == 201
    cookie = _session(env, person)
    r = _step_up(env, cookie, "obama2.jpg")
    assert r.status_code == 200, r.text
    assert r.json() == {"ok": True, "acr": assurance.ACR_FACE, "amr": ["hwk", "user", "mfa", "face"]}
    new_cookie = r.cookies.get(env.container.settings.session_cookie)
    assert new_cookie and new_cookie != cookie
    now = env.container.clock.now()
    stepped = sessions_for(env.app).get(new_cookie, now=now)
    assert stepped is not None and stepped.acr == assurance.ACR_FACE and stepped.person_id == person
    assert sessions_for(env.app).get(cookie, now=now) is None  # the old session is ended
    _problem(_step_up(env, cookie, "obama2.jpg"), 401, "login_required")  # replaying the old cookie
    [entry] = [d for k, d in _kinds(env) if k == "identity.login.face.stepped_up"]
    assert entry["from_acr"] == assurance.ACR_PASSKEY and entry["acr"] == assurance.ACR_FACE
    assert 0 < entry["distance"] <= entry["tolerance"]


def test_a_step_up_keeps_the_login_time_and_the_session_end(env: Lifecycle) -> None:
    """A face match raises what the session proves, not how recent its login is or how long it lives:
    with a stolen session twenty minutes old, a photo of the driver neither renews the session nor
    counts as the fresh login that adding a passkey (keeping the account for good) asks for."""
    person = env.person()
    assert _enrol(env, person).status_code == 201
    login = env.container.clock.now() - timedelta(minutes=20)
    cookie, old = sessions_for(env.app).create(person, acr=assurance.ACR_PASSKEY, amr=assurance.AMR_PASSKEY,
                                               now=login)
    r = _step_up(env, cookie, "obama2.jpg")
    assert r.status_code == 200, r.text
    new_cookie = r.cookies.get(env.container.settings.session_cookie)
    stepped = sessions_for(env.app).get(new_cookie, now=env.container.clock.now())
    assert stepped is not None and stepped.acr == assurance.ACR_FACE
    assert (stepped.auth_time, stepped.expires_at) == (old.auth_time, old.expires_at)
    env.http.cookies.clear()
    jar = f"{env.container.settings.session_cookie}={new_cookie}"
    refused = env.http.post("/webauthn/registration/options", json={}, headers={"Origin": ORIGIN, "Cookie": jar})
    _problem(refused, 401, "reauthentication_required")


def test_step_up_refusals(env: Lifecycle) -> None:
    person = env.person()
    assert _enrol(env, person).status_code == 201
    cookie = _session(env, person)
    _problem(_step_up(env, cookie, "obama2.jpg", origin=None), 403, "origin_refused")
    _problem(_step_up(env, cookie, "obama2.jpg", origin="https://evil.example"), 403, "origin_refused")
    _problem(_step_up(env, None, "obama2.jpg"), 401, "login_required")
    _problem(_step_up(env, "forged-cookie", "obama2.jpg"), 401, "login_required")
    _problem(_step_up(env, _session(env, person, acr="urn:example:weak"), "obama2.jpg"), 403, "step_up_not_allowed")
    _problem(_step_up(env, _session(env, env.person()), "obama2.jpg"), 409, "face_not_enrolled")
    _problem(_step_up(env, cookie, "chelsea.png"), 422, "face_not_found")
    _problem(_step_up(env, cookie, "biden.jpg"), 401, "face_mismatch")
    live = sessions_for(env.app).get(cookie, now=env.container.clock.now())
    assert live is not None and live.acr == assurance.ACR_PASSKEY  # a refusal leaves the session as it was


@pytest.mark.parametrize("how", ["ended", "lapsed"])
def test_a_session_gone_while_the_capture_comes_is_not_stepped_up(env: Lifecycle, how: str) -> None:
    """The session is looked up once, on the headers (identity.api.face ``_admit_logged_in``), and that
    session is the one stepped up: one ended while the capture came (a logout) is refused when it would
    be replaced, one that lapsed meanwhile before the match, both 401 ``login_required``; no new
    session either way."""
    person = env.person()
    assert _enrol(env, person).status_code == 201
    now = env.container.clock.now()
    ttl = timedelta(seconds=env.container.settings.session_ttl)
    login = now - ttl + timedelta(seconds=2) if how == "lapsed" else now  # lapses two seconds on
    cookie, session = sessions_for(env.app).create(person, acr=assurance.ACR_PASSKEY, amr=assurance.AMR_PASSKEY,
                                                   now=login)
    body = json.dumps({"image": b64(photo("obama2.jpg"))}).encode() + b" " * 200_000
    last = len(chunks_of(body)) - 1

    async def before(k: int) -> None:
        if k != last:
            return
        if how == "ended":
            await anyio.to_thread.run_sync(lambda: sessions_for(env.app).end(session.sid,
                                                                             now=env.container.clock.now()))
        while how == "lapsed" and env.container.clock.now() < session.expires_at:
            await anyio.sleep(0.05)

    headers = [(b"origin", ORIGIN.encode()),
               (b"cookie", f"{env.container.settings.session_cookie}={cookie}".encode())]
    status, read, answer_headers, answer = post_counting_body(env.app, "/face/step-up", body, headers,
                                                              before=before)
    assert (status, read, answer["code"]) == (401, last + 1, "login_required"), answer
    assert "set-cookie" not in answer_headers
    with env.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(login_sessions)
                            .where(login_sessions.c.person_id == person)).scalar_one() == 1
    assert "identity.login.face.stepped_up" not in [k for k, _ in _kinds(env)]


def test_repeated_mismatches_lock_the_face_step_up_out(env: Lifecycle) -> None:
    person = env.person()
    assert _enrol(env, person).status_code == 201
    cookie = _session(env, person)
    limit = env.container.settings.login_failures_before_lockout
    for _ in range(limit):
        _problem(_step_up(env, cookie, "astronaut.png"), 401, "face_mismatch")
    locked = _step_up(env, cookie, "obama2.jpg")  # even the right face, while locked
    _problem(locked, 429, "rate_limited")
    assert int(locked.headers["Retry-After"]) > 0
    assert "identity.lockout.started" in [k for k, _ in _kinds(env)]


def test_a_suspended_person_s_step_up_is_409_person_not_active(env: Lifecycle) -> None:
    """As the module docstring says (review 165: it said 403)."""
    from quaygate.schema import persons

    person = env.person()
    assert _enrol(env, person).status_code == 201
    cookie = _session(env, person)
    with env.engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == person).values(status="suspended"))
    _problem(_step_up(env, cookie, fresh("obama2.jpg")), 409, "person_not_active")


def test_a_step_up_with_a_capture_already_matched_is_refused_and_counted(env: Lifecycle) -> None:
    """A capture of the driver that raised one session, sent again to step up another (a copy of it),
    is refused 401 face_replayed and counts towards the lockout, like a mismatch: after enough of
    them even a new capture of the right face is locked out."""
    person = env.person()
    assert _enrol(env, person).status_code == 201
    capture = fresh("obama2.jpg")

    def step_up(cookie: str, image: bytes) -> Any:
        env.http.cookies.clear()
        return env.http.post("/face/step-up", json={"image": b64(image)}, headers={
            "Origin": ORIGIN, "Cookie": f"{env.container.settings.session_cookie}={cookie}"})

    assert step_up(_session(env, person), capture).status_code == 200
    cookie = _session(env, person)
    limit = env.container.settings.login_failures_before_lockout
    # The guard counts failures in windows aligned to the clock (ratelimit.py): on the system clock a
    # loaded run crossing a window's edge split them, and no lockout came (CI, 2026-11-24). Its time
    # stands still for this test.
    guard = login_guard_for(env.app)
    frozen = guard._now()  # noqa: SLF001
    guard._now = lambda: frozen  # noqa: SLF001
    for _ in range(limit):
        body = _problem(step_up(cookie, capture), 401, "face_replayed")
    assert "already used" in body["detail"]
    _problem(step_up(cookie, fresh("obama2.jpg")), 429, "rate_limited")
    replays = [d for k, d in _kinds(env) if k == "identity.face.verify.refused"]
    assert len(replays) == limit and all(d["reason"] == "face_replayed" for d in replays)
    assert replays[0]["replay_of"].startswith("step_up:")


def test_two_step_ups_of_one_session_at_once_give_one_new_session(env: Lifecycle) -> None:
    person = env.person()
    assert _enrol(env, person).status_code == 201
    cookie = _session(env, person)
    session = sessions_for(env.app).get(cookie, now=env.container.clock.now())  # both admitted with it
    face = face_for(env.app)
    image = photo("obama2.jpg")
    results: list[object] = []

    def attempt() -> None:
        try:
            results.append(anyio.run(lambda: face.step_up(session=session, image=image, address=None,
                                                          now=env.container.clock.now())))
        except FaceError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r if isinstance(r, str) else "ok" for r in results) == ["login_required", "ok"]
    assert len([k for k, _ in _kinds(env) if k == "identity.login.face.stepped_up"]) == 1


class _SpoofDetector:
    """A presentation-attack detector that judges every capture a spoof (the port's other answer)."""

    def check(self, image: bytes) -> Liveness:
        return Liveness.SPOOF


def test_a_capture_the_liveness_port_calls_a_spoof_is_refused(env: Lifecycle) -> None:
    person = env.person()
    assert _enrol(env, person).status_code == 201
    ours = face_for(env.app)
    guarded = FaceService(engine=env.engine, cipher=env.container.cipher, pool=env.app.state.face_pool,
                          tolerance=0.5, max_image_bytes=ours.max_image_bytes, liveness=_SpoofDetector())
    match = guarded.verify_face_blocking(person, photo("obama2.jpg"))
    assert (match.matched, match.reason) == (False, "face_not_live")
    [entry] = [d for k, d in _kinds(env) if k == "identity.face.verify.refused"]
    assert entry["liveness"] == "spoof"


# ---- what a capture costs (review 131, finding 2) --------------------------------------------------


def _jobs(env: Lifecycle, monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The owners of the jobs given to the face workers from now on."""
    pool = face_for(env.app)._pool
    real, jobs = pool.submit, []

    def submit(image: bytes, owner: str | None = None) -> Any:
        jobs.append(owner)
        return real(image, owner)

    monkeypatch.setattr(pool, "submit", submit)
    return jobs


def test_a_costly_capture_is_refused_before_a_worker_and_unusable_ones_are_limited(
    env: Lifecycle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files claiming big pictures reach no face worker, at the enrolment or the step-up; and a
    person's step-ups may send only so many unusable captures per window (face_step_up_bad_captures):
    past it 429 rate_limited, the right face too, with no worker job and no lockout started."""
    person = env.person()
    assert _enrol(env, person).status_code == 201
    jobs = _jobs(env, monkeypatch)
    strip, wide = png(1, 5_000_000), png(3000, 600)
    _problem(env.http.post(f"/admin/v1/persons/{person}/face", json={"image": b64(strip)}, headers=_office(env)),
             413, "image_too_large")
    assert [d["code"] for k, d in _kinds(env) if k == "identity.face.enrol.refused"] == ["image_too_large"]
    service = face_for(env.app)
    service.bad_captures = 3
    cookie = _session(env, person)
    _problem(_step_up(env, cookie, strip), 413, "image_too_large")
    _problem(_step_up(env, cookie, wide), 422, "image_unreadable")
    assert jobs == []
    stepped = _step_up(env, cookie, "obama2.jpg")  # a real capture still steps up
    assert stepped.status_code == 200, stepped.text
    cookie = stepped.cookies.get(env.container.settings.session_cookie)
    _problem(_step_up(env, cookie, "chelsea.png"), 422, "face_not_found")  # the third unusable capture
    step_up = ("step_ups", f"step_up:{person}", "off_gate")  # its shares of the pool (review 154, finding 2)
    assert jobs == [step_up, step_up]
    refused = _step_up(env, cookie, fresh("obama2.jpg"))
    body = _problem(refused, 429, "rate_limited")
    assert "unusable" in body["detail"] and 0 < int(refused.headers["Retry-After"]) <= 2 * service.bad_capture_window
    assert jobs == [step_up, step_up]
    assert "identity.lockout.started" not in [k for k, _ in _kinds(env)]
    other = env.person()  # the allowance is the person's
    _problem(_step_up(env, _session(env, other), wide), 409, "face_not_enrolled")

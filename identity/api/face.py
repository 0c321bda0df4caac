"""Face routes (issue 6): enrolment by the badge office, and the face step-up of a login session.

Contract::

    POST   /admin/v1/persons/{person_id}/face   {"image": base64 (or a data: URL), "source": "id_photo" |
                                                 "live_capture", "replace_reason"?}   the badge office only
      201 {"person_id", "template_id", "source", "face_px", "sharpness", "enrolled_at", "replaced",
           "distance" (to the face replaced; null when none was, or it could not be compared)}
      401/403 (admin_caller; 403 badge_office_required | own_face)   404 not_found   409 person_not_active
      | face_differs (another person's face would replace the enrolled one: give replace_reason, which
      the trail keeps with the distance)   413 image_too_large   422 face_not_found | face_multiple |
      face_too_small | face_blurred | image_unreadable | source_invalid | replace_reason_invalid
      503 face_busy | face_unavailable
    GET    /admin/v1/persons/{person_id}/face   200 the enrolment's metadata (never the template); audited;
                                                 "current": false when the audit trail does not name the
                                                 stored template (it does not open: docs/face.md)
    DELETE /admin/v1/persons/{person_id}/face   200 {"person_id", "enrolled": false}   the badge office only
      401/403 (as the enrolment; 403 own_face: nor does an officer withdraw his own)   409 face_not_enrolled
    POST   /face/step-up   {"image"}   with the login session cookie and an Origin header of ours (CSRF)
      200 {"ok": true, "acr", "amr"} + Set-Cookie: the new session (the old one is ended)
      401 login_required | face_mismatch | face_not_live | face_replayed   403 origin_refused | step_up_not_allowed
      409 person_not_active | face_not_enrolled   413/422 as above   429 rate_limited (+ Retry-After)

Images travel as base64 in JSON, not as multipart uploads: Starlette spools an upload larger than
1 MB to a temporary file, and no image may touch the disk. The routes are ``async``: the face work
waits on the process pool, and the blocking parts (token checks, the database) run in threads.
Nothing here logs or audits the image; the trail gets the quality measures, the distance and the
decision.

The two routes with an image check their caller on the headers before any of the body is read
(quaygate.routing.AdmitFirst, ``admit_first``): without the badge office's token, or without our
Origin and a live login session, a request is refused (401/403, as above) before the server reads and
parses several MiB of it, and a body not received within 30 s is refused 408 ``body_timeout``. The
enrolment's caller is checked once, its DPoP proof claimed once, and its token checked again once the
body is in (identity.api.admin ``admits``: expired or revoked meanwhile, 401). The step-up's session
is looked up again by the service once the capture is in, whose own checks follow in their order: a
session ended or expired meanwhile is refused there (401 login_required).
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from quaygate.limits import IMAGE_B64_MAX, IMAGE_BODY_BYTES
from quaygate.routing import AdmitFirst, admit_first
from release_service.api.problems import problem, problem_responses

from ..authn.service import passkeys_for
from ..domain.face import SOURCES, FaceCode
from ..face import FaceError, face_for
from ..face.service import MAX_REPLACE_REASON
from ..sessions import sessions_for
from .admin import AdminCaller, AdminRefused, admin_caller, admits, audit_read, caller_of, own_refused

log = logging.getLogger(__name__)

router = APIRouter(tags=["face"], route_class=AdmitFirst)

# Error code -> HTTP status (the one mapping table of this edge, STYLE.md #6). Unlisted codes: 422.
_STATUS = {
    "not_found": 404, "person_not_active": 409, "concurrent_change": 409, FaceCode.NOT_ENROLLED: 409,
    "face_differs": 409,
    FaceCode.IMAGE_TOO_LARGE: 413, FaceCode.BUSY: 503, FaceCode.UNAVAILABLE: 503,
    "login_required": 401, FaceCode.MISMATCH: 401, FaceCode.NOT_LIVE: 401, FaceCode.REPLAYED: 401,
    "origin_refused": 403,
    "step_up_not_allowed": 403, "rate_limited": 429,
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrolIn(_Body):
    image: str = Field(max_length=IMAGE_B64_MAX, description="the photo (JPEG or PNG), base64 or a data: URL")
    source: str = Field(default="id_photo", description=" or ".join(SOURCES))
    replace_reason: str | None = Field(
        default=None, max_length=MAX_REPLACE_REASON,
        description="why another person's face replaces the one enrolled (kept on the audit trail); without "
                    "it such a replacement is refused 409 face_differs")


class StepUpIn(_Body):
    image: str = Field(max_length=IMAGE_B64_MAX, description="a live capture (JPEG or PNG), base64 or a data: URL")


def _image(text: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FaceError(FaceCode.IMAGE_UNREADABLE) from exc


def _failed(request: Request, exc: FaceError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return problem(_STATUS.get(exc.code, 422), exc.code, exc.message, instance=request.url.path, headers=headers)


def _badge_office_caller(request: Request) -> AdminCaller:
    """The badge office only: an admin token with ``badges:office``, or a badge_office officer in the
    admin console (identity.api.admin.admin_caller); else AdminRefused. Blocking: it may reach the cache."""
    caller = admin_caller(request)
    if not caller.badge_office:
        raise AdminRefused(403, "badge_office_required", "Faces are enrolled by the badge office.")
    return caller


def _refuse_own_face(caller: AdminCaller, person_id: uuid.UUID) -> None:
    """AdminRefused 403 ``own_face`` when the console officer acting is the person: his biometric
    reference, the face he steps up and passes the gate with, is another officer's to enrol and to
    withdraw (separation of duties, as his badge, identity.api.badges ``own_badge``, and his suspension,
    identity.api.admin ``own_suspension``). An admin client names no person."""
    if caller.person_id is not None and caller.person_id == str(person_id):
        raise own_refused("own_face", "An officer does not enrol or withdraw his own face.")


async def _badge_office(request: Request) -> AdminCaller:
    """The badge office's caller: the one admitted before the body was read (``admits``), else checked
    now (a route without a body), in a thread: it may reach the cache."""
    return await run_in_threadpool(caller_of, request, _badge_office_caller)


def _origin_refused(request: Request) -> Response | None:
    """CSRF guard of the cookie-borne step-up: a request from a page that is not ours is refused."""
    origin = request.headers.get("origin")
    if origin is None or origin not in passkeys_for(request.app).allowed_origins:
        return problem(403, "origin_refused", "This request did not come from a quaygate page.",
                       instance=request.url.path)
    return None


def _admit_logged_in(request: Request) -> Response | None:
    """The step-up's caller on the headers alone, before its capture is read (AdmitFirst, on a worker
    thread): our Origin (403 origin_refused), then a live login session (401 login_required), the
    answers and their order of the route itself. The session found is the one the service steps up
    (``request.state.step_up_session``), not looked up again; the service makes its own checks (the
    session's acr, the person, the lockout) in their order, and ends it only if it is still live."""
    refused = _origin_refused(request)
    if refused is not None:
        log.info("identity.face.step_up.refused.origin")
        return refused
    container = request.app.state.container
    cookie = request.cookies.get(container.settings.session_cookie)
    session = sessions_for(request.app).get(cookie, now=container.clock.now())
    if session is None:
        log.info("identity.face.step_up.refused.login_required")
        return _failed(request, FaceError("login_required"))
    request.state.step_up_session = session
    return None


_ADMIN_ERRORS = problem_responses(401, 403, 404, 409, 413, 422, 503)


@router.post("/admin/v1/persons/{person_id}/face", operation_id="admin_enrol_face", status_code=201,
             max_body_size=IMAGE_BODY_BYTES,
             responses=_ADMIN_ERRORS)
@admits(_badge_office_caller)
async def enrol_face(person_id: uuid.UUID, request: Request, body: EnrolIn) -> JSONResponse:
    """Enrol a person's face from an ID photo or a live capture; the photo is not kept. Never an
    officer's own face: the face he steps up and passes the gate with is enrolled by another officer
    (as identity.api.admin refuses his own enrolment code). Replacing the enrolled face with another
    person's (or one that cannot be compared) needs ``replace_reason``: 409 ``face_differs`` without."""
    try:
        caller = await _badge_office(request)
        _refuse_own_face(caller, person_id)
        done = await face_for(request.app).enrol(person_id, _image(body.image), source=body.source,
                                                 actor=caller.actor, now=request.app.state.container.clock.now(),
                                                 replace_reason=body.replace_reason)
    except AdminRefused as exc:
        return exc.response(request)
    except FaceError as exc:
        return _failed(request, exc)
    return JSONResponse({"person_id": str(done.person_id), "template_id": str(done.template_id),
                         "source": done.source, "face_px": done.face_px, "sharpness": done.sharpness,
                         "enrolled_at": done.enrolled_at.isoformat(), "replaced": done.replaced,
                         "distance": done.distance}, status_code=201)


@router.get("/admin/v1/persons/{person_id}/face", operation_id="admin_get_face", responses=_ADMIN_ERRORS)
def get_face(person_id: uuid.UUID, request: Request) -> JSONResponse:
    """Whether a face is enrolled, with the enrolment's metadata (never the template). The view is
    audited, not what it showed (identity.api.admin ``audit_read``)."""
    try:
        caller = admin_caller(request)
        audit_read(request, caller, "identity.admin.face.viewed", subject=str(person_id))
    except AdminRefused as exc:
        return exc.response(request)
    found = face_for(request.app).enrolled(person_id)
    if found is None:
        return JSONResponse({"person_id": str(person_id), "enrolled": False})
    row = found.row
    return JSONResponse({"person_id": str(person_id), "enrolled": True, "template_id": str(row.template_id),
                         "source": row.source, "face_px": row.face_px, "sharpness": row.sharpness,
                         "enrolled_at": row.enrolled_at.isoformat(), "current": found.current})


@router.delete("/admin/v1/persons/{person_id}/face", operation_id="admin_withdraw_face", responses=_ADMIN_ERRORS)
async def withdraw_face(person_id: uuid.UUID, request: Request) -> JSONResponse:
    """Erase a person's face template. Never an officer's own: the face he steps up and passes the
    gate with is withdrawn, as it is enrolled, by another officer (403 own_face)."""
    try:
        caller = await _badge_office(request)
        _refuse_own_face(caller, person_id)
        now = request.app.state.container.clock.now()
        await run_in_threadpool(lambda: face_for(request.app).withdraw(person_id, actor=caller.actor, now=now))
    except AdminRefused as exc:
        return exc.response(request)
    except FaceError as exc:
        return _failed(request, exc)
    return JSONResponse({"person_id": str(person_id), "enrolled": False})


@router.post("/face/step-up", operation_id="faceStepUp", max_body_size=IMAGE_BODY_BYTES,
             responses=problem_responses(401, 403, 409, 413, 422, 429, 503))
@admit_first(_admit_logged_in)
async def step_up(request: Request, body: StepUpIn) -> Response:
    """Raise the browser's login session to acr face with a live capture of the logged-in person."""
    refused = _origin_refused(request)  # checked before the body too (_admit_logged_in); cheap, kept here
    if refused is not None:
        return refused
    settings = request.app.state.container.settings
    now = request.app.state.container.clock.now()
    try:
        done = await face_for(request.app).step_up(
            session=getattr(request.state, "step_up_session", None), image=_image(body.image),
            address=request.client.host if request.client else None, now=now)
    except FaceError as exc:
        return _failed(request, exc)
    response = JSONResponse({"ok": True, "acr": done.session.acr, "amr": list(done.session.amr)},
                            headers={"Cache-Control": "no-store"})
    lives = max(int((done.session.expires_at - now).total_seconds()), 0)  # the session it replaced ends then
    response.set_cookie(settings.session_cookie, done.cookie, max_age=lives, path="/", httponly=True,
                        samesite="lax", secure=settings.secure_cookies)
    return response

"""The gate API under /gate/v1 (SPEC.md "The gate verify call", issue 5): thin routes over
services/verify.py. Called by a terminal's gate client (client credentials, scope ``gate:verify``,
audience ``gate_audience``), bound to its terminal.

``face`` (issue 6) is either a trusted local matcher's result (``face.match``: a claimed match counts
only at a terminal whose gate policy port security set to ``face_match_results: accept``, a claimed
mismatch always; review 131) or a capture
(``face.image``: a JPEG or PNG in base64, at most ``QUAYGATE_FACE_MAX_IMAGE_BYTES`` decoded), which the
service matches 1:1 against the driver's enrolled face in identity's worker processes, with the
terminal's ``face_tolerance``. An unusable capture is a 422 problem (``image_unreadable``,
``image_too_large``, ``face_not_found``, ``face_multiple``, ``face_too_small``, ``face_blurred``) and no
decision is recorded: the lane sends another capture. The image is never stored, logged or audited."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.concurrency import run_in_threadpool

from identity.domain.scopes import GATE_VERIFY
from identity.tokens import InvalidToken
from quaygate import jsonbody
from quaygate.limits import IMAGE_B64_MAX, IMAGE_BODY_BYTES, Printable, Prose, SentTime
from quaygate.routing import AdmitFirst
from quaygate.threads import threads_for
from release_service.domain import gate as g
from release_service.domain import storable
from release_service.domain.errors import DomainError
from release_service.domain.parties import Actor
from release_service.ports import FaceCaptureRefused
from release_service.services import verify as verify_service

from .auth import authenticate_but_revocation, bearer, credentials_of, require
from .problems import AuthError, problem, problem_responses
from .routes import unit_of_work

GATE = require(GATE_VERIFY, audience_setting="gate_audience")

log = logging.getLogger(__name__)

router = APIRouter(prefix="/gate/v1", tags=["gate"], route_class=AdmitFirst)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ContainerIn(_In):
    number: Printable = Field(max_length=20, description="As the OCR read it; empty when nothing was read.",
                        examples=["MSCU1234566"])
    confidence: float = Field(ge=0, le=1)


class PlateReadIn(_In):
    text: Printable = Field(max_length=20, examples=["1-ABC-123"])
    country: Printable | None = Field(default=None, min_length=2, max_length=2,
                                description="ISO 3166-1 alpha-2; omit when the camera gives none.")
    confidence: float = Field(ge=0, le=1)


class BadgeReadIn(_In):
    scheme: Literal["alfapass", "portpass"]
    number: Printable | None = Field(default=None, max_length=32)
    card_uid: Printable | None = Field(default=None, max_length=32, description="The chip's UID in hex.")


class FaceMatchIn(_In):
    matched: bool
    score: float = Field(ge=0, le=1)


_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG


class FaceIn(_In):
    """Exactly one of ``match`` and ``image``."""

    match: FaceMatchIn | None = Field(default=None, description=(
        "A result from the terminal's local matcher. A claimed match counts only where port security set the "
        "terminal's gate policy face_match_results to accept; else it is no evidence (face_required gives "
        "review where a face is required). A claimed mismatch always gives face_mismatch."))
    image: str | None = Field(default=None, min_length=1, max_length=IMAGE_B64_MAX, description=(
        "A capture of the driver's face, JPEG or PNG, base64 (or a data: URL), at most "
        "QUAYGATE_FACE_MAX_IMAGE_BYTES (4 MB) decoded: matched 1:1 by the service against the enrolled face "
        "of the nominated driver, with the terminal's face_tolerance. Never stored."))

    @model_validator(mode="after")
    def _one_kind(self) -> FaceIn:
        if (self.match is None) == (self.image is None):
            raise ValueError("face carries either a match result (match) or a capture (image)")
        return self


class VerifyRequest(_In):
    request_id: Printable = Field(min_length=1, max_length=100, description=(
        "Idempotency: the same id, the same decision; a right is never used twice. No control characters."))
    terminal: Printable = Field(min_length=1, max_length=32)
    lane: Printable = Field(min_length=1, max_length=32)
    direction: Literal["in", "out"]
    mode: Literal["check", "commit"]
    container: ContainerIn
    plate: PlateReadIn | None = None
    badge: BadgeReadIn | None = None
    face: FaceIn | None = None
    observed_at: SentTime = Field(description=(
        "When the gate saw the truck (its earliest read): RFC 3339 with an offset. A verify is refused "
        f"(422 invalid_observed_at) when it lies more than {g.MAX_OBSERVED_AGE_HOURS} hours before the "
        f"service's clock or more than {g.MAX_OBSERVED_AHEAD_MINUTES} minutes after it."))


class RepairOut(BaseModel):
    field: Literal["container", "plate"]
    position: int
    read: str
    understood: str


class VerifyResponse(BaseModel):
    decision: Literal["allow", "deny", "review"]
    reasons: list[str] = Field(description="Reason codes (SPEC.md); empty on allow.")
    decision_id: uuid.UUID
    release_id: uuid.UUID | None
    container: str | None = Field(description="The container number as understood, after check-digit repair.")
    driver: str | None = Field(description="The badge holder, masked (J. P***s).")
    screening: Literal["clear", "banned", "unavailable"]
    request_id: str
    mode: Literal["check", "commit"]
    direction: Literal["in", "out"]
    committed: bool = Field(description="True when this call recorded the gate-in or gate-out.")
    repairs: list[RepairOut] = Field(description="Characters understood differently from how they were read.")


class OverrideRequest(_In):
    decision_id: uuid.UUID
    reason: Prose = Field(min_length=1, max_length=500)
    officer: Printable | None = Field(default=None, min_length=1, max_length=100, description=(
        "The officer who let the truck in, as the gate names him. Kept on the audit trail; the terminal and "
        "port security read it on the right's events, nobody else (a null in every other read and webhook). "
        "Name him here, not in the reason, which the line, the chain and the driver read."))

    @field_validator("officer")
    @classmethod
    def _storable(cls, officer: str | None) -> str | None:
        if officer is None:
            return None
        if not officer.strip():  # the audit trail's who: a name or nothing (as an offline override's, _said)
            raise ValueError("names nobody")
        return storable.text(officer.strip())  # nor a lone surrogate (no UTF-8): a 422


class OverrideResponse(BaseModel):
    decision_id: uuid.UUID
    release_id: uuid.UUID
    state: str
    receipt: dict[str, Any]


def _uow_factory(request: Request, *, autocommit: bool = False) -> Any:
    container = request.app.state.container
    return lambda: unit_of_work(container, autocommit=autocommit)


def face_image(body: VerifyRequest, max_bytes: int) -> bytes | None:
    """The capture's bytes, or None without one; FaceCaptureRefused when it is not base64 or too large."""
    if body.face is None or body.face.image is None:
        return None
    text = body.face.image
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) * 3 // 4 > max_bytes + 3:  # before decoding
        raise FaceCaptureRefused("image_too_large", f"The face image is larger than {max_bytes} bytes.")
    try:
        image = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FaceCaptureRefused("image_unreadable", "face.image is not valid base64.") from None
    if not image.startswith(_IMAGE_MAGIC):  # refused at once, whoever the driver (enrolled or not)
        raise FaceCaptureRefused("image_unreadable", "face.image is not a JPEG or PNG.")
    if len(image) > max_bytes:
        raise FaceCaptureRefused("image_too_large", f"The face image is larger than {max_bytes} bytes.")
    return image


def gate_request(body: VerifyRequest) -> g.GateRequest:
    face = None
    if body.face is not None:
        if body.face.match is not None:
            face = g.FaceEvidence("match_result", body.face.match.score, body.face.match.matched)
        else:  # matched by the service before deciding; as it stands it can only give face_required
            face = g.FaceEvidence.image_pending()
    return g.GateRequest(
        request_id=body.request_id, terminal=body.terminal, lane=body.lane, direction=g.Direction(body.direction),
        mode=g.Mode(body.mode), container=g.ContainerRead(body.container.number, body.container.confidence),
        plate=None if body.plate is None else g.PlateRead(body.plate.text, body.plate.country, body.plate.confidence),
        badge=None if body.badge is None or not (body.badge.number or body.badge.card_uid)
        else g.BadgeRead(body.badge.scheme, body.badge.number, body.badge.card_uid),
        face=face, observed_at=body.observed_at,
    )


def _answer(body: dict[str, Any]) -> Response:
    """The answer as JSON, as is: services/verify.py builds it in VerifyResponse's shape (the model
    stays the published schema, and tests hold every answer to it), so it is not validated again; a
    decision kept in Redis was encoded for it already (quaygate/jsonbody.py), and is sent as encoded."""
    return Response(jsonbody.dumps(body), media_type="application/json")


@router.post("/verify", operation_id="verifyGate", response_model=VerifyResponse, max_body_size=IMAGE_BODY_BYTES,
             responses=problem_responses(400, 401, 403, 409, 413, 422),
             summary="Decide whether this driver in this truck may take this container; on commit, record it.")
async def verify(request: Request, body: VerifyRequest,
                 credentials: HTTPAuthorizationCredentials | None = Depends(bearer)  # noqa: B008
                 ) -> Response:
    return await _verify(request, body, credentials)


async def verify_lean(request: Request, raw: bytes) -> Response | None:
    """POST /gate/v1/verify without FastAPI's request handler (quaygate/routing.py ``lean_app``): a
    JSON body parsed and validated as FastAPI's handler does it (``json.loads``, here by
    ``jsonbody.loads_as_json``, which reads the same values; then the model's validator), and the
    Authorization header read as ``bearer`` reads it. None, for FastAPI's handler to answer as
    declared, when the body is not JSON or does not parse or validate."""
    if not _json_content(request.headers.get("content-type")):
        return None
    try:
        body = VerifyRequest.model_validate(jsonbody.loads_as_json(raw))
    except Exception:  # noqa: BLE001 - not JSON, not valid, nested too deep: FastAPI's handler refuses it
        return None
    return await _verify(request, body, credentials_of(request))


def admit_verify(request: Request) -> None:
    """POST /gate/v1/verify's caller authenticated on the headers alone, before any of the body is read
    (quaygate/routing.py ``admit``): without a valid gate token, no body of up to 8 MiB is read and
    parsed on the event loop. Its revocation is settled with the facts, as ever (``_verify``)."""
    request.state.gate_caller = authenticate_but_revocation(
        request, credentials_of(request), audience=request.app.state.container.settings.gate_audience,
        scope=GATE_VERIFY)


def verify_again(request: Request) -> None:
    """POST /gate/v1/verify's caller checked again once its body is in (quaygate/routing.py ``again``),
    for what may have changed while a slow client sent it: the token's times (``exp``) against now and
    its key still published, on the verifier's memo (no signature checked again, no round trip). Its
    revocation is not looked up here: ``_verify`` settles it after the body is in, as ever (read with
    the facts, in a round trip made anyway), and the DPoP proof's jti was claimed once, at admission
    (RFC 9449 §11.1). AuthError 401 ``invalid_token``, as ``admit_verify`` refuses such a token."""
    credentials = credentials_of(request)
    if credentials is None:  # not admitted with a token: ``_verify`` refuses it
        return
    try:
        request.app.state.token_verifier.verify(
            credentials.credentials, audience=request.app.state.container.settings.gate_audience, revocation=False)
    except InvalidToken as exc:
        log.info("release.gate.refused.after_body")
        raise AuthError(401, "invalid_token", exc.description,
                        scheme="DPoP" if credentials.scheme.lower() == "dpop" else "Bearer") from exc


def _json_content(value: str | None) -> bool:
    """``application/json`` or ``application/*+json``, as FastAPI's strict content type takes it."""
    if not value:
        return False
    kind = value.partition(";")[0].strip().lower()
    main, _, sub = kind.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


async def _verify(request: Request, body: VerifyRequest, credentials: HTTPAuthorizationCredentials | None
                  ) -> Response:
    # On the event loop: the token check and, with the facts cached, a check decided and kept in Redis,
    # the token's revocation read with the facts (one round trip for both). Whatever waits for
    # PostgreSQL or a face worker goes to the thread pool; on every way but the cached one, the
    # revocation is settled on its own before anything is answered.
    container = request.app.state.container
    admitted = getattr(request.state, "gate_caller", None)  # ``admit_verify``, before the body was read
    actor, revocation = admitted or authenticate_but_revocation(
        request, credentials, audience=container.settings.gate_audience, scope=GATE_VERIFY)
    # A DPoP proof's single use, pipelined with the other lanes' Redis calls (else on a worker thread).
    await revocation.claim_proof(container.gate_facts)
    fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    now = container.clock.now()
    gate = gate_request(body)
    try:
        verify_service.require_gate_of(actor, gate.terminal)
        g.check_observed_at(gate.observed_at, now)  # before anything is decided, replayed or recorded
    except DomainError:
        # A revoked token is refused as revoked (401), whatever terminal or time it names; looked up only
        # here, on the way to a refusal, off the event loop.
        await run_in_threadpool(revocation.settle)
        raise
    facts = container.gate_facts
    imaged = body.face is not None and body.face.image is not None  # never decided from the cache alone
    names = revocation.names if facts is not None and not imaged else None
    if names is None:
        revocation.settle()
    try:
        image = face_image(body, container.settings.face_max_image_bytes)
        if facts is not None and names is not None:
            loop_db = getattr(request.app.state, "gate_db", None)
            if gate.mode is g.Mode.COMMIT and loop_db is not None and loop_db.usable():
                # Run to its end even if this request is cancelled (a gate that hung up, a stopping
                # server), as a worker thread would: a move written is remembered and invalidated.
                answer = await loop_db.run_to_end(verify_service.commit_on_loop(
                    loop_db, facts, actor, gate, fingerprint=fingerprint, now=now, also=names,
                    admit=revocation.settle))
            else:
                answer = await verify_service.answer_from_cache(facts, actor, gate, fingerprint=fingerprint,
                                                                now=now, also=names, admit=revocation.settle)
            if answer is not None:
                revocation.settle()  # settled by admit; a no-op, unless a way out forgot it
                if gate.mode is g.Mode.COMMIT:
                    request.app.state.metrics.gate_commits["loop"].inc()
                return _answer(answer)
        matcher = getattr(container, "face_matcher", None) if image is not None else None

        def decide() -> dict[str, Any]:
            # Every write of a verify is one statement: autocommitted, no BEGIN and COMMIT round trips.
            # The revocation is settled by the service's first read of the facts (``admit``), before
            # anything is decided or written; without names it was settled above.
            body = verify_service.verify(_uow_factory(request, autocommit=True), actor, gate, fingerprint=fingerprint,
                                         now=now, facts=facts, face_image=image, face_matcher=matcher,
                                         also=names or (), admit=revocation.settle if names is not None else None)
            revocation.settle()  # a no-op, unless a way out forgot it
            return body

        if gate.mode is g.Mode.COMMIT:
            request.app.state.metrics.gate_commits["threads"].inc()
        # A face match waits on the face workers for tens of milliseconds: on anyio's threads, so that
        # the few threads of the hot pool (quaygate/threads.py) stay free for the database way.
        if matcher is not None:
            return _answer(await run_in_threadpool(decide))
        return _answer(await threads_for(request.app).run(decide))
    except FaceCaptureRefused as exc:
        return problem(422, exc.code, exc.message, instance=request.url.path)


@router.post("/overrides", operation_id="overrideGate", response_model=OverrideResponse, status_code=201,
             responses=problem_responses(400, 401, 403, 404, 409, 422),
             summary="Let a refused truck in at this terminal, with a reason (audited).")
def override(request: Request, body: OverrideRequest, actor: Actor = Depends(GATE)) -> dict[str, Any]:
    """A refused gate-in decided here within the last hour, refused only for what a person at the desk
    can establish (a plate, a face the service could not judge or the terminal's own matcher refused, a
    badge not found or not activated here, the terminal's own hold, screening that did not answer, a driver
    who had said he would not come). A container number the
    gate could not read found no right to release: the desk verifies again with the number it read
    off the box (``container.confidence`` 1), and overrides that decision if need be. Never
    for what another party decided or the right itself says (blocked, revoked, commercial or customs
    hold, outside its window, used, nominated to nobody, another terminal's), for the badge office's or
    the port-ban register's word on a person, for a driver who is not the one nominated, or for the
    service's own word on the face (``face_mismatch`` where it compared the capture with the driver's
    enrolled face and found another person, or caught a spoof or a copy of a capture matched before): 409
    ``illegal_transition``, the right untouched. The ``release.gate_override`` event carries the reason
    codes set aside (``set_aside``); setting aside a check of who came (a badge, a face) raises port
    security's alarm (``release.gate_override_alarm`` on the audit trail). The right is judged as it is
    now, and so is the person: the truck goes in under the nomination the decision judged (a right
    nominated again since is verified again), to its driver, whom the desk identifies and the service
    screens at the override as at nomination (a usable badge, no port ban; a decision that read no badge
    screened nobody)."""
    now = request.app.state.container.clock.now()
    return verify_service.override(_uow_factory(request), actor, body.decision_id, body.reason, now,
                                   officer=body.officer)

"""Offline gate mode under /gate/v1 (issue 5): gate passes for the caller's terminal, and the
reconcile of decisions its adapters took offline. Thin routes over services/gate_passes.py; the pass
signer (our ES256 key from identity's key set, typ ``gate-pass+jwt``) is the glue at the bottom."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jws import JWSRegistry
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from identity.keys import KeyStore
from identity.tokens import fits, sign_jwt
from quaygate.appstate import built_once
from quaygate.limits import IMAGE_BODY_BYTES, Printable, SentTime
from quaygate.routing import AdmitFirst
from release_service.adapters.badge_hashing import BadgeHashSlots
from release_service.adapters.pass_hashes import CachedBadgeHashes
from release_service.adapters.sqla.gate_offline import SqlOfflineUnitOfWork
from release_service.domain import gate as g
from release_service.domain.gate_pass import PASS_ALG, PASS_TYP, OutboxMark, signed_while_active
from release_service.domain.parties import Actor
from release_service.ports import HashingBusy
from release_service.services import gate_passes as service

from .gate import GATE, VerifyRequest, gate_request
from .problems import problem, problem_responses

log = logging.getLogger(__name__)

router = APIRouter(prefix="/gate/v1", tags=["gate"], route_class=AdmitFirst)

MAX_PASS_LENGTH = 8192
# A ban list's age as an adapter reports it: ten years is beyond any list a pass could carry (and the
# column holds 68); past it, the number is no age, and a 422 names the field instead of the database.
MAX_BAN_LIST_AGE_SECONDS = 10 * 365 * 86400


class PassesResponse(BaseModel):
    terminal: str
    typ: Literal["gate-pass+jwt"]
    issued_at: AwareDatetime
    expires_at: AwareDatetime = Field(description="Every pass of this answer expires then: fetch again before.")
    ban_list_as_of: AwareDatetime | None = Field(description="When the port-ban list the screenings used was issued.")
    passes: list[str] = Field(description="Compact JWS (ES256, typ gate-pass+jwt), verifiable with our JWKS.")


class OutboxPlace(BaseModel):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$", description="The outbox chain's id.")
    seq: int = Field(ge=1, le=2**62, description="The decision's sequence number in that chain.")


# An adapter's outbox chain and head (gate_adapters/runtime/outbox.py rule 10), told with each refresh.
_OUTBOX_ID = Query(None, min_length=1, max_length=64, pattern=r"^[0-9a-f]+$",
                   description="The adapter's outbox chain (with outbox_seq): kept as its high-water mark.")
_OUTBOX_SEQ = Query(None, ge=0, le=2**62, description="The outbox chain's head: a head that goes back raises "
                                                       "port security's alarm (release.gate_outbox_alarm).")
_OUTBOX_INTACT = Query(True, description="False: the adapter found its outbox chain broken (an alarm).")


class OfflineOverrideIn(BaseModel):
    id: uuid.UUID = Field(description="The adapter's id for this override: it is recorded under override:<id>.")
    officer: Printable = Field(min_length=1, max_length=100, description="The officer who let the truck in.")
    reason: Printable = Field(min_length=1, max_length=400, description="Why, in the officer's words.")
    decision_id: uuid.UUID = Field(description="The adapter's offline decision (its decision_id) set aside.")
    overridden_at: SentTime = Field(description=(
        "When the officer let the truck in, on the clock of the refusal's decided_at (that time plus the time "
        "since, as the adapter measured it). The badge, the person and the right are judged then (never later "
        f"than now), and an override more than {g.OVERRIDE_WITHIN_SECONDS} seconds after the refusal, or "
        "before it, is flagged not_supported_by_pass: online, an older refusal is verified again first."))

    @field_validator("officer", "reason")
    @classmethod
    def _said(cls, text: str) -> str:
        # An override is audited with who and why (SPEC.md): blanks are neither.
        if not text.strip():
            raise ValueError("must say something")
        return text.strip()


class OfflineFace(BaseModel):
    """The face evidence an offline decision weighed, as a verify decision's row keeps it (``gate.FaceRecord``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["none", "image", "match_result"] = Field(description=(
        "none: no face sent; match_result: a local matcher's claim (matched, score, the min_score it was held "
        "to, trusted: whether the pass's policy accepted match results); image: a capture, which nobody "
        "matches offline (unavailable says why no distance was measured)."))
    matched: bool | None = None
    score: float | None = Field(default=None, ge=0, le=1)
    min_score: float | None = Field(default=None, ge=0, le=1)
    trusted: bool | None = None
    distance: float | None = Field(default=None, ge=0, le=10)
    tolerance: float | None = Field(default=None, ge=0, le=1)
    unavailable: str | None = Field(default=None, min_length=1, max_length=40, pattern=r"^[a-z_]+$")


class OfflineDecisionIn(BaseModel):
    request: VerifyRequest = Field(description="The verify request the adapter could not send.")
    decision: Literal["allow", "deny", "review"]
    reasons: list[g.Reason] = Field(max_length=len(g.Reason), json_schema_extra={"uniqueItems": True}, description=(
        "The reason codes of the decision (SPEC.md's gate reason codes, as a verify answer gives them), each at "
        "most once; empty on allow. Stored with the decision: any other text is refused (422)."))
    release_id: uuid.UUID | None = None
    basis: Literal["pass", "no_pass", "store_stale"]
    decided_at: SentTime = Field(description=(
        "When the adapter decided, by its clock: RFC 3339 with an offset, 1900 to 9000. Not held to the "
        "service's clock (a report may come days late): an allow decided outside its pass's life is "
        "flagged pass_invalid."))
    ban_list_age_seconds: int | None = Field(default=None, le=MAX_BAN_LIST_AGE_SECONDS, description=(
        "Informative; a negative age (a ban list issued ahead of the adapter's clock) is taken as 0. "
        "At most ten years."))
    gate_pass: Printable | None = Field(default=None, max_length=MAX_PASS_LENGTH,
                                  description="The pass the decision relied on, as it was received.")
    face: OfflineFace | None = Field(default=None, description=(
        "The face evidence the decision weighed: kept with it. The reconcile judges the face of the reported "
        "request itself: an allow without the face the terminal's policy asked for when the truck passed is "
        "flagged (changed_after_pass, face_required or face_mismatch among changed_since_pass; the pass's own "
        "policy is judged as ever: not_supported_by_pass)."))
    outbox: OutboxPlace | None = Field(default=None, description=(
        "The decision's place in the adapter's sealed outbox chain: one place reported for two decisions "
        "raises port security's alarm. Not part of the decision (a report re-sent with it is the same)."))
    override: OfflineOverrideIn | None = Field(default=None, description=(
        "An officer at the lane let in the truck of this refused gate-in by hand while the service was "
        "unreachable: recorded as an audited override (release.gate_override) when the pass backs the "
        "right and the refusal is one an online override may set aside, else flagged; flagged "
        "used_online_meanwhile or used_offline_twice when the right was used meanwhile. A second report "
        "of its own, after the refusal's: the same report with this added; one whose refusal was not "
        "reported so is flagged not_supported_by_pass. A badge read that is another person's than the "
        "nominated driver's, or whose holder is banned or suspended, is flagged not_supported_by_pass too, "
        "and the right is marked used (the truck is in)."))

    @field_validator("reasons")
    @classmethod
    def _each_reason_once(cls, reasons: list[g.Reason]) -> list[g.Reason]:
        # A decision lists each reason once (domain/gate.py ``decide``); a repeated one is no decision of ours.
        if len(set(reasons)) != len(reasons):
            raise ValueError("each reason code at most once")
        return reasons


class OfflineDecisionOut(BaseModel):
    offline_decision_id: uuid.UUID
    request_id: str
    release_id: uuid.UUID | None
    verdict: Literal["recorded", "nothing_to_record", "decided_online", "flagged"]
    flag: Literal["used_offline_twice", "used_online_meanwhile", "changed_after_pass", "pass_invalid",
                  "not_supported_by_pass", "contradicts_online"] | None
    other_decision_id: uuid.UUID | None = Field(description="The decision that used the right first, when flagged.")


def _uow_factory(request: Request) -> Any:
    s = request.app.state.container.settings
    engine = request.app.state.container.engine
    required = s.ban_register_jwk is not None or s.ban_register_jwk_path is not None
    return lambda: SqlOfflineUnitOfWork(engine, ban_list_required=required,
                                        ban_list_max_age=timedelta(seconds=s.ban_list_max_age))


def _signer(request: Request) -> KeyStorePassSigner:
    return KeyStorePassSigner(request.app.state.identity.keys)


def badge_hashes_for(app: Any) -> BadgeHashSlots:
    """The process's slots for the reconcile's badge hashes (QUAYGATE_GATE_OFFLINE_HASH_SLOTS)."""
    return built_once(app, "gate_badge_hashes",
                      lambda: BadgeHashSlots(slots=app.state.container.settings.gate_offline_hash_slots))


# A report answered busy is sent again by its adapter at its next reconcile (every few seconds): a second
# is what a slot's queue takes to clear.
BUSY_RETRY_AFTER = 1


@router.get("/passes", operation_id="listGatePasses", response_model=PassesResponse,
            responses=problem_responses(401, 403),
            summary="Short-lived signed gate passes for the rights nominated to this gate's terminal.",
            description=(
                "One pass per right nominated to the terminal and valid now, or gated in there within "
                "QUAYGATE_GATE_PASS_MAX_DWELL (12 hours by default: its gate-out). At most "
                f"{service.MAX_PASSES}, the most relevant kept: the rights gated in (the latest first), then "
                "slots on or to come (the nearest first), slots missed (the latest first), no slot (the "
                "soonest to lapse first)."))
def passes(request: Request, response: Response, actor: Actor = Depends(GATE), outbox_id: str | None = _OUTBOX_ID,
           outbox_seq: int | None = _OUTBOX_SEQ, outbox_intact: bool = _OUTBOX_INTACT) -> dict[str, Any]:
    c = request.app.state.container
    response.headers["Cache-Control"] = "no-store"  # an answer of now, never kept for later (review 155)
    s = c.settings
    # A pass never outlives the time a retired key stays in our JWKS (identity/keys.py, token_ttl).
    ttl = timedelta(seconds=min(s.gate_pass_ttl, max(s.access_token_ttl, s.id_token_ttl)))
    told = None if outbox_id is None or outbox_seq is None else OutboxMark(outbox_id, outbox_seq, outbox_intact)
    return service.issue_passes(_uow_factory(request), actor, signer=_signer(request), issuer=s.issuer, ttl=ttl,
                                max_dwell=timedelta(seconds=s.gate_pass_max_dwell), now=c.clock.now(), outbox=told,
                                hashes=CachedBadgeHashes(c.cache))


@router.post("/offline-decisions", operation_id="reconcileOfflineGateDecision", response_model=OfflineDecisionOut,
             # The reported request is the verify request as the lane sent it, its face capture included
             # (gate_adapters/runtime/offline.py ``decide``): /verify's limit. The capture is never stored;
             # what is stored of a report is bounded field by field (reasons: the published codes).
             max_body_size=IMAGE_BODY_BYTES,
             responses=problem_responses(400, 401, 403, 409, 413, 422, 503),
             summary="Report a decision a gate took offline: recorded, or flagged for port security.",
             description=(
                 "503 `badge_hashing_busy`, with Retry-After: the badge read could not be hashed under the "
                 "pass's salt now (the service bounds the CPU these hashes take). Nothing was judged or "
                 "recorded: send the same report again."))
def offline_decision(request: Request, body: OfflineDecisionIn,
                     actor: Actor = Depends(GATE)) -> dict[str, Any] | JSONResponse:
    c = request.app.state.container
    report = service.OfflineReport(
        request=gate_request(body.request), decision=g.Outcome(body.decision), reasons=tuple(body.reasons),
        release_id=body.release_id, basis=body.basis, decided_at=body.decided_at,
        ban_list_age_seconds=None if body.ban_list_age_seconds is None else max(body.ban_list_age_seconds, 0),
        pass_token=body.gate_pass, outbox=None if body.outbox is None else OutboxMark(body.outbox.id, body.outbox.seq),
        face=None if body.face is None else body.face.model_dump(exclude_unset=True),
        override=None if body.override is None else service.OfflineOverride(
            id=body.override.id, officer=body.override.officer, reason=body.override.reason,
            decision_id=body.override.decision_id, overridden_at=body.override.overridden_at,
            # The refusal it sets aside is this very report without it: recorded under that fingerprint.
            refusal_fingerprint=_fingerprint(body.model_copy(update={"override": None}))))
    try:
        return service.reconcile(_uow_factory(request), actor, report, signer=_signer(request),
                                 issuer=c.settings.issuer, fingerprint=_fingerprint(body), now=c.clock.now(),
                                 hasher=badge_hashes_for(request.app))
    except HashingBusy:
        log.warning("release.verify.offline.hashing_busy", extra={"fields": {"terminal": report.request.terminal}})
        return problem(503, "badge_hashing_busy", "The badge read cannot be checked against the pass now; "
                       "nothing was recorded: send the report again.", instance=request.url.path,
                       headers={"Retry-After": str(BUSY_RETRY_AFTER)})


def _fingerprint(body: OfflineDecisionIn) -> str:
    # The outbox place is where the adapter keeps it, not what it decided: a report sent before its adapter
    # told places, and again after, is the same report. A report without a face (an adapter from before
    # it told one) keeps the fingerprint it was recorded under then.
    leave = {"outbox"} if body.face is not None else {"outbox", "face"}
    return hashlib.sha256(body.model_dump_json(exclude=leave).encode()).hexdigest()


class KeyStorePassSigner:
    """Gate passes under our key set: ES256 only (explicit registry), typ ``gate-pass+jwt`` so no other
    JWT we sign (access token, id token) is ever taken for a pass, nor a pass for one (RFC 8725 §3.11).

    A pass signed by a key since rotated out stays genuine for what it signed while it was active (its
    ``iat`` not after the key's retirement), however long ago: an offline gate-in may be reported days
    late, and a key leaves the published set minutes after a rotation (identity/keys.py). Without this
    an honest gate-in reported after a rotation was flagged ``pass_invalid`` and nothing moved, so the
    right stayed usable by a second truck (review 121). A pass dated after the key's retirement is not
    ours: that key signed nothing then, beyond the key store's reload period (a replica that had not yet
    reloaded its keys still signed with it: review 132). A revoked key's passes are never ours
    (``rotated_out`` does not return it)."""

    _registry = JWSRegistry(algorithms=[PASS_ALG])

    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys

    def sign(self, claims: dict[str, Any]) -> str:
        return sign_jwt(claims, self._keys.signing_key(PASS_ALG), typ=PASS_TYP)

    def verify(self, token: str) -> dict[str, Any] | None:
        if not token or len(token) > MAX_PASS_LENGTH:
            return None
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
            header = obj.headers()
            if header.get("alg") != PASS_ALG or header.get("typ") != PASS_TYP or not isinstance(header.get("kid"), str):
                return None
            key = next((k for k in self._keys.public_key_set(refresh=True, kid=header["kid"])
                        if k.kid == header["kid"] and fits(k, PASS_ALG)), None)
            retired_at = None
            if key is None and (rotated := self._keys.rotated_out(header["kid"])) is not None:
                key, retired_at = rotated
                key = key if fits(key, PASS_ALG) else None
            if key is None or not jws.validate_compact(obj, key, registry=self._registry):
                return None
            claims = json.loads(obj.payload)
        except (JoseError, ValueError, UnicodeEncodeError):
            log.info("release.gate.pass_refused")
            return None
        if not isinstance(claims, dict):
            return None
        if retired_at is not None and not signed_while_active(
                claims, retired_at, reload=timedelta(seconds=self._keys.reload_every)):
            log.warning("release.gate.pass_refused.after_rotation", extra={"fields": {"kid": header["kid"]}})
            return None
        return claims

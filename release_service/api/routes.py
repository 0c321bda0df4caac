"""The party API under /api/v1: thin routes; rules live in the domain, transactions in the services."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from identity.domain.assurance import ACR_PASSKEY
from quaygate.limits import BATCH_BODY_BYTES
from quaygate.routing import AdmitFirst
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain import disclosure, storable
from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import Actor
from release_service.domain.release import LightKind, LightStatus, RefusalReason, State
from release_service.ports import ReleaseFilter, UnitOfWork
from release_service.services import issue, lifecycle, nominate, queries, respond, transfers
from release_service.services.common import IdempotencyRequest, IfMatch, run

from . import schemas as s
from .auth import require
from .preconditions import ETAG_HEADER, Precondition, etag, stated
from .problems import problem_responses

T = TypeVar("T")

READ = require("releases:read", member="read")
WRITE = require("releases:write", member="act")
# A driver answers for himself, so the token must come from a passkey login or stronger (RFC 9470).
RESPOND = require("nominations:respond", min_acr=ACR_PASSKEY)
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255,
           description="Repeat a POST or PUT safely: the same key gives the same answer and no second effect. "
                       "The same key with another request (another body, or another `If-Match`) is 422 "
                       "`idempotency_key_reused`. A key is kept for 24 hours from its first request by default "
                       "(the deployment's `QUAYGATE_IDEMPOTENCY_RETENTION_SECONDS`, 1 hour to 30 days): past "
                       "that it is forgotten, and a request under it is a new request, done again. Use a new "
                       "key for each new request, and retry within the window."),
]
ReleaseId = Annotated[uuid.UUID, Path(description="The release right's id.")]
TransferId = Annotated[uuid.UUID, Path(description="The transfer's id.")]
WRITE_ERRORS = problem_responses(400, 401, 403, 404, 409, 422)
# A write on a right that exists: If-Match honoured (api/preconditions.py), 412 when it no longer holds.
RIGHT_WRITE_ERRORS = problem_responses(400, 401, 403, 404, 409, 412, 422)
# ... and its answer carries the right: with its ETag.
RIGHT_WRITTEN = {**RIGHT_WRITE_ERRORS, 200: {"headers": ETAG_HEADER}}

router = APIRouter(prefix="/api/v1", tags=["releases"], route_class=AdmitFirst)


def unit_of_work(container: Any, *, readonly: bool = False, autocommit: bool = False) -> SqlUnitOfWork:
    """A unit of work with port-ban screening as the settings say: once a register key is configured,
    a nomination with no ban list in force (or one older than ban_list_max_age) screens unavailable."""
    s = container.settings
    required = s.ban_register_jwk is not None or s.ban_register_jwk_path is not None
    return SqlUnitOfWork(container.engine, readonly=readonly, autocommit=autocommit, ban_list_required=required,
                         ban_list_max_age=timedelta(seconds=s.ban_list_max_age),
                         idempotency_retention=timedelta(seconds=s.idempotency_retention_seconds))


def _execute(request: Request, actor: Actor, key: str | None, body: BaseModel | None,
             action: Callable[[UnitOfWork, datetime], T],
             render: Callable[[T, datetime], tuple[int, Any]], if_match: IfMatch | None = None) -> JSONResponse:
    container = request.app.state.container
    now = container.clock.now()
    idem = None
    if key is not None:
        payload = body.model_dump_json() if body is not None else ""
        what = f"{request.method} {request.url.path}\n{payload}"
        if if_match is not None:  # the version it is conditioned on: a retry stating another is another request
            what += f"\nIf-Match: {stated(if_match)}"
        digest = hashlib.sha256(what.encode()).hexdigest()
        idem = IdempotencyRequest(_idempotency_owner(actor), key, digest)
    status, content = run(unit_of_work(container), lambda uow: action(uow, now),
                          lambda result: render(result, now), idempotency=idem, now=now)
    return JSONResponse(content, status_code=status, headers=_etag_of(content))


def _etag_of(content: Any) -> dict[str, str] | None:
    """An answer that carries a right (``_with_receipt``, a replay of one included): its ETag, the version
    the body shows (RFC 9110 §8.8.3), for a later write's If-Match."""
    release = content.get("release") if isinstance(content, dict) else None
    version = release.get("version") if isinstance(release, dict) else None
    return {"ETag": etag(version)} if isinstance(version, int) else None


def _idempotency_owner(actor: Actor) -> str:
    """Whose keys these are: the client, or for a person the person at that client. Persons share a client
    (every driver the driver app, every member his company's console): one's key must not replay his
    answer to another, nor block him."""
    if actor.person_id is None:
        return actor.client_id
    return f"person:{actor.person_id}:{hashlib.sha256(actor.client_id.encode()).hexdigest()[:16]}"


def _read(request: Request, fn: Callable[[UnitOfWork, datetime], Any]) -> Any:
    container = request.app.state.container
    with unit_of_work(container, readonly=True) as uow:
        return fn(uow, container.clock.now())


def _with_receipt(actor: Actor, status: int = 200) -> Callable[[tuple[Any, Any], datetime], tuple[int, Any]]:
    """The answer to a write that changed a right: the right as ``actor`` may read it (domain/disclosure.py,
    as GET shows it: a haulier's or a driver's answer carries no customs reason; review 115) and the receipt.
    An idempotent replay sends the same body."""
    def render(result: tuple[Any, Any], now: datetime) -> tuple[int, Any]:
        right, receipt = result
        shown, _ = disclosure.minimise_right(right, actor)
        return status, {"release": s.release_out(shown, now), "receipt": receipt.as_dict()}

    return render


def _transfer_receipt(result: tuple[Any, Any], now: datetime, status: int = 200) -> tuple[int, Any]:
    t, receipt = result
    return status, {"transfer": s.transfer_out(t), "receipt": receipt.as_dict()}


def _issue_cmd(b: s.IssueRequest) -> issue.IssueCommand:
    return issue.IssueCommand(b.container_number, b.bill_of_lading, b.vessel_call, b.terminal,
                              b.release_to_organisation_id, b.valid_from, b.valid_until, LightStatus(b.commercial))


@router.post("/releases", operation_id="issueRelease", status_code=201, response_model=s.ReleaseWithReceipt,
             responses={**WRITE_ERRORS, 201: {"headers": ETAG_HEADER}},
             summary="Issue a release right to a first release party")
def issue_release(request: Request, body: s.IssueRequest, actor: Actor = Depends(WRITE),
                  idempotency_key: IdempotencyKey = None) -> JSONResponse:
    return _execute(request, actor, idempotency_key, body,
                    lambda uow, now: issue.issue(uow, actor, _issue_cmd(body), now),
                    _with_receipt(actor, 201))


@router.post("/releases:batch", operation_id="issueReleaseBatch", status_code=200, response_model=s.BatchOut,
             max_body_size=BATCH_BODY_BYTES,
             responses=problem_responses(400, 401, 403, 413, 422),
             summary="Issue up to 10 000 rights for a vessel call; each item succeeds or fails on its own")
def issue_batch(request: Request, body: s.BatchRequest, actor: Actor = Depends(WRITE),
                idempotency_key: IdempotencyKey = None) -> JSONResponse:
    def render(results: list[issue.BatchItemResult], now: datetime) -> tuple[int, Any]:
        items = [{"index": r.index, "container_number": r.container_number,
                  "release_id": str(r.release_id) if r.release_id else None,
                  "error": _item_error(r.error) if r.error else None}
                 for r in results]
        created = sum(1 for r in results if r.release_id)
        return 200, {"created": created, "refused": len(results) - created, "items": items}

    return _execute(request, actor, idempotency_key, body,
                    lambda uow, now: issue.issue_batch(uow, actor, [_issue_cmd(b) for b in body.releases], now),
                    render)


@router.get("/releases", operation_id="listReleases", response_model=s.ReleasePage,
            responses=problem_responses(401, 403, 422), summary="Rights this caller holds, held or oversees")
def list_releases(
    request: Request,
    actor: Actor = Depends(READ),
    state: State | None = None,
    container_number: str | None = Query(default=None, max_length=20),
    vessel_call: str | None = Query(default=None, max_length=64),
    terminal: str | None = Query(default=None, max_length=32),
    bill_of_lading: str | None = Query(default=None, max_length=64),
    limit: int = Query(default=50, ge=1, le=500),
    cursor: str | None = Query(default=None, max_length=200),
) -> dict[str, Any]:
    flt = ReleaseFilter(state, container_number, vessel_call, terminal, bill_of_lading, limit + 1, _cursor(cursor))
    rights, now = _read(request, lambda uow, now: (queries.search(uow, actor, flt, now), now))
    page = rights[:limit]
    next_cursor = _encode_cursor(page[-1].created_at, page[-1].id) if len(rights) > limit else None
    return {"items": [s.release_out(r, now) for r in page], "next_cursor": next_cursor}


@router.get("/releases/{release_id}", operation_id="getRelease", response_model=s.ReleaseOut,
            responses={**problem_responses(401, 403, 404), 200: {"headers": ETAG_HEADER}})
def get_release(request: Request, response: Response, release_id: ReleaseId,
                actor: Actor = Depends(READ)) -> dict[str, Any]:
    """The right as this caller may read it; its ``ETag`` is its version, for a write's ``If-Match``."""
    def fn(uow: UnitOfWork, now: datetime) -> dict[str, Any]:
        right, chain = queries.get(uow, actor, release_id)
        return s.release_out(right, now, chain)

    shown = _read(request, fn)
    response.headers["ETag"] = etag(shown["version"])
    return shown


@router.get("/releases/{release_id}/events", operation_id="listReleaseEvents", response_model=s.EventList,
            responses=problem_responses(401, 403, 404))
def release_events(request: Request, release_id: ReleaseId, actor: Actor = Depends(READ)) -> dict[str, Any]:
    events = _read(request, lambda uow, now: queries.events(uow, actor, release_id))
    return {"items": [s.event_out(e) for e in events]}


# The transfer routes' If-Match names a version of the transfer's right (its ETag); their answers carry
# the transfer, not the right, so no ETag.
@router.post("/releases/{release_id}/transfers", operation_id="transferRelease", status_code=201,
             response_model=s.TransferWithReceipt, responses=RIGHT_WRITE_ERRORS)
def transfer_release(request: Request, release_id: ReleaseId, body: s.TransferRequest,
                     actor: Actor = Depends(WRITE), if_match: Precondition = None,
                     idempotency_key: IdempotencyKey = None) -> JSONResponse:
    return _execute(request, actor, idempotency_key, body,
                    lambda uow, now: transfers.transfer(uow, actor, release_id, body.to_organisation_id, now,
                                                        if_match=if_match),
                    lambda r, now: _transfer_receipt(r, now, 201), if_match=if_match)


@router.post("/transfers/{transfer_id}/accept", operation_id="acceptTransfer",
             response_model=s.TransferWithReceipt, responses=RIGHT_WRITE_ERRORS)
def accept_transfer(request: Request, transfer_id: TransferId, actor: Actor = Depends(WRITE),
                    if_match: Precondition = None, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    return _execute(request, actor, idempotency_key, None,
                    lambda uow, now: transfers.accept(uow, actor, transfer_id, now, if_match=if_match),
                    _transfer_receipt, if_match=if_match)


@router.post("/transfers/{transfer_id}/decline", operation_id="declineTransfer",
             response_model=s.TransferWithReceipt, responses=RIGHT_WRITE_ERRORS)
def decline_transfer(request: Request, transfer_id: TransferId, body: s.ReasonRequest | None = None,
                     actor: Actor = Depends(WRITE), if_match: Precondition = None,
                     idempotency_key: IdempotencyKey = None) -> JSONResponse:
    reason = body.reason if body else None
    return _execute(request, actor, idempotency_key, body,
                    lambda uow, now: transfers.decline(uow, actor, transfer_id, reason, now, if_match=if_match),
                    _transfer_receipt, if_match=if_match)


@router.post("/transfers/{transfer_id}/withdraw", operation_id="withdrawTransfer",
             response_model=s.TransferWithReceipt, responses=RIGHT_WRITE_ERRORS)
def withdraw_transfer(request: Request, transfer_id: TransferId, actor: Actor = Depends(WRITE),
                      if_match: Precondition = None, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    return _execute(request, actor, idempotency_key, None,
                    lambda uow, now: transfers.withdraw(uow, actor, transfer_id, now, if_match=if_match),
                    _transfer_receipt, if_match=if_match)


@router.put("/releases/{release_id}/nomination", operation_id="nominateDriver",
            response_model=s.ReleaseWithReceipt, responses=RIGHT_WRITTEN)
def nominate_driver(request: Request, release_id: ReleaseId, body: s.NominationRequest,
                    actor: Actor = Depends(WRITE), if_match: Precondition = None,
                    idempotency_key: IdempotencyKey = None) -> JSONResponse:
    cmd = nominate.NominateCommand(
        plate_text=body.plate.text, plate_country=body.plate.country, driver_person_id=body.driver_person_id,
        badge_scheme=body.badge.scheme if body.badge else None,
        badge_number=body.badge.number if body.badge else None,
        badge_card_uid=body.badge.card_uid if body.badge else None,
        trailer_text=body.trailer_plate.text if body.trailer_plate else None,
        trailer_country=body.trailer_plate.country if body.trailer_plate else None,
        slot_start=body.slot.start if body.slot else None, slot_end=body.slot.end if body.slot else None)
    return _execute(request, actor, idempotency_key, body,
                    lambda uow, now: nominate.nominate(uow, actor, release_id, cmd, now, if_match=if_match),
                    _with_receipt(actor), if_match=if_match)


@router.post("/releases/{release_id}/nomination:accept", operation_id="acceptNomination",
             response_model=s.ReleaseWithReceipt, responses=RIGHT_WRITTEN,
             summary="The nominated driver confirms the pickup")
def accept_nomination(request: Request, release_id: ReleaseId, actor: Actor = Depends(RESPOND),
                      if_match: Precondition = None, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    return _execute(request, actor, idempotency_key, None,
                    lambda uow, now: respond.accept(uow, actor, release_id, now, if_match=if_match),
                    _with_receipt(actor), if_match=if_match)


@router.post("/releases/{release_id}/nomination:refuse", operation_id="refuseNomination",
             response_model=s.ReleaseWithReceipt, responses=RIGHT_WRITTEN,
             summary="The nominated driver refuses the pickup; the operator must nominate again")
def refuse_nomination(request: Request, release_id: ReleaseId, body: s.RefusalRequest | None = None,
                      actor: Actor = Depends(RESPOND), if_match: Precondition = None,
                      idempotency_key: IdempotencyKey = None) -> JSONResponse:
    reason = RefusalReason(body.reason) if body and body.reason else None
    return _execute(request, actor, idempotency_key, body,
                    lambda uow, now: respond.refuse(uow, actor, release_id, reason, now, if_match=if_match),
                    _with_receipt(actor), if_match=if_match)


@router.patch("/releases/{release_id}", operation_id="updateRelease", response_model=s.ReleaseWithReceipt,
              responses=RIGHT_WRITTEN, summary="The line changes the validity window or the B/L")
def update_release(request: Request, release_id: ReleaseId, body: s.UpdateRequest,
                   actor: Actor = Depends(WRITE), if_match: Precondition = None,
                   idempotency_key: IdempotencyKey = None) -> JSONResponse:
    return _execute(request, actor, idempotency_key, body,
                    lambda uow, now: lifecycle.update(uow, actor, release_id, now, valid_from=body.valid_from,
                                                      valid_until=body.valid_until,
                                                      bill_of_lading=body.bill_of_lading, if_match=if_match),
                    _with_receipt(actor), if_match=if_match)


def _line_action(name: str, fn: Callable[..., Any], summary: str) -> None:
    def endpoint(request: Request, release_id: ReleaseId, body: s.ReasonRequest | None = None,
                 actor: Actor = Depends(WRITE), if_match: Precondition = None,
                 idempotency_key: IdempotencyKey = None) -> JSONResponse:
        reason = body.reason if body else None
        return _execute(request, actor, idempotency_key, body,
                        lambda uow, now: fn(uow, actor, release_id, reason, now, if_match=if_match),
                        _with_receipt(actor), if_match=if_match)

    router.add_api_route(f"/releases/{{release_id}}/{name}", endpoint, methods=["POST"],
                         operation_id=f"{name}Release", response_model=s.ReleaseWithReceipt,
                         responses=RIGHT_WRITTEN, summary=summary, name=f"{name}_release")


_line_action("block", lifecycle.block, "The line freezes the right")
_line_action("unblock", lifecycle.unblock, "The line lifts its block")
_line_action("revoke", lifecycle.revoke, "The line ends the right and every downstream hold")
_line_action("delete", lifecycle.delete, "The line withdraws a right issued in error")


@router.put("/releases/{release_id}/lights/{light}", operation_id="setLight",
            response_model=s.ReleaseWithReceipt, responses=RIGHT_WRITTEN,
            summary="Set the commercial (line), customs (customs) or terminal (terminal) light")
def set_light(request: Request, release_id: ReleaseId, light: LightKind, body: s.LightRequest,
              actor: Actor = Depends(WRITE), if_match: Precondition = None,
              idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Lights are last-writer-wins unless conditioned: send the right's ETag in ``If-Match`` so that a late
    retry of an earlier light (a release after a later scan hold) is refused 412 instead of lifting it. Only
    a green is refused for a stale version: a red or scan hold goes through at any version."""
    return _execute(request, actor, idempotency_key, body,
                    lambda uow, now: lifecycle.set_light(uow, actor, release_id, light, LightStatus(body.status),
                                                         body.reason, now, if_match=if_match),
                    _with_receipt(actor), if_match=if_match)


def _item_error(error: DomainError) -> dict[str, str]:
    """A refused item's code and detail, and the field at fault when the rule names one."""
    field = error.context.get("field")
    return {"code": error.code.value, "detail": error.message, **({"field": field} if isinstance(field, str) else {})}


def _cursor(raw: str | None) -> tuple[datetime, uuid.UUID] | None:
    if raw is None:
        return None
    try:
        at, _, rid = base64.urlsafe_b64decode(raw.encode() + b"==").decode().partition("|")
        # The API gives out UTC times only; a time without an offset, or past what is stored, is not ours.
        return storable.utc_time(datetime.fromisoformat(at)), uuid.UUID(rid)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DomainError(ErrorCode.INVALID_CURSOR, "The cursor is not one this API gave out.") from exc


def _encode_cursor(at: datetime, rid: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{rid}".encode()).decode().rstrip("=")


"""The badge register's admin API (``/admin/v1/badges``, issue 4).

Two routes keep their names because badge-office systems call them: ``GET /admin/v1/badges?number=``
and ``POST /admin/v1/badges/{id}/status`` with ``{"status": ..., "reason": ...}``.

Every route first checks the caller explicitly with ``admin_caller``: an admin client's token with the
``admin`` scope, or a person's token from the admin console (port security or badge office, passkey
login; identity.api.admin). A console officer is the badge office with the badge_office role. A route
with a body checks its caller on the headers, before any of the body is read (``admits``), and its
token again once the body is read.
Who counts as the badge office: an admin token that also carries the
``badges:office`` scope (identity.domain.scopes). Only the badge office sees badge numbers and card
UIDs in full; every other admin token sees them masked (issue 4). An admin client registered
without that scope, or asking for a narrower token, is port security without the badge office's view.

An officer never issues, reactivates, renews or activates his own badge through the console (403
``own_badge``), as he never suspends, reinstates or widens himself (identity.api.admin): whatever opens
the gates to him is another officer's act.

Routes are thin: the use cases are identity.badges.service; errors carry codes, and ``_STATUS`` is
the one table mapping them to RFC 9457 problems.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from quaygate.limits import UtcTime
from quaygate.routing import AdmitFirst
from release_service.api.problems import problem, problem_responses

from ..badges.service import BadgeError, BadgeService, Desk, IssueBadge
from ..badges.store import BadgeRow
from ..domain import badges as rules
from ..domain.claims import BADGE_OFFICE_ROLE
from .admin import (
    AdminCaller,
    AdminCheck,
    AdminRefused,
    admin_caller,
    admits,
    audit_read,
    caller_of,
    own_refused,
    query_fingerprint,
    require_role,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/admin/v1", tags=["badges admin"], route_class=AdmitFirst)

# Error code -> HTTP status (the one mapping table of this edge, STYLE.md #6). Unlisted codes: 422.
_STATUS = {
    "not_found": 404,
    "badge_number_taken": 409, "card_uid_taken": 409, "already_activated": 409, "not_activated": 409,
    "concurrent_change": 409, "badge_final": 409, "transition_refused": 409, "status_unchanged": 409,
    "renew_required": 409, "badge_expired": 409, "badge_inactive": 409, "badge_blocked": 409,
    "badge_revoked": 409, "person_banned": 409,
    "not_this_terminal": 403,
    "screening_unavailable": 503,
}
_ERRORS = problem_responses(401, 403, 404, 409, 422)


class BadgeIn(BaseModel):
    person_id: uuid.UUID
    scheme: str = Field(description="alfapass or portpass")
    number: str = Field(max_length=32, description="AP-nnnnnn (Luhn) or PPnnnnnnnn (MOD 97-10)")
    card_uid: str | None = Field(default=None, max_length=40, description="4, 7 or 10 bytes in hex")
    employer_organisation_id: uuid.UUID | None = None
    valid_from: UtcTime = Field(description=(
        f"RFC 3339 with an offset; at most {rules.MAX_LEAD_DAYS} days ahead of now"))
    valid_until: UtcTime = Field(description=(
        f"RFC 3339 with an offset; after now, at most {rules.MAX_VALIDITY_YEARS} years after valid_from"))
    reason: str = Field(default="issued", max_length=500)


class StatusIn(BaseModel):
    status: str = Field(description="active, inactive, blocked, revoked or expired")
    reason: str = Field(max_length=500)


class RenewIn(BaseModel):
    valid_until: UtcTime = Field(description=(
        f"RFC 3339 with an offset; after now and after the badge's valid_from, at most "
        f"{rules.MAX_VALIDITY_YEARS} years from the renewed validity's start (now, or the badge's valid_from "
        f"while that is still ahead)"))
    reason: str = Field(max_length=500)


class ActivationIn(BaseModel):
    terminal: str = Field(min_length=1, max_length=32)


class WithdrawIn(BaseModel):
    reason: str = Field(max_length=500)


def _badge_office(request: Request) -> AdminCaller:
    """The badge office's job: an admin client, or a person with the badge_office role through the
    console; else AdminRefused."""
    return require_role(admin_caller(request), BADGE_OFFICE_ROLE)


def _caller(request: Request, check: AdminCheck = admin_caller) -> tuple[str, rules.Viewer]:
    """Who acts (as badge histories store it) and how they see badges: an admin client, or a person
    through the admin console (``admin_caller`` checks role and passkey login; ``_badge_office`` when
    the action is that role's job), as admitted before the body was read (``caller_of``); only the
    badge office sees numbers in full, and a person his own badge."""
    caller = caller_of(request, check)
    return caller.actor, _viewer(caller)


def _viewer(caller: AdminCaller) -> rules.Viewer:
    person = uuid.UUID(caller.person_id) if caller.person_id else None
    return rules.Viewer(badge_office=caller.badge_office, person_id=person)


def _desk(caller: AdminCaller) -> Desk | None:
    """Where a console officer activates and withdraws: his memberships say (review 144, finding 1;
    identity.badges.service ``Desk``). An admin client (no person): every terminal."""
    if caller.person_id is None:
        return None
    return Desk(uuid.UUID(caller.person_id), caller.roles)


def _refuse_own(viewer: rules.Viewer, holder: uuid.UUID) -> None:
    """AdminRefused 403 ``own_badge`` when the console officer acting is the badge's holder: a badge
    of his own he does not issue, reactivate, renew nor activate (an admin client names no person)."""
    if viewer.person_id is not None and viewer.person_id == holder:
        raise own_refused("own_badge", "An officer does not issue, reactivate, renew or activate his own badge.")


def _holder(request: Request, badge_id: uuid.UUID) -> uuid.UUID:
    """The badge's holder (BadgeError not_found): a badge never changes hands, so read before the change."""
    return _service(request).holder(badge_id)


def _service(request: Request) -> BadgeService:
    # The port-ban register's adapter, once wired, sits on app.state.ban_screening.
    return BadgeService(request.app.state.container.engine, getattr(request.app.state, "ban_screening", None))


def _now(request: Request) -> datetime:
    now: datetime = request.app.state.container.clock.now()
    return now


def _failed(request: Request, exc: BadgeError) -> JSONResponse:
    return problem(_STATUS.get(exc.code, 422), exc.code, exc.message, instance=request.url.path)


def _badge(row: BadgeRow, viewer: rules.Viewer) -> dict[str, Any]:
    full = rules.sees_in_full(holder=row.person_id, viewer=viewer)
    return {
        "id": str(row.id), "person_id": str(row.person_id), "scheme": row.scheme,
        "number": row.number if full else rules.mask_number(row.number),
        "card_uid": row.card_uid if full or row.card_uid is None else rules.mask_card_uid(row.card_uid),
        "masked": not full,
        "employer_organisation_id": str(row.employer_organisation_id) if row.employer_organisation_id else None,
        "status": row.status.value, "status_reason": row.status_reason,
        "valid_from": row.valid_from.isoformat(), "valid_until": row.valid_until.isoformat(),
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }


def _activation(a: dict[str, Any]) -> dict[str, Any]:
    return {"terminal": a["terminal_code"], "activated_by": a["activated_by"],
            "activated_at": a["activated_at"].isoformat()}


def _event(e: dict[str, Any]) -> dict[str, Any]:
    return {"seq": e["seq"], "from": e["from_status"], "to": e["to_status"], "by": e["actor"], "reason": e["reason"],
            "at": e["at"].isoformat()}


@router.get("/badges", operation_id="admin_find_badges", responses=_ERRORS)
def find_badges(request: Request, number: str | None = None, card_uid: str | None = None,
                person_id: uuid.UUID | None = None) -> JSONResponse:
    """Badges by number (any scheme), by card UID or by holder."""
    try:
        caller = admin_caller(request)
        # Who searched what, not what was found; a number or card UID only as a keyed hash (issue 4).
        audit_read(request, caller, "identity.admin.badges.searched", data={
            "number": query_fingerprint(request, number) if number is not None else None,
            "card_uid": query_fingerprint(request, card_uid) if card_uid is not None else None,
            "person_id": str(person_id) if person_id else None})
        viewer = _viewer(caller)
        rows = _service(request).find(number=number, card_uid=card_uid, person_id=person_id)
    except AdminRefused as exc:
        return exc.response(request)
    except BadgeError as exc:
        return _failed(request, exc)
    return JSONResponse({"items": [_badge(r, viewer) for r in rows]})


@router.post("/badges", operation_id="admin_issue_badge", status_code=201,
             responses=problem_responses(401, 403, 404, 409, 422, 503))
@admits(_badge_office)
def issue_badge(request: Request, body: BadgeIn) -> JSONResponse:
    """Issue a badge to a person, screened against the port-ban list first (the badge office's job)."""
    try:
        admin, viewer = _caller(request, _badge_office)
        _refuse_own(viewer, body.person_id)
        done = _service(request).issue(IssueBadge(**body.model_dump()), actor=admin, now=_now(request))
    except AdminRefused as exc:
        return exc.response(request)
    except BadgeError as exc:
        return _failed(request, exc)
    return JSONResponse({**_badge(done.badge, viewer), "screening": done.screening.status,
                         "screening_list_age_seconds": done.screening.list_age_seconds}, status_code=201)


@router.get("/badges/{badge_id}", operation_id="admin_get_badge", responses=_ERRORS)
def get_badge(badge_id: uuid.UUID, request: Request) -> JSONResponse:
    """One badge with its live activations and its status history."""
    try:
        caller = admin_caller(request)
        audit_read(request, caller, "identity.admin.badge.viewed", subject=str(badge_id))
        viewer = _viewer(caller)
        row, activations, history = _service(request).get(badge_id)
    except AdminRefused as exc:
        return exc.response(request)
    except BadgeError as exc:
        return _failed(request, exc)
    return JSONResponse({**_badge(row, viewer), "activations": [_activation(a) for a in activations],
                         "history": [_event(e) for e in history]})


@router.post("/badges/{badge_id}/status", operation_id="admin_change_badge_status", responses=_ERRORS)
@admits(admin_caller)
def change_status(badge_id: uuid.UUID, request: Request, body: StatusIn) -> JSONResponse:
    """Suspend (inactive), reinstate (active), block, revoke or expire a badge, saying why."""
    try:
        admin, viewer = _caller(request)
        if body.status == rules.BadgeStatus.ACTIVE.value:
            _refuse_own(viewer, _holder(request, badge_id))
        row = _service(request).change_status(badge_id, body.status, reason=body.reason, actor=admin,
                                              now=_now(request))
    except AdminRefused as exc:
        return exc.response(request)
    except BadgeError as exc:
        return _failed(request, exc)
    return JSONResponse(_badge(row, viewer))


@router.post("/badges/{badge_id}/renew", operation_id="admin_renew_badge", responses=_ERRORS)
@admits(_badge_office)
def renew_badge(badge_id: uuid.UUID, request: Request, body: RenewIn) -> JSONResponse:
    """A new validity up to valid_until (at most 5 years), from now, or from the badge's valid_from while
    that is still ahead (a renewal never makes a badge usable sooner); an expired badge becomes active
    again. The audit entry keeps the reason and the validity before and after (badge office)."""
    try:
        admin, viewer = _caller(request, _badge_office)
        _refuse_own(viewer, _holder(request, badge_id))
        row = _service(request).renew(badge_id, valid_until=body.valid_until, reason=body.reason, actor=admin,
                                      now=_now(request))
    except AdminRefused as exc:
        return exc.response(request)
    except BadgeError as exc:
        return _failed(request, exc)
    return JSONResponse(_badge(row, viewer))


@router.post("/badges/{badge_id}/activations", operation_id="admin_activate_badge", status_code=201,
             responses=_ERRORS)
@admits(admin_caller)
def activate_badge(badge_id: uuid.UUID, request: Request, body: ActivationIn) -> JSONResponse:
    """Activate the badge at a terminal (the terminal's security desk has checked the holder). Through
    the console, a terminal's security desk (a console role in its organisation) activates at that
    terminal only, the port authority's officers at every one (403 ``not_this_terminal``)."""
    try:
        caller = caller_of(request)
        viewer = _viewer(caller)
        _refuse_own(viewer, _holder(request, badge_id))
        _service(request).activate(badge_id, body.terminal, actor=caller.actor, now=_now(request),
                                   desk=_desk(caller))
    except AdminRefused as exc:
        return exc.response(request)
    except BadgeError as exc:
        return _failed(request, exc)
    return JSONResponse({"badge_id": str(badge_id), "terminal": body.terminal, "active": True}, status_code=201)


@router.post("/badges/{badge_id}/activations/{terminal}:withdraw", operation_id="admin_withdraw_badge_activation",
             responses=_ERRORS)
@admits(admin_caller)
def withdraw_activation(badge_id: uuid.UUID, terminal: str, request: Request, body: WithdrawIn) -> JSONResponse:
    """Withdraw the badge's activation at a terminal, saying why. Through the console, as an activation:
    a terminal's security desk at that terminal only (403 ``not_this_terminal``)."""
    try:
        caller = caller_of(request)
        _service(request).withdraw(badge_id, terminal, reason=body.reason, actor=caller.actor, now=_now(request),
                                   desk=_desk(caller))
    except AdminRefused as exc:
        return exc.response(request)
    except BadgeError as exc:
        return _failed(request, exc)
    return JSONResponse({"badge_id": str(badge_id), "terminal": terminal, "active": False})


@router.get("/persons/{person_id}/badges", operation_id="admin_list_person_badges", responses=_ERRORS)
def person_badges(person_id: uuid.UUID, request: Request) -> JSONResponse:
    """Every badge of a person, whatever its status."""
    try:
        caller = admin_caller(request)
        audit_read(request, caller, "identity.admin.person_badges.viewed", subject=str(person_id))
        viewer = _viewer(caller)
        rows = _service(request).find(person_id=person_id)
    except AdminRefused as exc:
        return exc.response(request)
    return JSONResponse({"items": [_badge(r, viewer) for r in rows]})

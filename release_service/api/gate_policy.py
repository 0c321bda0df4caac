"""A terminal's gate policy over the admin API (issue 5; SPEC.md "Each terminal has a policy").

    GET /admin/v1/terminals/{code}/gate-policy   the policy in force (the defaults when none was set)
    PUT /admin/v1/terminals/{code}/gate-policy   change the fields given; the others keep their value

Callers (identity/api/admin.py ``admin_caller``, checked at the top of each route): an admin client, or a
person through the admin console (passkey login). Reading needs a console role (port security or the
badge office); changing needs ``port_security_admin``. The body is ``TerminalPolicy``'s own fields
(services/gate_policy.py builds the schema and the checks from the dataclass). ``ETag`` on both answers;
``If-Match`` on PUT refuses a change to a policy changed meanwhile (RFC 9110 §13.1.1, 412). A change is
audited (``release.gate_policy.changed``, who, when, old and new) and seen by the very next verify
(``set_policy`` touches the POLICY generation every cache checks).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Path, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from identity.api.admin import (
    AdminCaller,
    AdminRefused,
    admin_caller,
    admits,
    audit_read,
    caller_of,
    port_security,
)
from quaygate.routing import AdmitFirst
from release_service.adapters.sqla.gate_policy import SqlTerminalRegistry
from release_service.domain import gate as g
from release_service.services import gate_policy as service

from .problems import problem, problem_responses
from .routes import unit_of_work

# AdmitFirst: a change's caller is checked on the headers before its body is read, and again after.
router = APIRouter(prefix="/admin/v1/terminals", tags=["gate policy admin"], route_class=AdmitFirst)

_STATUS = {"unknown_terminal": 404, "unknown_policy_field": 422, "invalid_policy": 422, "policy_changed": 412}
_CODE = Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _json_type(default: Any) -> dict[str, Any]:
    if isinstance(default, bool):
        return {"type": "boolean"}
    if isinstance(default, int):
        return {"type": "integer"}
    if isinstance(default, float):
        return {"type": "number"}
    return {"type": "string"}


# The bounds the domain holds a number to that are not 0 to 1 (TerminalPolicy.__post_init__), shown in the
# schema; the domain checks them (invalid_policy, 422).
_BOUNDS = {"face_min_score": (g.FACE_MIN_SCORE_FLOOR, 1.0),
           "face_tolerance": (g.FACE_MIN_TOLERANCE, g.FACE_MAX_TOLERANCE)}


def _property(name: str, default: Any) -> dict[str, Any]:
    choices = service.CHOICES.get(name)
    bounds = _BOUNDS.get(name)
    return {**_json_type(default), **({"enum": list(choices)} if choices else {}),
            **({"minimum": bounds[0], "maximum": bounds[1]} if bounds else {}), "default": default}


_POLICY_SCHEMA = {"type": "object", "additionalProperties": False,
                  "properties": {n: _property(n, d) for n, d in service.DEFAULTS.items()}}
_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": _POLICY_SCHEMA}}}}


def _answer(view: service.PolicyView, **extra: Any) -> JSONResponse:
    return JSONResponse({**view.as_json(), **extra}, headers={"ETag": view.etag})


def _refused(request: Request, exc: service.PolicyRefused) -> JSONResponse:
    status = _STATUS[exc.code]
    title = {"title": "Precondition failed"} if status == 412 else {}
    return problem(status, exc.code, exc.detail, instance=request.url.path, **title)


def _show(request: Request, code: str) -> service.PolicyView:
    with unit_of_work(request.app.state.container, readonly=True) as uow:
        return service.show(uow.gate, SqlTerminalRegistry(uow.connection), code)


def _change(request: Request, code: str, changes: dict[str, Any], caller: AdminCaller,
            if_match: str | None) -> tuple[service.PolicyView, list[str]]:
    container = request.app.state.container
    with unit_of_work(container) as uow:
        _, after, names = service.change(uow, SqlTerminalRegistry(uow.connection), code, changes,
                                         actor=caller.audit_actor, by=caller.actor, now=container.clock.now(),
                                         if_match=if_match)
    return after, names


@router.get("/{code}/gate-policy", operation_id="admin_get_gate_policy",
            responses=problem_responses(401, 403, 404, 422))
async def get_gate_policy(request: Request, code: str = _CODE) -> JSONResponse:
    """The terminal's gate policy in force, with who changed it last."""
    try:
        caller = admin_caller(request)
    except AdminRefused as exc:
        return exc.response(request)
    try:
        view = await run_in_threadpool(_show, request, code)
    except service.PolicyRefused as exc:
        return _refused(request, exc)
    await run_in_threadpool(audit_read, request, caller, "identity.admin.gate_policy.viewed",
                            subject=f"terminal:{code}")
    return _answer(view)


@router.put("/{code}/gate-policy", operation_id="admin_set_gate_policy", openapi_extra=_BODY,
            responses=problem_responses(401, 403, 404, 412, 422))
@admits(port_security)
async def set_gate_policy(request: Request, code: str = _CODE,
                          changes: dict[str, Any] = Body(..., include_in_schema=False)) -> JSONResponse:  # noqa: B008
    """Change the fields given (the others keep their value); refused values change nothing."""
    try:
        caller = caller_of(request, port_security)  # admitted on the headers, before the body was read
    except AdminRefused as exc:
        return exc.response(request)
    try:
        view, names = await run_in_threadpool(_change, request, code, changes, caller,
                                              request.headers.get("if-match"))
    except service.PolicyRefused as exc:
        return _refused(request, exc)
    return _answer(view, changed=names)

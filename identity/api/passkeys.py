"""Passkey routes (WebAuthn Level 3): the JSON contract the login, enrolment and account pages use.

Thin routes (STYLE.md #9): the use cases and every check are in ``identity.authn.service``. Bodies are
JSON. Every state-changing call must carry an ``Origin`` header naming one of our own origins (the
issuer's origin and ``QUAYGATE_WEBAUTHN_ORIGINS``): the login session is a cookie, so this is the CSRF
guard. Errors are RFC 9457 problem documents with a stable ``code``.

Contract (``<cred>`` is ``PublicKeyCredential.toJSON()`` from the browser)::

    POST /webauthn/authentication/options   {}
      200 {"flow", "publicKey": PublicKeyCredentialRequestOptionsJSON}   (allowCredentials [], UV required)
    POST /webauthn/authentication/verify    {"flow", "credential": <cred>, "return_to"?}
      200 {"ok": true, "return_to"}  + Set-Cookie session      return_to: a path under /oauth2/, /app/
                                                               or /account, anything else -> "/app/"
      400 challenge_expired | invalid_request   401 passkey_unknown | passkey_invalid | passkey_suspended
                                                passkey_suspended_privileged_role (suspended when a
                                                privileged role was granted: port security enrols anew)
      403 person_suspended | origin_refused     429 rate_limited (+ Retry-After: the address's login
                                                allowance is spent; no failure counts against a
                                                credential, whose id anyone may name: review 122)
      403 person_banned: a port ban in force, once a register is configured (the brokered login's rule)
    POST /webauthn/registration/options     {"enrolment_code"?}   (else a login session of < 15 min)
      200 {"flow", "publicKey": PublicKeyCredentialCreationOptionsJSON}   (excludeCredentials: the
          person's active passkeys with a session, none with an enrolment code)
      400 enrolment_code_unknown | enrolment_code_expired | enrolment_code_used
      401 login_required | reauthentication_required   403 person_suspended | origin_refused
      403 insufficient_authentication (the session's login is weaker than a passkey: a basic upstream one;
          or the person holds a privileged role and none of his privileged enrolments opened the session,
          an upstream login's above all: review 145, finding 1; "office": "port_security")
      429 rate_limited (with a code: the per-address login attempt limit)
    POST /webauthn/registration/verify      {"flow", "credential": <cred>, "name"?}
      201 {"credential_id", "name", "created_at"}  + Set-Cookie session when enrolled with a code
          (with a session, the existing session stays)
      400 challenge_expired | enrolment_code_* | invalid_name   401 passkey_invalid | login_required
      403 person_suspended | person_banned (as at login; an enrolment code stays unused)
      403 insufficient_authentication: a privileged role, as for the options (a role granted meanwhile)
      409 passkey_already_registered
    GET    /account/passkeys                 200 [{"credential_id", "name", "created_at", "last_used_at",
                                                   "status"}]  (active and suspended; removed ones hidden)
    PATCH  /account/passkeys/{credential_id} {"name"}  200 {"credential_id", "name"}
      403 origin_refused / 401 login_required on the headers, before any of the body is read
      401 reauthentication_required | 403 insufficient_authentication: as for registration options
    DELETE /account/passkeys/{credential_id}           200 {"credential_id", "status": "removed",
                                                            "active_remaining", "signed_out"}
      Renaming and removing need a login of < 15 min at acr passkey or stronger, as adding does
      (review 122, finding 1): 401 reauthentication_required, 403 insufficient_authentication; for a
      person who holds a privileged role, a login by one of his privileged enrolments (review 145).
      Removing the last active passkey is allowed (a lost phone must go at once): the page should
      confirm first; ``active_remaining: 0`` means the next login needs a new enrolment code.
      The person's other login sessions end and all their grants (refresh and access tokens) are
      revoked with it; the session that removed it stays unless that passkey opened it: then it ends
      too, ``signed_out`` is true and the cookie is cleared.
    DELETE /account/sessions                 200 {"sessions_ended", "grants_revoked"}   sign out everywhere
      else: every other login session of the person ends and every grant is revoked; this one stays.
      Needs a login of < 15 min, as renaming does (and its passkey rule for a privileged role): 401
      reauthentication_required, 403 origin_refused | insufficient_authentication
    POST /admin/v1/persons/{person_id}/enrolment-codes  {"ttl_seconds"?}  (bearer token, scope admin)
      201 {"code", "person_id", "expires_at"}   the code is shown once; default TTL 72 h; an officer's
          code expires at the end of his issuing roles at the latest, and ends when he loses one
      401/403 on the token before any of the body is read
      403 insufficient_role: the badge office, for a person with a privileged role (port security's)

A refusal that tells the person whom to turn to (``passkey_suspended``, ``person_suspended``,
``person_banned``, ``person_not_active``, ``enrolment_code_expired``, ``enrolment_code_used``,
``insufficient_authentication``: identity.authn.service ``OFFICE_CODES``) carries ``"office":
"badge_office" | "port_security"``, the office that issues the person's enrolment codes: port security
for a person who holds a privileged role.
The code stays the same either way (clients match it).

The user handle given to authenticators is an HMAC of the person id (``identity.authn.passkeys.
user_handle``), never the person id itself.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from quaygate.routing import AdmitFirst, admit_first
from quaygate.threads import threads_for
from release_service.api.problems import problem, problem_responses

from ..authn import enrolment
from ..authn.service import PasskeyError, passkeys_for
from ..domain.claims import BADGE_OFFICE_ROLE
from ..sessions import sessions_for
from .admin import (
    PORT_SECURITY_ROLE,
    AdminRefused,
    admin_caller,
    admits,
    dated_officer,
    enrolment_code_caller,
    enrolment_code_refused_roles,
    own_refused,
    role_refused,
)

log = logging.getLogger(__name__)

# AdmitFirst: each body read within its deadline; the caller checked on the headers before the body is
# read where the headers alone name it: the enrolment code's (identity.api.admin ``admits``), an
# account route's (``_account_caller``). The ceremonies' caller is in their body (an enrolment code, a
# flow and its signed challenge), so they cannot.
router = APIRouter(tags=["identity"], route_class=AdmitFirst)

# The one table from our error codes to HTTP statuses (STYLE.md #6).
STATUS: dict[str, int] = {
    "invalid_request": 400,
    "challenge_expired": 400,
    "enrolment_code_unknown": 400,
    "enrolment_code_expired": 400,
    "enrolment_code_used": 400,
    "invalid_name": 400,
    "passkey_unknown": 401,
    "passkey_invalid": 401,
    "passkey_suspended": 401,
    "passkey_suspended_privileged_role": 401,
    "login_required": 401,
    "reauthentication_required": 401,
    "person_suspended": 403,
    "person_banned": 403,
    "insufficient_authentication": 403,
    "origin_refused": 403,
    "not_found": 404,
    "person_unknown": 404,
    "passkey_already_registered": 409,
    "person_not_active": 409,
    "rate_limited": 429,
}
HINT: dict[str, str] = {
    "challenge_expired": "This login attempt expired or was already used. Please try again.",
    "passkey_unknown": "This passkey is not registered here.",
    "passkey_invalid": "The passkey could not be verified.",
    "passkey_suspended": "This passkey is suspended. Please contact the badge office.",
    # Only port security issues the codes of a person who holds a privileged role (identity.api.admin
    # enrolment_code_refused_roles): the badge office could not help.
    "passkey_suspended_privileged_role": "This passkey was suspended when you were given your new role. Please ask "
                                         "port security for a new enrolment code.",
    "person_suspended": "Your account is suspended. Please contact the badge office.",
    # As the brokered login tells a banned person (identity.api.broker: broker.error.suspended).
    "person_banned": "Your account is suspended. Please contact the badge office.",
    "origin_refused": "This request did not come from a quaygate page.",
    "login_required": "Please log in first.",
    "reauthentication_required": "Please log in again to change your passkeys.",
    "insufficient_authentication": "Changing your passkeys needs a stronger login: log in with a passkey, or "
                                   "ask the badge office for an enrolment code.",
    "rate_limited": "Too many attempts. Please wait a moment and try again.",
}
# The hint of an OFFICE_CODES refusal whose person turns to port security (``office``): a person who holds
# a privileged role, whose enrolment codes the badge office may not issue (identity.authn.enrolment
# ``issuing_office``).
HINT_PORT_SECURITY: dict[str, str] = {
    "passkey_suspended": "This passkey is suspended. Please contact port security.",
    "person_suspended": "Your account is suspended. Please contact port security.",
    "person_banned": "Your account is suspended. Please contact port security.",
    # An officer (any privileged role) changes his passkeys only from a login by a passkey of his
    # (identity.authn.service ``REGISTRATION_MIN_ACR``'s note, review 145): itsme does not do.
    "insufficient_authentication": "With your role, only a login with your passkey may change your passkeys or "
                                   "sign you out elsewhere: log in with it, or ask port security for an "
                                   "enrolment code.",
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OptionsRequest(_Body):
    enrolment_code: str | None = Field(default=None, max_length=64)


class VerifyRequest(_Body):
    flow: str = Field(max_length=100)
    credential: dict[str, Any]
    return_to: str | None = Field(default=None, max_length=2000)
    name: str | None = Field(default=None, max_length=200)


class RenameRequest(_Body):
    name: str = Field(max_length=200)


class EnrolmentCodeRequest(_Body):
    ttl_seconds: int = Field(default=72 * 3600, gt=0, le=30 * 24 * 3600)


def _refused(request: Request, exc: PasskeyError) -> JSONResponse:
    """The refusal as a problem; one that tells the person whom to turn to (``OFFICE_CODES``) names the
    office in its ``office`` member (RFC 9457 §3.2), by which the pages pick their text (common.js
    ``explain``), and in its hint."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    hint = HINT_PORT_SECURITY.get(exc.code) if exc.office == enrolment.PORT_SECURITY else None
    return problem(STATUS.get(exc.code, 400), exc.code, hint or HINT.get(exc.code), instance=request.url.path,
                   headers=headers, office=exc.office)


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _with_session(request: Request, body: dict[str, Any], status: int, cookie: str | None) -> JSONResponse:
    response = JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})
    if cookie is not None:
        s = request.app.state.container.settings
        response.set_cookie(s.session_cookie, cookie, max_age=s.session_ttl, path="/", httponly=True,
                            samesite="lax", secure=s.secure_cookies)
    return response


def _cookie(request: Request) -> str | None:
    return request.cookies.get(request.app.state.container.settings.session_cookie)


@router.post("/webauthn/authentication/options", operation_id="passkeyAuthenticationOptions",
             responses=problem_responses(403))
async def authentication_options(request: Request) -> JSONResponse:
    # On the event loop: a sealed flow and its challenge (two HMACs), no cache, no database; a thread
    # hop would cost more CPU than the call (about 0.15 ms here). Anonymous, and it stores nothing
    # (review 67, finding 4): no rate limit either (identity.ratelimit counts the verify).
    try:
        flow, options = passkeys_for(request.app).begin_authentication(origin=request.headers.get("origin"))
    except PasskeyError as exc:
        return _refused(request, exc)
    return JSONResponse({"flow": flow, "publicKey": options}, headers={"Cache-Control": "no-store"})


@router.post("/webauthn/authentication/verify", operation_id="passkeyAuthenticationVerify",
             responses=problem_responses(400, 401, 403, 429))
async def authentication_verify(request: Request, body: VerifyRequest) -> JSONResponse:
    service, origin, address = passkeys_for(request.app), request.headers.get("origin"), _address(request)
    cookie = _cookie(request)  # the browser's session, if any, ends with this login
    try:  # it waits for PostgreSQL: on the app's thread pool
        result = await threads_for(request.app).run(lambda: service.finish_authentication(
            origin=origin, flow=body.flow, credential=body.credential, return_to=body.return_to, address=address,
            session_cookie=cookie))
    except PasskeyError as exc:
        return _refused(request, exc)
    return _with_session(request, {"ok": True, "return_to": result.return_to}, 200, result.cookie)


@router.post("/webauthn/registration/options", operation_id="passkeyRegistrationOptions",
             responses=problem_responses(400, 401, 403, 429))
def registration_options(request: Request, body: OptionsRequest | None = None) -> JSONResponse:
    try:
        flow, options = passkeys_for(request.app).begin_registration(
            origin=request.headers.get("origin"), session_cookie=_cookie(request),
            enrolment_code=body.enrolment_code if body else None, address=_address(request),
        )
    except PasskeyError as exc:
        return _refused(request, exc)
    return JSONResponse({"flow": flow, "publicKey": options}, headers={"Cache-Control": "no-store"})


@router.post("/webauthn/registration/verify", operation_id="passkeyRegistrationVerify", status_code=201,
             responses=problem_responses(400, 401, 403, 409))
def registration_verify(request: Request, body: VerifyRequest) -> JSONResponse:
    try:
        result = passkeys_for(request.app).finish_registration(
            origin=request.headers.get("origin"), flow=body.flow, credential=body.credential, name=body.name,
            session_cookie=_cookie(request),
        )
    except PasskeyError as exc:
        return _refused(request, exc)
    out = {"credential_id": result.credential_id, "name": result.name, "created_at": result.created_at.isoformat()}
    return _with_session(request, out, 201, result.cookie)


def _account_caller(request: Request) -> JSONResponse | None:
    """An account route's caller on the headers alone, before any of its body is read (AdmitFirst, on
    a worker thread): a page of ours (Origin, the CSRF guard) and a live login session, refused as the
    route refuses them (403 ``origin_refused``, 401 ``login_required``). The route checks both again
    once the body is in (``PasskeyService.rename``): a session ended meanwhile is refused there."""
    try:
        passkeys_for(request.app).check_origin(request.headers.get("origin"))
    except PasskeyError as exc:
        return _refused(request, exc)
    if sessions_for(request.app).get(_cookie(request), now=request.app.state.container.clock.now()) is None:
        log.info("identity.passkey.refused.login_required")
        return _refused(request, PasskeyError("login_required", "no live session"))
    return None


@router.get("/account/passkeys", operation_id="listMyPasskeys", responses=problem_responses(401))
def list_passkeys(request: Request) -> JSONResponse:
    try:
        found = passkeys_for(request.app).list_passkeys(session_cookie=_cookie(request))
    except PasskeyError as exc:
        return _refused(request, exc)
    return JSONResponse(
        [
            {"credential_id": c.credential_id, "name": c.name, "created_at": c.created_at.isoformat(),
             "last_used_at": c.last_used_at.isoformat() if c.last_used_at else None, "status": c.status}
            for c in found
        ],
        headers={"Cache-Control": "no-store"},
    )


@router.patch("/account/passkeys/{credential_id}", operation_id="renameMyPasskey",
              responses=problem_responses(400, 401, 403, 404))
@admit_first(_account_caller)
def rename_passkey(request: Request, credential_id: str, body: RenameRequest) -> JSONResponse:
    try:
        name = passkeys_for(request.app).rename(origin=request.headers.get("origin"),
                                                session_cookie=_cookie(request),
                                                credential_id=credential_id, name=body.name)
    except PasskeyError as exc:
        return _refused(request, exc)
    return JSONResponse({"credential_id": credential_id, "name": name})


@router.delete("/account/passkeys/{credential_id}", operation_id="removeMyPasskey",
               responses=problem_responses(401, 403, 404))
def remove_passkey(request: Request, credential_id: str) -> JSONResponse:
    try:
        removed = passkeys_for(request.app).remove(origin=request.headers.get("origin"),
                                                   session_cookie=_cookie(request), credential_id=credential_id)
    except PasskeyError as exc:
        return _refused(request, exc)
    response = JSONResponse({"credential_id": credential_id, "status": "removed",
                             "active_remaining": removed.active_remaining, "signed_out": removed.signed_out})
    if removed.signed_out:  # the removed passkey had opened this session, which ended with it
        s = request.app.state.container.settings
        response.delete_cookie(s.session_cookie, path="/", httponly=True, samesite="lax", secure=s.secure_cookies)
    return response


@router.delete("/account/sessions", operation_id="endMyOtherSessions", responses=problem_responses(401, 403),
               summary="Sign out everywhere else: end every other login session and every app login of mine.")
def end_other_sessions(request: Request) -> JSONResponse:
    """Every other login session of the caller ends and every grant of his is revoked (his apps' refresh
    and access tokens); this session stays (Keycloak's "sign out all devices"). Needs a recent passkey
    login, as removing a passkey does (401 ``reauthentication_required``)."""
    try:
        ended, revoked = passkeys_for(request.app).sign_out_elsewhere(origin=request.headers.get("origin"),
                                                                      session_cookie=_cookie(request))
    except PasskeyError as exc:
        return _refused(request, exc)
    return JSONResponse({"sessions_ended": ended, "grants_revoked": revoked}, headers={"Cache-Control": "no-store"})


@router.post("/admin/v1/persons/{person_id}/enrolment-codes", operation_id="issueEnrolmentCode",
             status_code=201, responses=problem_responses(401, 403, 404, 409, 422))
@admits(admin_caller)
def issue_enrolment_code(
    request: Request,
    person_id: uuid.UUID,
    body: EnrolmentCodeRequest | None = None,
) -> JSONResponse:
    # Checked explicitly (issue 4): the badge office or an admin client, never any admin-scoped token;
    # the token on the headers, before the body is read (``admits``), then who the code is for here,
    # and the person's roles by the issue itself, with the insert (review L5).
    try:
        caller = enrolment_code_caller(request, person_id)
    except AdminRefused as exc:
        return exc.response(request)
    ttl = timedelta(seconds=body.ttl_seconds if body else 72 * 3600)
    dated = dated_officer(request, caller)
    try:
        code, expires_at = passkeys_for(request.app).issue_enrolment_code(
            person_id, actor=caller.actor, ttl=ttl, refused_roles=enrolment_code_refused_roles(caller, dated=dated))
    except PasskeyError as exc:
        if exc.code == "insufficient_role" and dated:
            return own_refused("dated_officer", "An officer whose role ends issues no enrolment code for a person "
                               "with a privileged role: another officer does.").response(request)
        if exc.code == "insufficient_role":  # answered as the admin API answers a role it lacks
            return role_refused(PORT_SECURITY_ROLE).response(request)
        if exc.code == "issuer_role_ended":  # his role ended while his token still names it
            return role_refused(PORT_SECURITY_ROLE if caller.holds(PORT_SECURITY_ROLE) else BADGE_OFFICE_ROLE
                                ).response(request)
        return _refused(request, exc)
    return JSONResponse({"code": code, "person_id": str(person_id), "expires_at": expires_at.isoformat()},
                        status_code=201, headers={"Cache-Control": "no-store"})

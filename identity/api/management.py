"""Token lifecycle and client management routes: introspection (RFC 7662), revocation (RFC 7009),
dynamic client registration (RFC 7591, RFC 7592), and the admin API (``/admin/v1``, in admin.py).

Thin routes (STYLE.md #9): each reads the request and hands it to its use case. The OAuth endpoints
answer errors in the OAuth JSON form (RFC 6749 §5.2, RFC 7591 §3.2.2), which OAuth clients parse; the
admin API answers RFC 9457 problems. Authlib is synchronous, so routes reaching it are plain ``def``.

Registration (POST) and its update (PUT) check their caller's bearer token on the headers before any
of the body is read (``admit_first``: quaygate.routing.AdmitFirst), and read the body within its
deadline. Introspection and revocation cannot: their client may authenticate in the body
(client_secret_post, private_key_jwt, RFC 7521 §4.2), as at the token endpoint; they read their form
within the same deadline (quaygate.routing ``read_form``). Their answers carry
HSTS on an https issuer, as every OIDC endpoint's (identity.web.routes ``hsts``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from quaygate.routing import BODY_TIMEOUT_RESPONSE, AdmitFirst, admit_first, request_form

from ..oidc.introspection import INTROSPECTION_PATH, introspection_response
from ..oidc.revocation import REVOCATION_PATH, revocation_response
from ..oidc.server import FormRequest
from ..registration import REGISTRATION_PATH, registration_admit, registration_endpoint
from ..web.routes import with_hsts
from .admin import router as admin_router
from .audit_search import router as audit_search_router

MAX_FORM_BYTES = 16 * 1024
MAX_JSON_BYTES = 64 * 1024

router = APIRouter(tags=["identity"], route_class=AdmitFirst)

_OAUTH_ERROR = {
    "description": "OAuth error (RFC 6749 §5.2, RFC 7591 §3.2.2)",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
            }
        }
    },
}


def _form(*fields: str) -> dict[str, Any]:
    schema = {"type": "object", "required": ["token"], "properties": {f: {"type": "string"} for f in fields}}
    return {"requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}}


_CLIENT_AUTH_FIELDS = ("client_id", "client_secret", "client_assertion_type", "client_assertion")
_METADATA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
    }
}


async def _body(request: Request) -> bytes | None:
    """The raw body, or None when it is larger than any of these requests needs to be. Read within the
    app's deadline for a body (quaygate.routing ``request_form``: past it, 408 ``body_timeout``, nothing
    done); registration's was read already, within it, by AdmitFirst."""
    limit = MAX_JSON_BYTES if request.url.path.startswith(REGISTRATION_PATH) else MAX_FORM_BYTES
    return await request_form(request, limit)


def _registrant(request: Request) -> Response | None:
    """The registration's caller, on the headers alone (``registration_admit``): for AdmitFirst, on a
    worker thread, before the metadata is read."""
    return registration_admit(request.app, request.method, request.headers,
                              client_id=request.path_params.get("client_id"))


def _raw(request: Request, body: bytes | None) -> FormRequest:
    return FormRequest(request.method, request.headers, request.headers.get("content-type", ""), body)


@router.post(INTROSPECTION_PATH, operation_id="identity_introspect",
             openapi_extra=_form("token", "token_type_hint", *_CLIENT_AUTH_FIELDS),
             responses={400: _OAUTH_ERROR, 401: _OAUTH_ERROR, 408: BODY_TIMEOUT_RESPONSE})
def introspect(request: Request, body: bytes | None = Depends(_body)) -> JSONResponse:
    """RFC 7662 §2 token introspection, for confidential clients."""
    return with_hsts(request, introspection_response(request.app, _raw(request, body)))


@router.post(REVOCATION_PATH, operation_id="identity_revoke",
             openapi_extra=_form("token", "token_type_hint", *_CLIENT_AUTH_FIELDS),
             responses={400: _OAUTH_ERROR, 401: _OAUTH_ERROR, 408: BODY_TIMEOUT_RESPONSE})
def revoke(request: Request, body: bytes | None = Depends(_body)) -> Response:
    """RFC 7009 §2 token revocation."""
    return with_hsts(request, revocation_response(request.app, _raw(request, body)))


@router.post(REGISTRATION_PATH, operation_id="identity_register_client", status_code=201,
             openapi_extra=_METADATA, responses={400: _OAUTH_ERROR, 401: _OAUTH_ERROR})
@admit_first(_registrant)
def register(request: Request, body: bytes | None = Depends(_body)) -> JSONResponse:
    """RFC 7591 §3 dynamic client registration, authorised by an initial access token."""
    return with_hsts(request, registration_endpoint(request.app, _raw(request, body), client_id=None))


@router.get(REGISTRATION_PATH + "/{client_id}", operation_id="identity_read_client",
            responses={401: _OAUTH_ERROR})
def read_client(client_id: str, request: Request) -> Response:
    """RFC 7592 §2.1: read a registered client with its registration access token."""
    return with_hsts(request, registration_endpoint(request.app, _raw(request, b""), client_id=client_id))


@router.put(REGISTRATION_PATH + "/{client_id}", operation_id="identity_update_client",
            openapi_extra=_METADATA, responses={400: _OAUTH_ERROR, 401: _OAUTH_ERROR})
@admit_first(_registrant)
def update_client(client_id: str, request: Request, body: bytes | None = Depends(_body)) -> Response:
    """RFC 7592 §2.2: replace a registered client's metadata."""
    return with_hsts(request, registration_endpoint(request.app, _raw(request, body), client_id=client_id))


@router.delete(REGISTRATION_PATH + "/{client_id}", operation_id="identity_delete_client", status_code=204,
               responses={401: _OAUTH_ERROR})
def delete_client(client_id: str, request: Request) -> Response:
    """RFC 7592 §2.3: deactivate a registered client; its grants and tokens are revoked."""
    return with_hsts(request, registration_endpoint(request.app, _raw(request, b""), client_id=client_id))


# The app serves these with this module's own routes (quaygate.routing.include: no router nested in
# another): the person and client administration, and issue 4's GET /admin/v1/audit.
ROUTERS = (router, admin_router, audit_search_router)

"""Identity HTTP routes: the token endpoint, discovery and the JWKS.

Thin routes (STYLE.md #9). The token endpoint answers OAuth errors in the RFC 6749 §5.2 JSON form,
not problem+json: OAuth clients parse that form. Authlib is synchronous, so the routes that reach it
are plain ``def`` routes run in the thread pool (STYLE.md #11); only the body is read asynchronously.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..bootstrap import provider_for
from ..domain import claims as token_claims
from ..domain import scopes as scope_rules
from ..oidc.server import (
    ASSERTION_ALGORITHMS,
    AUTH_METHODS,
    JWKS_PATH,
    TOKEN_PATH,
    FormRequest,
)

if TYPE_CHECKING:
    from quaygate.settings import Settings

MAX_FORM_BYTES = 16 * 1024
DISCOVERY_CACHE = "public, max-age=3600"
# Short: a rotated-in key signs at once, and a verifier that refetches on an unknown kid must not be
# served a stale set by an HTTP cache for long.
JWKS_CACHE = "public, max-age=60"

_OAUTH_ERROR = {
    "description": "OAuth error (RFC 6749 §5.2)",
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
_FORM_FIELDS = (
    "grant_type",
    "scope",
    "client_id",
    "client_secret",
    "client_assertion_type",
    "client_assertion",
)
_FORM_SCHEMA = {
    "type": "object",
    "required": ["grant_type"],
    "properties": {f: {"type": "string"} for f in _FORM_FIELDS},
}
_TOKEN_FORM = {
    "requestBody": {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": _FORM_SCHEMA}},
    }
}


async def _form_body(request: Request) -> bytes | None:
    """The raw body, or None when it is larger than any token request needs to be."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def build_router() -> APIRouter:
    router = APIRouter(tags=["identity"])

    @router.post(
        TOKEN_PATH,
        operation_id="identity_token",
        openapi_extra=_TOKEN_FORM,
        responses={400: _OAUTH_ERROR, 401: _OAUTH_ERROR},
    )
    def token(request: Request, body: bytes | None = Depends(_form_body)) -> JSONResponse:
        """RFC 6749 §3.2 token endpoint: client credentials grant (§4.4)."""
        raw = FormRequest(request.method, request.headers, request.headers.get("content-type", ""), body)
        return provider_for(request.app).server.token_response(raw)

    @router.get("/.well-known/openid-configuration", operation_id="identity_discovery")
    def discovery(request: Request) -> JSONResponse:
        """OpenID Connect Discovery 1.0 §4."""
        return JSONResponse(
            metadata(request.app.state.container.settings), headers={"Cache-Control": DISCOVERY_CACHE}
        )

    @router.get("/.well-known/oauth-authorization-server", operation_id="identity_oauth_metadata")
    def oauth_metadata(request: Request) -> JSONResponse:
        """RFC 8414 §3: the same document for plain OAuth clients."""
        return JSONResponse(
            metadata(request.app.state.container.settings), headers={"Cache-Control": DISCOVERY_CACHE}
        )

    @router.get(JWKS_PATH, operation_id="identity_jwks")
    def jwks(request: Request) -> JSONResponse:
        """Our public signing keys (RFC 7517 §5), old keys kept until their tokens have expired."""
        return JSONResponse(provider_for(request.app).keys.jwks(), headers={"Cache-Control": JWKS_CACHE})

    return router


def metadata(settings: Settings) -> dict[str, Any]:
    """Discovery (OIDC Discovery 1.0 §3, RFC 8414 §2): only what this server really does."""
    base = settings.issuer.rstrip("/")
    return {
        "issuer": settings.issuer,
        "token_endpoint": base + TOKEN_PATH,
        "jwks_uri": base + JWKS_PATH,
        "grant_types_supported": ["client_credentials"],
        # No authorization endpoint yet (the code flow is a later slice): no response type either.
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "token_endpoint_auth_methods_supported": [m.value for m in AUTH_METHODS],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": sorted(scope_rules.ALL_SCOPES),
        "claims_supported": [
            token_claims.ISS,
            token_claims.SUB,
            token_claims.AUD,
            token_claims.EXP,
            token_claims.IAT,
            token_claims.NBF,
            token_claims.JTI,
            token_claims.CLIENT_ID,
            token_claims.SCOPE,
            token_claims.ORG,
            token_claims.ORG_KIND,
            token_claims.ROLE,
            token_claims.TERMINAL,
        ],
    }

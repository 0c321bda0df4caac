"""Identity HTTP routes: authorization (+ PAR), token, userinfo, logout, discovery and the JWKS.

Thin routes (STYLE.md #9). The token endpoint answers OAuth errors in the RFC 6749 §5.2 JSON form,
not problem+json: OAuth clients parse that form. Authlib is synchronous, so the routes that reach it
are plain ``def`` routes run in the thread pool (STYLE.md #11); only the body is read asynchronously.

Every answer carries HSTS on an https issuer (identity.web.routes ``hsts``); the pages here (the
authorization error page, the logout confirmation, "signed out") carry the pages' security headers
(identity.web.routes ``SECURITY_HEADERS``: CSP, never framed, no referrer) as the other pages do; the
logout confirmation sends its referrer to us alone (``_CONFIRM_REFERRER``).
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from authlib.oauth2.rfc6749 import OAuth2Error
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from quaygate.routing import BODY_TIMEOUT_RESPONSE, request_form
from quaygate.threads import threads_for

from ..authn.service import passkeys_for
from ..bootstrap import provider_for
from ..broker.config import login_acrs
from ..domain import assurance
from ..domain import claims as token_claims
from ..domain import scopes as scope_rules
from ..domain.roles import AuthMethod
from ..dpop import DPOP_ALGORITHMS
from ..grants import grants_for, revocations_for
from ..oidc import authorize as authz
from ..oidc.issue import ID_TOKEN_ALGORITHMS
from ..oidc.logout import LOGOUT_PATH, logout
from ..oidc.par import PushTooLong
from ..oidc.server import (
    ASSERTION_ALGORITHMS,
    AUTH_METHODS,
    JWKS_PATH,
    TOKEN_PATH,
    FormRequest,
)
from ..oidc.userinfo import USERINFO_PATH, UserInfoError, userinfo
from ..sessions import sessions_for
from ..web.routes import CSP, SECURITY_HEADERS, hsts, with_hsts

if TYPE_CHECKING:
    from quaygate.settings import Settings

MAX_FORM_BYTES = 16 * 1024
PAR_PATH = "/oauth2/par"
# Built by the token-lifecycle helper (RFC 7662, RFC 7009, RFC 7591): advertised here.
INTROSPECTION_PATH = "/oauth2/introspect"
REVOCATION_PATH = "/oauth2/revoke"
REGISTRATION_PATH = "/oauth2/register"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# The logout confirmation's form is a POST the browser makes in no-cors mode, whose Origin header Fetch
# serializes from the page's referrer policy ("serializing a request origin"): ``null`` under the pages'
# no-referrer, and logout() takes only our own origin as the confirmation, so a click in a real browser
# ended nothing and asked "Sign out?" again (review 150, finding 1). Under same-origin the browser sends
# our origin to us, and ``null`` still from any other page; the Referer it adds goes to us alone (none on
# the redirect to the client, another origin), though the page's own URL may hold the id_token_hint.
_CONFIRM_REFERRER = {"Referrer-Policy": "same-origin"}
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
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "client_id",
    "client_secret",
    "client_assertion_type",
    "client_assertion",
)
_PAGE = {"description": "Error page (no redirect)", "content": {"text/html": {"schema": {"type": "string"}}}}
_AUTH_PARAMS = frozenset({"client_secret", "client_assertion", "client_assertion_type"})
_PAR_FIELDS = (
    "client_id",
    "response_type",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "max_age",
    "acr_values",
    "dpop_jkt",
    "client_secret",
    "client_assertion_type",
    "client_assertion",
)
_PAR_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["response_type", "redirect_uri", "code_challenge"],
                    "properties": {f: {"type": "string"} for f in _PAR_FIELDS},
                }
            }
        },
    }
}
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
    """The raw body, or None when it is larger than any token request needs to be. Read within the app's
    deadline for a body (QUAYGATE_BODY_SECONDS): past it, 408 ``body_timeout``, nothing done
    (quaygate.routing ``request_form``; review 168, finding 1: a client that sent its headers, then
    nothing, held the connection for ever)."""
    return await request_form(request, MAX_FORM_BYTES)


def build_router() -> APIRouter:
    router = APIRouter(tags=["identity"])

    @router.post(
        TOKEN_PATH,
        operation_id="identity_token",
        openapi_extra=_TOKEN_FORM,
        responses={400: _OAUTH_ERROR, 401: _OAUTH_ERROR, 408: BODY_TIMEOUT_RESPONSE},
    )
    async def token(request: Request) -> JSONResponse:
        """RFC 6749 §3.2 token endpoint: authorization code (§4.1.3, PKCE), client credentials (§4.4)."""
        # The body read here rather than as a dependency: FastAPI's dependency solving cost more CPU
        # than the read on the busiest endpoint (the form is described by openapi_extra either way).
        body = await _form_body(request)
        raw = FormRequest(request.method, request.headers, request.headers.get("content-type", ""), body)
        app = request.app
        # Authlib is synchronous and the grants wait for PostgreSQL: on the app's thread pool.
        answer: JSONResponse = await threads_for(app).run(lambda: provider_for(app).server.token_response(raw))
        return with_hsts(request, answer)

    @router.post(
        authz.AUTHORIZE_PATH,
        operation_id="identity_authorize_post",
        response_class=Response,
        responses={302: {"description": "To the client (code or error) or to the login page"}, 400: _PAGE,
                   408: BODY_TIMEOUT_RESPONSE},
    )
    @router.get(
        authz.AUTHORIZE_PATH,
        operation_id="identity_authorize",
        response_class=Response,
        responses={302: {"description": "To the client (code or error) or to the login page"}, 400: _PAGE},
    )
    def authorize(request: Request, body: bytes | None = Depends(_form_body)) -> Response:
        """OIDC Core §3.1.2 authorization endpoint (GET, or POST per §3.1.2.1): code flow, PKCE S256."""
        try:
            params = authz.parse_params(_params(request, body))
            location = authz.start(
                provider_for(request.app), sessions_for(request.app), params, _cookie(request), now=_now(request)
            )
        except authz.PageError as error:
            return _error_page(request, error.error, error.description)
        return _redirect(request, location)

    @router.get(
        authz.RESUME_PATH,
        operation_id="identity_authorize_resume",
        response_class=Response,
        responses={302: {"description": "To the client, or back to the login page"}, 400: _PAGE},
    )
    def authorize_resume(request: Request, id: str | None = None) -> Response:  # noqa: A002 - the query name
        """Where the login page returns to: the stored authorization request, continued."""
        try:
            location = authz.resume(
                provider_for(request.app), sessions_for(request.app), id, _cookie(request), now=_now(request)
            )
        except authz.PageError as error:
            return _error_page(request, error.error, error.description)
        return _redirect(request, location)

    @router.post(
        PAR_PATH,
        operation_id="identity_par",
        status_code=201,
        openapi_extra=_PAR_FORM,
        responses={400: _OAUTH_ERROR, 401: _OAUTH_ERROR, 408: BODY_TIMEOUT_RESPONSE},
    )
    def par(request: Request, body: bytes | None = Depends(_form_body)) -> JSONResponse:
        """RFC 9126 §2 pushed authorization request: validated now, used once by /authorize."""
        provider = provider_for(request.app)
        raw = FormRequest(request.method, request.headers, request.headers.get("content-type", ""), body)
        try:
            record, form = provider.server.authenticate_par_client(raw)
        except OAuth2Error as error:
            return with_hsts(request, provider.server.handle_error_response(None, error))
        params = {k: v for k, v in form.items() if k not in _AUTH_PARAMS and v != ""}
        try:
            if params.get("client_id", record.client_id) != record.client_id:
                raise authz.PageError("invalid_request", "client_id does not match the authenticated client.")
            params["client_id"] = record.client_id
            client, redirect_uri = authz.check_client_and_redirect(provider.clients, params)
            req = authz.validate(client, redirect_uri, params, now=_now(request), pushed=True)
        except (authz.PageError, authz.RedirectError) as error:
            # RFC 9126 §2.3: errors as at the token endpoint, never a redirect.
            return JSONResponse({"error": error.error, "error_description": error.description}, status_code=400,
                                headers={**_NO_STORE, **hsts(request)})
        try:  # a public client's push is sealed into its request_uri, not stored (identity.oidc.par)
            request_uri = provider.pushed.push(req, public=record.is_public)
        except PushTooLong:
            return JSONResponse({"error": "invalid_request", "error_description": "The request is too long for "
                                 "a public client's request_uri: use a shorter state and nonce."},
                                status_code=400, headers={**_NO_STORE, **hsts(request)})
        return JSONResponse({"request_uri": request_uri, "expires_in": provider.pushed.ttl}, status_code=201,
                            headers={**_NO_STORE, **hsts(request)})

    @router.post(
        USERINFO_PATH,
        operation_id="identity_userinfo_post",
        responses={400: _OAUTH_ERROR, 401: _OAUTH_ERROR, 403: _OAUTH_ERROR, 408: BODY_TIMEOUT_RESPONSE},
    )
    @router.get(
        USERINFO_PATH,
        operation_id="identity_userinfo",
        responses={400: _OAUTH_ERROR, 401: _OAUTH_ERROR, 403: _OAUTH_ERROR},
    )
    def userinfo_endpoint(request: Request, body: bytes | None = Depends(_form_body)) -> JSONResponse:
        """OIDC Core §5.3 UserInfo: the person behind the access token."""
        form_token = None
        if request.method == "POST" and body:
            form_token = dict(parse_qsl(body.decode("utf-8", "replace"))).get("access_token")
        try:
            claims = userinfo(
                provider_for(request.app),
                revocations_for(request.app),
                method=request.method,
                headers=request.headers,
                form_token=form_token,
            )
        except UserInfoError as error:
            return JSONResponse(
                {"error": error.error, "error_description": error.description},
                status_code=error.status,
                headers={**_NO_STORE, **hsts(request), "WWW-Authenticate": error.challenge(),
                         **({"DPoP-Nonce": error.nonce} if error.nonce is not None else {})},
            )
        return JSONResponse(claims, headers={**_NO_STORE, **hsts(request)})

    @router.post(
        LOGOUT_PATH,
        operation_id="identity_logout_post",
        response_class=Response,
        responses={302: {"description": "To the registered post_logout_redirect_uri"}, 400: _PAGE,
                   408: BODY_TIMEOUT_RESPONSE},
    )
    @router.get(
        LOGOUT_PATH,
        operation_id="identity_logout",
        response_class=Response,
        responses={302: {"description": "To the registered post_logout_redirect_uri"}, 400: _PAGE},
    )
    def end_session(request: Request, body: bytes | None = Depends(_form_body)) -> Response:
        """OpenID Connect RP-Initiated Logout 1.0: end this browser's login session and its grants, at
        once for a hint naming it, else once the person confirms (identity.oidc.logout)."""
        settings = request.app.state.container.settings
        try:
            params = authz.parse_params(_params(request, body))
            outcome = logout(
                provider_for(request.app),
                sessions_for(request.app),
                grants_for(request.app),
                params,
                _cookie(request),
                method=request.method,
                # The passkey routes' CSRF guard: the origins our own pages are served from.
                origin=request.headers.get("origin"),
                own_origins=passkeys_for(request.app).allowed_origins,
                now=_now(request),
            )
        except authz.PageError as error:
            return _error_page(request, error.error, error.description)
        if outcome.confirm:
            response: Response = _confirm_page(request, outcome.carried, outcome.location)
        elif outcome.location:
            response = _redirect(request, outcome.location)
        else:
            response = HTMLResponse(_page("Signed out", "You are signed out."), headers=_page_headers(request))
        if outcome.ended:
            # Secure on an https issuer: a browser takes no Set-Cookie of a __Host- cookie without it,
            # not even its removal.
            response.delete_cookie(settings.session_cookie, path="/", httponly=True, samesite="lax",
                                   secure=settings.secure_cookies)
        return response

    @router.get("/.well-known/openid-configuration", operation_id="identity_discovery")
    def discovery(request: Request) -> JSONResponse:
        """OpenID Connect Discovery 1.0 §4."""
        return JSONResponse(
            metadata(request.app.state.container.settings), headers={"Cache-Control": DISCOVERY_CACHE, **hsts(request)}
        )

    @router.get("/.well-known/oauth-authorization-server", operation_id="identity_oauth_metadata")
    def oauth_metadata(request: Request) -> JSONResponse:
        """RFC 8414 §3: the same document for plain OAuth clients."""
        return JSONResponse(
            metadata(request.app.state.container.settings), headers={"Cache-Control": DISCOVERY_CACHE, **hsts(request)}
        )

    @router.get(JWKS_PATH, operation_id="identity_jwks")
    def jwks(request: Request) -> JSONResponse:
        """Our public signing keys (RFC 7517 §5), old keys kept until their tokens have expired."""
        return JSONResponse(provider_for(request.app).keys.jwks(),
                            headers={"Cache-Control": JWKS_CACHE, **hsts(request)})

    return router


def metadata(settings: Settings) -> dict[str, Any]:
    """Discovery (OIDC Discovery 1.0 §3, RFC 8414 §2, RFC 9126 §5, RFC 9449 §5.1, RFC 9207 §3):
    only what this server really does."""
    base = settings.issuer.rstrip("/")
    auth_methods = [m.value for m in AUTH_METHODS] + [AuthMethod.NONE.value]
    reachable = login_acrs(settings)
    return {
        "issuer": settings.issuer,
        "authorization_endpoint": base + authz.AUTHORIZE_PATH,
        "token_endpoint": base + TOKEN_PATH,
        "userinfo_endpoint": base + USERINFO_PATH,
        "jwks_uri": base + JWKS_PATH,
        "end_session_endpoint": base + LOGOUT_PATH,
        "pushed_authorization_request_endpoint": base + PAR_PATH,
        "introspection_endpoint": base + INTROSPECTION_PATH,
        "revocation_endpoint": base + REVOCATION_PATH,
        "registration_endpoint": base + REGISTRATION_PATH,
        # Required per client (confidential consoles always); not for every client.
        "require_pushed_authorization_requests": False,
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": [authz.PKCE_S256],
        "authorization_response_iss_parameter_supported": True,
        "prompt_values_supported": sorted(authz.PROMPTS),
        "subject_types_supported": ["public"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "introspection_endpoint_auth_methods_supported": [m.value for m in AUTH_METHODS],
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "id_token_signing_alg_values_supported": list(ID_TOKEN_ALGORITHMS),
        "dpop_signing_alg_values_supported": list(DPOP_ALGORITHMS),
        # The levels a client may ask for here: what a login on this port reaches (no national ID level
        # without an upstream at that level: review 164), and face, by a step-up over one.
        "acr_values_supported": [acr for acr in assurance.ORDER if acr in reachable or acr == assurance.ACR_FACE],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "frontchannel_logout_supported": False,
        "backchannel_logout_supported": False,
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
            token_claims.PERSON_ID,
            token_claims.ROLES,
            token_claims.ACR,
            token_claims.AMR,
            token_claims.AUTH_TIME,
            token_claims.SID,
            token_claims.NONCE,
            token_claims.AT_HASH,
            token_claims.AZP,
            token_claims.CNF,
            token_claims.NAME,
            token_claims.GIVEN_NAME,
            token_claims.FAMILY_NAME,
        ],
    }


def _params(request: Request, body: bytes | None) -> list[tuple[str, str]]:
    """The query (GET) or the form body (POST, OIDC Core §3.1.2.1)."""
    if request.method == "POST":
        if body is None:
            raise authz.PageError("invalid_request", "Request body too large.")
        try:
            return parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError as exc:
            raise authz.PageError("invalid_request", "Malformed form body.") from exc
    return list(request.query_params.multi_items())


def _cookie(request: Request) -> str | None:
    return request.cookies.get(request.app.state.container.settings.session_cookie)


def _now(request: Request) -> Any:
    return request.app.state.container.clock.now()


def _page_headers(request: Request, csp: str = CSP) -> dict[str, str]:
    """A page's headers: the pages' security headers (``csp`` for its Content-Security-Policy), HSTS on
    an https issuer, never stored."""
    return {**SECURITY_HEADERS, "Content-Security-Policy": csp, **hsts(request), **_NO_STORE}


def _redirect(request: Request, location: str) -> Response:
    return RedirectResponse(location, status_code=302, headers={**_NO_STORE, **hsts(request)})


def _page(title: str, text: str) -> str:
    return (
        '<!doctype html><html lang="en"><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></html>"
    )


def _error_page(request: Request, error: str, description: str) -> HTMLResponse:
    """RFC 6749 §4.1.2.1: no trustworthy redirect_uri, so the person is told here."""
    return HTMLResponse(_page("Sign-in error", f"{description} ({error})"), status_code=400,
                        headers=_page_headers(request))


def _confirm_page(request: Request, carried: tuple[tuple[str, str], ...], location: str | None) -> HTMLResponse:
    """RP-Initiated Logout 1.0 §2: "Sign out?", a form posting back to us what the confirmed logout
    needs (``carried``). Its Content-Security-Policy lets the form go to ``location`` too (CSP Level 3
    ``form-action``, which browsers also apply to the redirect that answers the form), a redirect URI
    the client registered: else the browser would stop the way back to the client."""
    fields = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in carried)
    body = (
        '<!doctype html><html lang="en"><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><title>Sign out</title>'
        f'<h1>Sign out?</h1><form method="post" action="{LOGOUT_PATH}">{fields}'
        '<button type="submit">Sign out</button></form></html>'
    )
    target = _form_target(location) if location else None
    csp = CSP.replace("form-action 'self'", f"form-action 'self' {target}") if target else CSP
    return HTMLResponse(body, headers={**_page_headers(request, csp), **_CONFIRM_REFERRER})


_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def _form_target(uri: str) -> str | None:
    """The CSP source expression (CSP Level 3 §2.3.1) naming where ``uri`` is: its origin for an http(s)
    URI, its scheme alone for another (a native app's private-use scheme, RFC 8252 §7.1); None when it
    cannot be written safely into the header (anything but a plain host and port)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return f"{scheme}://{parts.netloc}" if _HOST.fullmatch(parts.netloc) else None
    return f"{scheme}:" if _SCHEME.fullmatch(scheme) else None

"""Brokered login routes (issue 6 part 1): start at an upstream provider, come back, our RP JWKS.

Thin routes (STYLE.md #9): every check is in identity.broker.service and identity.domain.broker.
Start and callback are browser navigations: a refusal is an HTML page naming its ``code`` (or an
RFC 9457 problem when the caller asks for JSON), with the status of the one table below.

    GET /broker/providers                  200 [{"name", "label", "start"}]   the login page's buttons
    GET /broker/jwks                       200 our RP JWKS: RS256 "sig" keys + RSA-OAEP-256 "enc" keys,
                                           Cache-Control public, max-age=QUAYGATE_BROKER_JWKS_MAX_AGE
    GET /broker/{name}/start?return_to=    303 to the upstream + the browser-binding cookie (HttpOnly,
                                           SameSite=Lax, path /; ``__Host-qg_broker`` on an https issuer)
    GET /broker/{name}/callback?code&state&iss
                                           303 to return_to + the login session cookie; or a refusal
                                           (429 rate_limited + Retry-After: the address's login attempts)

The start is not audited (it carries no identity; anyone may send one); the callback's outcome is
(identity.broker.service). A suspended or banned person's refusal names whom he turns to (``office``,
in the problem and in the page's text): port security for a person who holds a privileged role.

The binding cookie is named by ``Settings.cookie_name`` (``__Host-qg_broker`` on an https issuer), so it
has ``Path=/``: a ``__Host-`` cookie must. A sibling subdomain that could plant a binding cookie of its
own flow in a driver's browser would log him in as the attacker (login CSRF, OIDC Core §3.1.2.7).
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from release_service.api.problems import problem, problem_responses

from ..broker.service import build as broker_for
from ..domain.broker import BrokerRefused, Refusal
from ..web import i18n
from ..web.routes import SECURITY_HEADERS, asset_url, hsts, language

router = APIRouter(tags=["identity"])
BINDING_COOKIE = "qg_broker"  # its name on the wire: Settings.cookie_name

# The one table from refusal codes to HTTP statuses (STYLE.md #6).
STATUS: dict[Refusal, int] = {
    Refusal.PROVIDER_UNKNOWN: 404,
    Refusal.PROVIDER_UNAVAILABLE: 502,
    Refusal.STATE_INVALID: 400,
    Refusal.BROWSER_MISMATCH: 400,
    Refusal.PERSON_NOT_REGISTERED: 403,
    Refusal.PERSON_SUSPENDED: 403,
    Refusal.PERSON_BANNED: 403,
    Refusal.REBIND_REQUIRED: 409,
    Refusal.RATE_LIMITED: 429,
}
_HINT = {  # the i18n key of what the page tells the driver; the code names the rest
    Refusal.STATE_INVALID: "broker.error.expired",
    Refusal.BROWSER_MISMATCH: "broker.error.expired",
    Refusal.UPSTREAM_ERROR: "broker.error.cancelled",
    Refusal.PROVIDER_UNAVAILABLE: "broker.error.unavailable",
    Refusal.PERSON_NOT_REGISTERED: "broker.error.not_registered",
    Refusal.PERSON_SUSPENDED: "broker.error.suspended",
    Refusal.PERSON_BANNED: "broker.error.suspended",
    Refusal.REBIND_REQUIRED: "broker.error.rebind",
    Refusal.ACR_INSUFFICIENT: "broker.error.level",
    Refusal.RATE_LIMITED: "error.rate_limited",
}


def _refused(request: Request, exc: BrokerRefused) -> Response:
    status = STATUS.get(exc.code, 401)
    lang = language(request)
    text = i18n.translate(lang, i18n.own_key(lang, _HINT.get(exc.code, "broker.error.failed"), exc.office))
    accept = request.headers.get("accept", "")
    retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
    if "html" not in accept:  # a browser's navigation asks for text/html; any other caller gets problem JSON
        return problem(status, exc.code.value, text, instance=request.url.path, headers=retry or None,
                       office=exc.office)
    body = (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<title>{html.escape(i18n.translate(lang, "broker.error.title"))} · quaygate</title>'
            f'<link rel="stylesheet" href="{asset_url("app.css")}"></head><body><main id="main">'
            f'<h1>{html.escape(i18n.translate(lang, "broker.error.title"))}</h1>'
            f'<p class="msg" role="alert" data-code="{exc.code.value}">{html.escape(text)}</p>'
            f'<p>{html.escape(i18n.translate(lang, "common.error_code", code=exc.code.value))}</p>'
            f'<p><a href="/login">{html.escape(i18n.translate(lang, "broker.error.back"))}</a></p>'
            f'</main></body></html>')
    return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **hsts(request),
                                                           "Cache-Control": "no-store", **retry})


@router.get("/broker/providers", operation_id="brokerProviders")
def providers(request: Request) -> JSONResponse:
    upstreams = broker_for(request.app).upstreams.values()
    return JSONResponse([{"name": u.name, "label": u.label, "start": f"/broker/{u.name}/start"} for u in upstreams],
                        headers={"Cache-Control": "no-cache"})


@router.get("/broker/jwks", operation_id="brokerJwks")
def jwks(request: Request) -> JSONResponse:
    c = request.app.state.container
    return JSONResponse(broker_for(request.app).jwks(c.clock.now()),
                        headers={"Cache-Control": f"public, max-age={c.settings.broker_jwks_max_age}"})


@router.get("/broker/{name}/start", operation_id="brokerStart", status_code=303,
            responses=problem_responses(404, 502))
def start(request: Request, name: str, return_to: str | None = None) -> Response:
    s = request.app.state.container.settings
    try:
        started = broker_for(request.app).start(name, return_to=return_to)
    except BrokerRefused as exc:
        return _refused(request, exc)
    response = RedirectResponse(started.location, status_code=303, headers={"Cache-Control": "no-store",
                                                                            **hsts(request)})
    response.set_cookie(s.cookie_name(BINDING_COOKIE), started.binding, max_age=s.upstream_flow_ttl, path="/",
                        httponly=True, samesite="lax", secure=s.secure_cookies)
    return response


@router.get("/broker/{name}/callback", operation_id="brokerCallback", status_code=303,
            responses=problem_responses(400, 401, 403, 404, 409, 429, 502))
def callback(request: Request, name: str) -> Response:
    s = request.app.state.container.settings
    params: dict[str, Any] = {k: v for k, v in request.query_params.items() if isinstance(v, str)}
    try:
        binding = request.cookies.get(s.cookie_name(BINDING_COOKIE))
        done = broker_for(request.app).callback(name, params, binding=binding,
                                                session_cookie=request.cookies.get(s.session_cookie),
                                                address=request.client.host if request.client else None)
    except BrokerRefused as exc:
        response = _refused(request, exc)
        if exc.code is Refusal.RATE_LIMITED:
            return response  # nothing judged: the flow's cookie kept for a try after the wait
    else:
        response = RedirectResponse(done.return_to, status_code=303, headers={"Cache-Control": "no-store",
                                                                              **hsts(request)})
        response.set_cookie(s.session_cookie, done.cookie, max_age=s.session_ttl, path="/", httponly=True,
                            samesite="lax", secure=s.secure_cookies)
    # Secure too: a browser takes no Set-Cookie of a __Host- cookie without it, not even its removal.
    response.delete_cookie(s.cookie_name(BINDING_COOKIE), path="/", httponly=True, samesite="lax",
                           secure=s.secure_cookies)
    return response

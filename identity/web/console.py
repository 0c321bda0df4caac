"""The admin console at ``/console/`` (issue 4): the badge office and port security, on a tablet too.

Built like the driver app (identity.web.routes): one server-rendered page, one small script, the same
stylesheet, strict CSP and no inline script. The page is a public OpenID Connect client of our own
provider (``admin_console`` role: authorization code with PKCE S256, passkey login) and calls the
admin API (``/admin/v1``) with the officer's access token; the API checks the role and the passkey
login on every call and audits each action with the person as actor (identity.api.admin).

Routes (pages, not in the OpenAPI document)::

    GET /console/, /console/callback    the console shell (the callback is the OIDC redirect_uri)
    GET /console/config.json            the console's client_id, redirect URI and id token alg
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from quaygate.observability import log_event
from quaygate.schema import oauth_clients

from .routes import SECURITY_HEADERS, _issuer, render

log = logging.getLogger("identity.web.console")

CONSOLE_PATH = "/console/"
CALLBACK_PATH = "/console/callback"
CONSOLE_ROLE = "admin_console"
# identity.domain.scopes: the admin_console role's scopes (badges:office counts only with the role).
CONSOLE_SCOPE = "openid profile admin badges:office"
# identity.domain.assurance.ACR_PASSKEY: the admin API refuses weaker logins (RFC 9470).
CONSOLE_ACR = "urn:quaygate:acr:passkey"

router = APIRouter(include_in_schema=False)


@router.get("/console")
def console_root() -> Response:
    return RedirectResponse(CONSOLE_PATH, status_code=308)


@router.get(CONSOLE_PATH)
@router.get(CALLBACK_PATH)
def console(request: Request) -> Response:
    # The shell carries no data: badges, histories and alerts come from the admin API with the token.
    return render(request, "console.html", title="console.title", script="console.js", body_class="console")


@router.get("/console/config.json")
def console_config(request: Request) -> JSONResponse:
    """The active ``admin_console`` client registered for our callback (as /app/config.json)."""
    issuer = _issuer(request)
    callback = issuer + CALLBACK_PATH
    engine: sa.Engine = request.app.state.container.engine
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(oauth_clients.c.client_id, oauth_clients.c.redirect_uris, oauth_clients.c.extra_metadata)
            .where(oauth_clients.c.role == CONSOLE_ROLE, oauth_clients.c.active.is_(True))
            .order_by(oauth_clients.c.created_at, oauth_clients.c.client_id)
        ).all()
    client = next((r for r in rows if callback in (r.redirect_uris or [])), None)
    if client is None:
        log_event(log, "identity.web.console_config.no_client")
        return JSONResponse(
            {"type": "about:blank", "title": "Not Found", "status": 404, "code": "console_not_configured",
             "detail": f"No active admin_console client has the redirect URI {callback}."},
            status_code=404, media_type="application/problem+json", headers={"Cache-Control": "no-cache"},
        )
    return JSONResponse(
        {
            "issuer": issuer,
            "client_id": client.client_id,
            "id_token_signed_response_alg": (client.extra_metadata or {}).get("id_token_signed_response_alg", "RS256"),
            "redirect_uri": callback,
            "scope": CONSOLE_SCOPE,
            "acr_values": CONSOLE_ACR,
            "api": "/admin/v1",
        },
        headers={"Cache-Control": "no-cache", **SECURITY_HEADERS},
    )

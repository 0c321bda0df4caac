"""The admin console at ``/console/`` (issue 4): the badge office and port security, on a tablet too.

Built like the driver app (identity.web.routes): one server-rendered page, one small script, the same
stylesheet, strict CSP and no inline script. The page is a public OpenID Connect client of our own
provider (``admin_console`` role: authorization code with PKCE S256, passkey login) and calls the
admin API (``/admin/v1``) with the officer's access token; the API checks the role and the passkey
login on every call and audits each action with the person as actor (identity.api.admin).

Routes (pages, not in the OpenAPI document)::

    GET /console/, /console/callback    the console shell (the callback is the OIDC redirect_uri)
    GET /console/config.json            the console's client_id, redirect URI, id token alg and, when its
                                        client registered it, /console/ as its post-logout redirect URI
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from .routes import public_client_config, render

log = logging.getLogger("identity.web.console")

CONSOLE_PATH = "/console/"
CALLBACK_PATH = "/console/callback"
CONSOLE_ROLE = "admin_console"
# identity.domain.scopes: the admin_console role's scopes (badges:office counts only with the role).
CONSOLE_SCOPE = "openid profile offline_access admin badges:office"
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
    return render(request, "console.html", title="console.title", script="console.js", body_class="console",
                  oidc=True)


@router.get("/console/config.json")
def console_config(request: Request) -> JSONResponse:
    """The active ``admin_console`` client registered for our callback (as /app/config.json), and
    /console/ to come back to after signing out when the client registered it (review 128, finding 1)."""
    return public_client_config(request, role=CONSOLE_ROLE, callback_path=CALLBACK_PATH,
                                code="console_not_configured", post_logout_path=CONSOLE_PATH,
                                scope=CONSOLE_SCOPE, acr_values=CONSOLE_ACR, api="/admin/v1")

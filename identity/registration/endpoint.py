"""The HTTP edge of dynamic client registration: bearer token, JSON body, errors as RFC 7591 §3.2.2
JSON (401 with an RFC 6750 §3 challenge for a bad initial or registration access token).

The caller's token is on the headers alone: a registration (POST) or an update (PUT) checks it before
any of the metadata is read (``registration_admit``, given to the routes with quaygate.routing
``admit_first``), so nobody without a live token makes the server read and parse a metadata document.
The token is still claimed (an initial access token) or swapped (a registration access token) in the
transaction that writes, once the body is in: a token used or rotated meanwhile is refused there.

A refusal goes on the audit trail when it concerns something of ours: an initial access token that
exists (used, expired), a client that exists (a wrong registration access token in its name), a caller
whose token held (bad metadata). One about nothing of ours, from a caller who proved no one (no token,
an initial access token we never made, a client_id we do not know), is logged only (identity.audit's
rule; review 129, finding 2): anyone can send those, and each would be a permanent row. Every method
under /oauth2/register is counted by the rate limiter (identity.ratelimit) all the same."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from quaygate.appstate import built_once
from release_service.api.problems import encodable

from .. import audit
from ..grants import grants_for
from .metadata import INVALID_CLIENT_METADATA
from .service import ClientManagement, RegistrationError

if TYPE_CHECKING:
    from ..oidc.server import FormRequest

log = logging.getLogger(__name__)

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def management_for(app: Any) -> ClientManagement:
    """The app's ClientManagement, built on first use from ``app.state.container``."""
    from ..bootstrap import provider_for  # the provider owns the app's one ClientRegistry

    def build() -> ClientManagement:
        c = app.state.container
        return ClientManagement(c.engine, grants_for(app), issuer=c.settings.issuer,
                                access_token_ttl=c.settings.access_token_ttl,
                                on_change=provider_for(app).clients.changed, login_acrs=provider_for(app).login_acrs)

    return built_once(app, "identity_client_management", build)


def _bearer(headers: Any) -> str:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RegistrationError("invalid_token", "A bearer access token is required.", 401, reason="no_token")
    return token.strip()


def _json(raw: FormRequest) -> Any:
    if raw.body is None:
        raise RegistrationError(INVALID_CLIENT_METADATA, "The metadata document is too large.")
    if raw.content_type.split(";")[0].strip().lower() != "application/json":
        raise RegistrationError(INVALID_CLIENT_METADATA, "Send the metadata as application/json.")  # RFC 7591 §3.1
    try:
        return json.loads(raw.body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the parser's stack
        raise RegistrationError(INVALID_CLIENT_METADATA, "The body is not valid JSON.") from exc


def registration_endpoint(app: Any, raw: FormRequest, *, client_id: str | None) -> Response:
    """POST /oauth2/register (RFC 7591 §3) and GET/PUT/DELETE /oauth2/register/{id} (RFC 7592 §2)."""
    container = app.state.container
    manager = management_for(app)
    now = container.clock.now()
    try:
        token = _bearer(raw.headers)
        if client_id is None:
            doc = _json(raw)
            out = manager.register(token, doc, now=now)
            log.info("identity.client.registered", extra={"client_id": out.client_id})
            return JSONResponse(out.document, status_code=201, headers=NO_STORE)
        if raw.method == "GET":
            return JSONResponse(manager.read(client_id, token, now=now), headers=NO_STORE)
        if raw.method == "PUT":
            doc = _json(raw)
            return JSONResponse(manager.update(client_id, token, doc, now=now), headers=NO_STORE)
        manager.delete(client_id, token, now=now)
        return Response(status_code=204, headers=NO_STORE)
    except RegistrationError as exc:
        return _refused(app, exc, client_id=client_id, method=raw.method, now=now)


def registration_admit(app: Any, method: str, headers: Any, *, client_id: str | None) -> Response | None:
    """POST /oauth2/register's and PUT /oauth2/register/{id}'s caller on the headers alone, before any
    of the metadata is read: an initial access token that could register now (RFC 7591 §3), or the
    client's registration access token (RFC 7592 §3). None to go on; else the refusal, answered and
    audited as ``registration_endpoint`` answers it. Blocking (PostgreSQL): off the event loop."""
    container = app.state.container
    now = container.clock.now()
    try:
        token = _bearer(headers)
        if client_id is None:
            management_for(app).check_initial_access_token(token, now=now)
        else:
            management_for(app).check_registration_token(client_id, token)
    except RegistrationError as exc:
        return _refused(app, exc, client_id=client_id, method=method, now=now)
    return None


# Refusals that name nothing at all: no bearer token, or an initial access token we never made.
_ABOUT_NOTHING = frozenset({"no_token", "iat_unknown"})


def _concerns_ours(app: Any, exc: RegistrationError, client_id: str | None) -> bool:
    """Is the refusal about something of ours (module docstring)? A wrong registration access token is,
    when its client exists (active or not: ClientRegistry.find, from memory for a client it knows)."""
    from ..bootstrap import provider_for

    if exc.reason in _ABOUT_NOTHING:
        return False
    if exc.reason == "rat_invalid":
        return client_id is not None and provider_for(app).clients.find(client_id) is not None
    return True


def _refused(app: Any, exc: RegistrationError, *, client_id: str | None, method: str, now: datetime) -> Response:
    kind = "identity.client.register.refused" if client_id is None else "identity.client.manage.refused"
    log.info("%s.%s", kind, exc.reason)
    if _concerns_ours(app, exc, client_id):
        audit.record(kind, at=now, actor={"client_id": client_id} if client_id else {}, subject=client_id,
                     data={"reason": exc.reason, "method": method}, engine=app.state.container.engine)
    headers = dict(NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = f'Bearer error="{exc.error}"'  # RFC 6750 §3
    body = {"error": exc.error, "error_description": encodable(exc.description)}
    return JSONResponse(body, status_code=exc.status if exc.status in (400, 401) else 400, headers=headers)

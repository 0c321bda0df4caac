"""Token introspection (RFC 7662) and what it shares with revocation: client authentication at the
token-lifecycle endpoints and finding a presented token.

Who may learn what (RFC 7662 §2.1 leaves the rule to us; §4 lets us answer "inactive")::

    a confidential client asks about a token issued to itself      -> the token's metadata
    an admin client (role admin) asks about any token of ours      -> the token's metadata
    anything else: unknown, malformed, expired, revoked, rotated,
    of another client, not ours                                    -> {"active": false}

So a stolen token cannot be checked for liveness by another integrator, and an answer never says
*why* a token is inactive. Public clients (the driver app) cannot introspect: they cannot keep a
credential (RFC 7662 §2.1 requires client authentication), and they have no need to.

Access tokens are JWTs: verified as a resource server would (signature, our issuer, one of our
audiences, expiry) and then looked up on the revocation list. Refresh tokens are looked up by hash
in their grant (``GrantStore.find_by_refresh``): active only while the token is ``active``, unexpired
and its grant unrevoked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import OAuth2Error, OAuth2Request
from starlette.responses import JSONResponse

from quaygate.appstate import built_once

from ..domain import claims as c
from ..domain.roles import AuthMethod, ClientRole
from ..grants import REFRESH_PREFIX, Grant, GrantStore, RevocationList, grants_for, revocations_for
from ..tokens import InvalidToken

if TYPE_CHECKING:
    import sqlalchemy as sa

    from quaygate.container import SystemClock
    from quaygate.settings import Settings

    from ..bootstrap import IdentityProvider
    from .server import AuthorizationServer, FormRequest, OAuthClient

log = logging.getLogger(__name__)

INTROSPECTION_PATH = "/oauth2/introspect"
ACCESS_TOKEN = "access_token"  # noqa: S105 - RFC 7009 §2.1 / RFC 7662 §2.1 token_type_hint values
REFRESH_TOKEN = "refresh_token"  # noqa: S105
TOKEN_TYPE_HINTS = frozenset({ACCESS_TOKEN, REFRESH_TOKEN})
CONFIDENTIAL_METHODS = [
    AuthMethod.CLIENT_SECRET_BASIC.value,
    AuthMethod.CLIENT_SECRET_POST.value,
    AuthMethod.PRIVATE_KEY_JWT.value,
]
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
INACTIVE: dict[str, Any] = {"active": False}


def authenticate(
    server: AuthorizationServer, raw: FormRequest, *, public_allowed: bool
) -> tuple[OAuth2Request, OAuthClient] | JSONResponse:
    """Authenticate the calling client with the method it registered for the token endpoint (RFC 7009
    §2.1 and RFC 7662 §2.1 reuse RFC 6749 §2.3; RFC 7591 has no separate per-endpoint method), with
    Authlib's client authentication, private_key_jwt's single-use ``jti`` included. An error is the
    RFC 6749 §5.2 JSON (invalid_client, 401 for HTTP Basic)."""
    request: OAuth2Request | None = None
    methods = CONFIDENTIAL_METHODS + ([AuthMethod.NONE.value] if public_allowed else [])
    try:
        request = server.create_oauth2_request(raw)
        client = server.authenticate_client(request, methods, "token")
    except OAuth2Error as error:
        log.info("identity.client_auth.refused", extra={"error": error.error})
        return server.handle_error_response(request, error)  # type: ignore[no-any-return]
    return request, client


def form_of(request: OAuth2Request) -> Mapping[str, str]:
    form: Mapping[str, str] = request.form
    return form


@dataclass(frozen=True, slots=True)
class RefreshLookup:
    grant: Grant
    status: str
    expires_at: datetime

    def active(self, now: datetime) -> bool:
        return self.status == "active" and not self.grant.revoked and self.expires_at > now


class TokenInspector:
    """Finds and describes a presented token; used by introspection and revocation."""

    def __init__(
        self,
        *,
        provider: IdentityProvider,
        grants: GrantStore,
        revocations: RevocationList,
        settings: Settings,
        engine: sa.Engine,
        clock: SystemClock,
    ) -> None:
        self.provider = provider
        self.grants = grants
        self.revocations = revocations
        self.settings = settings
        self.engine = engine
        self.clock = clock

    @staticmethod
    def is_refresh(token: str) -> bool:
        return token.startswith(REFRESH_PREFIX)

    def access_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid, unexpired, unrevoked access token of ours (any of our audiences)."""
        s = self.settings
        for audience in dict.fromkeys((s.api_audience, s.gate_audience)):
            try:
                claims = self.provider.verifier.verify(token, audience=audience)
            except InvalidToken as exc:
                if "aud" in exc.description:
                    continue  # another audience of ours, perhaps
                return None
            # Checked here too, whether or not the verifier was given the revocation list.
            if self.revocations.token_revoked(claims):
                return None
            return claims
        return None

    def refresh(self, token: str) -> RefreshLookup | None:
        with self.engine.connect() as conn:
            found = self.grants.find_by_refresh(conn, token)
        return RefreshLookup(*found) if found else None

    # ---- RFC 7662 ------------------------------------------------------------------------------

    def introspect(self, token: str, *, asker: OAuthClient) -> dict[str, Any]:
        """RFC 7662 §2.2 response for ``token`` as seen by ``asker`` (rule in the module docstring)."""
        if not token or len(token) > 8192:
            return dict(INACTIVE)
        if self.is_refresh(token):
            return self._introspect_refresh(token, asker)
        claims = self.access_claims(token)
        if claims is None or not _may_see(asker, str(claims[c.CLIENT_ID])):
            return dict(INACTIVE)
        body: dict[str, Any] = {"active": True}
        for name in (c.SCOPE, c.CLIENT_ID, c.SUB, c.EXP, c.IAT, c.NBF, c.AUD, c.ISS, c.JTI, "cnf", "acr", "amr",
                     "auth_time", c.ROLE, c.ORG, c.ORG_KIND, c.TERMINAL):
            if name in claims:
                body[name] = claims[name]
        cnf = claims.get("cnf")
        # RFC 9449 §6.2: a DPoP-bound token is of type DPoP.
        body["token_type"] = "DPoP" if isinstance(cnf, dict) and "jkt" in cnf else "Bearer"
        return body

    def _introspect_refresh(self, token: str, asker: OAuthClient) -> dict[str, Any]:
        found = self.refresh(token)
        now = self.clock.now()
        if found is None or not found.active(now) or not _may_see(asker, found.grant.client_id):
            return dict(INACTIVE)
        g = found.grant
        body: dict[str, Any] = {
            "active": True,
            "token_type": REFRESH_TOKEN,
            "scope": g.scope,
            "client_id": g.client_id,
            "sub": str(g.person_id) if g.person_id else g.client_id,
            "exp": int(found.expires_at.timestamp()),
            "iss": self.settings.issuer,
        }
        if g.acr:
            body["acr"] = g.acr
        if g.amr:
            body["amr"] = list(g.amr)
        if g.auth_time:
            body["auth_time"] = int(g.auth_time.timestamp())
        if g.dpop_jkt:
            body["cnf"] = {"jkt": g.dpop_jkt}
        return body


def _may_see(asker: OAuthClient, owner: str) -> bool:
    return asker.record.client_id == owner or asker.record.role is ClientRole.ADMIN


def inspector_for(app: Any) -> TokenInspector:
    """The app's TokenInspector, built on first use from ``app.state.container``."""
    from ..bootstrap import provider_for

    def build() -> TokenInspector:
        container = app.state.container
        return TokenInspector(provider=provider_for(app), grants=grants_for(app), revocations=revocations_for(app),
                              settings=container.settings, engine=container.engine, clock=container.clock)

    return built_once(app, "identity_inspector", build)


def introspection_response(app: Any, raw: FormRequest) -> JSONResponse:
    """POST /oauth2/introspect (RFC 7662 §2): authenticate the client, describe the token."""
    inspector = inspector_for(app)
    authed = authenticate(inspector.provider.server, raw, public_allowed=False)
    if isinstance(authed, JSONResponse):
        return authed
    request, client = authed
    token = form_of(request).get("token")
    if not token:
        return _error("invalid_request", "The token parameter is required.")  # RFC 7662 §2.1
    body = inspector.introspect(token, asker=client)
    log.info("identity.token.introspected", extra={"client_id": client.get_client_id(), "active": body["active"]})
    return JSONResponse(body, headers=NO_STORE)


def _error(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=NO_STORE)

"""From a bearer access token to an Actor. Only authentication lives here; the rules are in the domain."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Protocol

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from identity.tokens import InvalidToken
from release_service.domain.parties import Actor, OrgKind

from .problems import AuthError

bearer = HTTPBearer(auto_error=False, description="OAuth2 access token (RFC 9068 JWT) from /oauth2/token")


class TokenVerifier(Protocol):
    def verify(self, token: str, *, audience: str) -> dict[str, Any]: ...


def actor_from_claims(claims: dict[str, Any]) -> Actor:
    org = claims.get("org")
    kind = claims.get("org_kind")
    person = claims.get("person_id")
    roles = claims.get("roles") or []
    return Actor(
        client_id=str(claims.get("client_id") or claims.get("sub")),
        organisation_id=uuid.UUID(org) if org else None,
        kind=OrgKind(kind) if kind else None,
        person_id=uuid.UUID(person) if person else None,
        terminal_code=claims.get("terminal"),
        scopes=frozenset(str(claims.get("scope", "")).split()),
        roles=frozenset([claims["role"]] if claims.get("role") else []) | frozenset(roles),
    )


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None, *, audience: str,
                 scope: str) -> Actor:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise AuthError(401, "invalid_request", "An OAuth2 bearer access token is required.")
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        claims = verifier.verify(credentials.credentials, audience=audience)
    except InvalidToken as exc:
        raise AuthError(401, "invalid_token", exc.description) from exc
    try:
        actor = actor_from_claims(claims)
    except (ValueError, KeyError) as exc:
        raise AuthError(401, "invalid_token", "The access token's claims are malformed.") from exc
    if scope not in actor.scopes:
        raise AuthError(403, "insufficient_scope", f"This call needs the scope {scope}.", scope=scope)
    return actor


def require(scope: str, *, audience_setting: str = "api_audience") -> Callable[..., Actor]:
    """A dependency giving the authenticated Actor; it checks the token and its scope, nothing else."""
    from fastapi import Depends

    def dependency(request: Request,
                   credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Actor:  # noqa: B008
        audience = getattr(request.app.state.container.settings, audience_setting)
        return authenticate(request, credentials, audience=audience, scope=scope)

    return dependency

"""JWT access tokens (RFC 9068): signing ours, and verifying them at the resource servers.

joserfc is always called with an explicit registry: RS256 only. Never its defaults (which also allow
HS256), never "none", never an HMAC algorithm, whose "secret" an attacker could take to be our public
key (the RS/HS confusion attack).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from .domain import claims as c

log = logging.getLogger(__name__)

ACCESS_TOKEN_ALGORITHMS = ("RS256",)
MAX_TOKEN_LENGTH = 8192


def _registry(algorithms: Collection[str]) -> JWSRegistry:
    if not algorithms or "none" in algorithms or any(a.startswith("HS") for a in algorithms):
        raise ValueError("access tokens use asymmetric algorithms only")
    return JWSRegistry(algorithms=list(algorithms))


_SIGNING_REGISTRY = _registry(ACCESS_TOKEN_ALGORITHMS)


def sign_access_token(claims: dict[str, Any], key: RSAKey, *, alg: str = "RS256") -> str:
    """Sign a claim set as a JWT access token: header typ ``at+jwt`` (RFC 9068 §2.1) and our kid."""
    if not key.kid:
        raise ValueError("signing key without kid")
    header = {"alg": alg, "typ": c.ACCESS_TOKEN_TYP, "kid": key.kid}
    payload = json.dumps(claims, separators=(",", ":"))
    return jws.serialize_compact(header, payload, key, registry=_SIGNING_REGISTRY)


class InvalidToken(Exception):
    """A bearer token is refused; ``error`` is an RFC 6750 §3.1 code.

    invalid_request: the request is malformed; invalid_token: the token is expired, revoked,
    malformed or invalid for other reasons; insufficient_scope: the token lacks a needed scope.
    """

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


class KeySource(Protocol):
    """Where the verifier finds our public keys: keys.KeyStore, or a JWKS fetcher elsewhere."""

    def public_key_set(self, *, refresh: bool = False, kid: str | None = None) -> KeySet: ...


class AccessTokenVerifier:
    """Validate a JWT access token as RFC 9068 §4 asks; return its claims."""

    def __init__(
        self,
        key_source: KeySource,
        issuer: str,
        *,
        algorithms: Collection[str] = ACCESS_TOKEN_ALGORITHMS,
        leeway: int = 30,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._keys = key_source
        self._issuer = issuer
        self._algorithms = frozenset(algorithms)
        self._registry = _registry(self._algorithms)
        self._leeway = leeway
        self._now = now

    def verify(self, token: str, *, audience: str) -> dict[str, Any]:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("invalid_token", "malformed token")
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
            header = obj.headers()
        except (JoseError, ValueError, UnicodeEncodeError) as exc:
            raise InvalidToken("invalid_token", "malformed token") from exc
        # RFC 9068 §4: the typ header must be at+jwt, so an id token or another JWT signed with the
        # same key is never taken for an access token (RFC 8725 §3.11 explicit typing).
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in c.ACCESS_TOKEN_TYPES:
            raise InvalidToken("invalid_token", "not an access token (typ)")
        # RFC 8725 §3.1: the algorithm comes from our allow-list, never from the token.
        if header.get("alg") not in self._algorithms:
            raise InvalidToken("invalid_token", "algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("invalid_token", "no key id")
        key = self._key(kid)
        try:
            valid = jws.validate_compact(obj, key, registry=self._registry)
        except JoseError as exc:
            raise InvalidToken("invalid_token", "invalid signature") from exc
        if not valid:
            raise InvalidToken("invalid_token", "invalid signature")
        try:
            claims = json.loads(obj.payload)
        except ValueError as exc:
            raise InvalidToken("invalid_token", "malformed claims") from exc
        if not isinstance(claims, dict):
            raise InvalidToken("invalid_token", "malformed claims")
        self._check_claims(claims, audience)
        return claims

    def _key(self, kid: str) -> RSAKey:
        """The key named by kid; on a miss, refresh the key set once (a key rotated in elsewhere)."""
        for refresh in (False, True):
            for key in self._keys.public_key_set(refresh=refresh, kid=kid):
                if key.kid == kid and isinstance(key, RSAKey):
                    return key
        log.info("identity.token.refused.unknown_kid")
        raise InvalidToken("invalid_token", "unknown key")

    def _check_claims(self, claims: dict[str, Any], audience: str) -> None:
        essential: dict[str, Any] = {name: {"essential": True} for name in c.REQUIRED}
        essential[c.ISS] = {"essential": True, "value": self._issuer}
        essential[c.AUD] = {"essential": True, "value": audience}
        registry = JWTClaimsRegistry(now=int(self._now()), leeway=self._leeway, **essential)
        try:
            registry.validate(claims)  # exp, and nbf/iat not in the future, with the leeway
        except JoseError as exc:
            log.info("identity.token.refused.claims")
            raise InvalidToken("invalid_token", _describe(exc)) from exc
        if not isinstance(claims.get(c.CLIENT_ID), str):
            raise InvalidToken("invalid_token", "invalid client_id")


def require_scope(claims: dict[str, Any], scope: str) -> None:
    """RFC 6750 §3.1 insufficient_scope when the token does not carry ``scope``."""
    granted = claims.get(c.SCOPE)
    if not isinstance(granted, str) or scope not in granted.split():
        raise InvalidToken("insufficient_scope", f"needs scope {scope}")


def _describe(exc: JoseError) -> str:
    text = f"{exc.error}: {exc.description}" if getattr(exc, "description", None) else str(exc.error)
    return text.replace('"', "'")[:200]

"""JWT access tokens (RFC 9068): signing ours (and our id tokens, ``sign_jwt``), and verifying them
at the resource servers.

joserfc is always called with an explicit registry: RS256, PS256 and ES256 only. Never its defaults
(which also allow HS256), never "none", never an HMAC algorithm, whose "secret" an attacker could take
to be our public key (the RS/HS confusion attack). The key named by ``kid`` must also be of the type
its algorithm needs (RSA for RS256/PS256, EC P-256 for ES256, RFC 7518 §3.1), so the token's header
can never pick how our key is used.

A verified token may still have been revoked (RFC 7009, a refresh-token family revoked on reuse):
the verifier asks the revocation list, when it is given one, after the signature and the claims.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from .domain import claims as c

log = logging.getLogger(__name__)

ACCESS_TOKEN_ALGORITHMS = ("RS256", "PS256", "ES256")
MAX_TOKEN_LENGTH = 8192
# RFC 7518 §3.1: the key type each allowed algorithm needs (and the curve, for ECDSA).
_KEY_TYPES: dict[str, tuple[type[RSAKey] | type[ECKey], str | None]] = {
    "RS256": (RSAKey, None),
    "PS256": (RSAKey, None),
    "ES256": (ECKey, "P-256"),
}


def _registry(algorithms: Collection[str]) -> JWSRegistry:
    if not algorithms or any(a not in _KEY_TYPES for a in algorithms):
        raise ValueError(f"access tokens use {', '.join(_KEY_TYPES)} only (never none, never HS*)")
    return JWSRegistry(algorithms=list(algorithms))


def fits(key: Any, alg: str) -> bool:
    """True when ``key`` may verify (or make) an ``alg`` signature: its type, its curve, and the
    ``alg`` the key itself names, if any (RFC 7517 §4.4)."""
    kind, curve = _KEY_TYPES.get(alg, (None, None))
    if kind is None or not isinstance(key, kind):
        return False
    if curve is not None and key.curve_name != curve:
        return False
    named = key.get("alg")
    return named is None or named == alg


_SIGNING_REGISTRY = _registry(ACCESS_TOKEN_ALGORITHMS)


def sign_jwt(claims: dict[str, Any], key: RSAKey | ECKey, *, typ: str, alg: str | None = None) -> str:
    """Sign a claim set as a compact JWS with our kid. The algorithm is the one the key names
    (RFC 7517 §4.4; every key.KeyStore key does), so a caller cannot pair a key with the wrong one;
    ``alg`` only for a key that names none (RS256 if omitted)."""
    if not key.kid:
        raise ValueError("signing key without kid")
    alg = alg or key.get("alg") or "RS256"
    if not fits(key, alg):
        raise ValueError(f"a {type(key).__name__} cannot sign {alg}")
    header = {"alg": alg, "typ": typ, "kid": key.kid}
    payload = json.dumps(claims, separators=(",", ":"))
    return jws.serialize_compact(header, payload, key, registry=_SIGNING_REGISTRY)


def sign_access_token(claims: dict[str, Any], key: RSAKey | ECKey, *, alg: str | None = None) -> str:
    """Sign a claim set as a JWT access token: header typ ``at+jwt`` (RFC 9068 §2.1) and our kid."""
    return sign_jwt(claims, key, typ=c.ACCESS_TOKEN_TYP, alg=alg)


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


class Revocations(Protocol):
    """What the verifier asks of the revocation list (``grants.RevocationList``)."""

    def token_revoked(self, claims: dict[str, Any]) -> bool: ...

    def names(self, claims: dict[str, Any]) -> list[str] | None: ...

    def judge(self, claims: dict[str, Any], values: Sequence[bytes | None]) -> bool: ...

    def watch(self) -> None: ...


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
        revoked: Callable[[dict[str, Any]], bool] | None = None,
        revocations: Revocations | None = None,
        memo_size: int = 4096,
    ) -> None:
        """``revoked``: is the token with these verified claims revoked, on its own or with its client?
        (``grants.RevocationList.token_revoked``); None: not checked. ``revocations``: the revocation
        list itself, instead: it also lets a caller fold the check into a read of its own
        (``verify(..., revocation=False)``, ``revocation_names``, ``revoked_by``).

        ``memo_size``: how many tokens whose signature checked out are remembered, so a gate or a back
        end sending the same token again and again costs no second signature check, nor a second
        check of the claims that cannot change (issuer, audience, types: remembered per audience
        they were checked for). On every call the key must still be published, the times (``exp``,
        ``nbf``, ``iat``) are checked against now, and revocation is checked. 0: no memo."""
        # token -> (kid, alg, claims, the audiences its claims were checked for)
        self._memo: dict[str, tuple[str, str, dict[str, Any], set[str]]] = {}
        self._memo_size = memo_size
        self._keys = key_source
        # (kid, alg) -> the key found for them in one key set, kept only while that very set is the one
        # published (a rotation or a key's publish_until passing makes a new set: nothing found in the
        # old one is used again).
        self._found: tuple[Any, dict[tuple[str, str], Any]] = (None, {})
        if revoked is not None and revocations is not None:
            raise ValueError("revoked or revocations, not both")
        self._revocations = revocations
        self._revoked = revocations.token_revoked if revocations is not None else revoked
        self._issuer = issuer
        self._algorithms = frozenset(algorithms)
        self._registry = _registry(self._algorithms)
        self._leeway = leeway
        self._now = now

    def verify(self, token: str, *, audience: str, revocation: bool = True) -> dict[str, Any]:
        """The token's claims when its signature, key, type and claims are good and it is not revoked.
        ``revocation=False``: everything but revocation, which the caller then settles itself with
        ``revoked_by`` (on the values of ``revocation_names``) before it trusts the token."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("invalid_token", "malformed token")
        known = self._memo.get(token)
        if known is not None:
            kid, alg, claims, checked = known
            self._key(kid, alg)  # a key withdrawn since (rotation, compromise) takes its tokens with it
            if audience in checked and self._in_time(claims):
                return self._revocation(dict(claims), revocation)
            self._accept(claims, audience, revocation)  # the full check, and its own error if any
            checked.add(audience)
            return dict(claims)
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
        key = self._key(kid, header["alg"])
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
        self._accept(claims, audience, revocation)
        if self._memo_size:
            if len(self._memo) >= self._memo_size:
                self._memo.clear()  # crude but lock-free; a full memo means many distinct tokens
            self._memo[token] = (kid, header["alg"], dict(claims), {audience})
        return claims

    def _accept(self, claims: dict[str, Any], audience: str, revocation: bool = True) -> dict[str, Any]:
        """The claims checked, then revocation."""
        self._check_claims(claims, audience)
        return self._revocation(claims, revocation)

    def _revocation(self, claims: dict[str, Any], revocation: bool) -> dict[str, Any]:
        # RFC 7009 §2 / RFC 9700 §4.14.2: revoked on its own, or with its grant's family. Checked
        # last, so an unsigned token can never make us look a jti up.
        if revocation and self.revoked_by(claims, None):
            raise InvalidToken("invalid_token", "token revoked")
        return claims

    def _in_time(self, claims: dict[str, Any]) -> bool:
        """For claims _check_claims accepted before (so the times are numbers and exp and iat are
        there): still within them now, by joserfc's rules and our leeway? False sends the caller to
        the full check, which names what is wrong."""
        now = int(self._now())
        nbf = claims.get(c.NBF)
        return (claims[c.EXP] > now - self._leeway and claims[c.IAT] <= now + self._leeway
                and (nbf is None or nbf <= now + self._leeway))

    def revocation_names(self, claims: dict[str, Any]) -> list[str] | None:
        """The Redis names whose values settle the revocation of a token ``verify`` accepted, for a
        caller reading them in a round trip of its own; None when it cannot (no revocation list, no
        Redis): then ``revoked_by(claims, None)`` asks the list itself."""
        return None if self._revocations is None else self._revocations.names(claims)

    def revoked_by(self, claims: dict[str, Any], values: Sequence[bytes | None] | None) -> bool:
        """Is the token revoked, given the values read for ``revocation_names`` (None: look them up)?"""
        if self._revoked is None:
            return False
        if values is None or self._revocations is None:
            revoked = self._revoked(claims)
        else:
            revoked = self._revocations.judge(claims, values)
            self._revocations.watch()  # the entries were read elsewhere: is the list still in the cache?
        if revoked:
            log.info("identity.token.refused.revoked")
        return revoked

    def _key(self, kid: str, alg: str) -> RSAKey | ECKey:
        """The key named by kid; on a miss, refresh the key set once (a key rotated in elsewhere).
        The key must suit the token's algorithm (an EC key never checks an RS256 signature)."""
        for refresh in (False, True):
            key_set = self._keys.public_key_set(refresh=refresh, kid=kid)
            in_set, found = self._found
            if in_set is key_set:
                known = found.get((kid, alg))
                if known is not None:
                    return known  # type: ignore[no-any-return]
            for key in key_set:
                if key.kid == kid:
                    if not fits(key, alg):
                        log.info("identity.token.refused.key_type")
                        raise InvalidToken("invalid_token", "algorithm does not fit the key")
                    if in_set is not key_set:
                        found = {}
                        self._found = (key_set, found)
                    found[(kid, alg)] = key
                    return key  # type: ignore[return-value]
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

"""JOSE for the brokered login, with joserfc and explicit registries (its defaults refuse RSA-OAEP-256).

- ``open_nested``: an id token or userinfo response received signed then encrypted (OIDC Core §10.2,
  RFC 7519 §5.2 ``cty: JWT``): the JWE header is judged (alg RSA-OAEP-256, enc A128CBC-HS256 or A256GCM,
  our kid) before anything is decrypted, then the inner JWS is verified with the upstream key named by
  its kid. Every failure is a ``BrokerRefused`` with its own code: a header parameter we or joserfc read
  that is not a string (RFC 7515 §4.1, RFC 7516 §4.1), a header or payload that is no JSON object, and
  whatever joserfc raises on a hostile token (a ``crit`` that is no list: TypeError) included, never a 500
  (review 157, finding 3).
- ``client_assertion``: RFC 7523 §2.2 ``private_key_jwt`` (RS256, aud = token endpoint, unique jti,
  one minute of validity).
- ``request_object``: OIDC Core §6.1 / RFC 9101, signed (RS256) then optionally encrypted to the
  upstream's ``enc`` key.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from joserfc import jwe, jws
from joserfc.jwe import JWERegistry
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.registry import HeaderParameter

from ..domain.broker import BrokerRefused, Refusal


def _audience(value: Any) -> None:
    if not isinstance(value, str) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError("aud must be a string or a list of strings")


JWE_ALGS = frozenset({"RSA-OAEP-256"})
JWE_ENCS = frozenset({"A128CBC-HS256", "A256GCM"})
JWS_ALGS = frozenset({"RS256", "PS256", "ES256"})  # what an upstream may sign id tokens/userinfo with
# RFC 7519 §5.3: an encrypted JWT may replicate iss and aud in its header (oidc-provider does).
_REPLICATED = {"iss": HeaderParameter("Issuer", "str"), "aud": HeaderParameter("Audience", _audience)}
_JWE_REGISTRY = JWERegistry(header_registry=_REPLICATED, algorithms=[*JWE_ALGS, *JWE_ENCS])
_JWS_REGISTRY = JWSRegistry(algorithms=list(JWS_ALGS))
_RS256 = JWSRegistry(algorithms=["RS256"])
ASSERTION_TTL = timedelta(seconds=60)

UpstreamKey = RSAKey | ECKey
# The header parameters read here or by joserfc that RFC 7515 §4.1 / RFC 7516 §4.1 make strings. One of
# another type is refused before any is compared: ``["RSA-OAEP-256"] in JWE_ALGS`` raised TypeError.
_JWE_STRINGS = ("alg", "enc", "kid", "cty", "typ", "zip")
_JWS_STRINGS = ("alg", "kid", "cty", "typ")


def _header(compact: str) -> dict[str, Any]:
    try:
        raw = compact.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error, RecursionError):  # RecursionError: JSON nested deeper than we parse
        return {}
    return header if isinstance(header, dict) else {}


def _not_a_string(header: dict[str, Any], names: tuple[str, ...]) -> str | None:
    """The first of ``names`` the header holds as something other than a string."""
    return next((name for name in names if name in header and not isinstance(header[name], str)), None)


def open_nested(
    compact: str,
    *,
    decryption_key: Callable[[str], RSAKey | None],
    upstream_key: Callable[[str | None], UpstreamKey | None],
    require_encryption: bool,
    signed_alg: str = "RS256",
) -> dict[str, Any]:
    """The claims of a (signed, then encrypted) JWT. ``decryption_key(kid)``: our private key for a
    kid, or None; ``upstream_key(kid)``: the upstream's public key for a kid (refetching its JWKS
    once when unknown), or None."""
    if not isinstance(compact, str) or len(compact) > 64_000:
        raise BrokerRefused(Refusal.ENCRYPTION_INVALID, "not a compact JOSE string")
    parts = compact.count(".") + 1
    if parts == 5:
        compact = _decrypt(compact, decryption_key)
    elif parts != 3:
        raise BrokerRefused(Refusal.ENCRYPTION_INVALID, f"{parts} parts")
    elif require_encryption:
        raise BrokerRefused(Refusal.NOT_ENCRYPTED, "a JWS where a JWE is required")
    header = _header(compact)
    wrong = _not_a_string(header, _JWS_STRINGS)
    if wrong is not None:
        raise BrokerRefused(Refusal.SIGNATURE_INVALID, f"header {wrong} is not a string")
    if header.get("alg") != signed_alg:  # never "none", never HS256 with a public key as secret
        raise BrokerRefused(Refusal.SIGNATURE_INVALID, f"alg {header.get('alg')!r}")
    kid = header.get("kid")
    key = upstream_key(kid)
    if key is None:
        raise BrokerRefused(Refusal.UNKNOWN_KID, "signing kid")
    try:
        verified = jws.deserialize_compact(compact, key, algorithms=[signed_alg], registry=_JWS_REGISTRY)
    except Exception as exc:  # noqa: BLE001 - JoseError, and what joserfc raises on a hostile token: TypeError...
        raise BrokerRefused(Refusal.SIGNATURE_INVALID, type(exc).__name__) from None
    try:
        claims = json.loads(verified.payload)
    except (ValueError, RecursionError):
        raise BrokerRefused(Refusal.CLAIMS_INVALID, "payload is not JSON") from None
    if not isinstance(claims, dict):
        raise BrokerRefused(Refusal.CLAIMS_INVALID, "payload is not an object")
    return claims


def _decrypt(compact: str, decryption_key: Callable[[str], RSAKey | None]) -> str:
    header = _header(compact)
    wrong = _not_a_string(header, _JWE_STRINGS)
    if wrong is not None:
        raise BrokerRefused(Refusal.ENCRYPTION_INVALID, f"header {wrong} is not a string")
    if header.get("alg") not in JWE_ALGS or header.get("enc") not in JWE_ENCS:
        raise BrokerRefused(Refusal.ENCRYPTION_INVALID, f"alg {header.get('alg')!r} enc {header.get('enc')!r}")
    if "cty" in header and header["cty"].upper() != "JWT":  # RFC 7519 §5.2: a nested JWT
        raise BrokerRefused(Refusal.ENCRYPTION_INVALID, "cty")
    kid = header.get("kid")
    key = decryption_key(kid) if kid is not None else None
    if key is None:
        raise BrokerRefused(Refusal.UNKNOWN_KID, "encryption kid")
    try:
        opened = jwe.decrypt_compact(compact, key, registry=_JWE_REGISTRY)
    except Exception as exc:  # noqa: BLE001 - JoseError, and what joserfc raises on a hostile token: TypeError...
        raise BrokerRefused(Refusal.ENCRYPTION_INVALID, type(exc).__name__) from None
    try:
        return (opened.plaintext or b"").decode("ascii")
    except UnicodeDecodeError:
        raise BrokerRefused(Refusal.ENCRYPTION_INVALID, "plaintext is not a JWS") from None


def client_assertion(key: RSAKey, *, client_id: str, token_endpoint: str, now: datetime) -> str:
    """RFC 7523 §3: iss = sub = client_id, aud = the token endpoint (itsme asks for it), unique jti."""
    stamp = int(now.timestamp())
    claims = {"iss": client_id, "sub": client_id, "aud": token_endpoint, "jti": secrets.token_urlsafe(24),
              "iat": stamp, "exp": stamp + int(ASSERTION_TTL.total_seconds())}
    return jws.serialize_compact({"alg": "RS256", "typ": "JWT", "kid": key.kid}, json.dumps(claims), key,
                                 registry=_RS256)


def request_object(params: Mapping[str, Any], *, key: RSAKey, client_id: str, audience: str, now: datetime,
                   encrypt_to: RSAKey | None, enc: str = "A128CBC-HS256") -> str:
    """OIDC Core §6.1: the authorization parameters as a JWT signed with our RS256 key, then (when
    the upstream publishes an ``enc`` key) encrypted to it (§6.1 "signed and then encrypted")."""
    stamp = int(now.timestamp())
    claims = {**params, "iss": client_id, "aud": audience, "iat": stamp, "nbf": stamp, "exp": stamp + 300,
              "jti": secrets.token_urlsafe(16)}
    signed = jws.serialize_compact({"alg": "RS256", "typ": "oauth-authz-req+jwt", "kid": key.kid},
                                   json.dumps(claims), key, registry=_RS256)
    if encrypt_to is None:
        return signed
    protected = {"alg": "RSA-OAEP-256", "enc": enc, "cty": "JWT", "kid": encrypt_to.kid}
    return jwe.encrypt_compact(protected, signed, encrypt_to, registry=_JWE_REGISTRY)

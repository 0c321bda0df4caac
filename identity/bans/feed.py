"""The register's signature on a ban feed: a JWS (RFC 7515), compact or JSON serialization.

Only ES256 (RFC 7518 §3.4, P-256) and EdDSA / Ed25519 (RFC 8037, RFC 9864) are taken, from an explicit
registry: never the library's defaults, never ``none``, never HS* (a shared secret would let anyone
holding the verifying key forge bans). The key must be of the algorithm's type and curve. The key is
the register's public JWK, configured (``QUAYGATE_BAN_REGISTER_JWK`` or ``..._JWK_PATH``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey
from joserfc.jws import JWSRegistry

from identity.domain.bans import FeedRefusal, FeedRefused

# RFC 7518 §3.1 / RFC 8037 §3.1: each allowed algorithm and the key type and curve it needs.
FEED_ALGORITHMS: dict[str, tuple[type[ECKey] | type[OKPKey], str]] = {
    "ES256": (ECKey, "P-256"),
    "Ed25519": (OKPKey, "Ed25519"),  # RFC 9864's fully specified name
    "EdDSA": (OKPKey, "Ed25519"),  # the RFC 8037 name registers still use
}
MAX_FEED_BYTES = 64 * 1024 * 1024  # a 100 000-ban snapshot is about 20 MB as a JWS


class _FeedRegistry(JWSRegistry):
    # joserfc caps payloads at 128 kB by default (a token's size); a full register is far bigger.
    max_payload_length = MAX_FEED_BYTES


_REGISTRY = _FeedRegistry(algorithms=list(FEED_ALGORITHMS))

RegisterKey = ECKey | OKPKey
_NOT_SIGNED_BY_KEY = "bad signature: the feed is not signed by the configured register key"


def register_key(jwk_json: str | None, path: Path | None) -> RegisterKey:
    """The configured public key; ValueError with a plain message when it is missing or unfit."""
    if jwk_json is None and path is not None:
        jwk_json = path.read_text()
    if not jwk_json:
        raise ValueError("no ban register key configured (QUAYGATE_BAN_REGISTER_JWK or QUAYGATE_BAN_REGISTER_JWK_PATH)")
    try:
        data = json.loads(jwk_json)
    except json.JSONDecodeError:
        raise ValueError("the ban register key is not a JSON JWK") from None
    if not isinstance(data, dict) or "d" in data:
        raise ValueError("the ban register key must be a public JWK (no private part)")
    kty = data.get("kty")
    try:
        key: RegisterKey = ECKey.import_key(data) if kty == "EC" else OKPKey.import_key(data)
    except (JoseError, ValueError, TypeError) as exc:
        raise ValueError(f"the ban register key is not usable: {exc}") from None
    if not any(isinstance(key, kind) and key.curve_name == curve for kind, curve in FEED_ALGORITHMS.values()):
        raise ValueError("the ban register key must be EC P-256 (ES256) or OKP Ed25519 (EdDSA)")
    return key


def verify_feed(raw: bytes, key: RegisterKey) -> Any:
    """The signed payload, parsed as JSON; FeedRefused (unsigned / bad_signature / malformed) otherwise."""
    if len(raw) > MAX_FEED_BYTES:
        raise FeedRefused(FeedRefusal.MALFORMED, f"malformed feed: larger than {MAX_FEED_BYTES} bytes")
    text = raw.strip()
    try:
        if text.startswith(b"{"):
            payload = _verify_json(text, key)
        else:
            payload = _verify_compact(text, key)
    except FeedRefused:
        raise
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        # A wrong key, a tampered payload or header, an algorithm off the list: one answer.
        raise FeedRefused(FeedRefusal.BAD_SIGNATURE, f"{_NOT_SIGNED_BY_KEY} ({_why(exc)})") from None
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise FeedRefused(FeedRefusal.MALFORMED, "malformed feed: the signed payload is not JSON") from None


def _verify_compact(text: bytes, key: RegisterKey) -> bytes:
    if text.count(b".") != 2:
        raise FeedRefused(FeedRefusal.UNSIGNED, "unsigned feed: neither a compact JWS nor a JWS JSON serialization")
    header_b64, _, rest = text.partition(b".")
    if rest.endswith(b"."):
        raise FeedRefused(FeedRefusal.UNSIGNED, "unsigned feed: the JWS has no signature")
    obj = jws.extract_compact(text, registry=_REGISTRY)
    _check_alg(obj.protected.get("alg"), key)
    if not jws.validate_compact(obj, key, registry=_REGISTRY):
        raise FeedRefused(FeedRefusal.BAD_SIGNATURE, _NOT_SIGNED_BY_KEY)
    return obj.payload


def _verify_json(text: bytes, key: RegisterKey) -> bytes:
    try:
        value = json.loads(text)
    except ValueError:
        raise FeedRefused(FeedRefusal.MALFORMED, "malformed feed: not JSON") from None
    if not isinstance(value, dict) or "payload" not in value or not (value.get("signature") or value.get("signatures")):
        raise FeedRefused(FeedRefusal.UNSIGNED, "unsigned feed: a plain JSON document, not a signed JWS")
    if "signatures" in value:
        if not isinstance(value["signatures"], list) or len(value["signatures"]) != 1:
            raise FeedRefused(FeedRefusal.BAD_SIGNATURE, "bad signature: exactly one signature is expected")
        protected_b64 = value["signatures"][0].get("protected", "")
    else:
        protected_b64 = value.get("protected", "")
    obj = jws.deserialize_json(value, key, registry=_REGISTRY)  # type: ignore[arg-type]
    headers = obj.headers() if hasattr(obj, "headers") else obj.members[0].headers()
    _check_alg(headers.get("alg"), key)
    if not protected_b64:
        raise FeedRefused(FeedRefusal.BAD_SIGNATURE, "bad signature: the algorithm must be in the protected header")
    return obj.payload


def _check_alg(alg: Any, key: RegisterKey) -> None:
    if alg == "none" or not alg:
        raise FeedRefused(FeedRefusal.UNSIGNED, "unsigned feed: alg none")
    fit = FEED_ALGORITHMS.get(alg)
    if fit is None:
        raise FeedRefused(FeedRefusal.BAD_SIGNATURE, f"bad signature: algorithm {alg} is not accepted (ES256, EdDSA)")
    kind, curve = fit
    if not isinstance(key, kind) or key.curve_name != curve:
        raise FeedRefused(FeedRefusal.BAD_SIGNATURE, f"bad signature: {alg} does not fit the register key")


def _why(exc: Exception) -> str:
    return getattr(exc, "error", None) or type(exc).__name__

"""Helpers of the DPoP tests (no tests here): a client's proof key and the proofs it makes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from joserfc import jws
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from identity.dpop import access_token_hash, jwk_thumbprint

_ANY_ASYMMETRIC = JWSRegistry(algorithms=["ES256", "RS256", "PS256", "Ed25519"])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_key(alg: str = "ES256") -> Any:
    if alg == "ES256":
        return ECKey.generate_key("P-256")
    if alg == "Ed25519":
        return OKPKey.generate_key("Ed25519")
    return RSAKey.generate_key(2048)


@dataclass
class ProofKey:
    """A DPoP client's key pair; ``proof()`` makes a proof as RFC 9449 §4.2 describes."""

    alg: str = "ES256"
    key: Any = None
    clock: list[float] = field(default_factory=lambda: [time.time()])

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = new_key(self.alg)

    @property
    def public_jwk(self) -> dict[str, Any]:
        return dict(self.key.as_dict(private=False))

    @property
    def jkt(self) -> str:
        return jwk_thumbprint(self.public_jwk)

    def proof(self, htm: str = "POST", htu: str = "https://server.example/token", *, token: str | None = None,
              header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None,
              drop: tuple[str, ...] = (), signer: Any = None) -> str:
        h: dict[str, Any] = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.public_jwk, **(header or {})}
        body: dict[str, Any] = {"jti": secrets.token_urlsafe(12), "htm": htm, "htu": htu,
                                "iat": int(self.clock[0])}
        if token is not None:
            body["ath"] = access_token_hash(token)
        body.update(claims or {})
        for name in drop:
            h.pop(name, None)
            body.pop(name, None)
        return jws.serialize_compact(h, json.dumps(body), signer or self.key, registry=_ANY_ASYMMETRIC)


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"\x00" * 32) -> str:
    """A compact JWS put together by hand (alg none, forged signatures)."""
    parts = [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode())]
    return ".".join([*parts, b64(signature)])


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HMAC-signed proof: the RS/HS confusion attack uses a public key as the 'secret'."""
    signing_input = ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode())])
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"

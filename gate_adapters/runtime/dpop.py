"""DPoP (RFC 9449) for the adapter's client: every token request and every call to the service carries a
proof signed with a key that never leaves the adapter host, so a token copied off the host is refused
without it (the service: ``release_service/api/auth.py``; a bound token sent as ``Bearer`` gets 401).

Rules:
1. The key is EC P-256 and signs with ES256 (RFC 9449 §4.2; one of the service's
   ``dpop_signing_alg_values_supported``). It is kept as a private JWK in a file of its own, written with
   mode 0600 by ``quaygate gate-adapter --config ... --make-keys`` when absent (never overwritten), and
   never logged nor printed: only its RFC 7638 thumbprint is, the ``cnf.jkt`` the service binds the token to.
2. A proof (§4.2): header ``typ`` ``dpop+jwt``, ``alg`` ES256, ``jwk`` the public key only; claims
   ``jti`` (128 random bits), ``iat``, ``htm`` (the method), ``htu`` (the request's URI without query and
   fragment), ``ath`` (base64url of the SHA-256 of the access token, §7.1) when a token is sent, and
   ``nonce`` when the server gave one. A fresh proof per request, retries included (a proof is single use).
3. Server nonces (§8 at the token endpoint, §9 at the API): the newest ``DPoP-Nonce`` a server sent is
   kept per origin (``Nonces``; one for the token endpoint, one for the API) and put in the next proof.
   An answer ``use_dpop_nonce`` with a new nonce is retried once with it (``needs_nonce``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from joserfc import jws
from joserfc.jwk import ECKey

from .keys import create_ec_key, private_key, read_private_file
from .seal import key_material

DPOP_ALG = "ES256"
DPOP_TYP = "dpop+jwt"  # RFC 9449 §4.2
USE_DPOP_NONCE = "use_dpop_nonce"  # RFC 9449 §8, §9


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def access_token_hash(token: str) -> str:
    """RFC 9449 §4.2 ``ath``: base64url (no padding) of the SHA-256 of the ASCII access token."""
    return _b64url(hashlib.sha256(token.encode("ascii")).digest())


def htu_of(url: str) -> str:
    """RFC 9449 §4.2 ``htu``: the request's URI without its query and fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "", ""))


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


class DPoPKey:
    """The adapter's DPoP key (rule 1) and the proofs it signs (rule 2)."""

    def __init__(self, key: ECKey, *, clock: Callable[[], float] = time.time) -> None:
        if key.key_type != "EC" or key.curve_name != "P-256" or not key.is_private:
            raise ValueError("the DPoP key must be a private EC P-256 key (ES256)")
        self._key, self._clock = key, clock
        self.public_jwk: dict[str, Any] = {k: v for k, v in key.as_dict(private=False).items()
                                           if k in ("kty", "crv", "x", "y")}
        self.jkt: str = key.thumbprint()  # RFC 7638: what the token's cnf.jkt holds (RFC 9449 §6.1)

    def __repr__(self) -> str:  # never the private key, in a log line or a traceback
        return f"DPoPKey(jkt={self.jkt!r})"

    def secret_material(self) -> bytes:
        """The private key's own members, for the seal of the adapter's files (seal.py); never logged."""
        return key_material(self._key)

    @classmethod
    def load(cls, path: Path, *, clock: Callable[[], float] = time.time, strict: bool = True) -> DPoPKey:
        """The key from its file (a private JWK, or a PEM private key), its mode checked (``strict``:
        ``KeyFileExposed`` when group or others may read it, keys.py). ValueError / OSError, whose
        messages never quote the file."""
        raw = read_private_file(path, strict=strict)
        try:
            key = private_key(raw)
        except ValueError:
            key = None
        if not isinstance(key, ECKey):
            raise ValueError(f"{path} is not an EC P-256 private key (a JWK or PEM)")
        return cls(key, clock=clock)

    @staticmethod
    def create(path: Path, *, strict: bool = True) -> tuple[bool, str]:
        """Write a new key to ``path`` unless a file is there (rule 1); (created, thumbprint)."""
        created = create_ec_key(path)
        return created, DPoPKey.load(path, strict=strict).jkt

    def proof(self, htm: str, url: str, *, access_token: str | None = None, nonce: str | None = None) -> str:
        """A fresh proof for one request (rule 2)."""
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": htm, "htu": htu_of(url),
                                  "iat": int(self._clock())}
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        header = {"typ": DPOP_TYP, "alg": DPOP_ALG, "jwk": self.public_jwk}
        payload = json.dumps(claims, separators=(",", ":")).encode()
        return jws.serialize_compact(header, payload, self._key, algorithms=[DPOP_ALG])


class Nonces:
    """The newest ``DPoP-Nonce`` each origin sent (rule 3), for one role (token endpoint or API)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_origin: dict[str, str] = {}

    def get(self, url: str) -> str | None:
        with self._lock:
            return self._by_origin.get(origin_of(url))

    def note(self, r: httpx.Response) -> str | None:
        """Keep the nonce an answer carries (any answer, RFC 9449 §8.2); return it."""
        nonce = r.headers.get("DPoP-Nonce")
        if nonce:
            with self._lock:
                self._by_origin[origin_of(str(r.request.url))] = nonce
        return nonce or None


def needs_nonce(r: httpx.Response, sent: str | None) -> bool:
    """The server asks for a nonce (RFC 9449 §8: a 400 ``use_dpop_nonce`` from the token endpoint; §9: a
    401 whose ``WWW-Authenticate`` says ``use_dpop_nonce``) and gave one other than the one we sent."""
    nonce = r.headers.get("DPoP-Nonce")
    if not nonce or nonce == sent:
        return False
    if r.status_code == 401:
        return USE_DPOP_NONCE in ",".join(r.headers.get_list("WWW-Authenticate"))
    if r.status_code == 400:
        try:
            body = r.json()
        except ValueError:
            return False
        return isinstance(body, dict) and body.get("error") == USE_DPOP_NONCE
    return False

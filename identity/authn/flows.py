"""A passkey ceremony's flow, sealed instead of stored (review 67, finding 4).

Redis runs under ``noeviction`` (quaygate/dataset.py), so whatever an anonymous caller can make us store
is a way to fill it, and a full Redis refuses the writes that DPoP claims, logins, the token endpoint and
the gates' verify calls need (503). A passkey login starts anonymous, so its options store nothing: the
flow id they answer with is the flow itself, under a MAC of ours::

    flow      = base64url(body | tag)                                       56 characters, no padding
    body      = version (1) | purpose (1) | issued, ms (6) | lifetime, s (2) | nonce (16)
    tag       = HMAC-SHA256(K_seal, body)[:16]
    challenge = HMAC-SHA256(K_challenge, body)                              32 bytes, never carried

``K_seal`` and ``K_challenge`` are derived from the service's pepper, each for this use alone (the pepper
also keys user handles and national-number hashes: a value made for one of those never passes for
another). The challenge is made again from the flow at the finish rather than carried, so a flow stays
within the 64 characters a flow id always had (``identity.authn.service._FLOW_ID``; the pages and the
driver app pass it on as an opaque string). It is what WebAuthn §13.4.3 asks of a challenge: at least
16 bytes no one else can predict (a pseudorandom function of a random 128-bit nonce under a key only
the service holds); every replica that shares the pepper opens every flow.

Opening checks the version, the tag (constant time), the purpose (a flow sealed for registration never
verifies a login, whatever the assertion signs) and the expiry, in that order; each refusal has one
reason. Single use is the caller's: identity.authn.service ``finish_authentication`` claims the flow's
``ref`` (one ``SET NX`` until it expires, refused for a flow issued before the cache's epoch) once the
assertion's signature holds, so only a caller holding a registered passkey makes a write.

Standard library only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

VERSION = 1
PURPOSES = {"authentication": 1, "registration": 2}
_NAMES = {code: name for name, code in PURPOSES.items()}
_NONCE = 16
_TAG = 16
_BODY = 1 + 1 + 6 + 2 + _NONCE
SEALED_LENGTH = 56  # characters: base64url of _BODY + _TAG (42) bytes, no padding
MAX_LIFETIME = 0xFFFF  # seconds: two bytes
_KEY_CONTEXT = b"quaygate/webauthn/flow/v1:"


class FlowRefused(Exception):
    """A flow that does not open. ``reason``: malformed, version, seal, purpose, expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SealedFlow:
    purpose: str
    issued_at: float  # Unix seconds, to the millisecond (rounded down)
    expires_at: float
    nonce: bytes
    challenge: bytes

    @property
    def ref(self) -> str:
        """What names the flow's single-use claim: its nonce (base64url), unique to the flow."""
        return _b64(self.nonce)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


class FlowSeal:
    """Seals and opens flows under keys derived from ``key`` (the service's pepper)."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("a flow seal needs a key")
        self._seal_key = hmac.new(key, _KEY_CONTEXT + b"seal", hashlib.sha256).digest()
        self._challenge_key = hmac.new(key, _KEY_CONTEXT + b"challenge", hashlib.sha256).digest()

    def seal(self, purpose: str, *, now: float, lifetime: int) -> tuple[str, SealedFlow]:
        """A new flow for ``purpose``, issued ``now`` (Unix seconds), living ``lifetime`` seconds:
        (the sealed value, what it holds)."""
        if not 0 < lifetime <= MAX_LIFETIME:
            raise ValueError(f"a flow lives between 1 and {MAX_LIFETIME} seconds")
        issued_ms = int(now * 1000)
        body = (bytes([VERSION, PURPOSES[purpose]]) + issued_ms.to_bytes(6, "big") + lifetime.to_bytes(2, "big")
                + secrets.token_bytes(_NONCE))
        return _b64(body + self._tag(body)), self._read(body)

    def open(self, value: Any, purpose: str, *, now: float) -> SealedFlow:
        """What a sealed flow holds, if it is ours, for ``purpose`` and not expired ``now``; else
        FlowRefused. Nothing is stored or read: the caller claims its single use."""
        if not isinstance(value, str) or len(value) != SEALED_LENGTH:
            raise FlowRefused("malformed")
        try:
            raw = base64.urlsafe_b64decode(value + "==")
        except (binascii.Error, ValueError) as exc:
            raise FlowRefused("malformed") from exc
        if len(raw) != _BODY + _TAG or _b64(raw) != value:  # one spelling only: no padding, no stray bits
            raise FlowRefused("malformed")
        body, tag = raw[:_BODY], raw[_BODY:]
        if body[0] != VERSION:
            raise FlowRefused("version")
        if not hmac.compare_digest(tag, self._tag(body)):
            raise FlowRefused("seal")
        flow = self._read(body)
        if flow.purpose != purpose:
            raise FlowRefused("purpose")
        if now >= flow.expires_at:
            raise FlowRefused("expired")
        return flow

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._seal_key, body, hashlib.sha256).digest()[:_TAG]

    def _read(self, body: bytes) -> SealedFlow:
        issued = int.from_bytes(body[2:8], "big") / 1000
        lifetime = int.from_bytes(body[8:10], "big")
        return SealedFlow(purpose=_NAMES.get(body[1], "unknown"), issued_at=issued, expires_at=issued + lifetime,
                          nonce=body[10:], challenge=hmac.new(self._challenge_key, body, hashlib.sha256).digest())

"""A software WebAuthn authenticator and client for the tests (no tests here).

It plays both halves a browser and a platform authenticator play, from the published formats only
(WebAuthn Level 3 §6.1 authenticator data, §6.5 attestation object, §5.8.1 client data, §6.3.3
getAssertion), never from our storage: EC P-256 keys (ES256), "none" attestation, a real signature over
``authenticatorData || SHA-256(clientDataJSON)``, and the JSON of ``PublicKeyCredential.toJSON()``.
Knobs let a test play an attacker or a broken device: another origin, another RP id, no UV flag, a
chosen sign counter, another user handle. Chrome's virtual authenticator covers the real browser.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Key:
    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    sign_count: int = 0


@dataclass
class SoftAuthenticator:
    """A discoverable-credential platform authenticator with a sign counter (or none: ``counter=False``)."""

    origin: str
    aaguid: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    counter: bool = True
    backup: bool = False
    keys: dict[bytes, Key] = field(default_factory=dict)

    # ---- navigator.credentials.create() ---------------------------------------------------------

    def create(
        self,
        options: dict[str, Any],
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        uv: bool = True,
        challenge: str | None = None,
    ) -> dict[str, Any]:
        rp = rp_id or options["rp"]["id"]
        user_handle = unb64url(options["user"]["id"])
        excluded = {unb64url(c["id"]) for c in options.get("excludeCredentials", [])}
        if excluded & set(self.keys):
            raise RuntimeError("InvalidStateError: this authenticator already holds an excluded credential")
        assert any(p["alg"] == -7 for p in options["pubKeyCredParams"]), "ES256 not offered"
        private = ec.generate_private_key(ec.SECP256R1())
        cid = secrets.token_bytes(32)
        key = Key(cid, private, rp, user_handle, sign_count=1 if self.counter else 0)
        # A resident credential replaces any other of the same RP and user on this authenticator (§6.3.2).
        for other in [k for k in self.keys.values() if k.rp_id == rp and k.user_handle == user_handle]:
            del self.keys[other.credential_id]
        self.keys[cid] = key
        numbers = private.public_key().public_numbers()
        cose = cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})
        flags = UP | AT | (UV if uv else 0) | ((BE | BS) if self.backup else 0)
        auth_data = (
            hashlib.sha256(rp.encode()).digest()
            + bytes([flags])
            + struct.pack(">I", key.sign_count)
            + self.aaguid
            + struct.pack(">H", len(cid))
            + cid
            + cose
        )
        client_data = self._client_data("webauthn.create", challenge or options["challenge"], origin)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {
            "id": b64url(cid),
            "rawId": b64url(cid),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["internal", "hybrid"],
                "publicKeyAlgorithm": -7,
            },
        }

    # ---- navigator.credentials.get() ------------------------------------------------------------

    def get(
        self,
        options: dict[str, Any],
        *,
        credential_id: str | None = None,
        origin: str | None = None,
        rp_id: str | None = None,
        uv: bool = True,
        sign_count: int | None = None,
        user_handle: bytes | None = None,
        challenge: str | None = None,
        cross_origin: bool = False,
    ) -> dict[str, Any]:
        rp = rp_id or options["rpId"]
        if credential_id is not None:
            key = self.keys[unb64url(credential_id)]
        else:
            mine = [k for k in self.keys.values() if k.rp_id == options["rpId"]]
            assert len(mine) == 1, f"{len(mine)} discoverable credentials for {options['rpId']}: pass credential_id"
            key = mine[0]
        if sign_count is not None:
            key.sign_count = sign_count
        elif self.counter:
            key.sign_count += 1
        flags = UP | (UV if uv else 0) | ((BE | BS) if self.backup else 0)
        auth_data = hashlib.sha256(rp.encode()).digest() + bytes([flags]) + struct.pack(">I", key.sign_count)
        client_data = self._client_data("webauthn.get", challenge or options["challenge"], origin, cross_origin)
        signature = key.private_key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        return {
            "id": b64url(key.credential_id),
            "rawId": b64url(key.credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(user_handle if user_handle is not None else key.user_handle),
            },
        }

    def _client_data(self, kind: str, challenge: str, origin: str | None, cross_origin: bool = False) -> bytes:
        # §5.8.1.1: the members in this order, compact; the challenge is base64url without padding.
        data: dict[str, Any] = {"type": kind, "challenge": challenge, "origin": origin or self.origin,
                                "crossOrigin": cross_origin}
        if cross_origin:
            data["topOrigin"] = "https://framing.evil.example"
        return json.dumps(data, separators=(",", ":")).encode()

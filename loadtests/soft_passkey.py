"""A compact software passkey for the benchmarks: real ES256 WebAuthn ceremonies, no browser.

The same formats as tests/webauthn_authenticator.py (WebAuthn Level 3 §6.1 authenticator data, §6.5
"none" attestation, §5.8.1 client data, §6.3.3 getAssertion signature), cut down to what a load test
needs, and serialisable so the Locust process gets the keys the setup registered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, AT = 0x01, 0x04, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SoftPasskey:
    """One discoverable credential with its sign counter."""

    origin: str
    rp_id: str
    credential_id: bytes
    user_handle: bytes
    private_key: ec.EllipticCurvePrivateKey
    sign_count: int = 1

    @classmethod
    def register(cls, options: dict[str, Any], *, origin: str) -> tuple[SoftPasskey, dict[str, Any]]:
        """navigator.credentials.create(): a new key and the credential JSON to post."""
        key = cls(origin, options["rp"]["id"], secrets.token_bytes(32), unb64url(options["user"]["id"]),
                  ec.generate_private_key(ec.SECP256R1()))
        numbers = key.private_key.public_key().public_numbers()
        cose = cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})
        auth_data = (hashlib.sha256(key.rp_id.encode()).digest() + bytes([UP | UV | AT])
                     + struct.pack(">I", key.sign_count) + bytes(16) + struct.pack(">H", len(key.credential_id))
                     + key.credential_id + cose)
        client_data = key._client_data("webauthn.create", options["challenge"])
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        cid = b64url(key.credential_id)
        return key, {"id": cid, "rawId": cid, "type": "public-key", "authenticatorAttachment": "platform",
                     "clientExtensionResults": {},
                     "response": {"clientDataJSON": b64url(client_data), "attestationObject": b64url(attestation),
                                  "transports": ["internal"], "publicKeyAlgorithm": -7}}

    def assert_(self, challenge: str) -> dict[str, Any]:
        """navigator.credentials.get() with user verification: the counter moves on, the key signs."""
        self.sign_count += 1
        auth_data = hashlib.sha256(self.rp_id.encode()).digest() + bytes([UP | UV]) + struct.pack(">I", self.sign_count)
        client_data = self._client_data("webauthn.get", challenge)
        signature = self.private_key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        cid = b64url(self.credential_id)
        return {"id": cid, "rawId": cid, "type": "public-key", "authenticatorAttachment": "platform",
                "clientExtensionResults": {},
                "response": {"clientDataJSON": b64url(client_data), "authenticatorData": b64url(auth_data),
                             "signature": b64url(signature), "userHandle": b64url(self.user_handle)}}

    def _client_data(self, kind: str, challenge: str) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge, "origin": self.origin, "crossOrigin": False},
                          separators=(",", ":")).encode()

    def to_json(self) -> dict[str, Any]:
        pem = self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
        return {"origin": self.origin, "rp_id": self.rp_id, "credential_id": b64url(self.credential_id),
                "user_handle": b64url(self.user_handle), "private_key": pem.decode(), "sign_count": self.sign_count}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SoftPasskey:
        key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(data["origin"], data["rp_id"], unb64url(data["credential_id"]), unb64url(data["user_handle"]),
                   key, data["sign_count"])

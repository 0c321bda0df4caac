"""RFC 7523 client assertions for the load tests (no Locust import: Locust patches the process with gevent)."""

from __future__ import annotations

import base64
import json
import time
import uuid

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class AssertionSigner:
    """RFC 7523 §3 client assertions, ES256 (cheap to sign), each with a fresh jti."""

    def __init__(self, client_id: str, kid: str, pem: str, audience: str) -> None:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key
        self._client_id = client_id
        self._audience = audience
        self._header = _b64(json.dumps({"alg": "ES256", "kid": kid, "typ": "JWT"}, separators=(",", ":")).encode())

    def assertion(self) -> str:
        now = int(time.time())
        claims = {"iss": self._client_id, "sub": self._client_id, "aud": self._audience, "iat": now,
                  "exp": now + 60, "jti": uuid.uuid4().hex}
        signing_input = self._header + "." + _b64(json.dumps(claims, separators=(",", ":")).encode())
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

"""Encryption at rest: AES-256-GCM under the service's data key, which never lives in the database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class DataCipher:
    """Seals small secrets (private keys, webhook secrets, face templates) with associated data.

    The associated data binds a ciphertext to its row (for example a key id), so a ciphertext copied
    into another row does not decrypt.
    """

    VERSION = b"\x01"

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the data key must be 32 bytes")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"quaygate-data-key" + key).hexdigest()[:16]

    def seal(self, plaintext: bytes, aad: bytes) -> str:
        nonce = os.urandom(12)
        blob = self.VERSION + nonce + self._aead.encrypt(nonce, plaintext, aad)
        return base64.urlsafe_b64encode(blob).decode()

    def open(self, sealed: str, aad: bytes) -> bytes:
        blob = base64.urlsafe_b64decode(sealed)
        if blob[:1] != self.VERSION:
            raise ValueError("unknown sealed-data version")
        return self._aead.decrypt(blob[1:13], blob[13:], aad)


def keyed_hash(pepper: bytes, value: str) -> str:
    """HMAC-SHA256 of an identifier we must match but never keep (national register numbers)."""
    return hmac.new(pepper, value.encode(), hashlib.sha256).hexdigest()

"""Encryption at rest: AES-256-GCM under the service's data key, which never lives in the database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


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
        self._key = key
        self.key_id = hashlib.sha256(b"quaygate-data-key" + key).hexdigest()[:16]

    def derive(self, purpose: bytes) -> bytes:
        """A 32-byte key for one other use of the data key (HKDF-SHA256, RFC 5869, ``purpose`` as its
        info): a MAC key, say, that never touches the key that seals. Keys for different purposes are
        independent, and none of them gives the data key back."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"quaygate:" + purpose).derive(self._key)

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

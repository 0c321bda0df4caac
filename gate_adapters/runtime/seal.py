"""A seal over what the adapter keeps in its own SQLite files, under a key only its key files give.

The pass store (offline.py rule 1) keeps the service's JWK Set beside the passes; a file anyone may edit
cannot vouch for the key that checks it. So what the store keeps is sealed: an HMAC-SHA256 (RFC 2104) under
a key derived with HKDF-SHA256 (RFC 5869) from the adapter's own secrets, which live in files of their own,
permission-checked (keys.py ``read_private_file``, config.py ``read_secret_file``), never in the store.
Whoever may write the store but not read those files cannot make a seal that holds.

``secret_material`` is the input keying material: the client credential (the ``private_key_jwt`` key's
private members, or the client secret) and, when set, the DPoP key's. A key file rewritten in another form
(PEM for JWK) gives the same material; a new key gives another, and the store sealed under the old one is
then set aside once (logged) and sealed again at the next refresh.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc.jwk import ECKey, OKPKey, RSAKey

# The members of a private JWK that are the key itself (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2); not kid,
# alg, use: those may be written differently for the same key.
_KEY_MEMBERS = ("kty", "crv", "x", "y", "d", "n", "e", "p", "q", "dp", "dq", "qi")


def key_material(key: ECKey | RSAKey | OKPKey) -> bytes:
    """A private key's own members, in one canonical form."""
    jwk = key.as_dict(private=True)
    return json.dumps({k: jwk[k] for k in _KEY_MEMBERS if k in jwk}, sort_keys=True,
                      separators=(",", ":")).encode()


def secret_material(parts: Sequence[tuple[str, bytes]]) -> bytes:
    """Labelled parts, each length-prefixed (no two lists of parts give the same bytes)."""
    out = bytearray()
    for label, value in parts:
        for chunk in (label.encode(), value):
            out += len(chunk).to_bytes(4, "big") + chunk
    return bytes(out)


class Seal:
    """HMAC-SHA256 under ``HKDF-SHA256(secret, info=purpose)``; the key is never shown."""

    def __init__(self, secret: bytes, *, purpose: str) -> None:
        if not secret:
            raise ValueError("a seal needs a secret")
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(secret)

    def __repr__(self) -> str:
        return "Seal(...)"

    def mac(self, *fields: str) -> str:
        """The seal of ``fields`` (a JSON list: no two lists of fields give the same message)."""
        message = json.dumps(list(fields), separators=(",", ":")).encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def holds(self, mac: object, *fields: str) -> bool:
        return isinstance(mac, str) and hmac.compare_digest(mac.encode(), self.mac(*fields).encode())

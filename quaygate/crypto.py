"""Encryption at rest: AES-256-GCM under the service's data key, which never lives in the database.

A keyring (review 132, finding 4): the current data key (``QUAYGATE_DATA_KEY``) seals everything new;
the previous ones (``QUAYGATE_DATA_KEYS_PREVIOUS``) still open what they sealed, until ``quaygate keys
rekey-data`` has sealed it again under the current key and ``--check`` finds none left. Blobs:

    v1  0x01 || nonce (12) || ciphertext+tag                  (before the keyring: names no key)
    v2  0x02 || key id (8) || nonce (12) || ciphertext+tag    (names the key that sealed it)

all in urlsafe base64. A v2 blob opens under the key it names only; a v1 blob is tried under the current
key then each previous one (AES-GCM's tag tells which, with no chance of a wrong key passing). The key id
is the first 8 bytes of SHA-256("quaygate-data-key" || key): it names a key without giving it away, and
a v2 blob's base64 begins with the same 12 characters for every blob of one key (``prefix``), which lets
SQL count the rows not yet under the current key.

What a client or a browser holds sealed (nothing of it stored here) opens under the current key only
(``open_current``, review 135 finding 1): a previous key may be the one that leaked. What the database
holds opens with ``open_stored`` (review 140, finding 1): under a previous key only until ``rekey-data`` has
finished under the current one (its mark, ``watch_rekey``); after that a previous key's blob is one written
since by whoever holds that key, and is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

V1 = b"\x01"
V2 = b"\x02"
_ID_BYTES = 8
_NONCE = 12


class UnknownDataKey(InvalidTag, ValueError):
    """A blob names a data key that is neither the current one nor a configured previous one. An
    ``InvalidTag`` as well, so every caller that refuses a blob that does not open refuses this one."""


def data_key_id(key: bytes) -> str:
    """The short public id of a data key (16 hex characters), as blobs and ``face_templates.key_id`` name it."""
    return hashlib.sha256(b"quaygate-data-key" + key).hexdigest()[:2 * _ID_BYTES]


class DataCipher:
    """Seals small secrets (private keys, webhook secrets, face templates) with associated data.

    The associated data binds a ciphertext to its row (for example a key id), so a ciphertext copied
    into another row does not decrypt. ``previous``: older data keys, which open what they sealed and
    seal nothing.
    """

    VERSION = V2

    def __init__(self, key: bytes, previous: Iterable[bytes] = ()) -> None:
        keys = [key, *previous]
        if any(len(k) != 32 for k in keys):
            raise ValueError("the data key must be 32 bytes")
        ids = [data_key_id(k) for k in keys]
        if len(set(ids)) != len(ids):
            raise ValueError("a previous data key repeats the current one or another previous one")
        self._key = key
        self._keys = keys
        self._aeads = {kid: AESGCM(k) for kid, k in zip(ids, keys, strict=True)}
        self.key_id = ids[0]
        self.previous_key_ids = tuple(ids[1:])
        # ``rekey_finished``: who to ask, how often, and the answer once it was yes (it never goes back).
        self._rekeyed: Callable[[], bool] | None = None
        self._finished = not self.previous_key_ids
        self._check_every = 1.0
        self._checked_at = float("-inf")
        self._monotonic: Callable[[], float] = time.monotonic
        self._lock = threading.Lock()
        # Every v2 blob of the current key starts with these base64 characters (9 bytes: 12 characters).
        self.prefix = base64.urlsafe_b64encode(V2 + bytes.fromhex(self.key_id)).decode()

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The current key's id, then the previous keys' ids."""
        return (self.key_id, *self.previous_key_ids)

    def derive(self, purpose: bytes) -> bytes:
        """A 32-byte key for one other use of the current data key (HKDF-SHA256, RFC 5869, ``purpose`` as its
        info): a MAC key, say, that never touches the key that seals. Keys for different purposes are
        independent, and none of them gives the data key back."""
        return _derive(self._key, purpose)

    def derive_all(self, purpose: bytes) -> tuple[bytes, ...]:
        """``derive(purpose)`` under the current key, then under each previous key: for checking a stored
        value made before the data key changed (a face enrolment tag) while the previous key is still
        configured. What is made new uses the first."""
        return tuple(_derive(k, purpose) for k in self._keys)

    def seal(self, plaintext: bytes, aad: bytes) -> str:
        nonce = os.urandom(_NONCE)
        blob = V2 + bytes.fromhex(self.key_id) + nonce + self._aeads[self.key_id].encrypt(nonce, plaintext, aad)
        return base64.urlsafe_b64encode(blob).decode()

    def open(self, sealed: str, aad: bytes) -> bytes:
        """The plaintext; ``InvalidTag`` when it does not open (altered, another row's, or a v1 blob under
        none of the keys), ``UnknownDataKey`` (a ValueError) when it names a key not configured."""
        blob = _decode(sealed)
        if blob[:1] == V2:
            kid = blob[1:1 + _ID_BYTES].hex()
            aead = self._aeads.get(kid)
            if aead is None:
                raise UnknownDataKey(f"sealed under data key {kid}, which is not configured")
            body = blob[1 + _ID_BYTES:]
            return aead.decrypt(body[:_NONCE], body[_NONCE:], aad)
        if blob[:1] != V1:
            raise ValueError("unknown sealed-data version")
        last: Exception | None = None
        for aead in self._aeads.values():
            try:
                return aead.decrypt(blob[1:13], blob[13:], aad)
            except Exception as exc:  # noqa: BLE001 - InvalidTag: the next key may be the one
                last = exc
        assert last is not None
        raise last

    def open_current(self, sealed: str, aad: bytes) -> bytes:
        """``open`` under the current key alone: for a sealed value a client or a browser holds, which we
        keep no record of (a public client's request_uri, identity.oidc.par; an upstream login's binding
        cookie, identity.broker.service). Review 135, finding 1: a previous key stays configured while
        ``quaygate keys rekey-data`` runs, and may be the key that leaked; with it anyone could make such a
        value from nothing, so none made under it is taken. They live minutes: those sealed just before
        the key changed fail (the login is started again). ``UnknownDataKey`` for a blob of any other key
        (a v1 blob is tried under the current key only)."""
        blob = _decode(sealed)
        if blob[:1] == V2:
            kid = blob[1:1 + _ID_BYTES].hex()
            if kid != self.key_id:
                raise UnknownDataKey(f"sealed under data key {kid}, not the current one")
            body = blob[1 + _ID_BYTES:]
            return self._aeads[kid].decrypt(body[:_NONCE], body[_NONCE:], aad)
        if blob[:1] != V1:
            raise ValueError("unknown sealed-data version")
        return self._aeads[self.key_id].decrypt(blob[1:13], blob[13:], aad)

    def open_stored(self, sealed: str, aad: bytes) -> bytes:
        """``open`` for a blob read from the database (a private key, a webhook secret, a face template).
        Review 140, finding 1: a previous key may be the one that leaked, and with write access to the
        database its holder plants rows sealed under it (his own signing key, his face on a driver's row).
        So a previous key's blob opens only until ``quaygate keys rekey-data`` has finished under the
        current key (``rekey_finished``), while the service still needs it (the rotation window); then it
        is refused as ``open_current`` refuses it."""
        kid = self.sealed_key_id(sealed)
        if kid == self.key_id or not self.previous_key_ids:
            return self.open(sealed, aad)
        if kid is None:  # v1: names no key, tried under the current one first
            try:
                return self.open_current(sealed, aad)
            except InvalidTag:
                if self.rekey_finished():
                    raise
            return self.open(sealed, aad)
        if kid in self.previous_key_ids and self.rekey_finished():
            raise UnknownDataKey(f"sealed under previous data key {kid} after rekey-data finished: not taken")
        return self.open(sealed, aad)

    def watch_rekey(self, finished: Callable[[], bool], *, check_every: float = 1.0,
                    monotonic: Callable[[], float] = time.monotonic) -> None:
        """How ``open_stored`` learns that ``rekey-data`` has finished under the current key: ``finished``
        (quaygate.rekey ``watch``: its mark on the audit trail), asked when a previous key's blob is to be
        opened, at most once per ``check_every`` seconds (the others meanwhile take the last answer), never
        again once it said yes."""
        with self._lock:
            self._rekeyed, self._check_every, self._monotonic = finished, check_every, monotonic
            self._checked_at = float("-inf")

    def rekey_finished(self) -> bool:
        """Has ``rekey-data`` finished under the current key (``watch_rekey``)? True with no previous key,
        and for a cipher nobody told how to ask: a previous key's stored blob is then refused. Raises what
        the asking raises (a database error): neither yes nor no."""
        if self._finished or self._rekeyed is None:
            return True
        now = self._monotonic()
        with self._lock:
            if now - self._checked_at < self._check_every:
                return False
            last, self._checked_at = self._checked_at, now
        try:
            done = self._rekeyed()
        except BaseException:
            with self._lock:
                self._checked_at = last  # not asked: the next one asks
            raise
        if done:
            self._finished = True
        return done

    def sealed_key_id(self, sealed: str) -> str | None:
        """The id of the key a blob names (v2), None for a v1 blob (which names none); ValueError if malformed."""
        blob = _decode(sealed)
        if blob[:1] == V2 and len(blob) > _ID_BYTES:
            return blob[1:1 + _ID_BYTES].hex()
        if blob[:1] == V1:
            return None
        raise ValueError("unknown sealed-data version")

    def is_current(self, sealed: str) -> bool:
        """Sealed under the current key: nothing for ``reseal`` to do."""
        return sealed.startswith(self.prefix)

    def reseal(self, sealed: str, aad: bytes) -> str | None:
        """The blob sealed again under the current key with the same associated data, or None when it
        already is (so a second pass changes nothing). Raises as ``open`` when it opens under no key."""
        if self.is_current(sealed):
            return None
        return self.seal(self.open(sealed, aad), aad)


def _derive(key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"quaygate:" + purpose).derive(key)


def _decode(sealed: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(sealed)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not sealed data (bad base64)") from exc


def keyed_hash(pepper: bytes, value: str) -> str:
    """HMAC-SHA256 of an identifier we must match but never keep (national register numbers)."""
    return hmac.new(pepper, value.encode(), hashlib.sha256).hexdigest()

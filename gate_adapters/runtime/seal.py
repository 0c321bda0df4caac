"""A seal over what the adapter keeps in its own SQLite files, under a key only its key files give.

The pass store (offline.py rule 1) keeps the service's JWK Set beside the passes; a file anyone may edit
cannot vouch for the key that checks it. So what the store keeps is sealed, and so is the outbox's chain of
offline decisions (outbox.py rule 10): an HMAC-SHA256 (RFC 2104) under a key derived with HKDF-SHA256
(RFC 5869), with a purpose of its own for each file, from the adapter's **seal key**: 32 random bytes in a
file of their own (``seal_key_file``, beside the outbox by default), never in the stores. Whoever may write
the stores but not read that file cannot make a seal that holds.

Review 172, finding 1: the seals were derived from the adapter's client credential (``private_key_jwt`` key
or client secret, and the DPoP key). A credential rotated (a secret leaked during an outage) then broke the
outbox's chain: every offline decision not yet reconciled was left out of the reconcile, and the service
never heard of the gate-ins. The seal key rotates with nothing:

- ``seal_key``: made once (``secrets.token_bytes``, written 0600 with ``O_EXCL``: never over a file), read with
  the key files' check (keys.py ``read_private_file``: outside dev, one that group or others may read or
  write, or another user owns, stops the adapter). It is made as ``<file>.new`` first and **settled**
  (``settle``: linked to its name, never over a file) only once the outbox's chain holds under it.
- Until then (``SealKey.pending``) the files may still be sealed as an adapter from before kept them, under
  the credential-derived key (``secret_material``: the credential's labelled parts): the outbox and the
  pass store are checked under it and, if they hold in full, sealed again under the seal key, so an adapter
  upgraded in place carries its chain over without losing a decision. A start interrupted before the
  settling takes up the same ``.new`` key again. Once settled, the credential vouches for nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc.jwk import ECKey, OKPKey, RSAKey

from .keys import read_private_file, write_private

log = logging.getLogger("gate_adapters.seal")

SEAL_KEY_RISK = ("whoever reads it can seal this adapter's outbox and pass store: erase or forge its offline "
                 "decisions, put his own key beside its passes")
SEAL_KEY_BYTES = 32

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


@dataclass(frozen=True)
class SealKey:
    """The adapter's seal key (module docstring): ``secret``, the seals' input keying material; ``pending``,
    the ``.new`` file it is read from until it is settled (None: settled, at ``path``)."""

    path: Path
    secret: bytes
    pending: Path | None

    def __repr__(self) -> str:
        return f"SealKey({self.path}, pending={self.pending is not None})"


def _pending(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def _read_seal_key(path: Path, *, strict: bool) -> bytes:
    """The key in ``path`` (checked as the key files are); FileNotFoundError when absent, KeyFileExposed (a
    ValueError) when others may read it, ValueError when it is no seal key (never quoting the file)."""
    text = read_private_file(path, strict=strict, risk=SEAL_KEY_RISK).decode("ascii", "replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != SEAL_KEY_BYTES:
        raise ValueError(f"{path} is not a seal key ({SEAL_KEY_BYTES * 2} hex digits): never edit it; if it is "
                         f"lost, the outbox's chain can no longer be checked (docs/gate-offline.md)")
    return secret_material([("seal_key", key)])


def seal_key(path: Path, *, strict: bool) -> SealKey:
    """The seal key at ``path``; absent, the one made at an earlier start and not settled yet (``.new``); none
    either, a new one, made as ``.new`` (0600, never over a file)."""
    try:
        secret = _read_seal_key(path, strict=strict)
    except FileNotFoundError:
        pass
    else:
        _pending(path).unlink(missing_ok=True)  # a settling cut short after its link: the same key
        return SealKey(path, secret, None)
    pending = _pending(path)
    try:
        return SealKey(path, _read_seal_key(pending, strict=strict), pending)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(pending, secrets.token_bytes(SEAL_KEY_BYTES).hex())
    _sync_folder(path.parent)
    log.warning("gate.adapter.seal_key_made: %s: a new seal key for the outbox and the pass store (kept as %s "
                "until the outbox's chain holds under it)", path, pending.name, extra={"path": str(path)})
    return SealKey(path, _read_seal_key(pending, strict=strict), pending)


def check_seal_key(path: Path, *, strict: bool) -> None:
    """``seal_key`` without making anything (``--check``): the key file, or its ``.new``, as far as there."""
    for p in (path, _pending(path)):
        try:
            _read_seal_key(p, strict=strict)
        except FileNotFoundError:
            continue
        return


def settle(key: SealKey) -> SealKey:
    """The pending key given its name (a hard link: never over a file), its ``.new`` removed: from now on the
    credential-derived seal is never taken again."""
    if key.pending is None:
        return key
    try:
        os.link(key.pending, key.path)
    except FileExistsError:
        if _read_seal_key(key.path, strict=False) != key.secret:
            raise ValueError(f"{key.path} appeared beside {key.pending.name} with another key: move one aside, "
                             f"knowing which one the outbox is sealed under") from None
    key.pending.unlink()
    _sync_folder(key.path.parent)
    log.info("gate.adapter.seal_key_settled: %s", key.path, extra={"path": str(key.path)})
    return SealKey(key.path, key.secret, None)


def _sync_folder(folder: Path) -> None:
    """A file made, linked or removed in ``folder`` survives a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

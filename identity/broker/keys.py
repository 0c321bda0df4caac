"""Our encryption keys: RSA 2048, ``use: enc``, ``alg: RSA-OAEP-256``, published in /broker/jwks.

Upstream providers (itsme) encrypt id tokens and userinfo to the key of our JWKS they choose by
``kid``; they cache that JWKS. Lifecycle, like the signing keys (identity.keys)::

    active --rotate()--> retiring --publish_until passed--> retired
      |                    |
      published,           still published and still decrypts until publish_until: an upstream that
      encrypted to         cached the old JWKS may keep encrypting to it until its cache expires
                           (publish_until = now + max(overlap, JWKS max-age + reload))

Private JWKs are sealed with AES-GCM under the data key, the kid as associated data. A row counts only when
its sealed private half opens under the data key, names its kid, ``use: enc`` and ``RSA-OAEP-256``, and gives
the row's public key (identity.keys ``SealedKeys``, as for the token signing keys): the key published and
decrypted with is the one opened, never a ``public_jwk`` someone wrote into the table, and a retiring key is
published at most until ``retired_at`` + ``overlap``, whatever its ``publish_until`` says (review 172, finding
3: an insider's own key, under his kid for ten years or under ours, had the upstreams encrypt id tokens and
userinfo, national register data, to him). An active row that is not ours is rotated out by
``ensure_active``, and a key of ours made in its place; nothing is written under a data key that opens none
of the keys stored (quaygate.rekey ``refuse_foreign_key``, review 172 finding 2). Each row is opened once per
process; the set is reloaded every ``reload_every`` seconds or when a kid is not known.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from joserfc.jwk import RSAKey

from quaygate.crypto import DataCipher
from quaygate.rekey import refuse_foreign_key
from quaygate.schema import encryption_keys

from ..keys import SealedKeys

log = logging.getLogger(__name__)

ALG = "RSA-OAEP-256"  # RFC 7518 §4.3, what itsme encrypts with
KEY_SIZE = 2048
_LOCK_ID = 0x5147_454E_434B  # pg_advisory_xact_lock key ("QGENCK")


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    key: RSAKey  # the private key opened from the row (``SealedKeys.genuine``)
    public_jwk: dict[str, Any]  # derived from it, never the stored column
    status: str
    publish_until: datetime | None  # a retiring key's: at most retired_at + overlap

    def live(self, now: datetime) -> bool:
        return self.status == "active" or (self.publish_until is not None and self.publish_until > now)


class EncryptionKeys:
    def __init__(self, engine: sa.Engine, cipher: DataCipher, *, overlap: timedelta, reload_every: float = 60.0,
                 key_size: int = KEY_SIZE) -> None:
        self._engine = engine
        self._cipher = cipher
        self._overlap = overlap
        self._reload_every = reload_every
        self._key_size = key_size
        self._lock = threading.Lock()
        self._loaded_at = 0.0
        self._keys: dict[str, _Key] = {}
        self._sealed: SealedKeys[RSAKey] = SealedKeys(cipher, lambda jwk, _alg: RSAKey.import_key(jwk),
                                                      event="identity.broker.enc_key.not_ours", use="enc")

    def ensure_active(self, now: datetime) -> str:
        """The active key's kid, creating one if there is none of ours (under a lock): an active row that is
        not ours is rotated out (never published nor used). ``ForeignDataKey`` (nothing written) when the
        data key opens none of the keys stored."""
        active = self._active_kid()
        if active is not None:
            return active
        key = self._generate()
        with self._engine.begin() as conn:
            self._take_lock(conn)
            existing = conn.execute(
                sa.select(encryption_keys.c.kid, encryption_keys.c.private_enc, encryption_keys.c.public_jwk)
                .where(encryption_keys.c.status == "active")).first()
            if existing is not None and self._sealed.genuine(existing.kid, ALG, existing.private_enc,
                                                             dict(existing.public_jwk)) is not None:
                return str(existing.kid)  # another replica made it meanwhile
            refuse_foreign_key(conn, self._cipher)
            if existing is not None:
                self._rotate_out(conn, now)
                log.error("identity.broker.enc_key.not_ours_rotated_out", extra={"kid": str(existing.kid)[:64]})
            self._insert(conn, key, now)
        self.invalidate()
        log.info("identity.broker.enc_key.created")
        return str(key.kid)

    @property
    def overlap(self) -> timedelta:
        """How long a rotated-out key stays published and decrypts."""
        return max(self._overlap, timedelta(seconds=self._reload_every))

    def rotate(self, now: datetime) -> str:
        """A new active key; the old one stays published and usable until the caches have expired."""
        key = self._generate()
        with self._engine.begin() as conn:
            self._take_lock(conn)
            refuse_foreign_key(conn, self._cipher)  # under another data key: nothing written
            conn.execute(encryption_keys.update()
                         .where(encryption_keys.c.status == "retiring", encryption_keys.c.publish_until <= now)
                         .values(status="retired"))
            self._rotate_out(conn, now)
            self._insert(conn, key, now)
        self.invalidate()
        log.info("identity.broker.enc_key.rotated")
        return str(key.kid)

    def public_jwks(self, now: datetime) -> list[dict[str, Any]]:
        """The public JWKs to publish: the active key and the retiring ones still in their overlap."""
        return [k.public_jwk for k in self._snapshot().values() if k.live(now)]

    def private_key(self, kid: str, now: datetime) -> RSAKey | None:
        """The private key named by ``kid`` if it may decrypt now (active, or retiring within its
        overlap); None for an unknown, retired or expired kid, and for a row that is not ours."""
        keys = self._snapshot()
        if kid not in keys:
            keys = self._snapshot(force=True)
        found = keys.get(kid)
        if found is None or not found.live(now):
            return None
        return found.key

    def invalidate(self) -> None:
        with self._lock:
            self._loaded_at = 0.0

    # ---- internals ------------------------------------------------------------------------------

    def _active_kid(self) -> str | None:
        return next((k.kid for k in self._snapshot(force=True).values() if k.status == "active"), None)

    def _snapshot(self, *, force: bool = False) -> dict[str, _Key]:
        with self._lock:
            if force or not self._loaded_at or time.monotonic() - self._loaded_at > self._reload_every:
                with self._engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
                    c = encryption_keys.c
                    rows = conn.execute(
                        sa.select(c.kid, c.public_jwk, c.private_enc, c.status, c.retired_at, c.publish_until)
                        .where(c.status.in_(("active", "retiring")), c.alg == ALG)
                        .order_by(c.created_at, c.kid)).all()
                loaded = (self._loaded(r) for r in rows)
                self._keys = {k.kid: k for k in loaded if k is not None}
                self._sealed.keep_only(r.kid for r in rows)
                self._loaded_at = time.monotonic()
            return self._keys

    def _loaded(self, r: Any) -> _Key | None:
        """Row ``r`` as a key of ours, its publication capped; None when it is not ours."""
        until, retired_at = _aware(r.publish_until), _aware(r.retired_at)
        if r.status == "retiring":
            if retired_at is None:
                return None  # rotate() always says when: not a row it wrote
            until = retired_at + self.overlap if until is None else min(until, retired_at + self.overlap)
        key = self._sealed.genuine(r.kid, ALG, r.private_enc, dict(r.public_jwk))
        return None if key is None else _Key(r.kid, key, key.as_dict(private=False), r.status, until)

    def _rotate_out(self, conn: sa.Connection, now: datetime) -> None:
        """The active key decrypts and is published (when ours) until the upstreams' cached JWKS expired."""
        conn.execute(encryption_keys.update().where(encryption_keys.c.status == "active")
                     .values(status="retiring", retired_at=now, publish_until=now + self.overlap))

    def _generate(self) -> RSAKey:
        key = RSAKey.generate_key(self._key_size, parameters={"use": "enc", "alg": ALG})
        key.ensure_kid()  # RFC 7638 thumbprint
        return key

    def _insert(self, conn: sa.Connection, key: RSAKey, now: datetime) -> None:
        kid = str(key.kid)
        conn.execute(encryption_keys.insert().values(
            kid=kid, alg=ALG, public_jwk=key.as_dict(private=False), status="active", created_at=now,
            private_enc=self._cipher.seal(json.dumps(key.as_dict(private=True)).encode(), kid.encode())))

    def _take_lock(self, conn: sa.Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_ID)))


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite keeps no zone
        return value.replace(tzinfo=UTC)
    return value

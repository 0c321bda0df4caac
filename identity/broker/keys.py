"""Our encryption keys: RSA 2048, ``use: enc``, ``alg: RSA-OAEP-256``, published in /broker/jwks.

Upstream providers (itsme) encrypt id tokens and userinfo to the key of our JWKS they choose by
``kid``; they cache that JWKS. Lifecycle, like the signing keys (identity.keys)::

    active --rotate()--> retiring --publish_until passed--> retired
      |                    |
      published,           still published and still decrypts until publish_until: an upstream that
      encrypted to         cached the old JWKS may keep encrypting to it until its cache expires
                           (publish_until = now + max(overlap, JWKS max-age + reload))

Private JWKs are sealed with AES-GCM under the data key, the kid as associated data. Opened keys are
cached per process; the set is reloaded every ``reload_every`` seconds or when a kid is not known.
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
from quaygate.schema import encryption_keys

log = logging.getLogger(__name__)

ALG = "RSA-OAEP-256"  # RFC 7518 §4.3, what itsme encrypts with
KEY_SIZE = 2048
_LOCK_ID = 0x5147_454E_434B  # pg_advisory_xact_lock key ("QGENCK")


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    public_jwk: dict[str, Any]
    status: str
    publish_until: datetime | None

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
        self._private: dict[str, RSAKey] = {}

    def ensure_active(self, now: datetime) -> str:
        """The active key's kid, creating the first key if there is none (under a lock)."""
        active = self._active_kid()
        if active is not None:
            return active
        key = self._generate()
        with self._engine.begin() as conn:
            self._take_lock(conn)
            existing = conn.execute(sa.select(encryption_keys.c.kid).where(encryption_keys.c.status == "active")
                                    ).scalar()
            if existing is not None:
                return str(existing)
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
        publish_until = now + self.overlap
        with self._engine.begin() as conn:
            self._take_lock(conn)
            conn.execute(encryption_keys.update()
                         .where(encryption_keys.c.status == "retiring", encryption_keys.c.publish_until <= now)
                         .values(status="retired"))
            conn.execute(encryption_keys.update().where(encryption_keys.c.status == "active")
                         .values(status="retiring", retired_at=now, publish_until=publish_until))
            self._insert(conn, key, now)
        self.invalidate()
        log.info("identity.broker.enc_key.rotated")
        return str(key.kid)

    def public_jwks(self, now: datetime) -> list[dict[str, Any]]:
        """The public JWKs to publish: the active key and the retiring ones still in their overlap."""
        return [k.public_jwk for k in self._snapshot().values() if k.live(now)]

    def private_key(self, kid: str, now: datetime) -> RSAKey | None:
        """The private key named by ``kid`` if it may decrypt now (active, or retiring within its
        overlap); None for an unknown, retired or expired kid."""
        keys = self._snapshot()
        if kid not in keys:
            keys = self._snapshot(force=True)
        found = keys.get(kid)
        if found is None or not found.live(now):
            return None
        with self._lock:
            opened = self._private.get(kid)
        if opened is None:
            opened, current = self._open(kid)
            if current:  # one under a previous data key is opened each time (DataCipher.open_stored)
                with self._lock:
                    self._private[kid] = opened
        return opened

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
                    rows = conn.execute(
                        sa.select(encryption_keys.c.kid, encryption_keys.c.public_jwk, encryption_keys.c.status,
                                  encryption_keys.c.publish_until)
                        .where(encryption_keys.c.status.in_(("active", "retiring")))
                        .order_by(encryption_keys.c.created_at, encryption_keys.c.kid)).all()
                self._keys = {r.kid: _Key(r.kid, dict(r.public_jwk), r.status, _aware(r.publish_until)) for r in rows}
                self._private = {k: v for k, v in self._private.items() if k in self._keys}
                self._loaded_at = time.monotonic()
            return self._keys

    def _open(self, kid: str) -> tuple[RSAKey, bool]:
        """The private key, and whether it is sealed under the current data key."""
        with self._engine.connect() as conn:
            sealed = conn.execute(sa.select(encryption_keys.c.private_enc).where(encryption_keys.c.kid == kid)
                                  ).scalar_one()
        key = RSAKey.import_key(json.loads(self._cipher.open_stored(sealed, kid.encode())))
        if key.kid != kid or key.get("use") != "enc":
            raise ValueError("sealed key does not match its kid and use")
        return key, self._cipher.is_current(sealed)

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

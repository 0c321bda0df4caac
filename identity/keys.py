"""Our signing keys: stored in ``signing_keys``, private parts sealed, public set published as JWKS.

Lifecycle of a key (RFC 7517 key sets, OIDC Core §10.1.1 rotation)::

    active --rotate()--> retiring --publish_until passed--> retired
      |                     |
      signs new tokens      signs nothing; its public key stays in the JWKS until every token it
                            signed has expired (publish_until)

At most one key is active. ``rotate`` and ``ensure_active`` take a lock (a PostgreSQL advisory lock;
SQLite's BEGIN IMMEDIATE already serialises writers), so two replicas starting together or rotating
together never leave two active keys.

The private JWK is sealed with AES-GCM (quaygate.crypto.DataCipher) with the kid as associated data,
so a sealed key copied into another row does not open. Loaded keys are cached in memory: the set is
reloaded every ``reload_every`` seconds, or sooner when a token names a kid we do not know yet but
the table does (a key rotated in by another replica).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from joserfc.jwk import KeySet, RSAKey

from quaygate.crypto import DataCipher
from quaygate.schema import signing_keys

# The table also holds the audit trail's Ed25519 key (use "audit"): token keys are use "sig".
_TOKEN_KEYS = signing_keys.c.use == "sig"
log = logging.getLogger(__name__)

SIGNING_ALG = "RS256"  # RFC 7518 §3.3; what OIDC Core §15.1 requires every provider to support
KEY_SIZE = 2048
_LOCK_ID = 0x5147_4B45_5953  # pg_advisory_xact_lock key for key rotation ("QGKEYS")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Published:
    jwk: dict[str, Any]
    key: RSAKey  # imported once per load, not per verification
    status: str
    publish_until: datetime | None


@dataclass
class _Snapshot:
    loaded_at: float
    active_kid: str | None
    published: dict[str, _Published]
    private: dict[str, RSAKey] = field(default_factory=dict)


class KeyStore:
    """Signing keys for our tokens; also the verifier's key source (``public_key_set``)."""

    def __init__(
        self,
        engine: sa.Engine,
        cipher: DataCipher,
        *,
        token_ttl: int = 600,
        leeway: int = 60,
        reload_every: float = 60.0,
        clock: Callable[[], datetime] = _utcnow,
        key_size: int = KEY_SIZE,
    ) -> None:
        self._engine = engine
        self._cipher = cipher
        self._token_ttl = token_ttl
        self._leeway = leeway
        self._reload_every = reload_every
        self._clock = clock
        self._key_size = key_size
        self._lock = threading.Lock()
        self._snap: _Snapshot | None = None

    # ---- writes ---------------------------------------------------------------------------------

    def ensure_active(self, now: datetime) -> str:
        """The active key's kid, creating the first key when there is none."""
        with self._read() as conn:
            kid = conn.execute(
                sa.select(signing_keys.c.kid).where(signing_keys.c.status == "active", _TOKEN_KEYS)
            ).scalar()
        if kid is not None:
            return str(kid)
        key = self._generate()  # outside the lock: key generation is the slow part
        with self._engine.begin() as conn:
            self._take_lock(conn)
            kid = conn.execute(
                sa.select(signing_keys.c.kid).where(signing_keys.c.status == "active", _TOKEN_KEYS)
            ).scalar()
            if kid is not None:
                return str(kid)
            self._insert(conn, key, now)
        self.invalidate()
        log.info("identity.keys.created", extra={"kid": key.kid})
        return str(key.kid)

    def rotate(self, now: datetime) -> str:
        """Add a key and sign with it from now on; keep the old public key published until every
        token the old key signed has expired, counting the replicas still using it for up to
        ``reload_every`` seconds and the verifiers' clock leeway."""
        key = self._generate()
        publish_until = now + timedelta(seconds=self._token_ttl + self._reload_every + self._leeway)
        with self._engine.begin() as conn:
            self._take_lock(conn)
            conn.execute(
                signing_keys.update()
                .where(signing_keys.c.status == "retiring", signing_keys.c.publish_until <= now, _TOKEN_KEYS)
                .values(status="retired")
            )
            conn.execute(
                signing_keys.update()
                .where(signing_keys.c.status == "active", _TOKEN_KEYS)
                .values(status="retiring", retired_at=now, publish_until=publish_until)
            )
            self._insert(conn, key, now)
        self.invalidate()
        log.info("identity.keys.rotated", extra={"kid": key.kid})
        return str(key.kid)

    # ---- reads ----------------------------------------------------------------------------------

    def signing_key(self) -> RSAKey:
        """The active private key (with its kid), for signing tokens."""
        snap = self._snapshot()
        if snap.active_kid is None:
            raise LookupError("no active signing key: call ensure_active() at start-up")
        key = snap.private.get(snap.active_kid)
        if key is None:
            key = self._open(snap.active_kid)
            snap.private[snap.active_kid] = key
        return key

    def jwks(self, now: datetime | None = None) -> dict[str, Any]:
        """The public JWK Set to publish (RFC 7517 §5): active and still-published retiring keys."""
        return {"keys": [p.jwk for p in self._published(self._snapshot(), now or self._clock())]}

    def public_key_set(self, *, refresh: bool = False, kid: str | None = None) -> KeySet:
        """The keys our tokens may be verified with. ``refresh`` with a ``kid`` reloads only when
        the table knows that kid, so made-up kids cost one primary-key lookup, not a reload."""
        snap = self._snapshot()
        if refresh and (kid is None or (kid not in snap.published and self._exists(kid))):
            snap = self._snapshot(force=True)
        return KeySet([p.key for p in self._published(snap, self._clock())])

    def invalidate(self) -> None:
        with self._lock:
            self._snap = None

    # ---- internals ------------------------------------------------------------------------------

    def _published(self, snap: _Snapshot, now: datetime) -> list[_Published]:
        return [
            p
            for p in snap.published.values()
            if p.status == "active" or (p.publish_until is not None and p.publish_until > now)
        ]

    def _snapshot(self, *, force: bool = False) -> _Snapshot:
        with self._lock:
            snap = self._snap
            if force or snap is None or time.monotonic() - snap.loaded_at > self._reload_every:
                snap = self._load(previous=snap)
                self._snap = snap
            return snap

    def _load(self, previous: _Snapshot | None) -> _Snapshot:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(
                    signing_keys.c.kid,
                    signing_keys.c.public_jwk,
                    signing_keys.c.status,
                    signing_keys.c.publish_until,
                    signing_keys.c.created_at,
                )
                .where(signing_keys.c.status.in_(("active", "retiring")), signing_keys.c.use == "sig")
                .order_by(signing_keys.c.created_at)
            ).all()
        published = {
            r.kid: _Published(dict(r.public_jwk), RSAKey.import_key(r.public_jwk), r.status, r.publish_until)
            for r in rows
        }
        active = [r.kid for r in rows if r.status == "active"]
        # Opened private keys never change under their kid: keep them across reloads.
        kept = {k: v for k, v in (previous.private if previous else {}).items() if k in published}
        return _Snapshot(time.monotonic(), active[-1] if active else None, published, kept)

    def _exists(self, kid: str) -> bool:
        with self._read() as conn:
            return (
                conn.execute(sa.select(signing_keys.c.kid).where(signing_keys.c.kid == kid)).first()
                is not None
            )

    def _open(self, kid: str) -> RSAKey:
        with self._read() as conn:
            sealed = conn.execute(
                sa.select(signing_keys.c.private_enc).where(signing_keys.c.kid == kid)
            ).scalar_one()
        key = RSAKey.import_key(json.loads(self._cipher.open(sealed, kid.encode())))
        if key.kid != kid:
            raise ValueError("sealed key does not match its kid")
        return key

    def _generate(self) -> RSAKey:
        key = RSAKey.generate_key(self._key_size, parameters={"use": "sig", "alg": SIGNING_ALG})
        key.ensure_kid()  # RFC 7638 thumbprint
        return key

    def _insert(self, conn: sa.Connection, key: RSAKey, now: datetime) -> None:
        kid = str(key.kid)
        conn.execute(
            signing_keys.insert().values(
                kid=kid,
                alg=SIGNING_ALG,
                use="sig",
                public_jwk=key.as_dict(private=False),
                private_enc=self._cipher.seal(json.dumps(key.as_dict(private=True)).encode(), kid.encode()),
                status="active",
                created_at=now,
            )
        )

    def _read(self) -> sa.Connection:
        # A read: on SQLite a deferred BEGIN, not the writers' BEGIN IMMEDIATE (quaygate/db.py).
        return self._engine.connect().execution_options(sqlite_begin="DEFERRED")

    def _take_lock(self, conn: sa.Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_ID)))

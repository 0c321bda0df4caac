"""Our signing keys: stored in ``signing_keys``, private parts sealed, public set published as JWKS.

One active key per algorithm we sign with (``SIGNING_ALGORITHMS``): RS256 (RSA 2048, what OIDC
Core §15.1 requires of every provider and the id token default), PS256 (RSA 2048) and ES256 (P-256).
Each key names its algorithm in its JWK (RFC 7517 §4.4), so an RSA key signs either RS256 or PS256,
never both, and a key can never be paired with the wrong algorithm.

Lifecycle of a key (RFC 7517 key sets, OIDC Core §10.1.1 rotation), per algorithm::

    active --rotate()--> retiring --publish_until passed--> retired
      |                     |
      signs new tokens      signs nothing; its public key stays in the JWKS until every token it
                            signed has expired (publish_until)

At most one key per algorithm is active: ``rotate`` and ``ensure_active`` take a lock (a PostgreSQL
advisory lock; SQLite's BEGIN IMMEDIATE already serialises writers), so two replicas starting
together or rotating together never leave two active keys, and a partial unique index (migration
0003) makes the database refuse a second one.

The private JWK is sealed with AES-GCM (quaygate.crypto.DataCipher) with the kid as associated data,
so a sealed key copied into another row does not open. Loaded keys are cached in memory: the set is
reloaded every ``reload_every`` seconds, or sooner when a token names a kid we do not know yet but
the table holds as an active or retiring token key (a key rotated in by another replica). A retired
kid (public once: it was in the JWKS) or the audit key's forces no reload: a stranger could otherwise
make every request reload and re-import every key. Opened private keys stay cached (opening an
RSA private key costs about 50 ms here): never per request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from joserfc.jwk import ECKey, KeySet, RSAKey, import_key

from quaygate.crypto import DataCipher
from quaygate.schema import signing_keys

# The table also holds the audit trail's Ed25519 key (use "audit"): token keys are use "sig".
_TOKEN_KEYS = signing_keys.c.use == "sig"
log = logging.getLogger(__name__)

# RFC 7518 §3.1: the key type each algorithm needs. RS256 first: the OIDC default (Core §15.1).
_KEY_TYPES = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC"}
SIGNING_ALGORITHMS: tuple[str, ...] = tuple(_KEY_TYPES)
DEFAULT_ALG = "RS256"
KEY_SIZE = 2048
EC_CURVE = "P-256"  # RFC 7518 §3.4: ES256 is ECDSA on P-256 with SHA-256
_LOCK_ID = 0x5147_4B45_5953  # pg_advisory_xact_lock key for key rotation ("QGKEYS")

SigningKey = RSAKey | ECKey


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Published:
    jwk: dict[str, Any]
    key: SigningKey  # imported once per load, not per verification
    status: str
    publish_until: datetime | None


@dataclass
class _Snapshot:
    loaded_at: float
    active: dict[str, str]  # alg -> kid of its active key
    published: dict[str, _Published]
    private: dict[str, SigningKey] = field(default_factory=dict)


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
        # The last key set made, with the snapshot and the published keys it was made of: every token
        # verified asks for it, and making a KeySet checks every key's kid again.
        self._key_set: tuple[_Snapshot, list[_Published], KeySet] | None = None

    # ---- writes ---------------------------------------------------------------------------------

    def ensure_active(self, now: datetime) -> dict[str, str]:
        """The active key's kid for every algorithm, creating the keys that are missing."""
        with self._read() as conn:
            active = self._active(conn)
        missing = [alg for alg in SIGNING_ALGORITHMS if alg not in active]
        if not missing:
            return active
        fresh = {alg: self._generate(alg) for alg in missing}  # outside the lock: the slow part
        with self._engine.begin() as conn:
            self._take_lock(conn)
            active = self._active(conn)  # another replica may have added some meanwhile
            created = [alg for alg in missing if alg not in active]
            for alg in created:
                self._insert(conn, fresh[alg], alg, now)
                active[alg] = str(fresh[alg].kid)
        if created:
            self.invalidate()
            for alg in created:
                log.info("identity.keys.created", extra={"kid": active[alg], "alg": alg})
        return active

    def rotate(self, now: datetime, algs: Iterable[str] | None = None) -> dict[str, str]:
        """Add a key for each of ``algs`` (default: every algorithm) and sign with it from now on;
        keep the old public key published until every token the old key signed has expired,
        counting the replicas still using it for up to ``reload_every`` seconds and the verifiers'
        clock leeway. Returns the new kids by algorithm."""
        chosen = _checked(algs)
        fresh = {alg: self._generate(alg) for alg in chosen}
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
                .where(signing_keys.c.status == "active", signing_keys.c.alg.in_(chosen), _TOKEN_KEYS)
                .values(status="retiring", retired_at=now, publish_until=publish_until)
            )
            for alg in chosen:
                self._insert(conn, fresh[alg], alg, now)
        self.invalidate()
        kids = {alg: str(key.kid) for alg, key in fresh.items()}
        for alg, kid in kids.items():
            log.info("identity.keys.rotated", extra={"kid": kid, "alg": alg})
        return kids

    # ---- reads ----------------------------------------------------------------------------------

    def signing_key(self, alg: str = DEFAULT_ALG) -> SigningKey:
        """The active private key for ``alg`` (with its kid and its "alg"), for signing tokens."""
        snap = self._snapshot()
        kid = snap.active.get(alg)
        if kid is None:
            raise LookupError(f"no active {alg} signing key: call ensure_active() at start-up")
        key = snap.private.get(kid)
        if key is None:
            key = self._open(kid, alg)
            snap.private[kid] = key
        return key

    def jwks(self, now: datetime | None = None) -> dict[str, Any]:
        """The public JWK Set to publish (RFC 7517 §5): active and still-published retiring keys."""
        return {"keys": [p.jwk for p in self._published(self._snapshot(), now or self._clock())]}

    def public_key_set(self, *, refresh: bool = False, kid: str | None = None) -> KeySet:
        """The keys our tokens may be verified with. ``refresh`` with a ``kid`` reloads only when
        the table holds that kid as a key still published (active or retiring), so made-up and
        retired kids cost one primary-key lookup, not a reload."""
        snap = self._snapshot()
        if refresh and (kid is None or (kid not in snap.published and self._publishable(kid))):
            snap = self._snapshot(force=True)
        published = self._published(snap, self._clock())
        made = self._key_set
        if made is not None and made[0] is snap and len(made[1]) == len(published) and all(
                a is b for a, b in zip(made[1], published, strict=True)):
            return made[2]  # the same keys published as when it was made (a key past its publish_until is not)
        key_set = KeySet([p.key for p in published])
        self._key_set = (snap, published, key_set)
        return key_set

    def rotated_out(self, kid: str) -> tuple[SigningKey, datetime] | None:
        """A token key rotated out (retiring or retired, whether still published or not) and when it was:
        for checking what it signed while it was active, long after its tokens expired (a gate pass
        reported days late, release_service/api/gate_offline.py). One primary-key lookup, uncached: not
        for a hot path. None for an active, unknown or non-token kid."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(signing_keys.c.alg, signing_keys.c.public_jwk, signing_keys.c.retired_at).where(
                    signing_keys.c.kid == kid,
                    signing_keys.c.status.in_(("retiring", "retired")),
                    signing_keys.c.alg.in_(SIGNING_ALGORITHMS),
                    _TOKEN_KEYS,
                )
            ).first()
        if row is None or row.retired_at is None:
            return None
        return _import(dict(row.public_jwk), row.alg), row.retired_at

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
                    signing_keys.c.alg,
                    signing_keys.c.public_jwk,
                    signing_keys.c.status,
                    signing_keys.c.publish_until,
                )
                .where(
                    signing_keys.c.status.in_(("active", "retiring")),
                    signing_keys.c.alg.in_(SIGNING_ALGORITHMS),  # a newer replica's algorithm: not ours
                    _TOKEN_KEYS,
                )
                .order_by(signing_keys.c.created_at, signing_keys.c.kid)
            ).all()
        published = {r.kid: _Published(dict(r.public_jwk), _import(r.public_jwk, r.alg), r.status, r.publish_until)
                     for r in rows}
        active = {r.alg: r.kid for r in rows if r.status == "active"}  # the newest, should there be two
        # Opened private keys never change under their kid: keep them across reloads.
        kept = {k: v for k, v in (previous.private if previous else {}).items() if k in published}
        return _Snapshot(time.monotonic(), active, published, kept)

    def _active(self, conn: sa.Connection) -> dict[str, str]:
        rows = conn.execute(
            sa.select(signing_keys.c.alg, signing_keys.c.kid)
            .where(signing_keys.c.status == "active", _TOKEN_KEYS)
            .order_by(signing_keys.c.created_at)
        ).all()
        return {str(r.alg): str(r.kid) for r in rows}

    def _publishable(self, kid: str) -> bool:
        """Would a reload load ``kid``? The same rows as ``_load`` reads."""
        with self._read() as conn:
            return (
                conn.execute(
                    sa.select(signing_keys.c.kid).where(
                        signing_keys.c.kid == kid,
                        signing_keys.c.status.in_(("active", "retiring")),
                        signing_keys.c.alg.in_(SIGNING_ALGORITHMS),
                        _TOKEN_KEYS,
                    )
                ).first()
                is not None
            )

    def _open(self, kid: str, alg: str) -> SigningKey:
        with self._read() as conn:
            sealed = conn.execute(
                sa.select(signing_keys.c.private_enc).where(signing_keys.c.kid == kid)
            ).scalar_one()
        key = _import(json.loads(self._cipher.open(sealed, kid.encode())), alg)
        if key.kid != kid or key.get("alg") != alg:
            raise ValueError("sealed key does not match its kid and algorithm")
        return key

    def _generate(self, alg: str) -> SigningKey:
        params: dict[str, Any] = {"use": "sig", "alg": alg}
        key: SigningKey
        if _KEY_TYPES[alg] == "EC":
            key = ECKey.generate_key(EC_CURVE, parameters=params)
        else:
            key = RSAKey.generate_key(self._key_size, parameters=params)
        key.ensure_kid()  # RFC 7638 thumbprint
        return key

    def _insert(self, conn: sa.Connection, key: SigningKey, alg: str, now: datetime) -> None:
        kid = str(key.kid)
        conn.execute(
            signing_keys.insert().values(
                kid=kid,
                alg=alg,
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


def _checked(algs: Iterable[str] | None) -> list[str]:
    """The algorithms to act on, in SIGNING_ALGORITHMS order; ValueError for one we do not sign with."""
    if algs is None:
        return list(SIGNING_ALGORITHMS)
    wanted = set(algs)
    unknown = wanted - set(SIGNING_ALGORITHMS)
    if unknown or not wanted:
        raise ValueError(f"signing algorithms are {', '.join(SIGNING_ALGORITHMS)}")
    return [alg for alg in SIGNING_ALGORITHMS if alg in wanted]


def _import(jwk: dict[str, Any], alg: str) -> SigningKey:
    """A stored JWK as the key type its algorithm needs (never what the row's JSON claims it is)."""
    return import_key(jwk, key_type=_KEY_TYPES[alg])  # type: ignore[arg-type,return-value]

"""Our signing keys: stored in ``signing_keys``, private parts sealed, public set published as JWKS.

One active key per algorithm we sign with (``SIGNING_ALGORITHMS``): RS256 (RSA 2048, what OIDC
Core §15.1 requires of every provider and the id token default), PS256 (RSA 2048) and ES256 (P-256).
Each key names its algorithm in its JWK (RFC 7517 §4.4), so an RSA key signs either RS256 or PS256,
never both, and a key can never be paired with the wrong algorithm.

Lifecycle of a key (RFC 7517 key sets, OIDC Core §10.1.1 rotation), per algorithm::

    active --rotate()--> retiring --publish_until passed--> retired (private half erased)
      |                     |
      signs new tokens      signs nothing; its public key stays in the JWKS until every token it
      |                     signed has expired (publish_until)
      |                     |
      +----revoke()---------+-----------------------> revoked (private half erased, at once)

``revoke`` is for a key that leaked (``quaygate keys revoke KID --reason``): the key leaves the JWKS,
verifies no token and no gate pass from then on (not even one it signed while active: ``rotated_out``
does not return it), and a revoked active key is replaced in the same transaction. Every change of the
key set (a key created, rotated or revoked) bumps an epoch in the shared cache (Redis), which each
replica reads at most once per ``check_every`` seconds (one), reloading its keys when it moved: so the
other replicas stop trusting a revoked key within about a second. Without a shared cache, or with Redis
unreachable, they reload every ``reload_every`` (60 s) as before; gate adapters drop a key when they
next fetch the JWKS.
A retired or revoked key's private half is erased. A retired key keeps, in its place, its public half
and the time it was rotated out sealed under the data key (``_retirement``), and ``rotated_out`` trusts
a row only when that seal (or, while retiring, the sealed private half) vouches for its public key: a
public key written into the table by someone without the data key (a retired row "from" last year,
naming his own key) is never taken for ours. A revoked key keeps nothing (the audit key, use "audit",
is not a token key and is never touched).

At most one key per algorithm is active: ``rotate`` and ``ensure_active`` take a lock (a PostgreSQL
advisory lock; SQLite's BEGIN IMMEDIATE already serialises writers), so two replicas starting
together or rotating together never leave two active keys, and a partial unique index (migration
0003) makes the database refuse a second one.

The private JWK is sealed with AES-GCM (quaygate.crypto.DataCipher) with the kid as associated data,
so a sealed key copied into another row does not open. An active or retiring row counts only when its
sealed private half opens under the data key and gives the row's public key: the key published and
verified with is the one derived from it, never a ``public_jwk`` someone wrote into the table (review
132: an insider's own key, published ten years ahead). A retiring key is published at most until
``retired_at`` + token lifetime + ``reload_every`` + leeway, whatever its ``publish_until`` says.
Review 172, finding 2: nothing is written under a data key that opens none of the keys stored (a command
or replica given another QUAYGATE_DATA_KEY): ``rotate``, ``revoke`` and ``ensure_active`` raise
``quaygate.rekey.ForeignDataKey`` first, the retirement leaves a retiring row it cannot open as it is, and
``ensure_active`` rotates out an active row that does not open as ours and makes a key of ours in its place.

Loaded keys are cached in memory: the set is reloaded every ``reload_every`` seconds, or sooner
when a token names a kid we do not know yet but the table holds as an active or retiring token key (a
key rotated in by another replica). A retired kid (public once: it was in the JWKS) or the audit key's
forces no reload: a stranger could otherwise make every request reload and re-import every key. Opened
and checked keys stay cached per kid (opening an RSA private key costs about 50 ms here): never per
request, nor per reload.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey, import_key

from quaygate.cache import DATASET_EPOCH, Cache
from quaygate.crypto import DataCipher
from quaygate.rekey import refuse_foreign_key
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


KEYS_EPOCH = "identity:keys-epoch"
_KEYS_EPOCH_TTL = 30 * 86400  # the key only has to outlive the replicas' memories; its value is what counts


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
        cache: Cache | None = None,
        check_every: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``cache``: the shared cache (Redis) whose epoch tells the replicas that the key set changed
        (module docstring); None: each process reloads every ``reload_every`` seconds only."""
        self._engine = engine
        self._cache = cache
        self._check_every = check_every
        self._monotonic = monotonic
        self._epoch: tuple[bytes | None, ...] | None = None
        self._checked_at = float("-inf")
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
        # A row is opened and checked once per process, not at every reload.
        self._sealed: SealedKeys[SigningKey] = SealedKeys(cipher, _import, event="identity.keys.not_ours")

    @property
    def reload_every(self) -> float:
        """Seconds a replica may go on using a key set it loaded: how long after a rotation it may still
        sign with the old key (``release_service.domain.gate_pass.signed_while_active``)."""
        return self._reload_every

    @property
    def publication(self) -> timedelta:
        """How long a rotated-out key stays published: every token it signed has expired by then, counting
        the replicas still signing with it until their reload and the verifiers' clock leeway."""
        return timedelta(seconds=self._token_ttl + self._reload_every + self._leeway)

    # ---- writes ---------------------------------------------------------------------------------

    def ensure_active(self, now: datetime) -> dict[str, str]:
        """The active key's kid for every algorithm, creating the keys that are missing. Only a key of ours
        counts (``_genuine``): an active row whose sealed half does not open as ours (sealed under another
        data key by a command given the wrong one, review 172 finding 2, or written into the table) is
        rotated out, never published nor trusted, and a key of ours takes its place. ``ForeignDataKey``
        (nothing written) when this data key opens none of the keys stored (quaygate.rekey)."""
        with self._read() as conn:
            active, _ = self._active(conn)
        missing = [alg for alg in SIGNING_ALGORITHMS if alg not in active]
        if not missing:
            return active
        fresh = {alg: self._generate(alg) for alg in missing}  # outside the lock: the slow part
        with self._engine.begin() as conn:
            self._take_lock(conn)
            active, foreign = self._active(conn)  # another replica may have added some meanwhile
            created = [alg for alg in missing if alg not in active]
            if created:
                refuse_foreign_key(conn, self._cipher)
            replaced = {alg: foreign[alg] for alg in created if alg in foreign}
            if replaced:
                self._rotate_out(conn, signing_keys.c.kid.in_(list(replaced.values())), now)
            for alg in created:
                self._insert(conn, fresh[alg], alg, now)
                active[alg] = str(fresh[alg].kid)
        if created:
            self._changed()
            for alg in created:
                log.info("identity.keys.created", extra={"kid": active[alg], "alg": alg})
            for alg, kid in replaced.items():
                log.error("identity.keys.not_ours_rotated_out", extra={"kid": kid[:64], "alg": alg})
        return active

    def rotate(self, now: datetime, algs: Iterable[str] | None = None) -> dict[str, str]:
        """Add a key for each of ``algs`` (default: every algorithm) and sign with it from now on;
        keep the old public key published until every token the old key signed has expired,
        counting the replicas still using it for up to ``reload_every`` seconds and the verifiers'
        clock leeway. Returns the new kids by algorithm."""
        chosen = _checked(algs)
        fresh = {alg: self._generate(alg) for alg in chosen}
        with self._engine.begin() as conn:
            self._take_lock(conn)
            refuse_foreign_key(conn, self._cipher)  # under another data key: nothing written
            self._retire_due(conn, now)
            self._rotate_out(conn, signing_keys.c.alg.in_(chosen), now)
            for alg in chosen:
                self._insert(conn, fresh[alg], alg, now)
        self._changed()
        kids = {alg: str(key.kid) for alg, key in fresh.items()}
        for alg, kid in kids.items():
            log.info("identity.keys.rotated", extra={"kid": kid, "alg": alg})
        return kids

    def retire_due(self, now: datetime) -> int:
        """Retire the retiring keys whose publication has ended, erasing their private halves; how many.
        A background loop calls it (quaygate/workers.py), and every rotation."""
        with self._engine.begin() as conn:
            self._take_lock(conn)
            count = self._retire_due(conn, now)
        if count:
            log.info("identity.keys.retired", extra={"count": count})
        return count

    def revoke(self, kid: str, now: datetime, *, reason: str, actor: dict[str, Any]) -> str | None:
        """Withdraw token key ``kid`` at once (it leaked): status revoked, unpublished, its private half
        erased, audited with ``reason``. Were it its algorithm's active key, a new one takes its place in
        the same transaction: its kid is returned (else None). LookupError for no such token key,
        ValueError for one already revoked or an empty reason, ``ForeignDataKey`` under a data key that opens
        none of the keys stored (nothing written: the new key would be sealed where the service cannot open it)."""
        from identity.audit import record  # the audit trail's writer: not needed by the hot path

        reason = reason.strip()
        if not reason:
            raise ValueError("a reason is required")
        row = self._key_row(kid)
        fresh = self._generate(row.alg) if row.status == "active" else None  # outside the lock: the slow part
        with self._engine.begin() as conn:
            self._take_lock(conn)
            row = self._key_row(kid, conn)  # again under the lock: a rotation may have retired it meanwhile
            if row.status == "revoked":
                raise ValueError(f"key {kid} is already revoked")
            refuse_foreign_key(conn, self._cipher)
            conn.execute(
                signing_keys.update().where(signing_keys.c.kid == kid, _TOKEN_KEYS)
                .values(status="revoked", publish_until=now, private_enc=None,
                        retired_at=sa.func.coalesce(signing_keys.c.retired_at, now))
            )
            replaced_by = None
            if row.status == "active":
                fresh = fresh or self._generate(row.alg)
                self._insert(conn, fresh, row.alg, now)
                replaced_by = str(fresh.kid)
            record("identity.key.revoked", at=now, actor=actor, subject=kid, conn=conn,
                   data={"alg": row.alg, "was": row.status, "reason": reason[:500], "replaced_by": replaced_by})
        self._changed()
        log.warning("identity.keys.revoked", extra={"kid": kid, "alg": row.alg, "replaced_by": replaced_by})
        return replaced_by

    # ---- reads ----------------------------------------------------------------------------------

    def signing_key(self, alg: str = DEFAULT_ALG) -> SigningKey:
        """The active private key for ``alg`` (with its kid and its "alg"), for signing tokens."""
        snap = self._snapshot()
        kid = snap.active.get(alg)
        if kid is None:
            raise LookupError(f"no active {alg} signing key: call ensure_active() at start-up")
        return snap.private[kid]  # opened and checked when loaded (_load)

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
        for a hot path. None for an active, revoked, unknown or non-token kid: a revoked key's word counts
        for nothing, whenever it says it signed."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(signing_keys.c.alg, signing_keys.c.public_jwk, signing_keys.c.retired_at,
                          signing_keys.c.status, signing_keys.c.private_enc).where(
                    signing_keys.c.kid == kid,
                    signing_keys.c.status.in_(("retiring", "retired")),
                    signing_keys.c.alg.in_(SIGNING_ALGORITHMS),
                    _TOKEN_KEYS,
                )
            ).first()
        if row is None or row.retired_at is None:
            return None
        public = dict(row.public_jwk)
        if not self._vouched(kid, row.alg, row.status, row.private_enc, public, row.retired_at):
            return None  # written into the table by someone without the data key (review 132's leftover)
        return _import(public, row.alg), row.retired_at

    def invalidate(self) -> None:
        with self._lock:
            self._snap = None

    def _changed(self) -> None:
        """The key set changed (after the commit): forget it here, and tell the other replicas. Redis
        failing: they find out at their next timed reload (``reload_every``)."""
        self.invalidate()
        if self._cache is not None:
            try:  # a value never seen before: a counter restarts at 1 once its key expires or Redis loses it
                self._cache.set(KEYS_EPOCH, secrets.token_bytes(16), _KEYS_EPOCH_TTL)
            except Exception:  # noqa: BLE001 - any cache failure: the change is committed, the signal is late
                log.warning("identity.keys.epoch_not_bumped", exc_info=True)

    def _epoch_moved(self) -> tuple[bytes | None, ...] | None:
        """At most once per ``check_every``: has another process changed the key set since this one
        last loaded it (the shared epoch moved)? The epoch read when it did, else None; ``_snapshot`` keeps
        it once its reload has succeeded (review 140, finding 2: a failed reload leaves it moved for the next
        look). The round trip is made outside ``self._lock`` (a slow Redis holds up no other verification),
        by one caller per ``check_every``. Redis failing: None (the timed reload still runs), and the next
        look is a ``check_every`` later: a down Redis costs no round trip per token."""
        if self._cache is None:
            return None
        now = self._monotonic()
        with self._lock:
            if now - self._checked_at < self._check_every:
                return None
            self._checked_at = now  # the others go on with what they have meanwhile
        try:
            # With Redis's dataset epoch: a Redis started from an older snapshot (or a failover to a replica
            # that missed the last writes) may hold a keys epoch this process already read, the revoke's bump
            # lost; the dataset epoch moves then (quaygate/dataset.py), so the pair does.
            epoch = tuple(self._cache.get_many([DATASET_EPOCH, KEYS_EPOCH]))
        except Exception:  # noqa: BLE001 - verifying tokens must not depend on Redis
            return None
        with self._lock:
            return epoch if epoch != self._epoch else None

    # ---- internals ------------------------------------------------------------------------------

    def _published(self, snap: _Snapshot, now: datetime) -> list[_Published]:
        return [
            p
            for p in snap.published.values()
            if p.status == "active" or (p.publish_until is not None and p.publish_until > now)
        ]

    def _snapshot(self, *, force: bool = False) -> _Snapshot:
        moved = self._epoch_moved()  # first: a reload for any reason has seen the epoch read here
        with self._lock:
            snap = self._snap
            if force or moved is not None or snap is None or time.monotonic() - snap.loaded_at > self._reload_every:
                snap = self._load()
                self._snap = snap
                if moved is not None:
                    self._epoch = moved  # only now: a reload that failed leaves the epoch moved
            return snap

    def _load(self) -> _Snapshot:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(
                    signing_keys.c.kid,
                    signing_keys.c.alg,
                    signing_keys.c.public_jwk,
                    signing_keys.c.private_enc,
                    signing_keys.c.status,
                    signing_keys.c.retired_at,
                    signing_keys.c.publish_until,
                )
                .where(
                    signing_keys.c.status.in_(("active", "retiring")),
                    signing_keys.c.alg.in_(SIGNING_ALGORITHMS),  # a newer replica's algorithm: not ours
                    _TOKEN_KEYS,
                )
                .order_by(signing_keys.c.created_at, signing_keys.c.kid)
            ).all()
        longest = self.publication
        published: dict[str, _Published] = {}
        private: dict[str, SigningKey] = {}
        for r in rows:
            key = self._genuine(r.kid, r.alg, r.private_enc, dict(r.public_jwk))
            if key is None:
                continue
            until = r.publish_until
            if r.status == "retiring":
                if r.retired_at is None:
                    continue  # rotate() always says when: not a row it wrote
                until = min(until, r.retired_at + longest) if until is not None else r.retired_at + longest
            public = key.as_dict(private=False)  # derived from the sealed half, not the stored column
            published[r.kid] = _Published(public, _import(public, r.alg), r.status, until)
            private[r.kid] = key
        active = {r.alg: r.kid for r in rows if r.status == "active" and r.kid in private}  # the newest
        self._sealed.keep_only(r.kid for r in rows)
        return _Snapshot(time.monotonic(), active, published, private)

    def _genuine(self, kid: str, alg: str, sealed: str | None, public_jwk: dict[str, Any]) -> SigningKey | None:
        """Row ``kid``'s private key when the row is ours (``SealedKeys.genuine``), else None."""
        return self._sealed.genuine(kid, alg, sealed, public_jwk)

    def _active(self, conn: sa.Connection) -> tuple[dict[str, str], dict[str, str]]:
        """The active token keys by algorithm: those of ours (``_genuine``), and those that are not."""
        rows = conn.execute(
            sa.select(signing_keys.c.alg, signing_keys.c.kid, signing_keys.c.private_enc, signing_keys.c.public_jwk)
            .where(signing_keys.c.status == "active", signing_keys.c.alg.in_(SIGNING_ALGORITHMS), _TOKEN_KEYS)
            .order_by(signing_keys.c.created_at)
        ).all()
        ours: dict[str, str] = {}
        foreign: dict[str, str] = {}
        for r in rows:
            genuine = self._genuine(r.kid, r.alg, r.private_enc, dict(r.public_jwk)) is not None
            (ours if genuine else foreign)[str(r.alg)] = str(r.kid)
        return ours, foreign

    def _rotate_out(self, conn: sa.Connection, which: sa.ColumnElement[bool], now: datetime) -> None:
        """The active token keys ``which`` selects sign nothing more; still published (when ours) until every
        token they signed has expired (``publication``)."""
        conn.execute(
            signing_keys.update()
            .where(signing_keys.c.status == "active", which, _TOKEN_KEYS)
            .values(status="retiring", retired_at=now, publish_until=now + self.publication)
        )

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

    def _key_row(self, kid: str, conn: sa.Connection | None = None) -> Any:
        query = sa.select(signing_keys.c.alg, signing_keys.c.status).where(
            signing_keys.c.kid == kid, signing_keys.c.alg.in_(SIGNING_ALGORITHMS), _TOKEN_KEYS)
        if conn is None:
            with self._read() as read:
                row = read.execute(query).first()
        else:
            row = conn.execute(query).first()
        if row is None:
            raise LookupError(f"no token signing key {kid}")
        return row

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

    def _retire_due(self, conn: sa.Connection, now: datetime) -> int:
        """Retiring token keys past their publication become retired, their private halves erased: nothing
        signs with them again, and ``rotated_out`` needs only the public half. In its place the row keeps
        that public half and its retirement sealed under the data key (``_retirement``), so that a public
        key written into the table by someone without the data key is never taken for one of ours. A row
        whose sealed half does not open as ours is left as it is, retiring (never published nor trusted):
        under another data key (review 172, finding 2) our keys were erased here with no retirement record,
        and the late gate passes they signed no longer checked. How many were retired."""
        due = conn.execute(
            sa.select(signing_keys.c.kid, signing_keys.c.alg, signing_keys.c.public_jwk, signing_keys.c.private_enc,
                      signing_keys.c.retired_at)
            .where(signing_keys.c.status == "retiring", signing_keys.c.publish_until <= now, _TOKEN_KEYS)
        ).all()
        retired = 0
        for r in due:
            key = self._genuine(r.kid, r.alg, r.private_enc, dict(r.public_jwk))
            if key is None:
                continue
            sealed = None if r.retired_at is None else self._retirement(r.kid, r.alg, key, r.retired_at)
            conn.execute(signing_keys.update().where(signing_keys.c.kid == r.kid, signing_keys.c.status == "retiring")
                         .values(status="retired", private_enc=sealed))
            retired += 1
        return retired

    def _retirement(self, kid: str, alg: str, key: SigningKey, retired_at: datetime) -> str:
        """A retired key's public half and the time it was rotated out, sealed under the data key (the
        kid and "retired" as associated data: neither a private half's seal nor another row's opens as
        this one)."""
        record = {"kid": kid, "alg": alg, "public_jwk": key.as_dict(private=False),
                  "retired_at": _aware(retired_at).isoformat()}
        return self._cipher.seal(json.dumps(record, sort_keys=True).encode(), kid.encode() + _RETIRED_AAD)

    def _vouched(self, kid: str, alg: str, status: str, sealed: str | None, public_jwk: dict[str, Any],
                 retired_at: datetime) -> bool:
        """Is the rotated-out row ``kid`` ours? A retiring key's sealed private half must give its public
        key (``_genuine``); a retired key's seal must be its retirement record (``_retirement``) naming the
        same kid, algorithm, public key and time, or, for a key retired before its private half was erased,
        that private half. Logged when not."""
        if status == "retiring" or sealed is None:
            return sealed is not None and self._genuine(kid, alg, sealed, public_jwk) is not None
        try:
            record = json.loads(self._cipher.open_stored(sealed, kid.encode() + _RETIRED_AAD))
        except (InvalidTag, ValueError, TypeError):
            return self._genuine(kid, alg, sealed, public_jwk) is not None
        expected = {"kid": kid, "alg": alg, "public_jwk": public_jwk, "retired_at": _aware(retired_at).isoformat()}
        if record == expected:
            return True
        log.error("identity.keys.not_ours", extra={"kid": kid[:64], "alg": alg})
        return False

    def _take_lock(self, conn: sa.Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_ID)))




K = TypeVar("K", bound=RSAKey | ECKey)


class SealedKeys(Generic[K]):
    """Private JWKs sealed under the data key with their kid as associated data (our token signing keys;
    the upstream encryption keys, identity.broker.keys): ``genuine`` is what makes a row ours, and the key
    published and used is the one opened, never a public key someone wrote into the table (review 132 for
    the signing keys, review 172 finding 3 for the encryption keys). ``importer(jwk, alg)`` makes the key;
    ``use``: the "use" the opened JWK must name, when checked."""

    def __init__(self, cipher: DataCipher, importer: Callable[[dict[str, Any], str], K], *, event: str,
                 use: str | None = None) -> None:
        self._cipher = cipher
        self._import = importer
        self._event = event
        self._use = use
        # kid -> (its sealed private half, its stored public JWK, the key they make or None)
        self._opened: dict[str, tuple[str | None, dict[str, Any], K | None]] = {}

    def genuine(self, kid: str, alg: str, sealed: str | None, public_jwk: dict[str, Any]) -> K | None:
        """The private key sealed in row ``kid`` when it opens under the data key (the kid as associated
        data), names that kid and algorithm (and ``use``), and gives the row's public key; None (logged)
        otherwise. Checked once per kid and row content (an RSA key costs about 50 ms to open), and again
        when it opened under a previous data key and ``rekey-data`` has finished since
        (``DataCipher.open_stored``)."""
        seen = self._opened.get(kid)
        if seen is not None and seen[0] == sealed and seen[1] == public_jwk and (
                seen[2] is None or sealed is None or self._cipher.is_current(sealed)
                or not self._cipher.rekey_finished()):
            return seen[2]
        key: K | None = None
        try:
            if sealed is not None:
                opened = self._import(json.loads(self._cipher.open_stored(sealed, kid.encode())), alg)
                if (opened.kid == kid and opened.get("alg") == alg
                        and (self._use is None or opened.get("use") == self._use)
                        and opened.as_dict(private=False) == public_jwk):
                    key = opened
        except (InvalidTag, ValueError, TypeError, KeyError, JoseError):
            key = None
        if key is None:
            log.error(self._event, extra={"kid": kid[:64], "alg": alg[:16]})
        self._opened[kid] = (sealed, public_jwk, key)
        return key

    def keep_only(self, kids: Iterable[str]) -> None:
        """Forget the rows not among ``kids`` (gone from the table, or no longer read)."""
        keep = set(kids)
        self._opened = {k: v for k, v in self._opened.items() if k in keep}


_RETIRED_AAD = b"|retired"  # a retired key's seal (``KeyStore._retirement``), never a private half's


def _aware(at: datetime) -> datetime:
    """``at`` in UTC with its zone (SQLite gives back naive UTC datetimes)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


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

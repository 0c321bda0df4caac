"""The audit trail: rows appended in the caller's transaction, chained and signed later by the sealer.

Writers never contend on a chain head: ``SqlAuditLog`` only inserts, with the chain columns NULL. The
``AuditSealer`` chains rows afterwards, one at a time across the service (an advisory lock on
PostgreSQL; on SQLite the BEGIN IMMEDIATE write transaction already serialises), and seals only rows
no late commit can precede: on PostgreSQL those whose writer's txid is below the snapshot's xmin
(every transaction that could still insert has a txid at or above it), on SQLite every committed row.
The xmin horizon is cluster-wide: any write transaction left open on the server holds sealing back
(never correctness), so production sets ``idle_in_transaction_session_timeout``.
Each sealed batch ends with a checkpoint signed by the Ed25519 audit key, in the same transaction, so
every sealed entry is always vouched for. The chain rules live in release_service/domain/audit_chain.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from quaygate.crypto import DataCipher
from quaygate.hotsql import HotStatement
from quaygate.schema import audit_checkpoints, audit_log, signing_keys
from release_service.domain.audit_chain import (
    GENESIS,
    Checkpoint,
    Entry,
    Report,
    VerifySignature,
    checkpoint_message,
    link_hash,
    verify_chain,
)

KEY_USE = "audit"
KEY_ALG = "EdDSA"
# One constant lock id for "the sealer": int.from_bytes(b"qg-audit") fits a signed bigint.
SEAL_LOCK_ID = int.from_bytes(b"qg-audit", "big")
PAGE = 5000

_ENTRY_COLUMNS = (audit_log.c.id, audit_log.c.at, audit_log.c.kind, audit_log.c.actor, audit_log.c.subject,
                  audit_log.c.data, audit_log.c.chain_seq, audit_log.c.prev_hash, audit_log.c.hash)


_INSERT = audit_log.insert()
# The writer's transaction id, for the sealer's horizon (PostgreSQL only).
# The writer's transaction id, which the sealer's horizon needs on every row (PostgreSQL): for any
# statement that inserts audit rows.
WRITER_TXID = sa.literal_column("pg_current_xact_id()::text::bigint", sa.BigInteger)
# inline(): no RETURNING of the new ids, which nobody reads; on the driver cursor (quaygate.hotsql), as
# every token, login and gate decision writes one.
_INSERT_PG = HotStatement(audit_log.insert().inline().values(txid=WRITER_TXID))
_ENTRY_PARAMS = ("entry_kind", "entry_actor", "entry_subject", "entry_data", "entry_at")


def insert_entry_from(source: Any) -> sa.Insert:
    """PostgreSQL: an INSERT of one entry for each row of ``source`` (none if it has none), the entry bound
    by ``entry_params``, with the writer's txid as ``SqlAuditLog`` writes it. For a statement that writes
    what it audits and its audit entry at once, with data-modifying CTEs (the refresh's fast path,
    identity.grants): the entry exists exactly when the audited change does."""
    entry = [sa.bindparam(name, type_=column.type) for name, column in zip(
        _ENTRY_PARAMS, (audit_log.c.kind, audit_log.c.actor, audit_log.c.subject, audit_log.c.data, audit_log.c.at),
        strict=True)]
    return audit_log.insert().from_select(["kind", "actor", "subject", "data", "at", "txid"],
                                          sa.select(*entry, WRITER_TXID).select_from(source))


def entry_params(kind: str, actor: dict[str, Any], subject: str | None, data: dict[str, Any],
                 at: datetime) -> dict[str, Any]:
    """The parameters of an ``insert_entry_from`` statement for one entry."""
    return dict(zip(_ENTRY_PARAMS, (kind, actor, subject, data, at), strict=True))


class SqlAuditLog:
    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn
        self._pg = conn.dialect.name == "postgresql"

    def append(self, kind: str, *, actor: dict[str, Any], subject: str | None, data: dict[str, Any],
               at: datetime) -> None:
        self.append_many([(kind, actor, subject, data, at)])

    def append_many(
        self, entries: Iterable[tuple[str, dict[str, Any], str | None, dict[str, Any], datetime]]
    ) -> None:
        rows = [
            {"kind": kind, "actor": actor, "subject": subject, "data": data, "at": at}
            for kind, actor, subject, data, at in entries
        ]
        if not rows:
            return
        if self._pg:
            _INSERT_PG.execute(self._conn, rows)
        else:
            self._conn.execute(_INSERT, rows)


def append_committed(engine: sa.Engine, entries: list[tuple[str, dict[str, Any], str | None, dict[str, Any],
                                                          datetime]]) -> None:
    """Append ``entries`` in a transaction of their own, committed when this returns.

    One entry on PostgreSQL goes as one INSERT in autocommit: a single statement is a transaction of
    its own, atomic, and has its own txid for the sealer; the BEGIN and COMMIT round trips it saves
    were a third of the CPU of writing it (loadtests/RESULTS.md, tenth session), and it is sent on a
    pooled connection without a SQLAlchemy ``Connection`` around it (``execute_autocommitted``), which
    saves another quarter. Several entries share one explicit transaction, all or none."""
    if len(entries) == 1 and engine.dialect.name == "postgresql":
        kind, actor, subject, data, at = entries[0]
        _INSERT_PG.execute_autocommitted(engine, {"kind": kind, "actor": actor, "subject": subject, "data": data,
                                                  "at": at})
        return
    with engine.connect() as conn:
        SqlAuditLog(conn).append_many(entries)
        conn.commit()


# ---- the audit key -----------------------------------------------------------------------------------


def _b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AuditKey:
    """The Ed25519 key that signs checkpoints; its private half is sealed at rest under the data key."""

    def __init__(self, kid: str, private: Ed25519PrivateKey) -> None:
        self.kid = kid
        self._private = private

    @property
    def public_jwk(self) -> dict[str, str]:
        return _public_jwk(self.kid, self._private.public_key())

    def sign(self, message: bytes) -> str:
        return _b64u(self._private.sign(message))

    @classmethod
    def load_or_create(cls, conn: sa.Connection, cipher: DataCipher, now: datetime) -> AuditKey:
        """The active audit key, created on first use. Call it under the sealer's lock (no twin keys)."""
        row = conn.execute(
            sa.select(signing_keys.c.kid, signing_keys.c.private_enc)
            .where(signing_keys.c.use == KEY_USE, signing_keys.c.status == "active")
            .order_by(signing_keys.c.created_at.desc()).limit(1)
        ).first()
        if row is not None:
            raw = cipher.open(row.private_enc, row.kid.encode())
            return cls(row.kid, Ed25519PrivateKey.from_private_bytes(raw))
        private = Ed25519PrivateKey.generate()
        kid = "audit-" + _thumbprint(private.public_key())[:32]
        raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        key = cls(kid, private)
        conn.execute(signing_keys.insert().values(
            kid=kid, alg=KEY_ALG, use=KEY_USE, public_jwk=key.public_jwk, status="active", created_at=now,
            private_enc=cipher.seal(raw, kid.encode()),  # aad = kid: the blob only opens in its own row
        ))
        return key


def _public_jwk(kid: str, public: Ed25519PublicKey) -> dict[str, str]:
    x = _b64u(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": KEY_ALG}


def _thumbprint(public: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint (RFC 8037 §2 members for OKP keys)."""
    jwk = _public_jwk("", public)
    members = json.dumps({k: jwk[k] for k in ("crv", "kty", "x")}, sort_keys=True, separators=(",", ":"))
    return _b64u(hashlib.sha256(members.encode()).digest())


def signature_verifier(public_jwks: Iterable[dict[str, Any]]) -> VerifySignature:
    """Checks checkpoint signatures against the given public JWKs only (by kid)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in public_jwks:
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or "kid" not in jwk:
            raise ValueError("an audit public key must be an Ed25519 OKP JWK with a kid")
        keys[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(_unb64u(jwk["x"]))

    def verify(key_id: str, message: bytes, signature: str) -> bool:
        key = keys.get(key_id)
        if key is None:
            return False
        try:
            key.verify(_unb64u(signature), message)
        except (InvalidSignature, ValueError):
            return False
        return True

    return verify


def _stored_public_jwks(conn: sa.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(signing_keys.c.public_jwk).where(signing_keys.c.use == KEY_USE)
                        .order_by(signing_keys.c.created_at))
    return [dict(r.public_jwk) for r in rows]


def _lock(conn: sa.Connection) -> None:
    # Transaction-level: released by the commit or rollback, never left behind by a crashed sealer.
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SEAL_LOCK_ID)))


def ensure_audit_key(engine: sa.Engine, cipher: DataCipher, now: datetime) -> AuditKey:
    with engine.begin() as conn:
        _lock(conn)
        return AuditKey.load_or_create(conn, cipher, now)


def export_public_key(engine: sa.Engine) -> dict[str, Any]:
    """Every audit public key (current and past) as a JWKS, for an authority to verify with."""
    with engine.connect() as conn:
        keys = _stored_public_jwks(conn)
    if not keys:
        raise LookupError("no audit key yet: it is created by the first seal")
    return {"keys": keys}


# ---- sealing -----------------------------------------------------------------------------------------


class AuditSealer:
    def __init__(self, engine: sa.Engine, cipher: DataCipher, *, batch_size: int = 5000) -> None:
        self._engine = engine
        self._cipher = cipher
        self._batch_size = batch_size
        self._pg = engine.dialect.name == "postgresql"

    def seal_once(self, now: datetime) -> int:
        """Chain every row that can be sealed now; one transaction and one checkpoint per batch."""
        total = 0
        while True:
            sealed = self._seal_batch(now)
            total += sealed
            if sealed < self._batch_size:
                return total

    def _seal_batch(self, now: datetime) -> int:
        with self._engine.begin() as conn:
            _lock(conn)  # before any read, so the head below is the previous sealer's committed work
            head = conn.execute(
                sa.select(audit_log.c.chain_seq, audit_log.c.hash).where(audit_log.c.chain_seq.is_not(None))
                .order_by(audit_log.c.chain_seq.desc()).limit(1)
            ).first()
            seq, prev = (head.chain_seq, head.hash) if head is not None else (0, GENESIS)
            ready = audit_log.c.chain_seq.is_(None)
            if self._pg:
                xmin = sa.cast(sa.cast(sa.func.pg_snapshot_xmin(sa.func.pg_current_snapshot()), sa.Text),
                               sa.BigInteger)
                ready = sa.and_(ready, audit_log.c.txid < xmin)
            rows = conn.execute(sa.select(*_ENTRY_COLUMNS).where(ready).order_by(audit_log.c.id)
                                .limit(self._batch_size)).all()
            if not rows:
                return 0
            updates = []
            for row in rows:
                seq += 1
                digest = link_hash(prev, seq, Entry(*row))
                updates.append({"row_id": row.id, "new_seq": seq, "new_prev": prev, "new_hash": digest})
                prev = digest
            conn.execute(
                sa.update(audit_log).where(audit_log.c.id == sa.bindparam("row_id"))
                .values(chain_seq=sa.bindparam("new_seq"), prev_hash=sa.bindparam("new_prev"),
                        hash=sa.bindparam("new_hash")),
                updates,
            )
            key = AuditKey.load_or_create(conn, self._cipher, now)
            signature = key.sign(checkpoint_message(seq, prev, key.kid, now))
            conn.execute(audit_checkpoints.insert().values(chain_seq=seq, hash=prev, key_id=key.kid,
                                                           signature=signature, at=now))
            return len(rows)


# ---- verification ------------------------------------------------------------------------------------


def verify_trail(engine: sa.Engine, public_jwks: list[dict[str, Any]] | None = None) -> Report:
    """Verify the whole trail from one consistent snapshot, streaming rows in pages.

    With ``public_jwks`` the checkpoints are checked against those keys only, the independent check
    an authority makes; without, against the keys stored in the database itself.
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        else:
            conn = conn.execution_options(sqlite_begin="DEFERRED")  # a read snapshot, no write lock
        with conn.begin():
            jwks = public_jwks if public_jwks is not None else _stored_public_jwks(conn)
            checkpoints = [Checkpoint(*r) for r in conn.execute(sa.select(
                audit_checkpoints.c.chain_seq, audit_checkpoints.c.hash, audit_checkpoints.c.key_id,
                audit_checkpoints.c.signature, audit_checkpoints.c.at))]
            return verify_chain(_stream(conn), checkpoints, signature_verifier(jwks))


def _stream(conn: sa.Connection) -> Iterator[Entry]:
    # yield_per: a server-side cursor on PostgreSQL, fetched PAGE rows at a time, never all in memory.
    paged = conn.execution_options(yield_per=PAGE)
    sealed = (sa.select(*_ENTRY_COLUMNS).where(audit_log.c.chain_seq.is_not(None))
              .order_by(audit_log.c.chain_seq))
    for row in paged.execute(sealed):
        yield Entry(*row)
    unsealed = sa.select(*_ENTRY_COLUMNS).where(audit_log.c.chain_seq.is_(None))
    for row in paged.execute(unsealed):
        yield Entry(*row)


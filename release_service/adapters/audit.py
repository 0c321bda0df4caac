"""The audit trail: rows appended in the caller's transaction, chained and signed later by the sealer.

Writers never contend on a chain head: ``SqlAuditLog`` only inserts, with the chain columns NULL. The
``AuditSealer`` chains rows afterwards, one at a time across the service (an advisory lock on
PostgreSQL; on SQLite the BEGIN IMMEDIATE write transaction already serialises), and seals only rows
no late commit can precede: on PostgreSQL those whose writer's txid is below the snapshot's xmin
(every transaction that could still insert has a txid at or above it), on SQLite every committed row.
The xmin horizon is cluster-wide: any write transaction left open on the server holds sealing back
(never correctness), so production sets ``idle_in_transaction_session_timeout``.
Each sealed batch ends with a checkpoint signed by the Ed25519 audit key, in the same transaction, so
every sealed entry is always vouched for; the checkpoint also signs the one before it. The chain rules
live in release_service/domain/audit_chain.py.

The sealer never signs over history it did not see sealed: before each batch it checks that the trail
still holds the checkpoint it last signed or verified, and goes past it only through checkpoints of the
service's own key that each follow the one before (``AuditSealer._check_head``). An insider with write
access to the database, who clears the chain columns past an entry and deletes a row there, would
otherwise have the service itself seal and sign the rewritten tail. When the check fails the sealer logs
``audit.tampered`` and stops until an operator acts (README, "The audit trail"). A sealer keeps what it
knows in memory; ``QUAYGATE_AUDIT_WITNESS``, a file outside the database where it appends every
checkpoint it signs, carries it across restarts and lets ``quaygate audit verify --checkpoints`` find a
trail cut back, or cut back and sealed again. The migration 0015 refuses, by trigger, any change to a
sealed row and any deletion in the audit tables, and 0021 any row inserted with a chain column filled:
defence in depth, not the evidence. A row that got in half sealed anyway, or a seal the triggers refuse,
stops the sealer with ``audit.tampered`` too, rather than have it retry a batch that can never commit; so
does an audit key hand-over entry that its old key's sealed retirement record does not bear out
(``_check_hand_overs``): anyone may insert a row, and the sealer would sign it. So does a row that cannot
be read or hashed (``_read``, ``_hash``: a time past year 9999, a number JSON reads back as infinite), which
an ordinary INSERT can write and no seal could ever take (review 160, finding 1); ``verify_trail`` names
such a row where it breaks the trail (``Unreadable``) instead of raising.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from quaygate.crypto import DataCipher
from quaygate.hotsql import HotStatement
from quaygate.schema import audit_checkpoints, audit_log, signing_keys
from release_service.domain.audit_chain import (
    GENESIS,
    KEY_ROTATED,
    UNHASHABLE,
    Checkpoint,
    Entry,
    Report,
    SealingBound,
    Unreadable,
    VerifySignature,
    canonical_json,
    failure_text,
    link_hash,
    signed_message,
    verify_chain,
    witness_record,
    witnessed_checkpoint,
)

log = logging.getLogger("quaygate.audit")

KEY_USE = "audit"
KEY_ALG = "EdDSA"
# One constant lock id for "the sealer": int.from_bytes(b"qg-audit") fits a signed bigint.
SEAL_LOCK_ID = int.from_bytes(b"qg-audit", "big")
PAGE = 5000

_ENTRY_COLUMNS = (audit_log.c.id, audit_log.c.at, audit_log.c.kind, audit_log.c.actor, audit_log.c.subject,
                  audit_log.c.data, audit_log.c.chain_seq, audit_log.c.prev_hash, audit_log.c.hash, audit_log.c.txid)
_CHAIN_COLUMNS = (audit_log.c.chain_seq, audit_log.c.prev_hash, audit_log.c.hash)
_SEAL = (sa.update(audit_log).where(audit_log.c.id == sa.bindparam("row_id"))
         .values(chain_seq=sa.bindparam("new_seq"), prev_hash=sa.bindparam("new_prev"), hash=sa.bindparam("new_hash")))
_CHECKPOINT_COLUMNS = (audit_checkpoints.c.chain_seq, audit_checkpoints.c.hash, audit_checkpoints.c.key_id,
                       audit_checkpoints.c.signature, audit_checkpoints.c.at, audit_checkpoints.c.prev_chain_seq,
                       audit_checkpoints.c.prev_hash)


_INSERT = audit_log.insert()
# The writer's transaction id, for the sealer's horizon (PostgreSQL only).
# The writer's transaction id, which the sealer's horizon needs on every row (PostgreSQL): for any
# statement that inserts audit rows.
WRITER_TXID = sa.literal_column("pg_current_xact_id()::text::bigint", sa.BigInteger)
# inline(): no RETURNING of the new ids, which nobody reads; on the driver cursor (quaygate.hotsql), as
# every token, login and gate decision writes one.
_INSERT_PG = HotStatement(audit_log.insert().inline().values(txid=WRITER_TXID))
_ENTRY_PARAMS = ("entry_kind", "entry_actor", "entry_subject", "entry_data", "entry_at")


def insert_entry_from(source: Any, prefix: str = "") -> sa.Insert:
    """PostgreSQL: an INSERT of one entry for each row of ``source`` (none if it has none), the entry bound
    by ``entry_params`` (with the same ``prefix``: several entries in one statement), with the writer's txid
    as ``SqlAuditLog`` writes it. For a statement that writes what it audits and its audit entry at once,
    with data-modifying CTEs (the refresh's fast path, identity.grants): the entry exists exactly when the
    audited change does."""
    entry = [sa.bindparam(prefix + name, type_=column.type) for name, column in zip(
        _ENTRY_PARAMS, (audit_log.c.kind, audit_log.c.actor, audit_log.c.subject, audit_log.c.data, audit_log.c.at),
        strict=True)]
    return audit_log.insert().from_select(["kind", "actor", "subject", "data", "at", "txid"],
                                          sa.select(*entry, WRITER_TXID).select_from(source))


def entry_params(kind: str, actor: dict[str, Any], subject: str | None, data: dict[str, Any],
                 at: datetime, prefix: str = "") -> dict[str, Any]:
    """The parameters of an ``insert_entry_from`` statement for one entry."""
    return dict(zip((prefix + name for name in _ENTRY_PARAMS), (kind, actor, subject, data, at), strict=True))


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

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private.public_key()

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
            try:
                raw = cipher.open_stored(row.private_enc, row.kid.encode())
                return cls(row.kid, Ed25519PrivateKey.from_private_bytes(raw))
            except (InvalidTag, ValueError) as exc:
                raise AuditTampered(
                    f"the active audit key {row.kid} does not open under the data key: it was written into the "
                    "database by someone else, or this is not the deployment's data key") from exc
        if conn.execute(sa.select(audit_checkpoints.c.chain_seq).limit(1)).first() is not None:
            # A key is retired only by ``rotate_audit_key``, which makes its successor active in the same
            # transaction, so a signed trail with no active key lost it behind the sealer's back: a key made
            # now would sign whatever the trail holds.
            raise AuditTampered("the trail has signed checkpoints but no active audit key: the key was retired or "
                                "removed in the database; no new key is made over a signed trail")
        return cls._create(conn, cipher, now)

    @classmethod
    def _create(cls, conn: sa.Connection, cipher: DataCipher, now: datetime) -> AuditKey:
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


# A retired audit key's seal: its public half and the last entry it vouched for, never its private half
# (erased at the hand-over), with the kid and this as associated data (no private half's seal opens as it).
RETIRED_AAD = b"|audit-retired"


def rotate_audit_key(engine: sa.Engine, cipher: DataCipher, now: datetime, *,
                     actor: dict[str, Any]) -> tuple[str, str, int]:
    """Hand the trail over to a new audit key (``quaygate audit rotate-key``): under the sealer's lock, in
    one transaction, the active key is retired (its private half erased, its public half and the last
    entry it vouched for sealed in its row, ``RETIRED_AAD``), a new key made active, and the hand-over
    written on the trail (``audit_chain.KEY_ROTATED``), which the new key's first checkpoint signs. The
    old key's checkpoints keep verifying; any it signs past that entry are refused, and that entry must keep
    the hash it had (the record's ``signs_through_hash``: ``verify_chain``, the sealer). (old kid, new kid,
    last entry the old key vouched for); LookupError with no key yet."""
    with engine.begin() as conn:
        _lock(conn)
        row = conn.execute(
            sa.select(signing_keys.c.kid, signing_keys.c.private_enc)
            .where(signing_keys.c.use == KEY_USE, signing_keys.c.status == "active")
            .order_by(signing_keys.c.created_at.desc()).limit(1)).first()
        if row is None:
            raise LookupError("no audit key yet: it is created by the first seal")
        old = AuditKey.load_or_create(conn, cipher, now)  # refuses a key that does not open as ours
        last = conn.execute(sa.select(audit_checkpoints.c.chain_seq, audit_checkpoints.c.hash)
                            .order_by(audit_checkpoints.c.chain_seq.desc()).limit(1)).first()
        through, through_hash = (last.chain_seq, last.hash) if last is not None else (0, GENESIS)
        public = _public_jwk(old.kid, old.public_key)
        new = AuditKey._create(conn, cipher, now)
        # The successor is in the sealed record too: the sealer holds a hand-over entry to it (``_check_hand_overs``);
        # and the hash of the last entry the old key vouched for (review 135, finding 3): what it signed is pinned.
        record = {"kid": old.kid, "x": public["x"], "signs_through": through, "signs_through_hash": through_hash,
                  "successor": new.kid}
        conn.execute(signing_keys.update().where(signing_keys.c.kid == old.kid, signing_keys.c.status == "active")
                     .values(status="retired", retired_at=now,
                             public_jwk={**public, SIGNS_THROUGH: through, SIGNS_THROUGH_HASH: through_hash},
                             private_enc=cipher.seal(canonical_json(record), old.kid.encode() + RETIRED_AAD)))
        SqlAuditLog(conn).append(KEY_ROTATED, actor=actor, subject=new.kid, at=now, data={
            "old_key_id": old.kid, "new_key_id": new.kid, "old_key_signs_through": through})
    log.info("audit.key.rotated", extra={"fields": {"old": old.kid, "new": new.kid, "signs_through": through}})
    return old.kid, new.kid, through


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


# The member of an exported audit JWK (RFC 7517 §4 allows others) that says a key is retired and the last
# entry it may vouch for: an authority holding it refuses what the key signs past that. And that entry's hash
# (review 135, finding 3): the leaked key can still sign up to its bound, so the trail must hold that entry,
# and so all before it, as it was when the key was retired.
SIGNS_THROUGH = "quaygate_signs_through"
SIGNS_THROUGH_HASH = "quaygate_signs_through_hash"


def signs_through(public_jwks: Iterable[dict[str, Any]]) -> dict[str, int]:
    """The retired keys among ``public_jwks`` and the last entry each may vouch for."""
    bounds: dict[str, int] = {}
    for jwk in public_jwks:
        through = jwk.get(SIGNS_THROUGH)
        if through is not None:
            if not isinstance(through, int) or isinstance(through, bool) or through < 0:
                raise ValueError(f"{SIGNS_THROUGH} of an audit public key must be an entry number")
            bounds[str(jwk.get("kid"))] = through
    return bounds


def signs_through_hashes(public_jwks: Iterable[dict[str, Any]]) -> dict[str, str]:
    """The retired keys among ``public_jwks`` that say the hash of the last entry they vouched for, and it
    (a key retired before it was recorded says none)."""
    hashes: dict[str, str] = {}
    for jwk in public_jwks:
        value = jwk.get(SIGNS_THROUGH_HASH)
        if value is not None:
            if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
                raise ValueError(f"{SIGNS_THROUGH_HASH} of an audit public key must be an entry hash (64 hex digits)")
            hashes[str(jwk.get("kid"))] = value
    return hashes


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


def export_public_key(engine: sa.Engine, cipher: DataCipher) -> tuple[dict[str, Any], list[str]]:
    """Every audit public key (current and past) as a JWKS, for an authority to verify with, and the kids
    of the rows left out. Only keys whose sealed private half opens under the data key count, each public
    half derived from it: a public key an insider wrote into ``signing_keys`` is never exported as ours
    (the stored ``public_jwk`` is not read)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(signing_keys.c.kid, signing_keys.c.private_enc)
                            .where(signing_keys.c.use == KEY_USE).order_by(signing_keys.c.created_at)).all()
    keys: list[dict[str, Any]] = []
    ignored: list[str] = []
    for row in rows:
        opened = _open_audit_key(cipher, row.kid, row.private_enc)
        if opened is None:
            ignored.append(row.kid)
            continue
        jwk: dict[str, Any] = _public_jwk(row.kid, opened.public)
        if opened.through is not None:  # retired: it vouches for nothing past this entry, which keeps its hash
            jwk[SIGNS_THROUGH] = opened.through
            if opened.through_hash is not None:
                jwk[SIGNS_THROUGH_HASH] = opened.through_hash
        keys.append(jwk)
    if not keys:
        raise LookupError("no audit key yet: it is created by the first seal")
    return {"keys": keys}, ignored


# ---- the witness ---------------------------------------------------------------------------------------


class Witness:
    """A file outside the database to which the sealer appends each checkpoint it signs, one JSON line
    (``audit_chain.witness_record``), fsync'd before the sealer goes on: what an insider who can rewrite the
    database cannot rewrite with it (keep it on another volume, or have it shipped away as it grows)."""

    TAIL = 64 * 1024  # enough of the end for its last lines (each about 400 bytes)

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, cp: Checkpoint) -> None:
        line = canonical_json(witness_record(cp)) + b"\n"
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # every sealer of the host may append to it: whole lines only
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)  # and the lock with it
        if created:  # the new file's name, durable too
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def last(self) -> Checkpoint | None:
        """The witnessed checkpoint furthest along, from the end of the file; None while there is none."""
        try:
            with self.path.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - self.TAIL))
                lines = fh.read().split(b"\n")
        except FileNotFoundError:
            return None
        if size > self.TAIL:
            lines = lines[1:]  # the first may be the end of a line
        found = [_witness_line(self.path, raw) for raw in lines if raw.strip()]
        return max(found, key=lambda cp: cp.chain_seq, default=None)


def read_witness(path: str | Path) -> list[Checkpoint]:
    """Every checkpoint of a witness file; ValueError naming the line that is not one."""
    with Path(path).open("rb") as fh:
        return [_witness_line(path, raw, n) for n, raw in enumerate(fh, 1) if raw.strip()]


def _witness_line(path: str | Path, raw: bytes, n: int | None = None) -> Checkpoint:
    try:
        return witnessed_checkpoint(json.loads(raw))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError too
        where = f"line {n}" if n is not None else "a line near its end"
        raise ValueError(f"{path}, {where}: not a witnessed checkpoint ({exc})") from None


# ---- sealing -----------------------------------------------------------------------------------------


class AuditTampered(Exception):
    """The trail no longer holds what the sealer signed or verified: sealing on would sign a rewrite."""


# What reading a row the service never writes raises: psycopg's DataError for a time past year 9999 or
# 'infinity' ("timestamp too large (after year 10K)"), SQLite's ValueError for a time it cannot parse,
# RecursionError for JSON nested past the interpreter's limit; and what hashing one raises (UNHASHABLE).
_UNREADABLE: tuple[type[Exception], ...] = (sa.exc.DataError, *UNHASHABLE)


def _failure(exc: Exception) -> str:
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else None
    return failure_text(orig if isinstance(orig, BaseException) else exc)


def _cannot(row_id: int, what: str, exc: Exception) -> AuditTampered:
    return AuditTampered(f"row {row_id} of the trail {what} ({_failure(exc)}): the service writes no such entry, so "
                         "it was written or altered behind the sealer's back, and no entry after it could be sealed")


def _read(conn: sa.Connection, stmt: sa.Select[Any]) -> list[Any]:
    """The rows of ``stmt`` over ``audit_log``; one that cannot be read raises AuditTampered naming it, as every
    later seal would fail on it (review 160, finding 1). Found by reading the statement's rows one by one,
    only then: the ids read, and the reads fail in the client (psycopg's loaders, SQLAlchemy's processors), so
    the transaction goes on. A failure no single row repeats is raised as it was."""
    try:
        return list(conn.execute(stmt).all())
    except _UNREADABLE:
        bad = _unreadable_row(conn, stmt)
        if bad is None:
            raise
        row_id, _, exc = bad
        raise _cannot(row_id, "cannot be read", exc) from exc


def _unreadable_row(conn: sa.Connection, stmt: sa.Select[Any]) -> tuple[int, int | None, Exception] | None:
    """The first row of ``stmt`` over ``audit_log`` (in its order) that cannot be read, found by reading its
    rows one by one (each read fails in the client, so the transaction goes on): its id, its ``chain_seq``
    and what reading it raised; None when every row reads."""
    for row_id, chain_seq in conn.execute(stmt.with_only_columns(audit_log.c.id, audit_log.c.chain_seq)).all():
        try:
            conn.execute(stmt.where(audit_log.c.id == row_id)).all()
        except _UNREADABLE as exc:
            return row_id, chain_seq, exc
    return None


def _hash(prev: str, seq: int, e: Entry) -> str:
    """``link_hash``; AuditTampered naming the row when its content cannot be hashed (inf in its data)."""
    try:
        return link_hash(prev, seq, e)
    except UNHASHABLE as exc:
        raise _cannot(e.id, "cannot be hashed", exc) from exc


class AuditSealer:
    """Chains and signs new entries, never over a trail other than the one it saw signed.

    It knows a checkpoint (``_known``): the one it signed last or verified last, or at start the last one
    in its witness. Before each batch the trail must still hold it, and anything sealed since must be
    vouched for by checkpoints of this service's own audit key (public halves of keys the data key opens,
    not the stored public JWKs an insider could swap) that each follow the one before; the last of them
    must be the last sealed entry. Without a witness, at start it takes the trail's last checkpoint after
    checking its signature and the entries it covers. Otherwise: ``audit.tampered``, and no more sealing
    in this process (``tampered``), whatever the database says later.
    """

    def __init__(self, engine: sa.Engine, cipher: DataCipher, *, batch_size: int = 5000,
                 witness: str | Path | None = None, on_tampered: Callable[[str], None] | None = None) -> None:
        self._engine = engine
        self._cipher = cipher
        self._batch_size = batch_size
        self._pg = engine.dialect.name == "postgresql"
        self._witness = Witness(Path(witness)) if witness else None
        self._on_tampered = on_tampered
        self._started = False
        self._known: Checkpoint | None = None  # None: nothing was sealed when this sealer began
        self._retired: dict[str, OpenedKey] = {}  # retired audit keys: final
        self.tampered: str | None = None  # why sealing stopped

    def seal_once(self, now: datetime) -> int:
        """Chain every row that can be sealed now; one transaction and one checkpoint per batch."""
        total = 0
        while self.tampered is None:
            try:
                sealed = self._seal_batch(now)
            except AuditTampered as exc:
                self._stop(str(exc))
                break
            total += sealed
            if sealed < self._batch_size:
                break
        return total

    def _seal_batch(self, now: datetime) -> int:
        with self._engine.begin() as conn:
            _lock(conn)  # before any read, so the head below is the previous sealer's committed work
            latest = self._check_head(conn)
            before = (latest.chain_seq, latest.hash) if latest is not None else (0, GENESIS)
            seq, prev = before
            self._check_unsealed(conn)
            self._check_hand_overs(conn)
            ready = sa.and_(*(c.is_(None) for c in _CHAIN_COLUMNS))
            if self._pg:
                xmin = sa.cast(sa.cast(sa.func.pg_snapshot_xmin(sa.func.pg_current_snapshot()), sa.Text),
                               sa.BigInteger)
                ready = sa.and_(ready, audit_log.c.txid < xmin)
            rows = _read(conn, sa.select(*_ENTRY_COLUMNS).where(ready).order_by(audit_log.c.id)
                         .limit(self._batch_size))
            if not rows:
                return 0
            updates = []
            for row in rows:
                seq += 1
                digest = _hash(prev, seq, Entry(*row))
                updates.append({"row_id": row.id, "new_seq": seq, "new_prev": prev, "new_hash": digest})
                prev = digest
            try:
                conn.execute(_SEAL, updates)
            except sa.exc.IntegrityError as exc:
                # Under the sealer's lock nothing else of the service writes a chain column, and the rows
                # were unsealed when read: refused by migration 0015's trigger (a row sealed meanwhile) or
                # by chain_seq's uniqueness (a row given one of these numbers meanwhile), someone wrote the
                # chain behind the sealer. Retrying the same batch would fail the same way, every time.
                reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
                raise AuditTampered(
                    f"sealing entries #{before[0] + 1}-#{seq} (rows {rows[0].id}-{rows[-1].id}) was refused by "
                    f"the database ({reason}): the chain columns were written behind the sealer's back") from exc
            key = AuditKey.load_or_create(conn, self._cipher, now)
            unsigned = Checkpoint(seq, prev, key.kid, "", now, *before)
            cp = replace(unsigned, signature=key.sign(signed_message(unsigned)))
            conn.execute(audit_checkpoints.insert().values(
                chain_seq=cp.chain_seq, hash=cp.hash, key_id=cp.key_id, signature=cp.signature, at=cp.at,
                prev_chain_seq=cp.prev_chain_seq, prev_hash=cp.prev_hash))
        self._known = cp  # committed
        if self._witness is not None:
            try:
                self._witness.append(cp)
            except OSError:
                log.error("audit.witness.failed", exc_info=True, extra={"fields": {
                    "witness": str(self._witness.path), "chain_seq": cp.chain_seq}})
                raise
        return len(rows)

    # -- the checks ----------------------------------------------------------------------------------

    def _check_head(self, conn: sa.Connection) -> Checkpoint | None:
        """The trail's last checkpoint, once it is known to extend what this sealer knows; else raises."""
        if not self._started:
            self._known = self._start(conn)
            self._started = True
        known = self._known
        cps = [Checkpoint(*r) for r in conn.execute(
            sa.select(*_CHECKPOINT_COLUMNS)
            .where(audit_checkpoints.c.chain_seq >= (known.chain_seq if known is not None else 0))
            .order_by(audit_checkpoints.c.chain_seq))]
        if known is not None:
            if not cps or not cps[0].same_as(known):
                fate = "is gone" if not cps or cps[0].chain_seq != known.chain_seq else "was replaced"
                raise AuditTampered(
                    f"checkpoint #{known.chain_seq}, which this sealer signed or verified, {fate}: the trail "
                    "was cut back or rewritten")
            cps = cps[1:]
        latest = known
        for cp in cps:
            self._check_follows(conn, latest, cp)
            latest = cp
        heads = _read(conn, sa.select(*_ENTRY_COLUMNS).where(audit_log.c.chain_seq.is_not(None))
                      .order_by(audit_log.c.chain_seq.desc()).limit(1))
        head = heads[0] if heads else None
        sealed = (head.chain_seq, head.hash) if head is not None else (0, GENESIS)
        vouched = (latest.chain_seq, latest.hash) if latest is not None else (0, GENESIS)
        if sealed != vouched:
            raise AuditTampered(
                f"the last sealed entry is #{sealed[0]}, but the last checkpoint vouches for entry #{vouched[0]}"
                + (" with another hash" if sealed[0] == vouched[0] else "")
                + ": entries were sealed, cut off or rewritten behind the sealer's back")
        if head is not None and (head.prev_hash is None
                                 or _hash(head.prev_hash, head.chain_seq, Entry(*head)) != head.hash):
            raise AuditTampered(f"entry #{head.chain_seq} (row {head.id}), the last sealed, was altered")
        self._known = latest
        return latest

    def _check_unsealed(self, conn: sa.Connection) -> None:
        """No row waiting to be sealed holds a hash (review 123, finding 3).

        The service writes entries with the chain columns NULL (migration 0021 refuses anything else) and
        the sealer fills all three in one UPDATE under its lock, taken before this read: no other sealer is
        midway, and a row with ``chain_seq`` NULL but ``prev_hash`` or ``hash`` set was put there by someone
        else. Taken into a batch, its UPDATE was refused by migration 0015's trigger and the batch rolled
        back, every turn, with every later entry left unsealed and no alarm; the batch now leaves it out and
        this raises the alarm. A row with ``chain_seq`` set past the head is ``_check_head``'s. Cheap: only
        the unsealed rows are read, through ``chain_seq``'s unique index (no ORDER BY, which could walk the
        primary key instead)."""
        row = conn.execute(sa.select(audit_log.c.id).where(
            audit_log.c.chain_seq.is_(None),
            sa.or_(audit_log.c.prev_hash.is_not(None), audit_log.c.hash.is_not(None)),
        ).limit(1)).first()
        if row is not None:
            raise AuditTampered(f"row {row.id} of the trail has a hash but no chain_seq: it was written or half "
                                "sealed behind the sealer's back, and no entry after it could be sealed")

    def _check_hand_overs(self, conn: sa.Connection) -> None:
        """Every unsealed hand-over entry (``audit.key_rotated``) is the one ``rotate_audit_key`` wrote (review
        135, finding 2): its old key is retired, and its bound and successor are those of the old key's sealed
        retirement record, which only the data key's holder makes. An insider can insert a row, and the
        sealer would chain and sign it: a hand-over of his own (naming the active key, bound 0) made every
        verify fail for good. It raises the alarm instead, naming the row. Through the kind's index: the
        unsealed rows of this one kind, a handful in the trail's life."""
        rows = _read(conn, sa.select(audit_log.c.id, audit_log.c.data).where(
            audit_log.c.kind == KEY_ROTATED, audit_log.c.chain_seq.is_(None)).order_by(audit_log.c.id))
        for row in rows:
            data = row.data if isinstance(row.data, dict) else {}
            old = data.get("old_key_id")
            opened = _opened_retired_record(conn, self._cipher, old) if isinstance(old, str) else None
            if (opened is None or opened.get("signs_through") != data.get("old_key_signs_through")
                    or opened.get("successor", data.get("new_key_id")) != data.get("new_key_id")
                    or data.get("new_key_id") == old):
                raise AuditTampered(
                    f"row {row.id} of the trail is an audit key hand-over ({KEY_ROTATED}) that no rotation wrote: "
                    "it does not match the retired key's sealed record (written behind the sealer's back)")

    def _start(self, conn: sa.Connection) -> Checkpoint | None:
        """What a sealer that begins knows: the witness's last checkpoint, or the trail's, once checked."""
        if self._witness is not None:
            witnessed = self._witness.last()
            if witnessed is not None:
                return witnessed  # the trail must hold it as witnessed (``_check_head``)
        row = conn.execute(sa.select(*_CHECKPOINT_COLUMNS).order_by(audit_checkpoints.c.chain_seq.desc())
                           .limit(1)).first()
        if row is None:
            return None  # and then no entry may be sealed (``_check_head``)
        latest = Checkpoint(*row)
        if not self._signed_here(conn, latest):
            raise AuditTampered(f"the last checkpoint, #{latest.chain_seq}, is not signed by this service's audit "
                                f"key (key {latest.key_id})")
        retired = self._retired.get(latest.key_id)
        if retired is not None and latest.chain_seq != retired.through:
            # A retired key's checkpoint is the last one only until the first seal after its hand-over, and
            # then it is the one at its bound: one below it is a trail cut back before the hand-over and
            # signed again with the retired key (review 135, finding 3).
            raise AuditTampered(f"the last checkpoint, #{latest.chain_seq}, is signed by retired key {latest.key_id}, "
                                f"which vouched for entries up to #{retired.through}: the trail was cut back before "
                                "its hand-over")
        if latest.version == 2:
            start = (latest.prev_chain_seq or 0, latest.prev_hash or GENESIS)
        else:
            before = conn.execute(sa.select(audit_checkpoints.c.chain_seq, audit_checkpoints.c.hash)
                                  .where(audit_checkpoints.c.chain_seq < latest.chain_seq)
                                  .order_by(audit_checkpoints.c.chain_seq.desc()).limit(1)).first()
            start = (before.chain_seq, before.hash) if before is not None else (0, GENESIS)
        self._check_entries(conn, start, latest)
        return latest

    def _check_follows(self, conn: sa.Connection, before: Checkpoint | None, cp: Checkpoint) -> None:
        if not self._signed_here(conn, cp):
            raise AuditTampered(f"checkpoint #{cp.chain_seq} is not signed by this service's audit key "
                                f"(key {cp.key_id})")
        start = (before.chain_seq, before.hash) if before is not None else (0, GENESIS)
        if cp.version == 1:  # signed by a sealer from before version 2: through the entries instead
            self._check_entries(conn, start, cp)
        elif (cp.prev_chain_seq, cp.prev_hash) != start:
            raise AuditTampered(
                f"checkpoint #{cp.chain_seq} follows checkpoint #{cp.prev_chain_seq}, not #{start[0]}, the last "
                "this sealer signed or verified: the trail was cut back and sealed again")

    def _check_entries(self, conn: sa.Connection, start: tuple[int, str], cp: Checkpoint) -> None:
        """The entries after ``start`` up to ``cp`` link up and hash to what ``cp`` vouches for."""
        seq, prev = start
        rows = _read(conn, sa.select(*_ENTRY_COLUMNS)
                     .where(audit_log.c.chain_seq > seq, audit_log.c.chain_seq <= cp.chain_seq)
                     .order_by(audit_log.c.chain_seq))
        for row in rows:
            e = Entry(*row)
            if e.chain_seq != seq + 1 or e.prev_hash != prev or _hash(prev, seq + 1, e) != e.hash:
                raise AuditTampered(f"entry #{seq + 1}, under checkpoint #{cp.chain_seq}, is missing or altered")
            seq, prev = seq + 1, e.hash or ""
        if seq != cp.chain_seq or prev != cp.hash:
            raise AuditTampered(f"the entries under checkpoint #{cp.chain_seq} end at #{seq} or differ from what "
                                "it vouches for")

    def _signed_here(self, conn: sa.Connection, cp: Checkpoint) -> bool:
        """Signed by an audit key of this service, and not past that key's retirement, nor at its last entry
        with another hash than it had then (review 135, finding 3: the retired key, leaked, re-signing a
        rewritten history). A retired key is final and kept; any other is read again (another process may
        have retired it meanwhile)."""
        opened = self._retired.get(cp.key_id) or _opened_public_key(conn, self._cipher, cp.key_id)
        if opened is None:
            return False
        if opened.through is not None:
            self._retired[cp.key_id] = opened
            if cp.chain_seq > opened.through or (cp.chain_seq == opened.through and opened.through_hash is not None
                                                 and cp.hash != opened.through_hash):
                return False
        try:
            opened.public.verify(_unb64u(cp.signature), signed_message(cp))
        except (InvalidSignature, ValueError):
            return False
        return True

    def _stop(self, reason: str) -> None:
        self.tampered = reason
        known = self._known
        log.critical("audit.tampered", extra={"fields": {
            "reason": reason, "known_chain_seq": known.chain_seq if known is not None else 0,
            "known_hash": known.hash if known is not None else GENESIS,
            "action": "audit sealing stopped in this process until an operator acts (README: The audit trail)",
        }})
        if self._on_tampered is not None:
            self._on_tampered(reason)


class OpenedKey(NamedTuple):
    """An audit key's row as its seal gives it: the public key, and for a retired key the last entry it
    vouched for and that entry's hash (None for a key retired before the hash was recorded)."""

    public: Ed25519PublicKey
    through: int | None = None
    through_hash: str | None = None


def _opened_public_key(conn: sa.Connection, cipher: DataCipher, kid: str) -> OpenedKey | None:
    """The public half of audit key ``kid`` as its seal gives it, and for a retired key the last entry it
    vouched for: only a key sealed under the data key counts, never a public key written into the database."""
    row = conn.execute(sa.select(signing_keys.c.private_enc)
                       .where(signing_keys.c.kid == kid, signing_keys.c.use == KEY_USE)).first()
    return None if row is None else _open_audit_key(cipher, kid, row.private_enc)


def _opened_retired_record(conn: sa.Connection, cipher: DataCipher, kid: str) -> dict[str, Any] | None:
    """The sealed retirement record of audit key ``kid`` (``rotate_audit_key``), None when it is not a retired
    key of ours."""
    row = conn.execute(sa.select(signing_keys.c.private_enc)
                       .where(signing_keys.c.kid == kid, signing_keys.c.use == KEY_USE)).first()
    if row is None or row.private_enc is None:
        return None
    try:
        record = json.loads(cipher.open_stored(row.private_enc, kid.encode() + RETIRED_AAD))
    except (InvalidTag, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("kid") == kid else None


def _open_audit_key(cipher: DataCipher, kid: str, sealed: str | None) -> OpenedKey | None:
    """An audit key's row, opened: the public key alone for a key that signs, its sealed private half giving
    it; with the last entry it vouched for and that entry's hash for a retired one (its retirement record,
    ``rotate_audit_key``); None when it opens as neither (not ours)."""
    if sealed is None:
        return None
    try:
        return OpenedKey(Ed25519PrivateKey.from_private_bytes(cipher.open_stored(sealed, kid.encode())).public_key())
    except (InvalidTag, ValueError):
        pass
    try:
        record = json.loads(cipher.open_stored(sealed, kid.encode() + RETIRED_AAD))
        through, through_hash = record["signs_through"], record.get("signs_through_hash")
        if record["kid"] != kid or not isinstance(through, int) or isinstance(through, bool) \
                or not isinstance(through_hash, str | None):
            return None
        return OpenedKey(Ed25519PublicKey.from_public_bytes(_unb64u(record["x"])), through, through_hash)
    except (InvalidTag, ValueError, KeyError, TypeError):
        return None


# ---- verification ------------------------------------------------------------------------------------


def verify_trail(engine: sa.Engine, public_jwks: list[dict[str, Any]] | None = None, *,
                 witnessed: Iterable[Checkpoint] = (), now: datetime | None = None,
                 max_unsealed_age: timedelta | None = None, recheck_after: float = 0.0) -> Report:
    """Verify the whole trail from one consistent snapshot, streaming rows in pages.

    With ``public_jwks`` the checkpoints are checked against those keys only, the independent check
    an authority makes; without, against the keys stored in the database itself. ``witnessed``: the
    checkpoints of witness files (``read_witness``). An unsealed row is held back, and the trail not
    intact, when it is older than ``max_unsealed_age`` at ``now`` or (PostgreSQL) its writer's txid
    could never let the sealer take it. With ``recheck_after`` seconds, rows held by age only are looked
    at again after that pause, and those sealed meanwhile let go: a row written just now with a time
    long past (an offline gate decision reconciled) is sealed within a second, not held back.
    """
    with engine.connect() as conn:
        pg = conn.dialect.name == "postgresql"
        if pg:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        else:
            conn = conn.execution_options(sqlite_begin="DEFERRED")  # a read snapshot, no write lock
        with conn.begin():
            xmax = conn.execute(sa.text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
                                ).scalar_one() if pg else None
            sealing = SealingBound(now or datetime.now(UTC), max_unsealed_age, txid_required=pg, txid_limit=xmax)
            jwks = public_jwks if public_jwks is not None else _stored_public_jwks(conn)
            checkpoints = [Checkpoint(*r) for r in conn.execute(sa.select(*_CHECKPOINT_COLUMNS))]
            report = verify_chain(_stream(conn), checkpoints, signature_verifier(jwks), witnessed=witnessed,
                                  sealing=sealing, signs_through=signs_through(jwks),
                                  signs_through_hash=signs_through_hashes(jwks))
    if report.held and recheck_after > 0 and report.held_count == len(report.held):
        time.sleep(recheck_after)
        with engine.connect() as conn:
            still = set(conn.execute(sa.select(audit_log.c.id).where(
                audit_log.c.id.in_([h.row_id for h in report.held]), audit_log.c.chain_seq.is_(None))).scalars())
        report = report.keeping_held(still)
    return report


def _stream(conn: sa.Connection) -> Iterator[Entry | Unreadable]:
    yield from _in_order(conn, sa.select(*_ENTRY_COLUMNS).where(audit_log.c.chain_seq.is_not(None)),
                         audit_log.c.chain_seq)
    yield from _in_order(conn, sa.select(*_ENTRY_COLUMNS).where(audit_log.c.chain_seq.is_(None)), audit_log.c.id)


def _in_order(conn: sa.Connection, stmt: sa.Select[Any], key: sa.Column[Any]) -> Iterator[Entry | Unreadable]:
    """The rows of ``stmt`` in ``key`` order; one that cannot be read as ``Unreadable``, and the rows after it
    (review 160, finding 1: a time past year 9999 ended verify in a traceback).

    yield_per: a server-side cursor on PostgreSQL, fetched PAGE rows at a time, never all in memory. A row that
    fails fails its page, in the client; the transaction goes on, and the row is found among the next PAGE
    after the last one read by reading them one by one."""
    paged = conn.execution_options(yield_per=PAGE)
    after: Any = None
    while True:
        rest = stmt if after is None else stmt.where(key > after)
        try:
            for row in paged.execute(rest.order_by(key)):
                e = Entry(*row)
                after = e.chain_seq if key is audit_log.c.chain_seq else e.id
                yield e
            return
        except _UNREADABLE:
            bad = _unreadable_row(conn, rest.order_by(key).limit(PAGE))
            if bad is None:
                raise
            row_id, chain_seq, exc = bad
            yield Unreadable(row_id, chain_seq, _failure(exc))
            after = chain_seq if key is audit_log.c.chain_seq else row_id

"""The tamper-evident audit trail on the real schema: sealing, signed checkpoints, verification.

Each tampering test edits the database the way an insider with write access would, past the audit
tables' triggers (``as_insider``), and checks that verification names the first broken entry.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import SecretStr

from quaygate.audit_cli import cmd_export_key, cmd_seal, cmd_verify
from quaygate.crypto import DataCipher
from quaygate.schema import audit_checkpoints, audit_log, signing_keys
from quaygate.settings import Settings
from release_service.adapters.audit import AuditSealer, SqlAuditLog, export_public_key, verify_trail
from release_service.domain.audit_chain import (
    GENESIS,
    Checkpoint,
    Entry,
    ProblemKind,
    checkpoint_message,
    link_hash,
    verify_chain,
)

T0 = datetime(2025, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def cipher() -> DataCipher:
    return DataCipher(os.urandom(32))


def append(engine: sa.Engine, count: int, *, start: int = 0) -> None:
    with engine.begin() as conn:
        SqlAuditLog(conn).append_many(
            ("release.issued", {"org": "line-1", "sub": "client-a"}, f"right-{start + i}",
             {"n": start + i, "container": "MSCU1234565", "note": "Liège ✓", "confidence": 0.93},
             T0 + timedelta(seconds=start + i))
            for i in range(count)
        )


@pytest.fixture
def sealed_trail(engine: sa.Engine, cipher: DataCipher) -> sa.Engine:
    """12 entries written in 3 transactions, sealed in batches of 5: checkpoints #5, #10, #12."""
    for t in range(3):
        append(engine, 4, start=4 * t)
    wait_until_sealable(engine, 12)  # so the batches, hence the checkpoints, fall where the tests expect
    assert AuditSealer(engine, cipher, batch_size=5).seal_once(T0) == 12
    return engine


def seal_all(sealer: AuditSealer, expected: int, now: datetime = T0) -> int:
    """Seal until ``expected`` rows are sealed.

    On PostgreSQL the xmin horizon is cluster-wide: a write transaction open anywhere on the server
    (another test run, another database) holds sealing back for a moment, so one pass may seal less.
    """
    total, deadline = 0, time.monotonic() + 30
    while total < expected and time.monotonic() < deadline:
        total += sealer.seal_once(now)
        if total < expected:
            time.sleep(0.02)
    return total


def wait_until_sealable(engine: sa.Engine, count: int) -> None:
    if engine.dialect.name != "postgresql":
        return
    ready = sa.text("SELECT count(*) FROM audit_log"
                    " WHERE txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
    deadline = time.monotonic() + 30
    with engine.connect() as conn:
        while conn.execute(ready).scalar_one() < count and time.monotonic() < deadline:
            conn.rollback()
            time.sleep(0.02)


def public_keys(engine: sa.Engine, cipher: DataCipher) -> list[dict[str, str]]:
    jwks, ignored = export_public_key(engine, cipher)
    assert ignored == []
    keys: list[dict[str, str]] = jwks["keys"]
    return keys


@contextlib.contextmanager
def as_insider(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A write transaction of an insider who gets past the audit tables' triggers (migration 0015): on
    PostgreSQL a superuser's ``session_replication_role = replica``, under which no ordinary trigger
    fires; on SQLite the triggers dropped inside the transaction and made again before it commits."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            yield conn
            return
        triggers = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").all()
        for name, _ in triggers:
            conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
        yield conn
        for _, sql in triggers:
            conn.exec_driver_sql(sql)


def run(engine: sa.Engine, sql: str, **params: object) -> None:
    with as_insider(engine) as conn:
        conn.execute(sa.text(sql), params)


def test_an_intact_trail_verifies_with_only_the_public_key(
    sealed_trail: sa.Engine, cipher: DataCipher
) -> None:
    report = verify_trail(sealed_trail, public_keys(sealed_trail, cipher))
    assert report.intact, report.problem
    assert (report.entries, report.checkpoints, report.unsealed) == (12, 3, 0)
    assert report.last_checkpoint is not None and report.last_checkpoint.chain_seq == 12

    append(sealed_trail, 2, start=100)  # written, not sealed yet: counted, not a break
    assert verify_trail(sealed_trail).unsealed == 2
    assert seal_all(AuditSealer(sealed_trail, cipher), 2) == 2
    assert AuditSealer(sealed_trail, cipher).seal_once(T0) == 0  # sealed once, never again
    report = verify_trail(sealed_trail, public_keys(sealed_trail, cipher))
    assert report.intact and (report.entries, report.checkpoints, report.unsealed) == (14, 4, 0)


def test_an_edited_row_is_named_by_its_chain_seq(sealed_trail: sa.Engine, cipher: DataCipher) -> None:
    run(sealed_trail, "UPDATE audit_log SET data = :d WHERE chain_seq = 7", d=json.dumps({"n": 999}))
    report = verify_trail(sealed_trail, public_keys(sealed_trail, cipher))
    assert report.problem is not None and report.problem.kind is ProblemKind.EDITED
    assert report.problem.chain_seq == 7 and report.entries == 6
    assert "entry 7" in report.problem.message


def test_a_deleted_row_is_found(sealed_trail: sa.Engine, cipher: DataCipher) -> None:
    run(sealed_trail, "DELETE FROM audit_log WHERE chain_seq = 5")
    report = verify_trail(sealed_trail, public_keys(sealed_trail, cipher))
    assert report.problem is not None and report.problem.kind is ProblemKind.MISSING
    assert report.problem.chain_seq == 5 and "entry 5 is missing" in report.problem.message


def test_a_deleted_tail_is_found_through_its_checkpoint(sealed_trail: sa.Engine, cipher: DataCipher) -> None:
    run(sealed_trail, "DELETE FROM audit_log WHERE chain_seq >= 11")
    report = verify_trail(sealed_trail, public_keys(sealed_trail, cipher))
    assert report.problem is not None and report.problem.kind is ProblemKind.MISSING
    assert report.problem.chain_seq == 11 and report.entries == 10


def test_swapped_rows_are_found(sealed_trail: sa.Engine, cipher: DataCipher) -> None:
    # Reordering: entries 3 and 4 trade places in the chain.
    run(sealed_trail, "UPDATE audit_log SET chain_seq = -1 WHERE chain_seq = 3")
    run(sealed_trail, "UPDATE audit_log SET chain_seq = 3 WHERE chain_seq = 4")
    run(sealed_trail, "UPDATE audit_log SET chain_seq = 4 WHERE chain_seq = -1")
    report = verify_trail(sealed_trail, public_keys(sealed_trail, cipher))
    assert report.problem is not None and report.problem.kind is ProblemKind.MISLINKED
    assert report.problem.chain_seq == 3


def test_swapped_contents_are_found(sealed_trail: sa.Engine, cipher: DataCipher) -> None:
    with as_insider(sealed_trail) as conn:
        a, b = conn.execute(sa.select(audit_log.c.subject, audit_log.c.data)
                            .where(audit_log.c.chain_seq.in_([8, 9])).order_by(audit_log.c.chain_seq)).all()
        for seq, row in ((8, b), (9, a)):
            conn.execute(audit_log.update().where(audit_log.c.chain_seq == seq)
                         .values(subject=row.subject, data=row.data))
    report = verify_trail(sealed_trail, public_keys(sealed_trail, cipher))
    assert report.problem is not None and report.problem.kind is ProblemKind.EDITED
    assert report.problem.chain_seq == 8


def rechain_from(engine: sa.Engine, seq: int) -> None:
    """The insider's best forgery: edit entry ``seq`` and recompute every hash after it."""
    with as_insider(engine) as conn:
        prev = conn.execute(sa.select(audit_log.c.hash).where(audit_log.c.chain_seq == seq - 1)).scalar_one()
        conn.execute(audit_log.update().where(audit_log.c.chain_seq == seq).values(data={"n": -1}))
        rows = conn.execute(sa.select(audit_log.c.id, audit_log.c.at, audit_log.c.kind, audit_log.c.actor,
                                      audit_log.c.subject, audit_log.c.data, audit_log.c.chain_seq)
                            .where(audit_log.c.chain_seq >= seq).order_by(audit_log.c.chain_seq)).all()
        for row in rows:
            digest = link_hash(prev, row.chain_seq, Entry(*row))
            conn.execute(audit_log.update().where(audit_log.c.id == row.id)
                         .values(prev_hash=prev, hash=digest))
            prev = digest


def test_a_consistently_rewritten_chain_is_caught_by_the_next_signed_checkpoint(
    sealed_trail: sa.Engine, cipher: DataCipher
) -> None:
    rechain_from(sealed_trail, 7)
    report = verify_trail(sealed_trail, public_keys(sealed_trail, cipher))
    assert report.problem is not None and report.problem.kind is ProblemKind.CHECKPOINT_MISMATCH
    assert report.problem.chain_seq == 10 and report.entries == 9


def test_a_removed_checkpoint_leaves_its_entries_uncovered(sealed_trail: sa.Engine, cipher: DataCipher) -> None:
    run(sealed_trail, "DELETE FROM audit_checkpoints WHERE chain_seq = 12")
    report = verify_trail(sealed_trail, public_keys(sealed_trail, cipher))
    assert report.problem is not None and report.problem.kind is ProblemKind.UNCOVERED
    assert report.problem.chain_seq == 11


def test_a_forged_checkpoint_signature_is_found(sealed_trail: sa.Engine, cipher: DataCipher) -> None:
    # Rewrite the chain, then re-sign its checkpoints with a key of the forger's own under the same kid.
    rechain_from(sealed_trail, 7)
    forger = Ed25519PrivateKey.generate()
    with as_insider(sealed_trail) as conn:
        for cp in conn.execute(sa.select(audit_checkpoints)).all():
            new_hash = conn.execute(sa.select(audit_log.c.hash)
                                    .where(audit_log.c.chain_seq == cp.chain_seq)).scalar_one()
            sig = forger.sign(checkpoint_message(cp.chain_seq, new_hash, cp.key_id, cp.at,
                                                 (cp.prev_chain_seq, cp.prev_hash)))
            conn.execute(audit_checkpoints.update().where(audit_checkpoints.c.chain_seq == cp.chain_seq)
                         .values(hash=new_hash, signature=base64.urlsafe_b64encode(sig).decode().rstrip("=")))
    report = verify_trail(sealed_trail, public_keys(sealed_trail, cipher))
    assert report.problem is not None and report.problem.kind is ProblemKind.BAD_SIGNATURE
    assert report.problem.chain_seq == 5 and report.entries == 4


def test_verification_with_a_different_public_key_fails(sealed_trail: sa.Engine, cipher: DataCipher) -> None:
    genuine = public_keys(sealed_trail, cipher)[0]
    other = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                   serialization.PublicFormat.Raw)
    impostor = {**genuine, "x": base64.urlsafe_b64encode(other).decode().rstrip("=")}
    report = verify_trail(sealed_trail, [impostor])
    assert report.problem is not None and report.problem.kind is ProblemKind.BAD_SIGNATURE
    assert report.problem.chain_seq == 5
    # The key the database holds is not trusted when the authority brings its own: swapping it there
    # (to match a forgery) changes nothing for the independent check.
    run(sealed_trail, "UPDATE signing_keys SET public_jwk = :j", j=json.dumps(impostor))
    assert verify_trail(sealed_trail, [genuine]).intact


def test_the_audit_key_is_stored_sealed_under_the_data_key(
    sealed_trail: sa.Engine, cipher: DataCipher
) -> None:
    with sealed_trail.connect() as conn:
        row = conn.execute(sa.select(signing_keys)).one()
    assert (row.use, row.alg, row.status) == ("audit", "EdDSA", "active")
    assert "d" not in row.public_jwk
    raw = cipher.open(row.private_enc, row.kid.encode())
    assert len(raw) == 32
    with pytest.raises(InvalidTag):  # bound to its own row by the aad
        cipher.open(row.private_enc, b"another-kid")


def test_an_auditor_can_reimplement_the_check_from_the_documented_rules(sealed_trail: sa.Engine,
                                                                        cipher: DataCipher) -> None:
    """Straight from the module docstring, with hashlib and an Ed25519 verifier only."""
    jwk = public_keys(sealed_trail, cipher)[0]
    verifier = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "="))
    with sealed_trail.connect() as conn:
        rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.chain_seq)).all()
        cps = conn.execute(sa.select(audit_checkpoints)).all()
    prev, hashes = GENESIS, {}
    for r in rows:
        payload = {"chain_seq": r.chain_seq, "id": r.id, "at": r.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                   "kind": r.kind, "actor": r.actor, "subject": r.subject, "data": r.data}
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert r.prev_hash == prev and r.hash == hashlib.sha256(prev.encode() + body).hexdigest()
        prev = hashes[r.chain_seq] = r.hash
    before = (0, GENESIS)
    for cp in sorted(cps, key=lambda c: c.chain_seq):
        body = {"at": cp.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "chain_seq": cp.chain_seq, "hash": cp.hash,
                "key_id": cp.key_id, "prev_chain_seq": cp.prev_chain_seq, "prev_hash": cp.prev_hash}
        signed = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        message = b"quaygate.audit.checkpoint.v2\n" + signed
        verifier.verify(base64.urlsafe_b64decode(cp.signature + "=="), message)
        assert hashes[cp.chain_seq] == cp.hash and (cp.prev_chain_seq, cp.prev_hash) == before
        before = (cp.chain_seq, cp.hash)


def test_verify_chain_reports_the_first_problem_only() -> None:
    entries, prev = [], GENESIS
    for seq in range(1, 5):
        base = Entry(seq, T0, "k", {}, None, {"n": seq})
        digest = link_hash(prev, seq, base)
        entries.append(Entry(seq, T0, "k", {}, None, {"n": seq}, seq, prev, digest))
        prev = digest
    cp = Checkpoint(4, prev, "k1", "sig", T0)
    good = verify_chain(entries, [cp], lambda kid, msg, sig: True)
    assert good.intact and good.entries == 4
    tampered = [entries[0], entries[2], entries[1], entries[3]]  # out of order, e.g. from an export
    report = verify_chain(tampered, [cp], lambda kid, msg, sig: True)
    assert report.problem is not None and report.problem.kind is ProblemKind.MISSING
    assert report.problem.chain_seq == 2
    dup = verify_chain([entries[0], entries[1], entries[1]], [], lambda kid, msg, sig: True)
    assert dup.problem is not None and dup.problem.kind is ProblemKind.MISLINKED


@pytest.mark.postgres
def test_a_row_of_a_transaction_still_open_is_sealed_only_after_it_commits_in_its_place(
    pg_engine: sa.Engine, cipher: DataCipher
) -> None:
    sealer = AuditSealer(pg_engine, cipher)
    append(pg_engine, 1, start=0)  # row id 1, committed before the slow writer began
    slow = pg_engine.connect()
    try:
        tx = slow.begin()
        SqlAuditLog(slow).append("release.slow", actor={}, subject="slow", data={}, at=T0)  # row id 2
        append(pg_engine, 1, start=1)  # row id 3: committed, but its txid is above the slow writer's
        assert seal_all(sealer, 1) == 1  # only row 1: row 3 could still be preceded by row 2
        assert sealer.seal_once(T0) == 0
        tx.commit()
    finally:
        slow.close()
    assert seal_all(sealer, 2) == 2
    with pg_engine.connect() as conn:
        order = conn.execute(sa.select(audit_log.c.chain_seq, audit_log.c.subject)
                             .order_by(audit_log.c.chain_seq)).all()
    assert [tuple(r) for r in order] == [(1, "right-0"), (2, "slow"), (3, "right-1")]
    assert verify_trail(pg_engine, public_keys(pg_engine, cipher)).intact


def test_concurrent_appends_are_all_sealed_once_with_a_gap_free_chain(
    engine: sa.Engine, cipher: DataCipher
) -> None:
    writers, transactions, per_tx = 6, 15, 3
    done = threading.Event()
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for t in range(transactions):
                append(engine, per_tx, start=(w * transactions + t) * per_tx)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    def seal() -> None:
        try:
            while not done.is_set():
                AuditSealer(engine, cipher, batch_size=7).seal_once(datetime.now(UTC))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    sealers = [threading.Thread(target=seal) for _ in range(2)]  # two sealers: the lock must hold
    for th in threads + sealers:
        th.start()
    for th in threads:
        th.join()
    done.set()
    for th in sealers:
        th.join()
    assert not errors, errors
    total = writers * transactions * per_tx
    with engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).where(audit_log.c.chain_seq.is_(None))).scalar_one()
    seal_all(AuditSealer(engine, cipher), left, datetime.now(UTC))
    with engine.connect() as conn:
        seqs = sorted(conn.execute(sa.select(audit_log.c.chain_seq)).scalars())
        subjects = conn.execute(sa.select(sa.func.count(sa.distinct(audit_log.c.subject)))).scalar_one()
    assert seqs == list(range(1, total + 1)) and subjects == total
    report = verify_trail(engine, public_keys(engine, cipher))
    assert report.intact, report.problem
    assert report.entries == total and report.unsealed == 0


def test_the_cli_says_intact_or_where_it_broke(engine: sa.Engine, database_url: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(database_url=database_url, var_dir=tmp_path,
                        data_key=SecretStr(base64.urlsafe_b64encode(os.urandom(32)).decode()))
    assert cmd_export_key(settings) == 0
    key_file = tmp_path / "audit-key.json"
    key_file.write_text(capsys.readouterr().out)
    append(engine, 3)
    wait_until_sealable(engine, 3)
    assert cmd_seal(settings) == 0 and "sealed 3 audit entries" in capsys.readouterr().out

    assert cmd_verify(settings, str(key_file)) == 0
    out = capsys.readouterr().out
    assert out.startswith("audit trail intact: 3 entries, 1 checkpoint, "
                          "last checkpoint #3 signed by key audit-")

    run(engine, "DELETE FROM audit_log WHERE chain_seq = 2")
    assert cmd_verify(settings, str(key_file)) == 1
    assert capsys.readouterr().out.startswith("audit trail BROKEN at entry 2: entry 2 is missing")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_number_json_cannot_hold_is_refused_when_written_on_both_backends(engine: sa.Engine, value: float) -> None:
    """NaN and Infinity are not JSON: PostgreSQL refuses them, and SQLite now does too, at the write that
    made them; stored, such an entry stopped the sealer later (review 160, finding 1)."""
    with pytest.raises(sa.exc.StatementError), engine.begin() as conn:  # DataError on PostgreSQL
        SqlAuditLog(conn).append("release.test", actor={"type": "system"}, subject=None, data={"n": value},
                                 at=datetime.now(UTC))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar() == 0

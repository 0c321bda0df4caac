"""The audit trail against an insider with write access to the database but no key (security review).

The review's attacks: clear the chain columns past an entry, delete the entry there, and let the
service's own sealer seal and sign the rest again; cut the trail back to an earlier checkpoint; keep an
entry unsealed, so that nothing vouches for it, and edit it. The mends: a sealer that never signs over a
trail other than the one it saw signed, checkpoints that sign the one before them and are witnessed
outside the database, a verify that fails on entries held back from sealing, and triggers that refuse
the UPDATE and DELETE in the first place (migration 0015).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from quaygate.audit_cli import cmd_export_key, cmd_seal, cmd_verify
from quaygate.cache import make_cache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.migrate import downgrade, upgrade
from quaygate.observability import Metrics
from quaygate.schema import audit_checkpoints, audit_log, signing_keys
from quaygate.settings import Settings
from quaygate.workers import BackgroundWorkers
from release_service.adapters import audit as audit_adapter
from release_service.adapters.audit import (
    AuditKey,
    AuditSealer,
    SqlAuditLog,
    Witness,
    export_public_key,
    read_witness,
    verify_trail,
)
from release_service.domain.audit_chain import (
    GENESIS,
    Checkpoint,
    Entry,
    ProblemKind,
    SealingBound,
    canonical_json,
    check_witness,
    checkpoint_message,
    link_hash,
    printable,
    signed_message,
    witness_record,
    witnessed_checkpoint,
)

from .test_audit_trail import T0, as_insider, public_keys, seal_all, wait_until_sealable

BOUND = timedelta(minutes=5)


@pytest.fixture
def cipher() -> DataCipher:
    return DataCipher(os.urandom(32))


def write(engine: sa.Engine, kind: str, count: int, start: int) -> None:
    with engine.begin() as conn:
        SqlAuditLog(conn).append_many((kind, {"person_id": "p-1"}, f"s{start + i}", {"n": start + i},
                                       T0 + timedelta(seconds=start + i)) for i in range(count))


def seal(sealer: AuditSealer, engine: sa.Engine, expected: int) -> None:
    """Seal the ``expected`` new entries as one batch, hence one checkpoint.

    Wait until every row written so far is sealable (the count includes rows already sealed): waiting for
    ``expected`` alone returned at once on a trail already holding that many sealed rows, and a pass run while
    another transaction on the server held the horizon back sealed the new rows in two batches.
    """
    with engine.connect() as conn:
        written = int(conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one())
    wait_until_sealable(engine, written)
    assert seal_all(sealer, expected) == expected


def ten_with_an_override(engine: sa.Engine, sealer: AuditSealer) -> None:
    """Entries 1-5 sealed under checkpoint #5, then a gate override (#6) and four more under #10."""
    write(engine, "release.issued", 5, 0)
    seal(sealer, engine, 5)
    write(engine, "gate.override", 1, 5)
    write(engine, "release.issued", 4, 6)
    seal(sealer, engine, 5)


def clear_past_five_and_drop_the_override(engine: sa.Engine) -> None:
    """The review's attack, by someone who can write to the database but holds no key."""
    with as_insider(engine) as conn:
        conn.execute(audit_checkpoints.delete().where(audit_checkpoints.c.chain_seq > 5))
        conn.execute(audit_log.update().where(audit_log.c.chain_seq > 5)
                     .values(chain_seq=None, prev_hash=None, hash=None))
        conn.execute(audit_log.delete().where(audit_log.c.kind == "gate.override"))


def cut_back_to_five(engine: sa.Engine) -> None:
    with as_insider(engine) as conn:
        conn.execute(audit_checkpoints.delete().where(audit_checkpoints.c.chain_seq > 5))
        conn.execute(audit_log.delete().where(audit_log.c.chain_seq > 5))


def unsealed(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(audit_log.c.chain_seq.is_(None))).scalar_one())


def settings_for(database_url: str, tmp_path: Path, **more: Any) -> Settings:
    return Settings(database_url=database_url, var_dir=tmp_path,
                    data_key=SecretStr(base64.urlsafe_b64encode(os.urandom(32)).decode()), **more)


# ---- 1. the sealer never seals over a rewritten trail ------------------------------------------------


def test_the_sealer_refuses_to_seal_again_a_tail_cleared_behind_it(
    engine: sa.Engine, cipher: DataCipher, caplog: pytest.LogCaptureFixture
) -> None:
    stopped: list[str] = []
    sealer = AuditSealer(engine, cipher, on_tampered=stopped.append)
    ten_with_an_override(engine, sealer)
    clear_past_five_and_drop_the_override(engine)
    wait_until_sealable(engine, 9)

    with caplog.at_level(logging.CRITICAL, logger="quaygate.audit"):
        assert sealer.seal_once(T0 + timedelta(minutes=1)) == 0
    assert sealer.tampered is not None and "checkpoint #10" in sealer.tampered
    assert stopped == [sealer.tampered]
    [record] = [r for r in caplog.records if r.getMessage() == "audit.tampered"]
    assert record.levelno == logging.CRITICAL
    assert getattr(record, "fields")["known_chain_seq"] == 10  # noqa: B009 - set through extra=
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(audit_checkpoints.c.chain_seq))).scalar_one() == 5
    assert unsealed(engine) == 4  # nothing was signed over the rewrite

    # It stays stopped, whatever comes after (new entries here): only an operator starts it again.
    write(engine, "release.issued", 2, 20)
    wait_until_sealable(engine, 11)
    assert sealer.seal_once(T0 + timedelta(minutes=2)) == 0 and unsealed(engine) == 6

    # And the trail says so: the held-back entries past the bound, the gap nowhere (it was never sealed).
    report = verify_trail(engine, public_keys(engine, cipher), now=T0 + timedelta(hours=1), max_unsealed_age=BOUND)
    assert not report.intact and report.problem is None and report.held_count == 6


def test_a_sealer_that_begins_takes_its_witness_as_what_it_knows(
    engine: sa.Engine, cipher: DataCipher, tmp_path: Path
) -> None:
    """As the review's demonstration: a new sealer for every seal (a restart, or the CLI's)."""
    witness = tmp_path / "witness.jsonl"
    ten_with_an_override(engine, AuditSealer(engine, cipher, witness=witness))
    clear_past_five_and_drop_the_override(engine)
    wait_until_sealable(engine, 9)

    fresh = AuditSealer(engine, cipher, witness=witness)
    assert fresh.seal_once(T0) == 0
    assert fresh.tampered is not None and "checkpoint #10" in fresh.tampered and "is gone" in fresh.tampered
    assert unsealed(engine) == 4


def test_a_sealer_that_begins_checks_the_last_checkpoint_and_the_entries_under_it(
    engine: sa.Engine, cipher: DataCipher
) -> None:
    ten_with_an_override(engine, AuditSealer(engine, cipher))
    with as_insider(engine) as conn:  # the last checkpoint gone: entries 6 to 10 sealed, vouched by nothing
        conn.execute(audit_checkpoints.delete().where(audit_checkpoints.c.chain_seq == 10))
    fresh = AuditSealer(engine, cipher)
    assert fresh.seal_once(T0) == 0
    assert fresh.tampered is not None and "last sealed entry is #10" in fresh.tampered

    with as_insider(engine) as conn:  # edited under the (now last) checkpoint #5
        conn.execute(audit_log.update().where(audit_log.c.chain_seq == 3).values(data={"n": -1}))
        conn.execute(audit_log.update().where(audit_log.c.chain_seq > 5)
                     .values(chain_seq=None, prev_hash=None, hash=None))
    fresh = AuditSealer(engine, cipher)
    assert fresh.seal_once(T0) == 0
    assert fresh.tampered is not None and "entry #3" in fresh.tampered


def test_sealers_follow_each_others_checkpoints_and_a_version_1_checkpoint_through_its_entries(
    engine: sa.Engine, cipher: DataCipher
) -> None:
    one, two = AuditSealer(engine, cipher), AuditSealer(engine, cipher)
    write(engine, "k", 3, 0)
    seal(one, engine, 3)
    write(engine, "k", 3, 3)
    seal(two, engine, 3)
    # A sealer from before version 2 (a replica not yet upgraded) seals entries 7 and 8 with a v1 checkpoint.
    write(engine, "k", 2, 6)
    wait_until_sealable(engine, 8)
    with engine.begin() as conn:
        prev = conn.execute(sa.select(audit_log.c.hash).where(audit_log.c.chain_seq == 6)).scalar_one()
        rows = conn.execute(sa.select(audit_log.c.id, audit_log.c.at, audit_log.c.kind, audit_log.c.actor,
                                      audit_log.c.subject, audit_log.c.data)
                            .where(audit_log.c.chain_seq.is_(None)).order_by(audit_log.c.id)).all()
        for seq, row in enumerate(rows, 7):
            digest = link_hash(prev, seq, Entry(*row))
            conn.execute(audit_log.update().where(audit_log.c.id == row.id)
                         .values(chain_seq=seq, prev_hash=prev, hash=digest))
            prev = digest
        key = AuditKey.load_or_create(conn, cipher, T0)
        conn.execute(audit_checkpoints.insert().values(
            chain_seq=8, hash=prev, key_id=key.kid, at=T0,
            signature=key.sign(checkpoint_message(8, prev, key.kid, T0))))
    fresh = AuditSealer(engine, cipher)  # one that begins on a version 1 checkpoint checks the entries under it
    assert fresh.seal_once(T0) == 0 and fresh.tampered is None
    write(engine, "k", 2, 8)
    seal(one, engine, 2)
    assert one.tampered is None and two.tampered is None
    write(engine, "k", 1, 10)
    seal(two, engine, 1)
    assert two.tampered is None
    report = verify_trail(engine, public_keys(engine, cipher))
    assert report.intact and (report.entries, report.checkpoints) == (11, 5)
    with engine.connect() as conn:
        versions = [p is None for p in conn.execute(sa.select(audit_checkpoints.c.prev_chain_seq)
                                                    .order_by(audit_checkpoints.c.chain_seq)).scalars()]
    assert versions == [False, False, True, False, False]


def test_a_checkpoint_under_a_key_the_data_key_does_not_open_stops_the_sealer(
    engine: sa.Engine, cipher: DataCipher
) -> None:
    """The sealer trusts the public halves of the keys the data key opens, not public JWKs in the database."""
    sealer = AuditSealer(engine, cipher)
    write(engine, "k", 2, 0)
    seal(sealer, engine, 2)
    with as_insider(engine) as conn:  # re-signed under the same kid with a key of the insider's own
        cp = conn.execute(sa.select(audit_checkpoints)).one()
        other = AuditKey("forger", Ed25519PrivateKey.generate())
        conn.execute(audit_checkpoints.update().values(signature=other.sign(signed_message(Checkpoint(*cp)))))
    fresh = AuditSealer(engine, cipher)
    assert fresh.seal_once(T0) == 0
    assert fresh.tampered is not None and "not signed by this service's audit key" in fresh.tampered


def test_the_background_sealer_stops_and_the_metric_says_so(
    engine: sa.Engine, cipher: DataCipher, database_url: str, tmp_path: Path
) -> None:
    """As the service runs it (quaygate/workers.py): with the witness of the settings, and the metric."""
    witness = tmp_path / "witness.jsonl"
    ten_with_an_override(engine, AuditSealer(engine, cipher, witness=witness))
    clear_past_five_and_drop_the_override(engine)
    settings = settings_for(database_url, tmp_path, audit_witness=witness, audit_seal_interval=0.05)
    metrics = Metrics()
    stopped = lambda: metrics.registry.get_sample_value("quaygate_audit_sealing_stopped")  # noqa: E731
    assert stopped() == 0
    workers = BackgroundWorkers(Container(settings=settings, engine=engine, cache=make_cache(None), cipher=cipher,
                                          clock=SystemClock()), metrics=metrics)
    workers.start()
    try:
        deadline = time.monotonic() + 10
        while stopped() != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        workers.stop()
    assert stopped() == 1 and unsealed(engine) == 4


# ---- 2. checkpoints chained, and witnessed outside the database ----------------------------------------


def test_a_checkpoint_deleted_in_the_middle_breaks_the_next_ones_link(engine: sa.Engine, cipher: DataCipher) -> None:
    ten_with_an_override(engine, AuditSealer(engine, cipher))
    with as_insider(engine) as conn:
        conn.execute(audit_checkpoints.delete().where(audit_checkpoints.c.chain_seq == 5))
    report = verify_trail(engine, public_keys(engine, cipher))
    assert report.problem is not None and report.problem.kind is ProblemKind.CHECKPOINT_UNLINKED
    assert report.problem.chain_seq == 10 and "follows checkpoint #5" in report.problem.message


def test_the_witness_holds_every_checkpoint_and_an_intact_trail_agrees_with_it(
    engine: sa.Engine, cipher: DataCipher, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    witness = tmp_path / "witness.jsonl"
    sealer = AuditSealer(engine, cipher, witness=witness)
    ten_with_an_override(engine, sealer)
    with engine.connect() as conn:
        stored = [Checkpoint(*r) for r in conn.execute(sa.select(
            audit_checkpoints.c.chain_seq, audit_checkpoints.c.hash, audit_checkpoints.c.key_id,
            audit_checkpoints.c.signature, audit_checkpoints.c.at, audit_checkpoints.c.prev_chain_seq,
            audit_checkpoints.c.prev_hash).order_by(audit_checkpoints.c.chain_seq))]
    witnessed = read_witness(witness)
    assert [(w.chain_seq, w.hash, w.signature, w.key_id) for w in witnessed] == [
        (c.chain_seq, c.hash, c.signature, c.key_id) for c in stored]
    assert witness.read_bytes().count(b"\n") == 2
    report = verify_trail(engine, public_keys(engine, cipher), witnessed=witnessed)
    assert report.intact and report.witnessed == 2

    settings = settings_for(database_url, tmp_path)
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps({"keys": public_keys(engine, cipher)}))
    assert cmd_verify(settings, str(key_file), [str(witness)]) == 0
    assert "2 witnessed checkpoints found as signed" in capsys.readouterr().out


def test_a_trail_cut_back_is_found_only_with_the_witness(
    engine: sa.Engine, cipher: DataCipher, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    witness = tmp_path / "witness.jsonl"
    ten_with_an_override(engine, AuditSealer(engine, cipher, witness=witness))
    cut_back_to_five(engine)

    assert verify_trail(engine, public_keys(engine, cipher)).intact  # what the database alone cannot tell
    report = verify_trail(engine, public_keys(engine, cipher), witnessed=read_witness(witness))
    assert report.problem is not None and report.problem.kind is ProblemKind.MISSING
    assert report.problem.chain_seq == 6 and "entries 6 to 10 are missing" in report.problem.message

    settings = settings_for(database_url, tmp_path)
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps({"keys": public_keys(engine, cipher)}))
    assert cmd_verify(settings, str(key_file), [str(witness)]) == 1
    assert capsys.readouterr().out.startswith("audit trail BROKEN at entry 6: entries 6 to 10 are missing")


def test_a_trail_cut_back_and_sealed_again_is_found_with_the_witness(
    engine: sa.Engine, cipher: DataCipher, tmp_path: Path
) -> None:
    """The review's demonstration whole: a sealer with no witness (and no memory) seals the rewrite."""
    witness = tmp_path / "witness.jsonl"
    ten_with_an_override(engine, AuditSealer(engine, cipher, witness=witness))
    clear_past_five_and_drop_the_override(engine)
    wait_until_sealable(engine, 9)
    assert seal_all(AuditSealer(engine, cipher), 4) == 4  # forgetful: nothing tells it otherwise

    assert verify_trail(engine, public_keys(engine, cipher)).intact
    report = verify_trail(engine, public_keys(engine, cipher), witnessed=read_witness(witness))
    assert report.problem is not None and report.problem.kind is ProblemKind.UNWITNESSED
    assert report.problem.chain_seq == 6 and report.problem.message.startswith(
        "the trail was rewritten after entry 5 and sealed again: checkpoint #10 was signed and witnessed outside "
        "the database, and is not in the trail")


def test_a_witness_line_that_does_not_verify_is_named(
    engine: sa.Engine, cipher: DataCipher, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    witness = tmp_path / "witness.jsonl"
    ten_with_an_override(engine, AuditSealer(engine, cipher, witness=witness))
    lines = witness.read_text().splitlines()
    forged = {**json.loads(lines[1]), "hash": "f" * 64}
    witness.write_text(lines[0] + "\n" + json.dumps(forged) + "\n")
    report = verify_trail(engine, public_keys(engine, cipher), witnessed=read_witness(witness))
    assert report.problem is not None and report.problem.kind is ProblemKind.BAD_WITNESS
    assert report.problem.chain_seq == 10

    witness.write_text(lines[0] + "\nnot json\n")
    settings = settings_for(database_url, tmp_path)
    assert cmd_verify(settings, None, [str(witness)]) == 2
    assert "line 2: not a witnessed checkpoint" in capsys.readouterr().err


def test_the_witness_is_appended_to_and_its_last_checkpoint_read_from_its_end(tmp_path: Path) -> None:
    witness = Witness(tmp_path / "witness.jsonl")
    assert witness.last() is None
    for seq in range(1, 301):  # about 100 kB: more than the tail the sealer reads at start
        witness.append(Checkpoint(seq, f"{seq:064x}", "k1", "s" * 86, T0, seq - 1, f"{seq - 1:064x}"))
    assert witness.path.stat().st_size > Witness.TAIL
    last = witness.last()
    assert last is not None and last.chain_seq == 300 and last.prev_hash == f"{299:064x}"
    assert [cp.chain_seq for cp in read_witness(witness.path)] == list(range(1, 301))


def test_witness_lines_round_trip_and_are_checked_by_their_signature() -> None:
    cp = Checkpoint(10, "a" * 64, "k1", "sig", T0, 5, "b" * 64)
    assert witnessed_checkpoint(json.loads(canonical_json(witness_record(cp)))) == cp
    v1 = Checkpoint(5, "b" * 64, "k1", "sig", T0)
    assert witnessed_checkpoint(witness_record(v1)) == v1 and v1.version == 1
    assert signed_message(cp).startswith(b"quaygate.audit.checkpoint.v2\n")
    assert signed_message(v1) == checkpoint_message(5, "b" * 64, "k1", T0)
    with pytest.raises(ValueError):
        witnessed_checkpoint({"chain_seq": "10", "hash": "a", "key_id": "k", "signature": "s",
                              "at": "2025-03-01T08:00:00.000000Z"})
    everything = lambda kid, msg, sig: True  # noqa: E731
    problem, found = check_witness([cp], {10: cp}, 10, everything)
    assert problem is None and found == 1
    five = Checkpoint(5, "b" * 64, "k1", "sig5", T0, 0, GENESIS)
    problem, _ = check_witness([five, cp], {5: five}, 5, everything)  # cut back to #5
    assert problem is not None and problem.kind is ProblemKind.MISSING and problem.chain_seq == 6
    assert problem.message.startswith("entries 6 to 10 are missing: the trail ends at entry 5")
    resealed = Checkpoint(9, "c" * 64, "k1", "sig9", T0, 5, "b" * 64)
    problem, _ = check_witness([five, cp], {5: five, 9: resealed}, 9, everything)  # and sealed again
    assert problem is not None and problem.kind is ProblemKind.UNWITNESSED and problem.chain_seq == 6
    problem, _ = check_witness([cp], {10: resealed}, 10, lambda kid, msg, sig: False)
    assert problem is not None and problem.kind is ProblemKind.BAD_WITNESS


# ---- 3. entries held back from sealing ------------------------------------------------------------------


def test_an_entry_unsealed_past_the_bound_makes_the_trail_not_intact(
    engine: sa.Engine, cipher: DataCipher, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sealer = AuditSealer(engine, cipher)
    write(engine, "k", 3, 0)
    seal(sealer, engine, 3)
    write(engine, "role.granted", 1, 3)  # never sealed: the sealer is down, or held back

    within = verify_trail(engine, public_keys(engine, cipher), now=T0 + timedelta(minutes=4), max_unsealed_age=BOUND)
    assert within.intact and within.unsealed == 1
    past = verify_trail(engine, public_keys(engine, cipher), now=T0 + timedelta(minutes=6), max_unsealed_age=BOUND)
    assert not past.intact and past.problem is None and past.held_count == 1
    with engine.connect() as conn:
        row_id = conn.execute(sa.select(audit_log.c.id).where(audit_log.c.kind == "role.granted")).scalar_one()
    assert past.held[0].row_id == row_id and "not sealed 5 min after its time" in past.held[0].reason

    # The command line waits two turns of the sealer for it, then names it, by id and age.
    settings = settings_for(database_url, tmp_path, audit_seal_interval=0.05, audit_unsealed_max_age=300)
    assert cmd_verify(settings, None) == 1
    out = capsys.readouterr().out
    assert out.startswith("audit trail NOT INTACT: 1 entry should have been sealed and is not")
    assert f"row {row_id} (at 2025-03-01T08:00:03.123456Z, " in out and "the sealed part verifies: 3 entries" in out


def test_an_entry_written_late_with_an_old_time_is_let_go_once_sealed(
    engine: sa.Engine, cipher: DataCipher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An offline gate decision reconciled now carries its own time, long past: it is not held back.

    The sealer's turn comes in verify's pause before its second look, as it does in the service. It was a
    timer of 0.3 s racing verify's first read: a test process held up that long (a loaded machine) sealed the
    row before verify saw it unsealed, and the test failed."""
    write(engine, "release.gated_in", 1, 0)  # at T0, an hour before "now" below
    wait_until_sealable(engine, 1)
    sealer = AuditSealer(engine, cipher)
    pauses: list[float] = []

    def the_sealers_turn(seconds: float) -> None:
        pauses.append(seconds)
        assert sealer.seal_once(T0) == 1

    monkeypatch.setattr(audit_adapter, "time", SimpleNamespace(sleep=the_sealers_turn))
    report = verify_trail(engine, now=T0 + timedelta(hours=1), max_unsealed_age=BOUND, recheck_after=1.5)
    assert pauses == [1.5]  # held at the first look, let go at the second
    assert report.intact and report.held_count == 0 and report.unsealed == 1


@pytest.mark.postgres
def test_an_entry_held_back_by_an_open_transaction_is_found(pg_engine: sa.Engine, cipher: DataCipher) -> None:
    sealer = AuditSealer(pg_engine, cipher)
    holder = pg_engine.connect()
    try:
        holder.begin()
        holder.execute(sa.text("SELECT pg_current_xact_id()"))  # a write transaction's txid: the horizon stays
        write(pg_engine, "role.granted", 1, 0)
        assert sealer.seal_once(T0) == 0
        report = verify_trail(pg_engine, now=T0 + timedelta(minutes=6), max_unsealed_age=BOUND)
        assert not report.intact and report.held_count == 1
    finally:
        holder.close()
    assert seal_all(sealer, 1) == 1
    assert verify_trail(pg_engine, now=T0 + timedelta(minutes=6), max_unsealed_age=BOUND).intact


@pytest.mark.postgres
def test_an_entry_whose_txid_the_sealer_can_never_pass_fails_verify(pg_engine: sa.Engine, cipher: DataCipher) -> None:
    write(pg_engine, "role.granted", 2, 0)
    with pg_engine.connect() as conn:
        first, second = conn.execute(sa.select(audit_log.c.id).order_by(audit_log.c.id)).scalars()
    with as_insider(pg_engine) as conn:
        conn.execute(audit_log.update().where(audit_log.c.id == first).values(txid=None))
        conn.execute(audit_log.update().where(audit_log.c.id == second).values(txid=2**62))
    sealer = AuditSealer(pg_engine, cipher)
    time.sleep(0.1)
    assert sealer.seal_once(T0) == 0  # never: txid < xmin is NULL, or false
    report = verify_trail(pg_engine)  # no clock: these are found whatever their age
    assert not report.intact and report.held_count == 2
    reasons = {h.row_id: h.reason for h in report.held}
    assert "no writer txid" in reasons[first]
    assert f"writer txid {2**62} is of no transaction that has run" in reasons[second]


def test_the_sealing_bound_is_a_pure_rule() -> None:
    bound = SealingBound(T0 + timedelta(minutes=10), BOUND, txid_required=True, txid_limit=100)
    entry = Entry(1, T0 + timedelta(minutes=9), "k", {}, None, {}, txid=99)
    assert bound.why_held(entry) is None
    assert "no writer txid" in (bound.why_held(Entry(1, entry.at, "k", {}, None, {})) or "")
    assert "100 is of no transaction" in (bound.why_held(Entry(1, entry.at, "k", {}, None, {}, txid=100)) or "")
    assert "10 min" in (bound.why_held(Entry(1, T0, "k", {}, None, {}, txid=1)) or "")
    assert SealingBound(T0).why_held(Entry(1, T0 - timedelta(days=9), "k", {}, None, {})) is None


# ---- 4. the triggers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("statement", [
    "UPDATE audit_log SET data = '{\"n\": 999}' WHERE chain_seq = 2",
    "UPDATE audit_log SET chain_seq = NULL, prev_hash = NULL, hash = NULL WHERE chain_seq = 2",
    "UPDATE audit_log SET hash = '" + "0" * 64 + "' WHERE chain_seq = 2",
    "DELETE FROM audit_log WHERE chain_seq = 2",
    "DELETE FROM audit_log WHERE chain_seq IS NULL",
    "UPDATE audit_log SET txid = NULL WHERE chain_seq IS NULL",
    "UPDATE audit_log SET subject = 'other' WHERE chain_seq IS NULL",
    "UPDATE audit_log SET chain_seq = 99, prev_hash = 'x', hash = 'y', kind = 'other' WHERE chain_seq IS NULL",
    "UPDATE audit_log SET chain_seq = 99 WHERE chain_seq IS NULL",
    "UPDATE audit_checkpoints SET signature = 'x'",
    "DELETE FROM audit_checkpoints",
])
def test_the_audit_tables_refuse_changes_other_than_sealing(
    engine: sa.Engine, cipher: DataCipher, statement: str
) -> None:
    sealer = AuditSealer(engine, cipher)
    write(engine, "k", 3, 0)
    seal(sealer, engine, 3)
    write(engine, "k", 1, 3)  # one unsealed
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text(statement))
    with engine.connect() as conn:
        counts = conn.execute(sa.select(sa.func.count(audit_log.c.id), sa.func.count(audit_log.c.chain_seq))
                              ).one()
    assert tuple(counts) == (4, 3)
    report = verify_trail(engine, public_keys(engine, cipher))
    assert report.intact and report.unsealed == 1
    seal(sealer, engine, 1)  # and sealing itself goes on
    assert verify_trail(engine, public_keys(engine, cipher)).entries == 4


def test_seal_refuses_on_the_command_line(database_url: str, engine: sa.Engine, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    witness = tmp_path / "witness.jsonl"
    settings = settings_for(database_url, tmp_path, audit_witness=witness)
    assert cmd_export_key(settings) == 0
    capsys.readouterr()
    write(engine, "k", 3, 0)
    wait_until_sealable(engine, 3)
    assert cmd_seal(settings) == 0 and len(read_witness(witness)) == 1
    with as_insider(engine) as conn:
        conn.execute(audit_checkpoints.delete())
        conn.execute(audit_log.update().values(chain_seq=None, prev_hash=None, hash=None))
    assert cmd_seal(settings) == 1
    assert "audit seal: refused to seal: checkpoint #3" in capsys.readouterr().err
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_checkpoints)).scalar_one() == 0


# ---- the audit key is ours only if the data key opens it (review 88, finding 3) ---------------------------


def plant_key(engine: sa.Engine, *, status: str = "active") -> str:
    """An insider's own audit key row: his public key, a private half sealed under a data key of his own."""
    own = AuditKey("audit-insider", Ed25519PrivateKey.generate())
    with engine.begin() as conn:
        conn.execute(signing_keys.insert().values(
            kid=own.kid, alg="EdDSA", use="audit", public_jwk=own.public_jwk, status=status,
            created_at=T0 + timedelta(days=1),
            private_enc=DataCipher(os.urandom(32)).seal(b"\x00" * 32, own.kid.encode())))
    return own.kid


def test_export_key_leaves_out_a_key_planted_in_the_database(
    engine: sa.Engine, cipher: DataCipher, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sealer = AuditSealer(engine, cipher)
    write(engine, "k", 2, 0)
    seal(sealer, engine, 2)
    planted = plant_key(engine, status="retired")
    jwks, ignored = export_public_key(engine, cipher)
    assert [k["kid"] for k in jwks["keys"]] != [] and planted not in {k["kid"] for k in jwks["keys"]}
    assert ignored == [planted]
    # What is exported is derived from the private half, not read from the stored public JWK.
    with engine.begin() as conn:
        conn.execute(signing_keys.update().where(signing_keys.c.kid != planted)
                     .values(public_jwk={"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "x", "alg": "EdDSA"}))
    jwks2, _ = export_public_key(engine, cipher)
    assert jwks2 == jwks
    assert verify_trail(engine, jwks2["keys"]).intact

    settings = settings_for(database_url, tmp_path)  # another data key: nothing of this trail's opens
    assert cmd_export_key(settings) == 1
    assert "does not open under the data key" in capsys.readouterr().err


def test_a_retired_or_swapped_active_key_stops_the_sealer_instead_of_a_new_key(
    engine: sa.Engine, cipher: DataCipher
) -> None:
    sealer = AuditSealer(engine, cipher)
    write(engine, "k", 2, 0)
    seal(sealer, engine, 2)
    with engine.begin() as conn:  # the real key set aside, the insider's made the active one
        conn.execute(signing_keys.update().where(signing_keys.c.use == "audit").values(status="retired"))
    plant_key(engine)
    write(engine, "k", 1, 2)
    wait_until_sealable(engine, 3)
    assert sealer.seal_once(T0) == 0
    assert sealer.tampered is not None and "does not open under the data key" in sealer.tampered

    with engine.begin() as conn:  # no active key at all over a signed trail
        conn.execute(signing_keys.delete().where(signing_keys.c.kid == "audit-insider"))
    fresh = AuditSealer(engine, cipher)
    assert fresh.seal_once(T0) == 0
    assert fresh.tampered is not None and "no active audit key" in fresh.tampered
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(signing_keys)
                            .where(signing_keys.c.use == "audit")).scalar_one() == 1  # no key was made
    assert unsealed(engine) == 1


# ---- 5. rows inserted with a chain column (review 123, finding 3) ----------------------------------------


def _forged(engine: sa.Engine, **chain: object) -> dict[str, object]:
    """An entry as the service writes it (on PostgreSQL with its writer's txid), the ``chain`` columns added."""
    row: dict[str, object] = {"kind": "k", "actor": {}, "subject": "forged", "data": {}, "at": T0, **chain}
    if engine.dialect.name == "postgresql":
        row["txid"] = audit_adapter.WRITER_TXID
    return row


_CHAIN_FILLED = [
    pytest.param({"hash": "0" * 64}, id="hash"),
    pytest.param({"prev_hash": GENESIS}, id="prev_hash"),
    pytest.param({"prev_hash": GENESIS, "hash": "0" * 64}, id="both-hashes"),
    pytest.param({"chain_seq": 99}, id="chain_seq"),
    pytest.param({"chain_seq": 3, "prev_hash": GENESIS, "hash": "0" * 64}, id="all-three"),
]


@pytest.mark.parametrize("chain", _CHAIN_FILLED)
def test_an_entry_inserted_with_a_chain_column_is_refused(
    engine: sa.Engine, cipher: DataCipher, chain: dict[str, object]
) -> None:
    """Migration 0021: only the sealer fills the chain columns, by UPDATE; an INSERT never does."""
    sealer = AuditSealer(engine, cipher)
    write(engine, "k", 2, 0)
    seal(sealer, engine, 2)
    with pytest.raises(sa.exc.IntegrityError, match="written unsealed"), engine.begin() as conn:
        conn.execute(audit_log.insert().values(**_forged(engine, **chain)))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one() == 2
    write(engine, "k", 1, 2)  # the service's own inserts go on, and are sealed
    seal(sealer, engine, 1)
    report = verify_trail(engine, public_keys(engine, cipher), now=T0 + timedelta(hours=1), max_unsealed_age=BOUND)
    assert report.intact and report.entries == 3 and sealer.tampered is None


@pytest.mark.postgres
@pytest.mark.parametrize("txid", [None, 1, 2**62], ids=["none", "older", "not-yet-run"])
def test_an_entry_inserted_with_another_txid_than_its_writers_is_refused(
    pg_engine: sa.Engine, txid: int | None
) -> None:
    """The sealer's horizon reads each row's writer txid: a row with none, or one of no transaction yet run,
    would never be sealed; the trigger takes only the writer's own (pg_current_xact_id())."""
    with pytest.raises(sa.exc.IntegrityError, match="not its writer's transaction id"), pg_engine.begin() as conn:
        conn.execute(audit_log.insert().values(kind="k", actor={}, subject="s", data={}, at=T0, txid=txid))
    with pg_engine.begin() as conn:  # as the service writes it, and in a savepoint (the top transaction's id)
        conn.execute(audit_log.insert().values(**_forged(pg_engine)))
        with conn.begin_nested():
            conn.execute(audit_log.insert().values(**_forged(pg_engine)))
    with pg_engine.connect() as conn:
        assert len(set(conn.execute(sa.select(audit_log.c.txid)).scalars())) == 1


_GOT_IN = [
    pytest.param({"hash": "0" * 64}, 2, "has a hash but no chain_seq", id="hash"),
    pytest.param({"prev_hash": GENESIS}, 2, "has a hash but no chain_seq", id="prev_hash"),
    pytest.param({"prev_hash": GENESIS, "hash": "0" * 64}, 2, "has a hash but no chain_seq", id="both-hashes"),
    pytest.param({"chain_seq": 99}, 1, "the last sealed entry is #99", id="chain_seq"),
]


@pytest.mark.parametrize(("chain", "left_unsealed", "why"), _GOT_IN)
def test_an_entry_that_got_in_with_a_chain_column_stops_the_sealer_once(
    engine: sa.Engine, cipher: DataCipher, caplog: pytest.LogCaptureFixture,
    chain: dict[str, object], left_unsealed: int, why: str
) -> None:
    """The review's demonstration: a row inserted past the trigger (dropped, as with DDL rights) with a hash
    and no chain_seq had every seal fail on migration 0015's trigger, every turn, with no alarm. Now the
    sealer says so once and stops, as for any other tampering."""
    stopped: list[str] = []
    sealer = AuditSealer(engine, cipher, on_tampered=stopped.append)
    write(engine, "k", 2, 0)
    seal(sealer, engine, 2)
    with as_insider(engine) as conn:
        conn.execute(audit_log.insert().values(**_forged(engine, **chain)))
    write(engine, "k", 1, 3)  # an entry after it
    wait_until_sealable(engine, 4)

    with caplog.at_level(logging.CRITICAL, logger="quaygate.audit"):
        for minute in (1, 2, 3):  # no DBAPIError from any turn; stopped at the first
            assert sealer.seal_once(T0 + timedelta(minutes=minute)) == 0
    assert sealer.tampered is not None and why in sealer.tampered
    assert stopped == [sealer.tampered]
    assert len([r for r in caplog.records if r.getMessage() == "audit.tampered"]) == 1
    assert unsealed(engine) == left_unsealed
    report = verify_trail(engine, public_keys(engine, cipher), now=T0 + timedelta(hours=1), max_unsealed_age=BOUND)
    assert not report.intact


def test_a_seal_the_triggers_refuse_stops_the_sealer_instead_of_failing_every_turn(
    engine: sa.Engine, cipher: DataCipher
) -> None:
    """A row sealed by someone else between the sealer's read and its UPDATE (under the sealer's lock no
    sealer of the service can): migration 0015's trigger refuses the seal. That is tampering, and the same
    batch would be refused at every turn."""
    stopped: list[str] = []
    sealer = AuditSealer(engine, cipher, on_tampered=stopped.append)
    write(engine, "k", 2, 0)
    seal(sealer, engine, 2)
    write(engine, "k", 2, 2)
    wait_until_sealable(engine, 4)

    def seal_one_first(conn: sa.Connection, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE AUDIT_LOG SET CHAIN_SEQ"):
            other = cursor.connection.cursor()  # the insider, in the same transaction: no lock to wait on
            other.execute("UPDATE audit_log SET chain_seq = 1000, prev_hash = 'x', hash = 'y'"
                          " WHERE id = (SELECT min(id) FROM audit_log WHERE chain_seq IS NULL)")
            other.close()

    sa.event.listen(engine, "before_cursor_execute", seal_one_first)
    try:
        assert sealer.seal_once(T0) == 0
        assert sealer.seal_once(T0) == 0
    finally:
        sa.event.remove(engine, "before_cursor_execute", seal_one_first)
    assert sealer.tampered is not None and "refused by the database" in sealer.tampered
    assert stopped == [sealer.tampered]
    assert unsealed(engine) == 2  # rolled back, the insider's seal with it


def test_the_background_sealer_raises_the_alarm_for_an_entry_that_got_in_sealed(
    engine: sa.Engine, cipher: DataCipher, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As the service runs it: the metric says sealing stopped, where it logged quaygate.worker.failed every
    second before."""
    write(engine, "k", 2, 0)
    with as_insider(engine) as conn:
        conn.execute(audit_log.insert().values(**_forged(engine, hash="0" * 64)))
    write(engine, "k", 1, 3)
    _run_workers_until_sealing_stops(engine, cipher, database_url, tmp_path, caplog)
    assert len([r for r in caplog.records if r.getMessage() == "audit.tampered"]) == 1


def test_0021_goes_down_and_up_on_sqlite(tmp_path: Path) -> None:
    """The trigger made and dropped on SQLite (tests/test_migrations.py runs every migration on PostgreSQL)."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    names = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name = 'audit_log_insert_unsealed'"
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql(names).all() == [("audit_log_insert_unsealed",)]
        downgrade(url, "0020")
        with engine.connect() as conn:
            assert conn.exec_driver_sql(names).all() == []
        upgrade(url)
        with engine.connect() as conn:
            assert conn.exec_driver_sql(names).all() == [("audit_log_insert_unsealed",)]
    finally:
        engine.dispose()


# ---- 6. rows that cannot be read or hashed (review 160, finding 1) ---------------------------------------

# What an ordinary INSERT can put in the trail past migration 0021 (chain columns NULL, the writer's txid)
# that no entry of the service holds: a time past year 9999 or 'infinity' (psycopg: "timestamp too large
# (after year 10K)"; SQLite: not a time it can parse), a number JSON reads back as inf (canonical_json
# refuses it). Every seal failed on it, every turn, and no alarm; verify died on the time with a traceback.
_UNREADABLE = [
    pytest.param({"at": "'infinity'"}, "cannot be read", id="at-infinity"),
    pytest.param({"at": "'10000-01-01 00:00:00'"}, "cannot be read", id="at-year-10000"),
    pytest.param({"data": "'{\"n\": 1" + "0" * 400 + ".5}'"}, "cannot be hashed", id="data-inf"),
]


def insert_raw(engine: sa.Engine, conn: sa.Connection | None = None, **values: str) -> int:
    """One entry by a plain INSERT (no SQLAlchemy type in the way), ``values`` as SQL literals; its id."""
    pg = engine.dialect.name == "postgresql"
    row = {"at": "'2025-03-01 08:00:00+00'" if pg else "'2025-03-01 08:00:00.000000'", "kind": "'k'",
           "actor": "'{}'", "subject": "'planted'", "data": "'{}'", **values}
    if pg:
        row["txid"] = "pg_current_xact_id()::text::bigint"
    sql = f"INSERT INTO audit_log ({', '.join(row)}) VALUES ({', '.join(row.values())})"
    with contextlib.ExitStack() as stack:
        c = conn if conn is not None else stack.enter_context(engine.begin())
        c.exec_driver_sql(sql)
        return int(c.execute(sa.select(sa.func.max(audit_log.c.id))).scalar_one())


@pytest.mark.parametrize(("bad", "why"), _UNREADABLE)
def test_a_row_that_cannot_be_read_or_hashed_stops_the_sealer_once_and_verify_names_it(
    engine: sa.Engine, cipher: DataCipher, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str], bad: dict[str, str], why: str
) -> None:
    """The review's proof: two entries sealed, the planted row, three more; three turns of the sealer."""
    stopped: list[str] = []
    sealer = AuditSealer(engine, cipher, on_tampered=stopped.append)
    write(engine, "k", 2, 0)
    seal(sealer, engine, 2)
    planted = insert_raw(engine, **bad)  # an ordinary INSERT: migration 0021 lets it in
    write(engine, "k", 3, 3)
    wait_until_sealable(engine, 6)

    with caplog.at_level(logging.CRITICAL, logger="quaygate.audit"):
        for minute in (1, 2, 3):  # no DataError nor ValueError from any turn; stopped at the first
            assert sealer.seal_once(T0 + timedelta(minutes=minute)) == 0
    assert sealer.tampered is not None and f"row {planted} of the trail {why}" in sealer.tampered
    assert stopped == [sealer.tampered]
    assert len([r for r in caplog.records if r.getMessage() == "audit.tampered"]) == 1
    assert unsealed(engine) == 4

    # verify names it, whichever part of it is bad, and says where the trail breaks; it does not raise.
    report = verify_trail(engine, public_keys(engine, cipher), now=T0 + timedelta(minutes=1), max_unsealed_age=BOUND)
    assert report.problem is not None and report.problem.row_id == planted and report.problem.chain_seq == 3
    assert report.entries == 2 and report.unsealed == 4 and not report.intact
    settings = settings_for(database_url, tmp_path, audit_seal_interval=0.05, audit_unsealed_max_age=10**8)
    assert cmd_verify(settings, None) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"audit trail BROKEN at entry 3: row {planted}, not sealed, {why}")
    assert "entries 1 to 2 verified before it; 4 entries not sealed yet" in out


@pytest.mark.parametrize(("bad", "why"), _UNREADABLE)
def test_a_sealed_entry_made_unreadable_is_named_by_the_sealer_and_by_verify(
    engine: sa.Engine, cipher: DataCipher, bad: dict[str, str], why: str
) -> None:
    """Past the triggers (as_insider): a sealed entry rewritten so that it cannot be read or hashed stops a
    sealer that begins (it checks the entries under the last checkpoint) and breaks verify there, named."""
    write(engine, "k", 3, 0)
    seal(AuditSealer(engine, cipher), engine, 3)
    with engine.connect() as conn:
        second = conn.execute(sa.select(audit_log.c.id).where(audit_log.c.chain_seq == 2)).scalar_one()
    with as_insider(engine) as conn:
        column, value = next(iter(bad.items()))
        conn.exec_driver_sql(f"UPDATE audit_log SET {column} = {value} WHERE id = {second}")
    write(engine, "k", 1, 3)  # read past the bad one: still counted
    fresh = AuditSealer(engine, cipher)
    assert fresh.seal_once(T0) == 0
    assert fresh.tampered is not None and f"row {second} of the trail {why}" in fresh.tampered
    report = verify_trail(engine, public_keys(engine, cipher))
    assert report.problem is not None and report.problem.row_id == second and report.problem.chain_seq == 2
    assert report.problem.message.startswith(f"entry 2 (row {second}) {why}")
    assert report.entries == 1 and report.unsealed == 1


def test_the_background_sealer_raises_the_alarm_for_a_row_that_cannot_be_read(
    engine: sa.Engine, cipher: DataCipher, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As the service runs it: the metric says sealing stopped, where quaygate.worker.failed was logged
    every turn before."""
    write(engine, "k", 2, 0)
    insert_raw(engine, at="'infinity'")
    write(engine, "k", 1, 3)
    _run_workers_until_sealing_stops(engine, cipher, database_url, tmp_path, caplog)
    assert len([r for r in caplog.records if r.getMessage() == "audit.tampered"]) == 1


def _run_workers_until_sealing_stops(engine: sa.Engine, cipher: DataCipher, database_url: str, tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """The service's background workers, run until the metric says sealing stopped and a few turns more,
    over a trail of four entries: none sealed, and quaygate.worker.failed never logged (it was, every turn,
    before the sealer stopped on what it cannot seal)."""
    wait_until_sealable(engine, 4)
    settings = settings_for(database_url, tmp_path, audit_seal_interval=0.05)
    metrics = Metrics()
    stopped = lambda: metrics.registry.get_sample_value("quaygate_audit_sealing_stopped")  # noqa: E731
    workers = BackgroundWorkers(Container(settings=settings, engine=engine, cache=make_cache(None), cipher=cipher,
                                          clock=SystemClock()), metrics=metrics)
    with caplog.at_level(logging.ERROR):
        workers.start()
        try:
            deadline = time.monotonic() + 10
            while stopped() != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)  # a few more turns of the loop
        finally:
            workers.stop()
    assert stopped() == 1 and unsealed(engine) == 4
    assert [r for r in caplog.records if r.getMessage() == "quaygate.worker.failed"
            and getattr(r, "fields", {}).get("worker") == "audit-sealer"] == []


# ---- 7. the command line prints no control character from the database (review 160, finding 2) -----------

# An insider's key id: on a terminal, verify's BROKEN line erased and "AUDIT TRAIL INTACT" shown, the rest
# hidden; a C1 CSI and a DEL too.
_FORGED_KID = "\x1b[2K\rAUDIT TRAIL INTACT\x1b[8m\x9b2K\x7f"
_ESCAPED_KID = "\\x1b[2K\\rAUDIT TRAIL INTACT\\x1b[8m\\x9b2K\\x7f"


def _no_control_characters(text: str) -> None:
    for line in text.split("\n"):
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in line), repr(line)


def test_the_cli_escapes_control_characters_from_the_database(
    engine: sa.Engine, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(database_url, tmp_path)
    assert cmd_export_key(settings) == 0
    write(engine, "k", 3, 0)
    wait_until_sealable(engine, 3)
    assert cmd_seal(settings) == 0
    capsys.readouterr()
    with engine.begin() as conn:  # plain INSERTs: a checkpoint past the end, an audit key of his own
        conn.execute(audit_checkpoints.insert().values(
            chain_seq=5, hash="0" * 64, key_id=_FORGED_KID, signature="AAAA", at=T0, prev_chain_seq=3,
            prev_hash="0" * 64))
        conn.execute(signing_keys.insert().values(
            kid=_FORGED_KID, alg="EdDSA", use="audit", status="retired", created_at=T0,
            public_jwk=AuditKey(_FORGED_KID, Ed25519PrivateKey.generate()).public_jwk,
            private_enc=DataCipher(os.urandom(32)).seal(b"\x00" * 32, b"x")))

    assert cmd_verify(settings, None) == 1
    verified = capsys.readouterr()
    assert verified.out.startswith(f"audit trail BROKEN at entry 5: checkpoint #5 has a signature that does not "
                                   f"verify under key {_ESCAPED_KID} ")
    assert cmd_seal(settings) == 1
    sealed = capsys.readouterr()
    assert f"is not signed by this service's audit key (key {_ESCAPED_KID})" in sealed.err
    assert cmd_export_key(settings) == 0
    exported = capsys.readouterr()
    assert f"left out key {_ESCAPED_KID}:" in exported.err
    for text in (verified.out, verified.err, sealed.out, sealed.err, exported.out, exported.err):
        _no_control_characters(text)


def test_printable_escapes_c0_del_c1_and_lone_surrogates_only() -> None:
    assert printable("key-1 é ✓ \\x1b") == "key-1 é ✓ \\x1b"
    assert printable("\x00\t\n\r\x1b\x7f\x80\x9f\xa0\ud800") == "\\x00\\t\\n\\r\\x1b\\x7f\\x80\\x9f\xa0\\ud800"

"""Review 132, finding 4: the audit key is handed over (``quaygate audit rotate-key``). Checkpoints signed
before verify under the old key, after under the new; the hand-over is an entry of the trail; and the old
key, should it leak, signs nothing that verifies past its retirement (an insider re-signing a cut trail)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag

from quaygate.audit_cli import cmd_rotate_key, cmd_verify
from quaygate.crypto import DataCipher
from quaygate.schema import audit_checkpoints, audit_log, signing_keys
from release_service.adapters.audit import AuditKey, AuditSealer, SqlAuditLog, rotate_audit_key, verify_trail
from release_service.domain.audit_chain import (
    GENESIS,
    KEY_ROTATED,
    Checkpoint,
    Entry,
    ProblemKind,
    link_hash,
    signed_message,
)

from .test_audit_tamper import settings_for, write
from .test_audit_trail import T0, as_insider, public_keys, seal_all, wait_until_sealable

CLI = {"client_id": "cli:tester"}


@pytest.fixture
def cipher() -> DataCipher:
    return DataCipher(bytes(range(32)))


def _seal(sealer: AuditSealer, engine: sa.Engine, expected: int) -> None:
    with engine.connect() as conn:
        written = int(conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one())
    wait_until_sealable(engine, written)
    assert seal_all(sealer, expected) == expected


def _old_key(engine: sa.Engine, cipher: DataCipher) -> AuditKey:
    with engine.begin() as conn:
        return AuditKey.load_or_create(conn, cipher, T0)


def _checkpoints(engine: sa.Engine) -> list[Checkpoint]:
    with engine.connect() as conn:
        return [Checkpoint(*r) for r in conn.execute(sa.select(
            audit_checkpoints.c.chain_seq, audit_checkpoints.c.hash, audit_checkpoints.c.key_id,
            audit_checkpoints.c.signature, audit_checkpoints.c.at, audit_checkpoints.c.prev_chain_seq,
            audit_checkpoints.c.prev_hash).order_by(audit_checkpoints.c.chain_seq))]


def _handed_over(engine: sa.Engine, cipher: DataCipher) -> tuple[AuditKey, str, AuditSealer]:
    """Entries 1-5 under the old key's checkpoint #5, the hand-over (#6) and two more (#7, #8) under the
    new key's checkpoint #8. The old key as its holder had it (to play the insider it leaked to)."""
    sealer = AuditSealer(engine, cipher)
    write(engine, "release.issued", 5, 0)
    _seal(sealer, engine, 5)
    old = _old_key(engine, cipher)
    old_kid, new_kid, through = rotate_audit_key(engine, cipher, T0 + timedelta(minutes=1), actor=CLI)
    assert (old_kid, through) == (old.kid, 5) and new_kid != old_kid
    write(engine, "release.issued", 2, 10)
    _seal(sealer, engine, 3)
    return old, new_kid, sealer


def test_after_a_hand_over_each_checkpoint_verifies_under_its_own_key(engine: sa.Engine, cipher: DataCipher,
                                                                      database_url: str, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    old, new_kid, _ = _handed_over(engine, cipher)
    assert [(c.chain_seq, c.key_id) for c in _checkpoints(engine)] == [(5, old.kid), (8, new_kid)]
    with engine.connect() as conn:
        entry = conn.execute(sa.select(audit_log).where(audit_log.c.kind == KEY_ROTATED)).one()
        row = conn.execute(sa.select(signing_keys).where(signing_keys.c.kid == old.kid)).one()
    assert entry.chain_seq == 6 and entry.actor == CLI and entry.subject == new_kid
    assert entry.data == {"old_key_id": old.kid, "new_key_id": new_kid, "old_key_signs_through": 5}
    assert row.status == "retired"
    with pytest.raises(InvalidTag):  # its private half is erased: its row holds the public half only
        cipher.open(row.private_enc, old.kid.encode())

    keys = public_keys(engine, cipher)
    assert [(k["kid"], k.get("quaygate_signs_through")) for k in keys] == [(old.kid, 5), (new_kid, None)]
    for jwks in (keys, None):  # the authority's copy, and the keys stored in the database
        report = verify_trail(engine, jwks)
        assert report.intact and (report.entries, report.checkpoints) == (8, 2)

    # Tampering after the hand-over is still found.
    with as_insider(engine) as conn:
        conn.execute(audit_log.update().where(audit_log.c.chain_seq == 7).values(subject="someone-else"))
    report = verify_trail(engine, keys)
    assert report.problem is not None and report.problem.kind is ProblemKind.EDITED and report.problem.chain_seq == 7

    # On the command line: a second hand-over, then verify with the exported key set.
    settings = settings_for(database_url, tmp_path)
    assert cmd_rotate_key(settings, CLI) == 1  # another data key: the active key does not open as ours
    assert "refused" in capsys.readouterr().err


def test_the_retired_key_signs_nothing_past_the_hand_over(engine: sa.Engine, cipher: DataCipher) -> None:
    """The insider holds the old key (it leaked): he replaces the new key's checkpoint #8 by one of his."""
    old, _, _ = _handed_over(engine, cipher)
    keys = public_keys(engine, cipher)
    eight = _checkpoints(engine)[1]
    forged = replace(eight, key_id=old.kid, signature="")
    forged = replace(forged, signature=old.sign(signed_message(forged)))
    with as_insider(engine) as conn:
        conn.execute(audit_checkpoints.delete().where(audit_checkpoints.c.chain_seq == 8))
        conn.execute(audit_checkpoints.insert().values(
            chain_seq=8, hash=forged.hash, key_id=old.kid, signature=forged.signature, at=forged.at,
            prev_chain_seq=forged.prev_chain_seq, prev_hash=forged.prev_hash))
    for jwks in (keys, None):
        report = verify_trail(engine, jwks)
        assert report.problem is not None and report.problem.kind is ProblemKind.BAD_SIGNATURE
        assert report.problem.chain_seq == 8 and "retired after entry 5" in report.problem.message
    fresh = AuditSealer(engine, cipher)  # a sealer that begins finds it too, and signs nothing over it
    write(engine, "release.issued", 1, 20)
    wait_until_sealable(engine, 9)
    assert fresh.seal_once(T0 + timedelta(minutes=5)) == 0
    assert fresh.tampered is not None and "checkpoint, #8, is not signed" in fresh.tampered


def test_a_trail_cut_before_the_hand_over_and_resigned_with_the_old_key_is_refused(
    engine: sa.Engine, cipher: DataCipher, tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """He cuts the trail back to entry 5, hand-over and all, and seals a tail of his own with the old key:
    the authority's key set (exported after the hand-over) says the old key vouches for nothing past 5."""
    old, _, _ = _handed_over(engine, cipher)
    keys = public_keys(engine, cipher)
    five = _checkpoints(engine)[0]
    with as_insider(engine) as conn:
        conn.execute(audit_checkpoints.delete().where(audit_checkpoints.c.chain_seq > 5))
        conn.execute(audit_log.delete().where(audit_log.c.chain_seq > 5))
        conn.execute(signing_keys.delete().where(signing_keys.c.status == "active", signing_keys.c.use == "audit"))
        conn.execute(signing_keys.update().where(signing_keys.c.kid == old.kid)
                     .values(status="active"))  # his public_jwk edits aside: the export he cannot recall
    write(engine, "release.issued", 2, 30)
    _insider_seals(engine, old, five)
    report = verify_trail(engine, keys)
    assert report.problem is not None and report.problem.kind is ProblemKind.BAD_SIGNATURE
    assert report.problem.chain_seq == 7 and "retired after entry 5" in report.problem.message
    key_file = tmp_path / "keys.json"
    key_file.write_text(json.dumps({"keys": keys}))
    assert cmd_verify(settings_for(database_url, tmp_path), str(key_file)) == 1
    assert "audit trail BROKEN at entry 7" in capsys.readouterr().out


def _insider_seals(engine: sa.Engine, key: AuditKey, after: Checkpoint, upto: int | None = None) -> None:
    """Chain the unsealed rows after ``after`` (up to entry ``upto``) and sign a checkpoint of them with ``key``."""
    seq, prev = after.chain_seq, after.hash
    with as_insider(engine) as conn:
        rows = conn.execute(sa.select(audit_log.c.id, audit_log.c.at, audit_log.c.kind, audit_log.c.actor,
                                      audit_log.c.subject, audit_log.c.data)
                            .where(audit_log.c.chain_seq.is_(None)).order_by(audit_log.c.id)
                            .limit(None if upto is None else upto - after.chain_seq)).all()
        for row in rows:
            seq += 1
            digest = link_hash(prev, seq, Entry(*row))
            conn.execute(audit_log.update().where(audit_log.c.id == row.id)
                         .values(chain_seq=seq, prev_hash=prev, hash=digest))
            prev = digest
        cp = Checkpoint(seq, prev, key.kid, "", T0 + timedelta(minutes=9), after.chain_seq, after.hash)
        cp = replace(cp, signature=key.sign(signed_message(cp)))
        conn.execute(audit_checkpoints.insert().values(
            chain_seq=cp.chain_seq, hash=cp.hash, key_id=cp.key_id, signature=cp.signature, at=cp.at,
            prev_chain_seq=cp.prev_chain_seq, prev_hash=cp.prev_hash))


def test_rotate_key_on_the_command_line(engine: sa.Engine, database_url: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(database_url, tmp_path)
    cipher = settings.data_cipher()
    assert cmd_rotate_key(settings, CLI) == 2  # no key yet: nothing to hand over
    assert "no audit key yet" in capsys.readouterr().err
    sealer = AuditSealer(engine, cipher)
    write(engine, "release.issued", 2, 0)
    _seal(sealer, engine, 2)
    assert cmd_rotate_key(settings, CLI) == 0
    out = capsys.readouterr().out
    assert "vouches for entries up to 2" in out and "quaygate audit export-key" in out
    _seal(sealer, engine, 1)  # the hand-over, signed by the new key
    assert cmd_rotate_key(settings, CLI) == 0  # and again: three keys, each bounded but the last
    _seal(sealer, engine, 1)
    keys = public_keys(engine, cipher)
    assert [k.get("quaygate_signs_through") for k in keys] == [2, 3, None]
    assert verify_trail(engine, keys).intact and verify_trail(engine).intact


def _insert(engine: sa.Engine, kind: str, data: dict[str, object], second: int) -> int:
    """A row as an insider who can only INSERT writes it (the triggers allow that: chain columns empty)."""
    with engine.begin() as conn:
        SqlAuditLog(conn).append(kind, actor={"person_id": "insider"}, subject=None, data=data,
                                 at=T0 + timedelta(seconds=second))
        return int(conn.execute(sa.select(sa.func.max(audit_log.c.id))).scalar_one())


@pytest.mark.parametrize("fake", ["itself", "a_made_up_key"])
def test_a_hand_over_no_rotation_wrote_stops_the_sealer_and_breaks_no_verify(engine: sa.Engine, cipher: DataCipher,
                                                                            fake: str) -> None:
    """Review 135, finding 2: an insider with no key inserts an audit.key_rotated entry naming the active key
    as the old one, bound 0. The sealer chained and signed it, and from then on every verify said BROKEN
    ('signed by key X, which was retired after entry 0'), for good. Now the sealer compares it with the old
    key's sealed retirement record (there is none: the key is active) and raises the alarm naming the row;
    and a hand-over entry counts only when the checkpoint covering it is signed by its new key, another
    one (a sealer that took it anyway, before the mend, signed it with the old)."""
    sealer = AuditSealer(engine, cipher)
    write(engine, "release.issued", 3, 0)
    _seal(sealer, engine, 3)
    active = _old_key(engine, cipher)
    new_kid = active.kid if fake == "itself" else "audit-" + "0" * 32
    row = _insert(engine, KEY_ROTATED, {"old_key_id": active.kid, "new_key_id": new_kid,
                                        "old_key_signs_through": 0}, 10)
    wait_until_sealable(engine, 4)
    assert sealer.seal_once(T0 + timedelta(minutes=1)) == 0
    assert sealer.tampered is not None and f"row {row} of the trail is an audit key hand-over" in sealer.tampered
    # Sealed anyway (by a sealer from before the mend): the trail still verifies, and sealing goes on.
    _insider_seals(engine, active, _checkpoints(engine)[0])
    write(engine, "release.issued", 2, 20)
    _seal(AuditSealer(engine, cipher), engine, 2)
    assert [(c.chain_seq, c.key_id) for c in _checkpoints(engine)] == [(3, active.kid), (4, active.kid),
                                                                       (6, active.kid)]
    for jwks in (public_keys(engine, cipher), None):
        report = verify_trail(engine, jwks)
        assert report.problem is None and (report.entries, report.checkpoints) == (6, 3), report.problem


def test_an_old_key_is_bounded_by_its_first_hand_over_not_the_lowest() -> None:
    """Review 135, finding 2: a second hand-over entry of the same old key (an insider's copy with bound 0,
    chained and signed like the first) took the lowest bound, and the report named the old key's own earlier
    checkpoint a retired key's signature: here the witnessed checkpoint #1, which the trail holds otherwise,
    is found as a rewrite, not as 'retired after entry 0'."""
    from release_service.domain.audit_chain import verify_chain

    def entry(seq: int, prev: str, kind: str, data: dict[str, object]) -> Entry:
        e = Entry(seq, T0, kind, {"cli": "x"}, None, data)
        return replace(e, chain_seq=seq, prev_hash=prev, hash=link_hash(prev, seq, e))

    e1 = entry(1, GENESIS, "release.issued", {})
    e2 = entry(2, e1.hash or "", KEY_ROTATED, {"old_key_id": "A", "new_key_id": "B", "old_key_signs_through": 1})
    e3 = entry(3, e2.hash or "", KEY_ROTATED, {"old_key_id": "A", "new_key_id": "B", "old_key_signs_through": 0})
    one = Checkpoint(1, e1.hash or "", "A", "s", T0, 0, GENESIS)
    three = Checkpoint(3, e3.hash or "", "B", "s", T0, 1, e1.hash)
    witnessed = replace(one, hash="f" * 64, signature="t")  # the witness holds another checkpoint #1
    report = verify_chain([e1, e2, e3], [one, three], lambda kid, message, signature: True, witnessed=[witnessed])
    assert report.problem is not None and report.problem.kind is ProblemKind.UNWITNESSED, report.problem


@pytest.mark.parametrize("signed_at", [5, 4])
def test_the_retired_key_cannot_rewrite_what_it_vouched_for(engine: sa.Engine, cipher: DataCipher,
                                                            signed_at: int) -> None:
    """Review 135, finding 3: the insider holding the retired (leaked) key edits entry 3, chains entries 1-5
    again and signs a checkpoint of them with the old key, within its bound (#5, or #4 with entry 5 left to
    the sealer); deletes what followed and writes the hand-over and the later entries back as plain rows. A
    fresh sealer took his checkpoint and signed the rest with the new key, and verify with the key set
    exported after the hand-over said intact. Now the retirement record and the exported key pin the hash of
    entry 5 (quaygate_signs_through_hash): verify finds entry 5 changed (or missing), the sealer stops."""
    old, _, _ = _handed_over(engine, cipher)
    keys = public_keys(engine, cipher)
    five = _checkpoints(engine)[0]
    assert keys[0]["quaygate_signs_through_hash"] == five.hash and "quaygate_signs_through_hash" not in keys[1]
    columns = (audit_log.c.kind, audit_log.c.actor, audit_log.c.subject, audit_log.c.data, audit_log.c.at)
    with as_insider(engine) as conn:
        later = conn.execute(sa.select(*columns).where(audit_log.c.chain_seq > 5).order_by(audit_log.c.chain_seq)
                             ).all()
        conn.execute(audit_checkpoints.delete())
        conn.execute(audit_log.delete().where(audit_log.c.chain_seq > 5))
        conn.execute(audit_log.update().values(chain_seq=None, prev_hash=None, hash=None))
        conn.execute(audit_log.update().where(audit_log.c.subject == "s2").values(subject="someone-else"))
    _insider_seals(engine, old, Checkpoint(0, GENESIS, "", "", T0), upto=signed_at)
    with engine.begin() as conn:  # (with #4, entry 5 stays unsealed, for the sealer to chain)
        SqlAuditLog(conn).append_many([(r.kind, r.actor, r.subject, r.data, r.at) for r in later])
    for jwks in (keys, None):
        report = verify_trail(engine, jwks)
        assert report.problem is not None, report
        if signed_at == 5:
            assert report.problem.kind is ProblemKind.CHECKPOINT_MISMATCH and report.problem.chain_seq == 5
            assert "retired" in report.problem.message
        else:
            assert report.problem.kind is ProblemKind.MISSING
            assert "vouched for entries up to 5" in report.problem.message
    fresh = AuditSealer(engine, cipher)
    wait_until_sealable(engine, 8)
    assert fresh.seal_once(T0 + timedelta(minutes=5)) == 0
    assert fresh.tampered is not None and f"the last checkpoint, #{signed_at}" in fresh.tampered

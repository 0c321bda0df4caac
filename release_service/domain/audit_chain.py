"""The audit trail's hash chain and its verification, in the standard library only.

This module is the specification an authority reimplements to check the trail by itself:

    canonical(obj) = JSON, keys sorted, separators "," and ":", non-ASCII kept, UTF-8 encoded
    payload(e)     = {"chain_seq", "id", "at", "kind", "actor", "subject", "data"} of the entry,
                     ``at`` as ISO-8601 UTC with microseconds: "2024-05-01T12:00:00.000000Z"
    hash(e)        = hex(SHA-256(ascii(prev_hash) || canonical(payload(e))))
    prev_hash(1)   = 64 "0"s; prev_hash(n) = hash(n - 1)

A checkpoint signs ``CHECKPOINT_DOMAIN || canonical({"at", "chain_seq", "hash", "key_id"})`` with
Ed25519 (RFC 8032); its ``hash`` is the hash of entry ``chain_seq``. Numbers in ``data`` are written
as Python's json writes them (integral floats keep their ".0").

An edit changes an entry's hash; a deletion leaves a gap in ``chain_seq``; a reordering or an
insertion breaks a ``prev_hash`` link; rewriting the whole tail consistently is caught by the next
signed checkpoint, which the writer of the rows cannot forge without the private key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

GENESIS = "0" * 64
CHECKPOINT_DOMAIN = b"quaygate.audit.checkpoint.v1\n"


def canonical_json(value: Any) -> bytes:
    # NaN and Infinity are not JSON: refusing them keeps the encoding reproducible elsewhere.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def iso_utc(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("audit times must be aware")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Entry:
    """One audit row as stored; ``chain_seq``, ``prev_hash`` and ``hash`` are None until sealed."""

    id: int
    at: datetime
    kind: str
    actor: Any
    subject: str | None
    data: Any
    chain_seq: int | None = None
    prev_hash: str | None = None
    hash: str | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    chain_seq: int
    hash: str
    key_id: str
    signature: str  # base64url, no padding
    at: datetime


def link_hash(prev_hash: str, chain_seq: int, entry: Entry) -> str:
    payload = {
        "chain_seq": chain_seq,
        "id": entry.id,
        "at": iso_utc(entry.at),
        "kind": entry.kind,
        "actor": entry.actor,
        "subject": entry.subject,
        "data": entry.data,
    }
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(payload)).hexdigest()


def checkpoint_message(chain_seq: int, hash_: str, key_id: str, at: datetime) -> bytes:
    body = {"at": iso_utc(at), "chain_seq": chain_seq, "hash": hash_, "key_id": key_id}
    return CHECKPOINT_DOMAIN + canonical_json(body)


class ProblemKind(StrEnum):
    MISSING = "missing"  # a deletion
    EDITED = "edited"  # content no longer matches its hash
    MISLINKED = "mislinked"  # prev_hash is not the previous entry's hash: reordering or insertion
    BAD_SIGNATURE = "bad_signature"
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"  # a validly signed checkpoint disagrees with the chain
    UNCOVERED = "uncovered"  # sealed entries no checkpoint vouches for: the sealer always writes one


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    chain_seq: int  # the entry where the trail breaks
    message: str
    row_id: int | None = None


@dataclass(frozen=True, slots=True)
class Report:
    entries: int  # sealed entries checked before the first problem (all of them when intact)
    checkpoints: int  # checkpoints whose signature and hash were checked
    unsealed: int
    last_checkpoint: Checkpoint | None
    problem: Problem | None

    @property
    def intact(self) -> bool:
        return self.problem is None


VerifySignature = Callable[[str, bytes, str], bool]
"""(key_id, message, signature base64url) -> whether the signature is good under that key."""


class _Walk:
    """State of one pass over the chain; ``step`` returns the first problem it meets, if any."""

    def __init__(self, checkpoints: Iterable[Checkpoint], verify_signature: VerifySignature) -> None:
        self.pending = sorted(checkpoints, key=lambda c: c.chain_seq, reverse=True)  # pop() = lowest
        self.verify_signature = verify_signature
        self.expected = 1
        self.prev = GENESIS
        self.checked_checkpoints = 0
        self.last_checkpoint: Checkpoint | None = None

    def step(self, e: Entry, seq: int) -> Problem | None:
        if seq > self.expected:
            gap = f"entry {self.expected} is missing" if seq == self.expected + 1 else (
                f"entries {self.expected} to {seq - 1} are missing")
            return Problem(ProblemKind.MISSING, self.expected, f"{gap} (deleted from the trail)")
        if seq < self.expected:  # the database's unique index forbids it; an exported copy may not
            return Problem(ProblemKind.MISLINKED, seq,
                           f"entry {seq} (row {e.id}) appears twice or out of order", e.id)
        if e.prev_hash != self.prev:
            return Problem(ProblemKind.MISLINKED, seq, (
                f"entry {seq} (row {e.id}) does not follow entry {seq - 1}: its prev_hash is not the hash "
                "before it (entries reordered, inserted or relinked)"), e.id)
        if e.hash != link_hash(e.prev_hash, seq, e):
            return Problem(ProblemKind.EDITED, seq, (
                f"entry {seq} (row {e.id}) was altered: its content no longer matches its hash"), e.id)
        while self.pending and self.pending[-1].chain_seq <= seq:
            problem = self._checkpoint(self.pending.pop(), e)
            if problem is not None:
                return problem
        self.prev = e.hash
        self.expected = seq + 1
        return None

    def _checkpoint(self, cp: Checkpoint, e: Entry) -> Problem | None:
        seq = cp.chain_seq
        message = checkpoint_message(seq, cp.hash, cp.key_id, cp.at)
        if not self.verify_signature(cp.key_id, message, cp.signature):
            return Problem(ProblemKind.BAD_SIGNATURE, seq, (
                f"checkpoint #{seq} has a signature that does not verify under key {cp.key_id} "
                "(forged checkpoint, or not the trail's public key)"))
        if seq != e.chain_seq or cp.hash != e.hash:
            return Problem(ProblemKind.CHECKPOINT_MISMATCH, seq, (
                f"entry {seq} differs from what signed checkpoint #{seq} vouches for "
                "(the chain was rewritten up to here)"), e.id if seq == e.chain_seq else None)
        self.checked_checkpoints += 1
        self.last_checkpoint = cp
        return None

    def finish(self) -> Problem | None:
        last = self.expected - 1
        if self.pending:
            # Checkpoints beyond the end vouch for entries that are gone: the tail was cut off.
            cp = self.pending[0]
            if self.verify_signature(cp.key_id, checkpoint_message(cp.chain_seq, cp.hash, cp.key_id, cp.at),
                                     cp.signature):
                return Problem(ProblemKind.MISSING, self.expected, (
                    f"entries {self.expected} to {cp.chain_seq} are missing: signed checkpoint "
                    f"#{cp.chain_seq} vouches for them (the end of the trail was deleted)"))
            return Problem(ProblemKind.BAD_SIGNATURE, cp.chain_seq, (
                f"checkpoint #{cp.chain_seq} has a signature that does not verify under key {cp.key_id} "
                "and refers past the end of the trail"))
        covered = self.last_checkpoint.chain_seq if self.last_checkpoint else 0
        if last > covered:
            return Problem(ProblemKind.UNCOVERED, covered + 1, (
                f"entries {covered + 1} to {last} are sealed but no signed checkpoint covers them "
                "(the sealer writes one with every seal: a checkpoint was removed)"))
        return None


def verify_chain(rows: Iterable[Entry], checkpoints: Iterable[Checkpoint],
                 verify_signature: VerifySignature) -> Report:
    """Walk ``rows`` in ``chain_seq`` order (unsealed rows anywhere) and report the first problem."""
    walk = _Walk(checkpoints, verify_signature)
    unsealed = 0
    problem: Problem | None = None
    for e in rows:
        if e.chain_seq is None:
            unsealed += 1
            continue
        if problem is not None:
            continue  # keep counting unsealed rows only
        problem = walk.step(e, e.chain_seq)
    if problem is None:
        problem = walk.finish()
    entries = walk.expected - 1
    return Report(entries, walk.checked_checkpoints, unsealed, walk.last_checkpoint, problem)

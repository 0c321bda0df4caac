"""The audit trail's hash chain and its verification, in the standard library only.

This module is the specification an authority reimplements to check the trail by itself:

    canonical(obj) = JSON, keys sorted, separators "," and ":", non-ASCII kept, UTF-8 encoded
    payload(e)     = {"chain_seq", "id", "at", "kind", "actor", "subject", "data"} of the entry,
                     ``at`` as ISO-8601 UTC with microseconds: "2024-05-01T12:00:00.000000Z"
    hash(e)        = hex(SHA-256(ascii(prev_hash) || canonical(payload(e))))
    prev_hash(1)   = 64 "0"s; prev_hash(n) = hash(n - 1)

A checkpoint signs, with Ed25519 (RFC 8032), its ``hash``, the hash of entry ``chain_seq``, and
(version 2) the checkpoint before it, so that checkpoints form a chain of their own:

    v2: "quaygate.audit.checkpoint.v2\\n" || canonical({"at", "chain_seq", "hash", "key_id",
                                                       "prev_chain_seq", "prev_hash"})
    v1: "quaygate.audit.checkpoint.v1\\n" || canonical({"at", "chain_seq", "hash", "key_id"})

``prev_chain_seq`` and ``prev_hash`` are those of the checkpoint before (0 and 64 "0"s for the first);
a checkpoint stored without them is a version 1 checkpoint, written before version 2 existed. Numbers
in ``data`` are written as Python's json writes them (integral floats keep their ".0").

An edit changes an entry's hash; a deletion leaves a gap in ``chain_seq``; a reordering or an
insertion breaks a ``prev_hash`` link; rewriting the whole tail consistently is caught by the next
signed checkpoint, which the writer of the rows cannot forge without the private key; a deleted
checkpoint breaks the next one's ``prev`` link. What no database check can see, cutting the trail
back to an earlier checkpoint, or cutting it back and having it sealed again, is caught by a witness:
the checkpoints as they were signed, kept outside the database (``witness_record``, one JSON line
each), every one of which must still be in the trail, which must reach the last of them.

An entry that is not sealed is vouched for by nothing: one that should long have been sealed
(``SealingBound``) makes the trail not intact. A row that cannot be read or hashed (a time past year
9999, a number JSON reads back as infinite: ``Unreadable``, ``UNHASHABLE``) is no entry the service
writes, and the sealer can seal neither it nor anything after it: the trail breaks there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from .storable import UNPRINTABLE

GENESIS = "0" * 64
CHECKPOINT_DOMAIN = b"quaygate.audit.checkpoint.v1\n"
CHECKPOINT_DOMAIN_V2 = b"quaygate.audit.checkpoint.v2\n"
HELD_SHOWN = 20  # unsealed rows named in a report; the rest are counted


def canonical_json(value: Any) -> bytes:
    # NaN and Infinity are not JSON: refusing them keeps the encoding reproducible elsewhere.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")




def printable(text: str) -> str:
    """``text`` from the database with every control character (C0, DEL, C1) and lone surrogate written as
    its Python escape (``\\x1b``, ``\\r``, ``\\ud800``), for a terminal or a report: a key id an insider
    wrote with ``ESC [2K CR`` erased verify's BROKEN line and showed another (review 160, finding 2). Other
    text is unchanged, so escaping twice changes nothing."""
    return UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


# What hashing a row the service never writes raises: canonical_json's ValueError for inf or NaN (a JSON
# number past a float's range reads back as inf), iso_utc's for a naive time, RecursionError for JSON
# nested past the interpreter's limit, TypeError for a blob where text belongs (review 160, finding 1).
UNHASHABLE: tuple[type[Exception], ...] = (ValueError, OverflowError, RecursionError, TypeError)
REASON_SHOWN = 200  # characters of a failure's text in a problem: it may quote the stored value


def failure_text(exc: BaseException) -> str:
    """Why a row could not be read or hashed, in one short printable line (it may quote the value)."""
    lines = str(exc).splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return printable(text if len(text) <= REASON_SHOWN else text[:REASON_SHOWN] + "...")


def iso_utc(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("audit times must be aware")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Entry:
    """One audit row as stored; ``chain_seq``, ``prev_hash`` and ``hash`` are None until sealed.

    ``txid`` is the writer's transaction id on PostgreSQL (the sealer's horizon), outside the hash."""

    id: int
    at: datetime
    kind: str
    actor: Any
    subject: str | None
    data: Any
    chain_seq: int | None = None
    prev_hash: str | None = None
    hash: str | None = None
    txid: int | None = None


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A row the store could not read as an entry (a time past year 9999 or 'infinity', JSON nested too
    deep): no entry the service writes, named by its id (and its place in the chain, if sealed)."""

    id: int
    chain_seq: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    chain_seq: int
    hash: str
    key_id: str
    signature: str  # base64url, no padding
    at: datetime
    # Version 2: the checkpoint before this one (0 and GENESIS for the first); None in version 1.
    prev_chain_seq: int | None = None
    prev_hash: str | None = None

    @property
    def version(self) -> int:
        return 1 if self.prev_chain_seq is None else 2

    def same_as(self, other: Checkpoint) -> bool:
        """The same signed checkpoint (as a witness and the database each hold it)."""
        return (self.chain_seq, self.hash, self.key_id, self.signature) == (
            other.chain_seq, other.hash, other.key_id, other.signature)


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


def checkpoint_message(chain_seq: int, hash_: str, key_id: str, at: datetime,
                       prev: tuple[int, str] | None = None) -> bytes:
    """What a checkpoint signs: version 2 with ``prev`` (the checkpoint before it), else version 1."""
    body: dict[str, Any] = {"at": iso_utc(at), "chain_seq": chain_seq, "hash": hash_, "key_id": key_id}
    if prev is None:
        return CHECKPOINT_DOMAIN + canonical_json(body)
    body["prev_chain_seq"], body["prev_hash"] = prev
    return CHECKPOINT_DOMAIN_V2 + canonical_json(body)


def signed_message(cp: Checkpoint) -> bytes:
    prev = None if cp.prev_chain_seq is None else (cp.prev_chain_seq, cp.prev_hash or "")
    return checkpoint_message(cp.chain_seq, cp.hash, cp.key_id, cp.at, prev)


# ---- the witness: checkpoints kept outside the database --------------------------------------------


def witness_record(cp: Checkpoint) -> dict[str, Any]:
    """One line of a witness file (canonical JSON): everything needed to check the signature again."""
    record: dict[str, Any] = {"chain_seq": cp.chain_seq, "hash": cp.hash, "key_id": cp.key_id,
                              "signature": cp.signature, "at": iso_utc(cp.at)}
    if cp.prev_chain_seq is not None:
        record["prev_chain_seq"], record["prev_hash"] = cp.prev_chain_seq, cp.prev_hash
    return record


def witnessed_checkpoint(record: Any) -> Checkpoint:
    """The checkpoint of one witness line; ValueError when it is not one."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    try:
        seq, hash_, kid, sig = record["chain_seq"], record["hash"], record["key_id"], record["signature"]
        at = datetime.strptime(record["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"missing or wrong field {exc}") from None
    prev_seq, prev_hash = record.get("prev_chain_seq"), record.get("prev_hash")
    if (type(seq) is not int or seq < 1 or not all(isinstance(v, str) for v in (hash_, kid, sig))
            or (prev_seq is not None and (type(prev_seq) is not int or not isinstance(prev_hash, str)))):
        raise ValueError("chain_seq, hash, key_id, signature or prev fields of the wrong type")
    return Checkpoint(seq, hash_, kid, sig, at, prev_seq, prev_hash if prev_seq is not None else None)


# ---- verification ----------------------------------------------------------------------------------


class ProblemKind(StrEnum):
    MISSING = "missing"  # a deletion
    EDITED = "edited"  # content no longer matches its hash
    MISLINKED = "mislinked"  # prev_hash is not the previous entry's hash: reordering or insertion
    BAD_SIGNATURE = "bad_signature"
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"  # a validly signed checkpoint disagrees with the chain
    CHECKPOINT_UNLINKED = "checkpoint_unlinked"  # a v2 checkpoint does not follow the checkpoint before it
    UNCOVERED = "uncovered"  # sealed entries no checkpoint vouches for: the sealer always writes one
    UNWITNESSED = "unwitnessed"  # a checkpoint the witness holds is gone from the trail, or differs
    BAD_WITNESS = "bad_witness"  # a witness line whose signature does not verify
    UNREADABLE = "unreadable"  # a row that cannot be read or hashed: no entry the service writes


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    chain_seq: int  # the entry where the trail breaks
    message: str
    row_id: int | None = None


@dataclass(frozen=True, slots=True)
class Held:
    """An unsealed row that should have been sealed: nothing vouches for it, so it may have been edited."""

    row_id: int
    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class SealingBound:
    """When an unsealed row counts as held back rather than waiting its turn.

    ``max_age``: the sealer seals a row about a second after its writer commits (release_service/
    adapters/audit.py); one still unsealed long after its time was held back (a write transaction
    left open on purpose, the sealer stopped), and may have been edited meanwhile. None: no clock.
    ``txid_required`` (PostgreSQL): the sealer seals only rows whose writer's txid is below its
    snapshot's xmin, so a row without a txid, or ``txid_limit`` (the verifying snapshot's xmax) or
    above, which no transaction that has run can have written, would never be sealed at all.
    """

    now: datetime
    max_age: timedelta | None = None
    txid_required: bool = False
    txid_limit: int | None = None

    def why_held(self, e: Entry) -> str | None:
        if self.txid_required and e.txid is None:
            return "it has no writer txid, so the sealer would never seal it"
        if self.txid_limit is not None and e.txid is not None and e.txid >= self.txid_limit:
            return f"its writer txid {e.txid} is of no transaction that has run, so the sealer would never seal it"
        if self.max_age is not None and self.now - e.at > self.max_age:
            return f"it is still not sealed {age_text(self.now - e.at)} after its time"
        return None


def age_text(age: timedelta) -> str:
    seconds = max(0, int(age.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


@dataclass(frozen=True, slots=True)
class Report:
    entries: int  # sealed entries checked before the first problem (all of them when intact)
    checkpoints: int  # checkpoints whose signature and hash were checked
    unsealed: int
    last_checkpoint: Checkpoint | None
    problem: Problem | None
    held: tuple[Held, ...] = ()  # the first HELD_SHOWN unsealed rows that should have been sealed
    held_count: int = 0
    witnessed: int = 0  # checkpoints of the witness found in the trail as they were signed

    @property
    def intact(self) -> bool:
        return self.problem is None and self.held_count == 0

    def keeping_held(self, still_unsealed: set[int]) -> Report:
        """This report with only the held rows that are still unsealed (looked at again a little later)."""
        held = tuple(h for h in self.held if h.row_id in still_unsealed)
        return replace(self, held=held, held_count=self.held_count - (len(self.held) - len(held)))


VerifySignature = Callable[[str, bytes, str], bool]
"""(key_id, message, signature base64url) -> whether the signature is good under that key."""

# The audit key's hand-over (``quaygate audit rotate-key``) is an entry of the trail: its ``data`` names
# the old key (``old_key_id``), the new one (``new_key_id``) and the last entry the old key vouched for
# (``old_key_signs_through``). From there on the old key signs nothing: a checkpoint it signed past that
# entry is refused, as is one signed past the bound an authority was given with the key (the exported
# JWK's ``quaygate_signs_through``), so that a retired key that leaked cannot re-sign a cut trail.
# Anyone who can insert a row can write such an entry, and the sealer chains what it finds (review 135,
# finding 2: one naming the active key, bound 0, broke every verify for good). So an entry is honoured only
# when the checkpoint that covers it (the first at or after it) is signed by its ``new_key_id``, which is
# not its ``old_key_id``: the new key vouching for its own hand-over, which only the service makes. An old
# key is bounded once: by the key set the verifier was given, else by its first honoured hand-over entry.
# The key set also pins what the old key vouched for (``signs_through_hash``, the exported JWK's
# ``quaygate_signs_through_hash``: the hash of that last entry, review 135 finding 3): the leaked key can
# re-sign checkpoints up to its bound, so without it a trail rewritten up to there passed.
KEY_ROTATED = "audit.key_rotated"


@dataclass(frozen=True, slots=True)
class HandOver:
    """A hand-over entry's claims: the old key, the new one, the last entry the old key may vouch for."""

    old_key_id: str
    new_key_id: str
    signs_through: int


def hand_over(e: Entry) -> HandOver | None:
    """What ``e`` says, when it is a well-formed hand-over entry (still to be honoured: ``_Walk``)."""
    if e.kind != KEY_ROTATED or not isinstance(e.data, dict):
        return None
    old, new, through = e.data.get("old_key_id"), e.data.get("new_key_id"), e.data.get("old_key_signs_through")
    if not isinstance(old, str) or not isinstance(new, str) or not isinstance(through, int) \
            or isinstance(through, bool):
        return None
    return HandOver(old, new, through)


def _retired_problem(cp: Checkpoint, signs_through: Mapping[str, int]) -> Problem | None:
    through = signs_through.get(cp.key_id)
    if through is None or cp.chain_seq <= through:
        return None
    return Problem(ProblemKind.BAD_SIGNATURE, cp.chain_seq, (
        f"checkpoint #{cp.chain_seq} is signed by key {printable(cp.key_id)}, which was retired after entry {through}: "
        "a retired key signs nothing (a leaked key re-signing the trail)"))


class _Walk:
    """State of one pass over the chain; ``step`` returns the first problem it meets, if any."""

    def __init__(self, checkpoints: Iterable[Checkpoint], verify_signature: VerifySignature,
                 signs_through: Mapping[str, int] | None = None,
                 signs_through_hash: Mapping[str, str] | None = None) -> None:
        self.pending = sorted(checkpoints, key=lambda c: c.chain_seq, reverse=True)  # pop() = lowest
        self.verify_signature = verify_signature
        self.signs_through: dict[str, int] = dict(signs_through or {})
        # entry -> (its hash, the retired key that vouched for it last): the trail holds it as it was then.
        self.anchors: dict[int, tuple[str, str]] = {
            self.signs_through[kid]: (h, kid) for kid, h in (signs_through_hash or {}).items()
            if kid in self.signs_through and self.signs_through[kid] > 0}
        self.hand_overs: list[HandOver] = []  # read since the last checkpoint, waiting for the one covering them
        self.expected = 1
        self.prev = GENESIS
        self.checked_checkpoints = 0
        self.last_checkpoint: Checkpoint | None = None

    def step(self, e: Entry | Unreadable, seq: int) -> Problem | None:
        if seq > self.expected:
            gap = f"entry {self.expected} is missing" if seq == self.expected + 1 else (
                f"entries {self.expected} to {seq - 1} are missing")
            return Problem(ProblemKind.MISSING, self.expected, f"{gap} (deleted from the trail)")
        if seq < self.expected:  # the database's unique index forbids it; an exported copy may not
            return Problem(ProblemKind.MISLINKED, seq,
                           f"entry {seq} (row {e.id}) appears twice or out of order", e.id)
        if isinstance(e, Unreadable):
            return Problem(ProblemKind.UNREADABLE, seq, (
                f"entry {seq} (row {e.id}) cannot be read ({e.reason}): the service writes no such entry, "
                "so it was altered behind its back"), e.id)
        if e.prev_hash != self.prev:
            return Problem(ProblemKind.MISLINKED, seq, (
                f"entry {seq} (row {e.id}) does not follow entry {seq - 1}: its prev_hash is not the hash "
                "before it (entries reordered, inserted or relinked)"), e.id)
        try:
            digest = link_hash(e.prev_hash, seq, e)
        except UNHASHABLE as exc:
            return Problem(ProblemKind.UNREADABLE, seq, (
                f"entry {seq} (row {e.id}) cannot be hashed ({failure_text(exc)}): the service writes no such "
                "entry, so it was altered behind its back"), e.id)
        if e.hash != digest:
            return Problem(ProblemKind.EDITED, seq, (
                f"entry {seq} (row {e.id}) was altered: its content no longer matches its hash"), e.id)
        anchor = self.anchors.get(seq)
        if anchor is not None and e.hash != anchor[0]:
            return Problem(ProblemKind.CHECKPOINT_MISMATCH, seq, (
                f"entry {seq} (row {e.id}) is not the entry key {printable(anchor[1])} last vouched for before it was "
                "retired (its hash differs from the key set's quaygate_signs_through_hash): the trail up to here was "
                "rewritten and signed again with the retired key"), e.id)
        handed = hand_over(e)
        if handed is not None:  # honoured, or not, by the checkpoint that covers it (``_honour``)
            self.hand_overs.append(handed)
        while self.pending and self.pending[-1].chain_seq <= seq:
            problem = self._checkpoint(self.pending.pop(), e)
            if problem is not None:
                return problem
        self.prev = e.hash
        self.expected = seq + 1
        return None

    def _checkpoint(self, cp: Checkpoint, e: Entry) -> Problem | None:
        seq = cp.chain_seq
        retired = _retired_problem(cp, self.signs_through)
        if retired is not None:
            return retired
        if not self.verify_signature(cp.key_id, signed_message(cp), cp.signature):
            return Problem(ProblemKind.BAD_SIGNATURE, seq, (
                f"checkpoint #{seq} has a signature that does not verify under key {printable(cp.key_id)} "
                "(forged checkpoint, or not the trail's public key)"))
        if seq != e.chain_seq or cp.hash != e.hash:
            return Problem(ProblemKind.CHECKPOINT_MISMATCH, seq, (
                f"entry {seq} differs from what signed checkpoint #{seq} vouches for "
                "(the chain was rewritten up to here)"), e.id if seq == e.chain_seq else None)
        if cp.version == 2:
            last = self.last_checkpoint
            before = (last.chain_seq, last.hash) if last is not None else (0, GENESIS)
            if (cp.prev_chain_seq, cp.prev_hash) != before:
                here = f"the checkpoint before it here is #{before[0]}" if before[0] else "no checkpoint precedes it"
                return Problem(ProblemKind.CHECKPOINT_UNLINKED, seq, (
                    f"signed checkpoint #{seq} follows checkpoint #{cp.prev_chain_seq}, but {here} "
                    "(a checkpoint was deleted or replaced)"))
        self.checked_checkpoints += 1
        self.last_checkpoint = cp
        self._honour(cp)
        return None

    def _honour(self, cp: Checkpoint) -> None:
        """The hand-over entries ``cp`` covers, checked: each binds its old key (the comment at KEY_ROTATED)
        when ``cp`` is signed by its new key, another key than the old one, and no bound holds the old key
        yet: the key set's, or an earlier hand-over's (the first one counts, not the lowest)."""
        for h in self.hand_overs:
            if h.new_key_id == cp.key_id and h.old_key_id != h.new_key_id and h.old_key_id not in self.signs_through:
                self.signs_through[h.old_key_id] = h.signs_through
        self.hand_overs.clear()

    def finish(self) -> Problem | None:
        last = self.expected - 1
        beyond = [seq for seq in self.anchors if seq > last]
        if beyond and not self.pending:
            seq = min(beyond)
            return Problem(ProblemKind.MISSING, last + 1, (
                f"the trail ends at entry {last}, but key {printable(self.anchors[seq][1])} vouched for entries up to "
                f"{seq} before it was retired (the end of the trail was deleted)"))
        if self.pending:
            # Checkpoints beyond the end vouch for entries that are gone: the tail was cut off.
            cp = self.pending[0]
            retired = _retired_problem(cp, self.signs_through)
            if retired is not None:
                return retired
            if self.verify_signature(cp.key_id, signed_message(cp), cp.signature):
                return Problem(ProblemKind.MISSING, self.expected, (
                    f"entries {self.expected} to {cp.chain_seq} are missing: signed checkpoint "
                    f"#{cp.chain_seq} vouches for them (the end of the trail was deleted)"))
            return Problem(ProblemKind.BAD_SIGNATURE, cp.chain_seq, (
                f"checkpoint #{cp.chain_seq} has a signature that does not verify under key {printable(cp.key_id)} "
                "and refers past the end of the trail"))
        covered = self.last_checkpoint.chain_seq if self.last_checkpoint else 0
        if last > covered:
            return Problem(ProblemKind.UNCOVERED, covered + 1, (
                f"entries {covered + 1} to {last} are sealed but no signed checkpoint covers them "
                "(the sealer writes one with every seal: a checkpoint was removed)"))
        return None


def check_witness(witnessed: Iterable[Checkpoint], stored: Mapping[int, Checkpoint], entries: int,
                  verify_signature: VerifySignature,
                  signs_through: Mapping[str, int] | None = None) -> tuple[Problem | None, int]:
    """Every witnessed checkpoint must be in the trail as it was signed, so the trail (``entries``
    sealed entries, verified) reaches the last of them: the witness is what a database cut back to an
    earlier checkpoint, or cut back and sealed again, cannot agree with. Returns the first problem and
    how many witnessed checkpoints were found."""
    found = agreed = 0  # agreed: the last witnessed checkpoint found as signed
    for w in sorted(witnessed, key=lambda c: c.chain_seq):
        cp = stored.get(w.chain_seq)
        if cp is not None and cp.same_as(w):
            found, agreed = found + 1, w.chain_seq
            continue
        seq = w.chain_seq
        retired = _retired_problem(w, signs_through or {})
        if retired is not None:
            return retired, found
        if not verify_signature(w.key_id, signed_message(w), w.signature):
            return Problem(ProblemKind.BAD_WITNESS, seq, (
                f"the witness's checkpoint #{seq} has a signature that does not verify under key {printable(w.key_id)} "
                "(the witness file was altered, or is another trail's)")), found
        witness = f"checkpoint #{seq} was signed and witnessed outside the database"
        if any(other > agreed for other in stored):  # checkpoints past the agreement: a second history
            return Problem(ProblemKind.UNWITNESSED, agreed + 1, (
                f"the trail was rewritten after entry {agreed} and sealed again: {witness}, and "
                + ("is not in the trail" if cp is None else f"the trail's checkpoint #{seq} is another")
                + f"; the trail's own checkpoints past #{agreed} vouch for the rewrite")), found
        gap = f"entry {seq} is" if entries + 1 == seq else f"entries {entries + 1} to {seq} are"
        return Problem(ProblemKind.MISSING, entries + 1, (
            f"{gap} missing: the trail ends at entry {entries}, but {witness} (the end of the trail was "
            "deleted)")), found
    return None, found


def _why_unsealable(e: Entry | Unreadable) -> str | None:
    """Why the sealer can never seal this unsealed row: it cannot be read, or cannot be hashed."""
    if isinstance(e, Unreadable):
        return f"cannot be read ({e.reason})"
    try:
        link_hash(GENESIS, 1, e)
    except UNHASHABLE as exc:
        return f"cannot be hashed ({failure_text(exc)})"
    return None


def verify_chain(rows: Iterable[Entry | Unreadable], checkpoints: Iterable[Checkpoint],
                 verify_signature: VerifySignature, *, witnessed: Iterable[Checkpoint] = (),
                 sealing: SealingBound | None = None,
                 signs_through: Mapping[str, int] | None = None,
                 signs_through_hash: Mapping[str, str] | None = None) -> Report:
    """Walk ``rows`` in ``chain_seq`` order (unsealed rows anywhere) and report the first problem, then
    hold the trail against the ``witnessed`` checkpoints, and its unsealed rows against ``sealing``.
    ``signs_through``: retired keys and the last entry each may vouch for (as exported with the keys);
    the trail's own hand-over entries (``KEY_ROTATED``) add theirs as the walk reaches them.
    ``signs_through_hash``: for retired keys, the hash that last entry had (exported with the keys too):
    the trail must still hold it so. ``rows`` may hold rows the store could not read (``Unreadable``): a
    sealed one breaks the trail at its place, an unsealed one (like one that cannot be hashed) where the
    sealer stopped, as it can seal neither it nor anything after it."""
    checkpoints = list(checkpoints)
    walk = _Walk(checkpoints, verify_signature, signs_through, signs_through_hash)
    unsealed = 0
    held: list[Held] = []
    held_count = 0
    problem: Problem | None = None
    stuck: tuple[int, str] | None = None  # the first unsealed row the sealer can never seal
    for e in rows:
        if e.chain_seq is None:
            unsealed += 1
            why = _why_unsealable(e)
            if why is not None:
                stuck = stuck or (e.id, why)
                continue
            reason = sealing.why_held(e) if sealing is not None else None
            if reason is not None:
                held_count += 1
                if len(held) < HELD_SHOWN:
                    held.append(Held(e.id, e.at, reason))
            continue
        if problem is not None:
            continue  # keep counting unsealed rows only
        problem = walk.step(e, e.chain_seq)
    if problem is None:
        problem = walk.finish()
    if problem is None and stuck is not None:
        problem = Problem(ProblemKind.UNREADABLE, walk.expected, (
            f"row {stuck[0]}, not sealed, {stuck[1]}: the service writes no such entry, so it was written behind "
            "its back, and the sealer can seal neither it nor any entry after it"), stuck[0])
    entries = walk.expected - 1
    found = 0
    witnessed = list(witnessed)
    if problem is None and witnessed:
        problem, found = check_witness(witnessed, {c.chain_seq: c for c in checkpoints}, entries,
                                       verify_signature, walk.signs_through)
    return Report(entries, walk.checked_checkpoints, unsealed, walk.last_checkpoint, problem, tuple(held),
                  held_count, found)

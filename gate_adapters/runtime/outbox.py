"""A durable local outbox of gate verify requests, in SQLite.

Why: a truck's request must survive a crash of the adapter between "asked the service" and "heard
the answer". The service answers the same ``request_id`` with the same decision and never uses a
right twice (SPEC.md "The gate verify call"), so the safe recovery is to re-send the SAME body.

Row lifecycle::

    put(body) ──► pending ──done(request_id, response)──► decided ──told(command)──► told
                                                                 ──prune(older than keep_days)──► gone

Offline mode (``offline.py``): a request the service could not answer while the truck waited is
decided locally; ``decide_offline`` marks it decided AND queues its report for the service in ONE
transaction, so an offline decision is never lost nor reported twice::

    pending ──decide_offline──► decided (offline) + report ──reconciled(result)──► reconciled

Rules:
1. ``put`` is durable before it returns: WAL journal with ``synchronous=FULL`` (a power cut after the
   commit keeps the row). The caller puts BEFORE any network call.
2. ``put`` of a request_id already present keeps the FIRST body and answers False: the same reads were
   correlated again (a replay, a camera re-sending its buffer). The lane never acts on such a repeat
   (lane.py rule 6); a pending request is re-sent by ``recover`` with the body stored first, as the
   service refuses a reused request_id with another body (409).
3. ``pending()`` is oldest first (trucks pass a lane in order); decided rows are kept ``keep_days``
   days for the audit trail and then pruned.
4. One instance is shared by threads: one connection guarded by a lock.
5. Late news about a truck already decided (a face match result saying ``matched: false`` after its
   request went, or another plate or container number read for it, lane.py rule 8) is kept beside its
   request as a ``late_reads`` row (``late``), so the audit of that truck's passage shows it; kept
   ``keep_days`` like a decided request. Nothing is sent for it: the service has decided, and only an
   officer at the lane can undo a wrong passage. A face for a truck whose request went without one
   (``late_face``, correlate.py rule 3a) is noted the same way.
6. A lane's latch (lane.py rule 9) lives here, beside the requests, so that a restart (a kill, a power
   cut) never silently unlatches a lane an officer was called to::

       (none) ──latch(lane) (an officer called)──► held ──clear(lane, latch id, by)──► cleared (kept keep_days)

   At most one latch is held per lane (a unique partial index: ``latch`` is one ``INSERT OR IGNORE``,
   never check-then-act); latch ids are never reused (``AUTOINCREMENT``), so a clear naming an old
   latch (a re-run command, a re-sent request) clears nothing. A cleared latch is marked with who
   cleared it and when, never deleted until pruned; a held one is never pruned. Every decision made
   while a lane is latched is noted against the latch (``latched_holds``) with the command it would
   have given, for the officer and the audit. ``latched_for`` says whether a truck was handed to an
   officer: a latch (held or cleared) names its request, or one noted its hold; its late answer never
   opens (lane.py rule 2).
7. A right this adapter used counts as used here, whether the use was decided offline or online (SPEC.md
   "The gate verify call": a right is never used twice; gate_pass.py: one adapter never allows one
   right twice, even offline). ``done`` with a committed allow notes its release and direction in
   ``online_uses`` in the same transaction as the answer, and ``offline_uses`` returns those with the
   offline ones: after an online gate-in at one lane and a cut uplink, offline mode must not let the
   same badge and plate in again at another lane on a pass fetched before that gate-in. Kept
   ``keep_days`` like the request (a pass lives minutes), and read by right, every one kept, never by
   the time our wall clock stamped it (a clock held back hid a use from such a window; review 121).
   An officer's override of a refused gate-in (overrides.py) is such a use too: unless the service refused
   it for good, the desk first notes the right used (``in``) in ``online_uses`` against the refused request,
   in a transaction of its own (``note_use``), then ``overridden`` keeps the override (``overrides``: who,
   why, what the service said), so that a record that fails after the service let the truck in never loses
   the use (review 162, finding 2). An
   override of a refusal decided offline (``override_offline``, overrides.py rule 6) is an offline decision
   of its own instead (its key ``override:<id>``, ``used`` = ``in``): sealed in the chain (rule 10) and
   reported at the reconcile, as the service has not heard of it.
8. The file's schema is versioned (``PRAGMA user_version``, ``SCHEMA_VERSION``): an adapter upgraded in
   place migrates the file it finds, once, in one transaction (another process, the latch command,
   may open the same file). Version 1 added ``online_uses`` and filled it from the answers already kept;
   version 2 added ``overrides`` (nothing to fill: no adapter before it asked for one).
9. The file is made readable and writable by its owner only (0600), and one that group or others may write,
   or another user owns, is refused (``strict``, outside dev; a warning in dev): whoever may write it could
   forget the uses of rule 7, queue requests, or clear a latch (datafiles.py).
10. The offline decisions are a sealed chain (review 92; with ``secret``, the adapter's seal key, seal.py,
    rule 12): a mode is no proof against someone with the disk, and deleting the record of an offline
    gate-in before it is reconciled would let the service never learn of the use, and the right be used
    again; editing it would change which right or truck it names. Each decision has a sequence number
    ``seq`` (1, 2, ... never reused), ``prev`` (the seal of the one before), ``digest`` (SHA-256 of its
    report) and ``mac`` (HMAC over all of that, its request, lane, right, use and time, and the chain's
    ``outbox_id``); an acknowledged one also ``ack`` (HMAC over the service's answer and the time). The
    one ``outbox_chain`` row keeps, sealed, the chain's id, its head (last ``seq`` and seal) and its base
    (the first ``seq`` kept and the seal it follows)::

        base_prev ◄─prev─ [seq b] ◄─prev─ [b+1] ◄─ ... ◄─prev─ [seq h] = head (head_seq, head_mac)

    A decision deleted (in the middle, or the last), put out of order, edited, or marked acknowledged
    without the service's answer breaks the chain (``check``): the outbox is **tampered**, which
    ``tampered`` says (sticky for the process; found again at every start until an operator acts). Pruning
    cuts the chain at its base only (a prefix of decisions acknowledged and older than ``keep_days``),
    moving the base; a decision still to be reconciled holds back the pruning of those after it.
    What a chain cannot see (the whole file put back as it was earlier, or deleted) the service sees:
    ``position`` (the chain's id and head) goes with each pass refresh and report (offline.py rule 7).
    A file from before the chain is sealed as it stands at its first start with a secret, under a new
    ``outbox_id``, logged ``gate.offline.outbox_sealed`` (what was done to it before cannot be known: the
    service is told of the new chain). Such a file, or one emptied, or an earlier copy put back, is told
    from what the pass store (another sealed file) remembers of the chain: ``on_head`` tells it each head,
    ``bound`` compares at start (review 155, finding 1; offline.py ``OfflineMode._bind_outbox``). An
    outbox opened without a secret (the latch command, a rehearsal) neither checks nor extends the chain,
    and never prunes a decision of it.
11. An offline decision's age (``offline_elapsed``: an officer may override an offline refusal for an hour
    only, overrides.py rule 6) is told by the wall clock AND the monotonic clock, as offline mode tells its
    store's age (offline.py rule 3): the wall-clock time the decision was stamped with (sealed, rule 10),
    and the monotonic time this process took it (kept in memory: the monotonic clock of another process
    or boot says nothing; for a decision older than the process, its start). The caller takes the larger,
    so a wall clock wound back (NTP spoofed during an outage) never makes an old refusal young again.
    Across a restart the monotonic clock counts from the new start only, so a wall clock wound back to
    just after the refusal would still make it young (review 126, finding 2): ``latest_stamp`` is the
    latest wall time this outbox stamped on an offline decision or its acknowledgement (sealed, rule 10),
    and a wall clock reading earlier than that tells no age (the caller refuses, as offline mode does with
    its store's time seen, offline.py rule 3). For the same reason ``unreconciled`` goes in the chain's
    order, not by those stamps: a decision stamped after the clock was wound back is reported after those
    sealed before it, so the service can tell an override stamped earlier than a decision before it.
12. The chain's key rotates with nothing (review 172, finding 1): ``secret`` is the adapter's seal key
    (seal.py), not its client credential, so a credential rotated (a gate secret leaked during an outage)
    leaves every offline decision in the chain and reported. An adapter from before kept the chain under a
    key derived from its credential: ``previous``, that material, offered while the seal key is pending
    (seal.py ``SealKey.pending``). At start a chain whose record holds under ``previous`` and not under
    ``secret`` is walked in full under ``previous`` and, if it holds, sealed again under ``secret`` in one
    transaction (every decision, acknowledgement and the record; the chain's id, places and base kept),
    logged ``gate.offline.outbox_resealed``; if it does not hold it is tampered, and a decision whose own
    seal holds under either key is still reported. ``bound`` knows the head a pass store remembers from
    before the carry-over (its seal under ``previous``, walked again from the base).
13. What the barrier was told of an answer is marked beside it (review 173, finding 2; lane.py rule 11): an
    adapter killed between recording an answer (``done``, ``decide_offline``) and the barrier's command
    left an allowed truck at a shut barrier, the right used, no officer called, and nothing at the restart
    to say so. ``told(request_id, command)`` writes the mark once the command went (``open``, ``hold``;
    ``none`` where nothing is to be told of the answer, written with it by ``done(told=...)`` when known
    then); a request answered and not marked is ``untold``. A mark goes through the seal of rule 10 (the
    adapter's seal key, rule 12; ``told_mac`` over the request, its lane, the answer's time, the command and
    the mark's time): one deleted, edited, copied from another request or written without the seal key is
    no mark. ``done`` clears the mark of an earlier answer with the new one, and a mark that holds is
    never written over. The answers kept before version 4 were told by an adapter that kept no mark: the
    migration marks them ``before``, sealed at once, or, when the file was migrated without a secret (the
    latch command first), at the next start with one (``gate.outbox.marks_sealed``), as rule 10 seals a
    file from before the chain; whoever may write the file could make an answer look that old, as he could
    delete it or clear a latch (rule 9 keeps him out). Without a secret a mark is kept unsealed and any
    counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .datafiles import private_data_file
from .seal import Seal

log = logging.getLogger("gate_adapters.offline")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verify_requests (
    request_id TEXT PRIMARY KEY,
    lane       TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    decided_at REAL,
    response   TEXT,
    told       TEXT,  -- rule 13: what the barrier was told of the answer ('open', 'hold', 'none', 'before')
    told_at    REAL,
    told_mac   TEXT   -- rule 13: its seal (NULL without a secret)
);
CREATE INDEX IF NOT EXISTS verify_requests_pending ON verify_requests (created_at) WHERE decided_at IS NULL;
CREATE INDEX IF NOT EXISTS verify_requests_decided ON verify_requests (decided_at) WHERE decided_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS offline_decisions (
    request_id    TEXT PRIMARY KEY REFERENCES verify_requests (request_id),
    lane          TEXT NOT NULL,
    release_id    TEXT,
    used          TEXT,  -- 'in' | 'out' for an allow in commit mode: the right counts as used here
    report        TEXT NOT NULL,
    decided_at    REAL NOT NULL,
    reconciled_at REAL,
    result        TEXT,
    seq           INTEGER,  -- rule 10: the place in the sealed chain (NULL: not sealed yet, or no secret)
    prev          TEXT,
    digest        TEXT,
    mac           TEXT,
    ack           TEXT      -- rule 10: the seal of the service's answer, once reconciled
);
CREATE INDEX IF NOT EXISTS offline_decisions_open ON offline_decisions (decided_at) WHERE reconciled_at IS NULL;
CREATE TABLE IF NOT EXISTS late_reads (
    request_id TEXT NOT NULL,  -- the truck it came too late for (not always in verify_requests: an evicted one)
    lane       TEXT NOT NULL,
    reason     TEXT NOT NULL,  -- 'late_face_mismatch', 'late_plate_mismatch', 'late_container_mismatch', 'late_face'
    detail     TEXT NOT NULL,  -- JSON: what arrived (never an image)
    noted_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS late_reads_request ON late_reads (request_id);
CREATE TABLE IF NOT EXISTS lane_latches (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a clear names the latch it clears
    lane       TEXT NOT NULL,
    latched_at REAL NOT NULL,
    request_id TEXT NOT NULL,  -- the truck whose decision called the officer
    reason     TEXT NOT NULL,  -- 'review', 'evicted', 'late_face_mismatch', 'unavailable', ...
    cleared_at REAL,
    cleared_by TEXT,           -- the officer, and how (http, cli)
    note       TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS lane_latches_held ON lane_latches (lane) WHERE cleared_at IS NULL;
CREATE INDEX IF NOT EXISTS lane_latches_request ON lane_latches (request_id);  -- latched_for (lane.py rule 2)
CREATE TABLE IF NOT EXISTS latched_holds (
    latch_id   INTEGER NOT NULL REFERENCES lane_latches (id),
    lane       TEXT NOT NULL,
    request_id TEXT NOT NULL,
    instead    TEXT NOT NULL,  -- the command the decision gave: 'open' or 'hold'
    reason     TEXT NOT NULL,  -- the decision ('allow', 'deny', 'review') or why there was none
    noted_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS latched_holds_latch ON latched_holds (latch_id);
CREATE INDEX IF NOT EXISTS latched_holds_request ON latched_holds (request_id);  -- latched_for
CREATE TABLE IF NOT EXISTS online_uses (
    request_id TEXT PRIMARY KEY REFERENCES verify_requests (request_id),
    lane       TEXT NOT NULL,
    release_id TEXT NOT NULL,
    used       TEXT NOT NULL,  -- 'in' | 'out': the service committed a gate-in or gate-out here (rule 7)
    decided_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS online_uses_decided ON online_uses (decided_at);
CREATE INDEX IF NOT EXISTS online_uses_release ON online_uses (release_id);  -- rule 7: read by right
CREATE TABLE IF NOT EXISTS overrides (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  TEXT NOT NULL,  -- the refused request an officer overrode (verify_requests)
    lane        TEXT NOT NULL,
    decision_id TEXT NOT NULL,  -- the service's refused decision
    release_id  TEXT NOT NULL,  -- the right let in
    officer     TEXT NOT NULL,  -- who asked, and how ('J. Peeters (http)')
    reason      TEXT NOT NULL,
    outcome     TEXT NOT NULL,  -- 'overridden' | 'already_used' | 'unanswered' | 'refused' | 'offline' | 'allowed'
                                -- (overrides.py; 'allowed': verified again, the service let the truck in)
    answer      TEXT,           -- JSON: the service's answer or refusal; none when it did not answer
    asked_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS overrides_request ON overrides (request_id);
CREATE TABLE IF NOT EXISTS outbox_chain (
    id        INTEGER PRIMARY KEY CHECK (id = 1),  -- rule 10: one chain per file
    outbox_id TEXT NOT NULL,
    head_seq  INTEGER NOT NULL,
    head_mac  TEXT NOT NULL,
    base_seq  INTEGER NOT NULL,
    base_prev TEXT NOT NULL,
    seal      TEXT NOT NULL
);
"""
_CHAIN_COLUMNS = ("seq INTEGER", "prev TEXT", "digest TEXT", "mac TEXT", "ack TEXT")
_TOLD_COLUMNS = ("told TEXT", "told_at REAL", "told_mac TEXT")

# Rule 8: 0, a file made before versions (no online_uses); 1, online_uses; 2, overrides; 3, the chain (rule 10);
# 4, what the barrier was told (rule 13).
SCHEMA_VERSION = 4
BEFORE = "before"  # rule 13: the mark of an answer recorded before the marks were
OUTBOX_PURPOSE = "quaygate gate-adapter outbox v1"  # the seal's HKDF info: its key serves nothing else
GENESIS = "genesis"  # what the first decision of a chain follows

OUTBOX_RISK = ("whoever writes it can forget the rights this adapter used (a second truck let in on one offline), "
               "queue requests to be sent at the next start, or clear a lane's latch")


def _use(response: Mapping[str, Any], body: Mapping[str, Any]) -> tuple[str, str] | None:
    """Rule 7: (release_id, direction) when ``response`` used a right here (an allow the service says it
    committed, as sinks.command_for opens on), else None. A release id that is no UUID is no use: it
    could not be told apart from another right, and offline mode could not read it."""
    if response.get("decision") != "allow" or response.get("committed") is not True:
        return None
    direction = response.get("direction") or body.get("direction")
    try:
        release_id = str(uuid.UUID(str(response.get("release_id"))))
    except ValueError:
        return None
    return (release_id, str(direction)) if direction in ("in", "out") else None


def _digest(report: str) -> str:
    return hashlib.sha256(report.encode()).hexdigest()


def _row_fields(outbox_id: str, seq: int, prev: str, request_id: str, lane: str, release_id: str | None,
                used: str | None, decided_at: float, digest: str) -> tuple[str, ...]:
    """Rule 10: what a decision's seal covers: its place (chain, seq, the seal before) and its content (the
    report by its digest). Nullable values JSON-encoded: a NULL right is not an empty one."""
    return ("offline_decision", outbox_id, str(seq), prev, request_id, lane, json.dumps([release_id, used]),
            repr(float(decided_at)), digest)


def _ack_fields(outbox_id: str, seq: int, mac: str, result: str, reconciled_at: float) -> tuple[str, ...]:
    """Rule 10: what an acknowledgement's seal covers: the decision's seal, the service's answer, when."""
    return ("offline_reconciled", outbox_id, str(seq), mac, result, repr(float(reconciled_at)))


def _told_fields(request_id: str, lane: str, decided_at: float, told: str, told_at: float) -> tuple[str, ...]:
    """Rule 13: what a mark's seal covers: the request, its lane, the answer's time, the command, when."""
    return ("barrier_told", request_id, lane, repr(float(decided_at)), told, repr(float(told_at)))


def _chain_fields(outbox_id: str, head_seq: int, head_mac: str, base_seq: int, base_prev: str) -> tuple[str, ...]:
    return ("outbox_chain", outbox_id, str(head_seq), head_mac, str(base_seq), base_prev)


_CHAIN = "SELECT outbox_id, head_seq, head_mac, base_seq, base_prev, seal FROM outbox_chain WHERE id = 1"
_LINKS = ("SELECT seq, prev, mac, request_id, lane, release_id, used, decided_at, digest, reconciled_at, result, ack"
          " FROM offline_decisions")


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """A request put but not answered yet. ``created_at`` is wall-clock seconds (it outlives restarts)."""

    request_id: str
    lane: str
    body: dict[str, Any]
    created_at: float
    attempts: int


@dataclass(frozen=True, slots=True)
class Answered:
    """A request with its final answer (``response``): a decision, online or offline, or a refusal."""

    request_id: str
    lane: str
    response: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LatchedHold:
    """A decision made while its lane was latched: held, whatever it said (rule 6)."""

    request_id: str
    instead: str
    reason: str
    noted_at: float


@dataclass(frozen=True, slots=True)
class LaneLatch:
    """A lane held for an officer (rule 6); ``cleared_at`` None while it holds. Times are wall seconds."""

    id: int
    lane: str
    latched_at: float
    request_id: str
    reason: str
    cleared_at: float | None = None
    cleared_by: str | None = None
    note: str | None = None


_HELD_LATCH = ("SELECT id, lane, latched_at, request_id, reason, cleared_at, cleared_by, note FROM lane_latches "
               "WHERE lane = ? AND cleared_at IS NULL")
_HELD_LATCHES = ("SELECT id, lane, latched_at, request_id, reason, cleared_at, cleared_by, note FROM lane_latches "
                 "WHERE cleared_at IS NULL")
_LANE_LATCHES = ("SELECT id, lane, latched_at, request_id, reason, cleared_at, cleared_by, note FROM lane_latches "
                 "WHERE lane = ? ORDER BY id")
_LATCH_BY_ID = ("SELECT id, lane, latched_at, request_id, reason, cleared_at, cleared_by, note FROM lane_latches "
                "WHERE id = ?")


def _latch(row: Any) -> LaneLatch:
    return LaneLatch(int(row[0]), str(row[1]), float(row[2]), str(row[3]), str(row[4]),
                     None if row[5] is None else float(row[5]), row[6], row[7])


def _used(response: Mapping[str, Any], report: Mapping[str, Any]) -> str | None:
    """The direction (``in``/``out``) a local decision uses its right in: an allow of a commit; else None."""
    request = report.get("request") or {}
    if response.get("decision") == "allow" and request.get("mode") == "commit":
        return str(request.get("direction"))
    return None


class Outbox:
    """One SQLite file per lane or per adapter. Thread-safe."""

    def __init__(self, path: str | Path, *, keep_days: float = 7.0, wall: Callable[[], float] = time.time,
                 strict: bool = True, secret: bytes | None = None, clock: Callable[[], float] = time.monotonic,
                 previous: bytes | None = None) -> None:
        if keep_days <= 0:
            raise ValueError("keep_days > 0")
        self.path = Path(path)
        self.keep_seconds = keep_days * 86400.0
        self._wall, self._clock = wall, clock
        # Rule 11: the monotonic time of the offline decisions this process took, and of its start.
        self._started = clock()
        self._decided_here: dict[str, float] = {}
        self._lock = threading.Lock()
        self._seal = None if secret is None else Seal(secret, purpose=OUTBOX_PURPOSE)  # rule 10
        # Rule 12: the seal an adapter from before its seal key kept the chain under, while that key is pending.
        self._previous = None if secret is None or previous is None else Seal(previous, purpose=OUTBOX_PURPOSE)
        self._tampered: str | None = None
        # Review 155, finding 1: told the chain's head after each transaction that moved it (the pass
        # store keeps it, offline.py OfflineMode._bind_outbox).
        self.on_head: Callable[[str, int, str], None] | None = None
        private_data_file(self.path, strict=strict, risk=OUTBOX_RISK)  # rule 9
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # rule 1: durable at commit, not just at checkpoint
        try:
            self._db.executescript(_SCHEMA)
            self._migrate()
            if self._seal is not None:
                self._open_chain()
                self._seal_marks_from_before()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        """Rule 8: bring a file of an older version up to ``SCHEMA_VERSION``, once, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # another process opening the file waits, then finds it done
            try:
                version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
                if version > SCHEMA_VERSION:
                    raise RuntimeError(f"{self.path}: outbox schema version {version} is newer than this "
                                       f"adapter's ({SCHEMA_VERSION}): upgrade the adapter")
                if version < 1:
                    # The committed allows answered before this version kept no use: found in their answers.
                    rows = self._db.execute("SELECT request_id, lane, body, response, decided_at FROM verify_requests "
                                            "WHERE response IS NOT NULL AND decided_at IS NOT NULL").fetchall()
                    for request_id, lane, body, response, decided_at in rows:
                        use = _use(json.loads(response), json.loads(body))
                        if use is not None:
                            self._db.execute("INSERT OR IGNORE INTO online_uses VALUES (?, ?, ?, ?, ?)",
                                             (request_id, lane, *use, decided_at))
                if version < 3:  # rule 10: the chain's columns (a new file has them from _SCHEMA)
                    have = {r[1] for r in self._db.execute("PRAGMA table_info(offline_decisions)")}
                    for column in _CHAIN_COLUMNS:
                        if column.split()[0] not in have:
                            self._db.execute(f"ALTER TABLE offline_decisions ADD COLUMN {column}")
                if version < 4:  # rule 13: the marks' columns; the answers kept so far were told by a version
                    have = {r[1] for r in self._db.execute("PRAGMA table_info(verify_requests)")}  # without them
                    for column in _TOLD_COLUMNS:
                        if column.split()[0] not in have:
                            self._db.execute(f"ALTER TABLE verify_requests ADD COLUMN {column}")
                    self._db.execute("UPDATE verify_requests SET told = ?, told_at = decided_at "
                                     "WHERE decided_at IS NOT NULL AND told IS NULL", (BEFORE,))
                self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS offline_decisions_seq ON offline_decisions (seq)")
                self._db.execute("CREATE INDEX IF NOT EXISTS verify_requests_untold ON verify_requests (lane) "
                                 "WHERE decided_at IS NOT NULL AND told IS NULL")
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- the sealed chain of offline decisions (rule 10) --------------------------------------------

    @property
    def tampered(self) -> str | None:
        """Why the chain of offline decisions does not hold (rule 10), or None. Sticky for this process: an
        outbox found tampered stays so till an operator acts (offline.py rule 7)."""
        return self._tampered

    def position(self) -> dict[str, Any] | None:
        """Rule 10: the chain's id and head, and whether it holds, for the service's high-water mark; None
        without a secret."""
        if self._seal is None:
            return None
        with self._lock:
            row = self._db.execute("SELECT outbox_id, head_seq FROM outbox_chain WHERE id = 1").fetchone()
        return None if row is None else {"id": str(row[0]), "seq": int(row[1]), "intact": self._tampered is None}

    def check(self, *, full: bool = False) -> str | None:
        """Rule 10: walk the chain; ``full`` digests every report too (at start). Returns why it does not
        hold, or None; the first time, logs ``gate.offline.outbox_tampered``."""
        if self._seal is None:
            return None
        with self._lock:
            reason = self._verify(full=full)
        if reason is not None:
            self._taint(reason)
        return self._tampered

    def head(self) -> tuple[str, int, str] | None:
        """The chain's id, head seq and head mac; None without a secret (or a chain)."""
        if self._seal is None:
            return None
        with self._lock:
            row = self._db.execute("SELECT outbox_id, head_seq, head_mac FROM outbox_chain WHERE id = 1").fetchone()
        return None if row is None else (str(row[0]), int(row[1]), str(row[2]))

    def bound(self, outbox_id: str, seq: int, mac: str) -> str | None:
        """Review 155, finding 1: why this chain is not the one whose head (``outbox_id``, ``seq``, ``mac``)
        was seen before (the pass store's memory), or None: the same chain, at that head or past it."""
        head = self.head()
        if head is None:
            return "its chain record is gone"
        if head[0] != outbox_id:
            return f"its chain ({head[0]}) is not the one the pass store knows ({outbox_id}): emptied or replaced"
        if head[1] < seq:
            return f"its head ({head[1]}) is behind the one the pass store saw ({seq}): an earlier copy"
        with self._lock:
            base_seq, base_prev = self._db.execute("SELECT base_seq, base_prev FROM outbox_chain WHERE id = 1"
                                                   ).fetchone()
            row = self._db.execute("SELECT mac FROM offline_decisions WHERE seq = ?", (seq,)).fetchone()
            if seq == 0 or seq < int(base_seq) - 1:
                return None  # the start, or pruned since (the chain record's seal covers where it starts)
            kept = str(base_prev) if seq == int(base_seq) - 1 else None if row is None else str(row[0])
            if kept != mac and row is not None and self._previous is not None:  # rule 12: seen before the carry
                kept = mac if self._previous_mac(seq) == mac else kept
        return None if kept == mac else f"offline decision {seq} is not the one the pass store saw"

    def taint(self, reason: str) -> None:
        """Rule 10: mark this outbox tampered (logged once), from what another sealed file knows."""
        with self._lock:
            self._taint(reason)

    def _told(self) -> None:
        """After a transaction that moved the chain (under the lock): tell ``on_head``."""
        if self.on_head is not None:
            row = self._db.execute("SELECT outbox_id, head_seq, head_mac FROM outbox_chain WHERE id = 1").fetchone()
            if row is not None:
                self.on_head(str(row[0]), int(row[1]), str(row[2]))

    def _taint(self, reason: str) -> None:
        if self._tampered is None:
            # The file is left as it is, for port security to look at (rule 10).
            log.error("gate.offline.outbox_tampered: %s: %s; every offline truck is a review until an operator "
                      "acts", self.path, reason, extra={"reason": reason})
            self._tampered = reason

    def _open_chain(self) -> None:
        """Rule 10, at start: a file without a chain gets one (its decisions sealed as they stand, logged),
        then the whole chain is checked, reports digested."""
        assert self._seal is not None
        carried: int | None = None
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                sealed = 0
                chain = self._db.execute(_CHAIN).fetchone()
                if chain is not None and self._previous is not None and not self._seal.holds(
                        chain[5], *_chain_fields(*chain[:5])) and self._previous.holds(chain[5], *_chain_fields(
                        *chain[:5])):
                    # Rule 12: sealed under the credential-derived key; carried over if it holds in full there.
                    reason = self._verify(full=True, seal=self._previous)
                    if reason is None:
                        carried = self._reseal()
                    else:
                        self._taint(reason)
                if chain is None:
                    if self._db.execute("SELECT 1 FROM offline_decisions WHERE seq IS NOT NULL").fetchone():
                        sealed = -1  # a chain's decisions without their chain record: never sealed again
                    else:
                        self._set_chain(uuid.uuid4().hex, 0, GENESIS, 1, GENESIS)
                        for (request_id,) in self._db.execute("SELECT request_id FROM offline_decisions "
                                                              "ORDER BY decided_at, rowid").fetchall():
                            self._link(request_id)
                            sealed += 1
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if carried is not None:
            log.warning("gate.offline.outbox_resealed: %s: its chain (%d offline decisions kept) held under the key "
                        "derived from the adapter's credential; sealed again under its seal key", self.path, carried,
                        extra={"decisions": carried})
        if sealed > 0:
            log.warning("gate.offline.outbox_sealed: %s: %d offline decisions from before the chain sealed as they "
                        "stand", self.path, sealed, extra={"decisions": sealed})
        self.check(full=True)

    def _set_chain(self, outbox_id: str, head_seq: int, head_mac: str, base_seq: int, base_prev: str) -> None:
        assert self._seal is not None
        seal = self._seal.mac(*_chain_fields(outbox_id, head_seq, head_mac, base_seq, base_prev))
        self._db.execute("INSERT OR REPLACE INTO outbox_chain VALUES (1, ?, ?, ?, ?, ?, ?)",
                         (outbox_id, head_seq, head_mac, base_seq, base_prev, seal))

    def _link(self, request_id: str) -> None:
        """Rule 10, in the caller's transaction: seal the decision ``request_id`` as the chain's next."""
        assert self._seal is not None
        outbox_id, head_seq, head_mac, base_seq, base_prev, _ = self._db.execute(_CHAIN).fetchone()
        lane, release_id, used, report, decided_at, reconciled_at, result = self._db.execute(
            "SELECT lane, release_id, used, report, decided_at, reconciled_at, result FROM offline_decisions "
            "WHERE request_id = ?", (request_id,)).fetchone()
        seq, digest = int(head_seq) + 1, _digest(report)
        mac = self._seal.mac(*_row_fields(outbox_id, seq, head_mac, request_id, lane, release_id, used, decided_at,
                                          digest))
        ack = None if reconciled_at is None else self._seal.mac(
            *_ack_fields(outbox_id, seq, mac, result or "", reconciled_at))
        self._db.execute("UPDATE offline_decisions SET seq = ?, prev = ?, digest = ?, mac = ?, ack = ? "
                         "WHERE request_id = ?", (seq, head_mac, digest, mac, ack, request_id))
        self._set_chain(outbox_id, seq, mac, base_seq, base_prev)

    def _reseal(self) -> int:
        """Rule 12, in the caller's transaction (the chain checked in full under ``_previous``): every decision
        and acknowledgement of the chain, and its record, sealed again under the seal key, as they stand (the
        base's seal, before the first kept decision, stays: the record's seal covers it). How many there are."""
        assert self._seal is not None
        outbox_id, head_seq, head_mac, base_seq, base_prev, _ = self._db.execute(_CHAIN).fetchone()
        prev, n = str(base_prev), 0
        for row in self._db.execute(_LINKS + " ORDER BY seq").fetchall():
            seq, _prev, _mac, request_id, lane, release_id, used, decided_at, digest, done_at, result, _ack = row
            mac = self._seal.mac(*_row_fields(outbox_id, seq, prev, request_id, lane, release_id, used, decided_at,
                                              str(digest)))
            ack = None if done_at is None else self._seal.mac(*_ack_fields(outbox_id, seq, mac, result or "",
                                                                           done_at))
            self._db.execute("UPDATE offline_decisions SET prev = ?, mac = ?, ack = ? WHERE request_id = ?",
                             (prev, mac, ack, request_id))
            prev, n = mac, n + 1
        self._set_chain(outbox_id, head_seq, prev if n else str(head_mac), base_seq, base_prev)
        return n

    def _previous_mac(self, seq: int) -> str | None:
        """Rule 12 (under the lock): the seal decision ``seq`` had under ``_previous`` (the chain walked from its
        base as it stands), or None: so a pass store that remembers the head from before the chain was carried
        over still knows it (``bound``)."""
        assert self._previous is not None
        outbox_id, _, _, base_seq, base_prev, _ = self._db.execute(_CHAIN).fetchone()
        prev = str(base_prev)
        for row in self._db.execute(_LINKS + " WHERE seq BETWEEN ? AND ? ORDER BY seq", (base_seq, seq)):
            at, _prev, _mac, request_id, lane, release_id, used, decided_at, digest = row[:9]
            prev = self._previous.mac(*_row_fields(outbox_id, at, prev, request_id, lane, release_id, used,
                                                   decided_at, str(digest)))
            if at == seq:
                return prev
        return None

    def _holds(self, mac: object, *fields: str) -> bool:
        """A row's own seal (rule 10), under the seal key or, while it is pending, the previous one (rule 12)."""
        assert self._seal is not None
        return self._seal.holds(mac, *fields) or (self._previous is not None and self._previous.holds(mac, *fields))

    def _verify(self, *, full: bool, seal: Seal | None = None) -> str | None:
        """Rule 10 (under the lock): why the chain does not hold (under ``seal``: default the seal key's), or
        None."""
        seal = seal or self._seal
        assert seal is not None
        chain = self._db.execute(_CHAIN).fetchone()
        if chain is None:
            return "its chain record is gone"
        outbox_id, head_seq, head_mac, base_seq, base_prev, seal_mac = chain
        if not seal.holds(seal_mac, *_chain_fields(outbox_id, head_seq, head_mac, base_seq, base_prev)):
            return "the seal of its chain record does not hold"
        sql = _LINKS.replace(" FROM", ", report FROM") if full else _LINKS
        expected, prev = int(base_seq), base_prev
        for row in self._db.execute(sql + " ORDER BY seq IS NOT NULL, seq"):
            seq, row_prev, mac, request_id, lane, release_id, used, decided_at, digest, done_at, result, ack = row[:12]
            if seq is None:
                return f"an offline decision ({request_id}) is outside the chain"
            if seq != expected:
                return f"offline decision {expected} is missing" if seq > expected else \
                    f"offline decision {seq} is out of place"
            if row_prev != prev or not seal.holds(mac, *_row_fields(
                    outbox_id, seq, str(row_prev), request_id, lane, release_id, used, decided_at, str(digest))):
                return f"offline decision {seq} was edited or moved"
            if full and _digest(row[12]) != digest:
                return f"offline decision {seq}'s report was edited"
            if done_at is not None and not seal.holds(ack, *_ack_fields(outbox_id, seq, mac, result or "",
                                                                               done_at)):
                return f"offline decision {seq} is marked reconciled without the service's answer"
            expected, prev = expected + 1, mac
        if expected - 1 != head_seq or prev != head_mac:
            return f"offline decisions {expected} to {head_seq} are missing" if expected - 1 < head_seq else \
                "its last offline decision is not the chain's head"
        return None

    def put(self, body: Mapping[str, Any]) -> bool:
        """Store a verify body (durably); False when its request_id was already stored (rule 2)."""
        request_id, lane = str(body["request_id"]), str(body.get("lane", ""))
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO verify_requests (request_id, lane, body, created_at) VALUES (?, ?, ?, ?)",
                (request_id, lane, json.dumps(body, sort_keys=True), self._wall()),
            )
        return cur.rowcount == 1

    def newest(self, lane: str) -> str | None:
        """The request_id put last for ``lane`` (by insertion, not by a wall clock that may step back)."""
        with self._lock:
            row = self._db.execute("SELECT request_id FROM verify_requests WHERE lane = ? ORDER BY rowid DESC LIMIT 1",
                                   (lane,)).fetchone()
        return None if row is None else str(row[0])

    def attempt(self, request_id: str) -> None:
        """Count a send (for logs and the operator: a request retried many times needs a look)."""
        with self._lock:
            self._db.execute("UPDATE verify_requests SET attempts = attempts + 1 WHERE request_id = ?", (request_id,))

    def done(self, request_id: str, response: Mapping[str, Any], *, told: str | None = None) -> None:
        """Record the final answer (a decision, or a refusal that a re-send cannot change), and with a
        committed allow the right it used here (rule 7), in one transaction. Rule 13: the answer's mark is
        ``told`` (``none``: nothing is to be told of it), else none yet: ``told`` is the lane's to call."""
        with self._lock:
            # Every answer carries its direction (SPEC.md): the stored body, a face capture in it, is
            # read only in the migration, for answers kept before.
            use = _use(response, {})
            self._db.execute("BEGIN IMMEDIATE")
            try:
                now = self._wall()
                self._db.execute("UPDATE verify_requests SET decided_at = ?, response = ?, told = NULL, "
                                 "told_at = NULL, told_mac = NULL WHERE request_id = ?",
                                 (now, json.dumps(response, sort_keys=True), request_id))
                if told is not None:
                    self._mark(request_id, told)
                if use is not None:
                    self._db.execute("INSERT OR REPLACE INTO online_uses SELECT request_id, lane, ?, ?, ? "
                                     "FROM verify_requests WHERE request_id = ?", (*use, now, request_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- what the barrier was told (rule 13, lane.py rule 11) ---------------------------------------

    def told(self, request_id: str, command: str) -> None:
        """Rule 13: mark the answer of ``request_id`` as told ``command`` (durably, once the barrier's command
        went), unless it is marked already with a mark that holds. Nothing for a request not answered."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT lane, decided_at, told, told_at, told_mac FROM verify_requests "
                                       "WHERE request_id = ? AND decided_at IS NOT NULL", (request_id,)).fetchone()
                if row is not None and not self._marked(request_id, *row):
                    self._mark(request_id, command)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def untold(self, lane: str, *, full: bool = True) -> list[Answered]:
        """Rule 13: the answered requests of ``lane`` whose barrier may not have heard their command (no mark,
        or, ``full``, one whose seal does not hold), oldest first. Not ``full``: the marks' absence only (a
        lane's thread, between two starts: the seals were walked at the first)."""
        with self._lock:
            if full:
                rows = self._db.execute(
                    "SELECT request_id, response, decided_at, told, told_at, told_mac FROM verify_requests "
                    "WHERE lane = ? AND decided_at IS NOT NULL ORDER BY rowid", (lane,)).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT request_id, response, decided_at, told, told_at, told_mac FROM verify_requests "
                    "WHERE lane = ? AND decided_at IS NOT NULL AND told IS NULL ORDER BY rowid", (lane,)).fetchall()
        return [Answered(str(r[0]), lane, dict(json.loads(r[1])) if r[1] else {}) for r in rows
                if not self._marked(str(r[0]), lane, *r[2:])]

    def _mark(self, request_id: str, told: str) -> None:
        """Rule 13, in the caller's transaction: the mark, sealed under the seal key when there is one."""
        lane, decided_at = self._db.execute("SELECT lane, decided_at FROM verify_requests WHERE request_id = ?",
                                            (request_id,)).fetchone()
        now = self._wall()
        mac = None if self._seal is None else self._seal.mac(*_told_fields(request_id, lane, decided_at, told, now))
        self._db.execute("UPDATE verify_requests SET told = ?, told_at = ?, told_mac = ? WHERE request_id = ?",
                         (told, now, mac, request_id))

    def _marked(self, request_id: str, lane: str, decided_at: float, told: str | None, told_at: float | None,
                mac: str | None) -> bool:
        """Rule 13: a mark that holds (under the seal key; without a secret, any mark: nothing to check it by)."""
        if told is None or told_at is None:
            return False
        return self._seal is None or self._seal.holds(mac, *_told_fields(request_id, lane, decided_at, told, told_at))

    def _seal_marks_from_before(self) -> None:
        """Rule 13, at start with a secret: seal the ``before`` marks a migration without one left unsealed
        (the latch command opened the file first), as the chain seals a file from before it (rule 10)."""
        assert self._seal is not None
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute("SELECT request_id, lane, decided_at, told_at FROM verify_requests "
                                        "WHERE told = ? AND told_mac IS NULL AND decided_at IS NOT NULL",
                                        (BEFORE,)).fetchall()
                for request_id, lane, decided_at, told_at in rows:
                    mac = self._seal.mac(*_told_fields(request_id, lane, decided_at, BEFORE, told_at))
                    self._db.execute("UPDATE verify_requests SET told_mac = ? WHERE request_id = ?", (mac, request_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if rows:
            log.warning("gate.outbox.marks_sealed: %s: %d answers recorded before the barrier's marks sealed as "
                        "they stand", self.path, len(rows), extra={"answers": len(rows)})

    def pending(self, lane: str | None = None) -> list[PendingRequest]:
        """Requests without a final answer, oldest first (rule 3); ``lane`` filters a shared file."""
        sql = "SELECT request_id, lane, body, created_at, attempts FROM verify_requests WHERE decided_at IS NULL"
        args: tuple[str, ...] = ()
        if lane is not None:
            sql, args = sql + " AND lane = ?", (lane,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at, rowid", args).fetchall()
        return [PendingRequest(r[0], r[1], dict(json.loads(r[2])), float(r[3]), int(r[4])) for r in rows]

    def response(self, request_id: str) -> dict[str, Any] | None:
        """The recorded answer, or ``None`` while pending or unknown."""
        with self._lock:
            sql = "SELECT response FROM verify_requests WHERE request_id = ?"
            row = self._db.execute(sql, (request_id,)).fetchone()
        return None if row is None or row[0] is None else dict(json.loads(row[0]))

    def answered(self, request_id: str) -> Answered | None:
        """The request with its final answer, or ``None`` while pending or unknown."""
        with self._lock:
            row = self._db.execute("SELECT lane, response FROM verify_requests WHERE request_id = ? "
                                   "AND response IS NOT NULL", (request_id,)).fetchone()
        return None if row is None else Answered(request_id, str(row[0]), dict(json.loads(row[1])))

    def overridden(self, answered: Answered, *, decision_id: str, release_id: str, officer: str, reason: str,
                   outcome: str, answer: Mapping[str, Any] | None) -> None:
        """Rule 7: keep an officer's override of ``answered`` (who, why, what the service said); the right
        it used here, if any, is ``note_use``'s to note, before this."""
        with self._lock:
            self._db.execute(
                "INSERT INTO overrides (request_id, lane, decision_id, release_id, officer, reason, outcome, "
                "answer, asked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (answered.request_id, answered.lane, decision_id, release_id, officer, reason, outcome,
                 None if answer is None else json.dumps(answer, sort_keys=True), self._wall()))

    def note_use(self, answered: Answered, release_id: str) -> None:
        """Rule 7: note the right ``release_id`` used here (``in``) against ``answered``, in a transaction of its
        own: an officer's override the service may have recorded, noted before ``overridden`` keeps its
        record (with the officer's text), so a record that fails never loses the use (review 162, finding 2).
        The only writer of such a use."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO online_uses VALUES (?, ?, ?, 'in', ?)",
                                 (answered.request_id, answered.lane, release_id, self._wall()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _used_here(self, used: str, release_id: Any) -> bool:
        """Whether this adapter used the right ``used`` (``in``, ``out``) already, offline or online: within
        the caller's transaction."""
        return self._db.execute(
            "SELECT 1 FROM offline_decisions WHERE used = ? AND release_id = ? "
            "UNION SELECT 1 FROM online_uses WHERE used = ? AND release_id = ?",
            (used, release_id, used, release_id)).fetchone() is not None

    def override_offline(self, answered: Answered, *, key: str, decision_id: str, release_id: str, officer: str,
                         reason: str, report: Mapping[str, Any]) -> bool:
        """Rules 7 and 10 (review 121, finding 2): an officer's override of a gate-in this adapter refused
        offline, in one transaction: kept (``overrides``, outcome ``offline``), and queued as an offline
        decision of its own under ``key`` (sealed in the chain like any, its report for the reconcile)
        with its right used here (``in``), so offline mode refuses a second truck and the service hears of
        it. False (nothing written) when the right is used here already: a second override, or a truck
        let in since."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._used_here("in", release_id):
                    self._db.execute("ROLLBACK")
                    return False
                now = self._wall()
                self._db.execute(
                    "INSERT INTO overrides (request_id, lane, decision_id, release_id, officer, reason, outcome, "
                    "answer, asked_at) VALUES (?, ?, ?, ?, ?, ?, 'offline', NULL, ?)",
                    (answered.request_id, answered.lane, decision_id, release_id, officer, reason, now))
                self._db.execute(
                    "INSERT INTO offline_decisions (request_id, lane, release_id, used, report, decided_at) "
                    "VALUES (?, ?, ?, 'in', ?, ?)",
                    (key, answered.lane, release_id, json.dumps(report, sort_keys=True), now))
                if self._seal is not None:
                    self._link(key)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if self._seal is not None:
                self._told()
        return True

    def offline_report(self, request_id: str) -> dict[str, Any] | None:
        """The report queued with the offline decision of ``request_id`` (what the reconcile sends)."""
        with self._lock:
            row = self._db.execute("SELECT report FROM offline_decisions WHERE request_id = ?",
                                   (request_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def overrides(self, request_id: str) -> list[dict[str, Any]]:
        """The overrides asked for this request, oldest first (the audit of a truck's passage)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT decision_id, release_id, officer, reason, outcome, answer, asked_at FROM overrides "
                "WHERE request_id = ? ORDER BY id", (request_id,)).fetchall()
        return [{"decision_id": r[0], "release_id": r[1], "officer": r[2], "reason": r[3], "outcome": r[4],
                 "answer": None if r[5] is None else json.loads(r[5]), "asked_at": float(r[6])} for r in rows]

    def late(self, request_id: str, lane: str, reason: str, detail: Mapping[str, Any]) -> None:
        """Rule 5: note late news about a truck already decided (durably, like a ``put``)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO late_reads (request_id, lane, reason, detail, noted_at) VALUES (?, ?, ?, ?, ?)",
                (request_id, lane, reason, json.dumps(detail, sort_keys=True), self._wall()))

    def late_reads(self, request_id: str) -> list[tuple[str, dict[str, Any]]]:
        """What came late for this truck, oldest first: (reason, detail)."""
        with self._lock:
            rows = self._db.execute("SELECT reason, detail FROM late_reads WHERE request_id = ? ORDER BY rowid",
                                    (request_id,)).fetchall()
        return [(str(r[0]), dict(json.loads(r[1]))) for r in rows]

    # -- latches (rule 6, lane.py rule 9) -----------------------------------------------------------

    def latch(self, lane: str, request_id: str, reason: str) -> tuple[LaneLatch, bool]:
        """Latch ``lane`` (durably, before the barrier hears the hold) unless it is latched already:
        the latch it holds now, and whether this call set it."""
        with self._lock:
            while True:  # a clear from another process between the two statements: latch again
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO lane_latches (lane, latched_at, request_id, reason) VALUES (?, ?, ?, ?)",
                    (lane, self._wall(), request_id, reason))
                row = self._db.execute(_HELD_LATCH, (lane,)).fetchone()
                if row is not None:
                    return _latch(row), cur.rowcount == 1

    def held_latch(self, lane: str) -> LaneLatch | None:
        """The latch ``lane`` holds now, or None. Read from the file each time: a clear may come from
        another process (``quaygate gate-adapter --clear-latch``)."""
        with self._lock:
            row = self._db.execute(_HELD_LATCH, (lane,)).fetchone()
        return None if row is None else _latch(row)

    def held_latches(self) -> dict[str, LaneLatch]:
        """Every lane latched now, with the latch it holds: one read (``/healthz``, every lane at once)."""
        with self._lock:
            rows = self._db.execute(_HELD_LATCHES).fetchall()
        return {latch.lane: latch for latch in map(_latch, rows)}

    def latches(self, lane: str) -> list[LaneLatch]:
        """Every latch of ``lane`` still kept, oldest first (held or cleared)."""
        with self._lock:
            rows = self._db.execute(_LANE_LATCHES, (lane,)).fetchall()
        return [_latch(r) for r in rows]

    def latched_for(self, request_id: str) -> bool:
        """Whether ``request_id``'s truck was handed to an officer (lane.py rule 2): a latch, held or cleared,
        was set for it, or held it (``latched_holds``) while the lane was latched for another."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM lane_latches WHERE request_id = ? UNION ALL "
                                   "SELECT 1 FROM latched_holds WHERE request_id = ? LIMIT 1",
                                   (request_id, request_id)).fetchone()
        return row is not None

    def latched_hold(self, latch_id: int, lane: str, request_id: str, instead: str, reason: str) -> None:
        """Note a decision held by the latch ``latch_id`` (durably, before the barrier hears the hold)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO latched_holds (latch_id, lane, request_id, instead, reason, noted_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", (latch_id, lane, request_id, instead, reason, self._wall()))

    def latched_holds(self, latch_id: int) -> list[LatchedHold]:
        with self._lock:
            rows = self._db.execute("SELECT request_id, instead, reason, noted_at FROM latched_holds "
                                    "WHERE latch_id = ? ORDER BY rowid", (latch_id,)).fetchall()
        return [LatchedHold(str(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    def clear_latch(self, lane: str, latch_id: int, by: str, note: str | None = None) -> LaneLatch | None:
        """Clear the latch ``latch_id`` of ``lane`` if it still holds (one conditional UPDATE): the
        cleared latch, or None when that latch does not hold (cleared already, another lane's, unknown)."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE lane_latches SET cleared_at = ?, cleared_by = ?, note = ? "
                "WHERE id = ? AND lane = ? AND cleared_at IS NULL", (self._wall(), by, note, latch_id, lane))
            if cur.rowcount != 1:
                return None
            row = self._db.execute(_LATCH_BY_ID, (latch_id,)).fetchone()
        return _latch(row)

    def prune(self) -> int:
        """Delete decided rows older than ``keep_days``; pending rows, offline decisions the service has
        not acknowledged yet and latches still held (and what they held) are never pruned."""
        cutoff = self._wall() - self.keep_seconds
        with self._lock:
            old = self._clock() - self.keep_seconds
            self._decided_here = {k: v for k, v in self._decided_here.items() if v >= old}
            self._db.execute("DELETE FROM latched_holds WHERE latch_id IN "
                             "(SELECT id FROM lane_latches WHERE cleared_at IS NOT NULL AND cleared_at < ?)", (cutoff,))
            self._db.execute("DELETE FROM lane_latches WHERE cleared_at IS NOT NULL AND cleared_at < ?", (cutoff,))
            self._db.execute("DELETE FROM late_reads WHERE noted_at < ?", (cutoff,))
            self._db.execute("DELETE FROM overrides WHERE asked_at < ?", (cutoff,))
            self._prune_offline(cutoff)
            self._db.execute("DELETE FROM online_uses WHERE decided_at < ?", (cutoff,))
            cur = self._db.execute(
                "DELETE FROM verify_requests WHERE decided_at IS NOT NULL AND decided_at < ? AND request_id NOT IN "
                "(SELECT request_id FROM offline_decisions)", (cutoff,)
            )
        return int(cur.rowcount)

    def _prune_offline(self, cutoff: float) -> None:
        """Reconciled offline decisions older than ``cutoff``. Sealed (rule 10): only the chain's oldest ones,
        up to the first that must stay, the base moved past them in the same transaction; nothing while the
        chain does not hold (the evidence stays). Without a secret, never a decision of a chain."""
        if self._seal is None:
            self._db.execute("DELETE FROM offline_decisions WHERE reconciled_at IS NOT NULL AND decided_at < ? "
                             "AND seq IS NULL", (cutoff,))
            return
        if self._tampered is not None or self._verify(full=False) is not None:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            outbox_id, head_seq, head_mac, base_seq, base_prev, _ = self._db.execute(_CHAIN).fetchone()
            first_kept = self._db.execute(
                "SELECT MIN(seq) FROM offline_decisions WHERE reconciled_at IS NULL OR decided_at >= ?",
                (cutoff,)).fetchone()[0]
            first_kept = int(head_seq) + 1 if first_kept is None else int(first_kept)
            if first_kept > base_seq:
                (prev,) = self._db.execute("SELECT mac FROM offline_decisions WHERE seq = ?",
                                           (first_kept - 1,)).fetchone()
                self._db.execute("DELETE FROM offline_decisions WHERE seq < ?", (first_kept,))
                self._set_chain(outbox_id, head_seq, head_mac, first_kept, prev)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # -- offline decisions (offline.py) ------------------------------------------------------------

    def decide_offline(self, request_id: str, response: Mapping[str, Any], report: Mapping[str, Any], *,
                       refusal: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None,
                       ) -> Mapping[str, Any] | None:
        """Record a local decision and queue its report, atomically: the response recorded. None (nothing
        written) when the request was answered meanwhile or is unknown: the first final answer wins.

        Review 155, finding 2: an allow that uses a right looks again, in this transaction, whether the right
        was used here in its direction since offline mode read the uses (an officer's offline override,
        ``override_offline``, takes no lock of offline mode's); if so ``refusal`` (response, report: what the
        same rules give a right used here) is recorded instead, never the allow. No ``refusal`` given: the
        allow is not recorded at all (None)."""
        mono = self._clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                used = _used(response, report)
                release_id = report.get("release_id")
                if used is not None and self._used_here(used, release_id):
                    log.error("gate.outbox.used_meanwhile", extra={"request_id": request_id,
                                                                   "release_id": release_id, "used": used})
                    if refusal is None or _used(*refusal) is not None:
                        self._db.execute("ROLLBACK")
                        return None
                    response, report = refusal
                    used = None
                cur = self._db.execute(
                    "UPDATE verify_requests SET decided_at = ?, response = ? "
                    "WHERE request_id = ? AND decided_at IS NULL",
                    (self._wall(), json.dumps(response, sort_keys=True), request_id))
                if cur.rowcount != 1:
                    self._db.execute("ROLLBACK")
                    return None
                request = report.get("request") or {}
                self._db.execute(
                    "INSERT INTO offline_decisions (request_id, lane, release_id, used, report, decided_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (request_id, str(request.get("lane", "")), report.get("release_id"), used,
                     json.dumps(report, sort_keys=True), self._wall()))
                if self._seal is not None:
                    self._link(request_id)  # rule 10: the chain's next, in the same transaction
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if self._seal is not None:
                self._told()
            self._decided_here[request_id] = mono
        return response

    def now(self) -> float:
        """This outbox's wall clock (the time it stamps), in seconds."""
        return self._wall()

    def latest_stamp(self) -> float | None:
        """Rule 11: the latest wall-clock time stamped on an offline decision or its acknowledgement kept here
        (sealed with it, rule 10), or None. A wall clock reading earlier than this was wound back."""
        with self._lock:
            row = self._db.execute("SELECT MAX(decided_at), MAX(reconciled_at) FROM offline_decisions").fetchone()
        stamps = [float(t) for t in row if t is not None]
        return max(stamps) if stamps else None

    def offline_elapsed(self, request_id: str) -> tuple[float, float] | None:
        """Rule 11: how long ago ``request_id`` was decided offline here, in seconds, by the wall clock
        (negative when it reads earlier than the decision's time: wound back) and by the monotonic clock
        (since the decision when this process took it, else since this process started: the decision came
        before, so a lower bound). None when it was not decided offline here."""
        with self._lock:
            row = self._db.execute("SELECT decided_at FROM offline_decisions WHERE request_id = ?",
                                   (request_id,)).fetchone()
            mark = self._decided_here.get(request_id, self._started)
        if row is None:
            return None
        return self._wall() - float(row[0]), max(self._clock() - mark, 0.0)

    def offline_uses(self, *, rights: Iterable[str] | None = None) -> dict[str, set[str]]:
        """Release ids used here, by direction (``in``/``out``), for offline mode to count as used: let
        through offline, or committed by the service for a request of this outbox (rule 7), every one kept.
        ``rights``: only the uses of these release ids (those of the passes held; None: all).

        Never windowed by the time a use was stamped (review 121, finding 3): that time is this adapter's
        wall clock, and a clock held back during an online commit (NTP spoofed) stamped the use too early
        for a window of "since the oldest pass held" to reach it, so a second lane let the right in again
        offline. Every kept use of the rights in question is few rows (a right is used once each way), and
        a right once gated in never is nominated again (domain/release.py), so an old use misleads nothing.
        The chain is walked first (rule 10): a use deleted from it shows as ``tampered``."""
        self.check()
        sql = ("SELECT used, release_id FROM offline_decisions WHERE used IS NOT NULL AND release_id IS NOT NULL"
               "{only} UNION SELECT used, release_id FROM online_uses WHERE 1 = 1{only}")
        with self._lock:
            if rights is None:
                rows = self._db.execute(sql.format(only="")).fetchall()
            else:
                wanted = json.dumps(sorted(set(rights)))
                only = " AND release_id IN (SELECT value FROM json_each(?))"
                rows = self._db.execute(sql.format(only=only), (wanted, wanted)).fetchall()
        out: dict[str, set[str]] = {"in": set(), "out": set()}
        for used, release_id in rows:
            out.setdefault(str(used), set()).add(str(release_id))
        return out

    def unreconciled(self) -> list[tuple[str, dict[str, Any]]]:
        """Offline decisions not yet acknowledged by the service, oldest first: in the chain's order when sealed
        (rule 11: never by a wall clock that may have been wound back). Sealed (rule 10): each report
        carries its place (``outbox``: the chain's id and its ``seq``), and one whose own seal or digest
        does not hold is left out (not this adapter's words; kept in the file for a person): a decision
        whose neighbour was deleted is still one this adapter took, and goes to the service. One marked
        acknowledged without the service's sealed answer is not acknowledged: it goes again."""
        self.check()
        with self._lock:
            chain = self._db.execute(_CHAIN).fetchone() if self._seal is not None else None
            unacked = ["-"]
            if self._seal is not None and chain is not None:
                unacked += [str(r[3]) for r in self._db.execute(_LINKS + " WHERE reconciled_at IS NOT NULL")
                            if not self._holds(r[11], *_ack_fields(str(chain[0]), int(r[0] or 0), str(r[2]),
                                                                        r[10] or "", r[9]))]
            rows = self._db.execute(
                _LINKS.replace("SELECT ", "SELECT report, ") + " WHERE reconciled_at IS NULL OR request_id IN "
                f"({','.join('?' * len(unacked))}) ORDER BY seq IS NULL, seq, decided_at, rowid", unacked).fetchall()
        out: list[tuple[str, dict[str, Any]]] = []
        for row in rows:
            report, (seq, prev, mac, request_id, lane, release_id, used, decided_at, digest) = row[0], row[1:10]
            body = dict(json.loads(report))
            if self._seal is not None:
                outbox_id = "" if chain is None else str(chain[0])
                if seq is None or _digest(report) != digest or not self._holds(mac, *_row_fields(
                        outbox_id, seq, str(prev), request_id, lane, release_id, used, decided_at, str(digest))):
                    self._taint(f"offline decision {request_id} was edited")
                    continue
                body["outbox"] = {"id": outbox_id, "seq": int(seq)}
            out.append((str(request_id), body))
        return out

    def reconciled(self, request_id: str, result: Mapping[str, Any]) -> None:
        """Keep the service's answer; sealed (rule 10), bound to the decision's own seal."""
        text = json.dumps(result, sort_keys=True)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                now, ack = self._wall(), None
                if self._seal is not None:
                    row = self._db.execute("SELECT seq, mac FROM offline_decisions WHERE request_id = ?",
                                           (request_id,)).fetchone()
                    chain = self._db.execute(_CHAIN).fetchone()
                    if row is not None and row[0] is not None and chain is not None:
                        ack = self._seal.mac(*_ack_fields(str(chain[0]), int(row[0]), str(row[1]), text, now))
                self._db.execute("UPDATE offline_decisions SET reconciled_at = ?, result = ?, ack = ? "
                                 "WHERE request_id = ?", (now, text, ack, request_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def offline_result(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT result FROM offline_decisions WHERE request_id = ?",
                                   (request_id,)).fetchone()
        return None if row is None or row[0] is None else dict(json.loads(row[0]))

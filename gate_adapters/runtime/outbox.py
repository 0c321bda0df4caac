"""A durable local outbox of gate verify requests, in SQLite.

Why: a truck's request must survive a crash of the adapter between "asked the service" and "heard
the answer". The service answers the same ``request_id`` with the same decision and never uses a
right twice (SPEC.md "The gate verify call"), so the safe recovery is to re-send the SAME body.

Row lifecycle::

    put(body) ──► pending ──done(request_id, response)──► decided ──prune(older than keep_days)──► gone

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
   request went, lane.py rule 8) is kept beside its request as a ``late_reads`` row (``late``), so the
   audit of that truck's passage shows it; kept ``keep_days`` like a decided request. Nothing is sent
   for it: the service has decided, and only an officer at the lane can undo a wrong passage. A face
   for a truck whose request went without one (``late_face``, correlate.py rule 3a) is noted the same way.
6. A lane's latch (lane.py rule 9) lives here, beside the requests, so that a restart (a kill, a power
   cut) never silently unlatches a lane an officer was called to::

       (none) ──latch(lane) (an officer called)──► held ──clear(lane, latch id, by)──► cleared (kept keep_days)

   At most one latch is held per lane (a unique partial index: ``latch`` is one ``INSERT OR IGNORE``,
   never check-then-act); latch ids are never reused (``AUTOINCREMENT``), so a clear naming an old
   latch (a re-run command, a re-sent request) clears nothing. A cleared latch is marked with who
   cleared it and when, never deleted until pruned; a held one is never pruned. Every decision made
   while a lane is latched is noted against the latch (``latched_holds``) with the command it would
   have given, for the officer and the audit.
7. A right this adapter used counts as used here, whether the use was decided offline or online (SPEC.md
   "The gate verify call": a right is never used twice; gate_pass.py: one adapter never allows one
   right twice, even offline). ``done`` with a committed allow notes its release and direction in
   ``online_uses`` in the same transaction as the answer, and ``offline_uses`` returns those with the
   offline ones: after an online gate-in at one lane and a cut uplink, offline mode must not let the
   same badge and plate in again at another lane on a pass fetched before that gate-in. Kept
   ``keep_days`` like the request (a pass lives minutes). An officer's override of a refused gate-in
   (overrides.py) is such a use too: ``overridden`` keeps the override (``overrides``: who, why, what the
   service said) and, unless the service refused it for good, notes the right used (``in``) in
   ``online_uses`` against the refused request, in one transaction.
8. The file's schema is versioned (``PRAGMA user_version``, ``SCHEMA_VERSION``): an adapter upgraded in
   place migrates the file it finds, once, in one transaction (another process, the latch command,
   may open the same file). Version 1 added ``online_uses`` and filled it from the answers already kept;
   version 2 added ``overrides`` (nothing to fill: no adapter before it asked for one).
9. The file is made readable and writable by its owner only (0600), and one that group or others may write,
   or another user owns, is refused (``strict``, outside dev; a warning in dev): whoever may write it could
   forget the uses of rule 7, queue requests, or clear a latch (datafiles.py).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .datafiles import private_data_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verify_requests (
    request_id TEXT PRIMARY KEY,
    lane       TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    decided_at REAL,
    response   TEXT
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
    result        TEXT
);
CREATE INDEX IF NOT EXISTS offline_decisions_open ON offline_decisions (decided_at) WHERE reconciled_at IS NULL;
CREATE TABLE IF NOT EXISTS late_reads (
    request_id TEXT NOT NULL,  -- the truck it came too late for (not always in verify_requests: an evicted one)
    lane       TEXT NOT NULL,
    reason     TEXT NOT NULL,  -- 'late_face_mismatch'
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
CREATE TABLE IF NOT EXISTS latched_holds (
    latch_id   INTEGER NOT NULL REFERENCES lane_latches (id),
    lane       TEXT NOT NULL,
    request_id TEXT NOT NULL,
    instead    TEXT NOT NULL,  -- the command the decision gave: 'open' or 'hold'
    reason     TEXT NOT NULL,  -- the decision ('allow', 'deny', 'review') or why there was none
    noted_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS latched_holds_latch ON latched_holds (latch_id);
CREATE TABLE IF NOT EXISTS online_uses (
    request_id TEXT PRIMARY KEY REFERENCES verify_requests (request_id),
    lane       TEXT NOT NULL,
    release_id TEXT NOT NULL,
    used       TEXT NOT NULL,  -- 'in' | 'out': the service committed a gate-in or gate-out here (rule 7)
    decided_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS online_uses_decided ON online_uses (decided_at);
CREATE TABLE IF NOT EXISTS overrides (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  TEXT NOT NULL,  -- the refused request an officer overrode (verify_requests)
    lane        TEXT NOT NULL,
    decision_id TEXT NOT NULL,  -- the service's refused decision
    release_id  TEXT NOT NULL,  -- the right let in
    officer     TEXT NOT NULL,  -- who asked, and how ('J. Peeters (http)')
    reason      TEXT NOT NULL,
    outcome     TEXT NOT NULL,  -- 'overridden' | 'already_used' | 'unanswered' | 'refused' (overrides.py)
    answer      TEXT,           -- JSON: the service's answer or refusal; none when it did not answer
    asked_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS overrides_request ON overrides (request_id);
"""

# Rule 8: 0, a file made before versions (no online_uses); 1, online_uses; 2, overrides.
SCHEMA_VERSION = 2

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


class Outbox:
    """One SQLite file per lane or per adapter. Thread-safe."""

    def __init__(self, path: str | Path, *, keep_days: float = 7.0, wall: Callable[[], float] = time.time,
                 strict: bool = True) -> None:
        if keep_days <= 0:
            raise ValueError("keep_days > 0")
        self.path = Path(path)
        self.keep_seconds = keep_days * 86400.0
        self._wall = wall
        self._lock = threading.Lock()
        private_data_file(self.path, strict=strict, risk=OUTBOX_RISK)  # rule 9
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # rule 1: durable at commit, not just at checkpoint
        try:
            self._db.executescript(_SCHEMA)
            self._migrate()
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
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

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

    def done(self, request_id: str, response: Mapping[str, Any]) -> None:
        """Record the final answer (a decision, or a refusal that a re-send cannot change), and with a
        committed allow the right it used here (rule 7), in one transaction."""
        with self._lock:
            # Every answer carries its direction (SPEC.md): the stored body, a face capture in it, is
            # read only in the migration, for answers kept before.
            use = _use(response, {})
            self._db.execute("BEGIN IMMEDIATE")
            try:
                now = self._wall()
                self._db.execute("UPDATE verify_requests SET decided_at = ?, response = ? WHERE request_id = ?",
                                 (now, json.dumps(response, sort_keys=True), request_id))
                if use is not None:
                    self._db.execute("INSERT OR REPLACE INTO online_uses SELECT request_id, lane, ?, ?, ? "
                                     "FROM verify_requests WHERE request_id = ?", (*use, now, request_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

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
                   outcome: str, answer: Mapping[str, Any] | None, used: bool) -> None:
        """Rule 7: keep an officer's override of ``answered`` and, when ``used``, note its right used
        here (a gate-in) as an online commit is, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                now = self._wall()
                self._db.execute(
                    "INSERT INTO overrides (request_id, lane, decision_id, release_id, officer, reason, outcome, "
                    "answer, asked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (answered.request_id, answered.lane, decision_id, release_id, officer, reason, outcome,
                     None if answer is None else json.dumps(answer, sort_keys=True), now))
                if used:
                    self._db.execute("INSERT OR REPLACE INTO online_uses VALUES (?, ?, ?, 'in', ?)",
                                     (answered.request_id, answered.lane, release_id, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

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
            self._db.execute("DELETE FROM latched_holds WHERE latch_id IN "
                             "(SELECT id FROM lane_latches WHERE cleared_at IS NOT NULL AND cleared_at < ?)", (cutoff,))
            self._db.execute("DELETE FROM lane_latches WHERE cleared_at IS NOT NULL AND cleared_at < ?", (cutoff,))
            self._db.execute("DELETE FROM late_reads WHERE noted_at < ?", (cutoff,))
            self._db.execute("DELETE FROM overrides WHERE asked_at < ?", (cutoff,))
            self._db.execute("DELETE FROM offline_decisions WHERE reconciled_at IS NOT NULL AND decided_at < ?",
                             (cutoff,))
            self._db.execute("DELETE FROM online_uses WHERE decided_at < ?", (cutoff,))
            cur = self._db.execute(
                "DELETE FROM verify_requests WHERE decided_at IS NOT NULL AND decided_at < ? AND request_id NOT IN "
                "(SELECT request_id FROM offline_decisions)", (cutoff,)
            )
        return int(cur.rowcount)

    # -- offline decisions (offline.py) ------------------------------------------------------------

    def decide_offline(self, request_id: str, response: Mapping[str, Any], report: Mapping[str, Any]) -> bool:
        """Record a local decision and queue its report, atomically. False (nothing written) when the
        request was answered meanwhile or is unknown: the first final answer wins."""
        request = report.get("request") or {}
        used = None
        if response.get("decision") == "allow" and request.get("mode") == "commit":
            used = str(request.get("direction"))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "UPDATE verify_requests SET decided_at = ?, response = ? "
                    "WHERE request_id = ? AND decided_at IS NULL",
                    (self._wall(), json.dumps(response, sort_keys=True), request_id))
                if cur.rowcount != 1:
                    self._db.execute("ROLLBACK")
                    return False
                self._db.execute(
                    "INSERT INTO offline_decisions (request_id, lane, release_id, used, report, decided_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (request_id, str(request.get("lane", "")), report.get("release_id"), used,
                     json.dumps(report, sort_keys=True), self._wall()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    def offline_uses(self, *, online_since: float | None = None) -> dict[str, set[str]]:
        """Release ids used here, by direction (``in``/``out``), for offline mode to count as used: let
        through offline, or committed by the service for a request of this outbox (rule 7). ``online_since``
        (wall-clock seconds): only the online uses from then on, those a pass fetched earlier cannot show
        (an older one is in every pass issued since); the offline ones all, the service may not know them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT used, release_id FROM offline_decisions WHERE used IS NOT NULL AND release_id IS NOT NULL "
                "UNION SELECT used, release_id FROM online_uses WHERE decided_at >= ?",
                (float("-inf") if online_since is None else online_since,)
            ).fetchall()
        out: dict[str, set[str]] = {"in": set(), "out": set()}
        for used, release_id in rows:
            out.setdefault(str(used), set()).add(str(release_id))
        return out

    def unreconciled(self) -> list[tuple[str, dict[str, Any]]]:
        """Offline decisions not yet acknowledged by the service, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT request_id, report FROM offline_decisions WHERE reconciled_at IS NULL "
                "ORDER BY decided_at, rowid"
            ).fetchall()
        return [(str(r[0]), dict(json.loads(r[1]))) for r in rows]

    def reconciled(self, request_id: str, result: Mapping[str, Any]) -> None:
        with self._lock:
            self._db.execute("UPDATE offline_decisions SET reconciled_at = ?, result = ? WHERE request_id = ?",
                             (self._wall(), json.dumps(result, sort_keys=True), request_id))

    def offline_result(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT result FROM offline_decisions WHERE request_id = ?",
                                   (request_id,)).fetchone()
        return None if row is None or row[0] is None else dict(json.loads(row[0]))

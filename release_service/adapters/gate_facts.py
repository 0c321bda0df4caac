"""The gate decision's facts from Redis, read through to PostgreSQL (issue 5, "Hot path").

PostgreSQL stays the truth. Redis holds copies of what a decision reads: the terminal's policy, the
rights of a container (each with whether its holder is active: port security's deactivation or
reactivation of an organisation touches ``HOLDERS``, which replaces the rights' epoch, so every rights
copy's generation), and a badge with its holder's status (port security's suspension: identity's
suspension and reinstatement touch the badges' family, so they replace every badge copy's generation)
and port-ban facts (the holder's bans, any time and scope, and when the list in force was issued:
screening is computed at decision time, so a ban that starts or ends, or a list that grows stale,
counts at once, and with the reading process's own settings, the list's maximum age and whether a list
is required, never those of the process that filled the copy: review 169).

Exact by generations. Every copy is stored under the generation of its family (one per container
for rights; one each for badges, bans and policies), and a write that commits in PostgreSQL replaces
that generation afterwards (quaygate/invalidation.py hands over what each committed transaction
touched). A reader reads the generations and the copies in one script, one round trip; a copy missed
is read from PostgreSQL and stored under the generation read BEFORE it, so a copy filled while a
write committed is stored under a generation already replaced, and nobody reads it again.
Generations are made by Redis from its clock and a counter (``<seconds>.<micro>.<n>``), never
reused, even across a Redis restart that lost them: a copy filled before a restart cannot come back
to life under a generation made after it. Copies and generations expire (``ttl``), which bounds
memory.

Pending before the commit. Just before a write commits (``committing``), its families are marked
pending in Redis: a mark per transaction, kept with the ttl, and a pending generation ('p' first)
under which no copy is found or filled, so every process reads those facts from PostgreSQL. The
invalidation after the commit lifts its mark and makes a plain generation again (unless another
writer's mark is still on). So a writer that loses Redis between its commit and its invalidation,
or dies there, leaves every other process reading PostgreSQL, never trusting an old copy; the mark
expires with the ttl. A mark nobody lifts expires after ``pending_ttl`` (30 s); the facts are cached
again then, read after the commit. A full Redis (OOM under noeviction) takes marks and invalidations
all the same (``_ALLOW_OOM``).

Changes recorded in PostgreSQL too. A writer that cannot mark (Redis failing for it, or its breaker
open) still commits: PostgreSQL is the truth and a badge office's block must never wait on a cache.
Its invalidation is owed, and the other servers do not depend on it: every commit that changes a gate
fact, marked or not, writes what it touched into ``gate_fact_changes`` in its own transaction
(``committing``), and every server's drainer polls that table (``catch_up``, every ``CATCH_UP_EVERY``
second) and replaces those generations in Redis, each change once whoever polls first (``_CAUGHT_UP``).
So a writer cut off from Redis (a partition of one replica, a paused Redis the others never saw
fail) leaves the gates on their old copy for about a poll, no longer until it reaches Redis again or the
copy expires (review 169); so does a commit that outlasts its mark and then loses its invalidation.
Written always, not only when a mark fails (a mark that timed out may have been taken, and a mark
taken may expire before a slow commit): one insert per change, rare next to checks, and one more
generation per change; nothing on a check's path. The table keeps an hour (``prune_changes``).
The gate's own moves (``moving`` on the event loop, ``holding`` on the threads) mark and record nothing:
they change one right, whose copy only a check reads (a commit reads rights from PostgreSQL and its move
is guarded by the right's version), and they add no round trip to the commit.

Remembered copies (``recall``): each process keeps the copies it read last, parsed, with the
generations they were read under. A check on facts read before is decided on those at once and kept
by one script (``keep_if_current``) that records it only if every one of those generations is still
current (and the request_id is free, and the caller's revocation entries are unset), all in one
atomic step: one round trip instead of two. A change committed before that step has replaced a
generation, so nothing is kept and the check is decided again on the facts read afresh; a change
after it is ordered after the decision, as it is for a read-then-keep check. The memory is bounded
(``NEAR_MAX``) and trusted for nothing on its own.

Check decisions are kept without PostgreSQL on the hot path: one script claims (terminal, request_id)
(SET NX, kept ``request_ttl``) and appends the decision to a Redis stream in the same step; a drainer
(``drain``, run by the background workers of every server process, a consumer group, XAUTOCLAIM of
a dead consumer's entries) writes them into ``gate_decisions`` in batches. Commit decisions go to
PostgreSQL in the gate move's own transaction, and are copied here after it commits.
The stream is never trimmed: each entry is a decision answered at the gate (an override names its
decision_id) whose request key expires, and leaves the stream only once the drainer wrote it (XACK,
XDEL). It is bounded instead: a script that finds the stream at ``stream_cap`` entries (XLEN: what
is not drained yet, and what a drainer read and has not acknowledged) keeps nothing and says 'full';
the caller decides that check the long way and records it in PostgreSQL (503 when PostgreSQL is down
too). Logged (``release.gate_facts.stream_full``, an error: the drainers are behind, or PostgreSQL is
away) and counted (``stream_full``); for ``FULL_PAUSE`` seconds after, this process sends no keep.

Not durable. Redis keeps nothing on disk (quaygate/dataset.py): a restart or a failover to a replica
loses the check decisions not drained yet, usually those of less than one drain pause (``PAUSE``,
0.2 s), but every one kept while PostgreSQL was away or no drainer ran (up to ``stream_cap``). Their
decision_ids were answered and are found nowhere (an override of such a refusal answers 404), and
their request keys went with them (a retry is decided afresh). Commit decisions are not at risk.

Redis unreachable, slow or failing: ``FactsUnavailable`` is raised, the caller falls back to
PostgreSQL, and this cache is skipped for ``cooldown`` seconds (a breaker: a dead Redis costs one
timeout, not one per request). Invalidations that could not be sent are kept and sent again.

Another dataset. A Redis started again from an older snapshot, or a replica promoted that missed the
last writes, has older generations back with their copies, and no call need fail: a connection dropped
while idle, or a worker thread's made anew, just connects to it. Every connection here, each worker
thread's and the event loop's, greets first (quaygate/dataset.py ``GREETING``, once per connection):
finding data another server wrote (this part's marker names another ``run_id``), it deletes every
family's generation in the same atomic step, before the connection's first call, so every copy, filed
under a generation, is unreachable and a remembered copy's keep finds its generation moved, for every
process, one that never saw the old dataset included. It also finds the epoch moved (``_greeted``):
Redis is then treated as one that failed, and every generation is replaced before a copy is trusted
(``_recover``); a reply read by a call during which that happened (the call that made the connection,
those waiting on the same connect) is thrown away (``_vouched``). Not covered: a proxy that keeps
this process's connection open while the server behind it changes (quaygate/dataset.py, Limits).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import sqlalchemy as sa

from quaygate import dataset, invalidation, jsonbody
from quaygate.redisline import Line, Pipelined, Script
from quaygate.schema import gate_decisions, gate_fact_changes
from release_service.domain.gate import (
    BadgeFacts,
    BadgeRead,
    NominationFacts,
    RightFacts,
    ScreeningResult,
    TerminalPolicy,
)
from release_service.domain.release import FaceAgainst
from release_service.domain.screening import BanWindow, screen
from release_service.ports import ROW_ENTRIES, FactsUnavailable, GateSnapshot, Kept, Recalled, StoredDecision

from .audit import WRITER_TXID, SqlAuditLog
from .sqla.gate import SqlGateStore, policy_dict
from .sqla.gate_move import split_entries
from .sqla.uow import SqlUnitOfWork

log = logging.getLogger(__name__)

STREAM = "decisions"
REFUSED = "decisions:refused"  # kept decisions gate_decisions refused (``_insert_each``), for an operator
REFUSED_CAP = 10_000
# Every family's generation: rights (the epoch of every container's), badges, bans, policies.
EVERYTHING = (invalidation.RIGHTS, invalidation.BADGES, invalidation.BANS, invalidation.POLICY)
GROUP = "pg"

# KEYS: none (every key is named from ARGV under the prefix). ARGV: prefix, terminal, badge key ('' when
# none), request key ('' when none), ttl, n, n names to read as they are (``also``: the caller's token
# revocation entries), containers... Returns the recorded request (or false), then the policy generation
# and copy, the badge generation and copy, a generation and copy per container, then the n values.
_READ = Script("""
local p = ARGV[1]
local function gen(name)
  local g = redis.call('GET', p .. 'g:' .. name)
  if not g then
    local t = redis.call('TIME')
    g = t[1] .. '.' .. t[2] .. '.' .. redis.call('INCR', p .. 'g:seq')
    redis.call('SET', p .. 'g:' .. name, g, 'EX', ARGV[5], 'NX')
    g = redis.call('GET', p .. 'g:' .. name)
  end
  return g
end
local out = {}
out[1] = false
if ARGV[4] ~= '' then out[1] = redis.call('GET', p .. 'req:' .. ARGV[4]) end
local gp = gen('policy')
out[2] = gp
out[3] = redis.call('GET', p .. 'policy:' .. ARGV[2] .. ':' .. gp)
local gb = gen('badges') .. '/' .. gen('bans')
out[4] = gb
out[5] = false
if ARGV[3] ~= '' then out[5] = redis.call('GET', p .. 'badge:' .. ARGV[3] .. ':' .. gb) end
local n = tonumber(ARGV[6])
local gr = ''
if #ARGV >= 7 + n then gr = gen('rights') end  -- a commit asks for no rights: none of their generations
for i = 7 + n, #ARGV do
  local g = gen('r:' .. ARGV[i]) .. '/' .. gr
  out[#out + 1] = g
  out[#out + 1] = redis.call('GET', p .. 'r:' .. ARGV[i] .. ':' .. g)
end
for i = 7, 6 + n do
  out[#out + 1] = redis.call('GET', ARGV[i])
end
return out
""")

# ARGV: prefix, ttl, a request key ('' when none), its answer, the answer's ttl, the marks' ttl, then per
# family named: its name, k, and the k pending marks to lift (``committing``; their transactions ended). A
# new generation for each (``_RENEW``); then
# the answer kept under the request key (a commit's invalidations and its decision, in one round trip:
# ``remember`` while ``holding``).
# A family's new generation (``_BUMP``, ``_CAUGHT_UP``): under prefix ``p`` at Redis's time ``t``, kept
# ``ttl``; still pending ('p' first, kept ``pending_ttl``, no longer than a mark) while another writer's
# unexpired mark is on it. One rule for both scripts.
_RENEW = """
local function renew(p, t, name, ttl, pending_ttl)
  local pend = p .. 'pend:' .. name
  local g = t[1] .. '.' .. t[2] .. '.' .. redis.call('INCR', p .. 'g:seq')
  local ex = ttl
  if redis.call('EXISTS', pend) == 1 then
    redis.call('ZREMRANGEBYSCORE', pend, '-inf', t[1])
    if redis.call('ZCARD', pend) > 0 then
      g = 'p' .. g
      ex = pending_ttl
    end
  end
  redis.call('SET', p .. 'g:' .. name, g, 'EX', ex)
end
"""
_BUMP_SOURCE = _RENEW + """
local p = ARGV[1]
local t = redis.call('TIME')
local i, n = 7, 0
while i <= #ARGV do
  local k = tonumber(ARGV[i + 1])
  if k > 0 then redis.call('ZREM', p .. 'pend:' .. ARGV[i], unpack(ARGV, i + 2, i + 1 + k)) end
  renew(p, t, ARGV[i], ARGV[2], ARGV[6])
  i = i + 2 + k
  n = n + 1
end
if ARGV[3] ~= '' then redis.call('SET', ARGV[3], ARGV[4], 'EX', ARGV[5]) end
return n
"""
_BUMP = Script(_BUMP_SOURCE)

# A full Redis (maxmemory reached, noeviction: quaygate/dataset.py) refuses every write that may grow it
# (OOM). An invalidation must land all the same: refused, another process would trust its old copy once
# Redis has room again (a badge blocked in PostgreSQL let through). So the pending marks (``_MARK``) and the
# invalidations without an answer (``_INVALIDATE``: ``_BUMP`` with no request key) run flagged allow-oom
# (Redis 7 script flags): what they write is a mark and a generation per family a commit to PostgreSQL
# touched, small, as many as those commits (never as many as requests anyone may send), and expiring. A
# commit's answer is none of these: on a full Redis the invalidations go alone, and the answer waits
# (``_unsent``) until Redis has room.
_ALLOW_OOM = "#!lua flags=allow-oom"
_INVALIDATE = Script(_ALLOW_OOM + _BUMP_SOURCE)

# ARGV: prefix, the marks' ttl, a mark, name...: each family named is pending from now (``committing``,
# just before a commit that changes it): the mark is kept, and the family gets a pending generation ('p'
# first), both for the marks' ttl. A reader finds no copy under it and fills none; ``_BUMP`` lifts the
# mark. One never lifted (its writer lost Redis or died) expires: the next reader makes a plain
# generation, and the copies it fills are read after that commit. Allowed on a full Redis (``_ALLOW_OOM``).
_MARK = Script(_ALLOW_OOM + """
local p = ARGV[1]
local t = redis.call('TIME')
local upto = tonumber(t[1]) + tonumber(ARGV[2])
for i = 4, #ARGV do
  local pend = p .. 'pend:' .. ARGV[i]
  redis.call('ZADD', pend, upto, ARGV[3])
  redis.call('EXPIRE', pend, ARGV[2])
  local g = 'p' .. t[1] .. '.' .. t[2] .. '.' .. redis.call('INCR', p .. 'g:seq')
  redis.call('SET', p .. 'g:' .. ARGV[i], g, 'EX', ARGV[2])
end
return #ARGV - 3
""")

# ARGV: prefix, ttl, the marks' ttl, then per change recorded in PostgreSQL (``catch_up``): its id, k, and
# the k generation names it touched. A change not taken yet (its id claimed, SET NX, kept ``ttl``: every
# server polls, and the first one takes it) gets a new generation for each name, pending while another
# writer's mark is on it, as ``_BUMP`` makes them. Returns how many changes were taken here. Allowed on a
# full Redis, as every invalidation (``_ALLOW_OOM``).
_CAUGHT_UP = Script(_ALLOW_OOM + _RENEW + """
local p = ARGV[1]
local t = redis.call('TIME')
local i, n = 4, 0
while i <= #ARGV do
  local k = tonumber(ARGV[i + 1])
  if redis.call('SET', p .. 'chg:' .. ARGV[i], '1', 'NX', 'EX', ARGV[2]) then
    for j = i + 2, i + 1 + k do
      renew(p, t, ARGV[j], ARGV[2], ARGV[3])
    end
    n = n + 1
  end
  i = i + 2 + k
end
return n
""")

# What changed since a poll's horizon (``catch_up``), with the horizon of this statement's snapshot: every
# transaction below it has ended, so a change not visible now has a txid at or above it.
_CHANGES_PG = sa.text(
    "SELECT h.xmin, c.id, c.names FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin) h "
    "LEFT JOIN gate_fact_changes c ON c.txid >= :since ORDER BY c.seq")
CHANGES_KEPT = timedelta(hours=1)  # the record of changes kept: far longer than any copy (``ttl``) lives
_CATCH_UP_BATCH = 2_000  # arguments per ``_CAUGHT_UP`` at most (a server starting reads the last hour's)

# ARGV: prefix, ttl, then key, value pairs: the copies read through, kept (one round trip).
_FILL = Script("""
for i = 3, #ARGV, 2 do
  redis.call('SET', ARGV[1] .. ARGV[i], ARGV[i + 1], 'EX', ARGV[2])
end
return (#ARGV - 2) / 2
""")

# KEYS: the request key, the stream. ARGV: the recorded answer, its ttl, the decision row, the stream's cap.
# Returns false (kept), the answer recorded first under the request_id (a twin), or 'full': the stream
# holds its cap of entries not drained yet, and nothing was kept (never trimmed: an entry trimmed before
# it is drained is a decision answered and lost).
_RECORD = Script("""
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[4]) then
  return redis.call('GET', KEYS[1]) or 'full'
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('XADD', KEYS[2], '*', 'row', ARGV[3])
  return false
end
return redis.call('GET', KEYS[1])
""")

# A check decided on the copies this process read last (``recall``), kept only if they are still current.
# KEYS: the request key, the stream. ARGV: the recorded answer, its ttl, the decision row, the stream's
# cap, the prefix, n, n names read as they are (``also``), then (family, generation) pairs: the
# generations the copies were read under. Returns what it did ('kept', 'twin', 'also': a name is set,
# 'moved': a generation was replaced or has expired, 'full': the stream is at its cap, as ``_RECORD``),
# the twin's answer (or false), then the n values.
_KEEP = Script("""
local n = tonumber(ARGV[6])
local out = {'', false}
local set = false
for i = 7, 6 + n do
  local v = redis.call('GET', ARGV[i])
  out[#out + 1] = v
  if v then set = true end
end
local prev = redis.call('GET', KEYS[1])
if prev then
  out[1] = 'twin'
  out[2] = prev
  return out
end
if set then
  out[1] = 'also'
  return out
end
for i = 7 + n, #ARGV, 2 do
  if redis.call('GET', ARGV[5] .. 'g:' .. ARGV[i]) ~= ARGV[i + 1] then
    out[1] = 'moved'
    return out
  end
end
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[4]) then
  out[1] = 'full'
  return out
end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'row', ARGV[3])
out[1] = 'kept'
return out
""")

# What a row of kept decisions can be refused with, the database up: a value it cannot store, a
# constraint, a row that does not parse (SQLite's way). PostgreSQL away is none of these.
_REFUSED_ROW = (sa.exc.DataError, sa.exc.IntegrityError, ValueError, KeyError, TypeError)

# Kept decisions (JSON objects named like gate_decisions' columns) into gate_decisions, on PostgreSQL,
# with the audit entries each row inserted now carries (``ports.ROW_ENTRIES``: a face match result the gate
# claimed, port security's badge alarm; a row drained again, or refused, writes none).
_COLUMNS = ", ".join(c.name for c in gate_decisions.c)
# Returns the ids of the rows neither inserted nor there already: another decision holds their
# (terminal, request_id) (a check whose id came back after its Redis key expired), ``_clashed``.
_INSERT_FROM_JSON = sa.text(
    "WITH raw AS MATERIALIZED (SELECT CAST(:rows AS jsonb) AS a), "  # noqa: S608
    "given AS (SELECT p.* FROM raw, jsonb_populate_recordset(NULL::gate_decisions, raw.a) p), "
    f"ins AS (INSERT INTO gate_decisions ({_COLUMNS}) SELECT {_COLUMNS} FROM given "  # our own schema's column names
    "ON CONFLICT DO NOTHING RETURNING id, decided_at), "
    "audited AS (INSERT INTO audit_log (at, kind, actor, subject, data, txid) "
    "SELECT i.decided_at, r->k->>'kind', r->k->'actor', r->k->>'subject', r->k->'data', "
    "pg_current_xact_id()::text::bigint "
    "FROM raw, jsonb_array_elements(raw.a) r JOIN ins i ON i.id = (r->>'id')::uuid, "
    f"unnest(ARRAY[{', '.join(repr(k) for k in ROW_ENTRIES)}]) k "  # our own constants: 'face_claim', ...
    "WHERE jsonb_typeof(r->k) = 'object') "
    "SELECT g.id FROM given g WHERE g.id NOT IN (SELECT id FROM ins) "
    "AND NOT EXISTS (SELECT 1 FROM gate_decisions d WHERE d.id = g.id)")


class RedisGateFacts:
    def __init__(self, client: redis.Redis, engine: sa.Engine, uow: Callable[[], SqlUnitOfWork], *,
                 prefix: str = "qg:gate:", ttl: int = 600, request_ttl: int = 900, cooldown: float = 1.0,
                 stream_cap: int = 2_000_000, pending_ttl: int = 30,
                 greeting: Callable[..., tuple[Any, ...]] | None = None) -> None:
        """``greeting``: the identity cache's (quaygate/cache.py ``RedisCache.epoch_greeting``), which
        makes the command every connection here sends first, given this object's marker and the
        generations to forget on another dataset (quaygate/dataset.py): the DPoP claims made on the
        pipelined connection (``claim_async``) are refused for a proof from before the dataset's epoch,
        which that greeting keeps current. Without one (no identity cache in Redis), an epoch of this
        object's own (``<prefix>dataset:epoch``). Its answer says too when the copies here were read
        from another dataset (``_greeted``). ``stream_cap``: the kept check decisions not drained yet past
        which a check is recorded in PostgreSQL instead (``_RECORD``)."""
        self._r = client
        self._engine = engine
        self._uow = uow
        # This process's screening settings (the ban list's maximum age, whether a list is required): a
        # badge copy is screened with them, whoever filled it (review 169: a copy filled by a server on
        # older settings was screened with those, after a rollout that tightened them).
        self._screening = uow().screening_settings
        self._p = prefix
        self._ttl = ttl
        # Seconds a pending mark lives when nobody lifts it: far longer than the commit it stands for
        # (made just before the COMMIT statement), short enough that a writer that died costs
        # PostgreSQL reads of those facts for that long only.
        self._pending_ttl = pending_ttl
        self._request_ttl = request_ttl
        self._cooldown = cooldown
        self._cap = stream_cap
        self._full_until = 0.0  # the stream was found full: no keep is sent until then (``_stream_full``)
        self._full = 0  # keeps that found the stream full (``stream_full``)
        # The drainer blocks on the stream for longer than a gate decision waits: its own connection.
        kwargs = dict(client.connection_pool.connection_kwargs)
        kwargs.update(socket_timeout=10.0)
        self._drain_client = redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=client.connection_pool.connection_class, max_connections=2, **kwargs))
        # Every connection made, a worker thread's or the event loop's, greets first, once (quaygate/
        # dataset.py ``GREETING``): Redis must evict nothing (``EvictingRedis``: a pending mark evicted
        # would let a stale copy be trusted); and data another server wrote (a Redis started from an older
        # snapshot, a replica promoted) has every family's generation deleted before the connection's
        # first call (this marker, these names): every copy is filed under one (a container's rights
        # under the rights' generation too), so none is reachable. Allowed on a full Redis, as the marks
        # and invalidations it comes before.
        epoch = greeting if greeting is not None else functools.partial(dataset.greeting, prefix + "dataset:epoch")
        self._greeting = functools.partial(epoch, prefix + "dataset", [prefix + "g:" + name for name in EVERYTHING],
                                           allow_oom=True)
        self._line = Line(client, greeting=self._greeting, greeted=self._greeted)
        # The loop's calls when there is no pipelined connection (a Unix socket, Sentinel, OCSP checks): threads
        # of their own, so a Redis that stalls holds up neither the loop nor its default executor
        # (name lookups, other libraries' blocking work).
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="gate-facts")
        # The event loop's: sent together, the loop never held.
        self._pipe = Pipelined(client, greeting=self._greeting, greeted=self._greeted)
        self._dataset: Any = None  # the epoch the last connection was greeted under
        self._down_until = 0.0
        self._trips = 0  # times Redis was seen failing
        self._suspect = False  # Redis failed since the last success: invalidate everything first
        # Generations to replace that Redis did not take yet, each with the turn it was last asked for:
        # a send that succeeds clears a name only if nobody asked for it again meanwhile (a commit
        # after that send was made is not covered by it).
        self._owed: dict[str, int] = {}
        self._asked = 0
        # Pending marks (``committing``) of this process's transactions that ended, by family: lifted by
        # the next send of that family's invalidation that Redis takes.
        self._lift: dict[str, set[str]] = {}
        self._mark_prefix = uuid.uuid4().hex[:12] + "."
        self._marks = itertools.count(1)
        # Of those, the ones a send failed for, with the turn it was asked for: until a later send takes
        # them, no cached copy is trusted (``_breaker``). One merely in flight holds nobody up: its
        # commit's answer is not out yet.
        self._failed: dict[str, int] = {}
        # Answers ``remember`` could not write, by request key: Redis may hold another answer under the
        # id (a check kept there by a call that timed out here, then decided and recorded in PostgreSQL),
        # or none, which a cached check takes for "not decided yet". Written once Redis is back
        # (``_recover``), before any copy is trusted.
        self._unanswered: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._holds = threading.local()  # ``holding``: this thread's invalidations, held for ``remember``
        self._drainer: Drainer | None = None
        self._closed = False
        # The changes recorded in PostgreSQL polled so far (``catch_up``): on PostgreSQL, the horizon of the
        # last poll's snapshot and the ids of the changes at or above it taken already; on SQLite, whose
        # writers commit one at a time in the order they number, the last number taken.
        self._since = 0
        self._seen: set[uuid.UUID] = set()
        self._catching = threading.Lock()
        # The copies this process read last, parsed, with the generations they were read under: a check
        # decided on them is kept only if those are still current (``keep_if_current``), one round trip.
        self._near: dict[tuple[str, str], tuple[_Under, Any]] = {}

    @classmethod
    def from_url(cls, url: str, engine: sa.Engine, uow: Callable[[], SqlUnitOfWork], **kw: Any) -> RedisGateFacts:
        # A gate decision waits for Redis at most this long before deciding from PostgreSQL.
        client = redis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25,
                                      health_check_interval=30)
        facts = cls(client, engine, uow, **kw)
        invalidation.install(engine, facts.committed, facts.committing)
        return facts

    # ---- reading ---------------------------------------------------------------------------------

    def read(self, *, terminal: str, request_id: str, badge: BadgeRead | None, containers: Sequence[str],
             now: datetime, through: bool = True, within: SqlUnitOfWork | None = None,
             also: Sequence[str] = ()) -> GateSnapshot | None:
        """The facts; a miss is read through to PostgreSQL and kept, or, with ``through=False``, the
        answer is None (the caller is on the event loop and must not wait for PostgreSQL). ``within``:
        the caller's open unit of work, read in before it writes (a gate commit saves a connection and a
        transaction); what it read had committed, so it is kept under the generation read before it.
        ``also``: Redis names read in the same round trip, their values in ``GateSnapshot.also``."""
        badge_key = SqlGateStore.badge_key(badge) if badge is not None else None
        args = self._read_args(terminal, request_id, badge_key, containers, also)
        out = self._call(lambda: self._line.run(_READ, [], args))
        return self._snapshot(out, terminal=terminal, badge=badge, badge_key=badge_key, containers=containers,
                              now=now, through=through, within=within, also=also)

    async def read_cached_async(self, *, terminal: str, request_id: str, badge: BadgeRead | None,
                                containers: Sequence[str], now: datetime, also: Sequence[str] = ()
                                ) -> GateSnapshot | None:
        """``read(through=False)`` from the event loop, pipelined (``Pipelined``): None when something is
        not cached (the caller decides in a worker thread, which reads it through)."""
        if not self._pipe.available:  # a Unix socket, Sentinel: blocking, so off the loop
            return await self._off_loop(functools.partial(
                self.read, terminal=terminal, request_id=request_id, badge=badge, containers=containers, now=now,
                through=False, also=also))
        badge_key = SqlGateStore.badge_key(badge) if badge is not None else None
        out = await self._call_async(_READ, [], self._read_args(terminal, request_id, badge_key, containers, also))
        return self._snapshot(out, terminal=terminal, badge=badge, badge_key=badge_key, containers=containers,
                              now=now, through=False, within=None, also=also)

    async def claim_async(self, keys: list[str], args: list[Any]) -> dataset.Claim:
        """A single-use claim of another part in the same Redis (a DPoP proof's, identity/dpop.py
        ``claim_call``: quaygate/dataset.py ``CLAIM``, ``SET NX`` refused for an item from before the
        dataset's epoch) on the event loop's pipelined connection, under the breaker: true when this
        call claimed it (its ``nonce`` when refused for the epoch). The connection greets as the
        identity cache's do (``greeting``), so a Redis started again is seen before any claim on it.
        FactsUnavailable when it cannot be sent so (no pipelined connection, Redis failing or owed a
        recovery first): the caller claims it its own way. An error reply to it (out of memory, a
        read-only replica, no permission) is also FactsUnavailable, and trips nothing: it says nothing
        of the facts' copies, and every lane's checks stay on the cache (the caller's own claim then
        refuses the request alone)."""
        if not self._pipe.available or self._suspect or self._failed:
            raise FactsUnavailable("not from the loop")
        with self._breaker():
            try:
                return dataset.claimed(await self._pipe.run(dataset.CLAIM, keys, args))
            except redis.ResponseError as exc:
                log.warning("release.gate_facts.claim_refused", extra={"fields": {"error": str(exc)[:200]}})
                raise FactsUnavailable(str(exc)) from exc

    async def record_async(self, row: dict[str, Any]) -> StoredDecision | None:
        """``record`` from the event loop, pipelined."""
        if not self._pipe.available:
            return await self._off_loop(functools.partial(self.record, row))
        self._room()
        return self._recorded(await self._call_async(_RECORD, *self._record_args(row)))

    async def _off_loop(self, call: Callable[[], Any]) -> Any:
        """A blocking call, awaited from the loop, on this object's threads (context variables kept)."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._executor, context.run, call)

    def _read_args(self, terminal: str, request_id: str, badge_key: str | None, containers: Sequence[str],
                   also: Sequence[str]) -> list[Any]:
        return [self._p, terminal, badge_key or "", _request_key(terminal, request_id), self._ttl, len(also),
                *also, *containers]

    def _record_args(self, row: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        return [self._request_key(row), self._p + STREAM], [_answer(row), self._request_ttl, jsonbody.dumps(row),
                                                            self._cap]

    def _snapshot(self, out: list[Any], *, terminal: str, badge: BadgeRead | None, badge_key: str | None,
                  containers: Sequence[str], now: datetime, through: bool, within: SqlUnitOfWork | None,
                  also: Sequence[str]) -> GateSnapshot | None:
        """The snapshot from a ``_READ``'s reply, what it missed read through (unless not ``through``)."""
        values = tuple(out[len(out) - len(also):]) if also else ()
        replay = _stored(out[0]) if out[0] else None
        policy_gen, policy_raw, badge_gen, badge_raw = out[1], out[2], out[3], out[4]
        rights_raw = {c: (out[5 + 2 * i], out[6 + 2 * i]) for i, c in enumerate(containers)}
        # A copy that cannot be trusted (``_badge_copy``, ``_rights``) is a miss, read through and replaced.
        rights: dict[str, list[RightFacts]] = {}
        missing = []
        for c, (_, raw) in rights_raw.items():
            parsed = _parsed(raw, _rights) if raw is not None else None
            if parsed is None:
                missing.append(c)
            else:
                rights[c] = list(parsed)
        entry: _BadgeEntry | None = _parsed(badge_raw, _badge_copy) if badge_raw is not None else None
        need_badge = badge is not None and entry is None and badge_key is not None
        fills: dict[str, bytes] = {}
        policy = _parsed(policy_raw, _policy) if policy_raw is not None else None
        if policy is None or missing or need_badge:
            if not through:
                return None
            with self._uow() if within is None else contextlib.nullcontext(within) as uow:
                # Nothing is kept under a pending generation (a write is committing, or its
                # invalidation never came): those facts are read from here until it is lifted.
                if policy is None:
                    policy = uow.gate.policy(terminal)
                    if not _pending(policy_gen):
                        fills[f"policy:{terminal}:{_s(policy_gen)}"] = json.dumps(policy_dict(policy)).encode()
                if missing:
                    found = uow.gate.rights(missing)
                    for c in missing:
                        rights[c] = [r for r in found if r.container == c]
                        if not _pending(rights_raw[c][0]):
                            fills[f"r:{c}:{_s(rights_raw[c][0])}"] = _dump_rights(rights[c])
                if need_badge:
                    assert badge is not None
                    raw = json.dumps(_badge_entry(uow, badge)).encode()
                    entry = _badge_copy(raw)
                    if not _pending(badge_gen):
                        fills[f"badge:{badge_key}:{_s(badge_gen)}"] = raw
            if fills:
                self._fill(fills)
        self._keep_near(terminal, policy_gen, policy, badge_key, badge_gen, entry,
                        {c: (rights_raw[c][0], rights[c]) for c in containers})
        facts, screening = (None, ScreeningResult.UNAVAILABLE) if badge is None else self._badge(entry, terminal, now)
        return GateSnapshot(replay, policy, [r for c in containers for r in rights.get(c, [])], facts, screening,
                            values)

    def _keep_near(self, terminal: str, policy_gen: bytes, policy: TerminalPolicy, badge_key: str | None,
                   badge_gen: bytes, entry: _BadgeEntry | None, rights: dict[str, tuple[bytes, list[RightFacts]]]
                   ) -> None:
        """Remember what was just read, each copy with the generations it was read under (a copy read
        through was read after them: it is as current as they are). Never under a pending generation:
        a write may commit under it, and a keep would find it unchanged."""
        near = self._near
        if len(near) + 2 + len(rights) > NEAR_MAX:
            near.clear()  # no order to keep: the next reads fill it again
        if not _pending(policy_gen):
            near[("policy", terminal)] = ((("policy", policy_gen),), policy)
        if badge_key is not None and entry is not None and not _pending(badge_gen):
            near[("badge", badge_key)] = (_under(badge_gen, "badges", "bans"), entry)
        for c, (gen, found) in rights.items():
            if not _pending(gen):
                near[("r", c)] = (_under(gen, "r:" + c, invalidation.RIGHTS), tuple(found))

    def recall(self, *, terminal: str, badge: BadgeRead | None, containers: Sequence[str],
               now: datetime) -> Recalled | None:
        """The facts of a check as this process read them last (``read``), with no round trip; None when
        one of them was not read lately, or Redis failed a moment ago. Only ever decided on through
        ``keep_if_current``, which keeps the decision only if their generations are still current."""
        at = time.monotonic()
        if self._suspect or at < self._down_until or at < self._full_until:
            return None
        near = self._near
        found = near.get(("policy", terminal))
        if found is None:
            return None
        under, policy = found
        facts, screening = None, ScreeningResult.UNAVAILABLE
        if badge is not None:
            key = SqlGateStore.badge_key(badge)
            found = near.get(("badge", key)) if key is not None else None
            if found is None:
                return None
            under += found[0]
            facts, screening = self._badge(found[1], terminal, now)
        rights: list[RightFacts] = []
        for c in containers:
            found = near.get(("r", c))
            if found is None:
                return None
            under += found[0]
            rights.extend(found[1])
        return Recalled(GateSnapshot(None, policy, rights, facts, screening), tuple(dict.fromkeys(under)))

    def keep_if_current(self, row: dict[str, Any], recalled: Recalled, also: Sequence[str] = ()) -> Kept:
        """Keep a check decided on ``recalled``: in one step (one round trip), only if the request_id is
        free, no ``also`` name is set and every generation the facts were read under is still the
        current one. So a change committed before this step (its generation replaced) is never missed:
        then nothing is kept, and the caller decides the long way, on the facts read again."""
        keys, args = self._keep_args(row, recalled, also)
        return self._keep_reply(self._call(lambda: self._line.run(_KEEP, keys, args)))

    async def keep_if_current_async(self, row: dict[str, Any], recalled: Recalled, also: Sequence[str] = ()) -> Kept:
        """``keep_if_current`` from the event loop: sent with the other requests' calls of the same turn
        of the loop (quaygate/redisline.py ``Pipelined``), the loop serving others while Redis answers."""
        if not self._pipe.available:
            return await self._off_loop(functools.partial(self.keep_if_current, row, recalled, also))
        keys, args = self._keep_args(row, recalled, also)
        return self._keep_reply(await self._call_async(_KEEP, keys, args))

    def _keep_args(self, row: dict[str, Any], recalled: Recalled, also: Sequence[str]) -> tuple[list[Any], list[Any]]:
        return [self._request_key(row), self._p + STREAM], [
            _answer(row), self._request_ttl, jsonbody.dumps(row), self._cap, self._p, len(also), *also,
            *(x for pair in recalled.under for x in pair)]

    def _badge(self, entry: _BadgeEntry | None, terminal: str, now: datetime
               ) -> tuple[BadgeFacts, ScreeningResult]:
        if entry is None or entry.facts is None:
            return BadgeFacts.not_found(), ScreeningResult.UNAVAILABLE  # nobody to screen: never "clear"
        # Screened now, at every decision: a ban that starts or ends, or a list grown stale, counts at once;
        # with this process's settings, as PostgreSQL would screen here.
        max_list_age, required = self._screening
        result = screen(entry.windows, entry.list_issued_at, terminal=terminal, now=now,
                        max_list_age=max_list_age, required=required, identified=entry.identified)
        return entry.facts, ScreeningResult(result.result)

    def _fill(self, fills: dict[str, bytes]) -> None:
        try:
            self._line.run(_FILL, [], [self._p, self._ttl, *(x for pair in fills.items() for x in pair)])
        except redis.RedisError:
            self._trip()  # the facts were read: this answer stands, the next one waits less

    # ---- recording check decisions ---------------------------------------------------------------

    def record(self, row: dict[str, Any]) -> StoredDecision | None:
        """Keep a check decision: None when recorded, else the decision recorded first under its
        request_id (a twin, or another request reusing the id). FactsUnavailable when the stream is
        full (``_stream_full``): the caller records it in PostgreSQL."""
        self._room()
        keys, args = self._record_args(row)
        return self._recorded(self._call(lambda: self._line.run(_RECORD, keys, args)))

    FULL_PAUSE = 1.0  # seconds this process sends no keep after it found the stream full

    @property
    def stream_full(self) -> int:
        """How many times a keep of this process found the stream full (about once a ``FULL_PAUSE``
        while it stays full, as no keep is sent in between): not zero, the drainers fell behind."""
        return self._full

    def _recorded(self, twin: bytes | None) -> StoredDecision | None:
        if twin == b"full":
            raise self._stream_full()
        return _stored(twin) if twin else None

    def _keep_reply(self, out: list[Any]) -> Kept:
        if out[0] == b"full":
            raise self._stream_full()
        return _kept(out)

    def _room(self) -> None:
        """FactsUnavailable, without a round trip, while the stream was found full a moment ago."""
        if time.monotonic() < self._full_until:
            raise FactsUnavailable("the decisions stream was full a moment ago")

    def _stream_full(self) -> FactsUnavailable:
        """A script found the stream at its cap and kept nothing: the drainers are behind (PostgreSQL
        away, or no drainer running), and an entry is never trimmed before it is drained, as its
        decision was answered. The caller decides the check the long way and records it in PostgreSQL
        (FactsUnavailable, which trips nothing: the facts' copies are as good as ever); no keep is sent
        for ``FULL_PAUSE`` seconds. Logged once a pause, for an operator."""
        with self._lock:
            at = time.monotonic()
            said = at < self._full_until
            self._full_until = at + self.FULL_PAUSE
            self._full += 1
        if not said:
            log.error("release.gate_facts.stream_full", extra={"fields": {"cap": self._cap}})
        return FactsUnavailable("the decisions stream is full: the drainers are behind")

    def remember(self, row: dict[str, Any]) -> None:
        """A commit decision, after its transaction committed: later reads of the id answer from here.
        Sent with the invalidations this thread holds (``holding``), in one round trip. Best effort for
        the answer: PostgreSQL has it, and a retry that misses here reads it there; the invalidations
        stay owed when Redis fails, and so does the answer, written once Redis is back: a check kept
        there by a call that timed out before it was decided here and recorded in PostgreSQL, or a
        cached check finding no answer, would otherwise answer a retry with another decision."""
        answer = (self._request_key(row), _answer(row))
        held = getattr(self._holds, "names", None)
        names = set(held) if held else set()
        try:
            self._send_or_keep(names, answer)  # owed before it is sent (``_send``): no longer held
        finally:
            if held:
                held.difference_update(names)

    async def remember_async(self, row: dict[str, Any], rights: Sequence[str] = ()) -> None:
        """``remember`` from the event loop, pipelined, for a commit decided there (services/verify.py
        ``commit_on_loop``), with the invalidation of the rights of the containers ``rights``: owed
        before it is sent, as ``_send`` does, so a send that fails (or a caller cancelled meanwhile)
        leaves them owed, never lost. Without a pipelined connection, on this object's threads."""
        names = _right_names(rights)
        answer = (self._request_key(row), _answer(row))
        if not self._pipe.available:
            await self._off_loop(functools.partial(self._send_or_keep, names, answer))
            return
        owed = self._owing(names)
        args, lifts = self._bump_args(owed, answer)
        try:
            try:
                await self._pipe.run(_BUMP, [], args)
                whole = True
            except redis.OutOfMemoryError:  # Redis is full: the invalidations alone, the answer later
                if owed:
                    await self._pipe.run(_INVALIDATE, [], _without_answer(args))
                whole = False
        except BaseException as exc:  # a caller cancelled meanwhile too: whether Redis took it is unknown
            self._not_taken(owed)
            self._unsent(answer)
            if not isinstance(exc, redis.RedisError):
                raise
            return
        self._taken(owed, lifts)
        if not whole:
            self._unsent(answer)

    @contextlib.contextmanager
    def moving(self, rights: Sequence[str]) -> Iterator[None]:
        """The invalidation of the rights of the containers ``rights``, owed from before the block
        sends a statement that may move one (a commit decided on the loop, whose ``remember_async``
        sends it): a block that raises (the statement's outcome unknown: a lost connection, a caller
        cancelled) leaves it owed and failed, so no copy is trusted until Redis took it."""
        names = _right_names(rights)
        self._owing(names)
        try:
            yield
        except BaseException:
            # Owed again, from now: a send that took them while the statement was on its way went out
            # before the move may have landed, so it does not cover it.
            again = self._owing(names)
            self._not_taken({name: again[name] for name in names})
            raise

    def _send_or_keep(self, names: Iterable[str], answer: tuple[str, bytes]) -> None:
        """``_send`` with the answer, kept for later (``_unsent``) when Redis does not take it."""
        try:
            taken = self._send(names, answer)
        except redis.RedisError:
            taken = False
        if not taken:
            self._unsent(answer)

    def _unsent(self, answer: tuple[str, bytes]) -> None:
        """A commit's answer Redis did not take: kept to write once it is back (``_recover``)."""
        with self._lock:
            if len(self._unanswered) < _UNANSWERED_MAX:
                self._unanswered[answer[0]] = answer[1]
            else:  # past the bound, a retry may be answered by another copy until it expires
                log.warning("release.gate_facts.answer_unsent", extra={"fields": {"key": answer[0]}})
        self._deferred()

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """The invalidations of what this thread commits in the block are held, and go with the
        decision's ``remember`` in one round trip instead of one of their own. Whatever is still held
        when the block ends (no ``remember``: an error) is sent then. Never longer: a reader must not
        trust a copy the commit changed once its answer is out."""
        outer = getattr(self._holds, "names", None)
        held: set[str] = set()
        self._holds.names = held
        try:
            yield
        finally:
            self._holds.names = outer
            if held:
                self.bump(held)

    def _request_key(self, row: dict[str, Any]) -> str:
        return self._p + "req:" + _request_key(row["terminal"], row["request_id"])

    # ---- invalidation ----------------------------------------------------------------------------

    def committing(self, touched: invalidation.Touched, conn: sa.Connection | None = None) -> _Mark | None:
        """Called just before a commit with what it touches: recorded on ``conn``, in the transaction
        about to commit (``gate_fact_changes``, which every server polls: ``catch_up``), and those
        families pending in Redis (``_MARK``) until the invalidation after the commit lifts the mark.
        The mark is returned even when Redis failed (it may have taken it), so that invalidation lifts it
        whatever happened; None when Redis failed a moment ago (no round trip: the commit goes on, its
        invalidation owed, the other servers told by the record), and for a gate move on the worker
        threads (``holding``), which marks and records nothing, as on the loop."""
        if getattr(self._holds, "names", None) is not None:
            return None
        names = tuple(sorted(_names(touched)))
        if conn is not None:
            _record_change(conn, names)
        if time.monotonic() < self._down_until:
            return None
        mark = self._mark_prefix + str(next(self._marks))
        try:
            self._line.run(_MARK, [], [self._p, self._pending_ttl, mark, *names])
        except redis.RedisError:
            log.warning("release.gate_facts.mark_failed", extra={"fields": {"families": len(names)}})
            self._trip()
        return mark, names

    def committed(self, touched: invalidation.Touched, marks: Sequence[_Mark] = ()) -> None:
        """Called after a commit with what it touched: new generations for those families, lifting the
        commit's pending marks (a commit that failed after its marks lifts them too)."""
        names = _names(touched)
        if marks:
            with self._lock:
                for mark, marked in marks:
                    for name in marked:
                        self._lift.setdefault(name, set()).add(mark)
                    names.update(marked)
        held = getattr(self._holds, "names", None)
        if held is not None:
            held.update(names)  # sent with this thread's ``remember``, or when its ``holding`` ends
            return
        self.bump(names)

    def bump(self, names: Iterable[str]) -> None:
        """New generations for ``names``, with every one still owed; kept owed when Redis fails."""
        try:
            self._send(names)
        except redis.RedisError:
            self._deferred()

    def _deferred(self) -> None:
        """A send Redis did not take: what it carried stays owed, and Redis is suspect until it is back."""
        if self._owed:
            log.warning("release.gate_facts.invalidation_deferred", extra={"fields": {"families": len(self._owed)}})
        self._trip()

    def _send(self, names: Iterable[str], answer: tuple[str, bytes] | None = None) -> bool:
        """New generations for ``names`` and every one still owed, and ``answer`` (request key, answer)
        kept, in one round trip; what Redis did not take stays owed. False when Redis, full, took the
        invalidations without the answer (``_INVALIDATE``): the caller keeps it for later."""
        owed = self._owing(names)
        if not owed and answer is None:
            return True
        args, lifts = self._bump_args(owed, answer)
        whole = True
        try:
            try:
                self._line.run(_BUMP, [], args)
            except redis.OutOfMemoryError:  # Redis is full: the invalidations alone, the answer later
                if owed:
                    self._line.run(_INVALIDATE, [], _without_answer(args))
                whole = answer is None
        except BaseException:
            self._not_taken(owed)
            raise
        self._taken(owed, lifts)
        return whole

    def _owing(self, names: Iterable[str]) -> dict[str, int]:
        """``names`` owed from now, each at this turn; every name owed, with its turn, to send."""
        with self._lock:
            self._asked += 1
            for name in names:
                self._owed[name] = self._asked
            return dict(self._owed)

    def _bump_args(self, owed: dict[str, int], answer: tuple[str, bytes] | None
                   ) -> tuple[list[Any], dict[str, tuple[str, ...]]]:
        """``_BUMP``'s arguments, and the pending marks they lift (``_taken`` forgets them)."""
        key, value = answer if answer is not None else ("", b"")
        args: list[Any] = [self._p, self._ttl, key, value, self._request_ttl, self._pending_ttl]
        lifts: dict[str, tuple[str, ...]] = {}
        with self._lock:
            for name in sorted(owed):
                marks = lifts[name] = tuple(self._lift.get(name, ()))
                args += [name, len(marks), *marks]
        return args, lifts

    def _not_taken(self, owed: dict[str, int]) -> None:
        """A send of ``owed`` failed (or its outcome is unknown): those still owed stay owed, and no copy
        is trusted until a later send takes them (``_breaker``). One that another send took meanwhile
        (no longer owed: that send carried its latest ask) is not marked: nothing would ever clear it."""
        with self._lock:
            for name, turn in owed.items():
                if name in self._owed:
                    self._failed[name] = max(turn, self._failed.get(name, 0))

    def _taken(self, owed: dict[str, int], lifts: dict[str, tuple[str, ...]]) -> None:
        with self._lock:
            for name, turn in owed.items():
                if self._owed.get(name) == turn:  # asked for again meanwhile: that one is still owed
                    del self._owed[name]
                if self._failed.get(name, turn + 1) <= turn:  # taken by a send made after it failed
                    del self._failed[name]
            for name, marks in lifts.items():
                left = self._lift.get(name)
                if left is not None:
                    left.difference_update(marks)
                    if not left:
                        del self._lift[name]

    def owed(self) -> int:
        """Invalidations Redis has not taken yet."""
        return len(self._owed)

    def flush_owed(self) -> int:
        """Send the invalidations Redis did not take, and once Redis is back after a failure, replace
        every generation (``_recover``) even if no gate request comes to do it (the drainer calls this
        every loop). Returns how many were owed."""
        owed = len(self._owed)
        if self._suspect and time.monotonic() >= self._down_until:
            try:
                self._recover()
            except redis.RedisError:
                self._trip()
        elif owed:
            self.bump(())
        return owed

    def bump_everything(self) -> None:
        """At start-up: whatever a process that died owing invalidations left behind (or a database
        restored under a running Redis) is read again."""
        self.bump(EVERYTHING)

    def catch_up(self) -> int:
        """The changes recorded in PostgreSQL since the last poll (``gate_fact_changes``), each one's
        generations replaced in Redis unless another server took it first (``_CAUGHT_UP``): one round
        trip to each; returns how many this call took. The drainer calls this every ``CATCH_UP_EVERY``
        seconds: a writer that could not reach Redis reaches the gates so (review 169). On PostgreSQL
        the numbers are taken before the commits, not in their order: a poll reads every change at or
        above the horizon of its last snapshot (every transaction below it had ended), and skips those
        it took then; on SQLite every poll reads the whole record, skipping what it took. Nothing counts as
        taken unless Redis took it: while Redis fails, or the breaker is open, the same changes are read
        again at the next poll."""
        pg = self._engine.dialect.name == "postgresql"
        with self._catching:
            if time.monotonic() < self._down_until:
                return 0
            with self._engine.connect() as conn:
                if pg:
                    rows = conn.execute(_CHANGES_PG, {"since": self._since}).all()
                    horizon = rows[0][0]
                    found = [(i, names) for _, i, names in rows if i is not None]
                else:
                    # SQLite numbers a row one past the highest there (no AUTOINCREMENT): once the sweep has
                    # emptied the record its numbers start again at 1, so no number marks what was read
                    # (review 175, finding 2). The whole record is read (an hour's changes at most, swept;
                    # SQLite serves one machine) and the changes taken are known by their ids, as on
                    # PostgreSQL.
                    c = gate_fact_changes.c
                    found = [(i, names) for i, names in conn.execute(sa.select(c.id, c.names).order_by(c.seq))]
                    horizon = 0
            new = [(i, names) for i, names in found if i not in self._seen]
            taken = 0
            head: list[Any] = [self._p, self._ttl, self._pending_ttl]
            args = head[:]
            try:
                for n, (i, names) in enumerate(new, 1):
                    args += [i.hex, len(names), *names]
                    if len(args) >= _CATCH_UP_BATCH or n == len(new):  # no long script: Redis serves gates
                        taken += int(self._line.run(_CAUGHT_UP, [], args))
                        args = head[:]
            except redis.RedisError:
                self._trip()
                return 0
            if taken:
                log.info("release.gate_facts.caught_up", extra={"fields": {"changes": taken}})
            self._since = horizon
            self._seen = {i for i, _ in found}
            return taken

    def prune_changes(self, now: datetime) -> int:
        """The changes recorded before ``now`` less ``CHANGES_KEPT`` deleted (every copy filled before
        them has expired long since); returns how many. Any server's drainer may do it."""
        with self._engine.begin() as conn:
            gone = conn.execute(gate_fact_changes.delete().where(gate_fact_changes.c.at < now - CHANGES_KEPT))
            return int(gone.rowcount)

    # ---- the drainer -----------------------------------------------------------------------------

    def drain(self, consumer: str, *, count: int = 1000, block_ms: int | None = None,
              claim_idle_ms: int | None = 30_000) -> int:
        """Move recorded check decisions from the stream into gate_decisions; returns how many. With
        ``claim_idle_ms``, first take over what another consumer read that long ago and never
        acknowledged (it died between reading and writing)."""
        stream = self._p + STREAM
        r = self._drain_client
        try:
            r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        moved = 0
        batches = []
        if claim_idle_ms is not None:
            _, claimed, _ = r.xautoclaim(stream, GROUP, consumer, min_idle_time=claim_idle_ms, start_id="0-0",
                                         count=count)
            batches = [claimed] if claimed else []
        fresh = r.xreadgroup(GROUP, consumer, {stream: ">"}, count=count, block=block_ms)
        batches += [entries for _, entries in fresh or []]
        for entries in batches:
            ids = [eid for eid, _ in entries]
            rows = [fields[b"row"] for _, fields in entries if fields and b"row" in fields]
            if rows:
                try:
                    self._insert(rows)
                except _REFUSED_ROW:  # one row the table refuses must not hold back the rest, ever
                    self._insert_each(rows)
            if ids:
                r.xack(stream, GROUP, *ids)
                r.xdel(stream, *ids)
            moved += len(rows)
        return moved

    def _insert_each(self, rows: list[bytes]) -> None:
        """A batch the table refused, row by row: each row it refuses again is set aside in the
        ``refused`` stream (capped), with why, and logged, for an operator; the others go in. (Decided
        by an older server that let a NUL through, say. PostgreSQL away is not this: it raises.)"""
        for raw in rows:
            try:
                self._insert([raw])
            except _REFUSED_ROW as exc:
                log.error("release.gate_facts.decision_refused", extra={"fields": {"error": type(exc).__name__}})
                self._drain_client.xadd(self._p + REFUSED, {"row": raw, "error": type(exc).__name__},
                                        maxlen=REFUSED_CAP, approximate=True)

    def _insert(self, rows: list[bytes]) -> None:
        """The kept decisions (their JSON, as recorded) into gate_decisions; one already there is left.
        On PostgreSQL the JSON goes as it is, one array in one parameter that the server turns into rows
        (``jsonb_populate_recordset``): the drainer, a thread of the server process, spends next to no
        Python on it, so it holds the GIL (and the gate checks on the event loop) for no longer than a
        round trip's bookkeeping, however many rows it moves."""
        if self._engine.dialect.name == "postgresql":
            with self._engine.begin() as conn:
                clashed = set(conn.execute(_INSERT_FROM_JSON, {"rows": (b"[" + b",".join(rows) + b"]").decode()}
                                           ).scalars())
        else:
            from sqlalchemy.dialects import sqlite

            parsed = [split_entries(_row(raw)) for raw in rows]
            ids = [d["id"] for d, _ in parsed]
            listed = sa.select(gate_decisions.c.id).where(gate_decisions.c.id.in_(ids))
            with self._engine.begin() as conn:
                before = set(conn.execute(listed).scalars())
                conn.execute(sqlite.insert(gate_decisions).on_conflict_do_nothing(), [d for d, _ in parsed])
                there = set(conn.execute(listed).scalars())
                SqlAuditLog(conn).append_many([e for d, entries in parsed if d["id"] in there - before
                                               for e in entries])
            clashed = set(ids) - there
        if clashed:
            self._clashed(rows, clashed)

    def _clashed(self, rows: list[bytes], ids: set[uuid.UUID]) -> None:
        """Decisions answered at the gate that gate_decisions cannot hold: another decision has their
        (terminal, request_id). Redis keeps a check's id for ``request_ttl`` only, so a check sent again
        after that is decided afresh. Never dropped silently: set aside in ``decisions:refused`` and
        logged, for the record (its decision_id was answered)."""
        for raw in rows:
            row = jsonbody.loads(raw)
            if uuid.UUID(row["id"]) in ids:
                log.warning("release.gate_facts.request_id_clash", extra={"fields": {
                    "terminal": row["terminal"], "request_id": row["request_id"]}})
                self._drain_client.xadd(self._p + REFUSED, {"row": raw, "error": "request_id_reused"},
                                        maxlen=REFUSED_CAP, approximate=True)

    # ---- the breaker -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _breaker(self) -> Iterator[None]:
        """A Redis call under the breaker: skipped while it cools down, what is owed sent first, and a
        failure trips it and raises FactsUnavailable."""
        if time.monotonic() < self._down_until:
            raise FactsUnavailable("skipped: Redis failed a moment ago")
        try:
            if self._suspect or self._failed:
                self._recover()
            yield
        except redis.RedisError as exc:
            self._trip()
            raise FactsUnavailable(str(exc)) from exc

    def _call(self, fn: Callable[[], Any]) -> Any:
        with self._breaker():
            trips = self._trips
            out = fn()
        self._vouched(trips)
        return out

    def _vouched(self, trips: int) -> None:
        """FactsUnavailable when Redis was seen failing, or a connection was greeted under another
        dataset (``_greeted``), since ``trips`` was read, before the call: its reply may come from a
        dataset this process has not vouched for (the call that made the connection reads from it,
        and so does every call waiting on the same connect), and is thrown away; the caller decides
        from PostgreSQL, and the next call replaces every generation first (``_recover``). A second
        guard: the greeting deleted the generations before that call, so its copies were missed
        already. One integer compared per call."""
        if self._trips != trips:
            log.warning("release.gate_facts.reply_dropped")
            raise FactsUnavailable("Redis changed during the call: its reply is not trusted")

    async def _call_async(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """A script run from the event loop, pipelined, under the same breaker. What must go first (the
        invalidations owed, every generation after a failure: ``_recover``) is a blocking round trip and
        never held the loop: FactsUnavailable instead, and the caller decides in a worker thread, whose
        own call sends it."""
        if self._suspect or self._failed:
            raise FactsUnavailable("owed to Redis first: sent from a worker thread")
        with self._breaker():
            trips = self._trips
            out = await self._pipe.run(script, keys, args)
        self._vouched(trips)
        return out

    def _recover(self) -> None:
        """Redis is back after this process saw it fail. While it was away, this process (or another)
        may have committed changes whose invalidations never reached it: every copy is read again
        before one is trusted. Invalidations still owed (a commit whose own Redis failed) are sent first
        too, whoever tripped, and so are the answers ``remember`` could not write."""
        with self._lock:
            trips, suspect = self._trips, self._suspect
        self._send(EVERYTHING if suspect else ())
        self._write_unanswered()
        with self._lock:  # a thread that saw Redis fail meanwhile keeps it suspect
            cleared = suspect and self._trips == trips
            if cleared:
                self._suspect = False
        if cleared:
            log.info("release.gate_facts.recovered")

    def _write_unanswered(self) -> None:
        """Write the answers ``remember`` could not, a few hundred per round trip (one large write could
        outlast the hot path's timeout every time, and the cache would never come back); each batch
        is forgotten once Redis took it."""
        with self._lock:
            unanswered = list(self._unanswered.items())
        for start in range(0, len(unanswered), _FILL_BATCH):
            batch = unanswered[start:start + _FILL_BATCH]
            self._line.run(_FILL, [], ["", self._request_ttl, *(x for pair in batch for x in pair)])
            with self._lock:
                for key, value in batch:
                    if self._unanswered.get(key) is value:
                        del self._unanswered[key]

    def _trip(self) -> None:
        with self._lock:  # counted and marked in one step, against ``_recover``'s compare-and-clear
            self._down_until = time.monotonic() + self._cooldown
            self._trips += 1
            self._suspect = True
        log.warning("release.gate_facts.unavailable")

    def _greeted(self, reply: Any) -> None:
        """A connection made (a worker thread's, the loop's pipelined one), greeted under the dataset's
        epoch (quaygate/dataset.py). Another epoch than the last one's: Redis holds another dataset than
        the one the copies here were read from. A Redis started again from an older snapshot, or a
        replica promoted that missed the last writes, has older generations back with their copies, and
        the connection, dropped while idle or made by a new thread, is made anew without any call
        failing. The greeting deleted the generations already (whichever connection met the server
        first); here Redis counts as one that failed: no copy is trusted until every generation is
        replaced (``_recover``), and the reply of a call made meanwhile is thrown away (``_vouched``).
        Runs in the connect: on the event loop, or on the worker thread whose call connected."""
        dataset.greeted(reply)
        since = reply[0] if isinstance(reply, list) and reply else None
        with self._lock:
            was, self._dataset = self._dataset, since
            moved = was is not None and since != was
            if moved:
                self._trips += 1
                self._suspect = True
        if moved:
            log.warning("release.gate_facts.new_dataset")

    def note_unavailable(self) -> None:
        """Redis failed outside a gate read (the drainer): copies are read again once it is back, as
        changes committed meanwhile may not have reached them."""
        self._trip()

    def close_pipelined(self) -> None:
        """Close the event loops' pipelined connections (an app's lifespan ends: its loop is closing)."""
        self._pipe.close()

    def start_drainer(self, consumer: str) -> None:
        self._drainer = Drainer(self, consumer=consumer).start()

    def stop_drainer(self) -> None:
        if self._drainer is not None:
            self._drainer.stop()
            self._drainer = None

    CLOSE_GRACE = 5.0  # seconds ``close`` goes on sending what Redis has not taken

    def close(self) -> None:
        """Stop, after trying for up to CLOSE_GRACE seconds more at the invalidations Redis has not
        taken (a CLI's write has no drainer to send them later). Those still owed then are
        lost with this process: the gates could decide on old copies until they expire. Logged, and
        counted for the CLI to say (``undelivered``). The answers ``remember`` could not write get one
        more try too; those left are logged (a retry of one may get another decision)."""
        if self._closed:
            return
        self._closed = True
        self.stop_drainer()
        # Another process trusts its copies until Redis took these: tried again for a few seconds (a
        # Redis busy for a moment, a failover), not given up at the first failure.
        deadline, pause = time.monotonic() + self.CLOSE_GRACE, 0.05
        while self._owed:
            try:
                self._send(())
            except redis.RedisError:
                if time.monotonic() + pause > deadline:
                    break
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
        if self._unanswered:
            try:
                self._write_unanswered()
            except redis.RedisError:
                pass
        global _undelivered
        if self._owed:
            _undelivered += len(self._owed)
            log.error("release.gate_facts.invalidation_lost", extra={"fields": {
                "families": len(self._owed), "ttl_seconds": self._ttl}})
        if self._unanswered:  # a retry of one of these may be answered with another decision
            log.error("release.gate_facts.answer_lost", extra={"fields": {
                "answers": len(self._unanswered), "ttl_seconds": self._request_ttl}})
        self._executor.shutdown(wait=False)
        self._line.close()
        self._pipe.close()
        self._r.close()
        self._drain_client.close()


_Mark = tuple[str, tuple[str, ...]]  # a pending mark (``committing``) and the families it marks


def _names(touched: invalidation.Touched) -> set[str]:
    """The generation names of what a transaction touched. An organisation's status (``HOLDERS``) is in
    every right's copy (its holder's): the rights' epoch, part of each container's generation as read."""
    return {f"r:{key}" if family == invalidation.RIGHTS
            else invalidation.RIGHTS if family == invalidation.HOLDERS else family for family, key in touched}


def _record_change(conn: sa.Connection, names: Sequence[str]) -> None:
    """What a transaction about to commit touched, recorded in it (``gate_fact_changes``, review 169), with
    its writer's transaction id on PostgreSQL, for the pollers' horizon (``catch_up``)."""
    pg = conn.dialect.name == "postgresql"
    conn.execute(gate_fact_changes.insert().values(id=uuid.uuid4(), at=datetime.now(UTC), names=list(names),
                                                   txid=WRITER_TXID if pg else None))


def _pending(generation: bytes) -> bool:
    """A generation read while a write was committing, or whose invalidation never came: no copy is
    kept or trusted under it (``_MARK``)."""
    return b"p" in generation


def _without_answer(args: list[Any]) -> list[Any]:
    """``_BUMP``'s arguments (``_bump_args``) with no answer to keep: the invalidations alone."""
    return [*args[:2], "", b"", *args[4:]]


def _right_names(containers: Sequence[str]) -> list[str]:
    """The generation names of the rights of these containers (what ``committed`` replaces for RIGHTS)."""
    return [f"r:{c}" for c in containers]


_UNANSWERED_MAX = 10_000  # answers to write once Redis is back: about 10 MB at most
_FILL_BATCH = 200  # answers per round trip when they are written
_undelivered = 0  # invalidations this process's facts could not hand to Redis before they closed


def undelivered() -> int:
    """How many invalidations this process could not deliver before it closed its gate facts."""
    return _undelivered


NEAR_MAX = 50_000  # copies remembered per process (``recall``); when full, it starts again

_Under = tuple[tuple[str, bytes], ...]


def _kept(out: list[Any]) -> Kept:
    what, twin, values = out[0], out[1], tuple(out[2:])
    if what == b"twin":
        return Kept(False, _stored(twin), values)
    return Kept(what == b"kept", None, values)


def _under(generation: bytes, *families: str) -> _Under:
    """A composite generation as read (``<family1's>/<family2's>``), as (family, generation) pairs."""
    return tuple(zip(families, generation.split(b"/"), strict=True))


# ---- what the copies hold ------------------------------------------------------------------------


def _badge_entry(uow: SqlUnitOfWork, read: BadgeRead) -> dict[str, Any]:
    facts = uow.gate.badge(read)
    if not facts.found or facts.person_id is None:
        return {"found": False}
    windows, issued_at, identified = uow.gate.ban_facts(facts.person_id)
    # Never read here (``_badge`` screens with the reader's own settings): written for servers from before
    # review 169, which read them from the copy, during a rolling upgrade. A later release drops them.
    max_age, required = uow.gate.screening_settings
    return {
        "found": True, "id": str(facts.badge_id), "status": facts.status, "person_id": str(facts.person_id),
        "valid_from": _iso(facts.valid_from), "valid_until": _iso(facts.valid_until),
        "activated": sorted(facts.activated_terminals),
        "holder": facts.holder_name, "holder_status": facts.holder_status, "chip": facts.card_uid_on_record,
        "bans": [[w.scope, _iso(w.banned_from), _iso(w.banned_until)] for w in windows],
        "list_issued_at": _iso(issued_at), "max_list_age": max_age.total_seconds(), "required": required,
        "identified": identified,
    }


def _dump_rights(rights: list[RightFacts]) -> bytes:
    return json.dumps([[
        str(r.id), r.container, r.terminal, r.state, r.blocked, r.commercial, r.customs, r.terminal_light,
        _iso(r.valid_from), _iso(r.valid_until), _iso(r.created_at),
        None if r.nomination is None else [str(r.nomination.driver_person_id), r.nomination.plate_text,
                                           r.nomination.plate_country, r.nomination.response],
        str(r.issuer) if r.issuer is not None else None, r.contested, r.holder_active, r.customs_held,
        None if r.face_against is None else [str(r.face_against.decision_id), _iso(r.face_against.at),
                                             dict(r.face_against.face), r.face_against.nomination],
    ] for r in rights]).encode()


# ---- copies parsed once: a copy's bytes always mean the same facts, so equal bytes share one parse ----

_PARSED_MAX = 4096  # copies kept parsed per kind; when full, the memo starts again (no lock, no order)
_parsed_memo: dict[tuple[Callable[[bytes], Any], bytes], Any] = {}


def _parsed(raw: bytes, parse: Callable[[bytes], Any]) -> Any:
    """``parse(raw)``, remembered: the parsed facts are frozen, so one parse serves every reader."""
    key = (parse, raw)
    found = _parsed_memo.get(key)
    if found is None:
        found = parse(raw)
        if len(_parsed_memo) >= _PARSED_MAX:
            _parsed_memo.clear()
        _parsed_memo[key] = found
    return found


@dataclass(frozen=True, slots=True)
class _BadgeEntry:
    """A badge's cached copy, parsed: its facts (None: no such badge) and its holder's ban facts (no
    screening settings: the reader's own are used, ``RedisGateFacts._badge``)."""

    facts: BadgeFacts | None
    windows: tuple[BanWindow, ...] = ()
    list_issued_at: datetime | None = None
    identified: bool = False  # a national register number on file (a copy without the field: not known)


def _badge_copy(raw: bytes) -> _BadgeEntry | None:
    """The copy parsed; None for one that does not say its holder's status, whether the badge has a chip,
    or the badge's id (written by a server from before they were cached, during a rolling upgrade): not
    trusted, but read again (``_snapshot``), since taking it for active would let a suspended person
    through until it expired, taking it for chipless a number alone where the terminal asks for the chip
    (review 142), and without its id a stolen badge's decision would not name it (review 174)."""
    entry = json.loads(raw)
    if not entry.get("found"):
        return _BadgeEntry(None)
    holder_status, chip, badge_id = entry.get("holder_status"), entry.get("chip"), entry.get("id")
    if holder_status is None or not isinstance(chip, bool) or not badge_id:
        return None
    facts = BadgeFacts(found=True, status=entry["status"], person_id=uuid.UUID(entry["person_id"]),
                       valid_from=_dt(entry.get("valid_from")), valid_until=_dt(entry["valid_until"]),
                       activated_terminals=frozenset(entry["activated"]), holder_name=entry["holder"],
                       holder_status=holder_status, card_uid_on_record=chip, badge_id=uuid.UUID(badge_id))
    return _BadgeEntry(facts, tuple(BanWindow(s, _dt(f), _dt(u)) for s, f, u in entry["bans"]),
                       _dt(entry["list_issued_at"]), entry.get("identified", False))


def _rights(raw: bytes) -> tuple[RightFacts, ...] | None:
    """The copy parsed; None for one that does not name each right's issuer, contest, holder's status,
    whether customs holds it and the service's last face_mismatch on it (written by a server from before
    they were cached, during a rolling upgrade): not trusted, but read again (``_snapshot``), since without
    them a container two lines claim would not be seen as contested, nor the right of a company port security
    deactivated as refused (review 130), nor a container customs holds on another right as held, nor a gate
    asking again without a face after the service found it another person's (review 148)."""
    out = []
    for entry in json.loads(raw):
        if len(entry) < 17:
            return None
        (rid, container, terminal, state, blocked, commercial, customs, light, vfrom, vuntil, created, nom,
         issuer, contested, holder_active, customs_held, against) = entry[:17]
        out.append(RightFacts(
            id=uuid.UUID(rid), container=container, terminal=terminal, state=state, blocked=blocked,
            commercial=commercial, customs=customs, terminal_light=light, valid_from=_dt(vfrom),
            valid_until=_dt(vuntil), created_at=_dt(created),
            nomination=None if nom is None else NominationFacts(uuid.UUID(nom[0]), nom[1], nom[2], nom[3]),
            issuer=uuid.UUID(issuer) if issuer is not None else None, contested=contested is True,
            holder_active=holder_active is True, customs_held=customs_held is not False,
            face_against=None if against is None else FaceAgainst(
                uuid.UUID(against[0]), datetime.fromisoformat(against[1]), against[2],
                tuple(against[3]) if against[3] is not None else None)))
    return tuple(out)


def _policy(raw: bytes) -> TerminalPolicy | None:
    """The copy parsed; None for one that does not say whether the terminal's local face matcher is
    trusted, or whether it asks for the badge's chip (written by a server from before
    ``face_match_results`` or ``badge_chip_required``, during a rolling upgrade): read again
    (``_snapshot``) and replaced, so a terminal port security set to accept match results is not taken for
    one that refuses them, nor the other way round (review 131), nor one that asks for the chip for one
    that does not (review 142)."""
    stored = json.loads(raw)
    if "face_match_results" not in stored or "badge_chip_required" not in stored:
        return None
    return TerminalPolicy.stored(stored)


def _answer(row: dict[str, Any]) -> bytes:
    """What a repeated request_id is answered from (a StoredDecision, as JSON; the response embedded as
    encoded once, quaygate/jsonbody.py)."""
    return jsonbody.dumps({"id": row["id"], "fingerprint": row["fingerprint"], "response": row["response"],
                           "decision": row["decision"], "release_id": row["release_id"],
                           "committed": row["committed"], "direction": row["direction"], "terminal": row["terminal"]})


def _stored(raw: bytes) -> StoredDecision:
    d = jsonbody.loads(raw)
    return StoredDecision(id=uuid.UUID(d["id"]), fingerprint=d["fingerprint"], response=d["response"],
                          decision=d["decision"], release_id=uuid.UUID(d["release_id"]) if d["release_id"] else None,
                          committed=d["committed"], direction=d["direction"], terminal=d["terminal"])


def _row(raw: bytes) -> dict[str, Any]:
    d = jsonbody.loads(raw)
    d["id"] = uuid.UUID(d["id"])
    d["release_id"] = uuid.UUID(d["release_id"]) if d["release_id"] else None
    d["observed_at"] = _dt(d["observed_at"])
    d["decided_at"] = _dt(d["decided_at"])
    for name in ("badge_id", "badge_holder_id"):  # none in a row kept by a server from before review 174
        d[name] = uuid.UUID(d[name]) if d.get(name) else None
    return d


def _request_key(terminal: str, request_id: str) -> str:
    return f"{terminal}|{request_id}"


def _s(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _dt(raw: str | None) -> datetime | None:
    return None if raw is None else datetime.fromisoformat(raw)


BATCH = 1000  # decisions per insert at most
PAUSE = 0.2  # seconds the drainer waits after a short batch: at 1 000 checks/s, 200 per insert
CLAIM_EVERY = 10.0  # seconds between looks for a dead consumer's entries
CLAIM_IDLE_MS = 30_000  # an entry read and not acknowledged this long ago belongs to a dead consumer
CATCH_UP_EVERY = 1.0  # seconds between polls of the changes recorded in PostgreSQL (``catch_up``)
PRUNE_EVERY = 600.0  # seconds between sweeps of that record (``prune_changes``)


class Drainer:
    """The thread that moves kept check decisions into PostgreSQL and sends owed invalidations."""

    def __init__(self, facts: RedisGateFacts, *, consumer: str) -> None:
        self._facts = facts
        self._consumer = consumer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gate-decision-drain", daemon=True)

    def start(self) -> Drainer:
        self._thread.start()
        return self

    def _run(self) -> None:
        claimed_at = caught_at = pruned_at = 0.0
        while not self._stop.is_set():
            at = time.monotonic()
            if at - caught_at >= CATCH_UP_EVERY:
                caught_at = at
                pruned_at = self._changes(at, pruned_at)
            try:
                self._facts.flush_owed()
                claim = time.monotonic() - claimed_at > CLAIM_EVERY
                moved = self._facts.drain(self._consumer, count=BATCH, block_ms=500,
                                          claim_idle_ms=CLAIM_IDLE_MS if claim else None)
                if claim:
                    claimed_at = time.monotonic()
                if moved < BATCH:
                    self._stop.wait(PAUSE)  # let a batch gather: one insert for many decisions
            except Exception as exc:  # noqa: BLE001 - Redis or PostgreSQL away: say so, wait, try again
                if isinstance(exc, redis.RedisError):
                    self._facts.note_unavailable()
                log.exception("release.gate_facts.drain_failed")
                self._stop.wait(1.0)

    def _changes(self, at: float, pruned_at: float) -> float:
        """The changes recorded in PostgreSQL caught up, and their record swept now and then. A failure
        (PostgreSQL away) is said and holds up no drain; the next poll reads the same changes again.
        Returns when the record was last swept."""
        try:
            self._facts.catch_up()
            if at - pruned_at >= PRUNE_EVERY:
                self._facts.prune_changes(datetime.now(UTC))
                pruned_at = at
        except Exception:  # noqa: BLE001 - the drain must go on; said, and tried again at the next poll
            log.exception("release.gate_facts.catch_up_failed")
        return pruned_at

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

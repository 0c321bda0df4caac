"""The dataset's epoch: a Redis that lost or rolled back its data must not open a single-use window again.

Some things are used once only because a key in the cache says so (STYLE.md #4): a DPoP proof's and a
client assertion's ``jti``, a passkey login's sealed flow, an upstream login's state, an authorization
resume (claimed with ``SET NX``), a passkey registration's flow, a confidential client's pushed
authorization request (each taken with ``GETDEL``). Our Redis keeps nothing
on disk (``--save "" --appendonly no``). Started again, flushed, or failed over to an empty replica, it
has forgotten every claim: a captured proof still inside its iat window would be accepted again.
Started again from an older snapshot, or failed over to a replica that missed the last writes, it has
also got back what was taken since (a registration's flow, and with it a challenge a captured
attestation answers), and lost what was claimed since (a login's flow, whose challenge a captured
assertion answers).

So the cache keeps an **epoch**: the moment (Redis ``TIME``) from which it holds every claim it made and
every take. One key holds it with the server that set it (``<microseconds> <run_id>``). It starts anew
when a dataset this cache has not vouched for is found:

- by every connection's greeting (``GREETING``, sent by quaygate/redisline.py ``Line`` and
  ``Pipelined`` before the connection's first call): the key names another server (``run_id`` is new
  on every start of a Redis and different on every replica: data it did not write may lack the
  newest), or is missing (an empty Redis, a flushed one). The same greeting deletes, in the same atomic
  step and so before the connection's first call, the names a part trusts only from data this server
  wrote (``forget``, under that part's marker): the token revocations' load mark
  (quaygate/cache.py ``forget_on_new_dataset``), the gate facts' generations (and with them every copy
  filed under one: release_service/adapters/gate_facts.py);
- by every claim, put and take, in its own atomic script, when the key is missing: a FLUSHALL or
  FLUSHDB leaves every connection open, so no greeting would see it.

Every single-use step compares with the epoch inside Redis, in the same atomic step as the claim or
the take, never with a copy a process holds (stale after a flush on a connection it keeps):

- ``CLAIM``: refused when the item could have been accepted before the epoch (``usable_from``, the
  earliest moment it could first have been used, is earlier): its claim may have been lost;
- ``PUT`` / ``STAMPED``: a value is stored stamped with Redis's time; read or taken only if stored
  since the epoch.

Refused like an item used before: the client makes a new proof or starts again. What was made before
a loss is refused for good, used or not. So is what is made in the first moments after it, for as
long as a client's clock may be ahead (the verifier's leeway): a client assertion for 30 s
(ASSERTION_LEEWAY), or, without ``iat``, until its ``exp`` is MAX_ASSERTION_LIFETIME (300 s) past the
epoch. The in-process cache's epoch is the moment it is made: the same after every start of its server.

A DPoP proof has a way through at once: the **epoch's nonce** (RFC 9449 §8, §9). A claim refused for
the epoch answers with it (``Claim.nonce``: the SHA-1 of the epoch key's value, which names the moment
and the server, so every epoch has its own); the verifier hands it to the client as ``DPoP-Nonce`` with
``use_dpop_nonce``, and a proof carrying it was made after the client got it, so after the epoch
began: its claim, made in this epoch, holds. A proof with another epoch's nonce, or none, is judged by
its ``iat`` as before. A client that does not use nonces is let through once its proofs' ``iat`` is the
leeway (5 s) past the epoch.

Eviction loses claims too, one key at a time and unseen by any greeting: a Redis at its ``maxmemory``
deletes keys to make room unless its ``maxmemory-policy`` is ``noeviction`` (``allkeys-*``: any key;
``volatile-*``: keys with a TTL, as every claim, take and pending mark has). An evicted claim lets its
proof, assertion or request_id be used again; an evicted pending mark of the gate's facts
(release_service/adapters/gate_facts.py) lets a stale copy of a right or a badge be trusted; an evicted
revocation lets a revoked token pass. So every greeting reads the policy first (``INFO memory``, which a
managed Redis answers where CONFIG is disabled; no round trip of its own) and a connection to a Redis
with any other policy is refused (``EvictingRedis``), before the greeting writes anything: a server does
not start on one (quaygate/app.py), and after a failover to a replica configured otherwise every new
connection fails (503, the gate on PostgreSQL) rather than trust it. A full Redis under noeviction
refuses writes (OOM): a claim is then refused, never granted, and the request with it (503).

Limits: Redis's clock (TIME) is the epoch's, and a client's ``iat`` is compared with it: clocks kept
in step (NTP), as every ``iat`` check assumes. Behind a proxy that keeps the client's connection while
the server behind it changes, no greeting runs: only a missing epoch is seen then. A Redis Cluster is
not served (the keys of one script are not in one slot), as elsewhere in quaygate. Rate-limit
counters and lockouts (identity/ratelimit.py) are lost with the data, and start again.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import redis

from .redisline import Script
from .single_use import CLAIMED, CLAIMED_BEFORE, Claim

log = logging.getLogger(__name__)

# The epoch held in KEYS[n] ("<microseconds> <run_id>"), in microseconds, and the key's value (which
# the epoch's nonce is made of); made now when missing (a flushed Redis: nothing it holds is older
# than now). Integer microseconds (16 digits) are exact in
# Lua's doubles; string.format, never tostring (which keeps 14 digits).
_EPOCH = """
local function now_us()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end
local function epoch(key)
  local held = redis.call('GET', key)
  local since = held and tonumber(string.match(held, '^(%d+) '))
  if since then return since, held end
  local now = now_us()
  local id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
  held = now .. ' ' .. id
  redis.call('SET', key, held)
  return tonumber(now), held
end
"""

# Redis 7 at least: the scripts that must land on a full Redis say so with Redis 7's script flags
# (release_service/adapters/gate_facts.py ``_ALLOW_OOM``); an older Redis refuses them outright.
MIN_MAJOR = 7

# The eviction policy (INFO memory's maxmemory_policy; '' when it does not say), read by every greeting.
_POLICY = """
local function policy()
  return string.match(redis.call('INFO', 'memory'), 'maxmemory_policy:([%w%-]+)') or ''
end
"""

# A connection's greeting. First the eviction policy: any but noeviction (REQUIRED_POLICY) is answered
# at once, nothing written, and ``checked`` refuses the connection. Then KEYS[1]: the epoch; KEYS[2]
# (optional): the marker of the names to forget, KEYS[3...]: those names
# (``RedisCache.forget_on_new_dataset``). The epoch starts anew unless it was set by this very server;
# the names are deleted when the marker names another server (data last served elsewhere may lack
# their newest entries; without a marker, an empty or flushed Redis, nothing is left to distrust).
# ARGV[1], ARGV[2] (optional): the name holding the dataset the Redis database serves, and this process's
# dataset (quaygate/identity_of_dataset.py): claimed when nobody holds it; held by another, the greeting
# is answered at once with that one, nothing written (``ForeignRedis``).
# Returns the epoch (microseconds, as text), what was done (1 the names deleted, 2 a new epoch: added),
# and the policy.
GREETING = Script(_EPOCH + _POLICY + f"local MIN_MAJOR = {MIN_MAJOR}\n" + """
local policy = policy()
if policy ~= 'noeviction' then return {false, 0, policy} end
local server = redis.call('INFO', 'server')
local version = string.match(server, 'redis_version:([%d%.]+)') or ''
if (tonumber(string.match(version, '^(%d+)')) or 0) < MIN_MAJOR then return {false, 0, policy, version} end
local id = string.match(server, 'run_id:(%x+)')
if not id then return redis.error_reply('no run_id in INFO server') end
if ARGV[2] and ARGV[2] ~= '' then
  local owner = redis.call('GET', ARGV[1])
  if owner and owner ~= ARGV[2] then return {false, 0, policy, false, owner} end
  if not owner then redis.call('SET', ARGV[1], ARGV[2]) end
end
local done = 0
if #KEYS >= 2 then
  local was = redis.call('GET', KEYS[2])
  if was ~= id then
    redis.call('SET', KEYS[2], id)
    if was then
      for i = 3, #KEYS do redis.call('DEL', KEYS[i]) end
      done = 1
    end
  end
end
local held = redis.call('GET', KEYS[1])
local since, by
if held then since, by = string.match(held, '^(%d+) (%x*)$') end
if by ~= id then
  since = now_us()
  redis.call('SET', KEYS[1], since .. ' ' .. id)
  done = done + 2
end
return {since, done, policy}
""")

# The same, allowed on a full Redis (Redis 7 script flags; OOM under noeviction): the greeting of the gate
# facts' connections (release_service/adapters/gate_facts.py), whose pending marks and invalidations must
# land on a full Redis (their ``_ALLOW_OOM``) and which greet before them. It writes a marker and the epoch,
# once per server: as many writes as servers started, never as requests.
GREETING_ALLOW_OOM = Script("#!lua flags=allow-oom\n" + GREETING.source)

REQUIRED_POLICY = "noeviction"

# The Redis name holding the dataset a Redis database serves (quaygate/identity_of_dataset.py): no prefix,
# one per Redis database whatever the parts' prefixes.
OWNER_KEY = "qg:dataset:owner"


class UnsuitableRedis(redis.ConnectionError):
    """A Redis quaygate must not use, refused by a greeting (``checked``), the reason in its message. A
    connection error: every caller treats it as a Redis it cannot use (503, the gate on PostgreSQL), and
    a server does not start on one (quaygate/app.py)."""


class EvictingRedis(UnsuitableRedis):
    """A Redis whose ``maxmemory-policy`` may evict what must stay until it expires."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        super().__init__(refusal(policy))


class ForeignRedis(UnsuitableRedis):
    """A Redis database that serves another quaygate database's dataset (quaygate/identity_of_dataset.py)."""

    def __init__(self, theirs: str, ours: str | None, key: str) -> None:
        self.theirs, self.ours = theirs, ours
        super().__init__(
            f"this Redis database serves another quaygate database (dataset {theirs}; this one's is "
            f"{ours or 'unknown'}, the name {key} says which it serves). What quaygate keeps in Redis is named by "
            "terminal, badge, container and token, not by database, so two deployments sharing it would answer "
            "each other's gates from each other's copies. Give each deployment its own Redis database "
            "(QUAYGATE_REDIS_URL ending /<db>), or, if the other deployment is gone for good, delete that name "
            "(or flush this Redis database).")


class OldRedis(UnsuitableRedis):
    """A Redis older than 7 (``MIN_MAJOR``), without script flags."""

    def __init__(self, version: str) -> None:
        self.version = version
        super().__init__(f"Redis {version or '(version not given)'} is too old: quaygate needs Redis {MIN_MAJOR} "
                         "or later (its scripts that must land on a full Redis are flagged allow-oom, which "
                         "older versions refuse).")


def refusal(policy: str) -> str:
    """Why a Redis with ``policy`` is refused, and what to do."""
    found = f"Redis's maxmemory-policy is {policy}" if policy else "Redis's INFO memory names no maxmemory-policy"
    return (f"{found}; quaygate needs {REQUIRED_POLICY}. Under memory pressure any other policy deletes keys "
            "quaygate relies on before they expire: the single-use claims of DPoP proofs, client assertions and "
            "gate request ids (a captured one could be replayed), the gate's pending marks (a stale cached right "
            "or badge would be trusted) and token revocations (a revoked token would pass). Set maxmemory-policy "
            f"{REQUIRED_POLICY} (on a managed Redis, in its parameter group or configuration) with room enough "
            "(maxmemory, or 0 for no limit): a full Redis then refuses writes, and quaygate the requests that "
            "need one.")

# KEYS[1]: the claim; KEYS[2]: the epoch. ARGV[1]: ttl in ms; ARGV[2]: the earliest moment the item
# could have been used, in microseconds; ARGV[3]: the epoch nonce the item carries, or ''. 1 claimed;
# 0 claimed before; the epoch's nonce (text) when the item could have been used before the epoch and
# does not carry that nonce (nothing set).
CLAIM = Script(_EPOCH + """
local since, held = epoch(KEYS[2])
if tonumber(ARGV[2]) < since then
  local nonce = redis.sha1hex(held)
  if ARGV[3] ~= nonce then return nonce end
end
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
""")

# KEYS[1]: the value; KEYS[2]: the epoch. ARGV[1]: ttl in ms; ARGV[2]: the value, stored after its
# stamp ("<microseconds> "). The epoch is made first when missing: a value put just after a flush is
# not older than the epoch its take will find.
PUT = Script(_EPOCH + """
epoch(KEYS[2])
redis.call('SET', KEYS[1], now_us() .. ' ' .. ARGV[2], 'PX', ARGV[1])
return 1
""")

# A value ``PUT`` stored, read: KEYS[1] the value, KEYS[2] the epoch; ARGV[1] 'GETDEL' (a take) or 'GET'
# (a peek). The value without its stamp; nil when there is none; 0 when it was stored before the epoch
# (or without a stamp): it may have been taken before.
STAMPED = Script(_EPOCH + """
local held = redis.call(ARGV[1], KEYS[1])
if not held then return nil end
local cut = string.find(held, ' ', 1, true)
local at = cut and tonumber(string.sub(held, 1, cut - 1))
if not at or at < epoch(KEYS[2]) then return 0 end
return string.sub(held, cut + 1)
""")


def greeting(epoch_key: str, marker: str | None = None, forget: list[str] | tuple[str, ...] = (), *,
             allow_oom: bool = False, owner: str | None = None) -> tuple[Any, ...]:
    """The greeting command (EVAL, not EVALSHA: nothing else is needed first on a new connection):
    the eviction policy and the epoch checked, and ``forget`` deleted when ``marker`` names another
    server. ``allow_oom``: run on a full Redis too (``GREETING_ALLOW_OOM``). ``owner``: this process's
    dataset (quaygate/identity_of_dataset.py), for which the Redis database is claimed, or refused when
    it serves another (None: no claim). Its reply goes to ``greeted``."""
    keys = [epoch_key, *([marker, *forget] if marker is not None else [])]
    claim = (OWNER_KEY, owner) if owner else ()
    return ("EVAL", (GREETING_ALLOW_OOM if allow_oom else GREETING).source, len(keys), *keys, *claim)


def checked(reply: Any, ours: str | None = None) -> None:
    """EvictingRedis unless a greeting's reply (``GREETING``) names the policy required;
    OldRedis when it names a version (``GREETING`` does, only for a Redis older than ``MIN_MAJOR``);
    ForeignRedis when it names the dataset another process claimed the Redis database for (``ours``: this
    process's, for the message)."""
    found = reply[2] if isinstance(reply, list) and len(reply) > 2 else None
    policy = found.decode("utf-8", "replace") if isinstance(found, bytes) else ""
    if policy != REQUIRED_POLICY:
        log.error("quaygate.cache.refused.eviction_policy", extra={"fields": {"policy": policy}})
        raise EvictingRedis(policy)
    if isinstance(reply, list) and len(reply) > 4 and reply[4] is not None:
        theirs = reply[4].decode("utf-8", "replace") if isinstance(reply[4], bytes) else str(reply[4])
        log.error("quaygate.cache.refused.foreign_dataset", extra={"fields": {"theirs": theirs, "ours": ours}})
        raise ForeignRedis(theirs, ours, OWNER_KEY)
    if isinstance(reply, list) and len(reply) > 3 and reply[3] is not None:
        old = reply[3].decode("utf-8", "replace") if isinstance(reply[3], bytes) else ""
        log.error("quaygate.cache.refused.version", extra={"fields": {"version": old}})
        raise OldRedis(old)


def greeted(reply: Any, ours: str | None = None) -> None:
    """A greeting's reply: the connection refused unless the policy is right (``checked``); what it did,
    logged: a new epoch (every single-use item made before it is refused from now on), names forgotten
    (loaded again)."""
    checked(reply, ours)
    try:
        done = int(reply[1])
    except (TypeError, ValueError, IndexError):
        return
    if done & 2:
        log.warning("quaygate.cache.dataset.new_epoch")
    if done & 1:
        log.warning("quaygate.cache.dataset.forgotten")


def microseconds(at: float) -> int:
    """``at`` (Unix seconds) in whole microseconds, rounded down: an item is never taken for later
    than it is."""
    return math.floor(at * 1_000_000)


def claim_call(key: str, epoch_key: str, ttl_seconds: float, usable_from: float, nonce: str | None = None
               ) -> tuple[list[str], list[Any]]:
    """``CLAIM``'s keys and arguments."""
    return [key, epoch_key], [max(1, int(ttl_seconds * 1000)), microseconds(usable_from), nonce or ""]


def claimed(reply: Any) -> Claim:
    """``CLAIM``'s reply."""
    if isinstance(reply, bytes):
        log.info("quaygate.cache.claim.before_epoch")
        return Claim(False, reply.decode("ascii"))
    return CLAIMED if reply == 1 else CLAIMED_BEFORE


def taken(reply: Any) -> bytes | None:
    """``STAMPED``'s reply: the value, or None."""
    if isinstance(reply, bytes):
        return reply
    if reply == 0:
        log.info("quaygate.cache.take.before_epoch")
    return None

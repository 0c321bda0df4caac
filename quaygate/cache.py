"""The cache: Redis when QUAYGATE_REDIS_URL is set, else an in-process stand-in (embedded default).

Single-use things (assertion ``jti``s, WebAuthn challenges, DPoP proofs, gate request ids) are
claimed with one atomic ``SET NX`` with expiry (STYLE.md #4), or stored with ``put`` and taken with
one atomic ``GETDEL`` (``take``). Both hold only as long as the cache's data does: each is refused for
an item made before the cache's dataset began (quaygate/dataset.py, the epoch), whose claim or take a
Redis that lost or rolled back its data may have forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import dataset
from .redisline import Line, Pipelined, Script

log = logging.getLogger(__name__)

# The name (for ``get`` and ``get_many``) of Redis's dataset epoch (quaygate/dataset.py): new, or gone,
# whenever the data Redis holds is not what it last served (started again, from an older snapshot or
# empty, a replica promoted, a flush). A part that keeps a shared counter's value to tell whether
# something changed (ClientRegistry's epoch) reads it with the counter: a counter rolled back to a value
# it already read (its last bumps lost) is then not taken for "nothing changed". Never set in the
# in-process cache, whose data is its process's own.
DATASET_EPOCH = "dataset:epoch"


@dataclass(frozen=True)
class Counts:
    """A sliding count's keys and reckoning (identity.ratelimit): ``key`` this window's count, ``last``
    the last window's, weighted by ``left`` / ``window`` (ms: the part of the last window still within a
    window's length of now, which is what is left of this one). Full when one more would pass ``limit``:
    (count + 1) x window + last x left > limit x window, in integers."""

    key: str
    last: str
    limit: int
    left: int
    window: int

    def full(self, count: int, last: int) -> bool:
        return (count + 1) * self.window + last * self.left > self.limit * self.window


class Cache(Protocol):
    # Whether every process of the service sees the same cache (Redis), or only this one (in-process).
    # What must hold across processes (single-use claims, revocations, client changes) reads it.
    shared: bool

    def claim(self, key: str, ttl_seconds: float, *, usable_from: float, nonce: str | None = None) -> dataset.Claim:
        """True for the first caller only, until the key expires (SET key 1 NX PX ttl). False too when
        the item could have been used before this cache's dataset began: ``usable_from`` (Unix seconds),
        the earliest moment it could first have been accepted, is earlier than the epoch
        (quaygate/dataset.py): its claim may have been lost with the data. Unless it carries the epoch's
        ``nonce``, which the refusal gives (``Claim.nonce``): made since, it is claimed as any other."""
        ...

    def get(self, key: str) -> bytes | None: ...

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Several keys in one round trip (MGET)."""
        ...

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None: ...

    def delete(self, *keys: str) -> None:
        """Remove these keys (one round trip)."""
        ...

    def put(self, key: str, value: bytes, ttl_seconds: float) -> None:
        """Store a single-use value for ``take``, stamped with the moment it was stored (read it with
        ``take`` only)."""
        ...

    def peek(self, key: str) -> bytes | None:
        """What ``put`` stored, left in place; None as ``take`` would answer None."""
        ...

    def take(self, key: str) -> bytes | None:
        """Read and delete what ``put`` stored, in one atomic step (GETDEL): of concurrent takers, one
        gets the value. None too for a value stored before this cache's dataset began (a Redis started
        again from an older snapshot brings back values taken since)."""
        ...

    def incr(self, key: str, ttl_seconds: float) -> int:
        """Count within a window that starts at the first increment (rate limits)."""
        ...

    def incr_peek(self, key: str, ttl_seconds: float, peek: str) -> tuple[int, bytes | None]:
        """incr(key) and get(peek) in one round trip (a rate limit counted and another read)."""
        ...

    def incr_peek_many(self, key: str, ttl_seconds: float, peeks: list[str]) -> tuple[int, list[bytes | None]]:
        """incr(key) and get() of each of ``peeks``, in one round trip."""
        ...

    def incr_sliding(self, counts: Counts, ttl_seconds: float, peeks: list[str], outer: Counts | None = None
                     ) -> tuple[int, int, int, list[bytes | None]]:
        """A sliding count (identity.ratelimit), in one round trip, atomic: incr(counts.key) with
        ``ttl_seconds`` if one more is within its limit (``Counts.full``), else nothing. With ``outer``, the
        wider count it is within (a client address's network's): nothing is counted once ``outer`` is
        full, and ``outer`` is counted with ``counts.key``, only then. Returns 0 (counted), 1 (refused by
        ``counts``) or 2 (by ``outer``); that count's key and last values before this request; get() of
        each of ``peeks``. ``outer`` is windowed as ``counts`` is (the same ``window`` and ``left``).

        So the wider count holds only what passed the narrower one (one key spending its own allowance
        spends none of its neighbours'), and a refusal writes nothing: each key created was counted in
        ``outer``, so there are at most ``outer``'s limit of them per window (identity.ratelimit)."""
        ...

    async def incr_sliding_async(self, counts: Counts, ttl_seconds: float, peeks: list[str],
                                 outer: Counts | None = None) -> tuple[int, int, int, list[bytes | None]]:
        """``incr_sliding`` from the event loop, which serves other requests while Redis answers: a Redis
        that hangs holds this request until the timeout, never the loop (review 168, finding 2)."""
        ...

    async def get_many_async(self, keys: list[str]) -> list[bytes | None]:
        """``get_many`` from the event loop, as ``incr_sliding_async``."""
        ...

    def ping(self) -> bool: ...

    def close_pipelined(self) -> None:
        """Close the event loops' connections of the ``_async`` calls (an app's lifespan ends: its loop
        is closing); a later call connects anew."""
        ...

    def greet(self) -> None:
        """Connect now, as the first call would: Redis's greeting checks its eviction policy and the
        dataset's epoch (quaygate/dataset.py), and raises what it refuses (``EvictingRedis``). At start."""
        ...

    def close(self) -> None: ...


SWEEP_FLOOR = 10_000  # entries below which the in-process cache never sweeps


class MemoryCache:
    """One process only: fine for the embedded default and tests, not for several replicas.

    Its dataset began when it was made: a process started again has forgotten every claim, so an item
    that could have been used before (a DPoP proof within its iat window) is refused as used.

    Expired entries go when read, and in a sweep once the entries doubled since the last sweep: each
    write pays for a sweep in its share (amortised constant), never a full scan per write, and what is
    kept stays within twice what is live (a flood of single-use claims cannot slow every claim after it).
    """

    shared = False

    def __init__(self, *, since: float | None = None) -> None:
        """``since``: the moment its dataset began (the epoch, quaygate/dataset.py), Unix seconds; by
        default now, when it is made: nothing was claimed in it before."""
        # key -> (value, expiry, stored by ``put``): ``take`` takes only those, as Redis's does.
        self._data: dict[str, tuple[bytes, float | None, bool]] = {}
        self._lock = threading.Lock()
        self._sweep_at = SWEEP_FLOOR
        self._since = time.time() if since is None else since
        self._nonce = secrets.token_hex(20)  # the epoch's nonce (quaygate/dataset.py): this cache's own

    def _live(self, key: str, now: float) -> tuple[bytes, float | None, bool] | None:
        item = self._data.get(key)
        if item is not None and item[1] is not None and item[1] <= now:
            del self._data[key]
            return None
        return item

    def claim(self, key: str, ttl_seconds: float, *, usable_from: float, nonce: str | None = None) -> dataset.Claim:
        if usable_from < self._since and nonce != self._nonce:
            log.info("quaygate.cache.claim.before_epoch")
            return dataset.Claim(False, self._nonce)
        now = time.monotonic()
        with self._lock:
            if self._live(key, now) is not None:
                return dataset.CLAIMED_BEFORE
            self._data[key] = (b"1", now + ttl_seconds, False)
            self._grown(now)
            return dataset.CLAIMED

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._live(key, time.monotonic())
            return None if item is None else item[0]

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.get(k) for k in keys]

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        self._store(key, value, ttl_seconds, once=False)

    def put(self, key: str, value: bytes, ttl_seconds: float) -> None:
        # No stamp needed: whatever this cache holds was stored since it was made.
        self._store(key, value, ttl_seconds, once=True)

    def _store(self, key: str, value: bytes, ttl_seconds: float | None, *, once: bool) -> None:
        now = time.monotonic()
        with self._lock:
            self._data[key] = (value, None if ttl_seconds is None else now + ttl_seconds, once)
            self._grown(now)

    def delete(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)

    def peek(self, key: str) -> bytes | None:
        with self._lock:
            item = self._live(key, time.monotonic())
            return None if item is None or not item[2] else item[0]

    def take(self, key: str) -> bytes | None:
        with self._lock:
            item = self._live(key, time.monotonic())
            self._data.pop(key, None)
            return None if item is None or not item[2] else item[0]

    def incr(self, key: str, ttl_seconds: float) -> int:
        now = time.monotonic()
        with self._lock:
            return self._incr(key, ttl_seconds, now)

    def _incr(self, key: str, ttl_seconds: float, now: float) -> int:
        item = self._live(key, now)
        count = 1 if item is None else int(item[0]) + 1
        expiry = now + ttl_seconds if item is None else item[1]
        self._data[key] = (str(count).encode(), expiry, False)
        self._grown(now)
        return count

    def incr_peek(self, key: str, ttl_seconds: float, peek: str) -> tuple[int, bytes | None]:
        count, (peeked,) = self.incr_peek_many(key, ttl_seconds, [peek])
        return count, peeked

    def incr_peek_many(self, key: str, ttl_seconds: float, peeks: list[str]) -> tuple[int, list[bytes | None]]:
        count = self.incr(key, ttl_seconds)
        return count, [self.get(p) for p in peeks]

    def incr_sliding(self, counts: Counts, ttl_seconds: float, peeks: list[str], outer: Counts | None = None
                     ) -> tuple[int, int, int, list[bytes | None]]:
        now = time.monotonic()
        with self._lock:
            verdict = self._full(outer, now, 2) if outer is not None else None
            if verdict is None:
                verdict = self._full(counts, now, 1)
            if verdict is None:
                verdict = (0, *self._read(counts, now))
                self._incr(counts.key, ttl_seconds, now)
                if outer is not None:
                    self._incr(outer.key, ttl_seconds, now)
            peeked = [self._live(p, now) for p in peeks]
        return (*verdict, [None if item is None else item[0] for item in peeked])

    async def incr_sliding_async(self, counts: Counts, ttl_seconds: float, peeks: list[str],
                                 outer: Counts | None = None) -> tuple[int, int, int, list[bytes | None]]:
        return self.incr_sliding(counts, ttl_seconds, peeks, outer)  # in memory: nothing to wait for

    async def get_many_async(self, keys: list[str]) -> list[bytes | None]:
        return self.get_many(keys)

    def _read(self, counts: Counts, now: float) -> tuple[int, int]:
        held = [self._live(k, now) for k in (counts.key, counts.last)]
        return int(held[0][0]) if held[0] else 0, int(held[1][0]) if held[1] else 0

    def _full(self, counts: Counts, now: float, refused: int) -> tuple[int, int, int] | None:
        count, last = self._read(counts, now)
        return (refused, count, last) if counts.full(count, last) else None

    def ping(self) -> bool:
        return True

    def greet(self) -> None:
        pass  # nothing to connect to

    def close_pipelined(self) -> None:
        pass  # nothing to close

    def close(self) -> None:
        self._data.clear()

    def _grown(self, now: float) -> None:
        if len(self._data) > self._sweep_at:
            self._sweep(now)
            self._sweep_at = max(SWEEP_FLOOR, 2 * len(self._data))

    def _sweep(self, now: float) -> None:
        for k in [k for k, (_, exp, _) in self._data.items() if exp is not None and exp <= now]:
            del self._data[k]


# One command, one round trip, atomic: the count and its expiry can never be parted (a counter left
# without expiry would lock its key out for good), and an optional second key is read.
_INCR = Script("""
local count = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1], 'NX')
local out = {count}
for i = 2, #KEYS do out[i] = redis.call('GET', KEYS[i]) end
return out
""")


# ``Cache.incr_sliding``: KEYS[1], KEYS[2] the count and its last window's; with ARGV[5] (the wider limit),
# KEYS[3], KEYS[4] the wider count and its last window's; the rest read. ARGV the expiry (ms), the window
# and what is left of it (ms), the limit. A refusal writes nothing (on a full Redis, too: it needs no room).
_INCR_SLIDING = Script("""
local window, left = tonumber(ARGV[2]), tonumber(ARGV[3])
local function full(key, last, limit)
  local count = tonumber(redis.call('GET', key) or '0')
  local before = tonumber(redis.call('GET', last) or '0')
  return (count + 1) * window + before * left > limit * window, count, before
end
local first, out = 3, nil
if ARGV[5] then
  first = 5
  local spent, count, before = full(KEYS[3], KEYS[4], tonumber(ARGV[5]))
  if spent then out = {2, count, before} end
end
if not out then
  local spent, count, before = full(KEYS[1], KEYS[2], tonumber(ARGV[4]))
  if spent then
    out = {1, count, before}
  else
    out = {0, count, before}
    redis.call('INCR', KEYS[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[1], 'NX')
    if first == 5 then
      redis.call('INCR', KEYS[3])
      redis.call('PEXPIRE', KEYS[3], ARGV[1], 'NX')
    end
  end
end
for i = first, #KEYS do out[#out + 1] = redis.call('GET', KEYS[i]) end
return out
""")


class RedisCache:
    shared = True

    def __init__(self, url: str, *, prefix: str = "qg:") -> None:
        import redis

        self._r = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30)
        self._p = prefix
        self._epoch = prefix + DATASET_EPOCH  # quaygate/dataset.py
        self._forget: list[str] = []
        self._owner: str | None = None  # the dataset this Redis database is claimed for (``own``)
        # Every call below: one round trip on this thread's own connection, each connection made checking
        # first that this Redis wrote the data it holds: the dataset's epoch, and ``forget_on_new_dataset``.
        self._line = Line(self._r, greeting=self._greeting, greeted=self.greeted)
        # The event loop's calls (the rate limits' middleware): pipelined on the loop's own connection,
        # greeted as the Line's are; through a thread where it cannot be made (a Unix socket, Sentinel).
        self._pipe = Pipelined(self._r, greeting=self._greeting, greeted=self.greeted)

    def own(self, dataset_id: str) -> None:
        """Claim this Redis database for ``dataset_id`` (quaygate/identity_of_dataset.py) with every connection
        made from now on, this cache's and those greeted with ``epoch_greeting`` (the gate facts'): one
        that serves another dataset is refused (``dataset.ForeignRedis``). Before the first connection."""
        self._owner = dataset_id

    def greeted(self, reply: Any) -> None:
        """A greeting's reply, judged for this cache's dataset (``dataset.greeted``)."""
        dataset.greeted(reply, self._owner)

    def forget_on_new_dataset(self, *keys: str) -> None:
        """Delete ``keys`` when a connection finds data this Redis did not write (quaygate/dataset.py
        ``GREETING``: a Redis started again from an older snapshot, a replica promoted in a
        failover): a marker that says a whole set was loaded, of which that older data may lack the
        newest entries, so the set is loaded again."""
        for key in keys:
            if self._p + key not in self._forget:
                self._forget.append(self._p + key)

    def _greeting(self) -> tuple[Any, ...]:
        marker = self._p + "dataset" if self._forget else None
        return dataset.greeting(self._epoch, marker, list(self._forget), owner=self._owner)

    def epoch_greeting(self, marker: str | None = None, forget: Sequence[str] = (), *, allow_oom: bool = False
                       ) -> tuple[Any, ...]:
        """The greeting of a connection of another part that makes this cache's claims (``claim_call``),
        the gate facts': this cache's epoch checked, and that part's own ``forget`` deleted under its own
        ``marker`` (quaygate/dataset.py ``greeting``), never this cache's names: a marker per list, so
        that each list is forgotten by the first connection of its own part that meets a new server,
        whichever part's connection greeted first."""
        return dataset.greeting(self._epoch, marker, tuple(forget), allow_oom=allow_oom, owner=self._owner)

    def qualified(self, key: str) -> str:
        """The Redis name of ``key``: for a script that reads cache keys with its own (one round trip)."""
        return self._p + key

    def claim(self, key: str, ttl_seconds: float, *, usable_from: float, nonce: str | None = None) -> dataset.Claim:
        return dataset.claimed(self._line.run(dataset.CLAIM, *self.claim_call(key, ttl_seconds,
                                                                               usable_from=usable_from, nonce=nonce)))

    def claim_call(self, key: str, ttl_seconds: float, *, usable_from: float, nonce: str | None = None
                   ) -> tuple[list[str], list[Any]]:
        """``claim``'s script (quaygate/dataset.py ``CLAIM``), keys and arguments, for a caller that runs
        it on a connection of its own (the gate's, pipelined on the event loop) and reads its reply
        with ``dataset.claimed``. That connection must greet as this cache's do (``epoch_greeting``)."""
        return dataset.claim_call(self._p + key, self._epoch, ttl_seconds, usable_from, nonce)

    def get(self, key: str) -> bytes | None:
        value = self._line.call("GET", self._p + key)
        return value if isinstance(value, bytes) else None

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return _values(self._line.call("MGET", *[self._p + k for k in keys]))

    async def get_many_async(self, keys: list[str]) -> list[bytes | None]:
        command = ("MGET", *[self._p + k for k in keys])
        if not self._pipe.available:
            return _values(await asyncio.to_thread(self._line.call, *command))
        return _values(await self._pipe.call(*command))

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        if ttl_seconds is None:
            self._line.call("SET", self._p + key, value)
        else:
            self._line.call("SET", self._p + key, value, "PX", max(1, int(ttl_seconds * 1000)))

    def delete(self, *keys: str) -> None:
        if keys:
            self._line.call("DEL", *(self._p + k for k in keys))

    def put(self, key: str, value: bytes, ttl_seconds: float) -> None:
        self._line.run(dataset.PUT, [self._p + key, self._epoch], [max(1, int(ttl_seconds * 1000)), value])

    def peek(self, key: str) -> bytes | None:
        return dataset.taken(self._line.run(dataset.STAMPED, [self._p + key, self._epoch], ["GET"]))

    def take(self, key: str) -> bytes | None:
        return dataset.taken(self._line.run(dataset.STAMPED, [self._p + key, self._epoch], ["GETDEL"]))

    def incr(self, key: str, ttl_seconds: float) -> int:
        return int(self._line.run(_INCR, [self._p + key], [max(1, int(ttl_seconds * 1000))])[0])

    def incr_peek(self, key: str, ttl_seconds: float, peek: str) -> tuple[int, bytes | None]:
        count, (peeked,) = self.incr_peek_many(key, ttl_seconds, [peek])
        return count, peeked

    def incr_peek_many(self, key: str, ttl_seconds: float, peeks: list[str]) -> tuple[int, list[bytes | None]]:
        reply = self._line.run(_INCR, [self._p + key, *(self._p + p for p in peeks)],
                               [max(1, int(ttl_seconds * 1000))])
        return int(reply[0]), [v if isinstance(v, bytes) else None for v in reply[1:]]

    def incr_sliding(self, counts: Counts, ttl_seconds: float, peeks: list[str], outer: Counts | None = None
                     ) -> tuple[int, int, int, list[bytes | None]]:
        return _sliding(self._line.run(_INCR_SLIDING, *self._sliding_call(counts, ttl_seconds, peeks, outer)))

    async def incr_sliding_async(self, counts: Counts, ttl_seconds: float, peeks: list[str],
                                 outer: Counts | None = None) -> tuple[int, int, int, list[bytes | None]]:
        call = self._sliding_call(counts, ttl_seconds, peeks, outer)
        if not self._pipe.available:
            return _sliding(await asyncio.to_thread(self._line.run, _INCR_SLIDING, *call))
        return _sliding(await self._pipe.run(_INCR_SLIDING, *call))

    def _sliding_call(self, counts: Counts, ttl_seconds: float, peeks: list[str], outer: Counts | None
                      ) -> tuple[list[Any], list[Any]]:
        keys = [self._p + counts.key, self._p + counts.last]
        args: list[Any] = [max(1, int(ttl_seconds * 1000)), counts.window, counts.left, counts.limit]
        if outer is not None:
            # one window and what is left of it for both: ``outer``'s are ``counts``'
            keys += [self._p + outer.key, self._p + outer.last]
            args.append(outer.limit)
        return [*keys, *(self._p + p for p in peeks)], args

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except Exception:  # noqa: BLE001 - readiness reports any failure as not ready
            return False

    def greet(self) -> None:
        self._line.call("PING")  # this thread's connection, made and greeted if it is not yet

    def close_pipelined(self) -> None:
        self._pipe.close()

    def close(self) -> None:
        self._pipe.close()
        self._line.close()
        self._r.close()


def _values(values: list[Any]) -> list[bytes | None]:
    return [v if isinstance(v, bytes) else None for v in values]


def _sliding(reply: list[Any]) -> tuple[int, int, int, list[bytes | None]]:
    return int(reply[0]), int(reply[1]), int(reply[2]), _values(reply[3:])


def make_cache(redis_url: str | None) -> Cache:
    return RedisCache(redis_url) if redis_url else MemoryCache()

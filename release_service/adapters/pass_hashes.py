"""A right's gate-pass badge hashes, kept in the shared cache between fetches (services/gate_passes.py
``BadgeHashKeeper``, review 142).

A pass names its driver's badges by scrypt hashes (some 65 ms each): kept here, a right's are computed
once for every replica and fetch, not at every fetch (60 s) of every adapter. An entry is the salt, the
parameters and, per badge id, the hashes of its number and card UID: what a pass publishes anyway, no
number, and its key names the right and the driver (never a badge number). Entries expire after
``TTL`` (a right is nominated for days, not months), which bounds memory. A cache that does not answer
keeps nothing: the hashes are computed again, within the answer's budget, never an error at the fetch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from quaygate.cache import Cache

log = logging.getLogger(__name__)

PREFIX = "gate-pass-hashes:"
TTL = 7 * 24 * 3600.0


class CachedBadgeHashes:
    def __init__(self, cache: Cache, *, ttl: float = TTL) -> None:
        self._cache, self._ttl = cache, ttl

    def get(self, keys: Sequence[str]) -> list[Mapping[str, Any] | None]:
        try:
            raw = self._cache.get_many([PREFIX + k for k in keys])
        except redis.RedisError as exc:
            log.warning("release.gate.pass_hashes_unavailable", extra={"fields": {"error": type(exc).__name__}})
            return [None] * len(keys)
        return [_entry(r) for r in raw]

    def put(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        try:
            for key, entry in entries.items():
                self._cache.set(PREFIX + key, json.dumps(entry, separators=(",", ":")).encode(), self._ttl)
        except redis.RedisError as exc:
            log.warning("release.gate.pass_hashes_unavailable", extra={"fields": {"error": type(exc).__name__}})


def _entry(raw: bytes | None) -> Mapping[str, Any] | None:
    if raw is None:
        return None
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None

"""The cache: Redis when QUAYGATE_REDIS_URL is set, else an in-process stand-in (embedded default).

Single-use things (assertion ``jti``s, WebAuthn challenges, DPoP proofs, gate request ids) are
claimed with one atomic ``SET NX`` with expiry (STYLE.md #4).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Cache(Protocol):
    def claim(self, key: str, ttl_seconds: float) -> bool:
        """True for the first caller only, until the key expires (SET key 1 NX PX ttl)."""
        ...

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None: ...

    def delete(self, key: str) -> None: ...

    def incr(self, key: str, ttl_seconds: float) -> int:
        """Count within a window that starts at the first increment (rate limits)."""
        ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


class MemoryCache:
    """One process only: fine for the embedded default and tests, not for several replicas."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str, now: float) -> tuple[bytes, float | None] | None:
        item = self._data.get(key)
        if item is not None and item[1] is not None and item[1] <= now:
            del self._data[key]
            return None
        return item

    def claim(self, key: str, ttl_seconds: float) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._live(key, now) is not None:
                return False
            self._data[key] = (b"1", now + ttl_seconds)
            if len(self._data) > 100_000:
                self._sweep(now)
            return True

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._live(key, time.monotonic())
            return None if item is None else item[0]

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        with self._lock:
            self._data[key] = (value, None if ttl_seconds is None else time.monotonic() + ttl_seconds)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def incr(self, key: str, ttl_seconds: float) -> int:
        now = time.monotonic()
        with self._lock:
            item = self._live(key, now)
            count = 1 if item is None else int(item[0]) + 1
            expiry = now + ttl_seconds if item is None else item[1]
            self._data[key] = (str(count).encode(), expiry)
            return count

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        self._data.clear()

    def _sweep(self, now: float) -> None:
        for k in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
            del self._data[k]


class RedisCache:
    def __init__(self, url: str, *, prefix: str = "qg:") -> None:
        import redis

        self._r = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30)
        self._p = prefix

    def claim(self, key: str, ttl_seconds: float) -> bool:
        return bool(self._r.set(self._p + key, b"1", nx=True, px=max(1, int(ttl_seconds * 1000))))

    def get(self, key: str) -> bytes | None:
        value = self._r.get(self._p + key)
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        self._r.set(self._p + key, value, px=None if ttl_seconds is None else max(1, int(ttl_seconds * 1000)))

    def delete(self, key: str) -> None:
        self._r.delete(self._p + key)

    def incr(self, key: str, ttl_seconds: float) -> int:
        pipe = self._r.pipeline()
        pipe.incr(self._p + key)
        pipe.pexpire(self._p + key, max(1, int(ttl_seconds * 1000)), nx=True)
        count, _ = pipe.execute()
        return int(count)

    def ping(self) -> bool:
        try:
            return bool(self._r.ping())
        except Exception:  # noqa: BLE001 - readiness reports any failure as not ready
            return False

    def close(self) -> None:
        self._r.close()


def make_cache(redis_url: str | None) -> Cache:
    return RedisCache(redis_url) if redis_url else MemoryCache()

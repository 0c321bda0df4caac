"""The in-process cache (the embedded default, quaygate/cache.py): expired entries do not pile up, and a
flood of single-use claims (anonymous passkey login options, say) does not make every claim after it
scan the whole cache."""

from __future__ import annotations

import time

import pytest

from quaygate import cache as cache_module
from quaygate.cache import SWEEP_FLOOR, MemoryCache
from quaygate.single_use import CLAIMED_BEFORE


def test_expired_entries_of_every_kind_of_write_do_not_pile_up() -> None:
    c = MemoryCache()
    for i in range(3 * SWEEP_FLOOR):
        c.set(f"s{i}", b"x", 0.001)
        c.incr(f"rl:{i}", 0.001)  # a rate-limit counter per address: never read again
        c.claim(f"jti:{i}", 0.001, usable_from=time.time())
        if i % 1000 == 0:
            time.sleep(0.002)  # what was written so far has expired
    # Kept: at most twice what was live at the last sweep (live: the last few thousand at most).
    assert len(c._data) <= 2 * SWEEP_FLOOR + 3000, len(c._data)


def test_a_flood_of_live_claims_does_not_make_each_claim_scan_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    c = MemoryCache()
    sweeps: list[int] = []
    sweep = MemoryCache._sweep

    def counted(self: MemoryCache, now: float) -> None:
        sweeps.append(len(self._data))
        sweep(self, now)

    monkeypatch.setattr(cache_module.MemoryCache, "_sweep", counted)
    for i in range(15 * SWEEP_FLOOR):  # all live (five minutes), as a flood of login options would be
        c.set(f"flow:{i}", b"{}", 300)
    before = len(sweeps)
    for i in range(1000):
        assert c.claim(f"dpop:{i}", 70, usable_from=time.time())
    assert len(sweeps) - before <= 1, sweeps  # a full scan per claim before
    assert before <= 5  # doubling: 10k, 20k, 40k, 80k (log2 of the growth), not one per write
    assert c.claim("dpop:0", 70, usable_from=time.time()) == CLAIMED_BEFORE  # and claims stay single-use

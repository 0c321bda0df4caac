"""A single-use claim's outcome (quaygate/dataset.py ``CLAIM``, the caches' ``claim``): standard library
only, so that the ports of the release services can name it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    """True when this call claimed the item. ``nonce``: refused because the item could have been used
    before the cache's epoch (quaygate/dataset.py); an item made since that carries this nonce is
    claimed as any other."""

    first: bool
    nonce: str | None = None

    def __bool__(self) -> bool:
        return self.first


CLAIMED = Claim(True)
CLAIMED_BEFORE = Claim(False)

"""The reconcile's badge hashes, within a bound on the CPU they take (ports.BadgeHasher; review 142's
leftover, review 143).

A gate pass names its driver's badges by scrypt hashes (domain/gate_pass.py ``BadgeHash``: some 65 to
130 ms of a core and 32 MiB each), and the reconcile of an offline allow (POST /gate/v1/offline-decisions)
hashes the badge its lane read under the pass's salt. A gate client may post reports as fast as it likes: a
compromised adapter, or an honest one flushing a long outage's outbox at once. Unbounded, a few dozen
reports a second took every core, and the gate verify, which must answer in milliseconds, waited behind
them. So, per process:

- Slots: at most ``slots`` hashes at once (QUAYGATE_GATE_OFFLINE_HASH_SLOTS, 1 by default: of the
  service's two cores, one is always left to the gate verify and the rest). A hash waits at most
  ``wait`` seconds for a slot, and at most ``queue`` hashes per slot wait at once: each waiting one holds
  a request thread of anyio's, which the gate verify's face matches use too, so a flood never holds many
  of them, nor any for long. Past either: ``HashingBusy``, which the route answers 503 with Retry-After,
  nothing judged or recorded (the adapter keeps the report and sends it again). The reconcile hashes
  before it opens its transaction (services/gate_passes.py ``_hash_read``): no database connection, nor
  any row lock, is held while a hash waits or runs.
- A memo of the hashes taken, the ``max_entries`` most recently used: an HMAC-SHA256 of what was hashed
  (the salt, the scrypt parameters, the scheme, the value read), under a key made for this process, to its
  hash. So a report sent again (its answer lost, a database failure after its hash) and the gate-out on
  the pass of its gate-in (a right keeps its salt from one pass to the next) hash nothing. Keyed by what
  the hash is a function of, a remembered hash is the hash. The memo holds no badge number, nor anything to
  test a guess against without the key, which never leaves the process; the hashes in it are the driver's,
  which his passes publish anyway, or another person's badge, as slow to reverse as a pass's.

The bound is per process: the service's ``quaygate serve`` workers each have their own (as the hot thread
pool, quaygate/threads.py). Passes are hashed when they are issued, within a budget of their own
(services/gate_passes.py ``MAX_NEW_BADGE_HASHES``), not here.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict

from release_service.domain.gate_pass import BadgeHash
from release_service.ports import HashingBusy

SLOTS = 1
# A wait of five hashes or so: well within a gate adapter's timeout (2 s) however the call was queued.
WAIT_SECONDS = 0.5
QUEUE_PER_SLOT = 4
# Some 200 bytes each: under a megabyte. At one slot's pace (ten hashes a second) an entry is kept for
# minutes at the least, long enough for an adapter's next round of reports (every few seconds).
MAX_ENTRIES = 4096


class BadgeHashSlots:
    """``BadgeHash.of`` in one of ``slots`` slots, remembered (module docstring)."""

    def __init__(self, *, slots: int = SLOTS, wait: float = WAIT_SECONDS, queue: int = QUEUE_PER_SLOT,
                 max_entries: int = MAX_ENTRIES) -> None:
        if slots < 1 or wait < 0 or queue < 0 or max_entries < 1:
            raise ValueError("at least one slot and one entry; no negative wait or queue")
        self.slots = slots
        self._wait = wait
        self._hashing = threading.BoundedSemaphore(slots)
        self._places = threading.BoundedSemaphore(slots * (1 + queue))  # hashing, or waiting to
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._memo: OrderedDict[bytes, str] = OrderedDict()
        self._max_entries = max_entries

    def of(self, hashing: BadgeHash, scheme: str, value: str, *, wait: bool = True) -> str:
        """The hash of ``value`` under ``hashing``: remembered, or taken in a slot waited for at most
        ``wait`` seconds (``wait`` False: only a slot free now). ``HashingBusy`` when none comes."""
        key = self._mac(hashing, scheme, value)
        found = self._recall(key)
        if found is not None:
            return found
        if not self._places.acquire(blocking=False):
            raise HashingBusy
        try:
            got = (self._hashing.acquire(timeout=self._wait) if wait and self._wait > 0
                   else self._hashing.acquire(blocking=False))
            if not got:
                raise HashingBusy
            try:
                found = self._recall(key)  # a twin of this report hashed it while we waited
                if found is None:
                    found = hashing.of(scheme, value)
                    self._keep(key, found)
            finally:
                self._hashing.release()
        finally:
            self._places.release()
        return found

    def _mac(self, hashing: BadgeHash, scheme: str, value: str) -> bytes:
        # Lengths first: no two different inputs make the same text.
        parts = [hashing.salt, *(str(x).encode() for x in (hashing.n, hashing.r, hashing.p)),
                 scheme.encode("utf-8", "surrogatepass"), value.encode("utf-8", "surrogatepass")]
        text = b"".join(len(part).to_bytes(4, "big") + part for part in parts)
        return hmac.new(self._key, text, hashlib.sha256).digest()

    def _recall(self, key: bytes) -> str | None:
        with self._lock:
            found = self._memo.get(key)
            if found is not None:
                self._memo.move_to_end(key)
            return found

    def _keep(self, key: bytes, digest: str) -> None:
        with self._lock:
            self._memo[key] = digest
            self._memo.move_to_end(key)
            while len(self._memo) > self._max_entries:
                self._memo.popitem(last=False)

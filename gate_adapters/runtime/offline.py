"""Offline mode of a gate adapter: decide from signed gate passes while verify cannot be reached, never a PIN.

    every refresh_seconds:  GET /gate/v1/passes, then GET /oauth2/jwks (once more past the caches for a
                            pass of a kid it lacks) ──verify each (ES256)──► PassStore
    verify unreachable (connect error, timeout, 5xx, after the client's retries; never a 429), truck at the lane:
        passes of the read container ──► gate_pass.decide_offline (the SAME gate.decide as the service)
        ──► Outbox.decide_offline (decision + report, one SQLite transaction) ──► barrier
    every reconcile_seconds: POST /gate/v1/offline-decisions, oldest first ──► Outbox.reconciled

Rules:
1. A pass counts only after its signature checks with the service's public key: an explicit joserfc
   registry with ES256 alone, typ ``gate-pass+jwt``, our issuer, our terminal (``PassVerifier``). The
   JWKS is stored beside the passes, and passes are verified again when loaded from the file. A file is
   no trust anchor: whoever may write it could put his own key in it and passes he signed. So the store
   is sealed (seal.py: HMAC-SHA256 under a key derived with HKDF from the adapter's seal key, which lives
   in a permission-checked key file of its own, never in the store, and rotates with no credential): the
   JWKS, the issuer and terminal, the refresh's times and the set of passes, and (bound to that) the latest
   time seen. A store whose seal does not hold is taken as empty (no pass, never refreshed: every offline
   truck a review) and logged ``gate.offline.store_untrusted``, till the next refresh seals a new set. A
   store of an adapter from before the seal key (``previous``: sealed under its credential's material,
   offered while the key is pending) is taken and sealed again under the key, logged
   ``gate.offline.store_resealed`` (review 172, finding 1). The file is made 0600, and one that group or
   others may write, or another user owns, stops the adapter outside dev (datafiles.py).
2. A refresh replaces the whole set (a right revoked or deleted since simply has no pass any more);
   expired passes are dropped; a refused pass is logged (``gate.offline.pass_refused``) and left out.
   The passes are fetched first, then the JWKS: a key rotated in between is in it (review 172, finding 4:
   the JWKS fetched first lacked it, every pass was refused and the held set replaced by none). A pass
   whose kid that JWKS lacks (served by an HTTP cache, ``max-age=60``, or a replica yet to reload its
   keys) has the JWKS fetched once more with ``Cache-Control: no-cache``. A pass still of a key it lacks
   is never kept (this rule's first sentence stands); they are counted and logged
   (``gate.offline.pass_unknown_key``), and the passes held of the rights they name (the right read
   from their claims, unverified: it keeps nothing but a pass held and verified already) are kept while
   they verify under the JWKS stored and live, unless the answer brought a verified pass of that right:
   a key the adapter cannot see yet never empties the store. A right absent from the answer loses its
   pass as ever.
3. Every offline decision shows its basis, the pass, and the age of its ban list and of the store
   (``response["offline"]``); a store older than ``store_max_age`` or a ban list older than
   ``ban_list_max_age`` refuses (review or the terminal's policy, see domain/gate_pass.py).
   The store's age is measured on the wall clock AND on the monotonic clock (``clock``): since the
   refresh when this process made it, else since this process started (a refresh read from the file
   came before that: a lower bound). The larger counts, so a wall clock wound back while running (NTP
   spoofed during an outage) never revives old passes. A wall clock earlier than the last refresh is
   no evidence of freshness: review (``store_stale``), logged ``gate.offline.clock_behind``.
   A pass's life is judged on the SERVICE's clock, as its ``exp`` was set: the passes answer's
   ``issued_at`` (never before the passes' ``iat``) plus that elapsed time, so a wall clock held behind
   while online (NTP spoofed before the uplink is cut) never stretches a pass past its expiry. A service
   ahead of our clock at a refresh (by more than the call took and ``CLOCK_SLACK``) is logged
   ``gate.offline.clock_behind``. The decision's ``decided_at`` is that time too.
4. Reconcile stops at the first unreachable call (order kept); a 4xx answer is final and recorded.
5. Shared by the lanes, each on its own thread (lane.py rule 4): ``decide`` never waits for a network
   call. Refresh and reconcile talk to the service outside the lock ``decide`` takes (only the swap of
   the pass set is under it, so a decision sees one set and its refresh time); and ``maintain``, called
   from every lane's tick, is done by one lane at a time: a lane that finds another at it goes on.
   Neither waits on a 429's ``Retry-After`` (client.py rule 7, ``patience=0``): the lane's tick would
   wait with it; they are tried again when next due, and no call goes out before the time it names.
6. A right this adapter used counts as used (``LocalUses``, outbox.py rule 7): the allows it gave offline
   AND the gate-ins and gate-outs the service committed online for its lanes. A pass fetched before an
   online use still shows the right unused; without this a lent badge and plate would pass a second
   lane of the same adapter once the uplink is cut. Every use kept (``keep_days``) of the rights of the
   passes held is read, never those "since" a time: the uses are stamped by our wall clock, and a clock
   held back during an online commit (NTP spoofed) stamped one too early for any window to reach it
   (review 121, finding 3). A right gated in is never nominated again, so an old use misleads nothing.
7. The outbox's offline decisions are a sealed chain (outbox.py rule 10). One that does not hold (a decision
   deleted, edited, moved, or marked acknowledged without the service's answer) is ``tampered``: the uses
   of rule 6 can no longer be told from the file, so every offline truck is a review (no pass judged, as a
   stale store: ``store_stale``), never an allow, and each such decision logs
   ``gate.offline.outbox_tampered``, until an operator acts (docs/gate-offline.md); online, the service
   decides as ever. The decisions whose own seal holds are still reported (the service must learn of every
   use this adapter made), one whose seal does not is not (not this adapter's words). The chain's place
   (its id and head, and whether it holds) goes with every pass refresh (``outbox_id``, ``outbox_seq``,
   ``outbox_intact``) and every report (``outbox``): the service keeps the highest, and raises port
   security's alarm at a head that goes back (an earlier copy of the file put back), a sequence number
   used twice, or an outbox that says it was tampered with (release_service/services/gate_passes.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from joserfc.jws import JWSRegistry

from release_service.domain import gate as g
from release_service.domain.gate_pass import (
    PASS_ALG,
    PASS_TYP,
    GatePass,
    LocalUses,
    OfflineLimits,
    PassRefused,
    decide_offline,
)

from .client import ServiceUnavailable, VerifyClient, VerifyRefused
from .datafiles import private_data_file
from .outbox import Outbox
from .seal import Seal

log = logging.getLogger("gate_adapters.offline")

MAX_PASS_LENGTH = 8192
CLOCK_SLACK = timedelta(seconds=5)  # wall and monotonic clocks drift apart a little (NTP slews): not an alarm
# Review 155, finding 3: a passes answer issued more than this before our wall clock read just before asking
# is refused (an old answer replayed would lend its passes another lifetime). A minute: far above the skew
# of clocks kept by NTP (well under a second) and a slow answer (it was issued after we asked), far below a
# pass's lifetime (10 min by default, 1 at least): a replay that slips under it lends a minute at most.
STALE_ANSWER = timedelta(seconds=60)
NO_CACHE = {"Cache-Control": "no-cache", "Pragma": "no-cache"}  # rule 2: the JWKS asked for past the caches


def _service_time(answer: Mapping[str, Any], at: datetime, *, took: timedelta) -> datetime | None:
    """Rule 3: the service's time in the passes answer (``issued_at``); ours (``at``) when it names none we
    can read (the passes' own ``iat`` still count, ``PassStore.replace``). A service ahead of our clock by
    more than the call took and the slack says ours is behind (NTP held back, or broken): logged, and the
    service's time is the one the passes are judged on. None (logged): issued more than ``STALE_ANSWER``
    before we asked, an old answer replayed (or our clock that far ahead): not to be taken."""
    try:
        service_at = datetime.fromisoformat(str(answer["issued_at"]))
        if service_at.tzinfo is None:
            raise ValueError("a time without zone")
    except (KeyError, ValueError) as exc:
        log.warning("gate.offline.no_service_time", extra={"reason": f"{type(exc).__name__}: {exc}"})
        return at
    if service_at < at - STALE_ANSWER:
        behind = int((at - service_at).total_seconds())
        log.error("gate.offline.answer_stale: the passes answer was issued %d s before it was asked for (an old "
                  "answer replayed, or this adapter's clock ahead); refused, the passes kept as they were", behind,
                  extra={"service_at": service_at.isoformat(), "now": at.isoformat(), "stale_seconds": behind})
        return None
    if service_at > at + took + CLOCK_SLACK:
        behind = int((service_at - at).total_seconds())
        log.error("gate.offline.clock_behind: this adapter's clock is %d s behind the service's; the passes are "
                  "judged on the service's", behind,
                  extra={"service_at": service_at.isoformat(), "now": at.isoformat(), "behind_seconds": behind})
    return service_at


class UnknownKey(PassRefused):
    """Rule 2: a pass whose header names a kid the JWKS lacks; ``right``, its right's id as its claims say,
    unverified ("" when they say none): only ever to look for a pass of that right held already."""

    def __init__(self, kid: str, right: str) -> None:
        super().__init__("signed by a key we do not know")
        self.kid, self.right = kid, right


def _claimed_right(payload: bytes) -> str:
    """The right's id a pass's claims name, unverified (rule 2); "" when they name none."""
    try:
        claims = json.loads(payload)
        return str(uuid.UUID(str(claims["right"]["id"])))
    except (ValueError, KeyError, TypeError):
        return ""


class PassVerifier:
    """Rule 1. ``jwks``: the service's JWK Set (JSON); only its P-256 keys are considered."""

    _registry = JWSRegistry(algorithms=[PASS_ALG])

    def __init__(self, jwks: Mapping[str, Any], *, issuer: str, terminal: str) -> None:
        keys = [k for k in KeySet.import_key_set(dict(jwks)).keys  # type: ignore[arg-type]
                if isinstance(k, ECKey) and k.curve_name == "P-256" and k.get("alg") in (None, PASS_ALG)]
        self._keys = {k.kid: k for k in keys if k.kid}
        self.issuer, self.terminal = issuer, terminal

    def verify(self, token: str) -> GatePass:
        if not isinstance(token, str) or not token or len(token) > MAX_PASS_LENGTH:
            raise PassRefused("not a pass")
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
            header = obj.headers()
            if header.get("alg") != PASS_ALG or header.get("typ") != PASS_TYP:
                raise PassRefused("not a gate pass (alg or typ)")
            kid = header.get("kid", "")
            key = self._keys.get(kid)
            if key is None:
                if isinstance(kid, str) and kid:
                    raise UnknownKey(kid, _claimed_right(obj.payload))
                raise PassRefused("signed by a key we do not know")
            if not jws.validate_compact(obj, key, registry=self._registry):
                raise PassRefused("bad signature")
            claims = json.loads(obj.payload)
        except (JoseError, ValueError, UnicodeEncodeError) as exc:
            if isinstance(exc, PassRefused):
                raise
            raise PassRefused(f"not a valid JWS: {type(exc).__name__}") from exc
        if not isinstance(claims, dict):
            raise PassRefused("claims are not an object")
        return GatePass.from_claims(claims, issuer=self.issuer, terminal=self.terminal)

    def lacks_key(self, token: Any) -> bool:
        """Rule 2: the pass's header names a kid this set lacks (read unverified: only to know whether to
        fetch the JWKS again)."""
        if not isinstance(token, str) or not token or len(token) > MAX_PASS_LENGTH:
            return False
        try:
            kid = jws.extract_compact(token.encode("ascii"), registry=self._registry).headers().get("kid")
        except (JoseError, ValueError, UnicodeEncodeError):
            return False
        return isinstance(kid, str) and bool(kid) and kid not in self._keys


_SCHEMA = """
CREATE TABLE IF NOT EXISTS passes (
    pass_id    TEXT PRIMARY KEY,
    container  TEXT NOT NULL,
    expires_at REAL NOT NULL,
    token      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS passes_container ON passes (container);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

STORE_PURPOSE = "quaygate gate-adapter pass store v1"  # the seal's HKDF info: its key serves nothing else
STORE_RISK = "whoever writes it can take this adapter's passes away (every offline truck reviewed)"


@dataclass(frozen=True, slots=True)
class Refresh:
    """When the passes were last fetched: ``at`` on this adapter's wall clock (just before they were asked
    for), ``service_at`` on the service's (its answer's ``issued_at``; never before the passes' ``iat``)."""

    at: datetime
    service_at: datetime


@dataclass(slots=True)
class _Held:
    """The store as loaded (and sealed): its passes, its last refresh, the latest wall-clock time it saw."""

    passes: list[tuple[str, GatePass]] = field(default_factory=list)
    refresh: Refresh | None = None
    seen: datetime | None = None
    seal: str = ""  # the seal of the refresh, to which the time seen is bound ("" before any refresh)
    outbox: tuple[str, int, str] | None = None  # the outbox chain's id, head seq and head mac it saw last


class PassStore:
    """Durable SQLite store of verified passes, the JWKS that verified them and the refresh time, sealed (rule 1)
    under ``secret``: the adapter's own secret material (seal.py ``secret_material``), never kept here."""

    def __init__(self, path: str | Path, *, issuer: str, terminal: str, secret: bytes, strict: bool = True,
                 previous: bytes | None = None) -> None:
        self.path, self.issuer, self.terminal = Path(path), issuer, terminal
        self._seal = Seal(secret, purpose=STORE_PURPOSE)
        # Rule 1: the key an adapter from before its seal key sealed the store under, while that key is pending.
        self._previous = None if previous is None else Seal(previous, purpose=STORE_PURPOSE)
        private_data_file(self.path, strict=strict, risk=STORE_RISK)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._held = self._load()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _sealed(self, jwks: str, refresh: Refresh, tokens: list[str]) -> tuple[str, ...]:
        """Rule 1: what the seal covers: the JWKS, this store's issuer and terminal, the refresh and the set of
        passes (a pass of a right revoked since, put back in the file, breaks it as a foreign key does)."""
        digests = sorted(hashlib.sha256(t.encode()).hexdigest() for t in tokens)
        return ("passes", self.issuer, self.terminal, jwks, refresh.at.isoformat(), refresh.service_at.isoformat(),
                *digests)

    def _seen(self, seal: str, seen: str) -> tuple[str, ...]:
        """What the seal of the time seen covers: that time, bound to the refresh's seal."""
        return ("wall_seen", self.issuer, self.terminal, seal, seen)

    def _outbox(self, seal: str, head: str) -> tuple[str, ...]:
        """Review 155, finding 1: what the seal of the outbox chain remembered covers: its id, head seq and
        head mac ("" when no chain is bound), bound to the refresh's seal as the time seen is."""
        return ("outbox_head", self.issuer, self.terminal, seal, head)

    @staticmethod
    def _head_text(head: tuple[str, int, str] | None) -> str:
        return "" if head is None else f"{head[0]} {head[1]} {head[2]}"

    def _outbox_rows(self, seal: str, head: tuple[str, int, str] | None) -> list[tuple[str, str]]:
        text = self._head_text(head)
        return [("outbox_head", text), ("outbox_head_seal", self._seal.mac(*self._outbox(seal, text)))]

    def outbox_head(self) -> tuple[str, int, str] | None:
        """The outbox chain (id, head seq, head mac) this store last saw, or None: none bound yet (a new
        store, or one not trusted: its passes are gone too)."""
        with self._lock:
            return self._held.outbox

    def remember_outbox(self, outbox_id: str, seq: int, mac: str, *, resealed: bool = False) -> None:
        """Keep the outbox chain's head (after its transaction committed): a chain bound already only moves
        on (another chain's id, or an older head, is never taken: the outbox is then tampered); none bound,
        this one is. ``resealed``: the same head under the seal key, after the chain was carried over and
        found the one remembered (outbox.py rule 12, ``OfflineMode._bind_outbox``)."""
        with self._lock:
            held = self._held
            if held.outbox is not None and (held.outbox[0] != outbox_id or seq < held.outbox[1]
                                            or (seq == held.outbox[1] and not resealed)):
                return
            head = (outbox_id, int(seq), mac)
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", self._outbox_rows(held.seal, head))
            held.outbox = head

    def replace(self, tokens: list[str], jwks: Mapping[str, Any], refresh: Refresh) -> int:
        """Rule 2: verify every pass, then swap the whole set in one transaction. Returns how many were kept."""
        verifier = PassVerifier(jwks, issuer=self.issuer, terminal=self.terminal)
        kept: list[tuple[str, GatePass]] = []
        unknown: list[UnknownKey] = []
        for token in tokens:
            try:
                p = verifier.verify(token)
            except UnknownKey as exc:
                unknown.append(exc)
                continue
            except PassRefused as exc:
                log.warning("gate.offline.pass_refused", extra={"reason": str(exc)})
                continue
            kept.append((token, p))
        # The service's clock is at least where it signed its latest pass (rule 3).
        service_at = max([refresh.service_at, *(p.issued_at for _, p in kept)])
        refresh = Refresh(refresh.at, service_at)
        kept = [(t, p) for t, p in kept if p.expires_at > service_at]
        if unknown:
            kept += self._held_for(unknown, kept, verifier, service_at)
        jwks_text = json.dumps(dict(jwks), sort_keys=True, separators=(",", ":"))
        seal = self._seal.mac(*self._sealed(jwks_text, refresh, [t for t, _ in kept]))
        # The service answered: the clock seen is anchored again at this refresh (a clock once stepped
        # ahead and put right must not keep offline mode off till real time catches up).
        seen = refresh.at.isoformat()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM passes")
                self._db.executemany("INSERT OR REPLACE INTO passes VALUES (?, ?, ?, ?)", [
                    (p.pass_id, p.right.container, p.expires_at.timestamp(), t) for t, p in kept])
                self._db.execute("DELETE FROM meta")
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("jwks", jwks_text), ("refreshed_at", refresh.at.isoformat()),
                    ("service_at", refresh.service_at.isoformat()), ("seal", seal),
                    ("wall_seen", seen), ("wall_seen_seal", self._seal.mac(*self._seen(seal, seen))),
                    *self._outbox_rows(seal, self._held.outbox)])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._held = _Held(kept, refresh, refresh.at, seal, self._held.outbox)
        return len(kept)

    def _held_for(self, unknown: list[UnknownKey], kept: list[tuple[str, GatePass]], verifier: PassVerifier,
                  service_at: datetime) -> list[tuple[str, GatePass]]:
        """Rule 2: passes of a key the JWKS lacks are never kept; the passes held of the rights they name,
        and of which no verified pass came, are, while they verify under ``verifier`` (the JWKS stored with
        them: a key revoked since is not in it) and live at ``service_at``. Logged."""
        named = {u.right for u in unknown} - {str(p.right.id) for _, p in kept} - {""}
        with self._lock:
            held = [(t, p) for t, p in self._held.passes if str(p.right.id) in named]
        still: list[tuple[str, GatePass]] = []
        for token, _ in held:
            try:
                p = verifier.verify(token)
            except PassRefused as exc:
                log.warning("gate.offline.pass_refused", extra={"reason": f"held: {exc}"})
                continue
            if p.expires_at > service_at:
                still.append((token, p))
        kids = sorted({u.kid for u in unknown})
        log.error("gate.offline.pass_unknown_key: %d passes signed by a key the service's JWKS does not name "
                  "(kid %s, asked past the caches too) were refused; %d passes held of their rights are kept "
                  "till they expire", len(unknown), ", ".join(kids), len(still),
                  extra={"refused": len(unknown), "kids": kids, "held_kept": len(still)})
        return still

    # The latest wall-clock time this store saw, kept on disk (``saw``): a clock wound back across a
    # restart shows as a now earlier than it. Written when it moves on by this much at least.
    SEEN_STEP = timedelta(seconds=10)

    def saw(self, now: datetime) -> datetime:
        """Keep ``now`` as the latest wall-clock time seen, if it is; returns the latest seen."""
        with self._lock:
            held = self._held
            if held.seen is None or now >= held.seen + self.SEEN_STEP:
                seen = now.isoformat()
                with self._db:  # the time and its seal together (a crash between them would void the store)
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                        ("wall_seen", seen), ("wall_seen_seal", self._seal.mac(*self._seen(held.seal, seen)))])
                held.seen = now
                return now
            return max(held.seen, now)

    def last_refresh(self) -> Refresh | None:
        with self._lock:
            return self._held.refresh

    def passes(self, now: datetime) -> list[tuple[str, GatePass]]:
        """The passes unexpired at ``now`` (the service's time, rule 3)."""
        with self._lock:
            return [(t, p) for t, p in self._held.passes if p.expires_at > now]

    def _load(self) -> _Held:
        """Rule 1: what the file holds, if its seal holds (the passes verified again); else nothing, logged. A
        store that holds under ``previous`` only (sealed before the seal key) is sealed again under the key."""
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        tokens = [str(t) for (t,) in self._db.execute("SELECT token FROM passes")]
        if not tokens and not meta.keys() - {"wall_seen", "wall_seen_seal", "outbox_head", "outbox_head_seal"}:
            # Never refreshed: only the time seen and the outbox's head, bound to no refresh.
            held = _Held()
            seen, head = meta.get("wall_seen"), meta.get("outbox_head")
            seen_under = None if seen is None else self._holding(meta.get("wall_seen_seal"), *self._seen("", seen))
            head_under = None if head is None else self._holding(meta.get("outbox_head_seal"),
                                                                 *self._outbox("", head))
            if seen is not None and seen_under is not None:
                held.seen = datetime.fromisoformat(seen)
            if head is not None and head_under is not None:
                held.outbox = _head(head)
            if "previous" in (seen_under, head_under):
                self._reseal(held, meta, tokens)
            return held
        try:
            held, verifier = self._read(meta, tokens, self._seal)
        except (_Untrusted, KeyError, ValueError, TypeError, JoseError) as exc:
            reason = str(exc) if isinstance(exc, _Untrusted) else f"it cannot be read ({type(exc).__name__})"
            try:
                if self._previous is None:
                    raise _Untrusted(reason) from None
                held, verifier = self._read(meta, tokens, self._previous)
            except (_Untrusted, KeyError, ValueError, TypeError, JoseError):
                return self._untrusted(reason)
            self._reseal(held, meta, tokens)
        for token in tokens:
            try:
                held.passes.append((token, verifier.verify(token)))
            except PassRefused as exc:
                log.warning("gate.offline.pass_refused", extra={"reason": str(exc)})
        return held

    def _holding(self, mac: object, *fields: str) -> str | None:
        """Which key a seal holds under: "key", "previous" (rule 1: sealed before the seal key), or None."""
        if self._seal.holds(mac, *fields):
            return "key"
        return "previous" if self._previous is not None and self._previous.holds(mac, *fields) else None

    def _read(self, meta: Mapping[str, str], tokens: list[str], seal: Seal) -> tuple[_Held, PassVerifier]:
        """Rule 1: a refreshed store as kept, if it holds under ``seal`` (``_Untrusted`` otherwise)."""
        mac = meta.get("seal")
        if mac is None:
            raise _Untrusted("it has no seal (written before seals, or by someone else)")
        refresh = Refresh(datetime.fromisoformat(meta["refreshed_at"]), datetime.fromisoformat(meta["service_at"]))
        if not seal.holds(mac, *self._sealed(meta["jwks"], refresh, tokens)):
            raise _Untrusted("its seal does not hold (edited, or sealed under another key of this adapter)")
        seen = meta["wall_seen"]
        if not seal.holds(meta.get("wall_seen_seal"), *self._seen(mac, seen)):
            raise _Untrusted("the seal of the time it saw does not hold")
        # Review 155, finding 1: the outbox's head is kept with every refresh (a store written before
        # that is not trusted, once: the next refresh writes it again).
        head = meta.get("outbox_head")
        if head is None or not seal.holds(meta.get("outbox_head_seal"), *self._outbox(mac, head)):
            raise _Untrusted("the seal of the outbox chain it remembers does not hold (or it has none)")
        verifier = PassVerifier(json.loads(meta["jwks"]), issuer=self.issuer, terminal=self.terminal)
        return _Held([], refresh, datetime.fromisoformat(seen), mac, _head(head)), verifier

    def _reseal(self, held: _Held, meta: Mapping[str, str], tokens: list[str]) -> None:
        """Rule 1: a store that held under ``previous`` only, sealed again under the seal key as it stands (the
        refresh, the time seen, the outbox head; the passes as kept), in one transaction; logged."""
        rows: list[tuple[str, str]] = []
        seal = ""
        if held.refresh is not None:
            seal = self._seal.mac(*self._sealed(meta["jwks"], held.refresh, tokens))
            rows.append(("seal", seal))
        if held.seen is not None:
            seen = meta["wall_seen"]
            rows.append(("wall_seen_seal", self._seal.mac(*self._seen(seal, seen))))
        if held.outbox is not None or held.refresh is not None:
            rows += self._outbox_rows(seal, held.outbox)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", rows)
        held.seal = seal
        log.warning("gate.offline.store_resealed: %s: it held under the key derived from the adapter's credential; "
                    "sealed again under its seal key", self.path)

    def _untrusted(self, reason: str) -> _Held:
        # The file is kept as it is, for a person to look at; the next refresh replaces it.
        log.error("gate.offline.store_untrusted: %s: %s; no stored pass is used until the next refresh",
                  self.path, reason, extra={"reason": reason})
        return _Held()


class _Untrusted(Exception):
    pass


def _head(text: str) -> tuple[str, int, str] | None:
    """The outbox head as kept (``id seq mac``; "" none); ValueError if malformed."""
    if not text:
        return None
    outbox_id, seq, mac = text.split(" ")
    return outbox_id, int(seq), mac


def gate_request(body: Mapping[str, Any]) -> g.GateRequest:
    """The verify body (lane.verify_body) as the pure core's request; ValueError/KeyError/TypeError if malformed."""
    container, plate, badge, face = body["container"], body.get("plate"), body.get("badge"), body.get("face")
    match = face.get("match") if isinstance(face, dict) else None
    return g.GateRequest(
        request_id=str(body["request_id"]), terminal=str(body["terminal"]), lane=str(body["lane"]),
        direction=body["direction"], mode=body["mode"],
        container=g.ContainerRead(str(container.get("number", "")), float(container.get("confidence", 0.0))),
        plate=None if not plate else g.PlateRead(str(plate.get("text", "")), plate.get("country"),
                                                 float(plate.get("confidence", 0.0))),
        badge=None if not badge or not (badge.get("number") or badge.get("card_uid"))
        else g.BadgeRead(str(badge.get("scheme", "")), badge.get("number"), badge.get("card_uid")),
        face=_face(face, match),
        observed_at=datetime.fromisoformat(str(body["observed_at"])),
    )


def _face(face: Any, match: Any) -> g.FaceEvidence | None:
    """A matcher's result as online; a capture no one can match offline stays a capture not matched
    (``face_required``, review), as online when the matcher is unavailable: never a silent allow."""
    if match:
        return g.FaceEvidence("match_result", float(match["score"]), bool(match["matched"]))
    if isinstance(face, dict) and face.get("image"):
        return g.FaceEvidence.image_pending()
    return None


class OfflineMode:
    """One per adapter (shared by its lanes, thread-safe): the pass store, local decisions, reconcile."""

    def __init__(
        self,
        client: VerifyClient,
        store: PassStore,
        outbox: Outbox,
        *,
        limits: OfflineLimits = OfflineLimits(),
        jwks_path: str = "/oauth2/jwks",
        refresh_seconds: float = 60.0,
        reconcile_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client, self.store, self.outbox, self.limits = client, store, outbox, limits
        self.jwks_path, self.refresh_seconds, self.reconcile_seconds = jwks_path, refresh_seconds, reconcile_seconds
        self._clock, self._wall = clock, wall
        self._lock = threading.RLock()  # decide() and the pass set's swap; never held across a network call
        self._busy = threading.RLock()  # one refresh or reconcile at a time (rule 5)
        self._next_refresh = self._next_reconcile = float("-inf")
        self._refreshed: tuple[datetime, float] | None = None  # the last refresh here: (wall, monotonic)
        self._started = clock()
        self._bind_outbox()

    def _bind_outbox(self) -> None:
        """Review 155, finding 1: the pass store (sealed, not the outbox's file) remembers the outbox chain's
        id and head. A chain that is not the one it remembers, or behind it (emptied and sealed afresh at
        start, or an earlier copy put back), is tampered: rule 7, nothing decided offline but review. A store
        that remembers none (new, or not trusted: no passes either) takes the chain as it stands, logged."""
        head = self.outbox.head()
        if head is None:
            return
        remembered = self.store.outbox_head()
        if remembered is None:
            log.warning("gate.offline.outbox_bound: the pass store remembers no outbox chain; bound to %s at %d",
                        head[0], head[1], extra={"outbox_id": head[0], "seq": head[1]})
            self.store.remember_outbox(*head)
        else:
            reason = self.outbox.bound(*remembered)
            if reason is not None:
                self.outbox.taint(reason)
            elif remembered != head:  # moved on, or the same head sealed again under the seal key (outbox.py rule 12)
                self.store.remember_outbox(*head, resealed=True)
        self.outbox.on_head = self.store.remember_outbox

    # -- keeping the passes fresh -------------------------------------------------------------------

    def refresh(self) -> int:
        """Fetch the passes, then the JWKS (rule 2); raises ServiceUnavailable / VerifyRefused when it cannot."""
        with self._busy:
            self._next_refresh = self._clock() + self.refresh_seconds
            # Rule 3: our clocks read just before the passes are asked for, so the service's time in the
            # answer came after them (its time since then is never less than ours: never an early expiry).
            at, mono = self._wall(), self._clock()
            answer = self.client.call("GET", "/gate/v1/passes" + self._position(), attempts=1, patience=0.0)
            service_at = _service_time(answer, at, took=timedelta(seconds=max(self._clock() - mono, 0.0)))
            if service_at is None:
                return 0  # review 155, finding 3: the store as it was
            tokens = list(answer.get("passes", []))
            # Rule 2: after the passes, so a key rotated in before they were signed is in it.
            jwks = self.client.call("GET", self.jwks_path, attempts=1, patience=0.0)
            verifier = PassVerifier(jwks, issuer=self.store.issuer, terminal=self.store.terminal)
            if any(verifier.lacks_key(t) for t in tokens):
                # An older set (an HTTP cache's copy, a replica yet to reload its keys): once more, past caches.
                log.info("gate.offline.jwks_again: a pass names a key the JWKS lacks; asked again, no-cache")
                jwks = self.client.call("GET", self.jwks_path, attempts=1, patience=0.0, headers=NO_CACHE)
            with self._lock:  # rule 5: a decision sees the old set and its time, or the new ones
                kept = self.store.replace(tokens, jwks, Refresh(at, service_at))
                self._refreshed = (at, mono)
            log.info("gate.offline.refreshed", extra={"passes": kept})
            return kept

    def _position(self) -> str:
        """Rule 7: the outbox chain's place, as the passes call's query (none for an outbox without a seal)."""
        at = self.outbox.position()
        if at is None:
            return ""
        return "?" + urlencode({"outbox_id": at["id"], "outbox_seq": at["seq"],
                                "outbox_intact": "true" if at["intact"] else "false"})

    def maintain(self) -> None:
        """Called from the lanes' tick: refresh and reconcile when due; never raises for an outage. A lane
        that finds another lane at it goes on (rule 5): the work is the adapter's, not one lane's."""
        if not self._busy.acquire(blocking=False):
            return
        try:
            now = self._clock()
            self.store.saw(self._wall())
            try:
                if now >= self._next_reconcile:
                    self.reconcile()
                if now >= self._next_refresh:
                    self.refresh()
            except (ServiceUnavailable, VerifyRefused) as exc:
                log.warning("gate.offline.unreachable", extra={"reason": str(exc)})
        finally:
            self._busy.release()

    # -- deciding -----------------------------------------------------------------------------------

    def decide(self, request_id: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Decide ``body`` locally and record it durably with its report (rule 3). None: not decidable
        here (malformed body, or answered meanwhile): the lane holds and the request stays pending."""
        with self._lock:
            try:
                request = gate_request(body)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("gate.offline.undecidable", extra={"request_id": request_id, "reason": str(exc)})
                return None
            now = self._wall()
            seen = self.store.saw(now)
            refresh = self.store.last_refresh()
            since = self._since_refresh(None if refresh is None else refresh.at, now)
            if now + CLOCK_SLACK < seen:
                # The wall clock is behind a time this adapter already saw (wound back, across a restart
                # too, where the monotonic clock knows nothing older): no pass is judged by it.
                log.error("gate.offline.clock_behind", extra={"seen": seen.isoformat(), "now": now.isoformat()})
                refresh = None
            # Rule 3: the passes are judged on the service's clock as seen at the refresh, moved on by the
            # longer of the times our wall and monotonic clocks say have passed since.
            on_service = now if refresh is None else refresh.service_at + (now - refresh.at)
            judged = on_service if refresh is None or since is None else max(on_service, refresh.service_at + since)
            stored = self.store.passes(judged)
            # Rule 6: every use kept here of the rights of the passes held, online ones too, however our
            # clock stamped them (never a window by that time: a clock held back at the use hid it).
            uses = self.outbox.offline_uses(rights={str(p.right.id) for _, p in stored})
            if self.outbox.tampered is not None:
                # Rule 7: the uses above may lack one deleted from the file: no pass is judged, a review.
                log.error("gate.offline.outbox_tampered", extra={"request_id": request_id,
                                                                 "reason": self.outbox.tampered})
                stored, refresh = [], None
            local = LocalUses(gated_in=frozenset(uuid.UUID(r) for r in uses.get("in", ())),
                              completed=frozenset(uuid.UUID(r) for r in uses.get("out", ())))
            def answer(uses: LocalUses) -> tuple[Any, dict[str, Any], dict[str, Any]]:
                od = decide_offline(request, passes=[p for _, p in stored], uses=uses, limits=self.limits,
                                    store_refreshed_at=None if refresh is None else refresh.service_at,
                                    now=on_service, since_refresh=since)
                token = next((t for t, p in stored if p.pass_id == od.pass_id), None)
                d = od.decision
                offline = {
                    "basis": od.basis.value, "pass_id": od.pass_id, "decided_at": judged.isoformat(),
                    "ban_list_age_seconds": None if od.ban_list_age is None else int(
                        od.ban_list_age.total_seconds()),
                    "store_age_seconds": None if od.store_age is None else int(od.store_age.total_seconds()),
                }
                response = {
                    "decision": d.decision.value, "reasons": [r.value for r in d.reasons],
                    "decision_id": str(uuid.uuid4()), "release_id": str(d.release_id) if d.release_id else None,
                    "container": d.container, "driver": d.driver, "screening": d.screening.value,
                    "request_id": request.request_id, "mode": request.mode.value,
                    "direction": request.direction.value,
                    "committed": d.allowed and request.mode is g.Mode.COMMIT,  # locally: reconciled later
                    "repairs": [{"field": r.field, "position": r.position, "read": r.read,
                                 "understood": r.understood} for r in d.repairs],
                    "offline": offline,
                }
                report = {
                    "request": dict(body), "decision": d.decision.value, "reasons": response["reasons"],
                    "release_id": response["release_id"], "basis": od.basis.value,
                    "decided_at": offline["decided_at"], "ban_list_age_seconds": offline["ban_list_age_seconds"],
                    "gate_pass": token,
                    # The face evidence weighed, as a verify decision's row keeps it (gate.FaceRecord): the
                    # service keeps it with the decision and judges it against the terminal's policy.
                    "face": (d.face or g.FaceRecord("none")).as_json(),
                }
                return od, response, report

            od, response, report = answer(local)
            refusal = None
            if od.decision.allowed and request.mode is g.Mode.COMMIT and od.decision.release_id is not None:
                # Review 155, finding 2: a use of this right may be written between the read above and the
                # write below (an officer's offline override, outside this lock). The write looks again in
                # its own transaction and then records what the same rules give a right used here.
                rid = od.decision.release_id
                used = (LocalUses(gated_in=local.gated_in | {rid}, completed=local.completed)
                        if request.direction is g.Direction.IN
                        else LocalUses(gated_in=local.gated_in, completed=local.completed | {rid}))
                refusal = answer(used)
            recorded = self.outbox.decide_offline(request_id, response, report,
                                                  refusal=None if refusal is None else refusal[1:])
            if recorded is None:
                return None
            if refusal is not None and recorded is refusal[1]:
                od, response = refusal[0], refusal[1]
                log.error("gate.offline.used_meanwhile", extra={"request_id": request_id,
                                                                "release_id": response["release_id"]})
            log.warning(od.event, extra={"request_id": request_id, "offline": response["offline"]})
            return response

    def _since_refresh(self, refreshed_at: datetime | None, now: datetime) -> timedelta | None:
        """Rule 3: the time since the store's last refresh on the monotonic clock (at least: since this
        process started, when the refresh is older than the process); logs a wall clock that went back."""
        if refreshed_at is None:
            return None
        mark = self._started
        if self._refreshed is not None and self._refreshed[0] == refreshed_at:
            mark = self._refreshed[1]
        since = timedelta(seconds=max(self._clock() - mark, 0.0))
        if now < refreshed_at or now - refreshed_at + CLOCK_SLACK < since:
            log.error("gate.offline.clock_behind", extra={
                "refreshed_at": refreshed_at.isoformat(), "now": now.isoformat(),
                "monotonic_seconds": int(since.total_seconds())})
        return since

    # -- reconciling --------------------------------------------------------------------------------

    def reconcile(self) -> int:
        """Report every unreconciled offline decision, oldest first (rule 4). Returns how many were done."""
        with self._busy:
            self._next_reconcile = self._clock() + self.reconcile_seconds
            done = 0
            for request_id, report in self.outbox.unreconciled():
                try:
                    result = self.client.call("POST", "/gate/v1/offline-decisions", report, attempts=1,
                                              patience=0.0)
                except VerifyRefused as exc:
                    if not exc.final:
                        raise ServiceUnavailable(str(exc)) from exc
                    log.error("gate.offline.reconcile_refused.%s", exc.code, extra={"request_id": request_id})
                    if report.get("decision") == "allow" or "override" in report:
                        # A barrier opened offline (or a truck an officer let in, overrides.py rule 6) that
                        # the service refuses to hear of: never given up (no gate-in recorded, no double use
                        # seen). Kept and reported again next time, and the error logged each time, for a
                        # person to look at.
                        continue
                    result = exc.as_response()
                self.outbox.reconciled(request_id, result)
                if result.get("flag"):
                    log.warning("gate.offline.flagged.%s", result["flag"], extra={"request_id": request_id})
                done += 1
            return done

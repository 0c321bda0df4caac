# ruff: noqa: S105 - "pass" here is a gate pass, not a password
"""Gate passes and offline gate decisions, pure (issue 5, "Offline mode, never a PIN").

A gate pass is a short-lived statement signed by the service (ES256, typ ``gate-pass+jwt``) about ONE
release right nominated to (or gated in at) ONE terminal: the right as the gate decision reads it
(``RightFacts``), the nominated driver's badges (numbers and card UIDs as slow salted hashes only,
``BadgeHash``), the driver's port-ban screening with the age of the ban list it came from, and the
terminal's policy. It is what a gate
adapter may rely on while the verify service cannot be reached; nothing else (never a shared PIN).

What a pass proves, and what it cannot::

    proves   at ``iat`` the right was in this state, with these lights and this nomination; this
             badge belonged to the nominated driver; the driver was screened clear/banned against a
             ban list issued at ``ban_list_as_of``
    cannot   anything that changed after ``iat``: a block, a hold, a revocation, a ban loaded after it,
             a gate-in at another gate. Hence: passes are short-lived (``exp``), an offline allow is
             provisional and reconciled, and a reconciled use that collides is FLAGGED (``judge_use``).
             A ban already loaded at ``iat`` that starts within the pass's life ends the pass at its
             start (``pass_life``): the pass never says clear while that ban is in force.

``decide_offline`` builds the same inputs ``gate.decide`` takes from the passes and calls it: the SAME
rules decide online and offline. Offline adds three things on top:
1. No usable pass for the container: ``review`` (a person looks). Offline we lack knowledge; that is
   never evidence for or against the pickup, so never allow and never a flat deny.
2. A pass store not refreshed within ``store_max_age``: every pass is set aside (rule 1). The store's age
   is the larger of the wall clock's (``now - store_refreshed_at``) and the process's monotonic clock's
   (``since_refresh``), and passes are judged at the later of the two times, so a wall clock wound back
   while the adapter runs (NTP spoofed during an outage) never makes old passes young again. A wall clock
   reading earlier than the last refresh (a negative age) is no evidence of freshness: the store is set
   aside too (``store_stale``, review), never an allow.
3. A ban list older than ``ban_list_max_age`` screens ``unavailable`` (the terminal's policy then says
   review or deny), exactly as the service does with a stale list.
Rights used offline by this adapter count as used (``local_uses``): one adapter never allows one right
twice, even offline.

At reconcile the service runs the same rules again (``pass_refuses``) on the reported request and the
pass it names: an allow the pass does not support is the lane's word alone, and is flagged.

Standard library only (import-linter contract "release_service domain is pure").
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from . import gate as g
from .reads import container_candidates
from .release import Screening, State

PASS_TYP = "gate-pass+jwt"
PASS_ALG = "ES256"  # RFC 7518 §3.4: small signatures, fast to verify on a gate PC
PASS_AUDIENCE = "quaygate-gate-pass"
PASS_STATES = frozenset({State.NOMINATED.value, State.GATED_IN.value})  # what a gate can be asked about
# The longest a pass lives (quaygate.settings gate_pass_ttl's upper bound): a pass claiming more is not one
# we made, whoever signed it (review 124: a leaked key rotated out must not forge month-long passes).
MAX_PASS_LIFETIME = timedelta(hours=1)
_SECOND = timedelta(seconds=1)  # a JWT's iat is whole seconds (RFC 7519 §2 NumericDate, as we sign it)


class PassRefused(ValueError):
    """A pass that is not one: a claim missing or of the wrong shape, another terminal, expired."""


# ---- badge hashes --------------------------------------------------------------------------------

_SEPARATORS = re.compile(r"[\s:\-]+")

# How a pass hashes its driver's badges (review 142): scrypt (RFC 7914) under a salt of the pass's own. A
# pass, or a lane PC's pass store, must not give away its drivers' badge numbers: an Alfapass number has
# 10^5 values, a Port Pass 10^6, most card UIDs 4 bytes, so a plain digest of one is found in milliseconds.
# One hash costs about 65 ms and 32 MiB here (measured on the service's 2-core machine): 10^5 guesses are
# some two hours of a core for ONE pass's Alfapass number, 10^6 a day for a Port Pass, and every pass must
# be attacked alone. The adapter hashes the badge it reads once per pass of the read container. The
# parameters travel in the pass (``badge_hash``), so they can be raised; a pass asking less than
# ``_MIN_COST`` is not one we made, nor one asking more memory or work than a gate PC should give.
BADGE_HASH_ALG = "scrypt"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SALT_BYTES = 16
_MIN_COST = SCRYPT_N * SCRYPT_R  # scrypt's memory and work grow with n * r (and the work with p)
_MAX_MEMORY = 2**28  # 128 * n * r bytes: 256 MiB
_MAX_WORK = 2**24  # n * r * p: 64 times today's


def _badge_text(scheme: str, value: str) -> bytes:
    """A badge number or card UID as hashed: separators and case ignored (``AP-123455`` and ``ap 123455``
    agree), the scheme named."""
    return f"quaygate-gate-pass|{scheme.strip().lower()}|{_SEPARATORS.sub('', value).upper()}".encode()


def badge_digest(scheme: str, value: str) -> str:
    """The SHA-256 digest a pass of the first form carried (before review 142): guessed in milliseconds.
    Read in such a pass until it expires (an hour at most); the service issues only hashed passes."""
    return hashlib.sha256(_badge_text(scheme, value)).hexdigest()


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("a whole number was expected")
    return value


@dataclass(frozen=True, slots=True)
class BadgeHash:
    """A pass's scrypt salt and parameters: ``of`` hashes a badge number or card UID under them."""

    salt: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def __post_init__(self) -> None:
        n, r, p = _whole(self.n), _whole(self.r), _whole(self.p)
        if not isinstance(self.salt, bytes) or not SALT_BYTES <= len(self.salt) <= 64:
            raise ValueError(f"a badge hash's salt is {SALT_BYTES} to 64 bytes")
        if n < 2 or n & (n - 1) or r < 1 or p < 1:
            raise ValueError("scrypt's n is a power of two, r and p at least 1")
        if n * r < _MIN_COST or 128 * n * r > _MAX_MEMORY or n * r * p > _MAX_WORK:
            raise ValueError("scrypt parameters weaker than ours, or dearer than a gate PC gives")

    def of(self, scheme: str, value: str) -> str:
        """The hash of a badge number or card UID (``_badge_text``), 32 bytes in hex."""
        return hashlib.scrypt(_badge_text(scheme, value), salt=self.salt, n=self.n, r=self.r, p=self.p,
                              maxmem=256 * self.n * self.r + 128 * self.r * self.p, dklen=32).hex()

    def claims(self) -> dict[str, Any]:
        return {"alg": BADGE_HASH_ALG, "salt": self.salt.hex(), "n": self.n, "r": self.r, "p": self.p}

    @classmethod
    def from_claims(cls, c: Mapping[str, Any]) -> BadgeHash:
        if c["alg"] != BADGE_HASH_ALG:
            raise ValueError("a badge hash is scrypt")
        return cls(bytes.fromhex(_str(c["salt"])), _whole(c["n"]), _whole(c["r"]), _whole(c["p"]))


# How a read badge value is hashed under a pass's ``BadgeHash``: ``BadgeHash.of`` unless the caller says
# otherwise. The service's reconcile hashes within a bound on the CPU it takes, before its transaction, and
# remembers what it hashed (services/gate_passes.py ``_hash_read``, review 143): the rules stay these.
HashBadge = Callable[[BadgeHash, str, str], str]


def _digests(hashing: BadgeHash | None, hash_badge: HashBadge | None = None) -> Callable[[str, str], str]:
    """A pass's hash of what a lane read, each value hashed once per decision (a hash costs tens of ms)."""
    done: dict[tuple[str, str], str] = {}
    of = hash_badge or BadgeHash.of

    def digest(scheme: str, value: str) -> str:
        key = (scheme, value)
        if key not in done:
            done[key] = of(hashing, scheme, value) if hashing is not None else badge_digest(scheme, value)
        return done[key]
    return digest


@dataclass(frozen=True, slots=True)
class BadgeProof:
    """One badge of the nominated driver, as the badge office knew it when the pass was issued: its
    number and card UID as the pass hashes them (``GatePass.badge_hash``)."""

    scheme: str
    number_digest: str | None
    card_uid_digest: str | None
    status: str
    valid_until: datetime | None
    activated_terminals: frozenset[str]
    valid_from: datetime | None = None

    def matches(self, read: g.BadgeRead, digest: Callable[[str, str], str]) -> bool:
        """Both given: both must match (as the service's badge lookup). ``digest``: the pass's hash."""
        if read.scheme.strip().lower() != self.scheme or not (read.number or read.card_uid):
            return False
        if (read.number and self.number_digest is None) or (read.card_uid and self.card_uid_digest is None):
            return False
        if read.number and digest(self.scheme, read.number) != self.number_digest:
            return False
        return not read.card_uid or digest(self.scheme, read.card_uid) == self.card_uid_digest


# ---- the pass ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatePass:
    pass_id: str  # jti
    terminal: str
    issued_at: datetime
    expires_at: datetime
    right: g.RightFacts
    badges: tuple[BadgeProof, ...]
    holder: str | None  # already masked ("J. P***s")
    screening: g.ScreeningResult
    ban_list_as_of: datetime | None  # None: no register configured when issued
    policy: g.TerminalPolicy
    # How ``badges`` are hashed (review 142). None: a pass of the first form (SHA-256 digests,
    # ``badge_digest``), still read until it expires: the service issues only hashed passes.
    badge_hash: BadgeHash | None = None

    def valid_at(self, now: datetime) -> bool:
        return self.issued_at <= now < self.expires_at

    def to_claims(self, issuer: str) -> dict[str, Any]:
        r = self.right
        n = r.nomination
        return {
            "iss": issuer, "aud": PASS_AUDIENCE, "sub": str(r.id), "jti": self.pass_id,
            "iat": int(self.issued_at.timestamp()), "exp": int(self.expires_at.timestamp()),
            "terminal": self.terminal,
            "right": {
                "id": str(r.id), "container": r.container, "terminal": r.terminal, "state": r.state,
                "blocked": r.blocked, "commercial": r.commercial, "customs": r.customs,
                "terminal_light": r.terminal_light, "valid_from": _iso(r.valid_from),
                "valid_until": _iso(r.valid_until), "created_at": _iso(r.created_at),
                "nomination": None if n is None else {
                    "driver": str(n.driver_person_id), "plate": n.plate_text, "country": n.plate_country,
                    "response": n.response,
                },
                "issuer": str(r.issuer) if r.issuer is not None else None, "contested": r.contested,
            },
            "badges": [{"scheme": b.scheme, **self._badge_claims(b),
                        "status": b.status, "valid_until": _iso(b.valid_until) if b.valid_until else None,
                        "valid_from": _iso(b.valid_from) if b.valid_from else None,
                        "terminals": sorted(b.activated_terminals)} for b in self.badges],
            **({} if self.badge_hash is None else {"badge_hash": self.badge_hash.claims()}),
            "holder": self.holder,
            "screening": {"result": self.screening.value,
                          "ban_list_as_of": _iso(self.ban_list_as_of) if self.ban_list_as_of else None},
            "policy": {
                "face_required": self.policy.face_required, "face_min_score": self.policy.face_min_score,
                "container_min_confidence": self.policy.container_min_confidence,
                "plate_min_confidence": self.policy.plate_min_confidence,
                "plate_max_lookalikes": self.policy.plate_max_lookalikes,
                "screening_unavailable": self.policy.screening_unavailable,
                # Whether the adapter may take its local matcher's word offline, as the service would
                # (review 131). A pass without it (from before) gives the default: refuse.
                "face_match_results": self.policy.face_match_results,
                # Review 142: a number alone, for a badge with a chip, is a review offline too. A pass
                # without it (from before) gives the default: not asked.
                "badge_chip_required": self.policy.badge_chip_required,
            },
        }

    def _badge_claims(self, b: BadgeProof) -> dict[str, str | None]:
        """A badge's number and card UID: hashed (``number_hash``, ``card_uid_hash``; an adapter from before
        review 142 finds no ``number`` and refuses the pass: review, never a deny on a hash it cannot read),
        or, in a pass of the first form, digested."""
        if self.badge_hash is None:
            return {"number": b.number_digest, "card_uid": b.card_uid_digest}
        return {"number_hash": b.number_digest, "card_uid_hash": b.card_uid_digest}

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], *, issuer: str, terminal: str | None = None) -> GatePass:
        """A pass from its (signature-checked) claims; ``PassRefused`` for any claim out of shape, another
        issuer or audience, or (``terminal`` given) another terminal. Expiry is the caller's (``valid_at``)."""
        try:
            if claims["iss"] != issuer or claims["aud"] != PASS_AUDIENCE:
                raise PassRefused("another issuer or audience")
            r, s, p = claims["right"], claims["screening"], claims["policy"]
            n = r["nomination"]
            right = g.RightFacts(
                id=uuid.UUID(r["id"]), container=_str(r["container"]), terminal=_str(r["terminal"]),
                state=_str(r["state"]), blocked=_bool(r["blocked"]), commercial=_str(r["commercial"]),
                customs=_str(r["customs"]), terminal_light=_str(r["terminal_light"]),
                valid_from=_time(r["valid_from"]), valid_until=_time(r["valid_until"]),
                created_at=_time(r["created_at"]),
                nomination=None if n is None else g.NominationFacts(
                    uuid.UUID(n["driver"]), _str(n["plate"]), _str(n["country"]), _str(n["response"])),
                # Absent from a pass of a service from before they were carried (it lives minutes).
                issuer=uuid.UUID(r["issuer"]) if r.get("issuer") is not None else None,
                contested=_bool(r.get("contested", False)),
            )
            hashing = BadgeHash.from_claims(claims["badge_hash"]) if "badge_hash" in claims else None
            number, card_uid = ("number", "card_uid") if hashing is None else ("number_hash", "card_uid_hash")
            badges = tuple(
                BadgeProof(_str(b["scheme"]), _opt_str(b[number]), _opt_str(b[card_uid]), _str(b["status"]),
                           _time(b["valid_until"]) if b["valid_until"] else None,
                           frozenset(_str(t) for t in b["terminals"]),
                           _time(b["valid_from"]) if b.get("valid_from") else None)
                for b in claims["badges"]
            )
            made = cls(
                pass_id=_str(claims["jti"]), terminal=_str(claims["terminal"]),
                issued_at=datetime.fromtimestamp(int(claims["iat"]), UTC),
                expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
                right=right, badges=badges, holder=claims["holder"],
                screening=g.ScreeningResult(s["result"]),
                ban_list_as_of=_time(s["ban_list_as_of"]) if s["ban_list_as_of"] else None,
                policy=g.TerminalPolicy(**p), badge_hash=hashing,
            )
        except PassRefused:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PassRefused(f"malformed gate pass: {type(exc).__name__}") from exc
        if str(right.id) != claims.get("sub") or right.terminal != made.terminal:
            raise PassRefused("the pass speaks of another right or terminal")
        if terminal is not None and made.terminal != terminal:
            raise PassRefused("a pass for another terminal")
        if right.state not in PASS_STATES:
            raise PassRefused("a pass only covers nominated or gated-in rights")
        if not timedelta(0) < made.expires_at - made.issued_at <= MAX_PASS_LIFETIME:
            raise PassRefused("a pass lives at most an hour")
        return made


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _time(value: Any) -> datetime:
    at = datetime.fromisoformat(_str(value))
    if at.tzinfo is None:
        raise ValueError("a time without zone")
    return at


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("a string was expected")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("true or false was expected")
    return value


def pass_life(screening: g.ScreeningResult, *, issued_at: datetime, expires_at: datetime,
              next_ban: datetime | None) -> tuple[datetime, g.ScreeningResult]:
    """A pass's ``exp`` and screening, given the start of the next ban on its driver the service holds when
    it issues the pass (``screening.next_ban_start``; None: none ahead). Review 147, finding 2: screened at
    ``iat`` alone, a pass said clear for its whole life, and offline the lane let the driver in after his
    ban had started.

    A ban starting within the pass's life caps ``exp`` at its start (``exp`` is whole seconds, so rounded
    down): the pass stays what the service says until then (online he is let in until then too), and the
    lane holds no pass past it (offline: no pass, review, which no desk sets aside on the lane's word).
    Writing ``banned`` for the whole life instead would refuse him offline for minutes while the service
    lets him in. A ban starting within the pass's first second leaves it no life: ``banned``. A ban
    starting at or after ``exp``, or a driver screened ``banned`` already, change nothing."""
    if next_ban is None or screening is g.ScreeningResult.BANNED or next_ban >= expires_at:
        return expires_at, screening
    end = next_ban.replace(microsecond=0)
    if end <= issued_at:
        return expires_at, g.ScreeningResult.BANNED
    return end, screening


# ---- deciding offline ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfflineLimits:
    """How old the adapter's knowledge may be (per terminal, set on the adapter)."""

    store_max_age: timedelta = timedelta(minutes=15)
    ban_list_max_age: timedelta = timedelta(hours=24)
    policy: g.TerminalPolicy = g.TerminalPolicy()  # when no pass brings the terminal's own


class Basis(StrEnum):
    PASS = "pass"  # decided from a valid pass
    NO_PASS = "no_pass"  # no valid pass for this container: review
    STORE_STALE = "store_stale"  # the pass store was not refreshed in time: review


@dataclass(frozen=True, slots=True)
class LocalUses:
    """Rights this adapter used, which a pass fetched before the use cannot show: let through offline
    (not yet known to the service), or committed online for one of its lanes (gate_adapters/runtime/
    outbox.py rule 7)."""

    gated_in: frozenset[uuid.UUID] = frozenset()
    completed: frozenset[uuid.UUID] = frozenset()


@dataclass(frozen=True, slots=True)
class OfflineDecision:
    decision: g.Decision
    basis: Basis
    pass_id: str | None  # the pass of the right judged
    ban_list_age: timedelta | None  # shown with every offline decision
    store_age: timedelta | None

    @property
    def event(self) -> str:
        return self.decision.event.replace("release.verify.", "release.verify.offline.", 1)


def _local_state(right: g.RightFacts, uses: LocalUses) -> g.RightFacts:
    if right.id in uses.completed:
        return replace(right, state=State.COMPLETED.value)
    if right.id in uses.gated_in and right.state == State.NOMINATED.value:
        return replace(right, state=State.GATED_IN.value)
    return right


def decide_offline(
    request: g.GateRequest,
    *,
    passes: Iterable[GatePass],
    uses: LocalUses,
    limits: OfflineLimits,
    store_refreshed_at: datetime | None,
    now: datetime,
    since_refresh: timedelta | None = None,
    hash_badge: HashBadge | None = None,
) -> OfflineDecision:
    """Decide a gate read from gate passes with ``gate.decide`` (see the module docstring).

    ``now`` is the wall clock; ``since_refresh`` the time since the last refresh by a monotonic clock of
    the deciding process (None when it did not refresh: after a restart, the wall clock alone);
    ``hash_badge`` how the read badge is hashed under a pass's salt (``HashBadge``)."""
    store_age: timedelta | None = None
    clock_behind = False
    if store_refreshed_at is not None:
        store_age = now - store_refreshed_at
        clock_behind = store_age < timedelta(0)  # rule 2: the wall clock was set back before the refresh
        if not clock_behind and since_refresh is not None and since_refresh > store_age:
            # Rule 2: the wall clock went back while we ran; the monotonic clock did not. Judge at its time.
            now, store_age = store_refreshed_at + since_refresh, since_refresh
    fresh = store_age is not None and not clock_behind and store_age <= limits.store_max_age
    wanted = set(container_candidates(request.container.number))
    usable = [p for p in passes if fresh and p.valid_at(now) and p.terminal == request.terminal
              and p.right.container in wanted]
    by_right = {p.right.id: p for p in usable}
    rights = [_local_state(p.right, uses) for p in usable]
    badge, holder_pass = _badge(request.badge, usable, hash_badge)
    screening, ban_age = _screening(holder_pass, limits, now)
    policy = usable[0].policy if usable else limits.policy
    decision = g.decide(request, rights=rights, badge=badge, screening=screening, policy=policy, now=now)
    judged = by_right.get(decision.release_id) if decision.release_id else None
    basis = Basis.PASS if judged is not None else (Basis.NO_PASS if fresh else Basis.STORE_STALE)
    if basis is not Basis.PASS and decision.decision is not g.Outcome.REVIEW:
        decision = replace(decision, decision=g.Outcome.REVIEW)  # rule 1: no knowledge is a doubt
    return OfflineDecision(decision, basis, judged.pass_id if judged else None, ban_age, store_age)


def _badge(read: g.BadgeRead | None, passes: Sequence[GatePass], hash_badge: HashBadge | None = None
           ) -> tuple[g.BadgeFacts | None, GatePass | None]:
    if read is None:
        return None, None
    for p in passes:
        n = p.right.nomination
        digest = _digests(p.badge_hash, hash_badge)
        for proof in p.badges:
            if n is not None and proof.matches(read, digest):
                # Active: no pass is issued for a suspended person (adapters/sqla/gate_offline.py).
                return g.BadgeFacts(found=True, status=proof.status, person_id=n.driver_person_id,
                                    valid_from=proof.valid_from, valid_until=proof.valid_until,
                                    activated_terminals=proof.activated_terminals,
                                    holder_name=p.holder, holder_status=g.PERSON_ACTIVE,
                                    card_uid_on_record=proof.card_uid_digest is not None), p
    # Offline we only know the nominated drivers' badges: any other badge is unknown here.
    return g.BadgeFacts.not_found(), None


def _screening(holder: GatePass | None, limits: OfflineLimits, now: datetime
               ) -> tuple[g.ScreeningFacts, timedelta | None]:
    if holder is None:
        return g.ScreeningFacts(g.ScreeningResult.UNAVAILABLE), None  # nobody to screen: never "clear"
    # A register whose clock runs ahead issues lists "in the future" (identity takes them up to five
    # minutes ahead): no younger than new.
    age = None if holder.ban_list_as_of is None else max(now - holder.ban_list_as_of, timedelta(0))
    result = holder.screening
    if result is g.ScreeningResult.CLEAR and age is not None and age > limits.ban_list_max_age:
        result = g.ScreeningResult.UNAVAILABLE  # rule 3: a stale list clears nobody
    return g.ScreeningFacts(result), age


# ---- reconciling an offline use --------------------------------------------------------------------


class Verdict(StrEnum):
    """What the service does with an offline decision when the adapter reconnects."""

    RECORD = "recorded"  # an offline allow, the right still unused: the gate move is recorded now
    NOTHING_TO_RECORD = "nothing_to_record"  # a deny, a review or a check: kept for the audit only
    DECIDED_ONLINE = "decided_online"  # the same request_id was answered online: that answer stands
    FLAGGED = "flagged"  # kept, audited and announced to port security


class Flag(StrEnum):
    USED_OFFLINE_TWICE = "used_offline_twice"  # the right was let through offline at another gate too
    USED_ONLINE_MEANWHILE = "used_online_meanwhile"  # the right was used online while this gate was offline
    CHANGED_AFTER_PASS = "changed_after_pass"  # revoked, expired, blocked or held after the pass was issued
    PASS_INVALID = "pass_invalid"  # an allow without a genuine, matching, unexpired pass
    NOT_SUPPORTED_BY_PASS = "not_supported_by_pass"  # a genuine pass, but its rules would not have allowed this
    CONTRADICTS_ONLINE = "contradicts_online"  # allowed offline what the online answer to the same request did not


class UsedBy(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


_PRE_GATE = frozenset({State.ACTIVE.value, State.NOMINATED.value})
_USED = frozenset({State.GATED_IN.value, State.COMPLETED.value})
_TICK = timedelta(microseconds=1)


def judge_use(*, direction: g.Direction, state: str, used_by: UsedBy | None) -> tuple[Verdict, Flag | None]:
    """The double-use rule for an offline allow with a valid pass, given the right's state NOW.

    Gate-in: a right still before the gate is recorded (the service may still find it changed and flag
    ``changed_after_pass``); a right already gated in or completed was used twice: flagged by who used it
    first (``used_by``: another offline gate or an online decision). Gate-out: a gated-in right is
    completed; a completed one left twice. A right that ended (revoked, expired, deleted) is flagged
    ``changed_after_pass``: the truck went through on what the pass could not know.
    """
    if direction is g.Direction.IN:
        if state in _PRE_GATE:
            return Verdict.RECORD, None
        used = state in _USED
    else:
        if state == State.GATED_IN.value:
            return Verdict.RECORD, None
        used = state == State.COMPLETED.value
    if used:
        flag = Flag.USED_OFFLINE_TWICE if used_by is UsedBy.OFFLINE else Flag.USED_ONLINE_MEANWHILE
        return Verdict.FLAGGED, flag
    return Verdict.FLAGGED, Flag.CHANGED_AFTER_PASS


LIGHTS_CHANGED = "lights_changed"  # a light made red or scan after the pass, whatever it is now
BLOCKED_MEANWHILE = "blocked_meanwhile"  # the line blocked (or unblocked) the right after the pass
_LIGHT_EVENT = "release.light."
_BLOCK_EVENTS = frozenset({"release.blocked", "release.unblocked"})


def held_since_pass(p: GatePass, events: Iterable[tuple[str, Mapping[str, Any], datetime]]) -> tuple[str, ...]:
    """The holds the right's history (``events``: type, data, time) shows after the pass was issued: a light
    made red or scan (``lights_changed``), a block or unblock (``blocked_meanwhile``). Review of the lights,
    finding 2: the reconcile judges lights and block as they are when it runs, so a hold set after the
    pass and lifted before the reconcile left no trace. Up to now, not to the decision's time: when the
    truck passed is the adapter's word (its clock may be wound back, review 126); a flag only tells port
    security. The pass's ``iat`` is whole seconds: an event in the second it was issued counts (a flag too
    many, never one too few)."""
    held: list[str] = []
    for kind, data, at in events:
        if at < p.issued_at:
            continue
        if kind.startswith(_LIGHT_EVENT) and data.get("status") != "green" and LIGHTS_CHANGED not in held:
            held.append(LIGHTS_CHANGED)
        elif kind in _BLOCK_EVENTS and BLOCKED_MEANWHILE not in held:
            held.append(BLOCKED_MEANWHILE)
    return tuple(held)


def changed_since_pass(p: GatePass, right: g.RightFacts, *, badge: g.BadgeFacts | None, driver: Screening | None,
                       at: datetime, contested: bool = False, holder_inactive: bool = False,
                       driver_suspended: bool = False, driver_banned: bool = False, held: Sequence[str] = ()
                       ) -> tuple[str, ...]:
    """What the pass said of the person and the truck that the service no longer says, for the
    reconcile of an allow it supported: another nomination (driver or plate) than the pass's; the badge
    the lane read (``badge``, as the badge office knows it now; None when none was read) refused at
    ``at`` (a driver's other badge does not make a stolen one good); the pass's driver, screened at
    ``at`` as known now (``driver``), refused (a ban loaded since the pass); the container, which the
    pass did not say was contested, contested as the service knows it now (``contested``, for a gate-in:
    another line's right on it, issued before the truck passed and live here, or a mark on this line's
    rights: the truck is in on one line's word while another line claims the container, which port
    security settles from the discharge records); the company holding the right deactivated by port
    security (``holder_inactive``, now or at any time since the pass, reactivated since or not: online
    the gate refuses such a right, and no desk sets that aside; the pass, issued before, could not know);
    the pass's driver suspended by port security since the pass (``driver_suspended``, reinstated since
    or not: ``person_suspended``, as his screening says while he is); the pass's driver under a port ban at
    any time from the pass to ``at`` (``driver_banned``, ended or lifted since or not: ``person_banned``, as
    his screening said while it was in force); the holds set since the pass
    (``held``, ``held_since_pass``), even if lifted since.
    The right's own state, block and lights as they are now are the move's to judge."""
    then, now_n = p.right.nomination, right.nomination
    changed: list[str] = []
    if then is None or now_n is None or (then.driver_person_id, then.plate_text, then.plate_country) != (
            now_n.driver_person_id, now_n.plate_text, now_n.plate_country):
        changed.append("nomination")
    if badge is not None:
        changed.extend(r.value for r in g.badge_refusals(badge, at))
    if driver is not None and driver.refuses:
        changed.extend(r for r in (driver.reasons or (driver.result,)) if r not in changed)
    if driver_suspended and g.Reason.PERSON_SUSPENDED.value not in changed:
        changed.append(g.Reason.PERSON_SUSPENDED.value)
    if driver_banned and g.Reason.PERSON_BANNED.value not in changed:
        changed.append(g.Reason.PERSON_BANNED.value)
    if contested and not p.right.contested:
        changed.append(g.Reason.CONTAINER_CONTESTED.value)
    if holder_inactive:
        changed.append(g.Reason.HOLDER_INACTIVE.value)
    changed.extend(h for h in held if h not in changed)
    return tuple(changed)


def face_wanting(policy: g.TerminalPolicy, face: g.FaceEvidence | None) -> tuple[str, ...]:
    """What the terminal's gate policy ``policy`` (as it stood when the truck passed, known now) says of the
    face an offline allow was given on, where the pass's own policy, issued before, let it through:
    ``face_mismatch`` for a claimed match under its ``face_min_score`` (or a claimed no); ``face_required``
    when it asks for a face and there was none, only a capture (nobody matches one offline), or a claimed
    match from a local matcher it does not trust; ``()`` when the face meets it."""
    trusted = False
    if face is not None and face.kind == "match_result":
        if not face.matched or face.score is None or face.score < policy.face_min_score:
            return (g.Reason.FACE_MISMATCH.value,)
        trusted = policy.face_match_results == "accept"
    return (g.Reason.FACE_REQUIRED.value,) if policy.face_required and not trusted else ()


def chip_wanting(policy: g.TerminalPolicy, read: g.BadgeRead | None, badge: g.BadgeFacts | None) -> tuple[str, ...]:
    """What the terminal's gate policy ``policy`` (as it stood when the truck passed, known now) says of the
    badge read an offline allow was given on, where the pass's own policy, issued before, let it through:
    ``badge_chip_required`` for the printed number alone of a badge with a chip on record (``badge``, as the
    badge office knows it) while the policy asked for the chip (``gate.badge_chip_required``); ``()`` else."""
    if (policy.badge_chip_required and read is not None and not read.card_uid and badge is not None
            and badge.found and badge.card_uid_on_record):
        return (g.Reason.BADGE_CHIP_REQUIRED.value,)
    return ()


def holder_refusals(p: GatePass, badge: g.BadgeFacts | None, screening: g.ScreeningResult | None,
                    at: datetime) -> tuple[str, ...]:
    """What refuses, as the service knows it at ``at``, the person whose badge the lane read when that is
    not the pass's driver: ``driver_mismatch``, the badge office's word on the badge, and his own
    suspension or ban (``screening``: his screening at ``at``). None of these may a desk set aside
    (``gate.OVERRIDABLE``), and a pass cannot show them: offline the adapter knows only the nominated
    driver's badges (``_badge``), so another person's badge, a banned driver's own included, reads
    ``badge_unknown`` with ``screening_unavailable`` (nobody to screen), both of which a desk may set
    aside (review 124, finding 1). ``()`` for no badge, a badge nobody holds, or one of the pass's driver
    (a change to him or his badge is ``changed_since_pass``'s)."""
    n = p.right.nomination
    if badge is None or not badge.found or badge.person_id is None or n is None \
            or badge.person_id == n.driver_person_id:
        return ()
    refused = {g.Reason.DRIVER_MISMATCH, *g.badge_refusals(badge, at)}
    if badge.holder_status != g.PERSON_ACTIVE:
        refused.add(g.Reason.PERSON_SUSPENDED)
    if screening is g.ScreeningResult.BANNED:
        refused.add(g.Reason.PERSON_BANNED)
    return tuple(r.value for r in g.Reason if r in refused)  # in the gate's order


def pass_refuses(p: GatePass, request: g.GateRequest, *, decided_at: datetime, state: str,
                 hash_badge: HashBadge | None = None) -> tuple[str, ...]:
    """Why ``decide_offline``, run on the reported ``request`` and this genuine pass alone at ``decided_at``,
    would not have allowed it: ``()`` when it would (for this pass's right). The reconcile does not take
    the adapter's word for an allow: the container, badge, plate and face read, the pass's own screening,
    lights and nomination must support it.

    Only what the pass says is judged. The adapter's own limits (store age, ban-list age) and its other
    passes could only have made it stricter; the pass's screening was judged fresh enough when issued.
    The adapter's local uses are not replayed, except the one the service now knows of: a gate-out
    after the adapter's own offline gate-in on the same pass (``state``, the right's state now). Whether
    the right was used twice is ``judge_use``'s to say.

    The badge read is hashed (``hash_badge``) whatever ``state`` says: the same values, whatever the
    right's state, so a caller may hash them ahead (services/gate_passes.py ``_hash_read``).
    """
    at = min(max(decided_at, p.issued_at), p.expires_at - _TICK)  # within pass_covers' leeway: judged in life
    gated_in = request.direction is g.Direction.OUT and state in _USED
    uses = LocalUses(gated_in=frozenset({p.right.id}) if gated_in else frozenset())
    limits = OfflineLimits(store_max_age=p.expires_at - p.issued_at, ban_list_max_age=timedelta.max, policy=p.policy)
    d = decide_offline(request, passes=(p,), uses=uses, limits=limits, store_refreshed_at=p.issued_at,
                       now=at, hash_badge=hash_badge).decision
    if d.decision is g.Outcome.ALLOW and d.release_id == p.right.id:
        return ()
    return tuple(r.value for r in d.reasons) or (d.decision.value,)


def signed_while_active(claims: dict[str, Any], retired_at: datetime, *, reload: timedelta) -> bool:
    """The pass says it was issued while its key was still active (a whole-second ``iat``) and ends within
    a pass's lifetime of the key's retirement: so a key rotated out because it leaked forges passes for at
    most an hour after the rotation (review 124), not for ever with an old ``iat``. The right's own age
    is judged at the reconcile (``gate_passes``: a pass older than its right is not ours).

    ``reload``: how long a replica may go on signing with a key set it loaded before the rotation (the
    key store's reload period, identity/keys.py). A pass it signed then is ours: refused, its gate-in was
    flagged and the right stayed usable by a second truck (review 132). Hence ``iat`` up to ``reload``
    and a second (``iat`` is whole seconds) after the retirement, and ``exp`` a pass's lifetime after that."""
    iat, exp = claims.get("iat"), claims.get("exp")
    last = retired_at + reload
    return (all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp))
            and iat <= (last + _SECOND).timestamp() and exp <= (last + MAX_PASS_LIFETIME).timestamp())


def pass_covers(p: GatePass | None, *, terminal: str, release_id: uuid.UUID | None, decided_at: datetime,
                right_created_at: datetime | None = None, leeway: timedelta = timedelta(seconds=5)) -> bool:
    """An offline allow is backed by a pass when the pass is ours (signature checked by the caller),
    for this terminal and this right, and was valid when the adapter decided. ``right_created_at``: when
    the service made the right; a pass issued before its right existed is not one we made (review 124: a
    key rotated out because it leaked, signing a pass dated before its retirement for a right made after;
    ``iat`` is whole seconds, hence the second's grace)."""
    return (p is not None and release_id is not None and p.terminal == terminal and p.right.id == release_id
            and p.issued_at - leeway <= decided_at <= p.expires_at + leeway
            and (right_created_at is None or right_created_at < p.issued_at + timedelta(seconds=1)))


# ---- an adapter's outbox: its high-water mark (review 92) ------------------------------------------


class OutboxAlarm(StrEnum):
    """What an adapter's outbox position tells port security (gate_adapters/runtime/outbox.py rule 10)."""

    ROLLED_BACK = "outbox_rolled_back"  # its head went back, or one sequence number named two decisions
    TAMPERED = "outbox_tampered"  # the adapter says its own chain does not hold
    # A new chain while another of the client's told a head above every place reported from it: the
    # decisions it claimed went with the old file, unreported (review 155, finding 1).
    REPLACED = "outbox_replaced"


@dataclass(frozen=True, slots=True)
class OutboxMark:
    """One outbox's place as an adapter told it: its chain's id, its head (``seq``), whether it holds."""

    outbox_id: str
    seq: int
    intact: bool = True


def judge_outbox(known: OutboxMark | None, told: OutboxMark, *, head: bool) -> tuple[OutboxMark, OutboxAlarm | None]:
    """The mark to keep and the alarm to raise, from what we knew of this outbox and what the adapter tells.

    A chain's head never goes back (outbox.py rule 10: sequence numbers are never reused, pruning keeps the
    head): a ``head`` (a pass refresh) below the highest we know is an earlier copy of the file put back,
    the decisions after it lost. A report's ``seq`` may be below it (an old decision sent late) and is
    judged by the caller (one number, two decisions); it only raises the mark. An outbox that says it no
    longer holds alarms once, when it stops holding. After an alarm the mark follows the adapter: one
    alarm per event, not one per refresh."""
    if known is None:
        return told, (OutboxAlarm.TAMPERED if not told.intact else None)
    alarm = None
    if head and told.seq < known.seq:
        alarm = OutboxAlarm.ROLLED_BACK
    elif known.intact and not told.intact:
        alarm = OutboxAlarm.TAMPERED
    seq = told.seq if head else max(known.seq, told.seq)
    return OutboxMark(known.outbox_id, seq, told.intact if head else known.intact), alarm

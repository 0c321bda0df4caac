"""Rate limits and temporary lockout for the login and token endpoints (SPEC "Identity", issue 3).

Counters live in the Cache: Redis when QUAYGATE_REDIS_URL is set, so every replica counts against the
same numbers; the in-process cache otherwise (one replica). Three parts:

- ``RateLimiter.hit(key, limit, window)``: a sliding count, one script per request (one round trip):
  this window's count plus the last window's, weighted by the part of the last window still within one
  window's length of now (the estimate of Cloudflare's and nginx-style limiters, which takes the last
  window's requests as spread evenly over it). Windows are aligned to the clock (the window's number is
  in the key), so an injected clock moves a count on and tests need no sleep. A window's count alone let
  a limit through just before an edge and another just after (twice the limit in two seconds); a burst
  just before an edge now counts almost whole just after it. At worst (a limit bunched at a window's
  end, then spread over the next) twice the limit passes within one window's length, never in a burst.
  A refused request is not counted (it writes nothing); Retry-After is the time until one more request
  would pass, nothing more counted (under two windows).
- ``LoginGuard``: per address (and per IPv6 /48: "Networks", below), a limit on login attempts; per
  person (a face step-up's), failures are counted, and the N-th failure within this failure window and
  the last (clock-aligned, summed) locks that person out for a while, doubling with each lockout
  (capped) until a successful login. So N failures within any span of one window's length lock (one
  window's count alone let N-1 just before an edge and N-1 just after pass: 2N-2 in a second), and a
  failure counts for one to two windows, never longer. Counting starts again at one after a lockout
  (its generation) and after a success. The lockout
  is audited (``identity.lockout.started``). A passkey login counts no failure (review 122, finding 2:
  an assertion names a credential before its signature proves anything, so anyone could lock its owner
  out; and a signature cannot be guessed): its attempts count against the address only. The first
  failure of a generation to find N or more claims its lockout (an INCR that returns 1), so concurrent
  failures start one lockout, never two (STYLE.md #4); failures while locked are not counted (check()
  refuses those attempts anyway).
- ``RateLimitMiddleware`` (``install(app)``): POSTs to the OAuth endpoints (token, PAR,
  introspection, revocation, registration), requests of every method under /oauth2/register (RFC 7592's
  GET, PUT and DELETE of a client, which an anonymous caller can send: review 129, finding 2) and POSTs
  to /webauthn/authentication/verify are limited per client address (an IPv6 address by its /64, and by
  its /48 too: ``address_keys``), and the OAuth ones also per client_id (from the Basic header or the
  form, read from a small buffered copy of the body that is replayed to the route). The address is
  counted before any of the body is read, and the form is read within the app's deadline for a body
  (408 past it): a body that never comes has been counted (review 168, finding 1: twenty held open were
  counted nowhere, and the address's next requests passed). A client named in the form has its
  allowance read once the form is in, a second round trip; one in the Basic header, in the first. A
  passkey login's options are not: they store nothing (identity.authn.flows), and a count of them would
  be the one write an anonymous caller could make there (review 67, finding 4).

Networks. One IPv6 customer is routinely handed a /48 (RFC 6177 §2; a tunnel broker gives one away):
65 536 /64s, each with a per-address allowance of its own, and each making Redis hold counters of its
own. So a request from an IPv6 address is also counted per /48 (``ep:<family>:net:``,
``login:net:``), with a larger limit (``rate_limit_per_network``, ``login_attempts_per_network``;
never taken below the per-address one, so that one /64 alone always keeps its own limit): one /48 has at
most that, however many /64s it spreads over. Both counts are one script, one round trip
(``Cache.incr_sliding``): nothing is counted once the /48's count is spent, so a refused request from a
new /64 creates no key; and the /48 counts only what the /64's own limit let through, so one /64 that
hammers spends its own allowance, not its neighbours' (it takes ten /64s at their limit, by default, to
spend a /48's). The defaults (ten times the per-address limits) leave room for a carrier that hands each
phone a /64 from a shared pool, where unrelated drivers' /64s may share a /48; a refusal by the /48's
count logs ``identity.ratelimit.refused.network``, to tell when an operator should raise it.

No such count is kept for IPv4 (an IPv4 /24, say), on purpose. Drivers reach us from phones, and mobile
carriers put IPv4 behind carrier-grade NAT (RFC 6598): one public address is already shared by many
subscribers, and a /24 of a carrier's NAT pool by thousands, the drivers of a terminal on one carrier
among them. A /24 count would put them all under one allowance, which one abusive subscriber on that
carrier could spend, locking the others out of their logins and refreshes. And the hole it would close
is small: IPv4 addresses are scarce and bought one by one, so holding 256 of them costs what holding 256
hosts of a botnet does, which no per-network count stops either (the per-person lockout is what bounds
guessing at an account); a /48 of IPv6 costs nothing.

What the counters hold in Redis (review 67, finding 4: Redis runs under noeviction, so what an
anonymous caller makes us store must be bounded): one key per counted address (or client, or /48) and
window, kept to the end of the next window (which reads it as its last), 104 bytes each (``MEMORY
USAGE``: a 50-character name, a small integer, the expiry). However many requests it sends, an address
(an IPv4 address, an IPv6 /64) holds one counter per family it uses (``ep:webauthn``, ``ep:oauth``) and
one of login attempts (``login:addr``), two of each (this window's and the last's): at most about 600
bytes. An IPv6 /48 holds its own three counters, and its /64s' counters, at most as many per family and
window as the /48's limit (a request that creates a counter passed, and is counted in the /48's too):
with the defaults at most 6 001 + 6 001 + 601 keys per window, about 1.3 MB, 2.6 MB for the two windows
kept, however many of its 65 536 /64s it uses (without the /48's count: up to 196 608 keys per window,
20 MB; 41 MB).
Lower ``rate_limit_per_network`` and ``login_attempts_per_network`` to hold less. A caller with many /48s
(a /32: an ISP's allocation) multiplies it again, as a botnet multiplies IPv4 addresses. The login
guard's failure counts and locks are kept per person that exists (``LoginGuard.failed``
is told only of those): a handful of keys each (``lf:…:any``, ``lf:…:<generation>:<window>`` for two
windows, ``lf:…:<generation>:start``, ``lock``, ``lockn``, ``lockgen``), bounded by the accounts, never by
the callers.

A login session's passkey registration options (``LoginGuard.check_registration``) store a flow each
(about 360 bytes, for its five minutes: identity.authn.service): they count as a login attempt of the
address, as an enrolment code's do, and against the person's own allowance,
``REGISTRATION_OPTIONS_PER_PERSON`` a window (review 146, finding 2: a driver with a recent login looped
them, a flow a call, and filled Redis). So one person holds at most about that many flows a window, six
windows' worth within a flow's life (some 60 flows, 22 KB) and two counters (``ep:regopts:person:``),
only while his login is recent (identity.authn.service ``REGISTRATION_MAX_AUTH_AGE``): bounded by the
accounts again.

Refusals: the OAuth endpoints answer ``429`` with ``Retry-After`` and an OAuth error body
``{"error": "slow_down", ...}`` (RFC 6749 §5.2's shape; ``slow_down`` is RFC 8628 §3.5's code for
"ask less often", the one OAuth clients already handle); the WebAuthn endpoints, whose errors are RFC
9457 problems, answer a problem with code ``rate_limited``.

The per-client count only counts requests in which the client authenticated (with its secret or its
assertion): client authentication says so through ``client_authenticated``, into a cell the
middleware sets for every request to the OAuth endpoints (a context variable; the route's thread pool
carries it, quaygate/threads.py). Someone who cannot authenticate as a client cannot spend that
client's allowance by naming it, in the form's client_id, the Basic header or an assertion's ``sub``,
whatever the answer (401 invalid_client, or a 400 found before the client was authenticated: an
unknown grant_type, a malformed form): a denial of service on a victim client. Their requests still
count against their address. For the same reason a request that carries no client credential (a
public client's: the driver app's refresh) has no per-client count at all, only its address's: anyone
can name a public client.

The client the middleware reads from the request (the Basic header, or a form with a client_id and a
credential) is only a guess, made so that a client over its allowance is refused before any scrypt or
JWT work: its allowance is checked before the route, and the request counted after it once that client
authenticated. The client that authenticated is the truth. When it is not the one guessed, a form the
sniffing cannot read (private_key_jwt without the optional client_id, RFC 7523 §2.2 and §3; a
percent-encoded ``client%5Fsecret``, which the route decodes), ``client_authenticated`` counts it there
and then, one INCR (no database round trip), and client authentication answers as the middleware would,
429 ``slow_down``, once its allowance is spent (review 120, finding 4: such requests were not counted
at all). The common case, a client the middleware read, keeps the early refusal and costs nothing more.

Client secrets (review 129, finding 1). A client secret is checked with scrypt (identity.clients: about
50 ms of CPU and 16 MiB each), on the few threads the token endpoint shares with the passkey login and
the gate's database way (quaygate/threads.py): within the per-address allowance above, one address could
keep them all busy with wrong secrets. So client-secret failures (a wrong secret for a client of ours,
or a client_id we do not know: ``client_secret_failed``) have a budget of their own per address
(``rate_limit_secret_failures_per_address``, 10 per window) and per IPv6 /48
(``rate_limit_secret_failures_per_network``, 100; never below the per-address one), read before any
secret is hashed (``secret_failures_spent``): once it is spent, the request is answered 429
``slow_down`` with Retry-After and nothing is hashed. Only failures count: a client that presents its
own secret spends none of it, and a secret that matched before is recognised without scrypt
(identity.clients ``SecretChecker``), so a legitimate client behind an address that an attacker spent
still gets its tokens. The budget is read, then counted after the hash: requests hashing at the moment
it is spent may pass it, at most as many as there are hashing slots (``SecretChecker``, half the
worker threads), which bounds the hashes at once in any case. With the limits off nothing is counted.
Keys: one more counter per address (and /48) that failed, ``secret:addr:`` and ``secret:net:``.

The client address is the ASGI ``client``, as ``quaygate serve`` has uvicorn set it: the peer's, or,
on a request from a proxy named in QUAYGATE_FORWARDED_ALLOW_IPS (or ``quaygate serve
--forwarded-allow-ips``), the X-Forwarded-For address that proxy vouches for. Behind a reverse proxy,
name it there, or every client counts as the proxy's one address (quaygate/cli.py cmd_serve).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import sqlalchemy as sa

from quaygate.appstate import built_once
from quaygate.cache import Cache, Counts
from quaygate.routing import BodyTimeout, app_body_seconds, body_timeout, read_form

from . import audit

log = logging.getLogger(__name__)

# Defaults; the settings (quaygate/settings.py) override them through ``limits_from_settings``:
# rate_limit_enabled, rate_limit_window, rate_limit_per_address, rate_limit_per_network,
# rate_limit_per_client, rate_limit_secret_failures_per_address, rate_limit_secret_failures_per_network,
# login_attempts_per_address, login_attempts_per_network, login_failures_before_lockout,
# login_failure_window, lockout_seconds, lockout_max_seconds.
RATE_LIMIT_WINDOW = 60  # seconds
RATE_LIMIT_PER_ADDRESS = 600  # POSTs to the limited endpoints per address and window
RATE_LIMIT_PER_NETWORK = 6000  # the same, per IPv6 /48 (``address_keys``): ten /64s at their limit
RATE_LIMIT_PER_CLIENT = 1200  # authenticated requests per client_id and window
SECRET_FAILURES_PER_ADDRESS = 10  # client secrets refused (or unknown clients) per address and window
SECRET_FAILURES_PER_NETWORK = 100  # the same, per IPv6 /48
LOGIN_ATTEMPTS_PER_ADDRESS = 60  # login attempts (check()) per address and window
LOGIN_ATTEMPTS_PER_NETWORK = 600  # the same, per IPv6 /48
REGISTRATION_OPTIONS_PER_PERSON = 10  # a login session's passkey registration options per person and window
LOGIN_FAILURES_BEFORE_LOCKOUT = 5  # failures of one person within the failure window
LOGIN_FAILURE_WINDOW = 900
LOCKOUT_SECONDS = 300  # the first lockout; doubled on each further one
LOCKOUT_MAX_SECONDS = 3600
LOCKOUT_LEVEL_MEMORY = 86_400  # how long the doubling remembers earlier lockouts

OAUTH_PATHS = frozenset({"/oauth2/token", "/oauth2/par", "/oauth2/introspect", "/oauth2/revoke",
                         "/oauth2/register"})
# Registration (RFC 7591) and the management of a registered client (RFC 7592, /oauth2/register/{id}):
# counted whatever the method, as the OAuth family.
REGISTRATION_PREFIX = "/oauth2/register"
# The passkey login's verify; its options store nothing and are not counted (module docstring).
WEBAUTHN_LOGIN_PATHS = frozenset({"/webauthn/authentication/verify"})
MAX_SNIFFED_BODY = 16_384  # bytes of a form body read for its client_id; longer bodies pass unread
MAX_CLIENT_ID_LENGTH = 255


@dataclass(frozen=True)
class Limits:
    enabled: bool = True
    window: int = RATE_LIMIT_WINDOW
    per_address: int = RATE_LIMIT_PER_ADDRESS
    per_network: int = RATE_LIMIT_PER_NETWORK
    per_client: int = RATE_LIMIT_PER_CLIENT
    secret_failures_per_address: int = SECRET_FAILURES_PER_ADDRESS
    secret_failures_per_network: int = SECRET_FAILURES_PER_NETWORK
    login_attempts_per_address: int = LOGIN_ATTEMPTS_PER_ADDRESS
    login_attempts_per_network: int = LOGIN_ATTEMPTS_PER_NETWORK
    registration_options_per_person: int = REGISTRATION_OPTIONS_PER_PERSON  # no setting: the default holds
    failures_before_lockout: int = LOGIN_FAILURES_BEFORE_LOCKOUT
    failure_window: int = LOGIN_FAILURE_WINDOW
    lockout_seconds: int = LOCKOUT_SECONDS
    lockout_max_seconds: int = LOCKOUT_MAX_SECONDS

    # A per-network limit is never below the per-address one, so that one /64 alone always keeps its own
    # allowance (module docstring, "Networks"); the settings are taken as they are, this is what counts.
    @property
    def network_limit(self) -> int:
        return max(self.per_network, self.per_address)

    @property
    def login_network_limit(self) -> int:
        return max(self.login_attempts_per_network, self.login_attempts_per_address)

    @property
    def secret_failure_network_limit(self) -> int:
        return max(self.secret_failures_per_network, self.secret_failures_per_address)


def limits_from_settings(settings: Any) -> Limits:
    """Limits from ``settings.rate_limit_*`` / ``login_*`` / ``lockout_*`` where present, else defaults."""
    defaults = Limits()
    names = {"enabled": "rate_limit_enabled", "window": "rate_limit_window", "per_address": "rate_limit_per_address",
             "per_network": "rate_limit_per_network", "per_client": "rate_limit_per_client",
             "secret_failures_per_address": "rate_limit_secret_failures_per_address",
             "secret_failures_per_network": "rate_limit_secret_failures_per_network",
             "login_attempts_per_address": "login_attempts_per_address",
             "login_attempts_per_network": "login_attempts_per_network",
             "failures_before_lockout": "login_failures_before_lockout", "failure_window": "login_failure_window",
             "lockout_seconds": "lockout_seconds", "lockout_max_seconds": "lockout_max_seconds"}
    return Limits(**{field: getattr(settings, name, getattr(defaults, field)) for field, name in names.items()})


def address_keys(address: str) -> tuple[str, str | None]:
    """What a per-address limit counts by, and the network whose count the address's requests are
    counted in as well.

    The first: an IPv4 address as is; an IPv6 address by its /64, which one host or one subscriber
    usually holds whole (RFC 6177, RFC 7934): counted per address, it would have 2^64 addresses to
    spread its requests over; an IPv4-mapped IPv6 address as its IPv4 address. Anything that is no
    address (a test client's name) as is. The second: an IPv6 address's /48 (a whole site's, RFC 6177
    §2; 65 536 /64s that one customer may hold); None for anything else: an IPv4 address (or
    IPv4-mapped) has no wider count (module docstring)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address, None
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip), None
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), None
    bits = int(ip)
    return (f"{ipaddress.IPv6Address(bits >> 64 << 64)}/64",
            f"{ipaddress.IPv6Address(bits >> 80 << 80)}/48")


@dataclass(frozen=True)
class Wider:
    """The wider count a request is also counted in (its address's network's): its key and limit."""

    key: str
    limit: int


def _digest(value: str) -> str:
    """Keys in the cache carry no client address, person id or client_id in clear (PII-free)."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RateLimiter:
    """Sliding counts in the cache: this window's and the last's, weighted (module docstring)."""

    def __init__(self, cache: Cache, *, now: Callable[[], float] = time.time) -> None:
        self._cache = cache
        self._now = now

    def _counts(self, key: str, limit: int, window: int, now: float) -> Counts:
        index = int(now // window)
        name = f"rl:{_digest(key)}:{window}:"
        left = math.ceil(((index + 1) * window - now) * 1000)  # ms to this window's end
        return Counts(f"{name}{index}", f"{name}{index - 1}", limit, left, window * 1000)

    def hit(self, key: str, limit: int, window: int, *, wider: Wider | None = None) -> int | None:
        """Count one request for ``key`` (and in ``wider``: ``count``); None if within ``limit`` (the
        sliding count), else the seconds until one more would be (for Retry-After, RFC 9110 §10.2.3)."""
        return self.count(key, limit, window, wider=wider)[0]

    def count(self, key: str, limit: int, window: int, *, wider: Wider | None = None, peeks: Sequence[str] = (),
              now: float | None = None) -> tuple[int | None, list[bytes | None]]:
        """Count one request for ``key``, and read the cache keys ``peeks`` (as are), in one round trip:
        None if within ``limit`` (else the seconds until one more would be), and what ``peeks`` held.
        ``now``: the clock as the caller has read it, so that keys it windows itself fall in this window.
        A refused request is not counted (it writes nothing).

        With ``wider`` (an IPv6 /64's count within its /48's, ``Cache.incr_sliding``), within both
        limits. Once ``wider`` is spent nothing is counted, so a request refused by it creates no key; and
        ``wider`` counts only requests ``key``'s own limit let through."""
        counts, outer, ttl = self._sliding(key, limit, window, wider, now)
        return _judged(self._cache.incr_sliding(counts, ttl, list(peeks), outer), counts, outer)

    async def count_async(self, key: str, limit: int, window: int, *, wider: Wider | None = None,
                          peeks: Sequence[str] = (), now: float | None = None) -> tuple[int | None, list[bytes | None]]:
        """``count`` from the event loop (the middleware's): the loop serves others while Redis answers."""
        counts, outer, ttl = self._sliding(key, limit, window, wider, now)
        return _judged(await self._cache.incr_sliding_async(counts, ttl, list(peeks), outer), counts, outer)

    def _sliding(self, key: str, limit: int, window: int, wider: Wider | None, now: float | None
                 ) -> tuple[Counts, Counts | None, float]:
        now = self._now() if now is None else now
        counts = self._counts(key, limit, window, now)
        outer = None if wider is None else self._counts(wider.key, wider.limit, window, now)
        return counts, outer, counts.left / 1000 + window + 1

    def hit_and_check(self, key: str, limit: int, other: str, other_limit: int, window: int, *,
                      wider: Wider | None = None) -> int | None:
        """hit(key, wider=wider) and exceeded(other) in one round trip to the cache."""
        now = self._now()  # once: ``other`` is read in the window ``key`` is counted in
        seen = self._counts(other, other_limit, window, now)
        return _and_spent(seen, *self.count(key, limit, window, wider=wider, peeks=[seen.key, seen.last], now=now))

    async def hit_and_check_async(self, key: str, limit: int, other: str, other_limit: int, window: int, *,
                                  wider: Wider | None = None) -> int | None:
        """``hit_and_check`` from the event loop."""
        now = self._now()
        seen = self._counts(other, other_limit, window, now)
        return _and_spent(seen, *await self.count_async(key, limit, window, wider=wider, peeks=[seen.key, seen.last],
                                                        now=now))

    def exceeded(self, key: str, limit: int, window: int, *, wider: Wider | None = None) -> int | None:
        """Like hit() without counting: has ``key`` (or ``wider``) already used up its allowance (would
        one more be refused)? One round trip either way."""
        seen = self._seen(key, limit, window, wider)
        return _spent(seen, self._cache.get_many([k for counts in seen for k in (counts.key, counts.last)]))

    async def exceeded_async(self, key: str, limit: int, window: int, *, wider: Wider | None = None) -> int | None:
        """``exceeded`` from the event loop."""
        seen = self._seen(key, limit, window, wider)
        return _spent(seen, await self._cache.get_many_async([k for counts in seen for k in (counts.key, counts.last)]))

    def _seen(self, key: str, limit: int, window: int, wider: Wider | None) -> list[Counts]:
        now = self._now()
        seen = [self._counts(key, limit, window, now)]
        if wider is not None:
            seen.append(self._counts(wider.key, wider.limit, window, now))
        return seen


def _judged(reply: tuple[int, int, int, list[bytes | None]], counts: Counts, outer: Counts | None
            ) -> tuple[int | None, list[bytes | None]]:
    """What ``Cache.incr_sliding`` answered, as ``RateLimiter.count`` returns it."""
    refused, count, last, peeked = reply
    if refused == 0:
        return None, peeked
    if refused == 2:
        log.info("identity.ratelimit.refused.network")
    return _retry_after(_wait(outer if refused == 2 and outer is not None else counts, count, last)), peeked


def _and_spent(seen: Counts, retry: int | None, peeked: list[bytes | None]) -> int | None:
    """``hit_and_check``'s answer: ``seen``'s wait if its allowance (read as ``peeked``) is spent, else ``retry``."""
    count, last = peeked
    spent = _wait(seen, int(count or 0), int(last or 0))
    return _retry_after(spent) if spent is not None else retry


def _spent(seen: list[Counts], held: list[bytes | None]) -> int | None:
    """``exceeded``'s answer from the two values read for each of ``seen``."""
    waits = [_wait(counts, int(held[2 * i] or 0), int(held[2 * i + 1] or 0)) for i, counts in enumerate(seen)]
    spent = [wait for wait in waits if wait is not None]
    return _retry_after(max(spent)) if spent else None


def _wait(counts: Counts, count: int, last: int) -> float | None:
    """None if one more request is within ``counts``' limit, with ``count`` this window's and ``last`` the
    last window's; else the seconds until one would be, counting nothing more."""
    if not counts.full(count, last):
        return None
    window, left, limit = counts.window, counts.left, counts.limit
    if count < limit:  # the last window's part must shrink: last x left' <= (limit - count - 1) x window
        return (left - (limit - count - 1) * window // last) / 1000
    # into the next window, where this one is the last: window + count x left' <= limit x window
    return (left + window - max(0, (limit - 1) * window // max(count, 1))) / 1000


def _retry_after(remaining: float) -> int:
    """Whole seconds, at least one, for Retry-After (RFC 9110 §10.2.3)."""
    return max(1, math.ceil(remaining))


@dataclass(frozen=True)
class GuardCheck:
    """What LoginGuard.check_attempt found: ``retry`` (None: go ahead, else seconds to wait) and, for
    ``succeeded``, the subject's lockout generation and whether nothing (no failure, no lockout
    level) was on record for it (``clean``; False when not read)."""

    retry: int | None
    generation: int = 0
    clean: bool = False


class LoginGuard:
    """Per address attempt limits and per person lockout after repeated failures.

    ``subject`` names the account whose failures are counted, one that exists (``face:<person id>``, the
    face step-up's; never a passkey credential an assertion names before its signature holds: review
    122, finding 2). ``address`` is the client address. Both are hashed before they reach the cache.
    """

    def __init__(self, cache: Cache, *, limits: Limits = Limits(), now: Callable[[], float] = time.time,  # noqa: B008
                 engine: sa.Engine | None = None) -> None:
        self._cache = cache
        self._limits = limits
        self._now = now
        self._engine = engine
        self._rates = RateLimiter(cache, now=now)

    def check(self, subject: str | None, address: str | None) -> int | None:
        """Before an attempt: None to go ahead, else seconds to wait (locked, or too many attempts)."""
        return self.check_attempt(subject, address).retry

    def check_attempt(self, subject: str | None, address: str | None) -> GuardCheck:
        """``check``, also telling ``succeeded`` what it will have to forget: with a subject and an
        address, read in the same round trip (the lockout generation, whether failures or a lockout
        level are on record), so that a success with nothing on record costs no round trip at all."""
        network: str | None = None
        if address is not None:
            address, network = address_keys(address)
        if subject is not None and address is not None:  # all in one round trip
            h = _digest(subject)
            retry, (lock, generation, failures, level) = self._attempt(
                address, network, [f"lock:{h}", f"lockgen:{h}", f"lf:{h}:any", f"lockn:{h}"])
            seen = GuardCheck(None, int(generation or 0), failures is None and level is None)
            locked = self._remaining(lock)
            if locked is not None:
                log.info("identity.login.refused.locked")
                return replace(seen, retry=locked)
            if retry is not None:
                log.info("identity.login.refused.rate_limited")
                return replace(seen, retry=retry)
            return seen
        return GuardCheck(self._check_apart(subject, address, network))

    def _attempt(self, address: str, network: str | None,
                 peeks: Sequence[str] = ()) -> tuple[int | None, list[bytes | None]]:
        """Count a login attempt from ``address`` (and its ``network``, if any): ``RateLimiter.count``."""
        limits = self._limits
        wider = None if network is None else Wider(f"login:net:{network}", limits.login_network_limit)
        return self._rates.count(f"login:addr:{address}", limits.login_attempts_per_address, limits.window,
                                 wider=wider, peeks=peeks)

    def _check_apart(self, subject: str | None, address: str | None, network: str | None) -> int | None:
        if subject is not None:
            locked = self.locked_for(subject)
            if locked is not None:
                log.info("identity.login.refused.locked")
                return locked
        if address is not None:
            retry, _ = self._attempt(address, network)
            if retry is not None:
                log.info("identity.login.refused.rate_limited")
                return retry
        return None

    def check_registration(self, person_id: str, address: str | None) -> int | None:
        """Before a login session's passkey registration options, which store a flow each (module docstring;
        review 146, finding 2): a login attempt of ``address`` (``check``), then one of the person's own
        small allowance (``registration_options_per_person``). None to go ahead, else seconds to wait. The
        address is counted first: a call it refuses spends nothing of the person's."""
        retry = self.check(None, address)
        if retry is not None:
            return retry
        retry = self._rates.hit(f"ep:regopts:person:{person_id}", self._limits.registration_options_per_person,
                                self._limits.window)
        if retry is not None:
            log.info("identity.passkey.registration.refused.person_limit")
        return retry

    def locked_for(self, subject: str) -> int | None:
        return self._remaining(self._cache.get(f"lock:{_digest(subject)}"))

    def _remaining(self, lock: bytes | None) -> int | None:
        if lock is None:
            return None
        remaining = float(lock) - self._now()
        return _retry_after(remaining) if remaining > 0 else None

    def failed(self, subject: str | None, address: str | None = None) -> int | None:
        """After a failed attempt: count it; return the lockout's length if this failure started one.

        Tell it only of a subject that exists (a registered credential, a person): the keys it writes
        are the subject's, and a made-up one, a new one each attempt, would let an anonymous caller
        store as much as it likes (review 67, finding 4); there is no account behind it to protect.

        Failures are counted per lockout generation (``lockgen``), in this failure window and the last
        (module docstring): the first failure of a generation that finds N or more claims its lockout
        (an INCR that returns 1), so concurrent failures start one lockout, never two. The lock
        is written before the generation moves on, so a failure that sees the new generation also
        sees the lock and is not counted (an attempt in flight when the lock started)."""
        if subject is None:
            return None
        h = _digest(subject)
        generation = int(self._cache.get(f"lockgen:{h}") or 0)
        if self.locked_for(subject) is not None:
            return None
        window = self._limits.failure_window
        now = self._now()
        index = int(now // window)
        # First the mark that failures are on record (check_attempt reads it; it outlives every
        # counter it stands for), then the count: a success between the two still forgets this one.
        # A window's counter is read through the next window too (the count is this window's and the last's).
        self._cache.set(f"lf:{h}:any", b"1", 2 * window + 1)
        count, (last,) = self._cache.incr_peek_many(f"lf:{h}:{generation}:{index}", (index + 2) * window - now + 1,
                                                    [f"lf:{h}:{generation}:{index - 1}"])
        count += int(last or 0)
        # At N or beyond (the last window's count may grow behind an attempt whose clock read it as this
        # one), and once per generation: the first to claim it starts the lockout, never two.
        if (count < self._limits.failures_before_lockout
                or self._cache.incr(f"lf:{h}:{generation}:start", 2 * window + 1) != 1):
            return None
        level = int(self._cache.get(f"lockn:{h}") or 0)
        seconds = min(self._limits.lockout_seconds * 2**level, self._limits.lockout_max_seconds)
        self._cache.set(f"lock:{h}", repr(now + seconds).encode(), seconds + 1)
        self._cache.incr(f"lockn:{h}", LOCKOUT_LEVEL_MEMORY)
        self._cache.incr(f"lockgen:{h}", LOCKOUT_LEVEL_MEMORY)
        log.info("identity.lockout.started")
        if self._engine is not None:
            audit.record("identity.lockout.started", at=datetime.fromtimestamp(now, UTC),
                         actor={"system": "login_guard"}, subject=_subject(subject),
                         data={"failures": count, "seconds": seconds, "level": level + 1}, engine=self._engine)
        return seconds

    def succeeded(self, subject: str, address: str | None = None, seen: GuardCheck | None = None) -> None:
        """After a successful login: forget the failures and the lockout doubling. ``seen``: what
        check_attempt read before this attempt; nothing on record then, nothing to forget now (a
        failure of someone else in between stays counted: the safe side)."""
        h = _digest(subject)
        if seen is not None and seen.clean:
            return
        generation = seen.generation if seen is not None else int(self._cache.get(f"lockgen:{h}") or 0)
        index = int(self._now() // self._limits.failure_window)
        self._cache.delete(f"lf:{h}:{generation}:{index}", f"lf:{h}:{generation}:{index - 1}",
                           f"lockn:{h}", f"lf:{h}:any")


def _subject(subject: str) -> str:
    # The audit names a person by id (not PII); a credential id is hashed like elsewhere in the trail.
    if subject.startswith("person:"):
        return subject
    return f"key:{_digest(subject)}"


# -- per-app instances ------------------------------------------------------------------------------------

def _clock(container: Any) -> Callable[[], float]:
    clock = container.clock
    return lambda: clock.now().timestamp()


def login_guard_for(app: Any) -> LoginGuard:
    """The app's LoginGuard on ``app.state.login_guard``, built from ``app.state.container``."""
    def build() -> LoginGuard:
        c = app.state.container
        return LoginGuard(c.cache, limits=limits_from_settings(c.settings), now=_clock(c), engine=c.engine)

    return built_once(app, "login_guard", build)


def rate_limiter_for(app: Any) -> RateLimiter:
    def build() -> RateLimiter:
        c = app.state.container
        return RateLimiter(c.cache, now=_clock(c))

    return built_once(app, "rate_limiter", build)


# -- the middleware ---------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _family(path: str, method: str | None) -> str | None:
    if path == REGISTRATION_PREFIX or path.startswith(REGISTRATION_PREFIX + "/"):
        return "oauth"
    if method != "POST":
        return None
    if path in OAUTH_PATHS:
        return "oauth"
    if path in WEBAUTHN_LOGIN_PATHS:
        return "webauthn"
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def client_id_from_basic(authorization: str | None) -> str | None:
    """RFC 6749 §2.3.1: client_secret_basic, with the client_id form-urlencoded inside Basic."""
    if not authorization or not authorization[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    client_id = unquote_plus(decoded.partition(":")[0])
    return client_id if 0 < len(client_id) <= MAX_CLIENT_ID_LENGTH else None


def client_id_from_form(body: bytes) -> str | None:
    """client_id from a form body that also carries a client credential (RFC 6749 §2.3.1
    client_secret, RFC 7523 §3 client_assertion; with private_key_jwt the form has client_id or the
    assertion's sub names it; only the form parameter is taken, unverified).

    A form with a client_id and no credential is a public client's (the driver app's, RFC 6749
    §2.1): anyone may name that client, so no allowance is kept for it, and such requests count
    against their address only. Were they counted per client, a stranger could spend the driver
    app's allowance and stop every driver's refresh."""
    if b"client_id=" not in body or (b"client_secret=" not in body and b"client_assertion=" not in body):
        return None  # no such parameter can be in the form: not worth parsing (a parameter is name=)
    try:
        form = parse_qs(body.decode("ascii"), max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        return None
    if "client_secret" not in form and "client_assertion" not in form:
        return None
    values = form.get("client_id") or []
    return values[0] if len(values) == 1 and 0 < len(values[0]) <= MAX_CLIENT_ID_LENGTH else None


def _nothing_spent() -> int | None:
    return None


def _count_nothing() -> None:
    return None


@dataclass
class _Authentication:
    """The middleware's cell for one OAuth request: the client whose allowance it checked before the
    route (``guessed``, or None), how to count a client it did not check (``hit``: None, or the seconds
    to wait), and whether the guessed client authenticated (then counted after the route). And the
    request's address's budget of client-secret failures: ``secrets_spent`` (None, or the seconds to
    wait) and ``secret_failed`` (count one)."""

    guessed: str | None
    hit: Callable[[str], int | None]
    guessed_authenticated: bool = False
    secrets_spent: Callable[[], int | None] = _nothing_spent
    secret_failed: Callable[[], None] = _count_nothing


# Set by the middleware for every request to the OAuth endpoints; None elsewhere (nothing to tell).
_authenticated: ContextVar[_Authentication | None] = ContextVar("quaygate_authenticated_clients", default=None)


def client_authenticated(client_id: str) -> int | None:
    """Client authentication's word that ``client_id`` proved itself in this request (its secret or
    its signed assertion; never the ``none`` method, which anyone can use): the request counts against
    that client's allowance. None to go on, else the seconds to wait: the client's allowance was spent,
    answer 429 ``slow_down`` (only for a client the middleware did not read from the request; the one it
    read was checked before the route: module docstring)."""
    cell = _authenticated.get()
    if cell is None:
        return None  # not behind the middleware, or limits off
    if client_id == cell.guessed:
        cell.guessed_authenticated = True  # checked before the route, counted after it
        return None
    retry = cell.hit(client_id)
    if retry is not None:
        log.info("identity.ratelimit.refused.client")
    return retry


def secret_failures_spent() -> int | None:
    """Before a client secret is hashed: None to go on, else the seconds to wait, for this request's
    address (or its /48) has had its allowance of client-secret failures in this window (module
    docstring, "Client secrets"): answer 429 ``slow_down`` and hash nothing."""
    cell = _authenticated.get()
    retry = None if cell is None else cell.secrets_spent()
    if retry is not None:
        log.info("identity.ratelimit.refused.secret_failures")
    return retry


def client_secret_failed() -> None:
    """A client secret was refused, or named an unknown client: count it against this request's
    address (and its /48). Nothing when the limits are off."""
    cell = _authenticated.get()
    if cell is not None:
        cell.secret_failed()


class RateLimitMiddleware:
    """Pure ASGI: limits POSTs to the login and token endpoints, and every request to the registration
    endpoints, before the route runs."""

    def __init__(self, app: ASGIApp, *, limits: Limits | None = None) -> None:
        self.app = app
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "")
        path = scope["path"][len(root):] if root and scope["path"].startswith(root) else scope["path"]
        family = _family(path, scope.get("method"))
        owner = scope.get("app")
        if family is None or owner is None or getattr(owner.state, "container", None) is None:
            await self.app(scope, receive, send)
            return
        if self._limits is None:
            self._limits = limits_from_settings(owner.state.container.settings)
        limits = self._limits
        if not limits.enabled:
            await self.app(scope, receive, send)
            return
        limiter = rate_limiter_for(owner)
        client = scope.get("client")
        address, network = address_keys(client[0]) if client else ("unknown", None)
        wider = None if network is None else Wider(f"ep:{family}:net:{network}", limits.network_limit)
        key = f"ep:{family}:addr:{address}"
        client_id = client_id_from_basic(_header(scope, b"authorization")) if family == "oauth" else None
        # From the loop, pipelined on its own connection (``Cache.incr_sliding_async``): cheaper than a thread
        # hop, and a Redis that hangs holds this request until the cache's timeout, never the loop and every
        # other request of the worker with it (review 168, finding 2: a health check waited 1.7 s behind one
        # token request's count). The address is
        # counted before any of the body is read (review 168, finding 1): a body that never comes has
        # been counted. A client named in the Basic header has its allowance read in the same trip.
        if client_id is None:
            retry = (await limiter.count_async(key, limits.per_address, limits.window, wider=wider))[0]
        else:
            retry = await limiter.hit_and_check_async(key, limits.per_address, f"ep:client:{client_id}",
                                                      limits.per_client, limits.window, wider=wider)
        if retry is None and family == "oauth" and client_id is None:
            try:
                receive, body = await _buffer_form(scope, receive)
            except BodyTimeout as exc:  # the form did not come in time: 408, nothing done
                await body_timeout(path, exc.seconds)(scope, receive, send)
                return
            client_id = client_id_from_form(body) if body else None
            if client_id is not None:  # a client named in the form: its allowance, a second round trip
                retry = await limiter.exceeded_async(f"ep:client:{client_id}", limits.per_client, limits.window)
        if retry is not None:
            log.info("identity.ratelimit.refused.%s", family)
            await _too_many(send, family, retry)
            return
        if family != "oauth":
            await self.app(scope, receive, send)
            return

        def hit(authenticated: str) -> int | None:  # in the route's thread, once its client authenticated
            return limiter.hit(f"ep:client:{authenticated}", limits.per_client, limits.window)

        failures = f"secret:addr:{address}"
        failures_wider = (None if network is None
                          else Wider(f"secret:net:{network}", limits.secret_failure_network_limit))

        def secrets_spent() -> int | None:  # in the route's thread, before a secret is hashed
            return limiter.exceeded(failures, limits.secret_failures_per_address, limits.window, wider=failures_wider)

        def secret_failed() -> None:
            limiter.hit(failures, limits.secret_failures_per_address, limits.window, wider=failures_wider)

        cell = _Authentication(client_id, hit, secrets_spent=secrets_spent, secret_failed=secret_failed)
        token = _authenticated.set(cell)
        try:
            await self.app(scope, receive, send)
        finally:
            _authenticated.reset(token)
        if cell.guessed_authenticated:
            await limiter.count_async(f"ep:client:{client_id}", limits.per_client, limits.window)


async def _buffer_form(scope: Scope, receive: Receive) -> tuple[Receive, bytes]:
    """Read a small form body for its client_id, and give the route a receive that replays it. Read
    within the app's deadline for a body (quaygate.routing ``read_form``): BodyTimeout past it."""
    content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return receive, b""
    messages, body = await read_form(receive, app_body_seconds(scope["app"]), MAX_SNIFFED_BODY)

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay, body or b""


async def _too_many(send: Send, family: str, retry_after: int) -> None:
    if family == "oauth":
        # RFC 6749 §5.2's error shape; no-store like every token endpoint answer (RFC 6749 §5.1).
        body = {"error": "slow_down", "error_description": f"Too many requests; retry after {retry_after} seconds."}
        media = b"application/json"
    else:
        body = {"type": "https://quaygate.eu/problems/rate_limited", "title": "Too many requests", "status": 429,
                "detail": f"Too many requests; retry after {retry_after} seconds.", "code": "rate_limited"}
        media = b"application/problem+json"
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", media), (b"content-length", str(len(raw)).encode()),
        (b"retry-after", str(retry_after).encode()), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": raw})


def install(app: Any, *, limits: Limits | None = None) -> None:
    """Mount the middleware (call in create_app, after the app is built). ``limits`` overrides the
    settings, for tests."""
    app.add_middleware(RateLimitMiddleware, limits=limits)

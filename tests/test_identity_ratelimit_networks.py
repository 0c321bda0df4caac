"""An IPv6 /48 counted as a whole (identity.ratelimit, "Networks"): a customer handed a /48 has 65 536
/64s, each with a per-address allowance of its own; the /48's count bounds what they get together, and
what they make Redis hold. Real caches (memory and Redis), an injected clock, the real app."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from identity.ratelimit import Limits, LoginGuard, RateLimiter, Wider, address_keys, limits_from_settings
from quaygate.cache import Cache, Counts, MemoryCache, RedisCache
from quaygate.settings import Settings
from tests.test_identity_ratelimit import Served, _clear_of_a_window_edge, _Counting, serve
from tests.test_redis_memory import PrivateRedis

T0 = 1_800_000_040.0  # 40 s into a 60 s window
PER_64, PER_48 = 2, 5


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    c: Cache = RedisCache(request.getfixturevalue("redis_url")) if request.param == "redis" else MemoryCache()
    yield c
    c.close()


@pytest.fixture
def clock() -> list[float]:
    return [T0]


def in_48(n: int, host: int = 1, site: str = "2001:db8:1") -> str:
    """An address in the n-th /64 of the /48 ``site``."""
    return f"{site}:{n:x}::{host:x}"


def test_an_ipv6_address_is_counted_in_its_48_too() -> None:
    assert address_keys("2001:db8:1:ffff:1:2:3:4") == ("2001:db8:1:ffff::/64", "2001:db8:1::/48")
    assert address_keys(in_48(0))[1] == address_keys(in_48(0xFFFF, 9))[1]  # the /48's first and last /64
    assert address_keys("2001:db8:2::1")[1] != address_keys(in_48(0))[1]
    # no wider count for IPv4 (a /24 would put a carrier's NAT pool under one allowance), nor for what is
    # no address
    assert address_keys("192.0.2.7") == ("192.0.2.7", None)
    assert address_keys("::ffff:192.0.2.7") == ("192.0.2.7", None)
    assert address_keys("testclient") == ("testclient", None)


# -- the login guard ------------------------------------------------------------------------------------

LIMITS = Limits(login_attempts_per_address=PER_64, login_attempts_per_network=PER_48)


@pytest.mark.parametrize("subject", [None, "cred:net"], ids=["address-only", "with-subject"])
def test_many_64s_of_one_48_are_refused_once_the_48s_count_is_spent(cache: Cache, clock: list[float],
                                                                     subject: str | None) -> None:
    """Both ways of counting an attempt (apart, and in one round trip with the subject's reads)."""
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
    assert [guard.check(subject, in_48(n)) for n in range(PER_48)] == [None] * PER_48
    assert [guard.check(subject, in_48(n)) for n in range(PER_48, PER_48 + 20)] == [32] * 20
    assert guard.check(subject, in_48(0x1234, 7)) == 32  # however far apart in the /48
    assert guard.check(subject, in_48(0, site="2001:db8:2")) is None  # another /48 is someone else
    assert guard.check(subject, "192.0.2.1") is None
    clock[0] += 32
    assert guard.check(subject, in_48(PER_48 + 1)) is None  # 12 s into the next window: 5 x 48/60 = 4 count


def test_a_single_64_is_refused_at_its_own_limit_and_spends_none_of_its_neighbours(
        cache: Cache, clock: list[float]) -> None:
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
    seen = [guard.check_attempt("cred:one", in_48(0, host)).retry for host in range(1, 11)]
    assert seen == [None] * PER_64 + [50] * (10 - PER_64)
    # its refused attempts were not counted in the /48: what is left of it is the others'
    left = PER_48 - PER_64
    assert [guard.check(None, in_48(n)) for n in range(1, left + 2)] == [None] * left + [32]


def test_a_48_spent_just_before_a_window_edge_is_still_refused_just_after(cache: Cache, clock: list[float]) -> None:
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
    clock[0] = T0 + 19
    assert [guard.check(None, in_48(n)) for n in range(PER_48)] == [None] * PER_48
    clock[0] = T0 + 21
    assert [guard.check(None, in_48(n)) for n in range(PER_48, PER_48 + 5)] == [11] * 5  # 5 x 48/60 = 4 left
    clock[0] = T0 + 32
    assert guard.check(None, in_48(PER_48)) is None


def test_ipv4_addresses_have_no_wider_count(cache: Cache, clock: list[float]) -> None:
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
    for n in range(1, 4 * PER_48):  # more addresses of one /24 than the /48 limit lets /64s through
        assert [guard.check(None, f"192.0.2.{n}") for _ in range(PER_64)] == [None] * PER_64
        assert guard.check(None, f"::ffff:192.0.2.{n}") == 50  # the same address, mapped: its own limit


def test_a_network_limit_below_the_address_limit_counts_as_the_address_limit(cache: Cache,
                                                                             clock: list[float]) -> None:
    guard = LoginGuard(cache, limits=Limits(login_attempts_per_address=3, login_attempts_per_network=1),
                       now=lambda: clock[0])
    assert [guard.check(None, in_48(0)) for _ in range(4)] == [None, None, None, 40]
    assert guard.check(None, in_48(1)) == 40


def test_an_ipv6_attempt_is_one_round_trip(cache: Cache, clock: list[float]) -> None:
    counting = _Counting(cache)
    guard = LoginGuard(counting, limits=LIMITS, now=lambda: clock[0])  # type: ignore[arg-type]
    seen = guard.check_attempt("cred:rt", in_48(0))
    assert seen.retry is None and seen.clean and counting.calls == 1
    assert guard.check(None, in_48(1)) is None and counting.calls == 2
    limiter = RateLimiter(counting, now=lambda: clock[0])  # type: ignore[arg-type]
    assert limiter.hit_and_check("a", 1, "c", 1, 60, wider=Wider("n", 2)) is None and counting.calls == 3


# -- what Redis holds -------------------------------------------------------------------------------------


def test_a_spent_48_makes_redis_hold_no_more_counters(redis_url: str, clock: list[float]) -> None:
    """However many /64s it sends from, a /48 makes us hold one counter per /64 its count let through,
    and its own: refused requests from new /64s write nothing (Redis runs under noeviction)."""
    cache = RedisCache(redis_url)
    raw = redis.Redis.from_url(redis_url)
    try:
        guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
        assert [guard.check(None, in_48(n)) for n in range(200)] == [None] * PER_48 + [32] * (200 - PER_48)
        assert len(list(raw.scan_iter("qg:rl:*", count=1000))) == PER_48 + 1
        # this window, and the next, which reads it as the last window's count
        assert all(80_000 < raw.pttl(k) <= 81_000 for k in raw.scan_iter("qg:rl:*", count=1000))
    finally:
        raw.close()
        cache.close()


def test_incr_sliding_counts_in_the_wider_only_what_passed(cache: Cache) -> None:
    def counts(name: str, limit: int) -> Counts:
        return Counts(f"t:w:{name}", f"t:w:{name}:last", limit, left=30_000, window=60_000)

    net = counts("net", 3)
    cache.set("t:w:seen", b"x")
    assert cache.incr_sliding(counts("a", 1), 60, ["t:w:seen", "t:w:none"], net) == (0, 0, 0, [b"x", None])
    assert cache.incr_sliding(counts("a", 1), 60, [], net) == (1, 1, 0, [])  # over its own limit
    assert cache.get("t:w:a") == b"1" and cache.get("t:w:net") == b"1"  # the refusal counted nothing
    assert cache.incr_sliding(counts("b", 1), 60, [], net)[0] == 0
    assert cache.incr_sliding(counts("c", 1), 60, [], net)[0] == 0
    assert cache.incr_sliding(counts("d", 1), 60, ["t:w:seen"], net) == (2, 3, 0, [b"x"])  # the wider spent
    assert cache.get("t:w:d") is None and cache.get("t:w:net") == b"3"
    cache.set("t:w:e:last", b"2")  # the last window's, half of which counts: 30 of its 60 s are left
    assert cache.incr_sliding(counts("e", 2), 60, []) == (0, 0, 2, [])  # 1 + 2 x 30/60 = 2
    assert cache.incr_sliding(counts("e", 2), 60, []) == (1, 1, 2, [])
    cache.delete("t:w:seen", "t:w:a", "t:w:b", "t:w:c", "t:w:net", "t:w:e", "t:w:e:last")


# -- settings ---------------------------------------------------------------------------------------------


def test_network_limits_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = limits_from_settings(Settings())
    assert (defaults.per_network, defaults.login_attempts_per_network) == (6000, 600) == \
        (Limits().per_network, Limits().login_attempts_per_network)
    monkeypatch.setenv("QUAYGATE_RATE_LIMIT_PER_NETWORK", "7")
    monkeypatch.setenv("QUAYGATE_LOGIN_ATTEMPTS_PER_NETWORK", "8")
    limits = limits_from_settings(Settings())
    assert (limits.per_network, limits.login_attempts_per_network) == (7, 8)


# -- the middleware on the real app ---------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def networked(request: pytest.FixtureRequest, engine: sa.Engine, tmp_path: Path) -> Iterator[Served]:
    cache: Cache = RedisCache(request.getfixturevalue("redis_url")) if request.param == "redis" else MemoryCache()
    for served in serve(engine, tmp_path, cache, rate_limit_per_address=PER_64, rate_limit_per_network=PER_48,
                        rate_limit_per_client=100):
        _clear_of_a_window_edge()
        yield served


def post(served: Served, path: str, address: str) -> tuple[int, dict[str, str], bytes]:
    """A POST from ``address``, straight to the app (the test client's address cannot be chosen)."""
    app = served.http.app
    form = path.startswith("/oauth2/")
    body = b"grant_type=client_credentials" if form else b"{}"
    kind = b"application/x-www-form-urlencoded" if form else b"application/json"
    # a client that does not exist: 401 invalid_client from the route, once the limits let it through
    auth = [(b"authorization", b"Basic " + base64.b64encode(b"nobody:x"))] if form else []

    async def run() -> tuple[int, dict[str, str], bytes]:
        started: list[Any] = []
        chunks: list[bytes] = []
        scope = {"type": "http", "method": "POST", "path": path, "root_path": "",
                 "headers": [(b"content-type", kind), *auth],
                 "client": (address, 1234), "query_string": b"", "app": app, "http_version": "1.1",
                 "scheme": "http", "server": ("testserver", 80)}
        sent = [False]

        async def receive() -> dict[str, Any]:
            if sent[0]:
                return {"type": "http.disconnect"}
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.append(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await app(scope, receive, send)
        except redis.RedisError:  # answered (a 503), then raised on for the server to log
            assert started
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in started[0]["headers"]}
        return started[0]["status"], headers, b"".join(chunks)

    return served.http.portal.call(run)  # type: ignore[union-attr]


def test_the_token_endpoint_refuses_a_48_once_its_count_is_spent(networked: Served) -> None:
    assert [post(networked, "/oauth2/token", in_48(n))[0] for n in range(PER_48)] == [401] * PER_48
    status, headers, body = post(networked, "/oauth2/token", in_48(0xBEEF, 3))
    assert status == 429 and json.loads(body)["error"] == "slow_down"  # the same refusal as ever
    assert 1 <= int(headers["retry-after"]) <= 120 and headers["cache-control"] == "no-store"
    assert post(networked, "/oauth2/token", in_48(0, site="2001:db8:2"))[0] == 401  # another /48
    assert post(networked, "/oauth2/token", "192.0.2.1")[0] == 401


def test_the_webauthn_verify_refuses_a_48_once_its_count_is_spent(networked: Served) -> None:
    assert all(post(networked, "/webauthn/authentication/verify", in_48(n))[0] != 429 for n in range(PER_48))
    status, headers, body = post(networked, "/webauthn/authentication/verify", in_48(PER_48))
    assert status == 429 and headers["content-type"] == "application/problem+json"
    assert json.loads(body)["code"] == "rate_limited" and "retry-after" in headers
    # the families are counted apart, as per address
    assert post(networked, "/oauth2/token", in_48(PER_48))[0] == 401


def test_one_64_is_still_refused_at_its_own_limit(networked: Served) -> None:
    statuses = [post(networked, "/oauth2/token", in_48(7, host))[0] for host in range(1, 6)]
    assert statuses == [401] * PER_64 + [429] * (5 - PER_64)
    assert post(networked, "/oauth2/token", in_48(8))[0] == 401  # its refusals spent none of the /48


def test_on_a_full_redis_a_new_64_is_a_503_and_a_spent_48_still_a_429(engine: sa.Engine, tmp_path: Path) -> None:
    """Counting needs a write: refused by a full Redis (noeviction), a clear 503, never a 500. A spent
    /48's refusal writes nothing, and is answered as ever."""
    server = PrivateRedis(tmp_path, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    try:
        server.held_long_ago()
        for served in serve(engine, tmp_path, RedisCache(server.url), rate_limit_per_address=PER_64,
                            rate_limit_per_network=PER_48):
            _clear_of_a_window_edge()
            assert [post(served, "/oauth2/token", in_48(n))[0] for n in range(PER_48)] == [401] * PER_48
            server.fill()
            status, _, body = post(served, "/oauth2/token", in_48(0, site="2001:db8:2"))
            assert status == 503 and json.loads(body)["code"] == "service_unavailable", body
            status, _, body = post(served, "/oauth2/token", in_48(PER_48))
            assert status == 429 and json.loads(body)["error"] == "slow_down", body
    finally:
        server.stop()

"""Rate limits and lockout: counters in the real caches (memory and Redis), an injected clock, the real app."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from identity.bootstrap import create_client
from identity.ratelimit import (
    Limits,
    LoginGuard,
    RateLimiter,
    client_id_from_basic,
    client_id_from_form,
    limits_from_settings,
)
from quaygate.app import create_app
from quaygate.cache import Cache, MemoryCache, RedisCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import audit_log
from quaygate.settings import Settings
from release_service.domain.parties import OrgKind

from .factories import add_org
from .test_identity_support import ISSUER, assertion, assertion_form, public_jwks, rsa_key

T0 = 1_800_000_040.0  # 40 s into a 60 s window


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    c: Cache = RedisCache(request.getfixturevalue("redis_url")) if request.param == "redis" else MemoryCache()
    yield c
    c.close()


@pytest.fixture
def clock() -> list[float]:
    return [T0]


# -- RateLimiter ----------------------------------------------------------------------------------------


def test_a_count_refuses_after_the_limit_until_one_more_is_within(cache: Cache, clock: list[float]) -> None:
    limiter = RateLimiter(cache, now=lambda: clock[0])
    assert [limiter.hit("k", 3, 60) for _ in range(3)] == [None, None, None]
    # Retry-After: the 20 s left of this window, then 20 s of the next, where 3 x 40/60 = 2 of it count
    assert limiter.hit("k", 3, 60) == 40
    assert limiter.hit("other", 3, 60) is None  # keys are separate
    clock[0] = T0 + 20
    assert limiter.hit("k", 3, 60) == 20  # the refusals were not counted
    clock[0] = T0 + 40
    assert limiter.hit("k", 3, 60) is None


def test_a_burst_either_side_of_a_window_edge_passes_one_limit(cache: Cache, clock: list[float]) -> None:
    # A window's count alone let a limit through just before an edge and another just after (twice the
    # limit in two seconds). The last window's count, weighted by its part still within a window's length
    # of now, counts too.
    limiter = RateLimiter(cache, now=lambda: clock[0])
    edge = T0 + 20
    clock[0] = edge - 1
    assert [limiter.hit("k", 3, 60) for _ in range(3)] == [None] * 3
    clock[0] = edge + 1
    assert [limiter.hit("k", 3, 60) for _ in range(3)] == [19] * 3  # when 3 x 40/60 = 2 of the last are left
    assert limiter.exceeded("k", 3, 60) == 19
    clock[0] = edge + 20
    assert limiter.exceeded("k", 3, 60) is None
    assert limiter.hit("k", 3, 60) is None
    assert limiter.hit("k", 3, 60) == 20  # 1 + 1 + 3 x 40/60 > 3; at 20/60 of the last, 1 + 1 + 1
    clock[0] = edge + 40
    assert limiter.hit("k", 3, 60) is None
    clock[0] = edge + 120  # two windows on: nothing of it is left
    assert [limiter.hit("k", 3, 60) for _ in range(3)] == [None] * 3


def test_login_attempts_either_side_of_a_window_edge_pass_one_limit(cache: Cache, clock: list[float]) -> None:
    guard = LoginGuard(cache, limits=Limits(login_attempts_per_address=3), now=lambda: clock[0])
    clock[0] = T0 + 19
    assert [guard.check(None, "10.0.0.9") for _ in range(3)] == [None] * 3
    clock[0] = T0 + 21
    assert guard.check(None, "10.0.0.9") == 19
    assert guard.check_attempt("cred:edge", "10.0.0.9").retry == 19  # the way with the subject's reads too


def test_replicas_sharing_redis_share_the_count(redis_url: str, clock: list[float]) -> None:
    a, b = RedisCache(redis_url), RedisCache(redis_url)
    one, two = RateLimiter(a, now=lambda: clock[0]), RateLimiter(b, now=lambda: clock[0])
    assert one.hit("k", 2, 60) is None and two.hit("k", 2, 60) is None
    assert one.hit("k", 2, 60) is not None and two.hit("k", 2, 60) is not None
    a.close()
    b.close()


def test_hit_and_check_counts_one_key_and_reads_the_other(cache: Cache, clock: list[float]) -> None:
    limiter = RateLimiter(cache, now=lambda: clock[0])
    for _ in range(3):
        assert limiter.hit("client", 3, 60) is None
    assert limiter.hit_and_check("addr", 2, "client", 5, 60) is None  # client at 3 of 5
    assert limiter.hit_and_check("addr", 2, "client", 3, 60) is not None  # client used up
    assert limiter.hit_and_check("addr", 2, "other", 3, 60) is not None  # addr now at 3 of 2
    assert limiter.exceeded("client", 4, 60) is None  # the check never counted the client
    clock[0] += 60
    assert limiter.hit_and_check("addr", 2, "client", 3, 60) is None  # next window


def test_a_redis_counter_always_carries_its_expiry(redis_url: str) -> None:
    import redis

    cache = RedisCache(redis_url)
    try:
        assert cache.incr("c", 30) == 1 and cache.incr_peek("c", 30, "nothing") == (2, None)
        cache.set("seen", b"7")
        assert cache.incr_peek("d", 30, "seen") == (1, b"7")
        raw = redis.Redis.from_url(redis_url)
        assert 0 < raw.pttl("qg:c") <= 30_000 and 0 < raw.pttl("qg:d") <= 30_000
        raw.persist("qg:c")  # a counter that lost its expiry gets one back on the next count
        cache.incr("c", 30)
        assert 0 < raw.pttl("qg:c") <= 30_000
        raw.close()
    finally:
        cache.close()


def test_exceeded_does_not_count(cache: Cache, clock: list[float]) -> None:
    limiter = RateLimiter(cache, now=lambda: clock[0])
    assert limiter.exceeded("k", 1, 60) is None
    assert limiter.exceeded("k", 1, 60) is None
    limiter.hit("k", 1, 60)
    assert limiter.exceeded("k", 1, 60) == 80  # once none of this window counts: the next one's end


# -- LoginGuard -----------------------------------------------------------------------------------------

LIMITS = Limits(login_attempts_per_address=100, failures_before_lockout=5, failure_window=900,
                lockout_seconds=300, lockout_max_seconds=1200)


def lockouts(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log).where(audit_log.c.kind == "identity.lockout.started")))


def test_lockout_after_n_failures_and_release_after_the_lockout(cache: Cache, clock: list[float],
                                                                 engine: sa.Engine) -> None:
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0], engine=engine)
    who = "person:6f1c2b9e-0000-4000-8000-000000000001"
    for _ in range(4):
        assert guard.check(who, "10.0.0.1") is None
        assert guard.failed(who, "10.0.0.1") is None
    assert guard.failed(who, "10.0.0.1") == 300  # the 5th failure starts the lockout
    assert guard.check(who, "10.0.0.2") == 300  # from any address
    assert guard.check("person:someone-else", "10.0.0.1") is None
    clock[0] = T0 + 299
    assert guard.check(who, None) == 1
    clock[0] = T0 + 300
    assert guard.check(who, None) is None
    rows = lockouts(engine)
    assert len(rows) == 1
    assert rows[0].subject == who and rows[0].data == {"failures": 5, "seconds": 300, "level": 1}


def test_lockouts_double_until_a_success(cache: Cache, clock: list[float], engine: sa.Engine) -> None:
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0], engine=engine)
    seen = []
    for _ in range(4):
        started = [guard.failed("cred:abc") for _ in range(5)][-1]
        seen.append(started)
        clock[0] += started or 0
    assert seen == [300, 600, 1200, 1200]  # capped at lockout_max_seconds
    guard.succeeded("cred:abc")
    assert [guard.failed("cred:abc") for _ in range(5)][-1] == 300
    assert lockouts(engine)[0].subject.startswith("key:")  # a credential id is not written in clear


def test_failures_while_locked_are_not_counted(cache: Cache, clock: list[float]) -> None:
    # Attempts in flight when the lock started must not chain a second, longer lockout.
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
    assert [guard.failed("person:p") for _ in range(5)][-1] == 300
    assert [guard.failed("person:p") for _ in range(5)] == [None] * 5
    clock[0] += 300
    assert guard.check("person:p", None) is None


def test_failures_outside_the_window_do_not_add_up(cache: Cache, clock: list[float]) -> None:
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
    for _ in range(4):
        guard.failed("person:p")
    clock[0] += 2 * 900  # two windows on: the count is this window's and the last's
    assert [guard.failed("person:p") for _ in range(4)] == [None] * 4
    assert guard.check("person:p", None) is None


def test_success_clears_the_failures(cache: Cache, clock: list[float]) -> None:
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
    for _ in range(4):
        guard.failed("person:p")
    guard.succeeded("person:p")
    assert guard.failed("person:p") is None


EDGE = T0 - 40 + 900  # the edge of LIMITS' failure windows (900 s) after T0


@pytest.mark.parametrize("before", [1, 2, 3, 4])
def test_failures_either_side_of_a_window_edge_lock_at_the_nth(cache: Cache, clock: list[float],
                                                               before: int) -> None:
    # Windows aligned to the clock: N-1 failures just before an edge and N-1 just after were 2N-2 in
    # two seconds without a lockout (a burst of 8, then 4 per window). N within one window's length lock.
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
    clock[0] = EDGE - 1
    assert [guard.failed("person:edge") for _ in range(before)] == [None] * before
    clock[0] = EDGE + 1
    assert [guard.failed("person:edge") for _ in range(4 - before)] == [None] * (4 - before)
    assert guard.failed("person:edge") == 300
    assert guard.check("person:edge", None) == 300


def test_failures_a_window_apart_within_two_windows_still_add_up(cache: Cache, clock: list[float]) -> None:
    # The count is this window's and the last's: a failure at a window's start still counts at the next's end.
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
    clock[0] = EDGE - 899
    assert [guard.failed("person:span") for _ in range(4)] == [None] * 4
    clock[0] = EDGE + 899
    assert guard.failed("person:span") == 300


def test_after_a_lockout_the_failures_that_started_it_count_no_more(cache: Cache, clock: list[float]) -> None:
    # A person locked out at an edge is not locked again by the failures of his first lockout once it
    # ends: counting starts again at one (the lockout generation), and the next lockout doubles.
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
    clock[0] = EDGE - 1
    assert [guard.failed("person:again") for _ in range(4)] == [None] * 4
    clock[0] = EDGE + 1
    assert guard.failed("person:again") == 300
    clock[0] = EDGE + 301
    assert guard.check("person:again", None) is None
    assert [guard.failed("person:again") for _ in range(4)] == [None] * 4
    assert guard.failed("person:again") == 600


def test_a_success_forgets_the_last_windows_failures_too(cache: Cache, clock: list[float]) -> None:
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
    clock[0] = EDGE - 899  # the mark that failures are on record outlives the two windows they count in
    assert [guard.failed("cred:last") for _ in range(4)] == [None] * 4
    clock[0] = EDGE + 500
    seen = guard.check_attempt("cred:last", "10.0.0.1")
    assert seen.retry is None and not seen.clean
    guard.succeeded("cred:last", "10.0.0.1", seen)
    assert [guard.failed("cred:last") for _ in range(4)] == [None] * 4
    assert guard.failed("cred:last") == 300


def test_a_failure_counter_lives_through_the_next_window_and_the_mark_outlives_it(redis_url: str,
                                                                                  clock: list[float]) -> None:
    import redis

    from identity.ratelimit import _digest

    cache = RedisCache(redis_url)
    raw = redis.Redis.from_url(redis_url)
    try:
        clock[0] = EDGE - 899  # a window's first second: its count is read until the next window ends
        LoginGuard(cache, limits=LIMITS, now=lambda: clock[0]).failed("person:ttl")
        h = _digest("person:ttl")
        counter, mark = raw.pttl(f"qg:lf:{h}:0:{int(clock[0] // 900)}"), raw.pttl(f"qg:lf:{h}:any")
        assert 1_799_000 < counter <= 1_800_000 and counter <= mark
    finally:
        raw.close()
        cache.close()


def test_incr_peek_many_counts_one_key_and_reads_the_others(cache: Cache) -> None:
    cache.set("t:peek:a", b"x")
    assert cache.incr_peek_many("t:peek:n", 60, ["t:peek:a", "t:peek:missing", "t:peek:a"]) == (1, [b"x", None, b"x"])
    assert cache.incr_peek_many("t:peek:n", 60, []) == (2, [])
    assert cache.incr("t:peek:n", 60) == 3
    cache.delete("t:peek:a", "t:peek:n")


class _Counting:
    """The real cache, with its calls counted (round trips, for Redis)."""

    def __init__(self, cache: Cache) -> None:
        self.cache, self.calls = cache, 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.cache, name)

        def counted(*args: Any, **kw: Any) -> Any:
            self.calls += 1
            return method(*args, **kw)
        return counted


def test_a_success_with_nothing_on_record_costs_no_round_trip(cache: Cache, clock: list[float]) -> None:
    counting = _Counting(cache)
    guard = LoginGuard(counting, limits=LIMITS, now=lambda: clock[0])  # type: ignore[arg-type]
    seen = guard.check_attempt("cred:clean", "10.0.0.1")
    assert seen.retry is None and seen.clean
    before = counting.calls
    guard.succeeded("cred:clean", "10.0.0.1", seen)
    assert counting.calls == before
    assert counting.calls == 1  # the check itself: one round trip for the address count and the reads


def test_failures_on_record_are_forgotten_by_a_checked_success(cache: Cache, clock: list[float]) -> None:
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
    for _ in range(4):
        assert guard.check_attempt("cred:dirty", "10.0.0.1").retry is None
        guard.failed("cred:dirty", "10.0.0.1")
    seen = guard.check_attempt("cred:dirty", "10.0.0.1")
    assert seen.retry is None and not seen.clean
    guard.succeeded("cred:dirty", "10.0.0.1", seen)
    assert guard.check_attempt("cred:dirty", "10.0.0.1").clean
    assert [guard.failed("cred:dirty") for _ in range(4)] == [None] * 4  # counting starts again at 1
    assert guard.failed("cred:dirty") == 300


def test_a_lockout_level_on_record_is_forgotten_by_a_checked_success(cache: Cache, clock: list[float]) -> None:
    guard = LoginGuard(cache, limits=LIMITS, now=lambda: clock[0])
    assert [guard.failed("cred:lv") for _ in range(5)][-1] == 300
    clock[0] += 300
    seen = guard.check_attempt("cred:lv", "10.0.0.1")
    assert seen.retry is None and not seen.clean and seen.generation == 1
    guard.succeeded("cred:lv", "10.0.0.1", seen)
    assert [guard.failed("cred:lv") for _ in range(5)][-1] == 300  # not doubled: the level was forgotten


def test_attempts_per_address_are_limited(cache: Cache, clock: list[float]) -> None:
    guard = LoginGuard(cache, limits=Limits(login_attempts_per_address=3), now=lambda: clock[0])
    assert [guard.check(None, "10.0.0.9") for _ in range(3)] == [None] * 3
    assert guard.check(None, "10.0.0.9") == 40
    assert guard.check(None, "10.0.0.8") is None


def test_concurrent_failures_start_exactly_one_lockout(redis_url: str, clock: list[float],
                                                      engine: sa.Engine) -> None:
    caches = [RedisCache(redis_url) for _ in range(2)]  # two replicas
    guards = [LoginGuard(c, limits=LIMITS, now=lambda: clock[0], engine=engine) for c in caches]
    barrier = threading.Barrier(12)
    started: list[int] = []

    def fail(i: int) -> None:
        barrier.wait()
        if (seconds := guards[i % 2].failed("person:race")) is not None:
            started.append(seconds)

    threads = [threading.Thread(target=fail, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in caches:
        c.close()
    assert started == [300]
    assert len(lockouts(engine)) == 1


# -- parsing the client --------------------------------------------------------------------------------


def test_client_id_parsing() -> None:
    import base64

    assert client_id_from_basic("Basic " + base64.b64encode(b"my%3Aclient:s3cret").decode()) == "my:client"
    assert client_id_from_basic("Bearer abc") is None
    assert client_id_from_basic("Basic !!!") is None
    assert client_id_from_form(b"grant_type=client_credentials&client_id=c-1&client_secret=s") == "c-1"
    assert client_id_from_form(b"grant_type=client_credentials&client_id=c-1&client_assertion=a.b.c") == "c-1"
    # no credential: a public client's request, which anyone can send in its name
    assert client_id_from_form(b"grant_type=refresh_token&client_id=c-1&refresh_token=r") is None
    assert client_id_from_form(b"client_id=a&client_id=b&client_secret=s") is None
    assert client_id_from_form(b"\xff") is None
    # the names may come in any order and the value may hold anything encoded; one only in a value is no
    # parameter (private_key_jwt without client_id: counted per address, unparsed)
    assert client_id_from_form(b"client_assertion=x.y.z&scope=a&client_id=c-2") == "c-2"
    assert client_id_from_form(b"client_secret=s%26client_id%3Dc-3&grant_type=client_credentials") is None
    assert client_id_from_form(b"grant_type=client_credentials&client_assertion=x.y.z") is None


def test_limits_come_from_settings() -> None:
    limits = limits_from_settings(Settings(rate_limit_per_address=7, rate_limit_enabled=False, lockout_seconds=9))
    assert limits.per_address == 7 and limits.enabled is False and limits.lockout_seconds == 9
    assert limits.per_client == Limits().per_client


def test_limits_can_be_switched_off(engine: sa.Engine, tmp_path: Path) -> None:
    for served in serve(engine, tmp_path, MemoryCache(), rate_limit_per_address=1, rate_limit_enabled=False):
        for _ in range(3):
            r = served.http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=("nobody", "x"))
            assert r.status_code == 401


# -- the middleware on the real app ---------------------------------------------------------------------


@dataclass
class Served:
    http: TestClient
    engine: sa.Engine


def serve(engine: sa.Engine, tmp_path: Path, cache: Cache, *, raise_server_exceptions: bool = True,
          **limits: Any) -> Iterator[Served]:
    # The app mounts the middleware itself (quaygate/app.py); its limits come from the settings.
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        background_workers=False, issuer=ISSUER, **limits)
    container = Container(settings=settings, engine=engine, cache=cache,
                          cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    with TestClient(create_app(settings, container=container), raise_server_exceptions=raise_server_exceptions) as http:
        yield Served(http, engine)


def _clear_of_a_window_edge(window: int = 60, margin: float = 10.0) -> None:
    """Counters are per fixed window: a test that counts to a limit must not straddle two windows."""
    left = window - time.time() % window
    if left < margin:
        time.sleep(left + 0.05)


@pytest.fixture
def tight(engine: sa.Engine, tmp_path: Path, cache: Cache) -> Iterator[Served]:
    for served in serve(engine, tmp_path, cache, rate_limit_per_address=3, rate_limit_per_client=100):
        _clear_of_a_window_edge()
        yield served


@pytest.fixture
def per_client(engine: sa.Engine, tmp_path: Path) -> Iterator[Served]:
    for served in serve(engine, tmp_path, MemoryCache(), rate_limit_per_address=100, rate_limit_per_client=2):
        _clear_of_a_window_edge()
        yield served


def line_client(engine: sa.Engine, **kw: Any) -> tuple[str, str | None]:
    org = add_org(engine, OrgKind.SHIPPING_LINE)
    return create_client(engine, name="line", role="shipping_line", organisation_id=org.organisation_id,
                         now=datetime.now(UTC), **kw)


def test_token_endpoint_answers_429_after_the_address_limit(tight: Served) -> None:
    for _ in range(3):
        r = tight.http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=("nobody", "x"))
        assert r.status_code == 401, r.text
    r = tight.http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=("nobody", "x"))
    assert r.status_code == 429
    assert r.json()["error"] == "slow_down"
    assert 1 <= int(r.headers["retry-after"]) <= 120  # within two windows: the sliding count's most
    assert r.headers["cache-control"] == "no-store"


def test_webauthn_login_answers_a_problem_after_the_address_limit(tight: Served) -> None:
    for _ in range(3):
        tight.http.post("/webauthn/authentication/verify", json={})
    r = tight.http.post("/webauthn/authentication/verify", json={})
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "rate_limited" and "retry-after" in r.headers


def test_every_method_of_client_management_is_limited(tight: Served) -> None:
    """Review 129, finding 2: GET, PUT and DELETE of /oauth2/register/{id} (RFC 7592) take anyone's
    request, and only POSTs were counted."""
    answers = [tight.http.request(method, "/oauth2/register/qg-someone", json={})
               for method in ("GET", "PUT", "DELETE")]
    assert [r.status_code for r in answers] == [401] * 3
    for method in ("GET", "PUT", "DELETE", "POST"):
        r = tight.http.request(method, "/oauth2/register/qg-someone", json={})
        assert r.status_code == 429 and r.json()["error"] == "slow_down" and "retry-after" in r.headers
    assert tight.http.post("/oauth2/register", json={}).status_code == 429  # one count, the OAuth family's
    assert tight.http.get("/oauth2/jwks").status_code == 200  # other GETs are not counted


def test_other_routes_are_not_limited(tight: Served) -> None:
    for _ in range(5):
        assert tight.http.get("/.well-known/openid-configuration").status_code == 200


def test_per_client_limit_counts_authenticated_requests(per_client: Served) -> None:
    client_id, secret = line_client(per_client.engine)
    form = {"grant_type": "client_credentials"}
    assert per_client.http.post("/oauth2/token", data=form, auth=(client_id, secret or "")).status_code == 200
    assert per_client.http.post("/oauth2/token", data=form, auth=(client_id, secret or "")).status_code == 200
    r = per_client.http.post("/oauth2/token", data=form, auth=(client_id, secret or ""))
    assert r.status_code == 429 and r.json()["error"] == "slow_down"


def test_failed_authentication_does_not_spend_a_clients_allowance(per_client: Served) -> None:
    client_id, secret = line_client(per_client.engine)
    form = {"grant_type": "client_credentials"}
    for _ in range(4):  # someone naming the client without its secret
        assert per_client.http.post("/oauth2/token", data=form, auth=(client_id, "wrong")).status_code == 401
    assert per_client.http.post("/oauth2/token", data=form, auth=(client_id, secret or "")).status_code == 200


def test_client_id_in_the_form_is_limited_and_the_body_still_reaches_the_route(per_client: Served) -> None:
    key = rsa_key()
    client_id, _ = line_client(per_client.engine, auth_method="private_key_jwt", jwks=public_jwks(key))
    for _ in range(2):
        form = {**assertion_form(assertion(key, client_id)), "client_id": client_id}
        r = per_client.http.post("/oauth2/token", data=form)
        assert r.status_code == 200, r.text  # the form was replayed whole to the token endpoint
    form = {**assertion_form(assertion(key, client_id)), "client_id": client_id}
    assert per_client.http.post("/oauth2/token", data=form).status_code == 429


def _slowed(r: Any) -> bool:
    """Answered as the rate limiter answers a client over its allowance."""
    return (r.status_code == 429 and r.json()["error"] == "slow_down" and 1 <= int(r.headers["retry-after"]) <= 120
            and r.headers["cache-control"] == "no-store")


def test_a_client_the_form_does_not_name_is_limited_once_authenticated(per_client: Served) -> None:
    """Review 120, finding 4: private_key_jwt without the optional client_id (RFC 7523 §2.2, the
    assertion's sub names the client) was never counted against its client's allowance."""
    key = rsa_key()
    client_id, _ = line_client(per_client.engine, auth_method="private_key_jwt", jwks=public_jwks(key))
    answers = [per_client.http.post("/oauth2/token", data=assertion_form(assertion(key, client_id)))
               for _ in range(6)]
    assert [r.status_code for r in answers] == [200, 200] + [429] * 4, answers[-1].text
    assert all(_slowed(r) for r in answers[2:])
    # Counted as one client, however it names itself: with the form's client_id too, still refused.
    form = {**assertion_form(assertion(key, client_id)), "client_id": client_id}
    assert _slowed(per_client.http.post("/oauth2/token", data=form))


def test_a_percent_encoded_credential_is_limited_once_authenticated(per_client: Served) -> None:
    """Review 120, finding 4: ``client%5Fsecret=`` (client_secret_post), which the route decodes and
    accepts and the rate limiter's sniffing does not read; and at introspection as at the token endpoint."""
    client_id, secret = line_client(per_client.engine, auth_method="client_secret_post")
    body = f"grant_type=client_credentials&client_id={client_id}&client%5Fsecret={secret}"
    headers = {"content-type": "application/x-www-form-urlencoded"}
    answers = [per_client.http.post("/oauth2/token", content=body, headers=headers) for _ in range(6)]
    assert [r.status_code for r in answers] == [200, 200] + [429] * 4, answers[-1].text
    assert all(_slowed(r) for r in answers[2:])
    introspect = f"token=x&client_id={client_id}&client%5Fsecret={secret}"
    assert _slowed(per_client.http.post("/oauth2/introspect", content=introspect, headers=headers))


def test_a_public_clients_requests_count_per_address_only(engine: sa.Engine, tmp_path: Path) -> None:
    """Anyone can name a public client (the driver app): a stranger's requests in its name must not
    spend an allowance that every driver's refresh depends on."""
    for served in serve(engine, tmp_path, MemoryCache(), rate_limit_per_address=100, rate_limit_per_client=2):
        _clear_of_a_window_edge()
        app_id, _ = create_client(served.engine, name="driver app", role="driver_app", organisation_id=None,
                                  auth_method="none", redirect_uris=["https://app.example/cb"], now=datetime.now(UTC))
        form = {"grant_type": "refresh_token", "client_id": app_id, "refresh_token": "stolen-or-guessed"}
        for _ in range(5):
            r = served.http.post("/oauth2/token", data=form)
            assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text

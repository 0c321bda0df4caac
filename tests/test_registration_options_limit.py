"""A login session's passkey registration options are limited (review 146, finding 2; identity.ratelimit
``LoginGuard.check_registration``). Each call stores a flow in Redis (about 360 bytes, five minutes), and
Redis runs under noeviction: a driver with a recent passkey login looping the options without an
enrolment code stored one per call, unbounded (1 500 in 7 s), until every write failed (logins, DPoP
claims, the gates' keeps). The enrolment code's branch counted against the address's login allowance;
the session's did not. Now it counts there too, and against the person's own small allowance; a refused
call stores no flow and leaves no row on the audit trail (it would be the loop's write then). On the real
Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from identity.ratelimit import REGISTRATION_OPTIONS_PER_PERSON
from quaygate.cache import RedisCache
from tests.test_identity_passkeys import PEnv, build_env, device

OPTIONS = "/webauthn/registration/options"


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[PEnv]:
    yield from build_env(engine, tmp_path, RedisCache(redis_url))


@pytest.fixture
def keys(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _flows(keys: redis.Redis) -> int:
    return sum(1 for _ in keys.scan_iter(match="qg:webauthn:flow:*", count=1000))


def _session(env: PEnv) -> tuple[uuid.UUID, str]:
    """A person and the session his passkey's enrolment opened (a recent passkey login)."""
    person = env.person()
    _, cookie = env.enrol(person, device())
    return person, cookie


def _statuses(env: PEnv, cookie: str, n: int) -> list[int]:
    return [env.post(OPTIONS, cookie=cookie).status_code for _ in range(n)]


def test_a_sessions_loop_is_refused_past_the_persons_limit_and_stores_no_more_flows(
        env: PEnv, keys: redis.Redis) -> None:
    _, cookie = _session(env)
    assert _flows(keys) == 0  # the enrolment's flow was taken
    limit = REGISTRATION_OPTIONS_PER_PERSON
    assert _statuses(env, cookie, limit) == [200] * limit
    refused = [env.post(OPTIONS, cookie=cookie) for _ in range(3 * limit)]
    assert {r.status_code for r in refused} == {429}  # 200 before the mend, every one
    body: dict[str, Any] = refused[0].json()
    assert body["code"] == "rate_limited" and int(refused[0].headers["retry-after"]) >= 1
    assert _flows(keys) == limit  # 4 * limit before
    kinds = env.audit_kinds()
    assert not any(kind.endswith("registration.refused.rate_limited") for kind in kinds)

    env.clock.advance(seconds=2 * 60 + 1)  # two windows on: his allowance is back
    assert env.post(OPTIONS, cookie=cookie).status_code == 200


def test_one_persons_loop_leaves_another_his_allowance(env: PEnv) -> None:
    _, looping = _session(env)
    _, other = _session(env)
    _statuses(env, looping, 2 * REGISTRATION_OPTIONS_PER_PERSON)
    assert env.post(OPTIONS, cookie=other).status_code == 200


def test_the_session_branch_counts_against_the_address(engine: sa.Engine, tmp_path: Path, redis_url: str) -> None:
    """As the enrolment code's does: the address's login allowance (here 5; the two enrolments spent two)."""
    for env in build_env(engine, tmp_path, RedisCache(redis_url), login_attempts_per_address=5):
        _, first = _session(env)
        _, second = _session(env)
        assert _statuses(env, first, 2) + _statuses(env, second, 2) == [200, 200, 200, 429]

"""One Redis database serves one quaygate database (its dataset), never two.

What quaygate keeps in Redis is named by terminal, badge, container, token and request id, not by
database: the gates' copies of rights and badges, revocations, single-use claims, kept decisions. Two
deployments given the same Redis database (two ports' services on one managed Redis, a staging service
pointed at production's cache, two benchmark runs) would answer each other's gates from each other's
copies: found when loadtests/cpu_gate.py, run after bench_gate.py on one Redis database, answered
``driver_mismatch`` (the earlier run's badge copy named another person with the same badge number).

Now the database names its dataset (``dataset_identity``, migration 0032: one id, made on first read),
every Redis connection's greeting claims the Redis database for it (``qg:dataset:owner``, in the same
atomic step as the epoch) or is refused when another dataset holds it (``ForeignRedis``): a server does
not start on it, saying why and what to do, and a connection made later (Redis restarted, a failover) is
refused, its calls failing as for a Redis down (the gate decides from PostgreSQL). A flushed Redis holds
no claim: the next greeting makes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
import sqlalchemy as sa
from fastapi.testclient import TestClient

from quaygate import dataset
from quaygate.app import create_app
from quaygate.cache import RedisCache
from quaygate.db import create_database, drop_database, make_engine
from quaygate.identity_of_dataset import OWNER_KEY, dataset_id
from quaygate.migrate import upgrade
from quaygate.settings import Settings

from .conftest import PG_URL


def _settings(tmp_path: Path, database_url: str, redis_url: str) -> Settings:
    return Settings(var_dir=tmp_path, database_url=database_url, redis_url=redis_url, background_workers=False,
                    gate_decision_drain=False)


@pytest.fixture
def other_database(pg_database_url: str) -> Iterator[str]:
    """A second PostgreSQL database, migrated: another deployment's."""
    assert PG_URL
    url = create_database(PG_URL, f"qg_test_other_{pg_database_url.rsplit('_', 1)[-1]}")
    upgrade(url)
    yield url
    drop_database(PG_URL, url)


def test_a_database_names_one_dataset_made_on_first_read(pg_engine: sa.Engine) -> None:
    first = dataset_id(pg_engine)
    assert first and dataset_id(pg_engine) == first  # the same on every read, from every process


def test_a_second_database_on_the_same_redis_is_refused_at_start(
        pg_engine: sa.Engine, pg_database_url: str, other_database: str, redis_url: str, tmp_path: Path) -> None:
    ours = dataset_id(pg_engine)
    with TestClient(create_app(_settings(tmp_path / "a", pg_database_url, redis_url))) as http:
        assert http.get("/healthz").status_code == 200
        client = redis_lib.Redis.from_url(redis_url)
        assert client.get(OWNER_KEY) == ours.encode()
        theirs_app = create_app(_settings(tmp_path / "b", other_database, redis_url))
        with pytest.raises(dataset.ForeignRedis) as refused, TestClient(theirs_app):
            pass
        said = str(refused.value)
        assert ours in said and OWNER_KEY in said and "its own Redis database" in said, said
        assert theirs_app.state.start_refused == said
        assert client.get(OWNER_KEY) == ours.encode()  # nothing taken over
        assert http.get("/healthz").status_code == 200  # the first serves on
    # Flushed (the other deployment gone for good, or given its own database), the Redis is free again.
    client.flushdb()
    with TestClient(create_app(_settings(tmp_path / "c", other_database, redis_url))) as http:
        assert http.get("/healthz").status_code == 200
    assert client.get(OWNER_KEY) != ours.encode()


def test_a_connection_made_later_to_a_redis_another_dataset_claimed_is_refused(
        pg_engine: sa.Engine, redis_url: str) -> None:
    """Redis restarted or failed over while two deployments point at it: whichever greets second is refused
    on every new connection, before anything is read or written there."""
    cache = RedisCache(redis_url)
    try:
        cache.own(dataset_id(pg_engine))
        client = redis_lib.Redis.from_url(redis_url)
        client.set(OWNER_KEY, "another-dataset")
        client.set("qg:x", "1")
        with pytest.raises(dataset.ForeignRedis, match="another-dataset"):
            cache.greet()
        with pytest.raises(redis_lib.ConnectionError):  # a call fails as with a Redis that is down
            cache.get("x")
        assert client.get(OWNER_KEY) == b"another-dataset"
    finally:
        cache.close()


def test_a_cache_that_names_no_dataset_claims_nothing(redis_url: str) -> None:
    """A process that has no database to name (none here) greets as before."""
    cache = RedisCache(redis_url)
    try:
        cache.greet()
        assert redis_lib.Redis.from_url(redis_url).get(OWNER_KEY) is None
    finally:
        cache.close()


def test_the_greeting_reply_of_a_foreign_redis_is_refused_and_an_old_one_still_named() -> None:
    with pytest.raises(dataset.ForeignRedis, match="theirs"):
        dataset.checked([False, 0, b"noeviction", None, b"theirs"], ours="mine")
    with pytest.raises(dataset.OldRedis):
        dataset.checked([False, 0, b"noeviction", b"6.2.14"])
    dataset.checked([b"1", 0, b"noeviction"])


def test_the_sqlite_default_names_its_dataset_too(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        assert dataset_id(engine) == dataset_id(engine)
    finally:
        engine.dispose()

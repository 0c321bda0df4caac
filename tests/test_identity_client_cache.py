"""The client registry's memory: changes seen at once here, within check_every on other replicas."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.clients import EPOCH_KEY, ClientRegistry
from identity.grants import GrantStore, RevocationList
from identity.registration.service import ClientManagement
from quaygate.cache import Cache, MemoryCache, RedisCache
from quaygate.schema import oauth_clients
from tests.test_dataset_loss import LosingRedis
from tests.test_identity_support import add_org, utcnow


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest) -> Iterator[Cache]:
    if request.param == "memory":
        yield MemoryCache()
        return
    shared = RedisCache(request.getfixturevalue("redis_url"))
    yield shared
    shared.close()


class Counting(ClientRegistry):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.reads = 0

    def _read(self, client_id: str) -> Any:
        self.reads += 1
        return super()._read(client_id)


def _client(engine: sa.Engine) -> str:
    org = add_org(engine, "shipping_line")
    client_id, _ = ClientRegistry(engine).register(name="line", role="shipping_line", organisation_id=org,
                                                   now=utcnow())
    return client_id


def _management(engine: sa.Engine, cache: Cache, registry: ClientRegistry) -> ClientManagement:
    grants = GrantStore(engine, RevocationList(cache), refresh_ttl=3600)
    return ClientManagement(engine, grants, issuer="http://localhost:8000", on_change=registry.changed)


def test_a_replica_stops_serving_a_deactivated_client_within_check_every(engine: sa.Engine, cache: Cache) -> None:
    client_id = _client(engine)
    ticks_a, ticks_b = Ticks(), Ticks()
    a = Counting(engine, cache, monotonic=ticks_a)
    b = Counting(engine, cache, monotonic=ticks_b)
    for registry in (a, b):
        found = registry.find(client_id)
        assert found is not None and found.active
        assert registry.find(client_id) is found and registry.reads == 1  # served from memory

    assert _management(engine, cache, a).deactivate(client_id, admin="qg-admin", now=utcnow())

    record = a.find(client_id)  # the replica that made the change: at once
    assert record is not None and not record.active
    ticks_b.now += 0.5
    stale = b.find(client_id)  # the other replica: still the old record, but never longer than check_every
    assert stale is not None and stale.active
    ticks_b.now += 0.5
    record = b.find(client_id)
    assert record is not None and not record.active and b.reads == 2


def test_a_change_made_behind_our_back_is_seen_after_max_age(engine: sa.Engine) -> None:
    client_id = _client(engine)
    ticks = Ticks()
    registry = Counting(engine, MemoryCache(), monotonic=ticks, max_age=60)
    assert registry.find(client_id).active  # type: ignore[union-attr]
    with engine.begin() as conn:  # by hand, no epoch bump
        conn.execute(oauth_clients.update().where(oauth_clients.c.client_id == client_id).values(active=False))
    ticks.now += 59
    assert registry.find(client_id).active  # type: ignore[union-attr]
    ticks.now += 1
    assert not registry.find(client_id).active  # type: ignore[union-attr]
    assert registry.reads == 2


def test_a_read_that_raced_a_change_is_not_remembered(engine: sa.Engine) -> None:
    client_id = _client(engine)
    registry = Counting(engine, MemoryCache(), monotonic=Ticks())
    original = registry._read

    def racing(cid: str) -> Any:
        record = original(cid)
        registry.changed(cid)  # another thread's change commits while this read is under way
        return record

    registry._read = racing  # type: ignore[method-assign]
    assert registry.find(client_id) is not None
    registry._read = original  # type: ignore[method-assign]
    registry.find(client_id)
    assert registry.reads == 2  # the raced read was used once and forgotten


def test_unknown_ids_are_not_remembered_and_memory_is_bounded(engine: sa.Engine) -> None:
    ids = [_client(engine) for _ in range(3)]
    registry = Counting(engine, MemoryCache(), monotonic=Ticks(), max_entries=2)
    assert registry.find("qg-made-up") is None and registry.find("qg-made-up") is None
    assert registry.reads == 2
    for cid in ids:
        registry.find(cid)
    assert len(registry._memory) <= 2


def test_without_a_cache_every_lookup_reads_the_table(engine: sa.Engine) -> None:
    client_id = _client(engine)
    registry = Counting(engine)
    registry.find(client_id)
    registry.find(client_id)
    assert registry.reads == 2


def test_the_clients_keys_are_imported_once_per_read(engine: sa.Engine) -> None:
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256", parameters={"kid": "k1", "use": "sig", "alg": "ES256"})
    org = add_org(engine, "shipping_line")
    client_id, _ = ClientRegistry(engine).register(
        name="line", role="shipping_line", organisation_id=org, now=utcnow() - timedelta(seconds=1),
        auth_method="private_key_jwt", jwks={"keys": [key.as_dict(private=False)]})
    record = ClientRegistry(engine, MemoryCache()).find(client_id)
    assert record is not None and record.key_set is not None
    assert [k.kid for k in record.key_set] == ["k1"]


def test_a_registration_read_leaves_every_replicas_memory_alone(engine: sa.Engine, cache: Cache) -> None:
    """RFC 7592 §2.1's read swaps the registration access token, which no replica's record holds: it
    must not tell the replicas to forget their clients (anyone holding a registration token could
    otherwise empty every replica's memory once a second by reading)."""
    ticks_a, ticks_b = Ticks(), Ticks()
    a = Counting(engine, cache, monotonic=ticks_a)
    b = Counting(engine, cache, monotonic=ticks_b)
    iat, _ = _management(engine, cache, a).create_initial_access_token(
        organisation_id=add_org(engine, "shipping_line"), created_by="qg-admin-test", ttl=None, now=utcnow())
    reg = _management(engine, cache, a).register(iat, {"client_name": "line"}, now=utcnow())
    assert reg.registration_access_token is not None
    for registry in (a, b):
        assert registry.find(reg.client_id) is not None and registry.reads == 1
    epoch = cache.get(EPOCH_KEY)
    doc = _management(engine, cache, a).read(reg.client_id, reg.registration_access_token, now=utcnow())
    assert doc["registration_access_token"] != reg.registration_access_token  # swapped, as ever
    assert cache.get(EPOCH_KEY) == epoch
    for registry, ticks in ((a, ticks_a), (b, ticks_b)):
        ticks.now += 1
        assert registry.find(reg.client_id) is not None and registry.reads == 1  # still from memory


def test_a_replica_forgets_its_clients_when_redis_holds_another_dataset(engine: sa.Engine, tmp_path: Path) -> None:
    """Redis saves a snapshot holding the epoch a replica last read; a secret is rotated (the epoch moves
    on); Redis is started again from the snapshot (as with RDB persistence, or a failover to a replica that
    missed the last writes): the epoch is back at the value the replica holds, the rotation's bump lost.
    The replica must not take that for "nothing changed" and keep the old secret's record up to max_age:
    on a dataset Redis did not serve before, every replica forgets its clients."""
    lost = LosingRedis(tmp_path)
    caches = [RedisCache(lost.url), RedisCache(lost.url)]  # two replicas, a connection of their own each
    try:
        ticks = Ticks()
        a = Counting(engine, caches[0], monotonic=ticks)
        b = Counting(engine, caches[1], monotonic=ticks)
        client_id = _client(engine)
        manage = _management(engine, caches[0], a)
        manage.rotate_secret(client_id, admin="qg-admin", revoke_tokens=False, now=utcnow())
        ticks.now += 1
        held = b.find(client_id)
        assert held is not None and b.reads == 1
        lost.save()
        manage.rotate_secret(client_id, admin="qg-admin", revoke_tokens=False, now=utcnow())
        lost.restart_from_snapshot(*caches)
        ticks.now += 1
        seen = b.find(client_id)
        assert seen is not None and seen.secret_hash != held.secret_hash and b.reads == 2
    finally:
        for cache in caches:
            cache.close()
        lost.stop()

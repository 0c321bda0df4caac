"""Review 132: a leaked token key revoked at once (finding 6), retired and revoked keys' private halves
erased (finding 6), and only keys whose sealed private half is ours ever published or verified with
(finding 7)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from joserfc.jwk import ECKey

from identity.keys import KeyStore
from identity.tokens import InvalidToken, sign_access_token
from quaygate.crypto import DataCipher
from quaygate.schema import audit_log, signing_keys
from tests.test_identity_keys import ALGS, _claims, _rows
from tests.test_identity_support import Env, make_env, utcnow

CLI = {"client_id": "cli:tester"}


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Env]:
    yield from make_env(engine, tmp_path)


def _row(engine: sa.Engine, kid: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(signing_keys).where(signing_keys.c.kid == kid)).one()


def _published(keys: KeyStore) -> set[str]:
    return {k["kid"] for k in keys.jwks()["keys"]} | {str(k.kid) for k in keys.public_key_set()}


# ---- finding 6: revoke -------------------------------------------------------------------------


def test_revoking_the_active_key_replaces_it_and_trusts_it_for_nothing(env: Env) -> None:
    keys, verifier, engine = env.provider.keys, env.provider.verifier, env.container.engine
    old = keys.signing_key("ES256")
    token = sign_access_token(_claims(), old)
    assert verifier.verify(token, audience="quaygate-api")["sub"] == "qg-c"
    now = env.container.clock.now()
    new = keys.revoke(str(old.kid), now, reason="found on a paste site", actor=CLI)
    assert new is not None and new != old.kid and keys.signing_key("ES256").kid == new
    row = _row(engine, str(old.kid))
    assert (row.status, row.publish_until, row.private_enc) == ("revoked", now, None)
    assert row.retired_at == now
    assert old.kid not in _published(keys) and new in _published(keys)
    with pytest.raises(InvalidToken):  # also a token verified (and remembered) before
        verifier.verify(token, audience="quaygate-api")
    assert keys.rotated_out(str(old.kid)) is None  # its offline passes are not honoured either
    assert sorted(r.alg for r in _rows(engine) if r.status == "active") == sorted(ALGS)
    with engine.connect() as conn:
        entry = conn.execute(sa.select(audit_log).where(audit_log.c.kind == "identity.key.revoked")).one()
    assert entry.subject == old.kid and entry.actor == CLI
    assert entry.data == {"alg": "ES256", "was": "active", "reason": "found on a paste site", "replaced_by": new}


def test_revoking_a_rotated_out_key_withdraws_it_from_everything(env: Env) -> None:
    keys, engine = env.provider.keys, env.container.engine
    old = str(keys.signing_key("ES256").kid)
    now = env.container.clock.now()
    current = keys.rotate(now)
    assert old in _published(keys) and keys.rotated_out(old) is not None
    assert keys.revoke(old, now + timedelta(seconds=5), reason="leaked", actor=CLI) is None  # no new key
    assert old not in _published(keys) and keys.rotated_out(old) is None
    assert {alg: str(keys.signing_key(alg).kid) for alg in ALGS} == current
    assert _row(engine, old).retired_at == now  # when it stopped signing, kept
    # A retired key (publication over, private half gone) is revoked too: its passes stop counting.
    gone = current["RS256"]
    keys.rotate(now + timedelta(seconds=10))
    keys.retire_due(now + timedelta(days=1))
    assert keys.rotated_out(gone) is not None
    keys.revoke(gone, now + timedelta(days=1), reason="leaked from a backup", actor=CLI)
    assert keys.rotated_out(gone) is None


def test_a_refused_revocation_changes_nothing(env: Env) -> None:
    keys, engine = env.provider.keys, env.container.engine
    kid = str(keys.signing_key("RS256").kid)
    now = env.container.clock.now()
    with pytest.raises(ValueError, match="reason"):
        keys.revoke(kid, now, reason="  ", actor=CLI)
    with pytest.raises(LookupError):
        keys.revoke("no-such-kid", now, reason="x", actor=CLI)
    audit_kid = "audit-key"
    with engine.begin() as conn:  # the audit key lives in the same table: not a token key, never revoked
        conn.execute(signing_keys.insert().values(kid=audit_kid, alg="EdDSA", use="audit", public_jwk={},
                                                  private_enc="x", status="active", created_at=now))
    with pytest.raises(LookupError):
        keys.revoke(audit_kid, now, reason="x", actor=CLI)
    keys.revoke(kid, now, reason="leaked", actor=CLI)
    before = [tuple(r) for r in _rows(engine)]
    with pytest.raises(ValueError, match="already revoked"):
        keys.revoke(kid, now, reason="again", actor=CLI)
    assert [tuple(r) for r in _rows(engine)] == before
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)
                            .where(audit_log.c.kind == "identity.key.revoked")).scalar_one() == 1


def test_a_retired_keys_private_half_is_erased_and_its_passes_still_checked(env: Env) -> None:
    keys, engine = env.provider.keys, env.container.engine
    old = {alg: str(keys.signing_key(alg).kid) for alg in ALGS}
    now = env.container.clock.now()
    keys.rotate(now)
    assert all(_row(engine, k).private_enc for k in old.values())  # retiring: still published, kept
    assert keys.retire_due(now) == 0
    assert keys.retire_due(now + timedelta(days=1)) == 3
    for kid in old.values():
        row = _row(engine, kid)
        assert row.status == "retired"
        with pytest.raises(InvalidTag):  # the private half is gone: the row holds its retirement record
            env.container.cipher.open(row.private_enc, kid.encode())
        rotated = keys.rotated_out(kid)
        assert rotated is not None and rotated[1] == now and rotated[0].as_dict(private=False) == row.public_jwk
    # The next rotation retires too (the background loop is not the only way).
    second = keys.rotate(now + timedelta(days=1))
    keys.rotate(now + timedelta(days=2))  # second: retiring
    keys.rotate(now + timedelta(days=3))  # second: retired
    assert {_row(engine, k).status for k in second.values()} == {"retired"}
    for kid in second.values():
        with pytest.raises(InvalidTag):
            env.container.cipher.open(_row(engine, kid).private_enc, kid.encode())


def test_a_rotated_out_key_written_into_the_table_is_not_trusted_with_gate_passes(env: Env) -> None:
    """Review 132's leftover (finding 7 for ``rotated_out``): an insider who can write the table but has
    no data key inserts a retired (or retiring) row naming his own public key, or swaps the public key
    of a genuine retired row: ``rotated_out`` (what honours offline gate passes signed by rotated-out
    keys) takes none of them; a genuinely retired key still counts."""
    keys, engine, cipher = env.provider.keys, env.container.engine, env.container.cipher
    now = env.container.clock.now()
    genuine = str(keys.signing_key("ES256").kid)
    keys.rotate(now)
    keys.retire_due(now + timedelta(days=1))
    assert keys.rotated_out(genuine) is not None
    mine = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"})
    mine.ensure_kid()
    later = now + timedelta(days=3650)
    record = _row(engine, genuine).private_enc
    with engine.begin() as conn:
        conn.execute(signing_keys.insert().values(**_insider_row(str(mine.kid), mine, now, status="retired",
                                                                 private_enc=None, retired_at=later)))
        conn.execute(signing_keys.insert().values(**_insider_row("r-" + str(mine.kid), mine, now, retired_at=later,
                                                                 private_enc=None)))
        # A genuine retirement record copied under his kid: it does not open (the kid is its associated data).
        conn.execute(signing_keys.insert().values(**_insider_row("c-" + str(mine.kid), mine, now, status="retired",
                                                                 private_enc=record)))
    for kid in (str(mine.kid), "r-" + str(mine.kid), "c-" + str(mine.kid)):
        assert keys.rotated_out(kid) is None, kid
    with engine.begin() as conn:  # the genuine row's public key swapped for his, or its time moved
        conn.execute(signing_keys.update().where(signing_keys.c.kid == genuine)
                     .values(public_jwk=mine.as_dict(private=False)))
    assert keys.rotated_out(genuine) is None
    row = _row(engine, genuine)
    assert json.loads(cipher.open(row.private_enc, genuine.encode() + b"|retired"))["kid"] == genuine


# ---- finding 7: only keys sealed under our data key ---------------------------------------------


def _insider_row(kid: str, key: ECKey, now: Any, **values: Any) -> dict[str, Any]:
    return {"kid": kid, "alg": "ES256", "use": "sig", "public_jwk": key.as_dict(private=False),
            "private_enc": "sealed-by-nobody", "status": "retiring", "created_at": now, "retired_at": now,
            "publish_until": now + timedelta(days=3650), **values}


def test_a_public_key_written_into_the_table_is_never_published_nor_trusted(env: Env) -> None:
    keys, verifier, engine = env.provider.keys, env.provider.verifier, env.container.engine
    now = env.container.clock.now()
    genuine = keys.signing_key("ES256")
    mine = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"})
    mine.ensure_kid()
    other = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"})
    other.ensure_kid()
    sealed = _row(engine, str(genuine.kid)).private_enc
    with engine.begin() as conn:
        conn.execute(signing_keys.insert().values(**_insider_row(str(mine.kid), mine, now)))
        # A genuine sealed half copied under his kid: it does not open (the kid is its associated data).
        conn.execute(signing_keys.insert().values(**_insider_row(str(other.kid), other, now, private_enc=sealed)))
        # A sealed half that opens under its own kid, given another public key: not published either.
        conn.execute(signing_keys.insert().values(**_insider_row(
            "swapped", mine, now, private_enc=env.container.cipher.seal(
                json.dumps(other.as_dict(private=True)).encode(), b"swapped"))))
    keys.invalidate()
    published = _published(keys)
    assert {str(mine.kid), str(other.kid), "swapped"}.isdisjoint(published) and genuine.kid in published
    for forger in (mine, other):
        claims = {**_claims(), "jti": f"j-{forger.kid}"}
        with pytest.raises(InvalidToken):
            verifier.verify(sign_access_token(claims, forger), audience="quaygate-api")


def test_a_retiring_keys_publication_is_capped_whatever_the_table_says(env: Env,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    keys, engine = env.provider.keys, env.container.engine
    old = str(keys.signing_key("ES256").kid)
    now = env.container.clock.now()
    keys.rotate(now)
    with engine.begin() as conn:  # an insider stretches its publication to ten years
        conn.execute(signing_keys.update().where(signing_keys.c.kid == old)
                     .values(publish_until=now + timedelta(days=3650)))
    keys.invalidate()
    assert old in _published(keys)
    cap = now + timedelta(seconds=keys._token_ttl + keys.reload_every + keys._leeway)
    monkeypatch.setattr(keys, "_clock", lambda: cap + timedelta(seconds=1))
    assert old not in _published(keys)


def test_each_key_is_opened_once_not_at_every_reload(engine: sa.Engine) -> None:
    cipher, opened = DataCipher(b"\x01" * 32), []
    real = cipher.open_stored

    def counting(sealed: str, aad: bytes) -> bytes:
        opened.append(aad)
        return real(sealed, aad)

    cipher.open_stored = counting  # type: ignore[method-assign]
    keys = KeyStore(engine, cipher, reload_every=0)
    keys.ensure_active(utcnow())
    for _ in range(5):
        keys.invalidate()
        keys.jwks()
        keys.signing_key("RS256")
    assert sorted(opened) == sorted({*opened}) and len(opened) == 3


# ---- review 132's leftover: the other replicas learn of a revocation within a second ------------------


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Down:
    """A shared cache whose Redis is unreachable (every command fails as redis-py's would)."""

    shared = True

    def get(self, key: str) -> bytes | None:
        raise ConnectionError("Redis is down")

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        raise ConnectionError("Redis is down")

    def incr(self, key: str, ttl_seconds: float) -> int:
        raise ConnectionError("Redis is down")


def _replicas(engine: sa.Engine, cache: Any, ticks: Ticks) -> tuple[KeyStore, KeyStore]:
    cipher = DataCipher(b"\x02" * 32)
    one, two = (KeyStore(engine, cipher, cache=cache, monotonic=ticks) for _ in range(2))
    one.ensure_active(utcnow())
    return one, two


def test_another_replica_stops_trusting_a_revoked_key_within_check_every(engine: sa.Engine, redis_url: str) -> None:
    from quaygate.cache import RedisCache

    shared, ticks = RedisCache(redis_url), Ticks()
    try:
        one, two = _replicas(engine, shared, ticks)
        kid = str(two.signing_key("ES256").kid)
        assert kid in _published(two)  # loaded by the other replica, its reload a minute away
        one.revoke(kid, utcnow(), reason="leaked", actor=CLI)
        ticks.now += 0.5
        assert kid in _published(two)  # within check_every it has not looked yet
        ticks.now += 0.6
        assert kid not in _published(two)  # the epoch moved: reloaded, a second after, not a minute
        assert str(two.signing_key("ES256").kid) != kid  # and it signs with the new key
        ticks.now += 5
        assert kid not in _published(two)
    finally:
        shared.close()


def test_without_a_shared_cache_a_replica_waits_for_its_timed_reload(engine: sa.Engine) -> None:
    ticks = Ticks()
    one, two = _replicas(engine, None, ticks)
    kid = str(two.signing_key("ES256").kid)
    one.revoke(kid, utcnow(), reason="leaked", actor=CLI)
    ticks.now += 30
    assert kid in _published(two)  # nothing told it: what the revoke command says it will take


def test_a_redis_that_fails_costs_the_signal_not_the_tokens(engine: sa.Engine) -> None:
    ticks = Ticks()
    one, two = _replicas(engine, _Down(), ticks)
    kid = str(two.signing_key("ES256").kid)
    token = sign_access_token(_claims(), two.signing_key("ES256"))
    assert kid in {str(k.kid) for k in two.public_key_set()}  # verifying still works with Redis down
    assert one.revoke(kid, utcnow(), reason="leaked", actor=CLI) is not None  # committed though unsignalled
    assert kid not in _published(one) and token


def test_a_replica_reloads_its_keys_when_redis_holds_another_dataset(engine: sa.Engine, tmp_path: Path) -> None:
    """Redis saves a snapshot holding the keys epoch a replica last read; a key is revoked (the epoch moves
    on); Redis is started again from the snapshot (RDB persistence, or a failover to a replica that missed
    the last writes): the epoch is back at the value the replica holds, the revoke's bump lost. The replica
    must not take that for "nothing changed" and trust the revoked key until its timed reload."""
    from quaygate.cache import RedisCache
    from tests.test_dataset_loss import LosingRedis

    lost = LosingRedis(tmp_path)
    caches = [RedisCache(lost.url), RedisCache(lost.url)]  # two replicas, a connection of their own each
    try:
        ticks = Ticks()
        cipher = DataCipher(b"\x02" * 32)
        one, two = (KeyStore(engine, cipher, cache=c, monotonic=ticks) for c in caches)
        one.ensure_active(utcnow())
        one.rotate(utcnow())  # the epoch moves once: the snapshot holds it
        ticks.now += 1
        kid = str(two.signing_key("ES256").kid)
        assert kid in _published(two)
        lost.save()
        one.revoke(kid, utcnow(), reason="leaked", actor=CLI)
        lost.restart_from_snapshot(*caches)
        ticks.now += 1
        assert kid not in _published(two)
    finally:
        for cache in caches:
            cache.close()
        lost.stop()


def test_an_epoch_that_expired_and_came_back_is_still_news(engine: sa.Engine, redis_url: str) -> None:
    """The epoch key expires 30 days after it was last set (or Redis loses it); a change after that sets it
    again. A counter would restart at 1, the value a replica may still hold from before: the change unseen."""
    import redis

    from quaygate.cache import RedisCache

    shared, ticks = RedisCache(redis_url), Ticks()
    try:
        one, two = _replicas(engine, shared, ticks)  # the keys made: the epoch set once (a counter's 1)
        ticks.now += 1
        assert str(one.signing_key("ES256").kid) in _published(two)  # the replica read that epoch
        with redis.Redis.from_url(redis_url) as raw:
            assert raw.delete(*raw.keys("*identity:keys-epoch")) == 1  # as if it expired
        kid = str(one.signing_key("ES256").kid)
        one.revoke(kid, utcnow(), reason="leaked", actor=CLI)  # sets the epoch again
        ticks.now += 1
        assert kid not in _published(two)
    finally:
        shared.close()


def test_a_failed_reload_after_the_epoch_moved_does_not_use_up_the_signal(engine: sa.Engine, redis_url: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 140, finding 2: the replica kept the moved epoch before reloading; the reload failing (a database
    blip, a pool timeout a flood causes), the epoch was never seen moving again and the revoked key was trusted
    until the timed reload (60 s), not about a second."""
    from quaygate.cache import RedisCache

    shared, ticks = RedisCache(redis_url), Ticks()
    try:
        one, two = _replicas(engine, shared, ticks)
        kid = str(two.signing_key("ES256").kid)
        one.revoke(kid, utcnow(), reason="leaked", actor=CLI)
        load, failed = two._load, []

        def once() -> Any:
            if not failed:
                failed.append(True)
                raise sa.exc.OperationalError("SELECT", {}, Exception("the database is away"))
            return load()

        monkeypatch.setattr(two, "_load", once)
        ticks.now += 1.1
        with pytest.raises(sa.exc.OperationalError):
            two.public_key_set()  # the first look after the revoke: its reload fails
        ticks.now += 5
        assert kid not in _published(two)  # the database back: the epoch still counts as moved
    finally:
        shared.close()

"""GrantStore and RevocationList on the real databases: rotation, reuse, revocation, the cache."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from identity.grants import GrantStore, RefreshRefused, RevocationList, token_hash
from quaygate.cache import MemoryCache
from quaygate.schema import grants, issued_access_tokens, oauth_clients, refresh_tokens, revoked_tokens

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _client(conn: sa.Connection, client_id: str) -> None:
    conn.execute(oauth_clients.insert().values(
        client_id=client_id, name=client_id, role="console", token_endpoint_auth_method="client_secret_basic",
        grant_types=["authorization_code", "refresh_token"], redirect_uris=[], scopes=["openid"],
        dpop_bound=False, active=True, created_at=NOW))


@pytest.fixture
def store(engine: sa.Engine) -> GrantStore:
    with engine.begin() as conn:
        _client(conn, "c1")
        _client(conn, "c2")
    return GrantStore(engine, RevocationList(MemoryCache()), refresh_ttl=3600)


def _grant(engine: sa.Engine, store: GrantStore, sid: str = "s1") -> tuple[uuid.UUID, str]:
    with engine.begin() as conn:
        gid = store.create(conn, client_id="c1", person_id=None, sid=sid, scope="openid offline_access", acr=None,
                           amr=[], auth_time=None, dpop_jkt=None, now=NOW)
        # Tokens issued before access tokens named their grant were listed one by one; still honoured.
        conn.execute(issued_access_tokens.insert(), [
            {"jti": f"jti-{gid}", "grant_id": gid, "expires_at": NOW + timedelta(minutes=10)},
            {"jti": f"old-{gid}", "grant_id": gid, "expires_at": NOW - timedelta(minutes=1)},  # already expired
        ])
        return gid, store.issue_refresh(conn, gid, now=NOW)


def _rotate(engine: sa.Engine, store: GrantStore, token: str, client_id: str = "c1",
            now: datetime = NOW) -> str:
    with engine.begin() as conn:
        return store.rotate(conn, token, client_id=client_id, now=now)[1]


def _refused(engine: sa.Engine, store: GrantStore, token: str, reason: str, *, client_id: str = "c1",
             now: datetime = NOW) -> None:
    with engine.connect() as conn:
        with pytest.raises(RefreshRefused) as exc:
            store.rotate(conn, token, client_id=client_id, now=now)
        conn.commit()  # a reuse's revocation is committed with the refusal
    assert exc.value.reason == reason


def test_rotation_then_reuse_revokes_the_family(engine: sa.Engine, store: GrantStore) -> None:
    gid, first = _grant(engine, store)
    second = _rotate(engine, store, first)
    third = _rotate(engine, store, second)
    _refused(engine, store, first, "reused")
    _refused(engine, store, third, "revoked")  # the newest token of the family too
    with engine.connect() as conn:
        grant = store.get(conn, gid)
        statuses = set(conn.execute(sa.select(refresh_tokens.c.status)).scalars())
        listed = set(conn.execute(sa.select(revoked_tokens.c.jti)).scalars())
    assert grant is not None and grant.revoked and statuses == {"revoked"}
    # One entry for the grant, plus the listed unexpired legacy token; the expired one needs none.
    assert listed == {f"grant:{gid}", f"jti-{gid}"}
    assert store._revocations.is_revoked(f"jti-{gid}")
    revoked = store._revocations.token_revoked
    assert revoked({"jti": "any", "gid": str(gid), "client_id": "c1", "iat": 1})  # every token of the grant
    other, _ = _grant(engine, store, sid="s2")
    assert not revoked({"jti": "any", "gid": str(other), "client_id": "c1", "iat": 1})
    assert not revoked({"jti": "any", "gid": str(other)})  # no client claim: jti and grant still asked
    assert revoked({"jti": "any", "gid": str(gid)})


def test_unknown_expired_wrong_client(engine: sa.Engine, store: GrantStore) -> None:
    _refused(engine, store, "qgr_nothing", "unknown")
    _refused(engine, store, "nothing", "unknown")
    gid, token = _grant(engine, store)
    _refused(engine, store, token, "expired", now=NOW + timedelta(hours=2))
    _refused(engine, store, token, "wrong_client", client_id="c2")
    with engine.connect() as conn:
        grant = store.get(conn, gid)
    assert grant is not None and grant.revoked  # another client held it: taken as stolen


def _active(engine: sa.Engine, gid: uuid.UUID) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(refresh_tokens.c.token_hash).where(
            refresh_tokens.c.grant_id == gid, refresh_tokens.c.status == "active")).scalars())


def test_a_refused_check_keeps_the_token_and_leaves_no_successor(engine: sa.Engine, store: GrantStore) -> None:
    """The successor is written with the use (one statement on PostgreSQL): a refusal by the caller's
    check rolls both back, so the old token stays the grant's one active token and still works."""
    gid, token = _grant(engine, store)
    before = _active(engine, gid)

    def refuse(grant: object) -> None:
        raise LookupError("dpop key")

    with engine.connect() as conn:
        with pytest.raises(LookupError):
            store.rotate(conn, token, client_id="c1", now=NOW, check=refuse)
        conn.rollback()
    assert _active(engine, gid) == before and len(before) == 1
    new = _rotate(engine, store, token)
    assert _active(engine, gid) == {token_hash(new)}


@pytest.mark.parametrize("case", ["wrong_client", "revoked"])
def test_a_refused_use_commits_no_active_successor(engine: sa.Engine, store: GrantStore, case: str) -> None:
    gid, token = _grant(engine, store)
    if case == "revoked":
        with engine.begin() as conn:
            conn.execute(grants.update().where(grants.c.id == gid).values(revoked_at=NOW))
    _refused(engine, store, token, case, client_id="c2" if case == "wrong_client" else "c1")
    with engine.connect() as conn:
        hashes = set(conn.execute(sa.select(refresh_tokens.c.token_hash).where(
            refresh_tokens.c.grant_id == gid)).scalars())
    assert hashes == {token_hash(token)} and not _active(engine, gid) - {token_hash(token)}


def test_find_by_refresh_and_revoke_session(engine: sa.Engine, store: GrantStore) -> None:
    g1, t1 = _grant(engine, store, sid="shift")
    g2, t2 = _grant(engine, store, sid="shift")
    g3, t3 = _grant(engine, store, sid="other")
    with engine.begin() as conn:
        found = store.find_by_refresh(conn, t1)
        assert found is not None and found[0].id == g1 and found[1] == "active"
        assert store.find_by_refresh(conn, "qgr_x") is None and store.find_by_refresh(conn, "x") is None
        assert store.revoke_session(conn, "shift", reason="logout", now=NOW) == 2
        assert store.revoke_grant(conn, g1, reason="again", now=NOW) == 0  # idempotent
    with engine.connect() as conn:
        revoked = {g: store.get(conn, g).revoked for g in (g1, g2, g3)}  # type: ignore[union-attr]
    assert revoked == {g1: True, g2: True, g3: False}


def test_revocation_list_survives_a_cache_flush(engine: sa.Engine) -> None:
    cache = MemoryCache()
    revocations = RevocationList(cache)
    with engine.begin() as conn:
        assert revocations.add(conn, [("a", NOW + timedelta(minutes=5)), ("b", NOW - timedelta(minutes=1))],
                               now=NOW) == 1
        assert revocations.add(conn, [("a", NOW + timedelta(minutes=5))], now=NOW) == 0
    assert revocations.is_revoked("a") and not revocations.is_revoked("b")
    fresh = RevocationList(MemoryCache())  # a replica whose cache was flushed
    assert not fresh.is_revoked("a")
    assert fresh.reload(engine, now=NOW) == 1 and fresh.is_revoked("a")


def test_revocations_survive_a_restart_with_a_fresh_cache(engine: sa.Engine, tmp_path: Path) -> None:
    """The in-process cache dies with the process: the provider reloads revocations from the table."""
    from identity.bootstrap import IdentityProvider
    from quaygate.container import Container, SystemClock
    from quaygate.crypto import DataCipher
    from quaygate.settings import Settings

    settings = Settings(var_dir=tmp_path)
    now = datetime.now(UTC)
    first = RevocationList(MemoryCache())
    with engine.begin() as conn:
        first.add(conn, [("jti-revoked", now + timedelta(minutes=5)), ("jti-old", now - timedelta(minutes=1))],
                  now=now)
    restarted = IdentityProvider.build(Container(settings=settings, engine=engine, cache=MemoryCache(),
                                                 cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock()))
    assert restarted.grants.revocations.is_revoked("jti-revoked")
    assert not restarted.grants.revocations.is_revoked("jti-old")


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_revoked_client_and_a_revoked_jti_in_one_lookup(engine: sa.Engine, kind: str,
                                                          request: pytest.FixtureRequest) -> None:
    from quaygate.cache import RedisCache

    cache = RedisCache(request.getfixturevalue("redis_url")) if kind == "redis" else MemoryCache()
    revocations = RevocationList(cache)
    with engine.begin() as conn:
        revocations.add(conn, [("gone", NOW + timedelta(minutes=5))], now=NOW)
        revocations.revoke_client(conn, "c-bad", now=NOW, token_ttl=600)
        revocations.revoke_client(conn, "c-bad", now=NOW, token_ttl=600)  # twice: still one row
    cutoff = (NOW + RevocationList.CLIENT_MARGIN).timestamp()
    assert revocations.token_revoked({"jti": "gone", "client_id": "c-ok", "iat": 1})
    assert not revocations.token_revoked({"jti": "live", "client_id": "c-ok", "iat": 1})
    assert revocations.token_revoked({"jti": "live", "client_id": "c-bad", "iat": int(cutoff)})
    assert revocations.token_revoked({"jti": "live", "client_id": "c-bad"})  # no iat: refused
    assert not revocations.token_revoked({"jti": "live", "client_id": "c-bad", "iat": int(cutoff) + 1})
    assert revocations.token_revoked({"jti": "gone"})  # no client_id: by jti alone

"""Review 151, finding 3: a refresh-token family ends QUAYGATE_REFRESH_MAX_SECONDS after its login.

Every rotation gave its successor ``now + refresh_ttl`` and nothing capped a family's age, so a grant a
year old refreshed as a new one. Now a family lives at most ``refresh_max_seconds`` from its grant's
``auth_time`` (else its ``created_at``): no refresh token's ``expires_at`` runs past that end, and a
refresh at or past it is refused invalid_grant, the family revoked (``refresh_max_age``) and audited.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from identity.grants import GrantStore, RefreshRefused, RevocationList, token_hash
from quaygate.cache import MemoryCache
from quaygate.schema import audit_log, grants, oauth_clients, persons, refresh_tokens
from quaygate.settings import Settings
from tests.test_identity_grants_support import Lifecycle, make_lifecycle, utcnow

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
TTL = 3600
MAX = 4 * 3600


@pytest.fixture
def store(engine: sa.Engine) -> GrantStore:
    with engine.begin() as conn:
        conn.execute(oauth_clients.insert().values(
            client_id="c1", name="c1", role="console", token_endpoint_auth_method="client_secret_basic",
            grant_types=["authorization_code", "refresh_token"], redirect_uris=[], scopes=["openid"],
            dpop_bound=False, active=True, created_at=NOW))
    return GrantStore(engine, RevocationList(MemoryCache()), refresh_ttl=TTL, refresh_max=MAX)


def _grant(engine: sa.Engine, store: GrantStore, *, auth_time: datetime | None, created: datetime,
           token_expires: datetime | None = None, person: uuid.UUID | None = None) -> tuple[uuid.UUID, str]:
    """A grant made at ``created`` with a token issued a minute before NOW (its last refresh);
    ``token_expires``: that token's expires_at as written before the cap (a family older than this mend)."""
    issued = max(created, NOW - timedelta(seconds=60))
    with engine.begin() as conn:
        gid = store.create(conn, client_id="c1", person_id=person, sid="s1", scope="openid offline_access",
                           acr=None, amr=[], auth_time=auth_time, dpop_jkt=None, now=created)
        token = store.issue_refresh(conn, gid, now=issued, started=auth_time or created)
        if token_expires is not None:
            conn.execute(refresh_tokens.update().where(refresh_tokens.c.token_hash == token_hash(token))
                         .values(expires_at=token_expires))
    return gid, token


def _expires(engine: sa.Engine, token: str) -> datetime:
    with engine.connect() as conn:
        return conn.execute(sa.select(refresh_tokens.c.expires_at)
                            .where(refresh_tokens.c.token_hash == token_hash(token))).scalar_one()


def _revoked_reason(engine: sa.Engine, gid: uuid.UUID) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(grants.c.revoked_reason).where(grants.c.id == gid)).scalar_one()


def test_the_first_token_ends_with_the_family(engine: sa.Engine, store: GrantStore) -> None:
    login = NOW - timedelta(seconds=MAX - 600)  # a code exchanged late in a long login session
    _, token = _grant(engine, store, auth_time=login, created=NOW)
    assert _expires(engine, token) == login + timedelta(seconds=MAX)
    _, fresh = _grant(engine, store, auth_time=NOW, created=NOW)
    assert _expires(engine, fresh) == NOW + timedelta(seconds=TTL)


@pytest.mark.parametrize("auth_time", [True, False], ids=["auth_time", "created_at"])
def test_a_rotated_token_never_runs_past_the_familys_end(engine: sa.Engine, store: GrantStore,
                                                          auth_time: bool) -> None:
    start = NOW - timedelta(seconds=MAX - 1800)  # half a TTL left
    _, token = _grant(engine, store, auth_time=start if auth_time else None, created=start)
    with engine.begin() as conn:
        successor = store.rotate(conn, token, client_id="c1", now=NOW).token
    assert _expires(engine, successor) == start + timedelta(seconds=MAX)
    # Early in a family, the TTL as before.
    _, young = _grant(engine, store, auth_time=NOW, created=NOW)
    with engine.begin() as conn:
        successor = store.rotate(conn, young, client_id="c1", now=NOW).token
    assert _expires(engine, successor) == NOW + timedelta(seconds=TTL)


def test_the_fast_paths_successor_is_capped_too(pg_engine: sa.Engine) -> None:
    with pg_engine.begin() as conn:
        conn.execute(oauth_clients.insert().values(
            client_id="c1", name="c1", role="console", token_endpoint_auth_method="client_secret_basic",
            grant_types=["authorization_code", "refresh_token"], redirect_uris=[], scopes=["openid"],
            dpop_bound=False, active=True, created_at=NOW))
        person = uuid.uuid4()  # the WRITE consumes a token only while its person is active
        conn.execute(persons.insert().values(id=person, given_name="Jan", family_name="Peeters", status="active",
                                             created_at=NOW))
    store = GrantStore(pg_engine, RevocationList(MemoryCache()), refresh_ttl=TTL, refresh_max=MAX)
    start = NOW - timedelta(seconds=MAX - 1800)
    _, token = _grant(pg_engine, store, auth_time=start, created=start, person=person)
    with pg_engine.connect() as raw:
        conn = raw.execution_options(isolation_level="AUTOCOMMIT")
        rotation = store.prepare_rotation(conn, token, client_id="c1", now=NOW)
        assert rotation is not None
        entry = ("identity.token.refreshed", {"client_id": "c1"}, str(rotation.grant.id), {}, NOW)
        assert store.rotate_prepared(conn, token, rotation, client_id="c1", now=NOW, entry=entry)
    assert _expires(pg_engine, rotation.token) == start + timedelta(seconds=MAX)


def test_a_family_past_its_end_is_refused_and_revoked(engine: sa.Engine, store: GrantStore) -> None:
    """A token written before the cap, still unexpired, of a family older than the cap: the full path
    refuses it (and the fast path gives it to the full path)."""
    year_ago = NOW - timedelta(days=365)
    gid, token = _grant(engine, store, auth_time=year_ago, created=year_ago, token_expires=NOW + timedelta(days=1))
    if engine.dialect.name == "postgresql":
        with engine.connect() as raw:
            assert store.prepare_rotation(raw.execution_options(isolation_level="AUTOCOMMIT"), token,
                                          client_id="c1", now=NOW) is None
    with engine.connect() as conn:
        with pytest.raises(RefreshRefused) as refused:
            store.rotate(conn, token, client_id="c1", now=NOW)
        conn.commit()
    assert (refused.value.reason, refused.value.grant_id) == ("max_age", gid)
    assert _revoked_reason(engine, gid) == "refresh_max_age"
    with engine.connect() as conn:
        statuses = set(conn.execute(sa.select(refresh_tokens.c.status)
                                    .where(refresh_tokens.c.grant_id == gid)).scalars())
    assert statuses == {"revoked"}  # its successor too, written by the same statement on PostgreSQL


def test_a_capped_token_presented_at_the_familys_end_ends_the_family(engine: sa.Engine, store: GrantStore) -> None:
    start = NOW - timedelta(seconds=MAX - 60)
    gid, token = _grant(engine, store, auth_time=start, created=start)
    assert _expires(engine, token) == NOW + timedelta(seconds=60)
    with engine.connect() as conn:
        with pytest.raises(RefreshRefused) as refused:
            store.rotate(conn, token, client_id="c1", now=NOW + timedelta(seconds=60))
        conn.commit()
    assert refused.value.reason == "max_age"
    assert _revoked_reason(engine, gid) == "refresh_max_age"


# ---- the token endpoint ---------------------------------------------------------------------------


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path, refresh_max_seconds=MAX)


def _old_grant(env: Lifecycle, client_id: str, person: uuid.UUID, login: datetime,
               token_expires: datetime) -> tuple[uuid.UUID, str]:
    with env.engine.begin() as conn:
        gid = env.grants.create(conn, client_id=client_id, person_id=person, sid="sid-1",
                                scope="openid profile offline_access releases:read", acr="urn:quaygate:acr:passkey",
                                amr=["hwk", "user", "mfa"], auth_time=login, dpop_jkt=None, now=login)
        token = env.grants.issue_refresh(conn, gid, now=login)
        conn.execute(refresh_tokens.update().where(refresh_tokens.c.token_hash == token_hash(token))
                     .values(expires_at=token_expires))
    return gid, token


def test_a_grant_a_year_old_no_longer_refreshes(env: Lifecycle) -> None:
    client_id, secret, org = env.console()
    year_ago = utcnow() - timedelta(days=365)
    gid, token = _old_grant(env, client_id, env.person(org), year_ago, utcnow() + timedelta(days=1))
    r = env.refresh(token, client_id, secret)
    assert (r.status_code, r.json()["error"]) == (400, "invalid_grant"), r.text
    assert _revoked_reason(env.engine, gid) == "refresh_max_age"
    with env.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log.c.kind, audit_log.c.subject, audit_log.c.data)
                            .where(audit_log.c.subject == str(gid))).all()
    kinds = {row.kind: row.data for row in rows}
    assert kinds["identity.refresh.family_ended"]["started"] == year_ago.isoformat()
    assert kinds["identity.token.refused"]["reason"] == "max_age"
    again = env.refresh(token, client_id, secret)
    assert again.json()["error"] == "invalid_grant"


def test_a_refresh_near_the_end_gets_a_token_ending_there(env: Lifecycle) -> None:
    client_id, secret, org = env.console()
    login = utcnow() - timedelta(seconds=MAX - 600)
    _, token = _old_grant(env, client_id, env.person(org), login, utcnow() + timedelta(seconds=60))
    r = env.refresh(token, client_id, secret)
    assert r.status_code == 200, r.text
    assert _expires(env.engine, r.json()["refresh_token"]) == login + timedelta(seconds=MAX)


def test_the_setting() -> None:
    assert Settings().refresh_max_seconds == 30 * 24 * 3600 >= Settings().refresh_token_ttl
    for bad in (0, -1):
        with pytest.raises(ValidationError):
            Settings(refresh_max_seconds=bad)


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUAYGATE_REFRESH_MAX_SECONDS", "86400")
    assert Settings().refresh_max_seconds == 86400

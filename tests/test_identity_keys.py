"""Signing keys: one active key per algorithm, sealed at rest, rotated without breaking live tokens,
cached in memory."""

from __future__ import annotations

import json
import threading
import time
import typing
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from joserfc import jws, jwt
from joserfc.jwk import ECKey, KeySet, RSAKey
from joserfc.jws import JWSRegistry

from identity.clients import ID_TOKEN_ALGS
from identity.keys import SIGNING_ALGORITHMS, KeyStore
from identity.oidc.issue import ID_TOKEN_ALGORITHMS, sign_id_token
from identity.tokens import InvalidToken, sign_access_token
from quaygate.crypto import DataCipher
from quaygate.schema import signing_keys
from quaygate.settings import Settings
from tests.test_identity_support import ISSUER, Env, basic, make_env, rsa_key, utcnow


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Env]:
    yield from make_env(engine, tmp_path)


PRIVATE_MEMBERS = {"RSA": {"d", "p", "q", "dp", "dq", "qi"}, "EC": {"d"}}
ALGS = ("RS256", "PS256", "ES256")
ANY_ALG = JWSRegistry(algorithms=list(ALGS))


def _rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(
            sa.select(signing_keys).where(signing_keys.c.use == "sig").order_by(signing_keys.c.created_at)
        ).all())


def _issue(env: Env) -> str:
    client_id, secret, _ = env.client("release_party")
    resp = env.token({"grant_type": "client_credentials"}, headers=basic(client_id, secret))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


def _header(token: str) -> dict[str, Any]:
    return dict(jws.extract_compact(token.encode(), registry=ANY_ALG).headers())


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "sub": "qg-c", "aud": "quaygate-api", "exp": now + 300, "iat": now, "nbf": now,
            "jti": "j-1", "client_id": "qg-c"}


def test_the_algorithms_agree_everywhere() -> None:
    """What the store holds keys for is what clients may register, discovery lists and settings take."""
    assert SIGNING_ALGORITHMS == ALGS
    assert ID_TOKEN_ALGORITHMS == ID_TOKEN_ALGS == SIGNING_ALGORITHMS
    assert typing.get_args(Settings.model_fields["access_token_signing_alg"].annotation) == SIGNING_ALGORITHMS


def test_private_keys_are_sealed_with_the_kid_as_associated_data(env: Env) -> None:
    env.provider.keys.ensure_active(env.container.clock.now())
    rows = _rows(env.container.engine)
    assert sorted(r.alg for r in rows) == sorted(ALGS)
    for row in rows:
        key = env.provider.keys.signing_key(row.alg)
        assert row.kid == key.kid and row.status == "active" and row.use == "sig"
        private = key.as_dict(private=True)
        for member in PRIVATE_MEMBERS[private["kty"]]:
            assert private[member] not in row.private_enc
            assert member not in row.public_jwk
        with pytest.raises(ValueError):
            json.loads(row.private_enc)
        opened = json.loads(env.container.cipher.open(row.private_enc, row.kid.encode()))
        assert opened["d"] == private["d"] and opened["alg"] == row.alg
        with pytest.raises(InvalidTag):  # copied under another kid, it does not open
            env.container.cipher.open(row.private_enc, b"another-kid")
        with pytest.raises(InvalidTag):  # nor under another data key
            DataCipher(b"\x00" * 32).open(row.private_enc, row.kid.encode())


def test_ensure_active_makes_one_key_per_algorithm_once(env: Env) -> None:
    keys = env.provider.keys
    now = env.container.clock.now()
    kids = keys.ensure_active(now)
    assert kids == keys.ensure_active(now)
    assert kids == {alg: keys.signing_key(alg).kid for alg in ALGS}
    assert len(set(kids.values())) == 3 and len(_rows(env.container.engine)) == 3
    with pytest.raises(LookupError):
        keys.signing_key("ES384")


def test_a_missing_algorithm_is_added_next_to_the_existing_keys(engine: sa.Engine) -> None:
    """A database from before ES256/PS256 keys: start-up adds them and keeps the RS256 key."""
    cipher, now = DataCipher(b"\x01" * 32), utcnow()
    keys = KeyStore(engine, cipher)
    old = keys.rotate(now, ["RS256"])["RS256"]
    assert [r.alg for r in _rows(engine)] == ["RS256"]
    kids = keys.ensure_active(now)
    assert kids["RS256"] == old and set(kids) == set(ALGS)


def test_the_key_store_signs_each_algorithm_with_its_own_key(env: Env) -> None:
    keys, verifier = env.provider.keys, env.provider.verifier
    for alg in ALGS:
        key = keys.signing_key(alg)
        assert key.get("alg") == alg and isinstance(key, ECKey if alg == "ES256" else RSAKey)
        token = sign_access_token(_claims(), key)  # the alg comes from the key itself
        assert _header(token) == {"alg": alg, "typ": "at+jwt", "kid": key.kid}
        assert verifier.verify(token, audience="quaygate-api")["jti"] == "j-1"
        id_token = sign_id_token(_claims(), keys, alg)
        assert _header(id_token) == {"alg": alg, "typ": "JWT", "kid": key.kid}
        published = KeySet.import_key_set(env.http.get("/oauth2/jwks").json())
        assert jwt.decode(id_token, published, registry=ANY_ALG).claims["sub"] == "qg-c"
    # A key is never paired with another algorithm than the one it names (RFC 7517 §4.4).
    with pytest.raises(ValueError, match="cannot sign"):
        sign_access_token(_claims(), keys.signing_key("RS256"), alg="PS256")
    with pytest.raises(ValueError, match="cannot sign"):
        sign_access_token(_claims(), keys.signing_key("ES256"), alg="RS256")


def test_access_tokens_use_the_configured_algorithm(engine: sa.Engine, tmp_path: Path) -> None:
    for alg in ("ES256", "PS256"):
        running = make_env(engine, tmp_path, access_token_signing_alg=alg)  # the same data key
        env = next(running)
        try:
            token = _issue(env)
            assert _header(token) == {"alg": alg, "typ": "at+jwt", "kid": env.provider.keys.signing_key(alg).kid}
            assert env.provider.verifier.verify(token, audience="quaygate-api")["client_id"]
        finally:
            running.close()
    with pytest.raises(ValueError, match="access_token_signing_alg"):
        Settings(var_dir=tmp_path, access_token_signing_alg="HS256")  # type: ignore[arg-type]


def test_the_jwks_publishes_one_key_per_algorithm(env: Env) -> None:
    keys = env.http.get("/oauth2/jwks").json()["keys"]
    by_alg = {k["alg"]: k for k in keys}
    assert len(keys) == 3 and set(by_alg) == set(ALGS)
    assert {k["use"] for k in keys} == {"sig"}
    assert by_alg["RS256"]["kty"] == by_alg["PS256"]["kty"] == "RSA"
    assert by_alg["ES256"]["kty"] == "EC" and by_alg["ES256"]["crv"] == "P-256"
    assert by_alg["RS256"]["n"] != by_alg["PS256"]["n"]  # two keys, each used with one algorithm
    for k in keys:
        assert not PRIVATE_MEMBERS[k["kty"]] & set(k)
        assert k["kid"] == env.provider.keys.signing_key(k["alg"]).kid


def test_rotation_keeps_old_tokens_valid_until_publish_until(env: Env) -> None:
    keys, verifier, ttl = env.provider.keys, env.provider.verifier, env.container.settings.access_token_ttl
    old_token = _issue(env)
    old = {alg: keys.signing_key(alg).kid for alg in ALGS}
    assert _header(old_token)["kid"] == old["ES256"]  # access tokens are ES256 by default
    now = env.container.clock.now()
    new = keys.rotate(now)
    assert set(new) == set(ALGS) and not set(new.values()) & set(old.values())

    new_token = _issue(env)
    assert _header(new_token)["kid"] == new["ES256"]  # signs with the new key from now on
    assert {keys.signing_key(alg).kid for alg in ALGS} == set(new.values())
    assert verifier.verify(old_token, audience="quaygate-api")["jti"]  # the old one still verifies
    assert verifier.verify(new_token, audience="quaygate-api")["jti"]

    rows = {r.kid: r for r in _rows(env.container.engine)}
    publish_until = rows[old["ES256"]].publish_until
    for kid in old.values():
        assert rows[kid].status == "retiring" and rows[kid].retired_at == now
        assert rows[kid].publish_until == publish_until >= now + timedelta(seconds=ttl)
    published = {k["kid"] for k in env.http.get("/oauth2/jwks").json()["keys"]}
    assert published == set(old.values()) | set(new.values())
    before = {k["kid"] for k in keys.jwks(publish_until - timedelta(seconds=1))["keys"]}
    assert before == set(old.values()) | set(new.values())
    after = {k["kid"] for k in keys.jwks(publish_until + timedelta(seconds=1))["keys"]}
    assert after == set(new.values())


def test_rotating_one_algorithm_leaves_the_others_alone(env: Env) -> None:
    keys = env.provider.keys
    before = {alg: keys.signing_key(alg).kid for alg in ALGS}
    new = keys.rotate(env.container.clock.now(), ["PS256"])
    assert list(new) == ["PS256"] and new["PS256"] != before["PS256"]
    assert {alg: keys.signing_key(alg).kid for alg in ALGS} == {**before, "PS256": new["PS256"]}
    status = {r.kid: r.status for r in _rows(env.container.engine)}
    assert status[before["PS256"]] == "retiring"
    assert status[before["RS256"]] == status[before["ES256"]] == "active"
    for bad in (["HS256"], ["none"], ["RS256", "ES384"], []):
        with pytest.raises(ValueError):
            keys.rotate(env.container.clock.now(), bad)
    assert len(_rows(env.container.engine)) == 4  # a refused rotation adds nothing


def test_a_second_rotation_retires_keys_past_publish_until(env: Env) -> None:
    keys = env.provider.keys
    first = {alg: keys.signing_key(alg).kid for alg in ALGS}
    now = env.container.clock.now()
    keys.rotate(now)
    third = keys.rotate(now + timedelta(days=1))
    status = {r.kid: r.status for r in _rows(env.container.engine)}
    assert {status[k] for k in first.values()} == {"retired"}
    assert {status[k] for k in third.values()} == {"active"}
    assert list(status.values()).count("active") == 3
    assert not set(first.values()) & {k["kid"] for k in keys.jwks(now + timedelta(days=1))["keys"]}


def test_the_database_refuses_a_second_active_key_for_an_algorithm(env: Env) -> None:
    """The partial unique index (migration 0003), on SQLite and PostgreSQL: one active key per alg."""
    env.provider.keys.ensure_active(env.container.clock.now())
    row = next(r for r in _rows(env.container.engine) if r.alg == "ES256")
    twin = {**row._asdict(), "kid": "twin-" + row.kid[:20]}
    with pytest.raises(sa.exc.IntegrityError), env.container.engine.begin() as conn:
        conn.execute(signing_keys.insert().values(**twin))
    with env.container.engine.begin() as conn:  # retiring keys, and other uses, are not counted
        conn.execute(signing_keys.insert().values(**{**twin, "status": "retiring"}))
        conn.execute(signing_keys.insert().values(**{**twin, "kid": "other-use", "use": "audit"}))


def test_loaded_keys_are_served_from_memory(env: Env) -> None:
    keys, verifier = env.provider.keys, env.provider.verifier
    token = _issue(env)
    for alg in ALGS:
        keys.signing_key(alg)  # each private key is opened once
    queries: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        queries.append(statement)

    sa.event.listen(env.container.engine, "before_cursor_execute", count)
    try:
        for _ in range(50):
            verifier.verify(token, audience="quaygate-api")
            for alg in ALGS:
                keys.signing_key(alg)
            keys.jwks()
        assert queries == []  # nothing from the database once loaded
        stranger = rsa_key()
        forged = jws.serialize_compact(
            {"alg": "RS256", "typ": "at+jwt", "kid": stranger.kid},
            "{}",
            stranger,
            registry=JWSRegistry(algorithms=["RS256"]),
        )
        with pytest.raises(InvalidToken):
            verifier.verify(forged, audience="quaygate-api")
        selects = [" ".join(q.split()) for q in queries if q.lstrip().upper().startswith("SELECT")]
        # A made-up kid costs one primary-key lookup, not a reload of the key set.
        assert len(selects) == 1 and "WHERE signing_keys.kid =" in selects[0], selects
    finally:
        sa.event.remove(env.container.engine, "before_cursor_execute", count)


def test_stale_cache_is_reloaded_after_reload_every(env: Env) -> None:
    engine, cipher, now = env.container.engine, env.container.cipher, env.container.clock.now()
    fresh = KeyStore(engine, cipher, reload_every=0)
    cached = KeyStore(engine, cipher, reload_every=3600)
    before = cached.ensure_active(now)
    assert cached.signing_key("ES256").kid == before["ES256"] == fresh.signing_key("ES256").kid
    after = KeyStore(engine, cipher).rotate(now)  # another replica rotates
    assert fresh.signing_key("ES256").kid == after["ES256"]
    assert cached.signing_key("ES256").kid == before["ES256"]  # until its reload, it keeps the old key


@pytest.mark.parametrize("operation", ["ensure_active", "rotate"])
def test_concurrent_replicas_leave_one_active_key_per_algorithm(pg_engine: sa.Engine, operation: str) -> None:
    cipher = DataCipher(b"\x01" * 32)
    now = utcnow()
    if operation == "rotate":
        KeyStore(pg_engine, cipher).ensure_active(now)
    stores = [KeyStore(pg_engine, cipher) for _ in range(6)]
    for store in stores:
        # Keys made before the race, and a slow insert: without the lock every replica would see no
        # active keys (or demote the same ones) and add its own.
        made = {alg: store._generate(alg) for alg in ALGS}
        store._generate = lambda alg, made=made: made[alg]  # type: ignore[method-assign]
        insert = store._insert
        store._insert = lambda *a, insert=insert: (time.sleep(0.02), insert(*a))  # type: ignore[method-assign]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def run(store: KeyStore) -> None:
        try:
            barrier.wait()
            getattr(store, operation)(now)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = _rows(pg_engine)
    assert sorted(r.alg for r in rows if r.status == "active") == sorted(ALGS)
    assert len(rows) == (3 if operation == "ensure_active" else 3 + 3 * len(stores))


def test_audit_key_in_the_same_table_is_never_a_token_key(engine: sa.Engine) -> None:
    """The audit trail's Ed25519 key lives in signing_keys too: tokens must never pick or retire it."""
    from release_service.adapters.audit import ensure_audit_key

    cipher = DataCipher(b"\x01" * 32)
    now = utcnow()
    audit = ensure_audit_key(engine, cipher, now)
    keys = KeyStore(engine, cipher)
    kids = keys.ensure_active(now)
    assert audit.kid not in kids.values() and set(kids) == set(ALGS)
    assert {keys.signing_key(alg).kid for alg in ALGS} == set(kids.values())
    keys.rotate(now + timedelta(seconds=1))
    with engine.connect() as conn:
        audit_row = conn.execute(sa.select(signing_keys).where(signing_keys.c.kid == audit.kid)).one()
    assert audit_row.status == "active"
    assert audit.kid not in {k["kid"] for k in keys.jwks()["keys"]}
    assert audit.kid not in {k.kid for k in keys.public_key_set()}


def test_the_verifiers_key_set_is_made_once_and_follows_what_is_published(env: Env,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every token verified asks for the key set: it is made once, and made again when a rotation
    changes the keys or a retired key's publish_until passes (the clock alone moves it out)."""
    keys = env.provider.keys
    first = keys.public_key_set()
    assert keys.public_key_set() is first
    old = keys.signing_key("ES256").kid
    new = keys.rotate(env.container.clock.now())["ES256"]
    rotated = keys.public_key_set()
    assert {old, new} <= {k.kid for k in rotated} and rotated is not first
    assert keys.public_key_set() is rotated
    publish_until = {r.kid: r for r in _rows(env.container.engine)}[old].publish_until
    monkeypatch.setattr(keys, "_clock", lambda: publish_until + timedelta(seconds=1))
    later = {k.kid for k in keys.public_key_set()}
    assert new in later and old not in later

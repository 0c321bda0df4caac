"""Signing keys: sealed at rest, rotated without breaking live tokens, cached in memory."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from joserfc import jws
from joserfc.jws import JWSRegistry

from identity.keys import KeyStore
from identity.tokens import InvalidToken
from quaygate.crypto import DataCipher
from quaygate.schema import signing_keys
from tests.test_identity_support import Env, basic, make_env, rsa_key, utcnow


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Env]:
    yield from make_env(engine, tmp_path)


PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


def _rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(signing_keys).order_by(signing_keys.c.created_at)).all())


def _issue(env: Env) -> str:
    client_id, secret, _ = env.client("release_party")
    resp = env.token({"grant_type": "client_credentials"}, headers=basic(client_id, secret))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


def _kid(token: str) -> str:
    return str(
        jws.extract_compact(token.encode(), registry=JWSRegistry(algorithms=["RS256"])).headers()["kid"]
    )


def test_private_keys_are_sealed_with_the_kid_as_associated_data(env: Env) -> None:
    key = env.provider.keys.signing_key()
    (row,) = _rows(env.container.engine)
    assert row.kid == key.kid and row.status == "active" and row.alg == "RS256" and row.use == "sig"
    private = key.as_dict(private=True)
    for member in PRIVATE_MEMBERS:
        assert private[member] not in row.private_enc
        assert member not in row.public_jwk
    with pytest.raises(ValueError):
        json.loads(row.private_enc)
    opened = json.loads(env.container.cipher.open(row.private_enc, row.kid.encode()))
    assert opened["d"] == private["d"]
    with pytest.raises(InvalidTag):  # copied under another kid, it does not open
        env.container.cipher.open(row.private_enc, b"another-kid")
    with pytest.raises(InvalidTag):  # nor under another data key
        DataCipher(b"\x00" * 32).open(row.private_enc, row.kid.encode())


def test_ensure_active_is_idempotent(env: Env) -> None:
    keys = env.provider.keys
    now = env.container.clock.now()
    assert keys.ensure_active(now) == keys.ensure_active(now) == keys.signing_key().kid
    assert len(_rows(env.container.engine)) == 1


def test_rotation_keeps_old_tokens_valid_until_publish_until(env: Env) -> None:
    keys, verifier, ttl = env.provider.keys, env.provider.verifier, env.container.settings.access_token_ttl
    old_token = _issue(env)
    old_kid = _kid(old_token)
    now = env.container.clock.now()
    new_kid = keys.rotate(now)
    assert new_kid != old_kid

    new_token = _issue(env)
    assert _kid(new_token) == new_kid  # signs with the new key from now on
    assert verifier.verify(old_token, audience="quaygate-api")["jti"]  # the old one still verifies
    assert verifier.verify(new_token, audience="quaygate-api")["jti"]

    old_row = next(r for r in _rows(env.container.engine) if r.kid == old_kid)
    assert old_row.status == "retiring" and old_row.retired_at == now
    assert old_row.publish_until >= now + timedelta(seconds=ttl)
    published = {k["kid"] for k in env.http.get("/oauth2/jwks").json()["keys"]}
    assert published == {old_kid, new_kid}
    assert {k["kid"] for k in keys.jwks(old_row.publish_until - timedelta(seconds=1))["keys"]} == {
        old_kid,
        new_kid,
    }
    assert {k["kid"] for k in keys.jwks(old_row.publish_until + timedelta(seconds=1))["keys"]} == {new_kid}


def test_a_second_rotation_retires_keys_past_publish_until(env: Env) -> None:
    keys = env.provider.keys
    first = keys.signing_key().kid
    now = env.container.clock.now()
    keys.rotate(now)
    third = keys.rotate(now + timedelta(days=1))
    status = {r.kid: r.status for r in _rows(env.container.engine)}
    assert status[first] == "retired" and status[third] == "active"
    assert list(status.values()).count("active") == 1
    assert first not in {k["kid"] for k in keys.jwks(now + timedelta(days=1))["keys"]}


def test_loaded_keys_are_served_from_memory(env: Env) -> None:
    keys, verifier = env.provider.keys, env.provider.verifier
    token = _issue(env)
    queries: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        queries.append(statement)

    sa.event.listen(env.container.engine, "before_cursor_execute", count)
    try:
        for _ in range(50):
            verifier.verify(token, audience="quaygate-api")
            keys.signing_key()
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
    assert cached.signing_key().kid == before == fresh.signing_key().kid
    after = KeyStore(engine, cipher).rotate(now)  # another replica rotates
    assert fresh.signing_key().kid == after
    assert cached.signing_key().kid == before  # until its reload, it keeps signing with the old key


@pytest.mark.parametrize("operation", ["ensure_active", "rotate"])
def test_concurrent_replicas_leave_exactly_one_active_key(pg_engine: sa.Engine, operation: str) -> None:
    cipher = DataCipher(b"\x01" * 32)
    now = utcnow()
    if operation == "rotate":
        KeyStore(pg_engine, cipher).ensure_active(now)
    stores = [KeyStore(pg_engine, cipher) for _ in range(6)]
    for store in stores:
        # Keys made before the race, and a slow insert: without the lock every replica would see no
        # active key (or demote the same one) and add its own.
        key = store._generate()
        store._generate = lambda key=key: key  # type: ignore[method-assign]
        insert = store._insert
        store._insert = lambda *a, insert=insert: (time.sleep(0.05), insert(*a))  # type: ignore[method-assign]
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
    statuses = [r.status for r in _rows(pg_engine)]
    assert statuses.count("active") == 1
    assert len(statuses) == (1 if operation == "ensure_active" else 7)


def test_audit_key_in_the_same_table_is_never_a_token_key(engine: sa.Engine) -> None:
    """The audit trail's Ed25519 key lives in signing_keys too: tokens must never pick or retire it."""
    from release_service.adapters.audit import ensure_audit_key

    cipher = DataCipher(b"\x01" * 32)
    now = utcnow()
    audit = ensure_audit_key(engine, cipher, now)
    keys = KeyStore(engine, cipher)
    kid = keys.ensure_active(now)
    assert kid != audit.kid and keys.signing_key().kid == kid
    keys.rotate(now + timedelta(seconds=1))
    with engine.connect() as conn:
        audit_row = conn.execute(sa.select(signing_keys).where(signing_keys.c.kid == audit.kid)).one()
    assert audit_row.status == "active"
    assert audit.kid not in {k["kid"] for k in keys.jwks()["keys"]}

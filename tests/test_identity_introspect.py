"""Token introspection (RFC 7662): who may ask, what an active token says, and that everything else
is just {"active": false}."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.grants import token_hash
from identity.tokens import sign_access_token
from quaygate.schema import refresh_tokens
from tests.test_identity_grants_support import Lifecycle, dpop_key, dpop_proof, make_lifecycle, thumbprint, utcnow
from tests.test_identity_support import ISSUER, assertion, basic, public_jwks, rsa_key


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path)


def _introspect(env: Lifecycle, token: str, client_id: str, secret: str, **extra: str) -> Any:
    r = env.http.post("/oauth2/introspect", data={"token": token, **extra}, headers=basic(client_id, secret))
    assert r.headers["cache-control"] == "no-store", r.headers
    return r


def test_active_access_token_of_the_asking_client(env: Lifecycle) -> None:
    client_id, secret, org = env.machine("shipping_line")
    token = env.machine_token(client_id, secret)
    r = _introspect(env, token, client_id, secret)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["active"] is True and body["client_id"] == client_id and body["sub"] == client_id
    assert body["iss"] == ISSUER and body["aud"] == "quaygate-api" and body["token_type"] == "Bearer"
    assert body["scope"] == "releases:read releases:write" and body["exp"] > body["iat"]
    assert body["org"] == str(org) and body["jti"]


def test_refresh_token_and_person_claims(env: Lifecycle) -> None:
    client_id, secret, org = env.console()
    pid = env.person(org)
    _, token = env.grant(client_id, pid)
    body = _introspect(env, token, client_id, secret, token_type_hint="refresh_token").json()
    assert body["active"] is True and body["token_type"] == "refresh_token"
    assert body["sub"] == str(pid) and body["client_id"] == client_id
    assert body["acr"] == "urn:quaygate:acr:passkey" and body["amr"] == ["hwk", "user", "mfa"]
    assert isinstance(body["auth_time"], int)
    access = env.refresh(token, client_id, secret).json()["access_token"]
    body = _introspect(env, access, client_id, secret).json()
    assert body["active"] is True and body["sub"] == str(pid) and body["acr"] == "urn:quaygate:acr:passkey"
    # The rotated refresh token is no longer active.
    assert _introspect(env, token, client_id, secret).json() == {"active": False}


def test_dpop_bound_token_says_so(env: Lifecycle) -> None:
    client_id = env.driver_app()
    key = dpop_key()
    _, token = env.grant(client_id, env.person(), scope="openid offline_access", dpop_jkt=thumbprint(key))
    access = env.refresh(token, client_id, dpop=dpop_proof(key)).json()["access_token"]
    admin, admin_secret, _ = env.machine("admin")
    body = _introspect(env, access, admin, admin_secret).json()
    assert body["token_type"] == "DPoP" and body["cnf"] == {"jkt": thumbprint(key)}


def test_revoked_expired_and_unknown_tokens_are_inactive(env: Lifecycle) -> None:
    client_id, secret, _ = env.machine("shipping_line")
    token = env.machine_token(client_id, secret)
    assert _introspect(env, token, client_id, secret).json()["active"] is True
    assert env.http.post("/oauth2/revoke", data={"token": token}, headers=basic(client_id, secret)).status_code == 200
    assert _introspect(env, token, client_id, secret).json() == {"active": False}

    now = int(time.time())
    expired = sign_access_token({"iss": ISSUER, "sub": client_id, "aud": "quaygate-api", "exp": now - 120,
                                 "iat": now - 720, "jti": "old", "client_id": client_id, "scope": "releases:read"},
                                env.provider.keys.signing_key())
    assert _introspect(env, expired, client_id, secret).json() == {"active": False}
    for junk in ("qgr_nope", "a.b.c", "x" * 9000):
        assert _introspect(env, junk, client_id, secret).json() == {"active": False}

    console, console_secret, org = env.console()
    _, refresh = env.grant(console, env.person(org))
    with env.engine.begin() as conn:
        conn.execute(refresh_tokens.update().where(refresh_tokens.c.token_hash == token_hash(refresh))
                     .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert _introspect(env, refresh, console, console_secret).json() == {"active": False}


def test_tokens_of_another_client_are_inactive_unless_the_asker_is_admin(env: Lifecycle) -> None:
    owner, owner_secret, org = env.machine("shipping_line")
    other, other_secret, _ = env.machine("shipping_line")
    token = env.machine_token(owner, owner_secret)
    assert _introspect(env, token, other, other_secret).json() == {"active": False}
    console, console_secret, corg = env.console()
    _, refresh = env.grant(console, env.person(corg))
    assert _introspect(env, refresh, other, other_secret).json() == {"active": False}
    admin, admin_secret, _ = env.machine("admin")
    assert _introspect(env, token, admin, admin_secret).json()["client_id"] == owner
    assert _introspect(env, refresh, admin, admin_secret).json()["client_id"] == console


def test_client_authentication_is_required(env: Lifecycle) -> None:
    client_id, secret, _ = env.machine("shipping_line")
    token = env.machine_token(client_id, secret)
    anonymous = env.http.post("/oauth2/introspect", data={"token": token})
    assert anonymous.status_code in (400, 401) and anonymous.json()["error"] == "invalid_client"
    wrong = env.http.post("/oauth2/introspect", data={"token": token}, headers=basic(client_id, "wrong"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    # A public client cannot introspect (it holds no credential).
    driver = env.driver_app()
    public = env.http.post("/oauth2/introspect", data={"token": token, "client_id": driver})
    assert public.status_code in (400, 401) and public.json()["error"] == "invalid_client"
    missing = env.http.post("/oauth2/introspect", data={}, headers=basic(client_id, secret))
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


def test_private_key_jwt_client_with_single_use_assertion(env: Lifecycle) -> None:
    key = rsa_key()
    from identity.bootstrap import create_client
    from tests.test_identity_support import add_org

    org = add_org(env.engine, "shipping_line")
    client_id, _ = create_client(env.engine, name="pkj", role="shipping_line", organisation_id=org,
                                 auth_method="private_key_jwt", jwks=public_jwks(key), now=utcnow())
    assertion_jwt = assertion(key, client_id, aud=ISSUER)
    form = {"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion_jwt}
    r = env.http.post("/oauth2/introspect", data={"token": "qgr_x", **form})
    assert r.status_code == 200 and r.json() == {"active": False}
    replay = env.http.post("/oauth2/introspect", data={"token": "qgr_x", **form})
    assert replay.status_code in (400, 401) and replay.json()["error"] == "invalid_client"

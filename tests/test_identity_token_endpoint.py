"""The token endpoint: client credentials with client secrets and private_key_jwt (RFC 6749 §4.4,
RFC 7523), its OAuth error form (RFC 6749 §5.2), discovery and the JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from identity.domain.roles import RegistrationRefused
from quaygate.cache import RedisCache
from quaygate.schema import audit_log
from tests.test_identity_support import (
    ISSUER,
    TERMINAL,
    TOKEN_ENDPOINT,
    Env,
    assertion,
    assertion_form,
    basic,
    make_env,
    public_jwks,
    rsa_key,
)


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Env]:
    yield from make_env(engine, tmp_path)


CC = {"grant_type": "client_credentials"}


def _assert_oauth_error(resp, status: int, error: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == error
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["content-type"].startswith("application/json")


def test_client_secret_basic_gives_a_token_the_verifier_accepts(env: Env) -> None:
    client_id, secret, org = env.client("shipping_line")
    resp = env.token(CC, headers=basic(client_id, secret))
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == env.container.settings.access_token_ttl
    assert body["scope"] == "releases:read releases:write"
    assert "refresh_token" not in body  # RFC 6749 §4.4.3
    claims = env.provider.verifier.verify(body["access_token"], audience="quaygate-api")
    assert claims["iss"] == ISSUER and claims["sub"] == client_id and claims["client_id"] == client_id
    assert claims["aud"] == "quaygate-api"
    assert claims["org"] == str(org) and claims["org_kind"] == "shipping_line"
    assert claims["role"] == "shipping_line" and claims["scope"] == "releases:read releases:write"
    assert claims["exp"] - claims["iat"] == env.container.settings.access_token_ttl
    assert claims["jti"] and "terminal" not in claims
    # Every token is on the audit trail, a machine's too, named by its jti (never the token itself).
    with env.container.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log.c.actor, audit_log.c.subject, audit_log.c.data)
                            .where(audit_log.c.kind == "identity.token.issued")).all()
    assert [(r.actor, r.subject, r.data) for r in rows] == [(
        {"client_id": client_id}, client_id,
        {"grant_type": "client_credentials", "jti": claims["jti"], "scope": "releases:read releases:write",
         "dpop": False})]
    assert body["access_token"] not in json.dumps([r.data for r in rows])


def test_client_secret_post_works(env: Env) -> None:
    client_id, secret, _ = env.client("customs", auth_method="client_secret_post")
    resp = env.token({**CC, "client_id": client_id, "client_secret": secret})
    assert resp.status_code == 200, resp.text
    assert (
        env.provider.verifier.verify(resp.json()["access_token"], audience="quaygate-api")["role"]
        == "customs"
    )


def test_wrong_secret_is_invalid_client_401(env: Env) -> None:
    client_id, secret, _ = env.client("shipping_line")
    resp = env.token(CC, headers=basic(client_id, secret + "x"))
    _assert_oauth_error(resp, 401, "invalid_client")
    assert resp.headers["www-authenticate"].startswith("Basic")


def test_secret_client_cannot_use_another_method(env: Env) -> None:
    client_id, secret, _ = env.client("shipping_line")  # registered for client_secret_basic
    _assert_oauth_error(
        env.token({**CC, "client_id": client_id, "client_secret": secret}), 401, "invalid_client"
    )


def test_gate_token_has_both_audiences_and_its_terminal(env: Env) -> None:
    client_id, secret, _ = env.client("terminal_gate")
    token = env.token(CC, headers=basic(client_id, secret)).json()["access_token"]
    claims = env.provider.verifier.verify(token, audience="quaygate-gate")
    assert claims["aud"] == ["quaygate-api", "quaygate-gate"]
    assert (
        claims["terminal"] == TERMINAL
        and claims["scope"] == "gate:verify"
        and claims["org_kind"] == "terminal"
    )


def test_scope_outside_the_clients_is_invalid_scope(env: Env) -> None:
    client_id, secret, _ = env.client("terminal_gate")
    refused = env.token({**CC, "scope": "releases:write"}, headers=basic(client_id, secret))
    _assert_oauth_error(refused, 400, "invalid_scope")
    assert "releases:write" in refused.json()["error_description"]  # the scope the client may not have
    _assert_oauth_error(
        env.token({**CC, "scope": "no-such"}, headers=basic(client_id, secret)), 400, "invalid_scope"
    )
    ok = env.token({**CC, "scope": "gate:verify"}, headers=basic(client_id, secret))
    assert ok.json()["scope"] == "gate:verify"


def test_malformed_requests_are_invalid_request(env: Env) -> None:
    client_id, secret, _ = env.client("shipping_line")
    auth = basic(client_id, secret)
    repeated = env.http.post(
        "/oauth2/token",
        content="grant_type=client_credentials&grant_type=client_credentials",
        headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
    )
    _assert_oauth_error(repeated, 400, "invalid_request")  # RFC 6749 §3.2
    two_methods = env.token({**CC, "client_id": client_id, "client_secret": secret}, headers=auth)
    _assert_oauth_error(two_methods, 400, "invalid_request")  # RFC 6749 §2.3
    as_json = env.http.post("/oauth2/token", json=CC, headers=auth)
    _assert_oauth_error(as_json, 400, "invalid_request")
    too_big = env.token({**CC, "pad": "x" * 20000}, headers=auth)
    _assert_oauth_error(too_big, 400, "invalid_request")
    _assert_oauth_error(env.token({"grant_type": "password"}, headers=auth), 400, "unsupported_grant_type")


# ---- private_key_jwt (RFC 7523 §2.2) ---------------------------------------------------------------


@pytest.mark.parametrize("aud", [TOKEN_ENDPOINT, ISSUER, [ISSUER]])
def test_private_key_jwt_with_token_endpoint_or_issuer_audience(env: Env, aud: object) -> None:
    key = rsa_key()
    client_id, secret, _ = env.client(
        "transport_operator", auth_method="private_key_jwt", jwks=public_jwks(key)
    )
    assert secret is None
    resp = env.token(assertion_form(assertion(key, client_id, aud=aud)))
    assert resp.status_code == 200, resp.text
    claims = env.provider.verifier.verify(resp.json()["access_token"], audience="quaygate-api")
    assert claims["client_id"] == client_id and claims["role"] == "transport_operator"


def test_private_key_jwt_replayed_jti_is_refused(env: Env) -> None:
    key = rsa_key()
    client_id, _, _ = env.client("shipping_line", auth_method="private_key_jwt", jwks=public_jwks(key))
    token = assertion(key, client_id)
    assert env.token(assertion_form(token)).status_code == 200
    _assert_oauth_error(env.token(assertion_form(token)), 401, "invalid_client")
    # A new assertion with the same jti is a replay too (RFC 7523 §3 item 7).
    same_jti = assertion(key, client_id, jti=_jti(token))
    _assert_oauth_error(env.token(assertion_form(same_jti)), 401, "invalid_client")


def test_private_key_jwt_replay_is_caught_across_replicas_with_redis(env: Env, redis_url: str) -> None:
    env.container.cache = RedisCache(redis_url)
    env.app.state.identity = None  # rebuild the provider on the shared cache
    key = rsa_key()
    client_id, _, _ = env.client("shipping_line", auth_method="private_key_jwt", jwks=public_jwks(key))
    token = assertion(key, client_id)
    assert env.token(assertion_form(token)).status_code == 200
    env.app.state.identity = None  # a second replica: its own provider, the same Redis
    _assert_oauth_error(env.token(assertion_form(token)), 401, "invalid_client")
    env.container.cache.close()


@pytest.mark.parametrize(
    "aud",
    [
        "https://elsewhere.example/token",
        ISSUER + "/oauth2/jwks",
        [TOKEN_ENDPOINT, "https://elsewhere.example"],  # Authlib alone would take any list holding ours
        [],
    ],
)
def test_private_key_jwt_wrong_audience_is_refused(env: Env, aud: object) -> None:
    key = rsa_key()
    client_id, _, _ = env.client("shipping_line", auth_method="private_key_jwt", jwks=public_jwks(key))
    _assert_oauth_error(env.token(assertion_form(assertion(key, client_id, aud=aud))), 401, "invalid_client")


@pytest.mark.parametrize("exp_in", [-120, 3600])
def test_private_key_jwt_expired_or_long_lived_assertion_is_refused(env: Env, exp_in: int) -> None:
    key = rsa_key()
    client_id, _, _ = env.client("shipping_line", auth_method="private_key_jwt", jwks=public_jwks(key))
    _assert_oauth_error(
        env.token(assertion_form(assertion(key, client_id, exp_in=exp_in))), 401, "invalid_client"
    )


def test_private_key_jwt_unknown_client_or_foreign_key_is_refused(env: Env) -> None:
    key = rsa_key()
    client_id, _, _ = env.client("shipping_line", auth_method="private_key_jwt", jwks=public_jwks(key))
    unknown = assertion(key, "qg-shipping-line-" + uuid.uuid4().hex[:16])
    _assert_oauth_error(env.token(assertion_form(unknown)), 401, "invalid_client")
    _assert_oauth_error(env.token(assertion_form(assertion(rsa_key(), client_id))), 401, "invalid_client")
    _assert_oauth_error(
        env.token(assertion_form(assertion(key, client_id, iss="someone-else"))), 401, "invalid_client"
    )


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_private_key_jwt_symmetric_or_unsigned_assertion_is_refused(env: Env, alg: str) -> None:
    """alg none, and HMAC keyed with the client's own public key (what a thief of nothing can make)."""
    key = rsa_key()
    client_id, _, _ = env.client("shipping_line", auth_method="private_key_jwt", jwks=public_jwks(key))
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": ISSUER, "exp": now + 60, "jti": uuid.uuid4().hex}
    head = _b64(json.dumps({"alg": alg, "kid": key.kid}).encode())
    signing_input = f"{head}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(key.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    forged = signing_input + "." + ("" if alg == "none" else _b64(mac))
    _assert_oauth_error(env.token(assertion_form(forged)), 401, "invalid_client")


def test_private_key_jwt_client_id_must_match_the_assertion(env: Env) -> None:
    key = rsa_key()
    client_id, _, _ = env.client("shipping_line", auth_method="private_key_jwt", jwks=public_jwks(key))
    form = {**assertion_form(assertion(key, client_id)), "client_id": "qg-someone-else"}
    _assert_oauth_error(env.token(form), 401, "invalid_client")


def test_registration_refuses_private_keys_and_mismatched_roles(env: Env) -> None:
    key = rsa_key()
    client_id, _, _ = env.client(
        "shipping_line", auth_method="private_key_jwt", jwks={"keys": [key.as_dict(private=True)]}
    )
    stored = env.provider.clients.find(client_id)
    assert stored is not None and stored.jwks is not None and "d" not in stored.jwks["keys"][0]
    with pytest.raises(RegistrationRefused) as exc:
        env.client("terminal_gate", kind="transport_operator")
    assert exc.value.code == "role_org_kind_mismatch"
    with pytest.raises(RegistrationRefused):
        env.client("shipping_line", auth_method="private_key_jwt")  # no jwks


# ---- discovery and JWKS --------------------------------------------------------------------------


def test_discovery_document(env: Env) -> None:
    resp = env.http.get("/.well-known/openid-configuration")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["issuer"] == ISSUER and doc["token_endpoint"] == TOKEN_ENDPOINT
    assert doc["jwks_uri"] == ISSUER + "/oauth2/jwks"
    assert set(doc["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "none",  # public clients (the driver app) at the code grant, with PKCE
    }
    assert doc["authorization_endpoint"] == ISSUER + "/oauth2/authorize"
    assert doc["response_types_supported"] == ["code"]
    assert doc["code_challenge_methods_supported"] == ["S256"]  # never plain
    assert doc["pushed_authorization_request_endpoint"] == ISSUER + "/oauth2/par"
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert "none" not in doc["token_endpoint_auth_signing_alg_values_supported"]
    assert not any(a.startswith("HS") for a in doc["token_endpoint_auth_signing_alg_values_supported"])
    assert doc["id_token_signing_alg_values_supported"] == ["RS256", "PS256", "ES256"]  # RS256 first: the default
    assert not any(k.startswith("userinfo_") and k.endswith("_alg_values_supported") for k in doc)  # plain JSON
    assert {"releases:read", "gate:verify", "admin"} <= set(doc["scopes_supported"])
    assert env.http.get("/.well-known/oauth-authorization-server").json() == doc


def test_jwks_is_public_and_cacheable(env: Env) -> None:
    resp = env.http.get("/oauth2/jwks")
    assert resp.status_code == 200
    assert resp.headers["cache-control"].startswith("public, max-age=")
    keys = resp.json()["keys"]  # one per algorithm (tests/test_identity_keys.py has the details)
    assert sorted(k["alg"] for k in keys) == ["ES256", "PS256", "RS256"] and all(k["kid"] for k in keys)
    assert not any({"d", "p", "q", "dp", "dq", "qi"} & set(k) for k in keys)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jti(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])

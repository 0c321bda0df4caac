"""Dynamic client registration (RFC 7591) with initial access tokens, and its management (RFC 7592)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bootstrap import create_client
from identity.domain.roles import RegistrationRefused
from identity.registration import management_for
from identity.registration.service import ClientManagement, RegistrationError
from quaygate.schema import audit_log, initial_access_tokens, oauth_clients
from tests.test_identity_dpop_support import b64
from tests.test_identity_grants_support import CONSOLE_REDIRECT, Lifecycle, make_lifecycle, utcnow
from tests.test_identity_support import TERMINAL, add_org, assertion, assertion_form, basic, public_jwks, rsa_key


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path)


def _iat(env: Lifecycle, org: uuid.UUID | None = None, ttl: int | None = None) -> str:
    token, _ = management_for(env.app).create_initial_access_token(
        organisation_id=org, created_by="qg-admin-test", ttl=ttl, now=utcnow())
    return token


def _register(env: Lifecycle, iat: str | None, doc: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {iat}"} if iat else {}
    return env.http.post("/oauth2/register", json=doc, headers=headers)


def test_a_machine_client_registers_and_gets_tokens(env: Lifecycle) -> None:
    org = add_org(env.engine, "shipping_line")
    r = _register(env, _iat(env, org), {"client_name": "Line back end", "grant_types": ["client_credentials"],
                                        "contacts": ["ops@line.example"], "unknown_member": 1})
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["cache-control"] == "no-store"
    assert body["quaygate_role"] == "shipping_line" and body["quaygate_organisation_id"] == str(org)
    assert body["token_endpoint_auth_method"] == "client_secret_basic" and body["client_secret_expires_at"] == 0
    assert body["registration_client_uri"].endswith("/oauth2/register/" + body["client_id"])
    assert body["registration_access_token"].startswith("qgrat_") and "unknown_member" not in body
    assert body["contacts"] == ["ops@line.example"]
    token = env.machine_token(body["client_id"], body["client_secret"])
    claims = env.provider.verifier.verify(token, audience="quaygate-api")
    assert claims["org"] == str(org) and claims["role"] == "shipping_line"
    with env.engine.connect() as conn:
        row = conn.execute(sa.select(oauth_clients).where(oauth_clients.c.client_id == body["client_id"])).one()
        kinds = conn.execute(sa.select(audit_log.c.kind)).scalars().all()
    assert row.registration_token_hash and body["registration_access_token"] not in str(row._mapping)
    assert body["client_secret"] not in str(row._mapping)
    assert "identity.client.registered" in kinds


def test_private_key_jwt_console_and_gate(env: Lifecycle) -> None:
    key = rsa_key()
    org = add_org(env.engine, "release_party")
    r = _register(env, _iat(env, org), {
        "quaygate_role": "console", "token_endpoint_auth_method": "private_key_jwt", "jwks": public_jwks(key),
        "redirect_uris": [CONSOLE_REDIRECT], "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"], "scope": "openid offline_access releases:read"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert "client_secret" not in body and body["require_pushed_authorization_requests"] is True
    assert body["redirect_uris"] == [CONSOLE_REDIRECT] and body["jwks"]["keys"][0]["kid"] == key.kid
    terminal = add_org(env.engine, "terminal", TERMINAL)
    gate = _register(env, _iat(env, terminal), {"quaygate_role": "terminal_gate",
                                                 "token_endpoint_auth_method": "private_key_jwt",
                                                 "jwks": public_jwks(key)})
    assert gate.status_code == 201, gate.text
    assert gate.json()["quaygate_terminal"] == TERMINAL
    r = env.http.post("/oauth2/token", data=assertion_form(assertion(key, gate.json()["client_id"])))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"quaygate_role": "admin"}, "invalid_client_metadata"),  # never dynamically
        ({"quaygate_role": "customs"}, "invalid_client_metadata"),  # role does not fit a shipping line
        ({"quaygate_role": "pilot"}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata"),  # no jwks
        ({"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": "https://x.example/jwks"},
         "invalid_client_metadata"),
        ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}},
         "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "client_secret_jwt"}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "none"}, "invalid_client_metadata"),  # a back end must authenticate
        ({"grant_types": ["authorization_code"]}, "invalid_client_metadata"),
        ({"scope": "admin"}, "invalid_client_metadata"),
        ({"redirect_uris": ["https://line.example/cb"]}, "invalid_redirect_uri"),  # machine client
        ({"software_statement": "eyJ..."}, "invalid_software_statement"),
        ({"client_uri": "http://line.example"}, "invalid_client_metadata"),
        # OIDC Registration §2: only algorithms we hold a key for; never none, never HMAC.
        ({"id_token_signed_response_alg": "none"}, "invalid_client_metadata"),
        ({"id_token_signed_response_alg": "HS256"}, "invalid_client_metadata"),
        ({"id_token_signed_response_alg": "ES384"}, "invalid_client_metadata"),
        ({"id_token_signed_response_alg": ["ES256"]}, "invalid_client_metadata"),
        # Review 161, finding 2: a minimum no login reaches (face: a step-up no page offers).
        ({"default_acr_values": ["urn:quaygate:acr:face"]}, "invalid_client_metadata"),
    ],
)
def test_metadata_refused_and_the_token_stays_unused(env: Lifecycle, doc: dict[str, Any], error: str) -> None:
    org = add_org(env.engine, "shipping_line")
    iat = _iat(env, org)
    r = _register(env, iat, doc)
    assert r.status_code == 400 and r.json()["error"] == error, r.text
    assert _register(env, iat, {}).status_code == 201  # a refusal does not use the token up


_ITSME = "https://idp.e2e.itsme.services/v2/.well-known/openid-configuration"


@pytest.mark.parametrize(("upstreams", "registered"), [
    ({}, False),
    ({"itsme": {"discovery_url": _ITSME, "client_id": "quaygate", "level": "basic"}}, False),
    ({"itsme": {"discovery_url": _ITSME, "client_id": "quaygate", "level": "advanced"}}, True),
], ids=["none", "basic", "advanced"])
def test_default_acr_values_of_the_upstream_level_only_where_a_login_reaches_it(
        engine: sa.Engine, tmp_path: Path, upstreams: dict[str, Any], registered: bool) -> None:
    """Review 164, finding 1: urn:quaygate:acr:upstream as a client's minimum only on a port whose upstream
    logs in at level advanced; without one (the login page offers passkeys only) or with itsme at level
    basic (urn:quaygate:acr:upstream:basic meets no level) every authorization would be unmet."""
    for env in make_lifecycle(engine, tmp_path, upstreams=upstreams):
        org = add_org(env.engine, "shipping_line")
        iat = _iat(env, org)
        r = _register(env, iat, {"default_acr_values": ["urn:quaygate:acr:upstream"]})
        if registered:
            assert r.status_code == 201 and r.json()["default_acr_values"] == ["urn:quaygate:acr:upstream"], r.text
            continue
        assert r.status_code == 400 and r.json() == {
            "error": "invalid_client_metadata",
            "error_description": "default_acr_values: at least one a login here reaches, urn:quaygate:acr:passkey."}
        assert _register(env, iat, {"default_acr_values": ["urn:quaygate:acr:passkey"]}).status_code == 201


def _rsa_jwk(bits: int, e: int) -> dict[str, str]:
    n = (1 << (bits - 1)) | 1  # odd, of exactly ``bits`` bits: the rule reads sizes, and no prime is needed
    return {"kty": "RSA", "n": b64(n.to_bytes(-(-bits // 8), "big")),
            "e": b64(e.to_bytes(-(-e.bit_length() // 8), "big"))}


@pytest.mark.parametrize(("bits", "e"), [(2048, 2**2046 + 1), (2048, 3), (4608, 65537), (1024, 65537)])
def test_rsa_keys_are_registered_only_of_2048_to_4096_bits_with_exponent_65537(env: Lifecycle, bits: int,
                                                                                e: int) -> None:
    """Review 129, finding 3: the size and exponent of a client's key set what checking its assertions
    costs (identity.domain.rsa_keys). Refused through RFC 7591 and the registry (CLI, admin API) alike."""
    jwks = {"keys": [_rsa_jwk(bits, e)]}
    org = add_org(env.engine, "shipping_line")
    iat = _iat(env, org)
    r = _register(env, iat, {"token_endpoint_auth_method": "private_key_jwt", "jwks": jwks})
    assert r.status_code == 400 and r.json()["error"] == "invalid_client_metadata", r.text
    assert "65537" in r.json()["error_description"]
    with pytest.raises(RegistrationRefused):
        create_client(env.engine, name="x", role="shipping_line", organisation_id=org,
                      auth_method="private_key_jwt", jwks=jwks, now=utcnow())
    good = {"keys": [rsa_key().as_dict(private=False)]}
    assert _register(env, iat, {"token_endpoint_auth_method": "private_key_jwt", "jwks": good}).status_code == 201


@pytest.mark.parametrize(
    ("uris", "ok"),
    [
        (["https://console.example.com/cb"], True),
        (["http://127.0.0.1:8080/cb"], True),
        (["http://console.example.com/cb"], False),
        (["https://console.example.com/cb#frag"], False),
        (["be.quaygate.driver:/cb"], False),  # private-use schemes are for the native driver app
        (["javascript:alert(1)"], False),
        ([], False),  # the code flow needs one
    ],
)
def test_redirect_uris_of_a_console(env: Lifecycle, uris: list[str], ok: bool) -> None:
    r = _register(env, _iat(env), {"quaygate_role": "console", "redirect_uris": uris})
    if ok:
        assert r.status_code == 201, r.text
    else:
        assert r.status_code == 400 and r.json()["error"] == "invalid_redirect_uri", r.text


def test_driver_app_registers_as_a_public_client(env: Lifecycle) -> None:
    r = _register(env, _iat(env), {"token_endpoint_auth_method": "none", "redirect_uris": ["be.quaygate.app:/cb"]})
    assert r.status_code == 201, r.text
    assert r.json()["quaygate_role"] == "driver_app" and "client_secret" not in r.json()


def test_id_token_signed_response_alg_is_registered_and_updated(env: Lifecycle) -> None:
    r = _register(env, _iat(env), {"token_endpoint_auth_method": "none", "redirect_uris": ["be.quaygate.app:/cb"],
                                   "id_token_signed_response_alg": "ES256"})
    assert r.status_code == 201, r.text
    reg = r.json()
    assert reg["id_token_signed_response_alg"] == "ES256"
    assert env.provider.clients.find(reg["client_id"]).id_token_alg == "ES256"  # type: ignore[union-attr]
    doc = {k: reg[k] for k in ("client_id", "redirect_uris", "token_endpoint_auth_method")}
    refused = _manage(env, "PUT", reg["client_id"], reg["registration_access_token"],
                      {**doc, "id_token_signed_response_alg": "none"})
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_client_metadata"
    rat = _manage(env, "GET", reg["client_id"], reg["registration_access_token"]).json()["registration_access_token"]
    updated = _manage(env, "PUT", reg["client_id"], rat, {**doc, "id_token_signed_response_alg": "PS256"})
    assert updated.status_code == 200 and updated.json()["id_token_signed_response_alg"] == "PS256"
    assert env.provider.clients.find(reg["client_id"]).id_token_alg == "PS256"  # type: ignore[union-attr]
    # Registered without it: RS256, the OIDC default.
    plain = _register(env, _iat(env), {"token_endpoint_auth_method": "none", "redirect_uris": ["be.quaygate.app:/cb"]})
    assert env.provider.clients.find(plain.json()["client_id"]).id_token_alg == "RS256"  # type: ignore[union-attr]
    # The CLI and the demo seeding register through ClientRegistry, which checks it the same way.
    with pytest.raises(RegistrationRefused):
        create_client(env.engine, name="x", role="driver_app", organisation_id=None, auth_method="none",
                      redirect_uris=["be.quaygate.app:/cb"], extra_metadata={"id_token_signed_response_alg": "HS256"},
                      now=utcnow())


def test_initial_access_token_missing_unknown_used_expired(env: Lifecycle) -> None:
    doc: dict[str, Any] = {}
    missing = _register(env, None, doc)
    assert missing.status_code == 401 and missing.json()["error"] == "invalid_token"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert _register(env, "qgiat_made-up", doc).status_code == 401
    iat = _iat(env, add_org(env.engine, "shipping_line"))
    assert _register(env, iat, doc).status_code == 201
    used = _register(env, iat, doc)  # single use
    assert used.status_code == 401 and used.json()["error"] == "invalid_token"
    expired = _iat(env, add_org(env.engine, "shipping_line"))
    with env.engine.begin() as conn:
        conn.execute(initial_access_tokens.update().where(initial_access_tokens.c.used_at.is_(None))
                     .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert _register(env, expired, doc).status_code == 401
    # Audited: the refusals of tokens we made (used, expired). Not: no token, a token we never made;
    # they concern nothing of ours, anyone can send them, and each would be a permanent row
    # (identity.audit's rule; review 129, finding 2). They are logged only.
    assert sorted(_refusals(env, "identity.client.register.refused")) == ["iat_expired", "iat_used"]


def _refusals(env: Lifecycle, kind: str) -> list[str]:
    with env.engine.connect() as conn:
        return [r["reason"] for r in conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == kind)
                                                  .order_by(audit_log.c.id)).scalars()]


def test_initial_access_token_ttl_and_organisation_are_checked(env: Lifecycle) -> None:
    m = management_for(env.app)
    with pytest.raises(RegistrationError):
        m.create_initial_access_token(organisation_id=None, created_by="a", ttl=10, now=utcnow())
    with pytest.raises(RegistrationError):
        m.create_initial_access_token(organisation_id=uuid.uuid4(), created_by="a", ttl=None, now=utcnow())


def _manage(env: Lifecycle, method: str, client_id: str, rat: str, doc: dict[str, Any] | None = None) -> Any:
    return env.http.request(method, f"/oauth2/register/{client_id}", json=doc,
                            headers={"Authorization": f"Bearer {rat}"})


def test_read_update_delete_with_the_registration_access_token(env: Lifecycle) -> None:
    org = add_org(env.engine, "release_party")
    reg = _register(env, _iat(env, org), {"quaygate_role": "console", "redirect_uris": [CONSOLE_REDIRECT],
                                          "client_name": "Forwarder console"}).json()
    cid, rat = reg["client_id"], reg["registration_access_token"]

    read = _manage(env, "GET", cid, rat)
    assert read.status_code == 200 and read.json()["client_name"] == "Forwarder console"
    assert "client_secret" not in read.json()
    rat2 = read.json()["registration_access_token"]
    assert rat2 != rat and _manage(env, "GET", cid, rat).status_code == 401  # rotated on use

    doc = {"client_id": cid, "client_name": "Renamed", "redirect_uris": ["https://new.example/cb"]}
    updated = _manage(env, "PUT", cid, rat2, doc)
    assert updated.status_code == 200, updated.text
    assert updated.json()["client_name"] == "Renamed" and updated.json()["redirect_uris"] == ["https://new.example/cb"]
    rat3 = updated.json()["registration_access_token"]

    for bad in ({**doc, "client_id": "someone-else"}, {**doc, "registration_access_token": rat3},
                {**doc, "quaygate_role": "driver_app"}, {**doc, "token_endpoint_auth_method": "private_key_jwt"},
                {**doc, "client_secret": "guess"}):
        r = _manage(env, "PUT", cid, rat3, bad)
        assert r.status_code == 400 and r.json()["error"] == "invalid_client_metadata", (bad, r.text)
    ok = _manage(env, "PUT", cid, rat3, {**doc, "client_secret": reg["client_secret"]})
    assert ok.status_code == 200, ok.text  # refused updates left the token as it was
    rat4 = ok.json()["registration_access_token"]

    # The token endpoint looks the client up (and remembers it) before the delete...
    before = env.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                           headers=basic(cid, reg["client_secret"]))
    assert before.status_code == 400 and before.json()["error"] == "unauthorized_client", before.text
    assert _manage(env, "DELETE", cid, rat4).status_code == 204
    assert _manage(env, "GET", cid, rat4).status_code == 401
    with env.engine.connect() as conn:
        assert conn.execute(sa.select(oauth_clients.c.active).where(oauth_clients.c.client_id == cid)).scalar() is False
    token = env.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                          headers=basic(cid, reg["client_secret"]))
    assert token.status_code == 401  # a deleted client gets nothing


def test_wrong_registration_token_is_refused(env: Lifecycle) -> None:
    a = _register(env, _iat(env, add_org(env.engine, "shipping_line")), {}).json()
    b = _register(env, _iat(env, add_org(env.engine, "shipping_line")), {}).json()
    for method, doc in (("GET", None), ("PUT", {"client_id": a["client_id"], "client_name": "x"}), ("DELETE", None)):
        for rat in (b["registration_access_token"], "qgrat_guess", a["client_secret"]):
            r = _manage(env, method, a["client_id"], rat, doc)
            assert r.status_code == 401 and r.json()["error"] == "invalid_token", (method, r.text)
    assert _refusals(env, "identity.client.manage.refused") == ["rat_invalid"] * 9  # in a real client's name
    for method in ("GET", "PUT", "DELETE"):  # about nothing of ours: logged, never audited (review 129, 2)
        assert _manage(env, method, "qg-unknown", a["registration_access_token"]).status_code == 401
        assert env.http.request(method, "/oauth2/register/qg-unknown", json={}).status_code == 401
        r = env.http.request(method, f"/oauth2/register/{a['client_id']}", json={})
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"  # no token: nothing to check
    assert len(_refusals(env, "identity.client.manage.refused")) == 9
    assert _manage(env, "GET", a["client_id"], a["registration_access_token"]).status_code == 200


def test_delete_revokes_the_clients_grants(env: Lifecycle) -> None:
    reg = _register(env, _iat(env, add_org(env.engine, "release_party")),
                    {"quaygate_role": "console", "redirect_uris": [CONSOLE_REDIRECT]}).json()
    cid = reg["client_id"]
    _, refresh = env.grant(cid, env.person())
    assert _manage(env, "DELETE", cid, reg["registration_access_token"]).status_code == 204
    with env.engine.connect() as conn:
        found = env.grants.find_by_refresh(conn, refresh)
    assert found is not None and found[0].revoked


def test_one_initial_access_token_registers_once_under_concurrency(pg_engine: sa.Engine) -> None:
    from identity.grants import GrantStore, RevocationList
    from quaygate.cache import MemoryCache

    m = ClientManagement(pg_engine, GrantStore(pg_engine, RevocationList(MemoryCache()), refresh_ttl=60),
                         issuer="http://127.0.0.1:8000")
    token, _ = m.create_initial_access_token(organisation_id=add_org(pg_engine, "shipping_line"),
                                             created_by="t", ttl=None, now=utcnow())
    barrier, results, lock = threading.Barrier(8), [], threading.Lock()

    def attempt() -> None:
        barrier.wait()
        try:
            m.register(token, {}, now=utcnow())
            outcome = "ok"
        except RegistrationError as exc:
            outcome = exc.reason
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["iat_used"] * 7 + ["ok"]
    with pg_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(oauth_clients)).scalar() == 1

"""The admin API (/admin/v1): only an admin client's token gets in; what it does is audited."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import audit_log, memberships
from tests.test_identity_grants_support import Lifecycle, make_lifecycle
from tests.test_identity_support import add_org, basic

ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/admin/v1/initial-access-tokens", {}),
    ("GET", "/admin/v1/clients", None),
    ("POST", "/admin/v1/clients", {"quaygate_role": "console", "redirect_uris": ["https://c.example/cb"]}),
    ("POST", "/admin/v1/clients/qg-x:deactivate", None),
    ("POST", "/admin/v1/clients/qg-x/secret", {"revoke_tokens": True}),
    ("POST", "/admin/v1/persons", {"given_name": "A", "family_name": "B"}),
    ("POST", "/admin/v1/persons/00000000-0000-4000-8000-000000000001/memberships",
     {"organisation_id": "00000000-0000-4000-8000-000000000002", "role": "driver"}),
]


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path)


def _admin(env: Lifecycle) -> dict[str, str]:
    client_id, secret, _ = env.machine("admin")
    return {"Authorization": f"Bearer {env.machine_token(client_id, secret)}"}


def _problem(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_refuses_missing_invalid_and_non_admin_tokens(
    env: Lifecycle, method: str, path: str, body: dict[str, Any] | None
) -> None:
    _problem(env.http.request(method, path, json=body), 401, "invalid_request")
    _problem(env.http.request(method, path, json=body, headers={"Authorization": "Bearer a.b.c"}), 401,
             "invalid_token")
    line, secret, _ = env.machine("shipping_line")
    line_token = {"Authorization": f"Bearer {env.machine_token(line, secret)}"}
    r = env.http.request(method, path, json=body, headers=line_token)
    _problem(r, 403, "insufficient_scope")
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    # An admin client's token without the admin scope is not enough either.
    admin, admin_secret, _ = env.machine("admin")
    narrow = {"Authorization": f"Bearer {env.machine_token(admin, admin_secret, scope='releases:read')}"}
    _problem(env.http.request(method, path, json=body, headers=narrow), 403, "insufficient_scope")


def test_a_revoked_admin_token_is_refused(env: Lifecycle) -> None:
    admin, secret, _ = env.machine("admin")
    token = env.machine_token(admin, secret)
    assert env.http.get("/admin/v1/clients", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    env.http.post("/oauth2/revoke", data={"token": token}, headers=basic(admin, secret))
    _problem(env.http.get("/admin/v1/clients", headers={"Authorization": f"Bearer {token}"}), 401, "invalid_token")


def test_initial_access_token_for_an_organisation_then_registration(env: Lifecycle) -> None:
    auth = _admin(env)
    org = add_org(env.engine, "transport_operator")
    r = env.http.post("/admin/v1/initial-access-tokens", json={"organisation_id": str(org), "ttl": 3600},
                      headers=auth)
    assert r.status_code == 201, r.text
    iat = r.json()["initial_access_token"]
    reg = env.http.post("/oauth2/register", json={}, headers={"Authorization": f"Bearer {iat}"})
    assert reg.status_code == 201 and reg.json()["quaygate_role"] == "transport_operator"
    _problem(env.http.post("/admin/v1/initial-access-tokens", json={"organisation_id": str(uuid.uuid4())},
                           headers=auth), 422, "organisation_unknown")
    _problem(env.http.post("/admin/v1/initial-access-tokens", json={"ttl": 5}, headers=auth), 422, "invalid_ttl")


def test_register_list_and_deactivate_clients(env: Lifecycle) -> None:
    auth = _admin(env)
    pa = add_org(env.engine, "port_authority")
    r = env.http.post("/admin/v1/clients", json={"role": "admin", "organisation_id": str(pa),
                                                 "grant_types": ["client_credentials"]}, headers=auth)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["quaygate_role"] == "admin" and created["client_secret"]
    assert "registration_access_token" not in created  # managed by admins, not by RFC 7592
    listed = env.http.get("/admin/v1/clients", headers=auth).json()["items"]
    assert created["client_id"] in {c["client_id"] for c in listed}
    assert all("client_secret" not in c for c in listed)
    _problem(env.http.post("/admin/v1/clients", json={"role": "terminal_gate"}, headers=auth), 422,
             "role_org_kind_mismatch")
    _problem(env.http.post("/admin/v1/clients", json={"role": "console", "redirect_uris": ["https://c.example/cb"],
                                                      "id_token_signed_response_alg": "HS256"}, headers=auth),
             422, "invalid_client_metadata")
    done = env.http.post(f"/admin/v1/clients/{created['client_id']}:deactivate", headers=auth)
    assert done.status_code == 200 and done.json()["active"] is False
    again = env.http.post(f"/admin/v1/clients/{created['client_id']}:deactivate", headers=auth)
    _problem(again, 404, "not_found")
    t = env.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                      headers=basic(created["client_id"], created["client_secret"]))
    assert t.status_code == 401
    with env.engine.connect() as conn:
        kinds = set(conn.execute(sa.select(audit_log.c.kind)).scalars())
    assert {"identity.admin.client.registered", "identity.admin.client.deactivated"} <= kinds


def test_persons_and_memberships(env: Lifecycle) -> None:
    auth = _admin(env)
    org = add_org(env.engine, "transport_operator")
    r = env.http.post("/admin/v1/persons", json={"given_name": "An", "family_name": "Claes",
                                                 "employer_organisation_id": str(org), "locale": "nl"}, headers=auth)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    m = env.http.post(f"/admin/v1/persons/{pid}/memberships", json={"organisation_id": str(org), "role": "driver"},
                      headers=auth)
    assert m.status_code == 201, m.text
    _problem(env.http.post(f"/admin/v1/persons/{pid}/memberships",
                           json={"organisation_id": str(org), "role": "driver"}, headers=auth), 409,
             "membership_exists")
    _problem(env.http.post(f"/admin/v1/persons/{pid}/memberships",
                           json={"organisation_id": str(org), "role": "captain"}, headers=auth), 422, "invalid_role")
    _problem(env.http.post(f"/admin/v1/persons/{uuid.uuid4()}/memberships",
                           json={"organisation_id": str(org), "role": "driver"}, headers=auth), 404, "not_found")
    with env.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(memberships)).scalar() == 1
        kinds = set(conn.execute(sa.select(audit_log.c.kind)).scalars())
    assert {"identity.admin.person.created", "identity.admin.membership.added"} <= kinds


def test_deactivating_a_client_revokes_the_access_tokens_it_already_has(env: Lifecycle) -> None:
    from identity.grants import RevocationList
    from quaygate.cache import MemoryCache

    auth = _admin(env)
    stolen_id, stolen_secret, _ = env.machine("admin")  # an admin client whose secret leaked
    stolen = env.machine_token(stolen_id, stolen_secret)
    assert env.http.get("/admin/v1/clients", headers={"Authorization": f"Bearer {stolen}"}).status_code == 200

    done = env.http.post(f"/admin/v1/clients/{stolen_id}:deactivate", headers=auth)
    assert done.status_code == 200, done.text

    # Its self-contained token, unexpired, is refused from now on; the other admin's is not.
    _problem(env.http.get("/admin/v1/clients", headers={"Authorization": f"Bearer {stolen}"}), 401,
             "invalid_token")
    assert env.http.get("/admin/v1/clients", headers=auth).status_code == 200
    claims = env.provider.verifier.verify(auth["Authorization"][7:], audience="quaygate-api")
    fresh = RevocationList(MemoryCache())  # a restarted replica, its cache empty
    fresh.reload(env.engine, now=env.container.clock.now())
    stolen_claims = {"jti": "any", "client_id": stolen_id, "iat": claims["iat"]}
    assert fresh.token_revoked(stolen_claims) and not fresh.token_revoked(claims)
    # A token claiming a later iat than the cutoff would pass, but the client can no longer get one.
    assert not fresh.token_revoked({**stolen_claims, "iat": claims["iat"] + 3600})
    assert env.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                         headers=basic(stolen_id, stolen_secret)).status_code == 401

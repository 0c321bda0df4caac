"""A DPoP-bound admin client calls the admin API (RFC 9449): its proof's ``htu`` is the URI as the client
addressed it, the issuer's origin and the path, never what the Host header or a TLS proxy's internal
scheme make of it. So a proof made for the issuer passes, and one made for another host is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bootstrap import create_client
from identity.dpop import access_token_hash
from release_service.domain.parties import OrgKind
from tests.factories import add_org
from tests.test_identity_grants_support import Lifecycle, dpop_key, dpop_proof, make_lifecycle, utcnow
from tests.test_identity_support import ISSUER, basic


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path)


def test_the_admin_api_checks_htu_against_the_issuer(env: Lifecycle) -> None:
    org = add_org(env.engine, OrgKind.PORT_AUTHORITY).organisation_id
    client_id, secret = create_client(env.engine, name="security system", role="admin", organisation_id=org,
                                      now=utcnow(), dpop_bound=True)
    key = dpop_key()
    r = env.http.post("/oauth2/token", data={"grant_type": "client_credentials", "scope": "admin"},
                      headers={**basic(client_id, secret or ""), "DPoP": dpop_proof(key)})
    assert r.status_code == 200 and r.json()["token_type"] == "DPoP", r.text
    token = r.json()["access_token"]

    def call(htu: str) -> int:
        proof = dpop_proof(key, htm="GET", htu=htu, ath=access_token_hash(token))
        return env.http.get("/admin/v1/organisations", headers={"Authorization": f"DPoP {token}", "DPoP": proof},
                            ).status_code

    assert str(env.http.base_url) != ISSUER  # the test client's Host is not the issuer's
    assert call(ISSUER + "/admin/v1/organisations") == 200
    assert call(str(env.http.base_url).rstrip("/") + "/admin/v1/organisations") == 401


def test_the_admin_api_asks_for_the_epochs_nonce_and_takes_a_proof_with_it(env: Lifecycle,
                                                                          epochs_as_made: None) -> None:
    """Its cache has just begun its dataset (quaygate/dataset.py): a proof without the epoch's nonce is
    answered 401 ``use_dpop_nonce`` with ``DPoP-Nonce`` (RFC 9449 §9); one with it is served."""
    org = add_org(env.engine, OrgKind.PORT_AUTHORITY).organisation_id
    client_id, secret = create_client(env.engine, name="security system", role="admin", organisation_id=org,
                                      now=utcnow(), dpop_bound=True)
    key = dpop_key()

    def token(**claims: str) -> Any:
        return env.http.post("/oauth2/token", data={"grant_type": "client_credentials", "scope": "admin"},
                             headers={**basic(client_id, secret or ""), "DPoP": dpop_proof(key, **claims)})

    asked = token()
    assert asked.status_code == 400 and asked.json()["error"] == "use_dpop_nonce", asked.text
    nonce = asked.headers["DPoP-Nonce"]
    r = token(nonce=nonce)
    assert r.status_code == 200, r.text
    access = r.json()["access_token"]

    def call(**claims: str) -> Any:
        proof = dpop_proof(key, htm="GET", htu=ISSUER + "/admin/v1/organisations", ath=access_token_hash(access),
                           **claims)
        return env.http.get("/admin/v1/organisations", headers={"Authorization": f"DPoP {access}", "DPoP": proof})

    refused = call()
    assert refused.status_code == 401 and refused.json()["code"] == "use_dpop_nonce", refused.text
    assert refused.headers["DPoP-Nonce"] == nonce
    assert 'error="use_dpop_nonce"' in refused.headers["WWW-Authenticate"]
    assert call(nonce=nonce).status_code == 200

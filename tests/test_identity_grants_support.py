"""Helpers of the token lifecycle tests (refresh, introspection, revocation, registration, admin).

No tests here. The app under test is the full app (quaygate.app.create_app) on the real database of
the ``engine`` fixture, so the release API sees the same revocations as the identity provider.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from joserfc import jws
from joserfc.jwk import ECKey
from joserfc.jws import JWSRegistry

from identity.bootstrap import IdentityProvider, create_client, provider_for
from identity.dpop import jwk_thumbprint
from identity.grants import GrantStore, RevocationList
from identity.oidc.refresh import install as install_refresh
from quaygate.app import create_app
from quaygate.cache import Cache, MemoryCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import memberships, persons
from quaygate.settings import Settings
from tests.test_identity_support import ISSUER, TestClient, add_org, basic

TOKEN_URL = ISSUER + "/oauth2/token"
DRIVER_REDIRECT = "be.quaygate.driver:/callback"
CONSOLE_REDIRECT = "https://console.example.com/callback"
PERSON_SCOPE = "openid profile offline_access releases:read"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Lifecycle:
    app: FastAPI
    http: TestClient
    container: Container

    @property
    def engine(self) -> sa.Engine:
        return self.container.engine

    @property
    def provider(self) -> IdentityProvider:
        return provider_for(self.app)

    @property
    def grants(self) -> GrantStore:
        return self.provider.grants

    @property
    def revocations(self) -> RevocationList:
        return RevocationList(self.container.cache)

    # ---- parties -------------------------------------------------------------------------------

    def person(self, org: uuid.UUID | None = None, role: str = "dispatcher", status: str = "active") -> uuid.UUID:
        pid = uuid.uuid4()
        with self.engine.begin() as conn:
            conn.execute(persons.insert().values(id=pid, given_name="Jan", family_name="Peeters",
                                                 employer_organisation_id=org, status=status, created_at=utcnow()))
            if org is not None:
                conn.execute(memberships.insert().values(person_id=pid, organisation_id=org, role=role,
                                                         created_at=utcnow()))
        return pid

    def console(self, kind: str = "release_party", **kw: Any) -> tuple[str, str, uuid.UUID]:
        """A confidential console (client_secret_basic) acting for a new organisation of ``kind``."""
        org = add_org(self.engine, kind)
        client_id, secret = create_client(self.engine, name="console", role="console", organisation_id=org,
                                          redirect_uris=[CONSOLE_REDIRECT], now=utcnow(), **kw)
        assert secret
        return client_id, secret, org

    def driver_app(self, **kw: Any) -> str:
        client_id, _ = create_client(self.engine, name="driver app", role="driver_app", organisation_id=None,
                                     auth_method="none", redirect_uris=[DRIVER_REDIRECT], now=utcnow(), **kw)
        return client_id

    def machine(self, role: str = "shipping_line") -> tuple[str, str, uuid.UUID]:
        kind = {"admin": "port_authority", "terminal_gate": "terminal"}.get(role, role)
        org = add_org(self.engine, kind, "BEANR-K1700" if kind == "terminal" else None)
        client_id, secret = create_client(self.engine, name=role, role=role, organisation_id=org, now=utcnow())
        assert secret
        return client_id, secret, org

    def machine_token(self, client_id: str, secret: str, scope: str | None = None) -> str:
        data = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
        r = self.http.post("/oauth2/token", data=data, headers=basic(client_id, secret))
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    # ---- grants ---------------------------------------------------------------------------------

    def grant(self, client_id: str, person_id: uuid.UUID, scope: str = PERSON_SCOPE,
              dpop_jkt: str | None = None) -> tuple[uuid.UUID, str]:
        """A grant as the code exchange leaves it, with its first refresh token."""
        now = utcnow()
        with self.engine.begin() as conn:
            gid = self.grants.create(conn, client_id=client_id, person_id=person_id, sid="sid-1", scope=scope,
                                     acr="urn:quaygate:acr:passkey", amr=["hwk", "user", "mfa"], auth_time=now,
                                     dpop_jkt=dpop_jkt, now=now)
            token = self.grants.issue_refresh(conn, gid, now=now)
        return gid, token

    def refresh(self, token: str, client_id: str, secret: str | None = None, *, scope: str | None = None,
                dpop: str | None = None) -> Any:
        data = {"grant_type": "refresh_token", "refresh_token": token}
        headers: dict[str, str] = {}
        if secret:
            headers.update(basic(client_id, secret))
        else:
            data["client_id"] = client_id
        if scope:
            data["scope"] = scope
        if dpop:
            headers["DPoP"] = dpop
        return self.http.post("/oauth2/token", data=data, headers=headers)


def make_lifecycle(engine: sa.Engine, tmp_path: Path, cache: Cache | None = None, **over: Any) -> Iterator[Lifecycle]:
    """``over``: settings of the app's own (a ``redis_url``: the gate's facts in Redis)."""
    settings = Settings(var_dir=tmp_path, issuer=ISSUER, background_workers=False,
                        database_url=engine.url.render_as_string(hide_password=False), **over)
    container = Container(settings=settings, engine=engine, cache=cache or MemoryCache(),
                          cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    app = create_app(settings, container=container)
    with TestClient(app) as http:
        install_refresh(provider_for(app).server)  # until server.py registers the grant itself
        yield Lifecycle(app, http, container)


def dpop_key() -> ECKey:
    return ECKey.generate_key("P-256")


def dpop_proof(key: ECKey, *, htm: str = "POST", htu: str = TOKEN_URL, **claims: Any) -> str:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    payload = {"jti": secrets.token_urlsafe(16), "htm": htm, "htu": htu, "iat": int(time.time()), **claims}
    return jws.serialize_compact(header, json.dumps(payload), key, registry=JWSRegistry(algorithms=["ES256"]))


def thumbprint(key: ECKey) -> str:
    return jwk_thumbprint(key.as_dict(private=False))

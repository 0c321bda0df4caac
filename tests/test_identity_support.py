"""Shared fixtures and helpers of the identity tests (no tests here).

The app under test is the identity router mounted on a bare FastAPI app, with a Container on the
real database of the ``engine`` fixture (SQLite and PostgreSQL, schema by Alembic).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI
from joserfc import jws, jwt
from joserfc.jwk import ECKey, RSAKey
from joserfc.jws import JWSRegistry

from identity.api.routes import build_router
from identity.bootstrap import IdentityProvider, create_client, provider_for
from quaygate.cache import MemoryCache
from quaygate.container import Container, SystemClock
from quaygate.schema import organisations
from quaygate.settings import Settings

# Starlette 1.10 warns when its TestClient runs on httpx rather than httpx2, which the pinned test
# dependencies do not include yet: silence exactly that warning, only around this import.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

ISSUER = "http://127.0.0.1:8000"
TOKEN_ENDPOINT = ISSUER + "/oauth2/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TERMINAL = "BEANR-K1700"


def utcnow() -> datetime:
    return datetime.now(UTC)


def add_org(engine: sa.Engine, kind: str, terminal_code: str | None = None) -> uuid.UUID:
    org_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            organisations.insert().values(
                id=org_id,
                name=f"{kind} {org_id.hex[:6]}",
                kind=kind,
                terminal_code=terminal_code,
                created_at=utcnow(),
            )
        )
    return org_id


@dataclass
class Env:
    app: FastAPI
    http: TestClient
    container: Container

    @property
    def provider(self) -> IdentityProvider:
        return provider_for(self.app)

    def client(
        self, role: str = "shipping_line", kind: str | None = None, **kw: Any
    ) -> tuple[str, str | None, uuid.UUID]:
        """A registered client of ``role`` for a new organisation of the matching kind."""
        kind = kind or {
            "terminal_gate": "terminal",
            "terminal_operator": "terminal",
            "admin": "port_authority",
        }.get(role, role)
        org = add_org(self.container.engine, kind, TERMINAL if kind == "terminal" else None)
        client_id, secret = create_client(
            self.container.engine, name=f"test {role}", role=role, organisation_id=org, now=utcnow(), **kw
        )
        return client_id, secret, org

    def token(self, data: dict[str, str], **kw: Any) -> Any:
        return self.http.post("/oauth2/token", data=data, **kw)


def serve_identity(engine: sa.Engine, tmp_path: Path, **settings_kw: Any) -> Iterator[tuple[FastAPI, TestClient,
                                                                                           Container]]:
    """The identity routes alone on ``engine``, with an in-process cache, served by a TestClient."""
    settings = Settings(var_dir=tmp_path, issuer=ISSUER, **settings_kw)
    container = Container(
        settings=settings,
        engine=engine,
        cache=MemoryCache(),
        cipher=settings.data_cipher(),
        clock=SystemClock(),
    )
    app = FastAPI()
    app.include_router(build_router())
    app.state.container = container
    with TestClient(app) as http:
        yield app, http, container


def make_env(engine: sa.Engine, tmp_path: Path, **settings_kw: Any) -> Iterator[Env]:
    """Body of each test module's ``env`` fixture (fixtures imported across modules confuse linters)."""
    for app, http, container in serve_identity(engine, tmp_path, **settings_kw):
        yield Env(app, http, container)


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def rsa_key() -> RSAKey:
    key = RSAKey.generate_key(2048, parameters={"use": "sig"})
    key.ensure_kid()
    return key


def forged_with_our_kid(ours: RSAKey | ECKey, alg: str, claims: dict[str, Any], typ: str) -> str:
    """A JWS naming our key's kid with another algorithm than the key's own. The forger signs with
    our own private half when the key type allows (as if it had leaked into another use: RS256 key,
    PS256 signature), else with a fresh key of the type ``alg`` needs."""
    signer: RSAKey | ECKey
    if isinstance(ours, RSAKey) and alg != "ES256":
        signer = RSAKey.import_key({k: v for k, v in ours.as_dict(private=True).items() if k != "alg"})
    else:
        signer = ECKey.generate_key("P-256") if alg == "ES256" else rsa_key()
    return jws.serialize_compact({"alg": alg, "typ": typ, "kid": ours.kid}, json.dumps(claims), signer,
                                 registry=JWSRegistry(algorithms=[alg]))


def public_jwks(key: RSAKey) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False)]}


def assertion(
    key: RSAKey,
    client_id: str,
    *,
    aud: Any = TOKEN_ENDPOINT,
    exp_in: int = 60,
    jti: str | None = None,
    iss: str | None = None,
) -> str:
    """An RFC 7523 client assertion signed by the client's own key."""
    now = int(time.time())
    claims = {
        "iss": iss or client_id,
        "sub": client_id,
        "aud": aud,
        "iat": now,
        "exp": now + exp_in,
        "jti": jti or secrets.token_urlsafe(16),
    }
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key, algorithms=["RS256"])


def assertion_form(token: str, scope: str | None = None) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": token,
    }
    if scope:
        form["scope"] = scope
    return form

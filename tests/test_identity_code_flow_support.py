"""Helpers of the code flow, PAR and logout tests (no tests here)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa
from fastapi import FastAPI
from joserfc import jws, jwt
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from identity.bootstrap import IdentityProvider, create_client, provider_for
from identity.broker.config import login_acrs
from identity.domain import assurance
from identity.sessions import sessions_for
from quaygate.container import Container
from quaygate.schema import memberships, persons
from tests.test_identity_support import ISSUER, add_org, basic, serve_identity, utcnow

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

DRIVER_REDIRECT = "be.quaygate.driver:/callback"
CONSOLE_REDIRECT = "https://console.haulier.example/callback"
CONSOLE_LOGOUT = "https://console.haulier.example/bye"
ID_TOKEN_REGISTRY = JWSRegistry(algorithms=["RS256", "PS256", "ES256"])


@dataclass
class Flow:
    app: FastAPI
    http: TestClient
    container: Container

    @property
    def provider(self) -> IdentityProvider:
        return provider_for(self.app)

    @property
    def engine(self) -> sa.Engine:
        return self.container.engine

    # ---- people and clients ------------------------------------------------------------------

    def person(self, *, status: str = "active", given: str = "Jan", family: str = "Peeters") -> uuid.UUID:
        pid = uuid.uuid4()
        with self.engine.begin() as conn:
            conn.execute(
                persons.insert().values(
                    id=pid, given_name=given, family_name=family, created_at=utcnow(), status=status
                )
            )
        return pid

    def member(self, person_id: uuid.UUID, org: uuid.UUID, role: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                memberships.insert().values(person_id=person_id, organisation_id=org, role=role, created_at=utcnow())
            )

    def driver_app(self, **kw: Any) -> str:
        kw.setdefault("redirect_uris", [DRIVER_REDIRECT])
        kw.setdefault("login_acrs", login_acrs(self.container.settings))  # as the app's registration checks
        client_id, _ = create_client(
            self.engine, name="driver app", role="driver_app", organisation_id=None, auth_method="none",
            now=utcnow(), **kw,
        )
        return client_id

    def console(self, kind: str = "transport_operator", **kw: Any) -> tuple[str, str, uuid.UUID]:
        org = add_org(self.engine, kind)
        kw.setdefault("redirect_uris", [CONSOLE_REDIRECT])
        kw.setdefault("post_logout_redirect_uris", [CONSOLE_LOGOUT])
        kw.setdefault("login_acrs", login_acrs(self.container.settings))
        client_id, secret = create_client(
            self.engine, name="console", role="console", organisation_id=org, now=utcnow(), **kw
        )
        assert secret is not None
        return client_id, secret, org

    def login(self, person_id: uuid.UUID, *, acr: str = assurance.ACR_PASSKEY, ago: int = 0) -> str:
        """A live login session for the person; its cookie set on the test client. Returns the sid."""
        when = utcnow() - timedelta(seconds=ago)
        cookie, session = sessions_for(self.app).create(person_id, acr=acr, amr=assurance.AMR_PASSKEY, now=when)
        self.http.cookies.set(self.container.settings.session_cookie, cookie)
        return session.sid

    # ---- the flow ----------------------------------------------------------------------------

    def authorize(self, client_id: str, *, redirect_uri: str = DRIVER_REDIRECT, pkce: Pkce | None = None,
                  method: str = "GET", drop: tuple[str, ...] = (), **extra: str) -> Any:
        pkce = pkce or Pkce()
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid profile offline_access releases:read",
            "state": "st-" + secrets.token_hex(4),
            "nonce": "n-" + secrets.token_hex(4),
            "code_challenge": pkce.challenge,
            "code_challenge_method": "S256",
            **extra,
        }
        for name in drop:
            params.pop(name, None)
        if method == "POST":
            return self.http.post("/oauth2/authorize", data=params, follow_redirects=False)
        return self.http.get("/oauth2/authorize", params=params, follow_redirects=False)

    def code(self, resp: Any) -> str:
        assert resp.status_code == 302, resp.text
        q = query(resp)
        assert "code" in q, q
        assert q["iss"] == ISSUER  # RFC 9207
        return q["code"]

    def exchange(self, client_id: str, code: str, verifier: str, *, redirect_uri: str = DRIVER_REDIRECT,
                 secret: str | None = None, headers: dict[str, str] | None = None) -> Any:
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": verifier}
        hdrs = dict(headers or {})
        if secret is None:
            data["client_id"] = client_id
        else:
            hdrs.update(basic(client_id, secret))
        return self.http.post("/oauth2/token", data=data, headers=hdrs)

    def driver_tokens(self, client_id: str, person: uuid.UUID, **extra: str) -> dict[str, Any]:
        self.login(person)
        pkce = Pkce()
        code = self.code(self.authorize(client_id, pkce=pkce, **extra))
        resp = self.exchange(client_id, code, pkce.verifier)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def jwks(self) -> KeySet:
        return KeySet.import_key_set(self.http.get("/oauth2/jwks").json())

    @staticmethod
    def header(token: str) -> dict[str, Any]:
        return dict(jws.extract_compact(token.encode(), registry=ID_TOKEN_REGISTRY).headers())

    def id_token(self, token: str) -> dict[str, Any]:
        """Verify an id token against our published JWKS with joserfc, as a relying party would."""
        decoded = jwt.decode(token, self.jwks(), registry=ID_TOKEN_REGISTRY)
        return dict(decoded.claims)


class Pkce:
    def __init__(self) -> None:
        self.verifier = secrets.token_urlsafe(48)
        self.challenge = base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).decode().rstrip("=")


def query(resp: Any) -> dict[str, str]:
    location = resp.headers["location"]
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def make_flow(engine: sa.Engine, tmp_path: Path, **settings_kw: Any) -> Iterator[Flow]:
    for app, http, container in serve_identity(engine, tmp_path, **settings_kw):
        yield Flow(app, http, container)


def ago(seconds: int) -> datetime:
    return utcnow() - timedelta(seconds=seconds)

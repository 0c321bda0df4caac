"""RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0), and the code flow against the whole
application: a reused code's first access token stops working at the release API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from identity.bootstrap import provider_for
from identity.sessions import sessions_for
from quaygate.app import create_app
from quaygate.cache import MemoryCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.settings import Settings
from tests.test_identity_code_flow_support import (
    CONSOLE_LOGOUT,
    Flow,
    Pkce,
    make_flow,
    query,
)
from tests.test_identity_support import ISSUER, forged_with_our_kid, utcnow

API = "quaygate-api"


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from make_flow(engine, tmp_path)


def _signed_in(flow: Flow, **client: object) -> tuple[str, dict[str, str], str]:
    client_id = flow.driver_app(post_logout_redirect_uris=["https://driver.quaygate.example/bye"], **client)
    person = flow.person()
    sid = flow.login(person)
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    tokens = flow.exchange(client_id, code, pkce.verifier).json()
    return client_id, tokens, sid


def _session_live(flow: Flow) -> bool:
    cookie = flow.http.cookies.get(flow.container.settings.session_cookie)
    return sessions_for(flow.app).get(cookie, now=utcnow()) is not None


def test_logout_ends_the_session_revokes_its_grants_and_redirects(flow: Flow) -> None:
    client_id, tokens, _ = _signed_in(flow)
    resp = flow.http.get(
        "/oauth2/logout",
        params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "https://driver.quaygate.example/bye",
                "state": "bye-1"},
        follow_redirects=False,
    )
    assert resp.status_code == 302
    assert resp.headers["location"].startswith("https://driver.quaygate.example/bye?")
    assert query(resp)["state"] == "bye-1"
    assert not _session_live(flow)
    with pytest.raises(Exception, match="revoked"):
        flow.provider.verifier.verify(tokens["access_token"], audience=API)
    # The session is gone: a new authorization request must log in again.
    again = flow.authorize(client_id, prompt="none")
    assert query(again)["error"] == "login_required"


def test_logout_with_an_unregistered_redirect_is_refused(flow: Flow) -> None:
    _, tokens, _ = _signed_in(flow)
    for uri in ("https://evil.example/bye", "https://driver.quaygate.example/bye/", CONSOLE_LOGOUT):
        resp = flow.http.get(
            "/oauth2/logout",
            params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": uri},
            follow_redirects=False,
        )
        assert resp.status_code == 400 and "location" not in resp.headers
    assert _session_live(flow)
    flow.provider.verifier.verify(tokens["access_token"], audience=API)


def test_logout_redirect_without_hint_or_client_is_refused(flow: Flow) -> None:
    _signed_in(flow)
    resp = flow.http.get("/oauth2/logout", params={"post_logout_redirect_uri": "https://driver.quaygate.example/bye"},
                         follow_redirects=False)
    assert resp.status_code == 400 and "location" not in resp.headers


def test_forged_id_token_hint_is_refused(flow: Flow) -> None:
    _, tokens, _ = _signed_in(flow)
    header, payload, sig = tokens["id_token"].split(".")
    forged = ".".join([header, payload, sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB")])
    resp = flow.http.get("/oauth2/logout", params={"id_token_hint": forged}, follow_redirects=False)
    assert resp.status_code == 400
    assert _session_live(flow)
    # An access token (typ at+jwt) is not an id token either.
    resp = flow.http.get("/oauth2/logout", params={"id_token_hint": tokens["access_token"]}, follow_redirects=False)
    assert resp.status_code == 400 and _session_live(flow)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_an_es256_id_token_is_a_good_hint(flow: Flow) -> None:
    _, tokens, _ = _signed_in(flow, extra_metadata={"id_token_signed_response_alg": "ES256"})
    assert flow.header(tokens["id_token"])["alg"] == "ES256"
    resp = flow.http.get("/oauth2/logout", params={"id_token_hint": tokens["id_token"],
                         "post_logout_redirect_uri": "https://driver.quaygate.example/bye"}, follow_redirects=False)
    assert resp.status_code == 302 and not _session_live(flow)


@pytest.mark.parametrize(("ours", "alg"), [("RS256", "ES256"), ("ES256", "RS256"), ("RS256", "PS256")])
def test_a_hint_cannot_use_our_key_with_another_algorithm(flow: Flow, caplog: pytest.LogCaptureFixture,
                                                           ours: str, alg: str) -> None:
    """RFC 8725 §3.1: the kid names our key, and the key verifies only the algorithm it names."""
    _, tokens, _ = _signed_in(flow)
    claims = flow.id_token(tokens["id_token"])  # the real claims: only the signature is the forger's
    forged = forged_with_our_kid(flow.provider.keys.signing_key(ours), alg, claims, "JWT")
    with caplog.at_level(logging.INFO, logger="identity.oidc.logout"):
        resp = flow.http.get("/oauth2/logout", params={"id_token_hint": forged}, follow_redirects=False)
    assert resp.status_code == 400 and _session_live(flow)
    assert "identity.logout.refused.key_type" in caplog.messages


def test_a_hint_with_alg_none_or_hmac_over_our_public_key_is_refused(flow: Flow) -> None:
    _, tokens, _ = _signed_in(flow)
    claims = _b64(json.dumps(flow.id_token(tokens["id_token"])).encode())
    for alg in ("RS256", "ES256"):
        ours = flow.provider.keys.signing_key(alg)
        none = f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT', 'kid': ours.kid}).encode())}.{claims}."
        signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': ours.kid}).encode())}.{claims}"
        mac = hmac.new(ours.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
        for hint in (none, f"{signing_input}.{_b64(mac)}"):
            resp = flow.http.get("/oauth2/logout", params={"id_token_hint": hint}, follow_redirects=False)
            assert resp.status_code == 400 and _session_live(flow)


def test_logout_without_hint_asks_then_ends_on_post(flow: Flow) -> None:
    _signed_in(flow)
    ask = flow.http.get("/oauth2/logout", follow_redirects=False)
    assert ask.status_code == 200 and 'method="post"' in ask.text
    assert _session_live(flow)
    done = flow.http.post("/oauth2/logout", headers={"Origin": ISSUER}, follow_redirects=False)  # our page's form
    assert done.status_code == 200
    assert not _session_live(flow)


# ---- against the whole application --------------------------------------------------------------


@pytest.fixture
def app_flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        background_workers=False, issuer=ISSUER)
    container = Container(settings=settings, engine=engine, cache=MemoryCache(),
                          cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    app = create_app(settings, container=container)
    with TestClient(app) as http:
        yield Flow(app, http, container)


def test_reused_code_revokes_the_first_token_at_the_release_api(app_flow: Flow) -> None:
    flow = app_flow
    client_id = flow.driver_app()
    flow.login(flow.person())
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    tokens = flow.exchange(client_id, code, pkce.verifier).json()
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert flow.http.get("/api/v1/releases", headers=auth).status_code == 200
    assert flow.exchange(client_id, code, pkce.verifier).json()["error"] == "invalid_grant"
    refused = flow.http.get("/api/v1/releases", headers=auth)
    assert refused.status_code == 401
    assert provider_for(flow.app) is flow.provider

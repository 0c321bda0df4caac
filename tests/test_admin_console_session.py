"""The admin console's session (issue 4): the access token is renewed with a rotating refresh token from
our own provider (RFC 6749 §6, RFC 9700 §4.14.2), never beyond CONSOLE_SESSION_MAX after the passkey
login; a replayed refresh token ends the whole session. On SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from identity.api.admin import CONSOLE_SESSION_MAX
from identity.web.console import CONSOLE_SCOPE
from quaygate.container import SystemClock
from tests.ban_register import Register
from tests.test_admin_console import CALLBACK, _auth, _badge, _console, _officer, _problem, console_flow
from tests.test_identity_code_flow_support import Flow, Pkce
from tests.test_identity_support import ISSUER


@pytest.fixture
def register() -> Register:
    return Register()


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path, register: Register) -> Iterator[Flow]:
    yield from console_flow(engine, tmp_path, register)


def _sign_in(flow: Flow, client_id: str, person: uuid.UUID, *, ago: int = 0) -> dict[str, Any]:
    """What console.js does: a passkey login, code + PKCE with the console's own scope."""
    flow.login(person, ago=ago)
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce, redirect_uri=CALLBACK, scope=CONSOLE_SCOPE))
    r = flow.exchange(client_id, code, pkce.verifier, redirect_uri=CALLBACK)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _refresh(flow: Flow, client_id: str, token: str) -> Any:
    return flow.http.post("/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": token,
                                                 "client_id": client_id})


def test_the_console_renews_its_token_with_a_rotating_refresh_token(flow: Flow) -> None:
    _, badge_id = _badge(flow)
    client_id = _console(flow)
    first = _sign_in(flow, client_id, _officer(flow, "badge_office"))
    assert first["refresh_token"] and "offline_access" in first["scope"].split()
    r = _refresh(flow, client_id, first["refresh_token"])
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]  # rotated
    # The renewed token is as good as the first: same person, roles and passkey login.
    got = flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(second["access_token"]))
    assert got.status_code == 200 and got.json()["masked"] is False, got.text
    # A replayed refresh token (stolen from the tab) ends the whole session, the live tokens too.
    replay = _refresh(flow, client_id, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant", replay.text
    _problem(flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(second["access_token"])),
             401, "invalid_token")
    assert _refresh(flow, client_id, second["refresh_token"]).status_code == 400


class _Later(SystemClock):
    """The admin API's clock, ``by`` seconds on (the token's own expiry is checked on the wall clock)."""

    def __init__(self, by: float) -> None:
        self.by = by

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.by)


def test_the_session_ends_a_working_day_after_the_passkey_login(flow: Flow) -> None:
    _, badge_id = _badge(flow)
    client_id = _console(flow)
    officer = _officer(flow, "badge_office")
    tokens = _sign_in(flow, client_id, officer, ago=600)  # the passkey login was ten minutes ago
    flow.container.clock = _Later(CONSOLE_SESSION_MAX - 1200)
    assert flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(tokens["access_token"])).status_code == 200
    # Refreshing keeps the login's auth_time: the renewed token is no younger as a session.
    renewed = _refresh(flow, client_id, tokens["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    flow.container.clock = _Later(CONSOLE_SESSION_MAX)
    for token in (tokens["access_token"], renewed.json()["access_token"]):
        r = flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(token))
        _problem(r, 401, "insufficient_user_authentication")
        assert f'max_age="{CONSOLE_SESSION_MAX}"' in r.headers["www-authenticate"]


def test_the_console_page_asks_for_the_refresh_scope(flow: Flow) -> None:
    client_id = _console(flow)
    cfg = flow.http.get("/console/config.json").json()
    assert cfg["client_id"] == client_id and "offline_access" in cfg["scope"].split()


def test_signing_out_ends_the_provider_session_and_signing_in_again_needs_a_passkey(flow: Flow) -> None:
    """Review 128, finding 1: "Sign out" revoked the refresh token only, so the provider's login session
    lived on and the next "Sign in" at that browser got the officer's console token without a passkey.
    Now console.js signOut revokes, then logs out at the provider with the id token (RP-initiated logout
    §2) and comes back to /console/; and its login asks prompt=login, a passkey ceremony every time."""
    _, badge_id = _badge(flow)
    client_id = _console(flow)
    officer = _officer(flow, "badge_office")
    cfg = flow.http.get("/console/config.json").json()
    disco = flow.http.get("/.well-known/openid-configuration").json()
    tokens = _sign_in(flow, client_id, officer)
    assert tokens["id_token"]

    def sign_in_asked(**extra: str) -> Any:
        return flow.authorize(client_id, pkce=Pkce(), redirect_uri=CALLBACK, scope=cfg["scope"],
                              acr_values=cfg["acr_values"], **extra)

    # What the page's Sign in sends now: a live passkey session is not enough, the passkey is asked again.
    assert urlsplit(sign_in_asked(prompt="login").headers["location"]).path == "/login"
    # signOut: the refresh token revoked (RFC 7009), then the end_session_endpoint with the id token.
    revoked = flow.http.post(urlsplit(disco["revocation_endpoint"]).path, data={
        "token": tokens["refresh_token"], "token_type_hint": "refresh_token", "client_id": client_id})
    assert revoked.status_code == 200, revoked.text
    out = flow.http.get(urlsplit(disco["end_session_endpoint"]).path, follow_redirects=False, params={
        "id_token_hint": tokens["id_token"], "client_id": client_id,
        "post_logout_redirect_uri": cfg["post_logout_redirect_uri"]})
    assert out.status_code in (302, 303), out.text
    assert out.headers["location"] == ISSUER + "/console/"
    # The provider session is over: even a sign-in that asks nothing more goes to the passkey login.
    assert urlsplit(sign_in_asked().headers["location"]).path == "/login"
    assert parse_qs(urlsplit(sign_in_asked(prompt="none").headers["location"]).query)["error"] == ["login_required"]
    _problem(flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(tokens["access_token"])),
             401, "invalid_token")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0010_gives_existing_console_clients_the_refresh_scope(backend: str, tmp_path: Path) -> None:
    """A console client registered before 0010 would be refused the scope its page now asks for."""
    import os

    from identity.bootstrap import create_client
    from quaygate.db import create_database, drop_database, make_engine
    from quaygate.migrate import downgrade, upgrade
    from quaygate.schema import oauth_clients

    from .conftest import PG_URL, need_service

    base = need_service("PostgreSQL", PG_URL) if backend == "postgresql" else None
    url = create_database(base, f"qg_h3_0010_{os.getpid()}") if base else f"sqlite:///{tmp_path / 'm.db'}"
    try:
        upgrade(url, "0009_gate_offline")
        engine = make_engine(url)
        old = ["admin", "badges:office", "openid", "profile"]
        ids = {}
        for role in ("admin_console", "driver_app"):
            ids[role], _ = create_client(engine, name="old", role=role, organisation_id=None, auth_method="none",
                                         redirect_uris=[CALLBACK], now=datetime.now(UTC))
        with engine.begin() as conn:  # as registered before 0010 (the driver app's scopes do not matter here)
            conn.execute(sa.update(oauth_clients).values(scopes=old))

        def scopes() -> dict[str, list[str]]:
            with engine.connect() as conn:
                return {r.client_id: list(r.scopes) for r in conn.execute(
                    sa.select(oauth_clients.c.client_id, oauth_clients.c.scopes))}

        upgrade(url)
        assert scopes() == {ids["admin_console"]: sorted([*old, "offline_access"]), ids["driver_app"]: old}
        downgrade(url, "0009_gate_offline")
        assert scopes() == {ids["admin_console"]: old, ids["driver_app"]: old}
        engine.dispose()
    finally:
        if base:
            drop_database(base, url)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0023_registers_console_as_the_console_clients_post_logout_redirect(backend: str,
                                                                                      tmp_path: Path) -> None:
    """Review 128, finding 1: a console client registered before 0023 (the demo's) had no post-logout
    redirect URI, and its page's sign-out would be refused the way back to /console/."""
    import os

    from identity.bootstrap import create_client
    from quaygate.db import create_database, drop_database, make_engine
    from quaygate.migrate import upgrade
    from quaygate.schema import oauth_clients

    from .conftest import PG_URL, need_service

    base = need_service("PostgreSQL", PG_URL) if backend == "postgresql" else None
    url = create_database(base, f"qg_r128_0023_{os.getpid()}") if base else f"sqlite:///{tmp_path / 'm.db'}"
    try:
        upgrade(url, "0022")
        engine = make_engine(url)
        ids = {}
        for name, role, redirect, post_logout in (
                ("demo", "admin_console", CALLBACK, []),
                ("kept", "admin_console", CALLBACK, ["https://port.example/bye"]),
                ("done", "admin_console", CALLBACK, [ISSUER + "/console/"]),
                ("elsewhere", "admin_console", "https://console.port.example/cb", []),
                ("app", "driver_app", ISSUER + "/app/callback", [])):
            ids[name], _ = create_client(engine, name=name, role=role, organisation_id=None, auth_method="none",
                                         redirect_uris=[redirect], post_logout_redirect_uris=post_logout,
                                         now=datetime.now(UTC))
        upgrade(url)
        with engine.connect() as conn:
            got = {r.client_id: list(r.post_logout_redirect_uris) for r in conn.execute(
                sa.select(oauth_clients.c.client_id, oauth_clients.c.post_logout_redirect_uris))}
        engine.dispose()
        assert got == {ids["demo"]: [ISSUER + "/console/"],
                       ids["kept"]: ["https://port.example/bye", ISSUER + "/console/"],
                       ids["done"]: [ISSUER + "/console/"], ids["elsewhere"]: [], ids["app"]: []}
    finally:
        if base:
            drop_database(base, url)

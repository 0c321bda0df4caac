"""The admin console (issue 4): person tokens from the admin_console client on the admin API, the
ban feed import and alerts routes, and the /console/ pages, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from identity.api.admin import router as admin_router
from identity.api.audit_search import router as audit_router
from identity.api.badges import router as badge_router
from identity.api.bans import router as ban_router
from identity.api.management import router as management_router
from identity.api.passkeys import router as passkey_router
from identity.api.routes import build_router
from identity.bans.screening import from_settings as screening_from_settings
from identity.bootstrap import create_client
from identity.domain import assurance
from identity.domain.broker import ACR_UPSTREAM_BASIC
from identity.domain.roles import AuthMethod, ClientRole, RegistrationRefused, check_registration
from identity.registration.metadata import MetadataRefused, check_metadata
from identity.sessions import sessions_for
from identity.web.console import router as console_router
from identity.web.routes import asset_url
from identity.web.routes import router as web_router
from quaygate.cache import MemoryCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher, keyed_hash
from quaygate.schema import audit_log, badges, oauth_clients, persons
from quaygate.settings import Settings
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.services import issue, nominate
from tests.ban_register import Register, ban, changes, national_number, snapshot
from tests.factories import do, issue_cmd, now, port
from tests.test_identity_code_flow_support import Flow, Pkce
from tests.test_identity_support import ISSUER, add_org

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

CALLBACK = ISSUER.rstrip("/") + "/console/callback"
CONSOLE_HOME = ISSUER.rstrip("/") + "/console/"
CONSOLE_SCOPE = "openid profile admin badges:office"


@pytest.fixture
def register() -> Register:
    return Register()


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path, register: Register) -> Iterator[Flow]:
    yield from console_flow(engine, tmp_path, register)


def audit_entries(flow: Flow, kind: str) -> list[Any]:
    """The audit entries of one kind, oldest first: (actor, subject, data)."""
    with flow.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.actor, audit_log.c.subject, audit_log.c.data)
                                 .where(audit_log.c.kind == kind).order_by(audit_log.c.id)).all())


def console_flow(engine: sa.Engine, tmp_path: Path, register: Register) -> Iterator[Flow]:
    """The identity provider with the admin API and the console pages, the register's key configured."""
    settings = Settings(var_dir=tmp_path, issuer=ISSUER, ban_register_jwk=register.public_jwk)
    container = Container(settings=settings, engine=engine, cache=MemoryCache(),
                          cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    app = FastAPI()
    for router in (build_router(), management_router, admin_router, audit_router, badge_router, ban_router,
                   passkey_router, console_router, web_router):
        app.include_router(router)
    app.state.container = container
    app.state.ban_screening = screening_from_settings(settings, engine)  # the real register, as create_app wires it
    with TestClient(app) as http:
        yield Flow(app, http, container)


def _console(flow: Flow, **kw: Any) -> str:
    """The console's client as the demo registers it (quaygate.demo)."""
    kw.setdefault("redirect_uris", [CALLBACK])
    kw.setdefault("post_logout_redirect_uris", [CONSOLE_HOME])
    client_id, _ = create_client(flow.engine, name="admin console", role="admin_console", organisation_id=None,
                                 auth_method="none", now=datetime.now(UTC), **kw)
    return client_id


def _officer(flow: Flow, *roles: str) -> uuid.UUID:
    pid = flow.person(given="Sofie", family="Wouters")
    org = add_org(flow.engine, "port_authority")
    for role in roles:
        flow.member(pid, org, role)
    return pid


def _token(flow: Flow, client_id: str, person: uuid.UUID, *, redirect_uri: str = CALLBACK,
           scope: str = CONSOLE_SCOPE, acr: str = assurance.ACR_PASSKEY) -> str:
    flow.login(person, acr=acr)
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce, redirect_uri=redirect_uri, scope=scope))
    resp = flow.exchange(client_id, code, pkce.verifier, redirect_uri=redirect_uri)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _badge(flow: Flow, number: str = "AP-100230") -> tuple[uuid.UUID, uuid.UUID]:
    holder, badge_id = uuid.uuid4(), uuid.uuid4()
    t = datetime.now(UTC)
    with flow.engine.begin() as conn:
        conn.execute(persons.insert().values(id=holder, given_name="Jan", family_name="Peeters", created_at=t))
        conn.execute(badges.insert().values(
            id=badge_id, person_id=holder, scheme="alfapass", number=number, card_uid="04A1B2C3D4E5F6",
            status="active", valid_from=t - timedelta(days=1), valid_until=t + timedelta(days=300), created_at=t))
    return holder, badge_id


def _problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


# ---- who may use the admin API through the console ------------------------------------------------


def test_a_driver_app_token_is_refused(flow: Flow) -> None:
    _badge(flow)
    app_id = flow.driver_app()
    driver = _officer(flow, "driver")
    token = flow.driver_tokens(app_id, driver)["access_token"]
    _problem(flow.http.get("/admin/v1/badges", params={"number": "AP-100230"}, headers=_auth(token)), 403,
             "insufficient_scope")


def test_a_console_token_without_an_admin_role_is_refused(flow: Flow) -> None:
    _, badge_id = _badge(flow)
    token = _token(flow, _console(flow), _officer(flow, "driver", "org_admin"))
    _problem(flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(token)), 403, "insufficient_role")
    r = flow.http.post(f"/admin/v1/badges/{badge_id}/status", json={"status": "blocked", "reason": "x"},
                       headers=_auth(token))
    _problem(r, 403, "insufficient_role")
    _problem(flow.http.get("/admin/v1/bans/alerts", headers=_auth(token)), 403, "insufficient_role")


def test_port_security_blocks_a_badge_and_is_the_actor(flow: Flow) -> None:
    _, badge_id = _badge(flow)
    client_id = _console(flow)
    officer = _officer(flow, "port_security_admin")
    token = _token(flow, client_id, officer)
    found = flow.http.get("/admin/v1/badges", params={"number": "AP-100230"}, headers=_auth(token))
    assert found.status_code == 200, found.text
    assert [b["id"] for b in found.json()["items"]] == [str(badge_id)]
    assert found.json()["items"][0]["masked"] is True  # port security is not the badge office
    r = flow.http.post(f"/admin/v1/badges/{badge_id}/status", json={"status": "blocked", "reason": "stolen"},
                       headers=_auth(token))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "blocked"
    history = flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(token)).json()["history"]
    assert history[-1]["to"] == "blocked" and history[-1]["reason"] == "stolen"
    assert history[-1]["by"] == f"person:{officer}@{client_id}"
    with flow.engine.connect() as conn:
        actor = conn.execute(sa.select(audit_log.c.actor).where(audit_log.c.kind == "identity.badge.status_changed",
                                                                audit_log.c.subject == str(badge_id))).scalar_one()
    assert actor == {"person_id": str(officer), "client_id": client_id}


def test_only_the_badge_office_role_sees_numbers_in_full(flow: Flow) -> None:
    _badge(flow)
    client_id = _console(flow)
    token = _token(flow, client_id, _officer(flow, "badge_office"))
    item = flow.http.get("/admin/v1/badges", params={"number": "AP-100230"}, headers=_auth(token)).json()["items"][0]
    assert (item["number"], item["masked"]) == ("AP-100230", False)
    # The same person without the badges:office scope in the token: masked.
    token = _token(flow, client_id, _officer(flow, "badge_office"), scope="openid admin")
    item = flow.http.get("/admin/v1/badges", params={"number": "AP-100230"}, headers=_auth(token)).json()["items"][0]
    assert item["masked"] is True


def test_a_login_weaker_than_a_passkey_gets_a_step_up_challenge(flow: Flow) -> None:
    _, badge_id = _badge(flow)
    token = _token(flow, _console(flow), _officer(flow, "port_security_admin"), acr="urn:quaygate:acr:password")
    r = flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(token))
    _problem(r, 401, "insufficient_user_authentication")
    assert f'acr_values="{assurance.ACR_PASSKEY}"' in r.headers["www-authenticate"]  # RFC 9470 §3


def test_a_login_at_the_national_id_provider_is_no_passkey_for_the_console(flow: Flow) -> None:
    """Review 108 (low): an upstream login's acr ranks above passkey's, and the console took it: whoever
    controls the itsme identity an officer is linked to had his console. It wants our passkey."""
    _, badge_id = _badge(flow)
    token = _token(flow, _console(flow), _officer(flow, "port_security_admin"), acr=assurance.ACR_UPSTREAM)
    r = flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(token))
    _problem(r, 401, "insufficient_user_authentication")


def test_an_itsme_basic_login_gets_the_console_a_code_that_says_so_and_not_the_admin_api(flow: Flow) -> None:
    """Review 164 (a gap in the tests): the console's own request, prompt=login and acr_values=passkey
    (identity/web/static/console.js), over an itsme basic session. The login page once; the officer logs
    in with itsme at level basic again. acr_values is voluntary (review 161, finding 2), so the resume
    gives the code, and the id token states what happened, acr upstream:basic and amr fed; the admin API,
    which wants one of our passkeys, refuses its access token (RFC 9470 step-up challenge)."""
    _, badge_id = _badge(flow)
    client_id, officer = _console(flow), _officer(flow, "port_security_admin")

    def itsme_basic() -> None:
        cookie, _ = sessions_for(flow.app).create(officer, acr=ACR_UPSTREAM_BASIC, amr=(assurance.AMR_FEDERATED,),
                                                  now=datetime.now(UTC))
        flow.http.cookies.set(flow.container.settings.session_cookie, cookie)

    itsme_basic()
    pkce = Pkce()
    asked = flow.authorize(client_id, pkce=pkce, redirect_uri=CALLBACK, scope=CONSOLE_SCOPE, prompt="login",
                           acr_values=assurance.ACR_PASSKEY)
    login = urlsplit(asked.headers["location"])
    assert login.path == "/login"
    itsme_basic()
    resumed = flow.http.get(parse_qs(login.query)["return_to"][0], follow_redirects=False)
    tokens = flow.exchange(client_id, flow.code(resumed), pkce.verifier, redirect_uri=CALLBACK)
    assert tokens.status_code == 200, tokens.text
    id_token = flow.id_token(tokens.json()["id_token"])
    assert (id_token["acr"], id_token["amr"]) == (ACR_UPSTREAM_BASIC, [assurance.AMR_FEDERATED])
    r = flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(tokens.json()["access_token"]))
    _problem(r, 401, "insufficient_user_authentication")
    assert f'acr_values="{assurance.ACR_PASSKEY}"' in r.headers["www-authenticate"]


def test_console_persons_do_not_make_initial_access_tokens(flow: Flow) -> None:
    # Persons and memberships are the console's now (tests/test_admin_console_persons.py); a token for
    # dynamic client registration stays an admin client's.
    token = _token(flow, _console(flow), _officer(flow, "port_security_admin", "badge_office"))
    _problem(flow.http.post("/admin/v1/initial-access-tokens", json={}, headers=_auth(token)),
             403, "insufficient_scope")


def test_the_admin_console_is_a_public_client_registered_by_an_administrator() -> None:
    with pytest.raises(RegistrationRefused) as refused:
        check_registration(ClientRole.ADMIN_CONSOLE, org_kind=None, org_terminal_code=None, terminal_code=None,
                           auth_method=AuthMethod.CLIENT_SECRET_BASIC, has_jwks=False)
    assert refused.value.code == "public_client_method"
    with pytest.raises(RegistrationRefused):
        check_registration(ClientRole.ADMIN_CONSOLE, org_kind="port_authority", org_terminal_code=None,
                           terminal_code=None, auth_method=AuthMethod.NONE, has_jwks=False)
    # Dynamic registration (RFC 7591) may not create one: it would hand out the admin scope.
    with pytest.raises(MetadataRefused):
        check_metadata({"quaygate_role": "admin_console", "token_endpoint_auth_method": "none",
                        "redirect_uris": [CALLBACK]}, org_kind=None)


# ---- ban feeds and alerts ----------------------------------------------------------------------------


def _nominated_driver(flow: Flow, number: str) -> tuple[uuid.UUID, uuid.UUID]:
    p = port(flow.engine)
    with flow.engine.begin() as conn:
        conn.execute(sa.update(persons).where(persons.c.id == p.driver).values(
            national_id_hash=keyed_hash(flow.container.settings.pepper_bytes(), number)))
    right, _ = do(flow.engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 1, to=p.haul.organisation_id), now()))
    with SqlUnitOfWork(flow.engine) as uow:
        nominate.nominate(uow, p.haul, right.id, nominate.NominateCommand("1ABC123", "BE", p.driver), now())
        uow.commit()
    return p.driver, right.id


def test_import_a_feed_deactivates_the_badge_and_lists_the_alert(flow: Flow, register: Register) -> None:
    number = national_number(7)
    driver, release_id = _nominated_driver(flow, number)
    client_id = _console(flow)
    officer = _officer(flow, "port_security_admin")
    token = _token(flow, client_id, officer)
    t = datetime.now(UTC)
    r = flow.http.post("/admin/v1/bans/feeds", content=register.sign(snapshot(1, t, [ban(number, "R-7",
                                                                                        start=t - timedelta(days=1))])),
                       headers={**_auth(token), "Content-Type": "application/jose"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["badges_deactivated"], r.json()["nomination_alerts"]) == ("applied", 1, 1)
    with flow.engine.connect() as conn:
        assert conn.execute(sa.select(badges.c.status).where(badges.c.person_id == driver)).scalar_one() == "inactive"
        actor = conn.execute(sa.select(audit_log.c.actor)
                             .where(audit_log.c.kind == "identity.admin.ban_feed.imported")).scalar_one()
    assert actor == {"person_id": str(officer), "client_id": client_id}
    alerts = flow.http.get("/admin/v1/bans/alerts", headers=_auth(token))
    assert alerts.status_code == 200, alerts.text
    assert [(a["release_id"], a["driver_person_id"], a["ban_reference"]) for a in alerts.json()["items"]] == [
        (str(release_id), str(driver), "R-7")]
    assert number not in alerts.text
    # The listing is on the trail (issue 4): who looked, not what was listed.
    assert audit_entries(flow, "identity.admin.ban_alerts.listed") == [
        ({"person_id": str(officer), "client_id": client_id}, None, {"limit": 100})]


def test_a_refused_feed_says_why_and_changes_nothing(flow: Flow, register: Register) -> None:
    token = _token(flow, _console(flow), _officer(flow, "port_security_admin"))
    t = datetime.now(UTC)
    ok = flow.http.post("/admin/v1/bans/feeds", content=register.sign(snapshot(2, t, [])), headers=_auth(token))
    assert ok.status_code == 200, ok.text
    old = flow.http.post("/admin/v1/bans/feeds", content=register.sign(changes(1, t)), headers=_auth(token))
    body = _problem(old, 422, old.json().get("code", "?"))
    assert body["code"] != "ok" and body["detail"]
    other = Register().sign(changes(3, t))
    refused = flow.http.post("/admin/v1/bans/feeds", content=other, headers=_auth(token))
    assert refused.status_code == 422 and "signature" in refused.json()["detail"].lower(), refused.text
    with flow.engine.connect() as conn:
        kinds = list(conn.execute(sa.select(audit_log.c.data["reason"].as_string())
                                  .where(audit_log.c.kind == "identity.admin.ban_feed.refused")).scalars())
    assert len(kinds) == 2


def test_ban_routes_refuse_missing_and_driver_tokens(flow: Flow) -> None:
    _problem(flow.http.get("/admin/v1/bans/alerts"), 401, "invalid_request")
    _problem(flow.http.post("/admin/v1/bans/feeds", content=b"{}"), 401, "invalid_request")
    token = flow.driver_tokens(flow.driver_app(), _officer(flow, "driver"))["access_token"]
    _problem(flow.http.post("/admin/v1/bans/feeds", content=b"{}", headers=_auth(token)), 403, "insufficient_scope")
    _problem(flow.http.get("/admin/v1/bans/alerts", headers=_auth(token)), 403, "insufficient_scope")
    assert audit_entries(flow, "identity.admin.ban_alerts.listed") == []  # a refused caller saw nothing


# ---- the pages ---------------------------------------------------------------------------------------


def test_the_console_page_is_a_strict_shell(flow: Flow) -> None:
    r = flow.http.get("/console/", headers={"Accept-Language": "fr"})
    assert r.status_code == 200
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store" and r.headers["content-language"] == "fr"
    scripts = re.findall(r"<script[^>]*>", r.text)  # CSP Level 3 §6: no inline script, only files and data
    assert all("src=" in tag or 'type="application/json"' in tag for tag in scripts), scripts
    assert asset_url("console.js") in r.text and "Console d&#39;administration" in r.text
    assert flow.http.get("/console/callback").status_code == 200
    assert flow.http.get("/console", follow_redirects=False).headers["location"] == "/console/"


def test_the_console_config_names_the_registered_client(flow: Flow) -> None:
    _problem(flow.http.get("/console/config.json"), 404, "console_not_configured")
    _console(flow, redirect_uris=["https://elsewhere.example/console/callback"])  # not ours: ignored
    _problem(flow.http.get("/console/config.json"), 404, "console_not_configured")
    client_id = _console(flow)
    cfg = flow.http.get("/console/config.json").json()
    assert cfg["client_id"] == client_id and cfg["redirect_uri"] == CALLBACK
    # offline_access: the console renews its session with a refresh token (tests/test_admin_console_session.py).
    assert cfg["scope"] == "openid profile offline_access admin badges:office"
    assert cfg["acr_values"] == assurance.ACR_PASSKEY and cfg["api"] == "/admin/v1"
    # Signing out comes back to /console/, which the client registered (review 128, finding 1) ...
    assert cfg["post_logout_redirect_uri"] == CONSOLE_HOME
    # ... and only then: the provider refuses any other, and the page signs out without one.
    with flow.engine.begin() as conn:
        conn.execute(sa.update(oauth_clients).where(oauth_clients.c.client_id == client_id).values(active=False))
    other = _console(flow, post_logout_redirect_uris=[])
    cfg = flow.http.get("/console/config.json").json()
    assert cfg["client_id"] == other and "post_logout_redirect_uri" not in cfg

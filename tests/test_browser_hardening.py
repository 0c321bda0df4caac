"""The provider's browser-facing edges (review of the browser parts): the cookies a sibling subdomain
cannot plant (``__Host-`` on an https issuer), logout only of the browser's own session or on its
confirmation from a page of ours, the pages' security headers and HSTS, and the provenance of a passkey
added from a session no passkey opened.

On an https issuer the whole app is served to a TestClient at the issuer's own https origin; the
http-issuer helpers of the code flow tests (tests/test_identity_code_flow_support.py) drive the logout.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from identity.api.routes import _form_target
from identity.broker.service import Finished, Started
from identity.domain import assurance
from identity.domain.broker import BrokerRefused, LinkAction, Refusal
from identity.sessions import LoginSession, session_live, sessions_for
from quaygate.app import create_app
from quaygate.cache import MemoryCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import persons, webauthn_credentials
from quaygate.settings import Settings
from tests.ban_register import Register
from tests.test_identity_code_flow_support import Flow, Pkce, make_flow, query
from tests.test_identity_support import ISSUER
from tests.test_passkey_provenance import cast, grant, issue, login, passkeys_of, register

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

HTTPS_ISSUER = "https://id.quaygate.example"
SIBLING = "https://evil.quaygate.example"  # same site as the issuer, another origin
BYE = "https://driver.quaygate.example/bye"
HSTS = "max-age=31536000"


@dataclass
class Site:
    app: FastAPI
    http: TestClient
    container: Container

    @property
    def settings(self) -> Settings:
        return self.container.settings

    def person(self) -> uuid.UUID:
        pid = uuid.uuid4()
        with self.container.engine.begin() as conn:
            conn.execute(persons.insert().values(id=pid, given_name="Jan", family_name="Peeters",
                                                 created_at=datetime.now(UTC)))
        return pid

    def session(self, person: uuid.UUID) -> tuple[str, LoginSession]:
        return sessions_for(self.app).create(person, acr=assurance.ACR_PASSKEY, amr=assurance.AMR_PASSKEY,
                                             now=datetime.now(UTC))

    def passkey(self, person: uuid.UUID) -> str:
        """A passkey row of the person (its id), as a registration leaves one."""
        credential_id = "cred-" + uuid.uuid4().hex
        with self.container.engine.begin() as conn:
            conn.execute(webauthn_credentials.insert().values(
                credential_id=credential_id, person_id=person, name="Phone", public_key=b"k", sign_count=0,
                transports=[], backup_eligible=False, backed_up=False, status="active", created_at=datetime.now(UTC)))
        return credential_id


def serve(engine: sa.Engine, tmp_path: Path, issuer: str) -> Iterator[Site]:
    settings = Settings(var_dir=tmp_path, database_url=engine.url.render_as_string(hide_password=False),
                        issuer=issuer, background_workers=False)
    container = Container(settings=settings, engine=engine, cache=MemoryCache(),
                          cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    app = create_app(settings, container=container)
    with TestClient(app, base_url=issuer) as http:
        yield Site(app, http, container)


@pytest.fixture
def site(engine: sa.Engine, tmp_path: Path) -> Iterator[Site]:
    yield from serve(engine, tmp_path, HTTPS_ISSUER)


@pytest.fixture(params=["https", "http"])
def any_site(request: pytest.FixtureRequest, engine: sa.Engine, tmp_path: Path) -> Iterator[Site]:
    """The app on an https issuer, then on an http one (one at a time: one server per database)."""
    yield from serve(engine, tmp_path, HTTPS_ISSUER if request.param == "https" else ISSUER)


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from make_flow(engine, tmp_path)


def set_cookies(response: Any) -> dict[str, dict[str, Any]]:
    """The response's Set-Cookie headers, by name: value and attributes (lower-case keys)."""
    found: dict[str, dict[str, Any]] = {}
    for header in response.headers.get_list("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        for name, morsel in jar.items():
            found[name] = {"value": morsel.value, **{k: v for k, v in morsel.items() if v}}
    return found


def _host_only(cookie: dict[str, Any]) -> None:
    """What a browser asks of a __Host- cookie (RFC 6265bis §4.1.3.2), removal included."""
    assert cookie["secure"] and cookie["path"] == "/" and "domain" not in cookie, cookie


# ---- 1. cookies a sibling subdomain cannot plant -------------------------------------------------------


def test_an_https_issuer_names_its_cookies_with_the_host_prefix(tmp_path: Path) -> None:
    https = Settings(var_dir=tmp_path, issuer=HTTPS_ISSUER)
    assert https.session_cookie == "__Host-qg_session" and https.secure_cookies
    assert https.cookie_name("qg_broker") == "__Host-qg_broker" and https.cookie_name("qg_lang") == "__Host-qg_lang"
    assert Settings(var_dir=tmp_path, issuer=HTTPS_ISSUER, session_cookie="qg_sid").session_cookie == "__Host-qg_sid"
    # http (local development, the tests): browsers refuse the prefix on a cookie that cannot be Secure.
    http = Settings(var_dir=tmp_path, issuer=ISSUER)
    assert http.session_cookie == "qg_session" and not http.secure_cookies
    assert http.cookie_name("qg_lang") == "qg_lang"


def _listed(site: Site, cookie_header: str) -> Any:
    site.http.cookies.clear()
    return site.http.get("/account/passkeys", headers={"Cookie": cookie_header})


def test_only_the_prefixed_session_cookie_counts(site: Site) -> None:
    """A sibling subdomain sets qg_session for the parent domain (its own session, a login CSRF);
    Starlette takes the last of two cookies of one name. Only __Host-qg_session is read now."""
    victim, attacker = site.person(), site.person()
    mine = site.passkey(victim)
    own, _ = site.session(victim)
    planted, _ = site.session(attacker)
    for header in (f"__Host-qg_session={own}; qg_session={planted}", f"qg_session={planted}; __Host-qg_session={own}"):
        listed = _listed(site, header)
        assert listed.status_code == 200, listed.text
        assert [c["credential_id"] for c in listed.json()] == [mine]
    assert _listed(site, f"qg_session={own}").status_code == 401  # a plain cookie opens nothing


def test_the_language_cookie_is_host_only(site: Site) -> None:
    chosen = site.http.post("/lang", data={"lang": "fr", "next": "/login"}, follow_redirects=False)
    cookie = set_cookies(chosen)["__Host-qg_lang"]
    assert cookie["value"] == "fr" and cookie["samesite"].lower() == "lax"
    _host_only(cookie)
    site.http.cookies.clear()
    assert 'lang="fr"' in site.http.get("/login", headers={"Cookie": "__Host-qg_lang=fr"}).text
    assert 'lang="en"' in site.http.get("/login", headers={"Cookie": "qg_lang=fr"}).text


class _Broker:
    """The broker's use cases as the routes call them; records the binding the callback was given."""

    def __init__(self, session: tuple[str, LoginSession] | None = None) -> None:
        self.bindings: list[str | None] = []
        self.done = session

    def start(self, name: str, *, return_to: str | None) -> Started:
        return Started("https://idp.example/authorize?state=s", "sealed-flow")

    def callback(self, name: str, params: dict[str, str], *, binding: str | None, session_cookie: str | None,
                 address: str | None = None) -> Finished:
        self.bindings.append(binding)
        if self.done is None or binding != "sealed-flow":
            raise BrokerRefused(Refusal.BROWSER_MISMATCH, "no binding cookie")
        return Finished(self.done[0], self.done[1], "/app/", LinkAction.LOGIN)


def test_the_broker_binding_cookie_is_host_only(site: Site) -> None:
    broker = _Broker(site.session(site.person()))
    site.app.state.broker = broker
    started = site.http.get("/broker/itsme/start", follow_redirects=False)
    assert started.status_code == 303 and started.headers["strict-transport-security"] == HSTS
    binding = set_cookies(started)["__Host-qg_broker"]
    assert binding["value"] == "sealed-flow" and binding["httponly"]
    _host_only(binding)

    site.http.cookies.clear()
    refused = site.http.get("/broker/itsme/callback?state=s&code=c", headers={"Cookie": "qg_broker=sealed-flow"})
    assert refused.status_code == 400 and broker.bindings == [None]  # a planted plain cookie is not read
    done = site.http.get("/broker/itsme/callback?state=s&code=c",
                         headers={"Cookie": "qg_broker=planted; __Host-qg_broker=sealed-flow"}, follow_redirects=False)
    assert done.status_code == 303 and broker.bindings[-1] == "sealed-flow"
    cookies = set_cookies(done)
    _host_only(cookies["__Host-qg_session"])
    _host_only(cookies["__Host-qg_broker"])  # its removal, Secure or a browser ignores it
    assert cookies["__Host-qg_broker"]["max-age"] == "0"


# ---- 2. logout: the browser's own session, or on its confirmation ----------------------------------------


def _signed_in(flow: Flow) -> tuple[str, dict[str, str], str]:
    client_id = flow.driver_app(post_logout_redirect_uris=[BYE])
    sid = flow.login(flow.person())
    pkce = Pkce()
    tokens = flow.exchange(client_id, flow.code(flow.authorize(client_id, pkce=pkce)), pkce.verifier).json()
    return client_id, tokens, sid


def _live(flow: Flow, sid: str) -> bool:
    with flow.engine.connect() as conn:
        return session_live(conn, sid, now=datetime.now(UTC))


def _cookie_of(flow: Flow) -> str:
    cookie = flow.http.cookies.get(flow.container.settings.session_cookie)
    assert cookie is not None
    return cookie


def test_a_hint_alone_ends_no_session(flow: Flow) -> None:
    """Anyone holding an id token (an RP's log, an old URL; an expired one is a good hint) ended the
    session it names, from any browser or none."""
    _, tokens, sid = _signed_in(flow)
    flow.http.cookies.clear()  # another browser, or a plain HTTP client
    for method in ("GET", "POST"):
        params = {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": BYE, "state": "x"}
        resp = (flow.http.get("/oauth2/logout", params=params, follow_redirects=False) if method == "GET" else
                flow.http.post("/oauth2/logout", data=params, headers={"Origin": ISSUER}, follow_redirects=False))
        assert resp.status_code == 302 and resp.headers["location"].startswith(BYE), resp.text
        assert _live(flow, sid), method
    assert "set-cookie" not in resp.headers


def test_a_hint_of_another_session_asks_the_browser_and_our_page_confirms(flow: Flow) -> None:
    client_id, tokens, sid = _signed_in(flow)
    victim = _cookie_of(flow)
    flow.login(flow.person())  # this browser now holds another session (another person's)
    browser = _cookie_of(flow)
    browser_sid = sessions_for(flow.app).get(browser, now=datetime.now(UTC))
    assert browser_sid is not None
    params = {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": BYE, "state": "bye-2"}
    ask = flow.http.get("/oauth2/logout", params=params, follow_redirects=False)
    assert ask.status_code == 200 and 'method="post"' in ask.text
    assert _live(flow, sid) and _live(flow, browser_sid.sid)
    # The form carries what the logout needs back, the client resolved from the hint (not the hint).
    for name, value in (("client_id", client_id), ("post_logout_redirect_uri", BYE), ("state", "bye-2")):
        assert f'name="{name}" value="{value}"' in ask.text
    assert "id_token_hint" not in ask.text
    # Its form may lead back to the client: the redirect answering it is held to form-action too.
    csp = dict(d.strip().split(" ", 1) for d in ask.headers["content-security-policy"].split(";"))
    assert csp["form-action"] == "'self' https://driver.quaygate.example"
    # Review 150, finding 1: under no-referrer a browser posts the form with Origin: null, refused below;
    # under same-origin it sends ours (the click in Chromium: tests/e2e/test_app_sessions_browser.py).
    assert ask.headers["referrer-policy"] == "same-origin"

    form = {"client_id": client_id, "post_logout_redirect_uri": BYE, "state": "bye-2"}
    for origin in (SIBLING, "null", None):  # a same-site page, a sandboxed one, none at all
        headers = {"Origin": origin} if origin else {}
        again = flow.http.post("/oauth2/logout", data=form, headers=headers, follow_redirects=False)
        assert again.status_code == 200 and 'method="post"' in again.text, origin
        assert _live(flow, browser_sid.sid), origin
    done = flow.http.post("/oauth2/logout", data=form, headers={"Origin": ISSUER}, follow_redirects=False)
    assert done.status_code == 302 and query(done)["state"] == "bye-2"
    assert not _live(flow, browser_sid.sid)
    assert _live(flow, sid)  # the hinted session, another browser's, stays
    assert sessions_for(flow.app).get(victim, now=datetime.now(UTC)) is not None


def test_a_post_without_hint_from_a_sibling_origin_ends_nothing(flow: Flow) -> None:
    """SameSite=Lax keeps the cookie off cross-site POSTs only: a sibling subdomain is same-site."""
    _, _, sid = _signed_in(flow)
    for origin in (SIBLING, None):
        resp = flow.http.post("/oauth2/logout", headers={"Origin": origin} if origin else {}, follow_redirects=False)
        assert resp.status_code == 200 and 'method="post"' in resp.text
        assert _live(flow, sid), origin


def test_a_hint_naming_the_browsers_own_session_ends_it_at_once(flow: Flow) -> None:
    _, tokens, sid = _signed_in(flow)
    params = {"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": BYE}
    resp = flow.http.get("/oauth2/logout", params=params, follow_redirects=False)
    assert resp.status_code == 302 and not _live(flow, sid)


def test_logout_on_https_clears_the_host_only_cookie(site: Site) -> None:
    cookie, session = site.session(site.person())
    site.http.cookies.clear()
    headers = {"Cookie": f"__Host-qg_session={cookie}", "Origin": HTTPS_ISSUER}
    done = site.http.post("/oauth2/logout", headers=headers, follow_redirects=False)
    assert done.status_code == 200 and "signed out" in done.text.lower()
    cleared = set_cookies(done)["__Host-qg_session"]
    assert cleared["max-age"] == "0"
    _host_only(cleared)
    assert sessions_for(site.app).get(cookie, now=datetime.now(UTC)) is None


# ---- 3. the pages' security headers, HSTS on https ------------------------------------------------------


def _framed_never(resp: Any, referrer: str = "no-referrer") -> None:
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    assert "default-src 'none'" in resp.headers["content-security-policy"]
    assert resp.headers["x-frame-options"] == "DENY" and resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == referrer


def _pages(site: Site) -> dict[str, Any]:
    """The provider's own HTML pages: the authorization error page, the logout confirmation, "signed out"."""
    site.http.cookies.clear()
    cookie, _ = site.session(site.person())
    return {
        "error": site.http.get("/oauth2/authorize", params={"client_id": "nobody", "response_type": "code"}),
        "confirm": site.http.get("/oauth2/logout", headers={"Cookie": f"{site.settings.session_cookie}={cookie}"}),
        "signed_out": site.http.get("/oauth2/logout"),
    }


def test_the_oidc_pages_carry_the_pages_security_headers(any_site: Site) -> None:
    pages = _pages(any_site)
    expected = HSTS if any_site.settings.secure_cookies else None
    assert pages["error"].status_code == 400 and "Sign-in error" in pages["error"].text
    assert 'method="post"' in pages["confirm"].text and "Signed out" in pages["signed_out"].text
    for name, resp in pages.items():
        assert resp.headers["content-type"].startswith("text/html"), name
        # The confirmation's form must carry our Origin (tests/e2e/test_app_sessions_browser.py).
        _framed_never(resp, "same-origin" if name == "confirm" else "no-referrer")
        assert resp.headers["cache-control"] == "no-store", name
        assert resp.headers.get("strict-transport-security") == expected, name


def test_every_page_and_oidc_endpoint_carries_hsts_on_https(any_site: Site) -> None:
    expected = HSTS if any_site.settings.secure_cookies else None
    calls = [
        ("GET", "/login", {}), ("GET", "/enrol", {}), ("GET", "/app/", {}), ("GET", "/account", {}),
        ("GET", "/console/", {}),
        ("GET", "/.well-known/openid-configuration", {}), ("GET", "/.well-known/oauth-authorization-server", {}),
        ("GET", "/oauth2/jwks", {}), ("GET", "/oauth2/authorize", {}), ("GET", "/oauth2/authorize/resume", {}),
        ("POST", "/oauth2/token", {"data": {"grant_type": "client_credentials"}}),
        ("POST", "/oauth2/par", {"data": {"client_id": "nobody"}}),
        ("GET", "/oauth2/userinfo", {}), ("GET", "/oauth2/logout", {}),
        ("POST", "/oauth2/introspect", {"data": {"token": "x"}}), ("POST", "/oauth2/revoke", {"data": {"token": "x"}}),
    ]
    for method, path, kw in calls:
        any_site.http.cookies.clear()
        resp = any_site.http.request(method, path, follow_redirects=False, **kw)
        assert resp.status_code < 500, (path, resp.text)
        assert resp.headers.get("strict-transport-security") == expected, (any_site.settings.issuer, method, path)


def test_no_api_docs_pages_run_cdn_script_on_the_providers_origin(site: Site) -> None:
    """Review 128, finding 2: FastAPI's /docs and /redoc loaded unpinned CDN scripts (swagger-ui@5,
    redoc@2) on the provider's own origin, with no CSP: a compromised CDN ran script same-origin with the
    provider (it could fetch /oauth2/authorize and read the code). The API document stays published."""
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        resp = site.http.get(path)
        assert resp.status_code == 404, (path, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json"), path
        assert "cdn.jsdelivr.net" not in resp.text
    spec = site.http.get("/openapi.json")
    assert spec.status_code == 200 and spec.json()["info"]["title"] == "quaygate"


# ---- 4. a passkey added from a session no passkey opened ----------------------------------------------


@pytest.fixture
def console(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    from tests.test_admin_console import console_flow
    yield from console_flow(engine, tmp_path, Register())


def test_passkey_login_names_the_sessions_a_passkey_opened() -> None:
    assert assurance.passkey_login(assurance.ACR_PASSKEY, assurance.AMR_PASSKEY)
    assert assurance.passkey_login(assurance.ACR_FACE, (*assurance.AMR_PASSKEY, assurance.AMR_FACE))
    # An upstream login, whatever its acr ranks and whatever its amr passes on, stepped up or not.
    upstream = (assurance.AMR_FEDERATED, assurance.AMR_HWK, assurance.AMR_USER, assurance.AMR_MFA)
    assert not assurance.passkey_login(assurance.ACR_UPSTREAM, upstream)
    assert not assurance.passkey_login(assurance.ACR_FACE, (*upstream, assurance.AMR_FACE))
    assert not assurance.passkey_login(assurance.ACR_PASSKEY, ())


@pytest.mark.parametrize("acr", [assurance.ACR_UPSTREAM, assurance.ACR_FACE])
def test_a_passkey_added_from_an_upstream_session_is_not_privileged(console: Flow, acr: str) -> None:
    """The docstring of CredentialStore.from_session: a session opened by no passkey (an itsme login, a
    face step-up of one) does not make a privileged passkey. It did when the person's privileged
    passkey had been used since that login (on the officer's own phone), which is no proof that the
    session's holder holds it: the new passkey then outlived a promotion."""
    _, security, person, authority = cast(console)
    device, _ = register(console, code=issue(console, security, person))  # port security's: privileged
    amr = ["fed", "mfa"] + (["face"] if acr == assurance.ACR_FACE else [])
    upstream, _ = sessions_for(console.app).create(person, acr=acr, amr=amr, now=datetime.now(UTC))
    assert login(console, device).status_code == 200  # the privileged passkey used since that login
    register(console, cookie=upstream)
    rows = passkeys_of(console, person)
    assert [(r.enrolled_via, r.privileged_enrolment) for r in rows][1] == ("account", False)
    granted = grant(console, security, person, authority, "port_security_admin")
    assert granted.json()["passkeys_suspended"] == 1, granted.text  # the one added from itsme


def test_the_confirm_pages_form_target_is_written_safely() -> None:
    assert _form_target(BYE) == "https://driver.quaygate.example"
    assert _form_target("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080"
    assert _form_target("be.quaygate.driver:/callback") == "be.quaygate.driver:"
    assert _form_target("https://user@evil.example/") is None

"""RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0), and the code flow against the whole
application: a reused code's first access token stops working at the release API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from identity.bootstrap import create_client, provider_for
from identity.domain import assurance
from identity.domain import face as face_rules
from identity.domain.face import FaceMatch
from identity.face import face_for
from identity.oidc.issue import sign_id_token
from identity.organisations import set_active
from identity.sessions import sessions_for
from quaygate.app import create_app
from quaygate.cache import MemoryCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import grants, login_sessions, oauth_clients
from quaygate.settings import Settings
from tests.test_identity_code_flow_support import (
    CONSOLE_LOGOUT,
    CONSOLE_REDIRECT,
    Flow,
    Pkce,
    make_flow,
    query,
)
from tests.test_identity_passkeys import PEnv, build_env, device
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


# ---- review 120, finding 1: the driver's refresh token ends with the logout -----------------------------

BYE = "https://driver.quaygate.example/bye"


def _refresh(flow: Flow, client_id: str, token: str) -> Any:
    return flow.http.post("/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": token,
                                                 "client_id": client_id})


def _logout(flow: Flow, id_token: str) -> Any:
    return flow.http.get("/oauth2/logout", params={"id_token_hint": id_token, "post_logout_redirect_uri": BYE},
                         follow_redirects=False)


def _tokens(flow: Flow, client_id: str, **extra: str) -> dict[str, str]:
    """Tokens of ``client_id`` from the browser's current session (its cookie on the test client)."""
    pkce = Pkce()
    resp = flow.exchange(client_id, flow.code(flow.authorize(client_id, pkce=pkce, **extra)), pkce.verifier)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _cookie(flow: Flow) -> str:
    cookie = flow.http.cookies.get(flow.container.settings.session_cookie)
    assert cookie
    return cookie


def _sid_of(flow: Flow, refresh_token: str) -> str | None:
    with flow.engine.connect() as conn:
        found = flow.provider.grants.find_by_refresh(conn, refresh_token)
    assert found is not None
    return found[0].sid


def _revoke(flow: Flow, client_id: str, token: str) -> Any:
    """What the driver app does at logout (app.js): its refresh token to the revocation endpoint."""
    return flow.http.post("/oauth2/revoke", data={"token": token, "token_type_hint": "refresh_token",
                                                  "client_id": client_id})


def _lapse(flow: Flow, sid: str) -> None:
    with flow.engine.begin() as conn:
        conn.execute(login_sessions.update().where(login_sessions.c.sid == sid)
                     .values(expires_at=utcnow() - timedelta(seconds=1)))
    flow.http.cookies.clear()  # the cookie's max-age is the session's


def test_after_the_session_lapsed_the_apps_logout_revokes_its_refresh_token(app_flow: Flow) -> None:
    """The reviewer-120 case (a): twelve hours on, the session has lapsed and the browser dropped its
    cookie; the app's logout, by its id token, revoked nothing, and its refresh token worked on for the
    rest of its fourteen days. The app now revokes its refresh token first (RFC 7009): the grant, its
    access tokens with it, are gone; another RP's grant of that session is its own to end."""
    flow = app_flow  # the revocation endpoint is the whole app's
    client_id, tokens, sid = _signed_in(flow)
    other = flow.driver_app(post_logout_redirect_uris=[BYE])
    theirs = _tokens(flow, other)  # another client's grant in the same session
    _lapse(flow, sid)
    assert _revoke(flow, client_id, tokens["refresh_token"]).status_code == 200
    resp = _logout(flow, tokens["id_token"])
    assert resp.status_code == 302 and resp.headers["location"].startswith(BYE)
    refused = _refresh(flow, client_id, tokens["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    with pytest.raises(Exception, match="revoked"):
        flow.provider.verifier.verify(tokens["access_token"], audience=API)
    assert _refresh(flow, other, theirs["refresh_token"]).status_code == 200


def test_a_copy_of_the_id_token_cannot_end_the_app_login_of_a_lapsed_session(flow: Flow) -> None:
    """Review 124, finding 2: the app lives on its refresh tokens once its 12-hour session has lapsed
    (its normal state at the gate). A logout with a copy of its id token -- from an RP's log, a URL --
    revoked its grant (logout.revoke_lapsed, ad7d876): a forced logout of the driver by anyone holding
    the copy. Now it ends nothing the browser does not hold: the app refreshes on."""
    client_id, tokens, sid = _signed_in(flow)
    one = _refresh(flow, client_id, tokens["refresh_token"])  # the app at work, after its login
    assert one.status_code == 200, one.text
    _lapse(flow, sid)
    resp = _logout(flow, tokens["id_token"])  # the copy, from a browser holding no session
    assert resp.status_code == 302 and resp.headers["location"].startswith(BYE)
    assert flow.provider.verifier.verify(one.json()["access_token"], audience=API)
    two = _refresh(flow, client_id, one.json()["refresh_token"])
    assert two.status_code == 200, two.text
    with flow.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(grants)
                            .where(grants.c.revoked_at.is_not(None))).scalar_one() == 0


def test_a_hint_of_a_live_session_from_another_browser_revokes_nothing(flow: Flow) -> None:
    client_id, tokens, _ = _signed_in(flow)
    flow.http.cookies.clear()  # not the browser that holds the session
    assert _logout(flow, tokens["id_token"]).status_code == 302
    assert _refresh(flow, client_id, tokens["refresh_token"]).status_code == 200


def test_logout_after_a_face_step_up_revokes_the_grants_of_the_session_it_replaced(flow: Flow) -> None:
    """The reviewer's (b): the step-up (the real FaceService._replace_session) ends session S1 and opens
    S2; the app re-authorises at acr face and logs out with the new id token. S2's grant G2 was revoked,
    S1's grant G1 stayed live."""
    client_id, g1, _ = _signed_in(flow)
    now = utcnow()
    s1 = sessions_for(flow.app).get(_cookie(flow), now=now)
    assert s1 is not None
    acr, amr = face_rules.stepped_up(s1.acr, s1.amr)
    cookie, s2 = face_for(flow.app)._replace_session(s1, acr, amr, FaceMatch(0.3, True, None, 0.6), now)
    flow.http.cookies.set(flow.container.settings.session_cookie, cookie)
    assert _sid_of(flow, g1["refresh_token"]) == s2.sid  # carried over to the session that replaced S1
    g2 = _tokens(flow, client_id, acr_values=acr)
    assert flow.id_token(g2["id_token"])["sid"] == s2.sid
    assert _logout(flow, g2["id_token"]).status_code == 302
    for tokens in (g2, g1):
        refused = _refresh(flow, client_id, tokens["refresh_token"])
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


def test_a_new_login_in_the_browser_ends_its_session_and_its_logout_revokes_the_earlier_grants(flow: Flow) -> None:
    client_id, g1, s1 = _signed_in(flow)
    cookie, s2 = sessions_for(flow.app).create(_person(flow, s1),
                                               acr=assurance.ACR_PASSKEY, amr=assurance.AMR_PASSKEY, now=utcnow(),
                                               replacing=_cookie(flow))
    flow.http.cookies.set(flow.container.settings.session_cookie, cookie)
    with flow.engine.connect() as conn:
        assert conn.execute(sa.select(login_sessions.c.ended_at).where(login_sessions.c.sid == s1)).scalar()
    g2 = _tokens(flow, client_id)
    assert _logout(flow, g2["id_token"]).status_code == 302
    for tokens in (g2, g1):
        assert _refresh(flow, client_id, tokens["refresh_token"]).json()["error"] == "invalid_grant"


def test_another_persons_login_in_the_browser_ends_the_session_but_keeps_its_grants_for_its_rp(app_flow: Flow) -> None:
    """The first person's grants are not the second's to end at his logout; the first's RP ends them with
    its own refresh token at the revocation endpoint."""
    flow = app_flow  # the revocation endpoint is the whole app's
    client_id, g1, s1 = _signed_in(flow)
    cookie, s2 = sessions_for(flow.app).create(flow.person(given="Els"), acr=assurance.ACR_PASSKEY,
                                               amr=assurance.AMR_PASSKEY, now=utcnow(), replacing=_cookie(flow))
    assert _sid_of(flow, g1["refresh_token"]) == s1
    flow.http.cookies.set(flow.container.settings.session_cookie, cookie)
    g2 = _tokens(flow, client_id)
    assert _logout(flow, g2["id_token"]).status_code == 302
    assert _refresh(flow, client_id, g2["refresh_token"]).status_code == 400
    one = _refresh(flow, client_id, g1["refresh_token"])
    assert one.status_code == 200, one.text
    # Nor does his id token, whose session is over (review 124, finding 2): his app logs out with its
    # refresh token (RFC 7009).
    assert _logout(flow, g1["id_token"]).status_code == 302
    two = _refresh(flow, client_id, one.json()["refresh_token"])
    assert two.status_code == 200, two.text
    assert _revoke(flow, client_id, two.json()["refresh_token"]).status_code == 200
    assert _refresh(flow, client_id, two.json()["refresh_token"]).json()["error"] == "invalid_grant"


@pytest.fixture
def penv(engine: sa.Engine, tmp_path: Path) -> Iterator[PEnv]:
    yield from build_env(engine, tmp_path)


def _grant_sid(engine: sa.Engine, gid: uuid.UUID) -> str | None:
    with engine.connect() as conn:
        sid: str | None = conn.execute(sa.select(grants.c.sid).where(grants.c.id == gid)).scalar_one()
    return sid


def test_a_passkey_login_ends_the_browsers_session_and_takes_over_its_grants(penv: PEnv) -> None:
    """The login route hands the browser's cookie on: its session ends, and its grants (the same
    person's) follow the new session, to end with its logout. Another person's login in that browser
    ends the session too, and leaves its grants where they are."""
    env = penv
    pid, phone = env.person(), device()
    _, first = env.enrol(pid, phone)  # the enrolment logs in
    sessions = sessions_for(env.app)
    s1 = sessions.get(first, now=env.clock.now())
    assert s1 is not None
    client_id, _ = create_client(env.engine, name="driver app", role="driver_app", organisation_id=None,
                                 auth_method="none", redirect_uris=["be.quaygate.driver:/callback"],
                                 now=env.clock.now())
    with env.engine.begin() as conn:
        gid = provider_for(env.app).grants.create(
            conn, client_id=client_id, person_id=pid, sid=s1.sid, scope="openid offline_access", acr=s1.acr,
            amr=s1.amr, auth_time=s1.auth_time, dpop_jkt=None, now=env.clock.now())
    flow, options = env.login_options()
    resp = env.post("/webauthn/authentication/verify", {"flow": flow, "credential": phone.get(options)}, cookie=first)
    assert resp.status_code == 200, resp.text
    second = resp.cookies["qg_session"]
    s2 = sessions.get(second, now=env.clock.now())
    assert s2 is not None and sessions.get(first, now=env.clock.now()) is None
    assert _grant_sid(env.engine, gid) == s2.sid
    other_phone = device()
    env.enrol(env.person(), other_phone)
    flow, options = env.login_options()
    resp = env.post("/webauthn/authentication/verify", {"flow": flow, "credential": other_phone.get(options)},
                    cookie=second)
    assert resp.status_code == 200, resp.text
    assert sessions.get(second, now=env.clock.now()) is None
    assert _grant_sid(env.engine, gid) == s2.sid


def _person(flow: Flow, sid: str) -> uuid.UUID:
    with flow.engine.connect() as conn:
        person: uuid.UUID = conn.execute(sa.select(login_sessions.c.person_id)
                                         .where(login_sessions.c.sid == sid)).scalar_one()
    return person


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


# ---- review 161, finding 3: no way back to a client that is no longer usable --------------------------


def _deactivate(flow: Flow, client_id: str, org: uuid.UUID, what: str) -> None:
    """The client, or its organisation, deactivated: authorize then refuses the client (ClientRecord.active)."""
    if what == "client":
        with flow.engine.begin() as conn:
            conn.execute(sa.update(oauth_clients).where(oauth_clients.c.client_id == client_id).values(active=False))
        flow.provider.clients.changed(client_id)
    else:
        set_active(flow.engine, flow.provider.grants, org, active=False, actor="admin", reason="struck off",
                   now=utcnow(), access_token_ttl=600, on_change=flow.provider.clients.changed)
    refused = flow.authorize(client_id, redirect_uri=CONSOLE_REDIRECT)
    assert refused.status_code == 400 and "location" not in refused.headers  # authorize's error page


@pytest.mark.parametrize("hinted", [True, False], ids=["hint", "client_id"])
@pytest.mark.parametrize("what", ["client", "organisation"])
def test_logout_never_sends_the_browser_to_a_deactivated_client(flow: Flow, what: str, hinted: bool) -> None:
    """A deactivated client, or a client of a deactivated organisation, is not one authorize serves, and
    its registered post_logout_redirect_uri is no longer a way back to it (a retired address, maybe a
    domain since let go): the browser is signed out on our own page, the logout itself still done, with a
    hint naming the session as without one (confirmed). Before, logout looked the client up active or not
    and answered 302 to the address."""
    client_id, _, org = flow.console()
    sid = flow.login(flow.person())
    _deactivate(flow, client_id, org, what)
    asked = {"post_logout_redirect_uri": CONSOLE_LOGOUT, "state": "bye-2"}
    if hinted:
        at = int(utcnow().timestamp())
        hint = sign_id_token({"iss": ISSUER, "aud": client_id, "sub": "s", "sid": sid, "iat": at, "exp": at + 300},
                             flow.provider.keys, "RS256")
        done = flow.http.get("/oauth2/logout", params={"id_token_hint": hint, **asked}, follow_redirects=False)
    else:
        ask = flow.http.get("/oauth2/logout", params={"client_id": client_id, **asked}, follow_redirects=False)
        assert ask.status_code == 200 and 'method="post"' in ask.text, ask.headers.get("location")
        assert "console.haulier.example" not in ask.headers["content-security-policy"]
        assert _session_live(flow)
        done = flow.http.post("/oauth2/logout", data={"client_id": client_id, **asked}, headers={"Origin": ISSUER},
                              follow_redirects=False)
    assert done.status_code == 200 and "location" not in done.headers, done.headers.get("location")
    assert "signed out" in done.text
    assert not _session_live(flow)
    # No session left: still the page, never the address.
    again = flow.http.get("/oauth2/logout", params={"client_id": client_id, **asked}, follow_redirects=False)
    assert again.status_code == 200 and "location" not in again.headers

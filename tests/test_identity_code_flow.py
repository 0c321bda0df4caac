"""The authorization code flow with PKCE (RFC 6749 §4.1, RFC 7636, OIDC Core §3.1): the happy paths
and every way in an attacker would try, each refused with the spec's error."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from identity.domain import assurance
from identity.domain.broker import ACR_UPSTREAM_BASIC
from identity.domain.roles import RegistrationRefused
from identity.grants import RefreshRefused
from identity.oidc.issue import at_hash
from identity.tokens import InvalidToken
from quaygate.schema import audit_log, authorization_codes, login_sessions, oauth_clients
from tests.test_identity_code_flow_support import (
    DRIVER_REDIRECT,
    Flow,
    Pkce,
    make_flow,
    query,
)
from tests.test_identity_support import ISSUER, utcnow

API = "quaygate-api"


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from make_flow(engine, tmp_path)


def _audit_kinds(flow: Flow) -> list[str]:
    with flow.engine.connect() as conn:
        return [r.kind for r in conn.execute(sa.select(audit_log.c.kind).order_by(audit_log.c.id))]


# ---- happy paths ---------------------------------------------------------------------------------


def test_driver_app_code_flow_with_pkce_gives_verified_tokens(flow: Flow) -> None:
    client_id = flow.driver_app()
    person = flow.person()
    flow.member(person, flow_org(flow, "transport_operator"), "driver")
    sid = flow.login(person)
    pkce = Pkce()
    resp = flow.authorize(client_id, pkce=pkce, state="s-123", nonce="n-456")
    q = query(resp)
    assert resp.headers["location"].startswith(DRIVER_REDIRECT + "?")
    assert q["state"] == "s-123" and q["iss"] == ISSUER
    token = flow.exchange(client_id, q["code"], pkce.verifier)
    assert token.status_code == 200, token.text
    assert token.headers["cache-control"] == "no-store"
    body = token.json()
    assert body["token_type"] == "Bearer" and body["refresh_token"].startswith("qgr_")
    assert set(body["scope"].split()) == {"openid", "profile", "offline_access", "releases:read"}
    at = flow.provider.verifier.verify(body["access_token"], audience=API)
    assert at["sub"] == at["person_id"] == str(person)
    assert at["client_id"] == client_id and at["role"] == "driver_app" and at["roles"] == ["driver"]
    assert "org" not in at and "org_kind" not in at  # a driver app token never speaks for an org
    assert at["acr"] == assurance.ACR_PASSKEY and at["amr"] == list(assurance.AMR_PASSKEY)
    assert at["sid"] == sid and isinstance(at["auth_time"], int)
    idt = flow.id_token(body["id_token"])
    assert idt["iss"] == ISSUER and idt["sub"] == str(person)
    assert idt["aud"] == client_id and idt["azp"] == client_id
    assert idt["nonce"] == "n-456"
    assert idt["at_hash"] == at_hash(body["access_token"])
    assert idt["acr"] == assurance.ACR_PASSKEY and idt["amr"] == list(assurance.AMR_PASSKEY)
    assert idt["sid"] == sid and idt["auth_time"] == at["auth_time"]
    assert idt["given_name"] == "Jan" and idt["family_name"] == "Peeters"
    assert idt["exp"] - idt["iat"] == flow.container.settings.id_token_ttl
    kinds = _audit_kinds(flow)
    assert "identity.authorization.code_issued" in kinds and "identity.token.issued" in kinds


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", None])
def test_id_tokens_come_in_the_algorithm_the_client_registered(flow: Flow, alg: str | None) -> None:
    """OIDC Registration §2 id_token_signed_response_alg, RS256 when the client registered none;
    access tokens keep the service's algorithm (settings.access_token_signing_alg) whatever it is."""
    client_id = flow.driver_app(extra_metadata={"id_token_signed_response_alg": alg} if alg else None)
    person = flow.person()
    body = flow.driver_tokens(client_id, person)
    expected = alg or "RS256"
    header = flow.header(body["id_token"])
    assert header == {"alg": expected, "typ": "JWT", "kid": flow.provider.keys.signing_key(expected).kid}
    assert flow.id_token(body["id_token"])["sub"] == str(person)  # verified against our published JWKS
    assert flow.header(body["access_token"])["alg"] == flow.container.settings.access_token_signing_alg == "ES256"
    refreshed = flow.http.post("/oauth2/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                      "refresh_token": body["refresh_token"]}).json()
    assert flow.header(refreshed["id_token"])["alg"] == expected  # OIDC Core §12.2: the same algorithm


def flow_org(flow: Flow, kind: str) -> object:
    from tests.test_identity_support import add_org

    return add_org(flow.engine, kind)


def test_driver_app_token_drops_admin_roles(flow: Flow) -> None:
    """A port security admin logging in through the driver app gets no admin power in that token."""
    client_id = flow.driver_app()
    person = flow.person()
    flow.member(person, flow_org(flow, "port_authority"), "port_security_admin")
    body = flow.driver_tokens(client_id, person)
    at = flow.provider.verifier.verify(body["access_token"], audience=API)
    assert at["roles"] == [] and "org" not in at


def test_post_to_authorize_works_like_get(flow: Flow) -> None:
    client_id = flow.driver_app()
    person = flow.person()
    flow.login(person)
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce, method="POST"))
    assert flow.exchange(client_id, code, pkce.verifier).status_code == 200


def test_without_offline_access_there_is_no_refresh_token(flow: Flow) -> None:
    client_id = flow.driver_app()
    person = flow.person()
    body = flow.driver_tokens(client_id, person, scope="openid releases:read")
    assert "refresh_token" not in body and "id_token" in body
    assert "given_name" not in flow.id_token(body["id_token"])  # no profile scope


def test_no_session_goes_to_login_and_resumes_after_it(flow: Flow) -> None:
    client_id = flow.driver_app()
    person = flow.person()
    pkce = Pkce()
    resp = flow.authorize(client_id, pkce=pkce, state="keep-me")
    assert resp.status_code == 302
    loc = urlsplit(resp.headers["location"])
    assert loc.path == "/login" and not loc.netloc
    return_to = parse_qs(loc.query)["return_to"][0]
    assert return_to.startswith("/oauth2/authorize/resume?id=")
    # Still no session: back to the login page, same request.
    again = flow.http.get(return_to, follow_redirects=False)
    assert again.status_code == 302 and urlsplit(again.headers["location"]).path == "/login"
    flow.login(person)
    done = flow.http.get(return_to, follow_redirects=False)
    q = query(done)
    assert q["state"] == "keep-me"
    assert flow.exchange(client_id, q["code"], pkce.verifier).status_code == 200
    # The resumed request is single use.
    assert flow.http.get(return_to, follow_redirects=False).status_code == 400


# ---- PKCE ---------------------------------------------------------------------------------------


def test_pkce_plain_is_refused(flow: Flow) -> None:
    client_id = flow.driver_app()
    flow.login(flow.person())
    pkce = Pkce()
    resp = flow.authorize(client_id, code_challenge=pkce.verifier, code_challenge_method="plain", state="x")
    q = query(resp)
    assert q["error"] == "invalid_request" and q["state"] == "x" and "code" not in q


def test_pkce_missing_is_refused(flow: Flow) -> None:
    client_id = flow.driver_app()
    flow.login(flow.person())
    for drop in (("code_challenge", "code_challenge_method"), ("code_challenge_method",)):
        q = query(flow.authorize(client_id, drop=drop))
        assert q["error"] == "invalid_request" and "code" not in q


def test_wrong_code_verifier_is_invalid_grant_and_burns_the_code(flow: Flow) -> None:
    client_id = flow.driver_app()
    flow.login(flow.person())
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    resp = flow.exchange(client_id, code, Pkce().verifier)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
    # One try only: the right verifier afterwards does not work either.
    assert flow.exchange(client_id, code, pkce.verifier).json()["error"] == "invalid_grant"


def test_missing_code_verifier_is_invalid_request(flow: Flow) -> None:
    client_id = flow.driver_app()
    flow.login(flow.person())
    code = flow.code(flow.authorize(client_id))
    resp = flow.http.post("/oauth2/token", data={"grant_type": "authorization_code", "code": code,
                                                  "redirect_uri": DRIVER_REDIRECT, "client_id": client_id})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"


# ---- the code -----------------------------------------------------------------------------------


def test_code_reuse_revokes_the_first_tokens(flow: Flow) -> None:
    client_id = flow.driver_app()
    person = flow.person()
    flow.login(person)
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    first = flow.exchange(client_id, code, pkce.verifier)
    assert first.status_code == 200
    tokens = first.json()
    flow.provider.verifier.verify(tokens["access_token"], audience=API)  # valid before the reuse
    second = flow.exchange(client_id, code, pkce.verifier)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
    with pytest.raises(InvalidToken):
        flow.provider.verifier.verify(tokens["access_token"], audience=API)
    with flow.engine.connect() as conn, pytest.raises(RefreshRefused) as refused:  # rotate ends a refused txn
        flow.provider.grants.rotate(conn, tokens["refresh_token"], client_id=client_id, now=utcnow())
    assert refused.value.reason == "revoked"
    assert "identity.code.reuse_detected" in _audit_kinds(flow)


def test_expired_code_is_invalid_grant(flow: Flow) -> None:
    client_id = flow.driver_app()
    flow.login(flow.person())
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    with flow.engine.begin() as conn:
        conn.execute(authorization_codes.update().values(expires_at=utcnow() - timedelta(seconds=1)))
    resp = flow.exchange(client_id, code, pkce.verifier)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"


def test_code_of_an_ended_session_is_invalid_grant(flow: Flow) -> None:
    client_id = flow.driver_app()
    flow.login(flow.person())
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    with flow.engine.begin() as conn:  # the person logged out between the redirect and the exchange
        conn.execute(login_sessions.update().values(ended_at=utcnow()))
    resp = flow.exchange(client_id, code, pkce.verifier)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"


def test_code_of_another_client_is_invalid_grant_and_stays_usable(flow: Flow) -> None:
    client_id, thief = flow.driver_app(), flow.driver_app()
    flow.login(flow.person())
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    resp = flow.exchange(thief, code, pkce.verifier)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"
    assert flow.exchange(client_id, code, pkce.verifier).status_code == 200


def test_redirect_uri_at_the_token_endpoint_must_match(flow: Flow) -> None:
    client_id = flow.driver_app(redirect_uris=[DRIVER_REDIRECT, "be.quaygate.driver:/other"])
    flow.login(flow.person())
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    resp = flow.exchange(client_id, code, pkce.verifier, redirect_uri="be.quaygate.driver:/other")
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"


def test_unknown_code_is_invalid_grant(flow: Flow) -> None:
    client_id = flow.driver_app()
    resp = flow.exchange(client_id, "qgc_made-up", Pkce().verifier)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"


# ---- the authorization request ------------------------------------------------------------------


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "be.quaygate.driver:/callback/evil",
        "be.quaygate.driver:/CALLBACK",
        "be.quaygate.driver:/callback?x=1",
        "https://evil.example/callback",
    ],
)
def test_redirect_uri_mismatch_shows_an_error_page_never_a_redirect(flow: Flow, redirect_uri: str) -> None:
    client_id = flow.driver_app()
    flow.login(flow.person())
    resp = flow.authorize(client_id, redirect_uri=redirect_uri)
    assert resp.status_code == 400 and "location" not in resp.headers
    assert resp.headers["content-type"].startswith("text/html")


def test_unknown_client_shows_an_error_page(flow: Flow) -> None:
    resp = flow.authorize("qg-driver-app-unknown")
    assert resp.status_code == 400 and "location" not in resp.headers


def test_response_type_token_is_refused(flow: Flow) -> None:
    client_id = flow.driver_app()
    q = query(flow.authorize(client_id, response_type="token"))
    assert q["error"] == "unsupported_response_type"


def test_scope_outside_the_client_is_invalid_scope(flow: Flow) -> None:
    client_id = flow.driver_app()
    q = query(flow.authorize(client_id, scope="openid admin"))
    assert q["error"] == "invalid_scope"


def test_repeated_parameter_is_refused(flow: Flow) -> None:
    client_id = flow.driver_app()
    resp = flow.http.get(
        f"/oauth2/authorize?client_id={client_id}&client_id={client_id}&redirect_uri={DRIVER_REDIRECT}",
        follow_redirects=False,
    )
    assert resp.status_code == 400 and "location" not in resp.headers
    assert "parameter client_id is repeated" in resp.text  # a name of the protocol's own is named


@pytest.mark.parametrize("path", ["/oauth2/authorize", "/oauth2/logout"])
def test_the_error_page_does_not_echo_an_unknown_parameters_name(flow: Flow, path: str) -> None:
    """Review 128, finding 3: the page said "parameter {name} is repeated" for any name, of any length:
    escaped, but a link could show its own text (a phishing line) on our branded sign-in error page. A
    name is shown only when it is one of the OAuth/OIDC parameters; else "a parameter"."""
    lure = "Your_account_is_locked._Call_+32_3_000_00_00_to_unlock_it"
    for query_string in (f"{lure}=1&{lure}=2", f"{lure}={'x' * 2001}"):
        resp = flow.http.get(f"{path}?{query_string}", follow_redirects=False)
        assert resp.status_code == 400 and "location" not in resp.headers, resp.text
        assert "unlock_it" not in resp.text and "a parameter is" in resp.text, resp.text
    long_state = flow.http.get(f"{path}?state={'x' * 2001}", follow_redirects=False)
    assert long_state.status_code == 400 and "parameter state is too long" in long_state.text


def test_prompt_none_without_session_is_login_required(flow: Flow) -> None:
    client_id = flow.driver_app()
    q = query(flow.authorize(client_id, prompt="none", state="abc"))
    assert q["error"] == "login_required" and q["state"] == "abc" and q["iss"] == ISSUER


def test_prompt_none_with_a_session_gives_a_code(flow: Flow) -> None:
    client_id = flow.driver_app()
    flow.login(flow.person())
    assert "code" in query(flow.authorize(client_id, prompt="none"))


def test_prompt_login_forces_a_fresh_login(flow: Flow) -> None:
    client_id = flow.driver_app()
    person = flow.person()
    flow.login(person, ago=5)
    resp = flow.authorize(client_id, prompt="login")
    loc = urlsplit(resp.headers["location"])
    assert loc.path == "/login"
    flow.login(person)  # the fresh login, after the request
    done = flow.http.get(parse_qs(loc.query)["return_to"][0], follow_redirects=False)
    assert "code" in query(done)


def test_max_age_forces_login(flow: Flow) -> None:
    client_id = flow.driver_app()
    flow.login(flow.person(), ago=3600)
    resp = flow.authorize(client_id, max_age="60")
    assert urlsplit(resp.headers["location"]).path == "/login"
    assert query(flow.authorize(client_id, max_age="60", prompt="none"))["error"] == "login_required"
    assert "code" in query(flow.authorize(client_id, max_age="7200"))


@pytest.mark.parametrize("max_age", ["0", "1"])
def test_a_login_after_the_request_meets_a_max_age_shorter_than_it_took(flow: Flow, max_age: str) -> None:
    """Review 120, finding 5: max_age=0 (OIDC Core §3.1.2.1: like prompt=login) or a few seconds, and a
    login that took longer: the resume after that fresh login gives the code, not /login again."""
    client_id = flow.driver_app()
    person = flow.person()
    flow.login(person, ago=5)
    resp = flow.authorize(client_id, max_age=max_age)
    loc = urlsplit(resp.headers["location"])
    assert loc.path == "/login"
    flow.login(person)  # the fresh login, after the request
    time.sleep(1.1)  # the person takes longer than max_age to come back
    done = flow.http.get(parse_qs(loc.query)["return_to"][0], follow_redirects=False)
    assert "code" in query(done), done.headers["location"]
    # A login older than max_age and made before the request is still refused.
    flow.login(person, ago=5)
    assert query(flow.authorize(client_id, max_age=max_age, prompt="none"))["error"] == "login_required"


# ---- acr: acr_values is voluntary, a client's min_acr is not (review 161, finding 2) ------------------


def _follow(flow: Flow, resp: Any, person: uuid.UUID, *, acr: str = assurance.ACR_PASSKEY,
            answers: list[Any] | None = None) -> list[str]:
    """A browser's way from an authorization answer, logging in again (``acr``) each time it is sent to
    /login, at most three rounds: '/login' per round, then 'code' or the error sent to the client (that
    last answer appended to ``answers``)."""
    trail: list[str] = []
    for _ in range(3):
        loc = urlsplit(resp.headers["location"])
        if loc.path != "/login":
            break
        trail.append("/login")
        flow.login(person, acr=acr)
        resp = flow.http.get(parse_qs(loc.query)["return_to"][0], follow_redirects=False)
    answer = query(resp) if resp.headers["location"].startswith(DRIVER_REDIRECT) else {}
    if "code" in answer or "error" in answer:
        assert answer["iss"] == ISSUER and answer["state"].startswith("st-"), answer
        trail.append("code" if "code" in answer else answer["error"])
        if answers is not None:
            answers.append(resp)
    return trail


def _acr_of(flow: Flow, client_id: str, resp: Any, pkce: Pkce) -> str:
    tokens = flow.exchange(client_id, flow.code(resp), pkce.verifier)
    assert tokens.status_code == 200, tokens.text
    return str(flow.id_token(tokens.json()["id_token"])["acr"])


def _require(flow: Flow, client_id: str, acr: str) -> None:
    """A client's min_acr written as a registration before review 161 let it be (face is refused now)."""
    with flow.engine.begin() as conn:
        conn.execute(sa.update(oauth_clients).where(oauth_clients.c.client_id == client_id).values(min_acr=acr))
    flow.provider.clients.changed(client_id)


def test_acr_values_no_login_reaches_gives_the_code_at_the_level_reached(flow: Flow) -> None:
    """The reviewer's proof: a passkey session, acr_values naming face. No page of ours offers the face
    step-up to a browser sent to log in, and /login reads no acr: before, every login came back to /login
    (three rounds here, no end, no error). acr_values is voluntary (OIDC Core §3.1.2.1): the code now comes
    at the level reached, which the id token's acr states, and the relying party judges."""
    client_id = flow.driver_app()
    person = flow.person()
    flow.login(person, acr=assurance.ACR_PASSKEY)
    pkce, answers = Pkce(), []
    assert _follow(flow, flow.authorize(client_id, pkce=pkce, acr_values=assurance.ACR_FACE), person,
                   answers=answers) == ["code"]
    assert _acr_of(flow, client_id, answers[0], pkce) == assurance.ACR_PASSKEY
    assert "code" in query(flow.authorize(client_id, acr_values=assurance.ACR_FACE, prompt="none"))
    # A new login asked for as well: the login page once, then the code, never the login page again.
    again = flow.authorize(client_id, acr_values=assurance.ACR_FACE, prompt="login")
    assert _follow(flow, again, person) == ["/login", "code"]


@pytest.mark.parametrize("logs_in_with", [ACR_UPSTREAM_BASIC, assurance.ACR_PASSKEY])
def test_acr_values_a_login_reaches_is_asked_for_once(flow: Flow, logs_in_with: str) -> None:
    """acr_values naming a level a login of ours reaches (a passkey), over a session below it (an itsme
    basic login): the login page once, where the person may log in with his passkey; whatever he logs in
    with, the resume gives the code at the level reached, never the login page again. prompt=none: the
    code at once (the level is voluntary, no interaction is needed)."""
    client_id = flow.driver_app()
    person = flow.person()
    flow.login(person, acr=ACR_UPSTREAM_BASIC)
    pkce, answers = Pkce(), []
    resp = flow.authorize(client_id, pkce=pkce, acr_values=assurance.ACR_PASSKEY)
    assert _follow(flow, resp, person, acr=logs_in_with, answers=answers) == ["/login", "code"]
    assert _acr_of(flow, client_id, answers[0], pkce) == logs_in_with
    flow.login(person, acr=ACR_UPSTREAM_BASIC)
    pkce = Pkce()
    silent = flow.authorize(client_id, pkce=pkce, acr_values=assurance.ACR_PASSKEY, prompt="none")
    assert _acr_of(flow, client_id, silent, pkce) == ACR_UPSTREAM_BASIC


def _upstreams(level: str) -> dict[str, dict[str, str]]:
    """QUAYGATE_UPSTREAMS naming itsme at ``level`` (never reached: authorization asks nothing of it)."""
    return {"itsme": {"discovery_url": "https://idp.e2e.itsme.services/v2/.well-known/openid-configuration",
                      "client_id": "quaygate", "level": level}}


def test_client_min_acr_is_enforced(engine: sa.Engine, tmp_path: Path) -> None:
    """An itsme upstream configured at level advanced: its login reaches the upstream level, so a client
    may require it; a passkey session is sent to the login page, an upstream one gets the code."""
    for flow in make_flow(engine, tmp_path, upstreams=_upstreams("advanced")):
        client_id = flow.driver_app(min_acr=assurance.ACR_UPSTREAM)
        flow.login(flow.person(), acr=assurance.ACR_PASSKEY)
        assert query(flow.authorize(client_id, prompt="none"))["error"] == "login_required"
        assert urlsplit(flow.authorize(client_id).headers["location"]).path == "/login"
        flow.login(flow.person(), acr=assurance.ACR_UPSTREAM)
        assert "code" in query(flow.authorize(client_id))


_NO_UPSTREAM_LOGIN = pytest.mark.parametrize("upstreams", [{}, _upstreams("basic")], ids=["none", "basic"])


@_NO_UPSTREAM_LOGIN
def test_an_upstream_minimum_no_login_here_reaches_is_unmet_never_a_login_loop(
        engine: sa.Engine, tmp_path: Path, upstreams: dict[str, Any]) -> None:
    """Review 164, finding 1, the reviewer's proof: no upstream configured (the default; the login page
    offers passkeys only), or itsme at level basic (its login is urn:quaygate:acr:upstream:basic, which
    meets no level): no login here reaches urn:quaygate:acr:upstream. A client requiring it (registered
    while an advanced upstream was configured) sent every passkey login back to /login, three rounds here,
    until the resume expired, no error. Now unmet_authentication_requirements at once, with state and iss;
    a session that holds the level (from before the change) still gets its code."""
    for flow in make_flow(engine, tmp_path, upstreams=upstreams):
        client_id = flow.driver_app()
        _require(flow, client_id, assurance.ACR_UPSTREAM)
        person = flow.person()
        unmet = ["unmet_authentication_requirements"]
        assert _follow(flow, flow.authorize(client_id), person) == unmet  # no session
        flow.login(person, acr=assurance.ACR_PASSKEY)
        for prompt in ({}, {"prompt": "none"}, {"prompt": "login"}, {"max_age": "0"}):
            assert _follow(flow, flow.authorize(client_id, **prompt), person) == unmet, prompt
        flow.login(person, acr=ACR_UPSTREAM_BASIC)
        assert _follow(flow, flow.authorize(client_id), person) == unmet
        flow.login(person, acr=assurance.ACR_UPSTREAM)
        assert _follow(flow, flow.authorize(client_id), person) == ["code"]


@_NO_UPSTREAM_LOGIN
def test_an_upstream_minimum_no_login_here_reaches_is_not_registered(
        engine: sa.Engine, tmp_path: Path, upstreams: dict[str, Any]) -> None:
    for flow in make_flow(engine, tmp_path, upstreams=upstreams):
        with pytest.raises(RegistrationRefused, match="min_acr must be one a login here reaches: "
                                                      "urn:quaygate:acr:passkey$"):
            flow.driver_app(min_acr=assurance.ACR_UPSTREAM)
        flow.driver_app(min_acr=assurance.ACR_PASSKEY)


@_NO_UPSTREAM_LOGIN
def test_acr_values_naming_an_upstream_level_no_login_here_reaches_gives_the_code_at_once(
        engine: sa.Engine, tmp_path: Path, upstreams: dict[str, Any]) -> None:
    """acr_values is voluntary: a level no login here reaches is not asked of the login page."""
    for flow in make_flow(engine, tmp_path, upstreams=upstreams):
        client_id = flow.driver_app()
        person = flow.person()
        flow.login(person, acr=assurance.ACR_PASSKEY)
        assert _follow(flow, flow.authorize(client_id, acr_values=assurance.ACR_UPSTREAM), person) == ["code"]


def test_a_required_level_no_login_reaches_is_unmet_never_a_login_loop(flow: Flow) -> None:
    """A client whose min_acr is face (registered before that was refused): no page of ours reaches it,
    so a browser without such a session is answered at once with unmet_authentication_requirements
    (OpenID Connect Core Unmet Authentication Requirements 1.0) at the redirect_uri, with state and iss,
    never sent to /login for ever as before; a session stepped up to face gets its code."""
    client_id = flow.driver_app()
    _require(flow, client_id, assurance.ACR_FACE)
    person = flow.person()
    unmet = ["unmet_authentication_requirements"]
    assert _follow(flow, flow.authorize(client_id), person) == unmet  # no session
    flow.login(person, acr=assurance.ACR_PASSKEY)
    for prompt in ({}, {"prompt": "none"}, {"prompt": "login"}, {"max_age": "0"}):
        assert _follow(flow, flow.authorize(client_id, **prompt), person) == unmet, prompt
    flow.login(person, acr=assurance.ACR_FACE)
    assert _follow(flow, flow.authorize(client_id), person) == ["code"]
    # A new login asked for over the face session: the login page once; the login reaches passkey, not face.
    assert _follow(flow, flow.authorize(client_id, prompt="login"), person) == ["/login", *unmet]
    with flow.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(authorization_codes)).scalar() == 1


def test_a_minimum_no_login_reaches_is_not_registered(flow: Flow) -> None:
    with pytest.raises(RegistrationRefused, match="min_acr"):
        flow.driver_app(min_acr=assurance.ACR_FACE)


def test_suspended_person_is_access_denied(flow: Flow) -> None:
    client_id = flow.driver_app()
    flow.login(flow.person(status="suspended"))
    assert query(flow.authorize(client_id))["error"] == "access_denied"


def test_request_object_is_not_supported(flow: Flow) -> None:
    client_id = flow.driver_app()
    assert query(flow.authorize(client_id, request="eyJ.x.y"))["error"] == "request_not_supported"

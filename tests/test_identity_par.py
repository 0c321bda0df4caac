"""Pushed authorization requests (RFC 9126) and confidential consoles, DPoP at the token endpoint
(RFC 9449 §5, §10) and the UserInfo endpoint (OIDC Core §5.3)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.domain.roles import RegistrationRefused
from tests.test_identity_code_flow_support import (
    CONSOLE_REDIRECT,
    DRIVER_REDIRECT,
    Flow,
    Pkce,
    make_flow,
    query,
)
from tests.test_identity_dpop_support import ProofKey
from tests.test_identity_support import ISSUER, add_org, basic

API = "quaygate-api"
TOKEN_URL = ISSUER + "/oauth2/token"
USERINFO_URL = ISSUER + "/oauth2/userinfo"


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from make_flow(engine, tmp_path)


def _push(flow: Flow, client_id: str, secret: str, pkce: Pkce, **extra: str) -> Any:
    data = {
        "response_type": "code",
        "redirect_uri": CONSOLE_REDIRECT,
        "scope": "openid profile releases:read",
        "state": "par-state",
        "nonce": "par-nonce",
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    return flow.http.post("/oauth2/par", data=data, headers=basic(client_id, secret))


def _console_person(flow: Flow, org: Any, role: str = "dispatcher") -> Any:
    person = flow.person()
    flow.member(person, org, role)
    return person


def test_console_code_flow_through_par(flow: Flow) -> None:
    client_id, secret, org = flow.console()
    person = _console_person(flow, org)
    other_org = add_org(flow.engine, "shipping_line")
    flow.member(person, other_org, "org_admin")  # a role elsewhere does not leak into this console
    sid = flow.login(person)
    pkce = Pkce()
    pushed = _push(flow, client_id, secret, pkce)
    assert pushed.status_code == 201, pushed.text
    body = pushed.json()
    assert body["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    assert body["expires_in"] == flow.container.settings.par_ttl
    resp = flow.http.get(
        "/oauth2/authorize", params={"client_id": client_id, "request_uri": body["request_uri"]}, follow_redirects=False
    )
    q = query(resp)
    assert resp.headers["location"].startswith(CONSOLE_REDIRECT) and q["state"] == "par-state"
    tokens = flow.exchange(client_id, q["code"], pkce.verifier, redirect_uri=CONSOLE_REDIRECT, secret=secret)
    assert tokens.status_code == 200, tokens.text
    at = flow.provider.verifier.verify(tokens.json()["access_token"], audience=API)
    assert at["org"] == str(org) and at["org_kind"] == "transport_operator"
    assert at["roles"] == ["dispatcher"] and at["role"] == "console" and at["sid"] == sid
    assert flow.id_token(tokens.json()["id_token"])["nonce"] == "par-nonce"


def test_console_without_par_is_refused(flow: Flow) -> None:
    client_id, _, org = flow.console()
    flow.login(_console_person(flow, org))
    q = query(flow.authorize(client_id, redirect_uri=CONSOLE_REDIRECT, state="s"))
    assert q["error"] == "invalid_request" and q["state"] == "s" and "code" not in q


def test_confidential_console_always_requires_par(flow: Flow) -> None:
    client_id, _, _ = flow.console(require_par=False)
    assert flow.provider.clients.find(client_id).require_par  # type: ignore[union-attr]


def test_console_refuses_a_person_outside_its_organisation(flow: Flow) -> None:
    client_id, secret, _ = flow.console()
    outsider = flow.person()
    flow.member(outsider, add_org(flow.engine, "transport_operator"), "dispatcher")
    flow.login(outsider)
    pkce = Pkce()
    uri = _push(flow, client_id, secret, pkce).json()["request_uri"]
    resp = flow.http.get("/oauth2/authorize", params={"client_id": client_id, "request_uri": uri},
                         follow_redirects=False)
    assert query(resp)["error"] == "access_denied"


def test_par_request_uri_is_single_use(flow: Flow) -> None:
    client_id, secret, org = flow.console()
    flow.login(_console_person(flow, org))
    uri = _push(flow, client_id, secret, Pkce()).json()["request_uri"]
    params = {"client_id": client_id, "request_uri": uri}
    assert "code" in query(flow.http.get("/oauth2/authorize", params=params, follow_redirects=False))
    again = flow.http.get("/oauth2/authorize", params=params, follow_redirects=False)
    assert again.status_code == 400 and "location" not in again.headers


def test_par_request_uri_of_another_client_is_refused(flow: Flow) -> None:
    client_id, secret, org = flow.console()
    other_id, _, _ = flow.console()
    flow.login(_console_person(flow, org))
    uri = _push(flow, client_id, secret, Pkce()).json()["request_uri"]
    resp = flow.http.get("/oauth2/authorize", params={"client_id": other_id, "request_uri": uri},
                         follow_redirects=False)
    assert resp.status_code == 400 and "location" not in resp.headers
    # Not consumed by the attempt: the client that pushed it still can.
    ok = flow.http.get("/oauth2/authorize", params={"client_id": client_id, "request_uri": uri},
                       follow_redirects=False)
    assert "code" in query(ok)


def test_par_request_uri_expires(engine: sa.Engine, tmp_path: Path) -> None:
    for flow in _flow_with(engine, tmp_path, par_ttl=0):
        client_id, secret, org = flow.console()
        flow.login(_console_person(flow, org))
        uri = _push(flow, client_id, secret, Pkce()).json()["request_uri"]
        resp = flow.http.get("/oauth2/authorize", params={"client_id": client_id, "request_uri": uri},
                             follow_redirects=False)
        assert resp.status_code == 400 and "location" not in resp.headers


def _flow_with(engine: sa.Engine, tmp_path: Path, **kw: Any) -> Iterator[Flow]:
    yield from make_flow(engine, tmp_path, **kw)


def test_par_needs_client_authentication(flow: Flow) -> None:
    client_id, secret, _ = flow.console()
    resp = _push(flow, client_id, secret + "x", Pkce())
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"


def test_par_validates_like_authorize(flow: Flow) -> None:
    client_id, secret, _ = flow.console()
    bad_redirect = _push(flow, client_id, secret, Pkce(), redirect_uri="https://evil.example/cb")
    assert bad_redirect.status_code == 400 and bad_redirect.json()["error"] == "invalid_request"
    plain = _push(flow, client_id, secret, Pkce(), code_challenge_method="plain")
    assert plain.status_code == 400 and plain.json()["error"] == "invalid_request"
    data = {"client_id": "qg-console-someone-else", "response_type": "code", "redirect_uri": CONSOLE_REDIRECT,
            "code_challenge": Pkce().challenge, "code_challenge_method": "S256"}
    other = flow.http.post("/oauth2/par", data=data, headers=basic(client_id, secret))
    assert other.status_code in (400, 401) and "request_uri" not in other.json()


def test_authorize_ignores_query_parameters_beside_request_uri(flow: Flow) -> None:
    client_id, secret, org = flow.console()
    flow.login(_console_person(flow, org))
    uri = _push(flow, client_id, secret, Pkce()).json()["request_uri"]
    resp = flow.http.get(
        "/oauth2/authorize",
        params={"client_id": client_id, "request_uri": uri, "redirect_uri": "https://evil.example/cb"},
        follow_redirects=False,
    )
    assert resp.headers["location"].startswith(CONSOLE_REDIRECT)


# ---- DPoP at the token endpoint -------------------------------------------------------------


def test_dpop_proof_binds_the_code_grant_tokens(flow: Flow) -> None:
    client_id = flow.driver_app()
    flow.login(flow.person())
    key = ProofKey()
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce, dpop_jkt=key.jkt))
    resp = flow.exchange(client_id, code, pkce.verifier, headers={"DPoP": key.proof("POST", TOKEN_URL)})
    assert resp.status_code == 200, resp.text
    assert resp.json()["token_type"] == "DPoP"
    at = flow.provider.verifier.verify(resp.json()["access_token"], audience=API)
    assert at["cnf"] == {"jkt": key.jkt}
    # UserInfo with a bound token: only with a proof of the same key, under the DPoP scheme.
    token = resp.json()["access_token"]
    bearer = flow.http.get("/oauth2/userinfo", headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 401
    no_proof = flow.http.get("/oauth2/userinfo", headers={"Authorization": f"DPoP {token}"})
    assert no_proof.status_code == 401
    other_key = ProofKey()
    wrong = flow.http.get("/oauth2/userinfo", headers={
        "Authorization": f"DPoP {token}", "DPoP": other_key.proof("GET", USERINFO_URL, token=token)})
    assert wrong.status_code == 401
    ok = flow.http.get("/oauth2/userinfo", headers={
        "Authorization": f"DPoP {token}", "DPoP": key.proof("GET", USERINFO_URL, token=token)})
    assert ok.status_code == 200, ok.text


def test_a_code_exchange_and_userinfo_asked_for_the_epochs_nonce_go_through_with_it(
        flow: Flow, epochs_as_made: None) -> None:
    """The provider's cache has just begun its dataset (quaygate/dataset.py): a proof made now could have
    been used before it. The token endpoint answers 400 ``use_dpop_nonce`` with the nonce (RFC 9449 §8)
    without using up the code, so the client's retry with the nonce gets its tokens; UserInfo answers
    401 ``use_dpop_nonce`` (§9), and the proof with the nonce is served."""
    client_id = flow.driver_app()
    flow.login(flow.person())
    key = ProofKey()
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce, dpop_jkt=key.jkt))
    asked = flow.exchange(client_id, code, pkce.verifier, headers={"DPoP": key.proof("POST", TOKEN_URL)})
    assert asked.status_code == 400 and asked.json()["error"] == "use_dpop_nonce", asked.text
    nonce = asked.headers["DPoP-Nonce"]
    resp = flow.exchange(client_id, code, pkce.verifier,
                         headers={"DPoP": key.proof("POST", TOKEN_URL, claims={"nonce": nonce})})
    assert resp.status_code == 200, resp.text
    token = resp.json()["access_token"]
    refused = flow.http.get("/oauth2/userinfo", headers={
        "Authorization": f"DPoP {token}", "DPoP": key.proof("GET", USERINFO_URL, token=token)})
    assert refused.status_code == 401 and refused.json()["error"] == "use_dpop_nonce", refused.text
    assert refused.headers["DPoP-Nonce"] == nonce
    assert refused.headers["WWW-Authenticate"].startswith('DPoP error="use_dpop_nonce"')
    ok = flow.http.get("/oauth2/userinfo", headers={
        "Authorization": f"DPoP {token}", "DPoP": key.proof("GET", USERINFO_URL, token=token,
                                                             claims={"nonce": nonce})})
    assert ok.status_code == 200, ok.text


def test_dpop_jkt_of_the_authorization_request_must_match_the_proof(flow: Flow) -> None:
    client_id = flow.driver_app()
    flow.login(flow.person())
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce, dpop_jkt=ProofKey().jkt))
    resp = flow.exchange(client_id, code, pkce.verifier, headers={"DPoP": ProofKey().proof("POST", TOKEN_URL)})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_dpop_proof"


def test_dpop_bound_client_without_proof_is_refused(flow: Flow) -> None:
    client_id = flow.driver_app(dpop_bound=True)
    flow.login(flow.person())
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    resp = flow.exchange(client_id, code, pkce.verifier)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_dpop_proof"


def test_dpop_proof_for_another_uri_is_refused(flow: Flow) -> None:
    client_id = flow.driver_app()
    flow.login(flow.person())
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    proof = ProofKey().proof("POST", ISSUER + "/oauth2/par")
    resp = flow.exchange(client_id, code, pkce.verifier, headers={"DPoP": proof})
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_dpop_proof"


def test_client_credentials_bind_to_a_dpop_proof(flow: Flow) -> None:
    from identity.bootstrap import create_client
    from tests.test_identity_support import utcnow

    org = add_org(flow.engine, "shipping_line")
    client_id, secret = create_client(flow.engine, name="line", role="shipping_line", organisation_id=org,
                                      now=utcnow())
    assert secret is not None
    key = ProofKey()
    resp = flow.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                          headers={**basic(client_id, secret), "DPoP": key.proof("POST", TOKEN_URL)})
    assert resp.status_code == 200, resp.text
    assert resp.json()["token_type"] == "DPoP"
    assert flow.provider.verifier.verify(resp.json()["access_token"], audience=API)["cnf"] == {"jkt": key.jkt}
    bound_id, bound_secret = create_client(flow.engine, name="line2", role="shipping_line", organisation_id=org,
                                           now=utcnow(), dpop_bound=True)
    assert bound_secret is not None
    bare = flow.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                          headers=basic(bound_id, bound_secret))
    assert bare.status_code == 400 and bare.json()["error"] == "invalid_dpop_proof"


# ---- UserInfo -------------------------------------------------------------------------------


def test_userinfo_gives_sub_and_names_with_profile(flow: Flow) -> None:
    client_id = flow.driver_app()
    person = flow.person(given="Marie", family="Claes")
    tokens = flow.driver_tokens(client_id, person)
    resp = flow.http.get("/oauth2/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"sub": str(person), "given_name": "Marie", "family_name": "Claes", "name": "Marie Claes"}
    post = flow.http.post("/oauth2/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert post.status_code == 200


def test_userinfo_without_profile_gives_only_sub(flow: Flow) -> None:
    client_id = flow.driver_app()
    person = flow.person()
    tokens = flow.driver_tokens(client_id, person, scope="openid")
    resp = flow.http.get("/oauth2/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert resp.json() == {"sub": str(person)}


def test_userinfo_refuses_tokens_without_openid_and_bad_tokens(flow: Flow) -> None:
    client_id = flow.driver_app()
    tokens = flow.driver_tokens(client_id, flow.person(), scope="releases:read")
    resp = flow.http.get("/oauth2/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert resp.status_code == 403 and resp.json()["error"] == "insufficient_scope"
    bad = flow.http.get("/oauth2/userinfo", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert flow.http.get("/oauth2/userinfo").status_code == 401


# ---- registration rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    ["http://evil.example/cb", "https://a.example/cb#frag", "javascript:alert(1)", "ftp://a.example/", ""],
)
def test_bad_redirect_uris_are_refused_at_registration(flow: Flow, uri: str) -> None:
    with pytest.raises(RegistrationRefused):
        flow.driver_app(redirect_uris=[uri])


def test_machine_clients_take_no_redirect_uris(flow: Flow) -> None:
    from identity.bootstrap import create_client
    from tests.test_identity_support import utcnow

    org = add_org(flow.engine, "shipping_line")
    with pytest.raises(RegistrationRefused):
        create_client(flow.engine, name="x", role="shipping_line", organisation_id=org, now=utcnow(),
                      redirect_uris=["https://a.example/cb"])


def _carried(client_id: str, redirect_uri: str, pkce: Pkce) -> Any:
    """A request as the pushed-request and resume paths carry it, made outside /oauth2/par: what a holder of
    the key that seals it (a leaked data key, review 135 finding 1) can make for any client."""
    import time

    from identity.oidc.authorize import AuthorizationRequest

    return AuthorizationRequest(client_id=client_id, redirect_uri=redirect_uri, scope="openid", state="thief",
                                nonce="n", code_challenge=pkce.challenge, prompt=(), max_age=None, acr=None,
                                dpop_jkt=None, created_at=time.time(), pushed=True)


def test_a_carried_request_to_an_unregistered_redirect_uri_gets_no_code(flow: Flow) -> None:
    """Review 135, finding 1 (i): /authorize held a pushed request's redirect_uri as checked at the push, so a
    request_uri made with the data key (a public client's is the request sealed) sent the victim's code to
    the maker's own address. The pushed and the resumed request's redirect_uri is checked again against the
    client's registration: the error page, no redirect, no code."""
    client_id = flow.driver_app()
    flow.login(flow.person())
    thief = "https://thief.example/cb"
    uri = flow.provider.pushed.push(_carried(client_id, thief, Pkce()), public=True)
    resp = flow.http.get("/oauth2/authorize", params={"client_id": client_id, "request_uri": uri},
                         follow_redirects=False)
    assert resp.status_code == 400 and "location" not in resp.headers, resp.headers.get("location")
    rid = flow.provider.pending.save(_carried(client_id, thief, Pkce()))
    resumed = flow.http.get("/oauth2/authorize/resume", params={"id": rid}, follow_redirects=False)
    assert resumed.status_code == 400 and "location" not in resumed.headers, resumed.headers.get("location")
    # The same request to the registered redirect_uri goes through (only the address was wrong).
    ok = flow.provider.pushed.push(_carried(client_id, DRIVER_REDIRECT, Pkce()), public=True)
    done = flow.http.get("/oauth2/authorize", params={"client_id": client_id, "request_uri": ok},
                         follow_redirects=False)
    assert done.headers["location"].startswith(DRIVER_REDIRECT) and "code" in query(done)


def test_a_request_uri_sealed_under_a_previous_data_key_is_refused(engine: sa.Engine, tmp_path: Path) -> None:
    """Review 135, finding 1 (ii): a public client's request_uri is the request sealed, nothing of it stored,
    so one sealed under a previous data key (kept configured while the database is sealed again, and maybe
    the key that leaked) is refused, even to the registered redirect_uri; one under the current key works."""
    import base64

    from identity.oidc.par import PushedRequests
    from quaygate.crypto import DataCipher

    old, new = bytes(range(32)), bytes(range(100, 132))

    def b64(key: bytes) -> str:
        return base64.urlsafe_b64encode(key).decode()

    for flow in _flow_with(engine, tmp_path, data_key=b64(new), data_keys_previous=b64(old)):
        client_id = flow.driver_app()
        flow.login(flow.person())
        minted = PushedRequests(flow.container.cache, ttl=60, cipher=DataCipher(old)).push(
            _carried(client_id, DRIVER_REDIRECT, Pkce()), public=True)
        params = {"client_id": client_id, "request_uri": minted}
        resp = flow.http.get("/oauth2/authorize", params=params, follow_redirects=False)
        assert resp.status_code == 400 and "location" not in resp.headers, resp.headers.get("location")
        pushed = flow.http.post("/oauth2/par", data={
            "client_id": client_id, "response_type": "code", "redirect_uri": DRIVER_REDIRECT, "scope": "openid",
            "state": "st", "nonce": "n", "code_challenge": Pkce().challenge, "code_challenge_method": "S256"})
        assert pushed.status_code == 201, pushed.text
        ok = flow.http.get("/oauth2/authorize", params={"client_id": client_id,
                                                        "request_uri": pushed.json()["request_uri"]},
                           follow_redirects=False)
        assert "code" in query(ok)

"""Mends from security review 61: a stranger cannot spend a client's allowance (every client
authentication failure is 401 and only an authenticated client is counted), max_age in ASCII digits
only, no key reload for a retired kid, IPv6 addresses limited by their /64."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.keys import KeyStore
from identity.ratelimit import Limits, LoginGuard, RateLimiter, address_keys
from identity.tokens import InvalidToken, sign_access_token
from quaygate.cache import MemoryCache
from tests.test_identity_code_flow_support import CONSOLE_REDIRECT, Flow, Pkce, make_flow, query
from tests.test_identity_ratelimit import Served, _clear_of_a_window_edge, line_client, serve
from tests.test_identity_support import ISSUER, Env, assertion, basic, make_env, public_jwks, rsa_key

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CC = {"grant_type": "client_credentials"}


def _b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _junk(claims: Any) -> str:
    """A three-part JWS anyone can make: no key, no valid signature."""
    return f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}.AAAA"


def _assertion_form(token: str, client_id: str | None = None) -> dict[str, str]:
    form = {**CC, "client_assertion_type": ASSERTION_TYPE, "client_assertion": token}
    return {**form, "client_id": client_id} if client_id is not None else form


def _refused_as_client(r: Any) -> None:
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client"), r.text
    assert r.headers["www-authenticate"].startswith("Basic ")  # RFC 6749 §5.2
    assert r.headers["cache-control"] == "no-store"


@pytest.fixture
def per_client(engine: sa.Engine, tmp_path: Path) -> Iterator[Served]:
    for served in serve(engine, tmp_path, MemoryCache(), rate_limit_per_address=100, rate_limit_per_client=2):
        _clear_of_a_window_edge()
        yield served


# -- M2: a stranger cannot spend a client's allowance ---------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "private_key_jwt"])
def test_junk_assertions_naming_a_client_do_not_spend_its_allowance(per_client: Served, method: str) -> None:
    """The review's probe: no key needed, each junk assertion in the victim's name was a 400 charged to
    the victim, and after the per-client limit the victim's own requests were refused 429."""
    key = rsa_key()
    kw: dict[str, Any] = {}
    if method == "private_key_jwt":
        kw = {"auth_method": "private_key_jwt", "jwks": public_jwks(key)}
    victim, secret = line_client(per_client.engine, **kw)
    for _ in range(6):
        r = per_client.http.post("/oauth2/token", data=_assertion_form(_junk({"sub": victim, "iss": victim}), victim))
        _refused_as_client(r)

    def own() -> Any:
        if secret is not None:
            return per_client.http.post("/oauth2/token", data=CC, auth=(victim, secret))
        return per_client.http.post("/oauth2/token", data=_assertion_form(assertion(key, victim), victim))

    assert own().status_code == 200
    assert own().status_code == 200
    assert own().status_code == 429  # its own requests are still counted (limit 2)


@pytest.mark.parametrize("grant_type", ["client_credentials", "no_such_grant", "authorization_code"])
def test_a_junk_secret_for_a_client_does_not_spend_its_allowance(per_client: Served, grant_type: str) -> None:
    """A wrong password in the Basic header or in the form; with a grant that fails before the client
    is authenticated too (an unknown grant_type, a code grant without code: 400s in the client's name)."""
    victim, secret = line_client(per_client.engine)
    form = {"grant_type": grant_type}
    for _ in range(4):
        per_client.http.post("/oauth2/token", data=form, auth=(victim, "wrong"))
        per_client.http.post("/oauth2/token", data={**form, "client_id": victim, "client_secret": "wrong"})
    assert per_client.http.post("/oauth2/token", data=CC, auth=(victim, secret or "")).status_code == 200


def test_every_client_assertion_refusal_is_401(per_client: Served) -> None:
    key = rsa_key()
    victim, _ = line_client(per_client.engine, auth_method="private_key_jwt", jwks=public_jwks(key))
    secret_client, _ = line_client(per_client.engine)  # no registered keys
    used = assertion(key, victim)
    assert per_client.http.post("/oauth2/token", data=_assertion_form(used)).status_code == 200
    cases = {
        "junk": _junk({"sub": victim, "iss": victim}),
        "not a JWS": "a.b",
        "payload not JSON": f"{_b64({'alg': 'RS256'})}.{_b64(b'nope')}.AAAA",
        "no sub": _junk({"iss": victim}),
        "sub not a string": _junk({"sub": 7, "iss": victim}),
        "unknown client": assertion(key, "qg-nobody"),
        "client without keys": assertion(key, secret_client),
        "another key": assertion(rsa_key(), victim),
        "replayed": used,
        "wrong audience": assertion(key, victim, aud="https://elsewhere.example/token"),
    }
    for name, token in cases.items():
        r = per_client.http.post("/oauth2/token", data=_assertion_form(token))
        assert r.status_code == 401, (name, r.text)
        _refused_as_client(r)
    mismatch = _assertion_form(assertion(key, victim), "qg-someone-else")
    _refused_as_client(per_client.http.post("/oauth2/token", data=mismatch))
    unknown_post = {**CC, "client_id": "qg-nobody", "client_secret": "x"}
    _refused_as_client(per_client.http.post("/oauth2/token", data=unknown_post))
    par = per_client.http.post("/oauth2/par", data=_assertion_form(_junk({"sub": victim, "iss": victim}), victim))
    _refused_as_client(par)


# -- L1: max_age is ASCII digits -------------------------------------------------------------------------

BAD_MAX_AGES = ["²", "٣", "-1", "1e3", "12345678901234567890", " 5", "5\n"]  # "" counts as absent (RFC 6749 §3.1)


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from make_flow(engine, tmp_path)


@pytest.mark.parametrize("max_age", BAD_MAX_AGES)
def test_authorize_refuses_a_max_age_that_is_not_ascii_digits(flow: Flow, max_age: str) -> None:
    resp = flow.authorize(flow.driver_app(), max_age=max_age)
    assert resp.status_code == 302, resp.text  # back to the client (the redirect_uri is known good)
    assert query(resp)["error"] == "invalid_request"


def test_authorize_takes_an_ascii_max_age(flow: Flow) -> None:
    resp = flow.authorize(flow.driver_app(), max_age="300")
    assert resp.status_code == 302 and "error" not in query(resp)


@pytest.mark.parametrize("max_age", BAD_MAX_AGES)
def test_par_refuses_a_max_age_that_is_not_ascii_digits(flow: Flow, max_age: str) -> None:
    client_id, secret, _ = flow.console()
    data = {"response_type": "code", "redirect_uri": CONSOLE_REDIRECT, "scope": "openid",
            "code_challenge": Pkce().challenge, "code_challenge_method": "S256", "max_age": max_age}
    resp = flow.http.post("/oauth2/par", data=data, headers=basic(client_id, secret))
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_request", resp.text
    ok = flow.http.post("/oauth2/par", data={**data, "max_age": "60"}, headers=basic(client_id, secret))
    assert ok.status_code == 201, ok.text


@pytest.mark.parametrize("name", ["code_challenge", "dpop_jkt"])
def test_authorize_refuses_a_trailing_newline_in_a_43_character_parameter(flow: Flow, name: str) -> None:
    resp = flow.authorize(flow.driver_app(), **{name: "A" * 43 + "\n"})
    assert resp.status_code == 302 and query(resp)["error"] == "invalid_request"


# -- L4: a retired kid forces no reload --------------------------------------------------------------


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Env]:
    yield from make_env(engine, tmp_path)


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "sub": "qg-c", "aud": "quaygate-api", "exp": now + 300, "iat": now, "nbf": now,
            "jti": "j-1", "client_id": "qg-c"}


def _count_loads(keys: KeyStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    loads: list[int] = []
    load = keys._load

    def counted() -> Any:
        loads.append(1)
        return load()

    monkeypatch.setattr(keys, "_load", counted)
    return loads


def test_a_token_naming_a_retired_kid_forces_no_reload(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, verifier = env.provider.keys, env.provider.verifier
    old = sign_access_token(_claims(), keys.signing_key("RS256"))
    now = env.container.clock.now()
    keys.rotate(now)
    keys.rotate(now + timedelta(days=1))  # the first key: retiring, then retired
    verifier.verify(sign_access_token(_claims(), keys.signing_key("RS256")), audience="quaygate-api")
    loads = _count_loads(keys, monkeypatch)
    for _ in range(5):
        with pytest.raises(InvalidToken):
            verifier.verify(old, audience="quaygate-api")
    assert loads == []
    # A key rotated in by another replica is still found, with one reload.
    other = KeyStore(env.container.engine, env.container.cipher)
    other.rotate(datetime.now(UTC), ["ES256"])
    fresh = sign_access_token(_claims(), other.signing_key("ES256"))
    for _ in range(3):
        assert verifier.verify(fresh, audience="quaygate-api")["client_id"] == "qg-c"
    assert loads == [1]


# -- L3: IPv6 addresses by their /64 ---------------------------------------------------------------------


def test_ipv6_addresses_share_a_counter_per_64() -> None:
    assert address_keys("2001:db8::1")[0] == address_keys("2001:db8::2")[0] == address_keys("2001:db8::ffff:1:2:3")[0]
    assert address_keys("2001:db8:0:1::1")[0] != address_keys("2001:db8::1")[0]
    assert address_keys("::ffff:192.0.2.7")[0] == address_keys("192.0.2.7")[0] == "192.0.2.7"
    assert address_keys("192.0.2.7")[0] != address_keys("192.0.2.8")[0]
    assert address_keys("testclient")[0] == "testclient"
    limiter = RateLimiter(MemoryCache(), now=lambda: 1_800_000_040.0)
    assert limiter.hit(f"a:{address_keys('2001:db8::1')[0]}", 1, 60) is None
    assert limiter.hit(f"a:{address_keys('2001:db8::2')[0]}", 1, 60) is not None
    assert limiter.hit(f"a:{address_keys('2001:db8:0:1::1')[0]}", 1, 60) is None
    guard = LoginGuard(MemoryCache(), limits=Limits(login_attempts_per_address=1), now=lambda: 1_800_000_040.0)
    assert guard.check(None, "2001:db8::1") is None
    assert guard.check(None, "2001:db8::2") is not None  # login attempts too
    assert guard.check("person:x", "2001:db8::3") is not None
    assert guard.check(None, "2001:db8:0:1::1") is None


def test_the_middleware_counts_an_ipv6_host_by_its_64(engine: sa.Engine, tmp_path: Path) -> None:
    for served in serve(engine, tmp_path, MemoryCache(), rate_limit_per_address=2, rate_limit_per_client=100):
        _clear_of_a_window_edge()
        app = served.http.app

        def post(address: str) -> int:
            async def run() -> int:
                status: list[int] = []
                body = b"grant_type=client_credentials"
                scope = {"type": "http", "method": "POST", "path": "/oauth2/token", "root_path": "",
                         "headers": [(b"content-type", b"application/x-www-form-urlencoded")],
                         "client": (address, 1234), "query_string": b"", "app": app, "http_version": "1.1",
                         "scheme": "http", "server": ("testserver", 80)}
                sent = [False]

                async def receive() -> dict[str, Any]:
                    if sent[0]:
                        return {"type": "http.disconnect"}
                    sent[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}

                async def send(message: dict[str, Any]) -> None:
                    if message["type"] == "http.response.start":
                        status.append(message["status"])

                await app(scope, receive, send)
                return status[0]

            return served.http.portal.call(run)  # type: ignore[union-attr]

        assert post("2001:db8::1") != 429 and post("2001:db8::2") != 429
        assert post("2001:db8::3") == 429  # the third from the same /64
        assert post("2001:db8:0:1::1") != 429  # the next /64 is someone else

"""Review 157, finding 1: a login the upstream (itsme) answered from its own browser session, silently,
became a fresh two-factor session of ours.

The authorization request asked for no new authentication (no ``prompt=login``, no ``max_age``) and the
id token's ``auth_time`` was read but judged by nothing; the session's login time was the callback's. On
a shared browser (a terminal kiosk, a haulier's office PC) the next person to click "itsme" after a
proper logout became the previous driver, in a session fresh enough to add a passkey, which our own
provider reported to relying parties as the reauthentication they asked for with prompt=login/max_age.

Now every brokered login asks the upstream for a new one (``prompt=login``, ``max_age=0``, ``auth_time``
essential: OIDC Core §3.1.2.1, §5.5.1.1), an id token whose ``auth_time`` is missing or before the
flow's start (less the iat skew) is refused ``upstream_login_not_fresh``, and the session's login time
is the upstream's. Against the real itsme-like provider (oidc-provider under node, tests/upstream):
``login_age`` and ``omit_auth_time`` are its configured misbehaviours, its id token signed as ever.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa

from identity.bootstrap import create_client
from identity.broker.config import login_acrs
from identity.domain.assurance import ACR_UPSTREAM
from identity.domain.broker import MAX_IAT_SKEW
from identity.sessions import SessionStore
from tests.upstream.world import World, build_world, now

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("broker")]

DRIVER = "be.quaygate.driver:/callback"


def _claims_of(world: World, seen: list[dict[str, Any]]) -> Callable[[str], str]:
    """A token "change" that changes nothing: it records the upstream's id token claims and passes the
    token on as the upstream sent it."""
    def observe(compact: str) -> str:
        payload = world.decrypt(compact).split(".")[1]
        seen.append(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
        return compact
    return observe


def _live(world: World) -> list[Any]:
    return [s for s in world.sessions() if s.ended_at is None]


def _refused(world: World, response: httpx.Response, detail: str) -> None:
    assert response.status_code == 401, response.text[:400]
    assert 'data-code="upstream_login_not_fresh"' in response.text, response.text[:400]
    assert "qg_session" not in response.headers.get("set-cookie", "")
    assert world.sessions() == []
    assert [(r["code"], r["detail"]) for r in world.refusals()] == [("upstream_login_not_fresh", detail)]
    assert "identity.login.upstream.refused.upstream_login_not_fresh" in world.kinds()


@pytest.fixture
def world(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from build_world(engine, tmp_path)


def test_after_a_logout_the_next_itsme_login_in_that_browser_is_asked_for_again(world: World) -> None:
    """The reviewer's proof: Jan logs in with itsme and logs out properly; the next person at the same
    browser clicks "itsme". The upstream still holds Jan's session; before, it answered silently (no
    login page) and Jan had a fresh session again. Now it shows its login page, and whoever logs in
    there is who comes back: here Els, whom the badge office has not registered."""
    with world.browser() as browser:
        first: list[str] = []
        assert world.login(browser, "jan", pages=first).status_code == 303, world.refusals()
        assert "login" in first
        out = browser.post(world.app.base + "/oauth2/logout", headers={"Origin": world.app.base})
        assert out.status_code == 200, out.text[:400]
        assert _live(world) == []
        second: list[str] = []
        after = world.login(browser, "stranger", pages=second)
    assert "login" in second, f"the upstream answered from its session: {second}"
    assert after.status_code == 403 and 'data-code="person_not_registered"' in after.text, after.text[:400]
    assert _live(world) == []


def test_the_sessions_login_time_is_when_the_upstream_logged_in_not_the_callbacks(engine: sa.Engine,
                                                                                     tmp_path: Path) -> None:
    """The upstream reports its login 20 s before the callback (within the skew the broker allows): our
    session's auth_time is not the callback's time, so what a fresh login is measured by (adding a
    passkey, our provider's prompt=login and max_age) is when the person really authenticated. The flow
    demanded a new login, so never earlier than the flow's start (review 161, finding 1): here, where
    the upstream dates it before the start, the start."""
    for world in build_world(engine, tmp_path, upstream_options={"login_age": 20}):
        seen: list[dict[str, Any]] = []
        world.tamper.token = _claims_of(world, seen)
        with world.browser() as browser:
            before = now()
            callback = world.callback_url(browser, "jan")
            called = now()
            assert browser.get(callback).status_code == 303, world.refusals()
            cookie = browser.cookies.get("qg_session")
        [claims] = seen
        assert isinstance(claims.get("auth_time"), int), claims
        assert claims["auth_time"] <= now().timestamp() - 20
        session = SessionStore(world.engine, ttl_seconds=3600).get(cookie, now=now())
        assert session is not None
        assert before <= session.auth_time < called  # the flow's start, before the upstream's pages
        assert session.auth_time > datetime.fromtimestamp(claims["auth_time"], UTC)


def test_an_upstream_login_older_than_the_flow_is_refused(engine: sa.Engine, tmp_path: Path) -> None:
    """An upstream that reports a login from before this flow started (beyond the skew): not the new
    authentication asked for (an old session's, or a clock far behind), refused and audited."""
    age = int(MAX_IAT_SKEW.total_seconds()) + 60
    for world in build_world(engine, tmp_path, upstream_options={"login_age": age}):
        with world.browser() as browser:
            _refused(world, world.login(browser, "jan"), "auth_time before the flow's start")


def test_an_id_token_without_auth_time_is_refused(engine: sa.Engine, tmp_path: Path) -> None:
    """An upstream that leaves auth_time out although max_age and the claims request ask for it (and so
    what a flow started before the deploy got back, its request having asked for none): refused, a
    plain refusal page, audited."""
    for world in build_world(engine, tmp_path, upstream_options={"omit_auth_time": True}):
        seen: list[dict[str, Any]] = []
        world.tamper.token = _claims_of(world, seen)
        with world.browser() as browser:
            _refused(world, world.login(browser, "jan"), "auth_time missing")
        assert "auth_time" not in seen[0]


def _walk_authorize(world: World, browser: httpx.Client, *, min_acr: str | None = None, **extra: str) -> list[str]:
    """Our provider's authorization request (a driver app's, as the console's asks prompt=login) answered
    by an itsme login, then the resume, as a browser follows them, at most three rounds: the places it is
    sent to, '/login' for each round back to the login page and 'code' when the code comes."""
    client_id, _ = create_client(world.engine, name="driver app", role="driver_app", organisation_id=None,
                                 auth_method="none", redirect_uris=[DRIVER], now=now(), min_acr=min_acr,
                                 login_acrs=login_acrs(world.app.settings))
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": DRIVER, "scope": "openid",
              "state": "st-1", "nonce": "n-1", "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
              "code_challenge_method": "S256", **extra}
    location = browser.get(world.app.base + "/oauth2/authorize", params=params).headers["location"]
    trail: list[str] = []
    for _ in range(3):
        if not location.startswith("/login"):
            break
        trail.append("/login")
        return_to = parse_qs(urlsplit(location).query)["return_to"][0]
        back = world.login(browser, "jan", return_to=return_to)
        assert back.status_code == 303 and back.headers["location"] == return_to, (back.status_code, world.refusals())
        location = browser.get(world.app.base + return_to).headers["location"]
    if "code" in parse_qs(urlsplit(location).query):
        trail.append("code")
    return trail


@pytest.mark.parametrize("asked", [{"prompt": "login"}, {"max_age": "0"}])
def test_a_fresh_itsme_login_meets_our_providers_prompt_login_and_max_age(
        engine: sa.Engine, tmp_path: Path, asked: dict[str, str]) -> None:
    """Review 161, finding 1: the session's login time was the upstream's auth_time, a whole second and
    here (an upstream clock 5 s behind ours, within the skew the broker allows) before our authorization
    request was made: our provider took the new login for an old one and sent the browser back to /login
    for ever, another itsme confirmation each round. The flow demanded a new login and auth_time was
    checked against its start: the login time is at least the flow's start, so the resume gives the code."""
    for world in build_world(engine, tmp_path, upstream_options={"login_age": 5}):
        with world.browser() as browser:
            assert _walk_authorize(world, browser, **asked) == ["/login", "code"]


def test_a_client_requiring_the_upstream_level_gets_its_code_through_itsme(engine: sa.Engine,
                                                                          tmp_path: Path) -> None:
    """Review 164, finding 1: with itsme configured at level advanced (as here), a login reaches
    urn:quaygate:acr:upstream, so a client may still require it, and the itsme login meets it: the login
    page once, then the code; the session is the upstream's."""
    for world in build_world(engine, tmp_path):
        with world.browser() as browser:
            assert _walk_authorize(world, browser, min_acr=ACR_UPSTREAM) == ["/login", "code"]
        assert [s.acr for s in _live(world)] == [ACR_UPSTREAM]

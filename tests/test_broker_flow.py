"""Brokered login against a real itsme-like provider (oidc-provider 9.13.3 under node, tests/upstream).

Our app runs under uvicorn on http://localhost:<port> and brokers to the provider on
http://127.0.0.1:<port>; a plain HTTP client plays the browser (tests/e2e/test_broker_browser.py does
it in Chromium). The provider really encrypts the id token and userinfo to our /broker/jwks key, checks
our private_key_jwt, our request object (signed then encrypted), PKCE and its 3-minute code.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from identity.domain.assurance import ACR_PASSKEY, ACR_UPSTREAM
from identity.sessions import SessionStore
from quaygate.schema import audit_log, login_sessions, persons, upstream_links

from .ban_register import Register, ban, snapshot
from .upstream.world import NUMBER, OTHER_NUMBER, World, add_person, build_world, now

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("broker")]
LOCAL = "localhost.local"  # http.cookiejar's name for the dotless host "localhost"


@pytest.fixture
def world(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from build_world(engine, tmp_path)


def test_first_login_links_by_national_number_and_opens_a_session(world: World) -> None:
    with world.browser() as browser:
        done = world.login(browser, "jan", return_to="/oauth2/authorize/resume?id=abc")
        assert done.status_code == 303, world.refusals()
        assert done.headers["location"] == "/oauth2/authorize/resume?id=abc"
        cookie = browser.cookies.get("qg_session")
        assert cookie
    session = SessionStore(world.engine, ttl_seconds=3600).get(cookie, now=now())
    assert session is not None and session.person_id == world.person
    assert session.acr == ACR_UPSTREAM and "mfa" in session.amr and "fed" in session.amr
    with world.engine.connect() as conn:
        links = conn.execute(sa.select(upstream_links)).all()
    assert [(link.issuer, link.sub, link.person_id, link.status) for link in links] == [
        (world.upstream.issuer, "jan", world.person, "active")]
    kinds = world.kinds()
    assert "identity.upstream.linked" in kinds and "identity.login.upstream.succeeded" in kinds
    # The second login goes through the link, without a new one.
    with world.browser() as browser:
        assert world.login(browser, "jan").status_code == 303
    with world.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(upstream_links)).scalar() == 1
    assert len(world.sessions()) == 2


def test_the_national_number_is_never_stored_in_clear(world: World) -> None:
    with world.browser() as browser:
        assert world.login(browser, "jan").status_code == 303
    with world.engine.connect() as conn:
        for table in (persons, upstream_links, audit_log, login_sessions):
            for row in conn.execute(sa.select(table)).all():
                assert NUMBER not in repr(tuple(row)), table.name
    assert NUMBER not in world.upstream.log.read_text()  # nor was it logged by the upstream harness


def test_our_rp_jwks_has_separate_signing_and_encryption_keys_with_cache_headers(world: World) -> None:
    response = httpx.get(world.app.base + "/broker/jwks")
    assert response.headers["cache-control"] == "public, max-age=3600"
    keys = response.json()["keys"]
    assert {(k["use"], k["alg"], k["kty"]) for k in keys} == {("sig", "RS256", "RSA"), ("enc", "RSA-OAEP-256", "RSA")}
    assert len({k["kid"] for k in keys}) == 2 and all("d" not in k for k in keys)


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text[:400]
    assert f'data-code="{code}"' in response.text
    assert "qg_session" not in response.headers.get("set-cookie", "")


def test_an_unregistered_person_is_refused_and_nothing_is_linked(world: World) -> None:
    with world.browser() as browser:
        _refused(world.login(browser, "stranger"), 403, "person_not_registered")
    assert world.sessions() == []
    with world.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(upstream_links)).scalar() == 0
    assert [r["code"] for r in world.refusals()] == ["person_not_registered"]


def test_a_changed_upstream_sub_is_rebound_only_after_a_passkey_login_of_that_person(world: World) -> None:
    with world.browser() as browser:
        assert world.login(browser, "jan").status_code == 303
    # The driver re-created his itsme account: same national number, new sub. Without a check: refused.
    with world.browser() as browser:
        _refused(world.login(browser, "jan-new"), 409, "upstream_rebind_required")
    # A passkey session of somebody else in the browser is no check either.
    other = add_person(world.engine, world.app.settings.pepper_bytes(), OTHER_NUMBER)
    sessions = SessionStore(world.engine, ttl_seconds=3600)
    cookie, _ = sessions.create(other, acr=ACR_PASSKEY, amr=("hwk", "user", "mfa"), now=now())
    with world.browser() as browser:
        browser.cookies.set("qg_session", cookie, domain=LOCAL)
        _refused(world.login(browser, "jan-new"), 409, "upstream_rebind_required")
    # Nor is an old passkey login of the right person.
    old, _ = sessions.create(world.person, acr=ACR_PASSKEY, amr=("hwk",), now=now() - timedelta(minutes=11))
    with world.browser() as browser:
        browser.cookies.set("qg_session", old, domain=LOCAL)
        _refused(world.login(browser, "jan-new"), 409, "upstream_rebind_required")
    # A fresh passkey login of Jan himself in this browser confirms the re-bind.
    fresh, _ = sessions.create(world.person, acr=ACR_PASSKEY, amr=("hwk",), now=now())
    with world.browser() as browser:
        browser.cookies.set("qg_session", fresh, domain=LOCAL)
        assert world.login(browser, "jan-new").status_code == 303
    with world.engine.connect() as conn:
        links = {r.sub: r.status for r in conn.execute(sa.select(upstream_links)).all()}
    assert links == {"jan": "replaced", "jan-new": "active"}
    assert "identity.upstream.rebound" in world.kinds()
    # The replaced sub no longer logs in.
    with world.browser() as browser:
        _refused(world.login(browser, "jan"), 409, "upstream_rebind_required")


def test_a_basic_login_is_refused_where_advanced_is_asked(world: World) -> None:
    with world.browser() as browser:
        _refused(world.login(browser, "jan-basic"), 401, "upstream_acr_insufficient")
    assert world.sessions() == []


@pytest.fixture
def banned_world(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    register = Register()
    for w in build_world(engine, tmp_path, ban_register_jwk=register.public_jwk):
        from identity.bans.loader import load_feed

        feed = snapshot(1, now(), [ban(NUMBER, "AIGIS-TEST-1", start=now() - timedelta(days=1))])
        load_feed(w.engine, register.sign(feed), key=register.public_key, pepper=w.app.settings.pepper_bytes(),
                  now=now(), max_feed_age=timedelta(days=1))
        yield w


def test_a_banned_person_is_refused_by_the_screening(banned_world: World) -> None:
    with banned_world.browser() as browser:
        _refused(banned_world.login(browser, "jan"), 403, "person_banned")
    assert banned_world.sessions() == []
    with banned_world.engine.connect() as conn:  # nothing half-written: the link went with the refusal
        assert conn.execute(sa.select(sa.func.count()).select_from(upstream_links)).scalar() == 0


def test_the_provider_list_names_the_configured_upstream(world: World) -> None:
    listed = httpx.get(world.app.base + "/broker/providers").json()
    assert listed == [{"name": "itsme", "label": "itsme", "start": "/broker/itsme/start"}]
    response = httpx.get(world.app.base + "/broker/nope/start", headers={"accept": "application/json"})
    assert response.status_code == 404 and response.json()["code"] == "upstream_unknown"
    assert uuid.UUID(str(world.person))


def test_two_first_logins_at_once_make_one_link_and_two_sessions(world: World) -> None:
    """The unique (issuer, sub) link: the loser of the race is judged again against the winner's link."""
    from concurrent.futures import ThreadPoolExecutor

    with world.browser() as one, world.browser() as two:
        urls = [(one, world.callback_url(one, "jan")), (two, world.callback_url(two, "jan"))]
        with ThreadPoolExecutor(2) as pool:
            statuses = list(pool.map(lambda pair: pair[0].get(pair[1]).status_code, urls))
    assert statuses == [303, 303]
    with world.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(upstream_links)).scalar() == 1
    assert len(world.sessions()) == 2

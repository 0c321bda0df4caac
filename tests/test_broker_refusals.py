"""Every refusal the issue names, each against the real upstream (oidc-provider) with exactly one
thing changed in its real answer: the id token or userinfo it really sent, decrypted with our key,
changed, signed again with the upstream's real key and encrypted again to ours (tests/upstream/world.py).
The unchanged answer logs in (test_broker_flow.py), so each refusal is that one change's doing.

Each refused login: the status and ``code`` of the error page, an audit entry with that code, and no
session.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from joserfc.jwk import RSAKey

from identity.authn import cutoff
from identity.grants import grants_for
from identity.sessions import sessions_for

from .interleave import HeldBeforeCommit, in_thread, waits_on_a_lock
from .upstream.world import BROWSER_HEADERS, World, build_world

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("broker")]


@pytest.fixture
def world(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from build_world(engine, tmp_path)


def _browser_with(binding: str) -> httpx.Client:
    """Another browser that holds (a copy of) the broker's binding cookie."""
    return httpx.Client(follow_redirects=False, timeout=20, headers=BROWSER_HEADERS, cookies={"qg_broker": binding})


def _refused(world: World, response: httpx.Response, code: str, detail: str | None = None) -> None:
    assert response.status_code in (400, 401), response.text[:400]
    assert f'data-code="{code}"' in response.text, response.text[:400]
    assert "qg_session" not in response.headers.get("set-cookie", "")
    assert world.sessions() == []
    refusals = world.refusals()
    assert [r["code"] for r in refusals] == [code]
    if detail is not None:
        assert refusals[0]["detail"] == detail
    assert f"identity.login.upstream.refused.{code}" in world.kinds()


def _stranger() -> RSAKey:
    key = RSAKey.generate_key(2048, parameters={"use": "enc", "alg": "RSA-OAEP-256"})
    key.ensure_kid()
    return key


def test_an_id_token_that_is_only_signed_is_refused(world: World) -> None:
    world.tamper.token = world.decrypt  # the upstream's real signed id token, without its encryption
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), "upstream_not_encrypted")


def test_an_id_token_encrypted_to_a_key_we_do_not_have_is_refused(world: World) -> None:
    stranger = _stranger()
    world.tamper.token = lambda compact: world.encrypt(world.decrypt(compact), stranger)
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), "upstream_unknown_kid", "encryption kid")


def test_an_id_token_signed_with_an_unknown_upstream_key_is_refused(world: World) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"})
    stranger.ensure_kid()
    world.tamper.token = lambda compact: world.encrypt(world.resign(world.decrypt(compact), lambda c: None, stranger),
                                                       world.our_key(compact))
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), "upstream_unknown_kid", "signing kid")


def test_an_id_token_with_a_bad_signature_is_refused(world: World) -> None:
    def forge(compact: str) -> str:
        real = world.decrypt(compact)
        changed = world.resign(real, lambda c: c.update(sub="mallory"))
        header, payload, _ = changed.split(".")
        forged = ".".join([header, payload, real.split(".")[2]])  # the real signature over other claims
        return world.encrypt(forged, world.our_key(compact))

    world.tamper.token = forge
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), "upstream_signature_invalid")


@pytest.mark.parametrize(("claim", "value"), [("iss", "https://idp.example"), ("aud", "another-client"),
                                              ("aud", ["another-client", "third"]), ("exp", 1_000_000_000)])
def test_an_id_token_for_another_issuer_or_audience_or_expired_is_refused(world: World, claim: str, value: Any) -> None:
    world.tamper.token = world.reclaim(lambda c: c.update({claim: value}))
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), "upstream_claims_invalid", claim)


def test_an_id_token_with_another_nonce_is_refused(world: World) -> None:
    world.tamper.token = world.reclaim(lambda c: c.update(nonce="n-" + c["nonce"]))
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), "upstream_nonce_mismatch")


def test_a_userinfo_of_another_sub_is_refused(world: World) -> None:
    world.tamper.userinfo = world.reclaim(lambda c: c.update(sub="somebody-else"))
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), "upstream_userinfo_sub_mismatch")


def _binding(browser: httpx.Client) -> str:
    return next(c.value for c in browser.cookies.jar if c.name == "qg_broker")


def test_a_replayed_callback_is_refused(world: World) -> None:
    """The browser's binding cookie (the sealed flow) is gone once used; a copy of it kept (by whoever
    holds the browser) brings the upstream's code back, and the upstream refuses it: used once."""
    with world.browser() as browser:
        callback = world.callback_url(browser, "jan")
        binding = _binding(browser)
        assert browser.get(callback).status_code == 303
        again = browser.get(callback)
    assert again.status_code == 400 and 'data-code="upstream_browser_mismatch"' in again.text
    with _browser_with(binding) as twin:
        kept = twin.get(callback)
    assert kept.status_code == 401 and 'data-code="upstream_token_refused"' in kept.text
    assert len(world.sessions()) == 1  # the first login only
    assert [r["code"] for r in world.refusals()] == ["upstream_browser_mismatch", "upstream_token_refused"]


def test_a_replayed_state_is_refused_even_where_the_upstream_takes_its_code_again(world: World) -> None:
    """Our own single use of the state (claimed once the id token holds), on an upstream that would
    redeem a code twice."""
    world.tamper.lenient = True
    with world.browser() as browser:
        callback = world.callback_url(browser, "jan")
        binding = _binding(browser)
        assert browser.get(callback).status_code == 303
    with _browser_with(binding) as twin:
        again = twin.get(callback)
    assert again.status_code == 400 and 'data-code="upstream_state_invalid"' in again.text
    assert len(world.sessions()) == 1
    assert [(r["code"], r["detail"]) for r in world.refusals()] == [("upstream_state_invalid", "state used")]


def test_a_state_taken_to_another_browser_is_refused(world: World) -> None:
    """Login CSRF / a stolen callback URL: the flow is sealed in the cookie of the browser that started
    it; another browser's is no use (nor is a cookie changed, or of another of its logins). Nothing is
    stored for a refusal: the rightful browser still finishes its login."""
    with world.browser() as browser:
        callback = world.callback_url(browser, "jan")
        binding = _binding(browser)
        with world.browser() as other:
            response = other.get(callback)
            assert response.status_code == 400 and 'data-code="upstream_browser_mismatch"' in response.text
            world.callback_url(other, "jan")  # a login of its own: its cookie names its own state
            assert 'data-code="upstream_browser_mismatch"' in other.get(callback).text
        changed = binding[:30] + ("A" if binding[30] != "A" else "B") + binding[31:]
        with _browser_with(changed) as forged:
            assert 'data-code="upstream_state_invalid"' in forged.get(callback).text
        assert world.sessions() == []
        assert browser.get(callback).status_code == 303
    assert len(world.sessions()) == 1


def test_a_cancelled_login_at_the_upstream_is_refused(world: World) -> None:
    with world.browser() as browser:
        callback = world.callback_url(browser, "jan")
        state = httpx.URL(callback).params["state"]
        response = browser.get(f"{world.app.base}/broker/itsme/callback",
                               params={"error": "access_denied", "state": state, "iss": world.upstream.issuer})
    assert response.status_code == 401 and 'data-code="upstream_error"' in response.text
    assert world.sessions() == []


@pytest.fixture
def quick_code_world(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from build_world(engine, tmp_path, code_ttl=1)


def test_an_expired_code_is_refused_by_the_upstream(quick_code_world: World) -> None:
    world = quick_code_world
    with world.browser() as browser:
        callback = world.callback_url(browser, "jan")
        time.sleep(2.5)  # the upstream's code lives 1 s here (itsme: 3 minutes); not a timing assertion
        response = browser.get(callback)
    assert response.status_code == 401 and 'data-code="upstream_token_refused"' in response.text
    assert world.refusals()[0]["detail"] == "invalid_grant"
    assert world.sessions() == []


@pytest.fixture
def redis_world(pg_engine: sa.Engine, redis_url: str, tmp_path: Path) -> Iterator[World]:
    yield from build_world(pg_engine, tmp_path, redis_url=redis_url)


def test_racing_callbacks_of_one_state_log_in_once_on_redis_and_postgresql(redis_world: World) -> None:
    """The state is claimed with one atomic SET NX: eight copies of the callback at once, on an upstream
    that redeems the code each time, one login."""
    world = redis_world
    world.tamper.lenient = True
    with world.browser() as browser:
        callback = world.callback_url(browser, "jan")
        binding = _binding(browser)

    def hit(_: int) -> int:
        with _browser_with(binding) as twin:
            return twin.get(callback).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(hit, range(8)))
    assert statuses == [303] + [400] * 7
    assert len(world.sessions()) == 1
    assert [r["code"] for r in world.refusals()] == ["upstream_state_invalid"] * 7


@pytest.fixture
def pg_world(pg_engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from build_world(pg_engine, tmp_path)


def _suspend(world: World) -> Any:
    return cutoff.suspend_person(world.engine, sessions=sessions_for(world.app.app), grants=grants_for(world.app.app),
                                 person_id=world.person, actor="port-security-test", reason="badge misuse",
                                 now=datetime.now(UTC))


def test_an_upstream_login_that_runs_into_a_suspension_waits_and_is_refused(pg_world: World) -> None:
    """Port security's suspension is held just before its COMMIT while the person comes back from the
    upstream: the login waits for the share lock on the person's row (identity.sessions
    ``hold_person``), then reads the status and is refused. Read without the lock, the person was
    active, and the login's session, which the suspension's cut-off had not seen, stayed live."""
    world = pg_world
    with world.browser() as browser:
        callback = world.callback_url(browser, "jan")
        with HeldBeforeCommit(world.engine, "UPDATE persons") as suspension:
            suspending, _ = in_thread(lambda: _suspend(world))
            assert suspension.held.wait(10)
            logging_in, answered = in_thread(lambda: browser.get(callback))
            waited = waits_on_a_lock(world.engine, logging_in)
            suspension.go.set()
            suspending.join(20)
            logging_in.join(20)
    assert answered[0].status_code == 403 and 'data-code="person_suspended"' in answered[0].text
    assert [s for s in world.sessions() if s.ended_at is None] == []
    assert waited


def test_a_binding_cookie_sealed_under_a_previous_data_key_is_refused(engine: sa.Engine, tmp_path: Path) -> None:
    """Review 135, finding 1 (ii): the binding cookie is the flow itself, nothing of it stored, so one sealed
    under a previous data key (kept configured while the database is sealed again, and maybe the key that
    leaked: with it anyone makes one) is refused; the same flow under the current key finishes."""
    import base64

    from identity.broker.service import _FLOW_AAD
    from quaygate.crypto import DataCipher

    old, new = bytes(range(32)), bytes(range(100, 132))

    def b64(key: bytes) -> str:
        return base64.urlsafe_b64encode(key).decode()

    for world in build_world(engine, tmp_path, data_key=b64(new), data_keys_previous=b64(old)):
        with world.browser() as browser:
            callback = world.callback_url(browser, "jan")
            flow = DataCipher(new).open(_binding(browser), _FLOW_AAD)
            with _browser_with(DataCipher(old).seal(flow, _FLOW_AAD)) as forged:
                _refused(world, forged.get(callback), "upstream_state_invalid", "binding cookie does not open")
            assert browser.get(callback).status_code == 303
        assert len(world.sessions()) == 1

"""What an anonymous caller can make us store in Redis, and on the audit trail (review 67, finding 4).

Redis runs under ``noeviction`` (quaygate/dataset.py): whatever a caller who has proved nothing can make
us store, per request, is a way to fill it, and a full Redis refuses the writes that DPoP claims, passkey
logins, the token endpoint and the gates' verify calls need. A passkey login's options used to store a
flow per call (296 bytes, 300 s). They store nothing now: the flow is sealed (identity.authn.flows), and
its single use is claimed only once an assertion's signature over its challenge holds. A refused
anonymous attempt writes only its address's counters (identity.ratelimit), never a key of its own. A
brokered login's start is sealed into the browser's binding cookie the same way (identity.broker.service),
and leaves no row on the audit trail either: the callback's outcome is audited, the callback counted
against its address. The token endpoint claims a DPoP proof's jti only once the code or refresh token it
comes with is found (identity.oidc.server ``claim_dpop``): a made-up one costs no claim.

Each test runs a redis-server of its own (tests/test_redis_memory.py ``PrivateRedis``), never the
machine's shared one.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from starlette.datastructures import Headers

from identity.authn.flows import SEALED_LENGTH, FlowRefused, FlowSeal
from identity.authn.service import _FLOW_ID
from identity.bootstrap import create_client, provider_for
from identity.grants import REFRESH_PREFIX, token_hash
from identity.oidc.authorize import RESUME_TTL
from identity.oidc.server import FormRequest
from identity.sessions import sessions_for
from quaygate.app import create_app
from quaygate.cache import RedisCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import audit_log, grants, refresh_tokens
from quaygate.settings import Settings
from tests.test_identity_code_flow_support import CONSOLE_REDIRECT, Flow, Pkce
from tests.test_identity_code_flow_support import DRIVER_REDIRECT as APP_REDIRECT
from tests.test_identity_grants_support import Lifecycle, dpop_key, dpop_proof, make_lifecycle
from tests.test_identity_passkeys import PEnv, build_env
from tests.test_identity_ratelimit import _clear_of_a_window_edge
from tests.test_redis_memory import PrivateRedis
from tests.upstream.harness import start
from tests.upstream.world import World, build_world
from tests.webauthn_authenticator import SoftAuthenticator, b64url

PUBLIC = "http://localhost:8000"  # the default issuer: the whole app's pages' origin
ORIGIN = "http://127.0.0.1:8000"  # tests.test_identity_passkeys's issuer
OPTIONS = "/webauthn/authentication/options"
VERIFY = "/webauthn/authentication/verify"
N = 500


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    started = PrivateRedis(tmp_path, "--maxmemory-policy", "noeviction")
    started.held_long_ago()
    yield started
    started.stop()


@pytest.fixture
def small(tmp_path: Path) -> Iterator[PrivateRedis]:
    started = PrivateRedis(tmp_path, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    started.held_long_ago()
    yield started
    started.stop()


def _serve(engine: sa.Engine, tmp_path: Path, server: PrivateRedis, **over: Any) -> Iterator[TestClient]:
    """The whole app (its rate-limit middleware too) on ``server``."""
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        redis_url=server.url, background_workers=False, gate_decision_drain=False, **over)
    c = Container(settings=settings, engine=engine, cache=RedisCache(server.url),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    with TestClient(create_app(settings, container=c), raise_server_exceptions=False) as http:
        yield http


def _keys(server: PrivateRedis) -> set[bytes]:
    with server.admin() as admin:
        return set(admin.scan_iter(count=1000))


def _held(server: PrivateRedis, *, counts: bool = True) -> dict[bytes, bytes | None]:
    """Every key and its value (DUMP): a count's INCR changes it, a key added or gone shows. Without
    ``counts``, the rate-limit counters' values are left out (their keys are not): the OAuth endpoints
    count each request against its address (identity.ratelimit)."""
    with server.admin() as admin:
        return {k: admin.dump(k) if counts or not k.startswith(b"qg:rl:") else None
                for k in admin.scan_iter(count=1000)}


def _options(http: TestClient) -> dict[str, Any]:
    r = http.post(OPTIONS, json={}, headers={"Origin": PUBLIC})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _made_up_assertion() -> dict[str, Any]:
    """What anyone can send: a credential id of its own making, nothing signed."""
    cid = b64url(secrets.token_bytes(32))
    return {"id": cid, "rawId": cid, "type": "public-key",
            "response": {"clientDataJSON": "e30", "authenticatorData": "", "signature": ""}}


# ---- (a) the options store nothing; a refused attempt only its address's counters ---------------------


def test_login_options_store_nothing(engine: sa.Engine, tmp_path: Path, server: PrivateRedis) -> None:
    for http in _serve(engine, tmp_path, server):
        _options(http)  # the connections greeted, the parts built
        before = _held(server)
        with server.admin() as admin:
            memory = admin.info("memory")["used_memory"]
            flows = {_options(http)["flow"] for _ in range(N)}
            grown = admin.info("memory")["used_memory"] - memory
        assert len(flows) == N and all(len(f) == SEALED_LENGTH and _FLOW_ID.match(f) for f in flows)
        assert _held(server) == before  # no flow, and no count of the calls either
        assert grown < 32 * 1024, grown  # stored, the flows took about N * 296 bytes


def test_an_anonymous_refused_login_writes_only_its_addresss_counters(engine: sa.Engine, tmp_path: Path,
                                                                      server: PrivateRedis) -> None:
    """Each attempt names a credential id of its own making: its failure is counted nowhere (there is no
    account behind it), so the only keys are the address's two counters for the window (the endpoint's,
    the login guard's), whatever the number of attempts. Counted per credential id, each attempt left
    two keys for 15 minutes."""
    for http in _serve(engine, tmp_path, server):
        _clear_of_a_window_edge()

        def attempt() -> None:
            r = http.post(VERIFY, json={"flow": _options(http)["flow"], "credential": _made_up_assertion()},
                          headers={"Origin": PUBLIC})
            assert r.status_code == 401 and r.json()["code"] == "passkey_unknown", r.text

        attempt()  # the worker thread's connection greeted (it marks the dataset once)
        before = _keys(server)
        for _ in range(40):
            attempt()
        assert _keys(server) == before
        counters = {k for k in before if k.startswith(b"qg:rl:")}
        assert len(counters) == 2, before
        with server.admin() as admin:
            sizes = [admin.memory_usage(k) for k in counters]
            assert all(0 < admin.pttl(k) <= 121_000 for k in counters)  # to the next window's end, which reads it
        assert all(size is not None and size <= 128 for size in sizes), sizes


def test_an_anonymous_refused_login_writes_no_audit_row(engine: sa.Engine, tmp_path: Path,
                                                       server: PrivateRedis) -> None:
    """A refused login that names no credential of ours (a made-up id), and every refusal past the
    address's login allowance, concerns no one: logged, not audited. Audited, each was a row in
    PostgreSQL per request, and those past the allowance were bounded by nothing but the endpoint's
    count (600 a minute per address)."""
    for http in _serve(engine, tmp_path, server, login_attempts_per_address=5):
        _clear_of_a_window_edge()
        before = _audit_rows(engine)
        codes = []
        for _ in range(12):
            r = http.post(VERIFY, json={"flow": _options(http)["flow"], "credential": _made_up_assertion()},
                          headers={"Origin": PUBLIC})
            codes.append(r.json()["code"])
        assert codes == ["passkey_unknown"] * 5 + ["rate_limited"] * 7, codes
        assert _audit_rows(engine) == before


# ---- (b) a full Redis still answers a login's options ----------------------------------------------------


def test_a_full_redis_still_serves_login_options(engine: sa.Engine, tmp_path: Path, small: PrivateRedis) -> None:
    for http in _serve(engine, tmp_path, small):
        _options(http)
        small.fill()
        assert len({_options(http)["flow"] for _ in range(20)}) == 20
        # The verify counts the attempt (a write): refused while Redis is full, never a 500.
        body = {"flow": _options(http)["flow"], "credential": _made_up_assertion()}
        full = http.post(VERIFY, json=body, headers={"Origin": PUBLIC})
        assert full.status_code == 503 and full.json()["code"] == "service_unavailable", full.text
        small.room()
        again = http.post(VERIFY, json=body, headers={"Origin": PUBLIC})
        assert again.status_code == 401 and again.json()["code"] == "passkey_unknown", again.text


# ---- (c) a login end to end; what is refused ------------------------------------------------------------


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path, server: PrivateRedis) -> Iterator[PEnv]:
    cache = RedisCache(server.url)
    yield from build_env(engine, tmp_path, cache=cache)
    cache.close()


def _verify(env: PEnv, flow: str, credential: dict[str, Any]) -> Any:
    return env.post(VERIFY, {"flow": flow, "credential": credential})


def _refused(resp: Any, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["code"] == code, resp.json()
    assert "set-cookie" not in resp.headers


def _details(env: PEnv) -> list[str]:
    with env.engine.connect() as conn:
        return [d["detail"] for d in conn.execute(sa.select(audit_log.c.data).where(
            audit_log.c.kind == "identity.login.passkey.refused.challenge_expired").order_by(audit_log.c.id)).scalars()]


def test_a_login_end_to_end_claims_its_flow_once(env: PEnv, server: PrivateRedis) -> None:
    """A passkey without a sign counter (as synced passkeys are): the flow's claim alone refuses the
    replay of its assertion. The claim is the login's one key in Redis, kept until the flow expires."""
    _clear_of_a_window_edge()  # the login guard's count of the address is one key per window
    synced = SoftAuthenticator(origin=ORIGIN, counter=False)
    pid = env.person()
    env.enrol(pid, synced)
    flow, options = env.login_options()
    signed = synced.get(options)
    before = _keys(server)
    done = _verify(env, flow, signed)
    assert done.status_code == 200, done.text
    session = sessions_for(env.app).get(done.cookies["qg_session"], now=env.clock.now())
    assert session is not None and session.person_id == pid
    (claim,) = _keys(server) - before
    assert claim.startswith(b"qg:webauthn:used:")
    ttl = env.container.settings.webauthn_challenge_ttl
    with server.admin() as admin:
        assert 0 < admin.pttl(claim) <= (ttl + 5) * 1000
    before = _keys(server)
    for _ in range(2):
        _refused(_verify(env, flow, signed), 400, "challenge_expired")
    assert _keys(server) == before
    assert _details(env) == ["flow already used"] * 2
    assert env.login(synced).status_code == 200  # a new flow


def test_a_tampered_foreign_or_expired_flow_is_refused_and_stores_nothing(env: PEnv, server: PrivateRedis,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="identity.authn.service")
    phone = SoftAuthenticator(origin=ORIGIN)
    pid = env.person()
    env.enrol(pid, phone)
    _, cookie = env.enrol(pid, SoftAuthenticator(origin=ORIGIN))
    registration = env.post("/webauthn/registration/options", cookie=cookie).json()  # a flow kept in Redis
    flow, options = env.login_options()
    before = _keys(server)
    # One character changed: the seal does not hold.
    tampered = flow[:20] + ("A" if flow[20] != "A" else "B") + flow[21:]
    _refused(_verify(env, tampered, phone.get(options)), 400, "challenge_expired")
    # A longer life written in, the seal kept: it does not hold either.
    raw = bytearray(base64.urlsafe_b64decode(flow + "=="))
    raw[8:10] = (0xFFFF).to_bytes(2, "big")
    longer = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    _refused(_verify(env, longer, phone.get(options)), 400, "challenge_expired")
    # Sealed by another server's key; sealed by ours for a registration: each signed over its own challenge.
    now = env.clock.now().timestamp()
    for seal, purpose in ((FlowSeal(b"another server's pepper"), "authentication"),
                          (FlowSeal(env.container.settings.pepper_bytes()), "registration")):
        other, sealed = seal.seal(purpose, now=now, lifetime=300)
        signed = phone.get({"rpId": options["rpId"], "challenge": b64url(sealed.challenge)})
        _refused(_verify(env, other, signed), 400, "challenge_expired")
    # A registration's flow id, its challenge signed: no sealed flow.
    signed = phone.get({"rpId": options["rpId"], "challenge": registration["publicKey"]["challenge"]})
    _refused(_verify(env, registration["flow"], signed), 400, "challenge_expired")
    # Expired.
    ttl = env.container.settings.webauthn_challenge_ttl
    env.clock.advance(seconds=ttl)
    _refused(_verify(env, flow, phone.get(options)), 400, "challenge_expired")
    # Refused before any credential was looked at: logged with why, not audited (a row per anonymous request).
    assert [getattr(r, "fields", {}).get("detail") for r in caplog.records
            if r.getMessage() == "identity.login.passkey.refused.challenge_expired"] == [
        "flow refused: seal", "flow refused: seal", "flow refused: seal", "flow refused: purpose",
        "flow refused: malformed", "flow refused: expired"]
    assert _details(env) == []
    assert _keys(server) == before  # not a claim, not a failure counted
    env.clock.advance(seconds=-ttl)
    assert _verify(env, flow, phone.get(options)).status_code == 200  # none of that used the flow


# ---- the seal alone ------------------------------------------------------------------------------------


def test_a_sealed_flow_opens_only_as_sealed() -> None:
    seal = FlowSeal(b"pepper")
    now = 1_800_000_000.123456
    flow, sealed = seal.seal("authentication", now=now, lifetime=300)
    assert len(flow) == SEALED_LENGTH and _FLOW_ID.match(flow)
    opened = seal.open(flow, "authentication", now=now + 299.8)
    assert opened == sealed and opened.issued_at == 1_800_000_000.123 and opened.expires_at == opened.issued_at + 300
    assert len(opened.challenge) == 32
    second, other = seal.seal("authentication", now=now, lifetime=300)
    assert second != flow and other.challenge != sealed.challenge and other.ref != sealed.ref

    def reason(value: Any, purpose: str = "authentication", at: float = now) -> str:
        with pytest.raises(FlowRefused) as refused:
            seal.open(value, purpose, now=at)
        return refused.value.reason

    assert reason(flow, at=sealed.expires_at) == "expired"
    assert reason(flow, "registration") == "purpose"
    assert reason(seal.seal("registration", now=now, lifetime=300)[0]) == "purpose"
    assert reason(FlowSeal(b"other").seal("authentication", now=now, lifetime=300)[0]) == "seal"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, c in enumerate(flow):
        changed = flow[:i] + alphabet[(alphabet.index(c) + 1) % 64] + flow[i + 1:]
        assert reason(changed) in ("seal", "version"), i
    for bad in (None, 42, "", flow[:-1], flow + "A", flow[:-2] + "==", flow.replace(flow[5], "+"), "x" * 32):
        if bad != flow:
            assert reason(bad) == "malformed", bad
    with pytest.raises(ValueError):
        seal.seal("authentication", now=now, lifetime=0x10000)
    assert timedelta(seconds=sealed.expires_at - sealed.issued_at) == timedelta(seconds=300)


# ---- the brokered login's start -------------------------------------------------------------------------


@pytest.fixture
def broker_world(pg_engine: sa.Engine, tmp_path: Path, server: PrivateRedis) -> Iterator[World]:
    yield from build_world(pg_engine, tmp_path, redis_url=server.url)


def test_a_brokered_login_start_stores_nothing(broker_world: World, server: PrivateRedis) -> None:
    """GET /broker/itsme/start is anonymous (and no rate limit counts it): its flow goes to the
    browser, sealed in the binding cookie. The login that comes back claims its state, once (and its
    callback counts one login attempt of its address)."""
    world = broker_world
    _clear_of_a_window_edge()
    with world.browser() as browser:
        start(browser, world.app)  # the connections greeted
        before = _held(server)
        for _ in range(50):
            start(browser, world.app)
        assert _held(server) == before
        assert world.login(browser, "jan").status_code == 303
    (claim,) = {k for k in _keys(server) - set(before) if not k.startswith(b"qg:rl:")}
    assert claim.startswith(b"qg:broker:used:")
    with server.admin() as admin:
        assert 0 < admin.pttl(claim) <= (world.app.settings.upstream_flow_ttl + 5) * 1000
    # The longest return_to a login takes (2000 characters, a resume id in it): the cookie still fits.
    longest = "/app/?" + "x" * 1994
    with world.browser() as browser:
        done = world.login(browser, "jan", return_to=longest)
        assert done.status_code == 303 and done.headers["location"] == longest, done.text[:300]


def _audit_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one())


ATTEMPTS = 6  # the login guard's attempts per address and window, in the test below


@pytest.fixture
def guarded_broker_world(pg_engine: sa.Engine, tmp_path: Path, server: PrivateRedis) -> Iterator[World]:
    yield from build_world(pg_engine, tmp_path, redis_url=server.url, login_attempts_per_address=ATTEMPTS)


def test_a_brokered_login_start_writes_no_audit_row_and_its_callback_is_audited_and_bounded(
        guarded_broker_world: World) -> None:
    """The audit trail (PostgreSQL) is kept for good: a start, which anyone may send and which carries no
    identity, leaves no row in it, nor does one naming an upstream that does not exist. The callback's
    outcome is audited, a login as a refusal, and the callback counts as a login attempt of its address:
    past the limit it is refused (429, Retry-After), and that refusal is not audited. Before, each start
    wrote a row (identity.login.upstream.started, or .refused.upstream_unknown)."""
    world = guarded_broker_world
    base = world.app.base
    with world.browser() as browser:
        start(browser, world.app)  # the upstream's metadata fetched, the connections greeted
        before = _audit_rows(world.engine)
        for _ in range(N // 10):
            start(browser, world.app)
        for i in range(10):
            assert browser.get(f"{base}/broker/nope{i}/start").status_code == 404
        assert _audit_rows(world.engine) == before
        _clear_of_a_window_edge(margin=20)  # the attempts below are counted in one window
        assert world.login(browser, "jan").status_code == 303  # one attempt
    kinds = world.kinds()
    assert "identity.login.upstream.succeeded" in kinds and "identity.login.upstream.started" not in kinds
    # Refused callbacks, audited with their code: no binding cookie; a state not this flow's.
    with world.browser() as browser:
        cold = browser.get(f"{base}/broker/itsme/callback", params={"state": "made-up", "code": "c"})
        assert cold.status_code == 400 and 'data-code="upstream_browser_mismatch"' in cold.text, cold.text[:300]
        start(browser, world.app)
        other = browser.get(f"{base}/broker/itsme/callback", params={"state": "another", "code": "c"})
        assert other.status_code == 400 and 'data-code="upstream_browser_mismatch"' in other.text
    assert [r["code"] for r in world.refusals()] == ["upstream_browser_mismatch"] * 2
    # An anonymous flood of callbacks: the address's attempts are spent, then each is refused unaudited.
    audited = _audit_rows(world.engine)
    with world.browser() as browser:
        answers = [browser.get(f"{base}/broker/itsme/callback", params={"state": "x"}) for _ in range(30)]
    statuses = [r.status_code for r in answers]
    assert statuses == [400] * (ATTEMPTS - 3) + [429] * (30 - ATTEMPTS + 3), statuses
    limited = answers[-1]
    assert 'data-code="rate_limited"' in limited.text and 0 < int(limited.headers["Retry-After"]) <= 120
    assert _audit_rows(world.engine) - audited == ATTEMPTS - 3
    assert len(world.sessions()) == 1


# ---- the token endpoint's DPoP proofs -------------------------------------------------------------------


@pytest.fixture
def tokens(engine: sa.Engine, tmp_path: Path, server: PrivateRedis) -> Iterator[Lifecycle]:
    """The whole app (its rate-limit middleware too) on ``server``, on SQLite and on PostgreSQL (the
    refresh's fast path runs on PostgreSQL only)."""
    cache = RedisCache(server.url)
    yield from make_lifecycle(engine, tmp_path, cache, redis_url=server.url)
    cache.close()


def _claims(server: PrivateRedis) -> set[bytes]:
    """The DPoP proofs' single-use claims (identity.dpop: ``dpop:jti:<jkt>:<sha256 of the jti>``)."""
    with server.admin() as admin:
        return set(admin.scan_iter(match="qg:dpop:*", count=1000))


def _exchange(flow: Flow, client_id: str, code: str, verifier: str, proof: str) -> Any:
    return flow.exchange(client_id, code, verifier, headers={"DPoP": proof})


def _refresh(env: Lifecycle, client_id: str, token: str, proof: str) -> Any:
    return env.http.post("/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": token,
                                                "client_id": client_id}, headers={"DPoP": proof})


def test_a_dpop_proof_with_a_made_up_code_or_refresh_token_stores_nothing(tokens: Lifecycle,
                                                                        server: PrivateRedis) -> None:
    """A public client's id is anyone's to name: a fresh, well-signed proof with a code or a refresh
    token of one's own making is refused (invalid_grant) and leaves no claim in Redis, however many are
    sent; only the address's counters. A proof sent with a real code is claimed, once. Before, each
    proof's jti was claimed (168 bytes, 70 s) before the grant was looked at."""
    env = tokens
    flow = Flow(env.app, env.http, env.container)
    client_id = flow.driver_app()
    key = dpop_key()
    _clear_of_a_window_edge()

    def made_up_code() -> Any:
        return _exchange(flow, client_id, secrets.token_urlsafe(32), Pkce().verifier, dpop_proof(key))

    def made_up_refresh() -> Any:
        return _refresh(env, client_id, REFRESH_PREFIX + secrets.token_urlsafe(32), dpop_proof(key))

    made_up_code()  # the connections greeted, the parts built
    made_up_refresh()
    before = _held(server, counts=False)
    for send in (made_up_code, made_up_refresh):
        for _ in range(25):
            r = send()
            assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert _claims(server) == set()
    assert _held(server, counts=False) == before  # the address's count of POSTs aside
    # A real code: its proof claimed, once, for the proof's acceptance window.
    flow.login(flow.person())
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    done = _exchange(flow, client_id, code, pkce.verifier, dpop_proof(key))
    assert done.status_code == 200 and done.json()["token_type"] == "DPoP", done.text
    (claim,) = _claims(server)
    with server.admin() as admin:
        settings = env.container.settings
        assert 0 < admin.pttl(claim) <= (settings.dpop_max_age + 10) * 1000


def _token_refusals(env: Lifecycle) -> list[tuple[str, str]]:
    with env.engine.connect() as conn:
        return [(row.actor["client_id"], row.data["reason"]) for row in conn.execute(
            sa.select(audit_log.c.actor, audit_log.c.data).where(audit_log.c.kind == "identity.token.refused")
            .order_by(audit_log.c.id))]


def test_a_public_clients_made_up_code_or_refresh_token_writes_no_audit_row(tokens: Lifecycle) -> None:
    """The audit trail is PostgreSQL's to keep for good: a refusal about nothing of ours (a code or a
    refresh token that does not exist) from a public client, whose id anyone may name, is logged, not
    audited, however many are sent. The same made up by a client that authenticated, and a refusal about
    a real code (used twice), are audited."""
    env = tokens
    flow = Flow(env.app, env.http, env.container)
    app_id = flow.driver_app()
    _clear_of_a_window_edge()
    for _ in range(20):
        r = flow.exchange(app_id, secrets.token_urlsafe(32), Pkce().verifier)
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
        r = env.http.post("/oauth2/token", data={"grant_type": "refresh_token", "client_id": app_id,
                                                 "refresh_token": REFRESH_PREFIX + secrets.token_urlsafe(32)})
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert _token_refusals(env) == []
    console_id, secret, _ = env.console()
    made_up = flow.exchange(console_id, secrets.token_urlsafe(32), Pkce().verifier, secret=secret,
                            redirect_uri=CONSOLE_REDIRECT)
    assert made_up.status_code == 400 and made_up.json()["error"] == "invalid_grant", made_up.text
    flow.login(flow.person())
    pkce = Pkce()
    code = flow.code(flow.authorize(app_id, pkce=pkce))
    assert flow.exchange(app_id, code, pkce.verifier).status_code == 200
    again = flow.exchange(app_id, code, pkce.verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text
    assert _token_refusals(env) == [(console_id, "unknown"), (app_id, "reused")]


def _family_live(env: Lifecycle, token: str) -> bool:
    with env.engine.connect() as conn:
        row = conn.execute(sa.select(refresh_tokens.c.status, grants.c.revoked_at).select_from(
            refresh_tokens.join(grants, grants.c.id == refresh_tokens.c.grant_id)).where(
            refresh_tokens.c.token_hash == token_hash(token))).one()
    return row.status == "active" and row.revoked_at is None


def test_a_replayed_dpop_proof_gets_no_token_and_changes_nothing(tokens: Lifecycle) -> None:
    """RFC 9449 §11.1: a proof used once is refused again (invalid_dpop_proof), whether the grant it
    comes with is the one it was used with, now used up, or another one still valid; the replay neither
    uses up a valid code or refresh token nor revokes anything."""
    env = tokens
    flow = Flow(env.app, env.http, env.container)
    client_id = flow.driver_app()
    flow.login(flow.person())
    key = dpop_key()

    def replayed(r: Any) -> None:
        assert r.status_code == 400 and r.json()["error"] == "invalid_dpop_proof", r.text

    # The code grant.
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    proof = dpop_proof(key)
    first = _exchange(flow, client_id, code, pkce.verifier, proof)
    assert first.status_code == 200, first.text
    replayed(_exchange(flow, client_id, code, pkce.verifier, proof))  # the same request again
    other = Pkce()
    fresh = flow.code(flow.authorize(client_id, pkce=other))
    replayed(_exchange(flow, client_id, fresh, other.verifier, proof))  # a valid code, a used proof
    assert _exchange(flow, client_id, fresh, other.verifier, dpop_proof(key)).status_code == 200
    # The refresh grant: the token the first exchange gave, bound to the key.
    token = first.json()["refresh_token"]
    assert _family_live(env, token)
    proof = dpop_proof(key)
    refreshed = _refresh(env, client_id, token, proof)
    assert refreshed.status_code == 200, refreshed.text
    successor = refreshed.json()["refresh_token"]
    replayed(_refresh(env, client_id, token, proof))  # the same request again: not taken for reuse
    replayed(_refresh(env, client_id, successor, proof))  # a valid token, a used proof
    assert _family_live(env, successor)  # nothing revoked, nothing used up
    assert _refresh(env, client_id, successor, dpop_proof(key)).status_code == 200


def _at_once(env: Lifecycle, form: dict[str, str], proof: str, n: int = 6) -> list[Any]:
    """``n`` requests, the same form and the same DPoP proof, started together (threads, a barrier)."""
    server = env.provider.server
    body = urlencode(form).encode()
    headers = Headers({"content-type": "application/x-www-form-urlencoded", "dpop": proof})
    barrier = threading.Barrier(n)
    answers: list[Any] = []
    lock = threading.Lock()

    def attempt() -> None:
        barrier.wait()
        r = server.token_response(FormRequest("POST", headers, headers["content-type"], body))
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=attempt) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def _errors(answers: list[Any]) -> list[Any]:
    return sorted((r.status_code, json.loads(r.body).get("error")) for r in answers)


def test_requests_racing_with_one_dpop_proof_get_one_token(tokens: Lifecycle) -> None:
    """The proof's claim stays one atomic SET NX made before anything is used up or issued: of several
    requests with one proof and one valid code (then one valid refresh token), one gets tokens, the
    others are refused as replays, and none of them revokes what the winner got."""
    env = tokens
    flow = Flow(env.app, env.http, env.container)
    client_id = flow.driver_app()
    flow.login(flow.person())
    key = dpop_key()
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": APP_REDIRECT,
            "code_verifier": pkce.verifier, "client_id": client_id}
    answers = _at_once(env, form, dpop_proof(key))
    assert _errors(answers) == [(200, None)] + [(400, "invalid_dpop_proof")] * 5
    (won,) = [json.loads(r.body) for r in answers if r.status_code == 200]
    token = won["refresh_token"]
    assert _family_live(env, token)
    answers = _at_once(env, {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id},
                       dpop_proof(key))
    assert _errors(answers) == [(200, None)] + [(400, "invalid_dpop_proof")] * 5
    (won,) = [json.loads(r.body) for r in answers if r.status_code == 200]
    assert _family_live(env, won["refresh_token"])


# ---- the authorization endpoint's request, waiting for a login ------------------------------------------


DRIVER_REDIRECT = "https://driver.example/cb"


def _authorize(http: TestClient, client_id: str, **extra: str) -> Any:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": DRIVER_REDIRECT, "scope": "openid",
              "state": secrets.token_urlsafe(16), "nonce": secrets.token_urlsafe(16),
              "code_challenge": b64url(secrets.token_bytes(32)), "code_challenge_method": "S256", **extra}
    return http.get("/oauth2/authorize", params=params, follow_redirects=False)


def test_an_authorization_request_waiting_for_a_login_stores_nothing(engine: sa.Engine, tmp_path: Path,
                                                                       server: PrivateRedis) -> None:
    """GET /oauth2/authorize without a session, for a public client (anyone may name one): the request
    goes to the login page inside its resume URL (identity.oidc.authorize.PendingRequests), sealed; a
    resume id changed, or older than RESUME_TTL, is refused; a request too long to carry is refused to
    the client. Stored, each took up to 3.2 kB for 15 minutes."""
    client_id, _ = create_client(engine, name="driver app", role="driver_app", organisation_id=None,
                                 auth_method="none", now=datetime.now(UTC), redirect_uris=[DRIVER_REDIRECT])
    for http in _serve(engine, tmp_path, server):
        _authorize(http, client_id)
        before = _held(server)
        resumes = []
        for _ in range(100):
            r = _authorize(http, client_id)
            assert r.status_code == 302 and urlsplit(r.headers["location"]).path == "/login", r.text
            resumes.append(parse_qs(urlsplit(r.headers["location"]).query)["return_to"][0])
        assert _held(server) == before
        assert all(len(resume) <= 2000 for resume in resumes)
        back = http.get(resumes[0], follow_redirects=False)  # still no session: to the login page again
        assert back.status_code == 302 and parse_qs(urlsplit(back.headers["location"]).query)["return_to"] == [
            resumes[0]]
        rid = resumes[0].split("id=", 1)[1]
        changed = rid[:40] + ("A" if rid[40] != "A" else "B") + rid[41:]
        assert http.get(f"/oauth2/authorize/resume?id={changed}", follow_redirects=False).status_code == 400
        long = _authorize(http, client_id, state=secrets.token_urlsafe(1490), nonce=secrets.token_urlsafe(180))
        assert long.status_code == 302 and long.headers["location"].startswith(DRIVER_REDIRECT), long.text
        assert parse_qs(urlsplit(long.headers["location"]).query)["error"] == ["invalid_request"]
        assert _held(server) == before
        pending = provider_for(http.app).pending
        now = datetime.now(UTC)
        assert pending.load(rid, now=now) is not None and pending.load(changed, now=now) is None
        assert pending.load(rid, now=now + timedelta(seconds=RESUME_TTL)) is None  # expired


def test_a_public_clients_pushed_request_stores_nothing(engine: sa.Engine, tmp_path: Path,
                                                        server: PrivateRedis) -> None:
    """POST /oauth2/par for a public client (token_endpoint_auth_method none: anyone may name it): the
    request goes back inside the request_uri, sealed for that client (identity.oidc.par). Stored, each
    took up to 3.2 kB for a minute. Its login and its code work as a stored one's."""
    client_id, _ = create_client(engine, name="driver app", role="driver_app", organisation_id=None,
                                 auth_method="none", now=datetime.now(UTC), redirect_uris=[DRIVER_REDIRECT])

    def push(**extra: str) -> Any:
        form = {"client_id": client_id, "response_type": "code", "redirect_uri": DRIVER_REDIRECT, "scope": "openid",
                "state": "st", "nonce": "n", "code_challenge": b64url(secrets.token_bytes(32)),
                "code_challenge_method": "S256", **extra}
        return http.post("/oauth2/par", data=form)

    for http in _serve(engine, tmp_path, server):
        _clear_of_a_window_edge()
        assert push().status_code == 201
        before = _held(server, counts=False)
        uris = [push().json()["request_uri"] for _ in range(50)]
        assert _held(server, counts=False) == before  # the address's count of POSTs aside
        assert all(u.startswith("urn:ietf:params:oauth:request_uri:s.") and len(u) <= 2000 for u in uris)
        too_long = push(state=secrets.token_urlsafe(1490))
        assert too_long.status_code == 400 and too_long.json()["error"] == "invalid_request", too_long.text

        def authorize(uri: str, cid: str = client_id, cookie: str | None = None) -> Any:
            http.cookies.clear()
            headers = {"Cookie": f"qg_session={cookie}"} if cookie else {}
            return http.get("/oauth2/authorize", params={"client_id": cid, "request_uri": uri}, headers=headers,
                            follow_redirects=False)

        first = authorize(uris[0])
        assert first.status_code == 302 and urlsplit(first.headers["location"]).path == "/login", first.text
        other, _ = create_client(engine, name="other app", role="driver_app", organisation_id=None,
                                 auth_method="none", now=datetime.now(UTC), redirect_uris=[DRIVER_REDIRECT])
        assert authorize(uris[1], other).status_code == 400  # sealed for its own client
        changed = uris[1][:60] + ("A" if uris[1][60] != "A" else "B") + uris[1][61:]
        assert authorize(changed).status_code == 400
        assert _held(server, counts=False) == before
        pushed = provider_for(http.app).pushed
        assert pushed.take(uris[1], client_id) is not None
        assert pushed.take(uris[1], client_id, now=datetime.now(UTC).timestamp() + pushed.ttl) is None  # expired
        # The login, then the resume: one code, once.
        resume = parse_qs(urlsplit(first.headers["location"]).query)["return_to"][0]
        person = _person(engine)
        cookie, _ = sessions_for(http.app).create(person, acr="urn:quaygate:acr:passkey", amr=("hwk", "user"),
                                                  now=datetime.now(UTC))
        http.cookies.clear()
        done = http.get(resume, headers={"Cookie": f"qg_session={cookie}"}, follow_redirects=False)
        assert done.status_code == 302 and "code" in parse_qs(urlsplit(done.headers["location"]).query), done.text
        http.cookies.clear()
        assert http.get(resume, headers={"Cookie": f"qg_session={cookie}"}, follow_redirects=False).status_code == 400


def _person(engine: sa.Engine) -> Any:
    import uuid

    from quaygate.schema import persons

    pid = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(persons.insert().values(id=pid, given_name="Jan", family_name="Peeters",
                                             created_at=datetime.now(UTC), status="active"))
    return pid

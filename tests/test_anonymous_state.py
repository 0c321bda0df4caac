"""What an anonymous caller can make us store in Redis (review 67, finding 4).

Redis runs under ``noeviction`` (quaygate/dataset.py): whatever a caller who has proved nothing can make
us store, per request, is a way to fill it, and a full Redis refuses the writes that DPoP claims, passkey
logins, the token endpoint and the gates' verify calls need. A passkey login's options used to store a
flow per call (296 bytes, 300 s). They store nothing now: the flow is sealed (identity.authn.flows), and
its single use is claimed only once an assertion's signature over its challenge holds. A refused
anonymous attempt writes only its address's counters (identity.ratelimit), never a key of its own. A
brokered login's start is sealed into the browser's binding cookie the same way (identity.broker.service).

Each test runs a redis-server of its own (tests/test_redis_memory.py ``PrivateRedis``), never the
machine's shared one.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from identity.authn.flows import SEALED_LENGTH, FlowRefused, FlowSeal
from identity.authn.service import _FLOW_ID
from identity.bootstrap import create_client, provider_for
from identity.oidc.authorize import RESUME_TTL
from identity.sessions import sessions_for
from quaygate.app import create_app
from quaygate.cache import RedisCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import audit_log
from quaygate.settings import Settings
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


def _serve(engine: sa.Engine, tmp_path: Path, server: PrivateRedis) -> Iterator[TestClient]:
    """The whole app (its rate-limit middleware too) on ``server``."""
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        redis_url=server.url, background_workers=False, gate_decision_drain=False)
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
            assert all(0 < admin.pttl(k) <= 61_000 for k in counters)
        assert all(size is not None and size <= 128 for size in sizes), sizes


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


def test_a_tampered_foreign_or_expired_flow_is_refused_and_stores_nothing(env: PEnv, server: PrivateRedis) -> None:
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
    assert _details(env) == ["flow refused: seal", "flow refused: seal", "flow refused: seal",
                             "flow refused: purpose", "flow refused: malformed", "flow refused: expired"]
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
    """GET /broker/itsme/start is anonymous (and no rate limit counts a GET): its flow goes to the
    browser, sealed in the binding cookie. The login that comes back claims its state, once."""
    world = broker_world
    with world.browser() as browser:
        start(browser, world.app)  # the connections greeted
        before = _held(server)
        for _ in range(50):
            start(browser, world.app)
        assert _held(server) == before
        assert world.login(browser, "jan").status_code == 303
    (claim,) = _keys(server) - set(before)
    assert claim.startswith(b"qg:broker:used:")
    with server.admin() as admin:
        assert 0 < admin.pttl(claim) <= (world.app.settings.upstream_flow_ttl + 5) * 1000
    # The longest return_to a login takes (2000 characters, a resume id in it): the cookie still fits.
    longest = "/app/?" + "x" * 1994
    with world.browser() as browser:
        done = world.login(browser, "jan", return_to=longest)
        assert done.status_code == 303 and done.headers["location"] == longest, done.text[:300]


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

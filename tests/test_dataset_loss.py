"""A cache that lost or rolled back its data opens no single-use window again (quaygate/dataset.py).

Every test runs a redis-server of its own (the machine's Redis is never flushed or restarted), with no
persistence, as in production (``--save "" --appendonly no``), holding the service's data since long
before the test (its epoch set long ago, as tests/conftest.py ``redis_url``'s). It then loses its data
one of three ways:

- ``flushall``: FLUSHALL, every connection left open (no process sees a new connection);
- ``restart``: killed and started again empty (as after a crash, or a failover to an empty replica);
- started again from a snapshot taken before the item was used (``restart_from_snapshot``: as with RDB
  persistence, or a failover to a replica that missed the last writes): the claims made since are
  lost, and what was taken since (a WebAuthn flow, a pushed request) is back.

Each kind of single-use item, used before the loss, is refused after it as a used one is; a new one,
made after the loss, is accepted (so the guard locks nobody out for longer than the verifier's
leeway: the server's clock is moved on past it).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from fastapi.testclient import TestClient
from joserfc import jws

from identity.bootstrap import provider_for
from identity.dpop import DPoPError, DPoPVerifier
from identity.oidc.authorize import AuthorizationRequest, PendingRequests
from identity.oidc.par import PushedRequests
from identity.oidc.server import ASSERTION_LEEWAY, MAX_ASSERTION_LIFETIME, assertion_usable_from
from identity.tokens import sign_access_token
from quaygate.app import create_app
from quaygate.cache import MemoryCache, RedisCache
from quaygate.container import Container
from quaygate.crypto import DataCipher
from quaygate.settings import Settings
from release_service.adapters.gate_facts import RedisGateFacts
from release_service.adapters.sqla.uow import SqlUnitOfWork

from . import processes
from .aio import run_async
from .factories import TERMINAL
from .test_gate_verify import Gate
from .test_identity_dpop_support import ProofKey
from .test_identity_passkeys import ORIGIN, build_env
from .test_identity_support import TOKEN_ENDPOINT, assertion, assertion_form, basic, make_env, public_jwks, rsa_key
from .webauthn_authenticator import SoftAuthenticator

PUBLIC = "http://localhost:8000"  # the default issuer: what a proof's htu names
LEEWAY = 5  # the DPoP verifier's (identity/bootstrap.py: DPoPVerifier's default)
LOSSES = ["flushall", "restart"]


class LosingRedis:
    """A redis-server of the test's own, on a free port, with no persistence but what SAVE writes."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.port = processes.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = self._start()
        admin = self.admin()
        # Holding the service's data since long ago, set by this very server (tests/conftest.py).
        admin.set("qg:dataset:epoch", f"0 {admin.info('server')['run_id']}")
        admin.close()

    def _start(self) -> subprocess.Popen[bytes]:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        return processes.start(argv, cwd=self.dir, log=self.dir / "redis.log", ready=processes.listens(self.port),
                               what="redis-server", timeout=5)

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def save(self) -> None:
        """A snapshot of what it holds now (dump.rdb), which a start loads."""
        admin = self.admin()
        admin.save()
        admin.close()

    def lose(self, how: str, *connected: Any) -> None:
        """Its data lost ``how``; ``connected``: what holds connections to it (``reconnect``)."""
        if how == "flushall":  # every connection stays open
            admin = self.admin()
            admin.flushall()
            admin.close()
        else:
            (self.dir / "dump.rdb").unlink(missing_ok=True)
            self.restart_from_snapshot(*connected)

    def restart_from_snapshot(self, *connected: Any) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc = self._start()
        reconnect(*connected)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def lost(tmp_path: Path) -> Iterator[LosingRedis]:
    server = LosingRedis(tmp_path)
    yield server
    server.stop()


def reconnect(*holders: Any) -> None:
    """The connections ``holders`` (caches, the gate facts) made to a server that was killed, dropped as
    each is at its next call, which fails (a 503): the next call on each connects anew and greets first
    (quaygate/redisline.py). Dropped here beforehand, so that no 503 answers a test's one call (a proof
    claimed by a call that then failed is refused on a retry, whatever the guard)."""
    for holder in holders:
        holder._line.close()
        if isinstance(holder, RedisGateFacts):
            holder.close_pipelined()


class Clock:
    """The server's clock, which a test moves on (a fresh proof is made a moment after the loss)."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at

    def moved_past_the_leeway(self) -> float:
        """Move on past the DPoP leeway from now; the new time, in Unix seconds."""
        self.at = datetime.now(UTC) + timedelta(seconds=LEEWAY + 1)
        return self.at.timestamp()


@dataclass
class Served:
    gate: Gate
    clock: Clock
    cache: RedisCache

    def bound(self, token: str, key: ProofKey) -> str:
        """``token`` re-signed bound to ``key`` (cnf.jkt), as the token endpoint binds one."""
        claims = json.loads(jws.extract_compact(token.encode()).payload)
        return sign_access_token({**claims, "jti": uuid.uuid4().hex, "cnf": {"jkt": key.jkt}},
                                 provider_for(self.gate.http.app).keys.signing_key())


@pytest.fixture
def served(pg_engine: sa.Engine, tmp_path: Path, lost: LosingRedis) -> Iterator[Served]:
    """The whole app (party API, gate API, token endpoint) on ``lost``, its clock a test's."""
    yield from serving(pg_engine, tmp_path, lost)


def serving(pg_engine: sa.Engine, tmp_path: Path, lost: LosingRedis, **settings: Any) -> Iterator[Served]:
    """``served``, with ``settings`` of the test's own."""
    s = Settings(var_dir=tmp_path, database_url=str(pg_engine.url.render_as_string(hide_password=False)),
                 redis_url=lost.url, background_workers=False, gate_decision_drain=False, **settings)
    clock = Clock()
    cache = RedisCache(lost.url)
    c = Container(settings=s, engine=pg_engine, cache=cache, cipher=DataCipher(s.data_key_bytes()),
                  clock=clock)  # type: ignore[arg-type]
    with TestClient(create_app(s, container=c)) as http:
        gate = Gate(http, pg_engine)
        gate.facts = c.gate_facts  # type: ignore[attr-defined]
        yield Served(gate, clock, cache)


def _refused_proof(r: Any) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "invalid_dpop_proof", r.text
    assert "DPoP-Nonce" not in r.headers


def _nonce_asked(r: Any) -> str:
    """RFC 9449 §9: a 401 ``use_dpop_nonce``, in the body and the challenge, with the nonce to use."""
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "use_dpop_nonce", r.text
    assert 'error="use_dpop_nonce"' in r.headers["WWW-Authenticate"], r.headers
    nonce: str = r.headers["DPoP-Nonce"]
    assert 0 < len(nonce) <= 256 and all(0x21 <= ord(ch) <= 0x7E and ch not in '"\\' for ch in nonce), nonce
    return nonce


# ---- DPoP proofs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", LOSSES)
def test_a_dpop_proof_used_before_redis_lost_its_data_is_refused_at_the_api(served: Served, lost: LosingRedis,
                                                                          how: str) -> None:
    """Refused with ``use_dpop_nonce`` and the epoch's nonce (RFC 9449 §9): a new proof with that nonce
    is accepted at once, without waiting out the leeway, and once only."""
    key = ProofKey(clock=[time.time()])
    token = served.bound(served.gate.as_("line")["Authorization"].split()[1], key)
    url = "/api/v1/releases"

    def get(proof: str) -> Any:
        return served.gate.http.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})

    proof = key.proof("GET", PUBLIC + url, token=token)
    assert get(proof).status_code == 200
    _refused_proof(get(proof))
    lost.lose(how, served.cache, served.gate.facts)
    nonce = _nonce_asked(get(proof))  # its claim is gone with the data: refused all the same
    assert _nonce_asked(get(key.proof("GET", PUBLIC + url, token=token))) == nonce  # new, but no nonce
    made = key.proof("GET", PUBLIC + url, token=token, claims={"nonce": nonce})
    got = get(made)
    assert got.status_code == 200, got.text  # made with the nonce after the loss: accepted, once
    _refused_proof(get(made))
    key.clock[0] = served.clock.moved_past_the_leeway()
    later = key.proof("GET", PUBLIC + url, token=token)  # a client that ignores nonces: let in after the leeway
    assert get(later).status_code == 200


@pytest.mark.parametrize("how", LOSSES)
def test_a_dpop_proof_used_before_redis_lost_its_data_is_refused_at_the_gate(served: Served, lost: LosingRedis,
                                                                           how: str) -> None:
    """The gate claims a proof on the gate facts' pipelined connection (``RedisGateFacts.claim_async``);
    after a FLUSHALL that connection is still open, and its claim itself finds the epoch gone. The
    refusal gives the epoch's nonce, with which a new proof is let through at once."""
    gate = served.gate
    assert gate.facts._pipe.available  # type: ignore[attr-defined]
    key = ProofKey(clock=[time.time()])
    token = served.bound(gate.gate_token, key)
    gate.pickable(1)

    def verify(proof: str) -> Any:
        return gate.http.post("/gate/v1/verify", json=gate.body(1),  # a new request_id each time
                              headers={"Authorization": f"DPoP {token}", "DPoP": proof})

    proof = key.proof("POST", PUBLIC + "/gate/v1/verify", token=token)
    first = verify(proof)
    assert first.status_code == 200 and first.json()["decision"] == "allow", first.text
    _refused_proof(verify(proof))
    lost.lose(how, served.cache, gate.facts)
    nonce = _nonce_asked(verify(proof))
    made = key.proof("POST", PUBLIC + "/gate/v1/verify", token=token, claims={"nonce": nonce})
    got = verify(made)
    assert got.status_code == 200 and got.json()["decision"] == "allow", got.text
    _refused_proof(verify(made))


def test_a_proof_with_the_nonce_of_an_epoch_gone_is_refused_after_a_second_loss(served: Served,
                                                                               lost: LosingRedis) -> None:
    """A proof made with one epoch's nonce and used then, replayed after Redis lost its data again:
    that nonce vouches for nothing now (each epoch has its own), so the proof is refused and the answer
    gives the new epoch's nonce, with which a new proof is accepted."""
    key = ProofKey(clock=[time.time()])
    token = served.bound(served.gate.as_("line")["Authorization"].split()[1], key)
    url = "/api/v1/releases"

    def get(proof: str) -> Any:
        return served.gate.http.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof})

    lost.lose("restart", served.cache, served.gate.facts)
    first = _nonce_asked(get(key.proof("GET", PUBLIC + url, token=token)))
    captured = key.proof("GET", PUBLIC + url, token=token, claims={"nonce": first})
    assert get(captured).status_code == 200
    lost.lose("flushall", served.cache, served.gate.facts)
    second = _nonce_asked(get(captured))
    assert second != first
    assert get(key.proof("GET", PUBLIC + url, token=token, claims={"nonce": second})).status_code == 200


def test_the_token_endpoint_asks_for_the_epochs_nonce(pg_engine: sa.Engine, tmp_path: Path, lost: LosingRedis
                                                      ) -> None:
    """RFC 9449 §8: a token request whose proof may predate the epoch is answered 400 ``use_dpop_nonce``
    with the nonce; the client's new proof with it gets a DPoP-bound token at once."""
    for env in make_env(pg_engine, tmp_path):
        env.container.cache = RedisCache(lost.url)
        env.app.state.identity = None  # the provider built on this cache
        key = ProofKey(clock=[time.time()])
        client_id, secret, _ = env.client("terminal_gate")
        lost.lose("restart", env.container.cache)

        def token(proof: str) -> Any:
            return env.token({"grant_type": "client_credentials"}, headers={**basic(client_id, secret), "DPoP": proof})

        asked = token(key.proof("POST", TOKEN_ENDPOINT))
        assert asked.status_code == 400, asked.text
        assert asked.json()["error"] == "use_dpop_nonce", asked.text
        nonce = asked.headers["DPoP-Nonce"]
        got = token(key.proof("POST", TOKEN_ENDPOINT, claims={"nonce": nonce}))
        assert got.status_code == 200, got.text
        assert got.json()["token_type"] == "DPoP"
        again = token(key.proof("POST", TOKEN_ENDPOINT, claims={"nonce": nonce + "x"}))  # not the epoch's
        assert again.json()["error"] == "use_dpop_nonce" and again.headers["DPoP-Nonce"] == nonce
        env.container.cache.close()


def test_the_gates_pipelined_claim_sees_a_redis_started_from_an_older_snapshot(
        pg_engine: sa.Engine, lost: LosingRedis) -> None:
    """The snapshot holds the epoch it was taken under, which the claim script alone would take for
    current: the pipelined connection made to the server started from it greets first (the identity
    cache's greeting, quaygate/workers.py), and the epoch starts anew there."""
    now = [time.time()]
    cache = RedisCache(lost.url)
    verifier = DPoPVerifier(cache, leeway=LEEWAY, now=lambda: now[0])
    facts = RedisGateFacts.from_url(lost.url, pg_engine, lambda: SqlUnitOfWork(pg_engine),
                                    greeting=cache.epoch_greeting)
    key = ProofKey(clock=now)

    def claimed(proof: str) -> bool:
        verified = verifier.verify(proof, htm="POST", htu=PUBLIC + "/gate/v1/verify", claim=False)
        call = verifier.claim_call(verified.unclaimed)  # type: ignore[arg-type]
        assert call is not None

        async def claim() -> bool:  # each run on a loop of its own: a pipelined connection made for it
            try:
                return await facts.claim_async(*call)
            finally:
                facts.close_pipelined()

        return bool(run_async(claim))

    try:
        lost.save()
        proof = key.proof("POST", PUBLIC + "/gate/v1/verify")
        assert claimed(proof) is True  # used after the snapshot
        assert claimed(proof) is False
        lost.restart_from_snapshot()
        assert claimed(proof) is False  # its claim is not in the snapshot
        # The greeting told the gate facts of another dataset: their copies are not trusted (nor the loop
        # used) until every generation is replaced, which the drainer's loop does at once.
        assert facts._suspect
        facts.flush_owed()
        now[0] = time.time() + LEEWAY + 1  # a moment past the leeway after the loss
        made = key.proof("POST", PUBLIC + "/gate/v1/verify")
        assert claimed(made) is True
        assert claimed(made) is False
    finally:
        facts.close()
        cache.close()


def test_an_in_process_cache_started_again_refuses_a_proof_used_before(epochs_as_made: None) -> None:
    """The in-process cache (the embedded default) forgets every claim when its server starts again: its
    epoch is the moment it is made. The refusal asks for its nonce, with which a new proof passes at once."""
    now = [time.time()]
    key = ProofKey(clock=[now[0]])
    htu = PUBLIC + "/gate/v1/verify"
    before = DPoPVerifier(MemoryCache(since=now[0] - 3600), leeway=LEEWAY, now=lambda: now[0])  # long running
    proof = key.proof("POST", htu)
    before.verify(proof, htm="POST", htu=htu)
    with pytest.raises(DPoPError, match="used before"):
        before.verify(proof, htm="POST", htu=htu)
    after = DPoPVerifier(MemoryCache(), leeway=LEEWAY, now=lambda: now[0])  # the server started again
    with pytest.raises(DPoPError, match="nonce") as refused:
        after.verify(proof, htm="POST", htu=htu)
    assert refused.value.error == "use_dpop_nonce" and refused.value.nonce
    with_nonce = key.proof("POST", htu, claims={"nonce": refused.value.nonce})
    after.verify(with_nonce, htm="POST", htu=htu)
    with pytest.raises(DPoPError, match="used before"):
        after.verify(with_nonce, htm="POST", htu=htu)
    again = DPoPVerifier(MemoryCache(), leeway=LEEWAY, now=lambda: now[0])  # started once more: a nonce of its own
    with pytest.raises(DPoPError, match="nonce") as anew:
        again.verify(key.proof("POST", htu, claims={"nonce": refused.value.nonce}), htm="POST", htu=htu)
    assert anew.value.nonce not in (None, refused.value.nonce)
    now[0] = key.clock[0] = time.time() + LEEWAY + 1
    made = key.proof("POST", htu)
    after.verify(made, htm="POST", htu=htu)
    with pytest.raises(DPoPError, match="used before"):
        after.verify(made, htm="POST", htu=htu)


def test_a_proof_made_within_the_leeway_after_the_epoch_is_refused(epochs_as_made: None) -> None:
    """A client whose clock runs ahead by the leeway made a proof whose iat is a moment after the epoch,
    before it, and a server accepted it then: refused, until a proof's iat is the leeway past the epoch."""
    epoch = time.time()
    now = [epoch + 1]
    verifier = DPoPVerifier(MemoryCache(since=epoch), leeway=LEEWAY, now=lambda: now[0])
    ahead = ProofKey(clock=[epoch + LEEWAY - 1])  # made at epoch - 1 by a clock LEEWAY ahead
    with pytest.raises(DPoPError, match="nonce"):
        verifier.verify(ahead.proof("POST", PUBLIC + "/gate/v1/verify"), htm="POST", htu=PUBLIC + "/gate/v1/verify")
    now[0] = ahead.clock[0] = epoch + LEEWAY + 1
    verifier.verify(ahead.proof("POST", PUBLIC + "/gate/v1/verify"), htm="POST", htu=PUBLIC + "/gate/v1/verify")


@pytest.mark.parametrize("nonce", [17, "", "a b", 'quote"', "x" * 257, "é"])
def test_a_malformed_nonce_is_refused(nonce: Any) -> None:
    """RFC 9449 §4.2: a nonce is NQCHAR text; anything else is not a proof of ours to judge."""
    verifier = DPoPVerifier(MemoryCache(since=0.0), leeway=LEEWAY)
    with pytest.raises(DPoPError, match="nonce is malformed") as refused:
        verifier.verify(ProofKey().proof("POST", PUBLIC + "/x", claims={"nonce": nonce}), htm="POST",
                        htu=PUBLIC + "/x")
    assert refused.value.error == "invalid_dpop_proof"


# ---- client assertions (private_key_jwt) ---------------------------------------------------------


@pytest.mark.parametrize("how", LOSSES)
def test_a_client_assertion_used_before_redis_lost_its_data_is_refused(pg_engine: sa.Engine, tmp_path: Path,
                                                                       lost: LosingRedis, how: str) -> None:
    for env in make_env(pg_engine, tmp_path):
        env.container.cache = RedisCache(lost.url)
        env.app.state.identity = None  # the provider built on this cache
        key = rsa_key()
        client_id, _, _ = env.client("shipping_line", auth_method="private_key_jwt", jwks=public_jwks(key))
        used = assertion(key, client_id)
        assert env.token(assertion_form(used)).status_code == 200
        assert env.token(assertion_form(used)).json()["error"] == "invalid_client"
        lost.lose(how, env.container.cache)
        refused = env.token(assertion_form(used))
        assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client"), refused.text
        # One made after the loss that no server could have accepted before it: its exp is as far ahead
        # as an assertion's may be (MAX_ASSERTION_LIFETIME, 300 s): accepted.
        made = _assertion_made_at(key, client_id, time.time())
        got = env.token(assertion_form(made))
        assert got.status_code == 200, got.text
        assert env.token(assertion_form(made)).json()["error"] == "invalid_client"
        env.container.cache.close()


def test_an_assertion_could_first_be_used_at_its_iat_less_the_leeway_or_its_exp_less_its_lifetime() -> None:
    """The earliest moment a server could have accepted an assertion (identity/oidc/server.py): iat no
    more than ASSERTION_LEEWAY ahead of it, exp no more than MAX_ASSERTION_LIFETIME; the later bound."""
    t = 1_800_000_000.0
    assert assertion_usable_from({"iat": t, "exp": t + 60}) == t - ASSERTION_LEEWAY
    assert assertion_usable_from({"iat": t - 1000, "exp": t + 60}) == t + 60 - MAX_ASSERTION_LIFETIME
    assert assertion_usable_from({"exp": t + 60}) == t + 60 - MAX_ASSERTION_LIFETIME  # iat is optional


def _assertion_made_at(key: Any, client_id: str, at: float) -> str:
    from joserfc import jwt

    claims = {"iss": client_id, "sub": client_id, "aud": TOKEN_ENDPOINT, "iat": at, "exp": at + MAX_ASSERTION_LIFETIME,
              "jti": uuid.uuid4().hex}
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key, algorithms=["RS256"])


# ---- values taken once (GETDEL): WebAuthn flows, pushed requests, authorization resumes -----------------


def test_a_login_flow_used_after_the_snapshot_is_not_used_again(pg_engine: sa.Engine, tmp_path: Path,
                                                                 lost: LosingRedis) -> None:
    """A login flow is sealed, not stored (identity.authn.flows), and claimed once its assertion
    verifies. The snapshot was taken before: started from it, Redis has lost the claim, and a captured
    assertion answering the flow's challenge would log in again (a passkey without a sign counter, as
    synced passkeys are, gives the server nothing else to tell a replay by). The flow was issued before
    the new epoch: refused."""
    cache = RedisCache(lost.url)
    for env in build_env(pg_engine, tmp_path, cache=cache):
        synced = SoftAuthenticator(origin=ORIGIN, counter=False)
        env.enrol(env.person(), synced)
        flow, options = env.login_options()
        lost.save()
        body = {"flow": flow, "credential": synced.get(options)}
        assert env.post("/webauthn/authentication/verify", body).status_code == 200
        with lost.admin() as admin:
            assert len(list(admin.scan_iter("qg:webauthn:used:*"))) == 1
        lost.restart_from_snapshot(cache)
        with lost.admin() as admin:
            assert list(admin.scan_iter("qg:webauthn:used:*")) == []  # the claim is lost with the data
        cache.greet()  # a connection's greeting: the new dataset's epoch begins
        # The test's clock stood still: it reads after the loss now (a flow's issue time is kept to the
        # millisecond, rounded down: one issued in the epoch's first millisecond is taken for older).
        env.clock.now_ = datetime.now(UTC) + timedelta(milliseconds=2)
        replayed = env.post("/webauthn/authentication/verify", body)
        assert replayed.status_code == 400 and replayed.json()["code"] == "challenge_expired", replayed.text
        assert env.login(synced).status_code == 200  # a flow issued after the loss
    cache.close()


def _request() -> AuthorizationRequest:
    return AuthorizationRequest(client_id="console", redirect_uri="https://console.example/cb", scope="openid",
                                state="s", nonce="n", code_challenge="x" * 43, prompt=(), max_age=None, acr=None,
                                dpop_jkt=None, created_at=time.time(), pushed=True)


def test_a_pushed_request_used_after_the_snapshot_is_not_used_again(lost: LosingRedis) -> None:
    """RFC 9126 §4, §7.3: a request_uri is used once; the snapshot has the request back, unused."""
    cache = RedisCache(lost.url)
    pushed = PushedRequests(cache, ttl=60, cipher=DataCipher(b"k" * 32))
    try:
        uri = pushed.push(_request())
        lost.save()
        assert pushed.take(uri, "console") is not None
        assert pushed.take(uri, "console") is None
        lost.restart_from_snapshot(cache)
        assert pushed.take(uri, "console") is None
        uri = pushed.push(_request())  # after the loss
        assert pushed.take(uri, "other client") is None  # not its own: left for the rightful client
        assert pushed.take(uri, "console") is not None
        assert pushed.take(uri, "console") is None
    finally:
        cache.close()


def test_an_authorization_resume_finished_after_the_snapshot_is_not_finished_again(lost: LosingRedis) -> None:
    """Only the first resume of a request waiting for a login issues a code (``PendingRequests.finish``
    claims it); the request is kept by the browser (its resume id), so the snapshot holds nothing of it,
    and a Redis started from it has lost the claim: the request was made before the new epoch, refused."""
    cache = RedisCache(lost.url)
    pending = PendingRequests(cache, b"pepper")
    now = datetime.now(UTC)
    try:
        req = _request()
        rid = pending.save(req)
        lost.save()
        assert pending.load(rid, now=now) == req and pending.finish(rid, req, now=now) is True
        assert pending.finish(rid, req, now=now) is False
        lost.restart_from_snapshot(cache)
        assert pending.finish(rid, req, now=now) is False
        cache.greet()  # the new dataset's epoch begins
        time.sleep(0.002)
        req = _request()  # after the loss
        rid = pending.save(req)
        assert pending.load(rid, now=now) == req and pending.load(rid, now=now) == req  # read on every resume
        assert pending.finish(rid, req, now=now) is True and pending.finish(rid, req, now=now) is False
    finally:
        cache.close()


# ---- the gate's copies (not single use, but the same loss) ---------------------------------------------


def test_a_gate_copy_older_than_a_change_is_not_trusted_from_a_redis_started_from_an_older_snapshot(
        served: Served, lost: LosingRedis) -> None:
    """The gate facts keep copies under generations a commit replaces (release_service/adapters/
    gate_facts.py). A Redis started again from a snapshot taken before a change has the old generation
    and the old copy back. The gate's pipelined connection, idle when the server went, connects anew
    without any call failing, so nothing trips: the greeting tells it of the new dataset, and every
    generation is replaced before a copy is trusted again."""
    gate = served.gate
    gate.pickable(1)
    _blocked_after_the_snapshot(gate, lost)
    lost.restart_from_snapshot(served.cache)
    got = gate.verify(gate.body(1))
    assert got.status_code == 200 and (got.json()["decision"], got.json()["reasons"]) == ("deny", ["badge_blocked"]), \
        got.text


def _blocked_after_the_snapshot(gate: Gate, lost: LosingRedis) -> None:
    """The badge's copy cached and current (a check allowed twice, the second on the copies), a
    snapshot taken, then the badge blocked: checks are denied at once (its invalidation replaced the
    generation). The snapshot still holds the old generation with the copy of the badge active."""
    from identity.badges.service import BadgeService
    from quaygate.schema import badges

    for _ in range(2):
        got = gate.verify(gate.body(1))
        assert got.status_code == 200 and got.json()["decision"] == "allow", got.text
    lost.save()
    with gate.engine.connect() as conn:
        badge = conn.execute(sa.select(badges.c.id).where(badges.c.person_id == gate.p.driver)).scalar_one()
    BadgeService(gate.engine).change_status(badge, "blocked", reason="stolen", actor="o", now=datetime.now(UTC))
    got = gate.verify(gate.body(1))
    assert (got.json()["decision"], got.json()["reasons"]) == ("deny", ["badge_blocked"]), got.text


@pytest.mark.parametrize("on_loop", [True, False], ids=["loop", "threads"])
def test_a_gate_commit_as_the_first_call_after_a_redis_started_from_an_older_snapshot_is_denied(
        pg_engine: sa.Engine, tmp_path: Path, lost: LosingRedis, on_loop: bool) -> None:
    """Review 125, finding 1. The commit is the first call after the restore, on a connection made anew
    to the server started from the snapshot: the event loop's pipelined one (``commit_on_loop``), or a
    worker thread's (a thread the pool made since, whose connection is new: ``reconnect`` drops the
    old ones as a thread ending does). The old generation and the old copy are back under it; the
    commit must be decided on the badge blocked, never gate the truck in on the copy."""
    for served in serving(pg_engine, tmp_path, lost, gate_commit_on_loop=on_loop):
        gate = served.gate
        rid = gate.pickable(1)
        _blocked_after_the_snapshot(gate, lost)
        lost.restart_from_snapshot(served.cache, gate.facts)
        got = gate.verify(gate.body(1, mode="commit"))
        assert got.status_code == 200, got.text
        assert (got.json()["decision"], got.json()["reasons"], got.json()["committed"]) == \
            ("deny", ["badge_blocked"], False), got.text
        assert gate.state(rid) == "nominated"
        got = gate.verify(gate.body(1, mode="commit"))  # and after it
        assert (got.json()["decision"], got.json()["committed"]) == ("deny", False), got.text


def test_a_process_that_never_saw_the_old_dataset_does_not_trust_its_copies(
        served: Served, lost: LosingRedis, pg_engine: sa.Engine) -> None:
    """A process started after the restore (a new replica, one restarted) has no epoch to compare: its
    first connection to the server started from the snapshot deletes the gate's generations before its
    first read (quaygate/dataset.py ``GREETING``, the gate's marker), so the old copy is unreachable."""
    from release_service.domain.gate import BadgeRead

    gate = served.gate
    gate.pickable(1)
    _blocked_after_the_snapshot(gate, lost)
    lost.restart_from_snapshot(served.cache, gate.facts)
    fresh = RedisGateFacts.from_url(lost.url, pg_engine, lambda: SqlUnitOfWork(pg_engine),
                                    greeting=served.cache.epoch_greeting)
    try:
        snapshot = fresh.read(terminal=TERMINAL, request_id=str(uuid.uuid4()),
                              badge=BadgeRead("alfapass", gate.badge_number), containers=[], now=datetime.now(UTC))
        assert snapshot is not None and snapshot.badge.status == "blocked"
    finally:
        fresh.close()


@pytest.mark.parametrize("on_loop", [True, False], ids=["loop", "threads"])
def test_the_reply_of_the_call_that_met_another_dataset_is_thrown_away(
        served: Served, lost: LosingRedis, on_loop: bool) -> None:
    """The second guard (``RedisGateFacts._vouched``): the call whose connection was greeted under
    another dataset gives no facts at all, whatever it read (FactsUnavailable: its caller decides from
    PostgreSQL); the next call replaces every generation first and reads them current."""
    from release_service.domain.gate import BadgeRead
    from release_service.ports import FactsUnavailable

    gate = served.gate
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    gate.pickable(1)
    _blocked_after_the_snapshot(gate, lost)
    lost.restart_from_snapshot(served.cache, facts)
    kw: dict[str, Any] = {"terminal": TERMINAL, "badge": BadgeRead("alfapass", gate.badge_number),
                          "containers": [], "now": datetime.now(UTC)}

    def on_a_new_thread(fn: Any) -> Any:  # as a worker thread the pool made since: a connection of its own
        with ThreadPoolExecutor(1) as one:
            return one.submit(fn).result()

    def read() -> Any:
        return facts.read(request_id=str(uuid.uuid4()), **kw)

    async def read_cached() -> Any:
        try:
            return await facts.read_cached_async(request_id=str(uuid.uuid4()), **kw)
        finally:
            facts.close_pipelined()

    with pytest.raises(FactsUnavailable, match="not trusted"):
        run_async(read_cached) if on_loop else on_a_new_thread(read)
    assert facts._suspect
    snapshot = on_a_new_thread(read)  # recovers first
    assert snapshot is not None and snapshot.badge.status == "blocked" and not facts._suspect

"""Redis's memory: a Redis that may evict quaygate's keys is refused, and a full one is answered rightly
or refused, never with a 500 and never with an allow that should not be (quaygate/dataset.py, "Eviction").

Every test runs a redis-server of its own (the machine's shared Redis is never reconfigured), with no
persistence, as in production. A full Redis is one under ``noeviction`` filled to its ``maxmemory``,
then held there (the limit set below what it holds: a connection that closes frees its buffers, and a
Redis just at its limit takes the next few writes). ``room`` lifts the limit: keys expired, an operator
made room.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from fastapi.testclient import TestClient
from joserfc import jws

from identity.badges.service import BadgeService
from identity.bootstrap import create_client, provider_for
from identity.tokens import sign_access_token
from quaygate import dataset, solo
from quaygate.app import create_app
from quaygate.cache import RedisCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.dataset import EvictingRedis
from quaygate.db import make_engine
from quaygate.schema import badges, releases
from quaygate.settings import Settings
from release_service.adapters.gate_facts import RedisGateFacts
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.ports import FactsUnavailable

from . import processes
from .aio import run_async
from .factories import TERMINAL, container
from .test_gate_verify import Gate
from .test_identity_dpop_support import ProofKey

PUBLIC = "http://localhost:8000"  # the default issuer: what a proof's htu names


class PrivateRedis:
    """A redis-server of the test's own, on a free port."""

    def __init__(self, tmp_path: Path, *config: str) -> None:
        if shutil.which("redis-server") is None:
            processes.unavailable("redis-server", "not installed")
        self.port = processes.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                *config]
        self.proc = processes.start(argv, cwd=tmp_path, log=tmp_path / f"redis-{self.port}.log",
                                    ready=processes.listens(self.port), what="redis-server", timeout=5)

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def held_long_ago(self) -> None:
        """Holding the service's data since long before the test (tests/conftest.py ``redis_url``)."""
        with self.admin() as admin:
            admin.set("qg:dataset:epoch", f"0 {admin.info('server')['run_id']}")

    def fill(self) -> None:
        """Filled to its maxmemory with keys that never expire, and held full."""
        with self.admin() as admin:
            pipe = admin.pipeline(transaction=False)
            try:
                while True:
                    for _ in range(64):
                        pipe.set(f"junk:{uuid.uuid4().hex}", b"x" * 4096)
                    pipe.execute()
            except redis.OutOfMemoryError:
                pass
            admin.config_set("maxmemory", admin.info("memory")["used_memory"] // 2)
            with pytest.raises(redis.OutOfMemoryError):
                admin.set("one-more", b"x")

    def room(self) -> None:
        with self.admin() as admin:
            admin.config_set("maxmemory", 0)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    """``private_redis(*config)``: a redis-server started with ``config``, stopped after the test."""
    started: list[PrivateRedis] = []

    def start(*config: str) -> PrivateRedis:
        server = PrivateRedis(tmp_path, *config)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _settings(tmp_path: Path, database_url: str, redis_url: str) -> Settings:
    return Settings(var_dir=tmp_path, database_url=database_url, redis_url=redis_url, background_workers=False,
                    gate_decision_drain=False)


# ---- the eviction policy ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_a_redis_that_may_evict_is_refused_at_start(private_redis: Callable[..., PrivateRedis], tmp_path: Path,
                                                    sqlite_database_url: str, policy: str) -> None:
    """The server does not start, and says which policy it found, which one it needs and why; nothing
    is written to that Redis."""
    server = private_redis("--maxmemory", "4mb", "--maxmemory-policy", policy)
    app = create_app(_settings(tmp_path, sqlite_database_url, server.url))
    with pytest.raises(EvictingRedis) as refused, TestClient(app):
        pass
    said = str(refused.value)
    assert f"maxmemory-policy is {policy}; quaygate needs noeviction" in said, said
    assert "replayed" in said and "revoked token" in said, said
    assert app.state.start_refused == said
    with server.admin() as admin:
        assert admin.dbsize() == 0  # refused before the greeting wrote its epoch


@pytest.mark.parametrize("maxmemory", ["4mb", "0"])
def test_noeviction_is_served_with_or_without_a_limit(private_redis: Callable[..., PrivateRedis], tmp_path: Path,
                                                      sqlite_database_url: str, maxmemory: str) -> None:
    server = private_redis("--maxmemory", maxmemory, "--maxmemory-policy", "noeviction")
    with TestClient(create_app(_settings(tmp_path, sqlite_database_url, server.url))) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
    # The session's database, which servers without Redis use after this test: no longer served with Redis.
    engine = make_engine(sqlite_database_url)
    try:
        solo.release_redis(engine)
    finally:
        engine.dispose()


def test_quaygate_serve_refuses_an_evicting_redis_with_a_plain_message(
        private_redis: Callable[..., PrivateRedis], tmp_path: Path, sqlite_database_url: str) -> None:
    """``quaygate serve`` exits at start, saying why in a line of its own: not under a traceback."""
    server = private_redis("--maxmemory-policy", "allkeys-lru")
    env = {**os.environ, "QUAYGATE_DATABASE_URL": sqlite_database_url, "QUAYGATE_VAR_DIR": str(tmp_path),
           "QUAYGATE_REDIS_URL": server.url, "QUAYGATE_BACKGROUND_WORKERS": "false"}
    done = subprocess.run([sys.executable, "-m", "quaygate.cli", "serve", "--port", str(processes.free_port())],
                          cwd=processes.ROOT, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0, done.stderr[-3000:]
    said = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    events = [entry["event"] for entry in said]
    assert "quaygate did not start: Redis's maxmemory-policy is allkeys-lru; quaygate needs noeviction" in \
        " ".join(events), done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_after_a_failover_to_a_redis_that_may_evict_every_new_connection_is_refused(
        private_redis: Callable[..., PrivateRedis], pg_engine: sa.Engine) -> None:
    """The policy is checked by every connection's greeting, not once at start: after a failover to a
    replica configured otherwise (here: the same server reconfigured, and the connections dropped as a
    failover drops them), the cache, the gate facts' worker threads and their event loop's connection
    are all refused. The gate then decides on PostgreSQL, and a single-use claim is refused (503). A
    connection kept open through a CONFIG SET on a live Redis is not greeted again: not seen."""
    server = private_redis("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    server.held_long_ago()
    cache = RedisCache(server.url)
    facts = RedisGateFacts.from_url(server.url, pg_engine, lambda: SqlUnitOfWork(pg_engine),
                                    greeting=cache.epoch_greeting)
    claim = cache.claim_call("x:proof", 60, usable_from=time.time())

    async def claimed() -> Any:
        try:
            return await facts.claim_async(*claim)
        finally:
            facts.close_pipelined()

    try:
        assert cache.get("anything") is None and facts._line.call("PING") == b"PONG"
        assert run_async(claimed)
        with server.admin() as admin:
            admin.config_set("maxmemory-policy", "volatile-lru")
        # The connections a failover drops (each found dropped by its next call, which fails: a 503),
        # dropped here beforehand, as tests/test_dataset_loss.py ``reconnect`` does.
        cache._line.close()
        facts._line.close()
        with pytest.raises(EvictingRedis, match="maxmemory-policy is volatile-lru"):
            cache.get("anything")
        with pytest.raises(EvictingRedis, match="maxmemory-policy is volatile-lru"):
            facts._line.call("PING")
        facts._down_until = 0.0  # past the breaker's cool-down
        facts._suspect = False
        with pytest.raises(FactsUnavailable, match="maxmemory-policy is volatile-lru"):
            run_async(claimed)
    finally:
        facts.close()
        cache.close()


def test_a_greeting_that_names_no_policy_is_refused() -> None:
    """A Redis-like server whose INFO memory does not say its policy cannot be shown to evict nothing."""
    with pytest.raises(EvictingRedis, match="names no maxmemory-policy"):
        dataset.checked([b"1", 0, b""])
    dataset.checked([b"1", 0, b"noeviction"])


def test_a_redis_older_than_7_is_refused() -> None:
    """The greeting names the version of a Redis older than 7, whose scripts cannot carry the allow-oom
    flag the invalidations need on a full Redis: refused, saying so. A Redis 7's greeting names none."""
    with pytest.raises(dataset.OldRedis, match="Redis 6.2.14 is too old: quaygate needs Redis 7"):
        dataset.checked([False, 0, b"noeviction", b"6.2.14"])
    assert isinstance(dataset.OldRedis("6.2.14"), dataset.UnsuitableRedis)


def test_this_redis_greets_without_naming_its_version(redis_url: str) -> None:
    """The version branch of the greeting, on the real Redis here (7 or later): the reply has no fourth
    element, so ``checked`` takes it; a too-high minimum would make it name the version."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url)
    try:
        reply = client.execute_command(*dataset.greeting("qg:test:epoch"))
        assert len(reply) == 3 and reply[2] == b"noeviction", reply
        dataset.checked(reply)
        higher = dataset.GREETING.source.replace(f"local MIN_MAJOR = {dataset.MIN_MAJOR}", "local MIN_MAJOR = 99")
        assert higher != dataset.GREETING.source
        named = client.eval(higher, 1, "qg:test:epoch")
        assert len(named) == 4 and named[3].startswith(b"7"), named
        with pytest.raises(dataset.OldRedis):
            dataset.checked(named)
    finally:
        client.close()


# ---- a full Redis ------------------------------------------------------------------------------------


@pytest.fixture
def small(private_redis: Callable[..., PrivateRedis]) -> PrivateRedis:
    server = private_redis("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    server.held_long_ago()
    return server


def _serve(engine: sa.Engine, tmp_path: Path, server: PrivateRedis, **over: Any) -> Iterator[Gate]:
    """The whole app on ``server``. A refusal that a middleware raised is answered by Starlette's outermost
    handler, which raises it on for the server to log: the test client must not raise it."""
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        redis_url=server.url, background_workers=False, gate_decision_drain=False, **over)
    c = Container(settings=settings, engine=engine, cache=RedisCache(server.url),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    with TestClient(create_app(settings, container=c), raise_server_exceptions=False) as http:
        gate = Gate(http, engine)
        gate.facts = c.gate_facts  # type: ignore[attr-defined]
        yield gate


@pytest.fixture
def gate(pg_engine: sa.Engine, tmp_path: Path, small: PrivateRedis) -> Iterator[Gate]:
    yield from _serve(pg_engine, tmp_path, small)


def _refused(r: Any) -> None:
    """A clear refusal: 503 problem JSON, to be sent again."""
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    assert r.json()["code"] == "service_unavailable" and r.headers["Retry-After"], r.text


def _decided(gate: Gate, n: int, **over: Any) -> dict[str, Any]:
    r = gate.verify(gate.body(n, **over))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _badge_id(gate: Gate) -> uuid.UUID:
    with gate.engine.connect() as conn:
        return conn.execute(sa.select(badges.c.id).where(badges.c.person_id == gate.p.driver)).scalar_one()


def _bound(gate: Gate, key: ProofKey) -> str:
    """The gate's token re-signed bound to ``key`` (cnf.jkt), as the token endpoint binds one."""
    claims = json.loads(jws.extract_compact(gate.gate_token.encode()).payload)
    return sign_access_token({**claims, "jti": uuid.uuid4().hex, "cnf": {"jkt": key.jkt}},
                             provider_for(gate.http.app).keys.signing_key())


def test_on_a_full_redis_every_answer_is_right_or_a_clear_refusal(gate: Gate, small: PrivateRedis) -> None:
    """The gate decides on PostgreSQL (a badge blocked meanwhile is denied); whatever needs a write to
    Redis (a DPoP proof's single use, a rate limit's count, a passkey login's claim) is refused with a 503:
    a replayed proof is never let through. Never a 500 (the rate limits, counted in a middleware, made
    one of every token request)."""
    http = gate.http
    for n in (1, 2):
        gate.pickable(n)
    key = ProofKey()
    token = _bound(gate, key)
    proof = key.proof("POST", PUBLIC + "/gate/v1/verify", token=token)

    def dpop(proof: str) -> Any:
        return http.post("/gate/v1/verify", json=gate.body(1),
                         headers={"Authorization": f"DPoP {token}", "DPoP": proof})

    assert dpop(proof).status_code == 200
    client_id, secret = create_client(gate.engine, name="line", role="shipping_line",
                                      organisation_id=gate.p.line.organisation_id, now=datetime.now(UTC))
    small.fill()

    assert _decided(gate, 1)["decision"] == "allow"
    commit = gate.body(1, mode="commit")
    first = gate.verify(commit)
    assert (first.status_code, first.json()["decision"], first.json()["committed"]) == (200, "allow", True), first.text
    again = gate.verify(commit)  # the adapter's retry: the same answer, from PostgreSQL
    assert again.status_code == 200 and again.json() == first.json(), again.text
    assert _decided(gate, 1)["reasons"] == ["already_used"]
    _refused(dpop(proof))  # replayed: its claim cannot be checked, so it is not let through
    _refused(dpop(key.proof("POST", PUBLIC + "/gate/v1/verify", token=token)))
    _refused(http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret or "")))
    _refused(http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret or ""),
                       headers={"DPoP": ProofKey().proof("POST", PUBLIC + "/oauth2/token")}))
    _refused(http.post("/oauth2/revoke", data={"token": gate.gate_token}, auth=(client_id, secret or "")))
    # A passkey login's options store nothing (review 67, finding 4): answered on a full Redis too. Its
    # verify, which counts the attempt and claims the flow, is refused.
    options = http.post("/webauthn/authentication/options", json={}, headers={"Origin": PUBLIC})
    assert options.status_code == 200, options.text
    _refused(http.post("/webauthn/authentication/verify", json={"flow": options.json()["flow"], "credential": {}},
                       headers={"Origin": PUBLIC}))
    listed = http.get("/api/v1/releases", headers=gate.as_("line"))
    assert listed.status_code == 200, listed.text

    BadgeService(gate.engine).change_status(_badge_id(gate), "blocked", reason="stolen", actor="o",
                                            now=datetime.now(UTC))
    for mode in ("check", "commit"):
        got = _decided(gate, 2, mode=mode)
        assert (got["decision"], got["reasons"]) == ("deny", ["badge_blocked"]), got
    small.room()
    got = _decided(gate, 2)
    assert (got["decision"], got["reasons"]) == ("deny", ["badge_blocked"]), got


def _writer(gate: Gate, server: PrivateRedis, **kw: Any) -> tuple[sa.Engine, RedisGateFacts]:
    """Another process that writes what the gates read (the badge office's server, the CLI): its own
    engine and gate facts on the same PostgreSQL and Redis, invalidating as ``gate_facts_for`` does."""
    engine = sa.create_engine(gate.engine.url.render_as_string(hide_password=False), poolclass=sa.pool.NullPool)
    facts = RedisGateFacts.from_url(server.url, engine, lambda: SqlUnitOfWork(engine), **kw)
    facts.CLOSE_GRACE = 0.0  # type: ignore[misc]
    return engine, facts


def test_a_badge_blocked_while_redis_is_full_is_invalidated_for_every_process(
        gate: Gate, small: PrivateRedis) -> None:
    """Another server blocks the badge while Redis is full; it saw Redis fail a moment before (its drainer
    could not write), so it marks nothing (the breaker's cool-down) and sends the invalidation after
    its commit alone. Refused (OOM), it would be owed and, the writer gone, lost: once Redis had room,
    this server would trust its copy and let the blocked badge through. Allowed on a full Redis, it
    lands."""
    gate.pickable(3)
    assert _decided(gate, 3)["decision"] == "allow"  # the badge cached, and remembered here
    small.fill()
    engine, writer = _writer(gate, small, cooldown=60.0)
    try:
        with pytest.raises(redis.OutOfMemoryError):
            writer.drain("writer", block_ms=None)
        writer.note_unavailable()  # as its drainer does (gate_facts.Drainer)
        BadgeService(engine).change_status(_badge_id(gate), "blocked", reason="stolen", actor="o",
                                           now=datetime.now(UTC))
        assert writer.owed() == 0
    finally:
        writer.close()
        engine.dispose()
    small.room()
    got = _decided(gate, 3)
    assert (got["decision"], got["reasons"]) == ("deny", ["badge_blocked"]), got


def test_a_writers_pending_mark_lands_on_a_full_redis(gate: Gate, small: PrivateRedis,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The pending mark a commit sends first is what keeps the other processes off their copies should
    its invalidation never come (the writer loses Redis, or dies, after its commit). Refused on a full
    Redis, nothing would: once Redis had room, the blocked badge would pass here."""
    from release_service.adapters import gate_facts

    gate.pickable(4)
    assert _decided(gate, 4)["decision"] == "allow"
    small.fill()
    engine, writer = _writer(gate, small)
    run = writer._line.run

    def lost_after_the_mark(script: Any, keys: Any, args: Any) -> Any:
        if script in (gate_facts._BUMP, gate_facts._INVALIDATE):
            raise redis.ConnectionError("Redis lost after the mark")
        return run(script, keys, args)

    monkeypatch.setattr(writer._line, "run", lost_after_the_mark)
    try:
        BadgeService(engine).change_status(_badge_id(gate), "blocked", reason="stolen", actor="o",
                                           now=datetime.now(UTC))
        assert writer.owed() == 1  # its invalidation never reached Redis
    finally:
        writer.close()
        engine.dispose()
    small.room()
    got = _decided(gate, 4)
    assert (got["decision"], got["reasons"]) == ("deny", ["badge_blocked"]), got


@pytest.mark.parametrize("on_loop", [True, False], ids=["loop", "threads"])
def test_a_gate_commit_on_a_full_redis_invalidates_the_right_all_the_same(
        pg_engine: sa.Engine, tmp_path: Path, small: PrivateRedis, on_loop: bool) -> None:
    """A gate commit moves its right in PostgreSQL and sends the right's invalidation with its answer.
    Redis full, the answer waits; the invalidation goes alone, allowed on a full Redis: else another
    process, its copy of the right current, would answer a check with a right already used once Redis
    had room."""
    for gate in _serve(pg_engine, tmp_path, small, gate_commit_on_loop=on_loop):
        rid = gate.pickable(5)
        assert _decided(gate, 5)["decision"] == "allow"  # the right cached
        other = RedisGateFacts.from_url(small.url, gate.engine, lambda: SqlUnitOfWork(gate.engine))

        def state() -> str:
            snapshot = other.read(terminal=TERMINAL, request_id=str(uuid.uuid4()), badge=None,
                                  containers=[container(5)], now=datetime.now(UTC))
            assert snapshot is not None
            return snapshot.rights[0].state

        try:
            assert state() == "nominated"
            small.fill()
            ways = gate.http.app.state.metrics.gate_commits  # type: ignore[attr-defined]
            before = ways["loop" if on_loop else "threads"]._value.get()
            moved = _decided(gate, 5, mode="commit")
            assert (moved["decision"], moved["committed"]) == ("allow", True), moved
            assert ways["loop" if on_loop else "threads"]._value.get() == before + 1
            with gate.engine.connect() as conn:
                assert conn.execute(sa.select(releases.c.state).where(releases.c.id == uuid.UUID(rid))
                                    ).scalar_one() == "gated_in"
            small.room()
            assert state() == "gated_in"
        finally:
            other.close()

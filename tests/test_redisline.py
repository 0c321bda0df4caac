"""quaygate/redisline.py against a real Redis: one connection per thread, replies never read by the
wrong caller after a failure, scripts loaded when Redis does not know them; and the cache built on it."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from quaygate.cache import RedisCache
from quaygate.redisline import Line, Pipelined, Script, _Wire
from quaygate.single_use import CLAIMED, CLAIMED_BEFORE


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, socket_timeout=0.2)


def test_a_command_and_a_script_answer_on_the_threads_own_connection(client: redis.Redis) -> None:
    line = Line(client)
    assert line.call("SET", "k", "v") == b"OK"
    assert line.call("GET", "k") == b"v"
    # A script Redis has never seen (a fresh body, so a fresh SHA1): NOSCRIPT, loaded, run.
    script = Script(f"-- {uuid.uuid4()}\nreturn {{redis.call('GET', KEYS[1]), ARGV[1]}}")
    assert client.script_exists(script.sha) == [False]
    assert line.run(script, ["k"], ["x"]) == [b"v", b"x"]
    assert client.script_exists(script.sha) == [True]
    ids = {line.call("CLIENT", "ID") for _ in range(3)}
    assert len(ids) == 1  # the same connection, call after call
    line.close()


def test_each_thread_has_a_connection_of_its_own(client: redis.Redis) -> None:
    line = Line(client)
    seen: list[int] = []

    def ask() -> None:
        seen.append(line.call("CLIENT", "ID"))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen.append(line.call("CLIENT", "ID"))
    assert len(set(seen)) == 5
    line.close()


def test_the_connections_of_ended_threads_are_closed(client: redis.Redis) -> None:
    """The hot pool's threads end after 10 s idle and new ones start with the next burst (review 125's
    mend noticed): each ended thread's connection was kept open until close(), a socket per thread
    lifetime, day after day. They are closed when the next connection is made."""
    line = Line(client)
    ids: list[int] = []

    def ask() -> None:
        ids.append(line.call("CLIENT", "ID"))

    for _ in range(5):  # five bursts, each on a thread that then ends
        t = threading.Thread(target=ask)
        t.start()
        t.join()
    assert len(set(ids)) == 5
    assert line.connections <= 2  # the last ended thread's, and none of the four before it
    assert _gone_from_server(client, ids[:4])  # closed on the server's side too
    ask()  # this thread: the last burst's is closed now
    assert line.connections == 1 and _gone_from_server(client, ids[4:5])
    line.close()


def _gone_from_server(client: redis.Redis, ids: list[int]) -> bool:
    """Whether Redis no longer lists these clients (it learns of a close a moment after it)."""
    deadline = time.monotonic() + 5
    while {int(c["id"]) for c in client.client_list()} & set(ids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_reply_that_came_too_late_is_never_read_as_the_next_callers(client: redis.Redis) -> None:
    """A timeout leaves the late reply on the socket: the connection is dropped (by redis-py on a
    timeout, by the Line on any other interruption), so the next command reads its own reply; kept,
    the next GET would read BLPOP's nil and answer None."""
    line = Line(client)
    line.call("SET", "k", "v")
    with pytest.raises(redis.TimeoutError):
        line.call("BLPOP", "nothing-comes", "0.5")  # Redis answers nil after 0.5 s; we wait 0.2 s
    time.sleep(0.6)  # the nil has arrived by now, on the connection that was dropped
    assert line.call("GET", "k") == b"v"
    line.close()


def test_an_error_reply_keeps_the_connection_in_step(client: redis.Redis) -> None:
    line = Line(client)
    line.call("SET", "word", "abc")
    before = line.call("CLIENT", "ID")
    with pytest.raises(redis.ResponseError):
        line.call("INCR", "word")
    assert line.call("GET", "word") == b"abc"
    assert line.call("CLIENT", "ID") == before
    line.close()


def test_the_cache_on_the_line_keeps_its_promises(redis_url: str) -> None:
    cache = RedisCache(redis_url, prefix=f"t{uuid.uuid4().hex[:6]}:")
    later = time.time() + 60  # an item made after the dataset began (a prefix of its own: its epoch is now)
    assert cache.claim("jti", 5, usable_from=later) == CLAIMED
    assert cache.claim("jti", 5, usable_from=later) == CLAIMED_BEFORE  # single use: the second caller is refused
    cache.set("a", b"1")
    cache.set("b", b"2", 5)
    assert cache.get("a") == b"1"
    assert cache.get_many(["a", "missing", "b"]) == [b"1", None, b"2"]
    cache.put("once", b"1", 5)
    assert cache.take("once") == b"1"
    assert cache.take("once") is None  # taken once
    assert cache.take("a") is None  # what ``put`` did not store is not taken
    # A window of a second, not 0.3 s: the four counts below must fall in it, and four round trips on a
    # loaded machine took up to 0.26 s (eight busy processes on the test's CPU).
    first = time.monotonic()
    assert [cache.incr("n", 1.0) for _ in range(3)] == [1, 2, 3]
    assert cache.incr_peek("n", 1.0, "b") == (4, b"2")
    time.sleep(max(0.0, first + 1.05 - time.monotonic()))
    assert cache.incr("n", 1.0) == 1  # the window started at the first increment, and ended
    cache.delete("b", "missing")
    assert cache.get("b") is None
    assert cache.ping() is True
    cache.close()


def test_arguments_are_packed_as_redis_py_packs_them(client: redis.Redis) -> None:
    """The line packs commands in C (hiredis) where redis-py looks at each argument first: the same
    bytes reach Redis for every type the hot path sends, and what redis-py refuses is refused."""
    line = Line(client)
    assert line._packed is not None  # hiredis is pinned: the C packing is the one in use
    values = ["é ü", b"\x00\xff raw", 7, -3, 2**40]
    for v in values:
        assert line.call("SET", "packed", v) == b"OK"
        client.set("packed-by-redis-py", v)  # redis-py's own packing of the same value
        assert client.get("packed") == client.get("packed-by-redis-py") is not None, v
    assert line.call("GET", "packed") == str(2**40).encode()
    for bad in (True, None):
        with pytest.raises(redis.DataError):
            line.call("SET", "packed", bad)
        with pytest.raises(redis.DataError):
            client.set("packed", bad)  # type: ignore[arg-type]
    assert line.call("GET", "packed") == str(2**40).encode()  # the line stayed in step
    line.close()


# ---- Pipelined: the event loop's calls, sent together ---------------------------------------------



def _on_loop(coro_fn: Any, *pipes: Pipelined) -> Any:
    """Run ``coro_fn()`` on a uvloop of its own thread (a test before may have left a loop running in
    this one: Playwright's sync API does), and close ``pipes`` on that loop however it ends (a loop
    closed with a transport open warns, and the warning, an error under pytest, hangs uvloop)."""
    import uvloop

    out: dict[str, Any] = {}

    async def closing() -> Any:
        try:
            return await coro_fn()
        finally:
            for pipe in pipes:
                pipe.close()

    def run() -> None:
        try:
            out["value"] = uvloop.run(closing())
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_pipelined_calls_of_one_turn_share_a_write_and_each_gets_its_own_reply(
        client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []
    original = _Wire._flush

    def counted(self: _Wire) -> None:
        writes.append(len(self._out))
        original(self)

    monkeypatch.setattr(_Wire, "_flush", counted)
    pipe = Pipelined(client)
    assert pipe.available
    prefix = f"pipe:{uuid.uuid4()}:"

    async def go() -> list[Any]:
        await pipe.call("SET", prefix + "x", "1")
        writes.clear()
        return await asyncio.gather(*(pipe.call("INCRBY", prefix + str(n), n) for n in range(200)))

    got = _on_loop(go, pipe)
    assert got == list(range(200))  # each caller its own reply, in its own order
    assert writes == [200]  # one write for the 200 calls made in one turn
    assert client.get(prefix + "199") == b"199"  # on the client's own database (db from its URL)


def test_pipelined_errors_scripts_timeouts_and_cancellations(client: redis.Redis) -> None:
    pipe = Pipelined(client)  # the client's socket_timeout, 0.2 s
    script = Script(f"-- {uuid.uuid4()}\nreturn ARGV[1]")
    key = f"pipe:{uuid.uuid4()}"

    async def go() -> None:
        # A Redis error goes to its caller alone; the calls around it are answered.
        ok, bad, after = await asyncio.gather(pipe.call("SET", key, "v"), pipe.call("INCR", key), pipe.call("GET", key),
                                              return_exceptions=True)
        assert ok == b"OK" and isinstance(bad, redis.ResponseError) and after == b"v"
        assert await pipe.run(script, [], ["x"]) == b"x"  # NOSCRIPT: loaded, run
        with pytest.raises(redis.DataError):
            await pipe.call("SET", key, None)
        # A caller cancelled while waiting: its reply is read and dropped, the next caller gets its own.
        waiting = asyncio.ensure_future(pipe.call("GET", key))
        await asyncio.sleep(0)
        waiting.cancel()
        assert await pipe.call("ECHO", "mine") == b"mine"
        # A reply not given in time: every call waiting on that connection fails, and the next connects anew.
        first = await pipe.call("CLIENT", "ID")
        slow = asyncio.gather(pipe.call("BLPOP", f"{key}:empty", 1), pipe.call("ECHO", "behind"),
                              return_exceptions=True)
        results = await slow
        assert all(isinstance(r, redis.TimeoutError) for r in results), results
        assert await pipe.call("ECHO", "again") == b"again"
        assert await pipe.call("CLIENT", "ID") != first
        # The connection killed under it: ConnectionError, then a new one.
        victim = await pipe.call("CLIENT", "ID")
        client.client_kill_filter(_id=victim)
        with pytest.raises(redis.ConnectionError):
            await pipe.call("PING")
        assert await pipe.call("PING") == b"PONG"

    _on_loop(go, pipe)


def test_pipelined_is_for_tcp_plain_or_tls_and_refuses_a_wrong_password(redis_url: str) -> None:
    assert not Pipelined(redis.Redis(unix_socket_path="/nonexistent.sock")).available
    assert Pipelined(redis.Redis(ssl=True)).available  # rediss://: TLS, as redis-py sets it up
    assert not Pipelined(redis.Redis(ssl=True, ssl_validate_ocsp=True)).available  # what only redis-py does
    assert not Pipelined(redis.Redis(ssl=True, ssl_cert_reqs="sometimes")).available  # redis-py refuses it
    wrong = Pipelined(redis.Redis.from_url(redis_url.replace("redis://", "redis://:wrong@"), socket_timeout=0.5))

    async def go() -> None:
        with pytest.raises(redis.ConnectionError):
            await wrong.call("PING")

    _on_loop(go, wrong)


def test_pipelined_deadline_holds_when_the_last_caller_of_a_write_is_cancelled(client: redis.Redis) -> None:
    """The timeout covers every call of a write, whoever of them was cancelled: a stalled reply fails
    its caller in time even when the call sent after it in the same write was cancelled."""
    pipe = Pipelined(client)  # timeout 0.2 s
    key = f"pipe:{uuid.uuid4()}:empty"

    async def go() -> None:
        await pipe.call("PING")
        stalled = asyncio.ensure_future(pipe.call("BLPOP", key, 2))
        last = asyncio.ensure_future(pipe.call("ECHO", "last"))
        await asyncio.sleep(0)  # both sent, in one write
        last.cancel()
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            await stalled
        assert time.monotonic() - started < 1.5  # the 0.2 s deadline, not BLPOP's own 2 s

    _on_loop(go, pipe)


def test_pipelined_connects_once_for_callers_arriving_together_and_survives_a_cancelled_one(
        client: redis.Redis) -> None:
    pipe = Pipelined(client)

    async def go() -> None:
        first = asyncio.ensure_future(pipe.call("CLIENT", "ID"))  # starts the connection, then gives up
        await asyncio.sleep(0)
        first.cancel()
        ids = await asyncio.gather(*(pipe.call("CLIENT", "ID") for _ in range(20)))
        assert len(set(ids)) == 1 and len(pipe._conns) == 1  # one connection, shared

    _on_loop(go, pipe)


def test_pipelined_closed_while_connecting_keeps_no_connection_open(client: redis.Redis) -> None:
    """``close`` while a connect is under way (an app stopping as a request arrives): the connection,
    once made, is closed at once and its callers fail (the breaker then decides from PostgreSQL), so
    no transport outlives the close; the next call connects anew."""
    pipe = Pipelined(client)

    async def go() -> None:
        call = asyncio.ensure_future(pipe.call("PING"))
        await asyncio.sleep(0)  # the call started the connect
        assert pipe._connecting and not pipe._conns
        pipe.close()
        with pytest.raises(redis.ConnectionError):
            await call
        assert pipe._conns == {}
        assert await pipe.call("PING") == b"PONG"
        assert len(pipe._conns) == 1
        # A call made after a close, while the connect begun before it is still under way, never waits
        # on that connect (which fails): it connects anew.
        pipe.close()
        early = asyncio.ensure_future(pipe.call("PING"))
        await asyncio.sleep(0)
        pipe.close()
        assert await pipe.call("PING") == b"PONG"
        with pytest.raises(redis.ConnectionError):
            await early
        assert len(pipe._conns) == 1 and not pipe._connecting

    _on_loop(go, pipe)


def test_pipelined_authenticates_as_redis_py_does(tmp_path: Any) -> None:
    """A password, or a user and a password (ACL), from the client's URL; a wrong one is refused."""
    from tests import processes

    port = processes.free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--requirepass", "s3cret", "--user", "gate", "on", ">gatepass", "~*", "+@all"]
    proc = processes.start(argv, cwd=tmp_path, log=tmp_path / "redis.log", ready=processes.listens(port),
                           what="redis-server", timeout=5)
    try:
        for url in (f"redis://:s3cret@127.0.0.1:{port}/3", f"redis://gate:gatepass@127.0.0.1:{port}/3"):
            sync = redis.Redis.from_url(url, socket_timeout=0.5)
            pipe = Pipelined(sync)

            async def go(pipe: Pipelined = pipe) -> Any:
                return await pipe.call("SET", "who", "me")

            assert _on_loop(go, pipe) == b"OK"
            assert sync.get("who") == b"me"  # on database 3, as the URL says
            sync.close()
    finally:
        proc.kill()
        proc.wait()


def test_pipelined_over_tls_checks_the_server_as_redis_py_does(tmp_path: Any) -> None:
    """A ``rediss://`` URL (a managed Redis is mostly reached so): the pipelined calls go over TLS with
    the client's own settings. The server's certificate is checked against the URL's CA, and refused
    without it; ``ssl_cert_reqs=none`` skips the check, as redis-py does; a client certificate is sent
    to a server that asks for one (mutual TLS), and without it the server refuses the connection."""
    from tests import processes
    from tests.gate_tls import make_cert

    ca = make_cert("test redis CA", None, tmp_path / "ca")
    make_cert("redis server", ca, tmp_path / "server", san=True)
    make_cert("gate service", ca, tmp_path / "client")
    port = processes.free_port()
    argv = ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--tls-cert-file", str(tmp_path / "server.pem"),
            "--tls-key-file", str(tmp_path / "server.key"), "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
            "--tls-auth-clients", "yes"]
    proc = processes.start(argv, cwd=tmp_path, log=tmp_path / "redis.log", ready=processes.listens(port),
                           what="redis-server with TLS", timeout=5)
    base = f"rediss://127.0.0.1:{port}/2?ssl_certfile={tmp_path / 'client.pem'}&ssl_keyfile={tmp_path / 'client.key'}"

    def outcome(url: str) -> Any:
        sync = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        pipe = Pipelined(sync)
        assert pipe.available

        async def go() -> Any:
            try:
                return await pipe.call("SET", "over", "tls")
            except redis.ConnectionError as exc:
                return exc

        try:
            return _on_loop(go, pipe), sync
        finally:
            sync.close()

    try:
        got, sync = outcome(f"{base}&ssl_ca_certs={tmp_path / 'ca.pem'}")
        assert got == b"OK"
        assert sync.get("over") == b"tls"  # on database 2, as the URL says, through redis-py's own TLS
        refused, _ = outcome(base)  # the system's CAs only: our test CA is not among them
        assert isinstance(refused, redis.ConnectionError) and "CERTIFICATE_VERIFY_FAILED" in str(refused), refused
        unchecked, _ = outcome(f"{base}&ssl_cert_reqs=none")
        assert unchecked == b"OK"
        anonymous, _ = outcome(f"rediss://127.0.0.1:{port}/2?ssl_ca_certs={tmp_path / 'ca.pem'}")
        assert isinstance(anonymous, redis.ConnectionError), anonymous  # no client certificate: refused
    finally:
        proc.kill()
        proc.wait()

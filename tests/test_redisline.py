"""quaygate/redisline.py against a real Redis: one connection per thread, replies never read by the
wrong caller after a failure, scripts loaded when Redis does not know them; and the cache built on it."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from quaygate.cache import RedisCache
from quaygate.redisline import Line, Script


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
    assert cache.claim("jti", 5) is True
    assert cache.claim("jti", 5) is False  # single use: the second caller is refused
    cache.set("a", b"1")
    cache.set("b", b"2", 5)
    assert cache.get("a") == b"1"
    assert cache.get_many(["a", "missing", "b"]) == [b"1", None, b"2"]
    assert cache.take("a") == b"1"
    assert cache.take("a") is None  # taken once
    assert [cache.incr("n", 0.3) for _ in range(3)] == [1, 2, 3]
    assert cache.incr_peek("n", 0.3, "b") == (4, b"2")
    time.sleep(0.35)
    assert cache.incr("n", 0.3) == 1  # the window started at the first increment, and ended
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

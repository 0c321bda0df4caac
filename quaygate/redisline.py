"""Redis calls on the hot paths, each on a connection of its own thread (issue 5, "Hot path").

redis-py's ``Redis.execute_command`` takes a connection from the pool and gives it back on every call:
a fork check, two lock round trips, and a poll of the socket for unread data (one more system call).
On this machine that costs as much again as the round trip itself (about 80 microseconds of CPU for a
GET against 45 on a connection held). A ``Line`` keeps one connection per thread (the event loop's
thread, each worker thread) and sends on it directly, with redis-py's own connection class, parser
and settings (timeouts, health checks) taken from the client it is made from.

A connection is dropped on any failure between sending a command and reading its reply (a timeout,
a reset, a cancellation), so no reply is ever read by the wrong caller; the next call connects anew.
A reply that is a Redis error (``ResponseError``) leaves the connection in step and keeps it.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import DataError, NoScriptError, OutOfMemoryError, ResponseError

try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is pinned in pyproject.toml
    _hiredis_pack = None


class Script:
    """A Lua script called by its SHA1 (EVALSHA), loaded on the first NOSCRIPT (a Redis restarted,
    or flushed with SCRIPT FLUSH)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class Line:
    def __init__(self, client: redis.Redis, *, greeting: Callable[[], tuple[Any, ...] | None] | None = None,
                 greeted: Callable[[Any], None] | None = None) -> None:
        """``greeting``: the command sent on every connection made, before its first call (quaygate/dataset.py
        ``greeting``); an error reply to it fails the call that connected. ``greeted``: given its reply."""
        pool = client.connection_pool
        self._cls = pool.connection_class
        self._kwargs = dict(pool.connection_kwargs)
        if greeting is not None:  # on each connect redis-py makes, a reconnect included
            self._kwargs["redis_connect_func"] = _greeted(self._kwargs.get("redis_connect_func"), greeting, greeted)
        # redis-py packs a command by looking at every argument in Python before hiredis packs it in C;
        # the gate's scripts take twenty-odd arguments. With hiredis and the default UTF-8, it is packed
        # in C alone (a bool or None refused as redis-py refuses it: DataError).
        utf8 = self._kwargs.get("encoding", "utf-8").lower().replace("_", "-") in ("utf-8", "utf8") and \
            self._kwargs.get("encoding_errors", "strict") == "strict"
        self._packed = _hiredis_pack if (_hiredis_pack is not None and utf8) else None
        self._local = threading.local()
        self._open: dict[Any, threading.Thread] = {}  # each connection made, and the thread it serves
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._cls(**self._kwargs)
            self._local.conn = conn
            with self._lock:
                # The threads that used a Line end (the hot pool's after 10 s idle, quaygate/threads.py),
                # and a new one makes a new connection: the ended threads' connections are closed here, or
                # every burst of traffic after a quiet spell would leave its sockets open on both ends, day
                # after day, until Redis refused clients (maxclients). Counted at each new connection: rare.
                ended = [c for c, t in self._open.items() if not t.is_alive()]
                for c in ended:
                    del self._open[c]
                self._open[conn] = threading.current_thread()
            for c in ended:
                c.disconnect()
        return conn

    @property
    def connections(self) -> int:
        """How many connections this Line holds open (or may): one per live thread that used it, and those
        of threads ended since the last connection was made."""
        with self._lock:
            return len(self._open)

    def call(self, *args: Any) -> Any:
        """One command, one round trip: its reply (a Redis error reply raises ResponseError)."""
        packed = None
        if self._packed is not None:
            try:
                packed = (self._packed(args),)
            except TypeError as exc:  # nothing sent: the connection stays in step
                raise DataError(str(exc)) from None
        conn = self._connection()
        try:
            if packed is None:
                conn.send_command(*args)
            else:
                conn.send_packed_command(packed)
            return conn.read_response()
        except ResponseError:
            raise  # a reply: the connection is in step
        except BaseException:
            conn.disconnect()  # whatever was sent may still answer: never read it as the next reply
            raise

    def run(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """EVALSHA, loading the script once if Redis does not know it."""
        try:
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.call("SCRIPT", "LOAD", script.source)
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)

    def close(self) -> None:
        with self._lock:
            opened, self._open = self._open, {}
        for conn in opened:
            conn.disconnect()


def _greeted(connect: Callable[[Any], None] | None, greeting: Callable[[], tuple[Any, ...] | None],
             greeted: Callable[[Any], None] | None) -> Callable[[Any], None]:
    """redis-py's ``redis_connect_func``: its own greeting (or ``connect``'s), then ``greeting``'s command."""
    def greet(conn: Any) -> None:
        if connect is None:
            conn.on_connect()
        else:
            connect(conn)
        command = greeting()
        if command is not None:
            conn.send_command(*command, check_health=False)
            reply = conn.read_response()  # an error reply raises: redis-py's connect drops the connection
            if greeted is not None:
                greeted(reply)

    return greet


# ---- the event loop's calls, pipelined ------------------------------------------------------------


class Pipelined:
    """Redis calls made on an event loop, sent together: every call made in one turn of the loop goes
    out in one write on the loop's own connection, and the replies, which Redis gives in order, are
    handed to their callers in that order (``await pipelined.run(script, keys, args)``).

    A call made with ``Line`` on the loop holds the loop for its round trip and costs two system calls
    of its own; here the loop serves other requests meanwhile, and the calls of concurrent requests
    share their system calls and Redis's (measured: about 60 microseconds of CPU per gate keep sent
    alone, about 10 pipelined; loadtests/RESULTS.md, fifteenth session). Replies are RESP2: no HELLO is
    sent, so Redis pushes nothing unasked on this connection.

    The same safety as ``Line``: a connection that failed or left a reply unread past ``timeout`` is
    dropped, with every call waiting on it failed (``redis.ConnectionError``, ``redis.TimeoutError``),
    so no reply is ever handed to the wrong caller; the next call connects anew. A caller cancelled
    while waiting (a gate that hung up) leaves its reply to be read and dropped in its turn. A Redis
    error reply raises ``ResponseError`` (``NoScriptError``, ``OutOfMemoryError``) to its caller alone.

    For a TCP connection, plain or TLS (redis-py's ``Connection`` or ``SSLConnection``, a ``rediss://``
    URL: host, port, db, username, password, and the TLS settings redis-py reads, which make the same
    ``ssl.SSLContext`` here: certificate checks, host name, CA, client certificate). ``available`` is
    False otherwise (a Unix socket, Sentinel, OCSP checks, a credential provider), and the caller uses
    ``Line``. A managed Redis is mostly reached over TLS: without this, every gate check would wait for
    a worker thread."""

    def __init__(self, client: redis.Redis, *, greeting: Callable[[], tuple[Any, ...] | None] | None = None,
                 greeted: Callable[[Any], None] | None = None) -> None:
        """``greeting`` and ``greeted``: as ``Line``'s, on every connection made, after AUTH and SELECT."""
        pool = client.connection_pool
        kw = pool.connection_kwargs
        self._greeting, self._greeted = greeting, greeted
        tls = pool.connection_class is redis.connection.SSLConnection
        self._tls = _tls_context(kw) if tls else None
        self.available = ((pool.connection_class is redis.connection.Connection or self._tls is not None)
                          and _hiredis_pack is not None and kw.get("credential_provider") is None)
        self._host, self._port = kw.get("host", "localhost"), int(kw.get("port", 6379))
        self._db = int(kw.get("db", 0) or 0)
        self._username, self._password = kw.get("username"), kw.get("password")
        self._timeout = float(kw.get("socket_timeout") or 5.0)
        self._connect_timeout = float(kw.get("socket_connect_timeout") or self._timeout)
        self._conns: dict[int, tuple[Any, _Wire]] = {}  # id(loop) -> (loop, its connection)
        self._connecting: dict[int, tuple[Any, asyncio.Task[_Wire]]] = {}
        self._closes = 0  # times ``close`` was called: a connect begun before one is never kept
        self._lock = threading.Lock()  # ``close`` may come from another thread than the loop's

    async def call(self, *args: Any) -> Any:
        try:
            packed = _hiredis_pack(args)  # type: ignore[misc]
        except TypeError as exc:  # nothing sent
            raise DataError(str(exc)) from None
        try:
            wire = await self._wire()
            reply = await wire.send(packed)
        except redis.RedisError:
            raise
        except (OSError, RuntimeError) as exc:  # a transport that failed under us: a connection error
            raise redis.ConnectionError(f"Redis connection failed: {exc}") from exc
        if isinstance(reply, _ReplyError):
            message = str(reply)
            # As redis-py names them: NOSCRIPT (the script to load first), OOM (a full Redis refused a write)
            raise (NoScriptError if message.startswith("NOSCRIPT") else
                   OutOfMemoryError if message.startswith("OOM ") else ResponseError)(message)
        return reply

    async def run(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """EVALSHA, loading the script once if Redis does not know it."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.call("SCRIPT", "LOAD", script.source)
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _wire(self) -> _Wire:
        loop = asyncio.get_running_loop()
        found = self._conns.get(id(loop))
        if found is not None and found[0] is loop and found[1].open:
            return found[1]
        connecting = self._connecting.get(id(loop))
        if connecting is None or connecting[0] is not loop:
            # One connection per loop, however many ask at once; a task of its own, so that a caller
            # cancelled meanwhile cancels only its own wait, never the others' connection.
            task = loop.create_task(self._connect(loop, self._closes))
            connecting = self._connecting[id(loop)] = (loop, task)
            task.add_done_callback(lambda done: self._connected(loop, done))
        return await asyncio.shield(connecting[1])

    def _connected(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[_Wire]) -> None:
        connecting = self._connecting  # read once: a close may replace it meanwhile
        found = connecting.get(id(loop))
        if found is not None and found[1] is task:  # not a connect begun after a close since
            connecting.pop(id(loop), None)
        if not task.cancelled():
            task.exception()  # retrieved here too: every caller may have been cancelled meanwhile

    async def _connect(self, loop: asyncio.AbstractEventLoop, closes: int) -> _Wire:
        for key, (other, old) in list(self._conns.items()):  # this loop's dead one, loops closed since
            if other is loop or other.is_closed():
                self._conns.pop(key, None)
                if other is loop:
                    old.close()
        try:
            _, wire = await asyncio.wait_for(
                loop.create_connection(lambda: _Wire(loop, self._timeout), self._host, self._port,
                                       ssl=self._tls, server_hostname=self._host if self._tls else None),
                self._connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise redis.ConnectionError(f"Error connecting to {self._host}:{self._port}: {exc}") from exc
        hello: list[Any] = []
        if self._username or self._password:  # as redis-py's connection decides it
            hello.append(("AUTH", self._username, self._password or "") if self._username
                         else ("AUTH", self._password))
        if self._db:
            hello.append(("SELECT", self._db))
        greeting = self._greeting() if self._greeting is not None else None
        if greeting is not None:
            hello.append(greeting)
        try:
            for command in hello:
                reply = await wire.send(_hiredis_pack(command))  # type: ignore[misc]
                if isinstance(reply, _ReplyError):
                    raise redis.ConnectionError(f"Redis refused {command[0]}: {reply}")
            if greeting is not None and self._greeted is not None:
                self._greeted(reply)
        except BaseException:
            wire.close()  # never left open, however the greeting ended
            raise
        with self._lock:  # against a ``close`` from another thread between the look and the keep
            kept = closes == self._closes
            if kept:
                self._conns[id(loop)] = (loop, wire)
        if not kept:  # closed while connecting (the app stops): nobody would close it
            wire.close()
            raise redis.ConnectionError("Redis connection closed")
        return wire

    def close(self) -> None:
        """Close every loop's connection: at once on the loop running here or on one not running, else on
        its own loop (a loop must not close with it open: uvloop then warns of an unclosed transport).
        A connect still under way is closed as soon as it is made, and its callers fail."""
        with self._lock:  # one step, against a connect keeping its connection on another thread
            self._closes += 1
            self._connecting = {}  # a call after this connects anew, never waits on a connect it would fail
            conns, self._conns = self._conns, {}
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, wire in conns.values():
            if loop.is_closed():
                continue
            if loop is running or not loop.is_running():
                wire.close()
                continue
            try:
                loop.call_soon_threadsafe(wire.close)
            except RuntimeError:  # the loop closed meanwhile: its transport went with it
                pass


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _tls_context(kw: dict[str, Any]) -> ssl.SSLContext | None:
    """The TLS context redis-py's ``SSLConnection`` builds from the same settings (its
    ``_wrap_socket_with_ssl``, redis 8.1), so a call pipelined here checks the server as a call on the
    client does; None for what only redis-py does (OCSP), or settings it would refuse."""
    if kw.get("ssl_validate_ocsp") or kw.get("ssl_validate_ocsp_stapled"):
        return None
    reqs = kw.get("ssl_cert_reqs", "required")
    if reqs is None:
        reqs = ssl.CERT_NONE
    elif isinstance(reqs, str):
        if reqs not in _CERT_REQS:
            return None
        reqs = _CERT_REQS[reqs]
    context = ssl.create_default_context()
    context.check_hostname = bool(kw.get("ssl_check_hostname", True)) and reqs != ssl.CERT_NONE
    context.verify_mode = reqs
    for flag in kw.get("ssl_include_verify_flags") or ():
        context.verify_flags |= flag
    for flag in kw.get("ssl_exclude_verify_flags") or ():
        context.verify_flags &= ~flag
    if kw.get("ssl_certfile") or kw.get("ssl_keyfile"):
        context.load_cert_chain(certfile=kw.get("ssl_certfile"), keyfile=kw.get("ssl_keyfile"),
                                password=kw.get("ssl_password"))
    if any(kw.get(k) is not None for k in ("ssl_ca_certs", "ssl_ca_path", "ssl_ca_data")):
        context.load_verify_locations(cafile=kw.get("ssl_ca_certs"), capath=kw.get("ssl_ca_path"),
                                      cadata=kw.get("ssl_ca_data"))
    if kw.get("ssl_min_version") is not None:
        context.minimum_version = kw["ssl_min_version"]
    if kw.get("ssl_ciphers"):
        context.set_ciphers(kw["ssl_ciphers"])
    return context


try:
    from hiredis import Reader as _Reader
    from hiredis import ReplyError as _ReplyError
except ImportError:  # pragma: no cover - hiredis is pinned in pyproject.toml
    _Reader = _ReplyError = None  # type: ignore[assignment,misc]


class _Wire(asyncio.Protocol):
    """One connection of ``Pipelined``: what is sent in one turn of the loop goes in one write; replies
    go to the waiting futures in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = _Reader()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._sent = 0  # calls sent on this connection, and answered: replies come in order
        self._answered = 0
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.open = True

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if not self.open:
            raise redis.ConnectionError("Redis connection closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(packed)
        self._waiting.append(future)
        self._sent += 1
        return future

    def _flush(self) -> None:
        if not self.open or not self._out or self._transport is None:
            return
        if self._transport.is_closing():  # Redis closed it, and connection_lost is still to come
            self._fail(redis.ConnectionError("Connection to Redis closed"))
            return
        data = b"".join(self._out)
        self._out.clear()
        try:
            self._transport.write(data)
        except Exception as exc:  # noqa: BLE001 - a transport that failed: every caller waiting learns it
            self._fail(redis.ConnectionError(f"Writing to Redis failed: {exc}"))
            return
        # Every call of this write answered in time (counted, so a caller cancelled meanwhile changes
        # nothing), or the connection goes.
        self._loop.call_later(self._timeout, self._deadline, self._sent)

    def _deadline(self, sent: int) -> None:
        if self.open and self._answered < sent:
            self._fail(redis.TimeoutError("Timeout reading from Redis"))

    def data_received(self, data: bytes) -> None:
        try:
            self._reader.feed(data)
            while True:
                reply = self._reader.gets()
                if reply is False:
                    return
                future = self._waiting.popleft()
                self._answered += 1
                if not future.done():  # a caller cancelled meanwhile: its reply is dropped here
                    future.set_result(reply)
        except Exception as exc:  # noqa: BLE001 - a protocol error or a reply nobody waited for: drop it all
            self._fail(redis.ConnectionError(f"Redis connection out of step: {exc}"))

    def eof_received(self) -> bool:
        self._fail(redis.ConnectionError("Redis closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(redis.ConnectionError(f"Connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, error: Exception) -> None:
        self.open = False
        waiting, self._waiting = self._waiting, collections.deque()
        self._out.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._fail(redis.ConnectionError("Redis connection closed"))

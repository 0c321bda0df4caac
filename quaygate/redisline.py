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

import hashlib
import threading
from typing import Any

import redis
from redis.exceptions import DataError, NoScriptError, ResponseError

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
    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._cls = pool.connection_class
        self._kwargs = dict(pool.connection_kwargs)
        # redis-py packs a command by looking at every argument in Python before hiredis packs it in C;
        # the gate's scripts take twenty-odd arguments. With hiredis and the default UTF-8, it is packed
        # in C alone (a bool or None refused as redis-py refuses it: DataError).
        utf8 = self._kwargs.get("encoding", "utf-8").lower().replace("_", "-") in ("utf-8", "utf8") and \
            self._kwargs.get("encoding_errors", "strict") == "strict"
        self._packed = _hiredis_pack if (_hiredis_pack is not None and utf8) else None
        self._local = threading.local()
        self._open: set[Any] = set()
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._cls(**self._kwargs)
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
        return conn

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
            opened, self._open = self._open, set()
        for conn in opened:
            conn.disconnect()

"""One server per database when there is no shared cache (the embedded default).

Without Redis, each server process keeps its own in-process cache (quaygate/cache.py), and with it
the claims that make things single-use: a DPoP proof's or a client assertion's ``jti``, a passkey
challenge, a gate ``request_id``. A second server process on the same database would keep claims of
its own, so a proof used at one could be replayed at the other, and a token revoked through one
would pass at the other until it reads the revocation. ``quaygate serve`` refuses ``--workers``
above 1 without Redis; this refuses every other way to get there: ``uvicorn --workers N`` by hand,
two ``quaygate serve`` on one database behind a load balancer, a replica started by mistake without
``QUAYGATE_REDIS_URL`` next to replicas that have it.

Every server holds the database's serving lease for as long as it serves: a server without Redis
holds it alone (exclusive), servers that share Redis hold it together (shared). So a server without
Redis does not start while any other server serves the database, and no server starts while one
without Redis serves it.

- PostgreSQL: a session advisory lock (``pg_try_advisory_lock`` or ``..._shared``), taken without
  waiting, on a connection of its own outside the pool. It ends with the session: a stopped or
  killed process, a lost connection. It needs a real session: not through a pooler in transaction
  mode (PgBouncer), where a session lock stays on a server connection others use.
- SQLite: ``flock`` (exclusive or shared) on a file beside the database, released by the kernel when
  the process ends, however it ends.

A watchdog looks at the lease every few seconds. A PostgreSQL session that ended (the database
restarted, the connection was dropped or terminated) is replaced and the lock taken again; a SQLite
lock file that was removed or replaced is noticed. When the lease cannot be had again because
another server took it meanwhile, the lease is lost: ``on_lost`` is called (the app stops serving).
A database away when it looks is looked at again at every later step, never given up for that. A
session this server lost at its end (a network cut) while the database kept it, and the lock with
it, is recognised by its pid and start and ended, so the lease is taken again. Both ends of the
lease's connection keep TCP keepalives and a user timeout: a silent peer is noticed in about half a
minute, not when TCP gives up.

A database nobody else can open (SQLite in memory) needs no lease.

What servers that share Redis keep there outlives them: the gates' copies of badges, rights, bans and
policies (release_service/adapters/gate_facts.py), clients, key sets. A change is told to those copies
only by a process that has Redis itself; one without (a CLI command run from a shell that lacks
``QUAYGATE_REDIS_URL``) committed it and told no one, and the gates went on deciding on the old copy
(review 169, finding 1). So the first server that takes the lease shared marks the database as served with
Redis (``dataset_identity.redis_since``), and from then on every process built without Redis refuses to
start (``refuse_without_redis``, in ``Container.build``: every CLI command and server), saying which
variable it lacks. The mark stays while no server runs (Redis keeps the copies); ``quaygate redis
release`` clears it, only while no server serves the database (``release_redis``: it holds the lease
alone meanwhile). Servers with Redis started later mark it again, and every one of them makes the gates
read their facts again at its start (``workers.start_gate_facts``): nothing changed meanwhile stays
unseen. Limit: the mark is read once, when a process starts; a command without Redis started before the
first server with Redis took the lease may still commit after that server's start.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .schema import dataset_identity

log = logging.getLogger("quaygate.solo")

LEASE_LOCK_ID = 0x5147_534F_4C4F  # pg advisory lock key ("QGSOLO")
WATCH_EVERY = 5.0  # seconds between looks at a held lease
RELEASE_WAIT = 3.0  # seconds a release waits for the database before it lets the unlock finish alone


class AnotherServer(RuntimeError):
    """Another server process serves this database in a way this one cannot serve beside."""


class NeedsRedis(ValueError):
    """The database is served with Redis (``served_with_redis``) and this process has none: plain, exit 2
    on the command line (quaygate.cli ``main``)."""


def refusal(where: str, *, shared: bool) -> str:
    if shared:
        return (f"a quaygate server without Redis already serves {where}: it keeps its single-use claims "
                "(DPoP proofs, client assertions, passkey challenges, gate request ids) to itself, so a claim "
                "used at one server could be replayed at the other. Stop it, or give it QUAYGATE_REDIS_URL.")
    return (f"another quaygate server already serves {where}, and this one has no Redis. Each would keep its "
            "own single-use claims (DPoP proofs, client assertions, passkey challenges, gate request ids), so "
            "a claim used at one could be replayed at the other. Set QUAYGATE_REDIS_URL (the same for every "
            "server) to serve it from several processes, or stop the other server.")


class SoloLease:
    """Held until ``close()``; see ``hold``. ``lost`` once the watchdog found it taken by another."""

    def __init__(self, take: Callable[[], Any] | None = None, *, still_held: Callable[[Any], bool] | None = None,
                 release: Callable[[Any], None] | None = None, on_lost: Callable[[str], None] | None = None,
                 where: str = "", watch_every: float = WATCH_EVERY) -> None:
        self._take, self._still_held, self._release = take, still_held, release
        self._on_lost = on_lost
        self._where = where
        self._lock = threading.Lock()  # the handle: the watchdog's and ``close``'s
        self._handle = take() if take is not None else None  # AnotherServer, at once, when refused
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._handle is not None and still_held is not None and watch_every > 0:
            self._thread = threading.Thread(target=self._watch, args=(watch_every,), name="serving-lease",
                                            daemon=True)
            self._thread.start()

    def check(self) -> bool:
        """Look at the lease now (the watchdog's one step): True while held, or while it cannot be
        looked at (the database away: taken again at a later step, never given up for that)."""
        if self._take is None or self._still_held is None or self.lost or self._stop.is_set():
            return not self.lost
        handle = self._handle
        if handle is not None and self._still_held(handle):
            return True
        self._drop()
        if self._stop.is_set():  # closed while it looked: nothing taken again
            return True
        try:
            handle = self._take()
        except AnotherServer as exc:
            self.lost = True
            log.error("quaygate.serving_lease.lost", extra={"fields": {"database": self._where,
                                                                         "reason": str(exc)}})
            if self._on_lost is not None:
                self._on_lost(str(exc))
            return False
        except Exception:  # noqa: BLE001 - the database away (restarting): look again next time
            log.warning("quaygate.serving_lease.unchecked", exc_info=True,
                        extra={"fields": {"database": self._where}})
            return True
        with self._lock:  # kept only if not closed meanwhile, in one step with ``close``'s stop
            kept = not self._stop.is_set()
            if kept:
                self._handle = handle
        if not kept:  # closed while it was taken (close's join gave up on this step): let go at once
            self._let_go(handle)
            return True
        log.warning("quaygate.serving_lease.taken_again", extra={"fields": {"database": self._where}})
        return True

    def _watch(self, every: float) -> None:
        while not self._stop.wait(every):
            if not self.check():
                return

    def _drop(self) -> None:
        with self._lock:  # one caller gets the handle: never released twice (a file descriptor reused)
            handle, self._handle = self._handle, None
        self._let_go(handle)

    def _let_go(self, handle: Any) -> None:
        if handle is not None and self._release is not None:
            try:
                self._release(handle)
            except Exception:  # noqa: BLE001 - already gone with its connection or file
                log.debug("quaygate.serving_lease.release_failed", exc_info=True)

    def close(self) -> None:
        with self._lock:
            self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._drop()


def hold(engine: sa.Engine, *, shared: bool = False, on_lost: Callable[[str], None] | None = None,
         watch_every: float = WATCH_EVERY) -> SoloLease:
    """Take this database's serving lease (``shared`` for servers that share Redis), or raise
    ``AnotherServer`` at once (never waits). Taken ``shared``, the database is served with Redis from then
    on (``served_with_redis``)."""
    where = _where(engine)
    take: Callable[[], Any]
    still_held: Callable[[Any], bool]
    release: Callable[[Any], None]
    if engine.dialect.name == "postgresql":
        mine: dict[str, Any] = {}  # the session the lease was last taken on: its pid and start
        take = lambda: _take_postgresql(engine, shared, where, mine)  # noqa: E731
        still_held, release = _session_alive, lambda raw: _release_postgresql(raw, shared)
    elif engine.dialect.name == "sqlite":
        if _in_memory(engine):
            return SoloLease()
        path = Path(str(engine.url.database)).resolve()
        lock = path.with_name(path.name + ".serving")
        take = lambda: _take_sqlite(lock, shared, where)  # noqa: E731
        still_held, release = (lambda fd: _same_file(lock, fd)), os.close
    else:
        raise ValueError(f"no serving lease for {engine.dialect.name}")
    return SoloLease(_marking(engine, take, release) if shared else take, still_held=still_held, release=release,
                     on_lost=on_lost, where=where, watch_every=watch_every)


def _marking(engine: sa.Engine, take: Callable[[], Any], release: Callable[[Any], None]) -> Callable[[], Any]:
    """``take``, then the database marked served with Redis, every time the shared lease is taken: at start
    and when the watchdog takes it again. Between a lost session and the watchdog's next step no session
    holds the lease, and ``quaygate redis release`` may clear the mark then (review 175, finding 3: taken
    again unmarked, the database let processes without Redis in while servers with Redis served it)."""
    def taken() -> Any:
        handle = take()
        try:
            _mark_served_with_redis(engine)
        except BaseException:
            release(handle)
            raise
        return handle

    return taken


def _in_memory(engine: sa.Engine) -> bool:
    database = engine.url.database
    return engine.dialect.name == "sqlite" and (not database or database == ":memory:"
                                                or database.startswith("file::memory:"))


def _where(engine: sa.Engine) -> str:
    if engine.dialect.name == "sqlite":
        return f"SQLite database {str(Path(str(engine.url.database)).resolve())!r}"
    return f"PostgreSQL database {engine.url.database!r}"


def served_with_redis(engine: sa.Engine) -> datetime | None:
    """Since when (UTC) servers that share Redis serve this database (the first of them to take the lease), or
    None: never, or released since (``release_redis``). None too on a database not migrated yet."""
    try:
        with engine.connect() as conn:
            since: datetime | None = conn.execute(sa.select(dataset_identity.c.redis_since)).scalar()
    except sa.exc.DBAPIError as exc:
        if _not_there(exc):
            return None
        raise
    return since


def refuse_without_redis(engine: sa.Engine) -> None:
    """``NeedsRedis`` on a database served with Redis: for a process without QUAYGATE_REDIS_URL, before it
    does anything (``Container.build``)."""
    since = served_with_redis(engine)
    if since is None:
        return
    raise NeedsRedis(
        f"{_where(engine)} is served with Redis (since {since:%Y-%m-%d %H:%M} UTC): its servers keep copies there of "
        "what the gates decide on (badges, rights, bans, policies) and of clients and keys, and a change made "
        "without Redis would not reach them. QUAYGATE_REDIS_URL is not set: set it to the servers' Redis; "
        "nothing was done. If no server of this database uses Redis any more, stop them all and run "
        "`quaygate redis release` once.")


def release_redis(engine: sa.Engine) -> datetime | None:
    """The database is no longer served with Redis (``served_with_redis`` None): processes without Redis
    open it again. Only while no server serves it: the lease is held alone meanwhile, else
    ``AnotherServer``. What it was marked since, or None."""
    lease = hold(engine, watch_every=0)
    try:
        since = served_with_redis(engine)
        if since is not None:
            with engine.begin() as conn:
                conn.execute(dataset_identity.update().values(redis_since=None))
        return since
    finally:
        lease.close()


def _mark_served_with_redis(engine: sa.Engine) -> None:
    """The database is served with Redis from now on (the lease taken shared), if it is not already."""
    from .identity_of_dataset import dataset_id

    dataset_id(engine)  # its one row, made if missing
    with engine.begin() as conn:
        conn.execute(dataset_identity.update().where(dataset_identity.c.redis_since.is_(None))
                     .values(redis_since=datetime.now(UTC)))


def _not_there(exc: sa.exc.DBAPIError) -> bool:
    """The table or its column does not exist yet (a database not migrated to 0035)."""
    if getattr(exc.orig, "sqlstate", None) in ("42P01", "42703"):  # undefined table, undefined column
        return True
    return str(exc.orig).startswith(("no such table", "no such column"))


_HOLDERS = ("SELECT l.pid, a.backend_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database()) AND ((l.classid::bigint << 32) | l.objid::bigint) = %s")


def _take_postgresql(engine: sa.Engine, shared: bool, where: str, mine: dict[str, Any]) -> Any:
    """The lock on a session of its own. ``mine``: the session it was taken on last (pid, start), filled
    in here. When that session still holds the lock though this end lost it (a network cut: the
    connection failed here, the backend lives on until TCP keepalive gives up, hours), the lease would
    be refused by this server's own past and the server would stop: that session, and only it, is
    ended, and the lock taken again."""
    raw = engine.raw_connection()
    raw.detach()  # out of the pool: the lease lives and dies with this one session
    conn = raw.dbapi_connection
    fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    try:
        conn.autocommit = True  # no transaction left open: idle-in-transaction timeouts do not end the lease
        _keep_alive(conn)
        with conn.cursor() as cur:
            cur.execute(f"SELECT {fn}(%s)", (LEASE_LOCK_ID,))
            taken = bool(cur.fetchone()[0])  # type: ignore[index]
            old = mine.get("session")
            if not taken and old is not None:
                cur.execute(_HOLDERS, (LEASE_LOCK_ID,))
                if tuple(old) in {tuple(r) for r in cur.fetchall()}:
                    log.warning("quaygate.serving_lease.own_session_ended", extra={"fields": {
                        "database": where, "pid": old[0]}})
                    cur.execute("SELECT pg_terminate_backend(%s, 5000)", (old[0],))
                    cur.execute(f"SELECT {fn}(%s)", (LEASE_LOCK_ID,))
                    taken = bool(cur.fetchone()[0])  # type: ignore[index]
            if not taken:
                raise AnotherServer(refusal(where, shared=shared))
            cur.execute("SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
            mine["session"] = tuple(cur.fetchone())  # type: ignore[arg-type]
    except BaseException:
        raw.close()
        raise
    return raw  # _release_postgresql unlocks it; a session that ends (however) ends the lock with it


# A silent peer (a host gone, a network cut) is noticed within about half a minute on both ends of the
# lease's connection, instead of when TCP gives up (minutes to hours): the watchdog's look fails and
# the lease is taken again, and the database ends the lost session, whose lock would refuse it.
_KEEPALIVE = {"idle": 10, "interval": 5, "count": 3, "user_timeout_ms": 30_000}


def _keep_alive(conn: Any) -> None:
    """TCP keepalives and a user timeout on the lease's connection: the server's socket through the
    session's settings, the client's on its socket (a Unix socket needs neither)."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('tcp_keepalives_idle', %s, false), "
                        "set_config('tcp_keepalives_interval', %s, false), "
                        "set_config('tcp_keepalives_count', %s, false), set_config('tcp_user_timeout', %s, false)",
                        tuple(str(_KEEPALIVE[k]) for k in ("idle", "interval", "count", "user_timeout_ms")))
    except Exception:  # noqa: BLE001 - a server without one of them (tcp_user_timeout came in PostgreSQL 12)
        log.warning("quaygate.serving_lease.keepalive_unset", exc_info=True)
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in (("TCP_KEEPIDLE", _KEEPALIVE["idle"]), ("TCP_KEEPINTVL", _KEEPALIVE["interval"]),
                                ("TCP_KEEPCNT", _KEEPALIVE["count"]),
                                ("TCP_USER_TIMEOUT", _KEEPALIVE["user_timeout_ms"])):
                option = getattr(socket, name, None)  # Linux has all four; others fewer (macOS: no user timeout)
                if option is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
    finally:
        sock.close()  # the duplicate only: the options stay on the socket


def _release_postgresql(raw: Any, shared: bool, *, wait: float = RELEASE_WAIT) -> None:
    """Unlock, then close. Closing alone is not enough: the client sends Terminate and goes on while
    the server's backend ends, and the lock with it, a moment later. A server that stops and one that
    starts straight after (a restart) would see the lease still held and refuse to serve.

    In a thread of its own, waited for at most ``wait`` seconds: a database host gone without a word
    would hold the unlock until TCP gives up (minutes), and a server stopping then must not hang. Past
    that, the thread unlocks and closes when it can; the lock ends with the session either way."""
    def release() -> None:
        try:
            fn = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
            with raw.dbapi_connection.cursor() as cur:
                cur.execute(f"SELECT {fn}(%s)", (LEASE_LOCK_ID,))
        except Exception:  # noqa: BLE001 - the session already gone: its lock went with it
            log.debug("quaygate.serving_lease.unlock_failed", exc_info=True)
        finally:
            raw.close()

    thread = threading.Thread(target=release, name="serving-lease-release", daemon=True)
    thread.start()
    thread.join(timeout=wait)
    if thread.is_alive():
        log.warning("quaygate.serving_lease.release_waiting", extra={"fields": {"seconds": wait}})


def _session_alive(raw: Any) -> bool:
    try:
        with raw.dbapi_connection.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        return True
    except Exception:  # noqa: BLE001 - any failure: the session, and the lock with it, may be gone
        return False


def _take_sqlite(lock: Path, shared: bool, where: str) -> int:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AnotherServer(refusal(where, shared=shared)) from None
    except BaseException:
        os.close(fd)
        raise
    return fd  # closing the descriptor releases the lock


def _same_file(lock: Path, fd: int) -> bool:
    """The lock file is still the one locked: removed or replaced, another server could lock the new one."""
    try:
        seen, held = os.stat(lock), os.fstat(fd)
    except OSError:
        return False
    return (seen.st_dev, seen.st_ino) == (held.st_dev, held.st_ino)

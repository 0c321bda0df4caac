"""Without Redis, a database has one server at a time (quaygate/solo.py).

Each server without Redis keeps its single-use claims (DPoP proofs, client assertions, passkey
challenges, gate request ids) in its own memory: a second server on the same database would let a
claim used at one be replayed at the other. So:

- the lease, on SQLite and PostgreSQL: a second holder is refused at once, with a message that names
  the fix; released, it can be taken again; SQLite in memory (nobody else can open it) needs none;
- the app: a second app on the same database without Redis does not start, and nothing of it serves;
  two apps that share Redis both start;
- real processes: ``uvicorn --workers 2`` by hand without Redis stops with the refusal in its log; a
  second server on the same PostgreSQL is refused; SIGKILL the first, and the lease is free again
  (the database ends the session, the kernel closes the file); with Redis, two servers both serve.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from quaygate import solo
from quaygate.app import create_app
from quaygate.cache import MemoryCache, RedisCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.db import make_engine
from quaygate.settings import Settings

from .processes import ROOT, answers, free_port, serve_app, stop


def _url(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def test_a_second_holder_is_refused_until_the_first_lets_go(engine: sa.Engine) -> None:
    other = make_engine(_url(engine))  # another engine: what another process would open
    try:
        first = solo.hold(engine)
        with pytest.raises(solo.AnotherServer) as refused:
            solo.hold(other)
        assert "another quaygate server already serves" in str(refused.value)
        assert "QUAYGATE_REDIS_URL" in str(refused.value)
        with pytest.raises(solo.AnotherServer):  # the same engine, another holder: refused too
            solo.hold(engine)
        first.close()
        first.close()  # twice is harmless
        again = solo.hold(other)
        with pytest.raises(solo.AnotherServer):
            solo.hold(engine)
        again.close()
        solo.hold(engine).close()
    finally:
        other.dispose()


def test_the_postgresql_lease_is_one_session_outside_the_pool(pg_engine: sa.Engine) -> None:
    """The lease's connection is its own (not one of the pool's, which would hand it to a request) and
    idle outside any transaction; closing it ends the session and the lock with it."""
    lease = solo.hold(pg_engine)
    try:
        with pg_engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT l.pid, a.state FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND "
                "l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND "
                "((l.classid::bigint << 32) | l.objid::bigint) = :key"), {"key": solo.LEASE_LOCK_ID}).all()
            mine = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        assert len(rows) == 1 and rows[0].pid != mine and rows[0].state == "idle"
        assert pg_engine.pool.checkedout() == 0
    finally:
        lease.close()
    with pg_engine.connect() as conn:
        held = conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                                    "database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND "
                                    "((classid::bigint << 32) | objid::bigint) = :key"),
                            {"key": solo.LEASE_LOCK_ID}).scalar_one()
    assert held == 0


def test_the_postgresql_lease_is_free_when_close_returns_not_when_the_backend_ends(pg_engine: sa.Engine) -> None:
    """Closing a connection does not wait for the server's backend to end, so a lease released only by
    closing stays held a moment after ``close()`` (a restarting server would be refused; CI caught it).
    Here the connection's close is held back: the lock must be gone all the same, and the session on."""
    for shared in (False, True):
        lease = solo.hold(pg_engine, shared=shared, watch_every=0)
        raw = lease._handle
        closed: list[bool] = []
        really_close = raw.close
        raw.close = lambda: closed.append(True)  # the backend, slow to end
        try:
            lease.close()
            assert closed == [True]
            with pg_engine.connect() as conn:
                held = conn.execute(sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                    "database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND "
                    "((classid::bigint << 32) | objid::bigint) = :key"), {"key": solo.LEASE_LOCK_ID}).scalar_one()
            assert held == 0
            assert solo._session_alive(raw)  # released by the session itself, not by its end
            solo.hold(pg_engine).close()  # an exclusive holder gets it at once
        finally:
            really_close()


def test_a_release_the_database_does_not_answer_never_holds_the_caller(pg_engine: sa.Engine) -> None:
    """A database host gone without a word would hold the unlock until TCP gives up; a stopping server
    must not hang on it. Here the lease's connection is busy (a statement waits on a lock this test
    holds, as a watchdog's look would wait on a silent host): ``close`` returns all the same, and the
    unlock and close follow once the connection is free."""
    lease = solo.hold(pg_engine, watch_every=0)
    raw = lease._handle
    blocker = pg_engine.connect()
    try:
        blocker.execute(sa.text("SELECT pg_advisory_lock(4711)"))

        def busy() -> None:
            with raw.dbapi_connection.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(4711)")  # waits for the blocker

        # The lease's own session, waiting: a waiting advisory lock anywhere else on the server (another
        # test worker's audit sealer, say) ended this wait before the lease's connection was busy, and
        # the release below then closed it under the thread.
        pid = raw.dbapi_connection.info.backend_pid
        stuck = threading.Thread(target=busy, daemon=True)
        stuck.start()
        deadline = time.monotonic() + 10
        while not blocker.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                          "AND NOT granted AND pid = :pid"), {"pid": pid}).scalar_one():
            assert time.monotonic() < deadline, "the lease's connection never got busy"
            time.sleep(0.02)
        released = threading.Event()

        def release() -> None:
            solo._release_postgresql(raw, False, wait=0.1)
            released.set()

        threading.Thread(target=release, daemon=True).start()
        assert released.wait(timeout=30), "the release waited for the busy connection"
        assert stuck.is_alive() and _lease_sessions(pg_engine)  # returned, the connection still busy
        blocker.execute(sa.text("SELECT pg_advisory_unlock(4711)"))
        stuck.join(timeout=10)
        deadline = time.monotonic() + 10
        while _lease_sessions(pg_engine):  # unlocked and closed once the connection was free
            assert time.monotonic() < deadline, "the lease was never let go"
            time.sleep(0.02)
    finally:
        blocker.close()
        lease._handle = None


def test_the_lease_connection_notices_a_silent_peer_within_half_a_minute(pg_engine: sa.Engine) -> None:
    """A host gone or a network cut: without keepalives, the watchdog's look would wait until TCP gives
    up (minutes), and the database would keep the lost session, and its lock, for hours. Both ends of
    the lease's connection are set to notice within about half a minute."""
    import socket

    lease = solo.hold(pg_engine, watch_every=0)
    try:
        conn = lease._handle.dbapi_connection
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_interval'), "
                        "current_setting('tcp_keepalives_count'), current_setting('tcp_user_timeout')")
            assert cur.fetchone() == ("10", "5", "3", "30000")
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000
        finally:
            sock.close()
    finally:
        lease.close()


def test_sqlite_in_memory_needs_no_lease() -> None:
    a, b = sa.create_engine("sqlite://"), sa.create_engine("sqlite:///:memory:")
    try:
        leases = [solo.hold(a), solo.hold(a), solo.hold(b)]
        for lease in leases:
            lease.close()
    finally:
        a.dispose()
        b.dispose()


def _container(engine: sa.Engine, tmp_path: Path, cache: object) -> tuple[Settings, Container]:
    settings = Settings(var_dir=tmp_path, database_url=_url(engine), background_workers=False)
    return settings, Container(settings=settings, engine=engine, cache=cache,  # type: ignore[arg-type]
                               cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())


def test_a_second_app_without_redis_does_not_start(engine: sa.Engine, tmp_path: Path) -> None:
    settings, c1 = _container(engine, tmp_path, MemoryCache())
    _, c2 = _container(engine, tmp_path, MemoryCache())
    with TestClient(create_app(settings, container=c1)) as first:
        assert first.get("/healthz").status_code == 200
        second = TestClient(create_app(settings, container=c2))
        with pytest.raises(solo.AnotherServer):
            second.__enter__()
    # The first stopped: its lease is free, and the other app starts.
    with TestClient(create_app(settings, container=c2)) as later:
        assert later.get("/healthz").status_code == 200


def test_apps_that_share_redis_both_start(engine: sa.Engine, redis_url: str, tmp_path: Path) -> None:
    caches = [RedisCache(redis_url), RedisCache(redis_url)]
    try:
        settings, c1 = _container(engine, tmp_path, caches[0])
        _, c2 = _container(engine, tmp_path, caches[1])
        with TestClient(create_app(settings, container=c1)) as a, TestClient(create_app(settings, container=c2)) as b:
            assert a.get("/healthz").status_code == 200 and b.get("/healthz").status_code == 200
            # They hold the lease together: a server without Redis cannot start beside them.
            with pytest.raises(solo.AnotherServer, match="this one has no Redis"):
                solo.hold(engine)
            solo.hold(engine, shared=True).close()
            _, alone = _container(engine, tmp_path, MemoryCache())
            with pytest.raises(solo.AnotherServer):
                TestClient(create_app(settings, container=alone)).__enter__()
    finally:
        for cache in caches:
            cache.close()


def test_an_app_with_redis_does_not_start_beside_one_without(engine: sa.Engine, redis_url: str,
                                                              tmp_path: Path) -> None:
    """A replica given QUAYGATE_REDIS_URL next to a server without it: the one without keeps its claims
    to itself, so the replica would let a claim used there be used again."""
    settings, alone = _container(engine, tmp_path, MemoryCache())
    cache = RedisCache(redis_url)
    try:
        _, shared = _container(engine, tmp_path, cache)
        with TestClient(create_app(settings, container=alone)) as first:
            assert first.get("/healthz").status_code == 200
            with pytest.raises(solo.AnotherServer, match="a quaygate server without Redis already serves"):
                TestClient(create_app(settings, container=shared)).__enter__()
    finally:
        cache.close()


def _lease_sessions(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM "
            "pg_database WHERE datname = current_database()) AND "
            "((classid::bigint << 32) | objid::bigint) = :key"), {"key": solo.LEASE_LOCK_ID}).scalars())


def _terminate(conn: sa.Connection, pid: int) -> None:
    """End a session and wait until its backend is gone (pg_terminate_backend alone only signals it; the
    lock goes when the backend has ended)."""
    assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid}).scalar_one()


def test_a_postgresql_lease_whose_session_ended_is_taken_again_or_lost(pg_engine: sa.Engine) -> None:
    """The database restarted or the connection was dropped: the watchdog takes the lease again on a new
    session. If another server took it meanwhile, the lease is lost and ``on_lost`` hears why."""
    heard: list[str] = []
    other = make_engine(_url(pg_engine))
    lease = solo.hold(pg_engine, on_lost=heard.append, watch_every=0)  # the watchdog's steps, by hand
    try:
        [first] = _lease_sessions(pg_engine)
        assert lease.check() and heard == []
        with pg_engine.connect() as conn:
            _terminate(conn, first)
        assert lease.check() and not lease.lost
        [second] = _lease_sessions(pg_engine)
        assert second != first
        with pytest.raises(solo.AnotherServer):
            solo.hold(other, watch_every=0)
        # Ended again, and another server is quicker: lost.
        with pg_engine.connect() as conn:
            _terminate(conn, second)
        taker = solo.hold(other, watch_every=0)
        try:
            assert not lease.check() and lease.lost
            assert len(heard) == 1 and "another quaygate server already serves" in heard[0]
        finally:
            taker.close()
    finally:
        lease.close()
        other.dispose()


def test_a_lease_that_could_not_be_taken_again_at_once_is_taken_at_a_later_step(pg_engine: sa.Engine) -> None:
    """The database restarting: its session ended, and the first attempt to take the lease again
    finds the database still away. A later step takes it (the server never serves without it for
    longer than the database is away), and a second server is refused again."""
    lease = solo.hold(pg_engine, watch_every=0)
    other = make_engine(_url(pg_engine))
    try:
        [first] = _lease_sessions(pg_engine)
        take, tries = lease._take, []

        def away() -> object:
            tries.append(1)
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("the database system is starting up"))

        lease._take = away
        with pg_engine.connect() as conn:
            _terminate(conn, first)
        assert lease.check() and not lease.lost and tries == [1]
        assert lease.check() and tries == [1, 1]  # still away: tried again at each step
        assert _lease_sessions(pg_engine) == []
        lease._take = take  # back
        assert lease.check() and not lease.lost
        [second] = _lease_sessions(pg_engine)
        assert second != first
        with pytest.raises(solo.AnotherServer):
            solo.hold(other, watch_every=0)
    finally:
        lease.close()
        other.dispose()


def test_a_lease_still_held_by_its_own_lost_session_is_taken_again(pg_engine: sa.Engine) -> None:
    """A network cut: the connection failed at this end, while the database's backend lives on, holding
    the lock, until TCP keepalive gives up (hours). The re-take would be refused by this server's own
    past, and the server would stop. That session is recognised (its pid and start, recorded when the
    lease was taken), ended, and the lease taken again; another server's session never is (the test
    above: the lease is lost to it)."""
    lease = solo.hold(pg_engine, watch_every=0)
    orphan = lease._handle
    other = make_engine(_url(pg_engine))
    try:
        [first] = _lease_sessions(pg_engine)
        still_held, release = lease._still_held, lease._release
        lease._still_held = lambda raw: False  # the connection failed at this end
        lease._release = lambda raw: None  # so its session cannot be reached to unlock
        assert lease.check() and not lease.lost
        [second] = _lease_sessions(pg_engine)
        assert second != first
        lease._still_held, lease._release = still_held, release
        assert lease.check()
        with pytest.raises(solo.AnotherServer):
            solo.hold(other, watch_every=0)
    finally:
        lease.close()
        orphan.close()
        other.dispose()


def test_a_lease_taken_again_while_the_server_closes_it_is_let_go(pg_engine: sa.Engine) -> None:
    """The watchdog takes the lease again just as the server stops (``close`` gave up waiting for it):
    the new session is let go at once, so a stopped server holds nothing and the next one starts."""
    lease = solo.hold(pg_engine, watch_every=0)
    try:
        [first] = _lease_sessions(pg_engine)
        take = lease._take

        def closing_meanwhile() -> object:
            handle = take()
            lease.close()  # the server stops while the watchdog takes the lease again
            return handle

        lease._take = closing_meanwhile
        with pg_engine.connect() as conn:
            _terminate(conn, first)
        assert lease.check() and not lease.lost
        assert _lease_sessions(pg_engine) == []
        solo.hold(pg_engine, watch_every=0).close()
    finally:
        lease.close()


def test_a_sqlite_lease_whose_file_was_replaced_is_lost(sqlite_database_url: str) -> None:
    engine, other = make_engine(sqlite_database_url), make_engine(sqlite_database_url)
    heard: list[str] = []
    lease = solo.hold(engine, on_lost=heard.append, watch_every=0)
    try:
        lock = Path(engine.url.database or "").resolve()
        lock = lock.with_name(lock.name + ".serving")
        assert lease.check()
        lock.unlink()  # removed: a second server would lock a new file of that name
        taker = solo.hold(other, watch_every=0)
        try:
            assert not lease.check() and lease.lost and heard
        finally:
            taker.close()
    finally:
        lease.close()
        engine.dispose()
        other.dispose()


def _env(database_url: str, var: Path, **more: str) -> dict[str, str]:
    env = {**os.environ, "QUAYGATE_DATABASE_URL": database_url, "QUAYGATE_VAR_DIR": str(var),
           "QUAYGATE_BACKGROUND_WORKERS": "false", "QUAYGATE_LOG_LEVEL": "WARNING", **more}
    if "QUAYGATE_REDIS_URL" not in more:
        env.pop("QUAYGATE_REDIS_URL", None)
    return env


@pytest.mark.slow
def test_uvicorn_workers_by_hand_without_redis_stop_with_the_refusal(sqlite_database_url: str,
                                                                       tmp_path: Path) -> None:
    """``quaygate serve`` refuses --workers 2 without Redis before starting; uvicorn run by hand does
    not ask. Its second worker is refused the lease, and uvicorn stops the whole server (with exit status
    0: uvicorn 0.54's own choice; the log says why)."""
    port = free_port()
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        subprocess.run([sys.executable, "-m", "uvicorn", "--factory", "quaygate.app:app_from_env",  # noqa: S603
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "2"], cwd=ROOT,
                              env=_env(sqlite_database_url, tmp_path), stdout=out, stderr=subprocess.STDOUT,
                              timeout=60, check=False)
    text = log.read_text()  # it stopped by itself: run() raises TimeoutExpired otherwise
    assert "another quaygate server already serves SQLite database" in text, text[-3000:]
    assert "failed to start, stopping the parent process" in text, text[-3000:]


@pytest.mark.postgres
@pytest.mark.slow
def test_a_second_server_is_refused_until_the_first_is_killed(pg_engine: sa.Engine, redis_url: str,
                                                               tmp_path: Path) -> None:
    url = _url(pg_engine)
    first = serve_app(free_port(), _env(url, tmp_path), tmp_path / "first.log", "--log-level", "warning")
    try:
        with pytest.raises(RuntimeError, match="another quaygate server already serves PostgreSQL database"):
            serve_app(free_port(), _env(url, tmp_path), tmp_path / "second.log", "--log-level", "warning")
        # Killed, it cannot let go by itself: the database ends its session, and the lease with it.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _lease_sessions(pg_engine):  # its backend ends when it reads the closed socket, a moment later
            assert time.monotonic() < deadline, "the killed server's session kept the lease"
            time.sleep(0.05)
        port = free_port()
        second = serve_app(port, _env(url, tmp_path), tmp_path / "third.log", "--log-level", "warning")
        try:
            assert answers(f"http://127.0.0.1:{port}/healthz")()
        finally:
            stop(second)
    finally:
        stop(first)
    # With Redis, two servers on the same database both serve.
    ports = [free_port(), free_port()]
    servers = [serve_app(p, _env(url, tmp_path, QUAYGATE_REDIS_URL=redis_url), tmp_path / f"redis-{p}.log",
                         "--log-level", "warning") for p in ports]
    try:
        assert all(answers(f"http://127.0.0.1:{p}/healthz")() for p in ports)
    finally:
        for proc in servers:
            stop(proc)


@pytest.mark.postgres
@pytest.mark.slow
def test_a_server_whose_lease_another_took_stops(pg_engine: sa.Engine, tmp_path: Path) -> None:
    """Its session ended (a database restart, a dropped connection) and another server took the lease
    before its watchdog could take it again: it stops, finishing what is in flight, and says why."""
    log = tmp_path / "server.log"
    server = serve_app(free_port(), _env(_url(pg_engine), tmp_path), log, "--log-level", "warning")
    taker = None
    try:
        deadline = time.monotonic() + 10
        while taker is None:
            with pg_engine.connect() as conn:
                for session in _lease_sessions(pg_engine):  # its session, or the one its watchdog took since
                    _terminate(conn, session)
            try:
                taker = solo.hold(pg_engine, watch_every=0)
            except solo.AnotherServer:  # its watchdog was quicker: end that session too
                assert time.monotonic() < deadline, "the server kept taking the lease back"
        code = server.wait(timeout=solo.WATCH_EVERY * 4)
        text = log.read_text()
        assert "quaygate.stop.lease_lost" in text and "another quaygate server already serves" in text, text[-3000:]
        assert code == -signal.SIGTERM, text[-3000:]  # uvicorn stops, then ends by the signal it was sent
    finally:
        if taker is not None:
            taker.close()
        stop(server)


def test_a_database_served_with_redis_needs_redis_until_released(engine: sa.Engine, redis_url: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Review 169, finding 1: what servers with Redis keep there outlives them, so once one has served the
    database, no process without Redis opens it (a change it made would reach none of their copies), a
    server no more than a command, until ``quaygate redis release``, refused while one serves it."""
    from quaygate.cli import main as cli

    monkeypatch.setenv("QUAYGATE_DATABASE_URL", _url(engine))
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.delenv("QUAYGATE_REDIS_URL", raising=False)
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    settings = Settings(var_dir=tmp_path, database_url=_url(engine), background_workers=False)
    Container.build(settings).close()  # never served with Redis: opened without it
    cache = RedisCache(redis_url)
    try:
        _, shared = _container(engine, tmp_path, cache)
        with TestClient(create_app(settings, container=shared)) as served:
            assert served.get("/healthz").status_code == 200
            capsys.readouterr()
            assert cli(["redis", "release"]) == 1  # it serves: nothing changed
            assert "stop every server" in capsys.readouterr().err
    finally:
        cache.close()
    assert solo.served_with_redis(engine) is not None
    # Stopped, its copies stay in Redis: neither a command nor a server without Redis opens the database.
    assert cli(["org", "create", "--name", "X", "--kind", "transport_operator", "--eori", "BE0000000001"]) == 2
    err = capsys.readouterr().err
    assert "QUAYGATE_REDIS_URL is not set" in err and "quaygate redis release" in err, err
    app = create_app(settings)
    with pytest.raises(solo.NeedsRedis):
        TestClient(app).__enter__()
    assert "QUAYGATE_REDIS_URL is not set" in app.state.start_refused
    assert cli(["redis", "release"]) == 0
    assert "no longer served with Redis" in capsys.readouterr().out
    assert solo.served_with_redis(engine) is None
    with TestClient(create_app(settings)) as alone:
        assert alone.get("/healthz").status_code == 200
    assert cli(["redis", "release"]) == 0  # nothing to release: said so, harmless
    assert "was not served with Redis" in capsys.readouterr().out


def test_a_shared_lease_taken_again_marks_the_database_again(pg_engine: sa.Engine) -> None:
    """Review 175, finding 3: the lease's session ended (a database restart, a terminated backend), and in
    the watchdog's few seconds before it took the lease again ``quaygate redis release`` found no server and
    cleared the mark. The watchdog took the shared lease again without marking: the database was served with
    Redis and unmarked, and a process without Redis was let in (review 169 finding 1 again). Every take of a
    shared lease marks it."""
    lease = solo.hold(pg_engine, shared=True, watch_every=0)  # the watchdog's steps, by hand
    try:
        assert solo.served_with_redis(pg_engine) is not None
        [first] = _lease_sessions(pg_engine)
        with pg_engine.connect() as conn:
            _terminate(conn, first)
        assert solo.release_redis(pg_engine) is not None  # no session holds the lease: released
        assert solo.served_with_redis(pg_engine) is None
        assert lease.check() and not lease.lost  # taken again
        assert solo.served_with_redis(pg_engine) is not None
    finally:
        lease.close()

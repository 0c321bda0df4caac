"""One server per database when there is no shared cache (the embedded default).

Without Redis, each server process keeps its own in-process cache (quaygate/cache.py), and with it
the claims that make things single-use: a DPoP proof's or a client assertion's ``jti``, a passkey
challenge, a gate ``request_id``. A second server process on the same database would keep claims of
its own, so a proof used at one could be replayed at the other, and a token revoked through one
would pass at the other until it reads the revocation. ``quaygate serve`` refuses ``--workers``
above 1 without Redis; this refuses every other way to get there: ``uvicorn --workers N`` by hand,
two ``quaygate serve`` on one database behind a load balancer, a replica started by mistake.

A server without Redis holds the database's solo lease for as long as it serves:

- PostgreSQL: a session advisory lock, on a connection of its own, taken without waiting. The
  database lets one session hold it; it ends with the session (a stopped or killed process, a lost
  connection).
- SQLite: an exclusive ``flock`` on a file beside the database, released by the kernel when the
  process ends, however it ends.

A database nobody else can open (SQLite in memory) needs no lease. With Redis the claims are shared
and no lease is taken: any number of processes serve.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

LEASE_LOCK_ID = 0x5147_534F_4C4F  # pg_try_advisory_lock key ("QGSOLO")


class AnotherServer(RuntimeError):
    """Another server process already serves this database without a shared cache."""


def refusal(where: str) -> str:
    return (f"another quaygate server already serves {where} without Redis. Each would keep its own "
            "single-use claims (DPoP proofs, client assertions, passkey challenges, gate request ids), so "
            "a claim used at one could be replayed at the other. Set QUAYGATE_REDIS_URL to serve it from "
            "several processes, or stop the other server.")


class SoloLease:
    """Held until ``close()``; see ``hold``."""

    def __init__(self, release: Any = None) -> None:
        self._release = release

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def hold(engine: sa.Engine) -> SoloLease:
    """Take this database's solo lease, or raise ``AnotherServer`` at once (never waits)."""
    if engine.dialect.name == "postgresql":
        return _hold_postgresql(engine)
    if engine.dialect.name == "sqlite":
        return _hold_sqlite(engine)
    raise ValueError(f"no solo lease for {engine.dialect.name}")


def _hold_postgresql(engine: sa.Engine) -> SoloLease:
    raw = engine.raw_connection()
    raw.detach()  # out of the pool: the lease lives and dies with this one session
    conn = raw.dbapi_connection
    try:
        conn.autocommit = True  # no transaction left open: idle-in-transaction timeouts do not end the lease
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (LEASE_LOCK_ID,))
            row = cur.fetchone()
        if not (row and row[0]):
            raise AnotherServer(refusal(f"PostgreSQL database {engine.url.database!r}"))
    except BaseException:
        raw.close()
        raise
    return SoloLease(raw.close)  # closing the session releases the lock


def _hold_sqlite(engine: sa.Engine) -> SoloLease:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return SoloLease()
    path = Path(database).resolve()
    lock = path.with_name(path.name + ".serving")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AnotherServer(refusal(f"SQLite database {str(path)!r}")) from None
    except BaseException:
        os.close(fd)
        raise
    return SoloLease(lambda: os.close(fd))  # closing the descriptor releases the lock

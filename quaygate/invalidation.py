"""Which cached facts a committed transaction changed (the gate's hot path, issue 5).

A store that writes something the gate decision reads says so on its connection:

    touch(conn, RIGHTS, container_number)   # a release right of that container
    touch(conn, BADGES)                     # a badge, an activation or a person
    touch(conn, BANS)                       # the port-ban list
    touch(conn, POLICY)                     # a terminal's gate policy

``install(engine, on_committed)`` then hands the touched keys of each transaction to
``on_committed`` only AFTER the database committed it (when the connection goes back to the pool,
which every unit of work and ``engine.begin()`` block does right after its commit). Never before: a
reader that refilled the cache between an early invalidation and the commit would put the old value
back under the new generation. A rolled-back transaction invalidates nothing.

Stores mark what they write without knowing whether anything is cached (the embedded default has no
shared cache and installs nothing: then ``touch`` just leaves a note that nobody reads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

RIGHTS = "rights"
BADGES = "badges"
BANS = "bans"
POLICY = "policy"

Touched = set[tuple[str, str]]

_PENDING = "qg_touched"  # written in this transaction
_COMMITTED = "qg_committed"  # committed, not yet handed over


def touch(conn: sa.Connection, family: str, key: str = "") -> None:
    conn.info.setdefault(_PENDING, set()).add((family, key))


def install(engine: sa.Engine, on_committed: Callable[[Touched], None]) -> None:
    def committing(conn: sa.Connection) -> None:
        # Fired just before the DBAPI commit: keep the keys aside, hand them over once it is done.
        touched = conn.info.pop(_PENDING, None)
        if touched:
            conn.info.setdefault(_COMMITTED, set()).update(touched)

    def rolled_back(conn: sa.Connection) -> None:
        conn.info.pop(_PENDING, None)

    def checked_in(dbapi_conn: Any, record: Any) -> None:
        touched = record.info.pop(_COMMITTED, None)
        record.info.pop(_PENDING, None)  # never committed
        if touched:
            on_committed(touched)

    sa.event.listen(engine, "commit", committing)
    sa.event.listen(engine, "rollback", rolled_back)
    sa.event.listen(engine.pool, "checkin", checked_in)

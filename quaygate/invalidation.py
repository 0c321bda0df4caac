"""Which cached facts a committed transaction changed (the gate's hot path, issue 5).

A store that writes something the gate decision reads says so on its connection:

    touch(conn, RIGHTS, container_number)   # a release right of that container
    touch(conn, BADGES)                     # a badge, an activation or a person
    touch(conn, BANS)                       # the port-ban list
    touch(conn, POLICY)                     # a terminal's gate policy
    touch(conn, HOLDERS)                    # an organisation's active flag: every right's holder fact

``install(engine, on_committed, on_committing)`` then hands the touched keys of each transaction to
``on_committed`` only AFTER the database committed it (when the connection goes back to the pool,
which every unit of work and ``engine.begin()`` block does right after its commit). Never before
alone: a reader that refilled the cache between an early invalidation and the commit would put the
old value back under the new generation. A rolled-back transaction invalidates nothing.

``on_committing`` is called with the same keys and the connection just BEFORE the commit, and what it
returns (a mark) is handed to ``on_committed`` with them afterwards, also when the commit failed: the
cache marks the keys pending first, so no process trusts or refills a copy of them until the
invalidation after the commit clears the mark, and one that never comes (Redis lost between the two, a
writer that died) leaves them read from the database rather than from an old copy. On the connection,
in the transaction about to commit, it also records what changed (``gate_fact_changes``), which every
server polls: a writer that cannot reach Redis at all still reaches the others (review 169).

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
# Port security's deactivation or reactivation of an organisation (identity.organisations): every right's
# facts carry whether its holder is active, so every rights copy goes (the gate facts replace the rights'
# epoch, which each container's generation is read with). Rare: a wave of misses, no extra round trip.
HOLDERS = "holders"

Touched = set[tuple[str, str]]

_PENDING = "qg_touched"  # written in this transaction
_COMMITTED = "qg_committed"  # committed, not yet handed over
_MARKED = "qg_marked"  # what ``on_committing`` returned, to hand over with them


def touch(conn: sa.Connection, family: str, key: str = "") -> None:
    conn.info.setdefault(_PENDING, set()).add((family, key))


def install(engine: sa.Engine, on_committed: Callable[[Touched, list[Any]], None],
            on_committing: Callable[[Touched, sa.Connection], Any] | None = None) -> None:
    def committing(conn: sa.Connection) -> None:
        # Fired just before the DBAPI commit: keep the keys aside, hand them over once it is done.
        touched = conn.info.pop(_PENDING, None)
        if touched:
            conn.info.setdefault(_COMMITTED, set()).update(touched)
            if on_committing is not None:
                mark = on_committing(touched, conn)  # may write on conn: still in the transaction
                if mark is not None:
                    conn.info.setdefault(_MARKED, []).append(mark)

    def rolled_back(conn: sa.Connection) -> None:
        conn.info.pop(_PENDING, None)

    def checked_in(dbapi_conn: Any, record: Any) -> None:
        touched = record.info.pop(_COMMITTED, None)
        marks = record.info.pop(_MARKED, None)
        record.info.pop(_PENDING, None)  # never committed
        if touched or marks:
            on_committed(touched or set(), marks or [])

    sa.event.listen(engine, "commit", committing)
    sa.event.listen(engine, "rollback", rolled_back)
    sa.event.listen(engine.pool, "checkin", checked_in)

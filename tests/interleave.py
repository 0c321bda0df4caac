"""Two transactions interleaved on real PostgreSQL, deterministically: one held open just before its
COMMIT (with every lock it took) while another runs into it, then let go."""

from __future__ import annotations

import threading
import time
from typing import Any

import sqlalchemy as sa


class HeldBeforeCommit:
    """Holds the first transaction on ``engine`` that runs a statement beginning with ``marker`` just
    before its COMMIT (SQLAlchemy's ``commit`` event, in the thread that commits), with every lock it
    took: ``held`` is set then, and the COMMIT goes on once ``go`` is set (at the latest on leaving the
    ``with`` block)."""

    def __init__(self, engine: sa.Engine, marker: str) -> None:
        self.engine, self.marker = engine, marker
        self.held, self.go = threading.Event(), threading.Event()
        self._local = threading.local()
        self._done = False

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not self._done and statement.lstrip().startswith(self.marker):
            self._local.marked = True

    def _commit(self, conn: Any) -> None:
        if getattr(self._local, "marked", False):
            self._local.marked, self._done = False, True
            self.held.set()
            assert self.go.wait(30), "never released"

    def _rollback(self, conn: Any) -> None:
        self._local.marked = False

    def __enter__(self) -> HeldBeforeCommit:
        sa.event.listen(self.engine, "before_cursor_execute", self._statement)
        sa.event.listen(self.engine, "commit", self._commit)
        sa.event.listen(self.engine, "rollback", self._rollback)
        return self

    def __exit__(self, *exc: object) -> None:
        self.go.set()
        sa.event.remove(self.engine, "before_cursor_execute", self._statement)
        sa.event.remove(self.engine, "commit", self._commit)
        sa.event.remove(self.engine, "rollback", self._rollback)


def in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    """``call()`` started in a thread of its own: (the thread, the list its result is put in)."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()))
    thread.start()
    return thread, out


def waits_on_a_lock(engine: sa.Engine, thread: threading.Thread, seconds: float = 10) -> bool:
    """True once a backend of the test database waits for a lock while ``thread`` runs; False when the
    thread ends first (it waited for nothing)."""
    deadline = time.monotonic() + seconds
    with engine.connect() as watch:
        while thread.is_alive() and time.monotonic() < deadline:
            waiting = watch.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar()
            watch.rollback()
            if waiting:
                return True
            time.sleep(0.02)
    return False

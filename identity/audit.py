"""Identity events on the tamper-evident audit trail (the same ``audit_log`` as the release engine).

Every login, token and admin action is recorded, and every failure that concerns a real person, client,
code or credential; a refusal about nothing of ours from a caller who proved no one is logged only, so an
anonymous caller cannot grow the trail (identity.oidc.exchange ``GrantRefused.audited``,
identity.authn.service ``_refuse_login``). Kinds are dotted and PII-free
(``identity.login.passkey.succeeded``, ``identity.token.issued``, ``identity.client.registered``);
``actor`` says who acted (client_id and/or person_id, never a name), ``data`` carries ids and reason
codes only, never a secret, a token or a credential.

Pass ``conn`` to write in the use case's own transaction (one commit, STYLE.md #5); failures, which
have no transaction of their own, get a small one.

Text that comes from outside (a callback's query parameter, a path segment, an upstream's error code)
goes in through ``printable`` (review 157, finding 2): PostgreSQL's jsonb refuses a NUL, so one such
character made the entry, and with it the refusal it recorded, fail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from release_service.adapters.audit import SqlAuditLog, append_committed
from release_service.domain.storable import UNPRINTABLE

# Unicode's control characters and lone surrogates (release_service.domain.storable.UNPRINTABLE): a NUL
# PostgreSQL refuses, a surrogate has no UTF-8, the others forge lines where the trail is read.


def printable(value: str, limit: int) -> str:
    """``value``, outside text, as the trail holds it: its first ``limit`` characters with every control
    character or lone surrogate written as its ``\\uXXXX`` escape (an auditor still sees it was there),
    cut to ``limit`` again."""
    return UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", value[:limit])[:limit]


def record(
    kind: str,
    *,
    at: datetime,
    actor: dict[str, Any],
    subject: str | None = None,
    data: dict[str, Any] | None = None,
    conn: sa.Connection | None = None,
    engine: sa.Engine | None = None,
) -> None:
    """Append one identity event, in ``conn``'s transaction or (with ``engine``) in a new one."""
    if conn is not None:
        SqlAuditLog(conn).append(kind, actor=actor, subject=subject, data=data or {}, at=at)
        return
    if engine is None:
        raise ValueError("record() needs a connection or an engine")
    append_committed(engine, [(kind, actor, subject, data or {}, at)])


Entry = tuple[str, dict[str, Any], str | None, dict[str, Any], datetime]  # kind, actor, subject, data, at


class GroupCommit:
    """Audit entries that have no transaction of their own (a machine's token), committed together.

    ``record`` returns only once its entry is committed (no token is handed out that the trail does
    not name), but concurrent callers share one INSERT and one COMMIT, as a database's group commit
    does: whoever finds no write in flight writes everything queued so far, and callers arriving
    meanwhile queue behind it and are written by the next writer, one of themselves. Batches are
    written one at a time, in order; a failed write raises in every caller of its batch (nothing is
    dropped silently). One request at a time costs what ``record(engine=...)`` costs.
    """

    def __init__(self, write: Callable[[list[Entry]], None]) -> None:
        self._write = write
        self._cv = threading.Condition()
        self._queued: list[Entry] = []
        self._open = 0  # the batch now filling
        self._written = -1  # the last batch written (or failed)
        self._writing = False
        self._failed: dict[int, BaseException] = {}
        self._callers: dict[int, int] = {}  # per batch, callers not yet told how it went
        self.batches = 0  # how many writes: for the tests and the benchmark

    @classmethod
    def on(cls, engine: sa.Engine) -> GroupCommit:
        return cls(lambda entries: append_committed(engine, entries))

    def record(self, kind: str, *, at: datetime, actor: dict[str, Any], subject: str | None = None,
               data: dict[str, Any] | None = None) -> None:
        with self._cv:
            self._queued.append((kind, actor, subject, data or {}, at))
            mine = self._open
            self._callers[mine] = self._callers.get(mine, 0) + 1
            while True:
                if self._written >= mine:
                    self._told(mine)
                    return
                if not self._writing:
                    break  # no write in flight: this caller writes the open batch, its own entry in it
                self._cv.wait()
            self._writing = True
            batch, self._queued = self._queued, []
            self._open += 1
        failure: BaseException | None = RuntimeError("the audit write was interrupted")
        try:
            self._write(batch)
            failure = None
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch, below
            failure = exc
        finally:  # even when interrupted: the queue must never be left without a writer
            with self._cv:
                if failure is not None:
                    self._failed[mine] = failure
                self.batches += 1
                self._written = mine
                self._writing = False
                self._cv.notify_all()
        with self._cv:
            self._told(mine)

    def _told(self, batch: int) -> None:
        """One caller of ``batch`` learns how it went (under the lock); raises its failure."""
        left = self._callers[batch] - 1
        failed = self._failed.get(batch)
        if left:
            self._callers[batch] = left
        else:
            del self._callers[batch]
            self._failed.pop(batch, None)
        if failed is not None:
            raise failed


# ---- who acted, as one string (badge histories store it in a 100-character column) -------------------
# A machine client is its client_id; a person acting through a client (the admin console, issue 4) is
# "person:<person_id>@<client_id>", so a badge's history names the officer and the trail gets both ids.
PERSON_PREFIX = "person:"


def person_actor(person_id: str, client_id: str) -> str:
    return f"{PERSON_PREFIX}{person_id}@{client_id}"


def actor_fields(actor: str) -> dict[str, Any]:
    """The audit ``actor`` for a stored actor string: {client_id} or {person_id, client_id}."""
    if actor.startswith(PERSON_PREFIX) and "@" in actor:
        person_id, _, client_id = actor[len(PERSON_PREFIX):].partition("@")
        return {"person_id": person_id, "client_id": client_id}
    return {"client_id": actor}

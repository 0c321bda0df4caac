"""The unit of work: one connection, one transaction, one commit per use case (STYLE.md #5)."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from release_service.adapters.audit import SqlAuditLog
from release_service.adapters.outbox import SqlOutbox, SqlWebhookStore

from .bans import DEFAULT_MAX_LIST_AGE, SqlPortBanLookup
from .directory import BadgeScreening, SqlDirectory
from .gate import SqlGateStore
from .idempotency import DEFAULT_RETENTION, SqlIdempotency
from .store import Reads, SqlReleaseStore


class SqlUnitOfWork:
    def __init__(self, engine: sa.Engine, *, readonly: bool = False, autocommit: bool = False,
                 ban_list_max_age: timedelta = DEFAULT_MAX_LIST_AGE, ban_list_required: bool = False,
                 idempotency_retention: timedelta = DEFAULT_RETENTION) -> None:
        """``autocommit``: on PostgreSQL, every statement is a transaction of its own (no BEGIN and
        COMMIT round trips), for a use case whose every write is one statement (the gate verify,
        services/verify.py); ``commit()`` then sends nothing but still hands over what was touched
        (quaygate/invalidation.py). Elsewhere (SQLite) the unit of work stays one transaction."""
        self._engine = engine
        self._readonly = readonly
        self._autocommit = autocommit
        # Port-ban screening at nomination (issue 4, adapters/sqla/bans.py): the composition root
        # passes settings.ban_list_max_age, and ban_list_required once a register is configured.
        self._ban_list_max_age = ban_list_max_age
        self._ban_list_required = ban_list_required
        # How long an Idempotency-Key replays its answer (settings.idempotency_retention_seconds).
        self._idempotency_retention = idempotency_retention
        self._conn: sa.Connection | None = None
        self._tx: sa.RootTransaction | None = None

    def __enter__(self) -> SqlUnitOfWork:
        conn = self._engine.connect()
        if self._readonly:
            conn = conn.execution_options(sqlite_begin="DEFERRED")
        if self._autocommit and conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        self._tx = conn.begin()
        self._bind(conn)
        return self

    @classmethod
    def on(cls, conn: sa.Connection) -> SqlUnitOfWork:
        """The stores on ``conn``, in a transaction its caller began and commits: another part's use case
        that changes release rights with its own change, in one transaction (identity.organisations
        ``set_active``). Not entered; ``commit`` and ``rollback`` are the caller's (they raise here)."""
        uow = cls(conn.engine)
        uow._bind(conn)
        return uow

    def _bind(self, conn: sa.Connection) -> None:
        self._conn = conn
        reads: Reads = {}  # the rights as read in this unit of work: a gate move writes what changed
        self.releases = SqlReleaseStore(conn, reads)
        self.directory = SqlDirectory(conn)
        bans = SqlPortBanLookup(conn, max_list_age=self._ban_list_max_age, required=self._ban_list_required)
        self.screening = BadgeScreening(self.directory, bans)
        self.gate = SqlGateStore(conn, bans, reads)
        self.audit = SqlAuditLog(conn)
        self.outbox = SqlOutbox(conn)
        self.webhooks = SqlWebhookStore(conn)
        self.idempotency = SqlIdempotency(conn, retention=self._idempotency_retention)

    def __exit__(self, *exc: object) -> None:
        assert self._conn is not None and self._tx is not None
        try:
            if self._tx.is_active:
                self._tx.rollback()
        finally:
            self._conn.close()

    @property
    def screening_settings(self) -> tuple[timedelta, bool]:
        """The port-ban screening settings this unit of work screens with (the list's maximum age, whether
        a list is required), known without a connection: the gate facts' cache screens its badge copies
        with them (adapters/gate_facts.py, review 169)."""
        return self._ban_list_max_age, self._ban_list_required

    @property
    def connection(self) -> sa.Connection:
        assert self._conn is not None
        return self._conn

    def commit(self) -> None:
        assert self._tx is not None
        self._tx.commit()

    def rollback(self) -> None:
        assert self._tx is not None
        self._tx.rollback()

"""audit insert unsealed: a row of ``audit_log`` is written with its chain columns NULL (review 123, finding 3)

Migration 0015 guards UPDATE and DELETE of ``audit_log``, not INSERT. A row inserted with ``hash`` or
``prev_hash`` filled and ``chain_seq`` NULL was taken by the sealer, whose UPDATE the "sealed row cannot
change" trigger refused: the whole batch rolled back every second, for ever, and every later entry stayed
unsealed, with no alarm. Now a BEFORE INSERT trigger, on PostgreSQL and SQLite alike, refuses a row whose
``chain_seq``, ``prev_hash`` or ``hash`` is not NULL: only the sealer fills them, by UPDATE. The sealer
itself no longer takes such a row and raises the tamper alarm for one that got in past the trigger
(release_service/adapters/audit.py, ``AuditSealer``).

On PostgreSQL the trigger also refuses a row whose ``txid`` is not its writer's transaction id,
``pg_current_xact_id()``: every writer of the service sets it so (``WRITER_TXID`` in the audit adapter,
``insert_entry_from``, the gate's move), and the sealer's horizon reads it. A row with no txid, or with
one of no transaction yet run, would never be sealed and would keep ``quaygate audit verify`` failing; a
stray INSERT at a SQL prompt is refused instead. The check runs in the trigger's WHEN, so the service's own
inserts never call the function. SQLite has no writer txid (the BEGIN IMMEDIATE sealer needs none): only the chain
columns are checked there.

As 0015's, these triggers are defence in depth, not the evidence: an owner of the table can drop them (on
PostgreSQL a superuser's ``session_replication_role = replica`` skips them). A data-only restore into a
migrated schema fires them (``pg_restore --disable-triggers``, as a superuser, loads sealed rows); a full
restore makes triggers after the data. A later migration that rebuilds ``audit_log`` on SQLite must create
this trigger again, with 0015's.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None

_CHAIN_FILLED = 'NEW.chain_seq IS NOT NULL OR NEW.prev_hash IS NOT NULL OR NEW.hash IS NOT NULL'
_WRITER_TXID = 'pg_current_xact_id()::text::bigint'  # as the service writes it (WRITER_TXID)

_PG = [
    f"""
    CREATE FUNCTION audit_log_insert_unsealed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF {_CHAIN_FILLED} THEN
            RAISE EXCEPTION 'audit_log rows are written unsealed: chain_seq, prev_hash and hash are filled only by the sealer'
                USING ERRCODE = 'restrict_violation';
        END IF;
        RAISE EXCEPTION 'audit_log row written with txid %, not its writer''s transaction id %', NEW.txid, {_WRITER_TXID}
            USING ERRCODE = 'restrict_violation';
    END
    $$
    """,
    # WHEN: the function runs only for a row it refuses.
    f"""
    CREATE TRIGGER audit_log_insert_unsealed BEFORE INSERT ON audit_log FOR EACH ROW
        WHEN ({_CHAIN_FILLED} OR NEW.txid IS DISTINCT FROM {_WRITER_TXID})
        EXECUTE FUNCTION audit_log_insert_unsealed()
    """,
]
_PG_DOWN = [
    "DROP TRIGGER audit_log_insert_unsealed ON audit_log",
    "DROP FUNCTION audit_log_insert_unsealed()",
]

_SQLITE = [
    f"""
    CREATE TRIGGER audit_log_insert_unsealed BEFORE INSERT ON audit_log
    WHEN {_CHAIN_FILLED}
    BEGIN
        SELECT RAISE(ABORT, 'audit_log rows are written unsealed: chain_seq, prev_hash and hash are filled only by the sealer');
    END
    """,
]
_SQLITE_DOWN = ["DROP TRIGGER audit_log_insert_unsealed"]


def _dialect() -> str:
    name = op.get_bind().dialect.name
    if name not in ('postgresql', 'sqlite'):
        raise NotImplementedError(f'0021: no audit trigger for {name}')
    return name


def upgrade() -> None:
    for statement in _PG if _dialect() == 'postgresql' else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    for statement in _PG_DOWN if _dialect() == 'postgresql' else _SQLITE_DOWN:
        op.execute(statement)

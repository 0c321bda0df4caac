"""audit immutable: checkpoints that sign the one before them, and triggers that keep the trail as written

``audit_checkpoints.prev_chain_seq`` and ``prev_hash``: a version 2 checkpoint signs the checkpoint
before it as well (release_service/domain/audit_chain.py); the checkpoints signed before this revision
keep them NULL and stay verifiable as version 1.

Triggers, on PostgreSQL and SQLite alike: a row of ``audit_log`` may be updated only to be sealed (its
``chain_seq``, ``prev_hash`` and ``hash`` going from NULL to a value, nothing else changing), so a sealed
row never changes again, nor an unsealed one's content or writer txid; no row of ``audit_log`` or
``audit_checkpoints`` is ever deleted, and no checkpoint updated. Nothing in the service does either
(the sealer only inserts checkpoints and seals rows). This is defence in depth, not the evidence: an
owner of the tables can drop or disable the triggers (on PostgreSQL a superuser's
``session_replication_role = replica`` skips them, and TRUNCATE fires no row trigger), and the trail's
hashes, signed checkpoints and witness are what show a change. It turns a stray UPDATE or DELETE, by a
script or a person at a SQL prompt, into an error instead of a broken trail.

A later migration that rebuilds one of these tables on SQLite (a batch ALTER copies the table and drops
the old one, its triggers with it) must create the triggers again.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

# The columns a seal leaves as they were; IS DISTINCT FROM (PostgreSQL) and IS NOT (SQLite) treat NULLs
# as values.
_CONTENT = ('id', 'at', 'kind', 'actor', 'subject', 'data', 'txid')
_CHAIN = ('chain_seq', 'prev_hash', 'hash')

_PG = [
    f"""
    CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'audit_log row % cannot be deleted: the audit trail is append-only', OLD.id
                USING ERRCODE = 'restrict_violation';
        END IF;
        IF {' OR '.join(f'OLD.{c} IS NOT NULL' for c in _CHAIN)} THEN
            RAISE EXCEPTION 'audit_log row % is sealed: it cannot be changed', OLD.id
                USING ERRCODE = 'restrict_violation';
        END IF;
        IF {' OR '.join(f'NEW.{c} IS NULL' for c in _CHAIN)}
           OR {' OR '.join(f'NEW.{c} IS DISTINCT FROM OLD.{c}' for c in _CONTENT)} THEN
            RAISE EXCEPTION 'audit_log row % can only be sealed: chain_seq, prev_hash and hash set, nothing else changed',
                            OLD.id
                USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()
    """,
    """
    CREATE FUNCTION audit_checkpoints_kept() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit checkpoint #% cannot be changed or deleted: signed checkpoints are kept as written',
                        OLD.chain_seq
            USING ERRCODE = 'restrict_violation';
    END
    $$
    """,
    """
    CREATE TRIGGER audit_checkpoints_kept BEFORE UPDATE OR DELETE ON audit_checkpoints
        FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_kept()
    """,
]
_PG_DOWN = [
    "DROP TRIGGER audit_checkpoints_kept ON audit_checkpoints",
    "DROP FUNCTION audit_checkpoints_kept()",
    "DROP TRIGGER audit_log_append_only ON audit_log",
    "DROP FUNCTION audit_log_append_only()",
]

# SQLite's RAISE takes a literal message; ABORT undoes the statement, and the driver reports an
# integrity error, as PostgreSQL's restrict_violation.
_SQLITE = [
    """
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN
        SELECT RAISE(ABORT, 'audit_log rows cannot be deleted: the audit trail is append-only');
    END
    """,
    f"""
    CREATE TRIGGER audit_log_seal_only BEFORE UPDATE ON audit_log
    WHEN {' OR '.join(f'OLD.{c} IS NOT NULL' for c in _CHAIN)}
         OR {' OR '.join(f'NEW.{c} IS NULL' for c in _CHAIN)}
         OR {' OR '.join(f'NEW.{c} IS NOT OLD.{c}' for c in _CONTENT)}
    BEGIN
        SELECT RAISE(ABORT, 'audit_log rows can only be sealed, once: a sealed row cannot be changed');
    END
    """,
    """
    CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
    BEGIN
        SELECT RAISE(ABORT, 'audit checkpoints cannot be changed: signed checkpoints are kept as written');
    END
    """,
    """
    CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
    BEGIN
        SELECT RAISE(ABORT, 'audit checkpoints cannot be deleted: signed checkpoints are kept as written');
    END
    """,
]
_SQLITE_DOWN = [
    "DROP TRIGGER audit_checkpoints_no_delete",
    "DROP TRIGGER audit_checkpoints_no_update",
    "DROP TRIGGER audit_log_seal_only",
    "DROP TRIGGER audit_log_no_delete",
]


def _dialect() -> str:
    name = op.get_bind().dialect.name
    if name not in ('postgresql', 'sqlite'):
        raise NotImplementedError(f'0015: no audit triggers for {name}')
    return name


def upgrade() -> None:
    op.add_column('audit_checkpoints', sa.Column('prev_chain_seq', sa.BigInteger(), nullable=True))
    op.add_column('audit_checkpoints', sa.Column('prev_hash', sa.String(length=64), nullable=True))
    for statement in _PG if _dialect() == 'postgresql' else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    for statement in _PG_DOWN if _dialect() == 'postgresql' else _SQLITE_DOWN:
        op.execute(statement)
    with op.batch_alter_table('audit_checkpoints') as batch:  # SQLite drops columns by copying the table
        batch.drop_column('prev_hash')
        batch.drop_column('prev_chain_seq')

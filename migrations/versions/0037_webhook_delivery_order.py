"""webhook deliveries: each right's queue, in the order it was queued

Review 171, finding 1: a subscription got two events of one change (``release.revoked`` then
``release.transfer.cancelled``, one time) in the order of their deliveries' random ids, and a later event
of a right went while an earlier one waited for a retry. ``release_id`` (the right the event is of) and
``ordinal`` (the order the delivery was queued in: a sequence on PostgreSQL, the rowid on SQLite, set by
a trigger) let the dispatcher send a right's deliveries to an endpoint in order, one after the other.

``ix_webhook_deliveries_queue`` (subscription_id, next_attempt_at, ordinal) replaces 0030's
``ix_webhook_deliveries_pending`` (subscription_id, next_attempt_at, id): the claim's probe per
subscription, ties by the order queued; ``ix_webhook_deliveries_right_queue`` (subscription_id,
release_id, ordinal) finds what is queued before a delivery of the same right. Both partial on pending.

The rows that may still be sent (pending, dead, withheld: a dead letter may be redelivered) get their right
from their payload and an ordinal below every new one (negative, by their created_at then id); rows
finished keep both null. PostgreSQL: the columns and the sequence in the migration's transaction (no
rewrite: no default on the existing rows), then, outside it, the backfill (one statement, row locks only)
and the indexes built CONCURRENTLY, as 0030's (a leftover invalid index of either name dropped first);
the old index dropped once the new one is there. SQLite: the same, plainly.

Revision ID: 0037
Revises: 0036
Create Date: 2026-11-25 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0037'
down_revision = '0036'
branch_labels = None
depends_on = None

_TABLE = 'webhook_deliveries'
_SEQ = 'webhook_deliveries_ordinal_seq'
_TRIGGER = 'webhook_deliveries_ordinal'
_OLD = 'ix_webhook_deliveries_pending'
_NEW = {
    'ix_webhook_deliveries_queue': ['subscription_id', 'next_attempt_at', 'ordinal'],
    'ix_webhook_deliveries_right_queue': ['subscription_id', 'release_id', 'ordinal'],
}
_PENDING = "status = 'pending'"
# The rows that may still be sent, not yet numbered (a rerun after a failure numbers none twice).
_BACKFILL_PG = """
UPDATE webhook_deliveries d SET ordinal = o.n - o.total - 1,
       release_id = CASE WHEN jsonb_typeof(d.payload -> 'release_id') = 'string'
                         THEN CAST(d.payload ->> 'release_id' AS uuid) END
FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n, count(*) OVER () AS total
      FROM webhook_deliveries WHERE status IN ('pending', 'dead', 'withheld') AND ordinal IS NULL) o
WHERE d.id = o.id
"""

# sa.Uuid keeps a UUID on SQLite as 32 hex digits; the payload holds it with its dashes.
_BACKFILL_SQLITE = """
UPDATE webhook_deliveries SET ordinal = o.n - o.total - 1,
       release_id = lower(replace(json_extract(webhook_deliveries.payload, '$.release_id'), '-', ''))
FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n, count(*) OVER () AS total
      FROM webhook_deliveries WHERE status IN ('pending', 'dead', 'withheld') AND ordinal IS NULL) AS o
WHERE webhook_deliveries.id = o.id
"""

# The rowid: the order rows were inserted in (SQLite's writers are serialised, BEGIN IMMEDIATE), above
# every row's there, and never changed.
_ORDINAL_SQLITE = """
CREATE TRIGGER webhook_deliveries_ordinal AFTER INSERT ON webhook_deliveries WHEN NEW.ordinal IS NULL
BEGIN
    UPDATE webhook_deliveries SET ordinal = NEW.rowid WHERE rowid = NEW.rowid;
END
"""


def upgrade() -> None:
    op.add_column(_TABLE, sa.Column('release_id', sa.Uuid(), nullable=True))
    op.add_column(_TABLE, sa.Column('ordinal', sa.BigInteger(), nullable=True))
    if op.get_bind().dialect.name != 'postgresql':
        op.execute(_BACKFILL_SQLITE)
        op.execute(_ORDINAL_SQLITE)
        for name, columns in _NEW.items():
            op.create_index(name, _TABLE, columns, sqlite_where=sa.text(_PENDING))
        op.drop_index(_OLD, table_name=_TABLE)
        return
    op.execute(f'CREATE SEQUENCE {_SEQ} OWNED BY {_TABLE}.ordinal')
    op.execute(f"ALTER TABLE {_TABLE} ALTER COLUMN ordinal SET DEFAULT nextval('{_SEQ}')")
    with op.get_context().autocommit_block():
        op.execute('SET statement_timeout = 0')
        op.execute(_BACKFILL_PG)
        for name, columns in _NEW.items():
            op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS {name}')
            op.create_index(name, _TABLE, columns, postgresql_where=sa.text(_PENDING), postgresql_concurrently=True)
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS {_OLD}')
        op.execute('RESET statement_timeout')


def downgrade() -> None:
    columns = ['subscription_id', 'next_attempt_at', 'id']
    if op.get_bind().dialect.name != 'postgresql':
        op.create_index(_OLD, _TABLE, columns, sqlite_where=sa.text(_PENDING))
        for name in _NEW:
            op.drop_index(name, table_name=_TABLE)
        op.execute(f'DROP TRIGGER IF EXISTS {_TRIGGER}')
        with op.batch_alter_table(_TABLE) as batch:  # SQLite drops a column by copying the table
            batch.drop_column('ordinal')
            batch.drop_column('release_id')
        return
    with op.get_context().autocommit_block():
        op.execute('SET statement_timeout = 0')
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS {_OLD}')
        op.create_index(_OLD, _TABLE, columns, postgresql_where=sa.text(_PENDING), postgresql_concurrently=True)
        for name in _NEW:
            op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS {name}')
        op.execute('RESET statement_timeout')
    op.drop_column(_TABLE, 'ordinal')  # and its sequence, which it owns
    op.drop_column(_TABLE, 'release_id')

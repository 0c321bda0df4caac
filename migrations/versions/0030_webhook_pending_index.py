"""webhook deliveries: each subscription's pending deliveries, in order

``ix_webhook_deliveries_pending`` (webhook review, finding 3): a subscription's pending deliveries by
``next_attempt_at`` and id, partial (``status = 'pending'``), on PostgreSQL and SQLite. The dispatcher's
claim takes each active subscription's earliest due delivery through it, one probe per subscription (a
LATERAL subquery on PostgreSQL), where a window over every due row read and sorted the whole backlog at
each claim (99 ms at 100 000 due rows, 343 ms at 500 000; loadtests/RESULTS.md "Webhooks"); closing a
subscription cancels its queue through it. The predicate is quaygate.schema's WEBHOOK_PENDING_SQL at
this revision; the queries name 'pending' literally, so that a generic plan may use the index.

Built CONCURRENTLY on PostgreSQL, outside the migration's transaction, as 0029's are (review 141, finding
4): a plain CREATE INDEX holds a SHARE lock on webhook_deliveries for the whole build, and every publish
(a gate commit's, in the gate move's transaction) would wait for it. A build that failed half-way leaves
an invalid index of the name: it is dropped first, so running the migration again builds it anew. The
session's statement_timeout is lifted for the build. SQLite: a plain CREATE INDEX, as before.

Revision ID: 0030
Revises: 0028
Create Date: 2026-12-11 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0030'
down_revision = '0028'
branch_labels = None
depends_on = None

_INDEX = 'ix_webhook_deliveries_pending'
_PENDING = "status = 'pending'"


def upgrade() -> None:
    columns = ['subscription_id', 'next_attempt_at', 'id']
    if op.get_bind().dialect.name != 'postgresql':
        op.create_index(_INDEX, 'webhook_deliveries', columns, sqlite_where=sa.text(_PENDING))
        return
    with op.get_context().autocommit_block():
        op.execute('SET statement_timeout = 0')
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}')
        op.create_index(_INDEX, 'webhook_deliveries', columns, postgresql_where=sa.text(_PENDING),
                        postgresql_concurrently=True)
        op.execute('RESET statement_timeout')


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        op.drop_index(_INDEX, table_name='webhook_deliveries')
        return
    with op.get_context().autocommit_block():
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}')

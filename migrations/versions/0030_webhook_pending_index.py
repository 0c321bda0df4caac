"""webhook deliveries: each subscription's pending deliveries, in order

``ix_webhook_deliveries_pending`` (webhook review, finding 3): a subscription's pending deliveries by
``next_attempt_at`` and id, partial (``status = 'pending'``), on PostgreSQL and SQLite. The dispatcher's
claim takes each active subscription's earliest due delivery through it, one probe per subscription (a
LATERAL subquery on PostgreSQL), where a window over every due row read and sorted the whole backlog at
each claim (99 ms at 100 000 due rows, 343 ms at 500 000; loadtests/RESULTS.md "Webhooks"); closing a
subscription cancels its queue through it. The predicate is quaygate.schema's WEBHOOK_PENDING_SQL at
this revision; the queries name 'pending' literally, so that a generic plan may use the index.

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
    op.create_index(_INDEX, 'webhook_deliveries', ['subscription_id', 'next_attempt_at', 'id'],
                    postgresql_where=sa.text(_PENDING), sqlite_where=sa.text(_PENDING))


def downgrade() -> None:
    op.drop_index(_INDEX, table_name='webhook_deliveries')

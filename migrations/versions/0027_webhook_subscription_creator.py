"""webhook subscriptions: who made them

``webhook_subscriptions.created_by_client_id`` and ``created_by_person_id`` (webhook review, finding 1):
the client that made a subscription, and the person when one made it in a company's console. A
subscription a person made is closed when his acting role in that organisation ends (removed, or
expired by the sweep) or when he is suspended (release_service.services.webhooks ``creator_left``),
so that a dispatcher whose role lapsed does not keep receiving the company's events at a server of his.
Both NULL for the subscriptions made before this revision: made by a machine client or by someone
unknown, closed by nobody's departure.

No foreign key to ``persons``: SQLite adds one by copying the table, and ``webhook_deliveries`` names it.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-10 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('webhook_subscriptions', sa.Column('created_by_client_id', sa.String(100), nullable=True))
    op.add_column('webhook_subscriptions', sa.Column('created_by_person_id', sa.Uuid(), nullable=True))
    op.create_index(op.f('ix_webhook_subscriptions_created_by_person_id'), 'webhook_subscriptions',
                    ['created_by_person_id'])


def downgrade() -> None:
    op.drop_index(op.f('ix_webhook_subscriptions_created_by_person_id'), table_name='webhook_subscriptions')
    # ALTER TABLE ... DROP COLUMN on SQLite too (3.35 and later), not a batch's copy of the table, which
    # the deliveries' foreign key would refuse to drop once they name a subscription.
    op.drop_column('webhook_subscriptions', 'created_by_person_id')
    op.drop_column('webhook_subscriptions', 'created_by_client_id')

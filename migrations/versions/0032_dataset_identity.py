"""dataset identity: the id of the dataset this database holds, which one Redis database serves

What quaygate keeps in Redis is named by terminal, badge, container and token, not by database: two
deployments given one Redis database answered each other's gates from each other's copies. The database
now names its dataset (one row, its id made on first read: quaygate/identity_of_dataset.py), and every
Redis connection's greeting claims the Redis database for it or is refused (quaygate/dataset.py
``ForeignRedis``). No row is written here: a database copied whole (a restore, a replica) keeps its id,
and one made with ``metadata.create_all`` gets its own on first read, as a migrated one does.

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-14 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0032'
down_revision = '0031'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'dataset_identity',
        sa.Column('singleton', sa.Integer, primary_key=True, autoincrement=False),
        sa.Column('id', sa.String(36), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('dataset_identity')

"""served with Redis: a database whose servers share Redis needs Redis in every process that opens it

``dataset_identity.redis_since`` (review 169, finding 1): set when a server that shares Redis first takes
the database's serving lease (quaygate/solo.py), cleared only by ``quaygate redis release`` while no server
serves it. While it is set, a process without QUAYGATE_REDIS_URL (a CLI command, a server) refuses to
start: its changes would not reach the copies the servers keep in Redis (a badge blocked from a shell
without the variable was allowed at the gates on their copy). NULL here: a database already served with
Redis is marked by its servers' next start.

Revision ID: 0035
Revises: 0034
Create Date: 2026-11-25 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0035'
down_revision = '0034'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('dataset_identity', sa.Column('redis_since', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('dataset_identity') as batch:  # SQLite drops a column by copying the table
        batch.drop_column('redis_since')

"""event seq: the seq of each right's last event kept on the right (issue 5, gate commit hot path)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-21 20:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('releases', sa.Column('event_seq', sa.Integer(), server_default='0', nullable=False))
    op.execute(
        "UPDATE releases SET event_seq = (SELECT coalesce(max(e.seq), 0) FROM release_events e"
        " WHERE e.release_id = releases.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table('releases') as batch:
        batch.drop_column('event_seq')

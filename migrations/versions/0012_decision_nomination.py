"""decision nomination: the nomination a gate decision judged, kept on the decision (issue 5, overrides)

An override lets a refused truck in under the nomination its decision judged, or not at all. It used to
compare the nomination's time with the decision's, which a nomination whose clock was read before the
decision but that committed after it passes: the nomination itself is kept now.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-22 23:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.add_column('gate_decisions', sa.Column('nomination', JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('gate_decisions') as batch:
        batch.drop_column('nomination')

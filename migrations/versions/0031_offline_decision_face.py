"""offline decision face: the face evidence an offline gate decision weighed, kept on it (issue 6)

An adapter's offline decision reached the service without the face evidence it weighed, so an offline
allow on a claimed match read like one with no face at all. The adapter now reports it (``face``, as a
verify decision's row keeps it: ``gate.FaceRecord``, migration 0025) and the reconcile keeps it with the
decision. None on decisions reconciled before this revision, and from an adapter from before.

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-13 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0031'
down_revision = '0030'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.add_column('gate_offline_decisions', sa.Column('face', JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('gate_offline_decisions') as batch:
        batch.drop_column('face')

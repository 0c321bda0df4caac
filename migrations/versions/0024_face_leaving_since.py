"""face retention: since when a person with a face template has had no badge and no membership

``face_templates.leaving_since`` (review 131, finding 4): set by the retention sweep when it first sees
the person with no badge in use and no membership in force, cleared when he has one again or is
enrolled anew; a template whose person has been so for more than ``QUAYGATE_FACE_RETENTION_DAYS_AFTER_LEAVING``
is withdrawn, audited (identity.face.retention). Indexed for that sweep.

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-24 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('face_templates', sa.Column('leaving_since', sa.DateTime(timezone=True), nullable=True))
    op.create_index(op.f('ix_face_templates_leaving_since'), 'face_templates', ['leaving_since'])


def downgrade() -> None:
    op.drop_index(op.f('ix_face_templates_leaving_since'), table_name='face_templates')
    with op.batch_alter_table('face_templates') as batch:  # SQLite drops a column by copying the table
        batch.drop_column('leaving_since')

"""face replacement anchor: the face a chain of replacements is judged against

``face_templates.anchor_template_id`` and ``anchor_sealed`` (review 154, finding 1): when the template was
enrolled as a retake of the face before it (no reason asked, close to it), the face of the last enrolment
judged on its own (the first one, or the last made as another face with a reason), sealed as the templates
are (associated data its own person and template ids); both NULL when the template is that face itself. A
new enrolment is compared with it too (identity.face.service). In the template's row, so it is erased with
the template by a withdrawal, the retention sweep or an erasure.

Revision ID: 0034
Revises: 0033
Create Date: 2026-12-16 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0034'
down_revision = '0033'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('face_templates', sa.Column('anchor_template_id', sa.Uuid(), nullable=True))
    op.add_column('face_templates', sa.Column('anchor_sealed', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('face_templates') as batch:  # SQLite drops a column by copying the table
        batch.drop_column('anchor_sealed')
        batch.drop_column('anchor_template_id')

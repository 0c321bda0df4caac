"""face templates: one sealed 128-number template per person, no image (issue 6)

Revision ID: 0008
Revises: 0006_gate_verify
Create Date: 2026-11-21 16:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'face_templates',
        sa.Column('person_id', sa.Uuid(), nullable=False),
        sa.Column('template_id', sa.Uuid(), nullable=False),
        sa.Column('sealed', sa.Text(), nullable=False),
        sa.Column('key_id', sa.String(length=16), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('face_px', sa.Integer(), nullable=False),
        sa.Column('sharpness', sa.Float(), nullable=False),
        sa.Column('enrolled_by', sa.String(length=100), nullable=False),
        sa.Column('enrolled_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['person_id'], ['persons.id'], name=op.f('fk_face_templates_person_id_persons')),
        sa.PrimaryKeyConstraint('person_id', name=op.f('pk_face_templates')),
        sa.UniqueConstraint('template_id', name=op.f('uq_face_templates_template_id')),
    )


def downgrade() -> None:
    op.drop_table('face_templates')

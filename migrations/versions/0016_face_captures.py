"""face captures: keyed digests of the captures matched for a person, to refuse a replay (issue 6)

``face_captures``: one row per capture matched, keyed by the person and the capture's HMAC-SHA256 under
a key derived from the data key (identity.face.store.CaptureStore); what it was used for (a gate's
terminal and request_id, or a step-up's session) and when. Never the image, never its plain hash.
Rows older than the replay window (``QUAYGATE_FACE_REPLAY_DAYS``) are pruned by a background loop.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'face_captures',
        sa.Column('person_id', sa.Uuid(), nullable=False),
        sa.Column('digest', sa.LargeBinary(length=32), nullable=False),
        sa.Column('used_for', sa.String(length=200), nullable=False),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['person_id'], ['persons.id'], name=op.f('fk_face_captures_person_id_persons')),
        sa.PrimaryKeyConstraint('person_id', 'digest', name=op.f('pk_face_captures')),
    )
    op.create_index(op.f('ix_face_captures_seen_at'), 'face_captures', ['seen_at'])


def downgrade() -> None:
    op.drop_index(op.f('ix_face_captures_seen_at'), table_name='face_captures')
    op.drop_table('face_captures')

"""decision face: the face evidence a gate decision weighed, kept on the decision (review 131, finding 1)

A gate client could claim a face match and have the decision take it for one. The terminal's policy now
says whether its local matcher is trusted (``face_match_results``, inside the policy's JSON: no schema
change for it), and every decision keeps the face evidence it weighed (``gate.FaceRecord``): its kind
(``none``, ``image`` matched by the service, ``match_result`` claimed by a local matcher), the score or
distance, matched, and the min score or tolerance applied, so an allow on a claimed match reads apart
from one on the service's own match. None on decisions recorded before this revision.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-12 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.add_column('gate_decisions', sa.Column('face', JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('gate_decisions') as batch:
        batch.drop_column('face')

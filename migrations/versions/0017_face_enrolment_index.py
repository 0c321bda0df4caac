"""face enrolment index: a person's face enrolment entries on the audit trail, read at every verification

``ix_audit_log_face_enrolment`` on ``audit_log (subject, id)`` where the kind is one of the face enrolment
kinds (``quaygate.schema.FACE_ENROLMENT_KINDS_SQL``): the face service reads a person's enrolment entries
to know which enrolment is current (identity.domain.face_enrolment, review 92), and the subject index
alone would walk every login, token and verification entry that names him. An index only: no table is
rebuilt, so the audit tables' triggers (0015) stay as they are.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

# As quaygate.schema.FACE_ENROLMENT_KINDS_SQL at this revision (a migration does not import the live schema).
_KINDS = ("kind IN ('identity.face.enrolled', 'identity.face.enrolment.upgraded', "
          "'identity.face.withdrawn')")


def upgrade() -> None:
    op.create_index('ix_audit_log_face_enrolment', 'audit_log', ['subject', 'id'], unique=False,
                    postgresql_where=sa.text(_KINDS), sqlite_where=sa.text(_KINDS))


def downgrade() -> None:
    op.drop_index('ix_audit_log_face_enrolment', table_name='audit_log')

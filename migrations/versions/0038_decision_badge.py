"""decision badge: the badge a gate decision found and its holder, kept on the decision (review 174, finding 1)

A decision row kept the request, the reasons, the right, the nomination and the face, but not the badge read
or whose it was: a badge reported stolen, or another person's, tried at the gate left no trace port security
could find. Every decision now keeps the badge the read found (``badge_id``: the badge office's id, never the
number or card UID read) and its holder as found (``badge_holder_id``: a person id); both None when no badge
was read or the read found none, and on decisions recorded before this revision. No foreign keys: the row is
the gate's record of what it saw, as the nomination it judged is (``nomination``).

Revision ID: 0038
Revises: 0037
Create Date: 2026-11-25 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0038'
down_revision = '0037'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: on PostgreSQL a change of the catalogue alone, however many decisions there are.
    op.add_column('gate_decisions', sa.Column('badge_id', sa.Uuid(), nullable=True))
    op.add_column('gate_decisions', sa.Column('badge_holder_id', sa.Uuid(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('gate_decisions') as batch:
        batch.drop_column('badge_holder_id')
        batch.drop_column('badge_id')

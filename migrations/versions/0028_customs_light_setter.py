"""release rights: which customs organisation set the customs light

``releases.customs_set_by`` (review of the release right's lights, finding 1): the customs organisation
that set the customs light. While the light is a hold (red or scan) only that organisation changes it,
and its green after a scan, or after a red it set, needs a reason (release_service.domain.release
``set_light``). NULL for the rows before this revision, and for the red a right is issued with: anyone of
customs may change it, as before.

No foreign key to ``organisations``: SQLite adds one by copying the table, which every table of the right
names.

Revises 0029, not 0027: 0029 (the audit actor index) was written on 0027 before this one, and one head
is kept (``alembic upgrade head``). The numbers are names here, not the order.

Revision ID: 0028
Revises: 0029
Create Date: 2026-12-10 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0028'
down_revision = '0029'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('releases', sa.Column('customs_set_by', sa.Uuid(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN on SQLite too (3.35 and later), not a batch's copy of the table, which the
    # foreign keys of the right's other tables would refuse to drop.
    op.drop_column('releases', 'customs_set_by')

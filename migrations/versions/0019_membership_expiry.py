"""membership expiry: a role given until a date (security review; Keycloak's time-bound role grant)

``memberships.valid_until``: when the role stops counting (NULL: until removed). Read at the time of use
(tokens, nominations, role checks: quaygate.schema.membership_in_force) and swept by a background loop
that applies a removal's consequences and deletes the row (identity.memberships.expire_due). Indexed
for that sweep.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('memberships', sa.Column('valid_until', sa.DateTime(timezone=True), nullable=True))
    op.create_index(op.f('ix_memberships_valid_until'), 'memberships', ['valid_until'])


def downgrade() -> None:
    op.drop_index(op.f('ix_memberships_valid_until'), table_name='memberships')
    with op.batch_alter_table('memberships') as batch:  # SQLite drops a column by copying the table
        batch.drop_column('valid_until')

"""the passkey that opened a login session: ``login_sessions.credential_id`` (review 122, finding 1)

Removing a passkey ends every session it opened, the remover's own included: a thief holding a session
opened by the owner's passkey cannot remove it and stay logged in (identity.authn.service ``remove``).
NULL for a session opened upstream (itsme) and for those opened before this revision (they are ended
by the removal only when they are not the remover's, as before).

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('login_sessions', sa.Column('credential_id', sa.String(1400), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('login_sessions') as batch:  # SQLite drops a column by copying the table
        batch.drop_column('credential_id')

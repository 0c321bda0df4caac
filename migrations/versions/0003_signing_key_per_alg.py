"""signing keys: at most one active token key per algorithm (RS256, PS256, ES256)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

# A partial unique index, on PostgreSQL and SQLite alike (quaygate/schema.py signing_keys).
_ACTIVE_SIG = "status = 'active' AND use = 'sig'"


def upgrade() -> None:
    op.create_index('ix_signing_keys_one_active_per_alg', 'signing_keys', ['alg'], unique=True,
                    postgresql_where=sa.text(_ACTIVE_SIG), sqlite_where=sa.text(_ACTIVE_SIG))


def downgrade() -> None:
    op.drop_index('ix_signing_keys_one_active_per_alg', table_name='signing_keys')

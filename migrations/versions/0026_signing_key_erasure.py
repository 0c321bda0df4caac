"""signing keys: a retired or revoked token key's private half is erased

``signing_keys.private_enc`` may be NULL (review 132, finding 6): a token key that is retired (its
publication over) or revoked (``quaygate keys revoke``) keeps only its public half, which is all a late
gate pass's check needs (identity.keys ``rotated_out``). Status ``revoked`` is new; the column is text.

Revision ID: 0026
Revises: 0025
Create Date: 2026-11-25 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None

_INDEX = 'ix_signing_keys_one_active_per_alg'
_ACTIVE_SIG = "status = 'active' AND use = 'sig'"  # migration 0003


def _alter(nullable: bool) -> None:
    # SQLite alters a column by copying the table: the partial index is made again after it, as 0003 made it.
    op.drop_index(_INDEX, table_name='signing_keys')
    with op.batch_alter_table('signing_keys') as batch:
        batch.alter_column('private_enc', existing_type=sa.Text(), nullable=nullable)
    op.create_index(_INDEX, 'signing_keys', ['alg'], unique=True,
                    postgresql_where=sa.text(_ACTIVE_SIG), sqlite_where=sa.text(_ACTIVE_SIG))


def upgrade() -> None:
    _alter(nullable=True)


def downgrade() -> None:
    # An erased private half stays erased: an empty string, which opens under no key.
    op.execute("UPDATE signing_keys SET private_enc = '' WHERE private_enc IS NULL")
    _alter(nullable=False)

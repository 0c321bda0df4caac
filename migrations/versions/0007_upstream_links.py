"""brokered login (issue 6 part 1): upstream account links and our RSA encryption keys

Revision ID: 0007
Revises: 0006_gate_verify
Create Date: 2026-11-21 17:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0007'
down_revision = '0006_gate_verify'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')
_ACTIVE = "status = 'active'"


def upgrade() -> None:
    op.create_table(
        'upstream_links',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('issuer', sa.String(length=255), nullable=False),
        sa.Column('sub', sa.String(length=255), nullable=False),
        sa.Column('person_id', sa.Uuid(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('replaced_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['person_id'], ['persons.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('issuer', 'sub', name='uq_upstream_links_issuer_sub'),
    )
    op.create_index('ix_upstream_links_person_id', 'upstream_links', ['person_id'])
    op.create_index('ix_upstream_links_one_active', 'upstream_links', ['issuer', 'person_id'], unique=True,
                    postgresql_where=sa.text(_ACTIVE), sqlite_where=sa.text(_ACTIVE))
    op.create_table(
        'encryption_keys',
        sa.Column('kid', sa.String(length=64), nullable=False),
        sa.Column('alg', sa.String(length=20), nullable=False),
        sa.Column('public_jwk', JSON, nullable=False),
        sa.Column('private_enc', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('publish_until', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('kid'),
    )
    op.create_index('ix_encryption_keys_one_active', 'encryption_keys', ['alg'], unique=True,
                    postgresql_where=sa.text(_ACTIVE), sqlite_where=sa.text(_ACTIVE))


def downgrade() -> None:
    op.drop_index('ix_encryption_keys_one_active', table_name='encryption_keys')
    op.drop_table('encryption_keys')
    op.drop_index('ix_upstream_links_one_active', table_name='upstream_links')
    op.drop_index('ix_upstream_links_person_id', table_name='upstream_links')
    op.drop_table('upstream_links')

"""port bans: the national register's bans in force and the feed state (issue 4)

Revision ID: 0005_port_bans
Revises: 0004_badges
Create Date: 2026-11-21 14:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005_port_bans'
down_revision = '0004_badges'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # persons.national_id_hash exists since 0001 (nullable, unique): the ban subject hash matches it.
    op.create_table(
        'port_bans',
        sa.Column('register', sa.String(length=64), nullable=False),
        sa.Column('reference', sa.String(length=100), nullable=False),
        sa.Column('subject_hash', sa.String(length=64), nullable=False),
        sa.Column('scope', sa.String(length=400), nullable=False),
        sa.Column('banned_from', sa.DateTime(timezone=True), nullable=False),
        sa.Column('banned_until', sa.DateTime(timezone=True), nullable=False),
        sa.Column('feed_sequence', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('register', 'reference', name=op.f('pk_port_bans')),
    )
    op.create_index(op.f('ix_port_bans_subject_hash'), 'port_bans', ['subject_hash'], unique=False)
    op.create_table(
        'ban_feed_state',
        sa.Column('register', sa.String(length=64), nullable=False),
        sa.Column('sequence', sa.BigInteger(), nullable=False),
        sa.Column('issued_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('loaded_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('register', name=op.f('pk_ban_feed_state')),
    )


def downgrade() -> None:
    op.drop_table('ban_feed_state')
    op.drop_index(op.f('ix_port_bans_subject_hash'), table_name='port_bans')
    op.drop_table('port_bans')

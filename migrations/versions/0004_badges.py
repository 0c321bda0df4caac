"""badges: status reason, history (badge_status_events) and activation per terminal (issue 4)

Revision ID: 0004_badges
Revises: 0003
Create Date: 2026-11-21 14:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004_badges'
down_revision = '0003'
branch_labels = None
depends_on = None

_LIVE = "withdrawn_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table('badges') as batch:
        batch.add_column(sa.Column('status_reason', sa.String(length=500), nullable=True))
        batch.add_column(sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('issued_by', sa.String(length=100), nullable=True))
    op.create_table('badge_status_events',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('badge_id', sa.Uuid(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('from_status', sa.String(length=16), nullable=True),
    sa.Column('to_status', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['badge_id'], ['badges.id'], name=op.f('fk_badge_status_events_badge_id_badges')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_badge_status_events')),
    sa.UniqueConstraint('badge_id', 'seq', name='uq_badge_status_events_badge_seq')
    )
    op.create_table('badge_activations',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('badge_id', sa.Uuid(), nullable=False),
    sa.Column('terminal_code', sa.String(length=32), nullable=False),
    sa.Column('activated_by', sa.String(length=100), nullable=False),
    sa.Column('activated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('withdrawn_by', sa.String(length=100), nullable=True),
    sa.Column('withdrawn_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('withdraw_reason', sa.String(length=500), nullable=True),
    sa.ForeignKeyConstraint(['badge_id'], ['badges.id'], name=op.f('fk_badge_activations_badge_id_badges')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_badge_activations'))
    )
    op.create_index(op.f('ix_badge_activations_badge_id'), 'badge_activations', ['badge_id'], unique=False)
    op.create_index('ix_badge_activations_live', 'badge_activations', ['badge_id', 'terminal_code'], unique=True,
                    postgresql_where=sa.text(_LIVE), sqlite_where=sa.text(_LIVE))


def downgrade() -> None:
    op.drop_index('ix_badge_activations_live', table_name='badge_activations')
    op.drop_index(op.f('ix_badge_activations_badge_id'), table_name='badge_activations')
    op.drop_table('badge_activations')
    op.drop_table('badge_status_events')
    with op.batch_alter_table('badges') as batch:
        batch.drop_column('issued_by')
        batch.drop_column('updated_at')
        batch.drop_column('status_reason')

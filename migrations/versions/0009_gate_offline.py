"""gate offline: offline gate decisions reconciled from the adapters, with their flags (issue 5)

Revision ID: 0009_gate_offline
Revises: 0006_gate_verify
Create Date: 2026-11-22 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0009_gate_offline'
down_revision = '0008'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'gate_offline_decisions',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('terminal', sa.String(length=32), nullable=False),
        sa.Column('request_id', sa.String(length=100), nullable=False),
        sa.Column('client_id', sa.String(length=100), nullable=False),
        sa.Column('lane', sa.String(length=32), nullable=False),
        sa.Column('direction', sa.String(length=3), nullable=False),
        sa.Column('mode', sa.String(length=6), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('decision', sa.String(length=6), nullable=False),
        sa.Column('reasons', JSON, nullable=False),
        sa.Column('basis', sa.String(length=16), nullable=False),
        sa.Column('release_id', sa.Uuid(), nullable=True),
        sa.Column('pass_id', sa.String(length=64), nullable=True),
        sa.Column('ban_list_age_seconds', sa.Integer(), nullable=True),
        sa.Column('verdict', sa.String(length=24), nullable=False),
        sa.Column('flag', sa.String(length=32), nullable=True),
        sa.Column('other_decision_id', sa.Uuid(), nullable=True),
        sa.Column('response', JSON, nullable=False),
        sa.Column('observed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('reconciled_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_gate_offline_decisions')),
        sa.UniqueConstraint('terminal', 'request_id', name='uq_gate_offline_decisions_terminal_request'),
    )
    op.create_index(op.f('ix_gate_offline_decisions_release_id'), 'gate_offline_decisions', ['release_id'],
                    unique=False)
    op.create_index(op.f('ix_gate_offline_decisions_flag'), 'gate_offline_decisions', ['flag'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_gate_offline_decisions_flag'), table_name='gate_offline_decisions')
    op.drop_index(op.f('ix_gate_offline_decisions_release_id'), table_name='gate_offline_decisions')
    op.drop_table('gate_offline_decisions')

"""gate verify: decisions (idempotent by terminal and request_id), overrides, terminal policies (issue 5)

Revision ID: 0006_gate_verify
Revises: 0005_port_bans
Create Date: 2026-11-21 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0006_gate_verify'
down_revision = '0005_port_bans'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'gate_decisions',
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
        sa.Column('release_id', sa.Uuid(), nullable=True),
        sa.Column('container_number', sa.String(length=11), nullable=True),
        sa.Column('committed', sa.Boolean(), nullable=False),
        sa.Column('response', JSON, nullable=False),
        sa.Column('observed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_gate_decisions')),
        sa.UniqueConstraint('terminal', 'request_id', name='uq_gate_decisions_terminal_request'),
    )
    op.create_index(op.f('ix_gate_decisions_release_id'), 'gate_decisions', ['release_id'], unique=False)
    op.create_index(op.f('ix_gate_decisions_decided_at'), 'gate_decisions', ['decided_at'], unique=False)
    op.create_table(
        'gate_overrides',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('decision_id', sa.Uuid(), nullable=False),
        sa.Column('release_id', sa.Uuid(), nullable=False),
        sa.Column('terminal', sa.String(length=32), nullable=False),
        sa.Column('client_id', sa.String(length=100), nullable=False),
        sa.Column('reason', sa.String(length=500), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['decision_id'], ['gate_decisions.id'],
                                name=op.f('fk_gate_overrides_decision_id_gate_decisions')),
        sa.ForeignKeyConstraint(['release_id'], ['releases.id'], name=op.f('fk_gate_overrides_release_id_releases')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_gate_overrides')),
        sa.UniqueConstraint('decision_id', name=op.f('uq_gate_overrides_decision_id')),
    )
    op.create_table(
        'terminal_policies',
        sa.Column('terminal_code', sa.String(length=32), nullable=False),
        sa.Column('policy', JSON, nullable=False),
        sa.Column('updated_by', sa.String(length=100), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('terminal_code', name=op.f('pk_terminal_policies')),
    )


def downgrade() -> None:
    op.drop_table('terminal_policies')
    op.drop_table('gate_overrides')
    op.drop_index(op.f('ix_gate_decisions_decided_at'), table_name='gate_decisions')
    op.drop_index(op.f('ix_gate_decisions_release_id'), table_name='gate_decisions')
    op.drop_table('gate_decisions')

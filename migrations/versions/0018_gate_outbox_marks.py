"""gate outbox marks: each adapter outbox's highest place, to see an earlier copy of it put back (review 92)

An adapter keeps its offline decisions in a sealed chain (gate_adapters/runtime/outbox.py rule 10); the
chain cannot see the whole file replaced by an earlier copy of itself. The adapter tells its chain's id and
head with every pass refresh and its place with every offline report:

``gate_outbox_marks``: one row per gate client and outbox chain: the highest sequence number told, whether
the adapter said its chain holds, when first and last told.
``gate_offline_decisions.outbox_id``, ``outbox_seq``: a reported decision's place (one place, two
decisions: the file went back and decided again).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'gate_outbox_marks',
        sa.Column('client_id', sa.String(length=100), nullable=False),
        sa.Column('outbox_id', sa.String(length=64), nullable=False),
        sa.Column('terminal', sa.String(length=32), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('intact', sa.Boolean(), nullable=False),
        sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('client_id', 'outbox_id', name=op.f('pk_gate_outbox_marks')),
    )
    op.add_column('gate_offline_decisions', sa.Column('outbox_id', sa.String(length=64), nullable=True))
    op.add_column('gate_offline_decisions', sa.Column('outbox_seq', sa.BigInteger(), nullable=True))
    op.create_index('ix_gate_offline_decisions_outbox', 'gate_offline_decisions',
                    ['client_id', 'outbox_id', 'outbox_seq'])


def downgrade() -> None:
    op.drop_index('ix_gate_offline_decisions_outbox', table_name='gate_offline_decisions')
    op.drop_column('gate_offline_decisions', 'outbox_seq')
    op.drop_column('gate_offline_decisions', 'outbox_id')
    op.drop_table('gate_outbox_marks')

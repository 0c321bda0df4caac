"""gate fact changes: what each committed change of the gate's facts touched, for every server to poll

``gate_fact_changes`` (review 169, finding 2): a process whose gate facts are in Redis writes a row in each
transaction that changes what a gate decision reads, just before its commit (its sequence number, an id,
when, the writer's transaction id, the generation names it touched). Every server's drainer polls it and
replaces those generations in Redis, so a writer that cannot reach Redis (a partition of one replica, a
paused Redis) still reaches the gates through PostgreSQL within about a second; before, the other servers
trusted their copies until the writer reached Redis again or the copies expired (600 s). Indexed by
transaction id (the poll) and by time (the sweep, which keeps an hour). Empty when made: a server that
starts replaces every generation anyway.

Revision ID: 0036
Revises: 0035
Create Date: 2026-11-25 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0036'
down_revision = '0035'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'gate_fact_changes',
        sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('txid', sa.BigInteger(), nullable=True),
        sa.Column('names', JSON, nullable=False),
        sa.PrimaryKeyConstraint('seq', name=op.f('pk_gate_fact_changes')),
    )
    op.create_index('ix_gate_fact_changes_txid', 'gate_fact_changes', ['txid'], unique=False)
    op.create_index('ix_gate_fact_changes_at', 'gate_fact_changes', ['at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_gate_fact_changes_at', table_name='gate_fact_changes')
    op.drop_index('ix_gate_fact_changes_txid', table_name='gate_fact_changes')
    op.drop_table('gate_fact_changes')

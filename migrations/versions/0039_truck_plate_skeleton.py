"""truck plate skeleton: the register finds every truck the gate could take for a plate (review 175, finding 1)

A nomination looked the register up by country and text together, but the gate compares a read without a
country on the text alone, and takes a confident read differing only in look-alike characters for the
nominated plate: a plate registered to another operator was nominated under another country (NL for BE),
or in a look-alike spelling (1A8C123 for 1ABC123), and that operator's truck gated in on it. Every truck now
keeps ``plate_skeleton``, its text with each look-alike character replaced by its set's representative
(release_service.domain.reads ``plate_skeleton``), indexed; a nomination looks trucks up by it. Required:
the rows there are filled here, and a row loaded later without it is refused rather than missed.

Revision ID: 0039
Revises: 0038
Create Date: 2026-11-25 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0039'
down_revision = '0038'
branch_labels = None
depends_on = None

# The rule as this revision fills it (release_service.domain.reads LOOKALIKE_SETS and ``plate_skeleton``,
# copied: a migration does not move with the code): each character to the lowest of its look-alike set.
_SETS = ("0ODQ", "1I", "2Z", "5S", "8B", "6G")
_REPRESENTATIVE = {ord(ch): min(group) for group in _SETS for ch in group}


def upgrade() -> None:
    op.add_column('trucks', sa.Column('plate_skeleton', sa.String(12), nullable=True))
    trucks = sa.table('trucks', sa.column('id', sa.Uuid()), sa.column('plate_text', sa.String(12)),
                      sa.column('plate_skeleton', sa.String(12)))
    conn = op.get_bind()
    for truck_id, text in conn.execute(sa.select(trucks.c.id, trucks.c.plate_text)).all():
        conn.execute(trucks.update().where(trucks.c.id == truck_id)
                     .values(plate_skeleton=text.translate(_REPRESENTATIVE)))
    with op.batch_alter_table('trucks') as batch:
        batch.alter_column('plate_skeleton', existing_type=sa.String(12), nullable=False)
    op.create_index('ix_trucks_plate_skeleton', 'trucks', ['plate_skeleton'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_trucks_plate_skeleton', table_name='trucks')
    with op.batch_alter_table('trucks') as batch:
        batch.drop_column('plate_skeleton')

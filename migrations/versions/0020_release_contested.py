"""a right another line tried to issue over: ``releases.contested_at`` (review 104)

A shipping line that issues a container and vessel call another line's live right already holds is
refused (SPEC.md: at most one live right per container and vessel call), and the right that holds the key
is marked contested: the gate answers ``review`` (``container_contested``) for it, so the first issuer of a
container, perhaps a line that has nothing to do with it, does not get it through the gate by being
first. Set once by that refusal (release_service/services/issue.py), read with the gate's facts.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('releases', sa.Column('contested_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('releases') as batch:  # SQLite drops a column by copying the table
        batch.drop_column('contested_at')

"""gate decisions: the partial index of those whose own face the service found another person's

``ix_gate_decisions_face_against`` (review 149, finding 5): a right's gate-in decisions whose face the service
found another person's (review 148's ``face_against``), by right and newest first, on PostgreSQL. Every
PostgreSQL read of rights (a gate commit, a cache miss, the gate passes, the loop's commit) takes the right's
last such decision with it (release_service/adapters/sqla/store.py ``_LAST_AGAINST``); through the index on
release_id alone (or the one on decided_at, read backwards) it read and judged every decision of the right, or
of the whole table, parsing its face JSON: 0.57 ms, then 253 ms after 200 000 check decisions on one right
(the reviewer's figures). Now one probe. The predicate is quaygate.schema's FACE_AGAINST_SQL at this revision,
which the probe writes out, constants and all, so that a generic plan may use the index.

Built CONCURRENTLY, outside the migration's transaction, as 0029's and 0030's are: a plain CREATE INDEX holds a
SHARE lock on gate_decisions for the whole build, and every gate decision would wait for it. A build that
failed half-way leaves an invalid index of the name: it is dropped first. The session's statement_timeout is
lifted for the build. SQLite: nothing (it reads the decisions as before).

Revision ID: 0033
Revises: 0032
Create Date: 2026-12-15 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0033'
down_revision = '0032'
branch_labels = None
depends_on = None

_INDEX = 'ix_gate_decisions_face_against'
# As quaygate.schema.FACE_AGAINST_SQL at this revision (a migration does not import the live schema).
_FACE_AGAINST = (
    "direction = 'in' AND CAST((face ->> 'kind') AS VARCHAR) = 'image' AND "
    "(CAST((face ->> 'unavailable') AS VARCHAR) = 'face_not_live' OR "
    "CAST((face ->> 'unavailable') AS VARCHAR) = 'face_replayed' OR "
    "CAST((face ->> 'distance') AS FLOAT) IS NOT NULL AND (CAST((face ->> 'matched') AS BOOLEAN) IS NOT true OR "
    "CAST((face ->> 'distance') AS FLOAT) > CAST((face ->> 'tolerance') AS FLOAT)))"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    with op.get_context().autocommit_block():
        op.execute('SET statement_timeout = 0')
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}')
        op.create_index(_INDEX, 'gate_decisions', ['release_id', sa.text('decided_at DESC'), 'id'],
                        postgresql_where=sa.text(_FACE_AGAINST), postgresql_concurrently=True)
        op.execute('RESET statement_timeout')


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    with op.get_context().autocommit_block():
        op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}')

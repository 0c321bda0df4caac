"""audit actor indexes: the audit search by actor reads only that actor's entries

``ix_audit_log_actor_person_id`` on ``audit_log ((actor ->> 'person_id'), id)`` and
``ix_audit_log_actor_client_id`` on ``audit_log ((actor ->> 'client_id'), id)``, on PostgreSQL (review of
the audit search, finding 5): the search's actor filter (identity.api.audit_search) was covered by no
index, so an actor matching nothing read the whole trail, about 0.3 s per million entries, holding a
pooled connection all along. The expressions are quaygate.schema's AUDIT_ACTOR_*_SQL at this revision.

Built CONCURRENTLY, outside the migration's transaction: a plain CREATE INDEX holds a SHARE lock on
audit_log for the whole build, and every audit write (each gate verification, login and token) would wait
for it, on a trail of tens of millions of entries for minutes. A build that failed half-way leaves an
invalid index of the name: it is dropped first, so running the migration again builds it anew. The
session's statement_timeout is lifted for the build (the README advises one on the service's role).
SQLite: nothing (the schema builds these indexes on PostgreSQL only, as the search's time bound is).

Revision ID: 0029
Revises: 0027
Create Date: 2026-12-14 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0029'
down_revision = '0027'
branch_labels = None
depends_on = None

_INDEXES = {
    'ix_audit_log_actor_person_id': "(actor ->> 'person_id')",
    'ix_audit_log_actor_client_id': "(actor ->> 'client_id')",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    with op.get_context().autocommit_block():
        op.execute('SET statement_timeout = 0')
        for name, expression in _INDEXES.items():
            op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS {name}')
            op.create_index(name, 'audit_log', [sa.text(expression), 'id'], unique=False,
                            postgresql_concurrently=True)
        op.execute('RESET statement_timeout')


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    with op.get_context().autocommit_block():
        for name in _INDEXES:
            op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS {name}')

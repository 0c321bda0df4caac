"""org active: organisations deactivated and reactivated; audit search indexes; console refresh (issue 4)

Revision ID: 0010
Revises: 0009_gate_offline
Create Date: 2026-11-21 18:00:00.000000
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0010'
down_revision = '0009_gate_offline'
branch_labels = None
depends_on = None

# The admin console renews its session with a rotating refresh token (identity.domain.scopes): the
# console clients registered before this revision get the offline_access scope their role now has.
_OFFLINE = 'offline_access'
JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.add_column('organisations', sa.Column('active', sa.Boolean(), server_default=sa.true(), nullable=False))
    op.add_column('organisations', sa.Column('status_changed_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('organisations', sa.Column('status_changed_by', sa.String(length=200), nullable=True))
    op.add_column('organisations', sa.Column('status_reason', sa.String(length=500), nullable=True))
    op.create_index('ix_audit_log_kind_id', 'audit_log', ['kind', 'id'], unique=False,
                    postgresql_ops={'kind': 'varchar_pattern_ops'})
    op.create_index('ix_audit_log_subject_id', 'audit_log', ['subject', 'id'], unique=False)
    op.create_index('ix_audit_log_at', 'audit_log', ['at'], unique=False)
    _console_scopes(add=True)


def downgrade() -> None:
    _console_scopes(add=False)
    op.drop_index('ix_audit_log_at', table_name='audit_log')
    op.drop_index('ix_audit_log_subject_id', table_name='audit_log')
    op.drop_index('ix_audit_log_kind_id', table_name='audit_log')
    with op.batch_alter_table('organisations') as batch:  # SQLite drops columns by copying the table
        batch.drop_column('status_reason')
        batch.drop_column('status_changed_by')
        batch.drop_column('status_changed_at')
        batch.drop_column('active')


def _console_scopes(*, add: bool) -> None:
    conn = op.get_bind()
    clients = sa.table('oauth_clients', sa.column('client_id', sa.String), sa.column('role', sa.String),
                       sa.column('scopes', JSON))
    rows = conn.execute(sa.select(clients.c.client_id, clients.c.scopes)
                        .where(clients.c.role == 'admin_console')).all()
    for client_id, scopes in rows:
        current = json.loads(scopes) if isinstance(scopes, str) else list(scopes or [])
        wanted = sorted(set(current) | {_OFFLINE}) if add else [s for s in current if s != _OFFLINE]
        if wanted != current:
            conn.execute(clients.update().where(clients.c.client_id == client_id).values(scopes=wanted))

"""the passkey that opened a login session, and the officer who issued an enrolment code (review 122)

``login_sessions.credential_id`` (finding 1): removing a passkey ends every session it opened, the
remover's own included: a thief holding a session opened by the owner's passkey cannot remove it and
stay logged in (identity.authn.service ``remove``). NULL for a session opened upstream (itsme) and for
those opened before this revision (they are ended by the removal only when they are not the remover's,
as before).

``enrolment_codes.issued_by`` (finding 3): the person who issued the code through the console (its
``created_by`` is the console's client id). His codes end when he loses a role that issues them, and
none outlives a dated one (identity.authn.enrolment). NULL for an admin client's or the CLI's codes,
and for those issued before this revision.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('login_sessions', sa.Column('credential_id', sa.String(1400), nullable=True))
    with op.batch_alter_table('enrolment_codes') as batch:  # SQLite adds a foreign key by copying the table
        batch.add_column(sa.Column('issued_by', sa.Uuid(), nullable=True))
        batch.create_foreign_key(op.f('fk_enrolment_codes_issued_by_persons'), 'persons', ['issued_by'], ['id'])
    op.create_index(op.f('ix_enrolment_codes_issued_by'), 'enrolment_codes', ['issued_by'])


def downgrade() -> None:
    op.drop_index(op.f('ix_enrolment_codes_issued_by'), table_name='enrolment_codes')
    with op.batch_alter_table('enrolment_codes') as batch:
        batch.drop_constraint(op.f('fk_enrolment_codes_issued_by_persons'), type_='foreignkey')
        batch.drop_column('issued_by')
    with op.batch_alter_table('login_sessions') as batch:  # SQLite drops a column by copying the table
        batch.drop_column('credential_id')

"""enrolment provenance: codes ended by a marker, and where each passkey came from (review 67)

An enrolment code was ended by setting its ``expires_at`` to the time of the ending, which a
registration that read its clock before passed; ``ended_at`` now ends it, whatever the clock says.
``privileged_issuer``: the code's issuer was refused no role (port security, an admin client, the CLI),
so it could have issued it for a person who holds a privileged role. A passkey keeps where it came from
(``enrolled_via``: ``code:<issuer>`` or ``account``) and whether it rests only on such issuers
(``privileged_enrolment``), so that a privileged role granted later suspends those that do not.

The rows written before this revision: no code is ended by a marker (those ended before are expired),
every code and passkey counts as from an issuer refused the privileged roles (the safe side: nothing
says otherwise), and a passkey's ``enrolled_via`` is unknown (NULL).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-24 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('enrolment_codes', sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('enrolment_codes', sa.Column('privileged_issuer', sa.Boolean(), server_default=sa.false(),
                                               nullable=False))
    op.add_column('webauthn_credentials', sa.Column('enrolled_via', sa.String(length=120), nullable=True))
    op.add_column('webauthn_credentials', sa.Column('privileged_enrolment', sa.Boolean(), server_default=sa.false(),
                                                    nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('webauthn_credentials') as batch:  # SQLite drops columns by copying the table
        batch.drop_column('privileged_enrolment')
        batch.drop_column('enrolled_via')
    with op.batch_alter_table('enrolment_codes') as batch:
        batch.drop_column('privileged_issuer')
        batch.drop_column('ended_at')

"""parties held: an offer that ended unaccepted no longer lets its recipient read the right

``release_parties`` kept a ``recipient`` row for every company a transfer was ever offered to, so a
company that declined an offer (or whose offer was withdrawn or cancelled) went on reading the right,
its history and the nomination its real holder made later. Now a recipient's row lives only while the
offer is pending, and a holder's row says ``holder`` (it used to stay ``recipient`` when the offer was
accepted). This brings the rows already written into that shape. No schema change.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-23 12:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A company a transfer was accepted by held the right: its row says so.
    op.execute(
        "UPDATE release_parties SET relation = 'holder' WHERE relation = 'recipient' AND EXISTS ("
        " SELECT 1 FROM transfers t WHERE t.release_id = release_parties.release_id"
        " AND t.to_organisation_id = release_parties.organisation_id AND t.state = 'accepted')"
    )
    # Any other recipient row stays only while its offer is pending.
    op.execute(
        "DELETE FROM release_parties WHERE relation = 'recipient' AND NOT EXISTS ("
        " SELECT 1 FROM transfers t WHERE t.release_id = release_parties.release_id"
        " AND t.to_organisation_id = release_parties.organisation_id AND t.state = 'pending')"
    )


def downgrade() -> None:
    # The rows removed named companies that must not read the right; nothing is put back.
    pass

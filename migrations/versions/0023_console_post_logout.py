"""the admin console's sign-out comes back to /console/ (review 128, finding 1)

The console now ends the provider's login session when the officer signs out (RP-initiated logout with
its id token, identity/web/static/console.js ``signOut``) and asks to come back to ``/console/``, which
its client must have registered (RP-Initiated Logout §3: else the provider refuses the redirect). The
consoles registered before this revision (the demo's) registered none: an ``admin_console`` client with
the redirect URI ``<base>/console/callback`` gets ``<base>/console/`` as a post-logout redirect URI. Other
clients are left as they are (a console without it signs out to the provider's "signed out" page).
No schema change.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-10 10:00:00.000000
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
CALLBACK = '/console/callback'

clients = sa.table(
    'oauth_clients',
    sa.column('client_id', sa.String),
    sa.column('role', sa.String),
    sa.column('redirect_uris', JSON),
    sa.column('post_logout_redirect_uris', JSON),
)


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(clients.c.client_id, clients.c.redirect_uris, clients.c.post_logout_redirect_uris)
                        .where(clients.c.role == 'admin_console')).all()
    for client_id, redirects, post_logout in rows:
        have = _list(post_logout)
        wanted = [u[: -len(CALLBACK)] + '/console/' for u in _list(redirects) if u.endswith(CALLBACK)]
        added = [u for u in wanted if u not in have]
        if added:
            conn.execute(clients.update().where(clients.c.client_id == client_id)
                         .values(post_logout_redirect_uris=have + added))


def _list(value: Any) -> list[str]:
    return list(json.loads(value) if isinstance(value, str) else value or [])


def downgrade() -> None:
    # The URI is one the console's own page serves; the code before this revision never used it.
    pass

"""identity provider: sessions, codes, grants, passkeys, registration

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 12:18:20.959152
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSONB on PostgreSQL, JSON elsewhere (as in quaygate/schema.py)
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('initial_access_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('organisation_id', sa.Uuid(), nullable=True),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisations.id'], name=op.f('fk_initial_access_tokens_organisation_id_organisations')),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_initial_access_tokens'))
    )
    op.create_table('authorization_codes',
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=100), nullable=False),
    sa.Column('person_id', sa.Uuid(), nullable=False),
    sa.Column('sid', sa.String(length=64), nullable=True),
    sa.Column('redirect_uri', sa.String(length=2000), nullable=False),
    sa.Column('scope', sa.String(length=1000), nullable=False),
    sa.Column('nonce', sa.String(length=255), nullable=True),
    sa.Column('code_challenge', sa.String(length=128), nullable=False),
    sa.Column('acr', sa.String(length=64), nullable=False),
    sa.Column('amr', JSON, nullable=False),
    sa.Column('auth_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('dpop_jkt', sa.String(length=64), nullable=True),
    sa.Column('grant_id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['oauth_clients.client_id'], name=op.f('fk_authorization_codes_client_id_oauth_clients')),
    sa.ForeignKeyConstraint(['person_id'], ['persons.id'], name=op.f('fk_authorization_codes_person_id_persons')),
    sa.PrimaryKeyConstraint('code_hash', name=op.f('pk_authorization_codes'))
    )
    op.create_index(op.f('ix_authorization_codes_expires_at'), 'authorization_codes', ['expires_at'], unique=False)
    op.create_table('enrolment_codes',
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('person_id', sa.Uuid(), nullable=False),
    sa.Column('created_by', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['person_id'], ['persons.id'], name=op.f('fk_enrolment_codes_person_id_persons')),
    sa.PrimaryKeyConstraint('code_hash', name=op.f('pk_enrolment_codes'))
    )
    op.create_index(op.f('ix_enrolment_codes_person_id'), 'enrolment_codes', ['person_id'], unique=False)
    op.create_table('grants',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('client_id', sa.String(length=100), nullable=False),
    sa.Column('person_id', sa.Uuid(), nullable=True),
    sa.Column('sid', sa.String(length=64), nullable=True),
    sa.Column('scope', sa.String(length=1000), nullable=False),
    sa.Column('acr', sa.String(length=64), nullable=True),
    sa.Column('amr', JSON, nullable=True),
    sa.Column('auth_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dpop_jkt', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_reason', sa.String(length=32), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['oauth_clients.client_id'], name=op.f('fk_grants_client_id_oauth_clients')),
    sa.ForeignKeyConstraint(['person_id'], ['persons.id'], name=op.f('fk_grants_person_id_persons')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_grants'))
    )
    op.create_index(op.f('ix_grants_client_id'), 'grants', ['client_id'], unique=False)
    op.create_index(op.f('ix_grants_person_id'), 'grants', ['person_id'], unique=False)
    op.create_index(op.f('ix_grants_sid'), 'grants', ['sid'], unique=False)
    op.create_table('login_sessions',
    sa.Column('id_hash', sa.String(length=64), nullable=False),
    sa.Column('sid', sa.String(length=64), nullable=False),
    sa.Column('person_id', sa.Uuid(), nullable=False),
    sa.Column('acr', sa.String(length=64), nullable=False),
    sa.Column('amr', JSON, nullable=False),
    sa.Column('auth_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['person_id'], ['persons.id'], name=op.f('fk_login_sessions_person_id_persons')),
    sa.PrimaryKeyConstraint('id_hash', name=op.f('pk_login_sessions')),
    sa.UniqueConstraint('sid', name=op.f('uq_login_sessions_sid'))
    )
    op.create_index(op.f('ix_login_sessions_person_id'), 'login_sessions', ['person_id'], unique=False)
    op.create_table('memberships',
    sa.Column('person_id', sa.Uuid(), nullable=False),
    sa.Column('organisation_id', sa.Uuid(), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisations.id'], name=op.f('fk_memberships_organisation_id_organisations')),
    sa.ForeignKeyConstraint(['person_id'], ['persons.id'], name=op.f('fk_memberships_person_id_persons')),
    sa.PrimaryKeyConstraint('person_id', 'organisation_id', 'role', name=op.f('pk_memberships'))
    )
    op.create_table('webauthn_credentials',
    sa.Column('credential_id', sa.String(length=1400), nullable=False),
    sa.Column('person_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('public_key', sa.LargeBinary(), nullable=False),
    sa.Column('sign_count', sa.BigInteger(), nullable=False),
    sa.Column('transports', JSON, nullable=False),
    sa.Column('aaguid', sa.String(length=36), nullable=True),
    sa.Column('backup_eligible', sa.Boolean(), nullable=False),
    sa.Column('backed_up', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_reason', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['person_id'], ['persons.id'], name=op.f('fk_webauthn_credentials_person_id_persons')),
    sa.PrimaryKeyConstraint('credential_id', name=op.f('pk_webauthn_credentials'))
    )
    op.create_index(op.f('ix_webauthn_credentials_person_id'), 'webauthn_credentials', ['person_id'], unique=False)
    op.create_table('issued_access_tokens',
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('grant_id', sa.Uuid(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['grant_id'], ['grants.id'], name=op.f('fk_issued_access_tokens_grant_id_grants')),
    sa.PrimaryKeyConstraint('jti', name=op.f('pk_issued_access_tokens'))
    )
    op.create_index(op.f('ix_issued_access_tokens_grant_id'), 'issued_access_tokens', ['grant_id'], unique=False)
    op.create_table('refresh_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('grant_id', sa.Uuid(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('issued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['grant_id'], ['grants.id'], name=op.f('fk_refresh_tokens_grant_id_grants')),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_refresh_tokens'))
    )
    op.create_index(op.f('ix_refresh_tokens_grant_id'), 'refresh_tokens', ['grant_id'], unique=False)
    op.add_column('oauth_clients', sa.Column('post_logout_redirect_uris', JSON, server_default='[]', nullable=False))
    op.add_column('oauth_clients', sa.Column('require_par', sa.Boolean(), server_default=sa.text('false'), nullable=False))
    op.add_column('oauth_clients', sa.Column('min_acr', sa.String(length=64), nullable=True))
    op.add_column('oauth_clients', sa.Column('registration_token_hash', sa.String(length=64), nullable=True))
    op.add_column('oauth_clients', sa.Column('extra_metadata', JSON, server_default='{}', nullable=False))
    op.add_column('oauth_clients', sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('releases', sa.Column('nomination_response', sa.String(length=16), nullable=True))
    op.add_column('releases', sa.Column('nomination_response_reason', sa.String(length=32), nullable=True))
    op.add_column('releases', sa.Column('nomination_responded_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('persons', sa.Column('locale', sa.String(length=8), nullable=True))
    op.add_column('persons', sa.Column('status', sa.String(length=16), server_default='active', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('releases') as batch:
        batch.drop_column('nomination_responded_at')
        batch.drop_column('nomination_response_reason')
        batch.drop_column('nomination_response')
    with op.batch_alter_table('persons') as batch:
        batch.drop_column('status')
    with op.batch_alter_table('persons') as batch:
        batch.drop_column('locale')
    with op.batch_alter_table('oauth_clients') as batch:
        batch.drop_column('updated_at')
    with op.batch_alter_table('oauth_clients') as batch:
        batch.drop_column('extra_metadata')
    with op.batch_alter_table('oauth_clients') as batch:
        batch.drop_column('registration_token_hash')
    with op.batch_alter_table('oauth_clients') as batch:
        batch.drop_column('min_acr')
    with op.batch_alter_table('oauth_clients') as batch:
        batch.drop_column('require_par')
    with op.batch_alter_table('oauth_clients') as batch:
        batch.drop_column('post_logout_redirect_uris')
    op.drop_index(op.f('ix_refresh_tokens_grant_id'), table_name='refresh_tokens')
    op.drop_table('refresh_tokens')
    op.drop_index(op.f('ix_issued_access_tokens_grant_id'), table_name='issued_access_tokens')
    op.drop_table('issued_access_tokens')
    op.drop_index(op.f('ix_webauthn_credentials_person_id'), table_name='webauthn_credentials')
    op.drop_table('webauthn_credentials')
    op.drop_table('memberships')
    op.drop_index(op.f('ix_login_sessions_person_id'), table_name='login_sessions')
    op.drop_table('login_sessions')
    op.drop_index(op.f('ix_grants_sid'), table_name='grants')
    op.drop_index(op.f('ix_grants_person_id'), table_name='grants')
    op.drop_index(op.f('ix_grants_client_id'), table_name='grants')
    op.drop_table('grants')
    op.drop_index(op.f('ix_enrolment_codes_person_id'), table_name='enrolment_codes')
    op.drop_table('enrolment_codes')
    op.drop_index(op.f('ix_authorization_codes_expires_at'), table_name='authorization_codes')
    op.drop_table('authorization_codes')
    op.drop_table('initial_access_tokens')

"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21 11:47:50.234944
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSONB on PostgreSQL, JSON elsewhere (as in quaygate/schema.py)
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_checkpoints',
    sa.Column('chain_seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('signature', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('chain_seq', name=op.f('pk_audit_checkpoints'))
    )
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=80), nullable=False),
    sa.Column('actor', JSON, nullable=False),
    sa.Column('subject', sa.String(length=100), nullable=True),
    sa.Column('data', JSON, nullable=False),
    sa.Column('txid', sa.BigInteger(), nullable=True),
    sa.Column('chain_seq', sa.BigInteger(), nullable=True),
    sa.Column('prev_hash', sa.String(length=64), nullable=True),
    sa.Column('hash', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log')),
    sa.UniqueConstraint('chain_seq', name=op.f('uq_audit_log_chain_seq'))
    )
    op.create_table('idempotency_keys',
    sa.Column('client_id', sa.String(length=100), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('body', JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('client_id', 'key', name=op.f('pk_idempotency_keys'))
    )
    op.create_index(op.f('ix_idempotency_keys_created_at'), 'idempotency_keys', ['created_at'], unique=False)
    op.create_table('organisations',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('eori', sa.String(length=17), nullable=True),
    sa.Column('vat', sa.String(length=20), nullable=True),
    sa.Column('terminal_code', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organisations')),
    sa.UniqueConstraint('eori', name=op.f('uq_organisations_eori')),
    sa.UniqueConstraint('terminal_code', name=op.f('uq_organisations_terminal_code')),
    sa.UniqueConstraint('vat', name=op.f('uq_organisations_vat'))
    )
    op.create_table('revoked_tokens',
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('jti', name=op.f('pk_revoked_tokens'))
    )
    op.create_index(op.f('ix_revoked_tokens_expires_at'), 'revoked_tokens', ['expires_at'], unique=False)
    op.create_table('signing_keys',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('alg', sa.String(length=10), nullable=False),
    sa.Column('use', sa.String(length=8), nullable=False),
    sa.Column('public_jwk', JSON, nullable=False),
    sa.Column('private_enc', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('publish_until', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('kid', name=op.f('pk_signing_keys'))
    )
    op.create_table('oauth_clients',
    sa.Column('client_id', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('organisation_id', sa.Uuid(), nullable=True),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('secret_hash', sa.String(length=200), nullable=True),
    sa.Column('token_endpoint_auth_method', sa.String(length=40), nullable=False),
    sa.Column('grant_types', JSON, nullable=False),
    sa.Column('redirect_uris', JSON, nullable=False),
    sa.Column('scopes', JSON, nullable=False),
    sa.Column('jwks', JSON, nullable=True),
    sa.Column('jwks_uri', sa.String(length=2000), nullable=True),
    sa.Column('terminal_code', sa.String(length=32), nullable=True),
    sa.Column('dpop_bound', sa.Boolean(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisations.id'], name=op.f('fk_oauth_clients_organisation_id_organisations')),
    sa.PrimaryKeyConstraint('client_id', name=op.f('pk_oauth_clients'))
    )
    op.create_table('persons',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('given_name', sa.String(length=100), nullable=False),
    sa.Column('family_name', sa.String(length=100), nullable=False),
    sa.Column('employer_organisation_id', sa.Uuid(), nullable=True),
    sa.Column('national_id_hash', sa.String(length=64), nullable=True),
    sa.Column('upstream_sub', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['employer_organisation_id'], ['organisations.id'], name=op.f('fk_persons_employer_organisation_id_organisations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_persons')),
    sa.UniqueConstraint('national_id_hash', name=op.f('uq_persons_national_id_hash')),
    sa.UniqueConstraint('upstream_sub', name=op.f('uq_persons_upstream_sub'))
    )
    op.create_table('trucks',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('plate_text', sa.String(length=12), nullable=False),
    sa.Column('plate_country', sa.String(length=2), nullable=False),
    sa.Column('operator_organisation_id', sa.Uuid(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['operator_organisation_id'], ['organisations.id'], name=op.f('fk_trucks_operator_organisation_id_organisations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trucks')),
    sa.UniqueConstraint('plate_country', 'plate_text', name='uq_trucks_plate')
    )
    op.create_table('webhook_subscriptions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('organisation_id', sa.Uuid(), nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=False),
    sa.Column('secret_enc', sa.Text(), nullable=False),
    sa.Column('event_types', JSON, nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organisation_id'], ['organisations.id'], name=op.f('fk_webhook_subscriptions_organisation_id_organisations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_subscriptions'))
    )
    op.create_index(op.f('ix_webhook_subscriptions_organisation_id'), 'webhook_subscriptions', ['organisation_id'], unique=False)
    op.create_table('badges',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('person_id', sa.Uuid(), nullable=False),
    sa.Column('scheme', sa.String(length=16), nullable=False),
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('card_uid', sa.String(length=32), nullable=True),
    sa.Column('employer_organisation_id', sa.Uuid(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('valid_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('valid_until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['employer_organisation_id'], ['organisations.id'], name=op.f('fk_badges_employer_organisation_id_organisations')),
    sa.ForeignKeyConstraint(['person_id'], ['persons.id'], name=op.f('fk_badges_person_id_persons')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_badges')),
    sa.UniqueConstraint('card_uid', name=op.f('uq_badges_card_uid')),
    sa.UniqueConstraint('scheme', 'number', name='uq_badges_scheme_number')
    )
    op.create_index(op.f('ix_badges_person_id'), 'badges', ['person_id'], unique=False)
    op.create_table('releases',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('container_number', sa.String(length=11), nullable=False),
    sa.Column('bill_of_lading', sa.String(length=64), nullable=False),
    sa.Column('vessel_call', sa.String(length=64), nullable=False),
    sa.Column('terminal', sa.String(length=32), nullable=False),
    sa.Column('issuer_organisation_id', sa.Uuid(), nullable=False),
    sa.Column('first_party_organisation_id', sa.Uuid(), nullable=False),
    sa.Column('holder_organisation_id', sa.Uuid(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('blocked', sa.Boolean(), nullable=False),
    sa.Column('active_key', sa.String(length=80), nullable=True),
    sa.Column('commercial_status', sa.String(length=8), nullable=False),
    sa.Column('commercial_reason', sa.String(length=500), nullable=True),
    sa.Column('commercial_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('customs_status', sa.String(length=8), nullable=False),
    sa.Column('customs_reason', sa.String(length=500), nullable=True),
    sa.Column('customs_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('terminal_status', sa.String(length=8), nullable=False),
    sa.Column('terminal_reason', sa.String(length=500), nullable=True),
    sa.Column('terminal_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('valid_from', sa.DateTime(timezone=True), nullable=False),
    sa.Column('valid_until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('driver_person_id', sa.Uuid(), nullable=True),
    sa.Column('plate_text', sa.String(length=12), nullable=True),
    sa.Column('plate_country', sa.String(length=2), nullable=True),
    sa.Column('trailer_plate_text', sa.String(length=12), nullable=True),
    sa.Column('trailer_plate_country', sa.String(length=2), nullable=True),
    sa.Column('slot_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('slot_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('nominated_by', sa.Uuid(), nullable=True),
    sa.Column('nominated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('gate_in_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('gate_out_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['driver_person_id'], ['persons.id'], name=op.f('fk_releases_driver_person_id_persons')),
    sa.ForeignKeyConstraint(['first_party_organisation_id'], ['organisations.id'], name=op.f('fk_releases_first_party_organisation_id_organisations')),
    sa.ForeignKeyConstraint(['holder_organisation_id'], ['organisations.id'], name=op.f('fk_releases_holder_organisation_id_organisations')),
    sa.ForeignKeyConstraint(['issuer_organisation_id'], ['organisations.id'], name=op.f('fk_releases_issuer_organisation_id_organisations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_releases')),
    sa.UniqueConstraint('active_key', name=op.f('uq_releases_active_key'))
    )
    op.create_index(op.f('ix_releases_container_number'), 'releases', ['container_number'], unique=False)
    op.create_index(op.f('ix_releases_driver_person_id'), 'releases', ['driver_person_id'], unique=False)
    op.create_index(op.f('ix_releases_holder_organisation_id'), 'releases', ['holder_organisation_id'], unique=False)
    op.create_index(op.f('ix_releases_issuer_organisation_id'), 'releases', ['issuer_organisation_id'], unique=False)
    op.create_index(op.f('ix_releases_state'), 'releases', ['state'], unique=False)
    op.create_index(op.f('ix_releases_terminal'), 'releases', ['terminal'], unique=False)
    op.create_index(op.f('ix_releases_valid_until'), 'releases', ['valid_until'], unique=False)
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('subscription_id', sa.Uuid(), nullable=False),
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('payload', JSON, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['subscription_id'], ['webhook_subscriptions.id'], name=op.f('fk_webhook_deliveries_subscription_id_webhook_subscriptions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries'))
    )
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['status', 'next_attempt_at'], unique=False)
    op.create_table('release_events',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('release_id', sa.Uuid(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=64), nullable=False),
    sa.Column('actor', JSON, nullable=False),
    sa.Column('data', JSON, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['release_id'], ['releases.id'], name=op.f('fk_release_events_release_id_releases')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_release_events')),
    sa.UniqueConstraint('release_id', 'seq', name='uq_release_events_release_seq')
    )
    op.create_table('release_parties',
    sa.Column('organisation_id', sa.Uuid(), nullable=False),
    sa.Column('release_id', sa.Uuid(), nullable=False),
    sa.Column('relation', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['release_id'], ['releases.id'], name=op.f('fk_release_parties_release_id_releases')),
    sa.PrimaryKeyConstraint('organisation_id', 'release_id', name=op.f('pk_release_parties'))
    )
    op.create_table('transfers',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('release_id', sa.Uuid(), nullable=False),
    sa.Column('from_organisation_id', sa.Uuid(), nullable=False),
    sa.Column('to_organisation_id', sa.Uuid(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('pending_key', sa.Uuid(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['release_id'], ['releases.id'], name=op.f('fk_transfers_release_id_releases')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transfers')),
    sa.UniqueConstraint('pending_key', name=op.f('uq_transfers_pending_key'))
    )
    op.create_index(op.f('ix_transfers_release_id'), 'transfers', ['release_id'], unique=False)
    op.create_index(op.f('ix_transfers_to_organisation_id'), 'transfers', ['to_organisation_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_transfers_to_organisation_id'), table_name='transfers')
    op.drop_index(op.f('ix_transfers_release_id'), table_name='transfers')
    op.drop_table('transfers')
    op.drop_table('release_parties')
    op.drop_table('release_events')
    op.drop_index('ix_webhook_deliveries_due', table_name='webhook_deliveries')
    op.drop_table('webhook_deliveries')
    op.drop_index(op.f('ix_releases_valid_until'), table_name='releases')
    op.drop_index(op.f('ix_releases_terminal'), table_name='releases')
    op.drop_index(op.f('ix_releases_state'), table_name='releases')
    op.drop_index(op.f('ix_releases_issuer_organisation_id'), table_name='releases')
    op.drop_index(op.f('ix_releases_holder_organisation_id'), table_name='releases')
    op.drop_index(op.f('ix_releases_driver_person_id'), table_name='releases')
    op.drop_index(op.f('ix_releases_container_number'), table_name='releases')
    op.drop_table('releases')
    op.drop_index(op.f('ix_badges_person_id'), table_name='badges')
    op.drop_table('badges')
    op.drop_index(op.f('ix_webhook_subscriptions_organisation_id'), table_name='webhook_subscriptions')
    op.drop_table('webhook_subscriptions')
    op.drop_table('trucks')
    op.drop_table('persons')
    op.drop_table('oauth_clients')
    op.drop_table('signing_keys')
    op.drop_index(op.f('ix_revoked_tokens_expires_at'), table_name='revoked_tokens')
    op.drop_table('revoked_tokens')
    op.drop_table('organisations')
    op.drop_index(op.f('ix_idempotency_keys_created_at'), table_name='idempotency_keys')
    op.drop_table('idempotency_keys')
    op.drop_table('audit_log')
    op.drop_table('audit_checkpoints')

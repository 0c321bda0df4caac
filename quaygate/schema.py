"""Every table of the service, as SQLAlchemy Core metadata.

The schema is made only by Alembic (migrations/); this module is what adapters query and what the
migration drift test compares against. Times are stored with their zone (UTCDateTime below).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlalchemy.dialects.postgresql
from sqlalchemy.types import TypeDecorator

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UnstorableValue(ValueError):
    """A value a column type refuses before the statement is sent (SQLAlchemy raises it inside a
    StatementError): the request's value, not the service, so the API answers 422, not 500."""


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone: we put it back)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise UnstorableValue("naive datetime refused: quaygate stores aware UTC times")
        try:
            value = value.astimezone(UTC)
        except OverflowError:  # before year 1 or past year 9999 once in UTC: no datetime holds it
            raise UnstorableValue("a time outside the calendar once in UTC") from None
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
UUID = sa.Uuid(as_uuid=True)

# ---- parties -----------------------------------------------------------------------------------

organisations = sa.Table(
    "organisations",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("eori", sa.String(17), unique=True),
    sa.Column("vat", sa.String(20), unique=True),
    sa.Column("terminal_code", sa.String(32), unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Issue 4: port security deactivates an organisation (and may reactivate it): its clients get no
    # tokens and it receives no new rights, transfers or nominations. The last change's who, when and
    # why are kept here; every change is on the audit trail (identity.organisations).
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("status_changed_at", UTCDateTime),
    sa.Column("status_changed_by", sa.String(200)),
    sa.Column("status_reason", sa.String(500)),
)

persons = sa.Table(
    "persons",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("given_name", sa.String(100), nullable=False),
    sa.Column("family_name", sa.String(100), nullable=False),
    # The organisation he was registered for, when port security created his row (shown in its console);
    # nothing updates it, so it grants nothing: a haulier's drivers are those with a driver membership in
    # force there or a usable badge issued for it (release_service Directory.drives_for; review 152).
    sa.Column("employer_organisation_id", UUID, sa.ForeignKey("organisations.id")),
    # The national register number is never stored in clear: a keyed hash (HMAC-SHA256).
    sa.Column("national_id_hash", sa.String(64), unique=True),
    sa.Column("upstream_sub", sa.String(255), unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Preferred language of the person's pages (nl, fr, de, en); None: from the browser.
    sa.Column("locale", sa.String(8)),
    sa.Column("status", sa.String(16), nullable=False, server_default="active"),  # active | suspended
)

# A person's roles in an organisation: driver, dispatcher, org_admin, port_security_admin.
memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("person_id", UUID, sa.ForeignKey("persons.id"), primary_key=True),
    sa.Column("organisation_id", UUID, sa.ForeignKey("organisations.id"), primary_key=True),
    sa.Column("role", sa.String(32), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Migration 0019 (security review): the role counts until then (NULL: until removed). Read at the
    # time of use (membership_in_force) and swept (identity.memberships.expire_due).
    sa.Column("valid_until", UTCDateTime, index=True),
)


def membership_in_force(now: datetime) -> sa.ColumnElement[bool]:
    """The membership counts at ``now``: given until removed, or until a time still to come. Every read
    of a role that grants something (tokens, nominations, role checks) applies it, whether or not the
    expiry sweep has deleted the row yet."""
    return sa.or_(memberships.c.valid_until.is_(None), memberships.c.valid_until > now)


def membership_of_active_organisation() -> sa.ColumnElement[bool]:
    """The membership is in an organisation that is active: a deactivated organisation's roles count
    nowhere while it is (identity.organisations ``set_active``; review 108), as ``membership_in_force``
    for time."""
    return memberships.c.organisation_id.in_(sa.select(organisations.c.id).where(organisations.c.active.is_(True)))

badges = sa.Table(
    "badges",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("person_id", UUID, sa.ForeignKey("persons.id"), nullable=False, index=True),
    sa.Column("scheme", sa.String(16), nullable=False),
    sa.Column("number", sa.String(32), nullable=False),
    sa.Column("card_uid", sa.String(32), unique=True),
    sa.Column("employer_organisation_id", UUID, sa.ForeignKey("organisations.id")),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("valid_from", UTCDateTime, nullable=False),
    sa.Column("valid_until", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("scheme", "number", name="uq_badges_scheme_number"),
    # Issue 4 (migration 0004_badges): why and when the status last changed; the full history is
    # badge_status_events. Nullable: rows written before 0004 have none.
    sa.Column("status_reason", sa.String(500)),
    sa.Column("updated_at", UTCDateTime),
    sa.Column("issued_by", sa.String(100)),
)

# The truck register (identity.trucks, ``quaygate truck``; review 170, finding 1): the transport operator
# each plate is registered to, as Plate.parse normalises it. A nomination of a plate registered to another
# operator, or one the gate could take for it, is refused (release_service.ports.Directory ``trucks_like``);
# an unregistered one is not.
trucks = sa.Table(
    "trucks",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("plate_text", sa.String(12), nullable=False),
    sa.Column("plate_country", sa.String(2), nullable=False),
    sa.Column("operator_organisation_id", UUID, sa.ForeignKey("organisations.id")),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # plate_text with each look-alike character replaced by its set's representative
    # (release_service.domain.reads ``plate_skeleton``; migration 0039): every truck the gate could take
    # for a nominated plate, whatever its country, is found by it (review 175, finding 1). Required, so a
    # row loaded without it is refused rather than missed.
    sa.Column("plate_skeleton", sa.String(12), nullable=False),
    sa.UniqueConstraint("plate_country", "plate_text", name="uq_trucks_plate"),
    sa.Index("ix_trucks_plate_skeleton", "plate_skeleton"),
)

# ---- release rights ----------------------------------------------------------------------------

releases = sa.Table(
    "releases",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("container_number", sa.String(11), nullable=False, index=True),
    sa.Column("bill_of_lading", sa.String(64), nullable=False),
    sa.Column("vessel_call", sa.String(64), nullable=False),
    sa.Column("terminal", sa.String(32), nullable=False, index=True),
    sa.Column("issuer_organisation_id", UUID, sa.ForeignKey("organisations.id"), nullable=False, index=True),
    sa.Column("first_party_organisation_id", UUID, sa.ForeignKey("organisations.id"), nullable=False),
    sa.Column("holder_organisation_id", UUID, sa.ForeignKey("organisations.id"), nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("blocked", sa.Boolean, nullable=False, default=False),
    # "container|vessel call" while the right is live, NULL once ended: a unique index on it keeps
    # at most one live right per container and vessel call on every backend (NULLs never collide).
    sa.Column("active_key", sa.String(80), unique=True),
    sa.Column("commercial_status", sa.String(8), nullable=False),
    sa.Column("commercial_reason", sa.String(500)),
    sa.Column("commercial_at", UTCDateTime),
    sa.Column("customs_status", sa.String(8), nullable=False),
    sa.Column("customs_reason", sa.String(500)),
    sa.Column("customs_at", UTCDateTime),
    # The customs organisation that set the customs light (migration 0028): only it changes its hold (red or
    # scan). NULL: the red a right is issued with, or set before 0028 (anyone of customs' to change). No
    # foreign key: SQLite adds one by copying the table, which every other table of the right names.
    sa.Column("customs_set_by", UUID),
    sa.Column("terminal_status", sa.String(8), nullable=False),
    sa.Column("terminal_reason", sa.String(500)),
    sa.Column("terminal_at", UTCDateTime),
    sa.Column("valid_from", UTCDateTime, nullable=False),
    sa.Column("valid_until", UTCDateTime, nullable=False, index=True),
    sa.Column("driver_person_id", UUID, sa.ForeignKey("persons.id"), index=True),
    sa.Column("plate_text", sa.String(12)),
    sa.Column("plate_country", sa.String(2)),
    sa.Column("trailer_plate_text", sa.String(12)),
    sa.Column("trailer_plate_country", sa.String(2)),
    sa.Column("slot_start", UTCDateTime),
    sa.Column("slot_end", UTCDateTime),
    sa.Column("nominated_by", UUID),
    sa.Column("nominated_at", UTCDateTime),
    # The nominated driver's answer: pending | accepted | refused (gate-in refuses a refused one).
    sa.Column("nomination_response", sa.String(16)),
    sa.Column("nomination_response_reason", sa.String(32)),
    sa.Column("nomination_responded_at", UTCDateTime),
    sa.Column("gate_in_at", UTCDateTime),
    sa.Column("gate_out_at", UTCDateTime),
    # Migration 0020 (review 104): when another shipping line tried to issue this right's container and
    # vessel call, and was refused because this right held the key; the gate then answers review
    # (container_contested). Set once, by that refusal only (release_service/services/issue.py), never
    # by a save of the aggregate.
    sa.Column("contested_at", UTCDateTime),
    sa.Column("version", sa.Integer, nullable=False, default=0),
    # The seq of the right's last event (release_events): every writer of events raises it in the
    # UPDATE that holds the row, so the next seq needs no SELECT max(seq).
    sa.Column("event_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

release_parties = sa.Table(
    "release_parties",
    metadata,
    # Who may see a right: issuer, every holder it has had, and the company a pending transfer is
    # offered to (its row goes when the offer ends unaccepted: declined, withdrawn, cancelled).
    sa.Column("organisation_id", UUID, primary_key=True),
    sa.Column("release_id", UUID, sa.ForeignKey("releases.id"), primary_key=True),
    sa.Column("relation", sa.String(16), nullable=False),
)

transfers = sa.Table(
    "transfers",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("release_id", UUID, sa.ForeignKey("releases.id"), nullable=False, index=True),
    sa.Column("from_organisation_id", UUID, nullable=False),
    sa.Column("to_organisation_id", UUID, nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False),
    # release id while pending, NULL after: one pending transfer per right, enforced by the database.
    sa.Column("pending_key", UUID, unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("decided_at", UTCDateTime),
)

release_events = sa.Table(
    "release_events",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("release_id", UUID, sa.ForeignKey("releases.id"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("actor", JSON, nullable=False),
    sa.Column("data", JSON, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("release_id", "seq", name="uq_release_events_release_seq"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("client_id", sa.String(100), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("body", JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
)

# ---- webhooks (transactional outbox) -----------------------------------------------------------

webhook_subscriptions = sa.Table(
    "webhook_subscriptions",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("organisation_id", UUID, sa.ForeignKey("organisations.id"), nullable=False, index=True),
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("secret_enc", sa.Text, nullable=False),  # AES-GCM under the service's data key
    sa.Column("event_types", JSON, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Who made it (migration 0027): the client, and the person when one made it in a console; closed when
    # that person's acting role there ends or he is suspended (services/webhooks.py). Both NULL: made
    # before 0027. No foreign key to persons: SQLite adds one by copying the table, which deliveries name.
    sa.Column("created_by_client_id", sa.String(100)),
    sa.Column("created_by_person_id", UUID, index=True),
)

WEBHOOK_PENDING_SQL = "status = 'pending'"  # the predicate of the queue indexes below

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("subscription_id", UUID, sa.ForeignKey("webhook_subscriptions.id"), nullable=False),
    sa.Column("event_id", UUID, nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("payload", JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | delivered | dead | withheld | cancelled (no CHECK)
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    sa.Column("last_error", sa.String(500)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("delivered_at", UTCDateTime),
    # The right the event is of (its payload's release_id), and the order the delivery was queued in: a
    # sequence on PostgreSQL, the rowid on SQLite (migration 0037, review 171 finding 1). A subscription
    # gets one right's deliveries in this order (adapters/webhook_dispatcher.py). Null in rows finished
    # before 0037 (never sent again) and in none queued since.
    sa.Column("release_id", UUID),
    sa.Column("ordinal", sa.BigInteger, server_default=sa.FetchedValue()),
    sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    # A subscription's queue, in the order it is sent (migrations 0030, 0037): the dispatcher's claim probes
    # it once per subscription, closing one cancels through it (webhook review, finding 3). Pending rows
    # only, so it stays as small as the queue; the queries name 'pending' literally, as this predicate does.
    sa.Index("ix_webhook_deliveries_queue", "subscription_id", "next_attempt_at", "ordinal",
             postgresql_where=sa.text(WEBHOOK_PENDING_SQL), sqlite_where=sa.text(WEBHOOK_PENDING_SQL)),
    # Each right's queue within a subscription: what is queued before a delivery and not yet finished.
    sa.Index("ix_webhook_deliveries_right_queue", "subscription_id", "release_id", "ordinal",
             postgresql_where=sa.text(WEBHOOK_PENDING_SQL), sqlite_where=sa.text(WEBHOOK_PENDING_SQL)),
)

# ---- audit trail -------------------------------------------------------------------------------

# The predicate of ix_audit_log_face_enrolment, and of the query that reads it (identity.face.store):
# literal, so that PostgreSQL can prove a generic plan may use the partial index (a bound parameter
# would not), and the same text in both.
FACE_ENROLMENT_KINDS_SQL = ("kind IN ('identity.face.enrolled', 'identity.face.enrolment.upgraded', "
                            "'identity.face.withdrawn')")

# The audit search's actor (identity.api.audit_search): a person id or a client id, either member of the
# entry's actor. The key is literal, in the indexes below and in the query alike: an index on an
# expression serves only a query with the same expression, and a bound key (actor ->> $1) would not be
# that expression in a generic plan.
AUDIT_ACTOR_PERSON_SQL = "(actor ->> 'person_id')"
AUDIT_ACTOR_CLIENT_SQL = "(actor ->> 'client_id')"

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(80), nullable=False),
    sa.Column("actor", JSON, nullable=False),
    sa.Column("subject", sa.String(100)),
    sa.Column("data", JSON, nullable=False),
    # PostgreSQL transaction id of the writer: the sealer only chains rows whose writers have all
    # finished (txid below the snapshot's xmin), so a late commit can never slip in behind a seal.
    sa.Column("txid", sa.BigInteger),
    # Filled by the sealer, in chain order (release_service/adapters/audit.py).
    sa.Column("chain_seq", sa.BigInteger, unique=True),
    sa.Column("prev_hash", sa.String(64)),
    sa.Column("hash", sa.String(64)),
    # The console's audit search (identity.api.audit_search), newest first: a kind or a dotted prefix of
    # kinds (pattern ops, so LIKE 'x.%' can use it whatever the collation), a subject, a time range.
    sa.Index("ix_audit_log_kind_id", "kind", "id", postgresql_ops={"kind": "varchar_pattern_ops"}),
    sa.Index("ix_audit_log_subject_id", "subject", "id"),
    sa.Index("ix_audit_log_at", "at"),
    # ... and an actor (migration 0029), on PostgreSQL (as the search's time bound): without them an actor
    # matching nothing read the whole trail, about 0.3 s per million entries.
    sa.Index("ix_audit_log_actor_person_id", sa.text(AUDIT_ACTOR_PERSON_SQL), "id").ddl_if(dialect="postgresql"),
    sa.Index("ix_audit_log_actor_client_id", sa.text(AUDIT_ACTOR_CLIENT_SQL), "id").ddl_if(dialect="postgresql"),
    # A person's face enrolment entries (identity.domain.face_enrolment): which enrolment is current,
    # read at every face verification. Partial, so the read touches those few rows, not every login
    # and verification that names the person.
    sa.Index("ix_audit_log_face_enrolment", "subject", "id", postgresql_where=sa.text(FACE_ENROLMENT_KINDS_SQL),
             sqlite_where=sa.text(FACE_ENROLMENT_KINDS_SQL)),
)

audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("chain_seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("signature", sa.Text, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    # Version 2 checkpoints sign the checkpoint before them too (release_service/domain/audit_chain.py);
    # NULL in those signed before (version 1).
    sa.Column("prev_chain_seq", sa.BigInteger),
    sa.Column("prev_hash", sa.String(64)),
)

# ---- identity ----------------------------------------------------------------------------------

oauth_clients = sa.Table(
    "oauth_clients",
    metadata,
    sa.Column("client_id", sa.String(100), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("organisation_id", UUID, sa.ForeignKey("organisations.id")),
    sa.Column("role", sa.String(32), nullable=False),  # shipping_line, terminal_gate, driver_app, ...
    sa.Column("secret_hash", sa.String(200)),
    sa.Column("token_endpoint_auth_method", sa.String(40), nullable=False),
    sa.Column("grant_types", JSON, nullable=False),
    sa.Column("redirect_uris", JSON, nullable=False),
    sa.Column("scopes", JSON, nullable=False),
    sa.Column("jwks", JSON),
    sa.Column("jwks_uri", sa.String(2000)),
    sa.Column("terminal_code", sa.String(32)),
    sa.Column("dpop_bound", sa.Boolean, nullable=False, default=False),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("post_logout_redirect_uris", JSON, nullable=False, server_default="[]"),
    # RFC 9126 §6 require_pushed_authorization_requests (always true for confidential web clients).
    sa.Column("require_par", sa.Boolean, nullable=False, server_default=sa.false()),
    # OIDC Core §2 default_acr_values: the minimum acr this client accepts for its users.
    sa.Column("min_acr", sa.String(64)),
    # RFC 7592: the registration access token (hashed) that manages a dynamically registered client.
    sa.Column("registration_token_hash", sa.String(64)),
    # The remaining RFC 7591 §2 metadata (client_name, client_uri, logo_uri, contacts, ...), as given.
    sa.Column("extra_metadata", JSON, nullable=False, server_default="{}"),
    sa.Column("updated_at", UTCDateTime),
)

# Login sessions at the provider (the browser's cookie holds the clear id; we keep its SHA-256).
login_sessions = sa.Table(
    "login_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("sid", sa.String(64), nullable=False, unique=True),  # OIDC front/back-channel session id
    sa.Column("person_id", UUID, sa.ForeignKey("persons.id"), nullable=False, index=True),
    sa.Column("acr", sa.String(64), nullable=False),
    sa.Column("amr", JSON, nullable=False),
    sa.Column("auth_time", UTCDateTime, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime),
    # The passkey that opened it (a login, an enrolment; a face step-up keeps its session's); NULL for an
    # upstream login. Removing that passkey ends the session, the remover's too (review 122, finding 1).
    sa.Column("credential_id", sa.String(1400)),
)

# Authorization codes (RFC 6749 §4.1.2): marked used, never deleted, so a reuse is detected (§4.1.2,
# "the authorization server SHOULD revoke all tokens previously issued based on that code").
authorization_codes = sa.Table(
    "authorization_codes",
    metadata,
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("client_id", sa.String(100), sa.ForeignKey("oauth_clients.client_id"), nullable=False),
    sa.Column("person_id", UUID, sa.ForeignKey("persons.id"), nullable=False),
    sa.Column("sid", sa.String(64)),
    sa.Column("redirect_uri", sa.String(2000), nullable=False),
    sa.Column("scope", sa.String(1000), nullable=False),
    sa.Column("nonce", sa.String(255)),
    sa.Column("code_challenge", sa.String(128), nullable=False),
    sa.Column("acr", sa.String(64), nullable=False),
    sa.Column("amr", JSON, nullable=False),
    sa.Column("auth_time", UTCDateTime, nullable=False),
    sa.Column("dpop_jkt", sa.String(64)),
    sa.Column("grant_id", UUID, nullable=False),  # what this code issued: tokens carry it
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
    sa.Column("used_at", UTCDateTime),
)

# One grant: everything issued from one authorization code (refresh tokens rotate within it).
# Revoking a grant ends its refresh tokens and lists its access tokens' jtis in revoked_tokens.
grants = sa.Table(
    "grants",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("client_id", sa.String(100), sa.ForeignKey("oauth_clients.client_id"), nullable=False, index=True),
    sa.Column("person_id", UUID, sa.ForeignKey("persons.id"), index=True),
    sa.Column("sid", sa.String(64), index=True),
    sa.Column("scope", sa.String(1000), nullable=False),
    sa.Column("acr", sa.String(64)),
    sa.Column("amr", JSON),
    sa.Column("auth_time", UTCDateTime),
    sa.Column("dpop_jkt", sa.String(64)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime),
    sa.Column("revoked_reason", sa.String(32)),
)

# Refresh tokens (RFC 6749 §6, OAuth 2.0 Security BCP §4.14): rotated on every use; a rotated one
# presented again revokes the whole grant (its "family").
refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("grant_id", UUID, sa.ForeignKey("grants.id"), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),  # active | rotated | revoked
    sa.Column("issued_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime),
)

# Access tokens issued within a grant, so revoking the grant can list them (they are JWTs).
issued_access_tokens = sa.Table(
    "issued_access_tokens",
    metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("grant_id", UUID, sa.ForeignKey("grants.id"), nullable=False, index=True),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

# Passkeys (WebAuthn Level 3 §4 "public key credential source"), several per person.
webauthn_credentials = sa.Table(
    "webauthn_credentials",
    metadata,
    sa.Column("credential_id", sa.String(1400), primary_key=True),  # base64url, up to 1023 bytes raw
    sa.Column("person_id", UUID, sa.ForeignKey("persons.id"), nullable=False, index=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("public_key", sa.LargeBinary, nullable=False),  # COSE_Key
    sa.Column("sign_count", sa.BigInteger, nullable=False),
    sa.Column("transports", JSON, nullable=False),
    sa.Column("aaguid", sa.String(36)),
    sa.Column("backup_eligible", sa.Boolean, nullable=False),
    sa.Column("backed_up", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # active | suspended | removed
    sa.Column("status_reason", sa.String(64)),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime),
    # Where it came from (identity.authn.credentials Provenance): code:<issuer> | account; NULL before 0014.
    sa.Column("enrolled_via", sa.String(120)),
    # It rests only on codes whose issuers could issue them for a privileged person; false before 0014.
    sa.Column("privileged_enrolment", sa.Boolean, nullable=False, server_default=sa.false()),
)

# One-time enrolment codes handed out by the badge office: register a first passkey.
enrolment_codes = sa.Table(
    "enrolment_codes",
    metadata,
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("person_id", UUID, sa.ForeignKey("persons.id"), nullable=False, index=True),
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime),
    sa.Column("ended_at", UTCDateTime),  # ended before use (a privileged role, a suspension): no clock passes it
    # The issuer was refused no role (port security, an admin client, the CLI): identity.authn.enrolment.
    sa.Column("privileged_issuer", sa.Boolean, nullable=False, server_default=sa.false()),
    # The officer who issued it through the console (NULL: an admin client, the CLI, or a code from before
    # migration 0022). Its life ends with his issuing role's (identity.authn.enrolment, review 122).
    sa.Column("issued_by", UUID, sa.ForeignKey("persons.id"), index=True),
)

# RFC 7591 §3: initial access tokens an admin obtains to let an integrator register a client.
initial_access_tokens = sa.Table(
    "initial_access_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("organisation_id", UUID, sa.ForeignKey("organisations.id")),  # registered clients act for it
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("alg", sa.String(10), nullable=False),
    sa.Column("use", sa.String(8), nullable=False),  # sig | enc
    sa.Column("public_jwk", JSON, nullable=False),
    # AES-GCM under the service's key-encryption key; NULL once a token key is retired or revoked (identity.keys)
    sa.Column("private_enc", sa.Text),
    sa.Column("status", sa.String(16), nullable=False),  # active | retiring | retired | revoked
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("retired_at", UTCDateTime),
    sa.Column("publish_until", UTCDateTime),
    # identity.keys: one active token key per algorithm. Writers take a lock; this makes the database
    # refuse a second active key should anything slip past it (the audit key, use "audit", is not counted).
    sa.Index("ix_signing_keys_one_active_per_alg", "alg", unique=True,
             postgresql_where=sa.text("status = 'active' AND use = 'sig'"),
             sqlite_where=sa.text("status = 'active' AND use = 'sig'")),
)

revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("expires_at", UTCDateTime, nullable=False, index=True),
    sa.Column("revoked_at", UTCDateTime, nullable=False),
)

# ---- port bans (issue 4: the national register's feed, identity/bans/) ----------------------

# The bans in force. The subject is a keyed hash (HMAC-SHA256 under the pepper) of the national
# register number: the clear number is never stored (SPEC.md "Identity"), persons carry the same hash.
port_bans = sa.Table(
    "port_bans",
    metadata,
    sa.Column("register", sa.String(64), primary_key=True),
    sa.Column("reference", sa.String(100), primary_key=True),
    sa.Column("subject_hash", sa.String(64), nullable=False, index=True),
    sa.Column("scope", sa.String(400), nullable=False),  # "all" or port codes, comma-separated
    sa.Column("banned_from", UTCDateTime, nullable=False),
    sa.Column("banned_until", UTCDateTime, nullable=False),
    sa.Column("feed_sequence", sa.BigInteger, nullable=False),
)

# The dataset this database holds: one row, its id made on first read (quaygate/identity_of_dataset.py,
# migration 0032). A Redis database serves one dataset (quaygate/dataset.py ``ForeignRedis``).
# ``redis_since``: when a server that shares Redis first took the serving lease; until ``quaygate redis
# release`` every process on the database needs Redis (quaygate/solo.py ``served_with_redis``, migration 0035).
dataset_identity = sa.Table(
    "dataset_identity",
    metadata,
    sa.Column("singleton", sa.Integer, primary_key=True, autoincrement=False),  # always 1: one row at most
    sa.Column("id", sa.String(36), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("redis_since", UTCDateTime, nullable=True),
)

# Which feed is in force, one row per register: the loader's sequence check reads it under its lock.
ban_feed_state = sa.Table(
    "ban_feed_state",
    metadata,
    sa.Column("register", sa.String(64), primary_key=True),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("issued_at", UTCDateTime, nullable=False),
    sa.Column("loaded_at", UTCDateTime, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),  # SHA-256 of the signed file: same file, no-op
)


# ---- badges: history and activation per facility (issue 4, migration 0004_badges) -------------

# Every status change of a badge: who, why, when. ``seq`` numbers a badge's changes 1, 2, 3 ...;
# the unique (badge, seq) makes the database refuse a forked history (identity/badges/store.py).
badge_status_events = sa.Table(
    "badge_status_events",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("badge_id", UUID, sa.ForeignKey("badges.id"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("from_status", sa.String(16)),  # None: issued
    sa.Column("to_status", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("badge_id", "seq", name="uq_badge_status_events_badge_seq"),
)

# A badge works at a terminal only once that terminal's security desk activated it there; the
# terminal may withdraw it. Withdrawn rows are kept (who, when); at most one live row per terminal.
badge_activations = sa.Table(
    "badge_activations",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("badge_id", UUID, sa.ForeignKey("badges.id"), nullable=False, index=True),
    sa.Column("terminal_code", sa.String(32), nullable=False),
    sa.Column("activated_by", sa.String(100), nullable=False),
    sa.Column("activated_at", UTCDateTime, nullable=False),
    sa.Column("withdrawn_by", sa.String(100)),
    sa.Column("withdrawn_at", UTCDateTime),
    sa.Column("withdraw_reason", sa.String(500)),
    sa.Index("ix_badge_activations_live", "badge_id", "terminal_code", unique=True,
             postgresql_where=sa.text("withdrawn_at IS NULL"), sqlite_where=sa.text("withdrawn_at IS NULL")),
)

# ---- gate verify (issue 5) ------------------------------------------------------------------------

# Every gate decision, kept for the terminal and port security: the answer given, the request's
# fingerprint (the same request_id must carry the same request) and whether the gate move was
# recorded. One row per (terminal, request_id): the idempotency of POST /gate/v1/verify.
gate_decisions = sa.Table(
    "gate_decisions",
    metadata,
    sa.Column("id", UUID, primary_key=True),  # the decision_id
    sa.Column("terminal", sa.String(32), nullable=False),
    sa.Column("request_id", sa.String(100), nullable=False),
    sa.Column("client_id", sa.String(100), nullable=False),
    sa.Column("lane", sa.String(32), nullable=False),
    sa.Column("direction", sa.String(3), nullable=False),
    sa.Column("mode", sa.String(6), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("decision", sa.String(6), nullable=False),
    sa.Column("reasons", JSON, nullable=False),
    sa.Column("release_id", UUID, index=True),
    sa.Column("container_number", sa.String(11)),
    sa.Column("committed", sa.Boolean, nullable=False),
    sa.Column("response", JSON, nullable=False),
    sa.Column("observed_at", UTCDateTime, nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False, index=True),
    # The nomination the decision judged, [driver person id, plate, country] (an override goes in under
    # it, or not at all); None when it judged none, and on decisions recorded before migration 0012.
    sa.Column("nomination", JSON),
    # The face evidence the decision weighed (gate.FaceRecord.as_json: kind none, image or match_result,
    # score or distance, matched, min score or tolerance, whether a match result was trusted; review 131).
    # None on decisions recorded before migration 0025.
    sa.Column("face", JSON),
    # The badge the read found and its holder as found (review 174: a badge reported stolen, or another
    # person's, tried at the gate), ids only: never the number or card UID read. None when no badge was
    # read or the read found none, and on decisions recorded before migration 0038.
    sa.Column("badge_id", UUID),
    sa.Column("badge_holder_id", UUID),
    sa.UniqueConstraint("terminal", "request_id", name="uq_gate_decisions_terminal_request"),
)
# A gate-in decision whose own face the service found another person's (release_service/adapters/sqla/store.py
# ``_own_face_against``, as PostgreSQL reads it), and the partial index of those by right, newest first
# (migration 0033, review 149 finding 5): the gate reads each right with the last of them, one probe of it,
# where the index on release_id alone read and judged every decision of the right. The probe writes this
# predicate out, constants and all (a parameter would keep a generic plan off the index), and a test holds
# the two to one text (tests/test_gate_face_against_index.py). PostgreSQL only: SQLite reads the decisions.
FACE_AGAINST_SQL = (
    "direction = 'in' AND CAST((face ->> 'kind') AS VARCHAR) = 'image' AND "
    "(CAST((face ->> 'unavailable') AS VARCHAR) = 'face_not_live' OR "
    "CAST((face ->> 'unavailable') AS VARCHAR) = 'face_replayed' OR "
    "CAST((face ->> 'distance') AS FLOAT) IS NOT NULL AND (CAST((face ->> 'matched') AS BOOLEAN) IS NOT true OR "
    "CAST((face ->> 'distance') AS FLOAT) > CAST((face ->> 'tolerance') AS FLOAT)))"
)
sa.Index("ix_gate_decisions_face_against", gate_decisions.c.release_id, gate_decisions.c.decided_at.desc(),
         gate_decisions.c.id, postgresql_where=sa.text(FACE_AGAINST_SQL)).ddl_if(dialect="postgresql")

# A terminal releasing a refused truck: once per decision, with a reason (SPEC.md "override").
gate_overrides = sa.Table(
    "gate_overrides",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("decision_id", UUID, sa.ForeignKey("gate_decisions.id"), nullable=False, unique=True),
    sa.Column("release_id", UUID, sa.ForeignKey("releases.id"), nullable=False),
    sa.Column("terminal", sa.String(32), nullable=False),
    sa.Column("client_id", sa.String(100), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
)

# What each committed change of the gate's facts touched (review 169, finding 2): written in the change's own
# transaction, just before its commit, by every process whose gate facts are in Redis (release_service/
# adapters/gate_facts.py ``committing``), whether or not Redis took its pending mark. Every server's drainer
# polls it about once a second and replaces those generations in Redis (``catch_up``), so a writer cut off
# from Redis still reaches the gates through PostgreSQL. ``txid``: the writer's transaction id (a poll takes
# whatever committed since the horizon of its last snapshot: numbers are taken before their commits, not in
# their order); ``names``: the generation names; ``id``: what Redis takes each change once under. Kept an
# hour (``prune_changes``): by then every copy filled before a change has expired.
gate_fact_changes = sa.Table(
    "gate_fact_changes",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("id", UUID, nullable=False, default=uuid.uuid4),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("txid", sa.BigInteger),
    sa.Column("names", JSON, nullable=False),
    sa.Index("ix_gate_fact_changes_txid", "txid"),
    sa.Index("ix_gate_fact_changes_at", "at"),
)

# Each terminal's gate policy (release_service.domain.gate.TerminalPolicy as JSON); a terminal
# without a row gets the defaults.
terminal_policies = sa.Table(
    "terminal_policies",
    metadata,
    sa.Column("terminal_code", sa.String(32), primary_key=True),
    sa.Column("policy", JSON, nullable=False),
    sa.Column("updated_by", sa.String(100), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# Issue 5, offline gate mode: decisions a gate adapter took from gate passes while the verify service
# was unreachable, reconciled when it reconnected (one per terminal and request_id). ``verdict`` says
# what the reconcile did; ``flag`` marks a right used twice or changed after its pass (port security).
gate_offline_decisions = sa.Table(
    "gate_offline_decisions",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("terminal", sa.String(32), nullable=False),
    sa.Column("request_id", sa.String(100), nullable=False),
    sa.Column("client_id", sa.String(100), nullable=False),
    sa.Column("lane", sa.String(32), nullable=False),
    sa.Column("direction", sa.String(3), nullable=False),
    sa.Column("mode", sa.String(6), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("decision", sa.String(6), nullable=False),
    sa.Column("reasons", JSON, nullable=False),
    sa.Column("basis", sa.String(16), nullable=False),
    sa.Column("release_id", UUID, nullable=True, index=True),
    sa.Column("pass_id", sa.String(64), nullable=True),
    sa.Column("ban_list_age_seconds", sa.Integer, nullable=True),
    sa.Column("verdict", sa.String(24), nullable=False),
    sa.Column("flag", sa.String(32), nullable=True, index=True),
    sa.Column("other_decision_id", UUID, nullable=True),
    sa.Column("response", JSON, nullable=False),
    sa.Column("observed_at", UTCDateTime, nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Column("reconciled_at", UTCDateTime, nullable=False),
    # Its place in the adapter's sealed outbox chain (gate_adapters/runtime/outbox.py rule 10), when told.
    sa.Column("outbox_id", sa.String(64), nullable=True),
    sa.Column("outbox_seq", sa.BigInteger, nullable=True),
    # The face evidence the adapter's decision weighed (gate.FaceRecord.as_json, as gate_decisions.face),
    # as it reported it (migration 0031); None from an adapter from before.
    sa.Column("face", JSON, nullable=True),
    sa.UniqueConstraint("terminal", "request_id", name="uq_gate_offline_decisions_terminal_request"),
    sa.Index("ix_gate_offline_decisions_outbox", "client_id", "outbox_id", "outbox_seq"),
)

# The highest place each adapter outbox told us (review 92): a head that goes back is an earlier copy of
# the file put back (domain/gate_pass.py ``judge_outbox``). One row per gate client and outbox chain.
gate_outbox_marks = sa.Table(
    "gate_outbox_marks",
    metadata,
    sa.Column("client_id", sa.String(100), primary_key=True),
    sa.Column("outbox_id", sa.String(64), primary_key=True),
    sa.Column("terminal", sa.String(32), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("intact", sa.Boolean, nullable=False),
    sa.Column("first_seen_at", UTCDateTime, nullable=False),
    sa.Column("seen_at", UTCDateTime, nullable=False),
)

# ---- brokered login (issue 6 part 1, identity/broker/) ---------------------------------------------

# A person's account at an upstream OpenID provider (itsme-style), by (issuer, sub). A re-bound link
# (the upstream sub changed) is marked "replaced", never deleted; one active link per person and issuer.
upstream_links = sa.Table(
    "upstream_links",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("issuer", sa.String(255), nullable=False),
    sa.Column("sub", sa.String(255), nullable=False),
    sa.Column("person_id", UUID, sa.ForeignKey("persons.id"), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),  # active | replaced
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_login_at", UTCDateTime),
    sa.Column("replaced_at", UTCDateTime),
    sa.UniqueConstraint("issuer", "sub", name="uq_upstream_links_issuer_sub"),
    sa.Index("ix_upstream_links_one_active", "issuer", "person_id", unique=True,
             postgresql_where=sa.text("status = 'active'"), sqlite_where=sa.text("status = 'active'")),
)

# Our RSA encryption keys (use "enc", RSA-OAEP-256): upstream providers encrypt id tokens and userinfo
# to them. Private JWK sealed like the signing keys; a retiring key stays published and usable until
# publish_until (the upstreams' caches of our JWKS have expired by then).
encryption_keys = sa.Table(
    "encryption_keys",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("alg", sa.String(20), nullable=False),
    sa.Column("public_jwk", JSON, nullable=False),
    sa.Column("private_enc", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # active | retiring | retired
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("retired_at", UTCDateTime),
    sa.Column("publish_until", UTCDateTime),
    sa.Index("ix_encryption_keys_one_active", "alg", unique=True,
             postgresql_where=sa.text("status = 'active'"), sqlite_where=sa.text("status = 'active'")),
)

# ---- face templates (issue 6, identity/face/) ----------------------------------------------------
# One sealed face template per person (AES-256-GCM under the data key, which is not in the database;
# associated data person and template ids). No image is ever stored, nor the template in clear.
face_templates = sa.Table(
    "face_templates",
    metadata,
    sa.Column("person_id", UUID, sa.ForeignKey("persons.id"), primary_key=True),
    sa.Column("template_id", UUID, nullable=False, unique=True),
    sa.Column("sealed", sa.Text, nullable=False),
    sa.Column("key_id", sa.String(16), nullable=False),  # which data key sealed it (key rotation)
    sa.Column("source", sa.String(16), nullable=False),  # id_photo | live_capture
    sa.Column("face_px", sa.Integer, nullable=False),
    sa.Column("sharpness", sa.Float, nullable=False),
    sa.Column("enrolled_by", sa.String(100), nullable=False),
    sa.Column("enrolled_at", UTCDateTime, nullable=False),
    # Review 131, finding 4: since when the retention sweep has seen the person with no badge in use and
    # no membership in force (NULL: he has one); past face_retention_days_after_leaving the template is
    # withdrawn (identity.face.retention).
    sa.Column("leaving_since", UTCDateTime, index=True),
    # Review 154, finding 1: the face a replacement is also judged against (identity.face.service), when this
    # template was enrolled as a retake of the one before it: the template of the last enrolment judged on
    # its own, its id and its template sealed under its own ids. NULL: this template is that face itself.
    # In this row, so erased with the template.
    sa.Column("anchor_template_id", UUID),
    sa.Column("anchor_sealed", sa.Text),
)

# Keyed digests of the captures matched for a person (identity.face.store.CaptureStore): the same bytes
# again, for another use, within the replay window are a replay (face_replayed). HMAC-SHA256 under a key
# derived from the data key, never the image nor its plain hash; pruned once older than the window.
face_captures = sa.Table(
    "face_captures",
    metadata,
    sa.Column("person_id", UUID, sa.ForeignKey("persons.id"), primary_key=True),
    sa.Column("digest", sa.LargeBinary(32), primary_key=True),
    sa.Column("used_for", sa.String(200), nullable=False),  # gate:<terminal>:<request_id> | step_up:<sid>
    sa.Column("seen_at", UTCDateTime, nullable=False, index=True),
)

"""Registering and managing clients: dynamic registration (RFC 7591) authorised by an initial access
token, management with a registration access token (RFC 7592), and the admin's own registrations.

One transaction per use case (STYLE.md #5). Tokens are 256-bit random strings shown once; only their
SHA-256 is stored. Single use is a conditional UPDATE (STYLE.md #4):

    initial access token   unused --register (UPDATE ... WHERE used_at IS NULL AND expires_at > now)--> used
                             |
                             +--end_iats_created_by() (the client that minted it was deactivated or deleted, or
                             |                         its secret rotated revoking its tokens)--> ended
                             +--end_iats_for() (the organisation it is tied to was deactivated)--> ended
    registration token     each read or update swaps it for a new one (UPDATE ... WHERE hash = :old),
                           so a copied token stops working at its holder's next call (RFC 7592 §3
                           lets the server rotate it); an admin's rotation of the client's secret
                           swaps it too (``rotate_secret``); delete clears it. It serves only an
                           active client of no organisation or of an active one (``_held``; review
                           163, finding 4)

A refused registration rolls back, so the initial access token stays unused.

An initial access token ends with the admin client that minted it (``created_by``), and with the
organisation it is tied to (review 163, finding 1: it outlived them by up to 30 days, and the thief of an
admin client's secret, found out, the secret rotated and the client deactivated, registered a
terminal_gate client with a terminal's token and got gate:verify). As its enrolment codes do
(identity.authn.enrolment ``end_codes_created_by``, review 146, finding 1), in the transaction that
deactivates or deletes the client, rotates its secret revoking its tokens, or deactivates its organisation
(identity.organisations ``set_active``, which also ends the tokens tied to the organisation); the audit
entry counts them. A reactivation brings none back. Ended is marked, not deleted: its ``expires_at`` is set
back to its ``created_at``, a time no registration's clock passes (review 67's reason for
``enrolment_codes.ended_at``: an expiry set to the time of the ending would let through a registration
whose clock was read before it), so it answers ``iat_expired`` as an ended enrolment code answers
``enrolment_code_expired``; no token is minted for under 60 s, so ``expires_at = created_at`` is an ended
one, and the expiry it was minted with stays on its ``identity.iat.created`` entry.

The mint is one act with those endings, as an enrolment code's issue is: it share-locks the row of the
organisation the token is tied to, then its minting client's organisation's row and the client's row
(``enrolment.client_ended``), and reads their status after. So a deactivation committed first is seen and
the mint refused (``organisation_inactive``, ``issuer_inactive``), and one that comes during the mint waits
for it, then ends its token. A registration share-locks the token's organisation's row before it claims
the token (the order the deactivation takes them in: the organisation's row, then the token's) and refuses
a token whose organisation is inactive (``iat_organisation_inactive``: one minted before the mend): its
client is not one of a deactivated organisation that comes to life with its reactivation, and a
deactivation that comes during the registration waits for it and counts the new client among the
organisation's.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from quaygate.schema import audit_log, initial_access_tokens, oauth_clients, organisations
from quaygate.schema import grants as grants_table

from .. import audit
from ..authn import enrolment
from ..clients import hash_secret, new_client_id, new_secret, public_jwks, verify_secret
from ..domain import assurance
from ..domain.roles import SECRET_METHODS, AuthMethod, ClientRole, RegistrationRefused, check_registration
from ..grants import GrantStore
from .metadata import INVALID_CLIENT_METADATA, SERVER_FIELDS, ClientMetadata, MetadataRefused, check_metadata

log = logging.getLogger(__name__)

REGISTRATION_PATH = "/oauth2/register"
IAT_PREFIX = "qgiat_"  # recognisable in logs and secret scanners
RAT_PREFIX = "qgrat_"
DEFAULT_IAT_TTL = 24 * 3600
MAX_IAT_TTL = 30 * 24 * 3600


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class RegistrationError(Exception):
    """``error``: an RFC 7591 §3.2.2 / RFC 6750 §3.1 code; ``status`` the HTTP status of the edge."""

    def __init__(self, error: str, description: str, status: int = 400, *, reason: str | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.reason = reason or error


def _unauthorised(reason: str, description: str = "The access token is invalid.") -> RegistrationError:
    return RegistrationError("invalid_token", description, 401, reason=reason)


def _iat_refused(row: Any, now: datetime) -> RegistrationError:
    """Why an initial access token (its row, or None) cannot register."""
    reason = "iat_unknown" if row is None else "iat_expired" if row.expires_at <= now else "iat_used"
    return _unauthorised(reason)


@dataclass(frozen=True, slots=True)
class Organisation:
    id: uuid.UUID
    kind: str
    terminal_code: str | None
    active: bool


@dataclass(frozen=True, slots=True)
class Registered:
    """A new client: its document and the credentials shown once."""

    document: dict[str, Any]
    client_id: str
    client_secret: str | None
    registration_access_token: str | None


@dataclass(frozen=True, slots=True)
class Rotated:
    """A rotated client's new credentials, shown once: its secret and, for a client managed through
    RFC 7592, its new registration access token (and where to use it)."""

    client_secret: str
    registration_access_token: str | None
    registration_client_uri: str | None


class ClientManagement:
    def __init__(self, engine: sa.Engine, grants: GrantStore, *, issuer: str, access_token_ttl: int = 600,
                 on_change: Callable[[str], None] = lambda client_id: None,
                 login_acrs: frozenset[str] = assurance.login_acrs()) -> None:
        """``on_change``: told the client_id after every committed change of what ClientRegistry
        keeps of a client (ClientRegistry.changed, so no replica keeps serving the old record).
        ``login_acrs``: the levels a login here reaches (identity.broker.config.login_acrs of the
        settings), the only ones default_acr_values may require (metadata.check_metadata)."""
        self._engine = engine
        self._login_acrs = login_acrs
        self._on_change = on_change
        self._access_token_ttl = access_token_ttl
        self._grants = grants
        self._issuer = issuer.rstrip("/")

    # ---- initial access tokens ----------------------------------------------------------------

    def create_initial_access_token(
        self, *, organisation_id: uuid.UUID | None, created_by: str, ttl: int | None, now: datetime
    ) -> tuple[str, datetime]:
        """A single-use initial access token (RFC 7591 §3), tied to an organisation or not. Refused for a
        deactivated organisation (``organisation_inactive``, 422) and to a deactivated client, or one of a
        deactivated organisation (``issuer_inactive``, 403), their rows share-locked first (module
        docstring: a deactivation during the mint waits for it, then ends its token)."""
        ttl = DEFAULT_IAT_TTL if ttl is None else ttl
        if not 60 <= ttl <= MAX_IAT_TTL:
            raise RegistrationError("invalid_ttl", f"ttl is between 60 and {MAX_IAT_TTL} seconds.", 422)
        token = IAT_PREFIX + secrets.token_urlsafe(32)
        expires_at = now + timedelta(seconds=ttl)
        with self._engine.begin() as conn:
            if organisation_id is not None and not self._organisation(conn, organisation_id, lock=True).active:
                log.info("identity.iat.refused.organisation_inactive")
                raise RegistrationError("organisation_inactive", "The organisation is deactivated: a token for "
                                        "it would register nothing.", 422)
            if enrolment.client_ended(conn, created_by):
                log.info("identity.iat.refused.issuer_inactive")
                raise RegistrationError("issuer_inactive", "The client asking is deactivated, or its "
                                        "organisation is.", 403)
            conn.execute(initial_access_tokens.insert().values(
                token_hash=_sha256(token), organisation_id=organisation_id, created_by=created_by,
                created_at=now, expires_at=expires_at))
            audit.record("identity.iat.created", at=now, actor={"client_id": created_by}, conn=conn,
                         data={"organisation_id": str(organisation_id) if organisation_id else None,
                               "expires_at": expires_at.isoformat()})
        return token, expires_at

    def _claim_iat(self, conn: sa.Connection, token: str, now: datetime) -> tuple[Organisation | None, str]:
        """Use an initial access token once: one conditional UPDATE (concurrent uses: one wins). Its
        organisation's row share-locked first, and an inactive one refused (module docstring)."""
        if not token.startswith(IAT_PREFIX):
            raise _unauthorised("iat_unknown")
        h = _sha256(token)
        minted = conn.execute(sa.select(initial_access_tokens.c.organisation_id, initial_access_tokens.c.created_by)
                              .where(initial_access_tokens.c.token_hash == h)).first()
        tied = minted.organisation_id if minted is not None else None
        org = self._organisation(conn, tied, lock=True) if tied is not None else None
        # A token is no better than the client that minted it, whenever it was ended: one minted before its
        # client was deactivated and not ended then (before the mend) registers nothing. Locked in the mint's
        # order (the client's organisation's row, the client's), before the token's row.
        minter_ended = minted is not None and enrolment.client_ended(conn, minted.created_by)
        claimed = conn.execute(
            initial_access_tokens.update()
            .where(initial_access_tokens.c.token_hash == h, initial_access_tokens.c.used_at.is_(None),
                   initial_access_tokens.c.expires_at > now)
            .values(used_at=now)
        ).rowcount
        row = conn.execute(
            sa.select(initial_access_tokens.c.organisation_id, initial_access_tokens.c.created_by,
                      initial_access_tokens.c.used_at, initial_access_tokens.c.expires_at)
            .where(initial_access_tokens.c.token_hash == h)
        ).first()
        if claimed != 1 or row is None:
            raise _iat_refused(row, now)
        if org is not None and not org.active:  # rolled back with the refusal: the token stays unused
            raise _unauthorised("iat_organisation_inactive")
        if minter_ended:
            raise _unauthorised("iat_issuer_inactive")
        return org, str(row.created_by)

    def check_initial_access_token(self, token: str, *, now: datetime) -> None:
        """Could ``token`` register now (known, unused, unexpired, its organisation if any active)? Else
        RegistrationError 401, as ``register`` refuses it. A read, for the edge to refuse a caller before
        reading its metadata; nothing is claimed: ``register`` claims the token in the transaction that
        registers, so a token used, expired or ended meanwhile is refused there."""
        if not token.startswith(IAT_PREFIX):
            raise _unauthorised("iat_unknown")
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(initial_access_tokens.c.used_at, initial_access_tokens.c.expires_at,
                          initial_access_tokens.c.created_by, organisations.c.active)
                .outerjoin(organisations, organisations.c.id == initial_access_tokens.c.organisation_id)
                .where(initial_access_tokens.c.token_hash == _sha256(token))
            ).first()
            minter_ended = row is not None and enrolment.client_ended(conn, row.created_by, lock=False)
        if row is None or row.used_at is not None or row.expires_at <= now:
            raise _iat_refused(row, now)
        if row.active is False:
            raise _unauthorised("iat_organisation_inactive")
        if minter_ended:
            raise _unauthorised("iat_issuer_inactive")

    def check_registration_token(self, client_id: str, token: str) -> None:
        """Is ``token`` the registration access token of the active client ``client_id``, of an active
        organisation if any (``_held``)? Else RegistrationError 401, as ``update`` and ``delete`` refuse
        it (RFC 7592 §2.1: an unknown client and a wrong token look the same). A read, for the edge to
        refuse a caller before reading its metadata; the token is still swapped (``_rotate``) in the
        transaction that updates."""
        if not token.startswith(RAT_PREFIX):
            raise _unauthorised("rat_invalid")
        with self._engine.connect() as conn:
            found = conn.execute(sa.select(oauth_clients.c.client_id).where(*_held(client_id, token))).first()
        if found is None:
            raise _unauthorised("rat_invalid")

    # ---- RFC 7591 ------------------------------------------------------------------------------

    def register(self, initial_access_token: str, doc: Mapping[str, Any], *, now: datetime) -> Registered:
        """RFC 7591 §3.1: a client acting for the token's organisation (if any). One transaction."""
        with self._engine.begin() as conn:
            org, created_by = self._claim_iat(conn, initial_access_token, now)
            org_id = org.id if org else None
            meta = _checked(doc, org_kind=org.kind if org else None, login_acrs=self._login_acrs)
            out = self._insert(conn, meta, org=org, terminal_code=None, now=now, dynamic=True)
            audit.record("identity.client.registered", at=now, actor={"iat_created_by": created_by},
                         subject=out.client_id, conn=conn,
                         data={"role": meta.role.value, "organisation_id": str(org_id) if org_id else None,
                               "dynamic": True})
        return out

    def register_by_admin(
        self,
        doc: Mapping[str, Any],
        *,
        organisation_id: uuid.UUID | None,
        terminal_code: str | None,
        admin: str,
        now: datetime,
    ) -> Registered:
        """The admin API's registration: any role (admin included), any method, no registration token."""
        with self._engine.begin() as conn:
            org = self._organisation(conn, organisation_id) if organisation_id else None
            meta = _checked(doc, org_kind=org.kind if org else None, allowed_methods=frozenset(AuthMethod),
                            allow_admin=True, login_acrs=self._login_acrs)
            out = self._insert(conn, meta, org=org, terminal_code=terminal_code, now=now, dynamic=False)
            audit.record("identity.admin.client.registered", at=now, actor=audit.actor_fields(admin),
                         subject=out.client_id, conn=conn,
                         data={"role": meta.role.value,
                               "organisation_id": str(organisation_id) if organisation_id else None})
        return out

    def _insert(self, conn: sa.Connection, meta: ClientMetadata, *, org: Organisation | None,
                terminal_code: str | None, now: datetime, dynamic: bool) -> Registered:
        jwks, bound = _keys_and_terminal(meta, org, terminal_code)
        client_id, secret = new_client_id(meta.role), new_secret(meta.auth_method)
        rat = RAT_PREFIX + secrets.token_urlsafe(32) if dynamic else None
        conn.execute(oauth_clients.insert().values(
            client_id=client_id, organisation_id=org.id if org else None, created_at=now, updated_at=now,
            secret_hash=hash_secret(secret) if secret else None, terminal_code=bound, active=True,
            registration_token_hash=_sha256(rat) if rat else None, **_columns(meta, jwks)))
        document = self._document(self._row(conn, client_id))
        if secret:
            document["client_secret"] = secret
            document["client_secret_expires_at"] = 0  # RFC 7591 §3.2.1: does not expire
        if rat:
            document["registration_access_token"] = rat
        return Registered(document, client_id, secret, rat)

    # ---- RFC 7592 ------------------------------------------------------------------------------

    def read(self, client_id: str, token: str, *, now: datetime) -> dict[str, Any]:
        """RFC 7592 §2.1: the client's metadata, with a new registration access token. Not a change
        ``on_change`` hears of: the token swapped is not in ClientRegistry's records, and telling would
        empty every replica's memory of clients, on any token holder's every read."""
        with self._engine.begin() as conn:
            rat = self._rotate(conn, client_id, token, now)
            document = self._document(self._row(conn, client_id))
        document["registration_access_token"] = rat
        return document

    def update(self, client_id: str, token: str, doc: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
        """RFC 7592 §2.2: replace the metadata (omitted members return to their defaults)."""
        with self._engine.begin() as conn:
            rat = self._rotate(conn, client_id, token, now)
            row = self._row(conn, client_id)
            if not isinstance(doc, Mapping):
                raise RegistrationError(INVALID_CLIENT_METADATA, "The metadata must be a JSON object.")
            if doc.get("client_id") != client_id:  # RFC 7592 §2.2: REQUIRED, and must match
                raise RegistrationError(INVALID_CLIENT_METADATA, "client_id must be the client's own.")
            sent = [f for f in SERVER_FIELDS if f in doc]
            if sent:
                raise RegistrationError(INVALID_CLIENT_METADATA, f"Do not send {', '.join(sent)}.")
            if "client_secret" in doc and not verify_secret(str(doc["client_secret"]), row.secret_hash):
                raise RegistrationError(INVALID_CLIENT_METADATA, "client_secret does not match.")
            org = self._organisation(conn, row.organisation_id) if row.organisation_id else None
            meta = _checked(doc, org_kind=org.kind if org else None, fixed_role=ClientRole(row.role),
                            fixed_method=AuthMethod(row.token_endpoint_auth_method), login_acrs=self._login_acrs)
            jwks, bound = _keys_and_terminal(meta, org, row.terminal_code)
            conn.execute(oauth_clients.update().where(oauth_clients.c.client_id == client_id).values(
                terminal_code=bound, updated_at=now, **_columns(meta, jwks)))
            audit.record("identity.client.updated", at=now, actor={"client_id": client_id}, subject=client_id,
                         conn=conn, data={"dynamic": True})
            document = self._document(self._row(conn, client_id))
        self._on_change(client_id)
        document["registration_access_token"] = rat
        return document

    def delete(self, client_id: str, token: str, *, now: datetime) -> None:
        """RFC 7592 §2.3: deactivate the client (rows are kept for the audit trail), end its
        registration token, revoke its grants (refresh tokens and their access tokens) and end the
        enrolment codes it issued (enrolment.end_codes_created_by; review 146, finding 1) and the initial
        access tokens it minted (``end_iats_created_by``; review 163, finding 1)."""
        with self._engine.begin() as conn:
            enrolment.lock_organisation_of(conn, client_id)
            done = conn.execute(
                oauth_clients.update()
                .where(*_held(client_id, token))
                .values(active=False, registration_token_hash=None, updated_at=now)
            ).rowcount
            if done != 1:
                raise _unauthorised("rat_invalid")
            revoked = self._revoke_grants(conn, client_id, now)
            self._grants.revocations.revoke_client(conn, client_id, now=now, token_ttl=self._access_token_ttl)
            codes = enrolment.end_codes_created_by(conn, client_id, now=now)
            iats = end_iats_created_by(conn, client_id, now=now)
            audit.record("identity.client.deleted", at=now, actor={"client_id": client_id}, subject=client_id,
                         conn=conn, data={"grants_revoked": revoked, "enrolment_codes_ended": codes,
                                          "initial_access_tokens_ended": iats})
        self._on_change(client_id)

    def deactivate(self, client_id: str, *, admin: str, now: datetime) -> bool:
        """The admin API's deactivation; False when there is no such active client. Its grants are
        revoked, and the enrolment codes it issued end (an admin client's: each could enrol an officer;
        enrolment.end_codes_created_by, review 146, finding 1), and so do the initial access tokens it
        minted (each could register a client, a terminal's gate; ``end_iats_created_by``, review 163,
        finding 1), in the same transaction."""
        with self._engine.begin() as conn:
            done = conn.execute(
                oauth_clients.update()
                .where(oauth_clients.c.client_id == client_id, oauth_clients.c.active.is_(True))
                .values(active=False, registration_token_hash=None, updated_at=now)
            ).rowcount
            if done != 1:
                return False
            revoked = self._revoke_grants(conn, client_id, now)
            self._grants.revocations.revoke_client(conn, client_id, now=now, token_ttl=self._access_token_ttl)
            codes = enrolment.end_codes_created_by(conn, client_id, now=now)
            iats = end_iats_created_by(conn, client_id, now=now)
            audit.record("identity.admin.client.deactivated", at=now, actor=audit.actor_fields(admin),
                         subject=client_id, conn=conn, data={"grants_revoked": revoked, "enrolment_codes_ended": codes,
                                                             "initial_access_tokens_ended": iats})
        self._on_change(client_id)
        return True

    def rotate_secret(self, client_id: str, *, admin: str, revoke_tokens: bool, now: datetime) -> Rotated:
        """A new client secret for a client that authenticates with one (client_secret_basic or
        client_secret_post), returned once: a leaked secret is answered without deleting the client.
        Only its scrypt hash is stored, in place of the old one, which is refused from the commit on:
        at once in this process, within ClientRegistry's ``check_every`` in the other replicas (the
        shared epoch that ``on_change`` bumps), and the SecretChecker memo, keyed on the stored hash,
        misses. The tokens already issued stay valid until they expire, unless ``revoke_tokens``:
        then the client's grants and access tokens are revoked (``GrantStore.revoke_client_tokens``,
        as for a deactivated organisation), those issued within RevocationList.CLIENT_MARGIN after too,
        and the enrolment codes it issued end (enrolment.end_codes_created_by; review 146, finding 1:
        what the secret's thief minted is as much his as its tokens), and the initial access tokens it
        minted (``end_iats_created_by``; review 163, finding 1).

        A client managed through RFC 7592 (registered through RFC 7591) also gets a new registration
        access token, in the same UPDATE, returned once beside the secret; the old one is refused from
        the commit on. Registration hands out the secret and that token in one response, so whoever
        copied the one usually holds the other, and with it could read the client (swapping the token
        for one of his own), change its redirect URIs, scopes or keys, or delete it (nothing reactivates
        a deleted client), undoing the rotation. Renewed rather than ended: RFC 7592 §3 lets the server
        issue a new token at any time, and that is what an operator of RFC 7592 expects beside a new
        secret (Keycloak's "Regenerate registration access token"); an ended token would leave the owner
        no way back to managing his client, since nothing here issues a registration access token to a
        client that has none. A client without one (registered by an admin, or deleted) gets none.

        RegistrationError ``not_found`` (404) for an unknown client, ``no_client_secret`` (409) for one
        without a secret (private_key_jwt, none)."""
        secret = secrets.token_urlsafe(32)  # 256 bits, as new_secret makes them
        encoded = hash_secret(secret)  # ~40 ms of scrypt: before the transaction, not inside it
        rat = RAT_PREFIX + secrets.token_urlsafe(32)
        methods = sorted(m.value for m in SECRET_METHODS)
        held = oauth_clients.c.registration_token_hash
        with self._engine.begin() as conn:
            done = conn.execute(
                oauth_clients.update()
                .where(oauth_clients.c.client_id == client_id,
                       oauth_clients.c.token_endpoint_auth_method.in_(methods))
                .values(secret_hash=encoded, updated_at=now,
                        registration_token_hash=sa.case((held.is_not(None), _sha256(rat)), else_=None))
                .returning(held)
            ).first()
            if done is None:
                known = conn.execute(sa.select(oauth_clients.c.client_id)
                                     .where(oauth_clients.c.client_id == client_id)).first()
                log.info("identity.client.secret_rotation.refused.%s", "no_secret" if known else "unknown")
                if known is None:
                    raise RegistrationError("not_found", "No such client.", 404)
                raise RegistrationError("no_client_secret", "The client authenticates without a secret "
                                        "(private_key_jwt or none): there is no secret to rotate.", 409)
            renewed = done.registration_token_hash is not None
            revoked = codes = iats = 0
            if revoke_tokens:
                revoked = self._grants.revoke_client_tokens(conn, client_id, reason="client_secret_rotated", now=now,
                                                            access_token_ttl=self._access_token_ttl)
                codes = enrolment.end_codes_created_by(conn, client_id, now=now)
                iats = end_iats_created_by(conn, client_id, now=now)
            audit.record("identity.admin.client.secret_rotated", at=now, actor=audit.actor_fields(admin),
                         subject=client_id, conn=conn,
                         data={"tokens_revoked": revoke_tokens, "grants_revoked": revoked,
                               "registration_token_renewed": renewed, "enrolment_codes_ended": codes,
                               "initial_access_tokens_ended": iats})
        self._on_change(client_id)
        log.info("identity.client.secret_rotated")
        return Rotated(secret, rat if renewed else None,
                       f"{self._issuer}{REGISTRATION_PATH}/{client_id}" if renewed else None)

    def list_clients(self, *, limit: int = 100, after: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(oauth_clients).order_by(oauth_clients.c.client_id).limit(limit)
        if after:
            query = query.where(oauth_clients.c.client_id > after)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [{**self._document(r), "active": bool(r.active)} for r in rows]

    # ---- internals -----------------------------------------------------------------------------

    def _rotate(self, conn: sa.Connection, client_id: str, token: str, now: datetime) -> str:
        """Check the registration access token and swap it for a new one, atomically (RFC 7592 §3).
        An unknown client, a wrong token, a deactivated client and one of a deactivated organisation look
        the same (§2.1: 401; ``_held``)."""
        if not token.startswith(RAT_PREFIX):
            raise _unauthorised("rat_invalid")
        new = RAT_PREFIX + secrets.token_urlsafe(32)
        enrolment.lock_organisation_of(conn, client_id)
        done = conn.execute(
            oauth_clients.update()
            .where(*_held(client_id, token))
            .values(registration_token_hash=_sha256(new))
        ).rowcount
        if done != 1:
            raise _unauthorised("rat_invalid")
        return new

    def _revoke_grants(self, conn: sa.Connection, client_id: str, now: datetime) -> int:
        ids = conn.execute(
            sa.select(grants_table.c.id).where(grants_table.c.client_id == client_id,
                                               grants_table.c.revoked_at.is_(None))
        ).scalars().all()
        for gid in ids:
            self._grants.revoke_grant(conn, gid, reason="client_deactivated", now=now)
        return len(ids)

    @staticmethod
    def _organisation(conn: sa.Connection, organisation_id: uuid.UUID, *, lock: bool = False) -> Organisation:
        """``lock``: its row share-locked until the transaction ends (FOR SHARE on PostgreSQL, which a
        deactivation's UPDATE waits for; a row a deactivation holds is read as it committed it)."""
        query = sa.select(organisations.c.kind, organisations.c.terminal_code, organisations.c.active).where(
            organisations.c.id == organisation_id)
        row = conn.execute(query.with_for_update(read=True) if lock else query).first()
        if row is None:
            raise RegistrationError(INVALID_CLIENT_METADATA, "No such organisation.", 422,
                                    reason="organisation_unknown")
        return Organisation(organisation_id, row.kind, row.terminal_code, bool(row.active))

    @staticmethod
    def _row(conn: sa.Connection, client_id: str) -> Any:
        return conn.execute(sa.select(oauth_clients).where(oauth_clients.c.client_id == client_id)).one()

    def _document(self, row: Any) -> dict[str, Any]:
        """The client information response (RFC 7591 §3.2.1, RFC 7592 §3)."""
        grant_types = list(row.grant_types)
        doc: dict[str, Any] = {
            **(row.extra_metadata or {}),
            "client_id": row.client_id,
            "client_id_issued_at": int(row.created_at.timestamp()),
            "client_name": row.name,
            "redirect_uris": list(row.redirect_uris),
            "post_logout_redirect_uris": list(row.post_logout_redirect_uris or []),
            "grant_types": grant_types,
            "response_types": ["code"] if "authorization_code" in grant_types else [],
            "token_endpoint_auth_method": row.token_endpoint_auth_method,
            "scope": " ".join(row.scopes),
            "dpop_bound_access_tokens": bool(row.dpop_bound),
            "require_pushed_authorization_requests": bool(row.require_par),
            "quaygate_role": row.role,
        }
        if row.jwks:
            doc["jwks"] = row.jwks
        if row.min_acr:
            doc["default_acr_values"] = [row.min_acr]
        if row.organisation_id:
            doc["quaygate_organisation_id"] = str(row.organisation_id)
        if row.terminal_code:
            doc["quaygate_terminal"] = row.terminal_code
        if row.registration_token_hash:
            doc["registration_client_uri"] = f"{self._issuer}{REGISTRATION_PATH}/{row.client_id}"
        return doc


def _held(client_id: str, token: str) -> tuple[sa.ColumnElement[bool], ...]:
    """The client ``client_id`` whose registration access token is ``token``, if RFC 7592 may manage it:
    active, and of no organisation or of an active one. A deactivated organisation's clients are
    inactive (ClientRegistry), and their registrant neither reads them (getting a new token) nor changes
    their keys or redirect URIs nor deletes them while it stays so (review 163, finding 4: he did, during
    a deactivation for suspected fraud); its reactivation gives the token back its use."""
    return (oauth_clients.c.client_id == client_id, oauth_clients.c.active.is_(True),
            oauth_clients.c.registration_token_hash == _sha256(token),
            sa.or_(oauth_clients.c.organisation_id.is_(None), oauth_clients.c.organisation_id.in_(
                sa.select(organisations.c.id).where(organisations.c.active.is_(True)))))


def _end_iats(conn: sa.Connection, whose: sa.ColumnElement[bool], now: datetime) -> int:
    """End the unused, unexpired initial access tokens ``whose`` picks, in the caller's transaction: their
    ``expires_at`` set back to their ``created_at`` (module docstring): how many."""
    result = conn.execute(initial_access_tokens.update().where(
        whose, initial_access_tokens.c.used_at.is_(None), initial_access_tokens.c.expires_at > now,
    ).values(expires_at=initial_access_tokens.c.created_at))
    return int(result.rowcount or 0)


def end_iats_created_by(conn: sa.Connection, client_id: str, *, now: datetime) -> int:
    """End the live initial access tokens the client ``client_id`` minted (an admin client: it is
    deactivated, deleted, or its secret rotated with its tokens revoked; review 163, finding 1), in the
    caller's transaction: how many."""
    return _end_iats(conn, initial_access_tokens.c.created_by == client_id[:100], now)


def end_iats_for(conn: sa.Connection, organisation_id: uuid.UUID, *, now: datetime) -> int:
    """End the live initial access tokens tied to ``organisation_id`` (it is deactivated; review 163,
    finding 1), in the caller's transaction: how many."""
    return _end_iats(conn, initial_access_tokens.c.organisation_id == organisation_id, now)


# The entries of a client secret shown to whoever made them: an admin's registration, a rotation.
SECRET_SHOWN = ("identity.admin.client.registered", "identity.admin.client.secret_rotated")


def secrets_shown_to(conn: sa.Connection, person_id: uuid.UUID) -> list[str]:
    """The active clients whose current secret was shown to ``person_id``, an officer who registered
    them in the console or rotated their secret last (``SECRET_SHOWN``, the latest such entry of each
    client naming him), still authenticating with a secret. A secret does not expire, so his suspension
    (identity.authn.cutoff) lists them: port security rotates them again if he may have kept a copy.
    Read from the audit trail (kind indexed; these entries are few)."""
    shown = audit_log.alias("shown")
    latest = (sa.select(sa.func.max(shown.c.id))
              .where(shown.c.kind.in_(SECRET_SHOWN), shown.c.subject == audit_log.c.subject)
              .scalar_subquery())
    return list(conn.execute(
        sa.select(audit_log.c.subject)
        .join(oauth_clients, oauth_clients.c.client_id == audit_log.c.subject)
        .where(audit_log.c.kind.in_(SECRET_SHOWN), audit_log.c.actor["person_id"].as_string() == str(person_id),
               audit_log.c.id == latest, oauth_clients.c.active.is_(True), oauth_clients.c.secret_hash.is_not(None))
        .order_by(audit_log.c.subject)
    ).scalars())


def _checked(doc: Mapping[str, Any], **kw: Any) -> ClientMetadata:
    try:
        return check_metadata(doc, **kw)
    except MetadataRefused as exc:
        raise RegistrationError(exc.error, exc.description) from exc


def _keys_and_terminal(
    meta: ClientMetadata, org: Organisation | None, terminal_code: str | None
) -> tuple[dict[str, Any] | None, str | None]:
    """The same rules as every registration: public keys only, role fits the organisation's kind,
    terminal binding, method fits the role (domain.roles.check_registration)."""
    try:
        jwks = public_jwks(meta.jwks) if meta.jwks is not None else None
        bound = check_registration(
            meta.role,
            org_kind=org.kind if org else None,
            org_terminal_code=org.terminal_code if org else None,
            terminal_code=terminal_code,
            auth_method=meta.auth_method,
            has_jwks=jwks is not None,
        )
    except RegistrationRefused as exc:
        raise RegistrationError(INVALID_CLIENT_METADATA, str(exc), reason=exc.code) from exc
    return jwks, bound


def _columns(meta: ClientMetadata, jwks: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": meta.name,
        "role": meta.role.value,
        "token_endpoint_auth_method": meta.auth_method.value,
        "grant_types": list(meta.grant_types),
        "redirect_uris": list(meta.redirect_uris),
        "post_logout_redirect_uris": list(meta.post_logout_redirect_uris),
        "scopes": list(meta.scopes),
        "jwks": jwks,
        "dpop_bound": meta.dpop_bound,
        "require_par": meta.require_par,
        "min_acr": meta.min_acr,
        "extra_metadata": meta.extra,
    }

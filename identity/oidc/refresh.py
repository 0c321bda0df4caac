"""The refresh token grant at the token endpoint (RFC 6749 §6), with rotation and reuse detection
(RFC 9700 §4.14.2), as an Authlib grant: Authlib dispatches on grant_type and authenticates the
client; the refresh is ours. On PostgreSQL a plain refresh takes two autocommitted statements and no
transaction (the fast path); anything else, and SQLite always, goes through one transaction (the
full path), which tells every refusal apart.

    client authenticated (none for the driver app; secret or private_key_jwt for consoles)
      -> client allowed the refresh_token grant?                     no -> unauthorized_client
      -> DPoP proof verified if sent (required for a dpop_bound client) -> jkt, its jti not yet claimed

    fast path (PostgreSQL; each statement commits at once, no lock outlives it):
      -> GrantStore.prepare_rotation, READ: the token, its grant and holder, no lock
           unknown, not active, expired, revoked, another client's,
           its family past its end                                   -> the full path, from scratch
      -> check(grant): the same DPoP binding and scope rules as below; a refusal has written nothing
      -> the proof's jti claimed (SET NX, RFC 9449 §11.1)            used -> invalid_dpop_proof, nothing
                                                                        written
      -> tokens built via issue.issue_person_tokens, its audit entry handed back, not written
           (a suspended person, one under a port ban in force once a register is configured, or a lost
           membership: refused, nothing written; the ban costs one more statement, the screening's)
      -> GrantStore.rotate_prepared, WRITE, one statement: UPDATE ... SET status='rotated' WHERE it is
         still as read (active, unexpired, same grant, same client, grant live, person active)
         RETURNING; the successor token and the audit entry (identity.token.refreshed) inserted from
         the consumed row only
           consumed                                                  -> the tokens
           not consumed (a concurrent use, revocation, suspension)   -> tokens dropped, the full path
                                                                        from scratch (a concurrent use
                                                                        then shows there as reuse)

    full path (one transaction):
      -> with a proof not yet claimed: the token looked up (GrantStore.find_by_refresh); this client's,
         whatever its state, or bound to the proof's key? the proof's jti claimed
                                                                     used -> invalid_dpop_proof, nothing
                                                                        written
      -> GrantStore.rotate: UPDATE ... SET status='rotated' WHERE status='active' AND unexpired
         RETURNING grant_id (one statement; the row lock lets one concurrent use through)
           not taken: unknown / expired / revoked                    -> invalid_grant
           its family's end come (GrantStore.family_end: QUAYGATE_REFRESH_MAX_SECONDS from the login;
             taken or not)                                           -> the family revoked, audited
                                                                        (identity.refresh.family_ended),
                                                                        invalid_grant
           not taken: already rotated (a replay, or a race's loser)  -> REUSE: the whole family revoked
                                                                        (every refresh token of the grant,
                                                                        every access token it issued),
                                                                        audited, invalid_grant
             ... of a grant bound to a DPoP key, without a proof of it -> invalid_dpop_proof, nothing
                                                                        revoked or written
           another client's token                                    -> its grant revoked (stolen), invalid_grant
             ... of a grant bound to a DPoP key, without a proof of it -> invalid_grant, rolled back:
                                                                        nothing revoked or written
           grant revoked                                             -> invalid_grant, rolled back
      -> check(grant): bound to a DPoP key and the proof's key differs? -> invalid_dpop_proof, rolled back
                       asked scope within the grant's (§6: never wider)? no -> invalid_scope, rolled back
                       the proof's jti claimed, if it is not yet        used -> invalid_dpop_proof, rolled back
      -> new access token (+ id token) via issue.issue_person_tokens, the new refresh token, one audit
         entry (identity.token.refreshed): one commit

The refusals that must change nothing are rolled back with the rotation (or, on the fast path, come
before anything is written), so an attacker holding a stolen DPoP-bound token without its key cannot
burn it, nor revoke the victim's family: not with the active token under its own client id (the DPoP
check), nor under another public client's id (the admin console's, say), nor by replaying a token
already rotated (GrantStore ``key_proven``, RFC 9449 §5: such a token is spent only with its key; review
120, finding 2). Whoever proves the key is judged as any holder of an unbound token: another client's
use or a reuse revokes the family (RFC 9700 §4.14.2). Every refusal is logged by run_exchange, and audited
but for an unknown token from a public client (``GrantRefused.audited``); a refused DPoP claim is
answered as the proof's error (invalid_dpop_proof, use_dpop_nonce), logged, before anything is judged.

The DPoP proof's jti is claimed only once the token is found and is this client's (or, another
client's, is bound to the proof's key: its family is about to be revoked): an unknown token
costs no write in the cache (an anonymous caller, with a public client's id, could otherwise make it
keep a claim per request). It is claimed before the token is consumed or anything issued, and, on the
full path, before a rotated token is judged reuse: a replayed request (the same proof, the same token),
or the loser of two racing with one proof, is refused as a replay and revokes nothing; one claim wins
(STYLE.md #4). A refused claim raises its OAuth error past run_exchange (the transaction rolls back).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from authlib.oauth2.rfc6749 import (
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants.base import BaseGrant, TokenEndpointMixin

from .. import audit
from ..bans.screening import from_settings as ban_screening
from ..domain import scopes as scope_rules
from ..domain.roles import AuthMethod
from ..grants import Grant, RefreshRefused, Rotation
from .code_grant import InvalidDPoPProofError
from .exchange import GrantRefused, proven, run_exchange
from .issue import IssueRefused, issue_person_tokens

if TYPE_CHECKING:
    from ..clients import ClientRecord
    from .server import AuthorizationServer

log = logging.getLogger(__name__)

GRANT_TYPE = "refresh_token"


_Refused = GrantRefused  # keep=False by default: a refusal changes nothing unless it says so


class RefreshTokenExchange(BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    GRANT_TYPE = GRANT_TYPE
    TOKEN_ENDPOINT_AUTH_METHODS = [m.value for m in AuthMethod]
    server: AuthorizationServer

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(description="This client cannot use the refresh token grant.")
        self.request.client = client
        if not self.request.form.get("refresh_token"):
            raise InvalidRequestError(description="Missing refresh_token.")  # RFC 6749 §6
        self.request.dpop_jkt = self.server.dpop_binding(self.request, client.record)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        server = self.server
        record: ClientRecord = self.request.client.record
        form, jkt = self.request.form, self.request.dpop_jkt
        now = server.clock.now()
        fast = server.engine.dialect.name == "postgresql"  # the WRITE needs data-modifying CTEs
        body = run_exchange(server.engine, grant_type=self.GRANT_TYPE, client_id=record.client_id, now=now,
                            exchange=lambda conn: self._refresh(conn, record, form, jkt, now),
                            attempt=(lambda conn: self._refresh_at_once(conn, record, form, jkt, now)) if fast
                            else None)
        return 200, body, self.TOKEN_RESPONSE_HEADER

    def _refresh_at_once(
        self, conn: sa.Connection, record: ClientRecord, form: dict[str, str], jkt: str | None, now: datetime
    ) -> dict[str, Any] | None:
        """The fast path, ``conn`` in autocommit: the tokens, a refusal (nothing written), or None for
        the full path."""
        grants = self.server.grants
        token = form["refresh_token"]
        rotation = grants.prepare_rotation(conn, token, client_id=record.client_id, now=now)
        if rotation is None:
            return None  # not plainly fit: the full path tells what it is and does what that calls for
        scope = self._checked_scope(rotation.grant, form.get("scope"), jkt)
        self.server.claim_dpop(self.request)  # a token of this client, fit to use: the proof's one use
        entries: list[audit.Entry] = []
        body = self._tokens(conn, record, rotation, scope, jkt, now, audit_into=entries)
        if grants.rotate_prepared(conn, token, rotation, client_id=record.client_id, now=now, entry=entries[0]):
            return body
        log.info("identity.refresh.changed_since_read")
        return None

    def _refresh(
        self, conn: sa.Connection, record: ClientRecord, form: dict[str, str], jkt: str | None, now: datetime
    ) -> dict[str, Any]:
        """The full path, in ``conn``'s transaction (run_exchange commits or rolls back)."""
        scope = ""
        if getattr(self.request, "dpop_unclaimed", None) is not None:
            found = self.server.grants.find_by_refresh(conn, form["refresh_token"])
            if found is not None and (found[0].client_id == record.client_id
                                      or (found[0].dpop_jkt is not None and found[0].dpop_jkt == jkt)):
                # This client's token, whatever its state, or one whose key the proof proves: the
                # proof's one use, before a rotated token is judged reuse or another client's use judged
                # theft (a replay of the request, its proof copied, revokes nothing). The read writes
                # nothing, so rotate may still end this transaction before its diagnosis.
                self.server.claim_dpop(self.request)

        def check(grant: Grant) -> None:  # raising rolls the rotation back: the token stays usable
            nonlocal scope
            scope = self._checked_scope(grant, form.get("scope"), jkt)
            self.server.claim_dpop(self.request)  # nothing is issued before the proof's one use

        try:
            rotation = self.server.grants.rotate(conn, form["refresh_token"], client_id=record.client_id, now=now,
                                                 check=check, jkt=jkt)
        except RefreshRefused as exc:
            raise self._refused(conn, record, exc, now) from None
        return self._tokens(conn, record, rotation, scope, jkt, now)

    def _tokens(self, conn: sa.Connection, record: ClientRecord, rotation: Rotation, scope: str, jkt: str | None,
                now: datetime, audit_into: list[audit.Entry] | None = None) -> dict[str, Any]:
        server = self.server
        try:
            return issue_person_tokens(
                conn,
                settings=server.settings,
                keys=server.keys,
                grants=server.grants,
                client=record,
                grant=rotation.grant,
                scope=scope,
                nonce=None,  # OIDC Core §12.2: no nonce in a refreshed id token
                include_id_token=True,
                include_refresh=False,
                dpop_jkt=jkt,
                now=now,
                grant_type=self.GRANT_TYPE,
                refresh_token=rotation.token,
                holder=rotation.holder,
                audit_kind="identity.token.refreshed",  # one audit entry per refresh, with the new jti
                audit_into=audit_into,
                # A grant held from before a port ban gives no more tokens (identity.bans.screening).
                bans=ban_screening(server.settings, server.engine),
            )
        except IssueRefused as exc:
            raise _Refused(exc.reason, "The grant can no longer give tokens.", grant_id=rotation.grant.id) from exc

    @classmethod
    def _checked_scope(cls, grant: Grant, asked: str | None, jkt: str | None) -> str:
        """The scope of the new tokens, once the grant's rules allow the request; raises _Refused."""
        # RFC 9449 §5: a refresh token bound to a DPoP key is used only with a proof of that key.
        if grant.dpop_jkt is not None and jkt != grant.dpop_jkt:
            raise _Refused("dpop_key", "A DPoP proof with the key this token is bound to is required.",
                           error=InvalidDPoPProofError, grant_id=grant.id)
        return cls._scope(asked, grant.scope, grant.id)

    @staticmethod
    def _scope(asked: str | None, granted: str, grant_id: Any) -> str:
        """RFC 6749 §6: the asked scope may narrow the grant's, never widen it; omitted: the same."""
        if not asked:
            return " ".join(scope_rules.parse(granted))
        extra = set(scope_rules.parse(asked)) - set(scope_rules.parse(granted))
        if extra:
            raise _Refused("scope_widened", f"Not in the original grant: {' '.join(sorted(extra))}",
                           error=InvalidScopeError, grant_id=grant_id)
        return " ".join(scope_rules.parse(asked))

    def _refused(self, conn: sa.Connection, record: ClientRecord, exc: RefreshRefused, now: datetime) -> _Refused:
        if exc.reason == "reused":
            # RFC 9700 §4.14.2: the family is revoked (done by rotate in this transaction); say so.
            log.warning("identity.refresh.reuse_detected")
            audit.record("identity.refresh.reuse_detected", at=now, actor={"client_id": record.client_id},
                         subject=str(exc.grant_id), data={"grant_id": str(exc.grant_id)}, conn=conn)
            return _Refused("reused", "Invalid refresh token.", keep=True, grant_id=exc.grant_id)
        if exc.reason == "wrong_client":
            # rotate revoked the grant: a token presented by another client was stolen.
            audit.record("identity.refresh.wrong_client", at=now, actor={"client_id": record.client_id},
                         subject=str(exc.grant_id), data={"grant_id": str(exc.grant_id)}, conn=conn)
            return _Refused("wrong_client", "Invalid refresh token.", keep=True, grant_id=exc.grant_id)
        if exc.reason == "max_age":
            # The family's end (GrantStore.family_end, QUAYGATE_REFRESH_MAX_SECONDS from its login) has come:
            # rotate revoked the grant; the person signs in again.
            grant = self.server.grants.get(conn, exc.grant_id)
            log.info("identity.refresh.family_ended")
            audit.record("identity.refresh.family_ended", at=now, actor={"client_id": record.client_id},
                         subject=str(exc.grant_id),
                         data={"grant_id": str(exc.grant_id), "started": grant.started.isoformat() if grant else None,
                               "max_seconds": int(self.server.grants.refresh_max.total_seconds())}, conn=conn)
            return _Refused("max_age", "This sign-in has reached its longest life; sign in again.", keep=True,
                            grant_id=exc.grant_id)
        if exc.reason == "reused_unproven":
            # A rotated token of a family bound to a DPoP key, without a proof of that key: refused as
            # its active successor would be (RFC 9449 §5), nothing revoked (GrantStore ``key_proven``).
            log.info("identity.refresh.reuse_unproven")
            return _Refused(exc.reason, "A DPoP proof with the key this token is bound to is required.",
                            error=InvalidDPoPProofError, grant_id=exc.grant_id)
        if exc.reason == "wrong_client_unproven":
            # Another client's token bound to a key not proven: not this client's, so answered as an
            # invalid one (nothing told about the other client's family), and nothing revoked.
            log.info("identity.refresh.wrong_client_unproven")
            return _Refused(exc.reason, "Invalid refresh token.", grant_id=exc.grant_id)
        # A token that does not exist (no grant) presented by a public client: logged, not audited
        # (GrantRefused.audited).
        return _Refused(exc.reason, "Invalid refresh token.", grant_id=exc.grant_id,
                        audited=exc.grant_id is not None or proven(self.request))


def install(server: AuthorizationServer) -> None:
    """Register the grant on ``server`` once (idempotent; the server may already have done it)."""
    registered = getattr(server, "_token_grants", [])
    if not any(cls is RefreshTokenExchange for cls, _ in registered):
        server.register_grant(RefreshTokenExchange)

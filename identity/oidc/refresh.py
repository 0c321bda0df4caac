"""The refresh token grant at the token endpoint (RFC 6749 §6), with rotation and reuse detection
(RFC 9700 §4.14.2), as an Authlib grant: Authlib dispatches on grant_type and authenticates the
client; the refresh is ours, in one transaction.

    client authenticated (none for the driver app; secret or private_key_jwt for consoles)
      -> client allowed the refresh_token grant?                     no -> unauthorized_client
      -> DPoP proof verified if sent (required for a dpop_bound client) -> jkt
      -> GrantStore.rotate: UPDATE ... SET status='rotated' WHERE status='active' AND unexpired
         RETURNING grant_id (one statement; the row lock lets one concurrent use through)
           not taken: unknown / expired / revoked                    -> invalid_grant
           not taken: already rotated (a replay, or a race's loser)  -> REUSE: the whole family revoked
                                                                        (every refresh token of the grant,
                                                                        every access token it issued),
                                                                        audited, invalid_grant
           another client's token                                    -> its grant revoked (stolen), invalid_grant
           grant revoked                                             -> invalid_grant, rolled back
      -> check(grant): bound to a DPoP key and the proof's key differs? -> invalid_dpop_proof, rolled back
                       asked scope within the grant's (§6: never wider)? no -> invalid_scope, rolled back
      -> new access token (+ id token) via issue.issue_person_tokens, the new refresh token,
         jti recorded, one audit entry (identity.token.refreshed): one commit

The refusals that must change nothing are rolled back with the rotation, so an attacker holding a
stolen DPoP-bound token without its key cannot burn it (and thereby revoke the victim's family).
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
from ..domain import scopes as scope_rules
from ..domain.roles import AuthMethod
from ..grants import Grant, RefreshRefused
from .code_grant import InvalidDPoPProofError
from .exchange import GrantRefused, run_exchange
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
        now = server.clock.now()
        body = run_exchange(server.engine, grant_type=self.GRANT_TYPE, client_id=record.client_id, now=now,
                            exchange=lambda conn: self._refresh(conn, record, self.request.form,
                                                                self.request.dpop_jkt, now))
        return 200, body, self.TOKEN_RESPONSE_HEADER

    def _refresh(
        self, conn: sa.Connection, record: ClientRecord, form: dict[str, str], jkt: str | None, now: datetime
    ) -> dict[str, Any]:
        server = self.server
        token = form["refresh_token"]
        scope = ""

        def check(grant: Grant) -> None:  # raising rolls the rotation back: the token stays usable
            nonlocal scope
            # RFC 9449 §5: a refresh token bound to a DPoP key is used only with a proof of that key.
            if grant.dpop_jkt is not None and jkt != grant.dpop_jkt:
                raise _Refused("dpop_key", "A DPoP proof with the key this token is bound to is required.",
                               error=InvalidDPoPProofError, grant_id=grant.id)
            scope = self._scope(form.get("scope"), grant.scope, grant.id)

        try:
            grant, new_token, holder = server.grants.rotate(conn, token, client_id=record.client_id, now=now,
                                                            check=check)
        except RefreshRefused as exc:
            raise self._refused(conn, record, exc, now) from None
        try:
            body = issue_person_tokens(
                conn,
                settings=server.settings,
                keys=server.keys,
                grants=server.grants,
                client=record,
                grant=grant,
                scope=scope,
                nonce=None,  # OIDC Core §12.2: no nonce in a refreshed id token
                include_id_token=True,
                include_refresh=False,
                dpop_jkt=jkt,
                now=now,
                grant_type=self.GRANT_TYPE,
                refresh_token=new_token,
                holder=holder,
                audit_kind="identity.token.refreshed",  # one audit entry per refresh, with the new jti
            )
        except IssueRefused as exc:
            raise _Refused(exc.reason, "The grant can no longer give tokens.", grant_id=grant.id) from exc
        return body

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

    @staticmethod
    def _refused(conn: sa.Connection, record: ClientRecord, exc: RefreshRefused, now: datetime) -> _Refused:
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
        return _Refused(exc.reason, "Invalid refresh token.", grant_id=exc.grant_id)


def install(server: AuthorizationServer) -> None:
    """Register the grant on ``server`` once (idempotent; the server may already have done it)."""
    registered = getattr(server, "_token_grants", [])
    if not any(cls is RefreshTokenExchange for cls, _ in registered):
        server.register_grant(RefreshTokenExchange)

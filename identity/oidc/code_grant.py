"""The authorization code grant at the token endpoint (RFC 6749 §4.1.3, RFC 7636 §4.6, OIDC Core
§3.1.3), as an Authlib grant: Authlib dispatches on grant_type and authenticates the client; the
exchange is ours, in one transaction.

    client authenticated (none + PKCE for the driver app; secret or private_key_jwt for consoles)
      -> DPoP proof verified if sent (required for a dpop_bound client) -> jkt, its jti not yet claimed
      -> code looked up by SHA-256; issued to this client?          no -> invalid_grant (code kept)
      -> the proof's jti claimed (SET NX, RFC 9449 §11.1)           used -> invalid_dpop_proof, nothing
                                                                     written (code kept)
      -> UPDATE ... SET used_at WHERE used_at IS NULL (single use)  0 rows -> REUSE: revoke the grant
                                                                     the first use created; invalid_grant
      -> expired? redirect_uri equal? code_verifier matches (S256)? dpop_jkt matches?
                                                                     no -> invalid_grant (code stays used)
      -> grant created, tokens issued, jti recorded, audit: one commit

A refused exchange after the code is marked used commits that mark, so a code that failed once cannot
be tried again with another verifier (RFC 9700 §4.2.4: guessing the verifier gets one try).

The DPoP proof's jti is claimed only once the code is found and is this client's: a made-up code costs
no write in the cache (an anonymous caller, with a public client's id, could otherwise make it keep a
claim per request). It is claimed before the code is marked used, used or not, expired or not, so that
a replayed request (the same proof, the same code) is refused as a replay and changes nothing, as two
requests racing with one proof: one claim wins (STYLE.md #4), the other is refused before it writes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Error, UnauthorizedClientError
from authlib.oauth2.rfc6749.grants.base import BaseGrant, TokenEndpointMixin

from quaygate.schema import authorization_codes

from .. import audit
from ..bans.screening import from_settings as ban_screening
from ..domain.roles import AuthMethod
from ..sessions import session_live
from .authorize import code_hash
from .exchange import GrantRefused, proven, run_exchange
from .issue import IssueRefused, issue_person_tokens, person_context

if TYPE_CHECKING:
    from .server import AuthorizationServer

log = logging.getLogger(__name__)

_VERIFIER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class InvalidDPoPProofError(OAuth2Error):  # type: ignore[misc]
    """RFC 9449 §5: the DPoP proof at the token endpoint is missing (for a DPoP-bound client) or bad."""

    error = "invalid_dpop_proof"


class UseDPoPNonceError(OAuth2Error):  # type: ignore[misc]
    """RFC 9449 §8: the token endpoint needs a proof with its nonce, which ``DPoP-Nonce`` gives."""

    error = "use_dpop_nonce"

    def __init__(self, nonce: str, description: str) -> None:
        super().__init__(description=description)
        self.nonce = nonce

    def get_headers(self) -> list[tuple[str, str]]:
        return [*super().get_headers(), ("DPoP-Nonce", self.nonce)]


def s256(verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL(SHA256(ASCII(code_verifier)))."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).decode().rstrip("=")


def verifier_matches(verifier: str | None, challenge: str) -> bool:
    """RFC 7636 §4.1 / §4.6: 43-128 unreserved characters whose S256 equals the stored challenge."""
    if not isinstance(verifier, str) or not 43 <= len(verifier) <= 128 or not set(verifier) <= _VERIFIER_CHARS:
        return False
    return hmac.compare_digest(s256(verifier), challenge)


class _Refused(GrantRefused):
    KEEP_BY_DEFAULT = True  # a refused code stays used (RFC 6749 §4.1.2)


class AuthorizationCodeExchange(BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    GRANT_TYPE = "authorization_code"
    TOKEN_ENDPOINT_AUTH_METHODS = [m.value for m in AuthMethod]
    server: AuthorizationServer

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(description="This client cannot use the authorization code grant.")
        self.server.check_issuable(client.record)  # before the code is looked at: it stays usable
        self.request.client = client
        form = self.request.form
        for name in ("code", "redirect_uri", "code_verifier"):
            if not form.get(name):
                # RFC 6749 §4.1.3 (redirect_uri: we always require it at /authorize), RFC 7636 §4.5.
                raise InvalidRequestError(description=f"Missing {name}.")
        self.request.dpop_jkt = self.server.dpop_binding(self.request, client.record)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        server = self.server
        record = self.request.client.record
        form = self.request.form
        now = server.clock.now()
        jkt: str | None = self.request.dpop_jkt
        body = run_exchange(server.engine, grant_type=self.GRANT_TYPE, client_id=record.client_id, now=now,
                            exchange=lambda conn: self._exchange(conn, record, form, jkt, now))
        return 200, body, self.TOKEN_RESPONSE_HEADER

    def _exchange(
        self, conn: sa.Connection, record: Any, form: dict[str, str], jkt: str | None, now: datetime
    ) -> dict[str, Any]:
        server = self.server
        h = code_hash(form["code"])
        row = conn.execute(sa.select(authorization_codes).where(authorization_codes.c.code_hash == h)).first()
        if row is None:  # a public client's made-up code: logged, not audited (GrantRefused.audited)
            raise _Refused("unknown", "Invalid code.", audited=proven(self.request))
        if row.client_id != record.client_id:
            # RFC 6749 §4.1.3: issued to another client. Not marked used: the thief cannot burn it.
            raise _Refused("wrong_client", "Invalid code.", keep=False)
        # A code of this client: now, and not before, the proof's one use. A refused claim raises its
        # OAuth error past run_exchange, whose connection closes uncommitted: nothing is kept.
        server.claim_dpop(self.request)
        used = conn.execute(
            authorization_codes.update()
            .where(authorization_codes.c.code_hash == h, authorization_codes.c.used_at.is_(None))
            .values(used_at=now)
        ).rowcount
        if used != 1:
            # RFC 6749 §4.1.2 / RFC 9700 §4.2.4: a code used twice was stolen or replayed; revoke
            # everything the first use issued; the revocation commits with the refusal.
            revoked = server.grants.revoke_grant(conn, row.grant_id, reason="code_reuse", now=now)
            audit.record(
                "identity.code.reuse_detected",
                at=now,
                actor={"client_id": record.client_id},
                subject=str(row.grant_id),
                data={"grant_revoked": revoked},
                conn=conn,
            )
            raise _Refused("reused", "Invalid code.")
        failure = self._check(row, form, jkt, now)
        if failure is not None:
            raise failure  # the code stays used
        try:
            # still active, still a member, under no port ban loaded since the code was issued
            person_context(conn, record, row.person_id, now=now, bans=ban_screening(server.settings, server.engine))
        except IssueRefused as exc:
            raise _Refused(exc.reason, "The person can no longer use this client.") from exc
        if row.sid is not None and not session_live(conn, row.sid, now=now):
            # The person logged out (or the session expired) between the redirect and the exchange:
            # a code must not outlive the login it came from (OIDC RP-Initiated Logout §2).
            raise _Refused("session_ended", "The login session of this code has ended.")
        grant_id = server.grants.create(
            conn,
            client_id=record.client_id,
            person_id=row.person_id,
            sid=row.sid,
            scope=row.scope,
            acr=row.acr,
            amr=row.amr,
            auth_time=row.auth_time,
            dpop_jkt=jkt,
            now=now,
            grant_id=row.grant_id,
        )
        grant = server.grants.get(conn, grant_id)
        assert grant is not None
        return issue_person_tokens(
                conn,
                settings=server.settings,
                keys=server.keys,
                grants=server.grants,
                client=record,
                grant=grant,
                scope=row.scope,
                nonce=row.nonce,
                include_id_token=True,
                include_refresh=True,
                dpop_jkt=jkt,
                now=now,
            )

    @staticmethod
    def _check(row: Any, form: dict[str, str], jkt: str | None, now: datetime) -> _Refused | None:
        if row.expires_at <= now:
            return _Refused("expired", "Invalid code.")  # RFC 6749 §4.1.2: short-lived
        if form["redirect_uri"] != row.redirect_uri:
            return _Refused("redirect_uri", "redirect_uri does not match.")  # RFC 6749 §4.1.3
        if not verifier_matches(form.get("code_verifier"), row.code_challenge):
            return _Refused("pkce", "code_verifier does not match.")  # RFC 7636 §4.6
        if row.dpop_jkt is not None and jkt != row.dpop_jkt:
            # RFC 9449 §10: the proof's key must be the one named at the authorization request.
            return _Refused("dpop_jkt", "DPoP key does not match dpop_jkt.", error=InvalidDPoPProofError)
        return None

"""The UserInfo endpoint (OIDC Core §5.3): claims about the person behind an access token.

    Authorization: Bearer <token>   or   Authorization: DPoP <token> + DPoP proof (RFC 9449 §7)
      -> token verified (RFC 9068, our api audience), not revoked, a person's token, scope openid
      -> a token bound to a key (cnf.jkt) only with a valid proof of that key, for this request
      -> {"sub"} (+ name, given_name, family_name with scope profile, OIDC Core §5.4)

Errors are RFC 6750 §3 / RFC 9449 §7.1 ``WWW-Authenticate`` challenges.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from quaygate.schema import persons

from ..domain import claims as c
from ..domain import scopes as scope_rules
from ..dpop import DPoPError, proof_header
from ..grants import RevocationList
from ..tokens import InvalidToken

if TYPE_CHECKING:
    from ..bootstrap import IdentityProvider

log = logging.getLogger(__name__)

USERINFO_PATH = "/oauth2/userinfo"


class UserInfoError(Exception):
    """``status`` 400/401/403 and an RFC 6750 §3.1 / RFC 9449 §7.1 error; ``scheme`` for the challenge."""

    def __init__(self, status: int, error: str, description: str, scheme: str = "Bearer",
                 nonce: str | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description
        self.scheme = scheme
        self.nonce = nonce  # RFC 9449 §9: with use_dpop_nonce, the DPoP-Nonce to send

    def challenge(self) -> str:
        return f'{self.scheme} error="{self.error}", error_description="{self.description}"'


def userinfo(
    provider: IdentityProvider,
    revocations: RevocationList,
    *,
    method: str,
    headers: Any,
    form_token: str | None = None,
) -> dict[str, Any]:
    """The claims to return; raises UserInfoError."""
    scheme, token = _credentials(headers, form_token)
    try:
        claims = provider.verifier.verify(token, audience=provider.settings.api_audience)
    except InvalidToken as exc:
        log.info("identity.userinfo.refused.token")
        raise UserInfoError(401, "invalid_token", exc.description, scheme) from exc
    if revocations.token_revoked(claims):
        log.info("identity.userinfo.refused.revoked")
        raise UserInfoError(401, "invalid_token", "The token has been revoked.", scheme)
    jkt = (claims.get(c.CNF) or {}).get("jkt") if isinstance(claims.get(c.CNF), dict) else None
    if jkt is not None:
        if scheme != "DPoP":  # RFC 9449 §7.2: a bound token is not a bearer token
            raise UserInfoError(401, "invalid_token", "This token is DPoP-bound.", "DPoP")
        try:
            proof = proof_header(headers)
            if proof is None:
                raise UserInfoError(401, "invalid_dpop_proof", "A DPoP proof is required.", "DPoP")
            verified = provider.dpop.verify(
                proof, htm=method, htu=provider.settings.issuer.rstrip("/") + USERINFO_PATH, access_token=token
            )
        except DPoPError as exc:
            log.info("identity.userinfo.refused.dpop.%s", exc.reason)
            raise UserInfoError(401, exc.error, exc.description, "DPoP", nonce=exc.nonce) from exc
        if verified.jkt != jkt:
            raise UserInfoError(401, "invalid_dpop_proof", "The proof's key is not the token's.", "DPoP")
    elif scheme == "DPoP":
        raise UserInfoError(401, "invalid_token", "This token is not DPoP-bound.", "DPoP")
    granted = set(str(claims.get(c.SCOPE, "")).split())
    if scope_rules.OPENID not in granted or not claims.get(c.PERSON_ID):
        raise UserInfoError(403, "insufficient_scope", "The token needs the openid scope.", scheme)
    try:
        person_id = uuid.UUID(str(claims[c.PERSON_ID]))
    except ValueError as exc:
        raise UserInfoError(401, "invalid_token", "Malformed token.", scheme) from exc
    with provider.server.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        row = conn.execute(
            sa.select(persons.c.given_name, persons.c.family_name, persons.c.status).where(persons.c.id == person_id)
        ).first()
    if row is None or row.status != "active":
        raise UserInfoError(401, "invalid_token", "The person is not active.", scheme)
    body: dict[str, Any] = {c.SUB: str(person_id)}
    if scope_rules.PROFILE in granted:
        body.update({c.GIVEN_NAME: row.given_name, c.FAMILY_NAME: row.family_name,
                     c.NAME: f"{row.given_name} {row.family_name}"})
    log.info("identity.userinfo.served")
    return body


def _credentials(headers: Mapping[str, str], form_token: str | None) -> tuple[str, str]:
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token and form_token is None:
            return "Bearer", token.strip()
        if scheme.lower() == "dpop" and token and form_token is None:
            return "DPoP", token.strip()
        raise UserInfoError(400, "invalid_request", "Use one Bearer or DPoP access token.")
    if form_token:
        return "Bearer", form_token  # RFC 6750 §2.2
    raise UserInfoError(401, "invalid_request", "An access token is required.")

"""RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0 §2-§3).

    GET/POST /oauth2/logout?id_token_hint&post_logout_redirect_uri&state&client_id
      -> id_token_hint: our signature, our issuer (an expired one is fine: §2); its aud is the client
      -> post_logout_redirect_uri: only with a known client, and exactly one it registered (§3);
         else an error page, never a redirect
      -> which session ends: the one the hint names (sid); without a hint, the browser's own session,
         only on a POST (a form the person submitted; SameSite=Lax keeps cross-site POSTs cookieless)
      -> SessionStore.end + GrantStore.revoke_session (its refresh and access tokens) + audit
      -> 302 to post_logout_redirect_uri (+ state), or a "signed out" page; the cookie is cleared
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jws import JWSRegistry

from .. import audit
from ..grants import GrantStore
from ..tokens import fits
from .authorize import PageError, redirect_location
from .issue import ID_TOKEN_ALGORITHMS

if TYPE_CHECKING:
    from ..bootstrap import IdentityProvider
    from ..sessions import SessionStore

log = logging.getLogger(__name__)

LOGOUT_PATH = "/oauth2/logout"
_REGISTRY = JWSRegistry(algorithms=list(ID_TOKEN_ALGORITHMS))


@dataclass(frozen=True, slots=True)
class LogoutOutcome:
    location: str | None  # where to redirect, or None: show the signed-out page
    ended: bool
    confirm: bool = False  # no hint, no POST: ask the person to confirm (a form posting back)


def verify_id_token_hint(provider: IdentityProvider, token: str) -> dict[str, Any]:
    """Claims of an id token we issued (signature, issuer, typ); expiry is not checked (§2).

    The algorithm comes from our allow-list and must fit the key the kid names (RFC 8725 §3.1,
    RFC 7518 §3.1): an EC key never checks an RS256 signature, nor an RS256 key a PS256 one."""
    try:
        obj = jws.extract_compact(token.encode("ascii"), registry=_REGISTRY)
        header = obj.headers()
        kid, alg = header.get("kid"), header.get("alg")
        if alg not in ID_TOKEN_ALGORITHMS or not isinstance(kid, str) or header.get("typ") != "JWT":
            raise PageError("invalid_request", "id_token_hint is not one of our id tokens.")
        key = next((k for k in provider.keys.public_key_set(refresh=True, kid=kid) if k.kid == kid), None)
        if key is not None and not fits(key, alg):
            log.info("identity.logout.refused.key_type")
            raise PageError("invalid_request", "id_token_hint is not one of our id tokens.")
        if key is None or not jws.validate_compact(obj, key, registry=_REGISTRY):
            raise PageError("invalid_request", "id_token_hint is not one of our id tokens.")
        claims = json.loads(obj.payload)
    except (JoseError, ValueError, UnicodeEncodeError) as exc:
        raise PageError("invalid_request", "id_token_hint is not one of our id tokens.") from exc
    if not isinstance(claims, dict) or claims.get("iss") != provider.settings.issuer or not claims.get("aud"):
        raise PageError("invalid_request", "id_token_hint is not one of our id tokens.")
    return claims


def logout(
    provider: IdentityProvider,
    sessions: SessionStore,
    grants: GrantStore,
    params: Mapping[str, str],
    cookie: str | None,
    *,
    method: str,
    now: datetime,
) -> LogoutOutcome:
    """Raises PageError for a bad hint, an unknown client or an unregistered redirect URI."""
    hint = params.get("id_token_hint")
    claims = verify_id_token_hint(provider, hint) if hint else None
    client_id = params.get("client_id")
    if claims is not None:
        aud = claims["aud"]
        hinted = aud if isinstance(aud, str) else (aud[0] if isinstance(aud, list) and aud else None)
        if client_id is not None and client_id != hinted:
            raise PageError("invalid_request", "client_id does not match the id_token_hint.")  # §2
        client_id = hinted
    location = None
    redirect = params.get("post_logout_redirect_uri")
    if redirect is not None:
        client = provider.clients.find(client_id) if client_id else None
        if client is None or redirect not in client.post_logout_redirect_uris:
            log.info("identity.logout.refused.redirect_uri")
            raise PageError("invalid_request", "post_logout_redirect_uri is not registered for this client.")
        location = redirect_location(redirect, {"state": params.get("state")})
    sid = claims.get("sid") if claims else None
    person = str(claims.get("sub")) if claims else None
    if sid is None:
        current = sessions.get(cookie, now=now)
        if current is None:
            return LogoutOutcome(location, ended=False)
        if method != "POST":
            return LogoutOutcome(None, ended=False, confirm=True)
        sid, person = current.sid, str(current.person_id)
    with provider.server.engine.begin() as conn:
        ended = sessions.end(str(sid), now=now, conn=conn)
        revoked = grants.revoke_session(conn, str(sid), reason="logout", now=now)
        audit.record(
            "identity.logout",
            at=now,
            actor={k: v for k, v in (("client_id", client_id), ("person_id", person)) if v},
            data={"session_ended": ended, "access_tokens_revoked": revoked, "hinted": claims is not None},
            conn=conn,
        )
    log.info("identity.logout.done")
    return LogoutOutcome(location, ended=ended)

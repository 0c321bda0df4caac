"""RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0 §2-§3).

    GET/POST /oauth2/logout?id_token_hint&post_logout_redirect_uri&state&client_id
      -> id_token_hint: our signature, our issuer (an expired one is fine: §2); its aud is the client
      -> post_logout_redirect_uri: only with a known client, and exactly one it registered (§3);
         else an error page, never a redirect. A client no longer usable (deactivated, or its
         organisation: ``ClientRecord.active``, as authorize decides) gets no redirect: the logout goes
         on and ends on our "signed out" page
      -> only the browser's own session ever ends (its session cookie's), and only
           - at once when the hint's sid is that session's (the RP names the very session this browser
             holds: a GET will do), or
           - on the person's confirmation: a POST whose Origin is one of our own pages' (the confirm
             page's form, Fetch §3.2; identity.authn.service ``PasskeyService.allowed_origins``; the
             page is sent with ``Referrer-Policy: same-origin``, else a browser sends ``Origin: null``
             with its form, identity.api.routes ``_CONFIRM_REFERRER``);
         anything else (no hint, a hint naming another or an ended session, a POST from elsewhere)
         asks him to confirm (§2: "the OP SHOULD ask the End-User whether to log out"). No browser
         session: nothing to end, on to post_logout_redirect_uri.
      -> SessionStore.end + GrantStore.revoke_session (its refresh and access tokens, those of the
         sessions it replaced included: a step-up's, an earlier login's in this browser) + audit
      -> 302 to post_logout_redirect_uri (+ state), or a "signed out" page; the cookie is cleared

Not ended here: what a session that is over left behind. Refresh tokens live 14 days, the login
session 12 hours, and its cookie no longer, so the driver app logs out long after its session lapsed,
from a browser that holds no session any more (review 120, finding 1). It revokes its own refresh token
first, at the revocation endpoint (RFC 7009: its grant, and the access tokens issued in it, go; app.js
``logout``); its tokens are what only it holds. A hint naming a lapsed or ended session is no such
thing (below): ad7d876 revoked that session's grants of the hint's client (``revoke_lapsed``), which
let anyone holding a copy of a driver's id token end his app login once his session had lapsed -- the
app's normal state, living on its refresh tokens -- the forced logout at the gate that this module
keeps from a hint (review 124, finding 2). It was dropped rather than narrowed: nothing else a logout
request carries after the lapse is the RP's alone (the cookie died with the session; an id token's
``iat`` and ``sid`` are in every copy), and the honest app no longer needs it. An RP that logs out
without revoking its refresh token (or whose revocation is lost: the app's is sent and not waited for)
leaves it live until it expires; RFC 7009 leaves that to the RP.

Why not more: an id token is no secret of the browser's. RPs log it, put it in URLs and keep it past
its expiry, so a hint alone ended whatever session its sid named, from any browser or none (a forced
logout of a driver at the gate, of an officer mid-task). And SameSite=Lax keeps the cookie off
cross-site POSTs only: a sibling subdomain is same-site, so a POST without a hint from one of its pages
carried the cookie and ended the session unasked. Our Origin is what a page of ours alone can send.
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


# What the confirm page's form posts back, so that the confirmed logout goes where the RP asked.
_CARRIED = ("client_id", "post_logout_redirect_uri", "state")


@dataclass(frozen=True, slots=True)
class LogoutOutcome:
    location: str | None  # where to redirect (or, on the confirm page, where the confirmed logout goes)
    ended: bool
    # Ask the person to confirm: a form posting ``carried`` back (the client resolved from the hint
    # included, the hint itself not: it is no longer needed).
    confirm: bool = False
    carried: tuple[tuple[str, str], ...] = ()


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
    origin: str | None,
    own_origins: frozenset[str],
    now: datetime,
) -> LogoutOutcome:
    """Raises PageError for a bad hint, an unknown client or an unregistered redirect URI.

    ``cookie``: the browser's session cookie; ``origin``: the request's Origin header, a confirmation
    when it is one of ``own_origins`` on a POST (the module docstring)."""
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
        if client.active:
            location = redirect_location(redirect, {"state": params.get("state")})
        else:
            # A client the authorization endpoint no longer serves (deactivated, or its organisation:
            # ClientRecord.active, authorize.check_client_and_redirect's rule) has no way back through us
            # (its address may be retired, its domain let go): our own signed-out page, the logout itself
            # still done (review 161, finding 3).
            log.info("identity.logout.redirect_dropped.client_inactive")
    current = sessions.get(cookie, now=now)
    if current is None:
        log.info("identity.logout.no_session")
        return LogoutOutcome(location, ended=False)
    hinted_sid = claims.get("sid") if claims is not None else None
    if hinted_sid is not None and hinted_sid == current.sid:
        how = "hint"
    elif method == "POST" and origin is not None and origin in own_origins:
        how = "confirmed"
    else:
        if method == "POST":
            log.info("identity.logout.refused.origin")  # not our page's form: asked again, nothing ended
        log.info("identity.logout.confirm_asked")
        carried = {k: params[k] for k in _CARRIED if k in params}
        if client_id:
            carried["client_id"] = client_id  # resolved from the hint, which is not carried
        return LogoutOutcome(location, ended=False, confirm=True, carried=tuple(sorted(carried.items())))
    with provider.server.engine.begin() as conn:
        ended = sessions.end(current.sid, now=now, conn=conn)
        revoked = grants.revoke_session(conn, current.sid, reason="logout", now=now)
        audit.record(
            "identity.logout",
            at=now,
            # The request's client_id, unless the hint named it: escaped, or a NUL in it failed the entry,
            # and with it the logout, on PostgreSQL (review 157, finding 2).
            actor={k: v for k, v in (("client_id", audit.printable(client_id, 100) if client_id else None),
                                     ("person_id", str(current.person_id))) if v},
            data={"session_ended": ended, "access_tokens_revoked": revoked, "hinted": claims is not None,
                  "how": how},
            conn=conn,
        )
    log.info("identity.logout.done", extra={"fields": {"how": how}})
    return LogoutOutcome(location, ended=ended)

"""Token revocation (RFC 7009).

    client authenticated (RFC 7009 §2.1; a public client by its client_id, so the driver app can
    end its own session)
      -> token_type_hint access_token | refresh_token | absent, else unsupported_token_type (§2.2.1)
      -> refresh token of this client: its whole grant is revoked, refresh tokens and the access
         tokens issued in it (§2.1: "SHOULD also invalidate all access tokens based on the same
         authorization grant")
      -> access token of this client: its jti goes on the revocation list (table + cache)
      -> a token of another client: nothing is revoked (§2.1 "verifies whether the token was issued
         to the client making the revocation request"), and the answer is 200, as for an invalid token
      -> unknown, malformed, expired or already revoked: 200, nothing to do (§2.2)

Another client's token is answered as an invalid one (§2.2: "invalid tokens do not cause an error
response"), live or not, for the rule introspection keeps (introspection.py): another party cannot
check a stolen token's liveness, nor, for a refresh token, its existence. A 400 invalid_grant told
anyone holding a token whether it was live: the driver app authenticates with ``none``, so anyone can
call here as the driver app (review 120, finding 3). The refusal is audited only when the caller
proved who it is (a secret or an assertion: ``proven``), a client of ours holding another's token,
which the audit trail should show; from a public client, which proves no one, it is logged only, so
that an anonymous caller cannot grow the audit trail a row per request.

A token bound to a DPoP key (a refresh token of a grant with ``dpop_jkt``, an access token with
``cnf.jkt``) is revoked only when the request carries a DPoP proof of that key (review 124, finding 1),
checked as the token endpoint checks one (DPoPVerifier.verify: RFC 9449 §4.3, htm POST, htu this
endpoint) and then used once (DPoPVerifier.claim, §11.1); without one, or with a proof of another key,
made for another URI, already used: 200, as for an invalid token, and nothing revoked. A bound token is
spent only with its key (RFC 9449 §5), and the token endpoint keeps a copy of one -- active or rotated,
from a log, a backup, a screenshot -- from ending the driver's family (grants ``key_proven``, ebddcd9);
here, called as the public driver app, the same copy ended it as ``revoked_by_client``. An unbound
token is revoked as before: it is all its holder needs (the web app at /app/ holds Bearer tokens and
sends no proof). So is a bound token of a client that proved who it is (a secret or an assertion): a
copy of its token is not its credential, and a gate dropping a token it has reason to distrust has no
other way to end it than here (tests/test_gate_dpop.py). The proof's single use is claimed only once
the token is found, is this client's and is bound to the proof's key, so an anonymous caller cannot make
the cache keep a claim per request (as at the token endpoint, refresh.py).

    ... this client's token, bound to a key, the caller public: a proof of that key? no -> 200, nothing
                                                                 revoked (logged)
                                          its one use claimed?   no -> 200, nothing revoked (logged);
                                          made perhaps before the cache's epoch -> 400 use_dpop_nonce

A proof of the key that may predate the cache's dataset (quaygate/dataset.py) is answered as at the
token endpoint, 400 ``use_dpop_nonce`` with the nonce in ``DPoP-Nonce`` (RFC 9449 §8), nothing revoked:
the app's new proof with it revokes at once. Only the holder of the token's key gets that far.

The token is found by its form, not by the hint: refresh tokens carry our prefix, access tokens are
JWTs (§2.1 lets the server search beyond the hint).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response

from .. import audit
from ..domain import claims as c
from ..dpop import DPoPError, proof_header
from ..grants import key_proven
from .exchange import proven
from .introspection import NO_STORE, TOKEN_TYPE_HINTS, _error, authenticate, form_of, inspector_for

if TYPE_CHECKING:
    from .introspection import TokenInspector
    from .server import FormRequest

log = logging.getLogger(__name__)

REVOCATION_PATH = "/oauth2/revoke"


def revoke(inspector: TokenInspector, token: str, *, client_id: str, caller_proven: bool,
           proof: str | None = None) -> str:
    """Revoke ``token`` for ``client_id``; return what happened (for the log): ``grant``, ``access``,
    ``nothing``, ``foreign`` (another client's token: nothing revoked, the refusal audited when the
    caller proved who it is, ``caller_proven``: module docstring), or ``unproven`` (a token bound to a
    DPoP key, the caller a public client, and ``proof``, the request's DPoP header, is no valid proof of
    that key for this endpoint, or was used before: nothing revoked, ``_key_held``). One transaction."""
    now = inspector.clock.now()
    actor = {"client_id": client_id}
    if inspector.is_refresh(token):
        found = inspector.refresh(token)
        if found is None:
            return "nothing"
        grant = found.grant
        if grant.client_id != client_id:
            return _refused(inspector, actor, caller_proven, now)
        if grant.revoked:
            return "nothing"
        if not caller_proven and not _key_held(inspector, grant.dpop_jkt, proof):
            return "unproven"
        with inspector.engine.begin() as conn:
            revoked = inspector.grants.revoke_grant(conn, grant.id, reason="revoked_by_client", now=now)
            audit.record("identity.token.revoked", at=now, actor=actor, subject=str(grant.id), conn=conn,
                         data={"token_type": "refresh_token", "grant_id": str(grant.id), "grant_revoked": revoked})
        return "grant"
    claims = inspector.access_claims(token)
    if claims is None:
        return "nothing"  # §2.2: invalid tokens do not cause an error
    if claims[c.CLIENT_ID] != client_id:
        return _refused(inspector, actor, caller_proven, now)
    cnf = claims.get(c.CNF)
    if not caller_proven and not _key_held(inspector, cnf.get("jkt") if isinstance(cnf, dict) else None, proof):
        return "unproven"
    jti, exp = str(claims[c.JTI]), datetime.fromtimestamp(int(claims[c.EXP]), UTC)
    with inspector.engine.begin() as conn:
        inspector.revocations.add(conn, [(jti, exp)], now=now)
        audit.record("identity.token.revoked", at=now, actor=actor, subject=jti, conn=conn,
                     data={"token_type": "access_token", "jti": jti})
    return "access"


def _key_held(inspector: TokenInspector, bound: str | None, proof: str | None) -> bool:
    """May this client's token, bound to the key ``bound`` (None: unbound), be revoked on this request?
    Unbound: yes, whatever ``proof`` (the request's DPoP header) holds. Bound: only when ``proof`` is
    valid for this endpoint (checked as the token endpoint checks one, server.AuthorizationServer
    ``dpop_binding``: DPoPVerifier.verify, RFC 9449 §4.3, htm POST, htu this endpoint's URI) and of that
    key (grants ``key_proven``, §5), and its one use is claimed now (§11.1), before anything is revoked:
    a copied proof revokes nothing. Checked only here, once the token is found to need it: a proof with
    an unknown token costs no signature check and no cache write. Raises the DPoPError of a claim refused
    for the epoch's nonce (its ``nonce`` set: RFC 9449 §8, the caller answers ``use_dpop_nonce``)."""
    if bound is None:
        return True
    if proof is None:
        log.info("identity.token.revoke.refused.dpop.missing")
        return False
    htu = inspector.settings.issuer.rstrip("/") + REVOCATION_PATH
    try:
        verified = inspector.provider.dpop.verify(proof, htm="POST", htu=htu, claim=False)
        if not key_proven(bound, verified.jkt):
            log.info("identity.token.revoke.refused.dpop.key")
            return False
        if verified.unclaimed is not None:
            inspector.provider.dpop.claim(verified.unclaimed)
    except DPoPError as exc:
        log.info("identity.token.revoke.refused.dpop.%s", exc.reason)
        if exc.nonce is not None:
            raise
        return False
    return True


def _refused(inspector: TokenInspector, actor: dict[str, Any], audited: bool, now: datetime) -> str:
    """Another client's token: logged; audited only for a caller that proved who it is."""
    log.info("identity.token.revoke.refused.wrong_client", extra=actor)
    if audited:
        audit.record("identity.token.revoke.refused", at=now, actor=actor, data={"reason": "wrong_client"},
                     engine=inspector.engine)
    return "foreign"


def revocation_response(app: Any, raw: FormRequest) -> Response:
    """POST /oauth2/revoke (RFC 7009 §2)."""
    inspector = inspector_for(app)
    authed = authenticate(inspector.provider.server, raw, public_allowed=True)
    if isinstance(authed, JSONResponse):
        return authed
    request, client = authed
    form = form_of(request)
    token, hint = form.get("token"), form.get("token_type_hint")
    if not token:
        return _error("invalid_request", "The token parameter is required.")  # RFC 7009 §2.1
    if hint is not None and hint not in TOKEN_TYPE_HINTS:
        return _error("unsupported_token_type", "Only access and refresh tokens are revoked here.")  # §2.2.1
    try:
        proof = proof_header(raw.headers)
    except DPoPError:  # several DPoP headers (RFC 9449 §4.3 item 1): no proof of anything
        proof = None
    try:
        done = revoke(inspector, token, client_id=client.get_client_id(), caller_proven=proven(request), proof=proof)
    except DPoPError as exc:  # the key's proof, which may predate the cache's epoch (RFC 9449 §8)
        if exc.nonce is None:
            raise
        refused = _error(exc.error, exc.description)
        refused.headers["DPoP-Nonce"] = exc.nonce
        return refused
    log.info("identity.token.revocation.%s", done, extra={"client_id": client.get_client_id()})
    return Response(status_code=200, headers=NO_STORE)  # §2.2: 200, the body is ignored

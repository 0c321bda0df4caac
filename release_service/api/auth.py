"""From an access token (Bearer or DPoP) to an Actor. Only authentication lives here; the rules are in
the domain.

``authenticate`` is the one entry point, shared by the release API (/api/v1) and the gate API
(/gate/v1): it takes the request, the Authorization credentials, the audience and the scope::

    Authorization: Bearer <at>  ── token has cnf? ── yes: refused (RFC 9449 §7.2: a bound token
                                                     is never accepted as a bearer token)
    Authorization: DPoP <at>    ── token has cnf.jkt? ── no: refused
        + DPoP: <proof>            └─ proof valid (RFC 9449 §4.3) for this method and public URL,
                                      ath = hash(at), proof's key thumbprint = cnf.jkt (§7.1)
    then: scope (RFC 6750 §3.1), then step-up for a person's token: acr and auth_time (RFC 9470 §3)

The proof's ``htu`` is compared with the PUBLIC URL of the request: the origin of
``settings.issuer`` (the provider's public base URL) plus the request path. Behind a TLS-terminating
proxy the service sees http://10.0.0.5:8000/..., while the client signed https://quaygate.example/...;
taking the origin from the issuer, never from the Host or X-Forwarded-* headers a client controls,
keeps the check exact. A proxy that strips a path prefix must pass it as the ASGI root_path (uvicorn --root-path).
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from identity.domain import claims as c
from identity.domain.assurance import satisfies
from identity.dpop import DPOP_ALGORITHMS, DPoPError, SingleUse, dpop_verifier_for, proof_header
from identity.tokens import InvalidToken
from quaygate.single_use import Claim
from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import Actor, OrgKind
from release_service.ports import FactsUnavailable

from .problems import AuthError

log = logging.getLogger(__name__)

DPOP_CHALLENGE = f'DPoP algs="{" ".join(DPOP_ALGORITHMS)}"'  # RFC 9449 §7.1


class AccessTokenCredentials(HTTPBearer):
    """The Authorization header with either scheme, ``Bearer`` (RFC 6750) or ``DPoP`` (RFC 9449 §7.1).
    Documented in OpenAPI as the http bearer scheme; parsed here so a DPoP token is not dropped."""

    async def __call__(self, request: HTTPConnection) -> HTTPAuthorizationCredentials | None:  # type: ignore[override]
        return credentials_of(request)


def credentials_of(request: HTTPConnection) -> HTTPAuthorizationCredentials | None:
    """The access token of the Authorization header, with its scheme; None without one (``bearer``)."""
    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    if not scheme or not token or scheme.lower() not in ("bearer", "dpop"):
        return None
    return HTTPAuthorizationCredentials(scheme=scheme, credentials=token)


bearer = AccessTokenCredentials(
    auto_error=False,
    description="OAuth2 access token (RFC 9068 JWT) from /oauth2/token, as `Authorization: Bearer <token>`, "
    "or, for a DPoP-bound token, `Authorization: DPoP <token>` with a `DPoP` proof header (RFC 9449).",
)


class TokenVerifier(Protocol):
    def verify(self, token: str, *, audience: str, revocation: bool = True) -> dict[str, Any]: ...

    def revocation_names(self, claims: dict[str, Any]) -> list[str] | None: ...

    def revoked_by(self, claims: dict[str, Any], values: Sequence[bytes | None] | None) -> bool: ...


class PipelinedClaims(Protocol):
    async def claim_async(self, keys: list[str], args: list[Any]) -> Claim:
        """The cache's claim (quaygate/dataset.py ``CLAIM``) from the event loop: true when this call
        claimed it; FactsUnavailable when it cannot be sent so."""
        ...


class Revocation:
    """A token's revocation check, left to the caller (``authenticate_but_revocation``) so it
    can read the revocation entries (``names``) in a round trip it makes anyway; ``settle`` with what it
    read, or with None to look them up. Until settled, the token is not to be trusted: ``settle`` is
    idempotent, so a caller settles again (a no-op) on every way out that answers.

    With a DPoP proof, its single use is left here too: ``claim_proof``, awaited first, claims it
    without holding the event loop, which serves every lane: on the gate facts' pipelined connection
    when given, else on a worker thread. ``settle`` claims it itself if nobody did, so a way that
    forgets never takes a proof twice."""

    def __init__(self, verifier: TokenVerifier, claims: dict[str, Any], scheme: str,
                 request: Request | None = None, unclaimed: SingleUse | None = None) -> None:
        self._verifier = verifier
        self._claims = claims
        self._scheme = scheme
        self._request = request
        self._unclaimed = unclaimed
        self.settled = False
        self.names = verifier.revocation_names(claims)

    async def claim_proof(self, on: PipelinedClaims | None = None) -> None:
        """The DPoP proof's single use claimed without holding the event loop; AuthError (401) when it
        was used. ``on``: the gate facts, whose pipelined connection sends the claim with the other
        requests' calls of the same turn (no thread hop); where they cannot (Redis failing, not
        reachable from the loop), the claim is made on a worker thread. A claim whose reply was lost
        may then find its own mark and refuse the proof: a refusal, never a second use."""
        if self._unclaimed is None or self._request is None:
            return
        verifier = dpop_verifier_for(self._request.app)
        call = verifier.claim_call(self._unclaimed) if on is not None else None
        if on is not None and call is not None:
            try:
                first = await on.claim_async(*call)
            except FactsUnavailable:
                pass
            else:
                if not first:
                    raise _dpop_refusal(verifier.refused(first))
                self._unclaimed = None
                return
        await run_in_threadpool(self._claim)

    def _claim(self) -> None:
        if self._unclaimed is not None and self._request is not None:
            _claim_proof(self._request, self._unclaimed)
            self._unclaimed = None

    def settle(self, values: Sequence[bytes | None] | None = None) -> None:
        """Raises AuthError (401 invalid_token) when the token is revoked, or its proof was used."""
        if self.settled:
            return
        self._claim()
        if self._verifier.revoked_by(self._claims, values):
            raise _refuse("invalid_token", 401, "invalid_token", "token revoked", scheme=self._scheme)
        self.settled = True


# The actor of each token seen lately. A token's claims never change (its signature was checked just
# before, on every call), so neither does the actor they make: a gate sending the same token for every
# truck builds it once. Frozen, so one actor serves every request.
_ACTORS_MAX = 4096
_actors: dict[str, Actor] = {}


def actor_from_claims(claims: dict[str, Any]) -> Actor:
    org = claims.get("org")
    kind = claims.get("org_kind")
    person = claims.get("person_id")
    roles = claims.get("roles") or []
    return Actor(
        client_id=str(claims.get("client_id") or claims.get("sub")),
        organisation_id=uuid.UUID(org) if org else None,
        kind=OrgKind(kind) if kind else None,
        person_id=uuid.UUID(person) if person else None,
        terminal_code=claims.get("terminal"),
        scopes=frozenset(str(claims.get("scope", "")).split()),
        roles=frozenset([claims["role"]] if claims.get("role") else []) | frozenset(roles),
    )


def public_request_uri(request: Request) -> str:
    """The request's URI as the client addressed it (htu, RFC 9449 §4.3 item 9): the issuer's
    origin and the request path; query and fragment are not part of htu."""
    path = request.scope["path"]  # ASGI: path includes root_path
    if not _PLAIN_PATH(path):  # what Starlette's URL escapes or urlsplit drops: its own reading
        path = request.url.path
    return _origin(request.app.state.container.settings.issuer) + path


@functools.lru_cache(maxsize=8)
def _origin(issuer: str) -> str:
    base = urlsplit(issuer)
    return f"{base.scheme}://{base.netloc}"


# A path of printable ASCII without ?, # or \ reads the same as Starlette's ``request.url.path`` (which
# escapes those three and passes the rest through urlsplit, which drops tabs and newlines): taken as
# it is, without building the request's whole URL on every DPoP-bound call.
_PLAIN_PATH = re.compile(r'[!"$->@-\[\]-~]*').fullmatch


def _refuse(event: str, status: int, error: str, description: str, **kw: Any) -> AuthError:
    log.info("release.auth.refused.%s", event)
    return AuthError(status, error, description, **kw)


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None, *, audience: str,
                 scope: str, min_acr: str | None = None, max_age: int | None = None) -> Actor:
    """Check the access token, its sender constraint, its scope and, for a person, how recently and
    how strongly they logged in. Raises AuthError (401/403 with the RFC's challenge)."""
    actor, _ = _checked(request, credentials, audience=audience, scope=scope, min_acr=min_acr, max_age=max_age,
                        revocation=True)
    return actor


def authenticate_but_revocation(request: Request, credentials: HTTPAuthorizationCredentials | None, *,
                                audience: str, scope: str) -> tuple[Actor, Revocation]:
    """``authenticate``, every check but revocation, which the caller must settle (the Revocation
    returned) before it answers anything."""
    actor, revocation = _checked(request, credentials, audience=audience, scope=scope, min_acr=None, max_age=None,
                                 revocation=False)
    assert revocation is not None  # noqa: S101 - _checked returns one whenever revocation=False
    return actor, revocation


def _checked(request: Request, credentials: HTTPAuthorizationCredentials | None, *, audience: str, scope: str,
             min_acr: str | None, max_age: int | None, revocation: bool) -> tuple[Actor, Revocation | None]:
    if credentials is None or not credentials.credentials:
        raise _refuse("missing", 401, "invalid_request", "An OAuth2 access token is required.",
                      also=(DPOP_CHALLENGE,))
    token = credentials.credentials
    dpop = credentials.scheme.lower() == "dpop"
    scheme = "DPoP" if dpop else "Bearer"
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        claims = verifier.verify(token, audience=audience, revocation=revocation)
    except InvalidToken as exc:
        raise _refuse("invalid_token", 401, "invalid_token", exc.description, scheme=scheme) from exc
    cnf = claims.get(c.CNF)
    unclaimed = None
    if dpop:
        # Left with the revocation (the gate's way): the proof's single use is claimed by the caller,
        # off the event loop, before anything is answered (``Revocation.claim_proof``).
        unclaimed = _check_proof(request, token, cnf, claim=revocation)
    elif cnf is not None:
        # RFC 9449 §7.2: a DPoP-bound token presented as a bearer token is refused, else a stolen
        # token would work without the key.
        raise _refuse("bound_token_as_bearer", 401, "invalid_token",
                      "This access token is bound to a key: send it with the DPoP scheme and a proof.",
                      also=(DPOP_CHALLENGE,))
    actor = _actors.get(token)
    if actor is None:
        try:
            actor = actor_from_claims(claims)
        except (ValueError, KeyError) as exc:
            raise _refuse("malformed_claims", 401, "invalid_token", "The access token's claims are malformed.",
                          scheme=scheme) from exc
        if len(_actors) >= _ACTORS_MAX:
            _actors.clear()  # crude but lock-free, as the verifier's own memo
        _actors[token] = actor
    if scope not in actor.scopes:
        raise _refuse("insufficient_scope", 403, "insufficient_scope", f"This call needs the scope {scope}.",
                      scope=scope, scheme=scheme)
    if actor.person_id is not None:
        _check_step_up(request, claims, scheme, min_acr, max_age)
    return actor, None if revocation else Revocation(verifier, claims, scheme, request, unclaimed)


def _check_proof(request: Request, token: str, cnf: Any, *, claim: bool = True) -> SingleUse | None:
    """RFC 9449 §7.1: a DPoP-bound token needs a valid proof, for this request and this token, signed
    by the key the token is bound to. ``claim=False``: its single use is left to the caller, whom the
    claim still to make is returned to (``DPoPVerifier.claim``)."""
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if not isinstance(jkt, str) or not jkt:
        raise _refuse("dpop_unbound_token", 401, "invalid_token",
                      "This access token is not DPoP-bound: send it with the Bearer scheme.", scheme="DPoP",
                      params={"algs": " ".join(DPOP_ALGORITHMS)})
    try:
        proof = proof_header(request.headers) or ""  # none at all: refused as "missing" by verify()
        verified = dpop_verifier_for(request.app).verify(
            proof, htm=request.method, htu=public_request_uri(request), access_token=token, claim=claim
        )
    except DPoPError as exc:
        raise _dpop_refusal(exc) from exc
    if verified.jkt != jkt:
        # The proof is sound but made with another key than the token's: a stolen token with the
        # thief's own key (RFC 9449 §7.1 "the public key ... matches the cnf.jkt").
        raise _refuse("dpop.jkt_mismatch", 401, "invalid_dpop_proof",
                      "The proof's key is not the key this access token is bound to.", scheme="DPoP",
                      params={"algs": " ".join(DPOP_ALGORITHMS)})
    return verified.unclaimed


def _claim_proof(request: Request, unclaimed: SingleUse) -> None:
    try:
        dpop_verifier_for(request.app).claim(unclaimed)
    except DPoPError as exc:
        raise _dpop_refusal(exc) from exc


def _dpop_refusal(exc: DPoPError) -> AuthError:
    """RFC 9449 §7.1, and §9 for ``use_dpop_nonce``: the nonce to use in ``DPoP-Nonce``."""
    return _refuse(f"dpop.{exc.reason}", 401, exc.error, exc.description, scheme="DPoP",
                   params={"algs": " ".join(DPOP_ALGORITHMS)},
                   headers={"DPoP-Nonce": exc.nonce} if exc.nonce is not None else None)


def _check_step_up(request: Request, claims: dict[str, Any], scheme: str, min_acr: str | None,
                   max_age: int | None) -> None:
    """RFC 9470 §3: the person's login is too weak (acr) or too old (auth_time) for this call; the
    challenge says what is needed so the client can send the person back to log in."""
    params: dict[str, str] = {}
    reason: str | None = None
    acr = claims.get(c.ACR)
    if min_acr is not None:
        params["acr_values"] = min_acr
        if not satisfies(acr if isinstance(acr, str) else None, min_acr):
            reason = "acr"
    if max_age is not None:
        params["max_age"] = str(max_age)
        auth_time = claims.get(c.AUTH_TIME)
        now = request.app.state.container.clock.now().timestamp()
        if isinstance(auth_time, bool) or not isinstance(auth_time, int | float) or now - auth_time > max_age:
            reason = reason or "auth_time"
    if reason is not None:
        description = ("A stronger authentication is required for this call." if reason == "acr"
                       else "A more recent authentication is required for this call.")
        raise _refuse(f"step_up.{reason}", 401, "insufficient_user_authentication", description,
                      scheme=scheme, params=params)


def require(scope: str, min_acr: str | None = None, *, max_age: int | None = None,
            audience_setting: str = "api_audience", member: str | None = None) -> Callable[..., Actor]:
    """A dependency giving the authenticated Actor: the token, its DPoP binding, its scope and, for a
    person, the minimum acr and the maximum age of the login (RFC 9470). ``member``: for a person acting
    for an organisation, what his roles there must let him do (``"act"`` or ``"read"``, parties.py);
    else 403 ``forbidden``."""
    from fastapi import Depends

    def authenticated(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Actor:
        audience = getattr(request.app.state.container.settings, audience_setting)
        return authenticate(request, credentials, audience=audience, scope=scope, min_acr=min_acr, max_age=max_age)

    def admit(request: Request) -> None:
        """The caller authenticated on the headers alone, before any of the body is read (quaygate/
        routing.py ``AdmitFirst``); the dependency then gives this actor, not a second check
        (a DPoP proof's jti is claimed once). Once the body is read, AdmitFirst checks the token
        again for what may have changed meanwhile, its expiry and its revocation (quaygate/routing.py
        ``token_again``, this dependency having no ``admit_again`` of its own)."""
        request.state.admitted = (dependency, authenticated(request, credentials_of(request)))

    def dependency(request: Request,
                   credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Actor:  # noqa: B008
        admitted = getattr(request.state, "admitted", None)
        actor = admitted[1] if admitted is not None and admitted[0] is dependency \
            else authenticated(request, credentials)
        if (member == "act" and not actor.may_act) or (member == "read" and not actor.may_read):
            log.info("release.auth.refused.member_role")
            raise DomainError(ErrorCode.FORBIDDEN, "Your role in this organisation does not let you "
                              + ("act on its release rights." if member == "act" else "read its release rights."))
        return actor

    dependency.admit = admit  # type: ignore[attr-defined]
    return dependency

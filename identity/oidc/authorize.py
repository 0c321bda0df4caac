"""The authorization endpoint (RFC 6749 §4.1.1, OIDC Core §3.1.2): validating a request, deciding
whether the browser's login session is good enough, and issuing the code.

    params (query, form, or a pushed request, RFC 9126 §4)
      -> client_id + redirect_uri checked (exact match)   -- failure: error page, never a redirect
                                                             (RFC 6749 §4.1.2.1)
      -> response_type, scope, PKCE S256, prompt, max_age, acr, PAR requirement
                                                          -- failure: error to the redirect_uri
      -> the client's min_acr a level no login here reaches (face; the national ID without an
         upstream at level advanced), and not the session's?
                            -> unmet_authentication_requirements to the redirect_uri
      -> login session good enough? (session, prompt=login, max_age, min_acr; acr_values once)
           no:  prompt=none -> login_required to the redirect_uri (OIDC Core §3.1.2.6)
                else        -> 302 /login?return_to=/oauth2/authorize/resume?id=<the request, sealed>
                               (nothing stored: PendingRequests)
           yes: person may use this client? (active, member of the console's organisation)
                no  -> access_denied to the redirect_uri
                yes -> code (random; only its SHA-256 stored) -> 302 redirect_uri?code&state&iss

Decisions (documented in discovery and here):
- ``prompt=consent`` and ``prompt=select_account`` are accepted and change nothing: every client is
  registered by the port authority or an integrator it approved (consent is given at registration),
  and one browser holds one person's session. ``prompt=none`` with any other value is invalid.
- ``prompt=login`` asks for a login that happened after this request was made; the request keeps its
  creation time while the person logs in, so resuming it after the login passes. ``max_age`` is met
  by such a login too, however long it took (``max_age=0`` works as ``prompt=login``), and otherwise by
  a login at most max_age seconds ago.
- ``acr_values`` is voluntary (OIDC Core §3.1.2.1): its weakest known value
  (identity.domain.assurance.weakest_acceptable; unknown values alone are ignored) is asked for once.
  A session below it that a login here could raise (identity.broker.config.login_acrs: a passkey, the
  national ID where an upstream at level advanced is configured) is sent to the login page, unless
  prompt=none; the resume after that login, and any request for a level no login here reaches (face: the
  step-up is offered on no page), gets the code at the level reached, which the id token's ``acr``
  states, and the relying party judges. Before, it was a hard demand, and acr_values=face sent the
  person round /login for ever (review 161, finding 2).
- The client's ``min_acr`` is required: below it, the login page (prompt=none: login_required); a
  level no login here reaches (a face minimum registered before it was refused; the national ID's,
  registered while an upstream at level advanced was configured: review 164, finding 1) and a session
  without it: ``unmet_authentication_requirements`` (OpenID Connect Core Unmet Authentication
  Requirements 1.0 §2) to the redirect_uri, at once, never a login page that cannot meet it. No
  ``claims`` request is supported (discovery's claims_parameter_supported false), so no essential acr
  claim.
- Parameters are used once: a repeated parameter is invalid (RFC 6749 §3.1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import sqlalchemy as sa

from quaygate.cache import Cache
from quaygate.schema import authorization_codes

from .. import audit
from ..bans.screening import from_settings as ban_screening
from ..clients import ClientRecord, ClientRegistry
from ..domain import assurance
from ..domain import scopes as scope_rules
from ..sessions import LoginSession
from .issue import IssueRefused, person_context

if TYPE_CHECKING:
    from quaygate.settings import Settings

    from ..bootstrap import IdentityProvider
    from ..sessions import SessionStore

log = logging.getLogger(__name__)

AUTHORIZE_PATH = "/oauth2/authorize"
RESUME_PATH = "/oauth2/authorize/resume"
LOGIN_PATH = "/login"
REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"  # RFC 9126 §2.2
RESUME_TTL = 900  # seconds a person has to log in before the request must be made again
# The resume id is the request, sealed (PendingRequests); its URL goes through a login as ``return_to``
# (at most 2000 characters, identity.authn.service.safe_return_to) after "/oauth2/authorize/resume?id=".
MAX_RESUME_ID = 1900
_RESUME_VERSION = b"\x01"
_RESUME_TAG = 16
_RESUME_KEY_CONTEXT = b"quaygate/authorize/resume/v1"
_RESUME_CLAIM_MARGIN = 5.0  # a replica whose clock is behind still finds the claim while it resumes
PKCE_S256 = "S256"
# Matched whole (fullmatch): "$" alone would let a trailing newline through.
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url SHA-256, no padding (RFC 7636 §4.2)
_JKT = re.compile(r"[A-Za-z0-9_-]{43}")  # RFC 7638 SHA-256 thumbprint (RFC 9449 §10)
# ASCII digits only (str.isdigit takes "²" and "٣", which int() then refuses or reads), at most nine.
_MAX_AGE = re.compile(r"[0-9]{1,9}")
MAX_PARAM = 2000
PROMPTS = frozenset({"none", "login", "consent", "select_account"})
# The request parameters of the authorization and logout endpoints: RFC 6749 §4.1.1, OIDC Core §3.1.2.1
# and §6, RFC 7636 §4.3, RFC 9126 §4, RFC 9449 §10, RFC 8707 §2, RFC 9396 §2, RP-Initiated Logout §2.
KNOWN_PARAMS = frozenset({
    "response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "response_mode", "display",
    "prompt", "max_age", "ui_locales", "claims_locales", "id_token_hint", "login_hint", "acr_values", "claims",
    "request", "request_uri", "registration", "code_challenge", "code_challenge_method", "dpop_jkt", "resource",
    "authorization_details", "post_logout_redirect_uri", "logout_hint",
})
CODE_PREFIX = "qgc_"


class PageError(Exception):
    """No trustworthy redirect_uri: show an error page (RFC 6749 §4.1.2.1). ``error`` is an OAuth code."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


class RedirectError(Exception):
    """An error sent back to the client's (validated) redirect_uri (RFC 6749 §4.1.2.1)."""

    def __init__(self, error: str, description: str, *, redirect_uri: str, state: str | None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.redirect_uri = redirect_uri
        self.state = state


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """A validated authorization request: what the code will be bound to."""

    client_id: str
    redirect_uri: str
    scope: str
    state: str | None
    nonce: str | None
    code_challenge: str
    prompt: tuple[str, ...]
    max_age: int | None
    acr: str | None  # the weakest acr the session must satisfy: the client's min_acr
    dpop_jkt: str | None
    created_at: float  # seconds since the epoch, for prompt=login and max_age
    pushed: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    # acr_values' floor when stronger than ``acr``: voluntary, asked for once (module docstring).
    acr_wanted: str | None = None

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def loads(cls, raw: bytes) -> AuthorizationRequest:
        data = json.loads(raw)
        data["prompt"] = tuple(data["prompt"])
        return cls(**data)


def parse_params(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """RFC 6749 §3.1: parameters sent without a value are omitted; none may be repeated.

    The error page names a parameter only when it is one of the protocol's (KNOWN_PARAMS): any other
    name is the link's own text, of any length, which would show on our sign-in error page as if we said
    it (a phishing line; review 128, finding 3)."""
    params: dict[str, str] = {}
    for k, v in pairs:
        if k in params:
            raise PageError("invalid_request", f"{_named(k)} is repeated")
        if len(v) > MAX_PARAM:
            raise PageError("invalid_request", f"{_named(k)} is too long")
        if v != "":
            params[k] = v
    return params


def _named(name: str) -> str:
    return f"parameter {name}" if name in KNOWN_PARAMS else "a parameter"


def check_client_and_redirect(
    clients: ClientRegistry, params: Mapping[str, str], *, anyone: bool = False
) -> tuple[ClientRecord, str]:
    """RFC 6749 §3.1.2.3 / §4.1.2.1: the client is known and active and the redirect_uri is one of
    its registered ones, compared as strings (no normalisation, no prefix, no default).

    ``anyone``: the request names its client and proves nothing (/oauth2/authorize, not PAR's
    authenticated client): a client without the code flow (a machine) is answered as an unknown one,
    so the page tells no one which machine client ids exist (review 151, finding 2); the log says which."""
    client_id = params.get("client_id")
    client = clients.find(client_id) if client_id else None
    if client is None or not client.active:
        log.info("identity.authorize.refused.unknown_client")
        raise PageError("invalid_client", "Unknown client.")
    if "authorization_code" not in client.grant_types:
        log.info("identity.authorize.refused.not_code_client")
        if anyone:
            raise PageError("invalid_client", "Unknown client.")
        raise PageError("unauthorized_client", "This client does not use the authorization code flow.")
    redirect_uri = params.get("redirect_uri")
    if redirect_uri is None or redirect_uri not in client.redirect_uris:
        log.info("identity.authorize.refused.redirect_uri_mismatch")
        raise PageError("invalid_request", "The redirect_uri is not registered for this client.")
    return client, redirect_uri


def validate(
    client: ClientRecord, redirect_uri: str, params: Mapping[str, str], *, now: datetime, pushed: bool
) -> AuthorizationRequest:
    """The rest of the request, once the redirect_uri can be trusted: errors go back to it."""
    state = params.get("state")

    def refuse(error: str, description: str, reason: str) -> RedirectError:
        log.info("identity.authorize.refused.%s", reason)
        return RedirectError(error, description, redirect_uri=redirect_uri, state=state)

    if "request" in params:  # OIDC Core §6: request objects are not supported (use PAR)
        raise refuse("request_not_supported", "Request objects are not supported; use PAR.", "request_object")
    if "request_uri" in params:
        raise refuse("invalid_request", "request_uri only from the pushed authorization endpoint.", "request_uri")
    if client.require_par and not pushed:
        # RFC 9126 §6: this client must push its requests first.
        raise refuse("invalid_request", "This client must use pushed authorization requests.", "par_required")
    if params.get("response_type") != "code":
        raise refuse("unsupported_response_type", "Only response_type=code.", "response_type")
    if params.get("response_mode", "query") != "query":
        raise refuse("invalid_request", "Only response_mode=query.", "response_mode")
    try:
        scope = scope_rules.grant(params.get("scope"), client.scopes)
    except scope_rules.ScopeRefused as exc:
        raise refuse("invalid_scope", str(exc), "scope") from exc
    # RFC 7636 §4.3, RFC 9700 §2.1.1: PKCE is mandatory, and only S256 (plain proves nothing when
    # the request is observed).
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if challenge is None:
        raise refuse("invalid_request", "code_challenge is required (PKCE, S256).", "pkce_missing")
    if method != PKCE_S256:
        raise refuse("invalid_request", "code_challenge_method must be S256.", "pkce_method")
    if not _CHALLENGE.fullmatch(challenge):
        raise refuse("invalid_request", "Malformed code_challenge.", "pkce_challenge")
    prompt = tuple(sorted(set(params.get("prompt", "").split())))
    if any(p not in PROMPTS for p in prompt):
        raise refuse("invalid_request", "Unknown prompt value.", "prompt_unknown")
    if "none" in prompt and len(prompt) > 1:
        raise refuse("invalid_request", "prompt=none cannot be combined.", "prompt_combined")  # OIDC §3.1.2.1
    max_age = None
    if "max_age" in params:
        raw = params["max_age"]
        if not _MAX_AGE.fullmatch(raw):  # OIDC Core §3.1.2.1: a number of seconds
            raise refuse("invalid_request", "max_age must be a non-negative integer.", "max_age")
        max_age = int(raw)
    demanded = assurance.weakest_acceptable(params.get("acr_values", "").split())
    wanted = demanded if assurance.stronger(client.min_acr, demanded) != client.min_acr else None
    dpop_jkt = params.get("dpop_jkt")
    if dpop_jkt is not None and not _JKT.fullmatch(dpop_jkt):
        raise refuse("invalid_request", "Malformed dpop_jkt.", "dpop_jkt")
    nonce = params.get("nonce")
    if nonce is not None and len(nonce) > 255:
        raise refuse("invalid_request", "nonce too long.", "nonce")
    return AuthorizationRequest(
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        scope=scope,
        state=state,
        nonce=nonce,
        code_challenge=challenge,
        prompt=prompt,
        max_age=max_age,
        acr=client.min_acr,
        dpop_jkt=dpop_jkt,
        created_at=now.timestamp(),
        pushed=pushed,
        acr_wanted=wanted,
    )


def unmet(req: AuthorizationRequest, session: LoginSession | None, *, reachable: frozenset[str]) -> bool:
    """The level the client requires is one no login here reaches (not in ``reachable``: the levels of
    identity.broker.config.login_acrs) and the session does not hold it: sending the browser to log in
    would bring it back without it, for ever."""
    if req.acr is None or req.acr in reachable:
        return False
    return not assurance.satisfies(session.acr if session is not None else None, req.acr)


def login_needed(req: AuthorizationRequest, session: LoginSession | None, *, now: datetime,
                 reachable: frozenset[str], resumed: bool = False) -> str | None:
    """Why the session does not do for this request (a reason code), or None when it does.
    ``reachable``: the levels a login here reaches (``unmet``); ``resumed``: the request comes back from
    the login page, where a wanted level was offered."""
    if session is None:
        return "no_session"
    auth_time = session.auth_time.timestamp()
    if "login" in req.prompt and auth_time < req.created_at:
        return "prompt_login"  # OIDC Core §3.1.2.1: reauthenticate
    # OIDC Core §3.1.2.1: too long since the person logged in. A login after the request was made is
    # as fresh as the request can ask: else a max_age shorter than the login takes (0: "like
    # prompt=login") would send the resume back to the login page for ever (review 120, finding 5).
    if req.max_age is not None and auth_time < req.created_at and now.timestamp() - auth_time > req.max_age:
        return "max_age"
    if not assurance.satisfies(session.acr, req.acr):
        return "acr"
    # OIDC Core §3.1.2.1: acr_values is voluntary. A level a login reaches is offered once (not when
    # no interaction is allowed); after that login, or for a level none reaches, the code comes at the
    # level reached (review 161, finding 2).
    wanted = req.acr_wanted
    if (wanted in reachable and not resumed and "none" not in req.prompt
            and not assurance.satisfies(session.acr, wanted)):
        return "acr_values"
    return None


# ---- the resumable request, the login redirect and the responses --------------------------------


class RequestTooLong(Exception):
    """A request too long to wait for a login in a URL (``PendingRequests.save``)."""


class PendingRequests:
    """Validated requests waiting for a login, kept by the browser, not by us (review 67, finding 4: the
    authorization endpoint is anonymous, and Redis runs under noeviction: a request stored per call, up
    to 3.2 kB for 15 minutes, was a way to fill it). The resume id is the request itself: its JSON,
    compressed, under a MAC (HMAC-SHA256, truncated to 128 bits, keyed from the pepper for this use
    alone), base64url. Nothing in it is secret: it is what the request's own URL carried.

    ``load`` (every resume) checks the MAC before anything is decompressed, and the age (RESUME_TTL
    from the request's ``created_at``). ``finish`` (the resume that issues the code) claims it once: one
    ``SET NX`` of its hash until it expires, through ``Cache.claim``, refused for a request made before
    the cache's dataset began (quaygate/dataset.py: its claim may have been lost with the data): a write
    only a caller with a good enough login session makes. ``save`` raises RequestTooLong for a request
    whose id would be longer than MAX_RESUME_ID (a state and nonce of well over a kilobyte): the resume URL
    travels as a login's ``return_to``, at most 2000 characters."""

    PREFIX = "identity:authz-finished:"

    def __init__(self, cache: Cache, key: bytes) -> None:
        self._cache = cache
        self._key = hmac.new(key, _RESUME_KEY_CONTEXT, hashlib.sha256).digest()

    def save(self, req: AuthorizationRequest) -> str:
        body = _RESUME_VERSION + zlib.compress(json.dumps(asdict(req), separators=(",", ":")).encode(), 9)
        rid = base64.urlsafe_b64encode(body + self._tag(body)).decode("ascii").rstrip("=")
        if len(rid) > MAX_RESUME_ID:
            raise RequestTooLong(f"{len(rid)} characters")
        return rid

    def load(self, rid: str | None, *, now: datetime) -> AuthorizationRequest | None:
        """The request, if ``rid`` is one of ours and not older than RESUME_TTL; else None."""
        if not rid or len(rid) > MAX_RESUME_ID:
            return None
        try:
            raw = base64.urlsafe_b64decode(rid + "=" * (-len(rid) % 4))
        except (binascii.Error, ValueError):
            return None
        body, tag = raw[:-_RESUME_TAG], raw[-_RESUME_TAG:]
        if body[:1] != _RESUME_VERSION or not hmac.compare_digest(tag, self._tag(body)):
            return None
        req = AuthorizationRequest.loads(zlib.decompress(body[1:]))  # ours: the MAC holds
        return req if now.timestamp() < req.created_at + RESUME_TTL else None

    def finish(self, rid: str, req: AuthorizationRequest, *, now: datetime) -> bool:
        """Single use: only the first finished resume issues a code (SET NX: of two, one claims it)."""
        ttl = req.created_at + RESUME_TTL - now.timestamp() + _RESUME_CLAIM_MARGIN
        digest = hashlib.sha256(rid.encode("ascii")).hexdigest()
        return bool(self._cache.claim(self.PREFIX + digest, ttl, usable_from=req.created_at))

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:_RESUME_TAG]


def login_location(rid: str, req: AuthorizationRequest) -> str:
    """Where the browser goes to log in; ``return_to`` is a relative path back to this request."""
    return_to = f"{RESUME_PATH}?id={rid}"
    query = {"return_to": return_to}
    asked = assurance.stronger(req.acr, req.acr_wanted)
    if asked:
        query["acr"] = asked
    if "login" in req.prompt or (req.max_age is not None):
        query["fresh"] = "1"
    return f"{LOGIN_PATH}?{urlencode(query, quote_via=quote)}"


def redirect_location(redirect_uri: str, params: Mapping[str, str | None]) -> str:
    """The redirect_uri with the response parameters added to its query (RFC 6749 §4.1.2: keep the
    registered query as it is)."""
    parts = urlsplit(redirect_uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.extend((k, v) for k, v in params.items() if v is not None)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def error_location(error: RedirectError, issuer: str) -> str:
    return redirect_location(
        error.redirect_uri,
        {"error": error.error, "error_description": error.description, "state": error.state, "iss": issuer},
    )


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def issue_code(
    engine: sa.Engine,
    *,
    settings: Settings,
    client: ClientRecord,
    req: AuthorizationRequest,
    session: LoginSession,
    now: datetime,
) -> str:
    """Check the person may use the client, store the code (hash only) and return the redirect
    location with code, state and iss (RFC 6749 §4.1.2, RFC 9207 §2). Raises RedirectError."""
    code = CODE_PREFIX + secrets.token_urlsafe(32)
    with engine.connect() as conn:
        try:
            # A port ban in force refuses the code, as it refuses the logins (identity.bans.screening).
            person_context(conn, client, session.person_id, now=now, bans=ban_screening(settings, engine))
        except IssueRefused as exc:
            # The refusal's transaction ends first (it wrote nothing); its audit entry is committed in a
            # transaction of its own on the same connection, which the refusal raised next does not roll
            # back. Never a second connection while this one is held: concurrent refusals would each hold
            # one and wait for another, and freeze the pool (review 137, finding 1).
            conn.rollback()
            log.info("identity.authorize.refused.%s", exc.reason)
            audit.record(
                "identity.authorize.refused",
                at=now,
                actor={"client_id": client.client_id, "person_id": str(session.person_id)},
                data={"reason": exc.reason},
                conn=conn,
            )
            conn.commit()
            raise RedirectError(
                "access_denied",
                "This person cannot use this client.",
                redirect_uri=req.redirect_uri,
                state=req.state,
            ) from exc
        grant_id = uuid.uuid4()
        conn.execute(
            authorization_codes.insert().values(
                code_hash=code_hash(code),
                client_id=client.client_id,
                person_id=session.person_id,
                sid=session.sid,
                redirect_uri=req.redirect_uri,
                scope=req.scope,
                nonce=req.nonce,
                code_challenge=req.code_challenge,
                acr=session.acr,
                amr=list(session.amr),
                auth_time=session.auth_time,
                dpop_jkt=req.dpop_jkt,
                grant_id=grant_id,
                created_at=now,
                expires_at=now + timedelta(seconds=settings.authorization_code_ttl),
            )
        )
        audit.record(
            "identity.authorization.code_issued",
            at=now,
            actor={"client_id": client.client_id, "person_id": str(session.person_id)},
            subject=str(grant_id),
            data={"scope": req.scope, "acr": session.acr, "pushed": req.pushed},
            conn=conn,
        )
        conn.commit()
    log.info("identity.authorize.code_issued")
    return redirect_location(req.redirect_uri, {"code": code, "state": req.state, "iss": settings.issuer})


# ---- the endpoint's use cases: start, resume -----------------------------------------------------


def start(
    provider: IdentityProvider, sessions: SessionStore, params: Mapping[str, str], cookie: str | None, *, now: datetime
) -> str:
    """GET/POST /oauth2/authorize: the Location to send the browser to. Raises PageError."""
    if "request_uri" in params:
        # RFC 9126 §4: only client_id and request_uri count; the pushed request is used once.
        req = provider.pushed.take(params.get("request_uri"), params.get("client_id"), now=now.timestamp())
        if req is None:
            log.info("identity.authorize.refused.request_uri")
            raise PageError("invalid_request_uri", "The request_uri is unknown, expired, used or not yours.")
        client = _client_of(provider, req)
    else:
        client, redirect_uri = check_client_and_redirect(provider.clients, params, anyone=True)
        try:
            req = validate(client, redirect_uri, params, now=now, pushed=False)
        except RedirectError as error:
            return error_location(error, provider.settings.issuer)
    return _decide(provider, sessions, client, req, cookie, rid=None, now=now)


def resume(
    provider: IdentityProvider, sessions: SessionStore, rid: str | None, cookie: str | None, *, now: datetime
) -> str:
    """GET /oauth2/authorize/resume?id=...: the request again, after the login page. Raises PageError."""
    req = provider.pending.load(rid, now=now)
    if req is None or rid is None:
        raise PageError("invalid_request", "This sign-in request has expired; start again from the app.")
    client = _client_of(provider, req)
    return _decide(provider, sessions, client, req, cookie, rid=rid, now=now)


def _client_of(provider: IdentityProvider, req: AuthorizationRequest) -> ClientRecord:
    """The client of a request validated earlier and carried since (a pushed one, a resumed one), with its
    redirect_uri checked again against the client's registration, as ``check_client_and_redirect`` checks
    a request's own (RFC 6749 §3.1.2.3, RFC 9126 §4: the request_uri's request is the authorization request).
    Defence in depth, whatever sealed it (review 135, finding 1): a request made with a leaked data key or
    pepper, or pushed before the URI was removed from the registration, never sends a code to an address
    the client did not register. Refused on the error page, never by a redirect (RFC 6749 §4.1.2.1)."""
    client = provider.clients.find(req.client_id)
    if client is None or not client.active:
        raise PageError("invalid_client", "Unknown client.")
    if req.redirect_uri not in client.redirect_uris:
        log.warning("identity.authorize.refused.carried_redirect_uri_unregistered")
        raise PageError("invalid_request", "The redirect_uri is not registered for this client.")
    return client


def _decide(
    provider: IdentityProvider,
    sessions: SessionStore,
    client: ClientRecord,
    req: AuthorizationRequest,
    cookie: str | None,
    *,
    rid: str | None,
    now: datetime,
) -> str:
    issuer = provider.settings.issuer
    session = sessions.get(cookie, now=now)
    reachable = provider.login_acrs
    if unmet(req, session, reachable=reachable):
        # OpenID Connect Core Unmet Authentication Requirements 1.0 §2: no login of ours meets the
        # client's minimum; never a login page that cannot (review 161, finding 2; review 164, finding 1).
        log.info("identity.authorize.refused.acr_unmet")
        error = RedirectError("unmet_authentication_requirements",
                              "No login here reaches the authentication level this client requires.",
                              redirect_uri=req.redirect_uri, state=req.state)
        return error_location(error, issuer)
    reason = login_needed(req, session, now=now, reachable=reachable, resumed=rid is not None)
    if reason is not None:
        if "none" in req.prompt:
            # OIDC Core §3.1.2.6: no interaction allowed, and a login would be needed.
            log.info("identity.authorize.refused.login_required.%s", reason)
            error = RedirectError(
                "login_required", "The person must log in.", redirect_uri=req.redirect_uri, state=req.state
            )
            return error_location(error, issuer)
        log.info("identity.authorize.login_needed.%s", reason)
        if rid is None:
            try:
                rid = provider.pending.save(req)
            except RequestTooLong:
                log.info("identity.authorize.refused.too_long")
                error = RedirectError("invalid_request", "The request is too long to wait for a login: use a "
                                      "shorter state and nonce.", redirect_uri=req.redirect_uri, state=req.state)
                return error_location(error, issuer)
        return login_location(rid, req)
    assert session is not None
    if rid is not None and not provider.pending.finish(rid, req, now=now):
        raise PageError("invalid_request", "This sign-in request was already completed.")
    try:
        return issue_code(
            provider.server.engine, settings=provider.settings, client=client, req=req, session=session, now=now
        )
    except RedirectError as error:
        return error_location(error, issuer)

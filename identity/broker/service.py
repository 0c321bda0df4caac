"""Brokered login, the two use cases (OIDC Core §3.1 authorization code flow, as a relying party).

    start(upstream, return_to) --> the flow sealed (AES-GCM, the data key) into the browser-binding
                                   cookie (HttpOnly), nothing stored; 303 to the upstream with PKCE S256,
                                   nonce, acr_values, claims, prompt=login and max_age=0 (in a request
                                   object signed then encrypted, for itsme)
    callback(code, state, iss) --> the cookie's flow: same browser (it opens, names this state), this
                                   upstream, not expired --> RFC 9207 iss --> token endpoint
                                   (private_key_jwt) --> id token: JWE (our kid) -> JWS (upstream kid)
                                   -> claims, nonce --> auth_time within the flow --> the state claimed
                                   (SET NX: used once, replayed or raced) --> userinfo: the same, sub
                                   must match --> acr --> national number hash --> link / re-bind /
                                   login, ban screening, session (its login time the upstream's), audit:
                                   one commit

The flow lives in the browser, not in Redis (review 67, finding 4): Redis runs under noeviction, and a
start is anonymous (a GET anyone can send), so a flow stored per start was a way to fill it and stop
every DPoP claim, login and gate verify. The binding cookie is the flow itself, sealed with the data key
(its PKCE verifier and nonce stay secret to the browser too): only the browser that started a login can
finish it, and the cookie cannot be made or changed elsewhere. Its single use is claimed
(``Cache.claim``: one ``SET NX`` until the flow expires, refused for a flow started before the cache's
epoch) once the upstream's id token holds and names the flow's nonce: only a caller who has just logged
in at the upstream makes a write. Before that, a replayed callback is refused by the upstream itself
(its code is used once, RFC 6749 §4.1.2).

Every login asks the upstream for a new authentication (review 157, finding 1): ``prompt=login`` and
``max_age=0`` (OIDC Core §3.1.2.1), ``auth_time`` essential in the claims request. An answer the upstream
gave from a session of its own (a shared browser's previous user, after a proper logout here) is not a
login: an id token whose ``auth_time`` is missing or before the flow's start (the sealed flow's ``iat``,
less the iat skew) is refused ``upstream_login_not_fresh``, and the session's login time is the
upstream's ``auth_time``, not the callback's: adding a passkey and our own provider's prompt=login and
max_age measure the real authentication. A flow started before this was deployed seals the same fields
(its ``iat`` was there): its upstream answer, asked for no auth_time, is refused like any without one.

Every refusal is a ``BrokerRefused`` with a code (identity.domain.broker.Refusal); no session is
created. No refresh token is ever kept (itsme issues none; one that came anyway is dropped).

What goes on the audit trail (PostgreSQL, kept for good): the callback's outcome, where a login is
judged: ``identity.login.upstream.succeeded`` (with linked / rebound), or
``identity.login.upstream.refused.<code>`` with its detail, an expired, forged or replayed state
included. Not the start: it carries no identity and decides nothing, and anyone may send one (an
anonymous GET, which no rate limit counts): a row per start was a way to grow the trail without bound.
A start, and its refusals (an unknown or unreachable upstream), go to the log only. Anyone may call the callback
too, so it counts as one login attempt of its address (the login guard's per-address count,
identity.ratelimit, shared with passkey logins) before anything else: past the limit it is refused
with ``rate_limited`` and a Retry-After, logged, not audited, and the flow's cookie is kept for a try
after the wait. The refusals an anonymous caller can have audited are thus bounded per address and
window by QUAYGATE_LOGIN_ATTEMPTS_PER_ADDRESS; what it makes the cache keep is its address's counter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlencode

import httpx
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag

from quaygate.crypto import keyed_hash

from .. import audit
from ..authn.enrolment import issuing_office
from ..authn.service import safe_return_to
from ..bans.screening import from_settings as ban_screening
from ..domain import broker as rules
from ..domain.bans import national_number_valid
from ..domain.broker import BrokerRefused, LinkAction, PasskeyProof, Refusal
from ..sessions import LoginSession, SessionStore
from . import jose
from .config import Upstream
from .keys import EncryptionKeys
from .linking import resolve
from .upstream import UpstreamClient

if TYPE_CHECKING:
    from quaygate.cache import Cache
    from quaygate.settings import Settings

    from ..keys import KeyStore
    from ..ratelimit import LoginGuard

log = logging.getLogger(__name__)
_USED_PREFIX = "broker:used:"
_FLOW_AAD = b"quaygate/broker/flow/v1"  # a sealed flow opens as nothing else, and nothing else as one
# A state's claim outlives its flow's expiry by this much: a replica whose clock is behind another's
# still finds the claim while it takes the flow for unexpired.
_CLAIM_MARGIN = 5.0


@dataclass(frozen=True, slots=True)
class Started:
    location: str
    binding: str  # the browser-binding cookie's value: the flow, sealed


@dataclass(frozen=True, slots=True)
class Finished:
    cookie: str
    session: LoginSession
    return_to: str
    action: LinkAction


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class BrokerService:
    def __init__(self, *, settings: Settings, engine: sa.Engine, cache: Cache, clock: Any, sessions: SessionStore,
                 signing_keys: KeyStore, encryption_keys: EncryptionKeys, upstreams: dict[str, Upstream],
                 client: UpstreamClient, guard: LoginGuard | None = None) -> None:
        self._settings = settings
        self._guard = guard
        self._engine = engine
        self._cache = cache
        self._clock = clock
        self._sessions = sessions
        self._signing = signing_keys
        self.encryption_keys = encryption_keys
        self.upstreams = upstreams
        self.client = client
        self._issuer = settings.issuer.rstrip("/")
        self._seal = settings.data_cipher()
        self._bans = ban_screening(settings, engine)  # None without a register (identity.bans.screening)

    def close(self) -> None:
        self.client.close()

    def redirect_uri(self, upstream: Upstream) -> str:
        return f"{self._issuer}/broker/{upstream.name}/callback"

    def jwks(self, now: datetime) -> dict[str, Any]:
        """Our relying-party JWKS for the upstreams: the RS256 signing keys (client assertions, request
        objects) and the RSA encryption keys, each with its kid and use."""
        signing = [k for k in self._signing.jwks(now)["keys"] if k.get("alg") == "RS256"]
        return {"keys": [*signing, *self.encryption_keys.public_jwks(now)]}

    # ---- start ----------------------------------------------------------------------------------

    def start(self, name: str, *, return_to: Any) -> Started:
        """A login's start: logged, never audited, nothing stored (module docstring); a refusal too."""
        now = self._clock.now()
        try:
            return self._start(name, return_to=return_to, now=now)
        except BrokerRefused as exc:
            log.info("identity.login.upstream.start.refused.%s", exc.code.value)
            raise

    def _start(self, name: str, *, return_to: Any, now: datetime) -> Started:
        upstream = self._upstream(name, now)
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        issued = now.timestamp()
        flow = {"upstream": name, "state": _sha256(state), "nonce": nonce, "verifier": verifier,
                "return_to": safe_return_to(return_to), "iat": issued,
                "exp": issued + self._settings.upstream_flow_ttl}
        metadata = self.client.metadata(upstream)
        params: dict[str, str] = {
            "response_type": "code", "client_id": upstream.client_id, "redirect_uri": self.redirect_uri(upstream),
            "scope": upstream.scope, "state": state, "nonce": nonce, "code_challenge": challenge,
            "code_challenge_method": "S256", "acr_values": rules.LEVELS[upstream.level],
            "claims": json.dumps(upstream.claims_request(), separators=(",", ":")),
            # OIDC Core §3.1.2.1: a new authentication every time, never the upstream's own session (a
            # shared browser's previous user); max_age makes auth_time a MUST (judged at the callback).
            "prompt": "login", "max_age": "0",
        }
        if upstream.request_object != "none":
            encrypt_to = self.client.encryption_key(upstream) if upstream.request_object == "signed_encrypted" else None
            if upstream.request_object == "signed_encrypted" and encrypt_to is None:
                raise BrokerRefused(Refusal.PROVIDER_UNAVAILABLE, "upstream publishes no enc key")
            request = jose.request_object(params, key=self._signing.signing_key("RS256"),  # type: ignore[arg-type]
                                          client_id=upstream.client_id, audience=upstream.issuer, now=now,
                                          encrypt_to=encrypt_to)
            # OIDC Core §6.1: client_id, response_type and scope (with openid) also as parameters.
            params = {"client_id": upstream.client_id, "response_type": "code", "scope": upstream.scope,
                      "request": request}
        # Nothing stored: the flow goes to the browser, sealed, and the start to the log, not the audit
        # trail (module docstring).
        binding = self._seal.seal(json.dumps(flow, separators=(",", ":")).encode(), _FLOW_AAD)
        log.info("identity.login.upstream.started")
        return Started(f"{metadata['authorization_endpoint']}?{urlencode(params)}", binding)

    # ---- callback -------------------------------------------------------------------------------

    def callback(self, name: str, params: dict[str, str], *, binding: str | None,
                 session_cookie: str | None, address: str | None = None) -> Finished:
        """The login's outcome, audited; ``address``, the client's, is counted first (module docstring)."""
        now = self._clock.now()
        retry = self._guard.check(None, address) if self._guard is not None else None
        if retry is not None:  # refused before anything is judged: not audited, the count was the write
            log.info("identity.login.upstream.refused.rate_limited")
            raise BrokerRefused(Refusal.RATE_LIMITED, "login attempts of the address", retry_after=retry)
        try:
            return self._callback(name, params, binding=binding, session_cookie=session_cookie, now=now)
        except BrokerRefused as exc:
            self._refuse(exc, upstream=name, now=now)

    def _callback(self, name: str, params: dict[str, str], *, binding: str | None, session_cookie: str | None,
                  now: datetime) -> Finished:
        upstream = self._upstream(name, now)
        state = params.get("state", "")
        flow = self._open_flow(binding, state, name, now)
        if "error" in params:
            described = params.get("error_description", "")[:120]
            raise BrokerRefused(Refusal.UPSTREAM_ERROR, f"{params['error'][:60]}: {described}")
        metadata = self.client.metadata(upstream)
        iss = params.get("iss")  # RFC 9207 §2.4: mix-up defence
        announced = metadata.get("authorization_response_iss_parameter_supported")
        if (iss is not None or announced) and iss != upstream.issuer:
            raise BrokerRefused(Refusal.ISSUER_MISMATCH, "iss parameter")
        code = params.get("code", "")
        if not 0 < len(code) <= 2000:
            raise BrokerRefused(Refusal.TOKEN_REFUSED, "no code")
        tokens = self.client.exchange(upstream, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri(upstream),
            "code_verifier": flow["verifier"], "client_id": upstream.client_id,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": jose.client_assertion(self._signing.signing_key("RS256"),  # type: ignore[arg-type]
                                                      client_id=upstream.client_id,
                                                      token_endpoint=metadata["token_endpoint"], now=now),
        })
        if "refresh_token" in tokens:
            log.warning("identity.login.upstream.refresh_token_dropped")
        id_claims = self._open(upstream, tokens["id_token"], now)
        checked = rules.check_id_token(id_claims, issuer=upstream.issuer, client_id=upstream.client_id,
                                       nonce=flow["nonce"], now=now)
        auth_time = rules.login_time(checked.auth_time, started=datetime.fromtimestamp(float(flow["iat"]), UTC),
                                     now=now)
        self._claim(state, flow, now)  # the upstream vouched for this flow: now, and not before, a write
        userinfo = self._open(upstream, self.client.userinfo(upstream, tokens["access_token"]), now)
        rules.check_userinfo(userinfo, sub=checked.sub)
        acr, amr = rules.our_assurance(checked.acr, checked.amr, required=upstream.level)
        number = rules.national_number(userinfo, id_claims)
        if not national_number_valid(number):
            raise BrokerRefused(Refusal.NATIONAL_NUMBER_INVALID, "format")
        subject = keyed_hash(self._settings.pepper_bytes(), number)
        del number  # from here on only the keyed hash (never stored, logged or audited in clear)
        login = (upstream, checked.sub, subject, acr, amr, auth_time, flow["return_to"], session_cookie, now)
        try:
            return self._login(*login)
        except sa.exc.IntegrityError:
            # Two first logins of one person raced (the unique link constraints): the winner's link is
            # there now, so this one is judged again against it (nothing of the first try was written).
            return self._login(*login)

    def _login(self, upstream: Upstream, sub: str, subject: str, acr: str, amr: tuple[str, ...],
               auth_time: datetime, return_to: str, session_cookie: str | None, now: datetime) -> Finished:
        live = self._sessions.get(session_cookie, now=now)
        proof = PasskeyProof(str(live.person_id), live.acr, live.auth_time) if live is not None else None
        with self._engine.begin() as conn:
            action, person_id, replaced = resolve(conn, issuer=upstream.issuer, sub=sub, national_id_hash=subject,
                                                  proof=proof, now=now)
            if self._bans is not None and self._bans.banned(conn, person_id, now):
                raise BrokerRefused(Refusal.PERSON_BANNED, "port ban in force", office=issuing_office(conn, person_id))
            # The browser's session, if any, ends; this one takes over its grants if it was this person's.
            cookie, session = self._sessions.create(person_id, acr=acr, amr=amr, now=now, conn=conn,
                                                    replacing=session_cookie, auth_time=auth_time)
            actor = {"person_id": str(person_id)}
            if action is LinkAction.REBIND:
                audit.record("identity.upstream.rebound", at=now, actor=actor, subject=str(person_id), conn=conn,
                             data={"upstream": upstream.name, "confirmed_by": "passkey_session",
                                   "old_sub_sha256": _sha256(replaced or ""), "new_sub_sha256": _sha256(sub)})
            elif action is LinkAction.LINK:
                audit.record("identity.upstream.linked", at=now, actor=actor, subject=str(person_id), conn=conn,
                             data={"upstream": upstream.name})
            audit.record("identity.login.upstream.succeeded", at=now, actor=actor, subject=session.sid, conn=conn,
                         data={"upstream": upstream.name, "acr": acr, "action": action.value})
        log.info("identity.login.upstream.succeeded.%s", action.value)
        return Finished(cookie, session, return_to, action)

    # ---- helpers --------------------------------------------------------------------------------

    def _open(self, upstream: Upstream, compact: str, now: datetime) -> dict[str, Any]:
        return jose.open_nested(
            compact,
            decryption_key=lambda kid: self.encryption_keys.private_key(kid, now),
            upstream_key=lambda kid: self.client.signing_key(upstream, kid),
            require_encryption=upstream.require_encryption,
            signed_alg=upstream.signed_alg,
        )

    def _open_flow(self, binding: str | None, state: str, name: str, now: datetime) -> dict[str, Any]:
        """The flow the browser's binding cookie holds (sealed by ``_start``), for this state and upstream,
        not expired. No cookie, or one that names another state (another flow of this browser, or a
        callback URL taken to another browser: login CSRF): browser_mismatch. A cookie that does not open
        (not ours, changed), another upstream's flow, an expired one: state_invalid. Nothing is read from
        or written to the cache: a replay is found by ``_claim``."""
        if not binding:
            raise BrokerRefused(Refusal.BROWSER_MISMATCH, "no binding cookie")
        try:
            flow: dict[str, Any] = json.loads(self._seal.open_current(binding, _FLOW_AAD))
        except (ValueError, InvalidTag) as exc:
            raise BrokerRefused(Refusal.STATE_INVALID, "binding cookie does not open") from exc
        if not 0 < len(state) <= 200 or not hmac.compare_digest(_sha256(state), flow["state"]):
            raise BrokerRefused(Refusal.BROWSER_MISMATCH, "binding cookie of another state")
        if flow["upstream"] != name:
            raise BrokerRefused(Refusal.STATE_INVALID, "state of another upstream")
        if now.timestamp() >= flow["exp"]:
            raise BrokerRefused(Refusal.STATE_INVALID, "state expired")
        return flow

    def _claim(self, state: str, flow: dict[str, Any], now: datetime) -> None:
        """A state is used once (OIDC Core §3.1.2.7 via RFC 6749 §10.12): one atomic ``SET NX`` of its
        hash, kept until its flow expires (and ``_CLAIM_MARGIN`` more), through ``Cache.claim``, which
        refuses a flow started before the cache's dataset began (quaygate/dataset.py: its claim may have
        been lost with the data). Of the same callback replayed or raced, one goes on."""
        ttl = float(flow["exp"]) - now.timestamp() + _CLAIM_MARGIN
        got = self._cache.claim(_USED_PREFIX + _sha256(state), ttl, usable_from=float(flow["iat"]))
        if not got:
            raise BrokerRefused(Refusal.STATE_INVALID,
                                "state started before the cache's epoch" if got.nonce is not None else "state used")

    def _upstream(self, name: str, now: datetime) -> Upstream:
        upstream = self.upstreams.get(name)
        if upstream is None:
            raise BrokerRefused(Refusal.PROVIDER_UNKNOWN, "not configured")
        return upstream

    def _refuse(self, exc: BrokerRefused, *, upstream: str, now: datetime) -> NoReturn:
        audit.record(f"identity.login.upstream.refused.{exc.code.value}", at=now, actor={},
                     subject=upstream if upstream in self.upstreams else None,
                     # The name is the path's and the detail may hold the callback's or the upstream's text:
                     # escaped, or a NUL fails the entry on PostgreSQL (review 157, finding 2).
                     data={"upstream": audit.printable(upstream, 40), "code": exc.code.value,
                           "detail": audit.printable(exc.detail, 200)},
                     engine=self._engine)
        log.info("identity.login.upstream.refused.%s", exc.code.value)
        raise exc


def encryption_keys(c: Any) -> EncryptionKeys:
    """Our encryption keys for the upstreams' id tokens and userinfo, from a Container: a retired key
    stays published and usable until every upstream's cached copy of our JWKS has expired."""
    s = c.settings
    return EncryptionKeys(c.engine, c.cipher, overlap=timedelta(
        seconds=max(s.broker_enc_key_overlap, s.broker_jwks_max_age + 60)))


def build(app: Any) -> BrokerService:
    """The app's BrokerService (``app.state.broker``), built once from the container."""
    from ..bootstrap import provider_for
    from ..ratelimit import login_guard_for
    from ..sessions import sessions_for
    from . import config

    service: BrokerService | None = getattr(app.state, "broker", None)
    if service is None:
        c = app.state.container
        s = c.settings
        enc = encryption_keys(c)
        enc.ensure_active(c.clock.now())
        http = getattr(app.state, "broker_http", None) or httpx.Client(timeout=s.upstream_http_timeout)
        service = BrokerService(settings=s, engine=c.engine, cache=c.cache, clock=c.clock, sessions=sessions_for(app),
                                signing_keys=provider_for(app).keys, encryption_keys=enc,
                                upstreams=config.load(s.upstreams),
                                client=UpstreamClient(http, metadata_ttl=s.upstream_metadata_ttl),
                                guard=login_guard_for(app))
        app.state.broker = service
    return service

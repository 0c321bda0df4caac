"""Brokered login, the two use cases (OIDC Core §3.1 authorization code flow, as a relying party).

    start(upstream, return_to) --> flow in the cache under sha256(state), TTL upstream_flow_ttl;
                                   a random browser binding in an HttpOnly cookie (its hash in the flow);
                                   303 to the upstream with PKCE S256, nonce, acr_values, claims
                                   (in a request object signed then encrypted, for itsme)
    callback(code, state, iss) --> take the flow (atomic GETDEL: a state is used once, replayed or raced)
                                   --> same browser? --> RFC 9207 iss --> token endpoint (private_key_jwt)
                                   --> id token: JWE (our kid) -> JWS (upstream kid) -> claims, nonce
                                   --> userinfo: the same, sub must match --> acr --> national number hash
                                   --> link / re-bind / login, ban screening, session, audit: one commit

Every refusal is a ``BrokerRefused`` with a code (identity.domain.broker.Refusal), written to the audit
trail (``identity.login.upstream.refused.<code>``) and the log; no session is created. No refresh
token is ever kept (itsme issues none; one that came anyway is dropped).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlencode

import httpx
import sqlalchemy as sa

from quaygate.crypto import keyed_hash

from .. import audit
from ..authn.service import safe_return_to
from ..bans.screening import screen_person
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

log = logging.getLogger(__name__)
_FLOW_PREFIX = "broker:flow:"


@dataclass(frozen=True, slots=True)
class Started:
    location: str
    binding: str  # the browser-binding cookie's value


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
                 client: UpstreamClient) -> None:
        self._settings = settings
        self._engine = engine
        self._cache = cache
        self._clock = clock
        self._sessions = sessions
        self._signing = signing_keys
        self.encryption_keys = encryption_keys
        self.upstreams = upstreams
        self.client = client
        self._issuer = settings.issuer.rstrip("/")
        self._register = bool(settings.ban_register_jwk or settings.ban_register_jwk_path)

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
        now = self._clock.now()
        try:
            return self._start(name, return_to=return_to, now=now)
        except BrokerRefused as exc:
            self._refuse(exc, upstream=name, now=now)

    def _start(self, name: str, *, return_to: Any, now: datetime) -> Started:
        upstream = self._upstream(name, now)
        state, nonce, verifier, binding = (secrets.token_urlsafe(32) for _ in range(4))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        flow = {"upstream": name, "nonce": nonce, "verifier": verifier, "binding": _sha256(binding),
                "return_to": safe_return_to(return_to)}
        metadata = self.client.metadata(upstream)
        params: dict[str, str] = {
            "response_type": "code", "client_id": upstream.client_id, "redirect_uri": self.redirect_uri(upstream),
            "scope": upstream.scope, "state": state, "nonce": nonce, "code_challenge": challenge,
            "code_challenge_method": "S256", "acr_values": rules.LEVELS[upstream.level],
            "claims": json.dumps(upstream.claims_request(), separators=(",", ":")),
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
        # Taken once at the callback (``take``), never when stored before the cache's dataset began.
        self._cache.put(_FLOW_PREFIX + _sha256(state), json.dumps(flow).encode(), self._settings.upstream_flow_ttl)
        audit.record("identity.login.upstream.started", at=now, actor={}, subject=name, data={"upstream": name},
                     engine=self._engine)
        log.info("identity.login.upstream.started")
        return Started(f"{metadata['authorization_endpoint']}?{urlencode(params)}", binding)

    # ---- callback -------------------------------------------------------------------------------

    def callback(self, name: str, params: dict[str, str], *, binding: str | None,
                 session_cookie: str | None) -> Finished:
        now = self._clock.now()
        try:
            return self._callback(name, params, binding=binding, session_cookie=session_cookie, now=now)
        except BrokerRefused as exc:
            self._refuse(exc, upstream=name, now=now)

    def _callback(self, name: str, params: dict[str, str], *, binding: str | None, session_cookie: str | None,
                  now: datetime) -> Finished:
        upstream = self._upstream(name, now)
        state = params.get("state", "")
        raw = self._cache.take(_FLOW_PREFIX + _sha256(state)) if 0 < len(state) <= 200 else None
        if raw is None:  # unknown, expired, or already taken by an earlier callback (replay, race)
            raise BrokerRefused(Refusal.STATE_INVALID, "state")
        flow = json.loads(raw)
        if flow["upstream"] != name:
            raise BrokerRefused(Refusal.STATE_INVALID, "state of another upstream")
        if not binding or not hmac.compare_digest(_sha256(binding), flow["binding"]):
            raise BrokerRefused(Refusal.BROWSER_MISMATCH, "binding cookie")
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
        userinfo = self._open(upstream, self.client.userinfo(upstream, tokens["access_token"]), now)
        rules.check_userinfo(userinfo, sub=checked.sub)
        acr, amr = rules.our_assurance(checked.acr, checked.amr, required=upstream.level)
        number = rules.national_number(userinfo, id_claims)
        if not national_number_valid(number):
            raise BrokerRefused(Refusal.NATIONAL_NUMBER_INVALID, "format")
        subject = keyed_hash(self._settings.pepper_bytes(), number)
        del number  # from here on only the keyed hash (never stored, logged or audited in clear)
        try:
            return self._login(upstream, checked.sub, subject, acr, amr, flow["return_to"], session_cookie, now)
        except sa.exc.IntegrityError:
            # Two first logins of one person raced (the unique link constraints): the winner's link is
            # there now, so this one is judged again against it (nothing of the first try was written).
            return self._login(upstream, checked.sub, subject, acr, amr, flow["return_to"], session_cookie, now)

    def _login(self, upstream: Upstream, sub: str, subject: str, acr: str, amr: tuple[str, ...], return_to: str,
               session_cookie: str | None, now: datetime) -> Finished:
        live = self._sessions.get(session_cookie, now=now)
        proof = PasskeyProof(str(live.person_id), live.acr, live.auth_time) if live is not None else None
        with self._engine.begin() as conn:
            action, person_id, replaced = resolve(conn, issuer=upstream.issuer, sub=sub, national_id_hash=subject,
                                                  proof=proof, now=now)
            if self._register:
                screening = screen_person(conn, person_id, now, port=None,
                                          max_list_age=timedelta(seconds=self._settings.ban_list_max_age))
                if screening.status == "banned":
                    raise BrokerRefused(Refusal.PERSON_BANNED, "port ban in force")
            cookie, session = self._sessions.create(person_id, acr=acr, amr=amr, now=now, conn=conn)
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

    def _upstream(self, name: str, now: datetime) -> Upstream:
        upstream = self.upstreams.get(name)
        if upstream is None:
            raise BrokerRefused(Refusal.PROVIDER_UNKNOWN, "not configured")
        return upstream

    def _refuse(self, exc: BrokerRefused, *, upstream: str, now: datetime) -> NoReturn:
        audit.record(f"identity.login.upstream.refused.{exc.code.value}", at=now, actor={},
                     subject=upstream if upstream in self.upstreams else None,
                     data={"upstream": upstream[:40], "code": exc.code.value, "detail": exc.detail[:200]},
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
                                client=UpstreamClient(http, metadata_ttl=s.upstream_metadata_ttl))
        app.state.broker = service
    return service

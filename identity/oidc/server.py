"""Authlib's OAuth 2.0 protocol engine, glued to Starlette and to our stores (STYLE.md #7).

Authlib is synchronous: the routes that call this module are plain ``def`` routes (STYLE.md #11).
The token endpoint serves the client credentials grant (RFC 6749 §4.4) and the authorization code
grant (code_grant.py, RFC 6749 §4.1.3 with PKCE); clients authenticate with client_secret_basic /
client_secret_post (RFC 6749 §2.3.1), private_key_jwt (RFC 7523 §2.2, OIDC Core §9) or, public
clients only, none. Access tokens are RFC 9068 JWTs signed with our rotating keys, bound to the
client's DPoP key when a proof is sent (RFC 9449 §5). The same client authentication serves the
pushed authorization request endpoint (RFC 9126 §2.1).

Token request, as handled here::

    form parsed + checked (FormRequest) -> client authenticated (one method) -> grant allowed?
      -> its tokens not refused up to a moment ahead (check_issuable; else 429 slow_down + Retry-After)
      -> DPoP proof checked, its jti not yet claimed (dpop_binding)
      -> the grant found: the code or the refresh token is this client's (client credentials: the
         client authenticated, the scope allowed) -> the proof's jti claimed, once (claim_dpop)
      -> scope granted (domain.scopes) -> claims built (domain.claims) -> signed (tokens) -> 200 JSON
    any failure -> RFC 6749 §5.2 error JSON, Cache-Control: no-store

A client that fails to authenticate, whatever the way (unknown client, bad secret, bad assertion, no
key, replayed jti, a confidential client named with no credential), is answered 401 invalid_client with
WWW-Authenticate (RFC 6749 §5.2) and one fixed description, ``CLIENT_AUTH_FAILED``: Authlib's own
descriptions told an unknown client_id ("does not exist") from a confidential one ("cannot authenticate
with methods") and a client with keys from one without (review 151, finding 2). The reason is logged
(``identity.client_auth.refused``). Only a client that did authenticate is counted against its own rate
limit (ratelimit.client_authenticated), and refused 429 slow_down here when the rate limiter could not
tell it from the request and its allowance is spent.

A client secret costs scrypt (identity.clients), so ``ClientSecret`` checks it behind the address's
budget of client-secret failures (identity.ratelimit, "Client secrets") and in one of a few hashing slots
(``SecretChecker``), and a secret that matched before is recognised without hashing: past the budget, or
with every slot taken, 429 slow_down and nothing hashed (review 129, finding 1).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import AuthorizationServer as _AuthorizationServer
from authlib.oauth2.rfc6749 import (
    ClientMixin,
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry
from starlette.responses import JSONResponse

from quaygate.cache import Cache

from .. import audit, ratelimit
from ..clients import ClientRecord, ClientRegistry, HashingBusy, SecretChecker
from ..domain import claims as token_claims
from ..domain import scopes as scope_rules
from ..domain.roles import AuthMethod
from ..dpop import DPoPError, DPoPVerifier, proof_header
from ..grants import GrantStore
from ..keys import KeyStore
from ..tokens import sign_access_token
from .code_grant import AuthorizationCodeExchange, InvalidDPoPProofError, UseDPoPNonceError
from .exchange import proven
from .refresh import RefreshTokenExchange

if TYPE_CHECKING:
    import sqlalchemy as sa

    from quaygate.container import SystemClock
    from quaygate.settings import Settings

log = logging.getLogger(__name__)

TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a path
JWKS_PATH = "/oauth2/jwks"
# Client assertions: asymmetric only (no client_secret_jwt, no "none"), RFC 7523 §3 and RFC 8725 §3.1.
ASSERTION_ALGORITHMS = ("RS256", "PS256", "ES256")
MAX_ASSERTION_LIFETIME = 300  # seconds from now to exp; a client assertion is for one request
ASSERTION_LEEWAY = 30
AUTH_METHODS = [AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST, AuthMethod.PRIVATE_KEY_JWT]
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Every invalid_client answer's description, whatever the client and the reason (RFC 6749 §5.2's words):
# no answer tells which client ids exist or how one authenticates (review 151, finding 2).
CLIENT_AUTH_FAILED = "Client authentication failed."


@dataclass(frozen=True)
class FormRequest:
    """A token request as read by the (async) route: Authlib then works on it synchronously."""

    method: str
    headers: Mapping[str, str]
    content_type: str
    body: bytes | None  # None: larger than a token request may be


class OAuthClient(ClientMixin):  # type: ignore[misc]
    """Authlib's view of a registered client (authlib.oauth2.rfc6749.ClientMixin)."""

    def __init__(self, record: ClientRecord, secrets: SecretChecker) -> None:
        self.record = record
        self._secrets = secrets

    def get_client_id(self) -> str:
        return self.record.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # RFC 6749 §3.1.2.3: we always require the redirect_uri

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.record.redirect_uris  # exact string match (RFC 9700 §4.1.3)

    def get_allowed_scope(self, scope: str | None) -> str | None:
        try:
            return scope_rules.grant(scope, self.record.scopes)
        except scope_rules.ScopeRefused:
            return None  # Authlib answers invalid_scope (RFC 6749 §5.2)

    def check_client_secret(self, client_secret: str) -> bool:
        """Raises HashingBusy; the secret methods go through ``ClientSecret``, which bounds the hashes."""
        rec = self.record
        if self._secrets.remembered(rec.client_id, client_secret, rec.secret_hash):
            return True
        return self._secrets.verify(rec.client_id, client_secret, rec.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        # The one method the client registered (RFC 7591 §2 token_endpoint_auth_method), at the
        # token endpoint and the PAR endpoint (RFC 9126 §2.1: the same client authentication).
        return endpoint in ("token", "par") and method == self.record.auth_method.value

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.record.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.record.grant_types


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, method: str, uri: str, headers: Mapping[str, str], form: dict[str, str]) -> None:
        super().__init__(method, uri, headers=headers)
        self.payload = BasicOAuth2Payload(form)
        self._form = form

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}


class ClientSecret:
    """RFC 6749 §2.3.1 client_secret_basic and client_secret_post, as Authlib's own
    (authlib.oauth2.rfc6749.authenticate_client), with the CPU a wrong secret costs bounded (review 129,
    finding 1; identity.ratelimit, "Client secrets")::

        client_id and secret sent? no -> not this method
          -> a secret that matched this client's stored hash before (the memo)? -> authenticated
          -> the address's client-secret failures spent? -> 429 slow_down, nothing hashed
          -> a hashing slot free? no -> 429 slow_down
          -> scrypt: matched -> authenticated; else a failure counted, not this method (invalid_client)

    An unknown (or deactivated) client, or one with no secret, is hashed against ``SecretChecker``'s
    decoy and refused as a wrong secret is: the same scrypt, the same answer, no way to tell which
    client ids exist.
    """

    def __init__(self, method: AuthMethod, secrets: SecretChecker) -> None:
        self._basic = method is AuthMethod.CLIENT_SECRET_BASIC
        self._secrets = secrets

    def __call__(self, query_client: Any, request: OAuth2Request) -> OAuthClient | None:
        if self._basic:
            client_id, secret = basic_credentials(request.headers)
        else:
            client_id, secret = request.form.get("client_id"), request.form.get("client_secret")
        if not client_id or not secret:
            return None
        client: OAuthClient | None = query_client(client_id)
        stored = client.record.secret_hash if client is not None else None
        if client is not None and self._secrets.remembered(client_id, secret, stored):
            return client
        retry = ratelimit.secret_failures_spent()
        if retry is not None:
            raise SlowDownError(retry)
        try:
            matched = self._secrets.verify(client_id, secret, stored)  # no stored hash: the decoy
        except HashingBusy:
            log.info("identity.client_auth.refused.hashing_busy")
            raise SlowDownError(1) from None
        if not matched:
            ratelimit.client_secret_failed()
            return None
        return client


def basic_credentials(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """RFC 6749 §2.3.1 client_secret_basic: (client_id, secret) from the Authorization header, as
    Authlib's ``extract_basic_authorization`` reads them ((None, None) when there is no Basic header or
    its base64 does not decode). Credentials that are not UTF-8 (RFC 7617 §2.1, and RFC 6749 Appendix B
    form-encodes them in UTF-8) are a failed authentication, not a missing one: 401 invalid_client, as a
    wrong secret, and no other method tried after it. Authlib lets UnicodeDecodeError out, which was a 500
    with a traceback per request (review 151, finding 1)."""
    try:
        return extract_basic_authorization(headers)  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        log.info("identity.client_auth.refused.malformed_basic")
        raise InvalidClientError(status_code=401, description=CLIENT_AUTH_FAILED) from None


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 §2.2 / §3 client assertion, stricter than Authlib's defaults:
    explicit algorithms, ``aud`` only our token endpoint or our issuer (FAPI 2.0 §5.3.2.1 asks for
    the issuer), a short ``exp``, and a ``jti`` claimed once through the shared cache (§3 item 7)."""

    CLIENT_AUTH_METHOD = AuthMethod.PRIVATE_KEY_JWT.value

    def __init__(self, *, token_endpoint: str, issuer: str, cache: Cache, clock: SystemClock) -> None:
        super().__init__(validate_jti=True, leeway=ASSERTION_LEEWAY)
        self._audiences = [token_endpoint, issuer]
        self._cache = cache
        self._clock = clock
        self._registry = JWSRegistry(algorithms=list(ASSERTION_ALGORITHMS))

    def __call__(self, query_client: Any, request: OAuth2Request) -> OAuthClient | None:
        client = super().__call__(query_client, request)
        form_client_id = request.form.get("client_id")
        if client is not None and form_client_id and form_client_id != client.get_client_id():
            raise InvalidClientError(description="client_id does not match the assertion")  # RFC 7521 §4.2
        return client  # type: ignore[no-any-return]

    def get_audiences(self) -> list[str]:
        return list(self._audiences)

    def resolve_client_public_key(self, client: OAuthClient) -> KeySet:
        if client.record.key_set is None:
            log.info("identity.client_auth.refused.assertion_no_keys")
            raise InvalidClientError(description="The client has no registered keys.")
        return client.record.key_set

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            token = jwt.decode(assertion, resolve_key, registry=self._registry)
        except (JoseError, ValueError) as exc:
            log.info("identity.client_auth.refused.assertion_signature")
            raise InvalidClientError(description="Invalid client assertion.") from exc
        self.verify_claims(token.claims)
        return token.claims

    def verify_claims(self, claims: dict[str, Any]) -> None:
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or not auds or any(a not in self._audiences for a in auds):
            log.info("identity.client_auth.refused.assertion_audience")
            raise InvalidClientError(description="Invalid audience: use the issuer or the token endpoint.")
        for name in (token_claims.EXP, token_claims.IAT, token_claims.NBF):
            if name in claims and token_claims.numeric_date(claims[name]) is None:
                log.info("identity.client_auth.refused.assertion_time")
                raise InvalidClientError(description=f"Invalid client assertion: {name} is not a NumericDate.")
        exp = claims.get("exp")
        now = self._clock.now().timestamp()
        if isinstance(exp, int | float) and not isinstance(exp, bool) and exp - now > MAX_ASSERTION_LIFETIME:
            log.info("identity.client_auth.refused.assertion_lifetime")
            raise InvalidClientError(description="Client assertion lifetime too long.")
        super().verify_claims(claims)  # iss = sub, exp present and not passed, then jti (below)

    def validate_jti(self, claims: dict[str, Any], jti: Any) -> bool:
        if not isinstance(jti, str) or not jti:
            return False
        ttl = max(1.0, float(claims["exp"]) + ASSERTION_LEEWAY - self._clock.now().timestamp())
        digest = hashlib.sha256(f"{claims['sub']}\x00{jti}".encode()).hexdigest()
        if self._cache.claim(f"identity:assertion-jti:{digest}", ttl, usable_from=assertion_usable_from(claims)):
            return True
        log.info("identity.client_auth.refused.assertion_replayed")
        return False


def assertion_usable_from(claims: Mapping[str, Any]) -> float:
    """The earliest moment a client assertion could have been accepted (its claim lost with a cache's
    data before then: quaygate/dataset.py): ``exp`` is at most MAX_ASSERTION_LIFETIME ahead of the
    moment it is accepted (``verify_claims``), and ``iat``, optional (RFC 7523 §3 item 6), at most the
    leeway ahead (joserfc's check). Without ``iat``, an assertion is taken for as old as its ``exp``
    allows: after a loss, such a client is refused until its assertions' ``exp`` is that far ahead of
    the epoch."""
    earliest = float(claims["exp"]) - MAX_ASSERTION_LIFETIME
    iat = claims.get("iat")
    if isinstance(iat, int | float) and not isinstance(iat, bool):
        earliest = max(earliest, float(iat) - ASSERTION_LEEWAY)
    return earliest


class ClientCredentials(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = [m.value for m in AUTH_METHODS]

    def validate_token_request(self) -> None:
        super().validate_token_request()  # the client authenticated (never "none"), the scope allowed
        self.server.check_issuable(self.request.client.record)
        self.request.dpop_jkt = self.server.dpop_binding(self.request, self.request.client.record)
        self.server.claim_dpop(self.request)  # the grant holds: the proof's one use (RFC 9449 §11.1)

    def generate_token(self, user: Any = None, scope: str | None = None, **kw: Any) -> dict[str, Any]:
        jkt = getattr(self.request, "dpop_jkt", None)
        jti = secrets.token_urlsafe(24)
        token: dict[str, Any] = super().generate_token(user={"dpop_jkt": jkt, "jti": jti}, scope=scope, **kw)
        if jkt:
            token["token_type"] = "DPoP"  # noqa: S105 - RFC 9449 §5, a token type
        # Every token goes on the audit trail (SPEC "Identity"), a machine's too: committed before the
        # token is handed out, so no token exists that the trail does not name. Machines fetch tokens
        # in bursts, and this grant has no transaction of its own: concurrent ones commit together.
        client_id = self.request.client.get_client_id()
        self.server.audit_group.record(
            "identity.token.issued",
            at=self.server.clock.now(),
            actor={"client_id": client_id},
            subject=client_id,
            data={"grant_type": self.GRANT_TYPE, "jti": jti, "scope": token.get("scope", ""), "dpop": bool(jkt)},
        )
        return token

    def validate_requested_scope(self) -> None:
        super().validate_requested_scope()  # every scope known to the server
        try:
            scope_rules.grant(self.request.payload.scope, self.request.client.record.scopes)
        except scope_rules.ScopeRefused as exc:
            raise InvalidScopeError(description=str(exc)) from exc


class AccessTokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068 tokens with our claims; signs through tokens.sign_access_token (explicit registry,
    kid in the header) and takes time from our clock rather than Authlib's time.time()."""

    def __init__(self, *, settings: Settings, keys: KeyStore, clock: SystemClock) -> None:
        super().__init__(issuer=settings.issuer, alg=settings.access_token_signing_alg,
                         expires_generator=self._expires_in)  # not used to sign: access_token_generator does
        self._settings = settings
        self._keys = keys
        self._clock = clock

    def _expires_in(self, client: OAuthClient, grant_type: str) -> int:
        return self._settings.access_token_ttl

    def get_jti(self, client: OAuthClient, grant_type: str, user: Any, scope: str) -> str:
        if isinstance(user, dict) and isinstance(user.get("jti"), str):
            return str(user["jti"])  # chosen by the grant, which audits it
        return secrets.token_urlsafe(24)

    def access_token_generator(self, client: OAuthClient, grant_type: str, user: Any, scope: str) -> str:
        rec, s = client.record, self._settings
        claims = token_claims.access_token_claims(
            issuer=s.issuer,
            client_id=rec.client_id,
            role=rec.role,
            organisation_id=str(rec.organisation_id) if rec.organisation_id else None,
            org_kind=rec.org_kind,
            terminal_code=rec.terminal_code,
            scope=scope,
            audiences=token_claims.audiences_for(
                rec.role, api_audience=s.api_audience, gate_audience=s.gate_audience
            ),
            now=int(self._clock.now().timestamp()),
            ttl=s.access_token_ttl,
            jti=self.get_jti(client, grant_type, user, scope),
        )
        if isinstance(user, dict) and user.get("dpop_jkt"):
            claims[token_claims.CNF] = {"jkt": user["dpop_jkt"]}  # RFC 9449 §6.1
        return sign_access_token(claims, self._keys.signing_key(s.access_token_signing_alg))


class AuthorizationServer(_AuthorizationServer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        settings: Settings,
        clients: ClientRegistry,
        keys: KeyStore,
        cache: Cache,
        clock: SystemClock,
        engine: sa.Engine,
        grants: GrantStore,
        dpop: DPoPVerifier,
    ) -> None:
        super().__init__(scopes_supported=sorted(scope_rules.ALL_SCOPES))
        self._clients = clients
        self.settings = settings
        self.keys = keys
        self.clock = clock
        self.engine = engine
        self.audit_group = audit.GroupCommit.on(engine)
        self.grants = grants
        self.dpop = dpop
        base = settings.issuer.rstrip("/")
        self.token_endpoint = base + TOKEN_PATH
        # Half the worker threads at most hash client secrets at once (review 129, finding 1).
        self.secrets = SecretChecker(max_hashing=max(1, settings.worker_threads // 2))
        for method in (AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST):
            self.register_client_auth_method(method.value, ClientSecret(method, self.secrets))
        self.register_client_auth_method(
            AuthMethod.PRIVATE_KEY_JWT.value,
            PrivateKeyJWT(
                token_endpoint=self.token_endpoint, issuer=settings.issuer, cache=cache, clock=clock
            ),
        )
        self.register_grant(ClientCredentials)
        self.register_grant(AuthorizationCodeExchange)
        self.register_grant(RefreshTokenExchange)  # RFC 6749 §6, rotation and reuse detection
        self.register_token_generator(
            "default", AccessTokenGenerator(settings=settings, keys=keys, clock=clock)
        )

    def token_response(self, raw: FormRequest) -> JSONResponse:
        """The token endpoint (RFC 6749 §3.2): a response for every request, errors per §5.2."""
        try:
            request = self.create_oauth2_request(raw)
        except OAuth2Error as error:
            return self.handle_error_response(None, error)  # type: ignore[no-any-return]
        return self.create_token_response(request)  # type: ignore[no-any-return]

    def authenticate_par_client(self, raw: FormRequest) -> tuple[ClientRecord, dict[str, str]]:
        """RFC 9126 §2.1: the client authenticates at the PAR endpoint as at the token endpoint.
        Returns the client and the form; raises OAuth2Error."""
        request = self.create_oauth2_request(raw)
        methods = [m.value for m in AuthMethod]
        client = self.authenticate_client(request, methods, endpoint="par")
        return client.record, request.form

    def authenticate_client(self, request: OAuth2Request, methods: list[str], endpoint: str = "token") -> OAuthClient:
        """Authlib's client authentication (token, PAR, introspection and revocation endpoints), with
        every refusal answered 401: Authlib answers 400 for some (an unknown client_id in the form, a
        bad assertion), and a 400 in a client's name would be counted against that client's allowance
        by anyone who names it. RFC 6749 §5.2 allows 401 for invalid_client, and asks for it whenever
        the client tried to authenticate.

        And with one description (``CLIENT_AUTH_FAILED``): Authlib's told an unknown client_id named
        alone ("none": "The client does not exist on this server.") from a confidential one ("The client
        cannot authenticate with methods: [...]"), and an assertion's unknown ``sub`` from a client with
        no keys ("The client has no registered keys.") and one with keys ("Invalid client assertion.").
        The reason goes to the log (review 151, finding 2)."""
        try:
            client: OAuthClient = super().authenticate_client(request, methods, endpoint)
        except InvalidClientError as error:
            log.info("identity.client_auth.refused", extra={"reason": error.description, "endpoint": endpoint})
            raise InvalidClientError(status_code=401, description=CLIENT_AUTH_FAILED) from None
        if proven(request):  # "none" proves nothing: anyone can use it
            retry = ratelimit.client_authenticated(client.get_client_id())
            if retry is not None:  # its allowance spent (a client the rate limiter could not read)
                raise SlowDownError(retry)
        return client

    def check_issuable(self, record: ClientRecord) -> None:
        """No token for a client whose tokens are refused up to a moment still ahead (its
        ``tokens_refused_until``: RevocationList.revoke_client's cutoff, CLIENT_MARGIN past a secret
        rotated with ``revoke_tokens``, for a replica may still take the old secret that long). Issued,
        the token would be handed out valid for its whole lifetime and refused for all of it. Answered as
        the rate limiter answers here, 429 ``slow_down`` with Retry-After (RFC 6749 §5.2's shape, RFC 9110
        §10.2.3; RFC 6749 has no code of its own for "not yet" at the token endpoint), until the cutoff has
        passed: the client's first token comes a few seconds after the rotation. Called by the grants
        that start a client's tokens (client credentials, the code exchange) once the client has
        authenticated and before anything is used up; a refresh needs no such call: the grants made before
        the cutoff are revoked with it, and none is made after it while it is ahead."""
        wait = record.tokens_refused_for(self.clock.now())
        if wait:
            log.info("identity.token.refused.client_cutoff")
            raise SlowDownError(wait, f"The client's tokens were revoked a moment ago: a token issued now would be "
                                      f"refused. Retry after {wait} seconds.")

    def dpop_binding(self, request: OAuth2Request, record: ClientRecord) -> str | None:
        """The JWK thumbprint to bind the tokens to (RFC 9449 §5), or None for a bearer token.

        A proof, when sent, must be valid for POST to our token endpoint; a client registered as
        DPoP-bound must send one (RFC 9449 §5: invalid_dpop_proof). Its signature and claims are checked
        here, its single use is not: the grant claims it (``claim_dpop``) once it has found the code or
        the refresh token it comes with, or authenticated the client, and before it uses up anything
        or issues a token. A proof sent with a made-up code or token is refused without a write, so an
        anonymous caller cannot make the cache keep a claim per request (RFC 9449 §11.1: a replayed
        proof is refused all the same, by the claim)."""
        request.dpop_unclaimed = None
        try:
            proof = proof_header(request.headers)
            if proof is None:
                if record.dpop_bound:
                    log.info("identity.token.refused.dpop_missing")
                    raise InvalidDPoPProofError(description="This client must send a DPoP proof.")
                return None
            verified = self.dpop.verify(proof, htm="POST", htu=self.token_endpoint, claim=False)
        except DPoPError as exc:
            raise _dpop_refused(exc) from exc
        request.dpop_unclaimed = verified.unclaimed
        return verified.jkt

    def claim_dpop(self, request: OAuth2Request) -> None:
        """The single use of the request's DPoP proof (RFC 9449 §11.1), if it sent one: one atomic
        ``SET NX`` (DPoPVerifier.claim), of which one request wins when several carry the same proof.
        Called by each grant once its grant holds and before anything is used up or issued; the grants
        that may go on to a second attempt call it again, which claims nothing twice. Raises
        InvalidDPoPProofError (used before) or UseDPoPNonceError (quaygate/dataset.py: made before the
        cache's epoch); the caller's transaction, if any, then rolls back with nothing kept."""
        single_use = getattr(request, "dpop_unclaimed", None)
        if single_use is None:
            return
        request.dpop_unclaimed = None
        try:
            self.dpop.claim(single_use)
        except DPoPError as exc:
            raise _dpop_refused(exc) from exc

    def query_client(self, client_id: str) -> OAuthClient | None:
        record = self._clients.find(client_id)
        if record is None or not record.active:
            return None
        return OAuthClient(record, self.secrets)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        # RFC 9068 tokens are self-contained: nothing to store. Revocation (later) lists jtis.
        log.info("identity.token.issued", extra={"client_id": request.client.get_client_id()})

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        log.debug("identity.oauth.%s", name)

    def create_oauth2_request(self, request: FormRequest | OAuth2Request) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        form = _parse_form(request)
        return _Request(request.method, self.token_endpoint, request.headers, form)

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> JSONResponse:
        extra = {k: v for k, v in headers if k.lower() != "content-type"}
        # RFC 6749 §5.1 / §5.2: token responses and their errors are never cached.
        extra.setdefault("Cache-Control", "no-store")
        extra.setdefault("Pragma", "no-cache")
        return JSONResponse(body, status_code=status, headers=extra)


class SlowDownError(OAuth2Error):  # type: ignore[misc]
    """A client over its allowance, found once it authenticated: answered as the rate limiter answers
    (identity.ratelimit: 429 ``slow_down``, RFC 8628 §3.5's code in RFC 6749 §5.2's shape, with
    Retry-After, RFC 9110 §10.2.3)."""

    error = "slow_down"
    status_code = 429

    def __init__(self, retry_after: int, description: str | None = None) -> None:
        super().__init__(description=description or f"Too many requests; retry after {retry_after} seconds.")
        self.retry_after = retry_after

    def get_headers(self) -> list[tuple[str, str]]:
        return [*super().get_headers(), ("Retry-After", str(self.retry_after))]


def _dpop_refused(exc: DPoPError) -> OAuth2Error:
    """The token endpoint's answer to a refused proof: RFC 9449 §8 use_dpop_nonce (with the nonce in
    ``DPoP-Nonce``) or §5 invalid_dpop_proof."""
    log.info("identity.token.refused.dpop.%s", exc.reason)
    if exc.nonce is not None:
        return UseDPoPNonceError(exc.nonce, exc.description)
    return InvalidDPoPProofError(description=exc.description)


def _parse_form(raw: FormRequest) -> dict[str, str]:
    """RFC 6749 §3.2 and §2.3: a form body, each parameter once, one client authentication method."""
    if raw.body is None:
        raise InvalidRequestError(description="Request body too large.")
    if raw.content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise InvalidRequestError(description="Use application/x-www-form-urlencoded.")
    try:
        pairs = parse_qsl(raw.body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw.body))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError(description="Malformed form body.") from exc
    form = dict(pairs)
    if len(form) != len(pairs):
        raise InvalidRequestError(description="A parameter is repeated.")  # RFC 6749 §3.2
    basic = raw.headers.get("authorization", "").lower().startswith("basic ")
    used = [basic, "client_secret" in form, "client_assertion" in form]
    if sum(used) > 1:
        raise InvalidRequestError(description="Use one client authentication method.")  # RFC 6749 §2.3
    if "client_assertion" in form and form.get("client_assertion_type") != ASSERTION_TYPE:
        raise InvalidRequestError(description="Unsupported client_assertion_type.")  # RFC 7521 §4.2
    return form

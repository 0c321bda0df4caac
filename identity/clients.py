"""OAuth clients in ``oauth_clients``: registration, lookup, and client secrets.

A client secret is shown once, at registration, and only a slow salted hash is kept (scrypt, RFC 7914).
Secrets are 256-bit random values we generate, so the hash guards against a leaked table rather than
against guessing; scrypt's cost (about 40 ms here) is paid once per token request.

Lookups are served from memory (``ClientRegistry.find``): every token request needs its client, and a
database round trip per request was the largest cost of the client credentials grant. A change made
through this process (update, key rotation, deactivation) is seen at once; every write also bumps an
epoch in the shared cache, which each replica reads at most once per ``check_every`` seconds, clearing
its memory when the epoch moved. So another replica stops serving a deactivated client within
``check_every`` (one second by default), and no entry is older than ``max_age`` in any case.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from quaygate.cache import Cache
from quaygate.schema import oauth_clients, organisations

from .domain import scopes as scope_rules
from .domain.assurance import LEVEL as ACR_LEVEL
from .domain.roles import (
    SECRET_METHODS,
    AuthMethod,
    ClientRole,
    RegistrationRefused,
    check_redirect_uris,
    check_registration,
    grant_types_for,
    requires_par,
)

# OIDC Registration §2 id_token_signed_response_alg values we sign with: oidc.issue.ID_TOKEN_ALGORITHMS,
# keys.SIGNING_ALGORITHMS (kept equal by tests/test_identity_keys.py).
ID_TOKEN_ALGS = ("RS256", "PS256", "ES256")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_SALT_BYTES = 16


def hash_secret(secret: str) -> str:
    """``scrypt$n$r$p$salt$hash``, salt and hash in unpadded urlsafe base64."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT)
    n, r, p = _SCRYPT["n"], _SCRYPT["r"], _SCRYPT["p"]
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, encoded: str | None) -> bool:
    """Constant-time comparison of a presented secret with its stored hash."""
    if not encoded or not secret:
        return False
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.urlsafe_b64decode(digest + "==")
        actual = hashlib.scrypt(
            secret.encode(),
            salt=base64.urlsafe_b64decode(salt + "=="),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def public_jwks(jwks: dict[str, Any]) -> dict[str, Any]:
    """A client's JWK Set as we keep it: public RSA or EC signing keys only (RFC 7591 §2 ``jwks``)."""
    try:
        key_set = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise RegistrationRefused("jwks_invalid", f"unreadable jwks: {exc}") from exc
    keys = list(key_set)
    if not keys or any(not isinstance(k, RSAKey | ECKey) for k in keys):
        raise RegistrationRefused("jwks_invalid", "jwks must hold RSA or EC public keys")
    if any(k.get("use") not in (None, "sig") for k in keys):
        raise RegistrationRefused("jwks_invalid", "jwks keys must be signing keys")
    return {"keys": [k.as_dict(private=False) for k in keys]}


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    name: str
    role: ClientRole
    organisation_id: uuid.UUID | None
    org_kind: str | None
    terminal_code: str | None
    auth_method: AuthMethod
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...]
    jwks: dict[str, Any] | None
    secret_hash: str | None
    active: bool
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()
    require_par: bool = False
    min_acr: str | None = None
    dpop_bound: bool = False
    extra_metadata: dict[str, Any] | None = None
    # The registered jwks, imported once per lookup instead of once per client assertion.
    key_set: KeySet | None = field(default=None, compare=False, repr=False)

    @property
    def is_public(self) -> bool:
        return self.auth_method is AuthMethod.NONE

    @property
    def id_token_alg(self) -> str:
        """OIDC Registration §2 id_token_signed_response_alg; RS256 by default."""
        alg = (self.extra_metadata or {}).get("id_token_signed_response_alg")
        return alg if isinstance(alg, str) else "RS256"


EPOCH_KEY = "identity:clients-epoch"
_EPOCH_TTL = 30 * 86400  # the key only has to outlive the replicas' memories; its value is what counts


class ClientRegistry:
    def __init__(
        self,
        engine: sa.Engine,
        cache: Cache | None = None,
        *,
        max_age: float = 60.0,
        check_every: float = 1.0,
        max_entries: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``cache``: the shared cache whose epoch tells replicas that a client changed; None keeps
        no memory at all (every find() reads the table)."""
        self._engine = engine
        self._cache = cache
        self._max_age = max_age
        self._check_every = check_every
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._memory: dict[str, tuple[float, ClientRecord]] = {}
        self._epoch: bytes | None = None
        self._checked_at = float("-inf")
        self._generation = 0  # bumped by every forget: a read that raced a change is not remembered

    def changed(self, client_id: str | None = None) -> None:
        """A client's row changed (after the commit): forget it here, and tell the other replicas."""
        with self._lock:
            self._generation += 1
            if client_id is None:
                self._memory.clear()
            else:
                self._memory.pop(client_id, None)
        if self._cache is not None:
            self._cache.incr(EPOCH_KEY, _EPOCH_TTL)

    def register(
        self,
        *,
        name: str,
        role: ClientRole | str,
        organisation_id: uuid.UUID | None,
        now: datetime,
        terminal_code: str | None = None,
        auth_method: AuthMethod | str = AuthMethod.CLIENT_SECRET_BASIC,
        jwks: dict[str, Any] | None = None,
        scopes: list[str] | tuple[str, ...] | None = None,
        redirect_uris: list[str] | tuple[str, ...] = (),
        post_logout_redirect_uris: list[str] | tuple[str, ...] = (),
        require_par: bool = False,
        min_acr: str | None = None,
        dpop_bound: bool = False,
        extra_metadata: dict[str, Any] | None = None,
    ) -> tuple[str, str | None]:
        """Register a client; return its client_id and, for secret methods, the clear secret (once).

        Redirect URIs follow identity.domain.roles.check_redirect_uris; a confidential console always
        requires pushed authorization requests (RFC 9126 §6), whatever ``require_par`` says.
        """
        try:
            role, method = ClientRole(role), AuthMethod(auth_method)
            granted = scope_rules.registrable(role, scopes)
        except ValueError as exc:  # unknown role or method, or ScopeRefused
            raise RegistrationRefused("invalid_metadata", str(exc)) from exc
        redirects = check_redirect_uris(role, list(redirect_uris))
        logout_redirects = check_redirect_uris(role, list(post_logout_redirect_uris))
        if min_acr is not None and min_acr not in ACR_LEVEL:
            raise RegistrationRefused("invalid_metadata", "unknown min_acr")
        metadata = dict(extra_metadata or {})
        alg = metadata.get("id_token_signed_response_alg", "RS256")
        if alg not in ID_TOKEN_ALGS:
            raise RegistrationRefused("invalid_metadata", "id_token_signed_response_alg not supported")
        stored_jwks = public_jwks(jwks) if jwks is not None else None
        with self._engine.begin() as conn:
            org = None
            if organisation_id is not None:
                org = conn.execute(
                    sa.select(organisations.c.kind, organisations.c.terminal_code).where(
                        organisations.c.id == organisation_id
                    )
                ).first()
                if org is None:
                    raise RegistrationRefused("organisation_unknown", "no such organisation")
            bound = check_registration(
                role,
                org_kind=org.kind if org else None,
                org_terminal_code=org.terminal_code if org else None,
                terminal_code=terminal_code,
                auth_method=method,
                has_jwks=stored_jwks is not None,
            )
            client_id, secret = new_client_id(role), new_secret(method)
            conn.execute(
                oauth_clients.insert().values(
                    client_id=client_id,
                    name=name,
                    organisation_id=organisation_id,
                    role=role.value,
                    secret_hash=hash_secret(secret) if secret else None,
                    token_endpoint_auth_method=method.value,
                    grant_types=list(grant_types_for(role)),
                    redirect_uris=list(redirects),
                    post_logout_redirect_uris=list(logout_redirects),
                    require_par=requires_par(role, method, require_par),
                    min_acr=min_acr,
                    extra_metadata=metadata,
                    scopes=list(granted),
                    jwks=stored_jwks,
                    terminal_code=bound,
                    dpop_bound=dpop_bound,
                    active=True,
                    created_at=now,
                )
            )
        return client_id, secret

    def find(self, client_id: str) -> ClientRecord | None:
        """The client, active or not (the caller decides), with its organisation's kind; from memory
        when this replica read it less than ``max_age`` seconds ago and no client changed since."""
        if not isinstance(client_id, str) or len(client_id) > 100:
            return None
        if self._cache is None:
            return self._read(client_id)
        now = self._monotonic()
        if now - self._checked_at >= self._check_every:
            epoch = self._cache.get(EPOCH_KEY)
            with self._lock:
                if epoch != self._epoch:
                    self._generation += 1
                    self._memory.clear()
                    self._epoch = epoch
                self._checked_at = now
        with self._lock:
            hit = self._memory.get(client_id)
            generation = self._generation
        if hit is not None and now - hit[0] < self._max_age:
            return hit[1]
        record = self._read(client_id)
        if record is not None:  # unknown ids are not remembered: made-up ids cannot fill the memory
            with self._lock:
                if generation != self._generation:
                    return record  # a change landed while we read: use it once, remember nothing
                if len(self._memory) >= self._max_entries:
                    self._memory.clear()
                self._memory[client_id] = (now, record)
        return record

    def _read(self, client_id: str) -> ClientRecord | None:
        query = (
            sa.select(oauth_clients, organisations.c.kind.label("org_kind"),
                      organisations.c.active.label("org_active"))
            .select_from(
                oauth_clients.outerjoin(organisations, organisations.c.id == oauth_clients.c.organisation_id)
            )
            .where(oauth_clients.c.client_id == client_id)
        )
        with self._engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return ClientRecord(
            client_id=row.client_id,
            name=row.name,
            role=ClientRole(row.role),
            organisation_id=row.organisation_id,
            org_kind=row.org_kind,
            terminal_code=row.terminal_code,
            auth_method=AuthMethod(row.token_endpoint_auth_method),
            grant_types=tuple(row.grant_types),
            scopes=tuple(row.scopes),
            jwks=row.jwks,
            secret_hash=row.secret_hash,
            # A client of a deactivated organisation is refused like a deactivated client (issue 4,
            # identity.organisations): no new tokens, invalid_client at the token endpoint.
            active=bool(row.active) and row.org_active is not False,
            redirect_uris=tuple(row.redirect_uris or ()),
            post_logout_redirect_uris=tuple(row.post_logout_redirect_uris or ()),
            require_par=bool(row.require_par),
            min_acr=row.min_acr,
            dpop_bound=bool(row.dpop_bound),
            extra_metadata=dict(row.extra_metadata or {}),
            key_set=_import_key_set(row.jwks),
        )


def _import_key_set(jwks: dict[str, Any] | None) -> KeySet | None:
    if not jwks:
        return None
    try:
        return KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError):
        return None  # stored through public_jwks(), so unreadable only if the row was edited by hand


def new_client_id(role: ClientRole) -> str:
    """A client_id that names its role (readable in logs), with 64 random bits."""
    return f"qg-{role.value.replace('_', '-')}-{secrets.token_hex(8)}"


def new_secret(method: AuthMethod) -> str | None:
    """A 256-bit client secret for the secret methods, else None (shown once; only its hash is kept)."""
    return secrets.token_urlsafe(32) if method in SECRET_METHODS else None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")

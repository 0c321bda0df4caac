"""OAuth clients in ``oauth_clients``: registration, lookup, and client secrets.

A client secret is shown once, at registration, and only a slow salted hash is kept (scrypt, RFC 7914).
Secrets are 256-bit random values we generate, so the hash guards against a leaked table rather than
against guessing; scrypt's cost (about 40 ms here) is paid once per token request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

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

# OIDC Registration §2 id_token_signed_response_alg values we sign with (oidc.issue.ID_TOKEN_ALGORITHMS).
ID_TOKEN_ALGS = ("RS256",)
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

    @property
    def is_public(self) -> bool:
        return self.auth_method is AuthMethod.NONE

    @property
    def id_token_alg(self) -> str:
        """OIDC Registration §2 id_token_signed_response_alg; RS256 by default."""
        alg = (self.extra_metadata or {}).get("id_token_signed_response_alg")
        return alg if isinstance(alg, str) else "RS256"


class ClientRegistry:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

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
        """The client, active or not (the caller decides), with its organisation's kind."""
        if not isinstance(client_id, str) or len(client_id) > 100:
            return None
        query = (
            sa.select(oauth_clients, organisations.c.kind.label("org_kind"))
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
            active=bool(row.active),
            redirect_uris=tuple(row.redirect_uris or ()),
            post_logout_redirect_uris=tuple(row.post_logout_redirect_uris or ()),
            require_par=bool(row.require_par),
            min_acr=row.min_acr,
            dpop_bound=bool(row.dpop_bound),
            extra_metadata=dict(row.extra_metadata or {}),
        )


def new_client_id(role: ClientRole) -> str:
    """A client_id that names its role (readable in logs), with 64 random bits."""
    return f"qg-{role.value.replace('_', '-')}-{secrets.token_hex(8)}"


def new_secret(method: AuthMethod) -> str | None:
    """A 256-bit client secret for the secret methods, else None (shown once; only its hash is kept)."""
    return secrets.token_urlsafe(32) if method in SECRET_METHODS else None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")

"""Wiring the identity provider: the per-app IdentityProvider the routes and the release API borrow,
and client creation for the demo seeding and the CLI (``quaygate client create``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from quaygate.appstate import built_once

from .broker.config import login_acrs
from .clients import ClientRegistry
from .domain.roles import AuthMethod, ClientRole
from .dpop import DPoPVerifier
from .grants import GrantStore, RevocationList
from .keys import KeyStore
from .oidc.authorize import PendingRequests
from .oidc.par import PushedRequests
from .oidc.server import AuthorizationServer
from .tokens import AccessTokenVerifier

if TYPE_CHECKING:
    from quaygate.container import Container
    from quaygate.settings import Settings


def create_client(
    engine: sa.Engine,
    *,
    name: str,
    role: ClientRole | str,
    organisation_id: uuid.UUID | None,
    terminal_code: str | None = None,
    auth_method: AuthMethod | str = AuthMethod.CLIENT_SECRET_BASIC,
    jwks: dict[str, Any] | None = None,
    scopes: list[str] | None = None,
    now: datetime,
    **options: Any,
) -> tuple[str, str | None]:
    """Register a client; return (client_id, clear secret or None for private_key_jwt / public).

    The secret is shown once: only its hash is stored. Raises RegistrationRefused (a ValueError) when
    the role, organisation kind, terminal, method, keys or scopes do not fit together. ``options``:
    redirect_uris, post_logout_redirect_uris, require_par, min_acr, dpop_bound, extra_metadata
    (ClientRegistry.register).
    """
    return ClientRegistry(engine).register(
        name=name,
        role=role,
        organisation_id=organisation_id,
        terminal_code=terminal_code,
        auth_method=auth_method,
        jwks=jwks,
        scopes=scopes,
        now=now,
        **options,
    )


def grant_store(container: Container, revocations: RevocationList | None = None) -> GrantStore:
    """The grants (refresh tokens, revocations) with the settings' lifetimes: the app's, or a CLI's."""
    s = container.settings
    return GrantStore(container.engine, revocations or RevocationList(container.cache),
                      refresh_ttl=s.refresh_token_ttl, access_ttl=s.access_token_ttl,
                      refresh_max=s.refresh_max_seconds)


def key_store(container: Container) -> KeyStore:
    """Our token signing keys; an old key stays published as long as the longest-lived token it signed."""
    s = container.settings
    # The epoch that tells the other replicas of a rotation or a revocation lives in the shared cache
    # (Redis); the in-process cache reaches no other process, so without one they reload on a timer.
    return KeyStore(container.engine, container.cipher, token_ttl=max(s.access_token_ttl, s.id_token_ttl),
                    cache=container.cache if container.cache.shared else None)


@dataclass
class IdentityProvider:
    """Everything the identity routes and the release API borrow, built once per app."""

    settings: Settings
    keys: KeyStore
    clients: ClientRegistry
    server: AuthorizationServer
    verifier: AccessTokenVerifier
    grants: GrantStore
    dpop: DPoPVerifier
    pending: PendingRequests
    pushed: PushedRequests
    # The levels a login on this port reaches (identity.broker.config.login_acrs), from the settings, once.
    login_acrs: frozenset[str]

    @classmethod
    def build(cls, container: Container) -> IdentityProvider:
        s, clock = container.settings, container.clock
        keys = key_store(container)
        keys.ensure_active(clock.now())
        # Remembered when the cache is shared (Redis), whose epoch every writer bumps. Without it a change
        # made by another process (a CLI `org deactivate`) bumps that process's epoch only, so nothing is
        # remembered: every lookup reads the table, and a deactivated client gets no token the moment after.
        clients = ClientRegistry(container.engine, container.cache if container.cache.shared else None)
        # The one GrantStore and DPoPVerifier of the app (grants_for / dpop_verifier_for return these).
        revocations = RevocationList(container.cache, follow=container.engine, now=clock.now)
        # The cache is what verifiers consult: after a restart with the in-process cache (or a flushed
        # Redis), put the unexpired revocations back, or revoked tokens would pass again until they expire.
        revocations.reload(container.engine, now=clock.now())
        grants = grant_store(container, revocations)
        dpop = DPoPVerifier(container.cache, max_age=s.dpop_max_age, now=lambda: clock.now().timestamp())
        server = AuthorizationServer(
            settings=s,
            clients=clients,
            keys=keys,
            cache=container.cache,
            clock=clock,
            engine=container.engine,
            grants=grants,
            dpop=dpop,
        )
        return cls(
            s,
            keys,
            clients,
            server,
            AccessTokenVerifier(keys, s.issuer, revocations=revocations),
            grants,
            dpop,
            PendingRequests(container.cache, s.pepper_bytes()),
            PushedRequests(container.cache, ttl=s.par_ttl, cipher=container.cipher),
            login_acrs(s),
        )


def provider_for(app: Any) -> IdentityProvider:
    """The app's IdentityProvider: ``app.state.identity`` if the lifespan built one, else built on
    first use from ``app.state.container`` (creating the first signing key if there is none)."""
    return built_once(app, "identity", lambda: IdentityProvider.build(app.state.container))

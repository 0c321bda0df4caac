"""OAuth clients in ``oauth_clients``: registration, lookup, and client secrets.

A client secret is shown once, at registration, and only a slow salted hash is kept (scrypt, RFC 7914).
Secrets are 256-bit random values we generate, so the hash guards against a leaked table rather than
against guessing. scrypt's cost (about 40 ms of CPU and 16 MiB here) is paid once per client and
secret in a process (``SecretChecker``'s memo); a wrong secret pays it every time, so the client
endpoints check secrets through ``SecretChecker`` (a bound on hashes at once) behind a budget of
failures per address (identity.ratelimit, review 129, finding 1). An unknown client_id, a deactivated
client and a client with no secret pay it too, against a decoy hash: answered faster, they told which
client ids exist.

Lookups are served from memory (``ClientRegistry.find``): every token request needs its client, and a
database round trip per request was the largest cost of the client credentials grant. A change made
through this process (update, key rotation, deactivation) is seen at once; every write also bumps an
epoch in the shared cache, which each replica reads at most once per ``check_every`` seconds, clearing
its memory when the epoch moved. So another replica stops serving a deactivated client within
``check_every`` (one second by default), and no entry is older than ``max_age`` in any case. The epoch
is read with Redis's dataset epoch (quaygate/dataset.py): a Redis started again from an older snapshot,
or a replica promoted in a failover, may have lost a change's bump and hold a value a replica already
read; its dataset is new, and every replica clears its memory all the same.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
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

from quaygate.cache import DATASET_EPOCH, Cache
from quaygate.schema import oauth_clients, organisations, revoked_tokens

from .domain import assurance, rsa_keys
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
from .grants import RevocationList

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


class HashingBusy(Exception):
    """Every hashing slot of a ``SecretChecker`` is taken: answer 429 ``slow_down``, do not wait."""


class SecretChecker:
    """``verify_secret`` for the client endpoints, with two bounds on the CPU it costs (review 129,
    finding 1; the third, a budget of failures per address, is identity.ratelimit's).

    - A memo of secrets that matched: per client_id, the stored hash the secret matched and an
      HMAC-SHA256 of the secret under a key made for this process. The same secret against the same
      stored hash matches again without scrypt; a changed hash (a new or rotated secret) misses, and the
      presented secret is hashed. The memo holds no secret, nor anything to test a guess against without
      the key, which never leaves the process; at most ``max_entries`` clients (cleared when full, as
      ClientRegistry's memory), and only clients whose secret matched.
    - At most ``max_hashing`` hashes at once in the process, a slot taken without waiting: when none is
      free, ``HashingBusy``. A hash holds a thread for about 50 ms, and the token endpoint, the passkey
      login and the gate's database way share a few threads (quaygate/threads.py): hashing must never
      hold them all.
    - No stored hash (an unknown client, a deactivated one, one with no secret): the secret is checked
      against a decoy, a hash of a random secret at the cost of ours, made once, and refused; the work
      and the answer are those of a wrong secret, so neither tells which client ids exist.
    """

    def __init__(self, *, max_hashing: int, max_entries: int = 10_000) -> None:
        self._key = secrets.token_bytes(32)
        self._decoy = hash_secret(secrets.token_urlsafe(32))
        self._lock = threading.Lock()
        self._memo: dict[str, tuple[str, bytes]] = {}
        self._max_entries = max_entries
        self.max_hashing = max(1, max_hashing)
        self._hashing = threading.BoundedSemaphore(self.max_hashing)

    def remembered(self, client_id: str, secret: str, encoded: str | None) -> bool:
        """Did ``secret`` match ``encoded``, this client's stored hash, before? No hashing."""
        if not encoded or not secret:
            return False
        with self._lock:
            seen = self._memo.get(client_id)
        return seen is not None and seen[0] == encoded and hmac.compare_digest(seen[1], self._mac(secret))

    def verify(self, client_id: str, secret: str, encoded: str | None) -> bool:
        """``verify_secret``, in one of the hashing slots (raises ``HashingBusy`` when none is free);
        remembered when it matched. ``encoded`` None: checked against the decoy, never matched."""
        if not self._hashing.acquire(blocking=False):
            raise HashingBusy
        try:
            matched = verify_secret(secret, encoded or self._decoy) and bool(encoded)
        finally:
            self._hashing.release()
        if matched and encoded:
            with self._lock:
                if len(self._memo) >= self._max_entries:
                    self._memo.clear()
                self._memo[client_id] = (encoded, self._mac(secret))
        return matched

    def _mac(self, secret: str) -> bytes:
        return hmac.new(self._key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def public_jwks(jwks: dict[str, Any]) -> dict[str, Any]:
    """A client's JWK Set as we keep it: public RSA or EC signing keys only (RFC 7591 §2 ``jwks``), an RSA
    key of 2048 to 4096 bits with the exponent 65537 (identity.domain.rsa_keys: what checking the client's
    assertions costs is the key's to choose; review 129, finding 3). Read before the set is imported."""
    listed = jwks.get("keys") if isinstance(jwks, dict) else None
    if isinstance(listed, list) and any(isinstance(k, dict) and k.get("kty") == "RSA"
                                        and rsa_keys.rsa_key_refusal(k.get("n"), k.get("e")) for k in listed):
        raise RegistrationRefused("jwks_invalid", "RSA keys must be 2048 to 4096 bits, with the exponent 65537")
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
    # Every access token issued to the client up to this moment is refused (RevocationList.revoke_client's
    # cutoff: a deactivation, or a secret rotated with revoke_tokens, and CLIENT_MARGIN after it).
    tokens_refused_until: datetime | None = None
    # The registered jwks, imported once per lookup instead of once per client assertion.
    key_set: KeySet | None = field(default=None, compare=False, repr=False)

    @property
    def is_public(self) -> bool:
        return self.auth_method is AuthMethod.NONE

    def tokens_refused_for(self, now: datetime) -> int:
        """Whole seconds (at least one) until a token issued to this client is no longer refused by its
        cutoff (``tokens_refused_until``); 0 when a token issued at ``now`` would pass it. A token's ``iat``
        is whole seconds and the revocation list refuses ``iat <= cutoff``: a token issued in the second
        that holds the cutoff, even after it, is refused (review 137, finding 2), so the wait runs to the
        next whole second."""
        if self.tokens_refused_until is None:
            return 0
        cutoff, at = self.tokens_refused_until.timestamp(), now.timestamp()
        if math.floor(at) > cutoff:
            return 0
        return max(1, math.ceil(math.floor(cutoff) + 1 - at))

    @property
    def id_token_alg(self) -> str:
        """OIDC Registration §2 id_token_signed_response_alg; RS256 by default."""
        alg = (self.extra_metadata or {}).get("id_token_signed_response_alg")
        return alg if isinstance(alg, str) else "RS256"


# The name of the row of revoked_tokens that holds a client's cutoff, read with the client.
_CUTOFF_ROW = sa.literal(RevocationList.CLIENT_ROW, sa.String)

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
        self._epoch: tuple[bytes | None, ...] | None = None
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
        login_acrs: frozenset[str] = assurance.login_acrs(),
    ) -> tuple[str, str | None]:
        """Register a client; return its client_id and, for secret methods, the clear secret (once).

        Redirect URIs follow identity.domain.roles.check_redirect_uris; a confidential console always
        requires pushed authorization requests (RFC 9126 §6), whatever ``require_par`` says. ``min_acr``
        must be one of ``login_acrs``, the levels a login here reaches (identity.broker.config.login_acrs
        of the settings); passkeys only when not given, what a port without an upstream reaches.
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
        if min_acr is not None and min_acr not in login_acrs:
            # A minimum no login here reaches (face: a step-up no page offers; the national ID without an
            # upstream at level advanced) would only ever be answered unmet_authentication_requirements
            # (identity.oidc.authorize; review 161, finding 2; review 164, finding 1).
            raise RegistrationRefused("invalid_metadata",
                                      f"min_acr must be one a login here reaches: {' '.join(sorted(login_acrs))}")
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
            # With the dataset's epoch: Redis started again from an older snapshot (or a replica promoted)
            # may hold the clients' epoch at a value read here before, a change's bump lost; the pair
            # moves all the same, and this memory is cleared (as RevocationList's forget_on_new_dataset).
            epoch = tuple(self._cache.get_many([DATASET_EPOCH, EPOCH_KEY]))
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
                      organisations.c.active.label("org_active"),
                      revoked_tokens.c.revoked_at.label("tokens_refused_until"))
            .select_from(
                oauth_clients.outerjoin(organisations, organisations.c.id == oauth_clients.c.organisation_id)
                .outerjoin(revoked_tokens, revoked_tokens.c.jti == _CUTOFF_ROW + oauth_clients.c.client_id)
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
            tokens_refused_until=row.tokens_refused_until,
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

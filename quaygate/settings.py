"""Settings of the whole service, read from the environment with the QUAYGATE_ prefix.

Secrets are SecretStr. Outside dev/demo mode the service refuses to start on an insecure default
(STYLE.md #8); in dev mode the missing secrets are generated once into ``var/dev-secrets.json``, on
SQLite only: on any other database the secrets are shared by every replica and command, so they must
be given (review 132). What production requires is listed in ``production_refusals`` and README.md,
"What production requires". A refused value is never echoed: secrets among the inputs would be.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
import os
import secrets
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .crypto import DataCipher

# The cookie prefix of a host-only, Secure, Path=/ cookie (RFC 6265bis §4.1.3.2; ``Settings.cookie_name``).
HOST_PREFIX = "__Host-"
# How long a request's body may take to come (``Settings.body_seconds``), by default.
DEFAULT_BODY_SECONDS = 10.0
# How long a connection may take to send a whole request head (``Settings.header_seconds``), by default
# and at most.
DEFAULT_HEADER_SECONDS = 10.0
MAX_HEADER_SECONDS = 300.0


def seconds_setting(value: Any, name: str, most: float = math.inf) -> float:
    """A setting of seconds, checked: a number above 0, finite, at most ``most``; ValueError naming
    ``name`` otherwise."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or not 0 < seconds <= most:  # NaN compares false
        what = ("a positive number of seconds" if most == math.inf
                else f"a number of seconds above 0 and at most {most:g}")
        raise ValueError(f"{name} must be {what}, such as 10 or 2.5")
    return seconds


class Mode(StrEnum):
    DEV = "dev"
    DEMO = "demo"
    PRODUCTION = "production"


# Production's floor for the secrets (review 132, finding 9): the pepper keys the hash of national
# register numbers (and the tag of anonymous login flows, which can be tested offline against guesses),
# so it must be long and random; the data key must be 32 random bytes, not a placeholder of one byte
# repeated. 32 random bytes show about 30 different values; fewer than 16 is no random key.
MIN_PEPPER_CHARS = 32
MIN_DISTINCT_PEPPER_CHARS = 8
MIN_DISTINCT_KEY_BYTES = 16


class Settings(BaseSettings):
    # hide_input_in_errors: a refused setting's message would otherwise carry every input, the pepper and
    # the data key among them, to stderr and the logs (review 132, low).
    model_config = SettingsConfigDict(env_prefix="QUAYGATE_", extra="ignore", hide_input_in_errors=True)

    mode: Mode = Mode.DEV
    # Made absolute once, when the settings are read: a relative one would move with each command's
    # working directory (its dev secrets and SQLite file with it).
    var_dir: Path = Path("var")
    database_url: str = ""
    redis_url: str | None = None
    # "localhost", not 127.0.0.1: a WebAuthn RP id cannot be an IP address (passkeys in the demo).
    issuer: str = "http://localhost:8000"
    api_audience: str = "quaygate-api"
    gate_audience: str = "quaygate-gate"
    # 32 bytes, urlsafe base64: wraps private keys, webhook secrets and face templates at rest. In
    # production, 32 random bytes (at least MIN_DISTINCT_KEY_BYTES different values among them).
    data_key: SecretStr | None = None
    # Older data keys, comma-separated, each as QUAYGATE_DATA_KEY: they open what they sealed and seal
    # nothing (quaygate.crypto, the keyring). Kept until `quaygate keys rekey-data --check` finds nothing
    # under them, then replaced by their face capture digest keys (face_digest_keys_previous; README,
    # "Replacing the data key"). What a client or a browser holds sealed opens under the current key only
    # (DataCipher.open_current).
    data_keys_previous: SecretStr | None = None
    # The face capture digest keys of data keys since dropped, comma-separated, each 32 bytes in urlsafe
    # base64, as `quaygate keys face-digest-keys` prints them: HKDF outputs of the old keys, which open and
    # tag nothing, kept only so that a capture matched before the change is still a replay within the face
    # replay window (identity.face.service). Review 135, finding 1: the old data key itself can go at once.
    face_digest_keys_previous: SecretStr | None = None
    # HMAC key for national register numbers (never stored in clear), as text (its UTF-8 bytes are the
    # key). In production at least MIN_PEPPER_CHARS characters, such as secrets.token_urlsafe(32).
    pepper: SecretStr | None = None
    access_token_ttl: int = 600
    # Access tokens are only ever verified by our own resource servers, so they need not use the OIDC
    # default RS256: ES256 signs about 17x cheaper here (0.04 ms against 0.69 ms), which the
    # throughput target needs. Any algorithm the key store holds a key for (identity.keys).
    access_token_signing_alg: Literal["RS256", "PS256", "ES256"] = "ES256"  # noqa: S105 - an algorithm
    # ---- identity provider (issue 3) ----
    id_token_ttl: int = 600
    # A driver stays signed in on his phone for two weeks without opening the app (each refresh gives a
    # token for two weeks more), and for 30 days at most from his passkey login, however often he opens
    # it: then he signs in again (review 151, finding 3; Keycloak's SSO Session Max). A refresh-token
    # family ends refresh_max_seconds after its login (identity.grants, ``family_end``).
    refresh_token_ttl: int = 14 * 24 * 3600
    refresh_max_seconds: int = Field(default=30 * 24 * 3600, gt=0)
    authorization_code_ttl: int = 60  # RFC 6749 §4.1.2: short-lived, ten minutes at most
    par_ttl: int = 60  # RFC 9126 §2.2 expires_in
    session_ttl: int = 12 * 3600  # a login session at the provider (one shift)
    # The login session cookie (identity/sessions.py), as named on the wire: ``cookie_name`` of this, so
    # ``__Host-qg_session`` on an https issuer.
    session_cookie: str = "qg_session"
    # WebAuthn relying party: the id defaults to the issuer's host, the origin to the issuer's origin.
    webauthn_rp_id: str | None = None
    webauthn_rp_name: str = "quaygate"
    webauthn_origins: list[str] = []
    # The driver app's Android origin(s), "android:apk-key-hash:<base64url sha256 of the signing cert>".
    webauthn_android_origins: list[str] = []
    webauthn_challenge_ttl: int = 300
    dpop_max_age: int = 60  # seconds a DPoP proof's iat may be from now (RFC 9449 §11.1)
    # Rate limits and lockout (identity/ratelimit.py), counted in the cache (Redis: shared by replicas).
    rate_limit_enabled: bool = True
    rate_limit_window: int = 60
    rate_limit_per_address: int = 600  # POSTs to the OAuth endpoints per address and window
    # The same per IPv6 /48 (its /64s together, each also held to the per-address limit); never taken
    # below rate_limit_per_address. IPv4 has no such count (identity/ratelimit.py, "Networks").
    rate_limit_per_network: int = 6000
    rate_limit_per_client: int = 1200  # per client_id and window
    # Client-secret failures (wrong secrets, unknown clients) per address, and per IPv6 /48, and window:
    # past them nothing more is hashed (identity/ratelimit.py, "Client secrets").
    rate_limit_secret_failures_per_address: int = 10
    rate_limit_secret_failures_per_network: int = 100
    login_attempts_per_address: int = 60
    login_attempts_per_network: int = 600  # per IPv6 /48, as rate_limit_per_network
    login_failures_before_lockout: int = 5  # failures of one person within login_failure_window
    login_failure_window: int = 900
    lockout_seconds: int = 300  # doubled on each further lockout, up to lockout_max_seconds
    lockout_max_seconds: int = 3600
    # The reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are believed (``trusted_proxies``):
    # addresses and CIDR networks, comma-separated. Empty (the default): none, every request's address
    # is its peer's. The per-address limits and lockouts above count by that address; ``quaygate serve
    # --forwarded-allow-ips`` overrides it.
    forwarded_allow_ips: Annotated[tuple[str, ...], NoDecode] = ()
    db_pool_size: int = 10
    db_max_overflow: int = 20
    # Threads of the hot routes' pool (quaygate/threads.py): the token endpoint, passkey logins, the
    # gate's database way. Few on purpose, and no more than db_pool_size: under load (Locust, 32
    # users), refreshes on 40 threads cost about twice the CPU per request of 4 threads, and 8 threads
    # a quarter more than 4 (GIL hand-offs between threads that each run a little Python between
    # round trips; beyond db_pool_size, connections opened and closed per request).
    # loadtests/RESULTS.md, tenth session. That is with PostgreSQL and Redis on the same host: with a
    # database a millisecond or more away, requests wait longer between their bits of CPU, and more
    # threads are needed to keep a core busy (about round trips x round-trip time / CPU per request).
    worker_threads: int = Field(default=4, ge=1, le=200)
    audit_seal_interval: float = 1.0
    # A file outside the database (another volume, or one shipped away as it grows) where the audit sealer
    # appends every checkpoint it signs, one JSON line, fsync'd: it carries the sealer's last head across
    # restarts, and `quaygate audit verify --checkpoints FILE` holds the trail to it, so that a trail cut
    # back, or cut back and sealed again, by someone with write access to the database is found. Unset: none,
    # which production refuses; ``none`` says so on purpose (``audit_witness_declined``, logged at start).
    audit_witness: Path | None = None
    # Seconds an audit entry may stay unsealed before `quaygate audit verify` calls the trail not intact:
    # nothing vouches for an unsealed entry, so one held back from the sealer can be edited unseen. The
    # sealer takes an entry about a second after its writer commits; what holds it longer is a write
    # transaction open on the PostgreSQL server (bounded in production by idle_in_transaction_session_timeout
    # and statement_timeout) or a sealer that is down (a restart). Five minutes is well past both, so a
    # busy moment or a redeploy raises no alarm, and short enough that an entry held back to be edited is
    # found while it matters.
    audit_unsealed_max_age: float = Field(default=300.0, gt=0)
    # Seconds one audit search may run on PostgreSQL (statement_timeout, identity.api.audit_search): past
    # it the search answers 422 search_too_broad, and its pooled connection is free again.
    audit_search_timeout: float = Field(default=5.0, gt=0, le=60)
    webhook_interval: float = 1.0
    # Seconds one webhook send may take in all (name lookup, connect, request, status line and headers):
    # past it the connection is closed and the attempt failed, so a receiver answering a byte at a time
    # holds one send briefly, not the dispatcher (release_service/adapters/webhook_dispatcher.py).
    webhook_send_timeout: float = Field(default=10.0, gt=0, le=60)
    # Webhook sends in flight at once in each replica, and of those at most webhook_sends_per_organisation
    # for one organisation: one company's slow endpoints hold that many, the others' deliveries go on
    # (release_service/adapters/webhook_dispatcher.py, the pipeline).
    webhook_workers: int = Field(default=32, ge=1, le=100)
    webhook_sends_per_organisation: int = Field(default=4, ge=1, le=100)
    # Days a finished delivery row (its payload names drivers and plates) is kept, from its last attempt:
    # delivered or cancelled ones, then dead or withheld ones (dead letters the organisation may still
    # send again: longer). Pruned by a background worker (release_service/adapters/outbox.py).
    webhook_delivered_retention_days: int = Field(default=30, ge=1, le=3650)
    webhook_dead_retention_days: int = Field(default=90, ge=1, le=3650)
    # Seconds an Idempotency-Key and its stored answer (a batch of rights, a nomination's driver and plate)
    # are kept from the first request: within it the same key replays that answer, past it the key is free
    # and the row is swept (release_service/adapters/sqla/idempotency.py; review 159). As Stripe's 24 hours
    # and draft-ietf-httpapi-idempotency-key-header §2's expiry: an hour at least, for a client's retries of
    # one request; 30 days at most, for the personal data the answers hold.
    idempotency_retention_seconds: int = Field(default=24 * 3600, ge=3600, le=30 * 24 * 3600)
    background_workers: bool = True
    # Issue 5, the gate's hot path (with redis_url): facts cached in Redis, check decisions kept there
    # and moved into PostgreSQL by a drainer in every server process.
    gate_facts_ttl: int = 600  # seconds a cached fact lives at most (exactness comes from invalidation)
    gate_request_ttl: int = 900  # seconds a check's request_id is answered from Redis
    gate_decision_drain: bool = True
    # A gate commit (no face image) decided on the event loop, on connections of its own (quaygate/
    # loopdb.py; PostgreSQL with Redis only): no worker thread waits for its round trips. At most
    # gate_loop_connections per server process, made when first needed.
    gate_commit_on_loop: bool = True
    gate_loop_connections: int = Field(default=4, ge=1, le=100)
    # A server's start-up objects (modules, compiled statements, keys, models) are left out of Python's
    # full garbage collections once it is up (gc.freeze): a full collection of them held the event loop
    # for 124 ms (measured: 0 once frozen). Only in a server that built its own container (not in tests).
    gc_freeze: bool = True
    log_level: str = "INFO"
    # The largest request body any route takes unless it says otherwise (413 body_too_large past it):
    # without a limit, a client, signed in or not, could make the server hold a body of any size. The
    # routes that carry more say so themselves (``quaygate/limits.py``): a face image, a batch of
    # rights, a ban feed.
    max_body_bytes: int = 1024 * 1024
    # Seconds a route reading its body itself (quaygate/routing.py AdmitFirst, the gate verify's own
    # handler) waits for the whole of it, from its first read; past it, 408 body_timeout and nothing done:
    # a client sending its headers, then its body a byte at a time, would hold a connection and a worker's
    # memory for as long as it liked. A route taking more than max_body_bytes (a face image, a batch of
    # rights: quaygate/limits.py) waits three times as long, the same slow link taking longer to carry it;
    # a route with a deadline of its own (``read_within``: the ban feed's 120 s) keeps it.
    body_seconds: float = DEFAULT_BODY_SECONDS
    # Seconds a connection has to send a whole request head, from when it opens and from the end of each
    # response; past it, ``quaygate serve`` closes it (quaygate/serving.py, review 168, finding 1):
    # uvicorn has no such deadline, so a connection sending nothing, or a head a byte at a time, was held
    # for ever. Above 0, at most MAX_HEADER_SECONDS.
    header_seconds: float = DEFAULT_HEADER_SECONDS
    # ---- port-ban register (issue 4, identity/bans/, docs/port-ban-feed.md) ----
    # The register's public key (a JWK, JSON text) or a file holding it; feeds signed by anything else
    # are refused. ES256 or EdDSA only.
    ban_register_jwk: str | None = None
    ban_register_jwk_path: Path | None = None
    # Production screens every driver against the register, so it needs the register's key: without it
    # no list is ever loaded, and every driver would screen clear. ``off`` runs without ban screening on
    # purpose (every driver clear; logged as a warning at start), and cannot go with a key. Dev and demo
    # without a key screen no one, as ``off`` (review 132, finding 3).
    ban_screening: Literal["on", "off"] = "on"
    # ---- /metrics (review 137, finding 3) ----
    # Set: /metrics needs ``Authorization: Bearer <token>`` (Prometheus' ``authorization`` setting). Unset:
    # open in dev and demo; in production served to loopback addresses only (a scraper on the host), 404
    # to anyone else: its figures (request counts, safeguards off) are an attacker's reconnaissance.
    metrics_token: SecretStr | None = None
    ban_feed_url: str | None = None  # periodic pull, off unless set
    ban_feed_interval: float = 300.0
    ban_feed_max_age: int = 24 * 3600  # a feed issued longer ago than this is refused as stale
    ban_list_max_age: int = 24 * 3600  # screening says "unavailable" once the list in force is older
    # ---- offline gate mode (issue 5, docs/gate-offline.md) ----
    # How long a gate pass lives. Short: a pass cannot know of a block, a hold or a ban after it was
    # issued. Capped at the access/id token lifetime (a retired signing key stays published that long).
    gate_pass_ttl: int = Field(default=600, ge=60, le=3600)
    # How long after its gate-in a right still gets a pass (for its gate-out). A gated-in right never lapses,
    # so one whose gate-out was never recorded would get a pass at every fetch for good. A truck collecting
    # an import container is inside for an hour or two, a long shift at worst (congestion, a scan, a yard
    # fault): 12 hours. Past it the truck is offline a doubt (no pass: review), online as ever.
    gate_pass_max_dwell: int = Field(default=12 * 3600, ge=3600, le=24 * 3600)
    # Badge hashes at once, per server process, for the reconcile of offline decisions (scrypt, some 65 to 130
    # ms of a core each; release_service/adapters/badge_hashing.py, review 143): a report finding none free
    # within half a second is answered 503 with Retry-After, nothing recorded, and its adapter sends it again.
    # One leaves the other cores to the gate verify however fast gate clients post reports.
    gate_offline_hash_slots: int = Field(default=1, ge=1, le=16)
    # ---- face verification (issue 6, identity/face/, docs/face.md) ----
    # Worker processes matching faces (CPU heavy, about 0.1 s of one core per capture); 0: one per core
    # this process may use. Jobs beyond face_workers * face_queue_per_worker are refused (face_busy).
    face_workers: int = 0
    face_queue_per_worker: int = 4
    face_warm_up: bool = True  # load the models in every worker at start-up (with background_workers)
    face_max_side: int = 640  # captures are downscaled to this many pixels on their longer side
    face_max_image_bytes: int = 4 * 1024 * 1024
    face_max_image_pixels: int = 40_000_000  # refuse decompression bombs before decoding (a baseline JPEG's)
    # A PNG (or a progressive JPEG) is decoded whole before it is downscaled (a baseline JPEG is decoded
    # reduced): a lower limit, checked on its header before a worker sees it (identity/face/header.py).
    face_max_png_pixels: int = Field(default=4_000_000, ge=1)
    # Face jobs one terminal's gate captures may have in the pool at once; 0: half of the pool's
    # (face_workers * face_queue_per_worker), so one terminal cannot leave the others face_busy.
    face_jobs_per_terminal: int = Field(default=0, ge=0)
    # Unusable captures (no face, blurred, unreadable ...) one person's step-ups may send per window:
    # they lock nobody out but each costs a worker's time; past it, 429 rate_limited.
    face_step_up_bad_captures: int = Field(default=10, ge=1)
    face_step_up_bad_capture_window: int = Field(default=900, ge=1)  # seconds
    face_step_ups: int = Field(default=5, ge=1)  # a person's step-up matches per window (review 154)
    face_step_up_window: int = Field(default=900, ge=1)  # seconds
    face_min_face_px: int = 80  # dlib's detection window; smaller faces are refused as too small
    face_min_sharpness: float = 150.0  # Laplacian variance of the face at 64x64 (identity.domain.face)
    face_tolerance: float = 0.5  # default distance threshold; a terminal may tighten it (0.3 to 0.6)
    # Days a matched capture's keyed digest refuses the same bytes again (face_replayed): a copy of a
    # capture is useful to whoever holds it for as long as the face looks like it, so long; at least a
    # day, far past any retry of one request (identity.face.service, docs/face.md "Replayed captures").
    face_replay_days: int = Field(default=365, ge=1, le=3650)
    # Days a person may have no badge in use and no membership in force before his face template is
    # withdrawn, audited, by a background loop (identity/face/retention.py, docs/face.md "Retention").
    face_retention_days_after_leaving: int = Field(default=30, ge=1, le=3650)
    # ---- upstream OpenID providers, brokered login (issue 6, identity/broker/, docs/itsme.md) ----
    # JSON object, one entry per provider and environment, e.g. {"itsme": {"discovery_url":
    # "https://idp.e2e.itsme.services/v2/.well-known/openid-configuration", "client_id": "...",
    # "level": "advanced", "request_object": "signed_encrypted", "scope": "openid service:QUAYGATE profile"}}
    upstreams: dict[str, dict[str, Any]] = {}
    upstream_flow_ttl: int = 600  # seconds a started brokered login may take to come back
    upstream_metadata_ttl: int = 3600  # discovery document and upstream JWKS cached this long
    upstream_http_timeout: float = 10.0
    broker_jwks_max_age: int = 3600  # Cache-Control max-age of our /broker/jwks (the upstreams' cache)
    # A rotated-out encryption key stays published and usable this long (>= broker_jwks_max_age).
    broker_enc_key_overlap: int = 24 * 3600
    _witness_declined: bool = PrivateAttr(default=False)

    @field_validator("body_seconds", mode="before")
    @classmethod
    def _body_seconds(cls, value: Any) -> float:
        return seconds_setting(value, "QUAYGATE_BODY_SECONDS")

    @field_validator("header_seconds", mode="before")
    @classmethod
    def _head_seconds(cls, value: Any) -> float:
        # At most MAX_HEADER_SECONDS: a deadline of hours would be none.
        return seconds_setting(value, "QUAYGATE_HEADER_SECONDS", MAX_HEADER_SECONDS)

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _trusted_proxies(cls, value: Any) -> tuple[str, ...]:
        try:
            return trusted_proxies(value)
        except ValueError as exc:
            raise ValueError(f"QUAYGATE_FORWARDED_ALLOW_IPS: {exc}") from None

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        self.session_cookie = self.cookie_name(self.session_cookie)
        self.var_dir = self.var_dir.expanduser().absolute()
        if self.audit_witness is not None and str(self.audit_witness) == "none":
            self.audit_witness, self._witness_declined = None, True
        if not self.database_url:
            self.database_url = f"sqlite:///{self.var_dir / 'quaygate.db'}"
        if self.ban_screening == "off" and self.ban_register_configured:
            raise ValueError("QUAYGATE_BAN_SCREENING=off, yet the port-ban register's key is set "
                             "(QUAYGATE_BAN_REGISTER_JWK or ..._JWK_PATH): unset one of them")
        if self.mode is Mode.PRODUCTION:
            refusals = self.production_refusals()
            if refusals:
                raise ValueError("production mode needs " + "; ".join(refusals))
        else:
            missing = [n for n in ("data_key", "pepper") if getattr(self, n) is None]
            if missing and not self.is_sqlite:
                # Review 132, finding 2: dev secrets live in one directory's var/, so replicas and commands
                # sharing a PostgreSQL database would each make their own data key and pepper (a banned
                # driver's national number hashed otherwise screens clear). A forgotten QUAYGATE_MODE
                # must not come to that.
                raise ValueError(
                    f"QUAYGATE_MODE is {self.mode.value} and the database is not SQLite, so the secrets "
                    f"cannot be made per directory: set QUAYGATE_MODE=production with its secrets, or set "
                    f"QUAYGATE_{'/QUAYGATE_'.join(m.upper() for m in missing)} (the same for every replica)")
            dev = _dev_secrets(self.var_dir) if missing else {}
            if self.data_key is None:
                self.data_key = SecretStr(dev["data_key"])
            if self.pepper is None:
                self.pepper = SecretStr(dev["pepper"])
        self._check_previous_data_keys()
        self._check_face_digest_keys()
        return self

    def _check_previous_data_keys(self) -> None:
        """Every mode: each previous data key is 32 bytes and none repeats the current key or another
        (a repeated key would be counted as replaced while it still seals); production's strength floor is
        in ``production_refusals``, as for the data key. The keys are named by position, never shown."""
        entries = self._previous_entries()
        current = self.data_key.get_secret_value() if self.data_key is not None else None
        seen: set[bytes] = {_key_bytes(current)} if current is not None else set()
        for n, entry in enumerate(entries, 1):
            raw = _key_bytes(entry)
            if len(raw) != 32:
                raise ValueError(f"QUAYGATE_DATA_KEYS_PREVIOUS: key {n} is not 32 bytes in urlsafe base64")
            if raw in seen:
                raise ValueError(f"QUAYGATE_DATA_KEYS_PREVIOUS: key {n} repeats QUAYGATE_DATA_KEY or an earlier "
                                 "previous key")
            seen.add(raw)

    def _check_face_digest_keys(self) -> None:
        for n, entry in enumerate(_entries(self.face_digest_keys_previous), 1):
            if len(_key_bytes(entry)) != 32:
                raise ValueError(f"QUAYGATE_FACE_DIGEST_KEYS_PREVIOUS: key {n} is not 32 bytes in urlsafe base64 "
                                 "(as `quaygate keys face-digest-keys` prints it)")

    def previous_face_digest_keys_bytes(self) -> tuple[bytes, ...]:
        """QUAYGATE_FACE_DIGEST_KEYS_PREVIOUS as keys (checked when the settings were read)."""
        return tuple(_key_bytes(e) for e in _entries(self.face_digest_keys_previous))

    def _previous_entries(self) -> list[str]:
        return _entries(self.data_keys_previous)

    def production_refusals(self) -> list[str]:
        """What production mode needs and these settings lack, each as a phrase naming the setting and
        never its value (README.md, "What production requires")."""
        refusals = [f"QUAYGATE_{n.upper()}" for n in ("data_key", "pepper") if getattr(self, n) is None]
        if self.data_key is not None:
            refusals += _data_key_refusal(self.data_key.get_secret_value())
        for n, entry in enumerate(self._previous_entries(), 1):
            refusals += [f"{r} as previous key {n} (QUAYGATE_DATA_KEYS_PREVIOUS)" for r in _data_key_refusal(entry)]
        if self.pepper is not None and _weak_pepper(self.pepper.get_secret_value()):
            refusals.append(f"a QUAYGATE_PEPPER of at least {MIN_PEPPER_CHARS} random characters "
                            "(such as secrets.token_urlsafe(32))")
        if self.is_sqlite:
            refusals.append("PostgreSQL (QUAYGATE_DATABASE_URL)")
        if not self.issuer.startswith("https://"):
            refusals.append("an https issuer (QUAYGATE_ISSUER)")
        if any(not str(u.get("discovery_url", "")).startswith("https://") for u in self.upstreams.values()):
            refusals.append("https discovery URLs (QUAYGATE_UPSTREAMS)")
        if self.ban_feed_url and not self.ban_feed_url.startswith("https://"):
            # Review 147, finding 3: on the network path a plain feed can be held back or dripped (the
            # signature stops forged bans, not a withheld list); dev and demo may pull a local register.
            refusals.append("an https port-ban feed URL (QUAYGATE_BAN_FEED_URL)")
        if not self.ban_register_configured and self.ban_screening != "off":
            # Review 132, finding 3: without the key no list is loaded and every driver screens clear.
            refusals.append("the port-ban register's key (QUAYGATE_BAN_REGISTER_JWK or QUAYGATE_BAN_REGISTER_JWK"
                            "_PATH), or QUAYGATE_BAN_SCREENING=off to run without ban screening")
        if self.audit_witness is None and not self._witness_declined:
            # Review 132, finding 10: without a witness a trail cut back and sealed again is not found.
            refusals.append("an audit witness file (QUAYGATE_AUDIT_WITNESS), or QUAYGATE_AUDIT_WITNESS=none "
                            "to run without one")
        return refusals

    @property
    def ban_register_configured(self) -> bool:
        """The port-ban register's key is set: screening requires a list in force (no list: unavailable)."""
        return bool(self.ban_register_jwk) or self.ban_register_jwk_path is not None

    @property
    def safeguards_off(self) -> tuple[str, ...]:
        """The safeguards this process runs without, each on purpose or by its mode: ``ban_screening``
        (QUAYGATE_BAN_SCREENING=off, or dev and demo without the register's key: every driver screens
        clear), ``audit_witness`` (no witness file: a trail cut back and sealed again goes unseen) and
        ``production_mode`` (dev or demo: dev secrets, demo data). On /metrics as
        ``quaygate_safeguard_off`` so monitoring sees what a start log line alone would not."""
        off = []
        if self.ban_screening == "off" or not self.ban_register_configured:
            off.append("ban_screening")
        if self.audit_witness is None:
            off.append("audit_witness")
        if self.mode is not Mode.PRODUCTION:
            off.append("production_mode")
        return tuple(off)

    @property
    def audit_witness_declined(self) -> bool:
        """QUAYGATE_AUDIT_WITNESS=none: no witness, on purpose (production would refuse it unset)."""
        return self._witness_declined

    def data_key_bytes(self) -> bytes:
        assert self.data_key is not None
        raw = base64.urlsafe_b64decode(self.data_key.get_secret_value() + "==")
        if len(raw) != 32:
            raise ValueError("QUAYGATE_DATA_KEY must be 32 bytes in urlsafe base64")
        return raw

    def previous_data_keys_bytes(self) -> tuple[bytes, ...]:
        """QUAYGATE_DATA_KEYS_PREVIOUS as keys, in the order given (checked when the settings were read)."""
        return tuple(_key_bytes(e) for e in self._previous_entries())

    def data_cipher(self) -> DataCipher:
        """The keyring: the current data key seals, the previous ones still open (quaygate.crypto)."""
        return DataCipher(self.data_key_bytes(), self.previous_data_keys_bytes())

    def pepper_bytes(self) -> bytes:
        assert self.pepper is not None
        return self.pepper.get_secret_value().encode()

    @property
    def secure_cookies(self) -> bool:
        """The issuer is https: our cookies are ``Secure`` and named with the ``__Host-`` prefix."""
        return self.issuer.startswith("https://")

    def cookie_name(self, name: str) -> str:
        """What the cookie ``name`` is called on the wire, decided here for every cookie of ours.

        On an https issuer, ``__Host-<name>`` (RFC 6265bis §4.1.3.2): a browser keeps such a cookie only
        when it is Secure, has ``Path=/`` and no ``Domain``, so a sibling subdomain cannot plant one (it
        could plant a plain ``qg_session`` for the parent domain, which Starlette's parser, taking the
        last of two cookies of one name, would prefer: a login CSRF). Only the prefixed name is read, so
        a plain one sent beside it counts for nothing. On http (local development, tests) the plain name:
        a browser refuses the prefix on a cookie that cannot be Secure."""
        bare = name.removeprefix(HOST_PREFIX)
        return HOST_PREFIX + bare if self.secure_cookies else bare

    @property
    def local_webhooks(self) -> bool:
        """Whether a webhook may go to http://localhost (a developer's receiver): in ``dev`` mode only. A
        demo is often served from a shared host, whose own services listen there (review 110)."""
        return self.mode is Mode.DEV

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def trusted_proxies(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """The proxies to believe X-Forwarded-For / X-Forwarded-Proto from, from a comma-separated list of
    IP addresses and CIDR networks (``10.0.0.5, 10.1.0.0/16, fd00::/8``); ValueError on a bad entry.

    Each entry is checked here because uvicorn checks none: an entry it cannot read (a typo, a host
    name, ``10.0.0.1/8``) it keeps as a literal that no peer ever equals, and the proxy is silently not
    trusted. So: an address, or a network without host bits; host names are not resolved (name the
    address the proxy connects from). Empty entries are skipped; an empty list trusts no one.

    ``*`` (uvicorn: trust every peer) is refused, and so is a network of every address (``0.0.0.0/0``,
    ``::/0``), the same thing spelled otherwise. Trusting every peer, uvicorn takes X-Forwarded-For's
    first entry, the one the client writes itself, even behind a proxy that appends the real address:
    every client picks the address the per-address rate limits and lockouts count it under (identity/
    ratelimit.py), and spreads its attempts over as many addresses as it likes. Where the proxies'
    addresses change (a container network), name that network: requests still come only through it.
    A network that clients sit in, next to the proxies, must not be named either, for the same reason.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        entries: list[Any] = value.split(",")
    elif isinstance(value, list | tuple | set | frozenset):
        entries = list(value)
    else:
        raise ValueError("a comma-separated list of IP addresses and CIDR networks, such as 10.0.0.5,10.1.0.0/16")
    proxies: list[str] = []
    for raw in entries:
        entry = str(raw).strip()
        if not entry:
            continue
        if entry == "*":
            raise ValueError("'*' would trust every peer, and every client could pick its own address in "
                             "X-Forwarded-For; name the proxies' addresses or network (such as 10.0.0.0/8)")
        try:
            network = ipaddress.ip_network(entry)  # strict: no host bits set
        except ValueError:
            try:
                loose = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is neither an IP address nor a CIDR network such as 10.0.0.0/8 "
                                 "(host names are not resolved)") from None
            raise ValueError(f"{entry!r} has host bits set: the network is {loose}") from None
        if network.prefixlen == 0:
            raise ValueError(f"{entry!r} would trust every peer, and every client could pick its own address "
                             "in X-Forwarded-For; name the proxies' addresses or network")
        _narrow_enough(entry, network)
        proxies.append(str(network.network_address) if network.num_addresses == 1 else str(network))
    return tuple(dict.fromkeys(proxies))


# The widest network of proxies believed: an IPv4 /8 (10.0.0.0/8, a private range whole); an IPv6 /32,
# or /8 inside the unique local addresses (fd00::/8 whole). Wider is no network of proxies but a slice
# of the Internet, trusted in pieces (0.0.0.0/1 and 128.0.0.0/1 are every peer, as '*'). An IPv6 entry
# reaching into the IPv4-mapped range (::ffff:0:0/96, how IPv4 peers show on a dual-stack socket) is held
# to the IPv4 bound there: ::ffff:0:0/96 itself is every IPv4 peer.
WIDEST_PROXY_PREFIX = {4: 8, 6: 32}
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")


def _narrow_enough(entry: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    widest = WIDEST_PROXY_PREFIX[network.version]
    if isinstance(network, ipaddress.IPv6Network):
        if network.overlaps(_MAPPED):
            widest = 96 + WIDEST_PROXY_PREFIX[4]
        elif network.subnet_of(_UNIQUE_LOCAL):
            widest = 8
    if network.prefixlen < widest:
        raise ValueError(f"{entry!r} is wider than a network of proxies (at most /{widest} here): every client "
                         "in it could pick its own address in X-Forwarded-For; name the proxies' own addresses "
                         "or their network")


def _entries(value: SecretStr | None) -> list[str]:
    return [] if value is None else [e.strip() for e in value.get_secret_value().split(",") if e.strip()]


def _key_bytes(value: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(value + "==")
    except ValueError:
        return b""


def _data_key_refusal(value: str) -> list[str]:
    raw = _key_bytes(value)
    if len(raw) != 32:
        return ["a QUAYGATE_DATA_KEY of 32 bytes in urlsafe base64"]
    if len(set(raw)) < MIN_DISTINCT_KEY_BYTES:
        return ["a random QUAYGATE_DATA_KEY (this one repeats a few byte values)"]
    return []


def _weak_pepper(value: str) -> bool:
    return len(value) < MIN_PEPPER_CHARS or len(set(value)) < MIN_DISTINCT_PEPPER_CHARS


def _dev_secrets(var_dir: Path) -> dict[str, str]:
    path = var_dir / "dev-secrets.json"
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text())
        return data
    var_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "data_key": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="),
        "pepper": secrets.token_urlsafe(32),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    return data

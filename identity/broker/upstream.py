"""Talking to an upstream provider: discovery, its JWKS, the token and userinfo calls (httpx, sync).

Discovery documents and JWKS are cached per process for ``metadata_ttl`` seconds. A kid the cached
JWKS does not hold makes one refetch, at most once every ``REFETCH_EVERY`` seconds per upstream, so a
forged kid cannot make us hammer the upstream (OIDC Core §10.1.1: signing key rotation).

Whatever the upstream answers is an upstream failure, never a 500 (review 157, finding 3): an endpoint
of its discovery document that httpx cannot call (``httpx.InvalidURL``, or a host label IDNA refuses,
a UnicodeError: neither is an ``httpx.HTTPError``), a body over 256 KB (the token answer too), JSON
nested deeper than the parser recurses.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from ..domain.broker import BrokerRefused, Refusal
from .config import Upstream

log = logging.getLogger(__name__)
REFETCH_EVERY = 30.0
_MAX_BODY = 256 * 1024
# What a call to an upstream endpoint raises when it fails: the endpoints come from its discovery document.
_UNREACHABLE = (httpx.HTTPError, httpx.InvalidURL, UnicodeError)


@dataclass
class _Cached:
    metadata: dict[str, Any]
    keys: dict[str, RSAKey | ECKey]
    loaded_at: float
    keys_at: float
    refetched_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class UpstreamClient:
    def __init__(self, http: httpx.Client, *, metadata_ttl: float) -> None:
        self._http = http
        self._ttl = metadata_ttl
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    # ---- metadata and keys ----------------------------------------------------------------------

    def metadata(self, upstream: Upstream) -> dict[str, Any]:
        return self._entry(upstream).metadata

    def signing_key(self, upstream: Upstream, kid: str | None) -> RSAKey | ECKey | None:
        """The upstream's public signing key for ``kid`` (None: unknown after at most one refetch)."""
        entry = self._entry(upstream)
        key = self._pick(entry.keys, kid, "sig")
        if key is None and time.monotonic() - entry.refetched_at > REFETCH_EVERY:
            with entry.lock:
                entry.refetched_at = time.monotonic()
                entry.keys = self._jwks(entry.metadata)
                entry.keys_at = time.monotonic()
            key = self._pick(entry.keys, kid, "sig")
        return key

    def encryption_key(self, upstream: Upstream) -> RSAKey | None:
        """The upstream's RSA ``enc`` key for request objects, if it publishes one."""
        for key in self._entry(upstream).keys.values():
            if isinstance(key, RSAKey) and key.get("use") == "enc":
                return key
        return None

    def _pick(self, keys: dict[str, RSAKey | ECKey], kid: str | None, use: str) -> RSAKey | ECKey | None:
        if kid is None:  # RFC 7515 §4.1.4 allows it; only when there is exactly one signing key
            candidates = [k for k in keys.values() if k.get("use", "sig") == use]
            return candidates[0] if len(candidates) == 1 else None
        key = keys.get(kid)
        return key if key is not None and key.get("use", "sig") == use else None

    def _entry(self, upstream: Upstream) -> _Cached:
        with self._lock:
            entry = self._cache.get(upstream.name)
        if entry is not None and time.monotonic() - entry.loaded_at < self._ttl:
            return entry
        metadata = self._get_json(upstream.discovery_url)
        if metadata.get("issuer") != upstream.issuer:  # OIDC Discovery §4.3
            raise BrokerRefused(Refusal.ISSUER_MISMATCH, "discovery issuer")
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint"):
            if not isinstance(metadata.get(name), str):
                raise BrokerRefused(Refusal.PROVIDER_UNAVAILABLE, f"discovery lacks {name}")
        now = time.monotonic()
        entry = _Cached(metadata, self._jwks(metadata), now, now)
        with self._lock:
            self._cache[upstream.name] = entry
        return entry

    def _jwks(self, metadata: dict[str, Any]) -> dict[str, RSAKey | ECKey]:
        body = self._get_json(metadata["jwks_uri"])
        try:
            keys = KeySet.import_key_set(body).keys  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError):
            raise BrokerRefused(Refusal.PROVIDER_UNAVAILABLE, "jwks unreadable") from None
        return {str(k.kid): k for k in keys if isinstance(k, RSAKey | ECKey) and k.kid}  # type: ignore[misc]

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = self._http.get(url, headers={"Accept": "application/json"})
        except _UNREACHABLE as exc:
            log.warning("identity.broker.upstream.unreachable")
            raise BrokerRefused(Refusal.PROVIDER_UNAVAILABLE, type(exc).__name__) from None
        if response.status_code != 200 or len(response.content) > _MAX_BODY:
            raise BrokerRefused(Refusal.PROVIDER_UNAVAILABLE, f"{url} answered {response.status_code}")
        try:
            body = response.json()
        except (ValueError, RecursionError):
            raise BrokerRefused(Refusal.PROVIDER_UNAVAILABLE, "not JSON") from None
        if not isinstance(body, dict):
            raise BrokerRefused(Refusal.PROVIDER_UNAVAILABLE, "not a JSON object")
        return body

    # ---- token and userinfo ---------------------------------------------------------------------

    def exchange(self, upstream: Upstream, form: dict[str, str]) -> dict[str, Any]:
        """RFC 6749 §4.1.3 at the token endpoint; the upstream's refusal (expired or used code,
        bad client assertion) is ``upstream_token_refused`` with its error code in the detail."""
        try:
            response = self._http.post(self.metadata(upstream)["token_endpoint"], data=form,
                                       headers={"Accept": "application/json"})
        except _UNREACHABLE as exc:
            raise BrokerRefused(Refusal.PROVIDER_UNAVAILABLE, type(exc).__name__) from None
        if len(response.content) > _MAX_BODY:  # as discovery, JWKS and userinfo
            raise BrokerRefused(Refusal.PROVIDER_UNAVAILABLE, "token endpoint answer too large")
        try:
            body = response.json()
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            raise BrokerRefused(Refusal.PROVIDER_UNAVAILABLE, f"token endpoint answered {response.status_code}")
        if response.status_code != 200:
            raise BrokerRefused(Refusal.TOKEN_REFUSED, str(body.get("error", response.status_code))[:100])
        if not isinstance(body.get("id_token"), str) or not isinstance(body.get("access_token"), str):
            raise BrokerRefused(Refusal.TOKEN_REFUSED, "no id_token or access_token")
        return body

    def userinfo(self, upstream: Upstream, access_token: str) -> str:
        """OIDC Core §5.3: the userinfo response, which itsme sends as a JWT (signed, encrypted)."""
        try:
            response = self._http.get(self.metadata(upstream)["userinfo_endpoint"],
                                      headers={"Authorization": f"Bearer {access_token}",
                                               "Accept": "application/jwt"})
        except _UNREACHABLE as exc:
            raise BrokerRefused(Refusal.PROVIDER_UNAVAILABLE, type(exc).__name__) from None
        if response.status_code != 200 or len(response.content) > _MAX_BODY:
            raise BrokerRefused(Refusal.PROVIDER_UNAVAILABLE, f"userinfo answered {response.status_code}")
        if not response.headers.get("content-type", "").startswith("application/jwt"):
            raise BrokerRefused(Refusal.NOT_ENCRYPTED, "userinfo is not a JWT")
        return response.text.strip()

"""Pushed authorization requests (RFC 9126): the client posts its authorization request to us first,
authenticated, and gets a ``request_uri`` to send the browser with instead of the parameters.

    POST /oauth2/par (client authenticated like at the token endpoint, RFC 9126 §2.1)
      -> validated like /authorize (authorize.check_client_and_redirect + authorize.validate)
      -> stored in the cache under a random request_uri for par_ttl seconds -> 201 {request_uri, expires_in}
    GET /oauth2/authorize?client_id&request_uri
      -> read, same client_id, then taken once (GETDEL), not expired -> the stored request (RFC 9126 §4)

The stored value is the validated request; its ``created_at`` is the push time, so prompt=login asks
for a login after the push. It is stored with ``Cache.put`` and taken with ``Cache.take``: a Redis
started again from an older snapshot brings back a request taken since, and it is refused as a used
one (quaygate/dataset.py).
"""

from __future__ import annotations

import secrets

from quaygate.cache import Cache

from .authorize import REQUEST_URI_PREFIX, AuthorizationRequest


class PushedRequests:
    PREFIX = "identity:par:"

    def __init__(self, cache: Cache, *, ttl: int) -> None:
        self._cache = cache
        self.ttl = ttl

    def push(self, req: AuthorizationRequest) -> str:
        """Store a validated request; return its request_uri (RFC 9126 §2.2)."""
        ref = secrets.token_urlsafe(32)
        self._cache.put(self.PREFIX + ref, req.dumps(), self.ttl)
        return REQUEST_URI_PREFIX + ref

    def take(self, request_uri: str | None, client_id: str | None) -> AuthorizationRequest | None:
        """The pushed request, once: None when unknown, expired, used before, or pushed by another
        client (RFC 9126 §4: the client_id must be the one that pushed it)."""
        if not request_uri or not request_uri.startswith(REQUEST_URI_PREFIX) or len(request_uri) > 200:
            return None
        ref = request_uri[len(REQUEST_URI_PREFIX) :]
        raw = self._cache.peek(self.PREFIX + ref)
        if raw is None:
            return None
        if AuthorizationRequest.loads(raw).client_id != client_id:
            return None  # not consumed: the rightful client can still use it
        # RFC 9126 §4 / §7.3: one-time use, taken atomically (of two takers, one gets it).
        raw = self._cache.take(self.PREFIX + ref)
        return AuthorizationRequest.loads(raw) if raw is not None else None

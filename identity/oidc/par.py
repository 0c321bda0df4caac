"""Pushed authorization requests (RFC 9126): the client posts its authorization request to us first,
authenticated, and gets a ``request_uri`` to send the browser with instead of the parameters.

    POST /oauth2/par (client authenticated like at the token endpoint, RFC 9126 §2.1)
      -> validated like /authorize (authorize.check_client_and_redirect + authorize.validate)
      -> stored in the cache under a random request_uri for par_ttl seconds -> 201 {request_uri, expires_in}
         (a public client's: sealed into the request_uri, stored nowhere; below)
    GET /oauth2/authorize?client_id&request_uri
      -> read, same client_id, then taken once (GETDEL), not expired -> the stored request (RFC 9126 §4)
         (a public client's: opened for that client_id, not expired)

The stored value is the validated request; its ``created_at`` is the push time, so prompt=login asks
for a login after the push. It is stored with ``Cache.put`` and taken with ``Cache.take``: a Redis
started again from an older snapshot brings back a request taken since, and it is refused as a used
one (quaygate/dataset.py).

A public client's push (``token_endpoint_auth_method`` none, the driver app's kind) proves nothing: anyone
may name the client, so a request stored per push was a way for an anonymous caller to fill Redis (review
67, finding 4; Redis runs under noeviction). Its request is not stored: the request_uri carries it, sealed
(AES-GCM under the data key, bound to the client_id; RFC 9126 §2.2 leaves the request_uri's form to the
server), and it expires ``par_ttl`` after the push. It opens under the current data key only
(``DataCipher.open_current``, review 135 finding 1): with a previous key, which may have leaked, anyone could
make one; those pushed just before the key changed fail, and the app pushes again. It is not held to one
use (RFC 9126 §4: SHOULD, and MAY allow a reload): its single use would be a write anyone could cause, and
it protects nothing a public client has: the code it leads to is used once and bound to the client's PKCE
verifier, and a resume that waits for a login is finished once (authorize.PendingRequests). A sealed
request_uri longer than an authorization request's parameter may be (MAX_PARAM) is refused at the push.
"""

from __future__ import annotations

import secrets
import time
import zlib

from cryptography.exceptions import InvalidTag

from quaygate.cache import Cache
from quaygate.crypto import DataCipher

from .authorize import MAX_PARAM, REQUEST_URI_PREFIX, AuthorizationRequest

SEALED = "s."  # a public client's request_uri: the request itself, sealed (module docstring)
_AAD = b"quaygate/par/v1:"


class PushTooLong(ValueError):
    """A public client's request, sealed, would be a request_uri too long for /authorize."""


class PushedRequests:
    PREFIX = "identity:par:"

    def __init__(self, cache: Cache, *, ttl: int, cipher: DataCipher) -> None:
        self._cache = cache
        self._cipher = cipher
        self.ttl = ttl

    def push(self, req: AuthorizationRequest, *, public: bool = False) -> str:
        """Store a validated request, or for a public client seal it; return its request_uri (RFC 9126
        §2.2). PushTooLong for a public client's request too long to carry."""
        if public:
            sealed = self._cipher.seal(zlib.compress(req.dumps(), 9), _AAD + req.client_id.encode())
            uri = REQUEST_URI_PREFIX + SEALED + sealed.rstrip("=")
            if len(uri) > MAX_PARAM:
                raise PushTooLong(f"{len(uri)} characters")
            return uri
        ref = secrets.token_urlsafe(32)
        self._cache.put(self.PREFIX + ref, req.dumps(), self.ttl)
        return REQUEST_URI_PREFIX + ref

    def take(self, request_uri: str | None, client_id: str | None, *, now: float | None = None
             ) -> AuthorizationRequest | None:
        """The pushed request, once: None when unknown, expired, used before, or pushed by another
        client (RFC 9126 §4: the client_id must be the one that pushed it). A public client's sealed
        one: None when it does not open for this client_id or has expired (``now``, Unix seconds)."""
        if not request_uri or not request_uri.startswith(REQUEST_URI_PREFIX) or len(request_uri) > MAX_PARAM:
            return None
        ref = request_uri[len(REQUEST_URI_PREFIX) :]
        if ref.startswith(SEALED):
            return self._open(ref[len(SEALED) :], client_id, time.time() if now is None else now)
        if len(ref) > 64:
            return None
        raw = self._cache.peek(self.PREFIX + ref)
        if raw is None:
            return None
        if AuthorizationRequest.loads(raw).client_id != client_id:
            return None  # not consumed: the rightful client can still use it
        # RFC 9126 §4 / §7.3: one-time use, taken atomically (of two takers, one gets it).
        raw = self._cache.take(self.PREFIX + ref)
        return AuthorizationRequest.loads(raw) if raw is not None else None

    def _open(self, sealed: str, client_id: str | None, now: float) -> AuthorizationRequest | None:
        if not client_id:
            return None
        try:
            raw = self._cipher.open_current(sealed + "=" * (-len(sealed) % 4), _AAD + client_id.encode())
        except (ValueError, InvalidTag):  # not ours, changed, another client's, or under a previous data key
            return None
        req = AuthorizationRequest.loads(zlib.decompress(raw))  # ours: the tag holds
        return req if now < req.created_at + self.ttl else None

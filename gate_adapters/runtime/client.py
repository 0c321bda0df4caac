"""The verify client: ``POST /gate/v1/verify`` with a gate client's token, retried safely.

Why retries are safe: the body carries ``request_id`` and the service answers the same id with the same
decision, never using a right twice (SPEC.md "The gate verify call"). So a connect error, a timeout or
a 5xx is retried with the SAME body; a 4xx problem (RFC 9457) is an answer about the request itself
and is never retried.

Rules:
1. Retried: transport errors (connect, read, timeouts, a body that cannot be decoded), 5xx, 429 (rule 7),
   and a 200 (201) whose body is not a JSON object (a proxy's HTML page, a cut-off body: no answer we can read);
   ``attempts`` tries in all, with exponential backoff (``backoff * 2**n``, capped). When they run out:
   ``ServiceUnavailable``, never a decoding error: the lane must still hold and call an officer.
2. A 401 drops the cached token and tries once more with a fresh one (it may have expired in flight).
3. Any other 4xx: ``VerifyRefused`` carrying the problem's ``status``, ``code`` and ``detail``.
4. Tokens (``ClientCredentials``): RFC 6749 §4.4 client credentials at ``/oauth2/token`` with
   ``client_secret_basic`` (§2.3.1), or with ``private_key_jwt`` (RFC 7523 §2.2: a fresh signed
   assertion per token request, ``AssertionSigner``), cached until ``leeway`` seconds before
   ``expires_in`` runs out.
5. DPoP (RFC 9449, ``dpop.py``), when the token provider has a ``dpop`` key: the token request carries a
   proof (htm POST, htu the token endpoint) and the answer must be a ``DPoP`` token (a ``Bearer`` one
   is refused, ``TokenRefused``: the service ignored the proof, and the token would work anywhere); each call
   sends ``Authorization: DPoP <token>`` with a fresh proof (``ath`` the token's hash). An answer
   ``use_dpop_nonce`` with a new ``DPoP-Nonce`` is sent again once with it (§8, §9), before rule 2;
   the newest nonce each server sent goes in every later proof.
6. The token endpoint's own answer (``TokenRefused``): a 4xx refusal (``invalid_client`` for a client
   deactivated or a wrong secret, ``unauthorized_client``, ``invalid_grant``, ``invalid_dpop_proof``
   ...), or a token that is not DPoP-bound when it must be, is the service saying no to THIS adapter,
   not an outage: it is handled as the verify's own 401 (``VerifyRefused``, never final): the request
   stays pending, the lane holds and calls an officer, and offline mode decides nothing (a gate client
   disabled by port security must stop the lane, not switch it to its gate passes). A 429 ``slow_down``
   is overload: retried within ``attempts`` like the verify's 429, and when they run out it is still a
   refusal, not an outage: the service answered, and its per-address count counts refused token requests
   too (identity/ratelimit.py), so a disabled adapter retrying its 401s would earn 429s and, were they
   an outage, go offline all the same. Only a token endpoint that cannot be reached, answers 5xx or
   answers 200 with no token we can read is a ``TokenError`` that counts as no answer (rule 1).
7. A 429 (the verify's ``rate_limited``, the token endpoint's ``slow_down``) is the service up and saying
   "slow down", never an outage: whoever can make the service rate-limit a lane (a flood from behind the
   same address, the terminal's own burst) must not switch it to its gate passes. Its ``Retry-After``
   (RFC 9110 §10.2.3: seconds or an HTTP date) is honoured: the same body (the same ``request_id``:
   verify is idempotent by it) is sent again no sooner than it says, and no call of this client (another
   lane's, offline mode's) goes out before then either. One call waits ``max_retry_after`` seconds in all
   at most (a truck stands at the barrier): a ``Retry-After`` beyond what is left is not waited for.
   A call that heard a 429 and then no answer it can use (the wait too long, the attempts spent, even a
   5xx after it) raises ``RateLimited``: a ``VerifyRefused`` that is never final, handled as rule 6 (the
   request stays pending, the lane holds and calls an officer, offline mode decides nothing). Without a
   usable ``Retry-After`` the backoff of rule 1 applies.
8. A call may be given a total deadline (``within`` seconds; the lane's verify, lane.py rule 2: its
   ``act_seconds`` measured from when the request was made). httpx's timeout bounds each network
   operation, not the call: an answer written a piece at a time, each within the timeout, could hold a
   lane's thread for as long as the sender liked (review 173, finding 1). With a deadline each attempt's
   timeout is at most the time left, the body is read piece by piece and the call ends at the first piece
   past the deadline unless the answer is whole by then (its ``Content-Length``), no attempt, backoff or
   ``Retry-After`` wait begins that would end past it, and a call that ran out of time raises
   ``ServiceUnavailable`` ("no answer within ...", or ``RateLimited`` after a 429, rule 7). So its exchange
   with the verify endpoint ends at most one network read past its deadline. The access token it needs
   first is not under the deadline: a token due (or refused with a 401) is fetched with the token client's
   own per-read timeout, under the lock every lane shares, so a token endpoint that answers a piece at a time
   can still hold the lanes past ``act_seconds`` (the last read of review 173; not mended). Whatever arrives
   late is the lane's to judge (lane.py rule 2: a late allow never opens). Without a deadline (offline
   mode's upkeep, the override desk) a call is as before.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
from joserfc import jwt

from .dpop import DPoPKey, Nonces, needs_nonce
from .keys import private_key

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class TokenProvider(Protocol):
    """``dpop``: the key the tokens are bound to (rule 5), or None for bearer tokens."""

    dpop: DPoPKey | None

    def token(self) -> str: ...

    def invalidate(self) -> None: ...


class TokenError(Exception):
    """The token endpoint refused us or did not answer: a configuration or availability problem."""


class ServiceUnavailable(Exception):
    """No answer from the service after every retry: the lane holds and the request stays pending."""


class VerifyRefused(Exception):
    """A 4xx problem answer: the request itself is wrong (not retried)."""

    what = "verify refused"

    def __init__(self, status: int, code: str, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{self.what} ({status} {code}): {detail}")
        self.status, self.code, self.detail = status, code, detail
        self.retry_after = retry_after  # seconds, from a 429's Retry-After (rule 7); None without one

    @property
    def final(self) -> bool:
        """401/403/429 may pass once the configuration is fixed: the request stays pending for those."""
        return self.status not in (401, 403, 429)

    def as_response(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "code": self.code, "detail": self.detail}}


class TokenRefused(VerifyRefused, TokenError):
    """Rule 6: the token endpoint refused this client (RFC 6749 §5.2 ``error``). A ``TokenError`` to a
    caller of ``ClientCredentials``; to the verify client's callers, a refusal that is never final."""

    what = "token endpoint refused us"

    @property
    def final(self) -> bool:
        """Never: the request itself was not judged, and may pass once port security enables the client."""
        return False


class RateLimited(VerifyRefused):
    """Rule 7: a 429 and no usable answer within the wait allowed. The service is up and asks us to slow
    down: the request was not judged, stays pending and is sent again later (never final), and offline
    mode decides nothing."""

    what = "rate limited"

    @property
    def final(self) -> bool:
        return False


class _OutOfTime(Exception):
    """Rule 8: the call's deadline came before its answer was whole."""


class StaticToken:
    """A fixed token (tests, or a token issued out of band); ``dpop``: the key it is bound to, if any."""

    def __init__(self, token: str, *, dpop: DPoPKey | None = None) -> None:
        self._token, self.dpop = token, dpop

    def token(self) -> str:
        return self._token

    def invalidate(self) -> None:
        """Nothing to refresh: the next call sends the same token."""


ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"  # RFC 7523 §2.2
_DEFAULT_ALG = {"EC": "ES256", "RSA": "PS256", "OKP": "EdDSA"}


class AssertionSigner:
    """RFC 7523 §3 client assertions: ``iss`` = ``sub`` = the client id, ``aud`` the token endpoint, a
    fresh ``jti`` each (the service refuses a replayed one) and a one-minute lifetime.

    ``key``: the private key as a JWK (JSON) or PEM, EC P-256 (ES256), RSA (PS256 or RS256) or Ed25519
    (EdDSA). ``kid``: the key's id in the client's registered JWKS (default: the JWK's own ``kid``, else
    its RFC 7638 thumbprint)."""

    def __init__(self, client_id: str, key: str | bytes, audience: str, *, kid: str | None = None,
                 alg: str | None = None, lifetime: int = 60, clock: Callable[[], float] = time.time) -> None:
        self.client_id, self.audience, self.lifetime, self._clock = client_id, audience, lifetime, clock
        self._key = private_key(key)
        if not self._key.is_private:
            raise ValueError("the key file holds a public key: private_key_jwt needs the private key")
        self.alg = alg or _DEFAULT_ALG[self._key.key_type]
        self.kid = kid or self._key.kid or self._key.thumbprint()

    def assertion(self) -> str:
        now = int(self._clock())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": self.audience, "iat": now,
                  "exp": now + self.lifetime, "jti": uuid.uuid4().hex}
        return jwt.encode({"alg": self.alg, "kid": self.kid, "typ": "JWT"}, claims, self._key, algorithms=[self.alg])


class ClientCredentials:
    """A gate client's access token, fetched with client_secret_basic (``client_secret``) or with
    private_key_jwt (``signer``), and cached until near expiry; bound to ``dpop`` when given (rule 5)."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str | None,
        *,
        signer: AssertionSigner | None = None,
        dpop: DPoPKey | None = None,
        http: httpx.Client | None = None,
        scope: str | None = None,
        leeway: float = 30.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url, self.scope, self.leeway, self.timeout = token_url, scope, leeway, timeout
        if (client_secret is None) == (signer is None):
            raise ValueError("give a client secret or an assertion signer, one of them")
        self._auth = None if client_secret is None else (client_id, client_secret)
        self.client_id, self._signer, self.dpop = client_id, signer, dpop
        self._nonces = Nonces()  # the token endpoint's (RFC 9449 §8)
        self._http = http or httpx.Client(timeout=timeout)  # an injected client brings its own timeouts
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                self._token, self._expires_at = self._fetch()
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def _fetch(self) -> tuple[str, float]:
        data = {"grant_type": "client_credentials"} | ({"scope": self.scope} if self.scope else {})
        if self._signer is not None:  # RFC 7523 §2.2, with client_id as RFC 6749 §2.3 allows
            data |= {"client_id": self.client_id, "client_assertion_type": ASSERTION_TYPE}
        started = self._clock()
        try:
            r = self._post(data)
        except httpx.HTTPError as exc:
            raise TokenError(f"token endpoint unreachable: {type(exc).__name__}") from exc
        if 400 <= r.status_code < 500:  # rule 6: a refusal (429 too, rule 7), not an outage
            raise TokenRefused(r.status_code, _error_code(r), _error_text(r),
                               retry_after=_retry_after(r) if r.status_code == 429 else None)
        if r.status_code != 200:
            raise TokenError(f"token endpoint answered {r.status_code}: {_error_text(r)}")
        body = _json_object(r)
        if body is None:
            raise TokenError("token response is not a JSON object")
        token, expires_in = body.get("access_token"), body.get("expires_in", 300)
        if not isinstance(token, str) or not isinstance(expires_in, int | float):
            raise TokenError("token response has no access_token or expires_in")
        if self.dpop is not None and str(body.get("token_type", "")).lower() != "dpop":
            # RFC 9449 §5: a bound token is of type DPoP. A bearer one would work from anywhere: refused,
            # and a service that answers so is up and misconfigured, not away (rule 6).
            raise TokenRefused(r.status_code, "token_not_dpop",
                               f"the token endpoint ignored the DPoP proof (token_type {body.get('token_type')!r})")
        # Measured from when we asked: the token may be a little older than it looks when it arrives.
        return token, started + max(float(expires_in) - self.leeway, 0.0)

    def _post(self, data: dict[str, str]) -> httpx.Response:
        """The token request; with DPoP, sent a second time only for a nonce the server asks for (§8),
        with a fresh assertion and proof (each is single use)."""
        for _ in range(2):
            form = data if self._signer is None else data | {"client_assertion": self._signer.assertion()}
            if self.dpop is None:
                return self._http.post(self.token_url, data=form, auth=self._auth)
            sent = self._nonces.get(self.token_url)
            proof = self.dpop.proof("POST", self.token_url, nonce=sent)
            r = self._http.post(self.token_url, data=form, auth=self._auth, headers={"DPoP": proof})
            self._nonces.note(r)
            if not needs_nonce(r, sent):
                break
        return r


class VerifyClient:
    """Sends one verify body and returns the decision JSON (rules 1 to 3)."""

    def __init__(
        self,
        base_url: str,
        tokens: TokenProvider,
        *,
        http: httpx.Client | None = None,
        timeout: float = 2.0,
        attempts: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 2.0,
        max_retry_after: float = 3.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts >= 1")
        if max_retry_after < 0:
            raise ValueError("max_retry_after >= 0")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/gate/v1/verify"
        self.tokens, self.timeout, self.attempts = tokens, timeout, attempts
        self.backoff, self.max_backoff, self.max_retry_after = backoff, max_backoff, max_retry_after
        self._http = http or httpx.Client(timeout=timeout)  # an injected client brings its own timeouts
        self._sleep, self._clock = sleep, clock
        self._nonces = Nonces()  # the API's (RFC 9449 §9)
        self._not_before = float("-inf")  # rule 7: no call goes out before this (``clock`` seconds)
        self._lock = threading.Lock()

    def verify(self, body: Mapping[str, Any], *, within: float | None = None) -> dict[str, Any]:
        """``within``: the call's deadline in seconds from now (rule 8), or None."""
        return self.call("POST", self.url, body, within=within)

    def call(self, method: str, url: str, body: Mapping[str, Any] | None = None, *,
             attempts: int | None = None, patience: float | None = None,
             headers: Mapping[str, str] | None = None, within: float | None = None) -> dict[str, Any]:
        """One JSON call to the service under rules 1 to 3, 7 and 8 (verify, and offline mode's passes and
        reconcile, which are idempotent too). ``url`` may be a path under ``base_url``. ``patience``: the
        most this call waits in all on a ``Retry-After`` (default ``max_retry_after``; offline mode's upkeep
        waits for none, it is tried again when next due). ``headers``: more request headers (offline mode's
        ``Cache-Control: no-cache`` for a JWKS fetched again past the caches); never the authorization's.
        ``within``: the call's total deadline, seconds from now (rule 8); None: none."""
        if url.startswith("/"):
            url = self.base_url + url
        deadline = None if within is None else self._clock() + max(within, 0.0)
        last = "no attempt"
        refreshed = False
        tries = attempts or self.attempts
        left = self.max_retry_after if patience is None else patience  # rule 7: what this call may still wait
        limited: VerifyRefused | None = None  # rule 7: the last 429 this call heard
        for attempt in range(tries):
            pause = min(self.backoff * 2 ** (attempt - 1), self.max_backoff) if attempt else 0.0
            told = self._not_before - self._clock()  # a Retry-After, heard by this call or another
            if told > 0:
                if told > left or (deadline is not None and self._clock() + told >= deadline):
                    raise _still_limited(limited, told)  # longer than a truck waits: not asked again now (rule 7)
                left -= told
                pause = max(pause, told)
            if deadline is not None and self._clock() + pause >= deadline:  # rule 8: no try that ends past it
                last = f"{last}; out of time"
                break
            if pause > 0:
                self._sleep(pause)
            try:
                r = self._send(method, url, body, headers, deadline)
                if r.status_code == 401 and not refreshed:  # rule 2: one fresh token, at once
                    refreshed = True
                    self.tokens.invalidate()
                    r = self._send(method, url, body, headers, deadline)
            except _OutOfTime as exc:  # rule 8: not asked again
                last = str(exc)
                break
            except TokenRefused as exc:  # rule 6: never an outage; a 429 is asked again (rule 7)
                if exc.status != 429:
                    raise
                limited, last = exc, str(exc)
                self._slow_down(exc.retry_after)
                continue
            except (httpx.RequestError, TokenError) as exc:  # RequestError: transport and decoding errors
                last = f"{type(exc).__name__}: {exc}"
                continue
            if r.status_code in (200, 201):  # 201: a thing made (an override, overrides.py)
                answer = _json_object(r)
                if answer is not None:
                    return answer
                last = f"HTTP {r.status_code} without a JSON object"
                continue
            if r.status_code == 429:  # rule 7: up, and asking us to slow down
                limited = _refused(r, RateLimited)
                last = f"HTTP 429 {limited.code}"
                self._slow_down(limited.retry_after)
                continue
            if r.status_code in RETRY_STATUSES:
                last = f"HTTP {r.status_code}"
                continue
            raise _refused(r)
        if limited is not None:  # rule 7: the service answered this call, if only to say slow down
            raise limited
        if deadline is not None and self._clock() >= deadline:
            raise ServiceUnavailable(f"no answer within {within:.1f} s ({last})")
        raise ServiceUnavailable(f"no answer after {tries} attempts ({last})")

    def _slow_down(self, seconds: float | None) -> None:
        """Rule 7: no call before ``seconds`` from now (a Retry-After); the later of two wins."""
        if seconds is None:
            return
        with self._lock:
            self._not_before = max(self._not_before, self._clock() + seconds)

    def _send(self, method: str, url: str, body: Mapping[str, Any] | None,
              more: Mapping[str, str] | None = None, deadline: float | None = None) -> httpx.Response:
        token = self.tokens.token()
        dpop: DPoPKey | None = getattr(self.tokens, "dpop", None)
        if dpop is None:
            headers = {**(more or {}), "Authorization": f"Bearer {token}", "Accept": "application/json"}
            return self._exchange(method, url, body, headers, deadline)
        sent = None
        for _ in range(2):  # rule 5: a second time only for a nonce the server asks for (RFC 9449 §9)
            sent = self._nonces.get(url)
            headers = {**(more or {}), "Authorization": f"DPoP {token}", "Accept": "application/json",
                       "DPoP": dpop.proof(method, url, access_token=token, nonce=sent)}
            r = self._exchange(method, url, body, headers, deadline)
            self._nonces.note(r)
            if not needs_nonce(r, sent):
                break
        return r

    def _exchange(self, method: str, url: str, body: Mapping[str, Any] | None, headers: Mapping[str, str],
                  deadline: float | None) -> httpx.Response:
        """One request. With a ``deadline`` (rule 8): its timeout at most the time left, its body read piece by
        piece, and ``_OutOfTime`` at the first piece past the deadline unless the answer is whole by then."""
        payload = None if body is None else dict(body)
        if deadline is None:
            return self._http.request(method, url, json=payload, headers=headers)
        left = deadline - self._clock()
        if left <= 0:
            raise _OutOfTime("out of time before the request")
        request = self._http.build_request(method, url, json=payload, headers=headers,
                                           timeout=min(self.timeout, left))
        r = self._http.send(request, stream=True)
        if r.is_stream_consumed:  # made whole already (a transport that builds its answers): nothing to wait for
            return r
        try:
            raw = bytearray()
            for piece in r.iter_raw():  # as it came (decoded once, below)
                raw += piece
                if self._clock() > deadline and not _whole(r, raw):
                    raise _OutOfTime(f"out of time mid-answer (HTTP {r.status_code}, {len(raw)} bytes read)")
        finally:
            r.close()
        return httpx.Response(r.status_code, headers=r.headers, content=bytes(raw), request=request)


def _whole(r: httpx.Response, raw: bytes | bytearray) -> bool:
    """Rule 8: whether the body read so far is all of it, as its ``Content-Length`` says (without one,
    only the end of the stream tells)."""
    length = r.headers.get("content-length", "")
    return length.isdigit() and len(raw) >= int(length)


def _json_object(r: httpx.Response) -> dict[str, Any] | None:
    """The body as a JSON object; ``None`` when it is not one (not JSON, or a list, a string ...)."""
    try:
        body = r.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return body if isinstance(body, dict) else None


def _error_text(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict):
        return str(body.get("error_description") or body.get("detail") or body.get("error") or body)[:200]
    return str(body)[:200]


_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _error_code(r: httpx.Response) -> str:
    """The OAuth ``error`` code of a token endpoint's refusal (RFC 6749 §5.2), else ``http_error``. It
    ends a dotted log event (``gate.lane.refused.<code>``): anything but a plain code is not taken."""
    try:
        body = r.json()
    except ValueError:
        return "http_error"
    code = body.get("error") if isinstance(body, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else "http_error"


def _refused(r: httpx.Response, kind: type[VerifyRefused] = VerifyRefused) -> VerifyRefused:
    code, detail = "http_error", r.text[:200]
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or body.get("error") or code)
        detail = str(body.get("detail") or body.get("title") or body.get("error_description") or detail)[:500]
    return kind(r.status_code, code, detail, retry_after=_retry_after(r) if r.status_code == 429 else None)


MAX_RETRY_AFTER = 86400.0  # a Retry-After past a day is taken as a day: the wait is refused all the same


def _retry_after(r: httpx.Response) -> float | None:
    """Rule 7: the seconds a ``Retry-After`` asks for (RFC 9110 §10.2.3: delay-seconds or an HTTP date),
    at least 0; None when absent or not one of those."""
    raw = r.headers.get("retry-after", "").strip()
    if not raw:
        return None
    if raw.isdigit():
        return min(float(raw), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 §5.6.7: an HTTP date is GMT
        when = when.replace(tzinfo=UTC)
    return min(max((when - datetime.now(UTC)).total_seconds(), 0.0), MAX_RETRY_AFTER)


def _still_limited(limited: VerifyRefused | None, told: float) -> VerifyRefused:
    """Rule 7: the refusal for a call that will not wait ``told`` more seconds: the 429 it heard, else one
    saying that another call heard it."""
    if limited is not None:
        return limited
    return RateLimited(429, "rate_limited", f"the service asked this adapter to wait {told:.1f} s more "
                                             f"(Retry-After)", retry_after=told)

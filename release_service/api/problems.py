"""RFC 9457 problem details: the one table mapping error codes to HTTP statuses (STYLE.md #6)."""

from __future__ import annotations

import logging
from typing import Any

import redis
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from quaygate.schema import UnstorableValue
from release_service.domain.errors import DomainError, ErrorCode

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://quaygate.eu/problems/"
MEDIA_TYPE = "application/problem+json"

STATUS: dict[ErrorCode, int] = {
    ErrorCode.CONTAINER_NUMBER_MALFORMED: 422,
    ErrorCode.CONTAINER_CHECK_DIGIT: 422,
    ErrorCode.INVALID_VALIDITY_WINDOW: 422,
    ErrorCode.INVALID_PLATE: 422,
    ErrorCode.INVALID_SLOT: 422,
    ErrorCode.INVALID_LIGHT: 422,
    ErrorCode.INVALID_CURSOR: 422,
    ErrorCode.INVALID_WEBHOOK_SUBSCRIPTION: 422,
    ErrorCode.INVALID_TEXT: 422,
    ErrorCode.INVALID_OBSERVED_AT: 422,
    ErrorCode.BATCH_TOO_LARGE: 413,
    ErrorCode.BATCH_EMPTY: 422,
    ErrorCode.UNKNOWN_ORGANISATION: 422,
    ErrorCode.ORGANISATION_INACTIVE: 409,
    ErrorCode.UNKNOWN_PERSON: 422,
    ErrorCode.UNKNOWN_BADGE: 422,
    ErrorCode.TRUCK_OF_ANOTHER_OPERATOR: 422,
    ErrorCode.WRONG_ORGANISATION_KIND: 403,
    ErrorCode.NOT_ISSUER: 403,
    ErrorCode.NOT_HOLDER: 403,
    ErrorCode.NOT_RECIPIENT: 403,
    ErrorCode.NOT_SENDER: 403,
    ErrorCode.NOT_LIGHT_OWNER: 403,
    ErrorCode.LIGHT_HELD_BY_ANOTHER: 403,
    ErrorCode.NOT_TERMINAL: 403,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ACTIVE_RIGHT_EXISTS: 409,
    ErrorCode.ILLEGAL_TRANSITION: 409,
    ErrorCode.RIGHT_EXPIRED: 409,
    ErrorCode.RIGHT_NOT_YET_VALID: 409,
    ErrorCode.RIGHT_BLOCKED: 409,
    ErrorCode.TRANSFER_PENDING: 409,
    ErrorCode.TRANSFER_NOT_PENDING: 409,
    ErrorCode.SELF_TRANSFER: 422,
    ErrorCode.DRIVER_SCREENING_FAILED: 409,
    ErrorCode.ALREADY_USED: 409,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: 422,
    ErrorCode.REQUEST_ID_REUSED: 409,
    ErrorCode.REASON_REQUIRED: 422,
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: 409,
    ErrorCode.INVALID_IF_MATCH: 400,
    ErrorCode.PRECONDITION_FAILED: 412,
}

TITLES: dict[int, str] = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class Problem(BaseModel):
    """RFC 9457 §3.1 members, plus ``code``: the stable machine code integrators switch on."""

    type: str = Field(examples=[PROBLEM_BASE + "not_holder"])
    title: str
    status: int
    detail: str | None = None
    code: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


def encodable(text: str) -> str:
    """``text`` with any unpaired surrogate (which JSON can carry in, but UTF-8 cannot send back)
    replaced: a refusal that quotes what it refused must still be sent."""
    return text.encode("utf-8", "replace").decode("utf-8")


def problem(status: int, code: str, detail: str | None, *, instance: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    if detail is not None:
        detail = encodable(detail)
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def domain_problem(exc: DomainError, instance: str | None = None) -> JSONResponse:
    extra = {k: v for k, v in exc.context.items() if isinstance(v, str | int | list)}
    return problem(STATUS.get(exc.code, 400), exc.code.value, exc.message, instance=instance, **extra)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: every declared error is a problem document."""
    return {
        s: {"model": Problem, "description": TITLES.get(s, "Error"), "content": {MEDIA_TYPE: {}}}
        for s in statuses
    }


class AuthError(Exception):
    """Missing, invalid or insufficient credentials (RFC 6750 §3, RFC 9449 §7.1, RFC 9470 §3).

    ``scheme`` is the challenge's auth scheme (``Bearer``, or ``DPoP`` for a DPoP-bound request);
    ``params`` are further challenge parameters (``acr_values``, ``max_age``); ``also`` are further
    whole challenges to offer, such as ``DPoP algs="ES256 ..."`` beside a Bearer one (RFC 9110 §11.6.1).
    """

    def __init__(self, status: int, error: str, description: str, *, scope: str | None = None,
                 scheme: str = "Bearer", params: dict[str, str] | None = None,
                 also: tuple[str, ...] = (), headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.scope = scope
        self.scheme = scheme
        self.params = params or {}
        self.also = also
        self.headers = headers or {}  # sent besides the challenge (RFC 9449 §9: DPoP-Nonce)

    def challenge(self) -> str:
        """The WWW-Authenticate value: auth-params as quoted strings (RFC 6750 §3, RFC 9110 §11.2)."""
        params = {"error": self.error, "error_description": self.description}
        if self.scope:
            params["scope"] = self.scope
        params.update(self.params)
        value = f"{self.scheme} " + ", ".join(f'{k}="{quote_param(v)}"' for k, v in params.items())
        return ", ".join((value, *self.also))


def quote_param(value: str) -> str:
    """An auth-param value safe inside a quoted-string: RFC 6750 §3 limits error_description to
    %x20-21 / %x23-5B / %x5D-7E, so quotes and backslashes become apostrophes and slashes."""
    cleaned = value.replace('"', "'").replace("\\", "/")
    return "".join(ch for ch in cleaned if " " <= ch <= "~")


def cache_unavailable(exc: BaseException) -> bool:
    """A Redis error that passes (a 503 to send again): the connection lost, refused or timed out, Redis
    loading, a read-only replica, a full Redis (OOM under noeviction), a script running too long
    (BUSY), a cluster moving slots (TRYAGAIN, CLUSTERDOWN), a Redis refused at its greeting
    (quaygate/dataset.py ``UnsuitableRedis``, a ConnectionError)."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.exceptions.ReadOnlyError
                  | redis.exceptions.OutOfMemoryError | redis.exceptions.TryAgainError
                  | redis.exceptions.ClusterDownError):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("BUSY ")


def _unexpected_failure(request: Request) -> JSONResponse:
    return problem(500, "internal_error", "The service failed on this request.", instance=request.url.path)


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    def _domain(request: Request, exc: DomainError) -> JSONResponse:
        return domain_problem(exc, request.url.path)

    @app.exception_handler(AuthError)
    def _auth(request: Request, exc: AuthError) -> JSONResponse:
        return problem(exc.status, exc.error, exc.description, instance=request.url.path,
                       headers={**exc.headers, "WWW-Authenticate": exc.challenge()})

    @app.exception_handler(RequestValidationError)
    def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        malformed = any(e["type"] == "json_invalid" for e in errors)
        if malformed:
            return problem(400, "malformed_json", "The body is not valid JSON.", instance=request.url.path)
        return problem(422, "invalid_request", "The request does not match the schema.",
                       instance=request.url.path, errors=errors)

    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.InterfaceError)
    @app.exception_handler(sa.exc.TimeoutError)
    def _database(request: Request, exc: Exception) -> JSONResponse:
        # The database refused or lost the connection, no pooled connection came free, a statement was
        # cancelled, a deadlock or a serialization failure. A write whose connection was lost after it
        # was sent may have landed: sent again under the same request_id (a gate verify) or
        # Idempotency-Key, it is found, never done twice. A gate adapter retries, then decides offline.
        log.error("quaygate.database_unavailable", exc_info=exc, extra={"fields": {"path": request.url.path}})
        return problem(503, "service_unavailable", "The database did not answer; send the request again.",
                       instance=request.url.path, headers={"Retry-After": "1"})

    @app.exception_handler(redis.RedisError)
    def _cache(request: Request, exc: Exception) -> JSONResponse:
        # Redis refused or lost a call that cannot be made without it (a DPoP proof's single use, a
        # session, a rate limit): the request is refused, nothing is taken on trust without it. Only
        # what passes is a 503 to send again (``cache_unavailable``); any other error reply (a script's
        # error, WRONGTYPE, a value redis-py cannot send) is ours, a 500, never a retry loop.
        if not cache_unavailable(exc):
            log.error("quaygate.internal_error", exc_info=exc, extra={"fields": {"path": request.url.path}})
            return _unexpected_failure(request)
        log.error("quaygate.cache_unavailable", exc_info=exc, extra={"fields": {"path": request.url.path}})
        return problem(503, "service_unavailable", "The cache did not answer; send the request again.",
                       instance=request.url.path, headers={"Retry-After": "1"})

    @app.exception_handler(sa.exc.DataError)
    def _unstorable(request: Request, exc: Exception) -> JSONResponse:
        # The database refused a value as data (a NUL character in text, a number out of its column's
        # range) that the schema let through: the request, not the service; its transaction rolled back.
        log.warning("quaygate.value_refused", extra={"fields": {"path": request.url.path}})
        return problem(422, "invalid_request", "A value of the request cannot be stored (a control character?).",
                       instance=request.url.path)

    @app.exception_handler(sa.exc.StatementError)
    def _unbindable(request: Request, exc: sa.exc.StatementError) -> JSONResponse:
        # A column type refused a value before sending it (a time outside the calendar once in UTC): the
        # last line behind the input rules, as for DataError. Any other statement error is ours: a 500.
        if not isinstance(exc.orig, UnstorableValue):
            raise exc
        log.warning("quaygate.value_refused", extra={"fields": {"path": request.url.path}})
        return problem(422, "invalid_request", "A time of the request cannot be stored.", instance=request.url.path)

    @app.exception_handler(Exception)
    def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged by the server with its traceback (Starlette raises it on); the client gets problem JSON
        # with nothing of the exception in it. A cache failure comes here, past ``_cache``, when a
        # middleware outside the handlers raised it: the rate limits count in Redis before any route
        # (identity/ratelimit.py), and a Redis down or full (OOM under noeviction) must be a 503 there
        # too, never a 500.
        if isinstance(exc, redis.RedisError):
            return _cache(request, exc)
        return _unexpected_failure(request)

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 415: "unsupported_media_type"}.get(
            exc.status_code, "http_error"
        )
        return problem(exc.status_code, code, str(exc.detail), instance=request.url.path,
                       headers=getattr(exc, "headers", None))

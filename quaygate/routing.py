"""An exact-path index in front of FastAPI's routing, for the busiest endpoints.

FastAPI (0.165) matches a request by walking every included router in turn, and each candidate route
through its included-router context: it records and restores keys in the request scope, recounts the
routers' versions, and matches again when the chosen router handles the request. For a token request,
the third router in, that walk cost about as much CPU as the two Redis round trips of the rate limiter
(loadtests/RESULTS.md, tenth session).

``ExactRoutes`` is one route placed first in the app's list. It knows a handful of routes by method
and exact path (no path parameters) and matches them with one dictionary lookup; everything else falls
through to FastAPI's own walk, unchanged. The routes it knows are the very ``APIRoute`` objects the
routers declared: the same endpoint, dependencies, response model and body limit run, and
``scope["route"]`` names the same route (metrics label it by its path, as before). It appears nowhere
in the OpenAPI document, where the routers' declarations stay the only ones.

A method the path does not serve is not matched here either, so FastAPI answers it (405) as before.

An endpoint that takes only the ``Request``, has no dependency and returns a ``Response`` itself (the
token endpoint, the passkey login's options) gains nothing from FastAPI's request handler but its
dependency solving, which cost about a twentieth of a token grant's CPU: such an endpoint is called
directly, as Starlette calls one (``direct``). Any other runs FastAPI's handler, as declared.

The gate verify, the busiest of all, may be given a handler of its own (``lean``): it reads the body,
and parses and validates it the way FastAPI's handler would (``json.loads``, then the body model's
validator), which cost about a tenth of a gate check in FastAPI's dependency solving. It handles only
what it is sure of: a JSON body that is valid. Anything else (no or another content type, a body that
does not parse or validate, a body FastAPI's limit refused while it was read) goes to FastAPI's own
handler, with the body read so far given back to it, so every refusal is FastAPI's own, exactly.

A route may also be given a check on its headers alone (``admit``), run before any of the body is read,
on the lean handler's way and on FastAPI's alike: the gate verify authenticates its caller there, so a
request without a valid token is refused before the server reads and parses a body of up to 8 MiB.

``AdmitFirst`` does the same for the routes of a router: the ``admit`` of a route's auth dependency
(the release API's ``require``), or, for a route that checks its caller at the top of its endpoint
(identity's admin and face routes), the one its endpoint is given with ``admit_first``. It then reads
the body itself, within a deadline (``read_within``: a client that sends its headers, then its body a
byte at a time, holds a connection and a worker's memory for as long as it likes), and checks the
admitted caller again once the body is in (``again``): a token that expired, or was revoked, while a
slow client sent its body is refused (401) before anything is done. Only what may have changed is
checked again (the token's times, its key, its revocation), never a DPoP proof, whose jti was claimed
at admission and is single use. A body not received in time is refused 408 ``body_timeout``, nothing
done; the gate verify's own handler (``lean``) reads its body within its route's deadline too, and
checks its caller again once the body is in with the check it is given (``again``). A route whose own
code reads a small form (the OAuth endpoints, whose client may authenticate in it, and the rate limiter
reading it for its client_id) reads it with ``read_form``, within the app's deadline too: past it,
``BodyTimeout``, answered 408 ``body_timeout`` the same way.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from typing import Any

from fastapi import FastAPI
from fastapi._body_limit import wrap_app_with_body_limit
from fastapi.params import Form
from fastapi.routing import APIRoute, APIRouter
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette._utils import get_route_path
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound, request_response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from identity.tokens import InvalidToken
from quaygate.settings import DEFAULT_BODY_SECONDS
from release_service.api.auth import credentials_of
from release_service.api.problems import AuthError, problem, problem_responses

try:  # FastAPI's OpenTelemetry hook names the matched route (http.route) when telemetry is on
    from fastapi.telemetry._api import _route_selected
except ImportError:  # pragma: no cover - another FastAPI
    def _route_selected(*, scope: Any, path: str | None, mount: bool = False) -> None:
        return None


# A route's own handler (``lean``): given the request and its whole body, the response, or None when
# it leaves the request to FastAPI's handler (which then reads the same body).
LeanHandler = Callable[[Request, bytes], Awaitable[Response | None]]

# A route's check on the request's headers alone (``admit``), before its body is read: it raises to
# refuse (the app's exception handlers answer), and may leave what it found in ``request.state``.
Admit = Callable[[Request], None]

# A lean route's check once its body is read whole (``again``), before its handler (or FastAPI's) runs:
# on the event loop, so it must be cheap (the gate verify's: the token verifier's memo); it raises to
# refuse, as ``admit`` does.
Again = Callable[[Request], None]

# AdmitFirst's check may also answer itself, for a route that answers its own refusals rather than
# raising them (identity's ``AdminRefused.response``): the response it returns is sent in place of the
# endpoint's, the body unread; None lets the request go on. So may its check once the body is read
# (``again``), which raises or answers the same way.
AdmitOrAnswer = Callable[[Request], Response | None]

# How long a route reading its body itself (AdmitFirst, ``lean``) waits for the whole of it, from the
# first read: the app's ``Settings.body_seconds`` (QUAYGATE_BODY_SECONDS, BODY_SECONDS by default, kept
# in ``app.state.body_seconds`` by create_app), BIG_BODY_FACTOR times it for a route with a body limit
# of its own above the app's (a batch of rights, a face capture: the same slow link takes longer to carry
# it); an endpoint sets its own with ``read_within`` (the ban feed), which it keeps whatever the setting,
# and a route's ``body_seconds`` may be set on it. Past it: 408 ``body_timeout``, nothing done.
BODY_SECONDS = DEFAULT_BODY_SECONDS
BIG_BODY_FACTOR = 3
_APP_BODY_BYTES = 1024 * 1024  # Settings.max_body_bytes, the limit of a route without one of its own
# The 408 as a route declares it (STYLE.md #9): AdmitFirst's routes, and those reading a form with read_form.
BODY_TIMEOUT_RESPONSE = {**problem_responses(408)[408], "description": "Request timeout: the body did not come "
                         "within the route's deadline (`body_timeout`)"}

log = logging.getLogger(__name__)

_Endpoint = typing.TypeVar("_Endpoint", bound=Callable[..., Any])


class ExactRoutes(BaseRoute):
    def __init__(self, routes: Iterable[APIRoute], lean: Mapping[tuple[str, str], LeanHandler] | None = None,
                 admit: Mapping[tuple[str, str], Admit] | None = None,
                 again: Mapping[tuple[str, str], Again] | None = None) -> None:
        self._index: dict[tuple[str, str], APIRoute] = {}
        self._direct: dict[int, ASGIApp] = {}  # id(route) -> the endpoint as Starlette calls one
        routes = list(routes)
        for key in [*(lean or {}), *(admit or {}), *(again or {})]:
            if not any(key[0] in (r.methods or ()) and key[1] == r.path for r in routes):
                raise ValueError(f"a lean handler, admit or again for {key}, which is not one of these routes")
        for key in again or {}:
            if key not in (lean or {}):
                raise ValueError(f"again for {key}, which has no lean handler to read its body")
        for route in routes:
            handler = _for(route, lean)
            app = lean_app(route, handler, _for(route, again)) if handler is not None else direct(route)
            check = _for(route, admit)
            if check is not None:
                app = admitted(app or route.handle, check)
            if app is not None:
                self._direct[id(route)] = app
            if route.param_convertors:
                raise ValueError(f"{route.path} has path parameters: it cannot be looked up exactly")
            for method in route.methods or ():
                key = (method, route.path)
                if key in self._index:
                    raise ValueError(f"{method} {route.path} is given twice")
                self._index[key] = route
        self.path_format = None  # FastAPI's telemetry reads it here; handle gives the chosen route's own
        self.include_in_schema = False

    @classmethod
    def of(cls, routers: Iterable[Any], wanted: Iterable[tuple[str, str]],
           lean: Mapping[tuple[str, str], LeanHandler] | None = None,
           admit: Mapping[tuple[str, str], Admit] | None = None,
           again: Mapping[tuple[str, str], Again] | None = None) -> ExactRoutes:
        """The routes ``wanted`` ((method, path) pairs), found in ``routers``; each must exist.
        ``lean``: the routes among them with a handler of their own (``lean_app``); ``admit``: those
        with a check on the headers before the body is read (``admitted``); ``again``: those of the
        lean ones whose caller is checked again once the body is in (``lean_app``)."""
        wanted = set(wanted)
        found = [r for router in routers for r in router.routes if isinstance(r, APIRoute)
                 and any((m, r.path) in wanted for m in r.methods or ())]
        missing = wanted - {(m, r.path) for r in found for m in r.methods or ()}
        if missing:
            raise ValueError(f"no such routes: {sorted(missing)}")
        return cls(found, lean, admit, again)

    @property
    def paths(self) -> set[tuple[str, str]]:
        return set(self._index)

    @property
    def direct_paths(self) -> set[tuple[str, str]]:
        """The (method, path) pairs called without FastAPI's request handler (``direct``, ``lean``)."""
        return {key for key, route in self._index.items() if id(route) in self._direct}

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        route = self._index.get((scope["method"], get_route_path(scope)))
        if route is None:
            return Match.NONE, {}
        return Match.FULL, {"endpoint": route.endpoint, "path_params": {}, "route": route}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = scope["route"]
        if scope.get("fastapi.telemetry") is not None:
            _route_selected(scope=scope, path=route.path_format)
        app = self._direct.get(id(route))
        if app is not None:
            await app(scope, receive, send)
        else:
            await route.handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)  # the routers answer for their own routes

    def lane(self, method: str, path: str, router: Any) -> ASGIApp | None:
        """The route's own app (``lean``, ``direct``, behind its ``admit``) as ``handle`` calls it once
        matched, with the scope FastAPI's ``router`` would have given it (the router, the route, its
        endpoint, no path parameters): for an app that serves this one route without walking its
        middleware and routers (``quaygate.app.QuaygateAPI``'s lanes). None when the route has no app of
        its own here (FastAPI's handler alone), no body limit of its own (the app's would be skipped) or
        takes a form (FastAPI's middleware closes a form's files)."""
        route = self._index.get((method, path))
        app = self._direct.get(id(route)) if route is not None else None
        if route is None or app is None or route.max_body_size is None:
            return None
        body = route.body_field
        if body is not None and isinstance(body.field_info, Form):
            return None
        endpoint = route.endpoint

        async def routed(scope: Scope, receive: Receive, send: Send) -> None:
            scope.setdefault("router", router)
            scope["route"] = route
            scope["endpoint"] = endpoint
            scope["path_params"] = {}
            # FastAPI's handler (a body this route's own handler leaves to it) asserts the middleware's
            # exit stack, which only ever closes a form's files: this route takes none, so it is never
            # entered nor needed.
            scope["fastapi_middleware_astack"] = AsyncExitStack()
            await app(scope, receive, send)

        # The route's body limit holds from the start, as the app's does on the whole stack: a body
        # announced past it is refused 413 whoever sends it, even one whose token ``admit`` refuses.
        return wrap_app_with_body_limit(routed, route.max_body_size)


def direct(route: APIRoute) -> ASGIApp | None:
    """``route``'s endpoint as Starlette calls one, when FastAPI's handler would add nothing to it: an
    ``async def`` taking the ``Request`` alone, with no dependency, returning a ``Response``; else None."""
    d = route.dependant
    if route.max_body_size is not None:
        return None  # its own body limit wraps FastAPI's handler (route.app): keep it
    if (d.dependencies or d.path_params or d.query_params or d.header_params or d.cookie_params or d.body_params
            or d.websocket_param_name or d.http_connection_param_name or d.response_param_name
            or d.background_tasks_param_name or d.security_scopes_param_name or not d.request_param_name):
        return None
    endpoint = route.endpoint
    if not inspect.iscoroutinefunction(endpoint) or len(inspect.signature(endpoint).parameters) != 1:
        return None
    try:
        hints = typing.get_type_hints(endpoint)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: leave it to FastAPI
        return None
    returned = hints.get("return")
    if hints.get(d.request_param_name) is not Request or not (
            isinstance(returned, type) and issubclass(returned, Response)):
        return None
    return request_response(endpoint)


def _for(route: APIRoute, handlers: Mapping[tuple[str, str], Any] | None) -> Any:
    return next((h for (m, path), h in (handlers or {}).items()
                 if path == route.path and m in (route.methods or ())), None)


class AdmitFirst(APIRoute):
    """A route that authenticates its caller on the headers before it reads its body: when it takes
    a body and one of its dependencies carries an ``admit`` (the API's ``require``), that ``admit`` runs
    first, so a caller without a valid token is refused (401) without the server reading and parsing a
    body of up to its limit (16 MiB for a batch). The dependency then gives what ``admit`` found,
    checked once. ``admit`` runs on a worker thread (a token's revocation may wait for Redis). The
    route's announced body limit still holds first (413 on ``Content-Length``, nothing read).
    Given to a router as its ``route_class``; FastAPI builds every route's handler, included or not,
    with ``get_route_handler``, its documented hook.

    A route without such a dependency, whose endpoint checks its caller itself, may give its endpoint
    the check with ``admit_first``; that check may answer itself (``AdmitOrAnswer``).

    Then the body is read here, whole, within its ``deadline`` (else 408, nothing done), and given to
    FastAPI's handler from memory, a failure to read it (its limit, a disconnect) met there as before.
    Once it is in, the caller admitted is checked again (on a worker thread): a dependency's
    ``admit_again``, by default ``token_again``; an endpoint's ``again`` (``admit_first``)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        # The 408 it may answer, declared as its other errors are (STYLE.md #9); taken off again below
        # when it turns out to read no body (FastAPI builds the declared responses' fields in __init__),
        # unless the route declared it itself (a body its own dependency reads with read_form).
        declared = 408 in (kwargs.get("responses") or {})
        kwargs["responses"] = {**(kwargs.get("responses") or {}), 408: BODY_TIMEOUT_RESPONSE}
        super().__init__(path, endpoint, **kwargs)
        if not (declared or self.dependant.body_params or hasattr(endpoint, "admit_first")):
            self.responses.pop(408, None)
            self.response_fields.pop(408, None)
        # The route's own deadline (``read_within``, or set on the route); None: the app's (``deadline``).
        self.body_seconds: float | None = getattr(endpoint, "body_seconds", None)
        self.big_body = (self.max_body_size or 0) > _APP_BODY_BYTES

    def deadline(self, app_seconds: float) -> float:
        """The seconds this route waits for its body, the app's deadline being ``app_seconds``
        (``Settings.body_seconds``): its own if it has one, else BIG_BODY_FACTOR times the app's for a
        route taking more than the app's body limit, else the app's."""
        if self.body_seconds is not None:
            return self.body_seconds
        return app_seconds * BIG_BODY_FACTOR if self.big_body else app_seconds

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()
        if not (self.dependant.body_params or hasattr(self.endpoint, "admit_first")):
            return handler  # no body: nothing to wait for, nothing to check again
        check: AdmitOrAnswer | None
        again: AdmitOrAnswer | None
        call = _admitting(self.dependant)
        if call is not None:
            check, again = call.admit, getattr(call, "admit_again", token_again)
        else:
            check = getattr(self.endpoint, "admit_first", None)
            again = getattr(self.endpoint, "admit_again", None)

        async def admitted_first(request: Request) -> Response:
            if check is not None:
                answer = await run_in_threadpool(check, request)
                if answer is not None:
                    return answer  # refused on the headers: the body is never read
            seconds = self.deadline(app_body_seconds(request.app))
            read = await _read_request(request, seconds)
            if read is None:
                return body_timeout(request.url.path, seconds)
            whole, replayed = read
            if again is not None and whole:
                answer = await run_in_threadpool(again, replayed)
                if answer is not None:
                    return answer  # refused now: nothing was done
            return await handler(replayed)

        return admitted_first


def app_body_seconds(app: Any) -> float:
    """The app's deadline for a body (``Settings.body_seconds``, which create_app keeps in its state);
    BODY_SECONDS for an app that keeps none."""
    return getattr(app.state, "body_seconds", BODY_SECONDS)  # type: ignore[no-any-return]


def admit_first(check: AdmitOrAnswer, *, again: AdmitOrAnswer | None = None) -> Callable[[_Endpoint], _Endpoint]:
    """An endpoint's check on the headers alone, for ``AdmitFirst`` to run before the body is read:
    for a route that checks its caller at the top of its endpoint, not in a dependency. Put below the
    route's decorator (FastAPI builds the handler when the route is declared). The endpoint still
    checks its caller itself, taking what ``check`` found from ``request.state`` when it ran.
    ``again``: the caller checked again once the body is read, for what may have changed meanwhile (a
    token's expiry, its revocation), never what was claimed once (a DPoP proof).
    Given to an endpoint that reads its body itself (a ``Request`` alone), the body is read first too."""

    def given(endpoint: _Endpoint) -> _Endpoint:
        endpoint.admit_first = check  # type: ignore[attr-defined]
        endpoint.admit_again = again  # type: ignore[attr-defined]
        return endpoint

    return given


def read_within(seconds: float) -> Callable[[_Endpoint], _Endpoint]:
    """An endpoint's own deadline for its body (``AdmitFirst.body_seconds``), in seconds, whatever the
    app's (``Settings.body_seconds``). Put below the route's decorator."""

    def given(endpoint: _Endpoint) -> _Endpoint:
        endpoint.body_seconds = seconds  # type: ignore[attr-defined]
        return endpoint

    return given


def _admitting(dependant: Any) -> Any:
    """The dependency (its callable) carrying an ``admit``, among ``dependant``'s, depth first."""
    for dependency in dependant.dependencies:
        if getattr(dependency.call, "admit", None) is not None:
            return dependency.call
        found = _admitting(dependency)
        if found is not None:
            return found
    return None


def token_again(request: Request) -> None:
    """The access token a dependency's ``admit`` (the release API's ``require``) admitted the caller
    with, checked again once the body is read: the app's verifier (``verify``, on its memo) checks
    the key is still published, the times (``exp``) against now and the revocation list. The claims
    that cannot change (signature, issuer, audience, scope) are not judged again, nor the DPoP proof,
    whose jti was claimed at admission (RFC 9449 §11.1). AuthError 401 ``invalid_token``, as
    ``require`` refuses such a token. Every token of ours names the API audience, a gate's the gate's
    too (identity.domain.claims.audiences_for): it is checked for ours in turn, as introspection does;
    its audience was judged at admission (the memo's claims check for another audience is cheap)."""
    credentials = credentials_of(request)
    if credentials is None:  # admitted without a token: not a dependency of ours
        return
    scheme = "DPoP" if credentials.scheme.lower() == "dpop" else "Bearer"
    settings = request.app.state.container.settings
    verifier = request.app.state.token_verifier
    failure = "token not accepted"
    for audience in dict.fromkeys((settings.api_audience, settings.gate_audience)):
        try:
            verifier.verify(credentials.credentials, audience=audience)
        except InvalidToken as exc:
            failure = exc.description
            if "aud" in exc.description:
                continue  # the other audience of ours (introspection's way)
            break
        else:
            return
    log.info("quaygate.admit.refused.after_body")
    raise AuthError(401, "invalid_token", failure, scheme=scheme)


async def _read_request(request: Request, seconds: float | None) -> tuple[bool, Request] | None:
    """``request``'s body read within ``seconds`` (None: no deadline): whether it was read whole, and a
    request to give the endpoint, which receives the same body from memory (then a failure met reading
    it, raised again: a body limit, FastAPI's 413). None when the body did not come in time."""
    try:
        messages, whole, failure = await _read_within(request.receive, seconds)
    except TimeoutError:
        return None
    return whole, Request(request.scope, _Replay(messages, failure, request.receive))


def body_timeout(path: str | None, seconds: float) -> Response:
    """408 ``body_timeout`` (RFC 9110 §15.5.9), with ``Connection: close``: the rest of the body, if it
    ever comes, is not read."""
    log.info("quaygate.request.refused.body_timeout")
    return problem(408, "body_timeout", f"The request body was not received within {seconds:g} seconds.",
                   instance=path, headers={"Connection": "close"}, title="Request timeout")


class BodyTimeout(Exception):
    """A form's body did not all come within ``seconds`` (``read_form``): the app answers 408
    ``body_timeout`` (``answer_body_timeout``, installed by create_app), nothing done."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body did not come within {seconds:g} seconds")
        self.seconds = seconds


def answer_body_timeout(request: Request, exc: Exception) -> Response:
    """The app's handler of BodyTimeout: ``body_timeout``."""
    return body_timeout(request.url.path, exc.seconds if isinstance(exc, BodyTimeout) else BODY_SECONDS)


async def read_form(receive: Receive, seconds: float, limit: int) -> tuple[list[Message], bytes | None]:
    """A small body (an OAuth form: RFC 6749 §3.2, RFC 7662 §2.1, RFC 7009 §2.1) read within ``seconds``,
    the app's deadline for a body (``app_body_seconds``), as AdmitFirst reads a route's declared body:
    for a body its reader takes itself, and stops reading past ``limit`` bytes. The messages read (to
    give back to whoever reads the body next) and the body, None when it is longer than ``limit`` (the
    rest is left unread) or the client left. BodyTimeout past ``seconds``: a client that sends its
    headers, then nothing, or its body a byte at a time, would hold the connection for as long as it
    liked (review 168, finding 1). A failure met reading it is raised."""
    try:
        messages, whole, failure = await _read_within(receive, seconds, limit)
    except TimeoutError:
        raise BodyTimeout(seconds) from None
    if failure is not None:
        raise failure
    return messages, b"".join(m.get("body", b"") for m in messages) if whole else None


async def request_form(request: Request, limit: int) -> bytes | None:
    """``request``'s small body (``read_form``) within the app's deadline for a body: None when it is
    longer than ``limit`` or the client left; BodyTimeout past the deadline (408 ``body_timeout``)."""
    _, body = await read_form(request.receive, app_body_seconds(request.app), limit)
    return body


def admitted(app: ASGIApp, admit: Admit) -> ASGIApp:
    """``app`` behind ``admit``: the headers checked before any of the body is read; a refusal is
    answered by the app's exception handlers, as an endpoint's would be, and the body is never read."""

    async def gated(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            admit(request)
        except Exception as exc:  # noqa: BLE001 - answered by the app's handlers, as an endpoint's would be
            refused = exc

            async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
                raise refused

            await wrap_app_handling_exceptions(refuse, request)(scope, receive, send)
            return
        await app(scope, receive, send)

    return gated


def lean_app(route: APIRoute, handler: LeanHandler, again: Again | None = None) -> ASGIApp:
    """``route`` with ``handler`` in front of FastAPI's request handler: the body is read here (within
    the route's ``deadline``, when it has one: AdmitFirst) and ``handler`` answers from it, or
    declines (None), and FastAPI's handler runs as declared, reading the same body. Exceptions raised
    by ``handler`` go to the app's exception handlers, as an endpoint's do.
    ``again``: once the whole body is in, and before either handler runs, the caller admitted on the
    headers is checked again (a token that expired while a slow client sent the body); it raises to
    refuse, answered by the app's exception handlers, nothing done."""

    deadline = getattr(route, "deadline", None)  # AdmitFirst's; another route reads without one

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seconds = deadline(app_body_seconds(scope["app"])) if deadline is not None else None
        try:
            messages, whole, failure = await _read_within(receive, seconds)
        except TimeoutError:
            await body_timeout(scope.get("path"), seconds or 0)(scope, receive, send)
            return
        if whole:
            body = b"".join(m.get("body", b"") for m in messages)
            request = Request(scope, _Replay(messages, None, receive))
            declined = False

            async def inner(scope: Scope, receive: Receive, send: Send) -> None:
                nonlocal declined
                if again is not None:
                    again(request)
                response = await handler(request, body)
                if response is None:
                    declined = True
                else:
                    await response(scope, receive, send)

            await wrap_app_handling_exceptions(inner, request)(scope, request.receive, send)
            if not declined:
                return
        await route.handle(scope, _Replay(messages, failure, receive), send)

    # The route's own body limit (FastAPI's max_body_size) holds while the body is read here, as it
    # holds in route.app: past it, reading fails, and FastAPI's handler refuses it (413).
    return wrap_app_with_body_limit(app, route.max_body_size)


async def _read_within(receive: Receive, seconds: float | None,
                       limit: int | None = None) -> tuple[list[Message], bool, BaseException | None]:
    """``_read_body`` within ``seconds`` (None: without a deadline); TimeoutError past it. asyncio's
    timeout, not anyio's cancel scope: it is on the gate verify's way, and costs half as much."""
    if seconds is None:
        return await _read_body(receive, limit)
    async with asyncio.timeout(seconds):
        return await _read_body(receive, limit)


async def _read_body(receive: Receive,
                     limit: int | None = None) -> tuple[list[Message], bool, BaseException | None]:
    """The messages of the request's body read, and whether they are the whole body; not when reading
    it failed (a body limit, a disconnect), with the failure to raise again to whoever reads it next,
    nor when it is longer than ``limit`` bytes (None: no limit), the rest left unread."""
    messages: list[Message] = []
    size = 0
    try:
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, False, None  # a disconnect: FastAPI's handler meets it as it would
            if limit is not None:
                size += len(message.get("body", b""))
                if size > limit:
                    return messages, False, None
            if not message.get("more_body", False):
                return messages, True, None
    except Exception as exc:  # noqa: BLE001 - given back to FastAPI's handler, which judges it
        return messages, False, exc


class _Replay:
    """The receive channel with what was already read from it given back first, then the failure met
    reading it (raised again), then the channel itself (a disconnect)."""

    def __init__(self, messages: list[Message], failure: BaseException | None, receive: Receive) -> None:
        self._messages = deque(messages)  # a ban feed's body may come in a thousand messages
        self._failure = failure
        self._receive = receive

    async def __call__(self) -> Message:
        if self._messages:
            return self._messages.popleft()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        return await self._receive()


def include(app: FastAPI, router: APIRouter) -> None:
    """``router``'s routes served by ``app`` as they are, where ``app.include_router`` would serve them
    through a copy FastAPI (0.165) derives again for each app, on the first request that walks past
    them: some 45 ms of CPU per router (pydantic adapters for every route), paid by the first requests
    of every server process and by every test's app. The routers here are included plainly (no prefix,
    tags, dependencies or overrides of their own), so the copy would be the same route, but for one
    thing: ``app.dependency_overrides`` does not reach these routes (nothing here uses it; a route object
    is shared by every app of the process, so it cannot point at one). A router must hold routes only, no
    router included in it."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            raise TypeError(f"{route!r}: only a router's own routes are served this way")
        app.router.routes.append(route)

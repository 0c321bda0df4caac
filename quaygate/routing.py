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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

try:  # FastAPI's OpenTelemetry hook names the matched route (http.route) when telemetry is on
    from fastapi.telemetry._api import _route_selected
except ImportError:  # pragma: no cover - another FastAPI
    def _route_selected(*, scope: Any, path: str | None, mount: bool = False) -> None:
        return None


class ExactRoutes(BaseRoute):
    def __init__(self, routes: Iterable[APIRoute]) -> None:
        self._index: dict[tuple[str, str], APIRoute] = {}
        for route in routes:
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
    def of(cls, routers: Iterable[Any], wanted: Iterable[tuple[str, str]]) -> ExactRoutes:
        """The routes ``wanted`` ((method, path) pairs), found in ``routers``; each must exist."""
        wanted = set(wanted)
        found = [r for router in routers for r in router.routes if isinstance(r, APIRoute)
                 and any((m, r.path) in wanted for m in r.methods or ())]
        missing = wanted - {(m, r.path) for r in found for m in r.methods or ()}
        if missing:
            raise ValueError(f"no such routes: {sorted(missing)}")
        return cls(found)

    @property
    def paths(self) -> set[tuple[str, str]]:
        return set(self._index)

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
        await route.handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)  # the routers answer for their own routes

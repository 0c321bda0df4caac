"""quaygate.routing.ExactRoutes: the busiest routes found by one lookup, the same routes FastAPI finds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Match

from quaygate.app import HOT_ROUTES, create_app
from quaygate.cache import MemoryCache
from quaygate.routing import ExactRoutes
from quaygate.settings import Settings

from .test_identity_ratelimit import serve
from .test_identity_support import ISSUER


def _scope(method: str, path: str, root_path: str = "") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": []}


def _fastapi_finds(app: FastAPI, method: str, path: str) -> APIRoute | None:
    """The route FastAPI's own walk picks (every route but the index, in order)."""
    for route in app.router.routes:
        if isinstance(route, ExactRoutes):
            continue
        scope = _scope(method, path)
        if hasattr(route, "_match"):  # an included router: which of its routes (FastAPI 0.165)
            match, _, found, _ = route._match(scope)
        else:
            match, child = route.matches(scope)
            found = child.get("route", route)
        if match is Match.FULL:
            return found if isinstance(found, APIRoute) else None
    return None


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    tmp = tmp_path_factory.mktemp("routing")
    return create_app(Settings(var_dir=tmp, database_url=f"sqlite:///{tmp / 'q.db'}", background_workers=False))


def test_the_index_comes_first_and_holds_every_hot_route(app: FastAPI) -> None:
    index = app.router.routes[0]
    assert isinstance(index, ExactRoutes)
    assert index.paths == set(HOT_ROUTES)


@pytest.mark.parametrize(("method", "path"), HOT_ROUTES)
def test_each_hot_route_is_the_one_fastapi_would_pick(app: FastAPI, method: str, path: str) -> None:
    index = app.router.routes[0]
    match, child = index.matches(_scope(method, path))
    assert match is Match.FULL
    route = child["route"]
    assert route is _fastapi_finds(app, method, path)  # the very object: same endpoint, model, limits
    assert child["endpoint"] is route.endpoint and child["path_params"] == {}


def test_other_methods_paths_and_scopes_fall_through(app: FastAPI) -> None:
    index = app.router.routes[0]
    assert index.matches(_scope("GET", "/oauth2/token"))[0] is Match.NONE  # FastAPI answers 405
    assert index.matches(_scope("POST", "/oauth2/token/"))[0] is Match.NONE
    assert index.matches(_scope("POST", "/api/v1/releases"))[0] is Match.NONE
    assert index.matches({"type": "websocket", "path": "/oauth2/token", "headers": []})[0] is Match.NONE
    # mounted under a prefix (root_path), the route path is what is looked up
    assert index.matches(_scope("POST", "/qg/oauth2/token", root_path="/qg"))[0] is Match.FULL


def test_the_index_refuses_what_it_cannot_look_up() -> None:
    router = APIRouter()

    @router.post("/things/{thing_id}")
    def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    @router.post("/plain")
    def plain() -> dict[str, str]:
        return {}

    with pytest.raises(ValueError, match="path parameters"):
        ExactRoutes.of([router], [("POST", "/things/{thing_id}")])
    with pytest.raises(ValueError, match="no such routes"):
        ExactRoutes.of([router], [("GET", "/plain")])
    with pytest.raises(ValueError, match="given twice"):
        ExactRoutes([r for r in router.routes if r.path == "/plain"] * 2)  # type: ignore[misc]


def test_only_plain_endpoints_are_called_without_fastapis_handler(app: FastAPI) -> None:
    """The token endpoint and the passkey login's options take the Request alone and answer a Response:
    called directly. The gate verify (a body model, a bearer dependency) and the passkey verify (a body
    model) keep FastAPI's handler, which validates their input."""
    index = app.router.routes[0]
    assert index.direct_paths == {("POST", "/oauth2/token"), ("POST", "/webauthn/authentication/options")}
    router = APIRouter()

    @router.post("/sync")
    def sync(request: Request) -> JSONResponse:
        return JSONResponse({})

    @router.post("/dict")
    async def answers_a_dict(request: Request) -> dict[str, str]:
        return {}

    @router.post("/query")
    async def takes_a_query(request: Request, q: str) -> JSONResponse:
        return JSONResponse({"q": q})

    @router.post("/plain")
    async def plain(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    found = ExactRoutes.of([router], [("POST", p) for p in ("/sync", "/dict", "/query", "/plain")])
    assert found.direct_paths == {("POST", "/plain")}


def test_the_index_is_not_in_the_openapi_document(app: FastAPI) -> None:
    spec = app.openapi()
    assert spec["paths"]["/oauth2/token"]["post"]["operationId"] == "identity_token"
    assert spec["paths"]["/gate/v1/verify"]["post"]["operationId"] == "verifyGate"


@pytest.fixture
def served(engine: sa.Engine, tmp_path: Path) -> Iterator[TestClient]:
    for app in serve(engine, tmp_path, MemoryCache()):  # the whole app, as in the rate limit tests
        yield app.http


def test_served_through_the_index_as_through_the_routers(served: TestClient) -> None:
    r = served.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=("nobody", "x"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text  # the route ran, Authlib answered
    assert r.headers["cache-control"] == "no-store"
    wrong = served.get("/oauth2/token")
    assert wrong.status_code == 405 and "POST" in wrong.headers["allow"]
    r = served.post("/gate/v1/verify", json={})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"  # the route's model
    r = served.post("/webauthn/authentication/options", json={}, headers={"Origin": ISSUER})
    assert r.status_code == 200 and r.json()["publicKey"]["userVerification"] == "required"
    # the metrics name the matched route by its template, as for any other route
    metrics = served.get("/metrics").text
    assert 'route="/oauth2/token"' in metrics and 'route="/gate/v1/verify"' in metrics
    assert 'route="unmatched"' not in metrics

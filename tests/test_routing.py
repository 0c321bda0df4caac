"""quaygate.routing.ExactRoutes: the busiest routes found by one lookup, the same routes FastAPI finds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.responses import Response
from starlette.routing import Match

from quaygate.app import HOT_ROUTES, create_app
from quaygate.cache import MemoryCache
from quaygate.routing import ExactRoutes, include
from quaygate.settings import Settings

from .aio import run_async
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
    with pytest.raises(ValueError, match="no lean handler"):  # ``again`` runs once the lean way read the body
        ExactRoutes.of([router], [("POST", "/plain")], again={("POST", "/plain"): _keyed})


def test_only_plain_endpoints_are_called_without_fastapis_handler(app: FastAPI) -> None:
    """The token endpoint and the passkey login's options take the Request alone and answer a Response:
    called directly. The gate verify has a lean handler of its own in front of FastAPI's. The passkey
    verify (a body model) keeps FastAPI's handler, which validates its input."""
    index = app.router.routes[0]
    assert index.direct_paths == {("POST", "/oauth2/token"), ("POST", "/webauthn/authentication/options"),
                                  ("POST", "/gate/v1/verify")}
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
    r = served.post("/gate/v1/verify", json={})  # the route's admit: no token, refused before the body is read
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    r = served.post("/webauthn/authentication/options", json={}, headers={"Origin": ISSUER})
    assert r.status_code == 200 and r.json()["publicKey"]["userVerification"] == "required"
    # the metrics name the matched route by its template, as for any other route
    metrics = served.get("/metrics").text
    assert 'route="/oauth2/token"' in metrics and 'route="/gate/v1/verify"' in metrics
    assert 'route="unmatched"' not in metrics


# ---- a route's lean handler (``lean_app``) ----------------------------------------------------------


class _Thing(BaseModel):
    n: int


async def _lean(request: Request, body: bytes) -> Response | None:
    """Answers a positive n itself; raises for "boom"; leaves everything else to FastAPI's handler."""
    try:
        n = json.loads(body).get("n")
    except (ValueError, AttributeError):
        return None
    if n == "boom":
        raise HTTPException(418, "the lean handler refused")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return JSONResponse({"by": "lean", "n": n})
    return None


def _things(*, lean: bool, app_limit: int | None = None, route_limit: int | None = None) -> TestClient:
    return TestClient(_things_app(lean=lean, app_limit=app_limit, route_limit=route_limit))


def _keyed(request: Request) -> None:
    """An ``admit``: the request names a key, or is refused (401) on its headers alone."""
    if request.headers.get("x-key") != "k":
        raise HTTPException(401, "no key")
    request.state.keyed = True


def _still_keyed(request: Request) -> None:
    """An ``again``: the key the request was admitted with is still good once its body is in."""
    if request.headers.get("x-key") in _WITHDRAWN:
        raise HTTPException(401, "key withdrawn")


_WITHDRAWN: set[str] = set()


def _things_app(*, lean: bool, app_limit: int | None = None, route_limit: int | None = None,
                admit: bool = False, again: bool = False) -> FastAPI:
    app = FastAPI(max_body_size=app_limit)
    router = APIRouter()

    @router.post("/things", max_body_size=route_limit)
    async def things(thing: _Thing, request: Request) -> dict[str, Any]:
        return {"by": "fastapi", "n": thing.n, **({"keyed": True} if getattr(request.state, "keyed", False) else {})}

    app.include_router(router)
    app.router.routes.insert(0, ExactRoutes.of([router], [("POST", "/things")],
                                               lean={("POST", "/things"): _lean} if lean else None,
                                               admit={("POST", "/things"): _keyed} if admit else None,
                                               again={("POST", "/things"): _still_keyed} if again else None))
    return app


@pytest.mark.parametrize("lean", [True, False])
def test_an_admit_refuses_on_the_headers_before_any_of_the_body_is_read(lean: bool) -> None:
    app = _things_app(lean=lean, admit=True)

    def call(headers: list[tuple[bytes, bytes]]) -> tuple[int, list[dict[str, Any]], bytes]:
        received: list[dict[str, Any]] = []
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            message = {"type": "http.request", "body": b'{"n": -3}', "more_body": False}
            received.append(message)
            return message

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/things", "raw_path": b"/things", "root_path": "", "query_string": b"",
                 "headers": [(b"content-type", b"application/json"), *headers], "server": ("test", 80),
                 "client": ("test", 1)}
        run_async(app, scope, receive, send)  # in a thread of its own: the suite may leave a loop running here
        return sent[0]["status"], received, b"".join(m.get("body", b"") for m in sent[1:])

    status, received, _ = call([])
    assert (status, received) == (401, [])  # refused, and not one message of the body read
    status, received, body = call([(b"x-key", b"k")])  # admitted: read, and what admit found is there
    assert status == 200 and len(received) == 1 and json.loads(body) == {"by": "fastapi", "n": -3, "keyed": True}


@pytest.mark.parametrize("content", [b'{"n": 3}', b'{"n": -3}'], ids=["lean answers", "fastapi answers"])
def test_again_checks_the_caller_once_the_body_is_in_before_either_handler(
        content: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate verify's ``again`` (quaygate/app.py): a key admitted on the headers, withdrawn by the
    time the body is in, is refused then, whichever handler would have answered."""
    client = TestClient(_things_app(lean=True, admit=True, again=True))
    headers = {"content-type": "application/json", "x-key": "k"}
    monkeypatch.setattr(f"{__name__}._WITHDRAWN", {"k"})
    r = client.post("/things", content=content, headers=headers)
    assert (r.status_code, r.json()) == (401, {"detail": "key withdrawn"})
    monkeypatch.setattr(f"{__name__}._WITHDRAWN", set())
    assert client.post("/things", content=content, headers=headers).json()["by"] == (
        "lean" if content == b'{"n": 3}' else "fastapi")


def test_a_lean_handler_answers_what_it_is_sure_of() -> None:
    assert _things(lean=True).post("/things", json={"n": 3}).json() == {"by": "lean", "n": 3}
    assert _things(lean=False).post("/things", json={"n": 3}).json() == {"by": "fastapi", "n": 3}


def test_a_body_sent_in_parts_is_read_whole() -> None:
    r = _things(lean=True).post("/things", content=iter([b'{"n"', b": 4", b"}"]),
                                headers={"content-type": "application/json"})
    assert r.json() == {"by": "lean", "n": 4}


@pytest.mark.parametrize("content", [b'{"n": -1}', b'{"n": "x"}', b'{"n": ', b"", b"[1]", b'{"m": 1}'])
def test_what_the_lean_handler_declines_fastapi_answers_from_the_same_body(content: bytes) -> None:
    headers = {"content-type": "application/json"}
    lean = _things(lean=True).post("/things", content=content, headers=headers)
    plain = _things(lean=False).post("/things", content=content, headers=headers)
    assert (lean.status_code, lean.json()) == (plain.status_code, plain.json())
    if content == b'{"n": -1}':
        assert lean.json() == {"by": "fastapi", "n": -1}  # the body reached FastAPI's handler whole


def test_an_exception_in_the_lean_handler_goes_to_the_apps_handlers() -> None:
    r = _things(lean=True).post("/things", json={"n": "boom"})
    assert (r.status_code, r.json()) == (418, {"detail": "the lean handler refused"})


@pytest.mark.parametrize("where", ["app", "route"])
def test_body_limits_hold_on_the_lean_way(where: str) -> None:
    limits = {"app_limit": 40} if where == "app" else {"route_limit": 40}
    big = json.dumps({"n": 5, "pad": "x" * 100})
    for lean in (True, False):
        client = _things(lean=lean, **limits)
        r = client.post("/things", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413, (lean, r.text)
        assert client.post("/things", json={"n": 5}).json()["n"] == 5


def test_a_server_that_built_its_own_container_freezes_its_start_up_objects_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """quaygate/app.py: after start-up, a server leaves its start-up objects out of full collections;
    not an app given its container, nor one told not to (the tests' own process)."""
    import gc
    import subprocess
    import sys

    from quaygate import app as app_module
    from quaygate.container import Container

    frozen: list[bool] = []
    monkeypatch.setattr(app_module, "_freeze_startup_objects", lambda: frozen.append(True))
    from quaygate.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    for gc_freeze, expected in ((True, [True]), (False, [])):
        frozen.clear()
        settings = Settings(var_dir=tmp_path, database_url=url, background_workers=False, gc_freeze=gc_freeze)
        with TestClient(create_app(settings)) as http:
            assert http.get("/healthz").status_code == 200
        assert frozen == expected, gc_freeze
    settings = Settings(var_dir=tmp_path, database_url=url, background_workers=False, gc_freeze=True)
    frozen.clear()
    with TestClient(create_app(settings, container=Container.build(settings))) as http:
        assert http.get("/healthz").status_code == 200
    assert frozen == []
    assert gc.get_freeze_count() == 0  # this process never froze anything
    # The freeze itself, in a process of its own: objects alive then are left out, later ones are not.
    code = ("import gc; from quaygate.app import _freeze_startup_objects; kept = [object() for _ in range(5)]; "
            "_freeze_startup_objects(); assert gc.get_freeze_count() > 1000, gc.get_freeze_count(); "
            "assert not any(o is kept for o in gc.get_objects())")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)  # noqa: S603 - our own code


def test_a_router_s_routes_are_served_as_they_are_and_a_nested_router_is_refused() -> None:
    """quaygate.routing.include: the app serves the router's own route objects (no copy FastAPI derives
    per app on the first request), with the app's body limit still over them, and refuses a router with
    another included in it, whose prefix, tags or dependencies a plain copy would drop."""
    router = APIRouter(prefix="/r")

    @router.post("/echo")
    def echo(body: dict[str, str]) -> dict[str, str]:
        return body

    app = FastAPI(max_body_size=64)
    include(app, router)
    assert app.router.routes[-1] is router.routes[0]
    with TestClient(app) as http:
        assert http.post("/r/echo", json={"a": "b"}).json() == {"a": "b"}
        assert http.post("/r/echo", json={"a": "b" * 100}).status_code == 413

    outer = APIRouter(tags=["outer"])
    outer.include_router(router)
    with pytest.raises(TypeError, match="only a router's own routes"):
        include(FastAPI(), outer)

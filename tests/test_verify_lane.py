"""The gate verify's lane (quaygate/app.py ``QuaygateAPI``): POST /gate/v1/verify served from the
outermost call, past FastAPI's middleware and routers, with the app's own middleware (request id,
metrics, rate limits) and exception handlers as on any route. These tests show the lane is taken and
that what a caller sees on it is what the whole stack gives: the request id, the metrics series, the
refusals as problem JSON (a server error too), FastAPI's own handler for a body the lean handler
leaves to it; and that the whole stack serves it when telemetry is on or under a root path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from quaygate.app import create_app
from quaygate.cache import MemoryCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.routing import ExactRoutes
from quaygate.settings import Settings
from release_service.api import gate as gate_api

from .test_gate_verify import Gate, serve
from .test_release_api import assert_problem

VERIFY = "/gate/v1/verify"


@pytest.fixture
def gate(engine: sa.Engine, tmp_path: Path) -> Iterator[Gate]:
    yield from serve(engine, tmp_path)


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths FastAPI's router matched against the exact-path index (its walk's first step)."""
    seen: list[str] = []
    matches = ExactRoutes.matches

    def counted(self: ExactRoutes, scope: Any) -> Any:
        seen.append(scope["path"])
        return matches(self, scope)

    monkeypatch.setattr(ExactRoutes, "matches", counted)
    return seen


def _lanes(http: TestClient) -> dict[tuple[str, str], Any]:
    return http.app._lane_apps or {}  # type: ignore[attr-defined]


def test_the_verify_takes_its_lane_and_other_routes_the_whole_stack(gate: Gate, walks: list[str]) -> None:
    gate.pickable(1)
    assert ("POST", VERIFY) in _lanes(gate.http)
    r = gate.verify(gate.body(1))
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == "allow"
    assert VERIFY not in walks  # never matched by the router: served by its lane
    assert gate.http.get("/healthz").status_code == 200
    assert "/healthz" in walks  # the rest walks FastAPI's routers as before


def test_on_the_lane_the_request_id_and_the_metrics_are_kept(gate: Gate) -> None:
    gate.pickable(2)
    headers = {"Authorization": f"Bearer {gate.gate_token}", "X-Request-Id": "lane-test-42"}
    r = gate.http.post(VERIFY, json=gate.body(2), headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "lane-test-42"
    given = gate.http.post(VERIFY, json=gate.body(2), headers={"Authorization": headers["Authorization"]})
    assert len(given.headers["x-request-id"]) == 32  # one made when none came
    metrics = gate.http.get("/metrics").text
    served = [line for line in metrics.splitlines() if line.startswith("quaygate_http_requests_total{")
              and f'route="{VERIFY}"' in line and 'status="200"' in line]
    assert served and float(served[0].rsplit(" ", 1)[1]) >= 2, served


def test_on_the_lane_refusals_are_problem_json(gate: Gate) -> None:
    """No token (the admit on the headers), a body over the route's limit (Starlette's 413 made problem
    JSON), a body that is no JSON and one that breaks the schema (FastAPI's handler, which the lean
    handler leaves them to, and which asserts the middleware's exit stack)."""
    assert_problem(gate.http.post(VERIFY, json=gate.body(3)), 401, "invalid_request")
    auth = {"Authorization": f"Bearer {gate.gate_token}", "content-type": "application/json"}
    too_big = gate_api.IMAGE_BODY_BYTES + 1
    assert_problem(gate.http.post(VERIFY, content=b"{" + b" " * (too_big - 2) + b"}", headers=auth),
                   413, "body_too_large")
    assert_problem(gate.http.post(VERIFY, content=b"{not json", headers=auth), 400, "malformed_json")
    wrong = {**gate.body(3), "mode": "maybe"}
    assert_problem(gate.http.post(VERIFY, content=json.dumps(wrong), headers=auth), 422, "invalid_request")


def test_on_the_lane_a_failure_is_a_500_problem_and_counted(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's handler for an unexpected failure answers it (problem JSON, nothing of the exception),
    and the metrics count a 500 on the route, as on the whole stack."""
    gate.pickable(4)

    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("secret detail of the failure")

    monkeypatch.setattr(gate_api, "_verify", broken)
    quiet = TestClient(gate.http.app, raise_server_exceptions=False)
    r = quiet.post(VERIFY, json=gate.body(4), headers={"Authorization": f"Bearer {gate.gate_token}"})
    assert_problem(r, 500, "internal_error")
    assert "secret detail" not in r.text
    metrics = quiet.get("/metrics").text
    assert any(line.startswith("quaygate_http_requests_total{") and f'route="{VERIFY}"' in line
               and 'status="500"' in line for line in metrics.splitlines())


def _app(engine: sa.Engine, tmp_path: Path, **kwargs: Any) -> Any:
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        background_workers=False)
    c = Container(settings=settings, engine=engine, cache=MemoryCache(),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    return create_app(settings, container=c)


def test_with_fastapis_telemetry_on_there_is_no_lane(engine: sa.Engine, tmp_path: Path,
                                                      walks: list[str]) -> None:
    """FastAPI's native telemetry (OpenTelemetry) sees every request through its own middleware: with
    it on when the app starts, the verify walks the whole stack."""
    app = _app(engine, tmp_path)
    app._native_telemetry.enabled = lambda: True
    with TestClient(app) as http:
        http.post(VERIFY, json={})
        assert _lanes(http) == {}
    assert VERIFY in walks


def test_under_a_root_path_the_verify_walks_the_whole_stack(engine: sa.Engine, tmp_path: Path,
                                                            walks: list[str]) -> None:
    app = _app(engine, tmp_path)
    with TestClient(app, root_path="/port") as http:
        r = http.post(f"/port{VERIFY}", json={})
        assert_problem(r, 401, "invalid_request")
    assert f"/port{VERIFY}" in walks

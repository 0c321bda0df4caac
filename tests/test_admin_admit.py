"""The identity admin routes with a body check their caller on the headers before any of the body is
read (identity.api.admin ``admits``, quaygate/routing.py AdmitFirst): without an admin token, nobody
makes the server read and parse up to 1 MiB. Requests go straight through ASGI, counting the body's
messages the app read (tests/aio.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute

from identity.api import admin, badges, bans, face, passkeys
from quaygate.routing import AdmitFirst
from release_service.api import gate_policy
from tests.aio import chunks_of, post_counting_body
from tests.factories import TERMINAL
from tests.test_identity_grants_support import Lifecycle, make_lifecycle

SOME_ID = "00000000-0000-4000-8000-000000000001"  # fixed: it names no one, and the tests' ids stay stable
_JUNK = b'{"given_name": "' + b"A" * 400_000 + b'", ]'  # 400 KB that is not even JSON: parsing it is the aim

# Every identity admin route taking a body (POST), by the path it is called at here.
ROUTES = {
    "/admin/v1/initial-access-tokens": "/admin/v1/initial-access-tokens",
    "/admin/v1/clients": "/admin/v1/clients",
    "/admin/v1/persons": "/admin/v1/persons",
    "/admin/v1/persons/{person_id}/memberships": f"/admin/v1/persons/{SOME_ID}/memberships",
    "/admin/v1/organisations": "/admin/v1/organisations",
    "/admin/v1/organisations/{organisation_id}:deactivate": f"/admin/v1/organisations/{SOME_ID}:deactivate",
    "/admin/v1/organisations/{organisation_id}:reactivate": f"/admin/v1/organisations/{SOME_ID}:reactivate",
    "/admin/v1/badges": "/admin/v1/badges",
    "/admin/v1/badges/{badge_id}/status": f"/admin/v1/badges/{SOME_ID}/status",
    "/admin/v1/badges/{badge_id}/renew": f"/admin/v1/badges/{SOME_ID}/renew",
    "/admin/v1/badges/{badge_id}/activations": f"/admin/v1/badges/{SOME_ID}/activations",
    "/admin/v1/badges/{badge_id}/activations/{terminal}:withdraw":
        f"/admin/v1/badges/{SOME_ID}/activations/{TERMINAL}:withdraw",
    "/admin/v1/persons/{person_id}/enrolment-codes": f"/admin/v1/persons/{SOME_ID}/enrolment-codes",
}


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path)


def _post(env: Lifecycle, path: str, headers: dict[str, str]) -> tuple[int, int, Any, Any]:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return post_counting_body(env.app, path, _JUNK, raw)


def _token(env: Lifecycle, role: str) -> dict[str, str]:
    client_id, secret, _ = env.machine(role)
    return {"Authorization": f"Bearer {env.machine_token(client_id, secret)}"}


def test_every_identity_admin_route_with_a_body_checks_its_caller_first() -> None:
    """The list the tests below go through is every such route: a new one without a check on its
    headers (``admits``) fails here."""
    taking = [r for router in (admin.router, badges.router, passkeys.router, bans.router, face.router,
                               gate_policy.router)
              for r in router.routes if isinstance(r, APIRoute) and r.path.startswith("/admin/v1")
              and (r.dependant.body_params or r.path == "/admin/v1/bans/feeds")]  # the feed reads its own
    for route in taking:
        assert isinstance(route, AdmitFirst), route.path
        assert getattr(route.endpoint, "admit_first", None) is not None, route.path
    found = {r.path for r in taking} - {"/admin/v1/bans/feeds",  # these two: tests/test_face_admit.py
                                        "/admin/v1/persons/{person_id}/face",
                                        "/admin/v1/terminals/{code}/gate-policy"}  # a PUT: its own test below
    assert found == set(ROUTES)


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_a_caller_without_an_admin_token_is_refused_before_any_of_the_body_is_read(env: Lifecycle, path: str) -> None:
    """401 without a token or with a bad one, 403 with another party's token: the route's own answer
    and challenge, not one message of the body read. An admin client's token has the whole body read
    and judged as before (400 malformed_json)."""
    url = ROUTES[path]
    for headers, status, code in (({}, 401, "invalid_request"),
                                  ({"Authorization": "Bearer not.a.token"}, 401, "invalid_token"),
                                  (_token(env, "shipping_line"), 403, "insufficient_scope")):
        got, read, answer_headers, answer = _post(env, url, headers)
        assert (got, read, answer["code"]) == (status, 0, code), (path, answer)
        assert answer_headers["www-authenticate"].startswith(f'Bearer error="{code}"'), answer_headers
        assert answer_headers["content-type"].startswith("application/problem+json")
    got, read, _, answer = _post(env, url, _token(env, "admin"))
    assert (got, read, answer["code"]) == (400, len(chunks_of(_JUNK)), "malformed_json"), (path, answer)


def test_a_gate_policy_change_is_refused_before_any_of_its_body_is_read(env: Lifecycle) -> None:
    """PUT /admin/v1/terminals/{code}/gate-policy (port security's): the same check on the headers first."""
    url = f"/admin/v1/terminals/{TERMINAL}/gate-policy"
    for headers, status, code in (({}, 401, "invalid_request"),
                                  ({"Authorization": "Bearer not.a.token"}, 401, "invalid_token"),
                                  (_token(env, "shipping_line"), 403, "insufficient_scope")):
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        got, read, _, answer = post_counting_body(env.app, url, _JUNK, raw, method="PUT")
        assert (got, read, answer["code"]) == (status, 0, code), answer
    raw = [(k.lower().encode(), v.encode()) for k, v in _token(env, "admin").items()]
    got, read, _, answer = post_counting_body(env.app, url, _JUNK, raw, method="PUT")
    assert (got, read, answer["code"]) == (400, len(chunks_of(_JUNK)), "malformed_json"), answer

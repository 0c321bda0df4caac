"""The identity admin routes with a body check their caller on the headers before any of the body is
read (identity.api.admin ``admits``, quaygate/routing.py AdmitFirst): without an admin token, nobody
makes the server read and parse up to 1 MiB. So do the other identity routes whose caller the headers
name: dynamic client registration and its update (RFC 7591/7592: a bearer token) and the passkey
account route (a login session). Every identity route taking a body either does, or is listed with
why it cannot (its caller is in its body). Requests go straight through ASGI, counting the body's
messages the app read (tests/aio.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute

from identity.api import admin, badges, bans, broker, face, management, passkeys
from identity.api.audit_search import router as audit_search_router
from identity.api.routes import build_router
from identity.domain.assurance import ACR_PASSKEY, AMR_PASSKEY
from identity.registration import management_for
from identity.sessions import sessions_for
from identity.web import console
from identity.web import routes as web
from quaygate.routing import AdmitFirst
from release_service.api import gate_policy
from tests.aio import chunks_of, post_counting_body
from tests.factories import TERMINAL
from tests.test_identity_grants_support import Lifecycle, make_lifecycle
from tests.test_identity_support import ISSUER, add_org

SOME_ID = "00000000-0000-4000-8000-000000000001"  # fixed: it names no one, and the tests' ids stay stable
_JUNK = b'{"given_name": "' + b"A" * 400_000 + b'", ]'  # 400 KB that is not even JSON: parsing it is the aim

# Every identity admin route taking a body (POST), by the path it is called at here.
ROUTES = {
    "/admin/v1/initial-access-tokens": "/admin/v1/initial-access-tokens",
    "/admin/v1/clients": "/admin/v1/clients",
    "/admin/v1/clients/{client_id}/secret": "/admin/v1/clients/some-client/secret",
    "/admin/v1/persons": "/admin/v1/persons",
    "/admin/v1/persons/{person_id}/memberships": f"/admin/v1/persons/{SOME_ID}/memberships",
    "/admin/v1/organisations": "/admin/v1/organisations",
    "/admin/v1/organisations/{organisation_id}:deactivate": f"/admin/v1/organisations/{SOME_ID}:deactivate",
    "/admin/v1/organisations/{organisation_id}:reactivate": f"/admin/v1/organisations/{SOME_ID}:reactivate",
    "/admin/v1/persons/{person_id}:suspend": f"/admin/v1/persons/{SOME_ID}:suspend",
    "/admin/v1/persons/{person_id}:reinstate": f"/admin/v1/persons/{SOME_ID}:reinstate",
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


# Every identity route taking a body whose caller its headers cannot name, and why: these read the
# body before they know who sends it. Any other route with a body checks its caller first.
CALLER_IN_THE_BODY = {
    ("POST", "/oauth2/token"): "client authentication may be in the body (client_secret_post, "
                               "private_key_jwt: RFC 6749 §2.3.1, RFC 7523 §2.2)",
    ("POST", "/oauth2/par"): "client authentication may be in the body, as at the token endpoint (RFC 9126 §2)",
    ("POST", "/oauth2/introspect"): "client authentication may be in the body (RFC 7662 §2.1)",
    ("POST", "/oauth2/revoke"): "client authentication may be in the body (RFC 7009 §2.1)",
    ("POST", "/oauth2/userinfo"): "the access token may be in the form body (RFC 6750 §2.2, OIDC Core §5.3.1)",
    ("POST", "/oauth2/authorize"): "the authorization request is the body; a browser, logged in or not",
    ("POST", "/oauth2/logout"): "id_token_hint is in the body; a browser, logged in or not",
    ("POST", "/webauthn/authentication/options"): "nobody yet: a login starts here (its body is not read)",
    ("POST", "/webauthn/authentication/verify"): "the passkey's signature over the flow's challenge, in the body",
    ("POST", "/webauthn/registration/options"): "an enrolment code in the body, else the session",
    ("POST", "/webauthn/registration/verify"): "the flow (and the enrolment code it was opened with), in the body",
    ("POST", "/lang"): "nobody: a language cookie",
}
# Routes with a method that may carry a body, which read none.
NO_BODY = {("POST", "/admin/v1/clients/{client_id}:deactivate")}


def test_every_identity_route_with_a_body_checks_its_caller_first_or_says_why_it_cannot() -> None:
    """Every POST, PUT and PATCH of identity's routers: an AdmitFirst route with a check on the headers
    (``admit_first``), or listed above with the reason its caller is known only from its body."""
    routers = (admin.router, badges.router, passkeys.router, bans.router, face.router, management.router,
               build_router(), web.router, console.router, broker.router, audit_search_router)
    taking = {(m, r.path): r for router in routers for r in router.routes if isinstance(r, APIRoute)
              for m in r.methods & {"POST", "PUT", "PATCH"}}
    unchecked = {key for key, r in taking.items()
                 if not (isinstance(r, AdmitFirst) and getattr(r.endpoint, "admit_first", None) is not None)}
    assert unchecked - NO_BODY == set(CALLER_IN_THE_BODY), sorted(unchecked - NO_BODY ^ set(CALLER_IN_THE_BODY))
    assert NO_BODY <= unchecked and not any(taking[key].dependant.body_params for key in NO_BODY)
    for key in [("POST", "/oauth2/register"), ("PUT", "/oauth2/register/{client_id}"),
                ("PATCH", "/account/passkeys/{credential_id}")]:
        assert key not in unchecked, key


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def _iat(env: Lifecycle) -> str:
    """An initial access token for a shipping line (RFC 7591 §3)."""
    token, _ = management_for(env.app).create_initial_access_token(
        organisation_id=add_org(env.engine, "shipping_line"), created_by="qg-admin-test", ttl=None,
        now=datetime.now(UTC))
    return token


def test_a_registration_without_a_live_initial_access_token_is_refused_before_its_metadata_is_read(
        env: Lifecycle) -> None:
    """RFC 7591 §3: the initial access token on the headers; refused 401 with its challenge, as
    before, and not one message of the body read. A live one has the whole body read and judged."""
    used = _iat(env)
    doc = {"client_name": "Line", "grant_types": ["client_credentials"]}
    assert env.http.post("/oauth2/register", json=doc, headers={"Authorization": f"Bearer {used}"}).status_code == 201
    for headers in ({}, {"Authorization": "Bearer qgiat_nobody"}, {"Authorization": f"Bearer {used}"}):
        got, read, answer_headers, answer = post_counting_body(env.app, "/oauth2/register", _JUNK, _raw(headers))
        assert (got, read, answer["error"]) == (401, 0, "invalid_token"), (headers, answer)
        assert answer_headers["www-authenticate"] == 'Bearer error="invalid_token"'
    live = _iat(env)
    got, read, _, answer = post_counting_body(env.app, "/oauth2/register", _JUNK,
                                              _raw({"Authorization": f"Bearer {live}"}))
    assert (got, read, answer["error"]) == (400, len(chunks_of(_JUNK)), "invalid_client_metadata"), answer
    r = env.http.post("/oauth2/register", json=doc, headers={"Authorization": f"Bearer {live}"})
    assert r.status_code == 201, r.text  # refused for its metadata, the token stayed unused


def test_a_client_update_without_its_registration_access_token_is_refused_before_its_metadata_is_read(
        env: Lifecycle) -> None:
    """RFC 7592 §2.2: PUT /oauth2/register/{id} with the client's registration access token."""
    doc = {"client_name": "Line", "grant_types": ["client_credentials"]}
    r = env.http.post("/oauth2/register", json=doc, headers={"Authorization": f"Bearer {_iat(env)}"})
    assert r.status_code == 201, r.text
    client_id, rat = r.json()["client_id"], r.json()["registration_access_token"]
    url = f"/oauth2/register/{client_id}"
    for headers in ({}, {"Authorization": "Bearer qgrat_nobody"}, {"Authorization": f"Bearer {_iat(env)}"}):
        got, read, answer_headers, answer = post_counting_body(env.app, url, _JUNK, _raw(headers), method="PUT")
        assert (got, read, answer["error"]) == (401, 0, "invalid_token"), (headers, answer)
        assert answer_headers["www-authenticate"] == 'Bearer error="invalid_token"'
    got, read, _, answer = post_counting_body(env.app, url, _JUNK, _raw({"Authorization": f"Bearer {rat}"}),
                                              method="PUT")
    assert (got, read, answer["error"]) == (400, len(chunks_of(_JUNK)), "invalid_client_metadata"), answer


def test_a_passkey_rename_without_a_session_from_our_page_is_refused_before_its_body_is_read(
        env: Lifecycle) -> None:
    """PATCH /account/passkeys/{id}: our Origin (the CSRF guard, 403 ``origin_refused``) and a live login
    session (401 ``login_required``), on the headers; with both, the body is read and judged."""
    cookie, _ = sessions_for(env.app).create(env.person(), acr=ACR_PASSKEY, amr=AMR_PASSKEY, now=datetime.now(UTC))
    session = f"{env.container.settings.session_cookie}={cookie}"
    url = "/account/passkeys/some-credential"
    for headers, status, code in (({"Cookie": session}, 403, "origin_refused"),
                                  ({"Cookie": session, "Origin": "https://elsewhere.example"}, 403, "origin_refused"),
                                  ({"Origin": ISSUER}, 401, "login_required"),
                                  ({"Origin": ISSUER, "Cookie": f"{env.container.settings.session_cookie}=gone"},
                                   401, "login_required")):
        got, read, answer_headers, answer = post_counting_body(env.app, url, _JUNK, _raw(headers), method="PATCH")
        assert (got, read, answer["code"]) == (status, 0, code), (headers, answer)
        assert answer_headers["content-type"].startswith("application/problem+json")
    got, read, _, answer = post_counting_body(env.app, url, _JUNK, _raw({"Origin": ISSUER, "Cookie": session}),
                                              method="PATCH")
    assert (got, read, answer["code"]) == (400, len(chunks_of(_JUNK)), "malformed_json"), answer

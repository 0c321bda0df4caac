"""Review 157, finding 2: a NUL in what a browser brings back left its refusal unaudited on PostgreSQL.

The broker copied the callback's ``error`` and ``error_description``, the upstream name from the path and
the token endpoint's ``error`` into the refusal's audit data; PostgreSQL's jsonb refuses ``\\u0000``, so
the audit write failed (DataError, a 422 problem): no audit row, no refusal page, the flow's binding cookie
kept, although every callback refusal is audited (docs/itsme.md). ``/broker/it%00sme/callback`` needed no
flow at all. Now control characters (and lone surrogates) reach the trail escaped (identity.audit
``printable``): the refusal is audited, the browser gets its page, the cookie is cleared. The logout's
confirmation carried a ``client_id`` into the audit entry's actor the same way.

Against the real upstream (oidc-provider, tests/upstream) and on SQLite and PostgreSQL (``engine``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from identity.sessions import sessions_for
from quaygate.schema import audit_log
from tests.test_identity_code_flow_support import Flow, make_flow
from tests.test_identity_support import ISSUER, utcnow
from tests.upstream.world import World, build_world

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("broker")]


@pytest.fixture
def world(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from build_world(engine, tmp_path)


def _refused_page(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text[:400]
    assert response.headers["content-type"].startswith("text/html"), response.text[:400]
    assert f'data-code="{code}"' in response.text
    cleared = [c for c in response.headers.get_list("set-cookie") if c.startswith("qg_broker=")]
    assert cleared and "Max-Age=0" in cleared[0], response.headers.get_list("set-cookie")


def test_an_upstream_error_holding_a_nul_is_audited_and_answered_with_the_refusal_page(world: World) -> None:
    """The reviewer's proof: ``error=access_denied\\x00`` with this browser's valid state."""
    with world.browser() as browser:
        state = httpx.URL(world.callback_url(browser, "jan")).params["state"]
        response = browser.get(f"{world.app.base}/broker/itsme/callback",
                               params={"error": "access_denied\x00", "error_description": "gone\x00\x1b[31m",
                                       "state": state, "iss": world.upstream.issuer})
    _refused_page(response, 401, "upstream_error")
    assert world.refusals() == [{"upstream": "itsme", "code": "upstream_error",
                                 "detail": "access_denied\\u0000: gone\\u0000\\u001b[31m"}]
    assert world.sessions() == []


def test_an_upstream_name_holding_a_nul_is_audited_without_a_flow(world: World) -> None:
    with world.browser() as browser:
        response = browser.get(f"{world.app.base}/broker/it%00sme/callback", params={"code": "c", "state": "s"})
    _refused_page(response, 404, "upstream_unknown")
    assert world.refusals() == [{"upstream": "it\\u0000sme", "code": "upstream_unknown", "detail": "not configured"}]


class _TokenError(httpx.BaseTransport):
    """The real upstream, except that its token endpoint answers an error code holding a NUL."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(400, content=json.dumps({"error": "invalid_grant\x00"}).encode(),
                                  headers={"content-type": "application/json"})
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_a_token_endpoint_error_holding_a_nul_is_audited(world: World) -> None:
    world.tamper.inner = _TokenError(world.tamper.inner)  # type: ignore[assignment]
    with world.browser() as browser:
        response = world.login(browser, "jan")
    _refused_page(response, 401, "upstream_token_refused")
    assert world.refusals() == [{"upstream": "itsme", "code": "upstream_token_refused",
                                 "detail": "invalid_grant\\u0000"}]


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from make_flow(engine, tmp_path)


def test_a_confirmed_logout_naming_a_client_id_holding_a_nul_ends_the_session_and_is_audited(flow: Flow) -> None:
    """The logout's confirmation page carries the request's ``client_id`` back in its form, and the
    confirmed logout names it in the audit entry's actor: with a NUL, the entry failed on PostgreSQL
    and the session stayed live."""
    flow.login(flow.person())
    cookie = flow.http.cookies.get(flow.container.settings.session_cookie)
    ask = flow.http.get("/oauth2/logout", params={"client_id": "app\x00"}, follow_redirects=False)
    assert ask.status_code == 200 and 'method="post"' in ask.text
    done = flow.http.post("/oauth2/logout", data={"client_id": "app\x00"}, headers={"Origin": ISSUER},
                          follow_redirects=False)
    assert done.status_code == 200, done.text[:400]
    assert sessions_for(flow.app).get(cookie, now=utcnow()) is None
    with flow.container.engine.connect() as conn:
        actors = conn.execute(sa.select(audit_log.c.actor).where(audit_log.c.kind == "identity.logout")).scalars()
        assert [a["client_id"] for a in actors] == ["app\\u0000"]

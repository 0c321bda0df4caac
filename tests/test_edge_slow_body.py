"""A slow client at the edge (quaygate/routing.py AdmitFirst, ``lean_app``): a caller admitted on its
headers is checked again once its body is in, and a body that does not come in time is refused.

- A token revoked, or expired, while the body comes is refused 401 ``invalid_token`` once it is in,
  and nothing is written: on the release API (its ``require``: routing's ``token_again``) and on the
  identity admin API (``admits``: identity.api.admin ``token_again``).
- A body that stalls past its route's deadline is refused 408 ``body_timeout`` (problem JSON,
  ``Connection: close``) and nothing is done: on both APIs, the ban feed and the gate verify.

The app is the whole app on the real database and a real Redis (the revocation list); requests go
straight through ASGI from a client that sends its body in pieces, at its own pace (tests/aio.py).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute
from joserfc import jws

from identity.api import admin as admin_api
from identity.api import bans as bans_api
from identity.bootstrap import create_client, provider_for
from identity.tokens import sign_access_token
from quaygate.cache import RedisCache
from quaygate.schema import audit_log, gate_decisions, persons, releases
from quaygate.settings import Settings
from release_service.api import gate as gate_api
from release_service.api import routes as release_api
from tests.aio import chunks_of, post_counting_body
from tests.factories import TERMINAL, Port, container, port
from tests.test_identity_grants_support import Lifecycle, make_lifecycle
from tests.test_identity_support import basic

Pace = Callable[[int], Awaitable[None]]


class Edge:
    """The app, its port (a line, a forwarder ...) and the clients whose tokens the tests use."""

    def __init__(self, env: Lifecycle) -> None:
        self.env = env
        self.p: Port = port(env.engine)
        self.clients = {
            "line": self._client("shipping_line", self.p.line.organisation_id),
            "admin": env.machine("admin")[:2],
            "gate": self._client("terminal_gate", self.p.terminal.organisation_id, TERMINAL),
        }

    def _client(self, role: str, org: uuid.UUID | None, terminal: str | None = None) -> tuple[str, str]:
        client_id, secret = create_client(self.env.engine, name=role, role=role, organisation_id=org,
                                          terminal_code=terminal, now=datetime.now(UTC))
        assert secret is not None
        return client_id, secret

    def token(self, who: str) -> str:
        return self.env.machine_token(*self.clients[who])

    def expiring(self, who: str) -> tuple[str, int]:
        """A token of ``who``'s, accepted now but not two seconds on (its exp within the verifier's 30 s
        leeway), and the time from which it is refused."""
        claims = json.loads(jws.extract_compact(self.token(who).encode()).payload)
        exp = int(time.time()) - 28
        claims = {**claims, "jti": uuid.uuid4().hex, "exp": exp, "iat": exp - 60}
        return sign_access_token(claims, provider_for(self.env.app).keys.signing_key()), exp + 30

    def revoke(self, who: str, token: str) -> None:
        """RFC 7009: the client revokes its own access token."""
        r = self.env.http.post("/oauth2/revoke", data={"token": token, "token_type_hint": "access_token"},
                               headers=basic(*self.clients[who]))
        assert r.status_code == 200, r.text

    def post(self, path: str, body: bytes, token: str, before: Pace | None = None) -> tuple[int, int, Any, Any]:
        headers = [(b"authorization", f"Bearer {token}".encode())]
        return post_counting_body(self._app, path, body, headers, before=before)

    async def _app(self, scope: Any, receive: Any, send: Any) -> None:
        """The app, on the loop ``post_counting_body`` runs for one request: the gate facts' pipelined
        connection that loop opened is closed with it (quaygate/redisline.py ``Pipelined.close``)."""
        try:
            await self.env.app(scope, receive, send)
        finally:
            facts = self.env.container.gate_facts
            if facts is not None:
                facts.close_pipelined()

    def count(self, table: sa.Table, *where: Any) -> int:
        with self.env.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one())


@pytest.fixture
def edge(engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[Edge]:
    for env in make_lifecycle(engine, tmp_path, RedisCache(redis_url)):
        yield Edge(env)


_PAD = b" " * 300_000  # JSON may end in whitespace: a valid body of several messages (tests/aio.py CHUNK)


def _release(edge: Edge, n: int) -> bytes:
    now = datetime.now(UTC)
    return json.dumps({
        "container_number": container(n), "bill_of_lading": f"BL-{n}", "vessel_call": "VC-1", "terminal": TERMINAL,
        "release_to_organisation_id": str(edge.p.fwd.organisation_id),
        "valid_from": (now - timedelta(hours=1)).isoformat(), "valid_until": (now + timedelta(days=3)).isoformat(),
    }).encode() + _PAD


def _person(edge: Edge, n: int) -> bytes:
    return json.dumps({"given_name": f"Slow {n}", "family_name": "Client"}).encode() + _PAD


# (what, path, whose token, the body of the n-th, how many it wrote: as many rows as bodies it took)
_WRITES: dict[str, tuple[str, str, Callable[[Edge, int], bytes], Callable[[Edge], int]]] = {
    "release right": ("/api/v1/releases", "line", _release, lambda e: e.count(releases)),
    "person": ("/admin/v1/persons", "admin", _person, lambda e: e.count(persons, persons.c.family_name == "Client")),
}


def _at_last(action: Callable[[], Awaitable[None]], body: bytes) -> Pace:
    """A client that does ``action`` before sending the last piece of ``body``."""
    last = len(chunks_of(body)) - 1

    async def before(k: int) -> None:
        if k == last:
            await action()

    return before


@pytest.mark.parametrize("what", sorted(_WRITES))
def test_a_token_revoked_while_the_body_comes_is_refused_once_it_is_in_and_nothing_is_written(
        edge: Edge, what: str) -> None:
    path, who, body_of, written = _WRITES[what]
    token = edge.token(who)
    body = body_of(edge, 1)
    assert len(chunks_of(body)) > 2

    async def revoke() -> None:
        await anyio.to_thread.run_sync(edge.revoke, who, token)

    status, read, headers, answer = edge.post(path, body, token, before=_at_last(revoke, body))
    # Admitted on its headers (the whole body read), refused once it was in: the route's own 401.
    assert (status, read, answer.get("code")) == (401, len(chunks_of(body)), "invalid_token"), answer
    assert headers["www-authenticate"].startswith('Bearer error="invalid_token"'), headers
    assert headers["content-type"].startswith("application/problem+json")
    assert written(edge) == 0
    # The same slow client with a token nobody revoked: taken, and written.
    async def pause() -> None:
        await anyio.sleep(0.05)

    status, read, _, answer = edge.post(path, body_of(edge, 2), edge.token(who),
                                        before=_at_last(pause, body_of(edge, 2)))
    assert status == 201, answer
    assert written(edge) == 1


@pytest.mark.parametrize("what", sorted(_WRITES))
def test_a_token_that_expires_while_the_body_comes_is_refused_once_it_is_in(edge: Edge, what: str) -> None:
    path, who, body_of, written = _WRITES[what]
    token, refused_from = edge.expiring(who)
    body = body_of(edge, 1)

    async def until_it_expires() -> None:
        while time.time() < refused_from:
            await anyio.sleep(0.05)

    status, read, headers, answer = edge.post(path, body, token, before=_at_last(until_it_expires, body))
    assert (status, read, answer.get("code")) == (401, len(chunks_of(body)), "invalid_token"), answer
    assert headers["www-authenticate"].startswith('Bearer error="invalid_token"'), headers
    assert written(edge) == 0


@pytest.fixture
def facts_edge(pg_engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[Edge]:
    """The edge with its gate's facts in Redis, a deployment's way: a gate token's revocation is read
    with the facts, in one round trip (release_service/api/gate.py ``_verify``)."""
    for env in make_lifecycle(pg_engine, tmp_path, RedisCache(redis_url), redis_url=redis_url,
                              gate_decision_drain=False):
        yield Edge(env)


def _check(request_id: str) -> bytes:
    """A gate's check (a valid verify body, padded to come in several pieces)."""
    return json.dumps({
        "request_id": request_id, "terminal": TERMINAL, "lane": "l1", "direction": "in", "mode": "check",
        "container": {"number": container(1), "confidence": 0.99}, "observed_at": datetime.now(UTC).isoformat(),
    }).encode() + _PAD


def _decided(edge: Edge, request_id: str) -> int:
    """Decisions recorded for ``request_id``: in PostgreSQL, or kept in Redis (not drained here)."""
    facts = edge.env.container.gate_facts
    kept = 0 if facts is None else int(facts._r.exists(facts._request_key({"terminal": TERMINAL,
                                                                            "request_id": request_id})))
    return kept + edge.count(gate_decisions, gate_decisions.c.request_id == request_id)


def _refused_once_the_check_is_in(edge: Edge, token: str, before: Callable[[str], Pace]) -> None:
    """A check sent with ``token``, the client doing ``before(token)`` before its last piece: refused
    401 once it is in, nothing decided; the same check with a live token: decided."""
    body = _check("refused-1")
    status, read, headers, answer = edge.post("/gate/v1/verify", body, token, before=before(token))
    assert (status, read, answer.get("code")) == (401, len(chunks_of(body)), "invalid_token"), answer
    assert headers["www-authenticate"].startswith('Bearer error="invalid_token"'), headers
    assert _decided(edge, "refused-1") == 0
    status, _, _, answer = edge.post("/gate/v1/verify", _check("taken-1"), edge.token("gate"))
    assert (status, answer["decision"]) == (200, "deny"), answer
    assert _decided(edge, "taken-1") == 1


def _revoking(edge: Edge) -> Callable[[str], Pace]:
    def before(token: str) -> Pace:
        async def revoke() -> None:
            await anyio.to_thread.run_sync(edge.revoke, "gate", token)

        return _at_last(revoke, _check("refused-1"))

    return before


def _expiring(refused_from: float) -> Callable[[str], Pace]:
    def before(token: str) -> Pace:
        async def until_it_expires() -> None:
            while time.time() < refused_from:
                await anyio.sleep(0.05)

        return _at_last(until_it_expires, _check("refused-1"))

    return before


def test_a_gate_token_revoked_while_the_check_comes_is_refused_once_it_is_in(edge: Edge) -> None:
    """The gate verify's own handler (routing's ``lean_app``): the token's revocation is settled once
    the body is in, so a token revoked meanwhile decides nothing."""
    _refused_once_the_check_is_in(edge, edge.token("gate"), _revoking(edge))


def test_a_gate_token_revoked_while_the_check_comes_is_refused_with_the_facts_in_redis(facts_edge: Edge) -> None:
    """The same where the revocation is read with the gate's facts, after the body is in."""
    _refused_once_the_check_is_in(facts_edge, facts_edge.token("gate"), _revoking(facts_edge))


def test_a_gate_token_that_expires_while_the_check_comes_is_refused_once_it_is_in(edge: Edge) -> None:
    """The gate verify checks its caller's token again once the body is in (``verify_again``: on the
    verifier's memo, the token's times and its key), as the other routes do (``token_again``)."""
    token, refused_from = edge.expiring("gate")
    _refused_once_the_check_is_in(edge, token, _expiring(refused_from))


def test_a_gate_token_that_expires_while_the_check_comes_is_refused_with_the_facts_in_redis(
        facts_edge: Edge) -> None:
    token, refused_from = facts_edge.expiring("gate")
    _refused_once_the_check_is_in(facts_edge, token, _expiring(refused_from))


def _route(router: Any, path: str) -> APIRoute:
    return next(r for r in router.routes if isinstance(r, APIRoute) and r.path == path and "POST" in r.methods)


def _feeds_imported(edge: Edge) -> int:
    return edge.count(audit_log, audit_log.c.kind.like("identity.admin.ban_feed.%"))


# (the route, whose token, its body, what it would have done)
_STALLS: dict[str, tuple[APIRoute, str, Callable[[Edge], bytes], Callable[[Edge], int]]] = {
    "release right": (_route(release_api.router, "/api/v1/releases"), "line", lambda e: _release(e, 1),
                      lambda e: e.count(releases)),
    "person": (_route(admin_api.router, "/admin/v1/persons"), "admin", lambda e: _person(e, 1),
               lambda e: e.count(persons, persons.c.family_name == "Client")),
    "ban feed": (_route(bans_api.router, "/admin/v1/bans/feeds"), "admin", lambda e: b"{}" + _PAD, _feeds_imported),
    "gate verify": (_route(gate_api.router, "/gate/v1/verify"), "gate", lambda e: b"{}" + _PAD, lambda e: 0),
}


@pytest.mark.parametrize("what", sorted(_STALLS))
def test_a_body_that_stalls_past_its_deadline_is_refused_408_and_nothing_is_done(
        edge: Edge, what: str, monkeypatch: pytest.MonkeyPatch) -> None:
    route, who, body_of, done = _STALLS[what]
    monkeypatch.setattr(route, "body_seconds", 0.3)  # settable per route; by default 10 or 30 s
    body = body_of(edge)

    async def stall(k: int) -> None:
        if k == 1:
            await anyio.sleep(5)  # the deadline cuts it short

    status, read, headers, answer = edge.post(route.path, body, edge.token(who), before=stall)
    assert (status, read, answer.get("code")) == (408, 1, "body_timeout"), answer
    assert headers["content-type"].startswith("application/problem+json")
    assert headers["connection"] == "close"  # RFC 9110 §15.5.9: the rest of the body is not read
    assert answer["title"] == "Request timeout" and answer["status"] == 408
    assert done(edge) == 0


@pytest.mark.parametrize("setting", [10.0, 4.0])
def test_the_deadline_of_a_route_follows_its_body_limit(setting: float) -> None:
    """The app's deadline (QUAYGATE_BODY_SECONDS, 10 s by default) for most routes, three times it for
    the routes that take more than the app's 1 MiB (a batch, a face capture); an endpoint may set its
    own (the ban feed, 64 MiB: 120 s), which it keeps whatever the setting."""
    assert _route(release_api.router, "/api/v1/releases:batch").deadline(setting) == 3 * setting
    assert _route(gate_api.router, "/gate/v1/verify").deadline(setting) == 3 * setting
    assert _route(release_api.router, "/api/v1/releases").deadline(setting) == setting
    assert _route(admin_api.router, "/admin/v1/persons").deadline(setting) == setting
    assert _route(bans_api.router, "/admin/v1/bans/feeds").deadline(setting) == bans_api.FEED_BODY_SECONDS == 120


# (the route's path, whose token, its body, the app's deadline for it as a multiple of the setting)
_SET: dict[str, tuple[str, str, Callable[[Edge], bytes], int]] = {
    "release right": ("/api/v1/releases", "line", lambda e: _release(e, 1), 1),
    "gate verify": ("/gate/v1/verify", "gate", lambda e: _check("set-1"), 3),
}


@pytest.mark.parametrize("what", sorted(_SET))
def test_the_deadline_is_the_quaygate_body_seconds_setting(
        engine: sa.Engine, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    """QUAYGATE_BODY_SECONDS sets the deadline of every route without one of its own: a stall past it is
    refused 408, the answer naming the deadline in force (three times the setting for the gate verify,
    which takes a face capture); the default is 10 s."""
    path, who, body_of, times = _SET[what]
    monkeypatch.setenv("QUAYGATE_BODY_SECONDS", "0.25")
    for env in make_lifecycle(engine, tmp_path, RedisCache(redis_url)):
        edge = Edge(env)
        assert env.container.settings.body_seconds == 0.25

        async def stall(k: int) -> None:
            if k == 1:
                await anyio.sleep(5)  # the deadline cuts it short

        status, read, headers, answer = edge.post(path, body_of(edge), edge.token(who), before=stall)
        assert (status, read, answer.get("code")) == (408, 1, "body_timeout"), answer
        assert answer["detail"] == f"The request body was not received within {0.25 * times:g} seconds."
        assert headers["connection"] == "close"
    monkeypatch.delenv("QUAYGATE_BODY_SECONDS")
    assert Settings(var_dir=tmp_path).body_seconds == 10


def test_a_body_past_its_limit_is_still_refused_413_when_the_route_reads_it_first(edge: Edge) -> None:
    """AdmitFirst reads the body for the route, and FastAPI's handler meets what reading it met: past
    the route's limit (1 MiB here), a body sent without its length is refused 413 as before, once past
    the limit, and nothing is written."""
    body = _release(edge, 1) + b" " * (1024 * 1024)
    status, read, headers, answer = edge.post("/api/v1/releases", body, edge.token("line"))
    assert (status, answer.get("code")) == (413, "body_too_large"), answer
    assert read < len(chunks_of(body)) and headers["content-type"].startswith("application/problem+json")
    assert edge.count(releases) == 0


def test_the_408_is_declared_where_a_body_is_read(tmp_path: Path) -> None:
    """In the published description, as the routes' other refusals (STYLE.md #9): on the routes that
    read a body, not on the others."""
    from quaygate.app import create_app

    spec = create_app(Settings(var_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'q.db'}",
                               background_workers=False)).openapi()
    for path, method in (("/api/v1/releases", "post"), ("/admin/v1/persons", "post"), ("/gate/v1/verify", "post"),
                         ("/admin/v1/bans/feeds", "post"), ("/face/step-up", "post"), ("/oauth2/register", "post"),
                         ("/oauth2/register/{client_id}", "put"), ("/account/passkeys/{credential_id}", "patch"),
                         # Their form read by their own dependency, within the same deadline (quaygate/routing.py
                         # read_form; review 168, finding 1).
                         ("/oauth2/token", "post"), ("/oauth2/par", "post"), ("/oauth2/introspect", "post"),
                         ("/oauth2/revoke", "post"), ("/oauth2/authorize", "post"), ("/oauth2/userinfo", "post"),
                         ("/oauth2/logout", "post")):
        assert "408" in spec["paths"][path][method]["responses"], (path, method)
    # Without a body, hence no deadline.
    for path, method in (("/api/v1/releases", "get"), ("/admin/v1/clients/{client_id}:deactivate", "post"),
                         ("/admin/v1/persons/{person_id}/face", "delete"), ("/oauth2/authorize", "get"),
                         ("/oauth2/userinfo", "get"), ("/oauth2/logout", "get"),
                         ("/oauth2/register/{client_id}", "get")):
        assert "408" not in spec["paths"][path][method]["responses"], (path, method)

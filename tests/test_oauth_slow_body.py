"""A slow client on the OAuth endpoints and the language form (review 168, finding 1).

- Every route reading a form body reads it within the app's deadline (QUAYGATE_BODY_SECONDS,
  quaygate/routing.py ``read_form``): a body that has not all come by then is refused 408
  ``body_timeout`` (problem JSON, ``Connection: close``), as on the routes AdmitFirst reads for. Before,
  /oauth2/token, /oauth2/par, /oauth2/introspect, /oauth2/revoke, POST /oauth2/authorize, /oauth2/userinfo
  and /oauth2/logout, and /lang, waited for it for ever; so did the rate limiter, reading a token form
  for its client_id.
- The rate limiter counts the address before it reads the body for the client_id: a body that never
  comes has been counted. Before, twenty token bodies held open were never counted, and the next
  requests from that address passed.

The app is the whole app on the real database and a real Redis; requests go straight through ASGI from a
client that sends the first part of its body, then nothing (tests/aio.py ``run_async``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import pytest
import sqlalchemy as sa

from identity.bootstrap import create_client
from quaygate.cache import RedisCache
from tests.aio import run_async
from tests.test_identity_grants_support import Lifecycle, make_lifecycle
from tests.test_identity_support import basic

STALL = 5.0  # seconds the client waits before the rest of its body; the deadlines here are well below
ADDRESS = "198.51.100.7"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path, RedisCache(redis_url), body_seconds=0.3)


Answer = tuple[int, dict[str, str], Any]


def on_a_loop(app: Any, make: Callable[[], Awaitable[Any]]) -> Any:
    """``make()`` awaited on an event loop of its own (tests/aio.py ``run_async``), then the cache's
    connections on that loop closed (the rate limits count from the loop: identity.ratelimit), as the app's
    lifespan closes them on its own loop."""
    async def run() -> Any:
        try:
            return await make()
        finally:
            app.state.container.cache.close_pipelined()

    return run_async(run)


async def _post(app: Any, path: str, first: bytes, headers: dict[str, str], *, stall: float | None,
                stalled: list[int] | None = None) -> Answer:
    """POST ``first``, then, ``stall`` seconds later, the end of the body (None: no stall, ``first`` is the
    whole body); the status, headers and body (JSON when it is) of the answer."""
    received = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        if received == 1:
            return {"type": "http.request", "body": first, "more_body": stall is not None}
        if received == 2 and stall is not None:
            if stalled is not None:
                stalled.append(1)
            await anyio.sleep(stall)  # the deadline cuts it short
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep(3600)  # nothing more comes: the app waits for a disconnect only after its answer
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw_headers = [(b"host", b"127.0.0.1:8000"), *((k.lower().encode(), v.encode()) for k, v in headers.items())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": raw_headers,
             "server": ("127.0.0.1", 8000), "client": (ADDRESS, 4711), "state": {}}
    await app(scope, receive, send)
    answer_headers = {k.decode(): v.decode() for k, v in sent[0].get("headers", ())}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    is_json = "json" in answer_headers.get("content-type", "")
    return sent[0]["status"], answer_headers, json.loads(body) if is_json else body


def _client_form(client_id: str, secret: str) -> bytes:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    return urlencode(form).encode() + b"&scope="


def _cases(env: Lifecycle) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """(path, the first part of the body, headers) per route reading a form body."""
    client_id, secret, org = env.machine()
    auth = basic(client_id, secret)
    posting, posted = create_client(env.engine, name="posting", role="shipping_line", organisation_id=org,
                                    auth_method="client_secret_post", now=datetime.now(UTC))
    assert posted is not None
    return {
        "token, client in the form (the rate limiter reads it)": (
            "/oauth2/token", _client_form(posting, posted), {"content-type": FORM}),
        "token, client in the header": (
            "/oauth2/token", b"grant_type=client_credentials&scope=", {"content-type": FORM, **auth}),
        "par": ("/oauth2/par", b"response_type=code&redirect_uri=", {"content-type": FORM, **auth}),
        "introspect": ("/oauth2/introspect", b"token=abc&token_type_hint=", {"content-type": FORM, **auth}),
        "revoke": ("/oauth2/revoke", b"token=abc&token_type_hint=", {"content-type": FORM, **auth}),
        "authorize": ("/oauth2/authorize", b"response_type=code&client_id=", {"content-type": FORM}),
        "userinfo": ("/oauth2/userinfo", b"access_token=", {"content-type": FORM}),
        "logout": ("/oauth2/logout", b"client_id=", {"content-type": FORM}),
        "language": ("/lang", b"lang=fr&next=", {"content-type": FORM}),
    }


CASES = ["token, client in the form (the rate limiter reads it)", "token, client in the header", "par",
         "introspect", "revoke", "authorize", "userinfo", "logout", "language"]


@pytest.mark.parametrize("what", CASES)
def test_a_form_body_that_stalls_past_the_deadline_is_refused_408(env: Lifecycle, what: str) -> None:
    path, first, headers = _cases(env)[what]
    status, answer_headers, answer = on_a_loop(env.app, lambda: _post(env.app, path, first, headers, stall=STALL))
    assert status == 408, (status, answer)
    assert answer_headers["content-type"].startswith("application/problem+json")
    assert answer_headers["connection"] == "close"  # RFC 9110 §15.5.9: the rest of the body is not read
    assert (answer["code"], answer["status"]) == ("body_timeout", 408), answer
    assert answer["detail"] == "The request body was not received within 0.3 seconds."


def test_the_same_requests_sent_whole_are_answered_as_before(env: Lifecycle) -> None:
    """No deadline is met by a body that comes: the token request is answered (a token), the language
    form redirects, the others answer their own refusals of a form cut short."""
    cases = _cases(env)
    path, first, headers = cases["token, client in the form (the rate limiter reads it)"]
    status, _, answer = on_a_loop(env.app, lambda: _post(env.app, path, first, headers, stall=None))
    assert status == 200 and answer["token_type"] in ("Bearer", "bearer"), answer
    path, first, headers = cases["language"]
    status, answer_headers, _ = on_a_loop(env.app, lambda: _post(env.app, path, first + b"/app/", headers, stall=None))
    assert (status, answer_headers["location"]) == (303, "/app/")
    for what in ("par", "introspect", "revoke", "authorize", "userinfo", "logout"):
        path, first, headers = cases[what]
        status, _, answer = on_a_loop(env.app, lambda: _post(env.app, path, first, headers, stall=None))
        assert status not in (408, 500), (what, status, answer)


def test_token_bodies_that_never_come_count_against_their_address(
        engine: sa.Engine, tmp_path: Path, redis_url: str) -> None:
    """QUAYGATE_RATE_LIMIT_PER_ADDRESS=3: twenty token requests whose bodies stall are counted as they
    arrive, before their bodies are read for a client_id: three are let through to wait for their bodies
    (408 at the deadline), seventeen are refused 429 at once, and the five complete requests sent while
    the three are held are refused 429 ``slow_down``. Before, none of the twenty counted (the limiter read
    the body first, and all twenty waited on it): 401, 401, 401, 429, 429."""
    for env in make_lifecycle(engine, tmp_path, RedisCache(redis_url), body_seconds=1.0, rate_limit_per_address=3):
        slow = _client_form("nobody", "wrong")
        whole = _client_form("nobody", "wrong") + b"openid"

        async def run() -> tuple[list[int], list[int]]:
            stalled: list[int] = []
            held: list[int] = []
            complete: list[int] = []

            async def one_slow() -> None:
                status, _, _ = await _post(env.app, "/oauth2/token", slow, {"content-type": FORM}, stall=STALL,
                                           stalled=stalled)
                held.append(status)

            async with anyio.create_task_group() as group:
                for _ in range(20):
                    group.start_soon(one_slow)
                with anyio.fail_after(10):  # each of the twenty waits on the rest of its body, or was answered
                    while len(stalled) + len(held) < 20:
                        await anyio.sleep(0.01)
                for _ in range(5):
                    status, _, _ = await _post(env.app, "/oauth2/token", whole, {"content-type": FORM}, stall=None)
                    complete.append(status)
            return complete, held

        complete, held = on_a_loop(env.app, run)
        assert complete == [429] * 5, complete
        assert sorted(held) == [408] * 3 + [429] * 17, held

"""Review 157, finding 3: an upstream's malformed answer was a 500, with nothing audited.

- a JWE header whose ``alg`` (or ``enc``) is a list: ``header.get("alg") not in JWE_ALGS`` raised
  TypeError; so did a ``crit`` that is no list (inside joserfc), and a header or payload nested deeper than
  Python's JSON parser recurses (RecursionError);
- the token endpoint's answer had no size cap (discovery, JWKS and userinfo have 256 KB), and one nested
  too deep raised RecursionError;
- an endpoint in the discovery document that httpx cannot make a URL of (``httpx.InvalidURL``, or a host
  label IDNA refuses: UnicodeError) is not an ``httpx.HTTPError``, which was all that was caught.

Now a header parameter we test is judged a string before anything else (alg, enc, kid, cty, typ, zip),
anything joserfc raises on a hostile token is that step's refusal, the token answer is capped like the
others, and any of these endpoint failures is ``upstream_unavailable``: each audited, a refusal page.

Against the real upstream (oidc-provider, tests/upstream): the real answer with one thing changed on its
way to us (Tamper, or a transport wrapped around the real one).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from joserfc import jws
from joserfc.jws import JWSRegistry

from tests.upstream.world import World, build_world

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("broker")]

_DEEP = "[" * 3000 + "]" * 3000  # deeper than Python's JSON parser recurses (RecursionError)


@pytest.fixture
def world(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from build_world(engine, tmp_path)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _refused(world: World, response: httpx.Response, status: int, code: str, detail: str | None = None) -> None:
    assert response.status_code == status, response.text[:400]
    assert f'data-code="{code}"' in response.text, response.text[:400]
    assert world.sessions() == []
    refusals = world.refusals()
    assert [r["code"] for r in refusals] == [code], refusals
    if detail is not None:
        assert refusals[0]["detail"] == detail


def _with_header(compact: str, change: Callable[[dict[str, Any]], None]) -> str:
    """The token with its (JWE or JWS) protected header changed, the rest as it was."""
    first, rest = compact.split(".", 1)
    header = json.loads(_unb64(first))
    change(header)
    return _b64(json.dumps(header).encode()) + "." + rest


# ---- the id token's headers ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alg", "enc", "kid", "cty", "typ", "zip"])
@pytest.mark.parametrize("value", [["RSA-OAEP-256"], {"v": "A128CBC-HS256"}, 1])
def test_a_jwe_header_parameter_that_is_not_a_string_is_refused(world: World, name: str, value: Any) -> None:
    """The reviewer's proof (alg a list), and every header parameter the broker or joserfc reads."""
    world.tamper.token = lambda compact: _with_header(compact, lambda h: h.__setitem__(name, value))
    with world.browser() as browser:
        response = world.login(browser, "jan")
    _refused(world, response, 401, "upstream_encryption_invalid", f"header {name} is not a string")


@pytest.mark.parametrize("value", [1, None, True])
def test_a_jwe_crit_that_is_no_list_is_refused(world: World, value: Any) -> None:
    """RFC 7516 §4.1.13: crit is a list of names; joserfc iterates it (TypeError on any other)."""
    world.tamper.token = lambda compact: _with_header(compact, lambda h: h.__setitem__("crit", value))
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), 401, "upstream_encryption_invalid")


@pytest.mark.parametrize("value", [1, None, True])
def test_a_jws_crit_that_is_no_list_is_refused(world: World, value: Any) -> None:
    """The inner (signed) id token's header, inside the upstream's real encryption to our key."""
    def change(compact: str) -> str:
        inner = _with_header(world.decrypt(compact), lambda h: h.__setitem__("crit", value))
        return world.encrypt(inner, world.our_key(compact))

    world.tamper.token = change
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), 401, "upstream_signature_invalid")


def test_a_jwe_header_nested_too_deep_is_refused(world: World) -> None:
    world.tamper.token = lambda compact: _b64(_DEEP.encode()) + "." + compact.split(".", 1)[1]
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), 401, "upstream_encryption_invalid")


def test_a_jws_header_nested_too_deep_is_refused(world: World) -> None:
    def change(compact: str) -> str:
        inner = _b64(_DEEP.encode()) + "." + world.decrypt(compact).split(".", 1)[1]
        return world.encrypt(inner, world.our_key(compact))

    world.tamper.token = change
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), 401, "upstream_signature_invalid")


def test_a_payload_nested_too_deep_is_refused(world: World) -> None:
    """Signed by the upstream's real key: its signature holds, its claims are no JSON object we read."""
    def change(compact: str) -> str:
        key = world.upstream.keys.signing
        inner = jws.serialize_compact({"alg": "RS256", "typ": "JWT", "kid": key.kid}, _DEEP, key,
                                      registry=JWSRegistry(algorithms=["RS256"]))
        return world.encrypt(inner, world.our_key(compact))

    world.tamper.token = change
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), 401, "upstream_claims_invalid", "payload is not JSON")


# ---- the token endpoint's answer and the discovery document's endpoints -------------------------


class _Rewrite(httpx.BaseTransport):
    """The real upstream, except that the answer at ``path`` is ``change``'s of the real one."""

    def __init__(self, inner: httpx.BaseTransport, path: str, change: Callable[[httpx.Response], httpx.Response]):
        self.inner, self.path, self.change = inner, path, change

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path != self.path:
            return response
        response.read()
        return self.change(response)

    def close(self) -> None:
        self.inner.close()


def _rewrite(world: World, path: str, change: Callable[[httpx.Response], httpx.Response]) -> None:
    world.tamper.inner = _Rewrite(world.tamper.inner, path, change)  # type: ignore[assignment]


def _json(status: int, content: bytes) -> httpx.Response:
    return httpx.Response(status, content=content, headers={"content-type": "application/json"})


def test_a_token_answer_over_256_kb_is_refused(world: World) -> None:
    """The real tokens, padded past the cap discovery, JWKS and userinfo have: before, it logged in."""
    def pad(response: httpx.Response) -> httpx.Response:
        assert response.status_code == 200, response.text
        return _json(200, json.dumps({**response.json(), "padding": "x" * (256 * 1024)}).encode())

    _rewrite(world, "/token", pad)
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), 502, "upstream_unavailable", "token endpoint answer too large")


def test_a_token_answer_nested_too_deep_is_refused(world: World) -> None:
    _rewrite(world, "/token", lambda response: _json(200, ('{"id_token": ' + _DEEP + "}").encode()))
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), 502, "upstream_unavailable")


_BAD_URLS = ["http://[::1/x",  # httpx.InvalidURL
             "http://up\x00stream.example/x",  # httpx.InvalidURL
             "http://" + "a" * 70 + ".example/x"]  # a host label IDNA refuses: UnicodeError


def _discovery_with(endpoint: str, url: str) -> Callable[[httpx.Response], httpx.Response]:
    def change(response: httpx.Response) -> httpx.Response:
        return _json(200, json.dumps({**response.json(), endpoint: url}).encode())
    return change


@pytest.mark.parametrize("url", _BAD_URLS)
@pytest.mark.parametrize("endpoint", ["token_endpoint", "userinfo_endpoint"])
def test_an_endpoint_httpx_cannot_call_is_an_unavailable_upstream(world: World, endpoint: str, url: str) -> None:
    """The reviewer's reading: a bad endpoint in the discovery document raised httpx.InvalidURL, which is
    no httpx.HTTPError; at the callback it is audited upstream_unavailable."""
    _rewrite(world, "/.well-known/openid-configuration", _discovery_with(endpoint, url))
    with world.browser() as browser:
        _refused(world, world.login(browser, "jan"), 502, "upstream_unavailable")


@pytest.mark.parametrize("url", _BAD_URLS)
def test_a_jwks_uri_httpx_cannot_call_refuses_the_start(world: World, url: str) -> None:
    """At the start (logged, not audited: docs/itsme.md), the JWKS is fetched with the discovery."""
    _rewrite(world, "/.well-known/openid-configuration", _discovery_with("jwks_uri", url))
    with world.browser() as browser:
        response = browser.get(f"{world.app.base}/broker/itsme/start")
    assert response.status_code == 502 and 'data-code="upstream_unavailable"' in response.text, response.text[:400]
    assert world.refusals() == []

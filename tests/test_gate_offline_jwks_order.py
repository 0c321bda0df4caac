"""A refresh of the pass store across a rotation of the service's ES256 key (review 172, finding 4).

Against the real app (its real keys, passes and JWKS); in front of it, a caching proxy as an HTTP cache
would be: it keeps the JWKS for its ``max-age`` (60 s) and serves it again unless the request says
``Cache-Control: no-cache``, or (``stubborn``) even then, as a replica yet to reload its keys does.
Before the mend the adapter fetched the JWKS and then the passes: a key rotated in between, or a JWKS
served from a cache, signed passes the JWKS did not name; every one was refused and the held set was
replaced by none (``passes kept 0``), so every offline truck was a review (``no_pass``) till the next
refresh.
"""
# ruff: noqa: F811 - ``gate`` and ``adapters`` are fixtures, imported here and requested by name

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gate_adapters.runtime.client import StaticToken, VerifyClient
from gate_adapters.runtime.offline import OfflineMode, PassStore
from release_service.domain.gate_pass import PASS_ALG

from .factories import TERMINAL
from .test_gate_offline import SECRET, Adapter, adapters, issuer  # noqa: F401
from .test_gate_verify import Gate, gate  # noqa: F401

JWKS = "/oauth2/jwks"


class CachingProxy(httpx.BaseTransport):
    """An HTTP cache in front of the app: the JWKS is served from its copy while it has one, unless the
    request says ``no-cache`` (``stubborn``: even then). ``after`` is called after each request passed on."""

    def __init__(self, app: Any, *, stubborn: bool = False) -> None:
        self.app, self.stubborn = app, stubborn
        self.copy: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None
        self.after: Callable[[httpx.Request], None] | None = None
        self.no_cache: list[str] = []  # the paths asked for with Cache-Control: no-cache

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fresh = "no-cache" in request.headers.get("cache-control", "")
        if fresh:
            self.no_cache.append(request.url.path)
        if request.url.path == JWKS and self.copy is not None and (not fresh or self.stubborn):
            status, headers, body = self.copy
            return httpx.Response(status, headers=headers, content=body)
        r = self.app.handle_request(request)
        body = r.read()
        if request.url.path == JWKS and r.status_code == 200:
            self.copy = (r.status_code, list(r.headers.raw), body)
        if self.after is not None:
            self.after(request)
        return httpx.Response(r.status_code, headers=list(r.headers.raw), content=body)


def _behind(gate: Gate, a: Adapter, *, stubborn: bool = False) -> CachingProxy:
    """The adapter's calls go through a caching proxy to the app."""
    proxy = CachingProxy(gate.http._transport, stubborn=stubborn)  # the TestClient's own transport to the app
    a.online = VerifyClient("http://testserver", StaticToken(gate.gate_token),
                            http=httpx.Client(transport=proxy, base_url="http://testserver"))
    a.offline = OfflineMode(a.online, a.store, a.outbox)
    return proxy


def _rotate_es256(gate: Gate) -> str:
    keys = gate.http.app.state.identity.keys  # type: ignore[attr-defined]
    return str(keys.rotate(datetime.now(UTC), algs=[PASS_ALG])[PASS_ALG])


def test_a_key_rotated_between_the_two_calls_of_a_refresh_leaves_the_passes_kept(
        gate: Gate, adapters: list[Adapter]) -> None:
    gate.pickable(1)
    gate.pickable(2)
    a = adapters[0]
    proxy = _behind(gate, a)
    assert a.offline.refresh() == 2
    assert a.truck(1)["decision"] == "allow"
    proxy.copy = None  # the cache's copy has aged out: this is about the order of the calls alone
    rotated: list[str] = []

    def rotate_once(request: httpx.Request) -> None:
        if not rotated:
            rotated.append(_rotate_es256(gate))

    proxy.after = rotate_once
    assert a.offline.refresh() == 2  # before: 0 (the JWKS asked first, the passes signed by the new key)
    assert rotated
    second = a.truck(2)
    assert (second["decision"], second["offline"]["basis"]) == ("allow", "pass"), second


def test_a_jwks_from_a_cache_is_fetched_again_past_the_cache_for_a_pass_of_a_new_key(
        gate: Gate, adapters: list[Adapter], caplog: pytest.LogCaptureFixture) -> None:
    gate.pickable(1)
    a = adapters[0]
    proxy = _behind(gate, a)
    assert a.offline.refresh() == 1  # the proxy keeps the JWKS it passed on
    _rotate_es256(gate)
    gate.pickable(2)  # a right made after the rotation: no pass of it was ever held
    caplog.set_level(logging.INFO, logger="gate_adapters.offline")
    assert a.offline.refresh() == 2  # before: 0
    assert proxy.no_cache == [JWKS]  # once, past the cache
    assert not [r for r in caplog.records if r.getMessage().startswith("gate.offline.pass_refused")]
    got = a.truck(2)
    assert (got["decision"], got["offline"]["basis"]) == ("allow", "pass"), got


def test_passes_of_a_key_no_jwks_names_are_dropped_and_the_held_ones_of_their_rights_kept(
        gate: Gate, adapters: list[Adapter], caplog: pytest.LogCaptureFixture) -> None:
    """The JWKS lacks the new key even asked past the caches (a replica yet to reload, a cache that does
    not listen): no pass signed by it is kept (rule 1), but the passes held of the rights it names stay,
    re-verified, till they expire; a right that has no pass any more (gated in and out online meanwhile)
    loses its own."""
    rid1 = gate.pickable(1)
    gate.pickable(2)
    a = adapters[0]
    proxy = _behind(gate, a, stubborn=True)
    assert a.offline.refresh() == 2
    held = {t for t, _ in a.store.passes(datetime.now(UTC))}
    _rotate_es256(gate)
    gate.pickable(3)  # its pass is signed by the new key only: never held
    for direction in ("in", "out"):  # right 2 is used up online: no pass of it any more
        used = gate.verify(gate.body(2, mode="commit", direction=direction))
        assert used.json()["committed"] is True, used.text
    caplog.set_level(logging.INFO, logger="gate_adapters.offline")
    assert a.offline.refresh() == 1  # before: 0
    assert proxy.no_cache == [JWKS]
    kept = [(t, p) for t, p in a.store.passes(datetime.now(UTC))]
    assert [str(p.right.id) for _, p in kept] == [str(rid1)] and kept[0][0] in held  # right 1's, as held
    unknown = [r for r in caplog.records if r.getMessage().startswith("gate.offline.pass_unknown_key")]
    assert unknown and unknown[-1].__dict__["refused"] == 2 and unknown[-1].__dict__["held_kept"] == 1
    assert a.truck(1)["decision"] == "allow"
    for n in (2, 3):
        got = a.truck(n)
        assert (got["decision"], got["offline"]["basis"]) == ("review", "no_pass"), got
    # The store, opened again, holds what was kept: sealed with the JWKS it was verified under.
    a.store.close()
    a.store = PassStore(a.store.path, issuer=issuer(gate), terminal=TERMINAL, secret=SECRET)
    assert [t for t, _ in a.store.passes(datetime.now(UTC))] == [kept[0][0]]

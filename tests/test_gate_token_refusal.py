"""A token endpoint that refuses the gate client is no outage (client.py rule 6): the lane holds and calls
an officer, its request stays pending, and offline mode decides nothing, however fresh its passes. Only an
endpoint that cannot answer (5xx, after the retries) lets the lane decide from its passes.

The token endpoint is a real local HTTP server answering as an OAuth server does (RFC 6749 §5.2); the
verify service and the passes are the real app's (real gate token, our real ES256 pass key)."""
# ruff: noqa: F811 - ``gate`` is test_gate_verify's fixture, imported here and requested by name

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gate_adapters.runtime.client import ClientCredentials, StaticToken, TokenRefused, VerifyClient, VerifyRefused
from gate_adapters.runtime.lane import LaneResult
from gate_adapters.runtime.offline import OfflineMode, PassStore
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.sinks import BarrierCommand

from .factories import TERMINAL
from .processes import free_port
from .test_gate_runtime import LANE, RecordingBarrier, reads, runtime
from .test_gate_verify import Gate, gate  # noqa: F401


@dataclass
class TokenEndpoint:
    """What the server answers every token request with, and how many it had."""

    url: str
    status: int = 401
    body: dict[str, Any] = field(default_factory=dict)
    hits: int = 0


@pytest.fixture
def token_endpoint() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            endpoint.hits += 1
            payload = json.dumps(endpoint.body).encode()
            self.send_response(endpoint.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            if endpoint.status == 401:  # RFC 6749 §5.2: invalid_client with HTTP Basic
                self.send_header("WWW-Authenticate", 'Basic realm="quaygate"')
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}/oauth2/token"
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "lane.sqlite3")
    yield box
    box.close()


def _offline(gate: Gate, outbox: Outbox, tmp_path: Path) -> tuple[OfflineMode, PassStore]:
    """Offline mode with fresh, genuine passes, fetched while the gate client was still good."""
    online = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=gate.http)
    store = PassStore(tmp_path / "passes.sqlite3", terminal=TERMINAL, secret=b"adapter",
                      issuer=str(gate.http.app.state.container.settings.issuer))  # type: ignore[attr-defined]
    offline = OfflineMode(online, store, outbox)
    assert offline.refresh() == 1
    return offline, store


def _truck(client: VerifyClient, outbox: Outbox, sink: RecordingBarrier, offline: OfflineMode) -> list[LaneResult]:
    """The nominated truck with container 1 at the lane: its three reads, one result."""
    lane = runtime(client, outbox, sink, offline=offline)
    return [r for read in reads(n=1) for r in lane.feed(read)]


@pytest.mark.parametrize(("status", "error"), [
    (401, "invalid_client"),  # the gate client deactivated by port security, or its secret changed
    (400, "invalid_grant"),
    (400, "unauthorized_client"),  # no longer allowed client credentials
    (429, "slow_down"),  # overload: asked again within the attempts, then still no outage
])
def test_a_token_endpoint_refusal_holds_the_lane_and_never_decides_offline(
        gate: Gate, outbox: Outbox, tmp_path: Path, token_endpoint: TokenEndpoint, status: int, error: str) -> None:
    rid = gate.pickable(1)
    offline, store = _offline(gate, outbox, tmp_path)
    token_endpoint.status, token_endpoint.body = status, {"error": error, "error_description": "refused"}
    tokens = ClientCredentials(token_endpoint.url, "qg-terminal-gate-test", "s3cret")
    client = VerifyClient("http://testserver", tokens, http=gate.http, attempts=3, sleep=lambda s: None)
    offline.client = client  # one client for the lanes and offline mode, as the adapter builds it
    sink = RecordingBarrier()
    (held,) = _truck(client, outbox, sink, offline)
    assert held.response is None and not held.offline and held.pending, held
    assert f"{status} {error}" in (held.error or "")
    assert [(c.command, c.call_officer) for c in sink.commands] == [(BarrierCommand.HOLD, True)]
    assert outbox.held_latch(LANE) is not None  # the officer is called; the lane stays held for him
    assert [p.request_id for p in outbox.pending()] == [held.request_id] and outbox.unreconciled() == []
    assert gate.state(rid) == "nominated"
    with pytest.raises(VerifyRefused):  # the passes' refresh is refused too (maintain logs it and goes on)
        offline.refresh()
    store.close()
    # A refusal is not asked again at once (the same answer would come); an overload is, within the
    # truck's attempts. The refresh makes one attempt.
    assert token_endpoint.hits == (3 + 1 if status == 429 else 1 + 1)
    with pytest.raises(TokenRefused) as refused:  # what ClientCredentials says: a TokenError, a refusal
        tokens.token()
    assert isinstance(refused.value, VerifyRefused) and not refused.value.final
    assert (refused.value.status, refused.value.code) == (status, error)


def test_a_token_that_is_not_dpop_bound_is_a_refusal_too(
        gate: Gate, outbox: Outbox, tmp_path: Path, token_endpoint: TokenEndpoint) -> None:
    """A DPoP adapter given a bearer token (RFC 9449 §5: the service ignored the proof): the service is up
    and misconfigured, or someone between strips the binding; either way no outage, so no offline mode."""
    from gate_adapters.runtime.dpop import DPoPKey

    rid = gate.pickable(1)
    offline, store = _offline(gate, outbox, tmp_path)
    token_endpoint.status = 200
    token_endpoint.body = {"access_token": "a-bearer-token", "token_type": "Bearer", "expires_in": 300}
    DPoPKey.create(tmp_path / "dpop.jwk")
    tokens = ClientCredentials(token_endpoint.url, "qg-terminal-gate-test", "s3cret",
                               dpop=DPoPKey.load(tmp_path / "dpop.jwk"))
    client = VerifyClient("http://testserver", tokens, http=gate.http, attempts=3, sleep=lambda s: None)
    sink = RecordingBarrier()
    (held,) = _truck(client, outbox, sink, offline)
    store.close()
    assert held.response is None and not held.offline and held.pending, held
    assert "token_not_dpop" in (held.error or "") and token_endpoint.hits == 1
    assert [(c.command, c.call_officer) for c in sink.commands] == [(BarrierCommand.HOLD, True)]
    assert outbox.unreconciled() == [] and gate.state(rid) == "nominated"


def test_a_token_endpoint_that_cannot_answer_is_an_outage(
        gate: Gate, outbox: Outbox, tmp_path: Path, token_endpoint: TokenEndpoint) -> None:
    """The contrast: a 5xx after every attempt is no answer, and the lane decides from its passes."""
    rid = gate.pickable(1)
    offline, store = _offline(gate, outbox, tmp_path)
    token_endpoint.status, token_endpoint.body = 503, {"error": "temporarily_unavailable"}
    client = VerifyClient("http://testserver", ClientCredentials(token_endpoint.url, "qg-terminal-gate-test", "s"),
                          http=gate.http, attempts=2, sleep=lambda s: None)
    sink = RecordingBarrier()
    (decided,) = _truck(client, outbox, sink, offline)
    store.close()
    assert decided.offline and decided.decision == "allow", decided
    assert [c.command for c in sink.commands] == [BarrierCommand.OPEN]
    assert token_endpoint.hits == 2 and gate.state(rid) == "nominated"  # reconciled later

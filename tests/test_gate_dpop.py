"""The adapter's client with DPoP (RFC 9449) against the real app (real token endpoint, real gate API,
SQLite and PostgreSQL): a gate client registered ``dpop_bound`` is refused by a bearer-only adapter and
served by the DPoP one on every call the adapter makes (verify, gate passes, offline reconcile); the
token it gets is refused when replayed as a bearer token or with another key's proof; a revoked token
is dropped and replaced; server nonces (RFC 9449 §8, §9) are used and kept newest.

The service sends no nonces today, so the nonce tests put a standards-level nonce front (``NonceFront``:
§8 at the token endpoint, §9 at the API, a nonce rotated on 200 answers) before the real app, which
still checks every proof and decides every verify.

The service's own refusals of bound tokens on /api/v1 (re-signed tokens, RFC 9449 §7) are in
tests/test_release_auth.py (``test_bound_token_as_bearer_is_refused``,
``test_proof_signed_by_another_key_than_cnf_jkt_is_refused``, ``test_replayed_proof_is_refused``,
``test_wrong_ath_is_refused``); here they are on the gate API with a token the token endpoint bound.
"""
# ruff: noqa: F811 - ``gate`` is test_gate_verify's fixture, imported here and requested by name

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from joserfc import jws
from joserfc.jwk import ECKey

from gate_adapters.adapter import main as adapter_main
from gate_adapters.adapter import tokens_for
from gate_adapters.runtime.client import ClientCredentials, TokenError, VerifyClient, VerifyRefused
from gate_adapters.runtime.config import ConfigError, parse
from gate_adapters.runtime.dpop import DPoPKey
from gate_adapters.runtime.offline import OfflineMode, PassStore
from gate_adapters.runtime.outbox import Outbox
from identity.bootstrap import create_client
from quaygate.cache import MemoryCache

from .factories import TERMINAL
from .test_gate_runtime import RecordingBarrier, reads, runtime
from .test_gate_verify import Gate, gate  # noqa: F401

DEAD = "http://127.0.0.1:9"  # nothing listens: the outage


def _now() -> datetime:
    return datetime.now(UTC)


def public_url(gate: Gate) -> str:
    """The service's public URL (its issuer): what a proof's htu names (release_service/api/auth.py)."""
    return str(gate.http.app.state.container.settings.issuer).rstrip("/")  # type: ignore[attr-defined]


def gate_client(gate: Gate, *, dpop_bound: bool = True) -> tuple[str, str]:
    client_id, secret = create_client(gate.engine, name="dpop gate", role="terminal_gate",
                                      organisation_id=gate.p.terminal.organisation_id, terminal_code=TERMINAL,
                                      now=_now(), dpop_bound=dpop_bound)
    assert secret is not None
    return client_id, secret


def tokens(gate: Gate, client: tuple[str, str], key: DPoPKey | None, http: httpx.Client | None = None
           ) -> ClientCredentials:
    return ClientCredentials(public_url(gate) + "/oauth2/token", client[0], client[1], dpop=key,
                             http=http or gate.http)


def claims_of(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


@pytest.fixture
def key(tmp_path: Path) -> DPoPKey:
    created, _ = DPoPKey.create(tmp_path / "dpop.jwk")
    assert created
    return DPoPKey.load(tmp_path / "dpop.jwk")


# -- a dpop_bound gate client -------------------------------------------------------------------------


def test_a_dpop_bound_client_is_refused_without_dpop_and_served_with_it(gate: Gate, key: DPoPKey) -> None:
    rid = gate.pickable(1)
    client = gate_client(gate)
    bearer = tokens(gate, client, None)
    with pytest.raises(TokenError, match="400"):  # RFC 9449 §5: invalid_dpop_proof, no token
        bearer.token()
    with pytest.raises(VerifyRefused) as refused:  # a refusal, not an outage: the lane holds, never offline
        VerifyClient(public_url(gate), bearer, http=gate.http, attempts=1).verify(gate.body(1, mode="commit"))
    assert (refused.value.status, refused.value.code, refused.value.final) == (400, "invalid_dpop_proof", False)
    assert gate.state(rid) == "nominated"

    bound = tokens(gate, client, key)
    got = VerifyClient(public_url(gate), bound, http=gate.http).verify(gate.body(1, mode="commit"))
    assert (got["decision"], got["committed"]) == ("allow", True), got
    assert gate.state(rid) == "gated_in"
    assert claims_of(bound.token())["cnf"] == {"jkt": key.jkt}  # RFC 9449 §6.1: bound to our key


def test_gate_passes_and_the_offline_reconcile_take_dpop(gate: Gate, key: DPoPKey, tmp_path: Path) -> None:
    """Every call of offline mode with the DPoP client: the JWKS, the passes, the reconcile."""
    rid = gate.pickable(2)
    online = VerifyClient(public_url(gate), tokens(gate, gate_client(gate), key), http=gate.http)
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    store = PassStore(tmp_path / "passes.sqlite3", issuer=public_url(gate), terminal=TERMINAL, secret=b"adapter")
    try:
        offline = OfflineMode(online, store, outbox)
        assert offline.refresh() >= 1  # GET /oauth2/jwks and GET /gate/v1/passes
        offline.client = VerifyClient(DEAD, tokens(gate, gate_client(gate), key), attempts=1, timeout=0.5)
        lane = runtime(offline.client, outbox, RecordingBarrier(), offline=offline)
        results = [r for read in reads("1-ABC-123", 2, at=_now()) for r in lane.feed(read)]
        assert [r.response["decision"] for r in results if r.response] == ["allow"]
        assert gate.state(rid) == "nominated"  # decided offline: the service has not heard yet
        offline.client = online
        assert offline.reconcile() == 1  # POST /gate/v1/offline-decisions
        assert gate.state(rid) == "gated_in" and outbox.unreconciled() == []
    finally:
        outbox.close()
        store.close()


@pytest.mark.parametrize(("method", "path"), [("POST", "/gate/v1/verify"), ("GET", "/gate/v1/passes"),
                                              ("POST", "/gate/v1/offline-decisions")])
def test_a_bound_token_is_refused_as_bearer_or_with_another_keys_proof(gate: Gate, key: DPoPKey, method: str,
                                                                       path: str) -> None:
    rid = gate.pickable(3)
    token = tokens(gate, gate_client(gate), key).token()
    url = public_url(gate) + path
    body = gate.body(3, mode="commit") if path.endswith("verify") else ({} if method == "POST" else None)

    as_bearer = gate.http.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert as_bearer.status_code == 401, as_bearer.text
    challenge = as_bearer.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token"') and 'DPoP algs="' in challenge, challenge

    thief = DPoPKey(ECKey.generate_key("P-256", private=True))
    stolen = gate.http.request(method, url, json=body, headers={
        "Authorization": f"DPoP {token}", "DPoP": thief.proof(method, url, access_token=token)})
    assert stolen.status_code == 401, stolen.text
    assert stolen.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')

    no_proof = gate.http.request(method, url, json=body, headers={"Authorization": f"DPoP {token}"})
    assert no_proof.status_code == 401 and no_proof.headers["www-authenticate"].startswith('DPoP error=')
    assert gate.state(rid) == "nominated"  # nothing was decided on a refused token

    owner = gate.http.request(method, url, json=body, headers={
        "Authorization": f"DPoP {token}", "DPoP": key.proof(method, url, access_token=token)})
    assert owner.status_code != 401, owner.text  # the same token with its own key's proof is heard


def test_a_revoked_dpop_token_is_dropped_and_a_new_one_fetched(gate: Gate, key: DPoPKey) -> None:
    rid = gate.pickable(4)
    client = gate_client(gate)
    provider = tokens(gate, client, key)
    verify = VerifyClient(public_url(gate), provider, http=gate.http)
    assert verify.verify(gate.body(4))["decision"] == "allow"  # a check: the right stays unused
    first = provider.token()
    r = gate.http.post("/oauth2/revoke", data={"token": first, "token_type_hint": "access_token"},
                       auth=client)
    assert r.status_code == 200, r.text
    refused = gate.http.post(public_url(gate) + "/gate/v1/verify", json=gate.body(4), headers={
        "Authorization": f"DPoP {first}", "DPoP": key.proof("POST", public_url(gate) + "/gate/v1/verify",
                                                             access_token=first)})
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith('DPoP error="invalid_token"')
    got = verify.verify(gate.body(4, mode="commit"))  # 401 invalid_token: dropped, a new one, once
    assert (got["decision"], got["committed"]) == ("allow", True), got
    assert provider.token() != first and gate.state(rid) == "gated_in"


# -- server nonces (RFC 9449 §8, §9) -------------------------------------------------------------------


class NonceFront:
    """An ASGI front that asks for DPoP nonces as RFC 9449 lets a server do, before the real app: a proof
    without the current nonce gets ``use_dpop_nonce`` with a ``DPoP-Nonce`` header (§8: a 400 OAuth error
    from the token endpoint; §9: a 401 ``WWW-Authenticate: DPoP`` from the API), and with ``rotate`` a 200
    answer carries the next nonce (§8.2). Everything else, proof checks included, is the real app's."""

    def __init__(self, app: Any, *, rotate: bool = False, always_new: bool = False) -> None:
        self.app, self.rotate, self.always_new = app, rotate, always_new
        self.nonce = secrets.token_urlsafe(8)
        self.challenged: list[str] = []
        self.nonces_seen: list[str | None] = []  # the nonce in each proof that came in
        self.given: list[str] = []  # each DPoP-Nonce handed out, in order

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        proof = headers.get("dpop")
        if proof is not None:
            part = proof.split(".")[1]
            sent = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))).get("nonce")
            self.nonces_seen.append(sent)
            if sent != self.nonce or self.always_new:
                if self.always_new:
                    self.nonce = secrets.token_urlsafe(8)
                self.challenged.append(scope["path"])
                await self._ask(scope["path"], send)
                return

        async def send_with_nonce(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and self.rotate and message["status"] == 200:
                self.nonce = secrets.token_urlsafe(8)
                self.given.append(self.nonce)
                message["headers"] = [*message.get("headers", []), (b"dpop-nonce", self.nonce.encode())]
            await send(message)

        await self.app(scope, receive, send_with_nonce)

    async def _ask(self, path: str, send: Any) -> None:
        if path == "/oauth2/token":
            status, body = 400, {"error": "use_dpop_nonce", "error_description": "Authorization server requires nonce"}
            extra: list[tuple[bytes, bytes]] = []
        else:
            status, body = 401, {"error": "use_dpop_nonce"}
            extra = [(b"www-authenticate", b'DPoP error="use_dpop_nonce", error_description="Resource server '
                                           b'requires nonce in DPoP proof", algs="ES256"')]
        self.given.append(self.nonce)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"dpop-nonce", self.nonce.encode()), *extra]})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@pytest.fixture
def front(gate: Gate) -> Iterator[tuple[NonceFront, httpx.Client]]:
    nonce_front = NonceFront(gate.http.app, rotate=True)
    yield nonce_front, TestClient(nonce_front)  # the app's lifespan already runs under ``gate``


def test_server_nonces_are_sent_retried_once_and_kept_newest(gate: Gate, key: DPoPKey,
                                                            front: tuple[NonceFront, httpx.Client]) -> None:
    nonce_front, http = front
    rids = [gate.pickable(n) for n in (5, 6, 7)]
    provider = tokens(gate, gate_client(gate), key, http=http)
    verify = VerifyClient(public_url(gate), provider, http=http)
    for n in (5, 6, 7):
        got = verify.verify(gate.body(n, mode="commit"))
        assert (got["decision"], got["committed"]) == ("allow", True), got
    # One nonce challenge at the token endpoint (§8) and one at the API (§9), each retried once with the
    # nonce; after that each 200's newer nonce went into the next proof, so nothing was asked again.
    assert nonce_front.challenged == ["/oauth2/token", "/gate/v1/verify"]
    g = nonce_front.given  # challenge, token's 200, challenge (the same nonce), verify's three 200s
    assert len(g) == 6 and g[2] == g[1]
    assert nonce_front.nonces_seen == [None, g[0], None, g[2], g[3], g[4]]  # the API's nonce kept apart
    assert [gate.state(rid) for rid in rids] == ["gated_in"] * 3


def test_the_services_own_nonces_let_a_gate_in_at_once_after_its_cache_lost_its_data(
        gate: Gate, key: DPoPKey, epochs_as_made: None) -> None:
    """The service's cache has just begun its dataset (a server started on the in-process cache, a Redis
    that restarted empty): a proof could have been used before it, so the service asks for its epoch's
    nonce (quaygate/dataset.py; RFC 9449 §8 at the token endpoint, §9 at the API), and the adapter's
    client, retrying once with it, gets its token and its allow at once, not after the 5 s leeway."""
    app = gate.http.app
    app.state.container.cache = MemoryCache()  # type: ignore[attr-defined]  # its epoch: now
    app.state.identity = None  # type: ignore[attr-defined]  # the provider (and its DPoP verifier) on it
    rid = gate.pickable(8)
    answers: list[tuple[str, int, str | None]] = []
    gate.http.event_hooks = {"response": [lambda r: answers.append(
        (r.request.url.path, r.status_code, r.headers.get("DPoP-Nonce")))]}
    got = VerifyClient(public_url(gate), tokens(gate, gate_client(gate), key), http=gate.http).verify(
        gate.body(8, mode="commit"))
    assert (got["decision"], got["committed"]) == ("allow", True), got
    assert gate.state(rid) == "gated_in"
    nonce = answers[0][2]
    assert nonce and answers == [("/oauth2/token", 400, nonce), ("/oauth2/token", 200, None),
                                 ("/gate/v1/verify", 401, nonce), ("/gate/v1/verify", 200, None)], answers


def test_a_server_asking_for_a_new_nonce_every_time_is_not_retried_forever(gate: Gate, key: DPoPKey) -> None:
    restless = NonceFront(gate.http.app, always_new=True)
    http = TestClient(restless)
    with pytest.raises(TokenError, match="400"):  # §8: retried once with the nonce, then refused
        tokens(gate, gate_client(gate), key, http=http).token()
    assert restless.challenged == ["/oauth2/token"] * 2
    token = tokens(gate, gate_client(gate), key).token()  # the real app: no nonce asked
    with pytest.raises(VerifyRefused) as refused:
        VerifyClient(public_url(gate), _Fixed(token, key), http=http).verify(gate.body(8))
    assert refused.value.status == 401
    # Per send: the first try and one with the nonce; the 401 then drops the token once (rule 2): 4 in all.
    assert restless.challenged[2:] == ["/gate/v1/verify"] * 4


class _Fixed:
    """A token already bound to ``dpop`` (what ClientCredentials gives after its fetch)."""

    def __init__(self, token: str, dpop: DPoPKey) -> None:
        self._token, self.dpop = token, dpop

    def token(self) -> str:
        return self._token

    def invalidate(self) -> None:
        """Nothing to refresh."""


# -- settings and the key command -----------------------------------------------------------------------


def _doc(**auth: Any) -> dict[str, Any]:
    return {"terminal": TERMINAL, "outbox": "o.sqlite3", "dev": True, "service": {"base_url": "http://127.0.0.1:8000"},
            "auth": {"client_id": "g", "client_secret_file": "secret", **auth}, "http": {"port": 8089},
            "lanes": [{"lane": "in-1"}]}


def test_make_keys_makes_the_dpop_key_once_and_never_prints_it(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gate-adapter.toml"
    config.write_text(f'terminal = "{TERMINAL}"\noutbox = "o.sqlite3"\n[service]\nbase_url = "https://q.example"\n'
                      '[auth]\nclient_id = "g"\nclient_secret_file = "secret"\ndpop_key_file = "keys/dpop.jwk"\n'
                      '[mqtt]\nusername = "g"\npassword_file = "mqtt-password"\n[[lanes]]\nlane = "in-1"\n')
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "mqtt-password").write_text("p\n")
    for secret in ("secret", "mqtt-password"):  # a secret file readable by others is refused outside dev
        (tmp_path / secret).chmod(0o600)
    assert adapter_main(["--config", str(config), "--check"]) == 2  # the key is not there yet
    assert "auth.dpop_key_file: " in capsys.readouterr().err
    assert adapter_main(["--config", str(config), "--make-keys"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "keys" / "dpop.jwk"
    stored = json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stored["kty"] == "EC" and stored["crv"] == "P-256"
    jkt = DPoPKey.load(path).jkt
    assert f"made {path}" in out and jkt in out and stored["d"] not in out
    assert adapter_main(["--config", str(config), "--make-keys"]) == 0  # never over an existing key
    assert "kept the existing" in capsys.readouterr().out and json.loads(path.read_text()) == stored
    assert adapter_main(["--config", str(config), "--check"]) == 0
    capsys.readouterr()
    settings = parse({**_doc(dpop_key_file=str(path))}, base=tmp_path)
    provider = tokens_for(settings)
    assert provider.dpop is not None and provider.dpop.jkt == jkt and stored["d"] not in repr(provider.dpop)


def test_dpop_settings(tmp_path: Path) -> None:
    assert parse(_doc(), base=tmp_path).auth.dpop is False  # an older settings file: bearer, as before
    on = parse(_doc(dpop_key_file="k.jwk"), base=tmp_path).auth
    assert on.dpop and on.dpop_key_file == tmp_path / "k.jwk"
    assert parse(_doc(dpop_key_file="k.jwk", dpop=False), base=tmp_path).auth.dpop is False
    with pytest.raises(ConfigError) as exc:
        parse(_doc(dpop=True), base=tmp_path)
    assert exc.value.key == "auth.dpop_key_file"
    (tmp_path / "k.jwk").write_text('{"kty": "oct", "k": "c2VjcmV0"}')
    (tmp_path / "secret").write_text("s")
    with pytest.raises(ConfigError) as bad:
        tokens_for(parse(_doc(dpop_key_file="k.jwk"), base=tmp_path))
    assert bad.value.key == "auth.dpop_key_file" and "c2VjcmV0" not in str(bad.value)


def test_a_proof_is_what_rfc_9449_asks(key: DPoPKey) -> None:
    """The proof's parts, read back with joserfc and the public key in its own header."""
    proof = key.proof("POST", "https://q.example/gate/v1/verify?x=1#f", access_token="tok", nonce="n-1")
    obj = jws.extract_compact(proof.encode())
    header = obj.headers()
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256" and set(header["jwk"]) == {"kty", "crv", "x", "y"}
    jws.deserialize_compact(proof, ECKey.import_key(header["jwk"]), algorithms=["ES256"])
    claims = json.loads(obj.payload)
    assert claims["htm"] == "POST" and claims["htu"] == "https://q.example/gate/v1/verify"
    assert claims["ath"] == base64.urlsafe_b64encode(hashlib.sha256(b"tok").digest()).rstrip(b"=").decode()
    assert claims["nonce"] == "n-1" and isinstance(claims["iat"], int) and len(claims["jti"]) >= 16
    other = key.proof("POST", "https://q.example/gate/v1/verify")
    assert json.loads(jws.extract_compact(other.encode()).payload)["jti"] != claims["jti"]
    assert "ath" not in json.loads(jws.extract_compact(other.encode()).payload)

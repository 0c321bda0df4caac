"""The release API's authentication on the real app: Bearer and DPoP (RFC 9449 §7), step-up (RFC 9470).

Tokens come from our own token endpoint; a DPoP-bound one is the same token re-signed with the app's
signing key and a ``cnf.jkt`` added, as the token endpoint will issue it (RFC 9449 §6.1).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import Depends
from fastapi.testclient import TestClient
from joserfc import jws

from identity.bootstrap import create_client, provider_for
from identity.domain.assurance import ACR_FACE, ACR_PASSKEY
from identity.tokens import sign_access_token
from quaygate.app import create_app
from quaygate.cache import MemoryCache
from quaygate.container import Container
from quaygate.crypto import DataCipher
from quaygate.settings import Settings
from release_service.api.auth import require
from release_service.domain.parties import Actor, OrgKind

from .aio import chunks_of, post_counting_body
from .factories import add_org
from .test_identity_dpop_support import ProofKey

PUBLIC = "https://quaygate.example"  # the issuer: the public base URL the client signs htu with
RELEASES = "/api/v1/releases"


class Clock:
    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at


@dataclass
class Rig:
    http: TestClient
    app: Any
    engine: sa.Engine
    clock: Clock
    claims: dict[str, Any]  # a real client-credentials token's claims

    def sign(self, **changes: Any) -> str:
        claims = {**self.claims, "jti": uuid.uuid4().hex, **changes}
        claims = {k: v for k, v in claims.items() if v is not None}
        return sign_access_token(claims, provider_for(self.app).keys.signing_key())

    def bound(self, key: ProofKey, **changes: Any) -> str:
        return self.sign(cnf={"jkt": key.jkt}, **changes)

    def dpop_get(self, token: str, proof: str | None, path: str = RELEASES) -> Any:
        headers = {"Authorization": f"DPoP {token}"}
        if proof is not None:
            headers["DPoP"] = proof
        return self.http.get(path, headers=headers)


@pytest.fixture
def rig(engine: sa.Engine, tmp_path: Path) -> Iterator[Rig]:
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        background_workers=False, issuer=PUBLIC)
    clock = Clock()
    container = Container(settings=settings, engine=engine, cache=MemoryCache(),
                          cipher=DataCipher(settings.data_key_bytes()), clock=clock)  # type: ignore[arg-type]
    app = create_app(settings, container=container)

    @app.get("/test/step-up")
    def step_up(actor: Actor = Depends(require("releases:read", ACR_FACE, max_age=300))) -> dict[str, str]:  # noqa: B008
        return {"client_id": actor.client_id}

    with TestClient(app) as http:
        line = add_org(engine, OrgKind.SHIPPING_LINE)
        client_id, secret = create_client(engine, name="line", role="shipping_line",
                                          organisation_id=line.organisation_id, now=datetime.now(UTC))
        r = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret or ""))
        assert r.status_code == 200, r.text
        claims = json.loads(jws.extract_compact(r.json()["access_token"].encode()).payload)
        yield Rig(http, app, engine, clock, claims)


def challenge(r: Any) -> str:
    return str(r.headers["www-authenticate"])


def assert_refused(r: Any, scheme: str, error: str) -> None:
    assert r.status_code == 401, r.text
    assert challenge(r).startswith(f'{scheme} error="{error}"'), challenge(r)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == error


def proof_key(rig: Rig) -> ProofKey:
    return ProofKey(clock=[time.time()])


# -- DPoP on /api/v1 ------------------------------------------------------------------------------------


def test_valid_dpop_call_succeeds(rig: Rig) -> None:
    key = proof_key(rig)
    token = rig.bound(key)
    r = rig.dpop_get(token, key.proof("GET", PUBLIC + RELEASES, token=token))
    assert r.status_code == 200, r.text


def test_bound_token_as_bearer_is_refused(rig: Rig) -> None:
    token = rig.bound(proof_key(rig))
    r = rig.http.get(RELEASES, headers={"Authorization": f"Bearer {token}"})
    assert_refused(r, "Bearer", "invalid_token")
    assert 'DPoP algs="' in challenge(r)  # tells the client which scheme to use (RFC 9449 §7.1)


def test_bound_token_without_proof_is_refused(rig: Rig) -> None:
    token = rig.bound(proof_key(rig))
    assert_refused(rig.dpop_get(token, None), "DPoP", "invalid_dpop_proof")


def test_unbound_token_with_dpop_scheme_is_refused(rig: Rig) -> None:
    key = proof_key(rig)
    token = rig.sign()
    assert_refused(rig.dpop_get(token, key.proof("GET", PUBLIC + RELEASES, token=token)), "DPoP", "invalid_token")


def test_unbound_bearer_token_still_works(rig: Rig) -> None:
    assert rig.http.get(RELEASES, headers={"Authorization": f"Bearer {rig.sign()}"}).status_code == 200


def test_proof_signed_by_another_key_than_cnf_jkt_is_refused(rig: Rig) -> None:
    owner, thief = proof_key(rig), proof_key(rig)
    token = rig.bound(owner)
    r = rig.dpop_get(token, thief.proof("GET", PUBLIC + RELEASES, token=token))
    assert_refused(r, "DPoP", "invalid_dpop_proof")
    assert "bound to" in r.json()["detail"]


def test_replayed_proof_is_refused(rig: Rig) -> None:
    key = proof_key(rig)
    token = rig.bound(key)
    proof = key.proof("GET", PUBLIC + RELEASES, token=token)
    assert rig.dpop_get(token, proof).status_code == 200
    assert_refused(rig.dpop_get(token, proof), "DPoP", "invalid_dpop_proof")


def test_wrong_htm_is_refused(rig: Rig) -> None:
    key = proof_key(rig)
    token = rig.bound(key)
    assert_refused(rig.dpop_get(token, key.proof("POST", PUBLIC + RELEASES, token=token)), "DPoP",
                   "invalid_dpop_proof")


def test_htu_is_the_public_url_not_the_internal_one(rig: Rig) -> None:
    key = proof_key(rig)
    token = rig.bound(key)
    # The TestClient reaches the app as http://testserver: a proof naming that URL, or another path,
    # is refused; the issuer's origin is what counts.
    assert_refused(rig.dpop_get(token, key.proof("GET", "http://testserver" + RELEASES, token=token)), "DPoP",
                   "invalid_dpop_proof")
    assert_refused(rig.dpop_get(token, key.proof("GET", PUBLIC + "/api/v1/transfers", token=token)), "DPoP",
                   "invalid_dpop_proof")
    assert rig.dpop_get(token, key.proof("GET", PUBLIC + RELEASES + "?state=x", token=token)).status_code == 200


def test_wrong_ath_is_refused(rig: Rig) -> None:
    key = proof_key(rig)
    token, other = rig.bound(key), rig.bound(key)
    assert_refused(rig.dpop_get(token, key.proof("GET", PUBLIC + RELEASES, token=other)), "DPoP",
                   "invalid_dpop_proof")
    assert_refused(rig.dpop_get(token, key.proof("GET", PUBLIC + RELEASES)), "DPoP", "invalid_dpop_proof")


def test_stale_proof_is_refused(rig: Rig) -> None:
    key = ProofKey(clock=[time.time() - 120])
    token = rig.bound(key)
    assert_refused(rig.dpop_get(token, key.proof("GET", PUBLIC + RELEASES, token=token)), "DPoP",
                   "invalid_dpop_proof")


def test_invalid_token_with_dpop_scheme_gets_a_dpop_challenge(rig: Rig) -> None:
    key = proof_key(rig)
    token = rig.bound(key, aud="someone-else")
    assert_refused(rig.dpop_get(token, key.proof("GET", PUBLIC + RELEASES, token=token)), "DPoP", "invalid_token")


def test_no_token_offers_both_schemes(rig: Rig) -> None:
    r = rig.http.get(RELEASES)
    assert_refused(r, "Bearer", "invalid_request")
    assert ', DPoP algs="ES256 RS256 PS256 Ed25519"' in challenge(r)


# -- step-up (RFC 9470) ---------------------------------------------------------------------------------


def person(rig: Rig, acr: str | None, auth_age: int = 0, **more: Any) -> str:
    claims = {"person_id": str(uuid.uuid4()), "acr": acr, "auth_time": int(rig.clock.at.timestamp()) - auth_age}
    return rig.sign(**{**claims, **more})


def test_step_up_challenge_when_acr_is_too_weak(rig: Rig) -> None:
    r = rig.http.get("/test/step-up", headers={"Authorization": f"Bearer {person(rig, ACR_PASSKEY)}"})
    assert r.status_code == 401, r.text
    assert challenge(r) == (
        'Bearer error="insufficient_user_authentication", '
        'error_description="A stronger authentication is required for this call.", '
        f'acr_values="{ACR_FACE}", max_age="300"'
    )
    assert r.json()["code"] == "insufficient_user_authentication"


def test_step_up_challenge_when_acr_is_missing(rig: Rig) -> None:
    r = rig.http.get("/test/step-up", headers={"Authorization": f"Bearer {person(rig, None)}"})
    assert_refused(r, "Bearer", "insufficient_user_authentication")


def test_step_up_challenge_when_login_is_too_old(rig: Rig) -> None:
    r = rig.http.get("/test/step-up", headers={"Authorization": f"Bearer {person(rig, ACR_FACE, auth_age=301)}"})
    assert_refused(r, "Bearer", "insufficient_user_authentication")
    assert 'max_age="300"' in challenge(r) and "more recent" in challenge(r)
    r = rig.http.get("/test/step-up", headers={"Authorization": f"Bearer {person(rig, ACR_FACE, auth_time=None)}"})
    assert_refused(r, "Bearer", "insufficient_user_authentication")


def test_strong_recent_login_passes_step_up(rig: Rig) -> None:
    r = rig.http.get("/test/step-up", headers={"Authorization": f"Bearer {person(rig, ACR_FACE, auth_age=299)}"})
    assert r.status_code == 200, r.text


def test_machine_token_is_not_subject_to_acr(rig: Rig) -> None:
    r = rig.http.get("/test/step-up", headers={"Authorization": f"Bearer {rig.sign()}"})
    assert r.status_code == 200, r.text


def test_step_up_on_a_dpop_request_uses_the_dpop_scheme(rig: Rig) -> None:
    key = proof_key(rig)
    token = person(rig, ACR_PASSKEY, cnf={"jkt": key.jkt})
    r = rig.dpop_get(token, key.proof("GET", PUBLIC + "/test/step-up", token=token), "/test/step-up")
    assert_refused(r, "DPoP", "insufficient_user_authentication")


# -- Authenticated before the body is read (quaygate/routing.py AdmitFirst) -----------------------------

_JUNK = b'{"items": [' + b"0," * 200_000 + b"0]"  # 400 KB, not even JSON: parsing it is the attacker's aim
_BODY_ROUTES = ["/api/v1/releases", "/api/v1/releases:batch",
                "/api/v1/releases/00000000-0000-4000-8000-000000000001/transfers",  # fixed: a test's name
                "/api/v1/webhooks", "/gate/v1/offline-decisions", "/gate/v1/overrides"]


def _raw_post(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, int, dict[str, Any]]:
    """POST ``_JUNK`` to ``path`` straight through ASGI: the status, how many of the body's messages the
    app read, and the answer."""
    status, read, _, answer = post_counting_body(app, path, _JUNK, headers, host="quaygate.example", port=443,
                                                 scheme="https")
    return status, read, answer


@pytest.mark.parametrize("path", _BODY_ROUTES)
def test_a_caller_without_a_valid_token_is_refused_before_any_of_its_body_is_read(rig: Rig, path: str) -> None:
    """Up to 16 MiB of body (a batch), 8 MiB (an offline decision with its face capture): nobody
    without a valid token makes the server read and parse it. 401 on the headers alone, not one
    message of the body read; with a valid token the same body is read and refused as before (400)."""
    for headers, code in (([], "invalid_request"), ([(b"authorization", b"Bearer not.a.token")], "invalid_token")):
        status, read, answer = _raw_post(rig.app, path, headers)
        assert (status, read, answer["code"]) == (401, 0, code), (path, answer)
    token = rig.sign(scope="releases:write releases:read gate:verify",
                     aud="quaygate-gate" if path.startswith("/gate/") else "quaygate-api")
    status, read, answer = _raw_post(rig.app, path, [(b"authorization", f"Bearer {token}".encode())])
    assert (status, read, answer["code"]) == (400, len(chunks_of(_JUNK)), "malformed_json"), (path, answer)


def test_a_dpop_proof_on_a_route_with_a_body_is_claimed_once(rig: Rig) -> None:
    """The caller is authenticated before the body is read, and the route's dependency takes what was
    found then: the proof's jti is claimed once (a second claim would refuse the request as a replay)."""
    key = proof_key(rig)
    token = rig.bound(key)
    proof = key.proof("POST", PUBLIC + "/api/v1/releases", token=token)
    r = rig.http.post("/api/v1/releases", json={"container_number": "not one"},
                      headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert r.status_code == 422, r.text  # the body judged, after the token and its proof passed once
    again = rig.http.post("/api/v1/releases", json={"container_number": "not one"},
                          headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert_refused(again, "DPoP", "invalid_dpop_proof")  # the same proof again: a replay


@pytest.mark.parametrize("path", ["/gate/v1/verify", "/", "//twice", "/a%2Fb", '/q"uote', "/space here", "/a?b",
                                  "/a#b", "/back\\slash", "/tab\there", "/new\nline", "/caf\u00e9", "/root/app/x"])
def test_the_htu_a_proof_must_name_is_the_path_as_starlette_reads_it(path: str) -> None:
    """``public_request_uri`` reads a plain path as it is, without building the request's URL: for
    every path, plain or not, it is the issuer's origin and the path Starlette's ``request.url`` gives."""
    from types import SimpleNamespace

    from starlette.requests import Request

    from release_service.api.auth import public_request_uri

    app = SimpleNamespace(state=SimpleNamespace(container=SimpleNamespace(
        settings=SimpleNamespace(issuer=PUBLIC + "/base/"))))
    request = Request({"type": "http", "method": "POST", "scheme": "http", "path": path, "root_path": "",
                       "query_string": b"x=1", "headers": [(b"host", b"internal:8000")], "app": app})
    assert public_request_uri(request) == PUBLIC + request.url.path

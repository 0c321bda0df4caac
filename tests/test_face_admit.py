"""The face routes check their caller on the headers before any of the body is read (quaygate/routing.py
AdmitFirst, ``admit_first``): a face enrolment or a step-up carries an image of several MiB, which
nobody without the badge office's token, or without our Origin and a live login session, makes the
server read and parse. Requests go straight through ASGI, counting the body's messages the app read."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bootstrap import create_client
from identity.domain import assurance
from identity.dpop import access_token_hash
from identity.sessions import sessions_for
from quaygate.limits import IMAGE_BODY_BYTES
from release_service.domain.parties import OrgKind
from tests.aio import chunks_of, post_counting_body
from tests.factories import add_org
from tests.test_identity_grants_support import Lifecycle, dpop_key, dpop_proof, make_lifecycle, utcnow
from tests.test_identity_support import ISSUER, basic

SOME_ID = "00000000-0000-4000-8000-000000000001"  # fixed: it names no one, and the tests' ids stay stable
ENROL = f"/admin/v1/persons/{SOME_ID}/face"
STEP_UP = "/face/step-up"
BAN_FEED = "/admin/v1/bans/feeds"  # the other identity route with a large body (64 MiB)
_JUNK = b'{"image": "' + b"A" * 400_000 + b'", ]'  # 400 KB that is not even JSON: parsing it is the aim


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path)


def _post(env: Lifecycle, path: str, headers: dict[str, str], body: bytes = _JUNK) -> tuple[int, int, Any, Any]:
    """POST ``body`` to ``path`` straight through ASGI: the status, how many of the body's messages the
    app read, the answer's headers and its JSON."""
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return post_counting_body(env.app, path, body, raw)


def _office(env: Lifecycle, scope: str | None = None) -> dict[str, str]:
    client_id, secret, _ = env.machine("admin")
    return {"Authorization": f"Bearer {env.machine_token(client_id, secret, scope=scope)}"}


def _session(env: Lifecycle) -> dict[str, str]:
    cookie, _ = sessions_for(env.app).create(env.person(), acr=assurance.ACR_PASSKEY, amr=assurance.AMR_PASSKEY,
                                             now=env.container.clock.now())
    return {"Origin": ISSUER, "Cookie": f"{env.container.settings.session_cookie}={cookie}"}


# Refused on the headers alone: (path, who calls, status, code, the challenge's start or None).
_REFUSED = [
    (ENROL, "nobody", 401, "invalid_request", 'Bearer error="invalid_request"'),
    (ENROL, "a bad token", 401, "invalid_token", 'Bearer error="invalid_token"'),
    (ENROL, "port security", 403, "badge_office_required", 'Bearer error="badge_office_required"'),
    (STEP_UP, "no origin", 403, "origin_refused", None),
    (STEP_UP, "another origin", 403, "origin_refused", None),
    (STEP_UP, "no session", 401, "login_required", None),
    (STEP_UP, "a forged session", 401, "login_required", None),
    (BAN_FEED, "nobody", 401, "invalid_request", 'Bearer error="invalid_request"'),
]


def _caller(env: Lifecycle, who: str) -> dict[str, str]:
    cookie = env.container.settings.session_cookie
    return {
        "nobody": lambda: {},
        "a bad token": lambda: {"Authorization": "Bearer not.a.token"},
        "port security": lambda: _office(env, scope="admin"),  # an admin token without badges:office
        "no origin": lambda: {k: v for k, v in _session(env).items() if k != "Origin"},
        "another origin": lambda: {**_session(env), "Origin": "https://evil.example"},
        "no session": lambda: {"Origin": ISSUER},
        "a forged session": lambda: {"Origin": ISSUER, "Cookie": f"{cookie}=forged-cookie"},
    }[who]()


_NAMES = {ENROL: "enrolment", STEP_UP: "step-up", BAN_FEED: "ban feed"}


@pytest.mark.parametrize(("path", "who", "status", "code", "challenge"), _REFUSED,
                         ids=[f"{_NAMES[path]}: {who}" for path, who, *_ in _REFUSED])
def test_a_caller_without_the_right_credentials_is_refused_before_any_of_the_body_is_read(
        env: Lifecycle, path: str, who: str, status: int, code: str, challenge: str | None) -> None:
    """Refused with the route's own answer (its challenge for a token), not one message of the body read."""
    got, read, headers, answer = _post(env, path, _caller(env, who))
    assert (got, read, answer["code"]) == (status, 0, code), answer
    if challenge is not None:
        assert headers["www-authenticate"].startswith(challenge), headers
    else:
        assert "www-authenticate" not in headers


@pytest.mark.parametrize("path", [ENROL, STEP_UP], ids=["enrolment", "step-up"])
def test_an_admitted_caller_has_the_body_read_and_judged_as_before(env: Lifecycle, path: str) -> None:
    """With the badge office's token, or our Origin and a live session, the whole body is read and its
    JSON refused as before (400 malformed_json): the check before the body holds nothing back."""
    caller = _office(env) if path == ENROL else _session(env)
    got, read, _, answer = _post(env, path, caller)
    assert (got, read, answer["code"]) == (400, len(chunks_of(_JUNK)), "malformed_json"), answer


@pytest.mark.parametrize("path", [ENROL, STEP_UP], ids=["enrolment", "step-up"])
def test_an_announced_oversized_body_is_still_refused_413_first(env: Lifecycle, path: str) -> None:
    """The route's body limit holds before any check of the caller: 413 on Content-Length, nothing read."""
    got, read, _, answer = _post(env, path, {"Content-Length": str(IMAGE_BODY_BYTES + 1)})
    assert (got, read, answer["code"]) == (413, 0, "body_too_large"), answer


def test_a_dpop_proof_on_the_face_enrolment_is_claimed_once_before_the_body_is_read(env: Lifecycle) -> None:
    """The badge office's DPoP-bound token is checked, and its proof's jti claimed (RFC 9449 §11.1),
    before the body is read; the route then takes that caller, not a second check (which would refuse
    its own proof as a replay)."""
    org = add_org(env.engine, OrgKind.PORT_AUTHORITY).organisation_id
    client_id, secret = create_client(env.engine, name="badge office", role="admin", organisation_id=org,
                                      now=utcnow(), dpop_bound=True)
    key = dpop_key()
    r = env.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                      headers={**basic(client_id, secret or ""), "DPoP": dpop_proof(key)})
    assert r.status_code == 200 and r.json()["token_type"] == "DPoP", r.text
    token = r.json()["access_token"]

    def caller() -> dict[str, str]:
        return {"Authorization": f"DPoP {token}",
                "DPoP": dpop_proof(key, htm="POST", htu=ISSUER + ENROL, ath=access_token_hash(token))}

    first = caller()
    got, read, _, answer = _post(env, ENROL, first)
    assert (got, read, answer["code"]) == (400, len(chunks_of(_JUNK)), "malformed_json"), answer
    got, read, headers, answer = _post(env, ENROL, first)  # the same proof again: claimed already
    assert (got, read, answer["code"]) == (401, 0, "invalid_dpop_proof"), answer
    # RFC 9449 §7.1: a request made with the DPoP scheme is challenged with it, and the algorithms.
    assert headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"'), headers
    assert 'algs="ES256' in headers["www-authenticate"], headers
    # A fresh proof with a valid body: past the caller's check (once) to the person, whom SOME_ID is not.
    body = json.dumps({"image": base64.b64encode(b"not a photo").decode()}).encode()
    got, read, _, answer = _post(env, ENROL, caller(), body)
    assert (got, read, answer["code"]) == (404, 1, "not_found"), answer


def test_the_ban_feeds_caller_is_checked_off_the_event_loop(env: Lifecycle, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ban feed's caller is checked on the headers, and its token again once the feed is read
    (identity.api.admin ``admits``): the token's revocation and a DPoP proof's claim may wait for Redis,
    so both checks run on a worker thread, never on the event loop every gate lane is served from."""
    import asyncio

    on_loop: list[bool] = []
    verifier = env.app.state.token_verifier
    checked = verifier.verify

    def watched(token: str, **kw: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return checked(token, **kw)

    headers = _office(env)  # its token made before the watch begins
    monkeypatch.setattr(verifier, "verify", watched)
    got, read, _, answer = _post(env, BAN_FEED, headers)
    # Admitted: the whole feed read, then refused for itself (no register key in these tests).
    assert got == 503 and read == len(chunks_of(_JUNK)), answer
    assert on_loop == [False, False], on_loop  # before the body, and once it is in

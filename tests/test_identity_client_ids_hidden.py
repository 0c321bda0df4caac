"""Review 151, finding 2: no answer tells which client ids exist, nor how they authenticate.

ClientSecret already answered an unknown client_id as a wrong secret (aba3bb8). The other ways of naming a
client did not: a client_id with no credential (Authlib's ``none``), a client assertion whose ``sub`` names
it, and /oauth2/authorize. Each is asked here with an unknown id and with ids that exist (a machine with a
secret, a machine with keys, a confidential console), and the answers must be the same, byte for byte.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bootstrap import create_client
from identity.oidc.server import CLIENT_AUTH_FAILED
from quaygate.cache import MemoryCache
from release_service.domain.parties import OrgKind
from tests.factories import add_org
from tests.test_identity_ratelimit import Served, _clear_of_a_window_edge, line_client, serve
from tests.test_identity_support import assertion, public_jwks, rsa_key

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
UNKNOWN = "qg-shipping-line-0123456789abcdef"
REDIRECT = "https://console.example.com/callback"
VERIFIER = "v" * 43


@pytest.fixture
def served(engine: sa.Engine, tmp_path: Path) -> Iterator[Served]:
    for s in serve(engine, tmp_path, MemoryCache(), rate_limit_per_address=10_000,
                   rate_limit_secret_failures_per_address=10_000):
        _clear_of_a_window_edge()
        yield s


def _clients(engine: sa.Engine) -> dict[str, str]:
    """An unknown id, and ids that exist, each with another way of authenticating."""
    secret_machine, _ = line_client(engine)
    keyed_machine, _ = line_client(engine, auth_method="private_key_jwt", jwks=public_jwks(rsa_key()))
    org = add_org(engine, OrgKind.RELEASE_PARTY).organisation_id
    console, _ = create_client(engine, name="console", role="console", organisation_id=org,
                               redirect_uris=[REDIRECT], now=datetime.now(UTC))
    return {"unknown": UNKNOWN, "secret machine": secret_machine, "keyed machine": keyed_machine,
            "console": console}


def _answer(r: Any) -> tuple[int, bytes, str | None]:
    return r.status_code, r.content, r.headers.get("www-authenticate")


def _alike(answers: dict[str, tuple[int, bytes, str | None]], what: str) -> None:
    unknown = answers.pop("unknown")
    assert unknown[0] == 401, (what, unknown)
    for who, answer in answers.items():
        assert answer == unknown, (what, who, answer, unknown)


# (path, form) with a client_id and no credential at all: what Authlib's "none" method reads.
ID_ONLY: list[tuple[str, Callable[[str], dict[str, str]]]] = [
    ("/oauth2/token", lambda c: {"grant_type": "authorization_code", "code": "x", "redirect_uri": REDIRECT,
                                 "code_verifier": VERIFIER, "client_id": c}),
    ("/oauth2/token", lambda c: {"grant_type": "refresh_token", "refresh_token": "qgr_" + "x" * 43, "client_id": c}),
    ("/oauth2/revoke", lambda c: {"token": "t", "client_id": c}),
    ("/oauth2/introspect", lambda c: {"token": "t", "client_id": c}),
    ("/oauth2/par", lambda c: {"response_type": "code", "redirect_uri": REDIRECT, "scope": "openid",
                               "code_challenge": "c" * 43, "code_challenge_method": "S256", "client_id": c}),
]


@pytest.mark.parametrize(("path", "form"), ID_ONLY, ids=["code", "refresh", "revoke", "introspect", "par"])
def test_a_client_id_without_a_credential_is_answered_alike_whoever_it_names(
        served: Served, path: str, form: Callable[[str], dict[str, str]], caplog: pytest.LogCaptureFixture) -> None:
    """Before: an unknown id "The client does not exist on this server.", a confidential one "The client
    cannot authenticate with methods: [...]"."""
    clients = _clients(served.engine)
    with caplog.at_level(logging.INFO, logger="identity.oidc.server"):
        answers = {who: _answer(served.http.post(path, data=form(c))) for who, c in clients.items()}
    assert answers["unknown"][1] == (b'{"error":"invalid_client","error_description":"'
                                     + CLIENT_AUTH_FAILED.encode() + b'"}')
    _alike(answers, path)
    # The operator still reads why: each refusal is logged with the reason it was refused for.
    reasons = [getattr(r, "reason", None) for r in caplog.records if r.msg == "identity.client_auth.refused"]
    assert len(reasons) == len(clients) and all(reasons), reasons
    if path != "/oauth2/introspect":  # where "none" is a method at all
        assert "The client does not exist on this server." in reasons, reasons


ASSERTED = [("/oauth2/token", {"grant_type": "client_credentials"}), ("/oauth2/introspect", {"token": "t"}),
            ("/oauth2/revoke", {"token": "t"}), ("/oauth2/par", {"response_type": "code"})]


@pytest.mark.parametrize(("path", "form"), ASSERTED, ids=["token", "introspect", "revoke", "par"])
def test_a_client_assertion_is_answered_alike_whoever_its_sub_names(
        served: Served, path: str, form: dict[str, str]) -> None:
    """An assertion signed with a key the caller made: before, an unknown sub "does not exist", a secret
    client's "The client has no registered keys.", a keyed client's "Invalid client assertion."."""
    clients = _clients(served.engine)
    forger = rsa_key()
    answers = {}
    for who, c in clients.items():
        signed = assertion(forger, c)
        answers[who] = _answer(served.http.post(path, data={
            **form, "client_assertion_type": ASSERTION_TYPE, "client_assertion": signed}))
    _alike(answers, path)


def test_a_secret_and_every_other_refusal_share_one_description(served: Served) -> None:
    """The secret path's answer is the one fixed description too, as is a junk assertion's."""
    clients = _clients(served.engine)
    wrong = served.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                             auth=(clients["secret machine"], "wrong"))
    junk = served.http.post("/oauth2/token", data={"grant_type": "client_credentials",
                                                   "client_assertion_type": ASSERTION_TYPE,
                                                   "client_assertion": "a.b"})
    none = served.http.post("/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": "x",
                                                   "client_id": UNKNOWN})
    for r in (wrong, junk, none):
        assert (r.status_code, r.json()) == (401, {"error": "invalid_client", "error_description": CLIENT_AUTH_FAILED})


def test_authorize_answers_a_machine_clients_id_as_an_unknown_one(served: Served) -> None:
    """/oauth2/authorize: before, an unknown id "Unknown client." (invalid_client), a machine's "This client
    does not use the authorization code flow." (unauthorized_client)."""
    clients = _clients(served.engine)
    answers = {}
    for who in ("unknown", "secret machine", "keyed machine"):
        r = served.http.get("/oauth2/authorize", params={
            "client_id": clients[who], "response_type": "code", "redirect_uri": REDIRECT, "scope": "openid",
            "code_challenge": "c" * 43, "code_challenge_method": "S256", "state": "s"}, follow_redirects=False)
        answers[who] = (r.status_code, r.content)
    unknown = answers.pop("unknown")
    assert unknown[0] == 400 and b"Unknown client." in unknown[1], unknown
    for who, answer in answers.items():
        assert answer == unknown, (who, answer)

"""Review 151, finding 1: an HTTP Basic header whose credentials are not UTF-8 is an invalid_client.

Authlib's ``extract_basic_authorization`` decodes the base64 strictly as UTF-8 and catches only
binascii.Error and TypeError, so such a header raised UnicodeDecodeError out of ClientSecret: a 500 with an
ERROR traceback at every endpoint where a client authenticates. It is now refused as a wrong secret is:
401 invalid_client, the one fixed description, and the rate limiter's own reading of the header counts it
per address only.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from identity.bootstrap import create_client
from identity.ratelimit import client_id_from_basic
from quaygate.cache import MemoryCache
from tests.test_identity_ratelimit import Served, _clear_of_a_window_edge, line_client, serve

ENDPOINTS = [("/oauth2/token", {"grant_type": "client_credentials"}), ("/oauth2/introspect", {"token": "t"}),
             ("/oauth2/revoke", {"token": "t"}), ("/oauth2/par", {"response_type": "code"})]
MALFORMED = [b"\xff\xfe:\xff", b"\xff:secret", b"qg-line:\xc3", b"\xc3\x28"]


def _basic(raw: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@pytest.fixture
def served(engine: sa.Engine, tmp_path: Path) -> Iterator[Served]:
    for s in serve(engine, tmp_path, MemoryCache(), rate_limit_per_address=10_000,
                   rate_limit_secret_failures_per_address=10_000):
        _clear_of_a_window_edge()
        yield s


@pytest.mark.parametrize(("path", "form"), ENDPOINTS, ids=["token", "introspect", "revoke", "par"])
def test_credentials_not_utf8_are_refused_as_a_wrong_secret(
        served: Served, path: str, form: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    client_id, _ = line_client(served.engine)
    wrong = served.http.post(path, data=form, auth=(client_id, "wrong"))
    assert wrong.status_code == 401, wrong.text
    with caplog.at_level(logging.INFO):
        for raw in MALFORMED:
            r = served.http.post(path, data=form, headers=_basic(raw))
            assert (r.status_code, r.content, r.headers.get("www-authenticate")) == (
                wrong.status_code, wrong.content, wrong.headers.get("www-authenticate")), (raw, r.text)
            assert r.headers["cache-control"] == "no-store"
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], "no traceback logged"
    assert sum(rec.msg == "identity.client_auth.refused.malformed_basic" for rec in caplog.records) == len(MALFORMED)


def test_a_public_client_named_in_the_form_is_not_let_through_beside_a_malformed_header(served: Served) -> None:
    """The header is a failed attempt to authenticate, not an absent one: "none" is not tried after it
    (the driver app, let through, would have heard invalid_grant for the made-up token)."""
    driver, _ = create_client(served.engine, name="driver app", role="driver_app", organisation_id=None,
                              auth_method="none", redirect_uris=["be.quaygate.driver:/callback"], now=datetime.now(UTC))
    form = {"grant_type": "refresh_token", "refresh_token": "qgr_" + "x" * 43, "client_id": driver}
    assert served.http.post("/oauth2/token", data=form).json()["error"] == "invalid_grant"
    r = served.http.post("/oauth2/token", headers=_basic(b"\xff\xfe:\xff"), data=form)
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client"), r.text


def test_the_rate_limiter_reads_no_client_from_such_a_header() -> None:
    for raw in MALFORMED:
        assert client_id_from_basic(_basic(raw)["Authorization"]) is None

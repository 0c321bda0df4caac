"""A certified relying party that none of us wrote completes against the provider, unchanged.

``openid-client`` 6.8.9 (pinned in package-lock.json, npm registry) runs under the machine's Node.js
against the real app served by uvicorn on a free port (issuer ``http://localhost:<port>``), on a
migrated SQLite database, or on PostgreSQL and Redis when QUAYGATE_TEST_DATABASE_URL and
QUAYGATE_TEST_REDIS_URL are set. The script ``rp.mjs`` runs every step and prints one JSON result per
step; each test below asserts one step, so a failure names the step that broke.

Without node or ``npm ci --prefix tests/interop`` the tests are skipped locally and fail under CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from joserfc.jwk import RSAKey

from identity.clients import ClientRegistry
from identity.domain.assurance import ACR_PASSKEY, AMR_PASSKEY
from identity.sessions import SessionStore
from quaygate.db import create_database, drop_database, make_engine
from quaygate.migrate import upgrade
from quaygate.schema import badges, memberships, organisations, persons
from quaygate.settings import Settings

from .. import served_long_ago
from ..conftest import worker_redis
from ..processes import free_port, serve_app, stop, unavailable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PG_URL = os.environ.get("QUAYGATE_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("QUAYGATE_TEST_REDIS_URL")
COOKIE = str(Settings.model_fields["session_cookie"].default)
DRIVER_SCOPE = "openid profile offline_access releases:read nominations:respond"

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("interop")]  # one server and one node run


@pytest.fixture(scope="module")
def interop_redis_url() -> Iterator[str | None]:
    """tests/conftest.py's ``redis_url`` for the module (a database of this worker's, flushed around, its
    dataset's epoch long ago) when the suite has Redis; None on the embedded default."""
    if not REDIS_URL:
        yield None
        return
    yield from worker_redis()


def _missing(reason: str) -> None:
    unavailable("interop with openid-client", reason)


def _key() -> tuple[dict[str, Any], dict[str, Any]]:
    key = RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex[:16], "use": "sig", "alg": "RS256"})
    return key.as_dict(private=True), {"keys": [key.as_dict(private=False)]}


class Server:
    """The real app under uvicorn, in a child process (as `quaygate serve` runs it)."""

    def __init__(self, database_url: str, redis_url: str | None, var_dir: Path) -> None:
        self.port = free_port()
        self.issuer = f"http://localhost:{self.port}"
        env = {**os.environ, "QUAYGATE_DATABASE_URL": database_url, "QUAYGATE_ISSUER": self.issuer,
               "QUAYGATE_VAR_DIR": str(var_dir), "QUAYGATE_BACKGROUND_WORKERS": "false",
               "QUAYGATE_LOG_LEVEL": "WARNING"}
        if redis_url:
            env["QUAYGATE_REDIS_URL"] = redis_url
        else:
            env.pop("QUAYGATE_REDIS_URL", None)
        self.log = var_dir / "server.log"
        # The client authenticates with private_key_jwt as soon as the server is up: a server whose cache
        # held its data since long before (a just-started one refuses its assertions for the leeway).
        self.proc = serve_app(self.port, env, self.log, "--no-access-log", factory=served_long_ago.FACTORY)

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if PG_URL:
        url = create_database(PG_URL, f"qg_interop_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{os.getpid()}")
        upgrade(url)
        yield url
        drop_database(PG_URL, url)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('interop') / 'quaygate.db'}"
        upgrade(url)
        yield url


def _seed(engine: sa.Engine, issuer: str, cookie_name: str) -> dict[str, Any]:
    """Clients of every kind the script needs, a driver with a badge, and a login session for him."""
    now = datetime.now(UTC)
    line, haul = uuid.uuid4(), uuid.uuid4()
    driver = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(organisations.insert(), [
            {"id": line, "name": "interop line", "kind": "shipping_line", "eori": "BE0000000101", "created_at": now},
            {"id": haul, "name": "interop haulier", "kind": "transport_operator", "eori": "BE0000000102",
             "created_at": now},
        ])
        conn.execute(persons.insert().values(id=driver, given_name="Jan", family_name="Peeters",
                                             employer_organisation_id=haul, created_at=now))
        conn.execute(badges.insert().values(
            id=uuid.uuid4(), person_id=driver, scheme="alfapass", number="AP-424242", card_uid="04A1B2C3D4E5F6",
            employer_organisation_id=haul, status="active", valid_from=now - timedelta(days=1),
            valid_until=now + timedelta(days=365), created_at=now))
        # the same person also dispatches for his haulier, so he may use its console
        conn.execute(memberships.insert().values(person_id=driver, organisation_id=haul, role="dispatcher",
                                                 created_at=now))
    registry = ClientRegistry(engine)
    line_private, line_jwks = _key()
    dpop_private, dpop_jwks = _key()
    console_private, console_jwks = _key()
    line_id, _ = registry.register(name="interop line back end", role="shipping_line", organisation_id=line,
                                   auth_method="private_key_jwt", jwks=line_jwks, now=now)
    dpop_id, _ = registry.register(name="interop line, DPoP-bound", role="shipping_line", organisation_id=line,
                                   auth_method="private_key_jwt", jwks=dpop_jwks, dpop_bound=True, now=now)
    app_redirect = f"{issuer}/interop/app-callback"
    console_redirect = f"{issuer}/interop/console-callback"
    app_id, _ = registry.register(name="interop driver app", role="driver_app", organisation_id=None,
                                  auth_method="none", redirect_uris=[app_redirect], now=now,
                                  extra_metadata={"id_token_signed_response_alg": "ES256"})
    console_id, _ = registry.register(name="interop console", role="console", organisation_id=haul,
                                      auth_method="private_key_jwt", jwks=console_jwks,
                                      redirect_uris=[console_redirect], now=now)
    cookie, _ = SessionStore(engine, ttl_seconds=3600).create(driver, acr=ACR_PASSKEY, amr=AMR_PASSKEY, now=now)
    return {
        "issuer": issuer,
        "cookie": f"{cookie_name}={cookie}",
        "driver_person_id": str(driver),
        "clients": {
            "line": {"client_id": line_id, "private_jwk": line_private},
            "dpop": {"client_id": dpop_id, "private_jwk": dpop_private},
            "driver_app": {"client_id": app_id, "redirect_uri": app_redirect, "scope": DRIVER_SCOPE,
                           "id_token_signed_response_alg": "ES256"},
            "console": {"client_id": console_id, "private_jwk": console_private, "redirect_uri": console_redirect},
        },
    }


@pytest.fixture(scope="module")
def results(database_url: str, interop_redis_url: str | None, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        _missing("node is not installed (Node.js 20: apt-get install -y nodejs npm)")
    if not (HERE / "node_modules" / "openid-client").is_dir():
        _missing("openid-client is not installed: run `npm ci --prefix tests/interop` (make test does)")
    server = Server(database_url, interop_redis_url, tmp_path_factory.mktemp("interop-var"))
    engine = make_engine(database_url)
    try:
        config = _seed(engine, server.issuer, os.environ.get("QUAYGATE_SESSION_COOKIE", COOKIE))
        run = subprocess.run(  # noqa: S603 - the pinned script under the machine's node
            [str(node), "--dns-result-order=ipv4first", str(HERE / "rp.mjs")], input=json.dumps(config),
            capture_output=True, text=True, timeout=120, cwd=HERE, check=False)
        if run.returncode != 0 or not run.stdout.strip():
            pytest.fail(f"rp.mjs failed ({run.returncode}): {run.stderr[-3000:]}")
        out: dict[str, Any] = json.loads(run.stdout)
        out["_config"] = config
        out["_server_log"] = server.log
        yield out
    finally:
        engine.dispose()
        server.stop()


def _ok(results: dict[str, Any], name: str) -> dict[str, Any]:
    step: dict[str, Any] = results[name]
    if not step["ok"]:
        log = results["_server_log"].read_text()[-2000:]
        pytest.fail(f"{name}: {step['error']} (code {step.get('code')}) {step.get('oauth_error') or ''} "
                    f"{step.get('cause') or ''}\n"
                    f"server log tail:\n{log}")
    return step


def test_discovery(results: dict[str, Any]) -> None:
    step = _ok(results, "discovery")
    issuer = results["_config"]["issuer"]
    assert step["issuer"] == issuer and step["token_endpoint"].startswith(issuer)


def test_client_credentials_with_private_key_jwt(results: dict[str, Any]) -> None:
    step = _ok(results, "client_credentials_private_key_jwt")
    assert step["token_type"].lower() == "bearer" and step["expires_in"] > 0 and step["aud"]


def test_the_bearer_token_calls_the_release_api(results: dict[str, Any]) -> None:
    step = _ok(results, "api_with_bearer_token")
    assert step["status"] == 200 and step["items"] == 0


def test_client_credentials_with_dpop(results: dict[str, Any]) -> None:
    step = _ok(results, "client_credentials_dpop")
    assert step["token_type"].lower() == "dpop" and step["cnf"] and "jkt" in step["cnf"]


def test_the_dpop_token_calls_the_release_api_with_its_proof(results: dict[str, Any]) -> None:
    assert _ok(results, "api_with_dpop_token")["status"] == 200


def test_the_dpop_token_without_its_proof_is_refused(results: dict[str, Any]) -> None:
    _ok(results, "api_dpop_token_without_proof_refused")


def test_authorization_code_with_pkce(results: dict[str, Any]) -> None:
    step = _ok(results, "authorization_code_pkce")
    assert step["has_refresh_token"] and step["id_token"]["sub"]
    assert step["id_token"]["acr"] == ACR_PASSKEY
    # The id token in the alg the app registered, its signature checked by openid-client with our JWKS;
    # the access token in the service's algorithm.
    assert step["id_token_alg"] == "ES256" and step["access_token_alg"] == "ES256"


def test_the_person_token_calls_the_release_api(results: dict[str, Any]) -> None:
    assert _ok(results, "api_with_person_token")["status"] == 200


def test_refresh_rotates(results: dict[str, Any]) -> None:
    step = _ok(results, "refresh")
    assert step["rotated"] and step["new_access_token"]


def test_a_rotated_refresh_token_is_refused(results: dict[str, Any]) -> None:
    assert _ok(results, "refresh_reuse_refused")["error"] == "invalid_grant"
    # Reuse revoked the whole family: the access token of the legitimate refresh is refused too.
    assert _ok(results, "family_revoked_after_reuse")["refused"] is True


def test_userinfo(results: dict[str, Any]) -> None:
    step = _ok(results, "userinfo")
    assert step["sub"] == results["authorization_code_pkce"]["id_token"]["sub"]


def test_console_code_flow_with_par(results: dict[str, Any]) -> None:
    step = _ok(results, "console_par_code_flow")
    assert step["request_uri"] and step["sub"]
    assert step["id_token_alg"] == "RS256"  # registered none: the OIDC default, signature checked too

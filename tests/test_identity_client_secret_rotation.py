"""Rotating a client's secret (``POST /admin/v1/clients/{client_id}/secret``, ``quaygate client
rotate-secret``): a leaked secret is answered without deleting the client. The real app, its real token
endpoint, SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity import clients
from identity.bootstrap import create_client
from identity.clients import ClientRegistry, verify_secret
from identity.grants import RevocationList
from identity.registration import management_for
from quaygate.cache import RedisCache
from quaygate.cli import main
from quaygate.container import SystemClock
from quaygate.db import make_engine
from quaygate.schema import audit_log, oauth_clients
from tests.test_identity_code_flow_support import Flow, Pkce, make_flow
from tests.test_identity_grants_support import Lifecycle, make_lifecycle
from tests.test_identity_support import add_org, basic, public_jwks, rsa_key

FORM = {"grant_type": "client_credentials"}


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path)


@pytest.fixture
def shared(engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[Lifecycle]:
    """The app with Redis as its cache, as in production: its ClientRegistry keeps clients in memory
    (with an in-process cache it keeps none and reads the table each time)."""
    cache = RedisCache(redis_url)
    yield from make_lifecycle(engine, tmp_path, cache)
    cache.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _admin(env: Lifecycle) -> tuple[str, dict[str, str]]:
    client_id, secret, _ = env.machine("admin")
    return client_id, _bearer(env.machine_token(client_id, secret))


def _token(env: Lifecycle, client_id: str, secret: str) -> Any:
    return env.http.post("/oauth2/token", data=FORM, headers=basic(client_id, secret))


def _problem(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code


def test_the_old_secret_is_refused_even_when_remembered_and_the_new_one_passes(shared: Lifecycle) -> None:
    """The app's registry and the SecretChecker's memo both remembered the old secret's client."""
    env = shared
    admin, auth = _admin(env)
    line, old, _ = env.machine("shipping_line")
    for _ in range(2):  # the second is vouched for by the SecretChecker's memo, without scrypt
        assert _token(env, line, old).status_code == 200
    r = env.http.post(f"/admin/v1/clients/{line}/secret", headers=auth)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    new = body["client_secret"]
    assert body["client_id"] == line and body["tokens_revoked"] is False and len(new) >= 43 and new != old
    refused = _token(env, line, old)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client", refused.text
    assert _token(env, line, new).status_code == 200
    with env.engine.connect() as conn:
        stored = conn.execute(sa.select(oauth_clients.c.secret_hash)
                              .where(oauth_clients.c.client_id == line)).scalar_one()
        rows = conn.execute(sa.select(audit_log).where(audit_log.c.kind == "identity.admin.client.secret_rotated")
                            ).all()
    assert verify_secret(new, stored) and new not in stored
    assert len(rows) == 1 and rows[0].subject == line and rows[0].actor["client_id"] == admin
    assert new not in str(rows[0]._mapping) and old not in str(rows[0]._mapping)
    assert rows[0].data == {"tokens_revoked": False, "grants_revoked": 0, "registration_token_renewed": False,
                            "enrolment_codes_ended": 0, "initial_access_tokens_ended": 0}


def test_another_replica_refuses_the_old_secret_once_it_reads_the_epoch(shared: Lifecycle) -> None:
    """Another replica's registry, sharing the cache (Redis in production), remembered the old record: it
    reads the new one at its next epoch check (``check_every``, one second by default)."""
    env = shared
    _, auth = _admin(env)
    line, old, _ = env.machine("shipping_line")
    clock = [0.0]
    other = ClientRegistry(env.engine, env.container.cache, check_every=1.0, monotonic=lambda: clock[0])
    remembered = other.find(line)
    assert remembered is not None and verify_secret(old, remembered.secret_hash)
    new = env.http.post(f"/admin/v1/clients/{line}/secret", headers=auth).json()["client_secret"]
    clock[0] = 0.5
    assert other.find(line) is remembered  # within check_every: still the remembered record
    clock[0] = 1.0
    seen = other.find(line)
    assert seen is not None and verify_secret(new, seen.secret_hash) and not verify_secret(old, seen.secret_hash)


def test_earlier_tokens_stay_valid_unless_revoke_tokens(env: Lifecycle) -> None:
    """The rotated client is an admin client here: its earlier access token is tried on the admin API."""
    _, auth = _admin(env)
    for revoke, status in ((False, 200), (True, 401)):
        other, secret, _ = env.machine("admin")
        earlier = env.machine_token(other, secret)
        r = env.http.post(f"/admin/v1/clients/{other}/secret", headers=auth,
                          json={"revoke_tokens": True} if revoke else None)
        assert r.status_code == 200 and r.json()["tokens_revoked"] is revoke, r.text
        assert env.http.get("/admin/v1/clients", headers=_bearer(earlier)).status_code == status
    with env.engine.connect() as conn:
        data = conn.execute(sa.select(audit_log.c.data).where(
            audit_log.c.kind == "identity.admin.client.secret_rotated").order_by(audit_log.c.id)).scalars().all()
    assert [d["tokens_revoked"] for d in data] == [False, True]


def _registered(env: Lifecycle) -> dict[str, Any]:
    """A client registered through RFC 7591: its secret and its registration access token arrive in
    one response, so whoever copied the one usually holds the other."""
    iat, _ = management_for(env.app).create_initial_access_token(
        organisation_id=add_org(env.engine, "shipping_line"), created_by="qg-admin-test", ttl=None,
        now=datetime.now(UTC))
    r = env.http.post("/oauth2/register", json={"client_name": "Line back end"},
                      headers=_bearer(iat))
    assert r.status_code == 201, r.text
    return dict(r.json())


def _manage(env: Lifecycle, method: str, client_id: str, rat: str, doc: dict[str, Any] | None = None) -> Any:
    return env.http.request(method, f"/oauth2/register/{client_id}", json=doc, headers=_bearer(rat))


def test_rotation_ends_the_registration_access_token_a_thief_copied_with_the_secret(env: Lifecycle) -> None:
    """The thief holds the registration access token as well as the secret: once the secret is rotated,
    the old token neither reads (which would swap it for one of his own), nor changes, nor deletes the
    client. The owner gets a new one, once, beside the new secret (RFC 7592 §3), and manages on."""
    _, auth = _admin(env)
    reg = _registered(env)
    cid, stolen = reg["client_id"], reg["registration_access_token"]
    r = env.http.post(f"/admin/v1/clients/{cid}/secret", headers=auth, json={"revoke_tokens": True})
    assert r.status_code == 200, r.text
    body = r.json()
    rat = body["registration_access_token"]
    assert rat.startswith("qgrat_") and rat != stolen
    assert body["registration_client_uri"] == reg["registration_client_uri"]
    doc = {"client_id": cid, "client_name": "Thief's", "redirect_uris": []}
    for method, sent in (("GET", None), ("PUT", doc), ("DELETE", None)):
        refused = _manage(env, method, cid, stolen, sent)
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_token", (method, refused.text)
    with env.engine.connect() as conn:
        row = conn.execute(sa.select(oauth_clients).where(oauth_clients.c.client_id == cid)).one()
        data = conn.execute(sa.select(audit_log.c.data).where(
            audit_log.c.kind == "identity.admin.client.secret_rotated")).scalar_one()
    assert row.active and row.name == "Line back end" and rat not in str(row._mapping)
    assert data == {"tokens_revoked": True, "grants_revoked": 0, "registration_token_renewed": True,
                    "enrolment_codes_ended": 0, "initial_access_tokens_ended": 0}
    read = _manage(env, "GET", cid, rat)  # the owner's new token works, and is swapped as ever
    assert read.status_code == 200 and read.json()["client_name"] == "Line back end", read.text


def test_a_client_registered_by_an_admin_gets_no_registration_access_token(env: Lifecycle) -> None:
    _, auth = _admin(env)
    line, _, _ = env.machine("shipping_line")
    body = env.http.post(f"/admin/v1/clients/{line}/secret", headers=auth).json()
    assert "registration_access_token" not in body and "registration_client_uri" not in body
    with env.engine.connect() as conn:
        assert conn.execute(sa.select(oauth_clients.c.registration_token_hash)
                            .where(oauth_clients.c.client_id == line)).scalar_one() is None


class _Shifted(SystemClock):
    """The admin API's clock, ``by`` seconds off (the token endpoint keeps the wall clock)."""

    def __init__(self, by: float) -> None:
        self.by = by

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.by)


def test_no_token_is_issued_while_the_clients_tokens_are_refused_only_a_wait(env: Lifecycle) -> None:
    """``revoke_tokens`` refuses the client's tokens issued up to CLIENT_MARGIN after the rotation (a
    replica may take the old secret that long): one fetched with the new secret before then would be
    handed out valid and refused for its whole life. The token endpoint answers 429 slow_down with
    Retry-After instead, until that moment. The rotation is dated a minute ahead here, so the moment is
    surely ahead when the token is asked for; then a minute back, so it has surely passed."""
    _, auth = _admin(env)
    other, _, _ = env.machine("admin")
    env.container.clock = _Shifted(60)
    rotated = env.http.post(f"/admin/v1/clients/{other}/secret", headers=auth, json={"revoke_tokens": True})
    assert rotated.status_code == 200, rotated.text
    wait = _token(env, other, rotated.json()["client_secret"])
    assert wait.status_code == 429 and wait.json()["error"] == "slow_down", wait.text
    assert 60 < int(wait.headers["retry-after"]) <= 66 and "access_token" not in wait.json()
    assert wait.headers["cache-control"] == "no-store"
    env.container.clock = _Shifted(-60)
    rotated = env.http.post(f"/admin/v1/clients/{other}/secret", headers=auth, json={"revoke_tokens": True})
    token = env.machine_token(other, rotated.json()["client_secret"])
    assert env.http.get("/admin/v1/clients", headers=_bearer(token)).status_code == 200


def test_the_cutoff_is_the_revocation_lists_own_row() -> None:
    assert clients._CUTOFF_ROW.value == RevocationList.CLIENT_ROW


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from make_flow(engine, tmp_path)


def test_a_code_is_not_exchanged_while_the_clients_tokens_are_refused_and_stays_usable(flow: Flow) -> None:
    """The same rule at the code exchange (the one other grant that starts a client's tokens): 429
    slow_down, and the code is not used up. A cutoff written as a deactivation writes it."""
    client_id = flow.driver_app()
    flow.login(flow.person())
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    revocations = flow.provider.grants.revocations
    for ahead in (60, -60):
        with flow.engine.begin() as conn:
            revocations.revoke_client(conn, client_id, now=datetime.now(UTC) + timedelta(seconds=ahead),
                                      token_ttl=600)
        flow.provider.clients.changed(client_id)
        r = flow.exchange(client_id, code, pkce.verifier)
        if ahead > 0:
            assert r.status_code == 429 and r.json()["error"] == "slow_down", r.text
            assert 60 < int(r.headers["retry-after"]) <= 66  # to the second after the cutoff
    assert r.status_code == 200 and r.json()["access_token"], r.text


def test_a_client_without_a_secret_and_an_unknown_client_are_refused(env: Lifecycle) -> None:
    _, auth = _admin(env)
    org = add_org(env.engine, "shipping_line")
    keyed, _ = create_client(env.engine, name="keyed", role="shipping_line", organisation_id=org,
                             auth_method="private_key_jwt", jwks=public_jwks(rsa_key()), now=datetime.now(UTC))
    with env.engine.connect() as conn:
        before = conn.execute(sa.select(oauth_clients).where(oauth_clients.c.client_id == keyed)).one()
    _problem(env.http.post(f"/admin/v1/clients/{keyed}/secret", headers=auth), 409, "no_client_secret")
    _problem(env.http.post("/admin/v1/clients/qg-nobody/secret", headers=auth), 404, "not_found")
    with env.engine.connect() as conn:
        after = conn.execute(sa.select(oauth_clients).where(oauth_clients.c.client_id == keyed)).one()
        kinds = set(conn.execute(sa.select(audit_log.c.kind)).scalars())
    assert after == before and after.secret_hash is None
    assert "identity.admin.client.secret_rotated" not in kinds


def test_callers_without_the_admin_right_are_refused(env: Lifecycle) -> None:
    line, secret, _ = env.machine("shipping_line")
    path = f"/admin/v1/clients/{line}/secret"
    _problem(env.http.post(path), 401, "invalid_request")
    _problem(env.http.post(path, headers=_bearer("a.b.c")), 401, "invalid_token")
    # a client rotating its own secret with its own token: not an admin
    _problem(env.http.post(path, headers=_bearer(env.machine_token(line, secret))), 403, "insufficient_scope")
    assert _token(env, line, secret).status_code == 200  # nothing changed


# ---- the CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[sa.Engine]:
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'q.db'}")
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    assert main(["migrate"]) == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    yield engine
    engine.dispose()


def _stored(engine: sa.Engine, client_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(oauth_clients.c.secret_hash)
                            .where(oauth_clients.c.client_id == client_id)).scalar_one()


def test_cli_rotate_secret_prints_the_new_secret_once(cli: sa.Engine, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["org", "create", "--name", "Line", "--kind", "shipping_line", "--eori", "BE0999"]) == 0
    org = capsys.readouterr().out.strip()
    assert main(["client", "create", "--name", "line", "--role", "shipping_line", "--organisation", org]) == 0
    created = capsys.readouterr().out
    client_id = created.split("client_id=")[1].split()[0]
    old = created.split("client_secret=")[1].split()[0]
    assert main(["client", "rotate-secret", client_id, "--revoke-tokens"]) == 0
    out = capsys.readouterr().out
    new = out.split("client_secret=")[1].split()[0]
    assert "shown once" in out and out.count(new) == 1 and new != old
    assert "the first new one comes a few seconds from now" in out  # its tokens are refused till then
    stored = _stored(cli, client_id)
    assert verify_secret(new, stored) and not verify_secret(old, stored)
    with cli.connect() as conn:
        row = conn.execute(sa.select(audit_log).where(audit_log.c.kind == "identity.admin.client.secret_rotated")).one()
    assert row.actor["client_id"] == "cli" and row.data["tokens_revoked"] is True and new not in str(row._mapping)


def test_cli_rotate_secret_of_a_dynamically_registered_client_prints_its_new_registration_token(
        cli: sa.Engine, capsys: pytest.CaptureFixture[str]) -> None:
    org = add_org(cli, "shipping_line")
    client_id, _ = create_client(cli, name="line", role="shipping_line", organisation_id=org, now=datetime.now(UTC))
    stolen = "qgrat_" + "s" * 43  # as RFC 7591 registration leaves it: the token's SHA-256 in the row
    with cli.begin() as conn:
        conn.execute(oauth_clients.update().where(oauth_clients.c.client_id == client_id)
                     .values(registration_token_hash=hashlib.sha256(stolen.encode()).hexdigest()))
    capsys.readouterr()
    assert main(["client", "rotate-secret", client_id]) == 0
    out = capsys.readouterr().out
    rat = out.split("registration_access_token=")[1].split()[0]
    assert rat.startswith("qgrat_") and out.count(rat) == 1 and "the old one is refused" in out
    with cli.connect() as conn:
        held = conn.execute(sa.select(oauth_clients.c.registration_token_hash)
                            .where(oauth_clients.c.client_id == client_id)).scalar_one()
    assert held == hashlib.sha256(rat.encode()).hexdigest()


def test_cli_rotate_secret_refusals_are_plain_and_change_nothing(
        cli: sa.Engine, capsys: pytest.CaptureFixture[str]) -> None:
    org = add_org(cli, "shipping_line")
    keyed, _ = create_client(cli, name="keyed", role="shipping_line", organisation_id=org,
                             auth_method="private_key_jwt", jwks=public_jwks(rsa_key()), now=datetime.now(UTC))
    capsys.readouterr()
    assert main(["client", "rotate-secret", keyed]) == 2
    assert main(["client", "rotate-secret", "qg-nobody"]) == 2
    captured = capsys.readouterr()
    assert "client_secret" not in captured.out and "Traceback" not in captured.err
    assert captured.err.count("cannot rotate the secret:") == 2
    assert _stored(cli, keyed) is None
    with cli.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(
            audit_log.c.kind == "identity.admin.client.secret_rotated")).scalar_one() == 0


@pytest.mark.parametrize(("cutoff_in_second", "now_in_second", "wait"), [
    (0.0016, 0.0020, 1),  # after the cutoff, in its second: a token's iat (whole seconds) is still <= it
    (0.0016, 0.9990, 1),
    (0.5, 0.2, 1),  # before the cutoff
    (0.5, 1.0, 0),  # the next whole second: iat > cutoff
    (0.9999, 1.0001, 0),
])
def test_the_wait_runs_to_the_second_after_the_cutoff(cutoff_in_second: float, now_in_second: float,
                                                      wait: int) -> None:
    """Review 137, finding 2: the revocation list refuses ``iat <= cutoff`` and ``iat`` is whole seconds, so a
    token issued after the cutoff but within its second is refused for its whole life: the token endpoint
    must make the client wait to the next whole second, not only past the cutoff."""
    from dataclasses import replace

    from identity.clients import ClientRecord
    from identity.domain.roles import AuthMethod, ClientRole

    second = datetime(2026, 11, 24, 13, 0, 0, tzinfo=UTC)
    record = ClientRecord("c", "c", ClientRole.SHIPPING_LINE, None, None, None, AuthMethod.CLIENT_SECRET_BASIC, (),
                          (), None, None, True)
    record = replace(record, tokens_refused_until=second + timedelta(seconds=cutoff_in_second))
    assert record.tokens_refused_for(second + timedelta(seconds=now_in_second)) == wait
    assert replace(record, tokens_refused_until=None).tokens_refused_for(second) == 0

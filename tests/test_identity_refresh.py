"""The refresh token grant (RFC 6749 §6): rotation, reuse detection (RFC 9700 §4.14.2), scope, client
and DPoP binding (RFC 9449 §5), on the full app so the release API sees the revocations."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from joserfc import jws
from starlette.datastructures import Headers

from identity.bootstrap import create_client
from identity.grants import token_hash
from identity.oidc.server import FormRequest
from identity.tokens import InvalidToken
from quaygate.cache import RedisCache
from quaygate.schema import audit_log, grants, persons, refresh_tokens
from tests.test_identity_grants_support import (
    Lifecycle,
    dpop_key,
    dpop_proof,
    make_lifecycle,
    thumbprint,
    utcnow,
)
from tests.test_identity_support import basic


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path)


def _status(env: Lifecycle, token: str) -> str:
    with env.engine.connect() as conn:
        return str(conn.execute(sa.select(refresh_tokens.c.status).where(
            refresh_tokens.c.token_hash == token_hash(token))).scalar_one())


def _audit_kinds(env: Lifecycle) -> list[str]:
    with env.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.kind)).scalars())


def _api(env: Lifecycle, access_token: str) -> int:
    r = env.http.get("/api/v1/releases", headers={"Authorization": f"Bearer {access_token}"})
    return r.status_code


def test_rotation_gives_new_tokens_and_retires_the_old_one(env: Lifecycle) -> None:
    client_id, secret, org = env.console()
    _, first = env.grant(client_id, env.person(org))
    r = env.refresh(first, client_id, secret)
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["cache-control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["refresh_token"] != first
    assert body["scope"] == "offline_access openid profile releases:read"
    assert "id_token" in body  # OIDC Core §12.2
    assert _status(env, first) == "rotated" and _status(env, body["refresh_token"]) == "active"
    claims = env.provider.verifier.verify(body["access_token"], audience="quaygate-api")
    assert claims["client_id"] == client_id
    assert _api(env, body["access_token"]) == 200
    # The new token works in turn.
    again = env.refresh(body["refresh_token"], client_id, secret)
    assert again.status_code == 200, again.text
    assert "identity.token.refreshed" in _audit_kinds(env)


def test_reuse_revokes_the_whole_family(env: Lifecycle) -> None:
    client_id, secret, org = env.console()
    _, first = env.grant(client_id, env.person(org))
    one = env.refresh(first, client_id, secret).json()
    two = env.refresh(one["refresh_token"], client_id, secret).json()
    assert _api(env, one["access_token"]) == 200 and _api(env, two["access_token"]) == 200

    replay = env.refresh(first, client_id, secret)  # the stolen, already rotated token
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"

    # The newest refresh token of the family is refused too ...
    newest = env.refresh(two["refresh_token"], client_id, secret)
    assert newest.status_code == 400 and newest.json()["error"] == "invalid_grant"
    # ... and every access token the family got, by the verifier and by the release API.
    for issued in (one["access_token"], two["access_token"]):
        assert env.revocations.token_revoked(_claims(issued))
        with pytest.raises(InvalidToken, match="revoked"):
            env.app.state.token_verifier.verify(issued, audience="quaygate-api")
        assert _api(env, issued) == 401
    assert "identity.refresh.reuse_detected" in _audit_kinds(env)


def _claims(token: str) -> dict[str, object]:
    return dict(json.loads(jws.extract_compact(token.encode()).payload))


def test_unknown_expired_and_revoked_tokens_are_invalid_grant(env: Lifecycle) -> None:
    client_id, secret, org = env.console()
    gid, token = env.grant(client_id, env.person(org))
    assert env.refresh("qgr_" + "x" * 43, client_id, secret).json()["error"] == "invalid_grant"
    assert env.refresh("not-ours", client_id, secret).json()["error"] == "invalid_grant"
    with env.engine.begin() as conn:
        conn.execute(refresh_tokens.update().where(refresh_tokens.c.token_hash == token_hash(token))
                     .values(expires_at=utcnow() - timedelta(seconds=1)))
    expired = env.refresh(token, client_id, secret)
    assert expired.status_code == 400 and expired.json()["error"] == "invalid_grant"
    assert _status(env, token) == "active"  # refused before rotation: not counted as a use
    _, other = env.grant(client_id, env.person(org))
    with env.engine.begin() as conn:
        found = env.grants.find_by_refresh(conn, other)
        assert found is not None
        env.grants.revoke_grant(conn, found[0].id, reason="test", now=utcnow())
    assert env.refresh(other, client_id, secret).json()["error"] == "invalid_grant"


def test_another_clients_refresh_token_is_refused(env: Lifecycle) -> None:
    victim, victim_secret, org = env.console()
    thief, thief_secret, _ = env.console()
    _, token = env.grant(victim, env.person(org))
    r = env.refresh(token, thief, thief_secret)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert "access_token" not in r.json()
    # Presented by another client, the token is taken as stolen: its grant is revoked.
    assert env.refresh(token, victim, victim_secret).json()["error"] == "invalid_grant"


def test_scope_may_narrow_but_never_widen(env: Lifecycle) -> None:
    client_id, secret, org = env.console()
    _, token = env.grant(client_id, env.person(org), scope="openid offline_access")
    wide = env.refresh(token, client_id, secret, scope="openid offline_access releases:read")
    assert wide.status_code == 400 and wide.json()["error"] == "invalid_scope"
    assert _status(env, token) == "active"  # a refused widening does not use the token up
    narrow = env.refresh(token, client_id, secret, scope="openid")
    assert narrow.status_code == 200, narrow.text
    assert narrow.json()["scope"] == "openid"
    # The refresh token keeps the grant's scope (RFC 6749 §6): the next refresh may ask for all of it.
    full = env.refresh(narrow.json()["refresh_token"], client_id, secret)
    assert full.json()["scope"] == "offline_access openid"


def test_client_authentication_is_required(env: Lifecycle) -> None:
    client_id, _, org = env.console()
    _, token = env.grant(client_id, env.person(org))
    r = env.refresh(token, client_id, None)  # a confidential client without its secret
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"
    assert _status(env, token) == "active"


def test_public_driver_app_refreshes_with_its_client_id(env: Lifecycle) -> None:
    client_id = env.driver_app()
    _, token = env.grant(client_id, env.person(), scope="openid offline_access nominations:respond")
    r = env.refresh(token, client_id)
    assert r.status_code == 200, r.text


def test_dpop_bound_refresh_token_needs_a_proof_of_the_same_key(env: Lifecycle) -> None:
    client_id = env.driver_app()
    key = dpop_key()
    _, token = env.grant(client_id, env.person(), scope="openid offline_access", dpop_jkt=thumbprint(key))
    bare = env.refresh(token, client_id)
    assert bare.status_code == 400 and bare.json()["error"] == "invalid_dpop_proof"
    other = env.refresh(token, client_id, dpop=dpop_proof(dpop_key()))
    assert other.status_code == 400 and other.json()["error"] == "invalid_dpop_proof"
    assert _status(env, token) == "active"  # a thief without the key cannot burn the token
    ok = env.refresh(token, client_id, dpop=dpop_proof(key))
    assert ok.status_code == 200, ok.text
    assert ok.json()["token_type"] == "DPoP"
    claims = env.provider.verifier.verify(ok.json()["access_token"], audience="quaygate-api")
    assert claims["cnf"] == {"jkt": thumbprint(key)}


def test_suspended_person_gets_nothing(env: Lifecycle) -> None:
    client_id, secret, org = env.console()
    pid = env.person(org)
    _, token = env.grant(client_id, pid)
    with env.engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == pid).values(status="suspended"))
    r = env.refresh(token, client_id, secret)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


@pytest.fixture
def pg_env(pg_engine: sa.Engine, redis_url: str, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(pg_engine, tmp_path, RedisCache(redis_url))


def test_concurrent_double_use_gives_exactly_one_success(pg_env: Lifecycle) -> None:
    """Ten threads present one refresh token at once, on PostgreSQL: one wins, the rest are reuse."""
    env = pg_env
    client_id, secret, org = env.console()
    _, token = env.grant(client_id, env.person(org))
    server = env.provider.server

    body = f"grant_type=refresh_token&refresh_token={token}".encode()
    headers = Headers({"content-type": "application/x-www-form-urlencoded", **basic(client_id, secret)})
    barrier = threading.Barrier(10)
    statuses: list[int] = []
    lock = threading.Lock()

    def attempt() -> None:
        barrier.wait()
        r = server.token_response(FormRequest("POST", headers, headers["content-type"], body))
        with lock:
            statuses.append(r.status_code)

    threads = [threading.Thread(target=attempt) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [400] * 9
    with env.engine.connect() as conn:
        rows = conn.execute(sa.select(refresh_tokens.c.status)).scalars().all()
    assert len(rows) == 2  # the presented token and exactly one successor


# ---- the fast path on PostgreSQL: READ, then one WRITE, each autocommitted -----------------------------


@contextmanager
def _statements(engine: sa.Engine) -> Iterator[list[tuple[str, bool]]]:
    """Every statement psycopg sends on ``engine``'s connections meanwhile (SQLAlchemy's and HotStatement's
    alike), with whether it ran in autocommit: psycopg sends BEGIN before a statement, and COMMIT on
    commit(), only when autocommit is off."""
    sent: list[tuple[str, bool]] = []

    class Recording(psycopg.Cursor[Any]):
        def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
            sent.append((" ".join(str(query).split()), self.connection.autocommit))
            return super().execute(query, params, **kw)

        def executemany(self, query: Any, params_seq: Any, **kw: Any) -> None:
            sent.append((" ".join(str(query).split()), self.connection.autocommit))
            super().executemany(query, params_seq, **kw)

    def checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        dbapi_conn.cursor_factory = Recording

    def checkin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.cursor_factory = psycopg.Cursor

    sa.event.listen(engine, "checkout", checkout)
    sa.event.listen(engine, "checkin", checkin)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "checkout", checkout)
        sa.event.remove(engine, "checkin", checkin)


def _between_read_and_write(monkeypatch: pytest.MonkeyPatch, env: Lifecycle, interfere: Any) -> list[bool]:
    """Have ``interfere()`` (another connection's committed work) come after the fast path's READ and
    before its WRITE; the list returned is non-empty once it has."""
    ran: list[bool] = []
    write = env.grants.rotate_prepared

    def late(*args: Any, **kw: Any) -> bool:
        interfere()
        ran.append(True)
        return write(*args, **kw)

    monkeypatch.setattr(env.grants, "rotate_prepared", late)
    return ran


def _refusals(env: Lifecycle) -> list[str]:
    with env.engine.connect() as conn:
        return [d["reason"] for d in conn.execute(sa.select(audit_log.c.data).where(
            audit_log.c.kind == "identity.token.refused").order_by(audit_log.c.id)).scalars()]


def _token_rows(env: Lifecycle) -> list[str]:
    with env.engine.connect() as conn:
        return sorted(conn.execute(sa.select(refresh_tokens.c.status)).scalars())


def test_a_plain_refresh_on_postgresql_is_two_autocommitted_statements(pg_env: Lifecycle) -> None:
    env = pg_env
    client_id, secret, org = env.console()
    _, token = env.grant(client_id, env.person(org))
    warm = env.refresh(token, client_id, secret)  # loads the client and the signing keys
    assert warm.status_code == 200, warm.text
    with _statements(env.engine) as sent:
        r = env.refresh(warm.json()["refresh_token"], client_id, secret)
    assert r.status_code == 200, r.text
    # READ, then WRITE; each a transaction of its own: no BEGIN, no COMMIT round trip
    assert len(sent) == 2 and all(autocommit for _, autocommit in sent), sent
    assert sent[0][0].startswith("SELECT") and "UPDATE refresh_tokens" in sent[1][0], sent
    assert _status(env, warm.json()["refresh_token"]) == "rotated"
    assert _status(env, r.json()["refresh_token"]) == "active"
    assert _audit_kinds(env).count("identity.token.refreshed") == 2


def test_with_a_ban_register_a_refresh_costs_one_statement_more(pg_engine: sa.Engine, redis_url: str,
                                                                 tmp_path: Path) -> None:
    """Once a port-ban register is configured, a refresh also screens the person (a grant held from before
    a ban gives no more tokens: tests/test_identity_login_bans.py): one more autocommitted statement
    between the READ and the WRITE, the person by primary key and his bans by their subject index."""
    from tests.ban_register import Register

    for env in make_lifecycle(pg_engine, tmp_path, RedisCache(redis_url), ban_register_jwk=Register().public_jwk):
        client_id, secret, org = env.console()
        _, token = env.grant(client_id, env.person(org))
        warm = env.refresh(token, client_id, secret)
        assert warm.status_code == 200, warm.text
        with _statements(env.engine) as sent:
            r = env.refresh(warm.json()["refresh_token"], client_id, secret)
        assert r.status_code == 200, r.text
        assert len(sent) == 3 and all(autocommit for _, autocommit in sent), sent
        assert "port_bans" in sent[1][0] and "UPDATE refresh_tokens" in sent[2][0], sent


def test_the_audit_entry_is_written_by_the_rotations_own_transaction(pg_env: Lifecycle) -> None:
    env = pg_env
    client_id = env.driver_app()
    key = dpop_key()
    pid = env.person()
    gid, token = env.grant(client_id, pid, scope="openid offline_access", dpop_jkt=thumbprint(key))
    r = env.refresh(token, client_id, dpop=dpop_proof(key))
    assert r.status_code == 200, r.text
    body = r.json()
    with env.engine.connect() as conn:
        entry = conn.execute(sa.select(audit_log).where(audit_log.c.kind == "identity.token.refreshed")).one()
        xmins = conn.execute(sa.select(refresh_tokens.c.token_hash, sa.literal_column("xmin::text::bigint"))).all()
    # what issue_person_tokens has always recorded
    assert entry.actor == {"client_id": client_id, "person_id": str(pid)}
    assert entry.subject == str(gid)
    jti = _claims(body["access_token"])["jti"]
    assert entry.data == {"grant_type": "refresh_token", "grant_id": str(gid), "jti": jti,
                          "scope": "offline_access openid", "dpop": True, "id_token": True, "refresh_token": True}
    # the sealer's txid, and the one transaction that consumed the token and stored its successor
    assert entry.txid is not None
    assert {h: xmin for h, xmin in xmins} == {token_hash(token): entry.txid % 2**32,
                                              token_hash(body["refresh_token"]): entry.txid % 2**32}


def test_a_use_between_read_and_write_is_reuse_as_before(pg_env: Lifecycle, monkeypatch: pytest.MonkeyPatch) -> None:
    env = pg_env
    client_id, secret, org = env.console()
    gid, token = env.grant(client_id, env.person(org))

    def another_use() -> None:  # the race's winner: rotated and committed
        with env.engine.begin() as conn:
            env.grants.rotate(conn, token, client_id=client_id, now=utcnow())

    ran = _between_read_and_write(monkeypatch, env, another_use)
    r = env.refresh(token, client_id, secret)
    assert ran
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # The lost WRITE wrote nothing (no third token, no refreshed entry); the full path found the token
    # rotated: reuse, the family revoked, the winner's successor with it.
    assert _token_rows(env) == ["revoked", "revoked"]
    assert "identity.token.refreshed" not in _audit_kinds(env)
    assert "identity.refresh.reuse_detected" in _audit_kinds(env) and _refusals(env) == ["reused"]
    assert _revoked_reason(env, gid) == "refresh_reuse"


def test_a_revocation_between_read_and_write_is_refused_as_before(pg_env: Lifecycle,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    env = pg_env
    client_id, secret, org = env.console()
    gid, token = env.grant(client_id, env.person(org))

    def logout() -> None:
        with env.engine.begin() as conn:
            env.grants.revoke_grant(conn, gid, reason="logout", now=utcnow())

    ran = _between_read_and_write(monkeypatch, env, logout)
    r = env.refresh(token, client_id, secret)
    assert ran
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert _token_rows(env) == ["revoked"]  # no successor
    assert "identity.token.refreshed" not in _audit_kinds(env) and _refusals(env) == ["revoked"]
    assert _revoked_reason(env, gid) == "logout"


def test_a_person_suspended_between_read_and_write_gets_no_tokens(pg_env: Lifecycle,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    env = pg_env
    client_id, secret, org = env.console()
    pid = env.person(org)
    gid, token = env.grant(client_id, pid)

    def suspend() -> None:
        with env.engine.begin() as conn:
            conn.execute(persons.update().where(persons.c.id == pid).values(status="suspended"))

    ran = _between_read_and_write(monkeypatch, env, suspend)
    r = env.refresh(token, client_id, secret)
    assert ran
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert "access_token" not in r.json()
    # refused as before: the full path's rotation rolled back, the token as it was, no successor
    assert _token_rows(env) == ["active"]
    assert "identity.token.refreshed" not in _audit_kinds(env) and _refusals(env) == ["person_inactive"]
    assert _revoked_reason(env, gid) is None


def test_refusals_on_the_fast_path_write_nothing_and_keep_the_token(pg_env: Lifecycle) -> None:
    env = pg_env
    client_id = env.driver_app()
    key = dpop_key()
    _, token = env.grant(client_id, env.person(), scope="openid offline_access", dpop_jkt=thumbprint(key))
    assert env.refresh(token, client_id).json()["error"] == "invalid_dpop_proof"  # loads the client
    with _statements(env.engine) as sent:
        other_key = env.refresh(token, client_id, dpop=dpop_proof(dpop_key()))
        wider = env.refresh(token, client_id, scope="openid offline_access releases:read", dpop=dpop_proof(key))
    assert other_key.status_code == 400 and other_key.json()["error"] == "invalid_dpop_proof"
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    # each: the READ and the refusal's audit entry, autocommitted; the token never touched
    assert len(sent) == 4 and all(autocommit for _, autocommit in sent), sent
    assert not any("refresh_tokens SET" in statement for statement, _ in sent), sent
    assert _refusals(env) == ["dpop_key", "dpop_key", "scope_widened"]
    assert _token_rows(env) == ["active"]
    ok = env.refresh(token, client_id, dpop=dpop_proof(key))
    assert ok.status_code == 200, ok.text


def test_a_failed_write_leaves_everything_as_it_was(pg_env: Lifecycle) -> None:
    """The WRITE is one statement: should its audit entry fail, the token was not consumed either."""
    env = pg_env
    client_id, _, org = env.console()
    _, token = env.grant(client_id, env.person(org))
    now = utcnow()
    with env.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        rotation = env.grants.prepare_rotation(conn, token, client_id=client_id, now=now)
        assert rotation is not None
        with pytest.raises(sa.exc.IntegrityError):  # audit_log.kind is NOT NULL
            env.grants.rotate_prepared(conn, token, rotation, client_id=client_id, now=now,
                                       entry=(None, {}, None, {}, now))  # type: ignore[arg-type]
    assert _token_rows(env) == ["active"]
    assert _audit_kinds(env) == []


def _revoked_reason(env: Lifecycle, gid: Any) -> str | None:
    with env.engine.connect() as conn:
        return conn.execute(sa.select(grants.c.revoked_reason).where(grants.c.id == gid)).scalar()


# ---- review 120, finding 2: a thief without the DPoP key cannot end a bound family ------------------------

def _admin_console(env: Lifecycle) -> str:
    """A second public client (auth none) with the refresh_token grant: the admin console, as deployed."""
    client_id, _ = create_client(env.engine, name="admin console", role="admin_console", organisation_id=None,
                                 auth_method="none", redirect_uris=["https://admin.example/callback"], now=utcnow())
    return client_id


def test_a_bound_token_under_another_public_client_without_its_key_revokes_nothing(env: Lifecycle) -> None:
    """The reviewer's demonstration: the driver's DPoP-bound token presented, with no proof, under the
    admin console's client id. Before the mend its grant was revoked (refresh_wrong_client) and the
    driver's next refresh, with the right key, refused."""
    driver, console = env.driver_app(), _admin_console(env)
    key = dpop_key()
    gid, token = env.grant(driver, env.person(), scope="openid offline_access", dpop_jkt=thumbprint(key))
    stolen = env.refresh(token, console)
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    other_key = env.refresh(token, console, dpop=dpop_proof(dpop_key()))
    assert other_key.status_code == 400 and other_key.json()["error"] == "invalid_grant"
    assert _revoked_reason(env, gid) is None and _status(env, token) == "active"  # nothing written
    assert "identity.refresh.wrong_client" not in _audit_kinds(env)
    ok = env.refresh(token, driver, dpop=dpop_proof(key))
    assert ok.status_code == 200, ok.text


def test_a_bound_token_under_another_client_with_its_key_is_theft_as_before(env: Lifecycle) -> None:
    driver, console = env.driver_app(), _admin_console(env)
    key = dpop_key()
    gid, token = env.grant(driver, env.person(), scope="openid offline_access", dpop_jkt=thumbprint(key))
    proof = dpop_proof(key)
    r = env.refresh(token, console, dpop=proof)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert _revoked_reason(env, gid) == "refresh_wrong_client"
    assert "identity.refresh.wrong_client" in _audit_kinds(env)
    # The proof was claimed before the family was judged: the same request again is a replay.
    assert env.refresh(token, console, dpop=proof).json()["error"] == "invalid_dpop_proof"


def test_an_unbound_token_under_another_public_client_still_revokes_its_grant(env: Lifecycle) -> None:
    driver, console = env.driver_app(), _admin_console(env)
    gid, token = env.grant(driver, env.person(), scope="openid offline_access")
    assert env.refresh(token, console).json()["error"] == "invalid_grant"
    assert _revoked_reason(env, gid) == "refresh_wrong_client"


def test_a_rotated_bound_token_without_its_key_is_refused_and_revokes_nothing(env: Lifecycle) -> None:
    """A copy of a DPoP-bound token the driver has since rotated, replayed without a proof (or with
    another key's): refused as invalid_dpop_proof, the family untouched. Before the mend: reuse, the
    family revoked (refresh_reuse)."""
    driver = env.driver_app()
    key = dpop_key()
    gid, first = env.grant(driver, env.person(), scope="openid offline_access", dpop_jkt=thumbprint(key))
    one = env.refresh(first, driver, dpop=dpop_proof(key))
    assert one.status_code == 200, one.text
    for proof in (None, dpop_proof(dpop_key())):
        replay = env.refresh(first, driver, dpop=proof)
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_dpop_proof"
    assert _revoked_reason(env, gid) is None
    assert "identity.refresh.reuse_detected" not in _audit_kinds(env)
    two = env.refresh(one.json()["refresh_token"], driver, dpop=dpop_proof(key))
    assert two.status_code == 200, two.text


def test_a_rotated_bound_token_with_its_key_is_reuse_as_before(env: Lifecycle) -> None:
    driver = env.driver_app()
    key = dpop_key()
    gid, first = env.grant(driver, env.person(), scope="openid offline_access", dpop_jkt=thumbprint(key))
    one = env.refresh(first, driver, dpop=dpop_proof(key)).json()
    replay = env.refresh(first, driver, dpop=dpop_proof(key))
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert _revoked_reason(env, gid) == "refresh_reuse"
    assert env.refresh(one["refresh_token"], driver, dpop=dpop_proof(key)).json()["error"] == "invalid_grant"


def test_on_postgresql_a_bound_token_without_its_key_revokes_nothing(pg_env: Lifecycle) -> None:
    """The same on PostgreSQL, whose one statement consumes another client's token before the grant is
    read: the refusal rolls that back."""
    env = pg_env
    driver, console = env.driver_app(), _admin_console(env)
    key = dpop_key()
    gid, token = env.grant(driver, env.person(), scope="openid offline_access", dpop_jkt=thumbprint(key))
    assert env.refresh(token, console).json()["error"] == "invalid_grant"
    assert _revoked_reason(env, gid) is None and _status(env, token) == "active"
    one = env.refresh(token, driver, dpop=dpop_proof(key))
    assert one.status_code == 200, one.text
    assert env.refresh(token, driver).json()["error"] == "invalid_dpop_proof"
    assert _revoked_reason(env, gid) is None

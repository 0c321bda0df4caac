"""Cutting a person's logins off: removing a passkey, or its suspension after a counter regression,
ends the person's other login sessions and revokes every grant of the person (refresh tokens answer
invalid_grant, access tokens are refused), in the transaction that changes the credential. On the
full app, so the release API and userinfo see the revocations. Then the console's client registration:
a role that is not a string is refused as bad metadata, never a 500; and port security suspending a
person, which cuts them off the same way and ends their enrolment codes, and reinstating them, which
lets them log in again and restores nothing the suspension ended; a suspension and a registration at
once, on PostgreSQL, run one after the other (review 67)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.authn import enrolment
from identity.oidc.userinfo import USERINFO_PATH
from identity.sessions import sessions_for
from identity.tokens import InvalidToken
from quaygate.schema import (
    audit_log,
    enrolment_codes,
    grants,
    login_sessions,
    oauth_clients,
    persons,
    webauthn_credentials,
)
from tests.ban_register import Register
from tests.interleave import HeldBeforeCommit, in_thread, waits_on_a_lock
from tests.test_admin_console import _auth, _console, _officer, _problem, _token, console_flow
from tests.test_identity_code_flow_support import Flow
from tests.test_identity_grants_support import Lifecycle, make_lifecycle, utcnow
from tests.test_identity_support import ISSUER
from tests.test_passkey_provenance import begin, finish, login, passkeys_of
from tests.webauthn_authenticator import SoftAuthenticator

ORIGIN = ISSUER


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path)


def _post(env: Lifecycle | Flow, path: str, body: Any = None, cookie: str | None = None) -> Any:
    env.http.cookies.clear()
    headers = {"Origin": ORIGIN, **({"Cookie": f"qg_session={cookie}"} if cookie else {})}
    return env.http.post(path, json=body if body is not None else {}, headers=headers)


def _enrol(env: Lifecycle | Flow, pid: uuid.UUID, device: SoftAuthenticator) -> tuple[str, str]:
    """Enrol with a fresh code; (credential id, session cookie)."""
    code, _ = enrolment.issue_code(env.engine, pid, created_by="test badge office", now=utcnow(),
                                   refused_roles=enrolment.NO_ROLE_REFUSED)
    opts = _post(env, "/webauthn/registration/options", {"enrolment_code": code})
    assert opts.status_code == 200, opts.text
    done = _post(env, "/webauthn/registration/verify",
                 {"flow": opts.json()["flow"], "credential": device.create(opts.json()["publicKey"])})
    assert done.status_code == 201, done.text
    return done.json()["credential_id"], done.cookies["qg_session"]


def _login(env: Lifecycle | Flow, device: SoftAuthenticator, **kw: Any) -> Any:
    opts = _post(env, "/webauthn/authentication/options")
    assert opts.status_code == 200, opts.text
    return _post(env, "/webauthn/authentication/verify",
                 {"flow": opts.json()["flow"], "credential": device.get(opts.json()["publicKey"], **kw)})


def _driver_app_login(env: Lifecycle, pid: uuid.UUID) -> tuple[str, str, str]:
    """The driver app's grant as the code exchange leaves it, refreshed once: (client id, the live
    refresh token, an access token)."""
    client_id = env.driver_app()
    _, first = env.grant(client_id, pid, scope="openid offline_access")
    r = env.refresh(first, client_id)
    assert r.status_code == 200, r.text
    return client_id, r.json()["refresh_token"], r.json()["access_token"]


def _userinfo(env: Lifecycle, access_token: str) -> int:
    env.http.cookies.clear()
    return int(env.http.get(USERINFO_PATH, headers={"Authorization": f"Bearer {access_token}"}).status_code)


def _api(env: Lifecycle, access_token: str) -> int:
    env.http.cookies.clear()
    return int(env.http.get("/api/v1/releases", headers={"Authorization": f"Bearer {access_token}"}).status_code)


def _userinfo_at(flow: Flow, access_token: str) -> int:
    flow.http.cookies.clear()
    return int(flow.http.get(USERINFO_PATH, headers={"Authorization": f"Bearer {access_token}"}).status_code)


def _live(env: Lifecycle | Flow, cookie: str) -> bool:
    return sessions_for(env.app).get(cookie, now=utcnow()) is not None


def _audit_data(env: Lifecycle, kind: str) -> dict[str, Any]:
    with env.engine.connect() as conn:
        data: dict[str, Any] = conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == kind)).scalar_one()
    return data


def test_removing_a_passkey_cuts_off_the_other_sessions_and_every_grant(env: Lifecycle) -> None:
    pid = env.person()
    phone, thief = SoftAuthenticator(origin=ORIGIN), SoftAuthenticator(origin=ORIGIN)
    _, own = _enrol(env, pid, phone)
    stolen, enrolled = _enrol(env, pid, thief)  # a passkey the person no longer holds
    taken = _login(env, thief)
    assert taken.status_code == 200, taken.text
    thief_session = taken.cookies["qg_session"]
    client_id, refresh, access = _driver_app_login(env, pid)
    assert _userinfo(env, access) == 200
    assert _api(env, access) == 403  # a live token, only without releases:read: admitted, then refused

    env.http.cookies.clear()
    gone = env.http.delete(f"/account/passkeys/{stolen}",
                           headers={"Origin": ORIGIN, "Cookie": f"qg_session={own}"})
    assert gone.status_code == 200, gone.text

    assert not _live(env, thief_session) and not _live(env, enrolled)
    assert _live(env, own)  # the session that removed it stays
    again = env.refresh(refresh, client_id)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text
    assert _userinfo(env, access) == 401
    assert _api(env, access) == 401  # now refused as a token, before its scope is looked at
    with env.engine.connect() as conn:
        assert conn.execute(sa.select(grants.c.revoked_reason)).scalars().all() == ["passkey_removed"]
    assert _audit_data(env, "identity.passkey.removed") == {"active_remaining": 1, "sessions_ended": 2,
                                                           "grants_revoked": 1, "own_session_ended": False}
    assert _login(env, thief).status_code == 401
    assert _login(env, phone).status_code == 200


def test_removal_leaves_other_persons_alone(env: Lifecycle) -> None:
    pid, other = env.person(), env.person()
    cid, own = _enrol(env, pid, SoftAuthenticator(origin=ORIGIN))
    _, other_session = _enrol(env, other, SoftAuthenticator(origin=ORIGIN))
    client_id, refresh, access = _driver_app_login(env, other)
    env.http.cookies.clear()
    assert env.http.delete(f"/account/passkeys/{cid}",
                           headers={"Origin": ORIGIN, "Cookie": f"qg_session={own}"}).status_code == 200
    assert _live(env, other_session)
    assert env.refresh(refresh, client_id).status_code == 200
    assert _userinfo(env, access) == 200


def test_a_counter_regression_cuts_off_every_session_and_grant_of_the_person(env: Lifecycle) -> None:
    pid = env.person()
    phone = SoftAuthenticator(origin=ORIGIN)
    _, enrolled = _enrol(env, pid, phone)
    ahead = _login(env, phone, sign_count=5)
    assert ahead.status_code == 200, ahead.text
    client_id, refresh, access = _driver_app_login(env, pid)
    assert _userinfo(env, access) == 200

    clone = _login(env, phone, sign_count=3)
    assert clone.status_code == 401 and clone.json()["code"] == "passkey_suspended", clone.text

    assert not _live(env, enrolled) and not _live(env, ahead.cookies["qg_session"])
    with env.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(login_sessions).where(
            login_sessions.c.person_id == pid, login_sessions.c.ended_at.is_(None))).scalar_one() == 0
        assert conn.execute(sa.select(grants.c.revoked_reason)).scalars().all() == ["passkey_counter_regression"]
    again = env.refresh(refresh, client_id)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text
    assert _userinfo(env, access) == 401
    data = _audit_data(env, "identity.passkey.suspended.counter_regression")
    assert (data["sessions_ended"], data["grants_revoked"]) == (2, 1)


# ---- the console's client registration: a role of the wrong JSON type -------------------------------


@pytest.fixture
def console(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from console_flow(engine, tmp_path, Register())


@pytest.mark.parametrize("body", [{"quaygate_role": ["admin"]}, {"quaygate_role": {"a": 1}}, {"role": ["x"]},
                                  {"role": {"admin": True}}])
def test_a_client_role_that_is_not_a_string_is_bad_metadata_not_a_500(console: Flow, body: dict[str, Any]) -> None:
    token = _token(console, _console(console), _officer(console, "port_security_admin"))
    with console.engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(oauth_clients)).scalar_one()
    resp = console.http.post("/admin/v1/clients", headers=_auth(token),
                             json={"client_name": "mine", "token_endpoint_auth_method": "client_secret_basic",
                                   "grant_types": ["client_credentials"], **body})
    _problem(resp, 422, "invalid_client_metadata")
    assert resp.headers["content-type"].startswith("application/problem+json")
    with console.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(oauth_clients)).scalar_one() == before


# ---- port security suspends a person -------------------------------------------------------------


def _suspend(console: Flow, token: str, person: uuid.UUID | str, reason: str | None = "badge misuse") -> Any:
    body = {"reason": reason} if reason is not None else {}
    return console.http.post(f"/admin/v1/persons/{person}:suspend", json=body, headers=_auth(token))


def test_port_security_suspends_a_person_and_cuts_every_login_off(console: Flow) -> None:
    driver = console.person()
    app_id = console.driver_app()
    tokens = console.driver_tokens(app_id, driver)
    browser = console.http.cookies.get("qg_session")
    assert browser and _userinfo_at(console, tokens["access_token"]) == 200
    officer_token = _token(console, _console(console), _officer(console, "port_security_admin"))

    done = _suspend(console, officer_token, driver)
    assert done.status_code == 200, done.text
    assert done.json() == {"id": str(driver), "status": "suspended", "sessions_ended": 1, "grants_revoked": 1,
                           "client_secrets_shown": []}

    assert sessions_for(console.app).get(browser, now=utcnow()) is None
    console.http.cookies.clear()
    again = console.http.post("/oauth2/token", data={"grant_type": "refresh_token", "client_id": app_id,
                                                      "refresh_token": tokens["refresh_token"]})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text
    assert _userinfo_at(console, tokens["access_token"]) == 401
    # Refused for the person's status too; the token itself is on the revocation list, which is what
    # the release API and the gate ask.
    with pytest.raises(InvalidToken, match="revoked"):
        console.provider.verifier.verify(tokens["access_token"], audience=console.container.settings.api_audience)
    with console.engine.connect() as conn:
        assert conn.execute(sa.select(persons.c.status).where(persons.c.id == driver)).scalar_one() == "suspended"
        assert conn.execute(sa.select(grants.c.revoked_reason).where(grants.c.person_id == driver)
                            ).scalars().all() == ["person_suspended"]
        entry = conn.execute(sa.select(audit_log).where(audit_log.c.kind == "identity.admin.person.suspended")).one()
    assert entry.subject == str(driver) and entry.data["reason"] == "badge misuse"
    assert entry.actor["person_id"] and entry.actor["client_id"]
    # Once is enough.
    _problem(_suspend(console, officer_token, driver), 409, "status_unchanged")


def test_suspending_is_port_securitys_said_why_and_never_of_oneself(console: Flow) -> None:
    driver = console.person()
    client_id = _console(console)
    office = _token(console, client_id, _officer(console, "badge_office"))
    officer = _officer(console, "port_security_admin")
    security = _token(console, client_id, officer)
    _problem(_suspend(console, office, driver), 403, "insufficient_role")
    _problem(_suspend(console, security, driver, reason="   "), 422, "reason_required")
    assert _suspend(console, security, driver, reason=None).status_code == 422
    _problem(_suspend(console, security, officer), 403, "own_suspension")
    _problem(_suspend(console, security, uuid.uuid4()), 404, "not_found")
    assert _suspend(console, security, "not-a-uuid").status_code == 422
    console.http.cookies.clear()
    assert console.http.post(f"/admin/v1/persons/{driver}:suspend", json={"reason": "x"}).status_code == 401
    with console.engine.connect() as conn:
        assert conn.execute(sa.select(persons.c.status).where(persons.c.id == driver)).scalar_one() == "active"


# ---- port security reinstates a suspended person -------------------------------------------------


def _reinstate(console: Flow, token: str, person: uuid.UUID | str, reason: str | None = "cleared") -> Any:
    body = {"reason": reason} if reason is not None else {}
    return console.http.post(f"/admin/v1/persons/{person}:reinstate", json=body, headers=_auth(token))


def test_a_reinstated_person_logs_in_again_and_gets_nothing_back(console: Flow) -> None:
    """Reinstatement lifts the suspension only: the person logs in with a passkey again, but the
    sessions and tokens the suspension ended stay ended, a passkey suspended as a clone signal stays
    suspended, and a code issued before the suspension (which ended it) does not start working again."""
    driver = console.person()
    phone, cloned = SoftAuthenticator(origin=ORIGIN), SoftAuthenticator(origin=ORIGIN)
    _, enrolled = _enrol(console, driver, phone)
    _enrol(console, driver, cloned)
    assert _login(console, cloned, sign_count=5).status_code == 200
    assert _login(console, cloned, sign_count=3).json()["code"] == "passkey_suspended"  # a counter regression
    app_id = console.driver_app()
    tokens = console.driver_tokens(app_id, driver)
    before, _ = enrolment.issue_code(console.engine, driver, created_by="test badge office", now=utcnow(),
                                     refused_roles=enrolment.NO_ROLE_REFUSED)
    officer = _officer(console, "port_security_admin")
    security = _token(console, _console(console), officer)
    assert _suspend(console, security, driver).status_code == 200
    _problem(_login(console, phone), 403, "person_suspended")

    done = _reinstate(console, security, driver, reason="  cleared by   the inquiry ")
    assert done.status_code == 200, done.text
    # The suspension ended the code already (review 67): the reinstatement finds none live.
    assert done.json() == {"id": str(driver), "status": "active", "enrolment_codes_ended": 0,
                           "passkeys_active": 1, "passkeys_suspended": 1}

    assert _login(console, phone).status_code == 200
    _problem(_login(console, cloned), 401, "passkey_suspended")
    assert not _live(console, enrolled)
    console.http.cookies.clear()
    again = console.http.post("/oauth2/token", data={"grant_type": "refresh_token", "client_id": app_id,
                                                      "refresh_token": tokens["refresh_token"]})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text
    assert _userinfo_at(console, tokens["access_token"]) == 401
    _problem(_post(console, "/webauthn/registration/options", {"enrolment_code": before}), 400,
             "enrolment_code_expired")
    fresh = console.driver_tokens(app_id, driver)  # the apps ask for new tokens, and get them
    assert _userinfo_at(console, fresh["access_token"]) == 200
    with console.engine.connect() as conn:
        assert conn.execute(sa.select(persons.c.status).where(persons.c.id == driver)).scalar_one() == "active"
        assert sorted(conn.execute(sa.select(webauthn_credentials.c.status).where(
            webauthn_credentials.c.person_id == driver)).scalars()) == ["active", "suspended"]
        entry = conn.execute(sa.select(audit_log).where(audit_log.c.kind == "identity.admin.person.reinstated")).one()
    assert entry.subject == str(driver)
    assert entry.data == {"reason": "cleared by the inquiry", "enrolment_codes_ended": 0, "passkeys_active": 1,
                          "passkeys_suspended": 1}
    assert entry.actor["person_id"] == str(officer) and entry.actor["client_id"]
    _problem(_reinstate(console, security, driver), 409, "status_unchanged")  # once is enough


def test_reinstating_is_port_securitys_said_why_and_never_of_oneself(console: Flow) -> None:
    driver = console.person(status="suspended")
    client_id = _console(console)
    office = _token(console, client_id, _officer(console, "badge_office"))
    officer = _officer(console, "port_security_admin")
    security = _token(console, client_id, officer)
    _problem(_reinstate(console, office, driver), 403, "insufficient_role")
    _problem(_reinstate(console, security, driver, reason="   "), 422, "reason_required")
    assert _reinstate(console, security, driver, reason=None).status_code == 422
    assert _reinstate(console, security, driver, reason="x" * 501).status_code == 422
    _problem(_reinstate(console, security, officer), 403, "own_reinstatement")
    _problem(_reinstate(console, security, uuid.uuid4()), 404, "not_found")
    _problem(_reinstate(console, security, console.person()), 409, "status_unchanged")  # never suspended
    assert _reinstate(console, security, "not-a-uuid").status_code == 422
    console.http.cookies.clear()
    assert console.http.post(f"/admin/v1/persons/{driver}:reinstate", json={"reason": "x"}).status_code == 401
    with console.engine.connect() as conn:
        assert conn.execute(sa.select(persons.c.status).where(persons.c.id == driver)).scalar_one() == "suspended"
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(
            audit_log.c.kind == "identity.admin.person.reinstated")).scalar_one() == 0


@pytest.fixture
def pg_console(pg_engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from console_flow(pg_engine, tmp_path, Register())


def test_two_reinstatements_at_once_make_one_change(pg_console: Flow) -> None:
    """On PostgreSQL, two officers reinstate one person at once: the first is held just before its
    COMMIT while the second runs into it; the second's conditional UPDATE then finds the person active
    and is told so (a read of the status, then an UPDATE, would reinstate twice)."""
    console = pg_console
    driver = console.person(status="suspended")
    client_id = _console(console)
    first = _token(console, client_id, _officer(console, "port_security_admin"))
    second = _token(console, client_id, _officer(console, "port_security_admin"))
    with HeldBeforeCommit(console.engine, "UPDATE persons") as held:
        one, answered = in_thread(lambda: _reinstate(console, first, driver, reason="first"))
        assert held.held.wait(10)
        other, answered_too = in_thread(lambda: _reinstate(console, second, driver, reason="second"))
        waited = waits_on_a_lock(console.engine, other)
        held.go.set()
        one.join(20)
        other.join(20)
    assert answered[0].status_code == 200, answered[0].text
    _problem(answered_too[0], 409, "status_unchanged")
    assert waited
    with console.engine.connect() as conn:
        assert conn.execute(sa.select(audit_log.c.data["reason"].as_string()).where(
            audit_log.c.kind == "identity.admin.person.reinstated")).scalars().all() == ["first"]


# ---- a suspension and a registration at once (review 67) ----------------------------------------------


def test_a_suspension_ends_the_persons_live_enrolment_codes(console: Flow) -> None:
    """A code handed out before the suspension registers nothing, during it or after the reinstatement."""
    driver = console.person()
    code, _ = enrolment.issue_code(console.engine, driver, created_by="test badge office", now=utcnow(),
                                   refused_roles=enrolment.NO_ROLE_REFUSED)
    security = _token(console, _console(console), _officer(console, "port_security_admin"))
    assert _suspend(console, security, driver).status_code == 200
    with console.engine.connect() as conn:
        assert conn.execute(sa.select(enrolment_codes.c.ended_at)).scalar_one() is not None
        data = conn.execute(sa.select(audit_log.c.data).where(
            audit_log.c.kind == "identity.admin.person.suspended")).scalar_one()
    assert data["enrolment_codes_ended"] == 1
    _problem(_post(console, "/webauthn/registration/options", {"enrolment_code": code}), 400,
             "enrolment_code_expired")
    assert _reinstate(console, security, driver).json()["enrolment_codes_ended"] == 0
    _problem(_post(console, "/webauthn/registration/options", {"enrolment_code": code}), 400,
             "enrolment_code_expired")


def test_a_registration_that_runs_into_a_suspension_waits_and_is_refused(pg_console: Flow) -> None:
    """Port security's suspension is held just before its COMMIT while the person's registration with
    a code goes on: the registration waits for the person's lock, then reads the status and is
    refused. Before, it read the status on a connection of its own, saw the person active, and left a
    new passkey and a live session on a suspended person, both working again after the reinstatement."""
    console = pg_console
    driver = console.person()
    code, _ = enrolment.issue_code(console.engine, driver, created_by="test badge office", now=utcnow(),
                                   refused_roles=enrolment.NO_ROLE_REFUSED)
    device, flow_id, created = begin(console, code=code)
    security = _token(console, _console(console), _officer(console, "port_security_admin"))
    with HeldBeforeCommit(console.engine, "UPDATE persons") as suspension:
        suspending, suspended = in_thread(lambda: _suspend(console, security, driver))
        assert suspension.held.wait(10)
        registering, answered = in_thread(lambda: finish(console, flow_id, created))
        waited = waits_on_a_lock(console.engine, registering)
        suspension.go.set()
        suspending.join(20)
        registering.join(20)
    assert suspended[0].status_code == 200, suspended[0].text
    _problem(answered[0], 403, "person_suspended")
    assert waited
    assert "qg_session" not in answered[0].cookies
    assert passkeys_of(console, driver) == []
    assert _reinstate(console, security, driver).status_code == 200
    _problem(login(console, device), 401, "passkey_unknown")


def test_a_suspension_that_runs_into_a_registration_ends_its_session(pg_console: Flow) -> None:
    """The other order: the registration holds the person's lock just before its COMMIT; the suspension
    waits for it, then ends the session it opened. Before, the suspension went by, ended the sessions
    committed so far, and the registration's session stayed live on a suspended person."""
    console = pg_console
    driver = console.person()
    code, _ = enrolment.issue_code(console.engine, driver, created_by="test badge office", now=utcnow(),
                                   refused_roles=enrolment.NO_ROLE_REFUSED)
    device, flow_id, created = begin(console, code=code)
    security = _token(console, _console(console), _officer(console, "port_security_admin"))
    with HeldBeforeCommit(console.engine, "INSERT INTO webauthn_credentials") as registration:
        registering, answered = in_thread(lambda: finish(console, flow_id, created))
        assert registration.held.wait(10)
        suspending, suspended = in_thread(lambda: _suspend(console, security, driver))
        waited = waits_on_a_lock(console.engine, suspending)
        registration.go.set()
        registering.join(20)
        suspending.join(20)
    assert answered[0].status_code == 201, answered[0].text
    assert suspended[0].status_code == 200, suspended[0].text
    assert waited
    assert suspended[0].json()["sessions_ended"] == 1
    assert not _live(console, answered[0].cookies["qg_session"])
    _problem(login(console, device), 403, "person_suspended")


def _live_sessions(env: Lifecycle | Flow, person: uuid.UUID) -> int:
    with env.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(login_sessions).where(
            login_sessions.c.person_id == person, login_sessions.c.ended_at.is_(None))).scalar_one())


def _signed_login(console: Flow, device: SoftAuthenticator) -> dict[str, Any]:
    """A login's verify body, signed now, sent later."""
    opts = _post(console, "/webauthn/authentication/options")
    assert opts.status_code == 200, opts.text
    return {"flow": opts.json()["flow"], "credential": device.get(opts.json()["publicKey"])}


def test_a_login_that_runs_into_a_suspension_waits_and_is_refused(pg_console: Flow) -> None:
    """Port security's suspension is held just before its COMMIT while the person logs in with a passkey:
    the login waits for the share lock on the person's row (identity.sessions ``hold_person``), then
    reads the status and is refused. Before, it read the status with the credential, without a lock, saw
    the person active and committed a session the suspension's cut-off had not seen: a live session on a
    suspended person."""
    console = pg_console
    driver = console.person()
    phone = SoftAuthenticator(origin=ORIGIN)
    _enrol(console, driver, phone)
    body = _signed_login(console, phone)
    security = _token(console, _console(console), _officer(console, "port_security_admin"))
    with HeldBeforeCommit(console.engine, "UPDATE persons") as suspension:
        suspending, suspended = in_thread(lambda: _suspend(console, security, driver))
        assert suspension.held.wait(10)
        logging_in, answered = in_thread(lambda: _post(console, "/webauthn/authentication/verify", body))
        waited = waits_on_a_lock(console.engine, logging_in)
        suspension.go.set()
        suspending.join(20)
        logging_in.join(20)
    assert suspended[0].status_code == 200, suspended[0].text
    assert _live_sessions(console, driver) == 0
    _problem(answered[0], 403, "person_suspended")
    assert "qg_session" not in answered[0].cookies
    assert waited


def test_a_suspension_that_runs_into_a_login_ends_its_session(pg_console: Flow, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """The other order: the login holds its share lock on the person's row just before its COMMIT; the
    suspension waits for it, then ends the session it opened. Before, the suspension went by, ended the
    sessions committed so far, and the login's session stayed live on a suspended person."""
    console = pg_console
    driver = console.person()
    phone = SoftAuthenticator(origin=ORIGIN)
    _enrol(console, driver, phone)
    body = _signed_login(console, phone)
    security = _token(console, _console(console), _officer(console, "port_security_admin"))
    # The login's statements run on the driver's cursor (quaygate.hotsql), which HeldBeforeCommit does
    # not see: its transaction is marked by a statement of the test's own, once the session is created.
    store = sessions_for(console.app)
    made = store.create

    def create_marked(*args: Any, **kw: Any) -> Any:
        created = made(*args, **kw)
        kw["conn"].execute(sa.text("SELECT 'login session created'"))
        return created

    monkeypatch.setattr(store, "create", create_marked)
    with HeldBeforeCommit(console.engine, "SELECT 'login session created'") as login_held:
        logging_in, answered = in_thread(lambda: _post(console, "/webauthn/authentication/verify", body))
        assert login_held.held.wait(10)
        suspending, suspended = in_thread(lambda: _suspend(console, security, driver))
        waited = waits_on_a_lock(console.engine, suspending)
        login_held.go.set()
        logging_in.join(20)
        suspending.join(20)
    assert answered[0].status_code == 200, answered[0].text
    assert suspended[0].status_code == 200, suspended[0].text
    assert _live_sessions(console, driver) == 0
    assert not _live(console, answered[0].cookies["qg_session"])
    assert suspended[0].json()["sessions_ended"] == 2  # the enrolment's and the login's
    assert waited
    _problem(_post(console, "/webauthn/authentication/verify", _signed_login(console, phone)), 403,
             "person_suspended")

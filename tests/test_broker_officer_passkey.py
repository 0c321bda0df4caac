"""Review 145, finding 1: an upstream (itsme) login of an officer added a passkey, and with it had the
admin console, which wants a passkey login (review 108).

Whoever controlled the itsme identity a port security or badge-office officer is linked to logged in
through the broker (acr upstream, amr fed mfa), which ranks above passkey, so the account page let the
session register a passkey of his own. It was stored not privileged but active, and that flag is
acted on only when a role is granted (identity.authn.credentials ``suspend_unprivileged``): an officer
who already held the role kept it, and its login opened the console. The same session removed the
officer's own passkeys and signed him out everywhere else.

So an officer's active passkeys are all privileged enrolments, as a role grant already makes them: a
person who holds a privileged role in force (claims.PRIVILEGED_ROLES, as the grant's) adds a passkey
only from a session one of those opened (or with port security's code), and manages his passkeys and
signs out elsewhere only from such a session; refused ``insufficient_authentication``, sent to port
security. A driver's upstream login adds a passkey as before.

First in process (the sessions made as the broker makes them), then the reviewer's proof against a real
itsme-like provider (oidc-provider under node, tests/upstream), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from identity.authn import enrolment
from identity.domain import assurance
from identity.domain.claims import PRIVILEGED_ROLES
from identity.sessions import SessionStore, sessions_for
from quaygate.schema import memberships, webauthn_credentials
from tests.test_identity_passkeys import PEnv, build_env, device
from tests.test_identity_support import add_org
from tests.upstream.world import World, build_world, now
from tests.webauthn_authenticator import SoftAuthenticator

OFFICERS = sorted(PRIVILEGED_ROLES)
# An upstream login as the broker opens it (identity/broker/service.py), and one stepped up by a face
# match since: neither was opened by a passkey of ours.
UPSTREAM = (assurance.ACR_UPSTREAM, ("fed", "mfa"))
UPSTREAM_FACE = (assurance.ACR_FACE, ("fed", "mfa", "face"))


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[PEnv]:
    yield from build_env(engine, tmp_path)


def _grant(engine: sa.Engine, person: uuid.UUID, role: str, *, until: Any = None) -> None:
    org = add_org(engine, "port_authority")
    with engine.begin() as conn:
        conn.execute(memberships.insert().values(person_id=person, organisation_id=org, role=role,
                                                 created_at=now(), valid_until=until))


def _session(env: PEnv, person: uuid.UUID, login: tuple[str, tuple[str, ...]]) -> str:
    acr, amr = login
    cookie, _ = sessions_for(env.app).create(person, acr=acr, amr=amr, now=env.clock.now())
    return cookie


def _passkeys(engine: sa.Engine, person: uuid.UUID) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(webauthn_credentials).where(webauthn_credentials.c.person_id == person)
                                 .order_by(webauthn_credentials.c.created_at)).all())


def _refused_to_port_security(resp: Any) -> None:
    assert resp.status_code == 403, resp.text
    body = resp.json()
    assert body["code"] == "insufficient_authentication", body
    assert body["office"] == enrolment.PORT_SECURITY and "port security" in body["detail"], body


def _register(env: PEnv, cookie: str) -> Any:
    opts = env.post("/webauthn/registration/options", cookie=cookie)
    assert opts.status_code == 200, opts.text
    return env.post("/webauthn/registration/verify",
                    {"flow": opts.json()["flow"], "credential": device().create(opts.json()["publicKey"])},
                    cookie=cookie)


# ---- adding a passkey ------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", OFFICERS)
@pytest.mark.parametrize("login", [UPSTREAM, UPSTREAM_FACE], ids=["upstream", "upstream_face"])
def test_an_officers_upstream_session_adds_no_passkey(env: PEnv, role: str, login: tuple[str, tuple[str, ...]]
                                                      ) -> None:
    officer = env.person()
    _grant(env.engine, officer, role)
    env.enrol(officer, device())  # port security's code: a privileged enrolment
    cookie = _session(env, officer, login)
    _refused_to_port_security(env.post("/webauthn/registration/options", cookie=cookie))
    assert len(_passkeys(env.engine, officer)) == 1
    assert "identity.passkey.registration.refused.insufficient_authentication" in env.audit_kinds()


def test_a_role_granted_while_the_ceremony_runs_refuses_it_at_verify(env: PEnv) -> None:
    """The rule is judged again under the person's row lock when the passkey is stored: options asked for
    as a driver, the role granted before the verify, nothing stored."""
    person = env.person()
    _grant(env.engine, person, "driver")
    cookie = _session(env, person, UPSTREAM)
    opts = env.post("/webauthn/registration/options", cookie=cookie)
    assert opts.status_code == 200, opts.text
    _grant(env.engine, person, "badge_office")
    done = env.post("/webauthn/registration/verify",
                    {"flow": opts.json()["flow"], "credential": device().create(opts.json()["publicKey"])},
                    cookie=cookie)
    _refused_to_port_security(done)
    assert _passkeys(env.engine, person) == []


def test_an_officers_own_passkey_session_still_adds_a_privileged_one(env: PEnv) -> None:
    officer = env.person()
    _grant(env.engine, officer, "port_security_admin")
    _, cookie = env.enrol(officer, device())
    assert _register(env, cookie).status_code == 201
    assert [(r.status, r.privileged_enrolment) for r in _passkeys(env.engine, officer)] == [
        ("active", True), ("active", True)]


def test_a_drivers_upstream_session_adds_a_passkey_as_before(env: PEnv) -> None:
    driver = env.person()
    _grant(env.engine, driver, "driver")
    cookie = _session(env, driver, UPSTREAM)
    done = _register(env, cookie)
    assert done.status_code == 201, done.text
    [row] = _passkeys(env.engine, driver)
    assert (row.status, row.enrolled_via, row.privileged_enrolment) == ("active", "account", False)


def test_a_dated_privileged_role_past_its_end_counts_no_more(env: PEnv) -> None:
    person = env.person()
    _grant(env.engine, person, "dispatcher", until=env.clock.now() - timedelta(minutes=1))
    assert _register(env, _session(env, person, UPSTREAM)).status_code == 201


# ---- managing passkeys and signing out elsewhere -----------------------------------------------------------


@pytest.mark.parametrize("login", [UPSTREAM, UPSTREAM_FACE], ids=["upstream", "upstream_face"])
def test_an_officers_upstream_session_neither_removes_renames_nor_signs_out(
        env: PEnv, login: tuple[str, tuple[str, ...]]) -> None:
    """Else the holder of the officer's itsme identity takes his passkeys away and signs him out: locked
    out of his own console, he could not even see what was done."""
    officer = env.person()
    _grant(env.engine, officer, "badge_office")
    credential_id, mine = env.enrol(officer, device())
    theirs = _session(env, officer, login)
    _refused_to_port_security(env.call("DELETE", f"/account/passkeys/{credential_id}", cookie=theirs))
    _refused_to_port_security(env.call("PATCH", f"/account/passkeys/{credential_id}", {"name": "gone"},
                                       cookie=theirs))
    _refused_to_port_security(env.call("DELETE", "/account/sessions", cookie=theirs))
    row = env.credential_row(credential_id)
    assert (row.status, row.name) == ("active", "My phone")
    sessions = sessions_for(env.app)
    assert sessions.get(mine, now=env.clock.now()) is not None
    kinds = env.audit_kinds()
    for use in ("removal", "rename", "sign_out_elsewhere"):
        assert f"identity.passkey.{use}.refused.insufficient_authentication" in kinds, use
    # His own passkey's session may: it signs the other one out.
    done = env.call("DELETE", "/account/sessions", cookie=mine)
    assert done.status_code == 200, done.text
    assert sessions.get(theirs, now=env.clock.now()) is None


def test_a_drivers_upstream_session_still_removes_and_signs_out(env: PEnv) -> None:
    driver = env.person()
    _grant(env.engine, driver, "driver")
    credential_id, _ = env.enrol(driver, device())
    cookie = _session(env, driver, UPSTREAM)
    assert env.call("DELETE", "/account/sessions", cookie=cookie).status_code == 200
    assert env.call("DELETE", f"/account/passkeys/{credential_id}", cookie=cookie).status_code == 200


# ---- the reviewer's proof, against a real itsme-like provider --------------------------------------------


@pytest.fixture
def world(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from build_world(engine, tmp_path)


def _call(world: World, method: str, path: str, body: Any = None, cookie: str | None = None) -> httpx.Response:
    headers = {"Origin": world.app.base, **({"Cookie": f"qg_session={cookie}"} if cookie else {})}
    return httpx.request(method, world.app.base + path, json=body if method != "DELETE" else None,
                         headers=headers, timeout=20)


def _itsme_session(world: World) -> str:
    with world.browser() as browser:
        done = world.login(browser, "jan")
        assert done.status_code == 303, world.refusals()
        cookie = browser.cookies.get("qg_session")
    assert cookie
    session = SessionStore(world.engine, ttl_seconds=3600).get(cookie, now=now())
    assert session is not None and session.acr == assurance.ACR_UPSTREAM and "fed" in session.amr
    return cookie


def _enrol(world: World, person: uuid.UUID) -> str:
    """A passkey enrolled with port security's code (an issuer refused no role): privileged."""
    code, _ = enrolment.issue_code(world.engine, person, created_by="port security", now=now(),
                                   refused_roles=enrolment.NO_ROLE_REFUSED)
    opts = _call(world, "POST", "/webauthn/registration/options", {"enrolment_code": code})
    assert opts.status_code == 200, opts.text
    created = SoftAuthenticator(origin=world.app.base).create(opts.json()["publicKey"])
    done = _call(world, "POST", "/webauthn/registration/verify", {"flow": opts.json()["flow"], "credential": created})
    assert done.status_code == 201, done.text
    return str(done.json()["credential_id"])


@pytest.mark.slow
@pytest.mark.xdist_group("broker")
def test_an_officers_itsme_login_adds_no_passkey_and_takes_none_away(world: World) -> None:
    _grant(world.engine, world.person, "port_security_admin")
    credential_id = _enrol(world, world.person)
    cookie = _itsme_session(world)
    _refused_to_port_security(_call(world, "POST", "/webauthn/registration/options", cookie=cookie))
    _refused_to_port_security(_call(world, "DELETE", f"/account/passkeys/{credential_id}", cookie=cookie))
    _refused_to_port_security(_call(world, "DELETE", "/account/sessions", cookie=cookie))
    assert [(r.credential_id, r.status, r.privileged_enrolment) for r in _passkeys(world.engine, world.person)] == [
        (credential_id, "active", True)]


@pytest.mark.slow
@pytest.mark.xdist_group("broker")
def test_a_drivers_itsme_login_still_adds_a_passkey(world: World) -> None:
    _grant(world.engine, world.person, "driver")
    cookie = _itsme_session(world)
    opts = _call(world, "POST", "/webauthn/registration/options", cookie=cookie)
    assert opts.status_code == 200, opts.text
    created = SoftAuthenticator(origin=world.app.base).create(opts.json()["publicKey"])
    done = _call(world, "POST", "/webauthn/registration/verify", {"flow": opts.json()["flow"], "credential": created},
                 cookie=cookie)
    assert done.status_code == 201, done.text
    [row] = _passkeys(world.engine, world.person)
    assert (row.status, row.privileged_enrolment) == ("active", False)

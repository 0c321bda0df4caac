"""A passkey enrolled with the badge office's code does not outlive a privileged role (review 67).

The badge office may not issue an enrolment code for an officer or a company's dispatcher: port
security must. A corrupt badge officer could still get there by a detour: issue a code for a driver
about to be promoted, register his own passkey on that driver, and wait for port security to grant
the role. So each passkey keeps where it came from (identity.authn.credentials ``Provenance``), and a
privileged role granted suspends every passkey of the person that rests on a code from an issuer
refused the privileged roles (or on nothing known), ends every login session and grant of the person,
and says so; the person gets a new code from port security. Through the real API, on SQLite and
PostgreSQL; then one registration in flight on PostgreSQL, and the migration's rows.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.api.admin import AdminCaller, enrolment_code_refused_roles
from identity.authn import enrolment, passkeys
from identity.authn.service import suspended_code
from identity.bootstrap import create_client
from identity.domain import claims as c
from identity.sessions import sessions_for
from quaygate.db import create_database, drop_database, make_engine
from quaygate.migrate import upgrade
from quaygate.schema import audit_log, enrolment_codes, login_sessions, persons, webauthn_credentials
from release_service.domain.parties import OrgKind
from tests.ban_register import Register
from tests.conftest import PG_URL, need_service
from tests.factories import add_org
from tests.interleave import in_thread
from tests.test_admin_console import _auth, _console, _officer, _problem, _token, console_flow
from tests.test_identity_code_flow_support import Flow
from tests.test_identity_support import ISSUER, basic
from tests.webauthn_authenticator import SoftAuthenticator


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from console_flow(engine, tmp_path, Register())


@pytest.fixture
def pg_flow(pg_engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from console_flow(pg_engine, tmp_path, Register())


# ---- helpers (shared with tests/test_enrolment_code_race.py and tests/test_identity_cutoff.py) -------


def post(flow: Flow, path: str, body: Any = None, cookie: str | None = None) -> Any:
    """A page's call: our Origin, the session cookie given or none."""
    flow.http.cookies.clear()
    headers = {"Origin": ISSUER, **({"Cookie": f"qg_session={cookie}"} if cookie else {})}
    return flow.http.post(path, json=body if body is not None else {}, headers=headers)


def issue(flow: Flow, token: str, person: uuid.UUID) -> str:
    """An enrolment code for ``person`` through the admin API, as ``token``'s caller."""
    flow.http.cookies.clear()
    r = flow.http.post(f"/admin/v1/persons/{person}/enrolment-codes", json={}, headers=_auth(token))
    assert r.status_code == 201, r.text
    return str(r.json()["code"])


def begin(flow: Flow, *, code: str | None = None, cookie: str | None = None) -> tuple[SoftAuthenticator, str, Any]:
    """Registration options, with an enrolment code or a login session: (a new device, the flow, the
    credential it created)."""
    opts = post(flow, "/webauthn/registration/options", {"enrolment_code": code} if code else {}, cookie)
    assert opts.status_code == 200, opts.text
    device = SoftAuthenticator(origin=ISSUER)
    return device, opts.json()["flow"], device.create(opts.json()["publicKey"])


def finish(flow: Flow, flow_id: str, created: Any, cookie: str | None = None) -> Any:
    return post(flow, "/webauthn/registration/verify", {"flow": flow_id, "credential": created}, cookie)


def register(flow: Flow, *, code: str | None = None, cookie: str | None = None) -> tuple[SoftAuthenticator, Any]:
    """A passkey registered through the pages: (its device, the answer)."""
    device, flow_id, created = begin(flow, code=code, cookie=cookie)
    done = finish(flow, flow_id, created, cookie)
    assert done.status_code == 201, done.text
    return device, done


def login(flow: Flow, device: SoftAuthenticator) -> Any:
    opts = post(flow, "/webauthn/authentication/options")
    assert opts.status_code == 200, opts.text
    return post(flow, "/webauthn/authentication/verify",
                {"flow": opts.json()["flow"], "credential": device.get(opts.json()["publicKey"])})


def grant(flow: Flow, token: str, person: uuid.UUID, org: uuid.UUID, role: str) -> Any:
    flow.http.cookies.clear()
    return flow.http.post(f"/admin/v1/persons/{person}/memberships", headers=_auth(token),
                          json={"organisation_id": str(org), "role": role})


def live(flow: Flow, cookie: str) -> bool:
    return sessions_for(flow.app).get(cookie, now=datetime.now(UTC)) is not None


def passkeys_of(flow: Flow, person: uuid.UUID) -> list[Any]:
    with flow.engine.connect() as conn:
        return list(conn.execute(sa.select(webauthn_credentials).where(webauthn_credentials.c.person_id == person)
                                 .order_by(webauthn_credentials.c.created_at)))


def cast(flow: Flow) -> tuple[str, str, uuid.UUID, uuid.UUID]:
    """(the badge office's token, port security's token, a person with no role yet, the port authority)."""
    client_id = _console(flow)
    office = _token(flow, client_id, _officer(flow, "badge_office"))
    security = _token(flow, client_id, _officer(flow, "port_security_admin"))
    authority = add_org(flow.engine, OrgKind.PORT_AUTHORITY).organisation_id
    assert authority is not None
    return office, security, flow.person(given="Els", family="Maes"), authority


@contextlib.contextmanager
def paused_verification(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """finish_registration held inside the WebAuthn verification: after it read its clock, before its
    transaction. ``inside`` is set there; it goes on once ``go`` is set (at the latest on leaving)."""
    inside, go = threading.Event(), threading.Event()
    real = passkeys.verify_registration

    def held(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        inside.set()
        assert go.wait(30), "never released"
        return out

    monkeypatch.setattr(passkeys, "verify_registration", held)
    try:
        yield inside, go
    finally:
        go.set()


def _audit(flow: Flow, kind: str) -> list[dict[str, Any]]:
    with flow.engine.connect() as conn:
        return [dict(d) for d in conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == kind)
                                              .order_by(audit_log.c.id)).scalars()]


# ---- a privileged role granted after the enrolment ---------------------------------------------------


def test_a_badge_office_passkey_is_suspended_when_port_security_promotes_its_person(flow: Flow) -> None:
    """The reviewer's case: no race at all. The badge office's code is used first, then port security
    makes the person port security: the passkey no longer logs in, its session is over, and the answer
    and the trail say so. Port security's new code enrols the officer again."""
    office, security, person, authority = cast(flow)
    device, done = register(flow, code=issue(flow, office, person))
    session = done.cookies["qg_session"]
    assert login(flow, device).status_code == 200

    granted = grant(flow, security, person, authority, "port_security_admin")
    assert granted.status_code == 201, granted.text
    assert granted.json()["passkeys_suspended"] == 1

    # The person is sent to port security, who alone issues his codes now: not to the badge office.
    refused = _problem(login(flow, device), 401, "passkey_suspended_privileged_role")
    assert "port security" in refused["detail"] and "badge office" not in refused["detail"]
    assert not live(flow, session)
    [row] = passkeys_of(flow, person)
    assert (row.status, row.status_reason, row.privileged_enrolment) == ("suspended", "privileged_role_granted", False)
    assert row.enrolled_via == f"code:{_console_client(flow)}"
    [data] = _audit(flow, "identity.admin.membership.added")
    assert data["passkeys_suspended"] == 1 and data["sessions_ended"] == 2  # the enrolment's and the login's
    assert data["role"] == "port_security_admin"

    again, _ = register(flow, code=issue(flow, security, person))
    assert login(flow, again).status_code == 200
    _problem(login(flow, device), 401, "passkey_suspended_privileged_role")


def test_a_suspended_passkey_names_whom_to_turn_to() -> None:
    """Suspended at a promotion, a passkey is replaced with port security's code; suspended for any
    other reason (a counter regression), the badge office's."""
    assert suspended_code("privileged_role_granted") == "passkey_suspended_privileged_role"
    assert suspended_code("counter_regression") == suspended_code(None) == "passkey_suspended"


def test_an_issuer_says_which_roles_it_is_refused(engine: sa.Engine) -> None:
    """``refused_roles`` has no default: an issuer that leaves it out is stopped, rather than issuing
    a code that counts as port security's (``privileged_issuer``), for anyone, an officer too."""
    person = uuid.uuid4()
    at = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(persons.insert().values(id=person, given_name="Els", family_name="Maes", created_at=at))
    with pytest.raises(TypeError, match="refused_roles"):
        enrolment.issue_code(engine, person, created_by="forgetful", now=at)  # type: ignore[call-arg]
    for refused in (enrolment.NO_ROLE_REFUSED, c.PRIVILEGED_ROLES):
        enrolment.issue_code(engine, person, created_by="explicit", now=at, refused_roles=refused)
    with engine.connect() as conn:
        made = conn.execute(sa.select(enrolment_codes.c.created_by, enrolment_codes.c.privileged_issuer)
                            .where(enrolment_codes.c.person_id == person)).all()
    assert sorted((r.created_by, bool(r.privileged_issuer)) for r in made) == [("explicit", False),
                                                                               ("explicit", True)]


def _console_client(flow: Flow) -> str:
    """The console client the codes came through (created_by of a console issue)."""
    with flow.engine.connect() as conn:
        return str(conn.execute(sa.select(enrolment_codes.c.created_by).limit(1)).scalar_one())


@pytest.mark.parametrize("role", sorted(c.PRIVILEGED_ROLES))
def test_every_privileged_role_suspends_them(flow: Flow, role: str) -> None:
    office, security, person, _ = cast(flow)
    org = add_org(flow.engine, OrgKind.PORT_AUTHORITY if role in c.CONSOLE_ADMIN_ROLES
                  else OrgKind.TRANSPORT_OPERATOR).organisation_id
    assert org is not None
    device, _ = register(flow, code=issue(flow, office, person))
    granted = grant(flow, security, person, org, role)
    assert granted.status_code == 201, granted.text
    assert granted.json()["passkeys_suspended"] == 1
    _problem(login(flow, device), 401, "passkey_suspended_privileged_role")


def test_a_driver_role_suspends_nothing(flow: Flow) -> None:
    office, security, person, _ = cast(flow)
    haulier = add_org(flow.engine, OrgKind.TRANSPORT_OPERATOR).organisation_id
    assert haulier is not None
    device, done = register(flow, code=issue(flow, office, person))
    granted = grant(flow, office, person, haulier, "driver")
    assert granted.status_code == 201, granted.text
    assert granted.json()["passkeys_suspended"] == 0
    assert login(flow, device).status_code == 200
    assert live(flow, done.cookies["qg_session"])


def test_port_securitys_passkey_stays_and_so_do_its_sessions(flow: Flow) -> None:
    """A code port security issued could have been issued for an officer: its passkey stays, and so do
    the person's sessions (none of them can come from a passkey the badge office enrolled)."""
    _, security, person, authority = cast(flow)
    device, done = register(flow, code=issue(flow, security, person))
    granted = grant(flow, security, person, authority, "port_security_admin")
    assert granted.status_code == 201, granted.text
    assert granted.json()["passkeys_suspended"] == 0
    assert login(flow, device).status_code == 200
    assert live(flow, done.cookies["qg_session"])
    [row] = passkeys_of(flow, person)
    assert (row.status, row.privileged_enrolment) == ("active", True)
    [data] = _audit(flow, "identity.admin.membership.added")
    assert (data["passkeys_suspended"], data["sessions_ended"], data["grants_revoked"]) == (0, 0, 0)


def test_an_admin_clients_code_counts_as_port_securitys(flow: Flow) -> None:
    """An admin client is refused no role when it issues a code (identity.api.admin
    ``enrolment_code_refused_roles``: it may issue one for an officer), so a promotion does not suspend
    a passkey enrolled with its code."""
    assert enrolment_code_refused_roles(AdminCaller("an admin client")) == frozenset()
    assert enrolment_code_refused_roles(AdminCaller("c", person_id="p", roles=frozenset({"badge_office"}))) \
        == c.PRIVILEGED_ROLES
    _, security, person, authority = cast(flow)
    org = add_org(flow.engine, OrgKind.PORT_AUTHORITY).organisation_id
    client_id, secret = create_client(flow.engine, name="badge system", role="admin", organisation_id=org,
                                      now=datetime.now(UTC))
    assert secret is not None
    flow.http.cookies.clear()
    token = flow.http.post("/oauth2/token", data={"grant_type": "client_credentials", "scope": "admin"},
                           headers=basic(client_id, secret))
    assert token.status_code == 200, token.text
    device, _ = register(flow, code=issue(flow, token.json()["access_token"], person))
    granted = grant(flow, security, person, authority, "port_security_admin")
    assert granted.json()["passkeys_suspended"] == 0, granted.text
    assert login(flow, device).status_code == 200
    [row] = passkeys_of(flow, person)
    assert (row.enrolled_via, row.privileged_enrolment) == (f"code:{client_id}", True)


def test_a_passkey_added_from_the_badge_office_passkeys_session_goes_with_it(flow: Flow) -> None:
    """The detour around the rule: log in with the badge office's passkey and add another from the
    account page before the promotion. The second rests on the first, so it is suspended too."""
    office, security, person, authority = cast(flow)
    first, done = register(flow, code=issue(flow, office, person))
    second, _ = register(flow, cookie=done.cookies["qg_session"])
    assert login(flow, second).status_code == 200
    granted = grant(flow, security, person, authority, "port_security_admin")
    assert granted.json()["passkeys_suspended"] == 2, granted.text
    _problem(login(flow, first), 401, "passkey_suspended_privileged_role")
    _problem(login(flow, second), 401, "passkey_suspended_privileged_role")
    assert [(r.enrolled_via, r.privileged_enrolment) for r in passkeys_of(flow, person)][1] == ("account", False)


def test_a_passkey_added_from_port_securitys_passkeys_session_stays(flow: Flow) -> None:
    _, security, person, authority = cast(flow)
    _, done = register(flow, code=issue(flow, security, person))
    second, _ = register(flow, cookie=done.cookies["qg_session"])
    granted = grant(flow, security, person, authority, "port_security_admin")
    assert granted.json()["passkeys_suspended"] == 0, granted.text
    assert login(flow, second).status_code == 200
    assert [(r.enrolled_via, r.privileged_enrolment) for r in passkeys_of(flow, person)][1] == ("account", True)


def test_a_session_of_a_removed_badge_office_passkey_ends_at_the_promotion(flow: Flow) -> None:
    """Removing a passkey keeps the remover's session when the session does not say it opened it (one
    opened before migration 0022; since, such a session ends with it, review 122): a badge officer who
    logged in with his passkey and removed it keeps a session, which the promotion must end though it
    suspends no passkey; nor does a passkey added from that session count as port security's."""
    office, security, person, authority = cast(flow)
    badge_device, done = register(flow, code=issue(flow, office, person))
    session = done.cookies["qg_session"]
    flow.http.cookies.clear()
    credential_id = done.json()["credential_id"]
    with flow.engine.begin() as conn:  # as migration 0022 leaves a session opened before it
        conn.execute(login_sessions.update().where(login_sessions.c.person_id == person).values(credential_id=None))
    gone = flow.http.delete(f"/account/passkeys/{credential_id}",
                            headers={"Origin": ISSUER, "Cookie": f"qg_session={session}"})
    assert gone.status_code == 200, gone.text
    assert live(flow, session)
    granted = grant(flow, security, person, authority, "port_security_admin")
    assert granted.json()["passkeys_suspended"] == 0, granted.text
    assert not live(flow, session)
    [data] = _audit(flow, "identity.admin.membership.added")
    assert data["sessions_ended"] == 1


def test_a_passkey_from_before_provenance_was_kept_is_suspended(flow: Flow) -> None:
    """A credential registered before 0014 says nothing of where it came from: it counts as the badge
    office's (the safe side), and its person gets a new code from port security."""
    _, security, person, authority = cast(flow)
    device, _ = register(flow, code=issue(flow, security, person))
    with flow.engine.begin() as conn:  # as the migration leaves a row written before it
        conn.execute(webauthn_credentials.update().where(webauthn_credentials.c.person_id == person)
                     .values(enrolled_via=None, privileged_enrolment=False))
    granted = grant(flow, security, person, authority, "dispatcher")
    assert granted.json()["passkeys_suspended"] == 1, granted.text
    _problem(login(flow, device), 401, "passkey_suspended_privileged_role")


# ---- a registration from the account page in flight while the promotion commits (PostgreSQL) ----------


def test_a_passkey_added_while_the_promotion_commits_is_refused(pg_flow: Flow,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The badge officer adds a passkey from the session of his badge-office passkey; port security
    promotes the person while the ceremony is being verified. The promotion ends that session, and the
    registration, which reads it again under the person's lock, is refused: before, it was stored as
    an active passkey of the new officer."""
    flow = pg_flow
    office, security, person, authority = cast(flow)
    _, done = register(flow, code=issue(flow, office, person))
    session = done.cookies["qg_session"]
    device, flow_id, created = begin(flow, cookie=session)
    with paused_verification(monkeypatch) as (inside, go):
        thread, answered = in_thread(lambda: finish(flow, flow_id, created, session))
        assert inside.wait(10)
        granted = grant(flow, security, person, authority, "port_security_admin")
        go.set()
        thread.join(20)
    assert granted.json()["passkeys_suspended"] == 1, granted.text
    _problem(answered[0], 401, "login_required")
    assert len(passkeys_of(flow, person)) == 1
    _problem(login(flow, device), 401, "passkey_unknown")


# ---- the migration ---------------------------------------------------------------------------------------


def test_0014_leaves_the_rows_before_it_on_the_safe_side() -> None:
    """Codes and passkeys written before 0014: none ended by the marker, every one counted as from an
    issuer refused the privileged roles, and where a passkey came from unknown."""
    base = need_service("PostgreSQL", PG_URL)
    url = create_database(base, f"qg_migrate_0014_{uuid.uuid4().hex[:8]}")
    try:
        upgrade(url, "0013")
        engine = make_engine(url)
        person, now = uuid.uuid4(), datetime.now(UTC)
        try:
            with engine.begin() as conn:  # the columns of 0013 only
                conn.execute(sa.text(
                    "INSERT INTO persons (id, given_name, family_name, status, created_at)"
                    " VALUES (:p, 'A', 'B', 'active', :now)"), {"p": person, "now": now})
                conn.execute(sa.text(
                    "INSERT INTO enrolment_codes (code_hash, person_id, created_by, created_at, expires_at)"
                    " VALUES (:h, :p, 'x', :now, :now)"), {"h": "h" * 64, "p": person, "now": now})
                conn.execute(sa.text(
                    "INSERT INTO webauthn_credentials (credential_id, person_id, name, public_key, sign_count,"
                    " transports, backup_eligible, backed_up, status, created_at)"
                    " VALUES ('c', :p, 'n', :k, 0, '[]', false, false, 'active', :now)"),
                    {"p": person, "k": b"k", "now": now})
            upgrade(url)
            with engine.connect() as conn:
                code = conn.execute(sa.select(enrolment_codes.c.ended_at, enrolment_codes.c.privileged_issuer)).one()
                cred = conn.execute(sa.select(webauthn_credentials.c.enrolled_via,
                                              webauthn_credentials.c.privileged_enrolment)).one()
                assert conn.execute(sa.select(persons.c.id)).scalar_one() == person
            assert tuple(code) == (None, False)
            assert tuple(cred) == (None, False)
        finally:
            engine.dispose()
    finally:
        drop_database(base, url)


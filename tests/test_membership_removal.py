"""A role given can be taken away (``DELETE /admin/v1/persons/{person_id}/memberships/{organisation_id}/
{role}``, identity.memberships), and then it stops working, seen from the person who lost it and wants
to keep acting: a privileged role at once (the grants whose tokens carry it revoked), the driver role at
his tokens' next refresh (roles are read afresh for every token). A driver still nominated by the
haulier is not removed (409, the rights named, nothing changed). Who may, by the rules of giving a
role. Through the whole app (admin API, provider, release API), on SQLite and PostgreSQL; then a
nomination racing the removal, on PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from identity.web.console import CONSOLE_SCOPE
from quaygate.app import create_app
from quaygate.cache import MemoryCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import audit_log, grants, memberships
from quaygate.settings import Settings
from release_service.domain.parties import OrgKind
from tests.factories import add_driver, add_org
from tests.interleave import HeldBeforeCommit, in_thread, waits_on_a_lock
from tests.test_admin_console import CALLBACK, _auth, _console, _officer, _problem
from tests.test_identity_code_flow_support import CONSOLE_REDIRECT, Flow, Pkce, query
from tests.test_identity_par import _push
from tests.test_identity_support import ISSUER
from tests.test_release_api import Api

PLATE = {"text": "1-ABC-123", "country": "BE"}


class World(Api):
    """The party API (rights, nominations by the haulier's machine client) and the provider's flows."""

    def __init__(self, http: TestClient, engine: sa.Engine, container: Container) -> None:
        super().__init__(http, engine)
        self.flow = Flow(http.app, http, container)  # type: ignore[arg-type]
        self.console = _console(self.flow)
        self.security_officer = _officer(self.flow, "port_security_admin")
        self.security = self.sign_in(self.security_officer)["access_token"]

    def sign_in(self, person: uuid.UUID) -> dict[str, Any]:
        """What console.js does: a passkey login, code + PKCE, the console's scope (with offline_access)."""
        self.flow.login(person)
        pkce = Pkce()
        code = self.flow.code(self.flow.authorize(self.console, pkce=pkce, redirect_uri=CALLBACK, scope=CONSOLE_SCOPE))
        r = self.flow.exchange(self.console, code, pkce.verifier, redirect_uri=CALLBACK)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def company_console(self, org_kind: str = "transport_operator") -> tuple[str, str, uuid.UUID]:
        return self.flow.console(org_kind)

    def company_sign_in(self, client_id: str, secret: str, person: uuid.UUID) -> Any:
        """A company console's code flow (PAR, a confidential client), offline_access asked: the answer."""
        self.flow.login(person)
        pkce = Pkce()
        pushed = _push(self.flow, client_id, secret, pkce, scope="openid releases:read releases:write offline_access")
        assert pushed.status_code == 201, pushed.text
        resp = self.http.get("/oauth2/authorize", follow_redirects=False,
                             params={"client_id": client_id, "request_uri": pushed.json()["request_uri"]})
        if "code" not in query(resp):
            return query(resp)  # refused at the authorization endpoint: its error
        return self.flow.exchange(client_id, query(resp)["code"], pkce.verifier, redirect_uri=CONSOLE_REDIRECT,
                                  secret=secret)

    def refresh(self, client_id: str, token: str, secret: str | None = None) -> Any:
        self.http.cookies.clear()
        data = {"grant_type": "refresh_token", "refresh_token": token}
        if secret is None:
            return self.http.post("/oauth2/token", data={**data, "client_id": client_id})
        return self.http.post("/oauth2/token", data=data, auth=(client_id, secret))

    def remove(self, token: str, person: uuid.UUID, org: uuid.UUID, role: str) -> Any:
        self.http.cookies.clear()
        return self.http.delete(f"/admin/v1/persons/{person}/memberships/{org}/{role}", headers=_auth(token))

    def give(self, token: str, person: uuid.UUID, org: uuid.UUID, role: str) -> Any:
        self.http.cookies.clear()
        return self.http.post(f"/admin/v1/persons/{person}/memberships", headers=_auth(token),
                              json={"organisation_id": str(org), "role": role})

    def roles(self, person: uuid.UUID) -> set[tuple[uuid.UUID, str]]:
        with self.engine.connect() as conn:
            return {(o, r) for o, r in conn.execute(sa.select(memberships.c.organisation_id, memberships.c.role)
                                                   .where(memberships.c.person_id == person))}

    def removals(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(audit_log.c.actor, audit_log.c.subject, audit_log.c.data)
                                     .where(audit_log.c.kind == "identity.admin.membership.removed")
                                     .order_by(audit_log.c.id)))

    def nominate(self, rid: str, driver: uuid.UUID, by: str = "haul") -> Any:
        return self.http.put(f"/api/v1/releases/{rid}/nomination", headers=self.as_(by),
                             json={"driver_person_id": str(driver), "plate": PLATE})

    def right(self, n: int, to: uuid.UUID | None) -> str:
        return str(self.issue(n, release_to_organisation_id=str(to))["release"]["id"])


def _claims(token: str) -> dict[str, Any]:
    """An access token's claims as its holder reads them (its signature is the APIs' to check)."""
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def _serve(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    settings = Settings(var_dir=tmp_path, issuer=ISSUER, background_workers=False,
                        database_url=str(engine.url.render_as_string(hide_password=False)))
    c = Container(settings=settings, engine=engine, cache=MemoryCache(), cipher=DataCipher(settings.data_key_bytes()),
                  clock=SystemClock())
    with TestClient(create_app(settings, container=c)) as http:
        yield World(http, engine, c)


@pytest.fixture
def world(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from _serve(engine, tmp_path)


@pytest.fixture
def pg_world(pg_engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from _serve(pg_engine, tmp_path)


# ---- a privileged role stops at once ---------------------------------------------------------------


def test_a_badge_officer_whose_role_is_removed_is_refused_at_once(world: World) -> None:
    """His console token worked a moment before; after the removal it is refused (401, revoked), its
    refresh token too, and a new login gives a token without the role: the admin console is closed to
    him. His driver app grant, whose tokens never carry an office role, stays."""
    authority = add_org(world.engine, OrgKind.PORT_AUTHORITY).organisation_id
    assert authority is not None
    officer = world.flow.person(given="Bart", family="Claes")
    world.flow.member(officer, authority, "badge_office")
    world.flow.member(officer, authority, "driver")
    before = world.sign_in(officer)
    driver_app = world.flow.driver_app()
    app_tokens = world.flow.driver_tokens(driver_app, officer)
    assert world.http.get("/admin/v1/badges", params={"number": "AP-100230"},
                          headers=_auth(before["access_token"])).status_code == 200

    r = world.remove(world.security, officer, authority, "badge_office")
    assert r.status_code == 200, r.text
    _problem(world.http.get("/admin/v1/badges", params={"number": "AP-100230"},
                            headers=_auth(before["access_token"])), 401, "invalid_token")
    assert r.json() == {"person_id": str(officer), "organisation_id": str(authority), "role": "badge_office",
                        "grants_revoked": 1}
    refused = world.refresh(world.console, before["refresh_token"])
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant"), refused.text
    again = world.sign_in(officer)  # his login session is live: the new token is read without the role
    assert _claims(again["access_token"])["roles"] == ["driver"]
    _problem(world.http.get("/admin/v1/badges", params={"number": "AP-100230"},
                            headers=_auth(again["access_token"])), 403, "insufficient_role")
    assert world.refresh(driver_app, app_tokens["refresh_token"]).status_code == 200  # the narrow cut
    assert world.roles(officer) == {(authority, "driver")}
    [(actor, subject, data)] = world.removals()
    assert (actor, subject) == ({"person_id": str(world.security_officer), "client_id": world.console}, str(officer))
    assert {k: data[k] for k in ("organisation_id", "role", "grants_revoked")} == {
        "organisation_id": str(authority), "role": "badge_office", "grants_revoked": 1}
    with world.engine.connect() as conn:
        reasons = conn.execute(sa.select(grants.c.revoked_reason).where(grants.c.person_id == officer)
                               .order_by(grants.c.created_at)).scalars().all()
    assert reasons.count("privileged_role_removed") == 1 and reasons.count(None) >= 1


def test_a_dispatcher_removed_no_longer_acts_for_his_company(world: World) -> None:
    """The company console's token of a dispatcher reads the haulier's rights; once port security takes
    the role away, that token is refused by the release API at once, its refresh token is refused, and
    a new login gets nothing from that console (he holds no role there any more)."""
    client_id, secret, haulier = world.company_console()
    person = world.flow.person(given="Kees", family="Smit")
    world.flow.member(person, haulier, "dispatcher")
    got = world.company_sign_in(client_id, secret, person)
    assert got.status_code == 200, got.text
    tokens = got.json()
    assert world.http.get("/api/v1/releases", headers=_auth(tokens["access_token"])).status_code == 200

    r = world.remove(world.security, person, haulier, "dispatcher")
    assert r.status_code == 200, r.text
    listed = world.http.get("/api/v1/releases", headers=_auth(tokens["access_token"]))
    assert listed.status_code == 401, listed.text
    assert r.json()["grants_revoked"] == 1
    refused = world.refresh(client_id, tokens["refresh_token"], secret)
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant"), refused.text
    relogin = world.company_sign_in(client_id, secret, person)
    assert relogin["error"] == "access_denied", relogin


# ---- the driver role: gone at the next refresh --------------------------------------------------------


def test_a_driver_role_removed_is_gone_from_his_tokens_at_the_next_refresh(world: World) -> None:
    """The driver role opens nothing in a token, so the removal revokes nothing: his driver app keeps
    working as a person's app, its next token without the role; a company console that served him as
    its driver alone refuses his refresh."""
    haulier = world.p.haul.organisation_id
    assert haulier is not None
    client_id, secret, other = world.company_console()
    person = add_driver(world.engine, world.p.haul2.organisation_id)  # employed elsewhere
    world.flow.member(person, haulier, "driver")
    world.flow.member(person, other, "driver")
    app = world.flow.driver_app()
    app_tokens = world.flow.driver_tokens(app, person)
    assert _claims(app_tokens["access_token"])["roles"] == ["driver"]
    company = world.company_sign_in(client_id, secret, person).json()

    office = world.sign_in(_officer(world.flow, "badge_office"))["access_token"]
    for org in (haulier, other):
        r = world.remove(office, person, org, "driver")  # the badge office registers drivers, and unlinks them
        assert (r.status_code, r.json()["grants_revoked"]) == (200, 0), r.text
    renewed = world.refresh(app, app_tokens["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    assert _claims(renewed.json()["access_token"])["roles"] == []
    refused = world.refresh(client_id, company["refresh_token"], secret)
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant"), refused.text
    # And his old haulier no longer names him (he is not its employee, and holds no badge for it).
    _problem(world.nominate(world.right(1, haulier), person), 422, "unknown_person")


# ---- a driver still nominated stays until the haulier nominates another ------------------------------


def test_a_driver_with_live_nominations_is_not_removed_until_renominated(world: World) -> None:
    haulier = world.p.haul.organisation_id
    assert haulier is not None
    person = add_driver(world.engine, world.p.haul2.organisation_id)  # the membership is his one link
    world.flow.member(person, haulier, "driver")
    first, second = world.right(1, haulier), world.right(2, haulier)
    elsewhere = world.right(3, world.p.haul2.organisation_id)  # haul2, his employer, nominates him too
    for rid, by in ((first, "haul"), (second, "haul"), (elsewhere, "haul2")):
        assert world.nominate(rid, person, by).status_code == 200

    refused = _problem(world.remove(world.security, person, haulier, "driver"), 409, "driver_has_live_nominations")
    assert refused["release_ids"] == sorted([first, second])
    assert world.roles(person) == {(haulier, "driver")} and world.removals() == []
    # The haulier names another driver on both: then the membership goes, and haul2's right is its own.
    for rid in (first, second):
        assert world.nominate(rid, world.p.driver).status_code == 200
    r = world.remove(world.security, person, haulier, "driver")
    assert r.status_code == 200, r.text
    assert world.roles(person) == set()
    assert world.http.get(f"/api/v1/releases/{elsewhere}", headers=world.as_("haul2")).json()["nomination"][
        "driver_person_id"] == str(person)


# ---- who may ---------------------------------------------------------------------------------------


def test_who_may_remove_a_role_and_what_a_refusal_leaves(world: World) -> None:
    authority = add_org(world.engine, OrgKind.PORT_AUTHORITY).organisation_id
    haulier = world.p.haul.organisation_id
    assert authority is not None and haulier is not None
    office_officer = _officer(world.flow, "badge_office")
    office = world.sign_in(office_officer)["access_token"]
    colleague = world.flow.person(given="Els", family="Maes")
    for org, role in ((authority, "badge_office"), (haulier, "dispatcher"), (haulier, "org_admin"),
                      (haulier, "driver")):
        world.flow.member(colleague, org, role)
    held = world.roles(colleague)
    # The badge office takes away no privileged role (port security's to give, and to take).
    for org, role in ((authority, "badge_office"), (haulier, "dispatcher"), (haulier, "org_admin")):
        _problem(world.remove(office, colleague, org, role), 403, "insufficient_role")
    # Nobody takes away his own roles, not even port security.
    [(own_org, _)] = world.roles(world.security_officer)
    _problem(world.remove(world.security, world.security_officer, own_org, "port_security_admin"), 403,
             "own_membership")
    _problem(world.remove(office, office_officer, next(iter(world.roles(office_officer)))[0], "badge_office"),
             403, "insufficient_role")
    _problem(world.remove(world.security, colleague, haulier, "pilot"), 422, "invalid_role")
    _problem(world.remove(world.security, uuid.uuid4(), haulier, "driver"), 404, "not_found")
    _problem(world.remove(world.security, colleague, world.p.haul2.organisation_id, "driver"), 404,  # type: ignore[arg-type]
             "membership_not_found")
    assert world.http.delete(f"/admin/v1/persons/{colleague}/memberships/{haulier}/driver").status_code == 401
    _problem(world.http.delete(f"/admin/v1/persons/{colleague}/memberships/{haulier}/driver",
                               headers=world.as_("haul")), 403, "insufficient_scope")
    assert world.roles(colleague) == held and world.removals() == []
    # Port security takes away each; given again, the role works as before.
    for org, role in sorted(held, key=lambda k: k[1]):
        r = world.remove(world.security, colleague, org, role)
        assert r.status_code == 200, r.text
    assert world.roles(colleague) == set()
    assert world.give(world.security, colleague, haulier, "dispatcher").status_code == 201


# ---- a nomination in flight, on PostgreSQL ----------------------------------------------------------


def test_a_nomination_in_flight_makes_the_removal_wait_and_refuse(pg_world: World) -> None:
    """The haulier nominates its driver, linked by his membership alone, while port security removes
    that membership. The nomination share-locks the membership row it relied on (Directory.drives_for),
    and the removal deletes the row before it reads his nominations: it waits for the nomination's
    commit, then finds it and refuses. Reading first (or no lock) removed the membership under a
    nomination that went on to commit."""
    w = pg_world
    haulier = w.p.haul.organisation_id
    assert haulier is not None
    person = add_driver(w.engine, w.p.haul2.organisation_id)
    w.flow.member(person, haulier, "driver")
    rid = w.right(1, haulier)
    with HeldBeforeCommit(w.engine, "UPDATE releases") as nominating:
        nomination, nominated = in_thread(lambda: w.nominate(rid, person))
        assert nominating.held.wait(10)
        removal, removed = in_thread(lambda: w.remove(w.security, person, haulier, "driver"))
        waited = waits_on_a_lock(w.engine, removal)
        nominating.go.set()
        nomination.join(20)
        removal.join(20)
    assert nominated[0].status_code == 200, nominated[0].text
    assert _problem(removed[0], 409, "driver_has_live_nominations")["release_ids"] == [rid]
    assert waited
    assert w.roles(person) == {(haulier, "driver")}



def test_a_deactivated_organisations_console_roles_count_nowhere(world: World) -> None:
    """Review 108 (medium): a console role held in an organisation port security deactivated (a terminal's
    security desk under investigation) kept working: old tokens, refreshes and new sign-ins carried it,
    though the API refused to give a role there. Deactivating revokes the grants whose tokens carry such a
    role, and no token carries one again while the organisation is inactive."""
    from quaygate.schema import enrolment_codes

    w = world
    terminal = add_org(w.engine, OrgKind.TERMINAL).organisation_id
    x = w.flow.person(given="Rogue", family="Desk")
    assert w.give(w.security, x, terminal, "badge_office").status_code == 201
    before = w.sign_in(x)
    w.http.cookies.clear()
    r = w.http.post(f"/admin/v1/organisations/{terminal}:deactivate", headers=_auth(w.security),
                    json={"reason": "terminal desk staff under investigation"})
    assert r.status_code == 200, r.text
    driver = w.flow.person(given="Clean", family="Driver")

    def code_for(token: str) -> Any:
        w.http.cookies.clear()
        return w.http.post(f"/admin/v1/persons/{driver}/enrolment-codes", headers=_auth(token), json={})

    assert code_for(before["access_token"]).status_code == 401  # its grant revoked
    assert w.refresh(w.console, before["refresh_token"]).status_code == 400
    after = w.sign_in(x)
    assert "badge_office" not in _claims(after["access_token"]).get("roles", [])
    assert code_for(after["access_token"]).status_code == 403
    with w.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(enrolment_codes)).scalar_one() == 0

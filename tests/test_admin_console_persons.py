"""Persons in the admin console (issue 4), on SQLite and PostgreSQL: create a person, give a membership,
issue an enrolment code, see the person with the port-ban screening now and the ban alerts; who may do
which, and what the audit trail keeps."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bootstrap import create_client, provider_for
from identity.organisations import set_active
from quaygate.crypto import keyed_hash
from quaygate.schema import enrolment_codes, memberships, persons
from release_service.domain.parties import OrgKind
from tests.ban_register import Register, ban, national_number, snapshot
from tests.factories import add_org, now
from tests.test_admin_console import (
    _auth,
    _console,
    _nominated_driver,
    _officer,
    _problem,
    _token,
    audit_entries,
    console_flow,
)
from tests.test_identity_code_flow_support import Flow
from tests.test_identity_support import ISSUER, basic


@pytest.fixture
def register() -> Register:
    return Register()


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path, register: Register) -> Iterator[Flow]:
    yield from console_flow(engine, tmp_path, register)


def _roles(flow: Flow, person: uuid.UUID) -> set[str]:
    with flow.engine.connect() as conn:
        return set(conn.execute(sa.select(memberships.c.role).where(memberships.c.person_id == person)).scalars())


def test_the_badge_office_registers_a_person_and_gives_a_membership(flow: Flow) -> None:
    client_id = _console(flow)
    officer = _officer(flow, "badge_office")
    office = _token(flow, client_id, officer)
    haulier = add_org(flow.engine, OrgKind.TRANSPORT_OPERATOR).organisation_id
    made = flow.http.post("/admin/v1/persons", json={"given_name": "Kees", "family_name": "Smit",
                                                     "employer_organisation_id": str(haulier)}, headers=_auth(office))
    assert made.status_code == 201, made.text
    person = uuid.UUID(made.json()["id"])
    who = {"person_id": str(officer), "client_id": client_id}
    assert [(a, s) for a, s, _ in audit_entries(flow, "identity.admin.person.created")] == [(who, str(person))]
    path = f"/admin/v1/persons/{person}/memberships"
    r = flow.http.post(path, json={"organisation_id": str(haulier), "role": "driver"}, headers=_auth(office))
    assert r.status_code == 201, r.text
    _problem(flow.http.post(path, json={"organisation_id": str(haulier), "role": "driver"}, headers=_auth(office)),
             409, "membership_exists")
    _problem(flow.http.post(path, json={"organisation_id": str(haulier), "role": "pilot"}, headers=_auth(office)),
             422, "invalid_role")
    _problem(flow.http.post(path, json={"organisation_id": str(uuid.uuid4()), "role": "driver"},
                            headers=_auth(office)), 422, "unknown_organisation")
    # Acting for a company is port security's to grant: the badge office registers drivers.
    for role in ("dispatcher", "org_admin"):
        _problem(flow.http.post(path, json={"organisation_id": str(haulier), "role": role}, headers=_auth(office)),
                 403, "insufficient_role")
    assert [(a, d["role"]) for a, _, d in audit_entries(flow, "identity.admin.membership.added")] == [(who, "driver")]
    assert _roles(flow, person) == {"driver"}
    # The person's page: names, the membership, and no badge yet.
    got = flow.http.get(f"/admin/v1/persons/{person}", headers=_auth(office))
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["given_name"], body["family_name"], body["employer_organisation_id"]) == ("Kees", "Smit",
                                                                                           str(haulier))
    assert [(m["organisation_id"], m["role"], m["organisation_active"]) for m in body["memberships"]] == [
        (str(haulier), "driver", True)]
    _problem(flow.http.get(f"/admin/v1/persons/{uuid.uuid4()}", headers=_auth(office)), 404, "not_found")


def test_console_roles_are_given_by_port_security_and_never_to_oneself(flow: Flow) -> None:
    client_id = _console(flow)
    office_officer = _officer(flow, "badge_office")
    office = _token(flow, client_id, office_officer)
    security_officer = _officer(flow, "port_security_admin")
    security = _token(flow, client_id, security_officer)
    authority = add_org(flow.engine, OrgKind.PORT_AUTHORITY).organisation_id
    colleague = flow.person(given="Els", family="Maes")
    for role in ("badge_office", "port_security_admin"):
        body = {"organisation_id": str(authority), "role": role}
        # The badge office does not make officers (nor itself port security) ...
        _problem(flow.http.post(f"/admin/v1/persons/{colleague}/memberships", json=body, headers=_auth(office)),
                 403, "insufficient_role")
        _problem(flow.http.post(f"/admin/v1/persons/{office_officer}/memberships", json=body,
                                headers=_auth(office)), 403, "insufficient_role")
    # ... port security does, for someone else only.
    body = {"organisation_id": str(authority), "role": "badge_office"}
    r = flow.http.post(f"/admin/v1/persons/{colleague}/memberships", json=body, headers=_auth(security))
    assert r.status_code == 201, r.text
    _problem(flow.http.post(f"/admin/v1/persons/{security_officer}/memberships", json=body, headers=_auth(security)),
             403, "own_membership")
    _problem(flow.http.post(f"/admin/v1/persons/{office_officer}/memberships",
                            json={"organisation_id": str(authority), "role": "driver"}, headers=_auth(office)),
             403, "own_membership")
    assert _roles(flow, colleague) == {"badge_office"}
    assert _roles(flow, security_officer) == {"port_security_admin"}
    assert _roles(flow, office_officer) == {"badge_office"}


def test_no_membership_or_person_in_a_deactivated_organisation(flow: Flow) -> None:
    office = _token(flow, _console(flow), _officer(flow, "badge_office"))
    haulier = add_org(flow.engine, OrgKind.TRANSPORT_OPERATOR).organisation_id
    assert haulier is not None
    set_active(flow.engine, provider_for(flow.app).grants, haulier, active=False, actor="admin", reason="struck off",
               now=now(), access_token_ttl=600)
    person = flow.person(given="Kees", family="Smit")
    _problem(flow.http.post(f"/admin/v1/persons/{person}/memberships",
                            json={"organisation_id": str(haulier), "role": "driver"}, headers=_auth(office)),
             409, "organisation_inactive")
    _problem(flow.http.post("/admin/v1/persons", json={"given_name": "A", "family_name": "B",
                                                       "employer_organisation_id": str(haulier)},
                            headers=_auth(office)), 409, "organisation_inactive")
    assert _roles(flow, person) == set()


def test_enrolment_codes_from_the_console(flow: Flow) -> None:
    client_id = _console(flow)
    office_officer = _officer(flow, "badge_office")
    office = _token(flow, client_id, office_officer)
    security = _token(flow, client_id, _officer(flow, "port_security_admin"))
    driver = flow.person(given="Kees", family="Smit")
    colleague = _officer(flow, "port_security_admin")

    def code(token: str, person: uuid.UUID) -> Any:
        return flow.http.post(f"/admin/v1/persons/{person}/enrolment-codes", json={}, headers=_auth(token))

    r = code(office, driver)
    assert r.status_code == 201 and len(r.json()["code"]) >= 12, r.text
    assert r.headers["cache-control"] == "no-store"
    (actor, subject, _), = audit_entries(flow, "identity.admin.enrolment_code.requested")
    assert (actor, subject) == ({"person_id": str(office_officer), "client_id": client_id}, str(driver))
    # A code logs in as its person: an officer's only from port security, and nobody's own.
    _problem(code(office, colleague), 403, "insufficient_role")
    assert code(security, colleague).status_code == 201
    assert code(security, driver).status_code == 201  # port security may do what the badge office does
    _problem(code(office, office_officer), 403, "own_enrolment_code")
    # A person without a console role who signs in to the console client gets an admin-scoped token:
    # it opens nothing, an enrolment code least of all (that would take over any account).
    nobody = flow.person(given="Piet", family="Chauffeur")
    flow.member(nobody, add_org(flow.engine, OrgKind.TRANSPORT_OPERATOR).organisation_id, "driver")
    intruder = _token(flow, client_id, nobody)
    _problem(code(intruder, driver), 403, "insufficient_role")
    _problem(flow.http.post(f"/admin/v1/persons/{driver}/enrolment-codes", json={}), 401, "invalid_request")
    assert len(audit_entries(flow, "identity.enrolment_code.issued")) == 3


def test_the_trail_names_the_officer_who_had_a_code_issued(flow: Flow) -> None:
    """The issued code's audit entry names the officer who asked for it and the console client, as
    every other admin action's entry does (identity.audit ``person_actor``: a suspension, a badge's
    status); an admin client is named alone. The code keeps the client as its issuer."""
    client_id = _console(flow)
    officer = _officer(flow, "badge_office")
    driver = flow.person(given="Kees", family="Smit")
    r = flow.http.post(f"/admin/v1/persons/{driver}/enrolment-codes", json={},
                       headers=_auth(_token(flow, client_id, officer)))
    assert r.status_code == 201, r.text
    (actor, subject, data), = audit_entries(flow, "identity.enrolment_code.issued")
    assert (actor, subject) == ({"person_id": str(officer), "client_id": client_id}, str(driver))
    assert data == {"expires_at": r.json()["expires_at"]}
    (asked, _, _), = audit_entries(flow, "identity.admin.enrolment_code.requested")
    assert asked == actor
    admin_id, secret = create_client(flow.engine, name="badge system", role="admin", now=now(),
                                     organisation_id=add_org(flow.engine, OrgKind.PORT_AUTHORITY).organisation_id)
    assert secret is not None
    flow.http.cookies.clear()
    token = flow.http.post("/oauth2/token", data={"grant_type": "client_credentials", "scope": "admin"},
                           headers=basic(admin_id, secret))
    assert token.status_code == 200, token.text
    r = flow.http.post(f"/admin/v1/persons/{driver}/enrolment-codes", json={},
                       headers=_auth(token.json()["access_token"]))
    assert r.status_code == 201, r.text
    assert [a for a, _, _ in audit_entries(flow, "identity.enrolment_code.issued")] == [
        actor, {"client_id": admin_id}]
    with flow.engine.connect() as conn:
        assert sorted(conn.execute(sa.select(enrolment_codes.c.created_by)).scalars()) == sorted([client_id, admin_id])


def test_a_code_issued_before_a_role_does_not_log_in_its_holder(flow: Flow) -> None:
    """A badge officer issues a code for someone with no console or company role yet; port security then
    makes that person port security, or a company's dispatcher. The earlier code is ended: else the
    badge officer would log in as the new officer, or act for the company. And once such a role is held,
    only port security issues the person's codes."""
    client_id = _console(flow)
    office = _token(flow, client_id, _officer(flow, "badge_office"))
    security = _token(flow, client_id, _officer(flow, "port_security_admin"))
    authority = add_org(flow.engine, OrgKind.PORT_AUTHORITY).organisation_id
    haulier = add_org(flow.engine, OrgKind.TRANSPORT_OPERATOR).organisation_id
    for org, role in ((authority, "port_security_admin"), (haulier, "dispatcher")):
        person = flow.person(given="Els", family="Maes")
        r = flow.http.post(f"/admin/v1/persons/{person}/enrolment-codes", json={}, headers=_auth(office))
        assert r.status_code == 201, r.text
        code = r.json()["code"]
        granted = flow.http.post(f"/admin/v1/persons/{person}/memberships", headers=_auth(security),
                                 json={"organisation_id": str(org), "role": role})
        assert granted.status_code == 201, granted.text
        used = flow.http.post("/webauthn/registration/options", json={"enrolment_code": code},
                              headers={"Origin": ISSUER})
        _problem(used, 400, "enrolment_code_expired")
        _problem(flow.http.post(f"/admin/v1/persons/{person}/enrolment-codes", json={}, headers=_auth(office)),
                 403, "insufficient_role")
        assert flow.http.post(f"/admin/v1/persons/{person}/enrolment-codes", json={},
                              headers=_auth(security)).status_code == 201
    [*_, (_, _, data)] = audit_entries(flow, "identity.admin.membership.added")
    assert data["enrolment_codes_ended"] == 1


def test_the_person_page_shows_the_screening_and_the_ban_alerts(flow: Flow, register: Register) -> None:
    number = national_number(31)
    driver, release_id = _nominated_driver(flow, number)
    client_id = _console(flow)
    officer = _officer(flow, "port_security_admin")
    token = _token(flow, client_id, officer)

    def screening() -> dict[str, Any]:
        r = flow.http.get(f"/admin/v1/persons/{driver}", headers=_auth(token))
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    before = screening()
    assert before["screening"] == {"register_configured": True, "status": "unavailable", "list_age_seconds": None,
                                   "ban_references": []}
    assert before["national_id_linked"] is True and before["ban_alerts"] == []
    t = datetime.now(UTC)
    assert flow.http.post("/admin/v1/bans/feeds", headers=_auth(token),
                          content=register.sign(snapshot(1, t - timedelta(minutes=5), []))).status_code == 200
    clear = screening()["screening"]
    assert clear["status"] == "clear" and clear["list_age_seconds"] >= 299
    banned_feed = snapshot(2, t, [ban(number, "R-31", start=t - timedelta(days=1))])
    loaded = flow.http.post("/admin/v1/bans/feeds", headers=_auth(token), content=register.sign(banned_feed))
    assert loaded.status_code == 200, loaded.text
    after = screening()
    assert (after["screening"]["status"], after["screening"]["ban_references"]) == ("banned", ["R-31"])
    assert [(a["release_id"], a["ban_reference"]) for a in after["ban_alerts"]] == [(str(release_id), "R-31")]
    assert number not in str(after)
    # Another person: clear, and none of the driver's alerts.
    other = flow.person(given="Els", family="Maes")
    # No national number linked yet: the register cannot find her, so the page says unavailable, not
    # clear (badge issue is refused alike, person_unidentified).
    unlinked = flow.http.get(f"/admin/v1/persons/{other}", headers=_auth(token)).json()
    assert (unlinked["national_id_linked"], unlinked["screening"]["status"]) == (False, "unavailable")
    with flow.engine.begin() as conn:
        conn.execute(sa.update(persons).where(persons.c.id == other).values(
            national_id_hash=keyed_hash(flow.container.settings.pepper_bytes(), national_number(32))))
    got = flow.http.get(f"/admin/v1/persons/{other}", headers=_auth(token)).json()
    assert (got["screening"]["status"], got["ban_alerts"]) == ("clear", [])
    views = audit_entries(flow, "identity.admin.person.viewed")
    assert len(views) == 5 and views[0].actor == {"person_id": str(officer), "client_id": client_id}
    assert all(v.data == {} for v in views)  # who looked at whom, never what was shown

"""A role given until a date (``valid_until``, migration 0019; identity.memberships): granted through the
admin API, it counts until then and nowhere after, read at the time of use (tokens, nominations, the
badge office's code refusals) before any sweep; the sweep (``expire_due``) then applies a removal's
consequences, once. Port security always keeps an officer whose role does not expire, also when two
removals race (PostgreSQL).

"Time passes" by moving a membership's ``valid_until`` into the past in the table: the API refuses a
past one, and the tokens' own expiry is checked on the wall clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bootstrap import provider_for
from identity.memberships import expire_due
from quaygate.schema import audit_log, memberships, organisations, webhook_deliveries, webhook_subscriptions
from release_service.domain.parties import OrgKind
from tests.factories import add_driver, add_org
from tests.interleave import HeldBeforeCommit, in_thread, waits_on_a_lock
from tests.test_admin_console import _auth, _officer, _problem
from tests.test_membership_removal import World, _claims, _serve


@pytest.fixture
def world(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from _serve(engine, tmp_path)


@pytest.fixture
def pg_world(pg_engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from _serve(pg_engine, tmp_path)


def _give(w: World, token: str, person: uuid.UUID, org: uuid.UUID, role: str, until: Any = None) -> Any:
    w.http.cookies.clear()
    body: dict[str, Any] = {"organisation_id": str(org), "role": role}
    if until is not None:
        body["valid_until"] = until if isinstance(until, str) else until.isoformat()
    return w.http.post(f"/admin/v1/persons/{person}/memberships", headers=_auth(token), json=body)


def _lapse(w: World, person: uuid.UUID, org: uuid.UUID, role: str) -> None:
    """The membership's end passes (a second ago)."""
    with w.engine.begin() as conn:
        conn.execute(memberships.update().where(
            memberships.c.person_id == person, memberships.c.organisation_id == org, memberships.c.role == role,
        ).values(valid_until=datetime.now(UTC) - timedelta(seconds=1)))


def _sweep(w: World) -> int:
    return expire_due(w.engine, grants=provider_for(w.http.app).grants, now=datetime.now(UTC))


def _entries(w: World, kind: str) -> list[Any]:
    with w.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.actor, audit_log.c.subject, audit_log.c.data)
                                 .where(audit_log.c.kind == kind).order_by(audit_log.c.id)))


def _hour() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


# ---- read at the time of use ------------------------------------------------------------------------


def test_a_dated_role_is_in_tokens_until_its_end_and_in_none_after(world: World) -> None:
    """Given until a time, the badge office role opens the console, shown with its end; no access token
    carries it beyond that end; once passed, the next token (a refresh, a new login) is read without
    it, before any sweep, and the console refuses him."""
    authority = add_org(world.engine, OrgKind.PORT_AUTHORITY).organisation_id
    assert authority is not None
    officer = world.flow.person(given="Bart", family="Claes")
    world.flow.member(officer, authority, "driver")
    soon = datetime.now(UTC) + timedelta(seconds=120)
    r = _give(world, world.security, officer, authority, "badge_office", soon)
    assert (r.status_code, r.json()["valid_until"]) == (201, soon.isoformat()), r.text
    shown = world.http.get(f"/admin/v1/persons/{officer}", headers=_auth(world.security)).json()["memberships"]
    assert {(m["role"], m["valid_until"], m["expired"]) for m in shown} == {
        ("badge_office", soon.isoformat(), False), ("driver", None, False)}
    tokens = world.sign_in(officer)
    claims = _claims(tokens["access_token"])
    assert claims["roles"] == ["badge_office", "driver"]
    assert claims["exp"] <= soon.timestamp() + 1 and tokens["expires_in"] <= 120  # not the 600 s default
    assert world.http.get("/admin/v1/badges", params={"number": "AP-100230"},
                          headers=_auth(tokens["access_token"])).status_code == 200

    _lapse(world, officer, authority, "badge_office")
    renewed = world.refresh(world.console, tokens["refresh_token"])
    assert renewed.status_code == 200, renewed.text
    assert _claims(renewed.json()["access_token"])["roles"] == ["driver"]
    _problem(world.http.get("/admin/v1/badges", params={"number": "AP-100230"},
                            headers=_auth(renewed.json()["access_token"])), 403, "insufficient_role")
    assert _claims(world.sign_in(officer)["access_token"])["roles"] == ["driver"]
    shown = world.http.get(f"/admin/v1/persons/{officer}", headers=_auth(world.security)).json()["memberships"]
    assert [m["expired"] for m in shown if m["role"] == "badge_office"] == [True]  # not swept yet


def test_a_driver_whose_membership_ended_cannot_be_nominated(world: World) -> None:
    haulier = world.p.haul.organisation_id
    assert haulier is not None
    person = add_driver(world.engine, world.p.haul2.organisation_id)  # the membership is his one link
    assert _give(world, world.security, person, haulier, "driver", _hour()).status_code == 201
    assert world.nominate(world.right(1, haulier), person).status_code == 200
    _lapse(world, person, haulier, "driver")
    _problem(world.nominate(world.right(2, haulier), person), 422, "unknown_person")


def test_a_privileged_role_ended_no_longer_keeps_the_badge_office_from_his_codes(world: World) -> None:
    """The badge office issues no enrolment code for a company's dispatcher (port security does); once
    his dispatcher role has ended it counts no more there either, as if removed."""
    haulier = world.p.haul.organisation_id
    assert haulier is not None
    person = world.flow.person(given="Kees", family="Smit")
    assert _give(world, world.security, person, haulier, "dispatcher", _hour()).status_code == 201
    office = world.sign_in(_officer(world.flow, "badge_office"))["access_token"]
    codes = f"/admin/v1/persons/{person}/enrolment-codes"
    _problem(world.http.post(codes, json={}, headers=_auth(office)), 403, "insufficient_role")
    _lapse(world, person, haulier, "dispatcher")
    assert world.http.post(codes, json={}, headers=_auth(office)).status_code == 201


# ---- granting, and granting again ------------------------------------------------------------------


def test_valid_until_is_checked_and_a_grant_again_changes_it(world: World) -> None:
    haulier = world.p.haul.organisation_id
    assert haulier is not None
    person = world.flow.person()
    past = datetime.now(UTC) - timedelta(minutes=1)
    _problem(_give(world, world.security, person, haulier, "driver", past), 422, "valid_until_not_future")
    _problem(_give(world, world.security, person, haulier, "driver", "2999-01-01T00:00:00"), 422,
             "invalid_valid_until")  # no offset: whose midnight?
    office = world.sign_in(_officer(world.flow, "badge_office"))["access_token"]
    _problem(_give(world, office, person, haulier, "dispatcher", _hour()), 403, "insufficient_role")
    assert world.roles(person) == set()

    first, later = _hour(), _hour() + timedelta(days=30)
    assert _give(world, office, person, haulier, "driver", first).status_code == 201
    _problem(_give(world, office, person, haulier, "driver", first), 409, "membership_exists")
    for until in (later, first, None):  # extended, shortened, made unending
        r = _give(world, office, person, haulier, "driver", until)
        assert (r.status_code, r.json()["valid_until"]) == (200, until and until.isoformat()), r.text
    _problem(_give(world, office, person, haulier, "driver"), 409, "membership_exists")
    changed = [d for _, _, d in _entries(world, "identity.admin.membership.changed")]
    assert [(d["was_valid_until"], d["valid_until"]) for d in changed] == [
        (first.isoformat(), later.isoformat()), (later.isoformat(), first.isoformat()), (first.isoformat(), None)]
    # One past its end (not swept yet) is given anew.
    assert _give(world, office, person, haulier, "driver", first).status_code == 200
    _lapse(world, person, haulier, "driver")
    assert _give(world, office, person, haulier, "driver", later).status_code == 201


# ---- the sweep ---------------------------------------------------------------------------------------


def test_the_sweep_stops_a_privileged_role_at_once_and_once(world: World) -> None:
    """His console token, issued while the role held, is revoked by the sweep as by a removal; the row
    goes, one ``identity.membership.expired`` entry says so, and a second sweep finds nothing."""
    authority = add_org(world.engine, OrgKind.PORT_AUTHORITY).organisation_id
    assert authority is not None
    officer = world.flow.person(given="Bart", family="Claes")
    assert _give(world, world.security, officer, authority, "badge_office", _hour()).status_code == 201
    token = world.sign_in(officer)["access_token"]
    _lapse(world, officer, authority, "badge_office")
    assert world.http.get("/admin/v1/badges", params={"number": "AP-100230"},
                          headers=_auth(token)).status_code == 200  # the token was made before the end

    assert _sweep(world) == 1
    _problem(world.http.get("/admin/v1/badges", params={"number": "AP-100230"}, headers=_auth(token)), 401,
             "invalid_token")
    assert world.roles(officer) == set()
    [(actor, subject, data)] = _entries(world, "identity.membership.expired")
    assert (actor, subject) == ({"client_id": "system:membership-expiry"}, str(officer))
    assert {k: data[k] for k in ("organisation_id", "role", "grants_revoked", "live_nominations")} == {
        "organisation_id": str(authority), "role": "badge_office", "grants_revoked": 1, "live_nominations": []}
    assert _sweep(world) == 0 and len(_entries(world, "identity.membership.expired")) == 1


def test_a_driver_expired_while_nominated_is_named_to_the_haulier(world: World) -> None:
    """An expiry cannot refuse: the membership goes, his nominations stay (the haulier chose him), and
    the haulier is told on each, by webhook, to nominate again; the trail names the rights."""
    haulier = world.p.haul.organisation_id
    assert haulier is not None
    person = add_driver(world.engine, world.p.haul2.organisation_id)
    subscription = uuid.uuid4()
    with world.engine.begin() as conn:
        conn.execute(webhook_subscriptions.insert().values(
            id=subscription, organisation_id=haulier, url="https://haulier.example/hooks", secret_enc="x",
            event_types=["release.nomination.*"], active=True, created_at=datetime.now(UTC)))
    assert _give(world, world.security, person, haulier, "driver", _hour()).status_code == 201
    rid = world.right(1, haulier)
    assert world.nominate(rid, person).status_code == 200
    _lapse(world, person, haulier, "driver")

    assert _sweep(world) == 1
    assert world.roles(person) == set()
    nomination = world.http.get(f"/api/v1/releases/{rid}", headers=world.as_("haul")).json()["nomination"]
    assert nomination["driver_person_id"] == str(person)
    with world.engine.connect() as conn:
        told = conn.execute(sa.select(webhook_deliveries.c.payload).where(
            webhook_deliveries.c.event_type == "release.nomination.screening_alert",
            webhook_deliveries.c.subscription_id == subscription)).scalars().all()
    assert [(p["release_id"], p["data"]["reason"], p["data"]["driver_person_id"]) for p in told] == [
        (rid, "driver_membership_expired", str(person))]
    [(_, _, data)] = _entries(world, "identity.membership.expired")
    assert data["live_nominations"] == [rid]


# ---- port security keeps an officer ------------------------------------------------------------------


def test_the_last_standing_port_security_officer_stays(world: World) -> None:
    """A standing officer holds the role without an end. The last one is neither removed nor given an
    end; a second one lets either happen to the first."""
    security = world.security_officer
    [(own_org, _)] = world.roles(security)
    second = world.flow.person(given="Lies", family="Jacobs")
    assert _give(world, world.security, second, own_org, "port_security_admin").status_code == 201
    other = world.sign_in(second)["access_token"]
    r = _give(world, other, security, own_org, "port_security_admin", _hour())  # allowed: second stands
    assert r.status_code == 200, r.text
    # Now ``second`` is the last standing officer: the dated one may not remove him, nor date him.
    _problem(world.remove(world.security, second, own_org, "port_security_admin"), 409, "last_port_security_officer")
    _problem(_give(world, world.security, second, own_org, "port_security_admin",
                   _hour() - timedelta(minutes=5)), 409, "last_port_security_officer")  # within his own end
    assert (second, own_org) in {(p, o) for p, o, _ in _officers(world)}


def _officers(w: World) -> list[Any]:
    with w.engine.connect() as conn:
        return list(conn.execute(sa.select(memberships.c.person_id, memberships.c.organisation_id,
                                           memberships.c.valid_until)
                                 .where(memberships.c.role == "port_security_admin")))


def _two_standing(w: World) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, str]:
    """Four officers of port security's organisation: a (the world's) and d dated, b and c the last two
    standing ones. The organisation, b, c, and d's access token."""
    a = w.security_officer
    [(org, _)] = w.roles(a)
    b, c, d = (w.flow.person(given=n, family="Jacobs") for n in ("Lies", "Tom", "Ann"))
    for officer in (b, c, d):
        w.flow.member(officer, org, "port_security_admin")
    as_d = w.sign_in(d)["access_token"]
    with w.engine.begin() as conn:
        conn.execute(memberships.update().where(memberships.c.person_id.in_([a, d])).values(valid_until=_hour()))
    return org, b, c, as_d


def test_two_removals_of_the_last_two_officers_leave_one(pg_world: World) -> None:
    """Two dated officers remove the last two standing ones, b and c, at once. The first removal is
    held just before its commit; the second waits on its lock, then reads b gone and refuses. A plain
    read let both commit, and port security had no standing officer left."""
    w = pg_world
    org, b, c, as_d = _two_standing(w)
    with HeldBeforeCommit(w.engine, "DELETE FROM memberships") as first:
        one, done_one = in_thread(lambda: w.remove(w.security, b, org, "port_security_admin"))
        assert first.held.wait(10)
        two, done_two = in_thread(lambda: w.remove(as_d, c, org, "port_security_admin"))
        waited = waits_on_a_lock(w.engine, two, seconds=3)
        first.go.set()
        one.join(20)
        two.join(20)
    assert done_one[0].status_code == 200, done_one[0].text
    _problem(done_two[0], 409, "last_port_security_officer")
    assert waited
    assert {(p, until) for p, _, until in _officers(w) if until is None} == {(c, None)}


def _suspend(w: World, token: str, person: uuid.UUID) -> Any:
    w.http.cookies.clear()
    return w.http.post(f"/admin/v1/persons/{person}:suspend", headers=_auth(token),
                       json={"reason": "suspected of selling PINs"})


def test_the_last_standing_officer_is_not_suspended_through_the_api(world: World) -> None:
    """Review 104: a dated officer suspended the last standing one, then his own role ran out, and port
    security had no officer. The suspension is refused as a removal is; with a second standing officer
    it goes through."""
    security = world.security_officer
    [(own_org, _)] = world.roles(security)
    second = world.flow.person(given="Lies", family="Jacobs")
    assert _give(world, world.security, second, own_org, "port_security_admin").status_code == 201
    other = world.sign_in(second)["access_token"]
    assert _give(world, other, security, own_org, "port_security_admin", _hour()).status_code == 200
    _problem(_suspend(world, world.security, second), 409, "last_port_security_officer")
    assert _officers(world) and "identity.admin.person.suspended" not in {k for k in _kinds(world)}
    third = world.flow.person(given="Ann", family="Jacobs")
    assert _give(world, other, third, own_org, "port_security_admin").status_code == 201
    r = _suspend(world, world.security, second)
    assert r.status_code == 200 and r.json()["status"] == "suspended", r.text


def test_an_officer_the_console_does_not_honour_is_no_other_standing_officer(world: World) -> None:
    """Review 163 (finding 3): the last-officer guard counted every unending port_security_admin, at a
    terminal or at a deactivated port authority too, though the console honours neither (review 144).
    A and B stand at the port authority, T at a terminal: B dated A, and A then removed B, the port
    authority's last standing officer (200). Now only the memberships the console honours count: A
    neither removes, dates nor suspends B; an officer's role at a terminal is removed as before."""
    w = world
    a = w.security_officer
    [(org, _)] = w.roles(a)
    terminal = w.p.terminal.organisation_id
    assert terminal is not None
    b, t, x = (w.flow.person(given=n, family="Jacobs") for n in ("Lies", "Tom", "Ann"))
    assert _give(w, w.security, b, org, "port_security_admin").status_code == 201
    w.flow.member(t, terminal, "port_security_admin")
    as_b = w.sign_in(b)["access_token"]
    assert _give(w, as_b, a, org, "port_security_admin", _hour()).status_code == 200  # B still stands
    gone = add_org(w.engine, OrgKind.PORT_AUTHORITY).organisation_id  # another, deactivated, with its officer
    w.flow.member(x, gone, "port_security_admin")
    with w.engine.begin() as conn:
        conn.execute(organisations.update().where(organisations.c.id == gone).values(active=False))

    _problem(w.remove(w.security, b, org, "port_security_admin"), 409, "last_port_security_officer")
    _problem(_give(w, w.security, b, org, "port_security_admin", _hour() - timedelta(minutes=5)), 409,
             "last_port_security_officer")
    _problem(_suspend(w, w.security, b), 409, "last_port_security_officer")
    assert (b, org, None) in set(_officers(w))
    assert w.remove(w.security, t, terminal, "port_security_admin").status_code == 200  # takes no officer away
    assert w.remove(w.security, x, gone, "port_security_admin").status_code == 200


def _kinds(w: World) -> list[str]:
    with w.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.kind)).scalars())


def test_a_removal_racing_a_suspension_of_the_last_two_standing_officers_leaves_one(pg_world: World) -> None:
    """b and c stand; a and d are dated. d suspends c while a removes b: whichever commits first, the
    other waits on its lock, reads its outcome (a suspended person is no standing officer) and refuses."""
    w = pg_world
    org, b, c, as_d = _two_standing(w)
    with HeldBeforeCommit(w.engine, "UPDATE persons") as first:
        one, done_one = in_thread(lambda: _suspend(w, as_d, c))
        assert first.held.wait(10)
        two, done_two = in_thread(lambda: w.remove(w.security, b, org, "port_security_admin"))
        waited = waits_on_a_lock(w.engine, two, seconds=3)
        first.go.set()
        one.join(20)
        two.join(20)
    assert done_one[0].status_code == 200, done_one[0].text
    _problem(done_two[0], 409, "last_port_security_officer")
    assert waited
    with w.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM persons WHERE id = :b"), {"b": b}).scalar() == "active"
    assert (b, None) in {(p, until) for p, _, until in _officers(w)}


# ---- a dated officer's end bounds what he gives (review 105) ------------------------------------------


def _dated_officer(w: World, end: datetime) -> tuple[uuid.UUID, uuid.UUID, str]:
    """A port-security officer until ``end``, given by the world's standing one: the organisation, the
    person and his console access token."""
    [(org, _)] = w.roles(w.security_officer)
    d = w.flow.person(given="Temp", family="Contractor")
    assert _give(w, w.security, d, org, "port_security_admin", end).status_code == 201
    return org, d, w.sign_in(d)["access_token"]


def test_a_dated_officer_gives_privileged_roles_until_his_own_end_at_most_and_registers_no_client(
        world: World) -> None:
    """Review 105 (medium): an officer whose role ends could give a stand-in an unending officer role, or
    register a machine client whose secret he keeps, and both outlived him. Now a privileged role he gives
    ends when his does at the latest, and a client is another officer's to register; roles that grant
    nothing privileged (a driver) are his to give as before."""
    from quaygate.schema import oauth_clients

    w = world
    end = _hour()
    org, d, as_d = _dated_officer(w, end)
    w.http.cookies.clear()
    made = w.http.post("/admin/v1/persons", headers=_auth(as_d), json={"given_name": "Jan", "family_name": "Puppet"})
    assert made.status_code == 201, made.text
    puppet = uuid.UUID(made.json()["id"])
    for until in (None, end + timedelta(minutes=1)):
        _problem(_give(w, as_d, puppet, org, "port_security_admin", until), 403, "beyond_own_end")
    assert (org, "port_security_admin") not in w.roles(puppet)
    assert _give(w, as_d, puppet, org, "port_security_admin", end).status_code == 201  # within his own end
    assert _give(w, as_d, puppet, org, "driver").status_code == 201  # nothing privileged: unending as before
    customs = add_org(w.engine, OrgKind.CUSTOMS).organisation_id
    doc = {"client_name": "customs sidecar", "quaygate_role": "customs", "organisation_id": str(customs),
           "token_endpoint_auth_method": "client_secret_basic", "grant_types": ["client_credentials"]}
    with w.engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(oauth_clients)).scalar_one()
    w.http.cookies.clear()
    _problem(w.http.post("/admin/v1/clients", headers=_auth(as_d), json=doc), 403, "dated_officer")
    with w.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(oauth_clients)).scalar_one() == before
    w.http.cookies.clear()
    made_client = w.http.post("/admin/v1/clients", headers=_auth(w.security), json=doc)  # a standing one
    assert made_client.status_code == 201
    # Nor does he rotate its secret: the new one would be his to keep, past his end.
    w.http.cookies.clear()
    _problem(w.http.post(f"/admin/v1/clients/{made_client.json()['client_id']}/secret", headers=_auth(as_d)),
             403, "dated_officer")


def test_a_dated_officer_issues_no_enrolment_code_for_a_privileged_person(world: World) -> None:
    """The code logs its holder in as the person: a dated officer who got one for a standing officer would
    be him after his own end. He issues codes for persons without a privileged role as before; a standing
    officer issues the code he was refused."""
    from quaygate.schema import enrolment_codes

    w = world
    org, d, as_d = _dated_officer(w, _hour())
    driver = w.flow.person(given="Piet", family="Driver")

    def code_for(person: uuid.UUID, token: str) -> Any:
        w.http.cookies.clear()
        return w.http.post(f"/admin/v1/persons/{person}/enrolment-codes", headers=_auth(token), json={})

    with w.engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(enrolment_codes)).scalar_one()
    _problem(code_for(w.security_officer, as_d), 403, "dated_officer")
    with w.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(enrolment_codes)).scalar_one() == before
    assert code_for(driver, as_d).status_code == 201
    other = w.flow.person(given="Second", family="Officer")
    assert _give(w, w.security, other, org, "port_security_admin").status_code == 201
    assert code_for(other, w.security).status_code == 201  # a standing officer may


def test_an_officer_whose_role_just_ended_is_no_standing_officer(world: World) -> None:
    """Review 107 (high): once his role had ended (and before the sweep, while his token still passed the
    verifier's leeway, or after his end was shortened), no membership in force gave it, which the new
    checks read as "standing": he could give an unending officer role and register a client again. A
    token that calls him an officer whose role is in force nowhere gives and makes nothing lasting."""
    w = world
    org, d, as_d = _dated_officer(w, _hour())
    puppet = w.flow.person(given="Jan", family="Puppet")
    _lapse(w, d, org, "port_security_admin")  # ended a second ago; not swept; his token not yet expired
    _problem(_give(w, as_d, puppet, org, "port_security_admin"), 403, "beyond_own_end")
    customs = add_org(w.engine, OrgKind.CUSTOMS).organisation_id
    w.http.cookies.clear()
    _problem(w.http.post("/admin/v1/clients", headers=_auth(as_d), json={
        "client_name": "sidecar", "quaygate_role": "customs", "organisation_id": str(customs),
        "token_endpoint_auth_method": "client_secret_basic", "grant_types": ["client_credentials"]}),
        403, "dated_officer")
    w.http.cookies.clear()
    _problem(w.http.post(f"/admin/v1/persons/{w.security_officer}/enrolment-codes", headers=_auth(as_d), json={}),
             403, "dated_officer")
    assert (org, "port_security_admin") not in w.roles(puppet)


def test_an_officer_role_at_a_terminal_leaves_a_dated_port_authority_officer_dated(world: World) -> None:
    """Review 163 (finding 2): D holds port security at the port authority until a date, and also without
    an end at a terminal (a leftover the console strips: port security counts only at the port authority,
    review 144). The unending terminal role made him a standing officer to the dated-officer checks: he
    gave a stand-in an unending officer role (201) and registered a customs client (201). Only the
    memberships the console honours give his end."""
    from quaygate.schema import oauth_clients

    w = world
    terminal = w.p.terminal.organisation_id
    assert terminal is not None
    end = _hour()
    org, d, as_d = _dated_officer(w, end)
    w.flow.member(d, terminal, "port_security_admin")  # unending, where the console does not honour it
    puppet = w.flow.person(given="Jan", family="Puppet")
    _problem(_give(w, as_d, puppet, org, "port_security_admin"), 403, "beyond_own_end")
    assert (org, "port_security_admin") not in w.roles(puppet)
    assert _give(w, as_d, puppet, org, "port_security_admin", end).status_code == 201  # within his own end
    customs = add_org(w.engine, OrgKind.CUSTOMS).organisation_id
    with w.engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(oauth_clients)).scalar_one()
    w.http.cookies.clear()
    _problem(w.http.post("/admin/v1/clients", headers=_auth(as_d), json={
        "client_name": "customs sidecar", "quaygate_role": "customs", "organisation_id": str(customs),
        "token_endpoint_auth_method": "client_secret_basic", "grant_types": ["client_credentials"]}),
        403, "dated_officer")
    with w.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(oauth_clients)).scalar_one() == before
    w.http.cookies.clear()
    _problem(w.http.post(f"/admin/v1/persons/{w.security_officer}/enrolment-codes", headers=_auth(as_d), json={}),
             403, "dated_officer")

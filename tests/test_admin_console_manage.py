"""The admin console's other screens over the admin API (issue 4), on SQLite and PostgreSQL: issuing,
renewing and activating badges by role, organisations and clients for port security, person search
by name, audit trail search, and the trail of who viewed and searched what."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bootstrap import create_client
from identity.domain.badges import Scheme, with_check
from quaygate.crypto import keyed_hash
from quaygate.schema import badges, oauth_clients, organisations, persons
from release_service.domain.parties import OrgKind
from tests.ban_register import Register, ban, national_number, snapshot
from tests.factories import TERMINAL, add_org, port
from tests.test_admin_console import _auth, _badge, _console, _officer, _problem, _token, audit_entries, console_flow
from tests.test_admin_console_session import _Later
from tests.test_identity_code_flow_support import Flow
from tests.test_identity_support import basic


@pytest.fixture
def register() -> Register:
    return Register()


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path, register: Register) -> Iterator[Flow]:
    yield from console_flow(engine, tmp_path, register)


def _count(flow: Flow, table: sa.Table) -> int:
    with flow.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _issue_body(person: uuid.UUID, serial: int, **over: Any) -> dict[str, Any]:
    t = datetime.now(UTC)
    return {"person_id": str(person), "scheme": "alfapass", "number": with_check(Scheme.ALFAPASS, serial),
            "valid_from": t.isoformat(), "valid_until": (t + timedelta(days=365)).isoformat(), **over}


def _linked(flow: Flow, person: uuid.UUID, serial: int) -> uuid.UUID:
    """The person's national number linked: with a register configured, an unlinked person cannot be
    screened and gets no badge (person_unidentified, identity.domain.bans.screen)."""
    with flow.engine.begin() as conn:
        conn.execute(sa.update(persons).where(persons.c.id == person).values(
            national_id_hash=keyed_hash(flow.container.settings.pepper_bytes(), national_number(serial))))
    return person


# ---- badges: issue and renew are the badge office's, activation the security desk's -------------------


def test_issue_is_the_badge_offices_and_fails_closed_without_a_list(flow: Flow) -> None:
    holder = _linked(flow, _badge(flow)[0], 20)
    client_id = _console(flow)
    office = _token(flow, client_id, _officer(flow, "badge_office"))
    security = _token(flow, client_id, _officer(flow, "port_security_admin"))
    _problem(flow.http.post("/admin/v1/badges", json=_issue_body(holder, 4242), headers=_auth(security)),
             403, "insufficient_role")
    # A register is configured (the flow's settings) but no list is in force yet: fail closed.
    _problem(flow.http.post("/admin/v1/badges", json=_issue_body(holder, 4242), headers=_auth(office)),
             503, "screening_unavailable")
    assert len(audit_entries(flow, "identity.badge.issue_refused")) == 1  # the refusal is on the trail ...
    items = flow.http.get("/admin/v1/badges", params={"person_id": str(holder)}, headers=_auth(office)).json()["items"]
    assert len(items) == 1  # ... and no badge


def test_issue_is_screened_against_the_list_in_force(flow: Flow, register: Register) -> None:
    holder = _linked(flow, _badge(flow)[0], 20)
    banned = flow.person(given="Piet", family="Verboden")
    number = national_number(21)
    with flow.engine.begin() as conn:
        conn.execute(sa.update(persons).where(persons.c.id == banned).values(
            national_id_hash=keyed_hash(flow.container.settings.pepper_bytes(), number)))
    client_id = _console(flow)
    office = _token(flow, client_id, _officer(flow, "badge_office"))
    t = datetime.now(UTC)
    loaded = flow.http.post("/admin/v1/bans/feeds", headers=_auth(office),
                            content=register.sign(snapshot(1, t, [ban(number, "R-21", start=t - timedelta(days=1))])))
    assert loaded.status_code == 200, loaded.text
    issued = flow.http.post("/admin/v1/badges", json=_issue_body(holder, 4243), headers=_auth(office))
    assert issued.status_code == 201, issued.text
    got = issued.json()
    assert (got["screening"], got["status"], got["masked"]) == ("clear", "active", False)
    assert got["screening_list_age_seconds"] is not None
    _problem(flow.http.post("/admin/v1/badges", json=_issue_body(banned, 4244), headers=_auth(office)),
             409, "person_banned")
    # A fresh record with no national number (a banned person entered again): refused until linked.
    fresh = flow.person(given="Piet", family="Opnieuw")
    _problem(flow.http.post("/admin/v1/badges", json=_issue_body(fresh, 4245), headers=_auth(office)),
             422, "person_unidentified")
    assert flow.http.get("/admin/v1/badges", params={"person_id": str(banned)},
                         headers=_auth(office)).json()["items"] == []


def test_renew_is_the_badge_office_and_activation_the_security_desk(flow: Flow, register: Register) -> None:
    t = datetime.now(UTC)
    holder, badge_id = _badge(flow)
    _linked(flow, holder, 20)
    port(flow.engine)  # the terminal BEANR-K1700
    client_id = _console(flow)
    office = _token(flow, client_id, _officer(flow, "badge_office"))
    security = _token(flow, client_id, _officer(flow, "port_security_admin"))
    assert flow.http.post("/admin/v1/bans/feeds", headers=_auth(security),
                          content=register.sign(snapshot(1, t, []))).status_code == 200
    renew = {"valid_until": (t + timedelta(days=700)).isoformat(), "reason": "renewal"}
    _problem(flow.http.post(f"/admin/v1/badges/{badge_id}/renew", json=renew, headers=_auth(security)),
             403, "insufficient_role")
    r = flow.http.post(f"/admin/v1/badges/{badge_id}/renew", json=renew, headers=_auth(office))
    assert r.status_code == 200 and r.json()["valid_until"].startswith(str((t + timedelta(days=700)).date())), r.text
    r = flow.http.post(f"/admin/v1/badges/{badge_id}/activations", json={"terminal": TERMINAL},
                       headers=_auth(security))
    assert r.status_code == 201, r.text
    _problem(flow.http.post(f"/admin/v1/badges/{badge_id}/activations", json={"terminal": TERMINAL},
                            headers=_auth(security)), 409, "already_activated")
    got = flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(security)).json()
    assert [a["terminal"] for a in got["activations"]] == [TERMINAL]
    _problem(flow.http.post(f"/admin/v1/badges/{badge_id}/activations/{TERMINAL}:withdraw", json={"reason": " "},
                            headers=_auth(security)), 422, "reason_required")
    r = flow.http.post(f"/admin/v1/badges/{badge_id}/activations/{TERMINAL}:withdraw",
                       json={"reason": "left the company"}, headers=_auth(security))
    assert r.status_code == 200 and r.json()["active"] is False, r.text
    assert flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(security)).json()["activations"] == []
    (actor, _, _), = audit_entries(flow, "identity.badge.activation_withdrawn")
    assert actor["client_id"] == client_id and actor["person_id"]


def test_an_officer_does_not_issue_reactivate_renew_or_activate_his_own_badge(flow: Flow, register: Register) -> None:
    """What opens the gates to an officer is another officer's act, as his own suspension, roles and
    enrolment code are (identity.api.admin): 403 own_badge, nothing changed; another's badge, as ever."""
    t = datetime.now(UTC)
    port(flow.engine)  # the terminal BEANR-K1700
    client_id = _console(flow)
    officer = _officer(flow, "badge_office", "port_security_admin")
    token = _auth(_token(flow, client_id, officer))
    assert flow.http.post("/admin/v1/bans/feeds", headers=token,
                          content=register.sign(snapshot(1, t, []))).status_code == 200
    own = uuid.uuid4()
    with flow.engine.begin() as conn:
        conn.execute(badges.insert().values(
            id=own, person_id=officer, scheme="alfapass", number=with_check(Scheme.ALFAPASS, 4250), status="inactive",
            valid_from=t - timedelta(days=1), valid_until=t + timedelta(days=30), created_at=t))
    holder, other = _badge(flow)
    with flow.engine.begin() as conn:  # both screenable: their national numbers linked
        for person, serial in ((holder, 22), (officer, 23)):
            conn.execute(sa.update(persons).where(persons.c.id == person).values(
                national_id_hash=keyed_hash(flow.container.settings.pepper_bytes(), national_number(serial))))
    renew = {"valid_until": (t + timedelta(days=700)).isoformat(), "reason": "renewal"}

    def act(holder_id: uuid.UUID, badge_id: uuid.UUID, serial: int) -> list[Any]:
        return [flow.http.post("/admin/v1/badges", json=_issue_body(holder_id, serial), headers=token),
                flow.http.post(f"/admin/v1/badges/{badge_id}/status", json={"status": "active", "reason": "back"},
                               headers=token),
                flow.http.post(f"/admin/v1/badges/{badge_id}/renew", json=renew, headers=token),
                flow.http.post(f"/admin/v1/badges/{badge_id}/activations", json={"terminal": TERMINAL},
                               headers=token)]

    for r in act(officer, own, 4251):
        _problem(r, 403, "own_badge")
    assert flow.http.post(f"/admin/v1/badges/{other}/status", json={"status": "inactive", "reason": "check"},
                          headers=token).status_code == 200
    assert [r.status_code for r in act(holder, other, 4252)] == [201, 200, 200, 201]
    with flow.engine.connect() as conn:
        assert conn.execute(sa.select(badges.c.id, badges.c.status, badges.c.valid_until)
                            .where(badges.c.person_id == officer)).one() == (own, "inactive", t + timedelta(days=30))
    got = flow.http.get(f"/admin/v1/badges/{own}", headers=token).json()
    assert (got["activations"], len(got["history"])) == ([], 0)
    # Making his own badge less is not refused: it opens nothing.
    assert flow.http.post(f"/admin/v1/badges/{own}/status", json={"status": "expired", "reason": "left"},
                          headers=token).status_code == 200


# ---- organisations and clients: port security -------------------------------------------------------


def test_port_security_manages_organisations(flow: Flow) -> None:
    client_id = _console(flow)
    officer = _officer(flow, "port_security_admin")
    token = _token(flow, client_id, officer)
    office = _token(flow, client_id, _officer(flow, "badge_office"))
    body = {"name": "Haulage Van Dam", "kind": "transport_operator", "eori": "BE0123456789"}
    _problem(flow.http.post("/admin/v1/organisations", json=body, headers=_auth(office)), 403, "insufficient_role")
    _problem(flow.http.get("/admin/v1/organisations", headers=_auth(office)), 403, "insufficient_role")
    made = flow.http.post("/admin/v1/organisations", json=body, headers=_auth(token))
    assert made.status_code == 201, made.text
    orgs = _count(flow, organisations)
    _problem(flow.http.post("/admin/v1/organisations", json={**body, "name": "Twin"}, headers=_auth(token)),
             409, "organisation_exists")
    _problem(flow.http.post("/admin/v1/organisations", json={**body, "eori": None}, headers=_auth(token)),
             422, "identifier_required")
    _problem(flow.http.post("/admin/v1/organisations", json={**body, "kind": "pirate", "eori": "BE1"},
                            headers=_auth(token)), 422, "invalid_kind")
    _problem(flow.http.post("/admin/v1/organisations", json={**body, "kind": "terminal", "eori": "BE2"},
                            headers=_auth(token)), 422, "terminal_code")
    # Review 123, finding 1: a terminal's code starts with its port's (port-limited bans are screened by it).
    terminal = {**body, "name": "Kaai 1700", "kind": "terminal", "eori": "BE2"}
    for code in ("K1700", "PSA-K1700", "MPET", "BEANRK1700", "BE-ANR-K1700", "beanr-k1700", "BEANR-"):
        refused = _problem(flow.http.post("/admin/v1/organisations", json={**terminal, "terminal_code": code},
                                          headers=_auth(token)), 422, "invalid_terminal_code")
        assert "BEANR-K1700" in refused["detail"], refused
    assert _count(flow, organisations) == orgs  # nothing half-written
    kaai = flow.http.post("/admin/v1/organisations", json={**terminal, "terminal_code": "BEANR-K1700"},
                          headers=_auth(token))
    assert kaai.status_code == 201 and kaai.json()["terminal_code"] == "BEANR-K1700", kaai.text
    found = flow.http.get("/admin/v1/organisations", params={"q": "van dam"}, headers=_auth(token)).json()["items"]
    assert [o["id"] for o in found] == [made.json()["id"]]
    # LIKE wildcards in the query are literal: "%" finds nothing rather than everything.
    assert flow.http.get("/admin/v1/organisations", params={"q": "%"}, headers=_auth(token)).json()["items"] == []
    officer_actor = {"person_id": str(officer), "client_id": client_id}
    assert [(actor, subject) for actor, subject, _ in audit_entries(flow, "identity.admin.organisation.created")] \
        == [(officer_actor, made.json()["id"]), (officer_actor, kaai.json()["id"])]


def test_port_security_registers_and_deactivates_clients(flow: Flow) -> None:
    client_id = _console(flow)
    token = _token(flow, client_id, _officer(flow, "port_security_admin"))
    office = _token(flow, client_id, _officer(flow, "badge_office"))
    org = flow.http.post("/admin/v1/organisations", headers=_auth(token),
                         json={"name": "Line NV", "kind": "shipping_line", "eori": "BE0999999999"}).json()["id"]
    doc = {"client_name": "Line back end", "quaygate_role": "shipping_line", "organisation_id": org,
           "token_endpoint_auth_method": "client_secret_basic", "grant_types": ["client_credentials"]}
    _problem(flow.http.post("/admin/v1/clients", json=doc, headers=_auth(office)), 403, "insufficient_role")
    made = flow.http.post("/admin/v1/clients", json=doc, headers=_auth(token))
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store" and made.json()["client_secret"]
    new_id = made.json()["client_id"]
    # The new client works, until port security deactivates it.
    assert flow.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                          auth=(new_id, made.json()["client_secret"])).status_code == 200
    listed = flow.http.get("/admin/v1/clients", headers=_auth(token)).json()["items"]
    assert {c["client_id"]: c["active"] for c in listed}[new_id] is True
    assert made.json()["client_secret"] not in str(listed) and all("client_secret" not in c for c in listed)
    # A leaked secret: port security rotates it (the badge office may not), the old one is refused.
    path = f"/admin/v1/clients/{new_id}/secret"
    _problem(flow.http.post(path, headers=_auth(office)), 403, "insufficient_role")
    flow.container.clock = _Later(60)  # the admin API's: so the cutoff below is surely still ahead
    rotated = flow.http.post(path, headers=_auth(token), json={"revoke_tokens": True})
    assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store", rotated.text
    assert flow.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                          auth=(new_id, made.json()["client_secret"])).status_code == 401
    # Its tokens are refused a few seconds past the rotation (revoke_tokens): none is issued until then.
    wait = flow.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                          auth=(new_id, rotated.json()["client_secret"]))
    assert wait.status_code == 429 and wait.json()["error"] == "slow_down", wait.text
    assert 60 < int(wait.headers["retry-after"]) <= 66  # to the second after the cutoff
    assert [(subject, data) for _, subject, data in audit_entries(flow, "identity.admin.client.secret_rotated")] \
        == [(new_id, {"tokens_revoked": True, "grants_revoked": 0, "registration_token_renewed": False,
                      "enrolment_codes_ended": 0, "initial_access_tokens_ended": 0})]
    assert flow.http.post(f"/admin/v1/clients/{new_id}:deactivate", headers=_auth(token)).status_code == 200
    assert flow.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                          auth=(new_id, rotated.json()["client_secret"])).status_code != 200
    _problem(flow.http.post(f"/admin/v1/clients/{new_id}:deactivate", headers=_auth(token)), 404, "not_found")


def test_the_console_cannot_make_or_end_admin_clients(flow: Flow) -> None:
    client_id = _console(flow)
    token = _token(flow, client_id, _officer(flow, "port_security_admin"))
    clients = _count(flow, oauth_clients)
    for role in ("admin", "admin_console"):
        for field in ("quaygate_role", "role"):
            doc = {"client_name": "mine", field: role, "token_endpoint_auth_method": "client_secret_basic",
                   "grant_types": ["client_credentials"]}
            _problem(flow.http.post("/admin/v1/clients", json=doc, headers=_auth(token)), 403,
                     "client_role_reserved")
    assert _count(flow, oauth_clients) == clients
    # Nor lock the console out by deactivating it.
    _problem(flow.http.post(f"/admin/v1/clients/{client_id}:deactivate", headers=_auth(token)), 403,
             "client_role_reserved")
    # Nor rotate its secret (an admin console client authenticating with one).
    with flow.engine.connect() as conn:
        held = conn.execute(sa.select(oauth_clients.c.secret_hash)
                            .where(oauth_clients.c.client_id == client_id)).scalar_one()
    _problem(flow.http.post(f"/admin/v1/clients/{client_id}/secret", headers=_auth(token)), 403,
             "client_role_reserved")
    with flow.engine.connect() as conn:
        assert conn.execute(sa.select(oauth_clients.c.active, oauth_clients.c.secret_hash)
                            .where(oauth_clients.c.client_id == client_id)).one() == (True, held)


# ---- search by name, and what the trail keeps of searches and views --------------------------------


def test_persons_are_found_by_name_and_the_search_is_audited_without_the_name(flow: Flow) -> None:
    holder, _ = _badge(flow)  # Jan Peeters, one badge
    flow.person(given="Janine", family="Claes")
    client_id = _console(flow)
    officer = _officer(flow, "badge_office")  # Sofie Wouters
    token = _token(flow, client_id, officer)
    found = flow.http.get("/admin/v1/persons", params={"q": "jan PEE"}, headers=_auth(token))
    assert found.status_code == 200, found.text
    assert [(p["id"], p["badges"]) for p in found.json()["items"]] == [(str(holder), 1)]
    names = {p["family_name"] for p in flow.http.get("/admin/v1/persons", params={"q": "jan"},
                                                     headers=_auth(token)).json()["items"]}
    assert names == {"Peeters", "Claes"}
    assert flow.http.get("/admin/v1/persons", params={"q": "_%"}, headers=_auth(token)).json()["items"] == []
    _problem(flow.http.get("/admin/v1/persons", params={"q": "j"}, headers=_auth(token)), 422, "invalid_request")
    _problem(flow.http.get("/admin/v1/persons", params={"q": "jan"}), 401, "invalid_request")
    searches = audit_entries(flow, "identity.admin.persons.searched")
    assert len(searches) == 3  # the refused ones never ran
    assert searches[0].actor == {"person_id": str(officer), "client_id": client_id}
    fingerprint = keyed_hash(flow.container.settings.pepper_bytes(), "console-search:jan pee")
    assert searches[0].data == {"query": fingerprint}
    assert "jan" not in str(searches).lower() and "peeters" not in str(searches).lower()


def test_badge_views_and_searches_are_audited(flow: Flow) -> None:
    holder, badge_id = _badge(flow)
    client_id = _console(flow)
    officer = _officer(flow, "port_security_admin")
    token = _token(flow, client_id, officer)
    assert flow.http.get("/admin/v1/badges", params={"number": "AP-100230"}, headers=_auth(token)).status_code == 200
    assert flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(token)).status_code == 200
    assert flow.http.get(f"/admin/v1/persons/{holder}/badges", headers=_auth(token)).status_code == 200
    who = {"person_id": str(officer), "client_id": client_id}
    (actor, _, data), = audit_entries(flow, "identity.admin.badges.searched")
    assert actor == who and data["number"] and "100230" not in str(data)
    assert [(e.actor, e.subject) for e in audit_entries(flow, "identity.admin.badge.viewed")] == [(who, str(badge_id))]
    viewed = audit_entries(flow, "identity.admin.person_badges.viewed")
    assert [(e.actor, e.subject) for e in viewed] == [(who, str(holder))]
    # A refused caller leaves no view on the trail and sees nothing.
    driver = flow.driver_tokens(flow.driver_app(), _officer(flow, "driver"))["access_token"]
    _problem(flow.http.get(f"/admin/v1/badges/{badge_id}", headers=_auth(driver)), 403, "insufficient_scope")
    assert len(audit_entries(flow, "identity.admin.badge.viewed")) == 1


def test_audit_trail_search_filters_and_pages(flow: Flow, register: Register) -> None:
    holder, badge_id = _badge(flow)
    _linked(flow, holder, 20)
    client_id = _console(flow)
    officer = _officer(flow, "port_security_admin")
    token = _token(flow, client_id, officer)
    office = _token(flow, client_id, _officer(flow, "badge_office"))
    _problem(flow.http.get("/admin/v1/audit", headers=_auth(office)), 403, "insufficient_role")
    assert flow.http.post("/admin/v1/bans/feeds", headers=_auth(office),  # a list to screen reactivation against
                          content=register.sign(snapshot(1, datetime.now(UTC), []))).status_code == 200
    for status in ("inactive", "active", "inactive"):
        r = flow.http.post(f"/admin/v1/badges/{badge_id}/status", json={"status": status, "reason": "check"},
                           headers=_auth(office))
        assert r.status_code == 200, r.text

    def search(**params: Any) -> dict[str, Any]:
        r = flow.http.get("/admin/v1/audit", params=params, headers=_auth(token))
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    mine = search(subject=str(badge_id), action="identity.badge")
    assert [e["data"]["to"] for e in mine["items"]] == ["inactive", "active", "inactive"]  # newest first
    assert mine["next_before"] is None
    # Paged: two, then one, then the end; no entry twice.
    first = search(subject=str(badge_id), action="identity.badge.status_changed", limit=2)
    second = search(subject=str(badge_id), action="identity.badge.status_changed", limit=2,
                    before=first["next_before"])
    ids = [e["id"] for e in first["items"] + second["items"]]
    assert len(ids) == len(set(ids)) == 3 and second["next_before"] is None
    # By actor: the officer's own searches (the trail records each search, with its filters).
    by_officer = search(actor=str(officer), action="identity.admin.audit.searched")
    assert len(by_officer["items"]) == 4 and by_officer["items"][1]["data"]["subject"] == str(badge_id)
    # "identity.badge" is a prefix of kinds, not of strings: "identity.badg" finds nothing.
    assert search(action="identity.badg")["items"] == []
    later = datetime.now(UTC) + timedelta(hours=1)
    assert search(since=later.isoformat())["items"] == []
    assert len(search(subject=str(badge_id), until=later.isoformat())["items"]) >= 3
    _problem(flow.http.get("/admin/v1/audit", params={"action": "x%"}, headers=_auth(token)), 422, "invalid_action")
    _problem(flow.http.get("/admin/v1/audit", params={"since": later.isoformat(), "until": later.isoformat()},
                           headers=_auth(token)), 422, "invalid_range")
    # A time without its zone is refused (the whole app answers it as a problem, test_openapi checks that).
    assert flow.http.get("/admin/v1/audit", params={"since": "2026-01-01T00:00:00"},
                         headers=_auth(token)).status_code == 422


def test_an_admin_clients_search_of_the_trail_is_on_it(flow: Flow) -> None:
    """An admin client's other reads are its own traffic, but a search of the trail is on the trail
    whoever searched (review of the audit search, finding 6): one identity.admin.audit.searched entry,
    the client as its actor, the filters but not what was found."""
    admin_id, secret = create_client(flow.engine, name="security system", role="admin", now=datetime.now(UTC),
                                     organisation_id=add_org(flow.engine, OrgKind.PORT_AUTHORITY).organisation_id)
    assert secret is not None
    token = flow.http.post("/oauth2/token", data={"grant_type": "client_credentials", "scope": "admin"},
                           headers=basic(admin_id, secret))
    assert token.status_code == 200, token.text
    r = flow.http.get("/admin/v1/audit", params={"action": "identity.badge", "subject": "b-1"},
                      headers=_auth(token.json()["access_token"]))
    assert r.status_code == 200, r.text
    (actor, subject, data), = audit_entries(flow, "identity.admin.audit.searched")
    assert (actor, subject) == ({"client_id": admin_id}, None)
    assert data == {"actor": None, "subject": "b-1", "action": "identity.badge", "since": None, "until": None,
                    "before": None}


def test_an_officers_suspension_names_the_clients_whose_current_secret_he_was_shown(flow: Flow) -> None:
    """A client secret does not expire, and one an officer saw (he registered the client in the console,
    or rotated its secret last) outlives his suspension: the suspension names those clients (still
    active, still with a secret), for port security to rotate again. One rotated since by another officer,
    or deactivated, is not named."""
    client_id = _console(flow)
    rogue, other = _officer(flow, "port_security_admin"), _officer(flow, "port_security_admin")
    mine, theirs = _token(flow, client_id, rogue), _token(flow, client_id, other)
    org = flow.http.post("/admin/v1/organisations", headers=_auth(theirs),
                         json={"name": "Line NV", "kind": "shipping_line", "eori": "BE0999999998"}).json()["id"]
    doc = {"client_name": "Line back end", "quaygate_role": "shipping_line", "organisation_id": org,
           "token_endpoint_auth_method": "client_secret_basic", "grant_types": ["client_credentials"]}

    def registered(token: str) -> str:
        made = flow.http.post("/admin/v1/clients", json=doc, headers=_auth(token))
        assert made.status_code == 201, made.text
        return str(made.json()["client_id"])

    def rotated(token: str, cid: str) -> None:
        assert flow.http.post(f"/admin/v1/clients/{cid}/secret", headers=_auth(token)).status_code == 200

    kept, rotated_since, ended, rotated_again = (registered(mine) for _ in range(4))
    rotated(theirs, rotated_since)
    assert flow.http.post(f"/admin/v1/clients/{ended}:deactivate", headers=_auth(theirs)).status_code == 200
    rotated(mine, rotated_again)
    made_by_other = registered(theirs)
    rotated(mine, made_by_other)
    r = flow.http.post(f"/admin/v1/persons/{rogue}:suspend", json={"reason": "leaked secrets"},
                       headers=_auth(theirs))
    assert r.status_code == 200, r.text
    named = sorted([kept, rotated_again, made_by_other])
    assert r.json()["client_secrets_shown"] == named
    (_, _, data), = audit_entries(flow, "identity.admin.person.suspended")
    assert data["client_secrets_shown"] == named

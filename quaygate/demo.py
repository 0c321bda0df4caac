"""Demo data for the embedded default: a port in miniature, and where its credentials are.

Seeding goes through the same use cases as the API, so the demo rights have real histories, receipts
and audit entries. It runs once per database; the credentials file is written when it does.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from identity.authn.enrolment import NO_ROLE_REFUSED, issue_code
from identity.badges.service import BadgeService, IssueBadge
from identity.bootstrap import create_client
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain.iso6346 import with_check_digit
from release_service.domain.parties import Actor, OrgKind
from release_service.domain.release import LightKind, LightStatus
from release_service.services import issue, lifecycle, nominate, transfers
from release_service.services.gate import gate_in

from .schema import memberships, organisations, persons
from .settings import Settings

TERMINAL = "BEANR-K1700"
DEMO_EORI = "BE0999000001"

ORGS = [
    ("shipping_line", "Oceanic Lines NV", OrgKind.SHIPPING_LINE, DEMO_EORI, None),
    ("release_party", "Schelde Forwarding BV", OrgKind.RELEASE_PARTY, "BE0999000002", None),
    ("transport_operator", "Kempen Transport NV", OrgKind.TRANSPORT_OPERATOR, "BE0999000003", None),
    ("terminal_operator", "Kaai 1700 Container Terminal", OrgKind.TERMINAL, "BE0999000004", TERMINAL),
    ("customs", "Douane Antwerpen", OrgKind.CUSTOMS, "BE0999000005", None),
    ("admin", "Port Security Antwerp-Bruges", OrgKind.PORT_AUTHORITY, "BE0999000006", None),
]
# client role -> organisation key
CLIENTS = {
    "shipping_line": "shipping_line",
    "release_party": "release_party",
    "transport_operator": "transport_operator",
    "terminal_operator": "terminal_operator",
    "terminal_gate": "terminal_operator",
    "customs": "customs",
    "admin": "admin",
}
DISPATCHER = ("Els", "Janssens")
OFFICER = ("Sofie", "Wouters")  # port security and badge office, for the admin console
ENROLMENT_TTL = timedelta(days=30)
DRIVERS = [
    # Badge numbers pass the scheme's check (identity.domain.badges): AP- and six digits, Luhn.
    ("Jan", "Peeters", "alfapass", "AP-100230", "04A1B2C3D4E5F6", "1-ABC-123"),
    ("Fatima", "El Amrani", "alfapass", "AP-100248", "04A1B2C3D4E5F7", "1-XYZ-789"),
]


def seeded(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.select(organisations.c.id).where(organisations.c.eori == DEMO_EORI)).first() is not None


def seed(engine: sa.Engine, settings: Settings, now: datetime) -> dict[str, Any]:
    org_ids: dict[str, uuid.UUID] = {key: uuid.uuid4() for key, *_ in ORGS}
    driver_ids = [uuid.uuid4() for _ in DRIVERS]
    with engine.begin() as conn:
        conn.execute(organisations.insert(), [
            {"id": org_ids[key], "name": name, "kind": kind.value, "eori": eori, "terminal_code": code,
             "created_at": now}
            for key, name, kind, eori, code in ORGS
        ])
        for pid, (given, family, *_badge_and_plate) in zip(driver_ids, DRIVERS, strict=True):
            conn.execute(persons.insert().values(id=pid, given_name=given, family_name=family,
                                                 employer_organisation_id=org_ids["transport_operator"],
                                                 created_at=now))
            conn.execute(memberships.insert().values(person_id=pid, organisation_id=org_ids["transport_operator"],
                                                     role="driver", created_at=now))
        dispatcher_id = uuid.uuid4()
        conn.execute(persons.insert().values(id=dispatcher_id, given_name=DISPATCHER[0], family_name=DISPATCHER[1],
                                             employer_organisation_id=org_ids["transport_operator"], created_at=now))
        conn.execute(memberships.insert().values(person_id=dispatcher_id, organisation_id=org_ids["transport_operator"],
                                                 role="dispatcher", created_at=now))
    # Badges go through the badge register's use case: validated, with their history and audit entries.
    badge_office = BadgeService(engine)
    for pid, (_given, _family, scheme, number, uid, _plate) in zip(driver_ids, DRIVERS, strict=True):
        issued = badge_office.issue(IssueBadge(pid, scheme, number, uid, org_ids["transport_operator"],
                                               now - timedelta(days=30), now + timedelta(days=365 * 3)),
                                    actor="demo", now=now)
        badge_office.activate(issued.badge.id, TERMINAL, actor="demo", now=now)  # the terminal's desk did
    base = settings.issuer.rstrip("/")
    clients = {}
    for role, org_key in CLIENTS.items():
        client_id, secret = create_client(
            engine, name=f"demo {role}", role=role, organisation_id=org_ids[org_key],
            terminal_code=TERMINAL if org_key == "terminal_operator" else None, now=now)
        clients[role] = {"client_id": client_id, "client_secret": secret, "organisation_id": str(org_ids[org_key])}
    # The driver app: a public client (PKCE) served by the service itself at /app/. Its id tokens are
    # ES256 (OIDC Registration §2): cheap to sign, and its page checks them with WebCrypto's ECDSA.
    app_id, _ = create_client(
        engine, name="quaygate driver app", role="driver_app", organisation_id=None, auth_method="none", now=now,
        redirect_uris=[f"{base}/app/callback"], post_logout_redirect_uris=[f"{base}/app/"],
        extra_metadata={"id_token_signed_response_alg": "ES256"})
    clients["driver_app"] = {"client_id": app_id, "client_secret": None, "organisation_id": None,
                             "redirect_uri": f"{base}/app/callback"}
    # Issue 4, the admin console at /console/: a public client (PKCE) like the driver app, and a port
    # security officer who is also the badge office; the admin API wants a passkey login (min_acr). Its
    # sign-out ends the provider session and comes back to /console/ (review 128, finding 1; migration
    # 0023 registers it for consoles seeded before).
    console_id, _ = create_client(
        engine, name="quaygate admin console", role="admin_console", organisation_id=None, auth_method="none",
        now=now, redirect_uris=[f"{base}/console/callback"], post_logout_redirect_uris=[f"{base}/console/"],
        min_acr="urn:quaygate:acr:passkey", extra_metadata={"id_token_signed_response_alg": "ES256"})
    clients["admin_console"] = {"client_id": console_id, "client_secret": None, "organisation_id": None,
                                "redirect_uri": f"{base}/console/callback"}
    officer_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(persons.insert().values(id=officer_id, given_name=OFFICER[0], family_name=OFFICER[1],
                                             employer_organisation_id=org_ids["admin"], created_at=now))
        conn.execute(memberships.insert(), [
            {"person_id": officer_id, "organisation_id": org_ids["admin"], "role": role, "created_at": now}
            for role in ("port_security_admin", "badge_office")])
    # One-time enrolment codes, as port security would hand them out (refused no role: the dispatcher and
    # the officer hold privileged roles, which the badge office may not issue codes for): each person
    # registers a passkey at /enrol with his code, then logs in at /app/ (or /console/) with it.
    enrolment = {str(pid): issue_code(engine, pid, created_by="demo", now=now, ttl=ENROLMENT_TTL,
                                      refused_roles=NO_ROLE_REFUSED)[0]
                 for pid in [*driver_ids, dispatcher_id, officer_id]}
    releases = _seed_rights(engine, org_ids, driver_ids, now)
    return {
        "warning": "DEMO MODE: these credentials and this data are for trying quaygate out, never for production.",
        "base_url": settings.issuer,
        "token_endpoint": settings.issuer.rstrip("/") + "/oauth2/token",
        "terminal": TERMINAL,
        "organisations": {key: str(v) for key, v in org_ids.items()},
        "clients": clients,
        "driver_app": f"{base}/app/",
        "enrolment": f"{base}/enrol",
        "dispatcher": {"person_id": str(dispatcher_id), "name": " ".join(DISPATCHER),
                       "enrolment_code": enrolment[str(dispatcher_id)]},
        "console": f"{base}/console/",
        "port_security": {"person_id": str(officer_id), "name": " ".join(OFFICER),
                          "enrolment_code": enrolment[str(officer_id)]},
        "drivers": [
            {"person_id": str(pid), "name": f"{given} {family}", "enrolment_code": enrolment[str(pid)],
             "badge": {"scheme": scheme, "number": number, "card_uid": uid},
             "plate": {"text": plate, "country": "BE"}}
            for pid, (given, family, scheme, number, uid, plate) in zip(driver_ids, DRIVERS, strict=True)
        ],
        "releases": releases,
    }


def _seed_rights(engine: sa.Engine, org: dict[str, uuid.UUID], drivers: list[uuid.UUID],
                 now: datetime) -> dict[str, str]:
    line = Actor("demo", org["shipping_line"], OrgKind.SHIPPING_LINE)
    fwd = Actor("demo", org["release_party"], OrgKind.RELEASE_PARTY)
    haul = Actor("demo", org["transport_operator"], OrgKind.TRANSPORT_OPERATOR)
    customs = Actor("demo", org["customs"], OrgKind.CUSTOMS)
    term = Actor("demo", org["terminal_operator"], OrgKind.TERMINAL, terminal_code=TERMINAL)
    out: dict[str, str] = {}

    def step(fn: Any) -> Any:
        uow = SqlUnitOfWork(engine)
        with uow:
            result = fn(uow)
            uow.commit()
        return result

    def new_right(n: int) -> uuid.UUID:
        cmd = issue.IssueCommand(with_check_digit(f"OCLU{700000 + n:06d}"), f"OCL-BL-{4400 + n}", "2026-ANR-0457",
                                 TERMINAL, org["release_party"], now - timedelta(hours=1), now + timedelta(days=7))
        right, _ = step(lambda uow: issue.issue(uow, line, cmd, now))
        return right.id

    def to_haulier(rid: uuid.UUID) -> None:
        t, _ = step(lambda uow: transfers.transfer(uow, fwd, rid, org["transport_operator"], now))
        step(lambda uow: transfers.accept(uow, haul, t.id, now))

    def nominate_driver(rid: uuid.UUID, i: int) -> None:
        cmd = nominate.NominateCommand(plate_text=DRIVERS[i][5], plate_country="BE", driver_person_id=drivers[i])
        step(lambda uow: nominate.nominate(uow, haul, rid, cmd, now))

    def lights_green(rid: uuid.UUID) -> None:
        step(lambda uow: lifecycle.set_light(uow, customs, rid, LightKind.CUSTOMS, LightStatus.GREEN, None, now))
        step(lambda uow: lifecycle.set_light(uow, term, rid, LightKind.TERMINAL, LightStatus.GREEN, None, now))

    out["at_forwarder"] = str(new_right(1))
    rid = new_right(2)
    step(lambda uow: transfers.transfer(uow, fwd, rid, org["transport_operator"], now))
    out["transfer_pending"] = str(rid)
    rid = new_right(3)
    to_haulier(rid)
    out["at_haulier"] = str(rid)
    rid = new_right(4)
    to_haulier(rid)
    nominate_driver(rid, 0)
    lights_green(rid)
    out["ready_for_pickup"] = str(rid)
    rid = new_right(5)
    to_haulier(rid)
    nominate_driver(rid, 1)
    out["nominated_customs_hold"] = str(rid)
    rid = new_right(6)
    to_haulier(rid)
    nominate_driver(rid, 1)
    lights_green(rid)
    step(lambda uow: gate_in(uow, term, rid, uuid.uuid4(), now))
    out["gated_in"] = str(rid)
    rid = new_right(7)
    step(lambda uow: lifecycle.block(uow, line, rid, "awaiting freight payment", now))
    out["blocked"] = str(rid)
    rid = new_right(8)
    step(lambda uow: lifecycle.revoke(uow, line, rid, "B/L surrendered to another party", now))
    out["revoked"] = str(rid)
    return out


def write_credentials(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)

"""Test data written through the real schema (no mocks of our storage)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from quaygate.schema import badges, organisations, persons
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain.iso6346 import with_check_digit
from release_service.domain.parties import Actor, OrgKind
from release_service.services import issue

TERMINAL = "BEANR-K1700"


def now() -> datetime:
    return datetime.now(UTC)


def add_org(engine: sa.Engine, kind: OrgKind, name: str | None = None, terminal_code: str | None = None) -> Actor:
    org_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(organisations.insert().values(
            id=org_id, name=name or f"{kind.value} {org_id.hex[:6]}", kind=kind.value,
            eori=f"BE{org_id.int % 10**10:010d}", terminal_code=terminal_code, created_at=now()))
    return Actor(f"client-{org_id.hex[:8]}", org_id, kind, terminal_code=terminal_code)


def add_driver(engine: sa.Engine, employer: uuid.UUID, *, badge_status: str = "active",
               number: str | None = None) -> uuid.UUID:
    pid = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(persons.insert().values(id=pid, given_name="Jan", family_name="Peeters",
                                             employer_organisation_id=employer, created_at=now()))
        conn.execute(badges.insert().values(
            id=uuid.uuid4(), person_id=pid, scheme="alfapass", number=number or f"AP-{pid.int % 10**6:06d}",
            card_uid=pid.hex[:14].upper(), employer_organisation_id=employer, status=badge_status,
            valid_from=now() - timedelta(days=1), valid_until=now() + timedelta(days=365), created_at=now()))
    return pid


@dataclass
class Port:
    line: Actor
    fwd: Actor
    haul: Actor
    haul2: Actor
    customs: Actor
    terminal: Actor
    driver: uuid.UUID


def port(engine: sa.Engine) -> Port:
    haul = add_org(engine, OrgKind.TRANSPORT_OPERATOR)
    return Port(
        line=add_org(engine, OrgKind.SHIPPING_LINE),
        fwd=add_org(engine, OrgKind.RELEASE_PARTY),
        haul=haul,
        haul2=add_org(engine, OrgKind.TRANSPORT_OPERATOR),
        customs=add_org(engine, OrgKind.CUSTOMS),
        terminal=add_org(engine, OrgKind.TERMINAL, terminal_code=TERMINAL),
        driver=add_driver(engine, haul.organisation_id),  # type: ignore[arg-type]
    )


def container(n: int, owner: str = "OCLU") -> str:
    return with_check_digit(f"{owner}{n:06d}")


def issue_cmd(p: Port, n: int = 1, vessel_call: str = "VC-1", to: uuid.UUID | None = None) -> issue.IssueCommand:
    return issue.IssueCommand(container(n), f"BL-{n}", vessel_call, TERMINAL, to or p.fwd.organisation_id,  # type: ignore[arg-type]
                              now() - timedelta(hours=1), now() + timedelta(days=5))


def do(engine: sa.Engine, fn):  # type: ignore[no-untyped-def]
    uow = SqlUnitOfWork(engine)
    with uow:
        result = fn(uow)
        uow.commit()
    return result

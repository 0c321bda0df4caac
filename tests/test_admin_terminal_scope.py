"""A console role held at one terminal gives powers at that terminal only (review 144, finding 1), on
SQLite and PostgreSQL.

A badge works at a terminal only once that terminal's security desk activated it there, and the
terminal may withdraw it (quaygate.schema ``badge_activations``). A console officer who is a member of
a terminal's organisation (its security desk) activates and withdraws badges at that terminal only
(403 ``not_this_terminal`` elsewhere); one of the port authority at every terminal. Port security
(``port_security_admin``: organisations, clients, their secrets, gate policies) counts only when held
in a port_authority organisation. Admin clients (machines of the port authority) keep what they have.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bootstrap import create_client
from quaygate.schema import audit_log, badge_activations, memberships
from tests.ban_register import Register
from tests.test_admin_console import _auth, _badge, _console, _officer, _problem, _token, console_flow
from tests.test_identity_code_flow_support import Flow
from tests.test_identity_support import add_org, basic

A, B = "BEANR-K1700", "BEGNE-T0900"


@pytest.fixture
def register() -> Register:
    return Register()


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path, register: Register) -> Iterator[Flow]:
    yield from console_flow(engine, tmp_path, register)


class Port:
    """Two terminals' organisations, the console, and a badge to activate."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.org = {A: add_org(flow.engine, "terminal", A), B: add_org(flow.engine, "terminal", B)}
        self.console = _console(flow)
        self.holder, self.badge = _badge(flow)

    def desk(self, terminal: str, *roles: str, given: str = "Ilse") -> uuid.UUID:
        """A person holding ``roles`` in ``terminal``'s organisation (its security desk)."""
        pid = self.flow.person(given=given, family="Desk")
        for role in roles:
            self.flow.member(pid, self.org[terminal], role)
        return pid

    def token(self, person: uuid.UUID) -> dict[str, str]:
        return _auth(_token(self.flow, self.console, person))

    def activate(self, token: dict[str, str], terminal: str) -> Any:
        return self.flow.http.post(f"/admin/v1/badges/{self.badge}/activations",
                                   json={"terminal": terminal}, headers=token)

    def withdraw(self, token: dict[str, str], terminal: str) -> Any:
        return self.flow.http.post(f"/admin/v1/badges/{self.badge}/activations/{terminal}:withdraw",
                                   json={"reason": "left the company"}, headers=token)

    def live(self) -> list[str]:
        with self.flow.engine.connect() as conn:
            return sorted(conn.execute(sa.select(badge_activations.c.terminal_code).where(
                badge_activations.c.badge_id == self.badge, badge_activations.c.withdrawn_at.is_(None))).scalars())


@pytest.fixture
def port(flow: Flow) -> Port:
    return Port(flow)


def _badge_trail(flow: Flow) -> list[str]:
    with flow.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.kind).where(audit_log.c.kind.like("identity.badge.%"))
                                 .order_by(audit_log.c.id)).scalars())


# ---- activation and withdrawal: a terminal's desk at its own terminal ---------------------------------


def test_a_terminal_desk_activates_and_withdraws_at_its_own_terminal_only(port: Port) -> None:
    desk_a, desk_b = port.token(port.desk(A, "badge_office")), port.token(port.desk(B, "badge_office", given="Bram"))
    _problem(port.activate(desk_a, B), 403, "not_this_terminal")
    assert port.live() == []
    assert port.activate(desk_b, B).status_code == 201
    assert port.activate(desk_a, A).status_code == 201
    # A's desk does not withdraw B's activation (B's gate would answer badge_not_activated_here) ...
    _problem(port.withdraw(desk_a, B), 403, "not_this_terminal")
    assert port.live() == [A, B]
    # ... B's does, and A's its own.
    assert port.withdraw(desk_b, B).status_code == 200
    assert port.withdraw(desk_a, A).status_code == 200
    assert port.live() == []
    assert _badge_trail(port.flow).count("identity.badge.activated") == 2


def test_port_security_at_a_terminal_desk_is_no_wider(port: Port) -> None:
    """port_security_admin held in a terminal's organisation opens neither another terminal's badges nor
    the port's organisations and clients."""
    desk = port.token(port.desk(A, "port_security_admin", "badge_office"))
    _problem(port.activate(desk, B), 403, "not_this_terminal")
    assert port.activate(desk, A).status_code == 201
    gate, secret = create_client(port.flow.engine, name="gate B", role="terminal_gate", organisation_id=port.org[B],
                                 terminal_code=B, now=datetime.now(UTC))
    assert secret
    http = port.flow.http
    _problem(http.post(f"/admin/v1/clients/{gate}/secret", json={}, headers=desk), 403, "insufficient_role")
    _problem(http.get("/admin/v1/clients", headers=desk), 403, "insufficient_role")
    _problem(http.get("/admin/v1/organisations", headers=desk), 403, "insufficient_role")
    # B's gate still gets tokens with its secret: nothing was rotated.
    r = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, headers=basic(gate, secret))
    assert r.status_code == 200, r.text


def test_port_security_alone_at_a_terminal_is_no_console_role(port: Port) -> None:
    only = port.token(port.desk(A, "port_security_admin"))
    _problem(port.activate(only, A), 403, "insufficient_role")
    _problem(port.flow.http.get(f"/admin/v1/badges/{port.badge}", headers=only), 403, "insufficient_role")


def test_the_port_authority_activates_and_withdraws_at_every_terminal(port: Port) -> None:
    office = port.token(_officer(port.flow, "badge_office"))
    security = port.token(_officer(port.flow, "port_security_admin"))
    assert port.activate(office, A).status_code == 201
    assert port.activate(security, B).status_code == 201
    desk_b = port.token(port.desk(B, "badge_office"))
    assert port.withdraw(desk_b, B).status_code == 200
    assert port.activate(desk_b, B).status_code == 201
    assert port.withdraw(office, B).status_code == 200
    assert port.withdraw(security, A).status_code == 200
    assert port.live() == []


def test_an_admin_client_keeps_every_terminal(port: Port) -> None:
    admin, secret = create_client(port.flow.engine, name="badge office system", role="admin",
                                  organisation_id=add_org(port.flow.engine, "port_authority"), now=datetime.now(UTC))
    assert secret
    r = port.flow.http.post("/oauth2/token", data={"grant_type": "client_credentials", "scope": "admin"},
                            headers=basic(admin, secret))
    assert r.status_code == 200, r.text
    token = _auth(r.json()["access_token"])
    assert port.activate(token, A).status_code == 201
    assert port.activate(token, B).status_code == 201
    assert port.withdraw(token, B).status_code == 200


def test_only_memberships_in_force_make_a_desk(port: Port) -> None:
    """A desk role past its end, or in a company that is no terminal, covers no terminal, though the
    token still carries the role (from another membership in force)."""
    person = port.desk(A, "badge_office")
    port.flow.member(person, port.org[B], "badge_office")
    haulier = add_org(port.flow.engine, "transport_operator")
    port.flow.member(person, haulier, "badge_office")
    token = port.token(person)
    with port.flow.engine.begin() as conn:
        conn.execute(memberships.update().where(memberships.c.person_id == person,
                                                memberships.c.organisation_id == port.org[B])
                     .values(valid_until=datetime.now(UTC) - timedelta(seconds=1)))
    _problem(port.activate(token, B), 403, "not_this_terminal")
    assert port.activate(token, A).status_code == 201
    other = port.desk(A, "badge_office", given="Koen")
    with port.flow.engine.begin() as conn:
        conn.execute(memberships.delete().where(memberships.c.person_id == other))
    port.flow.member(other, haulier, "badge_office")
    company = port.token(other)
    _problem(port.activate(company, B), 403, "not_this_terminal")
    _problem(port.withdraw(company, A), 403, "not_this_terminal")
    assert port.live() == [A]

"""An enrolment code never outlives the officer who issued it (review 122, finding 3;
identity.authn.enrolment): the code names him (``issued_by``, where ``created_by`` names the console's
client), its expiry is capped at the end of his issuing roles (badge_office, port_security_admin), and
his live codes end when he loses one of them: removed, expired by the sweep, or given an end (capped at
it). Before, a code lived its whole TTL (up to 30 days) whatever became of him. On the console's API."""

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
from quaygate.schema import audit_log, enrolment_codes, memberships
from release_service.domain.parties import OrgKind
from tests.ban_register import Register
from tests.factories import add_org
from tests.test_admin_console import _auth, _console, _token, console_flow
from tests.test_identity_code_flow_support import Flow
from tests.test_passkey_provenance import post


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from console_flow(engine, tmp_path, Register())


def _officer(flow: Flow, role: str, org: uuid.UUID, until: datetime | None = None) -> uuid.UUID:
    pid = flow.person(given="Sofie", family="Wouters")
    with flow.engine.begin() as conn:
        conn.execute(memberships.insert().values(person_id=pid, organisation_id=org, role=role,
                                                 created_at=datetime.now(UTC), valid_until=until))
    return pid


def _cast(flow: Flow, *, until: datetime | None = None) -> tuple[uuid.UUID, str, str, uuid.UUID, uuid.UUID]:
    """(a badge officer, his token, port security's token, the port authority, a person to enrol); the
    badge officer's role until ``until`` (None: standing)."""
    client_id = _console(flow)
    authority = add_org(flow.engine, OrgKind.PORT_AUTHORITY).organisation_id
    assert authority is not None
    officer = _officer(flow, "badge_office", authority, until)
    security = _officer(flow, "port_security_admin", authority)
    return (officer, _token(flow, client_id, officer), _token(flow, client_id, security), authority,
            flow.person(given="Els", family="Maes"))


def _issue(flow: Flow, token: str, person: uuid.UUID, ttl_seconds: int = 72 * 3600) -> Any:
    flow.http.cookies.clear()
    return flow.http.post(f"/admin/v1/persons/{person}/enrolment-codes", json={"ttl_seconds": ttl_seconds},
                          headers=_auth(token))


def _row(flow: Flow, person: uuid.UUID) -> Any:
    with flow.engine.connect() as conn:
        return conn.execute(sa.select(enrolment_codes).where(enrolment_codes.c.person_id == person)).one()


def _usable(flow: Flow, code: str) -> str:
    """What registration options answer to the code: "ok", or the refusal's code."""
    r = post(flow, "/webauthn/registration/options", {"enrolment_code": code})
    return "ok" if r.status_code == 200 else str(r.json()["code"])


def _audit(flow: Flow, kind: str) -> list[dict[str, Any]]:
    with flow.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == kind)).scalars())


def test_a_code_names_its_officer_and_ends_when_his_role_is_removed(flow: Flow) -> None:
    officer, token, security, authority, person = _cast(flow)
    other = flow.person(given="Wim", family="Claes")
    issued = _issue(flow, token, person)
    assert issued.status_code == 201, issued.text
    row = _row(flow, person)
    assert row.issued_by == officer and row.created_by != str(officer)  # created_by: the console client
    by_security = _issue(flow, security, other)
    assert by_security.status_code == 201, by_security.text
    assert _usable(flow, issued.json()["code"]) == "ok"

    flow.http.cookies.clear()
    gone = flow.http.delete(f"/admin/v1/persons/{officer}/memberships/{authority}/badge_office",
                            headers=_auth(security))
    assert gone.status_code == 200, gone.text
    assert _usable(flow, issued.json()["code"]) == "enrolment_code_expired"  # "ok" before the mend
    assert _row(flow, person).ended_at is not None
    assert _usable(flow, by_security.json()["code"]) == "ok"  # another officer's code stays
    [data] = _audit(flow, "identity.admin.membership.removed")
    assert data["enrolment_codes_ended"] == 1


def test_a_dated_officers_code_expires_with_his_role(flow: Flow) -> None:
    end = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    _, token, _, _, person = _cast(flow, until=end)
    issued = _issue(flow, token, person, ttl_seconds=30 * 24 * 3600)
    assert issued.status_code == 201, issued.text
    assert datetime.fromisoformat(issued.json()["expires_at"]) == end  # 30 days before the mend
    assert _row(flow, person).expires_at == end


def test_an_expired_role_ends_its_officers_codes_at_the_sweep(flow: Flow) -> None:
    end = datetime.now(UTC) + timedelta(hours=2)
    officer, token, _, authority, person = _cast(flow, until=end)
    issued = _issue(flow, token, person)
    assert issued.status_code == 201, issued.text
    with flow.engine.begin() as conn:  # his end passes (the code's, capped at it, is still to come here)
        conn.execute(memberships.update().where(memberships.c.person_id == officer)
                     .values(valid_until=datetime.now(UTC) - timedelta(seconds=1)))
    assert expire_due(flow.engine, grants=provider_for(flow.app).grants, now=datetime.now(UTC)) == 1
    assert _usable(flow, issued.json()["code"]) == "enrolment_code_expired"
    [data] = _audit(flow, "identity.membership.expired")
    assert data["enrolment_codes_ended"] == 1


def test_a_standing_officer_given_an_end_has_his_codes_capped_at_it(flow: Flow) -> None:
    officer, token, security, authority, person = _cast(flow)
    issued = _issue(flow, token, person)
    assert issued.status_code == 201, issued.text
    end = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    flow.http.cookies.clear()
    dated = flow.http.post(f"/admin/v1/persons/{officer}/memberships", headers=_auth(security),
                           json={"organisation_id": str(authority), "role": "badge_office",
                                 "valid_until": end.isoformat()})
    assert dated.status_code == 200, dated.text
    assert _row(flow, person).expires_at == end
    assert _usable(flow, issued.json()["code"]) == "ok"  # until then
    [data] = _audit(flow, "identity.admin.membership.changed")
    assert data["enrolment_codes_capped"] == 1


def test_an_officer_whose_role_is_gone_issues_no_code_with_his_token(flow: Flow) -> None:
    """His token still names the role (it lives until its expiry): the issue reads the role itself."""
    officer, token, _, _, person = _cast(flow)
    with flow.engine.begin() as conn:
        conn.execute(memberships.delete().where(memberships.c.person_id == officer))
    refused = _issue(flow, token, person)
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient_role", refused.text
    with flow.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(enrolment_codes)).scalar_one() == 0

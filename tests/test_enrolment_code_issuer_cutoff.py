"""An officer's enrolment codes end when he is suspended or his organisation is deactivated (review 124,
finding 5; identity.authn.enrolment). Review 122 made a code name its officer and end with his issuing
role, but a suspension ended only the codes issued for him, and a deactivation ended none: a rogue badge
officer caught and suspended, or his terminal's desk deactivated, left his accomplices up to 30 days of
codes. A reinstatement or a reactivation does not bring them back; another officer's codes stay. The
issue locks his person row and his organisations' rows, so a suspension or a deactivation committed in
the middle of an issue waits for it and then ends its code (the interleaved tests, on PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.authn import cutoff, enrolment
from identity.domain.claims import PRIVILEGED_ROLES
from identity.grants import GrantStore, RevocationList
from identity.organisations import set_active
from identity.sessions import SessionStore
from quaygate.cache import MemoryCache
from quaygate.schema import enrolment_codes, memberships, oauth_clients, persons
from release_service.domain.parties import OrgKind
from tests.ban_register import Register
from tests.factories import add_org
from tests.interleave import HeldBeforeCommit, in_thread, waits_on_a_lock
from tests.test_admin_console import _auth, _token, console_flow
from tests.test_enrolment_code_issuer import _audit, _cast, _issue, _officer, _usable
from tests.test_identity_code_flow_support import Flow


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from console_flow(engine, tmp_path, Register())


def _post(flow: Flow, token: str, path: str, reason: str) -> Any:
    flow.http.cookies.clear()
    return flow.http.post(path, headers=_auth(token), json={"reason": reason})


def test_a_suspended_officers_codes_end_and_stay_ended_at_his_reinstatement(flow: Flow) -> None:
    officer, token, security, _, person = _cast(flow)
    other = flow.person(given="Wim", family="Claes")
    issued = _issue(flow, token, person)
    assert issued.status_code == 201, issued.text
    by_security = _issue(flow, security, other)
    assert by_security.status_code == 201, by_security.text

    done = _post(flow, security, f"/admin/v1/persons/{officer}:suspend", "codes sold at the gate")
    assert done.status_code == 200, done.text
    assert _usable(flow, issued.json()["code"]) == "enrolment_code_expired"  # "ok" before the mend
    assert _usable(flow, by_security.json()["code"]) == "ok"  # another officer's code stays
    [data] = _audit(flow, "identity.admin.person.suspended")
    assert data["issued_enrolment_codes_ended"] == 1

    back = _post(flow, security, f"/admin/v1/persons/{officer}:reinstate", "cleared")
    assert back.status_code == 200, back.text
    assert _usable(flow, issued.json()["code"]) == "enrolment_code_expired"


def test_a_deactivated_organisations_officers_codes_end_and_stay_ended_at_its_reactivation(flow: Flow) -> None:
    _, _, security, _, person = _cast(flow)
    terminal = add_org(flow.engine, OrgKind.TERMINAL).organisation_id
    assert terminal is not None
    desk = _officer(flow, "badge_office", terminal)  # a terminal's security desk
    console = _console_id(flow)
    other = flow.person(given="Wim", family="Claes")
    issued = _issue(flow, _token(flow, console, desk), person)
    assert issued.status_code == 201, issued.text
    by_security = _issue(flow, security, other)
    assert by_security.status_code == 201, by_security.text

    done = _post(flow, security, f"/admin/v1/organisations/{terminal}:deactivate", "desk under investigation")
    assert done.status_code == 200, done.text
    assert _usable(flow, issued.json()["code"]) == "enrolment_code_expired"  # "ok" before the mend
    assert _usable(flow, by_security.json()["code"]) == "ok"  # an officer of another organisation
    [data] = _audit(flow, "identity.admin.organisation.deactivated")
    assert data["enrolment_codes_ended"] == 1

    back = _post(flow, security, f"/admin/v1/organisations/{terminal}:reactivate", "cleared")
    assert back.status_code == 200, back.text
    assert _usable(flow, issued.json()["code"]) == "enrolment_code_expired"


def _console_id(flow: Flow) -> str:
    """The console client ``_cast`` registered."""
    with flow.engine.connect() as conn:
        return str(conn.execute(sa.select(oauth_clients.c.client_id)
                                .where(oauth_clients.c.role == "admin_console")).scalar_one())


# The service level: an issue and a suspension or a deactivation of its officer, one after the other, then
# interleaved on PostgreSQL. (Through the API the officer's token is revoked with the suspension or the
# deactivation; a request that passed its token check before them still runs its issue after.)


def _world(engine: sa.Engine) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """(a terminal, its badge officer, a person to enrol)."""
    terminal = add_org(engine, OrgKind.TERMINAL).organisation_id
    assert terminal is not None
    officer, person, at = uuid.uuid4(), uuid.uuid4(), datetime.now(UTC)
    with engine.begin() as conn:
        for pid in (officer, person):
            conn.execute(persons.insert().values(id=pid, given_name="Jan", family_name="Peeters", created_at=at))
        conn.execute(memberships.insert().values(person_id=officer, organisation_id=terminal, role="badge_office",
                                                 created_at=at))
    return terminal, officer, person


def _issue_code(engine: sa.Engine, officer: uuid.UUID, person: uuid.UUID) -> tuple[str, datetime]:
    return enrolment.issue_code(engine, person, created_by="qg-console", now=datetime.now(UTC),
                                refused_roles=PRIVILEGED_ROLES, issued_by=officer)


def _suspend(engine: sa.Engine, officer: uuid.UUID) -> cutoff.CutOff:
    grants = GrantStore(engine, RevocationList(MemoryCache()), refresh_ttl=60)
    return cutoff.suspend_person(engine, sessions=SessionStore(engine, ttl_seconds=3600), grants=grants,
                                 person_id=officer, actor="admin", reason="codes sold", now=datetime.now(UTC))


def _deactivate(engine: sa.Engine, terminal: uuid.UUID) -> Any:
    grants = GrantStore(engine, RevocationList(MemoryCache()), refresh_ttl=60)
    return set_active(engine, grants, terminal, active=False, actor="admin", reason="desk under investigation",
                      now=datetime.now(UTC), access_token_ttl=300)


def _ended(engine: sa.Engine, person: uuid.UUID) -> list[bool]:
    with engine.connect() as conn:
        return [e is not None for e in conn.execute(
            sa.select(enrolment_codes.c.ended_at).where(enrolment_codes.c.person_id == person)).scalars()]


@pytest.mark.parametrize("cut", ["suspend", "deactivate"])
def test_no_code_is_issued_by_a_suspended_officer_or_in_a_deactivated_organisation(engine: sa.Engine,
                                                                                   cut: str) -> None:
    terminal, officer, person = _world(engine)
    if cut == "suspend":
        _suspend(engine, officer)
    else:
        _deactivate(engine, terminal)
    with pytest.raises(enrolment.EnrolmentRefused) as refused:
        _issue_code(engine, officer, person)
    assert refused.value.reason == "issuer_role_ended"
    assert _ended(engine, person) == []


@pytest.mark.parametrize("cut", ["suspend", "deactivate"])
def test_a_suspension_or_deactivation_during_an_issue_waits_and_ends_its_code(pg_engine: sa.Engine,
                                                                                cut: str) -> None:
    """The issue held open just before its COMMIT: the suspension (the officer's row) or the deactivation
    (his organisation's row) waits for it, then ends its code. Before the mend it went through, ending
    nothing, and the code committed after it was live."""
    terminal, officer, person = _world(pg_engine)
    with HeldBeforeCommit(pg_engine, "INSERT INTO enrolment_codes") as issue_held:
        issuing, issued = in_thread(lambda: _issue_code(pg_engine, officer, person))
        assert issue_held.held.wait(10)
        cutting, _ = in_thread(lambda: _suspend(pg_engine, officer) if cut == "suspend"
                               else _deactivate(pg_engine, terminal))
        waited = waits_on_a_lock(pg_engine, cutting)
        issue_held.go.set()
        issuing.join(20)
        cutting.join(20)
    assert issued and not cutting.is_alive()
    assert waited
    assert _ended(pg_engine, person) == [True]

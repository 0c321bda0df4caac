"""An enrolment code and a role granted at the same time, on real PostgreSQL (review L5).

Whoever holds a person's enrolment code logs in as him, so the badge office may not issue one for a
person who holds a privileged role (an officer, a company's dispatcher): port security must. That
decision and the code's insert are one act: the issue reads the person's roles under the person's row
lock, in its own transaction, and every role grant takes the same lock (identity.authn.enrolment
``lock_person``). Each test holds one side's transaction open just before its COMMIT, with its locks,
starts the other through the API, and lets the first commit: in either order no live code is left
for a person who holds a privileged role.

Then the code's use (review 67): a registration in flight with the badge office's code while the
promotion commits takes the same lock, and is refused (an ended code is marked, not given an expiry a
clock read earlier passes) or, when it commits first, has its passkey suspended by the promotion.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.authn import enrolment
from quaygate.schema import enrolment_codes, persons
from release_service.domain.parties import OrgKind
from tests.ban_register import Register
from tests.factories import add_org, now
from tests.interleave import HeldBeforeCommit, in_thread, waits_on_a_lock
from tests.test_admin_console import _auth, _console, _officer, _problem, _token, console_flow
from tests.test_identity_code_flow_support import Flow
from tests.test_identity_support import ISSUER
from tests.test_passkey_provenance import (
    begin,
    finish,
    grant,
    issue,
    live,
    login,
    passkeys_of,
    paused_verification,
)
from tests.webauthn_authenticator import SoftAuthenticator


@pytest.fixture
def flow(pg_engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from console_flow(pg_engine, tmp_path, Register())


def _live_codes(flow: Flow, person: uuid.UUID) -> int:
    with flow.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(enrolment_codes).where(
            enrolment_codes.c.person_id == person, enrolment_codes.c.used_at.is_(None),
            enrolment_codes.c.ended_at.is_(None), enrolment_codes.c.expires_at > now())).scalar_one())


def _cast(flow: Flow) -> tuple[str, str, uuid.UUID, uuid.UUID]:
    """(the badge office's token, port security's token, a person with no role yet, the port authority)."""
    client_id = _console(flow)
    office = _token(flow, client_id, _officer(flow, "badge_office"))
    security = _token(flow, client_id, _officer(flow, "port_security_admin"))
    authority = add_org(flow.engine, OrgKind.PORT_AUTHORITY).organisation_id
    assert authority is not None
    return office, security, flow.person(given="Els", family="Maes"), authority


def test_a_code_asked_while_a_promotion_commits_is_refused(flow: Flow) -> None:
    """Port security makes a person port security; before that commits, the badge office asks for the
    person's code. The issue waits for the promotion and then refuses: the old check, made before the
    issue's transaction on the roles committed so far, let the code through."""
    office, security, person, authority = _cast(flow)
    with HeldBeforeCommit(flow.engine, "INSERT INTO memberships") as promotion:
        grant, granted = in_thread(lambda: flow.http.post(
            f"/admin/v1/persons/{person}/memberships", headers=_auth(security),
            json={"organisation_id": str(authority), "role": "port_security_admin"}))
        assert promotion.held.wait(10)
        issue, issued = in_thread(lambda: flow.http.post(
            f"/admin/v1/persons/{person}/enrolment-codes", json={}, headers=_auth(office)))
        waited = waits_on_a_lock(flow.engine, issue)
        promotion.go.set()
        grant.join(20)
        issue.join(20)
    assert granted[0].status_code == 201, granted[0].text
    _problem(issued[0], 403, "insufficient_role")
    assert waited  # the issue waited for the promotion's lock on the person
    assert _live_codes(flow, person) == 0


def test_a_promotion_while_a_code_is_issued_ends_the_code(flow: Flow) -> None:
    """The reverse order: the badge office's code is being issued (the person holds no role yet) when
    port security makes him port security. The promotion waits for the issue, and then ends the code,
    as it ends every code issued before it."""
    office, security, person, authority = _cast(flow)
    with HeldBeforeCommit(flow.engine, "INSERT INTO enrolment_codes") as issuing:
        issue, issued = in_thread(lambda: flow.http.post(
            f"/admin/v1/persons/{person}/enrolment-codes", json={}, headers=_auth(office)))
        assert issuing.held.wait(10)
        grant, granted = in_thread(lambda: flow.http.post(
            f"/admin/v1/persons/{person}/memberships", headers=_auth(security),
            json={"organisation_id": str(authority), "role": "port_security_admin"}))
        waited = waits_on_a_lock(flow.engine, grant)
        issuing.go.set()
        issue.join(20)
        grant.join(20)
    assert issued[0].status_code == 201, issued[0].text
    assert granted[0].status_code == 201, granted[0].text
    assert _live_codes(flow, person) == 0
    assert waited  # the promotion waited for the issue's lock on the person
    flow.http.cookies.clear()
    _problem(flow.http.post("/webauthn/registration/options", json={"enrolment_code": issued[0].json()["code"]},
                            headers={"Origin": ISSUER}), 400, "enrolment_code_expired")


# ---- a registration with the code in flight while the promotion commits (review 67) -------------------


def _in_flight(flow: Flow) -> tuple[str, uuid.UUID, uuid.UUID, SoftAuthenticator, str, Any]:
    """Port security's token, the person, the port authority, and a registration begun with the badge
    office's code: its device, flow and credential."""
    office, security, person, authority = _cast(flow)
    device, flow_id, created = begin(flow, code=issue(flow, office, person))
    return security, person, authority, device, flow_id, created


def test_a_registration_that_read_its_clock_before_the_promotion_is_refused(
        flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registration read its clock, then port security's promotion ended the code and committed,
    then the registration used it. An ending that set the code's expiry to its own time let the
    registration through (its clock was earlier); the ``ended_at`` marker, read under the person's lock,
    does not."""
    security, person, authority, device, flow_id, created = _in_flight(flow)
    with paused_verification(monkeypatch) as (inside, go):
        thread, answered = in_thread(lambda: finish(flow, flow_id, created))
        assert inside.wait(10)
        granted = grant(flow, security, person, authority, "port_security_admin")
        assert granted.status_code == 201, granted.text
        go.set()
        thread.join(20)
    _problem(answered[0], 400, "enrolment_code_expired")
    assert "qg_session" not in answered[0].cookies
    assert passkeys_of(flow, person) == []
    _problem(login(flow, device), 401, "passkey_unknown")


def test_a_registration_that_runs_into_the_promotion_waits_and_is_refused(
        flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, the promotion held just before its COMMIT when the registration goes on: the
    registration waits for the person's lock and is then refused. Before, its conditional UPDATE waited
    for the code's row and re-checked it against the promotion's ``expires_at``, later than its clock,
    and matched."""
    security, person, authority, device, flow_id, created = _in_flight(flow)
    with paused_verification(monkeypatch) as (inside, go), \
            HeldBeforeCommit(flow.engine, "INSERT INTO memberships") as promotion:
        thread, answered = in_thread(lambda: finish(flow, flow_id, created))
        assert inside.wait(10)
        granting, granted = in_thread(lambda: grant(flow, security, person, authority, "port_security_admin"))
        assert promotion.held.wait(10)
        go.set()
        waited = waits_on_a_lock(flow.engine, thread)
        promotion.go.set()
        granting.join(20)
        thread.join(20)
    assert granted[0].status_code == 201, granted[0].text
    assert waited
    _problem(answered[0], 400, "enrolment_code_expired")
    assert passkeys_of(flow, person) == []
    _problem(login(flow, device), 401, "passkey_unknown")


def test_a_promotion_that_runs_into_a_registration_suspends_its_passkey(flow: Flow) -> None:
    """The other order: the registration holds the person's lock just before its COMMIT; the promotion
    waits for it, then sees the new passkey, enrolled with the badge office's code, and suspends it
    and ends its session."""
    security, person, authority, device, flow_id, created = _in_flight(flow)
    with HeldBeforeCommit(flow.engine, "INSERT INTO webauthn_credentials") as registering:
        thread, answered = in_thread(lambda: finish(flow, flow_id, created))
        assert registering.held.wait(10)
        granting, granted = in_thread(lambda: grant(flow, security, person, authority, "port_security_admin"))
        waited = waits_on_a_lock(flow.engine, granting)
        registering.go.set()
        thread.join(20)
        granting.join(20)
    assert answered[0].status_code == 201, answered[0].text
    assert granted[0].status_code == 201, granted[0].text
    assert waited
    assert granted[0].json()["passkeys_suspended"] == 1
    assert not live(flow, answered[0].cookies["qg_session"])
    _problem(login(flow, device), 401, "passkey_suspended_privileged_role")


def test_an_ended_code_is_refused_whatever_the_clock_says(engine: sa.Engine) -> None:
    """An ended code is marked: a registration whose clock reads a time before the ending (read before
    it, or on a server whose clock is behind) does not use it. Ended by setting its expiry to the time
    of the ending, it did."""
    person = uuid.uuid4()
    issued = now()
    with engine.begin() as conn:
        conn.execute(persons.insert().values(id=person, given_name="Els", family_name="Maes", created_at=issued))
    code, _ = enrolment.issue_code(engine, person, created_by="badge office", now=issued,
                                   refused_roles=enrolment.NO_ROLE_REFUSED)
    with engine.begin() as conn:
        assert enrolment.end_live_codes(conn, person, now=issued + timedelta(seconds=10)) == 1
    for clock in (issued + timedelta(seconds=5), issued + timedelta(seconds=20)):
        with pytest.raises(enrolment.EnrolmentRefused, match="enrolment_code_expired"):
            enrolment.check(engine, code, now=clock)
        with engine.begin() as conn, pytest.raises(enrolment.EnrolmentRefused, match="enrolment_code_expired"):
            enrolment.consume(conn, enrolment.code_hash(code), person_id=person, now=clock)
    with engine.begin() as conn:
        assert enrolment.end_live_codes(conn, person, now=issued + timedelta(seconds=30)) == 0  # once

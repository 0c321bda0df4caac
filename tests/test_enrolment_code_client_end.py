"""An admin client's enrolment codes end with it (review 146, finding 1; identity.authn.enrolment
``end_codes_created_by``). An admin client is refused no role, so each code it issues is a
``privileged_issuer`` one, for up to 30 days; it names no officer (``issued_by`` NULL), only the client
(``created_by``). Its deactivation (the admin API's, RFC 7592's delete), a rotation of its secret that
revokes its tokens, and the deactivation of its organisation killed its tokens and left every code it
had minted live: whoever stole its secret registered a passkey for an officer days after, a privileged
enrolment nothing suspends. Now they end in the same transaction, and the audit entry counts them. A
code an officer issued through the console keeps the console's client in ``created_by`` too: it ends
with the officer's roles (review 122, finding 3), not with that client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.authn import enrolment
from identity.bootstrap import create_client
from identity.grants import GrantStore, RevocationList
from identity.organisations import set_active
from identity.registration.endpoint import management_for
from identity.registration.service import ClientManagement
from quaygate.cache import MemoryCache
from quaygate.schema import enrolment_codes, persons, webauthn_credentials
from release_service.domain.parties import OrgKind
from tests.ban_register import Register
from tests.factories import add_org
from tests.interleave import HeldBeforeCommit, in_thread, waits_on_a_lock
from tests.test_admin_console import _auth, _console, _token, console_flow
from tests.test_enrolment_code_issuer import _audit, _issue, _officer, _usable
from tests.test_identity_code_flow_support import Flow
from tests.test_passkey_provenance import begin, finish

MONTH = 30 * 24 * 3600


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from console_flow(engine, tmp_path, Register())


def _admin(flow: Flow) -> tuple[str, str, uuid.UUID]:
    """An admin client of a port authority of its own: (its id, a token of it, the authority)."""
    authority = add_org(flow.engine, OrgKind.PORT_AUTHORITY).organisation_id
    assert authority is not None
    client_id, secret = create_client(flow.engine, name="admin", role="admin", organisation_id=authority,
                                      now=datetime.now(UTC))
    assert secret is not None
    flow.http.cookies.clear()
    r = flow.http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
    assert r.status_code == 200, r.text
    return client_id, str(r.json()["access_token"]), authority


def _target(flow: Flow, authority: uuid.UUID) -> uuid.UUID:
    """An officer of port security, whose passkey opens the admin console."""
    return _officer(flow, "port_security_admin", authority)


def _code(flow: Flow, token: str, person: uuid.UUID) -> str:
    r = _issue(flow, token, person, ttl_seconds=MONTH)
    assert r.status_code == 201, r.text
    return str(r.json()["code"])


def _post(flow: Flow, token: str, path: str, body: Any = None) -> Any:
    flow.http.cookies.clear()
    return flow.http.post(path, headers=_auth(token), json=body)


def _passkeys(flow: Flow, person: uuid.UUID) -> int:
    with flow.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(webauthn_credentials)
                                .where(webauthn_credentials.c.person_id == person)).scalar_one())


def test_a_deactivated_admin_clients_codes_end_one_in_flight_too(flow: Flow) -> None:
    stolen, token, authority = _admin(flow)
    other, other_token, _ = _admin(flow)
    officer, clerk = _target(flow, authority), _target(flow, authority)
    code = _code(flow, token, officer)
    in_flight = _code(flow, token, clerk)
    kept = _code(flow, other_token, flow.person(given="Wim", family="Claes"))
    _, flow_id, created = begin(flow, code=in_flight)  # options taken before the deactivation

    done = _post(flow, other_token, f"/admin/v1/clients/{stolen}:deactivate")
    assert done.status_code == 200, done.text
    assert _post(flow, token, f"/admin/v1/persons/{officer}/enrolment-codes", {}).status_code == 401
    assert _usable(flow, code) == "enrolment_code_expired"  # "ok" before the mend
    late = finish(flow, flow_id, created)
    assert late.status_code == 400 and late.json()["code"] == "enrolment_code_expired", late.text  # 201 before
    assert _passkeys(flow, clerk) == 0
    assert _usable(flow, kept) == "ok"  # another client's code stays
    [data] = _audit(flow, "identity.admin.client.deactivated")
    assert data["enrolment_codes_ended"] == 2


def test_a_secret_rotation_that_revokes_the_tokens_ends_the_codes_one_that_does_not_keeps_them(flow: Flow) -> None:
    stolen, token, authority = _admin(flow)
    _, other_token, _ = _admin(flow)
    code = _code(flow, token, _target(flow, authority))

    kept = _post(flow, other_token, f"/admin/v1/clients/{stolen}/secret", {"revoke_tokens": False})
    assert kept.status_code == 200, kept.text
    assert _usable(flow, code) == "ok"
    rotated = _post(flow, other_token, f"/admin/v1/clients/{stolen}/secret", {"revoke_tokens": True})
    assert rotated.status_code == 200, rotated.text
    assert _usable(flow, code) == "enrolment_code_expired"  # "ok" before the mend
    first, second = _audit(flow, "identity.admin.client.secret_rotated")
    assert (first["enrolment_codes_ended"], second["enrolment_codes_ended"]) == (0, 1)


def test_a_deactivated_organisations_admin_clients_codes_end(flow: Flow) -> None:
    _, token, authority = _admin(flow)
    _, other_token, _ = _admin(flow)
    code = _code(flow, token, _target(flow, authority))
    kept = _code(flow, other_token, flow.person(given="Wim", family="Claes"))

    done = _post(flow, other_token, f"/admin/v1/organisations/{authority}:deactivate", {"reason": "secret leaked"})
    assert done.status_code == 200, done.text
    assert _usable(flow, code) == "enrolment_code_expired"  # "ok" before the mend
    assert _usable(flow, kept) == "ok"
    [data] = _audit(flow, "identity.admin.organisation.deactivated")
    assert data["enrolment_codes_ended"] == 1


def test_a_deleted_clients_codes_end(flow: Flow) -> None:
    """RFC 7592 §2.3. No dynamically registered client issues codes through the admin API; one that had
    one (created_by naming it) loses it all the same."""
    management = management_for(flow.app)
    org = add_org(flow.engine, OrgKind.SHIPPING_LINE).organisation_id
    iat, _ = management.create_initial_access_token(organisation_id=org, created_by="qg-admin-test", ttl=None,
                                                    now=datetime.now(UTC))
    registered = management.register(iat, {"client_name": "Line", "grant_types": ["client_credentials"]},
                                     now=datetime.now(UTC))
    person = flow.person(given="Els", family="Maes")
    code, _ = enrolment.issue_code(flow.engine, person, created_by=registered.client_id, now=datetime.now(UTC),
                                   refused_roles=enrolment.NO_ROLE_REFUSED)
    assert registered.registration_access_token is not None
    management.delete(registered.client_id, registered.registration_access_token, now=datetime.now(UTC))
    assert _usable(flow, code) == "enrolment_code_expired"  # "ok" before the mend
    [data] = _audit(flow, "identity.client.deleted")
    assert data["enrolment_codes_ended"] == 1


def test_an_officers_codes_do_not_end_with_the_console_client(flow: Flow) -> None:
    """His code's ``created_by`` is the console's client id: it names him (``issued_by``) and ends with his
    roles, not with the client that carried his request."""
    console = _console(flow)
    _, admin_token, authority = _admin(flow)
    office = _token(flow, console, _officer(flow, "badge_office", authority))
    person = flow.person(given="Els", family="Maes")
    code = _code(flow, office, person)
    with flow.engine.connect() as conn:
        assert conn.execute(sa.select(enrolment_codes.c.created_by)
                            .where(enrolment_codes.c.person_id == person)).scalar_one() == console

    done = _post(flow, admin_token, f"/admin/v1/clients/{console}:deactivate")
    assert done.status_code == 200, done.text
    assert _usable(flow, code) == "ok"
    [data] = _audit(flow, "identity.admin.client.deactivated")
    assert data["enrolment_codes_ended"] == 0


# The service level: an issue and a deactivation of its client or its organisation, one after the other,
# then interleaved on PostgreSQL. (Through the API the client's token is revoked with the deactivation; a
# request that passed its token check before it still runs its issue after.)


def _world(engine: sa.Engine) -> tuple[str, uuid.UUID, uuid.UUID]:
    """(an admin client, its port authority, a person to enrol)."""
    authority = add_org(engine, OrgKind.PORT_AUTHORITY).organisation_id
    assert authority is not None
    client_id, _ = create_client(engine, name="admin", role="admin", organisation_id=authority, now=datetime.now(UTC))
    person = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(persons.insert().values(id=person, given_name="Els", family_name="Maes",
                                             created_at=datetime.now(UTC)))
    return client_id, authority, person


def _issue_code(engine: sa.Engine, client_id: str, person: uuid.UUID) -> tuple[str, datetime]:
    return enrolment.issue_code(engine, person, created_by=client_id, now=datetime.now(UTC),
                                refused_roles=enrolment.NO_ROLE_REFUSED)


def _cut(engine: sa.Engine, cut: str, client_id: str, authority: uuid.UUID) -> Any:
    grants = GrantStore(engine, RevocationList(MemoryCache()), refresh_ttl=60)
    if cut == "client":
        return ClientManagement(engine, grants, issuer="x").deactivate(client_id, admin="qg-admin-other",
                                                                       now=datetime.now(UTC))
    return set_active(engine, grants, authority, active=False, actor="qg-admin-other", reason="secret leaked",
                      now=datetime.now(UTC), access_token_ttl=300)


def _ended(engine: sa.Engine, person: uuid.UUID) -> list[bool]:
    with engine.connect() as conn:
        return [e is not None for e in conn.execute(
            sa.select(enrolment_codes.c.ended_at).where(enrolment_codes.c.person_id == person)).scalars()]


@pytest.mark.parametrize("cut", ["client", "organisation"])
def test_no_code_is_issued_by_a_deactivated_client_or_one_of_a_deactivated_organisation(engine: sa.Engine,
                                                                                          cut: str) -> None:
    client_id, authority, person = _world(engine)
    _cut(engine, cut, client_id, authority)
    with pytest.raises(enrolment.EnrolmentRefused) as refused:
        _issue_code(engine, client_id, person)
    assert refused.value.reason == "issuer_role_ended"
    assert _ended(engine, person) == []
    _issue_code(engine, "cli", person)  # no such client: the command line's


@pytest.mark.parametrize("cut", ["client", "organisation"])
def test_a_deactivation_during_an_issue_waits_and_ends_its_code(pg_engine: sa.Engine, cut: str) -> None:
    """The issue held open just before its COMMIT: the deactivation of its client (the client's row) or of
    its organisation (the organisation's row) waits for it, then ends its code. Before the mend it went
    through, and the code committed after it was live."""
    client_id, authority, person = _world(pg_engine)
    with HeldBeforeCommit(pg_engine, "INSERT INTO enrolment_codes") as issue_held:
        issuing, issued = in_thread(lambda: _issue_code(pg_engine, client_id, person))
        assert issue_held.held.wait(10)
        cutting, _ = in_thread(lambda: _cut(pg_engine, cut, client_id, authority))
        waited = waits_on_a_lock(pg_engine, cutting)
        issue_held.go.set()
        issuing.join(20)
        cutting.join(20)
    assert issued and not cutting.is_alive()
    assert waited
    assert _ended(pg_engine, person) == [True]

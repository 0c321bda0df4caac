"""An officer acting on himself through the admin console (separation of duties) is refused 403 with
its own code, as one RFC 9457 problem, and that refusal is not a token challenge: no WWW-Authenticate,
where a token's shortfall (invalid, without the scope or the role) keeps its RFC 6750 §3 challenge. On
SQLite and PostgreSQL. (The face's own_face: tests/test_face_api.py.)"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.domain.badges import Scheme, with_check
from quaygate.schema import badges, enrolment_codes, memberships, persons
from tests.ban_register import Register
from tests.test_admin_console import _auth, _console, _officer, _problem, _token, console_flow
from tests.test_identity_code_flow_support import Flow
from tests.test_identity_support import add_org


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from console_flow(engine, tmp_path, Register())


def _own_acts(flow: Flow, officer: uuid.UUID, token: dict[str, str]) -> dict[str, Any]:
    """Each act of the officer on himself, by the code that refuses it."""
    t = datetime.now(UTC)
    authority = add_org(flow.engine, "port_authority")
    badge = {"person_id": str(officer), "scheme": "alfapass", "number": with_check(Scheme.ALFAPASS, 4260),
             "valid_from": t.isoformat(), "valid_until": (t + timedelta(days=365)).isoformat()}
    return {
        "own_badge": flow.http.post("/admin/v1/badges", json=badge, headers=token),
        "own_enrolment_code": flow.http.post(f"/admin/v1/persons/{officer}/enrolment-codes", json={}, headers=token),
        "own_membership": flow.http.post(f"/admin/v1/persons/{officer}/memberships",
                                         json={"organisation_id": str(authority), "role": "driver"}, headers=token),
        "own_suspension": flow.http.post(f"/admin/v1/persons/{officer}:suspend", json={"reason": "test"},
                                         headers=token),
        "own_reinstatement": flow.http.post(f"/admin/v1/persons/{officer}:reinstate", json={"reason": "test"},
                                            headers=token),
    }


def test_an_officers_acts_on_himself_are_refused_without_a_token_challenge(
    flow: Flow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    officer = _officer(flow, "badge_office", "port_security_admin")
    token = _auth(_token(flow, _console(flow), officer))
    for code, r in _own_acts(flow, officer, token).items():
        body = _problem(r, 403, code)
        assert r.headers["content-type"].startswith("application/problem+json"), code
        assert (body["status"], body["instance"], body["type"]) == (
            403, r.request.url.path, "https://quaygate.eu/problems/" + code), code
        assert "www-authenticate" not in r.headers, code
        assert f"identity.admin.refused.{code}" in caplog.messages
    with flow.engine.connect() as conn:  # nothing done
        assert conn.execute(sa.select(badges.c.id).where(badges.c.person_id == officer)).first() is None
        assert conn.execute(sa.select(enrolment_codes.c.code_hash)
                            .where(enrolment_codes.c.person_id == officer)).first() is None
        assert conn.execute(sa.select(memberships.c.role).where(memberships.c.person_id == officer)
                            ).scalars().all() == ["badge_office", "port_security_admin"]
        assert conn.execute(sa.select(persons.c.status).where(persons.c.id == officer)).scalar_one() == "active"


def test_a_tokens_shortfall_keeps_its_challenge(flow: Flow) -> None:
    """RFC 6750 §3: a 401, and a 403 for what another token would have (the scope, the role), say so in
    WWW-Authenticate; with the DPoP scheme, as a DPoP challenge (RFC 9449 §7.1)."""
    client_id = _console(flow)
    office = _auth(_token(flow, client_id, _officer(flow, "badge_office")))
    driver = flow.person()
    role = flow.http.post(f"/admin/v1/persons/{driver}:suspend", json={"reason": "test"}, headers=office)
    _problem(role, 403, "insufficient_role")
    assert role.headers["www-authenticate"].startswith('Bearer error="insufficient_role"')
    app_id = flow.driver_app()
    app_token = flow.driver_tokens(app_id, _officer(flow, "driver"))["access_token"]
    scope = flow.http.get(f"/admin/v1/persons/{driver}", headers=_auth(app_token))
    _problem(scope, 403, "insufficient_scope")
    assert scope.headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')
    for scheme in ("Bearer", "DPoP"):
        bad = flow.http.get(f"/admin/v1/persons/{driver}", headers={"Authorization": f"{scheme} a.b.c"})
        _problem(bad, 401, "invalid_token")
        assert bad.headers["www-authenticate"].startswith(f'{scheme} error="invalid_token"'), scheme

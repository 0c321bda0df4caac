"""A suspended person refused at the brokered login (itsme) is told whom to turn to: port security for a
person who holds a privileged role (identity.authn.enrolment ``issuing_office``), the badge office
otherwise, as the passkey pages tell him (tests/test_identity_office_texts.py). The code stays
``person_suspended``; the problem carries ``office``. Against the real upstream (tests/upstream/world.py)."""

from __future__ import annotations

import html
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from identity.authn import enrolment
from identity.web import i18n
from quaygate.schema import memberships, persons
from tests.test_identity_support import add_org

from .upstream.world import World, build_world

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("broker")]


@pytest.fixture
def world(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from build_world(engine, tmp_path)


@pytest.mark.parametrize(("role", "org_kind", "office"), [
    (None, None, enrolment.BADGE_OFFICE),
    ("driver", "transport_operator", enrolment.BADGE_OFFICE),
    ("port_security_admin", "port_authority", enrolment.PORT_SECURITY),
    ("badge_office", "port_authority", enrolment.PORT_SECURITY),
    ("dispatcher", "transport_operator", enrolment.PORT_SECURITY),
])
def test_a_suspended_persons_itsme_refusal_names_whom_he_turns_to(world: World, role: str | None,
                                                                   org_kind: str | None, office: str) -> None:
    org = add_org(world.engine, org_kind) if org_kind is not None else None
    with world.engine.begin() as conn:
        if role is not None:
            conn.execute(memberships.insert().values(person_id=world.person, organisation_id=org, role=role,
                                                     created_at=datetime.now(UTC)))
        conn.execute(persons.update().where(persons.c.id == world.person).values(status="suspended"))
    text = i18n.translate("en", i18n.own_key("en", "broker.error.suspended", office))
    assert ("port security" in text) is (office == enrolment.PORT_SECURITY)
    assert ("badge office" in text) is (office == enrolment.BADGE_OFFICE)

    with world.browser() as browser:
        page = world.login(browser, "jan")
    assert page.status_code == 403 and 'data-code="person_suspended"' in page.text
    assert html.escape(text) in page.text

    with world.browser() as browser:
        problem = browser.get(world.callback_url(browser, "jan"), headers={"Accept": "application/json"})
    assert problem.status_code == 403, problem.text
    body = problem.json()
    assert (body["code"], body["office"], body["detail"]) == ("person_suspended", office, text)
    assert world.sessions() == []


@pytest.mark.parametrize(("role", "office"), [(None, enrolment.BADGE_OFFICE),
                                              ("badge_office", enrolment.PORT_SECURITY)])
def test_a_changed_itsme_account_is_told_whom_to_turn_to(world: World, role: str | None, office: str) -> None:
    """A re-created itsme account (same national number, new sub) with no passkey login to confirm it is
    refused ``upstream_rebind_required``; the text names the office that issues his codes, as when
    suspended: a badge officer's own account is for port security to confirm, not his colleagues'. Both
    ways the refusal comes: the changed sub, and the replaced sub once re-bound."""
    if role is not None:
        org = add_org(world.engine, "port_authority")
        with world.engine.begin() as conn:
            conn.execute(memberships.insert().values(person_id=world.person, organisation_id=org, role=role,
                                                     created_at=datetime.now(UTC)))
    text = i18n.translate("en", i18n.own_key("en", "broker.error.rebind", office))
    assert ("port security" in text) is (office == enrolment.PORT_SECURITY)
    assert ("badge office" in text) is (office == enrolment.BADGE_OFFICE)
    with world.browser() as browser:
        assert world.login(browser, "jan").status_code == 303
    with world.browser() as browser:
        page = world.login(browser, "jan-new")
    assert page.status_code == 409 and 'data-code="upstream_rebind_required"' in page.text
    assert html.escape(text) in page.text
    with world.browser() as browser:
        problem = browser.get(world.callback_url(browser, "jan-new"), headers={"Accept": "application/json"})
    body = problem.json()
    assert (problem.status_code, body["code"], body["office"], body["detail"]) == (
        409, "upstream_rebind_required", office, text)

"""The admin console in a real browser (issue 4 "What it must show"): a port security officer enrols a
passkey, signs in to /console/ (code flow with PKCE, passkey login), finds a badge and blocks it with a
reason; then imports a signed ban feed and sees the driver's badge inactive and the alert listed.

The gate verify half of the issue's first scenario ("a gate verify then answers deny with
badge_blocked") waits for the gate verify route (issue 5).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from identity.authn.enrolment import issue_code
from identity.bootstrap import create_client
from quaygate.crypto import keyed_hash
from quaygate.schema import audit_log, badges, memberships, organisations, persons
from release_service.services import issue, nominate
from tests.ban_register import Register, ban, national_number, snapshot
from tests.factories import do, issue_cmd, port

from .conftest import Live
from .test_passkeys_browser import Phone, enrol

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def now() -> datetime:
    return datetime.now(UTC)


def officer(live: Live) -> tuple[uuid.UUID, str, str]:
    """The admin console client (as the demo registers it) and a port security officer with an
    enrolment code from the badge office. Returns (person id, enrolment code, client id)."""
    engine = live.engine
    client_id, _ = create_client(
        engine, name="quaygate admin console", role="admin_console", organisation_id=None, auth_method="none",
        redirect_uris=[live.base + "/console/callback"], now=now(), min_acr="urn:quaygate:acr:passkey",
        extra_metadata={"id_token_signed_response_alg": "ES256"})
    pid, org = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(organisations.insert().values(id=org, name="Port Security", kind="port_authority",
                                                   eori=f"BE09{pid.int % 10**8:08d}", created_at=now()))
        conn.execute(persons.insert().values(id=pid, given_name="Sofie", family_name="Wouters", created_at=now()))
        conn.execute(memberships.insert().values(person_id=pid, organisation_id=org, role="port_security_admin",
                                                 created_at=now()))
    code, _ = issue_code(engine, pid, created_by="e2e", now=now())
    return pid, code, client_id


def sign_in(phone: Phone, live: Live, code: str) -> Any:
    page = phone.page
    enrol(phone, live, code, name="Tablet")
    page.wait_for_url(live.base + "/app/")
    page.goto(live.base + "/console/")
    page.click("#signin")  # authorize -> (login session from the enrolment) -> /console/callback -> token
    page.locator("#tabs").wait_for()
    assert page.url.startswith(live.base + "/console/#"), "the code left the address bar"
    return page


def test_port_security_blocks_a_badge_in_the_console(browser: Any, live: Live) -> None:
    p = port(live.engine)
    with live.engine.connect() as conn:
        badge_id, number = conn.execute(sa.select(badges.c.id, badges.c.number)
                                        .where(badges.c.person_id == p.driver)).one()
    pid, code, client_id = officer(live)
    phone = Phone(browser, locale="nl-BE")
    try:
        page = sign_in(phone, live, code)
        page.fill("#q", number)
        page.click("#find")
        page.click(f'a[href="#badge/{badge_id}"]')
        page.locator("#badge-status[data-status=active]").wait_for()
        page.fill("#reason", "Gestolen, aangifte PV 123")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#do-block")
        page.locator("#badge-status[data-status=blocked]").wait_for()
        assert "Gestolen, aangifte PV 123" in page.locator("#history").inner_text()
        with live.engine.connect() as conn:
            assert conn.execute(sa.select(badges.c.status, badges.c.status_reason)
                                .where(badges.c.id == badge_id)).one() == ("blocked", "Gestolen, aangifte PV 123")
            actor = conn.execute(sa.select(audit_log.c.actor).where(
                audit_log.c.kind == "identity.badge.status_changed", audit_log.c.subject == str(badge_id))).scalar_one()
        assert actor == {"person_id": str(pid), "client_id": client_id}
        assert f"person:{pid}@{client_id}" in page.locator("#history").inner_text()
        assert phone.errors == []
    finally:
        phone.close()


def test_port_security_imports_a_ban_feed_and_sees_the_alert(browser: Any, live: Live, tmp_path: Any) -> None:
    register = Register()
    live.app.state.container.settings.ban_register_jwk = register.public_jwk
    p = port(live.engine)
    number = national_number(11)
    with live.engine.begin() as conn:
        conn.execute(sa.update(persons).where(persons.c.id == p.driver).values(
            national_id_hash=keyed_hash(live.settings.pepper_bytes(), number)))
    right = do(live.engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 3, to=p.haul.organisation_id), now())[0])
    do(live.engine, lambda uow: nominate.nominate(uow, p.haul, right.id,
                                                  nominate.NominateCommand("1ABC123", "BE", p.driver), now()))
    feed = tmp_path / "aigis-snapshot-1.jws"
    feed.write_bytes(register.sign(snapshot(1, now(), [ban(number, "R-11", start=now() - timedelta(days=1))])))
    _, code, _ = officer(live)
    phone = Phone(browser)
    try:
        page = sign_in(phone, live, code)
        page.click('a[href="#import"]')
        page.set_input_files("#feed", str(feed))
        page.click("#upload")
        page.locator("#import-result").wait_for()
        assert "1 badges deactivated, 1 nomination alerts" in page.locator("#import-result").inner_text()
        with live.engine.connect() as conn:
            assert conn.execute(sa.select(badges.c.status).where(badges.c.person_id == p.driver)).scalar_one() \
                == "inactive"
        page.click('a[href="#alerts"]')
        alert = page.locator("#alert-list li")
        alert.first.wait_for()
        assert str(right.id) in alert.first.inner_text() and "R-11" in alert.first.inner_text()
        assert phone.errors == []
    finally:
        phone.close()

"""The admin console in a real browser (issue 4 "What it must show"): a port security officer enrols a
passkey, signs in to /console/ (code flow with PKCE, passkey login), finds a badge and blocks it with a
reason, and the terminal's gate client then gets ``deny`` with ``badge_blocked`` from
``POST /gate/v1/verify`` for that driver; an officer imports a signed ban feed, sees the alert on the
driver's open nomination, follows it to the driver's badge, now inactive, and the gate refuses him.

The server is the whole app (quaygate.app.create_app under uvicorn): the console, the admin API, the
party API that makes the right, and the gate route, all over real HTTP.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from identity.authn.enrolment import NO_ROLE_REFUSED, issue_code
from identity.bootstrap import create_client
from identity.domain.badges import Scheme, with_check
from quaygate.crypto import keyed_hash
from quaygate.schema import audit_log, badges, memberships, organisations, persons
from tests.ban_register import Register, ban, national_number, snapshot
from tests.test_gate_verify import Gate

from .conftest import Live
from .test_passkeys_browser import Phone, enrol, live_sessions

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def now() -> datetime:
    return datetime.now(UTC)


def officer(live: Live, role: str = "port_security_admin") -> tuple[uuid.UUID, str, str]:
    """The admin console client (as the demo registers it) and a port security officer with an
    enrolment code from the badge office. Returns (person id, enrolment code, client id)."""
    engine = live.engine
    client_id, _ = create_client(
        engine, name="quaygate admin console", role="admin_console", organisation_id=None, auth_method="none",
        redirect_uris=[live.base + "/console/callback"], post_logout_redirect_uris=[live.base + "/console/"],
        now=now(), min_acr="urn:quaygate:acr:passkey",
        extra_metadata={"id_token_signed_response_alg": "ES256"})
    pid, org = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(organisations.insert().values(id=org, name="Port Security", kind="port_authority",
                                                   eori=f"BE09{pid.int % 10**8:08d}", created_at=now()))
        conn.execute(persons.insert().values(id=pid, given_name="Sofie", family_name="Wouters", created_at=now()))
        conn.execute(memberships.insert().values(person_id=pid, organisation_id=org, role=role, created_at=now()))
    code, _ = issue_code(engine, pid, created_by="e2e", now=now(), refused_roles=NO_ROLE_REFUSED)
    return pid, code, client_id


def sign_in(phone: Phone, live: Live, code: str) -> Any:
    page = phone.page
    enrol(phone, live, code, name="Tablet")
    page.wait_for_url(live.base + "/app/")
    page.goto(live.base + "/console/")
    # authorize (prompt=login: the enrolment's login session is not enough) -> the passkey at /login ->
    # /console/callback -> token (review 128, finding 1)
    page.click("#signin")
    page.wait_for_url(re.compile(re.escape(live.base) + r"/login\?"))
    page.click("#login")
    page.locator("#tabs").wait_for()
    assert page.url.startswith(live.base + "/console/#"), "the code left the address bar"
    return page


def gate_for(live: Live) -> tuple[Gate, Any]:
    """The test port with a terminal gate client, over real HTTP to the live server (tests.test_gate_verify):
    its driver's badge has a valid Alfapass number and is activated at the terminal."""
    http = httpx.Client(base_url=live.base, timeout=30)
    return Gate(http, live.engine), http  # type: ignore[arg-type]


def test_port_security_blocks_a_badge_and_the_gate_denies_it(browser: Any, live: Live) -> None:
    gate, http = gate_for(live)
    rid = gate.pickable(1)
    with live.engine.connect() as conn:
        badge_id = conn.execute(sa.select(badges.c.id).where(badges.c.person_id == gate.p.driver)).scalar_one()
    before = gate.verify(gate.body(1)).json()
    assert (before["decision"], before["reasons"]) == ("allow", []), before  # the gate would let him in
    pid, code, client_id = officer(live)
    phone = Phone(browser, locale="nl-BE")
    try:
        page = sign_in(phone, live, code)
        page.fill("#q", gate.badge_number)
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
        # The gate half: the terminal's gate client asks about the same truck and driver.
        after = gate.verify(gate.body(1, mode="commit")).json()
        assert (after["decision"], after["reasons"], after["committed"]) == ("deny", ["badge_blocked"], False), after
        assert gate.state(rid) == "nominated"
        assert phone.errors == []
    finally:
        phone.close()
        http.close()


def test_port_security_imports_a_ban_feed_and_sees_the_alert(browser: Any, live: Live, tmp_path: Any) -> None:
    register = Register()
    gate, http = gate_for(live)
    number = national_number(11)
    with live.engine.begin() as conn:
        conn.execute(sa.update(persons).where(persons.c.id == gate.p.driver).values(
            national_id_hash=keyed_hash(live.settings.pepper_bytes(), number)))
        badge_id = conn.execute(sa.select(badges.c.id).where(badges.c.person_id == gate.p.driver)).scalar_one()
    rid = gate.pickable(3)  # nominated before the register is configured (else: no list in force yet)
    live.app.state.container.settings.ban_register_jwk = register.public_jwk
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
        page.click('a[href="#alerts"]')
        alert = page.locator("#alert-list li")
        alert.first.wait_for()
        assert rid in alert.first.inner_text() and "R-11" in alert.first.inner_text()
        # From the alert to the driver, whose badge the ban turned inactive.
        alert.first.locator("a.driver").click()
        page.locator(f'#person-badges a[href="#badge/{badge_id}"][data-status=inactive]').wait_for()
        with live.engine.connect() as conn:
            assert conn.execute(sa.select(badges.c.status).where(badges.c.id == badge_id)).scalar_one() == "inactive"
        got = gate.verify(gate.body(3)).json()
        assert got["decision"] == "deny" and got["screening"] == "banned", got
        assert {"person_banned", "badge_inactive"} <= set(got["reasons"]), got
        assert phone.errors == []
    finally:
        phone.close()
        http.close()


def test_the_badge_office_finds_a_person_by_name_and_issues_a_badge(browser: Any, live: Live) -> None:
    gate, http = gate_for(live)
    http.close()
    with live.engine.begin() as conn:
        conn.execute(sa.update(persons).where(persons.c.id == gate.p.driver).values(given_name="Jan",
                                                                                      family_name="Peeters"))
    pid, code, client_id = officer(live, "badge_office")
    phone = Phone(browser, locale="fr-BE")
    try:
        page = sign_in(phone, live, code)
        assert page.locator('a[href="#audit"]').is_hidden()  # the audit trail is port security's
        page.fill("#q", "jan peet")
        page.click("#find")
        page.click(f'a[href="#person/{gate.p.driver}"]')
        page.locator("#person-badges li a").first.wait_for()
        number = with_check(Scheme.PORTPASS, 765432)
        page.select_option("#i-scheme", "portpass")
        page.fill("#i-number", number)
        page.fill("#i-until", (now() + timedelta(days=400)).date().isoformat())
        page.click("#do-issue")
        page.wait_for_selector("#issue-result:not([hidden]), #msg:not([hidden])")
        assert page.locator("#msg").is_hidden(), page.locator("#msg").inner_text()
        assert number in page.locator("#issue-result").inner_text()
        assert "rien à signaler" in page.locator("#issue-result").inner_text()  # screening: clear, in French
        page.locator(f'#person-badges a:has-text("{number}")').wait_for()
        with live.engine.connect() as conn:
            kinds = set(conn.execute(sa.select(audit_log.c.kind).where(
                audit_log.c.actor["person_id"].as_string() == str(pid))).scalars())
        assert {"identity.admin.persons.searched", "identity.admin.person_badges.viewed",
                "identity.badge.issued"} <= kinds
        assert phone.errors == []
    finally:
        phone.close()


def test_port_security_manages_a_person_and_an_organisation_and_the_session_renews(browser: Any, live: Live) -> None:
    """The new screens in one flow: the access token expires and the console renews it with the refresh
    token; a new person, a membership, an enrolment code and the screening on the person's page; an
    organisation deactivated (its client then gets no token) and reactivated; signing out revokes."""
    haulier = uuid.uuid4()
    with live.engine.begin() as conn:
        conn.execute(organisations.insert().values(id=haulier, name="Haulage Van Dam", kind="transport_operator",
                                                   eori=f"BE07{haulier.int % 10**8:08d}", created_at=now()))
    machine = create_client(live.engine, name="Van Dam back end", role="transport_operator", organisation_id=haulier,
                            now=now())
    http = httpx.Client(base_url=live.base, timeout=30)

    def client_credentials() -> Any:
        return http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=machine)  # type: ignore[arg-type]

    assert client_credentials().status_code == 200
    pid, code, client_id = officer(live)
    phone = Phone(browser)
    try:
        page = sign_in(phone, live, code)
        # The access token has expired (as after ten idle minutes): a reload renews it, no new login.
        first = page.evaluate("JSON.parse(sessionStorage.getItem('qg.console.tokens'))")
        assert first["refresh_token"]
        page.evaluate("var t = JSON.parse(sessionStorage.getItem('qg.console.tokens')); t.expires_at = 0;"
                      "sessionStorage.setItem('qg.console.tokens', JSON.stringify(t))")
        page.reload()
        page.locator("#tabs").wait_for()
        renewed = page.evaluate("JSON.parse(sessionStorage.getItem('qg.console.tokens'))")
        assert renewed["refresh_token"] != first["refresh_token"] and renewed["expires_at"] > 0
        # A new person, then his page: screening, a membership, an enrolment code.
        page.fill("#p-given", "Kees")
        page.fill("#p-family", "Smit")
        page.fill("#p-employer", str(haulier))
        page.click("#do-person")
        page.wait_for_url(live.base + "/console/#person/*")
        person = uuid.UUID(page.url.rsplit("/", 1)[1])
        page.locator("#person-name:has-text('Kees Smit')").wait_for()
        assert page.locator("#person-screening").get_attribute("data-screening") in ("clear", "unavailable")
        page.fill("#m-org", str(haulier))
        page.select_option("#m-role", "driver")
        page.click("#do-member")
        page.locator("#person-members li[data-role=driver]").wait_for()
        # Taken away again, by the Remove button beside it (a confirmation first).
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#person-members button[data-role=driver]")
        page.locator("#person-members li[data-role=driver]").wait_for(state="detached")
        page.fill("#m-org", str(haulier))
        page.select_option("#m-role", "driver")
        page.fill("#m-until", "2999-12-31")  # given until a date: the list shows its end
        page.click("#do-member")
        page.locator("#person-members li[data-role=driver]:has-text('2999')").wait_for()
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#do-enrol-code")
        page.locator("#enrol-code-box:not([hidden])").wait_for()
        assert len(page.locator("#enrol-code").inner_text()) >= 12
        # The organisation: deactivated with a reason, its client refused; then reactivated. The tab's
        # own load (every organisation) is held until the search has answered: its late answer must not
        # add rows to the search's (it once did, and a row showed twice).
        held: list[Any] = []

        def hold_the_tab_load(route: Any) -> None:
            if route.request.method == "GET" and "q=" not in route.request.url:
                held.append(route)
            else:
                route.continue_()

        page.route("**/admin/v1/organisations*", hold_the_tab_load)
        page.click('a[href="#orgs"]')
        page.fill("#org-q", "van dam")
        page.click("#org-find")
        row = page.locator(f'#org-list li[data-org="{haulier}"]')
        row.wait_for()
        assert len(held) == 1, "the tab did not load its list"
        with page.expect_response(lambda r: "/admin/v1/organisations" in r.url and "q=" not in r.url):
            held.pop().continue_()
        page.wait_for_timeout(300)  # the late answer's handler has run
        page.unroute("**/admin/v1/organisations*")
        assert page.locator("#org-list li").count() == row.count() == 1
        page.once("dialog", lambda dialog: dialog.accept("Contract ended"))
        row.locator("button[data-action=deactivate]").click()
        row.locator("button[data-action=reactivate]").wait_for()
        assert "Contract ended" in row.inner_text()
        refused = client_credentials()
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client", refused.text
        page.once("dialog", lambda dialog: dialog.accept("New contract"))
        row.locator("button[data-action=reactivate]").click()
        row.locator("button[data-action=deactivate]").wait_for()
        # Within seconds of the deactivation the client's revocation cutoff (its 5 s margin) is still ahead:
        # the token endpoint says when to come back rather than hand out a token already refused.
        back = client_credentials()
        if back.status_code == 429:
            assert back.json()["error"] == "slow_down" and 0 < int(back.headers["retry-after"]) <= 7, back.text
            time.sleep(int(back.headers["retry-after"]))
            back = client_credentials()
        assert back.status_code == 200, back.text
        with live.engine.connect() as conn:
            kinds = [k for k, in conn.execute(sa.select(audit_log.c.kind).where(
                audit_log.c.actor["person_id"].as_string() == str(pid)).order_by(audit_log.c.id))]
            roles = set(conn.execute(sa.select(memberships.c.role).where(memberships.c.person_id == person)).scalars())
        assert roles == {"driver"}
        for kind in ("identity.admin.person.created", "identity.admin.person.viewed", "identity.admin.membership.added",
                     "identity.admin.enrolment_code.requested", "identity.admin.organisation.deactivated",
                     "identity.admin.organisation.reactivated"):
            assert kind in kinds, kinds
        # Signing out revokes the session's refresh token at the provider, then ends the provider's login
        # session (RP-initiated logout with the id token) and comes back to /console/ (review 128, finding 1).
        last = page.evaluate("JSON.parse(sessionStorage.getItem('qg.console.tokens'))")
        assert last["id_token"]
        assert live_sessions(live, pid) == 1
        with page.expect_response(lambda r: "/oauth2/revoke" in r.url) as revoked:
            page.click("#signout")
        assert revoked.value.status == 200
        page.wait_for_url(live.base + "/console/")
        page.locator("#signin").wait_for()
        assert live_sessions(live, pid) == 0
        r = http.post("/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": last["refresh_token"],
                                             "client_id": client_id})
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
        # Sign in again: the passkey login page, not the officer's console straight away.
        page.click("#signin")
        page.wait_for_url(re.compile(re.escape(live.base) + r"/login\?return_to="))
        page.locator("#login").wait_for()
        assert page.evaluate("sessionStorage.getItem('qg.console.tokens')") is None
        assert phone.errors == []
    finally:
        phone.close()
        http.close()

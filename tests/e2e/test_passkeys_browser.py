"""Passkey enrolment and login in a real browser, then the driver app's code flow and its pickups.

Chromium's virtual authenticator (CDP ``WebAuthn.addVirtualAuthenticator``: CTAP2, internal,
resident keys, user verification) plays the phone; py_webauthn on the server verifies what it made.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest
import sqlalchemy as sa

from identity.authn.enrolment import NO_ROLE_REFUSED, issue_code
from identity.bootstrap import create_client
from quaygate.schema import audit_log, login_sessions, memberships, release_events, webauthn_credentials
from release_service.domain.release import LightKind, LightStatus
from release_service.services import issue, lifecycle, nominate
from tests.factories import do, issue_cmd, port

from .conftest import Live

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIMEOUT = 20_000  # ms for one navigation or element (a slow CI machine), not a timing assertion


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Seed:
    person_id: uuid.UUID
    code: str
    container: str
    release_id: uuid.UUID
    client_id: str
    parties: Any  # tests.factories.port's: the line, the haulier, the driver ...


def seed(live: Live) -> Seed:
    """A haulier, a driver with a badge and a driver membership, the driver app, an enrolment code and
    one right nominated to the driver (issued by the line to the haulier, all lights green)."""
    engine = live.engine
    p = port(engine)
    with engine.begin() as conn:
        conn.execute(memberships.insert().values(person_id=p.driver, organisation_id=p.haul.organisation_id,
                                                 role="driver", created_at=now()))
    # Registered as the demo registers it: ES256 id tokens, which app.js verifies with WebCrypto's ECDSA.
    client_id, _ = create_client(
        engine, name="quaygate driver app", role="driver_app", organisation_id=None, auth_method="none",
        redirect_uris=[live.base + "/app/callback"], post_logout_redirect_uris=[live.base + "/app/"], now=now(),
        extra_metadata={"id_token_signed_response_alg": "ES256"},
    )
    code, _ = issue_code(engine, p.driver, created_by="e2e", now=now(), refused_roles=NO_ROLE_REFUSED)
    cmd = issue_cmd(p, 7, to=p.haul.organisation_id)
    right = do(engine, lambda uow: issue.issue(uow, p.line, cmd, now())[0])
    do(engine, lambda uow: lifecycle.set_light(uow, p.customs, right.id, LightKind.CUSTOMS, LightStatus.GREEN,
                                               None, now()))
    do(engine, lambda uow: lifecycle.set_light(uow, p.terminal, right.id, LightKind.TERMINAL, LightStatus.GREEN,
                                               None, now()))
    start = now() + timedelta(hours=2)
    do(engine, lambda uow: nominate.nominate(
        uow, p.haul, right.id,
        nominate.NominateCommand("1ABC123", "BE", p.driver, slot_start=start, slot_end=start + timedelta(hours=1)),
        now()))
    return Seed(p.driver, code, cmd.container_number, right.id, client_id, p)


class Phone:
    """One browser tab with a virtual platform authenticator, recording page errors and CSP reports."""

    def __init__(self, browser: Any, *, verified: bool = True, locale: str = "en-GB") -> None:
        self.context = browser.new_context(locale=locale)
        self.context.set_default_timeout(TIMEOUT)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("console", self._console)
        self.cdp = self.context.new_cdp_session(self.page)
        self.cdp.send("WebAuthn.enable")
        self.authenticator = self.cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
            "isUserVerified": verified, "automaticPresenceSimulation": True,
        }})["authenticatorId"]

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and "Content Security Policy" in msg.text:
            self.errors.append(f"csp: {msg.text}")

    def credentials(self) -> list[dict[str, Any]]:
        return list(self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.authenticator})["credentials"])

    def user_verified(self, value: bool) -> None:
        self.cdp.send("WebAuthn.setUserVerified", {"authenticatorId": self.authenticator, "isUserVerified": value})

    def session_cookie(self, name: str) -> str | None:
        return next((c["value"] for c in self.context.cookies() if c["name"] == name), None)

    def close(self) -> None:
        self.context.close()


def enrol(phone: Phone, live: Live, code: str, name: str = "Pixel 8") -> None:
    page = phone.page
    page.goto(live.base + "/enrol")
    page.fill("#code", code)
    page.fill("#name", name)
    page.click("#enrol")


def live_sessions(live: Live, person_id: uuid.UUID) -> int:
    with live.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(login_sessions).where(
            login_sessions.c.person_id == person_id, login_sessions.c.ended_at.is_(None))).scalar_one())


def test_enrol_use_the_app_log_out_and_log_in_again_with_the_passkey(browser: Any, live: Live) -> None:
    s = seed(live)
    phone = Phone(browser)
    page = phone.page
    try:
        # 1. Enrolment with the badge office's code: a discoverable credential made with UV.
        enrol(phone, live, s.code)
        card = page.locator(f'[data-container="{s.container}"]')
        card.wait_for()  # /app/ ran the code flow (authorize -> callback -> token) and listed the pickup
        assert page.url == live.base + "/app/", "the code left the address bar"
        creds = phone.credentials()
        assert len(creds) == 1 and creds[0]["isResidentCredential"] is True
        with live.engine.connect() as conn:
            stored = conn.execute(sa.select(webauthn_credentials.c.name, webauthn_credentials.c.person_id)).all()
        assert [(r.name, r.person_id) for r in stored] == [("Pixel 8", s.person_id)]

        # 2. The card: container, terminal, slot, validity, the three lights with words, the gate.
        text = card.inner_text()
        assert s.container[:4] in text and "BEANR-K1700" in text
        for kind in ("commercial", "customs", "terminal"):
            light = card.locator(f'[data-light="{kind}"]')
            assert light.get_attribute("data-status") == "green"
            assert light.inner_text().strip().endswith("cleared")
        assert "Nominated to you" in text and "Ready for pickup" in text and "Not at the gate yet" in text
        tokens = page.evaluate("() => JSON.parse(sessionStorage.getItem('qg.app.tokens'))")
        assert tokens["access_token"] and tokens["refresh_token"] and tokens["id_token"]
        # The page kept the id token only after checking its ES256 signature (app.js verifyIdToken).
        header = json.loads(base64.urlsafe_b64decode(tokens["id_token"].split(".")[0] + "=="))
        assert header["alg"] == "ES256"
        assert page.evaluate("() => Object.keys(localStorage).filter(k => k.indexOf('token') >= 0)") == []

        # 3. RP-initiated logout ends the provider session and comes back to /app/, logged out. First the
        #    app revokes its refresh token (RFC 7009), which outlives the provider session (review 120,
        #    finding 1): it no longer refreshes.
        with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/oauth2/revoke")) as sent:
            page.click("#logout")
        assert parse_qs(sent.value.post_data or "")["token"] == [tokens["refresh_token"]]
        page.locator("#signin").wait_for()
        assert page.url.startswith(live.base + "/app/")
        assert live_sessions(live, s.person_id) == 0
        assert page.evaluate("() => sessionStorage.getItem('qg.app.tokens')") is None
        stale = page.request.post(live.base + "/oauth2/token", form={
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": s.client_id})
        assert stale.status == 400 and stale.json()["error"] == "invalid_grant"

        # 4. Log in again: no session, so /oauth2/authorize sends the browser to /login; the passkey logs
        #    in; return_to resumes the authorization request; the app lists the pickup again.
        page.click("#signin")
        page.wait_for_url(re.compile(re.escape(live.base) + r"/login\?return_to="))
        assert page.locator("html").get_attribute("lang") == "en"
        page.click("#login")
        card.wait_for()
        assert live_sessions(live, s.person_id) == 1
        assert phone.errors == []
    finally:
        phone.close()


def test_without_user_verification_the_login_fails_and_no_session_is_set(browser: Any, live: Live) -> None:
    s = seed(live)
    phone = Phone(browser)
    page = phone.page
    cookie = live.settings.session_cookie
    try:
        enrol(phone, live, s.code)
        page.locator(f'[data-container="{s.container}"]').wait_for()
        phone.context.clear_cookies()
        with live.engine.begin() as conn:  # the enrolment's own session ends: start from nothing
            conn.execute(login_sessions.update().values(ended_at=now()))

        phone.user_verified(False)
        page.goto(live.base + "/login")
        page.click("#login")
        msg = page.locator("#msg")
        msg.wait_for()
        assert "The passkey was not used" in msg.inner_text()
        assert page.url == live.base + "/login"
        assert phone.session_cookie(cookie) is None
        assert live_sessions(live, s.person_id) == 0

        # The same passkey with user verification works: the failure above was the missing UV.
        phone.user_verified(True)
        page.click("#login")
        page.wait_for_url(live.base + "/app/**")
        assert phone.session_cookie(cookie) is not None
        assert live_sessions(live, s.person_id) == 1
    finally:
        phone.close()


def test_pages_follow_the_language_menu_and_the_browser(browser: Any, live: Live) -> None:
    phone = Phone(browser, locale="de-DE")
    page = phone.page
    try:
        page.goto(live.base + "/login")
        assert page.locator("html").get_attribute("lang") == "de"
        assert page.locator("#login").inner_text() == "Mit Passkey anmelden"
        page.click(".lang summary")
        page.click('.lang button[value="nl"]')
        page.wait_for_url(live.base + "/login")
        assert page.locator("html").get_attribute("lang") == "nl"
        assert page.locator("#login").inner_text() == "Aanmelden met toegangssleutel"
        assert phone.errors == []
    finally:
        phone.close()


def last_event(live: Live, release_id: uuid.UUID) -> tuple[str, dict[str, Any]]:
    with live.engine.connect() as conn:
        row = conn.execute(sa.select(release_events.c.type, release_events.c.actor, release_events.c.data)
                           .where(release_events.c.release_id == release_id)
                           .order_by(release_events.c.seq.desc()).limit(1)).one()
    return row.type, {**row.data, "actor_person_id": row.actor.get("person_id")}


def test_the_driver_accepts_a_nomination(browser: Any, live: Live) -> None:
    s = seed(live)
    phone = Phone(browser)
    page = phone.page
    try:
        enrol(phone, live, s.code)
        card = page.locator(f'[data-container="{s.container}"]')
        card.wait_for()
        card.locator('[data-action="accept"]').click()
        card.locator('[data-response="accepted"]').wait_for()  # the list reloaded from the API
        assert page.locator("#msg").inner_text() == "You accepted this pickup."
        kind, data = last_event(live, s.release_id)
        assert kind == "release.nomination.accepted" and data["actor_person_id"] == str(s.person_id)
        assert phone.errors == []
    finally:
        phone.close()


def test_a_pickup_not_valid_yet_is_not_ready_and_says_from_when(browser: Any, live: Live) -> None:
    """A nominated right with three green lights whose window the line then moved to open tomorrow: the
    gate refuses it (``right_not_yet_valid``), so its card says from when it is valid, not "Ready for
    pickup" (review 159, finding 4: ``pickable`` was the three lights alone, and the card said ready)."""
    s = seed(live)
    p = s.parties
    cmd = issue_cmd(p, 8, to=p.haul.organisation_id)
    later = do(live.engine, lambda uow: issue.issue(uow, p.line, cmd, now())[0])
    for who, kind in ((p.customs, LightKind.CUSTOMS), (p.terminal, LightKind.TERMINAL)):
        do(live.engine, lambda uow, who=who, kind=kind: lifecycle.set_light(
            uow, who, later.id, kind, LightStatus.GREEN, None, now()))
    do(live.engine, lambda uow: nominate.nominate(
        uow, p.haul, later.id, nominate.NominateCommand("1ABC123", "BE", p.driver), now()))
    opens = now() + timedelta(days=1)
    do(live.engine, lambda uow: lifecycle.update(
        uow, p.line, later.id, now(), valid_from=opens, valid_until=None, bill_of_lading=None))
    phone = Phone(browser)
    page = phone.page
    try:
        enrol(phone, live, s.code)
        card = page.locator(f'[data-container="{cmd.container_number}"]')
        card.wait_for()
        said = card.locator("p.notready").inner_text()
        assert said.startswith("Not ready yet: valid from ") and len(said) > len("Not ready yet: valid from ")
        assert "Ready for pickup" not in card.inner_text() and card.locator("p.ready").count() == 0
        ready = page.locator(f'[data-container="{s.container}"]')  # valid now, lights green: ready
        assert ready.locator("p.ready").inner_text() == "Ready for pickup"
        assert phone.errors == []
    finally:
        phone.close()


def test_a_truck_nominated_after_the_card_was_shown_is_not_accepted(browser: Any, live: Live) -> None:
    """The driver's answer is bound to the nomination his card shows (driver surface review, finding 2):
    app.js sends the right's version the card was built from in If-Match. The operator nominates another
    truck after the card was drawn; the driver's tap is refused (412) and nothing is recorded; the app
    reads the list again, says the pickup changed and shows the new truck, which he then accepts."""
    s = seed(live)
    phone = Phone(browser)
    page = phone.page
    try:
        enrol(phone, live, s.code)
        card = page.locator(f'[data-container="{s.container}"]')
        card.get_by_text("1ABC123 (BE)").wait_for()
        do(live.engine, lambda uow: nominate.nominate(
            uow, s.parties.haul, s.release_id, nominate.NominateCommand("2XYZ987", "BE", s.person_id), now()))
        card.locator('[data-action="accept"]').click()
        card.get_by_text("2XYZ987 (BE)").wait_for()  # the list read again: the card shows the new truck
        assert page.locator("#msg").inner_text() == ("This pickup changed while you had it open. Nothing was sent: "
                                                      "check it and answer again.")
        assert last_event(live, s.release_id)[0] == "release.renominated"  # no answer recorded
        card.locator('[data-action="accept"]').click()  # the card as it is now: accepted
        card.locator('[data-response="accepted"]').wait_for()
        kind, data = last_event(live, s.release_id)
        assert kind == "release.nomination.accepted" and data["actor_person_id"] == str(s.person_id)
        assert phone.errors == []
    finally:
        phone.close()


def test_the_driver_refuses_a_nomination_with_a_reason(browser: Any, live: Live) -> None:
    s = seed(live)
    phone = Phone(browser, locale="fr-BE")
    page = phone.page
    try:
        enrol(phone, live, s.code)
        card = page.locator(f'[data-container="{s.container}"]')
        card.wait_for()
        card.locator('[data-action="refuse"]').click()
        card.locator('[data-reason="wrong_truck"]').click()
        card.locator('[data-response="refused"]').wait_for()
        assert page.locator("#msg").inner_text() == "Vous avez refusé cet enlèvement."
        kind, data = last_event(live, s.release_id)
        assert kind == "release.nomination.refused" and data.get("reason") == "wrong_truck"
        assert phone.errors == []
    finally:
        phone.close()


def test_the_driver_refuses_a_nomination_he_accepted(browser: Any, live: Live) -> None:
    """The truck breaks down after he accepted: the card still offers to refuse, with a reason (review 170,
    finding 5: once accepted, the card showed its status alone, and the gate kept admitting the nomination
    he could no longer honour). Accepting again is not offered."""
    s = seed(live)
    phone = Phone(browser)
    page = phone.page
    try:
        enrol(phone, live, s.code)
        card = page.locator(f'[data-container="{s.container}"]')
        card.wait_for()
        card.locator('[data-action="accept"]').click()
        card.locator('[data-response="accepted"]').wait_for()
        assert card.locator('[data-action="accept"]').count() == 0
        card.locator('[data-action="refuse"]').click()
        card.locator('[data-reason="unavailable"]').click()
        card.locator('[data-response="refused"]').wait_for()
        assert card.locator('[data-action="refuse"]').count() == 0
        kind, data = last_event(live, s.release_id)
        assert kind == "release.nomination.refused" and data.get("reason") == "unavailable"
        assert data["actor_person_id"] == str(s.person_id)
        assert phone.errors == []
    finally:
        phone.close()


def test_account_page_lists_renames_and_adds_passkeys(browser: Any, live: Live) -> None:
    s = seed(live)
    phone = Phone(browser)
    page = phone.page
    try:
        enrol(phone, live, s.code)
        page.locator(f'[data-container="{s.container}"]').wait_for()
        page.goto(live.base + "/account")
        item = page.locator(".pk").first
        item.wait_for()
        assert item.locator(".pk-name").inner_text() == "Pixel 8"
        item.locator('[data-action="rename"]').click()
        item.locator("input").fill("Work phone")
        item.locator('button[type="submit"]').click()
        page.locator("#msg.ok").wait_for()
        assert item.locator(".pk-name").inner_text() == "Work phone"
        with live.engine.connect() as conn:
            assert conn.execute(sa.select(webauthn_credentials.c.name)).scalar_one() == "Work phone"
        # Sign out everywhere else: confirmed, done, and this page stays signed in.
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#elsewhere").click()
        page.locator("#msg.ok", has_text="(0 ").wait_for()
        with live.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(
                audit_log.c.kind == "identity.session.signed_out_elsewhere")).scalar_one() == 1
        page.reload()
        page.locator(".pk").first.wait_for()  # still signed in
    finally:
        phone.close()

"""Whose session the driver app and the provider's pages act for, in a real browser (review 150).

The logout confirmation ("Sign out?") must end the session when the person clicks it: Chromium sends the
Origin the provider checks only under the page's referrer policy (Fetch, "serializing a request origin").
A second driver who logs in or enrols in the tab where the first one used the app gets his own app, not
the first one's tokens (a login or an enrolment clears them, and the app drops tokens of another session).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
import sqlalchemy as sa

from identity.authn.enrolment import NO_ROLE_REFUSED, issue_code
from quaygate.schema import grants, memberships
from release_service.domain.release import LightKind, LightStatus
from release_service.services import issue, lifecycle, nominate
from tests.factories import add_driver, do, issue_cmd

from .conftest import Live
from .test_passkeys_browser import Phone, Seed, enrol, last_event, live_sessions, now, seed

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_click_on_the_sign_out_confirmation_ends_the_session(browser: Any, live: Live) -> None:
    """Review 150, finding 1: the driver logs in again at /login (his session replaced) and his app logs
    out with its id token, which names the replaced session: he is asked "Sign out?". His click posted
    the form with ``Origin: null`` (the page was sent with ``Referrer-Policy: no-referrer``), which the
    provider refuses as no page of its own: nothing ended and "Sign out?" came again."""
    s = seed(live)
    phone = Phone(browser)
    page = phone.page
    try:
        enrol(phone, live, s.code)
        page.locator(f'[data-container="{s.container}"]').wait_for()
        old = page.evaluate("() => JSON.parse(sessionStorage.getItem('qg.app.tokens'))")["id_token"]
        page.goto(live.base + "/login")
        page.click("#login")  # a second login in this browser: a new session replaces the enrolment's
        page.wait_for_url(live.base + "/app/**")
        shown(page)  # the app is done (its fresh authorization, finding 2 below)
        assert live_sessions(live, s.person_id) == 1

        bye = live.base + "/app/"
        page.goto(live.base + "/oauth2/logout?" + urlencode(
            {"id_token_hint": old, "post_logout_redirect_uri": bye, "state": "bye-1"}))
        page.get_by_role("heading", name="Sign out?").wait_for()
        assert live_sessions(live, s.person_id) == 1  # asked, nothing ended yet
        with page.expect_response(lambda r: r.request.method == "POST" and "/oauth2/logout" in r.url) as answer:
            page.get_by_role("button", name="Sign out").click()
        assert answer.value.status == 302, answer.value.text()
        assert answer.value.request.all_headers().get("origin") == live.base
        assert answer.value.headers["location"] == bye + "?state=bye-1"
        assert live_sessions(live, s.person_id) == 0
        assert phone.session_cookie(live.settings.session_cookie) is None
        assert phone.errors == []
    finally:
        phone.close()


@dataclass
class Driver:
    person_id: uuid.UUID
    code: str
    container: str
    release_id: uuid.UUID


def another_driver(live: Live, s: Seed, n: int = 8, plate: str = "2XYZ987") -> Driver:
    """A second driver of the same haulier, with his own enrolment code and his own pickup (as seed's)."""
    p = s.parties
    person = add_driver(live.engine, p.haul.organisation_id)
    with live.engine.begin() as conn:
        conn.execute(memberships.insert().values(person_id=person, organisation_id=p.haul.organisation_id,
                                                 role="driver", created_at=now()))
    code, _ = issue_code(live.engine, person, created_by="e2e", now=now(), refused_roles=NO_ROLE_REFUSED)
    cmd = issue_cmd(p, n, to=p.haul.organisation_id)
    right = do(live.engine, lambda uow: issue.issue(uow, p.line, cmd, now())[0])
    for who, kind in ((p.customs, LightKind.CUSTOMS), (p.terminal, LightKind.TERMINAL)):
        do(live.engine, lambda uow, who=who, kind=kind: lifecycle.set_light(
            uow, who, right.id, kind, LightStatus.GREEN, None, now()))
    start = now() + timedelta(hours=3)
    do(live.engine, lambda uow: nominate.nominate(
        uow, p.haul, right.id,
        nominate.NominateCommand(plate, "BE", person, slot_start=start, slot_end=start + timedelta(hours=1)), now()))
    return Driver(person, code, cmd.container_number, right.id)


def grant_revoked(live: Live, person_id: uuid.UUID, wait: float = 10.0) -> bool:
    """Whether the person's one grant is revoked, once it is (the app sends the revocation with keepalive
    and goes on without waiting), within ``wait`` seconds. Read in the database: a refresh to find out
    would rotate the token."""
    deadline = time.monotonic() + wait
    while True:
        with live.engine.connect() as conn:
            revoked = conn.execute(sa.select(grants.c.revoked_at).where(grants.c.person_id == person_id)).scalar_one()
        if revoked is not None or time.monotonic() > deadline:
            return revoked is not None
        time.sleep(0.1)


def shown(page: Any) -> list[str]:
    """The containers of the cards the app shows, once it shows one."""
    page.locator(".card").first.wait_for()
    return [str(c) for c in page.locator(".card").evaluate_all("cards => cards.map(c => c.dataset.container)")]


def test_a_second_driver_enrolling_in_the_same_tab_gets_his_own_app(browser: Any, live: Live) -> None:
    """Review 150, finding 2: driver A enrols and sees his pickup; driver B enrols with his own code in the
    same tab and landed on /app/ with A's tokens still in sessionStorage: A's pickup, and B's Accept was
    recorded as A's. Then A logs in again there with his passkey: his app, not B's."""
    a = seed(live)
    b = another_driver(live, a)
    phone = Phone(browser)
    page = phone.page
    try:
        enrol(phone, live, a.code, "A's phone")
        assert shown(page) == [a.container]
        a_passkey = {c["credentialId"] for c in phone.credentials()}

        enrol(phone, live, b.code, "B's phone")
        page.wait_for_url(live.base + "/app/")
        assert shown(page) == [b.container]
        page.locator(f'[data-container="{b.container}"] [data-action="accept"]').click()
        page.locator(f'[data-container="{b.container}"] [data-response="accepted"]').wait_for()
        kind, data = last_event(live, b.release_id)
        assert kind == "release.nomination.accepted" and data["actor_person_id"] == str(b.person_id)
        assert last_event(live, a.release_id)[0] == "release.nominated"  # A's pickup untouched

        # A's passkey alone on the phone (else Chromium's authenticator picks one): A logs in again.
        for cred in phone.credentials():
            if cred["credentialId"] not in a_passkey:
                phone.cdp.send("WebAuthn.removeCredential", {"authenticatorId": phone.authenticator,
                                                             "credentialId": cred["credentialId"]})
        assert len(phone.credentials()) == 1
        page.goto(live.base + "/login")
        page.click("#login")
        page.wait_for_url(live.base + "/app/**")
        assert shown(page) == [a.container]
        assert phone.errors == []
    finally:
        phone.close()


def test_the_app_drops_tokens_of_a_session_the_browser_no_longer_holds(browser: Any, live: Live) -> None:
    """A logs in in one tab; B enrols in another tab of the same browser (its cookie replaces A's session).
    The first tab, opened again, holds A's tokens in its sessionStorage: it drops them (their session is no
    longer the browser's) and runs a fresh authorization, which is B's."""
    a = seed(live)
    b = another_driver(live, a)
    phone = Phone(browser)
    page = phone.page
    try:
        enrol(phone, live, a.code, "A's phone")
        assert shown(page) == [a.container]
        a_refresh = page.evaluate("() => JSON.parse(sessionStorage.getItem('qg.app.tokens'))")["refresh_token"]
        other = phone.context.new_page()  # in front: a passkey ceremony needs the focus
        cdp = phone.context.new_cdp_session(other)
        cdp.send("WebAuthn.enable")
        cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
            "isUserVerified": True, "automaticPresenceSimulation": True}})
        other.goto(live.base + "/enrol")
        other.fill("#code", b.code)
        other.click("#enrol")
        assert shown(other) == [b.container]

        page.bring_to_front()
        with page.expect_request(lambda r: r.url.endswith("/oauth2/revoke")) as revoked:
            page.reload()
        assert parse_qs(revoked.value.post_data or "")["token"] == [a_refresh]
        assert shown(page) == [b.container]
        # A's grant, dropped, is revoked (B's enrolment ended A's session but left its grants to run).
        assert grant_revoked(live, a.person_id)
        stale = page.request.post(live.base + "/oauth2/token", form={
            "grant_type": "refresh_token", "refresh_token": a_refresh, "client_id": a.client_id})
        assert stale.status == 400 and stale.json()["error"] == "invalid_grant"
        assert phone.errors == []
    finally:
        phone.close()

"""Brokered login in Debian's Chromium: the driver taps "Log in with itsme" on our login page, logs in
at the itsme-like upstream (oidc-provider 9.13.3 under node, its development login and consent pages),
comes back signed in to the driver app, then registers a passkey on the account page in that same
session, logs out, and logs in again with that passkey alone (issue 6: "a passkey can be registered
right after a brokered login").

Our app is served on http://localhost:<port>, the upstream on http://127.0.0.1:<port> (another site).
Without Chromium, node or the upstream's npm packages the test skips locally and fails under CI.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bans.persons import set_national_id
from identity.domain.assurance import ACR_PASSKEY, ACR_UPSTREAM
from quaygate.schema import login_sessions, upstream_links, webauthn_credentials
from tests.upstream.world import NUMBER, World, build_world, now

from .test_passkeys_browser import Phone, live_sessions, seed

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.xdist_group("broker")]


@pytest.fixture
def world(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from build_world(engine, tmp_path, register=False)


def test_driver_logs_in_with_itsme_lands_in_the_app_and_adds_a_passkey(browser: Any, world: World) -> None:
    live = world.app
    s = seed(live)  # a haulier, the driver with a badge and a nominated pickup, the driver app client
    set_national_id(live.engine, s.person_id, NUMBER, pepper=live.settings.pepper_bytes(), now=now(),
                    actor="badge-office")
    phone = Phone(browser)
    page = phone.page
    try:
        page.goto(live.base + "/app/")  # no session: the app's code flow sends the browser to /login
        page.wait_for_url(re.compile(re.escape(live.base) + r"/login\?return_to="))
        itsme = page.locator("#broker-itsme")
        itsme.wait_for(state="visible")  # shown once /broker/providers lists the upstream
        itsme.click()

        # At the upstream: its own login page (a real itsme asks for the phone number, then the app).
        page.wait_for_url(re.compile(re.escape(world.upstream.issuer) + r"/interaction/"))
        page.fill('input[name="login"]', "jan")
        page.fill('input[name="password"]', "itsme")
        page.click('button[type="submit"]')
        page.wait_for_url(re.compile(re.escape(world.upstream.issuer) + r"/interaction/"))
        page.click('button[type="submit"]')  # consent to the claims asked for

        # Back here: the callback opened our login session and resumed the driver app's authorization.
        page.locator(f'[data-container="{s.container}"]').wait_for()
        assert page.url == live.base + "/app/"
        with live.engine.connect() as conn:
            sessions = conn.execute(sa.select(login_sessions.c.person_id, login_sessions.c.acr)).all()
            links = conn.execute(sa.select(upstream_links.c.person_id, upstream_links.c.sub)).all()
        assert [(r.person_id, r.acr) for r in sessions] == [(s.person_id, ACR_UPSTREAM)]
        assert [(r.person_id, r.sub) for r in links] == [(s.person_id, "jan")]
        assert phone.session_cookie("qg_broker") is None  # the browser binding is gone once used

        # Right after the brokered login: a passkey on this phone, from the account page.
        page.goto(live.base + "/account")
        page.locator("#status").wait_for()
        page.click("#add")
        page.locator("#msg.ok").wait_for()
        assert len(phone.credentials()) == 1
        with live.engine.connect() as conn:
            owners = conn.execute(sa.select(webauthn_credentials.c.person_id)).scalars().all()
        assert owners == [s.person_id]

        # Log out (RP-initiated logout from the app), then log in again with that passkey alone: no
        # upstream round trip; the new login session is a passkey login of the same person.
        page.goto(live.base + "/app/")
        card = page.locator(f'[data-container="{s.container}"]')
        card.wait_for()
        page.click("#logout")
        page.locator("#signin").wait_for()
        assert live_sessions(live, s.person_id) == 0
        page.click("#signin")
        page.wait_for_url(re.compile(re.escape(live.base) + r"/login\?return_to="))
        page.click("#login")
        card.wait_for()
        assert page.url == live.base + "/app/"
        with live.engine.connect() as conn:
            live_rows = conn.execute(sa.select(login_sessions.c.person_id, login_sessions.c.acr, login_sessions.c.amr)
                                     .where(login_sessions.c.ended_at.is_(None))).all()
        assert [(r.person_id, r.acr) for r in live_rows] == [(s.person_id, ACR_PASSKEY)]
        assert "fed" not in (live_rows[0].amr or [])
        assert phone.errors == []
    finally:
        phone.close()

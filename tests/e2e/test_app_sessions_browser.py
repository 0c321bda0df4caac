"""Whose session the driver app and the provider's pages act for, in a real browser (review 150).

The logout confirmation ("Sign out?") must end the session when the person clicks it: Chromium sends the
Origin the provider checks only under the page's referrer policy (Fetch, "serializing a request origin").
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from .conftest import Live
from .test_passkeys_browser import Phone, enrol, live_sessions, seed

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

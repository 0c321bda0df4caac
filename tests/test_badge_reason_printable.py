"""A badge change's reason is one line of printable text (found by the mender of review 174: a NUL in a
status change's reason answered 500 on PostgreSQL, which refuses it in text, and SQLite stored it)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from identity.domain import badges as rules
from quaygate.schema import badges

from .test_admin_console import Flow, _auth, _badge, _console, _officer, _token, flow, register  # noqa: F401


@pytest.mark.parametrize("reason", ["sto\x00len", "stolen\r\nblocked by: someone else", "\x1b[2Kstolen"])
def test_a_reason_with_a_control_character_is_refused_and_nothing_changes(flow: Flow, reason: str) -> None:  # noqa: F811
    _, badge_id = _badge(flow)
    token = _token(flow, _console(flow), _officer(flow, "port_security_admin"))
    r = flow.http.post(f"/admin/v1/badges/{badge_id}/status", json={"status": "blocked", "reason": reason},
                       headers=_auth(token))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "reason_unprintable"
    with flow.engine.connect() as conn:
        assert conn.execute(sa.select(badges.c.status).where(badges.c.id == badge_id)).scalar_one() == "active"
    r = flow.http.post(f"/admin/v1/badges/{badge_id}/status", json={"status": "blocked", "reason": "stolen"},
                       headers=_auth(token))
    assert r.status_code == 200 and r.json()["status_reason"] == "stolen"


def test_the_rule_for_every_badge_reason() -> None:
    assert rules.reason_given("  reported stolen ") == "reported stolen"
    for reason, code in (("", "reason_required"), ("   ", "reason_required"), ("x" * 501, "reason_too_long"),
                         ("a\x00b", "reason_unprintable"), ("a\tb", "reason_unprintable"),
                         ("a\x85b", "reason_unprintable"), ("a\ud800", "reason_unprintable")):
        with pytest.raises(rules.BadgeRefused) as err:
            rules.reason_given(reason)
        assert err.value.code == code, reason

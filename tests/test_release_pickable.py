"""``pickable``: the right's side of the gate's answer now, not its three lights alone (review 159, finding 4).

The driver app says "Ready for pickup" on ``pickable``; a right with three green lights that is not valid
yet, blocked, revoked or past its window was shown pickable, and the gate refused it
(``right_not_yet_valid``, ``right_blocked``, ``right_revoked``, ``right_expired``).
"""

# ruff: noqa: F811 - ``api`` is a fixture imported here and requested by name
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from quaygate.schema import releases

from .test_release_api import Api, api  # noqa: F401


def _green(api: Api, **extra: Any) -> str:
    rid = str(api.issue(**extra)["release"]["id"])
    for who in ("customs", "terminal"):
        r = api.http.put(f"/api/v1/releases/{rid}/lights/{who}", json={"status": "green"}, headers=api.as_(who))
        assert r.status_code == 200, r.text
    return rid


def _shown(api: Api, rid: str) -> dict[str, Any]:
    got = api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("line"))
    assert got.status_code == 200, got.text
    return got.json()  # type: ignore[no-any-return]


def test_pickable_is_the_rights_side_of_the_gate_now(api: Api) -> None:
    now = datetime.now(UTC)
    ready = _green(api, n=1)
    assert _shown(api, ready)["pickable"] is True

    later = _green(api, n=2, valid_from=(now + timedelta(days=1)).isoformat())
    shown = _shown(api, later)
    assert shown["state"] == "active" and all(v["status"] == "green" for v in shown["lights"].values())
    assert shown["pickable"] is False  # the gate refuses it: right_not_yet_valid

    blocked = _green(api, n=3)
    r = api.http.post(f"/api/v1/releases/{blocked}/block", json={"reason": "checking"}, headers=api.as_("line"))
    assert r.status_code == 200, r.text
    assert _shown(api, blocked)["pickable"] is False

    revoked = _green(api, n=4)
    r = api.http.post(f"/api/v1/releases/{revoked}/revoke", json={"reason": "duplicate"}, headers=api.as_("line"))
    assert r.status_code == 200, r.text
    assert _shown(api, revoked)["state"] == "revoked" and _shown(api, revoked)["pickable"] is False

    lapsed = _green(api, n=5)
    with api.engine.begin() as conn:  # past its window, not yet swept
        conn.execute(sa.update(releases).where(releases.c.id == uuid.UUID(lapsed)).values(
            valid_from=now - timedelta(hours=2), valid_until=now - timedelta(minutes=1)))
    assert _shown(api, lapsed)["state"] == "expired" and _shown(api, lapsed)["pickable"] is False

"""The driver app lists every pickup that is the driver's to act on (review 143, finding 2). It read one page of
``GET /api/v1/releases``, which for a driver holds his rights in every state, oldest first, 50 a page: after
some 50 pickups (completed, revoked and expired ones stay) each new nomination fell off the only page it read,
and the driver could no longer see, accept or refuse it. The app now asks for the live states only and
follows ``next_cursor``; this test makes the app's own requests, as ``app.js`` states them."""
# ruff: noqa: F811 - ``api`` is a fixture imported here and requested by name

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from release_service.domain.release import LIVE_STATES

from .test_release_driver_api import DriverApi, api  # noqa: F401

APP_JS = Path(__file__).parents[1] / "identity" / "web" / "static" / "app.js"


def _the_apps_request() -> tuple[list[str], int, int]:
    """The states, page size and page bound the app asks with (``var LIVE = [...], PAGE = n, MAX_PAGES = m;``)."""
    found = re.search(r'var LIVE = \[([^\]]*)\], PAGE = (\d+), MAX_PAGES = (\d+);', APP_JS.read_text())
    assert found, "app.js states the live states it lists, its page size and its page bound"
    states = re.findall(r'"([a-z_]+)"', found.group(1))
    return states, int(found.group(2)), int(found.group(3))


def _load(api: DriverApi, me: dict[str, str], states: list[str], page: int, bound: int) -> list[dict[str, Any]]:
    """What ``load()`` in app.js does: per live state, the pages until no ``next_cursor`` or the bound."""
    items: list[dict[str, Any]] = []
    for state in states:
        cursor: str | None = None
        for _ in range(bound):
            params = {"state": state, "limit": str(page), **({"cursor": cursor} if cursor else {})}
            r = api.http.get("/api/v1/releases", params=params, headers=me)
            assert r.status_code == 200, r.text
            items += r.json()["items"]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
    return items


def test_a_driver_with_fifty_older_pickups_still_sees_his_new_nominations(api: DriverApi) -> None:
    states, page, bound = _the_apps_request()
    assert "nominated" in states and {s for s in states} <= {s.value for s in LIVE_STATES}
    assert 1 <= page <= 500 and bound >= 1
    old = [api.nominated(n) for n in range(1, 51)]
    for rid in old:
        r = api.http.post(f"/api/v1/releases/{rid}/revoke", headers=api.as_("line"), json={"reason": "done"})
        assert r.status_code == 200, r.text
    new = [api.nominated(n) for n in (51, 52)]
    me = api.driver(api.p.driver)

    # The review's proof: the one page the app read held only the 50 revoked rights.
    first = api.http.get("/api/v1/releases", headers=me).json()
    assert {x["state"] for x in first["items"]} == {"revoked"} and first["next_cursor"] is not None

    seen = _load(api, me, states, page, bound)
    assert [x["id"] for x in seen] == new and {x["state"] for x in seen} == {"nominated"}
    # The cursor is followed within one state: one right a page finds both, in order.
    assert [x["id"] for x in _load(api, me, ["nominated"], 1, 3)] == new
    r = api.http.post(f"/api/v1/releases/{new[1]}/nomination:refuse", headers=me, json={"reason": "unavailable"})
    assert r.status_code == 200, r.text

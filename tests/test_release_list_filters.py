"""GET /api/v1/releases: its filters find what its answer shows (review 159).

Finding 2: ``state=`` filters on the state the answer shows (``effective_state``), not on the state stored:
a right past its window is expired before the sweeper writes it down (500 rights per 5 s), so
``state=expired`` finds it and ``state=active`` does not.
"""

# ruff: noqa: F811 - ``api`` is a fixture imported here and requested by name
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from quaygate.schema import releases
from release_service.domain.release import State

from .test_release_api import Api, api  # noqa: F401


def _set(api: Api, rid: str, **values: object) -> None:
    with api.engine.begin() as conn:
        conn.execute(sa.update(releases).where(releases.c.id == uuid.UUID(rid)).values(**values))


def _listed(api: Api, **params: str) -> list[tuple[str, str]]:
    r = api.http.get("/api/v1/releases", params=params, headers=api.as_("line"))
    assert r.status_code == 200, r.text
    return [(x["id"], x["state"]) for x in r.json()["items"]]


def test_the_state_filter_finds_what_the_answer_shows(api: Api) -> None:
    now = datetime.now(UTC)
    lapsed = {"valid_from": now - timedelta(hours=2), "valid_until": now - timedelta(minutes=1)}
    # (state stored, its window past?) -> the state the answer shows
    cases = {
        (State.ACTIVE, False): State.ACTIVE,
        (State.ACTIVE, True): State.EXPIRED,  # not yet swept
        (State.NOMINATED, False): State.NOMINATED,
        (State.NOMINATED, True): State.EXPIRED,  # not yet swept
        (State.GATED_IN, True): State.GATED_IN,  # a right gated in does not lapse
        (State.EXPIRED, True): State.EXPIRED,  # swept
        (State.REVOKED, True): State.REVOKED,
        (State.COMPLETED, False): State.COMPLETED,
    }
    shown: dict[str, State] = {}
    for n, ((stored, past), effective) in enumerate(cases.items(), start=1):
        rid = api.issue(n)["release"]["id"]
        _set(api, rid, state=stored.value, **(lapsed if past else {}))
        shown[rid] = effective

    for state in State:
        found = _listed(api, state=state.value)
        assert all(s == state.value for _, s in found), (state, found)
        assert {rid for rid, _ in found} == {rid for rid, s in shown.items() if s is state}, state
    # the review's proof: a right lapsed a minute ago is listed as expired, and only there
    lapsed_active = next(rid for rid, s in shown.items() if s is State.EXPIRED)
    assert (lapsed_active, "expired") in _listed(api, state="expired")
    assert lapsed_active not in {rid for rid, _ in _listed(api, state="active")}

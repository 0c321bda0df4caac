"""GET /api/v1/releases: its filters find what its answer shows (review 159).

Finding 2: ``state=`` filters on the state the answer shows (``effective_state``), not on the state stored:
a right past its window is expired before the sweeper writes it down (500 rights per 5 s), so
``state=expired`` finds it and ``state=active`` does not.

Finding 3: the other filters compare values as the domain does. A container number is stored in its ISO 6346
form (``iso6346.normalise``: upper case, no separators), a terminal in upper case, and a vessel call as
written but compared by its key (``vessel_call_key``: one live right per container and call); a filter
written another way found nothing.
"""

# ruff: noqa: F811 - ``api`` is a fixture imported here and requested by name
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from quaygate.schema import releases
from release_service.domain.release import VESSEL_CALL_FOLDS, State, vessel_call_key

from .factories import TERMINAL, container
from .test_release_api import Api, api, assert_problem  # noqa: F401


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


def test_the_filters_compare_as_the_domain_does(api: Api) -> None:
    rid = api.issue(1)["release"]["id"]  # OCLU0000011 on VC-1 at BEANR-K1700
    other = api.issue(2, vessel_call="VC-12")["release"]["id"]
    number = container(1)

    def ids(**params: str) -> set[str]:
        return {i for i, _ in _listed(api, **params)}

    for written in (number, number.lower(), f"{number[:4]} {number[4:10]}-{number[10]}".lower()):
        assert ids(container_number=written) == {rid}, written
    for written in (TERMINAL, TERMINAL.lower(), f" {TERMINAL.lower()} "):
        assert ids(terminal=written) == {rid, other}, written
    # the call the one-live-right rule takes for VC-1, written as the back ends write it
    for written in ("VC-1", "VC1", "vc 1", "v.c/1", "Vc\u00a0-1"):
        assert ids(vessel_call=written) == {rid}, written
    assert ids(vessel_call="VC-12") == {other}
    assert ids(vessel_call="VC") == set() and ids(vessel_call="C1") == set() and ids(vessel_call="--") == set()
    assert ids(container_number=number.lower(), vessel_call="vc1", terminal=TERMINAL.lower()) == {rid}
    # a container number no right can have: refused as the issue refuses it (422), like the other bad filters
    assert_problem(api.http.get("/api/v1/releases", params={"container_number": "OCLU0000012"},
                                headers=api.as_("line")), 422, "container_check_digit")
    assert_problem(api.http.get("/api/v1/releases", params={"container_number": "not one"},
                                headers=api.as_("line")), 422, "container_number_malformed")


def test_the_vessel_call_filter_folds_what_the_key_folds(api: Api) -> None:
    """Letters outside ASCII that the key turns into ASCII ones (``"ß".upper()`` is ``"SS"``, the ligature
    ``ﬁ`` is ``FI``, ``ı`` is ``I``) are folded in SQL as the key folds them, on both backends."""
    strasse = api.issue(1, vessel_call="Straße 7")["release"]["id"]
    fix = api.issue(2, vessel_call="ﬁx-ıı")["release"]["id"]
    ended = api.issue(3, vessel_call="é-ST-8")["release"]["id"]  # é is no letter of the key
    _set(api, ended, state=State.REVOKED.value, active_key=None)  # an ended right is found by its call too

    def ids(call: str) -> set[str]:
        return {i for i, _ in _listed(api, vessel_call=call)}

    assert ids("STRASSE7") == ids("strasse-7") == ids("Straße 7") == ids("ſtraſſe7") == {strasse}
    assert ids("STRAE7") == set()
    assert ids("FIXII") == ids("fix ii") == {fix}
    assert ids("ST8") == ids("ﬆ 8") == {ended}
    assert ids("EST8") == set()
    every = "".join(VESSEL_CALL_FOLDS) + " 9"  # each letter the key folds, in one call
    folds = api.issue(4, vessel_call=every)["release"]["id"]
    assert ids(vessel_call_key(every)) == ids(every) == {folds}

"""Writes on a right conditioned on its version: ETag and If-Match (RFC 9110 §8.8.3, §13.1.1; review 130, low).

Customs' or a line's lights were last-writer-wins with no precondition: a late retry of customs' earlier
``green`` (another Idempotency-Key, or none) silently lifted its later ``scan`` hold. The right's version is
now its entity tag: GET and every write answer that carries the right send ``ETag: "<version>"``, and every
write on a right honours ``If-Match``, compared in the use case under the row lock: a version the right is
no longer at is 412 ``precondition_failed`` with nothing written. Without the header a write goes through
as before."""
# ruff: noqa: F811 - ``api`` is a fixture imported here and requested by name

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import release_events, releases
from release_service.api.preconditions import parse_if_match
from release_service.domain.errors import DomainError
from release_service.services.common import IfMatch

from .factories import TERMINAL, container
from .test_release_api import Api, api, assert_problem  # noqa: F401


def _light(api: Api, rid: str, status: str, headers: dict[str, str] | None = None) -> Any:
    """Customs sets its light (a green after its scan says why: review of the lights, finding 1)."""
    return api.http.put(f"/api/v1/releases/{rid}/lights/customs", json={"status": status, "reason": "customs' word"},
                        headers={**api.as_("customs"), **(headers or {})})


def _stored(api: Api, rid: str) -> tuple[int, str, int]:
    """The right's version, its customs light and its count of events, as stored."""
    with api.engine.connect() as conn:
        version, customs = conn.execute(sa.select(releases.c.version, releases.c.customs_status)
                                        .where(releases.c.id == uuid.UUID(rid))).one()
        events = conn.execute(sa.select(sa.func.count()).select_from(release_events)
                              .where(release_events.c.release_id == uuid.UUID(rid))).scalar_one()
    return version, customs, events


def test_the_right_and_each_write_answer_carry_its_version_as_etag(api: Api) -> None:
    issued = api.http.post("/api/v1/releases", headers=api.as_("line"), json=_issue_body(api, 41))
    assert issued.status_code == 201, issued.text
    rid, version = issued.json()["release"]["id"], issued.json()["release"]["version"]
    assert issued.headers["etag"] == f'"{version}"'
    got = api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("customs"))
    assert got.headers["etag"] == f'"{got.json()["version"]}"' == f'"{version}"'
    hold = _light(api, rid, "scan", {"Idempotency-Key": "etag-1"})
    assert hold.status_code == 200, hold.text
    assert hold.headers["etag"] == f'"{hold.json()["release"]["version"]}"' == f'"{version + 1}"'
    replayed = _light(api, rid, "scan", {"Idempotency-Key": "etag-1"})  # the same answer, the same ETag
    assert replayed.json() == hold.json() and replayed.headers["etag"] == hold.headers["etag"]


def _issue_body(api: Api, n: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"container_number": container(n), "bill_of_lading": f"BL-{n}", "vessel_call": "VC-1", "terminal": TERMINAL,
            "release_to_organisation_id": str(api.p.fwd.organisation_id),
            "valid_from": (now - timedelta(hours=1)).isoformat(), "valid_until": (now + timedelta(days=3)).isoformat()}


def test_a_late_retry_of_an_earlier_light_is_refused_and_the_later_hold_stays(api: Api) -> None:
    rid = api.issue(42)["release"]["id"]
    green = _light(api, rid, "green", {"Idempotency-Key": "customs-green-1"})
    assert green.status_code == 200, green.text
    read = green.headers["etag"]
    scan = _light(api, rid, "scan", {"If-Match": read, "Idempotency-Key": "customs-scan-1"})
    assert scan.status_code == 200, scan.text  # the version it was decided on: it goes through
    before = _stored(api, rid)
    assert before[1] == "scan"
    # customs' first green, retried late under another key, conditioned on what it had read then
    late = _light(api, rid, "green", {"If-Match": read, "Idempotency-Key": "customs-green-retry"})
    assert_problem(late, 412, "precondition_failed")
    assert late.json()["title"] == "Precondition failed"
    assert _stored(api, rid) == before  # nothing written: the hold stays, no event
    # ... and with no key at all
    assert_problem(_light(api, rid, "green", {"If-Match": read}), 412, "precondition_failed")
    assert _stored(api, rid) == before
    shown = api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("customs")).json()
    assert shown["lights"]["customs"]["status"] == "scan"


@pytest.mark.parametrize("value", ["{current}", "*", ' "999", {current} ', '"a,b", {current}', "{current},,"])
def test_the_current_version_or_any_passes(api: Api, value: str) -> None:
    rid = api.issue(43)["release"]["id"]
    current = api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("customs")).headers["etag"]
    r = _light(api, rid, "scan", {"If-Match": value.format(current=current)})
    assert r.status_code == 200, r.text
    assert _stored(api, rid)[1] == "scan"


@pytest.mark.parametrize("value", ['"999"', 'W/"{version}"', '"{version}x"', '"0{version}"'])
def test_a_tag_that_is_not_the_current_version_strongly_is_refused(api: Api, value: str) -> None:
    rid = api.issue(44)["release"]["id"]
    version = api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("customs")).json()["version"]
    before = _stored(api, rid)
    assert_problem(_light(api, rid, "green", {"If-Match": value.format(version=version)}), 412, "precondition_failed")
    assert _stored(api, rid) == before


def test_a_hold_is_never_refused_for_a_stale_version_a_green_still_is(api: Api) -> None:
    """Review of the lights, finding 4: the holder moved the right's version (a nomination again) between
    customs' read and its conditioned scan hold, which was refused 412; the holder could starve customs'
    holds so. A light made red or scan can only make the right less pickable: a stale If-Match does not
    refuse it. A green after it still does, whoever's light it is."""
    p = api.p
    rid = api.issue(50)["release"]["id"]
    tid = api.http.post(f"/api/v1/releases/{rid}/transfers", headers=api.as_("fwd"),
                        json={"to_organisation_id": str(p.haul.organisation_id)}).json()["transfer"]["id"]
    assert api.http.post(f"/api/v1/transfers/{tid}/accept", headers=api.as_("haul")).status_code == 200
    read = api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("customs")).headers["etag"]
    for plate in ("1-ABC-123", "1-ABC-124"):  # the holder nominates, then again: the version moves past it
        r = api.http.put(f"/api/v1/releases/{rid}/nomination", headers=api.as_("haul"),
                         json={"driver_person_id": str(p.driver), "plate": {"text": plate, "country": "BE"}})
        assert r.status_code == 200, r.text
    scan = _light(api, rid, "scan", {"If-Match": read})
    assert scan.status_code == 200, scan.text
    assert _stored(api, rid)[1] == "scan"
    red = api.http.put(f"/api/v1/releases/{rid}/lights/commercial", headers={**api.as_("line"), "If-Match": read},
                       json={"status": "red", "reason": "unpaid"})
    assert red.status_code == 200, red.text
    before = _stored(api, rid)
    assert_problem(_light(api, rid, "green", {"If-Match": read}), 412, "precondition_failed")
    stale_green = api.http.put(f"/api/v1/releases/{rid}/lights/commercial",
                               headers={**api.as_("line"), "If-Match": read}, json={"status": "green"})
    assert_problem(stale_green, 412, "precondition_failed")
    assert _stored(api, rid) == before


@pytest.mark.parametrize("value", ["{version}", '"{version}', "{version}, *", '"{version}" "{version}"', ",", "",
                                   '"' + "1" * 1100 + '"'])
def test_a_malformed_if_match_is_400_and_writes_nothing(api: Api, value: str) -> None:
    rid = api.issue(45)["release"]["id"]
    version = api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("customs")).json()["version"]
    before = _stored(api, rid)
    assert_problem(_light(api, rid, "scan", {"If-Match": value.format(version=version)}), 400, "invalid_if_match")
    assert _stored(api, rid) == before


def test_without_if_match_the_late_write_still_wins_as_before(api: Api) -> None:
    rid = api.issue(46)["release"]["id"]
    assert _light(api, rid, "scan").status_code == 200
    assert _light(api, rid, "green").status_code == 200
    assert _stored(api, rid)[1] == "green"


def test_every_write_on_a_right_honours_if_match(api: Api) -> None:
    """Transfer, accept, nominate, the line's update, block, unblock, revoke: a stale version is 412,
    nothing written; the current one goes through."""
    p = api.p
    rid = api.issue(47)["release"]["id"]

    def etag() -> str:
        return str(api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("line")).headers["etag"])

    stale = '"999"'  # a version the right never reached

    def both(method: str, path: str, who: str, body: Any = None) -> Any:
        before = _stored(api, rid)
        kw: dict[str, Any] = {} if body is None else {"json": body}
        refused = api.http.request(method, path, headers={**api.as_(who), "If-Match": stale}, **kw)
        assert_problem(refused, 412, "precondition_failed")
        assert _stored(api, rid) == before
        done = api.http.request(method, path, headers={**api.as_(who), "If-Match": etag()}, **kw)
        assert done.status_code in (200, 201), done.text
        return done.json()

    tid = both("POST", f"/api/v1/releases/{rid}/transfers", "fwd",
               {"to_organisation_id": str(p.haul.organisation_id)})["transfer"]["id"]
    both("POST", f"/api/v1/transfers/{tid}/accept", "haul")
    both("PUT", f"/api/v1/releases/{rid}/nomination", "haul",
         {"driver_person_id": str(p.driver), "plate": {"text": "1-ABC-123", "country": "BE"}})
    both("PATCH", f"/api/v1/releases/{rid}", "line", {"bill_of_lading": "BL-47b"})
    both("POST", f"/api/v1/releases/{rid}/block", "line", {"reason": "payment"})
    both("POST", f"/api/v1/releases/{rid}/unblock", "line", {"reason": "paid"})
    both("PUT", f"/api/v1/releases/{rid}/lights/commercial", "line", {"status": "green"})  # a hold: any version
    both("POST", f"/api/v1/releases/{rid}/revoke", "line", {"reason": "done"})


def test_a_transfer_declined_or_withdrawn_honours_if_match(api: Api) -> None:
    p = api.p
    rid = api.issue(48)["release"]["id"]
    for action, who in (("decline", "haul"), ("withdraw", "fwd")):
        tid = api.http.post(f"/api/v1/releases/{rid}/transfers", headers=api.as_("fwd"),
                            json={"to_organisation_id": str(p.haul.organisation_id)}).json()["transfer"]["id"]
        before = _stored(api, rid)
        stale = {**api.as_(who), "If-Match": '"999"'}
        assert_problem(api.http.post(f"/api/v1/transfers/{tid}/{action}", headers=stale), 412, "precondition_failed")
        assert _stored(api, rid) == before
        current = api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("fwd")).headers["etag"]
        r = api.http.post(f"/api/v1/transfers/{tid}/{action}", headers={**api.as_(who), "If-Match": current})
        assert r.status_code == 200, r.text


def test_a_stranger_hears_not_found_before_any_precondition(api: Api) -> None:
    rid = api.issue(49)["release"]["id"]
    r = api.http.put(f"/api/v1/releases/{rid}/nomination", headers={**api.as_("haul2"), "If-Match": '"999"'},
                     json={"driver_person_id": str(api.p.driver), "plate": {"text": "1-ABC-123", "country": "BE"}})
    assert_problem(r, 404, "not_found")


def test_the_header_grammar() -> None:
    """RFC 9110 §8.8.3 and §5.6.1: ``*``, or a list of entity tags (a tag may hold a comma; empty elements
    are allowed); a weak tag is kept out, since If-Match compares strongly."""
    assert parse_if_match(" * ") == IfMatch(any=True)
    assert parse_if_match('"3"') == IfMatch(tags=frozenset({"3"}))
    assert parse_if_match(' "a,b" ,W/"4",  "5" ,') == IfMatch(tags=frozenset({"a,b", "5"}))
    assert parse_if_match('W/"4"').holds(4) is False
    assert parse_if_match('""') == IfMatch(tags=frozenset({""}))
    for bad in ("3", '"3', "*, \"3\"", '"3" "4"', ",", " ", '"a"b"', '"\x7f"'):
        with pytest.raises(DomainError) as refused:
            parse_if_match(bad)
        assert refused.value.code.value == "invalid_if_match"


def test_a_key_reused_with_another_if_match_is_another_request(api: Api) -> None:
    """The If-Match a write states is part of what the request is (draft-ietf-httpapi-idempotency-key-header,
    its error scenarios: a key reused with another request is 422). Customs' green on version N, retried
    under its key once it had read N+1 (a scan since), replayed the first 200 as if its green held at N+1;
    the scan stayed, the answer said green. Now 422 ``idempotency_key_reused``, nothing written. The same
    precondition, however spelled, still replays."""
    rid = api.issue(51)["release"]["id"]
    read = api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("customs")).headers["etag"]
    green = _light(api, rid, "green", {"If-Match": read, "Idempotency-Key": "customs-green-51"})
    assert green.status_code == 200, green.text
    scan = _light(api, rid, "scan", {"Idempotency-Key": "customs-scan-51"})
    assert scan.status_code == 200, scan.text
    before = _stored(api, rid)
    newer = scan.headers["etag"]
    for other in (newer, "*", f"{read}, {newer}"):
        retried = _light(api, rid, "green", {"If-Match": other, "Idempotency-Key": "customs-green-51"})
        assert_problem(retried, 422, "idempotency_key_reused")
        assert _stored(api, rid) == before
    for same in (read, f" {read} ", f"{read},"):  # the same precondition: the first answer again
        replayed = _light(api, rid, "green", {"If-Match": same, "Idempotency-Key": "customs-green-51"})
        assert replayed.status_code == 200 and replayed.json() == green.json()
    # a key first sent without If-Match, then with one, and the reverse: another request each time
    assert_problem(_light(api, rid, "scan", {"If-Match": newer, "Idempotency-Key": "customs-scan-51"}),
                   422, "idempotency_key_reused")
    assert_problem(_light(api, rid, "green", {"Idempotency-Key": "customs-green-51"}), 422, "idempotency_key_reused")
    assert _stored(api, rid) == before

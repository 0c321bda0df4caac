"""A transfer tells nobody but the right's holder whether an organisation exists or is active (review 130,
finding 4). Any viewer of a right (customs, a terminal, a past holder) could send a transfer naming an id
and learn from the answer (422 unknown_organisation, 409 organisation_inactive, 403 not_holder) whether it
is a company, and an active one: the recipient was looked up before the sender was checked. The sender is
checked first now (``ReleaseRight.require_sender``), as review 110 did for issuing."""
# ruff: noqa: F811 - ``api`` is a fixture imported here and requested by name

from __future__ import annotations

import uuid
from typing import Any

from quaygate.schema import organisations
from release_service.domain.parties import OrgKind

from .factories import add_org
from .test_release_api import Api, api, assert_problem  # noqa: F401


def _transfer(api: Api, rid: str, who: str, to: uuid.UUID | None) -> Any:
    return api.http.post(f"/api/v1/releases/{rid}/transfers", json={"to_organisation_id": str(to)},
                         headers=api.as_(who))


def test_only_the_holder_learns_whether_a_recipient_exists(api: Api) -> None:
    rid = str(api.issue(1)["release"]["id"])
    tid = _transfer(api, rid, "fwd", api.p.haul.organisation_id).json()["transfer"]["id"]
    assert api.http.post(f"/api/v1/transfers/{tid}/accept", headers=api.as_("haul")).status_code == 200
    inactive = add_org(api.engine, OrgKind.TRANSPORT_OPERATOR).organisation_id
    with api.engine.begin() as conn:
        conn.execute(organisations.update().where(organisations.c.id == inactive).values(active=False))
    unknown, active = uuid.uuid4(), api.p.haul2.organisation_id
    for who in ("customs", "terminal", "fwd"):  # fwd: the past holder
        for to in (unknown, inactive, active):
            assert_problem(_transfer(api, rid, who, to), 403, "not_holder")
    # The holder may send it, so it is told why it cannot send it there.
    assert_problem(_transfer(api, rid, "haul", unknown), 422, "unknown_organisation")
    assert_problem(_transfer(api, rid, "haul", inactive), 409, "organisation_inactive")
    assert _transfer(api, rid, "haul", active).status_code == 201


def test_a_company_whose_offer_ended_learns_nothing_of_the_right_through_the_transfer(api: Api) -> None:
    """Review 143, finding 1: a company offered a right that declined it (or whose offer was withdrawn or
    cancelled) no longer sees the right (404), yet its old transfer's routes checked If-Match for it: 412 for
    a wrong version, 409 for the right one, a binary search away from watching a right it may not see. It
    hears ``transfer_not_pending`` whatever version it names now, as with none."""
    p = api.p
    rid = str(api.issue(1)["release"]["id"])
    declined = _transfer(api, rid, "fwd", p.haul2.organisation_id).json()["transfer"]["id"]
    assert api.http.post(f"/api/v1/transfers/{declined}/decline", headers=api.as_("haul2")).status_code == 200
    withdrawn = _transfer(api, rid, "fwd", p.haul2.organisation_id).json()["transfer"]["id"]
    assert api.http.post(f"/api/v1/transfers/{withdrawn}/withdraw", headers=api.as_("fwd")).status_code == 200
    accepted = _transfer(api, rid, "fwd", p.haul.organisation_id).json()["transfer"]["id"]
    assert api.http.post(f"/api/v1/transfers/{accepted}/accept", headers=api.as_("haul")).status_code == 200
    r = api.http.put(f"/api/v1/releases/{rid}/nomination", headers=api.as_("haul"),
                     json={"driver_person_id": str(p.driver), "plate": {"text": "1-ABC-123", "country": "BE"}})
    assert r.status_code == 200, r.text
    etag = api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("haul")).headers["etag"]
    assert_problem(api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("haul2")), 404, "not_found")
    wrong = [f'"{v}"' for v in range(10) if f'"{v}"' != etag]
    for tid in (declined, withdrawn):
        for action in ("accept", "decline", "withdraw"):
            for tags in (None, etag, ", ".join(wrong), "*"):
                headers = api.as_("haul2") if tags is None else {**api.as_("haul2"), "If-Match": tags}
                assert_problem(api.http.post(f"/api/v1/transfers/{tid}/{action}", headers=headers),
                               409, "transfer_not_pending")
    # A transfer it was never party to, or none at all, is not found for it, whatever the version.
    for tid in (accepted, str(uuid.uuid4())):
        for tags in (None, etag, ", ".join(wrong)):
            headers = api.as_("haul2") if tags is None else {**api.as_("haul2"), "If-Match": tags}
            assert_problem(api.http.post(f"/api/v1/transfers/{tid}/decline", headers=headers), 404, "not_found")

"""Data minimisation on the release API (release_service/domain/disclosure.py): each party reads its own
leg of a right. One right travels line -> forwarder -> haulier (nominates driver 1, who accepts) ->
haulier 2 (nominates driver 2, who accepts); each viewer then reads it over HTTP, on SQLite and on
PostgreSQL, and what it must not see is looked for in the whole answer."""

# ruff: noqa: F811 - ``api`` is a fixture imported here and requested by name

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import webhook_deliveries, webhook_subscriptions
from release_service.domain import disclosure
from release_service.services import queries

from .factories import add_driver, do
from .test_gate_person_suspended import _admin
from .test_release_driver_api import DriverApi, api  # noqa: F401 - ``api`` is a fixture requested by name

PLATE_1, PLATE_2 = "1ABC123", "2XYZ987"  # as stored (separators dropped)
TRAILER_1, TRAILER_2 = "QAA111", "QBB222"
NOMINATIONS = ("release.nominated", "release.nomination.accepted")


@dataclass
class Trip:
    rid: str
    driver1: uuid.UUID
    driver2: uuid.UUID


def _ok(r: Any, status: int = 200) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return r.json()  # type: ignore[no-any-return]


def _transfer(api: DriverApi, rid: str, frm: str, to: str, *, accept: bool = True) -> str:
    org = getattr(api.p, to).organisation_id
    tid = str(_ok(api.http.post(f"/api/v1/releases/{rid}/transfers", json={"to_organisation_id": str(org)},
                                headers=api.as_(frm)), 201)["transfer"]["id"])
    if accept:
        _ok(api.http.post(f"/api/v1/transfers/{tid}/accept", headers=api.as_(to)))
    return tid


def _nominate(api: DriverApi, rid: str, who: str, driver: uuid.UUID, plate: str, trailer: str) -> None:
    now = datetime.now(UTC)
    _ok(api.http.put(f"/api/v1/releases/{rid}/nomination", headers=api.as_(who), json={
        "driver_person_id": str(driver), "plate": {"text": plate, "country": "BE"},
        "trailer_plate": {"text": trailer, "country": "BE"},
        "slot": {"start": now.isoformat(), "end": (now + timedelta(hours=2)).isoformat()}}))
    _ok(api.http.post(f"/api/v1/releases/{rid}/nomination:accept", headers=api.driver(driver)))


def _trip(api: DriverApi, *, second_leg: bool = True) -> Trip:
    p = api.p
    driver2 = add_driver(api.engine, p.haul2.organisation_id, number="AP-222222")  # type: ignore[arg-type]
    rid = str(api.issue()["release"]["id"])
    _transfer(api, rid, "fwd", "haul")
    _nominate(api, rid, "haul", p.driver, PLATE_1, TRAILER_1)
    if second_leg:
        _transfer(api, rid, "haul", "haul2")
        _nominate(api, rid, "haul2", driver2, PLATE_2, TRAILER_2)
    return Trip(rid, p.driver, driver2)


def _read(api: DriverApi, rid: str, headers: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """The right, its events, and every byte of the right, its events and the caller's list."""
    one = api.http.get(f"/api/v1/releases/{rid}", headers=headers)
    events = api.http.get(f"/api/v1/releases/{rid}/events", headers=headers)
    listed = api.http.get("/api/v1/releases", headers=headers)
    _ok(listed)
    return _ok(one), _ok(events)["items"], one.text + events.text + listed.text


def _of(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == type_]


def _leg_of(trip: Trip, driver: uuid.UUID) -> tuple[str, ...]:
    return (str(driver), PLATE_1 if driver == trip.driver1 else PLATE_2, TRAILER_1 if driver == trip.driver1
            else TRAILER_2)


def _sees(text: str, trip: Trip, driver: uuid.UUID) -> bool:
    leg = _leg_of(trip, driver)
    found = [x in text for x in leg]
    assert len(set(found)) == 1, (leg, found)  # all of one nomination's details, or none
    return found[0]


@pytest.mark.parametrize("who", ["line", "customs", "terminal"])
def test_the_line_customs_and_the_terminal_see_every_nomination(api: DriverApi, who: str) -> None:
    trip = _trip(api)
    right, events, text = _read(api, trip.rid, api.as_(who))
    assert _sees(text, trip, trip.driver1) and _sees(text, trip, trip.driver2)
    assert right["nomination"]["driver_person_id"] == str(trip.driver2)
    assert [e["data"]["driver_person_id"] for e in _of(events, "release.nominated")] == [
        str(trip.driver1), str(trip.driver2)]
    assert right["holders_chain"] == [str(o.organisation_id) for o in (api.p.fwd, api.p.haul, api.p.haul2)]


def test_the_holder_sees_its_own_nomination_not_the_one_before_its_hold(api: DriverApi) -> None:
    """The nominating operator (haulier 2) sees its driver, truck and slot; the driver haulier 1 named
    before the right reached it (cleared by the transfer) is a third party to it."""
    trip = _trip(api)
    right, events, text = _read(api, trip.rid, api.as_("haul2"))
    assert _sees(text, trip, trip.driver2) and not _sees(text, trip, trip.driver1)
    assert right["nomination"]["plate"] == {"text": PLATE_2, "country": "BE"}
    first, second = _of(events, "release.nominated")
    assert first["data"] == {"driver_person_id": None, "plate": None, "trailer_plate": None, "slot": None,
                             "screening": None, "state": "nominated"}
    assert second["data"]["slot"] is not None and second["data"]["trailer_plate"]["text"] == TRAILER_2
    # the chain of holders is the holder's to know, whole
    assert right["holders_chain"] == [str(o.organisation_id) for o in (api.p.fwd, api.p.haul, api.p.haul2)]


def test_a_haulier_whose_hold_ended_sees_its_own_leg_in_full_and_not_the_next_one(api: DriverApi) -> None:
    trip = _trip(api)
    p = api.p
    right, events, text = _read(api, trip.rid, api.as_("haul"))
    assert _sees(text, trip, trip.driver1) and not _sees(text, trip, trip.driver2)
    assert right["nomination"] is None and right["state"] == "nominated" and right["lights"]
    # its own nomination and the transfer that ended its hold, in full
    own, later = _of(events, "release.nominated")
    assert own["data"]["driver_person_id"] == str(trip.driver1) and own["data"]["plate"]["text"] == PLATE_1
    ended = _of(events, "release.transfer.accepted")[-1]
    assert ended["data"]["from"] == str(p.haul.organisation_id) and ended["data"]["to"] == str(p.haul2.organisation_id)
    assert ended["data"]["nomination_cleared"] is True
    # what came after: the type, the time and the state; no driver, truck or slot, nor who answered
    assert later["data"] == {"driver_person_id": None, "plate": None, "trailer_plate": None, "slot": None,
                             "screening": None, "state": "nominated"} and later["at"]
    answer = _of(events, "release.nomination.accepted")[-1]
    assert answer["actor"]["person_id"] is None and answer["data"]["driver_person_id"] is None
    assert answer["data"]["state"] == "nominated"
    assert right["holders_chain"] == [str(o.organisation_id) for o in (p.fwd, p.haul, p.haul2)]


def test_a_forwarder_that_passed_the_right_on_sees_no_driver_and_no_later_company(api: DriverApi) -> None:
    trip = _trip(api)
    p = api.p
    right, events, text = _read(api, trip.rid, api.as_("fwd"))
    assert not _sees(text, trip, trip.driver1) and not _sees(text, trip, trip.driver2)
    assert right["nomination"] is None
    assert right["holders_chain"] == [str(p.fwd.organisation_id), str(p.haul.organisation_id)]
    assert [e["data"]["driver_person_id"] for e in _of(events, "release.nominated")] == [None, None]
    # its own transfer in full; the haulier's onward names the holder the right itself shows (the
    # contract's holder_organisation_id), and no member of the haulier 2 that acted
    mine, onward = _of(events, "release.transfer.accepted")
    assert (mine["data"]["from"], mine["data"]["to"]) == (str(p.fwd.organisation_id), str(p.haul.organisation_id))
    holder = right["holder_organisation_id"]
    assert (onward["data"]["from"], onward["data"]["to"]) == (str(p.haul.organisation_id), holder)
    # every event is still there, in order: what happened, when, and the state after it
    line_events = _ok(api.http.get(f"/api/v1/releases/{trip.rid}/events", headers=api.as_("line")))["items"]
    assert [(e["seq"], e["type"], e["at"], e["data"]["state"]) for e in events] == [
        (e["seq"], e["type"], e["at"], e["data"]["state"]) for e in line_events]


def test_the_recipient_of_a_pending_offer_sees_not_the_sender_s_driver(api: DriverApi) -> None:
    trip = _trip(api, second_leg=False)
    tid = _transfer(api, trip.rid, "haul", "haul2", accept=False)
    right, events, text = _read(api, trip.rid, api.as_("haul2"))
    assert not _sees(text, trip, trip.driver1)
    assert right["nomination"] is None and right["pending_transfer"]["id"] == tid
    assert _of(events, "release.transfer.requested")[-1]["data"]["to"] == str(api.p.haul2.organisation_id)
    # the sender, still the holder, sees its own nomination and its offer
    right, _, text = _read(api, trip.rid, api.as_("haul"))
    assert _sees(text, trip, trip.driver1) and right["pending_transfer"]["id"] == tid


def test_a_past_holder_learns_no_company_the_right_was_offered_to_after_it(api: DriverApi) -> None:
    trip = _trip(api, second_leg=False)
    _transfer(api, trip.rid, "haul", "haul2", accept=False)
    right, events, text = _read(api, trip.rid, api.as_("fwd"))
    assert right["pending_transfer"] is None and str(api.p.haul2.organisation_id) not in text
    offer = _of(events, "release.transfer.requested")[-1]
    assert offer["data"]["from"] == str(api.p.haul.organisation_id) and offer["data"]["to"] is None
    assert offer["actor"]["organisation_id"] == str(api.p.haul.organisation_id)  # it passed the right to it
    # declined, the offer stays unnamed (the company it was made to never held the right)
    tid = _ok(api.http.get(f"/api/v1/releases/{trip.rid}", headers=api.as_("haul")))["pending_transfer"]["id"]
    _ok(api.http.post(f"/api/v1/transfers/{tid}/decline", headers=api.as_("haul2")))
    _, _, text = _read(api, trip.rid, api.as_("fwd"))
    assert str(api.p.haul2.organisation_id) not in text


def test_the_nominated_driver_sees_his_nomination_and_not_the_driver_before_him(api: DriverApi) -> None:
    trip = _trip(api)
    right, events, text = _read(api, trip.rid, api.driver(trip.driver2))
    assert _sees(text, trip, trip.driver2) and not _sees(text, trip, trip.driver1)
    assert right["nomination"]["driver_person_id"] == str(trip.driver2)
    assert right["nomination"]["trailer_plate"] == {"text": TRAILER_2, "country": "BE"}
    before, mine = _of(events, "release.nominated")
    assert before["data"]["plate"] is None and mine["data"]["plate"]["text"] == PLATE_2
    his_answer, my_answer = _of(events, "release.nomination.accepted")
    assert his_answer["actor"]["person_id"] is None and his_answer["data"]["driver_person_id"] is None
    assert my_answer["actor"]["person_id"] == str(trip.driver2)
    # the events not about a nomination read as before
    assert all(e["data"] for e in events if e["type"] not in NOMINATIONS)


def test_a_driver_renominated_himself_sees_both_of_his_nominations(api: DriverApi) -> None:
    trip = _trip(api, second_leg=False)
    _nominate(api, trip.rid, "haul", trip.driver1, "1-ABC-124", TRAILER_1)
    _, events, _ = _read(api, trip.rid, api.driver(trip.driver1))
    nominated = _of(events, "release.nominated") + _of(events, "release.renominated")
    assert [e["data"]["plate"]["text"] for e in nominated] == [PLATE_1, "1ABC124"]


def test_a_driver_no_longer_nominated_reads_nothing_of_the_right(api: DriverApi) -> None:
    """Unchanged by minimisation (services.common.can_see), stated here with the other views."""
    trip = _trip(api)
    me = api.driver(trip.driver1)
    assert api.http.get(f"/api/v1/releases/{trip.rid}", headers=me).status_code == 404
    assert api.http.get(f"/api/v1/releases/{trip.rid}/events", headers=me).status_code == 404
    assert _ok(api.http.get("/api/v1/releases", headers=me))["items"] == []


# ---- the pure rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(("me", "shown"), [
    ("a", ["a", "b"]), ("b", ["a", "b", "c"]), ("c", ["a", "b", "c"]), ("x", ["a", "b", "c"]),
])
def test_visible_chain(me: str, shown: list[str]) -> None:
    ids = {k: uuid.uuid5(uuid.NAMESPACE_DNS, k) for k in "abcx"}
    got = disclosure.visible_chain([ids["a"], ids["b"], ids["c"]], ids[me])
    assert got == [ids[k] for k in shown]


def test_visible_chain_of_a_company_that_held_the_right_twice() -> None:
    a, b, c = (uuid.uuid4() for _ in range(3))
    assert disclosure.visible_chain([a, b, a, c, b], a) == [a, b, a, c]


def test_the_transfers_read_answers_as_the_events_do(api: DriverApi) -> None:
    """services.queries.transfers (no route reads it yet): a company of the chain is told of the
    transfers it was party to and those of the chain it is shown, not of an offer to another."""
    trip = _trip(api, second_leg=False)
    tid = _transfer(api, trip.rid, "haul", "haul2", accept=False)
    p = api.p

    def seen(actor: Any) -> list[tuple[uuid.UUID, uuid.UUID]]:
        found = do(api.engine, lambda uow: queries.transfers(uow, actor, uuid.UUID(trip.rid)))
        return [(t.from_organisation_id, t.to_organisation_id) for t in found]

    fwd, haul, haul2 = (x.organisation_id for x in (p.fwd, p.haul, p.haul2))
    assert seen(p.line) == seen(p.haul) == [(fwd, haul), (haul, haul2)]
    assert seen(p.fwd) == [(fwd, haul)]
    assert str(tid) not in str(do(api.engine, lambda uow: queries.transfers(uow, p.fwd, uuid.UUID(trip.rid))))


def test_customs_reason_goes_to_the_full_sight_viewers_and_its_status_to_everyone(api: DriverApi) -> None:
    """Review 110: customs' free-text reason for a scan selection reached the nominated driver, a past
    holder and the holder's webhook. They see the light's status (what they act on) and its time; the
    line, customs and the terminal read the reason."""
    trip = _trip(api, second_leg=False)
    grounds = "selected: risk profile R-17, scan Wednesday"
    with api.engine.begin() as conn:  # the holder listens to its rights' events
        conn.execute(webhook_subscriptions.insert().values(
            id=uuid.uuid4(), organisation_id=api.p.haul.organisation_id, url="https://hooks.example/q",
            secret_enc="x", event_types=["release.*"], active=True, created_at=datetime.now(UTC)))
    _ok(api.http.put(f"/api/v1/releases/{trip.rid}/lights/customs", headers=api.as_("customs"),
                     json={"status": "scan", "reason": grounds}))
    with api.engine.begin() as conn:
        payloads = conn.execute(sa.select(webhook_deliveries.c.payload)
                                .where(webhook_deliveries.c.event_type == "release.light.customs")).scalars().all()
    assert [p["data"]["status"] for p in payloads] == ["scan"]
    viewers = {"line": api.as_("line"), "customs": api.as_("customs"), "terminal": api.as_("terminal"),
               "fwd": api.as_("fwd"), "haul": api.as_("haul"), "driver": api.driver(trip.driver1)}
    for who, headers in viewers.items():
        right, events, text = _read(api, trip.rid, headers)
        assert right["lights"]["customs"]["status"] == "scan", who
        (light,) = _of(events, "release.light.customs")
        assert light["data"]["status"] == "scan", who
        assert (grounds in text) is (who in ("line", "customs", "terminal")), who
    assert grounds not in json.dumps(payloads)
    # The answers to writes show the right as its writer may read it (review 115): the holder nominating
    # again, the driver accepting; the line's own write shows it all.
    now = datetime.now(UTC)
    renominated = _ok(api.http.put(f"/api/v1/releases/{trip.rid}/nomination", headers=api.as_("haul"), json={
        "driver_person_id": str(trip.driver1), "plate": {"text": PLATE_1, "country": "BE"},
        "slot": {"start": now.isoformat(), "end": (now + timedelta(hours=3)).isoformat()}}))
    accepted = _ok(api.http.post(f"/api/v1/releases/{trip.rid}/nomination:accept",
                                 headers=api.driver(trip.driver1)))
    for answer in (renominated, accepted):
        assert answer["release"]["lights"]["customs"] == {**answer["release"]["lights"]["customs"],
                                                          "status": "scan", "reason": None}
    updated = _ok(api.http.patch(f"/api/v1/releases/{trip.rid}", headers=api.as_("line"),
                                 json={"bill_of_lading": "BL-1b"}))
    assert updated["release"]["lights"]["customs"]["reason"] == grounds


# ---- another company's events: type, time and state (review 170, finding 2) ----------------------


def test_a_later_recipient_reads_no_reason_of_a_decline_it_was_no_party_to(api: DriverApi) -> None:
    """The reviewer's demonstration: the forwarder offers the right to haulier 2, which declines with its
    reason; the forwarder then passes it to the haulier. Before, the haulier read haulier 2's reason in
    full on /events (only its actor nulled). It reads the decline's type, time and state; the forwarder,
    party to it, reads it in full."""
    p = api.p
    rid = str(api.issue()["release"]["id"])
    tid = _transfer(api, rid, "fwd", "haul2", accept=False)
    said = "haul2 says: price too low for Acme client"
    _ok(api.http.post(f"/api/v1/transfers/{tid}/decline", headers=api.as_("haul2"), json={"reason": said}))
    _transfer(api, rid, "fwd", "haul")
    _, events, text = _read(api, rid, api.as_("haul"))
    (declined,) = _of(events, "release.transfer.declined")
    assert said not in text and str(p.haul2.organisation_id) not in text
    assert declined["data"]["reason"] is None and declined["data"]["state"] == "active" and declined["at"]
    assert declined["data"]["transfer_id"] is None  # nor which transfer: the offer is not its to know
    _, events, text = _read(api, rid, api.as_("fwd"))
    (declined,) = _of(events, "release.transfer.declined")
    assert declined["data"]["reason"] == said and declined["data"]["transfer_id"] == tid


def test_a_past_holder_learns_nothing_of_a_later_holder_s_deactivation_beyond_type_time_and_state(
        api: DriverApi) -> None:
    """The reviewer's demonstration: the forwarder passed the right to the haulier; port security
    deactivated the haulier. Before, the forwarder read release.holder_deactivated {'holder': <haulier>}.
    It reads what the table gives it of another company's event: the type, the time and the state. The
    haulier (its own hold) and the line read the holder; the reactivation reads as the deactivation."""
    p = api.p
    rid = str(api.issue()["release"]["id"])
    _transfer(api, rid, "fwd", "haul")
    for verb in ("deactivate", "reactivate"):
        r = api.http.post(f"/admin/v1/organisations/{p.haul.organisation_id}:{verb}",
                          headers=_admin(api),  # type: ignore[arg-type] - an Api as the Gate is
                          json={"reason": "suspected fraud" if verb == "deactivate" else "ok"})
        assert r.status_code == 200, r.text
    haul = str(p.haul.organisation_id)
    _, events, _ = _read(api, rid, api.as_("fwd"))
    for kind in ("release.holder_deactivated", "release.holder_reactivated"):
        (told,) = _of(events, kind)
        assert told["data"] == {"holder": None, "state": "active"} and told["at"], told
    api.tokens.pop("haul")  # its deactivation revoked its tokens
    for who in ("haul", "line"):
        _, events, _ = _read(api, rid, api.as_(who))
        assert [e["data"]["holder"] for e in events if e["type"].startswith("release.holder_")] == [haul, haul], who


def test_another_company_s_event_keeps_type_time_state_and_what_the_table_names_only() -> None:
    """The rule is one allow-list, not one per event type: an event type the rule never heard of shows a
    past holder its state alone; a light its status (the chain acts on it) and no reason; a transfer the
    companies the reader knows, never the transfer's id or whether a nomination was cleared."""
    from release_service.domain.parties import OrgKind
    from release_service.domain.release import Event, LightKind, LightStatus

    from .test_release_domain import CUSTOMS, FWD, HAUL, HAUL2, NOW, at_haulier

    r = at_haulier()  # issued to the forwarder, passed to the haulier
    r.set_light(kind=LightKind.CUSTOMS, status=LightStatus.RED, reason="customs' grounds", by=CUSTOMS, now=NOW)
    r.start_transfer(transfer_id=uuid.uuid4(), by=HAUL, to_organisation_id=HAUL2.organisation_id,
                     to_kind=OrgKind.TRANSPORT_OPERATOR, now=NOW)
    events = [*r.pending_events, Event("release.made_up", HAUL.as_dict(), NOW,
                                       {"reason": "why", "holder": str(HAUL.organisation_id), "note": {"x": 1},
                                        "state": "active"})]
    shown = {e.type: s.data for e, s in zip(events, disclosure.minimise_events(r, FWD, events), strict=True)}
    assert shown["release.made_up"] == {"reason": None, "holder": None, "note": None, "state": "active"}
    assert shown["release.light.customs"] == {"status": "red", "reason": None, "state": "active"}
    assert shown["release.transfer.requested"] == {"transfer_id": None, "from": str(HAUL.organisation_id),
                                                   "to": None, "state": "active"}
    # its own events, in full: its issue and the transfer it made
    assert shown["release.issued"]["holder"] == str(FWD.organisation_id)
    assert shown["release.transfer.accepted"]["nomination_cleared"] is False

"""The release engine read as a criminal who wants a container (review 58): who keeps reading a right,
who learns what of a stranger through a nomination, a lapsed right brought back, a right that travelled
deleted. Real PostgreSQL and SQLite through the fixtures, real tokens, the real app; the service's clock
moved by the test (tokens are still checked against the real time).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from identity.domain.badges import Scheme, with_check
from quaygate.app import create_app
from quaygate.cache import MemoryCache
from quaygate.container import Container
from quaygate.crypto import DataCipher
from quaygate.schema import ban_feed_state, memberships, persons, port_bans, release_events
from quaygate.settings import Settings

from .factories import add_driver
from .test_release_api import assert_problem
from .test_release_driver_api import DriverApi

PLATE = {"text": "1-ABC-123", "country": "BE"}
STRANGERS_BADGE, SUBCONTRACTORS_BADGE = with_check(Scheme.ALFAPASS, 42424), with_check(Scheme.ALFAPASS, 52525)


class Clock:
    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at


class Rig(DriverApi):
    clock: Clock

    def right_for(self, n: int, to: str = "fwd", **extra: Any) -> str:
        org = {"fwd": self.p.fwd, "haul": self.p.haul}[to]
        return str(self.issue(n, release_to_organisation_id=str(org.organisation_id), **extra)["release"]["id"])

    def transfer(self, rid: str, by: str, to: str) -> str:
        org = {"haul": self.p.haul, "haul2": self.p.haul2, "fwd": self.p.fwd}[to]
        r = self.http.post(f"/api/v1/releases/{rid}/transfers", headers=self.as_(by),
                           json={"to_organisation_id": str(org.organisation_id)})
        assert r.status_code == 201, r.text
        return str(r.json()["transfer"]["id"])

    def act(self, tid: str, action: str, by: str) -> None:
        r = self.http.post(f"/api/v1/transfers/{tid}/{action}", headers=self.as_(by))
        assert r.status_code == 200, r.text

    def sees(self, rid: str, who: str) -> bool:
        one = self.http.get(f"/api/v1/releases/{rid}", headers=self.as_(who))
        events = self.http.get(f"/api/v1/releases/{rid}/events", headers=self.as_(who))
        listed = [x["id"] for x in self.http.get("/api/v1/releases", headers=self.as_(who)).json()["items"]]
        seen = {one.status_code == 200, events.status_code == 200, rid in listed}
        assert len(seen) == 1, (one.status_code, events.status_code, listed)  # all three agree
        if not seen.pop():
            assert_problem(one, 404, "not_found")
            return False
        return True

    def events(self, rid: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(release_events)
                                    .where(release_events.c.release_id == uuid.UUID(rid))).scalar_one())


@pytest.fixture
def rig(engine: sa.Engine, tmp_path: Path) -> Iterator[Rig]:
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        background_workers=False)
    clock = Clock()
    c = Container(settings=settings, engine=engine, cache=MemoryCache(),
                  cipher=DataCipher(settings.data_key_bytes()), clock=clock)  # type: ignore[arg-type]
    with TestClient(create_app(settings, container=c)) as http:
        rig = Rig(http, engine)
        rig.clock = clock
        yield rig


# ---- who reads a right: those who hold or held it, and a recipient while the offer is pending --------


@pytest.mark.parametrize("ended_by", ["declined", "withdrawn", "cancelled"])
def test_a_company_only_offered_the_right_stops_reading_it_when_the_offer_ends(rig: Rig, ended_by: str) -> None:
    """A transfer sent to the wrong company, then declined, withdrawn by its sender or cancelled by the
    line's revocation, made that company a party for good: it went on reading the right, its history and
    the nomination the real holder made later (driver, plate, slot, gate times)."""
    rid = rig.right_for(1)
    misdirected = rig.transfer(rid, "fwd", "haul2")
    assert rig.sees(rid, "haul2")  # while the offer is pending it must see what it is offered
    if ended_by == "declined":
        rig.act(misdirected, "decline", "haul2")
    elif ended_by == "withdrawn":
        rig.act(misdirected, "withdraw", "fwd")
    else:
        r = rig.http.post(f"/api/v1/releases/{rid}/revoke", headers=rig.as_("line"), json={"reason": "fraud"})
        assert r.status_code == 200, r.text
        assert not rig.sees(rid, "haul2")
        return
    rig.act(rig.transfer(rid, "fwd", "haul"), "accept", "haul")
    rig.nominate(rid, rig.p.driver)
    assert not rig.sees(rid, "haul2")
    assert rig.sees(rid, "haul") and rig.sees(rid, "fwd")  # the holder and the one that held it


def test_a_company_that_held_the_right_keeps_reading_it_after_declining_it_back(rig: Rig) -> None:
    """A former holder's row says ``holder``: an offer it declines later does not take it away (the row
    its own acceptance wrote used to stay ``recipient``, which the decline would now have removed)."""
    rid = rig.right_for(2)
    rig.act(rig.transfer(rid, "fwd", "haul"), "accept", "haul")
    rig.act(rig.transfer(rid, "haul", "haul2"), "accept", "haul2")
    rig.act(rig.transfer(rid, "haul2", "haul"), "decline", "haul")
    assert rig.sees(rid, "haul") and rig.sees(rid, "fwd") and rig.sees(rid, "haul2")


# ---- a nomination tells nothing of a stranger ----------------------------------------------------------


def _ban(engine: sa.Engine, person_id: uuid.UUID, at: datetime) -> None:
    """A port ban on the person, in a list in force (the register's tables, as identity/bans loads them)."""
    subject = "b" * 64
    with engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == person_id).values(national_id_hash=subject))
        conn.execute(ban_feed_state.insert().values(register="BE-AIGIS", sequence=1, issued_at=at, loaded_at=at,
                                                    digest="d" * 64))
        conn.execute(port_bans.insert().values(register="BE-AIGIS", reference="R-1", subject_hash=subject,
                                               scope="all", banned_from=at - timedelta(days=1),
                                               banned_until=at + timedelta(days=300), feed_sequence=1))


@pytest.mark.parametrize("secret", ["active", "revoked", "banned"])
@pytest.mark.parametrize("named_by", ["badge", "person"])
def test_a_strangers_badge_and_ban_are_told_to_nobody_by_a_nomination(rig: Rig, secret: str, named_by: str) -> None:
    """A haulier holding any right could type badge numbers (short, printed on the card) into a
    nomination and read, for a person who does not drive for him, whether the badge exists, whether it
    is revoked, and whether the person is under a port ban. A stranger is now refused exactly as a badge
    or person that does not exist, whatever his badge or ban, and nothing is written."""
    rid = rig.right_for(3, to="haul")
    stranger = add_driver(rig.engine, rig.p.haul2.organisation_id,  # type: ignore[arg-type]
                          badge_status="revoked" if secret == "revoked" else "active", number=STRANGERS_BADGE)
    if secret == "banned":
        _ban(rig.engine, stranger, rig.clock.now())
    before = rig.events(rid)
    driver = ({"badge": {"scheme": "alfapass", "number": STRANGERS_BADGE}} if named_by == "badge"
              else {"driver_person_id": str(stranger)})
    r = rig.http.put(f"/api/v1/releases/{rid}/nomination", headers=rig.as_("haul"), json={**driver, "plate": PLATE})
    nobody = ({"badge": {"scheme": "alfapass", "number": "AP-999999"}} if named_by == "badge"
              else {"driver_person_id": str(uuid.uuid4())})
    unknown = rig.http.put(f"/api/v1/releases/{rid}/nomination", headers=rig.as_("haul"),
                           json={**nobody, "plate": PLATE})
    assert (r.status_code, r.json()) == (unknown.status_code, unknown.json() | {"instance": r.json()["instance"]})
    assert_problem(r, 422, "unknown_badge" if named_by == "badge" else "unknown_person")
    assert rig.events(rid) == before


def test_a_subcontracted_driver_is_nominable_once_the_badge_office_links_him(rig: Rig) -> None:
    """The stranger of the test above drives for the haulier once the badge office records a ``driver``
    membership of it (a subcontractor); then, and only then, his screening's reasons are the haulier's
    to read."""
    rid = rig.right_for(4, to="haul")
    sub = add_driver(rig.engine, rig.p.haul2.organisation_id, badge_status="revoked",  # type: ignore[arg-type]
                     number=SUBCONTRACTORS_BADGE)
    body = {"badge": {"scheme": "alfapass", "number": SUBCONTRACTORS_BADGE}, "plate": PLATE}
    r = rig.http.put(f"/api/v1/releases/{rid}/nomination", headers=rig.as_("haul"), json=body)
    assert r.json()["code"] == "unknown_badge", r.text
    with rig.engine.begin() as conn:
        conn.execute(memberships.insert().values(person_id=sub, organisation_id=rig.p.haul.organisation_id,
                                                 role="driver", created_at=rig.clock.now()))
    r = rig.http.put(f"/api/v1/releases/{rid}/nomination", headers=rig.as_("haul"), json=body)
    assert r.json()["code"] == "driver_screening_failed" and "badge_revoked" in r.text, r.text


def test_a_haulier_that_does_not_hold_the_right_learns_nothing_of_the_driver(rig: Rig) -> None:
    """Who may nominate is settled before the driver is looked up: a haulier that does not hold the
    right hears that, for a driver of its own or a name that exists nowhere alike."""
    rid = rig.right_for(5, to="haul")
    rig.act(rig.transfer(rid, "haul", "haul2"), "accept", "haul2")
    for driver in (str(rig.p.driver), str(uuid.uuid4())):
        r = rig.http.put(f"/api/v1/releases/{rid}/nomination", headers=rig.as_("haul"),
                         json={"driver_person_id": driver, "plate": PLATE})
        assert r.json()["code"] == "not_holder", r.text


# ---- a lapsed right stays lapsed, swept or not ---------------------------------------------------------


@pytest.mark.parametrize("action", ["update", "block", "revoke", "transfer", "nominate", "delete"])
def test_a_lapsed_right_not_yet_swept_is_not_acted_on_as_if_live(rig: Rig, action: str) -> None:
    """Expired is a terminal state (SPEC.md: "Past it, the right lapses by itself"). Until the sweeper
    wrote it down, the row still said nominated and every guard judged that: the line's PATCH of
    valid_until brought the right back with its old nomination (driver and truck screened days ago)."""
    rid = rig.right_for(6, to="haul", valid_until=(rig.clock.now() + timedelta(hours=1)).isoformat())
    if action != "delete":
        rig.nominate(rid, rig.p.driver)
    rig.clock.at += timedelta(hours=2)
    assert rig.http.get(f"/api/v1/releases/{rid}", headers=rig.as_("line")).json()["state"] == "expired"
    before = rig.events(rid)
    calls = {
        "update": lambda: rig.http.patch(f"/api/v1/releases/{rid}", headers=rig.as_("line"),
                                         json={"valid_until": (rig.clock.now() + timedelta(days=1)).isoformat()}),
        "block": lambda: rig.http.post(f"/api/v1/releases/{rid}/block", headers=rig.as_("line"), json={}),
        "revoke": lambda: rig.http.post(f"/api/v1/releases/{rid}/revoke", headers=rig.as_("line"), json={}),
        "transfer": lambda: rig.http.post(f"/api/v1/releases/{rid}/transfers", headers=rig.as_("haul"),
                                          json={"to_organisation_id": str(rig.p.haul2.organisation_id)}),
        "nominate": lambda: rig.http.put(f"/api/v1/releases/{rid}/nomination", headers=rig.as_("haul"),
                                         json={"driver_person_id": str(rig.p.driver), "plate": PLATE}),
        "delete": lambda: rig.http.post(f"/api/v1/releases/{rid}/delete", headers=rig.as_("line"),
                                        json={"reason": "error"}),
    }
    assert_problem(calls[action](), 409, "right_expired")
    assert rig.events(rid) == before
    right = rig.http.get(f"/api/v1/releases/{rid}", headers=rig.as_("line")).json()
    assert right["state"] == "expired" and right["blocked"] is False


# ---- a right that travelled is revoked, not deleted ----------------------------------------------------


def test_a_right_that_travelled_and_came_back_cannot_be_deleted(rig: Rig) -> None:
    """Held by its first party again after forwarder -> haulier -> forwarder, it has still travelled: a
    deleted right drops out of what the gate reads (container_unknown, not right_revoked)."""
    rid = rig.right_for(7)
    rig.act(rig.transfer(rid, "fwd", "haul"), "accept", "haul")
    rig.act(rig.transfer(rid, "haul", "fwd"), "accept", "fwd")
    r = rig.http.post(f"/api/v1/releases/{rid}/delete", headers=rig.as_("line"), json={"reason": "error"})
    assert_problem(r, 409, "illegal_transition")
    fresh = rig.right_for(8)
    r = rig.http.post(f"/api/v1/releases/{fresh}/delete", headers=rig.as_("line"), json={"reason": "error"})
    assert r.status_code == 200, r.text

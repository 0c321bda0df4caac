"""The person's employer, given when port security registers him (``persons.employer_organisation_id``),
links him to no haulier (review 152, finding 2). Nothing ever updates it, so as a link it was for
good: a haulier that let a driver go (his driver membership removed, or run out by its valid_until)
went on nominating him, even while he drove for a rival on a badge of the rival's, and read his
screening's reasons (person_suspended, person_banned). A driver is a haulier's to nominate only
through a driver membership in force there or a badge issued for it and usable now
(``Directory.drives_for``); a former employer is answered as for a stranger's driver, word for word.
Through the whole app (admin API, release API), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.domain.badges import Scheme, with_check
from quaygate.schema import badges, memberships, persons
from tests.test_admin_console import _auth, _problem
from tests.test_membership_removal import PLATE, World, _serve

from .factories import add_driver


@pytest.fixture
def world(engine: sa.Engine, tmp_path: Path) -> Iterator[World]:
    yield from _serve(engine, tmp_path)  # SQLite and PostgreSQL: the engine fixture's two backends


def _registered(w: World, employer: uuid.UUID) -> uuid.UUID:
    """A person port security registers with ``employer`` as his employer (the admin API)."""
    w.http.cookies.clear()
    r = w.http.post("/admin/v1/persons", headers=_auth(w.security),
                    json={"given_name": "Piet", "family_name": "Mertens", "employer_organisation_id": str(employer)})
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["id"])


def _number(person: uuid.UUID) -> str:
    """His badge's number, one the gate (and so a nomination) reads: a valid Alfapass number."""
    return with_check(Scheme.ALFAPASS, person.int % 10**5)


def _badge_for(w: World, person: uuid.UUID, organisation: uuid.UUID) -> None:
    """An active, in-date badge of his issued for ``organisation``: his screening is clear."""
    at = datetime.now(UTC)
    with w.engine.begin() as conn:
        conn.execute(badges.insert().values(
            id=uuid.uuid4(), person_id=person, scheme="alfapass", number=_number(person),
            card_uid=None, employer_organisation_id=organisation, status="active",
            valid_from=at - timedelta(days=1), valid_until=at + timedelta(days=365), created_at=at))


def _mover(w: World) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """The reviewer's driver: registered with haul as employer, a driver of haul's (membership), his
    badge issued for haul2. (haul, haul2, him.)"""
    haul, haul2 = w.p.haul.organisation_id, w.p.haul2.organisation_id
    assert haul is not None and haul2 is not None
    person = _registered(w, haul)
    _badge_for(w, person, haul2)
    assert w.give(w.security, person, haul, "driver").status_code == 201
    return haul, haul2, person


def _as_a_stranger(w: World, rid: str, r: Any) -> None:
    """``r`` is the answer a driver who never drove for haul gets, word for word."""
    _problem(r, 422, "unknown_person")  # before the mend: 200 nominated, or his screening's reasons
    stranger = add_driver(w.engine, w.p.haul2.organisation_id)  # type: ignore[arg-type]
    unknown = w.nominate(rid, stranger)
    assert (r.status_code, r.json()) == (unknown.status_code, unknown.json())


def _nominated(w: World, rid: str) -> Any:
    return w.http.get(f"/api/v1/releases/{rid}", headers=w.as_("haul")).json().get("nomination")


def test_a_driver_whose_membership_was_removed_is_not_his_former_employers_to_nominate(world: World) -> None:
    """The reviewer's case: before the mend, 200 nominated."""
    w = world
    haul, _, person = _mover(w)
    rid = w.right(1, haul)
    assert w.nominate(rid, person).status_code == 200  # a current driver of haul's
    assert w.nominate(rid, w.p.driver).status_code == 200  # renominated, so the removal is not refused (409)
    r = w.remove(w.security, person, haul, "driver")
    assert r.status_code == 200, r.text
    other = w.right(2, haul)
    r = w.nominate(other, person)
    _as_a_stranger(w, other, r)
    # Named by his badge (haul2's): as a badge that does not exist.
    by_badge = [w.http.put(f"/api/v1/releases/{other}/nomination", headers=w.as_("haul"),
                           json={"badge": {"scheme": "alfapass", "number": number}, "plate": PLATE})
                for number in (_number(person), "AP-999999")]
    _problem(by_badge[0], 422, "unknown_badge")
    assert by_badge[0].json() == by_badge[1].json()
    assert _nominated(w, other) is None


def test_a_driver_membership_run_out_by_its_valid_until_cuts_the_link_swept_or_not(world: World) -> None:
    w = world
    haul, _, person = _mover(w)
    at = datetime.now(UTC)
    with w.engine.begin() as conn:
        conn.execute(memberships.update().where(memberships.c.person_id == person, memberships.c.role == "driver")
                     .values(valid_until=at - timedelta(seconds=5)))
    rid = w.right(1, haul)
    _as_a_stranger(w, rid, w.nominate(rid, person))
    assert _nominated(w, rid) is None


def test_a_former_employer_does_not_read_his_screening(world: World) -> None:
    """Suspended by port security: his former employer hears what it hears of a stranger, not
    driver_screening_failed with person_suspended."""
    w = world
    haul, _, person = _mover(w)
    assert w.remove(w.security, person, haul, "driver").status_code == 200
    with w.engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == person).values(status="suspended"))
    rid = w.right(1, haul)
    r = w.nominate(rid, person)
    assert "person_suspended" not in r.text, r.text
    _as_a_stranger(w, rid, r)


def test_a_current_driver_still_nominates(world: World) -> None:
    """By his driver membership (his badge is another haulier's), or by a usable badge issued for the
    haulier (p.driver), and his screening is then the haulier's to read."""
    w = world
    haul, haul2, person = _mover(w)
    rid = w.right(1, haul)
    r = w.nominate(rid, person)
    assert r.status_code == 200, r.text
    assert r.json()["release"]["nomination"]["driver_person_id"] == str(person)
    assert w.nominate(rid, w.p.driver).status_code == 200
    # haul2 has no membership of his, but his badge is issued for it: he drives for haul2 too.
    rid2 = w.right(2, haul2)
    assert w.nominate(rid2, person, by="haul2").status_code == 200
    with w.engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == person).values(status="suspended"))
    r = w.nominate(w.right(3, haul), person)
    assert _problem(r, 409, "driver_screening_failed") and "person_suspended" in r.text, r.text

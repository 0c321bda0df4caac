"""A driver who left a haulier is no longer its to nominate (security review: ``drives_for`` counted any
badge ever issued for the haulier). Only a badge usable now (status active, valid_from <= now <
valid_until, by the service's clock) links him through a badge; a revoked, blocked, inactive, expired or
not yet valid one leaves him a stranger to that haulier, refused exactly as a person or badge that does
not exist, so it learns nothing of his screening (port ban) any more. Real PostgreSQL and SQLite through
the fixtures, real tokens, the real app.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
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
from quaygate.schema import badges, memberships
from quaygate.settings import Settings

from .factories import add_driver
from .test_release_api import assert_problem
from .test_release_hardening import PLATE, Clock, Rig

OLD_BADGE = with_check(Scheme.ALFAPASS, 73737)  # a number the gate, and so a nomination, reads


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


def _badge_for(rig: Rig, person: uuid.UUID, organisation: uuid.UUID, *, status: str, valid_from: datetime,
               valid_until: datetime) -> None:
    with rig.engine.begin() as conn:
        conn.execute(badges.insert().values(
            id=uuid.uuid4(), person_id=person, scheme="alfapass", number=OLD_BADGE, card_uid=None,
            employer_organisation_id=organisation, status=status, valid_from=valid_from,
            valid_until=valid_until, created_at=valid_from))


def _mover(rig: Rig) -> uuid.UUID:
    """A driver who now works for haul2 (employer, and an active in-date badge for it), and whose only
    link to haul is the badge the test gives him."""
    return add_driver(rig.engine, rig.p.haul2.organisation_id)  # type: ignore[arg-type]


def _nominate(rig: Rig, rid: str, named_by: str, person: uuid.UUID | str, badge: str) -> Any:
    driver = ({"badge": {"scheme": "alfapass", "number": badge}} if named_by == "badge"
              else {"driver_person_id": str(person)})
    return rig.http.put(f"/api/v1/releases/{rid}/nomination", headers=rig.as_("haul"),
                        json={**driver, "plate": PLATE})


STALE = {  # status, valid_from and valid_until relative to now
    "revoked": ("revoked", -timedelta(days=400), timedelta(days=30)),
    "blocked": ("blocked", -timedelta(days=400), timedelta(days=30)),
    "inactive": ("inactive", -timedelta(days=400), timedelta(days=30)),
    "expired": ("expired", -timedelta(days=400), -timedelta(days=1)),
    "lapsed_not_yet_swept": ("active", -timedelta(days=400), -timedelta(seconds=1)),
    "not_yet_valid": ("active", timedelta(days=1), timedelta(days=400)),
}


@pytest.mark.parametrize("named_by", ["person", "badge"])
@pytest.mark.parametrize("stale", list(STALE))
def test_a_driver_whose_only_badge_for_the_haulier_is_not_usable_now_is_a_stranger_to_it(
        rig: Rig, stale: str, named_by: str) -> None:
    rid = rig.right_for(11, to="haul")
    mover = _mover(rig)
    status, since, until = STALE[stale]
    now = rig.clock.now()
    _badge_for(rig, mover, rig.p.haul.organisation_id, status=status,  # type: ignore[arg-type]
               valid_from=now + since, valid_until=now + until)
    before = rig.events(rid)
    r = _nominate(rig, rid, named_by, mover, OLD_BADGE)
    assert r.status_code == 422, r.text  # before the mend: 200, and his screening read by a former haulier
    unknown = _nominate(rig, rid, named_by, uuid.uuid4(), "AP-999999")
    assert (r.status_code, r.json()) == (unknown.status_code, unknown.json() | {"instance": r.json()["instance"]})
    assert_problem(r, 422, "unknown_badge" if named_by == "badge" else "unknown_person")
    assert rig.events(rid) == before


@pytest.mark.parametrize("named_by", ["person", "badge"])
def test_a_driver_with_an_active_in_date_badge_for_the_haulier_drives_for_it(rig: Rig, named_by: str) -> None:
    rid = rig.right_for(12, to="haul")
    mover = _mover(rig)
    now = rig.clock.now()
    _badge_for(rig, mover, rig.p.haul.organisation_id, status="active",  # type: ignore[arg-type]
               valid_from=now - timedelta(days=1), valid_until=now + timedelta(hours=1))
    r = _nominate(rig, rid, named_by, mover, OLD_BADGE)
    assert r.status_code == 200, r.text
    assert r.json()["release"]["nomination"]["driver_person_id"] == str(mover), r.text


def test_the_badge_stops_linking_him_when_it_runs_out_by_the_services_clock(rig: Rig) -> None:
    """``now`` is the service's clock: the same badge links him until its valid_until, not after."""
    rid = rig.right_for(13, to="haul")
    mover = _mover(rig)
    now = rig.clock.now()
    _badge_for(rig, mover, rig.p.haul.organisation_id, status="active",  # type: ignore[arg-type]
               valid_from=now - timedelta(days=1), valid_until=now + timedelta(hours=1))
    assert _nominate(rig, rid, "person", mover, OLD_BADGE).status_code == 200
    rig.clock.at = now + timedelta(hours=2)
    assert_problem(_nominate(rig, rid, "person", mover, OLD_BADGE), 422, "unknown_person")


def test_a_driver_membership_still_links_him_whatever_his_badge(rig: Rig) -> None:
    """The other links are current-state and kept: a ``driver`` membership of the haulier (a
    subcontractor) makes him its driver even with only a revoked badge for it; then his screening's
    reasons are the haulier's to read."""
    rid = rig.right_for(14, to="haul")
    mover = _mover(rig)
    now = rig.clock.now()
    _badge_for(rig, mover, rig.p.haul.organisation_id, status="revoked",  # type: ignore[arg-type]
               valid_from=now - timedelta(days=1), valid_until=now + timedelta(days=30))
    assert_problem(_nominate(rig, rid, "person", mover, OLD_BADGE), 422, "unknown_person")
    with rig.engine.begin() as conn:
        conn.execute(memberships.insert().values(person_id=mover, organisation_id=rig.p.haul.organisation_id,
                                                 role="driver", created_at=now))
    r = _nominate(rig, rid, "person", mover, OLD_BADGE)
    assert r.status_code == 200, r.text  # his haul2 badge is active and in date: screening clear

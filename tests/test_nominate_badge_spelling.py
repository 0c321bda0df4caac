"""A nomination by badge reads the number and the card UID as the gate reads them (review 174,
finding 5). The directory looked the badge up exactly as typed: AP123455, ap-123455 and
27:a3:48:84:21:38:40 each gave 422 unknown_badge, where the gate found the badge from every one of
them. Now the nomination's lookup is the gate's (SqlGateStore.badge_lookup: validate_number and
validate_card_uid of identity.domain.badges), so it names exactly the badge the gate will find. Real
SQLite and PostgreSQL through the fixtures, real tokens, the real app.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from quaygate.app import create_app
from quaygate.cache import MemoryCache
from quaygate.container import Container
from quaygate.crypto import DataCipher
from quaygate.schema import badges
from quaygate.settings import Settings
from release_service.adapters.sqla.gate import SqlGateStore
from release_service.domain.gate import BadgeRead

from .factories import add_driver
from .test_release_api import assert_problem
from .test_release_hardening import PLATE, Clock, Rig

NUMBER, CARD_UID = "AP-123455", "27A34884213840"

SPELLINGS: list[dict[str, Any]] = [
    {"scheme": "alfapass", "number": "AP123455"},
    {"scheme": "alfapass", "number": "ap-123455"},
    {"scheme": "alfapass", "number": " ap 123455 "},
    {"scheme": "alfapass", "card_uid": "27:a3:48:84:21:38:40"},
    {"scheme": "alfapass", "card_uid": "27 a3 48 84 21 38 40"},
    {"scheme": "alfapass", "number": "ap123455", "card_uid": "27:A3:48:84:21:38:40"},
]


@pytest.fixture
def rig(engine: sa.Engine, tmp_path: Path) -> Iterator[Rig]:
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        background_workers=False)
    c = Container(settings=settings, engine=engine, cache=MemoryCache(),
                  cipher=DataCipher(settings.data_key_bytes()), clock=Clock())  # type: ignore[arg-type]
    with TestClient(create_app(settings, container=c)) as http:
        yield Rig(http, engine)


def _driver(rig: Rig) -> uuid.UUID:
    driver = add_driver(rig.engine, rig.p.haul.organisation_id, number=NUMBER)  # type: ignore[arg-type]
    with rig.engine.begin() as conn:
        conn.execute(badges.update().where(badges.c.person_id == driver).values(card_uid=CARD_UID))
    return driver


def _nominate(rig: Rig, rid: str, badge: dict[str, Any]) -> Any:
    return rig.http.put(f"/api/v1/releases/{rid}/nomination", headers=rig.as_("haul"),
                        json={"badge": badge, "plate": PLATE})


def test_every_spelling_the_gate_reads_names_the_driver(rig: Rig) -> None:
    driver = _driver(rig)
    for n, badge in enumerate(SPELLINGS, start=20):
        # The gate finds the badge from this spelling (the same lookup the nomination now makes).
        assert SqlGateStore.badge_lookup(BadgeRead(badge["scheme"], badge.get("number"), badge.get("card_uid")))
        r = _nominate(rig, rig.right_for(n, to="haul"), badge)
        assert r.status_code == 200, (badge, r.text)  # before the mend: 422 unknown_badge
        assert r.json()["release"]["nomination"]["driver_person_id"] == str(driver)


@pytest.mark.parametrize("badge", [
    {"scheme": "alfapass", "number": "AP-123456"},  # the check digit is wrong: the gate finds nothing
    {"scheme": "alfapass", "card_uid": "27:a3:48:84:21:38:41"},  # another card
    {"scheme": "alfapass", "card_uid": "27:a3:48"},  # not a card UID
    {"scheme": "portpass", "number": NUMBER},  # another scheme
    {"scheme": "alfapass", "number": "ap123455", "card_uid": "27:a3:48:84:21:38:41"},  # both given: both match
])
def test_a_spelling_the_gate_does_not_find_is_an_unknown_badge(rig: Rig, badge: dict[str, Any]) -> None:
    _driver(rig)
    assert_problem(_nominate(rig, rig.right_for(30, to="haul"), badge), 422, "unknown_badge")


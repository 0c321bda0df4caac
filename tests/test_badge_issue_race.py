"""Two badge issues at once with the same number or the same card UID, on real PostgreSQL and SQLite
(review 174, finding 3).

An issue checks that the number and the card UID are free, then inserts; the two issues lock
different persons, so on PostgreSQL both checks pass while the first is uncommitted, and the second
insert runs into the unique index (uq_badges_scheme_number, the card_uid key): it waits for the
first, and once that commits it failed with an IntegrityError, a 500 on POST /admin/v1/badges.
Now the loser is refused as a sequential second issue is: badge_number_taken or card_uid_taken
(409). SQLite's writers run one at a time (BEGIN IMMEDIATE), so there the second waits before it
checks and is refused by the check: the same outcome, by the other road.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from identity.badges.service import BadgeError, BadgeService, IssueBadge, Issued
from identity.domain.badges import Scheme, with_check
from quaygate.schema import badges
from tests.interleave import HeldBeforeCommit, in_thread, waits_on_a_lock
from tests.test_badges_store import NOW, add_person

CASES = {  # (the first issue's serial and card UID, the second's), and the code the second gets
    "same_number": ((10023, "04A1B2C3D4E5F6"), (10023, "0A0B0C0D"), "badge_number_taken"),
    "same_card_uid": ((10023, "04A1B2C3D4E5F6"), (10024, "04:a1:b2:c3:d4:e5:f6"), "card_uid_taken"),
}


def _issue(person: uuid.UUID, serial: int, uid: str) -> IssueBadge:
    return IssueBadge(person, "alfapass", with_check(Scheme.ALFAPASS, serial), uid, None, NOW - timedelta(days=1),
                      NOW + timedelta(days=300))


@pytest.mark.parametrize("case", list(CASES))
def test_the_second_of_two_issues_at_once_is_refused_as_taken(engine: sa.Engine, case: str) -> None:
    (first_serial, first_uid), (second_serial, second_uid), code = CASES[case]
    service = BadgeService(engine)
    one, two = add_person(engine), add_person(engine)

    def attempt(person: uuid.UUID, serial: int, uid: str) -> Any:
        try:
            return service.issue(_issue(person, serial, uid), actor="desk", now=NOW)
        except BadgeError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - the 500 of before: keep it to show it
            return exc

    with HeldBeforeCommit(engine, "INSERT INTO badges") as held:
        first, firsts = in_thread(lambda: attempt(one, first_serial, first_uid))
        assert held.held.wait(10)  # the first issue inserted and holds its transaction open
        second, seconds = in_thread(lambda: attempt(two, second_serial, second_uid))
        if engine.dialect.name == "postgresql":
            assert waits_on_a_lock(engine, second)  # its insert waits on the first's key
        else:
            second.join(0.5)
            assert second.is_alive()  # it waits for the writer's lock (BEGIN IMMEDIATE)
        held.go.set()
        first.join(20)
        second.join(20)
    assert isinstance(firsts[0], Issued), firsts[0]
    refused = seconds[0]
    # Before the mend, on PostgreSQL: sqlalchemy.exc.IntegrityError (duplicate key), a 500.
    assert isinstance(refused, BadgeError), repr(refused)
    assert refused.code == code
    with engine.connect() as conn:
        held_by = conn.execute(sa.select(badges.c.person_id)).scalars().all()
    assert held_by == [one]

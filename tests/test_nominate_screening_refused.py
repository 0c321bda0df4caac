"""Review 170, finding 3: a nomination refused by the driver's screening leaves a trace. The refusal
(``driver_screening_failed``) rolled back everything the use case wrote, so a haulier trying to put a
banned driver on a right left nothing on the audit trail. Now port security's entry
``release.nomination.screening_refused`` (the right, the operator, the driver, the screening and its
reasons) is committed with the refusal (``DomainError.keep_effects``), and nothing else of the attempt
is. SQLite and PostgreSQL, over HTTP."""

# ruff: noqa: F811 - ``api`` is a fixture imported here and requested by name

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bans.loader import load_feed
from quaygate.crypto import keyed_hash
from quaygate.schema import audit_log, memberships, persons, release_events

from .ban_register import Register, ban, national_number, snapshot
from .factories import TERMINAL
from .test_release_api import Api, api, assert_problem  # noqa: F401 - ``api`` is a fixture requested by name

PEPPER = b"test-pepper-one"
SCREENING_REFUSED = "release.nomination.screening_refused"


@pytest.fixture
def banned(api: Api) -> None:
    """The port's driver under a port ban in effect, loaded from the register's feed. The ban turned his
    badge inactive; a driver membership (the badge office's link) keeps him the haulier's driver."""
    number = national_number(70)
    with api.engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == api.p.driver)
                     .values(national_id_hash=keyed_hash(PEPPER, number)))
        conn.execute(memberships.insert().values(person_id=api.p.driver, organisation_id=api.p.haul.organisation_id,
                                                 role="driver", created_at=datetime.now(UTC)))
    register = Register()
    t = datetime.now(UTC)
    feed = snapshot(1, t, [ban(number, "R-70", start=t - timedelta(hours=1))])
    load_feed(api.engine, register.sign(feed), key=register.public_key, pepper=PEPPER, now=t,
              max_feed_age=timedelta(days=1))


def _trail(engine: sa.Engine) -> list[tuple[str, str | None, dict[str, Any]]]:
    with engine.connect() as conn:
        return [(r.kind, r.subject, r.data) for r in conn.execute(
            sa.select(audit_log.c.kind, audit_log.c.subject, audit_log.c.data).order_by(audit_log.c.id))]


def _events(engine: sa.Engine, rid: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(release_events.c.type)
                                 .where(release_events.c.release_id == uuid.UUID(rid))
                                 .order_by(release_events.c.seq)).scalars())


def test_a_nomination_refused_by_the_screening_is_on_the_audit_trail(api: Api, banned: None) -> None:
    rid = str(api.issue(release_to_organisation_id=str(api.p.haul.organisation_id))["release"]["id"])
    haul = api.as_("haul")  # its token's issue audited before the trail is read
    before, events = _trail(api.engine), _events(api.engine, rid)
    body = {"driver_person_id": str(api.p.driver), "plate": {"text": "1-ABC-123", "country": "BE"}}
    r = api.http.put(f"/api/v1/releases/{rid}/nomination", headers=haul, json=body)
    assert_problem(r, 409, "driver_screening_failed")
    assert r.json()["screening"] == "banned" and "person_banned" in r.json()["reasons"], r.text
    after = _trail(api.engine)
    assert after[:len(before)] == before
    [(kind, subject, data)] = after[len(before):]
    assert (kind, subject) == (SCREENING_REFUSED, rid)
    assert data == {"release_id": rid, "terminal": TERMINAL, "operator_organisation_id":
                    str(api.p.haul.organisation_id), "driver_person_id": str(api.p.driver),
                    "screening": "banned", "reasons": r.json()["reasons"]}
    # Nothing else of the attempt stands: the right is not nominated, no event, no webhook.
    assert _events(api.engine, rid) == events
    assert api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("haul")).json()["state"] == "active"


def test_a_retry_with_the_same_idempotency_key_is_refused_and_traced_again(api: Api, banned: None) -> None:
    """The trace stands, the key does not (``services.common.run``): the retry runs again."""
    rid = str(api.issue(release_to_organisation_id=str(api.p.haul.organisation_id))["release"]["id"])
    body = {"driver_person_id": str(api.p.driver), "plate": {"text": "1-ABC-123", "country": "BE"}}
    headers = {**api.as_("haul"), "Idempotency-Key": "nominate-banned-1"}
    for _ in range(2):
        r = api.http.put(f"/api/v1/releases/{rid}/nomination", headers=headers, json=body)
        assert_problem(r, 409, "driver_screening_failed")
    assert [k for k, _, _ in _trail(api.engine)].count(SCREENING_REFUSED) == 2


def test_a_refusal_before_the_screening_leaves_no_such_entry(api: Api, banned: None) -> None:
    """Only the screening's refusal is traced: a haulier not holding the right is refused before the
    driver is even looked up (nothing of him to record)."""
    rid = str(api.issue(release_to_organisation_id=str(api.p.haul.organisation_id))["release"]["id"])
    body = {"driver_person_id": str(api.p.driver), "plate": {"text": "1-ABC-123", "country": "BE"}}
    r = api.http.put(f"/api/v1/releases/{rid}/nomination", headers=api.as_("haul2"), json=body)
    assert r.status_code in (403, 404), r.text
    assert SCREENING_REFUSED not in [k for k, _, _ in _trail(api.engine)]

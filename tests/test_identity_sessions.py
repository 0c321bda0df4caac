"""Login sessions: the cookie opens its session only, until it expires or is ended."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from identity.domain import assurance
from identity.sessions import SessionStore
from quaygate.schema import login_sessions, persons

NOW = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def _person(engine: sa.Engine) -> uuid.UUID:
    pid = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(persons.insert().values(id=pid, given_name="Jan", family_name="Peeters", created_at=NOW))
    return pid


def test_cookie_opens_its_session_until_it_expires(engine: sa.Engine) -> None:
    store = SessionStore(engine, ttl_seconds=3600)
    pid = _person(engine)
    cookie, created = store.create(pid, acr=assurance.ACR_PASSKEY, amr=assurance.AMR_PASSKEY, now=NOW)
    found = store.get(cookie, now=NOW + timedelta(minutes=59))
    assert found == created
    assert found is not None and found.person_id == pid and found.amr == assurance.AMR_PASSKEY
    assert store.get(cookie, now=NOW + timedelta(hours=1)) is None  # expired
    assert store.get(cookie + "x", now=NOW) is None
    assert store.get("", now=NOW) is None and store.get(None, now=NOW) is None


def test_only_the_hash_of_the_cookie_is_stored(engine: sa.Engine) -> None:
    store = SessionStore(engine, ttl_seconds=3600)
    cookie, session = store.create(_person(engine), acr=assurance.ACR_PASSKEY, amr=["hwk"], now=NOW)
    with engine.connect() as conn:
        row = conn.execute(sa.select(login_sessions)).one()
    assert cookie not in row._mapping.values()
    assert row.sid == session.sid and row.sid != cookie


def test_an_ended_session_stays_ended(engine: sa.Engine) -> None:
    store = SessionStore(engine, ttl_seconds=3600)
    cookie, session = store.create(_person(engine), acr=assurance.ACR_PASSKEY, amr=["hwk"], now=NOW)
    assert store.end(session.sid, now=NOW) is True
    assert store.end(session.sid, now=NOW) is False
    assert store.get(cookie, now=NOW) is None


def test_assurance_order() -> None:
    assert assurance.satisfies(assurance.ACR_FACE, assurance.ACR_PASSKEY)
    assert not assurance.satisfies(assurance.ACR_PASSKEY, assurance.ACR_FACE)
    assert assurance.satisfies(None, None) and not assurance.satisfies(None, assurance.ACR_PASSKEY)
    assert not assurance.satisfies("urn:unknown", assurance.ACR_PASSKEY)
    assert assurance.weakest_acceptable(["x", assurance.ACR_FACE, assurance.ACR_UPSTREAM]) == assurance.ACR_UPSTREAM
    assert assurance.weakest_acceptable(["x"]) is None

"""Face data does not outlive the driver's work in the port (review 131, finding 4), on SQLite and
PostgreSQL: a withdrawal strips the person's matched captures of their uses and times in its own
transaction (the digests stay: a copy of an old capture is still a replay after a re-enrolment), and
the retention sweep (identity/face/retention.py) withdraws, audited, the templates of persons who have
had no badge in use and no membership in force for longer than the setting; two sweeps at once
withdraw each once (real PostgreSQL)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.domain import face_enrolment as enrolments
from identity.face.engine import Analysis
from identity.face.pool import FacePool
from identity.face.retention import sweep
from identity.face.service import FaceService
from identity.face.store import WITHDRAWN_USE, CaptureStore
from quaygate.crypto import DataCipher
from quaygate.schema import audit_log, badges, face_captures, face_templates, memberships, organisations, persons

AFTER = timedelta(days=30)
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
ENCODING = tuple(0.01 * i for i in range(128))  # a template: any 128 finite numbers


@pytest.fixture
def face(engine: sa.Engine) -> Iterator[FaceService]:
    pool = FacePool(1)  # never started: nothing here analyses an image
    yield FaceService(engine=engine, cipher=DataCipher(b"k" * 32), pool=pool, tolerance=0.5,
                      max_image_bytes=4_000_000)
    pool.close()


def _person(engine: sa.Engine) -> uuid.UUID:
    pid = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(persons.insert().values(id=pid, given_name="Jan", family_name="Peeters", created_at=T0))
    return pid


def _org(engine: sa.Engine, *, active: bool = True) -> uuid.UUID:
    org = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(organisations.insert().values(id=org, name=f"haulier {org.hex[:6]}", kind="transport_operator",
                                                   created_at=T0, active=active))
    return org


def _badge(engine: sa.Engine, pid: uuid.UUID, status: str = "active", valid_until: datetime = T0 + AFTER * 10) -> None:
    with engine.begin() as conn:
        conn.execute(badges.insert().values(id=uuid.uuid4(), person_id=pid, scheme="alfapass",
                                            number=f"AP-{uuid.uuid4().hex[:8]}", status=status,
                                            valid_from=T0 - AFTER, valid_until=valid_until, created_at=T0))


def _member(engine: sa.Engine, pid: uuid.UUID, org: uuid.UUID, valid_until: datetime | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(memberships.insert().values(person_id=pid, organisation_id=org, role="driver", created_at=T0,
                                                 valid_until=valid_until))


def _enrol(face: FaceService, pid: uuid.UUID, at: datetime = T0, reason: str | None = None) -> None:
    face._store_enrolment(pid, Analysis(code=None, faces=1, face_px=150, sharpness=500.0, encoding=ENCODING),
                          "id_photo", "badge-office", at, reason)


def _claim(engine: sa.Engine, pid: uuid.UUID, digest: bytes, use: str, at: datetime) -> bool:
    with engine.begin() as conn:
        return CaptureStore(conn).claim(pid, digest, used_for=use, now=at, since=at - timedelta(days=365))


def _enrolled(engine: sa.Engine) -> dict[uuid.UUID, datetime | None]:
    with engine.connect() as conn:
        return {r.person_id: r.leaving_since for r in conn.execute(
            sa.select(face_templates.c.person_id, face_templates.c.leaving_since))}


def _withdrawn(engine: sa.Engine) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    with engine.connect() as conn:
        return [(r.subject, r.actor, r.data) for r in conn.execute(
            sa.select(audit_log).where(audit_log.c.kind == enrolments.WITHDRAWN).order_by(audit_log.c.id))]


# ---- a withdrawal strips the captures -------------------------------------------------------------


def test_a_withdrawal_strips_the_captures_of_their_uses_and_keeps_the_digests(engine: sa.Engine,
                                                                                 face: FaceService) -> None:
    driver, other = _person(engine), _person(engine)
    _enrol(face, driver)
    _enrol(face, other)
    old = T0 + timedelta(days=1)
    assert _claim(engine, driver, b"a" * 32, "gate:BEANR-K1700:r-1", old)
    assert _claim(engine, driver, b"b" * 32, "step_up:sid-1", old + timedelta(hours=2))
    assert _claim(engine, other, b"c" * 32, "gate:BEANR-K1700:r-2", old)
    out = T0 + timedelta(days=40)
    face.withdraw(driver, actor="badge-office", now=out)

    with engine.connect() as conn:
        rows = {(r.person_id, r.digest): (r.used_for, r.seen_at) for r in conn.execute(sa.select(face_captures))}
    # the movement history is gone (where, and when each match was), the digests stay
    assert rows[(driver, b"a" * 32)] == rows[(driver, b"b" * 32)] == (WITHDRAWN_USE, out)
    assert rows[(other, b"c" * 32)] == ("gate:BEANR-K1700:r-2", old)  # another person's are his
    [(subject, actor, data)] = _withdrawn(engine)
    assert (subject, data["captures_stripped"], actor) == (str(driver), 2, {"client_id": "badge-office"})

    # Enrolled again (after an officer's withdrawal, with a reason: 70f9c0b), the same bytes of an old capture are
    # still a replay, never a retry of "withdrawn".
    _enrol(face, driver, out, "back at work")
    later = out + timedelta(days=1)
    assert not _claim(engine, driver, b"a" * 32, "gate:BEANR-K1700:r-9", later)
    assert _claim(engine, driver, b"d" * 32, "gate:BEANR-K1700:r-9", later)


# ---- the retention sweep --------------------------------------------------------------------------


def test_the_templates_of_persons_who_left_are_withdrawn_after_the_grace(engine: sa.Engine,
                                                                          face: FaceService) -> None:
    org, closed = _org(engine), _org(engine, active=False)
    badged, member, revoked, expired, ended, in_closed, nothing, back = (_person(engine) for _ in range(8))
    _badge(engine, badged, "inactive")  # a missing card may come back: he stays
    _member(engine, member, org)
    _badge(engine, revoked, "revoked")
    _badge(engine, expired, valid_until=T0 - timedelta(days=1))  # active, but its validity is over
    _member(engine, ended, org, valid_until=T0 - timedelta(days=1))
    _member(engine, in_closed, closed)  # a deactivated organisation's roles count nowhere
    for pid in (badged, member, revoked, expired, ended, in_closed, nothing, back):
        _enrol(face, pid)
    assert _claim(engine, nothing, b"n" * 32, "gate:BEANR-K1700:r-1", T0)

    cipher = face._cipher
    assert sweep(engine, cipher, now=T0, after=AFTER) == 0
    left = {revoked, expired, ended, in_closed, nothing, back}
    assert _enrolled(engine) == {badged: None, member: None, **dict.fromkeys(left, T0)}

    _member(engine, back, org)  # hired again within the grace: he keeps his face
    assert sweep(engine, cipher, now=T0 + AFTER, after=AFTER) == 0  # not more than 30 days yet
    assert _enrolled(engine)[back] is None

    _enrol(face, revoked, T0 + AFTER)  # the badge office enrols him anew: the clock starts afresh
    assert _enrolled(engine)[revoked] is None
    assert sweep(engine, cipher, now=T0 + AFTER + timedelta(hours=1), after=AFTER) == 4
    assert set(_enrolled(engine)) == {badged, member, back, revoked}
    assert _enrolled(engine)[revoked] == T0 + AFTER + timedelta(hours=1)
    gone = _withdrawn(engine)
    assert {subject for subject, _, _ in gone} == {str(p) for p in (expired, ended, in_closed, nothing)}
    for _, actor, data in gone:
        assert actor == {"system": "face-retention"}
        assert (data["reason"], data["leaving_since"]) == ("left", T0.isoformat())
        assert data["tag"] and data["generation"] == 2  # a withdrawal as the badge office's: tagged
    assert [d["captures_stripped"] for s, _, d in gone if s == str(nothing)] == [1]
    with engine.connect() as conn:
        assert conn.execute(sa.select(face_captures.c.used_for)).scalars().all() == [WITHDRAWN_USE]
    assert sweep(engine, cipher, now=T0 + AFTER * 3, after=AFTER) == 1  # revoked's own 30 days
    assert sweep(engine, cipher, now=T0 + AFTER * 3, after=AFTER) == 0


def test_a_template_is_not_withdrawn_if_its_person_came_back_after_the_round_read_it(
    engine: sa.Engine, face: FaceService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round lists who is due, then withdraws each under his lock, checking again: a badge issued in
    between keeps the face."""
    pid = _person(engine)
    _enrol(face, pid)
    assert sweep(engine, face._cipher, now=T0, after=AFTER) == 0
    import identity.face.retention as retention

    real = retention._withdraw

    def badge_first(*args: Any, **kw: Any) -> bool:
        _badge(engine, pid)
        return real(*args, **kw)

    monkeypatch.setattr(retention, "_withdraw", badge_first)
    assert sweep(engine, face._cipher, now=T0 + AFTER * 2, after=AFTER) == 0
    assert pid in _enrolled(engine) and _withdrawn(engine) == []


def test_two_sweeps_at_once_withdraw_each_template_once(pg_engine: sa.Engine) -> None:
    """Every replica runs the sweep: on PostgreSQL, two at once (and again) neither wait on each other
    for good nor withdraw a template twice."""
    engine = pg_engine
    pool = FacePool(1)
    face = FaceService(engine=engine, cipher=DataCipher(b"k" * 32), pool=pool, tolerance=0.5,
                       max_image_bytes=4_000_000)
    try:
        people = [_person(engine) for _ in range(30)]
        for pid in people:
            _enrol(face, pid)
        start, got, failed = threading.Barrier(2), [], []

        def run(now: datetime) -> None:
            start.wait()
            try:
                got.append(sweep(engine, face._cipher, now=now, after=AFTER))
            except Exception as exc:  # noqa: BLE001 - the test reports it
                failed.append(exc)

        for now in (T0, T0 + AFTER * 2):
            threads = [threading.Thread(target=run, args=(now,)) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
        assert failed == []
        assert sum(got) == len(people) and _enrolled(engine) == {}
        assert sorted(s for s, _, _ in _withdrawn(engine)) == sorted(str(p) for p in people)
    finally:
        pool.close()


def test_every_replica_s_background_workers_run_the_sweep(engine: sa.Engine, database_url: str,
                                                           tmp_path: Path) -> None:
    """quaygate/workers.py runs the sweep at start (then hourly): a person with no badge and no
    membership is marked at once, with the service's own clock."""
    from quaygate.cache import make_cache
    from quaygate.container import Container, SystemClock
    from quaygate.workers import BackgroundWorkers

    from .test_audit_tamper import settings_for

    settings = settings_for(database_url, tmp_path)
    cipher = DataCipher(settings.data_key_bytes())
    pool = FacePool(1)
    face = FaceService(engine=engine, cipher=cipher, pool=pool, tolerance=0.5, max_image_bytes=4_000_000)
    pid = _person(engine)
    _enrol(face, pid)
    workers = BackgroundWorkers(Container(settings=settings, engine=engine, cache=make_cache(None), cipher=cipher,
                                          clock=SystemClock()))
    workers.start()
    try:
        deadline = time.monotonic() + 10
        while _enrolled(engine)[pid] is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        workers.stop()
        pool.close()
    assert _enrolled(engine)[pid] is not None


def test_a_suspension_neither_starts_the_clock_nor_stops_it(engine: sa.Engine, face: FaceService) -> None:
    """docs/face.md "Retention": a suspended person still works in the port while his badge is in use
    (or his membership in force), so his template is kept as an active person's; his reinstatement
    changes nothing of it. Only the end of his badges and memberships starts his 30 days."""
    suspended, leaving = _person(engine), _person(engine)
    _badge(engine, suspended)
    _enrol(face, suspended)
    _enrol(face, leaving)  # no badge, no membership
    with engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id.in_([suspended, leaving])).values(status="suspended"))
    cipher = face._cipher
    assert sweep(engine, cipher, now=T0, after=AFTER) == 0
    assert _enrolled(engine) == {suspended: None, leaving: T0}
    assert sweep(engine, cipher, now=T0 + AFTER * 3, after=AFTER) == 1  # a suspended leaver's 30 days ran
    assert _enrolled(engine) == {suspended: None}
    with engine.begin() as conn:  # reinstated, then his badge revoked: from then on, his 30 days
        conn.execute(persons.update().where(persons.c.id == suspended).values(status="active"))
        conn.execute(badges.update().where(badges.c.person_id == suspended).values(status="revoked"))
    assert sweep(engine, cipher, now=T0 + AFTER * 4, after=AFTER) == 0
    assert _enrolled(engine) == {suspended: T0 + AFTER * 4}

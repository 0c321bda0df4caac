"""Idempotency keys are kept for a retention, not for ever (review 159, finding 1).

A key's stored answer (a batch of rights, a nomination's driver and plate) goes once older than
QUAYGATE_IDEMPOTENCY_RETENTION_SECONDS: swept by a background loop, and treated as absent by the lookup
before the sweep comes, so a key reused past the retention is a new request whatever the sweep's timing.
Within it, the same key replays the first answer as before. Real SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import ValidationError

from quaygate.app import create_app
from quaygate.cache import MemoryCache, make_cache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import idempotency_keys, releases
from quaygate.settings import Settings
from quaygate.workers import BackgroundWorkers
from release_service.adapters.sqla.idempotency import prune_idempotency_keys
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.services import issue
from release_service.services.common import IdempotencyRequest, run

from .factories import TERMINAL, container, issue_cmd, now, port
from .test_audit_tamper import settings_for
from .test_release_api import Api
from .test_webhooks import CIPHER
from .test_webhooks_limits import wait_for

HOUR = 3600


@pytest.fixture
def api(engine: sa.Engine, tmp_path: Path) -> Iterator[Api]:
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        background_workers=False, idempotency_retention_seconds=HOUR)
    c = Container(settings=settings, engine=engine, cache=MemoryCache(),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    with TestClient(create_app(settings, container=c)) as http:
        yield Api(http, engine)


AT = datetime.now(UTC).replace(microsecond=0)  # one body, sent again, is the same request


def _issue_body(api: Api, bill: str = "BL") -> dict[str, Any]:
    at = AT
    return {"container_number": container(9), "bill_of_lading": bill, "vessel_call": "VC", "terminal": TERMINAL,
            "release_to_organisation_id": str(api.p.fwd.organisation_id), "valid_from": at.isoformat(),
            "valid_until": (at + timedelta(days=1)).isoformat()}


def _age_keys(engine: sa.Engine, by: timedelta) -> None:
    """Every stored key as if made ``by`` earlier: the request came that long ago."""
    with engine.begin() as conn:
        for row in conn.execute(sa.select(idempotency_keys.c.client_id, idempotency_keys.c.key,
                                          idempotency_keys.c.created_at)).all():
            conn.execute(idempotency_keys.update().where(
                idempotency_keys.c.client_id == row.client_id, idempotency_keys.c.key == row.key,
            ).values(created_at=row.created_at - by))


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_a_key_within_its_retention_replays_the_first_answer(api: Api) -> None:
    headers = {**api.as_("line"), "Idempotency-Key": "readme-issue-1"}
    first = api.http.post("/api/v1/releases", json=_issue_body(api), headers=headers)
    assert first.status_code == 201, first.text
    _age_keys(api.engine, timedelta(seconds=HOUR - 60))
    again = api.http.post("/api/v1/releases", json=_issue_body(api), headers=headers)
    assert _count(api.engine, idempotency_keys) == 1
    assert again.status_code == 201 and again.json() == first.json()
    assert _count(api.engine, releases) == 1


def test_a_key_reused_past_its_retention_is_a_new_request(api: Api) -> None:
    """The README's deterministic key, sent again a retention later: the line's new issue is made, not
    answered with the old right (before: the years-old answer was replayed, nothing was issued)."""
    headers = {**api.as_("line"), "Idempotency-Key": "readme-issue-1"}
    first = api.http.post("/api/v1/releases", json=_issue_body(api), headers=headers)
    assert first.status_code == 201, first.text
    # The old right is revoked meanwhile, so the container may be issued again.
    rid = first.json()["release"]["id"]
    revoked = api.http.post(f"/api/v1/releases/{rid}/revoke", json={"reason": "re-issue"}, headers=api.as_("line"))
    assert revoked.status_code == 200, revoked.text
    _age_keys(api.engine, timedelta(seconds=HOUR + 1))
    again = api.http.post("/api/v1/releases", json=_issue_body(api), headers=headers)
    assert again.status_code == 201, again.text
    assert again.json()["release"]["id"] != rid and again.json()["release"]["state"] == "active"
    assert _count(api.engine, releases) == 2
    # ... and it is the key's answer from now on: a retry replays the new right.
    retry = api.http.post("/api/v1/releases", json=_issue_body(api), headers=headers)
    assert retry.json() == again.json()


def test_a_key_past_its_retention_may_carry_another_request(api: Api) -> None:
    """Past the retention the key is free: another body under it is a new request, not 422
    idempotency_key_reused."""
    headers = {**api.as_("line"), "Idempotency-Key": "k1"}
    first = api.http.post("/api/v1/releases", json=_issue_body(api, "BL-1"), headers=headers)
    assert first.status_code == 201, first.text
    api.http.post(f"/api/v1/releases/{first.json()['release']['id']}/revoke", json={"reason": "x"},
                  headers=api.as_("line"))
    _age_keys(api.engine, timedelta(seconds=HOUR + 1))
    other = api.http.post("/api/v1/releases", json=_issue_body(api, "BL-2"), headers=headers)
    assert other.status_code == 201, other.text
    assert other.json()["release"]["bill_of_lading"] == "BL-2"


def _stored(engine: sa.Engine, client_id: str, key: str, age: timedelta, body: Any) -> None:
    with engine.begin() as conn:
        conn.execute(idempotency_keys.insert().values(client_id=client_id, key=key, fingerprint="fp",
                                                      status_code=200, body=body, created_at=now() - age))


def _keys(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(idempotency_keys.c.key)).scalars())


def test_the_sweep_deletes_old_keys_in_bounded_batches_and_keeps_new_ones(engine: sa.Engine) -> None:
    for n in range(5):
        _stored(engine, "line", f"old-{n}", timedelta(hours=25 + n), {"n": n})
    for n in range(2):
        _stored(engine, "line", f"new-{n}", timedelta(hours=23), {"n": n})
    before = now() - timedelta(hours=24)
    rounds = []
    while True:
        with engine.begin() as conn:
            n = prune_idempotency_keys(conn, before=before, limit=2)
        rounds.append(n)
        if not n:
            break
    assert rounds == [2, 2, 1, 0]  # bounded per round; the worker runs rounds until none is left
    assert _keys(engine) == {"new-0", "new-1"}


def test_the_background_workers_sweep_keys_past_their_retention(engine: sa.Engine, database_url: str,
                                                                tmp_path: Path) -> None:
    """As the service runs it (quaygate/workers.py): a nomination's answer, its driver and plate, goes
    once past the retention; a younger key stays (before: nothing deleted them, ever)."""
    nomination = {"release": {"nomination": {"driver_person_id": "0d9f...", "plate": {"text": "1ABC123"}}}}
    _stored(engine, "haulier", "old", timedelta(seconds=HOUR + 5), nomination)
    _stored(engine, "haulier", "young", timedelta(seconds=HOUR - 300), nomination)
    settings = settings_for(database_url, tmp_path, idempotency_retention_seconds=HOUR)
    workers = BackgroundWorkers(Container(settings=settings, engine=engine, cache=make_cache(None),
                                          cipher=CIPHER, clock=SystemClock()))
    workers.start()
    try:
        assert wait_for(lambda: "old" not in _keys(engine), seconds=20)
    finally:
        workers.stop()
    assert _keys(engine) == {"young"}


def test_the_retention_is_bounded(tmp_path: Path) -> None:
    """An hour at least (a client's retries of one request fit well within it), 30 days at most."""
    Settings(var_dir=tmp_path, idempotency_retention_seconds=HOUR)
    Settings(var_dir=tmp_path, idempotency_retention_seconds=30 * 24 * HOUR)
    for wrong in (HOUR - 1, 30 * 24 * HOUR + 1):
        with pytest.raises(ValidationError):
            Settings(var_dir=tmp_path, idempotency_retention_seconds=wrong)
    assert Settings(var_dir=tmp_path).idempotency_retention_seconds == 24 * HOUR


# ---- PostgreSQL: twins and the sweep racing the lookup ------------------------------------------------


def _issue_once(engine: sa.Engine, p: Any, key: str) -> tuple[int, Any]:
    return run(SqlUnitOfWork(engine), lambda uow: issue.issue(uow, p.line, issue_cmd(p, 42), now()),
               lambda r: (201, {"release_id": str(r[0].id)}),
               idempotency=IdempotencyRequest(p.line.client_id, key, "fp"), now=now())


@pytest.mark.postgres
def test_concurrent_twins_of_an_expired_key_have_one_effect(pg_engine: sa.Engine) -> None:
    """Ten twins of a request whose key is past its retention (24 h by default): one takes the key over
    and issues, the nine others wait for it and replay its answer; none replays the expired one."""
    engine = pg_engine
    p = port(engine)
    _stored(engine, p.line.client_id, "same-key", timedelta(hours=25), {"release_id": "expired"})
    answers: list[Any] = []
    lock = threading.Lock()
    barrier = threading.Barrier(10)

    def worker() -> None:
        barrier.wait()
        out = _issue_once(engine, p, "same-key")
        with lock:
            answers.append(out)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(answers) == 10 and len({str(a) for a in answers}) == 1, answers
    assert answers[0][1]["release_id"] != "expired"
    assert _count(engine, releases) == 1


@pytest.mark.postgres
def test_a_lookup_racing_the_sweep_on_an_expired_key_is_a_new_request(pg_engine: sa.Engine) -> None:
    """The sweep holds the expired row (FOR UPDATE SKIP LOCKED) when the request comes: the request
    neither replays it nor fails when the sweep deletes it, it claims the key afresh."""
    engine = pg_engine
    p = port(engine)
    _stored(engine, p.line.client_id, "k", timedelta(hours=25), {"release_id": "expired"})
    answers: list[Any] = []
    with engine.connect() as sweep:
        sweep.execute(sa.select(idempotency_keys.c.key).with_for_update(skip_locked=True)).all()
        thread = threading.Thread(target=lambda: answers.append(_issue_once(engine, p, "k")))
        thread.start()
        thread.join(timeout=1)  # the request waits for the sweep's lock (or, unmended, replays at once)
        sweep.execute(idempotency_keys.delete())
        sweep.commit()
    thread.join(timeout=30)
    assert len(answers) == 1 and answers[0][1]["release_id"] != "expired", answers
    assert _count(engine, releases) == 1


@pytest.mark.postgres
def test_the_sweep_leaves_a_key_a_request_is_taking_over(pg_engine: sa.Engine) -> None:
    """A request has taken an expired key over and not committed yet: the sweep skips its row (SKIP
    LOCKED), and once the request commits the key is fresh and stays."""
    engine = pg_engine
    p = port(engine)
    _stored(engine, p.line.client_id, "k", timedelta(hours=25), {"release_id": "expired"})
    uow = SqlUnitOfWork(engine)
    with uow:
        assert uow.idempotency.claim(p.line.client_id, "k", "fp2", now()) is None  # taken over
        with engine.begin() as conn:
            assert prune_idempotency_keys(conn, before=now() - timedelta(hours=24)) == 0
        uow.idempotency.complete(p.line.client_id, "k", 201, {"release_id": "new"})
        uow.commit()
    with engine.begin() as conn:
        assert prune_idempotency_keys(conn, before=now() - timedelta(hours=24)) == 0
    with SqlUnitOfWork(engine) as again:
        assert again.idempotency.claim(p.line.client_id, "k", "fp2", now()) == (201, {"release_id": "new"})

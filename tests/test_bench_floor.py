"""The floors of loadtests/bare_app.py (issue 5's figures): the bench prints them beside the verify as
what no check or commit could beat on this server, so each must really do the round trips it stands
for. If one stopped writing to Redis or PostgreSQL, its figure would flatter the bare endpoint's rival
targets and the argument built on it; these tests fail first."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from fastapi.testclient import TestClient

from quaygate.db import create_database, drop_database, make_engine
from quaygate.migrate import upgrade

from .conftest import PG_URL, need_service

pytestmark = pytest.mark.xdist_group("bench_floor")


@pytest.fixture
def floor_app(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    base = need_service("PostgreSQL", PG_URL)
    url = create_database(base, f"qg_test_floor_{os.getpid()}")
    upgrade(url)
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", url)
    monkeypatch.setenv("QUAYGATE_REDIS_URL", redis_url)
    from loadtests import bare_app

    bare_app._lines.clear()
    bare_app._engines.clear()
    try:
        yield bare_app.app, url
    finally:
        for line in bare_app._lines.values():
            line.close()
        for engine in bare_app._engines.values():
            engine.dispose()
        bare_app._lines.clear()
        bare_app._engines.clear()
        drop_database(base, url)


def _body(request_id: str) -> dict[str, Any]:
    return {"request_id": request_id, "terminal": "BEANR-K1700", "lane": "l1", "direction": "in", "mode": "check",
            "container": {"number": "MSCU1234566", "confidence": 0.97},
            "plate": {"text": "1ABC123", "country": "BE", "confidence": 0.95},
            "badge": {"scheme": "alfapass", "number": "12345"}, "observed_at": datetime.now(UTC).isoformat()}


@pytest.mark.parametrize("path", ["/bare/verify-floor", "/bare/verify-floor1"])
def test_a_check_floor_keeps_its_answer_under_the_request_id_in_redis(floor_app: tuple[Any, str], redis_url: str,
                                                                     path: str) -> None:
    app, _ = floor_app
    request_id = str(uuid.uuid4())
    with TestClient(app) as client:
        answer = client.post(path, json=_body(request_id))
    assert answer.status_code == 200, answer.text
    r = redis.Redis.from_url(redis_url)
    try:
        kept = r.get(f"bare:BEANR-K1700:{request_id}")
        assert kept is not None and json.loads(kept) == answer.json()
        assert 0 < r.ttl(f"bare:BEANR-K1700:{request_id}") <= 60
    finally:
        r.close()
    assert answer.json()["request_id"] == request_id and answer.json()["container"] == "MSCU1234566"


@pytest.mark.parametrize("path", ["/bare/verify-commit-floor", "/bare/verify-commit-floor1",
                                  "/bare/verify-commit-floor-async"])
def test_a_commit_floor_writes_a_row_in_postgresql(floor_app: tuple[Any, str], path: str) -> None:
    app, url = floor_app
    request_ids = [str(uuid.uuid4()) for _ in range(3)]
    with TestClient(app) as client:
        answers = [client.post(path, json=_body(i)) for i in request_ids]
    assert [a.status_code for a in answers] == [200] * 3, answers[0].text
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT answer FROM bare_floor")).scalars().all()
    finally:
        engine.dispose()
    assert sorted(json.loads(r)["request_id"] for r in rows) == sorted(request_ids)

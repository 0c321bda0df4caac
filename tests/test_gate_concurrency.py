"""Gate-in uses a right once (SPEC.md), under load: 1 000 concurrent verify commits on 50 rights, from
many threads, through two server processes (uvicorn) on one PostgreSQL, give exactly 50 allows and
every other answer ``already_used`` (issue 5, "What it must show"). The two servers share Redis, as
several servers must (quaygate/solo.py); the right is used once by PostgreSQL's conditional update."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from quaygate.loopdb import APPLICATION_NAME
from quaygate.schema import gate_decisions, release_events, releases

from .processes import free_port, serve_app
from .test_gate_verify import pickable_in_process

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

RIGHTS = 50
REQUESTS = 1000
THREADS = 48
ROOT = Path(__file__).resolve().parent.parent


def _serve(database_url: str, redis_url: str, var_dir: Path, on_loop: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "QUAYGATE_DATABASE_URL": database_url, "QUAYGATE_REDIS_URL": redis_url,
           "QUAYGATE_VAR_DIR": str(var_dir), "QUAYGATE_BACKGROUND_WORKERS": "false", "QUAYGATE_DB_POOL_SIZE": "30",
           "QUAYGATE_LOG_LEVEL": "WARNING", "QUAYGATE_GATE_COMMIT_ON_LOOP": str(on_loop).lower()}
    proc = serve_app(port, env, var_dir / f"server-{port}.log", "--log-level", "warning")
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("on_loop", [True, False], ids=["on-the-loop", "on-worker-threads"])
def test_a_thousand_concurrent_commits_on_fifty_rights_give_fifty_allows(
        pg_engine: sa.Engine, redis_url: str, tmp_path: Path, on_loop: bool) -> None:
    """Both ways a commit is decided: on the event loop's connections (quaygate/loopdb.py, the way with
    the facts in Redis), and on the worker threads' units of work (the way without, or when the loop's
    cannot: a cache miss, Redis failing, no connection free)."""
    gate, all_rights = pickable_in_process(pg_engine, tmp_path, range(1, RIGHTS + 2))  # the last for the twins
    rights, twin_right = all_rights[:RIGHTS], all_rights[RIGHTS]
    url = pg_engine.url.render_as_string(hide_password=False)
    with pg_engine.connect() as conn:
        began = conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
    servers = [_serve(url, redis_url, tmp_path, on_loop) for _ in range(2)]
    try:
        # The 20 requests for one right are sent one after the other, so the 48 threads in flight hold
        # about 20 racing requests on each of two or three rights at any time.
        per_right = REQUESTS // RIGHTS
        bodies = [gate.body(1 + i // per_right, mode="commit") for i in range(REQUESTS)]
        clients = [httpx.Client(base_url=base, timeout=60,
                                headers={"Authorization": f"Bearer {gate.gate_token}"}) for _, base in servers]

        def call(i: int) -> dict[str, Any]:
            r = clients[i % 2].post("/gate/v1/verify", json=bodies[i])
            assert r.status_code == 200, r.text
            return dict(r.json())

        with ThreadPoolExecutor(THREADS) as pool:
            answers = list(pool.map(call, range(REQUESTS)))
            # Twins: one request sent 40 times at once through both servers (an adapter retrying).
            twin = gate.body(RIGHTS + 1, mode="commit")
            bodies[:40] = [twin] * 40
            twins = list(pool.map(call, range(40)))
        ways = Counter[str]()
        for client in clients:
            for line in client.get("/metrics").text.splitlines():
                if line.startswith("quaygate_gate_commits_total{"):
                    ways[line.split('"')[1]] += int(float(line.split()[-1]))
            client.close()
        assert ways.total() == REQUESTS + 40
        # On the loop: every commit it could settle at once (most of the refusals); the rest, on the
        # threads: those that lost a race for a right (read, then changed before their write) and twins.
        # (At least RIGHTS: a Redis timeout on a loaded machine sends about a second of commits to the threads.)
        assert (ways["loop"] >= RIGHTS) is on_loop and (ways["threads"] == REQUESTS + 40) is not on_loop, ways
        with pg_engine.connect() as conn:  # the loop's connections stay a minute after their last use
            loop_sessions = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = :name AND backend_start >= :began"),
                {"name": APPLICATION_NAME, "began": began}).scalar_one()
        assert (loop_sessions > 0) is on_loop
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(timeout=30)

    allows = [a for a in answers if a["decision"] == "allow"]
    assert len(allows) == RIGHTS
    assert sorted(a["release_id"] for a in allows) == sorted(rights)  # one per right
    assert all(a["committed"] for a in allows)
    others = Counter(tuple(a["reasons"]) for a in answers if a["decision"] != "allow")
    assert others == Counter({("already_used",): REQUESTS - RIGHTS})
    with pg_engine.connect() as conn:
        states = Counter(conn.execute(sa.select(releases.c.state)).scalars())
        gated = conn.execute(sa.select(sa.func.count()).select_from(release_events)
                             .where(release_events.c.type == "release.gated_in")).scalar_one()
        recorded = conn.execute(sa.select(gate_decisions.c.committed, sa.func.count())
                                .group_by(gate_decisions.c.committed)).all()
    assert states == Counter({"gated_in": RIGHTS + 1}) and gated == RIGHTS + 1
    assert dict((bool(k), v) for k, v in recorded) == {True: RIGHTS + 1, False: REQUESTS - RIGHTS}
    assert len({uuid.UUID(a["decision_id"]) for a in answers}) == REQUESTS
    # Every twin got the one recorded decision, which used the right once.
    assert all(t == twins[0] for t in twins) and twins[0]["decision"] == "allow" and twins[0]["committed"]
    assert twins[0]["release_id"] == twin_right
    with pg_engine.connect() as conn:
        moves = conn.execute(sa.select(sa.func.count()).select_from(release_events).where(
            release_events.c.release_id == uuid.UUID(twin_right), release_events.c.type == "release.gated_in"
        )).scalar_one()
    assert moves == 1

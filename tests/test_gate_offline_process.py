"""Issue 5, "What it must show", with real processes on PostgreSQL (uvicorn serving the app):

- a lane runtime run as its own process (tests/gate_offline_lane.py) is SIGKILLed twice in the middle
  of a run and restarted: every truck's decision is on the server exactly once, no right is used twice,
  and the outbox holds nothing pending;
- the server is SIGKILLed in the middle of a run: two gates decide offline from their gate passes
  (one right let through at both), the server comes back on the same port, the gates reconcile, and
  the right used at two gates is recorded once and flagged once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from gate_adapters.runtime.client import StaticToken, VerifyClient
from gate_adapters.runtime.offline import OfflineMode, PassStore
from gate_adapters.runtime.outbox import Outbox
from quaygate.schema import gate_decisions, gate_offline_decisions, release_events, releases
from quaygate.settings import Settings

from .factories import TERMINAL, container
from .processes import ROOT, free_port, serve_app
from .test_gate_runtime import RecordingBarrier, reads, runtime
from .test_gate_verify import Gate, pickable_in_process

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TRUCKS = 24


def serve(database_url: str, var_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "QUAYGATE_DATABASE_URL": database_url, "QUAYGATE_VAR_DIR": str(var_dir),
           "QUAYGATE_BACKGROUND_WORKERS": "false", "QUAYGATE_LOG_LEVEL": "WARNING"}
    env.pop("QUAYGATE_REDIS_URL", None)
    return serve_app(port, env, var_dir / f"server-{port}.log", "--log-level", "warning")


@pytest.fixture
def setup(pg_engine: sa.Engine, tmp_path: Path) -> Iterator[tuple[Gate, list[str], str]]:
    gate, rights = pickable_in_process(pg_engine, tmp_path, range(1, TRUCKS + 1))
    yield gate, rights, Settings(var_dir=tmp_path).issuer


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _pending(var: Path) -> int:
    box = Outbox(var / "outbox.sqlite3")
    try:
        return len(box.pending())
    finally:
        box.close()


def _lane(plan: Path, var: Path, *extra: str) -> subprocess.Popen[bytes]:
    with (var / "lane.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "tests.gate_offline_lane", str(plan), *extra], cwd=ROOT,
                                stdout=log, stderr=log)


def test_a_lane_killed_mid_run_and_restarted_loses_no_decision(setup: tuple[Gate, list[str], str],
                                                               pg_engine: sa.Engine, tmp_path: Path) -> None:
    gate, rights, issuer = setup
    port = free_port()
    server = serve(pg_engine.url.render_as_string(hide_password=False), tmp_path, port)
    start = datetime.now(UTC).replace(microsecond=0)
    results = tmp_path / "results.jsonl"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "base_url": f"http://127.0.0.1:{port}", "token": gate.gate_token, "issuer": issuer, "terminal": TERMINAL,
        "lane": "in-3", "outbox": str(tmp_path / "outbox.sqlite3"), "passes": str(tmp_path / "passes.sqlite3"),
        "results": str(results), "pause": 0.02,
        "trucks": [{"at": (start + timedelta(seconds=i)).isoformat(), "container": container(i + 1),
                    "plate": "1-ABC-123", "badge": gate.badge_number} for i in range(TRUCKS)],
    }))
    pending_at_kill = []
    try:
        # 1. The lane dies by its own SIGKILL just after the 6th answer arrived, before recording it.
        lane = _lane(plan, tmp_path, "6")
        assert lane.wait(timeout=90) == -signal.SIGKILL
        pending_at_kill.append(_pending(tmp_path))
        # 2. Restarted, it is SIGKILLed from outside once 14 results are out, wherever it is.
        lane = _lane(plan, tmp_path)
        deadline = time.monotonic() + 90
        while len(_lines(results)) < 14 and time.monotonic() < deadline:
            assert lane.poll() is None, (tmp_path / "lane.log").read_text()[-2000:]
            time.sleep(0.005)
        os.kill(lane.pid, signal.SIGKILL)
        lane.wait()
        pending_at_kill.append(_pending(tmp_path))
        # 3. Restarted again, it finishes the run.
        lane = _lane(plan, tmp_path)
        assert lane.wait(timeout=120) == 0, (tmp_path / "lane.log").read_text()[-3000:]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    print(f"\nkill/restart: outbox pending at the two kills {pending_at_kill}; {len(_lines(results))} results lines")
    assert pending_at_kill[0] == 1  # the answered-but-unrecorded request: recovered on restart

    with pg_engine.connect() as conn:
        rows = conn.execute(sa.select(gate_decisions.c.request_id, gate_decisions.c.id, gate_decisions.c.decision,
                                      gate_decisions.c.committed, gate_decisions.c.release_id)).all()
        states = Counter(conn.execute(sa.select(releases.c.state)).scalars())
        moves = Counter(conn.execute(sa.select(release_events.c.release_id)
                                     .where(release_events.c.type == "release.gated_in")).scalars())
        offline = conn.execute(sa.select(sa.func.count()).select_from(gate_offline_decisions)).scalar_one()
    # Every truck decided exactly once, each an allow that used its own right once.
    assert len(rows) == TRUCKS and len({r.request_id for r in rows}) == TRUCKS
    assert all(r.decision == "allow" and r.committed for r in rows)
    assert sorted(str(r.release_id) for r in rows) == sorted(rights)
    assert states == Counter({"gated_in": TRUCKS}) and set(moves.values()) == {1} and len(moves) == TRUCKS
    assert offline == 0  # the service never went away
    # The adapter's record agrees with the server's, and nothing is left pending.
    box = Outbox(tmp_path / "outbox.sqlite3")
    try:
        assert box.pending() == []
        answered = {str(r.id) for r in rows}
        for r in rows:
            got = box.response(r.request_id)
            assert got is not None and got["decision_id"] in answered
    finally:
        box.close()


def test_an_outage_is_decided_offline_then_reconciled_and_a_double_use_flagged(
        setup: tuple[Gate, list[str], str], pg_engine: sa.Engine, tmp_path: Path) -> None:
    gate, rights, issuer = setup
    url = pg_engine.url.render_as_string(hide_password=False)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve(url, tmp_path, port)
    gates = []
    https: list[httpx.Client] = []
    clock = [0.0]  # script time for the correlators: one driver and truck plate come back for each container
    for name in ("a", "b"):
        # Not 2 s: a passes answer hashes up to 16 new badges with scrypt (review 142), some 65-130 ms each on
        # an idle machine, and a fresh-clone CI on a loaded one timed out there (ReadTimeout).
        http = httpx.Client(timeout=10.0)
        https.append(http)
        client = VerifyClient(base, StaticToken(gate.gate_token), http=http, attempts=2, backoff=0.05)
        outbox = Outbox(tmp_path / f"{name}-outbox.sqlite3")
        store = PassStore(tmp_path / f"{name}-passes.sqlite3", issuer=issuer, terminal=TERMINAL,
                          secret=b"adapter " + name.encode())
        barrier = RecordingBarrier()
        gates.append((runtime(client, outbox, barrier, offline=OfflineMode(client, store, outbox),
                              clock=lambda: clock[0]), outbox, barrier))
    (a, a_box, _), (b, b_box, b_barrier) = gates

    def truck(lane: Any, n: int) -> dict[str, Any]:
        clock[0] += 60.0
        (result,) = [r for read in reads(n=n, badge=gate.badge_number) for r in lane.feed(read)]
        assert result.response is not None, result.error
        return dict(result.response)

    try:
        online = truck(a, 1)
        assert online["committed"] and "offline" not in online
        # An answer hashes a bounded number of new badges (review 142): the first passes come over a few
        # fetches, and are kept for the next adapter's.
        got_passes = [a.offline.refresh() for _ in range(4)]  # type: ignore[union-attr]
        assert got_passes[-1] == TRUCKS and got_passes[0] < TRUCKS, got_passes
        assert b.offline.refresh() == TRUCKS  # type: ignore[union-attr]
        server.kill()  # the outage, mid-run
        server.wait()
        got = {"a2": truck(a, 2), "b2": truck(b, 2), "b3": truck(b, 3), "b1": truck(b, 1)}
        assert all("offline" in r for r in got.values())
        assert [got[k]["decision"] for k in ("a2", "b2", "b3", "b1")] == ["allow", "allow", "allow", "deny"]
        assert got["b1"]["reasons"] == ["already_used"]  # its pass was fetched after the online gate-in
        assert b_barrier.commands[-2].command == "open" and b_barrier.commands[-1].command == "hold"
        for lane, _, _ in gates:
            lane.tick()  # the reconcile finds nobody
        assert len(a_box.unreconciled()) == 1 and len(b_box.unreconciled()) == 3
        server = serve(url, tmp_path, port)  # back, same address
        for lane, box, _ in gates:
            waiting = len(box.unreconciled())
            assert lane.offline.reconcile() == waiting  # type: ignore[union-attr]
        assert a_box.unreconciled() == [] and b_box.unreconciled() == []
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        for _, box, _ in gates:
            box.close()
        for http in https:
            http.close()

    with pg_engine.connect() as conn:
        rows = {r.request_id: r for r in conn.execute(sa.select(gate_offline_decisions))}
        moves = Counter(str(x) for x in conn.execute(sa.select(release_events.c.release_id)
                                                     .where(release_events.c.type == "release.gated_in")).scalars())
    by_key = {k: rows[v["request_id"]] for k, v in got.items()}
    assert (by_key["a2"].verdict, by_key["a2"].flag) == ("recorded", None)
    assert (by_key["b2"].verdict, by_key["b2"].flag) == ("flagged", "used_offline_twice")
    assert by_key["b2"].other_decision_id == by_key["a2"].id
    assert (by_key["b3"].verdict, by_key["b3"].flag) == ("recorded", None)
    assert (by_key["b1"].verdict, by_key["b1"].flag) == ("nothing_to_record", None)
    assert all(by_key[k].ban_list_age_seconds is None for k in by_key)  # no register in this deployment
    assert moves[rights[1]] == 1 and moves[rights[2]] == 1 and moves[rights[0]] == 1  # one use each
    assert uuid.UUID(str(by_key["b2"].id))

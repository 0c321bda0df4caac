"""Gate verify throughput and latency with Locust against real servers on PostgreSQL and Redis (issue 5).

    python loadtests/bench_gate.py [--seconds 15] [--users 32] [--workers 1] [--rights 10000] [--big 1000000]

Creates a scratch database, seeds nominated rights (every light green, one driver with an activated
badge, one truck), a gate client, and serves two apps with the same uvicorn command and settings: the
quaygate app, and loadtests/bare_app.py, a FastAPI JSON POST that validates the same request model and
answers the same shape with nothing behind it. Then, one after another, Locust (FastHttpUser, a
separate process):

1. the bare endpoint, flat out: requests/s, p50, p99; an ``async def``, as the verify route is. The
   same endpoint as a plain ``def`` (FastAPI runs it, and validates its answer, on its thread pool: about
   a third of the async rate here) is measured too and printed for comparison: it was the baseline
   until the eleventh session, when the verify route had long been async;
2. verify in ``check`` mode, flat out, and its ratio to the bare rate (target at least 0.5), on a check
   pool warmed first (``warm``: each container checked once); before it, the check's floors: the bare
   endpoint plus the one Redis round trip no exact, idempotent check on facts read before can skip
   (keep the decision under its request_id), and plus the two of a check on facts read for the first
   time (read them, then keep; bare_app.py);
3. verify in ``commit`` mode (each request uses one right), flat out, and its ratio (target at least 0.35);
   before it, the commit's floor: a Redis read, then one PostgreSQL read and one write, on the verify's
   thread pool, and the same awaited on the event loop with psycopg's async connection;
   then both again with a DPoP-bound token (RFC 9449), as the gate adapter sends them: a fresh proof
   with every request, the proofs made before each run so that signing them does not take the load
   generator's CPU; the commit rights are added after the size comparison's small figure (5);
4. verify ``check`` paced at half the bare rate: p99 (target at most 15 ms), beside its floors at the same
   rate and pacing (the bare endpoint itself, and the check floor's two Redis round trips: what the host
   gives a request that does nothing more); and, for context, paced at half its own flat-out rate (the
   latency a gate sees at a load this server carries);
5. verify ``check`` paced at a low steady rate with the ``--rights`` seeded (measured right after the
   bare endpoint), then again after filler rights bring the table to ``--big`` rows: p50 within 20 %
   (the lookups are by index, not by scan).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from joserfc.jwk import ECKey

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_identity import BENCH_SECRETS, _free_port, _wait, cpu_seconds, forget_other_runs  # noqa: E402

from gate_adapters.runtime.client import ClientCredentials  # noqa: E402
from gate_adapters.runtime.dpop import DPoPKey  # noqa: E402
from identity.bootstrap import create_client  # noqa: E402
from identity.domain.badges import Scheme, with_check  # noqa: E402
from quaygate.db import create_database, drop_database, make_engine  # noqa: E402
from quaygate.migrate import upgrade  # noqa: E402
from quaygate.schema import badge_activations, badges, organisations, persons, releases  # noqa: E402
from release_service.domain.iso6346 import with_check_digit  # noqa: E402

TERMINAL = "BEANR-K1700"
PLATE = "1ABC123"
CHECK_POOL = 1000


def seed(url: str, rights: int) -> dict[str, Any]:
    engine = make_engine(url)
    now = datetime.now(UTC)
    line, haul, term = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    driver, badge_id = uuid.uuid4(), uuid.uuid4()
    badge = with_check(Scheme.ALFAPASS, 4242)
    containers = [with_check_digit(f"BNCU{n:06d}") for n in range(rights)]
    with engine.begin() as conn:
        for oid, kind, code in ((line, "shipping_line", None), (haul, "transport_operator", None),
                                (term, "terminal", TERMINAL)):
            conn.execute(organisations.insert().values(id=oid, name=f"{kind} bench", kind=kind, terminal_code=code,
                                                       eori=f"BE{oid.int % 10**10:010d}", created_at=now))
        conn.execute(persons.insert().values(id=driver, given_name="Jan", family_name="Peeters",
                                             employer_organisation_id=haul, created_at=now))
        conn.execute(badges.insert().values(id=badge_id, person_id=driver, scheme="alfapass", number=badge,
                                            status="active", valid_from=now - timedelta(days=1),
                                            valid_until=now + timedelta(days=365), created_at=now))
        conn.execute(badge_activations.insert().values(id=uuid.uuid4(), badge_id=badge_id, terminal_code=TERMINAL,
                                                       activated_by="bench", activated_at=now))
        _insert_rights(conn, containers, line, haul, driver, now)
    client_id, secret = create_client(engine, name="bench gate", role="terminal_gate", organisation_id=term,
                                      terminal_code=TERMINAL, now=now)
    engine.dispose()
    return {"client_id": client_id, "secret": secret, "terminal": TERMINAL, "plate": PLATE, "badge": badge,
            "containers": containers, "check_pool": min(CHECK_POOL, rights // 2), "line": str(line),
            "haul": str(haul), "driver": str(driver)}


def _insert_rights(conn: sa.Connection, containers: list[str], line: uuid.UUID, haul: uuid.UUID, driver: uuid.UUID,
                   now: datetime) -> None:
    """Nominated rights of ``containers`` (one driver, one truck, every light green), 5 000 per statement."""
    rows = [_right(c, line, haul, driver, now) for c in containers]
    for i in range(0, len(rows), 5000):
        conn.execute(releases.insert(), rows[i:i + 5000])


def _right(container: str, line: uuid.UUID, haul: uuid.UUID, driver: uuid.UUID, now: datetime) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(), "container_number": container, "bill_of_lading": f"BL-{container}",
        "vessel_call": "VC-BENCH", "terminal": TERMINAL, "issuer_organisation_id": line,
        "first_party_organisation_id": haul, "holder_organisation_id": haul, "state": "nominated", "blocked": False,
        "active_key": f"{container}|VC-BENCH", "commercial_status": "green", "customs_status": "green",
        "terminal_status": "green", "valid_from": now - timedelta(hours=1), "valid_until": now + timedelta(days=3),
        "driver_person_id": driver, "plate_text": PLATE, "plate_country": "BE", "nominated_by": haul,
        "nominated_at": now, "nomination_response": "pending", "version": 0, "created_at": now, "updated_at": now,
    }


def add_filler(url: str, seed_data: dict[str, Any], total: int) -> float:
    """Completed rights of other containers until the table holds ``total`` rows; returns seconds."""
    engine = make_engine(url)
    started = time.monotonic()
    with engine.begin() as conn:
        have = conn.execute(sa.select(sa.func.count()).select_from(releases)).scalar_one()
        conn.execute(sa.text(
            "INSERT INTO releases (id, container_number, bill_of_lading, vessel_call, terminal, "
            "issuer_organisation_id, first_party_organisation_id, holder_organisation_id, state, blocked, "
            "commercial_status, customs_status, terminal_status, valid_from, valid_until, version, created_at, "
            "updated_at) SELECT gen_random_uuid(), 'FILU' || lpad(g::text, 7, '0'), 'BL', 'VC-OLD', :t, :line, "
            ":haul, :haul, 'completed', false, 'green', 'green', 'green', now() - interval '30 days', "
            "now() - interval '20 days', 2, now() - interval '30 days', now() - interval '20 days' "
            "FROM generate_series(1, :n) AS g"),
            {"t": TERMINAL, "line": seed_data["line"], "haul": seed_data["haul"], "n": max(total - have, 0)})
    with engine.connect() as conn:
        # VACUUM as well as ANALYZE: a port's table of a million rights has long been vacuumed. Freshly
        # inserted rows are not: autovacuum then starts on them during the run, and the first reads
        # set their hint bits. One run measured so gave 2.25x the small table's p50, the next 0.89x
        # (loadtests/RESULTS.md, tenth session).
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE releases")
    engine.dispose()
    return time.monotonic() - started


def warm(issuer: str, seed_data: dict[str, Any], token: str) -> int:
    """One check of every container of the check pool before the check figures: the flat-out figure is
    the steady state of a gate whose trucks' rights are already cached (a right is read into the
    cache by its first check; the commit figure, on containers never checked, includes that read)."""
    pool = seed_data["containers"][:seed_data["check_pool"]]
    with httpx.Client(base_url=issuer, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        for number in pool:
            r = client.post("/gate/v1/verify", json={
                "request_id": str(uuid.uuid4()), "terminal": seed_data["terminal"], "lane": "warm",
                "direction": "in", "mode": "check", "container": {"number": number, "confidence": 0.97},
                "plate": {"text": seed_data["plate"], "country": "BE", "confidence": 0.95},
                "badge": {"scheme": "alfapass", "number": seed_data["badge"]},
                "observed_at": datetime.now(UTC).isoformat()})
            r.raise_for_status()
    return len(pool)


def add_rights(url: str, seed_data: dict[str, Any], n: int) -> None:
    """``n`` more nominated rights, for the commit figures (each commit uses one), after the size
    comparison's small figure has been measured on ``--rights`` alone."""
    engine = make_engine(url)
    now = datetime.now(UTC)
    first = len(seed_data["containers"])
    containers = [with_check_digit(f"BNCU{k:06d}") for k in range(first, first + n)]
    line, haul, driver = (uuid.UUID(seed_data[k]) for k in ("line", "haul", "driver"))
    with engine.begin() as conn:
        _insert_rights(conn, containers, line, haul, driver, now)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE releases")
    engine.dispose()
    seed_data["containers"].extend(containers)


def unused_from(url: str, seed_data: dict[str, Any]) -> int:
    """The index of the first container past every right used so far (the commits take them in order;
    a request still in flight when Locust stopped may have used one its count does not show)."""
    engine = make_engine(url)
    with engine.connect() as conn:
        last = conn.execute(sa.select(sa.func.max(releases.c.container_number))
                            .where(releases.c.state != "nominated")).scalar()
    engine.dispose()
    return seed_data["containers"].index(last) + 1 if last else seed_data["check_pool"]


def bound_token(issuer: str, seed_data: dict[str, Any]) -> tuple[DPoPKey, str]:
    """A DPoP key and a gate token bound to it (RFC 9449), got as the gate adapter gets them (its own
    client: a server whose cache just began asks for its nonce first, RFC 9449 §8)."""
    key = DPoPKey(ECKey.generate_key("P-256", private=True))
    with httpx.Client(timeout=10) as http:
        token = ClientCredentials(f"{issuer}/oauth2/token", seed_data["client_id"], seed_data["secret"], dpop=key,
                                  http=http).token()
    return key, token


def write_proofs(path: Path, key: DPoPKey, url: str, token: str, n: int) -> Path:
    """``n`` fresh proofs for POST ``url`` with ``token``, for the DPoP users (locust_gate.py), made
    before the run: each is used once, within the proofs' 60 s."""
    path.write_text(json.dumps([key.proof("POST", url, access_token=token) for _ in range(n)]))
    return path


def run_locust(user_class: str, base: str, seed_path: Path, users: int, seconds: int, out: Path,
               server_pid: int, pace: float = 0.0, extra: dict[str, str] | None = None) -> dict[str, Any]:
    prefix = out / f"{user_class}-{time.monotonic_ns()}"
    before = cpu_seconds(server_pid)
    env = {**os.environ, "QG_BENCH_SEED": str(seed_path), "QG_BENCH_PACE": str(pace) if pace else "",
           **(extra or {})}
    subprocess.run(  # noqa: S603 - our locust, our file
        [sys.executable, "-m", "locust", "-f", str(HERE / "locust_gate.py"), "--headless", "--users", str(users),
         "--spawn-rate", str(users), "--run-time", f"{seconds}s", "--host", base, "--csv", str(prefix),
         "--only-summary", "--loglevel", "ERROR", "--stop-timeout", "5", user_class],
        env=env, cwd=ROOT, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    after = cpu_seconds(server_pid)
    row: dict[str, Any] = {}
    stats = Path(f"{prefix}_stats.csv")
    if stats.exists():
        with stats.open() as f:
            row = next((r for r in csv.DictReader(f) if r["Name"] != "Aggregated"), {})
    errors = []
    failures = Path(f"{prefix}_failures.csv")
    if failures.exists():
        with failures.open() as f:
            errors = [f"{r['Occurrences']}x {r['Error'][:200]}" for r in csv.DictReader(f)]
    total, failed = int(row.get("Request Count", 0)), int(row.get("Failure Count", 0))
    return {"rps": float(row.get("Requests/s", 0)) * ((total - failed) / total if total else 0),
            "p50": float(row.get("50%", 0) or 0), "p99": float(row.get("99%", 0) or 0), "total": total,
            "failed": failed, "errors": errors, "cpu": after[0] - before[0]}


def _serve(argv: list[str], port: int, env: dict[str, str], log: Path, workers: int) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 - our interpreter, our apps
            [sys.executable, "-m", "uvicorn", *argv, "--host", "127.0.0.1", "--port", str(port), "--workers",
             str(workers), "--no-access-log"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _line(label: str, r: dict[str, Any], bare: dict[str, Any] | None = None, target: float | None = None) -> str:
    text = f"  {label}: {r['rps']:,.0f} req/s, p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms"
    if r["cpu"]:
        text += f", {r['total'] - r['failed']:,} in {r['cpu']:.1f} s of server CPU"
    if bare is not None and bare["rps"]:
        ratio = r["rps"] / bare["rps"]
        text += f"; {ratio:.2f} of bare"
        if target is not None:
            text += f" (target {target}: {'OK' if ratio >= target else 'UNDER TARGET'})"
    if r["failed"]:
        text += f"; {r['failed']} of {r['total']} FAILED: {'; '.join(r['errors'][:2])}"
    return text


def _against_def(r: dict[str, Any], bare_def: dict[str, Any]) -> str:
    return f"; {r['rps'] / bare_def['rps']:.2f} of the def bare" if bare_def["rps"] else ""


def main() -> int:  # noqa: PLR0915 - one scenario after another, printed as it goes
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("QUAYGATE_TEST_DATABASE_URL",
                                                                "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default=os.environ.get("QUAYGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
                        help="a scratch Redis database: its quaygate keys (qg:*) are deleted first")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rights", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=1_000_000, help="rows for the size comparison (0: skip it)")
    parser.add_argument("--commit-rights", type=int, default=0,
                        help="rights added for the commit figures, after the size comparison's small table "
                             "(default: 2 000 per second of a figure)")
    args = parser.parse_args()
    args.commit_rights = args.commit_rights or 2_000 * args.seconds
    url = create_database(args.database_url, f"qg_bench_gate_{os.getpid()}")
    app_port, bare_port = _free_port(), _free_port()
    issuer = f"http://127.0.0.1:{app_port}"
    servers: list[subprocess.Popen[bytes]] = []
    failed = False
    try:
        upgrade(url)
        seed_data = seed(url, args.rights)
        forget_other_runs(args.redis_url)
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, **BENCH_SECRETS, "QUAYGATE_DATABASE_URL": url, "QUAYGATE_REDIS_URL": args.redis_url,
                   "QUAYGATE_ISSUER": issuer, "QUAYGATE_VAR_DIR": tmp, "QUAYGATE_BACKGROUND_WORKERS": "false",
                   "QUAYGATE_LOG_LEVEL": "WARNING", "QUAYGATE_ACCESS_TOKEN_TTL": "3600",
                   "QUAYGATE_RATE_LIMIT_PER_ADDRESS": "1000000000", "QUAYGATE_RATE_LIMIT_PER_CLIENT": "1000000000"}
            app = _serve(["quaygate.app:app_from_env", "--factory"], app_port, env, Path(tmp) / "app.log", args.workers)
            bare = _serve(["loadtests.bare_app:app"], bare_port, env, Path(tmp) / "bare.log", args.workers)
            servers = [app, bare]
            if not (_wait(issuer, app) and _wait(f"http://127.0.0.1:{bare_port}", bare)):
                print("gate bench FAILED: a server did not start\n" + (Path(tmp) / "app.log").read_text()[-2000:]
                      + (Path(tmp) / "bare.log").read_text()[-2000:])
                return 1
            token = httpx.post(f"{issuer}/oauth2/token", data={"grant_type": "client_credentials"},
                               auth=(seed_data["client_id"], seed_data["secret"]), timeout=10).json()["access_token"]
            key, bound = bound_token(issuer, seed_data)
            seed_path = Path(tmp) / "seed.json"
            seed_path.write_text(json.dumps({**seed_data, "token": token, "bound_token": bound}))
            out = Path(tmp)
            print(f"gate verify on PostgreSQL + Redis, {args.rights:,} nominated rights, uvicorn {args.workers} "
                  f"worker(s) --no-access-log for both apps, {os.cpu_count()} CPU cores shared with Locust and the "
                  f"database, Locust FastHttpUser x {args.users}, {args.seconds} s per figure", flush=True)
            warmed = warm(issuer, seed_data, token)
            print(f"  (check pool warmed: {warmed:,} containers checked once, as a gate finds rights nominated "
                  "before the truck arrives)", flush=True)
            b = run_locust("BareUser", f"http://127.0.0.1:{bare_port}", seed_path, args.users, args.seconds, out,
                           bare.pid)
            print(_line("bare FastAPI JSON POST, async def like the verify route (same model, same server "
                        "settings)", b), flush=True)
            low = min(100.0, b["rps"] / 4) / 8
            if args.big:  # the size comparison's small table: --rights alone, before the commits' rights
                small = run_locust("CheckUser", issuer, seed_path, 8, args.seconds, out, app.pid, pace=low)
            add_rights(url, seed_data, args.commit_rights)
            seed_path.write_text(json.dumps({**seed_data, "token": token, "bound_token": bound}))
            d = run_locust("BareDefUser", f"http://127.0.0.1:{bare_port}", seed_path, args.users, args.seconds, out,
                           bare.pid)
            print(_line("  for comparison, the same bare endpoint as a def (FastAPI's two thread hops), the "
                        "baseline of the figures before the eleventh session", d), flush=True)
            f1 = run_locust("Floor1User", f"http://127.0.0.1:{bare_port}", seed_path, args.users, args.seconds,
                            out, bare.pid)
            print(_line("  the floor of any exact, idempotent check on facts this process read before: the bare "
                        "endpoint plus the one Redis round trip it cannot skip (keep the decision under its "
                        "request_id)", f1, b), flush=True)
            f = run_locust("FloorUser", f"http://127.0.0.1:{bare_port}", seed_path, args.users, args.seconds, out,
                           bare.pid)
            print(_line("  the floor of a check on facts read for the first time: the bare endpoint plus two "
                        "Redis round trips (read the facts and the request_id; keep the decision under it)", f, b),
                  flush=True)
            c = run_locust("CheckUser", issuer, seed_path, args.users, args.seconds, out, app.pid)
            print(_line("verify, mode check", c, b, 0.5) + _against_def(c, d), flush=True)
            mf = run_locust("CommitFloorUser", f"http://127.0.0.1:{bare_port}", seed_path, args.users, args.seconds,
                            out, bare.pid)
            print(_line("  the floor of any exact commit: the bare endpoint, one Redis read, then one indexed "
                        "PostgreSQL read of the right and one autocommitted write, on the verify's thread pool",
                        mf, b), flush=True)
            ma = run_locust("CommitFloorAsyncUser", f"http://127.0.0.1:{bare_port}", seed_path, args.users,
                            args.seconds, out, bare.pid)
            print(_line("  the same floor with an async driver: the Redis read, then the two PostgreSQL statements "
                        "awaited on the event loop (psycopg's AsyncConnection), no thread hop", ma, b), flush=True)
            m = run_locust("CommitUser", issuer, seed_path, args.users, args.seconds, out, app.pid)
            print(_line("verify, mode commit (each request uses one right)", m, b, 0.35) + _against_def(m, d),
                  flush=True)
            # The gate adapter's way: a DPoP-bound token and a fresh proof with every request (its example
            # settings turn it on). The proofs are made before each run, outside the load generator.
            verify_url = f"{issuer}/gate/v1/verify"
            proofs = write_proofs(out / "proofs-check.json", key, verify_url, bound,
                                  int(c["rps"] * args.seconds * 1.5) + 2000)
            cd = run_locust("DPoPCheckUser", issuer, seed_path, args.users, args.seconds, out, app.pid,
                            extra={"QG_BENCH_PROOFS": str(proofs)})
            print(_line("verify, mode check, DPoP-bound token", cd, b, 0.5) + f"; {cd['rps'] / c['rps']:.2f} of "
                  "the bearer check", flush=True)
            proofs = write_proofs(out / "proofs-commit.json", key, verify_url, bound,
                                  int(m["rps"] * args.seconds * 1.5) + 2000)
            md = run_locust("DPoPCommitUser", issuer, seed_path, args.users, args.seconds, out, app.pid,
                            extra={"QG_BENCH_PROOFS": str(proofs),
                                   "QG_BENCH_COMMIT_FROM": str(unused_from(url, seed_data))})
            print(_line("verify, mode commit, DPoP-bound token", md, b, 0.35) + f"; {md['rps'] / m['rps']:.2f} "
                  "of the bearer commit", flush=True)
            half = b["rps"] / 2
            h = run_locust("CheckUser", issuer, seed_path, args.users, args.seconds, out, app.pid,
                           pace=half / args.users)
            verdict = "OK" if h["p99"] <= 15 and h["rps"] >= 0.9 * half else "UNDER TARGET"
            print(_line(f"verify check paced at half the bare rate ({half:,.0f}/s asked)", h)
                  + f"; target p99 <= 15 ms at that rate: {verdict}", flush=True)
            # The p99 target's floors at the same rate and pacing: what the host gives a request that does
            # nothing (the bare endpoint itself) and one that makes only the two Redis round trips of any
            # exact check. A p99 over 15 ms there is the host's (Locust, the servers, PostgreSQL and Redis on
            # its cores), not the verify's.
            hb = run_locust("BareUser", f"http://127.0.0.1:{bare_port}", seed_path, args.users, args.seconds, out,
                            bare.pid, pace=half / args.users)
            print(_line(f"  the p99's floor: the bare endpoint paced at half its rate ({half:,.0f}/s asked)", hb),
                  flush=True)
            hf = run_locust("FloorUser", f"http://127.0.0.1:{bare_port}", seed_path, args.users, args.seconds, out,
                            bare.pid, pace=half / args.users)
            print(_line(f"  the p99's floor: the check floor (2 Redis round trips) paced at half the bare rate "
                        f"({half:,.0f}/s asked)", hf), flush=True)
            # Context, not a target: the latency a gate sees at a load this server carries (half of the
            # check's own flat-out rate), which the target's rate, past that flat-out rate, cannot show.
            own = c["rps"] / 2
            o = run_locust("CheckUser", issuer, seed_path, args.users, args.seconds, out, app.pid,
                           pace=own / args.users)
            print(_line(f"  for context, verify check paced at half its own flat-out rate ({own:,.0f}/s asked)", o),
                  flush=True)
            failed = any(r["failed"] or not r["total"] for r in (b, d, f1, f, c, mf, ma, m, cd, md, h, hb, hf, o))
            if args.big:
                took = add_filler(url, seed_data, args.big)
                big = run_locust("CheckUser", issuer, seed_path, 8, args.seconds, out, app.pid, pace=low)
                ratio = big["p50"] / small["p50"] if small["p50"] else float("inf")
                print(_line(f"verify check at {low * 8:.0f}/s with {args.rights:,} rights", small), flush=True)
                print(_line(f"verify check at {low * 8:.0f}/s with {args.big:,} rights (filler added in "
                            f"{took:.0f} s)", big)
                      + f"; p50 {ratio:.2f}x the small table's (target within 20 %: "
                      f"{'OK' if abs(ratio - 1) <= 0.2 else 'OUT OF RANGE'})", flush=True)
                failed |= bool(small["failed"] or big["failed"])
    finally:
        for proc in servers:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        drop_database(args.database_url, url)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

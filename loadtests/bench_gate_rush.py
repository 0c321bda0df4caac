"""The gate rush (issue 5): many lanes at once, mixed valid and invalid reads, every answer checked.

    python loadtests/bench_gate_rush.py [--seconds 20] [--users 32] [--workers 1] [--rights 20000] [--lanes 24]

A scratch PostgreSQL database, Redis, the app served by uvicorn as bench_gate.py serves it, and Locust's
``GateRushUser`` (locust_gate.py): trucks at ``--lanes`` lanes in ``commit`` mode, about 70 % valid reads
and the rest invalid ones whose decision the seed fixes:

| kind | read | expected |
|---|---|---|
| valid | a nominated right's container, the driver's badge, the truck's plate | allow, committed (uses it) |
| repair | one serial digit read as its look-alike letter (``0``/``O``, ``1``/``I``) | allow, committed, repaired |
| unknown container | a valid ISO 6346 number without a right | deny ``container_unknown`` |
| wrong plate | another truck's plate | deny ``plate_mismatch`` |
| low confidence | the right plate read at 0.4 | review ``plate_low_confidence`` |
| unknown badge | a valid Alfapass number nobody holds | deny ``badge_unknown`` |
| already used | a right already gated in | deny ``already_used`` |

Prints requests/s, p50/p99 and the count of wrong answers (must be 0: exit 1 otherwise), with the load
of the machine (``uptime``) before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_gate import _serve, run_locust, seed  # noqa: E402
from bench_identity import BENCH_SECRETS, _free_port, _wait, forget_other_runs  # noqa: E402

from identity.domain.badges import Scheme, with_check  # noqa: E402
from quaygate.db import create_database, drop_database, make_engine  # noqa: E402
from quaygate.migrate import upgrade  # noqa: E402
from quaygate.schema import releases  # noqa: E402
from release_service.domain.iso6346 import with_check_digit  # noqa: E402
from release_service.domain.reads import container_candidates  # noqa: E402

# A digit in the serial read as the letter that looks like it: the check digit then fails and exactly one
# look-alike substitution (back) gives a number with a right.
LETTER_FOR = {"0": "O", "1": "I", "2": "Z", "5": "S", "8": "B", "6": "G"}
USED, SHARED, UNKNOWN = 500, 500, 500


def lookalike_read(number: str, known: frozenset[str]) -> str | None:
    """``number`` with one serial digit misread, when that read repairs to ``number`` alone."""
    for i in range(4, 10):
        letter = LETTER_FOR.get(number[i])
        if letter is None:
            continue
        read = number[:i] + letter + number[i + 1:]
        if [c for c in container_candidates(read) if c in known] == [number]:
            return read
    return None


def seed_rush(url: str, data: dict[str, Any], lanes: int) -> dict[str, Any]:
    """Split the seeded rights: already used, shared by the refusals, look-alike reads, the valid rest."""
    containers: list[str] = data["containers"]
    known = frozenset(containers)
    used, shared, rest = containers[:USED], containers[USED:USED + SHARED], containers[USED + SHARED:]
    split = len(rest) // 10
    repair = [(read, c) for c in rest[:split] if (read := lookalike_read(c, known)) is not None]
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(releases.update().where(releases.c.container_number.in_(used)).values(state="gated_in"))
    engine.dispose()
    unknown = [with_check_digit(f"UNKU{n:06d}") for n in range(UNKNOWN)]
    return {"lanes": lanes, "used": used, "shared": shared, "valid": rest[split:], "repair": repair,
            "unknown": unknown, "wrong_plate": "7XYZ999", "unknown_badge": with_check(Scheme.ALFAPASS, 987654)}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("QUAYGATE_TEST_DATABASE_URL",
                                                                "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default=os.environ.get("QUAYGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rights", type=int, default=20_000)
    parser.add_argument("--lanes", type=int, default=24)
    args = parser.parse_args()
    url = create_database(args.database_url, f"qg_bench_rush_{os.getpid()}")
    port = _free_port()
    issuer = f"http://127.0.0.1:{port}"
    server = None
    try:
        upgrade(url)
        forget_other_runs(args.redis_url)  # a new database: another run's Redis claim gone
        data = seed(url, args.rights)
        rush = seed_rush(url, data, args.lanes)
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, **BENCH_SECRETS, "QUAYGATE_DATABASE_URL": url, "QUAYGATE_REDIS_URL": args.redis_url,
                   "QUAYGATE_ISSUER": issuer, "QUAYGATE_VAR_DIR": tmp, "QUAYGATE_BACKGROUND_WORKERS": "false",
                   "QUAYGATE_LOG_LEVEL": "WARNING", "QUAYGATE_ACCESS_TOKEN_TTL": "3600",
                   "QUAYGATE_RATE_LIMIT_PER_ADDRESS": "1000000000", "QUAYGATE_RATE_LIMIT_PER_CLIENT": "1000000000"}
            server = _serve(["quaygate.app:app_from_env", "--factory"], port, env, Path(tmp) / "app.log", args.workers)
            if not _wait(issuer, server):
                print("gate rush FAILED: the server did not start\n" + (Path(tmp) / "app.log").read_text()[-2000:])
                return 1
            token = httpx.post(f"{issuer}/oauth2/token", data={"grant_type": "client_credentials"},
                               auth=(data["client_id"], data["secret"]), timeout=10).json()["access_token"]
            seed_path = Path(tmp) / "seed.json"
            seed_path.write_text(json.dumps({**data, "token": token, "rush": rush}))
            print(f"gate rush on PostgreSQL + Redis: {args.lanes} lanes, Locust FastHttpUser x {args.users}, "
                  f"{args.seconds} s, uvicorn {args.workers} worker(s); {len(rush['valid']):,} valid rights, "
                  f"{len(rush['repair']):,} look-alike reads, {USED} used rights; {os.cpu_count()} CPU cores "
                  f"shared with Locust and the database\n  load before: {_uptime()}", flush=True)
            r = run_locust("GateRushUser", issuer, seed_path, args.users, args.seconds, Path(tmp), server.pid)
            wrong = sum(int(e.split("x ", 1)[0]) for e in r["errors"] if e.split("x ", 1)[1].startswith("wrong:"))
            print(f"  verify gate rush, mixed reads: {r['rps']:,.0f} req/s answered right, p50 {r['p50']:.0f} ms, "
                  f"p99 {r['p99']:.0f} ms, {r['total']:,} requests in {r['cpu']:.1f} s of server CPU; "
                  f"wrong answers: {wrong} (must be 0), other failures: {r['failed'] - wrong}\n"
                  f"  load after: {_uptime()}", flush=True)
            for e in r["errors"][:5]:
                print(f"  failure: {e}")
            return 0 if r["total"] and not r["failed"] else 1
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        drop_database(args.database_url, url)


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: every benchmark of the project, each printing its own figures.

PostgreSQL comes from QUAYGATE_TEST_DATABASE_URL (default: the machine's local server).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PG = os.environ.get("QUAYGATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("QUAYGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
CORES = os.cpu_count() or 1

BENCHES = [
    ("release batch issue (issue 2)", [str(HERE / "bench_issue.py"), "--database-url", PG, "--count", "10000"]),
    ("audit trail verify (issue 2)", [str(HERE / "bench_audit.py"), "--database-url", PG, "--events", "100000"]),
    ("port-ban snapshot load, 100 000 bans (issue 4)", [str(HERE / "bench_bans.py"), "--database-url", PG]),
    ("identity provider, CPU per request in process (issue 3)",
     [str(HERE / "cpu_identity.py"), "--database-url", PG, "--redis-url", REDIS]),
    ("identity provider with Locust (issue 3)",
     [str(HERE / "bench_identity.py"), "--database-url", PG, "--redis-url", REDIS]),
    ("ban change set at process A to the gate decision at process B, PostgreSQL + Redis (issue 4)",
     [str(HERE / "bench_ban_to_gate.py"), "--database-url", PG, "--redis-url", REDIS]),
    ("gate verify, CPU per request in process, beside the bare endpoint (issue 5)",
     [str(HERE / "cpu_gate.py"), "--database-url", PG, "--redis-url", REDIS]),
    ("gate verify with Locust, check and commit beside a bare endpoint, 10 000 vs 1 000 000 rights (issue 5)",
     [str(HERE / "bench_gate.py"), "--database-url", PG, "--redis-url", REDIS]),
    *([(f"gate verify with Locust as deployed, one worker per core ({CORES}), both apps served alike (issue 5)",
        [str(HERE / "bench_gate.py"), "--database-url", PG, "--redis-url", REDIS, "--workers", str(CORES),
         "--big", "0"])] if CORES > 1 else []),
    ("gate rush with Locust: mixed valid and invalid reads on many lanes, wrong answers counted (issue 5)",
     [str(HERE / "bench_gate_rush.py"), "--database-url", PG, "--redis-url", REDIS]),
    ("face enrolment and 1:1 verify per capture on one core; pool on two cores vs one (issue 6)",
     [str(HERE / "bench_face.py")]),
]


def main() -> int:
    failed = 0
    for title, argv in BENCHES:
        print(f"== {title}", flush=True)
        result = subprocess.run([sys.executable, *argv], check=False)
        failed += result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

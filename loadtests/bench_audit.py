"""Time to seal and to verify an audit trail of 100 000 events.

    python loadtests/bench_audit.py --database-url postgresql://postgres@127.0.0.1:5432/test --events 100000
    python loadtests/bench_audit.py --database-url sqlite --events 100000

On PostgreSQL it creates a scratch database (dropped at the end), on SQLite a scratch file; migrates
it; appends the events through SqlAuditLog in use-case-sized transactions from a few writer threads;
seals them (timed); then times ``verify_trail`` the way ``quaygate audit verify --public-key`` runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quaygate.crypto import DataCipher  # noqa: E402
from quaygate.db import create_database, drop_database, make_engine  # noqa: E402
from quaygate.migrate import upgrade  # noqa: E402
from release_service.adapters.audit import (  # noqa: E402
    AuditSealer,
    SqlAuditLog,
    export_public_key,
    verify_trail,
)

KINDS = ("release.issued", "release.transfer_offered", "release.transfer_accepted", "release.nominated",
         "gate.verify.allowed", "release.gated_in")


def scratch_database(base: str) -> str:
    return create_database(base, f"qg_bench_audit_{os.getpid()}")


def event(n: int, t0: datetime) -> tuple[str, dict[str, str], str, dict[str, object], datetime]:
    kind = KINDS[n % len(KINDS)]
    actor = {"organisation_id": str(uuid.UUID(int=n % 50)), "client_id": f"line-{n % 7}",
             "sub": f"svc-{n % 3}"}
    data = {"seq": n % 6 + 1, "container": "MSCU1234565", "terminal": "AWB-K913",
            "holder": str(uuid.UUID(int=n)), "reason": None, "confidence": 0.97}
    return kind, actor, str(uuid.UUID(int=n // 6)), data, t0 + timedelta(milliseconds=n)


def append_events(engine: sa.Engine, events: int, per_tx: int, writers: int) -> None:
    t0 = datetime.now(UTC)

    def write(w: int) -> None:
        for start in range(w * per_tx, events, per_tx * writers):
            with engine.begin() as conn:
                SqlAuditLog(conn).append_many(event(n, t0) for n in range(start, min(start + per_tx, events)))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("QUAYGATE_TEST_DATABASE_URL", "sqlite"),
                        help="a PostgreSQL server URL (a scratch database is made on it), or 'sqlite'")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--per-transaction", type=int, default=10, help="events per use-case transaction")
    parser.add_argument("--writers", type=int, default=4)
    args = parser.parse_args()

    pg = not args.database_url.startswith("sqlite")
    tmp = None
    if pg:
        url = scratch_database(args.database_url)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="qg-bench-audit-")
        url = f"sqlite:///{Path(tmp.name) / 'audit.db'}"
    try:
        upgrade(url)
        engine = make_engine(url, pool_size=args.writers + 2, max_overflow=0)
        started = time.perf_counter()
        append_events(engine, args.events, args.per_transaction, args.writers)
        appended = time.perf_counter() - started

        sealer = AuditSealer(engine, DataCipher(os.urandom(32)))
        started = time.perf_counter()
        sealed = 0
        while sealed < args.events:  # on PostgreSQL a write transaction elsewhere can hold sealing back
            sealed += sealer.seal_once(datetime.now(UTC))
        sealing = time.perf_counter() - started

        keys = export_public_key(engine)["keys"]
        started = time.perf_counter()
        report = verify_trail(engine, keys)
        verifying = time.perf_counter() - started
        engine.dispose()
    finally:
        if pg:
            drop_database(args.database_url, url)
        elif tmp is not None:
            tmp.cleanup()

    backend = "PostgreSQL" if pg else "SQLite"
    rate = report.entries / verifying
    print(f"audit verify: {report.entries} events in {verifying:.2f} s ({rate:.0f} events/s); "
          f"seal: {sealing:.2f} s ({sealed / sealing:.0f} events/s, {report.checkpoints} checkpoints); "
          f"append: {appended:.2f} s [{backend}]")
    if not report.intact:
        print(f"audit trail BROKEN: {report.problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

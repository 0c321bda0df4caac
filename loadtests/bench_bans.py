"""Time to load a 100 000-ban signed snapshot into the list in force, on PostgreSQL (issue 4).

    python loadtests/bench_bans.py --database-url postgresql://postgres@127.0.0.1:5432/test

Creates a scratch database, migrates it, seeds persons with badges linked to some banned numbers, then
times ``identity.bans.loader.load_feed`` on ES256-signed snapshots of ``--count`` bans, twice: the first
load into an empty list (every row written), then the next snapshot replacing it (``--churn`` bans
lifted and as many new). Each time counts the signature check, parsing and validation, keyed hashing
of every number, the one transaction that replaces the list, badge deactivations and nomination
alerts. Target: 5 s or less.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402
from joserfc import jws  # noqa: E402
from joserfc.jwk import ECKey  # noqa: E402
from joserfc.jws import JWSRegistry  # noqa: E402

from identity.bans.feed import register_key  # noqa: E402
from identity.bans.loader import load_feed  # noqa: E402
from quaygate.crypto import keyed_hash  # noqa: E402
from quaygate.db import create_database, drop_database, make_engine  # noqa: E402
from quaygate.migrate import upgrade  # noqa: E402
from quaygate.schema import badges, persons  # noqa: E402

PEPPER = b"bench-pepper"


def national_number(serial: int) -> str:
    body = f"{50 + serial // 1_000_000 % 50:02d}{1 + serial // 10_000 % 12:02d}{1 + serial // 1000 % 10:02d}" \
           f"{serial % 1000:03d}"
    return f"{body}{97 - int(body) % 97:02d}"


def ban_entry(i: int, now: datetime) -> dict[str, object]:
    return {"national_number": national_number(i), "scope": "all" if i % 4 else ["BEANR", "BEZEE"],
            "from": (now - timedelta(days=1 + i % 3000, seconds=i)).isoformat(),
            "until": (now + timedelta(days=1 + i % 3650, seconds=i)).isoformat(),
            "reference": f"AIGIS-{i:09d}"}


def signed_snapshot(key: ECKey, sequence: int, serials: range | list[int], now: datetime) -> bytes:
    bans = [ban_entry(i, now) for i in serials]
    payload = json.dumps({"register": "BE-AIGIS", "kind": "snapshot", "sequence": sequence,
                          "issued_at": now.isoformat(), "bans": bans}).encode()
    return jws.serialize_compact({"alg": "ES256"}, payload, key, registry=JWSRegistry(algorithms=["ES256"])).encode()


def timed(engine: sa.Engine, raw: bytes, public: Any, label: str, count: int) -> bool:
    start = time.perf_counter()
    result = load_feed(engine, raw, key=public, pepper=PEPPER, now=datetime.now(UTC), max_feed_age=timedelta(days=1))
    elapsed = time.perf_counter() - start
    if result.status != "applied" or result.bans_in_force != count:
        print(f"ban snapshot load FAILED: {result}")
        return False
    verdict = "OK" if elapsed <= 5.0 else "OVER TARGET"
    print(f"ban snapshot load, {label}: {count} bans ({len(raw) / 1e6:.1f} MB signed) in {elapsed:.2f} s "
          f"({result.added} new, {result.lifted} lifted, {result.badges_deactivated} badges deactivated) "
          f"on PostgreSQL; target 5 s: {verdict}")
    print("  phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    return True


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("QUAYGATE_TEST_DATABASE_URL",
                                                                "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--linked-persons", type=int, default=20, help="persons with badges among the banned")
    parser.add_argument("--churn", type=int, default=1000, help="bans lifted and added by the next snapshot")
    args = parser.parse_args()
    url = create_database(args.database_url, f"qg_bench_bans_{os.getpid()}")
    engine = make_engine(url)
    try:
        upgrade(url)
        key = ECKey.generate_key("P-256")
        public = register_key(json.dumps(key.as_dict(private=False)), None)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            people = [{"id": uuid.uuid4(), "given_name": "B", "family_name": "P", "created_at": now,
                       "national_id_hash": keyed_hash(PEPPER, national_number(i))} for i in range(args.linked_persons)]
            if people:
                conn.execute(persons.insert(), people)
                conn.execute(badges.insert(), [
                    {"id": uuid.uuid4(), "person_id": p["id"], "scheme": "alfapass", "number": f"AP-{n:06d}",
                     "card_uid": None, "status": "active", "valid_from": now - timedelta(days=1),
                     "valid_until": now + timedelta(days=365), "created_at": now} for n, p in enumerate(people)])
        first = signed_snapshot(key, 1, range(args.count), now)
        # the next snapshot: the oldest --churn bans lifted, as many new ones added, the rest as before
        following = signed_snapshot(key, 2, range(args.churn, args.count + args.churn), now)
        ok = timed(engine, first, public, "first load into an empty list", args.count)
        ok = ok and timed(engine, following, public, f"replacing the list ({args.churn} lifted, {args.churn} new)",
                          args.count)
        return 0 if ok else 1
    finally:
        engine.dispose()
        drop_database(args.database_url, url)


if __name__ == "__main__":
    sys.exit(main())

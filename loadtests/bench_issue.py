"""Time to issue 10 000 rights in one batch through the whole API stack, on PostgreSQL.

    python loadtests/bench_issue.py --database-url postgresql://postgres@127.0.0.1:5432/test

Creates a scratch database, migrates it, seeds a line and a forwarder, gets a token from the
provider, then POSTs /api/v1/releases:batch (in-process ASGI, so no socket, but validation,
serialisation, the transaction, events, audit rows and the outbox all count). Target: 5 s or less.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient  # noqa: E402

from identity.bootstrap import create_client  # noqa: E402
from quaygate.app import create_app  # noqa: E402
from quaygate.container import Container  # noqa: E402
from quaygate.db import create_database, drop_database  # noqa: E402
from quaygate.migrate import upgrade  # noqa: E402
from quaygate.schema import organisations  # noqa: E402
from quaygate.settings import Settings  # noqa: E402
from release_service.domain.iso6346 import with_check_digit  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("QUAYGATE_TEST_DATABASE_URL",
                                                                "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--count", type=int, default=10_000)
    args = parser.parse_args()
    url = create_database(args.database_url, f"qg_bench_{os.getpid()}")
    try:
        upgrade(url)
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(database_url=url, var_dir=Path(tmp), background_workers=False,
                                # dev mode on PostgreSQL makes no secrets of its own (review 132)
                                data_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                                pepper=secrets.token_urlsafe(32))
            container = Container.build(settings)
            now = datetime.now(UTC)
            line, fwd = uuid.uuid4(), uuid.uuid4()
            with container.engine.begin() as conn:
                conn.execute(organisations.insert(), [
                    {"id": line, "name": "line", "kind": "shipping_line", "eori": "BE0000000001", "created_at": now},
                    {"id": fwd, "name": "fwd", "kind": "release_party", "eori": "BE0000000002", "created_at": now},
                ])
            client_id, secret = create_client(container.engine, name="bench", role="shipping_line",
                                              organisation_id=line, now=now)
            app = create_app(settings, container=container)
            with TestClient(app) as http:
                token = http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                                  auth=(client_id, secret or "")).json()["access_token"]
                body = {"releases": [
                    {"container_number": with_check_digit(f"BNCU{n:06d}"), "bill_of_lading": f"BL{n}",
                     "vessel_call": "2026-ANR-9001", "terminal": "BEANR-K1700", "release_to_organisation_id": str(fwd),
                     "valid_from": now.isoformat(), "valid_until": (now + timedelta(days=7)).isoformat()}
                    for n in range(args.count)]}
                start = time.perf_counter()
                response = http.post("/api/v1/releases:batch", json=body,
                                     headers={"Authorization": f"Bearer {token}"})
                elapsed = time.perf_counter() - start
            container.close()
        result = response.json()
        if response.status_code != 200 or result["created"] != args.count:
            print(f"batch issue FAILED: {response.status_code} {str(result)[:300]}")
            return 1
        verdict = "OK" if elapsed <= 5.0 else "OVER TARGET"
        print(f"batch issue: {args.count} rights in one batch in {elapsed:.2f} s "
              f"({args.count / elapsed:,.0f} rights/s) on PostgreSQL; target 5 s: {verdict}")
        return 0
    finally:
        drop_database(args.database_url, url)


if __name__ == "__main__":
    sys.exit(main())

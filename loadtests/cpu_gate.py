"""CPU per gate verify, in process, one request at a time (issue 5): the steady figure to compare one
change of the hot path with the next (the Locust figures of bench_gate.py move by a third between runs
on this machine).

    python loadtests/cpu_gate.py [--requests 400] [--database-url ...] [--redis-url ...] [--no-redis]

Drives the real app (every middleware, real PostgreSQL and Redis) and the bare app of bench_gate.py
through their ASGI interfaces with no HTTP server, and divides this process's CPU time by the requests.
Excludes the HTTP parser and PostgreSQL's and Redis's own CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_gate  # noqa: E402
from cpu_identity import Driver, per_request  # noqa: E402
from joserfc.jwk import ECKey  # noqa: E402

from gate_adapters.runtime.dpop import DPoPKey  # noqa: E402
from quaygate.db import create_database, drop_database  # noqa: E402
from quaygate.migrate import upgrade  # noqa: E402


def _body(seed: dict[str, Any], number: str, mode: str) -> bytes:
    return json.dumps({
        "request_id": str(uuid.uuid4()), "terminal": seed["terminal"], "lane": "cpu-1", "direction": "in",
        "mode": mode, "container": {"number": number, "confidence": 0.97},
        "plate": {"text": seed["plate"], "country": "BE", "confidence": 0.95},
        "badge": {"scheme": "alfapass", "number": seed["badge"]}, "observed_at": datetime.now(UTC).isoformat(),
    }).encode()


def flows(app: Driver, bare: Driver, seed: dict[str, Any], token: str, bound: tuple[DPoPKey, str, str | None], n: int
          ) -> dict[str, Callable[[], Awaitable[None]]]:
    """Every flow; ``bound``: a DPoP key and the access token bound to it (the gate adapter's way, its
    example settings' default), whose flows send a fresh proof with every request."""
    auth = f"Bearer {token}"
    key, bound_token, nonce = bound  # nonce: the epoch's, when the cache asked for it
    verify_url = f"{app.issuer}/gate/v1/verify"
    proofs: list[str] = []
    pool = seed["containers"][:seed["check_pool"]]
    unused = iter(seed["containers"][seed["check_pool"]:])
    turn = iter(range(10**9))

    async def bare_post() -> None:
        status, _ = await bare.call("POST", "/bare/verify", _body(seed, pool[0], "check"), "application/json")
        assert status == 200

    def floor(path: str) -> Callable[[], Awaitable[None]]:
        async def post() -> None:
            status, _ = await bare.call("POST", path, _body(seed, pool[0], "check"), "application/json")
            assert status == 200

        return post

    async def check() -> None:
        number = pool[next(turn) % len(pool)]
        status, out = await app.call("POST", "/gate/v1/verify", _body(seed, number, "check"), "application/json",
                                     auth)
        assert status == 200 and out["decision"] == "allow", out

    async def commit() -> None:
        status, out = await app.call("POST", "/gate/v1/verify", _body(seed, next(unused), "commit"),
                                     "application/json", auth)
        assert status == 200 and out["committed"], out

    def with_proof(mode: str) -> Callable[[], Awaitable[None]]:
        numbers = (lambda: pool[next(turn) % len(pool)]) if mode == "check" else (lambda: next(unused))

        async def post() -> None:
            if not proofs:  # made ahead, in the untimed warm-up: the client's signing is not the server's CPU
                proofs.extend(key.proof("POST", verify_url, access_token=bound_token, nonce=nonce)
                              for _ in range(n + 60))
            status, out = await app.call("POST", "/gate/v1/verify", _body(seed, numbers(), mode), "application/json",
                                         f"DPoP {bound_token}", proofs.pop())
            assert status == 200 and out["decision"] == "allow", out

        return post

    return {"bare": bare_post, "floor1": floor("/bare/verify-floor1"), "floor2": floor("/bare/verify-floor"),
            "floor-commit": floor("/bare/verify-commit-floor"), "floor-commit1": floor("/bare/verify-commit-floor1"),
            "floor-commit-async": floor("/bare/verify-commit-floor-async"), "check": check, "commit": commit,
            "dpop-check": with_proof("check"), "dpop-commit": with_proof("commit")}


async def measure(app: Any, bare_app: Any, issuer: str, seed: dict[str, Any], n: int, only: str | None) -> None:
    app_driver, bare_driver = Driver(app, issuer), Driver(bare_app, issuer)
    async with app.router.lifespan_context(app):
        basic = base64.b64encode(f"{seed['client_id']}:{seed['secret']}".encode()).decode()
        status, out = await app_driver.call("POST", "/oauth2/token", b"grant_type=client_credentials",
                                            "application/x-www-form-urlencoded", f"Basic {basic}")
        assert status == 200, out
        key = DPoPKey(ECKey.generate_key("P-256", private=True))
        nonce = None
        for _ in range(2):  # a cache that just began asks for its nonce first (RFC 9449 §8), as a gate is asked
            status, bound = await app_driver.call("POST", "/oauth2/token", b"grant_type=client_credentials",
                                                  "application/x-www-form-urlencoded", f"Basic {basic}",
                                                  key.proof("POST", f"{issuer}/oauth2/token", nonce=nonce))
            if status != 400 or bound.get("error") != "use_dpop_nonce":
                break
            nonce = app_driver.headers["dpop-nonce"]
        assert status == 200 and bound["token_type"] == "DPoP", bound
        figures: dict[str, float] = {}
        for name, flow in flows(app_driver, bare_driver, seed, out["access_token"], (key, bound["access_token"], nonce),
                                n).items():
            if only and name != "bare" and only not in name:
                continue
            per, wall = await per_request(flow, n)
            figures[name] = per
            ratio = f", {figures['bare'] / per:.2f} of bare" if name != "bare" else ""
            print(f"  {name}: {per * 1000:.2f} ms CPU per request ({1 / per:,.0f} per core), "
                  f"{wall * 1000:.2f} ms wall{ratio}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("QUAYGATE_TEST_DATABASE_URL",
                                                                "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default=os.environ.get("QUAYGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument("--no-redis", action="store_true", help="PostgreSQL only (the in-process cache)")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--only", help="the flows whose name contains this (bare always runs)")
    args = parser.parse_args()
    url = create_database(args.database_url, f"qg_cpu_gate_{os.getpid()}")
    issuer = "http://localhost:8000"
    try:
        upgrade(url)
        seed = bench_gate.seed(url, 200 + 3 * (args.requests + 60))
        seed["check_pool"] = 200
        with tempfile.TemporaryDirectory() as tmp:
            os.environ.update({**bench_gate.BENCH_SECRETS, "QUAYGATE_DATABASE_URL": url, "QUAYGATE_ISSUER": issuer,
                               "QUAYGATE_VAR_DIR": tmp,
                               "QUAYGATE_BACKGROUND_WORKERS": "false", "QUAYGATE_LOG_LEVEL": "WARNING",
                               "QUAYGATE_RATE_LIMIT_ENABLED": "false"})
            if not args.no_redis:
                os.environ["QUAYGATE_REDIS_URL"] = args.redis_url
                bench_gate.forget_other_runs(args.redis_url)  # a new database: no copy of another run's
            from loadtests.bare_app import app as bare_app
            from quaygate.app import app_from_env

            print(f"gate verify in process on PostgreSQL{'' if args.no_redis else ' + Redis'}, {args.requests} "
                  "requests per flow, one at a time, CPU of this process", flush=True)
            asyncio.run(measure(app_from_env(), bare_app, issuer, seed, args.requests, args.only))
    finally:
        drop_database(args.database_url, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())

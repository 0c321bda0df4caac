"""CPU per request of the identity provider's hot flows, in process, one request at a time.

    python loadtests/cpu_identity.py [--requests 400] [--database-url ...] [--redis-url ...]

The Locust figures (bench_identity.py) share two cores between Locust, the server, PostgreSQL and
Redis, and move by a third from run to run on this machine. This one drives the real app (every
middleware, the real PostgreSQL and Redis) through its ASGI interface with no HTTP server and no load
generator, and divides the process's CPU time by the requests: the steadier figure for comparing one
change with the next. It includes the thread-pool hops, excludes the HTTP parser and PostgreSQL's
and Redis's own CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_identity  # noqa: E402
from assertions import ASSERTION_TYPE, AssertionSigner  # noqa: E402
from soft_passkey import SoftPasskey  # noqa: E402

from identity.authn import enrolment  # noqa: E402
from quaygate.db import create_database, drop_database, make_engine  # noqa: E402
from quaygate.migrate import upgrade  # noqa: E402


class Driver:
    """Calls the ASGI app as uvicorn would, keeping the cookies it sets."""

    def __init__(self, app: Any, issuer: str) -> None:
        self.app = app
        self.issuer = issuer
        self.cookies: dict[str, str] = {}

    async def call(self, method: str, path: str, body: bytes = b"", content_type: str | None = None,
                   authorization: str | None = None, dpop: str | None = None) -> tuple[int, Any]:
        headers = [(b"host", self.issuer.split("//")[1].encode()), (b"origin", self.issuer.encode()),
                   (b"content-length", str(len(body)).encode())]
        if dpop:
            headers.append((b"dpop", dpop.encode()))
        if authorization:
            headers.append((b"authorization", authorization.encode()))
        if content_type:
            headers.append((b"content-type", content_type.encode()))
        if self.cookies:
            headers.append((b"cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()).encode()))
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {}}
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        out: dict[str, Any] = {"body": b""}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
                self.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
                for name, value in message.get("headers", []):
                    if name == b"set-cookie":
                        key, _, rest = value.decode().partition("=")
                        self.cookies[key] = rest.split(";")[0]
            elif message["type"] == "http.response.body":
                out["body"] += message.get("body", b"")

        await self.app(scope, receive, send)
        raw = out["body"]
        return out["status"], json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    async def form(self, path: str, data: dict[str, str]) -> tuple[int, Any]:
        return await self.call("POST", path, urlencode(data).encode(), "application/x-www-form-urlencoded")

    async def json(self, path: str, data: dict[str, Any]) -> tuple[int, Any]:
        return await self.call("POST", path, json.dumps(data).encode(), "application/json")


def flows(driver: Driver, seed: dict[str, Any], passkey: SoftPasskey) -> dict[str, Callable[[], Awaitable[None]]]:
    c = seed["clients"][0]
    signer = AssertionSigner(c["client_id"], c["kid"], c["private_key"], seed["token_endpoint"])
    chain = {"token": seed["refresh"][0]}

    async def bare() -> None:
        status, _ = await driver.call("GET", "/healthz")
        assert status == 200

    async def client_credentials() -> None:
        status, body = await driver.form("/oauth2/token", {
            "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": signer.assertion(), "scope": "releases:read"})
        assert status == 200, body

    async def refresh() -> None:
        status, body = await driver.form("/oauth2/token", {
            "grant_type": "refresh_token", "refresh_token": chain["token"], "client_id": seed["driver_app"]})
        assert status == 200, body
        chain["token"] = body["refresh_token"]

    async def passkey_login() -> None:
        driver.cookies.clear()
        status, options = await driver.json("/webauthn/authentication/options", {})
        assert status == 200, options
        credential = passkey.assert_(options["publicKey"]["challenge"])
        status, body = await driver.json("/webauthn/authentication/verify",
                                         {"flow": options["flow"], "credential": credential})
        assert status == 200, body

    return {"bare GET /healthz": bare, "client_credentials (private_key_jwt)": client_credentials,
            "refresh_token (rotation)": refresh, "passkey login (options + verify)": passkey_login}


async def register_passkey(driver: Driver, url: str, person: Any) -> SoftPasskey:
    engine = make_engine(url)
    code, _ = enrolment.issue_code(engine, person, created_by="bench", now=datetime.now(UTC), ttl=timedelta(hours=1),
                                   refused_roles=enrolment.NO_ROLE_REFUSED)
    engine.dispose()
    status, options = await driver.json("/webauthn/registration/options", {"enrolment_code": code})
    assert status == 200, options
    passkey, credential = SoftPasskey.register(options["publicKey"], origin=driver.issuer)
    status, body = await driver.json("/webauthn/registration/verify",
                                     {"flow": options["flow"], "credential": credential, "name": "bench"})
    assert status in (200, 201), body
    return passkey


async def per_request(flow: Callable[[], Awaitable[None]], n: int) -> tuple[float, float]:
    """Seconds of this process's CPU and of wall time per call of ``flow``, after a warm-up (prepared
    statements, caches, opened keys)."""
    for _ in range(min(50, n)):
        await flow()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        await flow()
    return (time.process_time() - cpu) / n, (time.perf_counter() - wall) / n


async def measure(app: Any, url: str, issuer: str, seed: dict[str, Any], people: list[Any], n: int,
                  only: str | None = None) -> None:
    driver = Driver(app, issuer)
    async with app.router.lifespan_context(app):
        passkey = await register_passkey(driver, url, people[0])
        for name, flow in flows(driver, seed, passkey).items():
            if only and only not in name:
                continue
            per, wall = await per_request(flow, n)
            print(f"  {name}: {per * 1000:.2f} ms CPU per request ({1 / per:,.0f} per core), "
                  f"{wall * 1000:.2f} ms wall", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("QUAYGATE_TEST_DATABASE_URL",
                                                                "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default=os.environ.get("QUAYGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--only", help="the flows whose name contains this")
    args = parser.parse_args()
    url = create_database(args.database_url, f"qg_cpu_identity_{os.getpid()}")
    issuer = "http://localhost:8000"
    try:
        upgrade(url)
        bench_identity.forget_other_runs(args.redis_url)  # a new database: another run's Redis claim gone
        seed, people = bench_identity.seed(url, issuer, 2)
        with tempfile.TemporaryDirectory() as tmp:
            os.environ.update({**bench_identity.BENCH_SECRETS, **bench_identity.NO_LIMITS, "QUAYGATE_DATABASE_URL": url,
                               "QUAYGATE_REDIS_URL": args.redis_url, "QUAYGATE_ISSUER": issuer,
                               "QUAYGATE_VAR_DIR": tmp, "QUAYGATE_BACKGROUND_WORKERS": "false",
                               "QUAYGATE_LOG_LEVEL": "WARNING"})
            from quaygate.app import app_from_env

            print(f"identity provider in process on PostgreSQL + Redis, {args.requests} requests per flow, "
                  "one at a time, CPU of this process", flush=True)
            asyncio.run(measure(app_from_env(), url, issuer, seed, people, args.requests, args.only))
    finally:
        drop_database(args.database_url, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Identity provider throughput with Locust against a real server on PostgreSQL and Redis (issue 3).

    python loadtests/bench_identity.py [--seconds 20] [--users 32] [--workers 1]

Creates a scratch database, migrates it, seeds private_key_jwt clients (ES256 keys), refresh-token
chains (grants seeded directly with GrantStore, no code flow needed) and passkeys (registered through
the real enrolment-code ceremony), serves the app with uvicorn (--no-access-log, as NOTES.md asks), and
runs Locust headless in a separate process, one user class after another: the bare endpoint first, then
client-credentials grants, refresh grants and passkey logins. Each figure is printed in requests per
second and per CPU core, beside the bare endpoint's rate measured in the same run.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from joserfc.jwk import ECKey

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from soft_passkey import SoftPasskey  # noqa: E402

from identity.authn import enrolment  # noqa: E402
from identity.clients import ClientRegistry  # noqa: E402
from identity.domain.assurance import ACR_PASSKEY, AMR_PASSKEY  # noqa: E402
from identity.grants import GrantStore, RevocationList  # noqa: E402
from quaygate.cache import MemoryCache  # noqa: E402
from quaygate.db import create_database, drop_database, make_engine  # noqa: E402
from quaygate.migrate import upgrade  # noqa: E402
from quaygate.schema import organisations, persons  # noqa: E402

# (label, Locust user class, the request name that counts, target per core, Keycloak's sizing per vCPU)
SCENARIOS = [
    ("client_credentials grants (private_key_jwt)", "ClientCredentialsUser", "client_credentials (private_key_jwt)",
     600, 120),
    ("refresh grants (rotation)", "RefreshUser", "refresh_token (rotation)", 600, 120),
    ("passkey logins (options + verify)", "PasskeyUser", "passkey login (verify)", 300, 15),
]
# Keycloak's published sizing ("Concepts for sizing CPU and memory resources", Keycloak 26): per vCPU,
# 15 password-based user logins/s, 120 client-credentials grants/s and 120 refresh-token requests/s.
# The rate limits would otherwise cap a single load generator's address within a second.
# Dev mode on PostgreSQL makes no secrets of its own (quaygate/settings.py, review 132): the bench servers
# are given these, made per run.
BENCH_SECRETS = {"QUAYGATE_DATA_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                 "QUAYGATE_PEPPER": secrets.token_urlsafe(32)}
NO_LIMITS = {"QUAYGATE_RATE_LIMIT_PER_ADDRESS": "1000000000", "QUAYGATE_RATE_LIMIT_PER_CLIENT": "1000000000",
             "QUAYGATE_LOGIN_ATTEMPTS_PER_ADDRESS": "1000000000"}


def forget_other_runs(redis_url: str) -> int:
    """Delete quaygate's keys (``qg:*``) in the bench's Redis database, and return how many: each run seeds a
    new PostgreSQL database, and the Redis database serves one database's dataset (quaygate/
    identity_of_dataset.py: another run's claim refuses this run's servers); before that claim, the copies
    an earlier run left were trusted (the same badge number held by another person there:
    ``driver_mismatch``). The Redis database given is the bench's own scratch."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        names = list(client.scan_iter(match="qg:*", count=1000))
        for start in range(0, len(names), 1000):
            client.delete(*names[start:start + 1000])
        return len(names)
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(database_url: str, issuer: str, users: int) -> tuple[dict[str, Any], list[uuid.UUID]]:
    """Clients with keys, grants with refresh tokens, and the persons the passkeys will belong to."""
    engine = make_engine(database_url)
    now = datetime.now(UTC)
    line = uuid.uuid4()
    people = [uuid.uuid4() for _ in range(users)]
    with engine.begin() as conn:
        conn.execute(organisations.insert().values(id=line, name="bench line", kind="shipping_line",
                                                   eori="BE0000000901", created_at=now))
        conn.execute(persons.insert(), [{"id": p, "given_name": "Bench", "family_name": f"Driver {i}",
                                         "created_at": now} for i, p in enumerate(people)])
    registry = ClientRegistry(engine)
    clients = []
    for i in range(users):  # one client per Locust user: the per-client limits and caches see many clients
        key = ECKey.generate_key("P-256", parameters={"kid": f"bench-{i}", "use": "sig", "alg": "ES256"})
        client_id, _ = registry.register(name=f"bench line {i}", role="shipping_line", organisation_id=line,
                                         auth_method="private_key_jwt",
                                         jwks={"keys": [key.as_dict(private=False)]}, now=now)
        pem = key.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()).decode()
        clients.append({"client_id": client_id, "kid": f"bench-{i}", "private_key": pem})
    # Registered as the demo registers the driver app (quaygate/demo.py): ES256 id tokens.
    app_id, _ = registry.register(name="bench driver app", role="driver_app", organisation_id=None,
                                  auth_method="none", redirect_uris=[f"{issuer}/bench/callback"], now=now,
                                  extra_metadata={"id_token_signed_response_alg": "ES256"})
    store = GrantStore(engine, RevocationList(MemoryCache()), refresh_ttl=3600)
    refresh = []
    with engine.begin() as conn:
        for person in people:
            grant = store.create(conn, client_id=app_id, person_id=person, sid=None,
                                 scope="openid offline_access releases:read", acr=ACR_PASSKEY, amr=AMR_PASSKEY,
                                 auth_time=now, dpop_jkt=None, now=now)
            refresh.append(store.issue_refresh(conn, grant, now=now))
    engine.dispose()
    return {"token_endpoint": f"{issuer}/oauth2/token", "driver_app": app_id, "clients": clients,
            "refresh": refresh}, people


def register_passkeys(database_url: str, base: str, origin: str, people: list[uuid.UUID]) -> tuple[list[Any], str]:
    """One passkey per person, through the badge office's enrolment code and the real ceremony."""
    engine = make_engine(database_url)
    done: list[Any] = []
    try:
        with httpx.Client(base_url=base, headers={"Origin": origin}, timeout=30) as http:
            for person in people:
                code, _ = enrolment.issue_code(engine, person, created_by="bench", now=datetime.now(UTC),
                                               ttl=timedelta(hours=1), refused_roles=enrolment.NO_ROLE_REFUSED)
                http.cookies.clear()
                r = http.post("/webauthn/registration/options", json={"enrolment_code": code})
                if r.status_code != 200:
                    return done, f"registration options: {r.status_code} {r.text[:200]}"
                options = r.json()
                passkey, credential = SoftPasskey.register(options["publicKey"], origin=origin)
                r = http.post("/webauthn/registration/verify",
                              json={"flow": options["flow"], "credential": credential, "name": "bench"})
                if r.status_code not in (200, 201):
                    return done, f"registration verify: {r.status_code} {r.text[:200]}"
                done.append(passkey.to_json())
    finally:
        engine.dispose()
    return done, ""


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: str) -> tuple[str, int, float] | None:
    """(command, parent pid, user+system CPU seconds) of one process, from /proc (Linux)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1: raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    return comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def cpu_seconds(root: int) -> tuple[float, float]:
    """CPU seconds used so far by the server (root and its descendants) and by PostgreSQL and Redis."""
    stats = {pid: st for pid in os.listdir("/proc") if pid.isdigit() and (st := _stat(pid)) is not None}
    tree, server = {root}, 0.0
    changed = True
    while changed:
        changed = False
        for pid, (_, ppid, _) in stats.items():
            if ppid in tree and int(pid) not in tree:
                tree.add(int(pid))
                changed = True
    server = sum(stats[str(p)][2] for p in tree if str(p) in stats)
    services = sum(cpu for comm, _, cpu in stats.values() if comm.startswith(("postgres", "redis-server")))
    return server, services


def run_locust(user_class: str, base: str, seed_path: Path, users: int, seconds: int, out: Path,
               server_pid: int) -> dict[str, Any]:
    prefix = out / user_class
    before = cpu_seconds(server_pid)
    env = {**os.environ, "QG_BENCH_SEED": str(seed_path)}
    subprocess.run(  # noqa: S603 - our locust, our file
        [sys.executable, "-m", "locust", "-f", str(HERE / "locust_identity.py"), "--headless", "--users", str(users),
         "--spawn-rate", str(users), "--run-time", f"{seconds}s", "--host", base, "--csv", str(prefix),
         "--only-summary", "--loglevel", "ERROR", "--stop-timeout", "5", user_class],
        env=env, cwd=ROOT, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows: dict[str, Any] = {}
    stats = Path(f"{prefix}_stats.csv")
    if stats.exists():
        with stats.open() as f:
            for row in csv.DictReader(f):
                rows[row["Name"]] = row
    after = cpu_seconds(server_pid)
    rows["_cpu"] = {"server": after[0] - before[0], "services": after[1] - before[1]}
    failures = Path(f"{prefix}_failures.csv")
    errors = []
    if failures.exists():
        with failures.open() as f:
            errors = [f"{r['Occurrences']}x {r['Error'][:160]}" for r in csv.DictReader(f)]
    return {"rows": rows, "errors": errors}


def rate(result: dict[str, Any], name: str) -> tuple[float, int, int]:
    row = result["rows"].get(name)
    if row is None:
        return 0.0, 0, 0
    total, failed = int(row["Request Count"]), int(row["Failure Count"])
    rps = float(row["Requests/s"])
    good = rps * (total - failed) / total if total else 0.0
    return good, total, failed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default=os.environ.get("QUAYGATE_TEST_DATABASE_URL",
                                                                "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default=os.environ.get("QUAYGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", choices=[s[1] for s in SCENARIOS], help="run the bare endpoint and this one only")
    parser.add_argument("--profile", metavar="FILE", help="run the server under py-spy, collapsed stacks to FILE")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    url = create_database(args.database_url, f"qg_bench_identity_{os.getpid()}")
    port = _free_port()
    issuer = f"http://localhost:{port}"
    base = f"http://127.0.0.1:{port}"
    server = None
    try:
        upgrade(url)
        forget_other_runs(args.redis_url)
        with tempfile.TemporaryDirectory() as tmp:
            seed_data, people = seed(url, issuer, args.users)
            env = {**os.environ, **BENCH_SECRETS, **NO_LIMITS, "QUAYGATE_DATABASE_URL": url,
                   "QUAYGATE_REDIS_URL": args.redis_url,
                   "QUAYGATE_ISSUER": issuer, "QUAYGATE_VAR_DIR": tmp, "QUAYGATE_BACKGROUND_WORKERS": "false",
                   "QUAYGATE_LOG_LEVEL": "WARNING"}
            log = Path(tmp) / "server.log"
            with log.open("wb") as log_file:
                wrap = ["py-spy", "record", "--format", "raw", "--rate", "200", "--nonblocking",
                        "--output", args.profile, "--"] if args.profile else []
                server = subprocess.Popen(  # noqa: S603 - our interpreter, our app
                    [*wrap, sys.executable, "-m", "uvicorn", "quaygate.app:app_from_env", "--factory",
                     "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers), "--no-access-log"],
                    cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
                if not _wait(base, server):
                    print("identity bench FAILED: the server did not start\n" + log.read_text()[-2000:])
                    return 1
                passkeys, why = register_passkeys(url, base, issuer, people)
                seed_data["passkeys"] = passkeys
                seed_path = Path(tmp) / "seed.json"
                seed_path.write_text(json.dumps(seed_data))
                return report(args, cores, base, seed_path, Path(tmp), why, server.pid)
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT if args.profile else signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        drop_database(args.database_url, url)


def _wait(base: str, server: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.2)
    return False


def report(args: argparse.Namespace, cores: int, base: str, seed_path: Path, out: Path, passkey_setup: str,
           server_pid: int) -> int:
    """Each figure twice: requests per second of wall time (Locust, server and database share the
    machine's cores), and requests per second of one core of the server's own CPU (user + system
    time of the uvicorn process tree, read from /proc): the figure Keycloak's sizing is given in."""
    print(f"identity provider on PostgreSQL + Redis, uvicorn {args.workers} worker(s) --no-access-log, "
          f"{cores} CPU cores shared with Locust and the database, Locust FastHttpUser x {args.users}, "
          f"{args.seconds} s per figure", flush=True)
    bare_result = run_locust("BareUser", base, seed_path, args.users, args.seconds, out, server_pid)
    bare, bare_total, _ = rate(bare_result, "bare /healthz")
    bare_core = bare_total / max(bare_result["rows"]["_cpu"]["server"], 1e-9)
    print(f"  bare endpoint GET /healthz: {bare:,.0f} req/s; {bare_core:,.0f} per server core", flush=True)
    failed_any = False
    for label, user_class, name, target, keycloak in SCENARIOS:
        if args.only and user_class != args.only:
            continue
        if user_class == "PasskeyUser" and passkey_setup:
            print(f"  {label}: NOT RUN, passkey registration failed: {passkey_setup}")
            failed_any = True
            continue
        result = run_locust(user_class, base, seed_path, args.users, args.seconds, out, server_pid)
        good, total, failed = rate(result, name)
        cpu = result["rows"]["_cpu"]
        per_core = (total - failed) / max(cpu["server"], 1e-9)
        db_ms = 1000 * cpu["services"] / max(total - failed, 1)
        verdict = "OK" if per_core >= target else "UNDER TARGET"
        print(f"  {label}: {good:,.0f} /s; {per_core:,.0f} per server core ({per_core / bare_core:.1%} of bare's); "
              f"target {target}/core: {verdict}; {per_core / keycloak:.1f}x Keycloak's {keycloak}/vCPU; "
              f"PostgreSQL + Redis {db_ms:.2f} ms CPU each"
              + (f"; {failed} of {total} requests FAILED" if failed else ""), flush=True)
        for error in result["errors"][:3]:
            print(f"      {error}")
        failed_any |= failed > 0 or total == 0
    return 1 if failed_any else 0


if __name__ == "__main__":
    sys.exit(main())

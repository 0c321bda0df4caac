"""Shared fixtures: real SQLite and real PostgreSQL (and Redis) with the schema built by Alembic.

PostgreSQL and Redis come from QUAYGATE_TEST_DATABASE_URL and QUAYGATE_TEST_REDIS_URL. Without them
the tests that need them are skipped and listed at the end of the run; under CI (CI=true) a missing
service is a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.db import create_database, drop_database, make_engine
from quaygate.migrate import upgrade
from quaygate.schema import metadata

from .processes import unavailable

PG_URL = os.environ.get("QUAYGATE_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("QUAYGATE_TEST_REDIS_URL")
# An app started in this process must not freeze the test process's objects (quaygate/app.py
# _freeze_startup_objects): servers the tests start as processes of their own still do.
os.environ.setdefault("QUAYGATE_GC_FREEZE", "false")
# Outside production the secrets are made per directory on SQLite only (quaygate/settings.py, review 132):
# the tests' settings on PostgreSQL, and the servers they start, share these (fixed, for tests only).
os.environ.setdefault("QUAYGATE_DATA_KEY", "dGVzdHMtb25seS1kYXRhLWtleS0zMi1ieXRlcy0wMTI")
os.environ.setdefault("QUAYGATE_PEPPER", "tests-only-pepper-not-for-any-deployment")

def need_service(name: str, url: str | None) -> str:
    """The service's URL, or skip (fail under CI) when it is not configured."""
    if url:
        return url
    unavailable(name, f"not configured (set QUAYGATE_TEST_{'DATABASE' if name == 'PostgreSQL' else 'REDIS'}_URL)")


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say plainly which tests did not run for lack of a service (works under xdist too)."""
    missing: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        text = str(report.longrepr)
        for name in ("PostgreSQL", "Redis"):
            if f"{name} not configured" in text:
                missing[name] += 1
    if missing:
        terminalreporter.write_line(
            "SKIPPED for lack of a service: "
            + ", ".join(f"{count} tests need {name}" for name, count in sorted(missing.items()))
            + ". Set QUAYGATE_TEST_DATABASE_URL / QUAYGATE_TEST_REDIS_URL to run them.",
            yellow=True,
            bold=True,
        )


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database per test worker, migrated by Alembic, dropped at the end."""
    base = need_service("PostgreSQL", PG_URL)
    url = create_database(base, f"qg_test_{_worker()}_{os.getpid()}")
    upgrade(url)
    yield url
    drop_database(base, url)


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = Path(tmp_path_factory.mktemp("sqlite")) / "quaygate.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


@contextlib.contextmanager
def refusing_connections(engine: sa.Engine) -> Iterator[None]:
    """The engine's database refuses new connections (its open ones go on), as at ``max_connections``."""
    name = engine.url.database
    base = sa.make_url(need_service("PostgreSQL", PG_URL)).set(drivername="postgresql+psycopg")
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            yield
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        admin.dispose()


# Of the schema's tables: those with a trigger of their own ('trigger': the audit tables refuse DELETE,
# migration 0015), and those owning a sequence that has moved since it was made or restarted ('sequence':
# an insert rolled back moves it too).
_TRIGGERED_OR_SEQUENCED = """
SELECT t.name, 'trigger' FROM unnest(CAST(:tables AS text[])) AS t(name)
JOIN pg_trigger g ON g.tgrelid = to_regclass(quote_ident(t.name)) AND NOT g.tgisinternal
UNION
SELECT t.name, 'sequence' FROM unnest(CAST(:tables AS text[])) AS t(name)
JOIN pg_depend d ON d.refobjid = to_regclass(quote_ident(t.name)) AND d.refclassid = 'pg_class'::regclass
    AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_sequences q ON q.schemaname = s.relnamespace::regnamespace::text AND q.sequencename = s.relname
WHERE q.last_value IS NOT NULL
"""


def _truncate(engine: sa.Engine) -> None:
    tables = [t.name for t in reversed(metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # TRUNCATE makes every table it empties (and its indexes) new files: the whole schema took about
            # a second with fsync on, twice per test, and naming fewer tables does not help (it must name
            # every table that references one it names, empty or not). So only the tables a test left a row
            # in are emptied: by TRUNCATE ... RESTART IDENTITY those with a trigger (TRUNCATE fires no row
            # trigger) and those whose sequence moved (restarted even when empty), by DELETE the others,
            # dependants first. Every table is then empty with its sequence unused, as TRUNCATE leaves it.
            rows = " UNION ALL ".join(f"SELECT '{t}' WHERE EXISTS (SELECT FROM \"{t}\")" for t in tables)
            held = set(conn.exec_driver_sql(rows).scalars())
            marks = conn.execute(sa.text(_TRIGGERED_OR_SEQUENCED), {"tables": tables}).all()
            triggered = {t for t, kind in marks if kind == "trigger"}
            truncated = [t for t in tables if (t in held and t in triggered) or (t, "sequence") in marks]
            if truncated:
                conn.exec_driver_sql("TRUNCATE " + ", ".join(f'"{t}"' for t in truncated) + " RESTART IDENTITY CASCADE")
            for t in tables:
                if t in held and t not in truncated:
                    conn.exec_driver_sql(f'DELETE FROM "{t}"')
        else:
            # The audit tables refuse DELETE by trigger (migration 0015), and SQLite has no TRUNCATE (which
            # on PostgreSQL fires no row trigger): the triggers are set aside in this transaction and made
            # again, as they were, before it commits.
            triggers = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").all()
            for name, _ in triggers:
                conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
            for t in tables:
                conn.exec_driver_sql(f'DELETE FROM "{t}"')
            for _, sql in triggers:
                conn.exec_driver_sql(sql)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Both backends: every storage test runs on SQLite and on real PostgreSQL."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_database_url")
    else:
        url = request.getfixturevalue("sqlite_database_url")
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(database_url, pool_size=20, max_overflow=40)
    _truncate(eng)
    yield eng
    _truncate(eng)
    eng.dispose()


@pytest.fixture
def pg_engine(pg_database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(pg_database_url, pool_size=30, max_overflow=80)
    _truncate(eng)
    yield eng
    _truncate(eng)
    eng.dispose()


def worker_redis() -> Iterator[str]:
    """A real Redis, on a database index of this worker's, flushed before and after: ``redis_url``'s, and
    that of any fixture of a wider scope (tests/test_api_fuzz.py)."""
    import redis

    base = need_service("Redis", REDIS_URL)
    worker = _worker()
    # QUAYGATE_TEST_REDIS_DB_OFFSET keeps two suites running side by side on one machine apart.
    offset = int(os.environ.get("QUAYGATE_TEST_REDIS_DB_OFFSET", "0"))
    index = 1 + (offset + (int(worker[2:]) if worker.startswith("gw") else 0)) % 15
    url = f"{base.rstrip('/')}/{index}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    # A Redis that has held the service's data since long before the test: its dataset's epoch
    # (quaygate/dataset.py) long ago, set by this very server. Without it a flushed Redis is one that
    # lost its data, and a DPoP proof or client assertion made in the test's first seconds is refused.
    client.set("qg:dataset:epoch", f"0 {client.info('server')['run_id']}")
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A real Redis, on a database index of its own per worker, flushed around each test."""
    yield from worker_redis()


@pytest.fixture(autouse=True)
def _caches_held_their_data_since_long_before(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """An in-process cache a test makes stands for one that has held its data since long before the
    test, as ``redis_url``'s Redis does: its epoch (quaygate/dataset.py) is long ago unless given. A
    cache's own epoch is the moment it is made, and a DPoP proof or client assertion made within the
    verifier's leeway after it is refused (its client's clock may be that far ahead), as after a
    restart. Tests of that ask for ``epochs_as_made``."""
    if "epochs_as_made" in request.fixturenames:
        return
    from quaygate.cache import MemoryCache

    made = MemoryCache.__init__

    def long_ago(self: MemoryCache, *, since: float | None = None) -> None:
        made(self, since=0.0 if since is None else since)

    monkeypatch.setattr(MemoryCache, "__init__", long_ago)


class _MadeKeys:
    """RSA key pairs made once per test process and handed out in order within each test, in place of
    joserfc's ``RSAKey.generate_key``: every key is a real one of the size asked, and within one test
    no two are the same (a rotation, a second provider, a foreign key each get their own), but the n-th
    key of every test is the same pair. Making a 2048-bit pair takes 36-200 ms, and nearly every test
    builds an identity provider whose signing keys are made afresh on an emptied database: a sixth of
    the suite's CPU went there (py-spy, thirty-first session). The key is built from the pair as
    joserfc's own ``generate_key`` builds it (importing it from its JWK again checks the pair, some
    10 ms each)."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._new = rsa.generate_private_key
        self._made: dict[int, list[Any]] = {}
        self._taken: Counter[int] = Counter()

    def start_test(self) -> None:
        self._taken.clear()

    def generate(self, cls: Any, key_size: int | None = 2048, parameters: dict[str, Any] | None = None,
                 private: bool = True, auto_kid: bool = False) -> Any:
        size = key_size or 2048
        made = self._made.setdefault(size, [])
        n = self._taken[size]
        self._taken[size] += 1
        if n == len(made):
            made.append(self._new(public_exponent=65537, key_size=size))
        raw = made[n] if private else made[n].public_key()
        key = cls(raw, raw, parameters)
        if auto_kid:
            key.ensure_kid()
        return key


_MADE_KEYS: _MadeKeys | None = None
CHEAP_SCRYPT = {"n": 2**4, "r": 8, "p": 1}


@pytest.fixture(autouse=True)
def _secrets_and_keys_cheap(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Client secrets hashed at a cheap scrypt cost, RSA keys taken from ``_MadeKeys``: together half
    the CPU of the gate, release and broker tests, spent on work whose strength is beside their point.
    A hash records its cost and ``verify_secret`` follows it, so nothing else changes; secrets a server
    process hashes itself keep the production cost. Tests of the costs themselves ask for
    ``production_costs``."""
    if "production_costs" in request.fixturenames:
        return
    global _MADE_KEYS
    from joserfc.jwk import RSAKey

    from identity import clients

    if _MADE_KEYS is None:
        _MADE_KEYS = _MadeKeys()
    _MADE_KEYS.start_test()
    monkeypatch.setattr(clients, "_SCRYPT", CHEAP_SCRYPT)
    monkeypatch.setattr(RSAKey, "generate_key", classmethod(_MADE_KEYS.generate))


@pytest.fixture
def production_costs() -> None:
    """Client secrets hashed and RSA keys made as in production (see ``_secrets_and_keys_cheap``)."""


@pytest.fixture
def epochs_as_made() -> None:
    """In-process caches begin their dataset when they are made, as in a server (see above)."""


@pytest.fixture
def new_id() -> uuid.UUID:
    return uuid.uuid4()

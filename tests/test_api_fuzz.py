"""Schema-driven fuzzing of the whole API: bad input gets a clear error and loses nothing.

The project rule: "Bad input gets a clear error (RFC 9457 problem JSON on the API) and loses nothing: no
half-written transfer, no used right, no 500." This test walks every operation of the published OpenAPI
document (openapi/openapi.json, which tests/test_openapi.py keeps equal to the app's; the last test here
checks that every operation has a plan) and sends each one bad input as a caller allowed to call it, with
a real token (client credentials; the code flow with PKCE for the driver and the console officers; a
passkey session for the account pages), so that the input reaches validation and the service, not only
the token check; on the full app over real PostgreSQL and Redis:

- the whole body: none, empty, not JSON, truncated, invalid UTF-8, other charsets, another JSON type,
  1 000 levels of nesting, 100 000 items, duplicate keys, unknown fields, 1 MiB strings, past the body
  limit, wrong or missing content types, multipart (forms: repeated, unknown, NUL and huge parameters);
- every field of the body's schema (walked from the document), one at a time in an otherwise valid
  body: the wrong type, null, left out, and wrong values of its kind: control characters, lone
  surrogates, NaN, 1e400, 5 000-digit and 64-bit-overflowing integers, floats for integers, year 0,
  9999-12-31T23:59:59 with offsets, leap seconds, bad UUIDs and enum values;
- path parameters (not UUIDs, percent-encoded NULs and invalid UTF-8, 10 000 characters, unknown ids),
  query parameters (wrong types, NULs, huge, repeated, bad dates), the Idempotency-Key header, the
  If-Match header (a version the right is not at, a weak or unquoted tag, NULs, huge);
- no token, a garbage token, and a caller of a role the operation refuses.

Each answer must have a status below 500 (a route that raises fails the case with the server's
traceback); every 4xx must be ``application/problem+json`` with ``type``, ``title`` and a ``status``
equal to the HTTP status, unless the document declares another media type alone for the operation's
errors (the OAuth endpoints' RFC 6749 §5.2 JSON, the authorization pages' HTML); and a refused
state-changing request must have written nothing: triggers count every row inserted, updated or deleted
in every table (``WRITE_LOG``), so a half-written transfer, a right marked used or a one-time token
consumed shows; only a record of the refusal itself may be appended to the audit trail.

Each case is named ``<operationId>:<group>:<target>:<kind>`` and its random choices come from
``tests.fuzz_inputs.rng(its name)``: ``pytest -k`` with the name reproduces it. What each operation needs
(its caller, a refused caller, a valid request and the state it acts on, made fresh for the cases that
may get past validation) is its ``Plan``. A case the service is known to fail is in ``KNOWN``, a strict
xfail with the finding. ``QUAYGATE_FUZZ_LOG=<file>`` writes every case's answer there.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from joserfc import jws

from identity import clients
from identity.bootstrap import create_client
from identity.domain import assurance
from identity.domain.badges import Scheme, with_check
from identity.registration import management_for
from identity.sessions import sessions_for
from quaygate.app import create_app
from quaygate.cache import RedisCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher, keyed_hash
from quaygate.db import make_engine
from quaygate.openapi_export import PATH as OPENAPI_PATH
from quaygate.openapi_export import generate
from quaygate.schema import audit_log, badge_activations, badges, metadata, persons, webauthn_credentials
from quaygate.settings import Settings

from .ban_register import Register, ban, national_number, snapshot
from .conftest import _truncate, worker_redis
from .factories import TERMINAL, container
from .fuzz_inputs import (
    BODY_ALWAYS,
    BODY_SAMPLED,
    FORM_ALWAYS,
    FORM_CORE,
    FORM_SAMPLED,
    FORM_VALUES,
    MISSING,
    PATH_CORE,
    PATH_VALUES,
    QUERY_INTS,
    QUERY_STRINGS,
    Fields,
    Raw,
    Schemas,
    body_variant,
    core,
    dotted,
    encode_pairs,
    example_fields,
    form,
    json_body,
    pick,
    put,
    render,
    rng,
    wrong_types,
    wrongs,
)
from .test_identity_code_flow_support import CONSOLE_REDIRECT, DRIVER_REDIRECT, Flow, Pkce
from .test_identity_support import ISSUER, add_org

# The world is built once per module and worker (on the worker's own database and Redis index).
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

SPEC: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())
SCHEMAS = Schemas(SPEC)
ORIGIN = ISSUER
FUZZ_TERMINAL = "BEGNT-FUZZ1"  # the gate-policy cases change this terminal's policy, not the gate's
ADMIN_CONSOLE_REDIRECT = ISSUER + "/console/callback"
METHODS = ("get", "post", "put", "patch", "delete")
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MEDIA_PROBLEM = "application/problem+json"
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
ACCEPT_JSON = {"Accept": "application/json"}


def now() -> datetime:
    return datetime.now(UTC)


def iso(**delta: float) -> str:
    return (now() + timedelta(**delta)).isoformat()
# ---- the world: the app, its parties and their tokens ---------------------------------------------


@dataclass
class Base:
    """A valid request of an operation, before a case spoils one part of it."""

    path: dict[str, str] = field(default_factory=dict)
    body: Any = MISSING
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    caller: str | None = None  # overrides the plan's caller (a fresh session, a fresh registration token)
    encode: Callable[[Any], tuple[bytes, str]] | None = None  # how the body goes on the wire (default JSON)


class World:
    """The full app (quaygate.app.create_app) on PostgreSQL and Redis, with a party of every kind, their
    real tokens (client credentials, the code flow with PKCE for persons) and helpers that make the
    state an operation acts on (a right held by the forwarder, a pending transfer ...) over HTTP."""

    def __init__(self, app: Any, http: TestClient, container: Container, register: Register) -> None:
        self.app, self.http, self.container = app, http, container
        self.engine: sa.Engine = container.engine
        self.counter = itertools.count(100_000)  # container serials (6 digits), badge numbers
        self.shared: dict[str, Base] = {}
        self.callers: dict[str, dict[str, str]] = {}
        self.register = register

    # -- parties ---------------------------------------------------------------------------------

    def n(self) -> int:
        return next(self.counter)

    def org(self, kind: str, terminal: str | None = None) -> uuid.UUID:
        return add_org(self.engine, kind, terminal)

    def machine(self, role: str, org: uuid.UUID, terminal: str | None = None) -> tuple[str, str]:
        client_id, secret = create_client(self.engine, name=f"fuzz {role}", role=role, organisation_id=org,
                                          terminal_code=terminal, now=now())
        assert secret
        return client_id, secret

    def token(self, client_id: str, secret: str, scope: str | None = None) -> str:
        data = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
        r = self.http.post("/oauth2/token", data=data, auth=(client_id, secret))
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def person(self, employer: uuid.UUID | None = None, given: str = "Jan") -> uuid.UUID:
        """A person linked to a national register number (an unlinked person never screens clear)."""
        pid = uuid.uuid4()
        national = keyed_hash(self.container.settings.pepper_bytes(), f"fuzz-{pid}")
        with self.engine.begin() as conn:
            conn.execute(persons.insert().values(id=pid, given_name=given, family_name="Peeters",
                                                 employer_organisation_id=employer, national_id_hash=national,
                                                 created_at=now()))
        return pid

    def badge(self, person: uuid.UUID, *, activated: bool = False, employer: uuid.UUID | None = None) -> uuid.UUID:
        badge_id, n = uuid.uuid4(), self.n()
        with self.engine.begin() as conn:
            conn.execute(badges.insert().values(
                id=badge_id, person_id=person, scheme="alfapass", number=with_check(Scheme.ALFAPASS, n % 100_000),
                card_uid=f"04{n:012X}", employer_organisation_id=employer, status="active",
                valid_from=now() - timedelta(days=1), valid_until=now() + timedelta(days=300), created_at=now()))
            if activated:
                conn.execute(badge_activations.insert().values(id=uuid.uuid4(), badge_id=badge_id,
                                                               terminal_code=TERMINAL, activated_by="fuzz",
                                                               activated_at=now()))
        return badge_id

    def session(self, person: uuid.UUID) -> dict[str, str]:
        """A login session (passkey) of ``person``: its cookie, and our Origin (the CSRF guard)."""
        cookie, _ = sessions_for(self.app).create(person, acr=assurance.ACR_PASSKEY, amr=assurance.AMR_PASSKEY,
                                                 now=now())
        return {"Cookie": f"{self.container.settings.session_cookie}={cookie}", "Origin": ORIGIN}

    def passkey(self) -> str:
        """A passkey of the signed-in holder (as the registration stores one): its credential id."""
        cred = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        with self.engine.begin() as conn:
            conn.execute(webauthn_credentials.insert().values(
                credential_id=cred, person_id=self.holder, name="Phone", public_key=b"\xa5\x01\x02", sign_count=0,
                transports=["internal"], backup_eligible=False, backed_up=False, status="active",
                created_at=now()))
        return cred

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    # -- requests the helpers make (each must succeed) ---------------------------------------------

    def call(self, method: str, url: str, who: str, ok: int = 200, **kw: Any) -> Any:
        self.http.cookies.clear()
        r = self.http.request(method, url, headers={**self.callers[who], **kw.pop("headers", {})}, **kw)
        assert r.status_code == ok, (method, url, r.status_code, r.text)
        return r.json() if r.content else None

    def issue(self, to: str = "fwd") -> str:
        n = self.n()
        body = {"container_number": container(n), "bill_of_lading": f"BL-{n}", "vessel_call": "VC-FUZZ",
                "terminal": TERMINAL, "release_to_organisation_id": str(self.orgs[to]),
                "valid_from": (now() - timedelta(hours=1)).isoformat(),
                "valid_until": (now() + timedelta(days=3)).isoformat()}
        return str(self.call("POST", "/api/v1/releases", "line", 201, json=body)["release"]["id"])

    def transfer(self, rid: str, by: str = "fwd", to: str = "haul") -> str:
        out = self.call("POST", f"/api/v1/releases/{rid}/transfers", by, 201,
                        json={"to_organisation_id": str(self.orgs[to])})
        return str(out["transfer"]["id"])

    def nominate(self, rid: str) -> None:
        self.call("PUT", f"/api/v1/releases/{rid}/nomination", "haul",
                  json={"driver_person_id": str(self.driver), "plate": {"text": "1-ABC-123", "country": "BE"}})

    def pickable(self) -> tuple[str, str]:
        """A right nominated to the driver, every light green: (its id, its container number)."""
        rid = self.issue("haul")
        self.nominate(rid)
        for who, light in (("customs", "customs"), ("terminal", "terminal")):
            self.call("PUT", f"/api/v1/releases/{rid}/lights/{light}", who, json={"status": "green"})
        got = self.call("GET", f"/api/v1/releases/{rid}", "line")
        return rid, str(got["container_number"])

    def verify_body(self, number: str, **over: Any) -> dict[str, Any]:
        return {"request_id": str(uuid.uuid4()), "terminal": TERMINAL, "lane": "in-3", "direction": "in",
                "mode": "check", "container": {"number": number, "confidence": 0.97},
                "plate": {"text": "1ABC123", "country": "BE", "confidence": 0.95},
                "badge": {"scheme": "alfapass", "number": self.driver_badge}, "observed_at": now().isoformat(),
                **over}

    def console_token(self, role: str) -> str:
        """A person holding ``role`` at the port authority, signed in with a passkey at the admin console."""
        flow = Flow(self.app, self.http, self.container)
        pid = flow.person(given="Sofie", family="Wouters")
        flow.member(pid, self.orgs["port"], role)
        flow.login(pid, acr=assurance.ACR_PASSKEY)
        pkce = Pkce()
        code = flow.code(flow.authorize(self.admin_console, pkce=pkce, redirect_uri=ADMIN_CONSOLE_REDIRECT,
                                        scope="openid profile admin badges:office"))
        r = flow.exchange(self.admin_console, code, pkce.verifier, redirect_uri=ADMIN_CONSOLE_REDIRECT)
        assert r.status_code == 200, r.text
        self.http.cookies.clear()
        return str(r.json()["access_token"])

    def driver_tokens(self, person: uuid.UUID) -> dict[str, Any]:
        """The driver app's tokens for ``person``, by the code flow with PKCE."""
        flow = Flow(self.app, self.http, self.container)
        tokens = flow.driver_tokens(self.driver_app, person, scope="openid profile releases:read "
                                    "nominations:respond")
        self.http.cookies.clear()
        return tokens

    def iat(self, org: uuid.UUID | None = None) -> str:
        token, _ = management_for(self.app).create_initial_access_token(
            organisation_id=org or self.orgs["line"], created_by="fuzz", ttl=None, now=now())
        return str(token)

    def registered(self) -> tuple[str, str]:
        """A client registered by RFC 7591: (client_id, its registration access token)."""
        r = self.http.post("/oauth2/register", json={"client_name": "Fuzz back end",
                                                      "grant_types": ["client_credentials"]},
                           headers=self.bearer(self.iat()))
        assert r.status_code == 201, r.text
        return str(r.json()["client_id"]), str(r.json()["registration_access_token"])

    def build(self) -> None:
        p = {k: self.org(k) for k in ("shipping_line", "release_party", "transport_operator", "customs",
                                      "port_authority")}
        self.orgs = {"line": p["shipping_line"], "fwd": p["release_party"], "haul": p["transport_operator"],
                     "haul2": self.org("transport_operator"), "customs": p["customs"],
                     "terminal": self.org("terminal", TERMINAL), "port": p["port_authority"],
                     "fuzz_terminal": self.org("terminal", FUZZ_TERMINAL)}
        self.driver = self.person(self.orgs["haul"])
        badge_id = self.badge(self.driver, activated=True, employer=self.orgs["haul"])
        with self.engine.connect() as conn:
            self.driver_badge = str(conn.execute(sa.select(badges.c.number).where(badges.c.id == badge_id)
                                                 ).scalar_one())
        self.secrets: dict[str, tuple[str, str]] = {}
        roles = {"line": "shipping_line", "fwd": "release_party", "haul": "transport_operator", "customs": "customs",
                 "terminal": "terminal_operator", "gate": "terminal_gate", "admin": "admin",
                 "minter": "shipping_line", "revoker": "shipping_line"}
        for who, role in roles.items():
            org = self.orgs[{"gate": "terminal", "admin": "port", "minter": "line", "revoker": "line"}.get(who, who)]
            self.secrets[who] = self.machine(role, org, TERMINAL if role.startswith("terminal") else None)
            self.callers[who] = self.bearer(self.token(*self.secrets[who]))
            basic = base64.b64encode(":".join(self.secrets[who]).encode()).decode()
            self.callers[f"{who}_basic"] = {"Authorization": f"Basic {basic}"}
        self.revocable = self.token(*self.secrets["revoker"])
        self.admin_console, _ = create_client(self.engine, name="admin console", role="admin_console",
                                              organisation_id=None, auth_method="none", now=now(),
                                              redirect_uris=[ADMIN_CONSOLE_REDIRECT])
        self.driver_app, _ = create_client(self.engine, name="driver app", role="driver_app", organisation_id=None,
                                           auth_method="none", now=now(), redirect_uris=[DRIVER_REDIRECT])
        console_org = self.org("release_party")
        self.console_id, console_secret = create_client(self.engine, name="console", role="console",
                                                        organisation_id=console_org, now=now(),
                                                        redirect_uris=[CONSOLE_REDIRECT])
        assert console_secret
        basic = base64.b64encode(f"{self.console_id}:{console_secret}".encode()).decode()
        self.callers["console_basic"] = {"Authorization": f"Basic {basic}"}
        self.callers["office"] = self.bearer(self.console_token("badge_office"))
        self.callers["security"] = self.bearer(self.console_token("port_security_admin"))
        self.callers["driver"] = self.bearer(str(self.driver_tokens(self.driver)["access_token"]))
        self.leaver = self.person()  # who logs out, again and again (a logout revokes his grants)
        self.leaver_id_token = str(self.driver_tokens(self.leaver)["id_token"])
        # A person with a passkey, signed in: the /account routes, the face step-up.
        self.holder = self.person()
        self.passkey()
        self.callers["session"] = self.session(self.holder)
        self.callers["origin"] = {"Origin": ORIGIN}
        self.callers["none"] = {}
        # A ban list in force (the register's key is configured): without one, screening is unavailable.
        self.call("POST", "/admin/v1/bans/feeds", "security", content=self.register.sign(snapshot(1, now(), [])),
                  headers={"Content-Type": "application/jose"})
        self.rid, self.number = self.pickable()

    # -- what a refused write must leave as it was -------------------------------------------------

    def fingerprint(self) -> Fingerprint:
        """How many rows each statement kind has written in each table so far (the ``WRITE_LOG`` triggers),
        and the audit trail's last entry."""
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(f"SELECT tbl, op, n FROM {WRITE_LOG} UNION ALL "
                                        "SELECT 'audit_log', 'LAST', coalesce(max(id), 0) FROM audit_log").all()
        writes = {(tbl, op): int(n) for tbl, op, n in rows}
        return Fingerprint(writes, writes.pop(("audit_log", "LAST")))

    def audit_after(self, fp: Fingerprint) -> list[str]:
        """The kinds of the audit entries written since ``fp``."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(audit_log.c.kind).where(audit_log.c.id > fp.audit_last)
                                     .order_by(audit_log.c.id)).scalars().all())


@dataclass(frozen=True)
class Fingerprint:
    writes: dict[tuple[str, str], int]  # (table, INSERT|UPDATE|DELETE) -> rows written so far
    audit_last: int

    def changed(self, after: Fingerprint) -> list[tuple[str, str]]:
        keys = set(self.writes) | set(after.writes)
        return sorted(k for k in keys if self.writes.get(k, 0) != after.writes.get(k, 0))


# Every row any statement inserts, updates or deletes in any table of the schema is counted here, by a
# trigger the world installs for this module (and removes): a refused request must leave the counts as
# they were. Stronger than row counts: an UPDATE (a right marked used, a code consumed) shows too.
WRITE_LOG = "fuzz_write_log"
INSTALL_WRITE_LOG = [
    f"CREATE TABLE IF NOT EXISTS {WRITE_LOG} (tbl text NOT NULL, op text NOT NULL, n bigint NOT NULL, "
    "PRIMARY KEY (tbl, op))",
    f"""CREATE OR REPLACE FUNCTION {WRITE_LOG}_count() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO {WRITE_LOG} VALUES (TG_TABLE_NAME, TG_OP, 1)
        ON CONFLICT (tbl, op) DO UPDATE SET n = {WRITE_LOG}.n + 1;
        RETURN NULL;
    END $$""",
    *(f'CREATE OR REPLACE TRIGGER {WRITE_LOG} AFTER INSERT OR UPDATE OR DELETE ON "{t.name}" '
      f"FOR EACH ROW EXECUTE FUNCTION {WRITE_LOG}_count()" for t in metadata.sorted_tables),
]
REMOVE_WRITE_LOG = [
    *(f'DROP TRIGGER IF EXISTS {WRITE_LOG} ON "{t.name}"' for t in metadata.sorted_tables),
    f"DROP FUNCTION IF EXISTS {WRITE_LOG}_count()",
    f"DROP TABLE IF EXISTS {WRITE_LOG}",
]

# A refusal may append to the audit trail (never change it) what is a record of the refusal itself
# ("identity.client.register.refused", "screening.ban.feed_refused" ...) or of a console officer's request
# ("identity.admin.enrolment_code.requested": who asked, written before the answer, identity.api.admin).
AUDITED_REFUSAL = re.compile(r"(\.|_)refused(\.|$)|^identity\.admin\.[a-z_.]+\.requested$")


@pytest.fixture(scope="module")
def fuzz_redis_url() -> Iterator[str]:
    """tests/conftest.py ``redis_url`` for a module: a Redis database of this worker's, flushed around."""
    yield from worker_redis()


@pytest.fixture(scope="module")
def world(pg_database_url: str, fuzz_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One app and one world for every case (each case makes the state it acts on)."""
    engine = make_engine(pg_database_url, pool_size=10, max_overflow=20)
    _truncate(engine)
    with engine.begin() as conn:
        for statement in INSTALL_WRITE_LOG:
            conn.exec_driver_sql(statement)
    register = Register()
    settings_kw: dict[str, Any] = {
        "var_dir": tmp_path_factory.mktemp("fuzz"), "issuer": ISSUER, "background_workers": False,
        "database_url": engine.url.render_as_string(hide_password=False), "redis_url": fuzz_redis_url,
        "gate_decision_drain": False, "face_workers": 1, "ban_register_jwk": register.public_jwk,
        # Enabled, but high: thousands of bad requests from one address must reach the routes.
        "rate_limit_per_address": 1_000_000, "rate_limit_per_client": 1_000_000,
        "login_attempts_per_address": 1_000_000, "rate_limit_secret_failures_per_address": 1_000_000,
    }
    settings = Settings(**settings_kw)
    c = Container(settings=settings, engine=engine, cache=RedisCache(fuzz_redis_url),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    app = create_app(settings, container=c)
    try:
        # scrypt at its production cost takes some 40 ms per client secret checked, and the world checks
        # thousands: its clients' secrets are hashed cheaply (the hash records its cost, so verify_secret
        # follows; nothing else changes).
        with pytest.MonkeyPatch.context() as mp, TestClient(app, raise_server_exceptions=True) as http:
            mp.setattr(clients, "_SCRYPT", {"n": 2**4, "r": 8, "p": 1})
            w = World(app, http, c, register)
            w.build()
            yield w
    finally:
        with engine.begin() as conn:
            for statement in REMOVE_WRITE_LOG:
                conn.exec_driver_sql(statement)
        _truncate(engine)
        engine.dispose()


@dataclass(frozen=True)
class Plan:
    """How to call one operation validly. ``make`` builds a valid request (and the state it acts on:
    with ``fresh``, a new right, transfer, person ... for every case that may get past validation);
    ``ok`` is what that request answers (None: not checked, for one the world cannot make valid);
    ``shape`` names body, form or query fields the document leaves open (a free-form object)."""

    caller: str | None
    make: Callable[[World, Random], Base]
    wrong: str | None = None
    ok: tuple[int, ...] | None = (200, 201, 204)
    fresh: bool = False
    shape: dict[str, Any] = field(default_factory=dict)


def _release_body(w: World, to: str = "fwd") -> dict[str, Any]:
    n = w.n()
    return {"container_number": container(n), "bill_of_lading": f"BL-{n}", "vessel_call": "VC-FUZZ",
            "terminal": TERMINAL, "release_to_organisation_id": str(w.orgs[to]), "commercial": "green",
            "valid_from": iso(hours=-1), "valid_until": iso(days=3)}


def _blocked(w: World) -> str:
    rid = w.issue()
    w.call("POST", f"/api/v1/releases/{rid}/block", "line", json={"reason": "held"})
    return rid


def _nominated(w: World) -> str:
    rid = w.issue("haul")
    w.nominate(rid)
    return rid


def _pending(w: World) -> str:
    return w.transfer(w.issue())


def _subscription(w: World) -> str:
    out = w.call("POST", "/api/v1/webhooks", "line", 201,
                 json={"url": "https://hooks.example.com/fuzz", "event_types": ["release.*"]})
    return str(out["id"])


def _enrolment_code(w: World) -> str:
    out = w.call("POST", f"/admin/v1/persons/{w.person()}/enrolment-codes", "office", 201, json={"ttl_seconds": 600})
    return str(out["code"])


def _suspended(w: World) -> str:
    pid = str(w.person())
    w.call("POST", f"/admin/v1/persons/{pid}:suspend", "security", json={"reason": "fuzz"})
    return pid


def _driver_member(w: World) -> dict[str, str]:
    """The path of a fresh person's driver membership of the haulier (no nomination of him)."""
    pid = str(w.person())
    w.call("POST", f"/admin/v1/persons/{pid}/memberships", "security",
           ok=201, json={"organisation_id": str(w.orgs["haul"]), "role": "driver"})
    return {"person_id": pid, "organisation_id": str(w.orgs["haul"]), "role": "driver"}


def _deactivated_org(w: World) -> str:
    org = str(w.org("release_party"))
    w.call("POST", f"/admin/v1/organisations/{org}:deactivate", "security", json={"reason": "fuzz"})
    return org


def _credential_doc(w: World) -> dict[str, Any]:
    """A WebAuthn credential as a browser sends it (RFC-shaped, signed by nobody)."""
    raw = base64.urlsafe_b64encode(b"\x01" * 16).decode().rstrip("=")
    client = base64.urlsafe_b64encode(json.dumps({"type": "webauthn.get", "challenge": "AAAA",
                                                   "origin": ORIGIN}).encode()).decode().rstrip("=")
    return {"id": raw, "rawId": raw, "type": "public-key", "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": {"clientDataJSON": client,
                         "authenticatorData": "SZYN5YgOjGh0NBcPZHZgW4_krrmihjLHmVzzuoMdl2MFAAAAAQ",
                         "signature": "MEUCIQ", "userHandle": None, "attestationObject": "o2NmbXRkbm9uZQ",
                         "transports": ["internal"]}}


def _flow(w: World, path: str, body: Any = None) -> str:
    w.http.cookies.clear()
    r = w.http.post(path, json=body, headers={"Origin": ORIGIN})
    assert r.status_code == 200, r.text
    return str(r.json()["flow"])


def _signed(w: World) -> Callable[[Any], tuple[bytes, str]]:
    """A ban feed goes signed by the register (JWS compact): its payload is what the case spoils."""
    def encode(payload: Any) -> tuple[bytes, str]:
        reg = w.register
        text = render(payload).encode()
        token = jws.serialize_compact({"alg": reg.alg}, text, reg.key, registry=_FEED_REGISTRY)
        return token.encode(), "application/jose"
    return encode


_FEED_REGISTRY = jws.JWSRegistry(algorithms=["ES256"])


def _feed(w: World, r: Random) -> Base:
    payload = snapshot(w.n(), now(), [ban(national_number(r.randrange(1000)), f"REF-{w.n()}", start=now())])
    return Base(body=payload, encode=_signed(w))


def _authorize_params(w: World) -> dict[str, str]:
    pkce = Pkce()
    return {"response_type": "code", "client_id": w.driver_app, "redirect_uri": DRIVER_REDIRECT,
            "scope": "openid releases:read", "state": "st-fuzz", "nonce": "n-fuzz", "code_challenge": pkce.challenge,
            "code_challenge_method": "S256", "max_age": "3600", "prompt": "none"}


def _person_body() -> dict[str, Any]:
    return {"given_name": "An", "family_name": "Claes", "employer_organisation_id": None, "locale": "nl"}


def _badge_body(w: World) -> dict[str, Any]:
    return {"person_id": str(w.person()), "scheme": "alfapass", "number": with_check(Scheme.ALFAPASS, w.n() % 100_000),
            "card_uid": "04A1B2C3D4E5F6", "employer_organisation_id": None, "reason": "issued",
            "valid_from": iso(days=-1), "valid_until": iso(days=700)}


_REGISTER_SHAPE = {"client_name": "x", "grant_types": ["client_credentials"], "contacts": ["ops@line.example"],
                   "quaygate_role": "shipping_line", "token_endpoint_auth_method": "client_secret_basic",
                   "scope": "releases:read", "jwks": {"keys": [{"kty": "EC"}]}, "redirect_uris": ["https://x"],
                   "response_types": ["code"], "default_acr_values": ["x"], "client_uri": "https://x",
                   "organisation_id": "x", "terminal_code": "x", "id_token_signed_response_alg": "RS256"}
_AUTHORIZE_SHAPE = {k: "x" for k in ("response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
                                     "code_challenge", "code_challenge_method", "max_age", "prompt", "acr_values",
                                     "request_uri", "request", "claims", "login_hint", "ui_locales", "dpop_jkt")}
_LOGOUT_SHAPE = {k: "x" for k in ("id_token_hint", "post_logout_redirect_uri", "client_id", "state",
                                  "logout_hint", "ui_locales")}
_FEED_SHAPE = {"register": "x", "kind": "x", "sequence": 1, "issued_at": "x",
               "bans": [{"national_number": "x", "scope": "x", "from": "x", "until": "x", "reference": "x"}]}
_CREDENTIAL_SHAPE = {"credential": {"id": "x", "rawId": "x", "type": "x",
                                    "response": {"clientDataJSON": "x", "authenticatorData": "x", "signature": "x",
                                                 "userHandle": "x", "attestationObject": "x"}}}

PLANS: dict[str, Plan] = {
    # -- the release API --------------------------------------------------------------------------
    "listReleases": Plan("line", lambda w, r: Base(query={
        "state": "active", "container_number": w.number, "vessel_call": "VC-FUZZ", "terminal": TERMINAL,
        "bill_of_lading": "BL-1", "limit": "10"}), wrong="gate"),
    "issueRelease": Plan("line", lambda w, r: Base(body=_release_body(w)), wrong="fwd", fresh=True),
    "issueReleaseBatch": Plan("line", lambda w, r: Base(body={"releases": [_release_body(w), _release_body(w)]}),
                              wrong="fwd", fresh=True),
    "getRelease": Plan("line", lambda w, r: Base(path={"release_id": w.rid}), wrong="gate"),
    "listReleaseEvents": Plan("line", lambda w, r: Base(path={"release_id": w.rid}), wrong="gate"),
    "updateRelease": Plan("line", lambda w, r: Base(path={"release_id": w.issue()}, body={
        "bill_of_lading": "BL-NEW", "valid_from": iso(hours=-2), "valid_until": iso(days=2)}), wrong="fwd",
        fresh=True),
    "blockRelease": Plan("line", lambda w, r: Base(path={"release_id": w.issue()}, body={"reason": "held"}),
                         wrong="fwd", fresh=True),
    "unblockRelease": Plan("line", lambda w, r: Base(path={"release_id": _blocked(w)},
                                                     body={"reason": "lifted"}), wrong="fwd", fresh=True),
    "revokeRelease": Plan("line", lambda w, r: Base(path={"release_id": w.issue()}, body={"reason": "fraud"}),
                          wrong="fwd", fresh=True),
    "deleteRelease": Plan("line", lambda w, r: Base(path={"release_id": w.issue()}, body={"reason": "error"}),
                          wrong="fwd", fresh=True),
    "setLight": Plan("customs", lambda w, r: Base(path={"release_id": w.issue(), "light": "customs"},
                                                  # a green: a stale If-Match refuses it (a hold goes through)
                                                  body={"status": "green", "reason": "released"}), wrong="fwd",
                     fresh=True),
    "nominateDriver": Plan("haul", lambda w, r: Base(path={"release_id": w.issue("haul")}, body={
        "driver_person_id": str(w.driver), "plate": {"text": "1-ABC-123", "country": "BE"},
        "trailer_plate": {"text": "Q-AAA-111", "country": "BE"}, "slot": {"start": iso(hours=1), "end": iso(hours=3)},
        "badge": {"scheme": "alfapass", "number": w.driver_badge, "card_uid": None}}), wrong="fwd", fresh=True),
    "acceptNomination": Plan("driver", lambda w, r: Base(path={"release_id": _nominated(w)}), wrong="haul",
                             fresh=True),
    "refuseNomination": Plan("driver", lambda w, r: Base(path={"release_id": _nominated(w)},
                                                         body={"reason": "unavailable"}), wrong="haul", fresh=True),
    "transferRelease": Plan("fwd", lambda w, r: Base(path={"release_id": w.issue()},
                                                     body={"to_organisation_id": str(w.orgs["haul"])}),
                            wrong="line", ok=(201,), fresh=True),
    "acceptTransfer": Plan("haul", lambda w, r: Base(path={"transfer_id": _pending(w)}), wrong="fwd", fresh=True),
    "declineTransfer": Plan("haul", lambda w, r: Base(path={"transfer_id": _pending(w)}, body={"reason": "no"}),
                            wrong="fwd", fresh=True),
    "withdrawTransfer": Plan("fwd", lambda w, r: Base(path={"transfer_id": _pending(w)}), wrong="haul", fresh=True),
    # -- webhooks ---------------------------------------------------------------------------------
    "listWebhookSubscriptions": Plan("line", lambda w, r: Base(), wrong="gate"),
    "createWebhookSubscription": Plan("line", lambda w, r: Base(body={
        "url": f"https://hooks.example.com/q{w.n()}", "event_types": ["release.*"]}),
        wrong="gate", fresh=True),
    "listWebhookDeadLetters": Plan("line", lambda w, r: Base(), wrong="gate"),
    # No dead letter exists in the world: the valid request is a 404 (its id is unknown).
    "redeliverWebhook": Plan("line", lambda w, r: Base(path={"delivery_id": str(uuid.uuid4())}), wrong="gate",
                             ok=(404,)),
    "deleteWebhookSubscription": Plan("line", lambda w, r: Base(path={"subscription_id": _subscription(w)}),
                                      wrong="gate", fresh=True),
    "rotateWebhookSecret": Plan("line", lambda w, r: Base(path={"subscription_id": _subscription(w)}),
                                wrong="gate", fresh=True),
    # -- the gate ---------------------------------------------------------------------------------
    # Fresh: a new request_id each (the same id with another body is a 409 request_id_reused).
    "verifyGate": Plan("gate", lambda w, r: Base(body=w.verify_body(w.number, face={"image": None, "match": {
        "matched": True, "score": 0.9}})), wrong="terminal", fresh=True),
    "overrideGate": Plan("gate", lambda w, r: Base(body={"decision_id": _refused_decision(w),
                                                         "reason": "plate read wrong, checked at the desk"}),
                         wrong="terminal", ok=(201,), fresh=True),
    "listGatePasses": Plan("gate", lambda w, r: Base(), wrong="line"),
    "reconcileOfflineGateDecision": Plan("gate", lambda w, r: Base(body={
        "request": w.verify_body(w.number, mode="commit"), "decision": "deny", "reasons": ["plate_mismatch"],
        "release_id": w.rid, "basis": "no_pass", "decided_at": iso(minutes=-5), "ban_list_age_seconds": 60,
        "gate_pass": None, "face": {"kind": "none"}}), wrong="terminal", fresh=True),
    # -- the admin API ----------------------------------------------------------------------------
    "admin_search_audit": Plan("security", lambda w, r: Base(query={
        "actor": "fuzz", "subject": "x", "action": "identity.admin", "since": iso(days=-1), "until": iso(days=1),
        "before": "1000000", "limit": "10"}), wrong="office"),
    "admin_find_badges": Plan("office", lambda w, r: Base(query={"number": w.driver_badge}), wrong="line"),
    "admin_issue_badge": Plan("office", lambda w, r: Base(body=_badge_body(w)), wrong="line", ok=(201,), fresh=True),
    "admin_get_badge": Plan("office", lambda w, r: Base(path={"badge_id": str(w.badge(w.person()))}), wrong="line"),
    "admin_activate_badge": Plan("office", lambda w, r: Base(path={"badge_id": str(w.badge(w.person()))},
                                                             body={"terminal": TERMINAL}),
                                 wrong="line", ok=(201,), fresh=True),
    "admin_withdraw_badge_activation": Plan("office", lambda w, r: Base(
        path={"badge_id": str(w.badge(w.person(), activated=True)), "terminal": TERMINAL},
        body={"reason": "left the company"}), wrong="line", fresh=True),
    "admin_renew_badge": Plan("office", lambda w, r: Base(path={"badge_id": str(w.badge(w.person()))},
                                                          body={"valid_until": iso(days=500), "reason": "renewal"}),
                              wrong="line", fresh=True),
    "admin_change_badge_status": Plan("office", lambda w, r: Base(path={"badge_id": str(w.badge(w.person()))},
                                                                  body={"status": "blocked", "reason": "stolen"}),
                                      wrong="line", fresh=True),
    "admin_list_ban_alerts": Plan("security", lambda w, r: Base(query={"limit": "10"}), wrong="line"),
    "admin_import_ban_feed": Plan("security", _feed, wrong="line", fresh=True, shape=_FEED_SHAPE),
    "admin_list_clients": Plan("security", lambda w, r: Base(query={"limit": "10", "after": "a"}), wrong="office"),
    "admin_register_client": Plan("security", lambda w, r: Base(body={
        "client_name": f"Fuzz {w.n()}", "quaygate_role": "shipping_line", "organisation_id": str(w.orgs["line"]),
        "token_endpoint_auth_method": "client_secret_basic", "grant_types": ["client_credentials"],
        "scope": "releases:read", "contacts": ["ops@line.example"]}), wrong="office", ok=(201,), fresh=True,
        shape=_REGISTER_SHAPE),
    "admin_deactivate_client": Plan("security", lambda w, r: Base(path={
        "client_id": w.machine("shipping_line", w.orgs["line"])[0]}), wrong="office", fresh=True),
    "admin_rotate_client_secret": Plan("security", lambda w, r: Base(path={
        "client_id": w.machine("shipping_line", w.orgs["line"])[0]}, body={"revoke_tokens": r.random() < 0.5}),
        wrong="office", fresh=True),
    "admin_create_initial_access_token": Plan("admin", lambda w, r: Base(body={
        "organisation_id": str(w.orgs["line"]), "ttl": 3600}), wrong="security", ok=(201,), fresh=True),
    "admin_list_organisations": Plan("security", lambda w, r: Base(query={"q": "ship", "limit": "10",
                                                                          "offset": "0"}), wrong="office"),
    "admin_create_organisation": Plan("security", lambda w, r: Base(body={
        "name": f"Fuzz Forwarding {w.n()}", "kind": "release_party", "eori": f"BE{w.n():010d}",
        "vat": f"BE0{w.n():09d}", "terminal_code": None}), wrong="office", ok=(201,), fresh=True),
    "admin_deactivate_organisation": Plan("security", lambda w, r: Base(
        path={"organisation_id": str(w.org("release_party"))}, body={"reason": "ceased trading"}),
        wrong="office", fresh=True),
    "admin_reactivate_organisation": Plan("security", lambda w, r: Base(
        path={"organisation_id": _deactivated_org(w)}, body={"reason": "back"}), wrong="office", fresh=True),
    "admin_search_persons": Plan("office", lambda w, r: Base(query={"q": "peeters", "limit": "5"}), wrong="line"),
    "admin_create_person": Plan("office", lambda w, r: Base(body=_person_body()), wrong="line", ok=(201,),
                                fresh=True),
    "admin_get_person": Plan("office", lambda w, r: Base(path={"person_id": str(w.driver)}), wrong="line"),
    "admin_list_person_badges": Plan("office", lambda w, r: Base(path={"person_id": str(w.driver)}), wrong="line"),
    "issueEnrolmentCode": Plan("office", lambda w, r: Base(path={"person_id": str(w.person())},
                                                           body={"ttl_seconds": 3600}), wrong="line", ok=(201,),
                               fresh=True),
    # The world's persons have no face: read, it is not enrolled; withdrawn, a 409 face_not_enrolled.
    "admin_get_face": Plan("office", lambda w, r: Base(path={"person_id": str(w.driver)}), wrong="line"),
    "admin_withdraw_face": Plan("office", lambda w, r: Base(path={"person_id": str(w.person())}), wrong="line",
                                ok=(409,)),
    # A 1-pixel PNG holds no face: the valid request is refused as such (422), after decoding.
    "admin_enrol_face": Plan("office", lambda w, r: Base(path={"person_id": str(w.person())}, body={
        "image": PNG_1PX, "source": "id_photo"}), wrong="line", ok=None, fresh=True),
    "admin_add_membership": Plan("security", lambda w, r: Base(path={"person_id": str(w.person())}, body={
        "organisation_id": str(w.orgs["haul"]), "role": "driver"}), wrong="line", ok=(201,), fresh=True),
    "admin_remove_membership": Plan("security", lambda w, r: Base(path=_driver_member(w)), wrong="line",
                                    fresh=True),
    "admin_suspend_person": Plan("security", lambda w, r: Base(path={"person_id": str(w.person())},
                                                               body={"reason": "investigation"}),
                                 wrong="office", fresh=True),
    "admin_reinstate_person": Plan("security", lambda w, r: Base(path={"person_id": _suspended(w)},
                                                                 body={"reason": "cleared"}),
                                   wrong="office", fresh=True),
    "admin_get_gate_policy": Plan("security", lambda w, r: Base(path={"code": FUZZ_TERMINAL}), wrong="line"),
    "admin_set_gate_policy": Plan("security", lambda w, r: Base(path={"code": FUZZ_TERMINAL}, body={
        "face_required": False, "container_min_confidence": 0.7, "badge_chip_required": False}), wrong="office"),
    # -- the identity provider --------------------------------------------------------------------
    "identity_oauth_metadata": Plan(None, lambda w, r: Base()),
    "identity_discovery": Plan(None, lambda w, r: Base()),
    "identity_jwks": Plan(None, lambda w, r: Base()),
    "brokerJwks": Plan(None, lambda w, r: Base()),
    "brokerProviders": Plan(None, lambda w, r: Base()),
    "healthz": Plan(None, lambda w, r: Base()),
    "readyz": Plan(None, lambda w, r: Base()),
    # No upstream provider is configured in the world: both broker routes answer 404 to any name.
    # Browser routes that negotiate: problem JSON for a client that asks for JSON (as here), an HTML page
    # otherwise (the ``header:Accept:any`` cases).
    "brokerStart": Plan(None, lambda w, r: Base(path={"name": "itsme"}, query={"return_to": "/app/"},
                                                headers=ACCEPT_JSON), ok=(404,)),
    "brokerCallback": Plan(None, lambda w, r: Base(path={"name": "itsme"}, query={"code": "c", "state": "s"},
                                                   headers=ACCEPT_JSON),
                           ok=(404,), shape={"code": "x", "state": "x", "error": "x", "iss": "x"}),
    "identity_authorize": Plan("session", lambda w, r: Base(query=_authorize_params(w), caller="session"),
                               ok=(302,), shape=_AUTHORIZE_SHAPE),
    "identity_authorize_post": Plan("session", lambda w, r: Base(body=_authorize_params(w), encode=form),
                                    ok=(302,), shape=_AUTHORIZE_SHAPE),
    # An unknown pending request: the page says so (400), the world holds none paused.
    "identity_authorize_resume": Plan("session", lambda w, r: Base(query={"id": "p-unknown"}), ok=(400,)),
    "identity_token": Plan("minter_basic", lambda w, r: Base(body={"grant_type": "client_credentials",
                                                                   "scope": "releases:read"}, encode=form),
                           wrong="none"),
    "identity_introspect": Plan("line_basic", lambda w, r: Base(body={
        "token": w.callers["line"]["Authorization"][7:], "token_type_hint": "access_token"}, encode=form),
        wrong="none"),
    "identity_revoke": Plan("revoker_basic", lambda w, r: Base(body={"token": w.revocable,
                                                                     "token_type_hint": "access_token"},
                                                               encode=form), wrong="none"),
    "identity_par": Plan("console_basic", lambda w, r: Base(body={
        **_authorize_params(w), "client_id": w.console_id, "redirect_uri": CONSOLE_REDIRECT, "scope": "openid"},
        encode=form), wrong="none", ok=(201,), fresh=True),
    "identity_userinfo": Plan("driver", lambda w, r: Base(), wrong="line"),
    "identity_userinfo_post": Plan("driver", lambda w, r: Base(), wrong="line"),
    "identity_logout": Plan("session", lambda w, r: Base(query={
        "id_token_hint": w.leaver_id_token, "client_id": w.driver_app, "state": "bye"},
        caller=_fresh_session(w)), ok=(200, 302), fresh=True, shape=_LOGOUT_SHAPE),
    "identity_logout_post": Plan("session", lambda w, r: Base(body={
        "id_token_hint": w.leaver_id_token, "client_id": w.driver_app, "state": "bye"}, encode=form,
        caller=_fresh_session(w)), ok=(200, 302), fresh=True, shape=_LOGOUT_SHAPE),
    "identity_register_client": Plan("iat", lambda w, r: Base(body={
        "client_name": "Fuzz back end", "grant_types": ["client_credentials"], "contacts": ["ops@line.example"]},
        caller=_iat_caller(w)), wrong="line", ok=(201,), fresh=True, shape=_REGISTER_SHAPE),
    "identity_read_client": Plan("rat", lambda w, r: _rat_base(w), wrong="line"),
    "identity_update_client": Plan("rat", lambda w, r: _rat_base(w, body={
        "client_name": "Fuzz back end, renamed", "grant_types": ["client_credentials"]}, own_id=True), wrong="line",
        shape=_REGISTER_SHAPE),
    "identity_delete_client": Plan("rat", lambda w, r: _rat_base(w), wrong="line", ok=(204,), fresh=True),
    # -- passkeys, the account, the face step-up --------------------------------------------------
    "passkeyAuthenticationOptions": Plan("origin", lambda w, r: Base()),
    # Signed by no authenticator: the valid-looking assertion is refused (401), after the flow is found.
    "passkeyAuthenticationVerify": Plan("origin", lambda w, r: Base(body={
        "flow": _flow(w, "/webauthn/authentication/options"), "credential": _credential_doc(w),
        "return_to": "/account/"}), ok=None, fresh=True, shape=_CREDENTIAL_SHAPE),
    "passkeyRegistrationOptions": Plan("origin", lambda w, r: Base(body={"enrolment_code": _enrolment_code(w)}),
                                       fresh=True),
    "passkeyRegistrationVerify": Plan("origin", lambda w, r: Base(body={
        "flow": _flow(w, "/webauthn/registration/options", {"enrolment_code": _enrolment_code(w)}),
        "credential": _credential_doc(w), "name": "Phone"}), ok=None, fresh=True, shape=_CREDENTIAL_SHAPE),
    "listMyPasskeys": Plan("session", lambda w, r: Base()),
    "renameMyPasskey": Plan("session", lambda w, r: Base(path={"credential_id": w.passkey()},
                                                         body={"name": "Work phone"}), fresh=True),
    "removeMyPasskey": Plan("session", lambda w, r: Base(path={"credential_id": w.passkey()}), fresh=True),
    "endMyOtherSessions": Plan("session", lambda w, r: Base(), fresh=True),
    # No face is enrolled for the session's person, and the PNG holds none: refused, never a 5xx.
    "faceStepUp": Plan("session", lambda w, r: Base(body={"image": PNG_1PX}), ok=None),
}


def _refused_decision(w: World) -> str:
    """A gate-in refused for the plate alone (an override's case), committed: its decision id."""
    _, number = w.pickable()
    body = w.verify_body(number, mode="commit", plate={"text": "9ZZZ999", "country": "BE", "confidence": 0.99})
    out = w.call("POST", "/gate/v1/verify", "gate", json=body)
    assert out["decision"] == "deny", out
    return str(out["decision_id"])


def _fresh_session(w: World) -> str:
    """A session of the person who logs out (not the driver: a logout revokes the person's grants)."""
    key = f"session:{w.n()}"
    w.callers[key] = w.session(w.leaver)
    return key


def _iat_caller(w: World) -> str:
    """A new initial access token (single use) as the caller."""
    key = f"iat:{w.n()}"
    w.callers[key] = w.bearer(w.iat())
    return key


def _rat_base(w: World, body: Any = MISSING, *, own_id: bool = False) -> Base:
    """A new client's registration access token as the caller; RFC 7592 §3 lets every read and update
    rotate it: the test keeps the caller's token up to date (``follow_rotation``)."""
    client_id, rat = w.registered()
    key = f"rat:{client_id}"
    w.callers[key] = w.bearer(rat)
    if own_id:  # RFC 7592 §2.2: the update names the client itself
        body = {"client_id": client_id, **body}
    return Base(path={"client_id": client_id}, body=body, caller=key)




# ---- the operations of the document, and their cases ----------------------------------------------


@dataclass(frozen=True)
class Operation:
    id: str
    method: str
    path: str
    params: tuple[dict[str, Any], ...]
    body: dict[str, Any] | None  # the JSON body's schema
    form_schema: dict[str, Any] | None  # an application/x-www-form-urlencoded body's schema
    jose: bool  # an application/jose body (the ban feed)
    errors: dict[str, frozenset[str]]  # each declared 4xx/5xx status -> its media types

    @property
    def write(self) -> bool:
        return self.method in WRITES

    def declares(self, ctype: str) -> bool:
        """Whether the document declares ``ctype`` as the only kind of one of its error answers (no
        problem JSON beside it): the OAuth error form of RFC 6749 §5.2, an HTML page of a browser flow."""
        return any(ctype in types for types in self.errors.values() if MEDIA_PROBLEM not in types)


def operations(spec: dict[str, Any]) -> dict[str, Operation]:
    ops: dict[str, Operation] = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            content = (op.get("requestBody") or {}).get("content", {})
            ops[op["operationId"]] = Operation(
                id=op["operationId"], method=method.upper(), path=path,
                params=tuple(p for p in op.get("parameters", ()) if p["in"] in ("path", "query", "header")),
                body=content["application/json"].get("schema") if "application/json" in content else None,
                form_schema=content.get("application/x-www-form-urlencoded", {}).get("schema"),
                jose="application/jose" in content,
                errors={s: frozenset(r.get("content", {})) for s, r in op["responses"].items() if s[0] in "45"})
    return ops


OPERATIONS = operations(SPEC)
# Form bodies the document leaves undeclared (the authorization and logout endpoints read their form
# themselves); their fields are the plan's ``shape``.
UNDECLARED_FORMS = frozenset({"identity_authorize_post", "identity_logout_post"})
# Browser routes that answer problem JSON to a client asking for JSON, and a page otherwise.
ACCEPT_NEGOTIATED = frozenset({"brokerStart", "brokerCallback"})
AUTH_ALWAYS = ("none", "garbage")
AUTH_SAMPLED = ("huge", "latin1", "basic_scheme", "dpop_scheme", "empty_bearer", "two_tokens")


def is_form(op: Operation) -> bool:
    return op.form_schema is not None or op.id in UNDECLARED_FORMS


@dataclass(frozen=True)
class Case:
    op: str
    group: str  # valid | auth | body | field | path | query | header
    target: str  # the field, parameter or header spoilt; "-" for the whole body or the caller
    kind: str

    @property
    def id(self) -> str:
        return f"{self.op}:{self.group}:{self.target}:{self.kind}"


def fields_of(op: Operation, plan: Plan) -> Fields:
    """The body's fields: from its schema, and for a body the schema leaves open from the plan's shape."""
    found = list(SCHEMAS.fields(op.body if op.body is not None else op.form_schema))
    known = {path for path, *_ in found}
    return found + [f for f in example_fields(plan.shape) if f[0] not in known]


def query_pool(schema: dict[str, Any]) -> dict[str, Any]:
    inner, _ = SCHEMAS.shape(schema)
    if inner.get("type") == "integer":
        return QUERY_INTS
    values = dict(QUERY_STRINGS)
    if inner.get("format") in ("date-time", "uuid") or "enum" in inner:
        values.update({k: v for k, v in wrongs(inner).items() if isinstance(v, str)})
    return values


def cases_for(op: Operation) -> Iterator[Case]:
    plan = PLANS[op.id]
    yield Case(op.id, "valid", "-", "valid")
    if plan.caller not in (None, "none"):
        for kind in (*AUTH_ALWAYS, *pick(rng(f"{op.id}:auth"), AUTH_SAMPLED, 1)):
            yield Case(op.id, "auth", "-", kind)
        if plan.wrong:
            yield Case(op.id, "auth", "-", "wrong_role")
    if op.body is not None or op.jose or is_form(op):
        always, sampled = (FORM_ALWAYS, FORM_SAMPLED) if is_form(op) else (BODY_ALWAYS, BODY_SAMPLED)
        for kind in (*always, *pick(rng(f"{op.id}:body"), sampled, 4)):
            yield Case(op.id, "body", "-", kind)
        for path, schema, required, nullable in fields_of(op, plan):
            name = dotted(path)
            kinds = [] if is_form(op) else ["wrong_type"] if nullable else ["wrong_type", "null"]
            if required:
                kinds.append("missing")
            pool, always = (FORM_VALUES, FORM_CORE) if is_form(op) else (wrongs(schema), core(schema))
            kinds += [*always, *pick(rng(f"{op.id}:field:{name}"), pool, 2, besides=always)]
            yield from (Case(op.id, "field", name, kind) for kind in kinds)
    for p in op.params:
        r = rng(f"{op.id}:{p['in']}:{p['name']}")
        if p["in"] == "path":
            for kind in (*PATH_CORE, *pick(r, PATH_VALUES, 2, besides=PATH_CORE)):
                yield Case(op.id, "path", p["name"], kind)
        elif p["in"] == "query":
            yield from (Case(op.id, "query", p["name"], kind) for kind in pick(r, query_pool(p["schema"]), 4))
        elif p["name"] == "Idempotency-Key":
            for kind in ("too_long", *pick(r, ("empty", "latin1", "reused_other_body", "tab"), 1)):
                yield Case(op.id, "header", p["name"], kind)
        elif p["name"] == "If-Match":  # a write on a right: 412 or 400, nothing written (review 130)
            for kind in ("stale", *pick(r, ("unquoted", "weak", "empty", "latin1", "too_long", "tab"), 2)):
                yield Case(op.id, "header", p["name"], kind)
    if op.id in ACCEPT_NEGOTIATED:
        yield Case(op.id, "header", "Accept", "any")
    if op.method == "GET":
        declared = {p["name"] for p in op.params}
        for name in (n for n in plan.shape if n not in declared):
            yield from (Case(op.id, "query", name, kind) for kind in pick(rng(f"{op.id}:query:{name}"),
                                                                            QUERY_STRINGS, 3))
        yield Case(op.id, "query", "-", "unknown_params")


def all_cases() -> list[Case]:
    return [case for op_id in sorted(OPERATIONS) if op_id in PLANS for case in cases_for(OPERATIONS[op_id])]


# ---- a case's request -----------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    url: str
    headers: dict[str, Any]
    content: bytes | None = None
    caller: str = "none"
    before: Request | None = None  # sent first (the same Idempotency-Key), its answer checked for a 5xx only


def url_of(op: Operation, path: dict[str, str], query: dict[str, Any]) -> str:
    url = op.path
    for name, value in path.items():  # PATH_VALUES are percent-encoded already
        encoded = value if "%" in value or ";" in value else urllib.parse.quote(value, safe="")
        url = url.replace("{" + name + "}", encoded)
    qs = encode_pairs(query)
    return url + ("?" + qs if qs else "")


def auth_headers(w: World, plan: Plan, caller: str, kind: str) -> dict[str, Any]:
    """The credentials of an ``auth`` case: none, garbage, another role's, or a mangled form of the caller's."""
    good = dict(w.callers[caller])
    if kind == "none":
        return {}
    if kind == "wrong_role":
        return dict(w.callers[plan.wrong or "none"])
    if caller.startswith(("session", "origin")):  # a cookie and our Origin (the CSRF guard), no token
        cookie = {"Cookie": f"{w.container.settings.session_cookie}=not-a-session"}
        return {"garbage": {**cookie, "Origin": ORIGIN}, "huge": {**cookie, "Origin": "https://" + "a" * 10_000},
                "latin1": {"Origin": b"http://\xe9vil"}, "basic_scheme": {**good, "Origin": "https://evil.example"},
                "dpop_scheme": {**good, "Origin": "null"}, "empty_bearer": {**good, "Origin": ""},
                "two_tokens": {**good, "Origin": ORIGIN + ", https://evil.example"}}[kind]
    token = good.get("Authorization", "Bearer x").partition(" ")[2]
    return {"garbage": {"Authorization": "Bearer not.a.token"},
            "huge": {"Authorization": "Bearer " + "a" * 100_000},
            "latin1": {"Authorization": b"Bearer \xe9\xff\xfe"},
            "basic_scheme": {"Authorization": "Basic " + base64.b64encode(b"\x00:\xff").decode()},
            "dpop_scheme": {"Authorization": f"DPoP {token}"},  # a bearer token sent as DPoP, no proof
            "empty_bearer": {"Authorization": "Bearer "},
            "two_tokens": {"Authorization": f"Bearer {token} {token}"}}[kind]


def field_value(op: Operation, schema: dict[str, Any], kind: str, r: Random) -> Any:
    if kind == "missing":
        return MISSING
    if kind == "null":
        return None
    if kind == "wrong_type":
        return r.choice(wrong_types(schema))
    return (FORM_VALUES if is_form(op) else wrongs(schema))[kind]


def build(w: World, op: Operation, plan: Plan, case: Case) -> Request:
    r = rng(case.id)
    if plan.fresh and case.group in ("valid", "field", "header"):  # may get past validation: its own state
        base = plan.make(w, r)
    else:
        if op.id not in w.shared:
            w.shared[op.id] = plan.make(w, rng(op.id))
        base = w.shared[op.id]
    caller = base.caller or plan.caller or "none"
    encode = base.encode or json_body
    headers = dict(w.callers[caller]) if case.group != "auth" else auth_headers(w, plan, caller, case.kind)
    headers.update(base.headers)
    path, query, body = dict(base.path), dict(base.query), base.body
    content = None
    if body is not MISSING:
        content, headers["Content-Type"] = encode(body)
    before = None
    if case.group == "body":
        content, ctype = body_variant(case.kind, body if body is not MISSING else {}, encode, fields_of(op, plan), r)
        headers.pop("Content-Type", None)
        headers.update(ctype)
    elif case.group == "field":
        spoilt, schema = next((p, s) for p, s, *_ in fields_of(op, plan) if dotted(p) == case.target)
        content, _ = encode(put(body if body is not MISSING else {}, spoilt, field_value(op, schema, case.kind, r)))
    elif case.group == "path":
        path[case.target] = str(uuid.UUID(int=r.getrandbits(128), version=4)) if case.kind == "unknown" else \
            PATH_VALUES[case.kind]
    elif case.group == "query" and case.target == "-":
        query.update({"fuzz": Raw("%00"), "limit": "-1", "__proto__": "x", "x" * 1000: "y"})
    elif case.group == "query":
        schema = next((p["schema"] for p in op.params if p["name"] == case.target), None)
        query[case.target] = (query_pool(schema) if schema else QUERY_STRINGS)[case.kind]
    elif case.group == "header":
        headers[case.target] = {"too_long": "k" * 256, "empty": "", "latin1": b"\xe9\xff", "tab": "a\tb",
                                "reused_other_body": f"fuzz-{w.n()}", "any": "*/*", "stale": '"999999"',
                                "unquoted": "0", "weak": 'W/"0"'}[case.kind]
        if case.kind == "reused_other_body":  # the key first with the valid body, then with another
            before = Request(op.method, url_of(op, path, query), dict(headers), content, caller)
            fields = fields_of(op, plan)
            if fields and body is not MISSING:
                content, _ = encode(put(body, fields[0][0], "x"))
    return Request(op.method, url_of(op, path, query), headers, content, caller, before)


# ---- the checks -----------------------------------------------------------------------------------


def send(w: World, req: Request) -> Any:
    """The answer; the case fails with our frames of the traceback when the app raised (a 500)."""
    w.http.cookies.clear()  # a cookie an answer set is not sent with the next case
    try:
        return w.http.request(req.method, req.url, headers=req.headers, content=req.content, follow_redirects=False)
    except httpx.HTTPError:  # the test client refused to send it: a fault of this test
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the app raised is a 500 in production
        pytest.fail(f"the server raised on {req.method} {req.url[:200]}:\n{raised(exc)}", pytrace=False)
    finally:
        w.http.cookies.clear()


def raised(exc: BaseException) -> str:
    """What the server raised: our own frames of each exception of the chain (the first raised first)."""
    root = Path(__file__).resolve().parent.parent
    chain: list[BaseException] = []
    at: BaseException | None = exc
    while at is not None and at not in chain:
        chain.append(at)
        at = at.__cause__ or at.__context__
    lines = []
    for e in reversed(chain):
        for frame in traceback.extract_tb(e.__traceback__):
            path = Path(frame.filename)
            if path.is_relative_to(root) and not {".venv", "tests"} & set(path.relative_to(root).parts):
                lines.append(f"  {path.relative_to(root)}:{frame.lineno} in {frame.name}: {frame.line}")
        lines.append(f"{type(e).__module__}.{type(e).__qualname__}: {str(e)[:300]}")
    return "\n".join(dict.fromkeys(lines))


def follow_rotation(w: World, req: Request, resp: Any) -> None:
    """RFC 7592 §3: an answer may carry the client's new registration access token; the old one is dead."""
    if req.caller.startswith("rat:") and resp.status_code == 200:
        w.callers[req.caller] = w.bearer(str(resp.json()["registration_access_token"]))


def check_answer(op: Operation, req: Request, resp: Any) -> None:
    where = f"{req.method} {req.url[:200]} -> {resp.status_code}: {resp.text[:300]!r}"
    assert resp.status_code < 500, where
    if resp.status_code < 400:
        return
    ctype = resp.headers.get("content-type", "").split(";")[0].strip()
    if ctype == MEDIA_PROBLEM:  # RFC 9457 §3.1
        doc = resp.json()
        assert isinstance(doc, dict), where
        assert isinstance(doc.get("type"), str) and doc["type"], where
        assert isinstance(doc.get("title"), str) and doc["title"], where
        assert doc.get("status") == resp.status_code, where
        return
    assert op.declares(ctype), f"not problem JSON ({ctype or 'no content type'}): {where}"
    if ctype == "application/json":  # RFC 6749 §5.2
        doc = resp.json()
        assert isinstance(doc, dict) and isinstance(doc.get("error"), str), where


def check_nothing_written(w: World, before: Fingerprint, req: Request, resp: Any) -> None:
    changed = before.changed(w.fingerprint())
    where = f"{req.method} {req.url[:200]} -> {resp.text[:300]!r}"
    if ("audit_log", "INSERT") in changed:
        done = [k for k in w.audit_after(before) if not AUDITED_REFUSAL.search(k)]
        assert not done, f"refused ({resp.status_code}) yet audited as done: {done}: {where}"
        changed.remove(("audit_log", "INSERT"))
    assert not changed, f"refused ({resp.status_code}) yet rows were written: {changed}: {where}"


def code_of(resp: Any) -> str | None:
    try:
        doc = resp.json()
    except ValueError:
        return None
    return (doc.get("code") or doc.get("error")) if isinstance(doc, dict) else None


FUZZ_LOG = os.environ.get("QUAYGATE_FUZZ_LOG")


# Cases the service is known to fail: case id -> the finding. Strict: once fixed, the case passes and the run
# fails until its line here is removed.
KNOWN: dict[str, str] = {}


def _params() -> list[Any]:
    return [pytest.param(case, id=case.id, marks=pytest.mark.xfail(strict=True, reason=KNOWN[case.id]))
            if case.id in KNOWN else pytest.param(case, id=case.id) for case in all_cases()]


@pytest.mark.parametrize("case", _params())
def test_bad_input_gets_a_clear_refusal_and_changes_nothing(world: World, case: Case) -> None:
    started = time.perf_counter()
    op, plan = OPERATIONS[case.op], PLANS[case.op]
    req = build(world, op, plan, case)
    if req.before is not None:
        check_answer(op, req.before, send(world, req.before))
    before = world.fingerprint() if op.write else None
    resp = send(world, req)
    follow_rotation(world, req, resp)
    if FUZZ_LOG:
        with open(FUZZ_LOG, "a") as log:
            log.write(json.dumps({"case": case.id, "status": resp.status_code, "code": code_of(resp),
                                  "seconds": round(time.perf_counter() - started, 4)}) + "\n")
    check_answer(op, req, resp)
    if case.group == "valid" and plan.ok is not None:
        assert resp.status_code in plan.ok, f"the valid request did not pass: {resp.status_code} {resp.text[:300]}"
    if before is not None and resp.status_code >= 400:
        check_nothing_written(world, before, req, resp)


def test_every_operation_of_the_app_is_fuzzed() -> None:
    """A new operation gets a plan (its caller and a valid request), or this fails."""
    served = {op["operationId"] for item in generate()["paths"].values() for m, op in item.items() if m in METHODS}
    assert served == set(OPERATIONS), "openapi/openapi.json drifted from the app: run `make openapi`"
    assert set(PLANS) == served, sorted(set(PLANS) ^ served)
    assert len({case.id for case in all_cases()}) == len(all_cases()), "two cases share a name"

"""A terminal's gate policy through the admin API and the CLI (issue 5), on SQLite and PostgreSQL (+ Redis):
a change is seen by the very next verify, only port security (or an admin client) may change it, a bad
value or an unknown field is refused with a problem and changes nothing, a stale If-Match is refused,
every change is audited with who, when, old and new, and two admins racing lose no change."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from identity.bootstrap import create_client
from quaygate.app import create_app
from quaygate.cache import MemoryCache, RedisCache
from quaygate.cli import main as cli
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.migrate import upgrade
from quaygate.schema import audit_log, organisations, terminal_policies
from quaygate.settings import Settings
from release_service.adapters.sqla.gate_policy import SqlTerminalRegistry
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain.gate import TerminalPolicy
from release_service.services import gate_policy as service

from .factories import TERMINAL
from .test_admin_console import _console, _officer, _token
from .test_gate_verify import Gate
from .test_identity_code_flow_support import Flow
from .test_identity_support import ISSUER, add_org

PATH = f"/admin/v1/terminals/{TERMINAL}/gate-policy"


class Env(Gate):
    def __init__(self, http: TestClient, engine: sa.Engine, container: Container) -> None:
        super().__init__(http, engine)
        self.flow = Flow(http.app, http, container)  # type: ignore[arg-type]
        client_id, secret = create_client(engine, name="security system", role="admin",
                                          organisation_id=add_org(engine, "port_authority"), now=datetime.now(UTC))
        r = http.post("/oauth2/token", data={"grant_type": "client_credentials", "scope": "admin"},
                      auth=(client_id, secret or ""))
        assert r.status_code == 200, r.text
        self.admin = {"Authorization": f"Bearer {r.json()['access_token']}"}

    def officer(self, *roles: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {_token(self.flow, _console(self.flow), _officer(self.flow, *roles))}"}

    def put(self, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self.http.put(PATH, json=body, headers=headers if headers is not None else self.admin, **kw)

    def stored(self) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(terminal_policies.c.policy)).scalars().all()

    def audits(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(audit_log.c.actor, audit_log.c.subject, audit_log.c.data)
                                     .where(audit_log.c.kind == "release.gate_policy.changed")
                                     .order_by(audit_log.c.id)).all())


def _serve(engine: sa.Engine, tmp_path: Path, redis_url: str | None = None) -> Iterator[Env]:
    settings = Settings(var_dir=tmp_path, issuer=ISSUER, background_workers=False, redis_url=redis_url,
                        database_url=str(engine.url.render_as_string(hide_password=False)))
    c = Container(settings=settings, engine=engine, cache=RedisCache(redis_url) if redis_url else MemoryCache(),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    with TestClient(create_app(settings, container=c)) as http:
        yield Env(http, engine, c)


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Env]:
    yield from _serve(engine, tmp_path)


@pytest.fixture
def redis_env(pg_engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[Env]:
    yield from _serve(pg_engine, tmp_path, redis_url)


def _check(env: Env) -> dict[str, Any]:
    r = env.verify(env.body(1))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


def _seen_by_the_next_verify(env: Env) -> None:
    env.pickable(1)
    assert _check(env)["decision"] == "allow"
    assert _check(env)["decision"] == "allow"  # and now cached, where there is a cache
    r = env.put({"face_required": True})
    assert r.status_code == 200, r.text
    assert r.json()["changed"] == ["face_required"] and r.json()["policy"]["face_required"] is True
    got = _check(env)
    assert (got["decision"], got["reasons"]) == ("review", ["face_required"])
    assert env.put({"face_required": False}).status_code == 200
    assert _check(env)["decision"] == "allow"


def test_a_change_through_the_route_is_seen_by_the_very_next_verify(env: Env) -> None:
    _seen_by_the_next_verify(env)


@pytest.mark.postgres
def test_with_the_redis_cache_too(redis_env: Env) -> None:
    _seen_by_the_next_verify(redis_env)


def test_show_change_and_audit(env: Env) -> None:
    r = env.http.get(PATH, headers=env.admin)
    assert r.status_code == 200, r.text
    shown = r.json()
    assert shown["policy"] == service.as_dict(TerminalPolicy()) and shown["defaults"] is True
    assert set(shown["policy"]) == {f.name for f in service.FIELDS}  # every field, read from the dataclass
    assert r.headers["etag"] == shown["etag"]
    r = env.put({"screening_unavailable": "deny", "plate_min_confidence": 0.9, "plate_max_lookalikes": 0})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["changed"]) == ["plate_max_lookalikes", "plate_min_confidence", "screening_unavailable"]
    after = env.http.get(PATH, headers=env.admin).json()
    # The fields not given kept their value (never reset to a default).
    assert after["policy"] == {**service.as_dict(TerminalPolicy()), "screening_unavailable": "deny",
                               "plate_min_confidence": 0.9, "plate_max_lookalikes": 0}
    assert after["defaults"] is False and after["updated_by"] and after["updated_at"] and after["etag"] != shown["etag"]
    [(actor, subject, data)] = env.audits()
    assert subject == f"terminal:{TERMINAL}" and actor["client_id"]
    assert data["old"] == shown["policy"] and data["new"] == after["policy"]
    # Setting what is already there changes nothing and writes nothing.
    r = env.put({"screening_unavailable": "deny"})
    assert r.status_code == 200 and r.json()["changed"] == [] and len(env.audits()) == 1


def test_only_port_security_or_an_admin_client_changes_it(env: Env) -> None:
    _problem(env.http.get(PATH), 401, "invalid_request")
    _problem(env.put({"face_required": True}, headers={}), 401, "invalid_request")
    gate = {"Authorization": f"Bearer {env.gate_token}"}  # the terminal's own gate client: not an admin
    _problem(env.put({"face_required": True}, headers=gate), 403, "insufficient_scope")
    _problem(env.put({"face_required": True}, headers=env.as_("terminal")), 403, "insufficient_scope")
    office = env.officer("badge_office")
    assert env.http.get(PATH, headers=office).status_code == 200  # may read it
    _problem(env.put({"face_required": True}, headers=office), 403, "insufficient_role")
    _problem(env.put({"face_required": True}, headers=env.officer("driver", "org_admin")), 403, "insufficient_role")
    assert env.stored() == [] and env.audits() == []
    security = env.officer("port_security_admin")
    r = env.put({"face_required": True}, headers=security)
    assert r.status_code == 200, r.text
    [(actor, _, _)] = env.audits()
    assert actor["person_id"] and r.json()["updated_by"].startswith("person:")


@pytest.mark.parametrize(("body", "code"), [
    ({"face_min_score": 1.5}, "invalid_policy"),
    ({"face_min_score": 0}, "invalid_policy"),  # any claimed match would count (face_match_results accept)
    ({"face_min_score": 0.49}, "invalid_policy"),  # a similarity under a half: nearer another face than his
    ({"face_min_score": "0.9"}, "invalid_policy"),
    ({"face_min_score": None}, "invalid_policy"),
    ({"face_required": "yes"}, "invalid_policy"),
    ({"face_required": 1}, "invalid_policy"),
    ({"screening_unavailable": "allow"}, "invalid_policy"),
    ({"plate_max_lookalikes": 9}, "invalid_policy"),
    ({"plate_max_lookalikes": 1.5}, "invalid_policy"),
    ({"plate_max_lookalikes": True}, "invalid_policy"),
    ({"face_required": True, "container_min_confidence": -0.1}, "invalid_policy"),  # one bad: none applied
    ({"face_required": True, "pin_code": "0000"}, "unknown_policy_field"),
])
def test_a_bad_value_is_refused_and_nothing_changes(env: Env, body: dict[str, Any], code: str) -> None:
    assert env.put({"plate_min_confidence": 0.85}).status_code == 200
    before = env.http.get(PATH, headers=env.admin).json()
    _problem(env.put(body), 422, code)
    assert env.http.get(PATH, headers=env.admin).json() == before
    assert len(env.audits()) == 1


def test_a_face_min_score_stored_under_the_floor_is_read_at_it_and_the_gate_goes_on(env: Env) -> None:
    """A score is a similarity from 0 to 1: a ``face_min_score`` under 0.5 (0: any claimed match) is refused
    above; one stored before that bound is read at 0.5, stricter, and the terminal's gate still decides."""
    env.pickable(1)
    assert env.put({"face_match_results": "accept"}).status_code == 200
    with env.engine.begin() as conn:
        policy = conn.execute(sa.select(terminal_policies.c.policy)).scalar_one()
        conn.execute(terminal_policies.update().values(policy={**policy, "face_min_score": 0.0}))
    r = env.http.get(PATH, headers=env.admin)
    assert r.status_code == 200 and r.json()["policy"]["face_min_score"] == 0.5, r.text
    claimed = env.verify(env.body(1, face={"match": {"matched": True, "score": 0.3}}))
    assert claimed.status_code == 200 and claimed.json()["decision"] == "deny", claimed.text
    assert "face_mismatch" in claimed.json()["reasons"]


def test_a_body_that_is_not_an_object_is_a_problem(env: Env) -> None:
    for raw in (b"[]", b"\"deny\"", b"{", b""):
        r = env.http.put(PATH, content=raw, headers={**env.admin, "Content-Type": "application/json"})
        assert r.status_code in (400, 422) and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert env.stored() == []


def test_unknown_terminal_and_a_stale_if_match(env: Env) -> None:
    _problem(env.http.get("/admin/v1/terminals/XXANR-0000/gate-policy", headers=env.admin), 404, "unknown_terminal")
    _problem(env.http.put("/admin/v1/terminals/XXANR-0000/gate-policy", json={"face_required": True},
                          headers=env.admin), 404, "unknown_terminal")
    first = env.http.get(PATH, headers=env.admin).headers["etag"]
    assert env.put({"face_min_score": 0.9}, headers={**env.admin, "If-Match": first}).status_code == 200
    # Another admin still holds the first ETag: refused, nothing changed.
    _problem(env.put({"face_required": True}, headers={**env.admin, "If-Match": first}), 412, "policy_changed")
    assert env.http.get(PATH, headers=env.admin).json()["policy"]["face_required"] is False
    current = env.http.get(PATH, headers=env.admin).headers["etag"]
    assert env.put({"face_required": True}, headers={**env.admin, "If-Match": current}).status_code == 200


@pytest.mark.postgres
def test_racing_admins_lose_no_change(pg_engine: sa.Engine) -> None:
    with pg_engine.begin() as conn:
        conn.execute(organisations.insert().values(id=uuid.uuid4(), name="K1700", kind="terminal",
                                                   terminal_code=TERMINAL, created_at=datetime.now(UTC)))
    changes = [{"face_required": True}, {"face_min_score": 0.9}, {"container_min_confidence": 0.75},
               {"plate_min_confidence": 0.85}, {"plate_max_lookalikes": 2}, {"screening_unavailable": "deny"}]
    barrier = threading.Barrier(len(changes))
    errors: list[BaseException] = []

    def admin(change: dict[str, Any]) -> None:
        try:
            barrier.wait()
            with SqlUnitOfWork(pg_engine) as uow:
                service.change(uow, SqlTerminalRegistry(uow.connection), TERMINAL, change,
                               actor={"client_id": "t"}, by="t", now=datetime.now(UTC))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=admin, args=(c,)) for c in changes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with SqlUnitOfWork(pg_engine, readonly=True) as uow:
        policy = uow.gate.policy(TERMINAL)
    expected = {k: v for c in changes for k, v in c.items()}
    assert {k: getattr(policy, k) for k in expected} == expected


def test_the_cli_shows_and_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", url)
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    upgrade(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(organisations.insert().values(id=uuid.uuid4(), name="K1700", kind="terminal",
                                                   terminal_code=TERMINAL, created_at=datetime.now(UTC)))
    assert cli(["terminal", "policy", "show", TERMINAL]) == 0
    assert '"screening_unavailable": "review"' in capsys.readouterr().out
    assert cli(["terminal", "policy", "set", TERMINAL, "--face-required", "--screening-unavailable", "deny",
                "--plate-min-confidence", "0.9"]) == 0
    out = capsys.readouterr().out
    assert '"face_required": true' in out and '"screening_unavailable": "deny"' in out and "cli:" in out
    for argv, message in (
        (["--screening-unavailable", "allow"], "screening_unavailable must be deny or review"),
        (["--plate-min-confidence", "high"], "--plate-min-confidence must be a number"),
        (["--plate-max-lookalikes", "1.5"], "--plate-max-lookalikes must be a whole number"),
        (["--face-min-score", "7"], "face_min_score must be a number from 0.5 to 1"),
        (["--face-min-score", "0"], "face_min_score must be a number from 0.5 to 1"),
        ([], "nothing to change"),
    ):
        assert cli(["terminal", "policy", "set", TERMINAL, "--no-face-required", *argv]
                   if argv else ["terminal", "policy", "set", TERMINAL]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert cli(["terminal", "policy", "set", "XXANR-0000", "--face-required"]) == 2
    assert "no terminal 'XXANR-0000'" in capsys.readouterr().err
    with engine.connect() as conn:
        stored = conn.execute(sa.select(terminal_policies.c.policy, terminal_policies.c.updated_by)).one()
        audits = conn.execute(sa.select(sa.func.count()).select_from(audit_log)
                              .where(audit_log.c.kind == "release.gate_policy.changed")).scalar_one()
    engine.dispose()
    assert stored.policy["face_required"] is True and stored.policy["plate_min_confidence"] == 0.9  # refusals: none
    assert stored.updated_by.startswith("cli") and audits == 1

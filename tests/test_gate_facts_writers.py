"""Every process that changes what a gate decision reads invalidates the gates' copies in Redis, the
command line's too (issue 5, "kept exact by invalidation on every change").

On PostgreSQL + Redis, with a server whose gate reads its facts from Redis: a badge is seen (and so
copied) by a check; then, in another container as a CLI process builds it, the badge office blocks the
badge or port security requires a face. The very next commit at the gate sees the change. A CLI that
cannot reach Redis saves its change, says plainly that the gates may still hold the old copy, exits
1; the servers learn of it from PostgreSQL at their drainer's next poll (review 169), and ``quaygate
gate-facts refresh`` ends it everywhere once Redis answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from quaygate.cli import main as cli
from quaygate.schema import badges

from .factories import TERMINAL
from .test_gate_policy import Env, _serve

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def env(pg_engine: sa.Engine, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    # The CLI's own process settings: the same database, Redis and secrets as the server's.
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", pg_engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("QUAYGATE_REDIS_URL", redis_url)
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    yield from _serve(pg_engine, tmp_path, redis_url)


def _seen(env: Env) -> None:
    """A right for container 1, and two checks: the second one decides on the copies in Redis."""
    env.pickable(1)
    for _ in range(2):
        r = env.verify(env.body(1))
        assert r.status_code == 200 and r.json()["decision"] == "allow", r.text


def _commit(env: Env) -> dict[str, object]:
    r = env.verify(env.body(1, mode="commit"))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _badge_id(env: Env) -> str:
    with env.engine.connect() as conn:
        return str(conn.execute(sa.select(badges.c.id).where(badges.c.number == env.badge_number)).scalar_one())


def test_a_badge_blocked_from_the_cli_is_refused_at_the_next_commit(env: Env) -> None:
    _seen(env)
    assert cli(["badge", "status", _badge_id(env), "blocked", "--reason", "reported stolen"]) == 0
    got = _commit(env)
    assert (got["decision"], got["committed"]) == ("deny", False) and "badge_blocked" in got["reasons"], got  # type: ignore[operator]


def test_a_policy_set_from_the_cli_is_applied_at_the_next_commit(env: Env) -> None:
    _seen(env)
    assert cli(["terminal", "policy", "set", TERMINAL, "--face-required"]) == 0
    got = _commit(env)
    assert (got["decision"], got["reasons"], got["committed"]) == ("review", ["face_required"], False), got


def test_a_cli_cut_off_from_redis_says_so_and_refresh_ends_it(env: Env, redis_url: str,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _seen(env)
    monkeypatch.setenv("QUAYGATE_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    assert cli(["badge", "status", _badge_id(env), "blocked", "--reason", "reported stolen"]) == 1
    err = capsys.readouterr().err
    assert "the change is saved, but Redis did not take the news of it" in err and "gate-facts refresh" in err, err
    with env.engine.connect() as conn:  # saved
        assert conn.execute(sa.select(badges.c.status).where(badges.c.number == env.badge_number)).scalar_one() \
            == "blocked"
    # The servers learn of it from PostgreSQL all the same, at their drainer's next poll (review 169),
    # driven here: the window the message warns of lasts about a second, not until the copy expires.
    env.http.app.state.container.gate_facts.catch_up()  # type: ignore[attr-defined]
    got = _commit(env)
    assert (got["decision"], got["committed"]) == ("deny", False) and "badge_blocked" in got["reasons"], got  # type: ignore[operator]
    assert cli(["gate-facts", "refresh"]) == 1  # still cut off: refused the same way
    monkeypatch.setenv("QUAYGATE_REDIS_URL", redis_url)
    capsys.readouterr()
    assert cli(["gate-facts", "refresh"]) == 0
    assert "every gate reads its facts again" in capsys.readouterr().out
    got = _commit(env)
    assert (got["decision"], got["committed"]) == ("deny", False) and "badge_blocked" in got["reasons"], got  # type: ignore[operator]


def test_a_cli_without_redis_on_a_database_served_with_redis_refuses(env: Env, redis_url: str,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Review 169, finding 1: a shell without QUAYGATE_REDIS_URL blocked the badge in the database and told
    no gate (exit 0, nothing said): they allowed it on their copy for up to QUAYGATE_GATE_FACTS_TTL. A
    database a server with Redis has served refuses every process without Redis, nothing written."""
    _seen(env)
    monkeypatch.delenv("QUAYGATE_REDIS_URL")
    capsys.readouterr()
    assert cli(["badge", "status", _badge_id(env), "blocked", "--reason", "reported stolen"]) == 2
    err = capsys.readouterr().err
    assert "QUAYGATE_REDIS_URL" in err and "nothing was done" in err and "quaygate redis release" in err, err
    with env.engine.connect() as conn:  # nothing written
        assert conn.execute(sa.select(badges.c.status).where(badges.c.number == env.badge_number)).scalar_one() \
            == "active"
    monkeypatch.setenv("QUAYGATE_REDIS_URL", redis_url)
    assert cli(["badge", "status", _badge_id(env), "blocked", "--reason", "reported stolen"]) == 0
    got = _commit(env)
    assert (got["decision"], got["committed"]) == ("deny", False) and "badge_blocked" in got["reasons"], got  # type: ignore[operator]

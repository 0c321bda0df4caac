"""The gate's hot path on PostgreSQL + Redis (issue 5): facts cached in Redis, exact by invalidation.

Every change goes through the code that makes it in production (the party API, the badge office's
service, the ban register's loader, the national-number link, the terminal policy store), and the
next gate decision must see it. A check answered from the cache runs no SQL statement at all; its
decision reaches gate_decisions through the drainer. A fill that raced a commit is never read again.
With Redis gone, decisions come from PostgreSQL and stay right; after Redis comes back, nothing that
changed meanwhile is answered from an old copy.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from identity.badges.service import BadgeService
from identity.bans.loader import load_feed
from identity.bans.persons import set_national_id
from quaygate.app import create_app
from quaygate.cache import DATASET_EPOCH, RedisCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.hotsql import HotStatement
from quaygate.schema import badges, gate_decisions, releases
from quaygate.settings import Settings
from quaygate.single_use import CLAIMED, CLAIMED_BEFORE
from release_service.adapters.gate_facts import RedisGateFacts
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.api import auth
from release_service.domain.gate import BadgeRead, ScreeningResult, TerminalPolicy

from . import processes
from .aio import run_async
from .ban_register import Register, ban, national_number, snapshot
from .conftest import refusing_connections
from .factories import TERMINAL, container
from .processes import free_port
from .test_gate_move import a_pending_transfer_is_cancelled_by_the_gate_in
from .test_gate_verify import Gate
from .test_release_api import assert_problem

PEPPER = b"p" * 32
pytestmark = pytest.mark.xdist_group("gate_facts")


def _now() -> datetime:
    return datetime.now(UTC)


def _serve(engine: sa.Engine, tmp_path: Path, redis_url: str, **over: Any) -> Iterator[Gate]:
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        redis_url=redis_url, background_workers=False, gate_decision_drain=False, **over)
    c = Container(settings=settings, engine=engine, cache=RedisCache(redis_url),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    with TestClient(create_app(settings, container=c)) as http:
        gate = Gate(http, engine)
        gate.facts = c.gate_facts  # type: ignore[attr-defined]
        yield gate


@pytest.fixture
def gate(pg_engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[Gate]:
    yield from _serve(pg_engine, tmp_path, redis_url)


@pytest.fixture(params=["loop", "thread"])
def either_gate(request: pytest.FixtureRequest, pg_engine: sa.Engine, tmp_path: Path, redis_url: str
                ) -> Iterator[Gate]:
    """A gate whose commits are decided on the event loop (quaygate/loopdb.py), and one whose commits
    are decided on the worker threads (``gate_commit_on_loop`` off): ``gate.commits_on``."""
    for gate in _serve(pg_engine, tmp_path, redis_url, gate_commit_on_loop=request.param == "loop"):
        gate.commits_on = request.param  # type: ignore[attr-defined]
        yield gate


def _lane_client(gate: Gate, name: str) -> tuple[str, str, str]:
    """Another gate client of the terminal, and an access token of it: (client_id, secret, token)."""
    from identity.bootstrap import create_client

    client_id, secret = create_client(gate.engine, name=name, role="terminal_gate",
                                      organisation_id=gate.p.terminal.organisation_id, terminal_code=TERMINAL,
                                      now=_now())
    token = gate.http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                           auth=(client_id, secret or "")).json()["access_token"]
    return client_id, secret or "", str(token)


class Statements:
    """Counts the SQL statements the engine runs, including those sent on the driver's cursor
    (quaygate/hotsql.py) and on the event loop's connections (quaygate/loopdb.py), which SQLAlchemy's
    events do not see."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.count = 0
        self._patch = pytest.MonkeyPatch()

    def _seen(self, *args: Any) -> None:
        self.count += 1

    def __enter__(self) -> Statements:
        sa.event.listen(self.engine, "before_cursor_execute", self._seen)
        sent, sent_async = HotStatement.execute, HotStatement.execute_async

        def counted(statement: HotStatement, conn: sa.Connection, *args: Any) -> Any:
            if conn.dialect.name == "postgresql":  # elsewhere it is ``conn.execute``: the event counts it
                self.count += 1
            return sent(statement, conn, *args)

        async def counted_async(statement: HotStatement, *args: Any) -> Any:
            self.count += 1
            return await sent_async(statement, *args)

        self._patch.setattr(HotStatement, "execute", counted)
        self._patch.setattr(HotStatement, "execute_async", counted_async)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._seen)
        self._patch.undo()


def _check(gate: Gate, n: int, **over: Any) -> dict[str, Any]:
    r = gate.verify(gate.body(n, **over))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_kept_decision_the_table_refuses_is_set_aside_and_holds_back_no_other(gate: Gate) -> None:
    """A decision kept in Redis that gate_decisions refuses (a NUL in its request_id, as an older server
    let through: PostgreSQL's jsonb has no NUL) must not hold back the batch it came in, again and again:
    the others go in, it is set aside in ``decisions:refused`` for an operator, and nothing stays pending."""
    import json as _json

    from release_service.adapters.gate_facts import GROUP, REFUSED, STREAM

    gate.pickable(43)
    gate.pickable(44)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    good = [_check(gate, 43), _check(gate, 44)]
    (_, fields), *_ = facts._r.xrange(facts._p + STREAM)
    poisoned = _json.loads(fields[b"row"])
    poisoned.update(id=str(uuid.uuid4()), request_id="poisoned\x00")
    facts._r.xadd(facts._p + STREAM, {"row": _json.dumps(poisoned)})
    facts.drain("test", block_ms=None)
    with gate.engine.connect() as conn:
        kept = set(conn.execute(sa.select(gate_decisions.c.id)).scalars())
    assert kept == {uuid.UUID(d["decision_id"]) for d in good}
    refused = facts._r.xrange(facts._p + REFUSED)
    assert [_json.loads(f[b"row"])["request_id"] for _, f in refused] == ["poisoned\x00"]
    assert facts._r.xpending(facts._p + STREAM, GROUP)["pending"] == 0


def test_a_check_decided_again_after_its_id_left_redis_is_kept_aside_never_dropped(gate: Gate) -> None:
    """Redis keeps a check's request_id for ``request_ttl``; sent again after that, the check is
    decided afresh and answered with a new decision_id, which gate_decisions cannot hold beside the
    first under the same (terminal, request_id). The drainer keeps it in ``decisions:refused`` and
    logs it; it used to drop it without a word."""
    import json as _json

    from release_service.adapters.gate_facts import REFUSED, STREAM

    gate.pickable(45)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    body = gate.body(45)
    first = gate.verify(body).json()
    (_, recorded), = facts._r.xrange(facts._p + STREAM)
    facts.drain("test", block_ms=None)
    facts._r.delete(facts._request_key({"terminal": TERMINAL, "request_id": body["request_id"]}))  # expired
    again = gate.verify(body).json()
    assert again["decision_id"] != first["decision_id"]
    facts.drain("test", block_ms=None)
    with gate.engine.connect() as conn:
        kept = list(conn.execute(sa.select(gate_decisions.c.id)
                                 .where(gate_decisions.c.request_id == body["request_id"])).scalars())
    assert kept == [uuid.UUID(first["decision_id"])]
    aside = [(_json.loads(f[b"row"])["id"], f[b"error"]) for _, f in facts._r.xrange(facts._p + REFUSED)]
    assert aside == [(again["decision_id"], b"request_id_reused")]
    facts._r.xadd(facts._p + STREAM, recorded)  # the first again (a drainer that died before its ack): no clash
    facts.drain("test", block_ms=None)
    assert len(facts._r.xrange(facts._p + REFUSED)) == 1


def test_checks_past_the_streams_cap_are_recorded_in_postgresql_and_no_answered_one_is_lost(
        gate: Gate, caplog: pytest.LogCaptureFixture) -> None:
    """Review 127 (low): the stream of kept checks was bounded by trimming its oldest entries (XADD
    MAXLEN ~), drained or not. With the drainers behind (PostgreSQL away, none running), decisions
    answered at the gate vanished before they reached gate_decisions, and an override of such a
    refusal answered 404. Now nothing is trimmed: a check that finds the stream at its cap (on the
    remembered facts' keep, the loop's record and a worker thread's record alike) is recorded in
    PostgreSQL, logged and counted; every decision answered is in gate_decisions once it is drained."""
    import logging

    from release_service.adapters.gate_facts import STREAM

    caplog.set_level(logging.ERROR, logger="release_service.adapters.gate_facts")
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    facts._cap = 10
    facts.FULL_PAUSE = 0.0  # every check tries the stream again: each of the three scripts finds it full
    gate.pickable(47)
    gate.pickable(48)
    refused = _check(gate, 47, plate={"text": "9ZZZ999", "country": "BE", "confidence": 0.99})
    assert (refused["decision"], refused["reasons"]) == ("deny", ["plate_mismatch"])
    # More than a stream node's 100 entries past the cap: what the approximate trim used to drop.
    answered = [refused["decision_id"], *(_check(gate, 48 - n % 2)["decision_id"] for n in range(150))]
    body = gate.body(48)  # past the cap: a retry is answered from PostgreSQL's record, an id reused refused
    late = gate.verify(body).json()
    assert gate.verify(body).json() == late
    assert_problem(gate.verify({**body, "lane": "in-9"}), 409, "request_id_reused")
    answered.append(late["decision_id"])
    waiting = facts._r.xlen(facts._p + STREAM)
    with gate.engine.connect() as conn:
        direct = conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)).scalar_one()

    facts.drain("test", block_ms=None)
    with gate.engine.connect() as conn:
        kept = set(conn.execute(sa.select(gate_decisions.c.id)).scalars())
    assert not {uuid.UUID(d) for d in answered} - kept, "answered decisions missing from gate_decisions"
    assert len(kept) == len(answered) == 152
    assert (waiting, direct) == (10, 142)  # the rest recorded in PostgreSQL as they were decided
    assert facts.stream_full >= 142 * 3 - 2  # the keep, the loop's record, the thread's record, each found it full
    assert caplog.messages.count("release.gate_facts.stream_full") >= 142
    scraped = gate.http.get("/metrics").text  # for an operator: the drainers are behind
    line = next(x for x in scraped.splitlines() if x.startswith("quaygate_gate_stream_full_total "))
    assert float(line.split()[1]) == facts.stream_full
    r = gate.http.post("/gate/v1/overrides", headers={"Authorization": f"Bearer {gate.gate_token}"},
                       json={"decision_id": refused["decision_id"], "reason": "plate checked at the desk"})
    assert r.status_code == 201, r.text
    # Drained, the stream has room again: the next check is kept there, with no SQL.
    with Statements(gate.engine) as sql:
        assert _check(gate, 48)["decision"] == "allow"
    assert sql.count == 0 and facts._r.xlen(facts._p + STREAM) == 1


def test_a_stream_found_full_sends_no_keep_for_a_moment(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a script found the stream full, the process sends no keep for ``FULL_PAUSE``: a check is
    decided on the facts read (from Redis, without the keeps that would fail) and recorded in
    PostgreSQL. After the pause it tries the stream again."""
    from release_service.adapters.gate_facts import STREAM

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    facts._cap = 1
    facts.FULL_PAUSE = 60.0  # long enough for a slow machine: ended by hand below
    gate.pickable(49)
    first = _check(gate, 49)  # the facts read through, the check kept: the stream is full
    assert facts._r.xlen(facts._p + STREAM) == 1
    second = _check(gate, 49)  # its keep finds it full, then the long way
    assert facts.stream_full == 1
    trips = RoundTrips(facts, monkeypatch)
    third = _check(gate, 49)
    assert facts.stream_full == 1  # refused without a round trip
    # The facts read on the loop, read on a worker thread, the answer remembered there: no keep.
    assert (trips.sent, trips.where) == (["EVALSHA"] * 3, ["loop", "thread", "thread"])
    facts._full_until = 0.0  # the pause over
    facts.drain("test", block_ms=None)
    trips.sent.clear()
    fourth = _check(gate, 49)
    assert trips.sent == ["EVALSHA"] and facts._r.xlen(facts._p + STREAM) == 1  # kept in one step again
    facts.drain("test", block_ms=None)
    with gate.engine.connect() as conn:
        kept = set(conn.execute(sa.select(gate_decisions.c.id)).scalars())
    assert kept == {uuid.UUID(d["decision_id"]) for d in (first, second, third, fourth)}


def test_a_check_the_full_stream_cannot_keep_is_a_503_while_postgresql_is_away_too(gate: Gate) -> None:
    """The stream full and PostgreSQL taking no connection: the check is neither answered without a
    record nor a 500, but refused 503 ``service_unavailable`` (problem JSON), nothing kept anywhere."""
    from release_service.adapters.gate_facts import STREAM

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    gate.pickable(50)
    assert _check(gate, 50)["decision"] == "allow"  # the facts cached (and remembered)
    facts._cap = 1  # the first check's entry fills it
    body = gate.body(50)
    with refusing_connections(gate.engine):
        gate.http.app.state.container.engine.dispose()  # type: ignore[attr-defined]  # nothing open
        refused = gate.verify(body)
    assert_problem(refused, 503, "service_unavailable")
    assert facts._r.xlen(facts._p + STREAM) == 1
    assert facts._r.get(facts._request_key({"terminal": TERMINAL, "request_id": body["request_id"]})) is None
    assert gate.verify(body).json()["decision"] == "allow"  # the database back: decided and recorded there
    with gate.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)
                            .where(gate_decisions.c.request_id == body["request_id"])).scalar_one() == 1


def test_a_commit_the_cache_never_heard_of_is_still_answered_once(gate: Gate) -> None:
    """A commit's request_id reaches Redis only after its transaction (``remember``, best effort):
    a retry that the cache does not know must still get the recorded answer, never a second use."""
    gate.pickable(3)
    body = gate.body(3, mode="commit")
    first = gate.verify(body).json()
    assert first["decision"] == "allow" and first["committed"]
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    facts._r.delete(facts._request_key({"terminal": body["terminal"], "request_id": body["request_id"]}))
    assert gate.verify(body).json() == first
    assert_problem(gate.verify({**body, "lane": "in-9"}), 409, "request_id_reused")
    with gate.engine.connect() as conn:
        kept = conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)
                            .where(gate_decisions.c.request_id == body["request_id"])).scalar_one()
    assert kept == 1


def _require_face(engine: sa.Engine, *, commit: bool) -> None:
    """The terminal's policy changed as its store changes it, committed or rolled back."""
    with SqlUnitOfWork(engine) as uow:
        uow.gate.set_policy(TERMINAL, TerminalPolicy(face_required=True), by="security", now=_now())
        uow.commit() if commit else uow.rollback()


def _badge_id(gate: Gate) -> uuid.UUID:
    with gate.engine.connect() as conn:
        return conn.execute(sa.select(badges.c.id).where(badges.c.person_id == gate.p.driver)).scalar_one()


def test_a_cached_check_runs_no_sql_and_reaches_the_database_through_the_drainer(gate: Gate) -> None:
    gate.pickable(1)
    assert _check(gate, 1)["decision"] == "allow"  # the first read fills the cache from PostgreSQL
    body = gate.body(1)
    with Statements(gate.engine) as sql:
        first = gate.verify(body).json()
        again = gate.verify(body).json()  # a retry: answered from the recorded request_id
    assert first["decision"] == "allow" and again == first
    assert sql.count == 0, f"{sql.count} SQL statements on the cached path"
    assert_problem(gate.verify({**body, "lane": "in-9"}), 409, "request_id_reused")

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    assert facts.drain("test", block_ms=None) == 2
    with gate.engine.connect() as conn:
        kept = conn.execute(sa.select(gate_decisions).where(gate_decisions.c.request_id == body["request_id"])
                            ).mappings().all()
    assert len(kept) == 1
    row = kept[0]
    # Every column as the decision had it, whatever way the drainer writes it (one JSON array on PostgreSQL)
    assert (row["id"], row["release_id"]) == (uuid.UUID(first["decision_id"]), uuid.UUID(first["release_id"]))
    assert (row["terminal"], row["lane"], row["direction"], row["mode"], row["decision"], row["committed"]) == (
        TERMINAL, body["lane"], "in", "check", "allow", False)
    assert (row["reasons"], row["response"], row["container_number"]) == ([], first, first["container"])
    assert row["observed_at"] == datetime.fromisoformat(body["observed_at"])
    assert row["decided_at"].tzinfo is not None and abs(row["decided_at"] - _now()) < timedelta(minutes=5)
    assert len(row["fingerprint"]) == 64 and row["client_id"]
    assert facts.drain("test", block_ms=None) == 0  # acknowledged: never written twice


class RoundTrips:
    """Counts the commands the gate facts send to Redis on their hot-path connections: a thread's
    (``Line``) and the event loop's (``Pipelined``)."""

    def __init__(self, facts: RedisGateFacts, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[str] = []
        self.where: list[str] = []  # "thread" (``Line``, blocking) or "loop" (``Pipelined``), per command
        self.threads: set[int] = set()  # the threads the blocking ones were sent from
        self.names: set[str] = set()  # and their names
        line, pipe = facts._line, facts._pipe
        on_line, on_pipe = line.call, pipe.call

        def counted(*args: Any) -> Any:
            self.sent.append(str(args[0]))
            self.where.append("thread")
            self.threads.add(threading.get_ident())
            self.names.add(threading.current_thread().name)
            return on_line(*args)

        async def counted_async(*args: Any) -> Any:
            self.sent.append(str(args[0]))
            self.where.append("loop")
            return await on_pipe(*args)

        monkeypatch.setattr(line, "call", counted)
        monkeypatch.setattr(pipe, "call", counted_async)


def test_a_badge_not_valid_yet_is_inactive_from_the_cache_as_from_the_database(gate: Gate) -> None:
    from datetime import UTC, datetime, timedelta

    gate.pickable(62)
    with gate.engine.begin() as conn:
        conn.execute(badges.update().where(badges.c.person_id == gate.p.driver)
                     .values(valid_from=datetime.now(UTC) + timedelta(days=1)))
    assert _check(gate, 62)["reasons"] == ["badge_inactive"]  # read through, into the cache
    with Statements(gate.engine) as sql:
        assert _check(gate, 62)["reasons"] == ["badge_inactive"]
    assert sql.count == 0  # decided on the cached copy, which carries the badge's start


def test_a_check_on_facts_this_process_read_before_is_one_round_trip_and_is_kept(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """The facts read for one check are remembered with their generations; the next check on them is
    decided at once and kept in one step that finds those generations still current: one round trip
    to Redis (against two: read, then keep), no SQL, and the decision reaches PostgreSQL as any other."""
    gate.pickable(9)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    trips = RoundTrips(facts, monkeypatch)
    assert _check(gate, 9)["decision"] == "allow"
    assert len(trips.sent) >= 2  # the first: the facts read (and filled), then the decision kept
    trips.sent.clear()
    body = gate.body(9)
    with Statements(gate.engine) as sql:
        got = gate.verify(body).json()
    assert got["decision"] == "allow" and got["reasons"] == []
    assert trips.sent == ["EVALSHA"] and sql.count == 0
    assert gate.verify(body).json() == got  # a retry: the recorded answer, found in that same one step
    assert_problem(gate.verify({**body, "lane": "in-9"}), 409, "request_id_reused")
    facts.drain("test", block_ms=None)
    with gate.engine.connect() as conn:
        kept = conn.execute(sa.select(gate_decisions.c.id, gate_decisions.c.decision)
                            .where(gate_decisions.c.request_id == body["request_id"])).all()
    assert [(str(k.id), k.decision) for k in kept] == [(got["decision_id"], "allow")]


def test_a_check_on_copies_another_process_cached_reads_and_keeps_on_the_loop_without_sql(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies in Redis that this process never read (another server filled them): read and kept from the
    event loop (two pipelined round trips), with no SQL; then remembered, and the next check is one."""
    gate.pickable(15)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    assert _check(gate, 15)["decision"] == "allow"  # the copies filled in Redis
    facts._near.clear()  # as in a process that never read them
    trips = RoundTrips(facts, monkeypatch)
    body = gate.body(15)
    with Statements(gate.engine) as sql:
        got = gate.verify(body).json()
        assert got["decision"] == "allow" and trips.sent == ["EVALSHA", "EVALSHA"] and sql.count == 0
        assert gate.verify(body).json() == got  # a retry: the recorded answer
        trips.sent.clear()
        assert _check(gate, 15)["decision"] == "allow" and trips.sent == ["EVALSHA"]
    assert sql.count == 0


def test_a_change_committed_while_a_check_is_decided_on_remembered_facts_is_never_missed(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the one-step keep exists for: a check is decided on the facts this process remembers,
    and the badge office blocks the badge before the decision is kept. The keep finds the badges'
    generation replaced, keeps nothing, and the check is decided again on the facts as they are now:
    deny, and only the deny is recorded."""
    gate.pickable(10)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    assert _check(gate, 10)["decision"] == "allow"  # the facts are remembered now
    original = facts.recall
    blocked: list[bool] = []

    def recall_then_block(**kw: Any) -> Any:
        recalled = original(**kw)
        if recalled is not None and not blocked:  # the change lands between the recall and the keep
            BadgeService(gate.engine).change_status(_badge_id(gate), "blocked", reason="stolen", actor="o",
                                                    now=_now())
            blocked.append(True)
        return recalled

    monkeypatch.setattr(facts, "recall", recall_then_block)
    body = gate.body(10)
    got = gate.verify(body).json()
    assert blocked, "the check was not decided on remembered facts"
    assert (got["decision"], got["reasons"]) == ("deny", ["badge_blocked"])
    facts.drain("test", block_ms=None)
    with gate.engine.connect() as conn:
        kept = conn.execute(sa.select(gate_decisions.c.decision)
                            .where(gate_decisions.c.request_id == body["request_id"])).scalars().all()
    assert kept == ["deny"]


def test_remembered_facts_are_kept_only_under_current_generations(gate: Gate) -> None:
    """``keep_if_current`` on its own: a generation replaced or expired, a taken request_id, a set
    revocation entry: nothing kept; the facts as remembered and current: kept, once."""
    gate.pickable(11)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    assert _check(gate, 11)["decision"] == "allow"
    from release_service.domain.gate import BadgeRead

    def recalled() -> Any:
        got = facts.recall(terminal=TERMINAL, badge=BadgeRead("alfapass", gate.badge_number),
                           containers=[container(11)], now=_now())
        assert got is not None
        return got

    def row() -> dict[str, Any]:
        return {"id": uuid.uuid4(), "terminal": TERMINAL, "request_id": str(uuid.uuid4()), "fingerprint": "f",
                "response": {"decision": "allow"}, "decision": "allow", "release_id": None, "committed": False,
                "direction": "in"}

    families = dict(recalled().under)
    assert set(families) == {"policy", "badges", "bans", "rights", f"r:{container(11)}"}
    raw = facts._r
    for family in families:  # each family, replaced: never kept
        assert _check(gate, 11)["decision"] == "allow"  # read again: remembered as current
        before = recalled()
        facts.bump([family])
        assert facts.keep_if_current(row(), before).recorded is False, family
    assert _check(gate, 11)["decision"] == "allow"
    before = recalled()
    assert raw.delete(f"qg:gate:g:r:{container(11)}") == 1  # expired: never kept either
    assert facts.keep_if_current(row(), before).recorded is False
    assert facts.recall(terminal=TERMINAL, badge=None, containers=[container(12)], now=_now()) is None  # never read

    assert _check(gate, 11)["decision"] == "allow"  # read again: current
    first = row()
    kept = facts.keep_if_current(first, recalled())
    assert (kept.recorded, kept.twin, kept.also) == (True, None, ())
    twin = facts.keep_if_current({**first, "id": uuid.uuid4()}, recalled())
    assert twin.recorded is False and twin.twin is not None and twin.twin.id == first["id"]
    raw.set("qg:test:revoked", b"1", ex=60)
    try:
        refused = facts.keep_if_current(row(), recalled(), also=["qg:test:revoked", "qg:test:free"])
    finally:
        raw.delete("qg:test:revoked")
    assert (refused.recorded, refused.twin, refused.also) == (False, None, (b"1", None))


def _loop_thread(facts: RedisGateFacts, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The event loop's thread, as ``recall`` (called on the loop only) sees it: filled when it runs."""
    loop: list[int] = []
    recall = facts.recall

    def recalled(**kw: Any) -> Any:
        loop.append(threading.get_ident())
        return recall(**kw)

    monkeypatch.setattr(facts, "recall", recalled)
    return loop


def test_invalidations_still_owed_are_sent_before_remembered_facts_are_trusted(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit whose invalidation Redis did not take leaves it owed; whatever thread cleared the
    breaker meanwhile, the next check sends what is owed before it keeps a decision on remembered
    facts, so the change it stands for is decided on."""
    rid = gate.pickable(13)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    assert _check(gate, 13)["decision"] == "allow"  # remembered
    with gate.engine.begin() as conn:  # a block committed, its invalidation not delivered
        conn.execute(releases.update().where(releases.c.id == uuid.UUID(rid)).values(blocked=True))
    facts._owed[f"r:{container(13)}"] = facts._failed[f"r:{container(13)}"] = 0  # its send failed
    assert (facts._suspect, facts.owed()) == (False, 1)
    loop = _loop_thread(facts, monkeypatch)
    trips = RoundTrips(facts, monkeypatch)
    assert _check(gate, 13)["reasons"] == ["right_blocked"]
    assert facts.owed() == 0
    # Sent by the worker thread that decided, never on the event loop (a blocking round trip there
    # would hold every other request).
    assert loop and trips.threads and loop[0] not in trips.threads and "loop" not in trips.where


def test_without_a_pipelined_connection_the_loop_never_waits_on_redis(gate: Gate,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A Unix socket, Sentinel, OCSP checks: no ``Pipelined`` connection, so every Redis call is a blocking one.
    The loop's calls (the facts read, the decision recorded or kept on remembered facts) then run in a
    thread: a Redis that stalls holds up that check alone, never every request the loop serves."""
    gate.pickable(31)
    gate.pickable(32)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    monkeypatch.setattr(facts._pipe, "available", False)
    loop = _loop_thread(facts, monkeypatch)
    trips = RoundTrips(facts, monkeypatch)
    with Statements(gate.engine) as sql:
        assert _check(gate, 31)["decision"] == "allow"  # facts read through to PostgreSQL, then cached
        assert _check(gate, 32)["decision"] == "allow"  # its right read through
        before = sql.count
        assert _check(gate, 31)["decision"] == "allow"  # on remembered facts: kept in one step
        assert _check(gate, 32)["decision"] == "allow"
    assert before > 0 and sql.count == before  # decided on the cache, as with the pipelined connection
    assert set(trips.sent) >= {"EVALSHA"} and set(trips.where) == {"thread"}
    assert loop and loop[0] not in trips.threads
    # The loop's calls on the facts' own threads, never the loop's default executor (name lookups).
    assert any(n.startswith("gate-facts") for n in trips.names)
    assert not any(n.startswith("asyncio") for n in trips.names)


def test_an_invalidation_still_in_flight_holds_no_check_up(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread's invalidation on its way to Redis (its commit's answer not out yet) is not a
    failure: a check on remembered facts is still decided on the loop in one round trip; only one whose
    send failed sends the checks to a worker (the test above)."""
    gate.pickable(23)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    assert _check(gate, 23)["decision"] == "allow"  # remembered
    facts._owed["r:ELSEWHERE"] = facts._asked  # being sent by another thread, right now
    trips = RoundTrips(facts, monkeypatch)
    assert _check(gate, 23)["decision"] == "allow"
    assert trips.where == ["loop"]
    facts._owed.clear()


def test_a_token_revoked_after_a_keep_that_found_the_facts_moved_is_refused(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """A keep that finds the facts moved on settles nothing: the long way reads the token's revocation
    entries again with the facts, so a token revoked in between gets no answer and no decision."""

    gate.pickable(14)
    client_id, secret, token = _lane_client(gate, "lane 14")
    assert gate.verify(gate.body(14), token).json()["decision"] == "allow"  # remembered
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    original = facts.keep_if_current_async
    seen: list[Any] = []

    async def moved_then_revoked(row: dict[str, Any], recalled: Any, also: Any = ()) -> Any:
        facts.bump([f"r:{container(14)}"])  # a change lands first: the keep finds the facts moved
        kept = await original(row, recalled, also)
        seen.append(kept)
        facts._r.set(also[0], b"1", ex=600)  # then the token is revoked: its own entry, as RFC 7009 sets it
        return kept

    monkeypatch.setattr(facts, "keep_if_current_async", moved_then_revoked)
    body = gate.body(14)
    refused = gate.verify(body, token)
    assert [k.recorded for k in seen] == [False]
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_token", refused.text
    facts.drain("test", block_ms=None)
    with gate.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)
                            .where(gate_decisions.c.request_id == body["request_id"])).scalar_one() == 0


def test_a_commit_sends_its_invalidation_with_its_answer_in_one_round_trip(
        either_gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit on cached facts waits on two Redis round trips: its facts read (with its request_id and
    its token's revocation entries), and after its write one script that both replaces the right's
    generation and keeps the answer under the request_id. Both have landed when the answer is out: the
    next check sees the right used, and a retry is answered from Redis without SQL. Decided on the
    event loop, both are pipelined there; on a worker thread, both are sent from it."""
    gate = either_gate
    gate.pickable(16)
    gate.pickable(17)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    assert _check(gate, 16)["decision"] == "allow"  # the terminal's policy and the badge are cached now
    trips = RoundTrips(facts, monkeypatch)
    body = gate.body(17, mode="commit")
    moved = gate.verify(body).json()
    assert (moved["decision"], moved["committed"]) == ("allow", True)
    assert list(zip(trips.sent, trips.where, strict=True)) == [("EVALSHA", gate.commits_on)] * 2  # type: ignore[attr-defined]
    assert facts.owed() == 0
    trips.sent.clear()
    with Statements(gate.engine) as sql:
        assert gate.verify(body).json() == moved  # the answer kept with the invalidation
    assert sql.count == 0 and trips.sent == ["EVALSHA"]
    assert _check(gate, 17)["reasons"] == ["already_used"]  # the generation was replaced before the answer


@contextlib.contextmanager
def _other_process(gate: Gate, redis_url: str, **kw: Any) -> Iterator[tuple[sa.Engine, RedisGateFacts]]:
    """Another process that writes what the gates read (the CLI, a second server): its own engine and its
    own gate facts on the same PostgreSQL and Redis, its invalidations installed as ``gate_facts_for`` does."""
    engine = sa.create_engine(gate.engine.url.render_as_string(hide_password=False), poolclass=sa.pool.NullPool)
    facts = RedisGateFacts.from_url(redis_url, engine, lambda: SqlUnitOfWork(engine), **kw)
    try:
        yield engine, facts
    finally:
        facts.close()
        engine.dispose()


def _lost_after_its_mark(facts: RedisGateFacts, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Redis is lost to ``facts`` between a commit's pending mark and the invalidation after it: every
    invalidation it sends from then on fails on the wire. Returns the sends refused."""
    import redis

    from release_service.adapters import gate_facts

    refused: list[Any] = []
    run = facts._line.run

    def lost(script: Any, keys: Any, args: Any) -> Any:
        if script is gate_facts._BUMP:
            refused.append(args)
            raise redis.ConnectionError("Redis lost after the mark")
        return run(script, keys, args)

    monkeypatch.setattr(facts._line, "run", lost)
    monkeypatch.setattr(facts, "CLOSE_GRACE", 0.0)
    return refused


def test_a_change_whose_invalidation_never_reached_redis_is_never_answered_from_an_old_copy(
        gate: Gate, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process (the CLI, say) blocks the badge. Redis takes the pending mark it sends just
    before its commit, and is lost to it before the invalidation after the commit; the process gives up
    and exits. This server's copy of the badge, current until then, is never trusted again: its checks
    read the badge from PostgreSQL and refuse, and no copy is filled under the pending generation."""
    gate.pickable(41)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    assert _check(gate, 41)["decision"] == "allow"  # the badge cached, and remembered here
    with _other_process(gate, redis_url) as (engine, writer):
        refused = _lost_after_its_mark(writer, monkeypatch)
        BadgeService(engine).change_status(_badge_id(gate), "blocked", reason="stolen", actor="o", now=_now())
        assert refused and writer.owed() == 1  # its invalidation never reached Redis
    for _ in range(2):
        got = _check(gate, 41)
        assert (got["decision"], got["reasons"]) == ("deny", ["badge_blocked"]), got
        got = _check(gate, 41, mode="commit")
        assert (got["decision"], got["committed"]) == ("deny", False), got
    assert facts._r.get(facts._p + "g:badges").startswith(b"p")  # type: ignore[union-attr]
    assert not list(facts._r.scan_iter(match=facts._p + "badge:*:p*"))  # nothing kept under the mark


def test_a_mark_nobody_lifts_expires_and_the_facts_are_cached_again_as_committed(
        gate: Gate, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer that lost Redis never lifts its mark: after ``pending_ttl`` the family gets a plain
    generation again, and the copies filled then are read after its commit."""
    import time

    gate.pickable(42)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    assert _check(gate, 42)["decision"] == "allow"
    with _other_process(gate, redis_url, pending_ttl=1) as (engine, writer):
        _lost_after_its_mark(writer, monkeypatch)
        BadgeService(engine).change_status(_badge_id(gate), "blocked", reason="stolen", actor="o", now=_now())
    deadline = time.monotonic() + 10
    while (facts._r.get(facts._p + "g:badges") or b"").startswith(b"p"):
        assert time.monotonic() < deadline, "the mark never expired"
        time.sleep(0.2)
    got = _check(gate, 42)
    assert (got["decision"], got["reasons"]) == ("deny", ["badge_blocked"]), got
    with Statements(gate.engine) as sql:  # cached again: the blocked badge, answered without SQL
        got = _check(gate, 42)
    assert (got["decision"], got["reasons"], sql.count) == ("deny", ["badge_blocked"], 0), got


def test_a_family_stays_pending_until_every_writer_that_marked_it_lifted_its_mark(
        gate: Gate, redis_url: str) -> None:
    """Two processes commit changes to the same family at once. The first one's invalidation must not
    end the second one's mark: a copy filled between them would miss the second change, and be trusted
    if the second's invalidation is then lost. Pending until the last mark is lifted."""
    from quaygate import invalidation

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    touched = {(invalidation.RIGHTS, "TWOWRITERS1")}

    def generation() -> bytes:
        return facts._r.get(facts._p + "g:r:TWOWRITERS1")  # type: ignore[no-any-return]

    with _other_process(gate, redis_url) as (_, first), _other_process(gate, redis_url) as (_, second):
        one, two = first.committing(touched), second.committing(touched)
        assert one is not None and two is not None and generation().startswith(b"p")
        first.committed(touched, [one])
        assert generation().startswith(b"p") and first.owed() == 0
        second.committed(touched, [two])
        assert not generation().startswith(b"p") and second.owed() == 0
        assert not facts._r.exists(facts._p + "pend:r:TWOWRITERS1")  # every mark lifted


NOBODY = "redis://127.0.0.1:1/0"  # nothing listens there: a process cut off from Redis


def test_a_writer_cut_off_from_redis_reaches_the_other_servers_gates_through_postgresql(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 169, finding 2: another server that cannot reach Redis at all (a partition of one replica)
    blocks the badge. It can mark nothing, and its invalidation is only owed; this server never saw Redis
    fail, so it trusted its copy of the badge until the writer reached Redis again or the copy expired
    (600 s). The writer's commit records what it changed in PostgreSQL, in the same transaction; this
    server's drainer polls that record (about once a second) and replaces the generations in Redis: its
    next commit is refused."""
    gate.pickable(44)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    assert _check(gate, 44)["decision"] == "allow"  # the badge cached
    with _other_process(gate, NOBODY) as (engine, writer):
        monkeypatch.setattr(writer, "CLOSE_GRACE", 0.0)
        BadgeService(engine).change_status(_badge_id(gate), "blocked", reason="stolen", actor="o", now=_now())
        assert writer.owed() == 1  # nothing of it reached Redis
    # Until this server's drainer polls, its copy answers: the window, one poll long.
    assert _check(gate, 44)["decision"] == "allow"
    facts.catch_up()  # the drainer's poll, driven here
    got = _check(gate, 44, mode="commit")
    assert (got["decision"], got["reasons"], got["committed"]) == ("deny", ["badge_blocked"], False), got


def test_a_change_recorded_before_a_later_one_but_committed_after_it_is_still_caught_up(
        gate: Gate, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The changes are numbered as they are recorded, just before their commit, not as they commit: a poll
    that saw a later number must still catch an earlier one whose transaction was open then (PostgreSQL's
    snapshot horizon, ``catch_up``). Every server polls; Redis takes each change once (one wave of misses,
    not one per server)."""
    from quaygate import invalidation

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]

    def generation(name: str) -> bytes | None:
        return facts._r.get(facts._p + "g:" + name)  # type: ignore[no-any-return]

    facts.catch_up()
    with _other_process(gate, NOBODY) as (engine, writer), _other_process(gate, redis_url) as (_, other):
        monkeypatch.setattr(writer, "CLOSE_GRACE", 0.0)
        with engine.connect() as early:
            tx = early.begin()
            writer.committing({(invalidation.RIGHTS, "EARLY1")}, early)  # recorded, as just before its commit
            before = generation("policy")
            _require_face(engine, commit=True)  # recorded after it, and committed first
            facts.catch_up()
            policy = generation("policy")
            assert generation("r:EARLY1") is None and policy not in (None, before)  # the later one only
            tx.commit()
        facts.catch_up()
        assert generation("r:EARLY1") is not None and generation("policy") == policy
        taken = generation("r:EARLY1")
        other.catch_up()  # another server's poll finds both changes taken already
        assert (generation("r:EARLY1"), generation("policy")) == (taken, policy)


def test_the_record_of_changes_keeps_an_hour(gate: Gate) -> None:
    """The record of changes is swept: a change older than an hour is gone (any copy filled before it has
    long expired), a newer one stays."""
    from quaygate.schema import gate_fact_changes

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    with gate.engine.begin() as conn:
        conn.execute(gate_fact_changes.delete())
        conn.execute(gate_fact_changes.insert(), [
            {"at": _now() - timedelta(hours=2), "names": ["badges"]},
            {"at": _now() - timedelta(minutes=50), "names": ["bans"]}])
    assert facts.prune_changes(_now()) == 1
    with gate.engine.connect() as conn:
        assert conn.execute(sa.select(gate_fact_changes.c.names)).scalars().all() == [["bans"]]


def test_a_change_recorded_after_the_sweep_emptied_the_record_is_caught_up_on_sqlite(
        sqlite_database_url: str, redis_url: str) -> None:
    """On SQLite the record's numbers start again at 1 once the sweep has emptied it (no AUTOINCREMENT): a
    poll must still take every change recorded since, however they are numbered (6c4d6d4 went back to 0 only
    when the highest number was below what it had read: one change a night after a sweep went unseen,
    review 175 finding 2). PostgreSQL numbers from a sequence, which never starts again."""
    from quaygate.db import make_engine
    from quaygate.schema import gate_fact_changes

    engine = make_engine(sqlite_database_url)
    facts = RedisGateFacts.from_url(redis_url, engine, lambda: SqlUnitOfWork(engine))
    try:
        with engine.begin() as conn:
            conn.execute(gate_fact_changes.delete())
            conn.execute(gate_fact_changes.insert(), [{"at": _now(), "names": ["policy"]} for _ in range(3)])
        assert facts.catch_up() == 3
        for recorded in (1, 1, 3, 5):  # after each sweep that emptied the record: as many, fewer, more
            with engine.begin() as conn:
                conn.execute(gate_fact_changes.delete())
                conn.execute(gate_fact_changes.insert(), [{"at": _now(), "names": ["policy"]}
                                                          for _ in range(recorded)])
            assert facts.catch_up() == recorded  # before: 1, then 0 (numbered 1 again), 0, 2 (review 175)
            assert facts.catch_up() == 0  # taken once
    finally:
        facts.close()
        with engine.begin() as conn:
            conn.execute(gate_fact_changes.delete())
        engine.dispose()


@contextlib.contextmanager
def _stricter(gate: Gate, redis_url: str, **screening: Any) -> Iterator[tuple[sa.Engine, RedisGateFacts]]:
    """Another server on the same PostgreSQL and Redis whose screening settings are not this one's (a
    rollout that tightened QUAYGATE_BAN_LIST_MAX_AGE, or configured the ban register)."""
    engine = sa.create_engine(gate.engine.url.render_as_string(hide_password=False), poolclass=sa.pool.NullPool)
    other = RedisGateFacts.from_url(redis_url, engine, lambda: SqlUnitOfWork(engine, **screening))
    try:
        yield engine, other
    finally:
        other.close()
        engine.dispose()


def _screened_by(engine: sa.Engine, facts: RedisGateFacts, gate: Gate, **screening: Any
                 ) -> tuple[ScreeningResult, ScreeningResult, int]:
    """The badge's screening as ``facts`` reads it from the copy in Redis, as PostgreSQL screens it under
    ``screening``, and the statements the read sent (none: from the copy)."""
    with Statements(engine) as sql:
        snapshot = facts.read(terminal=TERMINAL, request_id=str(uuid.uuid4()),
                              badge=BadgeRead("alfapass", gate.badge_number), containers=(), now=_now())
    with SqlUnitOfWork(engine, **screening) as uow:
        from_pg = uow.gate.screen(gate.p.driver, terminal=TERMINAL, now=_now())
    assert snapshot is not None
    return snapshot.screening, from_pg, sql.count


def test_a_badge_copy_is_screened_with_the_reading_servers_list_age_not_the_fillers(gate: Gate,
                                                                                    redis_url: str) -> None:
    """Review 169, finding 3: the screening settings were stored in each badge copy and used from there. A
    list issued 2 h ago; this server (24 h limit) fills the copy; a server whose limit is 1 h answered
    "clear" from the copy while PostgreSQL screens "unavailable" for it. Now each screens with its own."""
    gate.pickable(45)
    register, number, t = Register(), national_number(8), _now()
    set_national_id(gate.engine, gate.p.driver, number, pepper=PEPPER, now=t, actor="officer")
    load_feed(gate.engine, register.sign(snapshot(1, t - timedelta(hours=2), [])), key=register.public_key,
              pepper=PEPPER, now=t, max_feed_age=timedelta(days=1))
    assert _check(gate, 45)["screening"] == "clear"  # the copy filled under a 24 h limit
    strict = {"ban_list_max_age": timedelta(hours=1)}
    with _stricter(gate, redis_url, **strict) as (engine, other):
        assert _screened_by(engine, other, gate, **strict) == (ScreeningResult.UNAVAILABLE,) * 2 + (0,)
    assert _check(gate, 45)["screening"] == "clear"  # this server's own limit, on the same copy


def test_a_badge_copy_is_screened_as_the_reading_server_requires_a_list(gate: Gate, redis_url: str) -> None:
    """The same for ``required`` (a ban register configured): no list in force, a server that requires one
    screens the copy an unconfigured server filled "unavailable", as PostgreSQL does for it."""
    gate.pickable(46)
    assert _check(gate, 46)["screening"] == "clear"  # no register here: no list is no ban
    with _stricter(gate, redis_url, ban_list_required=True) as (engine, other):
        assert _screened_by(engine, other, gate, ban_list_required=True) == (ScreeningResult.UNAVAILABLE,) * 2 + (0,)


def test_held_invalidations_go_with_the_answer_or_at_the_end_of_the_block_and_stay_owed_on_failure(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """``holding``: what a thread commits in the block is invalidated with its ``remember``, in one round
    trip; without a ``remember``, when the block ends; never lost when Redis fails, but owed."""
    import redis

    from quaygate import invalidation

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]

    def generation(name: str) -> bytes | None:
        return facts._r.get(facts._p + "g:" + name)  # type: ignore[no-any-return]

    facts.bump(["r:HELD1", "r:HELD2"])
    before = generation("r:HELD1"), generation("r:HELD2")
    row = {"id": uuid.uuid4(), "terminal": TERMINAL, "request_id": "held-1", "fingerprint": "f",
           "response": {"decision": "allow"}, "decision": "allow", "release_id": None, "committed": True,
           "direction": "in"}
    trips = RoundTrips(facts, monkeypatch)
    with facts.holding():
        facts.committed({(invalidation.RIGHTS, "HELD1")})
        assert generation("r:HELD1") == before[0] and trips.sent == []  # held, not sent yet
        facts.remember(row)
        assert generation("r:HELD1") != before[0] and trips.sent == ["EVALSHA"]
    assert facts._r.get(facts._request_key(row)) is not None
    with facts.holding():
        facts.committed({(invalidation.RIGHTS, "HELD2")})  # no remember follows (an error, say)
        assert generation("r:HELD2") == before[1]
    assert generation("r:HELD2") != before[1] and facts.owed() == 0
    facts.committed({(invalidation.RIGHTS, "HELD2")})  # outside a block: at once, as before
    assert trips.sent == ["EVALSHA"] * 3

    def failing(*args: Any) -> Any:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(facts._line, "call", failing)
    with facts.holding():
        facts.committed({(invalidation.RIGHTS, "HELD3")})
        facts.remember({**row, "request_id": "held-2"})  # best effort: never raises
        assert facts.owed() == 1  # the invalidation is owed, sent before any copy is trusted again


def test_an_answer_redis_did_not_take_leaves_no_other_answer_under_the_id(gate: Gate,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A check kept in Redis by a call that timed out at this end (Redis ran it), then decided again
    from PostgreSQL and recorded there, whose ``remember`` Redis did not take either: Redis holds
    another decision under the id than PostgreSQL. Once Redis is back, PostgreSQL's answer is written
    there before any copy is trusted, so a retry is answered with it, never the other one (nor a new
    one decided on the cache, as it would be had the key merely been deleted)."""
    import redis

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    gate.pickable(41)
    for _ in range(3):
        body = {**gate.body(41), "mode": "check"}
        kept = gate.verify(body).json()  # kept in Redis; not drained into PostgreSQL yet
        # On a loaded machine the keep itself may outlast the client's Redis timeout (the very case below):
        # then this decision went to PostgreSQL too, and the set-up is tried again under a new request_id.
        with gate.engine.connect() as conn:
            if not conn.execute(sa.select(gate_decisions.c.id)
                                .where(gate_decisions.c.request_id == body["request_id"])).first():
                break
    key = facts._request_key({"terminal": body["terminal"], "request_id": body["request_id"]})
    assert kept["decision"] == "allow" and facts._r.get(key) is not None

    def down(*args: Any) -> Any:
        raise redis.TimeoutError("Timeout reading from socket")

    async def down_async(*args: Any) -> Any:
        raise redis.TimeoutError("Timeout reading from socket")

    with monkeypatch.context() as m:  # as if that keep's reply never came: decided from PostgreSQL
        m.setattr(facts._line, "run", down)
        m.setattr(facts._line, "call", down)
        m.setattr(facts._pipe, "run", down_async)
        recorded = gate.verify(body).json()
    assert recorded["decision"] == "allow" and recorded["decision_id"] != kept["decision_id"]
    assert facts._suspect and set(facts._unanswered) == {key}
    facts._down_until = 0.0  # Redis is back, the cooldown over
    assert gate.verify(body).json() == recorded  # the retry: PostgreSQL's decision
    assert not facts._suspect and not facts._unanswered
    facts.drain("test", block_ms=None)  # the kept one loses to PostgreSQL's under the unique key
    with gate.engine.connect() as conn:
        ids = conn.execute(sa.select(gate_decisions.c.id).where(gate_decisions.c.request_id == body["request_id"])
                           ).scalars().all()
    assert [str(i) for i in ids] == [recorded["decision_id"]]
    assert gate.verify(body).json() == recorded


def test_a_commit_on_the_loop_whose_remember_redis_did_not_take_is_never_trusted_away(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit decided on the event loop writes its move, then its ``remember`` (the right's
    invalidation and the answer, pipelined) times out. The move stands and is answered; the
    invalidation stays owed and failed, so no copy is trusted until Redis took it, and the answer is
    written back before one is: a check sees the right used, a retry gets the same answer."""
    import redis

    from release_service.adapters import gate_facts

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    gate.pickable(51)
    assert _check(gate, 51)["decision"] == "allow"  # the policy, the badge and the right's copy cached
    real = facts._pipe.run

    async def bump_lost(script: Any, keys: list[Any], args: list[Any]) -> Any:
        if script is gate_facts._BUMP:
            raise redis.TimeoutError("Timeout reading from socket")
        return await real(script, keys, args)

    trips = RoundTrips(facts, monkeypatch)
    body = gate.body(51, mode="commit")
    with monkeypatch.context() as m:
        m.setattr(facts._pipe, "run", bump_lost)
        moved = gate.verify(body).json()
    assert (moved["decision"], moved["committed"]) == ("allow", True)
    assert trips.where == ["loop"]  # the facts read on the loop: decided there
    name = f"r:{container(51)}"
    assert name in facts._owed and name in facts._failed and facts._suspect
    key = facts._request_key({"terminal": body["terminal"], "request_id": body["request_id"]})
    assert set(facts._unanswered) == {key}
    with gate.engine.connect() as conn:
        assert conn.execute(sa.select(releases.c.state).where(releases.c.id == uuid.UUID(moved["release_id"]))
                            ).scalar_one() == "gated_in"
    facts._down_until = 0.0  # Redis answers again, the cooldown over
    assert _check(gate, 51)["reasons"] == ["already_used"]  # the old copy was never trusted
    assert facts.owed() == 0 and not facts._failed and not facts._unanswered
    assert gate.verify(body).json() == moved


def test_a_commit_remembered_by_a_cancelled_caller_stays_owed(gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """``remember_async`` cancelled on its way (a stopping server): the invalidation it was sending is
    owed and failed, as for a send that timed out, never dropped."""
    import asyncio

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]

    async def cancelled(*args: Any) -> Any:
        raise asyncio.CancelledError

    monkeypatch.setattr(facts._pipe, "run", cancelled)
    row = {"id": uuid.uuid4(), "terminal": TERMINAL, "request_id": "cancelled-1", "fingerprint": "f",
           "response": {"decision": "allow"}, "decision": "allow", "release_id": None, "committed": True,
           "direction": "in"}
    with pytest.raises(asyncio.CancelledError):
        run_async(facts.remember_async, row, ["CANC0000001"])
    assert "r:CANC0000001" in facts._owed and "r:CANC0000001" in facts._failed


def test_a_move_whose_connection_was_lost_after_it_landed_is_answered_once_and_invalidated(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's move statement landed, then its connection was lost before the reply: whether it was
    written is unknown there. Its invalidation was owed before it was sent (another request's send
    took it on the way, before the move landed) and is owed again and failed now (no copy trusted);
    the worker threads' way settles the commit under its request_id, finding the decision written, and
    sends it: the gate gets that one answer, the right is used once, and nothing stays failed."""
    from release_service.adapters.sqla.gate_loop import LoopGateUnit
    from release_service.ports import LoopUnavailable

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    rid = gate.pickable(53)
    assert _check(gate, 53)["decision"] == "allow"
    real = LoopGateUnit.record_move
    failed: list[set[str]] = []

    async def landed_then_lost(unit: LoopGateUnit, *args: Any) -> bool:
        facts._send(())  # another request's send meanwhile, before the move landed: it takes what is owed
        assert await real(unit, *args)
        failed.append(set(facts._failed))
        raise LoopUnavailable("the connection was lost before the reply")

    monkeypatch.setattr(LoopGateUnit, "record_move", landed_then_lost)
    from release_service.services import verify as verify_service

    settle = verify_service.verify

    def on_threads(*args: Any, **kw: Any) -> Any:
        failed.append(set(facts._failed))
        return settle(*args, **kw)

    monkeypatch.setattr(verify_service, "verify", on_threads)
    body = gate.body(53, mode="commit")
    moved = gate.verify(body).json()
    assert (moved["decision"], moved["committed"], moved["release_id"]) == ("allow", True, str(rid))
    # While it was sent, owed but not failed; once its outcome was unknown, failed till Redis took it.
    assert failed == [set(), {f"r:{container(53)}"}]
    assert not facts._failed and facts.owed() == 0  # sent by the worker threads' remember
    monkeypatch.undo()
    assert gate.verify(body).json() == moved
    assert _check(gate, 53)["reasons"] == ["already_used"]
    with gate.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)
                            .where(gate_decisions.c.request_id == body["request_id"])).scalar_one() == 1
        assert conn.execute(sa.select(releases.c.version).where(releases.c.id == rid)).scalar_one() >= 1


@pytest.fixture
def thread_gate(pg_engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[Gate]:
    """Commits decided on the worker threads only (``gate_commit_on_loop`` off)."""
    yield from _serve(pg_engine, tmp_path, redis_url, gate_commit_on_loop=False)


def test_a_threads_move_whose_connection_was_lost_after_it_landed_is_invalidated(
        thread_gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the worker threads (a face image, the loop off or busy): the one move statement landed, then
    the connection was lost before the reply. The gate is refused (503: the outcome unknown here) and
    retries; the retry is answered from the record, and no check is ever answered from the copy of the
    right before its gate-in (its invalidation was owed before the statement went, and failed)."""
    from release_service.adapters.sqla.gate import SqlGateStore

    gate = thread_gate
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    rid = gate.pickable(61)
    assert _check(gate, 61)["decision"] == "allow"  # the right's copy, before its gate-in, cached
    real = SqlGateStore.record_move

    def landed_then_lost(store: SqlGateStore, *args: Any) -> bool:
        assert real(store, *args)
        raise sa.exc.OperationalError("WITH moved AS (...)", {}, Exception("server closed the connection"),
                                      connection_invalidated=True)

    monkeypatch.setattr(SqlGateStore, "record_move", landed_then_lost)
    body = gate.body(61, mode="commit")
    lost = gate.verify(body)
    assert lost.status_code == 503 and lost.json()["code"] == "service_unavailable"
    assert set(facts._failed) == {f"r:{container(61)}"}  # no copy of it trusted till Redis took it
    monkeypatch.undo()
    assert _check(gate, 61)["reasons"] == ["already_used"]
    again = gate.verify(body).json()
    assert (again["decision"], again["committed"], again["release_id"]) == ("allow", True, str(rid))
    assert _check(gate, 61)["reasons"] == ["already_used"]
    assert not facts._failed


def test_a_moving_block_that_raises_leaves_its_invalidation_failed(gate: Gate) -> None:
    """``moving``: a move statement whose outcome is unknown (its caller cancelled, say) leaves the
    right's invalidation owed and failed, as a send that timed out does: no copy is trusted until it
    was sent."""
    import asyncio

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    with facts.moving(["MOVE0000001"]):
        assert "r:MOVE0000001" in facts._owed and not facts._failed  # owed before the statement goes
    assert "r:MOVE0000001" in facts._owed and not facts._failed  # went well: owed, for the next send
    with pytest.raises(asyncio.CancelledError), facts.moving(["MOVE0000002"]):
        facts._send(())  # taken on the way, before the statement's outcome is known
        assert "r:MOVE0000002" not in facts._owed
        raise asyncio.CancelledError
    assert "r:MOVE0000002" in facts._owed and set(facts._failed) == {"r:MOVE0000002"}
    facts._send(())  # the next send takes it, and nothing stays failed
    assert not facts._failed and facts.owed() == 0


def test_a_loop_connection_the_database_dropped_sends_the_commit_to_a_worker_thread(gate: Gate) -> None:
    """The database ended the loop's idle connection (a restart, a failover): the next commit's first
    statement finds it lost, nothing is written on it, and the commit is settled on the worker threads."""
    for n in (54, 55):
        gate.pickable(n)
    assert _check(gate, 54)["decision"] == "allow"  # the policy and the badge cached
    loop = gate.http.app.state.metrics.gate_commits["loop"]  # type: ignore[attr-defined]
    assert gate.verify(gate.body(54, mode="commit")).json()["committed"] is True
    assert loop._value.get() == 1  # on the loop
    with gate.engine.connect() as conn:
        ended = conn.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'quaygate-loop'")).scalar_one()
    assert ended >= 1
    metrics = gate.http.app.state.metrics.gate_commits  # type: ignore[attr-defined]
    threads = metrics["threads"]._value.get()
    moved = gate.verify(gate.body(55, mode="commit")).json()
    assert (moved["decision"], moved["committed"]) == ("allow", True)
    assert metrics["threads"]._value.get() == threads + 1
    assert gate.verify(gate.body(55, mode="check")).json()["reasons"] == ["already_used"]


def test_a_commit_the_loop_has_no_connection_for_is_decided_on_a_worker_thread(gate: Gate) -> None:
    """Every connection of the loop's busy past its wait: nothing sent on the loop, and the commit is
    decided and written on the worker threads, once."""
    from quaygate.loopdb import LoopDatabase
    from release_service.adapters.sqla.gate_loop import LoopGateDatabase

    state = gate.http.app.state  # type: ignore[attr-defined]
    portal = gate.http.portal  # type: ignore[attr-defined]
    db = LoopDatabase(gate.engine, size=1, wait=0.2)
    portal.call(db.open)
    state.gate_db = LoopGateDatabase(db)
    held = portal.call(db._pool.getconn)  # the only connection, taken
    try:
        gate.pickable(52)
        assert _check(gate, 52)["decision"] == "allow"
        with Statements(gate.engine) as sql:
            moved = gate.verify(gate.body(52, mode="commit")).json()
        assert (moved["decision"], moved["committed"]) == ("allow", True)
        assert sql.count >= 2 and db.stats().get("requests_errors", 0) == 1  # the loop's wait timed out
        assert _check(gate, 52)["reasons"] == ["already_used"]
    finally:
        portal.call(db._pool.putconn, held)
        portal.call(db.close)


def test_while_the_database_refuses_new_connections_one_commit_waits_for_the_loop_and_the_rest_do_not(
        gate: Gate) -> None:
    """The database takes no new connection (``max_connections`` reached, say), and the loop's pool has
    none open: the first commit waits the pool's wait out, the pool rests, and the next commits go to
    the worker threads' open connections without asking it. Each is decided and written once."""
    from quaygate.loopdb import LoopDatabase
    from release_service.adapters.sqla.gate_loop import LoopGateDatabase

    state = gate.http.app.state  # type: ignore[attr-defined]
    portal = gate.http.portal  # type: ignore[attr-defined]
    db = LoopDatabase(gate.engine, size=1, wait=0.2, rest=3600.0)
    portal.call(db.open)
    state.gate_db = LoopGateDatabase(db)
    metrics = state.metrics.gate_commits
    try:
        for n in (56, 57, 58):
            gate.pickable(n)
        assert _check(gate, 56)["decision"] == "allow"  # the policy and the badge cached
        loop, threads = metrics["loop"]._value.get(), metrics["threads"]._value.get()
        with refusing_connections(gate.engine):
            answers = [gate.verify(gate.body(n, mode="commit")).json() for n in (56, 57, 58)]
            asked = db.stats().get("requests_num", 0)
        assert [(a["decision"], a["committed"]) for a in answers] == [("allow", True)] * 3
        assert asked == 1 and db.stats().get("requests_errors", 0) == 1  # only the first asked, and waited
        assert (metrics["loop"]._value.get() - loop, metrics["threads"]._value.get() - threads) == (0, 3)
        assert [_check(gate, n)["reasons"] for n in (56, 57, 58)] == [["already_used"]] * 3
    finally:
        portal.call(db.close)


def test_a_commit_the_database_cannot_take_is_a_503_problem_and_a_check_is_still_answered(gate: Gate) -> None:
    """PostgreSQL takes no connection at all (none open in the app's pools): a commit is refused 503
    ``service_unavailable`` with Retry-After (problem JSON, nothing written), a check is still decided
    on the cached facts, and the same commit sent again once the database is back uses the right."""
    from quaygate.loopdb import LoopDatabase
    from release_service.adapters.sqla.gate_loop import LoopGateDatabase

    state = gate.http.app.state  # type: ignore[attr-defined]
    portal = gate.http.portal  # type: ignore[attr-defined]
    db = LoopDatabase(gate.engine, size=1, wait=0.2, rest=3600.0)
    portal.call(db.open)
    state.gate_db = LoopGateDatabase(db)
    try:
        gate.pickable(59)
        assert _check(gate, 59)["decision"] == "allow"  # the policy, the badge and the right cached
        body = gate.body(59, mode="commit")
        with refusing_connections(gate.engine):
            state.container.engine.dispose()  # the worker threads' pool: nothing open
            refused = gate.verify(body)
            checked = _check(gate, 59)
        assert refused.status_code == 503 and refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "service_unavailable" and refused.headers["retry-after"] == "1"
        assert checked["decision"] == "allow"
        with gate.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)
                                .where(gate_decisions.c.request_id == body["request_id"])).scalar_one() == 0
        again = gate.verify(body).json()
        assert (again["decision"], again["committed"]) == ("allow", True)
        assert _check(gate, 59)["reasons"] == ["already_used"]
    finally:
        portal.call(db.close)


@pytest.mark.parametrize("fails", [2, 1000])
def test_close_goes_on_sending_what_redis_has_not_taken_for_a_few_seconds(
        gate: Gate, monkeypatch: pytest.MonkeyPatch, fails: int) -> None:
    """A CLI's write has no drainer to send its invalidation later: ``close`` tries again while Redis
    refuses for a moment, and counts as lost (``undelivered``, the CLI says so) only what it still could
    not send after CLOSE_GRACE seconds."""
    import redis

    from release_service.adapters import gate_facts

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    facts._owing(["r:CLOSE000001"])  # a commit's invalidation Redis did not take
    real = facts._line.run
    tries: list[int] = []

    def refusing(script: Any, keys: Any, args: Any) -> Any:
        tries.append(1)
        if len(tries) <= fails:
            raise redis.ConnectionError("Redis is failing over")
        return real(script, keys, args)

    monkeypatch.setattr(facts._line, "run", refusing)
    monkeypatch.setattr(facts, "CLOSE_GRACE", 0.5)
    before = gate_facts.undelivered()
    facts.close()
    if fails == 2:
        assert (len(tries), facts.owed(), gate_facts.undelivered() - before) == (3, 0, 0)
    else:
        assert 3 <= len(tries) < 1000 and facts.owed() == 1 and gate_facts.undelivered() - before == 1


def test_answers_redis_did_not_take_are_written_in_batches_and_tried_once_more_at_close(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many answers kept through an outage go back a batch per round trip (one large write could outlast
    the timeout every time, and the cache would never come back); a batch Redis took is forgotten, the
    rest stay for the next try; what is left at close gets one more try."""
    import redis

    from release_service.adapters import gate_facts

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    monkeypatch.setattr(gate_facts, "_FILL_BATCH", 2)
    answers = {f"{facts._p}req:test:{i}": f"answer {i}".encode() for i in range(5)}
    facts._unanswered.update(answers)
    line_run, runs = facts._line.run, []

    def second_fails(*args: Any) -> Any:
        runs.append(1)
        if len(runs) == 2:
            raise redis.TimeoutError("Timeout reading from socket")
        return line_run(*args)

    monkeypatch.setattr(facts._line, "run", second_fails)
    with pytest.raises(redis.TimeoutError):
        facts._write_unanswered()
    assert len(facts._unanswered) == 3 and all(facts._r.get(k) == v for k, v in list(answers.items())[:2])
    facts._write_unanswered()
    assert not facts._unanswered and all(facts._r.get(k) == v for k, v in answers.items())
    assert len(runs) == 2 + 2  # five in batches of two: one taken, one failed; then the last three
    facts._r.delete(*answers)
    facts._unanswered.update(answers)
    facts.close()
    assert not facts._unanswered and all(facts._r.get(k) == v for k, v in answers.items())


def test_held_blocks_nest_and_an_answer_that_cannot_be_built_loses_no_invalidation(gate: Gate) -> None:
    """An inner ``holding`` gives the outer one back when it ends; a ``remember`` that fails before it
    sends anything leaves what is held to be sent when the block ends."""
    from quaygate import invalidation

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]

    def generation(name: str) -> bytes | None:
        return facts._r.get(facts._p + "g:" + name)  # type: ignore[no-any-return]

    facts.bump(["r:NEST1", "r:NEST2", "r:NEST3"])
    before = {n: generation(n) for n in ("r:NEST1", "r:NEST2", "r:NEST3")}
    with facts.holding():
        with facts.holding():
            facts.committed({(invalidation.RIGHTS, "NEST1")})
        assert generation("r:NEST1") != before["r:NEST1"]  # the inner block's, sent when it ended
        facts.committed({(invalidation.RIGHTS, "NEST2")})
        assert generation("r:NEST2") == before["r:NEST2"]  # held by the outer block again
    assert generation("r:NEST2") != before["r:NEST2"]
    with pytest.raises(KeyError), facts.holding():
        facts.committed({(invalidation.RIGHTS, "NEST3")})
        facts.remember({})  # no request_id: its answer cannot be built
    assert generation("r:NEST3") != before["r:NEST3"] and facts.owed() == 0


def test_a_name_asked_for_again_while_it_is_sent_stays_owed_and_the_drainer_recovers(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads invalidate the same copy: one's send is under way when the other's fails. The first
    send cannot cover a commit that came after it was made, so the name stays owed; and once Redis is
    back, the drainer's loop (``flush_owed``) sends it and replaces every generation, with no gate
    request needed."""
    import threading

    import redis

    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    facts.bump(["r:RACE"])
    first = facts._r.get(facts._p + "g:r:RACE")
    line = facts._line
    real = line.run
    main = threading.current_thread()

    def run(script: Any, keys: Any, args: Any) -> Any:
        if threading.current_thread() is not main:
            raise redis.ConnectionError("this thread's connection is gone")
        other = threading.Thread(target=facts.bump, args=(["r:RACE"],))  # a commit on it, meanwhile
        other.start()
        other.join()
        return real(script, keys, args)

    facts._owed["r:RACE"] = 0
    monkeypatch.setattr(line, "run", run)
    facts.flush_owed()
    monkeypatch.setattr(line, "run", real)
    assert facts.owed() == 1 and facts._suspect  # the later commit's invalidation is still owed
    facts._down_until = 0.0  # the breaker's cooldown over
    facts.flush_owed()
    assert facts.owed() == 0 and not facts._suspect
    assert facts._r.get(facts._p + "g:r:RACE") != first
    assert facts._r.get(facts._p + "g:badges") is not None  # every family replaced (``_recover``)


def test_every_change_to_a_right_is_seen_by_the_next_decision(gate: Gate) -> None:
    rid = gate.pickable(2)
    assert _check(gate, 2)["decision"] == "allow"
    r = gate.http.put(f"/api/v1/releases/{rid}/lights/customs", json={"status": "red"}, headers=gate.as_("customs"))
    assert r.status_code == 200, r.text
    assert _check(gate, 2)["reasons"] == ["customs_hold"]
    r = gate.http.put(f"/api/v1/releases/{rid}/lights/customs", json={"status": "green", "reason": "documents cleared"},
                      headers=gate.as_("customs"))
    assert r.status_code == 200, r.text
    assert _check(gate, 2)["decision"] == "allow"
    committed = gate.verify(gate.body(2, mode="commit")).json()
    assert committed["committed"] is True
    assert _check(gate, 2)["reasons"] == ["already_used"]  # the gate-in committed by the verify itself


def test_a_gate_in_over_a_pending_transfer_cancels_it_and_the_cache_follows(either_gate: Gate) -> None:
    """On the loop the one-statement move cannot write the transfer: the commit goes to the worker
    threads, which save it with the move; either way the cached right is invalidated with it."""
    a_pending_transfer_is_cancelled_by_the_gate_in(either_gate, 3)
    assert _check(either_gate, 3)["reasons"] == ["already_used"]


def test_badge_office_changes_are_seen_by_the_next_decision(gate: Gate) -> None:
    gate.pickable(3)
    assert _check(gate, 3)["decision"] == "allow"
    badges_service = BadgeService(gate.engine)
    badge_id = _badge_id(gate)
    badges_service.withdraw(badge_id, TERMINAL, reason="desk", actor="officer", now=_now())
    assert _check(gate, 3)["reasons"] == ["badge_not_activated_here"]
    badges_service.activate(badge_id, TERMINAL, actor="officer", now=_now())
    assert _check(gate, 3)["decision"] == "allow"
    badges_service.change_status(badge_id, "blocked", reason="stolen", actor="officer", now=_now())
    got = _check(gate, 3, mode="commit")
    assert (got["decision"], got["reasons"], got["committed"]) == ("deny", ["badge_blocked"], False)


def test_a_ban_feed_and_a_national_number_are_seen_by_the_next_decision(gate: Gate) -> None:
    gate.pickable(4)
    register = Register()
    number = national_number(7)
    t = _now()
    load_feed(gate.engine, register.sign(snapshot(1, t, [])), key=register.public_key, pepper=PEPPER, now=t,
              max_feed_age=timedelta(days=1))
    # The driver has no national number on file: the register cannot name him, so he is not screened clear.
    assert _check(gate, 4)["screening"] == "unavailable"
    set_national_id(gate.engine, gate.p.driver, number, pepper=PEPPER, now=_now(), actor="officer")
    assert _check(gate, 4)["screening"] == "clear"
    load_feed(gate.engine, register.sign(snapshot(2, t, [ban(number, "R-7", start=t - timedelta(days=1))])),
              key=register.public_key, pepper=PEPPER, now=t,
              max_feed_age=timedelta(days=1))
    got = _check(gate, 4, mode="commit")
    assert (got["screening"], got["committed"]) == ("banned", False)
    assert "person_banned" in got["reasons"]


def test_a_terminal_policy_change_is_seen_by_the_next_decision(gate: Gate) -> None:
    gate.pickable(5)
    assert _check(gate, 5)["decision"] == "allow"
    _require_face(gate.engine, commit=True)
    assert _check(gate, 5)["reasons"] == ["face_required"]


def test_a_copy_filled_while_a_change_committed_is_never_read(gate: Gate) -> None:
    """The race the generations exist for: a reader fetched the old right from PostgreSQL, a write
    committed and invalidated, then the reader stored its old copy. It must stay unread."""
    rid = gate.pickable(6)
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    raw = facts._r  # the reader's late store goes straight to Redis
    assert _check(gate, 6)["decision"] == "allow"
    stale = {k: raw.get(k) for k in raw.scan_iter(match=f"qg:gate:r:{container(6)}:*")}
    assert len(stale) == 1
    r = gate.http.post(f"/api/v1/releases/{rid}/block", headers=gate.as_("line"), json={"reason": "fraud"})
    assert r.status_code == 200, r.text
    for key, value in stale.items():  # the slow reader's store lands after the commit
        raw.set(key, value, ex=600)
    assert _check(gate, 6)["reasons"] == ["right_blocked"]


def test_a_rolled_back_change_invalidates_nothing_and_decides_the_same(gate: Gate) -> None:
    gate.pickable(8)
    assert _check(gate, 8)["decision"] == "allow"
    _require_face(gate.engine, commit=False)
    with Statements(gate.engine) as sql:
        assert _check(gate, 8)["decision"] == "allow"
    assert sql.count == 0


# ---- Redis away --------------------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A Redis of this test's own (stopping the shared one would stop every other test)."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def start() -> subprocess.Popen[bytes]:
        return processes.start(argv, cwd=tmp_path, log=tmp_path / "redis.log", ready=processes.listens(port),
                               what="redis-server", timeout=5)

    state: dict[str, Any] = {"url": f"redis://127.0.0.1:{port}/0", "start": start, "proc": start()}
    yield state
    state["proc"].kill()
    state["proc"].wait()


def test_with_redis_stopped_decisions_come_from_postgresql_and_stay_right(
        pg_engine: sa.Engine, tmp_path: Path, redis_url: str, private_redis: dict[str, Any]) -> None:
    for gate in _serve(pg_engine, tmp_path, redis_url):
        facts = RedisGateFacts.from_url(private_redis["url"], gate.engine, lambda: SqlUnitOfWork(gate.engine))
        gate.http.app.state.container.gate_facts = facts  # type: ignore[attr-defined]
        gate.pickable(1)
        gate.pickable(2)
        assert _check(gate, 1)["decision"] == "allow" and _check(gate, 2)["decision"] == "allow"  # cached

        held = {k: facts._r.get(k) for k in facts._r.scan_iter(match="qg:gate:*") if facts._r.type(k) == b"string"}
        private_redis["proc"].kill()
        private_redis["proc"].wait()
        # A check on facts this process remembers: its keep, pipelined on the loop, fails; it is decided
        # from PostgreSQL instead (never a 500), and the breaker trips.
        assert facts.recall(terminal=TERMINAL, badge=None, containers=[container(2)], now=_now()) is not None
        got = _check(gate, 2)
        assert got["decision"] == "allow" and facts._suspect
        # The badge is blocked while Redis is away: its invalidation cannot be sent.
        BadgeService(gate.engine).change_status(_badge_id(gate), "blocked", reason="stolen", actor="o", now=_now())
        for n in (1, 2):
            got = _check(gate, n, mode="commit")
            assert (got["decision"], got["reasons"], got["committed"]) == ("deny", ["badge_blocked"], False)
        with gate.engine.connect() as conn:  # decided from PostgreSQL, and recorded there
            assert conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)).scalar_one() == 3

        # Redis comes back holding what it held (as a paused or partitioned one would): the old copies.
        private_redis["proc"] = private_redis["start"]()
        import redis

        back = redis.Redis.from_url(private_redis["url"])
        for k, v in held.items():
            back.set(k, v)
        back.close()
        facts._down_until = 0.0  # the breaker's cooldown, over
        got = _check(gate, 1)
        assert (got["decision"], got["reasons"]) == ("deny", ["badge_blocked"]), got
        facts.close()


def _count_revocation_reads(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The keys of every read of token revocation entries on their own (``RedisCache.get_many``). Not the
    key set's and the client registry's looks at their epochs (``DATASET_EPOCH`` read with theirs), which
    each process makes at most once a second whatever the token: on a slow run one fell within the counted
    check (CI, 2026-11-25: [['dataset:epoch', 'identity:keys-epoch']])."""
    asked: list[list[str]] = []
    original = RedisCache.get_many

    def counted(self: RedisCache, keys: list[str]) -> list[bytes | None]:
        if DATASET_EPOCH not in keys:
            asked.append(keys)
        return original(self, keys)

    monkeypatch.setattr(RedisCache, "get_many", counted)
    return asked


def test_a_revoked_gate_token_is_refused_on_the_cached_path_read_with_the_facts(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token's revocation entries are read by the facts' own script (one round trip, no MGET of
    their own): a token revoked (RFC 7009) after its check was cached is refused at once, a replayed
    request_id included, and a good token's cached check never asks the cache separately."""
    gate.pickable(4)
    client_id, secret, token = _lane_client(gate, "lane 4")
    body = gate.body(4)
    assert gate.verify(gate.body(4), token).json()["decision"] == "allow"  # the facts are cached now

    asked = _count_revocation_reads(monkeypatch)
    with Statements(gate.engine) as sql:
        first = gate.verify(body, token)
    assert first.status_code == 200 and first.json()["decision"] == "allow"
    assert sql.count == 0 and asked == [], "the cached check asked for its token's revocation separately"
    remembered = auth._actors.get(token)  # the token's actor, made once and kept (api/auth.py)
    assert remembered is not None and gate.verify(gate.body(4), token).status_code == 200
    assert auth._actors.get(token) is remembered

    revoked = gate.http.post("/oauth2/revoke", data={"token": token, "token_type_hint": "access_token"},
                             auth=(client_id, secret or ""))
    assert revoked.status_code == 200
    after = gate.body(4)
    refused = gate.verify(after, token)
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_token", refused.text
    assert "revoked" in refused.json()["detail"]
    replay = gate.verify(body, token)  # the recorded request_id is not replayed to a revoked token
    assert replay.status_code == 401, replay.text
    elsewhere = gate.verify({**gate.body(4), "terminal": "BEANR-OTHER"}, token)  # revoked first, whatever it names
    assert elsewhere.status_code == 401 and elsewhere.json()["code"] == "invalid_token", elsewhere.text
    assert gate.verify({**gate.body(4), "terminal": "BEANR-OTHER"}).status_code == 403  # a live token: not its gate
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    facts.drain("test", block_ms=None)
    with gate.engine.connect() as conn:  # nothing decided for the revoked token
        assert conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)
                            .where(gate_decisions.c.request_id == after["request_id"])).scalar_one() == 0
    assert gate.verify(gate.body(4)).status_code == 200  # the terminal's other gate token still works


def test_a_token_revoked_before_redis_lost_its_data_stays_revoked(gate: Gate) -> None:
    """Redis restarted empty (it keeps nothing on disk), was flushed, or failed over to an empty replica.
    Every API that looks a token's revocation up reads the list's ``LOADED`` mark with it, and loads the
    list again from the database before it judges: refused at once. The gate, which reads a token's
    entries in its own round trip, has the list loaded again by a watch within about a second: then
    refused too, a check as a commit."""
    import time

    import redis

    from identity.grants import RevocationList, revocations_for

    client_id, secret, token = _lane_client(gate, "lane 63")
    gate.pickable(63)
    rid = gate.pickable(64)
    assert gate.verify(gate.body(63), token).json()["decision"] == "allow"
    assert gate.http.post("/oauth2/revoke", data={"token": token, "token_type_hint": "access_token"},
                          auth=(client_id, secret or "")).status_code == 200
    facts: RedisGateFacts = gate.facts  # type: ignore[attr-defined]
    flush = redis.Redis(connection_pool=facts._r.connection_pool).flushdb
    revocations = revocations_for(gate.http.app)  # type: ignore[attr-defined]
    cache = gate.http.app.state.container.cache  # type: ignore[attr-defined]

    flush()  # every key gone, as after a restart
    listed = gate.http.get("/api/v1/releases", headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 401 and listed.json()["code"] == "invalid_token", listed.text
    assert cache.get(RevocationList.LOADED) is not None  # loaded again, before the token was judged

    flush()
    revocations._next_watch = 0.0  # the watch is due
    gate.verify(gate.body(64), token)  # judged on the entries read with the facts; starts the watch
    deadline = time.monotonic() + 10
    while cache.get(RevocationList.LOADED) is None:
        assert time.monotonic() < deadline, "the revocations were never loaded again"
        time.sleep(0.02)
    for mode in ("check", "commit"):
        refused = gate.verify(gate.body(64, mode=mode), token)
        assert refused.status_code == 401 and refused.json()["code"] == "invalid_token", refused.text
    assert gate.state(rid) == "nominated"
    assert gate.verify(gate.body(64, mode="commit")).json()["committed"] is True  # the gate's own token


def test_a_commit_reads_its_tokens_revocation_with_the_facts_and_a_revoked_token_moves_nothing(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit's revocation entries come with its facts (the service's first read, ``admit``), not in
    a round trip of their own; a token revoked before the commit is refused before anything is decided
    or written: the right stays nominated and no decision is recorded."""

    client_id, secret, token = _lane_client(gate, "lane 5")
    gate.pickable(5)
    rid = gate.pickable(6)
    asked = _count_revocation_reads(monkeypatch)
    moved = gate.verify(gate.body(5, mode="commit"), token)
    assert moved.status_code == 200 and moved.json()["committed"] is True, moved.text
    assert asked == [], "the commit asked for its token's revocation separately"

    revoked = gate.http.post("/oauth2/revoke", data={"token": token, "token_type_hint": "access_token"},
                             auth=(client_id, secret or ""))
    assert revoked.status_code == 200
    refused = gate.verify(gate.body(6, mode="commit"), token)
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_token", refused.text
    assert gate.state(rid) == "nominated"
    with gate.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)
                            .where(gate_decisions.c.release_id == uuid.UUID(rid))).scalar_one() == 0


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "no-pipeline"])
def test_a_dpop_proof_at_the_gate_is_claimed_once_and_never_holds_the_event_loop(
        gate: Gate, monkeypatch: pytest.MonkeyPatch, pipelined: bool) -> None:
    """A DPoP-bound gate token (RFC 9449): its proof is used once, a check as a commit, the cached way
    included. Its single use is claimed without holding the event loop, where a Redis slow to answer
    would stall every lane's decision: on the gate facts' pipelined connection (no worker thread, no
    blocking call), or, where that connection cannot be used, on a worker thread."""
    import asyncio
    import time

    from joserfc import jws

    from identity.bootstrap import provider_for
    from identity.dpop import DPoPVerifier
    from identity.tokens import sign_access_token
    from release_service.adapters.gate_facts import RedisGateFacts

    from .test_identity_dpop_support import ProofKey

    key = ProofKey(clock=[time.time()])
    app = gate.http.app
    claims = json.loads(jws.extract_compact(gate.gate_token.encode()).payload)
    token = sign_access_token({**claims, "jti": uuid.uuid4().hex, "cnf": {"jkt": key.jkt}},
                              provider_for(app).keys.signing_key())
    on_loop: list[bool] = []
    piped: list[bool] = []
    claim, claim_async = DPoPVerifier.claim, RedisGateFacts.claim_async

    def watched(self: DPoPVerifier, single_use: tuple[str, int, float]) -> None:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        claim(self, single_use)

    async def watched_async(self: RedisGateFacts, keys: list[str], args: list[Any]) -> bool:
        first = await claim_async(self, keys, args)
        piped.append(first)
        return first

    monkeypatch.setattr(DPoPVerifier, "claim", watched)
    monkeypatch.setattr(RedisGateFacts, "claim_async", watched_async)
    if not pipelined:
        monkeypatch.setattr(gate.facts._pipe, "available", False)  # a Unix socket, Sentinel: no pipelining
    gate.pickable(71)
    htu = "http://localhost:8000/gate/v1/verify"
    for mode in ("check", "check", "commit"):  # the second check is answered from the cache
        proof = key.proof("POST", htu, token=token)
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
        first = gate.http.post("/gate/v1/verify", json=gate.body(71, mode=mode), headers=headers)
        assert first.status_code == 200 and first.json()["decision"] == "allow", first.text
        again = gate.http.post("/gate/v1/verify", json=gate.body(71, mode=mode), headers=headers)
        assert again.status_code == 401 and again.json()["code"] == "invalid_dpop_proof", again.text
    if pipelined:
        assert piped == [CLAIMED, CLAIMED_BEFORE] * 3 and on_loop == [], (piped, on_loop)
    else:
        assert on_loop == [False] * 6, on_loop


@pytest.fixture
def no_claims_url(redis_url: str) -> Iterator[str]:
    """``redis_url`` as a Redis user who may read every key and write every key but a DPoP proof's
    single use (``qg:dpop:*``): Redis answers that SET with an error (NOPERM), an error reply as a SET on a
    full Redis (OOM) or a read-only replica (READONLY). A user of its own, removed after the test."""
    import redis

    user, password = f"qg-no-claims-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    # Redis keys patterns only allow: every name but those under qg:dpop:, spelled as globs.
    writable = ["[^q]*", "q[^g]*", "qg[^:]*", "qg:[^d]*", "qg:d[^p]*", "qg:dp[^o]*", "qg:dpo[^p]*", "qg:dpop[^:]*"]
    admin = redis.Redis.from_url(redis_url)
    admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "+@all", "&*", "%R~*",
                          *(f"~{p}" for p in writable))
    try:
        yield redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


def test_a_proof_redis_will_not_claim_is_refused_and_trips_no_lane(
        pg_engine: sa.Engine, tmp_path: Path, no_claims_url: str) -> None:
    """Redis answers the claim of a DPoP proof's single use with an error (here NOPERM, a Redis user
    without the right to the key: a deployment's fault, not one that passes): that request is refused as
    problem JSON, a 500 that no adapter retries in a loop (review 67; a full Redis or a read-only replica,
    which pass, are 503s: tests/test_redis_memory.py), the proof never taken as unused, on the loop's
    pipelined connection and on the worker thread's. The gate facts' breaker is not tripped: the next
    lanes' checks are still answered from the cache, the gate facts' Redis being as sound as before."""
    import time

    from joserfc import jws

    from identity.bootstrap import provider_for
    from identity.tokens import sign_access_token

    from .test_identity_dpop_support import ProofKey

    for gate in _serve(pg_engine, tmp_path, no_claims_url):
        key = ProofKey(clock=[time.time()])
        claims = json.loads(jws.extract_compact(gate.gate_token.encode()).payload)
        token = sign_access_token({**claims, "jti": uuid.uuid4().hex, "cnf": {"jkt": key.jkt}},
                                  provider_for(gate.http.app).keys.signing_key())
        gate.pickable(72)
        assert _check(gate, 72)["decision"] == "allow"  # the facts cached
        for mode in ("check", "commit"):
            proof = key.proof("POST", "http://localhost:8000/gate/v1/verify", token=token)
            refused = gate.http.post("/gate/v1/verify", json=gate.body(72, mode=mode),
                                     headers={"Authorization": f"DPoP {token}", "DPoP": proof})
            assert refused.status_code == 500, refused.text
            assert refused.json()["code"] == "internal_error" and "Retry-After" not in refused.headers
            assert refused.headers["content-type"] == "application/problem+json"
        assert not gate.facts._suspect and gate.facts._down_until < time.monotonic()
        with gate.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)).scalar() == 0
        assert _check(gate, 72)["decision"] == "allow"



def test_a_redis_started_again_from_an_older_snapshot_loses_no_revocation(
        pg_engine: sa.Engine, private_redis: dict[str, Any]) -> None:
    """Redis saves a snapshot; a token is revoked; Redis is killed and started again from the snapshot
    (as with RDB persistence, or a failover to a replica that had not got the last writes: a server
    whose run_id is not the one the data was last served by). The revocation's entry is lost while the
    snapshot says the list was loaded. The first connection made to that server drops the mark before it
    is used, and the list is loaded again from the database before the token is judged: still revoked.
    (The gate facts replace every generation before they trust a copy again when a call of theirs fails,
    when their process starts, and when their pipelined connection, made anew without a failure, is
    greeted under another dataset: tests/test_dataset_loss.py.)"""
    import redis

    from identity.grants import RevocationList

    cache = RedisCache(private_redis["url"])
    revocations = RevocationList(cache, follow=pg_engine)
    now = _now()
    revocations.reload(pg_engine, now=now)
    jti = f"after-the-snapshot-{uuid.uuid4().hex}"
    admin = redis.Redis.from_url(private_redis["url"])
    admin.save()
    admin.close()
    with pg_engine.begin() as conn:
        revocations.add(conn, [(jti, now + timedelta(hours=1))], now=now)
    assert revocations.is_revoked(jti)
    private_redis["proc"].kill()
    private_redis["proc"].wait()
    private_redis["proc"] = private_redis["start"]()
    for _ in range(3):  # the connection the old server had, failed (a 503 to that caller); then a new one
        try:
            revoked = revocations.is_revoked(jti)
            break
        except redis.ConnectionError:
            continue
    assert revoked
    assert cache.get(RevocationList.LOADED) is not None  # loaded again

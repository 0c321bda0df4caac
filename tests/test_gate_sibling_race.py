"""A change to another right of the container, committed while a gate commit decides (review 174, finding 2).

A gate commit reads the container's rights unlocked, decides on all of them, and writes its move only if
the right it judged is still at the version it read (adapters/sqla/gate_move.py). The decision also rests
on the other rights of the container: customs' hold on one of them holds every right of the container
(``gate.container_held``), and another line's live right on it puts the gate-in under review
(``gate.container_contested``). A hold set on the container's other right, or another line's right issued
on the container, between the commit's read and its write changed neither the judged right nor its version:
the move was written, allow and gated_in, and the same truck a moment later was denied [already_used,
customs_hold]. Now the move is written only if the container's rights are still those read, each at the
version read (none new, none gone): else nothing is written and the commit reads and decides again.

Each test pauses the commit just after it read the container's rights (on the worker threads, and on the
event loop's connections: ``committing``), and lets the other change commit through the service that makes
it in production, then lets the commit go on. On PostgreSQL only: on SQLite a gate commit's transaction
takes the write lock (BEGIN IMMEDIATE) before it reads, so no other write commits between its read and its
write.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH, MAX_CACHED_STATEMENT_PARAMS

from quaygate import hotsql
from quaygate.schema import gate_decisions, releases
from release_service.adapters.sqla.gate_loop import LoopGateUnit
from release_service.adapters.sqla.store import SqlReleaseStore
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain.parties import OrgKind
from release_service.domain.release import LightKind, LightStatus
from release_service.services import issue, lifecycle
from release_service.services.common import run as run_use_case

from . import test_gate_facts
from .factories import add_org, issue_cmd, now
from .test_gate_customs_container_hold import _two_rights
from .test_gate_person_suspended import outcome, verify
from .test_gate_verify import Gate

HELD = {"decision": "deny", "reasons": ["customs_hold"], "committed": False}
CONTESTED = {"decision": "review", "reasons": ["container_contested"], "committed": False}


@pytest.fixture(params=["loop", "thread"])
def committing(request: pytest.FixtureRequest, pg_engine: sa.Engine, tmp_path: Any, redis_url: str
               ) -> Iterator[Gate]:
    """PostgreSQL and Redis, the gate's commits decided on the event loop or on the worker threads."""
    for served in test_gate_facts._serve(pg_engine, tmp_path, redis_url,
                                         gate_commit_on_loop=request.param == "loop"):
        served.commits_on = request.param  # type: ignore[attr-defined]
        yield served


def _after_the_read(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> list[str]:
    """``change`` run (and committed) once, just after a gate commit read its container's rights, before
    it writes: on the worker threads or on the loop. Every read of the rights is listed (thread/loop)."""
    reads: list[str] = []
    on_thread, on_loop = SqlReleaseStore.of_containers, LoopGateUnit.rights_of

    def read_then_change(self: SqlReleaseStore, containers: Any) -> Any:
        rights = on_thread(self, containers)
        reads.append("thread")
        if len(reads) == 1:
            change()
        return rights

    async def read_then_change_on_loop(self: LoopGateUnit, containers: Any) -> Any:
        rights = await on_loop(self, containers)
        reads.append("loop")
        if len(reads) == 1:
            change()
        return rights

    monkeypatch.setattr(SqlReleaseStore, "of_containers", read_then_change)
    monkeypatch.setattr(LoopGateUnit, "rights_of", read_then_change_on_loop)
    return reads


def _use_case(engine: sa.Engine, action: Callable[[Any], Any]) -> None:
    """A use case as the API runs it: one transaction, committed (services/common.run)."""
    run_use_case(SqlUnitOfWork(engine), action, lambda result: (200, None), idempotency=None, now=now())


def _decisions(gate: Gate, rid: str) -> list[tuple[str, bool]]:
    with gate.engine.connect() as conn:
        return [(r.decision, r.committed) for r in conn.execute(
            sa.select(gate_decisions.c.decision, gate_decisions.c.committed)
            .where(gate_decisions.c.release_id == uuid.UUID(rid)))]


@pytest.mark.parametrize("hold", ["scan", "red"])
def test_a_customs_hold_on_the_containers_other_right_during_a_commit_holds_the_truck(
        committing: Gate, monkeypatch: pytest.MonkeyPatch, hold: str) -> None:
    """The reviewer's interleaving: customs selects the container for scan on its first right while the
    commit on the second (nominated, green) is between its read and its write."""
    gate = committing
    first, second = _two_rights(gate, 41)
    assert verify(gate, 41)["decision"] == "allow"  # a check before: nothing holds it yet

    def customs_holds_the_first() -> None:
        _use_case(gate.engine, lambda uow: lifecycle.set_light(
            uow, gate.p.customs, uuid.UUID(first), LightKind.CUSTOMS, LightStatus(hold), "x-ray selection", now()))

    reads = _after_the_read(monkeypatch, customs_holds_the_first)
    got = verify(gate, 41, mode="commit")
    assert reads[0] == gate.commits_on  # type: ignore[attr-defined]
    assert outcome(got) == HELD and got["release_id"] == second, got
    assert gate.state(second) == "nominated"  # the right not used
    assert _decisions(gate, second) == [("deny", False)]  # the refusal only, no allow written
    assert outcome(verify(gate, 41, mode="commit")) == HELD  # the same truck a moment later: still the hold


def test_another_lines_right_issued_during_a_commit_puts_the_gate_in_under_review(
        committing: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's suspicion, proved: another line issues the container (another vessel call) at this
    terminal while the commit on the real line's right is between its read and its write. Its issue
    changes no row of the real line's right, so the version guard alone let the truck in."""
    gate = committing
    real = gate.pickable(42)
    rogue = add_org(gate.engine, OrgKind.SHIPPING_LINE)
    assert verify(gate, 42)["decision"] == "allow"  # a check before (the badge and policy cached: the loop's)

    def another_line_issues() -> None:
        _use_case(gate.engine, lambda uow: issue.issue(
            uow, rogue, issue_cmd(gate.p, 42, vessel_call="VC-9", to=gate.p.haul.organisation_id), now()))

    reads = _after_the_read(monkeypatch, another_line_issues)
    got = verify(gate, 42, mode="commit")
    assert reads[0] == gate.commits_on  # type: ignore[attr-defined]
    assert outcome(got) == CONTESTED and got["release_id"] == real, got
    assert gate.state(real) == "nominated"
    assert _decisions(gate, real) == [("review", False)]


def test_a_commit_with_no_change_to_its_container_meanwhile_is_written_at_once(
        committing: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """The container's other right read beside the judged one, unchanged, and a right of another container
    changed meanwhile: the move is written on the first read, as before."""
    gate = committing
    _, second = _two_rights(gate, 43)
    elsewhere = gate.pickable(44)
    assert verify(gate, 43)["decision"] == "allow"

    def another_container_changes() -> None:
        _use_case(gate.engine, lambda uow: lifecycle.set_light(
            uow, gate.p.customs, uuid.UUID(elsewhere), LightKind.CUSTOMS, LightStatus.SCAN, "x-ray", now()))

    reads = _after_the_read(monkeypatch, another_container_changes)
    got = verify(gate, 43, mode="commit")
    assert (got["decision"], got["reasons"], got["committed"], got["release_id"]) == ("allow", [], True, second), got
    assert reads == [gate.commits_on]  # type: ignore[attr-defined]  # read once: no second round
    assert gate.state(second) == "gated_in"
    with gate.engine.connect() as conn:
        assert conn.execute(sa.select(releases.c.customs_status)
                            .where(releases.c.id == uuid.UUID(elsewhere))).scalar_one() == "scan"


def test_the_gate_ins_one_statement_stays_one_psycopg_keeps_parsed(
        committing: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check of the container's rights is written short (gate_move.py ``_SAME_RIGHTS``): psycopg parses
    a statement of over 4 096 bytes or 50 parameters again on every call (half a millisecond of the hot
    commit). The plain gate-in's statement (one event, no offer to cancel, no audit entry of the row's)
    measured 3 935 bytes and 47 parameters with it (3 743 and 45 without)."""
    sent: list[tuple[int, int]] = []
    bound = hotsql.HotStatement._bound

    def measured(compiled: Any, params: Any) -> Any:
        out = bound(compiled, params)
        if compiled.sql.startswith("WITH moved AS"):
            sent.append((len(compiled.sql.encode()), len(out)))
        return out

    monkeypatch.setattr(hotsql.HotStatement, "_bound", staticmethod(measured))
    rid = committing.pickable(45)
    assert verify(committing, 45)["decision"] == "allow"
    got = verify(committing, 45, mode="commit")
    assert (got["committed"], committing.state(rid)) == (True, "gated_in")
    assert len(sent) == 1, sent
    length, params = sent[0]
    assert length <= MAX_CACHED_STATEMENT_LENGTH and params <= MAX_CACHED_STATEMENT_PARAMS, sent

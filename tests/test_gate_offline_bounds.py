"""Offline gate mode's work on the service side stays bounded, whatever a gate client sends or asks (SQLite
and PostgreSQL): an offline report stores only the published reason codes; ``GET /gate/v1/passes`` issues
gate-out passes only for rights gated in within the longest dwell, screens every driver in one statement
and carries at most ``MAX_PASSES``, the most relevant first."""
# ruff: noqa: F811 - ``gate`` is test_gate_verify's fixture, imported here and requested by name

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import ban_feed_state, persons, port_bans, releases
from release_service.domain import gate as g
from release_service.services import gate_passes

from .factories import add_driver
from .test_gate_offline import _post, _report, offline_rows, passes, payload
from .test_gate_verify import Gate, gate  # noqa: F401
from .test_release_api import assert_problem


def _now() -> datetime:
    return datetime.now(UTC)


def _set(gate: Gate, rid: str, **values: Any) -> None:
    with gate.engine.begin() as conn:
        conn.execute(releases.update().where(releases.c.id == uuid.UUID(rid)).values(**values))


def _subjects(gate: Gate) -> list[str]:
    r = passes(gate)
    assert r.status_code == 200, r.text
    return [payload(t)["sub"] for t in r.json()["passes"]]


# -- what an offline report stores ---------------------------------------------------------------------


def test_an_offline_report_stores_only_published_reason_codes_each_once(gate: Gate) -> None:
    """Reasons were any printable text, 40 of them: a deny (no pass needed) stored 8 MB per request_id."""
    gate.pickable(1)
    big = "x" * 200_000
    for reasons, refused in (
        (["face_required", big], ["body", "reasons", "1"]),  # not a reason code, however short or long
        (["face_required", "Face_Required"], ["body", "reasons", "1"]),
        (["face_required", "face_required"], ["body", "reasons"]),  # each at most once
        ([r.value for r in g.Reason] + ["face_required"], ["body", "reasons"]),
    ):
        got = _post(gate, _report(gate, 1, token=None, decision="deny", reasons=reasons))
        assert_problem(got, 422, "invalid_request")
        assert len(got.content) < 10_000  # the problem does not echo the text back
        assert any(e["loc"][:len(refused)] == refused for e in got.json()["errors"]), got.json()["errors"]
    assert offline_rows(gate) == []
    # Every published code, once each: taken and stored as sent.
    every = [r.value for r in g.Reason]
    got = _post(gate, _report(gate, 1, token=None, decision="deny", reasons=every))
    assert got.status_code == 200 and got.json()["verdict"] == "nothing_to_record", got.text
    (row,) = offline_rows(gate)
    assert row.reasons == every


# -- which passes, how many, how screened --------------------------------------------------------------


def test_a_right_gated_in_long_ago_gets_no_gate_out_pass_a_recent_one_does(gate: Gate) -> None:
    """A gated-in right never lapses: without a bound, one whose gate-out was never recorded had a pass at
    every fetch for good (QUAYGATE_GATE_PASS_MAX_DWELL, 12 hours by default)."""
    dwell = timedelta(seconds=gate.http.app.state.container.settings.gate_pass_max_dwell)  # type: ignore[attr-defined]
    assert dwell == timedelta(hours=12)
    rids = [gate.pickable(n) for n in (1, 2, 3)]
    for n in (1, 2, 3):
        got = gate.verify(gate.body(n, mode="commit")).json()
        assert got["committed"] is True, got
    forgotten, recent, inside = rids
    _set(gate, forgotten, gate_in_at=_now() - dwell - timedelta(minutes=5))  # its gate-out never recorded
    _set(gate, recent, gate_in_at=_now() - dwell + timedelta(minutes=30))
    nominated = gate.pickable(4)
    assert set(_subjects(gate)) == {recent, inside, nominated}
    assert gate.state(forgotten) == "gated_in"  # left as it is: only its pass is no longer issued


class _Statements:
    """The statements the engine runs that read ``table`` (a SQLAlchemy event on the real engine)."""

    def __init__(self, engine: sa.Engine, table: str) -> None:
        self.engine, self.table, self.seen = engine, table, 0

    def _count(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen += f" {self.table}" in statement or f'"{self.table}"' in statement

    def __enter__(self) -> _Statements:
        sa.event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._count)


def test_every_driver_is_screened_in_one_statement(gate: Gate) -> None:
    """One port-ban lookup per distinct driver, at every fetch of every adapter: now one statement for all,
    with the same answer per driver as the verify call's lookup."""
    drivers = [add_driver(gate.engine, gate.p.haul.organisation_id) for _ in range(4)]
    rids = [gate.pickable(n) for n in range(1, 6)]
    for rid, driver in zip(rids[1:], drivers, strict=True):
        _set(gate, rid, driver_person_id=driver)
    banned, unidentified = drivers[0], drivers[1]
    with gate.engine.begin() as conn:
        for n, pid in enumerate([gate.p.driver, *drivers]):
            if pid != unidentified:  # no national number on file: the register cannot name him
                conn.execute(persons.update().where(persons.c.id == pid).values(national_id_hash=f"{n}" * 64))
        conn.execute(port_bans.insert().values(register="BE-NBR", reference="B-1", subject_hash="1" * 64,
                                               scope="all", banned_from=_now() - timedelta(days=1),
                                               banned_until=_now() + timedelta(days=30), feed_sequence=1))
        conn.execute(ban_feed_state.insert().values(register="BE-NBR", sequence=1, issued_at=_now(),
                                                    loaded_at=_now(), digest="d" * 64))
    with _Statements(gate.engine, "port_bans") as bans:
        r = passes(gate)
    assert r.status_code == 200, r.text
    assert bans.seen == 1
    screening = {payload(t)["sub"]: payload(t)["screening"]["result"] for t in r.json()["passes"]}
    by_driver = dict(zip([gate.p.driver, *drivers], rids, strict=True))
    assert screening == {rid: "banned" if pid == banned else "unavailable" if pid == unidentified else "clear"
                         for pid, rid in by_driver.items()}


def test_the_passes_are_capped_the_most_relevant_kept(gate: Gate, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    now = _now()
    no_slot, later, missed, nearest, inside, lapsing, far_ahead, far_missed = (gate.pickable(n) for n in range(1, 9))
    assert gate.verify(gate.body(5, mode="commit")).json()["committed"] is True
    hours = lambda n: now + timedelta(hours=n)  # noqa: E731
    _set(gate, nearest, slot_start=now + timedelta(minutes=20), slot_end=hours(1), valid_until=hours(6))
    _set(gate, later, slot_start=hours(3), slot_end=hours(4), valid_until=hours(7))
    _set(gate, missed, slot_start=hours(-2), slot_end=hours(-1), valid_until=hours(8))
    _set(gate, lapsing, valid_until=hours(5))
    _set(gate, no_slot, valid_until=hours(10))
    _set(gate, far_ahead, slot_start=hours(48), slot_end=hours(49), valid_until=hours(72))
    _set(gate, far_missed, slot_start=hours(-10), slot_end=hours(-9), valid_until=hours(9))
    everything = _subjects(gate)
    # The truck inside; then what a truck may present now, slot or none (the gate does not judge slots),
    # the soonest to lapse first; then a slot two days ahead; then one missed long ago.
    assert everything == [inside, lapsing, nearest, later, missed, no_slot, far_ahead, far_missed]
    monkeypatch.setattr(gate_passes, "MAX_PASSES", 3)
    with caplog.at_level(logging.WARNING, logger=gate_passes.__name__):
        assert _subjects(gate) == [inside, lapsing, nearest]
    assert [r.message for r in caplog.records] == ["release.gate.passes_capped"]
    caplog.clear()
    monkeypatch.setattr(gate_passes, "MAX_PASSES", 8)
    assert _subjects(gate) == everything
    assert not caplog.records  # at the cap, not past it: nothing left out, nothing logged

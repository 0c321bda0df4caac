"""A face match result saying ``matched: false`` that arrives after its truck's request was sent
(correlate.py rule 3, lane.py rule 8): the barrier may already have opened for the wrong driver, so the
mismatch is never let go with the harmless late duplicates: it is logged with the lane, noted in the
outbox beside the truck's request, and the barrier holds and calls an officer. Against the real service
(PostgreSQL), a real outbox file; only our own device edge (the barrier) is recorded."""
# ruff: noqa: F811 - ``gate`` is test_gate_verify's fixture, imported here and requested by name

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

from gate_adapters.core.correlate import DropReason, LaneCorrelator, request_id_for
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.sinks import BarrierCommand
from gate_adapters.sources import generic_json

from .factories import TERMINAL
from .test_gate_runtime import LANE, RecordingBarrier, _now, outbox, reads, real_client, runtime  # noqa: F401
from .test_gate_verify import Gate, gate  # noqa: F401

MATCHED = {"match": {"matched": True, "score": 0.97}}


def face(matched: bool, at: Any, score: float = 0.12) -> Any:
    return generic_json.parse_object({"kind": "face", "lane": LANE, "observed_at": at.isoformat(),
                                      "face": {"match": {"matched": matched, "score": score}}})


def commands(sink: RecordingBarrier) -> list[tuple[BarrierCommand, bool]]:
    return [(c.command, c.call_officer) for c in sink.commands]


def test_a_late_face_mismatch_for_a_truck_let_through_is_recorded_and_calls_an_officer(
        gate: Gate, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    rid = gate.pickable(31)
    sink = RecordingBarrier()
    lane = runtime(real_client(gate), outbox, sink)
    at = _now()
    [decided] = [r for read in reads(n=31, at=at, face=MATCHED) for r in lane.feed(read)]
    assert decided.decision == "allow" and commands(sink) == [(BarrierCommand.OPEN, False)]
    assert gate.state(rid) == "gated_in"
    with caplog.at_level(logging.WARNING):
        [late] = lane.feed(face(False, at + timedelta(seconds=2)))  # the matcher changed its mind
    assert (late.request_id, late.response, late.observed_at) == (decided.request_id, None, decided.observed_at)
    assert late.error is not None and late.error.startswith("late_face_mismatch")
    assert commands(sink) == [(BarrierCommand.OPEN, False), (BarrierCommand.HOLD, True)]  # an officer is called
    [logged] = [r for r in caplog.records if r.getMessage() == "gate.lane.late_face_mismatch"]
    assert logged.levelno == logging.ERROR
    assert (logged.lane, logged.request_id) == (LANE, decided.request_id)  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.getMessage().startswith("gate.correlate.dropped")]
    assert outbox.late_reads(decided.request_id) == [
        ("late_face_mismatch", {"kind": "face", "matched": False, "score": 0.12})]
    assert outbox.response(decided.request_id)["decision"] == "allow"  # type: ignore[index]  # the answer stands
    assert outbox.pending() == []  # nothing asked again: the service decided; the officer decides now
    # The same mismatch again is said once only: a duplicate now, one officer call in all.
    assert lane.feed(face(False, at + timedelta(seconds=3))) == []
    assert len(sink.commands) == 2 and len(outbox.late_reads(decided.request_id)) == 1


def test_another_plate_read_after_a_truck_was_let_through_is_recorded_and_calls_an_officer(
        gate: Gate, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """correlate.py rule 3b, lane.py rule 8: the front camera reads the nominated plate (a clone), the truck
    is let through as soon as its required reads are in; the rear camera then reads its real plate. Before,
    that read became a phantom truck that timed out into a review half a minute later, and the request
    that opened the barrier was never marked. Now, like a late face mismatch: noted beside that request,
    and the barrier holds and calls an officer at once (the lane latched for it); no truck of its own."""
    rid = gate.pickable(35)
    sink = RecordingBarrier()
    clock = [1000.0]
    lane = runtime(real_client(gate), outbox, sink, clock=lambda: clock[0])
    at = _now()
    [decided] = [r for read in reads(n=35, at=at) for r in lane.feed(read)]
    assert decided.decision == "allow" and commands(sink) == [(BarrierCommand.OPEN, False)]
    rear = generic_json.parse_object({"kind": "plate", "lane": LANE, "device": "rear-cam",
                                      "observed_at": (at + timedelta(seconds=2)).isoformat(),
                                      "plate": {"text": "7-XYZ-777", "country": "BE", "confidence": 0.96}})
    clock[0] += 3
    with caplog.at_level(logging.WARNING):
        [late] = lane.feed(rear)
    assert (late.request_id, late.response, late.observed_at) == (decided.request_id, None, decided.observed_at)
    assert late.error is not None and late.error.startswith("late_plate_mismatch")
    assert commands(sink) == [(BarrierCommand.OPEN, False), (BarrierCommand.HOLD, True)]  # at once
    latch = outbox.held_latch(LANE)
    assert latch is not None and (latch.request_id, latch.reason) == (decided.request_id, "late_plate_mismatch")
    [logged] = [r for r in caplog.records if r.getMessage() == "gate.lane.late_plate_mismatch"]
    assert logged.levelno == logging.ERROR
    assert (logged.lane, logged.request_id) == (LANE, decided.request_id)  # type: ignore[attr-defined]
    assert outbox.late_reads(decided.request_id) == [("late_plate_mismatch", {
        "kind": "plate", "text": "7XYZ777", "country": "BE", "confidence": 0.96, "camera": "rear-cam"})]
    assert outbox.response(decided.request_id)["decision"] == "allow"  # type: ignore[index]  # the answer stands
    assert gate.state(rid) == "gated_in"
    clock[0] += 40  # past the window: no phantom truck times out into a request
    assert lane.tick() == [] and outbox.pending() == [] and len(sink.commands) == 2
    assert outbox.newest(LANE) == decided.request_id


def test_another_container_read_after_a_truck_was_let_through_is_recorded_and_calls_an_officer(
        gate: Gate, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """Review 158 finding 1, correlate.py rule 3c, lane.py rule 8: the truck is let through on its plate,
    badge and the container number one camera read; another camera then reads another number on it.
    Before, that read opened a phantom truck that the next truck's plate and badge filled, sent with this
    truck's container, and no officer heard of it. Now, like a late plate mismatch: noted beside the
    request, and the barrier holds and calls an officer at once (the lane latched); no truck of its own."""
    rid = gate.pickable(36)
    sink = RecordingBarrier()
    clock = [1000.0]
    lane = runtime(real_client(gate), outbox, sink, clock=lambda: clock[0])
    at = _now()
    [decided] = [r for read in reads(n=36, at=at) for r in lane.feed(read)]
    assert decided.decision == "allow" and commands(sink) == [(BarrierCommand.OPEN, False)]
    rear = generic_json.parse_object({"kind": "container", "lane": LANE, "device": "rear-ocr",
                                      "observed_at": (at + timedelta(seconds=2)).isoformat(),
                                      "container": {"number": "TGHU9876543", "confidence": 0.93}})
    clock[0] += 2
    with caplog.at_level(logging.WARNING):
        [late] = lane.feed(rear)
    assert (late.request_id, late.response, late.observed_at) == (decided.request_id, None, decided.observed_at)
    assert late.error is not None and late.error.startswith("late_container_mismatch")
    assert commands(sink) == [(BarrierCommand.OPEN, False), (BarrierCommand.HOLD, True)]  # at once
    latch = outbox.held_latch(LANE)
    assert latch is not None and (latch.request_id, latch.reason) == (decided.request_id, "late_container_mismatch")
    [logged] = [r for r in caplog.records if r.getMessage() == "gate.lane.late_container_mismatch"]
    assert logged.levelno == logging.ERROR
    assert (logged.lane, logged.request_id) == (LANE, decided.request_id)  # type: ignore[attr-defined]
    assert outbox.late_reads(decided.request_id) == [("late_container_mismatch", {
        "kind": "container", "number": "TGHU9876543", "confidence": 0.93, "camera": "rear-ocr"})]
    assert outbox.response(decided.request_id)["decision"] == "allow"  # type: ignore[index]  # the answer stands
    assert gate.state(rid) == "gated_in"
    clock[0] += 40  # past the window: no phantom truck times out into a request
    assert lane.tick() == [] and outbox.pending() == [] and len(sink.commands) == 2
    assert outbox.newest(LANE) == decided.request_id


def test_a_late_matching_face_or_a_mismatch_the_request_carried_stays_a_harmless_duplicate(
        gate: Gate, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """Only news is acted on: a late "matched" changes nothing; a mismatch the service already heard
    (and denied or sent to review on) calls no second officer."""
    gate.pickable(32)
    gate.pickable(33)
    sink = RecordingBarrier()
    clock = [1000.0]  # the lane's monotonic clock, ours
    lane = runtime(real_client(gate), outbox, sink, clock=lambda: clock[0])
    at = _now()
    [allowed] = [r for read in reads(n=32, at=at, face=MATCHED) for r in lane.feed(read)]
    with caplog.at_level(logging.WARNING):
        assert lane.feed(face(True, at + timedelta(seconds=2), score=0.99)) == []
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("gate.")] == [
        f"gate.correlate.dropped.{DropReason.LATE_READ}"]
    assert outbox.late_reads(allowed.request_id) == [] and len(sink.commands) == 1
    clock[0] += 60  # the next truck, a minute later, its driver refused by the matcher in time
    later = at + timedelta(seconds=1)
    [refused] = [r for read in reads(n=33, at=later, face={"match": {"matched": False, "score": 0.1}})
                 for r in lane.feed(read)]
    assert refused.decision != "allow" and refused.command is not None
    assert refused.command.command is BarrierCommand.HOLD
    assert lane.feed(face(False, later + timedelta(seconds=2))) == []
    assert outbox.late_reads(refused.request_id) == [] and len(sink.commands) == 2


def test_a_late_mismatch_for_a_truck_decided_without_the_service_is_acted_on_too(tmp_path: Any) -> None:
    """The correlator's own rule (no service, no clock): the dropped read names the truck it came too late
    for, whichever way that truck went."""
    corr = LaneCorrelator(LANE, TERMINAL, "in")
    at = _now()
    [ready] = [r for i, read in enumerate(reads(n=34, at=at, face=MATCHED)) for r in corr.add(read, 100.0 + i)]
    assert corr.add(face(False, at + timedelta(seconds=1)), 110.0) == []
    [dropped] = corr.take_dropped()
    assert (dropped.reason, dropped.request_id, dropped.observed_at, dropped.score) == (
        DropReason.LATE_FACE_MISMATCH, ready.request_id, ready.observed_at, 0.12)
    assert corr.pending_count == 0  # no phantom truck either
    assert corr.add(face(False, at + timedelta(seconds=40)), 100.0 + 3 + 30) == []  # the window is over
    assert corr.take_dropped() == [] and corr.pending_count == 1  # a new visit, as any read after the window



def test_a_mismatch_while_the_next_truck_waits_goes_with_that_truck_and_flags_the_one_before(
        tmp_path: Any) -> None:
    """Truck A went through with a matching face; truck B's driver, with a stolen badge, pulls up within the
    window and the matcher refuses his face. A face names no truck: the mismatch goes with B, the truck
    waiting (refused at worst), never taken for A's late news while B is sent without a face (where no
    face is required, B would be let through); and A, whose request carried no mismatch, is reported
    too (an officer looks)."""
    corr = LaneCorrelator(LANE, TERMINAL, "in")
    at = _now()
    [sent] = [r for i, read in enumerate(reads(n=41, at=at, face=MATCHED)) for r in corr.add(read, 100.0 + i)]
    b_plate, b_container, b_badge = reads(plate="2-XYZ-987", n=42, at=at + timedelta(seconds=10), badge="AP-777771")
    assert corr.add(b_plate, 110.0) == []
    assert corr.add(face(False, at + timedelta(seconds=10, milliseconds=50)), 110.1) == []
    [flag] = corr.take_dropped()
    assert (flag.reason, flag.request_id) == (DropReason.LATE_FACE_MISMATCH, sent.request_id)
    [b] = [r for read, t in ((b_container, 110.2), (b_badge, 110.3)) for r in corr.add(read, t)]
    assert b.face is not None and b.face.match is not None and not b.face.match.matched  # B's request carries it
    assert b.plate is not None and b.plate.value.startswith("2XYZ987")


def test_a_late_mismatch_for_a_truck_sent_without_a_face_is_its_own_never_the_next_trucks(tmp_path: Any) -> None:
    """No face required and none waited for (``face_wait_seconds`` 0): truck A is sent as soon as its plate,
    container and badge are in. The matcher's "no" for A's driver comes after: it is A's late mismatch
    (recorded, an officer called), not a face for whichever truck comes next, nor a phantom truck."""
    corr = LaneCorrelator(LANE, TERMINAL, "in")
    at = _now()
    [sent] = [r for i, read in enumerate(reads(n=43, at=at)) for r in corr.add(read, 100.0 + i)]
    assert sent.face is None
    assert corr.add(face(False, at + timedelta(seconds=3)), 104.0) == []
    [flag] = corr.take_dropped()
    assert (flag.reason, flag.request_id, flag.score) == (DropReason.LATE_FACE_MISMATCH, sent.request_id, 0.12)
    assert corr.pending_count == 0
    [b] = [r for i, read in enumerate(reads(plate="2-XYZ-987", n=44, at=at + timedelta(seconds=20), badge="AP-777771"))
           for r in corr.add(read, 120.0 + i)]
    assert b.face is None  # the next driver is not refused for A's


def test_a_late_mismatch_for_a_request_still_pending_keeps_its_answer_from_opening(
        gate: Gate, outbox: Outbox) -> None:
    """The service was away when the truck's request went: the barrier held and the request waits in
    the outbox. The matcher's "no" for the driver comes then. When the service is back and the request
    is sent again (without the face: it is the request the outbox kept), its allow must not open the
    barrier: the barrier holds and an officer is called, and the answer is recorded."""
    from gate_adapters.runtime.client import StaticToken, VerifyClient

    gate.pickable(45)
    at = _now()
    away = VerifyClient("http://127.0.0.1:9", StaticToken(gate.gate_token), attempts=1, sleep=lambda s: None)
    sink = RecordingBarrier()
    lane = runtime(away, outbox, sink)
    [held] = [r for read in reads(n=45, at=at) for r in lane.feed(read)]
    assert held.pending and [p.request_id for p in outbox.pending()] == [held.request_id]
    [late] = lane.feed(face(False, at + timedelta(seconds=2)))
    assert late.request_id == held.request_id and outbox.late_reads(held.request_id)
    back = RecordingBarrier()
    [again] = runtime(real_client(gate), outbox, back).recover()
    assert again.request_id == held.request_id and again.decision == "allow"  # the service's answer, recorded
    assert commands(back) == [(BarrierCommand.HOLD, True)]  # never an open for a driver the matcher refused


def test_the_next_trucks_own_face_match_goes_with_it_on_a_lane_that_requires_a_face(gate: Gate,
                                                                                    outbox: Outbox) -> None:
    """correlate.py rule 3a: a lane that waits for a face. Truck A goes through on its driver's match;
    truck B (another truck, another driver) pulls up within A's window and its driver's match comes after
    B's plate: B's own, so B is asked at once with it (before, it was dropped as a late duplicate of A's
    face and B waited out the window to a review for want of a face)."""
    from gate_adapters.runtime.lane import LaneRuntime

    gate.pickable(46)
    sink = RecordingBarrier()
    clock = [1000.0]
    lane = LaneRuntime(TERMINAL, LANE, "in", "commit",
                       LaneCorrelator(LANE, TERMINAL, "in", require={"plate", "container", "badge", "face"}),
                       real_client(gate), outbox, sink, clock=lambda: clock[0])
    at = _now() - timedelta(seconds=15)  # so that B's reads, twelve seconds later, are not ahead of our clock
    [a] = [r for read in [*reads(n=46, at=at), face(True, at + timedelta(seconds=1), score=0.97)]
           for r in lane.feed(read)]
    assert a.decision == "allow"
    clock[0] += 12  # B, twelve seconds later: well within A's window of 30 s
    later = at + timedelta(seconds=12)
    b_reads = [*reads(plate="2-XYZ-987", n=47, at=later, badge="AP-777771"),
               face(True, later + timedelta(seconds=1), score=0.96)]
    [b] = [r for read in b_reads for r in lane.feed(read)]
    assert b.request_id == request_id_for(TERMINAL, LANE, "in", b_reads)  # with B's face, not A's nor none
    assert b.decision == "deny"  # a truck and driver this right was not nominated to: the service says no
    assert commands(sink) == [(BarrierCommand.OPEN, False), (BarrierCommand.HOLD, False)]


def test_a_late_match_for_a_truck_sent_without_a_face_is_noted_beside_it_and_opens_no_truck(
        gate: Gate, outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """No face required: truck A is decided on plate, container and badge. Its driver's match comes after
    (with nothing pending): noted in the outbox beside A's request and logged, the barrier told nothing;
    no phantom truck opens (before, one did, timed out to a review, or was filled by the next truck's
    reads and passed for that driver's face)."""
    gate.pickable(48)
    gate.pickable(49)
    sink = RecordingBarrier()
    clock = [1000.0]
    lane = runtime(real_client(gate), outbox, sink, clock=lambda: clock[0])
    at = _now() - timedelta(seconds=10)  # so that B's reads, five seconds later, are not ahead of our clock
    [a] = [r for read in reads(n=48, at=at) for r in lane.feed(read)]
    assert a.decision == "allow"
    with caplog.at_level(logging.WARNING):
        assert lane.feed(face(True, at + timedelta(seconds=2), score=0.93)) == []
    assert [(r.getMessage(), r.request_id) for r in caplog.records  # type: ignore[attr-defined]
            if r.getMessage().startswith("gate.")] == [("gate.lane.late_face", a.request_id)]
    assert outbox.late_reads(a.request_id) == [("late_face", {"kind": "face", "matched": True, "score": 0.93})]
    assert lane.correlator.pending_count == 0 and commands(sink) == [(BarrierCommand.OPEN, False)]
    clock[0] += 40  # after A's window: nothing was left to time out
    assert lane.tick() == [] and outbox.pending() == []
    b_reads = reads(plate="1-ABC-123", n=49, at=at + timedelta(seconds=5))
    [b] = [r for read in b_reads for r in lane.feed(read)]
    assert b.decision == "allow" and commands(sink)[-1] == (BarrierCommand.OPEN, False)
    assert b.request_id == request_id_for(TERMINAL, LANE, "in", b_reads)  # its own three reads, no face


def test_a_late_face_image_is_noted_without_the_image(outbox: Outbox) -> None:
    """A face image (the service matches it) for a truck sent without a face: noted as a late face, never the
    image itself (the outbox is no store of drivers' faces)."""
    from gate_adapters.runtime.client import StaticToken, VerifyClient

    lane = runtime(VerifyClient("http://127.0.0.1:9", StaticToken("t"), attempts=1), outbox, RecordingBarrier())
    at = _now()
    [sent] = [r for read in reads(n=50, at=at) for r in lane.feed(read)]
    image = generic_json.parse_object({"kind": "face", "lane": LANE, "observed_at": (at + timedelta(seconds=1))
                                       .isoformat(), "face": {"image": "/9j/4AAQSkZJRg=="}})
    assert lane.feed(image) == [] and lane.correlator.pending_count == 0
    assert outbox.late_reads(sent.request_id) == [("late_face", {"kind": "face", "image": True})]

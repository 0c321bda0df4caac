"""Lane correlation: one truck's separate reads become exactly one verify request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gate_adapters.core.correlate import DropReason, LaneCorrelator, Outcome, Ready, similar
from gate_adapters.core.reads import BadgeRead, ContainerRead, FaceMatch, FaceRead, PlateRead, Read, ReadKind
from release_service.domain.gate import TerminalPolicy
from release_service.domain.reads import understand_container

T0 = datetime(2026, 11, 21, 14, 30, tzinfo=UTC)
LANE = "in-3"


def plate(text: str = "1ABC234", conf: float = 0.93, sec: float = 0.0, lane: str = LANE) -> PlateRead:
    return PlateRead(
        lane=lane, source="t", camera="cam", text=text, country="BE", confidence=conf,
        observed_at=T0 + timedelta(seconds=sec),
    )  # fmt: skip


def container(number: str = "MSCU1234566", conf: float = 0.9, sec: float = 1.0) -> ContainerRead:
    return ContainerRead(
        lane=LANE, source="t", camera="ocr", number=number, confidence=conf, per_char=None,
        observed_at=T0 + timedelta(seconds=sec),
    )  # fmt: skip


def badge(number: str = "AP-100230", sec: float = 2.0) -> BadgeRead:
    return BadgeRead(
        lane=LANE, source="t", reader="rdr", scheme="alfapass", number=number, card_uid=None,
        observed_at=T0 + timedelta(seconds=sec),
    )  # fmt: skip


def face(score: float = 0.87, sec: float = 3.0, matched: bool = True) -> FaceRead:
    return FaceRead(
        lane=LANE, source="t", camera="kiosk", image=None, match=FaceMatch(matched=matched, score=score),
        observed_at=T0 + timedelta(seconds=sec),
    )  # fmt: skip


def lane(**kwargs: object) -> LaneCorrelator:
    settings: dict[str, object] = {"window_seconds": 30.0} | kwargs
    return LaneCorrelator(LANE, "ANT-K913", "in", **settings)  # type: ignore[arg-type]


def feed(corr: LaneCorrelator, reads: list[Read], start: float = 100.0, step: float = 1.0) -> list[Ready]:
    out: list[Ready] = []
    for i, read in enumerate(reads):
        out += corr.add(read, start + i * step)
    return out


# -- one truck --------------------------------------------------------------------------------


def test_in_order_reads_emit_one_complete_truck_on_the_last_required_read() -> None:
    corr = lane()
    assert corr.add(plate(), 100.0) == []
    assert corr.add(container(), 101.0) == []
    [ready] = corr.add(badge(), 102.0)
    assert ready.outcome is Outcome.COMPLETE and ready.complete and ready.missing == frozenset()
    assert (ready.plate, ready.container, ready.badge, ready.face) == (plate(), container(), badge(), None)
    assert ready.observed_at == T0  # the earliest read
    assert corr.pending_count == 0


def test_out_of_order_reads_give_the_same_truck_and_request_id() -> None:
    [in_order] = feed(lane(), [plate(), container(), badge()])
    [shuffled] = feed(lane(), [badge(), plate(), container()], start=500.0, step=4.0)
    assert shuffled.request_id == in_order.request_id
    assert (shuffled.plate, shuffled.container, shuffled.badge) == (in_order.plate, in_order.container, in_order.badge)


def test_verify_fields_use_the_published_names() -> None:
    [ready] = feed(lane(face_wait_seconds=0), [plate(), container(), face(), badge()])
    body = ready.verify_fields()
    assert body == {
        "request_id": ready.request_id,
        "terminal": "ANT-K913",
        "lane": LANE,
        "direction": "in",
        "observed_at": T0.isoformat(),
        "container": {"number": "MSCU1234566", "confidence": 0.9},
        "plate": {"text": "1ABC234", "country": "BE", "confidence": 0.93},
        "badge": {"scheme": "alfapass", "number": "AP-100230"},
        "face": {"match": {"matched": True, "score": 0.87}},
    }


# -- duplicates -------------------------------------------------------------------------------


def test_a_similar_duplicate_with_higher_confidence_replaces_and_opens_no_truck() -> None:
    corr = lane()
    corr.add(plate("1A8C234", conf=0.71), 100.0)  # B read as 8: a look-alike, one edit
    corr.add(plate("1ABC234", conf=0.95, sec=0.4), 100.5)
    corr.add(plate("1ABC284", conf=0.60, sec=0.8), 100.9)  # lower confidence: kept out
    assert corr.pending_count == 1
    [ready] = feed(corr, [container(), badge()], start=101.0)
    assert ready.plate is not None and (ready.plate.text, ready.plate.confidence) == ("1ABC234", 0.95)
    # 1ABC284 is another plate (not a look-alike of 1ABC234): the truck is doubtful, and says so
    assert ready.doubtful == {ReadKind.PLATE} and [r.value for r in ready.set_aside] == ["1ABC284|BE"]
    assert ready.verify_fields()["plate"]["confidence"] == 0.0


FRONT_530, REAR_550 = container("MSCU1234530", conf=0.85, sec=1.0), container("MSCU1234550", conf=0.95, sec=1.5)


@pytest.mark.parametrize("order", ["front first", "rear first"])
def test_two_valid_container_numbers_for_one_truck_make_it_doubtful_never_a_silent_choice(order: str) -> None:
    """Review 153 finding 1: MSCU1234530 and MSCU1234550 are both valid (check digit 0 from remainder 0
    or 10) and one edit apart, so both reads went to one truck and only the more confident was sent, at
    0.95: an allow on whichever box read better. Now a second, different container number makes the
    truck doubtful on its container: the other read is set aside (evidence), the body's container
    confidence is 0 (the service answers container_unreadable, review), and the id says the doubt."""
    reads: list[Read] = [FRONT_530, REAR_550] if order == "front first" else [REAR_550, FRONT_530]
    [ready] = feed(lane(), [plate(), *reads, badge()])
    assert ready.doubtful == {ReadKind.CONTAINER} and ready.container == REAR_550
    assert [r.value for r in ready.set_aside] == ["MSCU1234530"]
    sent = ready.verify_fields()["container"]
    assert sent == {"number": "MSCU1234550", "confidence": 0.0}
    # what the service makes of it, with the right on MSCU1234550: a doubt (review), not the allow it was
    reading = understand_container(sent["number"], sent["confidence"], known=frozenset({"MSCU1234550"}),
                                   policy=TerminalPolicy())
    assert not reading.understood
    [reference] = feed(lane(), [plate(), FRONT_530, REAR_550, badge()])
    [clean] = feed(lane(), [plate(), REAR_550, badge()])
    assert ready.request_id == reference.request_id != clean.request_id  # rule 5: the doubt is in the question


def test_look_alike_twin_container_numbers_are_two_numbers_not_one_read_twice() -> None:
    # OOLU1000070 and DOLU1000070 are both valid: folding look-alikes makes them one, the check digit cannot
    [ready] = feed(lane(), [plate(), container("OOLU1000070", conf=0.9), container("DOLU1000070", conf=0.8),
                            badge()])
    assert ready.doubtful == {ReadKind.CONTAINER} and ready.container is not None
    assert ready.container.number == "OOLU1000070" and [r.value for r in ready.set_aside] == ["DOLU1000070"]
    assert ready.verify_fields()["container"]["confidence"] == 0.0


def test_the_same_container_number_read_twice_still_merges_without_doubt() -> None:
    low, high = container("MSCU1234550", conf=0.7, sec=1.0), container("MSCU1234550", conf=0.95, sec=1.2)
    [ready] = feed(lane(), [plate(), low, high, high, badge()])
    [clean] = feed(lane(), [plate(), high, badge()])
    assert ready.doubtful == frozenset() and ready.set_aside == () and ready.container == high
    assert ready.verify_fields()["container"]["confidence"] == 0.95
    assert ready.request_id == clean.request_id


def test_a_truck_doubtful_on_plate_and_container_says_both() -> None:
    [ready] = feed(lane(), [plate("1ABC234", conf=0.95), plate("1ABC284", conf=0.6), FRONT_530, REAR_550, badge()])
    assert ready.doubtful == {ReadKind.PLATE, ReadKind.CONTAINER}
    assert sorted(r.value for r in ready.set_aside) == ["1ABC284|BE", "MSCU1234530"]
    body = ready.verify_fields()
    assert body["plate"]["confidence"] == 0.0 and body["container"]["confidence"] == 0.0


def test_equal_confidence_duplicates_choose_the_same_read_whatever_the_order() -> None:
    a, b = plate("1ABC234", conf=0.9, sec=0.0), plate("1A8C234", conf=0.9, sec=0.5)
    [first] = feed(lane(), [a, b, container(), badge()])
    [second] = feed(lane(), [b, a, container(), badge()])
    assert first.plate == second.plate == a  # tie: the earlier observation
    assert first.request_id == second.request_id


def test_a_plate_that_differs_a_lot_starts_a_new_truck() -> None:
    corr = lane()
    feed(corr, [plate("1ABC234"), container()])
    corr.add(plate("2XYZ987", sec=5.0), 110.0)
    assert corr.pending_count == 2


def test_similarity_rules() -> None:
    assert similar(plate("1ABC234"), plate("1A8C234"))  # look-alike 8/B
    assert similar(plate("1ABC234"), plate("1ABC23"))  # one character lost
    assert not similar(plate("1ABC234"), plate("1ABC999"))
    assert similar(container("MSCU1234566"), container("MSCU1Z34566"))  # 2/Z
    assert not similar(badge("AP-100230"), badge("AP-100248"))
    assert not similar(plate(), container())


def test_a_late_duplicate_after_emission_is_dropped_not_a_phantom_truck() -> None:
    corr = lane()
    [ready] = feed(corr, [plate(), container(), badge()])
    assert corr.add(plate("1ABC234", conf=0.99, sec=9.0), 110.0) == []  # the camera's "update" event
    assert corr.pending_count == 0
    assert [d.reason for d in corr.take_dropped()] == [DropReason.LATE_READ]
    assert corr.tick(1000.0) == []  # nothing was opened that could time out
    assert ready.plate is not None and ready.plate.confidence == 0.93  # the emitted truck is unchanged


def test_the_next_trucks_plate_one_character_off_is_its_own_not_a_late_duplicate() -> None:
    """Review 109 (a): fleet plates 1ABC123 then 1ABC124, the second truck within the window of the first.
    Its plate is not dropped; but one character off may as well be the first truck's plate misread, so the
    second truck is doubtful on its plate (review 116): review, never a clean allow."""
    corr = lane()
    [first] = feed(corr, [plate("1ABC123"), container("MSCU1234566"), badge("AP-100230")])
    [second] = feed(corr, [plate("1ABC124", sec=8.0), container("MAEU7654320", sec=9.0), badge("AP-100248", sec=10.0)],
                    start=108.0)
    assert corr.take_dropped() == []
    assert second.complete and second.plate is not None and second.plate.text == "1ABC124"
    assert second.request_id != first.request_id
    assert second.doubtful == {ReadKind.PLATE} and second.verify_fields()["plate"]["confidence"] == 0.0


def test_a_late_duplicate_is_the_same_plate_from_any_camera() -> None:
    """Review 116 (1): the rear camera reads the plate of the truck just sent. Were it a truck of its own,
    the next truck's container and badge would join it and go as a clean request with the plate before."""
    corr = lane()
    [a] = feed(corr, [plate("1ABC234"), container(), badge()])
    assert corr.add(plate("1A8C234", sec=5.0), 110.0) == []  # a look-alike of the same plate: the same
    assert [d.reason for d in corr.take_dropped()] == [DropReason.LATE_READ]
    other_camera = PlateRead(lane=LANE, source="rear-src", camera="rear", text="1ABC234", country="BE",
                             confidence=0.99, observed_at=T0 + timedelta(seconds=6))
    assert corr.add(other_camera, 111.0) == []
    [dropped] = corr.take_dropped()
    assert (dropped.reason, dropped.request_id) == (DropReason.LATE_READ, a.request_id)
    assert corr.pending_count == 0
    [b] = feed(corr, [container("MAEU7654320", sec=10.0), badge("AP-100248", sec=11.0), plate("2XYZ987", sec=12.0)],
               start=112.0)
    assert b.complete and b.plate is not None and b.plate.text == "2XYZ987" and b.doubtful == frozenset()


def test_a_late_variant_of_the_last_plate_never_carries_the_next_truck_as_a_clean_request() -> None:
    """Review 116 (1): the camera's update event reads truck A's plate one character off (1ABC233 for
    1ABC234) after A went. It may be a truck of its own (rule 3), so it opens one, and truck B's container
    and badge join it (rule 1b); but that truck is doubtful: its plate goes at confidence 0 (review), never
    at 0.97 as a clean allow on a plate that may be A's. B's own plate, alone, times out."""
    corr = lane()
    feed(corr, [plate("1ABC234"), container(), badge()])
    assert corr.add(plate("1ABC233", conf=0.97, sec=5.0), 105.0) == []
    assert corr.take_dropped() == [] and corr.pending_count == 1
    [phantom] = feed(corr, [container("MAEU7654320", sec=10.0), badge("AP-100248", sec=11.0)], start=110.0)
    assert phantom.complete and phantom.plate is not None and phantom.plate.text == "1ABC233"
    assert phantom.doubtful == {ReadKind.PLATE} and phantom.set_aside == ()
    assert phantom.verify_fields()["plate"]["confidence"] == 0.0
    corr.add(plate("2XYZ987", sec=12.0), 112.0)
    [alone] = corr.tick(112.0 + 30.0)
    assert alone.outcome is Outcome.TIMED_OUT and alone.doubtful == frozenset()


def test_a_plate_read_from_the_truck_behind_is_never_taken_silently_for_the_front_truck() -> None:
    """Review 109 (b): the front truck's plate read 1ABC128 at 0.80; the truck behind's 1ABC123 at 0.97
    comes while the front truck still waits. Before, the higher confidence won and the service saw
    1ABC123 (maybe the nominated plate) at 0.97. Now the front truck is doubtful on its plate: the body
    carries confidence 0 (plate_low_confidence: review), and the other read is kept as evidence."""
    corr = lane()
    feed(corr, [plate("1ABC128", conf=0.80), container()])
    assert corr.add(plate("1ABC123", conf=0.97, sec=4.0), 104.0) == []
    [front] = corr.add(badge(sec=5.0), 105.0)
    assert front.doubtful == {ReadKind.PLATE}
    assert {r.value for r in (front.plate, *front.set_aside) if r is not None} == {"1ABC128|BE", "1ABC123|BE"}
    assert front.verify_fields()["plate"]["confidence"] == 0.0  # never a confident plate for the service
    [plain] = feed(lane(), [plate("1ABC128", conf=0.80), container(), badge()])
    assert front.request_id != plain.request_id  # a doubtful question is another question (rule 5)


def rear(text: str, sec: float, conf: float = 0.96) -> PlateRead:
    """A plate read by the lane's second (rear) camera."""
    return PlateRead(lane=LANE, source="t", camera="rear", text=text, country="BE", confidence=conf,
                     observed_at=T0 + timedelta(seconds=sec))


def test_another_plate_read_by_the_rear_camera_after_the_truck_was_sent_is_its_news_never_a_phantom() -> None:
    """Rule 3b: the front camera reads a cloned nominated plate, the truck is sent as soon as its container
    and badge are in; the rear camera reads the real plate seconds later, with nothing pending. Before, it
    opened a phantom truck that timed out into a review half a minute later, the request that opened the
    barrier never marked. Now it is that request's late plate mismatch (the caller calls an officer), once."""
    corr = lane()
    [a] = feed(corr, [plate("1ABC234"), container(), badge()])
    real = rear("7XYZ777", sec=5.0)
    assert corr.add(real, 105.0) == [] and corr.pending_count == 0
    [dropped] = corr.take_dropped()
    assert (dropped.reason, dropped.request_id, dropped.observed_at, dropped.plate) == (
        DropReason.LATE_PLATE_MISMATCH, a.request_id, T0, real)
    assert corr.add(rear("7XYZ777", sec=6.0, conf=0.98), 106.0) == []  # the same news again: said once
    assert [(d.reason, d.request_id) for d in corr.take_dropped()] == [(DropReason.LATE_READ, a.request_id)]
    assert corr.tick(105.0 + 31.0) == []  # nothing opened that could time out
    [b] = feed(corr, [plate("2KLM456", sec=40.0), container("MAEU7654320", sec=41.0), badge("AP-100248", sec=42.0)],
               start=140.0)
    assert b.plate is not None and b.plate.text == "2KLM456" and b.doubtful == frozenset()


def test_the_next_trucks_plate_from_a_camera_that_read_the_last_one_is_its_own() -> None:
    """Rule 3b is news only from a camera that has not read the truck's plate: the front camera reading
    the truck behind within the window (or the rear camera, once it read the last truck's plate as a late
    duplicate) is the next truck, placed as any read, never an officer call for every truck that follows."""
    for other in (plate("2KLM456", sec=8.0), rear("2KLM456", sec=8.0)):
        corr = lane()
        feed(corr, [plate("1ABC234"), container(), badge()])
        assert corr.add(rear("1ABC234", sec=4.0), 104.0) == []  # the rear camera reads the same plate
        assert [d.reason for d in corr.take_dropped()] == [DropReason.LATE_READ]
        assert corr.add(other, 108.0) == [] and corr.pending_count == 1 and corr.take_dropped() == []
    # A truck pending at the lane: another plate may be its own (rule 1), never news for the one before.
    corr = lane()
    feed(corr, [plate("1ABC234"), container(), badge()])
    assert feed(corr, [container("MAEU7654320", sec=9.0), rear("2KLM456", sec=10.0)], start=109.0) == []
    assert corr.take_dropped() == [] and corr.pending_count == 1


@pytest.mark.parametrize("order", ["plate first", "container first"])
def test_the_next_trucks_container_one_digit_off_the_last_ones_is_its_own_not_a_late_duplicate(order: str) -> None:
    """Review 158 finding 2: for containers "the same" is the very same number (review 153): MSCU1234530
    and MSCU1234550 are both valid. Truck A went on MSCU1234530; truck B, within the window, carries
    MSCU1234550, read by the same camera. Before, rule 3 took B's only container read for a late duplicate
    of A's (similar: one digit off) and dropped it, and B timed out missing its container. Now it is B's."""
    corr = lane()
    [a] = feed(corr, [plate("1ABC234"), container("MSCU1234530"), badge("AP-100230")])
    b_reads: list[Read] = [plate("2XYZ987", sec=8.0), container("MSCU1234550", sec=9.0), badge("AP-100248", sec=10.0)]
    if order == "container first":
        b_reads = [b_reads[1], b_reads[0], b_reads[2]]
    [b] = feed(corr, b_reads, start=108.0)
    assert corr.take_dropped() == []
    assert b.complete and b.container is not None and b.container.number == "MSCU1234550"
    assert b.plate is not None and b.plate.text == "2XYZ987" and b.doubtful == frozenset()
    assert b.request_id != a.request_id and corr.pending_count == 0
    # the same number again is still a late duplicate, from any camera (rule 3)
    assert corr.add(box("MSCU1234550", sec=11.0, camera="ocr-rear"), 111.0) == []
    assert [(d.reason, d.request_id) for d in corr.take_dropped()] == [(DropReason.LATE_READ, b.request_id)]


def box(number: str, sec: float, camera: str, conf: float = 0.9) -> ContainerRead:
    """A container number read by the named camera."""
    return ContainerRead(lane=LANE, source="t", camera=camera, number=number, confidence=conf, per_char=None,
                         observed_at=T0 + timedelta(seconds=sec))


@pytest.mark.parametrize("other", ["TGHU9876543", "MSCU1234550"])
def test_another_container_read_by_another_camera_after_the_truck_was_sent_is_its_news_never_a_phantom(
        other: str) -> None:
    """Review 158 finding 1 (rule 3c): truck A is sent on plate, badge and MSCU1234530 read by ocr-front;
    ocr-rear reads another number 2 s later, with nothing pending. Before, TGHU9876543 opened a phantom
    truck that the next truck's plate and badge filled (rule 1b): it went complete and not doubtful with
    A's container, and no officer heard of A (MSCU1234550, one digit off, was dropped as a duplicate).
    Now it is A's late container mismatch (the caller calls an officer), once, and no truck of its own."""
    corr = lane()
    [a] = feed(corr, [plate("1ABC234"), box("MSCU1234530", sec=1.0, camera="ocr-front"), badge("AP-100230")])
    late = box(other, sec=4.0, camera="ocr-rear", conf=0.95)
    assert corr.add(late, 104.0) == [] and corr.pending_count == 0
    [dropped] = corr.take_dropped()
    assert (dropped.reason, dropped.request_id, dropped.observed_at, dropped.container, dropped.plate) == (
        DropReason.LATE_CONTAINER_MISMATCH, a.request_id, T0, late, None)
    assert corr.add(box(other, sec=5.0, camera="ocr-rear"), 105.0) == []  # the same news again: said once
    assert [(d.reason, d.request_id) for d in corr.take_dropped()] == [(DropReason.LATE_READ, a.request_id)]
    # the next truck's plate and badge have nothing to join: without a container read of its own it
    # times out missing one, never sent with A's
    assert feed(corr, [plate("2XYZ999", sec=10.0), badge("AP-200111", sec=11.0)], start=110.0) == []
    [b] = corr.tick(110.0 + 30.0)
    assert b.outcome is Outcome.TIMED_OUT and b.container is None and b.missing == {ReadKind.CONTAINER}
    assert corr.take_dropped() == []


@pytest.mark.parametrize("order", ["front first", "rear first"])
def test_another_container_number_from_another_camera_makes_the_pending_truck_doubtful(order: str) -> None:
    """Review 158 finding 1 (rule 1a): while the truck waits (its badge not yet read), ocr-rear reads
    TGHU9876543 and ocr-front MSCU1234530. Before, the second number opened a truck of its own and the
    first went complete and clean on the number read first, the other left for the next truck to fill.
    Now two numbers from two cameras are two numbers for one truck: doubtful (container confidence 0)."""
    front, rear_box = box("MSCU1234530", sec=1.0, camera="ocr-front"), box("TGHU9876543", sec=1.5, camera="ocr-rear")
    boxes: list[Read] = [front, rear_box] if order == "front first" else [rear_box, front]
    assert feed(corr := lane(), [plate("1ABC234"), *boxes]) == [] and corr.pending_count == 1
    [ready] = corr.add(badge("AP-100230", sec=3.0), 103.0)
    assert ready.complete and ready.doubtful == {ReadKind.CONTAINER}
    assert {r.value for r in (ready.container, *ready.set_aside) if r is not None} == {"MSCU1234530", "TGHU9876543"}
    assert ready.verify_fields()["container"]["confidence"] == 0.0
    assert corr.pending_count == 0 and corr.tick(1000.0) == [] and corr.take_dropped() == []


def test_the_next_trucks_container_from_a_camera_that_read_the_last_ones_is_its_own() -> None:
    """Rule 3c is news only from a camera that has not read the truck's container; and one camera reading
    two numbers reads two trucks. Two trucks in quick succession keep working: the front camera reading
    the truck behind (with A still waiting, or with A sent), the rear camera once it read A's number."""
    corr = lane()
    feed(corr, [plate("1ABC234"), box("MSCU1234530", sec=1.0, camera="ocr-front")])  # A waits for its badge
    feed(corr, [plate("2XYZ999", sec=3.0), box("TGHU9876543", sec=4.0, camera="ocr-front")], start=103.0)
    [a] = corr.add(badge("AP-100230", sec=5.0), 105.0)
    [b] = corr.add(badge("AP-200111", sec=6.0), 106.0)
    assert (a.container, b.container) == (box("MSCU1234530", sec=1.0, camera="ocr-front"),
                                          box("TGHU9876543", sec=4.0, camera="ocr-front"))
    assert a.doubtful == b.doubtful == frozenset() and corr.take_dropped() == []
    for camera in ("ocr-front", "ocr-rear"):
        corr = lane()
        feed(corr, [plate("1ABC234"), box("MSCU1234530", sec=1.0, camera="ocr-front"), badge("AP-100230")])
        assert corr.add(box("MSCU1234530", sec=3.0, camera="ocr-rear"), 103.0) == []  # rear reads A's too
        assert [d.reason for d in corr.take_dropped()] == [DropReason.LATE_READ]
        [b] = feed(corr, [box("TGHU9876543", sec=8.0, camera=camera), plate("2XYZ999", sec=9.0),
                          badge("AP-200111", sec=10.0)], start=108.0)
        assert b.complete and b.container is not None and b.container.number == "TGHU9876543"
        assert b.doubtful == frozenset() and corr.take_dropped() == []
    # A truck pending at the lane without a container: another number may be its own (rule 1b).
    corr = lane()
    feed(corr, [plate("1ABC234"), box("MSCU1234530", sec=1.0, camera="ocr-front"), badge("AP-100230")])
    [b] = feed(corr, [plate("2XYZ999", sec=9.0), box("TGHU9876543", sec=10.0, camera="ocr-rear"),
                      badge("AP-200111", sec=11.0)], start=109.0)
    assert b.container is not None and b.container.number == "TGHU9876543" and corr.take_dropped() == []


P1, P1_LOOKALIKE, P2 = plate("1ABC234", conf=0.60, sec=0.0), plate("1A8C234", conf=0.90, sec=0.5), \
    plate("1ABC284", conf=0.70, sec=1.0)


@pytest.mark.parametrize("plates", [
    [P1, P1_LOOKALIKE, P2], [P2, P1, P1_LOOKALIKE], [P1, P2, P1_LOOKALIKE], [P2, P1_LOOKALIKE, P1],
    [P1_LOOKALIKE, P2, P1], [P1_LOOKALIKE, P1, P2],
])
def test_a_doubtful_trucks_request_id_does_not_depend_on_the_order_of_its_reads(plates: list[Read]) -> None:
    """Review 116 (2): p1 and its look-alike p1' are the same plate, p2 another one. Which read the arrival
    order set aside went into the id: after a restart or an MQTT redelivery the same truck got a new id and
    the service was asked again instead of the outbox finding it. Every order gives one id and one doubt."""
    [ready] = feed(lane(), [*plates, container(), badge()])
    [reference] = feed(lane(), [P1, P1_LOOKALIKE, P2, container(), badge()])
    assert ready.request_id == reference.request_id
    assert ready.doubtful == {ReadKind.PLATE} and ready.plate == P1_LOOKALIKE
    assert [r.value for r in ready.set_aside] == ["1ABC284|BE"]
    [clean] = feed(lane(), [P1_LOOKALIKE, container(), badge()])
    assert ready.request_id != clean.request_id  # a doubtful question is another question (rule 5)


def test_the_same_plate_after_the_window_is_a_new_visit() -> None:
    corr = lane()
    feed(corr, [plate(), container(), badge()])
    corr.add(plate(sec=3600.0), 102.0 + 31.0)
    assert corr.pending_count == 1 and corr.take_dropped() == []


# -- several trucks ---------------------------------------------------------------------------


def test_two_trucks_back_to_back_each_emitted_once() -> None:
    corr = lane()
    first = feed(corr, [plate("1ABC234"), container("MSCU1234566"), badge("AP-100230")])
    second = feed(
        corr,
        [plate("2XYZ987", sec=40.0), container("MAEU7654320", sec=41.0), badge("AP-100248", sec=42.0)],
        start=140.0,
    )
    assert len(first) == 1 and len(second) == 1
    assert first[0].request_id != second[0].request_id
    assert second[0].plate is not None and second[0].plate.text == "2XYZ987"
    assert corr.tick(10_000.0) == []


def test_overlapping_trucks_a_read_fills_the_oldest_truck_lacking_its_kind() -> None:
    corr = lane()
    feed(corr, [plate("1ABC234"), container("MSCU1234566")])
    corr.add(plate("2XYZ987", sec=4.0), 104.0)  # truck B pulls up behind
    [ready] = corr.add(badge(sec=5.0), 105.0)
    assert ready.plate is not None and ready.plate.text == "1ABC234"
    assert corr.pending_count == 1


# -- time -------------------------------------------------------------------------------------


def test_an_incomplete_truck_is_emitted_once_when_its_window_ends() -> None:
    corr = lane(window_seconds=20.0)
    feed(corr, [plate(), container()])  # opened at 100
    assert corr.tick(119.9) == []
    [ready] = corr.tick(120.0)
    assert ready.outcome is Outcome.TIMED_OUT and not ready.complete
    assert ready.missing == frozenset({ReadKind.BADGE})
    assert ready.verify_fields().get("badge") is None
    assert corr.tick(121.0) == [] and corr.tick(500.0) == []


def test_add_emits_timed_out_trucks_before_placing_the_new_read() -> None:
    corr = lane(window_seconds=20.0)
    corr.add(plate(), 100.0)
    out = corr.add(badge(sec=60.0), 160.0)
    assert [r.outcome for r in out] == [Outcome.TIMED_OUT]
    assert out[0].badge is None and corr.pending_count == 1  # the badge opened its own truck


def test_a_clock_step_back_does_not_reopen_a_window() -> None:
    corr = lane(window_seconds=20.0)
    corr.add(plate(), 100.0)
    [ready] = corr.tick(125.0)
    assert ready.outcome is Outcome.TIMED_OUT
    assert corr.tick(90.0) == []
    corr.add(container(), 90.0)  # treated as 125: its own window ends at 145, not 110
    assert corr.tick(130.0) == [] and len(corr.tick(145.0)) == 1


# -- face -------------------------------------------------------------------------------------


def test_optional_face_waits_and_joins_when_it_comes() -> None:
    corr = lane(face_wait_seconds=5.0)
    assert feed(corr, [plate(), container(), badge()]) == []
    [ready] = corr.add(face(), 104.0)
    assert ready.complete and ready.face == face()


def test_optional_face_wait_ends_without_a_face() -> None:
    corr = lane(face_wait_seconds=5.0)
    feed(corr, [plate(), container(), badge()])  # complete at 102
    assert corr.tick(106.9) == []
    [ready] = corr.tick(107.0)
    assert ready.complete and ready.face is None and ready.missing == frozenset()


def test_the_next_truck_ends_the_face_wait_of_the_one_before() -> None:
    corr = lane(face_wait_seconds=5.0)
    feed(corr, [plate(), container(), badge()])
    [ready] = corr.add(plate("2XYZ987", sec=3.0), 103.0)
    assert ready.plate is not None and ready.plate.text == "1ABC234" and ready.face is None
    assert corr.pending_count == 1


def test_required_face_is_waited_for_until_the_window_ends() -> None:
    corr = lane(require={"plate", "container", "badge", "face"}, window_seconds=20.0)
    assert feed(corr, [plate(), container(), badge()]) == []
    [ready] = corr.tick(120.0)
    assert ready.outcome is Outcome.TIMED_OUT and ready.missing == frozenset({ReadKind.FACE})


# -- identity and bounds ----------------------------------------------------------------------


def test_request_id_is_stable_across_correlators_and_changes_with_the_reads() -> None:
    reads = [plate(), container(), badge()]
    [a] = feed(lane(), reads, start=100.0)
    [b] = feed(lane(), reads, start=9000.0, step=0.1)  # a restart replays the same reads later
    assert a.request_id == b.request_id
    [other] = feed(lane(), [plate(), container("MAEU7654320"), badge()])
    [other_lane] = feed(LaneCorrelator(LANE, "ANT-K913", "out"), reads)
    assert len({a.request_id, other.request_id, other_lane.request_id}) == 3


def test_pending_trucks_are_bounded_and_the_oldest_is_emitted_as_evicted() -> None:
    """Rule 4: the evicted truck is not dropped silently: it comes out once, as ``evicted``, with what it
    held and what it lacked (the lane holds and calls an officer for it)."""
    corr = lane(max_pending=2)
    [evicted] = feed(corr, [plate("1ABC234"), plate("2XYZ987", sec=1.0), plate("3KLM456", sec=2.0)])
    assert corr.pending_count == 2 and corr.take_dropped() == []
    assert evicted.outcome is Outcome.EVICTED and not evicted.complete
    assert evicted.plate is not None and evicted.plate.text == "1ABC234" and evicted.kinds == {ReadKind.PLATE}
    assert evicted.missing == {ReadKind.CONTAINER, ReadKind.BADGE}
    assert corr.add(plate("1ABC234", sec=3.0), 103.0) == []  # its plate again: a late duplicate, no new truck
    assert [d.reason for d in corr.take_dropped()] == [DropReason.LATE_READ] and corr.pending_count == 2
    emitted = corr.tick(1000.0)
    assert sorted(r.plate.text for r in emitted if r.plate) == ["2XYZ987", "3KLM456"]
    assert {r.outcome for r in emitted} == {Outcome.TIMED_OUT}


def test_a_read_for_another_lane_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="lane"):
        lane().add(plate(lane="in-4"), 100.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_seconds": 0},
        {"face_wait_seconds": -1},
        {"max_pending": 0},
        {"require": set()},
        {"require": {"plate", "truck"}},
    ],
)
def test_correlator_settings_are_checked(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        lane(**kwargs)


def test_direction_is_in_or_out() -> None:
    with pytest.raises(ValueError, match="direction"):
        LaneCorrelator(LANE, "ANT-K913", "sideways")


def test_faces_are_always_the_same_driver_and_the_higher_score_wins() -> None:
    assert similar(face(0.5), face(0.9))
    assert not similar(plate("1ABC234"), plate("1ABC2"))  # two characters apart
    [ready] = feed(lane(), [face(0.55), plate(), face(0.91, sec=3.5), container(), badge()])
    assert ready.face is not None and ready.face.match is not None and ready.face.match.score == 0.91


@pytest.mark.parametrize("order", ["mismatch_first", "match_first"])
def test_a_face_mismatch_is_kept_over_any_match_of_the_same_truck(order: str) -> None:
    """A retry or a spoof that matches after a mismatch must not hide it: the service hears the mismatch."""
    mismatch, match = face(0.3, sec=3.0, matched=False), face(0.99, sec=3.5)
    faces = [mismatch, match] if order == "mismatch_first" else [match, mismatch]
    [ready] = feed(lane(), [plate(), *faces, container(), badge()])
    assert ready.face == mismatch and ready.verify_fields()["face"] == {"match": {"matched": False, "score": 0.3}}


def test_verify_fields_carry_a_face_image_as_base64() -> None:
    image = FaceRead(lane=LANE, source="t", camera="kiosk", image=b"\xff\xd8jpeg", match=None, observed_at=T0)
    [with_face] = feed(lane(), [image, plate(), container(), badge()])
    assert with_face.verify_fields()["face"] == {"image": "/9hqcGVn"}


# -- faces after a truck was emitted (rule 3a) -------------------------------------------------------


def test_the_next_trucks_own_face_match_completes_it_within_the_window_of_the_truck_before() -> None:
    """A face is required. Truck A goes with its face; truck B pulls up within A's window and its driver's
    face is matched after B's plate was read: the face is B's, not a late duplicate of A's (before, it
    was dropped as one, and B timed out to review for want of a face)."""
    corr = lane(require={"plate", "container", "badge", "face"})
    [a] = feed(corr, [plate(), container(), badge(), face(0.9, sec=3.0)])
    b_face = face(0.95, sec=13.0)
    assert feed(corr, [plate("2XYZ987", sec=10.0), container("MAEU7654320", sec=11.0),
                       badge("AP-100248", sec=12.0)], start=110.0) == []
    [b] = corr.add(b_face, 113.5)
    assert b.complete and b.face == b_face and b.plate is not None and b.plate.text == "2XYZ987"
    assert a.face is not None and a.face != b.face and corr.take_dropped() == []


@pytest.mark.parametrize("late", ["redelivered", "captured_before_the_next_truck"])
def test_the_last_trucks_face_never_completes_the_next_truck(late: str) -> None:
    """A face is required. Truck A went with its face; truck B's plate, container and badge are in, its
    driver's face not yet. A's face again (an MQTT QoS 1 redelivery, the very same read), or a match the
    matcher made of A's driver before B came (observed before B's first read), is A's: were it B's, B would
    be let through on A's driver's face. It is reported as A's late read, and B waits for its own."""
    corr = lane(require={"plate", "container", "badge", "face"})
    a_face = face(0.9, sec=3.0)
    [a] = feed(corr, [plate(), container(), badge(), a_face])
    assert feed(corr, [plate("2XYZ987", sec=10.0), container("MAEU7654320", sec=11.0),
                       badge("AP-100248", sec=12.0)], start=110.0) == []
    again = a_face if late == "redelivered" else face(0.97, sec=8.0)
    assert corr.add(again, 113.0) == []
    [dropped] = corr.take_dropped()
    assert (dropped.reason, dropped.request_id) == (DropReason.LATE_READ, a.request_id)  # A carried a face
    assert corr.pending_count == 1
    [b] = corr.tick(110.0 + 30.0)  # no face of its own came: the window ends, the service reviews it
    assert b.outcome is Outcome.TIMED_OUT and b.face is None and b.missing == frozenset({ReadKind.FACE})


def test_a_late_face_for_a_truck_sent_without_one_is_reported_never_a_phantom_truck() -> None:
    """No face required: truck A goes on plate, container and badge. The matcher's "matched" for A's driver
    comes after, with nothing pending: it is A's late face (named, for the outbox), not a truck of its own
    that times out (before, a phantom truck opened), nor one the next truck's reads fill and that passes
    for B's driver's face."""
    corr = lane()
    [a] = feed(corr, [plate(), container(), badge()])
    assert a.face is None
    late = face(0.96, sec=4.0)
    assert corr.add(late, 104.0) == []
    [dropped] = corr.take_dropped()
    assert (dropped.reason, dropped.request_id, dropped.observed_at) == (DropReason.LATE_FACE, a.request_id, T0)
    assert (dropped.matched, dropped.score, dropped.kinds) == (True, 0.96, frozenset({ReadKind.FACE}))
    assert corr.add(late, 105.0) == []
    assert [d.reason for d in corr.take_dropped()] == [DropReason.LATE_READ]  # said once
    assert corr.pending_count == 0 and corr.tick(104.0 + 31.0) == []  # nothing opened that could time out
    [b] = feed(corr, [plate("2XYZ987", sec=10.0), container("MAEU7654320", sec=11.0), badge("AP-100248", sec=12.0)],
               start=110.0)
    assert b.face is None  # never A's driver's face


def test_a_late_face_captured_before_the_next_truck_came_is_the_truck_befores() -> None:
    """No face required, truck A sent without one; truck B's plate is in when A's driver's match arrives,
    captured before B's plate was read: A's late face, never B's (before, B took it: the next driver
    passed on the face of the one before)."""
    corr = lane()
    [a] = feed(corr, [plate(), container(), badge()])
    assert corr.add(plate("2XYZ987", sec=10.0), 110.0) == []
    assert corr.add(face(0.96, sec=4.0), 110.5) == []
    [dropped] = corr.take_dropped()
    assert (dropped.reason, dropped.request_id) == (DropReason.LATE_FACE, a.request_id)
    [b] = feed(corr, [container("MAEU7654320", sec=11.0), badge("AP-100248", sec=12.0)], start=111.0)
    assert b.face is None and b.plate is not None and b.plate.text == "2XYZ987"


def test_a_face_with_nothing_pending_and_no_truck_recent_opens_a_truck() -> None:
    """A face may be a truck's first read: with no truck emitted within the window it opens one."""
    corr = lane()
    first = face(0.9, sec=0.0)
    assert corr.add(first, 100.0) == [] and corr.pending_count == 1
    [ready] = feed(corr, [plate(sec=1.0), container(sec=2.0), badge(sec=3.0)], start=101.0)
    assert ready.face == first and corr.take_dropped() == []

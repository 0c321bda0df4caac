"""The pure face rules (identity.domain.face): quality, tolerance, decision, step-up."""

from __future__ import annotations

import math

import pytest

from identity.domain import face as f
from identity.domain.assurance import ACR_FACE, ACR_PASSKEY, ACR_UPSTREAM, AMR_PASSKEY

RULES = f.QualityRules(min_face_px=80, min_sharpness=150.0)


def box(size: int, top: int = 0, left: int = 0) -> f.Box:
    return f.Box(top=top, right=left + size, bottom=top + size, left=left)


def test_no_face_is_refused() -> None:
    assert f.judge_faces([], RULES) is f.FaceCode.NO_FACE
    assert f.largest([]) is None


def test_one_large_face_passes_and_the_largest_is_judged() -> None:
    assert f.judge_faces([box(120)], RULES) is None
    assert f.judge_faces([box(80)], RULES) is None  # exactly the minimum
    # a bystander far behind or a false detection (under half the size) does not count
    assert f.judge_faces([box(40, left=300), box(120)], RULES) is None
    assert f.largest([box(40), box(120, left=200)]) == box(120, left=200)


def test_a_second_face_half_as_large_makes_the_capture_ambiguous() -> None:
    assert f.judge_faces([box(124), box(72, left=400)], RULES) is f.FaceCode.MULTIPLE_FACES
    assert f.judge_faces([box(100), box(50, left=300)], RULES) is f.FaceCode.MULTIPLE_FACES  # exactly half
    assert f.judge_faces([box(100), box(49, left=300)], RULES) is None
    # a second face large enough to be judged itself counts, however large the first one is
    assert f.judge_faces([box(179), box(80, left=400)], RULES) is f.FaceCode.MULTIPLE_FACES
    assert f.judge_faces([box(179), box(79, left=400)], RULES) is None


def test_a_small_face_is_refused() -> None:
    assert f.judge_faces([box(79)], RULES) is f.FaceCode.TOO_SMALL
    # a face cut by the picture's edge is as small as its visible part
    assert f.Box(top=0, right=30, bottom=150, left=0).size == 30
    assert f.judge_faces([f.Box(top=0, right=30, bottom=150, left=0)], RULES) is f.FaceCode.TOO_SMALL


def test_blur() -> None:
    assert f.judge_sharpness(150.0, RULES) is None
    assert f.judge_sharpness(149.9, RULES) is f.FaceCode.BLURRED
    assert f.judge_sharpness(math.nan, RULES) is f.FaceCode.BLURRED  # never a silent pass


def test_quality_rules_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        f.QualityRules(min_face_px=0)
    with pytest.raises(ValueError):
        f.QualityRules(min_sharpness=math.nan)
    with pytest.raises(ValueError):
        f.QualityRules(min_sharpness=-1)


def test_tolerance_is_bounded() -> None:
    assert f.tolerance_or_default(None) == f.DEFAULT_TOLERANCE == 0.5
    assert f.tolerance_or_default(None, 0.45) == 0.45
    assert f.tolerance_or_default(0.3) == 0.3 and f.tolerance_or_default(0.6) == 0.6
    for bad in (0.61, 0.29, 1.0, 0, -0.5, math.nan, math.inf, True):
        with pytest.raises(ValueError):
            f.tolerance_or_default(bad)  # type: ignore[arg-type]


def test_templates_are_128_finite_numbers() -> None:
    assert f.valid_template([0.1] * 128)
    assert not f.valid_template([0.1] * 127)
    assert not f.valid_template([0.1] * 127 + [math.nan])
    assert not f.valid_template([0.1] * 127 + [math.inf])
    with pytest.raises(ValueError):
        f.distance([0.0] * 127, [0.0] * 128)


def test_decision_at_the_tolerance() -> None:
    enrolled = [0.0] * 128
    at = [0.5] + [0.0] * 127
    over = [0.5001] + [0.0] * 127
    assert f.decide(at, enrolled, 0.5, source="id_photo") == f.FaceMatch(0.5, True, None, 0.5)
    miss = f.decide(over, enrolled, 0.5, source="id_photo")
    assert (miss.matched, miss.reason, miss.distance) == (False, "face_mismatch", 0.5001)
    nan = f.decide([math.nan] + [0.0] * 127, enrolled, 0.5, source="live_capture")
    assert not nan.matched and nan.reason == "face_mismatch"
    assert f.refused(f.FaceCode.NO_FACE, 0.4) == f.FaceMatch(None, False, "face_not_found", 0.4)


def test_a_capture_as_close_as_a_copy_of_an_id_photo_enrolment_s_image_is_a_replay() -> None:
    """Review 165, finding 4: the ID photo (or a copy re-encoded) is not a capture of the person."""
    enrolled = [0.0] * 128
    assert f.decide(enrolled, enrolled, 0.5, source="id_photo") == f.FaceMatch(0.0, False, "face_replayed", 0.5)
    under = f.decide([0.0999] + [0.0] * 127, enrolled, 0.3, source="id_photo")
    assert (under.matched, under.reason, under.distance) == (False, "face_replayed", 0.0999)
    assert f.decide([f.COPY_DISTANCE] + [0.0] * 127, enrolled, 0.3,
                    source="id_photo") == f.FaceMatch(0.1, True, None, 0.3)
    assert f.COPY_DISTANCE < f.MIN_TOLERANCE


def test_a_capture_close_to_a_live_capture_enrolment_matches() -> None:
    """Two frames of one man from one camera may be that close: after a live-capture enrolment only the
    exact bytes (the service's digest claim) are a copy, not the distance."""
    enrolled = [0.0] * 128
    assert f.decide([0.0999] + [0.0] * 127, enrolled, 0.3,
                    source="live_capture") == f.FaceMatch(0.0999, True, None, 0.3)
    assert f.decide([0.04] + [0.0] * 127, enrolled, 0.3, source="live_capture").matched
    assert f.decide([0.31] + [0.0] * 127, enrolled, 0.3, source="live_capture").reason == "face_mismatch"


def test_a_face_raises_a_passkey_or_national_id_login_and_is_never_a_first_factor() -> None:
    assert f.stepped_up(ACR_PASSKEY, AMR_PASSKEY) == (ACR_FACE, ("hwk", "user", "mfa", "face"))
    assert f.stepped_up(ACR_UPSTREAM, ["pop"]) == (ACR_FACE, ("pop", "face"))
    assert f.stepped_up(ACR_FACE, ["hwk", "face"]) == (ACR_FACE, ("hwk", "face"))  # again: no duplicate
    for weak in ("", "urn:quaygate:acr:password", "0"):
        with pytest.raises(ValueError):
            f.stepped_up(weak, [])


def test_a_bad_capture_is_answered_before_a_missing_enrolment_except_to_the_person_himself() -> None:
    """The enrolment oracle: to anyone but the person, a capture's own refusal comes first, so the same
    bad capture answers the same whether or not a face is enrolled; the person is told he has none."""
    none, blur = f.FaceCode.NOT_ENROLLED, f.FaceCode.BLURRED
    assert f.first_refusal(none, blur, own_face=False) is blur
    assert f.first_refusal(None, blur, own_face=False) is blur
    assert f.first_refusal(none, None, own_face=False) is none
    assert f.first_refusal(none, blur, own_face=True) is none
    assert f.first_refusal(None, blur, own_face=True) is blur
    assert f.first_refusal(None, None, own_face=True) is None

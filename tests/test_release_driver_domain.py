"""The driver's answer to a nomination, pure: every arrow, every guard, and the gate rule."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import Actor
from release_service.domain.release import (
    NOMINATION_REFUSED,
    DriverResponse,
    LightKind,
    LightStatus,
    RefusalReason,
    ReleaseRight,
    State,
)

from .test_release_domain import CLEAR, CUSTOMS, DRIVER, HAUL, LINE, NOW, PLATE, TERMINAL, at_haulier, code

ME = Actor("driver-app", None, None, person_id=DRIVER)
OTHER_DRIVER = Actor("driver-app", None, None, person_id=uuid.uuid4())


def nominated(driver: uuid.UUID = DRIVER) -> ReleaseRight:
    r = at_haulier()
    r.nominate(by=HAUL, driver_person_id=driver, plate=PLATE, trailer_plate=None, slot=None, screening=CLEAR,
               now=NOW)
    r.pending_events.clear()
    return r


def green(r: ReleaseRight) -> ReleaseRight:
    r.set_light(kind=LightKind.CUSTOMS, status=LightStatus.GREEN, reason=None, by=CUSTOMS, now=NOW)
    r.set_light(kind=LightKind.TERMINAL, status=LightStatus.GREEN, reason=None, by=TERMINAL, now=NOW)
    r.pending_events.clear()
    return r


def test_accept_then_refuse() -> None:
    r = nominated()
    r.accept_nomination(by=ME, now=NOW)
    assert r.nomination is not None and r.nomination.response is DriverResponse.ACCEPTED
    assert r.nomination.responded_at == NOW and r.state is State.NOMINATED
    [e] = r.pending_events
    assert e.type == "release.nomination.accepted" and e.data["response"] == "accepted"
    assert e.actor["person_id"] == str(DRIVER) and e.actor["organisation_id"] is None
    # the truck broke down after all: an accepted nomination may still be refused
    r.refuse_nomination(by=ME, now=NOW, reason=RefusalReason.WRONG_TRUCK)
    assert r.nomination.response is DriverResponse.REFUSED
    assert r.nomination.response_reason is RefusalReason.WRONG_TRUCK
    assert r.pending_events[-1].type == "release.nomination.refused"
    assert r.pending_events[-1].data["reason"] == "wrong_truck"


def test_refuse_keeps_the_nomination_and_defaults_the_reason() -> None:
    r = nominated()
    r.refuse_nomination(by=ME, now=NOW, reason=None)
    assert r.nomination is not None and r.nomination.driver_person_id == DRIVER
    assert r.nomination.response is DriverResponse.REFUSED and r.nomination.response_reason is RefusalReason.OTHER


def test_each_answer_once() -> None:
    r = nominated()
    r.accept_nomination(by=ME, now=NOW)
    assert code(r.accept_nomination, by=ME, now=NOW) is ErrorCode.ILLEGAL_TRANSITION
    r.refuse_nomination(by=ME, now=NOW, reason=None)
    assert code(r.refuse_nomination, by=ME, now=NOW, reason=None) is ErrorCode.ILLEGAL_TRANSITION
    # refused is final for this nomination: the operator may already be planning someone else
    assert code(r.accept_nomination, by=ME, now=NOW) is ErrorCode.ILLEGAL_TRANSITION


@pytest.mark.parametrize("who", [
    OTHER_DRIVER,  # another person
    HAUL,  # the operator itself
    Actor("haul-console", HAUL.organisation_id, HAUL.kind, person_id=DRIVER),  # the driver acting for a company
    Actor("driver-app", None, None),  # no person at all
    LINE,
])
def test_only_the_nominated_driver_answers(who: Actor) -> None:
    r = nominated()
    assert code(r.accept_nomination, by=who, now=NOW) is ErrorCode.FORBIDDEN
    assert code(r.refuse_nomination, by=who, now=NOW, reason=None) is ErrorCode.FORBIDDEN
    assert r.nomination is not None and r.nomination.response is DriverResponse.PENDING and not r.pending_events


def test_no_nomination_no_answer() -> None:
    r = at_haulier()
    assert code(r.accept_nomination, by=ME, now=NOW) is ErrorCode.FORBIDDEN


def test_no_answer_after_gate_in_or_outside_the_window() -> None:
    r = green(nominated())
    r.gate_in(by=TERMINAL, now=NOW, decision_id=uuid.uuid4())
    assert code(r.accept_nomination, by=ME, now=NOW) is ErrorCode.ALREADY_USED
    assert code(r.refuse_nomination, by=ME, now=NOW, reason=None) is ErrorCode.ALREADY_USED
    late = nominated()
    assert code(late.accept_nomination, by=ME, now=late.valid_until + timedelta(seconds=1)) is ErrorCode.RIGHT_EXPIRED
    revoked = nominated()
    revoked.revoke(by=LINE, now=NOW, reason=None)
    assert code(revoked.refuse_nomination, by=ME, now=NOW, reason=None) is ErrorCode.ILLEGAL_TRANSITION


def test_renomination_resets_the_answer() -> None:
    r = nominated()
    r.refuse_nomination(by=ME, now=NOW, reason=RefusalReason.UNAVAILABLE)
    r.nominate(by=HAUL, driver_person_id=DRIVER, plate=PLATE, trailer_plate=None, slot=None, screening=CLEAR,
               now=NOW + timedelta(minutes=5))
    assert r.nomination is not None and r.nomination.response is DriverResponse.PENDING
    assert r.nomination.response_reason is None and r.nomination.responded_at is None
    r.accept_nomination(by=ME, now=NOW)
    assert r.nomination.response is DriverResponse.ACCEPTED


def test_a_refused_nomination_does_not_admit_the_truck() -> None:
    r = green(nominated())
    r.refuse_nomination(by=ME, now=NOW, reason=None)
    with pytest.raises(DomainError) as err:
        r.gate_in(by=TERMINAL, now=NOW, decision_id=uuid.uuid4())
    assert err.value.context["reason"] == NOMINATION_REFUSED
    assert r.state is State.NOMINATED
    # the terminal's audited override stays open
    r.override_gate_in(by=TERMINAL, now=NOW, reason="driver came after all", decision_id=uuid.uuid4())
    assert r.state is State.GATED_IN


def test_pending_and_accepted_nominations_pass_the_gate() -> None:
    for answer in (None, "accept"):
        r = green(nominated())
        if answer:
            r.accept_nomination(by=ME, now=NOW)
        r.gate_in(by=TERMINAL, now=NOW, decision_id=uuid.uuid4())
        assert r.state is State.GATED_IN

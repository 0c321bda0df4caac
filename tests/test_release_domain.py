"""The release right's state machine, pure: every transition and every guard."""

from __future__ import annotations

import re
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.iso6346 import ContainerNumber
from release_service.domain.parties import Actor, OrgKind
from release_service.domain.plates import Plate
from release_service.domain.release import (
    KEY_CHARACTERS,
    VESSEL_CALL_FOLDS,
    LightKind,
    LightStatus,
    ReleaseRight,
    Screening,
    Slot,
    State,
    TransferState,
    vessel_call_key,
)

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
LINE = Actor("line", uuid.uuid4(), OrgKind.SHIPPING_LINE)
OTHER_LINE = Actor("line2", uuid.uuid4(), OrgKind.SHIPPING_LINE)
FWD = Actor("fwd", uuid.uuid4(), OrgKind.RELEASE_PARTY)
HAUL = Actor("haul", uuid.uuid4(), OrgKind.TRANSPORT_OPERATOR)
HAUL2 = Actor("haul2", uuid.uuid4(), OrgKind.TRANSPORT_OPERATOR)
CUSTOMS = Actor("customs", uuid.uuid4(), OrgKind.CUSTOMS)
TERMINAL = Actor("term", uuid.uuid4(), OrgKind.TERMINAL, terminal_code="BEANR-K1700")
OTHER_TERMINAL = Actor("term2", uuid.uuid4(), OrgKind.TERMINAL, terminal_code="BEANR-K913")
DRIVER = uuid.uuid4()
PLATE = Plate.parse("1-ABC-123", "BE")
CLEAR = Screening("clear")


def issue(**kw: object) -> ReleaseRight:
    args: dict[str, object] = dict(
        id=uuid.uuid4(), container=ContainerNumber.parse("CSQU3054383"), bill_of_lading="BL1",
        vessel_call="VC1", terminal="beanr-k1700", by=LINE, release_to=FWD.organisation_id,
        release_to_kind=OrgKind.RELEASE_PARTY, valid_from=NOW - timedelta(hours=1),
        valid_until=NOW + timedelta(days=3), now=NOW,
    )
    args.update(kw)
    return ReleaseRight.issue(**args)  # type: ignore[arg-type]


def code(fn, *a, **kw) -> ErrorCode:  # type: ignore[no-untyped-def]
    with pytest.raises(DomainError) as err:
        fn(*a, **kw)
    return err.value.code


def at_haulier() -> ReleaseRight:
    r = issue()
    t = r.start_transfer(transfer_id=uuid.uuid4(), by=FWD, to_organisation_id=HAUL.organisation_id,
                         to_kind=OrgKind.TRANSPORT_OPERATOR, now=NOW)
    r.accept_transfer(transfer_id=t.id, by=HAUL, now=NOW, sender_active=True)
    return r


def nominated() -> ReleaseRight:
    r = at_haulier()
    r.nominate(by=HAUL, driver_person_id=DRIVER, plate=PLATE, trailer_plate=None, slot=None, screening=CLEAR, now=NOW)
    return r


def green(r: ReleaseRight) -> ReleaseRight:
    r.set_light(kind=LightKind.CUSTOMS, status=LightStatus.GREEN, reason=None, by=CUSTOMS, now=NOW)
    r.set_light(kind=LightKind.TERMINAL, status=LightStatus.GREEN, reason=None, by=TERMINAL, now=NOW)
    return r


def test_issue_goes_to_first_party_with_customs_and_terminal_red() -> None:
    r = issue()
    assert r.state is State.ACTIVE and r.holder_organisation_id == FWD.organisation_id
    assert r.terminal == "BEANR-K1700" and r.commercial.green and not r.lights_green and not r.pickable(NOW)
    assert r.active_key == "CSQU3054383|VC1"
    assert [e.type for e in r.pending_events] == ["release.issued"]


@pytest.mark.parametrize("by", [FWD, HAUL, CUSTOMS, TERMINAL])
def test_only_a_line_issues(by: Actor) -> None:
    assert code(issue, by=by) is ErrorCode.WRONG_ORGANISATION_KIND


def test_issue_only_to_a_holder_kind() -> None:
    assert code(issue, release_to_kind=OrgKind.CUSTOMS) is ErrorCode.WRONG_ORGANISATION_KIND


@pytest.mark.parametrize(
    "vf,vu",
    [(NOW, NOW), (NOW, NOW - timedelta(hours=1)), (NOW - timedelta(days=2), NOW - timedelta(days=1)),
     (NOW, NOW + timedelta(days=200)), (NOW.replace(tzinfo=None), NOW + timedelta(days=1))],
)
def test_bad_validity_windows(vf: datetime, vu: datetime) -> None:
    assert code(issue, valid_from=vf, valid_until=vu) is ErrorCode.INVALID_VALIDITY_WINDOW


def test_transfer_chain_and_holder_change() -> None:
    r = at_haulier()
    assert r.holder_organisation_id == HAUL.organisation_id and r.pending_transfer is None
    assert [t.state for t in r.changed_transfers] == [TransferState.ACCEPTED]


def test_transfer_guards() -> None:
    r = issue()
    tid = uuid.uuid4()
    kw = dict(transfer_id=tid, to_organisation_id=HAUL.organisation_id, to_kind=OrgKind.TRANSPORT_OPERATOR, now=NOW)
    assert code(r.start_transfer, by=HAUL, **kw) is ErrorCode.NOT_HOLDER
    assert code(r.start_transfer, by=FWD, transfer_id=tid, to_organisation_id=FWD.organisation_id,
                to_kind=OrgKind.RELEASE_PARTY, now=NOW) is ErrorCode.SELF_TRANSFER
    assert code(r.start_transfer, by=FWD, transfer_id=tid, to_organisation_id=CUSTOMS.organisation_id,
                to_kind=OrgKind.CUSTOMS, now=NOW) is ErrorCode.WRONG_ORGANISATION_KIND
    r.start_transfer(by=FWD, **kw)
    assert code(r.start_transfer, by=FWD, **{**kw, "transfer_id": uuid.uuid4()}) is ErrorCode.TRANSFER_PENDING
    assert code(r.accept_transfer, transfer_id=tid, by=FWD, now=NOW, sender_active=True) is ErrorCode.NOT_RECIPIENT
    assert code(r.withdraw_transfer, transfer_id=tid, by=HAUL, now=NOW) is ErrorCode.NOT_SENDER
    assert code(r.accept_transfer, transfer_id=uuid.uuid4(), by=HAUL, now=NOW,
                sender_active=True) is ErrorCode.TRANSFER_NOT_PENDING


def test_decline_and_withdraw_leave_the_holder() -> None:
    r = issue()
    t = r.start_transfer(transfer_id=uuid.uuid4(), by=FWD, to_organisation_id=HAUL.organisation_id,
                         to_kind=OrgKind.TRANSPORT_OPERATOR, now=NOW)
    r.decline_transfer(transfer_id=t.id, by=HAUL, now=NOW, reason="not ours")
    assert t.state is TransferState.DECLINED and r.holder_organisation_id == FWD.organisation_id
    t2 = r.start_transfer(transfer_id=uuid.uuid4(), by=FWD, to_organisation_id=HAUL.organisation_id,
                          to_kind=OrgKind.TRANSPORT_OPERATOR, now=NOW)
    r.withdraw_transfer(transfer_id=t2.id, by=FWD, now=NOW)
    assert t2.state is TransferState.WITHDRAWN
    # a withdrawn transfer cannot be accepted afterwards
    assert code(r.accept_transfer, transfer_id=t2.id, by=HAUL, now=NOW,
                sender_active=True) is ErrorCode.TRANSFER_NOT_PENDING


def test_only_the_holder_of_a_live_right_may_send_it() -> None:
    """``require_sender``, which the transfer use case runs before it looks the recipient up (review 130,
    finding 4): every other party is told not_holder, whoever it names."""
    r = issue()
    for other in (HAUL, LINE, CUSTOMS, TERMINAL):
        assert code(r.require_sender, other, NOW) is ErrorCode.NOT_HOLDER
    r.require_sender(FWD, NOW)
    r.block(by=LINE, now=NOW, reason=None)
    assert code(r.require_sender, FWD, NOW) is ErrorCode.RIGHT_BLOCKED
    assert code(r.require_sender, FWD, NOW + timedelta(days=4)) is ErrorCode.RIGHT_EXPIRED


def test_a_transfer_from_a_deactivated_sender_is_not_accepted() -> None:
    """Review 130, finding 1: a company port security deactivated sets nothing more in motion. Its
    recipient may still decline."""
    r = issue()
    t = r.start_transfer(transfer_id=uuid.uuid4(), by=FWD, to_organisation_id=HAUL.organisation_id,
                         to_kind=OrgKind.TRANSPORT_OPERATOR, now=NOW)
    assert code(r.accept_transfer, transfer_id=t.id, by=HAUL, now=NOW,
                sender_active=False) is ErrorCode.ORGANISATION_INACTIVE
    assert r.holder_organisation_id == FWD.organisation_id and t.state is TransferState.PENDING
    assert code(r.accept_transfer, transfer_id=t.id, by=HAUL2, now=NOW,  # the recipient is asked first
                sender_active=False) is ErrorCode.NOT_RECIPIENT
    r.decline_transfer(transfer_id=t.id, by=HAUL, now=NOW, reason=None)
    assert t.state is TransferState.DECLINED


PORT_SECURITY = {"client_id": "admin", "organisation_id": None, "kind": "port_security", "person_id": None}


def test_deactivating_a_sender_or_recipient_cancels_its_pending_transfer_and_tells_the_line() -> None:
    r = issue()
    t = r.start_transfer(transfer_id=uuid.uuid4(), by=FWD, to_organisation_id=HAUL.organisation_id,
                         to_kind=OrgKind.TRANSPORT_OPERATOR, now=NOW)
    r.pending_events.clear()
    assert not r.organisation_deactivated(organisation_id=HAUL2.organisation_id, by=PORT_SECURITY, now=NOW)
    assert r.organisation_deactivated(organisation_id=FWD.organisation_id, by=PORT_SECURITY, now=NOW)
    assert t.state is TransferState.CANCELLED and r.pending_transfer is None and t in r.changed_transfers
    assert [(e.type, e.actor, e.data) for e in r.pending_events] == [
        ("release.transfer.cancelled", PORT_SECURITY,
         {"transfer_id": str(t.id), "from": str(FWD.organisation_id), "to": str(HAUL.organisation_id),
          "reason": "organisation_deactivated", "state": "active"}),
        ("release.holder_deactivated", PORT_SECURITY, {"holder": str(FWD.organisation_id), "state": "active"})]
    assert r.holder_organisation_id == FWD.organisation_id  # the line decides: revoke, or issue anew

    # The recipient deactivated: the transfer to it cancelled; the holder is not concerned.
    r = issue()
    t = r.start_transfer(transfer_id=uuid.uuid4(), by=FWD, to_organisation_id=HAUL.organisation_id,
                         to_kind=OrgKind.TRANSPORT_OPERATOR, now=NOW)
    r.pending_events.clear()
    assert r.organisation_deactivated(organisation_id=HAUL.organisation_id, by=PORT_SECURITY, now=NOW)
    assert t.state is TransferState.CANCELLED
    assert [e.type for e in r.pending_events] == ["release.transfer.cancelled"]
    assert not r.organisation_reactivated(organisation_id=HAUL.organisation_id, by=PORT_SECURITY, now=NOW)
    assert r.organisation_reactivated(organisation_id=FWD.organisation_id, by=PORT_SECURITY, now=NOW)
    assert r.pending_events[-1].type == "release.holder_reactivated" and t.state is TransferState.CANCELLED


def test_an_ended_right_tells_no_line_of_its_holder() -> None:
    r = issue()
    r.revoke(by=LINE, now=NOW, reason=None)
    assert not r.organisation_deactivated(organisation_id=FWD.organisation_id, by=PORT_SECURITY, now=NOW)
    lapsed = issue()
    assert not lapsed.organisation_deactivated(organisation_id=FWD.organisation_id, by=PORT_SECURITY,
                                               now=NOW + timedelta(days=4))
    inside = green(nominated())
    inside.gate_in(by=TERMINAL, now=NOW, decision_id=uuid.uuid4())
    assert inside.organisation_deactivated(organisation_id=HAUL.organisation_id, by=PORT_SECURITY, now=NOW)


def test_no_override_for_the_right_of_a_deactivated_holder() -> None:
    r = green(nominated())
    r.holder_active = False  # as read with the right
    assert code(r.require_overridable, NOW) is ErrorCode.ORGANISATION_INACTIVE
    r.holder_active = True
    r.require_overridable(NOW)


def test_withdraw_after_acceptance_is_refused() -> None:
    r = issue()
    t = r.start_transfer(transfer_id=uuid.uuid4(), by=FWD, to_organisation_id=HAUL.organisation_id,
                         to_kind=OrgKind.TRANSPORT_OPERATOR, now=NOW)
    r.accept_transfer(transfer_id=t.id, by=HAUL, now=NOW, sender_active=True)
    assert code(r.withdraw_transfer, transfer_id=t.id, by=FWD, now=NOW) is ErrorCode.TRANSFER_NOT_PENDING


def test_nomination_rules() -> None:
    r = issue()
    nom = dict(driver_person_id=DRIVER, plate=PLATE, trailer_plate=None, slot=None, screening=CLEAR, now=NOW)
    assert code(r.nominate, by=FWD, **nom) is ErrorCode.WRONG_ORGANISATION_KIND  # forwarder is not a haulier
    assert code(r.nominate, by=HAUL, **nom) is ErrorCode.NOT_HOLDER
    r = at_haulier()
    assert code(r.nominate, by=HAUL, **{**nom, "screening": Screening("banned", ("person_banned",))}) \
        is ErrorCode.DRIVER_SCREENING_FAILED
    assert r.state is State.ACTIVE
    r.nominate(by=HAUL, **nom)
    assert r.state is State.NOMINATED and r.nomination and r.nomination.driver_person_id == DRIVER
    other = uuid.uuid4()
    r.nominate(by=HAUL, **{**nom, "driver_person_id": other})
    assert r.nomination.driver_person_id == other
    assert r.pending_events[-1].type == "release.renominated"


def test_slot_must_fit_the_window() -> None:
    r = at_haulier()
    late = Slot(NOW + timedelta(days=5), NOW + timedelta(days=5, hours=1))
    assert code(r.nominate, by=HAUL, driver_person_id=DRIVER, plate=PLATE, trailer_plate=None, slot=late,
                screening=CLEAR, now=NOW) is ErrorCode.INVALID_SLOT
    with pytest.raises(DomainError):
        Slot(NOW, NOW)


def test_a_right_starts_at_most_ninety_days_ahead() -> None:
    """A window in the year 8999 passed every rule (after valid_from, two months long, not past)."""
    issue(valid_from=NOW + timedelta(days=90), valid_until=NOW + timedelta(days=100))
    for start in (NOW + timedelta(days=90, microseconds=1), datetime(8999, 1, 1, tzinfo=UTC)):
        with pytest.raises(DomainError) as err:
            issue(valid_from=start, valid_until=start + timedelta(days=60))
        assert err.value.code is ErrorCode.INVALID_VALIDITY_WINDOW and err.value.context == {"field": "valid_from"}
    r = issue()
    assert code(r.update, by=LINE, now=NOW, valid_from=NOW + timedelta(days=91),
                valid_until=NOW + timedelta(days=95)) is ErrorCode.INVALID_VALIDITY_WINDOW


@pytest.mark.parametrize(("start", "end"), [
    (datetime(1900, 1, 1, tzinfo=UTC), NOW + timedelta(hours=2)),  # overlapped the window: was taken
    (NOW + timedelta(hours=1), datetime(8999, 6, 1, tzinfo=UTC)),  # overlapped the window: was taken
    (NOW - timedelta(hours=2), NOW + timedelta(hours=1)),  # begins before valid_from (an hour ago)
    (NOW + timedelta(days=2, hours=23), NOW + timedelta(days=3, hours=1)),  # ends after valid_until
    (NOW + timedelta(hours=1), NOW + timedelta(hours=25, microseconds=1)),  # longer than a day
    (NOW - timedelta(minutes=50), NOW),  # ended
], ids=["from_1900", "to_8999", "before_the_window", "after_the_window", "longer_than_a_day", "ended"])
def test_a_slot_lies_inside_the_window_and_lasts_at_most_a_day(start: datetime, end: datetime) -> None:
    r = at_haulier()
    with pytest.raises(DomainError) as err:
        r.nominate(by=HAUL, driver_person_id=DRIVER, plate=PLATE, trailer_plate=None, slot=Slot(start, end),
                   screening=CLEAR, now=NOW)
    assert err.value.code is ErrorCode.INVALID_SLOT and err.value.context == {"field": "slot"}
    assert r.nomination is None and r.state is State.ACTIVE
    r.nominate(by=HAUL, driver_person_id=DRIVER, plate=PLATE, trailer_plate=None, screening=CLEAR, now=NOW,
               slot=Slot(NOW - timedelta(minutes=30), NOW + timedelta(hours=23, minutes=30)))  # a day, ongoing


def test_accepting_a_transfer_clears_the_previous_holders_nomination() -> None:
    r = nominated()
    t = r.start_transfer(transfer_id=uuid.uuid4(), by=HAUL, to_organisation_id=HAUL2.organisation_id,
                         to_kind=OrgKind.TRANSPORT_OPERATOR, now=NOW)
    assert code(r.nominate, by=HAUL, driver_person_id=DRIVER, plate=PLATE, trailer_plate=None, slot=None,
                screening=CLEAR, now=NOW) is ErrorCode.TRANSFER_PENDING
    r.accept_transfer(transfer_id=t.id, by=HAUL2, now=NOW, sender_active=True)
    assert r.state is State.ACTIVE and r.nomination is None


def test_lights_by_owner_only() -> None:
    r = issue()
    assert code(r.set_light, kind=LightKind.CUSTOMS, status=LightStatus.GREEN, reason=None, by=LINE, now=NOW) \
        is ErrorCode.NOT_LIGHT_OWNER
    assert code(r.set_light, kind=LightKind.COMMERCIAL, status=LightStatus.RED, reason=None, by=OTHER_LINE,
                now=NOW) is ErrorCode.NOT_LIGHT_OWNER
    assert code(r.set_light, kind=LightKind.TERMINAL, status=LightStatus.GREEN, reason=None,
                by=OTHER_TERMINAL, now=NOW) is ErrorCode.NOT_LIGHT_OWNER
    assert code(r.set_light, kind=LightKind.TERMINAL, status=LightStatus.SCAN, reason=None, by=TERMINAL,
                now=NOW) is ErrorCode.INVALID_LIGHT
    r.set_light(kind=LightKind.CUSTOMS, status=LightStatus.SCAN, reason="selected", by=CUSTOMS, now=NOW)
    assert r.customs.status is LightStatus.SCAN
    r.set_light(kind=LightKind.CUSTOMS, status=LightStatus.GREEN, reason="scanned", by=CUSTOMS, now=NOW)
    green(r)
    assert r.lights_green and r.pickable(NOW)


def test_block_freezes_until_unblocked() -> None:
    r = nominated()
    green(r)
    assert code(r.block, by=HAUL, now=NOW, reason=None) is ErrorCode.NOT_ISSUER
    r.block(by=LINE, now=NOW, reason="payment")
    assert code(r.block, by=LINE, now=NOW, reason=None) is ErrorCode.ILLEGAL_TRANSITION
    assert code(r.gate_in, by=TERMINAL, now=NOW, decision_id=uuid.uuid4()) is ErrorCode.RIGHT_BLOCKED
    assert code(r.start_transfer, transfer_id=uuid.uuid4(), by=HAUL, to_organisation_id=HAUL2.organisation_id,
                to_kind=OrgKind.TRANSPORT_OPERATOR, now=NOW) is ErrorCode.RIGHT_BLOCKED
    r.unblock(by=LINE, now=NOW, reason=None)
    r.gate_in(by=TERMINAL, now=NOW, decision_id=uuid.uuid4())
    assert r.state is State.GATED_IN


def test_gate_in_once_then_out() -> None:
    r = green(nominated())
    assert code(r.gate_in, by=OTHER_TERMINAL, now=NOW, decision_id=uuid.uuid4()) is ErrorCode.NOT_TERMINAL
    r.gate_in(by=TERMINAL, now=NOW, decision_id=uuid.uuid4())
    assert code(r.gate_in, by=TERMINAL, now=NOW, decision_id=uuid.uuid4()) is ErrorCode.ALREADY_USED
    assert code(r.nominate, by=HAUL, driver_person_id=DRIVER, plate=PLATE, trailer_plate=None, slot=None,
                screening=CLEAR, now=NOW) is ErrorCode.ILLEGAL_TRANSITION
    r.gate_out(by=TERMINAL, now=NOW, decision_id=uuid.uuid4())
    assert r.state is State.COMPLETED and r.active_key is None
    assert code(r.revoke, by=LINE, now=NOW, reason=None) is ErrorCode.ILLEGAL_TRANSITION


def test_gate_in_needs_green_lights_and_a_nomination() -> None:
    r = nominated()
    assert code(r.gate_in, by=TERMINAL, now=NOW, decision_id=uuid.uuid4()) is ErrorCode.ILLEGAL_TRANSITION
    r = green(at_haulier())
    assert code(r.gate_in, by=TERMINAL, now=NOW, decision_id=uuid.uuid4()) is ErrorCode.ILLEGAL_TRANSITION


def test_override_needs_a_reason() -> None:
    r = nominated()
    assert code(r.override_gate_in, by=TERMINAL, now=NOW, reason=" ", decision_id=uuid.uuid4()) \
        is ErrorCode.REASON_REQUIRED
    r.override_gate_in(by=TERMINAL, now=NOW, reason="customs officer on site", decision_id=uuid.uuid4())
    assert r.state is State.GATED_IN and r.pending_events[-1].type == "release.gate_override"


def test_revoke_ends_everything_including_a_pending_transfer() -> None:
    r = issue()
    t = r.start_transfer(transfer_id=uuid.uuid4(), by=FWD, to_organisation_id=HAUL.organisation_id,
                         to_kind=OrgKind.TRANSPORT_OPERATOR, now=NOW)
    assert code(r.revoke, by=FWD, now=NOW, reason=None) is ErrorCode.NOT_ISSUER
    r.revoke(by=LINE, now=NOW, reason="fraud suspected")
    assert r.state is State.REVOKED and t.state is TransferState.CANCELLED and r.active_key is None
    assert code(r.accept_transfer, transfer_id=t.id, by=HAUL, now=NOW,
                sender_active=True) is ErrorCode.TRANSFER_NOT_PENDING
    assert code(r.unblock, by=LINE, now=NOW, reason=None) is ErrorCode.ILLEGAL_TRANSITION


def test_delete_only_before_it_travels() -> None:
    r = at_haulier()
    assert code(r.delete, by=LINE, now=NOW, reason=None, travelled=True) is ErrorCode.ILLEGAL_TRANSITION
    r = issue()
    # Held by its first party again after a round trip along the chain: it has still travelled.
    assert code(r.delete, by=LINE, now=NOW, reason=None, travelled=True) is ErrorCode.ILLEGAL_TRANSITION
    assert r.state is State.ACTIVE
    r.delete(by=LINE, now=NOW, reason="issued in error", travelled=False)
    assert r.state is State.DELETED


def test_lapse_and_effective_state() -> None:
    r = nominated()
    later = r.valid_until + timedelta(seconds=1)
    assert r.effective_state(later) is State.EXPIRED and r.state is State.NOMINATED
    assert code(r.gate_in, by=TERMINAL, now=later, decision_id=uuid.uuid4()) in (
        ErrorCode.ILLEGAL_TRANSITION, ErrorCode.RIGHT_EXPIRED)
    assert r.lapse_if_due(later) and r.state is State.EXPIRED
    assert not r.lapse_if_due(later)


def test_not_yet_valid() -> None:
    r = issue(valid_from=NOW + timedelta(days=1), valid_until=NOW + timedelta(days=2))
    assert code(r.start_transfer, transfer_id=uuid.uuid4(), by=FWD, to_organisation_id=HAUL.organisation_id,
                to_kind=OrgKind.TRANSPORT_OPERATOR, now=NOW) is ErrorCode.RIGHT_NOT_YET_VALID


def test_update_by_issuer() -> None:
    r = issue()
    new_until = NOW + timedelta(days=5)
    assert code(r.update, by=FWD, now=NOW, valid_until=new_until) is ErrorCode.NOT_ISSUER
    r.update(by=LINE, now=NOW, valid_until=new_until, bill_of_lading="BL2")
    assert r.valid_until == new_until and r.bill_of_lading == "BL2"


def test_plates_are_normalised_and_checked() -> None:
    assert Plate.parse("1-abc 123", "be") == Plate("1ABC123", "BE")
    with pytest.raises(DomainError):
        Plate.parse("!", "BE")
    with pytest.raises(DomainError):
        Plate.parse("1ABC123", "Belgium")


def test_the_vessel_call_key_folds_as_str_upper_does() -> None:
    """The key's fold, written out (``VESSEL_CALL_FOLDS``: the store folds the list's vessel_call filter by
    it in SQL, review 159 finding 3), is what ``str.upper()`` makes of every code point, letters and digits
    only: the key of each live right's ``active_key`` stays what it was."""
    dropped = re.compile(f"[^{KEY_CHARACTERS}]")
    for point in range(sys.maxunicode + 1):
        c = chr(point)
        assert vessel_call_key.__wrapped__(c) == dropped.sub("", c.upper()), hex(point)
    assert set("".join(VESSEL_CALL_FOLDS.values())) <= set(KEY_CHARACTERS)
    assert vessel_call_key("2026-anr 0457") == vessel_call_key("2026ANR0457") == "2026ANR0457"
    assert vessel_call_key("Stra\u00dfe \ufb01x") == "STRASSEFIX"


def test_pickable_is_what_gate_in_asks_of_the_right_now() -> None:
    """Review 159 finding 4: three green lights alone are not pickable. In its window, not blocked, before
    the gate: pickable; not valid yet, blocked, revoked, past its window, gated in: not."""
    r = green(nominated())
    assert r.pickable(NOW)
    assert not r.pickable(r.valid_from - timedelta(seconds=1)) and r.pickable(r.valid_from)
    assert not r.pickable(r.valid_until)  # lapsed (effective_state), swept or not
    r.block(by=LINE, now=NOW, reason="checking")
    assert r.lights_green and not r.pickable(NOW)
    r.unblock(by=LINE, now=NOW, reason=None)
    r.gate_in(by=TERMINAL, now=NOW, decision_id=uuid.uuid4())
    assert r.lights_green and not r.pickable(NOW)
    revoked = green(issue())
    revoked.revoke(by=LINE, now=NOW, reason="duplicate")
    assert revoked.lights_green and not revoked.pickable(NOW)

"""The badge rules (identity.domain.badges): numbers per scheme, card UIDs, validity, status, masking."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from identity.domain import badges as b
from identity.domain.badges import BadgeRefused, BadgeStatus, Scheme
from identity.domain.screening import BanScreening, ScreeningResult

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=365)
ID = uuid.UUID(int=1)


def _code(fn, *args, **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(BadgeRefused) as info:
        fn(*args, **kw)
    return info.value.code


# ---- numbers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["AP-100230", "ap-100230", " AP 100230 ", "AP100230"])
def test_alfapass_numbers_are_read_leniently_and_kept_canonical(raw: str) -> None:
    assert b.validate_number(Scheme.ALFAPASS, raw) == "AP-100230"


@pytest.mark.parametrize("raw", ["PP12345676", "pp 1234 5676", "PP-12345676"])
def test_portpass_numbers_are_read_leniently_and_kept_canonical(raw: str) -> None:
    assert b.validate_number(Scheme.PORTPASS, raw) == "PP12345676"


@pytest.mark.parametrize(("scheme", "raw"), [
    (Scheme.ALFAPASS, "AP-100231"),  # Luhn check digit wrong
    (Scheme.ALFAPASS, "AP-100203"),  # two digits swapped: Luhn catches it
    (Scheme.ALFAPASS, "AP-10023"),  # too short
    (Scheme.ALFAPASS, "AP-1002300"),  # too long
    (Scheme.ALFAPASS, "PP12345676"),  # another scheme's number
    (Scheme.ALFAPASS, ""),
    (Scheme.PORTPASS, "PP12345677"),  # MOD 97-10 check wrong
    (Scheme.PORTPASS, "PP21345676"),  # transposition
    (Scheme.PORTPASS, "PP1234567"),
    (Scheme.PORTPASS, "AP-100230"),
    (Scheme.PORTPASS, "PP1234567X"),
    # Digits of other scripts: int() reads them, so the same badge would be stored under a second number.
    (Scheme.ALFAPASS, "AP-\u0661\u0660\u0660\u0662\u0663\u0660"),  # AP-100230 in Arabic-Indic digits
    (Scheme.PORTPASS, "PP\u0967\u0968\u0969\u096a\u096b\u096c\u096d\u096c"),  # PP12345676 in Devanagari
])
def test_bad_numbers_are_refused_per_scheme(scheme: Scheme, raw: str) -> None:
    assert _code(b.validate_number, scheme, raw) == "invalid_badge_number"


def test_every_generated_number_validates_and_every_single_digit_error_is_caught() -> None:
    for scheme in Scheme:
        for serial in (0, 1, 42, 10023, 99999):
            number = b.with_check(scheme, serial)
            assert b.validate_number(scheme, number) == number
            digits_at = [i for i, ch in enumerate(number) if ch.isdigit()]
            for i in digits_at:
                for d in "0123456789":
                    if d != number[i]:
                        wrong = number[:i] + d + number[i + 1:]
                        assert _code(b.validate_number, scheme, wrong) == "invalid_badge_number", wrong


def test_schemes() -> None:
    assert b.scheme_of(" AlfaPass ") is Scheme.ALFAPASS and b.scheme_of("portpass") is Scheme.PORTPASS
    assert _code(b.scheme_of, "oyster") == "invalid_scheme"


@pytest.mark.parametrize(("raw", "canonical"), [
    ("04a1b2c3d4e5f6", "04A1B2C3D4E5F6"), ("04:A1:B2:C3", "04A1B2C3"), ("0123456789ABCDEF0123", "0123456789ABCDEF0123"),
])
def test_card_uids_are_hex_of_iso14443_lengths(raw: str, canonical: str) -> None:
    assert b.validate_card_uid(raw) == canonical


@pytest.mark.parametrize("raw", ["", "04A1B2", "04A1B2C3D4E5F6G7", "04A1B2C3D4E5F", "ZZZZZZZZ",
                                 "04A1B2C3D4E5F6A1B2C3D4"])
def test_bad_card_uids_are_refused(raw: str) -> None:
    assert _code(b.validate_card_uid, raw) == "invalid_card_uid"


# ---- validity ------------------------------------------------------------------------------------

def test_validity_is_at_most_five_years() -> None:
    b.check_validity(NOW, b.add_years(NOW, 5), now=NOW)
    assert _code(b.check_validity, NOW, b.add_years(NOW, 5) + timedelta(seconds=1), now=NOW) == "validity_too_long"
    assert _code(b.check_validity, NOW, NOW, now=NOW) == "invalid_validity"
    assert _code(b.check_validity, NOW, NOW - timedelta(days=1), now=NOW) == "invalid_validity"
    assert _code(b.check_validity, NOW.replace(tzinfo=None), LATER.replace(tzinfo=None), now=NOW) == "invalid_validity"


def test_five_years_from_a_leap_day() -> None:
    leap = datetime(2028, 2, 29, tzinfo=UTC)
    assert b.add_years(leap, 5) == datetime(2033, 2, 28, tzinfo=UTC)
    b.check_validity(leap, datetime(2033, 2, 28, tzinfo=UTC), now=leap)
    assert _code(b.check_validity, leap, datetime(2033, 3, 1, tzinfo=UTC), now=leap) == "validity_too_long"


def test_a_validity_over_already_is_refused() -> None:
    """Moved into the rule from the service, which checked it after the rule (issue and CLI alike)."""
    assert _code(b.check_validity, NOW - timedelta(days=400), NOW - timedelta(days=1), now=NOW) == "invalid_validity"
    assert _code(b.check_validity, NOW - timedelta(days=400), NOW, now=NOW) == "invalid_validity"


@pytest.mark.parametrize(("start", "end"), [
    (NOW + timedelta(days=366), NOW + timedelta(days=400)),  # a year and a day ahead
    (datetime(8999, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)),  # taken before: a badge of the year 8999
    (datetime(9996, 1, 1, tzinfo=UTC), datetime(9997, 1, 1, tzinfo=UTC)),  # add_years(9996, 5) left the calendar
    (datetime(9999, 12, 31, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-12)))),
], ids=["a_year_and_a_day_ahead", "year_8999", "year_9996", "last_day_of_9999"])
def test_a_validity_starting_more_than_a_year_ahead_is_refused(start: datetime, end: datetime) -> None:
    """A badge registered years ahead is no badge anyone carries; from year 9996 the five-year bound itself
    overflowed (ValueError from add_years, a 500 at the API and a traceback at the CLI)."""
    assert _code(b.check_validity, start, end, now=NOW) == "invalid_validity"
    b.check_validity(NOW + timedelta(days=365), NOW + timedelta(days=400), now=NOW)  # a year ahead: taken


# ---- status machine ------------------------------------------------------------------------------

ALLOWED = {
    ("active", "inactive"), ("active", "blocked"), ("active", "revoked"), ("active", "expired"),
    ("inactive", "active"), ("inactive", "blocked"), ("inactive", "revoked"), ("inactive", "expired"),
    ("expired", "blocked"), ("expired", "revoked"),
}


@pytest.mark.parametrize("current", list(BadgeStatus))
@pytest.mark.parametrize("target", list(BadgeStatus))
def test_the_transition_table(current: BadgeStatus, target: BadgeStatus) -> None:
    def go() -> b.StatusChange:
        return b.change_status(ID, current, target, valid_until=LATER, actor="admin-1", reason="because", now=NOW)

    if (current.value, target.value) in ALLOWED:
        change = go()
        assert (change.from_status, change.to_status, change.actor, change.reason, change.at) == (
            current, target, "admin-1", "because", NOW)
    else:
        expected = {BadgeStatus.BLOCKED: "badge_final", BadgeStatus.REVOKED: "badge_final"}.get(current)
        if expected is None and target is current:
            expected = "status_unchanged"
        if expected is None and (current, target) == (BadgeStatus.EXPIRED, BadgeStatus.ACTIVE):
            expected = "renew_required"
        assert _code(go) == (expected or "transition_refused")


@pytest.mark.parametrize("target", list(BadgeStatus))
def test_blocked_is_final(target: BadgeStatus) -> None:
    assert _code(b.change_status, ID, BadgeStatus.BLOCKED, target, valid_until=LATER, actor="a", reason="r",
                 now=NOW) == "badge_final"
    assert _code(b.renew, ID, BadgeStatus.BLOCKED, valid_from=NOW, valid_until=LATER, actor="a", reason="r",
                 now=NOW) == "badge_final"


def test_every_change_names_who_and_why() -> None:
    kw = {"valid_until": LATER, "now": NOW}
    assert _code(b.change_status, ID, BadgeStatus.ACTIVE, BadgeStatus.INACTIVE, actor="", reason="lost", **kw) == (
        "actor_required")
    assert _code(b.change_status, ID, BadgeStatus.ACTIVE, BadgeStatus.INACTIVE, actor="a", reason="  ", **kw) == (
        "reason_required")
    assert _code(b.change_status, ID, BadgeStatus.ACTIVE, BadgeStatus.INACTIVE, actor="a", reason="x" * 501,
                 **kw) == "reason_too_long"
    assert _code(b.issued, ID, actor="a", reason="", now=NOW) == "reason_required"


def test_a_badge_past_its_validity_cannot_be_reactivated() -> None:
    assert _code(b.change_status, ID, BadgeStatus.INACTIVE, BadgeStatus.ACTIVE, valid_until=NOW, actor="a",
                 reason="found", now=NOW) == "badge_expired"


def test_renewing() -> None:
    until = b.add_years(NOW, 5)
    since = NOW - timedelta(days=400)
    frm, to, change = b.renew(ID, BadgeStatus.EXPIRED, valid_from=since, valid_until=until, actor="a",
                              reason="renewal", now=NOW)
    assert (frm, to) == (NOW, until)  # a start already past moves to the renewal
    assert change is not None and (change.from_status, change.to_status) == (BadgeStatus.EXPIRED, BadgeStatus.ACTIVE)
    assert b.renew(ID, BadgeStatus.ACTIVE, valid_from=since, valid_until=until, actor="a", reason="r",
                   now=NOW)[2] is None
    assert _code(b.renew, ID, BadgeStatus.ACTIVE, valid_from=since, valid_until=until + timedelta(days=1), actor="a",
                 reason="r", now=NOW) == "validity_too_long"
    assert _code(b.renew, ID, BadgeStatus.REVOKED, valid_from=since, valid_until=until, actor="a", reason="r",
                 now=NOW) == "badge_final"


def test_renewing_keeps_a_start_still_ahead() -> None:
    """A renewal extends: a badge not yet valid stays not yet valid (review 174, finding 4)."""
    ahead = NOW + timedelta(days=100)
    assert b.renew(ID, BadgeStatus.ACTIVE, valid_from=ahead, valid_until=ahead + timedelta(days=9), actor="a",
                   reason="r", now=NOW)[:2] == (ahead, ahead + timedelta(days=9))
    assert _code(b.renew, ID, BadgeStatus.ACTIVE, valid_from=ahead, valid_until=b.add_years(ahead, 5) + timedelta(
        days=1), actor="a", reason="r", now=NOW) == "validity_too_long"  # five years from the start kept
    assert _code(b.renew, ID, BadgeStatus.ACTIVE, valid_from=ahead, valid_until=ahead, actor="a", reason="r",
                 now=NOW) == "invalid_validity"


# ---- masking -------------------------------------------------------------------------------------

def test_numbers_are_masked_except_for_the_badge_office_and_the_holder() -> None:
    holder, other = uuid.uuid4(), uuid.uuid4()
    assert b.mask_number("AP-100230") == "AP-****30"
    assert b.mask_number("PP12345676") == "PP******76"
    assert b.shown_number("AP-100230", holder=holder, viewer=b.Viewer()) == "AP-****30"
    assert b.shown_number("AP-100230", holder=holder, viewer=b.Viewer(person_id=other)) == "AP-****30"
    assert b.shown_number("AP-100230", holder=holder, viewer=b.Viewer(person_id=holder)) == "AP-100230"
    assert b.shown_number("AP-100230", holder=holder, viewer=b.Viewer(badge_office=True)) == "AP-100230"
    assert b.mask_card_uid("04A1B2C3D4E5F6") == "**********E5F6"
    assert b.mask_number("AP-1") == "AP-*" and b.mask_card_uid("AB") == "**"


def test_the_screening_port_shape() -> None:
    class Clear:
        def screen(self, person_id: uuid.UUID, now: datetime, *, conn: object = None) -> ScreeningResult:
            return ScreeningResult("clear", 12.5, ())

    port: BanScreening = Clear()
    assert port.screen(ID, NOW) == ScreeningResult(status="clear", list_age_seconds=12.5, reasons=())

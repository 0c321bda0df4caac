"""What the database can hold (release_service/domain/storable.py), and the column type's own refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import postgresql

from quaygate.schema import UnstorableValue, UTCDateTime, releases
from release_service.domain import storable
from release_service.domain.errors import DomainError, ErrorCode

PLUS_ONE, MINUS_FIVE = timezone(timedelta(hours=1)), timezone(timedelta(hours=-5))


def test_a_time_is_put_in_utc_when_it_lies_within_what_is_stored() -> None:
    at = datetime(2026, 3, 1, 9, 30, tzinfo=PLUS_ONE)
    assert storable.utc_time(at) == at and storable.utc_time(at).tzinfo is UTC
    assert storable.utc_time(storable.EARLIEST) == storable.EARLIEST
    assert storable.utc_time(storable.LATEST) == storable.LATEST


@pytest.mark.parametrize("at", [
    datetime(1, 1, 1, tzinfo=PLUS_ONE),  # before year 1 once in UTC: astimezone overflows
    datetime(9999, 12, 31, 23, tzinfo=MINUS_FIVE),  # past year 9999 once in UTC
    storable.EARLIEST - timedelta(microseconds=1),
    storable.LATEST + timedelta(microseconds=1),
    datetime(2026, 3, 1),  # no offset
], ids=["before_year_1_in_utc", "past_year_9999_in_utc", "before_the_earliest", "past_the_latest", "naive"])
def test_a_time_outside_what_is_stored_is_refused_naming_its_field(at: datetime) -> None:
    with pytest.raises(ValueError, match="time"):
        storable.utc_time(at)
    with pytest.raises(DomainError) as err:
        storable.require_time(at, field="valid_until", code=ErrorCode.INVALID_VALIDITY_WINDOW)
    assert err.value.code is ErrorCode.INVALID_VALIDITY_WINDOW and err.value.context == {"field": "valid_until"}


@pytest.mark.parametrize("value", ["BL-\x0012", "BL\x7f", "BL\x85", "BL\x1b[31m", "BL\n12", "BL-\ud800"],
                         ids=["nul", "del", "c1_next_line", "escape", "line_break", "lone_surrogate"])
def test_text_with_a_control_character_or_a_lone_surrogate_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="control character|surrogate"):
        storable.text(value)
    with pytest.raises(DomainError) as err:
        storable.require_text(value, field="bill_of_lading")
    assert err.value.code is ErrorCode.INVALID_TEXT and err.value.context == {"field": "bill_of_lading"}


def test_free_text_may_run_over_lines_but_holds_no_other_control_character() -> None:
    assert storable.text("held for scan:\n\tseal broken\r\n", multiline=True) == "held for scan:\n\tseal broken\r\n"
    with pytest.raises(ValueError):
        storable.text("held\x00", multiline=True)
    assert storable.text("Liège ✓ ß 東京") == "Liège ✓ ß 東京"


def test_a_text_is_measured_as_stored_after_normalisation() -> None:
    terminal = "\u00df" * 32  # 32 characters as sent, 64 once upper() has made each "SS"
    assert storable.text(terminal, max_length=storable.MAX_TERMINAL) == terminal
    with pytest.raises(ValueError, match="64 characters"):
        storable.text(terminal.upper(), max_length=storable.MAX_TERMINAL)


def test_the_limits_are_the_columns() -> None:
    assert (releases.c.bill_of_lading.type.length, releases.c.vessel_call.type.length,
            releases.c.terminal.type.length) == (storable.MAX_BILL_OF_LADING, storable.MAX_VESSEL_CALL,
                                                 storable.MAX_TERMINAL)


@pytest.mark.parametrize("at", [datetime(1, 1, 1, tzinfo=PLUS_ONE), datetime(9999, 12, 31, 23, tzinfo=MINUS_FIVE),
                                datetime(2026, 3, 1)], ids=["before_year_1_in_utc", "past_year_9999_in_utc", "naive"])
def test_the_column_type_refuses_what_it_cannot_store_as_unstorable(at: datetime) -> None:
    """The last line, behind the input rules: a ValueError the API maps to 422 (problems.py), never an
    OverflowError from astimezone."""
    with pytest.raises(UnstorableValue):
        UTCDateTime().process_bind_param(at, postgresql.dialect())

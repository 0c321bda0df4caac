import pytest

from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.iso6346 import ContainerNumber, check_digit, with_check_digit


@pytest.mark.parametrize("number", ["CSQU3054383", "MSKU9070323"])
def test_known_valid_numbers(number: str) -> None:
    assert ContainerNumber.parse(number).value == number


def test_remainder_ten_gives_check_digit_zero() -> None:
    # Find a serial whose weighted sum is 10 mod 11; ISO 6346 (and SPEC.md) map it to 0.
    for serial in range(1_000_000):
        first_ten = f"ABCU{serial:06d}"
        from release_service.domain.iso6346 import char_value

        if sum(char_value(c) * 2**i for i, c in enumerate(first_ten)) % 11 == 10:
            assert check_digit(first_ten) == 0
            assert ContainerNumber.is_valid(first_ten + "0")
            return
    pytest.fail("no serial with remainder 10 found")


def test_letter_values_skip_multiples_of_eleven() -> None:
    from release_service.domain.iso6346 import char_value

    assert char_value("A") == 10 and char_value("K") == 21 and char_value("L") == 23
    assert char_value("U") == 32 and char_value("V") == 34 and char_value("Z") == 38


def test_separators_and_case_are_normalised() -> None:
    assert ContainerNumber.parse("csqu 305438-3").value == "CSQU3054383"


@pytest.mark.parametrize("raw", ["", "CSQU305438", "CSQX3054383", "C5QU3054383", "CSQU30543833", "CSQUABCDEF3"])
def test_malformed(raw: str) -> None:
    with pytest.raises(DomainError) as err:
        ContainerNumber.parse(raw)
    assert err.value.code is ErrorCode.CONTAINER_NUMBER_MALFORMED


def test_wrong_check_digit() -> None:
    with pytest.raises(DomainError) as err:
        ContainerNumber.parse("CSQU3054384")
    assert err.value.code is ErrorCode.CONTAINER_CHECK_DIGIT
    assert "expected 3" in err.value.message


def test_with_check_digit_round_trips() -> None:
    assert with_check_digit("CSQU305438") == "CSQU3054383"


def test_check_digit_agrees_with_the_standard_s_sum_for_every_character_in_every_place() -> None:
    """The table-driven sum (the gate's hot path) against ISO 6346's weighted sum written out: each
    digit and capital letter in each of the ten places, on a known number."""
    from release_service.domain.iso6346 import char_value

    def standard(first_ten: str) -> int:
        return sum(char_value(c) * 2**i for i, c in enumerate(first_ten)) % 11 % 10

    base = "CSQU305438"
    for place in range(10):
        for ch in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            text = base[:place] + ch + base[place + 1:]
            assert check_digit(text) == standard(text), text
    with pytest.raises(KeyError):
        check_digit("CSQU30543#")  # what char_value says of a character outside the alphabet

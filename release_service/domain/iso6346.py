"""ISO 6346 container numbers: owner code (3 letters), category (U, J or Z), serial (6 digits), check digit.

The check digit: each of the first ten characters gets a value (digits as themselves, letters from
A=10 skipping multiples of 11), multiplied by 2**position, summed, taken modulo 11; a remainder of 10
gives check digit 0 (ISO 6346:1995 §6.2, and SPEC.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import DomainError, ErrorCode

_LETTER_VALUES: dict[str, int] = {}
_value = 10
for _letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
    if _value % 11 == 0:  # 11, 22 and 33 are skipped
        _value += 1
    _LETTER_VALUES[_letter] = _value
    _value += 1

_SHAPE = re.compile(r"^[A-Z]{3}[UJZ][0-9]{6}[0-9]$")
_SEPARATORS = re.compile(r"[\s\-./]")


_VALUES: dict[str, int] = {**{str(d): d for d in range(10)}, **_LETTER_VALUES}
_WEIGHTS = tuple(2**i for i in range(10))


def char_value(ch: str) -> int:
    if ch.isdigit():
        return int(ch)
    return _LETTER_VALUES[ch]


def check_digit(first_ten: str) -> int:
    """The check digit of the owner code, category and serial (ten characters)."""
    values = _VALUES
    try:
        total = sum([values[c] * w for c, w in zip(first_ten, _WEIGHTS, strict=False)])
    except KeyError:  # not an ASCII digit or capital: what char_value makes of it (or its error)
        total = sum(char_value(c) * (2**i) for i, c in enumerate(first_ten))
    return total % 11 % 10


def normalise(raw: str) -> str:
    """Upper-case and strip the separators people and OCR engines put in (``MSCU 123456-7``)."""
    return _SEPARATORS.sub("", raw).upper()


@dataclass(frozen=True, slots=True)
class ContainerNumber:
    value: str

    @classmethod
    def parse(cls, raw: str) -> ContainerNumber:
        text = normalise(raw)
        if not _SHAPE.match(text):
            raise DomainError(
                ErrorCode.CONTAINER_NUMBER_MALFORMED,
                "A container number is 3 letters, U, J or Z, 6 digits and a check digit (ISO 6346).",
            )
        if check_digit(text[:10]) != int(text[10]):
            raise DomainError(
                ErrorCode.CONTAINER_CHECK_DIGIT,
                f"The check digit of {text} is wrong: expected {check_digit(text[:10])}.",
            )
        return cls(text)

    @staticmethod
    def is_valid(raw: str) -> bool:
        text = normalise(raw)
        return bool(_SHAPE.match(text)) and check_digit(text[:10]) == int(text[10])

    def __str__(self) -> str:
        return self.value


def with_check_digit(first_ten: str) -> str:
    """Complete ten characters into a valid container number (for seeds and tests)."""
    return f"{first_ten}{check_digit(first_ten)}"

"""Licence plates: normalised text plus an ISO 3166-1 alpha-2 country."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import DomainError, ErrorCode

_STRIP = re.compile(r"[\s\-.·_]")
_SHAPE = re.compile(r"^[A-Z0-9]{2,12}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True, slots=True)
class Plate:
    text: str
    country: str

    @classmethod
    def parse(cls, text: str, country: str) -> Plate:
        norm = _STRIP.sub("", text).upper()
        ctry = country.strip().upper()
        if not _SHAPE.match(norm):
            raise DomainError(ErrorCode.INVALID_PLATE, "A plate is 2 to 12 letters and digits.")
        if not _COUNTRY.match(ctry):
            raise DomainError(ErrorCode.INVALID_PLATE, "A plate country is an ISO 3166-1 alpha-2 code.")
        return cls(norm, ctry)

    def as_dict(self) -> dict[str, str]:
        return {"text": self.text, "country": self.country}

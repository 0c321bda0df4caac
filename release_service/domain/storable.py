"""What the database can hold, checked with the other input rules so that a refusal names its field.

A value the wire schema accepts can still be one that no column stores: a time that leaves the calendar
once put in UTC (``0001-01-01T00:00+01:00``, ``9999-12-31T23:00-05:00``: Python's ``datetime`` ends at
years 1 and 9999), a NUL (PostgreSQL text refuses it) or a lone surrogate (it has no UTF-8), a text that
normalisation makes longer than its column (``"ß".upper()`` is ``"SS"``). Refused here, as input, such a
value never reaches the storage, where it would fail the whole statement (a 10 000-right batch is one
INSERT) or the request with a 500.

Standard library only (STYLE.md #1).
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime

from .errors import DomainError, ErrorCode

# The times a request may carry. PostgreSQL's timestamptz holds 4713 BC to 294276 AD, Python's datetime
# years 1 to 9999: these bounds sit well inside both, so a time within them survives any offset and any
# span the rules add to it (a validity window, a rotation overlap, a retention period).
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)

# The text columns of a release right (quaygate/schema.py ``releases``; a test keeps them in step).
MAX_BILL_OF_LADING = 64
MAX_VESSEL_CALL = 64
MAX_TERMINAL = 32

# Unicode's control characters (category Cc: C0, DEL, C1) and surrogates (Cs), as one character class
# (the checks run on every item of a 10 000-right batch). Free text (a reason) may hold tab and line
# breaks; an identifier is one line. UNPRINTABLE is the one such class, also for what escapes outside text
# into the audit trail (identity.audit.printable) and onto a terminal (audit_chain.printable).
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_REFUSED_IN_PROSE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def utc_time(value: datetime) -> datetime:
    """``value`` in UTC; ValueError when it has no offset or lies outside EARLIEST..LATEST."""
    if value.utcoffset() is None:
        raise ValueError("a time needs a time zone offset")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # past year 9999 or before year 1 once in UTC
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise ValueError(f"a time lies between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC)")
    return utc


def text(value: str, *, max_length: int | None = None, multiline: bool = False) -> str:
    """``value`` unchanged when it can be stored as it is; ValueError naming what is wrong otherwise.

    Refused: control characters (Unicode Cc: NUL, which PostgreSQL refuses, and the rest, which no
    identifier holds and which forge lines in logs; tab and line breaks only in ``multiline`` text),
    lone surrogates (Cs: no UTF-8 for them), and more characters than the column holds. Call it on the
    value as it will be stored, after any normalisation (strip, upper).
    """
    found = (_REFUSED_IN_PROSE if multiline else UNPRINTABLE).search(value)
    if found is not None:
        ch = found.group()
        if unicodedata.category(ch) == "Cs":
            raise ValueError("the text holds a lone surrogate, which has no UTF-8")
        raise ValueError(f"the text holds the control character U+{ord(ch):04X}")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"the text is {len(value)} characters once normalised; at most {max_length}")
    return value


def require_time(value: datetime, *, field: str, code: ErrorCode) -> datetime:
    """``utc_time`` as a domain refusal with ``code``, naming ``field``."""
    try:
        return utc_time(value)
    except ValueError as exc:
        raise DomainError(code, f"{field}: {exc}.", field=field) from None


def require_text(value: str, *, field: str, max_length: int | None = None, multiline: bool = False) -> str:
    """``text`` as a domain refusal (``invalid_text``), naming ``field``."""
    try:
        return text(value, max_length=max_length, multiline=multiline)
    except ValueError as exc:
        raise DomainError(ErrorCode.INVALID_TEXT, f"{field}: {exc}.", field=field) from None

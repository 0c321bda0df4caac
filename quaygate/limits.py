"""The request body limits of the routes that take more than ``Settings.max_body_bytes`` (1 MiB), each
set on its route as FastAPI's ``max_body_size``: past it, 413 ``body_too_large`` before any of the body is
parsed. Each is the largest body a valid request can have, with room for the JSON around it. (The ban
feed's route takes identity/bans/feed.py's ``MAX_FEED_BYTES``, the largest feed the loader reads.)"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, StringConstraints

from release_service.domain import storable

# Text a request may carry: no control character (a NUL, which PostgreSQL's text and jsonb refuse, an
# escape sequence for a log viewer). Identifiers and reads take none at all; prose (a reason) keeps tab
# and line breaks. Checked by pydantic-core, before any of it is used.
Printable = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]*$")]
Prose = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")]

_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]")


def rfc3339_text(value: object) -> object:
    """A time as the API describes it (``format: date-time``): an RFC 3339 string (or a datetime, from
    Python). Pydantic would also take a number, or a string of digits, as Unix time, in seconds or, past
    2e10, in milliseconds: 253402300800, year 9999 in seconds, was read as 1978-01-11, and 1.5 as 1970."""
    if isinstance(value, datetime) or (isinstance(value, str) and _DATE_TIME.match(value)):
        return value
    raise ValueError("a time is an RFC 3339 date-time string with its offset, such as 2026-11-21T15:30:00+01:00")


def _storable(value: datetime) -> datetime:
    storable.utc_time(value)  # ValueError outside what is stored
    return value


# A time a request may carry: an RFC 3339 string with an offset (leap seconds and 24:00 are refused by
# the parser, digits past microseconds dropped), within storable.EARLIEST..LATEST once in UTC (1900 to
# 9000: nothing added to it overflows, and PostgreSQL gives it back in any session time zone).
# ``UtcTime`` puts it in UTC; ``SentTime`` keeps the offset it was sent with (a request's fingerprint is
# made of it as sent). Each field's own bound against now is a domain rule, named in its description.
Rfc3339Time = Annotated[AwareDatetime, BeforeValidator(rfc3339_text)]
UtcTime = Annotated[Rfc3339Time, AfterValidator(storable.utc_time)]
SentTime = Annotated[Rfc3339Time, AfterValidator(_storable)]

_JSON_ROOM = 64 * 1024

# A face capture in base64: the schemas' bound on face.image (gate verify) and image (face enrolment,
# step-up). QUAYGATE_FACE_MAX_IMAGE_BYTES, decoded, is the real limit.
IMAGE_B64_MAX = 8 * 1024 * 1024

# Those routes' bodies: the capture in its JSON.
IMAGE_BODY_BYTES = IMAGE_B64_MAX + _JSON_ROOM

# A batch of at most 10 000 rights (release.MAX_BATCH), about 330 bytes each as JSON.
BATCH_BODY_BYTES = 16 * 1024 * 1024

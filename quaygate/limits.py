"""The request body limits of the routes that take more than ``Settings.max_body_bytes`` (1 MiB), each
set on its route as FastAPI's ``max_body_size``: past it, 413 ``body_too_large`` before any of the body is
parsed. Each is the largest body a valid request can have, with room for the JSON around it. (The ban
feed's route takes identity/bans/feed.py's ``MAX_FEED_BYTES``, the largest feed the loader reads.)"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

# Text a request may carry: no control character (a NUL, which PostgreSQL's text and jsonb refuse, an
# escape sequence for a log viewer). Identifiers and reads take none at all; prose (a reason) keeps tab
# and line breaks. Checked by pydantic-core, before any of it is used.
Printable = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]*$")]
Prose = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")]

_JSON_ROOM = 64 * 1024

# A face capture in base64: the schemas' bound on face.image (gate verify) and image (face enrolment,
# step-up). QUAYGATE_FACE_MAX_IMAGE_BYTES, decoded, is the real limit.
IMAGE_B64_MAX = 8 * 1024 * 1024

# Those routes' bodies: the capture in its JSON.
IMAGE_BODY_BYTES = IMAGE_B64_MAX + _JSON_ROOM

# A batch of at most 10 000 rights (release.MAX_BATCH), about 330 bytes each as JSON.
BATCH_BODY_BYTES = 16 * 1024 * 1024

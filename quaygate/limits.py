"""The request body limits of the routes that take more than ``Settings.max_body_bytes`` (1 MiB), each
set on its route as FastAPI's ``max_body_size``: past it, 413 ``body_too_large`` before any of the body is
parsed. Each is the largest body a valid request can have, with room for the JSON around it."""

from __future__ import annotations

_JSON_ROOM = 64 * 1024

# A face capture, base64 (the schemas' bound on face.image and image, 8 MiB), in its JSON: the gate
# verify, the face enrolment and the face step-up. QUAYGATE_FACE_MAX_IMAGE_BYTES is the real limit.
IMAGE_BODY_BYTES = 8 * 1024 * 1024 + _JSON_ROOM

# A batch of at most 10 000 rights (release.MAX_BATCH), about 330 bytes each as JSON.
BATCH_BODY_BYTES = 16 * 1024 * 1024

# A signed ban feed (identity/bans/feed.py MAX_FEED_BYTES): a 100 000-ban snapshot is about 20 MB.
FEED_BODY_BYTES = 64 * 1024 * 1024

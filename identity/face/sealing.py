"""Face templates sealed at rest with AES-256-GCM under the service's data key (``quaygate.crypto``).

The data key comes from the settings (``QUAYGATE_DATA_KEY``), never from the database, so a copy of
the database holds no usable biometric. The same ``DataCipher`` seals our signing keys
(identity.keys): one helper, not a second one. The associated data names the person and the
enrolment (``face-template:v1:<person_id>:<template_id>``), so a sealed template copied onto another
person's row, or given another enrolment's id, does not open. An old row restored whole (its own id
with it) does open: which enrolment is current is the audit trail's to say, by entries tagged with
``enrolment_tag`` (identity.domain.face_enrolment).

The 128 numbers are packed as little-endian float64 (1024 bytes) before sealing; nothing else of the
capture is kept.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import uuid
from collections.abc import Sequence

from quaygate.crypto import DataCipher

from ..domain.face import TEMPLATE_SIZE, valid_template

_PACK = struct.Struct(f"<{TEMPLATE_SIZE}d")


class TemplateUnreadable(Exception):
    """A sealed template that does not open under this key for this person (tampered, moved, re-keyed)."""


def _aad(person_id: uuid.UUID, template_id: uuid.UUID) -> bytes:
    return f"face-template:v1:{person_id}:{template_id}".encode()


def seal_template(cipher: DataCipher, person_id: uuid.UUID, template_id: uuid.UUID,
                  encoding: Sequence[float]) -> str:
    values = [float(v) for v in encoding]
    if not valid_template(values):
        raise ValueError("a face template is 128 finite numbers")
    return cipher.seal(_PACK.pack(*values), _aad(person_id, template_id))


def open_template(cipher: DataCipher, person_id: uuid.UUID, template_id: uuid.UUID, sealed: str) -> tuple[float, ...]:
    try:
        raw = cipher.open_stored(sealed, _aad(person_id, template_id))
        values = _PACK.unpack(raw)
    except Exception as exc:  # noqa: BLE001 - InvalidTag, bad base64, wrong length: all the same to us
        raise TemplateUnreadable("the face template does not open") from exc
    return tuple(values)


# HKDF info of the key that tags enrolment entries (``DataCipher.derive``): never the key that seals.
TAG_PURPOSE = b"face-enrolment-tag:v1"


def enrolment_tag(key: bytes, kind: str, person_id: uuid.UUID | str, generation: int,
                  template_id: uuid.UUID | str | None, *, retagged: bool = False) -> str:
    """HMAC-SHA256 (base64url) over an enrolment entry's kind, person, generation and template: what
    an insider who can write audit rows, but has not the data key, cannot make for an entry of his own
    (identity.domain.face_enrolment). ``retagged``: the entry `quaygate keys rekey-data` writes, which
    vouches for the history below it (identity.face.service); the flag is in the message under a prefix
    of its own (review 135, finding 4), so a copy of another verified entry with the flag added verifies not."""
    prefix = "face-enrolment-retagged:v1" if retagged else "face-enrolment:v1"
    message = f"{prefix}:{kind}:{person_id}:{generation}:{template_id or '-'}".encode()
    return base64.urlsafe_b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode().rstrip("=")


def tag_verifies(key: bytes, tag: object, kind: str, person_id: uuid.UUID | str, generation: object,
                 template_id: object, *, retagged: bool = False) -> bool:
    """Whether ``tag`` is the tag of that entry (constant time); False for anything malformed."""
    if not isinstance(tag, str) or not isinstance(generation, int) or isinstance(generation, bool):
        return False
    if template_id is not None and not isinstance(template_id, str):
        return False
    return hmac.compare_digest(tag, enrolment_tag(key, kind, person_id, generation, template_id, retagged=retagged))


def retag_mark(key: bytes) -> str:
    """The tag of the entry `quaygate keys rekey-data` writes once every person's enrolment is tagged under
    the current data key (identity.face.service ``mark_retagged``): HMAC-SHA256 under the current key's tag
    key over a fixed message, which no previous key's holder can make."""
    return base64.urlsafe_b64encode(hmac.new(key, b"face-enrolments-retagged:v1", hashlib.sha256).digest()
                                    ).decode().rstrip("=")


def retag_mark_verifies(key: bytes, tag: object) -> bool:
    return isinstance(tag, str) and hmac.compare_digest(tag, retag_mark(key))

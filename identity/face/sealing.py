"""Face templates sealed at rest with AES-256-GCM under the service's data key (``quaygate.crypto``).

The data key comes from the settings (``QUAYGATE_DATA_KEY``), never from the database, so a copy of
the database holds no usable biometric. The same ``DataCipher`` seals our signing keys
(identity.keys): one helper, not a second one. The associated data names the person and the
enrolment (``face-template:v1:<person_id>:<template_id>``), so a sealed template copied onto another
person's row, or an old enrolment restored over a new one, does not open.

The 128 numbers are packed as little-endian float64 (1024 bytes) before sealing; nothing else of the
capture is kept.
"""

from __future__ import annotations

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
        raw = cipher.open(sealed, _aad(person_id, template_id))
        values = _PACK.unpack(raw)
    except Exception as exc:  # noqa: BLE001 - InvalidTag, bad base64, wrong length: all the same to us
        raise TemplateUnreadable("the face template does not open") from exc
    return tuple(values)

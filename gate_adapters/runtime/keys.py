"""The adapter's own private keys in files: the private_key_jwt assertion key (client.py), the DPoP key
(dpop.py) and the barrier signing key (command_signing.py). One reader and one writer for all three.

- ``private_key``: a private JWK (kty EC, RSA or OKP) or a PEM private key; ValueError otherwise, whose
  message never quotes the file.
- ``create_ec_key``: a new EC P-256 key, written as a private JWK readable by its owner only (0600),
  never over an existing file (``--make-keys`` keeps what is there).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from joserfc.jwk import ECKey, OKPKey, RSAKey


def private_key(data: str | bytes) -> ECKey | RSAKey | OKPKey:
    text = data.decode() if isinstance(data, bytes) else data
    if text.lstrip().startswith("{"):
        obj = json.loads(text)
        kinds = {"EC": ECKey, "RSA": RSAKey, "OKP": OKPKey}
        if not isinstance(obj, dict) or obj.get("kty") not in kinds:
            raise ValueError("the key file is a JWK of kty EC, RSA or OKP")
        return kinds[obj["kty"]].import_key(obj)  # type: ignore[no-any-return]
    for kind in (ECKey, RSAKey, OKPKey):
        try:
            return kind.import_key(text)  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001,S112 - try the next kind; none fits: ValueError below
            continue
    raise ValueError("the key file is neither a JWK nor a PEM private key (EC, RSA or Ed25519)")


def create_ec_key(path: Path) -> bool:
    """A new EC P-256 private key at ``path``, unless a file is there: whether it was made."""
    if path.exists():
        return False
    write_private(path, json.dumps(ECKey.generate_key("P-256", private=True).as_dict(private=True)))
    return True


def write_private(path: Path, text: str) -> None:
    """A new file readable by its owner only (0600), never over an existing one (``FileExistsError``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")

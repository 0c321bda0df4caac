"""The adapter's own private keys in files: the private_key_jwt assertion key (client.py), the DPoP key
(dpop.py) and the barrier signing key (command_signing.py). One reader and one writer for all three.

- ``private_key``: a private JWK (kty EC, RSA or OKP) or a PEM private key; ValueError otherwise, whose
  message never quotes the file.
- ``create_ec_key``: a new EC P-256 key, written as a private JWK readable by its owner only (0600),
  never over an existing file (``--make-keys`` keeps what is there).
- ``read_private_file``: a key file's bytes, its mode and owner checked as ssh checks its keys: a key that
  group or others may read (or write) is no longer the adapter's alone: whoever reads it can get gate
  tokens (private_key_jwt), use a stolen one (DPoP) or open barriers (signing); whoever writes it can swap
  it. A file that belongs to another user than the adapter's (or root) is not its own either: its owner
  can rewrite it, or open it to everyone, at any time. Outside dev (``strict``) such a file is refused
  (``KeyFileExposed``, a ValueError naming the file, what is wrong and the fix: ``chmod 600`` or
  ``chown``), and the adapter does not start; in dev it is a warning (``gate.adapter.key_file_exposed``).
  The mode and owner are read from the open file (``fstat``), not the path, so what is checked is what is
  read. The same check guards the secrets in files of their own (config.py ``read_secret_file``: the
  client secret, device and officer tokens, the MQTT password, barrier credentials), with ``risk``
  saying what a reader could do.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import stat
from pathlib import Path

from joserfc.jwk import ECKey, OKPKey, RSAKey

log = logging.getLogger("gate_adapters.keys")

EXPOSED_BITS = 0o077  # group or others may read, write or run it (ssh: "permissions are too open")


class KeyFileExposed(ValueError):
    """A private key file group or others may read or write (outside dev: the adapter does not start)."""


def read_private_file(path: Path, *, strict: bool, risk: str = "whoever reads it can act as this adapter") -> bytes:
    """The bytes of a private file whose mode and owner keep it this adapter's (module docstring); OSError
    when it cannot be read."""
    with path.open("rb") as f:
        st = os.fstat(f.fileno())
        data = f.read()
    mode, me = stat.S_IMODE(st.st_mode), os.geteuid()
    problems = []
    if mode & EXPOSED_BITS:
        problems.append(f"{path} may be read or written by group or others (mode {mode:04o}): {risk}; make it its "
                        f"owner's alone: chmod 600 {path}")
    if st.st_uid not in (me, 0):
        problems.append(foreign_owner(path, st.st_uid, me, "rewrite it or let anyone read it"))
    for message in problems:
        if strict:
            raise KeyFileExposed(message)
        # The message is the reason itself (the plain log format shows no ``extra``); never the key.
        log.warning("gate.adapter.key_file_exposed: %s (allowed with dev = true only)", message)
    return data


def foreign_owner(path: Path, owner: int, me: int, can: str) -> str:
    """Why a file or folder owned by another user than this adapter's (or root) is refused, and the fix."""
    runs_as = f"{_user(me)}, the user this adapter runs as" + ("" if me == 0 else ", or root")
    return (f"{path} belongs to {_user(owner)}, not to {runs_as}: its owner can {can}; give it to this adapter: "
            f"chown {_user(me, bare=True)} {path}")


def _user(uid: int, *, bare: bool = False) -> str:
    """A user by name (and uid), or by uid alone when it has no name here."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid) if bare else f"uid {uid}"
    return name if bare else f"{name} (uid {uid})"


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

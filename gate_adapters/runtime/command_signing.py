"""Signed barrier commands (config.py rule 9): a controller that verifies them opens only for a command
this adapter made, for its own terminal and lane, a few seconds ago, once.

The signature is a JWT (RFC 7519) in the compact JWS serialization, sent beside the command's JSON as
its ``signature`` member (an HTTP body, an MQTT payload: the same form on both, and MQTT 3.1.1 has no
headers)::

    {"lane": "in-1", "command": "open", "decision_id": "…", "call_officer": false, "signature": "eyJ…"}

    header  {"alg": "ES256" | "Ed25519", "typ": "quaygate-barrier+jwt", "kid": "<key id>"}
    claims  {"terminal", "lane", "command", "decision_id", "call_officer", "iat", "exp", "jti"}
            (+ "latch" on a hold by a latched lane: sinks.py rule 5)

A controller acts on the signed claims, never on the unsigned members beside them. It verifies with the
public JWK (``quaygate gate-adapter --config ... --barrier-public-key``) and an explicit algorithm list,
checks ``typ``, ``exp``/``iat``, its own terminal and lane, and claims each ``jti`` once for as long as the
command lives (docs/gate-adapter.md has the code, with joserfc).

Rules:
1. The key is EC P-256, signing ES256, or Ed25519, signing ``Ed25519`` (RFC 9864's fully specified
   name for EdDSA over Ed25519; the polymorphic ``EdDSA`` is deprecated there): a JWK or a PEM private key
   in a file of its own. ``kid``: the setting, else the JWK's own, else its RFC 7638 thumbprint.
2. ``exp`` is ``iat`` plus a few seconds (``lifetime_seconds``, default 5): an overheard command is of no
   use for long, and the controller's ``jti`` cache need keep it only that long. ``jti``: 128 random bits.
3. Explicit typing (RFC 8725 §3.11): ``typ`` ``quaygate-barrier+jwt``, so no other JWT signed by the same
   key (there should be none) passes for a command.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey

from .keys import private_key, read_private_file

COMMAND_TYP = "quaygate-barrier+jwt"
COMMAND_ALGORITHMS = ("ES256", "Ed25519")


class CommandSigner:
    """Signs barrier commands (rules 1 to 3) for one terminal."""

    def __init__(self, key: ECKey | OKPKey, *, terminal: str, kid: str | None = None, lifetime: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        if isinstance(key, ECKey) and key.curve_name == "P-256":
            self.alg = "ES256"
        elif isinstance(key, OKPKey) and key.curve_name == "Ed25519":
            self.alg = "Ed25519"
        else:
            raise ValueError("the barrier signing key must be EC P-256 (ES256) or Ed25519")
        if not key.is_private:
            raise ValueError("the barrier signing key file holds a public key: signing needs the private key")
        self._key, self.terminal, self._clock = key, terminal, clock
        self.lifetime = max(1, math.ceil(lifetime))
        self.kid = kid or key.kid or key.thumbprint()

    def __repr__(self) -> str:  # never the private key
        return f"CommandSigner(alg={self.alg!r}, kid={self.kid!r})"

    @classmethod
    def load(cls, path: Path, *, terminal: str, kid: str | None = None, lifetime: float = 5.0,
             strict: bool = True) -> CommandSigner:
        """ValueError / OSError, whose messages never quote the file; ``strict``: the file's mode is checked
        (``KeyFileExposed`` when group or others may read it, keys.py)."""
        key = private_key(read_private_file(path, strict=strict))
        if not isinstance(key, ECKey | OKPKey):
            raise ValueError("the barrier signing key must be EC P-256 (ES256) or Ed25519")
        return cls(key, terminal=terminal, kid=kid, lifetime=lifetime)

    def public_jwk(self) -> dict[str, Any]:
        """What a controller verifies with: the public key, its ``kid``, ``alg`` and ``use``."""
        public = self._key.as_dict(private=False)
        return {k: v for k, v in public.items() if k in ("kty", "crv", "x", "y")} | {
            "kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(self, command: Mapping[str, Any]) -> str:
        now = int(self._clock())
        claims = {**command, "terminal": self.terminal, "iat": now, "exp": now + self.lifetime,
                  "jti": secrets.token_urlsafe(16)}
        header = {"alg": self.alg, "typ": COMMAND_TYP, "kid": self.kid}
        return jwt.encode(header, claims, self._key, algorithms=[self.alg])

"""A test national port-ban register: its own key, valid national numbers, signed feeds."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from joserfc import jws
from joserfc.jwk import ECKey, OKPKey
from joserfc.jws import JWSRegistry

from identity.bans.feed import register_key

REGISTER = "BE-AIGIS-TEST"
_SIGNING = JWSRegistry(algorithms=["ES256", "Ed25519", "HS256"])


def national_number(serial: int, born: str = "850731") -> str:
    """A valid Belgian national register number (YYMMDD, 3-digit serial, mod-97 check)."""
    body = f"{born}{serial % 1000:03d}"
    return f"{body}{97 - int(body) % 97:02d}"


def ban(number: str, reference: str, *, start: datetime, days: int = 365, scope: Any = "all") -> dict[str, Any]:
    return {"national_number": number, "scope": scope, "from": start.isoformat(),
            "until": (start + timedelta(days=days)).isoformat(), "reference": reference}


def snapshot(sequence: int, issued_at: datetime, bans: list[dict[str, Any]],
             register: str = REGISTER) -> dict[str, Any]:
    return {"register": register, "kind": "snapshot", "sequence": sequence, "issued_at": issued_at.isoformat(),
            "bans": bans}


def changes(sequence: int, issued_at: datetime, added: list[dict[str, Any]] | None = None,
            lifted: list[str] | None = None, register: str = REGISTER) -> dict[str, Any]:
    return {"register": register, "kind": "changes", "sequence": sequence, "issued_at": issued_at.isoformat(),
            "added": added or [], "lifted": lifted or []}


class Register:
    """The register's key pair; ``public_jwk`` is what quaygate is configured with."""

    def __init__(self, kind: str = "ES256") -> None:
        self.alg = kind
        self.key: ECKey | OKPKey = ECKey.generate_key("P-256") if kind == "ES256" else OKPKey.generate_key("Ed25519")

    @property
    def public_jwk(self) -> str:
        return json.dumps(self.key.as_dict(private=False))

    @property
    def public_key(self) -> ECKey | OKPKey:
        return register_key(self.public_jwk, None)

    def sign(self, payload: dict[str, Any], *, serialization: str = "compact") -> bytes:
        body = json.dumps(payload).encode()
        if serialization == "json":
            return json.dumps(jws.serialize_json({"protected": {"alg": self.alg}}, body, self.key,
                                                 registry=_SIGNING)).encode()
        return jws.serialize_compact({"alg": self.alg}, body, self.key, registry=_SIGNING).encode()

"""``quaygate audit verify|seal|export-key``: the audit trail from the command line.

``verify --public-key FILE`` is the authority's own check: the checkpoints are verified against the
key it was given out of band, never against a key read from the database it is checking.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from release_service.adapters.audit import AuditSealer, ensure_audit_key, export_public_key, verify_trail
from release_service.domain.audit_chain import Report

from .crypto import DataCipher
from .db import make_engine
from .settings import Settings


def load_public_jwks(path: str) -> list[dict[str, Any]]:
    """A JWKS ({"keys": [...]}) or a single JWK, as printed by ``export-key``."""
    doc = json.loads(Path(path).read_text())
    keys = doc.get("keys", [doc]) if isinstance(doc, dict) else doc
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise ValueError(f"{path}: not a JWK or a JWKS")
    return keys


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def describe(report: Report) -> str:
    unsealed = f"; {_count(report.unsealed, 'entry', 'entries')} not sealed yet" if report.unsealed else ""
    if report.problem is not None:
        p = report.problem
        before = (f"entries 1 to {report.entries} verified before it" if report.entries
                  else "nothing verified before it")
        return f"audit trail BROKEN at entry {p.chain_seq}: {p.message}; {before}{unsealed}"
    last = report.last_checkpoint
    signed = (f", last checkpoint #{last.chain_seq} signed by key {last.key_id} at "
              f"{last.at.isoformat()}" if last is not None else "")
    return (f"audit trail intact: {_count(report.entries, 'entry', 'entries')}, "
            f"{_count(report.checkpoints, 'checkpoint', 'checkpoints')}{signed}{unsealed}")


def cmd_verify(settings: Settings, public_key_file: str | None) -> int:
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    try:
        jwks = load_public_jwks(public_key_file) if public_key_file else None
        report = verify_trail(engine, jwks)
    except (OSError, ValueError, KeyError) as exc:  # an unreadable or malformed key file
        print(f"audit verify: cannot use the public key: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(describe(report))
    if jwks is None:
        print("note: checked against the audit key stored in this database; pass --public-key FILE "
              "(from `quaygate audit export-key`) for an independent check", file=sys.stderr)
    return 0 if report.intact else 1


def cmd_seal(settings: Settings) -> int:
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    try:
        sealed = AuditSealer(engine, DataCipher(settings.data_key_bytes())).seal_once(datetime.now(UTC))
    finally:
        engine.dispose()
    print(f"sealed {sealed} audit entries")
    return 0


def cmd_export_key(settings: Settings) -> int:
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    try:
        ensure_audit_key(engine, DataCipher(settings.data_key_bytes()), datetime.now(UTC))
        jwks = export_public_key(engine)
    finally:
        engine.dispose()
    print(json.dumps(jwks, indent=2, sort_keys=True))
    return 0

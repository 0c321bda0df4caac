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


def describe(report: Report) -> str:
    unsealed = f"; {report.unsealed} newer entries not sealed yet" if report.unsealed else ""
    if report.problem is not None:
        p = report.problem
        return (f"audit trail BROKEN at entry {p.chain_seq}: {p.message}. "
                f"Entries 1 to {report.entries} verified before it{unsealed}.")
    last = report.last_checkpoint
    signed = (f", last checkpoint #{last.chain_seq} signed by key {last.key_id} at "
              f"{last.at.isoformat()}" if last is not None else "")
    return f"audit trail intact: {report.entries} entries, {report.checkpoints} checkpoints{signed}{unsealed}"


def cmd_verify(settings: Settings, public_key_file: str | None) -> int:
    jwks = load_public_jwks(public_key_file) if public_key_file else None
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    try:
        report = verify_trail(engine, jwks)
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

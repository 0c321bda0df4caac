"""``quaygate audit verify|seal|export-key|rotate-key``: the audit trail from the command line.

``verify --public-key FILE`` is the authority's own check: the checkpoints are verified against the
key it was given out of band, never against a key read from the database it is checking.
``verify --checkpoints FILE`` (repeatable) holds the trail to a witness file the sealer wrote outside
the database (``QUAYGATE_AUDIT_WITNESS``): every checkpoint in it must be in the trail as signed.

What the database or a file gives (key ids, the sealer's reasons, a problem's message) is printed through
``printable``: an insider's key id holding ``ESC [2K CR`` would erase a BROKEN line on the terminal and
show another (review 160, finding 2).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from release_service.adapters.audit import (
    AuditSealer,
    AuditTampered,
    ensure_audit_key,
    export_public_key,
    read_witness,
    rotate_audit_key,
    verify_trail,
)
from release_service.domain.audit_chain import Checkpoint, Report, age_text, iso_utc, printable

from .db import make_engine
from .rekey import watch
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


def describe(report: Report, now: datetime | None = None) -> str:
    unsealed = f"; {_count(report.unsealed, 'entry', 'entries')} not sealed yet" if report.unsealed else ""
    held = _describe_held(report, now or datetime.now(UTC))
    if report.problem is not None:
        p = report.problem
        before = (f"entries 1 to {report.entries} verified before it" if report.entries
                  else "nothing verified before it")
        return f"audit trail BROKEN at entry {p.chain_seq}: {printable(p.message)}; {before}{unsealed}" + (
            f"\nand {held}" if held else "")
    last = report.last_checkpoint
    signed = (f", last checkpoint #{last.chain_seq} signed by key {printable(last.key_id)} at "
              f"{last.at.isoformat()}" if last is not None else "")
    witnessed = (f", {_count(report.witnessed, 'witnessed checkpoint', 'witnessed checkpoints')} found as signed"
                 if report.witnessed else "")
    counted = (f"{_count(report.entries, 'entry', 'entries')}, "
               f"{_count(report.checkpoints, 'checkpoint', 'checkpoints')}{signed}{witnessed}")
    if held:
        return f"audit trail NOT INTACT: {held}; the sealed part verifies: {counted}"
    return f"audit trail intact: {counted}{unsealed}"


def _describe_held(report: Report, now: datetime) -> str:
    """The unsealed rows that should have been sealed, by id and age."""
    if not report.held_count:
        return ""
    rows = "; ".join(f"row {h.row_id} (at {iso_utc(h.at)}, {age_text(now - h.at)} ago): {printable(h.reason)}"
                     for h in report.held)
    more = report.held_count - len(report.held)
    return (f"{_count(report.held_count, 'entry', 'entries')} should have been sealed and "
            f"{'is' if report.held_count == 1 else 'are'} not, so nothing vouches for "
            f"{'it' if report.held_count == 1 else 'them'}: {rows}" + (f"; and {more} more" if more else ""))


def cmd_verify(settings: Settings, public_key_file: str | None, checkpoint_files: Sequence[str] = ()) -> int:
    try:
        jwks = load_public_jwks(public_key_file) if public_key_file else None
    except (OSError, ValueError, KeyError) as exc:  # an unreadable or malformed key file
        print(f"audit verify: cannot use the public key: {printable(str(exc))}", file=sys.stderr)
        return 2
    try:
        witnessed: list[Checkpoint] = [cp for path in checkpoint_files for cp in read_witness(path)]
    except (OSError, ValueError) as exc:
        print(f"audit verify: cannot use the witnessed checkpoints: {printable(str(exc))}", file=sys.stderr)
        return 2
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    now = datetime.now(UTC)
    try:
        # Rows held by age only are looked at again after the sealer has had two turns: one written just now
        # with a time long past (an offline gate decision reconciled) is sealed by then.
        report = verify_trail(engine, jwks, witnessed=witnessed, now=now,
                              max_unsealed_age=timedelta(seconds=settings.audit_unsealed_max_age),
                              recheck_after=2 * settings.audit_seal_interval + 1)
    except ValueError as exc:  # a malformed JWK
        print(f"audit verify: cannot use the public key: {printable(str(exc))}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(describe(report, now))
    if jwks is None:
        print("note: checked against the audit key stored in this database; pass --public-key FILE "
              "(from `quaygate audit export-key`) for an independent check", file=sys.stderr)
    if not checkpoint_files:
        print("note: without --checkpoints FILE (the witness, QUAYGATE_AUDIT_WITNESS) a trail cut back to an "
              "earlier checkpoint, or cut back and sealed again, cannot be told from an intact one", file=sys.stderr)
    return 0 if report.intact else 1


def cmd_seal(settings: Settings) -> int:
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    try:
        sealer = AuditSealer(engine, watch(settings.data_cipher(), engine, once=True), witness=settings.audit_witness)
        sealed = sealer.seal_once(datetime.now(UTC))
    finally:
        engine.dispose()
    if sealer.tampered is not None:
        done = f" (after sealing {sealed} entries)" if sealed else ""
        print(f"audit seal: refused to seal{done}: {printable(sealer.tampered)}", file=sys.stderr)
        return 1
    print(f"sealed {sealed} audit entries")
    return 0


def cmd_export_key(settings: Settings) -> int:
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    cipher = watch(settings.data_cipher(), engine, once=True)
    try:
        ensure_audit_key(engine, cipher, datetime.now(UTC))
        jwks, ignored = export_public_key(engine, cipher)
    except AuditTampered as exc:
        print(f"audit export-key: refused: {printable(str(exc))}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    for kid in ignored:
        print(f"audit export-key: left out key {printable(kid)}: its private half does not open under the data key "
              "(not this deployment's key)", file=sys.stderr)
    print(json.dumps(jwks, indent=2, sort_keys=True))
    return 0


def cmd_rotate_key(settings: Settings, actor: dict[str, Any]) -> int:
    """Hand the trail over to a new audit key (``rotate_audit_key``): the old one signs nothing more."""
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
    try:
        old, new, through = rotate_audit_key(engine, watch(settings.data_cipher(), engine, once=True),
                                             datetime.now(UTC), actor=actor)
    except LookupError as exc:
        print(f"audit rotate-key: nothing changed: {printable(str(exc))}", file=sys.stderr)
        return 2
    except AuditTampered as exc:
        print(f"audit rotate-key: refused: {printable(str(exc))}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"audit key {printable(old)} is retired: it vouches for entries up to {through} and signs nothing more")
    print(f"audit key {printable(new)} signs from now on; the hand-over is on the trail, signed by the next seal")
    print("give the authority the new key set: `quaygate audit export-key` (the old key is in it, with the "
          "last entry it may vouch for)")
    return 0

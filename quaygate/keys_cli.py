"""``quaygate keys revoke KID --reason TEXT``: withdraw a token signing key that leaked (review 132).
``quaygate keys rekey-data [--check]``: seal the database again under the current data key (quaygate.rekey).
``quaygate keys face-digest-keys``: the value of QUAYGATE_FACE_DIGEST_KEYS_PREVIOUS that lets the previous
data keys go (review 135, finding 1).

The key leaves the JWKS and verifies no token and no gate pass from then on (identity.keys ``revoke``);
its private half is erased; were it its algorithm's active key, a new one is made in the same
transaction. Audited (``identity.key.revoked``, actor ``cli:<user>``, with the reason). The running
replicas drop the key within about a second when they share Redis with this command (the key set's epoch,
identity.keys), else at their next timed reload (60 s); gate adapters when they next fetch the JWKS.
Plain messages; exit 2 for an unknown or already revoked key or an empty reason, nothing changed; exit 1,
nothing changed, under a QUAYGATE_DATA_KEY that opens none of the keys stored (review 172, finding 2: the
replacing key would be sealed where the service cannot open it).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .terminal_cli import _actor


def cmd_revoke(args: argparse.Namespace) -> int:
    from identity.audit import actor_fields
    from identity.bootstrap import key_store

    from .container import Container
    from .rekey import ForeignDataKey
    from .settings import Settings

    container = Container.build(Settings())
    try:
        keys = key_store(container)
        replaced_by = keys.revoke(args.kid, container.clock.now(), reason=args.reason,
                                  actor=actor_fields(_actor()))
        reload = int(keys.reload_every)
        signalled = container.cache.shared
    except LookupError:
        print(f"nothing changed: no token signing key {args.kid}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"nothing changed: {exc}", file=sys.stderr)
        return 2
    except ForeignDataKey as exc:  # review 172, finding 2: a new key would be sealed where nobody opens it
        print(f"keys revoke: refused, nothing changed: {exc}", file=sys.stderr)
        return 1
    finally:
        container.close()
    print(f"signing key {args.kid} is revoked: no longer published, it verifies no token and no gate pass")
    if replaced_by is not None:
        print(f"it was the active key: new signing key {replaced_by} is active")
    if signalled:
        print("running replicas stop trusting it within about a second (told through Redis); "
              "gate adapters when they next fetch the JWKS")
    else:
        print(f"running replicas stop trusting it within {reload} s (their next reload of the key set: no "
              "Redis to tell them sooner); gate adapters when they next fetch the JWKS")
    return 0


def cmd_rekey_data(args: argparse.Namespace) -> int:
    """Seal every sealed column again under QUAYGATE_DATA_KEY, or with ``--check`` count what is not yet.
    Exit 1 when rows remain under other keys (--check), some open under no configured key, or some were
    refused (quaygate.rekey: review 140, finding 1)."""
    from identity.audit import actor_fields, record
    from identity.bootstrap import key_store
    from identity.face.sealing import TAG_PURPOSE

    from . import rekey
    from .container import Container
    from .settings import Settings

    container = Container.build(Settings())
    cipher, engine = container.cipher, container.engine
    tag_keys = cipher.derive_all(TAG_PURPOSE)
    keys = f"current data key {cipher.key_id}, previous: {', '.join(cipher.previous_key_ids) or 'none'}"
    try:
        if args.check:
            counts = rekey.check(engine, cipher, tag_keys)
            print(keys)
            for name, n in counts.items():
                if name == rekey.FACE_RETAG_MARK:
                    print(f"{name}: " + ("not yet written (run `quaygate keys rekey-data`)" if n else "written"))
                else:
                    print(f"{name}: {n} not under the current key")
            left = sum(counts.values())
            print("nothing left under other keys: a previous key may be dropped, once `quaygate keys "
                  "face-digest-keys` gave QUAYGATE_FACE_DIGEST_KEYS_PREVIOUS" if not left else
                  f"{left} left: run `quaygate keys rekey-data`, and keep the previous keys until none is")
            if left and not counts[rekey.FACE_RETAG_MARK]:
                print("rekey-data has finished under the current key: the service opens nothing stored under a "
                      "previous key, and rekey-data seals none of it again: a row left was written since by "
                      "whoever holds that key (or a replica still on it); rekey-data names it")
            return 1 if left else 0
        now = container.clock.now()
        actor = actor_fields(_actor())
        counts_by = rekey.rekey(engine, cipher, batch=args.batch, now=now,
                                publication=key_store(container).publication)
        retagged = rekey.retag(engine, tag_keys, actor=actor, now=now)
        # One entry per run: the counts and the key ids, never key material.
        record(rekey.AUDIT_KIND, at=now, actor=actor, subject=cipher.key_id, engine=engine, data={
            "current_key_id": cipher.key_id, "previous_key_ids": list(cipher.previous_key_ids),
            "columns": {name: c.as_dict() for name, c in counts_by.items()}, "enrolments_retagged": len(retagged)})
    finally:
        container.close()
    print(keys)
    unreadable = refused = 0
    for name, c in counts_by.items():
        print(f"{name}: {c.resealed} sealed again" + (f", {c.changed} changed meanwhile (left to their writer)"
                                                      if c.changed else ""))
        # Each by name: one nobody here made was planted with a previous key (review 140, finding 1).
        for row in c.named:
            print(f"  {name}: {row}")
        for row_id in c.unreadable:
            print(f"{name}: row {row_id} opens under no configured data key: left as it is", file=sys.stderr)
        for row_id, why in c.refused.items():
            print(f"{name}: row {row_id} refused: {why}: left as it is", file=sys.stderr)
        unreadable += len(c.unreadable)
        refused += len(c.refused)
    print(f"{rekey.FACE_ENROLMENTS}: {len(retagged)} persons tagged again")
    # Each with the entry that decided, oldest last: one made after a suspected leak of the old key may be a
    # forgery the re-tag has just vouched for (review 135, finding 4): compare with the badge office's records.
    for r in sorted(retagged, key=lambda r: r.decided_at, reverse=True):
        print(f"  person {r.person_id}: {r.current.kind} of {r.decided_at.isoformat()} (audit row {r.row_id}), "
              f"template {r.current.template_id or '-'}")
    if unreadable:
        print(f"{unreadable} rows open under no configured data key (a key not in QUAYGATE_DATA_KEY or "
              "QUAYGATE_DATA_KEYS_PREVIOUS, or not ours): nothing destroyed", file=sys.stderr)
    if refused:
        print(f"{refused} rows refused, left under the key they name: look at who wrote them (a holder of a "
              "previous data key with write access to the database?); nothing destroyed", file=sys.stderr)
    return 1 if unreadable or refused else 0


def cmd_face_digest_keys(args: argparse.Namespace) -> int:
    """Print QUAYGATE_FACE_DIGEST_KEYS_PREVIOUS for dropping the previous data keys: the face capture digest
    keys of those keys and of the ones the setting already holds (HKDF outputs, identity.face.service
    ``DIGEST_PURPOSE``: they open and tag nothing, and keep a capture matched before the change a replay for
    the face replay window). Exit 2 when there is nothing to keep."""
    import base64

    from identity.face.service import DIGEST_PURPOSE

    from .settings import Settings

    settings = Settings()
    cipher = settings.data_cipher()
    keys = dict.fromkeys((*cipher.derive_all(DIGEST_PURPOSE)[1:], *settings.previous_face_digest_keys_bytes()))
    keys.pop(cipher.derive(DIGEST_PURPOSE), None)  # the current key's own: not a previous one
    if not keys:
        print("nothing to keep: no previous data key (QUAYGATE_DATA_KEYS_PREVIOUS) and no previous face digest "
              "key (QUAYGATE_FACE_DIGEST_KEYS_PREVIOUS)", file=sys.stderr)
        return 2
    value = ",".join(base64.urlsafe_b64encode(k).decode().rstrip("=") for k in keys)
    print(f"QUAYGATE_FACE_DIGEST_KEYS_PREVIOUS={value}")
    print(f"{len(keys)} face capture digest keys: set this on every replica before dropping the previous data "
          "keys, and keep it for the face replay window (QUAYGATE_FACE_REPLAY_DAYS) after the change; it opens "
          "and tags nothing", file=sys.stderr)
    return 0


def register(keys_sub: Any) -> None:
    revoke = keys_sub.add_parser("revoke", help="withdraw a signing key at once (it leaked): unpublished, "
                                 "trusted for nothing, replaced if active")
    revoke.add_argument("kid", help="the key's kid, as in the JWKS")
    revoke.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    revoke.set_defaults(func=cmd_revoke)
    rekey = keys_sub.add_parser("rekey-data", help="seal every sealed column again under QUAYGATE_DATA_KEY "
                                "(resumable; see README, Replacing the data key)")
    rekey.add_argument("--check", action="store_true",
                       help="only count the rows still under other keys; exit 1 when there are any")
    rekey.add_argument("--batch", type=_positive, default=500, help="rows per transaction (default 500)")
    rekey.set_defaults(func=cmd_rekey_data)
    digests = keys_sub.add_parser("face-digest-keys", help="print QUAYGATE_FACE_DIGEST_KEYS_PREVIOUS, so the "
                                  "previous data keys can go (README, Replacing the data key)")
    digests.set_defaults(func=cmd_face_digest_keys)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value

"""Sealing the database again under the current data key (review 132, finding 4): ``quaygate keys rekey-data``.

Every sealed column (``SEALED``) is read in batches of rows not yet under the current key (a v2 blob of
the current key begins with ``DataCipher.prefix``, so SQL finds them), each opened under the keyring and
sealed again with the same associated data. Each row is written by a guarded UPDATE (``WHERE <column> =
<what was read>``): a writer that changed the row meanwhile wins (on PostgreSQL the UPDATE waits for his
row lock, then finds the row changed and writes nothing; what he wrote was sealed under the current key
anyway), and the row is counted ``changed``. Batches commit one by one, so an interrupted run resumes
where it stopped; a second run finds nothing to do. A row that opens under no configured key is never
written nor deleted: it is counted ``unreadable`` with its id, and the run exits non-zero.

Review 140, finding 1: a previous key may be the one that leaked, and its holder, with write access to the
database, plants rows sealed under it. The run names every row it seals again (a key row by kid, use,
status and dates; a face template by person), for a look at those nobody made, and leaves (``refused``,
exit non-zero) a signing key row whose dates no rotation writes (made or rotated out in the future, a
retiring token key published past its rotation plus the publication period). Once a run has finished under
the current key (its mark, below), the service opens no stored blob under a previous key
(``DataCipher.open_stored``, ``watch``): one found then was written since by whoever holds that key (or by
a replica still on it), and is refused here too, never sealed under the current key.

The face enrolment tags (identity.face.service, derived from the data key and kept on audit entries,
which never change) cannot be sealed again: each person whose deciding entry only a previous key
verifies gets a new tagged entry under the current key (``retag_enrolment``), and then the run marks them
all done (``mark_retagged``), after which an entry only a previous key verifies counts only below the
person's generation under the current key: a previous key that leaked makes no enrolment of its own.

What a client or a browser holds sealed under the data key (a public client's pushed request, identity/oidc/
par.py; an upstream login's binding cookie, identity/broker/service.py) is not ours to rewrite: it lives
minutes, and opens under the current key only (``DataCipher.open_current``, review 135 finding 1), so those
made just before the key changed fail once. A previous key's face capture digest key (``quaygate keys
face-digest-keys``) stays configured for the face replay window, not the key itself.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag

from .crypto import DataCipher

if TYPE_CHECKING:
    from identity.face.service import Retag
from .schema import (
    FACE_ENROLMENT_KINDS_SQL,
    audit_log,
    encryption_keys,
    face_templates,
    signing_keys,
    webhook_subscriptions,
)

BATCH = 500
AUDIT_KIND = "quaygate.data_key.rekeyed"
# A retired token key's seal (identity.keys ``_RETIRED_AAD``) and a retired audit key's
# (release_service.adapters.audit ``RETIRED_AAD``): a row of signing_keys holds one of three.
_SIGNING_KEY_AADS = (b"", b"|retired", b"|audit-retired")


@dataclass(frozen=True)
class Sealed:
    """One sealed column: its table, primary key, and the associated data a row's blob was sealed with
    (candidates, tried in order: a signing key's row holds a private half or a retirement record); the
    other columns a row is named by (``shown``, ``describe``)."""

    table: sa.Table
    pk: sa.Column[Any]
    column: sa.Column[Any]
    aads: Callable[[Any], tuple[bytes, ...]]
    also: Callable[[DataCipher], dict[str, Any]] = lambda _c: {}
    shown: tuple[str, ...] = ()
    describe: Callable[[Any], str] = lambda r: "row"

    @property
    def name(self) -> str:
        return f"{self.table.name}.{self.column.name}"


def _face_aad(row: Any) -> tuple[bytes, ...]:
    return (f"face-template:v1:{row.person_id}:{row.template_id}".encode(),)  # identity.face.sealing._aad


def _anchor_aad(row: Any) -> tuple[bytes, ...]:
    """A face replacement's anchor (identity.face.service, review 154 finding 1): sealed under its own ids."""
    return (f"face-template:v1:{row.person_id}:{row.anchor_template_id}".encode(),)


def _at(value: datetime | None) -> str:
    return "-" if value is None else (value.replace(tzinfo=UTC) if value.tzinfo is None else value).isoformat()


def _key_row(r: Any) -> str:
    return (f"kid {r.kid} ({r.use} {r.alg} {r.status}, created {_at(r.created_at)}, retired {_at(r.retired_at)}, "
            f"published until {_at(r.publish_until)})")


_KEY_DATES = ("use", "alg", "status", "created_at", "retired_at", "publish_until")
SEALED: tuple[Sealed, ...] = (
    Sealed(signing_keys, signing_keys.c.kid, signing_keys.c.private_enc,
           lambda r: tuple(r.kid.encode() + a for a in _SIGNING_KEY_AADS), shown=_KEY_DATES, describe=_key_row),
    Sealed(encryption_keys, encryption_keys.c.kid, encryption_keys.c.private_enc, lambda r: (r.kid.encode(),),
           shown=("status", "created_at", "retired_at", "publish_until"),
           describe=lambda r: (f"kid {r.kid} ({r.status}, created {_at(r.created_at)}, retired {_at(r.retired_at)}, "
                               f"published until {_at(r.publish_until)})")),
    Sealed(webhook_subscriptions, webhook_subscriptions.c.id, webhook_subscriptions.c.secret_enc,
           lambda r: (f"webhook-secret:{r.id}".encode(),),  # release_service.domain.webhooks.secret_aad
           shown=("organisation_id",), describe=lambda r: f"subscription {r.id} (organisation {r.organisation_id})"),
    Sealed(face_templates, face_templates.c.person_id, face_templates.c.sealed, _face_aad,
           also=lambda c: {"key_id": c.key_id}, shown=("enrolled_at", "enrolled_by"),
           describe=lambda r: (f"person {r.person_id} (template {r.template_id}, enrolled {_at(r.enrolled_at)} "
                               f"by {r.enrolled_by})")),
    Sealed(face_templates, face_templates.c.person_id, face_templates.c.anchor_sealed, _anchor_aad,
           shown=("enrolled_at", "enrolled_by"),
           describe=lambda r: (f"person {r.person_id} (anchor {r.anchor_template_id} of template {r.template_id}, "
                               f"enrolled {_at(r.enrolled_at)} by {r.enrolled_by})")),
)
# The keys' sealed columns (token, audit and upstream encryption keys): what ``refuse_foreign_key`` opens.
_KEY_COLUMNS = SEALED[:2]


class ForeignDataKey(RuntimeError):
    """The data key opens none of the keys stored in the database: not the one they were sealed under."""


def refuse_foreign_key(conn: sa.Connection, cipher: DataCipher) -> None:
    """Before a new key is sealed (a token or upstream encryption key made, rotated or revoked and replaced):
    ``ForeignDataKey`` unless ``cipher`` opens a key stored in the database (a private half or retirement
    record, with its row's associated data), or none is stored yet. Review 172, finding 2: under another
    QUAYGATE_DATA_KEY, ``quaygate keys rotate`` sealed the new keys where the service cannot open them and
    said they were active (the service then had none it could sign with). A blob that opens was sealed by a
    holder of the key (AES-GCM); tried newest first, so under our key the first opens, and under another each
    names its own key and is refused without a decryption."""
    tried, named = 0, set()
    for spec in _KEY_COLUMNS:
        rows = conn.execute(sa.select(spec.pk, spec.column).where(spec.column.is_not(None))
                            .order_by(spec.table.c.created_at.desc(), spec.pk))
        for row in rows:
            sealed, tried = getattr(row, spec.column.name), tried + 1
            for aad in spec.aads(row):
                try:
                    cipher.open(sealed, aad)
                    return
                except (InvalidTag, ValueError):  # UnknownDataKey and a malformed blob too
                    continue
            try:
                named.add(cipher.sealed_key_id(sealed))
            except ValueError:
                pass
    if tried:
        under = ", ".join(sorted(k for k in named if k is not None))
        raise ForeignDataKey(
            f"QUAYGATE_DATA_KEY (data key {', '.join(cipher.key_ids)}) opens none of the {tried} keys stored in the "
            f"database{f' (sealed under data key {under})' if under else ''}: it is not the data key they were "
            "sealed under")


# Clocks of the replicas and of this command may differ by this much: a date ahead of now by less is one
# a rotation could have written.
SKEW = timedelta(minutes=5)
AFTER_THE_MARK = ("sealed under a previous data key after rekey-data finished under the current one: written "
                  "since by whoever holds that key (or a replica still on it); the service refuses it")
FACE_ENROLMENTS = "face enrolment tags"
FACE_RETAG_MARK = "face enrolments' re-tag mark"  # 1 until rekey-data has marked them all re-tagged


@dataclass
class TableCount:
    resealed: int = 0
    changed: int = 0  # changed by another writer between the read and the guarded UPDATE: left to him
    unreadable: list[str] = field(default_factory=list)  # ids of rows that open under no configured key
    refused: dict[str, str] = field(default_factory=dict)  # id -> why it was left (module docstring)
    named: list[str] = field(default_factory=list)  # each row sealed again (``Sealed.describe``)

    def as_dict(self) -> dict[str, Any]:
        return {"resealed": self.resealed, "changed": self.changed, "unreadable": self.unreadable,
                "refused": self.refused}


def key_row_refusal(r: Any, *, now: datetime, publication: timedelta | None) -> str | None:
    """Why signing key row ``r``'s dates are none that identity.keys (a token key's rotation, revocation or
    retirement) or an audit key's rotation writes, None when they could be. ``publication``: the token
    keys' publication period (``KeyStore.publication``), None: not checked."""
    created, retired, until = (None if v is None else (v.replace(tzinfo=UTC) if v.tzinfo is None else v)
                               for v in (r.created_at, r.retired_at, r.publish_until))
    if created is not None and created > now + SKEW:
        return f"its dates are none a rotation writes: made in the future (created {_at(created)})"
    if retired is not None and retired > now + SKEW:
        return f"its dates are none a rotation writes: rotated out in the future (retired {_at(retired)})"
    if retired is not None and created is not None and retired < created:
        return "its dates are none a rotation writes: rotated out before it was made"
    if r.use == "sig" and r.status == "retiring":
        if retired is None or until is None:
            return "its dates are none a rotation writes: retiring with no retirement or publication end"
        if publication is not None and until > retired + publication + SKEW:
            return (f"its dates are none a rotation writes: published until {_at(until)}, past its rotation "
                    f"({_at(retired)}) plus the publication period ({int(publication.total_seconds())} s)")
    return None


def _not_current(spec: Sealed, cipher: DataCipher) -> sa.ColumnElement[bool]:
    prefix = cipher.prefix
    return sa.and_(spec.column.is_not(None), sa.func.substr(spec.column, 1, len(prefix)) != prefix)


def check(engine: sa.Engine, cipher: DataCipher, tag_keys: tuple[bytes, ...]) -> dict[str, int]:
    """How many rows each sealed column still holds under keys other than the current one (v1 blobs,
    which name none, included), and how many persons' enrolments a previous key still decides."""
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        for spec in SEALED:
            counts[spec.name] = conn.execute(
                sa.select(sa.func.count()).select_from(spec.table).where(_not_current(spec, cipher))).scalar_one()
    counts[FACE_ENROLMENTS] = sum(1 for _ in _persons_to_retag(engine, tag_keys))
    counts[FACE_RETAG_MARK] = 0 if retag_marked(engine, tag_keys) else 1
    return counts


def rekey(engine: sa.Engine, cipher: DataCipher, *, batch: int = BATCH, now: datetime | None = None,
          publication: timedelta | None = None) -> dict[str, TableCount]:
    """Seal every sealed column again under the current key (the module docstring); counts by column.
    ``publication``: the token keys' publication period, for ``key_row_refusal``."""
    previous_ok = not finished(engine, cipher)  # the mark of an earlier run: this one's comes after it
    at = now or datetime.now(UTC)

    def refusal(r: Any) -> str | None:
        return key_row_refusal(r, now=at, publication=publication)

    return {spec.name: _rekey_column(engine, cipher, spec, batch, previous_ok,
                                     refusal if spec.table is signing_keys else None)
            for spec in SEALED}


def _rekey_column(engine: sa.Engine, cipher: DataCipher, spec: Sealed, batch: int, previous_ok: bool,
                  refusal: Callable[[Any], str | None] | None) -> TableCount:
    count = TableCount()
    columns = [c for c in spec.table.c if c.name in {spec.pk.name, spec.column.name, "kid", "id", "person_id",
                                                      "template_id", "anchor_template_id", *spec.shown}]
    after: Any = None
    while True:
        with engine.begin() as conn:
            query = sa.select(*columns).where(_not_current(spec, cipher)).order_by(spec.pk).limit(batch)
            if after is not None:
                query = query.where(spec.pk > after)
            rows = conn.execute(query).all()
            for row in rows:
                old, row_id = getattr(row, spec.column.name), str(getattr(row, spec.pk.name))
                opened = _reseal(cipher, old, spec.aads(row))
                if opened is None:
                    count.unreadable.append(row_id)
                    continue
                new, under_previous = opened
                why = (AFTER_THE_MARK if under_previous and not previous_ok
                       else refusal(row) if refusal is not None else None)
                if why is not None:
                    count.refused[row_id] = why
                    continue
                done = conn.execute(spec.table.update()
                                    .where(spec.pk == getattr(row, spec.pk.name), spec.column == old)
                                    .values({spec.column.name: new, **spec.also(cipher)}))
                if done.rowcount == 1:
                    count.resealed += 1
                    count.named.append(spec.describe(row))
                else:
                    count.changed += 1
        if len(rows) < batch:
            return count
        after = getattr(rows[-1], spec.pk.name)


def _reseal(cipher: DataCipher, sealed: str, aads: Iterable[bytes]) -> tuple[str, bool] | None:
    """The blob sealed under the current key with the associated data it opened with, and whether it was
    under a previous key; None when it opens under no configured key with any of ``aads`` (an unknown
    key, or not ours)."""
    aads = tuple(aads)
    for opener, previous in ((cipher.open_current, False), (cipher.open, True)):
        for aad in aads:
            try:
                return cipher.seal(opener(sealed, aad), aad), previous
            except (InvalidTag, ValueError):
                continue
    return None


def finished(engine: sa.Engine, cipher: DataCipher) -> bool:
    """Has a run finished under ``cipher``'s current key (its re-tag mark, ``retag_marked``)? True with no
    previous key."""
    from identity.face.sealing import TAG_PURPOSE

    return not cipher.previous_key_ids or retag_marked(engine, cipher.derive_all(TAG_PURPOSE))


def watch(cipher: DataCipher, engine: sa.Engine, *, once: bool = False) -> DataCipher:
    """Tell ``cipher`` how ``open_stored`` learns that a run has finished (``finished``, asked at most once a
    second while a previous key's blob is opened, on a connection of its own). ``once``: asked now and
    never again, for a command that holds its only connection while it opens (the answer when it started)."""
    if once:
        done = finished(engine, cipher)
        cipher.watch_rekey(lambda: done, check_every=math.inf)
    else:
        cipher.watch_rekey(lambda: finished(engine, cipher))
    return cipher


def retag(engine: sa.Engine, tag_keys: tuple[bytes, ...], *, actor: dict[str, Any], now: datetime) -> list[Retag]:
    """A new tagged entry for each person whose enrolment a previous key decides, then the mark that all are
    (``mark_retagged``: from then on a previous key's tag counts only below a person's generation under the
    current key, review 135 finding 1); the persons, each with the entry that decided (review 135, finding
    4: an entry made with a leaked old key before this run is tagged again like any other, so the command
    lists them by the time of that entry, for a look at those made since a suspected leak)."""
    from identity.face.service import mark_retagged, retag_enrolment

    if len(tag_keys) < 2:
        return []  # no previous key: nothing a previous key could decide
    done = []
    for person_id in list(_persons_to_retag(engine, tag_keys)):
        with engine.begin() as conn:
            found = retag_enrolment(conn, tag_keys, person_id, actor=actor, now=now)
        if found is not None:
            done.append(found)
    with engine.begin() as conn:
        mark_retagged(conn, tag_keys, actor=actor, now=now, retagged=len(done))
    return done


def retag_marked(engine: sa.Engine, tag_keys: tuple[bytes, ...]) -> bool:
    """Whether `quaygate keys rekey-data` has marked every enrolment tagged under the current key (True
    with no previous key: nothing to mark)."""
    from identity.face.service import retagged_all
    from identity.face.store import TemplateStore

    if len(tag_keys) < 2:
        return True
    with engine.connect() as conn:
        return retagged_all(TemplateStore(conn), tag_keys[0])


def _persons_to_retag(engine: sa.Engine, tag_keys: tuple[bytes, ...]) -> Iterator[uuid.UUID]:
    from identity.face.service import needs_retag
    from identity.face.store import TemplateStore

    if len(tag_keys) < 2:
        return  # no previous key: every tag that verifies is under the current key
    with engine.connect() as conn:
        subjects = conn.execute(sa.select(audit_log.c.subject).where(sa.text(FACE_ENROLMENT_KINDS_SQL))
                                .distinct()).scalars().all()
        for subject in subjects:
            try:
                person_id = uuid.UUID(str(subject))
            except ValueError:
                continue
            if needs_retag(TemplateStore(conn), tag_keys, person_id) is not None:
                yield person_id

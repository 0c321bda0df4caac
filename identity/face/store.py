"""Sealed face templates in ``face_templates``: one per person, replaced by a new enrolment; and the
keyed digests of the captures matched for a person in ``face_captures`` (replay refusal).

Repositories only flush (STYLE.md #5): every method works in the caller's connection and transaction.
The row holds the sealed template, the data key's id, where the image came from and the quality
measures of the enrolment, and the sealed anchor a replacement is judged against when it is not this
template (``TemplateRow``); never the image, never a template in clear.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from quaygate.schema import FACE_ENROLMENT_KINDS_SQL, audit_log, face_captures, face_templates, persons

from ..domain.face_enrolment import RETAGGED_ALL


@dataclass(frozen=True, slots=True)
class TemplateRow:
    person_id: uuid.UUID
    template_id: uuid.UUID
    sealed: str
    key_id: str
    source: str
    face_px: int
    sharpness: float
    enrolled_by: str
    enrolled_at: datetime
    # The face a replacement is also judged against, when it is not this template's (identity.face.service
    # ``_replacing``): the template id it was sealed with, and its sealed template. None: this one is it.
    anchor_template_id: uuid.UUID | None = None
    anchor_sealed: str | None = None


class TemplateStore:
    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def person_status(self, person_id: uuid.UUID) -> str | None:
        """The person's status (active, suspended), or None when there is no such person."""
        status: str | None = self._conn.execute(
            sa.select(persons.c.status).where(persons.c.id == person_id)).scalar_one_or_none()
        return status

    def lock_person(self, person_id: uuid.UUID) -> str | None:
        """``person_status`` under a row lock held to the commit (FOR NO KEY UPDATE: it does not block
        rows that merely reference the person): enrolments and withdrawals of one person take their
        generation one after the other (identity.domain.face_enrolment)."""
        status: str | None = self._conn.execute(
            sa.select(persons.c.status).where(persons.c.id == person_id)
            .with_for_update(key_share=True)).scalar_one_or_none()
        return status

    def enrolment_entries(self, person_id: uuid.UUID) -> list[sa.Row[tuple[int, str, object, datetime, object]]]:
        """The person's enrolment entries on the audit trail (id, kind, data, at, actor), oldest first: one read
        of the partial index ``ix_audit_log_face_enrolment`` (its predicate is these kinds), a few rows
        per person however many other entries name him. Unsealed rows too: sealing does not say who
        wrote a row; the entries' tags do (identity.domain.face_enrolment)."""
        return list(self._conn.execute(
            sa.select(audit_log.c.id, audit_log.c.kind, audit_log.c.data, audit_log.c.at, audit_log.c.actor)
            .where(audit_log.c.subject == str(person_id), sa.text(FACE_ENROLMENT_KINDS_SQL))
            .order_by(audit_log.c.id)))

    def retag_marks(self) -> list[object]:
        """The data of every ``RETAGGED_ALL`` entry (one per `quaygate keys rekey-data` run that re-tagged
        enrolments): through ``ix_audit_log_kind_id``, read only while a previous data key's tag is found
        above a person's current generation (identity.face.service ``_read_enrolment``)."""
        return list(self._conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == RETAGGED_ALL)
                                       .order_by(audit_log.c.id)).scalars())

    def get(self, person_id: uuid.UUID) -> TemplateRow | None:
        columns = [face_templates.c[k] for k in TemplateRow.__slots__]
        row = self._conn.execute(sa.select(*columns).where(face_templates.c.person_id == person_id)).first()
        return TemplateRow(**row._mapping) if row is not None else None

    def put(self, row: TemplateRow) -> bool:
        """Store the person's template, replacing an older one; True when one was replaced. Two
        enrolments at once: the second insert hits the primary key and raises IntegrityError. A new
        enrolment starts the retention clock afresh (``leaving_since``: identity.face.retention)."""
        values = {k: getattr(row, k) for k in TemplateRow.__slots__ if k != "person_id"}
        values["leaving_since"] = None
        done = self._conn.execute(
            face_templates.update().where(face_templates.c.person_id == row.person_id).values(**values))
        if done.rowcount == 1:
            return True
        self._conn.execute(face_templates.insert().values(person_id=row.person_id, **values))
        return False

    def delete(self, person_id: uuid.UUID) -> bool:
        done = self._conn.execute(face_templates.delete().where(face_templates.c.person_id == person_id))
        return done.rowcount == 1


# What a withdrawn person's captures say they were used for (``CaptureStore.strip``); no use is named so:
# uses are ``gate:<terminal>:<request_id>``, ``step_up:<sid>``, ``<purpose>:<uuid>`` or ``enrol:<template_id>``.
WITHDRAWN_USE = "withdrawn"
# The use an enrolment claims its photo for, then the template's id (review 165, finding 4): the photo is
# never a capture afterwards (identity.face.service).
ENROL_USE = "enrol:"


@dataclass(frozen=True, slots=True)
class SeenCapture:
    """Where and when a capture was matched first (a replay's audit entry names it)."""

    used_for: str
    seen_at: datetime


class CaptureStore:
    """Keyed digests of the captures matched for a person and of his enrolments' photos (identity.domain.face,
    "Replay").

    The truth is PostgreSQL, not the cache: a capture claimed here stays claimed through a lost Redis.
    ``claim`` is one statement, atomic with any other claim of the same bytes (no check-then-act)."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def claim(self, person_id: uuid.UUID, digest: bytes, *, used_for: str, now: datetime, since: datetime) -> bool:
        """Record that this capture was matched for ``used_for``; False when it is a replay: the same
        bytes were matched for this person at or after ``since`` for another use. The same use again (a
        gate retrying its own request_id) claims it anew, and a row older than ``since`` counts as none.
        INSERT .. ON CONFLICT DO UPDATE .. WHERE: two claims at once of the same bytes for different
        uses, one wins (the loser waits for the winner's row and finds it current)."""
        insert = postgresql.insert if self._conn.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(face_captures).values(person_id=person_id, digest=digest, used_for=used_for, seen_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=[face_captures.c.person_id, face_captures.c.digest],
            set_={"used_for": stmt.excluded.used_for, "seen_at": stmt.excluded.seen_at},
            where=sa.or_(face_captures.c.seen_at < since, face_captures.c.used_for == stmt.excluded.used_for))
        return self._conn.execute(stmt.returning(face_captures.c.person_id)).first() is not None

    def seen(self, person_id: uuid.UUID, digest: bytes) -> SeenCapture | None:
        row = self._conn.execute(sa.select(face_captures.c.used_for, face_captures.c.seen_at).where(
            face_captures.c.person_id == person_id, face_captures.c.digest == digest)).first()
        return SeenCapture(row.used_for, row.seen_at) if row is not None else None

    def strip(self, person_id: uuid.UUID, *, now: datetime) -> int:
        """Drop what the person's captures were used for and when (a withdrawal): each row's use becomes
        ``WITHDRAWN_USE`` and its time ``now``. The digests stay and refuse the same bytes again for the
        replay window from now (a use is never ``WITHDRAWN_USE``, so none is a retry of it); what is
        gone is the movement history (``gate:<terminal>:<request_id>``, the times). How many rows."""
        done = self._conn.execute(face_captures.update().where(face_captures.c.person_id == person_id)
                                  .values(used_for=WITHDRAWN_USE, seen_at=now))
        return int(done.rowcount or 0)

    def forget(self, before: datetime) -> int:
        """Drop the digests older than the replay window (they no longer refuse anything)."""
        done = self._conn.execute(face_captures.delete().where(face_captures.c.seen_at < before))
        return int(done.rowcount or 0)

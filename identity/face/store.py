"""Sealed face templates in ``face_templates``: one per person, replaced by a new enrolment.

Repositories only flush (STYLE.md #5): every method works in the caller's connection and transaction.
The row holds the sealed template, the data key's id, where the image came from and the quality
measures of the enrolment; never the image, never the template in clear.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from quaygate.schema import face_templates, persons


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


class TemplateStore:
    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def person_status(self, person_id: uuid.UUID) -> str | None:
        """The person's status (active, suspended), or None when there is no such person."""
        status: str | None = self._conn.execute(
            sa.select(persons.c.status).where(persons.c.id == person_id)).scalar_one_or_none()
        return status

    def get(self, person_id: uuid.UUID) -> TemplateRow | None:
        row = self._conn.execute(sa.select(face_templates).where(face_templates.c.person_id == person_id)).first()
        return TemplateRow(**row._mapping) if row is not None else None

    def put(self, row: TemplateRow) -> bool:
        """Store the person's template, replacing an older one; True when one was replaced. Two
        enrolments at once: the second insert hits the primary key and raises IntegrityError."""
        values = {k: getattr(row, k) for k in TemplateRow.__slots__ if k != "person_id"}
        done = self._conn.execute(
            face_templates.update().where(face_templates.c.person_id == row.person_id).values(**values))
        if done.rowcount == 1:
            return True
        self._conn.execute(face_templates.insert().values(person_id=row.person_id, **values))
        return False

    def delete(self, person_id: uuid.UUID) -> bool:
        done = self._conn.execute(face_templates.delete().where(face_templates.c.person_id == person_id))
        return done.rowcount == 1

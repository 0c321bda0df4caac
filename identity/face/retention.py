"""Face templates of persons who left the port are withdrawn (review 131, finding 4; GDPR art. 5(1)(e)).

A face template is kept for a person who works in the port: one with a badge in use or a membership
in force. Before, only the badge office's explicit DELETE erased it: revoking every badge, ending the
memberships or suspending the person left the template, and the captures matched for him, for good.

The sweep (``sweep``, a background loop in every replica: quaygate/workers.py), each round:

1. clears ``face_templates.leaving_since`` of the persons who have a badge or a membership again;
2. sets it to now for those who have neither: no badge that is active or inactive (a missing card
   may come back) with its validity still to run out, and no membership in force in an active
   organisation (quaygate.schema ``membership_in_force``, ``membership_of_active_organisation``);
3. withdraws, one person per transaction, the templates whose ``leaving_since`` is more than
   ``after`` (``QUAYGATE_FACE_RETENTION_DAYS_AFTER_LEAVING``, 30 days) old, as the badge office's
   DELETE does (``identity.face.service.withdraw_in``: the tagged ``identity.face.withdrawn`` entry,
   here with ``reason`` ``left`` and ``leaving_since``, and the person's captures stripped of their
   uses), after checking again under the person's lock that he still has neither.

So the clock is the sweep's own (what it saw, to within a round), and a person who gets a badge or a
membership back within the grace keeps his face. A suspension is not a leaving of its own, by rule
(docs/face.md "Retention"): it neither starts the clock nor, lifted (``:reinstate``), stops it; the
person's status is not read here. A suspended person's face opens nothing meanwhile, and may be what
port security's inquiry settles; once his badges are revoked or run out and his memberships end, his
grace runs.

Safe in every replica at once: 1 and 2 take their rows with SKIP LOCKED (no replica waits on another,
nor on an enrolment holding a row), and are the same whoever runs them; 3 re-reads each person under
his lock (``TemplateStore.lock_person``, the lock of every enrolment and withdrawal), so a template is
withdrawn once, by one replica, and never one enrolled meanwhile (an enrolment clears the mark).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa

from quaygate.crypto import DataCipher
from quaygate.schema import badges, face_templates, membership_in_force, membership_of_active_organisation, memberships

from .sealing import TAG_PURPOSE
from .service import RETENTION_ACTOR, withdraw_in
from .store import TemplateStore

log = logging.getLogger(__name__)

ACTOR = RETENTION_ACTOR
BATCH = 100  # withdrawals per round; the loop runs again at once while a round was full
STAYING_BADGES = ("active", "inactive")  # in use, or may come back (identity.domain.badges)


def _stays(person: sa.ColumnElement[uuid.UUID], now: datetime) -> sa.ColumnElement[bool]:
    """``person`` still works in the port: a badge in use (or that may come back) whose validity has
    not run out, or a membership in force in an active organisation."""
    badge = sa.exists().where(badges.c.person_id == person, badges.c.status.in_(STAYING_BADGES),
                              badges.c.valid_until > now)
    member = sa.exists().where(memberships.c.person_id == person, membership_in_force(now),
                               membership_of_active_organisation())
    return sa.or_(badge, member)


def _mark(conn: sa.Connection, now: datetime) -> tuple[int, int]:
    """Steps 1 and 2 (module docstring): how many came back, how many left."""
    t = face_templates.alias("t")  # the rows taken, apart from the table updated

    def rows(leaving: sa.ColumnElement[bool], stays: bool) -> sa.Select[tuple[uuid.UUID]]:
        staying = _stays(t.c.person_id, now)
        return (sa.select(t.c.person_id).where(leaving, staying if stays else sa.not_(staying))
                .with_for_update(skip_locked=True))

    back = conn.execute(face_templates.update().where(face_templates.c.person_id.in_(
        rows(t.c.leaving_since.is_not(None), stays=True))).values(leaving_since=None))
    left = conn.execute(face_templates.update().where(face_templates.c.person_id.in_(
        rows(t.c.leaving_since.is_(None), stays=False))).values(leaving_since=now))
    return int(back.rowcount or 0), int(left.rowcount or 0)


def sweep(engine: sa.Engine, cipher: DataCipher, *, now: datetime, after: timedelta, batch: int = BATCH) -> int:
    """One round (module docstring); how many templates were withdrawn."""
    with engine.begin() as conn:
        back, left = _mark(conn, now)
    if back or left:
        log.info("identity.face.retention.marked", extra={"fields": {"back": back, "left": left}})
    cutoff = now - after
    with engine.connect() as conn:
        due = conn.execute(sa.select(face_templates.c.person_id).where(face_templates.c.leaving_since < cutoff)
                           .order_by(face_templates.c.leaving_since).limit(batch)).scalars().all()
    tag_keys = cipher.derive_all(TAG_PURPOSE)
    return sum(_withdraw(engine, tag_keys, person_id, now=now, cutoff=cutoff) for person_id in due)


def _withdraw(engine: sa.Engine, tag_keys: tuple[bytes, ...], person_id: uuid.UUID, *, now: datetime,
              cutoff: datetime) -> bool:
    with engine.begin() as conn:
        TemplateStore(conn).lock_person(person_id)
        since = conn.execute(sa.select(face_templates.c.leaving_since).where(
            face_templates.c.person_id == person_id, face_templates.c.leaving_since < cutoff,
            sa.not_(_stays(face_templates.c.person_id, now)))).scalar_one_or_none()
        if since is None:
            return False  # withdrawn by another replica, enrolled anew, or back at work meanwhile
        done = withdraw_in(conn, tag_keys, person_id, actor=ACTOR, now=now,
                           why={"reason": "left", "leaving_since": since.isoformat()})
    if done is None:
        return False
    log.info("identity.face.retention.withdrawn")
    return True


"""Link a person to the national register: store the keyed hash of the number, never the number.

Issue 6 links persons through the upstream identity; until then the badge office sets it (CLI
``quaygate person set-national-id PERSON_ID``, the number read from stdin). A ban already in the list
for that number takes effect at once, as a new ban would (badges deactivated, nominations alerted).

A link is replaced only on purpose, with a reason (``replace_reason``; CLI ``--replace REASON``), and
the trail says so: ``identity.person.national_id_replaced``, with the reason and whether the number it
replaced was under a port ban in force (review 123: re-linking a banned driver to any other valid number,
two check digits anyone can compute, cleared him at the gate, at nomination and at badge issue, and the
trail showed two identical "set" entries). Who may run the command can also write to the database, so
this cannot stop him; it makes what he did plain to port security, who read the trail, and a slip of
the badge office's (the wrong person's id) a refusal rather than a silent overwrite.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

import sqlalchemy as sa

from identity import audit
from identity.domain.bans import national_number_valid
from quaygate.crypto import keyed_hash
from quaygate.invalidation import BADGES, touch
from quaygate.schema import persons, port_bans

from .loader import ban_consequences

log = logging.getLogger(__name__)


class NationalIdRefused(Exception):
    pass


MAX_REASON = 500


def set_national_id(engine: sa.Engine, person_id: uuid.UUID, number: str, *, pepper: bytes, now: datetime,
                    actor: str, replace_reason: str | None = None) -> int:
    """Set the person's hash; returns how many badges a ban already in force deactivated. A person
    linked to another number is refused unless ``replace_reason`` says why (module docstring)."""
    number = number.strip().replace(".", "").replace("-", "").replace(" ", "")
    if not national_number_valid(number):
        raise NationalIdRefused("not a valid national register number (11 digits, mod-97 check)")
    reason = None if replace_reason is None else " ".join(replace_reason.split())
    if reason is not None and not 0 < len(reason) <= MAX_REASON:
        raise NationalIdRefused(f"the reason for replacing a link must be 1 to {MAX_REASON} characters")
    subject = keyed_hash(pepper, number)
    try:
        with engine.begin() as conn:
            current = conn.execute(sa.select(persons.c.national_id_hash).where(persons.c.id == person_id)
                                   .with_for_update()).first()
            if current is None:
                raise NationalIdRefused("no such person")
            previous = current.national_id_hash
            replacing = previous is not None and previous != subject
            if replacing and reason is None:
                raise NationalIdRefused("this person is already linked to another national register number; "
                                        "replacing the link needs a reason (--replace REASON)")
            touch(conn, BADGES)  # the gate's cached badge facts hold the holder's bans
            conn.execute(persons.update().where(persons.c.id == person_id).values(national_id_hash=subject))
            if replacing:
                banned = _banned(conn, previous, now)
                audit.record("identity.person.national_id_replaced", at=now, actor={"client_id": actor}, conn=conn,
                             subject=str(person_id), data={"person_id": str(person_id), "reason": reason,
                                                           "replaced_link_under_ban": banned})
                if banned:
                    log.warning("identity.person.national_id_replaced.under_ban",
                                extra={"fields": {"person_id": str(person_id)}})
            else:
                audit.record("identity.person.national_id_set", at=now, actor={"client_id": actor}, conn=conn,
                             subject=str(person_id), data={"person_id": str(person_id)})
            rows = conn.execute(sa.select(port_bans.c.subject_hash, port_bans.c.reference, port_bans.c.scope,
                                          port_bans.c.banned_from, port_bans.c.banned_until)
                                .where(port_bans.c.subject_hash == subject))
            deactivated, _ = ban_consequences(conn, [dict(r._mapping) for r in rows], now)
    except sa.exc.IntegrityError:
        raise NationalIdRefused("another person already has that national register number") from None
    log.info("identity.person.national_id_set")
    return deactivated


def _banned(conn: sa.Connection, subject: str, now: datetime) -> bool:
    """Whether a port ban is in force on ``subject`` (any port: the trail's flag, not a screening)."""
    return conn.execute(sa.select(port_bans.c.subject_hash).where(
        port_bans.c.subject_hash == subject, port_bans.c.banned_from <= now, port_bans.c.banned_until > now,
    ).limit(1)).first() is not None

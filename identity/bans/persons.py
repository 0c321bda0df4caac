"""Link a person to the national register: store the keyed hash of the number, never the number.

Issue 6 links persons through the upstream identity; until then the badge office sets it (CLI
``quaygate person set-national-id PERSON_ID``, the number read from stdin). A ban already in the list
for that number takes effect at once, as a new ban would (badges deactivated, nominations alerted).
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


def set_national_id(engine: sa.Engine, person_id: uuid.UUID, number: str, *, pepper: bytes, now: datetime,
                    actor: str) -> int:
    """Set the person's hash; returns how many badges a ban already in force deactivated."""
    number = number.strip().replace(".", "").replace("-", "").replace(" ", "")
    if not national_number_valid(number):
        raise NationalIdRefused("not a valid national register number (11 digits, mod-97 check)")
    subject = keyed_hash(pepper, number)
    try:
        with engine.begin() as conn:
            touch(conn, BADGES)  # the gate's cached badge facts hold the holder's bans
            updated = conn.execute(persons.update().where(persons.c.id == person_id)
                                   .values(national_id_hash=subject)).rowcount
            if updated != 1:
                raise NationalIdRefused("no such person")
            audit.record("identity.person.national_id_set", at=now, actor={"client_id": actor}, conn=conn,
                         subject=str(person_id), data={"person_id": str(person_id)})
            rows = conn.execute(sa.select(port_bans.c.subject_hash, port_bans.c.reference, port_bans.c.banned_from,
                                          port_bans.c.banned_until).where(port_bans.c.subject_hash == subject))
            deactivated, _ = ban_consequences(conn, [dict(r._mapping) for r in rows], now)
    except sa.exc.IntegrityError:
        raise NationalIdRefused("another person already has that national register number") from None
    log.info("identity.person.national_id_set")
    return deactivated

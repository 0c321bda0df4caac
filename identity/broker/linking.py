"""Who an upstream person is here: ``upstream_links`` by (issuer, sub), found first by the keyed hash of
the national register number (quaygate.crypto.keyed_hash under the pepper, as identity/bans does).

Runs inside the login's transaction (identity.broker.service): the link, the re-bind, the session and
the audit entry commit together or not at all. The decision itself is identity.domain.broker.link_decision.
A race of two first logins of the same (issuer, sub) meets the unique constraint: the loser's
transaction fails and nothing of it is written (the browser retries and logs in through the link).
"""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa

from quaygate.schema import persons, upstream_links

from ..authn.enrolment import issuing_office
from ..domain.broker import BrokerRefused, LinkAction, PasskeyProof, Refusal, link_decision
from ..sessions import hold_person


def resolve(conn: sa.Connection, *, issuer: str, sub: str, national_id_hash: str, proof: PasskeyProof | None,
            now: datetime) -> tuple[LinkAction, uuid.UUID, str | None]:
    """Link, re-bind or just log in; returns (action, person id, the replaced sub when re-bound)."""
    # The person's link is read before the sub's own link: each statement sees what committed before
    # it began, so a racing first login's link seen by the first read is seen by the second too (read
    # the other way round, "the sub is unlinked but the person is linked to that very sub" could be
    # seen, and would be taken for a changed sub).
    hashed = conn.execute(sa.select(persons.c.id).where(persons.c.national_id_hash == national_id_hash)).scalar()
    linked_sub = None
    if hashed is not None:
        linked_sub = conn.execute(sa.select(upstream_links.c.sub).where(
            upstream_links.c.issuer == issuer, upstream_links.c.person_id == hashed,
            upstream_links.c.status == "active")).scalar()
    own = conn.execute(sa.select(upstream_links.c.person_id, upstream_links.c.status)
                       .where(upstream_links.c.issuer == issuer, upstream_links.c.sub == sub)).first()
    if own is not None and own.status != "active":
        # A sub that was replaced by a re-bind stays replaced: the re-created account is the person's now.
        raise BrokerRefused(Refusal.REBIND_REQUIRED, "this upstream sub was replaced",
                            office=issuing_office(conn, own.person_id))
    try:
        action, person = link_decision(linked_person=str(own.person_id) if own is not None else None,
                                       hashed_person=str(hashed) if hashed is not None else None,
                                       person_linked_sub=linked_sub, proof=proof, now=now)
    except BrokerRefused as exc:
        if exc.code is not Refusal.REBIND_REQUIRED or hashed is None:
            raise
        # The upstream has shown who he is (his national number): he is told whom to turn to, as when
        # suspended; a person holding a privileged role turns to port security, not the badge office.
        raise BrokerRefused(exc.code, str(exc), office=issuing_office(conn, hashed)) from exc
    person_id = uuid.UUID(person)
    # Under a share lock on the person's row, before the login writes anything: a suspension committing
    # meanwhile is waited for and seen, or waits and ends this login's session (sessions.hold_person).
    status = hold_person(conn, person_id)
    if status != "active":
        # The upstream has shown who he is: he is told whom to turn to (the office that issues his codes).
        raise BrokerRefused(Refusal.PERSON_SUSPENDED, "person not active", office=issuing_office(conn, person_id))
    if action is LinkAction.LOGIN:
        conn.execute(upstream_links.update().where(upstream_links.c.issuer == issuer, upstream_links.c.sub == sub)
                     .values(last_login_at=now))
        return action, person_id, None
    if action is LinkAction.REBIND:
        conn.execute(upstream_links.update().where(
            upstream_links.c.issuer == issuer, upstream_links.c.person_id == person_id,
            upstream_links.c.status == "active").values(status="replaced", replaced_at=now))
    conn.execute(upstream_links.insert().values(id=uuid.uuid4(), issuer=issuer, sub=sub, person_id=person_id,
                                                status="active", created_at=now, last_login_at=now))
    return action, person_id, linked_sub if action is LinkAction.REBIND else None

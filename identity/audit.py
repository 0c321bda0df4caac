"""Identity events on the tamper-evident audit trail (the same ``audit_log`` as the release engine).

Every login, token, failure and admin action is recorded. Kinds are dotted and PII-free
(``identity.login.passkey.succeeded``, ``identity.token.issued``, ``identity.client.registered``);
``actor`` says who acted (client_id and/or person_id, never a name), ``data`` carries ids and reason
codes only, never a secret, a token or a credential.

Pass ``conn`` to write in the use case's own transaction (one commit, STYLE.md #5); failures, which
have no transaction of their own, get a small one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from release_service.adapters.audit import SqlAuditLog


def record(
    kind: str,
    *,
    at: datetime,
    actor: dict[str, Any],
    subject: str | None = None,
    data: dict[str, Any] | None = None,
    conn: sa.Connection | None = None,
    engine: sa.Engine | None = None,
) -> None:
    """Append one identity event, in ``conn``'s transaction or (with ``engine``) in a new one."""
    if conn is not None:
        SqlAuditLog(conn).append(kind, actor=actor, subject=subject, data=data or {}, at=at)
        return
    if engine is None:
        raise ValueError("record() needs a connection or an engine")
    with engine.begin() as own:
        SqlAuditLog(own).append(kind, actor=actor, subject=subject, data=data or {}, at=at)


# ---- who acted, as one string (badge histories store it in a 100-character column) -------------------
# A machine client is its client_id; a person acting through a client (the admin console, issue 4) is
# "person:<person_id>@<client_id>", so a badge's history names the officer and the trail gets both ids.
PERSON_PREFIX = "person:"


def person_actor(person_id: str, client_id: str) -> str:
    return f"{PERSON_PREFIX}{person_id}@{client_id}"


def actor_fields(actor: str) -> dict[str, Any]:
    """The audit ``actor`` for a stored actor string: {client_id} or {person_id, client_id}."""
    if actor.startswith(PERSON_PREFIX) and "@" in actor:
        person_id, _, client_id = actor[len(PERSON_PREFIX):].partition("@")
        return {"person_id": person_id, "client_id": client_id}
    return {"client_id": actor}

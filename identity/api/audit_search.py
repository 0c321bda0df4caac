"""Audit trail search for port security (``GET /admin/v1/audit``, issue 4 "search the audit trail").

The trail is the release engine's ``audit_log`` (release_service/adapters/audit.py writes and seals
it); identity only reads it here, through ``search_audit``, one keyset-paged query: newest first,
``before`` is the last id of the previous page, so a page never shifts while new entries arrive.
Filters: ``actor`` (a person id or a client id: either member of the entry's actor), ``subject``,
``action`` (a kind, or a dotted prefix of kinds: ``identity.badge`` finds ``identity.badge.issued``)
and a time range. Each search is itself on the trail (``identity.admin.audit.searched``), with the
filters but not what they found, whoever searched: a person through the console or an admin client.

Each search is bounded: on PostgreSQL its statement may run ``QUAYGATE_AUDIT_SEARCH_TIMEOUT`` seconds
(``SET LOCAL statement_timeout``), and one cut off answers 422 ``search_too_broad``, asking for a
narrower time range or filter: a search holds a pooled connection while it runs, and a few broad ones on
a trail of tens of millions of entries would otherwise hold a replica's pool (review of the audit search,
finding 5). Indexes serve each filter (quaygate.schema: kind, subject, time, actor).

Who: admin clients and port security (``port_security_admin``) through the console, passkey login.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from quaygate.limits import UtcTime
from quaygate.schema import AUDIT_ACTOR_CLIENT_SQL, AUDIT_ACTOR_PERSON_SQL, audit_log
from release_service.api.problems import problem, problem_responses

from .admin import PORT_SECURITY_ROLE, AdminRefused, admin_caller, audit_read, require_role

log = logging.getLogger(__name__)

router = APIRouter(prefix="/admin/v1", tags=["identity", "identity admin"])

PAGE_MAX = 200
_ACTION = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
# PostgreSQL's SQLSTATE for a statement cancelled, by statement_timeout among others (query_canceled).
_QUERY_CANCELED = "57014"


@dataclass(frozen=True, slots=True)
class AuditQuery:
    actor: str | None = None
    subject: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None
    limit: int = 50


def search_audit(conn: sa.Connection, q: AuditQuery) -> tuple[list[dict[str, Any]], int | None]:
    """One page of entries matching ``q``, newest first, and the ``before`` of the next page (None at
    the end). Reads only; the chain columns come along so a reader can see what is sealed."""
    rows = conn.execute(audit_query(q)).all()
    items = [{"id": r.id, "at": r.at.isoformat(), "kind": r.kind, "actor": r.actor, "subject": r.subject,
              "data": r.data, "sealed": r.chain_seq is not None} for r in rows[:q.limit]]
    return items, (rows[q.limit - 1].id if len(rows) > q.limit else None)


def audit_query(q: AuditQuery) -> sa.Select[Any]:
    """The query of ``search_audit``: one more row than the page, to know whether another follows."""
    query = sa.select(audit_log.c.id, audit_log.c.at, audit_log.c.kind, audit_log.c.actor, audit_log.c.subject,
                      audit_log.c.data, audit_log.c.chain_seq)
    if q.actor:
        # The expressions of the actor indexes, literally (quaygate.schema); SQLite has ->> too (3.38).
        query = query.where(sa.or_(sa.literal_column(AUDIT_ACTOR_PERSON_SQL) == q.actor,
                                   sa.literal_column(AUDIT_ACTOR_CLIENT_SQL) == q.actor))
    if q.subject:
        query = query.where(audit_log.c.subject == q.subject)
    if q.action:
        query = query.where(sa.or_(audit_log.c.kind == q.action,
                                   audit_log.c.kind.startswith(q.action + ".", autoescape=True)))
    if q.since:
        query = query.where(audit_log.c.at >= q.since)
    if q.until:
        query = query.where(audit_log.c.at < q.until)
    if q.before is not None:
        query = query.where(audit_log.c.id < q.before)
    return query.order_by(audit_log.c.id.desc()).limit(q.limit + 1)


@router.get("/audit", operation_id="admin_search_audit", responses=problem_responses(401, 403, 422))
def search(request: Request,
           actor: str | None = Query(default=None, max_length=100),  # noqa: B008
           subject: str | None = Query(default=None, max_length=100),  # noqa: B008
           action: str | None = Query(default=None, max_length=80),  # noqa: B008
           since: UtcTime | None = Query(default=None, description="RFC 3339 with an offset, 1900 to 9000"),  # noqa: B008
           until: UtcTime | None = Query(default=None, description="RFC 3339 with an offset, 1900 to 9000"),  # noqa: B008
           before: int | None = Query(default=None, ge=1),  # noqa: B008
           limit: int = Query(default=50, ge=1, le=PAGE_MAX)) -> JSONResponse:  # noqa: B008
    """The audit trail, newest first, filtered by actor, subject, action and time range; paged by
    ``before`` (``next_before`` of the previous page)."""
    try:
        caller = require_role(admin_caller(request), PORT_SECURITY_ROLE)
    except AdminRefused as exc:
        return exc.response(request)
    action = action.strip() if action else None
    if action and not _ACTION.match(action):
        return problem(422, "invalid_action", "action is a dotted kind such as identity.badge.status_changed.",
                       instance=request.url.path)
    if since and until and since >= until:
        return problem(422, "invalid_range", "since must be before until.", instance=request.url.path)
    q = AuditQuery(actor=actor or None, subject=subject or None, action=action, since=since, until=until,
                   before=before, limit=limit)
    # Who searched what (ids and kinds are not personal data), before the answer is sent: a person through
    # the console or an admin client, whose other reads are not on the trail (audit_read).
    audit_read(request, caller, "identity.admin.audit.searched", clients_too=True,
               data={"actor": q.actor, "subject": q.subject, "action": q.action,
                     "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
                     "before": before})
    container = request.app.state.container
    try:
        with container.engine.connect() as conn:
            bound_time(conn, container.settings.audit_search_timeout)
            items, next_before = search_audit(conn, q)
    except sa.exc.OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != _QUERY_CANCELED:
            raise
        log.info("identity.admin.audit.search.timed_out")
        return problem(422, "search_too_broad", "The search took too long: narrow it by time (since and until), "
                       "action or subject.", instance=request.url.path)
    return JSONResponse({"items": items, "next_before": next_before})


def bound_time(conn: sa.Connection, seconds: float) -> None:
    """On PostgreSQL, the rest of ``conn``'s transaction may run ``seconds`` per statement, then the
    server cancels it (SQLSTATE 57014). SET LOCAL: it ends with the transaction, never carried back
    into the pool. SQLite: nothing (it has no such setting)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.set_config("statement_timeout", f"{max(1, round(seconds * 1000))}ms", True)))

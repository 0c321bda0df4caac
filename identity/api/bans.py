"""The port-ban register's admin API (``/admin/v1/bans``, issue 4): import a feed, read the alerts.

- ``POST /admin/v1/bans/feeds``: the body is one signed feed file (as ``quaygate bans load`` takes);
  it goes through the same atomic loader (identity.bans.loader), so a bad, unsigned, tampered,
  replayed or stale feed is refused with the loader's message and the list in force stays as it was.
- ``GET /admin/v1/bans/alerts``: the ``screening.ban.nomination_alert`` entries of the audit trail
  (an open nomination of a driver a new ban hit), newest first; a console officer's listing is itself
  on the trail (``identity.admin.ban_alerts.listed``).

Callers: an admin client, or port security / the badge office through the admin console
(``admin_caller``: role and passkey login checked at the top of each route). Each import is on the
audit trail with the caller as actor (``identity.admin.ban_feed.imported`` / ``.refused``), besides
the loader's own ``screening.ban.feed_*`` entries.

A feed may be 64 MiB: its caller is checked on the headers before any of it is read (``admits``, on a
worker thread: the token's revocation and a DPoP proof's claim may wait for Redis, and the event loop
serves every gate lane), the whole feed must come within ``FEED_BODY_SECONDS`` (else 408
``body_timeout``, nothing loaded), and the caller's token is checked again once it is in (expired or
revoked meanwhile: 401, nothing loaded).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from quaygate.routing import AdmitFirst, read_within
from quaygate.schema import audit_log
from release_service.api.problems import problem, problem_responses

from .. import audit
from ..bans.feed import MAX_FEED_BYTES, register_key
from ..bans.loader import LoadResult, load_feed
from ..domain.bans import FeedRefused
from .admin import AdminCaller, AdminRefused, admin_caller, admits, audit_read, caller_of

router = APIRouter(prefix="/admin/v1/bans", tags=["port bans admin"], route_class=AdmitFirst)

# The largest body of all (MAX_FEED_BYTES, 64 MiB): about 4.5 Mbit/s at least, from a register's office.
FEED_BODY_SECONDS = 120.0

ALERT_KIND = "screening.ban.nomination_alert"
_FEED_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "description": "a signed feed (JWS JSON serialization)"}},
    "application/jose": {"schema": {"type": "string", "description": "a signed feed (JWS compact)"}}}}}


def _load(request: Request, raw: bytes, caller: AdminCaller) -> LoadResult:
    settings = request.app.state.container.settings
    engine: sa.Engine = request.app.state.container.engine
    now = request.app.state.container.clock.now()
    key = register_key(settings.ban_register_jwk, settings.ban_register_jwk_path)
    try:
        result = load_feed(engine, raw, key=key, pepper=settings.pepper_bytes(), now=now,
                           max_feed_age=timedelta(seconds=settings.ban_feed_max_age), source="upload")
    except FeedRefused as refused:
        audit.record("identity.admin.ban_feed.refused", at=now, actor=caller.audit_actor, engine=engine,
                     data={"reason": refused.code.value})
        raise
    audit.record("identity.admin.ban_feed.imported", at=now, actor=caller.audit_actor, engine=engine,
                 data={"status": result.status, "register": result.register, "kind": result.kind,
                       "sequence": result.sequence, "added": result.added, "lifted": result.lifted})
    return result


@router.post("/feeds", operation_id="admin_import_ban_feed", openapi_extra=_FEED_BODY, max_body_size=MAX_FEED_BYTES,
             responses=problem_responses(401, 403, 413, 422, 503))
@admits(admin_caller)
@read_within(FEED_BODY_SECONDS)
async def import_feed(request: Request) -> JSONResponse:
    """Load one signed ban feed (snapshot or change set); refused feeds change nothing."""
    try:
        # Admitted before the body was read (``admits``); checked here only if it was not, on a worker
        # thread: the token's revocation and a DPoP proof's claim may wait for Redis.
        caller = await run_in_threadpool(caller_of, request)
    except AdminRefused as exc:
        return exc.response(request)
    # Read already (AdmitFirst), from memory: at most MAX_FEED_BYTES, the route's body limit (413).
    raw = await request.body()
    try:
        result = await run_in_threadpool(_load, request, raw, caller)
    except FeedRefused as refused:
        return problem(422, refused.code.value, refused.message, instance=request.url.path)
    except ValueError as exc:  # no register key configured (register_key)
        return problem(503, "ban_register_not_configured", str(exc), instance=request.url.path)
    return JSONResponse({"status": result.status, "register": result.register, "kind": result.kind,
                         "sequence": result.sequence, "bans_in_force": result.bans_in_force, "added": result.added,
                         "lifted": result.lifted, "badges_deactivated": result.badges_deactivated,
                         "nomination_alerts": result.nomination_alerts, "message": result.describe()})


@router.get("/alerts", operation_id="admin_list_ban_alerts", responses=problem_responses(401, 403))
def list_alerts(request: Request, limit: int = 100) -> JSONResponse:
    """Open nominations of drivers hit by a new ban, newest first. The listing is audited, not what it
    showed (identity.api.admin ``audit_read``)."""
    try:
        caller = admin_caller(request)
        audit_read(request, caller, "identity.admin.ban_alerts.listed", data={"limit": limit})
    except AdminRefused as exc:
        return exc.response(request)
    engine: sa.Engine = request.app.state.container.engine
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log.c.at, audit_log.c.data).where(audit_log.c.kind == ALERT_KIND)
                            .order_by(audit_log.c.id.desc()).limit(max(1, min(limit, 500)))).all()
    return JSONResponse({"items": [_alert(r.at, r.data) for r in rows]})


def _alert(at: Any, data: dict[str, Any]) -> dict[str, Any]:
    keys = ("release_id", "driver_person_id", "holder_organisation_id", "ban_reference", "screening")
    return {"at": at.isoformat(), **{k: data.get(k) for k in keys}}

"""The nominated driver answers a nomination: accept, or refuse with a reason from a closed list.

The driver's answer is kept on the right (``Nomination.response``, stored in the releases row, so the
gate's conditional gate-in UPDATE can refuse a refused nomination atomically) and recorded as an event
(``release.nomination.accepted`` / ``.refused``) with a receipt, on the audit trail and to webhooks.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from release_service.domain.parties import Actor
from release_service.domain.release import RefusalReason, ReleaseRight
from release_service.ports import UnitOfWork

from .common import IfMatch, Receipt, load, persist


def accept(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, now: datetime, *,
           if_match: IfMatch | None = None) -> tuple[ReleaseRight, Receipt]:
    right = load(uow, release_id, actor, if_match)
    right.accept_nomination(by=actor, now=now)
    return right, persist(uow, right)


def refuse(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, reason: RefusalReason | None,
           now: datetime, *, if_match: IfMatch | None = None) -> tuple[ReleaseRight, Receipt]:
    right = load(uow, release_id, actor, if_match)
    right.refuse_nomination(by=actor, now=now, reason=reason)
    return right, persist(uow, right)

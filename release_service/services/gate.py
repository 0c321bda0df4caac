"""Gate moves on a right: gate-in (once), gate-out, and the terminal's audited override.

The full gate decision (badge, plate, face, screening) is issue 5; these are the state changes it
commits.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime

from release_service.domain import gate as g
from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import Actor
from release_service.domain.release import ReleaseRight
from release_service.ports import AuditLog, UnitOfWork

from .common import Receipt, acting_organisation_active, load, persist, receipt, record_events

log = logging.getLogger(__name__)


def gate_in(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, decision_id: uuid.UUID,
            now: datetime) -> tuple[ReleaseRight, Receipt]:
    """Use the right once: the conditional update picks one winner among racing gates. Read under its lock:
    the transfer the gate-in cancels is written as read (a decline or a withdrawal committed after an
    unlocked read would be rewritten ``cancelled``; review 115)."""
    right = uow.releases.get(release_id, for_update=True)
    if right is None:
        raise DomainError(ErrorCode.NOT_FOUND, "No such release right.")
    expected = right.state
    right.gate_in(by=actor, now=now, decision_id=decision_id)
    events = uow.releases.claim_gate_in(right, expected=expected)
    if not events:
        now_stored = uow.releases.get(release_id)
        if now_stored is not None and now_stored.state is expected:
            # Same state, so the loser is not another gate: the driver's refusal committed in between.
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION,
                              "The nominated driver refused this pickup; the transport operator must nominate again.")
        raise DomainError(ErrorCode.ALREADY_USED, "This right has already been used at the gate.")
    record_events(uow, right, events)
    return right, receipt(right, events[-1])


def gate_out(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, decision_id: uuid.UUID,
             now: datetime) -> tuple[ReleaseRight, Receipt]:
    right = load(uow, release_id, actor)
    right.gate_out(by=actor, now=now, decision_id=decision_id)
    return right, persist(uow, right)


def override(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, reason: str, decision_id: uuid.UUID,
             decided_at: datetime, judged: Sequence[str | None] | None, now: datetime,
             set_aside: Sequence[str] = (), face: Mapping[str, object] | None = None,
             officer: str | None = None) -> tuple[ReleaseRight, Receipt]:
    """A terminal's override of a refused gate-in decided at ``decided_at`` on the nomination ``judged``,
    setting aside ``set_aside``; ``face``: the face evidence that decision weighed, as its row keeps it;
    ``officer``: who let the truck in, as the gate names him (``ReleaseRight.override_gate_in``)."""
    right = load(uow, release_id, actor)
    # The desk's own word against the rules' refusal: a terminal organisation that port security has
    # deactivated gives it no more (review 77). Gate-in and gate-out above apply the rules, not its word.
    acting_organisation_active(uow, actor)
    right.require_overridable(now)
    # The right's container as it is now, read in this transaction after the right's lock (review 149): a
    # customs hold on another live right of it holds this one too, and the service's own face_mismatch on the
    # right stands (read with it there, ``FACE_AGAINST``; the lock's read leaves it out), whether they came
    # before or after the refused decision.
    beside = [g.RightFacts.from_right(r) for r in uow.releases.of_containers([right.container.value])]
    own = next(r for r in beside if r.id == right.id)  # locked and nominated: it is there
    g.require_overridable_right(own, beside, decided_at=decided_at, face=face, now=now)
    assert right.nomination is not None  # required above
    right.require_releasable_to_driver(
        decided_at, judged, uow.screening.screen(right.nomination.driver_person_id, terminal=right.terminal, now=now))
    right.override_gate_in(by=actor, now=now, reason=reason, decision_id=decision_id, set_aside=set_aside,
                           officer=officer)
    done = persist(uow, right)
    override_alarm(uow.audit, actor, right, decision_id, set_aside, reason, now, officer=officer)
    return right, done


# Port security's alarm (review 142): an override that set aside a check of who is at the gate (the badge,
# the driver, the face) let a person in on the desk's word alone. Beside the outbox alarm
# (gate_passes.OUTBOX_ALARM_EVENT) on the audit trail, logged as a warning; it refuses nothing.
OVERRIDE_ALARM_EVENT = "release.gate_override_alarm"


def override_alarm(audit: AuditLog, actor: Actor, right: ReleaseRight, decision_id: uuid.UUID,
                   set_aside: Sequence[str], reason: str, at: datetime, *, officer: str | None = None) -> None:
    """Raise port security's alarm when the override of ``decision_id`` set aside an identity check
    (``gate.identity_set_aside``), naming the officer who did (audit trail only); nothing otherwise."""
    identity = g.identity_set_aside(set_aside)
    if not identity:
        return
    data = {"decision_id": str(decision_id), "release_id": str(right.id), "terminal": right.terminal,
            "client_id": actor.client_id, "set_aside": list(set_aside), "identity_checks": identity,
            "reason": reason.strip(), "officer": officer}
    log.warning("release.gate.override_alarm", extra={"fields": data})
    audit.append(OVERRIDE_ALARM_EVENT, actor=actor.as_dict(), subject=str(right.id), data=data, at=at)

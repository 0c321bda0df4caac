"""The officer's override: a refused truck let in through the adapter, and its right counted as used here.

    officer ──(http_source: POST /officer/override/{lane}, an officer's credential)──► OverrideDesk.override
        the lane's request, answered by the service and refused (outbox) ──► POST /gate/v1/overrides
            201: the service recorded the gate-in         ──► outbox.overridden: the override AND the use
            409 already_used (an earlier try, or a use)   ──► the use too, the officer told
            no answer, or one that does not judge it      ──► the use too, the officer told to try again
            any other refusal (final)                     ──► kept, no use, the service's word relayed
        the lane's request, refused OFFLINE on a gate pass (rule 6) ──► outbox.override_offline: the override,
            the use and its report, one transaction, sealed ──► the reconcile (offline.py) ──► the service

Rules:
1. An override is a gate-in (SPEC.md "A terminal may override a refusal only with a reason";
   release_service/services/verify.py ``override``): the right is used. The adapter counts it as used
   here as it counts an online commit (outbox.py rule 7, ``online_uses``): with its uplink cut before
   its passes show the gate-in, offline mode must not let the same right in again at one of its lanes
   on a pass fetched before the override (offline.py rule 6). An override sent to the service by
   anything but this adapter is seen here only when the passes show it (docs/gate-adapter.md).
2. Only a request of the lane named, answered by the service and refused, for a gate-in, with a right
   found, is sent: an offline decision's ``decision_id`` is the adapter's own, which no override at the
   service can name (rule 6 instead). The service judges the rest (the reasons, the right as it is now,
   the person), and its refusal is relayed with its code.
3. When in doubt, a use (fail closed): the override at the service is not idempotent (a second try
   answers 409 ``already_used``), so an answer lost on the way (no answer after the client's retries, a
   429 or a refused token after a try that may have landed) may hide a gate-in. Only a final refusal
   other than ``already_used`` says the right was not let in. A use noted wrongly costs little: offline
   mode refuses that right (``already_used``), never lets one in, and only while the outbox keeps the
   use (``keep_days``) and a pass for the right is held.
4. Every override asked is kept in the outbox (``overrides``: who, why, what the service said) and logged
   ``gate.lane.overridden`` (or ``gate.lane.override_refused.<code>``, ``gate.lane.override_unanswered``)
   with the officer's name. The service knows only this adapter's gate client: the reason it keeps
   carries the officer's name and the lane.
5. The override opens nothing: the officer lets the truck through by hand, as after a latch's clear
   (lane.py rule 9), and clears the lane's latch as ever. Errors carry codes (``code``), never HTTP
   statuses: the HTTP source maps them.
6. An officer's override of a gate-in refused OFFLINE (review 121, finding 2: before, the desk refused it,
   the officer let the truck in by hand unaudited, no use was noted, and a second truck on the same badge
   and plate was allowed offline at another lane). Only a refusal judged on a gate pass (``basis`` pass,
   a right found) for reasons a person at the desk may set aside (domain/gate.py ``OVERRIDABLE``, as
   online) is taken. ``Outbox.override_offline`` keeps it (``overrides``, outcome ``offline``) and queues
   it as an offline decision of its own (``override:<id>``, an ``in`` use, sealed in the chain: offline
   mode refuses a second truck, and deleting it taints the outbox), with its report: the refused
   decision's report and ``override`` (id, officer, reason, the decision set aside), in one transaction;
   a right already used here is refused (a second override, or a truck let in since). The officer is
   told it is recorded locally and will be reconciled; the service records it as an audited override
   (``release.gate_override``), or flags it (release_service/services/gate_passes.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

from release_service.domain.gate import OVERRIDABLE as _OVERRIDABLE

from .client import ServiceUnavailable, VerifyClient, VerifyRefused
from .outbox import Answered, Outbox

log = logging.getLogger("gate_adapters.lane")

OVERRIDES_PATH = "/gate/v1/overrides"
MAX_REASON = 400  # characters the officer writes; the service takes 500, with the officer's name and lane
SERVICE_REASON = 500  # release_service/api/gate.py OverrideRequest.reason
# What a person at the desk may set aside, online (the service judges) or offline (here, and again at the
# reconcile): domain/gate.py, the same rule.
OVERRIDABLE = frozenset(r.value for r in _OVERRIDABLE)


class OverrideError(Exception):
    """An override not done, or not known to be done; ``code`` is stable (the HTTP source's problem code)."""

    code = "override_error"


class UnknownLane(OverrideError):
    code = "unknown_lane"


class UnknownRequest(OverrideError):
    code = "unknown_request"


class NotOverridable(OverrideError):
    """Rule 2: nothing the service could override (pending, decided offline, allowed, a gate-out, no right)."""

    code = "not_overridable"


class OverrideRefused(OverrideError):
    """Rule 2: the service's final refusal, its status and code relayed (``already_used``: counted as used)."""

    def __init__(self, refused: VerifyRefused, *, used: bool) -> None:
        super().__init__(f"the service refused the override ({refused.status} {refused.code}): {refused.detail}"
                         + (" The right counts as used at this adapter." if used else ""))
        self.code, self.status, self.used = refused.code, refused.status, used


class OverrideUnanswered(OverrideError):
    """Rule 3: the service did not judge the override (no answer, or it refused this adapter): it may have
    recorded an earlier try, so the right counts as used here."""

    code = "service_unavailable"


@dataclass(frozen=True, slots=True)
class Overridden:
    """An override the service recorded (or, ``offline``, this adapter recorded for the reconcile, rule 6):
    the right let in, and who asked."""

    lane: str
    request_id: str
    decision_id: str
    release_id: str
    state: str
    officer: str
    offline: bool = False

    def as_json(self) -> dict[str, Any]:
        out = {"lane": self.lane, "request_id": self.request_id, "decision_id": self.decision_id,
               "release_id": self.release_id, "state": self.state, "overridden_by": self.officer,
               "counted_as_used": True}
        if self.offline:
            out |= {"recorded": "locally", "note": "decided offline: the override is recorded here and will be "
                                                   "reconciled with the service when it can be reached"}
        return out


def _uuid(value: Any) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


class OverrideDesk:
    """Sends an officer's override of a lane's refused truck to the service, and notes the use (rules 1 to 4)."""

    def __init__(self, client: VerifyClient, outbox: Outbox, lanes: Iterable[str]) -> None:
        self.client, self.outbox = client, outbox
        self.lanes = frozenset(lanes)

    def override(self, lane: str, request_id: str, reason: str, *, by: str) -> Overridden:
        """Let in the truck of ``request_id`` at ``lane`` (refused by the service), for ``reason``, asked by
        the officer ``by``. ``OverrideError`` when not done; ``ValueError`` for a reason not given or too long."""
        if lane not in self.lanes:
            raise UnknownLane(f"no lane {lane!r} here")
        reason = reason.strip()
        if not reason or len(reason) > MAX_REASON:
            raise ValueError(f"an override needs a reason, at most {MAX_REASON} characters")
        answered = self.outbox.answered(request_id)
        if answered is None or answered.lane != lane:
            if answered is None and any(p.request_id == request_id for p in self.outbox.pending(lane)):
                raise NotOverridable("the service has not answered this request yet: nothing to override")
            raise UnknownRequest(f"no request {request_id!r} at lane {lane}")
        if "offline" in answered.response:
            return self._offline(answered, reason, by)
        decision_id, release_id = self._refused_gate_in(answered)
        body = {"decision_id": decision_id, "reason": f"{reason} (officer {by}, lane {lane})"[:SERVICE_REASON]}
        try:
            answer = self.client.call("POST", OVERRIDES_PATH, body)
        except VerifyRefused as exc:
            if not exc.final:
                self._unanswered(answered, decision_id, release_id, by, reason, exc)
            used = exc.code == "already_used"  # rule 3: overridden already (an answer lost), or used since
            self.outbox.overridden(answered, decision_id=decision_id, release_id=release_id, officer=by,
                                   reason=reason, outcome="already_used" if used else "refused",
                                   answer=exc.as_response(), used=used)
            log.warning("gate.lane.override_refused.%s", exc.code, extra={
                "lane": lane, "request_id": request_id, "decision_id": decision_id, "officer": by, "used": used})
            raise OverrideRefused(exc, used=used) from None
        except ServiceUnavailable as exc:
            self._unanswered(answered, decision_id, release_id, by, reason, exc)
        let_in = _uuid(answer.get("release_id")) or release_id
        self.outbox.overridden(answered, decision_id=decision_id, release_id=let_in, officer=by, reason=reason,
                               outcome="overridden", answer=answer, used=True)
        log.warning("gate.lane.overridden: lane %s request %s let in by %s", lane, request_id, by, extra={
            "lane": lane, "request_id": request_id, "decision_id": decision_id, "release_id": let_in, "officer": by})
        return Overridden(lane, request_id, decision_id, let_in, str(answer.get("state", "")), by)

    def _refused_gate_in(self, answered: Answered) -> tuple[str, str]:
        """Rule 2: the service's decision id and the right's id of a refused gate-in, else NotOverridable."""
        response = answered.response
        if "error" in response:
            raise NotOverridable("the service refused the request itself: there is no decision to override")
        if response.get("decision") not in ("deny", "review"):
            raise NotOverridable("the service did not refuse this truck: nothing to override")
        if response.get("direction") != "in":
            raise NotOverridable("only a refused gate-in can be overridden")
        decision_id, release_id = _uuid(response.get("decision_id")), _uuid(response.get("release_id"))
        if decision_id is None or release_id is None:
            raise NotOverridable("this decision found no release right: there is nothing to let in")
        return decision_id, release_id

    def _offline(self, answered: Answered, reason: str, by: str) -> Overridden:
        """Rule 6: an offline refusal, overridden here: noted as a use and queued for the reconcile."""
        response = answered.response
        if response.get("decision") not in ("deny", "review"):
            raise NotOverridable("this truck was not refused: nothing to override")
        if response.get("direction") != "in":
            raise NotOverridable("only a refused gate-in can be overridden")
        decision_id, release_id = _uuid(response.get("decision_id")), _uuid(response.get("release_id"))
        report = self.outbox.offline_report(answered.request_id)
        if (decision_id is None or release_id is None or report is None or not report.get("gate_pass")
                or (response.get("offline") or {}).get("basis") != "pass"):
            raise NotOverridable("decided offline without a gate pass for a right: nothing here can let the truck "
                                 "in on the record; hold it until the service can be reached")
        reasons = [str(r) for r in response.get("reasons") or ()]
        hard = [r for r in reasons if r not in OVERRIDABLE]
        if not reasons or hard:
            raise NotOverridable(f"a terminal cannot override {', '.join(hard) or 'this decision'}: that is not "
                                 "the gate's to set aside")
        override_id = str(uuid.uuid4())
        report = {**report, "override": {"id": override_id, "officer": by[:100], "reason": reason,
                                         "decision_id": decision_id}}
        report.pop("outbox", None)  # its place is the chain's to give, at the reconcile
        if not self.outbox.override_offline(answered, key=f"override:{override_id}", decision_id=decision_id,
                                            release_id=release_id, officer=by, reason=reason, report=report):
            log.warning("gate.lane.override_refused.already_used", extra={
                "lane": answered.lane, "request_id": answered.request_id, "decision_id": decision_id, "officer": by})
            raise NotOverridable("this right was used here already (let in, or overridden, at a lane of this "
                                 "adapter): nothing more to let in on it")
        log.warning("gate.lane.overridden_offline: lane %s request %s let in by %s, to be reconciled",
                    answered.lane, answered.request_id, by, extra={
                        "lane": answered.lane, "request_id": answered.request_id, "decision_id": decision_id,
                        "release_id": release_id, "officer": by, "override_id": override_id})
        return Overridden(answered.lane, answered.request_id, decision_id, release_id, "recorded_locally", by,
                          offline=True)

    def _unanswered(self, answered: Answered, decision_id: str, release_id: str, by: str, reason: str,
                    exc: Exception) -> NoReturn:
        """Rule 3: not judged, perhaps recorded: a use here, and the officer told to ask again."""
        self.outbox.overridden(answered, decision_id=decision_id, release_id=release_id, officer=by, reason=reason,
                               outcome="unanswered", answer=None, used=True)
        log.error("gate.lane.override_unanswered", extra={"lane": answered.lane, "request_id": answered.request_id,
                                                          "decision_id": decision_id, "officer": by,
                                                          "reason": str(exc)})
        raise OverrideUnanswered(f"the service did not answer the override ({exc}); the right counts as used at "
                                 f"this adapter: ask again to know whether it was recorded")

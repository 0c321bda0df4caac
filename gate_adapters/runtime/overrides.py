"""The officer's override: a refused truck let in through the adapter, and its right counted as used here.

    officer ──(http_source: POST /officer/override/{lane}, an officer's credential)──► OverrideDesk.override
        the lane's request, answered by the service and refused (outbox) ──► POST /gate/v1/overrides
            201: the service recorded the gate-in         ──► outbox.note_use, then outbox.overridden
            409 already_used (an earlier try, or a use)   ──► the use too, the officer told
            no answer, or one that does not judge it      ──► the use too, the officer told to try again
            any other refusal (final)                     ──► kept, no use, the service's word relayed
        the lane's request, refused OFFLINE (rule 7), under an hour old (rule 6, the clocks kept here; else
        refused, nothing sent) ──► POST /gate/v1/verify again (commit, its own request id)
            allowed and committed: the service let it in  ──► the use, the officer told (no override needed)
            refused: a decision of the service's           ──► POST /gate/v1/overrides, as above
            no answer, on a gate pass, under an hour old (rule 6) ──► outbox.override_offline: the override,
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
   service can name (rules 6 and 7 instead). The service judges the rest (the reasons, the right as it is now,
   the person), and its refusal is relayed with its code.
3. When in doubt, a use (fail closed): the override at the service is not idempotent (a second try
   answers 409 ``already_used``), so an answer lost on the way (no answer after the client's retries, a
   429 or a refused token after a try that may have landed) may hide a gate-in. Only a final refusal
   other than ``already_used`` says the right was not let in. A use noted wrongly costs little: offline
   mode refuses that right (``already_used``), never lets one in, and only while the outbox keeps the
   use (``keep_days``) and a pass for the right is held.
4. Every override asked is kept in the outbox (``overrides``: who, why, what the service said) and logged
   ``gate.lane.overridden`` (or ``gate.lane.override_refused.<code>``, ``gate.lane.override_unanswered``)
   with the officer's name. The service knows only this adapter's gate client: the override names the
   officer beside the reason (``officer``), never in it: the service shows him to the terminal and port
   security only, where the reason goes to the line, the holder's webhook and the driver (review 171,
   finding 2: the reason carried "(officer <name>, lane <lane>)" to them all). The lane is the refused
   decision's, which the service keeps.
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
   Only while the service cannot be reached (rule 7), and only within ``OVERRIDE_WITHIN_SECONDS`` (an hour,
   as online: domain/gate.py) of the refusal, measured on the larger of the wall and monotonic clocks'
   elapsed times (outbox.py rule 11; a wall clock reading earlier than the refusal tells no age: refused).
   The report carries ``overridden_at`` (the refusal's ``decided_at`` plus that time, on the same clock;
   sealed with the rest): the service judges the badge, the person and the right then, and flags an
   override later than the hour (review 124, finding 2: before, any refusal kept ``keep_days`` could be
   set aside hours later, judged as of the refusal, a ban or block since unseen).
   A wall clock reading earlier than a wall time this adapter already sealed or saw (the latest stamp in
   the outbox, outbox.py rule 11, and the pass store's time seen, offline.py rule 3), by more than
   ``CLOCK_SLACK``, tells no age either: refused as one earlier than the refusal (review 126, finding 2:
   after a restart the monotonic clock counts from the new start only, so with the wall clock wound back to
   minutes after an hours-old refusal, its override was taken and judged as of then, a ban since unseen).
7. A refusal decided offline is overridden at the service whenever it answers (review 124, finding 2:
   before, the desk recorded it locally even with the uplink back, and a driver banned since was let in
   and reconciled clean). The service never heard of the adapter's own decision, so the desk verifies the
   truck again (the refused request's body, ``mode`` commit, under a request id derived from the refused
   one: asking again re-sends it, and the service answers it the same, never committing twice) and then
   acts on the service's answer as on any online decision: an allow it committed is the truck let in
   (the use noted, no override needed); a refusal is overridden through ``/gate/v1/overrides`` (rules 2
   to 4: a ban, a driver mismatch, a decision not the desk's to set aside is the service's final refusal,
   relayed). No answer (``ServiceUnavailable``): rule 6. A verify the service did not judge (401, 403,
   429) or that went unanswered may have been committed: as rule 3, the right then counts as used here
   unless the local override (rule 6) records the use itself.
   The hour of rule 6 holds here too, on the same clocks, checked before the truck is verified again
   (review 162, finding 1: before, it was checked on the local path alone; a refusal hours old, the truck
   long gone, was verified again and overridden, or let in on the service's allow as a plain gate-in, up to
   the service's 24 h bound on a read's age, where online the service refuses an override that late).
   Older, or of an age not to be told: refused as on the local path, nothing sent, so no use to note.
8. Nothing the adapter does after the service was asked may lose a use it may have made (review 162,
   finding 2: before, the reason was only stripped and its length checked; one with a lone surrogate let
   the service record the gate-in, then failed the outbox's one write of the override and the use, and the
   officer was told 400 payload_refused: no use noted, a second truck let in offline). The reason is
   checked before anything is sent, as the service checks it (``storable.text``, multiline: no control
   character but tab and line breaks, no lone surrogate; at most ``MAX_REASON``): else ``ReasonRefused``.
   After the service was asked, the use is noted first, a write of its own (``Outbox.note_use``), then the
   override's record; a write that fails (the disk, say), or a local override that fails after a verify that
   went unanswered, is logged ``gate.lane.override_unrecorded`` and told as ``OverrideUnrecorded`` (500).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from release_service.domain import storable
from release_service.domain.gate import OVERRIDE_WITHIN_SECONDS, not_overridable

from .client import ServiceUnavailable, VerifyClient, VerifyRefused
from .offline import CLOCK_SLACK, PassStore
from .outbox import Answered, Outbox

log = logging.getLogger("gate_adapters.lane")

OVERRIDES_PATH = "/gate/v1/overrides"
VERIFY_PATH = "/gate/v1/verify"
# Rule 7: the request id of a refused truck verified again at the desk, derived from the refused one.
VERIFY_AGAIN = uuid.UUID("5f0c7a52-4f8e-4d0b-9a8e-2f6d1c3b7e41")
MAX_REASON = 400  # characters the officer writes (the service takes 500)
SERVICE_REASON = 500  # release_service/api/gate.py OverrideRequest.reason
SERVICE_OFFICER = 100  # release_service/api/gate.py OverrideRequest.officer: one line, printable


class OverrideError(Exception):
    """An override not done, or not known to be done; ``code`` is stable (the HTTP source's problem code)."""

    code = "override_error"


class UnknownLane(OverrideError):
    code = "unknown_lane"


class ReasonRefused(OverrideError, ValueError):
    """Rule 8: a reason not given, or one the service would not keep (checked before anything is sent)."""

    code = "payload_refused"


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


class OverrideUnrecorded(OverrideError):
    """Rule 8: the service was asked (and may have let the truck in), then this adapter failed to keep the
    override's record (its disk, say): logged; the use was noted first, unless that write failed too."""

    code = "override_unrecorded"

    def __init__(self, said: str, *, used: bool, noted: bool) -> None:
        told = (" The right counts as used at this adapter." if noted else
                " Nor could the right be counted as used here: offline, this adapter may let it in again."
                if used else "")
        super().__init__(f"{said}; this adapter could not keep the override's record (see its log, "
                         f"gate.lane.override_unrecorded).{told}")
        self.used, self.noted = used, noted


# Rule 8: what the service said, for an officer told the record of it could not be kept.
SAID = {"overridden": "the service let the truck in (the override recorded)",
        "allowed": "verified again, the service let the truck in itself",
        "already_used": "the service says the right is used already",
        "refused": "the service refused",
        "unanswered": "the service did not answer (it may have let the truck in)"}


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
    allowed: bool = False  # rule 7: verified again, the service let the truck in itself

    def as_json(self) -> dict[str, Any]:
        out = {"lane": self.lane, "request_id": self.request_id, "decision_id": self.decision_id,
               "release_id": self.release_id, "state": self.state, "overridden_by": self.officer,
               "counted_as_used": True}
        if self.offline:
            out |= {"recorded": "locally", "note": "decided offline: the override is recorded here and will be "
                                                   "reconciled with the service when it can be reached"}
        if self.allowed:
            out |= {"note": "decided offline; verified again now, the service allowed the truck and recorded "
                            "its gate-in: no override was needed"}
        return out


def _officer(by: str) -> str:
    """The officer's name as the service keeps it (``SERVICE_OFFICER``): what it would refuse (a control
    character, a lone surrogate) left out, so that his name never costs an override; empty when none is
    left."""
    return storable.UNPRINTABLE.sub("", by).strip()[:SERVICE_OFFICER].strip()


def _uuid(value: Any) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


class OverrideDesk:
    """Sends an officer's override of a lane's refused truck to the service, and notes the use (rules 1 to 4).
    ``store``: offline mode's pass store, whose time seen (kept across restarts) bounds the wall clock (rule 6)."""

    def __init__(self, client: VerifyClient, outbox: Outbox, lanes: Iterable[str], *,
                 store: PassStore | None = None) -> None:
        self.client, self.outbox, self.store = client, outbox, store
        self.lanes = frozenset(lanes)

    def override(self, lane: str, request_id: str, reason: str, *, by: str) -> Overridden:
        """Let in the truck of ``request_id`` at ``lane`` (refused by the service), for ``reason``, asked by
        the officer ``by``. ``OverrideError`` when not done (``ReasonRefused``, a ``ValueError`` too, for a
        reason not given or one the service would not keep: before anything is sent, rule 8)."""
        if lane not in self.lanes:
            raise UnknownLane(f"no lane {lane!r} here")
        reason = reason.strip()
        if not reason:
            raise ReasonRefused(f"an override needs a reason, at most {MAX_REASON} characters")
        try:  # as the service checks it (release_service/api/gate.py OverrideRequest.reason: Prose)
            storable.text(reason, max_length=MAX_REASON, multiline=True)
        except ValueError as exc:
            raise ReasonRefused(f"the reason: {exc}") from None
        answered = self.outbox.answered(request_id)
        if answered is None or answered.lane != lane:
            if answered is None and any(p.request_id == request_id for p in self.outbox.pending(lane)):
                raise NotOverridable("the service has not answered this request yet: nothing to override")
            raise UnknownRequest(f"no request {request_id!r} at lane {lane}")
        if "offline" in answered.response:
            return self._offline(answered, reason, by)
        decision_id, release_id = self._refused_gate_in(answered)
        return self._send(answered, decision_id, release_id, reason, by)

    def _send(self, answered: Answered, decision_id: str, release_id: str, reason: str, by: str) -> Overridden:
        """Rules 2 to 4: the override of the service's refused decision ``decision_id``, for ``answered``."""
        lane, request_id = answered.lane, answered.request_id
        body = {"decision_id": decision_id, "reason": reason[:SERVICE_REASON]}
        if officer := _officer(by):
            body["officer"] = officer
        try:
            answer = self.client.call("POST", OVERRIDES_PATH, body)
        except VerifyRefused as exc:
            if not exc.final:
                self._unanswered(answered, decision_id, release_id, by, reason, exc)
            used = exc.code == "already_used"  # rule 3: overridden already (an answer lost), or used since
            self._keep(answered, decision_id=decision_id, release_id=release_id, by=by, reason=reason,
                       outcome="already_used" if used else "refused", answer=exc.as_response(), used=used)
            log.warning("gate.lane.override_refused.%s", exc.code, extra={
                "lane": lane, "request_id": request_id, "decision_id": decision_id, "officer": by, "used": used})
            raise OverrideRefused(exc, used=used) from None
        except ServiceUnavailable as exc:
            self._unanswered(answered, decision_id, release_id, by, reason, exc)
        let_in = _uuid(answer.get("release_id")) or release_id
        self._keep(answered, decision_id=decision_id, release_id=let_in, by=by, reason=reason,
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
        """Rules 6 and 7: an offline refusal: verified again and overridden at the service when it answers,
        else overridden here (noted as a use and queued for the reconcile)."""
        response = answered.response
        if response.get("decision") not in ("deny", "review"):
            raise NotOverridable("this truck was not refused: nothing to override")
        if response.get("direction") != "in":
            raise NotOverridable("only a refused gate-in can be overridden")
        decision_id, release_id = _uuid(response.get("decision_id")), _uuid(response.get("release_id"))
        report = self.outbox.offline_report(answered.request_id)
        if decision_id is None or release_id is None or report is None or not isinstance(report.get("request"),
                                                                                          Mapping):
            raise NotOverridable("decided offline without finding a release right: there is nothing to let in; "
                                 "have the truck read again at the lane")
        # Rule 7: the hour holds whichever way the override goes (review 162, finding 1): checked before the
        # truck is verified again, as the local path checks it (rule 6); the service bounds only the read's age.
        self._in_time(answered, report)
        try:
            answer = self._verify_again(answered, report, decision_id, release_id, reason, by)
        except ServiceUnavailable as exc:
            try:
                return self._locally(answered, report, decision_id, release_id, reason, by)
            except NotOverridable:
                # Rule 7: the verify sent may have been committed, its answer lost: a use (rule 3).
                self._note_unanswered(answered, decision_id, release_id, by, reason, exc)
                raise
            except Exception as failed:
                # Rule 8: the local record failed (its disk, say); the verify sent may have landed all the same.
                log.exception("gate.lane.override_unrecorded", extra={
                    "lane": answered.lane, "request_id": answered.request_id, "decision_id": decision_id,
                    "officer": by, "outcome": "offline"})
                self._note_unanswered(answered, decision_id, release_id, by, reason, exc)
                raise OverrideUnrecorded(SAID["unanswered"], used=True, noted=True) from failed
        return self._judged_again(answered, answer, reason, by)

    def _verify_again(self, answered: Answered, report: Mapping[str, Any], decision_id: str, release_id: str,
                      reason: str, by: str) -> dict[str, Any]:
        """Rule 7: the refused truck's request, verified again (commit): the service's answer.
        ``ServiceUnavailable`` when it did not answer."""
        body = {**report["request"], "mode": "commit",
                "request_id": str(uuid.uuid5(VERIFY_AGAIN, answered.request_id))}
        try:
            return self.client.call("POST", VERIFY_PATH, body)
        except VerifyRefused as exc:
            if not exc.final:
                self._unanswered(answered, decision_id, release_id, by, reason, exc)
            self._keep(answered, decision_id=decision_id, release_id=release_id, by=by, reason=reason,
                       outcome="refused", answer=exc.as_response(), used=False)
            log.warning("gate.lane.override_refused.%s", exc.code, extra={
                "lane": answered.lane, "request_id": answered.request_id, "decision_id": decision_id, "officer": by})
            raise OverrideRefused(exc, used=False) from None

    def _judged_again(self, answered: Answered, answer: dict[str, Any], reason: str, by: str) -> Overridden:
        """Rule 7: the service's own decision on the truck: its allow stands, its refusal is overridden."""
        again = Answered(str(answer.get("request_id", "")), answered.lane, answer)
        if answer.get("decision") == "allow":
            decision_id, release_id = _uuid(answer.get("decision_id")), _uuid(answer.get("release_id"))
            if answer.get("committed") is not True or decision_id is None or release_id is None:
                raise NotOverridable("verified again, the service allowed the truck but recorded no gate-in: "
                                     "have it read again at the lane")
            self._keep(answered, decision_id=decision_id, release_id=release_id, by=by, reason=reason,
                       outcome="allowed", answer=answer, used=True)
            log.warning("gate.lane.allowed_again: lane %s request %s verified again at the desk and allowed",
                        answered.lane, answered.request_id, extra={
                            "lane": answered.lane, "request_id": answered.request_id, "decision_id": decision_id,
                            "release_id": release_id, "officer": by})
            return Overridden(answered.lane, answered.request_id, decision_id, release_id, "gated_in", by,
                              allowed=True)
        decision_id, release_id = self._refused_gate_in(again)
        return self._send(answered, decision_id, release_id, reason, by)

    def _locally(self, answered: Answered, report: Mapping[str, Any], decision_id: str, release_id: str,
                 reason: str, by: str) -> Overridden:
        """Rule 6: the service unreachable: overridden here, noted as a use and queued for the reconcile."""
        response = answered.response
        if not report.get("gate_pass") or (response.get("offline") or {}).get("basis") != "pass":
            raise NotOverridable("decided offline without a gate pass for a right: nothing here can let the truck "
                                 "in on the record; hold it until the service can be reached")
        reasons = [str(r) for r in response.get("reasons") or ()]
        # What a person at the desk may set aside: the service's one rule, on the face evidence weighed (offline
        # a capture is never compared, so only a local matcher's claim gives face_mismatch, which a desk may).
        face = report.get("face")
        hard = not_overridable(reasons, face=face if isinstance(face, dict) else None)
        if not reasons or hard:
            raise NotOverridable(f"a terminal cannot override {', '.join(hard) or 'this decision'}: that is not "
                                 "the gate's to set aside")
        overridden_at = self._in_time(answered, report)
        override_id = str(uuid.uuid4())
        report = {**report, "override": {"id": override_id, "officer": by[:100], "reason": reason,
                                         "decision_id": decision_id, "overridden_at": overridden_at.isoformat()}}
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

    def _in_time(self, answered: Answered, report: Mapping[str, Any]) -> datetime:
        """Rules 6 and 7: when the officer overrides, on the refusal's clock (its ``decided_at`` plus the time
        since, the larger of the wall and monotonic clocks' elapsed times, outbox.py rule 11); NotOverridable when
        the refusal is older than ``OVERRIDE_WITHIN_SECONDS``, or its age cannot be told (a wall clock behind
        the refusal, or behind a later time this adapter sealed or saw)."""
        elapsed = self.outbox.offline_elapsed(answered.request_id)
        try:
            decided_at = datetime.fromisoformat(str(report["decided_at"]))
        except (KeyError, ValueError):
            decided_at = None
        if elapsed is None or decided_at is None or decided_at.tzinfo is None:
            raise NotOverridable("this refusal's time is not known here: have the truck read again at the lane, "
                                 "or hold it until the service can be reached")
        wall, mono = elapsed
        behind = max(self._behind(), -wall)
        if behind > CLOCK_SLACK.total_seconds():
            # Wound back (NTP spoofed?): it cannot say how old the refusal is (offline.py rule 3). After a
            # restart the monotonic clock knows nothing older than the start: only the times kept tell.
            log.error("gate.lane.override_refused.clock_behind", extra={
                "lane": answered.lane, "request_id": answered.request_id, "behind_seconds": int(behind)})
            raise NotOverridable("this adapter's clock reads earlier than the refusal, or than a time it kept "
                                 "since: its age cannot be told; have the truck read again at the lane, or hold "
                                 "it until the service can be reached")
        age = max(wall, mono, 0.0)
        if age > OVERRIDE_WITHIN_SECONDS:
            log.warning("gate.lane.override_refused.too_old", extra={
                "lane": answered.lane, "request_id": answered.request_id, "age_seconds": int(age)})
            raise NotOverridable(f"refused offline {int(age // 60)} minutes ago: an override lets in the truck "
                                 "refused while it is at the gate (an hour at most); have it read again at the lane")
        return decided_at + timedelta(seconds=age)

    def _behind(self) -> float:
        """Rule 6: how far the wall clock reads behind the latest wall time this adapter sealed (the outbox's
        latest stamp) or saw (the pass store's, which keeps now as seen), in seconds; 0 or less when not."""
        now, stamped = self.outbox.now(), self.outbox.latest_stamp()
        seen = [now if stamped is None else stamped]
        if self.store is not None:
            seen.append(self.store.saw(datetime.fromtimestamp(now, UTC)).timestamp())
        return max(seen) - now

    def _note_unanswered(self, answered: Answered, decision_id: str, release_id: str, by: str, reason: str,
                         exc: Exception) -> None:
        """An override the service may have recorded without our knowing: kept as ``unanswered`` and counted
        as a use of the right here (rule 3), logged as an error."""
        log.error("gate.lane.override_unanswered", extra={"lane": answered.lane, "request_id": answered.request_id,
                                                          "decision_id": decision_id, "officer": by,
                                                          "reason": str(exc)})
        self._keep(answered, decision_id=decision_id, release_id=release_id, by=by, reason=reason,
                   outcome="unanswered", answer=None, used=True)

    def _keep(self, answered: Answered, *, decision_id: str, release_id: str, by: str, reason: str, outcome: str,
              answer: Mapping[str, Any] | None, used: bool) -> None:
        """Rules 3, 4 and 8, once the service was asked: the use first, a write of its own, then the override's
        record (``outcome``, what the service said); a write that fails is logged and told as
        ``OverrideUnrecorded``, never lost in a refusal of the officer's request."""
        noted = False
        try:
            if used:
                self.outbox.note_use(answered, release_id)
                noted = True
            self.outbox.overridden(answered, decision_id=decision_id, release_id=release_id, officer=by,
                                   reason=reason, outcome=outcome, answer=answer)
        except Exception as exc:
            log.exception("gate.lane.override_unrecorded", extra={
                "lane": answered.lane, "request_id": answered.request_id, "decision_id": decision_id,
                "officer": by, "outcome": outcome, "use_noted": noted})
            raise OverrideUnrecorded(SAID[outcome], used=used, noted=noted) from exc

    def _unanswered(self, answered: Answered, decision_id: str, release_id: str, by: str, reason: str,
                    exc: Exception) -> NoReturn:
        """Rule 3: not judged, perhaps recorded: a use here, and the officer told to ask again."""
        self._note_unanswered(answered, decision_id, release_id, by, reason, exc)
        raise OverrideUnanswered(f"the service did not answer the override ({exc}); the right counts as used at "
                                 f"this adapter: ask again to know whether it was recorded")

"""The release right and its lifecycle (SPEC.md "The release right").

States and transitions; every arrow has one guarded method below and yields one event::

                      transfer / accept / decline / withdraw (holder changes on accept)
                     +-------+
                     v       |
    issue ------> ACTIVE ----+----- nominate -----> NOMINATED --(re-nominate, transfer)--+
                     |  ^                             |   |  ^                          |
                     |  +---- accept of a transfer ---+   |  +--------------------------+
                     |        clears the nomination       |
                     |                                    +-- gate_in (once) --> GATED_IN -- gate_out --> COMPLETED
                     |                                    |                          |
                     +-- override_gate_in (terminal) -----+--------------------------+
                     |
      revoke (line, from any live state) ----------> REVOKED
      lapse (valid_until passed, not yet gated in) -> EXPIRED
      delete (line, before any onward transfer) ---> DELETED

The nomination has its own small lifecycle, the driver's answer (one guarded method per arrow)::

    (nominate / re-nominate) --> PENDING --accept_nomination--> ACCEPTED --refuse_nomination--> REFUSED
                                    |                                                            ^
                                    +-------------------refuse_nomination------------------------+

Only the nominated driver answers (a person acting for himself, no organisation), only while the right
is nominated and in its window (never after gate-in). A refused nomination stays on the right, so the
transport operator sees who refused and why, but it no longer admits the truck: ``gate_in`` refuses it
(gate reason ``nomination_refused``, for the verify of issue 5) until the operator nominates again,
which resets the answer to PENDING. A pending answer does not stop gate-in: drivers without the app
must still get through. ACCEPTED may still turn into REFUSED (the truck breaks down after accepting);
REFUSED is final for that nomination, because the operator may already be planning another driver.

``blocked`` is the line's flag on a live right: it freezes transfers, acceptance, nomination and gate
use until unblocked; revoke, delete, lights and unblock stay open.

Port security's deactivation of an organisation (identity.organisations, review 130) reaches the rights
it set in motion: ``organisation_deactivated`` cancels a transfer it sent or was sent that is still
pending (``release.transfer.cancelled``, reason ``organisation_deactivated``) and, on a live right it
holds, tells the line (``release.holder_deactivated``), which may revoke the right or issue it anew; the
gate refuses such a right meanwhile (``holder_active``, read with the right: gate reason
``holder_inactive``). ``organisation_reactivated`` tells the line again (``release.holder_reactivated``);
a cancelled transfer stays cancelled. A transfer is accepted only while its sender is active.

The three lights are independent; a right is pickable only when all three are green, and only while it is
before the gate, in its window and not blocked (``pickable``: the right's side of the gate). Only the line
touches the commercial light, customs the customs light, the right's own terminal the terminal light.
Customs is a kind of organisation, not one: its light keeps the organisation that set it, and a hold (red
or scan) is changed only by that organisation, its green after a scan or after its own red with a reason
(review of the lights, finding 1). The hold is on the container: a right issued for it takes the hold of
the container's last right when that was not used at the gate (``carried_customs_hold``, review 141), so a
line ending a right and issuing it again hands the hold to no other customs; customs and port security
alone see a hold so carried (``customs_carried``, review 152). A hold whose setter port security
deactivated is any customs' to change, its green with a reason, the event naming the setter
(``previous_setter``). Customs is bound to no port or office yet.

The model is mutable inside one unit of work; each method appends to ``pending_events``, which the
service hands to the store with the new state in the same transaction.
"""

from __future__ import annotations

import re
import string
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from .errors import DomainError, ErrorCode
from .iso6346 import ContainerNumber
from .parties import HOLDER_KINDS, Actor, OrgKind
from .plates import Plate
from .reads import plate_skeleton

MAX_BATCH = 10_000


class State(StrEnum):
    ACTIVE = "active"
    NOMINATED = "nominated"
    GATED_IN = "gated_in"
    COMPLETED = "completed"
    REVOKED = "revoked"
    EXPIRED = "expired"
    DELETED = "deleted"


LIVE_STATES = frozenset({State.ACTIVE, State.NOMINATED, State.GATED_IN})
PRE_GATE_STATES = frozenset({State.ACTIVE, State.NOMINATED})
TERMINAL_STATES = frozenset({State.COMPLETED, State.REVOKED, State.EXPIRED, State.DELETED})
# Ended without taking the container out: customs' hold on such a right still holds the container.
ENDED_UNUSED = frozenset({State.REVOKED, State.EXPIRED, State.DELETED})


class LightKind(StrEnum):
    COMMERCIAL = "commercial"
    CUSTOMS = "customs"
    TERMINAL = "terminal"


class LightStatus(StrEnum):
    GREEN = "green"
    RED = "red"
    SCAN = "scan"  # customs only: selected for scan


# Who owns each light (SPEC.md "three independent lights").
LIGHT_OWNER = {
    LightKind.COMMERCIAL: OrgKind.SHIPPING_LINE,
    LightKind.CUSTOMS: OrgKind.CUSTOMS,
    LightKind.TERMINAL: OrgKind.TERMINAL,
}


@dataclass(frozen=True, slots=True)
class Light:
    status: LightStatus
    reason: str | None = None
    set_at: datetime | None = None
    # The organisation that set it: customs' light only (migration 0028), whose owner is a kind, not one
    # organisation. None: nobody's (the red a right is issued with) or set before 0028.
    set_by: uuid.UUID | None = None

    @property
    def green(self) -> bool:
        return self.status is LightStatus.GREEN


@dataclass(frozen=True, slots=True)
class LastRight:
    """A container's last right (by issue; the last of those customs holds, if any: the store's
    ``last_rights``), as a new right of the container reads it: customs' hold on it carries over
    (``ReleaseRight.issue``)."""

    id: uuid.UUID
    state: State
    customs: Light


@dataclass(frozen=True, slots=True)
class Slot:
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise DomainError(ErrorCode.INVALID_SLOT, "A slot ends after it starts.")


class DriverResponse(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REFUSED = "refused"


class RefusalReason(StrEnum):
    """Why a driver refuses: a closed list, so no free text (and no personal data) reaches the operator."""

    UNAVAILABLE = "unavailable"
    WRONG_TRUCK = "wrong_truck"
    OTHER = "other"


# The gate reason a refused nomination yields (SPEC.md gate reason codes; used by the verify of issue 5).
NOMINATION_REFUSED = "nomination_refused"
# Why a transfer was cancelled when port security deactivated one of its ends (``organisation_deactivated``).
ORGANISATION_DEACTIVATED = "organisation_deactivated"


@dataclass(frozen=True, slots=True)
class Nomination:
    driver_person_id: uuid.UUID
    plate: Plate
    trailer_plate: Plate | None
    slot: Slot | None
    nominated_by: uuid.UUID
    nominated_at: datetime
    response: DriverResponse = DriverResponse.PENDING
    response_reason: RefusalReason | None = None
    responded_at: datetime | None = None

    @property
    def key(self) -> list[str | None]:
        return nomination_key(self.driver_person_id, self.plate.text, self.plate.country)


def nomination_key(driver_person_id: uuid.UUID, plate_text: str, plate_country: str | None) -> list[str | None]:
    """Who and which truck a nomination names, as a gate decision keeps the one it judged
    (``gate_decisions.nomination``): an override goes in under that nomination, compared by this."""
    return [str(driver_person_id), plate_text, plate_country]


@dataclass(frozen=True, slots=True)
class FaceAgainst:
    """The last gate-in decision on a right whose face the service itself found another person's than its
    driver's, or caught as an attack (domain/gate.py ``face_against``, review 148), as read with the right
    from its gate decisions: that decision's id and time, its face evidence as its row keeps it
    (``gate.FaceRecord.as_json``) and the nomination it judged (``nomination_key``). Read only: the gate
    judges a gate-in on it (``gate.face_refused``); no method of the aggregate sets or saves it."""

    decision_id: uuid.UUID
    at: datetime
    face: Mapping[str, object]
    nomination: tuple[str | None, ...] | None


@lru_cache(maxsize=4096)  # a batch of 10 000 rights names a few vessel calls
def vessel_call_key(vessel_call: str) -> str:
    """A vessel call as it is compared: upper case, letters and digits only (its separators, spaces and
    case are how a back end happens to write it, not another call). The right keeps the call as written.

    Upper case as ``str.upper()`` makes it, by ``VESSEL_CALL_FOLDS``: the same key, written out."""
    return _NOT_KEY.sub("", vessel_call.translate(_KEY_FOLD))


# What the key makes of a character before it drops all but ASCII letters and digits: an ASCII letter in
# upper case, and the letters outside ASCII that ``str.upper()`` turns into ASCII ones (Unicode's full case
# mapping), as much of them as the key keeps; any other character maps to none. Written out rather than
# taken from ``str.upper()``, so that a key does not move with Python's Unicode version and the store can
# fold a vessel call as the key does in SQL (the list's vessel_call filter, review 159 finding 3); a test
# holds it to ``str.upper()`` over every code point.
VESSEL_CALL_FOLDS: Mapping[str, str] = MappingProxyType({
    **{c: c.upper() for c in string.ascii_lowercase},
    "\u00df": "SS",  # sharp s
    "\u0131": "I",  # dotless i
    "\u0149": "N",  # n preceded by apostrophe: upper() is "\u02bcN"
    "\u017f": "S",  # long s
    "\u01f0": "J",  # j with caron: "J" and a combining caron
    "\u1e96": "H",  # h with line below
    "\u1e97": "T",  # t with diaeresis
    "\u1e98": "W",  # w with ring above
    "\u1e99": "Y",  # y with ring above
    "\u1e9a": "A",  # a with right half ring: "A\u02be"
    "\ufb00": "FF",  # the Latin ligatures
    "\ufb01": "FI",
    "\ufb02": "FL",
    "\ufb03": "FFI",
    "\ufb04": "FFL",
    "\ufb05": "ST",
    "\ufb06": "ST",
})
KEY_CHARACTERS = string.ascii_uppercase + string.digits  # all a vessel call's key keeps
_KEY_FOLD = str.maketrans(dict(VESSEL_CALL_FOLDS))
_NOT_KEY = re.compile(f"[^{KEY_CHARACTERS}]")  # after the fold: what is not an ASCII letter or digit


def terminal_code(terminal: str) -> str:
    """A terminal's code as rights hold it (``ReleaseRight.issue``) and compare it."""
    return terminal.strip().upper()


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    actor: dict[str, str | None]
    at: datetime
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Screening:
    """What the driver's screening said at nomination (badge and port-ban checks)."""

    result: str  # clear | banned | refused | unavailable
    reasons: tuple[str, ...] = ()

    @property
    def refuses(self) -> bool:
        """Banned, or no usable badge: the person is not to be let in. A register that did not answer
        ("unavailable") says nothing either way."""
        return self.result not in ("clear", "unavailable")


class TransferState(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"
    CANCELLED = "cancelled"  # the right ended (revoked, deleted, lapsed) or was used at the gate while pending


@dataclass(slots=True)
class Transfer:
    id: uuid.UUID
    release_id: uuid.UUID
    from_organisation_id: uuid.UUID
    to_organisation_id: uuid.UUID
    state: TransferState
    created_at: datetime
    decided_at: datetime | None = None



def customs_holds(status: str, set_by: uuid.UUID | None) -> bool:
    """Whether a customs light of ``status`` set by ``set_by`` is customs' own hold on the container
    (``ReleaseRight.customs_own_hold``, ``gate.RightFacts.customs_held``): red or scan set by a customs
    organisation, or a scan from before the setter was kept (migration 0028; only customs selects for
    scan). Not the red a right is issued with."""
    return status != LightStatus.GREEN.value and (set_by is not None or status == LightStatus.SCAN.value)


@dataclass(slots=True)
class ReleaseRight:
    id: uuid.UUID
    container: ContainerNumber
    bill_of_lading: str
    vessel_call: str
    terminal: str
    issuer_organisation_id: uuid.UUID
    first_party_organisation_id: uuid.UUID
    holder_organisation_id: uuid.UUID
    state: State
    blocked: bool
    commercial: Light
    customs: Light
    terminal_light: Light
    valid_from: datetime
    valid_until: datetime
    created_at: datetime
    nomination: Nomination | None = None
    pending_transfer: Transfer | None = None
    gate_in_at: datetime | None = None
    gate_out_at: datetime | None = None
    # When another line was refused this right's container and vessel call (release_service/services/
    # issue.py): the gate then answers review. Read only; no method of the aggregate sets or saves it.
    contested_at: datetime | None = None
    # Whether the holder organisation is active (port security has not deactivated it), as read with the
    # right: the gate refuses a right whose holder is not (domain/gate.py ``holder_inactive``). Read only.
    holder_active: bool = True
    # The last gate-in decision on the right whose face the service found another person's (review 148), as
    # read by the gate's statements with the right. Read only.
    face_against: FaceAgainst | None = None
    version: int = 0
    pending_events: list[Event] = field(default_factory=list)
    changed_transfers: list[Transfer] = field(default_factory=list)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def issue(
        cls,
        *,
        id: uuid.UUID,
        container: ContainerNumber,
        bill_of_lading: str,
        vessel_call: str,
        terminal: str,
        by: Actor,
        release_to: uuid.UUID,
        release_to_kind: OrgKind,
        valid_from: datetime,
        valid_until: datetime,
        now: datetime,
        commercial: LightStatus = LightStatus.GREEN,
        last: LastRight | None = None,
    ) -> ReleaseRight:
        """``last``: the container's last right before this one, any vessel call, any line (the store's
        ``last_rights``). Customs' hold on it carries over (``carried_customs_hold``)."""
        _require_kind(by, OrgKind.SHIPPING_LINE, "Only a shipping line issues release rights.")
        if release_to_kind not in HOLDER_KINDS:
            raise DomainError(
                ErrorCode.WRONG_ORGANISATION_KIND,
                "A right is released to a release party or a transport operator.",
            )
        check_window(valid_from, valid_until, now)
        if not bill_of_lading.strip() or not vessel_call.strip() or not terminal.strip():
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "B/L, vessel call and terminal are required.")
        if not vessel_call_key(vessel_call):
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "The vessel call has no letter or digit.")
        assert by.organisation_id is not None
        carried = carried_customs_hold(last)
        right = cls(
            id=id,
            container=container,
            bill_of_lading=bill_of_lading.strip(),
            vessel_call=vessel_call.strip(),
            terminal=terminal_code(terminal),
            issuer_organisation_id=by.organisation_id,
            first_party_organisation_id=release_to,
            holder_organisation_id=release_to,
            state=State.ACTIVE,
            blocked=False,
            commercial=Light(commercial, None, now),
            # Customs and the terminal speak for themselves: until they do, their lights are red.
            customs=carried or awaiting_customs(now),
            terminal_light=Light(LightStatus.RED, "awaiting discharge", now),
            valid_from=valid_from,
            valid_until=valid_until,
            created_at=now,
        )
        data: dict[str, Any] = {"holder": str(release_to), **right._summary()}
        # Its status and where from, for customs' reads alone (disclosure.py); the reason is customs' own.
        if carried is not None and last is not None:
            data["customs_carried"] = {"status": carried.status.value, "from_release": str(last.id)}
        right._emit("release.issued", by, now, data)
        return right

    # ---- derived ------------------------------------------------------------------------------

    @property
    def active_key(self) -> str | None:
        """At most one live right per container and vessel call (SPEC.md); None once it has ended.

        The vessel call as a key (``vessel_call_key``), not as written: "2026-ANR-0457", "2026-anr-0457"
        and "2026 ANR 0457" are one call, and would otherwise be three live rights on one container."""
        if self.state in TERMINAL_STATES:
            return None
        return f"{self.container.value}|{vessel_call_key(self.vessel_call)}"

    def effective_state(self, now: datetime) -> State:
        """What the state is now: a right past its window has lapsed even before the sweeper writes it."""
        if self.state in PRE_GATE_STATES and now >= self.valid_until:
            return State.EXPIRED
        return self.state

    @property
    def customs_own_hold(self) -> bool:
        """Customs' own hold is on the light (``customs_holds``). Not the red of issue."""
        return customs_holds(self.customs.status.value, self.customs.set_by)

    @property
    def customs_carried(self) -> bool:
        """Customs' hold on the light came with the right at its issue (``carried_customs_hold``) and customs
        has not set the light on this right since: set before the right was issued. Customs' word on another
        right, which only customs and port security see on this one (``disclosure.minimise_right``, review
        152 finding 1); the gate holds the right by it all the same."""
        held = self.customs
        return (held.set_by is not None and not held.green and held.set_at is not None
                and held.set_at < self.created_at)

    def customs_hold_outlives(self, now: datetime) -> bool:
        """The right ended unused (revoked, deleted, lapsed) with customs' own hold on it: the hold stays on
        the container (``gate.container_held``, review 149 finding 3), and customs lifts it here, its green
        the one light an ended right takes (``set_light``), or on a right that carried it."""
        return self.effective_state(now) in ENDED_UNUSED and self.customs_own_hold

    @property
    def lights_green(self) -> bool:
        return self.commercial.green and self.customs.green and self.terminal_light.green

    def pickable(self, now: datetime) -> bool:
        """The right's side of the gate's answer now (the API's ``pickable``): before the gate and in its
        window (``effective_state`` active or nominated, ``valid_from`` reached), not blocked, all three
        lights green; what ``gate_in`` asks of the right, its nomination aside. Review 159 finding 4: the
        lights alone called a right not valid yet, or revoked, pickable, and the driver app said "Ready for
        pickup" to a truck the gate then refused. What the gate judges beyond the right (the truck, the
        driver, his answer, a hold on the container from another right, the holder's standing) it leaves."""
        return (self.effective_state(now) in PRE_GATE_STATES and now >= self.valid_from and not self.blocked
                and self.lights_green)

    def light(self, kind: LightKind) -> Light:
        return {
            LightKind.COMMERCIAL: self.commercial,
            LightKind.CUSTOMS: self.customs,
            LightKind.TERMINAL: self.terminal_light,
        }[kind]

    def is_party(self, organisation_id: uuid.UUID) -> bool:
        return organisation_id in (self.issuer_organisation_id, self.holder_organisation_id)

    # ---- transitions --------------------------------------------------------------------------

    def update(
        self,
        *,
        by: Actor,
        now: datetime,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        bill_of_lading: str | None = None,
    ) -> None:
        self._require_issuer(by)
        self._require_state(PRE_GATE_STATES, "update", now)
        new_from = valid_from or self.valid_from
        new_until = valid_until or self.valid_until
        check_window(new_from, new_until, now)
        changes: dict[str, Any] = {}
        if new_from != self.valid_from:
            changes["valid_from"] = new_from.isoformat()
        if new_until != self.valid_until:
            changes["valid_until"] = new_until.isoformat()
        if bill_of_lading is not None and bill_of_lading.strip() != self.bill_of_lading:
            changes["bill_of_lading"] = bill_of_lading.strip()
            self.bill_of_lading = bill_of_lading.strip()
        self.valid_from, self.valid_until = new_from, new_until
        self._emit("release.updated", by, now, changes)

    def block(self, *, by: Actor, now: datetime, reason: str | None) -> None:
        self._require_issuer(by)
        self._require_state(LIVE_STATES, "block", now)
        if self.blocked:
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "The right is already blocked.")
        self.blocked = True
        self._emit("release.blocked", by, now, {"reason": reason})

    def unblock(self, *, by: Actor, now: datetime, reason: str | None) -> None:
        self._require_issuer(by)
        self._require_state(LIVE_STATES, "unblock", now)
        if not self.blocked:
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "The right is not blocked.")
        self.blocked = False
        self._emit("release.unblocked", by, now, {"reason": reason})

    def revoke(self, *, by: Actor, now: datetime, reason: str | None) -> None:
        """The line ends the right; every downstream hold and pending transfer ends with it."""
        self._require_issuer(by)
        self._require_state(LIVE_STATES, "revoke", now)
        self.state = State.REVOKED
        self._emit("release.revoked", by, now, {"reason": reason, "holder": str(self.holder_organisation_id)})
        self._cancel_pending_transfer(by, now)

    def delete(self, *, by: Actor, now: datetime, reason: str | None, travelled: bool) -> None:
        """Withdraw a right issued in error, before it has travelled beyond the first party.

        ``travelled``: a transfer of it was ever accepted (the store's ``holders_chain``). A right that
        went forwarder -> haulier -> forwarder is held by its first party again, but it has travelled:
        it is revoked, never deleted (a deleted right drops out of what the gate reads, so a truck sent
        for it would hear ``container_unknown`` instead of ``right_revoked``)."""
        self._require_issuer(by)
        self._require_state(frozenset({State.ACTIVE}), "delete", now)
        if self.contested_at is not None:  # its mark must stay where the gate reads it (domain/gate.py)
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "A contested right can be revoked, not deleted.")
        # So must customs' hold, which holds the container (review 149, finding 3); not one the right only
        # carries, which stays on the right it came from (a line deletes it as any new right: review 152).
        if self.customs_own_hold and not self.customs_carried:
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "A right customs holds can be revoked, not deleted: "
                              "its hold stays on the container until customs lifts it.")
        if travelled or self.holder_organisation_id != self.first_party_organisation_id:
            raise DomainError(
                ErrorCode.ILLEGAL_TRANSITION,
                "A right that has been transferred onward can be revoked, not deleted.",
            )
        self.state = State.DELETED
        self._emit("release.deleted", by, now, {"reason": reason})
        self._cancel_pending_transfer(by, now)

    def lapse_if_due(self, now: datetime) -> bool:
        """Past its validity window a right not yet gated in lapses by itself."""
        if self.state in PRE_GATE_STATES and now >= self.valid_until:
            self.state = State.EXPIRED
            self._emit("release.expired", _SYSTEM, now, {"valid_until": self.valid_until.isoformat()})
            self._cancel_pending_transfer(_SYSTEM, now)
            return True
        return False

    def start_transfer(
        self,
        *,
        transfer_id: uuid.UUID,
        by: Actor,
        to_organisation_id: uuid.UUID,
        to_kind: OrgKind,
        now: datetime,
    ) -> Transfer:
        self.require_sender(by, now)
        if self.pending_transfer is not None:
            raise DomainError(ErrorCode.TRANSFER_PENDING, "A transfer of this right is already pending.")
        if to_organisation_id == self.holder_organisation_id:
            raise DomainError(ErrorCode.SELF_TRANSFER, "A holder cannot transfer a right to itself.")
        if to_kind not in HOLDER_KINDS:
            raise DomainError(
                ErrorCode.WRONG_ORGANISATION_KIND,
                "A right passes only to a release party or a transport operator.",
            )
        transfer = Transfer(
            id=transfer_id,
            release_id=self.id,
            from_organisation_id=self.holder_organisation_id,
            to_organisation_id=to_organisation_id,
            state=TransferState.PENDING,
            created_at=now,
        )
        self.pending_transfer = transfer
        self.changed_transfers.append(transfer)
        self._emit(
            "release.transfer.requested",
            by,
            now,
            {"transfer_id": str(transfer_id), "from": str(transfer.from_organisation_id),
             "to": str(to_organisation_id)},
        )
        return transfer

    def require_sender(self, by: Actor, now: datetime) -> None:
        """Who may send this right onward now: its holder, before the gate, not blocked, in its window.
        Checked before the recipient named is even looked up (services/transfers.py), so that nobody else
        learns whether an organisation exists or is active (review 130, finding 4)."""
        self._require_holder(by)
        self._require_state(PRE_GATE_STATES, "transfer", now)
        self._require_not_blocked()
        self._require_valid_now(now)

    def accept_transfer(self, *, transfer_id: uuid.UUID, by: Actor, now: datetime,
                        sender_active: bool) -> Transfer:
        """``sender_active``: whether the transfer's sender is active now. A company port security has
        deactivated sets nothing more in motion: a transfer it sent is not accepted (review 130)."""
        transfer = self._require_pending(transfer_id)
        if by.organisation_id != transfer.to_organisation_id:
            raise DomainError(ErrorCode.NOT_RECIPIENT, "Only the recipient accepts a transfer.")
        self._require_state(PRE_GATE_STATES, "accept", now)
        self._require_not_blocked()
        self._require_valid_now(now)
        if not sender_active:
            raise DomainError(ErrorCode.ORGANISATION_INACTIVE, "The sender of this transfer is deactivated: the "
                              "transfer can only be declined.")
        previous = self.holder_organisation_id
        self.holder_organisation_id = transfer.to_organisation_id
        # The new holder picks its own driver: a nomination by the previous holder does not travel.
        cleared = self.nomination is not None
        self.nomination = None
        self.state = State.ACTIVE
        self._close_transfer(transfer, TransferState.ACCEPTED, now)
        self._emit(
            "release.transfer.accepted",
            by,
            now,
            {"transfer_id": str(transfer.id), "from": str(previous), "to": str(transfer.to_organisation_id),
             "nomination_cleared": cleared},
        )
        return transfer

    def decline_transfer(self, *, transfer_id: uuid.UUID, by: Actor, now: datetime, reason: str | None) -> Transfer:
        transfer = self._require_pending(transfer_id)
        if by.organisation_id != transfer.to_organisation_id:
            raise DomainError(ErrorCode.NOT_RECIPIENT, "Only the recipient declines a transfer.")
        self._close_transfer(transfer, TransferState.DECLINED, now)
        # Both ends named, as on the withdrawal: the decliner's own webhooks hear it too (``audience``:
        # the event's ``to``; review 170, finding 4), and to a company of the chain party to neither end
        # the recipient stays unnamed (disclosure: ``to`` null unless it knows the company).
        self._emit("release.transfer.declined", by, now,
                   {"transfer_id": str(transfer.id), "from": str(transfer.from_organisation_id),
                    "to": str(transfer.to_organisation_id), "reason": reason})
        return transfer

    def withdraw_transfer(self, *, transfer_id: uuid.UUID, by: Actor, now: datetime) -> Transfer:
        transfer = self._require_pending(transfer_id)
        if by.organisation_id != transfer.from_organisation_id:
            raise DomainError(ErrorCode.NOT_SENDER, "Only the sender withdraws a transfer.")
        self._close_transfer(transfer, TransferState.WITHDRAWN, now)
        # Its recipient hears of it too (``audience``: the event's ``to``).
        self._emit("release.transfer.withdrawn", by, now,
                   {"transfer_id": str(transfer.id), "from": str(transfer.from_organisation_id),
                    "to": str(transfer.to_organisation_id)})
        return transfer

    def organisation_deactivated(self, *, organisation_id: uuid.UUID, by: dict[str, str | None],
                                 now: datetime) -> bool:
        """Port security deactivated ``organisation_id`` (module docstring): a transfer of this right it
        sent or was sent, still pending, is cancelled (it could never be accepted now), and, when it holds
        this live right, the line hears (``release.holder_deactivated``). False: nothing here concerns it."""
        changed = False
        transfer = self.pending_transfer
        if transfer is not None and organisation_id in (transfer.from_organisation_id, transfer.to_organisation_id):
            self._close_transfer(transfer, TransferState.CANCELLED, now)
            self._emit("release.transfer.cancelled", by, now,
                       {"transfer_id": str(transfer.id), "from": str(transfer.from_organisation_id),
                        "to": str(transfer.to_organisation_id), "reason": ORGANISATION_DEACTIVATED})
            changed = True
        return self._holder_status(organisation_id, "release.holder_deactivated", by, now) or changed

    def organisation_reactivated(self, *, organisation_id: uuid.UUID, by: dict[str, str | None],
                                 now: datetime) -> bool:
        """Port security reactivated ``organisation_id``: when it holds this live right, the line hears
        (``release.holder_reactivated``), and the gate lets the right through again."""
        return self._holder_status(organisation_id, "release.holder_reactivated", by, now)

    def _holder_status(self, organisation_id: uuid.UUID, type_: str, by: dict[str, str | None],
                       now: datetime) -> bool:
        if self.holder_organisation_id != organisation_id or self.effective_state(now) not in LIVE_STATES:
            return False
        self._emit(type_, by, now, {"holder": str(organisation_id)})
        return True

    def nominate(
        self,
        *,
        by: Actor,
        driver_person_id: uuid.UUID,
        plate: Plate,
        trailer_plate: Plate | None,
        slot: Slot | None,
        screening: Screening,
        now: datetime,
        registered: Sequence[tuple[Plate, uuid.UUID | None]] = (),
    ) -> None:
        """The transport operator holding the right names a driver and a truck; again until gate-in.

        ``registered``: the trucks of the port's register the gate could take for ``plate`` (each plate
        and the operator it is registered to, None when the row names none): those whose text has the
        plate's ``reads.plate_skeleton``, under any country. The gate compares a read without a country on
        the text alone, and takes a confident read differing only in look-alike characters for the
        nominated plate (``reads.compare_plate``), so any of them could pass on this nomination. One
        registered to another operator refuses it (``truck_of_another_operator``, that operator unnamed;
        review 170 finding 1, review 175 finding 1), even when the plate itself is the nominator's own
        truck: port security settles which is whose. After the screening, so a banned driver is refused
        as such whatever the truck; a plate the register holds nothing like is taken as given."""
        self.require_nominator(by, now)
        if slot is not None:
            check_slot(slot, valid_from=self.valid_from, valid_until=self.valid_until, now=now)
        if screening.result != "clear":
            raise DomainError(
                ErrorCode.DRIVER_SCREENING_FAILED,
                "The driver cannot be nominated: " + (", ".join(screening.reasons) or screening.result),
                screening=screening.result,
                reasons=list(screening.reasons),
            )
        assert by.organisation_id is not None
        skeleton = plate_skeleton(plate.text)
        others = [p for p, operator in registered
                  if operator is not None and operator != by.organisation_id and plate_skeleton(p.text) == skeleton]
        if plate in others:
            raise DomainError(ErrorCode.TRUCK_OF_ANOTHER_OPERATOR, "The truck register gives this plate to another "
                              "transport operator: name one of your own trucks, or have port security correct the "
                              "register.")
        if others:
            raise DomainError(ErrorCode.TRUCK_OF_ANOTHER_OPERATOR, "The truck register gives another transport "
                              "operator a plate the gate could take for this one (the same text under another "
                              "country, or one differing only in look-alike characters: 0/O/D/Q, 1/I, 2/Z, 5/S, "
                              "8/B, 6/G), so that truck could pass on this nomination: name another of your trucks, "
                              "or have port security correct the register.")
        renominated = self.nomination is not None
        self.nomination = Nomination(
            driver_person_id=driver_person_id,
            plate=plate,
            trailer_plate=trailer_plate,
            slot=slot,
            nominated_by=by.organisation_id,
            nominated_at=now,
        )
        self.state = State.NOMINATED
        self._emit(
            "release.renominated" if renominated else "release.nominated",
            by,
            now,
            {
                "driver_person_id": str(driver_person_id),
                "plate": plate.as_dict(),
                "trailer_plate": trailer_plate.as_dict() if trailer_plate else None,
                "slot": {"start": slot.start.isoformat(), "end": slot.end.isoformat()} if slot else None,
                "screening": screening.result,
            },
        )

    def require_nominator(self, by: Actor, now: datetime) -> None:
        """Who may nominate on this right now: its holder, a transport operator, on a live right with no
        transfer pending. Checked before the driver named is even looked up, so that nobody else learns
        anything of him (services/nominate.py)."""
        if by.kind is not OrgKind.TRANSPORT_OPERATOR:
            raise DomainError(ErrorCode.WRONG_ORGANISATION_KIND, "Only a transport operator nominates.")
        self._require_holder(by)
        self._require_state(PRE_GATE_STATES, "nominate", now)
        self._require_not_blocked()
        self._require_valid_now(now)
        if self.pending_transfer is not None:
            raise DomainError(ErrorCode.TRANSFER_PENDING, "Withdraw the pending transfer before nominating.")

    def accept_nomination(self, *, by: Actor, now: datetime) -> None:
        """The nominated driver confirms he will make the pickup: PENDING -> ACCEPTED."""
        nomination = self._require_nominated_driver(by, now)
        if nomination.response is not DriverResponse.PENDING:
            raise DomainError(
                ErrorCode.ILLEGAL_TRANSITION,
                f"This nomination has already been {nomination.response.value}.",
                state=nomination.response.value,
            )
        self._answer(by, now, DriverResponse.ACCEPTED, None)

    def refuse_nomination(self, *, by: Actor, now: datetime, reason: RefusalReason | None) -> None:
        """The nominated driver will not make the pickup: PENDING or ACCEPTED -> REFUSED.

        The nomination stays (the operator sees who refused and why) but no longer admits the truck.
        """
        nomination = self._require_nominated_driver(by, now)
        if nomination.response is DriverResponse.REFUSED:
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "This nomination has already been refused.",
                              state=nomination.response.value)
        self._answer(by, now, DriverResponse.REFUSED, reason or RefusalReason.OTHER)

    def set_light(
        self, *, kind: LightKind, status: LightStatus, reason: str | None, by: Actor, now: datetime,
        setter_active: bool = True,
    ) -> None:
        """``setter_active``: whether the customs organisation that set the customs light is active (the
        service reads it when another customs changes a hold; ``_require_customs_hold_lifter``)."""
        owner = LIGHT_OWNER[kind]
        if by.kind is not owner:
            raise DomainError(ErrorCode.NOT_LIGHT_OWNER, f"The {kind.value} light is set by the {owner.value}.")
        if kind is LightKind.COMMERCIAL and by.organisation_id != self.issuer_organisation_id:
            raise DomainError(ErrorCode.NOT_LIGHT_OWNER, "Only the issuing line sets the commercial light.")
        if kind is LightKind.TERMINAL and by.terminal_code != self.terminal:
            raise DomainError(ErrorCode.NOT_LIGHT_OWNER, "Only the right's own terminal sets the terminal light.")
        if status is LightStatus.SCAN and kind is not LightKind.CUSTOMS:
            raise DomainError(ErrorCode.INVALID_LIGHT, "Only customs selects a container for scan.")
        if not (kind is LightKind.CUSTOMS and status is LightStatus.GREEN and self.customs_hold_outlives(now)):
            self._require_state(LIVE_STATES, "set a light on", now)
        data: dict[str, Any] = {"status": status.value, "reason": reason}
        if kind is LightKind.CUSTOMS and (previous := self._require_customs_hold_lifter(status, reason, by,
                                                                                         setter_active)):
            data["previous_setter"] = str(previous)
        new = Light(status, reason, now)
        if kind is LightKind.COMMERCIAL:
            self.commercial = new
        elif kind is LightKind.CUSTOMS:
            self.customs = replace(new, set_by=by.organisation_id)
        else:
            self.terminal_light = new
        self._emit(f"release.light.{kind.value}", by, now, data)

    def _require_customs_hold_lifter(self, status: LightStatus, reason: str | None, by: Actor,
                                     setter_active: bool) -> uuid.UUID | None:
        """Any customs organisation may set customs' light, but a hold (red or scan) is changed only by the
        one that set it: else one customs office lifts another's scan selection. Its green after a scan, or
        after a red it set, says why. The red a right is issued with is nobody's hold, and a hold stored
        before its setter was kept (migration 0028) is anyone of customs' to change, as it was.

        A hold whose setter port security has deactivated (``setter_active`` False) is any customs' to
        change (review 141): its setter acts no more, and the container would stay held for good. Returns
        that setter, which the event names (``previous_setter``); None when the caller changes its own."""
        held = self.customs
        if held.green:
            return None
        other = held.set_by if held.set_by is not None and held.set_by != by.organisation_id else None
        if other is not None and setter_active:
            raise DomainError(ErrorCode.LIGHT_HELD_BY_ANOTHER, "Another customs organisation set this hold: only "
                              "it changes or lifts it.")
        lifted_hold = held.status is LightStatus.SCAN or held.set_by is not None
        if status is LightStatus.GREEN and lifted_hold and not (reason and reason.strip()):
            raise DomainError(ErrorCode.REASON_REQUIRED, "Lifting a customs hold to green needs a reason.")
        return other

    def gate_in(self, *, by: Actor, now: datetime, decision_id: uuid.UUID) -> None:
        """Gate-in uses the right once. The store persists it with a conditional update (STYLE.md #4)."""
        self._require_gate(by)
        if self.state is State.GATED_IN or self.state is State.COMPLETED:
            raise DomainError(ErrorCode.ALREADY_USED, "This right has already been used at the gate.")
        self._require_state(frozenset({State.NOMINATED}), "gate in", now)
        self._require_not_blocked()
        self._require_valid_now(now)
        if not self.lights_green:
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "All three lights must be green.")
        if self.nomination is not None and self.nomination.response is DriverResponse.REFUSED:
            # The driver said he will not come: a truck under his nomination is not admitted (see the
            # module docstring). The terminal's audited override stays possible.
            raise DomainError(
                ErrorCode.ILLEGAL_TRANSITION,
                "The nominated driver refused this pickup; the transport operator must nominate again.",
                reason=NOMINATION_REFUSED,
            )
        self.state = State.GATED_IN
        self.gate_in_at = now
        self._emit("release.gated_in", by, now, {"decision_id": str(decision_id)})
        self._cancel_pending_transfer(by, now)

    def override_gate_in(self, *, by: Actor, now: datetime, reason: str, decision_id: uuid.UUID,
                         set_aside: Sequence[str] = (), officer: str | None = None) -> None:
        """A terminal releases a refused truck; it must say why, and it is audited, with the refusal's
        reason codes it sets aside (``set_aside``; review 142) and the officer who let it in (``officer``,
        as the gate names him; None from a gate that does not): a member of the terminal's staff, read by
        the terminal and port security only (disclosure.STAFF_KEYS; review 171, finding 2)."""
        self._require_gate(by)
        if not reason or not reason.strip():
            raise DomainError(ErrorCode.REASON_REQUIRED, "An override needs a reason.")
        if self.state in (State.GATED_IN, State.COMPLETED):
            raise DomainError(ErrorCode.ALREADY_USED, "This right has already been used at the gate.")
        self._require_state(PRE_GATE_STATES, "override", now)
        self.state = State.GATED_IN
        self.gate_in_at = now
        self._emit("release.gate_override", by, now, {"reason": reason.strip(), "decision_id": str(decision_id),
                                                      "set_aside": list(set_aside), "officer": officer})
        self._cancel_pending_transfer(by, now)

    def require_overridable(self, now: datetime) -> None:
        """What a terminal's override (release_service.domain.gate.OVERRIDABLE) may not set aside on the
        right itself, as it is now, whatever the refused decision said: it must be nominated (a driver
        and a truck are bound to it), not blocked, in its validity window, held by an active company
        (port security's word), with the line's and customs' lights green (the terminal's own light is
        the terminal's to lift)."""
        if self.state in (State.GATED_IN, State.COMPLETED):
            raise DomainError(ErrorCode.ALREADY_USED, "This right has already been used at the gate.")
        if self.state is not State.NOMINATED:
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION,
                              f"Cannot override for a right that is {self.state.value}: only a nominated right "
                              "(a driver and a truck bound to it) is let in.", state=self.state.value)
        self._require_not_blocked()
        self._require_valid_now(now)
        if not self.holder_active:  # port security's word on the holder (gate reason holder_inactive)
            raise DomainError(ErrorCode.ORGANISATION_INACTIVE, "The right's holder is deactivated: a terminal "
                              "cannot let its truck in.")
        if not (self.commercial.green and self.customs.green):
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "A terminal cannot lift the line's commercial hold or "
                              "customs' hold: both lights must be green.")

    def require_releasable_to_driver(self, decided_at: datetime, judged: Sequence[str | None] | None,
                                     driver: Screening) -> None:
        """What an override may not set aside on the person it lets in. The truck goes in under the
        nomination the refused decision judged, to its driver (the desk establishes that the person at
        the gate is that driver), so: the right not nominated again since the decision, and that driver,
        screened now (``driver``: the nomination's screening, a usable badge and no port ban), neither
        banned nor without a usable badge. A decision that read no badge, or one nobody knows, never
        screened a person: this is the screening that lets the truck in. A register that does not
        answer ("unavailable") is the desk's to judge, as ``screening_unavailable`` is.

        ``judged``: the nomination the decision judged, [driver person id, plate, country], as its row
        keeps it; a decision recorded before it was kept (None) is judged by time, the nomination made
        after the decision being another."""
        n = self.nomination
        if n is None:
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "Only a nominated right is let in.")
        again = (n.nominated_at > decided_at if judged is None
                 else list(judged) != n.key)
        if again:
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "The right was nominated again since this decision: "
                              "verify the truck again.")
        if driver.refuses:
            raise DomainError(ErrorCode.ILLEGAL_TRANSITION, "A terminal cannot let in a driver the badge office or "
                              f"the port-ban register refuses ({', '.join(driver.reasons) or driver.result}).",
                              reasons=list(driver.reasons))

    def gate_out(self, *, by: Actor, now: datetime, decision_id: uuid.UUID) -> None:
        self._require_gate(by)
        self._require_state(frozenset({State.GATED_IN}), "gate out", now)
        self.state = State.COMPLETED
        self.gate_out_at = now
        self._emit("release.completed", by, now, {"decision_id": str(decision_id)})

    # ---- guards -------------------------------------------------------------------------------

    def _require_issuer(self, by: Actor) -> None:
        if by.kind is not OrgKind.SHIPPING_LINE or by.organisation_id != self.issuer_organisation_id:
            raise DomainError(ErrorCode.NOT_ISSUER, "Only the issuing shipping line may do this.")

    def _require_holder(self, by: Actor) -> None:
        if by.organisation_id != self.holder_organisation_id:
            raise DomainError(ErrorCode.NOT_HOLDER, "Only the current holder may do this.")

    def _require_gate(self, by: Actor) -> None:
        if by.kind is not OrgKind.TERMINAL or by.terminal_code != self.terminal:
            raise DomainError(ErrorCode.NOT_TERMINAL, "Only the right's own terminal records gate moves.")

    def _require_state(self, allowed: frozenset[State], action: str, now: datetime) -> None:
        # The state as it is now (``effective_state``): a right past its window has lapsed whether or
        # not the sweeper has written it down yet, and nothing may act on it as if it were live (an
        # update moving its window would otherwise revive it, with its old nomination).
        state = self.effective_state(now)
        if state is State.EXPIRED and state not in allowed:  # swept or not: the same answer
            raise DomainError(ErrorCode.RIGHT_EXPIRED, "The right's validity window has passed.", state=state.value)
        if state not in allowed:
            raise DomainError(
                ErrorCode.ILLEGAL_TRANSITION,
                f"Cannot {action} a right that is {state.value}.",
                state=state.value,
            )

    def _require_not_blocked(self) -> None:
        if self.blocked:
            raise DomainError(ErrorCode.RIGHT_BLOCKED, "The shipping line has blocked this right.")

    def _require_valid_now(self, now: datetime) -> None:
        if now < self.valid_from:
            raise DomainError(ErrorCode.RIGHT_NOT_YET_VALID, "The right is not valid yet.")
        if now >= self.valid_until:
            raise DomainError(ErrorCode.RIGHT_EXPIRED, "The right's validity window has passed.")

    def _require_nominated_driver(self, by: Actor, now: datetime) -> Nomination:
        """Only the person nominated, acting for himself, answers; only before gate-in and in the window."""
        nomination = self.nomination
        if (by.organisation_id is not None or by.person_id is None or nomination is None
                or nomination.driver_person_id != by.person_id):
            raise DomainError(ErrorCode.FORBIDDEN, "Only the nominated driver answers a nomination.")
        if self.state in (State.GATED_IN, State.COMPLETED):
            raise DomainError(ErrorCode.ALREADY_USED, "This right has already been used at the gate.",
                              state=self.state.value)
        self._require_state(frozenset({State.NOMINATED}), "answer a nomination on", now)
        self._require_valid_now(now)
        return nomination

    def _require_pending(self, transfer_id: uuid.UUID) -> Transfer:
        transfer = self.pending_transfer
        if transfer is None or transfer.id != transfer_id:
            raise DomainError(ErrorCode.TRANSFER_NOT_PENDING, "That transfer is no longer pending.")
        return transfer

    # ---- helpers ------------------------------------------------------------------------------

    def _answer(self, by: Actor, now: datetime, response: DriverResponse, reason: RefusalReason | None) -> None:
        assert self.nomination is not None
        self.nomination = replace(self.nomination, response=response, response_reason=reason, responded_at=now)
        self._emit(
            "release.nomination.accepted" if response is DriverResponse.ACCEPTED else "release.nomination.refused",
            by,
            now,
            {"response": response.value, "reason": reason.value if reason else None,
             "driver_person_id": str(self.nomination.driver_person_id),
             "nominated_at": self.nomination.nominated_at.isoformat()},
        )

    def _close_transfer(self, transfer: Transfer, state: TransferState, now: datetime) -> None:
        transfer.state = state
        transfer.decided_at = now
        self.pending_transfer = None
        if transfer not in self.changed_transfers:
            self.changed_transfers.append(transfer)

    def _cancel_pending_transfer(self, by: Actor | dict[str, str | None], now: datetime) -> None:
        """A transfer still pending when the right ends or is used at the gate can never be accepted:
        it is cancelled, and both its ends hear so (``release.transfer.cancelled``, after the event of
        the right's own change, so its ``state`` is the right's new one)."""
        transfer = self.pending_transfer
        if transfer is not None:
            self._close_transfer(transfer, TransferState.CANCELLED, now)
            self._emit("release.transfer.cancelled", by, now,
                       {"transfer_id": str(transfer.id), "from": str(transfer.from_organisation_id),
                        "to": str(transfer.to_organisation_id)})

    def _summary(self) -> dict[str, Any]:
        return {
            "container_number": self.container.value,
            "bill_of_lading": self.bill_of_lading,
            "vessel_call": self.vessel_call,
            "terminal": self.terminal,
            "valid_from": self.valid_from.isoformat(),
            "valid_until": self.valid_until.isoformat(),
        }

    def _emit(self, type_: str, by: Actor | dict[str, str | None], now: datetime, data: dict[str, Any]) -> None:
        actor = by.as_dict() if isinstance(by, Actor) else by
        self.pending_events.append(Event(type_, actor, now, {**data, "state": self.state.value}))


_SYSTEM: dict[str, str | None] = {"client_id": "quaygate", "organisation_id": None, "kind": "system", "person_id": None}

AWAITING_CUSTOMS = "awaiting customs release"


def awaiting_customs(at: datetime) -> Light:
    """The customs light a right is issued with: red, nobody's hold, until customs speaks."""
    return Light(LightStatus.RED, AWAITING_CUSTOMS, at)


def carried_customs_hold(last: LastRight | None) -> Light | None:
    """Customs' hold a new right of a container takes from the container's last right (review 141): a hold
    a customs organisation set (red or scan, its setter known) and did not lift, on a right not used at the
    gate (live, revoked, deleted or lapsed). Status, reason, time and setter as they were: the hold is on
    the container, so a line ending the right and issuing it again (or issuing it on another vessel call)
    does not hand it to any customs to lift. Only customs and port security see it on the new right
    (``ReleaseRight.customs_carried``, ``disclosure.minimise_right``, review 152 finding 1); the gate holds the
    right by it. None: the new right starts red, nobody's hold."""
    if last is None or last.state in (State.GATED_IN, State.COMPLETED):
        return None
    held = last.customs
    if held.green or held.set_by is None:
        return None
    return held


MAX_VALIDITY_DAYS = 120
# How far ahead of now a right may start. A line releases a container for a vessel call it knows; a
# window starting years ahead (8999 was taken) is no release, and would hold the container and vessel
# call's one live right for good. With the window's own bound, a right ends within 210 days of its issue.
MAX_LEAD_DAYS = 90
# A pick-up slot is a terminal appointment: hours, at most a day, inside the right's window.
MAX_SLOT_HOURS = 24


def check_window(valid_from: datetime, valid_until: datetime, now: datetime) -> None:
    if valid_from.tzinfo is None or valid_until.tzinfo is None:
        raise DomainError(ErrorCode.INVALID_VALIDITY_WINDOW, "Validity times need a time zone offset.")
    if valid_until <= valid_from:
        raise DomainError(ErrorCode.INVALID_VALIDITY_WINDOW, "valid_until must come after valid_from.")
    if valid_until <= now:
        raise DomainError(ErrorCode.INVALID_VALIDITY_WINDOW, "valid_until is already past.")
    if (valid_until - valid_from).days > MAX_VALIDITY_DAYS:
        raise DomainError(
            ErrorCode.INVALID_VALIDITY_WINDOW, f"A validity window is at most {MAX_VALIDITY_DAYS} days."
        )
    if valid_from - now > timedelta(days=MAX_LEAD_DAYS):
        raise DomainError(ErrorCode.INVALID_VALIDITY_WINDOW,
                          f"valid_from lies at most {MAX_LEAD_DAYS} days ahead.", field="valid_from")


def check_slot(slot: Slot, *, valid_from: datetime, valid_until: datetime, now: datetime) -> None:
    """A slot that has not ended, inside the validity window (a truck sent before valid_from or after
    valid_until is refused at the gate), and at most MAX_SLOT_HOURS long."""
    if slot.end <= now:
        raise DomainError(ErrorCode.INVALID_SLOT, "The slot has ended already.", field="slot")
    if slot.start < valid_from or slot.end > valid_until:
        raise DomainError(ErrorCode.INVALID_SLOT, "The slot must lie inside the validity window.", field="slot")
    if slot.end - slot.start > timedelta(hours=MAX_SLOT_HOURS):
        raise DomainError(ErrorCode.INVALID_SLOT, f"A slot is at most {MAX_SLOT_HOURS} hours long.", field="slot")



def _require_kind(by: Actor, kind: OrgKind, message: str) -> None:
    if by.kind is not kind or by.organisation_id is None:
        raise DomainError(ErrorCode.WRONG_ORGANISATION_KIND, message)

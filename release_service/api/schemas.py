"""Wire schemas of the party API. Separate from the domain model and the tables (STYLE.md)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from quaygate.limits import Rfc3339Time, UtcTime
from release_service.domain import storable
from release_service.domain.release import (
    MAX_LEAD_DAYS,
    MAX_SLOT_HOURS,
    MAX_VALIDITY_DAYS,
    Light,
    ReleaseRight,
    Transfer,
)
from release_service.ports import StoredEvent

# A time as every request takes it (quaygate/limits.py): an RFC 3339 string with an offset, put in UTC,
# within what the storage holds (release_service/domain/storable.py); outside, a 422 naming the field,
# never a 500 from the database. The rules against now are the domain's (release.py check_window, check_slot).
_FROM = (f"RFC 3339 with an offset. At most {MAX_LEAD_DAYS} days ahead of now, and at most "
         f"{MAX_VALIDITY_DAYS} days before valid_until.")
_UNTIL = f"RFC 3339 with an offset. After valid_from and now, at most {MAX_VALIDITY_DAYS} days after valid_from."
# Text as stored: no control character (a NUL is refused by PostgreSQL), no lone surrogate.
OneLine = Annotated[str, AfterValidator(storable.text)]


def _prose(value: str) -> str:
    return storable.text(value, multiline=True)


# Free text (a reason): tab and line breaks allowed, other control characters not.
Prose = Annotated[str, AfterValidator(_prose)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)


class IssueRequest(Strict):
    container_number: str = Field(min_length=11, max_length=20, examples=["MSCU1234566"])
    bill_of_lading: str = Field(min_length=1, max_length=64)
    vessel_call: str = Field(min_length=1, max_length=64, description="The vessel call (stay) number.")
    terminal: str = Field(min_length=1, max_length=32, description="Terminal code, e.g. BEANR-K1700.")
    release_to_organisation_id: uuid.UUID
    valid_from: UtcTime = Field(description=_FROM)
    valid_until: UtcTime = Field(description=_UNTIL)
    commercial: Literal["green", "red"] = "green"

    model_config = ConfigDict(extra="forbid", strict=False, str_strip_whitespace=True)


class BatchItem(IssueRequest):
    """One right of a batch. Its times are judged with its other rules: one out of range refuses this
    item alone, named by its index in the answer, as a wrong check digit does."""

    # Not UtcTime: a refusal here would refuse the whole batch; services/issue.py checks them per item.
    # Their shape (a date-time string, never a number) is the whole batch's, as a missing field is.
    valid_from: Rfc3339Time = Field(description=_FROM)
    valid_until: Rfc3339Time = Field(description=_UNTIL)


class BatchRequest(Strict):
    releases: list[BatchItem] = Field(description="At most 10 000 rights.")

    model_config = ConfigDict(extra="forbid", strict=False)


class TransferRequest(Strict):
    to_organisation_id: uuid.UUID

    model_config = ConfigDict(extra="forbid", strict=False)


class ReasonRequest(Strict):
    reason: Prose | None = Field(default=None, max_length=500)


class PlateIn(Strict):
    text: str = Field(min_length=2, max_length=20)
    country: str = Field(min_length=2, max_length=2, description="ISO 3166-1 alpha-2")


class BadgeIn(Strict):
    scheme: Literal["alfapass", "portpass"]
    number: OneLine | None = Field(default=None, max_length=32)
    card_uid: OneLine | None = Field(default=None, max_length=32)


class SlotIn(Strict):
    """A pick-up appointment: inside the right's validity window, not yet ended, at most a day long."""

    start: UtcTime = Field(description="RFC 3339 with an offset; not before the right's valid_from.")
    end: UtcTime = Field(description=(
        f"RFC 3339 with an offset; after start and now, not after the right's valid_until, at most "
        f"{MAX_SLOT_HOURS} hours after start."))

    model_config = ConfigDict(extra="forbid", strict=False)


class NominationRequest(Strict):
    driver_person_id: uuid.UUID | None = None
    badge: BadgeIn | None = None
    plate: PlateIn
    trailer_plate: PlateIn | None = None
    slot: SlotIn | None = None

    model_config = ConfigDict(extra="forbid", strict=False, str_strip_whitespace=True)


class RefusalRequest(Strict):
    reason: Literal["unavailable", "wrong_truck", "other"] | None = Field(
        default=None, description="Why the driver refuses (a closed list; no free text). Defaults to other.")


class LightRequest(Strict):
    status: Literal["green", "red", "scan"]
    reason: Prose | None = Field(default=None, max_length=500, description=(
        "Why. Customs' hold (`red` or `scan`) is changed only by the customs organisation that set it (403 "
        "`light_held_by_another` for any other) while that organisation is active (one port security "
        "deactivated leaves its hold to any customs; the event names it as `previous_setter`), and its `green` "
        "after a `scan`, or after a `red` it set, needs a reason (422 `reason_required`). The hold is on the "
        "container: it holds every right of it, and stays when its right ends unused (revoked, lapsed), which "
        "then takes customs' `green` and no other light; a `green` lifts the same hold on every right of the "
        "container that carried it."))


class UpdateRequest(Strict):
    valid_from: UtcTime | None = Field(default=None, description=_FROM)
    valid_until: UtcTime | None = Field(default=None, description=_UNTIL)
    bill_of_lading: str | None = Field(default=None, min_length=1, max_length=64)

    model_config = ConfigDict(extra="forbid", strict=False, str_strip_whitespace=True)


class LightOut(BaseModel):
    status: str
    reason: str | None
    set_at: datetime | None


class TransferOut(BaseModel):
    id: uuid.UUID
    release_id: uuid.UUID
    from_organisation_id: uuid.UUID
    to_organisation_id: uuid.UUID
    state: str
    created_at: datetime
    decided_at: datetime | None


class DriverResponseOut(BaseModel):
    status: Literal["pending", "accepted", "refused"] = Field(
        description="The nominated driver's answer; a refused nomination does not admit the truck at the gate.")
    reason: Literal["unavailable", "wrong_truck", "other"] | None
    at: datetime | None


class NominationOut(BaseModel):
    driver_person_id: uuid.UUID
    plate: dict[str, str]
    trailer_plate: dict[str, str] | None
    slot: dict[str, datetime] | None
    nominated_by: uuid.UUID
    nominated_at: datetime
    driver_response: DriverResponseOut


class GateOut(BaseModel):
    status: Literal["not_yet", "in", "out"] = Field(description="Where the pickup stands at the terminal gate.")
    gate_in_at: datetime | None
    gate_out_at: datetime | None


class ReleaseOut(BaseModel):
    id: uuid.UUID
    container_number: str
    bill_of_lading: str
    vessel_call: str
    terminal: str
    state: str
    blocked: bool
    pickable: bool = Field(description=(
        "Whether the right itself lets its container be picked up now: `state` `active` or `nominated` (so "
        "before the gate and not past `valid_until`), `valid_from` reached, not `blocked`, and all three "
        "lights `green`. Gate-in refuses a right that is not (but for the terminal's audited override); it "
        "judges besides the truck, the driver and his answer, a hold on the container and the holder. "
        "False once gated in."))
    lights: dict[str, LightOut] = Field(description=(
        "`commercial`, `customs`, `terminal`. Customs' `reason` is shown to the line, customs, the terminal "
        "and port security only. A hold the right took over at its issue from another right of its container "
        "(customs' hold is on the container), and customs has not set on this right since, shows to customs "
        "and port security alone: to everyone else the customs light reads as any right's at its issue "
        "(`red`, \"awaiting customs release\", set at its issue), and its `release.issued` event names no "
        "`customs_carried`. The gate holds the right by it all the same (`customs_hold`, as for any red), and "
        "customs' `green` lifts it."))
    issuer_organisation_id: uuid.UUID
    holder_organisation_id: uuid.UUID
    holders_chain: list[uuid.UUID] | None = Field(default=None, description=(
        "The holders from the first party on (one right only). A past holder is shown it as far as the "
        "company it passed the right to."))
    pending_transfer: TransferOut | None = Field(description=(
        "A transfer awaiting its recipient; null for a company of the chain that is not party to it."))
    nomination: NominationOut | None = Field(description=(
        "The driver and truck named; null for a company of the chain other than the holder (data "
        "minimisation)."))
    valid_from: datetime
    valid_until: datetime
    gate_in_at: datetime | None
    gate_out_at: datetime | None
    gate: GateOut
    contested_at: datetime | None = Field(default=None, description=(
        "When this right was marked contested: another shipping line was refused the container and vessel "
        "call it holds, or this line's right on the container (at any terminal) was. The gate then answers "
        "`review` `container_contested` for it, as it does while another line holds a live right on the "
        "container at this terminal; the terminal settles it from its discharge records (an override)."))
    created_at: datetime
    version: int = Field(description=(
        "Moves with every change of the right. Sent as its `ETag` (`\"7\"`): a write with it in `If-Match` is "
        "made only if the right is still at this version (412 `precondition_failed` otherwise)."))


class ReceiptOut(BaseModel):
    receipt_id: uuid.UUID
    release_id: uuid.UUID
    action: str
    seq: int
    state: str
    at: datetime
    organisation_id: uuid.UUID | None


class ReleaseWithReceipt(BaseModel):
    release: ReleaseOut
    receipt: ReceiptOut


class TransferWithReceipt(BaseModel):
    transfer: TransferOut
    receipt: ReceiptOut


class BatchItemOut(BaseModel):
    index: int = Field(description="The item's place in the request's releases, from 0.")
    container_number: str
    release_id: uuid.UUID | None
    error: dict[str, str] | None = Field(
        description="Why the item was refused: code, detail, and field when one of its values is at fault.")


class BatchOut(BaseModel):
    created: int
    refused: int
    items: list[BatchItemOut]


class ReleasePage(BaseModel):
    items: list[ReleaseOut]
    next_cursor: str | None


class EventOut(BaseModel):
    id: uuid.UUID
    seq: int
    type: str
    actor: dict[str, Any] = Field(description=(
        "Who acted. A member's or driver's person_id, and a company the viewer does not know, are null "
        "outside the viewer's own part."))
    data: dict[str, Any] = Field(description=(
        "What changed. A nomination's details (driver, plates, slot, screening, answer) are null for "
        "every viewer but the line, customs, the terminal, port security, the company that made it and "
        "its driver; a company outside the viewer's part of the chain is null."))
    at: datetime


class EventList(BaseModel):
    items: list[EventOut]


# ---- renderers (domain -> JSON-ready dicts) ----------------------------------------------------


def _light(light: Light) -> dict[str, Any]:
    return {"status": light.status.value, "reason": light.reason,
            "set_at": light.set_at.isoformat() if light.set_at else None}


def transfer_out(t: Transfer) -> dict[str, Any]:
    return {
        "id": str(t.id),
        "release_id": str(t.release_id),
        "from_organisation_id": str(t.from_organisation_id),
        "to_organisation_id": str(t.to_organisation_id),
        "state": t.state.value,
        "created_at": t.created_at.isoformat(),
        "decided_at": t.decided_at.isoformat() if t.decided_at else None,
    }


def release_out(r: ReleaseRight, now: datetime, chain: list[uuid.UUID] | None = None) -> dict[str, Any]:
    n = r.nomination
    return {
        "id": str(r.id),
        "container_number": r.container.value,
        "bill_of_lading": r.bill_of_lading,
        "vessel_call": r.vessel_call,
        "terminal": r.terminal,
        "state": r.effective_state(now).value,
        "blocked": r.blocked,
        "pickable": r.pickable(now),
        "lights": {"commercial": _light(r.commercial), "customs": _light(r.customs),
                   "terminal": _light(r.terminal_light)},
        "issuer_organisation_id": str(r.issuer_organisation_id),
        "holder_organisation_id": str(r.holder_organisation_id),
        "holders_chain": [str(c) for c in chain] if chain is not None else None,
        "pending_transfer": transfer_out(r.pending_transfer) if r.pending_transfer else None,
        "nomination": None if n is None else {
            "driver_person_id": str(n.driver_person_id),
            "plate": n.plate.as_dict(),
            "trailer_plate": n.trailer_plate.as_dict() if n.trailer_plate else None,
            "slot": {"start": n.slot.start.isoformat(), "end": n.slot.end.isoformat()} if n.slot else None,
            "nominated_by": str(n.nominated_by),
            "nominated_at": n.nominated_at.isoformat(),
            "driver_response": {
                "status": n.response.value,
                "reason": n.response_reason.value if n.response_reason else None,
                "at": n.responded_at.isoformat() if n.responded_at else None,
            },
        },
        "valid_from": r.valid_from.isoformat(),
        "valid_until": r.valid_until.isoformat(),
        "gate_in_at": r.gate_in_at.isoformat() if r.gate_in_at else None,
        "gate_out_at": r.gate_out_at.isoformat() if r.gate_out_at else None,
        "gate": {
            "status": "out" if r.gate_out_at else "in" if r.gate_in_at else "not_yet",
            "gate_in_at": r.gate_in_at.isoformat() if r.gate_in_at else None,
            "gate_out_at": r.gate_out_at.isoformat() if r.gate_out_at else None,
        },
        "contested_at": r.contested_at.isoformat() if r.contested_at else None,
        "created_at": r.created_at.isoformat(),
        "version": r.version,
    }


def event_out(e: StoredEvent) -> dict[str, Any]:
    return {"id": str(e.id), "seq": e.seq, "type": e.type, "actor": e.actor, "data": e.data,
            "at": e.at.isoformat()}

"""The truck register: which transport operator a truck's licence plate belongs to (review 170, finding 1).

One row per plate (quaygate.schema ``trucks``, unique on country and text), kept by port security as it
keeps the badges, from the command line (``quaygate truck register|unregister|show``, quaygate.truck_cli).
The release engine reads it at every nomination (release_service.ports.Directory ``trucks_like``): a
plate is refused (``422 truck_of_another_operator``, that operator unnamed) when the register gives
another transport operator a plate the gate could take for it: the same text under any country, or one
differing only in look-alike characters (each row keeps its ``plate_skeleton``, release_service.domain.reads;
review 175, finding 1), even when the plate itself is the nominator's own; a plate it holds nothing like
is nominated as given, so a port that keeps no register loses nothing, and one that loads its register
gets the rule. A row loaded into the table directly carries its skeleton (the column is required).

Rules:

- a plate is normalised as a nomination's is (release_service.domain.plates ``Plate.parse``: separators
  dropped, upper case, 2 to 12 letters and digits, an ISO 3166-1 alpha-2 country), so ``1-abc-999``
  registers the plate a nomination of ``1ABC999`` names;
- it is registered to an organisation that exists and is a transport operator (active or not: a truck
  stays its operator's while port security has it deactivated);
- a plate registered to one operator is not registered to another: port security unregisters it first,
  saying why (the truck was sold). Registered again to the same operator, nothing changes. A row naming
  no operator (one loaded so) takes the operator given;
- unregistering says why;
- every change is one audit entry in its own transaction (``identity.admin.truck.registered`` and
  ``identity.admin.truck.unregistered``: the plate, the operator, the reason); a refusal writes nothing.

A nomination made before a change stands (the gate matches the plate it names, not the register); the
register judges the nominations made after it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from quaygate.schema import organisations, trucks
from release_service.domain.errors import DomainError
from release_service.domain.parties import OrgKind
from release_service.domain.plates import Plate
from release_service.domain.reads import plate_skeleton

from . import audit

log = logging.getLogger(__name__)

REGISTERED = "identity.admin.truck.registered"
UNREGISTERED = "identity.admin.truck.unregistered"
MAX_REASON = 500

# Codes that mean the input itself is wrong; the others refuse a change the register stands against.
BAD_INPUT = frozenset({"invalid_plate", "unknown_organisation", "wrong_organisation_kind", "reason_required"})


class TruckRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Truck:
    id: uuid.UUID
    plate: Plate
    operator_organisation_id: uuid.UUID | None
    created_at: datetime


def plate_of(text: str, country: str) -> Plate:
    try:
        return Plate.parse(text, country)
    except DomainError as exc:
        raise TruckRefused("invalid_plate", exc.message) from None


def find(engine: sa.Engine, plate: Plate) -> Truck | None:
    with engine.connect() as conn:
        return _find(conn, plate)


def register(engine: sa.Engine, plate: Plate, operator: uuid.UUID, *, actor: str, now: datetime,
             reason: str | None = None) -> tuple[Truck, bool]:
    """Register ``plate`` to ``operator``; the truck and whether anything changed."""
    said = _reason(reason, required=False)
    try:
        with engine.begin() as conn:
            kind = conn.execute(sa.select(organisations.c.kind).where(organisations.c.id == operator)).scalar()
            if kind is None:
                raise TruckRefused("unknown_organisation", f"No organisation {operator}.")
            if kind != OrgKind.TRANSPORT_OPERATOR.value:
                raise TruckRefused("wrong_organisation_kind", f"A truck is registered to a transport operator, "
                                   f"not to a {kind}.")
            held = _find(conn, plate, lock=True)
            if held is not None and held.operator_organisation_id == operator:
                return held, False
            if held is not None and held.operator_organisation_id is not None:
                raise TruckRefused("truck_registered_elsewhere", f"{_text(plate)} is registered to operator "
                                   f"{held.operator_organisation_id}: unregister it first, saying why.")
            if held is None:
                truck = Truck(uuid.uuid4(), plate, operator, now)
                conn.execute(trucks.insert().values(id=truck.id, plate_text=plate.text, plate_country=plate.country,
                                                    plate_skeleton=plate_skeleton(plate.text),
                                                    operator_organisation_id=operator, created_at=now))
            else:
                truck = Truck(held.id, plate, operator, held.created_at)
                conn.execute(trucks.update().where(trucks.c.id == held.id).values(operator_organisation_id=operator))
            audit.record(REGISTERED, at=now, actor=audit.actor_fields(actor), subject=str(truck.id), conn=conn,
                         data=_data(plate, operator, said))
    except sa.exc.IntegrityError:  # the same plate registered at the same time (uq_trucks_plate): nothing written
        raise TruckRefused("truck_registered_elsewhere", f"{_text(plate)} was registered at the same time: show "
                           "it, and unregister it first if it is not this operator's.") from None
    log.info("identity.truck.registered")
    return truck, True


def unregister(engine: sa.Engine, plate: Plate, *, actor: str, now: datetime, reason: str) -> Truck:
    """Take ``plate`` out of the register, saying why; the truck as it was."""
    said = _reason(reason, required=True)
    with engine.begin() as conn:
        held = _find(conn, plate, lock=True)
        if held is None:
            raise TruckRefused("truck_not_registered", f"{_text(plate)} is not registered.")
        conn.execute(trucks.delete().where(trucks.c.id == held.id))
        audit.record(UNREGISTERED, at=now, actor=audit.actor_fields(actor), subject=str(held.id), conn=conn,
                     data=_data(plate, held.operator_organisation_id, said))
    log.info("identity.truck.unregistered")
    return held


def _find(conn: sa.Connection, plate: Plate, *, lock: bool = False) -> Truck | None:
    stmt = sa.select(trucks).where(trucks.c.plate_country == plate.country, trucks.c.plate_text == plate.text)
    row = conn.execute(stmt.with_for_update() if lock else stmt).first()
    if row is None:
        return None
    return Truck(row.id, plate, row.operator_organisation_id, row.created_at)


def _reason(reason: str | None, *, required: bool) -> str | None:
    said = (reason or "").strip()
    if not said:
        if required:
            raise TruckRefused("reason_required", "Say why (--reason).")
        return None
    return audit.printable(said, MAX_REASON)


def _data(plate: Plate, operator: uuid.UUID | None, reason: str | None) -> dict[str, object]:
    return {"plate": plate.as_dict(), "operator_organisation_id": str(operator) if operator else None,
            "reason": reason}


def _text(plate: Plate) -> str:
    return f"{plate.country} {plate.text}"

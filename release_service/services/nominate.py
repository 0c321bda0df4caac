"""Nominate (or re-nominate) a driver and a truck, with optional trailer and slot."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import Actor
from release_service.domain.plates import Plate
from release_service.domain.release import ReleaseRight, Screening, Slot
from release_service.ports import UnitOfWork

from .common import IfMatch, Receipt, acting_organisation_active, load, persist

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NominateCommand:
    plate_text: str
    plate_country: str
    driver_person_id: uuid.UUID | None = None
    badge_scheme: str | None = None
    badge_number: str | None = None
    badge_card_uid: str | None = None
    trailer_text: str | None = None
    trailer_country: str | None = None
    slot_start: datetime | None = None
    slot_end: datetime | None = None


def nominate(uow: UnitOfWork, actor: Actor, release_id: uuid.UUID, cmd: NominateCommand,
             now: datetime, *, if_match: IfMatch | None = None) -> tuple[ReleaseRight, Receipt]:
    right = load(uow, release_id, actor, if_match)
    acting_organisation_active(uow, actor)
    right.require_nominator(actor, now)
    assert actor.organisation_id is not None  # a transport operator
    driver = _driver(uow, cmd, actor.organisation_id, now)
    plate = Plate.parse(cmd.plate_text, cmd.plate_country)
    trailer = Plate.parse(cmd.trailer_text, cmd.trailer_country or cmd.plate_country) if cmd.trailer_text else None
    # The register's trucks the gate could take for this one (review 170 finding 1, review 175 finding
    # 1): the domain refuses the plate when any is another operator's. The trailer is not looked up: the
    # register holds trucks, and trailers change hands.
    registered = uow.directory.trucks_like(plate)
    slot = None
    if cmd.slot_start or cmd.slot_end:
        if not (cmd.slot_start and cmd.slot_end):
            raise DomainError(ErrorCode.INVALID_SLOT, "A slot has a start and an end.")
        slot = Slot(cmd.slot_start, cmd.slot_end)
    # The driver's row share-locked before he is screened, to the commit (Directory.hold_person): a ban
    # load or a suspension in flight is waited for and screened against, or waits and alerts this.
    uow.directory.hold_person(driver)
    screening = uow.screening.screen(driver, terminal=right.terminal, now=now)
    try:
        right.nominate(by=actor, driver_person_id=driver, plate=plate, trailer_plate=trailer, slot=slot,
                       screening=screening, now=now, registered=registered)
    except DomainError as refused:
        if refused.code is ErrorCode.DRIVER_SCREENING_FAILED:
            _screening_refused(uow, actor, right, driver, screening, now)
            refused.keep_effects = True
        raise
    return right, persist(uow, right)


# Port security's trace of a driver its screening kept off a right (review 170, finding 3): a haulier
# putting a banned (or unscreenable) driver on a pickup is what port security watches for, and the
# refusal rolled everything back. The entry alone is committed with the refusal (``keep_effects``,
# services.common.run); the right, its events and the webhooks are untouched. On the audit trail only,
# as the override alarm (services/gate.py): the haulier has the refusal's answer, and the driver's
# screening is no other company's to hear.
SCREENING_REFUSED = "release.nomination.screening_refused"


def _screening_refused(uow: UnitOfWork, actor: Actor, right: ReleaseRight, driver: uuid.UUID,
                       screening: Screening, now: datetime) -> None:
    data = {"release_id": str(right.id), "terminal": right.terminal,
            "operator_organisation_id": str(actor.organisation_id), "driver_person_id": str(driver),
            "screening": screening.result, "reasons": list(screening.reasons)}
    log.warning("release.nominate.screening_refused.%s", screening.result)
    uow.audit.append(SCREENING_REFUSED, actor=actor.as_dict(), subject=str(right.id), data=data, at=now)


def _driver(uow: UnitOfWork, cmd: NominateCommand, operator: uuid.UUID, now: datetime) -> uuid.UUID:
    """The driver named, by person id or by badge, if he drives for ``operator`` (``Directory.drives_for``:
    the badge office links him to it). Anyone else is refused exactly as a person or badge that does not
    exist: a nomination must not tell a haulier whether a stranger's badge exists, is revoked, or whether
    he is under a port ban (the screening's reasons go out only for the operator's own drivers)."""
    if cmd.driver_person_id is not None:
        if uow.directory.person(cmd.driver_person_id) is None or not uow.directory.drives_for(
                cmd.driver_person_id, operator, now=now):
            raise DomainError(ErrorCode.UNKNOWN_PERSON, "No such driver.")
        return cmd.driver_person_id
    if cmd.badge_scheme and (cmd.badge_number or cmd.badge_card_uid):
        badge = uow.directory.badge(scheme=cmd.badge_scheme, number=cmd.badge_number, card_uid=cmd.badge_card_uid)
        if badge is None or not uow.directory.drives_for(badge.person_id, operator, now=now):
            raise DomainError(ErrorCode.UNKNOWN_BADGE, "No such badge.")
        return badge.person_id
    raise DomainError(ErrorCode.UNKNOWN_PERSON, "Name the driver by driver_person_id or by badge.")

"""Organisations, persons and badges, read for the release engine."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from quaygate.schema import (
    badges,
    membership_in_force,
    memberships,
    organisations,
    persons,
    releases,
    transfers,
    trucks,
)
from release_service.domain.gate import PERSON_ACTIVE, BadgeRead, Reason
from release_service.domain.parties import Organisation, OrgKind
from release_service.domain.plates import Plate
from release_service.domain.reads import plate_skeleton
from release_service.domain.release import LIVE_STATES, Screening, State, TransferState
from release_service.ports import BadgeRef, Directory, PersonRef, PortBanLookup

from .gate import SqlGateStore


class SqlDirectory:
    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def organisation(self, organisation_id: uuid.UUID) -> Organisation | None:
        row = self._conn.execute(
            sa.select(organisations).where(organisations.c.id == organisation_id)
        ).mappings().first()
        if row is None:
            return None
        return Organisation(row["id"], row["name"], OrgKind(row["kind"]), row["eori"], row["vat"], row["terminal_code"],
                            bool(row["active"]))

    def person(self, person_id: uuid.UUID) -> PersonRef | None:
        row = self._conn.execute(sa.select(persons).where(persons.c.id == person_id)).mappings().first()
        if row is None:
            return None
        return PersonRef(row["id"], row["given_name"], row["family_name"], row["employer_organisation_id"],
                         row["status"])

    def hold_person(self, person_id: uuid.UUID) -> None:
        """FOR SHARE on the person's row until the caller's transaction ends (SQLite's writers run one at
        a time and need none). A nomination takes it before it screens its driver (services/nominate.py):
        a ban load takes the row FOR NO KEY UPDATE (identity.badges.service ``deactivate_for_ban``)
        before it looks for his live nominations (identity.bans.alerts ``live_nominations_of``), and a
        suspension UPDATEs it before ``suspension_alerts``. So either they wait for this nomination and
        then find it (and alert it), or it waits for them and is screened against what they committed
        (statements after the wait see it, READ COMMITTED). Never a nomination screened clear that
        commits unseen after the load looked (review 147, finding 1)."""
        self._conn.execute(sa.select(persons.c.id).where(persons.c.id == person_id).with_for_update(read=True))

    def badge(self, *, scheme: str, number: str | None, card_uid: str | None) -> BadgeRef | None:
        """The badge a nomination names, read as the gate reads it (``SqlGateStore.badge_lookup``: the
        number and the card UID in the badge office's canonical form, by identity.domain.badges), so
        it names exactly the badge the gate will find from the same spelling (review 174, finding 5);
        a spelling that cannot be a badge of the scheme finds none. Both given: both must match."""
        if not number and not card_uid:
            return None
        lookup = SqlGateStore.badge_lookup(BadgeRead(scheme, number, card_uid))
        if lookup is None:
            return None
        canonical, number, card_uid = lookup
        stmt = sa.select(badges).where(badges.c.scheme == canonical.value)
        if number:
            stmt = stmt.where(badges.c.number == number)
        if card_uid:
            stmt = stmt.where(badges.c.card_uid == card_uid)
        row = self._conn.execute(stmt).mappings().first()
        return _badge(row) if row else None

    def trucks_like(self, plate: Plate) -> list[tuple[Plate, uuid.UUID | None]]:
        # By the plate's skeleton (ix_trucks_plate_skeleton, review 175 finding 1), whatever the country;
        # the plate as Plate.parse normalised it, as the register stores it. Unlocked: a registration
        # committed after this read leaves the nomination made on it standing, as one made before the
        # registration does.
        rows = self._conn.execute(sa.select(trucks.c.plate_text, trucks.c.plate_country,
                                            trucks.c.operator_organisation_id)
                                  .where(trucks.c.plate_skeleton == plate_skeleton(plate.text)))
        return [(Plate(r.plate_text, r.plate_country), r.operator_organisation_id) for r in rows]

    def badges_of(self, person_id: uuid.UUID) -> list[BadgeRef]:
        rows = self._conn.execute(sa.select(badges).where(badges.c.person_id == person_id)).mappings()
        return [_badge(r) for r in rows]

    def drives_for(self, person_id: uuid.UUID, organisation_id: uuid.UUID, *, now: datetime) -> bool:
        # A driver membership is read first, and its row share-locked until the nomination commits
        # (FOR SHARE; SQLite's writers run one at a time and need none): port security's removal of
        # that membership deletes the row before it looks for his live nominations
        # (identity.memberships), so it waits for this nomination and then finds it (409), or removes
        # the membership first and this read no longer finds it. Never a nomination standing on a
        # membership removed as it was made.
        # A driver membership past its valid_until links him no more (migration 0019), swept or not.
        member = sa.select(sa.literal(1)).where(memberships.c.person_id == person_id,
                                                memberships.c.organisation_id == organisation_id,
                                                memberships.c.role == "driver",
                                                membership_in_force(now)).with_for_update(read=True)
        if self._conn.execute(member).first() is not None:
            return True
        # Only a badge usable now links him: a revoked, blocked, inactive, expired or not yet valid badge
        # issued for a former employer must not let it go on nominating him and reading his screening.
        # The person's own employer_organisation_id links him to nothing: it is who registered him for
        # whom, set once when port security created his row and never updated, so as a link it lasted
        # for good, past the removal or expiry of his driver membership (review 152, finding 2).
        badged = sa.select(sa.literal(1)).where(badges.c.person_id == person_id,
                                                badges.c.employer_organisation_id == organisation_id,
                                                badges.c.status == "active",
                                                badges.c.valid_from <= now, badges.c.valid_until > now)
        return self._conn.execute(badged).first() is not None

    def acts_in(self, person_id: uuid.UUID, organisation_id: uuid.UUID, roles: Collection[str], *,
                now: datetime) -> bool:
        """Whether the person is active and holds one of ``roles`` in the organisation, in force at ``now``.
        His row is share-locked first, until the caller's transaction ends (FOR SHARE; SQLite's writers
        run one at a time): a removal or an expiry of his role (identity.memberships, which lock his row
        first) and a suspension (its UPDATE of the row) wait for it, then see what it wrote; or they
        commit first, and the memberships, read in a statement after the wait, are seen without them."""
        status = self._conn.execute(sa.select(persons.c.status).where(persons.c.id == person_id)
                                    .with_for_update(read=True)).scalar_one_or_none()
        if status != PERSON_ACTIVE:
            return False
        return self._conn.execute(sa.select(sa.literal(1)).where(
            memberships.c.person_id == person_id, memberships.c.organisation_id == organisation_id,
            memberships.c.role.in_(sorted(roles)), membership_in_force(now))).first() is not None

    def live_nominations(self, person_id: uuid.UUID, organisation_id: uuid.UUID, *, now: datetime) -> list[uuid.UUID]:
        """The rights ``organisation_id`` holds nominated to ``person_id`` that may still take him
        through a gate: nominated (not yet gated in, not ended; whatever his answer, which the operator
        may still change by nominating again) and in their window (past ``valid_until`` a right has
        lapsed, even before the lapse sweeper marks it). By id. Identity asks before it removes his
        driver membership of that organisation (identity.memberships)."""
        return list(self._conn.execute(
            sa.select(releases.c.id)
            .where(releases.c.driver_person_id == person_id, releases.c.holder_organisation_id == organisation_id,
                   releases.c.state == State.NOMINATED.value, releases.c.valid_until > now)
            .order_by(releases.c.id)).scalars())


    def rights_in_motion(self, organisation_id: uuid.UUID) -> list[uuid.UUID]:
        held = sa.select(releases.c.id).where(releases.c.holder_organisation_id == organisation_id,
                                              releases.c.state.in_(sorted(state.value for state in LIVE_STATES)))
        coming = sa.select(transfers.c.release_id).where(transfers.c.to_organisation_id == organisation_id,
                                                         transfers.c.state == TransferState.PENDING.value)
        return sorted(set(self._conn.execute(sa.union(held, coming)).scalars()))


def _badge(row: Any) -> BadgeRef:
    return BadgeRef(row["id"], row["person_id"], row["scheme"], row["number"], row["card_uid"], row["status"],
                    row["valid_from"], row["valid_until"])


class BadgeScreening:
    """Screening at nomination (SPEC.md "The release right"): the driver is not suspended by port
    security, holds a badge that is active and in date, and no port ban is in effect for him at the
    terminal's port (issue 4). The same screening judges the driver an override lets in
    (services/gate.py) and the driver of an offline pass at its reconcile (services/gate_passes.py).

    Every check always runs, so a banned driver (whose badges the ban load just deactivated) is
    refused as ``banned`` with ``person_banned``, not merely for his badge, and a suspended one is
    refused with ``person_suspended`` whatever his badges say. Result precedence: banned, then refused
    (suspended, or no usable badge), then unavailable (reason ``screening_unavailable``).
    """

    def __init__(self, directory: Directory, bans: PortBanLookup | None = None) -> None:
        self._directory = directory
        self._bans = bans

    def screen(self, person_id: uuid.UUID, *, terminal: str, now: datetime) -> Screening:
        person = self._person(person_id)
        badge = self._badge(person_id, now)
        ban = self._bans.screen(person_id, terminal=terminal, now=now) if self._bans else Screening("clear")
        said = (person, badge, ban)
        for result in ("banned", "refused", "unavailable"):
            if any(s.result == result for s in said):
                return Screening(result, tuple(sorted({r for s in said for r in s.reasons})))
        return Screening("clear")

    def _person(self, person_id: uuid.UUID) -> Screening:
        """Port security's suspension (identity.authn.cutoff): a status other than plainly active
        refuses (fail closed). A person not found is the badge check's to refuse (no badge of his)."""
        person = self._directory.person(person_id)
        if person is not None and person.status != PERSON_ACTIVE:
            return Screening("refused", (Reason.PERSON_SUSPENDED.value,))
        return Screening("clear")

    def _badge(self, person_id: uuid.UUID, now: datetime) -> Screening:
        held = self._directory.badges_of(person_id)
        if not held:
            return Screening("refused", ("badge_unknown",))
        usable = [b for b in held if b.status == "active" and b.valid_from <= now < b.valid_until]
        if usable:
            return Screening("clear")
        reasons = sorted({_badge_reason(b, now) for b in held})
        return Screening("refused", tuple(reasons))


def _badge_reason(b: BadgeRef, now: datetime) -> str:
    if b.status != "active":
        return f"badge_{b.status}"
    return "badge_expired" if now >= b.valid_until else "badge_not_yet_valid"

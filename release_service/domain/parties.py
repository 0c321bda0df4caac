"""Who acts: organisations by kind, and the actor behind a call."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum


class OrgKind(StrEnum):
    SHIPPING_LINE = "shipping_line"
    RELEASE_PARTY = "release_party"
    TRANSPORT_OPERATOR = "transport_operator"
    TERMINAL = "terminal"
    CUSTOMS = "customs"
    PORT_AUTHORITY = "port_authority"


# Kinds that may hold a release right and pass it on (SPEC.md "Who uses it").
HOLDER_KINDS = frozenset({OrgKind.RELEASE_PARTY, OrgKind.TRANSPORT_OPERATOR})


@dataclass(frozen=True, slots=True)
class Organisation:
    id: uuid.UUID
    name: str
    kind: OrgKind
    eori: str | None = None
    vat: str | None = None
    terminal_code: str | None = None  # for kind terminal: the facility it runs
    active: bool = True  # port security deactivated it (issue 4): it receives no new rights


# A person signed in to an organisation's console acts for it only in one of its roles there that
# manage its rights (issue, transfer, nominate, lights, webhooks). A driver acts for himself, through
# the driver app: a member who is only a driver neither acts for his company nor reads its rights.
ACTING_ROLES = frozenset({"dispatcher", "org_admin"})
READING_ROLES = ACTING_ROLES | {"port_security_admin", "badge_office"}


@dataclass(frozen=True, slots=True)
class Actor:
    """The caller, as the access token says: a client acting for an organisation, or a person."""

    client_id: str
    organisation_id: uuid.UUID | None
    kind: OrgKind | None
    person_id: uuid.UUID | None = None
    terminal_code: str | None = None  # gate and terminal clients are bound to one terminal
    scopes: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        """Port security: a client of the port authority, or a member signed in to its console. Not a
        port_security_admin role carried by a console of no organisation (such a token carries the
        person's roles in every organisation: any integrator's console would see every right)."""
        return self.kind is OrgKind.PORT_AUTHORITY

    @property
    def for_organisation_person(self) -> bool:
        """A person acting for an organisation (a console token), not a machine client or a driver."""
        return self.person_id is not None and self.organisation_id is not None

    @property
    def may_act(self) -> bool:
        """May act on the organisation's rights: a machine client of it, or a member in an acting role."""
        return not self.for_organisation_person or bool(self.roles & ACTING_ROLES)

    @property
    def may_read(self) -> bool:
        """May read the organisation's rights: a machine client, or a member in any role but driver."""
        return not self.for_organisation_person or bool(self.roles & READING_ROLES)

    def as_dict(self) -> dict[str, str | None]:
        return {
            "client_id": self.client_id,
            "organisation_id": str(self.organisation_id) if self.organisation_id else None,
            "kind": self.kind.value if self.kind else None,
            "person_id": str(self.person_id) if self.person_id else None,
        }

"""How much of a release right and of its history each party sees: data minimisation (GDPR Art. 5(1)(c)
and Art. 25; a port community system such as Portbase or NxtPort CPu shows each party its own leg).

Whether a party sees a right at all is ``services.common.can_see``; this module decides what of it::

    viewer                                   the right                      its events
    issuing line, customs, the right's       all                            all
    terminal, port security
    an organisation of the chain: the        its nomination and pending     in full: those of its own holds
    current holder (the nominating           transfer only when they are    and of the transfers it was party
    operator), a past holder, the            its own; the chain of holders  to. Of the others, type, time and
    recipient of a pending offer             as far as it passed the right  state only (``FOREIGN_KEPT``: and a
                                                                            light's status, a transfer's known
                                                                            companies); every other key null
    the nominated driver                     all (the nomination is his)    all, another driver's nominations
                                                                            and answers null; no staff ids

Customs' reason for its light goes to the full-sight viewers only (the chain and the driver, and every
webhook, get its status and time: ``published_data``).

Who of a terminal's staff acted (``STAFF_KEYS``: the officer who let a refused truck in, on
``release.gate_override`` and in ``release.gate_offline_flagged``'s ``override``) is read by the terminal
(its own staff) and port security (the audit trail keeps it), by nobody else: the line and customs read it
null, as the chain, the driver and every webhook do (``sees_staff``). A name is what an insider's buyer
needs to reach the desk that lets trucks in (SPEC.md; review 171, finding 2).

Customs' hold a right carries from another right of its container (``ReleaseRight.customs_carried``: the
hold a new right takes over, review 141, not set on it since) is customs' word on that other right, maybe
another line's: only customs and port security see it (``sees_carried_hold``). To everyone else, its own
line included, the right's customs light is the one any right is issued with (red, "awaiting customs
release", set at its issue) and its ``release.issued`` names no ``customs_carried``, in every read and
webhook: else any line issuing any container on a made-up vessel call learnt whether customs selected it
for scan, and on what grounds (review 152, finding 1). The gate holds the right by the hold all the same,
and answers ``customs_hold`` as it does for any right's red of issue.

The line answers for the right and sees its whole history; customs, the terminal and port security
oversee it. A transport operator's nomination does not travel with the right (``accept_transfer``
clears it), so a driver and truck named by one holder are a third party's data to every other
company of the chain, the holder before as much as the holder after: each sees the nominations of
its own holds only. Fields stay in the payload with null (the published schema keeps its names).
Webhooks need none of this: each event goes to its own audience only (``services.common.audience``).

Standard library only (STYLE.md #1).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from .parties import HOLDER_KINDS, Actor, OrgKind
from .release import ReleaseRight, awaiting_customs

# Events whose data is all about one nomination: the driver, the truck, the slot, the screening and
# the driver's answer. Shown to someone else, every key of them but the right's state is null.
NOMINATION_EVENTS = frozenset({"release.nominated", "release.renominated", "release.nomination.accepted",
                               "release.nomination.refused"})
# What a company of the chain reads of another company's event (``_foreign``), whatever its type: the type,
# the time, and of its data these keys alone: the right's state after it, and a light's status (what every
# viewer of the right acts on, and reads on the right itself). Every other key is null: a decline's reason,
# the holder port security deactivated, a nomination's driver, truck and slot, a transfer's id, and any key
# an event type added later carries, until it is named here (review 170, finding 2: before, only the
# nomination details and unknown companies were nulled, and a later recipient read the reason of a decline
# by a company it never dealt with, a past holder that port security struck a later holder off).
FOREIGN_KEPT = frozenset({"state", "status"})
# And of a transfer, the companies it passed between that the reader knows (the chain it is shown).
TRAVEL_KEYS = frozenset({"from", "to"})
ISSUED = "release.issued"
TRANSFER_REQUESTED = "release.transfer.requested"
TRANSFER_ACCEPTED = "release.transfer.accepted"
# Customs' reason for its light is customs' own word (a scan selection's grounds: a risk profile, an
# informant): the line, the terminal, customs and port security read it; the chain and the driver see the
# light's status (hold, scan, green), which is what they act on, and its time (review 110).
CUSTOMS_LIGHT = "release.light.customs"
# What ``release.issued`` says of the hold the new right carried (status, the right it came from).
CUSTOMS_CARRIED = "customs_carried"
# Keys of event data, at any depth, that name a member of a terminal's staff (``sees_staff``).
STAFF_KEYS = frozenset({"officer"})


class Sight(StrEnum):
    FULL = "full"  # the line, customs, the right's terminal, port security
    CHAIN = "chain"  # a company that holds, held or is offered the right: its own leg
    DRIVER = "driver"  # the nominated driver, a person acting for himself


class EventLike(Protocol):
    @property
    def type(self) -> str: ...

    @property
    def actor(self) -> Mapping[str, Any]: ...

    @property
    def data(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Shown:
    """An event's actor and data as one viewer is shown them."""

    actor: dict[str, Any]
    data: dict[str, Any]


def sight(right: ReleaseRight, actor: Actor) -> Sight:
    """Which view of a right the actor gets (it may see the right: ``can_see`` said so)."""
    if actor.is_admin or actor.kind in (OrgKind.CUSTOMS, OrgKind.TERMINAL):
        return Sight.FULL
    if actor.organisation_id is None:
        return Sight.DRIVER
    if actor.organisation_id == right.issuer_organisation_id:
        return Sight.FULL
    return Sight.CHAIN


def sees_carried_hold(actor: Actor) -> bool:
    """Whether the actor sees customs' hold a right carries from another right of its container, and where
    from: customs and port security. Not the line (of this right, or the other's), the terminal, the chain
    or the driver."""
    return actor.is_admin or actor.kind is OrgKind.CUSTOMS


def sees_staff(actor: Actor) -> bool:
    """Whether the actor reads who of a terminal's staff acted (``STAFF_KEYS``): the terminal (``can_see``
    shows it the rights of its own terminal only) and port security. Not the line, customs, the chain or the
    driver."""
    return actor.is_admin or actor.kind is OrgKind.TERMINAL


def minimise_right(right: ReleaseRight, actor: Actor, chain: list[uuid.UUID] | None = None,
                   ) -> tuple[ReleaseRight, list[uuid.UUID] | None]:
    """The right and its chain of holders as the actor is shown them. A company of the chain that does
    not hold the right sees no nomination (the holder's, never its own: a transfer clears it), no
    transfer it is not party to, and the chain only as far as the holder it passed the right to. A hold
    the right carries shows as the customs light it was issued with (``sees_carried_hold``)."""
    if right.customs_carried and not sees_carried_hold(actor):
        right = replace(right, customs=awaiting_customs(right.created_at))
    view = sight(right, actor)
    if view is Sight.FULL:
        return right, chain
    if right.customs.reason is not None:
        right = replace(right, customs=replace(right.customs, reason=None))
    if view is Sight.DRIVER or actor.organisation_id == right.holder_organisation_id:
        return right, chain
    me = actor.organisation_id
    pending = right.pending_transfer
    mine = pending is not None and me in (pending.from_organisation_id, pending.to_organisation_id)
    shown = replace(right, nomination=None, pending_transfer=pending if mine else None)
    return shown, None if chain is None else visible_chain(chain, me)


def visible_chain(chain: Sequence[uuid.UUID], me: uuid.UUID | None) -> list[uuid.UUID]:
    """A past holder knows the chain up to the company it last passed the right to; the holder, or the
    recipient of an offer that never held it, the whole of it."""
    if me not in chain or chain[-1] == me:
        return list(chain)
    last = len(chain) - 1 - list(reversed(chain)).index(me)
    return list(chain[: last + 2])


def minimise_events(right: ReleaseRight, actor: Actor, events: Sequence[EventLike]) -> list[Shown]:
    """Each event's actor and data as the actor is shown them, in order."""
    view = sight(right, actor)
    if view is Sight.FULL:
        carried, staff = sees_carried_hold(actor), sees_staff(actor)
        return [Shown(dict(e.actor), _for_full(e, carried=carried, staff=staff)) for e in events]
    if view is Sight.DRIVER:
        shown = [_for_driver(e, actor.person_id) for e in events]
    else:
        shown = _for_chain(right, actor.organisation_id, events)
    return [Shown(s.actor, published_data(e.type, s.data)) for e, s in zip(events, shown, strict=True)]


def published_data(event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """An event's data as anyone but the full-sight viewers gets it: in a webhook (every event's audience
    holds a company of the chain) and in the chain's and the driver's reads. Customs' reason null, no
    ``customs_carried`` (``_uncarried``: a webhook's payload is one for its whole audience, customs too,
    which reads it on the right's events), and no member of a terminal's staff (``_unstaffed``)."""
    if event_type == CUSTOMS_LIGHT and data.get("reason") is not None:
        data = {**data, "reason": None}
    return _unstaffed(_uncarried(event_type, data))


def _for_full(e: EventLike, *, carried: bool, staff: bool) -> dict[str, Any]:
    """An event's data as a full-sight viewer reads it: the carried hold to customs and port security
    (``sees_carried_hold``), the terminal's staff to the terminal and port security (``sees_staff``)."""
    data = dict(e.data) if carried else _uncarried(e.type, e.data)
    return data if staff else _unstaffed(data)


def _unstaffed(data: Mapping[str, Any]) -> dict[str, Any]:
    """The data with every key of ``STAFF_KEYS`` null, at any depth (an offline flag's ``override``)."""
    return {k: None if k in STAFF_KEYS else _unstaffed(v) if isinstance(v, Mapping) else v
            for k, v in data.items()}


def _uncarried(event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The event's data without what ``release.issued`` says of a hold the right carried, for everyone but
    customs and port security (``sees_carried_hold``): the key is on no other right's issue."""
    if event_type == ISSUED and CUSTOMS_CARRIED in data:
        return {k: v for k, v in data.items() if k != CUSTOMS_CARRIED}
    return dict(data)


def _for_driver(e: EventLike, me: uuid.UUID | None) -> Shown:
    his = str(me) if me is not None else None
    if e.type in NOMINATION_EVENTS and e.data.get("driver_person_id") != his:
        return Shown(_without_person(e.actor, his), _nulled(e.data, e.data.keys()))
    return Shown(_without_person(e.actor, his), dict(e.data))


def _for_chain(right: ReleaseRight, me: uuid.UUID | None, events: Sequence[EventLike]) -> list[Shown]:
    mine = str(me)
    holder: str | None = None
    chain: list[str] = []
    transfers: dict[str, tuple[Any, Any]] = {}
    own: list[bool] = []
    for e in events:
        if e.type == ISSUED:
            holder = _text(e.data.get("holder"))
            chain.append(str(holder))
        tid = _text(e.data.get("transfer_id"))
        if e.type == TRANSFER_REQUESTED and tid is not None:
            transfers[tid] = (e.data.get("from"), e.data.get("to"))
        party_to = tid is not None and mine in transfers.get(tid, ())
        own.append(holder == mine or party_to)
        if e.type == TRANSFER_ACCEPTED:
            holder = _text(e.data.get("to"))
            chain.append(str(holder))
    known = {mine, str(right.issuer_organisation_id), str(right.holder_organisation_id)}
    known.update(str(c) for c in visible_chain([uuid.UUID(c) for c in chain if _is_uuid(c)], me))
    known.update(str(x) for pair in transfers.values() if mine in pair for x in pair)
    return [Shown(dict(e.actor), dict(e.data)) if is_own else _foreign(e, mine, known)
            for e, is_own in zip(events, own, strict=True)]


def _foreign(e: EventLike, me: str, known: set[str]) -> Shown:
    """Another company's event: what happened, when, and the state it left the right in (``FOREIGN_KEPT``);
    not why, who was driven, or what befell another company."""
    data = _nulled(e.data, [k for k, v in e.data.items() if k not in FOREIGN_KEPT
                            and not (k in TRAVEL_KEYS and str(v) in known)])
    actor = dict(e.actor)
    if actor.get("organisation_id") != me:
        actor["person_id"] = None  # another company's member, or a driver
    if actor.get("kind") in {k.value for k in HOLDER_KINDS} and actor.get("organisation_id") not in known:
        actor.update(client_id=None, organisation_id=None)
    return Shown(actor, data)


def _nulled(data: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The data with these keys null; the right's state after the event always stays."""
    out = dict(data)
    for k in keys:
        if k != "state":
            out[k] = None
    return out


def _without_person(actor: Mapping[str, Any], me: str | None) -> dict[str, Any]:
    """A driver sees who acted by company and client, not which member or other driver did."""
    out = dict(actor)
    if out.get("person_id") != me:
        out["person_id"] = None
    return out


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True

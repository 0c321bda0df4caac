"""``quaygate truck register|unregister|show PLATE --country CC``: the truck register (identity.trucks;
review 170, finding 1) from the command line.

Whoever runs these commands holds the database settings, i.e. is port security. A nomination of a truck
the register gives to another transport operator is refused; a plate it does not hold is nominated as
given. Bad input is a plain message on stderr and exit 2; a refused change (the plate registered to
another operator, or not registered) is exit 1. The actor on the audit trail is ``cli:<user>``.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any


def _run(args: argparse.Namespace) -> int:
    from identity import trucks

    from .cli import _settings
    from .container import Container
    from .terminal_cli import _actor

    try:
        plate = trucks.plate_of(args.plate, args.country)
        operator = uuid.UUID(args.operator) if getattr(args, "operator", None) else None
    except trucks.TruckRefused as exc:
        print(f"refused ({exc.code}): {exc.message}", file=sys.stderr)
        return 2
    except ValueError:
        print("--operator is an id (a UUID)", file=sys.stderr)
        return 2
    try:
        container = Container.build(_settings())
    except ValueError as exc:
        print(f"quaygate: {exc}", file=sys.stderr)
        return 2
    now = container.clock.now()
    try:
        if args.truck_cmd == "show":
            truck = trucks.find(container.engine, plate)
            if truck is None:
                print(f"truck {plate.country} {plate.text} is not registered", file=sys.stderr)
                return 1
            print(f"truck {plate.country} {plate.text} registered to {truck.operator_organisation_id or '-'}"
                  f"  since {truck.created_at.date().isoformat()}")
        elif args.truck_cmd == "register":
            assert operator is not None  # required by the parser
            truck, changed = trucks.register(container.engine, plate, operator, actor=_actor(), now=now,
                                             reason=args.reason)
            print(f"truck {plate.country} {plate.text} registered to {operator}"
                  + ("" if changed else " (already registered so: nothing changed)"))
        else:
            truck = trucks.unregister(container.engine, plate, actor=_actor(), now=now, reason=args.reason)
            print(f"truck {plate.country} {plate.text} unregistered (it was {truck.operator_organisation_id or '-'}'s)")
    except trucks.TruckRefused as exc:
        print(f"refused ({exc.code}): {exc.message}", file=sys.stderr)
        return 2 if exc.code in trucks.BAD_INPUT else 1
    finally:
        container.close()
    return 0


def register(sub: Any) -> None:
    truck = sub.add_parser("truck", help="the truck register: which transport operator a plate belongs to")
    truck_sub = truck.add_subparsers(dest="truck_cmd", required=True)
    reg = truck_sub.add_parser("register", help="register a truck's plate to a transport operator; another "
                               "operator's nominations of it are refused from then on")
    unreg = truck_sub.add_parser("unregister", help="take a plate out of the register, saying why")
    show = truck_sub.add_parser("show", help="whose truck the register says a plate is")
    for p in (reg, unreg, show):
        p.add_argument("plate", help="the licence plate, e.g. 1-ABC-999 (separators dropped)")
        p.add_argument("--country", required=True, help="ISO 3166-1 alpha-2, e.g. BE")
        p.set_defaults(func=_run)
    reg.add_argument("--operator", required=True, help="the transport operator's organisation id")
    reg.add_argument("--reason", help="why (on the audit trail)")
    unreg.add_argument("--reason", required=True, help="why (on the audit trail): sold, scrapped, a mistake")

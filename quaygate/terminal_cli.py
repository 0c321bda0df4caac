"""``quaygate terminal policy show|set CODE`` (issue 5): a terminal's gate policy from the command line.

The options are made from ``TerminalPolicy``'s fields (services/gate_policy.py ``FIELDS``): a field the
domain gains is an option here at once. A true/false field is ``--face-required`` / ``--no-face-required``;
the others take a value (``--plate-min-confidence 0.85``, ``--screening-unavailable deny``). Only the
options given change; the same checks, lock, audit entry (actor ``cli:<user>``) and cache invalidation
as the admin API. Plain messages; exit 2 for bad input or an unknown terminal, nothing changed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:100]
    except (KeyError, OSError):
        return "cli"


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse(name: str, default: Any, raw: Any) -> Any:
    """An option's text as the field's type; the domain validates the value itself."""
    if isinstance(default, bool):
        return raw
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"{_option(name)} must be {'a whole number' if isinstance(default, int) else 'a number'}, "
                         f"not {raw!r}") from None
    return raw


def _print(view: Any, names: list[str] | None = None) -> None:
    body = view.as_json()
    if names is not None:
        body["changed"] = names
    print(json.dumps(body, indent=2))


def cmd_policy(args: argparse.Namespace) -> int:
    from identity.audit import actor_fields
    from release_service.adapters.sqla.gate_policy import SqlTerminalRegistry
    from release_service.api.routes import unit_of_work
    from release_service.services import gate_policy as service

    from .container import Container
    from .settings import Settings

    changes: dict[str, Any] = {}
    if args.policy_cmd == "set":
        try:
            for name, default in service.DEFAULTS.items():
                raw = getattr(args, f"policy_{name}")
                if raw is not None:
                    changes[name] = _parse(name, default, raw)
        except ValueError as exc:
            print(f"nothing changed: {exc}", file=sys.stderr)
            return 2
        if not changes:
            print("nothing to change: give at least one of " + ", ".join(_option(n) for n in service.FIELD_NAMES),
                  file=sys.stderr)
            return 2
    container = Container.build(Settings())
    try:
        with unit_of_work(container, readonly=args.policy_cmd == "show") as uow:
            registry = SqlTerminalRegistry(uow.connection)
            if args.policy_cmd == "show":
                _print(service.show(uow.gate, registry, args.code))
                return 0
            actor = _actor()
            _, after, names = service.change(uow, registry, args.code, changes, actor=actor_fields(actor), by=actor,
                                             now=container.clock.now())
    except service.PolicyRefused as exc:
        print(f"nothing changed: {exc.detail}" if args.policy_cmd == "set" else exc.detail, file=sys.stderr)
        return 2
    finally:
        container.close()
    _print(after, names)
    return 0


def register(sub: Any) -> None:
    from release_service.services.gate_policy import DEFAULTS

    terminal = sub.add_parser("terminal", help="terminals")
    terminal_sub = terminal.add_subparsers(dest="terminal_cmd", required=True)
    policy = terminal_sub.add_parser("policy", help="a terminal's gate policy")
    policy_sub = policy.add_subparsers(dest="policy_cmd", required=True)
    show = policy_sub.add_parser("show", help="the policy in force (the defaults when none was set)")
    show.add_argument("code", help="the terminal code, e.g. BEANR-K1700")
    show.set_defaults(func=cmd_policy)
    set_ = policy_sub.add_parser("set", help="change the fields given; the others keep their value")
    set_.add_argument("code", help="the terminal code, e.g. BEANR-K1700")
    for name, default in DEFAULTS.items():
        dest = f"policy_{name}"
        if isinstance(default, bool):
            set_.add_argument(_option(name), dest=dest, action="store_const", const=True, default=None,
                              help=f"(default {str(default).lower()})")
            set_.add_argument("--no-" + name.replace("_", "-"), dest=dest, action="store_const", const=False)
        else:
            set_.add_argument(_option(name), dest=dest, metavar="VALUE", help=f"(default {default})")
    set_.set_defaults(func=cmd_policy)

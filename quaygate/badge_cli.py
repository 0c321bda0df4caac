"""``quaygate badge issue|status|activate|show``: the badge register from the command line (issue 4).

Whoever runs these commands holds the database settings, i.e. is the badge office: numbers are
printed in full. Bad input is a plain message on stderr and exit 2; a refused change (an illegal
transition, a taken number, a port ban) is exit 1. The actor on the audit trail is ``cli:<user>``.

Issuing a badge and making it active again are screened against port bans with the screening the
app gives the API (identity.bans.screening ``from_settings``; review 144, finding 2): once a register
is configured, a banned person is refused (``person_banned``), one with no national number linked
too (``person_unidentified``), and with no list in force, or one too old, the change fails closed
(``screening_unavailable``). Each is exit 1 and writes no badge.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

# Codes that mean the input itself is wrong (exit 2); any other refusal is exit 1.
_BAD_INPUT = frozenset({"invalid_scheme", "invalid_badge_number", "invalid_card_uid", "invalid_validity",
                        "validity_too_long", "reason_required", "reason_too_long", "invalid_status",
                        "unknown_person", "unknown_organisation", "unknown_terminal", "filter_required"})


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:100]
    except (KeyError, OSError):
        return "cli"


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _Bad(f"{what} is an id (a UUID)") from None


def _when(value: str, what: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise _Bad(f"{what} is a date or a date and time (ISO 8601), e.g. 2030-12-31") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class _Bad(Exception):
    pass


def _run(args: argparse.Namespace) -> int:
    from identity.badges.service import BadgeError, BadgeService
    from identity.bans.screening import from_settings as ban_screening

    from .cli import _settings
    from .container import Container

    try:
        settings = _settings()
        container = Container.build(settings)
    except ValueError as exc:
        print(f"quaygate: {exc}", file=sys.stderr)
        return 2
    try:
        # The API's screening (quaygate.app: app.state.ban_screening), never NoBanRegister's "clear"
        # for all while a register is configured: review 144, finding 2.
        service = BadgeService(container.engine, ban_screening(settings, container.engine))
        return int(args.badge_func(args, service))
    except _Bad as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except BadgeError as exc:
        print(f"refused ({exc.code}): {exc.message}", file=sys.stderr)
        return 2 if exc.code in _BAD_INPUT else 1
    finally:
        container.close()


def _print(row: Any) -> None:
    print(f"badge {row.id}  {row.scheme} {row.number}  card {row.card_uid or '-'}  {row.status.value}"
          f"  valid {row.valid_from.date().isoformat()} to {row.valid_until.date().isoformat()}"
          f"  person {row.person_id}")


def _issue(args: argparse.Namespace, service: Any) -> int:
    from identity.badges.service import IssueBadge

    now = datetime.now(UTC)
    cmd = IssueBadge(
        person_id=_uuid(args.person, "--person"), scheme=args.scheme, number=args.number, card_uid=args.card_uid,
        employer_organisation_id=_uuid(args.employer, "--employer") if args.employer else None,
        valid_from=_when(args.valid_from, "--valid-from") if args.valid_from else now,
        valid_until=_when(args.valid_until, "--valid-until"), reason=args.reason)
    done = service.issue(cmd, actor=_actor(), now=now)
    _print(done.badge)
    print(f"screening: {done.screening.status}")
    return 0


def _status(args: argparse.Namespace, service: Any) -> int:
    row = service.change_status(_uuid(args.badge_id, "BADGE_ID"), args.status, reason=args.reason, actor=_actor(),
                                now=datetime.now(UTC))
    _print(row)
    return 0


def _activate(args: argparse.Namespace, service: Any) -> int:
    badge_id = _uuid(args.badge_id, "BADGE_ID")
    if args.withdraw:
        service.withdraw(badge_id, args.terminal, reason=args.withdraw, actor=_actor(), now=datetime.now(UTC))
        print(f"badge {badge_id} withdrawn at {args.terminal}")
    else:
        service.activate(badge_id, args.terminal, actor=_actor(), now=datetime.now(UTC))
        print(f"badge {badge_id} activated at {args.terminal}")
    return 0


def _show(args: argparse.Namespace, service: Any) -> int:
    if args.number or args.card_uid or args.person:
        rows = service.find(number=args.number, card_uid=args.card_uid,
                            person_id=_uuid(args.person, "--person") if args.person else None)
        if not rows:
            print("no such badge", file=sys.stderr)
            return 1
        for row in rows:
            _print(row)
        return 0
    if not args.badge_id:
        raise _Bad("give BADGE_ID, --number, --card-uid or --person")
    row, activations, history = service.get(_uuid(args.badge_id, "BADGE_ID"))
    _print(row)
    for a in activations:
        print(f"  activated at {a['terminal_code']} by {a['activated_by']} on {a['activated_at'].isoformat()}")
    for e in history:
        print(f"  #{e['seq']} {e['from_status'] or 'issued'} -> {e['to_status']} by {e['actor']} "
              f"on {e['at'].isoformat()}: {e['reason']}")
    return 0


def register(sub: Any) -> None:
    """Add ``badge`` and its subcommands to the main parser's subparsers."""
    badge = sub.add_parser("badge", help="badges (Alfapass, Port Pass): issue, status, activation, lookup")
    badge_sub = badge.add_subparsers(dest="badge_cmd", required=True)

    issue = badge_sub.add_parser("issue", help="issue a badge to a person (screened against port bans)")
    issue.add_argument("--person", required=True, help="the holder's person id")
    issue.add_argument("--scheme", required=True, help="alfapass or portpass")
    issue.add_argument("--number", required=True)
    issue.add_argument("--card-uid", help="the card's chip UID in hex")
    issue.add_argument("--employer", help="the employer organisation id")
    issue.add_argument("--valid-from", help="default: now")
    issue.add_argument("--valid-until", required=True, help="at most 5 years after --valid-from")
    issue.add_argument("--reason", default="issued")
    issue.set_defaults(badge_func=_issue)

    status = badge_sub.add_parser("status", help="change a badge's status, saying why (made active again: "
                                   "screened against port bans)")
    status.add_argument("badge_id")
    status.add_argument("status", help="active, inactive, blocked, revoked or expired")
    status.add_argument("--reason", required=True)
    status.set_defaults(badge_func=_status)

    activate = badge_sub.add_parser("activate", help="activate a badge at a terminal (or withdraw it)")
    activate.add_argument("badge_id")
    activate.add_argument("--terminal", required=True, help="the terminal code, e.g. BEANR-K1700")
    activate.add_argument("--withdraw", metavar="REASON", help="withdraw the activation instead, saying why")
    activate.set_defaults(badge_func=_activate)

    show = badge_sub.add_parser("show", help="a badge with its activations and history, or a lookup")
    show.add_argument("badge_id", nargs="?")
    show.add_argument("--number")
    show.add_argument("--card-uid")
    show.add_argument("--person")
    show.set_defaults(badge_func=_show)

    badge.set_defaults(func=_run)

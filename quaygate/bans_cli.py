"""``quaygate bans load FILE`` and ``quaygate person set-national-id PERSON_ID`` (issue 4, port bans).

Plain messages; exit 2 for a refused feed or bad input, and the list in force is left as it was.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from .settings import Settings


def cmd_bans_load(args: argparse.Namespace) -> int:
    from identity.bans.feed import register_key
    from identity.bans.loader import load_feed
    from identity.domain.bans import FeedRefused

    from .container import Container

    settings = Settings()
    try:
        raw = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        key = register_key(settings.ban_register_jwk, settings.ban_register_jwk_path)
    except (ValueError, OSError) as exc:
        print(f"cannot load the feed: {exc}", file=sys.stderr)
        return 2
    container = Container.build(settings)
    try:
        result = load_feed(container.engine, raw, key=key, pepper=settings.pepper_bytes(), now=container.clock.now(),
                           max_feed_age=timedelta(seconds=settings.ban_feed_max_age))
    except FeedRefused as refused:
        print(f"feed refused, the list in force is unchanged: {refused.message}", file=sys.stderr)
        return 2
    finally:
        container.close()
    print(result.describe())
    return 0


def cmd_person_set_national_id(args: argparse.Namespace) -> int:
    from identity.bans.persons import NationalIdRefused, set_national_id

    from .container import Container

    try:
        person = uuid.UUID(args.person_id)
    except ValueError:
        print("PERSON_ID is a person id (a UUID)", file=sys.stderr)
        return 2
    number = sys.stdin.readline().strip()  # stdin, never argv: argv shows in ps and shell history
    if not number:
        print("give the national register number on stdin", file=sys.stderr)
        return 2
    settings = Settings()
    container = Container.build(settings)
    try:
        deactivated = set_national_id(container.engine, person, number, pepper=settings.pepper_bytes(),
                                      now=container.clock.now(), actor="cli", replace_reason=args.replace)
    except NationalIdRefused as exc:
        print(f"cannot set the national register number: {exc}", file=sys.stderr)
        return 2
    finally:
        container.close()
    print("national register number linked (kept only as a keyed hash)")
    if deactivated:
        print(f"a port ban in force applies: {deactivated} badges deactivated")
    return 0


def add_commands(sub: Any, person_sub: Any) -> None:
    bans = sub.add_parser("bans", help="the national port-ban register")
    bans_sub = bans.add_subparsers(dest="bans_cmd", required=True)
    load = bans_sub.add_parser("load", help="load a signed ban feed (snapshot or change set) from a file")
    load.add_argument("file")
    load.set_defaults(func=cmd_bans_load)
    national = person_sub.add_parser("set-national-id",
                                     help="link a person to his national register number, read from stdin")
    national.add_argument("person_id")
    national.add_argument("--replace", metavar="REASON",
                          help="replace the number the person is linked to now, saying why (on the audit trail)")
    national.set_defaults(func=cmd_person_set_national_id)

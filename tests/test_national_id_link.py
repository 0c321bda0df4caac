"""Replacing a person's link to the national register (review 123, low): only on purpose, with a reason,
and said plainly on the trail, whether the number replaced was under a port ban in force.

Before, ``set_national_id`` overwrote a link silently: a banned driver re-linked to any other valid number
screened ``clear`` from then on, and the trail held two identical "set" entries.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bans.persons import NationalIdRefused, set_national_id
from identity.bans.screening import StoredBanScreening
from quaygate import cli
from quaygate.crypto import keyed_hash
from quaygate.schema import audit_log, persons

from .ban_register import Register, ban, national_number, snapshot
from .factories import now
from .test_port_bans import DAY, PEPPER, _load, _person, cli_env, register  # noqa: F401


def _hash(engine: sa.Engine, pid: Any) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(persons.c.national_id_hash).where(persons.c.id == pid)).scalar_one()


def _entries(engine: sa.Engine, pid: Any) -> list[tuple[str, dict[str, Any]]]:
    with engine.connect() as conn:
        return [(r.kind, dict(r.data)) for r in conn.execute(
            sa.select(audit_log.c.kind, audit_log.c.data).where(audit_log.c.subject == str(pid),
                                                                audit_log.c.kind.like("identity.person.national_id%"))
            .order_by(audit_log.c.id))]


def test_a_banned_drivers_link_is_not_replaced_silently(engine: sa.Engine, register: Register) -> None:  # noqa: F811
    t = now()
    banned, other = national_number(21), national_number(22)
    _load(engine, register, snapshot(1, t, [ban(banned, "R-21", start=t - DAY)]))
    pid = _person(engine, None)
    set_national_id(engine, pid, banned, pepper=PEPPER, now=t, actor="officer")
    screening = StoredBanScreening(engine, max_list_age=DAY)
    assert screening.screen(pid, t).status == "banned"
    with pytest.raises(NationalIdRefused, match="already linked"):
        set_national_id(engine, pid, other, pepper=PEPPER, now=t, actor="officer")
    assert _hash(engine, pid) == keyed_hash(PEPPER, banned)  # nothing changed
    assert screening.screen(pid, t).status == "banned"
    set_national_id(engine, pid, banned, pepper=PEPPER, now=t, actor="officer")  # the same number: no replacement
    # On purpose, with a reason: done, and the trail says what was replaced and that it was under a ban.
    set_national_id(engine, pid, other, pepper=PEPPER, now=t, actor="officer",
                    replace_reason="  the badge office   typed the wrong number ")
    assert _hash(engine, pid) == keyed_hash(PEPPER, other)
    assert _entries(engine, pid) == [
        ("identity.person.national_id_set", {"person_id": str(pid)}),
        ("identity.person.national_id_set", {"person_id": str(pid)}),
        ("identity.person.national_id_replaced", {"person_id": str(pid), "replaced_link_under_ban": True,
                                                  "reason": "the badge office typed the wrong number"})]
    with pytest.raises(NationalIdRefused, match="reason"):
        set_national_id(engine, pid, banned, pepper=PEPPER, now=t, actor="officer", replace_reason="   ")
    assert _hash(engine, pid) == keyed_hash(PEPPER, other)


def test_a_replaced_link_without_a_ban_says_so(engine: sa.Engine) -> None:
    t = now()
    pid = _person(engine, national_number(23))
    set_national_id(engine, pid, national_number(24), pepper=PEPPER, now=t, actor="officer", replace_reason="typo")
    assert _entries(engine, pid) == [("identity.person.national_id_replaced", {
        "person_id": str(pid), "replaced_link_under_ban": False, "reason": "typo"})]


def test_cli_replaces_a_link_only_with_replace(engine: sa.Engine, cli_env: Path,  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    pid = _person(engine, national_number(25))
    monkeypatch.setattr("sys.stdin", io.StringIO(national_number(26) + "\n"))
    assert cli.main(["person", "set-national-id", str(pid)]) == 2
    assert "--replace REASON" in capsys.readouterr().err
    assert _hash(engine, pid) == keyed_hash(PEPPER, national_number(25))
    monkeypatch.setattr("sys.stdin", io.StringIO(national_number(26) + "\n"))
    assert cli.main(["person", "set-national-id", str(pid), "--replace", "wrong person's number"]) == 0
    assert _hash(engine, pid) == keyed_hash(PEPPER, national_number(26))

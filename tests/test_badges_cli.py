"""``quaygate badge ...``: plain messages, exit 2 on bad input, 1 on a refused change."""

from __future__ import annotations

import io
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from quaygate.cli import main
from quaygate.db import make_engine
from quaygate.schema import organisations, persons

from .ban_register import Register, ban, national_number, snapshot

IN_TWO_YEARS = (datetime.now(UTC) + timedelta(days=730)).date().isoformat()
IN_SIX_YEARS = (datetime.now(UTC) + timedelta(days=6 * 366)).date().isoformat()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A migrated SQLite database with one person and one terminal: (person id, database url)."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", url)
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    assert main(["migrate"]) == 0
    person = uuid.uuid4()
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            now = datetime.now(UTC)
            conn.execute(persons.insert().values(id=person, given_name="An", family_name="Claes", created_at=now))
            conn.execute(organisations.insert().values(id=uuid.uuid4(), name="K1700", kind="terminal",
                                                       terminal_code="BEANR-K1700", created_at=now))
    finally:
        engine.dispose()
    return str(person), url


def test_issue_status_activate_show(env: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    person, _ = env
    assert main(["badge", "issue", "--person", person, "--scheme", "alfapass", "--number", "ap 100230",
                 "--card-uid", "04a1b2c3d4e5f6", "--valid-until", IN_TWO_YEARS]) == 0
    out = capsys.readouterr().out
    badge_id = re.search(r"badge ([0-9a-f-]{36})", out).group(1)  # type: ignore[union-attr]
    assert "AP-100230" in out and "active" in out and "screening: clear" in out
    assert main(["badge", "activate", badge_id, "--terminal", "BEANR-K1700"]) == 0
    assert main(["badge", "status", badge_id, "inactive", "--reason", "left at home"]) == 0
    assert main(["badge", "status", badge_id, "blocked", "--reason", "stolen"]) == 0
    capsys.readouterr()
    assert main(["badge", "status", badge_id, "active", "--reason", "found"]) == 1
    assert "refused (badge_final)" in capsys.readouterr().err
    assert main(["badge", "show", badge_id]) == 0
    shown = capsys.readouterr().out
    assert "blocked" in shown and "activated at BEANR-K1700" in shown
    assert "#3 inactive -> blocked by cli" in shown and ": stolen" in shown
    assert main(["badge", "show", "--number", "AP-100230"]) == 0 and badge_id in capsys.readouterr().out
    assert main(["badge", "show", "--number", "AP-100248"]) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["badge", "issue", "--person", "nope", "--scheme", "alfapass", "--number", "AP-100230",
      "--valid-until", IN_TWO_YEARS], "--person is an id"),
    (["badge", "issue", "--person", "{person}", "--scheme", "alfapass", "--number", "AP-100231",
      "--valid-until", IN_TWO_YEARS], "invalid_badge_number"),
    (["badge", "issue", "--person", "{person}", "--scheme", "alfapass", "--number", "AP-100230",
      "--valid-until", IN_SIX_YEARS], "validity_too_long"),
    (["badge", "issue", "--person", "{person}", "--scheme", "alfapass", "--number", "AP-100230",
      "--valid-until", "soon"], "--valid-until is a date"),
    (["badge", "status", "not-a-uuid", "blocked", "--reason", "x"], "BADGE_ID is an id"),
    (["badge", "status", str(uuid.uuid4()), "lost", "--reason", "x"], "invalid_status"),
    (["badge", "activate", str(uuid.uuid4()), "--terminal", "BEANR-K1700"], "not_found"),
    (["badge", "show"], "give BADGE_ID"),
])
def test_bad_input_is_a_plain_message(env: tuple[str, str], capsys: pytest.CaptureFixture[str], argv: list[str],
                                      message: str) -> None:
    person, url = env
    code = main([a.replace("{person}", person) for a in argv])
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert code == (1 if message == "not_found" else 2)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM badges")).scalar() == 0
    finally:
        engine.dispose()


# ---- review 144, finding 2: the CLI screens against port bans as the API does ---------------------

def _badges(url: str) -> list[tuple[str, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [(str(uuid.UUID(r[0])), r[1]) for r in conn.execute(sa.text("SELECT person_id, status FROM badges"))]
    finally:
        engine.dispose()


def _add_person(url: str) -> str:
    person, engine = uuid.uuid4(), make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(persons.insert().values(id=person, given_name="Bo", family_name="Peeters",
                                                 created_at=datetime.now(UTC)))
    finally:
        engine.dispose()
    return str(person)


def _refused(argv: list[str], code: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert f"refused ({code})" in captured.err and "Traceback" not in captured.err
    assert "screening: clear" not in captured.out


def test_issue_and_reactivation_are_screened_against_port_bans(
        env: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    person, url = env
    register = Register()
    monkeypatch.setenv("QUAYGATE_BAN_REGISTER_JWK", register.public_jwk)
    issue = ["badge", "issue", "--person", person, "--scheme", "alfapass", "--number", "AP-100230",
             "--valid-until", IN_TWO_YEARS]

    monkeypatch.setattr("sys.stdin", io.StringIO(national_number(7) + "\n"))
    assert main(["person", "set-national-id", person]) == 0
    capsys.readouterr()

    # A register configured but no list in force: fail closed, as the API does (503 there).
    _refused(issue, "screening_unavailable", capsys)
    assert _badges(url) == []

    t = datetime.now(UTC)
    clear = tmp_path / "snapshot-1.jws"
    clear.write_bytes(register.sign(snapshot(1, t, [ban(national_number(8), "R-8", start=t)])))
    assert main(["bans", "load", str(clear)]) == 0

    # A person with no national number linked cannot be screened (422 person_unidentified at the API).
    _refused(["badge", "issue", "--person", _add_person(url), "--scheme", "alfapass", "--number", "AP-100248",
              "--valid-until", IN_TWO_YEARS], "person_unidentified", capsys)
    assert _badges(url) == []

    assert main(issue) == 0  # not banned: issued, screened clear against the list in force
    out = capsys.readouterr().out
    assert "screening: clear" in out
    badge_id = re.search(r"badge ([0-9a-f-]{36})", out).group(1)  # type: ignore[union-attr]

    banned = tmp_path / "snapshot-2.jws"
    banned.write_bytes(register.sign(snapshot(2, t, [ban(national_number(7), "R-7", start=t)])))
    assert main(["bans", "load", str(banned)]) == 0  # the load deactivates his badge
    assert _badges(url) == [(person, "inactive")]
    capsys.readouterr()

    # Reactivating it and issuing him another are refused (409 person_banned at the API); nothing written.
    _refused(["badge", "status", badge_id, "active", "--reason", "back at work"], "person_banned", capsys)
    _refused([*issue[:7], "AP-100255", *issue[8:]], "person_banned", capsys)
    assert _badges(url) == [(person, "inactive")]

"""The command line: plain messages and exit codes, never a traceback for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quaygate.cli import main


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'q.db'}")
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    assert main(["migrate"]) == 0
    return tmp_path


def test_demo_writes_credentials_once(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "DEMO MODE" in out and "demo-credentials.json" in out
    data = json.loads((env / "demo-credentials.json").read_text())
    assert set(data["clients"]) == {"shipping_line", "release_party", "transport_operator", "terminal_operator",
                                    "terminal_gate", "customs", "admin", "driver_app", "admin_console"}
    assert all({"client_id", "client_secret", "organisation_id"} <= set(c) for c in data["clients"].values())
    assert data["clients"]["driver_app"]["client_secret"] is None  # a public client (PKCE)
    assert data["clients"]["driver_app"]["redirect_uri"].endswith("/app/callback")
    # Issue 4: the admin console, a public client too, and its port security officer's enrolment code.
    assert data["clients"]["admin_console"]["client_secret"] is None
    assert data["clients"]["admin_console"]["redirect_uri"].endswith("/console/callback")
    assert len(data["port_security"]["enrolment_code"]) >= 12 and data["console"].endswith("/console/")
    driver = data["drivers"][0]
    assert len(driver["enrolment_code"]) >= 12 and driver["enrolment_code"] != data["drivers"][1]["enrolment_code"]
    assert set(driver["badge"]) == {"scheme", "number", "card_uid"} and set(driver["plate"]) == {"text", "country"}
    assert data["terminal"] == "BEANR-K1700" and data["base_url"].startswith("http")
    assert main(["demo"]) == 0 and "already present" in capsys.readouterr().out
    # The demo driver app's id tokens are ES256, which its page (app.js) checks with WebCrypto.
    from identity.clients import ClientRegistry
    from quaygate.db import make_engine

    engine = make_engine(f"sqlite:///{env / 'q.db'}")
    try:
        app = ClientRegistry(engine).find(data["clients"]["driver_app"]["client_id"])
        console = ClientRegistry(engine).find(data["clients"]["admin_console"]["client_id"])
    finally:
        engine.dispose()
    assert app is not None and app.id_token_alg == "ES256"
    # Review 128, finding 1: the console's sign-out ends the provider session and comes back to /console/.
    assert console is not None and console.post_logout_redirect_uris == (data["console"],)


def test_bad_organisation_kind_is_a_plain_message(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["org", "create", "--name", "X", "--kind", "pirate", "--eori", "BE1"]) == 2
    err = capsys.readouterr().err
    assert "unknown kind 'pirate'" in err and "Traceback" not in err
    assert main(["org", "create", "--name", "X", "--kind", "release_party"]) == 2
    assert "--eori" in capsys.readouterr().err


@pytest.mark.parametrize("code", ["K1700", "PSA-K1700", "MPET", "BEANRK1700", "BE-ANR-K1700", "beanr-k1700"])
def test_a_terminal_code_that_does_not_start_with_its_port_is_refused(env: Path, capsys: pytest.CaptureFixture[str],
                                                                      code: str) -> None:
    # Review 123, finding 1: port-limited bans are screened by the port a terminal's code starts with.
    assert main(["org", "create", "--name", "Kaai", "--kind", "terminal", "--eori", "BE0777",
                 "--terminal-code", code]) == 2
    err = capsys.readouterr().err
    assert "BEANR-K1700" in err and "Traceback" not in err
    assert main(["org", "create", "--name", "Kaai", "--kind", "terminal", "--eori", "BE0777",
                 "--terminal-code", "BEANR-K1700"]) == 0


def test_a_terminal_organisation_needs_its_code(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # As the admin API: a terminal without a code has no port for the bans, nor a code for its gate clients.
    assert main(["org", "create", "--name", "Kaai", "--kind", "terminal", "--eori", "BE0778"]) == 2
    assert "--terminal-code" in capsys.readouterr().err


def test_duplicate_organisation(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["org", "create", "--name", "X", "--kind", "release_party", "--eori", "BE0123"]) == 0
    assert main(["org", "create", "--name", "Y", "--kind", "release_party", "--eori", "BE0123"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_production_refuses_insecure_defaults(env: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QUAYGATE_MODE", "production")
    assert main(["migrate"]) == 2
    assert "production mode needs" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-5", "ten", "nan", "inf", ""])
def test_a_body_deadline_that_is_not_a_positive_number_is_a_plain_message(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str) -> None:
    """QUAYGATE_BODY_SECONDS (quaygate/settings.py): refused before anything is done, saying what it takes."""
    monkeypatch.setenv("QUAYGATE_BODY_SECONDS", value)
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert "QUAYGATE_BODY_SECONDS must be a positive number of seconds" in err and "Traceback" not in err
    monkeypatch.setenv("QUAYGATE_BODY_SECONDS", "2.5")
    assert main(["migrate"]) == 0


def test_audit_verify_after_demo(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    assert main(["audit", "seal"]) == 0
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0
    assert "audit trail intact" in capsys.readouterr().out


def test_enrolment_code_for_a_person(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    data = json.loads((env / "demo-credentials.json").read_text())
    capsys.readouterr()
    assert main(["person", "enrol-code", data["drivers"][0]["person_id"], "--hours", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("enrolment_code=") and "single use" in out
    assert main(["person", "enrol-code", "not-a-uuid"]) == 2
    assert "UUID" in capsys.readouterr().err
    assert main(["person", "enrol-code", "00000000-0000-4000-8000-000000000000"]) == 2
    err = capsys.readouterr().err
    assert "cannot issue a code" in err and "Traceback" not in err


def _active_kids(db: Path) -> dict[str, str]:
    import sqlalchemy as sa

    from quaygate.db import make_engine
    from quaygate.schema import signing_keys

    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(signing_keys.c.alg, signing_keys.c.kid).where(
                signing_keys.c.status == "active", signing_keys.c.use == "sig")).all()
    finally:
        engine.dispose()
    return {r.alg: r.kid for r in rows}


def test_keys_revoke_withdraws_a_key_and_says_so(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Review 132, finding 6: ``quaygate keys revoke KID --reason``, audited; plain messages."""
    import sqlalchemy as sa

    from quaygate.db import make_engine
    from quaygate.schema import audit_log, signing_keys

    assert main(["keys", "rotate"]) == 0
    kids = _active_kids(env / "q.db")
    capsys.readouterr()
    assert main(["keys", "revoke", "--reason", "found on a paste site", "--", kids["ES256"]]) == 0
    out = capsys.readouterr().out
    after = _active_kids(env / "q.db")
    assert f"signing key {kids['ES256']} is revoked" in out and f"new signing key {after['ES256']} is active" in out
    assert "within 60 s" in out and after["ES256"] != kids["ES256"]
    for argv, message in ((["keys", "revoke", "--reason", "again", "--", kids["ES256"]], "already revoked"),
                          (["keys", "revoke", "nope", "--reason", "x"], "no token signing key nope"),
                          (["keys", "revoke", "--reason", " ", "--", kids["RS256"]], "a reason is required")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("nothing changed: ") and message in err and "Traceback" not in err
    engine = make_engine(f"sqlite:///{env / 'q.db'}")
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(signing_keys).where(signing_keys.c.kid == kids["ES256"])).one()
            entries = conn.execute(sa.select(audit_log).where(audit_log.c.kind == "identity.key.revoked")).all()
    finally:
        engine.dispose()
    assert (row.status, row.private_enc) == ("revoked", None)
    assert [(e.subject, e.actor["client_id"].startswith("cli:"), e.data["reason"]) for e in entries] == [
        (kids["ES256"], True, "found on a paste site")]
    assert _active_kids(env / "q.db") == after  # the refused ones changed nothing


def test_keys_rotate_every_algorithm_or_the_named_ones(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "rotate"]) == 0
    kids = _active_kids(env / "q.db")
    out = capsys.readouterr().out
    assert set(kids) == {"RS256", "PS256", "ES256"}
    assert all(f"new {alg} signing key {kid} is active" in out for alg, kid in kids.items())
    assert main(["keys", "rotate", "--alg", "ES256"]) == 0
    after = _active_kids(env / "q.db")
    assert after["ES256"] != kids["ES256"] and {a: after[a] for a in ("RS256", "PS256")} == {
        a: kids[a] for a in ("RS256", "PS256")}
    assert capsys.readouterr().out.startswith(f"new ES256 signing key {after['ES256']} is active")
    for bad in ("HS256", "none", "es256"):
        assert main(["keys", "rotate", "--alg", bad]) == 2
        err = capsys.readouterr().err
        assert f"unknown algorithm {bad!r}" in err and "RS256, PS256, ES256" in err and "Traceback" not in err
    assert _active_kids(env / "q.db") == after  # a refused rotation changes nothing


def test_keys_rotate_encryption_turns_over_the_upstream_encryption_key(env: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import sqlalchemy as sa

    from quaygate.db import make_engine
    from quaygate.schema import encryption_keys

    engine = make_engine(f"sqlite:///{env / 'q.db'}")

    def keys() -> dict[str, str]:
        with engine.connect() as conn:
            return {r.kid: r.status for r in conn.execute(sa.select(encryption_keys.c.kid, encryption_keys.c.status))}

    try:
        signing = _active_kids(env / "q.db")
        assert main(["keys", "rotate", "--encryption"]) == 0
        first = keys()
        assert main(["keys", "rotate", "--encryption"]) == 0
        out = capsys.readouterr().out
        second = keys()
        (new,) = [kid for kid, status in second.items() if status == "active"]
        assert new not in first and f"new upstream encryption key {new} is active" in out
        assert sorted(second.values()) == ["active", "retiring", "retiring"]  # both older keys still decrypt
        assert "stays published and decrypts for" in out
        assert _active_kids(env / "q.db") == signing  # the signing keys are untouched
    finally:
        engine.dispose()


def test_serve_refuses_several_workers_without_redis(env: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Without Redis each worker has its own in-process cache: a DPoP proof or gate request_id claimed in
    one could be replayed to another. So several workers need Redis; one worker, or Redis, serves."""
    import uvicorn

    from quaygate import observability

    served: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: served.append(kw))
    # serve sets the root logger's handler to this test's captured stderr, which later tests would log to
    monkeypatch.setattr(observability, "configure_logging", lambda level: None)
    monkeypatch.delenv("QUAYGATE_REDIS_URL", raising=False)
    assert main(["serve", "--workers", "2"]) == 2
    assert "needs QUAYGATE_REDIS_URL" in capsys.readouterr().err
    assert main(["serve", "--workers", "0"]) == 2
    assert served == []
    assert main(["serve"]) == 0
    monkeypatch.setenv("QUAYGATE_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert main(["serve", "--workers", "2"]) == 0
    assert [kw["workers"] for kw in served] == [1, 2]


@pytest.mark.parametrize("url", [
    "postgresql://nobody:s3cret@127.0.0.1:1/none",  # nothing listens there
    "notaurl",
    "sqlite:////no/such/folder/q.db",
])
@pytest.mark.parametrize("command", [["migrate"], ["truck", "show", "1ABC123", "--country", "BE"],
                                     ["org", "create", "--name", "X", "--kind", "transport_operator", "--eori",
                                      "BE0000000001"]])
def test_a_database_that_cannot_be_opened_is_said_plainly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str], url: str,
                                                          command: list[str]) -> None:
    """Review 176, finding 2: every database command printed a 41-frame traceback (exit 1) when the database
    could not be opened. A plain message naming the setting, never the URL (its password), exit 2."""
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", url)
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    monkeypatch.delenv("QUAYGATE_REDIS_URL", raising=False)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("quaygate: cannot open the database (QUAYGATE_DATABASE_URL)"), err
    assert "Traceback" not in err and "s3cret" not in err and len(err.splitlines()) == 1, err


def _trail(db: Path, kind: str) -> list[tuple[object, object]]:
    import sqlalchemy as sa

    from quaygate.db import make_engine
    from quaygate.schema import audit_log

    engine = make_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return [(r.actor, r.subject) for r in conn.execute(
                sa.select(audit_log.c.actor, audit_log.c.subject).where(audit_log.c.kind == kind))]
    finally:
        engine.dispose()


def test_an_enrolment_code_and_an_organisation_made_at_the_command_line_are_on_the_trail(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Review 176, finding 1: the admin API audits both; from the command line neither left a trace (an
    officer's enrolment code issued from a shell let whoever held it enrol as him, unseen). A refused issue
    writes nothing."""
    assert main(["demo"]) == 0
    person = json.loads((env / "demo-credentials.json").read_text())["drivers"][0]["person_id"]
    before = len(_trail(env / "q.db", "identity.enrolment_code.issued"))
    assert main(["person", "enrol-code", person]) == 0
    assert main(["person", "enrol-code", "00000000-0000-4000-8000-000000000000"]) == 2
    issued = _trail(env / "q.db", "identity.enrolment_code.issued")
    assert issued[before:] == [({"client_id": "cli"}, person)]
    capsys.readouterr()
    assert main(["org", "create", "--name", "Haulier X", "--kind", "transport_operator", "--eori", "BE0999"]) == 0
    org = capsys.readouterr().out.strip()
    assert _trail(env / "q.db", "identity.admin.organisation.created") == [({"client_id": "cli"}, org)]

"""Review 172, finding 2: ``quaygate keys rotate`` / ``keys revoke`` under a data key that is not the one the
stored keys were sealed under reported success, sealed the new active keys under it (the service then had no
usable signing key: LookupError, token endpoint 500) and erased the private halves of the keys past their
publication with no retirement record (their late offline gate passes no longer checked). Now the command
refuses, plainly, and writes nothing; the retirement leaves a key it cannot open retiring; and
``ensure_active`` counts only the active keys that open as ours, so a restart under the right key repairs a
table such a command left behind."""

from __future__ import annotations

import base64
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.keys import SIGNING_ALGORITHMS, KeyStore
from quaygate.cli import main
from quaygate.crypto import DataCipher
from quaygate.rekey import ForeignDataKey
from quaygate.schema import signing_keys
from tests.test_identity_support import utcnow

OURS = DataCipher(b"\x01" * 32)
OTHER = DataCipher(b"\x02" * 32)


def _table(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(signing_keys).order_by(signing_keys.c.kid))]


def _status(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {r.kid: r.status for r in conn.execute(sa.select(signing_keys.c.kid, signing_keys.c.status))}


def _other_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def test_the_commands_under_another_data_key_refuse_and_write_nothing(
        engine: sa.Engine, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", database_url)
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    monkeypatch.delenv("QUAYGATE_REDIS_URL", raising=False)
    assert main(["keys", "rotate"]) == 0 and main(["keys", "rotate"]) == 0
    # The first keys are past their publication (the background loop has not run yet): what the bad rotation
    # erased, leaving no retirement record.
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(signing_keys.update().where(signing_keys.c.status == "retiring")
                     .values(retired_at=now - timedelta(hours=1), publish_until=now - timedelta(minutes=1)))
    before = _table(engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(signing_keys.c.kid, signing_keys.c.alg, signing_keys.c.status)).all()
    active = {r.alg: r.kid for r in rows if r.status == "active"}
    retiring = [r.kid for r in rows if r.status == "retiring"]
    assert set(active) == set(SIGNING_ALGORITHMS) and len(retiring) == 3
    capsys.readouterr()
    ours = os.environ["QUAYGATE_DATA_KEY"]  # the tests' (tests/conftest.py)
    monkeypatch.setenv("QUAYGATE_DATA_KEY", _other_key())
    for argv in (["keys", "rotate"], ["keys", "rotate", "--alg", "ES256"],
                 ["keys", "revoke", "--reason", "leaked", "--", active["ES256"]],
                 ["keys", "revoke", "--reason", "leaked", "--", retiring[0]]):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 1, (argv, out, err)
        assert "nothing changed" in err and "QUAYGATE_DATA_KEY" in err and "opens none" in err, err
        assert "Traceback" not in err and "is active" not in out and "is revoked" not in out
        assert _table(engine) == before, argv  # same rows, private halves intact
    # Under the right key the service still signs with every algorithm, and the first keys retire as ever.
    keys = KeyStore(engine, DataCipher(base64.urlsafe_b64decode(ours + "==")))
    assert {alg: str(keys.signing_key(alg).kid) for alg in SIGNING_ALGORITHMS} == active
    assert keys.retire_due(now) == 3
    assert all(keys.rotated_out(kid) is not None for kid in retiring)


def test_the_key_store_refuses_to_write_under_another_data_key(engine: sa.Engine) -> None:
    now = utcnow()
    ours = KeyStore(engine, OURS)
    first = ours.ensure_active(now)
    ours.rotate(now)
    before = _table(engine)
    wrong = KeyStore(engine, OTHER)
    for write in (lambda: wrong.rotate(now + timedelta(days=1)),
                  lambda: wrong.rotate(now + timedelta(days=1), ["ES256"]),
                  lambda: wrong.revoke(first["ES256"], now, reason="leaked", actor={"client_id": "cli:t"}),
                  lambda: wrong.ensure_active(now)):
        with pytest.raises(ForeignDataKey, match="opens none"):
            write()
        assert _table(engine) == before
    assert wrong.retire_due(now + timedelta(days=1)) == 0  # it cannot open them: left retiring, nothing erased
    assert _table(engine) == before
    assert ours.retire_due(now + timedelta(days=1)) == 3
    assert all(ours.rotated_out(kid) is not None for kid in first.values())


def test_a_restart_under_the_right_key_repairs_what_a_wrong_key_wrote(engine: sa.Engine) -> None:
    """The table as the unmended ``keys rotate`` left it under another data key: new active keys sealed under
    that key. ``ensure_active`` under ours counts none of them: they are rotated out (never published, never
    trusted: they do not open), and keys of ours take their place."""
    now = utcnow()
    ours = KeyStore(engine, OURS)
    genuine = ours.ensure_active(now)
    wrong = KeyStore(engine, OTHER)
    foreign = {alg: wrong._generate(alg) for alg in SIGNING_ALGORITHMS}
    with engine.begin() as conn:
        conn.execute(signing_keys.update().where(signing_keys.c.status == "active")
                     .values(status="retiring", retired_at=now, publish_until=now + ours.publication))
        for alg, key in foreign.items():
            wrong._insert(conn, key, alg, now)
    restarted = KeyStore(engine, OURS)
    with pytest.raises(LookupError):
        restarted.signing_key("RS256")
    kids = restarted.ensure_active(now + timedelta(seconds=5))
    assert set(kids) == set(SIGNING_ALGORITHMS)
    assert set(kids.values()).isdisjoint({str(k.kid) for k in foreign.values()} | set(genuine.values()))
    assert {alg: str(restarted.signing_key(alg).kid) for alg in SIGNING_ALGORITHMS} == kids
    status = _status(engine)
    assert {status[str(k.kid)] for k in foreign.values()} == {"retiring"}
    published = {k["kid"] for k in restarted.jwks()["keys"]}
    assert set(kids.values()) <= published and published.isdisjoint(str(k.kid) for k in foreign.values())
    assert all(restarted.rotated_out(str(k.kid)) is None for k in foreign.values())
    assert restarted.ensure_active(now + timedelta(seconds=6)) == kids  # nothing more to do


def test_the_service_under_another_data_key_does_not_start(engine: sa.Engine, database_url: str,
                                                            tmp_path: Path) -> None:
    """Before, it started, loaded no key it could sign with, and answered the token endpoint 500; now it
    refuses to start, saying why (without a traceback: ``quaygate serve`` prints the reason alone)."""
    from fastapi.testclient import TestClient

    from quaygate.app import create_app
    from quaygate.settings import Settings

    ours = DataCipher(base64.urlsafe_b64decode(os.environ["QUAYGATE_DATA_KEY"] + "=="))
    KeyStore(engine, ours).ensure_active(utcnow())
    before = _table(engine)
    app = create_app(Settings(var_dir=tmp_path, database_url=database_url, data_key=_other_key(),
                              background_workers=False, gate_decision_drain=False))
    with pytest.raises(ForeignDataKey) as refused, TestClient(app):
        pass
    assert app.state.start_refused == str(refused.value) and "opens none of the 3 keys" in str(refused.value)
    assert _table(engine) == before

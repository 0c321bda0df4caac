"""``quaygate iat create``: an initial access token printed once, usable once."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from identity.registration.service import ClientManagement, RegistrationError
from quaygate.cli import main
from quaygate.db import make_engine
from quaygate.schema import initial_access_tokens


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'q.db'}")
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    assert main(["migrate"]) == 0
    return tmp_path


def test_iat_create_prints_a_token_stored_only_as_a_hash(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["org", "create", "--name", "Line", "--kind", "shipping_line", "--eori", "BE0999"]) == 0
    org = capsys.readouterr().out.strip()
    assert main(["iat", "create", "--org", org, "--ttl", "600"]) == 0
    out = capsys.readouterr().out
    token = out.split("initial_access_token=")[1].split()[0]
    assert token.startswith("qgiat_") and "shown once" in out
    engine = make_engine(f"sqlite:///{env / 'q.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(initial_access_tokens)).all()
        assert len(rows) == 1 and token not in str(rows[0]._mapping) and str(rows[0].organisation_id) == org
        from datetime import UTC, datetime

        from identity.grants import GrantStore, RevocationList
        from quaygate.cache import MemoryCache

        m = ClientManagement(engine, GrantStore(engine, RevocationList(MemoryCache()), refresh_ttl=60), issuer="x")
        assert m.register(token, {}, now=datetime.now(UTC)).client_id
        with pytest.raises(RegistrationError):
            m.register(token, {}, now=datetime.now(UTC))
    finally:
        engine.dispose()


def test_iat_create_bad_input_is_a_plain_message(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["iat", "create", "--org", "not-a-uuid"]) == 2
    assert main(["iat", "create", "--ttl", "1"]) == 2
    assert main(["iat", "create", "--org", "00000000-0000-4000-8000-000000000000"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot create the token" in err

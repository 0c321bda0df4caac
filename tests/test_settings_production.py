"""What production requires, and what dev and demo mode refuse to do to a shared deployment (review 132).

Settings are only read here: no database is reached (a PostgreSQL URL is a string until an engine is made).
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from quaygate.cli import main
from quaygate.settings import Mode, Settings
from release_service.domain.screening import screen

PG = "postgresql://quaygate@db.internal/quaygate"
WEAK_PEPPER = "pepper-of-the-port-0123"  # 23 characters: too short for production


def strong_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def production(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Everything production requires, as keyword arguments of Settings (each test takes one away)."""
    kw: dict[str, Any] = {
        "mode": "production", "var_dir": tmp_path, "database_url": PG, "issuer": "https://port.example",
        "data_key": strong_key(), "pepper": secrets.token_urlsafe(32),
        "ban_register_jwk": '{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}',
        "audit_witness": tmp_path / "witness" / "audit-checkpoints.jsonl",
    }
    kw.update(overrides)
    return kw


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what each test gives counts (tests/conftest.py sets test secrets in the environment)."""
    for name in ("MODE", "DATA_KEY", "PEPPER", "DATABASE_URL", "VAR_DIR", "ISSUER", "BAN_REGISTER_JWK",
                 "BAN_REGISTER_JWK_PATH", "BAN_SCREENING", "AUDIT_WITNESS", "REDIS_URL"):
        monkeypatch.delenv(f"QUAYGATE_{name}", raising=False)


def refused(**kw: Any) -> str:
    with pytest.raises(ValidationError) as exc:
        Settings(**kw)
    return str(exc.value)


def test_production_with_everything_it_requires_starts(tmp_path: Path) -> None:
    settings = Settings(**production(tmp_path))
    assert settings.mode is Mode.PRODUCTION and settings.ban_register_configured


# ---- finding 2: no secrets made per directory outside SQLite ------------------------------------------

def test_a_postgresql_database_without_mode_or_secrets_is_refused(tmp_path: Path) -> None:
    text = refused(var_dir=tmp_path, database_url=PG)
    assert "QUAYGATE_MODE=production" in text and "QUAYGATE_DATA_KEY/QUAYGATE_PEPPER" in text
    assert "QUAYGATE_PEPPER" in refused(var_dir=tmp_path, database_url=PG, data_key=strong_key(), mode="demo")
    assert not (tmp_path / "dev-secrets.json").exists()  # nothing made
    given = Settings(var_dir=tmp_path, database_url=PG, data_key=strong_key(), pepper="shared-by-every-replica")
    assert given.pepper is not None and given.pepper.get_secret_value() == "shared-by-every-replica"


@pytest.mark.parametrize("url", ["", "sqlite://", "sqlite:///{tmp}/q.db"])
def test_sqlite_still_makes_its_dev_secrets(tmp_path: Path, url: str) -> None:
    first = Settings(var_dir=tmp_path, database_url=url.format(tmp=tmp_path))
    again = Settings(var_dir=tmp_path, database_url=url.format(tmp=tmp_path))
    assert (tmp_path / "dev-secrets.json").exists()
    assert first.data_key_bytes() == again.data_key_bytes() and first.pepper_bytes() == again.pepper_bytes()


def test_var_dir_is_made_absolute_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(var_dir=Path("var"))
    assert settings.var_dir == tmp_path / "var" and settings.var_dir.is_absolute()
    assert settings.database_url == f"sqlite:///{tmp_path / 'var' / 'quaygate.db'}"


# ---- finding 3: production screens against the register, or says it does not ---------------------------

def test_production_needs_the_ban_register_or_an_explicit_off(tmp_path: Path) -> None:
    text = refused(**production(tmp_path, ban_register_jwk=None))
    assert "QUAYGATE_BAN_REGISTER_JWK" in text and "QUAYGATE_BAN_SCREENING=off" in text
    assert "QUAYGATE_BAN_REGISTER_JWK" in refused(**production(tmp_path, ban_register_jwk=""))
    path_only = Settings(**production(tmp_path, ban_register_jwk=None, ban_register_jwk_path=tmp_path / "r.jwk"))
    assert path_only.ban_register_configured
    off = Settings(**production(tmp_path, ban_register_jwk=None, ban_screening="off"))
    assert not off.ban_register_configured
    # A key and "off" contradict each other, in any mode.
    assert "unset one of them" in refused(**production(tmp_path, ban_screening="off"))
    assert "unset one of them" in refused(var_dir=tmp_path, ban_screening="off", ban_register_jwk="{}")


def test_screening_required_without_a_list_is_unavailable_never_clear() -> None:
    """With the register's key set (required in production) a list not yet loaded screens unavailable."""
    now = datetime.now(UTC)
    got = screen([], None, terminal="BEANR-K1700", now=now, max_list_age=timedelta(days=1), required=True)
    assert got.result == "unavailable" and got.reasons == ("screening_unavailable",)


def test_ban_screening_off_is_a_warning_at_every_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    from quaygate.app import create_app

    settings = Settings(var_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'q.db'}", ban_screening="off",
                        audit_witness="none", background_workers=False, face_warm_up=False)
    from quaygate.migrate import upgrade

    upgrade(settings.database_url)
    with caplog.at_level("WARNING", logger="quaygate"), TestClient(create_app(settings)) as client:
        scraped = client.get("/metrics").text
    warned = {r.getMessage() for r in caplog.records if r.levelname == "WARNING"}
    assert {"quaygate.start.ban_screening_off", "quaygate.start.audit_witness_none"} <= warned
    # and where monitoring looks: a start log line is read by nobody once the server runs
    for safeguard in ("ban_screening", "audit_witness", "production_mode"):
        assert f'quaygate_safeguard_off{{safeguard="{safeguard}"}} 1.0' in scraped


def test_the_safeguards_a_process_runs_without(tmp_path: Path) -> None:
    assert Settings(**production(tmp_path)).safeguards_off == ()
    assert Settings(**production(tmp_path, ban_register_jwk=None, ban_screening="off",
                                 audit_witness="none")).safeguards_off == ("ban_screening", "audit_witness")
    dev = Settings(var_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'q.db'}")  # no register key: clear
    assert dev.safeguards_off == ("ban_screening", "audit_witness", "production_mode")


def test_metrics_show_each_safeguard_on_as_zero() -> None:
    from prometheus_client import generate_latest

    from quaygate.observability import Metrics

    metrics = Metrics()
    metrics.note_safeguards(())
    scraped = generate_latest(metrics.registry).decode()
    assert 'quaygate_safeguard_off{safeguard="ban_screening"} 0.0' in scraped
    assert 'quaygate_safeguard_off{safeguard="audit_witness"} 0.0' in scraped


# ---- finding 8: a refused setting's message carries no secret --------------------------------------------

def test_a_refused_setting_does_not_show_the_pepper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """pydantic shows a refused model's inputs, shortened in the middle: the last one given, often a
    secret, showed nearly whole (``...epper-of-the-port-0123'}``)."""
    pepper = secrets.token_urlsafe(32)
    for kw, field in (({"mode": "production", "pepper": WEAK_PEPPER}, "QUAYGATE_DATA_KEY"),
                      (production(tmp_path, pepper=WEAK_PEPPER), "QUAYGATE_PEPPER"),
                      ({**production(tmp_path, issuer="http://port.example"), "pepper": pepper}, "QUAYGATE_ISSUER")):
        text = refused(**kw)
        assert field in text
        secrets_given = [WEAK_PEPPER, pepper, *([kw["data_key"]] if "data_key" in kw else [])]
        assert all(secret[-8:] not in text for secret in secrets_given)
    key = strong_key()
    for name, value in production(tmp_path, data_key=key, pepper=WEAK_PEPPER).items():
        monkeypatch.setenv(f"QUAYGATE_{name.upper()}", str(value))
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("quaygate: production mode needs a QUAYGATE_PEPPER of at least 32")
    assert WEAK_PEPPER[-8:] not in err and key[-8:] not in err and "Traceback" not in err


# ---- finding 9: production's secrets are long and random ------------------------------------------------

@pytest.mark.parametrize("pepper", [WEAK_PEPPER, "x" * 64, "abababababababababababababababab"])
def test_production_refuses_a_weak_pepper(tmp_path: Path, pepper: str) -> None:
    assert "a QUAYGATE_PEPPER of at least 32 random characters" in refused(**production(tmp_path, pepper=pepper))


@pytest.mark.parametrize("key", [
    base64.urlsafe_b64encode(bytes(32)).decode(),  # all zero
    base64.urlsafe_b64encode(b"\x01\x02" * 16).decode(),  # two bytes repeated
    base64.urlsafe_b64encode(bytes(range(16))).decode(),  # 16 bytes (fixed: xdist's workers must collect the same ids)
    "not base64 at all!",
])
def test_production_refuses_a_placeholder_data_key(tmp_path: Path, key: str) -> None:
    assert "QUAYGATE_DATA_KEY" in refused(**production(tmp_path, data_key=key))


def test_production_takes_hex_and_base64_peppers_of_32_characters_or_more(tmp_path: Path) -> None:
    for pepper in (secrets.token_hex(16), secrets.token_hex(32), secrets.token_urlsafe(32)):
        assert Settings(**production(tmp_path, pepper=pepper)).pepper_bytes() == pepper.encode()


# ---- finding 10: production keeps an audit witness, or says it does not ---------------------------------

def test_production_needs_an_audit_witness_or_none(tmp_path: Path) -> None:
    text = refused(**production(tmp_path, audit_witness=None))
    assert "QUAYGATE_AUDIT_WITNESS" in text and "QUAYGATE_AUDIT_WITNESS=none" in text
    declined = Settings(**production(tmp_path, audit_witness="none"))
    assert declined.audit_witness is None and declined.audit_witness_declined
    assert not Settings(**production(tmp_path)).audit_witness_declined


# ---- finding 1: the demo seeds no production database --------------------------------------------------

def test_demo_refuses_production_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = "postgresql://nobody@127.0.0.1:1/none"  # never reached: refused before any connection
    for name, value in production(tmp_path, database_url=unreachable).items():
        monkeypatch.setenv(f"QUAYGATE_{name.upper()}", str(value))
    for argv in (["demo"], ["demo", "--force-demo"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "refused in production mode" in err and "nothing was written" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_demo_on_postgresql_needs_force_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_engine: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", pg_engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("QUAYGATE_DATA_KEY", strong_key())
    monkeypatch.setenv("QUAYGATE_PEPPER", secrets.token_urlsafe(32))
    assert main(["demo"]) == 2
    assert "--force-demo" in capsys.readouterr().err
    assert not (tmp_path / "demo-credentials.json").exists()
    assert main(["demo", "--force-demo"]) == 0
    assert json.loads((tmp_path / "demo-credentials.json").read_text())["terminal"] == "BEANR-K1700"


# ---- finding 2: dev and demo serve this host only unless told ------------------------------------------

@pytest.mark.parametrize("mode", ["dev", "demo"])
def test_dev_serve_binds_loopback_unless_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str], mode: str) -> None:
    import uvicorn

    from quaygate import observability

    served: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: served.append(kw["host"]))
    monkeypatch.setattr(observability, "configure_logging", lambda level: None)
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_MODE", mode)
    for host in ("0.0.0.0", "::", "192.0.2.7", "port.example"):
        assert main(["serve", "--host", host]) == 2
        err = capsys.readouterr().err
        assert f"--host {host}: QUAYGATE_MODE is {mode}" in err and "--insecure-dev-bind" in err
    assert served == []
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        assert main(["serve", "--host", host]) == 0
    assert main(["serve", "--host", "0.0.0.0", "--insecure-dev-bind"]) == 0
    assert served == ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2", "0.0.0.0"]


def test_production_serve_binds_any_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from quaygate import observability

    served: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: served.append(kw["host"]))
    monkeypatch.setattr(observability, "configure_logging", lambda level: None)
    for name, value in production(tmp_path).items():
        monkeypatch.setenv(f"QUAYGATE_{name.upper()}", str(value))
    assert main(["serve", "--host", "0.0.0.0"]) == 0 and served == ["0.0.0.0"]


# ---- review 137, finding 3: /metrics is not everyone's -------------------------------------------------

def _metrics(settings: Settings, *, client: tuple[str, int], headers: dict[str, str] | None = None) -> Any:
    from fastapi.testclient import TestClient

    from quaygate.app import create_app
    from quaygate.migrate import upgrade

    upgrade(settings.database_url)
    with TestClient(create_app(settings), client=client) as http:
        return http.get("/metrics", headers=headers or {})


def _sqlite(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return {"database_url": f"sqlite:///{tmp_path / 'q.db'}", "background_workers": False, "face_warm_up": False,
            **kw}  # production's tests give PostgreSQL's URL instead


def test_production_serves_metrics_to_the_host_only_unless_given_a_token(tmp_path: Path, pg_engine: Any,
                                                                        pg_database_url: str) -> None:
    # pg_engine: the tables emptied first. Each test here makes its own data key (``production``), and a
    # service refuses to start on keys stored under another (review 172, finding 2).
    settings = Settings(**production(tmp_path, **_sqlite(tmp_path, database_url=pg_database_url)))
    assert _metrics(settings, client=("203.0.113.9", 5000)).status_code == 404  # not even said to exist
    local = _metrics(settings, client=("127.0.0.1", 5000))
    assert local.status_code == 200 and "quaygate_safeguard_off" in local.text
    # review 140, finding 3: on a dual-stack socket (--host ::) a scraper on 127.0.0.1 arrives IPv4-mapped
    assert _metrics(settings, client=("::ffff:127.0.0.1", 5000)).status_code == 200
    assert _metrics(settings, client=("::1", 5000)).status_code == 200
    assert _metrics(settings, client=("::ffff:203.0.113.9", 5000)).status_code == 404


def test_a_metrics_token_is_required_from_everyone_once_set(tmp_path: Path, pg_engine: Any,
                                                           pg_database_url: str) -> None:
    token = secrets.token_urlsafe(24)
    settings = Settings(**production(tmp_path, metrics_token=token,
                                     **_sqlite(tmp_path, database_url=pg_database_url)))
    for client in (("203.0.113.9", 5000), ("127.0.0.1", 5000)):
        refused = _metrics(settings, client=client, headers={"Authorization": "Bearer " + token[:-1] + "x"})
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert _metrics(settings, client=client).status_code == 401
    got = _metrics(settings, client=("203.0.113.9", 5000), headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200 and "quaygate_safeguard_off" in got.text


def test_dev_mode_serves_metrics_to_anyone(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path, **_sqlite(tmp_path))
    assert _metrics(settings, client=("203.0.113.9", 5000)).status_code == 200

"""The adapter's private key files are its own (gate_adapters/runtime/keys.py ``read_private_file``,
adapter.py rule 5): the private_key_jwt key, the DPoP key and the barrier signing key. Outside dev, a key
file that group or others may read or write stops ``quaygate gate-adapter`` before anything starts, with a
plain message naming its settings key and the fix (exit 2), as ssh refuses such a key; in dev it is a
warning. Real files, real modes, the real command."""

from __future__ import annotations

import json
import logging
import os
import pwd
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

from gate_adapters.adapter import main as adapter_main

from .factories import TERMINAL

KEYS = {"auth.private_key_file": "gate-key.jwk", "auth.dpop_key_file": "dpop-key.jwk",
        "barrier_signing.key_file": "barrier-signing.jwk"}


def _config(tmp_path: Path, *, dev: bool) -> tuple[Path, dict[str, str]]:
    """A settings file naming all three keys, each a fresh EC key of mode 0600; the keys' ``d``."""
    secrets = {}
    for name in KEYS.values():
        key = ECKey.generate_key("P-256", private=True).as_dict(private=True)
        (tmp_path / name).write_text(json.dumps(key))
        (tmp_path / name).chmod(0o600)
        secrets[name] = str(key["d"])
    base_url = "http://127.0.0.1:8000" if dev else "https://quaygate.example.eu"
    config = tmp_path / "gate-adapter.toml"
    config.write_text(f'terminal = "{TERMINAL}"\noutbox = "o.sqlite3"\ndev = {str(dev).lower()}\n'
                      f'[service]\nbase_url = "{base_url}"\n'
                      f'[auth]\nclient_id = "gate"\nprivate_key_file = "gate-key.jwk"\ndpop_key_file = "dpop-key.jwk"\n'
                      f'[barrier_signing]\nkey_file = "barrier-signing.jwk"\n'
                      f'[http]\n[[http.devices]]\nname = "cam"\ntoken_sha256 = "{"0" * 64}"\nlanes = ["in-1"]\n'
                      f'kinds = ["plate"]\n[[lanes]]\nlane = "in-1"\n')
    return config, secrets


def test_keys_of_mode_0600_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, _ = _config(tmp_path, dev=False)
    assert adapter_main(["--config", str(config), "--check"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o660], ids=oct)
@pytest.mark.parametrize("setting", list(KEYS))
def test_outside_dev_a_key_file_others_may_read_or_write_does_not_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, mode: int) -> None:
    config, secrets = _config(tmp_path, dev=False)
    path = tmp_path / KEYS[setting]
    path.chmod(mode)
    for argv in (["--config", str(config), "--check"], ["--config", str(config)]):
        assert adapter_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"gate-adapter: bad settings: {setting}: {path} may be read or written by group or "
                              f"others (mode {mode:04o})"), err
        assert f"chmod 600 {path}" in err and "Traceback" not in err
        assert not any(d in err for d in secrets.values())  # never a word of a key
    assert not (tmp_path / "o.sqlite3").exists()  # nothing started


def test_make_keys_outside_dev_refuses_an_existing_key_others_may_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--make-keys`` keeps an existing key: one others may read is said, not silently kept."""
    config, _ = _config(tmp_path, dev=False)
    (tmp_path / KEYS["auth.dpop_key_file"]).chmod(0o644)
    assert adapter_main(["--config", str(config), "--make-keys"]) == 2
    assert "gate-adapter: bad settings: auth.dpop_key_file: " in capsys.readouterr().err


def test_in_dev_a_key_file_others_may_read_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    config, secrets = _config(tmp_path, dev=True)
    for name in KEYS.values():
        (tmp_path / name).chmod(0o644)
    caplog.set_level(logging.WARNING, logger="gate_adapters.keys")
    assert adapter_main(["--config", str(config), "--check"]) == 0, capsys.readouterr().err
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gate.adapter.key_file_exposed")]
    assert sorted(w.split(": ", 1)[1].split(" ", 1)[0] for w in warned) == sorted(
        str(tmp_path / name) for name in KEYS.values())
    assert all("mode 0644" in w and "chmod 600" in w for w in warned)
    assert not any(d in w for w in warned for d in secrets.values())


# ---- secrets in files of their own (config.py rule 10) -----------------------------------------------

SECRETS = {"auth.client_secret_file": "client-secret", "http.devices[0].token_file": "device.token",
           "http.officers[0].token_file": "officer.token", "mqtt.password_file": "mqtt.password",
           "lanes[0].barrier.token_file": "barrier.token", "lanes[1].barrier.password_file": "barrier.password"}


def _secrets_config(tmp_path: Path, *, dev: bool) -> tuple[Path, dict[str, str]]:
    """A settings file naming every kind of secret file, each of mode 0600, and the source's TLS key of
    mode 0640 (as with group ssl-cert); the secrets."""
    from .gate_tls import make_cert

    values = {}
    for i, name in enumerate(SECRETS.values()):
        values[name] = f"{name}-secret-{i}-" + "s" * 24
        (tmp_path / name).write_text(values[name] + "\n")
        (tmp_path / name).chmod(0o600)
    make_cert("localhost", make_cert("test CA", None, tmp_path / "ca"), tmp_path / "source", san=True)
    (tmp_path / "source.key").chmod(0o640)
    base_url = "http://127.0.0.1:8000" if dev else "https://quaygate.example.eu"
    config = tmp_path / "gate-adapter.toml"
    config.write_text(f'terminal = "{TERMINAL}"\noutbox = "o.sqlite3"\ndev = {str(dev).lower()}\n'
                      f'[service]\nbase_url = "{base_url}"\n'
                      f'[auth]\nclient_id = "gate"\nclient_secret_file = "client-secret"\n'
                      f'[http]\ncert_file = "source.pem"\nkey_file = "source.key"\n'
                      f'[[http.devices]]\nname = "cam"\ntoken_file = "device.token"\nlanes = ["in-1"]\n'
                      f'kinds = ["plate"]\n[[http.officers]]\nname = "duty-officer"\ntoken_file = "officer.token"\n'
                      f'[mqtt]\nusername = "gate"\npassword_file = "mqtt.password"\n'
                      f'[[lanes]]\nlane = "in-1"\nsources = ["http"]\n[lanes.barrier]\nkind = "http"\n'
                      f'url = "http://127.0.0.1:9/barrier"\ntoken_file = "barrier.token"\n'
                      f'[[lanes]]\nlane = "in-2"\n[lanes.barrier]\nkind = "http"\nurl = "http://127.0.0.1:9/barrier"\n'
                      f'username = "gate"\npassword_file = "barrier.password"\n')
    return config, values


def test_secrets_of_mode_0600_and_a_tls_key_of_mode_0640_start(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """TLS key files are the TLS library's to read, unchecked on purpose (0640, group ssl-cert, is usual)."""
    config, _ = _secrets_config(tmp_path, dev=False)
    assert adapter_main(["--config", str(config), "--check"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644], ids=oct)
@pytest.mark.parametrize("setting", list(SECRETS))
def test_outside_dev_a_secret_file_others_may_read_or_write_does_not_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, mode: int) -> None:
    config, values = _secrets_config(tmp_path, dev=False)
    path = tmp_path / SECRETS[setting]
    path.chmod(mode)
    for argv in (["--config", str(config), "--check"], ["--config", str(config)]):
        assert adapter_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"gate-adapter: bad settings: {setting}: {path} may be read or written by group or "
                              f"others (mode {mode:04o}): whoever reads it can use this secret"), err
        assert f"chmod 600 {path}" in err and "Traceback" not in err
        assert not any(v in err for v in values.values())  # never a word of a secret
    assert not (tmp_path / "o.sqlite3").exists()  # nothing started


@pytest.mark.parametrize("setting", [*SECRETS, "auth.dpop_key_file"])
def test_outside_dev_a_secret_or_key_file_another_user_owns_does_not_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str) -> None:
    """Whoever owns the file can rewrite it (a device token of their choosing) or open it to everyone at any
    time: a secret is this adapter's user's, or root's (keys.py)."""
    config, values = _secrets_config(tmp_path, dev=False)
    if setting == "auth.dpop_key_file":
        (tmp_path / "dpop.jwk").write_text(json.dumps(ECKey.generate_key("P-256", private=True).as_dict(private=True)))
        (tmp_path / "dpop.jwk").chmod(0o600)
        secret_line = 'client_secret_file = "client-secret"\n'
        config.write_text(config.read_text().replace(secret_line, secret_line + 'dpop_key_file = "dpop.jwk"\n'))
        path = tmp_path / "dpop.jwk"
    else:
        path = tmp_path / SECRETS[setting]
    os.chown(path, 65534, 65534)  # nobody's (the tests run as root, who may give it away)
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert adapter_main(["--config", str(config), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gate-adapter: bad settings: {setting}: {path} belongs to nobody (uid 65534), not to "
                          f"{me} (uid {os.geteuid()}), the user this adapter runs as"), err
    assert err.rstrip().endswith(f"give it to this adapter: chown {me} {path}"), err
    assert not any(v in err for v in values.values())


def test_in_dev_an_exposed_secret_file_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    config, values = _secrets_config(tmp_path, dev=True)
    for name in SECRETS.values():
        (tmp_path / name).chmod(0o644)
    caplog.set_level(logging.WARNING, logger="gate_adapters.keys")
    assert adapter_main(["--config", str(config), "--check"]) == 0, capsys.readouterr().err
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gate.adapter.key_file_exposed")]
    assert sorted(w.split(": ", 1)[1].split(" ", 1)[0] for w in warned) == sorted(
        str(tmp_path / name) for name in SECRETS.values())
    assert not any(v in w for w in warned for v in values.values())

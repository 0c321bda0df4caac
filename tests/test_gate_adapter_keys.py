"""The adapter's private key files are its own (gate_adapters/runtime/keys.py ``read_private_file``,
adapter.py rule 5): the private_key_jwt key, the DPoP key and the barrier signing key. Outside dev, a key
file that group or others may read or write stops ``quaygate gate-adapter`` before anything starts, with a
plain message naming its settings key and the fix (exit 2), as ssh refuses such a key; in dev it is a
warning. Real files, real modes, the real command."""

from __future__ import annotations

import json
import logging
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

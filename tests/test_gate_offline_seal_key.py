"""A new adapter credential never costs an offline decision (review 172, finding 1), against the real app (real
gate token, our real ES256 passes) and the adapter as ``build`` makes it (its settings file, its secret file).

Before, the outbox's chain of offline decisions (and the pass store, with its memory of that chain) was sealed
under a key derived from the adapter's client credential. A gate secret leaked during an outage, port security
rotated it (``quaygate client rotate-secret``) and the adapter was restarted with the new one: the chain no
longer held (``tampered``), ``unreconciled`` left out every decision (none held its seal any more), and the
service never heard of the offline gate-in: the right stayed ``nominated``, a second truck let in online.

Now the seals are under a seal key of the adapter's own (``seal_key_file``, beside the outbox by default: made
0600 once, never overwritten, refused when others may read it), which no credential change touches. An adapter
upgraded from the credential-derived seal carries its chain over at its first start (checked under the old
derivation, sealed again under the new key) without losing a decision; after that the credential alone vouches
for nothing. A tampered outbox is still seen.

Only the outage is staged (a closed port), and the attacker's edits (plain SQLite)."""
# ruff: noqa: F811 - ``gate`` is a fixture imported here and requested by name

from __future__ import annotations

import logging
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from gate_adapters.adapter import build, client_for
from gate_adapters.adapter import main as adapter_main
from gate_adapters.runtime.client import StaticToken, VerifyClient
from gate_adapters.runtime.config import AdapterSettings, parse
from gate_adapters.runtime.offline import OfflineMode, PassStore
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.seal import seal_key

from .factories import TERMINAL
from .processes import free_port
from .test_gate_offline import Adapter, issuer
from .test_gate_runtime import RecordingBarrier
from .test_gate_verify import Gate, gate  # noqa: F401


def _settings(tmp_path: Path, iss: str, *, secret: str) -> AdapterSettings:
    """The adapter's settings, its client secret in a file of its own (0600) holding ``secret``."""
    path = tmp_path / "gate-secret"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return parse({
        "terminal": TERMINAL, "outbox": "var/outbox.sqlite3", "dev": True,
        "service": {"base_url": "http://127.0.0.1:9", "issuer": iss},
        "auth": {"client_id": "gate", "client_secret_file": "gate-secret"},
        "http": {"port": free_port()}, "offline": {"enabled": True, "passes": "var/passes.sqlite3"},
        "lanes": [{"lane": "in-1"}]}, base=tmp_path)


def _start(gate: Gate, tmp_path: Path, *, secret: str) -> Adapter:
    """The adapter started as ``quaygate gate-adapter`` starts it (``build``: its files, its seals), its
    uplink cut; ``online`` reaches the real app when the test brings the service back."""
    built = build(_settings(tmp_path, issuer(gate), secret=secret))
    assert built.passes is not None
    online = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=gate.http)
    a = Adapter(online, built.outbox, built.passes, OfflineMode(online, built.passes, built.outbox),
                RecordingBarrier())
    a.down()
    return a


def _stop(a: Adapter) -> None:
    a.outbox.close()
    a.store.close()


def _tampered(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("gate.offline.outbox_tampered")]


def _reconciled_and_used(gate: Gate, a: Adapter, rid: str, first: dict[str, Any]) -> None:
    """The service back: the offline gate-in reaches it, the right is used, a second truck is refused."""
    kept = [r for r, _ in a.outbox.unreconciled()]
    assert kept[0] == first["request_id"], kept  # first in the chain's order (a refusal may follow it)
    a.up()
    assert a.offline.reconcile() == len(kept)
    assert a.outbox.unreconciled() == []
    assert gate.state(rid) == "gated_in"
    second = gate.verify(gate.body(1, mode="commit", request_id="second-truck"))
    assert second.status_code == 200, second.text
    assert (second.json()["decision"], second.json()["reasons"]) == ("deny", ["already_used"])


def test_an_offline_decision_outlives_a_new_client_secret_and_is_reconciled(
        gate: Gate, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The review's path: a truck let in offline on its pass; the gate secret leaks during the outage, port
    security rotates it, the adapter restarts with the new secret. The decision is still there, unreconciled,
    the chain holds, the pass store still knows the right used (a second truck offline: already_used, not a
    review for a store set aside), and once the service is back the gate-in is recorded."""
    caplog.set_level(logging.INFO, logger="gate_adapters")
    rid = gate.pickable(1)
    a = _start(gate, tmp_path, secret="the-first-gate-secret")
    a.up()
    assert a.offline.refresh() == 1
    a.down()
    first = a.truck(1)
    assert (first["decision"], first["offline"]["basis"], first["committed"]) == ("allow", "pass", True), first
    assert [r for r, _ in a.outbox.unreconciled()] == [first["request_id"]]
    _stop(a)

    a = _start(gate, tmp_path, secret="a-new-gate-secret-after-the-leak")  # rotated, restarted
    assert a.outbox.tampered is None and _tampered(caplog) == []
    again = a.truck(1)  # still offline: the store and the outbox both still know the right was used
    assert (again["decision"], again["reasons"]) == ("deny", ["already_used"]), again
    _reconciled_and_used(gate, a, rid, first)
    _stop(a)


def _as_before(gate: Gate, tmp_path: Path) -> tuple[AdapterSettings, bytes, dict[str, Any]]:
    """An adapter from before the seal key: its outbox and pass store sealed under the credential-derived key
    (as ``build`` sealed them), a truck let in offline and not reconciled. Its settings, that key's material,
    the truck's answer."""
    settings = _settings(tmp_path, issuer(gate), secret="the-first-gate-secret")
    _, credential = client_for(settings)
    assert settings.offline.passes is not None
    online = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=gate.http)
    old_box = Outbox(settings.outbox, secret=credential, strict=False)
    old_store = PassStore(settings.offline.passes, issuer=issuer(gate), terminal=TERMINAL, secret=credential,
                          strict=False)
    a = Adapter(online, old_box, old_store, OfflineMode(online, old_store, old_box), RecordingBarrier())
    assert a.offline.refresh() == 1
    a.down()
    first = a.truck(1)
    assert (first["decision"], first["committed"]) == ("allow", True), first
    _stop(a)
    assert not settings.seal_key.exists()
    return settings, credential, first


def _carried(gate: Gate, tmp_path: Path, rid: str, first: dict[str, Any], caplog: pytest.LogCaptureFixture,
             ) -> None:
    """The first start with the seal key: the chain and the store carried over, the key settled; then a new
    secret loses nothing either."""
    a = _start(gate, tmp_path, secret="the-first-gate-secret")
    key_file = tmp_path / "var" / "outbox-seal.key"
    assert key_file.exists() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not key_file.with_name("outbox-seal.key.new").exists()
    assert a.outbox.tampered is None and _tampered(caplog) == []
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("gate.offline.outbox_resealed") for m in said), said
    assert any(m.startswith("gate.offline.store_resealed") for m in said), said
    assert not any(m.startswith("gate.offline.store_untrusted") for m in said), said
    assert a.truck(1)["reasons"] == ["already_used"]  # the store carried over too: its passes, the use
    _stop(a)

    a = _start(gate, tmp_path, secret="a-new-gate-secret-after-the-leak")
    assert a.outbox.tampered is None and _tampered(caplog) == []
    _reconciled_and_used(gate, a, rid, first)
    _stop(a)


def test_an_adapter_sealed_under_its_credential_carries_its_chain_over_at_its_first_start(
        gate: Gate, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Its first start makes the seal key, checks the chain under the old derivation and seals it again under
    the new key: nothing lost, nothing tampered; a later new secret loses nothing either."""
    caplog.set_level(logging.INFO, logger="gate_adapters")
    rid = gate.pickable(1)
    _, _, first = _as_before(gate, tmp_path)
    _carried(gate, tmp_path, rid, first, caplog)


def test_a_carry_over_cut_short_is_taken_up_at_the_next_start(
        gate: Gate, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The first start stopped (a power cut) after the outbox was sealed again and before the pass store was,
    and before the key was settled: the next start takes up the same key, knows the head the store remembers
    from before, carries the store over: nothing tampered, nothing lost."""
    caplog.set_level(logging.INFO, logger="gate_adapters")
    rid = gate.pickable(1)
    settings, credential, first = _as_before(gate, tmp_path)
    key = seal_key(settings.seal_key, strict=False)
    assert key.pending is not None
    Outbox(settings.outbox, secret=key.secret, previous=credential, strict=False).close()  # and then the cut
    _carried(gate, tmp_path, rid, first, caplog)


@pytest.mark.parametrize("attack", ["deleted", "forged_under_the_credential"])
def test_a_tampered_outbox_is_still_seen_across_a_new_secret(
        gate: Gate, tmp_path: Path, caplog: pytest.LogCaptureFixture, attack: str) -> None:
    """Someone with the disk deletes the offline gate-in, or (holding the adapter's credential, not its seal
    key) writes the outbox afresh under the credential-derived seal, as an adapter from before would have:
    either way the outbox is tampered at the next start, and the second truck offline is a review."""
    caplog.set_level(logging.INFO, logger="gate_adapters")
    gate.pickable(1)
    a = _start(gate, tmp_path, secret="the-first-gate-secret")
    a.up()
    assert a.offline.refresh() == 1
    a.down()
    assert a.truck(1)["decision"] == "allow"
    path = a.outbox.path
    _stop(a)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("DELETE FROM offline_decisions")
        if attack == "forged_under_the_credential":
            db.execute("DELETE FROM outbox_chain")
    finally:
        db.close()
    if attack == "forged_under_the_credential":  # the chain's record sealed anew, under the credential
        settings = _settings(tmp_path, issuer(gate), secret="the-first-gate-secret")
        Outbox(path, secret=client_for(settings)[1], strict=False).close()

    a = _start(gate, tmp_path, secret="a-new-gate-secret-after-the-leak")
    assert a.outbox.tampered is not None and _tampered(caplog), caplog.text
    got = a.truck(1)
    assert (got["decision"], got["offline"]["basis"], got["committed"]) == ("review", "store_stale", False), got
    _stop(a)


def test_the_seal_key_is_made_once_and_refused_when_others_may_read_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Made 0600 at the first start, never again; outside dev, a seal key group or others may read stops the
    adapter (and ``--check``), exit 2 naming ``seal_key_file`` and the fix, never a word of the key."""
    settings = _settings(tmp_path, "http://localhost:8000", secret="the-first-gate-secret")
    key_file = settings.outbox.with_name("outbox-seal.key")
    made = b""
    for _ in range(2):
        built = build(settings)
        built.outbox.close()
        assert built.passes is not None
        built.passes.close()
        made = made or key_file.read_bytes()
        assert key_file.read_bytes() == made and not key_file.with_name("outbox-seal.key.new").exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(made.strip()) == 64
    key_file.chmod(0o640)
    config = tmp_path / "strict.toml"
    config.write_text(f'terminal = "{TERMINAL}"\noutbox = "var/outbox.sqlite3"\n'
                      f'[service]\nbase_url = "https://quaygate.example.eu"\n'
                      f'[auth]\nclient_id = "gate"\nclient_secret_file = "gate-secret"\n'
                      f'[http]\n[[http.devices]]\nname = "cam"\ntoken_sha256 = "{"0" * 64}"\nlanes = ["in-1"]\n'
                      f'kinds = ["plate"]\n[[lanes]]\nlane = "in-1"\n')
    for argv in (["--config", str(config), "--check"], ["--config", str(config)]):
        assert adapter_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"gate-adapter: bad settings: seal_key_file: {key_file} may be read or written by "
                              f"group or others (mode 0640)"), err
        assert f"chmod 600 {key_file}" in err and made.strip().decode() not in err
    assert key_file.read_bytes() == made

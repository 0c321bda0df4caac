"""What offline mode trusts, against the real app (real gate token, our real ES256 passes, SQLite and PostgreSQL):

- the pass store is sealed under the adapter's own secrets (offline.py rule 1, seal.py): someone who may write
  the store's file, but not read the adapter's key files, cannot make it vouch for a key of his or for passes
  he signed, nor put back a pass a refresh dropped, nor wind back the time it saw. After a restart such a
  store is taken as empty (every offline truck reviewed, never an allow) and logged; a store the adapter
  wrote itself survives a restart and is used;
- the outbox and the pass store are made 0600, and one group or others may write, or another user owns, stops
  the adapter outside dev (datafiles.py, adapter.py rule 10);
- a pass's life is judged on the service's clock (offline.py rule 3): an adapter whose wall clock was held
  behind while online (NTP spoofed), its uplink then cut, stops using a pass when the pass expires, not when
  its own clock says so, and still counts a right used online here.

Only the outage is staged (a closed port), and the attacker's edits of the store file (plain SQLite)."""
# ruff: noqa: F811 - ``gate`` and ``adapters`` are fixtures imported here and requested by name

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey

from gate_adapters.adapter import build
from gate_adapters.adapter import main as adapter_main
from gate_adapters.runtime.config import ConfigError, load
from gate_adapters.runtime.datafiles import DataFileExposed
from gate_adapters.runtime.offline import OfflineMode, PassStore
from gate_adapters.runtime.outbox import Outbox
from release_service.domain.gate_pass import PASS_TYP, BadgeHash

from .factories import TERMINAL, container
from .test_gate_adapter_keys import _config
from .test_gate_offline import SECRET, Adapter, _at_lane, adapters, issuer, payload  # noqa: F401
from .test_gate_runtime import reads
from .test_gate_verify import Gate, gate  # noqa: F401

EVIL_BADGE = "AP-666"  # the attacker's own badge


def _now() -> datetime:
    return datetime.now(UTC)


def _truck(a: Adapter, n: int, *, badge: str, service_up: bool = False) -> dict[str, Any]:
    lane = a.lane(service_up=service_up)
    results = [r for read in reads("1-ABC-123", n, at=_now(), badge=badge) for r in lane.feed(read)]
    assert len(results) == 1 and results[0].response is not None, results
    return results[0].response


def _restart(a: Adapter, *, secret: bytes = SECRET) -> None:
    """A new process over the same files, its uplink cut."""
    a.outbox.close()
    a.store.close()
    a.outbox = Outbox(a.outbox.path)
    a.store = PassStore(a.store.path, issuer=a.store.issuer, terminal=TERMINAL, secret=secret)
    a.offline = OfflineMode(a.online, a.store, a.outbox)
    a.down()


@contextmanager
def _file(a: Adapter) -> Iterator[sqlite3.Connection]:
    """The attacker's own connection to the store file (he may write it, nothing more)."""
    db = sqlite3.connect(a.store.path, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def _untrusted(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("gate.offline.store_untrusted")]


# -- the seal ----------------------------------------------------------------------------------------


def _forge_key_and_pass(a: Adapter, db: sqlite3.Connection) -> None:
    """The review's attack: his own P-256 key in ``meta.jwks`` under the service's own kid, and a pass he
    signed from a genuine one, naming his badge (screening clear, lights green, as the genuine pass says)."""
    (genuine,) = [t for (t,) in db.execute("SELECT token FROM passes")]
    header = jws.extract_compact(genuine.encode()).headers()
    evil = ECKey.generate_key("P-256", private=True, parameters={"kid": header["kid"], "alg": "ES256"})
    claims = payload(genuine)
    claims["jti"] = str(uuid.uuid4())
    hashed = BadgeHash.from_claims(claims["badge_hash"])  # his badge as the pass hashes badges (review 142)
    claims["badges"] = [{**claims["badges"][0], "number_hash": hashed.of("alfapass", EVIL_BADGE),
                         "card_uid_hash": None}]
    token = jws.serialize_compact({"alg": "ES256", "typ": PASS_TYP, "kid": header["kid"]},
                                  json.dumps(claims).encode(), evil, algorithms=["ES256"])
    db.execute("UPDATE meta SET value = ? WHERE key = 'jwks'", (json.dumps({"keys": [evil.as_dict(private=False)]}),))
    db.execute("INSERT INTO passes VALUES (?, ?, ?, ?)",
               (claims["jti"], claims["right"]["container"], float(claims["exp"]), token))


def test_a_foreign_key_and_a_pass_it_signed_in_the_store_file_are_refused_after_a_restart(
        gate: Gate, adapters: list[Adapter], caplog: pytest.LogCaptureFixture) -> None:
    """Write access to ``passes.sqlite3`` (not to the key files): his key in meta.jwks under the real kid,
    his pass for a nominated container with his badge; the adapter restarts with its uplink cut. Without the
    seal it verified his pass with his key and opened the barrier; now the store is empty, a review."""
    gate.pickable(1)
    a = adapters[0]
    assert a.offline.refresh() == 1
    with _file(a) as db:
        _forge_key_and_pass(a, db)
    caplog.set_level(logging.INFO, logger="gate_adapters.offline")
    _restart(a)
    got = _truck(a, 1, badge=EVIL_BADGE)
    assert (got["decision"], got["offline"]["basis"], got["committed"]) == ("review", "store_stale", False), got
    assert [c.command for c in a.barrier.commands] == ["hold"]
    (said,) = _untrusted(caplog)
    assert str(a.store.path) in said and "seal does not hold" in said
    # The next refresh seals a set of its own again: the genuine pass decides, his badge is unknown.
    a.up()
    assert a.offline.refresh() == 1
    a.down()
    theirs = _truck(a, 1, badge=EVIL_BADGE)
    assert (theirs["decision"], theirs["offline"]["basis"]) == ("deny", "pass") and "badge_unknown" in theirs["reasons"]
    assert _truck(a, 1, badge=gate.badge_number)["decision"] == "allow"


def _put_back_a_dropped_pass(gate: Gate, a: Adapter) -> None:
    """A genuine pass, copied from the file before its right was revoked and put back after the refresh
    that dropped it (refresh rule 2: a revoked right has no pass)."""
    with _file(a) as db:
        rows = list(db.execute("SELECT pass_id, container, expires_at, token FROM passes"))
    revoked = next(r for r in rows if payload(r[3])["right"]["container"] == container(2))
    r = gate.http.post(f"/api/v1/releases/{payload(revoked[3])['sub']}/revoke", headers=gate.as_("line"),
                       json={"reason": "sold to another buyer"})
    assert r.status_code == 200, r.text
    a.up()
    assert a.offline.refresh() == 1
    with _file(a) as db:
        db.execute("INSERT INTO passes VALUES (?, ?, ?, ?)", revoked)


def _no_seal(gate: Gate, a: Adapter) -> None:
    """A store as an adapter before seals wrote it (or someone else): no seal at all."""
    with _file(a) as db:
        db.execute("DELETE FROM meta WHERE key IN ('seal', 'wall_seen_seal')")


def _time_seen_wound_back(gate: Gate, a: Adapter) -> None:
    """The latest time seen set back a day (offline.py rule 3: what a clock wound back across a restart
    is measured against)."""
    with _file(a) as db:
        (seen,) = db.execute("SELECT value FROM meta WHERE key = 'wall_seen'").fetchone()
        db.execute("UPDATE meta SET value = ? WHERE key = 'wall_seen'",
                   ((datetime.fromisoformat(seen) - timedelta(days=1)).isoformat(),))


@pytest.mark.parametrize(("tamper", "said"), [
    (_put_back_a_dropped_pass, "seal does not hold"),
    (_no_seal, "no seal"),
    (_time_seen_wound_back, "time it saw"),
], ids=["dropped_pass_put_back", "no_seal", "time_seen_wound_back"])
def test_a_store_whose_seal_does_not_hold_is_empty_after_a_restart_and_logged(
        gate: Gate, adapters: list[Adapter], caplog: pytest.LogCaptureFixture, tamper: Any, said: str) -> None:
    gate.pickable(1)
    gate.pickable(2)
    a = adapters[0]
    assert a.offline.refresh() == 2
    tamper(gate, a)
    caplog.set_level(logging.INFO, logger="gate_adapters.offline")
    _restart(a)
    for n in (2, 1):  # nothing stored is used (2 first: the right revoked): a review, never an allow
        got = _truck(a, n, badge=gate.badge_number)
        assert (got["decision"], got["offline"]["basis"], got["committed"]) == ("review", "store_stale", False), got
    (logged,) = _untrusted(caplog)
    assert said in logged, logged
    assert a.outbox.offline_uses() == {"in": set(), "out": set()}


def test_the_adapters_own_store_survives_a_restart_and_a_new_key_sets_it_aside_once(
        gate: Gate, adapters: list[Adapter], caplog: pytest.LogCaptureFixture) -> None:
    gate.pickable(1)
    gate.pickable(2)
    a = adapters[0]
    assert a.offline.refresh() == 2
    a.offline.maintain()  # the lanes' tick writes the time seen, sealed too
    caplog.set_level(logging.INFO, logger="gate_adapters.offline")
    _restart(a)
    assert _untrusted(caplog) == []
    got = _truck(a, 1, badge=gate.badge_number)
    assert (got["decision"], got["offline"]["basis"], got["committed"]) == ("allow", "pass", True), got
    # The adapter's key rotated (a new client key): the store sealed under the old one is set aside, logged,
    # until the first refresh seals it again.
    _restart(a, secret=b"a new client key")
    assert len(_untrusted(caplog)) == 1
    assert _truck(a, 2, badge=gate.badge_number)["decision"] == "review"
    a.up()
    assert a.offline.refresh() == 2
    _restart(a, secret=b"a new client key")
    assert len(_untrusted(caplog)) == 1
    assert _truck(a, 2, badge=gate.badge_number)["decision"] == "allow"


# -- the files' modes and owners ---------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_outbox_and_the_pass_store_are_made_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)  # SQLite alone would make them 0644 (and its -wal and -shm too)
    try:
        box = Outbox(tmp_path / "var" / "outbox.sqlite3")
        store = PassStore(tmp_path / "var" / "passes.sqlite3", issuer="https://quaygate.example.eu", terminal=TERMINAL,
                          secret=SECRET)
        box.put({"request_id": "r-1", "lane": "in-1", "mode": "commit"})
        store.saw(_now())
        files = sorted(p.name for p in (tmp_path / "var").iterdir())
        assert files == ["outbox.sqlite3", "outbox.sqlite3-shm", "outbox.sqlite3-wal",
                         "passes.sqlite3", "passes.sqlite3-shm", "passes.sqlite3-wal"]
        assert {p.name: _mode(p) for p in (tmp_path / "var").iterdir()} == dict.fromkeys(files, 0o600)
        assert _mode(tmp_path / "var") == 0o700
        box.close()
        store.close()
    finally:
        os.umask(old)


def _offline_config(tmp_path: Path, *, dev: bool) -> Path:
    config, _ = _config(tmp_path, dev=dev)
    config.write_text(config.read_text() + '[offline]\nenabled = true\npasses = "p.sqlite3"\n')
    return config


def _refused_at_start(config: Path) -> str:
    """What the adapter's start (``build``: before anything starts) refuses; the test fails if it starts."""
    try:
        adapter = build(load(config))
    except ConfigError as exc:
        return str(exc)
    adapter.outbox.close()
    if adapter.passes is not None:
        adapter.passes.close()
    pytest.fail("the adapter was built")


def _make_files(tmp_path: Path) -> None:
    Outbox(tmp_path / "o.sqlite3").close()
    PassStore(tmp_path / "p.sqlite3", issuer="https://quaygate.example.eu", terminal=TERMINAL, secret=SECRET).close()


@pytest.mark.parametrize(("key", "name", "mode"), [
    ("outbox", "o.sqlite3", 0o620), ("outbox", "o.sqlite3", 0o666), ("offline.passes", "p.sqlite3", 0o602),
    ("offline.passes", "p.sqlite3", 0o660), ("offline.passes", "p.sqlite3-wal", 0o622),
], ids=lambda v: oct(v) if isinstance(v, int) else v)
def test_outside_dev_an_outbox_or_pass_store_others_may_write_does_not_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, name: str, mode: int) -> None:
    config = _offline_config(tmp_path, dev=False)
    _make_files(tmp_path)
    path = tmp_path / name
    path.touch()
    path.chmod(mode)
    assert adapter_main(["--config", str(config), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gate-adapter: bad settings: {key}: {path} may be written by group or others "
                          f"(mode {mode:04o}): whoever writes it can "), err
    assert err.rstrip().endswith(f"make it its owner's alone: chmod 600 {path}") and "Traceback" not in err
    assert _refused_at_start(config) == err.removeprefix("gate-adapter: bad settings: ").rstrip()
    assert _mode(path) == mode  # left as it was: the adapter never started


def test_outside_dev_an_outbox_another_user_owns_or_in_a_folder_others_may_write_does_not_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _offline_config(tmp_path, dev=False)
    _make_files(tmp_path)
    os.chown(tmp_path / "p.sqlite3", 65534, 65534)  # nobody's (the tests run as root, who may give it away)
    err = _refused_at_start(config)
    assert err.startswith(f"offline.passes: {tmp_path / 'p.sqlite3'} belongs to "), err
    assert f"give it to this adapter: chown root {tmp_path / 'p.sqlite3'}" in err
    os.chown(tmp_path / "p.sqlite3", 0, 0)
    tmp_path.chmod(0o777)  # anyone may put another file in the outbox's place
    try:
        assert adapter_main(["--config", str(config), "--check"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"gate-adapter: bad settings: outbox: {tmp_path} may be written by group or others "
                              f"(mode 0777)"), err
        assert f"chmod go-w {tmp_path}" in err
    finally:
        tmp_path.chmod(0o700)
    assert adapter_main(["--config", str(config), "--check"]) == 0, capsys.readouterr().err


def test_the_stores_refuse_a_file_others_may_write_unless_told_it_is_dev(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _make_files(tmp_path)
    (tmp_path / "o.sqlite3").chmod(0o666)
    (tmp_path / "p.sqlite3").chmod(0o664)
    with pytest.raises(DataFileExposed, match="chmod 600"):
        Outbox(tmp_path / "o.sqlite3")
    with pytest.raises(DataFileExposed, match="chmod 600"):
        PassStore(tmp_path / "p.sqlite3", issuer="https://quaygate.example.eu", terminal=TERMINAL, secret=SECRET)
    caplog.set_level(logging.WARNING, logger="gate_adapters.datafiles")
    Outbox(tmp_path / "o.sqlite3", strict=False).close()
    PassStore(tmp_path / "p.sqlite3", issuer="https://quaygate.example.eu", terminal=TERMINAL, secret=SECRET,
              strict=False).close()
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gate.adapter.data_file_exposed")]
    assert len(warned) == 2 and all("allowed with dev = true only" in w for w in warned)


# -- the service's clock -----------------------------------------------------------------------------

BEHIND = timedelta(minutes=14)


def test_a_clock_held_behind_while_online_never_stretches_a_pass_past_its_expiry(
        gate: Gate, adapters: list[Adapter], caplog: pytest.LogCaptureFixture) -> None:
    """NTP spoofed: the adapter's wall clock reads 14 min behind while it refreshes, then the uplink is cut.
    Judged on that clock, the 10-minute passes would not be valid yet for 14 minutes and then be used up to
    the store's limit (15 min), long after they expired. Judged on the service's clock, they are used from
    their issue to their expiry, and the refresh says the clock is behind."""
    for n in (1, 2, 3):
        gate.pickable(n)
    a = adapters[0]
    wall, mono = a.clocked()
    wall[0] = refreshed = _now() - BEHIND
    caplog.set_level(logging.INFO, logger="gate_adapters.offline")
    assert a.offline.refresh() == 3
    (t, _), *_ = a.store.passes(_now())
    iat, life = payload(t)["iat"], payload(t)["exp"] - payload(t)["iat"]
    assert life == 600
    a.down()
    got, decided = [], []
    for n, since_refresh in ((1, 300), (2, life + 60), (3, BEHIND.seconds + 30)):
        wall[0] = refreshed + timedelta(seconds=since_refresh)
        mono[0] = 1000.0 + since_refresh
        answer = _truck(a, n, badge=gate.badge_number)
        got.append((answer["decision"], answer["offline"]["basis"], answer["committed"]))
        decided.append(datetime.fromisoformat(answer["offline"]["decided_at"]))
    # 5 min after the refresh: valid; a minute past the passes' expiry: none; when the adapter's own clock
    # says 30 s after their issue (inside the store's 15 min): none either, never an allow.
    assert got == [("allow", "pass", True), ("review", "no_pass", False), ("review", "no_pass", False)]
    # Decided on the service's clock, as the reconcile judges the pass (pass_covers).
    assert abs(decided[0] - datetime.fromtimestamp(iat + 300, UTC)) < timedelta(seconds=10), decided
    assert [c.command for c in a.barrier.commands] == ["open", "hold", "hold"]
    (behind,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gate.offline.clock_behind")]
    assert "behind the service's" in behind


def test_a_right_used_online_is_counted_offline_with_the_clock_held_behind(
        gate: Gate, adapters: list[Adapter], tmp_path: Path) -> None:
    """offline.py rule 6 with the clock held behind: the online use is stamped by the adapter's clock (14 min
    behind), the pass by the service's. The uses read are widened by how far behind the clock was at the
    refresh, so the same right is refused at another lane once the uplink is cut."""
    gate.pickable(1)
    a = adapters[0]
    wall, mono = [_now() - BEHIND], [1000.0]
    a.outbox.close()
    a.outbox = Outbox(tmp_path / "spoofed-outbox.sqlite3", wall=lambda: wall[0].timestamp())
    a.offline = OfflineMode(a.online, a.store, a.outbox, clock=lambda: mono[0], wall=lambda: wall[0])
    assert a.offline.refresh() == 1
    first = _at_lane(a, "in-1", "in", service_up=True)
    assert first.response is not None and (first.decision, first.response["committed"]) == ("allow", True)
    a.down()
    second = _at_lane(a, "in-2", "in", service_up=False)
    assert second.offline and second.response is not None
    assert (second.decision, second.response["reasons"]) == ("deny", ["already_used"]), second.response
    assert [c.command for c in a.barrier.commands] == ["open", "hold"]


def test_an_old_passes_answer_replayed_is_refused_and_the_passes_stay_as_they_were(
        gate: Gate, adapters: list[Adapter], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 155, finding 3: nothing tied a passes answer to the request that asked for it; an answer
    kept by a man in the middle (TLS broken) and replayed 9 minutes later was taken with its old
    ``issued_at`` as the service's time at a refresh made now, so its passes lived another lifetime: a
    truck 11 minutes after their issue (past their 10) was allowed. Now an answer issued more than
    ``STALE_ANSWER`` before it was asked for is refused (logged), the store as it was: that truck is a
    review. The service answers the passes with ``Cache-Control: no-store``."""
    gate.pickable(1)
    a = adapters[0]
    wall, mono = a.clocked()
    start = wall[0]
    real = a.online.call
    kept: list[dict[str, Any]] = []

    def recording(method: str, url: str, *args: Any, **kw: Any) -> dict[str, Any]:
        got = real(method, url, *args, **kw)
        if url.startswith("/gate/v1/passes"):
            kept.append(got)
        return got

    monkeypatch.setattr(a.online, "call", recording)
    assert a.offline.refresh() == 1
    before = a.store.last_refresh()
    wall[0], mono[0] = start + timedelta(minutes=9), 1000.0 + 540

    def replaying(method: str, url: str, *args: Any, **kw: Any) -> dict[str, Any]:
        return kept[0] if url.startswith("/gate/v1/passes") else real(method, url, *args, **kw)

    monkeypatch.setattr(a.online, "call", replaying)
    caplog.set_level(logging.INFO, logger="gate_adapters.offline")
    a.offline.refresh()
    assert a.store.last_refresh() == before  # the passes as they were
    assert [r for r in caplog.records if r.getMessage().startswith("gate.offline.answer_stale")]
    monkeypatch.undo()
    a.down()
    wall[0], mono[0] = start + timedelta(minutes=11), 1000.0 + 660
    answer = _truck(a, 1, badge=gate.badge_number)
    assert (answer["decision"], answer["committed"]) == ("review", False), answer
    got = gate.http.get("/gate/v1/passes", headers={"Authorization": f"Bearer {gate.gate_token}"})
    assert got.status_code == 200 and got.headers.get("cache-control") == "no-store", got.headers

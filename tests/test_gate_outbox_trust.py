"""The outbox's offline decisions are tamper-evident (review 92; outbox.py rule 10, offline.py rule 7), against the
real app (real gate token, our real ES256 passes), the adapter's real SQLite files.

Someone who may write the adapter's data files (a local attacker, a technician with the disk) but not read its
key files deletes the record of an offline gate-in before it is reconciled (the service never learns of the
use, the right is let in again), edits which right it names, marks it acknowledged, deletes one in the middle,
or puts back a whole earlier copy of the file. Each attack is first shown as it was (an outbox without the
seal: ``secret=None``), then refused or flagged: the chain does not hold, ``gate.offline.outbox_tampered`` is
logged, every offline truck is a review, the genuine decisions still reach the service; the service raises
port security's alarm (``release.gate_outbox_alarm``) at a head that goes back, a place used twice, or an
outbox its adapter says no longer holds. A file from before the chain is sealed once at its first start.

Only the outage is staged (a closed port), and the attacker's edits (plain SQLite)."""
# ruff: noqa: F811 - ``gate`` is a fixture imported here and requested by name

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gate_adapters.runtime.client import StaticToken, VerifyClient
from gate_adapters.runtime.offline import OfflineMode, PassStore
from gate_adapters.runtime.outbox import Outbox
from quaygate.schema import audit_log

from .factories import TERMINAL
from .test_gate_offline import SECRET, Adapter, issuer, offline_rows
from .test_gate_runtime import RecordingBarrier
from .test_gate_verify import Gate, gate  # noqa: F401


@pytest.fixture(params=["sealed", "unsealed"])
def adapter(request: pytest.FixtureRequest, gate: Gate, tmp_path: Path) -> Iterator[Adapter]:
    """One adapter; ``unsealed`` is the outbox as it was before review 92 (no secret: no chain), to show
    each attack succeed there."""
    secret = SECRET if request.param == "sealed" else None
    online = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=gate.http)
    outbox = Outbox(tmp_path / f"{request.param}-outbox.sqlite3", secret=secret)
    store = PassStore(tmp_path / "passes.sqlite3", issuer=issuer(gate), terminal=TERMINAL, secret=SECRET)
    a = Adapter(online, outbox, store, OfflineMode(online, store, outbox), RecordingBarrier())
    yield a
    a.outbox.close()
    a.store.close()


def _sealed(a: Adapter) -> bool:
    """Which flavour this adapter is, by its file's name (never by what the outbox says of itself)."""
    return a.outbox.path.name.startswith("sealed")


def _restart(a: Adapter, *, secret: bytes | None | str = "same") -> None:
    """A new process over the same files, its uplink cut."""
    sealed = _sealed(a) if secret == "same" else secret is not None
    a.outbox.close()
    a.store.close()
    a.outbox = Outbox(a.outbox.path, secret=SECRET if sealed else None)
    a.store = PassStore(a.store.path, issuer=a.store.issuer, terminal=TERMINAL, secret=SECRET)
    a.offline = OfflineMode(a.online, a.store, a.outbox)
    a.down()


def _edit(a: Adapter, *statements: str) -> None:
    """The attacker's own connection to the outbox file (he may write it, nothing more)."""
    db = sqlite3.connect(a.outbox.path, isolation_level=None)
    try:
        for sql in statements:
            db.execute(sql)
    finally:
        db.close()


def _tampered(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("gate.offline.outbox_tampered")]


def _alarms(gate: Gate) -> list[dict[str, Any]]:
    with gate.engine.connect() as conn:
        return [dict(d) for (d,) in conn.execute(sa.select(audit_log.c.data).where(
            audit_log.c.kind == "release.gate_outbox_alarm").order_by(audit_log.c.id))]


# -- a decision deleted or edited before it is reconciled ----------------------------------------------------


@pytest.mark.parametrize("attack", ["deleted", "other_right", "marked_reconciled"])
def test_an_offline_gate_in_deleted_or_edited_is_seen_and_never_lets_a_second_truck_in(
        gate: Gate, adapter: Adapter, caplog: pytest.LogCaptureFixture, attack: str) -> None:
    """A truck gated in offline; the uplink stays cut; someone with the disk deletes that record (or makes it
    name another right, or marks it acknowledged), and the adapter restarts. Unsealed, the same right lets
    a second truck in, and the service would never hear of the first. Sealed: the outbox is tampered,
    logged, and the second truck is a review (barrier held, an officer called)."""
    rid = gate.pickable(1)
    a = adapter
    assert a.offline.refresh() == 1
    a.down()
    first = a.truck(1)
    assert (first["decision"], first["committed"]) == ("allow", True)
    _edit(a, {"deleted": "DELETE FROM offline_decisions",
              "other_right": f"UPDATE offline_decisions SET release_id = '{uuid.uuid4()}'",
              "marked_reconciled": "UPDATE offline_decisions SET reconciled_at = 1, result = '{}'"}[attack])
    caplog.set_level(logging.INFO, logger="gate_adapters.offline")
    _restart(a)
    second = a.truck(1)
    if not _sealed(a):  # the attack as it was
        if attack == "marked_reconciled":  # the right still counts here, but the service never hears of it
            assert second["reasons"] == ["already_used"]
            assert first["request_id"] not in [r for r, _ in a.outbox.unreconciled()]
        else:
            assert (second["decision"], second["committed"]) == ("allow", True)
        return
    assert a.outbox.tampered is not None and len(_tampered(caplog)) >= 2  # at start, and at the decision
    assert (second["decision"], second["offline"]["basis"], second["committed"]) == ("review", "store_stale", False)
    assert a.barrier.commands[-1].command == "hold" and a.barrier.commands[-1].call_officer
    a.up()
    a.offline.maintain()  # reconnected: what is genuine is reported, and the tampering told
    # Marked acknowledged without the service's answer: reported all the same, the gate-in recorded. Deleted
    # or edited: not this adapter's words any more; port security hears the outbox no longer holds.
    assert gate.state(rid) == ("gated_in" if attack == "marked_reconciled" else "nominated")
    assert [x["alarm"] for x in _alarms(gate)] == ["outbox_tampered"]


def test_a_decision_deleted_in_the_middle_breaks_the_chain_and_the_others_still_reach_the_service(
        gate: Gate, adapter: Adapter, caplog: pytest.LogCaptureFixture) -> None:
    """Three trucks decided offline; the second's record deleted. Sealed: the chain names the gap, and the
    two genuine decisions are still reported (the service must learn of every use this adapter made)."""
    a = adapter
    a.down()
    for n in (1, 2, 3):  # no pass fetched: reviews, each kept and reported like any offline decision
        assert a.truck(n)["decision"] == "review"
    second = a.outbox.unreconciled()[1][0]
    _edit(a, f"DELETE FROM offline_decisions WHERE request_id = '{second}'")
    caplog.set_level(logging.INFO, logger="gate_adapters.offline")
    _restart(a)
    if not _sealed(a):
        assert a.outbox.tampered is None and len(a.outbox.unreconciled()) == 2  # nothing sees the gap
        return
    assert a.outbox.tampered == "offline decision 2 is missing", a.outbox.tampered
    a.up()
    assert a.offline.reconcile() == 2
    assert [(r.outbox_seq, r.verdict) for r in sorted(offline_rows(gate), key=lambda r: r.outbox_seq)] == [
        (1, "nothing_to_record"), (3, "nothing_to_record")]


def test_a_report_edited_or_decisions_swapped_are_seen(gate: Gate, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The report's text edited (another badge: the reads it names), or two decisions' places swapped: the
    chain does not hold, and the edited report is never sent as this adapter's."""
    caplog.set_level(logging.INFO, logger="gate_adapters.offline")
    for attack in ("report", "swapped"):
        online = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=gate.http)
        box = Outbox(tmp_path / f"sealed-{attack}.sqlite3", secret=SECRET)
        store = PassStore(tmp_path / f"{attack}-passes.sqlite3", issuer=issuer(gate), terminal=TERMINAL,
                          secret=SECRET)
        a = Adapter(online, box, store, OfflineMode(online, store, box), RecordingBarrier())
        a.down()
        a.truck(1)
        a.truck(2)
        _edit(a, "UPDATE offline_decisions SET report = replace(report, 'AP-', 'XX-') WHERE seq = 1"
              if attack == "report" else "UPDATE offline_decisions SET seq = 3 - seq + 100")
        if attack == "swapped":
            _edit(a, "UPDATE offline_decisions SET seq = seq - 100")
        _restart(a)
        assert a.outbox.tampered is not None, attack
        sent = a.outbox.unreconciled()
        assert len(sent) == (1 if attack == "report" else 0), (attack, sent)
        a.outbox.close()
        a.store.close()


def test_an_emptied_chain_restarted_is_tampered_and_lets_no_second_truck_in(
        gate: Gate, adapter: Adapter, caplog: pytest.LogCaptureFixture) -> None:
    """Review 155, finding 1: a truck gated in offline on a right; the attacker empties the chain and the
    decisions (``DELETE FROM outbox_chain; DELETE FROM offline_decisions``) and power-cycles the adapter.
    Before, the start took the file for one from before the chain and sealed it under a new outbox id (a
    warning only): intact, and a second truck on the same right was an allow. Now the pass store remembers
    the chain's id and head: another chain is tampered, the second truck a review."""
    rid = gate.pickable(1)
    a = adapter
    assert a.offline.refresh() == 1
    a.down()
    first = a.truck(1)
    assert (first["decision"], first["committed"]) == ("allow", True)
    _edit(a, "DELETE FROM outbox_chain", "DELETE FROM offline_decisions")
    caplog.set_level(logging.INFO, logger="gate_adapters.offline")
    _restart(a)
    second = a.truck(1)
    if not _sealed(a):  # the attack as it was
        assert (second["decision"], second["committed"]) == ("allow", True)
        return
    assert a.outbox.tampered is not None and _tampered(caplog), a.outbox.position()
    assert a.outbox.position()["intact"] is False  # type: ignore[index]
    assert (second["decision"], second["committed"]) == ("review", False), second
    assert a.barrier.commands[-1].command == "hold"
    a.up()
    a.offline.maintain()
    assert gate.state(rid) == "nominated"
    assert "outbox_tampered" in [x["alarm"] for x in _alarms(gate)]


# -- a file from before the chain --------------------------------------------------------------------------


def test_an_outbox_from_before_the_chain_is_sealed_once_at_its_first_start(
        gate: Gate, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An adapter upgraded in place: its outbox (schema 2, no chain) holds an offline gate-in not yet
    reconciled. At the first start with the secret it is sealed as it stands (logged), not tampered; the
    right still counts as used; the report reaches the service with its place; a second start seals nothing."""
    gate.pickable(1)
    online = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=gate.http)
    box = Outbox(tmp_path / "sealed-outbox.sqlite3")
    store = PassStore(tmp_path / "passes.sqlite3", issuer=issuer(gate), terminal=TERMINAL, secret=SECRET)
    a = Adapter(online, box, store, OfflineMode(online, store, box), RecordingBarrier())
    assert a.offline.refresh() == 1
    assert a.truck(1)["decision"] == "allow"
    _edit(a, "DROP INDEX offline_decisions_seq", "DROP TABLE outbox_chain",
          *(f"ALTER TABLE offline_decisions DROP COLUMN {c}" for c in ("seq", "prev", "digest", "mac", "ack")),
          "PRAGMA user_version = 2")  # as an adapter before review 92 left it
    caplog.set_level(logging.INFO, logger="gate_adapters.offline")
    _restart(a, secret=SECRET)
    assert [r.getMessage() for r in caplog.records if "outbox_sealed" in r.getMessage()], "the sealing is logged"
    assert a.outbox.tampered is None and a.outbox.position() == {"id": a.outbox.position()["id"], "seq": 1,  # type: ignore[index]
                                                                 "intact": True}
    again = a.truck(1)
    assert (again["decision"], again["reasons"]) == ("deny", ["already_used"])
    caplog.clear()
    _restart(a)
    assert a.outbox.tampered is None and not [r for r in caplog.records if "outbox_sealed" in r.getMessage()]
    a.up()
    assert a.offline.reconcile() == 2
    assert sorted(r.outbox_seq for r in offline_rows(gate)) == [1, 2]
    a.outbox.close()
    a.store.close()


# -- what the chain cannot see: the whole file put back --------------------------------------------------


def _copy(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as s, sqlite3.connect(dst) as d:
        s.backup(d)
    s.close()
    d.close()
    os.chmod(dst, 0o600)


def _put_back(a: Adapter, copy: Path) -> None:
    a.outbox.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(a.outbox.path) + suffix).unlink(missing_ok=True)
    shutil.copy2(copy, a.outbox.path)


def test_an_earlier_copy_of_the_outbox_put_back_raises_the_alarm(gate: Gate, adapter: Adapter,
                                                                 tmp_path: Path) -> None:
    """A copy of the outbox taken after one offline decision; a second is decided and reconciled, the service
    hears the head (2) at the next refresh; the copy is put back and the adapter restarts. The copy's chain
    holds, but the pass store saw head 2: tampered here (review 155, finding 1). Sealed: the refresh tells
    head 1, the service raises ``outbox_rolled_back``; the next decision, at place 2 again, raises it once
    more (one place, two decisions). Unsealed: nothing is told, nothing raised."""
    a = adapter
    a.down()
    a.truck(1)
    _copy(a.outbox.path, tmp_path / "earlier.sqlite3")
    a.truck(2)
    a.up()
    assert a.offline.reconcile() == 2
    a.offline.refresh()
    assert _alarms(gate) == []
    _put_back(a, tmp_path / "earlier.sqlite3")
    _restart(a)
    if not _sealed(a):
        assert a.outbox.tampered is None  # the copy is self-consistent
        a.up()
        a.offline.refresh()
        assert _alarms(gate) == []
        return
    # Its chain holds, but the pass store saw head 2 (review 155, finding 1): tampered here too.
    assert a.outbox.tampered == "its head (1) is behind the one the pass store saw (2): an earlier copy"
    a.up()
    a.offline.refresh()
    (alarm,) = _alarms(gate)
    assert (alarm["alarm"], alarm["told_seq"], alarm["known_seq"]) == ("outbox_rolled_back", 1, 2), alarm
    a.offline.refresh()
    assert len(_alarms(gate)) == 1  # once per event, not once per refresh
    a.down()
    a.truck(3)  # decided at place 2 again
    a.up()
    a.offline.reconcile()
    again = _alarms(gate)[-1]
    assert (again["alarm"], again["told_seq"]) == ("outbox_rolled_back", 2) and again["other_request_id"], again


def test_a_tampered_outbox_is_told_to_the_service_once(gate: Gate, adapter: Adapter) -> None:
    """The adapter found its chain broken: its next refresh says so, and port security's alarm is raised once."""
    a = adapter
    a.down()
    a.truck(1)
    a.up()
    a.offline.refresh()
    _edit(a, "UPDATE offline_decisions SET lane = 'in-9'")
    _restart(a)
    a.up()
    a.offline.refresh()
    a.offline.refresh()
    if not _sealed(a):
        assert _alarms(gate) == []
        return
    assert [x["alarm"] for x in _alarms(gate)] == ["outbox_tampered"]


def _told(gate: Gate, outbox_id: str, seq: int) -> None:
    got = gate.http.get("/gate/v1/passes", params={"outbox_id": outbox_id, "outbox_seq": seq, "outbox_intact": "true"},
                        headers={"Authorization": f"Bearer {gate.gate_token}"})
    assert got.status_code == 200, got.text


def test_a_new_chain_while_the_old_one_claimed_decisions_never_reported_raises_the_alarm(gate: Gate) -> None:
    """Review 155, finding 1, the service's side: a gate client's chain told head 2 at a refresh, and no
    decision of it was ever reported; then the client tells another chain. Those decisions are lost with
    the old file: port security's alarm (``outbox_replaced``), not only ``outbox_new``. A new chain beside
    one whose every claimed decision was reported (a second adapter, a file an operator started afresh)
    is ``outbox_new`` alone."""
    quiet, claimed = uuid.uuid4().hex, uuid.uuid4().hex
    _told(gate, quiet, 0)
    _told(gate, uuid.uuid4().hex, 0)
    assert _alarms(gate) == []
    _told(gate, claimed, 2)
    fresh = uuid.uuid4().hex
    _told(gate, fresh, 0)
    (alarm,) = _alarms(gate)
    assert (alarm["alarm"], alarm["outbox_id"]) == ("outbox_replaced", fresh), alarm
    assert alarm["unreported"] == [{"outbox_id": claimed, "known_seq": 2, "reported_seq": None}], alarm
    _told(gate, fresh, 0)
    assert len(_alarms(gate)) == 1  # once, at the new chain's first sight

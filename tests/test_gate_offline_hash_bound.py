"""The reconcile's badge hashing takes a bounded share of the CPU (review 142's leftover, review 143).

A gate pass names its driver's badges by scrypt hashes (some 65 to 130 ms of CPU each, domain/gate_pass.py
``BadgeHash``), and the reconcile of an offline allow hashes the badge the lane read under the pass's salt.
A gate client may post reports as fast as it likes (a compromised adapter, or an honest one flushing a long
outage's outbox): unbounded, a few dozen a second take every core, and the gate verify waits behind them.
So the reconcile hashes in one of a few slots per process (QUAYGATE_GATE_OFFLINE_HASH_SLOTS, default 1),
before its transaction; a report that finds none free soon is answered 503 with Retry-After, nothing
recorded (the adapter keeps it and sends it again); and a badge read hashed under a salt is remembered, so
an adapter sending a report again, or the gate-out on the pass of its gate-in, costs no second hash.
Not timed: the tests fill the slot, and count the hashes."""
# ruff: noqa: F811 - ``gate`` is a fixture, imported here and requested by name

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from quaygate.schema import audit_log
from quaygate.settings import Settings
from release_service.adapters.badge_hashing import BadgeHashSlots
from release_service.api.gate_offline import badge_hashes_for
from release_service.domain.gate_pass import BadgeHash
from release_service.ports import HashingBusy
from release_service.services import gate_passes as service

from .test_gate_offline import _post, _report, offline_rows, payload
from .test_gate_offline_reconcile import pass_of
from .test_gate_verify import Gate, gate  # noqa: F401


def _count_hashes(monkeypatch: pytest.MonkeyPatch, salt: str) -> list[bytes]:
    """Every scrypt hash taken under ``salt`` (a pass's, in hex) from now on."""
    real, seen = hashlib.scrypt, []

    def counted(*args: Any, **kwargs: Any) -> bytes:
        if kwargs.get("salt") == bytes.fromhex(salt):
            seen.append(args[0])
        return real(*args, **kwargs)
    monkeypatch.setattr(hashlib, "scrypt", counted)
    return seen


def _audited(gate: Gate, rid: str) -> list[str]:
    with gate.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.kind).where(audit_log.c.subject == rid)).scalars())


def test_a_report_finding_the_hash_slot_taken_is_answered_503_and_recorded_once_it_is_free(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """One report's hash holds the process's one slot (its scrypt held back by the test): another report,
    of another right, is answered 503 problem JSON with Retry-After, nothing of it recorded or audited, the
    right untouched. Sent again once the slot is free, it is judged and recorded, once."""
    first, second = gate.pickable(1), gate.pickable(2)
    one, two = _report(gate, 1, token=pass_of(gate, first)), _report(gate, 2, token=pass_of(gate, second))
    before = _audited(gate, second)
    real, hashing, go, calls = hashlib.scrypt, threading.Event(), threading.Event(), []

    def held(*args: Any, **kwargs: Any) -> bytes:
        calls.append(kwargs.get("salt"))
        if len(calls) == 1:  # the first report's hash: it holds the slot until the test lets it go
            hashing.set()
            go.wait(30)
        return real(*args, **kwargs)
    monkeypatch.setattr(hashlib, "scrypt", held)
    answers: dict[str, Any] = {}
    sender = threading.Thread(target=lambda: answers.setdefault("one", _post(gate, one)))
    sender.start()
    try:
        assert hashing.wait(30)
        busy = _post(gate, two)
    finally:
        go.set()
        sender.join(30)
    assert busy.status_code == 503, busy.text
    assert busy.headers["content-type"] == "application/problem+json"
    assert busy.json()["code"] == "badge_hashing_busy" and busy.json()["status"] == 503
    assert int(busy.headers["Retry-After"]) >= 1
    assert answers["one"].status_code == 200 and answers["one"].json()["verdict"] == "recorded", answers["one"].text
    assert [str(r.release_id) for r in offline_rows(gate)] == [first]  # nothing of the second
    assert gate.state(second) == "nominated" and _audited(gate, second) == before
    again = _post(gate, two)
    assert again.status_code == 200 and again.json()["verdict"] == "recorded", again.text
    assert gate.state(second) == "gated_in"
    assert sorted(str(r.release_id) for r in offline_rows(gate)) == sorted([first, second])


def test_a_report_sent_again_after_a_failure_hashes_the_badge_read_once(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database went away after the report was judged (nothing recorded, 503): the adapter sends it
    again, and the badge read is not hashed a second time."""
    rid = gate.pickable(1)
    token = pass_of(gate, rid)
    hashed = _count_hashes(monkeypatch, payload(token)["badge_hash"]["salt"])
    report = _report(gate, 1, token=token)
    real = service._announce

    def lost(*args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(service, "_announce", real)
        raise sa.exc.OperationalError("COMMIT", {}, Exception("connection lost"))
    monkeypatch.setattr(service, "_announce", lost)
    failed = _post(gate, report)
    assert failed.status_code == 503 and offline_rows(gate) == [], failed.text
    again = _post(gate, report)
    assert again.status_code == 200 and again.json()["verdict"] == "recorded", again.text
    assert _post(gate, report).json() == again.json()
    assert len(hashed) == 1


def test_the_gate_out_on_the_pass_of_its_gate_in_hashes_the_badge_read_once(
        gate: Gate, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same badge read under the same pass (its salt): remembered from the gate-in's report."""
    rid = gate.pickable(1)
    token = pass_of(gate, rid)
    hashed = _count_hashes(monkeypatch, payload(token)["badge_hash"]["salt"])
    assert _post(gate, _report(gate, 1, token=token)).json()["verdict"] == "recorded"
    out = _report(gate, 1, token=token)
    out["request"] |= {"direction": "out", "lane": "out-1"}
    got = _post(gate, out).json()
    assert (got["verdict"], got["flag"]) == ("recorded", None), got
    assert gate.state(rid) == "completed"
    assert len(hashed) == 1


# -- the slots and the memo (adapters/badge_hashing.py) -------------------------------------------------


class _Held:
    """scrypt held back until ``go``: every hash begun takes its slot till then."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real, self.calls = hashlib.scrypt, 0
        self.entered, self.go = threading.Semaphore(0), threading.Event()
        monkeypatch.setattr(hashlib, "scrypt", self)

    def __call__(self, *args: Any, **kwargs: Any) -> bytes:
        self.calls += 1
        self.entered.release()
        self.go.wait(30)
        return self.real(*args, **kwargs)

    def take(self, slots: BadgeHashSlots, hashing: BadgeHash) -> threading.Thread:
        t = threading.Thread(target=slots.of, args=(hashing, "alfapass", "AP-100005"))
        t.start()
        assert self.entered.acquire(timeout=30)
        return t


def test_past_the_line_or_without_waiting_a_hash_is_refused_and_a_remembered_one_is_given(
        monkeypatch: pytest.MonkeyPatch) -> None:
    salt = BadgeHash(os.urandom(16))
    line = BadgeHashSlots(slots=1, queue=0, wait=30)  # the one place in line: the hash under way
    slots = BadgeHashSlots(slots=1, wait=30)  # places in line to wait in
    known = line.of(salt, "alfapass", "AP-123455")  # remembered before the slots are taken
    held = _Held(monkeypatch)
    taken = [held.take(line, salt), held.take(slots, salt)]
    try:
        with pytest.raises(HashingBusy):
            line.of(salt, "alfapass", "AP-200003")  # no place to wait in: refused, never waits its 30 s
        with pytest.raises(HashingBusy):
            slots.of(salt, "alfapass", "AP-200003", wait=False)  # the judgment's own: no wait in a transaction
        assert line.of(salt, "alfapass", "AP-123455") == known  # remembered: given, no slot needed
    finally:
        held.go.set()
        for t in taken:
            t.join(30)
    assert held.calls == 2 and known == salt.of("alfapass", "AP-123455")


def test_a_hash_is_remembered_under_its_salt_and_value_the_most_recent_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = BadgeHash(os.urandom(16)), BadgeHash(os.urandom(16))
    slots = BadgeHashSlots(max_entries=2)
    real, calls = hashlib.scrypt, []

    def counted(*args: Any, **kwargs: Any) -> bytes:
        calls.append((kwargs["salt"], args[0]))
        return real(*args, **kwargs)
    monkeypatch.setattr(hashlib, "scrypt", counted)
    a = slots.of(one, "alfapass", "AP-123455")
    assert slots.of(one, "alfapass", "AP-123455") == a and len(calls) == 1
    assert slots.of(two, "alfapass", "AP-123455") != a and len(calls) == 2  # another salt: another hash
    assert slots.of(one, "alfapass", "AP-123455") == a and len(calls) == 2  # used again: two's is the oldest
    slots.of(one, "alfapass", "04A1B2C3D4E5F6")  # a third: the least recently used (two's) goes
    assert len(calls) == 3
    slots.of(one, "alfapass", "AP-123455")
    assert len(calls) == 3
    slots.of(two, "alfapass", "AP-123455")
    assert len(calls) == 4


def test_the_slots_are_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Settings(var_dir=tmp_path).gate_offline_hash_slots == 1
    monkeypatch.setenv("QUAYGATE_GATE_OFFLINE_HASH_SLOTS", "3")
    settings = Settings(var_dir=tmp_path)
    app = SimpleNamespace(state=SimpleNamespace(container=SimpleNamespace(settings=settings)))
    assert badge_hashes_for(app).slots == 3 and badge_hashes_for(app) is badge_hashes_for(app)
    monkeypatch.setenv("QUAYGATE_GATE_OFFLINE_HASH_SLOTS", "0")
    with pytest.raises(ValueError):
        Settings(var_dir=tmp_path)

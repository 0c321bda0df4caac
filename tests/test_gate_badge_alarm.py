"""Review 174, finding 1: a badge blocked (reported lost or stolen) or revoked, or another person's badge,
presented at the gate. Each decision row keeps the badge the read found and its holder (ids only: never the
number or the card UID read), and those three refusals raise port security's alarm, one
``release.gate_badge_alarm`` entry on the audit trail per decision (the badge its subject), written with the
decision: in its statement or transaction, or, for a check kept in Redis, by the drainer with the row. An
allow, or any other refusal, raises none. On SQLite and PostgreSQL, and on PostgreSQL with Redis (a check
kept there and drained, a commit on the event loop)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.badges.service import BadgeService
from identity.domain.badges import Scheme, with_check
from quaygate.schema import audit_log, badge_activations, badges, gate_decisions

from .factories import TERMINAL, add_driver
from .test_gate_facts import _serve
from .test_gate_verify import Gate, serve

ALARM = "release.gate_badge_alarm"


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def gate(engine: sa.Engine, tmp_path: Path) -> Iterator[Gate]:
    yield from serve(engine, tmp_path)


@pytest.fixture
def redis_gate(pg_engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[Gate]:
    yield from _serve(pg_engine, tmp_path, redis_url)


def _badge_of(gate: Gate, person: uuid.UUID) -> Any:
    with gate.engine.connect() as conn:
        return conn.execute(sa.select(badges.c.id, badges.c.number, badges.c.card_uid)
                            .where(badges.c.person_id == person)).one()


def _another_driver(gate: Gate) -> tuple[uuid.UUID, str]:
    """A driver of another haulier, his badge active and activated at this terminal: (person, badge number)."""
    number = with_check(Scheme.ALFAPASS, 54321)
    other = add_driver(gate.engine, gate.p.haul2.organisation_id, number=number)
    badge_id = _badge_of(gate, other).id
    with gate.engine.begin() as conn:
        conn.execute(badge_activations.insert().values(
            id=uuid.uuid4(), badge_id=badge_id, terminal_code=TERMINAL, activated_by="desk", activated_at=_now()))
    return other, number


def _verify(gate: Gate, body: dict[str, Any]) -> dict[str, Any]:
    r = gate.verify(body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _row(gate: Gate, decision_id: str) -> Any:
    with gate.engine.connect() as conn:
        return conn.execute(sa.select(gate_decisions).where(gate_decisions.c.id == uuid.UUID(decision_id))).one()


def _alarms(gate: Gate) -> list[Any]:
    with gate.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.actor, audit_log.c.subject, audit_log.c.data)
                                 .where(audit_log.c.kind == ALARM).order_by(audit_log.c.id)).all())


def _drain(gate: Gate) -> None:
    facts = getattr(gate, "facts", None)
    if facts is not None:
        facts.drain("test", block_ms=None)


def _assert_named(gate: Gate, answer: dict[str, Any], person: uuid.UUID) -> None:
    """The decision's row names the badge read and its holder, ids only."""
    badge = _badge_of(gate, person)
    row = _row(gate, answer["decision_id"])
    assert (row.badge_id, row.badge_holder_id) == (badge.id, person)
    kept = json.dumps({k: str(v) for k, v in row._asdict().items()})
    assert badge.card_uid not in kept and badge.number not in kept  # never the card UID or number read


def _assert_alarm(gate: Gate, entry: Any, answer: dict[str, Any], body: dict[str, Any], person: uuid.UUID,
                  alarms: list[str]) -> None:
    actor, subject, data = entry
    badge = _badge_of(gate, person)
    assert subject == str(badge.id)  # beside the badge's own status changes on the trail
    assert actor == {"client_id": _row(gate, answer["decision_id"]).client_id}
    assert data == {"alarms": alarms, "reasons": answer["reasons"], "decision": "deny",
                    "decision_id": answer["decision_id"], "badge_id": str(badge.id), "holder_person_id": str(person),
                    "release_id": answer["release_id"], "container": answer["container"],
                    "terminal": TERMINAL, "lane": body["lane"], "request_id": body["request_id"],
                    "direction": body["direction"], "mode": body["mode"]}
    assert badge.card_uid not in json.dumps(data) and badge.number not in json.dumps(data)


def _stolen_and_borrowed(gate: Gate, status: str) -> None:
    rid = gate.pickable(1)
    # The driver's own badge: an allow names it and its holder, and raises no alarm.
    allowed = _verify(gate, gate.body(1))
    assert allowed["decision"] == "allow", allowed
    _drain(gate)
    _assert_named(gate, allowed, gate.p.driver)
    assert _alarms(gate) == []

    # Reported stolen (or withdrawn): presented in commit mode, then in check mode.
    BadgeService(gate.engine).change_status(_badge_of(gate, gate.p.driver).id, status, reason="reported stolen",
                                            actor="badge office", now=_now())
    reason = f"badge_{status}"
    sent = [gate.body(1, mode="commit"), gate.body(1)]
    refused = [_verify(gate, b) for b in sent]
    for answer in refused:
        assert (answer["decision"], answer["reasons"], answer["committed"]) == ("deny", [reason], False), answer
    assert _verify(gate, sent[0]) == refused[0]  # a retry: answered from the record, no second alarm
    _drain(gate)
    for answer in refused:
        _assert_named(gate, answer, gate.p.driver)
    entries = _alarms(gate)
    assert len(entries) == 2, entries
    for entry, answer, body in zip(entries, refused, sent, strict=True):
        _assert_alarm(gate, entry, answer, body, gate.p.driver, [reason])

    # Another haulier's driver's active badge, for the same right.
    other, number = _another_driver(gate)
    borrowed_body = gate.body(1, mode="commit", badge={"scheme": "alfapass", "number": number})
    borrowed = _verify(gate, borrowed_body)
    assert (borrowed["decision"], borrowed["reasons"]) == ("deny", ["driver_mismatch"]), borrowed
    assert gate.state(rid) == "nominated"
    _drain(gate)
    _assert_named(gate, borrowed, other)
    entries = _alarms(gate)
    assert len(entries) == 3, entries
    _assert_alarm(gate, entries[2], borrowed, borrowed_body, other, ["driver_mismatch"])

    # Another refusal (a badge the badge office does not know): no badge to name, no alarm.
    unknown = _verify(gate, gate.body(1, badge={"scheme": "alfapass", "number": with_check(Scheme.ALFAPASS, 77777)}))
    assert unknown["decision"] == "deny" and "badge_unknown" in unknown["reasons"], unknown  # nobody to screen too
    _drain(gate)
    row = _row(gate, unknown["decision_id"])
    assert (row.badge_id, row.badge_holder_id) == (None, None)
    assert len(_alarms(gate)) == 3


@pytest.mark.parametrize("status", ["blocked", "revoked"])
def test_a_stolen_or_another_person_s_badge_is_named_and_raises_port_security_s_alarm(gate: Gate,
                                                                                       status: str) -> None:
    _stolen_and_borrowed(gate, status)


@pytest.mark.postgres
def test_with_redis_a_kept_check_s_alarm_is_written_by_the_drainer_once_and_a_loop_commit_s_at_once(
        redis_gate: Gate) -> None:
    gate = redis_gate
    facts = gate.facts  # type: ignore[attr-defined]
    _stolen_and_borrowed(gate, "blocked")
    # A check kept in Redis: nothing on the trail until it is drained; drained twice, one entry.
    before = len(_alarms(gate))
    body = gate.body(1)
    answer = _verify(gate, body)
    assert answer["reasons"] == ["badge_blocked"]
    assert len(_alarms(gate)) == before  # the hot path wrote nothing to the database
    stream = facts._p + "decisions"
    [raw] = [f[b"row"] for _, f in facts._r.xrange(stream) if answer["decision_id"].encode() in f[b"row"]]
    assert facts.drain("test", block_ms=None) >= 1
    assert len(_alarms(gate)) == before + 1
    facts._r.xadd(stream, {"row": raw})
    facts.drain("test", block_ms=None)  # the same row drained again: no second entry
    entries = _alarms(gate)
    assert len(entries) == before + 1
    _assert_alarm(gate, entries[-1], answer, body, gate.p.driver, ["badge_blocked"])
    _assert_named(gate, answer, gate.p.driver)


def test_a_cached_badge_copy_that_does_not_name_the_badge_is_a_miss() -> None:
    """A copy from a server of before review 174 (a rolling upgrade) is read again from PostgreSQL and
    replaced: taken as it is, a stolen badge's decision would not name the badge."""
    from release_service.adapters.gate_facts import _badge_copy

    badge_id = uuid.uuid4()
    copy = {"found": True, "status": "blocked", "person_id": str(uuid.uuid4()), "valid_from": None,
            "valid_until": _now().isoformat(), "activated": [TERMINAL], "holder": "Jan Peeters",
            "holder_status": "active", "chip": True, "bans": [], "list_issued_at": None, "identified": True}
    assert _badge_copy(json.dumps(copy).encode()) is None
    entry = _badge_copy(json.dumps({**copy, "id": str(badge_id)}).encode())
    assert entry is not None and entry.facts is not None and entry.facts.badge_id == badge_id

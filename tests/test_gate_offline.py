"""Offline gate mode against the real app (real gate tokens, our real ES256 key, SQLite and PostgreSQL):
gate passes, the adapter deciding from them while verify is unreachable, and the reconcile with its
flags (issue 5, "Offline mode, never a PIN"). Only the outage is staged: the lane's verify client points
at a closed port."""
# ruff: noqa: F811 - ``gate`` is test_gate_verify's fixture, imported here and requested by name

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from joserfc import jws
from joserfc.jwk import ECKey, OctKey, RSAKey

from gate_adapters.core.correlate import LaneCorrelator
from gate_adapters.runtime.client import StaticToken, VerifyClient
from gate_adapters.runtime.lane import LaneResult, LaneRuntime
from gate_adapters.runtime.offline import OfflineMode, PassStore, PassVerifier
from gate_adapters.runtime.outbox import Outbox
from identity.tokens import sign_jwt
from quaygate.schema import audit_log, gate_offline_decisions, releases, webhook_deliveries
from release_service.domain.gate_pass import PASS_TYP, OfflineLimits, PassRefused
from release_service.domain.parties import OrgKind

from .factories import TERMINAL, add_org
from .test_gate_runtime import RecordingBarrier, reads, runtime
from .test_gate_verify import Gate, ban_the_driver, gate  # noqa: F401
from .test_release_api import assert_problem

SECRET = b"the adapter's own secret material (its key files)"  # the pass store's seal
DEAD = "http://127.0.0.1:9"  # nothing listens: connect refused, the outage


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Adapter:
    """One gate's adapter: its outbox, its pass store, its offline mode, a lane and its barrier."""

    online: VerifyClient
    outbox: Outbox
    store: PassStore
    offline: OfflineMode
    barrier: RecordingBarrier

    def lane(self, *, service_up: bool, mode: str = "commit") -> Any:
        client = self.online if service_up else VerifyClient(DEAD, StaticToken("x"), attempts=1, timeout=0.5)
        return runtime(client, self.outbox, self.barrier, offline=self.offline, mode=mode)

    def truck(self, n: int, *, plate: str = "1-ABC-123", service_up: bool = False, mode: str = "commit"
              ) -> dict[str, Any]:
        lane = self.lane(service_up=service_up, mode=mode)
        results = [r for read in reads(plate, n, at=_now()) for r in lane.feed(read)]
        assert len(results) == 1
        assert results[0].response is not None, results[0].error
        return results[0].response

    def down(self) -> None:
        self.offline.client = VerifyClient(DEAD, StaticToken("x"), attempts=1, timeout=0.5)

    def up(self) -> None:
        self.offline.client = self.online

    def clocked(self) -> tuple[list[datetime], list[float]]:
        """Clocks the test sets: the wall clock (what NTP, or whoever spoofs it, sets; 2 s ahead so the
        passes' ``iat``, whole seconds of the service's clock, are behind it) and the process's monotonic one."""
        wall, mono = [_now() + timedelta(seconds=2)], [1000.0]
        self.offline = OfflineMode(self.online, self.store, self.outbox, clock=lambda: mono[0], wall=lambda: wall[0])
        return wall, mono


def issuer(gate: Gate) -> str:
    return str(gate.http.app.state.container.settings.issuer)  # type: ignore[attr-defined]


@pytest.fixture
def adapters(gate: Gate, tmp_path: Path) -> Iterator[list[Adapter]]:
    made = []
    for n in range(2):
        online = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=gate.http)
        outbox = Outbox(tmp_path / f"gate{n}-outbox.sqlite3")
        store = PassStore(tmp_path / f"gate{n}-passes.sqlite3", issuer=issuer(gate), terminal=TERMINAL,
                          secret=SECRET)
        made.append(Adapter(online, outbox, store, OfflineMode(online, store, outbox), RecordingBarrier()))
    yield made
    for a in made:
        a.outbox.close()
        a.store.close()


def passes(gate: Gate, token: str | None = None) -> Any:
    return gate.http.get("/gate/v1/passes", headers={"Authorization": f"Bearer {token or gate.gate_token}"})


def jwks(gate: Gate) -> dict[str, Any]:
    return dict(gate.http.get("/oauth2/jwks").json())


def payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def offline_rows(gate: Gate) -> list[Any]:
    with gate.engine.connect() as conn:
        return list(conn.execute(sa.select(gate_offline_decisions).order_by(gate_offline_decisions.c.reconciled_at)))


# -- passes ------------------------------------------------------------------------------------------


def test_passes_are_es256_for_the_terminals_nominated_rights_only(gate: Gate) -> None:
    rid = gate.pickable(1)
    gate.issue(2)  # active, not nominated: no pass
    r = passes(gate)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["terminal"] == TERMINAL and body["typ"] == PASS_TYP and len(body["passes"]) == 1
    token = body["passes"][0]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert (header["alg"], header["typ"]) == ("ES256", "gate-pass+jwt")
    claims = payload(token)
    assert claims["sub"] == rid and claims["right"]["state"] == "nominated" and claims["terminal"] == TERMINAL
    assert claims["exp"] - claims["iat"] <= 600 and claims["holder"] == "J. P***s"
    assert gate.badge_number not in token and gate.badge_number not in json.dumps(claims)  # digests only
    verified = PassVerifier(jwks(gate), issuer=issuer(gate), terminal=TERMINAL).verify(token)
    assert str(verified.right.id) == rid
    # Another terminal's gate gets nothing of ours; a party client and no token get nothing at all.
    other = add_org(gate.engine, OrgKind.TERMINAL, terminal_code="BEANR-K913")
    foreign = gate.token_for("terminal_gate", other.organisation_id, "BEANR-K913")
    assert passes(gate, foreign).json()["passes"] == []
    assert passes(gate, gate.as_("line")["Authorization"].split()[1]).status_code in (401, 403)
    assert gate.http.get("/gate/v1/passes").status_code == 401


def _forge(token: str, key: Any, alg: str, typ: str = PASS_TYP, **claims: Any) -> str:
    return sign_jwt({**payload(token), **claims}, key, typ=typ, alg=alg)


def test_the_adapter_accepts_only_our_es256_passes_for_its_terminal(gate: Gate) -> None:
    gate.pickable(1)
    token = passes(gate).json()["passes"][0]
    keys = jwks(gate)
    v = PassVerifier(keys, issuer=issuer(gate), terminal=TERMINAL)
    ours = next(k for k in keys["keys"] if k["kty"] == "EC")
    attacker = ECKey.generate_key("P-256", {"kid": ours["kid"], "alg": "ES256"})
    head, body, sig = token.split(".")
    changed = payload(token) | {"right": payload(token)["right"] | {"customs": "green", "blocked": False,
                                                                    "container": "MSCU1234566"}}
    tampered = ".".join([head, base64.urlsafe_b64encode(json.dumps(changed).encode()).decode().rstrip("="), sig])
    rsa = RSAKey.generate_key(2048, {"kid": next(k["kid"] for k in keys["keys"] if k["kty"] == "RSA")})
    for bad in (
        tampered,  # a digit changed in the payload
        _forge(token, attacker, "ES256"),  # our kid, another key
        _forge(token, rsa, "RS256"),  # an RSA signature under our RSA kid: ES256 only
        _forge(token, ECKey.generate_key("P-256", {"kid": ours["kid"]}), "ES256", typ="at+jwt"),  # not a pass
        "", "a.b", token + "x",
    ):
        with pytest.raises(PassRefused):
            v.verify(bad)
    with pytest.raises(PassRefused):  # a genuine pass, for another terminal
        PassVerifier(keys, issuer=issuer(gate), terminal="BEANR-K913").verify(token)
    with pytest.raises(PassRefused):  # a genuine pass, another issuer expected
        PassVerifier(keys, issuer="https://elsewhere.example", terminal=TERMINAL).verify(token)
    hs = jws.serialize_compact({"alg": "HS256", "typ": PASS_TYP, "kid": ours["kid"]}, json.dumps(payload(token)),
                               OctKey.import_key(json.dumps(ours).encode()),
                               registry=jws.JWSRegistry(algorithms=["HS256"]))
    with pytest.raises(PassRefused):  # the public key used as an HMAC secret
        v.verify(hs)


# -- deciding offline ----------------------------------------------------------------------------------


def test_offline_the_lane_decides_with_the_same_rules_and_uses_a_right_once(gate: Gate, adapters: list[Adapter]
                                                                            ) -> None:
    gate.pickable(1)
    gate.pickable(2)
    a = adapters[0]
    assert a.offline.refresh() == 2
    allowed = a.truck(1)
    assert allowed["decision"] == "allow" and allowed["committed"] is True and allowed["offline"]["basis"] == "pass"
    assert allowed["offline"]["ban_list_age_seconds"] is None  # no register here: the pass says so
    assert a.barrier.commands[-1].command == "open"
    again = a.truck(1)  # the same right, a second truck, still offline
    assert (again["decision"], again["reasons"]) == ("deny", ["already_used"])
    wrong_plate = a.truck(2, plate="9-ZZZ-999")
    assert (wrong_plate["decision"], wrong_plate["reasons"]) == ("deny", ["plate_mismatch"])
    unknown = a.truck(77)  # no pass: offline cannot know, a person looks
    assert (unknown["decision"], unknown["offline"]["basis"]) == ("review", "no_pass")
    assert a.barrier.commands[-1].call_officer
    assert len(a.outbox.unreconciled()) == 4 and a.outbox.pending() == []
    assert gate.state(str(allowed["release_id"])) == "nominated"  # the service knows nothing yet


def test_a_stale_pass_store_or_ban_list_refuses(gate: Gate, adapters: list[Adapter], tmp_path: Path) -> None:
    gate.pickable(1)
    a = adapters[0]
    a.offline.refresh()
    a.offline.limits = OfflineLimits(store_max_age=timedelta(seconds=0))
    stale = a.truck(1)
    assert (stale["decision"], stale["offline"]["basis"]) == ("review", "store_stale")
    assert stale["offline"]["store_age_seconds"] is not None
    # A ban list older than the limit screens "unavailable": the terminal's policy says review.
    with gate.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO ban_feed_state (register, sequence, issued_at, loaded_at, digest) "
                             "VALUES ('BE-NBR', 1, :t, :t, :d)"), {"t": _now() - timedelta(hours=3), "d": "d" * 64})
    a.offline.refresh()
    a.offline.limits = OfflineLimits(ban_list_max_age=timedelta(hours=1))
    old_list = a.truck(1)
    assert (old_list["decision"], old_list["reasons"], old_list["screening"]) == (
        "review", ["screening_unavailable"], "unavailable")
    assert 3 * 3600 - 60 <= old_list["offline"]["ban_list_age_seconds"] <= 3 * 3600 + 60


def test_a_clock_wound_back_across_a_restart_never_revives_an_expired_pass(
        gate: Gate, adapters: list[Adapter]) -> None:
    """The passes expired an hour ago; the adapter restarts (its monotonic clock knows nothing older)
    with its wall clock spoofed back to just after the last refresh. The store keeps the latest time it
    saw on disk: a now before it judges no pass (review, the store taken as stale), never an allow."""
    gate.pickable(1)
    gate.pickable(2)
    a = adapters[0]
    wall, mono = a.clocked()
    a.offline.refresh()
    a.down()  # and stays down: no refresh after this one
    refreshed = wall[0]
    wall[0] += timedelta(hours=1)  # the passes' life is long over
    mono[0] += 3600
    a.offline.maintain()  # the lanes' tick: the store keeps the time seen
    expired = a.truck(1)
    assert expired["decision"] == "review"
    wall2, _ = a.clocked()  # a restart: a new process, a new monotonic clock
    a.down()
    wall2[0] = refreshed + timedelta(seconds=30)  # NTP spoofed back to just after the refresh
    got = a.truck(2)
    assert (got["decision"], got["offline"]["basis"]) == ("review", "store_stale")
    assert got["committed"] is False


def test_a_clock_once_stepped_ahead_and_put_right_keeps_offline_mode_after_a_refresh(
        gate: Gate, adapters: list[Adapter]) -> None:
    """A bad time source steps the clock a year ahead for one tick, then it is put right: the store saw
    that year, but the next refresh (the service answered) anchors the clock seen again, and offline
    mode allows on the fresh passes instead of reviewing every truck till next year."""
    gate.pickable(1)
    a = adapters[0]
    wall, mono = a.clocked()
    a.down()
    real = wall[0]
    wall[0] = real + timedelta(days=365)
    a.offline.maintain()  # seen: a year ahead (the refresh fails: the service is down)
    wall[0] = real + timedelta(seconds=1)
    mono[0] += 1
    a.up()
    a.offline.refresh()
    a.down()
    got = a.truck(1)
    assert (got["decision"], got["offline"]["basis"]) == ("allow", "pass"), got


def test_an_offline_allow_on_a_ban_list_issued_ahead_of_the_clock_is_reconciled(
        gate: Gate, adapters: list[Adapter]) -> None:
    """A register whose clock runs two minutes ahead: its list is "issued" in our future (identity
    takes it). The offline allow says the list is 0 s old, not -120, and the service records it."""
    from quaygate.schema import persons

    rid = gate.pickable(1)
    with gate.engine.begin() as conn:  # a driver the register can screen (linked to a national number)
        conn.execute(persons.update().where(persons.c.id == gate.p.driver).values(national_id_hash="c" * 64))
        conn.execute(sa.text("INSERT INTO ban_feed_state (register, sequence, issued_at, loaded_at, digest) "
                             "VALUES ('BE-NBR', 1, :i, :t, :d)"),
                     {"i": _now() + timedelta(minutes=2), "t": _now(), "d": "d" * 64})
    a = adapters[0]
    a.offline.refresh()
    a.down()
    got = a.truck(1)
    assert got["decision"] == "allow" and got["offline"]["ban_list_age_seconds"] == 0
    a.up()
    assert a.offline.reconcile() == 1
    (row,) = offline_rows(gate)
    assert (row.verdict, row.flag) == ("recorded", None) and gate.state(rid) == "gated_in"


def test_an_offline_allow_the_service_refuses_to_hear_of_is_never_given_up(
        gate: Gate, adapters: list[Adapter], monkeypatch: pytest.MonkeyPatch) -> None:
    """A final refusal (a 4xx) of the report of an offline allow: the barrier opened, so the decision
    stays in the outbox and is reported again at the next reconcile, never marked done. A refused
    report of a review is done (nothing moved)."""
    from gate_adapters.runtime.client import VerifyRefused

    rid = gate.pickable(1)
    a = adapters[0]
    a.offline.refresh()
    a.down()
    allowed = a.truck(1)
    assert allowed["decision"] == "allow"
    a.up()
    call = a.offline.client.call

    def refusing(method: str, path: str, body: Any, **kw: Any) -> Any:
        if path == "/gate/v1/offline-decisions":
            raise VerifyRefused(422, "invalid_request", "The request does not match the schema.")
        return call(method, path, body, **kw)

    monkeypatch.setattr(a.offline.client, "call", refusing)
    assert a.offline.reconcile() == 0
    assert [r for r, _ in a.outbox.unreconciled()] == [allowed["request_id"]]  # kept
    monkeypatch.undo()
    assert a.offline.reconcile() == 1  # reported again once the service takes it
    assert a.outbox.unreconciled() == [] and gate.state(rid) == "gated_in"


def test_a_clock_set_back_before_the_last_refresh_never_allows(gate: Gate, adapters: list[Adapter]) -> None:
    gate.pickable(1)
    gate.pickable(2)
    a = adapters[0]
    wall, _ = a.clocked()
    # Ahead of the service's by less than offline.STALE_ANSWER (a minute): further, the answer is refused
    # as an old one replayed (review 155, finding 3) and no pass is kept at all.
    wall[0] += timedelta(seconds=50)
    assert a.offline.refresh() == 2  # refreshed at T + 50 s
    assert a.truck(1)["decision"] == "allow"  # the clock as it was: the pass allows
    wall[0] -= timedelta(seconds=50)  # NTP spoofed: the clock now reads 50 s before the last refresh
    got = a.truck(2)  # still inside the pass's window, but the store's age is negative
    assert (got["decision"], got["offline"]["basis"]) == ("review", "store_stale")
    assert got["offline"]["store_age_seconds"] is None and got["committed"] is False  # not judged by that clock
    assert (a.barrier.commands[-1].command, a.barrier.commands[-1].call_officer) == ("hold", True)


def test_a_clock_wound_back_while_running_does_not_make_the_store_younger(
        gate: Gate, adapters: list[Adapter]) -> None:
    for n in (1, 2, 3):
        gate.pickable(n)
    a = adapters[0]
    _, mono = a.clocked()
    a.offline.refresh()
    assert a.truck(1)["decision"] == "allow"
    # 12 min pass; the wall clock is wound back each time to read the refresh time again: by the monotonic
    # clock the passes (10 min) have expired, though the store (15 min) is not yet stale.
    mono[0] += 12 * 60
    expired = a.truck(2)
    assert (expired["decision"], expired["offline"]["basis"]) == ("review", "no_pass")
    assert expired["offline"]["store_age_seconds"] >= 12 * 60
    mono[0] += 8 * 60  # 20 min: the store itself is stale
    stale = a.truck(3)
    assert (stale["decision"], stale["offline"]["basis"]) == ("review", "store_stale")
    assert stale["offline"]["store_age_seconds"] >= 20 * 60
    assert [c.command for c in a.barrier.commands] == ["open", "hold", "hold"]


def test_after_a_restart_the_store_ages_at_least_as_long_as_the_process_ran(
        gate: Gate, adapters: list[Adapter]) -> None:
    gate.pickable(1)
    gate.pickable(2)
    a = adapters[0]
    a.clocked()
    a.offline.refresh()
    # The adapter restarts during the outage (a new process: no monotonic reading of that refresh), and
    # its wall clock is held at the refresh time. The refresh came before this process started, so the
    # store is at least as old as the process has run.
    wall, mono = a.clocked()
    assert a.truck(1)["decision"] == "allow"
    mono[0] += 20 * 60
    got = a.truck(2)
    assert (got["decision"], got["offline"]["basis"]) == ("review", "store_stale")
    assert got["offline"]["store_age_seconds"] >= 20 * 60


def test_offline_a_check_lane_never_opens_the_barrier(gate: Gate, adapters: list[Adapter]) -> None:
    rid = gate.pickable(1)
    a = adapters[0]
    a.offline.refresh()
    for _ in range(2):  # a check uses no right: the next truck on it is allowed again
        got = a.truck(1, mode="check")
        assert (got["decision"], got["mode"], got["committed"], got["offline"]["basis"]) == (
            "allow", "check", False, "pass")
    assert [(c.command, c.call_officer) for c in a.barrier.commands] == [("hold", False)] * 2
    assert gate.state(rid) == "nominated"


# -- a right used online here counts as used offline (outbox.py rule 7) --------------------------------


def _at_lane(a: Adapter, lane: str, direction: str, *, service_up: bool) -> LaneResult:
    """One truck (the test driver's badge, the nominated plate, container 1) at ``lane`` of adapter ``a``."""
    client = a.online if service_up else VerifyClient(DEAD, StaticToken("x"), attempts=1, timeout=0.5)
    runtime = LaneRuntime(TERMINAL, lane, direction, "commit", LaneCorrelator(lane, TERMINAL, direction), client,
                          a.outbox, a.barrier, offline=a.offline)
    results = [r for read in reads("1-ABC-123", 1, at=_now(), lane=lane) for r in runtime.feed(read)]
    assert len(results) == 1
    return results[0]


@pytest.mark.parametrize("direction", ["in", "out"])
def test_a_right_used_online_at_one_lane_is_not_let_through_offline_at_another(
        gate: Gate, adapters: list[Adapter], tmp_path: Path, direction: str) -> None:
    """The attack: truck A passes lane 1 online (committed); the uplink is cut before the next refresh;
    truck B, with the same lent badge and a cloned plate, comes to lane 2 of the same adapter. Its pass
    was fetched before A's use and shows the right unused: the outbox's record of A's answer is what
    tells offline mode the right is used here (already_used, never a second allow). A restart (new
    objects over the same files) still knows it."""
    rid = gate.pickable(1)
    if direction == "out":  # gated in (at another gate) before the refresh: the pass says gated_in
        assert gate.verify(gate.body(1, mode="commit")).json()["committed"] is True
    a = adapters[0]
    assert a.offline.refresh() == 1  # the pass, fetched before truck A's use
    first = _at_lane(a, f"{direction}-1", direction, service_up=True)
    assert first.response is not None and not first.offline, first.error
    assert (first.decision, first.response["committed"]) == ("allow", True)
    assert a.barrier.commands[-1].command == "open"
    assert gate.state(rid) == ("gated_in" if direction == "in" else "completed")
    a.down()  # the uplink is cut within the refresh interval

    second = _at_lane(a, f"{direction}-2", direction, service_up=False)
    assert second.offline and second.response is not None
    assert (second.decision, second.response["reasons"], second.response["committed"]) == (
        "deny", ["already_used"], False), second.response
    assert second.response["offline"]["basis"] == "pass"  # judged on the pass, with the use counted
    assert a.barrier.commands[-1].command == "hold"

    # A restart during the outage: a new outbox, pass store and offline mode over the same files.
    a.outbox.close()
    a.store.close()
    a.outbox = Outbox(a.outbox.path)
    a.store = PassStore(a.store.path, issuer=issuer(gate), terminal=TERMINAL, secret=SECRET)
    a.offline = OfflineMode(a.online, a.store, a.outbox)
    a.down()
    third = _at_lane(a, f"{direction}-3", direction, service_up=False)
    assert third.offline and third.response is not None
    assert (third.decision, third.response["reasons"]) == ("deny", ["already_used"]), third.response
    assert [c.command for c in a.barrier.commands] == ["open", "hold", "hold"]


# The outbox as adapters before schema versions made it (user_version 0): no online_uses.
_OUTBOX_V0 = """
CREATE TABLE verify_requests (request_id TEXT PRIMARY KEY, lane TEXT NOT NULL, body TEXT NOT NULL,
    created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, decided_at REAL, response TEXT);
CREATE TABLE offline_decisions (request_id TEXT PRIMARY KEY REFERENCES verify_requests (request_id),
    lane TEXT NOT NULL, release_id TEXT, used TEXT, report TEXT NOT NULL, decided_at REAL NOT NULL,
    reconciled_at REAL, result TEXT);
"""


def test_an_outbox_upgraded_in_place_still_counts_the_online_uses_it_holds(
        gate: Gate, adapters: list[Adapter], tmp_path: Path) -> None:
    """An adapter upgraded in place finds an outbox of the old version holding the answer of a gate-in
    it committed online minutes ago: the migration (outbox.py rule 8) finds that use in the answer, so
    the upgraded adapter, its uplink cut, does not let the right in again on its pass."""
    import sqlite3
    import time

    from gate_adapters.runtime.outbox import SCHEMA_VERSION

    gate.pickable(1)
    a = adapters[0]
    a.offline.refresh()
    body = gate.body(1, mode="commit", lane="in-1")
    answer = gate.verify(body).json()
    assert answer["committed"] is True
    other = gate.body(2, mode="commit", lane="in-1")
    denied = gate.verify(other).json()  # no right: no use to find
    path = tmp_path / "old-outbox.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript(_OUTBOX_V0)
        for b, r in ((body, answer), (other, denied)):
            old.execute("INSERT INTO verify_requests VALUES (?, 'in-1', ?, ?, 1, ?, ?)",
                        (b["request_id"], json.dumps(b), time.time(), time.time(), json.dumps(r)))
    old.close()
    a.outbox.close()
    a.outbox = Outbox(path)
    assert a.outbox.offline_uses() == {"in": {answer["release_id"]}, "out": set()}
    a.offline = OfflineMode(a.online, a.store, a.outbox)
    a.down()
    got = _at_lane(a, "in-2", "in", service_up=False)
    assert got.response is not None and (got.decision, got.response["reasons"]) == ("deny", ["already_used"])
    a.outbox.close()
    a.outbox = Outbox(path)  # migrated once: opened again, nothing doubled, nothing lost
    assert a.outbox.offline_uses() == {"in": {answer["release_id"]}, "out": set()}
    a.outbox.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")  # a file of a newer adapter: refused
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        Outbox(path)
    a.outbox = Outbox(tmp_path / "fresh.sqlite3")  # for the fixture to close


# -- reconcile -----------------------------------------------------------------------------------------


def test_reconcile_records_the_gate_in_and_flags_a_right_used_offline_at_two_gates(
        gate: Gate, adapters: list[Adapter]) -> None:
    rid = gate.pickable(1)
    sub = gate.http.post("/api/v1/webhooks", headers=gate.as_("line"),
                         json={"url": "https://hooks.example.com/q", "event_types": ["release.gate_offline_flagged"]})
    assert sub.status_code == 201, sub.text
    one, two = adapters
    for a in adapters:
        a.offline.refresh()
        a.down()
    first, second = one.truck(1), two.truck(1)  # two gates, both offline, the same right
    assert first["decision"] == second["decision"] == "allow"
    one.offline.maintain()  # still down: nothing acknowledged, nothing lost
    assert len(one.outbox.unreconciled()) == len(two.outbox.unreconciled()) == 1
    for a in adapters:
        a.up()
        assert a.offline.reconcile() == 1
    assert gate.state(rid) == "gated_in"
    rows = offline_rows(gate)
    assert [(r.verdict, r.flag) for r in rows] == [("recorded", None), ("flagged", "used_offline_twice")]
    assert rows[1].other_decision_id == rows[0].id and rows[0].pass_id and rows[1].pass_id
    assert one.outbox.unreconciled() == [] and two.outbox.unreconciled() == []
    assert two.outbox.offline_result(second["request_id"])["flag"] == "used_offline_twice"  # type: ignore[index]
    with gate.engine.connect() as conn:
        kinds = list(conn.execute(sa.select(audit_log.c.kind).where(audit_log.c.subject == rid)).scalars())
        hooks = conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries)
                             .where(webhook_deliveries.c.event_type == "release.gate_offline_flagged")).scalar_one()
    assert "release.gated_in" in kinds and "release.gate_offline_flagged" in kinds
    assert hooks == 1  # the line's subscription hears of it


def test_a_right_used_online_meanwhile_is_flagged(gate: Gate, adapters: list[Adapter]) -> None:
    rid = gate.pickable(1)
    a = adapters[0]
    a.offline.refresh()
    a.down()
    assert a.truck(1)["decision"] == "allow"
    online = gate.verify(gate.body(1, mode="commit")).json()  # another gate, online, meanwhile
    assert online["decision"] == "allow" and online["committed"]
    a.up()
    assert a.offline.reconcile() == 1
    (row,) = offline_rows(gate)
    assert (row.verdict, row.flag, str(row.other_decision_id)) == ("flagged", "used_online_meanwhile",
                                                                    online["decision_id"])
    assert gate.state(rid) == "gated_in"


def test_a_right_blocked_after_its_pass_is_marked_used_and_flagged(gate: Gate, adapters: list[Adapter]) -> None:
    rid = gate.pickable(1)
    a = adapters[0]
    a.offline.refresh()
    a.down()
    r = gate.http.post(f"/api/v1/releases/{rid}/block", headers=gate.as_("line"), json={"reason": "fraud alert"})
    assert r.status_code == 200, r.text
    assert a.truck(1)["decision"] == "allow"  # the pass cannot know of the block
    a.up()
    a.offline.reconcile()
    (row,) = offline_rows(gate)
    assert (row.verdict, row.flag) == ("flagged", "changed_after_pass")
    assert gate.state(rid) == "gated_in"  # used (an audited override): no second truck takes it
    with gate.engine.connect() as conn:
        kinds = list(conn.execute(sa.select(audit_log.c.kind).where(audit_log.c.subject == rid)).scalars())
    assert "release.gate_override" in kinds


@pytest.mark.parametrize("after", ["renominated", "banned", "badge_blocked", "holder_deactivated",
                                   "holder_deactivated_then_reactivated", "suspended_then_reinstated",
                                   "customs_scan_lifted", "blocked_then_unblocked", "banned_then_lifted",
                                   "customs_hold_on_another_right", "customs_hold_on_another_right_lifted"])
def test_a_person_or_truck_changed_after_its_pass_is_recorded_and_flagged(
        gate: Gate, adapters: list[Adapter], after: str) -> None:
    """After the adapter's last refresh the haulier nominates another truck, the driver is banned, or
    his badge is blocked, or port security deactivates the haulier holding the right (online: deny
    holder_inactive, which no desk sets aside); then the service is down and the old truck comes with the old badge. The
    adapter allows it on its pass (it cannot know); the reconcile records the gate-in (the truck is in)
    and flags it for port security with what changed, never as a clean gate-in. So too a hold set after
    the pass and lifted before the reconcile (customs' scan then its green, the line's block then its
    unblock; review of the lights, finding 2): judged as the right is at the reconcile, it left no trace.
    Likewise the haulier deactivated then reactivated, or the driver suspended then reinstated (review 141,
    finding 3): judged as they are at the reconcile, that left no trace either; and a port ban the register
    loaded on the driver then lifted, his badge given back by the badge office (the lift deletes the ban).
    And customs' scan of the container on the line's other right of it (another vessel call), which holds this
    right too online (tests/test_gate_customs_container_hold.py), lifted since or not: judged as the right's
    own holds, up to now, even when the adapter reports the truck at the pass's iat, before the scan (review
    149, finding 4: before, a hold set after the adapter's reckoned time was not seen)."""
    from quaygate.schema import badges

    rid = gate.pickable(1)
    sub = gate.http.post("/api/v1/webhooks", headers=gate.as_("line"),
                         json={"url": "https://hooks.example.com/q", "event_types": ["release.gate_offline_flagged"]})
    assert sub.status_code == 201, sub.text
    if after == "badge_blocked":  # a second badge, still good: the stolen one must be judged on its own
        with gate.engine.begin() as conn:
            conn.execute(badges.insert().values(
                id=uuid.uuid4(), person_id=gate.p.driver, scheme="portpass", number="PP-777777", card_uid=None,
                status="active", valid_from=_now() - timedelta(days=1), valid_until=_now() + timedelta(days=365),
                created_at=_now()))
    a = adapters[0]
    if after.startswith("customs_hold_on_another_right"):  # the line's other right on the container, before the pass
        other = gate.issue(1, vessel_call="VC-2", bill_of_lading="BL-1-2")["release"]["id"]
        a.clocked()  # its monotonic clock stands still: the truck passes at the pass's iat, by the adapter's word
    a.offline.refresh()
    a.down()
    if after == "renominated":
        other = {"text": "2-XYZ-987", "country": "BE"}
        r = gate.http.put(f"/api/v1/releases/{rid}/nomination", headers=gate.as_("haul"),
                          json={"driver_person_id": str(gate.p.driver), "plate": other})
        assert r.status_code == 200, r.text
    elif after == "banned":
        ban_the_driver(gate)
    elif after == "holder_deactivated":
        from .test_gate_holder_inactive import _status

        _status(gate, gate.p.haul.organisation_id, active=False)
    elif after == "holder_deactivated_then_reactivated":
        from .test_gate_holder_inactive import _status

        _status(gate, gate.p.haul.organisation_id, active=False)
        _status(gate, gate.p.haul.organisation_id, active=True)
    elif after == "suspended_then_reinstated":
        from .test_gate_person_suspended import reinstate, suspend

        suspend(gate)
        reinstate(gate)
    elif after == "banned_then_lifted":
        _ban_then_lift(gate)
    elif after == "customs_scan_lifted":
        for body in ({"status": "scan", "reason": "x-ray"}, {"status": "green", "reason": "scanned, clear"}):
            r = gate.http.put(f"/api/v1/releases/{rid}/lights/customs", headers=gate.as_("customs"), json=body)
            assert r.status_code == 200, r.text
    elif after.startswith("customs_hold_on_another_right"):
        bodies = [{"status": "scan", "reason": "x-ray"}, {"status": "green", "reason": "scanned, clear"}]
        for body in bodies[:2 if after.endswith("_lifted") else 1]:
            r = gate.http.put(f"/api/v1/releases/{other}/lights/customs", headers=gate.as_("customs"), json=body)
            assert r.status_code == 200, r.text
    elif after == "blocked_then_unblocked":
        for action, reason in (("block", "unpaid"), ("unblock", "paid")):
            r = gate.http.post(f"/api/v1/releases/{rid}/{action}", headers=gate.as_("line"), json={"reason": reason})
            assert r.status_code == 200, r.text
    else:
        with gate.engine.begin() as conn:
            conn.execute(badges.update().where(badges.c.number == gate.badge_number).values(status="blocked"))
    assert a.truck(1)["decision"] == "allow"  # the pass cannot know
    a.up()
    a.offline.reconcile()
    (row,) = offline_rows(gate)
    assert (row.verdict, row.flag) == ("flagged", "changed_after_pass")
    assert gate.state(rid) == "gated_in"  # the truck is in: no second one takes the right
    with gate.engine.connect() as conn:
        data = conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == "release.gate_offline_flagged")
                            ).scalar_one()
        hooks = conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries)
                             .where(webhook_deliveries.c.event_type == "release.gate_offline_flagged")).scalar_one()
    want = {"renominated": "nomination", "banned": "person_banned", "badge_blocked": "badge_blocked",
            "holder_deactivated": "holder_inactive", "holder_deactivated_then_reactivated": "holder_inactive",
            "suspended_then_reinstated": "person_suspended", "customs_scan_lifted": "lights_changed",
            "blocked_then_unblocked": "blocked_meanwhile", "banned_then_lifted": "person_banned",
            "customs_hold_on_another_right": "customs_hold",
            "customs_hold_on_another_right_lifted": "customs_hold"}[after]
    assert want in data["changed_since_pass"] and hooks == 1


def _ban_then_lift(gate: Gate) -> None:
    """The register's real feeds, loaded: a ban on the driver (in effect: his live nomination alerted, his
    badges deactivated), then its lift (the row deleted); the badge office gives his badge back."""
    from identity.bans.loader import load_feed
    from quaygate.crypto import keyed_hash
    from quaygate.schema import badges, persons

    from .ban_register import Register, ban, changes, national_number, snapshot

    register, pepper, number = Register(), b"offline-test-pepper", national_number(401)
    with gate.engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == gate.p.driver)
                     .values(national_id_hash=keyed_hash(pepper, number)))
    for feed in (snapshot(1, _now(), [ban(number, "B-LIFTED", start=_now() - timedelta(days=1))]),
                 changes(2, _now(), lifted=["B-LIFTED"])):
        load_feed(gate.engine, register.sign(feed), key=register.public_key, pepper=pepper, now=_now(),
                  max_feed_age=timedelta(days=1))
    with gate.engine.begin() as conn:
        conn.execute(badges.update().where(badges.c.person_id == gate.p.driver).values(status="active"))


def _report(gate: Gate, n: int, *, token: str | None, decision: str = "allow", **over: Any) -> dict[str, Any]:
    with gate.engine.connect() as conn:
        rid = conn.execute(sa.select(releases.c.id).where(releases.c.container_number == gate.body(n)["container"]
                                                          ["number"])).scalar_one()
    return {"request": gate.body(n, mode="commit"), "decision": decision, "reasons": [], "release_id": str(rid),
            "basis": "pass", "decided_at": _now().isoformat(), "ban_list_age_seconds": None, "gate_pass": token,
            **over}


def _post(gate: Gate, report: dict[str, Any], token: str | None = None) -> Any:
    return gate.http.post("/gate/v1/offline-decisions", json=report,
                          headers={"Authorization": f"Bearer {token or gate.gate_token}"})


def test_a_report_from_an_older_adapter_with_a_negative_ban_list_age_is_taken_as_zero(gate: Gate) -> None:
    gate.pickable(1)
    got = _post(gate, _report(gate, 1, token=None, decision="review", ban_list_age_seconds=-119))
    assert got.status_code == 200, got.text
    (row,) = offline_rows(gate)
    assert row.ban_list_age_seconds == 0


def test_an_offline_decision_with_a_large_face_capture_is_reconciled(gate: Gate) -> None:
    """The report carries the request as the lane sent it, its face capture included (the adapter takes
    captures of up to 2 MiB): the route takes what /verify takes, not the 1 MiB default."""
    gate.pickable(1)
    capture = base64.b64encode(b"\xff\xd8\xff" + b"\0" * 1_200_000).decode()  # 1.6 MB in base64
    report = _report(gate, 1, token=None, decision="review")
    report["request"]["face"] = {"image": capture}
    report["reasons"] = ["face_required"]
    got = _post(gate, report)
    assert got.status_code == 200, got.text[:300]
    assert got.json()["verdict"] == "nothing_to_record" and len(offline_rows(gate)) == 1


def test_an_allow_without_a_genuine_pass_is_flagged_and_moves_nothing(gate: Gate) -> None:
    rid = gate.pickable(1)
    genuine = passes(gate).json()["passes"][0]
    forged = _forge(genuine, ECKey.generate_key("P-256", {"kid": payload(genuine)["jti"]}), "ES256")
    for token in (None, forged, genuine[:-4] + "AAAA"):
        got = _post(gate, _report(gate, 1, token=token))
        assert got.status_code == 200, got.text
        assert (got.json()["verdict"], got.json()["flag"]) == ("flagged", "pass_invalid")
    # A genuine pass, but reported as used long after it expired.
    late = _post(gate, _report(gate, 1, token=genuine, decided_at=(_now() + timedelta(hours=2)).isoformat()))
    assert late.json()["flag"] == "pass_invalid"
    assert gate.state(rid) == "nominated"


def test_reconcile_is_idempotent_by_request_id_and_answers_for_the_online_twin(gate: Gate) -> None:
    gate.pickable(1)
    token = passes(gate).json()["passes"][0]
    report = _report(gate, 1, token=token)
    first = _post(gate, report)
    assert first.status_code == 200 and first.json()["verdict"] == "recorded", first.text
    assert _post(gate, report).json() == first.json()
    assert_problem(_post(gate, {**report, "decision": "deny"}), 409, "request_id_reused")
    # The adapter timed out on an answer that did arrive: the online decision stands.
    gate.pickable(2)
    body = gate.body(2, mode="commit")
    online = gate.verify(body).json()
    twin = _post(gate, _report(gate, 2, token=None) | {"request": body})
    assert (twin.json()["verdict"], twin.json()["other_decision_id"]) == ("decided_online", online["decision_id"])
    assert len(offline_rows(gate)) == 2


def test_only_the_terminals_own_gate_reports(gate: Gate) -> None:
    gate.pickable(1)
    other = add_org(gate.engine, OrgKind.TERMINAL, terminal_code="BEANR-K913")
    foreign = gate.token_for("terminal_gate", other.organisation_id, "BEANR-K913")
    assert_problem(_post(gate, _report(gate, 1, token=None), foreign), 403, "not_terminal")
    assert gate.http.post("/gate/v1/offline-decisions", json=_report(gate, 1, token=None)).status_code == 401
    assert_problem(_post(gate, {**_report(gate, 1, token=None), "decision": "maybe"}), 422, "invalid_request")
    assert offline_rows(gate) == []


def test_offline_never_allows_without_a_refresh(gate: Gate, adapters: list[Adapter]) -> None:
    gate.pickable(1)
    a = adapters[0]
    got = a.truck(1)  # never refreshed: no knowledge at all
    assert (got["decision"], got["offline"]["basis"]) == ("review", "store_stale")
    assert a.barrier.commands[-1].command == "hold"
    assert uuid.UUID(got["decision_id"])


def test_uses_are_read_by_right_every_one_kept_whatever_their_time(tmp_path: Path) -> None:
    """Outbox rule 7: every use kept (online or offline) of the rights asked for, however old by the
    adapter's clock; a right not asked for is not read."""
    import uuid

    clock = [1_000_000.0]
    box = Outbox(tmp_path / "outbox.sqlite3", wall=lambda: clock[0])
    try:
        online, offline, other = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
        for rid in ("a", "b", "c"):
            assert box.put({"request_id": rid, "lane": "in-1", "direction": "in", "mode": "commit"})
        box.done("a", {"decision": "allow", "committed": True, "direction": "in", "release_id": online})
        assert box.decide_offline("b", {"decision": "allow"}, {
            "release_id": offline, "request": {"lane": "in-1", "mode": "commit", "direction": "in"}})
        box.done("c", {"decision": "allow", "committed": True, "direction": "out", "release_id": other})
        clock[0] += 3 * 86400  # within keep_days
        assert box.offline_uses() == {"in": {online, offline}, "out": {other}}
        assert box.offline_uses(rights=[online, offline]) == {"in": {online, offline}, "out": set()}
        assert box.offline_uses(rights=[other]) == {"in": set(), "out": {other}}
        assert box.offline_uses(rights=[]) == {"in": set(), "out": set()}
    finally:
        box.close()


def test_an_online_use_stamped_by_a_clock_held_back_still_counts_offline(
        gate: Gate, adapters: list[Adapter], tmp_path: Path) -> None:
    """Review 121, finding 3. The attack: NTP spoofed, the adapter's clock is right at the pass refresh,
    then held an hour back while lane 1 commits a gate-in online (the use stamped an hour early), put right
    again, and the uplink cut before the next refresh. The use counts at lane 2 all the same (already_used):
    uses are read by right, never "since the oldest pass" by the adapter's clock."""
    import time

    rid = gate.pickable(1)
    a = adapters[0]
    wall = [time.time()]
    a.outbox.close()
    a.outbox = Outbox(tmp_path / "held-back.sqlite3", wall=lambda: wall[0])
    a.offline = OfflineMode(a.online, a.store, a.outbox)
    assert a.offline.refresh() == 1  # the clock right: nothing behind at the refresh
    wall[0] = time.time() - 3600  # held back for the online commit
    first = _at_lane(a, "in-1", "in", service_up=True)
    assert first.response is not None and not first.offline, first.error
    assert (first.decision, first.response["committed"]) == ("allow", True)
    assert gate.state(rid) == "gated_in"
    wall[0] = time.time()  # put right, and the uplink cut before the next refresh
    a.down()
    second = _at_lane(a, "in-2", "in", service_up=False)
    assert second.offline and second.response is not None
    assert (second.decision, second.response["reasons"]) == ("deny", ["already_used"]), second.response
    assert second.response["offline"]["basis"] == "pass"
    assert [c.command for c in a.barrier.commands] == ["open", "hold"]

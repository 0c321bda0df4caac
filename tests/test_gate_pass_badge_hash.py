"""A gate pass names the nominated driver's badges by a slow hash under a salt of its own (review 142): a
pass, or the lane PC's pass store, must not give away the badge numbers of its drivers. An Alfapass number
has 10^5 values, a Port Pass 10^6: a plain digest of one is found in milliseconds. So each pass carries its
scrypt parameters and salt (``badge_hash``), and the badges' ``number_hash`` and ``card_uid_hash`` under
them; the adapter hashes the badge it reads the same way. Not timed: the tests say what the hash is."""
# ruff: noqa: F811 - ``gate`` and ``adapters`` are fixtures, imported here and requested by name

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from identity.domain.badges import Scheme, with_check
from quaygate.cache import RedisCache
from quaygate.schema import badges
from release_service.adapters.pass_hashes import CachedBadgeHashes
from release_service.domain import gate as g
from release_service.domain.gate_pass import (
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    BadgeHash,
    BadgeProof,
    Basis,
    GatePass,
    LocalUses,
    OfflineLimits,
    PassRefused,
    badge_digest,
    decide_offline,
)
from release_service.services import gate_passes

from .test_gate_offline import Adapter, adapters, passes, payload  # noqa: F401
from .test_gate_runtime import reads
from .test_gate_verify import Gate, gate  # noqa: F401

ISSUER = "https://id.example"
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
T = "BEANR-K1700"
DRIVER = uuid.uuid4()
CONTAINER = "MSCU1234566"
NUMBER, UID = "AP-123455", "04A1B2C3D4E5F6"


def _scrypt(value: str, salt: bytes, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The hash as this test reads the contract: scrypt (RFC 7914) of the badge as every digest of it was
    taken (scheme, separators and case ignored), under the pass's salt and parameters, 32 bytes, in hex."""
    compact = re.sub(r"[\s:\-]+", "", value).upper()
    return hashlib.scrypt(f"quaygate-gate-pass|alfapass|{compact}".encode(), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * r * n, dklen=32).hex()


def _card_uid(gate: Gate) -> str:
    with gate.engine.connect() as conn:
        return str(conn.execute(sa.select(badges.c.card_uid).where(badges.c.person_id == gate.p.driver)).scalar_one())


def test_each_pass_hashes_the_drivers_badge_with_scrypt_under_a_salt_of_its_own(gate: Gate) -> None:
    first, second = gate.pickable(1), gate.pickable(2)  # two rights, one driver
    uid = _card_uid(gate)
    r = passes(gate)
    assert r.status_code == 200, r.text
    claims = {payload(t)["sub"]: payload(t) for t in r.json()["passes"]}
    salts, numbers = set(), set()
    for c in (claims[first], claims[second]):
        h = c["badge_hash"]
        assert (h["alg"], h["n"], h["r"], h["p"]) == ("scrypt", 2**15, 8, 1), h
        salt = bytes.fromhex(h["salt"])
        assert len(salt) == 16
        (badge,) = c["badges"]
        assert badge["number_hash"] == _scrypt(gate.badge_number, salt)
        assert badge["card_uid_hash"] == _scrypt(uid, salt)
        assert "number" not in badge and "card_uid" not in badge  # no plain digest beside it
        text = json.dumps(c)
        assert badge_digest("alfapass", gate.badge_number) not in text and gate.badge_number not in text
        assert badge_digest("alfapass", uid) not in text and uid not in text
        salts.add(h["salt"])
        numbers.add(badge["number_hash"])
    assert len(salts) == 2 and len(numbers) == 2  # each pass is attacked alone


def test_offline_the_adapter_allows_the_drivers_badge_and_refuses_another_on_hashed_passes(
        gate: Gate, adapters: list[Adapter]) -> None:
    gate.pickable(1)
    gate.pickable(2)
    a = adapters[0]
    assert a.offline.refresh() == 2
    assert all(p.badge_hash is not None for _, p in a.store.passes(datetime.now(UTC)))
    allowed = a.truck(1)
    assert (allowed["decision"], allowed["offline"]["basis"], allowed["committed"]) == ("allow", "pass", True), allowed
    lane = a.lane(service_up=False)
    other = with_check(Scheme.ALFAPASS, 99999)
    results = [x for read in reads("1-ABC-123", 2, at=datetime.now(UTC), badge=other) for x in lane.feed(read)]
    assert len(results) == 1 and results[0].response is not None, results
    refused = results[0].response
    assert (refused["decision"], refused["offline"]["basis"]) == ("deny", "pass"), refused
    assert "badge_unknown" in refused["reasons"], refused


def test_a_pass_left_out_while_its_badge_hashes_are_due_comes_with_the_next_answer(
        gate: Gate, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A hash costs tens of milliseconds: one answer computes a bounded number of new ones (the rest of its
    passes wait for the next fetch, a minute later) and keeps them, so any gate client fetching in a loop
    costs the service little, and a busy terminal's first fetch after a restart does not run for minutes."""
    first, second = gate.pickable(1), gate.pickable(2)  # the driver's badge: a number and a card UID
    monkeypatch.setattr(gate_passes, "MAX_NEW_BADGE_HASHES", 2)
    with caplog.at_level(logging.WARNING, logger=gate_passes.__name__):
        got = [payload(t)["sub"] for t in passes(gate).json()["passes"]]
    assert len(got) == 1 and got[0] in (first, second)
    assert [r.message for r in caplog.records] == ["release.gate.passes_deferred"]
    later = [payload(t) for t in passes(gate).json()["passes"]]
    assert sorted(c["sub"] for c in later) == sorted([first, second])
    again = {payload(t)["sub"]: payload(t) for t in passes(gate).json()["passes"]}
    for c in later:  # kept: a later answer hashes nothing again
        assert again[c["sub"]]["badge_hash"] == c["badge_hash"] and again[c["sub"]]["badges"] == c["badges"]


# -- the pure core -------------------------------------------------------------------------------------


def _pass(hashing: BadgeHash | None, **over: object) -> GatePass:
    right = g.RightFacts(uuid.uuid4(), CONTAINER, T, "nominated", False, "green", "green", "green",
                         NOW - timedelta(days=1), NOW + timedelta(days=1), NOW - timedelta(days=2),
                         g.NominationFacts(DRIVER, "1ABC123", "BE"))
    digest = hashing.of if hashing is not None else badge_digest
    badge = BadgeProof("alfapass", digest("alfapass", NUMBER), digest("alfapass", UID), "active",
                       NOW + timedelta(days=300), frozenset({T}))
    p = GatePass("p1", T, NOW - timedelta(minutes=1), NOW + timedelta(minutes=9), right, (badge,), "J. P***s",
                 g.ScreeningResult.CLEAR, NOW - timedelta(hours=1), g.TerminalPolicy(), badge_hash=hashing)
    return replace(p, **over)  # type: ignore[arg-type]


def _decide(p: GatePass, read: g.BadgeRead) -> g.Decision:
    req = g.GateRequest("r1", T, "in-3", g.Direction.IN, g.Mode.COMMIT, g.ContainerRead(CONTAINER, 0.97),
                        g.PlateRead("1-ABC-123", "BE", 0.95), read, None, NOW)
    d = decide_offline(req, passes=[p], uses=LocalUses(), limits=OfflineLimits(), store_refreshed_at=NOW, now=NOW)
    assert d.basis is Basis.PASS
    return d.decision


def test_the_hash_is_scrypt_of_the_badge_under_the_passs_salt() -> None:
    salt = bytes(range(16))
    h = BadgeHash(salt)
    assert (h.n, h.r, h.p) == (2**15, 8, 1)
    assert h.of("Alfapass", " ap 123455 ") == h.of("alfapass", NUMBER) == _scrypt(NUMBER, salt)
    assert h.of("alfapass", NUMBER) != BadgeHash(bytes(16)).of("alfapass", NUMBER)
    assert h.of("alfapass", NUMBER) != h.of("portpass", NUMBER)


@pytest.mark.parametrize("read", [g.BadgeRead("alfapass", "ap 123455"), g.BadgeRead("alfapass", card_uid=UID),
                                  g.BadgeRead("alfapass", NUMBER, UID.lower())])
def test_a_hashed_pass_allows_the_drivers_badge_by_number_or_chip(read: g.BadgeRead) -> None:
    d = _decide(_pass(BadgeHash(bytes(range(16)))), read)
    assert (d.decision, d.reasons) == (g.Outcome.ALLOW, ()), d


@pytest.mark.parametrize("read", [g.BadgeRead("alfapass", "AP-123463"), g.BadgeRead("alfapass", card_uid="04A1B2C3"),
                                  g.BadgeRead("alfapass", NUMBER, "04A1B2C3"), g.BadgeRead("portpass", NUMBER)])
def test_a_hashed_pass_refuses_another_badge(read: g.BadgeRead) -> None:
    d = _decide(_pass(BadgeHash(bytes(range(16)))), read)
    assert d.decision is g.Outcome.DENY and g.Reason.BADGE_UNKNOWN in d.reasons, d


def test_a_hashed_pass_reads_back_as_issued_and_is_refused_weaker_or_absurd() -> None:
    p = _pass(BadgeHash(bytes(range(16))))
    claims = p.to_claims(ISSUER)
    assert claims["badge_hash"] == {"alg": "scrypt", "salt": bytes(range(16)).hex(), "n": 2**15, "r": 8, "p": 1}
    assert set(claims["badges"][0]) >= {"number_hash", "card_uid_hash"} and "number" not in claims["badges"][0]
    assert GatePass.from_claims(claims, issuer=ISSUER) == p
    for bad in ({"n": 2**14}, {"n": 2**15 + 1}, {"r": 4}, {"p": 0}, {"n": 2**24}, {"alg": "sha256"},
                {"salt": "00" * 4}, {"n": True}, {"salt": "zz" * 16}):
        with pytest.raises(PassRefused):
            GatePass.from_claims({**claims, "badge_hash": {**claims["badge_hash"], **bad}}, issuer=ISSUER)
    # A pass of the first form (plain digests, from before review 142) still reads while it lives (an hour
    # at most): the service issues only hashed ones.
    old = _pass(None)
    assert "badge_hash" not in old.to_claims(ISSUER)
    assert GatePass.from_claims(old.to_claims(ISSUER), issuer=ISSUER) == old
    assert _decide(old, g.BadgeRead("alfapass", NUMBER)).decision is g.Outcome.ALLOW


# -- where the hashes are kept ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_the_hashes_are_kept_in_redis_and_a_redis_that_does_not_answer_keeps_nothing(redis_url: str) -> None:
    entry = {**BadgeHash(bytes(range(16))).claims(), "badges": {str(uuid.uuid4()): ["ab" * 32, None]}}
    kept = CachedBadgeHashes(RedisCache(redis_url))
    kept.put({"r:d": entry})
    assert kept.get(["r:d", "r:other"]) == [entry, None]
    away = CachedBadgeHashes(RedisCache("redis://127.0.0.1:9/0"))
    away.put({"r:d": entry})  # no error at the fetch: the hashes are computed again
    assert away.get(["r:d"]) == [None]

"""A face *match result* claimed by a gate client (review 131, finding 1): it counts only at a terminal
whose gate policy port security set to ``face_match_results: accept``. By default (``refuse``) a claimed
match is no evidence (``face_required``, review, where the policy requires a face) and a claimed
mismatch still denies (``face_mismatch``). Every decision's row keeps the face evidence it weighed, on
PostgreSQL (and SQLite), from a check kept in Redis once drained, and from a commit on the event loop;
the policy change is audited and seen at once through the Redis copies; a copy from before the field
is read again; the offline adapter applies the same rule with the policy its passes carry."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from quaygate.app import create_app
from quaygate.cache import MemoryCache, RedisCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import audit_log, gate_decisions
from quaygate.settings import Settings
from release_service.domain import gate as g
from release_service.domain.gate_pass import GatePass

from .test_gate_domain import DRIVER, a_request, a_right, run
from .test_gate_offline_domain import T as OFFLINE_T
from .test_gate_offline_domain import a_pass, offline
from .test_gate_policy import PATH, Env
from .test_identity_support import ISSUER

CLAIMED_MATCH = {"match": {"matched": True, "score": 1.0}}
CLAIMED_NO = {"match": {"matched": False, "score": 0.99}}


# ---- the pure rule ---------------------------------------------------------------------------------


def _nominated() -> list[g.RightFacts]:
    return [a_right(nomination=g.NominationFacts(DRIVER, "1ABC123", "BE", "accepted"))]


@pytest.mark.parametrize(("face", "policy", "want"), [
    # refuse (the default): a claimed match is no face; a claimed no (or a low score) still a mismatch
    (g.FaceEvidence("match_result", 1.0, True), {"face_required": True}, ("review", ["face_required"])),
    (g.FaceEvidence("match_result", 1.0, True), {}, ("allow", [])),  # no face needed: nothing missing
    (g.FaceEvidence("match_result", 0.99, False), {"face_required": True}, ("deny", ["face_mismatch"])),
    (g.FaceEvidence("match_result", 0.99, False), {}, ("deny", ["face_mismatch"])),
    (g.FaceEvidence("match_result", 0.5, True), {"face_required": True}, ("deny", ["face_mismatch"])),
    # accept: as before
    (g.FaceEvidence("match_result", 1.0, True), {"face_required": True, "face_match_results": "accept"},
     ("allow", [])),
    (g.FaceEvidence("match_result", 0.99, False), {"face_required": True, "face_match_results": "accept"},
     ("deny", ["face_mismatch"])),
    (g.FaceEvidence("match_result", 0.5, True), {"face_match_results": "accept"}, ("deny", ["face_mismatch"])),
    (None, {"face_required": True, "face_match_results": "accept"}, ("review", ["face_required"])),
])
def test_pure_a_claimed_match_counts_only_where_the_policy_accepts_match_results(
        face: g.FaceEvidence | None, policy: dict[str, Any], want: tuple[str, list[str]]) -> None:
    d = run(request=a_request(face=face), rights=_nominated(), policy=g.TerminalPolicy(**policy))
    assert (d.decision.value, [r.value for r in d.reasons]) == want


def test_pure_the_default_refuses_and_the_policy_checks_its_values() -> None:
    assert g.TerminalPolicy().face_match_results == "refuse"
    with pytest.raises(ValueError, match="face_match_results"):
        g.TerminalPolicy(face_match_results="trust")  # type: ignore[arg-type]


def test_pure_the_decision_keeps_the_face_evidence_it_weighed() -> None:
    policy = g.TerminalPolicy(face_required=True, face_tolerance=0.4)
    claimed = run(request=a_request(face=g.FaceEvidence("match_result", 1.0, True)), rights=_nominated(),
                  policy=policy).face
    assert claimed is not None and claimed.as_json() == {
        "kind": "match_result", "matched": True, "score": 1.0, "min_score": 0.8, "trusted": False}
    trusted = run(request=a_request(face=g.FaceEvidence("match_result", 1.0, True)), rights=_nominated(),
                  policy=replace(policy, face_match_results="accept")).face
    assert trusted is not None and trusted.as_json()["trusted"] is True
    image = g.FaceEvidence("image", matched=True, person_id=DRIVER, distance=0.35, tolerance=0.5)
    served = run(request=a_request(face=image), rights=_nominated(), policy=policy)
    assert served.decision is g.Outcome.ALLOW and served.face is not None
    assert served.face.as_json() == {"kind": "image", "matched": True, "distance": 0.35, "tolerance": 0.4,
                                     "unavailable": None}  # the stricter tolerance applied
    none = run(rights=_nominated()).face
    assert none is not None and none.as_json() == {"kind": "none"}


# ---- through the API: the reviewer's attack ---------------------------------------------------------


def _serve(engine: sa.Engine, tmp_path: Path, redis_url: str | None = None) -> Iterator[Env]:
    settings = Settings(var_dir=tmp_path, issuer=ISSUER, background_workers=False, redis_url=redis_url,
                        gate_decision_drain=False,
                        database_url=str(engine.url.render_as_string(hide_password=False)))
    c = Container(settings=settings, engine=engine, cache=RedisCache(redis_url) if redis_url else MemoryCache(),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    with TestClient(create_app(settings, container=c)) as http:
        env = Env(http, engine, c)
        env.facts = c.gate_facts  # type: ignore[attr-defined]
        yield env


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Env]:
    yield from _serve(engine, tmp_path)


@pytest.fixture
def redis_env(pg_engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[Env]:
    yield from _serve(pg_engine, tmp_path, redis_url)


def _verify(env: Env, body: dict[str, Any]) -> dict[str, Any]:
    r = env.verify(body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _face_of(env: Env, decision_id: str) -> Any:
    with env.engine.connect() as conn:
        return conn.execute(sa.select(gate_decisions.c.face).where(gate_decisions.c.id == uuid.UUID(decision_id))
                            ).scalar_one()


def _set(env: Env, **fields: Any) -> dict[str, Any]:
    etag = env.http.get(PATH, headers=env.admin).headers["etag"]
    r = env.put(fields, headers={**env.admin, "If-Match": etag})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_claimed_match_is_no_face_until_port_security_accepts_the_terminal_s_matcher(env: Env) -> None:
    rid = env.pickable(1)
    _set(env, face_required=True)
    # The reviewer's attack: an impostor's gate client claims a match. Review, nothing committed.
    attack = _verify(env, env.body(1, mode="commit", face=CLAIMED_MATCH))
    assert (attack["decision"], attack["reasons"], attack["committed"]) == ("review", ["face_required"], False)
    assert env.state(rid) == "nominated"
    assert _face_of(env, attack["decision_id"]) == {"kind": "match_result", "matched": True, "score": 1.0,
                                                    "min_score": 0.8, "trusted": False}
    # A claimed mismatch only makes it stricter.
    no = _verify(env, env.body(1, mode="commit", face=CLAIMED_NO))
    assert (no["decision"], no["reasons"], no["committed"]) == ("deny", ["face_mismatch"], False)
    without = _verify(env, env.body(1))
    assert without["reasons"] == ["face_required"] and _face_of(env, without["decision_id"]) == {"kind": "none"}

    # Port security trusts this terminal's local matcher: audited, seen by the very next verify.
    changed = _set(env, face_match_results="accept")
    assert changed["changed"] == ["face_match_results"] and changed["policy"]["face_match_results"] == "accept"
    [*_, (_, subject, data)] = env.audits()
    assert subject == f"terminal:{env.body(1)['terminal']}" and data["changed"] == ["face_match_results"]
    assert (data["old"]["face_match_results"], data["new"]["face_match_results"]) == ("refuse", "accept")
    allowed = _verify(env, env.body(1, mode="commit", face=CLAIMED_MATCH))
    assert (allowed["decision"], allowed["committed"]) == ("allow", True) and env.state(rid) == "gated_in"
    assert _face_of(env, allowed["decision_id"])["trusted"] is True


@pytest.mark.postgres
def test_with_redis_the_kept_rows_hold_the_evidence_and_a_change_is_seen_at_once(redis_env: Env) -> None:
    """Checks kept in Redis (drained later), the policy read from its Redis copy, a commit on the loop."""
    env = redis_env
    facts = env.facts  # type: ignore[attr-defined]
    rid = env.pickable(1)
    _set(env, face_required=True)
    assert _verify(env, env.body(1))["reasons"] == ["face_required"]  # the policy now copied in Redis
    refused = _verify(env, env.body(1, face=CLAIMED_MATCH))
    assert (refused["decision"], refused["reasons"]) == ("review", ["face_required"])
    _set(env, face_match_results="accept")
    trusted = _verify(env, env.body(1, face=CLAIMED_MATCH))
    assert (trusted["decision"], trusted["reasons"]) == ("allow", [])
    facts.drain("test", block_ms=None)
    assert _face_of(env, refused["decision_id"]) == {"kind": "match_result", "matched": True, "score": 1.0,
                                                     "min_score": 0.8, "trusted": False}
    assert _face_of(env, trusted["decision_id"])["trusted"] is True

    # A copy of the policy written by a server from before the field: not trusted, read again.
    # Taken for "refuse", it would make this commit a review; read again, it is the stored "accept".
    keys = facts._r.keys(facts._p + "policy:*")
    for key in keys:
        old = {k: v for k, v in json.loads(facts._r.get(key)).items() if k != "face_match_results"}
        facts._r.set(key, json.dumps(old | {"face_required": True}))
    facts._near.clear()  # this process's own recollection too: the commit reads the copy in Redis
    committed = _verify(env, env.body(1, mode="commit", face=CLAIMED_MATCH))
    assert (committed["decision"], committed["committed"]) == ("allow", True) and env.state(rid) == "gated_in"
    assert any(json.loads(facts._r.get(k)).get("face_match_results") == "accept" for k in keys)  # replaced
    facts.drain("test", block_ms=None)
    assert _face_of(env, committed["decision_id"]) == {"kind": "match_result", "matched": True, "score": 1.0,
                                                       "min_score": 0.8, "trusted": True}


def test_an_old_policy_copy_is_a_miss() -> None:
    from release_service.adapters.gate_facts import _policy

    assert _policy(json.dumps({"face_required": True}).encode()) is None
    assert _policy(json.dumps({"face_match_results": "accept"}).encode()) is None  # nor the chip (review 142)
    assert _policy(json.dumps({"face_match_results": "accept", "badge_chip_required": False}).encode()
                   ) == g.TerminalPolicy(face_match_results="accept")


# ---- offline: the adapter decides with the same rule, on its passes' policy ------------------------------


def _offline_body(face: dict[str, Any]) -> dict[str, Any]:
    return {"request_id": "r1", "terminal": OFFLINE_T, "lane": "in-3", "direction": "in", "mode": "commit",
            "container": {"number": "MSCU1234566", "confidence": 0.97},
            "plate": {"text": "1-ABC-123", "country": "BE", "confidence": 0.95},
            "badge": {"scheme": "alfapass", "number": "ap 123455"}, "face": face,
            "observed_at": "2026-11-22T10:00:00+00:00"}


def test_offline_a_claimed_match_counts_only_where_the_pass_s_policy_accepts_it() -> None:
    from gate_adapters.runtime.offline import gate_request

    issuer = "https://id.example"
    refusing = a_pass(policy=g.TerminalPolicy(face_required=True))
    accepting = a_pass(policy=g.TerminalPolicy(face_required=True, face_match_results="accept"))
    # The policy goes in the signed pass and comes out of it.
    refusing, accepting = (GatePass.from_claims(p.to_claims(issuer), issuer=issuer) for p in (refusing, accepting))
    assert (refusing.policy.face_match_results, accepting.policy.face_match_results) == ("refuse", "accept")
    claim = gate_request(_offline_body(CLAIMED_MATCH))
    d = offline([refusing], claim).decision  # type: ignore[attr-defined]
    assert (d.decision, d.reasons) == (g.Outcome.REVIEW, (g.Reason.FACE_REQUIRED,))
    assert offline([accepting], claim).decision.decision is g.Outcome.ALLOW  # type: ignore[attr-defined]
    no = offline([accepting], gate_request(_offline_body(CLAIMED_NO))).decision  # type: ignore[attr-defined]
    assert no.reasons == (g.Reason.FACE_MISMATCH,)
    # A pass issued before the field: refuse.
    older = accepting.to_claims(issuer)
    older["policy"] = {k: v for k, v in older["policy"].items() if k != "face_match_results"}
    assert GatePass.from_claims(older, issuer=issuer).policy.face_match_results == "refuse"
    # No pass: the adapter's own default policy refuses too.
    assert offline([], claim).decision.decision is not g.Outcome.ALLOW  # type: ignore[attr-defined]


# ---- a claimed face check is on the trail, as the service's own are ------------------------------------


CLAIMED = "identity.face.verify.claimed"


def _claims(env: Env) -> list[Any]:
    with env.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.actor, audit_log.c.subject, audit_log.c.data)
                                 .where(audit_log.c.kind.like("identity.face.verify.%")).order_by(audit_log.c.id)
                                 ).all())


def _client_of(env: Env, decision_id: str) -> str:
    with env.engine.connect() as conn:
        return str(conn.execute(sa.select(gate_decisions.c.client_id)
                                .where(gate_decisions.c.id == uuid.UUID(decision_id))).scalar_one())


def _assert_claim(env: Env, entry: Any, answer: dict[str, Any], body: dict[str, Any], *, matched: bool,
                  trusted: bool) -> None:
    actor, subject, data = entry
    assert subject == str(env.p.driver)  # the driver whose face the gate said it matched
    assert actor == {"client_id": _client_of(env, answer["decision_id"])}  # the gate client that claimed it
    assert data == {"purpose": "gate", "claimed_by": "gate", "matched": matched,
                    "score": body["face"]["match"]["score"], "min_score": 0.8, "trusted": trusted,
                    "terminal": body["terminal"], "lane": body["lane"],
                    "request_id": body["request_id"], "direction": "in", "mode": body["mode"],
                    "decision_id": answer["decision_id"], "decision": answer["decision"]}


def test_a_claimed_face_check_is_audited_under_the_driver_as_claimed_by_the_gate(env: Env) -> None:
    """Checks and commits recorded in PostgreSQL (or SQLite) in the decision's own statement or transaction:
    the refused commit's insert, the allowed commit's move, the check's insert. A verify with no face
    writes no face entry."""
    rid = env.pickable(1)
    _set(env, face_required=True)
    sent = [env.body(1, face=CLAIMED_MATCH), env.body(1, mode="commit", face=CLAIMED_NO), env.body(1)]
    answers = [_verify(env, b) for b in sent]
    assert [a["decision"] for a in answers] == ["review", "deny", "review"]
    _set(env, face_match_results="accept")
    sent.append(env.body(1, mode="commit", face=CLAIMED_MATCH))
    answers.append(_verify(env, sent[-1]))
    assert (answers[-1]["decision"], answers[-1]["committed"]) == ("allow", True) and env.state(rid) == "gated_in"
    assert _verify(env, sent[-1]) == answers[-1]  # a retry: answered from the record, not audited again
    entries = _claims(env)
    assert len(entries) == 3
    for entry, answer, body, matched, trusted in zip(entries, [answers[i] for i in (0, 1, 3)],
                                                     [sent[i] for i in (0, 1, 3)], (True, False, True),
                                                     (False, False, True), strict=True):
        _assert_claim(env, entry, answer, body, matched=matched, trusted=trusted)
    with env.engine.connect() as conn:
        kinds = conn.execute(sa.select(audit_log.c.kind).where(audit_log.c.kind.like("identity.face.%"))).scalars()
        assert set(kinds) == {CLAIMED}


@pytest.fixture
def redis_any_env(engine: sa.Engine, tmp_path: Path, redis_url: str) -> Iterator[Env]:
    yield from _serve(engine, tmp_path, redis_url)


def test_with_redis_a_kept_check_s_claim_is_audited_when_drained_once_and_a_loop_commit_s_at_once(
        redis_any_env: Env) -> None:
    """A check kept in Redis: its entry is written by the drainer with the row, once however often the
    stream is drained; a commit (on the event loop on PostgreSQL) writes it in its own statement."""
    env = redis_any_env
    facts = env.facts  # type: ignore[attr-defined]
    rid = env.pickable(1)
    _set(env, face_required=True)
    assert _verify(env, env.body(1))["reasons"] == ["face_required"]  # the facts now copied in Redis
    check = env.body(1, face=CLAIMED_MATCH)
    kept = _verify(env, check)
    assert _claims(env) == []  # not drained yet: the hot path wrote nothing to the database
    stream = facts._p + "decisions"
    [raw] = [f[b"row"] for _, f in facts._r.xrange(stream) if kept["decision_id"].encode() in f[b"row"]]
    assert facts.drain("test", block_ms=None) >= 1
    [entry] = _claims(env)
    _assert_claim(env, entry, kept, check, matched=True, trusted=False)
    facts._r.xadd(stream, {"row": raw})
    facts.drain("test", block_ms=None)  # the same row drained again: the row is there, no second entry
    assert len(_claims(env)) == 1

    refused = env.body(1, mode="commit", face=CLAIMED_NO)
    no = _verify(env, refused)
    _set(env, face_match_results="accept")
    assert _verify(env, env.body(1))["decision"] == "review"  # the new policy copied in Redis again
    commit = env.body(1, mode="commit", face=CLAIMED_MATCH)
    moved = _verify(env, commit)
    assert (moved["decision"], moved["committed"]) == ("allow", True) and env.state(rid) == "gated_in"
    entries = _claims(env)
    assert len(entries) == 3
    _assert_claim(env, entries[1], no, refused, matched=False, trusted=False)
    _assert_claim(env, entries[2], moved, commit, matched=True, trusted=True)

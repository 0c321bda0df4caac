"""A face capture in POST /gate/v1/verify (issue 6), on SQLite and PostgreSQL, with real photos of real
people (tests/test_face_support.py): matched 1:1 in identity's worker process against the enrolled
face of the nominated driver, with the terminal's face_tolerance. Same person: allow; another person:
deny face_mismatch; no usable capture: a 422 problem and nothing recorded; no enrolment, nobody to
match or the matcher down: review (face_required), never allow. The audit trail and the decisions hold
the distance, never the image. Then the pure rules: a face matched against someone else than the
driver judged (a re-nomination meanwhile) is no face, and the policy's tolerance bounds."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from identity.face import FacePool, face_for
from quaygate.app import create_app
from quaygate.cache import MemoryCache, RedisCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import audit_log, face_captures, gate_decisions
from quaygate.settings import Settings
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain import gate as g
from release_service.domain.parties import OrgKind
from release_service.services import verify as verify_service
from tests.test_face_crafted_images import CASES as CRAFTED
from tests.test_face_crafted_images import crafted
from tests.test_face_support import blurred, fresh, mirrored, photo, side_by_side

from .factories import TERMINAL, container
from .test_gate_verify import Gate
from .test_release_api import assert_problem


def _now() -> datetime:
    return datetime.now(UTC)


def b64(image: bytes) -> str:
    return base64.b64encode(image).decode()


@pytest.fixture(scope="module")
def face_pool() -> Iterator[FacePool]:
    """One warm worker for the module (an app's own pool would spawn and load the models per test)."""
    pool = FacePool(1, queue_per_worker=8)
    assert all(f.result(timeout=120) for f in pool.warm_up())
    yield pool
    pool.close()


class FaceGate(Gate):
    app: Any

    def enrol(self, person: uuid.UUID, name: str = "obama.jpg", replace_reason: str | None = None) -> None:
        import anyio

        service = face_for(self.app)

        async def go() -> Any:
            return await service.enrol(person, photo(name), source="id_photo", actor="badge-office", now=_now(),
                                       replace_reason=replace_reason)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as one:  # Playwright may leave a loop running in this thread
            one.submit(anyio.run, go).result()

    def policy(self, **fields: Any) -> None:
        with SqlUnitOfWork(self.engine) as uow:
            uow.gate.set_policy(TERMINAL, g.TerminalPolicy(**fields), by="security", now=_now())
            uow.commit()

    def with_face(self, n: int, image: bytes | str, **over: Any) -> dict[str, Any]:
        return self.body(n, face={"image": image if isinstance(image, str) else b64(image)}, **over)

    def face_audits(self) -> list[tuple[str, dict[str, Any]]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audit_log.c.kind, audit_log.c.data)
                                .where(audit_log.c.kind.like("identity.face.verify.%"))
                                .order_by(audit_log.c.id)).all()
        return [(r.kind, r.data) for r in rows]

    def decisions(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)).scalar_one())


@contextmanager
def serving(engine: sa.Engine, tmp_path: Path, face_pool: FacePool, *, redis_url: str | None = None,
            **extra: Any) -> Iterator[FaceGate]:
    """A face gate served by the app, matching in the shared worker pool; with ``redis_url``, the gate's
    facts in Redis."""
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        redis_url=redis_url, background_workers=False, **extra)
    c = Container(settings=settings, engine=engine, cache=RedisCache(redis_url) if redis_url else MemoryCache(),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    app = create_app(settings, container=c)
    with TestClient(app) as http:
        own, app.state.face_pool = app.state.face_pool, face_pool
        try:
            fg = FaceGate(http, engine)
            fg.app = app
            yield fg
        finally:
            app.state.face_pool = own  # the lifespan closes its own pool, not the shared one


@pytest.fixture
def gate(engine: sa.Engine, tmp_path: Path, face_pool: FacePool) -> Iterator[FaceGate]:
    with serving(engine, tmp_path, face_pool) as fg:
        yield fg


def _decide(gate: FaceGate, body: dict[str, Any]) -> dict[str, Any]:
    r = gate.verify(body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_nominated_driver_s_face_allows_and_commits_once(gate: FaceGate) -> None:
    rid = gate.pickable(1)
    gate.enrol(gate.p.driver, "obama.jpg")
    got = _decide(gate, gate.with_face(1, photo("obama2.jpg")))  # another photo of the same person
    assert (got["decision"], got["reasons"]) == ("allow", []), got
    body = gate.with_face(1, "data:image/png;base64," + b64(photo("32bit.png")), mode="commit")
    first = _decide(gate, body)
    assert (first["decision"], first["committed"]) == ("allow", True) and gate.state(rid) == "gated_in"
    # A retry of the same request: the recorded answer, no second match.
    assert _decide(gate, body) == first
    audits = gate.face_audits()
    assert [k for k, _ in audits] == ["identity.face.verify.matched"] * 2
    data = audits[-1][1]
    assert data["purpose"] == "gate" and data["tolerance"] == 0.5 and 0.3 < data["distance"] < 0.45
    # The decision's row says the service matched an image (review 131: never taken for a claimed match).
    with gate.engine.connect() as conn:
        face = conn.execute(sa.select(gate_decisions.c.face)
                            .where(gate_decisions.c.id == uuid.UUID(first["decision_id"]))).scalar_one()
    assert face == {"kind": "image", "matched": True, "distance": data["distance"], "tolerance": 0.5,
                    "unavailable": None}
    assert (data["terminal"], data["request_id"], data["mode"]) == (TERMINAL, body["request_id"], "commit")


def test_a_costly_capture_is_refused_before_a_face_worker_sees_it(gate: FaceGate,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 131, finding 2: small files claiming big pictures (tests/test_face_image_cost.py) are 422s
    with the capture's code, nothing recorded, and no face worker was given them; a real capture is
    still matched, queued under its terminal's name (its share of the pool)."""
    from tests.test_face_image_cost import bombs

    gate.pickable(1)
    gate.enrol(gate.p.driver, "obama.jpg")
    pool = face_for(gate.app)._pool
    real, jobs = pool.submit, []

    def submit(image: bytes, owner: str | None = None) -> Any:
        jobs.append(owner)
        return real(image, owner)

    monkeypatch.setattr(pool, "submit", submit)
    for name, (image, code) in bombs().items():
        r = gate.verify(gate.with_face(1, image, mode="commit"))
        assert (r.status_code, r.json()["code"]) == (422, code), name
    assert jobs == [] and gate.decisions() == 0
    got = _decide(gate, gate.with_face(1, photo("obama2.jpg"), mode="commit"))
    assert (got["decision"], got["committed"]) == ("allow", True), got
    assert jobs == [(f"gate:{TERMINAL}",)]


class _HoldingExecutor:
    """The pool's executor, but the jobs of the captures in ``held`` wait until ``release``."""

    def __init__(self, real: Any, held: set[bytes]) -> None:
        self.real, self.images, self.waiting = real, held, []  # type: ignore[var-annotated]
        self.lock = threading.Lock()

    def submit(self, fn: Any, image: bytes, *args: Any) -> Any:
        if image not in self.images:
            return self.real.submit(fn, image, *args)
        from concurrent.futures import Future

        future: Future[Any] = Future()
        with self.lock:
            self.waiting.append((future, fn, image, args))
        return future

    def release(self) -> None:
        with self.lock:
            waiting, self.waiting = self.waiting, []
        for future, fn, image, args in waiting:
            future.set_result(self.real.submit(fn, image, *args).result(timeout=120))


def test_step_ups_holding_their_whole_share_leave_the_gate_its_workers(gate: FaceGate,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 154, finding 2: step-ups took no share of the pool, so an accomplice (his own face enrolled)
    sending step-ups from many addresses filled it, and a stranger's face at the lane came back review
    face_required (face_busy), which the desk may set aside, not deny face_mismatch. Now the step-ups
    have a bounded share (one person two jobs at a time): with it held whole, the gate is decided."""
    from identity.domain import assurance
    from identity.face import FaceError
    from identity.sessions import sessions_for

    from .factories import add_driver

    gate.pickable(21)
    gate.enrol(gate.p.driver, "obama.jpg")
    haulier = gate.p.haul.organisation_id
    accomplices = {add_driver(gate.engine, haulier): name for name in ("biden.jpg", "astronaut.png")}
    for person, name in accomplices.items():
        gate.enrol(person, name)
    service, pool = face_for(gate.app), face_for(gate.app)._pool
    # Another capture of each one's face (the photo enrolled again is a replay: review 165, finding 4).
    tries = [(person, mirrored(name)) for _ in range(pool.limit // 2) for person, name in accomplices.items()]
    holding = _HoldingExecutor(pool._pool(), {image for _, image in tries})
    monkeypatch.setattr(pool, "_pool", lambda: holding)
    outcomes: list[Any] = []

    def step_up(i: int, person: uuid.UUID, image: bytes) -> None:
        import anyio

        _, session = sessions_for(gate.app).create(person, acr=assurance.ACR_PASSKEY, amr=assurance.AMR_PASSKEY,
                                                   now=_now())

        async def go() -> Any:
            return await service.step_up(session=session, image=image, address=f"192.0.2.{i}", now=_now())

        try:
            outcomes.append(anyio.run(go))
        except FaceError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=step_up, args=(i, *t)) for i, t in enumerate(tries)]
    for t in threads:
        t.start()
    deadline = _now().timestamp() + 60
    while len(holding.waiting) + len(outcomes) < len(tries) and _now().timestamp() < deadline:
        threading.Event().wait(0.05)
    try:
        got = _decide(gate, gate.with_face(21, fresh("biden.jpg")))  # a stranger at the lane
        assert (got["decision"], got["reasons"]) == ("deny", ["face_mismatch"]), got
        assert len(holding.waiting) == pool.step_ups == 2  # the whole share
    finally:
        holding.release()
        for t in threads:
            t.join(timeout=120)
    assert sorted(o if isinstance(o, str) else "stepped_up" for o in outcomes) == \
        ["face_busy"] * (len(tries) - 2) + ["stepped_up"] * 2


def test_a_person_steps_up_a_bounded_number_of_times(gate: FaceGate) -> None:
    """Review 154, finding 2: a stepped-up session may step up again, each a worker's job; the matches
    count per person (``FaceService.step_ups`` per ``step_up_window``), past them 429 rate_limited."""
    import anyio

    from identity.domain import assurance
    from identity.face import FaceError
    from identity.sessions import sessions_for

    gate.enrol(gate.p.driver, "obama.jpg")
    service = face_for(gate.app)
    _, session = sessions_for(gate.app).create(gate.p.driver, acr=assurance.ACR_PASSKEY,
                                               amr=assurance.AMR_PASSKEY, now=_now())

    async def go() -> Any:
        return await service.step_up(session=session, image=fresh("obama2.jpg"), address="192.0.2.1", now=_now())

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as one:  # Playwright may leave a loop running in this thread
        for _ in range(service.step_ups):
            session = one.submit(anyio.run, go).result().session  # the stepped-up session steps up again
        with pytest.raises(FaceError) as refused:
            one.submit(anyio.run, go).result()
    assert refused.value.code == "rate_limited" and refused.value.retry_after


class _HotPoolRefused(Exception):
    pass


class _RefusingPool:
    """Stands in for the app's hot thread pool (quaygate/threads.py), and fails whoever uses it."""

    async def run(self, fn: Any, *args: Any) -> Any:
        raise _HotPoolRefused("this went to the hot pool")

    def close(self) -> None:
        return None


def test_a_face_match_waits_on_its_own_threads_not_the_hot_pool(gate: FaceGate) -> None:
    """A match waits tens of milliseconds on the face workers: were it on the hot pool's few threads
    (settings.worker_threads), a handful of trucks with faces would stall every token and gate check."""
    gate.pickable(1)
    gate.enrol(gate.p.driver, "obama.jpg")
    own, gate.app.state.threads = gate.app.state.threads, _RefusingPool()
    try:
        got = _decide(gate, gate.with_face(1, photo("obama2.jpg")))
        assert got["decision"] == "allow", got
        with pytest.raises(_HotPoolRefused):  # while a check without a face does use the hot pool
            gate.verify(gate.body(1))
    finally:
        gate.app.state.threads = own


def test_another_person_s_face_is_denied_face_mismatch(gate: FaceGate) -> None:
    rid = gate.pickable(2)
    gate.enrol(gate.p.driver, "obama.jpg")
    for name in ("biden.jpg", "astronaut.png"):
        got = _decide(gate, gate.with_face(2, photo(name), mode="commit"))
        assert (got["decision"], got["reasons"], got["committed"]) == ("deny", ["face_mismatch"], False), got
    assert gate.state(rid) == "nominated"
    audits = gate.face_audits()
    assert [k for k, _ in audits] == ["identity.face.verify.mismatched"] * 2
    assert all(d["distance"] > 0.75 and d["matched"] is False for _, d in audits)


def test_the_terminal_s_tolerance_decides(gate: FaceGate) -> None:
    gate.pickable(3)
    gate.enrol(gate.p.driver, "obama.jpg")
    # obama2.jpg, 0.37 from obama.jpg; a new capture of it each time (the same bytes again are a replay)
    assert _decide(gate, gate.with_face(3, fresh("obama2.jpg")))["decision"] == "allow"
    gate.policy(face_tolerance=0.3)  # a stricter terminal
    strict = _decide(gate, gate.with_face(3, fresh("obama2.jpg")))
    assert (strict["decision"], strict["reasons"]) == ("deny", ["face_mismatch"]), strict
    assert [d["tolerance"] for _, d in gate.face_audits()] == [0.5, 0.3]
    gate.policy(face_tolerance=0.45)
    assert _decide(gate, gate.with_face(3, fresh("obama2.jpg")))["decision"] == "allow"


@pytest.mark.parametrize(("image", "code"), [
    (lambda: b64(photo("chelsea.png")), "face_not_found"),  # a cat
    (lambda: b64(side_by_side("obama.jpg", "biden.jpg")), "face_multiple"),
    (lambda: b64(b"GIF89a not a photo"), "image_unreadable"),
    (lambda: "not base64 at all!", "image_unreadable"),
    (lambda: b64(os.urandom(4 * 1024 * 1024 + 10)), "image_too_large"),
    *((lambda name=name: b64(crafted()[name]), "image_unreadable") for name in CRAFTED),  # review 165, finding 1
], ids=["no face", "two faces", "not an image", "bad base64", "too large", *CRAFTED])
def test_an_unusable_capture_is_a_clear_422_and_nothing_is_recorded(gate: FaceGate, image: Any, code: str) -> None:
    gate.pickable(4)
    gate.enrol(gate.p.driver, "obama.jpg")
    body = gate.with_face(4, image(), mode="commit")
    assert_problem(gate.verify(body), 422, code)
    assert gate.decisions() == 0
    # The lane sends a good capture under the same request_id: decided now.
    assert _decide(gate, {**body, "face": {"image": b64(photo("obama2.jpg"))}})["decision"] == "allow"


def test_the_same_capture_under_another_request_id_is_a_replay_denied_face_mismatch(gate: FaceGate) -> None:
    """A live camera never sends the same bytes twice: the driver's capture sent again under a new
    request_id (a copy someone kept) is denied face_mismatch, the audit entry says face_replayed and
    names the request it was used for first. The same request_id again is a retry: its recorded answer.
    A check opens nothing and claims nothing: the commit a terminal sends after its check, with the same
    capture, is its one use; a check with a capture used before is found all the same. The table keeps
    a keyed digest, not the image nor its plain SHA-256."""
    import hashlib

    rid = gate.pickable(12)
    gate.enrol(gate.p.driver, "obama.jpg")
    capture = fresh("obama2.jpg")
    assert _decide(gate, gate.with_face(12, capture))["decision"] == "allow"  # the terminal's check
    first = gate.with_face(12, capture, mode="commit")  # then its commit, with the same capture
    allowed = _decide(gate, first)
    assert (allowed["decision"], allowed["committed"]) == ("allow", True), allowed
    assert _decide(gate, first) == allowed  # the lane's retry: the recorded answer
    assert gate.state(rid) == "gated_in"
    for mode in ("commit", "check"):  # the copy at the gate-out, under new request_ids
        again = _decide(gate, gate.with_face(12, capture, mode=mode, direction="out"))
        assert (again["decision"], again["reasons"], again["committed"]) == ("deny", ["face_mismatch"], False), again
        kind, data = gate.face_audits()[-1]
        assert (kind, data["reason"], data["matched"]) == ("identity.face.verify.refused", "face_replayed", False)
        assert data["replay_of"] == f"gate:{TERMINAL}:{first['request_id']}" and 0.3 < data["distance"] < 0.45
    assert gate.state(rid) == "gated_in"
    with gate.engine.connect() as conn:  # beside the enrolment's photo (review 165, finding 4)
        [row] = conn.execute(sa.select(face_captures).where(face_captures.c.used_for.not_like("enrol:%"))).all()
    assert row.person_id == gate.p.driver and len(row.digest) == 32
    assert row.digest != hashlib.sha256(capture).digest() and capture not in bytes(row.digest)
    # A new capture of the same face is the driver: allowed, and committed.
    done = _decide(gate, gate.with_face(12, fresh("obama2.jpg"), mode="commit", direction="out"))
    assert (done["decision"], done["committed"]) == ("allow", True), done
    assert gate.state(rid) == "completed"


def test_a_retry_of_one_request_matches_again_and_is_no_replay(gate: FaceGate) -> None:
    """A gate's retry of its own request_id whose decision was not recorded yet (the first attempt died
    after the match, or two twins race) matches the same bytes again: the match is claimed under the
    terminal and request_id, so it is no replay; under another request_id it is."""
    gate.pickable(13)
    gate.enrol(gate.p.driver, "obama.jpg")
    matcher = gate.app.state.container.face_matcher
    capture = fresh("obama2.jpg")

    def match(request_id: str) -> Any:
        return matcher.match(gate.p.driver, capture, tolerance=0.5,
                             context={"terminal": TERMINAL, "lane": "in-3", "request_id": request_id})

    assert [match("r-1").matched, match("r-1").matched] == [True, True]
    replayed = match("r-2")
    assert (replayed.matched, replayed.reason, replayed.distance) == (False, "face_replayed", None)


@pytest.mark.parametrize("mode", ["check", "commit"])
def test_a_bad_capture_answers_the_same_whether_or_not_a_face_is_enrolled(gate: FaceGate, mode: str) -> None:
    """No enrolment oracle: the same unusable captures, for the same driver before and after his face is
    enrolled, get the same answers (a 422 problem with the capture's code, nothing recorded). Before,
    a driver without a face got review face_required for any of them, and one with a face a 422."""
    gate.pickable(14)
    bad = {"no face": photo("chelsea.png"), "two faces": side_by_side("obama.jpg", "biden.jpg"),
           "blurred": blurred("obama2.jpg", radius=6.0), "not an image": b"GIF89a not a photo"}

    def answers() -> dict[str, Any]:
        got = {}
        for name, image in bad.items():
            r = gate.verify(gate.with_face(14, image, mode=mode))
            got[name] = (r.status_code, r.json().get("code"), r.json().get("detail"))
        return got

    before = answers()
    gate.enrol(gate.p.driver, "obama.jpg")
    after = answers()
    assert before == after
    assert {name: code for name, (_, code, _) in after.items()} == {
        "no face": "face_not_found", "two faces": "face_multiple", "blurred": "face_blurred",
        "not an image": "image_unreadable"}
    assert gate.decisions() == 0
    # The trail, which the gate does not read, still says which it was.
    assert [d["enrolled"] for _, d in gate.face_audits()] == [False] * 3 + [True] * 3


def test_face_field_shape_is_checked(gate: FaceGate) -> None:
    gate.pickable(5)
    both = gate.body(5, face={"image": b64(photo("obama2.jpg")), "match": {"matched": True, "score": 0.9}})
    assert gate.verify(both).status_code == 422
    assert gate.verify(gate.body(5, face={})).status_code == 422
    assert gate.verify(gate.body(5, face={"image": ""})).status_code == 422
    assert gate.decisions() == 0


def test_no_enrolment_or_no_matcher_is_review_never_allow(gate: FaceGate) -> None:
    gate.pickable(6)
    got = _decide(gate, gate.with_face(6, photo("obama2.jpg"), mode="commit"))  # nobody enrolled
    assert (got["decision"], got["reasons"], got["committed"]) == ("review", ["face_required"], False), got
    assert [(k, d["reason"]) for k, d in gate.face_audits()] == [("identity.face.verify.refused", "face_not_enrolled")]

    gate.enrol(gate.p.driver, "obama.jpg")
    broken = FacePool(1)
    broken.close()  # the matcher is down: every call is face_unavailable
    own, gate.app.state.face_pool, gate.app.state.face = gate.app.state.face_pool, broken, None
    try:
        down = _decide(gate, gate.with_face(6, photo("obama2.jpg"), mode="commit"))
    finally:
        gate.app.state.face_pool, gate.app.state.face = own, None
    assert (down["decision"], down["reasons"]) == ("review", ["face_required"]), down
    assert gate.face_audits()[-1][1]["reason"] == "face_unavailable"


def test_nobody_to_match_is_not_an_allow(gate: FaceGate) -> None:
    # No right for this container and no badge: nobody is known, so no face is matched.
    got = _decide(gate, gate.with_face(7, photo("obama2.jpg"), badge=None))
    assert got["decision"] != "allow" and "face_required" in got["reasons"], got
    assert gate.face_audits() == []


def test_the_audit_trail_and_the_decisions_hold_no_image(gate: FaceGate) -> None:
    gate.pickable(8)
    gate.enrol(gate.p.driver, "obama.jpg")
    capture = photo("obama2.jpg")
    _decide(gate, gate.with_face(8, capture, mode="commit"))
    _decide(gate, gate.with_face(8, photo("biden.jpg")))
    needles_bytes = [capture[100:164], capture[5000:5064], photo("biden.jpg")[100:164]]
    needles_text = [b64(capture)[200:264], b64(capture)[8000:8064], b64(photo("biden.jpg"))[200:264]]
    with gate.engine.connect() as conn:
        for table in (audit_log, gate_decisions):
            for row in conn.execute(sa.select(table)):
                for value in row:
                    blob = value if isinstance(value, bytes) else str(value).encode()
                    assert not any(n in blob for n in needles_bytes), table.name
                    assert not any(n in blob.decode("latin-1") for n in needles_text), table.name
    assert {k for k, _ in gate.face_audits()} == {"identity.face.verify.matched", "identity.face.verify.mismatched"}


@pytest.fixture
def redis_gate(pg_engine: sa.Engine, tmp_path: Path, redis_url: str, face_pool: FacePool) -> Iterator[FaceGate]:
    """A face gate on PostgreSQL with the gate's facts in Redis."""
    with serving(pg_engine, tmp_path, face_pool, redis_url=redis_url, gate_decision_drain=False) as gate:
        assert gate.app.state.container.gate_facts is not None
        yield gate


def test_with_the_facts_in_redis_an_image_is_matched_all_the_same(redis_gate: FaceGate) -> None:
    gate = redis_gate
    rid = gate.pickable(9)
    gate.enrol(gate.p.driver, "obama.jpg")
    assert _decide(gate, gate.body(9))["decision"] == "allow"  # the facts are cached now
    assert _decide(gate, gate.with_face(9, photo("biden.jpg")))["reasons"] == ["face_mismatch"]
    assert _decide(gate, gate.with_face(9, fresh("obama2.jpg")))["decision"] == "allow"
    gate.policy(face_tolerance=0.3)  # the policy change reaches the cached facts
    assert _decide(gate, gate.with_face(9, fresh("obama2.jpg")))["reasons"] == ["face_mismatch"]
    gate.policy(face_tolerance=0.5)
    done = _decide(gate, gate.with_face(9, fresh("obama2.jpg"), mode="commit"))
    assert (done["decision"], done["committed"]) == ("allow", True) and gate.state(rid) == "gated_in"
    assert len(gate.face_audits()) == 4


def test_a_badge_blocked_while_the_face_is_matched_refuses_the_commit(redis_gate: FaceGate) -> None:
    """With the facts in Redis, a commit with a capture read them before the match; the badge office
    blocks the badge while the face is matched: the commit decides on the badge as it is after the
    match (badge_blocked), not on what it read before."""
    from identity.badges.service import BadgeService
    from quaygate.schema import badges

    gate = redis_gate
    rid = gate.pickable(10)
    gate.enrol(gate.p.driver, "obama.jpg")
    assert _decide(gate, gate.body(10))["decision"] == "allow"  # the facts are cached now
    with gate.engine.connect() as conn:
        badge_id = conn.execute(sa.select(badges.c.id).where(badges.c.number == gate.badge_number)).scalar_one()
    matcher = gate.app.state.container.face_matcher
    real = matcher.match

    def blocked_meanwhile(*args: Any, **kw: Any) -> Any:
        BadgeService(gate.engine).change_status(badge_id, "blocked", reason="reported stolen", actor="office",
                                                now=_now())
        return real(*args, **kw)

    matcher.match = blocked_meanwhile
    got = _decide(gate, gate.with_face(10, photo("obama2.jpg"), mode="commit"))
    assert (got["decision"], got["committed"]) == ("deny", False) and "badge_blocked" in got["reasons"], got
    assert gate.state(rid) == "nominated"


def test_an_image_request_is_never_answered_from_the_cache_alone() -> None:
    class Facts:
        def read(self, **_: Any) -> Any:
            raise AssertionError("an image request must not read the cached facts on the event loop")

    request = g.GateRequest(request_id="r", terminal=TERMINAL, lane="1", direction=g.Direction.IN,
                            mode=g.Mode.CHECK, container=g.ContainerRead(container(1), 0.99), plate=None,
                            badge=None, face=g.FaceEvidence.image_pending(), observed_at=_now())
    actor = SimpleNamespace(kind=OrgKind.TERMINAL, terminal_code=TERMINAL)
    answered: list[Any] = []
    worker = threading.Thread(target=lambda: answered.append(asyncio.run(verify_service.answer_from_cache(
        Facts(), actor, request, fingerprint="f", now=_now()))))  # type: ignore[arg-type]
    worker.start()  # a loop of its own thread: a test before may have left one running in this one
    worker.join()
    assert answered == [None]


# ---- the pure rules ---------------------------------------------------------------------------------

NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)
DRIVER, OTHER = uuid.uuid4(), uuid.uuid4()


def _right(driver: uuid.UUID) -> g.RightFacts:
    return g.RightFacts(id=uuid.uuid4(), container=container(1), terminal=TERMINAL, state="nominated",
                        blocked=False, commercial="green", customs="green", terminal_light="green",
                        valid_from=datetime(2026, 11, 1, tzinfo=UTC), valid_until=datetime(2026, 12, 1, tzinfo=UTC),
                        created_at=datetime(2026, 11, 1, tzinfo=UTC),
                        nomination=g.NominationFacts(driver, "1ABC123", "BE", "accepted"))


def _badge(person: uuid.UUID) -> g.BadgeFacts:
    return g.BadgeFacts(found=True, status="active", person_id=person, activated_terminals=frozenset({TERMINAL}),
                        holder_name="Jan Peeters")


def _decide_pure(face: g.FaceEvidence | None, *, driver: uuid.UUID = DRIVER, policy: g.TerminalPolicy | None = None
                 ) -> g.Decision:
    request = g.GateRequest(request_id="r", terminal=TERMINAL, lane="1", direction=g.Direction.IN,
                            mode=g.Mode.CHECK, container=g.ContainerRead(container(1), 0.99),
                            plate=g.PlateRead("1ABC123", "BE", 0.99), badge=g.BadgeRead("alfapass", "1"),
                            face=face, observed_at=NOW)
    return g.decide(request, rights=[_right(driver)], badge=_badge(driver),
                    screening=g.ScreeningFacts(g.ScreeningResult.CLEAR), policy=policy or g.TerminalPolicy(), now=NOW)


def _image(person: uuid.UUID, distance: float | None, *, tolerance: float = 0.5,
           unavailable: str | None = None) -> g.FaceEvidence:
    matched = distance is not None and distance <= tolerance
    return g.FaceEvidence("image", matched=matched, person_id=person, distance=distance, tolerance=tolerance,
                          unavailable=unavailable)


def test_pure_the_face_is_matched_against_the_nominated_driver() -> None:
    request = g.GateRequest(request_id="r", terminal=TERMINAL, lane="1", direction=g.Direction.IN,
                            mode=g.Mode.CHECK, container=g.ContainerRead(container(1), 0.99), plate=None,
                            badge=g.BadgeRead("alfapass", "1"), face=None, observed_at=NOW)
    subject = g.face_subject(request, rights=[_right(DRIVER)], badge=_badge(OTHER), policy=g.TerminalPolicy(), now=NOW)
    assert subject == DRIVER  # the right's driver, not whoever holds the badge
    assert g.face_subject(request, rights=[], badge=_badge(OTHER), policy=g.TerminalPolicy(), now=NOW) == OTHER
    assert g.face_subject(request, rights=[], badge=None, policy=g.TerminalPolicy(), now=NOW) is None


def test_pure_image_outcomes() -> None:
    assert _decide_pure(_image(DRIVER, 0.36)).decision is g.Outcome.ALLOW
    assert _decide_pure(_image(DRIVER, 0.86)).reasons == (g.Reason.FACE_MISMATCH,)
    # matched against someone else (the right re-nominated since): no face for this driver
    d = _decide_pure(_image(OTHER, 0.2))
    assert (d.decision, d.reasons) == (g.Outcome.REVIEW, (g.Reason.FACE_REQUIRED,))
    for why in ("face_not_enrolled", "face_busy", "face_unavailable", "no_driver"):
        d = _decide_pure(_image(DRIVER, None, unavailable=why))
        assert (d.decision, d.reasons) == (g.Outcome.REVIEW, (g.Reason.FACE_REQUIRED,)), why
    assert _decide_pure(g.FaceEvidence.image_pending()).reasons == (g.Reason.FACE_REQUIRED,)
    assert _decide_pure(_image(DRIVER, None, unavailable="face_not_live")).reasons == (g.Reason.FACE_MISMATCH,)
    # "matched" at a looser tolerance than the terminal's now: the stricter one counts
    loose = _image(DRIVER, 0.45, tolerance=0.6)
    assert _decide_pure(loose, policy=g.TerminalPolicy(face_tolerance=0.4)).reasons == (g.Reason.FACE_MISMATCH,)
    forged = g.FaceEvidence("image", matched=True, person_id=DRIVER, distance=0.7, tolerance=0.5)
    assert _decide_pure(forged).reasons == (g.Reason.FACE_MISMATCH,)


@pytest.mark.parametrize("value", [0.29, 0.61, 0.8, float("nan"), True, "0.5"])
def test_pure_face_tolerance_is_bounded(value: Any) -> None:
    with pytest.raises(ValueError, match="face_tolerance"):
        g.TerminalPolicy(face_tolerance=value)
    assert g.TerminalPolicy(face_tolerance=0.3).face_tolerance == 0.3


@pytest.mark.parametrize("bad", [
    lambda: g.FaceEvidence("image", 0.9, True),  # a score is a matcher's
    lambda: g.FaceEvidence("image", distance=-0.1),
    lambda: g.FaceEvidence("photo"),  # type: ignore[arg-type]
])
def test_pure_face_evidence_shape(bad: Any) -> None:
    with pytest.raises(ValueError):
        bad()

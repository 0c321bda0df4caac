"""Use cases against the real schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa

from quaygate.schema import (
    audit_log,
    badges,
    memberships,
    release_events,
    releases,
    webhook_deliveries,
    webhook_subscriptions,
)
from release_service.adapters.sqla.store import SqlReleaseStore
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import OrgKind
from release_service.domain.release import MAX_BATCH, LightKind, LightStatus, ReleaseRight, State, Transfer
from release_service.ports import ReleaseFilter
from release_service.services import gate, issue, lifecycle, nominate, queries, transfers
from release_service.services.common import IdempotencyRequest, run

from .factories import Port, add_driver, add_org, do, issue_cmd, now, port


def _code(fn) -> ErrorCode:  # type: ignore[no-untyped-def]
    with pytest.raises(DomainError) as err:
        fn()
    return err.value.code


def test_full_chain_to_gate_out(engine: sa.Engine) -> None:
    p = port(engine)
    right, receipt = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), now()))
    assert receipt.action == "release.issued" and receipt.seq == 1
    t, _ = do(engine, lambda uow: transfers.transfer(uow, p.fwd, right.id, p.haul.organisation_id, now()))
    do(engine, lambda uow: transfers.accept(uow, p.haul, t.id, now()))
    cmd = nominate.NominateCommand(plate_text="1-ABC-123", plate_country="be", driver_person_id=p.driver)
    do(engine, lambda uow: nominate.nominate(uow, p.haul, right.id, cmd, now()))
    do(engine, lambda uow: lifecycle.set_light(uow, p.customs, right.id, LightKind.CUSTOMS, LightStatus.GREEN, None,
                                               now()))
    do(engine, lambda uow: lifecycle.set_light(uow, p.terminal, right.id, LightKind.TERMINAL, LightStatus.GREEN,
                                               None, now()))
    do(engine, lambda uow: gate.gate_in(uow, p.terminal, right.id, uuid.uuid4(), now()))
    assert _code(lambda: do(engine, lambda uow: gate.gate_in(uow, p.terminal, right.id, uuid.uuid4(), now()))) \
        is ErrorCode.ALREADY_USED
    final, _ = do(engine, lambda uow: gate.gate_out(uow, p.terminal, right.id, uuid.uuid4(), now()))
    assert final.state is State.COMPLETED
    with SqlUnitOfWork(engine, readonly=True) as uow:
        types = [e.type for e in queries.events(uow, p.line, right.id)]
        chain = uow.releases.holders_chain(right.id)
        audited = uow.connection.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one()
    assert types == ["release.issued", "release.transfer.requested", "release.transfer.accepted",
                     "release.nominated", "release.light.customs", "release.light.terminal", "release.gated_in",
                     "release.completed"]
    assert chain == [p.fwd.organisation_id, p.haul.organisation_id]
    assert audited == len(types)


def _offered_when_ready(engine: sa.Engine, p: Port) -> tuple[ReleaseRight, Transfer]:
    """A right the haulier holds, nominated, every light green (ready for gate-in), and offered by the
    haulier to another operator: the offer pending."""
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, to=p.haul.organisation_id), now()))
    cmd = nominate.NominateCommand(plate_text="1-ABC-123", plate_country="be", driver_person_id=p.driver)
    do(engine, lambda uow: nominate.nominate(uow, p.haul, right.id, cmd, now()))
    for who, kind in ((p.customs, LightKind.CUSTOMS), (p.terminal, LightKind.TERMINAL)):
        do(engine, lambda uow, who=who, kind=kind: lifecycle.set_light(uow, who, right.id, kind, LightStatus.GREEN,
                                                                       None, now()))
    t, _ = do(engine, lambda uow: transfers.transfer(uow, p.haul, right.id, p.haul2.organisation_id, now()))
    return right, t


def test_a_claimed_gate_in_cancels_a_transfer_still_pending(engine: sa.Engine) -> None:
    """``gate.gate_in`` (the conditional claim) writes the transfer the gate-in cancelled, as ``save``
    does: without it the offer stayed pending on a used right."""
    p = port(engine)
    right, t = _offered_when_ready(engine, p)
    do(engine, lambda uow: gate.gate_in(uow, p.terminal, right.id, uuid.uuid4(), now()))
    assert _code(lambda: do(engine, lambda uow: transfers.accept(uow, p.haul2, t.id, now()))) \
        is ErrorCode.TRANSFER_NOT_PENDING
    with SqlUnitOfWork(engine, readonly=True) as uow:
        types = [e.type for e in queries.events(uow, p.line, right.id)]
        (ended,) = uow.releases.transfers(right.id)
    assert types[-2:] == ["release.gated_in", "release.transfer.cancelled"]
    assert ended.state.value == "cancelled" and ended.decided_at is not None


def test_one_live_right_per_container_and_vessel_call(engine: sa.Engine) -> None:
    p = port(engine)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), now()))
    assert _code(lambda: do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), now()))) \
        is ErrorCode.ACTIVE_RIGHT_EXISTS
    # the same call written another way is the same call (review 99): not a second live right
    for written in ("vc-1", "VC 1", " VC1 ", "VC/1", "v.c-1"):
        assert _code(lambda w=written: do(engine, lambda uow: issue.issue(  # type: ignore[misc]
            uow, p.line, issue_cmd(p, vessel_call=w), now()))) is ErrorCode.ACTIVE_RIGHT_EXISTS, written
    assert _code(lambda: do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, vessel_call="-/-"), now()))) \
        is ErrorCode.ILLEGAL_TRANSITION  # no letter or digit: no call at all
    # another vessel call for the same container is a different right
    do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, vessel_call="VC-2"), now()))
    # once the first has ended, the container may be released again on that call
    do(engine, lambda uow: lifecycle.revoke(uow, p.line, right.id, "reissue", now()))
    do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), now()))


def test_a_live_right_keyed_before_the_vessel_call_key_keeps_its_key_when_saved(engine: sa.Engine) -> None:
    """Rights issued before the vessel call was compared as a key carry the call as written in their
    key; two such live rights may exist (the hole review 99 found). Saving one (a block, a light) keeps
    its key: rewritten in the new form, it would meet the other's on the unique index, and every change
    of that right would fail. The key is cleared when the right ends, as before."""
    p = port(engine)
    old, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), now()))
    with engine.begin() as conn:  # as the earlier code keyed it
        conn.execute(releases.update().where(releases.c.id == old.id)
                     .values(active_key=f"{old.container.value}|VC-1"))
    new, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, vessel_call="vc 1"), now()))
    do(engine, lambda uow: lifecycle.block(uow, p.line, old.id, "checking", now()))
    do(engine, lambda uow: lifecycle.unblock(uow, p.line, old.id, None, now()))
    with engine.connect() as conn:
        keys = dict(conn.execute(sa.select(releases.c.id, releases.c.active_key)
                                 .where(releases.c.id.in_([old.id, new.id]))).all())
    assert keys == {old.id: f"{old.container.value}|VC-1", new.id: f"{new.container.value}|VC1"}
    do(engine, lambda uow: lifecycle.revoke(uow, p.line, old.id, "duplicate", now()))
    with engine.connect() as conn:
        assert conn.execute(sa.select(releases.c.active_key).where(releases.c.id == old.id)).scalar_one() is None


def test_failed_action_changes_nothing(engine: sa.Engine) -> None:
    p = port(engine)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), now()))

    def snapshot() -> tuple:
        with engine.connect() as conn:
            return (conn.execute(sa.select(releases)).all(), conn.execute(sa.select(release_events)).all(),
                    conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one())

    before = snapshot()
    for attempt in [
        lambda uow: transfers.transfer(uow, p.haul, right.id, p.haul2.organisation_id, now()),  # not holder
        lambda uow: transfers.transfer(uow, p.fwd, right.id, uuid.uuid4(), now()),  # unknown party
        lambda uow: transfers.transfer(uow, p.fwd, right.id, p.customs.organisation_id, now()),  # wrong kind
        lambda uow: nominate.nominate(uow, p.fwd, right.id, nominate.NominateCommand("1ABC123", "BE", p.driver),
                                      now()),
        lambda uow: lifecycle.block(uow, p.fwd, right.id, None, now()),
        lambda uow: lifecycle.set_light(uow, p.line, right.id, LightKind.CUSTOMS, LightStatus.GREEN, None, now()),
        lambda uow: gate.gate_in(uow, p.terminal, right.id, uuid.uuid4(), now()),
    ]:
        with pytest.raises(DomainError):
            do(engine, attempt)
    assert snapshot() == before


def test_visibility_by_party(engine: sa.Engine) -> None:
    p = port(engine)
    stranger = add_org(engine, OrgKind.RELEASE_PARTY)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), now()))
    t, _ = do(engine, lambda uow: transfers.transfer(uow, p.fwd, right.id, p.haul.organisation_id, now()))
    with SqlUnitOfWork(engine, readonly=True) as uow:
        for who in (p.line, p.fwd, p.haul, p.customs, p.terminal):
            assert [r.id for r in queries.search(uow, who, ReleaseFilter(), now())] == [right.id]
            assert queries.get(uow, who, right.id)[0].id == right.id
        assert queries.search(uow, stranger, ReleaseFilter(), now()) == []
        assert _code(lambda: queries.get(uow, stranger, right.id)) is ErrorCode.NOT_FOUND
    # the stranger cannot accept, and learns nothing about the transfer's existence
    assert _code(lambda: do(engine, lambda uow: transfers.accept(uow, stranger, t.id, now()))) is ErrorCode.NOT_FOUND
    # the forwarder who passed it on still sees it after acceptance
    do(engine, lambda uow: transfers.accept(uow, p.haul, t.id, now()))
    with SqlUnitOfWork(engine, readonly=True) as uow:
        assert queries.get(uow, p.fwd, right.id)[0].holder_organisation_id == p.haul.organisation_id


def test_nomination_by_badge_and_screening(engine: sa.Engine) -> None:
    p = port(engine)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, to=p.haul.organisation_id), now()))
    blocked_driver = add_driver(engine, p.haul.organisation_id, badge_status="blocked", number="AP-999999")
    # His only badge for haul is blocked and his employer on record links him to nothing (review 152,
    # finding 2): a stranger to haul until he holds a driver membership of it; then screened, and refused.
    assert _code(lambda: do(engine, lambda uow: nominate.nominate(
        uow, p.haul, right.id, nominate.NominateCommand("1ABC123", "BE", blocked_driver), now()))) \
        is ErrorCode.UNKNOWN_PERSON
    with engine.begin() as conn:
        conn.execute(memberships.insert().values(person_id=blocked_driver, organisation_id=p.haul.organisation_id,
                                                 role="driver", created_at=now()))
    refused = _code(lambda: do(engine, lambda uow: nominate.nominate(
        uow, p.haul, right.id, nominate.NominateCommand("1ABC123", "BE", blocked_driver), now())))
    assert refused is ErrorCode.DRIVER_SCREENING_FAILED
    assert _code(lambda: do(engine, lambda uow: nominate.nominate(
        uow, p.haul, right.id, nominate.NominateCommand("1ABC123", "BE", badge_scheme="alfapass",
                                                        badge_number="AP-000000"), now()))) is ErrorCode.UNKNOWN_BADGE
    with engine.begin() as conn:  # a number the gate reads (add_driver's own need not be one)
        conn.execute(badges.update().where(badges.c.person_id == p.driver).values(number="AP-123455"))
    r, _ = do(engine, lambda uow: nominate.nominate(
        uow, p.haul, right.id, nominate.NominateCommand("1ABC123", "BE", badge_scheme="alfapass",
                                                        badge_number="ap 123455"), now()))
    assert r.nomination is not None and r.nomination.driver_person_id == p.driver


def test_batch_issue_reports_each_item(engine: sa.Engine) -> None:
    p = port(engine)
    do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 3), now()))
    cmds = [issue_cmd(p, n) for n in range(1, 6)]
    cmds.append(issue.IssueCommand("OCLU0000001", "BL", "VC-1", "T", p.fwd.organisation_id,  # type: ignore[arg-type]
                                   now(), now()))
    cmds.append(issue_cmd(p, 1, vessel_call="vc 1"))  # twice in the same batch (the call written another way)
    results = do(engine, lambda uow: issue.issue_batch(uow, p.line, cmds, now()))
    codes = [r.error.code if r.error else None for r in results]
    assert codes == [None, None, ErrorCode.ACTIVE_RIGHT_EXISTS, None, None, ErrorCode.CONTAINER_CHECK_DIGIT,
                     ErrorCode.ACTIVE_RIGHT_EXISTS]
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(releases)).scalar_one() == 5


def test_batch_limits(engine: sa.Engine) -> None:
    p = port(engine)
    assert _code(lambda: do(engine, lambda uow: issue.issue_batch(uow, p.line, [], now()))) is ErrorCode.BATCH_EMPTY
    too_many = [issue_cmd(p, 1)] * (MAX_BATCH + 1)
    assert _code(lambda: do(engine, lambda uow: issue.issue_batch(uow, p.line, too_many, now()))) \
        is ErrorCode.BATCH_TOO_LARGE
    assert _code(lambda: do(engine, lambda uow: issue.issue_batch(uow, p.fwd, [issue_cmd(p, 1)], now()))) \
        is ErrorCode.WRONG_ORGANISATION_KIND


def test_idempotency_key_gives_same_answer_and_no_second_effect(engine: sa.Engine) -> None:
    p = port(engine)
    idem = IdempotencyRequest(p.line.client_id, "key-1", "fp-1")

    def call(fp: str = "fp-1") -> tuple[int, object]:
        return run(SqlUnitOfWork(engine), lambda uow: issue.issue(uow, p.line, issue_cmd(p), now()),
                   lambda r: (201, {"release_id": str(r[0].id)}),
                   idempotency=IdempotencyRequest(idem.client_id, idem.key, fp), now=now())

    first = call()
    assert call() == first
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(releases)).scalar_one() == 1
    assert _code(lambda: call("another body")) is ErrorCode.IDEMPOTENCY_KEY_REUSED


def test_failed_idempotent_call_can_be_retried(engine: sa.Engine) -> None:
    p = port(engine)
    idem = IdempotencyRequest(p.line.client_id, "key-2", "fp")
    bad = issue.IssueCommand("OCLU0000001", "BL", "VC", "T", p.fwd.organisation_id, now(), now())  # type: ignore[arg-type]
    with pytest.raises(DomainError):
        run(SqlUnitOfWork(engine), lambda uow: issue.issue(uow, p.line, bad, now()), lambda r: (201, {}),
            idempotency=idem, now=now())
    status, _ = run(SqlUnitOfWork(engine), lambda uow: issue.issue(uow, p.line, issue_cmd(p), now()),
                    lambda r: (201, {"ok": True}), idempotency=idem, now=now())
    assert status == 201


def test_webhook_outbox_written_in_the_same_transaction(engine: sa.Engine) -> None:
    p = port(engine)
    with engine.begin() as conn:
        for org, types in ((p.fwd, ["release.*"]), (p.haul, ["release.transfer.*"])):
            conn.execute(webhook_subscriptions.insert().values(
                id=uuid.uuid4(), organisation_id=org.organisation_id, url="http://127.0.0.1:9/hook",
                secret_enc="x", event_types=types, active=True, created_at=now()))
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), now()))
    do(engine, lambda uow: transfers.transfer(uow, p.fwd, right.id, p.haul.organisation_id, now()))
    with engine.connect() as conn:
        rows = conn.execute(sa.select(webhook_deliveries.c.event_type, webhook_deliveries.c.subscription_id)).all()
    assert sorted(r.event_type for r in rows) == ["release.issued", "release.transfer.requested",
                                                  "release.transfer.requested"]


def test_lapse_sweeper(engine: sa.Engine) -> None:
    from datetime import timedelta

    p = port(engine)
    right, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p), now()))
    later = right.valid_until + timedelta(seconds=1)
    assert do(engine, lambda uow: lifecycle.lapse_due(uow, later)) == 1
    with SqlUnitOfWork(engine, readonly=True) as uow:
        r = uow.releases.get(right.id)
    assert r is not None and r.state is State.EXPIRED and r.active_key is None
    assert do(engine, lambda uow: lifecycle.lapse_due(uow, later)) == 0


def test_a_driver_sees_only_his_nominations(engine: sa.Engine) -> None:
    from release_service.domain.parties import Actor

    p = port(engine)
    other_driver = add_driver(engine, p.haul.organisation_id, number="AP-777777")
    mine, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 1, to=p.haul.organisation_id), now()))
    theirs, _ = do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 2, to=p.haul.organisation_id), now()))
    do(engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 3, to=p.haul.organisation_id), now()))
    for rid, driver in ((mine.id, p.driver), (theirs.id, other_driver)):
        do(engine, lambda uow, rid=rid, driver=driver: nominate.nominate(
            uow, p.haul, rid, nominate.NominateCommand("1ABC123", "BE", driver), now()))
    me = Actor("driver-app", None, None, person_id=p.driver)
    with SqlUnitOfWork(engine, readonly=True) as uow:
        assert [r.id for r in queries.search(uow, me, ReleaseFilter(), now())] == [mine.id]
        assert queries.get(uow, me, mine.id)[0].id == mine.id
        assert _code(lambda: queries.get(uow, me, theirs.id)) is ErrorCode.NOT_FOUND


def test_a_claimed_gate_in_reads_its_right_under_its_lock(pg_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Review 115: ``gate.gate_in`` read the right without a lock; a decline committed between that read
    and the claim was rewritten ``cancelled`` with a second end event. Read under the lock, the decline
    waits for the gate-in and finds the offer no longer pending: one end of the transfer, the gate-in's."""
    engine = pg_engine
    p = port(engine)
    right, t = _offered_when_ready(engine, p)
    declined: list[object] = []

    def decline() -> None:
        try:
            do(engine, lambda uow: transfers.decline(uow, p.haul2, t.id, None, now()))
            declined.append("declined")
        except DomainError as exc:
            declined.append(exc.code)

    original = SqlReleaseStore.get

    def read_then_decline(self: SqlReleaseStore, release_id: uuid.UUID, **kw: object) -> object:
        found = original(self, release_id, **kw)  # type: ignore[arg-type]
        if not declined and release_id == right.id:
            other = threading.Thread(target=decline)
            other.start()
            other.join(timeout=1.5)  # done at once without the lock; waiting for the gate-in with it
            declined.append("started")
        return found

    monkeypatch.setattr(SqlReleaseStore, "get", read_then_decline)
    do(engine, lambda uow: gate.gate_in(uow, p.terminal, right.id, uuid.uuid4(), now()))
    monkeypatch.setattr(SqlReleaseStore, "get", original)
    for _ in range(50):
        if len(declined) == 2:
            break
        threading.Event().wait(0.1)
    assert declined == ["started", ErrorCode.TRANSFER_NOT_PENDING]
    with SqlUnitOfWork(engine, readonly=True) as uow:
        types = [e.type for e in queries.events(uow, p.line, right.id)]
    assert [x for x in types if x in ("release.transfer.declined", "release.transfer.cancelled")] == \
        ["release.transfer.cancelled"]

"""The badge register's use cases on real SQLite and PostgreSQL: rows, history, audit, concurrency."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from identity.badges.service import BadgeError, BadgeService, IssueBadge, deactivate_for_ban
from identity.domain.badges import Scheme, add_years, with_check
from identity.domain.screening import ScreeningResult
from quaygate.schema import audit_log, badge_activations, badge_status_events, badges, persons
from release_service.adapters.sqla.directory import BadgeScreening, SqlDirectory
from release_service.domain.parties import OrgKind
from tests.factories import TERMINAL, add_org

NOW = datetime.now(UTC).replace(microsecond=0)


class FixedScreening:
    """A fake of the BanScreening port (the port-ban register is not ours to mock here)."""

    def __init__(self, status: str, age: float | None = 30.0) -> None:
        self.status, self.age, self.asked = status, age, []  # type: ignore[var-annotated]

    def screen(self, person_id: uuid.UUID, now: datetime, *, conn: object = None) -> ScreeningResult:
        self.asked.append(person_id)
        return ScreeningResult(self.status, self.age, ("ban:REF-1",) if self.status == "banned" else ())


def add_person(engine: sa.Engine) -> uuid.UUID:
    pid = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(persons.insert().values(id=pid, given_name="An", family_name="Claes", created_at=NOW))
    return pid


def issue_cmd(person: uuid.UUID, serial: int = 10023, *, scheme: Scheme = Scheme.ALFAPASS,
              uid: str | None = "04A1B2C3D4E5F6", years: int = 3) -> IssueBadge:
    return IssueBadge(person, scheme.value, with_check(scheme, serial), uid, None, NOW - timedelta(days=1),
                      NOW + timedelta(days=365 * years))


def _code(fn, *args, **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(BadgeError) as info:
        fn(*args, **kw)
    return info.value.code


def _history(engine: sa.Engine, badge_id: uuid.UUID) -> list[tuple[int, str | None, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(badge_status_events.c.seq, badge_status_events.c.from_status,
                                      badge_status_events.c.to_status, badge_status_events.c.reason)
                            .where(badge_status_events.c.badge_id == badge_id)
                            .order_by(badge_status_events.c.seq)).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def _audit(engine: sa.Engine, subject: uuid.UUID) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log.c.kind, audit_log.c.data).where(audit_log.c.subject == str(subject))
                            .order_by(audit_log.c.id)).all()
    return [(r[0], r[1]) for r in rows]


def test_issue_writes_the_badge_its_first_history_entry_and_the_audit_entry(engine: sa.Engine) -> None:
    person = add_person(engine)
    screening = FixedScreening("clear")
    done = BadgeService(engine, screening).issue(
        IssueBadge(person, "AlfaPass", "ap 100230", "04:a1:b2:c3:d4:e5:f6", None, NOW, NOW + timedelta(days=30)),
        actor="admin-1", now=NOW)
    assert screening.asked == [person]
    row = done.badge
    assert (row.scheme, row.number, row.card_uid, row.status.value) == ("alfapass", "AP-100230", "04A1B2C3D4E5F6",
                                                                        "active")
    assert _history(engine, row.id) == [(1, None, "active", "issued")]
    (kind, data), = _audit(engine, row.id)
    assert kind == "identity.badge.issued" and data["screening"] == "clear" and data["person_id"] == str(person)
    assert "AP-100230" not in str(data)  # the audit trail carries ids, not badge numbers


def test_issue_refusals(engine: sa.Engine) -> None:
    person = add_person(engine)
    service = BadgeService(engine)
    service.issue(issue_cmd(person), actor="a", now=NOW)
    assert _code(service.issue, issue_cmd(person, uid=None), actor="a", now=NOW) == "badge_number_taken"
    assert _code(service.issue, issue_cmd(person, 10024), actor="a", now=NOW) == "card_uid_taken"
    assert _code(service.issue, issue_cmd(uuid.uuid4(), 10025, uid=None), actor="a", now=NOW) == "unknown_person"
    bad = IssueBadge(person, "alfapass", "AP-100231", None, None, NOW, NOW + timedelta(days=1))
    assert _code(service.issue, bad, actor="a", now=NOW) == "invalid_badge_number"
    too_long = IssueBadge(person, "portpass", with_check(Scheme.PORTPASS, 1), None, None, NOW,
                          add_years(NOW, 5) + timedelta(days=1))
    assert _code(service.issue, too_long, actor="a", now=NOW) == "validity_too_long"
    past = IssueBadge(person, "portpass", with_check(Scheme.PORTPASS, 1), None, None, NOW - timedelta(days=9),
                      NOW - timedelta(days=1))
    assert _code(service.issue, past, actor="a", now=NOW) == "invalid_validity"
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(badges)).scalar() == 1


@pytest.mark.parametrize(("status", "code"), [("banned", "person_banned"), ("unavailable", "screening_unavailable")])
def test_a_banned_or_unscreenable_person_gets_no_badge(engine: sa.Engine, status: str, code: str) -> None:
    person = add_person(engine)
    assert _code(BadgeService(engine, FixedScreening(status)).issue, issue_cmd(person), actor="a", now=NOW) == code
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(badges)).scalar() == 0
    (kind, data), = _audit(engine, person)
    assert kind == "identity.badge.issue_refused" and data["code"] == code and data["screening"] == status


def test_status_changes_keep_who_why_and_when_and_blocked_is_for_good(engine: sa.Engine) -> None:
    service = BadgeService(engine)
    badge = service.issue(issue_cmd(add_person(engine)), actor="a", now=NOW).badge
    assert service.change_status(badge.id, "inactive", reason="left at home", actor="desk-1",
                                 now=NOW + timedelta(minutes=1)).status.value == "inactive"
    assert service.change_status(badge.id, "active", reason="found", actor="desk-1",
                                 now=NOW + timedelta(minutes=2)).status_reason == "found"
    service.change_status(badge.id, "blocked", reason="stolen", actor="desk-2", now=NOW + timedelta(minutes=3))
    for target in ("active", "inactive", "revoked", "expired"):
        assert _code(service.change_status, badge.id, target, reason="x", actor="a", now=NOW) == "badge_final"
    assert _code(service.change_status, badge.id, "lost", reason="x", actor="a", now=NOW) == "invalid_status"
    assert _code(service.change_status, uuid.uuid4(), "active", reason="x", actor="a", now=NOW) == "not_found"
    assert _history(engine, badge.id) == [(1, None, "active", "issued"), (2, "active", "inactive", "left at home"),
                                          (3, "inactive", "active", "found"), (4, "active", "blocked", "stolen")]
    with engine.connect() as conn:
        who = conn.execute(sa.select(badge_status_events.c.actor, badge_status_events.c.at)
                           .where(badge_status_events.c.seq == 4)).one()
    assert (who.actor, who.at) == ("desk-2", NOW + timedelta(minutes=3))
    kinds = [(k, d.get("from"), d.get("to")) for k, d in _audit(engine, badge.id)]
    assert kinds == [("identity.badge.issued", None, None),
                     ("identity.badge.status_changed", "active", "inactive"),
                     ("identity.badge.status_changed", "inactive", "active"),
                     ("identity.badge.status_changed", "active", "blocked")]


def test_the_gate_side_screening_sees_the_register(engine: sa.Engine) -> None:
    """release_service's BadgeScreening (nomination) reads badges.status and validity: still works."""
    service = BadgeService(engine)
    person = add_person(engine)
    badge = service.issue(issue_cmd(person), actor="a", now=NOW).badge
    with engine.connect() as conn:
        screen = BadgeScreening(SqlDirectory(conn))
        assert screen.screen(person, terminal=TERMINAL, now=NOW).result == "clear"
    service.change_status(badge.id, "blocked", reason="stolen", actor="a", now=NOW)
    with engine.connect() as conn:
        result = BadgeScreening(SqlDirectory(conn)).screen(person, terminal=TERMINAL, now=NOW)
    assert (result.result, result.reasons) == ("refused", ("badge_blocked",))


def test_renew_brings_an_expired_badge_back(engine: sa.Engine) -> None:
    service = BadgeService(engine)
    badge = service.issue(issue_cmd(add_person(engine)), actor="a", now=NOW).badge
    service.change_status(badge.id, "expired", reason="validity over", actor="sweeper", now=NOW)
    assert _code(service.change_status, badge.id, "active", reason="x", actor="a", now=NOW) == "renew_required"
    later = NOW + timedelta(days=2)
    renewed = service.renew(badge.id, valid_until=add_years(later, 5), reason="renewal", actor="a", now=later)
    assert (renewed.status.value, renewed.valid_from, renewed.valid_until) == ("active", later, add_years(later, 5))
    assert _history(engine, badge.id)[-1] == (3, "expired", "active", "renewal")
    assert _code(service.renew, badge.id, valid_until=add_years(later, 6), reason="r", actor="a",
                 now=later) == "validity_too_long"
    assert [k for k, _ in _audit(engine, badge.id)][-2:] == ["identity.badge.status_changed", "identity.badge.renewed"]


def test_activation_per_terminal(engine: sa.Engine) -> None:
    add_org(engine, OrgKind.TERMINAL, terminal_code=TERMINAL)
    add_org(engine, OrgKind.TERMINAL, terminal_code="BEGNE-T2")
    service = BadgeService(engine)
    badge = service.issue(issue_cmd(add_person(engine)), actor="a", now=NOW).badge
    assert _code(service.activate, badge.id, "NOWHERE", actor="desk", now=NOW) == "unknown_terminal"
    service.activate(badge.id, TERMINAL, actor="desk", now=NOW)
    assert _code(service.activate, badge.id, TERMINAL, actor="desk", now=NOW) == "already_activated"
    service.activate(badge.id, "BEGNE-T2", actor="desk", now=NOW)
    assert [a["terminal_code"] for a in service.activations(badge.id)] == ["BEANR-K1700", "BEGNE-T2"]
    assert _code(service.withdraw, badge.id, TERMINAL, reason="", actor="desk", now=NOW) == "reason_required"
    service.withdraw(badge.id, TERMINAL, reason="no longer works here", actor="desk", now=NOW)
    assert _code(service.withdraw, badge.id, TERMINAL, reason="again", actor="desk", now=NOW) == "not_activated"
    assert [a["terminal_code"] for a in service.activations(badge.id)] == ["BEGNE-T2"]
    service.activate(badge.id, TERMINAL, actor="desk", now=NOW + timedelta(hours=1))  # activated again later
    with engine.connect() as conn:
        rows = conn.execute(sa.select(badge_activations.c.withdrawn_by)
                            .where(badge_activations.c.terminal_code == TERMINAL)).scalars().all()
    assert sorted(rows, key=str) == sorted(["desk", None], key=str)  # the withdrawn one is kept
    service.change_status(badge.id, "inactive", reason="missing", actor="a", now=NOW)
    service.withdraw(badge.id, "BEGNE-T2", reason="r", actor="desk", now=NOW)
    assert _code(service.activate, badge.id, "BEGNE-T2", actor="desk", now=NOW) == "badge_inactive"
    kinds = [k for k, _ in _audit(engine, badge.id)]
    assert kinds.count("identity.badge.activated") == 3 and kinds.count("identity.badge.activation_withdrawn") == 2


def test_find_by_number_card_uid_and_person(engine: sa.Engine) -> None:
    service = BadgeService(engine)
    person = add_person(engine)
    a = service.issue(issue_cmd(person), actor="a", now=NOW).badge
    p = service.issue(issue_cmd(person, 4242, scheme=Scheme.PORTPASS, uid="0A0B0C0D"), actor="a", now=NOW).badge
    assert [r.id for r in service.find(number="ap 100230")] == [a.id]
    assert [r.id for r in service.find(number=p.number.lower())] == [p.id]
    assert service.find(number="AP-999999") == []
    assert [r.id for r in service.find(card_uid="0a:0b:0c:0d")] == [p.id]
    assert {r.id for r in service.find(person_id=person)} == {a.id, p.id}
    assert _code(service.find) == "filter_required"
    assert _code(service.find, card_uid="xyz") == "invalid_card_uid"


def test_a_new_ban_deactivates_every_active_badge_in_the_callers_transaction(engine: sa.Engine) -> None:
    service = BadgeService(engine)
    person = add_person(engine)
    one = service.issue(issue_cmd(person), actor="a", now=NOW).badge
    two = service.issue(issue_cmd(person, 4242, scheme=Scheme.PORTPASS, uid=None), actor="a", now=NOW).badge
    three = service.issue(issue_cmd(person, 10024, uid=None), actor="a", now=NOW).badge
    service.change_status(three.id, "blocked", reason="stolen", actor="a", now=NOW)
    other = service.issue(issue_cmd(add_person(engine), 10025, uid=None), actor="a", now=NOW).badge
    # Rolled back with the caller's transaction: nothing changes.
    with engine.connect() as conn, conn.begin() as tx:
        assert set(deactivate_for_ban(conn, person, reference="AIGIS-1", now=NOW)) == {one.id, two.id}
        tx.rollback()
    assert service.get(one.id)[0].status.value == "active"
    with engine.begin() as conn:
        assert set(deactivate_for_ban(conn, person, reference="AIGIS-1", now=NOW)) == {one.id, two.id}
    for badge_id in (one.id, two.id):
        row = service.get(badge_id)[0]
        assert (row.status.value, row.status_reason) == ("inactive", "port_ban")
        assert _history(engine, badge_id)[-1] == (2, "active", "inactive", "port_ban")
        kind, data = _audit(engine, badge_id)[-1]
        assert kind == "identity.badge.status_changed" and data["ban_reference"] == "AIGIS-1"
    assert service.get(three.id)[0].status.value == "blocked"
    assert service.get(other.id)[0].status.value == "active"
    with engine.begin() as conn:  # a second ban for the same person: nothing left to deactivate
        assert deactivate_for_ban(conn, person, reference="AIGIS-2", now=NOW) == []


@pytest.mark.postgres
def test_concurrent_status_changes_leave_one_consistent_history(pg_engine: sa.Engine) -> None:
    """Eight admins change the same badge at once (PostgreSQL): the row lock and the conditional
    update serialise them, so the history is one unbroken chain ending at the badge's status."""
    service = BadgeService(pg_engine)
    badge = service.issue(issue_cmd(add_person(pg_engine)), actor="a", now=NOW).badge
    targets = ["inactive", "active", "inactive", "active", "inactive", "blocked", "active", "revoked"] * 2
    barrier = threading.Barrier(len(targets))
    outcomes: list[str] = []

    def change(i: int, target: str) -> None:
        barrier.wait()
        try:
            service.change_status(badge.id, target, reason=f"change {i}", actor=f"admin-{i}",
                                  now=NOW + timedelta(seconds=i))
            outcomes.append("ok")
        except BadgeError as exc:
            outcomes.append(exc.code)
        except Exception as exc:  # noqa: BLE001 - a forked history would surface here: count it
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=change, args=(i, t)) for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history = _history(pg_engine, badge.id)
    assert len(outcomes) == len(targets), outcomes
    assert [seq for seq, *_ in history] == list(range(1, len(history) + 1))
    for (_, _, prev_to, _), (_, frm, _, _) in zip(history, history[1:], strict=False):
        assert frm == prev_to  # every change starts where the previous one ended
    assert service.get(badge.id)[0].status.value == history[-1][2]
    assert outcomes.count("ok") == len(history) - 1 >= 1
    assert set(outcomes) - {"ok"} <= {"status_unchanged", "badge_final", "transition_refused", "concurrent_change"}, (
        outcomes)
    changed = [d for k, d in _audit(pg_engine, badge.id) if k == "identity.badge.status_changed"]
    assert [(d["from"], d["to"]) for d in changed] == [(frm, to) for _, frm, to, _ in history[1:]]


@pytest.mark.parametrize(("status", "code"), [("banned", "person_banned"), ("unavailable", "screening_unavailable")])
def test_a_badge_of_a_banned_person_is_neither_reactivated_nor_renewed(engine: sa.Engine, status: str,
                                                                       code: str) -> None:
    screening = FixedScreening("clear")
    service = BadgeService(engine, screening)
    badge = service.issue(issue_cmd(add_person(engine)), actor="a", now=NOW).badge
    service.change_status(badge.id, "inactive", reason="port_ban", actor="register", now=NOW)
    screening.status = status  # the person is banned now (or the list cannot be read)
    assert _code(service.change_status, badge.id, "active", reason="found", actor="desk", now=NOW) == code
    assert _code(service.renew, badge.id, valid_until=NOW + timedelta(days=400), reason="renewal", actor="desk",
                 now=NOW) == code
    assert service.get(badge.id)[0].status == "inactive"
    screening.status = "clear"  # the ban is lifted
    assert service.change_status(badge.id, "active", reason="ban lifted", actor="desk", now=NOW).status == "active"


def test_badges_past_their_validity_expire_with_history_and_audit(engine: sa.Engine) -> None:
    service = BadgeService(engine)
    person = add_person(engine)
    live = service.issue(issue_cmd(person), actor="a", now=NOW).badge
    short = service.issue(issue_cmd(person, 10024, uid=None, years=1), actor="a", now=NOW).badge
    blocked = service.issue(issue_cmd(person, 10025, uid=None, years=1), actor="a", now=NOW).badge
    service.change_status(blocked.id, "blocked", reason="stolen", actor="desk", now=NOW)
    later = NOW + timedelta(days=366)  # past the one-year badges, inside the three-year one
    assert service.expire_due(later) == 1
    assert service.expire_due(later) == 0  # nothing left: the sweep is idempotent
    assert service.get(short.id)[0].status == "expired"
    assert service.get(live.id)[0].status == "active"
    assert service.get(blocked.id)[0].status == "blocked"  # final states stay as they are
    assert _history(engine, short.id)[-1][1:] == ("active", "expired", "validity_over")
    kinds = [kind for kind, _ in _audit(engine, short.id)]
    assert kinds[-1] == "identity.badge.expired"

"""The badge audit trail says why, and a renewal says which window it replaced, on real SQLite and
PostgreSQL (review 174, finding 4).

The reason of a status change or of an activation withdrawn was kept only in the badge's history
(badge_status_events, not sealed), a renewal's nowhere; the sealed audit entries carried {from, to},
{terminal} and {valid_until}. A renewal also moved valid_from to now: a badge issued to start later
(a new starter's) became usable at once, and the trail showed only the new valid_until. Now every
badge entry carries the reason, a renewal's the window before and after, and a renewal keeps a start
still ahead (the badge office chose it); a start already past moves to the renewal, from which the
five years of issue 4 count.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from identity.badges.service import BadgeService, IssueBadge, deactivate_for_ban
from identity.domain.badges import Scheme, add_years, with_check
from release_service.domain.parties import OrgKind
from tests.factories import TERMINAL, add_org
from tests.test_badges_store import NOW, _audit, _code, add_person, issue_cmd


def _entries(engine: sa.Engine, badge_id: object, kind: str) -> list[dict]:  # type: ignore[type-arg]
    return [data for k, data in _audit(engine, badge_id) if k == kind]  # type: ignore[arg-type]


def test_every_status_change_and_withdrawal_carries_its_reason(engine: sa.Engine) -> None:
    add_org(engine, OrgKind.TERMINAL, terminal_code=TERMINAL)
    service = BadgeService(engine)
    badge = service.issue(issue_cmd(add_person(engine)), actor="office", now=NOW).badge
    service.change_status(badge.id, "inactive", reason="WHY-LEFT-AT-HOME", actor="desk", now=NOW)
    service.change_status(badge.id, "active", reason="WHY-FOUND", actor="desk", now=NOW)
    service.activate(badge.id, TERMINAL, actor="desk", now=NOW)
    service.withdraw(badge.id, TERMINAL, reason="WHY-NO-LONGER-HERE", actor="desk", now=NOW)
    (issued,) = _entries(engine, badge.id, "identity.badge.issued")
    assert issued["reason"] == "issued" and issued["valid_from"] == (NOW - timedelta(days=1)).isoformat()
    changed = _entries(engine, badge.id, "identity.badge.status_changed")
    # Before: [{'from': 'active', 'to': 'inactive'}, {'from': 'inactive', 'to': 'active'}], no reason.
    assert [(d["from"], d["to"], d.get("reason")) for d in changed] == [
        ("active", "inactive", "WHY-LEFT-AT-HOME"), ("inactive", "active", "WHY-FOUND")]
    (withdrawn,) = _entries(engine, badge.id, "identity.badge.activation_withdrawn")
    assert withdrawn == {"terminal": TERMINAL, "reason": "WHY-NO-LONGER-HERE"}  # before: {'terminal': ...}
    assert service.expire_due(badge.valid_until) == 1
    (expired,) = _entries(engine, badge.id, "identity.badge.expired")
    assert (expired["from"], expired["to"], expired["reason"]) == ("active", "expired", "validity_over")


def test_a_ban_deactivation_says_port_ban_once(engine: sa.Engine) -> None:
    service = BadgeService(engine)
    person = add_person(engine)
    badge = service.issue(issue_cmd(person), actor="office", now=NOW).badge
    with engine.begin() as conn:
        deactivate_for_ban(conn, person, reference="AIGIS-1", now=NOW)
    (changed,) = _entries(engine, badge.id, "identity.badge.status_changed")
    assert changed == {"from": "active", "to": "inactive", "reason": "port_ban", "ban_reference": "AIGIS-1"}


def test_a_renewal_says_why_and_which_window_it_replaced(engine: sa.Engine) -> None:
    service = BadgeService(engine)
    badge = service.issue(issue_cmd(add_person(engine)), actor="office", now=NOW).badge
    service.change_status(badge.id, "expired", reason="validity over", actor="sweeper", now=NOW)
    later = NOW + timedelta(days=2)
    renewed = service.renew(badge.id, valid_until=add_years(later, 5), reason="WHY-I-EXTENDED", actor="office",
                            now=later)
    assert (renewed.valid_from, renewed.valid_until) == (later, add_years(later, 5))  # a past start moves
    (entry,) = _entries(engine, badge.id, "identity.badge.renewed")
    # Before: {'valid_until': ...} only.
    assert entry == {"reason": "WHY-I-EXTENDED",
                     "valid_from": later.isoformat(), "valid_until": add_years(later, 5).isoformat(),
                     "previous": {"valid_from": badge.valid_from.isoformat(),
                                  "valid_until": badge.valid_until.isoformat()}}
    back = _entries(engine, badge.id, "identity.badge.status_changed")[-1]
    assert back == {"from": "expired", "to": "active", "reason": "WHY-I-EXTENDED", "renewed": True}


def test_a_renewal_keeps_a_start_still_ahead(engine: sa.Engine) -> None:
    """A badge issued to start later stays not yet valid when renewed; before, the renewal moved its
    start to now and made it usable at once."""
    service = BadgeService(engine)
    start = NOW + timedelta(days=200)
    badge = service.issue(IssueBadge(add_person(engine), "alfapass", with_check(Scheme.ALFAPASS, 10031), None, None,
                                     start, start + timedelta(days=30)), actor="office", now=NOW).badge
    renewed = service.renew(badge.id, valid_until=start + timedelta(days=400), reason="longer contract",
                            actor="office", now=NOW)
    assert (renewed.valid_from, renewed.valid_until) == (start, start + timedelta(days=400))  # before: (NOW, ...)
    (entry,) = _entries(engine, badge.id, "identity.badge.renewed")
    assert entry["valid_from"] == entry["previous"]["valid_from"] == start.isoformat()
    # The five years count from the start kept; a validity ending before it is refused.
    assert _code(service.renew, badge.id, valid_until=add_years(start, 5) + timedelta(days=1), reason="r",
                 actor="office", now=NOW) == "validity_too_long"
    assert _code(service.renew, badge.id, valid_until=start - timedelta(days=1), reason="r", actor="office",
                 now=NOW) == "invalid_validity"
    assert service.get(badge.id)[0].valid_until == start + timedelta(days=400)

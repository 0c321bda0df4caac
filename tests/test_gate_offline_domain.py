"""The pure core of offline gate mode (release_service/domain/gate_pass.py): what a pass carries, the
offline decision built on gate.decide, and the double-use rule of the reconcile."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from release_service.domain import gate as g
from release_service.domain.gate_pass import (
    BadgeProof,
    Basis,
    Flag,
    GatePass,
    LocalUses,
    OfflineLimits,
    PassRefused,
    UsedBy,
    Verdict,
    badge_digest,
    decide_offline,
    held_since_pass,
    holder_refusals,
    judge_use,
    pass_covers,
    pass_refuses,
)

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
T = "BEANR-K1700"
DRIVER = uuid.uuid4()
CONTAINER = "MSCU1234566"


def a_pass(**over: object) -> GatePass:
    right = g.RightFacts(uuid.uuid4(), CONTAINER, T, "nominated", False, "green", "green", "green",
                         NOW - timedelta(days=1), NOW + timedelta(days=1), NOW - timedelta(days=2),
                         g.NominationFacts(DRIVER, "1ABC123", "BE"))
    badge = BadgeProof("alfapass", badge_digest("alfapass", "AP-123455"), None, "active", NOW + timedelta(days=300),
                       frozenset({T}))
    p = GatePass("p1", T, NOW - timedelta(minutes=1), NOW + timedelta(minutes=9), right, (badge,), "J. P***s",
                 g.ScreeningResult.CLEAR, NOW - timedelta(hours=1), g.TerminalPolicy())
    return replace(p, **over)  # type: ignore[arg-type]


def request(**over: object) -> g.GateRequest:
    base = dict(request_id="r1", terminal=T, lane="in-3", direction="in", mode="commit",
                container=g.ContainerRead(CONTAINER, 0.97), plate=g.PlateRead("1-ABC-123", "BE", 0.95),
                badge=g.BadgeRead("alfapass", "ap 123455"), face=None, observed_at=NOW)
    return g.GateRequest(**(base | over))  # type: ignore[arg-type]


def offline(p: list[GatePass], req: g.GateRequest | None = None, uses: LocalUses = LocalUses(),
            limits: OfflineLimits = OfflineLimits(), refreshed: datetime | None = NOW) -> object:
    return decide_offline(req or request(), passes=p, uses=uses, limits=limits, store_refreshed_at=refreshed, now=NOW)


def test_a_valid_pass_allows_and_shows_the_ban_list_age() -> None:
    d = offline([a_pass()])
    assert d.decision.decision is g.Outcome.ALLOW and d.basis is Basis.PASS  # type: ignore[attr-defined]
    assert d.ban_list_age == timedelta(hours=1) and d.event == "release.verify.offline.allowed"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("change", "basis"), [
    ({"passes": []}, Basis.NO_PASS),
    ({"passes": [a_pass(expires_at=NOW)]}, Basis.NO_PASS),  # expired
    ({"passes": [a_pass(terminal="BEANR-K913")]}, Basis.NO_PASS),  # another terminal's
    ({"refreshed": NOW - timedelta(hours=1)}, Basis.STORE_STALE),
    ({"refreshed": None}, Basis.STORE_STALE),
])
def test_without_usable_knowledge_offline_reviews(change: dict[str, object], basis: Basis) -> None:
    d = offline(change.get("passes", [a_pass()]), refreshed=change.get("refreshed", NOW))  # type: ignore[arg-type]
    assert d.decision.decision is g.Outcome.REVIEW and d.basis is basis  # type: ignore[attr-defined]


def test_the_same_rules_deny_offline() -> None:
    p = a_pass()
    used = offline([p], uses=LocalUses(gated_in=frozenset({p.right.id})))
    assert used.decision.reasons == (g.Reason.ALREADY_USED,)  # type: ignore[attr-defined]
    other_badge = offline([a_pass()], request(badge=g.BadgeRead("alfapass", "AP-999993")))
    assert g.Reason.BADGE_UNKNOWN in other_badge.decision.reasons  # type: ignore[attr-defined]
    held = offline([a_pass(right=replace(a_pass().right, customs="red"))])
    assert held.decision.reasons == (g.Reason.CUSTOMS_HOLD,)  # type: ignore[attr-defined]
    banned = offline([a_pass(screening=g.ScreeningResult.BANNED, ban_list_as_of=NOW - timedelta(days=9))])
    assert banned.decision.reasons == (g.Reason.PERSON_BANNED,)  # a ban stays a ban, however old the list
    stale = offline([a_pass(ban_list_as_of=NOW - timedelta(days=2))])
    assert (stale.decision.decision, stale.decision.reasons) == (g.Outcome.REVIEW, (g.Reason.SCREENING_UNAVAILABLE,))  # type: ignore[attr-defined]
    strict = a_pass(ban_list_as_of=NOW - timedelta(days=2), policy=g.TerminalPolicy(screening_unavailable="deny"))
    assert offline([strict]).decision.decision is g.Outcome.DENY  # type: ignore[attr-defined]


def test_offline_a_badge_not_valid_yet_is_inactive_and_its_start_goes_in_the_pass() -> None:
    early = replace(a_pass().badges[0], valid_from=NOW + timedelta(hours=1))
    p = a_pass(badges=(early,))
    assert offline([p]).decision.reasons == (g.Reason.BADGE_INACTIVE,)  # type: ignore[attr-defined]
    assert GatePass.from_claims(p.to_claims("https://id.example"), issuer="https://id.example") == p
    older = p.to_claims("https://id.example")  # a pass issued before badges carried their start
    older["badges"] = [{k: v for k, v in b.items() if k != "valid_from"} for b in older["badges"]]
    assert GatePass.from_claims(older, issuer="https://id.example").badges[0].valid_from is None


def test_badge_digests_ignore_separators_and_case_only() -> None:
    assert badge_digest("alfapass", "AP-123455") == badge_digest("Alfapass", " ap 123455 ")
    assert badge_digest("alfapass", "AP-123455") != badge_digest("portpass", "AP-123455")
    assert badge_digest("alfapass", "AP-123455") != badge_digest("alfapass", "AP-123456")


def test_claims_round_trip_and_refuse_what_is_out_of_shape() -> None:
    p = a_pass()
    claims = p.to_claims("https://id.example")
    assert GatePass.from_claims(claims, issuer="https://id.example", terminal=T) == p
    for bad in (claims | {"iss": "https://evil.example"}, claims | {"aud": "quaygate-gate"},
                claims | {"sub": str(uuid.uuid4())}, claims | {"terminal": "BEANR-K913"},
                claims | {"right": claims["right"] | {"blocked": "no"}},
                claims | {"right": claims["right"] | {"state": "completed"}},
                claims | {"policy": claims["policy"] | {"screening_unavailable": "allow"}},
                {k: v for k, v in claims.items() if k != "badges"}):
        with pytest.raises(PassRefused):
            GatePass.from_claims(bad, issuer="https://id.example")
    with pytest.raises(PassRefused):
        GatePass.from_claims(claims, issuer="https://id.example", terminal="BEANR-K913")


@pytest.mark.parametrize(("direction", "state", "used_by", "want"), [
    ("in", "nominated", None, (Verdict.RECORD, None)),
    ("in", "gated_in", UsedBy.OFFLINE, (Verdict.FLAGGED, Flag.USED_OFFLINE_TWICE)),
    ("in", "gated_in", UsedBy.ONLINE, (Verdict.FLAGGED, Flag.USED_ONLINE_MEANWHILE)),
    ("in", "completed", UsedBy.ONLINE, (Verdict.FLAGGED, Flag.USED_ONLINE_MEANWHILE)),
    ("in", "revoked", None, (Verdict.FLAGGED, Flag.CHANGED_AFTER_PASS)),
    ("in", "expired", None, (Verdict.FLAGGED, Flag.CHANGED_AFTER_PASS)),
    ("out", "gated_in", None, (Verdict.RECORD, None)),
    ("out", "completed", UsedBy.OFFLINE, (Verdict.FLAGGED, Flag.USED_OFFLINE_TWICE)),
    ("out", "nominated", None, (Verdict.FLAGGED, Flag.CHANGED_AFTER_PASS)),
])
def test_the_double_use_rule(direction: str, state: str, used_by: UsedBy | None, want: tuple[object, ...]) -> None:
    assert judge_use(direction=g.Direction(direction), state=state, used_by=used_by) == want


def test_a_pass_covers_only_its_right_terminal_and_lifetime() -> None:
    p = a_pass()
    assert pass_covers(p, terminal=T, release_id=p.right.id, decided_at=NOW)
    assert not pass_covers(None, terminal=T, release_id=p.right.id, decided_at=NOW)
    assert not pass_covers(p, terminal="BEANR-K913", release_id=p.right.id, decided_at=NOW)
    assert not pass_covers(p, terminal=T, release_id=uuid.uuid4(), decided_at=NOW)
    assert not pass_covers(p, terminal=T, release_id=p.right.id, decided_at=NOW + timedelta(hours=1))
    # Issued before its right existed: not a pass we made (review 124); the same second is (iat is whole).
    made = p.issued_at
    assert pass_covers(p, terminal=T, release_id=p.right.id, decided_at=NOW, right_created_at=made)
    assert pass_covers(p, terminal=T, release_id=p.right.id, decided_at=NOW,
                       right_created_at=made + timedelta(milliseconds=999))
    assert not pass_covers(p, terminal=T, release_id=p.right.id, decided_at=NOW,
                           right_created_at=made + timedelta(seconds=1))


def test_offline_a_face_image_that_nobody_can_match_is_a_doubt_never_an_allow() -> None:
    from gate_adapters.runtime.offline import gate_request

    body = {"request_id": "r1", "terminal": T, "lane": "in-3", "direction": "in", "mode": "commit",
            "container": {"number": CONTAINER, "confidence": 0.97},
            "plate": {"text": "1-ABC-123", "country": "BE", "confidence": 0.95},
            "badge": {"scheme": "alfapass", "number": "ap 123455"}, "observed_at": NOW.isoformat()}
    assert offline([a_pass()], gate_request(body)).decision.decision is g.Outcome.ALLOW  # type: ignore[attr-defined]
    with_image = gate_request({**body, "face": {"image": "aGVsbG8="}})
    d = offline([a_pass()], with_image).decision  # type: ignore[attr-defined]
    assert (d.decision, d.reasons) == (g.Outcome.REVIEW, (g.Reason.FACE_REQUIRED,))


# ---- the adapter's clock cannot make old knowledge fresh -----------------------------------------------


def test_a_clock_set_back_before_the_last_refresh_reviews_never_allows() -> None:
    # NTP spoofed during an outage: the wall clock now reads 5 minutes before the store's last refresh.
    # A negative age is no evidence of freshness: the store is set aside, as a stale one is.
    d = offline([a_pass()], refreshed=NOW + timedelta(minutes=5))
    assert (d.decision.decision, d.basis) == (g.Outcome.REVIEW, Basis.STORE_STALE)  # type: ignore[attr-defined]
    assert d.store_age == timedelta(minutes=-5)  # type: ignore[attr-defined]  # shown as measured
    behind = decide_offline(request(), passes=[a_pass()], uses=LocalUses(), limits=OfflineLimits(),
                            store_refreshed_at=NOW + timedelta(seconds=1), now=NOW, since_refresh=timedelta(0))
    assert (behind.decision.decision, behind.basis, behind.store_age) == (
        g.Outcome.REVIEW, Basis.STORE_STALE, timedelta(seconds=-1))


@pytest.mark.parametrize(("refreshed", "since", "outcome", "basis", "age"), [
    # The wall clock was wound back to the refresh time; the process's monotonic clock counted 20 min.
    (NOW, timedelta(minutes=20), g.Outcome.REVIEW, Basis.STORE_STALE, timedelta(minutes=20)),
    # 12 min by the monotonic clock: the store is still young enough, but the pass (exp NOW + 9 min) is not.
    (NOW, timedelta(minutes=12), g.Outcome.REVIEW, Basis.NO_PASS, timedelta(minutes=12)),
    # The larger age counts either way: an old store stays old.
    (NOW - timedelta(minutes=20), timedelta(minutes=1), g.Outcome.REVIEW, Basis.STORE_STALE, timedelta(minutes=20)),
    # Both clocks agree on a young store: nothing changes for an honest clock.
    (NOW - timedelta(minutes=2), timedelta(minutes=2), g.Outcome.ALLOW, Basis.PASS, timedelta(minutes=2)),
])
def test_a_clock_wound_back_while_running_does_not_make_the_store_younger(
        refreshed: datetime, since: timedelta, outcome: g.Outcome, basis: Basis, age: timedelta) -> None:
    d = decide_offline(request(), passes=[a_pass()], uses=LocalUses(), limits=OfflineLimits(),
                       store_refreshed_at=refreshed, now=NOW, since_refresh=since)
    assert (d.decision.decision, d.basis, d.store_age) == (outcome, basis, age)


def test_the_reconcile_runs_the_same_offline_rules_on_the_reported_request_and_its_pass_alone() -> None:
    p = a_pass()
    assert pass_refuses(p, request(), decided_at=NOW, state="nominated") == ()
    lies = {
        "badge_unknown": request(badge=g.BadgeRead("alfapass", "AP-999993")),  # another person's badge
        "plate_mismatch": request(plate=g.PlateRead("9-ZZZ-999", "BE", 0.95)),
    }
    for reason, lie in lies.items():
        assert reason in pass_refuses(p, lie, decided_at=NOW, state="nominated")
    assert pass_refuses(p, request(badge=None), decided_at=NOW, state="nominated")  # no badge: no driver
    assert pass_refuses(p, request(container=g.ContainerRead("OCLU0000011", 0.97)), decided_at=NOW,
                        state="nominated")  # another container: this pass says nothing of it
    banned = a_pass(screening=g.ScreeningResult.BANNED)
    assert pass_refuses(banned, request(), decided_at=NOW, state="nominated") == (g.Reason.PERSON_BANNED.value,)
    held = a_pass(right=replace(p.right, customs="red"))
    assert pass_refuses(held, request(), decided_at=NOW, state="nominated") == (g.Reason.CUSTOMS_HOLD.value,)
    # Decided a moment before the pass's iat (clock skew within pass_covers' leeway): judged at iat.
    assert pass_refuses(p, request(), decided_at=p.issued_at - timedelta(seconds=3), state="nominated") == ()
    # The adapter's own limits (store age, ban-list age) are its own, and could only have made it stricter.
    assert pass_refuses(a_pass(ban_list_as_of=NOW - timedelta(days=2)), request(), decided_at=NOW,
                        state="nominated") == ()


def test_the_reconcile_knows_the_adapters_offline_gate_in_before_its_gate_out() -> None:
    p = a_pass()  # the right was nominated when the pass was issued
    out = request(direction="out")
    assert pass_refuses(p, out, decided_at=NOW, state="gated_in") == ()  # gated in offline by an earlier report
    assert pass_refuses(p, out, decided_at=NOW, state="completed") == ()  # used twice: judge_use says so
    assert pass_refuses(p, out, decided_at=NOW, state="nominated")  # never in: no gate-out
    assert pass_refuses(p, request(), decided_at=NOW, state="gated_in") == ()  # a gate-in used twice: judge_use's


def test_the_reconcile_refuses_an_override_of_another_persons_badge_whatever_the_pass_said() -> None:
    """Review 124, finding 1: offline another person's badge reads badge_unknown (only the nominated driver's
    badges are in the pass), which a desk may set aside; the service, knowing the badge, says what online
    would: driver_mismatch, with the badge office's word and the holder's suspension or ban."""
    p = a_pass()
    other = g.BadgeFacts(found=True, status="active", person_id=uuid.uuid4(), valid_until=NOW + timedelta(days=9),
                         activated_terminals=frozenset({T}))
    assert offline([p], request(badge=g.BadgeRead("alfapass", "AP-543214"))).decision.reasons == (  # type: ignore[attr-defined]
        g.Reason.BADGE_UNKNOWN, g.Reason.SCREENING_UNAVAILABLE)
    assert holder_refusals(p, other, g.ScreeningResult.CLEAR, NOW) == ("driver_mismatch",)
    assert holder_refusals(p, replace(other, status="blocked", holder_status="suspended"), g.ScreeningResult.BANNED,
                           NOW) == ("badge_blocked", "driver_mismatch", "person_suspended", "person_banned")
    # The pass's own driver (a change to him is changed_since_pass's), no badge, or a badge nobody holds: nothing.
    assert holder_refusals(p, replace(other, person_id=DRIVER), g.ScreeningResult.BANNED, NOW) == ()
    assert holder_refusals(p, None, None, NOW) == holder_refusals(p, g.BadgeFacts.not_found(), None, NOW) == ()


def test_the_holds_since_the_pass_are_told_even_lifted() -> None:
    """Review of the lights, finding 2: a light made red or scan, or a block or unblock, after the pass was
    issued (in its second included: ``iat`` is whole seconds), whatever the right says now; a green, or a
    hold from before the pass (which the pass carries), says nothing."""
    p = a_pass()
    before, after = p.issued_at - timedelta(seconds=1), p.issued_at + timedelta(seconds=1)
    assert held_since_pass(p, [("release.light.customs", {"status": "scan"}, before),
                               ("release.blocked", {"reason": "x"}, before),
                               ("release.light.customs", {"status": "green"}, after),
                               ("release.nominated", {}, after)]) == ()
    assert held_since_pass(p, [("release.light.customs", {"status": "scan"}, p.issued_at),
                               ("release.light.customs", {"status": "green"}, after),
                               ("release.light.terminal", {"status": "red"}, after),
                               ("release.unblocked", {"reason": "paid"}, after)]) == ("lights_changed",
                                                                                    "blocked_meanwhile")
    assert held_since_pass(p, [("release.blocked", {"reason": "unpaid"}, after)]) == ("blocked_meanwhile",)

"""The port-ban core: feed parsing, the sequence and age rules, screening (identity/domain/bans.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from identity.domain import bans as b

from .ban_register import REGISTER, ban, changes, national_number, snapshot

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def _refusal(fn) -> b.FeedRefused:  # type: ignore[no-untyped-def]
    with pytest.raises(b.FeedRefused) as info:
        fn()
    return info.value


def test_national_numbers_have_a_mod_97_check() -> None:
    assert b.national_number_valid(national_number(12))
    n = national_number(12)
    assert not b.national_number_valid(n[:9] + f"{(int(n[9:]) + 1) % 100:02d}")
    assert not b.national_number_valid("8507310013")
    assert not b.national_number_valid("8507310013x")
    # born from 2000 on: the check is taken over "2" + the first nine digits
    body = "010203123"
    assert b.national_number_valid(body + f"{97 - int('2' + body) % 97:02d}")


def test_a_snapshot_parses() -> None:
    feed = b.parse_feed(snapshot(3, NOW, [ban(national_number(1), "R-1", start=NOW - DAY),
                                          ban(national_number(2), "R-2", start=NOW, scope=["BEZEE", "BEANR"])]))
    assert feed.kind is b.FeedKind.SNAPSHOT and feed.sequence == 3 and feed.register == REGISTER
    assert feed.bans[0].scope is None and feed.bans[1].scope == ("BEANR", "BEZEE")


@pytest.mark.parametrize("mutate, field", [
    (lambda f: f.pop("register"), "register"),
    (lambda f: f.update(kind="delta"), "kind"),
    (lambda f: f.update(sequence=0), "sequence"),
    (lambda f: f.update(sequence=True), "sequence"),
    (lambda f: f.update(issued_at="yesterday"), "issued_at"),
    (lambda f: f.update(issued_at="2026-11-21T12:00:00"), "issued_at"),
    (lambda f: f.update(bans={}), "bans"),
    (lambda f: f["bans"][0].update(national_number="12345678901"), "national_number"),
    (lambda f: f["bans"][0].update(scope=[]), "scope"),
    (lambda f: f["bans"][0].update(scope=["antwerp"]), "scope"),
    (lambda f: f["bans"][0].update(scope="some"), "scope"),
    (lambda f: f["bans"][0].update(until=f["bans"][0]["from"]), "after"),
    (lambda f: f["bans"][0].update(reference=""), "reference"),
    (lambda f: f["bans"].append(dict(f["bans"][0])), "twice"),
    (lambda f: f.update(added=[]), "not 'added"),
    (lambda f: f["bans"].append(3), "JSON object"),
    (lambda f: f.update(issued_at=1732190400), "issued_at"),
])
def test_malformed_snapshots_are_refused(mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    feed = snapshot(1, NOW, [ban(national_number(1), "R-1", start=NOW)])
    mutate(feed)
    refused = _refusal(lambda: b.parse_feed(feed))
    assert refused.code is b.FeedRefusal.MALFORMED and field in refused.message
    assert national_number(1) not in refused.message  # never the number itself


def test_a_ban_lasts_at_most_twenty_years() -> None:
    start = datetime(2024, 2, 29, tzinfo=UTC)
    ok = ban(national_number(1), "R-1", start=start)
    ok["until"] = b.add_years(start, 20).isoformat()
    assert b.parse_feed(snapshot(1, NOW, [ok])).bans[0].ends_at == datetime(2044, 2, 29, tzinfo=UTC)
    too_long = dict(ok, until=(b.add_years(start, 20) + timedelta(seconds=1)).isoformat())
    assert "20 years" in _refusal(lambda: b.parse_feed(snapshot(1, NOW, [too_long]))).message
    assert b.add_years(datetime(2023, 2, 28, tzinfo=UTC), 1) == datetime(2024, 2, 28, tzinfo=UTC)
    assert b.add_years(datetime(2024, 2, 29, tzinfo=UTC), 1) == datetime(2025, 3, 1, tzinfo=UTC)


def test_change_sets_parse_and_reject_contradictions() -> None:
    feed = b.parse_feed(changes(4, NOW, [ban(national_number(1), "R-9", start=NOW)], ["R-1"]))
    assert feed.kind is b.FeedKind.CHANGES and feed.lifted == ("R-1",) and feed.added[0].reference == "R-9"
    assert "both added and lifted" in _refusal(lambda: b.parse_feed(
        changes(4, NOW, [ban(national_number(1), "R-1", start=NOW)], ["R-1"]))).message
    assert "twice" in _refusal(lambda: b.parse_feed(changes(4, NOW, [], ["R-1", "R-1"]))).message
    assert "lifted" in _refusal(lambda: b.parse_feed(changes(4, NOW, [], [7]))).message  # type: ignore[list-item]
    bad = changes(4, NOW)
    bad["bans"] = []
    assert "not 'bans'" in _refusal(lambda: b.parse_feed(bad)).message
    assert _refusal(lambda: b.parse_feed([1])).code is b.FeedRefusal.MALFORMED


def _state(seq: int, digest: str = "d") -> b.FeedState:
    return b.FeedState(REGISTER, seq, NOW - DAY / 2, NOW - DAY / 2, digest)


def _verdict(feed: dict, state: b.FeedState | None, digest: str = "new") -> b.Verdict:  # type: ignore[type-arg]
    return b.sequence_verdict(b.parse_feed(feed), digest, state, now=NOW, max_feed_age=DAY)


def test_sequence_rules() -> None:
    snap = snapshot(5, NOW, [])
    assert _verdict(snap, None) is b.Verdict.APPLY
    assert _verdict(snap, _state(4)) is b.Verdict.APPLY
    assert _verdict(snapshot(9, NOW, []), _state(4)) is b.Verdict.APPLY  # a snapshot may jump ahead
    assert _verdict(snap, _state(5, "same"), "same") is b.Verdict.ALREADY_LOADED
    assert _refusal(lambda: _verdict(snap, _state(5))).code is b.FeedRefusal.REPLAYED
    assert _refusal(lambda: _verdict(snap, _state(6))).code is b.FeedRefusal.REPLAYED
    assert _verdict(changes(6, NOW), _state(5)) is b.Verdict.APPLY
    assert _refusal(lambda: _verdict(changes(7, NOW), _state(5))).code is b.FeedRefusal.OUT_OF_ORDER
    assert _refusal(lambda: _verdict(changes(1, NOW), None)).code is b.FeedRefusal.OUT_OF_ORDER
    assert _refusal(lambda: _verdict(changes(5, NOW), _state(5))).code is b.FeedRefusal.REPLAYED
    assert _refusal(lambda: _verdict(changes(3, NOW), _state(5))).code is b.FeedRefusal.REPLAYED
    other = snapshot(9, NOW, [], register="NL-OTHER")
    assert _refusal(lambda: _verdict(other, _state(5))).code is b.FeedRefusal.WRONG_REGISTER


def test_stale_and_future_feeds_are_refused() -> None:
    assert _refusal(lambda: _verdict(snapshot(5, NOW - DAY - timedelta(seconds=1), []), None)).code \
        is b.FeedRefusal.STALE
    assert _verdict(snapshot(5, NOW - DAY, []), None) is b.Verdict.APPLY
    assert _refusal(lambda: _verdict(snapshot(5, NOW + timedelta(hours=1), []), None)).code is b.FeedRefusal.MALFORMED
    assert _verdict(snapshot(5, NOW + timedelta(minutes=4), []), None) is b.Verdict.APPLY


def _stored(reference: str, *, start: datetime = NOW - DAY, end: datetime = NOW + DAY,
            scope: tuple[str, ...] | None = None) -> b.StoredBan:
    return b.StoredBan(scope, start, end, reference)


def test_screening_clear_banned_unavailable_with_list_age() -> None:
    fresh, old = NOW - timedelta(hours=2), NOW - DAY - timedelta(seconds=1)
    clear = b.screen([], port="BEANR", now=NOW, list_issued_at=fresh, max_list_age=DAY)
    assert clear == b.BanCheck(b.ScreeningStatus.CLEAR, 7200.0)
    banned = b.screen([_stored("R-1")], port="BEANR", now=NOW, list_issued_at=fresh, max_list_age=DAY)
    assert banned.status is b.ScreeningStatus.BANNED and banned.references == ("R-1",)
    assert b.screen([], port="BEANR", now=NOW, list_issued_at=None, max_list_age=DAY) == \
        b.BanCheck(b.ScreeningStatus.UNAVAILABLE, None)
    stale = b.screen([], port="BEANR", now=NOW, list_issued_at=old, max_list_age=DAY)
    assert stale.status is b.ScreeningStatus.UNAVAILABLE and stale.list_age_seconds == DAY.total_seconds() + 1
    # a stale list never clears anyone, but a ban it holds still counts
    assert b.screen([_stored("R-1")], port="BEANR", now=NOW, list_issued_at=old, max_list_age=DAY).status \
        is b.ScreeningStatus.BANNED


def test_an_unidentified_person_is_never_clear() -> None:
    """No national number on file: the register cannot name him, so a fresh list still says
    unavailable (marked ``unidentified``), never clear."""
    fresh = NOW - timedelta(hours=2)
    assert b.screen([], port=None, now=NOW, list_issued_at=fresh, max_list_age=DAY, identified=False) == \
        b.BanCheck(b.ScreeningStatus.UNAVAILABLE, 7200.0, unidentified=True)
    assert b.screen([], port=None, now=NOW, list_issued_at=fresh, max_list_age=DAY).status is b.ScreeningStatus.CLEAR


def test_screening_respects_dates_and_listed_ports() -> None:
    fresh = NOW - timedelta(hours=1)

    def status(ban: b.StoredBan, port: str | None) -> b.ScreeningStatus:
        return b.screen([ban], port=port, now=NOW, list_issued_at=fresh, max_list_age=DAY).status

    assert status(_stored("R", start=NOW + timedelta(seconds=1)), "BEANR") is b.ScreeningStatus.CLEAR
    assert status(_stored("R", end=NOW), "BEANR") is b.ScreeningStatus.CLEAR
    assert status(_stored("R", start=NOW), "BEANR") is b.ScreeningStatus.BANNED
    zeebrugge_only = _stored("R", scope=("BEZEE",))
    assert status(zeebrugge_only, "BEANR") is b.ScreeningStatus.CLEAR
    assert status(zeebrugge_only, "BEZEE") is b.ScreeningStatus.BANNED
    assert status(zeebrugge_only, None) is b.ScreeningStatus.BANNED  # badge issue: any port counts


def test_scope_encoding_and_terminal_port() -> None:
    assert b.decode_scope(b.encode_scope(None)) is None
    assert b.decode_scope(b.encode_scope(("BEANR", "BEZEE"))) == ("BEANR", "BEZEE")
    assert b.port_of_terminal("beanr-k1700") == "BEANR"
    parsed = b.parse_feed(snapshot(1, NOW, [ban(national_number(1), "R-1", start=NOW - DAY)])).bans[0]
    assert parsed.in_effect(NOW) and parsed.covers("BEANR") and not parsed.in_effect(NOW - 2 * DAY)


@pytest.mark.parametrize(("start", "until"), [
    ("9990-01-01T00:00:00Z", "9999-12-31T23:59:59Z"),  # add_years(9990, 20): ValueError
    ("2026-01-01T00:00:00Z", "9999-12-31T23:59:59-05:00"),  # no UTC time: OverflowError
    ("0001-01-01T00:00:00+01:00", "2026-01-01T00:00:00Z"),  # no UTC time: OverflowError
    ("1899-12-31T00:00:00Z", "1900-06-01T00:00:00Z"),
    ("8999-01-01T00:00:00Z", "9000-01-01T00:00:01Z"),
], ids=["from_9990", "until_past_9999_in_utc", "from_before_year_1_in_utc", "from_1899", "until_past_9000"])
def test_a_ban_time_outside_1900_to_9000_is_malformed(start: str, until: str) -> None:
    one = {**ban(national_number(1), "R-1", start=NOW), "from": start, "until": until}
    refused = _refusal(lambda: b.parse_feed(snapshot(1, NOW, [one])))
    assert refused.code is b.FeedRefusal.MALFORMED and "between 1900-01-01 and 9000-01-01" in refused.message
    issued = _refusal(lambda: b.parse_feed({**snapshot(1, NOW, []), "issued_at": "9999-12-31T23:59:59-05:00"}))
    assert issued.code is b.FeedRefusal.MALFORMED
    b.parse_feed(snapshot(1, NOW, [{**one, "from": "8990-01-01T00:00:00Z", "until": "9000-01-01T00:00:00Z"}]))

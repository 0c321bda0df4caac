"""Review 147, finding 2: a port ban the service already holds when it issues a gate pass, starting
within the pass's life. Screened at ``iat`` alone the pass said clear for its whole life, and offline the
lane let the driver in after his ban had started. The pass now ends where the ban starts (its ``exp``
capped): clear and useful until then, no pass past it (offline: review, no pass, which no desk sets
aside); a ban starting after the pass's life changes nothing."""
# ruff: noqa: F811 - ``gate`` and ``adapters`` are fixtures, imported here and requested by name

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from quaygate.schema import ban_feed_state, persons, port_bans
from release_service.domain.gate import ScreeningResult
from release_service.domain.gate_pass import pass_life
from release_service.domain.screening import BanWindow, next_ban_start

from .test_gate_offline import Adapter, adapters, passes, payload  # noqa: F401
from .test_gate_verify import Gate, gate  # noqa: F401


def _now() -> datetime:
    return datetime.now(UTC)


def _ban_ahead(gate: Gate, start: datetime, *, scope: str = "all") -> None:
    """The test driver linked to a national number, a ban on him starting at ``start`` loaded now."""
    with gate.engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == gate.p.driver).values(national_id_hash="u" * 64))
        conn.execute(port_bans.insert().values(register="BE-NBR", reference="B-AHEAD", subject_hash="u" * 64,
                                               scope=scope, banned_from=start, banned_until=start + timedelta(days=30),
                                               feed_sequence=1))
        conn.execute(ban_feed_state.insert().values(register="BE-NBR", sequence=1, issued_at=_now(),
                                                    loaded_at=_now(), digest="d" * 64))


def _ttl(gate: Gate) -> int:
    """The passes' life here, as a pass fetched with no ban on its driver says."""
    gate.pickable(9)
    claims = payload(passes(gate).json()["passes"][0])
    return int(claims["exp"]) - int(claims["iat"])


def test_a_ban_starting_within_the_pass_ends_the_pass_where_it_starts(gate: Gate) -> None:
    ttl = _ttl(gate)
    start = _now() + timedelta(seconds=ttl // 3)
    _ban_ahead(gate, start)
    body = passes(gate).json()
    assert body["passes"]
    for token in body["passes"]:
        claims = payload(token)
        assert claims["screening"]["result"] == "clear"  # not banned yet: online he is let in now
        assert claims["iat"] < claims["exp"] <= start.timestamp()  # no pass for him once it started
        assert claims["exp"] > start.timestamp() - 1


def test_a_ban_starting_after_the_pass_expires_changes_nothing(gate: Gate) -> None:
    ttl = _ttl(gate)
    _ban_ahead(gate, _now() + timedelta(seconds=ttl + 120))
    for token in passes(gate).json()["passes"]:
        claims = payload(token)
        assert claims["screening"]["result"] == "clear" and claims["exp"] - claims["iat"] == ttl


def test_a_ban_at_another_port_changes_nothing(gate: Gate) -> None:
    ttl = _ttl(gate)
    _ban_ahead(gate, _now() + timedelta(seconds=ttl // 3), scope="NLRTM")
    for token in passes(gate).json()["passes"]:
        claims = payload(token)
        assert claims["screening"]["result"] == "clear" and claims["exp"] - claims["iat"] == ttl


def test_offline_the_lane_refuses_him_once_the_ban_started(gate: Gate, adapters: list[Adapter]) -> None:
    """The reviewer's case: passes fetched at t, a ban from t + 2 min loaded; offline at t + 1 min he is
    let in, at t + 5 min (the ban in force, the pass's life not over) he is not."""
    ttl = _ttl(gate)
    assert ttl > 300  # the default (600 s): the pass outlives the ban's start
    gate.pickable(1)
    gate.pickable(2)
    a = adapters[0]
    wall, _ = a.clocked()
    t = wall[0]
    _ban_ahead(gate, _now() + timedelta(minutes=2))
    a.offline.refresh()
    a.down()
    wall[0] = t + timedelta(minutes=1)
    before = a.truck(1)
    assert (before["decision"], before["offline"]["basis"]) == ("allow", "pass"), before
    wall[0] = t + timedelta(minutes=5)
    after = a.truck(2)
    assert after["decision"] != "allow" and after["committed"] is False, after
    assert after["offline"]["basis"] == "no_pass"  # the pass ended at the ban's start: no desk sets it aside


def test_offline_a_ban_after_the_passes_life_lets_him_in_till_they_end(gate: Gate, adapters: list[Adapter]
                                                                       ) -> None:
    ttl = _ttl(gate)
    gate.pickable(1)
    a = adapters[0]
    wall, _ = a.clocked()
    t = wall[0]
    _ban_ahead(gate, _now() + timedelta(seconds=ttl + 120))
    a.offline.refresh()
    a.down()
    wall[0] = t + timedelta(seconds=ttl - 60)
    got = a.truck(1)
    assert (got["decision"], got["offline"]["basis"]) == ("allow", "pass"), got


# -- the rules, pure ---------------------------------------------------------------------------------

T = datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC)
EXP = T + timedelta(minutes=10)
CLEAR, BANNED, UNAVAILABLE = ScreeningResult.CLEAR, ScreeningResult.BANNED, ScreeningResult.UNAVAILABLE


def test_a_pass_ends_at_the_start_of_a_ban_within_its_life_rounded_down_to_the_second() -> None:
    start = T + timedelta(minutes=2, microseconds=700_000)
    assert pass_life(CLEAR, issued_at=T, expires_at=EXP, next_ban=start) == (T + timedelta(minutes=2), CLEAR)
    # A stale list's "unavailable" (a desk may set it aside offline) ends there too: online he is banned then.
    assert pass_life(UNAVAILABLE, issued_at=T, expires_at=EXP, next_ban=start) == (
        T + timedelta(minutes=2), UNAVAILABLE)


def test_a_ban_within_the_passes_first_second_screens_it_banned() -> None:
    assert pass_life(CLEAR, issued_at=T, expires_at=EXP, next_ban=T + timedelta(milliseconds=300)) == (EXP, BANNED)


def test_a_ban_from_the_passes_end_on_or_none_changes_nothing() -> None:
    for ahead in (None, EXP, EXP + timedelta(seconds=1), EXP + timedelta(days=1)):
        assert pass_life(CLEAR, issued_at=T, expires_at=EXP, next_ban=ahead) == (EXP, CLEAR)
    assert pass_life(BANNED, issued_at=T, expires_at=EXP, next_ban=T + timedelta(minutes=2)) == (EXP, BANNED)


def test_the_next_ban_is_the_earliest_ahead_at_the_terminals_port() -> None:
    def w(scope: str, start: timedelta, days: int = 30) -> BanWindow:
        return BanWindow(scope, T + start, T + start + timedelta(days=days))

    windows = [w("all", -timedelta(days=40)),  # ended
               w("all", -timedelta(days=1)),  # in force: the screening's
               w("NLRTM", timedelta(minutes=1)),  # another port
               w("BEANR,NLRTM", timedelta(minutes=5)), w("all", timedelta(minutes=3)),
               BanWindow("all", T + timedelta(minutes=2), T + timedelta(minutes=2))]  # empty
    assert next_ban_start(windows, terminal="BEANR-K1700", after=T) == T + timedelta(minutes=3)
    assert next_ban_start(windows, terminal="NLRTM-ECT", after=T) == T + timedelta(minutes=1)
    assert next_ban_start(windows, terminal="K1700", after=T) == T + timedelta(minutes=1)  # port unread: every ban
    assert next_ban_start(windows[:3], terminal="BEANR-K1700", after=T) is None
    naive = BanWindow("all", (T + timedelta(minutes=4)).replace(tzinfo=None),
                      (T + timedelta(days=1)).replace(tzinfo=None))
    assert next_ban_start([naive], terminal="BEANR-K1700", after=T) == T + timedelta(minutes=4)  # SQLite's naive UTC

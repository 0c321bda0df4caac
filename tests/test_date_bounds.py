"""Dates and times at every input edge, read as a criminal and as a fuzzer (review of dates and times).

Each edge was sent year 1 and year 9999 (and the last moment of 9999 with an offset that leaves the
calendar once in UTC), times without an offset, offsets of +14:00, -12:00 and +23:59, far-future
expiries, an end before its start, leap seconds and 24:00, fractional seconds with many digits, Unix
times as numbers and as digit strings, NaN and infinity. What the service did with them before these
mends is said per test: a 500 (an OverflowError or a ValueError from ``add_years`` reaching the edge),
a misnamed refusal, or a stored absurdity (a badge or a right "valid" in the year 8999, a gate decision
observed in year 1, a number read as a Unix time in milliseconds). Real app, real tokens, SQLite and
real PostgreSQL through the fixtures; the CLI through ``quaygate.cli.main``.
"""
# ruff: noqa: F811 - ``gate`` is test_gate_verify's fixture, imported here and requested by name

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from joserfc import jwt

from gate_adapters.runtime.client import StaticToken, VerifyClient
from gate_adapters.simulate import drive, load_script
from identity.domain.badges import Scheme, with_check
from identity.oidc.server import CLIENT_AUTH_FAILED
from quaygate.cli import main
from quaygate.db import make_engine
from quaygate.schema import audit_log, badges, gate_decisions, gate_offline_decisions, persons, port_bans, releases

from .ban_register import Register, ban, national_number, snapshot
from .factories import TERMINAL, container
from .test_gate_offline import _post, _report
from .test_gate_verify import Gate, gate  # noqa: F401
from .test_identity_grants_support import Lifecycle, make_lifecycle
from .test_identity_ratelimit import line_client
from .test_identity_support import TOKEN_ENDPOINT, public_jwks, rsa_key
from .test_release_api import assert_problem

SCRIPTS = Path(__file__).parent / "fixtures" / "gate"


def _now() -> datetime:
    return datetime.now(UTC)


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _raw(http: Any, method: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    """A body sent as is: NaN, huge integers and all (the test client's ``json=`` is not a fuzzer)."""
    return http.request(method, path, content=json.dumps(body, allow_nan=True),
                        headers={**headers, "content-type": "application/json"})


def _fields(r: Any) -> set[tuple[str, ...]]:
    return {tuple(e["loc"]) for e in r.json().get("errors") or ()}


# ---- the gate verify's observed_at -------------------------------------------------------------------

# Each was taken (200), decided and recorded as the decision's observed_at: year 1, year 9999, the year
# 8999, a gate clock a quarter of an hour ahead, a truck seen two days ago, and numbers read as Unix time
# (253402300800, year 9999 in seconds, read as milliseconds: 1978-01-11).
FAR_OBSERVED: dict[str, tuple[Callable[[], Any], str]] = {
    "year_1": (lambda: "0001-01-01T00:00:00Z", "invalid_request"),
    "year_9999": (lambda: "9999-12-31T23:59:59.999999Z", "invalid_request"),
    "year_1899": (lambda: "1899-12-31T00:00:00Z", "invalid_request"),
    "year_8999": (lambda: "8999-06-01T00:00:00Z", "invalid_observed_at"),
    "eleven_minutes_ahead": (lambda: (_now() + timedelta(minutes=11)).isoformat(), "invalid_observed_at"),
    "twenty_five_hours_ago": (lambda: (_now() - timedelta(hours=25)).isoformat(), "invalid_observed_at"),
    "unix_seconds_of_9999": (lambda: 253402300800, "invalid_request"),
    "unix_seconds_now": (lambda: int(time.time()), "invalid_request"),
    "unix_seconds_as_text": (lambda: str(int(time.time())), "invalid_request"),
}


@pytest.mark.parametrize("case", list(FAR_OBSERVED))
def test_a_verify_observed_far_from_now_is_refused_and_uses_nothing(gate: Gate, case: str) -> None:
    value, code = FAR_OBSERVED[case]
    rid = gate.pickable(1)
    before = _count(gate.engine, gate_decisions)
    body = gate.body(1, mode="commit", observed_at=value())
    r = _raw(gate.http, "POST", "/gate/v1/verify", body, {"Authorization": f"Bearer {gate.gate_token}"})
    assert_problem(r, 422, code)
    if code == "invalid_observed_at":
        assert r.json()["field"] == "observed_at"
    else:
        assert _fields(r) == {("body", "observed_at")}
    assert _count(gate.engine, gate_decisions) == before and gate.state(rid) == "nominated"  # nothing used
    # The same request with a time the gate can have seen is decided as ever.
    ok = gate.verify({**body, "observed_at": _now().isoformat()})
    assert ok.status_code == 200 and ok.json()["decision"] == "allow", ok.text


def test_a_verify_within_its_bounds_is_decided_whatever_the_offset(gate: Gate) -> None:
    """RFC 3339 offsets run to +-23:59: any of them names a moment, kept in UTC. Digits past the
    microsecond are dropped; a leap second and 24:00 are not times the parser knows (422)."""
    gate.pickable(1)
    now = _now().replace(microsecond=0)
    for at in (now + timedelta(minutes=9), now - timedelta(hours=23)):
        r = gate.verify(gate.body(1, observed_at=at.isoformat()))
        assert r.status_code == 200, r.text
    for hours, minutes in ((14, 0), (-12, 0), (23, 59), (-23, -59)):
        at = now.astimezone(timezone(timedelta(hours=hours, minutes=minutes)))
        r = gate.verify(gate.body(1, observed_at=at.isoformat()))
        assert r.status_code == 200, r.text
    r = gate.verify(gate.body(1, observed_at=now.strftime("%Y-%m-%dT%H:%M:%S.1234567890123Z")))
    assert r.status_code == 200, r.text
    with gate.engine.connect() as conn:
        seen = set(conn.execute(sa.select(gate_decisions.c.observed_at)).scalars())
    assert now in seen and now.replace(microsecond=123456) in seen
    for bad in (now.strftime("%Y-%m-%dT23:59:60Z"), now.strftime("%Y-%m-%dT24:00:00Z"),
                now.replace(tzinfo=None).isoformat()):
        assert_problem(gate.verify(gate.body(1, observed_at=bad)), 422, "invalid_request")


# ---- offline reports ----------------------------------------------------------------------------------


def test_an_offline_report_takes_a_late_time_and_refuses_what_is_no_time(gate: Gate) -> None:
    """A report may come days late (an adapter offline for a weekend): it is never held to now, and an
    allow decided outside its pass's life is flagged, not refused, so nothing the barrier did is lost.
    But year 9999 and a Unix time were recorded as ``decided_at``, and a ban list "age" past the column's
    range was a 422 that named no field."""
    rid = gate.pickable(1)
    days_ago = (_now() - timedelta(days=3)).isoformat()
    late = _post(gate, _report(gate, 1, token=None, decided_at=days_ago))  # an allow without a pass
    assert late.status_code == 200 and (late.json()["verdict"], late.json()["flag"]) == ("flagged", "pass_invalid")
    assert gate.state(rid) == "nominated"
    before = _count(gate.engine, gate_offline_decisions)
    auth = {"Authorization": f"Bearer {gate.gate_token}"}
    for field, value in (("decided_at", "9999-12-31T23:59:59Z"), ("decided_at", int(time.time())),
                         ("ban_list_age_seconds", 2**31)):
        report = _report(gate, 1, token=None, decision="review", **{field: value})
        r = _raw(gate.http, "POST", "/gate/v1/offline-decisions", report, auth)
        assert_problem(r, 422, "invalid_request")
        assert _fields(r) == {("body", field)}, r.text
    report = _report(gate, 1, token=None, decision="review")
    report["request"]["observed_at"] = "0001-01-01T00:00:00Z"
    r = _raw(gate.http, "POST", "/gate/v1/offline-decisions", report, auth)
    assert_problem(r, 422, "invalid_request")
    assert _fields(r) == {("body", "request", "observed_at")}
    assert _count(gate.engine, gate_offline_decisions) == before


# ---- release rights: validity windows, slots -------------------------------------------------------------


def _issue(gate: Gate, n: int, valid_from: Any, valid_until: Any) -> Any:
    body = {"container_number": container(n), "bill_of_lading": f"BL-{n}", "vessel_call": "VC-1",
            "terminal": TERMINAL, "release_to_organisation_id": str(gate.p.haul.organisation_id),
            "valid_from": valid_from, "valid_until": valid_until}
    return _raw(gate.http, "POST", "/api/v1/releases", body, gate.as_("line"))


def test_a_right_starts_at_most_ninety_days_ahead(gate: Gate) -> None:
    """A right valid from 8999 to 8999 (two months) was issued: no line releases a container for the
    year 8999, and it held the container's one live right for its vessel call."""
    now = _now()
    before = _count(gate.engine, releases)
    ahead = ((now + timedelta(days=91)).isoformat(), (now + timedelta(days=100)).isoformat())
    for n, (start, end) in enumerate([("8999-01-01T00:00:00Z", "8999-03-01T00:00:00Z"), ahead]):
        r = _issue(gate, 40 + n, start, end)
        assert_problem(r, 422, "invalid_validity_window")
        assert r.json()["field"] == "valid_from" and "90 days" in r.json()["detail"]
    assert _count(gate.engine, releases) == before
    ok = _issue(gate, 42, (now + timedelta(days=89)).isoformat(), (now + timedelta(days=100)).isoformat())
    assert ok.status_code == 201, ok.text
    # An update is held to the same window.
    rid = ok.json()["release"]["id"]
    r = _raw(gate.http, "PATCH", f"/api/v1/releases/{rid}", {"valid_from": (now + timedelta(days=95)).isoformat()},
             gate.as_("line"))
    assert_problem(r, 422, "invalid_validity_window")
    kept = gate.http.get(f"/api/v1/releases/{rid}", headers=gate.as_("line")).json()["valid_from"]
    assert datetime.fromisoformat(kept) == datetime.fromisoformat(ok.json()["release"]["valid_from"])


def test_a_batch_refuses_a_right_starting_in_8999_alone(gate: Gate) -> None:
    now = _now()

    def item(n: int, start: datetime | str) -> dict[str, Any]:
        return {"container_number": container(n), "bill_of_lading": f"BL-{n}", "vessel_call": "VC-1",
                "terminal": TERMINAL, "release_to_organisation_id": str(gate.p.fwd.organisation_id),
                "valid_from": start if isinstance(start, str) else start.isoformat(),
                "valid_until": (now + timedelta(days=3)).isoformat() if isinstance(start, datetime)
                else "8999-02-01T00:00:00Z"}

    r = _raw(gate.http, "POST", "/api/v1/releases:batch",
             {"releases": [item(50, now), item(51, "8999-01-01T00:00:00Z"), item(52, now)]}, gate.as_("line"))
    assert r.status_code == 200, r.text
    assert (r.json()["created"], r.json()["refused"]) == (2, 1)
    refused = r.json()["items"][1]
    assert refused["error"]["code"] == "invalid_validity_window" and refused["error"]["field"] == "valid_from"


def test_a_time_is_a_date_time_string_never_a_unix_time(gate: Gate) -> None:
    """A number, or a string of digits, was taken as Unix time (seconds, or milliseconds past 2e10):
    the time the right ends silently became another. Refused, naming the field; a batch refuses it
    whole, as any field of the wrong shape."""
    in_two_days = int((_now() + timedelta(days=2)).timestamp())
    start = (_now() - timedelta(hours=1)).isoformat()
    for value in (in_two_days, str(in_two_days)):
        r = _issue(gate, 60, start, value)
        assert_problem(r, 422, "invalid_request")
        assert _fields(r) == {("body", "valid_until")}
    item = {"container_number": container(61), "bill_of_lading": "BL", "vessel_call": "VC-1", "terminal": TERMINAL,
            "release_to_organisation_id": str(gate.p.fwd.organisation_id), "valid_from": start,
            "valid_until": in_two_days}
    r = _raw(gate.http, "POST", "/api/v1/releases:batch", {"releases": [item]}, gate.as_("line"))
    assert_problem(r, 422, "invalid_request")
    assert _fields(r) == {("body", "releases", "0", "valid_until")}
    assert _count(gate.engine, releases) == 0


def test_a_slot_lies_inside_the_window_and_lasts_at_most_a_day(gate: Gate) -> None:
    """The rule said "in the future and inside the validity window" and checked only an overlap: a slot
    from 1900 to two hours from now, or from now to the year 8999, was nominated."""
    rid = gate.pickable(1)  # valid from an hour ago for three days; nominated without a slot
    now = _now()

    def nominate(start: str, end: str) -> Any:
        return _raw(gate.http, "PUT", f"/api/v1/releases/{rid}/nomination",
                    {"driver_person_id": str(gate.p.driver), "plate": {"text": "1-ABC-123", "country": "BE"},
                     "slot": {"start": start, "end": end}}, gate.as_("haul"))

    for start, end, words in (
        ("1900-01-01T00:00:00Z", (now + timedelta(hours=2)).isoformat(), "inside the validity window"),
        ((now + timedelta(hours=1)).isoformat(), "8999-06-01T00:00:00Z", "inside the validity window"),
        ((now - timedelta(hours=2)).isoformat(), (now + timedelta(hours=1)).isoformat(), "inside the validity window"),
        ((now + timedelta(hours=1)).isoformat(), (now + timedelta(hours=26)).isoformat(), "at most 24 hours"),
    ):
        r = nominate(start, end)
        assert_problem(r, 422, "invalid_slot")
        assert words in r.json()["detail"] and r.json()["field"] == "slot"
    got = gate.http.get(f"/api/v1/releases/{rid}", headers=gate.as_("haul")).json()
    assert got["nomination"]["slot"] is None  # the nomination made before stands
    ok = nominate((now + timedelta(hours=1)).isoformat(), (now + timedelta(hours=3)).isoformat())
    assert ok.status_code == 200, ok.text


# ---- badges: the badge office's API and CLI ----------------------------------------------------------


@pytest.fixture
def office(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path)


def _admin(env: Lifecycle) -> dict[str, str]:
    client_id, secret, _ = env.machine("admin")
    return {"Authorization": f"Bearer {env.machine_token(client_id, secret)}"}


def _person(engine: sa.Engine) -> str:
    pid = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(persons.insert().values(id=pid, given_name="An", family_name="Claes", created_at=_now()))
    return str(pid)


def test_a_badge_is_valid_from_at_most_a_year_ahead(office: Lifecycle) -> None:
    """A badge from 9996 to 9997 was a 500 (the five-year bound, add_years, left the calendar: ValueError);
    from 8999 to 9000, or from eight years ahead, it was registered: a badge nobody carries, and one
    that would outlive everything else on the register."""
    headers, person = _admin(office), _person(office.engine)
    now = _now()
    cases = [("9996-01-01T00:00:00Z", "9997-01-01T00:00:00Z"),
             ("9999-12-30T00:00:00Z", "9999-12-31T23:59:59Z"),
             ("8999-01-01T00:00:00Z", "9000-01-01T00:00:00Z"),
             ((now + timedelta(days=366)).isoformat(), (now + timedelta(days=500)).isoformat())]
    for n, (start, end) in enumerate(cases):
        body = {"person_id": person, "scheme": "alfapass", "number": with_check(Scheme.ALFAPASS, 10010 + n),
                "valid_from": start, "valid_until": end}
        r = _raw(office.http, "POST", "/admin/v1/badges", body, headers)
        assert r.status_code == 422, (start, r.text)
        assert r.json()["code"] in {"invalid_validity", "invalid_request"}, r.text
    assert _count(office.engine, badges) == 0
    body = {"person_id": person, "scheme": "alfapass", "number": with_check(Scheme.ALFAPASS, 10020),
            "valid_from": (now + timedelta(days=300)).isoformat(),
            "valid_until": (now + timedelta(days=700)).isoformat()}
    assert _raw(office.http, "POST", "/admin/v1/badges", body, headers).status_code == 201


def test_a_badge_time_is_never_a_unix_time(office: Lifecycle) -> None:
    headers, person = _admin(office), _person(office.engine)
    in_a_month = int((_now() + timedelta(days=30)).timestamp())
    body = {"person_id": person, "scheme": "alfapass", "number": with_check(Scheme.ALFAPASS, 10030),
            "valid_from": (_now() - timedelta(days=1)).isoformat(), "valid_until": in_a_month}
    r = _raw(office.http, "POST", "/admin/v1/badges", body, headers)
    assert_problem(r, 422, "invalid_request")
    assert _fields(r) == {("body", "valid_until")}
    assert _count(office.engine, badges) == 0


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A migrated SQLite database with one person: (person id, database url)."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", url)
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    assert main(["migrate"]) == 0
    engine = make_engine(url)
    try:
        person = _person(engine)
    finally:
        engine.dispose()
    return person, url


def test_the_badge_cli_says_plainly_what_is_wrong_with_a_date(cli_db: tuple[str, str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``--valid-from 9996-01-01`` was a ValueError traceback (add_years)."""
    person, url = cli_db
    for start, end in (("9996-01-01", "9997-01-01"), ("8999-01-01", "9000-01-01"),
                       (None, "9999-12-31T23:59:59-12:00")):
        args = ["badge", "issue", "--person", person, "--scheme", "alfapass", "--number", "AP-100230",
                "--valid-until", end, *(["--valid-from", start] if start else [])]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("refused (") and "Traceback" not in err, err
    engine = make_engine(url)
    try:
        assert _count(engine, badges) == 0
    finally:
        engine.dispose()


# ---- the port-ban feed: API and CLI ----------------------------------------------------------------------


@pytest.fixture
def register() -> Register:
    return Register()


@pytest.fixture
def feed_office(engine: sa.Engine, tmp_path: Path, register: Register) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path, ban_register_jwk=register.public_jwk)


def _feed(register: Register, start: str, until: str) -> bytes:
    one = {**ban(national_number(1), "R-1", start=_now()), "from": start, "until": until}
    return register.sign(snapshot(1, _now(), [one]))


FAR_BANS = {
    # a ban from 9990: the 20-year cap's add_years left the calendar; the API answered 503 "not configured"
    "from_9990": ("9990-01-01T00:00:00Z", "9999-12-31T23:59:59Z"),
    # ISO 8601, and no UTC time: astimezone overflowed, a 500 (a traceback at the CLI)
    "until_past_9999_in_utc": ("2026-01-01T00:00:00Z", "9999-12-31T23:59:59-05:00"),
    "from_before_year_1_in_utc": ("0001-01-01T00:00:00+01:00", "0001-06-01T00:00:00Z"),
    # storable, and outside what the database hands back in every session time zone
    "until_in_9999": ("9990-01-01T00:00:00Z", "9999-12-31T23:00:00Z"),
}


@pytest.mark.parametrize("case", list(FAR_BANS))
def test_a_ban_feed_with_a_time_outside_the_calendar_is_refused_as_malformed(
        feed_office: Lifecycle, register: Register, case: str) -> None:
    r = feed_office.http.post("/admin/v1/bans/feeds", content=_feed(register, *FAR_BANS[case]),
                              headers={**_admin(feed_office), "content-type": "application/jose"})
    assert_problem(r, 422, "malformed")
    assert "between 1900-01-01 and 9000-01-01" in r.json()["detail"]
    assert _count(feed_office.engine, port_bans) == 0


def test_the_bans_cli_refuses_such_a_feed_plainly(cli_db: tuple[str, str], register: Register, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QUAYGATE_PEPPER", "test-pepper-one")
    monkeypatch.setenv("QUAYGATE_BAN_REGISTER_JWK", register.public_jwk)
    for n, (start, until) in enumerate(FAR_BANS.values()):
        path = tmp_path / f"feed-{n}.jws"
        path.write_bytes(_feed(register, start, until))
        assert main(["bans", "load", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("feed refused, the list in force is unchanged: malformed feed") and "Traceback" not in err


# ---- the audit trail search --------------------------------------------------------------------------


def test_an_audit_search_names_a_time_it_cannot_take(office: Lifecycle) -> None:
    """``since`` past the calendar once in UTC was refused only by the column type ("a time of the
    request cannot be stored", no field), and a number was read as a Unix time."""
    headers = _admin(office)
    for field, value in (("since", "0001-01-01T00:00:00+01:00"), ("until", "9999-12-31T23:59:59-12:00"),
                         ("since", "1700000000"), ("until", "1.5")):
        r = office.http.get("/admin/v1/audit", params={field: value}, headers=headers)
        assert_problem(r, 422, "invalid_request")
        assert _fields(r) == {("query", field)}, r.text
    ok = office.http.get("/admin/v1/audit", params={"since": "2026-01-01T00:00:00+14:00"}, headers=headers)
    assert ok.status_code == 200, ok.text
    assert _count(office.engine, audit_log) >= 1


# ---- NumericDates someone else signed: the token endpoint's client assertions -----------------------


@pytest.mark.parametrize(("claim", "value"), [("exp", 10**400), ("exp", -(10**400)), ("iat", -(10**400)),
                                              ("nbf", 10**30), ("exp", 2**63)],
                         ids=["exp_huge", "exp_hugely_negative", "iat_hugely_negative", "nbf_huge", "exp_2_63"])
def test_a_client_assertion_with_a_time_no_calendar_holds_is_401(office: Lifecycle, claim: str, value: int) -> None:
    """Signed by the client itself (any registered company): ``exp`` of 10**400 made ``exp - now``
    overflow converting to float, a 500 at the token endpoint."""
    key = rsa_key()
    client_id, _ = line_client(office.engine, auth_method="private_key_jwt", jwks=public_jwks(key))
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": TOKEN_ENDPOINT, "iat": now, "exp": now + 60,
              "jti": uuid.uuid4().hex, claim: value}
    token = jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key, algorithms=["RS256"])
    r = office.http.post("/oauth2/token", data={
        "grant_type": "client_credentials", "client_assertion": token,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client"), r.text
    # one description for every client authentication refused (review 151, finding 2): no cause named
    assert r.json()["error_description"] == CLIENT_AUTH_FAILED


# ---- other CLI numbers -------------------------------------------------------------------------------


def test_an_enrolment_code_for_more_hours_than_a_timedelta_holds_is_a_plain_refusal(
        cli_db: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    person, _ = cli_db
    assert main(["person", "enrol-code", person, "--hours", str(10**20)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cannot issue a code") and "Traceback" not in err


# ---- the lane simulator against the bound ----------------------------------------------------------


def test_a_simulated_run_longer_than_the_bound_is_stamped_to_end_now(gate: Gate, tmp_path: Path) -> None:
    """``drive`` plays a script at once in script time and stamped its reads from now on: a truck 20
    minutes into a script was observed 20 minutes ahead of the service, which now refuses it."""
    rid = gate.pickable(11)
    script = json.loads((SCRIPTS / "sim_clean_rush.json").read_text())
    script["trucks"] = [{**script["trucks"][0], "at": 1200}]
    path = tmp_path / "late.json"
    path.write_text(json.dumps(script))
    client = VerifyClient("http://testserver", StaticToken(gate.gate_token), http=gate.http)
    out = io.StringIO()
    summary = drive(load_script(path), client, outbox_path=tmp_path / "late.sqlite3", out=out)
    assert (dict(summary.decisions), summary.unanswered) == ({"allow": 1}, 0), out.getvalue()
    assert gate.state(rid) == "gated_in"

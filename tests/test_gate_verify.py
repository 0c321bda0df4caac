"""POST /gate/v1/verify and /gate/v1/overrides over HTTP, with real gate tokens from our provider, on
SQLite and PostgreSQL: the decision, the single use at gate-in, idempotency by request_id, repairs,
screening, overrides and bad input."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from identity.domain.badges import Scheme, with_check
from quaygate.app import create_app
from quaygate.cache import MemoryCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.routing import ExactRoutes
from quaygate.schema import (
    audit_log,
    badge_activations,
    badges,
    ban_feed_state,
    gate_decisions,
    persons,
    port_bans,
    releases,
)
from quaygate.settings import Settings
from release_service.api.gate import VerifyResponse, admit_verify
from release_service.api.gate import router as gate_router
from release_service.domain.parties import OrgKind

from .factories import TERMINAL, add_org, container
from .test_release_api import Api, assert_problem

PLATE = {"text": "1-ABC-123", "country": "BE"}


def assert_published_answer(answer: dict[str, Any]) -> None:
    """The route sends the service's answer as is (not validated again on the way out): it must be
    exactly the published VerifyResponse, every field and nothing more."""
    assert set(answer) == set(VerifyResponse.model_fields), sorted(set(answer) ^ set(VerifyResponse.model_fields))
    VerifyResponse.model_validate(answer)


class Gate(Api):
    """The party API (to make rights) plus a gate client of the terminal."""

    def __init__(self, http: TestClient, engine: sa.Engine) -> None:
        super().__init__(http, engine)
        self.gate_token = self.token_for("terminal_gate", self.p.terminal.organisation_id, TERMINAL)
        # The factory's number has no valid check digit; the gate reads only real ones.
        self.badge_number = with_check(Scheme.ALFAPASS, 12345)
        with engine.begin() as conn:
            conn.execute(badges.update().where(badges.c.person_id == self.p.driver).values(number=self.badge_number))
            badge_id = conn.execute(sa.select(badges.c.id).where(badges.c.person_id == self.p.driver)).scalar_one()
            conn.execute(badge_activations.insert().values(
                id=uuid.uuid4(), badge_id=badge_id, terminal_code=TERMINAL, activated_by="desk", activated_at=_now()))

    def pickable(self, n: int, *, green: bool = True) -> str:
        """A right nominated to the test driver and truck, with every light green: ready for gate-in."""
        rid = str(self.issue(n, release_to_organisation_id=str(self.p.haul.organisation_id))["release"]["id"])
        r = self.http.put(f"/api/v1/releases/{rid}/nomination", headers=self.as_("haul"),
                          json={"driver_person_id": str(self.p.driver), "plate": PLATE})
        assert r.status_code == 200, r.text
        for who, light in (("customs", "customs"), ("terminal", "terminal")):
            status = "green" if green or light == "terminal" else "red"
            r = self.http.put(f"/api/v1/releases/{rid}/lights/{light}", json={"status": status},
                              headers=self.as_(who))
            assert r.status_code == 200, r.text
        return rid

    def body(self, n: int, **over: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "request_id": str(uuid.uuid4()), "terminal": TERMINAL, "lane": "in-3", "direction": "in",
            "mode": "check", "container": {"number": container(n), "confidence": 0.97},
            "plate": {"text": "1ABC123", "country": "BE", "confidence": 0.95},
            "badge": {"scheme": "alfapass", "number": self.badge_number}, "observed_at": _now().isoformat(),
        }
        body.update(over)
        return body

    def verify(self, body: dict[str, Any], token: str | None = None) -> Any:
        r = self.http.post("/gate/v1/verify", json=body,
                           headers={"Authorization": f"Bearer {token or self.gate_token}"})
        if r.status_code == 200:
            assert_published_answer(r.json())
        return r

    def state(self, rid: str) -> str:
        with self.engine.connect() as conn:
            return str(conn.execute(sa.select(releases.c.state).where(releases.c.id == uuid.UUID(rid))).scalar_one())


def _now() -> datetime:
    return datetime.now(UTC)


def serve(engine: sa.Engine, tmp_path: Path) -> Iterator[Gate]:
    """The app on ``engine`` (the in-process cache), with the party API and a gate client."""
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        background_workers=False)
    c = Container(settings=settings, engine=engine, cache=MemoryCache(),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    with TestClient(create_app(settings, container=c)) as http:
        yield Gate(http, engine)


def pickable_in_process(engine: sa.Engine, tmp_path: Path, numbers: Iterable[int]) -> tuple[Gate, list[str]]:
    """Pickable rights made through the app in process, which then stops, so that a server in a child
    process can serve the same database: without Redis, a database has one server at a time
    (quaygate/solo.py). The Gate keeps its tokens and ids; its ``http`` is closed."""
    with contextmanager(serve)(engine, tmp_path) as gate:
        return gate, [gate.pickable(n) for n in numbers]


@pytest.fixture
def gate(engine: sa.Engine, tmp_path: Path) -> Iterator[Gate]:
    yield from serve(engine, tmp_path)


def test_check_commit_replay_and_single_use(gate: Gate) -> None:
    rid = gate.pickable(1)
    check = gate.verify(gate.body(1))
    assert check.status_code == 200, check.text
    got = check.json()
    assert (got["decision"], got["reasons"], got["release_id"], got["committed"]) == ("allow", [], rid, False)
    assert got["container"] == container(1) and got["screening"] == "clear" and got["driver"] == "J. P***s"
    assert gate.state(rid) == "nominated"  # check decides only

    commit_body = gate.body(1, mode="commit")
    first = gate.verify(commit_body)
    assert first.json()["decision"] == "allow" and first.json()["committed"] is True, first.text
    assert gate.state(rid) == "gated_in"
    # The adapter retries after a timeout: the same answer, nothing done twice.
    again = gate.verify(commit_body)
    assert again.status_code == 200 and again.json() == first.json()
    # The same request_id with another request is refused, not answered with the other's decision.
    assert_problem(gate.verify({**commit_body, "lane": "in-4"}), 409, "request_id_reused")
    # Another truck with the same container and driver: the right is used.
    second = gate.verify(gate.body(1, mode="commit")).json()
    assert (second["decision"], second["reasons"], second["committed"]) == ("deny", ["already_used"], False)

    out = gate.verify(gate.body(1, mode="commit", direction="out")).json()
    assert (out["decision"], out["committed"]) == ("allow", True), out
    assert gate.state(rid) == "completed"
    with gate.engine.connect() as conn:
        decisions = conn.execute(sa.select(gate_decisions.c.decision, gate_decisions.c.committed)
                                 .order_by(gate_decisions.c.decided_at)).all()
        kinds = set(conn.execute(sa.select(audit_log.c.kind)).scalars())
    assert [tuple(d) for d in decisions] == [("allow", False), ("allow", True), ("deny", False), ("allow", True)]
    assert {"release.gated_in", "release.completed"} <= kinds


def test_a_repaired_container_read_is_reported(gate: Gate) -> None:
    rid = gate.pickable(5)
    number = container(5)  # OCLU0000050-ish: a 0 in the serial read as O
    misread = number[:4] + number[4:10].replace("0", "O", 1) + number[10]
    assert misread != number
    got = gate.verify(gate.body(5, container={"number": misread, "confidence": 0.9})).json()
    assert (got["decision"], got["container"], got["release_id"]) == ("allow", number, rid), got
    assert got["repairs"] and got["repairs"][0]["field"] == "container" and got["repairs"][0]["read"] == "O"


@pytest.mark.parametrize(("change", "decision", "reason"), [
    ({"plate": {"text": "2XYZ999", "country": "BE", "confidence": 0.95}}, "deny", "plate_mismatch"),
    ({"plate": {"text": "1ABC123", "country": "BE", "confidence": 0.3}}, "review", "plate_low_confidence"),
    ({"badge": None}, "deny", "badge_unknown"),
    ({"container": {"number": "", "confidence": 0.0}}, "review", "container_unreadable"),
])
def test_reasons_over_http(gate: Gate, change: dict[str, Any], decision: str, reason: str) -> None:
    rid = gate.pickable(2)
    got = gate.verify(gate.body(2, mode="commit", **change)).json()
    assert got["decision"] == decision and reason in got["reasons"], got
    assert got["committed"] is False and gate.state(rid) == "nominated"


def test_holds_not_activated_badges_and_unknown_containers(gate: Gate) -> None:
    gate.pickable(3, green=False)  # customs red
    got = gate.verify(gate.body(3)).json()
    assert (got["decision"], got["reasons"]) == ("deny", ["customs_hold"])
    assert gate.verify(gate.body(99)).json()["reasons"] == ["container_unknown"]
    with gate.engine.begin() as conn:
        conn.execute(badge_activations.update().values(withdrawn_at=_now(), withdrawn_by="desk"))
    gate.pickable(4)
    assert gate.verify(gate.body(4)).json()["reasons"] == ["badge_not_activated_here"]


def ban_the_driver(gate: Gate) -> None:
    """The test driver linked to a national number, banned at every port by a list in force."""
    with gate.engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == gate.p.driver).values(national_id_hash="h" * 64))
        conn.execute(port_bans.insert().values(register="BE-NBR", reference="B-1", subject_hash="h" * 64, scope="all",
                                               banned_from=_now() - timedelta(days=1),
                                               banned_until=_now() + timedelta(days=30), feed_sequence=1))
        conn.execute(ban_feed_state.insert().values(register="BE-NBR", sequence=1, issued_at=_now(),
                                                    loaded_at=_now(), digest="d" * 64))


def test_a_badge_not_valid_yet_is_refused_at_the_gate(gate: Gate) -> None:
    """A badge the office issued ahead of its validity (``valid_from`` tomorrow) opens nothing today."""
    rid = gate.pickable(7)
    with gate.engine.begin() as conn:
        conn.execute(badges.update().where(badges.c.number == gate.badge_number)
                     .values(valid_from=_now() + timedelta(days=1)))
    got = gate.verify(gate.body(7, mode="commit")).json()
    assert (got["decision"], got["reasons"]) == ("deny", ["badge_inactive"]), got
    assert gate.state(rid) == "nominated"


def test_a_banned_driver_is_refused_at_the_gate(gate: Gate) -> None:
    rid = gate.pickable(6)
    ban_the_driver(gate)
    got = gate.verify(gate.body(6, mode="commit")).json()
    assert (got["decision"], got["screening"], got["reasons"]) == ("deny", "banned", ["person_banned"])
    assert gate.state(rid) == "nominated"


def test_only_the_terminals_own_gate(gate: Gate) -> None:
    gate.pickable(7)
    other = add_org(gate.engine, OrgKind.TERMINAL, terminal_code="BEANR-K913")
    foreign = gate.token_for("terminal_gate", other.organisation_id, "BEANR-K913")
    assert_problem(gate.verify(gate.body(7), token=foreign), 403, "not_terminal")  # asks about K1700
    own_terminal = gate.verify(gate.body(7, terminal="BEANR-K913"), token=foreign).json()
    # The right is for K1700, and the badge was never activated at K913: every reason is given.
    assert own_terminal["reasons"] == ["wrong_terminal", "badge_not_activated_here"]
    party = gate.as_("line")["Authorization"].split()[1]
    assert gate.verify(gate.body(7), token=party).status_code in (401, 403)
    assert gate.http.post("/gate/v1/verify", json=gate.body(7)).status_code == 401


@pytest.mark.parametrize(("change", "status", "code"), [
    ({"container": {"number": "OCLU0000011", "confidence": 1.5}}, 422, "invalid_request"),
    ({"direction": "sideways"}, 422, "invalid_request"),
    ({"observed_at": "2026-11-21T10:00:00"}, 422, "invalid_request"),  # no zone
    ({"face": {"image": "aGVsbG8="}}, 422, "image_unreadable"),  # issue 6: matched, but "hello" is no photo
    ({"unknown_field": 1}, 422, "invalid_request"),
    # Control characters: a NUL (PostgreSQL's text and jsonb refuse it), an escape sequence for a log viewer.
    ({"request_id": "r\x00"}, 422, "invalid_request"),
    ({"lane": "in-\x1b[2J"}, 422, "invalid_request"),
    ({"container": {"number": "MSCU\x001234566", "confidence": 1}}, 422, "invalid_request"),
    ({"observed_at": "9999-12-31T23:59:59-12:00"}, 422, "invalid_request"),  # valid ISO 8601, and no UTC time
])
def test_bad_input_is_a_problem_and_records_nothing(gate: Gate, change: dict[str, Any], status: int,
                                                    code: str) -> None:
    gate.pickable(8)
    assert_problem(gate.verify(gate.body(8, mode="commit", **change)), status, code)
    with gate.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)).scalar_one() == 0


def _malformed(gate: Gate) -> list[tuple[bytes, dict[str, str]]]:
    """Requests the verify's lean handler must leave to FastAPI's (quaygate/routing.py ``lean_app``),
    and requests it answers itself but must refuse as FastAPI's handler would (no or another token)."""
    good = gate.body(9)
    bearer = {"Authorization": f"Bearer {gate.gate_token}"}
    as_json = {"content-type": "application/json", **bearer}

    def enc(body: Any) -> bytes:
        return json.dumps(body).encode()

    return [
        (b'{"request_id": ', as_json), (b"", as_json), (b"null", as_json), (b"[1, 2]", as_json),
        (enc({**good, "unknown_field": 1}), as_json), (enc({**good, "direction": "sideways"}), as_json),
        (enc({**good, "container": {"number": "X", "confidence": 1.5}}), as_json),
        (enc({k: v for k, v in good.items() if k != "terminal"}), as_json),
        (enc({**good, "observed_at": "2026-11-21T10:00:00"}), as_json), (enc(good), {"content-type": "text/plain",
                                                                              **bearer}),
        (enc(good), bearer),  # no content type at all
        (enc(good), {"content-type": "application/json"}),  # no token
        (enc(good), {"content-type": "application/json", "Authorization": f"DPoP {gate.gate_token}"}),
        (enc(good), {"content-type": "application/json", "Authorization": "Bearer not.a.token"}),
        (enc({**good, "face": {"image": "aGVsbG8="}}), as_json),
        (b"[" * 100_000, as_json),  # json.loads raises RecursionError, not a ValueError: still FastAPI's 400
    ]


def test_the_lean_verify_refuses_exactly_as_fastapis_handler(gate: Gate) -> None:
    """Every refusal through the lean handler is the one FastAPI's own handler gives: the same status,
    problem and challenge. The plain index, put in front, sends verify through FastAPI's handler."""
    gate.pickable(9)
    app = gate.http.app
    cases = _malformed(gate)
    lean = [gate.http.post("/gate/v1/verify", content=body, headers=headers) for body, headers in cases]
    app.router.routes.insert(0, ExactRoutes.of([gate_router], [("POST", "/gate/v1/verify")],
                                               admit={("POST", "/gate/v1/verify"): admit_verify}))
    try:
        plain = [gate.http.post("/gate/v1/verify", content=body, headers=headers) for body, headers in cases]
    finally:
        del app.router.routes[0]
    for (body, headers), a, b in zip(cases, lean, plain, strict=True):
        assert a.status_code >= 400, (body, headers, a.text)
        assert (a.status_code, a.json(), a.headers.get("www-authenticate")) == (
            b.status_code, b.json(), b.headers.get("www-authenticate")), (body, headers)
    with gate.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(gate_decisions)).scalar_one() == 0


@pytest.mark.parametrize("chunked", [False, True])
def test_a_gate_clients_body_past_the_verify_limit_is_refused(gate: Gate, chunked: bool) -> None:
    """With a valid gate token the body is read, and its limit (a face image in its JSON) holds:
    413, announced (refused unread) or in chunks (refused once past the limit)."""
    size = 8 * 1024 * 1024 + 64 * 1024 + 1
    body = b"{" + b" " * (size - 2) + b"}"
    step = 256 * 1024
    headers = {"content-type": "application/json", "Authorization": f"Bearer {gate.gate_token}"}
    r = gate.http.post("/gate/v1/verify", headers=headers,
                       content=iter([body[i:i + step] for i in range(0, len(body), step)]) if chunked else body)
    assert_problem(r, 413, "body_too_large")


def test_a_caller_without_a_valid_token_is_refused_before_its_body_is_parsed(gate: Gate) -> None:
    """Up to 8 MiB of body: without a valid gate token nobody makes the server parse it (on the event
    loop, where every lane's checks wait). The token is judged on the headers first (``admit_verify``),
    so a large invalid body is 401, not 422; with a valid token the same body is refused as before."""
    junk = b'{"request_id": [' + b"0," * 500_000 + b'0]}'
    as_json = {"content-type": "application/json"}
    assert_problem(gate.http.post("/gate/v1/verify", content=junk, headers=as_json), 401, "invalid_request")
    assert_problem(gate.http.post("/gate/v1/verify", content=junk,
                                  headers={**as_json, "Authorization": "Bearer not.a.token"}), 401, "invalid_token")
    assert_problem(gate.http.post("/gate/v1/verify", content=junk,
                                  headers={**as_json, "Authorization": f"Bearer {gate.gate_token}"}),
                   422, "invalid_request")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/merge-patch+json"])
def test_json_content_types_fastapi_takes_are_taken(gate: Gate, content_type: str) -> None:
    gate.pickable(10)
    r = gate.http.post("/gate/v1/verify", content=json.dumps(gate.body(10)).encode(),
                       headers={"content-type": content_type, "Authorization": f"Bearer {gate.gate_token}"})
    assert r.status_code == 200 and r.json()["decision"] == "allow", r.text


def _override(gate: Gate, decision: dict[str, Any], reason: str = "checked at the desk") -> Any:
    return gate.http.post("/gate/v1/overrides", headers={"Authorization": f"Bearer {gate.gate_token}"},
                          json={"decision_id": decision["decision_id"], "reason": reason})


def _wrong_plate(gate: Gate, n: int, **over: Any) -> dict[str, Any]:
    """A commit refused for the plate alone: what a person at the desk may set aside."""
    refused = gate.verify(gate.body(n, mode="commit", plate={"text": "9ZZZ999", "country": "BE", "confidence": 0.99},
                                    **over)).json()
    assert (refused["decision"], refused["reasons"]) == ("deny", ["plate_mismatch"]), refused
    return dict(refused)


def test_an_override_cannot_release_a_right_nominated_to_nobody(gate: Gate) -> None:
    """The gate's own credential cannot turn any refusal into a gate-in: a right with no driver and no
    truck bound to it stays where it is (the attack: a check without a badge, then an override)."""
    rid = str(gate.issue(20, release_to_organisation_id=str(gate.p.haul.organisation_id))["release"]["id"])
    for who, light in (("customs", "customs"), ("terminal", "terminal")):
        assert gate.http.put(f"/api/v1/releases/{rid}/lights/{light}", json={"status": "green"},
                             headers=gate.as_(who)).status_code == 200
    refused = gate.verify(gate.body(20, badge=None)).json()
    assert refused["decision"] != "allow" and refused["release_id"] == rid and "not_nominated" in refused["reasons"]
    got = _override(gate, refused)
    assert_problem(got, 409, "illegal_transition")
    assert "not_nominated" in got.json()["detail"]
    assert gate.state(rid) == "active"


def test_an_override_cannot_set_aside_the_badge_office_or_the_ban_register(gate: Gate) -> None:
    rid = gate.pickable(21)
    with gate.engine.begin() as conn:
        conn.execute(badges.update().where(badges.c.number == gate.badge_number).values(status="blocked"))
    refused = gate.verify(gate.body(21, mode="commit")).json()
    assert refused["decision"] == "deny" and "badge_blocked" in refused["reasons"], refused
    got = _override(gate, refused)
    assert_problem(got, 409, "illegal_transition")
    assert "badge_blocked" in got.json()["detail"]
    assert gate.state(rid) == "nominated"


def _without_badge(gate: Gate, n: int) -> dict[str, Any]:
    """A commit refused because the driver showed no badge: the decision screened nobody."""
    refused = gate.verify(gate.body(n, mode="commit", badge=None)).json()
    assert refused["decision"] == "deny" and "badge_unknown" in refused["reasons"], refused
    assert refused["driver"] is None and not {"person_banned", "driver_mismatch"} & set(refused["reasons"])
    return dict(refused)


def test_an_override_of_a_decision_without_a_badge_lets_in_the_nominated_driver_screened_now(gate: Gate) -> None:
    """No badge shown: the desk establishes that the person is the nominated driver, and the override
    screens that driver now, as a nomination does."""
    rid = gate.pickable(24)
    got = _override(gate, _without_badge(gate, 24))
    assert got.status_code == 201, got.text
    assert gate.state(rid) == "gated_in"


@pytest.mark.parametrize("refusal", ["banned", "badge_blocked"])
def test_an_override_never_lets_in_a_driver_the_ban_register_or_the_badge_office_refuses(
        gate: Gate, refusal: str) -> None:
    """The attack: a banned driver (or one whose badge the badge office blocked) comes without a badge,
    so that the gate cannot screen him, and asks the desk to override the badge it did not see."""
    rid = gate.pickable(25)
    if refusal == "banned":
        ban_the_driver(gate)
    else:
        with gate.engine.begin() as conn:
            conn.execute(badges.update().where(badges.c.number == gate.badge_number).values(status="blocked"))
    got = _override(gate, _without_badge(gate, 25))
    assert_problem(got, 409, "illegal_transition")
    assert ("person_banned" if refusal == "banned" else "badge_blocked") in got.json()["detail"]
    assert gate.state(rid) == "nominated"


def test_an_override_is_refused_once_the_right_was_nominated_again(gate: Gate) -> None:
    """Refused for the plate; then the haulier nominates again (another driver, another truck): the
    old decision judged the old nomination, and letting the truck in on it would skip the new one."""
    rid = gate.pickable(26)
    refused = _wrong_plate(gate, 26)
    r = gate.http.put(f"/api/v1/releases/{rid}/nomination", headers=gate.as_("haul"),
                      json={"driver_person_id": str(gate.p.driver), "plate": {"text": "2-XYZ-987", "country": "BE"}})
    assert r.status_code == 200, r.text
    got = _override(gate, refused)
    assert_problem(got, 409, "illegal_transition")
    assert "nominated again" in got.json()["detail"]
    assert gate.state(rid) == "nominated"


def test_an_override_goes_in_under_the_nomination_its_decision_judged_whatever_the_clocks(gate: Gate) -> None:
    """A nomination's time is read when its request starts, and it may commit after a decision that
    started later read the right: its time is then before the decision's, though the decision judged
    the nomination before it. The decision keeps the nomination it judged, so the override still
    refuses; and a nomination made again with the same driver and truck is the one judged."""
    rid = gate.pickable(27)
    refused = _wrong_plate(gate, 27)
    with gate.engine.connect() as conn:
        judged = conn.execute(sa.select(gate_decisions.c.nomination, gate_decisions.c.decided_at)
                              .where(gate_decisions.c.id == uuid.UUID(refused["decision_id"]))).one()
    nominated = gate.http.get(f"/api/v1/releases/{rid}", headers=gate.as_("haul")).json()["nomination"]
    assert judged.nomination == [str(gate.p.driver), nominated["plate"]["text"], nominated["plate"]["country"]]
    r = gate.http.put(f"/api/v1/releases/{rid}/nomination", headers=gate.as_("haul"),
                      json={"driver_person_id": str(gate.p.driver), "plate": {"text": "2-XYZ-987", "country": "BE"}})
    assert r.status_code == 200, r.text
    with gate.engine.begin() as conn:  # its clock read before the decision's, its commit after
        conn.execute(releases.update().where(releases.c.id == uuid.UUID(rid))
                     .values(nominated_at=judged.decided_at - timedelta(seconds=1)))
    got = _override(gate, refused)
    assert_problem(got, 409, "illegal_transition")
    assert "nominated again" in got.json()["detail"] and gate.state(rid) == "nominated"

    again = _wrong_plate(gate, 27)  # judged the new nomination; made again as it was: the same one
    r = gate.http.put(f"/api/v1/releases/{rid}/nomination", headers=gate.as_("haul"),
                      json={"driver_person_id": str(gate.p.driver), "plate": {"text": "2-XYZ-987", "country": "BE"}})
    assert r.status_code == 200, r.text
    assert _override(gate, again).status_code == 201 and gate.state(rid) == "gated_in"


@pytest.mark.parametrize("after", ["blocked", "customs_red", "revoked"])
def test_an_override_judges_the_right_as_it_is_now(gate: Gate, after: str) -> None:
    """Refused for the plate, then the line blocks or revokes the right, or customs holds it: the
    override is refused, and the right is not used."""
    rid = gate.pickable(22)
    refused = _wrong_plate(gate, 22)
    if after == "blocked":
        r = gate.http.post(f"/api/v1/releases/{rid}/block", headers=gate.as_("line"), json={"reason": "fraud"})
    elif after == "revoked":
        r = gate.http.post(f"/api/v1/releases/{rid}/revoke", headers=gate.as_("line"), json={"reason": "fraud"})
    else:
        r = gate.http.put(f"/api/v1/releases/{rid}/lights/customs", json={"status": "red"}, headers=gate.as_("customs"))
    assert r.status_code == 200, r.text
    got = _override(gate, refused)
    assert got.status_code == 409, got.text
    assert gate.state(rid) == ("revoked" if after == "revoked" else "nominated")


def test_an_old_decision_is_not_overridden(gate: Gate) -> None:
    rid = gate.pickable(23)
    refused = _wrong_plate(gate, 23)
    with gate.engine.begin() as conn:
        conn.execute(gate_decisions.update().where(gate_decisions.c.id == uuid.UUID(refused["decision_id"]))
                     .values(decided_at=_now() - timedelta(hours=2)))
    got = _override(gate, refused)
    assert_problem(got, 409, "illegal_transition")
    assert "too old" in got.json()["detail"]
    assert gate.state(rid) == "nominated"
    # Verified again, refused again: that decision is overridden.
    again = _wrong_plate(gate, 23)
    assert _override(gate, again).status_code == 201 and gate.state(rid) == "gated_in"


def test_override_lets_a_refused_truck_in_once_with_a_reason(gate: Gate) -> None:
    rid = gate.pickable(9)
    refused = gate.verify(gate.body(9, mode="commit", plate={"text": "9ZZZ999", "country": "BE",
                                                               "confidence": 0.99})).json()
    assert refused["decision"] == "deny"
    headers = {"Authorization": f"Bearer {gate.gate_token}"}
    assert_problem(gate.http.post("/gate/v1/overrides", json={"decision_id": refused["decision_id"], "reason": " "},
                                  headers=headers), 422, "invalid_request")
    assert_problem(gate.http.post("/gate/v1/overrides", headers=headers,  # a NUL: no reason PostgreSQL can store
                                  json={"decision_id": refused["decision_id"], "reason": "seen\x00"}),
                   422, "invalid_request")
    assert gate.state(rid) == "nominated"
    done = gate.http.post("/gate/v1/overrides", headers=headers, json={
        "decision_id": refused["decision_id"], "reason": "Plate changed after a breakdown.\nSeen at the desk"})
    assert done.status_code == 201, done.text
    assert done.json()["state"] == "gated_in" and gate.state(rid) == "gated_in"
    assert_problem(gate.http.post("/gate/v1/overrides", headers=headers,
                                  json={"decision_id": refused["decision_id"], "reason": "again"}), 409, "already_used")
    allowed = gate.verify(gate.body(9, direction="out")).json()
    assert allowed["decision"] == "allow"
    assert_problem(gate.http.post("/gate/v1/overrides", headers=headers,
                                  json={"decision_id": allowed["decision_id"], "reason": "x"}), 409,
                   "illegal_transition")
    assert_problem(gate.http.post("/gate/v1/overrides", headers=headers,
                                  json={"decision_id": str(uuid.uuid4()), "reason": "x"}), 404, "not_found")
    with gate.engine.connect() as conn:
        kinds = list(conn.execute(sa.select(audit_log.c.kind).where(audit_log.c.subject == rid)).scalars())
    assert "release.gate_override" in kinds

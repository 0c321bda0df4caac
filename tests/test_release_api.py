"""The party API over HTTP with real tokens from our provider: the README's session, and bad input."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions as redis_errors
import sqlalchemy as sa
from fastapi.testclient import TestClient

from identity.bootstrap import create_client
from quaygate.app import create_app
from quaygate.cache import MemoryCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import organisations, release_events, releases
from quaygate.settings import Settings
from release_service.domain.parties import OrgKind

from .factories import TERMINAL, add_org, container, port


class Api:
    def __init__(self, http: TestClient, engine: sa.Engine) -> None:
        self.http = http
        self.engine = engine
        self.p = port(engine)
        self.tokens: dict[str, str] = {}

    def token_for(self, role: str, organisation_id: uuid.UUID | None, terminal: str | None = None) -> str:
        client_id, secret = create_client(self.engine, name=role, role=role, organisation_id=organisation_id,
                                          terminal_code=terminal, now=datetime.now(UTC))
        r = self.http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret or ""))
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def as_(self, who: str) -> dict[str, str]:
        if who not in self.tokens:
            p = self.p
            org = {"line": p.line, "fwd": p.fwd, "haul": p.haul, "haul2": p.haul2, "customs": p.customs,
                   "terminal": p.terminal}[who]
            role = {"line": "shipping_line", "fwd": "release_party", "haul": "transport_operator",
                    "haul2": "transport_operator", "customs": "customs", "terminal": "terminal_operator"}[who]
            self.tokens[who] = self.token_for(role, org.organisation_id, org.terminal_code)
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def issue(self, n: int = 1, **extra: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        body = {"container_number": container(n), "bill_of_lading": f"BL-{n}", "vessel_call": "VC-1",
                "terminal": TERMINAL, "release_to_organisation_id": str(self.p.fwd.organisation_id),
                "valid_from": (now - timedelta(hours=1)).isoformat(),
                "valid_until": (now + timedelta(days=3)).isoformat(), **extra}
        r = self.http.post("/api/v1/releases", json=body, headers=self.as_("line"))
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def api(engine: sa.Engine, tmp_path: Path) -> Iterator[Api]:
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        background_workers=False)
    c = Container(settings=settings, engine=engine, cache=MemoryCache(),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    with TestClient(create_app(settings, container=c)) as http:
        yield Api(http, engine)


def assert_problem(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["code"] == code and body["status"] == status and body["type"].endswith(code), body


def test_readme_session(api: Api) -> None:
    p = api.p
    issued = api.issue()
    rid = issued["release"]["id"]
    assert issued["release"]["state"] == "active" and issued["receipt"]["action"] == "release.issued"
    t = api.http.post(f"/api/v1/releases/{rid}/transfers", json={"to_organisation_id": str(p.haul.organisation_id)},
                      headers=api.as_("fwd"))
    assert t.status_code == 201, t.text
    tid = t.json()["transfer"]["id"]
    # the haulier sees the pending transfer in its list
    listed = api.http.get("/api/v1/releases", headers=api.as_("haul")).json()["items"]
    assert [x["pending_transfer"]["id"] for x in listed] == [tid]
    a = api.http.post(f"/api/v1/transfers/{tid}/accept", headers=api.as_("haul"))
    assert a.status_code == 200 and a.json()["transfer"]["state"] == "accepted"
    n = api.http.put(f"/api/v1/releases/{rid}/nomination", headers=api.as_("haul"),
                     json={"driver_person_id": str(p.driver), "plate": {"text": "1-ABC-123", "country": "BE"}})
    assert n.status_code == 200, n.text
    assert n.json()["release"]["state"] == "nominated"
    assert n.json()["release"]["nomination"]["plate"] == {"text": "1ABC123", "country": "BE"}
    for who, light in (("customs", "customs"), ("terminal", "terminal")):
        r = api.http.put(f"/api/v1/releases/{rid}/lights/{light}", json={"status": "green"}, headers=api.as_(who))
        assert r.status_code == 200, r.text
    got = api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("line")).json()
    assert got["pickable"] is True
    assert got["holders_chain"] == [str(p.fwd.organisation_id), str(p.haul.organisation_id)]
    events = api.http.get(f"/api/v1/releases/{rid}/events", headers=api.as_("fwd")).json()["items"]
    assert [e["seq"] for e in events] == list(range(1, 7))


def test_idempotency_key_over_http(api: Api) -> None:
    now = datetime.now(UTC)
    body = {"container_number": container(9), "bill_of_lading": "BL", "vessel_call": "VC", "terminal": TERMINAL,
            "release_to_organisation_id": str(api.p.fwd.organisation_id), "valid_from": now.isoformat(),
            "valid_until": (now + timedelta(days=1)).isoformat()}
    headers = {**api.as_("line"), "Idempotency-Key": "abc-123"}
    first = api.http.post("/api/v1/releases", json=body, headers=headers)
    second = api.http.post("/api/v1/releases", json=body, headers=headers)
    assert first.status_code == second.status_code == 201 and first.json() == second.json()
    assert_problem(api.http.post("/api/v1/releases", json={**body, "bill_of_lading": "other"}, headers=headers),
                   422, "idempotency_key_reused")
    with api.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(releases)).scalar_one() == 1


@pytest.mark.parametrize(
    "field,value,code",
    [("container_number", "CSQU3054384", "container_check_digit"),
     ("container_number", "CSQX3054383", "container_number_malformed"),
     ("release_to_organisation_id", str(uuid.UUID(int=1)), "unknown_organisation"),
     ("valid_until", "2020-01-01T00:00:00+00:00", "invalid_validity_window"),
     ("valid_from", "2026-01-01T00:00:00", "invalid_request")],
)
def test_bad_issue_input(api: Api, field: str, value: str, code: str) -> None:
    now = datetime.now(UTC)
    body = {"container_number": container(1), "bill_of_lading": "BL", "vessel_call": "VC", "terminal": TERMINAL,
            "release_to_organisation_id": str(api.p.fwd.organisation_id), "valid_from": now.isoformat(),
            "valid_until": (now + timedelta(days=1)).isoformat(), field: value}
    assert_problem(api.http.post("/api/v1/releases", json=body, headers=api.as_("line")), 422, code)
    with api.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(releases)).scalar_one() == 0


def test_malformed_json_and_unknown_fields(api: Api) -> None:
    r = api.http.post("/api/v1/releases", content=b"{not json", headers={**api.as_("line"),
                                                                         "Content-Type": "application/json"})
    assert_problem(r, 400, "malformed_json")
    r = api.http.post("/api/v1/releases:batch", json={"releases": [], "extra": 1}, headers=api.as_("line"))
    assert_problem(r, 422, "invalid_request")


def test_wrong_party_actions(api: Api) -> None:
    p = api.p
    rid = api.issue()["release"]["id"]
    assert_problem(api.http.post(f"/api/v1/releases/{rid}/transfers", headers=api.as_("line"),
                                 json={"to_organisation_id": str(p.haul.organisation_id)}), 403, "not_holder")
    tid = api.http.post(f"/api/v1/releases/{rid}/transfers", headers=api.as_("fwd"),
                        json={"to_organisation_id": str(p.haul.organisation_id)}).json()["transfer"]["id"]
    assert_problem(api.http.post(f"/api/v1/transfers/{tid}/accept", headers=api.as_("fwd")), 403, "not_recipient")
    assert_problem(api.http.post(f"/api/v1/transfers/{tid}/accept", headers=api.as_("haul2")), 404, "not_found")
    assert api.http.post(f"/api/v1/transfers/{tid}/accept", headers=api.as_("haul")).status_code == 200
    assert_problem(api.http.post(f"/api/v1/transfers/{tid}/withdraw", headers=api.as_("fwd")), 409,
                   "transfer_not_pending")
    assert_problem(api.http.put(f"/api/v1/releases/{rid}/nomination", headers=api.as_("fwd"),
                                json={"driver_person_id": str(p.driver),
                                      "plate": {"text": "1ABC123", "country": "BE"}}),
                   403, "wrong_organisation_kind")
    assert_problem(api.http.post(f"/api/v1/releases/{rid}/revoke", headers=api.as_("haul")), 403, "not_issuer")
    assert_problem(api.http.put(f"/api/v1/releases/{rid}/lights/customs", headers=api.as_("line"),
                                json={"status": "green"}), 403, "not_light_owner")
    revoked = api.http.post(f"/api/v1/releases/{rid}/revoke", headers=api.as_("line"), json={"reason": "x"})
    assert revoked.status_code == 200
    assert_problem(api.http.post(f"/api/v1/releases/{rid}/block", headers=api.as_("line")), 409, "illegal_transition")
    with api.engine.connect() as conn:
        types = conn.execute(sa.select(release_events.c.type).order_by(release_events.c.seq)).scalars().all()
    assert types == ["release.issued", "release.transfer.requested", "release.transfer.accepted", "release.revoked"]


@pytest.mark.parametrize(("path", "size"), [
    ("/api/v1/releases", 1024 * 1024 + 1),  # any route: 1 MiB (Settings.max_body_bytes)
    ("/api/v1/releases:batch", 16 * 1024 * 1024 + 1),  # quaygate/limits.py: a batch of 10 000 rights
    ("/gate/v1/verify", 8 * 1024 * 1024 + 64 * 1024 + 1),  # a face image in its JSON
    ("/oauth2/token", 1024 * 1024 + 1),  # called without FastAPI's handler (quaygate/routing.py)
])
@pytest.mark.parametrize(("signed_in", "chunked"), [(True, False), (False, False), (False, True)])
def test_a_body_past_its_routes_limit_is_refused_before_it_is_read_whole(api: Api, path: str, size: int,
                                                                         signed_in: bool, chunked: bool) -> None:
    """Without a limit, anyone could make the server hold a body of any size (a criminal's cheap
    outage): past its route's limit, a body is refused 413 body_too_large, whoever sends it, whether
    its length is announced (refused unread) or it comes in chunks (refused once past the limit)."""
    headers = {**(api.as_("line") if signed_in else {}), "content-type": "application/json"}
    body = b"{" + b" " * (size - 2) + b"}"
    step = 256 * 1024
    r = api.http.post(path, content=iter([body[i:i + step] for i in range(0, len(body), step)]) if chunked
                      else body, headers=headers)
    if path != "/oauth2/token" and chunked:  # no token: refused on its headers, before the body is read
        assert r.status_code == 401 and r.json()["code"] in ("invalid_request", "invalid_token"), r.text
    else:
        assert_problem(r, 413, "body_too_large")
    small = api.http.post(path, content=b"{" + b" " * 1000 + b"}", headers=headers)
    assert small.status_code != 413, small.text  # the limit is the route's, not any body's


def test_oversized_batch(api: Api) -> None:
    now = datetime.now(UTC)
    item = {"container_number": container(1), "bill_of_lading": "BL", "vessel_call": "VC", "terminal": TERMINAL,
            "release_to_organisation_id": str(api.p.fwd.organisation_id), "valid_from": now.isoformat(),
            "valid_until": (now + timedelta(days=1)).isoformat()}
    r = api.http.post("/api/v1/releases:batch", json={"releases": [item] * 10_001}, headers=api.as_("line"))
    assert_problem(r, 413, "batch_too_large")


def test_missing_and_foreign_tokens(api: Api) -> None:
    rid = api.issue()["release"]["id"]
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwYXNz"},
                    {"Authorization": "Bearer not.a.jwt"}):
        r = api.http.get(f"/api/v1/releases/{rid}", headers=headers)
        assert r.status_code == 401 and r.json()["code"] in ("invalid_request", "invalid_token"), r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
    # a token signed by somebody else's key, with our claims
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    foreign = RSAKey.generate_key(2048, parameters={"kid": "foreign"})
    now = int(datetime.now(UTC).timestamp())
    forged = jwt.encode({"alg": "RS256", "kid": "foreign", "typ": "at+jwt"},
                        {"iss": "http://localhost:8000", "aud": "quaygate-api", "sub": "x", "client_id": "x",
                         "exp": now + 300, "iat": now, "jti": "j", "scope": "releases:read releases:write",
                         "org": str(api.p.line.organisation_id), "org_kind": "shipping_line"}, foreign)
    assert_problem(api.http.get(f"/api/v1/releases/{rid}", headers={"Authorization": f"Bearer {forged}"}),
                   401, "invalid_token")


def test_gate_token_cannot_use_the_party_api(api: Api) -> None:
    token = api.token_for("terminal_gate", api.p.terminal.organisation_id, TERMINAL)
    r = api.http.post("/api/v1/releases:batch", json={"releases": []}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (401, 403), r.text


def test_cursor_pagination(api: Api) -> None:
    ids = {api.issue(n)["release"]["id"] for n in range(1, 8)}
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = api.http.get("/api/v1/releases", params=params, headers=api.as_("line")).json()
        seen += [x["id"] for x in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 7 and set(seen) == ids
    assert_problem(api.http.get("/api/v1/releases", params={"cursor": "garbage!"}, headers=api.as_("line")),
                   422, "invalid_cursor")


def test_health_ready_metrics(api: Api) -> None:
    assert api.http.get("/healthz").json() == {"status": "ok"}
    ready = api.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "cache": "ok"}
    assert ready.headers["x-request-id"]
    metrics = api.http.get("/metrics").text
    assert 'quaygate_http_requests_total{method="GET",route="/readyz",status="200"}' in metrics
    # any token is a method to an HTTP parser: made-up ones share one series, so nobody grows the metrics
    for made_up in ("FOO1", "FOO2", "FOO3"):
        api.http.request(made_up, "/healthz")
    metrics = api.http.get("/metrics").text
    assert "FOO" not in metrics
    assert 'quaygate_http_requests_total{method="OTHER",route="/healthz",status="405"} 3.0' in metrics


def test_terminal_sees_only_its_terminal(api: Api) -> None:
    api.issue(1)
    other = add_org(api.engine, OrgKind.TERMINAL, terminal_code="BEANR-K913")
    token = api.token_for("terminal_operator", other.organisation_id, "BEANR-K913")
    r = api.http.get("/api/v1/releases", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["items"] == []
    assert len(api.http.get("/api/v1/releases", headers=api.as_("terminal")).json()["items"]) == 1


def test_with_a_ban_register_configured_a_nomination_needs_a_list_in_force(engine: sa.Engine,
                                                                           tmp_path: Path) -> None:
    """Issue 4: once the port-ban register's key is configured, the release API fails closed when no
    ban list is in force (screening unavailable), rather than nominating unscreened drivers."""
    from tests.ban_register import Register

    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        background_workers=False, ban_register_jwk=Register().public_jwk)
    c = Container(settings=settings, engine=engine, cache=MemoryCache(),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    with TestClient(create_app(settings, container=c)) as http:
        api = Api(http, engine)
        rid = api.issue(release_to_organisation_id=str(api.p.haul.organisation_id))["release"]["id"]
        r = http.put(f"/api/v1/releases/{rid}/nomination", headers=api.as_("haul"),
                     json={"driver_person_id": str(api.p.driver), "plate": {"text": "1-ABC-123", "country": "BE"}})
        assert_problem(r, 409, "driver_screening_failed")
        assert r.json()["screening"] == "unavailable" and r.json()["reasons"] == ["screening_unavailable"]


def test_a_failure_of_the_service_is_a_500_problem_that_tells_nothing_of_it(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from release_service.services import queries

    right = api.issue(901)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the secret inside of the failure")

    monkeypatch.setattr(queries, "get", broken)
    quiet = TestClient(api.http.app, raise_server_exceptions=False)
    r = quiet.get(f"/api/v1/releases/{right['release']['id']}", headers=api.as_("line"))
    assert_problem(r, 500, "internal_error")
    assert "secret" not in r.text


def test_a_database_that_does_not_answer_is_a_503_problem_with_retry_after(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from release_service.services import queries

    right = api.issue(902)

    def lost(*args: Any, **kwargs: Any) -> Any:
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(queries, "get", lost)
    r = api.http.get(f"/api/v1/releases/{right['release']['id']}", headers=api.as_("line"))
    assert_problem(r, 503, "service_unavailable")
    assert r.headers["retry-after"] == "1" and "closed the connection" not in r.text


@pytest.mark.parametrize(("error", "status"), [
    (redis_errors.ConnectionError("Connection refused"), 503),
    (redis_errors.TimeoutError("Timeout reading from socket"), 503),
    (redis_errors.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."), 503),
    (redis_errors.ReadOnlyError("READONLY You can't write against a read only replica."), 503),
    (redis_errors.ResponseError("BUSY Redis is busy running a script."), 503),
    (redis_errors.ResponseError("ERR Error running script (call to f_0123): @user_script:3: bad argument"), 500),
    (redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), 500),
    (redis_errors.DataError("Invalid input of type: 'NoneType'."), 500),
], ids=["connection", "timeout", "oom", "readonly", "busy", "script-error", "wrongtype", "data-error"])
def test_a_redis_that_passes_is_a_503_and_a_redis_error_of_ours_a_500(
        api: Api, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int) -> None:
    """A client sends again after a 503 (Retry-After: 1): right when Redis is away, full or busy, a retry
    loop when the call itself is wrong (a script's bug, a wrong type, a value redis-py cannot send),
    which no retry mends: that is a 500. Nothing of the error goes out."""
    from release_service.services import queries

    right = api.issue(903)

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(queries, "get", failing)
    r = _quiet(api).get(f"/api/v1/releases/{right['release']['id']}", headers=api.as_("line"))
    assert_problem(r, status, "service_unavailable" if status == 503 else "internal_error")
    assert ("retry-after" in r.headers) == (status == 503)
    assert str(error).split()[0] not in r.text


# ---- values the schema takes but the database cannot store (review 58, finding 3) -------------------


def _quiet(api: Api) -> TestClient:
    return TestClient(api.http.app, raise_server_exceptions=False)


def _post_json(http: TestClient, path: str, body: Any, headers: dict[str, str], method: str = "POST") -> Any:
    """``method`` with ``body`` as JSON (control characters travel escaped, as a client sends them)."""
    return http.request(method, path, content=json.dumps(body).encode(),
                        headers={**headers, "Content-Type": "application/json"})


def _counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (conn.execute(sa.select(sa.func.count()).select_from(releases)).scalar_one(),
                conn.execute(sa.select(sa.func.count()).select_from(release_events)).scalar_one())


@pytest.mark.parametrize("route", ["issue", "update", "nominate"])
def test_a_time_the_database_cannot_store_is_a_422_naming_the_field(api: Api, route: str) -> None:
    """A time past year 9999 or before year 1 once in UTC passed every rule and then overflowed in the
    column type: a 500. Every time of the party API is now refused as input, naming its field."""
    haul = str(api.p.haul.organisation_id)
    rid = api.issue(1, release_to_organisation_id=haul)["release"]["id"]
    before = _counts(api.engine)
    now = datetime.now(UTC)
    if route == "issue":
        r = _quiet(api).post("/api/v1/releases", headers=api.as_("line"), json={
            "container_number": container(2), "bill_of_lading": "BL", "vessel_call": "VC", "terminal": TERMINAL,
            "release_to_organisation_id": haul, "valid_from": "9999-12-01T00:00:00-05:00",
            "valid_until": "9999-12-31T23:00:00-05:00"})
        fields = {("body", "valid_from"), ("body", "valid_until")}
    elif route == "update":
        r = _quiet(api).patch(f"/api/v1/releases/{rid}", headers=api.as_("line"), json={
            "valid_from": "9999-12-01T00:00:00-05:00", "valid_until": "9999-12-31T23:00:00-05:00"})
        fields = {("body", "valid_from"), ("body", "valid_until")}
    else:
        r = _quiet(api).put(f"/api/v1/releases/{rid}/nomination", headers=api.as_("haul"), json={
            "driver_person_id": str(api.p.driver), "plate": {"text": "1-ABC-123", "country": "BE"},
            "slot": {"start": "0001-01-01T00:00:00+01:00", "end": (now + timedelta(hours=2)).isoformat()}})
        fields = {("body", "slot", "start")}
    assert_problem(r, 422, "invalid_request")
    assert {tuple(e["loc"]) for e in r.json()["errors"]} == fields
    assert _counts(api.engine) == before  # nothing written
    assert api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("line")).json()["state"] == "active"


def test_a_time_the_api_takes_is_put_in_utc(api: Api) -> None:
    until = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0).astimezone(timezone(timedelta(hours=-5)))
    rid = api.issue(3)["release"]["id"]
    r = api.http.patch(f"/api/v1/releases/{rid}", headers=api.as_("line"), json={"valid_until": until.isoformat()})
    assert r.status_code == 200, r.text
    assert r.json()["release"]["valid_until"] == until.astimezone(UTC).isoformat()


BAD_ITEMS: dict[str, tuple[dict[str, str], str, str | None]] = {
    # what the batch has always done with an item the rules refuse: that item alone, by its index
    "wrong_check_digit": ({"container_number": "CSQU3054384"}, "container_check_digit", None),
    "window_past_year_9999_in_utc": ({"valid_from": "9999-12-01T00:00:00-05:00",
                                     "valid_until": "9999-12-31T23:00:00-05:00"}, "invalid_validity_window",
                                    "valid_from"),
    "window_past_what_is_stored": ({"valid_from": "9500-01-01T00:00:00+00:00",
                                   "valid_until": "9500-01-31T00:00:00+00:00"}, "invalid_validity_window",
                                  "valid_from"),
    "nul_in_bill_of_lading": ({"bill_of_lading": "BL-\x0012"}, "invalid_text", "bill_of_lading"),
    "escape_in_vessel_call": ({"vessel_call": "VC-\x1b[2J"}, "invalid_text", "vessel_call"),
    "terminal_longer_once_upper": ({"terminal": "\u00df" * 32}, "invalid_text", "terminal"),
}


@pytest.mark.parametrize("bad", list(BAD_ITEMS))
def test_a_batch_refuses_a_bad_item_alone_and_names_it(api: Api, bad: str) -> None:
    """"Each item succeeds or fails on its own": a value the database cannot store failed the batch's one
    INSERT (422 for all, not saying which item) or overflowed (500). It is now refused with the item's
    other rules, as a wrong check digit always was: by its index and field, the rest issued."""
    change, code, field = BAD_ITEMS[bad]
    now = datetime.now(UTC)

    def item(n: int, **extra: str) -> dict[str, str]:
        return {"container_number": container(n), "bill_of_lading": f"BL-{n}", "vessel_call": "VC-1",
                "terminal": TERMINAL, "release_to_organisation_id": str(api.p.fwd.organisation_id),
                "valid_from": (now - timedelta(hours=1)).isoformat(),
                "valid_until": (now + timedelta(days=3)).isoformat(), **extra}

    r = _post_json(_quiet(api), "/api/v1/releases:batch", {"releases": [item(1), item(2, **change), item(3)]},
                   api.as_("line"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["created"], body["refused"]) == (2, 1)
    assert [(i["index"], i["release_id"] is not None) for i in body["items"]] == [(0, True), (1, False), (2, True)]
    error = body["items"][1]["error"]
    assert (error["code"], error.get("field")) == (code, field), error
    assert _counts(api.engine)[0] == 2


@pytest.mark.parametrize("field,value", [("bill_of_lading", "BL-\x0012"), ("vessel_call", "VC-\x1b[2J"),
                                         ("terminal", "\u00df" * 32)], ids=["nul", "escape", "longer_once_upper"])
def test_an_issue_with_a_text_the_database_cannot_store_is_refused_naming_the_field(
        api: Api, field: str, value: str) -> None:
    now = datetime.now(UTC)
    body = {"container_number": container(1), "bill_of_lading": "BL", "vessel_call": "VC", "terminal": TERMINAL,
            "release_to_organisation_id": str(api.p.fwd.organisation_id), "valid_from": now.isoformat(),
            "valid_until": (now + timedelta(days=1)).isoformat(), field: value}
    r = _post_json(_quiet(api), "/api/v1/releases", body, api.as_("line"))
    assert_problem(r, 422, "invalid_text")
    assert r.json()["field"] == field
    assert _counts(api.engine) == (0, 0)


@pytest.mark.parametrize("route", ["update_bill_of_lading", "light_reason", "block_reason", "badge_number"])
def test_other_texts_the_database_cannot_store_are_refused_naming_the_field(api: Api, route: str) -> None:
    """A NUL is refused by PostgreSQL (a 422 that named nothing); other control characters are stored
    and forge lines wherever the text is shown or logged."""
    rid = api.issue(1, release_to_organisation_id=str(api.p.haul.organisation_id))["release"]["id"]
    before = _counts(api.engine)
    quiet = _quiet(api)
    if route == "update_bill_of_lading":
        r = _post_json(quiet, f"/api/v1/releases/{rid}", {"bill_of_lading": "BL-\x0012"}, api.as_("line"), "PATCH")
        assert_problem(r, 422, "invalid_text")
        assert r.json()["field"] == "bill_of_lading"
    else:
        if route == "light_reason":
            r = _post_json(quiet, f"/api/v1/releases/{rid}/lights/commercial",
                           {"status": "red", "reason": "unpaid\x1b[2J"}, api.as_("line"), "PUT")
            loc = ["body", "reason"]
        elif route == "block_reason":
            r = _post_json(quiet, f"/api/v1/releases/{rid}/block", {"reason": "fraud\x00"}, api.as_("line"))
            loc = ["body", "reason"]
        else:
            r = _post_json(quiet, f"/api/v1/releases/{rid}/nomination",
                           {"badge": {"scheme": "alfapass", "number": "AP-\x001"},
                            "plate": {"text": "1-ABC-123", "country": "BE"}}, api.as_("haul"), "PUT")
            loc = ["body", "badge", "number"]
        assert_problem(r, 422, "invalid_request")
        assert [e["loc"] for e in r.json()["errors"]] == [loc]
    assert _counts(api.engine) == before


@pytest.mark.parametrize("at", ["2020-01-01T00:00:00", "0001-01-01T00:00:00+01:00", "9500-01-01T00:00:00+00:00"],
                         ids=["without_a_time_zone", "before_year_1_in_utc", "past_what_is_stored"])
def test_a_cursor_whose_time_this_api_never_gives_out_is_invalid_cursor(api: Api, at: str) -> None:
    api.issue(1)
    raw = base64.urlsafe_b64encode(f"{at}|{uuid.UUID(int=7)}".encode()).decode().rstrip("=")
    assert_problem(_quiet(api).get("/api/v1/releases", params={"cursor": raw}, headers=api.as_("line")),
                   422, "invalid_cursor")


def test_a_value_the_column_type_refuses_is_a_422_and_any_other_statement_error_a_500(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last line behind the input rules: with the cursor's check taken away, its time reaches the
    column type, whose refusal (UnstorableValue inside SQLAlchemy's StatementError) is the request's
    fault; another statement error is still the service's, a 500 that tells nothing of it."""
    from release_service.domain import storable
    from release_service.services import queries

    right = api.issue(1)
    monkeypatch.setattr(storable, "utc_time", lambda at: at)
    raw = base64.urlsafe_b64encode(f"0001-01-01T00:00:00+01:00|{uuid.UUID(int=7)}".encode()).decode().rstrip("=")
    assert_problem(_quiet(api).get("/api/v1/releases", params={"cursor": raw}, headers=api.as_("line")),
                   422, "invalid_request")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise sa.exc.IntegrityError("INSERT INTO secret_table", {}, Exception("duplicate key: the secret"))

    monkeypatch.setattr(queries, "get", broken)
    r = _quiet(api).get(f"/api/v1/releases/{right['release']['id']}", headers=api.as_("line"))
    assert_problem(r, 500, "internal_error")
    assert "secret" not in r.text


def test_a_caller_that_may_not_issue_learns_nothing_of_the_organisation_it_names(api: Api) -> None:
    """Review 110: a forwarder's POST /releases answered 422 unknown_organisation for a made-up id and
    403 wrong_organisation_kind for a real one: an oracle for organisation ids. The caller's kind is
    judged first: one answer, whatever it names."""
    p = api.p
    with api.engine.begin() as conn:
        conn.execute(organisations.update().where(organisations.c.id == p.haul2.organisation_id).values(active=False))
    now = datetime.now(UTC)
    answers = set()
    for named in (uuid.uuid4(), p.terminal.organisation_id, p.haul.organisation_id, p.haul2.organisation_id):
        r = api.http.post("/api/v1/releases", headers=api.as_("fwd"), json={
            "container_number": container(7), "bill_of_lading": "BL-7", "vessel_call": "VC-1", "terminal": TERMINAL,
            "release_to_organisation_id": str(named), "valid_from": (now - timedelta(hours=1)).isoformat(),
            "valid_until": (now + timedelta(days=1)).isoformat()})
        assert_problem(r, 403, "wrong_organisation_kind")
        answers.add(r.json()["detail"])
    assert len(answers) == 1

"""The driver answers a nomination over HTTP: his own only, before gate-in, seen by him and the operator."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from identity.bootstrap import provider_for
from identity.domain.assurance import ACR_PASSKEY
from identity.tokens import sign_access_token
from quaygate.app import create_app
from quaygate.cache import MemoryCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import audit_log, release_events, webhook_deliveries, webhook_subscriptions
from quaygate.settings import Settings

from .factories import add_driver
from .test_release_api import Api, assert_problem


class DriverApi(Api):
    def driver(self, person_id: uuid.UUID, scope: str = "openid releases:read nominations:respond",
               acr: str | None = ACR_PASSKEY) -> dict[str, str]:
        """A driver app's access token for a person, as the code flow issues it (no organisation)."""
        app: Any = self.http.app
        provider = provider_for(app)
        now = int(time.time())
        claims = {"iss": provider.settings.issuer, "sub": str(person_id), "aud": provider.settings.api_audience,
                  "exp": now + 300, "iat": now, "nbf": now, "jti": uuid.uuid4().hex, "client_id": "driver-app",
                  "scope": scope, "role": "driver_app", "person_id": str(person_id), "auth_time": now}
        if acr is not None:
            claims["acr"] = acr
        return {"Authorization": "Bearer " + sign_access_token(claims, provider.keys.signing_key())}

    def nominated(self, n: int = 1, driver: uuid.UUID | None = None) -> str:
        rid = str(self.issue(n, release_to_organisation_id=str(self.p.haul.organisation_id))["release"]["id"])
        self.nominate(rid, driver or self.p.driver)
        return rid

    def nominate(self, rid: str, driver: uuid.UUID) -> dict[str, Any]:
        r = self.http.put(f"/api/v1/releases/{rid}/nomination", headers=self.as_("haul"),
                          json={"driver_person_id": str(driver), "plate": {"text": "1-ABC-123", "country": "BE"}})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def api(engine: sa.Engine, tmp_path: Path) -> Iterator[DriverApi]:
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        background_workers=False)
    c = Container(settings=settings, engine=engine, cache=MemoryCache(),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    with TestClient(create_app(settings, container=c)) as http:
        yield DriverApi(http, engine)


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    return body["nomination"]["driver_response"]  # type: ignore[no-any-return]


def test_the_driver_accepts_and_everyone_sees_it(api: DriverApi) -> None:
    rid = api.nominated()
    me = api.driver(api.p.driver)
    mine = api.http.get("/api/v1/releases", headers=me).json()["items"]
    assert [x["id"] for x in mine] == [rid] and _answer(mine[0]) == {"status": "pending", "reason": None, "at": None}
    assert mine[0]["gate"] == {"status": "not_yet", "gate_in_at": None, "gate_out_at": None}
    r = api.http.post(f"/api/v1/releases/{rid}/nomination:accept", headers=me)
    assert r.status_code == 200, r.text
    assert r.json()["receipt"]["action"] == "release.nomination.accepted"
    assert _answer(r.json()["release"])["status"] == "accepted"
    assert _answer(api.http.get(f"/api/v1/releases/{rid}", headers=me).json())["status"] == "accepted"
    # the operator sees the answer in its own list
    listed = api.http.get("/api/v1/releases", headers=api.as_("haul")).json()["items"]
    assert [_answer(x)["status"] for x in listed if x["id"] == rid] == ["accepted"]


def test_the_driver_refuses_with_a_reason_and_the_operator_renominates(api: DriverApi) -> None:
    rid = api.nominated()
    me = api.driver(api.p.driver)
    r = api.http.post(f"/api/v1/releases/{rid}/nomination:refuse", headers=me, json={"reason": "unavailable"})
    assert r.status_code == 200, r.text
    got = api.http.get(f"/api/v1/releases/{rid}", headers=api.as_("haul")).json()
    assert _answer(got)["status"] == "refused" and _answer(got)["reason"] == "unavailable"
    assert got["nomination"]["driver_person_id"] == str(api.p.driver) and got["state"] == "nominated"
    # a free-text or unknown reason is refused by the schema (no personal data travels to the operator)
    assert_problem(api.http.post(f"/api/v1/releases/{rid}/nomination:refuse", headers=me,
                                 json={"reason": "my wife is ill"}), 422, "invalid_request")
    # the operator nominates again: the answer is pending once more and the driver may accept
    assert _answer(api.nominate(rid, api.p.driver)["release"])["status"] == "pending"
    assert _answer(api.http.get(f"/api/v1/releases/{rid}", headers=me).json())["status"] == "pending"
    r = api.http.post(f"/api/v1/releases/{rid}/nomination:accept", headers=me)
    assert r.status_code == 200, r.text
    with api.engine.connect() as conn:
        types = conn.execute(sa.select(release_events.c.type).where(release_events.c.release_id == uuid.UUID(rid))
                             .order_by(release_events.c.seq)).scalars().all()
        audited = conn.execute(sa.select(audit_log.c.kind).where(audit_log.c.subject == rid)).scalars().all()
    assert types[-3:] == ["release.nomination.refused", "release.renominated", "release.nomination.accepted"]
    assert {"release.nomination.refused", "release.nomination.accepted"} <= set(audited)


def test_a_refusal_without_a_body_and_twice(api: DriverApi) -> None:
    rid = api.nominated()
    me = api.driver(api.p.driver)
    r = api.http.post(f"/api/v1/releases/{rid}/nomination:refuse", headers=me)
    assert r.status_code == 200 and _answer(r.json()["release"])["reason"] == "other", r.text
    assert_problem(api.http.post(f"/api/v1/releases/{rid}/nomination:refuse", headers=me), 409, "illegal_transition")
    assert_problem(api.http.post(f"/api/v1/releases/{rid}/nomination:accept", headers=me), 409, "illegal_transition")


def test_idempotency_key_replays_the_answer(api: DriverApi) -> None:
    rid = api.nominated()
    headers = {**api.driver(api.p.driver), "Idempotency-Key": "k-1"}
    first = api.http.post(f"/api/v1/releases/{rid}/nomination:accept", headers=headers)
    second = api.http.post(f"/api/v1/releases/{rid}/nomination:accept", headers=headers)
    assert first.status_code == second.status_code == 200 and first.json() == second.json()
    with api.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(release_events).where(
            release_events.c.type == "release.nomination.accepted")).scalar_one() == 1


def test_an_idempotency_key_is_one_person_s_own(api: DriverApi) -> None:
    """Every driver signs in through the one driver app: another driver sending the same key to the
    same path must not be handed the first one's answer (the right, its plate and slot), nor block him."""
    rid = api.nominated()
    other = add_driver(api.engine, api.p.haul.organisation_id, number="AP-999999")  # type: ignore[arg-type]
    mine = api.http.post(f"/api/v1/releases/{rid}/nomination:accept",
                         headers={**api.driver(api.p.driver), "Idempotency-Key": "k-shared"})
    assert mine.status_code == 200, mine.text
    theirs = api.http.post(f"/api/v1/releases/{rid}/nomination:accept",
                           headers={**api.driver(other), "Idempotency-Key": "k-shared"})
    assert_problem(theirs, 404, "not_found")


def test_another_driver_gets_404(api: DriverApi) -> None:
    rid = api.nominated()
    other = add_driver(api.engine, api.p.haul.organisation_id, number="AP-999999")  # type: ignore[arg-type]
    them = api.driver(other)
    for action in ("accept", "refuse"):
        assert_problem(api.http.post(f"/api/v1/releases/{rid}/nomination:{action}", headers=them), 404, "not_found")
    assert_problem(api.http.get(f"/api/v1/releases/{rid}", headers=them), 404, "not_found")
    assert api.http.get("/api/v1/releases", headers=them).json()["items"] == []
    # an unknown right looks the same
    assert_problem(api.http.post(f"/api/v1/releases/{uuid.uuid4()}/nomination:accept",
                                 headers=api.driver(api.p.driver)), 404, "not_found")


@pytest.mark.parametrize("who", ["haul", "line", "fwd", "customs", "terminal"])
def test_party_machine_tokens_cannot_answer(api: DriverApi, who: str) -> None:
    rid = api.nominated()
    r = api.http.post(f"/api/v1/releases/{rid}/nomination:accept", headers=api.as_(who))
    assert_problem(r, 403, "insufficient_scope")
    assert 'scope="nominations:respond"' in r.headers["www-authenticate"]


def test_a_driver_token_without_the_scope_cannot_answer(api: DriverApi) -> None:
    rid = api.nominated()
    r = api.http.post(f"/api/v1/releases/{rid}/nomination:accept",
                      headers=api.driver(api.p.driver, scope="openid releases:read"))
    assert_problem(r, 403, "insufficient_scope")
    assert_problem(api.http.post(f"/api/v1/releases/{rid}/nomination:accept"), 401, "invalid_request")


def test_a_driver_token_without_a_passkey_login_must_step_up(api: DriverApi) -> None:
    rid = api.nominated()
    r = api.http.post(f"/api/v1/releases/{rid}/nomination:accept", headers=api.driver(api.p.driver, acr=None))
    assert_problem(r, 401, "insufficient_user_authentication")
    assert 'acr_values="urn:quaygate:acr:passkey"' in r.headers["www-authenticate"]
    # reading stays open to him
    assert api.http.get(f"/api/v1/releases/{rid}", headers=api.driver(api.p.driver, acr=None)).status_code == 200


def test_no_answer_after_gate_in_and_the_gate_result_is_shown(api: DriverApi) -> None:
    from release_service.adapters.sqla.uow import SqlUnitOfWork
    from release_service.services import gate

    rid = api.nominated()
    for who, light in (("customs", "customs"), ("terminal", "terminal")):
        assert api.http.put(f"/api/v1/releases/{rid}/lights/{light}", json={"status": "green"},
                            headers=api.as_(who)).status_code == 200
    uow = SqlUnitOfWork(api.engine)
    with uow:
        gate.gate_in(uow, api.p.terminal, uuid.UUID(rid), uuid.uuid4(), datetime.now(UTC))
        uow.commit()
    me = api.driver(api.p.driver)
    for action in ("accept", "refuse"):
        assert_problem(api.http.post(f"/api/v1/releases/{rid}/nomination:{action}", headers=me), 409, "already_used")
    got = api.http.get(f"/api/v1/releases/{rid}", headers=me).json()
    assert got["gate"]["status"] == "in" and got["gate"]["gate_in_at"] is not None


def test_a_refused_nomination_is_not_admitted_at_the_gate(api: DriverApi) -> None:
    from release_service.adapters.sqla.uow import SqlUnitOfWork
    from release_service.domain.errors import DomainError
    from release_service.services.gate import gate_in

    rid = api.nominated()
    for who, light in (("customs", "customs"), ("terminal", "terminal")):
        api.http.put(f"/api/v1/releases/{rid}/lights/{light}", json={"status": "green"}, headers=api.as_(who))
    api.http.post(f"/api/v1/releases/{rid}/nomination:refuse", headers=api.driver(api.p.driver))
    uow = SqlUnitOfWork(api.engine)
    with uow, pytest.raises(DomainError) as err:  # the real gate use case, on the stored right
        gate_in(uow, api.p.terminal, uuid.UUID(rid), uuid.uuid4(), datetime.now(UTC))
    assert err.value.context["reason"] == "nomination_refused"
    assert api.http.get(f"/api/v1/releases/{rid}", headers=api.driver(api.p.driver)).json()["state"] == "nominated"


def test_answers_reach_the_parties_webhooks(api: DriverApi) -> None:
    rid = api.nominated()
    sub = api.http.post("/api/v1/webhooks", headers=api.as_("haul"),
                        json={"url": "https://hooks.example.com/q", "event_types": ["release.nomination.*"]})
    assert sub.status_code in (200, 201), sub.text
    api.http.post(f"/api/v1/releases/{rid}/nomination:accept", headers=api.driver(api.p.driver))
    with api.engine.connect() as conn:
        rows = conn.execute(sa.select(webhook_deliveries.c.event_type).join(
            webhook_subscriptions, webhook_subscriptions.c.id == webhook_deliveries.c.subscription_id)
            .where(webhook_subscriptions.c.organisation_id == api.p.haul.organisation_id)).scalars().all()
    assert rows == ["release.nomination.accepted"]

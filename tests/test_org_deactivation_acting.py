"""A deactivated organisation acts no more, through any write route, even with a token issued before the
deactivation (review 77; issue 4). Driven over HTTP as its back end does, on PostgreSQL and Redis.

Port security's deactivation revokes the organisation's tokens (tests/test_org_deactivation.py), but a
resource server may still trust one for a while: its revocation list is served from a cache. These tests
stand in that window: the organisation's row is deactivated and its token is not (yet) revoked. Every
write is then refused with the 409 ``organisation_inactive`` problem and writes nothing at all: no event,
no receipt, no audit entry, no webhook delivery, no idempotency record. Once it is active again, the very
same call, with the same token and the same Idempotency-Key, succeeds and writes: the refusal was the
organisation's state, and a delivery or an audit entry would have been written had the check not held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from quaygate.app import create_app
from quaygate.cache import RedisCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import (
    audit_log,
    gate_decisions,
    gate_overrides,
    idempotency_keys,
    organisations,
    release_events,
    release_parties,
    releases,
    transfers,
    webhook_deliveries,
    webhook_subscriptions,
)
from quaygate.settings import Settings

from .test_gate_verify import Gate
from .test_release_api import assert_problem

# Everything a write may touch: a refused one leaves each of these exactly as it was.
WRITTEN = (releases, release_parties, transfers, release_events, idempotency_keys, audit_log, webhook_subscriptions,
           webhook_deliveries, gate_decisions, gate_overrides)


@pytest.fixture
def env(pg_engine: sa.Engine, redis_url: str, tmp_path: Path) -> Iterator[Gate]:
    """The app on PostgreSQL and Redis (its tokens' revocation list among the cached facts), with the party
    API's organisations and a gate client of the terminal."""
    settings = Settings(var_dir=tmp_path, database_url=pg_engine.url.render_as_string(hide_password=False),
                        redis_url=redis_url, background_workers=False)
    c = Container(settings=settings, engine=pg_engine, cache=RedisCache(redis_url),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    with TestClient(create_app(settings, container=c)) as http:
        yield Gate(http, pg_engine)


def snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {t.name: sorted((tuple(r) for r in conn.execute(sa.select(t)).all()), key=repr) for t in WRITTEN}


def set_active(env: Gate, who: str, active: bool) -> None:
    """Port security's deactivation as a resource server still trusting the old token sees it: the row
    says inactive, and no revocation of the organisation's tokens has reached the token check."""
    org = getattr(env.p, who).organisation_id
    with env.engine.begin() as conn:
        assert conn.execute(organisations.update().where(organisations.c.id == org).values(active=active)).rowcount == 1


def refused_then_done(env: Gate, who: str, call: Callable[[], Any], ok: int) -> None:
    """``call`` made by ``who`` while deactivated: the problem, nothing written. Active again: done."""
    env.as_(who)  # the token, issued while the organisation is active
    set_active(env, who, False)
    before = snapshot(env.engine)
    assert_problem(call(), 409, "organisation_inactive")
    assert snapshot(env.engine) == before
    set_active(env, who, True)
    done = call()
    assert done.status_code == ok, done.text
    after = snapshot(env.engine)
    assert after != before


def subscribe(env: Gate, who: str) -> dict[str, Any]:
    """A webhook subscription of ``who`` to every release event, made through the API."""
    r = env.http.post("/api/v1/webhooks", headers=env.as_(who),
                      json={"url": f"http://127.0.0.1:9/{who}", "event_types": ["release.*"]})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


# ---- the party API: the transfer's two other ends, the line's actions, the lights ----------------------------


@dataclass(frozen=True)
class Case:
    who: str  # the organisation acting (and deactivated)
    method: str
    path: str  # {rid}: a right issued by the line to the forwarder; {tid}: its transfer to the haulier
    body: dict[str, Any] | None = None
    transferred: bool = False  # the forwarder has sent the right on to the haulier (pending)
    blocked: bool = False  # the line has blocked the right


CASES = {
    "decline_transfer": Case("haul", "POST", "/api/v1/transfers/{tid}/decline", {"reason": "not ours"},
                             transferred=True),
    "withdraw_transfer": Case("fwd", "POST", "/api/v1/transfers/{tid}/withdraw", transferred=True),
    "update": Case("line", "PATCH", "/api/v1/releases/{rid}", {"bill_of_lading": "BL-AMENDED"}),
    "block": Case("line", "POST", "/api/v1/releases/{rid}/block", {"reason": "unpaid"}),
    "unblock": Case("line", "POST", "/api/v1/releases/{rid}/unblock", {"reason": "paid"}, blocked=True),
    "revoke": Case("line", "POST", "/api/v1/releases/{rid}/revoke", {"reason": "wrong consignee"}),
    "delete": Case("line", "POST", "/api/v1/releases/{rid}/delete", {"reason": "issued in error"}),
    "commercial_light": Case("line", "PUT", "/api/v1/releases/{rid}/lights/commercial", {"status": "red"}),
    "customs_light": Case("customs", "PUT", "/api/v1/releases/{rid}/lights/customs", {"status": "scan"}),
    "terminal_light": Case("terminal", "PUT", "/api/v1/releases/{rid}/lights/terminal",
                           {"status": "red", "reason": "not discharged"}),
}


@pytest.mark.parametrize("name", CASES)
def test_a_deactivated_organisation_changes_no_right(env: Gate, name: str) -> None:
    case = CASES[name]
    for who in ("line", "fwd", "haul"):  # every party of the right hears of its events by webhook
        subscribe(env, who)
    rid = env.issue()["release"]["id"]
    tid = None
    if case.transferred:
        t = env.http.post(f"/api/v1/releases/{rid}/transfers", headers=env.as_("fwd"),
                          json={"to_organisation_id": str(env.p.haul.organisation_id)})
        assert t.status_code == 201, t.text
        tid = t.json()["transfer"]["id"]
    if case.blocked:
        assert env.http.post(f"/api/v1/releases/{rid}/block", headers=env.as_("line")).status_code == 200
    path = case.path.format(rid=rid, tid=tid)
    headers = {**env.as_(case.who), "Idempotency-Key": f"review-77-{name}"}
    refused_then_done(env, case.who, lambda: env.http.request(case.method, path, json=case.body, headers=headers),
                      200)


# ---- webhooks: every change of a subscription, and a redelivery -------------------------------------------


def _dead_delivery(env: Gate) -> str:
    """A delivery to the forwarder's endpoint, dead as the dispatcher leaves it after its last retry."""
    subscribe(env, "fwd")
    env.issue()
    with env.engine.begin() as conn:
        did = conn.execute(sa.select(webhook_deliveries.c.id)).scalar_one()
        conn.execute(webhook_deliveries.update().values(status="dead", attempts=8, last_error="HTTP 500"))
    return str(did)


WEBHOOK_CASES: dict[str, tuple[Callable[[Gate], tuple[str, str, dict[str, Any] | None]], int]] = {
    "create": (lambda env: ("POST", "/api/v1/webhooks",
                            {"url": "http://127.0.0.1:9/hooks", "event_types": ["release.revoked"]}), 201),
    "delete": (lambda env: ("DELETE", f"/api/v1/webhooks/{subscribe(env, 'fwd')['id']}", None), 204),
    "rotate_secret": (lambda env: ("POST", f"/api/v1/webhooks/{subscribe(env, 'fwd')['id']}/rotate-secret", None),
                      200),
    "redeliver": (lambda env: ("POST", f"/api/v1/webhooks/dead-letters/{_dead_delivery(env)}/redeliver", None), 200),
}


@pytest.mark.parametrize("name", WEBHOOK_CASES)
def test_a_deactivated_organisation_changes_no_webhook(env: Gate, name: str) -> None:
    setup, ok = WEBHOOK_CASES[name]
    method, path, body = setup(env)
    refused_then_done(env, "fwd", lambda: env.http.request(method, path, json=body, headers=env.as_("fwd")), ok)


# ---- the gate: a terminal's override is its own word -------------------------------------------------------


def test_a_deactivated_terminal_overrides_no_refusal(env: Gate) -> None:
    """The gate client of a deactivated terminal organisation lets no refused truck in; the refusal,
    recorded before, stays as it was and can be overridden once the terminal is active again."""
    subscribe(env, "haul")
    rid = env.pickable(1)
    refused = env.verify(env.body(1, mode="commit", plate={"text": "9ZZZ999", "country": "BE", "confidence": 0.99}))
    assert (refused.json()["decision"], refused.json()["reasons"]) == ("deny", ["plate_mismatch"]), refused.text
    decision = {"decision_id": refused.json()["decision_id"], "reason": "plate checked at the desk"}

    def override() -> Any:
        return env.http.post("/gate/v1/overrides", json=decision, headers={"Authorization": f"Bearer {env.gate_token}"})

    refused_then_done(env, "terminal", override, 201)
    assert env.state(rid) == "gated_in"
    with env.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(gate_overrides)).scalar_one() == 1


def test_the_refusal_is_the_same_problem_as_before_review_77(env: Gate) -> None:
    """The routes checked before (here: a transfer sent onward) answer as the ones added: one problem."""
    rid = env.issue()["release"]["id"]
    body = {"to_organisation_id": str(env.p.haul.organisation_id)}
    refused_then_done(env, "fwd", lambda: env.http.post(f"/api/v1/releases/{rid}/transfers", json=body,
                                                        headers=env.as_("fwd")), 201)

"""Creating webhook subscriptions: the cap's lock (services/webhooks.create_subscription,
adapters/outbox.count_locked) on real PostgreSQL, and who may name a localhost receiver."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from quaygate.app import create_app
from quaygate.cache import MemoryCache
from quaygate.container import Container, SystemClock
from quaygate.crypto import DataCipher
from quaygate.schema import webhook_subscriptions
from quaygate.settings import Settings
from release_service.adapters.outbox import SqlWebhookStore

from .test_release_api import Api, assert_problem
from .test_webhooks import T0, make_org


def test_counting_an_organisations_subscriptions_holds_up_no_row_that_names_it(pg_engine: sa.Engine) -> None:
    """The cap's lock on the organisation row is FOR NO KEY UPDATE (review 115): a foreign key naming the
    organisation (a right issued to it, a subscription of its own) takes FOR KEY SHARE and does not wait
    for a creation in progress; FOR UPDATE made every such insert queue behind it."""
    org = make_org(pg_engine)
    with pg_engine.connect() as holding, holding.begin():
        assert SqlWebhookStore(holding).count_locked(org) == 0
        with pg_engine.connect() as other, other.begin():
            other.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
            other.execute(webhook_subscriptions.insert().values(
                id=uuid.uuid4(), organisation_id=org, url="https://hooks.example/q", secret_enc="x",
                event_types=["release.*"], active=True, created_at=T0))


@pytest.mark.parametrize("mode", ["dev", "demo"])
def test_a_localhost_receiver_is_a_developers_only(engine: sa.Engine, tmp_path: Path, mode: str) -> None:
    """Review 110: ``demo`` allowed http://localhost subscriptions too, and a demo is often served from a
    shared host whose own services listen there. Only ``dev`` takes them (the dispatcher follows the same
    setting: ``Settings.local_webhooks``)."""
    settings = Settings(var_dir=tmp_path, database_url=str(engine.url.render_as_string(hide_password=False)),
                        background_workers=False, mode=mode)
    assert settings.local_webhooks is (mode == "dev")
    c = Container(settings=settings, engine=engine, cache=MemoryCache(),
                  cipher=DataCipher(settings.data_key_bytes()), clock=SystemClock())
    with TestClient(create_app(settings, container=c)) as http:
        api = Api(http, engine)
        r = http.post("/api/v1/webhooks", headers=api.as_("fwd"),
                      json={"url": "http://localhost:9000/hooks", "event_types": ["release.*"]})
        if mode == "dev":
            assert r.status_code == 201, r.text
        else:
            assert_problem(r, 422, "invalid_webhook_subscription")

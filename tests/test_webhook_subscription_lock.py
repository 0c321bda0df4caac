"""The webhook subscription cap's lock (services/webhooks.create_subscription, adapters/outbox.count_locked)
on real PostgreSQL."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from quaygate.schema import webhook_subscriptions
from release_service.adapters.outbox import SqlWebhookStore

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

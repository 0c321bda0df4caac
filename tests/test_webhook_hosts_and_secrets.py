"""Webhook hosts as they go on the wire, and secrets that must be replaceable (review 171, findings 3 to 5).

- A host name is judged and sent in its ASCII form (IDNA, with UTS #46's mapping): an internationalised name
  (a German haulier's ``spedition-müller.de``) is delivered to; a loopback address written in fullwidth
  digits or with ideographic full stops, which the resolver reads as 127.0.0.1, is refused as 127.0.0.1 is.
- A subscription whose sealed secret no longer opens can have its secret rotated (a fresh one, nothing of
  the old kept); it answered 500 and could never sign again.
- The answers that carry a secret are not stored by caches; the receiver's check of a forged ``webhook-id``
  is a refusal, never an exception of another kind.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa

from quaygate.crypto import DataCipher
from quaygate.schema import webhook_subscriptions
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain import webhooks as wh
from release_service.domain.errors import DomainError
from release_service.services import webhooks as svc

from .test_release_api import Api, api  # noqa: F401 - ``api`` is a fixture requested by name
from .test_webhooks import (
    CIPHER,
    T0,
    FakeClock,
    audit_entries,
    delivery_rows,
    dispatcher,
    independent_verify,
    make_org,
    member,
    publish,
    subscribe,
)


@pytest.mark.parametrize("url", [
    "https://１２７.0.0.1/x",  # fullwidth digits: the resolver reads 127.0.0.1
    "https://127。0。0。1/x",  # ideographic full stops
    "https://１０.0.0.5/x",
    "https://localhost./x",  # the fully qualified name of this machine
    "https://a..b/x",  # an empty label: no host has that name
    "https://xn--/x",  # a malformed A-label
])
def test_a_host_is_judged_in_the_form_the_resolver_reads(url: str) -> None:
    with pytest.raises(DomainError) as err:
        wh.validate_url(url)
    assert err.value.context["field"] == "url", url


def test_an_internationalised_host_is_kept_in_its_ascii_form() -> None:
    assert wh.validate_url("https://hooks.spedition-müller.de/in?x=ü") == (
        "https://hooks.xn--spedition-mller-9vb.de/in?x=ü")
    assert wh.validate_url("https://HOOKS.Spedition-Müller.de:8443/in") == (
        "https://hooks.xn--spedition-mller-9vb.de:8443/in")
    assert wh.validate_url("https://Hooks.Example.com/in") == "https://Hooks.Example.com/in"  # ASCII: as given


def test_a_subscription_to_an_internationalised_host_is_delivered(engine: sa.Engine) -> None:
    """Also a subscription stored before the ASCII form was kept (its URL in Unicode): Host and TLS's SNI
    carry the ASCII name. Before, httpx refused to encode the Unicode Host header ('internal error' at
    every attempt, until the delivery was dead)."""
    org, clock = make_org(engine), FakeClock()
    sub, _ = subscribe(engine, org, "https://hooks.spedition-müller.de/in", ["release.*"])
    assert sub.url == "https://hooks.xn--spedition-mller-9vb.de/in"
    legacy, _ = subscribe(engine, org, "https://hooks.example.org/in", ["release.*"])
    with engine.begin() as conn:
        conn.execute(webhook_subscriptions.update().where(webhook_subscriptions.c.id == legacy.id)
                     .values(url="https://hooks.spedition-müller.de:8443/in"))
    publish(engine, {org}, "release.issued")
    seen: list[httpx.Request] = []
    looked_up: list[str] = []

    def transport(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    def resolve(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return ["93.184.216.34"]

    sent = dispatcher(engine, clock, allow_local=False, resolve=resolve,
                      http_client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(transport)))
    assert sent.run_once() == 2
    assert looked_up == ["hooks.xn--spedition-mller-9vb.de"] * 2
    assert sorted(r.headers["host"] for r in seen) == ["hooks.xn--spedition-mller-9vb.de",
                                                        "hooks.xn--spedition-mller-9vb.de:8443"]
    assert {r.extensions["sni_hostname"] for r in seen} == {"hooks.xn--spedition-mller-9vb.de"}
    assert [row.status for row in delivery_rows(engine)] == ["delivered", "delivered"]


def test_a_secret_that_no_longer_opens_can_be_rotated(engine: sa.Engine) -> None:
    """Its deliveries fail ('secret unreadable'), and rotation is the organisation's way out: a fresh
    secret, none of the old one kept (there is none to keep), said on the audit trail."""
    org = make_org(engine)
    sub, _ = subscribe(engine, org, "https://hooks.example.org/in", ["release.*"])
    other = DataCipher(bytes(range(64, 96)))
    with engine.begin() as conn:  # sealed under a key this deployment does not hold
        conn.execute(webhook_subscriptions.update().where(webhook_subscriptions.c.id == sub.id).values(
            secret_enc=other.seal(wh.SigningSecrets(wh.new_secret()).to_bytes(), wh.secret_aad(sub.id))))
    _, secret = svc.rotate_secret(SqlUnitOfWork(engine), CIPHER, member(org), sub.id, now=T0)
    with engine.connect() as conn:
        sealed = conn.execute(sa.select(webhook_subscriptions.c.secret_enc)
                              .where(webhook_subscriptions.c.id == sub.id)).scalar_one()
    kept = wh.SigningSecrets.from_bytes(CIPHER.open_stored(sealed, wh.secret_aad(sub.id)))
    assert kept == wh.SigningSecrets(secret)
    rotated = [e for e in audit_entries(engine, sub.id) if e.kind == "release.webhook.secret.rotated"]
    assert [e.data["previous_unreadable"] for e in rotated] == [True]
    assert rotated[0].data["previous_valid_for_seconds"] == 0


def test_the_next_delivery_after_such_a_rotation_is_signed_with_the_new_secret(engine: sa.Engine) -> None:
    org, clock = make_org(engine), FakeClock()
    sub, _ = subscribe(engine, org, "https://hooks.example.org/in", ["release.*"])
    with engine.begin() as conn:
        conn.execute(webhook_subscriptions.update().where(webhook_subscriptions.c.id == sub.id)
                     .values(secret_enc=DataCipher(bytes(range(64, 96))).seal(b"{}", wh.secret_aad(sub.id))))
    publish(engine, {org}, "release.issued")
    seen: list[httpx.Request] = []
    sent = dispatcher(engine, clock, allow_local=False, resolve=lambda h, p: ["93.184.216.34"],
                      http_client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(
                          lambda r: seen.append(r) or httpx.Response(204))))
    assert sent.run_once() == 1 and seen == []
    assert delivery_rows(engine)[0].last_error == "secret unreadable"
    _, secret = svc.rotate_secret(SqlUnitOfWork(engine), CIPHER, member(org), sub.id, now=T0)
    clock.at += timedelta(hours=1)
    assert sent.run_once() == 1
    [request] = seen
    independent_verify(secret, dict(request.headers), request.content, clock.at)
    assert delivery_rows(engine)[0].status == "delivered"


@pytest.mark.parametrize("msg_id", ["msg.1", "a.b.c", "."])
def test_a_webhook_id_with_a_dot_is_a_refused_delivery(msg_id: str) -> None:
    secret = wh.new_secret()
    stamp = str(int(T0.timestamp()))
    headers = {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": "v1,AAAA"}
    with pytest.raises(wh.SignatureError) as err:
        wh.verify(secret, body=b"{}", headers=headers, now=T0)
    assert err.value.reason == "bad_id"


def test_answers_that_carry_a_secret_are_not_stored(api: Api) -> None:  # noqa: F811 - the fixture
    r = api.http.post("/api/v1/webhooks", headers=api.as_("line"),
                      json={"url": "https://hooks.line.example/in", "event_types": ["release.*"]})
    assert r.status_code == 201 and r.json()["secret"].startswith("whsec_")
    assert r.headers["cache-control"] == "no-store"
    rotated = api.http.post(f"/api/v1/webhooks/{uuid.UUID(r.json()['id'])}/rotate-secret", headers=api.as_("line"))
    assert rotated.status_code == 200 and rotated.json()["secret"] != r.json()["secret"]
    assert rotated.headers["cache-control"] == "no-store"
    listed = api.http.get("/api/v1/webhooks", headers=api.as_("line"))
    assert listed.status_code == 200 and all(s["secret"] is None for s in listed.json())

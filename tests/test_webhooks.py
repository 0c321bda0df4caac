"""Webhooks end to end: a real HTTP receiver on 127.0.0.1, real SQLite and PostgreSQL, a moved clock.

The receiver checks signatures with its own code written from the Standard Webhooks spec, never with
our signer, so a mistake shared by signer and verifier cannot hide.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag

from quaygate.crypto import DataCipher
from quaygate.schema import audit_log, organisations, webhook_deliveries, webhook_subscriptions
from release_service.adapters.audit import AuditSealer, verify_trail
from release_service.adapters.outbox import SqlOutbox
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.adapters.webhook_dispatcher import WebhookDispatcher
from release_service.domain import webhooks as wh
from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import Actor, OrgKind
from release_service.domain.release import LightKind
from release_service.ports import PublishedEvent
from release_service.services import webhooks as svc

from .aio import run_async
from .test_audit_trail import public_keys, seal_all, wait_until_sealable

CIPHER = DataCipher(bytes(range(32)))
T0 = datetime.now(UTC).replace(microsecond=0)
# The one text a subscriber reads for a refused host, whatever the reason (review 110).
REFUSED = "destination refused: not a public address"


class FakeClock:
    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> None:
        self.at += delta


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A tiny HTTP server: records every request, answers with the status set for its path, after the
    delay set for it; counts the requests it holds at once, per path and in all, and the most of each."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.status: dict[str, int] = {}
        self.extra_headers: dict[str, dict[str, str]] = {}
        self.delay: dict[str, float] = {}
        self.most_at_once: Counter[str] = Counter()
        self.most_at_once_in_all = 0
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with owner._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    owner.requests.append(Received(self.path, headers, body))
                    owner._open[self.path] += 1
                    owner.most_at_once[self.path] = max(owner.most_at_once[self.path], owner._open[self.path])
                    owner.most_at_once_in_all = max(owner.most_at_once_in_all, owner._open.total())
                try:
                    time.sleep(owner.delay.get(self.path, 0.0))
                finally:
                    with owner._lock:
                        owner._open[self.path] -= 1
                self.send_response(owner.status.get(self.path, 200))
                for k, v in owner.extra_headers.get(self.path, {}).items():
                    self.send_header(k, v)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def independent_verify(secret: str, headers: dict[str, str], body: bytes, now: datetime,
                       tolerance: int = 300) -> bool:
    """The receiver's check, straight from the spec (not our signer)."""
    msg_id, ts, sigs = headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]
    if abs(now.timestamp() - int(ts)) > tolerance:
        return False
    key = base64.b64decode(secret.split("_", 1)[1])
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest())
    return any(version == "v1" and hmac.compare_digest(sig.encode(), expected)
               for version, sig in (s.split(",", 1) for s in sigs.split(" ")))


def make_org(engine: sa.Engine) -> uuid.UUID:
    org = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(organisations.insert().values(id=org, name="Forwarder NV", kind="release_party",
                                                   created_at=T0))
    return org


def member(org: uuid.UUID | None, client_id: str = "forwarder-backend") -> Actor:
    """A machine client of ``org`` that manages its webhooks (releases:write)."""
    return Actor(client_id, org, OrgKind.RELEASE_PARTY if org else None, scopes=frozenset({"releases:write"}))


def subscribe(engine: sa.Engine, org: uuid.UUID, url: str, types: list[str]) -> tuple[wh.Subscription, str]:
    return svc.create_subscription(SqlUnitOfWork(engine), CIPHER, member(org), url=url, event_types=types,
                                   now=T0, allow_insecure_localhost=True)


def publish(engine: sa.Engine, audience: set[uuid.UUID], event_type: str, at: datetime = T0) -> uuid.UUID:
    event = PublishedEvent(uuid.uuid4(), event_type, uuid.uuid4(), at, frozenset(audience),
                           {"container": "MSCU1234566"})
    with engine.begin() as conn:
        SqlOutbox(conn).publish([event])
    return event.id


def dispatcher(engine: sa.Engine, clock: FakeClock, **kw: object) -> WebhookDispatcher:
    kw.setdefault("allow_local", True)  # the receiver listens on 127.0.0.1 (dev mode)
    return WebhookDispatcher(engine, CIPHER, clock=clock, jitter=lambda: 0.0, **kw)  # type: ignore[arg-type]


def delivery_rows(engine: sa.Engine) -> list[sa.Row[object]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(webhook_deliveries)).all())


def test_delivery_is_signed_so_an_independent_receiver_accepts_it(engine: sa.Engine,
                                                                   receiver: Receiver) -> None:
    org, clock = make_org(engine), FakeClock()
    sub, secret = subscribe(engine, org, receiver.url("/hook"), ["release.*"])
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    event_id = publish(engine, {org}, "release.issued")

    assert dispatcher(engine, clock).run_once() == 1
    [got] = receiver.at("/hook")
    assert got.headers["content-type"] == "application/json"
    assert independent_verify(secret, got.headers, got.body, clock.now())
    payload = json.loads(got.body)
    assert payload["type"] == "release.issued" and payload["id"] == str(event_id)
    assert payload["timestamp"] == T0.isoformat() and payload["data"] == {"container": "MSCU1234566"}

    tampered = got.body.replace(b"MSCU1234566", b"MSCU7654321")
    assert not independent_verify(secret, got.headers, tampered, clock.now())
    assert not independent_verify(secret, got.headers, got.body, clock.now() + timedelta(minutes=6))
    # Our own verifier (offered to integrators) agrees with the independent one.
    wh.verify(secret, body=got.body, headers=got.headers, now=clock.now())
    for body, now, reason in ((tampered, clock.now(), "no_matching_signature"),
                              (got.body, clock.now() + timedelta(minutes=6), "timestamp_too_old")):
        with pytest.raises(wh.SignatureError) as err:
            wh.verify(secret, body=body, headers=got.headers, now=now)
        assert err.value.reason == reason

    assert dispatcher(engine, clock).run_once() == 0  # delivered is never sent again
    [row] = delivery_rows(engine)
    assert (row.status, row.attempts, row.delivered_at) == ("delivered", 1, T0)
    assert str(row.id) == got.headers["webhook-id"]


def test_failures_retry_on_the_schedule_then_dead_letter_and_redeliver(engine: sa.Engine,
                                                                       receiver: Receiver) -> None:
    org, other, clock = make_org(engine), make_org(engine), FakeClock()
    subscribe(engine, org, receiver.url("/down"), ["release.issued"])
    receiver.status["/down"] = 500
    publish(engine, {org}, "release.issued")
    d = dispatcher(engine, clock)

    assert d.run_once() == 1
    for delay in wh.RETRY_DELAYS:
        clock.advance(delay - timedelta(seconds=1))
        assert d.run_once() == 0, "retried before its time"
        clock.advance(timedelta(seconds=1))
        assert d.run_once() == 1
    got = receiver.at("/down")
    assert len(got) == wh.MAX_ATTEMPTS == 9
    assert len({r.headers["webhook-id"] for r in got}) == 1  # the receiver's idempotency key holds
    offsets = [int(r.headers["webhook-timestamp"]) - int(T0.timestamp()) for r in got]
    assert offsets == [0, 5, 35, 155, 755, 2555, 6155, 16955, 38555]

    clock.advance(timedelta(days=2))
    assert d.run_once() == 0  # dead: no tenth attempt
    uow = SqlUnitOfWork(engine)
    [dead] = svc.list_dead_letters(uow, org)
    assert (dead.status, dead.attempts, dead.last_error) == ("dead", 9, "HTTP 500")
    assert svc.list_dead_letters(uow, other) == []
    with pytest.raises(DomainError) as err:
        svc.redeliver(uow, member(other), dead.id, now=clock.now())
    assert err.value.code is ErrorCode.NOT_FOUND

    receiver.status["/down"] = 204
    again = svc.redeliver(uow, member(org), dead.id, now=clock.now())
    assert (again.status, again.attempts) == ("pending", 0)
    assert d.run_once() == 1
    assert svc.list_dead_letters(uow, org) == []
    assert delivery_rows(engine)[0].status == "delivered"
    with pytest.raises(DomainError) as err:
        svc.redeliver(uow, member(org), dead.id, now=clock.now())
    assert err.value.code is ErrorCode.ILLEGAL_TRANSITION


def test_http_etiquette_redirects_retry_after_and_gone(engine: sa.Engine, receiver: Receiver) -> None:
    org, clock = make_org(engine), FakeClock()
    for path in ("/moved", "/busy", "/gone"):
        subscribe(engine, org, receiver.url(path), ["release.issued"])
    receiver.status.update({"/moved": 302, "/busy": 503, "/gone": 410})
    receiver.extra_headers.update({"/moved": {"location": receiver.url("/elsewhere")},
                                   "/busy": {"retry-after": "600"}})
    publish(engine, {org}, "release.issued")

    assert dispatcher(engine, clock).run_once() == 3
    assert receiver.at("/elsewhere") == []  # redirects are not followed: they count as failures
    by_error = {r.last_error: r for r in delivery_rows(engine)}
    assert by_error["HTTP 302"].next_attempt_at == T0 + timedelta(seconds=5)
    assert by_error["HTTP 503"].next_attempt_at == T0 + timedelta(seconds=600)
    assert by_error["HTTP 410: endpoint disabled"].status == "dead"
    assert {s.url for s in svc.list_subscriptions(SqlUnitOfWork(engine), org)} == {
        receiver.url("/moved"), receiver.url("/busy")}


@pytest.mark.parametrize(("header", "after"),
                         [("\u00b2", timedelta(seconds=5)), ("99999999999999", wh.MAX_RETRY_AFTER)],
                         ids=["superscript-two", "overflows-timedelta"])
def test_a_retry_after_we_cannot_read_still_records_the_attempt(engine: sa.Engine, receiver: Receiver,
                                                                 header: str, after: timedelta) -> None:
    """Webhook review, finding 2: either header raised on the way to recording the outcome, for a 2xx too,
    so the row stayed pending with no attempt counted and was sent again after every lease, for ever. Now
    it is read or ignored, and only on a failure: the 503 is retried on the backoff, the 200 delivered."""
    org, clock = make_org(engine), FakeClock()
    subscribe(engine, org, receiver.url("/busy"), ["release.issued"])
    subscribe(engine, org, receiver.url("/fine"), ["release.issued"])
    receiver.status.update({"/busy": 503, "/fine": 200})
    receiver.extra_headers.update({"/busy": {"retry-after": header}, "/fine": {"retry-after": header}})
    publish(engine, {org}, "release.issued")

    assert dispatcher(engine, clock).run_once() == 2
    by_error = {r.last_error: r for r in delivery_rows(engine)}
    assert set(by_error) == {"HTTP 503", None}
    busy, fine = by_error["HTTP 503"], by_error[None]
    assert (busy.status, busy.attempts, busy.next_attempt_at) == ("pending", 1, T0 + after)
    assert (fine.status, fine.attempts) == ("delivered", 1)


def test_a_fault_of_ours_during_an_attempt_is_a_failed_attempt(engine: sa.Engine, receiver: Receiver,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Whatever raises on the way (here, reading the receiver's answer), the attempt is recorded as failed
    and counted on the backoff (in the end dead), not left pending to be sent after every lease."""
    from release_service.adapters import webhook_dispatcher

    def broken(value: str | None) -> timedelta | None:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(webhook_dispatcher, "parse_retry_after", broken)
    org, clock = make_org(engine), FakeClock()
    subscribe(engine, org, receiver.url("/busy"), ["release.issued"])
    receiver.status["/busy"] = 503
    publish(engine, {org}, "release.issued")

    with caplog.at_level(logging.ERROR, logger="quaygate.webhooks"):
        assert dispatcher(engine, clock).run_once() == 1
    [row] = delivery_rows(engine)
    assert (row.status, row.attempts, row.last_error, row.next_attempt_at) == (
        "pending", 1, "internal error", T0 + wh.RETRY_DELAYS[0])
    assert [r.message for r in caplog.records] == ["release.webhook.send.internal_error"]
    assert "a bug of ours" not in row.last_error


def test_subscribers_get_only_the_event_types_they_chose(engine: sa.Engine, receiver: Receiver) -> None:
    org, stranger, clock = make_org(engine), make_org(engine), FakeClock()
    subscribe(engine, org, receiver.url("/transfers"), ["release.transfer.*"])
    subscribe(engine, org, receiver.url("/issued"), ["release.issued"])
    subscribe(engine, stranger, receiver.url("/stranger"), ["release.*"])
    publish(engine, {org}, "release.issued")
    publish(engine, {org}, "release.transfer.requested")

    assert dispatcher(engine, clock).run_once() == 2
    assert [json.loads(r.body)["type"] for r in receiver.at("/transfers")] == ["release.transfer.requested"]
    assert [json.loads(r.body)["type"] for r in receiver.at("/issued")] == ["release.issued"]
    assert receiver.at("/stranger") == []  # not in the event's audience


def test_rotation_signs_with_both_secrets_during_the_overlap(engine: sa.Engine, receiver: Receiver) -> None:
    org, clock = make_org(engine), FakeClock()
    sub, old = subscribe(engine, org, receiver.url("/hook"), ["release.*"])
    _, new = svc.rotate_secret(SqlUnitOfWork(engine), CIPHER, member(org), sub.id, now=clock.now(),
                               overlap=timedelta(hours=1))
    publish(engine, {org}, "release.issued")
    dispatcher(engine, clock).run_once()
    clock.advance(timedelta(hours=2))
    publish(engine, {org}, "release.revoked", at=clock.now())
    dispatcher(engine, clock).run_once()

    during, after = receiver.at("/hook")
    assert independent_verify(old, during.headers, during.body, T0)
    assert independent_verify(new, during.headers, during.body, T0)
    assert independent_verify(new, after.headers, after.body, clock.now())
    assert not independent_verify(old, after.headers, after.body, clock.now())


def test_secrets_are_stored_sealed_and_bound_to_their_row(engine: sa.Engine) -> None:
    org = make_org(engine)
    sub, secret = subscribe(engine, org, "https://hooks.example.com/quaygate", ["release.issued"])
    other, _ = subscribe(engine, org, "https://hooks.example.com/other", ["release.issued"])
    with engine.connect() as conn:
        stored = conn.execute(sa.select(webhook_subscriptions.c.secret_enc)
                              .where(webhook_subscriptions.c.id == sub.id)).scalar_one()
        dump = " ".join(str(v) for row in conn.execute(sa.select(webhook_subscriptions)).all() for v in row)
    assert secret not in dump and secret[6:] not in dump and "whsec_" not in dump
    assert wh.SigningSecrets.from_bytes(CIPHER.open(stored, wh.secret_aad(sub.id))).current == secret
    with pytest.raises(InvalidTag):
        CIPHER.open(stored, wh.secret_aad(other.id))  # copied onto another row, it does not open


def test_subscriptions_belong_to_their_organisation(engine: sa.Engine, receiver: Receiver) -> None:
    org, other, clock = make_org(engine), make_org(engine), FakeClock()
    sub, _ = subscribe(engine, org, receiver.url("/hook"), ["release.*"])
    uow = SqlUnitOfWork(engine)
    for call in (lambda: svc.delete_subscription(uow, member(other), sub.id, now=T0),
                 lambda: svc.rotate_secret(uow, CIPHER, member(other), sub.id, now=T0),
                 lambda: svc.get_subscription(uow, other, sub.id)):
        with pytest.raises(DomainError) as err:
            call()
        assert err.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(DomainError) as err:
        svc.list_subscriptions(uow, None)
    assert err.value.code is ErrorCode.FORBIDDEN
    assert [s.id for s in svc.list_subscriptions(uow, org)] == [sub.id]

    publish(engine, {org}, "release.issued")
    svc.delete_subscription(uow, member(org), sub.id, now=T0)
    assert svc.list_subscriptions(uow, org) == []
    assert dispatcher(engine, clock).run_once() == 0  # its pending delivery is not sent
    assert receiver.requests == []


def test_run_forever_delivers_until_stopped(engine: sa.Engine, receiver: Receiver) -> None:
    org, stop = make_org(engine), threading.Event()
    subscribe(engine, org, receiver.url("/hook"), ["release.*"])
    loop = threading.Thread(target=dispatcher(engine, FakeClock()).run_forever, args=(stop, 0.01))
    loop.start()
    try:
        publish(engine, {org}, "release.issued")
        for _ in range(500):
            if receiver.at("/hook"):
                break
            stop.wait(0.01)
    finally:
        stop.set()
        loop.join(timeout=10)
    assert not loop.is_alive() and len(receiver.at("/hook")) == 1


@pytest.mark.postgres
def test_two_dispatchers_on_postgres_deliver_each_delivery_exactly_once(pg_engine: sa.Engine,
                                                                         receiver: Receiver) -> None:
    org, clock = make_org(pg_engine), FakeClock()
    subscribe(pg_engine, org, receiver.url("/hook"), ["release.*"])
    for _ in range(80):
        publish(pg_engine, {org}, "release.issued")
    start = threading.Barrier(2)
    sent: list[int] = []

    def work() -> None:
        d = dispatcher(pg_engine, clock, batch=5, workers=2)
        start.wait()
        total = 0
        while n := d.run_once():
            total += n
        sent.append(total)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    ids = Counter(r.headers["webhook-id"] for r in receiver.at("/hook"))
    assert len(ids) == 80 and set(ids.values()) == {1}
    assert sum(sent) == 80
    assert {r.status for r in delivery_rows(pg_engine)} == {"delivered"}


# ---- the pure rules ----------------------------------------------------------------------------

def test_retry_schedule_and_jitter() -> None:
    assert [wh.retry_delay(n, jitter=0.0) for n in range(1, 9)] == list(wh.RETRY_DELAYS)
    assert wh.retry_delay(9, jitter=0.0) is None
    assert wh.retry_delay(1, jitter=1.0) == timedelta(seconds=6)
    assert wh.retry_delay(8, jitter=0.0, retry_after=timedelta(days=3)) == timedelta(hours=6)
    for bad in ({"failed_attempts": 0, "jitter": 0.0}, {"failed_attempts": 1, "jitter": 1.5}):
        with pytest.raises(ValueError):
            wh.retry_delay(**bad)  # type: ignore[arg-type]
    assert wh.parse_retry_after(" 120 ") == timedelta(minutes=2)
    assert wh.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None


@pytest.mark.parametrize(("value", "delay"), [
    ("0", timedelta(0)), ("21600", wh.MAX_RETRY_AFTER), ("21601", wh.MAX_RETRY_AFTER),
    ("999999999", wh.MAX_RETRY_AFTER), ("99999999999999", wh.MAX_RETRY_AFTER), ("9" * 5000, wh.MAX_RETRY_AFTER),
    ("\u00b2", None), ("\u0663", None), ("\uff11\uff12", None), ("+5", None), ("-5", None), ("1 2", None),
    ("1e3", None), ("", None),
], ids=["zero", "cap", "past-cap", "nine-digits", "overflows-timedelta", "past-int-digits-limit", "superscript",
        "arabic-indic", "fullwidth", "plus", "minus", "space", "exponent", "empty"])
def test_retry_after_is_ascii_delta_seconds_capped_and_never_raises(value: str, delay: timedelta | None) -> None:
    """Webhook review, finding 2: str.isdigit() took a superscript two (int() refused it), and a long run of digits
    overflowed timedelta or passed int()'s 4300-digit limit. A value too long to read waits the longest
    (RFC 9111 §1.2.2), capped."""
    assert wh.parse_retry_after(value) == delay


def test_subscription_url_rules() -> None:
    for url, local_ok in (("https://hooks.example.com/x", False), ("http://localhost:8080/x", True),
                          ("http://127.0.0.1:9/x", True), ("http://[::1]/x", True)):
        assert wh.validate_url(url, allow_insecure_localhost=local_ok) == url
    for url, local_ok in (("http://hooks.example.com/x", True), ("http://localhost:8080/x", False),
                          ("https://10.0.0.5/x", False), ("https://169.254.169.254/latest", False),
                          ("https://user:pw@hooks.example.com/x", False), ("ftp://hooks.example.com/x", True),
                          ("https://hooks.example.com:99999/x", False), ("https:///nohost", False),
                          # the older numeric forms a resolver takes for 127.0.0.1 and 10.0.0.5
                          ("https://127.1/x", False), ("https://2130706433/x", False), ("https://0x7f.1/x", False),
                          ("https://0x7f000001/x", False), ("https://10.5/x", False), ("https://[::ffff:127.0.0.1]/x",
                                                                                        False)):
        with pytest.raises(DomainError) as err:
            wh.validate_url(url, allow_insecure_localhost=local_ok)
        assert err.value.context["field"] == "url", url


def test_event_type_patterns() -> None:
    assert wh.validate_event_types(["release.transfer.*", "release.issued", "release.issued"]) == (
        "release.issued", "release.transfer.*")
    for bad in ([], ["release.isued"], ["relase.*"], ["*"], ["release.transfer"]):
        with pytest.raises(DomainError):
            wh.validate_event_types(bad)
    assert wh.matches(["release.transfer.*"], "release.transfer.accepted")
    assert not wh.matches(["release.transfer.*"], "release.issued")


def test_known_event_types_cover_what_the_domain_emits() -> None:
    source = (Path(__file__).parents[1] / "release_service/domain/release.py").read_text()
    emitted = set(re.findall(r'"(release\.[a-z_.]+)"', source)) | {f"release.light.{k}" for k in LightKind}
    assert emitted <= wh.KNOWN_EVENT_TYPES


def test_a_name_that_resolves_to_an_internal_address_is_not_called(engine: sa.Engine, receiver: Receiver) -> None:
    """SSRF through DNS: a public-looking name that resolves (perhaps only at delivery, DNS rebinding) to
    loopback or a private network is refused at each delivery, and the refusal says nothing of the
    answer (no status code oracle on internal services)."""
    org, clock = make_org(engine), FakeClock()
    subscribe(engine, org, "https://hooks.attacker.example/x", ["release.*"])
    publish(engine, {org}, "release.issued")
    resolved: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:  # the attacker's DNS, as the resolver would answer
        resolved.append(host)
        return ["127.0.0.1"]

    assert dispatcher(engine, clock, allow_local=False, resolve=rebinding).run_once() == 1
    assert resolved == ["hooks.attacker.example"] and receiver.requests == []
    [row] = delivery_rows(engine)
    assert (row.status, row.last_error) == ("pending", REFUSED)
    assert dispatcher(engine, clock, allow_local=False, resolve=lambda h, p: ["10.1.2.3", "93.184.216.34"]
                      ).run_once() == 0  # not due yet; then any internal address among several refuses
    clock.at += timedelta(hours=1)
    assert dispatcher(engine, clock, allow_local=False, resolve=lambda h, p: ["93.184.216.34", "10.1.2.3"]
                      ).run_once() == 1
    assert delivery_rows(engine)[0].last_error == REFUSED


def test_a_delivery_goes_to_the_address_checked(engine: sa.Engine) -> None:
    """The connection is pinned to the address that was checked: the URL carries it, and the name goes
    in Host and in TLS's SNI (the certificate is checked against the name)."""
    org, clock = make_org(engine), FakeClock()
    subscribe(engine, org, "https://hooks.partner.example:8443/in?x=1", ["release.*"])
    publish(engine, {org}, "release.issued")
    seen: list[httpx.Request] = []

    def transport(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    sent = dispatcher(engine, clock, allow_local=False, resolve=lambda h, p: ["93.184.216.34"],
                      http_client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(transport)))
    assert sent.run_once() == 1
    [request] = seen
    assert str(request.url) == "https://93.184.216.34:8443/in?x=1"
    assert request.headers["host"] == "hooks.partner.example:8443"
    assert request.extensions["sni_hostname"] == "hooks.partner.example"
    assert delivery_rows(engine)[0].status == "delivered"


# ---- every change of a subscription is on the audit trail (review 58, finding 5) --------------------


def audit_entries(engine: sa.Engine, subscription_id: uuid.UUID) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.kind, audit_log.c.actor, audit_log.c.data)
                                 .where(audit_log.c.subject == str(subscription_id))
                                 .order_by(audit_log.c.id)).all())


def test_every_change_of_a_subscription_is_on_the_audit_trail(engine: sa.Engine, receiver: Receiver) -> None:
    """A subscription is a standing copy of the company's events to a URL of the caller's choosing: who
    opened it, to where, who rotated its secret, sent a dead delivery again or closed it, each is one
    audit entry written in the change's transaction, with the URL and never the secret. A refused change
    writes none, and the trail still verifies."""
    org, other, clock = make_org(engine), make_org(engine), FakeClock()
    url = receiver.url("/hook")
    sub, first = subscribe(engine, org, url, ["release.*"])
    _, second = svc.rotate_secret(SqlUnitOfWork(engine), CIPHER, member(org, "console"), sub.id, now=T0)
    receiver.status["/hook"] = 500
    publish(engine, {org}, "release.issued")
    assert dispatcher(engine, clock).run_once() == 1
    with engine.begin() as conn:  # as after its last retry
        conn.execute(webhook_deliveries.update().values(status="dead"))
    [dead] = svc.list_dead_letters(SqlUnitOfWork(engine), org)
    for refused in (lambda: svc.delete_subscription(SqlUnitOfWork(engine), member(other), sub.id, now=T0),
                    lambda: svc.rotate_secret(SqlUnitOfWork(engine), CIPHER, member(other), sub.id, now=T0),
                    lambda: svc.redeliver(SqlUnitOfWork(engine), member(other), dead.id, now=T0)):
        with pytest.raises(DomainError):
            refused()
    svc.redeliver(SqlUnitOfWork(engine), member(org), dead.id, now=T0)
    svc.delete_subscription(SqlUnitOfWork(engine), member(org, "console"), sub.id, now=T0)

    entries = audit_entries(engine, sub.id)
    assert [e.kind for e in entries] == ["release.webhook.subscription.created", "release.webhook.secret.rotated",
                                         "release.webhook.delivery.requeued", "release.webhook.subscription.deleted"]
    assert [e.actor["client_id"] for e in entries] == ["forwarder-backend", "console", "forwarder-backend", "console"]
    assert all(e.actor["organisation_id"] == str(org) == e.data["organisation_id"] for e in entries)
    assert all(e.data["url"] == receiver.url("") for e in entries)
    assert all("url_sha256" not in e.data for e in entries)
    assert entries[0].data["event_types"] == ["release.*"] and entries[2].data["delivery_id"] == str(dead.id)
    dump = json.dumps([[e.actor, e.data] for e in entries])
    assert all(s not in dump and s[6:] not in dump for s in (first, second)) and "whsec_" not in dump

    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one()
    assert total == 4  # the refused changes wrote nothing
    wait_until_sealable(engine, total)
    assert seal_all(AuditSealer(engine, CIPHER), total) == total
    report = verify_trail(engine, public_keys(engine, CIPHER))
    assert report.intact and report.entries == total, report.problem


def test_the_trail_keeps_a_hooks_host_and_digest_never_a_credential_in_its_url(engine: sa.Engine,
                                                                                receiver: Receiver) -> None:
    """Receivers often take a credential in the URL itself (a per-hook token in the path, a signed
    query string). The trail is append-only and chained, so it never holds the URL, nor a digest of it
    (a short token is found again by trying them all): its origin alone."""
    org = make_org(engine)
    url = receiver.url("/hooks/T0ken-In-Path-4f9a?sig=Qu3ry-S3cret-77")
    sub, _ = subscribe(engine, org, url, ["release.*"])
    svc.delete_subscription(SqlUnitOfWork(engine), member(org, "console"), sub.id, now=T0)
    entries = audit_entries(engine, sub.id)
    assert [e.kind for e in entries] == ["release.webhook.subscription.created", "release.webhook.subscription.deleted"]
    dump = json.dumps([[e.actor, e.data] for e in entries])
    assert "T0ken-In-Path" not in dump and "Qu3ry-S3cret" not in dump and "/hooks" not in dump
    assert {e.data["url"] for e in entries} == {receiver.url("")}
    assert all(set(e.data) & {"url_sha256", "url_digest"} == set() for e in entries)  # not even a digest


@pytest.mark.parametrize(("url", "origin"), [
    ("https://hooks.example.com/a/b?c=d", "https://hooks.example.com"),
    ("https://Hooks.Example.com:8443/x", "https://hooks.example.com:8443"),
    ("https://[2001:db8::1]:9443/x?t=1", "https://[2001:db8::1]:9443"),
])
def test_trail_url_keeps_the_origin_only(url: str, origin: str) -> None:
    assert wh.trail_url(url) == {"url": origin}


def test_an_endpoint_disabled_for_answering_gone_is_on_the_audit_trail(engine: sa.Engine,
                                                                       receiver: Receiver) -> None:
    """410 Gone disables the subscription (spec): the service closes it, and says so on the trail, once."""
    org, clock = make_org(engine), FakeClock()
    sub, _ = subscribe(engine, org, receiver.url("/gone"), ["release.*"])
    receiver.status["/gone"] = 410
    publish(engine, {org}, "release.issued")
    publish(engine, {org}, "release.revoked")
    # One send per subscription in a round (review 110): the 410 closes it, the other delivery is cancelled.
    assert dispatcher(engine, clock).run_once() == 1
    assert dispatcher(engine, clock).run_once() == 0 and len(receiver.at("/gone")) == 1

    created, disabled = audit_entries(engine, sub.id)
    assert (created.kind, disabled.kind) == ("release.webhook.subscription.created",
                                             "release.webhook.subscription.disabled")
    assert disabled.actor["kind"] == "system" and disabled.data["url"] == receiver.url("")
    assert svc.list_subscriptions(SqlUnitOfWork(engine), org) == []


# ---- IPv6 forms that carry an internal IPv4 address (review 58, finding C) ---------------------------


def embedding(form: str, v4: str) -> str:
    """``v4`` inside an IPv6 address of the given form."""
    n = int(ipaddress.IPv4Address(v4))
    hi, lo = f"{n >> 16:x}", f"{n & 0xFFFF:x}"
    obfuscated = n ^ 0xFFFFFFFF  # Teredo stores the client address inverted (RFC 4380 §4)
    return {
        "nat64": f"64:ff9b::{v4}",  # RFC 6052
        "nat64_local_use": f"64:ff9b:1::{v4}",  # RFC 8215
        "6to4": f"2002:{hi}:{lo}::1",  # RFC 3056
        "teredo": f"2001:0:{hi}:{lo}:0:0:{obfuscated >> 16:x}:{obfuscated & 0xFFFF:x}",  # RFC 4380
        "ipv4_compatible": f"::{v4}",  # RFC 4291 §2.5.5.1
        "ipv4_mapped": f"::ffff:{v4}",  # RFC 4291 §2.5.5.2
        "ipv4_translated": f"::ffff:0:{v4}",  # RFC 2765
    }[form]


EMBEDDING_FORMS = ("nat64", "nat64_local_use", "6to4", "teredo", "ipv4_compatible", "ipv4_mapped",
                   "ipv4_translated")


@pytest.mark.parametrize("inner", ["127.0.0.1", "10.0.0.1", "169.254.169.254"])
@pytest.mark.parametrize("form", EMBEDDING_FORMS)
def test_an_ipv6_address_that_carries_an_internal_ipv4_address_is_refused(form: str, inner: str) -> None:
    """``is_global`` judges the IPv6 address, not the IPv4 one a translator or tunnel delivers to: NAT64,
    6to4 and IPv4-compatible forms of 127.0.0.1 pass it. Refused both as a literal URL and as what a
    name resolves to (the dispatcher applies the same rule)."""
    host = embedding(form, inner)
    assert not wh.is_public_address(ipaddress.ip_address(host))
    with pytest.raises(DomainError) as err:
        wh.validate_url(f"https://[{host}]/hook")
    assert err.value.context["field"] == "url"


@pytest.mark.parametrize("host", ["fec0::1", "feff:ffff::1", "ff02::1", "ff0e::114", "224.0.0.251", "239.255.255.250"])
def test_site_local_and_multicast_addresses_are_not_receivers(host: str) -> None:
    """Review 110: Python 3.11's ``is_global`` calls deprecated IPv6 site-local (fec0::/10, RFC 3879) and
    global-scope multicast global; neither is a company's web server."""
    assert not wh.is_public_address(ipaddress.ip_address(host))
    with pytest.raises(DomainError):
        wh.validate_url(f"https://[{host}]/hook" if ":" in host else f"https://{host}/hook")


def test_a_public_ipv4_address_in_an_ipv6_form_is_judged_as_itself() -> None:
    """An IPv6-only network reaches an IPv4 receiver through NAT64 (DNS64 answers 64:ff9b::/96): allowed
    when the address inside is public. Forms meant for no public use are refused whatever they carry."""
    public = "93.184.216.34"
    for form in ("nat64", "6to4", "ipv4_mapped"):
        host = embedding(form, public)
        assert wh.is_public_address(ipaddress.ip_address(host)), form
        assert wh.validate_url(f"https://[{host}]/hook") == f"https://[{host}]/hook"
    for form in ("nat64_local_use", "teredo", "ipv4_compatible", "ipv4_translated"):
        assert not wh.is_public_address(ipaddress.ip_address(embedding(form, public))), form
    assert wh.is_public_address(ipaddress.ip_address("2a00:1450:4001:81c::200e"))


def test_a_name_that_resolves_to_an_ipv6_form_of_an_internal_address_is_not_called(engine: sa.Engine) -> None:
    org, clock = make_org(engine), FakeClock()
    subscribe(engine, org, "https://hooks.attacker.example/x", ["release.*"])
    publish(engine, {org}, "release.issued")
    sent: list[httpx.Request] = []

    def transport(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    for form in EMBEDDING_FORMS:
        d = dispatcher(engine, clock, allow_local=False, resolve=lambda h, p: [embedding(form, "169.254.169.254")],
                       http_client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(transport)))
        assert d.run_once() == 1, form
        assert (delivery_rows(engine)[0].last_error, sent) == (REFUSED, []), form
        clock.advance(timedelta(hours=7))  # past the next retry


@pytest.mark.parametrize("url", ["https://hooks.example.com/a\x00b", "https://hooks.example.com/\x1b[2J"],
                         ids=["nul", "escape"])
def test_a_url_with_a_control_character_is_refused_as_the_url(url: str) -> None:
    """A NUL reached the database (a 422 that named nothing); an escape was stored and shown."""
    with pytest.raises(DomainError) as err:
        wh.validate_url(url)
    assert err.value.code is ErrorCode.INVALID_WEBHOOK_SUBSCRIPTION and err.value.context["field"] == "url"


# ---- a closed subscription's queued deliveries are cancelled, not left pending for ever ------------------


def statuses(engine: sa.Engine, subscription_id: uuid.UUID) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(conn.execute(sa.select(webhook_deliveries.c.status)
                                    .where(webhook_deliveries.c.subscription_id == subscription_id)).scalars())


def test_deleting_a_subscription_cancels_its_queued_deliveries(engine: sa.Engine, receiver: Receiver) -> None:
    """Deleted, a subscription sends nothing more; its queued deliveries take the final status
    ``cancelled`` in the deletion's transaction instead of staying ``pending`` for ever (never sent, never
    a dead letter, never redeliverable: each claim would wade through them). The other subscription's are
    untouched, and the trail says how many were cancelled."""
    org, clock = make_org(engine), FakeClock()
    closing, _ = subscribe(engine, org, receiver.url("/closing"), ["release.*"])
    staying, _ = subscribe(engine, org, receiver.url("/staying"), ["release.*"])
    publish(engine, {org}, "release.issued")
    publish(engine, {org}, "release.revoked")
    assert statuses(engine, closing.id) == Counter({"pending": 2})

    svc.delete_subscription(SqlUnitOfWork(engine), member(org), closing.id, now=T0)
    assert statuses(engine, closing.id) == Counter({"cancelled": 2})
    assert statuses(engine, staying.id) == Counter({"pending": 2})
    deleted = audit_entries(engine, closing.id)[-1]
    assert deleted.kind == "release.webhook.subscription.deleted" and deleted.data["deliveries_cancelled"] == 2

    assert [dispatcher(engine, clock).run_once() for _ in range(3)] == [1, 1, 0]  # one a round (review 110)
    assert receiver.at("/closing") == [] and len(receiver.at("/staying")) == 2
    assert svc.list_dead_letters(SqlUnitOfWork(engine), org) == []
    cancelled = delivery_rows(engine)
    one = next(r for r in cancelled if r.subscription_id == closing.id)
    with pytest.raises(DomainError) as refused:
        svc.redeliver(SqlUnitOfWork(engine), member(org), one.id, now=T0)
    assert refused.value.code is ErrorCode.NOT_FOUND
    assert statuses(engine, closing.id) == Counter({"cancelled": 2})


def test_an_endpoint_gone_has_its_other_queued_deliveries_cancelled(engine: sa.Engine, receiver: Receiver) -> None:
    """A 410 Gone closes the subscription (spec); the deliveries still queued for it behind the one that
    got the 410 are cancelled with it, and the trail's entry counts them. Another endpoint's are sent."""
    org, clock = make_org(engine), FakeClock()
    gone, _ = subscribe(engine, org, receiver.url("/gone"), ["release.*"])
    receiver.status["/gone"] = 410
    for i in range(3):
        publish(engine, {org}, "release.issued", at=T0 + timedelta(seconds=i))

    assert dispatcher(engine, clock, batch=1).run_once() == 1  # one claimed, answered 410: the endpoint closed
    assert statuses(engine, gone.id) == Counter({"dead": 1, "cancelled": 2})
    disabled = audit_entries(engine, gone.id)[-1]
    assert disabled.kind == "release.webhook.subscription.disabled" and disabled.data["deliveries_cancelled"] == 2
    assert dispatcher(engine, clock).run_once() == 0 and len(receiver.at("/gone")) == 1


def test_an_organisation_keeps_a_bounded_number_of_subscriptions(engine: sa.Engine) -> None:
    """Review 110: 300 subscriptions of one company made 300 delivery rows (and sends) per event of its
    audience. The cap counts active ones: a deleted subscription frees its place; another company's
    subscriptions count for it alone."""
    org, other = make_org(engine), make_org(engine)
    subs = [subscribe(engine, org, f"https://hooks{k}.example/q", ["release.*"])[0]
            for k in range(wh.MAX_SUBSCRIPTIONS)]
    with pytest.raises(DomainError) as err:
        subscribe(engine, org, "https://one-more.example/q", ["release.*"])
    assert err.value.code is ErrorCode.TOO_MANY_SUBSCRIPTIONS
    assert len(svc.list_subscriptions(SqlUnitOfWork(engine), org)) == wh.MAX_SUBSCRIPTIONS
    subscribe(engine, other, "https://other.example/q", ["release.*"])
    svc.delete_subscription(SqlUnitOfWork(engine), member(org), subs[0].id, now=T0)
    subscribe(engine, org, "https://one-more.example/q", ["release.*"])


def test_subscriptions_created_at_once_stay_within_the_cap(pg_engine: sa.Engine) -> None:
    """Many creations racing for one company: each counts under the company row's lock, so the count
    read by one includes what the one before it committed (locking the subscription rows would not hold
    off a new row)."""
    org = make_org(pg_engine)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def create(k: int) -> None:
        barrier.wait()
        for j in range(4):
            try:
                subscribe(pg_engine, org, f"https://hooks{k}-{j}.example/q", ["release.*"])
                outcomes.append("created")
            except DomainError as exc:
                outcomes.append(exc.code.value)

    threads = [threading.Thread(target=create, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(outcomes) == {"created": wh.MAX_SUBSCRIPTIONS, "too_many_subscriptions": 32 - wh.MAX_SUBSCRIPTIONS}
    with pg_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_subscriptions)
                            .where(webhook_subscriptions.c.organisation_id == org)).scalar_one() == wh.MAX_SUBSCRIPTIONS


def test_a_round_runs_from_a_thread_where_an_event_loop_already_runs(engine: sa.Engine, receiver: Receiver) -> None:
    """``run_once`` is a plain call: from a thread whose event loop runs (an async caller; Playwright's sync
    API leaves one running in the main thread, which failed 36 tests of a full suite run) it sends its
    round on a thread of its own instead of refusing with "asyncio.run() cannot be called"."""
    import asyncio

    org = make_org(engine)
    subscribe(engine, org, receiver.url("/hook"), ["release.*"])
    publish(engine, {org}, "release.issued")

    async def inside() -> int:
        assert asyncio.get_running_loop() is not None
        return dispatcher(engine, FakeClock()).run_once()

    assert run_async(inside) == 1  # its own loop in a thread of its own: the main thread may have one running
    assert [r.path for r in receiver.requests] == ["/hook"]


def test_a_secret_under_a_previous_data_key_signs_nothing_once_rekey_data_has_finished(engine: sa.Engine,
                                                                                       receiver: Receiver) -> None:
    """Review 140, finding 1: a webhook secret sealed under a previous data key (CIPHER's, here) opens while the
    rekey has not finished (the rotation window); once it has, it is one planted since by whoever holds that
    key, and signs nothing: the delivery fails, sent to no one."""
    org = make_org(engine)
    subscribe(engine, org, receiver.url("/hook"), ["release.*"])
    publish(engine, {org}, "release.issued")
    finished = [True]
    ring = DataCipher(bytes(range(100, 132)), [bytes(range(32))])
    ring.watch_rekey(lambda: finished[0], check_every=0.0)
    sending = WebhookDispatcher(engine, ring, clock=FakeClock(), jitter=lambda: 0.0, allow_local=True)
    assert sending.run_once() == 1
    assert receiver.requests == [] and delivery_rows(engine)[0].last_error == "secret unreadable"
    ring = DataCipher(bytes(range(100, 132)), [bytes(range(32))])
    finished[0] = False
    ring.watch_rekey(lambda: finished[0], check_every=0.0)
    clock = FakeClock(T0 + timedelta(hours=1))  # past the failed attempt's retry time
    assert WebhookDispatcher(engine, ring, clock=clock, jitter=lambda: 0.0, allow_local=True).run_once() == 1
    assert [r.path for r in receiver.requests] == ["/hook"]

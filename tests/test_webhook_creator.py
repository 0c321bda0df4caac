"""A webhook subscription made by a person in a company's console ends with his part there (webhook
review, finding 1): when no role of his in that organisation lets him act for it any more (removed, or
expired by the sweep) or port security suspends him, the subscriptions he made are closed in that same
transaction, their queued deliveries cancelled, on the trail. Before, a dated dispatcher could point one
at a server of his, keep its secret, and go on receiving the company's events after his role lapsed.

A machine client's subscription is the company's, and stays; so does one made before the creator was
kept (migration 0027: null). Who made each is shown (``created_by``).

Real SQLite and PostgreSQL; the interleaving with a creation in flight on PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.authn import cutoff
from identity.grants import GrantStore, RevocationList
from identity.memberships import expire_due, remove_membership
from identity.sessions import SessionStore
from quaygate.cache import MemoryCache
from quaygate.schema import (
    audit_log,
    memberships,
    oauth_clients,
    persons,
    webhook_deliveries,
    webhook_subscriptions,
)
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import Actor, OrgKind
from release_service.services import webhooks as svc

from .interleave import HeldBeforeCommit, in_thread, waits_on_a_lock
from .test_gate_policy import Env, _serve
from .test_member_roles import _token
from .test_webhooks import CIPHER, make_org, member, publish

HOOK = {"url": "https://hooks.haulier.example/q", "event_types": ["release.*"]}


def _now() -> datetime:
    return datetime.now(UTC)


def _grants(engine: sa.Engine) -> GrantStore:
    return GrantStore(engine, RevocationList(MemoryCache()), refresh_ttl=60)


def _person(engine: sa.Engine, org: uuid.UUID, *roles: str, until: datetime | None = None) -> uuid.UUID:
    pid = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(persons.insert().values(id=pid, given_name="Jan", family_name="Peeters", created_at=_now()))
    _give(engine, pid, org, *roles, until=until)
    return pid


def _give(engine: sa.Engine, pid: uuid.UUID, org: uuid.UUID, *roles: str, until: datetime | None = None) -> None:
    with engine.begin() as conn:
        for role in roles:
            conn.execute(memberships.insert().values(person_id=pid, organisation_id=org, role=role,
                                                     created_at=_now(), valid_until=until))


def _console(org: uuid.UUID, pid: uuid.UUID, *roles: str) -> Actor:
    """A person signed in to ``org``'s console, his token carrying ``roles``."""
    return Actor("haulier-console", org, OrgKind.RELEASE_PARTY, person_id=pid,
                 scopes=frozenset({"releases:write"}), roles=frozenset(roles))


def _subscribe(engine: sa.Engine, actor: Actor, path: str) -> uuid.UUID:
    sub, _ = svc.create_subscription(SqlUnitOfWork(engine), CIPHER, actor, url=f"https://hooks.example.com{path}",
                                     event_types=["release.*"], now=_now())
    return sub.id


def _active(engine: sa.Engine) -> dict[uuid.UUID, bool]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(webhook_subscriptions.c.id, webhook_subscriptions.c.active)).all())


def _statuses(engine: sa.Engine) -> dict[uuid.UUID, list[str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(webhook_deliveries.c.subscription_id, webhook_deliveries.c.status)
                            .order_by(webhook_deliveries.c.created_at)).all()
    out: dict[uuid.UUID, list[str]] = {}
    for sub, status in rows:
        out.setdefault(sub, []).append(status)
    return out


def _entries(engine: sa.Engine, kind: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.actor, audit_log.c.subject, audit_log.c.data)
                                 .where(audit_log.c.kind == kind).order_by(audit_log.c.id)))


def _lapse(engine: sa.Engine, pid: uuid.UUID, org: uuid.UUID, role: str) -> None:
    with engine.begin() as conn:
        conn.execute(memberships.update().where(
            memberships.c.person_id == pid, memberships.c.organisation_id == org, memberships.c.role == role,
        ).values(valid_until=_now() - timedelta(seconds=1)))


def _remove(engine: sa.Engine, pid: uuid.UUID, org: uuid.UUID, role: str) -> Any:
    return remove_membership(engine, grants=_grants(engine), person_id=pid, organisation_id=org, role=role,
                             actor="person:00000000-0000-0000-0000-0000000000aa@qg-console", now=_now())


def _suspend(engine: sa.Engine, pid: uuid.UUID) -> cutoff.CutOff:
    return cutoff.suspend_person(engine, sessions=SessionStore(engine, ttl_seconds=3600), grants=_grants(engine),
                                 person_id=pid, actor="admin", reason="leaked the company's data", now=_now())


# ---- closed when his part ends ---------------------------------------------------------------------


def test_a_dated_dispatchers_subscription_closes_when_his_role_lapses(engine: sa.Engine) -> None:
    org = make_org(engine)
    pid = _person(engine, org, "dispatcher", until=_now() + timedelta(hours=1))
    his = _subscribe(engine, _console(org, pid, "dispatcher"), "/his-own-server")
    company = _subscribe(engine, member(org), "/company")
    publish(engine, {org}, "release.issued")

    _lapse(engine, pid, org, "dispatcher")
    assert expire_due(engine, grants=_grants(engine), now=_now()) == 1

    assert _active(engine) == {his: False, company: True}
    assert _statuses(engine) == {his: ["cancelled"], company: ["pending"]}  # nothing more is sent to him
    publish(engine, {org}, "release.revoked")
    assert _statuses(engine) == {his: ["cancelled"], company: ["pending", "pending"]}
    [(actor, subject, data)] = _entries(engine, "release.webhook.subscription.closed")
    assert (actor, subject) == ({"client_id": "system:membership-expiry"}, str(his))
    assert data == {"organisation_id": str(org), "url": "https://hooks.example.com", "reason": "creator_role_expired",
                    "created_by_person_id": str(pid), "deliveries_cancelled": 1}
    [(_, _, expired)] = _entries(engine, "identity.membership.expired")
    assert expired["webhook_subscriptions_closed"] == [str(his)]


def test_a_dispatchers_subscriptions_close_when_his_last_acting_role_there_is_removed(engine: sa.Engine) -> None:
    org, elsewhere = make_org(engine), make_org(engine)
    pid = _person(engine, org, "dispatcher", "org_admin", "driver")
    _give(engine, pid, elsewhere, "dispatcher")
    his = _subscribe(engine, _console(org, pid, "dispatcher"), "/his")
    his_elsewhere = _subscribe(engine, _console(elsewhere, pid, "dispatcher"), "/his-elsewhere")
    company = _subscribe(engine, member(org), "/company")

    assert _remove(engine, pid, org, "dispatcher").webhook_subscriptions_closed == ()  # org_admin still acts
    assert _active(engine) == {his: True, his_elsewhere: True, company: True}
    done = _remove(engine, pid, org, "org_admin")  # a driver there acts for no one
    assert done.webhook_subscriptions_closed == (his,)
    assert _active(engine) == {his: False, his_elsewhere: True, company: True}
    [(actor, subject, data)] = _entries(engine, "release.webhook.subscription.closed")
    assert (actor["client_id"], subject, data["reason"]) == ("qg-console", str(his), "creator_role_removed")
    removed = [data for _, _, data in _entries(engine, "identity.admin.membership.removed")]
    assert [r["webhook_subscriptions_closed"] for r in removed] == [[], [str(his)]]


def test_a_suspended_persons_subscriptions_close_everywhere_and_stay_closed(engine: sa.Engine) -> None:
    org, other = make_org(engine), make_org(engine)
    pid = _person(engine, org, "dispatcher")
    _give(engine, pid, other, "org_admin")
    colleague = _person(engine, org, "dispatcher")
    his = _subscribe(engine, _console(org, pid, "dispatcher"), "/his")
    his_other = _subscribe(engine, _console(other, pid, "org_admin"), "/his-other")
    theirs = _subscribe(engine, _console(org, colleague, "dispatcher"), "/colleague")
    company = _subscribe(engine, member(other), "/company")

    cut = _suspend(engine, pid)
    assert sorted(cut.webhook_subscriptions_closed) == sorted((his, his_other))
    assert _active(engine) == {his: False, his_other: False, theirs: True, company: True}
    assert {(s, d["reason"]) for _, s, d in _entries(engine, "release.webhook.subscription.closed")} == {
        (str(his), "creator_suspended"), (str(his_other), "creator_suspended")}
    [(_, _, suspended)] = _entries(engine, "identity.admin.person.suspended")
    assert sorted(suspended["webhook_subscriptions_closed"]) == sorted((str(his), str(his_other)))

    cutoff.reinstate_person(engine, person_id=pid, actor="admin", reason="cleared", now=_now())
    assert _active(engine)[his] is False  # the company subscribes anew


def test_a_machine_clients_and_an_older_subscription_stay(engine: sa.Engine) -> None:
    """Made by the company's back end, or before the creator was kept (null): nobody's departure closes it."""
    org = make_org(engine)
    pid = _person(engine, org, "dispatcher")
    company = _subscribe(engine, member(org), "/company")
    older = _subscribe(engine, _console(org, pid, "dispatcher"), "/older")
    with engine.begin() as conn:
        conn.execute(webhook_subscriptions.update().where(webhook_subscriptions.c.id == older)
                     .values(created_by_client_id=None, created_by_person_id=None))
    _remove(engine, pid, org, "dispatcher")
    assert _active(engine) == {company: True, older: True}


def test_no_subscription_is_made_on_a_role_ended_or_by_a_suspended_person(engine: sa.Engine) -> None:
    """His token may still say dispatcher (issued before the end): the roles are read again as it is made."""
    org = make_org(engine)
    lapsed = _person(engine, org, "dispatcher", until=_now() + timedelta(hours=1))
    _lapse(engine, lapsed, org, "dispatcher")  # ended, not swept yet
    suspended = _person(engine, org, "dispatcher")
    _suspend(engine, suspended)
    for pid in (lapsed, suspended):
        with pytest.raises(DomainError) as err:
            _subscribe(engine, _console(org, pid, "dispatcher"), "/late")
        assert err.value.code is ErrorCode.FORBIDDEN
    assert _active(engine) == {}


@pytest.mark.postgres
@pytest.mark.parametrize("end", ["remove", "expire", "suspend"])
def test_a_subscription_made_as_his_role_ends_is_closed_with_it(pg_engine: sa.Engine, end: str) -> None:
    """The creation share-locks his row; the removal, the expiry (which lock it) and the suspension (its
    UPDATE) wait for it, then find the subscription and close it: none is left behind."""
    org = make_org(pg_engine)
    pid = _person(pg_engine, org, "dispatcher", until=_now() + timedelta(hours=1))
    with HeldBeforeCommit(pg_engine, "INSERT INTO webhook_subscriptions") as made:
        making, out = in_thread(lambda: _subscribe(pg_engine, _console(org, pid, "dispatcher"), "/his"))
        assert made.held.wait(10)
        if end == "expire":
            _lapse(pg_engine, pid, org, "dispatcher")
        ending, _ = in_thread(lambda: _remove(pg_engine, pid, org, "dispatcher") if end == "remove"
                              else _suspend(pg_engine, pid) if end == "suspend"
                              else expire_due(pg_engine, grants=_grants(pg_engine), now=_now()))
        waited = waits_on_a_lock(pg_engine, ending)
        made.go.set()
        making.join(20)
        ending.join(20)
    assert out and not ending.is_alive()
    assert waited
    assert _active(pg_engine) == {out[0]: False}


# ---- who made it, shown --------------------------------------------------------------------------


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Env]:
    yield from _serve(engine, tmp_path)


def test_who_made_a_subscription_is_shown(env: Env) -> None:
    client_id, secret, org = env.flow.console("transport_operator")
    pid = env.flow.person(given="Jan", family="Peeters")
    env.flow.member(pid, org, "dispatcher")
    console = _token(env, client_id, secret, pid)
    made = env.http.post("/api/v1/webhooks", headers=console, json=HOOK)
    assert made.status_code == 201, made.text
    assert made.json()["created_by"] == {"client_id": client_id, "person_id": str(pid)}

    fwd = env.p.fwd.organisation_id
    assert fwd is not None
    by_machine = env.http.post("/api/v1/webhooks", headers=env.as_("fwd"), json=HOOK)
    assert by_machine.status_code == 201, by_machine.text
    older = _subscribe(env.engine, member(fwd), "/older")
    with env.engine.begin() as conn:
        conn.execute(webhook_subscriptions.update().where(webhook_subscriptions.c.id == older)
                     .values(created_by_client_id=None, created_by_person_id=None))
    with env.engine.connect() as conn:
        fwd_client = conn.execute(sa.select(oauth_clients.c.client_id)
                                  .where(oauth_clients.c.organisation_id == fwd)).scalar_one()
    listed = env.http.get("/api/v1/webhooks", headers=env.as_("fwd"))
    assert listed.status_code == 200, listed.text
    assert {s["id"]: s["created_by"] for s in listed.json()} == {
        by_machine.json()["id"]: {"client_id": fwd_client, "person_id": None}, str(older): None}
    assert [s["created_by"] for s in env.http.get("/api/v1/webhooks", headers=console).json()] == [
        {"client_id": client_id, "person_id": str(pid)}]

"""A client of a deactivated organisation is not managed through RFC 7592 (review 163, finding 4). Its
registrant's registration access token answers GET, PUT and DELETE of the client configuration endpoint
as a deactivated client's does (401 invalid_token, rat_invalid), and is not swapped: during a
fraud-suspected deactivation the registrant read the client (getting a fresh token) or changed its name,
keys and redirect URIs (200). The organisation's reactivation gives the same token back its use."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.grants import grants_for
from identity.organisations import set_active
from identity.registration import RegistrationError, management_for
from quaygate.schema import oauth_clients
from tests.interleave import HeldBeforeCommit, in_thread, waits_on_a_lock
from tests.test_identity_grants_support import CONSOLE_REDIRECT, Lifecycle, make_lifecycle
from tests.test_identity_registration import _iat, _manage, _refusals, _register
from tests.test_identity_support import add_org


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path)


def _status(env: Lifecycle, org: uuid.UUID, *, active: bool) -> None:
    set_active(env.engine, grants_for(env.app), org, active=active, actor="qg-admin-test", reason="fraud suspected",
               now=datetime.now(UTC), access_token_ttl=300, on_change=env.provider.clients.changed)


def _client(env: Lifecycle, client_id: str) -> Any:
    with env.engine.connect() as conn:
        return conn.execute(sa.select(oauth_clients).where(oauth_clients.c.client_id == client_id)).one()


def test_a_client_of_a_deactivated_organisation_is_not_managed(env: Lifecycle) -> None:
    org = add_org(env.engine, "release_party")
    reg = _register(env, _iat(env, org), {"quaygate_role": "console", "redirect_uris": [CONSOLE_REDIRECT],
                                          "client_name": "Forwarder console"}).json()
    cid, rat = reg["client_id"], reg["registration_access_token"]
    _status(env, org, active=False)

    doc = {"client_id": cid, "client_name": "Renamed", "redirect_uris": ["https://evil.example/cb"]}
    for method, body in (("GET", None), ("PUT", doc), ("DELETE", None)):
        r = _manage(env, method, cid, rat, body)  # 200, 200, 204 before the mend
        assert r.status_code == 401 and r.json()["error"] == "invalid_token", (method, r.text)
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    row = _client(env, cid)
    assert row.active and row.name == "Forwarder console" and row.redirect_uris == [CONSOLE_REDIRECT]
    assert _refusals(env, "identity.client.manage.refused") == ["rat_invalid"] * 3  # as a deactivated client's
    with pytest.raises(RegistrationError) as refused:  # the service itself, not only the edge's header check
        management_for(env.app).read(cid, rat, now=datetime.now(UTC))
    assert refused.value.reason == "rat_invalid"

    _status(env, org, active=True)  # the token was not swapped: it works again
    read = _manage(env, "GET", cid, rat)
    assert read.status_code == 200 and read.json()["client_name"] == "Forwarder console", read.text


def test_a_client_of_an_active_organisation_is_managed_while_another_is_deactivated(env: Lifecycle) -> None:
    org = add_org(env.engine, "shipping_line")
    other = add_org(env.engine, "shipping_line")
    mine = _register(env, _iat(env, org), {}).json()
    _status(env, other, active=False)  # another organisation's deactivation changes nothing here
    r = _manage(env, "PUT", mine["client_id"], mine["registration_access_token"],
                {"client_id": mine["client_id"], "client_name": "Renamed"})
    assert r.status_code == 200 and r.json()["client_name"] == "Renamed", r.text


def test_a_change_during_its_organisations_deactivation_waits_and_is_refused(pg_engine: sa.Engine,
                                                                              tmp_path: Path) -> None:
    """The deactivation held open just before its COMMIT: a PUT of the client's registrant waits for it
    (the organisation's row, share-locked first), then is refused. Without the lock it read the
    organisation as active and renamed the client, committed after the deactivation."""
    for env in make_lifecycle(pg_engine, tmp_path):
        org = add_org(env.engine, "release_party")
        reg = _register(env, _iat(env, org), {"quaygate_role": "console", "redirect_uris": [CONSOLE_REDIRECT],
                                              "client_name": "Forwarder console"}).json()
        cid, rat = reg["client_id"], reg["registration_access_token"]
        doc = {"client_id": cid, "client_name": "Renamed", "redirect_uris": ["https://evil.example/cb"]}

        def put() -> str:
            try:
                management_for(env.app).update(cid, rat, doc, now=datetime.now(UTC))
            except RegistrationError as exc:
                return exc.reason
            return "updated"

        with HeldBeforeCommit(pg_engine, "UPDATE organisations") as held:
            cutting, _ = in_thread(lambda: _status(env, org, active=False))
            assert held.held.wait(10)
            putting, answered = in_thread(put)
            waited = waits_on_a_lock(pg_engine, putting)
            held.go.set()
            cutting.join(20)
            putting.join(20)
        assert waited and answered == ["rat_invalid"]
        assert _client(env, cid).name == "Forwarder console"

"""A person signed in to his company's console acts for it only in a role that manages its rights
(dispatcher, org_admin). A member who is only a driver neither acts for the company nor reads its
rights: he acts for himself, through the driver app (else a driver could nominate himself, and his own
truck, to any container his haulier holds, and be let through at the gate)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from identity.bootstrap import create_client
from release_service.domain.parties import OrgKind

from .factories import add_org
from .test_gate_policy import Env, _serve
from .test_identity_code_flow_support import CONSOLE_REDIRECT, Pkce, query
from .test_identity_par import _push

HOOK = {"url": "https://hooks.haulier.example/q", "event_types": ["release.nominated"]}


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Env]:
    yield from _serve(engine, tmp_path)


def _token(env: Env, client_id: str, secret: str, person: uuid.UUID) -> dict[str, str]:
    env.flow.login(person)
    pkce = Pkce()
    pushed = _push(env.flow, client_id, secret, pkce, scope="openid releases:read releases:write")
    assert pushed.status_code == 201, pushed.text
    resp = env.http.get("/oauth2/authorize", follow_redirects=False,
                        params={"client_id": client_id, "request_uri": pushed.json()["request_uri"]})
    r = env.flow.exchange(client_id, query(resp)["code"], pkce.verifier, redirect_uri=CONSOLE_REDIRECT, secret=secret)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _console_token(env: Env, *roles: str) -> tuple[dict[str, str], uuid.UUID]:
    client_id, secret, org = env.flow.console("transport_operator")
    pid = env.flow.person(given="Jan", family="Peeters")
    for role in roles:
        env.flow.member(pid, org, role)
    return _token(env, client_id, secret, pid), org


def test_a_member_who_is_only_a_driver_cannot_act_for_his_company(env: Env) -> None:
    headers, _ = _console_token(env, "driver")
    for r in (env.http.get("/api/v1/releases", headers=headers),
              env.http.post("/api/v1/webhooks", headers=headers, json=HOOK),
              env.http.put(f"/api/v1/releases/{uuid.uuid4()}/nomination", headers=headers,
                           json={"driver_person_id": str(uuid.uuid4()), "plate": {"text": "1-ABC-123",
                                                                                   "country": "BE"}})):
        assert r.status_code == 403, r.text
        assert r.headers["content-type"].startswith("application/problem+json") and r.json()["code"] == "forbidden"


@pytest.mark.parametrize("role", ["dispatcher", "org_admin"])
def test_a_dispatcher_or_an_org_admin_acts_for_it(env: Env, role: str) -> None:
    headers, _ = _console_token(env, "driver", role)
    assert env.http.get("/api/v1/releases", headers=headers).status_code == 200
    r = env.http.post("/api/v1/webhooks", headers=headers, json=HOOK)
    assert r.status_code == 201, r.text


def test_a_member_in_another_role_reads_but_does_not_act(env: Env) -> None:
    headers, _ = _console_token(env, "badge_office")
    assert env.http.get("/api/v1/releases", headers=headers).status_code == 200
    assert env.http.post("/api/v1/webhooks", headers=headers, json=HOOK).status_code == 403


def test_a_console_of_no_organisation_does_not_make_port_security(env: Env) -> None:
    """A console registered with no organisation (any integrator with an initial access token can) carries
    the person's roles in every organisation. A port-security officer signed in there must not see every
    right: the release API takes port security only from the port authority's own clients and console."""
    rid = env.pickable(30)
    client_id, secret = create_client(env.engine, name="third-party console", role="console", organisation_id=None,
                                      now=datetime.now(UTC), redirect_uris=[CONSOLE_REDIRECT])
    officer = env.flow.person(given="Sofie", family="Wouters")
    env.flow.member(officer, add_org(env.engine, OrgKind.PORT_AUTHORITY).organisation_id, "port_security_admin")
    headers = _token(env, client_id, secret or "", officer)
    r = env.http.get(f"/api/v1/releases/{rid}", headers=headers)
    assert r.status_code == 404, r.text

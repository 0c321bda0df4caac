"""Organisations deactivated and reactivated by port security (issue 4 "manage organisations"), on SQLite
and PostgreSQL: who, when and why kept; the organisation's clients get no tokens and lose the ones they
hold; it receives no new release rights, transfers or nominations; the admin route, the CLI, a race."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bootstrap import create_client, provider_for
from identity.clients import ClientRegistry
from identity.grants import GrantStore, RevocationList
from identity.organisations import OrganisationRefused, set_active
from identity.tokens import InvalidToken
from quaygate.cache import MemoryCache
from quaygate.cli import main
from quaygate.schema import audit_log, organisations
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.api.problems import STATUS
from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.parties import OrgKind
from release_service.services import issue, nominate, transfers
from tests.ban_register import Register
from tests.factories import add_org, do, issue_cmd, now, port
from tests.test_admin_console import _auth, _console, _officer, _problem, _token, console_flow
from tests.test_admin_console_session import _Later
from tests.test_identity_code_flow_support import Flow


@pytest.fixture
def register() -> Register:
    return Register()


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path, register: Register) -> Iterator[Flow]:
    yield from console_flow(engine, tmp_path, register)


def _org_row(flow: Flow, org: uuid.UUID) -> Any:
    with flow.engine.connect() as conn:
        return conn.execute(sa.select(organisations).where(organisations.c.id == org)).one()


def _entries(flow: Flow, kind: str) -> list[Any]:
    with flow.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.actor, audit_log.c.subject, audit_log.c.data)
                                 .where(audit_log.c.kind == kind).order_by(audit_log.c.id)).all())


def _machine(flow: Flow, org: uuid.UUID) -> tuple[str, str]:
    client_id, secret = create_client(flow.engine, name="line back end", role="shipping_line", organisation_id=org,
                                      now=datetime.now(UTC))
    assert secret is not None
    return client_id, secret


def _cc(flow: Flow, client: tuple[str, str]) -> Any:
    return flow.http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=client)


def _revoked(flow: Flow, token: str) -> bool:
    """What every resource server asks (the verifier checks the revocation list last)."""
    try:
        provider_for(flow.app).verifier.verify(token, audience=flow.container.settings.api_audience)
    except InvalidToken as exc:
        assert exc.description == "token revoked"
        return True
    return False


def test_port_security_deactivates_and_reactivates_saying_why(flow: Flow) -> None:
    org = add_org(flow.engine, OrgKind.TRANSPORT_OPERATOR, name="Haulage Van Dam").organisation_id
    client_id = _console(flow)
    officer = _officer(flow, "port_security_admin")
    token = _token(flow, client_id, officer)
    office = _token(flow, client_id, _officer(flow, "badge_office"))
    path = f"/admin/v1/organisations/{org}"
    _problem(flow.http.post(path + ":deactivate", json={"reason": "contract ended"}, headers=_auth(office)),
             403, "insufficient_role")
    _problem(flow.http.post(path + ":deactivate", json={"reason": "contract ended"}), 401, "invalid_request")
    _problem(flow.http.post(path + ":deactivate", json={"reason": "  "}, headers=_auth(token)), 422, "reason_required")
    assert flow.http.post(path + ":deactivate", json={}, headers=_auth(token)).status_code == 422
    _problem(flow.http.post(f"/admin/v1/organisations/{uuid.uuid4()}:deactivate", json={"reason": "x"},
                            headers=_auth(token)), 404, "not_found")
    assert _org_row(flow, org).active is True  # the refusals changed nothing
    r = flow.http.post(path + ":deactivate", json={"reason": "contract  ended"}, headers=_auth(token))
    assert r.status_code == 200, r.text
    got = r.json()
    who = {"person_id": str(officer), "client_id": client_id}
    assert (got["active"], got["status_reason"], got["status_changed_by"]) == (False, "contract ended", who)
    _problem(flow.http.post(path + ":deactivate", json={"reason": "again"}, headers=_auth(token)),
             409, "status_unchanged")
    listed = flow.http.get("/admin/v1/organisations", params={"q": "van dam"}, headers=_auth(token)).json()["items"]
    assert [(o["id"], o["active"]) for o in listed] == [(str(org), False)]
    r = flow.http.post(path + ":reactivate", json={"reason": "new contract"}, headers=_auth(token))
    assert r.status_code == 200 and r.json()["active"] is True, r.text
    _problem(flow.http.post(path + ":reactivate", json={"reason": "again"}, headers=_auth(token)),
             409, "status_unchanged")
    (a1, s1, d1), = _entries(flow, "identity.admin.organisation.deactivated")
    (a2, s2, d2), = _entries(flow, "identity.admin.organisation.reactivated")
    assert (a1, s1, d1["reason"]) == (who, str(org), "contract ended")
    assert (a2, s2, d2["reason"]) == (who, str(org), "new contract")


def test_the_console_does_not_deactivate_the_port_authority(flow: Flow) -> None:
    client_id = _console(flow)
    token = _token(flow, client_id, _officer(flow, "port_security_admin"))
    authority = add_org(flow.engine, OrgKind.PORT_AUTHORITY).organisation_id
    _problem(flow.http.post(f"/admin/v1/organisations/{authority}:deactivate", json={"reason": "oops"},
                            headers=_auth(token)), 403, "organisation_reserved")
    assert _org_row(flow, authority).active is True


def test_a_deactivated_organisations_clients_get_no_tokens_and_lose_theirs(flow: Flow) -> None:
    line = add_org(flow.engine, OrgKind.SHIPPING_LINE).organisation_id
    other = add_org(flow.engine, OrgKind.SHIPPING_LINE).organisation_id
    mine, theirs = _machine(flow, line), _machine(flow, other)
    before = _cc(flow, mine)
    assert before.status_code == 200, before.text
    old = before.json()["access_token"]
    assert not _revoked(flow, old)
    token = _token(flow, _console(flow), _officer(flow, "port_security_admin"))
    flow.container.clock = _Later(60)  # the admin API's: so the cutoff below is surely still ahead
    r = flow.http.post(f"/admin/v1/organisations/{line}:deactivate", json={"reason": "struck off"},
                       headers=_auth(token))
    assert r.status_code == 200, r.text
    # As a deactivated client: invalid_client at the token endpoint (RFC 6749 §5.2) ...
    refused = _cc(flow, mine)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client", refused.text
    # ... and the token it held is refused by every resource server from now on.
    assert _revoked(flow, old)
    assert _cc(flow, theirs).status_code == 200  # another organisation's client is untouched
    (_, _, data), = _entries(flow, "identity.admin.organisation.deactivated")
    assert data["clients"] == [mine[0]]
    r = flow.http.post(f"/admin/v1/organisations/{line}:reactivate", json={"reason": "reinstated"},
                       headers=_auth(token))
    assert r.status_code == 200, r.text
    # Reactivated before the cutoff: its tokens are refused up to RevocationList.CLIENT_MARGIN past the
    # deactivation, so none is issued until then (it would be refused for its whole life), only a wait.
    again = _cc(flow, mine)
    assert again.status_code == 429 and again.json()["error"] == "slow_down", again.text
    assert 60 < int(again.headers["retry-after"]) <= 66  # to the second after the cutoff
    assert _revoked(flow, old)  # the old token stays revoked: the client asks for a new one


def test_a_deactivated_organisation_receives_no_rights_transfers_or_nominations(flow: Flow) -> None:
    p = port(flow.engine)
    haul = p.haul.organisation_id
    assert haul is not None
    right, _ = do(flow.engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 1), now()))
    pending, _ = do(flow.engine, lambda uow: transfers.transfer(uow, p.fwd, right.id, haul, now()))
    set_active(flow.engine, provider_for(flow.app).grants, haul, active=False, actor="admin-client",
               reason="suspected fraud", now=now(), access_token_ttl=600)

    def refused(fn: Any) -> None:
        with pytest.raises(DomainError) as exc, SqlUnitOfWork(flow.engine) as uow:
            fn(uow)
        assert exc.value.code is ErrorCode.ORGANISATION_INACTIVE

    refused(lambda uow: issue.issue(uow, p.line, issue_cmd(p, 2, to=haul), now()))  # a new right
    refused(lambda uow: transfers.accept(uow, p.haul, pending.id, now()))  # a transfer already on its way
    # A right it already holds: it nominates no driver.
    held, _ = do(flow.engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 3, to=p.haul2.organisation_id), now()))
    assert STATUS[ErrorCode.ORGANISATION_INACTIVE] == 409
    set_active(flow.engine, provider_for(flow.app).grants, haul, active=True, actor="admin-client", reason="cleared",
               now=now(), access_token_ttl=600)
    # The transfer on its way was cancelled by the deactivation, and stays so (review 130): the sender sends again.
    with pytest.raises(DomainError) as gone, SqlUnitOfWork(flow.engine) as uow:
        transfers.accept(uow, p.haul, pending.id, now())
    assert gone.value.code is ErrorCode.TRANSFER_NOT_PENDING
    again, _ = do(flow.engine, lambda uow: transfers.transfer(uow, p.fwd, right.id, haul, now()))
    do(flow.engine, lambda uow: transfers.accept(uow, p.haul, again.id, now()))  # the haulier holds right 1
    set_active(flow.engine, provider_for(flow.app).grants, haul, active=False, actor="admin-client",
               reason="again", now=now(), access_token_ttl=600)
    cmd = nominate.NominateCommand("1ABC123", "BE", p.driver)
    refused(lambda uow: nominate.nominate(uow, p.haul, right.id, cmd, now()))
    refused(lambda uow: transfers.transfer(uow, p.haul2, held.id, haul, now()))  # a new transfer to it
    set_active(flow.engine, provider_for(flow.app).grants, haul, active=True, actor="admin-client", reason="ok",
               now=now(), access_token_ttl=600)
    done, _ = do(flow.engine, lambda uow: nominate.nominate(uow, p.haul, right.id, cmd, now()))
    assert done.nomination is not None


def test_two_officers_at_once_make_one_change(flow: Flow) -> None:
    org = add_org(flow.engine, OrgKind.RELEASE_PARTY).organisation_id
    assert org is not None
    grants = provider_for(flow.app).grants
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def go(n: int) -> None:
        start.wait()
        try:
            set_active(flow.engine, grants, org, active=False, actor=f"admin-{n}", reason="race", now=now(),
                       access_token_ttl=600)
            outcomes.append("done")
        except OrganisationRefused as exc:
            outcomes.append(exc.code)
        except sa.exc.OperationalError:  # SQLite's single writer: "database is locked" changes nothing
            outcomes.append("locked")

    threads = [threading.Thread(target=go, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("done") == 1, outcomes
    assert set(outcomes) <= {"done", "status_unchanged", "locked"}
    assert len(_entries(flow, "identity.admin.organisation.deactivated")) == 1


def test_the_cli_deactivates_and_reactivates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'q.db'}")
    monkeypatch.delenv("QUAYGATE_MODE", raising=False)
    monkeypatch.delenv("QUAYGATE_REDIS_URL", raising=False)
    assert main(["migrate"]) == 0
    assert main(["org", "create", "--name", "Line", "--kind", "shipping_line", "--eori", "BE0123456789"]) == 0
    org = capsys.readouterr().out.strip().splitlines()[-1]
    with pytest.raises(SystemExit):  # argparse: --reason is required
        main(["org", "deactivate", org])
    capsys.readouterr()
    assert main(["org", "deactivate", org, "--reason", "contract ended"]) == 0
    assert "deactivated" in capsys.readouterr().out
    assert main(["org", "deactivate", org, "--reason", "again"]) == 1
    assert "already inactive" in capsys.readouterr().err
    assert main(["org", "deactivate", "not-a-uuid", "--reason", "x"]) == 2
    assert main(["org", "reactivate", org, "--reason", " "]) == 2
    err = capsys.readouterr().err
    assert "UUID" in err and "Say why" in err and "Traceback" not in err
    assert main(["org", "reactivate", org, "--reason", "new contract"]) == 0
    assert main(["org", "reactivate", str(uuid.uuid4()), "--reason", "x"]) == 1


def _revoked_within(flow: Flow, token: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not _revoked(flow, token):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_without_redis_another_process_s_revocations_reach_this_one(flow: Flow) -> None:
    """Without Redis each process has a cache of its own. `quaygate org deactivate` runs in a process of
    its own, with its own cache, so its revocations reach a running server only through revoked_tokens,
    which the server's list reads again every second (RevocationList.FOLLOW_EVERY). Before, a CLI
    deactivation reached the server's tokens only at its restart."""
    line, other = (add_org(flow.engine, OrgKind.SHIPPING_LINE).organisation_id for _ in range(2))
    mine, theirs = _machine(flow, line), _machine(flow, other)
    held = _cc(flow, mine).json()["access_token"]
    kept = _cc(flow, theirs).json()["access_token"]
    assert not _revoked(flow, held) and not _revoked(flow, kept)
    settings = flow.container.settings
    # What the CLI builds: a grant store on its own in-process cache, the same database.
    cli = GrantStore(flow.engine, RevocationList(MemoryCache()), refresh_ttl=settings.refresh_token_ttl,
                     access_ttl=settings.access_token_ttl)
    set_active(flow.engine, cli, line, active=False, actor="cli", reason="struck off", now=datetime.now(UTC),
               access_token_ttl=settings.access_token_ttl)
    assert _revoked_within(flow, held, 5 * RevocationList.FOLLOW_EVERY)
    assert not _revoked(flow, kept)  # another organisation's token is untouched
    # A later revocation, read by a later follow (past the first one's watermark): one token by its jti.
    claims = provider_for(flow.app).verifier.verify(kept, audience=settings.api_audience)
    with flow.engine.begin() as conn:
        cli.revocations.add(conn, [(claims["jti"], datetime.fromtimestamp(claims["exp"], UTC))],
                            now=datetime.now(UTC))
    assert _revoked_within(flow, kept, 5 * RevocationList.FOLLOW_EVERY)


def test_without_redis_a_client_deactivated_by_another_process_gets_no_token_the_moment_after(flow: Flow) -> None:
    """The server remembered the client (a token a moment ago). Without Redis, the CLI's process bumps
    only its own epoch, so the server must not answer from a memory it cannot keep exact."""
    line = add_org(flow.engine, OrgKind.SHIPPING_LINE).organisation_id
    mine = _machine(flow, line)
    assert _cc(flow, mine).status_code == 200
    settings = flow.container.settings
    cli_cache = MemoryCache()  # what the CLI builds: its own cache, the same database
    cli = GrantStore(flow.engine, RevocationList(cli_cache), refresh_ttl=settings.refresh_token_ttl,
                     access_ttl=settings.access_token_ttl)
    set_active(flow.engine, cli, line, active=False, actor="cli", reason="struck off", now=datetime.now(UTC),
               access_token_ttl=settings.access_token_ttl, on_change=ClientRegistry(flow.engine, cli_cache).changed)
    refused = _cc(flow, mine)
    assert refused.status_code in (400, 401) and refused.json()["error"] in ("invalid_client", "unauthorized_client"), \
        refused.text


def test_a_deactivated_organisation_issues_nothing_and_sends_nothing_onward(flow: Flow) -> None:
    """Belt and braces beside the tokens' revocation: a token issued before the deactivation (a resource
    server that has not yet heard of it) lets its organisation issue no right, in one or in a batch, and
    send no transfer of a right it holds."""
    p = port(flow.engine)
    line, fwd = p.line.organisation_id, p.fwd.organisation_id
    assert line is not None and fwd is not None
    held, _ = do(flow.engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 1), now()))

    def refused(fn: Any) -> None:
        with pytest.raises(DomainError) as exc, SqlUnitOfWork(flow.engine) as uow:
            fn(uow)
        assert exc.value.code is ErrorCode.ORGANISATION_INACTIVE

    grants = provider_for(flow.app).grants

    def active(org: Any, yes: bool) -> None:
        set_active(flow.engine, grants, org, active=yes, actor="admin-client", reason="struck off", now=now(),
                   access_token_ttl=600)

    active(line, False)  # the recipient (fwd) stays active: only the issuer's own state refuses
    refused(lambda uow: issue.issue(uow, p.line, issue_cmd(p, 2), now()))
    refused(lambda uow: issue.issue_batch(uow, p.line, [issue_cmd(p, 3)], now()))
    active(line, True)
    active(fwd, False)  # the recipient (haul) is active: only the sender's own state refuses
    refused(lambda uow: transfers.transfer(uow, p.fwd, held.id, p.haul.organisation_id, now()))
    active(fwd, True)
    do(flow.engine, lambda uow: issue.issue(uow, p.line, issue_cmd(p, 2), now()))
    do(flow.engine, lambda uow: transfers.transfer(uow, p.fwd, held.id, p.haul.organisation_id, now()))

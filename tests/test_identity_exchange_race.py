"""A code exchange racing the end of its login session (review 126, medium), on PostgreSQL.

A thief on a stolen session keeps exchanging codes while the owner signs out everywhere else (or logs out,
removes the passkey, is suspended: each ends the sessions, then revokes the grants). An exchange that had
read the session live, unlocked, created its grant after the revocation had run, and the thief's refresh
family outlived the sign-out. The exchange now reads the session under a share lock (sessions.session_live):
the cut-off's UPDATE of the session waits for the exchange, and its revocation then sees the new grant.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.authn.cutoff import cut_off
from identity.oidc import code_grant
from identity.sessions import sessions_for
from tests.test_identity_code_flow_support import Flow, Pkce, make_flow
from tests.test_identity_support import utcnow


@pytest.fixture
def flow(pg_engine: sa.Engine, tmp_path: Path) -> Iterator[Flow]:
    yield from make_flow(pg_engine, tmp_path)


def test_a_grant_exchanged_while_its_session_is_cut_off_is_revoked_with_it(
        flow: Flow, monkeypatch: pytest.MonkeyPatch) -> None:
    client_id = flow.driver_app()
    person = flow.person()
    flow.login(person)
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    checked, go = threading.Event(), threading.Event()
    real = code_grant.session_live

    def paused(conn: Any, sid: str, *, now: Any) -> bool:
        live = real(conn, sid, now=now)
        checked.set()  # the exchange has judged the session live: hold it here
        assert go.wait(20)
        return live

    monkeypatch.setattr(code_grant, "session_live", paused)
    exchanged: list[Any] = []
    exchange = threading.Thread(target=lambda: exchanged.append(flow.exchange(client_id, code, pkce.verifier)))
    exchange.start()
    assert checked.wait(20)
    cut: list[Any] = []

    def sign_out() -> None:
        with flow.engine.begin() as conn:
            cut.append(cut_off(conn, sessions=sessions_for(flow.app), grants=flow.provider.grants, person_id=person,
                               keep=None, reason="signed_out_elsewhere", now=utcnow()))

    cutter = threading.Thread(target=sign_out)
    cutter.start()
    time.sleep(0.5)  # the cut-off reaches the session's row: it waits there for the exchange
    assert cutter.is_alive() and not cut
    go.set()
    exchange.join(20)
    cutter.join(20)
    assert not exchange.is_alive() and not cutter.is_alive()
    assert exchanged[0].status_code == 200, exchanged[0].text  # it read the session live, and got its tokens
    assert cut[0].grants_revoked == 1  # ... whose grant the cut-off then saw and revoked
    refreshed = flow.http.post("/oauth2/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                      "refresh_token": exchanged[0].json()["refresh_token"]})
    assert refreshed.status_code == 400, refreshed.text

"""A driver under a port ban in force is refused at every login, as at the brokered one (review of the
driver surface, finding 1): the passkey login, the first passkey enrolled with a code, the authorization
endpoint and the refresh of a grant he already holds; all with ``person_banned``. A ban never changes the
person's status, so the status checks alone let him in. Screening ``unavailable`` (no list, an old list,
a person the register cannot name) refuses no one, and a ban ended or lifted refuses no more. On SQLite
and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.bans.loader import load_feed
from quaygate.crypto import keyed_hash
from quaygate.schema import audit_log, enrolment_codes, persons, webauthn_credentials
from tests.ban_register import Register, ban, changes, national_number, snapshot
from tests.test_identity_code_flow_support import Flow, Pkce, make_flow, query
from tests.test_identity_passkeys import PEnv, build_env, device
from tests.test_identity_support import utcnow

NUMBER = national_number(321)
DAY = timedelta(days=1)


@pytest.fixture
def register() -> Register:
    return Register()


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path, register: Register) -> Iterator[PEnv]:
    yield from build_env(engine, tmp_path, ban_register_jwk=register.public_jwk)


@pytest.fixture
def flow(engine: sa.Engine, tmp_path: Path, register: Register) -> Iterator[Flow]:
    yield from make_flow(engine, tmp_path, ban_register_jwk=register.public_jwk)


def _identify(engine: sa.Engine, pepper: bytes, person_id: uuid.UUID, number: str = NUMBER) -> None:
    with engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == person_id)
                     .values(national_id_hash=keyed_hash(pepper, number)))


def _load(engine: sa.Engine, register: Register, pepper: bytes, feed: dict[str, Any]) -> None:
    load_feed(engine, register.sign(feed), key=register.public_key, pepper=pepper, now=utcnow(), max_feed_age=DAY)


def _ban(engine: sa.Engine, register: Register, pepper: bytes, **kw: Any) -> None:
    """A snapshot (sequence 1) with one ban of NUMBER, in force since yesterday unless ``kw`` says."""
    _load(engine, register, pepper, snapshot(1, utcnow(), [ban(NUMBER, "AIGIS-T-1", **{"start": utcnow() - DAY,
                                                                                          **kw})]))


def _kinds(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log.c.kind).order_by(audit_log.c.id)).scalars())


def _problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["code"] == code, body
    assert "set-cookie" not in resp.headers
    return body


# ---- passkeys -----------------------------------------------------------------------------------


def test_a_banned_person_is_refused_at_passkey_login(env: PEnv, register: Register) -> None:
    pid, phone = env.person(), device()
    env.enrol(pid, phone)
    pepper = env.container.settings.pepper_bytes()
    _identify(env.engine, pepper, pid)
    _ban(env.engine, register, pepper)
    body = _problem(env.login(phone), 403, "person_banned")
    assert body["office"] == "badge_office"  # whom he turns to, as the broker's refusal names
    assert _kinds(env.engine)[-1] == "identity.login.passkey.refused.person_banned"


def test_a_banned_person_cannot_enrol_his_first_passkey_with_a_code(env: PEnv, register: Register) -> None:
    pid = env.person()
    pepper = env.container.settings.pepper_bytes()
    _identify(env.engine, pepper, pid)
    _ban(env.engine, register, pepper)
    opts = env.post("/webauthn/registration/options", {"enrolment_code": env.code(pid)})
    assert opts.status_code == 200, opts.text
    done = env.post("/webauthn/registration/verify",
                    {"flow": opts.json()["flow"], "credential": device().create(opts.json()["publicKey"])})
    _problem(done, 403, "person_banned")
    with env.engine.connect() as conn:  # nothing of the enrolment kept: no passkey, the code still unused
        assert conn.execute(sa.select(sa.func.count()).select_from(webauthn_credentials)).scalar() == 0
        assert conn.execute(sa.select(enrolment_codes.c.used_at)).scalar() is None
    assert _kinds(env.engine)[-1] == "identity.passkey.registration.refused.person_banned"


def test_a_refused_passkey_login_holds_one_connection_at_a_time(pg_engine: sa.Engine, tmp_path: Path,
                                                                register: Register) -> None:
    """The refusal's audit entry (and the office it names) were read and written on a second connection while
    the login's was still held: a burst of a banned driver's logins each held one and waited for another, and
    the pool froze logins for everyone (as review 137 found of the authorization endpoint). With a pool of
    one connection, the refusal is answered."""
    one = sa.create_engine(pg_engine.url.render_as_string(hide_password=False), pool_size=1, max_overflow=0,
                           pool_timeout=2)
    try:
        for env in build_env(one, tmp_path, ban_register_jwk=register.public_jwk):
            pid, phone = env.person(), device()
            env.enrol(pid, phone)
            pepper = env.container.settings.pepper_bytes()
            _identify(one, pepper, pid)
            _ban(one, register, pepper)
            body = _problem(env.login(phone), 403, "person_banned")
            assert body["office"] == "badge_office"
            assert _kinds(one)[-1] == "identity.login.passkey.refused.person_banned"  # still committed
    finally:
        one.dispose()


@pytest.mark.parametrize("end", ["expired", "lifted"])
def test_a_ban_no_longer_in_force_refuses_no_login(env: PEnv, register: Register, end: str) -> None:
    pid, phone = env.person(), device()
    env.enrol(pid, phone)
    pepper = env.container.settings.pepper_bytes()
    _identify(env.engine, pepper, pid)
    if end == "expired":  # from ten days ago, for a week
        _ban(env.engine, register, pepper, start=utcnow() - 10 * DAY, days=7)
    else:
        _ban(env.engine, register, pepper)
        assert env.login(phone).status_code == 403
        _load(env.engine, register, pepper, changes(2, utcnow(), lifted=["AIGIS-T-1"]))
    assert env.login(phone).status_code == 200


@pytest.mark.parametrize("why", ["no_list", "old_list", "unidentified"])
def test_screening_unavailable_locks_no_one_out(env: PEnv, register: Register, why: str) -> None:
    """With a register configured, a login screens ``unavailable`` with no list in force, with one older
    than ban_list_max_age, or for a person with no national number on file: none of these is a ban."""
    pid, phone = env.person(), device()
    pepper = env.container.settings.pepper_bytes()
    if why != "unidentified":
        _identify(env.engine, pepper, pid)
    if why == "old_list":  # another person's ban, on a list issued two days ago (the maximum age is one)
        old = utcnow() - 2 * DAY
        load_feed(env.engine, register.sign(snapshot(1, old, [ban(national_number(7), "AIGIS-T-7", start=old)])),
                  key=register.public_key, pepper=pepper, now=old, max_feed_age=DAY)
    elif why == "unidentified":
        _ban(env.engine, register, pepper)  # his number is banned, but he is not linked to it
    env.enrol(pid, phone)  # the first passkey, with a code
    assert env.login(phone).status_code == 200


# ---- the authorization endpoint and the refresh -------------------------------------------------


def _banned_driver_tokens(flow: Flow, register: Register) -> tuple[str, uuid.UUID, dict[str, Any]]:
    """A driver with the app's tokens (his grant) from before the ban, and then the ban."""
    client_id, pid = flow.driver_app(), flow.person()
    pepper = flow.container.settings.pepper_bytes()
    _identify(flow.engine, pepper, pid)
    tokens = flow.driver_tokens(client_id, pid)
    _ban(flow.engine, register, pepper)
    return client_id, pid, tokens


def _refresh(flow: Flow, client_id: str, token: str) -> Any:
    return flow.http.post("/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": token,
                                                 "client_id": client_id})


def _refusal_reasons(engine: sa.Engine, kind: str) -> list[str]:
    with engine.connect() as conn:
        return [d["reason"] for d in conn.execute(sa.select(audit_log.c.data).where(audit_log.c.kind == kind)
                                                  .order_by(audit_log.c.id)).scalars()]


def test_a_banned_driver_cannot_refresh_a_grant_he_holds(flow: Flow, register: Register) -> None:
    client_id, _, tokens = _banned_driver_tokens(flow, register)
    refused = _refresh(flow, client_id, tokens["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant", refused.text
    assert _refusal_reasons(flow.engine, "identity.token.refused") == ["person_banned"]


def test_a_banned_driver_gets_no_code_at_the_authorization_endpoint(flow: Flow, register: Register) -> None:
    client_id, pid, _ = _banned_driver_tokens(flow, register)
    flow.login(pid)  # a login session from before the ban
    assert query(flow.authorize(client_id, pkce=Pkce()))["error"] == "access_denied"
    assert _refusal_reasons(flow.engine, "identity.authorize.refused") == ["person_banned"]


def test_a_ban_loaded_between_the_code_and_its_exchange_refuses_the_exchange(flow: Flow, register: Register) -> None:
    """The code was issued before the ban (up to 60 s before): its exchange screens him again."""
    client_id, pid = flow.driver_app(), flow.person()
    pepper = flow.container.settings.pepper_bytes()
    _identify(flow.engine, pepper, pid)
    flow.login(pid)
    pkce = Pkce()
    code = flow.code(flow.authorize(client_id, pkce=pkce))
    _ban(flow.engine, register, pepper)
    refused = flow.exchange(client_id, code, pkce.verifier)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant", refused.text


def test_a_refused_authorization_holds_one_connection_at_a_time(flow: Flow, register: Register) -> None:
    """Review 137, finding 1: the refusal's audit entry was written on a second connection while the first was
    held, so concurrent refusals (a banned driver's login session still live, GET /oauth2/authorize in a
    loop) each held one and waited for another: the pool froze. Now on the same connection."""
    client_id, pid, _ = _banned_driver_tokens(flow, register)
    flow.login(pid)
    held, peak = [0], [0]

    def out(*_: Any) -> None:
        held[0] += 1
        peak[0] = max(peak[0], held[0])

    def back(*_: Any) -> None:
        held[0] -= 1

    pool = flow.engine.pool
    sa.event.listen(pool, "checkout", out)
    sa.event.listen(pool, "checkin", back)
    try:
        assert query(flow.authorize(client_id, pkce=Pkce()))["error"] == "access_denied"
    finally:
        sa.event.remove(pool, "checkout", out)
        sa.event.remove(pool, "checkin", back)
    assert peak[0] == 1
    assert _refusal_reasons(flow.engine, "identity.authorize.refused") == ["person_banned"]  # still committed


def test_a_driver_whose_ban_is_lifted_refreshes_again(flow: Flow, register: Register) -> None:
    client_id, _, tokens = _banned_driver_tokens(flow, register)
    _load(flow.engine, register, flow.container.settings.pepper_bytes(),
          changes(2, utcnow(), lifted=["AIGIS-T-1"]))
    assert _refresh(flow, client_id, tokens["refresh_token"]).status_code == 200


def test_without_a_register_the_logins_screen_no_one(engine: sa.Engine, tmp_path: Path, register: Register) -> None:
    """As the brokered login: only once a register is configured (QUAYGATE_BAN_REGISTER_JWK) does a ban
    refuse a login (without one, no list is ever loaded: bans left from an earlier register count not)."""
    for env in build_env(engine, tmp_path):
        pid, phone = env.person(), device()
        env.enrol(pid, phone)
        pepper = env.container.settings.pepper_bytes()
        _identify(env.engine, pepper, pid)
        _ban(env.engine, register, pepper)
        assert env.login(phone).status_code == 200

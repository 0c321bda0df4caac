"""Passkeys end to end over HTTP (WebAuthn Level 3 §7.1, §7.2), with a standards-following software
authenticator (tests/webauthn_authenticator.py), on SQLite and PostgreSQL: enrolment with a badge
office code, login, more passkeys, management, and every way in an attacker would try."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from identity.api.passkeys import router as passkey_router
from identity.api.routes import build_router
from identity.authn import enrolment, passkeys
from identity.bootstrap import create_client, provider_for
from identity.sessions import sessions_for
from quaygate.cache import Cache, MemoryCache, RedisCache
from quaygate.container import Container
from quaygate.crypto import DataCipher
from quaygate.schema import audit_log, enrolment_codes, persons, webauthn_credentials
from quaygate.settings import Settings
from release_service.api import problems
from tests.test_identity_support import ISSUER, add_org, basic
from tests.webauthn_authenticator import SoftAuthenticator, b64url, unb64url

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

ORIGIN = ISSUER  # http://127.0.0.1:8000: RP id 127.0.0.1
ANDROID = "android:apk-key-hash:" + b64url(b"\x01" * 32)


@dataclass
class Clock:
    now_: datetime = field(default_factory=lambda: datetime.now(UTC))

    def now(self) -> datetime:
        return self.now_

    def advance(self, **kw: float) -> None:
        self.now_ += timedelta(**kw)


@dataclass
class PEnv:
    app: FastAPI
    http: TestClient
    container: Container
    clock: Clock

    @property
    def engine(self) -> sa.Engine:
        return self.container.engine

    def call(self, method: str, path: str, body: Any = None, *, origin: str | None = ORIGIN,
             cookie: str | None = None) -> Any:
        """One request as the browser would send it: our Origin, the session cookie if given, no other
        cookie (the test client's jar is emptied, so no Set-Cookie of an earlier call leaks in)."""
        headers = {"Origin": origin} if origin else {}
        if cookie:
            headers["Cookie"] = f"qg_session={cookie}"
        self.http.cookies.clear()
        if method == "GET":
            return self.http.get(path, headers=headers)
        if method == "DELETE":
            return self.http.delete(path, headers=headers)
        return self.http.request(method, path, json=body if body is not None else {}, headers=headers)

    def post(self, path: str, body: Any = None, *, origin: str | None = ORIGIN, cookie: str | None = None) -> Any:
        return self.call("POST", path, body, origin=origin, cookie=cookie)

    def person(self, status: str = "active") -> uuid.UUID:
        pid = uuid.uuid4()
        with self.engine.begin() as conn:
            conn.execute(persons.insert().values(id=pid, given_name="Jan", family_name="Peeters",
                                                 created_at=self.clock.now(), status=status))
        return pid

    def code(self, person_id: uuid.UUID, **kw: Any) -> str:
        code, _ = enrolment.issue_code(self.engine, person_id, created_by="test badge office",
                                       now=kw.pop("now", self.clock.now()), refused_roles=enrolment.NO_ROLE_REFUSED,
                                       **kw)
        return code

    def enrol(self, person_id: uuid.UUID, device: SoftAuthenticator, name: str = "My phone") -> tuple[str, str]:
        """Enrol with a fresh code; return (credential id, session cookie)."""
        opts = self.post("/webauthn/registration/options", {"enrolment_code": self.code(person_id)})
        assert opts.status_code == 200, opts.text
        created = device.create(opts.json()["publicKey"])
        done = self.post("/webauthn/registration/verify",
                         {"flow": opts.json()["flow"], "credential": created, "name": name})
        assert done.status_code == 201, done.text
        return done.json()["credential_id"], done.cookies["qg_session"]

    def login_options(self) -> tuple[str, dict[str, Any]]:
        resp = self.post("/webauthn/authentication/options")
        assert resp.status_code == 200, resp.text
        return resp.json()["flow"], resp.json()["publicKey"]

    def login(self, device: SoftAuthenticator, return_to: str | None = None, **kw: Any) -> Any:
        flow, options = self.login_options()
        return self.post("/webauthn/authentication/verify",
                         {"flow": flow, "credential": device.get(options, **kw), "return_to": return_to})

    def upstream_session(self, person_id: uuid.UUID) -> str:
        """A fresh session no passkey of ours opened (an upstream login's): its cookie."""
        cookie, _ = sessions_for(self.app).create(person_id, acr="urn:quaygate:acr:upstream", amr=("fed",),
                                                  now=self.clock.now())
        return cookie

    def audit_kinds(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(audit_log.c.kind).order_by(audit_log.c.id)).scalars())

    def credential_row(self, credential_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(webauthn_credentials).where(
                webauthn_credentials.c.credential_id == credential_id)).one()


def build_env(engine: sa.Engine, tmp_path: Path, cache: Cache | None = None, **settings: Any) -> Iterator[PEnv]:
    s = Settings(var_dir=tmp_path, **{"issuer": ISSUER, **settings})
    clock = Clock()
    container = Container(settings=s, engine=engine, cache=cache or MemoryCache(),
                          cipher=DataCipher(s.data_key_bytes()), clock=clock)  # type: ignore[arg-type]
    app = FastAPI()
    problems.install(app)
    app.include_router(build_router())
    app.include_router(passkey_router)
    app.state.container = container
    app.state.token_verifier = provider_for(app).verifier
    with TestClient(app) as http:
        yield PEnv(app, http, container, clock)


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[PEnv]:
    yield from build_env(engine, tmp_path)


def device() -> SoftAuthenticator:
    return SoftAuthenticator(origin=ORIGIN)


def _problem(resp: Any, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == code, resp.json()
    assert "set-cookie" not in resp.headers


# ---- the happy paths ----------------------------------------------------------------------------


def test_enrol_with_a_code_then_log_in_with_the_passkey(env: PEnv) -> None:
    pid = env.person()
    phone = device()
    code = env.code(pid)
    opts = env.post("/webauthn/registration/options", {"enrolment_code": code.lower().replace("-", " ")})
    assert opts.status_code == 200, opts.text
    pk = opts.json()["publicKey"]
    assert pk["rp"] == {"id": "127.0.0.1", "name": "quaygate"}
    assert pk["authenticatorSelection"]["residentKey"] == "required"
    assert pk["authenticatorSelection"]["userVerification"] == "required"
    assert pk["attestation"] == "none" and pk["excludeCredentials"] == []
    assert {p["alg"] for p in pk["pubKeyCredParams"]} == {-7, -257, -8}
    assert pk["user"]["displayName"] == "Jan Peeters"
    handle = unb64url(pk["user"]["id"])
    assert handle != pid.bytes and str(pid) not in pk["user"]["id"] and len(handle) == 32

    reg = env.post("/webauthn/registration/verify",
                   {"flow": opts.json()["flow"], "credential": phone.create(pk), "name": "  My\tphone "})
    assert reg.status_code == 201, reg.text
    assert reg.json()["name"] == "My phone"
    cid = reg.json()["credential_id"]
    set_cookie = reg.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie and "path=/" in set_cookie
    assert f"max-age={env.container.settings.session_ttl}" in set_cookie and "secure" not in set_cookie
    row = env.credential_row(cid)
    assert row.person_id == pid and row.status == "active" and row.sign_count == 1
    assert row.transports == ["internal", "hybrid"] and row.name == "My phone"

    flow, options = env.login_options()
    assert options["rpId"] == "127.0.0.1" and options["allowCredentials"] == []
    assert options["userVerification"] == "required"
    resp = env.post("/webauthn/authentication/verify",
                    {"flow": flow, "credential": phone.get(options), "return_to": "/oauth2/authorize?x=1"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"ok": True, "return_to": "/oauth2/authorize?x=1"}
    session = sessions_for(env.app).get(resp.cookies["qg_session"], now=env.clock.now())
    assert session is not None and session.person_id == pid
    assert session.acr == "urn:quaygate:acr:passkey" and session.amr == ("hwk", "user", "mfa")
    row = env.credential_row(cid)
    assert row.sign_count == 2 and row.last_used_at == env.clock.now()
    kinds = env.audit_kinds()
    assert kinds.count("identity.passkey.registered") == 1
    assert kinds.count("identity.login.passkey.succeeded") == 2  # the enrolment logs in, then the login


def test_a_second_passkey_is_added_from_a_recent_session_and_both_log_in(env: PEnv) -> None:
    pid = env.person()
    phone, tablet = device(), device()
    first, cookie = env.enrol(pid, phone)
    env.clock.advance(seconds=1)
    opts = env.post("/webauthn/registration/options", cookie=cookie)
    assert opts.status_code == 200, opts.text
    pk = opts.json()["publicKey"]
    assert [c["id"] for c in pk["excludeCredentials"]] == [first]
    with pytest.raises(RuntimeError, match="InvalidStateError"):  # the same phone is not registered twice
        phone.create(pk)
    reg = env.post("/webauthn/registration/verify",
                   {"flow": opts.json()["flow"], "credential": tablet.create(pk), "name": "Tablet"}, cookie=cookie)
    assert reg.status_code == 201, reg.text
    assert "set-cookie" not in reg.headers  # the existing session stays
    assert env.login(phone).status_code == 200
    assert env.login(tablet).status_code == 200
    listed = env.call("GET", "/account/passkeys", cookie=cookie).json()
    assert [(p["name"], p["status"]) for p in listed] == [("My phone", "active"), ("Tablet", "active")]
    assert listed[0]["last_used_at"] is not None


def test_a_synced_passkey_without_a_counter_logs_in_again_and_again(env: PEnv) -> None:
    synced = SoftAuthenticator(origin=ORIGIN, counter=False, backup=True)
    cid, _ = env.enrol(env.person(), synced)
    assert env.credential_row(cid).backup_eligible is True
    for _ in range(3):
        assert env.login(synced).status_code == 200
    assert env.credential_row(cid).status == "active"


def test_the_android_app_origin_is_accepted_when_configured(engine: sa.Engine, tmp_path: Path) -> None:
    for penv in build_env(engine, tmp_path, webauthn_android_origins=[ANDROID]):
        phone = device()
        penv.enrol(penv.person(), phone)
        assert penv.login(phone, origin=ANDROID).status_code == 200
    for penv in build_env(engine, tmp_path):  # not configured: refused
        phone = device()
        penv.enrol(penv.person(), phone)
        _problem(penv.login(phone, origin=ANDROID), 401, "passkey_invalid")


def test_the_session_cookie_is_secure_behind_an_https_issuer(engine: sa.Engine, tmp_path: Path) -> None:
    issuer = "https://id.quaygate.test"
    for penv in build_env(engine, tmp_path, issuer=issuer, webauthn_rp_id="quaygate.test"):
        phone = SoftAuthenticator(origin=issuer)
        opts = penv.post("/webauthn/registration/options", {"enrolment_code": penv.code(penv.person())},
                         origin=issuer).json()
        assert opts["publicKey"]["rp"]["id"] == "quaygate.test"
        reg = penv.post("/webauthn/registration/verify", {"flow": opts["flow"],
                                                          "credential": phone.create(opts["publicKey"])},
                        origin=issuer)
        assert reg.status_code == 201, reg.text
        assert "secure" in reg.headers["set-cookie"].lower()
        # Our plain-http origin is not one of this deployment's.
        _problem(penv.post("/webauthn/authentication/options", origin=ORIGIN), 403, "origin_refused")


# ---- enrolment codes ----------------------------------------------------------------------------


def test_an_enrolment_code_is_used_once(env: PEnv) -> None:
    pid = env.person()
    code = env.code(pid)
    opts = env.post("/webauthn/registration/options", {"enrolment_code": code})
    env.post("/webauthn/registration/verify",
             {"flow": opts.json()["flow"], "credential": device().create(opts.json()["publicKey"])})
    _problem(env.post("/webauthn/registration/options", {"enrolment_code": code}), 400, "enrolment_code_used")


def test_two_registrations_opened_with_one_code_register_only_one_passkey(env: PEnv) -> None:
    """The conditional UPDATE at verify, not the check at options, makes the code single use."""
    pid = env.person()
    code = env.code(pid)
    first = env.post("/webauthn/registration/options", {"enrolment_code": code}).json()
    second = env.post("/webauthn/registration/options", {"enrolment_code": code}).json()
    ok = env.post("/webauthn/registration/verify",
                  {"flow": first["flow"], "credential": device().create(first["publicKey"])})
    assert ok.status_code == 201
    _problem(env.post("/webauthn/registration/verify",
                      {"flow": second["flow"], "credential": device().create(second["publicKey"])}),
             400, "enrolment_code_used")
    with env.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webauthn_credentials)).scalar_one() == 1


def test_expired_and_unknown_enrolment_codes_are_refused(env: PEnv) -> None:
    pid = env.person()
    old = env.code(pid, now=env.clock.now() - timedelta(hours=73))
    _problem(env.post("/webauthn/registration/options", {"enrolment_code": old}), 400, "enrolment_code_expired")
    _problem(env.post("/webauthn/registration/options", {"enrolment_code": "ABCD-EFGH-JKMN-PQRS"}),
             400, "enrolment_code_unknown")
    with env.engine.connect() as conn:
        assert conn.execute(sa.select(enrolment_codes.c.used_at)).scalars().all() == [None]


def test_a_code_expiring_after_its_flow_started_is_refused_at_verify(env: PEnv) -> None:
    pid = env.person()
    code = env.code(pid, ttl=timedelta(seconds=10))
    opts = env.post("/webauthn/registration/options", {"enrolment_code": code}).json()
    env.clock.advance(seconds=11)  # the flow (300 s) still lives, the code does not
    created = device().create(opts["publicKey"])
    _problem(env.post("/webauthn/registration/verify", {"flow": opts["flow"], "credential": created}),
             400, "enrolment_code_expired")


def test_registration_options_need_a_recent_session_or_a_code(env: PEnv) -> None:
    _problem(env.post("/webauthn/registration/options"), 401, "login_required")
    _problem(env.post("/webauthn/registration/options", cookie="not-a-session"), 401, "login_required")
    pid = env.person()
    _, cookie = env.enrol(pid, device())
    env.clock.advance(minutes=16)
    _problem(env.post("/webauthn/registration/options", cookie=cookie), 401, "reauthentication_required")


def test_registration_with_a_session_needs_the_same_session_at_verify(env: PEnv) -> None:
    pid = env.person()
    _, cookie = env.enrol(pid, device())
    opts = env.post("/webauthn/registration/options", cookie=cookie).json()
    created = device().create(opts["publicKey"])
    _problem(env.post("/webauthn/registration/verify", {"flow": opts["flow"], "credential": created}),
             401, "login_required")


def test_a_suspended_person_cannot_enrol_nor_log_in(env: PEnv) -> None:
    pid = env.person()
    phone = device()
    code = env.code(pid)
    env.enrol(pid, phone)
    with env.engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == pid).values(status="suspended"))
    _problem(env.login(phone), 403, "person_suspended")
    del code
    with pytest.raises(enrolment.EnrolmentRefused):
        env.code(pid)


def test_registration_without_user_verification_is_refused(env: PEnv) -> None:
    pid = env.person()
    opts = env.post("/webauthn/registration/options", {"enrolment_code": env.code(pid)}).json()
    _problem(env.post("/webauthn/registration/verify",
                      {"flow": opts["flow"], "credential": device().create(opts["publicKey"], uv=False)}),
             401, "passkey_invalid")


# ---- attacks on the login -----------------------------------------------------------------------


def test_a_replayed_assertion_is_refused(env: PEnv) -> None:
    """A synced passkey keeps no counter, so only the single-use challenge stops the replay."""
    synced = SoftAuthenticator(origin=ORIGIN, counter=False)
    env.enrol(env.person(), synced)
    flow, options = env.login_options()
    body = {"flow": flow, "credential": synced.get(options)}
    assert env.post("/webauthn/authentication/verify", body).status_code == 200
    _problem(env.post("/webauthn/authentication/verify", body), 400, "challenge_expired")
    # The same signed response under a new flow fails: it signed the old challenge.
    flow2, _ = env.login_options()
    _problem(env.post("/webauthn/authentication/verify", {**body, "flow": flow2}), 401, "passkey_invalid")
    assert "identity.login.passkey.refused.challenge_expired" in env.audit_kinds()


def test_a_flow_is_used_by_the_first_assertion_that_verifies_and_then_never_again(env: PEnv) -> None:
    """The flow is claimed once the signature holds (review 67, finding 4: an anonymous caller's refused
    attempt writes nothing): a refused assertion leaves it, the first that verifies uses it, whatever
    comes after (here a suspended person), and no other assertion over its challenge is taken again."""
    synced = SoftAuthenticator(origin=ORIGIN, counter=False)
    pid = env.person()
    env.enrol(pid, synced)
    flow, options = env.login_options()
    _problem(env.post("/webauthn/authentication/verify",
                      {"flow": flow, "credential": synced.get(options, uv=False)}), 401, "passkey_invalid")
    with env.engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == pid).values(status="suspended"))
    _problem(env.post("/webauthn/authentication/verify", {"flow": flow, "credential": synced.get(options)}),
             403, "person_suspended")
    with env.engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == pid).values(status="active"))
    _problem(env.post("/webauthn/authentication/verify", {"flow": flow, "credential": synced.get(options)}),
             400, "challenge_expired")
    assert env.login(synced).status_code == 200


def test_concurrent_replays_of_one_flow_log_in_once(env: PEnv) -> None:
    synced = SoftAuthenticator(origin=ORIGIN, counter=False)
    env.enrol(env.person(), synced)
    flow, options = env.login_options()
    body = {"flow": flow, "credential": synced.get(options)}
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(
            lambda _: env.http.post("/webauthn/authentication/verify", json=body,
                                    headers={"Origin": ORIGIN}).status_code,
            range(8)))
    assert sorted(statuses) == [200] + [400] * 7


def test_an_expired_or_foreign_flow_is_refused(env: PEnv) -> None:
    phone = device()
    pid = env.person()
    cid, cookie = env.enrol(pid, phone)
    flow, options = env.login_options()
    env.clock.advance(seconds=env.container.settings.webauthn_challenge_ttl + 1)
    _problem(env.post("/webauthn/authentication/verify", {"flow": flow, "credential": phone.get(options)}),
             400, "challenge_expired")
    # A registration flow does not verify a login, even when the assertion signs its challenge.
    _, cookie = env.enrol(pid, device())
    reg = env.post("/webauthn/registration/options", cookie=cookie).json()
    signed = phone.get({"rpId": "127.0.0.1", "challenge": reg["publicKey"]["challenge"]}, credential_id=cid)
    _problem(env.post("/webauthn/authentication/verify", {"flow": reg["flow"], "credential": signed}),
             400, "challenge_expired")
    _problem(env.post("/webauthn/authentication/verify", {"flow": "x" * 32, "credential": phone.get(options)}),
             400, "challenge_expired")


def test_an_assertion_made_for_another_origin_is_refused(env: PEnv) -> None:
    phone = device()
    env.enrol(env.person(), phone)
    # A phishing page relays our challenge; the browser writes the page's real origin into clientData.
    _problem(env.login(phone, origin="https://quaygate.evil.example"), 401, "passkey_invalid")
    assert env.login(phone).status_code == 200


def test_an_assertion_made_in_a_cross_origin_iframe_is_refused(env: PEnv) -> None:
    phone = device()
    env.enrol(env.person(), phone)
    _problem(env.login(phone, cross_origin=True), 401, "passkey_invalid")


def test_an_assertion_for_another_rp_id_is_refused(env: PEnv) -> None:
    phone = device()
    env.enrol(env.person(), phone)
    _problem(env.login(phone, rp_id="evil.example"), 401, "passkey_invalid")


def test_an_assertion_without_user_verification_is_refused(env: PEnv) -> None:
    phone = device()
    env.enrol(env.person(), phone)
    _problem(env.login(phone, uv=False), 401, "passkey_invalid")
    assert env.login(phone).status_code == 200


def test_a_counter_regression_suspends_the_credential_audits_it_and_refuses_it_after(env: PEnv) -> None:
    phone = device()
    cid, _ = env.enrol(env.person(), phone)
    assert env.login(phone, sign_count=5).status_code == 200
    _problem(env.login(phone, sign_count=3), 401, "passkey_suspended")  # a clone of the key, behind
    row = env.credential_row(cid)
    assert (row.status, row.status_reason, row.sign_count) == ("suspended", "counter_regression", 5)
    assert "identity.passkey.suspended.counter_regression" in env.audit_kinds()
    # The genuine device, ahead again, is refused too until the badge office steps in.
    _problem(env.login(phone, sign_count=50), 401, "passkey_suspended")
    _problem(env.login(phone, sign_count=5), 401, "passkey_suspended")  # equal is not greater


def test_an_equal_counter_is_a_regression(env: PEnv) -> None:
    phone = device()
    cid, _ = env.enrol(env.person(), phone)
    assert env.login(phone, sign_count=7).status_code == 200
    _problem(env.login(phone, sign_count=7), 401, "passkey_suspended")
    assert env.credential_row(cid).status == "suspended"


def test_a_forged_low_counter_does_not_suspend_the_credential(env: PEnv) -> None:
    """Only a signed counter counts: else anyone could lock a driver out with one bad request."""
    phone = device()
    cid, _ = env.enrol(env.person(), phone)
    assert env.login(phone, sign_count=5).status_code == 200
    flow, options = env.login_options()
    forged = phone.get(options, sign_count=1)
    sig = bytearray(unb64url(forged["response"]["signature"]))
    sig[-1] ^= 1
    forged["response"]["signature"] = b64url(bytes(sig))
    _problem(env.post("/webauthn/authentication/verify", {"flow": flow, "credential": forged}),
             401, "passkey_invalid")
    assert env.credential_row(cid).status == "active"


def test_a_removed_credential_cannot_log_in(env: PEnv) -> None:
    phone, spare = device(), device()
    pid = env.person()
    cid, cookie = env.enrol(pid, phone)
    env.enrol(pid, spare)
    resp = env.call("DELETE", f"/account/passkeys/{cid}", cookie=cookie)
    assert resp.status_code == 200, resp.text
    # The removed passkey had opened this very session: it ends too (review 122, finding 1).
    assert resp.json() == {"credential_id": cid, "status": "removed", "active_remaining": 1, "signed_out": True}
    _problem(env.login(phone), 401, "passkey_unknown")
    assert env.credential_row(cid).status == "removed"  # marked, never deleted
    assert env.login(spare).status_code == 200


def test_a_credential_of_one_person_cannot_log_in_as_another(env: PEnv) -> None:
    """The assertion names person B's user handle but is signed with person A's key."""
    a, b = env.person(), env.person()
    phone_a, phone_b = device(), device()
    env.enrol(a, phone_a)
    env.enrol(b, phone_b)
    handle_b = next(iter(phone_b.keys.values())).user_handle
    _problem(env.login(phone_a, user_handle=handle_b), 401, "passkey_invalid")
    assert "identity.login.passkey.refused.user_handle_mismatch" in env.audit_kinds()


def test_an_unknown_credential_and_garbage_are_refused_without_telling_who_exists(env: PEnv) -> None:
    stranger = device()
    stranger.create({"rp": {"id": "127.0.0.1"}, "user": {"id": b64url(b"u" * 32)}, "challenge": b64url(b"c" * 32),
                     "pubKeyCredParams": [{"alg": -7}]})
    _problem(env.login(stranger), 401, "passkey_unknown")
    flow, _ = env.login_options()
    _problem(env.post("/webauthn/authentication/verify", {"flow": flow, "credential": {"id": "x"}}),
             401, "passkey_invalid")
    resp = env.post("/webauthn/authentication/verify", {"flow": "abc"})
    assert resp.status_code == 422


def _forged(env: PEnv, victim: str) -> dict[str, Any]:
    """A login assertion an anonymous caller makes: signed by a key of his own (registered nowhere), its
    id and rawId set to the victim's credential id. Returns the verify body."""
    forger = device()
    forger.create({"rp": {"id": "127.0.0.1"}, "user": {"id": b64url(b"f" * 32)}, "challenge": b64url(b"c" * 32),
                   "pubKeyCredParams": [{"alg": -7}]})
    flow, options = env.login_options()
    assertion = forger.get(options)
    assertion["id"] = assertion["rawId"] = victim
    return {"flow": flow, "credential": assertion}


def test_forged_assertions_naming_a_drivers_credential_do_not_lock_him_out(env: PEnv) -> None:
    """Review 122, finding 2: a failed signature check counted as a failure of the credential the
    assertion names, so anyone who knew a driver's credential id (the audit trail, his account page, an
    enrolment's excludeCredentials) locked him out with five posts (5 min, then 10, 20, 40, 60). A
    signature cannot be guessed: no failure counts against a credential, his own failed attempts
    neither."""
    phone = device()
    cid, _ = env.enrol(env.person(), phone)
    for _ in range(10):
        _problem(env.post("/webauthn/authentication/verify", _forged(env, cid)), 401, "passkey_invalid")
    assert env.login(phone).status_code == 200  # 429 rate_limited before
    for _ in range(5):
        _problem(env.login(phone, uv=False), 401, "passkey_invalid")
    assert env.login(phone).status_code == 200
    assert "identity.lockout.started" not in env.audit_kinds()
    assert env.credential_row(cid).status == "active"


def test_forged_assertions_spend_the_senders_address_allowance(engine: sa.Engine, tmp_path: Path) -> None:
    """What bounds a flood of them is the per-address login allowance (identity.ratelimit), counted
    before the signature is checked."""
    for env in build_env(engine, tmp_path, login_attempts_per_address=4):
        cid, _ = env.enrol(env.person(), device())
        codes = [env.post("/webauthn/authentication/verify", _forged(env, cid)).json()["code"] for _ in range(6)]
        assert codes == ["passkey_invalid"] * 3 + ["rate_limited"] * 3, codes  # the enrolment's code spent one


def test_an_enrolment_code_tells_its_holder_no_credential_id(env: PEnv) -> None:
    """excludeCredentials names the person's passkeys to the holder of his login session only: an
    enrolment code's holder learns none of his credential ids (review 122, finding 2)."""
    pid = env.person()
    cid, cookie = env.enrol(pid, device())
    by_code = env.post("/webauthn/registration/options", {"enrolment_code": env.code(pid)})
    assert by_code.status_code == 200, by_code.text
    assert by_code.json()["publicKey"]["excludeCredentials"] == []
    by_session = env.post("/webauthn/registration/options", cookie=cookie)
    assert [c["id"] for c in by_session.json()["publicKey"]["excludeCredentials"]] == [cid]


def test_state_changing_calls_from_another_origin_are_refused(env: PEnv) -> None:
    phone = device()
    pid = env.person()
    cid, cookie = env.enrol(pid, phone)
    flow, options = env.login_options()
    body = {"flow": flow, "credential": phone.get(options)}
    for origin in ("https://evil.example", "null", None):
        _problem(env.post("/webauthn/authentication/verify", body, origin=origin), 403, "origin_refused")
        _problem(env.post("/webauthn/authentication/options", origin=origin), 403, "origin_refused")
        _problem(env.post("/webauthn/registration/options", cookie=cookie, origin=origin), 403, "origin_refused")
        _problem(env.post("/webauthn/registration/options", {"enrolment_code": env.code(pid)}, origin=origin),
                 403, "origin_refused")
        _problem(env.call("PATCH", f"/account/passkeys/{cid}", {"name": "x"}, origin=origin, cookie=cookie),
                 403, "origin_refused")
        _problem(env.call("DELETE", f"/account/passkeys/{cid}", origin=origin, cookie=cookie), 403, "origin_refused")
        _problem(env.call("DELETE", "/account/sessions", origin=origin, cookie=cookie), 403, "origin_refused")
    assert env.credential_row(cid).status == "active" and env.credential_row(cid).name == "My phone"
    assert sessions_for(env.app).get(cookie, now=env.clock.now()) is not None


@pytest.mark.parametrize(
    "return_to",
    ["https://evil.example/oauth2/", "//evil.example/app/", "/\\evil.example", "/app/../../x", "/admin",
     "javascript:alert(1)", "/oauth2\r\nLocation: https://evil.example", "/account.evil"],
)
def test_return_to_is_never_an_open_redirect(env: PEnv, return_to: str) -> None:
    phone = device()
    env.enrol(env.person(), phone)
    resp = env.login(phone, return_to=return_to)
    assert resp.status_code == 200 and resp.json()["return_to"] == "/app/"


# ---- the person's own passkeys and the badge office ----------------------------------------------


def test_a_person_renames_and_lists_only_their_own_passkeys(env: PEnv) -> None:
    a, b = env.person(), env.person()
    cid_a, cookie_a = env.enrol(a, device())
    cid_b, cookie_b = env.enrol(b, device())
    resp = env.call("PATCH", f"/account/passkeys/{cid_a}", {"name": "Work phone"}, cookie=cookie_a)
    assert resp.json() == {"credential_id": cid_a, "name": "Work phone"}
    _problem(env.call("PATCH", f"/account/passkeys/{cid_b}", {"name": "mine now"}, cookie=cookie_a), 404, "not_found")
    _problem(env.call("DELETE", f"/account/passkeys/{cid_b}", cookie=cookie_a), 404, "not_found")
    _problem(env.call("PATCH", f"/account/passkeys/{cid_a}", {"name": " \n "}, cookie=cookie_a), 400, "invalid_name")
    listed = env.call("GET", "/account/passkeys", cookie=cookie_a).json()
    assert [(p["credential_id"], p["name"]) for p in listed] == [(cid_a, "Work phone")]
    _problem(env.call("GET", "/account/passkeys"), 401, "login_required")
    assert env.credential_row(cid_b).status == "active"
    kinds = env.audit_kinds()
    assert "identity.passkey.renamed" in kinds
    del cookie_b


def test_removing_the_last_passkey_is_allowed_and_says_so(env: PEnv) -> None:
    phone = device()
    pid = env.person()
    cid, _ = env.enrol(pid, phone)
    cookie = env.upstream_session(pid)  # a session no passkey opened: it stays to show the empty list
    resp = env.call("DELETE", f"/account/passkeys/{cid}", cookie=cookie)
    assert resp.json()["active_remaining"] == 0 and resp.json()["signed_out"] is False
    assert env.call("GET", "/account/passkeys", cookie=cookie).json() == []
    assert "identity.passkey.removed" in env.audit_kinds()


# ---- review 122, finding 1: a stolen session of any age took every passkey of the owner away -------


def test_an_old_stolen_session_neither_removes_nor_renames_the_owners_passkeys(env: PEnv) -> None:
    """The reviewer's demonstration: a passkey session opened 11 hours ago (live: sessions last 12 h) is
    refused registration options, and now removal and renaming too; the owner still logs in."""
    pid = env.person()
    phone, tablet = device(), device()
    first, stolen = env.enrol(pid, phone)
    second, _ = env.enrol(pid, tablet)
    env.clock.advance(hours=11)
    assert env.call("GET", "/account/passkeys", cookie=stolen).status_code == 200  # live, only old
    _problem(env.post("/webauthn/registration/options", cookie=stolen), 401, "reauthentication_required")
    for cid in (first, second):
        _problem(env.call("DELETE", f"/account/passkeys/{cid}", cookie=stolen), 401, "reauthentication_required")
        _problem(env.call("PATCH", f"/account/passkeys/{cid}", {"name": "mine"}, cookie=stolen),
                 401, "reauthentication_required")
        row = env.credential_row(cid)
        assert (row.status, row.name) == ("active", "My phone")
    kinds = env.audit_kinds()
    assert kinds.count("identity.passkey.removal.refused.reauthentication_required") == 2
    assert kinds.count("identity.passkey.rename.refused.reauthentication_required") == 2
    assert env.login(phone).status_code == 200 and env.login(tablet).status_code == 200
    # A fresh login (< 15 min) may: the owner renames and removes.
    fresh = env.login(tablet).cookies["qg_session"]
    env.clock.advance(minutes=14)
    assert env.call("PATCH", f"/account/passkeys/{first}", {"name": "Old phone"}, cookie=fresh).status_code == 200
    assert env.call("DELETE", f"/account/passkeys/{first}", cookie=fresh).status_code == 200


def test_removing_a_passkey_ends_the_sessions_it_opened_the_removers_included(env: PEnv) -> None:
    """A thief on a (fresh) session the owner's passkey opened cannot remove that passkey and stay: the
    removal ends his session with it. Removing another passkey keeps the remover's session."""
    pid = env.person()
    phone, tablet = device(), device()
    first, _ = env.enrol(pid, phone)
    second, _ = env.enrol(pid, tablet)
    by_phone = env.login(phone).cookies["qg_session"]
    by_tablet = env.login(tablet).cookies["qg_session"]
    gone = env.call("DELETE", f"/account/passkeys/{first}", cookie=by_phone)
    assert gone.status_code == 200, gone.text
    assert gone.json() == {"credential_id": first, "status": "removed", "active_remaining": 1, "signed_out": True}
    assert 'qg_session=""' in gone.headers["set-cookie"] and "max-age=0" in gone.headers["set-cookie"].lower()
    sessions = sessions_for(env.app)
    assert sessions.get(by_phone, now=env.clock.now()) is None
    assert sessions.get(by_tablet, now=env.clock.now()) is None  # every other session ends, as before
    _problem(env.login(phone), 401, "passkey_unknown")
    again = env.login(tablet).cookies["qg_session"]
    upstream = env.upstream_session(pid)
    kept = env.call("DELETE", f"/account/passkeys/{second}", cookie=upstream)
    assert kept.status_code == 200 and kept.json()["signed_out"] is False and "set-cookie" not in kept.headers
    assert sessions.get(upstream, now=env.clock.now()) is not None  # no passkey opened it: it stays
    assert sessions.get(again, now=env.clock.now()) is None


def test_sign_out_everywhere_else_ends_the_other_sessions_and_keeps_this_one(env: PEnv) -> None:
    """A person who left himself logged in on a lost phone, or whose cookie was taken, ends every other
    session from a fresh login; his own stays. An old session (a stolen cookie) may not: it would sign
    the owner out everywhere and stay."""
    pid, other = env.person(), env.person()
    phone, tablet = device(), device()
    env.enrol(pid, phone)
    env.enrol(pid, tablet)
    theirs = env.enrol(other, device())[1]
    lost = env.login(phone).cookies["qg_session"]
    upstream = env.upstream_session(pid)
    env.clock.advance(hours=11)
    _problem(env.call("DELETE", "/account/sessions", cookie=lost), 401, "reauthentication_required")
    sessions = sessions_for(env.app)
    assert sessions.get(upstream, now=env.clock.now()) is not None
    assert "identity.passkey.sign_out_elsewhere.refused.reauthentication_required" in env.audit_kinds()
    _problem(env.call("DELETE", "/account/sessions"), 401, "login_required")
    here = env.login(tablet).cookies["qg_session"]
    done = env.call("DELETE", "/account/sessions", cookie=here)
    assert done.status_code == 200, done.text
    assert done.json()["sessions_ended"] >= 2 and "set-cookie" not in done.headers
    assert sessions.get(lost, now=env.clock.now()) is None and sessions.get(upstream, now=env.clock.now()) is None
    assert sessions.get(here, now=env.clock.now()) is not None
    assert sessions.get(theirs, now=env.clock.now()) is not None  # another person's: untouched
    assert env.call("GET", "/account/passkeys", cookie=here).status_code == 200
    assert env.audit_kinds()[-1] == "identity.session.signed_out_elsewhere"


def test_a_step_up_keeps_the_passkey_that_opened_the_session(env: PEnv) -> None:
    """A face step-up replaces the session (``of``): the new one was opened by the same passkey, so
    removing that passkey ends it too."""
    pid = env.person()
    cid, cookie = env.enrol(pid, device())
    sessions = sessions_for(env.app)
    old = sessions.get(cookie, now=env.clock.now())
    assert old is not None and old.credential_id == cid
    _, raised = sessions.create(pid, acr="urn:quaygate:acr:face", amr=("hwk", "user", "mfa", "face"),
                                now=env.clock.now(), of=old)
    assert raised.credential_id == cid


def _admin_token(env: PEnv, scope: str = "admin") -> str:
    org = add_org(env.engine, "port_authority")
    client_id, secret = create_client(env.engine, name="badge office", role="admin", organisation_id=org,
                                      now=env.clock.now())
    assert secret is not None
    resp = env.http.post("/oauth2/token", data={"grant_type": "client_credentials", "scope": scope},
                         headers=basic(client_id, secret))
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


def test_the_badge_office_issues_an_enrolment_code_through_the_admin_api(env: PEnv) -> None:
    pid = env.person()
    path = f"/admin/v1/persons/{pid}/enrolment-codes"
    assert env.http.post(path, json={}).status_code == 401
    assert env.http.post(path, json={}, headers={"Authorization": "Bearer " + _admin_token(env, "releases:read")}
                         ).status_code == 403
    token = _admin_token(env)
    resp = env.http.post(path, json={"ttl_seconds": 3600}, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["person_id"] == str(pid) and len(body["code"]) == 19
    assert datetime.fromisoformat(body["expires_at"]) == env.clock.now() + timedelta(hours=1)
    with env.engine.connect() as conn:  # only the hash is stored
        stored = conn.execute(sa.select(enrolment_codes.c.code_hash)).scalar_one()
    assert body["code"] not in stored and stored == enrolment.code_hash(body["code"])
    assert "identity.enrolment_code.issued" in env.audit_kinds()
    opts = env.post("/webauthn/registration/options", {"enrolment_code": body["code"]})
    assert opts.status_code == 200
    _problem(env.http.post(f"/admin/v1/persons/{uuid.uuid4()}/enrolment-codes", json={},
                           headers={"Authorization": f"Bearer {token}"}), 404, "person_unknown")


# ---- the same single use on a real Redis -----------------------------------------------------------


def test_replay_is_refused_with_the_redis_cache(engine: sa.Engine, tmp_path: Path, redis_url: str) -> None:
    cache = RedisCache(redis_url)
    try:
        for penv in build_env(engine, tmp_path, cache=cache, redis_url=redis_url):
            synced = SoftAuthenticator(origin=ORIGIN, counter=False)
            penv.enrol(penv.person(), synced)
            flow, options = penv.login_options()
            body = {"flow": flow, "credential": synced.get(options)}
            assert penv.post("/webauthn/authentication/verify", body).status_code == 200
            _problem(penv.post("/webauthn/authentication/verify", body), 400, "challenge_expired")
    finally:
        cache.close()


def test_user_handle_is_stable_and_not_the_person_id() -> None:
    pid = uuid.uuid4()
    assert passkeys.user_handle(pid, b"k") == passkeys.user_handle(pid, b"k")
    assert passkeys.user_handle(pid, b"k") != passkeys.user_handle(uuid.uuid4(), b"k")
    assert pid.bytes not in passkeys.user_handle(pid, b"k")

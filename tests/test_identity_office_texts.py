"""Whom a person is told to turn to: the badge office, or port security for a person who holds a
privileged role (an officer, a company's dispatcher or org_admin), whose enrolment codes the badge
office may not issue (identity.authn.enrolment ``issuing_office``). The error codes stay; a refusal
names the office in its ``office`` member and its hint, and the account page of a privileged person
carries port security's texts. On the full app, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from identity.authn import enrolment
from identity.domain.claims import MEMBER_ROLES, PRIVILEGED_ROLES
from identity.sessions import sessions_for
from identity.web import i18n
from identity.web.routes import SCRIPT_KEYS
from quaygate.app import create_app
from quaygate.cache import MemoryCache
from quaygate.container import Container
from quaygate.crypto import DataCipher
from quaygate.schema import memberships, persons
from quaygate.settings import Settings
from tests.test_identity_passkeys import Clock, PEnv, device
from tests.test_identity_support import ISSUER, add_org

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

ACCEPT = {"nl": "nl-BE,nl;q=0.9", "fr": "fr-BE,fr;q=0.9", "de": "de-DE,de;q=0.9", "en": "en-GB,en;q=0.9"}
# The texts that name whom to turn to, each with port security's variant (i18n ``own_key``).
OFFICE_TEXTS = ("error.passkey_suspended", "error.person_suspended", "error.person_banned",
                "error.person_not_active", "error.enrolment_code_expired", "error.enrolment_code_used",
                "error.insufficient_authentication",  # an officer's upstream session (review 145, finding 1)
                "account.suspended", "account.none_left", "account.remove_last_confirm")
# The same, on the brokered login's error page (identity.api.broker, rendered on the server).
BROKER_OFFICE_TEXTS = ("broker.error.suspended", "broker.error.rebind")


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[PEnv]:
    settings = Settings(var_dir=tmp_path, issuer=ISSUER, background_workers=False)
    clock = Clock()
    container = Container(settings=settings, engine=engine, cache=MemoryCache(),
                          cipher=DataCipher(settings.data_key_bytes()), clock=clock)  # type: ignore[arg-type]
    app = create_app(settings, container=container)
    with TestClient(app) as http:
        yield PEnv(app, http, container, clock)


def _grant(env: PEnv, person: uuid.UUID, role: str) -> uuid.UUID:
    org = add_org(env.engine, "port_authority")
    with env.engine.begin() as conn:
        conn.execute(memberships.insert().values(person_id=person, organisation_id=org, role=role,
                                                 created_at=env.clock.now()))
    return person


def _refusal(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["code"] == code, body
    return body


# ---- the rule ----------------------------------------------------------------------------------


def test_a_privileged_role_sends_the_person_to_port_security() -> None:
    assert enrolment.office_for([]) == enrolment.office_for(["driver"]) == enrolment.BADGE_OFFICE
    for role in PRIVILEGED_ROLES:
        assert enrolment.office_for(["driver", role]) == enrolment.PORT_SECURITY, role
    assert {r for r in MEMBER_ROLES if enrolment.office_for([r]) == enrolment.PORT_SECURITY} == {
        "port_security_admin", "badge_office", "dispatcher", "org_admin"}


# ---- refusals: the code stays, the office and the hint follow the person -----------------------------


@pytest.mark.parametrize("role", ["driver", "badge_office", "port_security_admin", "dispatcher"])
def test_a_counter_regression_names_the_office_that_issues_the_persons_codes(env: PEnv, role: str) -> None:
    person = _grant(env, env.person(), role)
    phone = device()
    env.enrol(person, phone)
    assert env.login(phone, sign_count=5).status_code == 200
    body = _refusal(env.login(phone, sign_count=3), 401, "passkey_suspended")  # a clone: suspended
    privileged = role != "driver"
    assert body["office"] == ("port_security" if privileged else "badge_office")
    assert ("port security" in body["detail"]) is privileged and ("badge office" in body["detail"]) is not privileged
    again = _refusal(env.login(phone, sign_count=50), 401, "passkey_suspended")  # and after
    assert again["office"] == body["office"]


def test_a_suspended_officer_is_sent_to_port_security(env: PEnv) -> None:
    officer = _grant(env, env.person(), "badge_office")
    phone = device()
    env.enrol(officer, phone)
    with env.engine.begin() as conn:
        conn.execute(persons.update().where(persons.c.id == officer).values(status="suspended"))
    body = _refusal(env.login(phone), 403, "person_suspended")
    assert body["office"] == "port_security" and "port security" in body["detail"]


def test_an_officers_spent_enrolment_code_sends_him_to_port_security(env: PEnv) -> None:
    officer = _grant(env, env.person(), "port_security_admin")
    driver = env.person()
    for person, office in ((officer, "port_security"), (driver, "badge_office")):
        old = env.code(person, now=env.clock.now() - timedelta(hours=73))
        assert _refusal(env.post("/webauthn/registration/options", {"enrolment_code": old}), 400,
                        "enrolment_code_expired")["office"] == office
        used = env.code(person)
        env.enrol(person, device())  # with a fresh code of its own
        opts = env.post("/webauthn/registration/options", {"enrolment_code": used})
        env.post("/webauthn/registration/verify",
                 {"flow": opts.json()["flow"], "credential": device().create(opts.json()["publicKey"])})
        assert _refusal(env.post("/webauthn/registration/options", {"enrolment_code": used}), 400,
                        "enrolment_code_used")["office"] == office
    # A code found nowhere names nobody: its text names both offices.
    unknown = _refusal(env.post("/webauthn/registration/options", {"enrolment_code": "ABCD-EFGH-JKMN-PQRS"}),
                       400, "enrolment_code_unknown")
    assert "office" not in unknown


def test_a_refusal_before_the_signature_names_no_office(env: PEnv) -> None:
    """Whom a person turns to is told only to whoever showed he is the person."""
    officer = _grant(env, env.person(), "port_security_admin")
    phone = device()
    env.enrol(officer, phone)
    assert "office" not in _refusal(env.login(phone, uv=False), 401, "passkey_invalid")


# ---- the pages ---------------------------------------------------------------------------------------


def _page_strings(env: PEnv, person: uuid.UUID, lang: str) -> dict[str, str]:
    cookie, _ = sessions_for(env.app).create(person, acr="urn:quaygate:acr:passkey", amr=["hwk", "user"],
                                             now=env.clock.now())
    env.http.cookies.clear()
    r = env.http.get("/account", headers={"Cookie": f"qg_session={cookie}", "Accept-Language": ACCEPT[lang]})
    assert r.status_code == 200, r.text
    found = re.search(r'<script type="application/json" id="qg-i18n">(.*?)</script>', r.text, re.S)
    assert found is not None
    strings: dict[str, str] = json.loads(found.group(1))
    return strings


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_a_privileged_persons_account_page_names_port_security(env: PEnv, lang: str) -> None:
    cat = i18n.catalog(lang)
    officer = _grant(env, env.person(), "badge_office")
    dispatcher = _grant(env, env.person(), "dispatcher")
    driver = _grant(env, env.person(), "driver")
    for person, privileged in ((officer, True), (dispatcher, True), (driver, False)):
        strings = _page_strings(env, person, lang)
        for key in OFFICE_TEXTS:
            assert strings[key] == cat[f"port_security.{key}" if privileged else key], (lang, key, privileged)
        assert not any(k.startswith("port_security.") for k in strings)  # chosen on the server


def test_the_pages_of_nobody_yet_carry_port_securitys_error_texts(env: PEnv) -> None:
    """A login or an enrolment is nobody's until refused: the script picks the text by the refusal's
    office (common.js ``explain``), so those pages carry both; the driver app's none (its weight)."""
    for script in ("login.js", "enrol.js"):
        assert "port_security.error." in SCRIPT_KEYS[script]
    assert not any(p.startswith("port_security.") for p in SCRIPT_KEYS["app.js"])
    page = env.http.get("/login").text
    for key in OFFICE_TEXTS:
        if key.startswith("error."):
            assert json.dumps(f"port_security.{key}") in page, key


def test_every_port_security_text_names_port_security_in_every_language() -> None:
    english = i18n.catalog("en")
    variants = {k.removeprefix("port_security.") for k in english if k.startswith("port_security.")}
    assert variants == set(OFFICE_TEXTS) | set(BROKER_OFFICE_TEXTS)
    for lang in i18n.LANGUAGES:
        cat = i18n.catalog(lang)
        office = cat["console.member_port_security_admin"].casefold()
        for key in variants:
            assert office in cat[f"port_security.{key}"].casefold(), (lang, key)
            assert office not in cat[key].casefold(), (lang, key)
        assert office in cat["error.enrolment_code_unknown"].casefold(), lang  # names both: nobody is known


# ---- the script that picks the text ------------------------------------------------------------------

_EXPLAIN = """
const strings = JSON.parse(process.argv[2]);
global.window = {};
global.localStorage = {getItem() { return null; }, setItem() {}};
global.document = {documentElement: {dataset: {}}, addEventListener() {},
                   getElementById(id) { return id === "qg-i18n" ? {textContent: JSON.stringify(strings)} : null; }};
global.fetch = () => Promise.resolve({ok: false, status: 401, json: () => Promise.resolve(
  {code: "passkey_suspended", detail: "hint", office: "port_security"})});
eval(require("fs").readFileSync(process.argv[1], "utf8") + "\\nglobal.QG = QG;");
QG.call("POST", "/webauthn/authentication/verify", {}).catch(function (err) {
  console.log(JSON.stringify([QG.explain(err), QG.explain(QG.Problem("passkey_suspended", 401, "", "badge_office")),
                              QG.explain(QG.Problem("passkey_suspended", 401)),
                              QG.explain(QG.Problem("passkey_invalid", 401, "", "port_security"))]));
});
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_the_login_script_picks_the_text_by_the_refusals_office() -> None:
    strings = {k: v for k, v in i18n.catalog("en").items() if k.startswith(SCRIPT_KEYS["login.js"])}
    path = Path(__file__).parent.parent / "identity" / "web" / "static" / "common.js"
    out = subprocess.run(["node", "-e", _EXPLAIN, str(path), json.dumps(strings)], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    cat = i18n.catalog("en")
    assert json.loads(out) == [cat["port_security.error.passkey_suspended"], cat["error.passkey_suspended"],
                               cat["error.passkey_suspended"], cat["error.passkey_invalid"]]


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
def test_no_locale_text_is_written_twice(lang: str) -> None:
    """json keeps the last of two equal keys without a word: the copy edited would be shadowed."""
    assert i18n.parse_catalog((i18n.LOCALES / f"{lang}.json").read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match="written twice: a.b"):
        i18n.parse_catalog('{"a.b": "one", "c": "x", "a.b": "two"}')

"""The brokered-login test world: our app and the itsme-like upstream, a registered driver, and a
transport that lets a test change one thing in the upstream's real answers (``Tamper``)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import sqlalchemy as sa
from joserfc import jwe, jws
from joserfc.jwe import JWERegistry
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry

from identity.bans.persons import set_national_id
from quaygate.schema import audit_log, login_sessions, persons

from .harness import NATIONAL_NUMBER, LiveApp, Upstream, UpstreamKeys, free_port, serve, start, walk

NUMBER = "85073100130"
OTHER_NUMBER = "90000000146"
ACCOUNTS = {
    "jan": {NATIONAL_NUMBER: NUMBER, "given_name": "Jan", "family_name": "Peeters"},
    "jan-new": {NATIONAL_NUMBER: NUMBER, "given_name": "Jan", "family_name": "Peeters"},  # a re-created account
    "stranger": {NATIONAL_NUMBER: OTHER_NUMBER, "given_name": "Els", "family_name": "Maes"},
}
_JWE = JWERegistry(algorithms=["RSA-OAEP-256", "A128CBC-HS256"], strict_check_header=False)  # iss, aud replicated
_RS256 = JWSRegistry(algorithms=["RS256"])

Change = Callable[[str], str]

# What a browser sends when it navigates: the broker answers its refusals as a page only to one.
BROWSER_HEADERS = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Tamper(httpx.BaseTransport):
    """The broker's real HTTP transport; ``token`` / ``userinfo`` may rewrite the id token or the
    userinfo JWT the real upstream sent (one change per test), everything else passes untouched."""

    token: Change | None = None
    userinfo: Change | None = None
    inner: httpx.HTTPTransport = field(default_factory=httpx.HTTPTransport)
    # An upstream that does not hold its codes to one use: a code redeemed before is answered with the
    # same tokens again, never sent on (the real one refuses it), so that our own single use is tried.
    lenient: bool = False
    _redeemed: dict[str, bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token" and self.lenient:
            code = parse_qs(request.read().decode()).get("code", [""])[0]
            with self._lock:  # concurrent redemptions of one code: the first goes to the upstream
                if code not in self._redeemed:
                    first = self.inner.handle_request(request)
                    first.read()
                    if first.status_code != 200:
                        return httpx.Response(first.status_code, content=first.content, headers=first.headers)
                    self._redeemed[code] = first.content
            return httpx.Response(200, content=self._redeemed[code], headers={"content-type": "application/json"})
        response = self.inner.handle_request(request)
        if request.url.path == "/token" and self.token is not None and response.status_code == 200:
            response.read()
            body = json.loads(response.content)
            body["id_token"] = self.token(body["id_token"])
            return httpx.Response(200, json=body)
        if request.url.path == "/me" and self.userinfo is not None and response.status_code == 200:
            response.read()
            return httpx.Response(200, content=self.userinfo(response.text).encode(),
                                  headers={"content-type": "application/jwt; charset=utf-8"})
        return response

    def close(self) -> None:
        self.inner.close()


@dataclass
class World:
    app: LiveApp
    upstream: Upstream
    person: uuid.UUID
    tamper: Tamper

    @property
    def engine(self) -> sa.Engine:
        return self.app.engine  # type: ignore[no-any-return]

    def browser(self) -> httpx.Client:
        return httpx.Client(follow_redirects=False, timeout=20, headers=BROWSER_HEADERS)

    def callback_url(self, browser: httpx.Client, account: str, *, return_to: str = "/app/",
                     pages: list[str] | None = None) -> str:
        return walk(browser, start(browser, self.app, return_to=return_to), login=account, our_base=self.app.base,
                    pages=pages)

    def login(self, browser: httpx.Client, account: str, *, return_to: str = "/app/",
              pages: list[str] | None = None) -> httpx.Response:
        """A brokered login in ``browser``; the upstream's pages shown are appended to ``pages`` (walk)."""
        return browser.get(self.callback_url(browser, account, return_to=return_to, pages=pages))

    def kinds(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(audit_log.c.kind).order_by(audit_log.c.id)).scalars())

    def refusals(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audit_log.c.data)
                                .where(audit_log.c.kind.like("identity.login.upstream.refused.%"))
                                .order_by(audit_log.c.id)).scalars()
            return [dict(r) for r in rows]

    def sessions(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(login_sessions)).all())

    # ---- building one-change variants of the upstream's real tokens -----------------------------

    def our_key(self, compact: str) -> RSAKey:
        kid = json.loads(_b64(compact.split(".")[0]))["kid"]
        key = self.app.app.state.broker.encryption_keys.private_key(kid, now())
        assert key is not None
        return key  # type: ignore[no-any-return]

    def decrypt(self, compact: str) -> str:
        return jwe.decrypt_compact(compact, self.our_key(compact), registry=_JWE).plaintext.decode()

    def encrypt(self, signed: str, key: RSAKey) -> str:
        return jwe.encrypt_compact({"alg": "RSA-OAEP-256", "enc": "A128CBC-HS256", "cty": "JWT", "kid": key.kid},
                                   signed, key, registry=_JWE)

    def our_public_enc_key(self) -> RSAKey:
        jwks = httpx.get(self.app.base + "/broker/jwks").json()["keys"]
        return RSAKey.import_key(next(k for k in jwks if k["use"] == "enc"))

    def resign(self, signed: str, change: Callable[[dict[str, Any]], None], key: RSAKey | None = None) -> str:
        """The same claims with one change, signed by the upstream's real key (or ``key``)."""
        claims = json.loads(_b64(signed.split(".")[1]))
        change(claims)
        key = key or self.upstream.keys.signing
        return jws.serialize_compact({"alg": "RS256", "typ": "JWT", "kid": key.kid}, json.dumps(claims), key,
                                     registry=_RS256)

    def reclaim(self, change: Callable[[dict[str, Any]], None]) -> Change:
        """A token rewrite: decrypt, change a claim, sign with the upstream's key, encrypt to ours."""
        return lambda compact: self.encrypt(self.resign(self.decrypt(compact), change), self.our_key(compact))


def _b64(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def add_person(engine: sa.Engine, pepper: bytes, number: str | None = NUMBER) -> uuid.UUID:
    """A driver registered by the badge office, with the keyed hash of his national number."""
    pid = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(persons.insert().values(id=pid, given_name="Jan", family_name="Peeters", created_at=now()))
    if number is not None:
        set_national_id(engine, pid, number, pepper=pepper, now=now(), actor="badge-office")
    return pid


def build_world(engine: sa.Engine, tmp_path: Path, *, redis_url: str | None = None, code_ttl: int = 180,
                register: bool = True, upstream_options: dict[str, Any] | None = None,
                **settings: Any) -> Iterator[World]:
    """The app and the upstream; with ``register``, a driver pre-registered with NUMBER (World.person);
    ``upstream_options``: provider.mjs's knobs (harness.Upstream)."""
    port = free_port()
    upstream = Upstream(our_base=f"http://localhost:{port}", accounts=ACCOUNTS, tmp=tmp_path,
                        keys=UpstreamKeys.generate(), code_ttl=code_ttl, options=upstream_options)
    tamper = Tamper()
    try:
        url = engine.url.render_as_string(hide_password=False)
        with serve(url, tmp_path, upstreams={"itsme": upstream.settings_entry()}, port=port, redis_url=redis_url,
                   http=httpx.Client(transport=tamper, timeout=10), **settings) as app:
            person = add_person(app.engine, app.settings.pepper_bytes()) if register else uuid.UUID(int=0)
            yield World(app, upstream, person, tamper)
    finally:
        upstream.stop()

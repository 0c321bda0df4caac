"""Adding a passkey from a login session needs a login at least as strong as a passkey (acr passkey):
a basic upstream login (acr ``urn:quaygate:acr:upstream:basic``, which meets no acr demand) must not
raise itself to passkey by registering an authenticator of its own. An enrolment code still works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from identity.domain import assurance
from identity.domain.broker import ACR_UPSTREAM_BASIC, AMR_FEDERATED
from identity.sessions import sessions_for
from quaygate.cache import MemoryCache
from quaygate.schema import audit_log, webauthn_credentials
from tests.test_identity_passkeys import PEnv, build_env, device


class CountingCache(MemoryCache):
    """The cache, counting the WebAuthn flows stored in it."""

    flows = 0

    def put(self, key: str, value: bytes, ttl_seconds: float) -> None:
        if key.startswith("webauthn:flow:"):
            self.flows += 1
        super().put(key, value, ttl_seconds)


@pytest.fixture
def cache() -> CountingCache:
    return CountingCache()


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path, cache: CountingCache) -> Iterator[PEnv]:
    yield from build_env(engine, tmp_path, cache=cache)


def _session(env: PEnv, acr: str) -> tuple[str, object]:
    pid = env.person()
    cookie, _ = sessions_for(env.app).create(pid, acr=acr, amr=(AMR_FEDERATED,), now=env.clock.now())
    return cookie, pid


def _credentials(env: PEnv) -> int:
    with env.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(webauthn_credentials)).scalar_one())


def test_a_basic_upstream_session_cannot_add_a_passkey(env: PEnv, cache: CountingCache) -> None:
    cookie, _ = _session(env, ACR_UPSTREAM_BASIC)
    resp = env.post("/webauthn/registration/options", cookie=cookie)
    assert resp.status_code == 403, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == "insufficient_authentication"
    assert cache.flows == 0  # nothing to verify against later
    assert _credentials(env) == 0
    with env.engine.connect() as conn:
        kinds = list(conn.execute(sa.select(audit_log.c.kind)).scalars())
    assert "identity.passkey.registration.refused.insufficient_authentication" in kinds


@pytest.mark.parametrize("acr", [assurance.ACR_UPSTREAM, assurance.ACR_FACE, "urn:example:unknown"])
def test_only_known_logins_as_strong_as_a_passkey_may_add_one(env: PEnv, cache: CountingCache, acr: str) -> None:
    cookie, _ = _session(env, acr)
    resp = env.post("/webauthn/registration/options", cookie=cookie)
    if acr == "urn:example:unknown":
        assert resp.status_code == 403 and resp.json()["code"] == "insufficient_authentication"
        assert cache.flows == 0
        return
    assert resp.status_code == 200, resp.text
    assert cache.flows == 1
    created = device().create(resp.json()["publicKey"])
    done = env.post("/webauthn/registration/verify", {"flow": resp.json()["flow"], "credential": created},
                    cookie=cookie)
    assert done.status_code == 201, done.text
    assert _credentials(env) == 1


def test_an_enrolment_code_registers_whatever_session_the_browser_has(env: PEnv) -> None:
    cookie, pid = _session(env, ACR_UPSTREAM_BASIC)
    code = env.code(pid)  # type: ignore[arg-type]
    opts = env.post("/webauthn/registration/options", {"enrolment_code": code}, cookie=cookie)
    assert opts.status_code == 200, opts.text
    done = env.post("/webauthn/registration/verify",
                    {"flow": opts.json()["flow"], "credential": device().create(opts.json()["publicKey"])})
    assert done.status_code == 201, done.text

"""The itsme-like upstream for the brokered-login tests: oidc-provider (npm) run under node, and our
app served by uvicorn in a thread, configured to broker to it.

``Upstream`` writes the provider's configuration (its own keys, made here so a test can also build
a token signed by the upstream's real key with one thing changed; our client's metadata pointing at
our /broker/jwks) and starts ``provider.mjs``. ``walk`` logs a person in at the upstream through its
development interaction pages with plain HTTP and returns our callback URL with the code and state.

Without node or ``npm ci --prefix tests/upstream`` the tests skip locally and fail under CI.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from joserfc.jwk import RSAKey

from .. import processes
from ..processes import free_port, unavailable

HERE = Path(__file__).resolve().parent
NATIONAL_NUMBER = "http://itsme.services/v2/claim/BENationalNumber"
CLIENT_ID = "quaygate-test"


def need_node() -> str:
    node = shutil.which("node")
    reason = None
    if node is None:
        reason = "node is not installed"
    elif not (HERE / "node_modules" / "oidc-provider").is_dir():
        reason = "run `npm ci --prefix tests/upstream` (make interop-deps)"
    if reason is not None:
        unavailable("the upstream oidc-provider", reason)
    assert node is not None
    return node


@dataclass
class UpstreamKeys:
    signing: RSAKey
    encryption: RSAKey

    @classmethod
    def generate(cls) -> UpstreamKeys:
        sig = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"})
        enc = RSAKey.generate_key(2048, parameters={"use": "enc", "alg": "RSA-OAEP-256"})
        sig.ensure_kid()
        enc.ensure_kid()
        return cls(sig, enc)


class Upstream:
    """oidc-provider under node, configured like itsme; ``stop`` ends the process it started."""

    def __init__(self, *, our_base: str, accounts: dict[str, dict[str, Any]], tmp: Path, keys: UpstreamKeys,
                 code_ttl: int = 180, client: dict[str, Any] | None = None,
                 options: dict[str, Any] | None = None) -> None:
        """``options``: provider.mjs's knobs (``login_age``, ``omit_auth_time``), a misbehaving upstream."""
        node = need_node()
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys = keys
        metadata = {
            "client_id": CLIENT_ID,
            "redirect_uris": [f"{our_base}/broker/itsme/callback"],
            "response_types": ["code"],
            "grant_types": ["authorization_code"],
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "RS256",
            # Server to server: 127.0.0.1, as node 20 resolves "localhost" to ::1 first, where uvicorn is not.
            "jwks_uri": f"{our_base.replace('//localhost:', '//127.0.0.1:')}/broker/jwks",
            "id_token_signed_response_alg": "RS256",
            "id_token_encrypted_response_alg": "RSA-OAEP-256",
            "id_token_encrypted_response_enc": "A128CBC-HS256",
            "userinfo_signed_response_alg": "RS256",
            "userinfo_encrypted_response_alg": "RSA-OAEP-256",
            "userinfo_encrypted_response_enc": "A128CBC-HS256",
            "request_object_signing_alg": "RS256",
            "request_object_encryption_alg": "RSA-OAEP-256",
            "request_object_encryption_enc": "A128CBC-HS256",
            **(client or {}),
        }
        config = {"port": self.port, "issuer": self.issuer, "code_ttl": code_ttl, "clients": [metadata],
                  "accounts": accounts, **(options or {}),
                  "jwks": {"keys": [keys.signing.as_dict(private=True), keys.encryption.as_dict(private=True)]}}
        path = tmp / f"upstream-{self.port}.json"
        path.write_text(json.dumps(config))
        self.log = tmp / f"upstream-{self.port}.log"
        self.proc = processes.start([node, str(HERE / "provider.mjs"), str(path)], cwd=HERE, log=self.log,
                                    timeout=30, what="oidc-provider", ready=processes.answers(self.discovery_url))

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    def settings_entry(self, **extra: Any) -> dict[str, Any]:
        return {"discovery_url": self.discovery_url, "client_id": CLIENT_ID, "level": "advanced",
                "request_object": "signed_encrypted", "scope": "openid profile", **extra}

    def stop(self) -> None:
        processes.stop(self.proc)


@dataclass
class LiveApp:
    base: str
    app: Any
    settings: Any

    @property
    def engine(self) -> Any:
        return self.app.state.container.engine


@contextmanager
def serve(database_url: str, tmp: Path, *, upstreams: dict[str, Any], redis_url: str | None = None,
          http: httpx.Client | None = None, **settings: Any) -> Iterator[LiveApp]:
    """Our whole app under uvicorn in a thread on http://localhost:<port>; ``http``: the client the
    broker talks to the upstream with (a test may put a transport in it)."""
    import uvicorn

    from quaygate.app import create_app
    from quaygate.settings import Settings

    port = settings.pop("port", None) or free_port()
    base = f"http://localhost:{port}"
    s = Settings(var_dir=tmp, database_url=database_url, issuer=base, webauthn_rp_id="localhost",
                 background_workers=False, redis_url=redis_url, log_level="WARNING", upstreams=upstreams,
                 **settings)
    app = create_app(s)
    if http is not None:
        app.state.broker_http = http
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="broker-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start under uvicorn")
        time.sleep(0.02)
    try:
        yield LiveApp(base, app, s)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        broker = getattr(app.state, "broker", None)
        if broker is not None:
            broker.close()


def walk(browser: httpx.Client, start_url: str, *, login: str, our_base: str, pages: list[str] | None = None) -> str:
    """Follow our start redirect to the upstream, log in as ``login`` and consent on its development
    pages, and stop at the redirect back to us: returns our callback URL (code, state, iss). The
    upstream's pages shown ("login", "consent") are appended to ``pages``: a provider that answers from
    its own session shows no login page."""
    url = start_url
    for _ in range(20):
        if url.startswith(f"{our_base}/broker/") and "/callback" in url:
            return url
        response = browser.get(url)
        if response.status_code in (302, 303):
            url = urljoin(url, response.headers["location"])
            continue
        submitted = _auto_submitted(response)
        if submitted is not None:  # a page whose script posts its form at once, as a browser would
            action, form = submitted
            posted = browser.post(urljoin(url, action), data=form)
            assert posted.status_code in (302, 303), posted.text[:500]
            url = urljoin(url, posted.headers["location"])
            continue
        if response.status_code != 200 or "/interaction/" not in url:
            raise AssertionError(f"unexpected {response.status_code} at {url}: {response.text[:500]}")
        prompt = "login" if 'name="login"' in response.text else "consent"
        if pages is not None:
            pages.append(prompt)
        form = {"prompt": prompt, "login": login, "password": "itsme"} if prompt == "login" else {"prompt": prompt}
        posted = browser.post(url, data=form)
        assert posted.status_code == 303, posted.text[:500]
        url = urljoin(url, posted.headers["location"])
    raise AssertionError("too many redirects at the upstream")


def _auto_submitted(response: httpx.Response) -> tuple[str, dict[str, str]] | None:
    """The form of oidc-provider's self-submitting page (its form_post "Submitting Callback"): the end of
    its session of another account when somebody else logs in at its login page (resume.js)."""
    if response.status_code != 200 or "<title>Submitting Callback</title>" not in response.text:
        return None
    action = re.search(r'<form method="post" action="([^"]+)"', response.text)
    assert action is not None, response.text[:500]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"/>', response.text))
    return html.unescape(action.group(1)), {k: html.unescape(v) for k, v in fields.items()}


def start(browser: httpx.Client, app: LiveApp, *, return_to: str = "/app/") -> str:
    """GET /broker/itsme/start with our browser; the upstream's authorization URL."""
    response = browser.get(f"{app.base}/broker/itsme/start", params={"return_to": return_to})
    assert response.status_code == 303, response.text[:500]
    return str(response.headers["location"])


def host_of(url: str) -> str:
    return urlsplit(url).netloc

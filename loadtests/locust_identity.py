"""Locust users for the identity provider's figures (run by bench_identity.py, never imported by tests).

    locust -f loadtests/locust_identity.py --headless ... ClientCredentialsUser

Each user class measures one thing; the seed file (QG_BENCH_SEED) holds what the setup registered:
private_key_jwt clients with their ES256 keys, refresh tokens (one chain per user), passkeys.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

from locust import FastHttpUser, task
from locust.exception import StopUser

sys.path.insert(0, str(Path(__file__).resolve().parent))

from assertions import ASSERTION_TYPE, AssertionSigner  # noqa: E402
from soft_passkey import SoftPasskey  # noqa: E402

SEED: dict[str, Any] = json.loads(Path(os.environ["QG_BENCH_SEED"]).read_text())
_next = {name: itertools.count() for name in ("clients", "refresh", "passkeys")}


def _take(pool: str) -> Any:
    items = SEED[pool]
    i = next(_next[pool])
    if i >= len(items):
        raise StopUser(f"not enough seeded {pool}")
    return items[i]


class BareUser(FastHttpUser):
    """The bare endpoint served the same way in the same run: the ceiling every figure is set beside."""

    @task
    def healthz(self) -> None:
        self.client.get("/healthz", name="bare /healthz")


class ClientCredentialsUser(FastHttpUser):
    """client_credentials grants with private_key_jwt: every request a new signed assertion."""

    def on_start(self) -> None:
        c = _take("clients")
        self.signer = AssertionSigner(c["client_id"], c["kid"], c["private_key"], SEED["token_endpoint"])

    @task
    def grant(self) -> None:
        form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.signer.assertion(), "scope": "releases:read"}
        with self.client.post("/oauth2/token", data=form, name="client_credentials (private_key_jwt)",
                              catch_response=True) as r:
            if r.status_code != 200 or "access_token" not in (r.json() or {}):
                r.failure(f"{r.status_code} {r.text[:200]}")


class RefreshUser(FastHttpUser):
    """refresh_token grants: each user walks its own rotation chain, always with the newest token."""

    def on_start(self) -> None:
        self.token = _take("refresh")

    @task
    def refresh(self) -> None:
        form = {"grant_type": "refresh_token", "refresh_token": self.token, "client_id": SEED["driver_app"]}
        with self.client.post("/oauth2/token", data=form, name="refresh_token (rotation)", catch_response=True) as r:
            body = r.json() if r.status_code == 200 else {}
            new = body.get("refresh_token")
            if not new or new == self.token:
                r.failure(f"{r.status_code} {r.text[:200]}")
                raise StopUser("the refresh chain broke")
            self.token = new


class PasskeyUser(FastHttpUser):
    """Passkey logins: options, then a real ES256 assertion verified by the provider (one login = both)."""

    def on_start(self) -> None:
        self.passkey = SoftPasskey.from_json(_take("passkeys"))
        self.headers = {"Origin": self.passkey.origin}

    @task
    def login(self) -> None:
        with self.client.post("/webauthn/authentication/options", json={}, headers=self.headers,
                              name="passkey options", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code} {r.text[:200]}")
                return
            options = r.json()
        credential = self.passkey.assert_(options["publicKey"]["challenge"])
        body = {"flow": options["flow"], "credential": credential}
        with self.client.post("/webauthn/authentication/verify", json=body, headers=self.headers,
                              name="passkey login (verify)", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code} {r.text[:200]}")

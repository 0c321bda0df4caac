"""Client addresses behind a reverse proxy, against ``quaygate serve`` in a child process.

The per-address rate limits and login lockouts (identity/ratelimit.py) count by the ASGI client
address. ``quaygate serve`` has uvicorn set it from X-Forwarded-For only on a request from a proxy
named in QUAYGATE_FORWARDED_ALLOW_IPS or ``--forwarded-allow-ips``; otherwise it is the peer's own.
uvicorn's own default (believe 127.0.0.1, or FORWARDED_ALLOW_IPS from the environment) never applies:
the servers here are given FORWARDED_ALLOW_IPS values that would say otherwise.

The limit is 3 POSTs to /oauth2/token per address, in a window of 10^9 seconds (aligned to the
clock: the next one starts in 2033), so no window ends during a test.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from quaygate.settings import trusted_proxies

from .processes import ROOT, answers, free_port, start, stop

LIMIT = 3


def _env(database_url: str, var: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("QUAYGATE_REDIS_URL", "QUAYGATE_FORWARDED_ALLOW_IPS", "FORWARDED_ALLOW_IPS")}
    env.update({"QUAYGATE_DATABASE_URL": database_url, "QUAYGATE_VAR_DIR": str(var),
                "QUAYGATE_BACKGROUND_WORKERS": "false", "QUAYGATE_LOG_LEVEL": "WARNING",
                "QUAYGATE_RATE_LIMIT_PER_ADDRESS": str(LIMIT), "QUAYGATE_RATE_LIMIT_WINDOW": str(10**9), **more})
    return env


@contextlib.contextmanager
def _serve(tmp_path: Path, database_url: str, *options: str, **env: str) -> Iterator[httpx.Client]:
    port = free_port()
    server = start([sys.executable, "-m", "quaygate.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                    *options], log=tmp_path / "serve.log", env=_env(database_url, tmp_path, **env),
                   what="quaygate serve", ready=answers(f"http://127.0.0.1:{port}/healthz"))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield http
    finally:
        stop(server)


def _token(http: httpx.Client, forwarded_for: str | None = None) -> int:
    """One POST to the token endpoint (no client: refused, but counted against the address first)."""
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    return http.post("/oauth2/token", data={"grant_type": "client_credentials"}, headers=headers).status_code


def test_without_a_trusted_proxy_forwarded_for_does_not_escape_the_limit(tmp_path: Path,
                                                                         sqlite_database_url: str) -> None:
    """No proxy named (uvicorn's own variable would trust every peer): any process on the host could
    otherwise name a new address in each request and never be limited, or try a person's passkey from
    an address per attempt."""
    with _serve(tmp_path, sqlite_database_url, FORWARDED_ALLOW_IPS="*") as http:
        assert 429 not in [_token(http, f"203.0.113.{n}") for n in range(1, LIMIT + 1)]
        assert _token(http, "198.51.100.1") == 429  # all counted under 127.0.0.1, the peer
        assert _token(http) == 429


def test_a_named_proxy_s_clients_are_counted_apart(tmp_path: Path, sqlite_database_url: str) -> None:
    """``--forwarded-allow-ips`` overrides the setting (which names another host here)."""
    with _serve(tmp_path, sqlite_database_url, "--forwarded-allow-ips", "127.0.0.1",
                QUAYGATE_FORWARDED_ALLOW_IPS="192.0.2.1", FORWARDED_ALLOW_IPS="192.0.2.1") as http:
        assert 429 not in [_token(http, "203.0.113.7") for _ in range(LIMIT)]
        assert _token(http, "203.0.113.7") == 429
        # A client's own X-Forwarded-For, to which the proxy appends the address it saw: that one counts.
        assert _token(http, "198.51.100.9, 203.0.113.7") == 429
        assert _token(http, "203.0.113.8") != 429  # another client behind the same proxy
        assert _token(http) != 429  # the proxy's own request: its own address
        # The issuer is the setting's, never taken from X-Forwarded-Host or -Proto (release_service/api/auth.py).
        meta = http.get("/.well-known/openid-configuration",
                        headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                                 "X-Forwarded-Host": "evil.example", "Host": "evil.example"}).json()
        assert meta["issuer"] == "http://localhost:8000"
        assert all("evil.example" not in str(v) for v in meta.values())


def test_a_proxy_network_from_the_setting(tmp_path: Path, sqlite_database_url: str) -> None:
    """QUAYGATE_FORWARDED_ALLOW_IPS as a CIDR network (uvicorn's own variable names another host)."""
    with _serve(tmp_path, sqlite_database_url, QUAYGATE_FORWARDED_ALLOW_IPS="192.0.2.1, 127.0.0.0/8",
                FORWARDED_ALLOW_IPS="192.0.2.1") as http:
        assert 429 not in [_token(http, "2001:db8:1::1") for _ in range(LIMIT)]
        assert _token(http, "2001:db8:1::2") == 429  # the same /64 (identity.ratelimit.address_keys)
        assert _token(http, "2001:db8:2::1") != 429
        assert _token(http, "203.0.113.7") != 429


@pytest.mark.parametrize(("options", "setting", "said"), [
    pytest.param(["--forwarded-allow-ips", "10.0.0.300"], None,
                 "--forwarded-allow-ips: '10.0.0.300' is neither an IP address nor a CIDR network", id="no-address"),
    pytest.param(["--forwarded-allow-ips", "10.0.0.5,proxy.example"], None, "host names are not resolved",
                 id="host-name"),
    pytest.param(["--forwarded-allow-ips", "*"], None, "'*' would trust every peer", id="star"),
    pytest.param(["--forwarded-allow-ips", "10.0.0.1/8"], "10.0.0.5", "the network is 10.0.0.0/8", id="host-bits"),
    pytest.param([], "0.0.0.0/0", "QUAYGATE_FORWARDED_ALLOW_IPS: '0.0.0.0/0' would trust every peer",
                 id="setting-everyone"),
    pytest.param([], "*", "QUAYGATE_FORWARDED_ALLOW_IPS: '*' would trust every peer", id="setting-star"),
])
def test_a_bad_proxy_list_is_refused_with_a_message(tmp_path: Path, options: list[str], setting: str | None,
                                                    said: str) -> None:
    more: Mapping[str, str] = {} if setting is None else {"QUAYGATE_FORWARDED_ALLOW_IPS": setting}
    env = _env(f"sqlite:///{tmp_path / 'q.db'}", tmp_path, **more)
    done = subprocess.run([sys.executable, "-m", "quaygate.cli", "serve", "--migrate",  # noqa: S603
                           "--port", str(free_port()), *options], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "q.db").exists()  # refused before it migrated


@pytest.mark.parametrize("entry", ["0.0.0.0/1", "128.0.0.0/1", "64.0.0.0/7", "::/1", "8000::/1", "2000::/3",
                                   "2001:db8::/31", "::ffff:0:0/96", "::ffff:0.0.0.0/97", "::/64", "fc00::/7"])
def test_a_network_wider_than_proxies_is_refused(entry: str) -> None:
    """'*' and /0 spelt otherwise: halves of every address, the IPv4-mapped range (every IPv4 peer on a
    dual-stack socket), a public slice of the Internet (review 67)."""
    with pytest.raises(ValueError, match="wider than a network of proxies"):
        trusted_proxies(f"10.0.0.5,{entry}")


def test_a_private_range_whole_is_a_network_of_proxies() -> None:
    assert trusted_proxies("10.0.0.0/8,fd00::/8,2001:db8::/32,::ffff:10.0.0.0/104") == (
        "10.0.0.0/8", "fd00::/8", "2001:db8::/32", "::ffff:a00:0/104")


def test_the_proxy_list_is_normalised() -> None:
    assert trusted_proxies(" 10.0.0.5, 10.1.0.0/16,, fd00::/8 ,10.0.0.5/32,2001:DB8::1") == (
        "10.0.0.5", "10.1.0.0/16", "fd00::/8", "2001:db8::1")
    assert trusted_proxies("") == () and trusted_proxies(None) == ()


def test_serve_gives_uvicorn_both_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicitly, whatever FORWARDED_ALLOW_IPS says; an IPv4 proxy also as a dual-stack socket shows it."""
    import uvicorn

    from quaygate import observability
    from quaygate.cli import main

    served: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: served.append(kw))
    monkeypatch.setattr(observability, "configure_logging", lambda level: None)
    monkeypatch.setenv("QUAYGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("QUAYGATE_DATABASE_URL", f"sqlite:///{tmp_path / 'q.db'}")
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    monkeypatch.delenv("QUAYGATE_REDIS_URL", raising=False)
    monkeypatch.delenv("QUAYGATE_FORWARDED_ALLOW_IPS", raising=False)
    assert main(["serve"]) == 0
    monkeypatch.setenv("QUAYGATE_FORWARDED_ALLOW_IPS", "10.0.0.0/8,fd00::1")
    assert main(["serve"]) == 0
    assert main(["serve", "--forwarded-allow-ips", ""]) == 0
    assert [(kw["proxy_headers"], kw["forwarded_allow_ips"]) for kw in served] == [
        (False, []), (True, ["10.0.0.0/8", "::ffff:10.0.0.0/104", "fd00::1"]), (False, [])]

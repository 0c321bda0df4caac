"""What a client secret may cost the server (review 129, finding 1): scrypt (identity.clients) behind a
budget of failures per address and per IPv6 /48 (identity.ratelimit, "Client secrets"), a memo of secrets
that matched, and a bound on hashes at once (``SecretChecker``). The real app, its real token endpoint."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from identity import clients
from identity.bootstrap import provider_for
from identity.clients import HashingBusy, SecretChecker, hash_secret
from quaygate.cache import MemoryCache
from quaygate.schema import oauth_clients
from tests.test_identity_ratelimit import Served, _clear_of_a_window_edge, line_client, serve
from tests.test_identity_support import public_jwks, rsa_key

FORM = {"grant_type": "client_credentials"}


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every scrypt a client secret costs, counted (the presented secret of each)."""
    seen: list[str] = []
    real = clients.verify_secret

    def counted(secret: str, encoded: str | None) -> bool:
        seen.append(secret)
        return real(secret, encoded)

    monkeypatch.setattr(clients, "verify_secret", counted)
    return seen


@pytest.fixture
def scrypts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Every scrypt run in the process, by its cost (n, r, p): what a wrong secret costs, counted."""
    seen: list[tuple[int, int, int]] = []
    real = hashlib.scrypt

    def counted(password: bytes, *, salt: bytes, n: int, r: int, p: int, maxmem: int = 0, dklen: int = 64) -> bytes:
        seen.append((n, r, p))
        return real(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)

    monkeypatch.setattr(hashlib, "scrypt", counted)
    return seen


def served(engine: sa.Engine, tmp_path: Path, **settings: Any) -> Iterator[Served]:
    for s in serve(engine, tmp_path, MemoryCache(), **settings):
        _clear_of_a_window_edge()
        yield s


def from_address(s: Served, address: str) -> TestClient:
    """Requests to the running app from another client address (the ASGI ``client`` the limits count)."""
    return TestClient(s.http.app, client=(address, 50000))


def slowed(r: Any) -> bool:
    return (r.status_code == 429 and r.json()["error"] == "slow_down" and 1 <= int(r.headers["retry-after"]) <= 120
            and r.headers["cache-control"] == "no-store")


def test_a_flood_of_wrong_secrets_stops_being_hashed_past_the_addresss_budget(
        engine: sa.Engine, tmp_path: Path, hashes: list[str], production_costs: None) -> None:
    """At the production cost (scrypt at n=2^14, about 50 ms each): the default budget, 10 failures per
    address and window, then 429 slow_down and nothing hashed; the client's own secret, from another
    address, still gets its token."""
    for s in served(engine, tmp_path):
        client_id, secret = line_client(engine)
        assert secret is not None
        answers = [s.http.post("/oauth2/token", data=FORM, auth=(client_id, f"guess-{n}")) for n in range(10)]
        assert [r.status_code for r in answers] == [401] * 10
        assert len(hashes) == 10
        for n in range(20):  # wrong secrets, and unknown clients, through every client endpoint
            assert slowed(s.http.post("/oauth2/token", data=FORM, auth=(client_id, f"more-{n}")))
        assert slowed(s.http.post("/oauth2/token", data=FORM, auth=("qg-nobody", "x")))
        assert slowed(s.http.post("/oauth2/introspect", data={"token": "t"}, auth=(client_id, "x")))
        assert slowed(s.http.post("/oauth2/revoke", data={"token": "t"}, auth=(client_id, "x")))
        assert slowed(s.http.post("/oauth2/token", data={**FORM, "client_id": client_id, "client_secret": "x"}))
        assert len(hashes) == 10  # not one more scrypt
        r = from_address(s, "192.0.2.7").post("/oauth2/token", data=FORM, auth=(client_id, secret))
        assert r.status_code == 200, r.text


def test_unknown_clients_spend_the_budget_too(engine: sa.Engine, tmp_path: Path, hashes: list[str]) -> None:
    """An unknown client_id costs the scrypt of a wrong secret (against the decoy hash), and is a failure:
    counted, so that the budget is one for every way of guessing."""
    for s in served(engine, tmp_path, rate_limit_secret_failures_per_address=3):
        client_id, _ = line_client(engine)
        for n in range(3):
            assert s.http.post("/oauth2/token", data=FORM, auth=(f"qg-nobody-{n}", "x")).status_code == 401
        assert slowed(s.http.post("/oauth2/token", data=FORM, auth=(client_id, "wrong")))
        assert hashes == ["x"] * 3


CLIENT_ENDPOINTS = [("/oauth2/token", FORM), ("/oauth2/introspect", {"token": "t"}),
                    ("/oauth2/revoke", {"token": "t"}), ("/oauth2/par", {"response_type": "code"})]


@pytest.mark.parametrize(("path", "form"), CLIENT_ENDPOINTS)
def test_an_unknown_client_costs_what_a_wrong_secret_costs_and_is_answered_alike(
        engine: sa.Engine, tmp_path: Path, scrypts: list[tuple[int, int, int]], path: str, form: dict[str, str]
) -> None:
    """No timing oracle of which client ids exist: an unknown client_id, a deactivated client and a client
    with no secret (private_key_jwt) are checked against a hash of the same cost as a wrong secret of a
    client that has one, one scrypt each, and answered the same invalid_client, at every endpoint where a
    client authenticates with a secret (HTTP Basic and the form)."""
    for s in served(engine, tmp_path, rate_limit_secret_failures_per_address=1000):
        client_id, _ = line_client(engine)
        gone, _ = line_client(engine)
        with engine.begin() as conn:
            conn.execute(oauth_clients.update().where(oauth_clients.c.client_id == gone).values(active=False))
        provider_for(s.http.app).clients.changed(gone)
        keyed, _ = line_client(engine, auth_method="private_key_jwt", jwks=public_jwks(rsa_key()))
        for n, post in enumerate((False, True)):
            answers = {}
            for who in (client_id, "qg-shipping-line-0123456789abcdef", gone, keyed):
                scrypts.clear()
                secret = f"guess-{who}-{n}"
                if post:
                    r = s.http.post(path, data={**form, "client_id": who, "client_secret": secret})
                else:
                    r = s.http.post(path, data=form, auth=(who, secret))
                assert r.status_code == 401, r.text
                answers[who] = (scrypts[:], r.json(), r.headers.get("www-authenticate"))
            wrong = answers.pop(client_id)
            assert len(wrong[0]) == 1
            for who, answer in answers.items():
                assert answer == wrong, (who, post)


def test_the_right_secret_spends_nothing_and_a_remembered_one_passes_a_spent_address(
        engine: sa.Engine, tmp_path: Path, hashes: list[str]) -> None:
    for s in served(engine, tmp_path, rate_limit_secret_failures_per_address=3):
        client_id, secret = line_client(engine)
        assert secret is not None
        for _ in range(5):
            assert s.http.post("/oauth2/token", data=FORM, auth=(client_id, secret)).status_code == 200
        assert len(hashes) == 1  # hashed once; the four after it recognised from the memo
        for _ in range(3):
            assert s.http.post("/oauth2/token", data=FORM, auth=(client_id, "wrong")).status_code == 401
        assert slowed(s.http.post("/oauth2/token", data=FORM, auth=(client_id, "wrong")))
        # Someone behind the same address spent its budget: the client with its own secret goes on.
        assert s.http.post("/oauth2/token", data=FORM, auth=(client_id, secret)).status_code == 200
        assert len(hashes) == 4


def test_an_ipv6_48_has_one_budget_over_its_64s(engine: sa.Engine, tmp_path: Path, hashes: list[str]) -> None:
    for s in served(engine, tmp_path, rate_limit_secret_failures_per_address=2,
                    rate_limit_secret_failures_per_network=3):
        client_id, secret = line_client(engine)
        statuses = [from_address(s, f"2001:db8:1:{n:x}::1").post("/oauth2/token", data=FORM,
                                                                  auth=(client_id, "wrong")).status_code
                    for n in range(5)]
        assert statuses == [401, 401, 401, 429, 429] and len(hashes) == 3
        other = from_address(s, "2001:db8:2::1").post("/oauth2/token", data=FORM, auth=(client_id, "wrong"))
        assert other.status_code == 401  # another /48


def test_with_the_limits_off_nothing_is_counted(engine: sa.Engine, tmp_path: Path, hashes: list[str]) -> None:
    for s in served(engine, tmp_path, rate_limit_enabled=False, rate_limit_secret_failures_per_address=1):
        client_id, _ = line_client(engine)
        for _ in range(4):
            assert s.http.post("/oauth2/token", data=FORM, auth=(client_id, "wrong")).status_code == 401
        assert len(hashes) == 4


def test_a_rotated_secret_misses_the_memo(engine: sa.Engine, tmp_path: Path, hashes: list[str]) -> None:
    """Whatever changes a client's secret (ClientManagement.rotate_secret: the admin API and ``quaygate
    client rotate-secret``, tests/test_identity_client_secret_rotation.py) writes a new hash and tells the
    registry (``ClientRegistry.changed``), as here. The memo holds the
    hash the secret matched: a new hash misses, the old secret is hashed (and refused), the new one
    hashed once and then remembered."""
    for s in served(engine, tmp_path):
        client_id, old = line_client(engine)
        assert old is not None
        for _ in range(2):
            assert s.http.post("/oauth2/token", data=FORM, auth=(client_id, old)).status_code == 200
        assert hashes == [old]
        new = "a-new-secret-" + "x" * 32
        with engine.begin() as conn:
            conn.execute(oauth_clients.update().where(oauth_clients.c.client_id == client_id)
                         .values(secret_hash=hash_secret(new)))
        provider_for(s.http.app).clients.changed(client_id)
        assert s.http.post("/oauth2/token", data=FORM, auth=(client_id, old)).status_code == 401
        assert hashes == [old, old]  # the memo did not vouch for it
        for _ in range(2):
            assert s.http.post("/oauth2/token", data=FORM, auth=(client_id, new)).status_code == 200
        assert hashes == [old, old, new]


def test_with_every_hashing_slot_taken_a_secret_is_refused_not_queued(
        engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """worker_threads=2: one slot. A hash held in it (an Event stands for scrypt's 50 ms) and a second
    secret is answered 429 slow_down at once, not hashed; once the slot is free, hashed again."""
    entered, release = threading.Event(), threading.Event()
    real = clients.verify_secret
    calls: list[str] = []

    def held(secret: str, encoded: str | None) -> bool:
        calls.append(secret)
        if secret == "held":
            entered.set()
            assert release.wait(10)
        return real(secret, encoded)

    monkeypatch.setattr(clients, "verify_secret", held)
    for s in served(engine, tmp_path, worker_threads=2):
        client_id, secret = line_client(engine)
        assert secret is not None
        first: list[Any] = []
        waiting = threading.Thread(target=lambda: first.append(
            s.http.post("/oauth2/token", data=FORM, auth=(client_id, "held"))))
        waiting.start()
        try:
            assert entered.wait(10)
            r = from_address(s, "192.0.2.8").post("/oauth2/token", data=FORM, auth=(client_id, secret))
            assert slowed(r) and r.headers["retry-after"] == "1"
            assert calls == ["held"]
        finally:
            release.set()
            waiting.join(10)
        assert first[0].status_code == 401
        r = from_address(s, "192.0.2.8").post("/oauth2/token", data=FORM, auth=(client_id, secret))
        assert r.status_code == 200, r.text


def hold_hashes(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Semaphore]:
    release, entered = threading.Event(), threading.Semaphore(0)

    def held(secret: str, encoded: str | None) -> bool:
        entered.release()
        assert release.wait(10)
        return False

    monkeypatch.setattr(clients, "verify_secret", held)
    return release, entered


def test_the_checker_hashes_at_most_its_slots_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    release, entered = hold_hashes(monkeypatch)
    checker = SecretChecker(max_hashing=2)
    run: Callable[[], bool] = lambda: checker.verify("c", "s", "scrypt$16$8$1$AA$AA")  # noqa: E731
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    assert entered.acquire(timeout=10) and entered.acquire(timeout=10)
    with pytest.raises(HashingBusy):
        run()
    release.set()
    for t in threads:
        t.join(10)
    assert run() is False  # slots given back


def test_the_app_gives_half_its_worker_threads_to_hashing(engine: sa.Engine, tmp_path: Path) -> None:
    for s in served(engine, tmp_path, worker_threads=5):
        assert provider_for(s.http.app).server.secrets.max_hashing == 2


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_exceeded_reads_an_addresss_count_and_its_48s_in_one_round_trip(kind: str, request: pytest.FixtureRequest
                                                                        ) -> None:
    from identity.ratelimit import RateLimiter, Wider
    from quaygate.cache import Cache, RedisCache

    cache: Cache = RedisCache(request.getfixturevalue("redis_url")) if kind == "redis" else MemoryCache()
    try:
        limiter = RateLimiter(cache, now=lambda: 1_800_000_040.0)
        net = Wider("net", 3)
        assert limiter.exceeded("a", 2, 60, wider=net) is None
        limiter.hit("a", 2, 60, wider=net)
        limiter.hit("b", 2, 60, wider=net)
        assert limiter.exceeded("a", 2, 60, wider=net) is None and limiter.exceeded("b", 2, 60, wider=net) is None
        limiter.hit("a", 2, 60, wider=net)
        assert limiter.exceeded("a", 2, 60, wider=net) == 50  # its own count spent (and the /48's: 40)
        assert limiter.exceeded("c", 2, 60, wider=net) == 40  # the /48's count spent
        assert limiter.exceeded("c", 2, 60) is None
    finally:
        cache.close()

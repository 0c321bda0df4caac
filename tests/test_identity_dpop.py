"""DPoP proof verification (RFC 9449 §4.3): every guard, each test failing if its guard is removed."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwk as joserfc_jwk
from joserfc.jwk import RSAKey

from identity.dpop import (
    DPoPError,
    DPoPVerifier,
    access_token_hash,
    jwk_thumbprint,
    normalise_htu,
    proof_header,
)
from quaygate.cache import Cache, MemoryCache, RedisCache

from .test_identity_dpop_support import ProofKey, b64, hs256, unsigned

HTU = "https://server.example/token"
NOW = 1_800_000_000.0


@pytest.fixture
def clock() -> list[float]:
    return [NOW]


@pytest.fixture
def verifier(clock: list[float]) -> DPoPVerifier:
    return DPoPVerifier(MemoryCache(), max_age=60, leeway=5, now=lambda: clock[0])


@pytest.fixture
def client(clock: list[float]) -> ProofKey:
    return ProofKey(clock=clock)


def refused(verifier: DPoPVerifier, proof: str, reason: str, **kw: Any) -> DPoPError:
    kw.setdefault("htm", "POST")
    kw.setdefault("htu", HTU)
    with pytest.raises(DPoPError) as info:
        verifier.verify(proof, **kw)
    assert info.value.error == "invalid_dpop_proof"
    assert info.value.reason == reason, info.value
    return info.value


# -- the happy path and the reference values ---------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "Ed25519"])
def test_valid_proof_is_accepted_and_bound_to_its_key_thumbprint(verifier: DPoPVerifier, clock: list[float],
                                                                 alg: str) -> None:
    client = ProofKey(alg=alg, clock=clock)
    proof = verifier.verify(client.proof(token="at-1"), htm="POST", htu=HTU, access_token="at-1")
    assert proof.jkt == joserfc_jwk.thumbprint(client.public_jwk)
    assert proof.htm == "POST" and proof.htu == HTU and proof.iat == int(NOW)
    assert proof.ath == access_token_hash("at-1")
    assert "d" not in proof.jwk


def test_thumbprint_matches_rfc_9449_example() -> None:
    # RFC 9449 §6.1 (the key of the §4.1 example proof) and its cnf.jkt.
    key = {"kty": "EC", "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
           "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA", "crv": "P-256"}
    assert jwk_thumbprint(key) == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    # Members outside RFC 7638 §3.2's required set do not change it.
    assert jwk_thumbprint({**key, "use": "sig", "kid": "x"}) == "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


def test_access_token_hash_matches_rfc_9449_example() -> None:
    # RFC 9449 §7.1: the example access token and the ath of its proof.
    assert access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU") == \
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


# -- replay ---------------------------------------------------------------------------------------------


def test_replayed_proof_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    proof = client.proof()
    verifier.verify(proof, htm="POST", htu=HTU)
    refused(verifier, proof, "replayed")


def test_same_jti_in_a_new_proof_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    verifier.verify(client.proof(claims={"jti": "j-1"}), htm="POST", htu=HTU)
    refused(verifier, client.proof("GET", HTU + "/other", claims={"jti": "j-1"}), "replayed",
            htm="GET", htu=HTU + "/other")


def test_jti_is_claimed_per_key(verifier: DPoPVerifier, clock: list[float]) -> None:
    # Another client choosing the same jti does not lock the first one out (the claim is per jkt).
    verifier.verify(ProofKey(clock=clock).proof(claims={"jti": "same"}), htm="POST", htu=HTU)
    verifier.verify(ProofKey(clock=clock).proof(claims={"jti": "same"}), htm="POST", htu=HTU)


def test_jti_claim_lasts_the_whole_acceptance_window(redis_url: str, clock: list[float]) -> None:
    # A proof dated at the leeway's edge in the future is acceptable until max_age after its iat,
    # so its jti must stay claimed at least max_age + leeway (RFC 9449 §11.1), in the shared Redis.
    import redis

    cache = RedisCache(redis_url)
    verifier = DPoPVerifier(cache, max_age=60, leeway=5, now=lambda: clock[0])
    verifier.verify(ProofKey(clock=clock).proof(claims={"iat": int(NOW) + 5}), htm="POST", htu=HTU)
    r = redis.Redis.from_url(redis_url)
    keys = r.keys("qg:dpop:jti:*")
    assert len(keys) == 1
    assert r.pttl(keys[0]) > 65_000 - 5_000
    r.close()
    cache.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_concurrent_replay_accepts_exactly_one(backend: str, request: pytest.FixtureRequest,
                                               clock: list[float]) -> None:
    cache: Cache = RedisCache(request.getfixturevalue("redis_url")) if backend == "redis" else MemoryCache()
    # Two replicas sharing the cache, eight racing requests carrying the same proof.
    replicas = [DPoPVerifier(cache, now=lambda: clock[0]) for _ in range(2)]
    proof = ProofKey(clock=clock).proof()
    accepted: list[int] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            replicas[i % 2].verify(proof, htm="POST", htu=HTU)
            accepted.append(i)
        except DPoPError as exc:
            assert exc.reason == "replayed"

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.close()
    assert len(accepted) == 1


# -- the request it names -------------------------------------------------------------------------------


def test_wrong_htm_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    refused(verifier, client.proof("GET"), "htm")
    refused(verifier, client.proof("post"), "htm")  # methods are case-sensitive (RFC 9110 §9.1)


@pytest.mark.parametrize("htu", [
    "https://server.example/token2",
    "https://server.example/",
    "https://attacker.example/token",
    "http://server.example/token",
    "https://server.example:8443/token",
    "server.example/token",
])
def test_wrong_htu_is_refused(verifier: DPoPVerifier, client: ProofKey, htu: str) -> None:
    refused(verifier, client.proof(htu=htu), "htu")


def test_htu_is_compared_after_normalisation(verifier: DPoPVerifier, client: ProofKey) -> None:
    # RFC 9449 §4.3 item 9: query and fragment ignored; RFC 3986 §6.2.2-6.2.3 normalisation.
    proof = client.proof(htu="HTTPS://Server.EXAMPLE:443/token?x=1#frag")
    assert verifier.verify(proof, htm="POST", htu="https://server.example/token?other=2").jkt == client.jkt
    assert normalise_htu("http://h.example:80") == "http://h.example/"
    assert normalise_htu("https://user@h.example/") is None


def test_htu_missing_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    refused(verifier, client.proof(drop=("htu",)), "htu")


# -- time -----------------------------------------------------------------------------------------------


def test_stale_iat_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    refused(verifier, client.proof(claims={"iat": int(NOW) - 61}), "iat_stale")
    verifier.verify(client.proof(claims={"iat": int(NOW) - 60}), htm="POST", htu=HTU)  # the edge passes


def test_future_iat_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    refused(verifier, client.proof(claims={"iat": int(NOW) + 6}), "iat_future")
    verifier.verify(client.proof(claims={"iat": int(NOW) + 5}), htm="POST", htu=HTU)  # within the leeway


@pytest.mark.parametrize("iat", [None, "1800000000", True, float("nan")], ids=["none", "text", "bool", "nan"])
def test_missing_or_malformed_iat_is_refused(verifier: DPoPVerifier, client: ProofKey, iat: Any) -> None:
    # NaN: Python's JSON reads it, and it passes every comparison (it was taken, then failed as a 500).
    proof = client.proof(drop=("iat",)) if iat is None else client.proof(claims={"iat": iat})
    refused(verifier, proof, "iat")


# -- the access token it names --------------------------------------------------------------------------


def test_missing_ath_is_refused_when_a_token_is_presented(verifier: DPoPVerifier, client: ProofKey) -> None:
    refused(verifier, client.proof(), "ath_missing", access_token="at-1")


def test_wrong_ath_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    refused(verifier, client.proof(token="another-token"), "ath", access_token="at-1")


def test_an_ath_that_is_no_text_is_refused_not_a_failure(verifier: DPoPVerifier, client: ProofKey) -> None:
    refused(verifier, client.proof(claims={"ath": "\ud800"}), "ath", access_token="at-1")  # a lone surrogate


# -- the header -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", None])
def test_wrong_typ_is_refused(verifier: DPoPVerifier, client: ProofKey, typ: str | None) -> None:
    proof = client.proof(drop=("typ",)) if typ is None else client.proof(header={"typ": typ})
    refused(verifier, proof, "typ")


def test_alg_none_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    claims = {"jti": "n", "htm": "POST", "htu": HTU, "iat": int(NOW)}
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": client.public_jwk}
    refused(verifier, unsigned(header, claims), "alg")
    head, body, _ = unsigned(header, claims).split(".")
    refused(verifier, f"{head}.{body}.", "malformed")  # the RFC 7519 §6.1 unsecured form


def test_hs256_signed_with_the_public_key_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    claims = {"jti": "h", "htm": "POST", "htu": HTU, "iat": int(NOW)}
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": client.public_jwk}
    secret = json.dumps(client.public_jwk).encode()
    refused(verifier, hs256(header, claims, secret), "alg")
    oct_header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}}
    refused(verifier, hs256(oct_header, claims, b"secret"), "alg")


def test_private_key_in_jwk_header_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    private = dict(client.key.as_dict(private=True))
    assert "d" in private
    refused(verifier, client.proof(header={"jwk": private}), "jwk_private")


def test_missing_jwk_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    refused(verifier, client.proof(drop=("jwk",)), "jwk_missing")


def test_jwk_of_another_type_than_alg_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    rsa_jwk = dict(RSAKey.generate_key(2048).as_dict(private=False))
    refused(verifier, client.proof(header={"jwk": rsa_jwk}), "jwk_type")


def test_proof_signed_by_another_key_than_its_jwk_is_refused(verifier: DPoPVerifier, client: ProofKey,
                                                              clock: list[float]) -> None:
    other = ProofKey(clock=clock)
    refused(verifier, client.proof(signer=other.key), "signature")


def test_a_key_remembered_from_an_earlier_proof_still_checks_every_signature(
        verifier: DPoPVerifier, client: ProofKey, clock: list[float]) -> None:
    """The verifier remembers the key of a proof header it has seen (a client sends the same header
    every time): a later proof with that very header, signed by another key or forged, is still refused,
    and a proof with another htu after many accepted ones too."""
    accepted = client.proof()
    assert verifier.verify(accepted, htm="POST", htu=HTU).jkt == client.jkt
    other = ProofKey(clock=clock)
    refused(verifier, client.proof(signer=other.key), "signature")
    head, body, _ = client.proof().split(".")
    forged = b64(b"\x01" * 64)
    refused(verifier, f"{head}.{body}.{forged}", "signature")
    refused(verifier, client.proof(htu="https://attacker.example/token"), "htu")
    # The other key's own proofs are judged by its own key, not the one remembered first.
    assert verifier.verify(other.proof(), htm="POST", htu=HTU).jkt == other.jkt


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "Ed25519"])
def test_a_proof_under_a_remembered_header_is_read_as_strictly_as_the_first(
        verifier: DPoPVerifier, clock: list[float], alg: str) -> None:
    """A proof whose header was met before is not parsed by joserfc again: its payload and signature
    are read by the verifier itself. Each way to bend them is still refused, with the reason the
    first proof would get: a payload swapped under a signature, padding or the standard alphabet in
    base64url, a signature cut short, a payload over the cap, a character outside ASCII; and every
    claim is still checked."""
    client = ProofKey(alg=alg, clock=clock)
    assert verifier.verify(client.proof(token="at-1"), htm="POST", htu=HTU, access_token="at-1").jkt == client.jkt
    head, body, signature = client.proof(token="at-1").split(".")
    _, other_body, _ = client.proof(token="at-1").split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    checks = {
        f"{head}.{other_body}.{signature}": "signature",  # another proof's claims under this signature
        f"{head}.{body}=.{signature}": "malformed",
        f"{head}.{body}.{signature}=": "signature",
        f"{head}.{body}.{b64(raw).replace('-', '+').replace('_', '/')}+": "signature",
        f"{head}.{body}.{b64(raw[:-1])}": "signature",
        f"{head}.{b64(b'{' + b' ' * 2000 + b'}')}.{signature}": "malformed",
        f"{head}.{body}é.{signature}": "malformed",
    }
    for proof, reason in checks.items():
        refused(verifier, proof, reason, access_token="at-1")
    refused(verifier, client.proof("GET", token="at-1"), "htm", access_token="at-1")
    refused(verifier, client.proof(token="at-2"), "ath", access_token="at-1")
    refused(verifier, client.proof(), "ath_missing", access_token="at-1")
    clock[0] += 61
    refused(verifier, client.proof(claims={"iat": int(NOW)}, token="at-1"), "iat_stale", access_token="at-1")
    # The untouched proof, refused by none of the above, still goes through once.
    clock[0] = NOW
    assert verifier.verify(f"{head}.{body}.{signature}", htm="POST", htu=HTU, access_token="at-1").jkt == client.jkt
    refused(verifier, f"{head}.{body}.{signature}", "replayed", access_token="at-1")


def test_a_header_that_changes_how_the_payload_is_read_is_refused_every_time(
        verifier: DPoPVerifier, client: ProofKey) -> None:
    """RFC 7797 ``b64: false`` (a raw payload) is never taken for a proof, the first time or after: such
    a header is never remembered (it would change how a remembered header's payloads are read)."""
    for _ in range(2):
        refused(verifier, client.proof(header={"crit": ["b64"], "b64": False}), "malformed")


def test_forged_signature_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    claims = {"jti": "f", "htm": "POST", "htu": HTU, "iat": int(NOW)}
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": client.public_jwk}
    refused(verifier, unsigned(header, claims, b"\x01" * 64), "signature")


def test_short_rsa_key_is_refused(verifier: DPoPVerifier) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    numbers = weak.public_key().public_numbers()
    jwk = {"kty": "RSA", "e": b64(numbers.e.to_bytes(3, "big")), "n": b64(numbers.n.to_bytes(128, "big"))}
    header = {"typ": "dpop+jwt", "alg": "RS256", "jwk": jwk}
    claims = {"jti": "w", "htm": "POST", "htu": HTU, "iat": int(NOW)}
    head, body, _ = unsigned(header, claims).split(".")
    signature = weak.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    refused(verifier, f"{head}.{body}.{b64(signature)}", "jwk_weak")


def _rsa_jwk(n: int, e: int) -> dict[str, str]:
    return {"kty": "RSA", "n": b64(n.to_bytes(-(-n.bit_length() // 8), "big")),
            "e": b64(e.to_bytes(-(-e.bit_length() // 8), "big"))}


@pytest.mark.parametrize(("bits", "e", "reason"), [
    (2048, 2**2046 + 1, "jwk_unsupported"),  # a huge exponent: ~6 ms to check the signature, 150 times F4's
    (2048, 2**31 + 1, "jwk_unsupported"),
    (2048, 3, "jwk_unsupported"),
    (4608, 65537, "jwk_unsupported"),  # longer than 4096 bits
    (2047, 65537, "jwk_weak"),
])
def test_an_rsa_key_other_than_2048_to_4096_bits_with_exponent_65537_is_refused_unchecked(
        verifier: DPoPVerifier, monkeypatch: pytest.MonkeyPatch, bits: int, e: int, reason: str) -> None:
    """Review 129, finding 3: the size and the exponent of a proof's key set what checking its signature
    costs, and anyone sends proofs. Refused before the key is imported or any signature checked."""
    imported: list[Any] = []
    real = RSAKey.import_key
    monkeypatch.setattr(RSAKey, "import_key", classmethod(lambda cls, *a, **kw: imported.append(a) or real(*a, **kw)))
    n = (1 << (bits - 1)) | 1  # odd, of exactly ``bits`` bits: the check reads sizes, not primes
    header = {"typ": "dpop+jwt", "alg": "RS256", "jwk": _rsa_jwk(n, e)}
    claims = {"jti": "big", "htm": "POST", "htu": HTU, "iat": int(NOW)}
    refused(verifier, unsigned(header, claims, b"\x01" * (bits // 8)), reason)
    assert imported == []


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_rsa_keys_of_2048_to_4096_bits_with_exponent_65537_are_accepted(verifier: DPoPVerifier, clock: list[float],
                                                                         bits: int) -> None:
    client = ProofKey("RS256", key=RSAKey.generate_key(bits), clock=clock)
    assert verifier.verify(client.proof(), htm="POST", htu=HTU).jkt == client.jkt


# -- shape ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proof", ["", "abc", "a.b", "a.b.c.d", "a..c", "!!!.???.***"])
def test_malformed_proof_is_refused(verifier: DPoPVerifier, proof: str) -> None:
    with pytest.raises(DPoPError) as info:
        verifier.verify(proof, htm="POST", htu=HTU)
    assert info.value.reason in {"missing", "malformed"}


def test_oversized_proof_is_refused(verifier: DPoPVerifier, client: ProofKey) -> None:
    refused(verifier, client.proof(claims={"pad": "x" * 9000}), "too_large")


@pytest.mark.parametrize("jti", [None, "", 7, "j" * 257, "\ud800", "j\x00"])  # a lone surrogate: no replay key
def test_missing_or_malformed_jti_is_refused(verifier: DPoPVerifier, client: ProofKey, jti: Any) -> None:
    proof = client.proof(drop=("jti",)) if jti is None else client.proof(claims={"jti": jti})
    refused(verifier, proof, "jti")


def test_more_than_one_dpop_header_is_refused() -> None:
    from starlette.datastructures import Headers

    one = Headers(raw=[(b"dpop", b"p1")])
    assert proof_header(one) == "p1"
    assert proof_header(Headers(raw=[])) is None
    with pytest.raises(DPoPError) as info:
        proof_header(Headers(raw=[(b"dpop", b"p1"), (b"dpop", b"p2")]))
    assert info.value.reason == "several"


def test_no_symmetric_or_unknown_algorithm_can_be_configured() -> None:
    for algs in [("HS256",), ("none",), ("ES256", "RS512"), ()]:
        with pytest.raises(ValueError):
            DPoPVerifier(MemoryCache(), algorithms=algs)


def test_real_clock_default_accepts_a_fresh_proof() -> None:
    verifier = DPoPVerifier(MemoryCache())
    client = ProofKey(clock=[time.time()])
    assert verifier.verify(client.proof(), htm="POST", htu=HTU).jkt == client.jkt

"""AccessTokenVerifier: what an RFC 9068 resource server must refuse (RFC 9068 §4, RFC 8725)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from joserfc import jws
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry

from identity import tokens as identity_tokens
from identity.keys import KeyStore
from identity.tokens import AccessTokenVerifier, InvalidToken, require_scope, sign_access_token
from tests.test_identity_support import ISSUER, Env, basic, forged_with_our_kid, make_env, rsa_key


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Env]:
    yield from make_env(engine, tmp_path)


AUD = "quaygate-api"


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "qg-c",
        "aud": AUD,
        "exp": now + 300,
        "iat": now,
        "nbf": now,
        "jti": "j-1",
        "client_id": "qg-c",
        "scope": "releases:read",
        "role": "shipping_line",
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _sign(env: Env, claims: dict[str, Any] | None = None, **header: Any) -> str:
    """Sign with our real active key (through the raw JWS API, so any header can be set)."""
    key = env.provider.keys.signing_key()
    hdr = {"alg": "RS256", "typ": "at+jwt", "kid": key.kid, **header}
    return jws.serialize_compact(
        hdr, json.dumps(claims or _claims()), key, registry=JWSRegistry(algorithms=["RS256"])
    )


def _refused(env: Env, token: str, *, audience: str = AUD, says: str = "") -> InvalidToken:
    with pytest.raises(InvalidToken) as exc:
        env.provider.verifier.verify(token, audience=audience)
    assert exc.value.error == "invalid_token"
    assert says in exc.value.description
    return exc.value


def test_a_well_formed_token_is_accepted(env: Env) -> None:
    assert env.provider.verifier.verify(_sign(env), audience=AUD)["client_id"] == "qg-c"


def test_alg_none_is_refused(env: Env) -> None:
    kid = env.provider.keys.signing_key().kid
    header = _b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": kid}).encode())
    _refused(env, f"{header}.{_b64(json.dumps(_claims()).encode())}.", says="algorithm")


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256"])
def test_hs256_signed_with_our_public_key_is_refused(env: Env, alg: str) -> None:
    """The RS/HS confusion attack: HMAC keyed with the bytes of one of our published public keys."""
    ours = env.provider.keys.signing_key(alg)
    header = _b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": ours.kid}).encode())
    signing_input = f"{header}.{_b64(json.dumps(_claims()).encode())}"
    # joserfc itself refuses a PEM public key as an HMAC secret, so the forger computes it by hand.
    mac = hmac.new(ours.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{_b64(mac)}"
    _refused(env, forged, says="algorithm")


@pytest.mark.parametrize(
    ("ours", "alg"),
    [("RS256", "ES256"), ("ES256", "RS256"), ("PS256", "ES256"), ("ES256", "PS256"), ("RS256", "PS256"),
     ("PS256", "RS256")],
)
def test_a_token_cannot_use_our_key_with_another_algorithm(env: Env, ours: str, alg: str) -> None:
    """RFC 8725 §3.1, RFC 7517 §4.4: the kid names one of our keys, and that key verifies only the
    algorithm it names: an EC key never an RS256 signature, an RSA key never ES256, and our RS256
    key not even a PS256 signature made with its own private half."""
    forged = forged_with_our_kid(env.provider.keys.signing_key(ours), alg, _claims(), "at+jwt")
    _refused(env, forged, says="does not fit")


def test_unknown_kid_is_refused(env: Env) -> None:
    stranger = rsa_key()
    forged = jws.serialize_compact(
        {"alg": "RS256", "typ": "at+jwt", "kid": stranger.kid},
        json.dumps(_claims()),
        stranger,
        registry=JWSRegistry(algorithms=["RS256"]),
    )
    _refused(env, forged, says="unknown key")


def test_our_kid_with_another_key_is_a_bad_signature(env: Env) -> None:
    forged = jws.serialize_compact(
        {"alg": "RS256", "typ": "at+jwt", "kid": env.provider.keys.signing_key().kid},
        json.dumps(_claims()),
        rsa_key(),
        registry=JWSRegistry(algorithms=["RS256"]),
    )
    _refused(env, forged, says="signature")


def test_wrong_typ_is_refused(env: Env) -> None:
    _refused(env, _sign(env, typ="JWT"), says="typ")  # an id token or another JWT with our key
    env.provider.verifier.verify(
        _sign(env, typ="application/at+jwt"), audience=AUD
    )  # RFC 9068 §2.1 long form


@pytest.mark.parametrize(
    ("make", "audience", "says"),
    [
        (lambda: _claims(exp=int(time.time()) - 120), AUD, "expired"),
        (lambda: _claims(), "quaygate-gate", "aud"),
        (lambda: _claims(iss="https://evil.example"), AUD, "iss"),
        (lambda: _claims(nbf=int(time.time()) + 600), AUD, "not yet valid"),
        (lambda: _claims(iat=int(time.time()) + 600), AUD, "in the future"),
        (lambda: _claims(jti=None), AUD, "jti"),
        (lambda: _claims(exp=None), AUD, "exp"),
        (lambda: _claims(client_id=None), AUD, "client_id"),
        (lambda: _claims(client_id=7), AUD, "client_id"),
        (lambda: _claims(sub=None), AUD, "sub"),
    ],  # built when the test runs: a suite longer than the tokens' 300 s must not expire them
    ids=[
        "expired",
        "wrong-aud",
        "wrong-iss",
        "not-yet-valid",
        "issued-in-future",
        "no-jti",
        "no-exp",
        "no-client_id",
        "int-client_id",
        "no-sub",
    ],
)
def test_claims_are_checked(env: Env, make: Callable[[], dict[str, Any]], audience: str, says: str) -> None:
    _refused(env, _sign(env, make()), audience=audience, says=says)


def test_small_clock_skew_is_tolerated(env: Env) -> None:
    now = int(time.time())
    token = _sign(env, _claims(iat=now + 10, nbf=now + 10, exp=now + 300))
    assert env.provider.verifier.verify(token, audience=AUD)["jti"] == "j-1"


def test_garbage_is_invalid_token(env: Env) -> None:
    for token in ["", "abc", "a.b.c", "é.b.c", "x" * 10000]:
        _refused(env, token)


def test_a_key_rotated_in_by_another_replica_is_found_by_one_refresh(env: Env) -> None:
    verifier = env.provider.verifier
    assert verifier.verify(_sign(env), audience=AUD)  # loads and caches the key set
    other = KeyStore(env.container.engine, env.container.cipher)  # another replica
    other.rotate(env.container.clock.now())
    token = sign_access_token(_claims(), other.signing_key())
    assert verifier.verify(token, audience=AUD)["jti"] == "j-1"


def test_issued_token_and_scope_helper(env: Env) -> None:
    client_id, secret, _ = env.client("terminal_gate")
    token = env.token({"grant_type": "client_credentials"}, headers=basic(client_id, secret)).json()[
        "access_token"
    ]
    claims = env.provider.verifier.verify(token, audience="quaygate-gate")
    require_scope(claims, "gate:verify")
    with pytest.raises(InvalidToken) as exc:
        require_scope(claims, "releases:write")
    assert exc.value.error == "insufficient_scope"


def test_verifier_refuses_symmetric_or_none_allow_lists() -> None:
    for algs in (["HS256"], ["RS256", "none"], []):
        with pytest.raises(ValueError):
            AccessTokenVerifier(_NoKeys(), ISSUER, algorithms=algs)


class _NoKeys:
    def public_key_set(self, *, refresh: bool = False, kid: str | None = None) -> Any:
        raise AssertionError("not reached")


def test_sign_access_token_needs_a_kid() -> None:
    with pytest.raises(ValueError):
        sign_access_token(_claims(), RSAKey.generate_key(2048))


# ---- the memo of checked signatures: only the signature check is ever skipped ---------------------


class _Keys:
    """A key source whose published keys the test withdraws (what KeyStore does when a key leaves)."""

    def __init__(self, key: RSAKey) -> None:
        self.keys = [key]

    def public_key_set(self, *, refresh: bool = False, kid: str | None = None) -> Any:
        return self.keys  # the same set until the test publishes another, as KeyStore keeps its KeySet


def _memo_verifier(now: Callable[[], float] = time.time, revoked: set[str] | None = None
                   ) -> tuple[AccessTokenVerifier, _Keys, RSAKey]:
    key = RSAKey.generate_key(2048, parameters={"kid": "memo-k"})
    keys = _Keys(key)
    verifier = AccessTokenVerifier(keys, ISSUER, now=now,  # type: ignore[arg-type]
                                   revoked=(lambda c: c["jti"] in revoked) if revoked is not None else None)
    return verifier, keys, key


def test_a_token_seen_again_skips_only_the_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier, _, key = _memo_verifier()
    token = sign_access_token(_claims(), key)
    checks = []
    real = jws.validate_compact
    monkeypatch.setattr("identity.tokens.jws.validate_compact", lambda *a, **k: checks.append(1) or real(*a, **k))
    first = verifier.verify(token, audience=AUD)
    first["scope"] = "changed by a caller"
    again = verifier.verify(token, audience=AUD)
    assert len(checks) == 1
    assert again["scope"] == "releases:read"  # callers get their own copy of the claims
    head, body, sig = token.split(".")
    tampered = f"{head}.{_b64(json.dumps(_claims(scope='releases:write')).encode())}.{sig}"
    with pytest.raises(InvalidToken, match="signature"):
        verifier.verify(tampered, audience=AUD)
    assert len(checks) == 2


def test_a_remembered_token_is_still_refused_once_expired_revoked_withdrawn_or_for_another_audience() -> None:
    clock = [time.time()]
    revoked: set[str] = set()
    verifier, keys, key = _memo_verifier(now=lambda: clock[0], revoked=revoked)
    token = sign_access_token(_claims(), key)
    assert verifier.verify(token, audience=AUD)
    with pytest.raises(InvalidToken):
        verifier.verify(token, audience="quaygate-gate")
    clock[0] += 400  # exp is 300 s after issue, the leeway 30 s
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token, audience=AUD)
    clock[0] -= 400
    revoked.add("j-1")
    with pytest.raises(InvalidToken, match="revoked"):
        verifier.verify(token, audience=AUD)
    revoked.clear()
    assert verifier.verify(token, audience=AUD)
    keys.keys = []
    with pytest.raises(InvalidToken, match="unknown key"):
        verifier.verify(token, audience=AUD)


def test_a_remembered_token_has_its_fixed_claims_checked_once_per_audience_and_its_times_every_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [time.time()]
    verifier, _, key = _memo_verifier(now=lambda: clock[0])
    token = sign_access_token(_claims(), key)
    full: list[str] = []
    real = AccessTokenVerifier._check_claims
    monkeypatch.setattr(AccessTokenVerifier, "_check_claims",
                        lambda self, claims, audience: full.append(audience) or real(self, claims, audience))
    for _ in range(3):
        assert verifier.verify(token, audience=AUD)["jti"] == "j-1"
    assert full == [AUD]  # issuer, audience, types: once
    with pytest.raises(InvalidToken):  # another audience is checked in full, and refused
        verifier.verify(token, audience="quaygate-gate")
    assert full == [AUD, "quaygate-gate"]
    # the times on every call, to the second, with the leeway (30 s): exp is 300 s after issue
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    iat, exp = payload["iat"], payload["exp"]
    clock[0] = exp + 29.9
    assert verifier.verify(token, audience=AUD)
    clock[0] = exp + 30
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token, audience=AUD)
    clock[0] = iat - 31  # issued in the future, beyond the leeway
    with pytest.raises(InvalidToken, match="future|not yet valid"):
        verifier.verify(token, audience=AUD)


def test_a_remembered_token_is_refused_before_its_nbf() -> None:
    clock = [time.time()]
    verifier, _, key = _memo_verifier(now=lambda: clock[0])
    nbf = int(clock[0]) + 20
    token = sign_access_token(_claims(nbf=nbf), key)
    assert verifier.verify(token, audience=AUD)  # within the leeway (30 s)
    clock[0] = nbf - 31
    with pytest.raises(InvalidToken, match="not yet valid"):
        verifier.verify(token, audience=AUD)


def test_a_key_found_in_a_key_set_is_found_again_only_while_that_set_is_published(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier remembers which key a kid named in the key set published now, and trusts that only
    while the very same set is published: a new set (a rotation, a key withdrawn) is searched again."""
    verifier, keys, key = _memo_verifier()
    searched: list[str] = []
    real = identity_tokens.fits
    monkeypatch.setattr(identity_tokens, "fits", lambda k, alg: searched.append(str(k.kid)) or real(k, alg))
    tokens = [sign_access_token(_claims(jti=f"j-{n}"), key) for n in range(4)]
    searched.clear()  # signing asks too
    for token in tokens[:3]:  # three tokens, one key: searched once
        assert verifier.verify(token, audience=AUD)
    assert searched == ["memo-k"]
    other = RSAKey.generate_key(2048, parameters={"kid": "other-k"})
    keys.keys = [other, key]  # another set published, holding the same key: searched again
    assert verifier.verify(tokens[3], audience=AUD)
    assert searched == ["memo-k", "memo-k"]
    token = sign_access_token(_claims(jti="j-10"), key)
    assert verifier.verify(token, audience=AUD)
    keys.keys = [other]  # the key withdrawn: its remembered tokens and new ones are refused
    with pytest.raises(InvalidToken, match="unknown key"):
        verifier.verify(token, audience=AUD)
    with pytest.raises(InvalidToken, match="unknown key"):
        verifier.verify(sign_access_token(_claims(jti="j-11"), key), audience=AUD)

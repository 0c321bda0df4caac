"""Token revocation (RFC 7009), and the verifier's revocation check and key/algorithm rules."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from joserfc import jws
from joserfc.jwk import ECKey, KeySet, RSAKey
from joserfc.jws import JWSRegistry

from identity.tokens import AccessTokenVerifier, InvalidToken, sign_access_token
from quaygate.schema import audit_log, grants, revoked_tokens
from tests.test_identity_grants_support import Lifecycle, dpop_key, dpop_proof, make_lifecycle, thumbprint
from tests.test_identity_support import ISSUER, basic


@pytest.fixture
def env(engine: sa.Engine, tmp_path: Path) -> Iterator[Lifecycle]:
    yield from make_lifecycle(engine, tmp_path)


REVOKE_URL = ISSUER + "/oauth2/revoke"


def _revoke(env: Lifecycle, token: str, client_id: str, secret: str | None, *, dpop: str | None = None,
            **extra: str) -> Any:
    headers = basic(client_id, secret) if secret else {}
    if dpop:
        headers["DPoP"] = dpop
    data = {"token": token, **extra, **({} if secret else {"client_id": client_id})}
    return env.http.post("/oauth2/revoke", data=data, headers=headers)


def _verify(env: Lifecycle, token: str) -> dict[str, Any]:
    return env.app.state.token_verifier.verify(token, audience="quaygate-api")  # type: ignore[no-any-return]


def test_access_token_revoked_then_refused_everywhere(env: Lifecycle) -> None:
    client_id, secret, _ = env.machine("shipping_line")
    token = env.machine_token(client_id, secret)
    assert env.http.get("/api/v1/releases", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    r = _revoke(env, token, client_id, secret, token_type_hint="access_token")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    with pytest.raises(InvalidToken, match="revoked"):
        _verify(env, token)
    assert env.http.get("/api/v1/releases", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    with env.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(revoked_tokens)).scalar() == 1
        assert "identity.token.revoked" in conn.execute(sa.select(audit_log.c.kind)).scalars().all()
    # Idempotent (RFC 7009 §2.2).
    assert _revoke(env, token, client_id, secret).status_code == 200


def test_refresh_token_revokes_its_grant_and_access_tokens(env: Lifecycle) -> None:
    client_id, secret, org = env.console()
    _, token = env.grant(client_id, env.person(org))
    issued = env.refresh(token, client_id, secret).json()
    assert _verify(env, issued["access_token"])
    r = _revoke(env, issued["refresh_token"], client_id, secret, token_type_hint="refresh_token")
    assert r.status_code == 200
    assert env.refresh(issued["refresh_token"], client_id, secret).json()["error"] == "invalid_grant"
    with pytest.raises(InvalidToken, match="revoked"):
        _verify(env, issued["access_token"])


def test_public_client_revokes_its_own_refresh_token(env: Lifecycle) -> None:
    client_id = env.driver_app()
    _, token = env.grant(client_id, env.person(), scope="openid offline_access")
    assert _revoke(env, token, client_id, None).status_code == 200
    assert env.refresh(token, client_id).json()["error"] == "invalid_grant"


def _refusals(env: Lifecycle) -> int:
    with env.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(audit_log)
                                .where(audit_log.c.kind == "identity.token.revoke.refused")).scalar_one())


def test_another_clients_tokens_are_not_revoked(env: Lifecycle) -> None:
    """Answered 200 as an invalid token (RFC 7009 §2.2), nothing revoked; a client that authenticated
    with its secret holding another's token is audited (review 120, finding 3)."""
    owner, owner_secret, org = env.machine("shipping_line")
    other, other_secret, _ = env.machine("shipping_line")
    token = env.machine_token(owner, owner_secret)
    assert _revoke(env, token, other, other_secret).status_code == 200
    assert _verify(env, token)["client_id"] == owner
    console, console_secret, corg = env.console()
    _, refresh = env.grant(console, env.person(corg))
    assert _revoke(env, refresh, other, other_secret).status_code == 200
    assert env.refresh(refresh, console, console_secret).status_code == 200
    assert _refusals(env) == 2


def test_a_stolen_tokens_liveness_cannot_be_probed_as_the_driver_app(env: Lifecycle) -> None:
    """Review 120, finding 3: anyone can call as the driver app (method none). A live token of another
    client, a forged one, a revoked refresh token: the same 200, nothing revoked, no audit row."""
    driver = env.driver_app()
    owner, owner_secret, _ = env.machine("shipping_line")
    live = env.machine_token(owner, owner_secret)
    header, payload, signature = live.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    assert [_revoke(env, t, driver, None).status_code for t in (live, forged)] == [200, 200]
    assert _verify(env, live)["client_id"] == owner
    console, console_secret, corg = env.console()
    _, refresh = env.grant(console, env.person(corg))
    assert _revoke(env, refresh, console, console_secret).status_code == 200  # its own client revokes it
    assert [_revoke(env, refresh, driver, None).status_code for _ in range(5)] == [200] * 5
    live_refresh = env.grant(console, env.person(corg))[1]
    assert _revoke(env, live_refresh, driver, None).status_code == 200
    assert env.refresh(live_refresh, console, console_secret).status_code == 200
    assert _refusals(env) == 0


def test_unknown_tokens_200_unsupported_hints_refused(env: Lifecycle) -> None:
    client_id, secret, _ = env.machine("shipping_line")
    for junk in ("qgr_unknown", "a.b.c", "nonsense"):
        assert _revoke(env, junk, client_id, secret).status_code == 200  # RFC 7009 §2.2
    r = _revoke(env, "whatever", client_id, secret, token_type_hint="id_token")
    assert r.status_code == 400 and r.json()["error"] == "unsupported_token_type"
    missing = env.http.post("/oauth2/revoke", data={}, headers=basic(client_id, secret))
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    anonymous = env.http.post("/oauth2/revoke", data={"token": "x"})
    assert anonymous.status_code in (400, 401) and anonymous.json()["error"] == "invalid_client"
    wrong = env.http.post("/oauth2/revoke", data={"token": "x"}, headers=basic(client_id, "nope"))
    assert wrong.status_code == 401


# ---- review 124, finding 1: a token bound to a DPoP key is revoked only with a proof of that key ----------

def _revoked_reason(env: Lifecycle, gid: Any) -> str | None:
    with env.engine.connect() as conn:
        return conn.execute(sa.select(grants.c.revoked_reason).where(grants.c.id == gid)).scalar()


def test_a_rotated_bound_token_without_its_key_revokes_nothing(env: Lifecycle) -> None:
    """The reviewer's demonstration: the refresh endpoint refuses a copy of the driver's rotated, DPoP-bound
    token without the key (ebddcd9), but the revocation endpoint, called as the public driver app, took
    it and revoked the family (revoked_by_client): the driver's next refresh, with the right key, was
    invalid_grant. Now: 200 (RFC 7009 §2.2, as for an invalid token), nothing revoked, with no proof, a
    proof of another key, or a proof of the right key made for the token endpoint."""
    driver = env.driver_app()
    key = dpop_key()
    gid, first = env.grant(driver, env.person(), scope="openid offline_access", dpop_jkt=thumbprint(key))
    one = env.refresh(first, driver, dpop=dpop_proof(key))
    assert one.status_code == 200, one.text
    assert env.refresh(first, driver).json()["error"] == "invalid_dpop_proof"
    for proof in (None, dpop_proof(dpop_key(), htu=REVOKE_URL), dpop_proof(key)):
        for token in (first, one.json()["refresh_token"]):
            assert _revoke(env, token, driver, None, dpop=proof).status_code == 200
    assert _revoked_reason(env, gid) is None
    two = env.refresh(one.json()["refresh_token"], driver, dpop=dpop_proof(key))
    assert two.status_code == 200, two.text


def test_a_bound_token_is_revoked_with_a_proof_of_its_key_once(env: Lifecycle) -> None:
    """The honest app proves its key (RFC 9449 §4.3: htm POST, htu the revocation endpoint): the family
    goes, its access tokens with it. The proof is used once: copied onto another token of the same key,
    it revokes nothing (§11.1)."""
    driver = env.driver_app()
    key = dpop_key()
    person = env.person()
    gid, token = env.grant(driver, person, scope="openid offline_access", dpop_jkt=thumbprint(key))
    issued = env.refresh(token, driver, dpop=dpop_proof(key)).json()
    proof = dpop_proof(key, htu=REVOKE_URL)
    assert _revoke(env, issued["refresh_token"], driver, None, dpop=proof,
                   token_type_hint="refresh_token").status_code == 200
    assert _revoked_reason(env, gid) == "revoked_by_client"
    assert env.refresh(issued["refresh_token"], driver, dpop=dpop_proof(key)).json()["error"] == "invalid_grant"
    with pytest.raises(InvalidToken, match="revoked"):
        _verify(env, issued["access_token"])
    other, second = env.grant(driver, person, scope="openid offline_access", dpop_jkt=thumbprint(key))
    assert _revoke(env, second, driver, None, dpop=proof).status_code == 200  # the proof replayed
    assert _revoked_reason(env, other) is None


def test_a_bound_access_token_is_revoked_only_with_a_proof_of_its_key(env: Lifecycle) -> None:
    driver = env.driver_app()
    key = dpop_key()
    _, token = env.grant(driver, env.person(), scope="openid offline_access", dpop_jkt=thumbprint(key))
    access = env.refresh(token, driver, dpop=dpop_proof(key)).json()["access_token"]
    assert _verify(env, access)["cnf"] == {"jkt": thumbprint(key)}
    for proof in (None, dpop_proof(dpop_key(), htu=REVOKE_URL)):
        assert _revoke(env, access, driver, None, dpop=proof).status_code == 200
    assert _verify(env, access)["client_id"] == driver  # still live
    assert _revoke(env, access, driver, None, dpop=dpop_proof(key, htu=REVOKE_URL)).status_code == 200
    with pytest.raises(InvalidToken, match="revoked"):
        _verify(env, access)


def test_a_revocation_asked_for_the_epochs_nonce_gives_it_and_goes_through_with_it(
        env: Lifecycle, epochs_as_made: None) -> None:
    """The provider's cache has just begun its dataset (quaygate/dataset.py): the proof of the key, made
    now, could have been used before it. Its claim is refused, and the answer is 400 ``use_dpop_nonce``
    with the nonce in ``DPoP-Nonce`` (RFC 9449 §8), nothing revoked; the app's new proof with that nonce
    revokes the family at once, instead of a 200 that revoked nothing and gave no nonce."""
    driver = env.driver_app()
    key = dpop_key()
    gid, token = env.grant(driver, env.person(), scope="openid offline_access", dpop_jkt=thumbprint(key))
    asked = _revoke(env, token, driver, None, dpop=dpop_proof(key, htu=REVOKE_URL))
    assert asked.status_code == 400 and asked.json()["error"] == "use_dpop_nonce", asked.text
    assert asked.headers["cache-control"] == "no-store"
    nonce = asked.headers["DPoP-Nonce"]
    assert _revoked_reason(env, gid) is None
    again = _revoke(env, token, driver, None, dpop=dpop_proof(key, htu=REVOKE_URL, nonce=nonce + "x"))
    assert again.json()["error"] == "use_dpop_nonce" and again.headers["DPoP-Nonce"] == nonce  # not the epoch's
    done = _revoke(env, token, driver, None, dpop=dpop_proof(key, htu=REVOKE_URL, nonce=nonce))
    assert done.status_code == 200, done.text
    assert _revoked_reason(env, gid) == "revoked_by_client"
    # Another key's proof, or none, is still answered as an invalid token: no nonce, nothing told.
    _, other = env.grant(driver, env.person(), scope="openid offline_access", dpop_jkt=thumbprint(key))
    for proof in (None, dpop_proof(dpop_key(), htu=REVOKE_URL)):
        r = _revoke(env, other, driver, None, dpop=proof)
        assert r.status_code == 200 and "DPoP-Nonce" not in r.headers


def test_an_unbound_token_needs_no_proof_and_a_bad_one_changes_nothing(env: Lifecycle) -> None:
    """The web driver app (/app/) holds Bearer tokens: its logout's revocation sends no proof and works
    as before; a proof of some key (or a malformed one) does not stop it: the token is all its holder needs."""
    driver = env.driver_app()
    for proof in (None, dpop_proof(dpop_key(), htu=REVOKE_URL), "not-a-proof"):
        gid, token = env.grant(driver, env.person(), scope="openid offline_access")
        assert _revoke(env, token, driver, None, dpop=proof).status_code == 200
        assert _revoked_reason(env, gid) == "revoked_by_client"


# ---- the verifier ---------------------------------------------------------------------------------


class _Keys:
    def __init__(self, *keys: Any) -> None:
        self._set = KeySet(list(keys))

    def public_key_set(self, *, refresh: bool = False, kid: str | None = None) -> KeySet:
        return self._set


def _claims(jti: str = "j-1") -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "sub": "c", "aud": "api", "exp": now + 300, "iat": now, "jti": jti, "client_id": "c"}


def _ec(kid: str = "ec-1", curve: str = "P-256") -> ECKey:
    return ECKey.generate_key(curve, parameters={"kid": kid})


def test_verifier_checks_revocation_after_the_signature() -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "k"})
    asked: list[str] = []

    def revoked(claims: dict[str, Any]) -> bool:
        asked.append(claims["jti"])
        return claims["jti"] == "gone"

    verifier = AccessTokenVerifier(_Keys(key), ISSUER, revoked=revoked)
    assert verifier.verify(sign_access_token(_claims("live"), key), audience="api")["jti"] == "live"
    with pytest.raises(InvalidToken, match="revoked"):
        verifier.verify(sign_access_token(_claims("gone"), key), audience="api")
    forged = sign_access_token(_claims("other"), RSAKey.generate_key(2048, parameters={"kid": "k"}))
    with pytest.raises(InvalidToken, match="signature"):
        verifier.verify(forged, audience="api")
    assert asked == ["live", "gone"]  # a forged token never reaches the revocation list


def test_es256_and_ps256_tokens_are_accepted_with_keys_of_their_type() -> None:
    ec, rsa = _ec(), RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    verifier = AccessTokenVerifier(_Keys(ec, rsa), ISSUER)
    assert verifier.verify(sign_access_token(_claims(), ec, alg="ES256"), audience="api")
    assert verifier.verify(sign_access_token(_claims(), rsa, alg="PS256"), audience="api")


def _raw(key: Any, alg: str, kid: str) -> str:
    header = {"alg": alg, "typ": "at+jwt", "kid": kid}
    return jws.serialize_compact(header, json.dumps(_claims()), key, registry=JWSRegistry(algorithms=[alg]))


def test_the_header_cannot_pick_how_our_key_is_used() -> None:
    ec, rsa = _ec(), RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    verifier = AccessTokenVerifier(_Keys(ec, rsa), ISSUER)
    # An RS256 token naming our EC key, and an ES256 token naming our RSA key: refused by key type.
    with pytest.raises(InvalidToken, match="does not fit"):
        verifier.verify(_raw(RSAKey.generate_key(2048), "RS256", "ec-1"), audience="api")
    with pytest.raises(InvalidToken, match="does not fit"):
        verifier.verify(_raw(_ec(), "ES256", "rsa-1"), audience="api")
    # A P-384 key is not an ES256 key.
    p384 = _ec("ec-384", "P-384")
    with pytest.raises(InvalidToken, match="does not fit"):
        AccessTokenVerifier(_Keys(p384), ISSUER).verify(_raw(_ec(), "ES256", "ec-384"), audience="api")
    # A key that names its algorithm is used for that algorithm only.
    pinned = RSAKey.generate_key(2048, parameters={"kid": "pinned", "alg": "RS256"})
    with pytest.raises(InvalidToken, match="does not fit"):
        same = RSAKey.import_key({k: v for k, v in pinned.as_dict(private=True).items() if k != "alg"})
        AccessTokenVerifier(_Keys(pinned), ISSUER).verify(_raw(same, "PS256", "pinned"), audience="api")


def test_sign_access_token_refuses_a_key_of_the_wrong_type() -> None:
    with pytest.raises(ValueError):
        sign_access_token(_claims(), _ec(), alg="RS256")
    with pytest.raises(ValueError):
        AccessTokenVerifier(_Keys(), ISSUER, algorithms=["ES384"])

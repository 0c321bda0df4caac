"""The brokered login's pure rules (identity.domain.broker), its configuration, its JOSE edge and our
encryption keys' rotation, without an upstream."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from joserfc import jwe, jws
from joserfc.jwe import JWERegistry
from joserfc.jwk import OctKey, RSAKey
from joserfc.jws import JWSRegistry

from identity.api.routes import metadata
from identity.broker import config
from identity.broker.jose import client_assertion, open_nested, request_object
from identity.broker.keys import EncryptionKeys
from identity.domain import assurance
from identity.domain import broker as rules
from identity.domain.assurance import ACR_FACE, ACR_PASSKEY, ACR_UPSTREAM
from identity.domain.broker import BrokerRefused, LinkAction, PasskeyProof, Refusal
from quaygate.crypto import DataCipher
from quaygate.schema import encryption_keys
from quaygate.settings import Settings

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ISS = "https://idp.example/v2"


def _claims(**changes: Any) -> dict[str, Any]:
    stamp = int(NOW.timestamp())
    base = {"iss": ISS, "aud": "qg", "sub": "s-1", "exp": stamp + 600, "iat": stamp, "nonce": "n-1",
            "acr": rules.ITSME_ACR_ADVANCED, "amr": ["pin", "made-up"]}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def _refusal(fn: Any, *args: Any, **kwargs: Any) -> tuple[Refusal, str]:
    with pytest.raises(BrokerRefused) as caught:
        fn(*args, **kwargs)
    return caught.value.code, caught.value.detail


def _check(**changes: Any) -> rules.IdClaims:
    return rules.check_id_token(_claims(**changes), issuer=ISS, client_id="qg", nonce="n-1", now=NOW)


@pytest.mark.parametrize(("changes", "detail"), [
    ({"exp": 10**400}, "exp"), ({"exp": -(10**400)}, "exp"), ({"exp": 2**63}, "exp"),
    ({"iat": -(10**400)}, "iat"), ({"iat": 10**400}, "iat"), ({"exp": float("nan")}, "exp"),
])
def test_a_time_no_calendar_holds_is_refused_not_an_overflow(changes: dict[str, Any], detail: str) -> None:
    """``exp + leeway`` with an exp of 10**400 overflowed converting to float: an OverflowError from the
    upstream's signed id token, where a refusal belongs."""
    assert _refusal(_check, **changes) == (Refusal.CLAIMS_INVALID, detail)


def test_a_good_id_token_passes_and_keeps_sub_acr_amr() -> None:
    got = _check()
    assert (got.sub, got.acr, got.amr) == ("s-1", rules.ITSME_ACR_ADVANCED, ("pin", "made-up"))
    assert _check(aud=["qg", "other"], azp="qg").sub == "s-1"


@pytest.mark.parametrize(("changes", "code", "detail"), [
    ({"iss": "https://evil.example"}, Refusal.CLAIMS_INVALID, "iss"),
    ({"iss": None}, Refusal.CLAIMS_INVALID, "iss"),
    ({"aud": "other"}, Refusal.CLAIMS_INVALID, "aud"),
    ({"aud": None}, Refusal.CLAIMS_INVALID, "aud"),
    ({"aud": ["qg", "other"]}, Refusal.CLAIMS_INVALID, "azp"),
    ({"aud": ["qg", "other"], "azp": "other"}, Refusal.CLAIMS_INVALID, "azp"),
    ({"exp": int(NOW.timestamp()) - 31}, Refusal.CLAIMS_INVALID, "exp"),
    ({"exp": None}, Refusal.CLAIMS_INVALID, "exp"),
    ({"exp": True}, Refusal.CLAIMS_INVALID, "exp"),
    ({"iat": int(NOW.timestamp()) + 61}, Refusal.CLAIMS_INVALID, "iat"),
    ({"nonce": "n-2"}, Refusal.NONCE_MISMATCH, "nonce"),
    ({"nonce": None}, Refusal.NONCE_MISMATCH, "nonce"),
    ({"sub": ""}, Refusal.CLAIMS_INVALID, "sub"),
    ({"sub": 7}, Refusal.CLAIMS_INVALID, "sub"),
])
def test_each_id_token_guard_refuses_with_its_reason(changes: dict[str, Any], code: Refusal, detail: str) -> None:
    assert _refusal(_check, **changes) == (code, detail)


STARTED = NOW - timedelta(minutes=2)  # the flow's start: the login at the upstream took these two minutes


@pytest.mark.parametrize(("auth_time", "detail"), [
    (None, "auth_time missing"),  # what check_id_token makes of an absent, non-integer or boolean auth_time
    (int(STARTED.timestamp()) - 61, "auth_time before the flow's start"),
    (int(STARTED.timestamp()) - 3600, "auth_time before the flow's start"),
    (int(NOW.timestamp()) + 61, "auth_time in the future"),
])
def test_a_login_not_made_in_this_flow_is_refused(auth_time: int | None, detail: str) -> None:
    """Review 157, finding 1: every flow asks for a new login (prompt=login, max_age=0); an answer the
    upstream gave from an older session of its own is no login of ours."""
    assert _refusal(rules.login_time, auth_time, started=STARTED, now=NOW) == (Refusal.LOGIN_NOT_FRESH, detail)


def test_the_login_time_is_the_upstreams_within_the_skew() -> None:
    at = int(STARTED.timestamp()) + 30
    assert rules.login_time(at, started=STARTED, now=NOW) == datetime.fromtimestamp(at, UTC)
    assert rules.login_time(int(NOW.timestamp()) + 60, started=STARTED, now=NOW) == NOW  # never later than now


@pytest.mark.parametrize("early", [1, 5, 60])
def test_a_login_the_upstream_dates_before_the_flow_is_taken_at_the_flows_start(early: int) -> None:
    """Review 161, finding 1: the flow demanded a new login (prompt=login, max_age=0) and an auth_time at
    most the skew before its start is taken for it (an upstream clock behind ours): the login happened
    after the start, so the login time is no earlier. Before, it was the upstream's whole second, before
    our provider's authorization request that sent the person to log in, which took the new login for an
    old one (prompt=login, max_age) and sent him back to the login page for ever."""
    started = STARTED + timedelta(milliseconds=700)  # the flow's start, with its fraction of a second
    auth_time = int(started.timestamp()) - early + 1  # 1: the same whole second, no skew at all
    assert rules.login_time(auth_time, started=started, now=NOW) == started
    assert rules.login_time(auth_time, started=started, now=started) == started


@pytest.mark.parametrize("value", ["1700000000", 1.7e9, True, None])
def test_an_auth_time_that_is_not_an_integer_is_taken_for_none(value: Any) -> None:
    assert _check(auth_time=value).auth_time is None
    assert _check(auth_time=int(NOW.timestamp()) - 5).auth_time == int(NOW.timestamp()) - 5


def test_userinfo_must_be_about_the_same_sub() -> None:
    rules.check_userinfo({"sub": "s-1"}, sub="s-1")
    assert _refusal(rules.check_userinfo, {"sub": "s-2"}, sub="s-1")[0] is Refusal.USERINFO_SUB_MISMATCH
    assert _refusal(rules.check_userinfo, {}, sub="s-1")[0] is Refusal.USERINFO_SUB_MISMATCH


def test_itsme_levels_map_to_our_acr_and_amr() -> None:
    acr, amr = rules.our_assurance(rules.ITSME_ACR_ADVANCED, ["pin", "made-up"], required="advanced")
    assert acr == ACR_UPSTREAM and amr == ("fed", "pin", "mfa")
    assert rules.our_assurance(rules.ITSME_ACR_BASIC, [], required="basic") == (rules.ACR_UPSTREAM_BASIC, ("fed",))
    assert rules.our_assurance(rules.ITSME_ACR_ADVANCED, ["mfa"], required="basic")[0] == ACR_UPSTREAM
    for acr_value, required in ((rules.ITSME_ACR_BASIC, "advanced"), (None, "basic"), ("urn:other", "basic")):
        assert _refusal(rules.our_assurance, acr_value, [], required=required)[0] is Refusal.ACR_INSUFFICIENT


def test_a_login_reaches_the_upstream_level_only_through_an_upstream_at_level_advanced() -> None:
    """Review 164, finding 1: passkeys always; urn:quaygate:acr:upstream only with an upstream configured at
    level advanced (itsme at basic gives urn:quaygate:acr:upstream:basic, which meets no level); face never."""
    assert rules.level_acr("advanced") == ACR_UPSTREAM and rules.level_acr("basic") == rules.ACR_UPSTREAM_BASIC
    assert assurance.login_acrs() == {ACR_PASSKEY}
    assert assurance.login_acrs([rules.ACR_UPSTREAM_BASIC, ACR_FACE, "urn:other"]) == {ACR_PASSKEY}
    assert assurance.login_acrs([ACR_UPSTREAM]) == {ACR_PASSKEY, ACR_UPSTREAM}

    def reached(upstreams: dict[str, dict[str, str]]) -> frozenset[str]:
        return config.login_acrs(Settings(upstreams=upstreams))

    def itsme(**entry: str) -> dict[str, str]:
        return {"discovery_url": ISS + config.WELL_KNOWN, "client_id": "qg", **entry}

    assert reached({}) == {ACR_PASSKEY}
    assert reached({"itsme": itsme(level="basic")}) == {ACR_PASSKEY}
    assert reached({"itsme": itsme()}) == reached({"itsme": itsme(level="advanced")}) == {ACR_PASSKEY, ACR_UPSTREAM}
    assert reached({"itsme": itsme(level="basic"), "itsme-adv": itsme(level="advanced")}) == {ACR_PASSKEY, ACR_UPSTREAM}
    # A configuration the broker refuses to load logs nobody in through an upstream.
    assert reached({"itsme": itsme(level="highest")}) == {ACR_PASSKEY}
    # Discovery says the same: the levels a client may ask for here, face by a step-up over one.
    assert metadata(Settings())["acr_values_supported"] == [ACR_PASSKEY, ACR_FACE]
    assert metadata(Settings(upstreams={"itsme": itsme(level="basic")}))["acr_values_supported"] == [
        ACR_PASSKEY, ACR_FACE]
    assert metadata(Settings(upstreams={"itsme": itsme()}))["acr_values_supported"] == [
        ACR_PASSKEY, ACR_UPSTREAM, ACR_FACE]


def test_the_national_number_comes_from_userinfo_without_separators() -> None:
    assert rules.national_number({rules.NATIONAL_NUMBER_CLAIM: "85.07.31-001.30"}, {}) == "85073100130"
    assert rules.national_number({}, {rules.NATIONAL_NUMBER_CLAIM: "85073100130"}) == "85073100130"
    assert _refusal(rules.national_number, {rules.NATIONAL_NUMBER_CLAIM: 85073100130}, {})[0] is \
        Refusal.NATIONAL_NUMBER_INVALID


def test_the_link_decision_table() -> None:
    fresh = PasskeyProof("p-1", ACR_PASSKEY, NOW - timedelta(minutes=9))
    decide = rules.link_decision
    assert decide(linked_person="p-1", hashed_person="p-1", person_linked_sub="s", proof=None, now=NOW) == \
        (LinkAction.LOGIN, "p-1")
    assert decide(linked_person=None, hashed_person="p-1", person_linked_sub=None, proof=None, now=NOW) == \
        (LinkAction.LINK, "p-1")
    assert decide(linked_person=None, hashed_person="p-1", person_linked_sub="old", proof=fresh, now=NOW) == \
        (LinkAction.REBIND, "p-1")
    refused = [
        ({"linked_person": "p-1", "hashed_person": "p-2", "person_linked_sub": None, "proof": None},
         Refusal.IDENTITY_MISMATCH),
        ({"linked_person": "p-1", "hashed_person": None, "person_linked_sub": None, "proof": None},
         Refusal.IDENTITY_MISMATCH),
        ({"linked_person": None, "hashed_person": None, "person_linked_sub": None, "proof": fresh},
         Refusal.PERSON_NOT_REGISTERED),
        ({"linked_person": None, "hashed_person": "p-1", "person_linked_sub": "old", "proof": None},
         Refusal.REBIND_REQUIRED),
        ({"linked_person": None, "hashed_person": "p-1", "person_linked_sub": "old",
          "proof": PasskeyProof("p-2", ACR_PASSKEY, NOW)}, Refusal.REBIND_REQUIRED),
        ({"linked_person": None, "hashed_person": "p-1", "person_linked_sub": "old",
          "proof": PasskeyProof("p-1", ACR_UPSTREAM, NOW)}, Refusal.REBIND_REQUIRED),
        ({"linked_person": None, "hashed_person": "p-1", "person_linked_sub": "old",
          "proof": PasskeyProof("p-1", ACR_PASSKEY, NOW - timedelta(minutes=11))}, Refusal.REBIND_REQUIRED),
    ]
    for kwargs, code in refused:
        assert _refusal(decide, now=NOW, **kwargs)[0] is code, kwargs


# ---- configuration ---------------------------------------------------------------------------------


def test_the_configuration_is_checked() -> None:
    loaded = config.load({"itsme": {"discovery_url": ISS + config.WELL_KNOWN, "client_id": "qg"}})
    up = loaded["itsme"]
    assert (up.issuer, up.level, up.request_object) == (ISS, "advanced", "signed_encrypted")
    assert up.require_encryption
    assert up.claims_request()["id_token"]["acr"] == {"essential": True, "values": [rules.ITSME_ACR_ADVANCED]}
    assert up.claims_request()["id_token"]["auth_time"] == {"essential": True}
    for bad in ({"Bad Name": {"discovery_url": ISS + config.WELL_KNOWN, "client_id": "qg"}},
                {"itsme": {"discovery_url": "ftp://x", "client_id": "qg"}},
                {"itsme": {"discovery_url": ISS + config.WELL_KNOWN, "client_id": ""}},
                {"itsme": {"discovery_url": ISS + config.WELL_KNOWN, "client_id": "qg", "level": "low"}},
                {"itsme": {"discovery_url": ISS + config.WELL_KNOWN, "client_id": "qg", "request_object": "x"}},
                {"itsme": {"discovery_url": "https://idp.example/metadata", "client_id": "qg"}}):
        with pytest.raises(config.UpstreamConfigError):
            config.load(bad)


# ---- JOSE ------------------------------------------------------------------------------------------

_JWE = JWERegistry(algorithms=["RSA-OAEP-256", "RSA-OAEP", "A128CBC-HS256", "A256GCM", "A128GCM"])
_JWS = JWSRegistry(algorithms=["RS256", "HS256", "PS256"])


def _rsa(use: str) -> RSAKey:
    key = RSAKey.generate_key(2048, parameters={"use": use})
    key.ensure_kid()
    return key


UPSTREAM, OURS = _rsa("sig"), _rsa("enc")


def _nested(claims: dict[str, Any], *, alg: str = "RSA-OAEP-256", enc: str = "A128CBC-HS256",
            extra: dict[str, Any] | None = None) -> str:
    signed = jws.serialize_compact({"alg": "RS256", "kid": UPSTREAM.kid}, json.dumps(claims), UPSTREAM, registry=_JWS)
    return jwe.encrypt_compact({"alg": alg, "enc": enc, "kid": OURS.kid, "cty": "JWT", **(extra or {})}, signed, OURS,
                               registry=_JWE)


def _open(compact: str, *, require: bool = True) -> dict[str, Any]:
    return open_nested(compact, decryption_key=lambda kid: OURS if kid == OURS.kid else None,
                       upstream_key=lambda kid: UPSTREAM if kid == UPSTREAM.kid else None, require_encryption=require)


def test_a_signed_then_encrypted_token_opens_with_either_enc() -> None:
    assert _open(_nested({"sub": "a"}))["sub"] == "a"
    assert _open(_nested({"sub": "a"}, enc="A256GCM"))["sub"] == "a"


def test_the_jose_guards() -> None:
    signed = jws.serialize_compact({"alg": "RS256", "kid": UPSTREAM.kid}, '{"sub":"a"}', UPSTREAM, registry=_JWS)
    assert _open(signed, require=False)["sub"] == "a"
    cases = [
        (signed, Refusal.NOT_ENCRYPTED),
        (_nested({"sub": "a"}, alg="RSA-OAEP"), Refusal.ENCRYPTION_INVALID),
        (_nested({"sub": "a"}, enc="A128GCM"), Refusal.ENCRYPTION_INVALID),
        (_nested({"sub": "a"}, extra={"cty": "json"}), Refusal.ENCRYPTION_INVALID),
        ("a.b.c.d", Refusal.ENCRYPTION_INVALID),
        # HS256 with the upstream's public key as the secret: the classic algorithm confusion.
        (jwe.encrypt_compact({"alg": "RSA-OAEP-256", "enc": "A128CBC-HS256", "kid": OURS.kid},
                             jws.serialize_compact({"alg": "HS256", "kid": UPSTREAM.kid}, "{}",
                                                   OctKey.import_key(b"x" * 32), registry=_JWS),
                             OURS, registry=_JWE), Refusal.SIGNATURE_INVALID),
    ]
    for compact, code in cases:
        assert _refusal(_open, compact)[0] is code, code
    tampered = _nested({"sub": "a"})
    parts = tampered.split(".")
    parts[3] = parts[3][:-4] + ("AAAA" if parts[3][-4:] != "AAAA" else "BBBB")
    assert _refusal(_open, ".".join(parts))[0] is Refusal.ENCRYPTION_INVALID  # the AEAD tag no longer holds


def test_client_assertion_and_request_object() -> None:
    ours = _rsa("sig")
    assertion = client_assertion(ours, client_id="qg", token_endpoint=ISS + "/token", now=NOW)
    claims = json.loads(jws.deserialize_compact(assertion, ours, registry=_JWS).payload)
    assert (claims["iss"], claims["sub"], claims["aud"]) == ("qg", "qg", ISS + "/token")
    assert claims["exp"] - claims["iat"] == 60
    second = json.loads(jws.deserialize_compact(client_assertion(ours, client_id="qg", token_endpoint="t", now=NOW),
                                                ours, registry=_JWS).payload)
    assert second["jti"] != claims["jti"]
    upstream_enc = _rsa("enc")
    request = request_object({"state": "s"}, key=ours, client_id="qg", audience=ISS, now=NOW, encrypt_to=upstream_enc)
    inner = jwe.decrypt_compact(request, upstream_enc, registry=_JWE).plaintext.decode()
    body = json.loads(jws.deserialize_compact(inner, ours, registry=_JWS).payload)
    assert (body["state"], body["iss"], body["aud"]) == ("s", "qg", ISS)


# ---- our encryption keys ---------------------------------------------------------------------------


def test_a_rotated_encryption_key_stays_published_and_decrypts_until_the_overlap_ends(engine: sa.Engine) -> None:
    keys = EncryptionKeys(engine, DataCipher(b"\x02" * 32), overlap=timedelta(hours=1), key_size=2048)
    first = keys.ensure_active(NOW)
    assert keys.ensure_active(NOW) == first
    second = keys.rotate(NOW)
    published = {k["kid"]: k for k in keys.public_jwks(NOW)}
    assert set(published) == {first, second}
    assert all(k["use"] == "enc" and k["alg"] == "RSA-OAEP-256" and "d" not in k for k in published.values())
    assert keys.private_key(first, NOW + timedelta(minutes=59)) is not None  # an upstream's cached JWKS
    assert keys.private_key(first, NOW + timedelta(minutes=61)) is None
    assert {k["kid"] for k in keys.public_jwks(NOW + timedelta(minutes=61))} == {second}
    assert keys.private_key("made-up", NOW) is None
    keys.rotate(NOW + timedelta(hours=2))
    with engine.connect() as conn:
        status = dict(conn.execute(sa.select(encryption_keys.c.kid, encryption_keys.c.status)).all())
    assert status[first] == "retired" and status[second] == "retiring"
    with engine.connect() as conn:  # sealed at rest
        sealed = conn.execute(sa.select(encryption_keys.c.private_enc).where(encryption_keys.c.kid == second)).scalar()
    assert '"d"' not in sealed


def test_the_database_refuses_a_second_active_encryption_key(engine: sa.Engine) -> None:
    keys = EncryptionKeys(engine, DataCipher(b"\x02" * 32), overlap=timedelta(hours=1))
    kid = keys.ensure_active(NOW)
    with engine.connect() as conn:
        row = conn.execute(sa.select(encryption_keys).where(encryption_keys.c.kid == kid)).one()
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(encryption_keys.insert().values(**{**row._asdict(), "kid": "twin"}))


@pytest.mark.parametrize("commit_before", [1, 2, 3])
def test_a_racing_first_login_committed_between_any_two_reads_is_never_taken_for_a_changed_sub(
        pg_engine: sa.Engine, commit_before: int) -> None:
    """The other browser's first login of the same person commits its link just before this login's
    n-th statement: this one logs in through that link or loses the insert (and is judged again), but
    is never refused as a changed sub (rebind_required)."""
    import uuid

    from identity.broker.linking import resolve
    from quaygate.schema import persons, upstream_links

    person = uuid.uuid4()
    with pg_engine.begin() as conn:
        conn.execute(persons.insert().values(id=person, given_name="Jan", family_name="Peeters",
                                             national_id_hash="h" * 64, created_at=NOW))
    seen = {"n": 0}

    def other_login_commits(*_: Any) -> None:
        seen["n"] += 1
        if seen["n"] == commit_before:
            with pg_engine.begin() as other:
                other.execute(upstream_links.insert().values(
                    id=uuid.uuid4(), issuer="https://up", sub="jan", person_id=person, status="active",
                    created_at=NOW, last_login_at=NOW))

    with pg_engine.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", other_login_commits)
        try:
            with conn.begin():
                action, who, _ = resolve(conn, issuer="https://up", sub="jan", national_id_hash="h" * 64,
                                         proof=None, now=NOW)
            assert (action, who) == (LinkAction.LOGIN, person)
        except sa.exc.IntegrityError:
            assert commit_before == 3  # both saw no link; the insert loses and the service judges again
        finally:
            sa.event.remove(conn, "before_cursor_execute", other_login_commits)

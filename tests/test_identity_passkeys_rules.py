"""The pure rules behind passkeys: counter, user handle, relying party, return_to, names, code format."""

from __future__ import annotations

import uuid

import pytest

from identity.authn import enrolment, passkeys
from identity.authn.service import PasskeyError, clean_name, safe_return_to


@pytest.mark.parametrize(
    ("stored", "presented", "regressed"),
    [(0, 0, False), (0, 1, False), (5, 6, False), (5, 5, True), (5, 4, True), (5, 0, True), (0, 0, False)],
)
def test_sign_count_regression(stored: int, presented: int, regressed: bool) -> None:
    assert passkeys.sign_count_regressed(stored, presented) is regressed


def test_user_handle_match_needs_the_exact_handle() -> None:
    handle = passkeys.user_handle(uuid.uuid4(), b"pepper")
    assert passkeys.user_handle_matches(handle, handle)
    assert not passkeys.user_handle_matches(None, handle)
    assert not passkeys.user_handle_matches(handle[:-1], handle)
    assert not passkeys.user_handle_matches(b"", handle)
    # The pepper keys it: another deployment gives another handle for the same person.
    pid = uuid.uuid4()
    assert passkeys.user_handle(pid, b"a") != passkeys.user_handle(pid, b"b")


def test_relying_party_defaults_to_the_issuer_and_adds_android_origins() -> None:
    rp = passkeys.relying_party(issuer="https://id.quaygate.eu/", rp_id=None, name="quaygate", origins=[],
                                android_origins=["android:apk-key-hash:abc"])
    assert rp.rp_id == "id.quaygate.eu"
    assert rp.origins == ("https://id.quaygate.eu", "android:apk-key-hash:abc")
    rp = passkeys.relying_party(issuer="https://id.quaygate.eu", rp_id="quaygate.eu", name="q",
                                origins=["https://app.quaygate.eu"], android_origins=[])
    assert rp.rp_id == "quaygate.eu" and rp.origins == ("https://app.quaygate.eu",)


def test_malformed_credentials_are_refused_with_our_reason() -> None:
    rp = passkeys.relying_party(issuer="http://127.0.0.1:8000", rp_id=None, name="q", origins=[], android_origins=[])
    for bad in (None, "x", {}, {"response": "x"}, {"id": "a", "rawId": "b", "response": {}},
                {"id": "a", "rawId": "a", "response": {"userHandle": 5}}):
        with pytest.raises(passkeys.CeremonyRefused) as err:
            passkeys.read_assertion(bad)
        assert err.value.reason == "passkey_invalid"
    with pytest.raises(passkeys.CeremonyRefused):
        passkeys.verify_registration(rp, credential={"id": "a", "rawId": "a", "response": {"attestationObject": "!"}},
                                     challenge=b"c")
    with pytest.raises(passkeys.CeremonyRefused):
        passkeys.verify_assertion(rp, credential={"id": "a", "rawId": "a", "type": "public-key", "response": {
            "clientDataJSON": "e30", "authenticatorData": "AA", "signature": "AA"}}, challenge=b"c", public_key=b"")
    with pytest.raises(passkeys.CeremonyRefused):
        passkeys.read_assertion({"id": "a", "rawId": "a", "response": {"x": "y" * 70_000}})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/oauth2/authorize?client_id=x&state=y", "/oauth2/authorize?client_id=x&state=y"),
        ("/app/", "/app/"),
        ("/app/pickups/42", "/app/pickups/42"),
        ("/account", "/account"),
        ("/account/passkeys", "/account/passkeys"),
        (None, "/app/"),
        ("", "/app/"),
        (42, "/app/"),
        ("https://evil.example/app/", "/app/"),
        ("//evil.example/app/", "/app/"),
        ("/\\evil.example", "/app/"),
        ("\\\\evil.example", "/app/"),
        ("/app/../admin", "/app/"),
        ("/app/%2e%2e/admin", "/app/"),
        ("/oauth2/\nx", "/app/"),
        ("/accounts", "/app/"),
        ("/account.evil", "/app/"),
        ("/admin/v1/x", "/app/"),
        ("javascript:alert(1)", "/app/"),
        ("/" + "a" * 2001, "/app/"),
    ],
)
def test_return_to_stays_on_our_own_pages(value: object, expected: str) -> None:
    assert safe_return_to(value) == expected


def test_passkey_names_are_cleaned_and_bounded() -> None:
    assert clean_name("  Work\tphone \n") == "Work phone"
    assert clean_name(None, default="Passkey") == "Passkey"
    assert clean_name("x" * 100) == "x" * 100
    for bad in ("", "   ", "\x00", "x" * 101, 5, None):
        with pytest.raises(PasskeyError) as err:
            clean_name(bad)
        assert err.value.code == "invalid_name"


def test_enrolment_codes_read_aloud_and_typed_loosely() -> None:
    code = enrolment._new_code()
    assert len(code) == 19 and code.count("-") == 3
    assert set(code.replace("-", "")) <= set(enrolment.ALPHABET)
    assert enrolment.code_hash(code) == enrolment.code_hash(" " + code.lower().replace("-", " ") + " ")
    assert enrolment.normalise("oil0-1") == "0110" + "1"
    assert len({enrolment._new_code() for _ in range(1000)}) == 1000

"""The pure identity core: roles, scopes, claims; and client secret hashing."""

from __future__ import annotations

import uuid

import pytest

from identity.clients import hash_secret, verify_secret
from identity.domain import claims as c
from identity.domain import scopes
from identity.domain.roles import (
    MACHINE_ROLES,
    ORG_KINDS,
    ORG_KINDS_BY_ROLE,
    AuthMethod,
    ClientRole,
    RegistrationRefused,
    check_registration,
    grant_types_for,
)
from release_service.domain.parties import OrgKind


def test_org_kinds_mirror_the_release_service() -> None:
    assert ORG_KINDS == {k.value for k in OrgKind}


def test_every_role_has_rules_and_scopes_inside_the_known_set() -> None:
    assert set(ORG_KINDS_BY_ROLE) == set(ClientRole) == set(scopes.SCOPES_BY_ROLE)
    for role in ClientRole:
        assert scopes.SCOPES_BY_ROLE[role] <= scopes.ALL_SCOPES
    assert scopes.SCOPES_BY_ROLE[ClientRole.TERMINAL_GATE] == {"gate:verify"}
    assert "admin" in scopes.SCOPES_BY_ROLE[ClientRole.ADMIN]
    # The admin console (issue 4) too: the admin API honours its tokens only for a person holding an
    # admin role who logged in with a passkey (identity.api.admin.admin_caller).
    admins = {ClientRole.ADMIN, ClientRole.ADMIN_CONSOLE}
    assert not any("admin" in scopes.SCOPES_BY_ROLE[r] for r in ClientRole if r not in admins)
    assert grant_types_for(ClientRole.SHIPPING_LINE) == ("client_credentials",)
    assert ClientRole.DRIVER_APP not in MACHINE_ROLES


def _check(role: ClientRole, kind: str | None, **kw: object) -> str | None:
    args: dict[str, object] = {
        "org_terminal_code": None,
        "terminal_code": None,
        "auth_method": AuthMethod.CLIENT_SECRET_BASIC,
        "has_jwks": False,
    }
    args.update(kw)
    return check_registration(role, org_kind=kind, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("role", "kind", "kw", "code"),
    [
        (ClientRole.TERMINAL_GATE, "transport_operator", {}, "role_org_kind_mismatch"),
        (ClientRole.ADMIN, "shipping_line", {}, "role_org_kind_mismatch"),
        (ClientRole.SHIPPING_LINE, None, {}, "role_org_kind_mismatch"),
        (
            ClientRole.SHIPPING_LINE,
            "shipping_line",
            {"auth_method": AuthMethod.NONE},
            "confidential_client_method",
        ),
        (ClientRole.DRIVER_APP, None, {}, "public_client_method"),
        (ClientRole.CUSTOMS, "customs", {"auth_method": AuthMethod.PRIVATE_KEY_JWT}, "jwks_required"),
        (ClientRole.CUSTOMS, "customs", {"terminal_code": "X"}, "terminal_not_allowed"),
        (ClientRole.TERMINAL_GATE, "terminal", {}, "terminal_required"),
        (
            ClientRole.TERMINAL_GATE,
            "terminal",
            {"org_terminal_code": "BEANR-A", "terminal_code": "BEANR-B"},
            "terminal_mismatch",
        ),
        # A code no port can be read from, named for an organisation without one (review 123: port-limited
        # bans are screened by it).
        (ClientRole.TERMINAL_GATE, "terminal", {"terminal_code": "K1700"}, "invalid_terminal_code"),
    ],
)
def test_registration_rules(role: ClientRole, kind: str | None, kw: dict[str, object], code: str) -> None:
    with pytest.raises(RegistrationRefused) as exc:
        _check(role, kind, **kw)
    assert exc.value.code == code


def test_registration_binds_terminal_clients_to_the_organisations_terminal() -> None:
    assert _check(ClientRole.TERMINAL_GATE, "terminal", org_terminal_code="BEANR-K1700") == "BEANR-K1700"
    # An organisation's code from before the shape rule still serves its clients (screened fail-closed).
    assert _check(ClientRole.TERMINAL_GATE, "terminal", org_terminal_code="PSA-K1700") == "PSA-K1700"
    assert _check(ClientRole.SHIPPING_LINE, "shipping_line") is None
    assert _check(ClientRole.DRIVER_APP, None, auth_method=AuthMethod.NONE) is None


def test_scope_grant() -> None:
    registered = ("releases:read", "releases:write")
    assert scopes.grant(None, registered) == "releases:read releases:write"  # RFC 6749 §3.3 default
    assert scopes.grant("releases:read", registered) == "releases:read"
    assert scopes.grant("releases:read  releases:read", registered) == "releases:read"
    with pytest.raises(scopes.ScopeRefused):
        scopes.grant("releases:read admin", registered)
    with pytest.raises(scopes.ScopeRefused):
        scopes.registrable(ClientRole.TERMINAL_GATE, ["releases:write"])
    assert scopes.registrable(ClientRole.CUSTOMS, None) == ("releases:read", "releases:write")


def test_access_token_claims() -> None:
    org = str(uuid.uuid4())
    gate = c.access_token_claims(
        issuer="https://id",
        client_id="qg-g",
        role=ClientRole.TERMINAL_GATE,
        organisation_id=org,
        org_kind="terminal",
        terminal_code="T1",
        scope="gate:verify",
        audiences=c.audiences_for(ClientRole.TERMINAL_GATE, api_audience="api", gate_audience="gate"),
        now=1000,
        ttl=600,
        jti="j",
    )
    assert gate == {
        "iss": "https://id",
        "sub": "qg-g",
        "aud": ["api", "gate"],
        "exp": 1600,
        "iat": 1000,
        "nbf": 1000,
        "jti": "j",
        "client_id": "qg-g",
        "scope": "gate:verify",
        "role": "terminal_gate",
        "org": org,
        "org_kind": "terminal",
        "terminal": "T1",
    }
    line = c.access_token_claims(
        issuer="https://id",
        client_id="qg-l",
        role=ClientRole.SHIPPING_LINE,
        organisation_id=None,
        org_kind=None,
        terminal_code="T1",
        scope="",
        audiences=["api"],
        now=1000,
        ttl=600,
        jti="j",
    )
    assert line["aud"] == "api" and "terminal" not in line and "org" not in line
    identity = c.TokenIdentity.from_claims(gate)
    assert (
        identity.terminal_code == "T1"
        and identity.scopes == {"gate:verify"}
        and identity.organisation_id == org
    )


def test_claims_map_to_the_release_service_actor() -> None:
    from release_service.api.auth import actor_from_claims

    org = uuid.uuid4()
    actor = actor_from_claims(
        {
            "client_id": "qg-g",
            "sub": "qg-g",
            "org": str(org),
            "org_kind": "terminal",
            "role": "terminal_gate",
            "terminal": "T1",
            "scope": "gate:verify",
        }
    )
    assert actor.organisation_id == org and actor.kind is OrgKind.TERMINAL and actor.terminal_code == "T1"
    assert actor.scopes == {"gate:verify"} and "terminal_gate" in actor.roles


def test_client_secrets_are_salted_slow_hashes(production_costs: None) -> None:
    encoded = hash_secret("s3cret")
    assert encoded.startswith("scrypt$16384$8$1$") and "s3cret" not in encoded  # RFC 7914's interactive cost
    assert encoded != hash_secret("s3cret")  # salted
    assert verify_secret("s3cret", encoded)
    assert not verify_secret("s3cret!", encoded)
    assert not verify_secret("", encoded)
    assert not verify_secret("s3cret", None)
    assert not verify_secret("s3cret", "plain$s3cret")
    assert not verify_secret("s3cret", "scrypt$x$8$1$AA$AA")


def test_a_secret_is_checked_at_the_cost_its_hash_records(production_costs: None) -> None:
    """Tests hash their clients' secrets cheaply (tests/conftest.py); a server checks them all the same,
    for the cost travels in the hash, and a hash altered to claim another cost does not match."""
    cheap = "scrypt$16$8$1$" + hash_secret("s3cret").split("$", 4)[4]
    assert not verify_secret("s3cret", cheap)  # the same salt and digest at another cost
    from identity import clients

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clients, "_SCRYPT", {"n": 16, "r": 8, "p": 1})
        encoded = hash_secret("s3cret")
    assert encoded.startswith("scrypt$16$8$1$") and verify_secret("s3cret", encoded)
    assert not verify_secret("s3cret!", encoded)


def test_keys_made_in_tests_are_real_and_distinct_within_a_test() -> None:
    """tests/conftest.py hands out RSA keys made once per process: each is a real pair of the size asked,
    with the parameters asked, and no test gets one key twice."""
    from joserfc.jwk import RSAKey

    first = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)
    second = RSAKey.generate_key(2048, parameters={"use": "enc", "alg": "RSA-OAEP-256"})
    public = RSAKey.generate_key(2048, private=False)
    assert first.get("alg") == "RS256" and first.get("use") == "sig" and first.kid
    assert second.get("alg") == "RSA-OAEP-256" and second.is_private and not public.is_private
    moduli = {k.as_dict(private=False)["n"] for k in (first, second, public)}
    assert len(moduli) == 3
    assert first.private_key.key_size == 2048  # type: ignore[union-attr]


def test_the_rsa_keys_we_check_signatures_with() -> None:
    """identity.domain.rsa_keys (review 129, finding 3): 2048 to 4096 bits, the exponent 65537."""
    import base64

    from identity.domain.rsa_keys import EXPONENT, MALFORMED, TOO_LARGE, WEAK, rsa_key_refusal

    def b64(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes(-(-value.bit_length() // 8), "big")).decode().rstrip("=")

    def n(bits: int) -> str:
        return b64((1 << (bits - 1)) | 1)

    f4 = b64(65537)
    assert f4 == "AQAB"
    assert rsa_key_refusal(n(2048), f4) is None and rsa_key_refusal(n(4096), f4) is None
    assert rsa_key_refusal("\x00" + n(2048)[1:], f4) == MALFORMED and rsa_key_refusal(n(2048), None) == MALFORMED
    assert rsa_key_refusal(n(2048)[:-1] + "=", f4) == MALFORMED and rsa_key_refusal(None, f4) == MALFORMED
    assert rsa_key_refusal("A" * 5, f4) == MALFORMED  # no base64 decodes to 5 characters
    assert rsa_key_refusal(n(2047), f4) == WEAK
    assert rsa_key_refusal(n(4097), f4) == TOO_LARGE and rsa_key_refusal("A" * 10_000, f4) == TOO_LARGE
    zero_led = b"\x00" + ((1 << 4095) | 1).to_bytes(512, "big")  # a leading zero byte: the same integer
    assert rsa_key_refusal(base64.urlsafe_b64encode(zero_led).decode().rstrip("="), f4) is None
    for e in (3, 65539, 2**31 + 1, 2**2046 + 1):
        assert rsa_key_refusal(n(2048), b64(e)) == EXPONENT
    assert rsa_key_refusal(n(2048), "AAAAAQAB") is None and rsa_key_refusal(n(2048), "AQA!") == EXPONENT

"""Our thin wrapper around py_webauthn (STYLE.md #7): its types and exceptions never leave this module.

Pure functions: options in, JSON-ready dicts out; a credential's JSON (``PublicKeyCredential.toJSON()``)
in, a frozen result of ours out, or :class:`CeremonyRefused` with a reason code. Nothing here touches
storage, the cache or the clock; the callers (``identity.authn.service``) persist.

What each ceremony checks, and where (WebAuthn Level 3 §7.1 registration, §7.2 authentication):

| rule                                             | checked by                                   |
|--------------------------------------------------|----------------------------------------------|
| type, challenge, origin in clientDataJSON        | py_webauthn (§7.1 steps 7-9, §7.2 steps 11-13)|
| rpIdHash is SHA-256 of our RP id                  | py_webauthn (§7.1 step 13, §7.2 step 15)     |
| UP and UV flags                                  | py_webauthn, ``require_user_verification``   |
| signature over authData ‖ SHA-256(clientData)    | py_webauthn (§7.2 step 21)                   |
| algorithm is ES256, RS256 or EdDSA               | py_webauthn, ``supported_pub_key_algs``      |
| userHandle names the credential's owner          | :func:`user_handle_matches` (§7.2 step 6)    |
| sign counter went up                             | :func:`sign_count_regressed` (§7.2 step 22)  |
| not in a cross-origin iframe (crossOrigin false)  | :func:`_same_origin_ceremony` (§7.2 step 14) |

The sign counter is deliberately **not** left to py_webauthn: it compares the counter before it checks
the signature, so an unsigned response with a low counter would look like a cloned authenticator. We
pass it a current count of 0 (which disables its check) and compare only after the signature holds;
a regression then really means two authenticators hold the same private key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url, parse_client_data_json
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

# ES256 (most platform authenticators), RS256 (Windows Hello), EdDSA (some security keys).
ALGORITHMS = (
    COSEAlgorithmIdentifier.ECDSA_SHA_256,
    COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256,
    COSEAlgorithmIdentifier.EDDSA,
)
_TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)
_HANDLE_CONTEXT = b"quaygate/webauthn/user-handle/v1:"
MAX_CREDENTIAL_JSON = 64 * 1024


class CeremonyRefused(Exception):
    """A registration or assertion that does not verify. ``reason`` is a stable code for the audit
    trail and the logs; ``detail`` is py_webauthn's message, for the audit trail only."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RelyingParty:
    """Who we are to the authenticator (WebAuthn §5.4.2) and where ceremonies may happen (§13.4.9)."""

    rp_id: str
    name: str
    origins: tuple[str, ...]  # web origins and, when configured, android:apk-key-hash:... origins


def relying_party(
    *, issuer: str, rp_id: str | None, name: str, origins: list[str], android_origins: list[str]
) -> RelyingParty:
    """RP id defaults to the issuer's host, expected origins to the issuer's origin (settings)."""
    parts = urlsplit(issuer)
    web = list(origins) or [f"{parts.scheme}://{parts.netloc}"]
    return RelyingParty(
        rp_id=rp_id or (parts.hostname or ""),
        name=name,
        origins=tuple(dict.fromkeys([*web, *android_origins])),
    )


def user_handle(person_id: uuid.UUID, key: bytes) -> bytes:
    """The person's WebAuthn user handle (§14.6.1: no personally identifying information).

    Neither the person's id (which is the ``sub`` of every token and would let two parties that see
    the authenticator's accounts correlate them) nor stored: an HMAC of the id under the service's
    pepper, stable for the life of the pepper, 32 bytes (the spec allows up to 64).
    """
    return hmac.new(key, _HANDLE_CONTEXT + person_id.bytes, hashlib.sha256).digest()


def user_handle_matches(presented: bytes | None, expected: bytes) -> bool:
    """§7.2 step 6: a discoverable credential's assertion names its user; it must be the owner."""
    return presented is not None and hmac.compare_digest(presented, expected)


def sign_count_regressed(stored: int, presented: int) -> bool:
    """§7.2 step 22 / §6.1.1: a counter that did not go up while either is non-zero is a signal that
    the authenticator may be cloned. Authenticators that keep no counter always report 0 (passkeys
    synchronised between devices do): 0 after 0 is fine."""
    return (stored > 0 or presented > 0) and presented <= stored


# ---- options ------------------------------------------------------------------------------------


def registration_options(
    rp: RelyingParty,
    *,
    challenge: bytes,
    user_id: bytes,
    user_name: str,
    display_name: str,
    exclude: list[tuple[str, list[str]]],
    timeout_ms: int,
) -> dict[str, Any]:
    """PublicKeyCredentialCreationOptions as JSON (§5.4): a discoverable credential, user verification
    required, no attestation (we trust the authenticator's UV, not its make), and the person's active
    credentials excluded so one authenticator is not registered twice (§5.4 excludeCredentials)."""
    options = generate_registration_options(
        rp_id=rp.rp_id,
        rp_name=rp.name,
        user_id=user_id,
        user_name=user_name,
        user_display_name=display_name,
        challenge=challenge,
        timeout=timeout_ms,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[
            PublicKeyCredentialDescriptor(
                id=base64url_to_bytes(cid),
                transports=[AuthenticatorTransport(t) for t in transports if t in _TRANSPORTS],
            )
            for cid, transports in exclude
        ],
        supported_pub_key_algs=list(ALGORITHMS),
    )
    result: dict[str, Any] = json.loads(options_to_json(options))
    return result


def authentication_options(rp: RelyingParty, *, challenge: bytes, timeout_ms: int) -> dict[str, Any]:
    """PublicKeyCredentialRequestOptions as JSON (§5.5): an empty allowCredentials, so the
    authenticator offers its discoverable credentials (no user name typed first, nothing revealed
    about which persons exist), and user verification required."""
    options = generate_authentication_options(
        rp_id=rp.rp_id,
        challenge=challenge,
        timeout=timeout_ms,
        allow_credentials=[],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    result: dict[str, Any] = json.loads(options_to_json(options))
    return result


# ---- registration -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewPasskey:
    credential_id: str  # base64url
    public_key: bytes  # COSE_Key
    sign_count: int
    aaguid: str
    backup_eligible: bool
    backed_up: bool
    transports: tuple[str, ...]


def verify_registration(rp: RelyingParty, *, credential: Any, challenge: bytes) -> NewPasskey:
    """§7.1 for a ``PublicKeyCredential.toJSON()`` of ``navigator.credentials.create()``."""
    _check_shape(credential)
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp.rp_id,
            expected_origin=list(rp.origins),
            require_user_presence=True,
            require_user_verification=True,
            supported_pub_key_algs=list(ALGORITHMS),
        )
    except WebAuthnException as exc:
        raise CeremonyRefused("passkey_invalid", str(exc)) from exc
    except (ValueError, TypeError, KeyError) as exc:  # malformed base64url or CBOR below py_webauthn
        raise CeremonyRefused("passkey_invalid", type(exc).__name__) from exc
    _same_origin_ceremony(credential)
    raw = credential["response"].get("transports")
    transports = tuple(t for t in raw if isinstance(t, str) and t in _TRANSPORTS) if isinstance(raw, list) else ()
    return NewPasskey(
        credential_id=bytes_to_base64url(verified.credential_id),
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        aaguid=verified.aaguid,
        backup_eligible=verified.credential_device_type is CredentialDeviceType.MULTI_DEVICE,
        backed_up=verified.credential_backed_up,
        transports=transports,
    )


# ---- authentication -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssertionClaim:
    """What an assertion says before it is verified: which credential, which user."""

    credential_id: str
    user_handle: bytes | None


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    credential_id: str
    sign_count: int
    backed_up: bool


def read_assertion(credential: Any) -> AssertionClaim:
    """The credential id and user handle an assertion names, to find the stored public key (§7.2
    step 5-6). Nothing in it is trusted until :func:`verify_assertion` has checked the signature."""
    _check_shape(credential)
    cid = credential.get("id")
    raw_id = credential.get("rawId")
    if not isinstance(cid, str) or not cid or cid != raw_id or len(cid) > 1400:
        raise CeremonyRefused("passkey_invalid", "id and rawId missing or different")
    handle = credential["response"].get("userHandle")
    if handle is None or handle == "":
        return AssertionClaim(cid, None)
    if not isinstance(handle, str):
        raise CeremonyRefused("passkey_invalid", "userHandle is not a string")
    try:
        return AssertionClaim(cid, base64url_to_bytes(handle))
    except (ValueError, TypeError) as exc:
        raise CeremonyRefused("passkey_invalid", "userHandle is not base64url") from exc


def verify_assertion(
    rp: RelyingParty, *, credential: Any, challenge: bytes, public_key: bytes
) -> VerifiedAssertion:
    """§7.2 for a ``PublicKeyCredential.toJSON()`` of ``navigator.credentials.get()``, except the
    counter (see the module docstring: :func:`sign_count_regressed`, after the signature)."""
    _check_shape(credential)
    try:
        verified = verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp.rp_id,
            expected_origin=list(rp.origins),
            credential_public_key=public_key,
            credential_current_sign_count=0,
            require_user_verification=True,
        )
    except WebAuthnException as exc:
        raise CeremonyRefused("passkey_invalid", str(exc)) from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise CeremonyRefused("passkey_invalid", type(exc).__name__) from exc
    if not verified.user_verified:  # belt and braces: require_user_verification above
        raise CeremonyRefused("passkey_invalid", "user not verified")
    _same_origin_ceremony(credential)
    return VerifiedAssertion(
        credential_id=bytes_to_base64url(verified.credential_id),
        sign_count=verified.new_sign_count,
        backed_up=verified.credential_backed_up,
    )


def _same_origin_ceremony(credential: dict[str, Any]) -> None:
    """§7.1 step 10 / §7.2 step 14 (Level 3 ``crossOrigin``/``topOrigin``): our pages never run a
    ceremony inside another site's iframe, so a response made in one (a page framing our login to
    relay it) is refused, whatever origin the frame had. Called after py_webauthn has accepted the
    client data, so it is well-formed here."""
    client_data = parse_client_data_json(base64url_to_bytes(credential["response"]["clientDataJSON"]))
    if client_data.cross_origin:
        raise CeremonyRefused("passkey_invalid", "ceremony in a cross-origin iframe")


def _check_shape(credential: Any) -> None:
    if not isinstance(credential, dict) or not isinstance(credential.get("response"), dict):
        raise CeremonyRefused("passkey_invalid", "credential is not a PublicKeyCredential JSON object")
    if len(json.dumps(credential)) > MAX_CREDENTIAL_JSON:
        raise CeremonyRefused("passkey_invalid", "credential too large")

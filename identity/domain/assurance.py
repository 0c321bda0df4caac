"""How strongly a person logged in: ``acr`` values, ``amr`` values and their order.

Standard library only. OIDC Core §2 ``acr`` (Authentication Context Class Reference) and RFC 8176
``amr`` (Authentication Method Reference) values. A client may ask for a minimum ``acr``
(``acr_values``, ``max_age``) and an API may demand one (RFC 9470 step-up); both compare with
``satisfies`` below, never by string equality, so a stronger login always passes a weaker demand.

| acr                              | how the person logged in                               |
|----------------------------------|--------------------------------------------------------|
| urn:quaygate:acr:passkey         | a passkey with user verification (WebAuthn UV flag)    |
| urn:quaygate:acr:upstream        | the national mobile ID (itsme-style, issue 6)          |
| urn:quaygate:acr:face            | one of the above, plus a face match step-up (issue 6)  |
"""

from __future__ import annotations

from collections.abc import Iterable

ACR_PASSKEY = "urn:quaygate:acr:passkey"
ACR_UPSTREAM = "urn:quaygate:acr:upstream"
ACR_FACE = "urn:quaygate:acr:face"

# Ascending strength. A passkey with user verification and the national ID are both two factors
# (possession + knowledge/inherence); the face step-up adds a check of the person in front of the gate.
ORDER: tuple[str, ...] = (ACR_PASSKEY, ACR_UPSTREAM, ACR_FACE)
LEVEL = {acr: i for i, acr in enumerate(ORDER)}
# What a login itself reaches (``login_acrs``): a passkey always; the national ID only where an upstream
# that logs in at that level is configured. Face only by a step-up over one (POST /face/step-up), which no
# page of ours offers a browser sent to log in: a demand for it that a login was to meet came back unmet
# for ever (review 161, finding 2), and so did one for the national ID on a port with none (review 164,
# finding 1). identity.oidc.authorize answers a required level outside the set with
# unmet_authentication_requirements, and a client may not register one as its minimum (identity.clients,
# identity.registration.metadata).

# RFC 8176 §2 values.
AMR_HWK = "hwk"  # proof of possession of a hardware-secured key
AMR_USER = "user"  # user presence test
AMR_MFA = "mfa"  # multiple factors (WebAuthn UV: the authenticator verified the person)
AMR_FACE = "face"  # facial biometric

AMR_FEDERATED = "fed"  # not in RFC 8176: the login happened at a federated (upstream) provider

AMR_PASSKEY = (AMR_HWK, AMR_USER, AMR_MFA)


def satisfies(acr: str | None, minimum: str | None) -> bool:
    """True when a login of class ``acr`` meets ``minimum`` (None: no demand)."""
    if minimum is None:
        return True
    if acr not in LEVEL or minimum not in LEVEL:
        return False
    return LEVEL[acr] >= LEVEL[minimum]


def login_acrs(upstream_acrs: Iterable[str] = ()) -> frozenset[str]:
    """The levels a login here reaches: a passkey, and each of ``upstream_acrs`` (our acr for a login at the
    level each configured upstream asks for: identity.domain.broker.level_acr) that is a level below face.
    None given: passkeys only, what the login page offers without an upstream. An upstream at itsme's
    basic level adds nothing: its urn:quaygate:acr:upstream:basic meets no level."""
    return frozenset({ACR_PASSKEY, *(acr for acr in upstream_acrs if acr in LEVEL and acr != ACR_FACE)})


def passkey_login(acr: str, amr: Iterable[str]) -> bool:
    """True when a session was opened by one of our passkeys (a passkey login, or an enrolment with a
    code, which logs in with the new passkey), stepped up by a face match since or not: ``acr`` passkey,
    or face over such a login (a step-up keeps the ``amr`` it raises), with the key in ``amr`` (RFC 8176
    ``hwk``). Never a login at an upstream provider, whose ``amr`` always names ``AMR_FEDERATED`` (a face
    step-up of one too), whatever else it passes on (its own ``hwk``), and whose ``acr`` ranks above
    passkey's in ``ORDER``: strength is not the question here, which credential opened the session is."""
    methods = set(amr)
    return acr in (ACR_PASSKEY, ACR_FACE) and AMR_HWK in methods and AMR_FEDERATED not in methods


def weakest_acceptable(requested: Iterable[str]) -> str | None:
    """OIDC Core §3.1.2.1 ``acr_values``: space-separated, in order of preference; we honour the
    weakest known one as the floor (any stronger login also satisfies it). None if none is known."""
    known = [a for a in requested if a in LEVEL]
    return min(known, key=LEVEL.__getitem__) if known else None


def stronger(a: str | None, b: str | None) -> str | None:
    """The stronger of two demands (None: no demand; an unknown value ranks below every known one)."""
    if a is None or b is None:
        return a or b
    return a if LEVEL.get(a, -1) >= LEVEL.get(b, -1) else b

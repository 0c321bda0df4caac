"""Brokered login at an upstream OpenID provider (itsme-style): the rules, pure (standard library only).

The edges (identity/broker/) fetch, decrypt and verify signatures; this module judges what they
found, one guard per rule, each with a stable refusal code:

- the id token's claims (OIDC Core §3.1.3.7): ``iss`` is the discovered issuer, ``aud`` holds our
  client_id (and ``azp`` names us when there are several), not expired, not issued in the future,
  ``nonce`` is the one this browser's flow sent (§3.1.2.1, replay of an id token);
- the login's time (§3.1.2.1): every brokered login asks the upstream for a new authentication
  (``prompt=login``, ``max_age=0``), so the id token's ``auth_time`` must be there and fall within this
  flow (``login_time``); else the upstream answered from a session of its own, maybe the previous
  user's of a shared browser (review 157, finding 1). It is the login time of our session too, never
  before the flow's start (review 161, finding 1);
- the userinfo response (§5.3.2): its ``sub`` must be the id token's, or it is someone else's;
- the level (itsme ``acr`` basic / advanced) mapped to our ``acr``/``amr`` (identity.domain.assurance),
  refused when below what the upstream is configured to ask for;
- account linking (who the upstream person is here) and re-binding when the upstream ``sub`` of an
  already linked person changes (a re-created itsme account): only after a check, see ``link_decision``.

Link decision table (``link_decision``), for an upstream (issuer, sub) and the person found by the
keyed hash of the national register number::

    link for (issuer, sub) exists          -> LOGIN (the hash must still be that person's, else refuse)
    no link, no person with that hash      -> refuse person_not_registered (the badge office registers)
    no link, person has no link here       -> LINK (first login)
    no link, person linked to another sub  -> REBIND when a recent passkey login of that same person
                                              is live in this browser, else refuse rebind_required
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from .assurance import ACR_PASSKEY, ACR_UPSTREAM, AMR_FEDERATED, AMR_MFA
from .claims import numeric_date

# itsme's names (itsme OpenID Connect documentation, "acr_values" and "claims").
ITSME_ACR_BASIC = "http://itsme.services/V2/claim/acr_basic"
ITSME_ACR_ADVANCED = "http://itsme.services/V2/claim/acr_advanced"
NATIONAL_NUMBER_CLAIM = "http://itsme.services/v2/claim/BENationalNumber"
LEVELS: Mapping[str, str] = {"basic": ITSME_ACR_BASIC, "advanced": ITSME_ACR_ADVANCED}
# Our acr for a basic upstream login: known to no minimum in identity.domain.assurance, so it
# satisfies no acr demand (only clients that ask for none accept it).
ACR_UPSTREAM_BASIC = "urn:quaygate:acr:upstream:basic"
# RFC 8176 §2 values we pass on from the upstream's amr; anything else is dropped.
_RFC8176 = frozenset({"face", "fpt", "geo", "hwk", "iris", "kba", "mca", "mfa", "otp", "pin", "pwd", "rba",
                      "retina", "sc", "sms", "swk", "tel", "user", "vbm", "wia"})
# A passkey login this recent, of the same person, in the same browser, confirms a re-bind.
REBIND_MAX_AUTH_AGE = timedelta(minutes=10)
# How far the upstream's clock may be from ours: for its iat, and for its auth_time against the flow's start.
MAX_IAT_SKEW = timedelta(seconds=60)


class Refusal(StrEnum):
    """Why a brokered login was refused: the public ``code`` of the error page / problem."""

    PROVIDER_UNKNOWN = "upstream_unknown"
    PROVIDER_UNAVAILABLE = "upstream_unavailable"  # discovery, JWKS or token endpoint unreachable
    STATE_INVALID = "upstream_state_invalid"  # unknown, expired or already used (replayed)
    BROWSER_MISMATCH = "upstream_browser_mismatch"  # the state was started in another browser
    UPSTREAM_ERROR = "upstream_error"  # the provider answered error=... (e.g. access_denied)
    ISSUER_MISMATCH = "upstream_issuer_mismatch"  # RFC 9207 iss parameter or discovery issuer
    TOKEN_REFUSED = "upstream_token_refused"  # noqa: S105 - a code, not a secret; the token endpoint refused the code (expired, used)
    NOT_ENCRYPTED = "upstream_not_encrypted"
    ENCRYPTION_INVALID = "upstream_encryption_invalid"  # wrong alg/enc/cty, or does not decrypt
    UNKNOWN_KID = "upstream_unknown_kid"
    SIGNATURE_INVALID = "upstream_signature_invalid"
    CLAIMS_INVALID = "upstream_claims_invalid"  # iss, aud, azp, exp, iat
    NONCE_MISMATCH = "upstream_nonce_mismatch"
    LOGIN_NOT_FRESH = "upstream_login_not_fresh"  # auth_time missing, before the flow or ahead of us: no new login
    USERINFO_SUB_MISMATCH = "upstream_userinfo_sub_mismatch"
    ACR_INSUFFICIENT = "upstream_acr_insufficient"
    NATIONAL_NUMBER_INVALID = "upstream_national_number_invalid"
    PERSON_NOT_REGISTERED = "person_not_registered"
    IDENTITY_MISMATCH = "upstream_identity_mismatch"  # a linked sub now carries another national number
    REBIND_REQUIRED = "upstream_rebind_required"
    PERSON_SUSPENDED = "person_suspended"
    PERSON_BANNED = "person_banned"
    RATE_LIMITED = "rate_limited"  # the address's login attempts for the window are used up


class BrokerRefused(Exception):
    """A refused brokered login. ``code`` is public; ``detail`` goes to the audit trail only;
    ``retry_after`` (seconds) comes with ``rate_limited``; ``office`` with a refusal of a person the
    upstream has shown this is (suspended, banned, asked to confirm a changed account): whom he turns
    to, the office that issues his enrolment codes (identity.authn.enrolment ``issuing_office``: port
    security for a person who holds a privileged role, else the badge office)."""

    def __init__(self, code: Refusal, detail: str = "", *, retry_after: int | None = None,
                 office: str | None = None) -> None:
        super().__init__(code.value)
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        self.office = office


@dataclass(frozen=True, slots=True)
class IdClaims:
    """What we keep from a checked id token."""

    sub: str
    acr: str | None
    amr: tuple[str, ...]
    auth_time: int | None


def _instant(value: Any) -> int | None:
    """An integer NumericDate within 0..9999-12-31 (claims.numeric_date); None otherwise: 10**400 as
    ``exp`` made ``exp + leeway`` overflow."""
    return value if isinstance(value, int) and numeric_date(value) is not None else None


def check_id_token(claims: Mapping[str, Any], *, issuer: str, client_id: str, nonce: str, now: datetime,
                   leeway: timedelta = timedelta(seconds=30)) -> IdClaims:
    """OIDC Core §3.1.3.7 items 2-4, 9-11 on a decrypted, signature-checked id token."""
    if claims.get("iss") != issuer:
        raise BrokerRefused(Refusal.CLAIMS_INVALID, "iss")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if client_id not in audiences:
        raise BrokerRefused(Refusal.CLAIMS_INVALID, "aud")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise BrokerRefused(Refusal.CLAIMS_INVALID, "azp")
    exp, iat = _instant(claims.get("exp")), _instant(claims.get("iat"))
    stamp = now.timestamp()
    if exp is None or exp + leeway.total_seconds() <= stamp:
        raise BrokerRefused(Refusal.CLAIMS_INVALID, "exp")
    if iat is None or iat - MAX_IAT_SKEW.total_seconds() > stamp:
        raise BrokerRefused(Refusal.CLAIMS_INVALID, "iat")
    if not isinstance(claims.get("nonce"), str) or claims["nonce"] != nonce:
        raise BrokerRefused(Refusal.NONCE_MISMATCH, "nonce")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= 255:
        raise BrokerRefused(Refusal.CLAIMS_INVALID, "sub")
    acr = claims.get("acr")
    amr = claims.get("amr")
    return IdClaims(sub, acr if isinstance(acr, str) else None,
                    tuple(a for a in amr if isinstance(a, str)) if isinstance(amr, list) else (),
                    _instant(claims.get("auth_time")))


def login_time(auth_time: int | None, *, started: datetime, now: datetime) -> datetime:
    """When the person logged in at the upstream for this flow: the id token's ``auth_time``
    (``IdClaims.auth_time``, an integer NumericDate or None), which the flow asked for (``max_age=0``:
    OIDC Core §3.1.2.1, the provider MUST then return it; and as an essential claim, §5.5.1.1), with
    ``prompt=login``. Missing, or before the flow ``started`` (less ``MAX_IAT_SKEW``): the upstream did
    not authenticate anew, it answered from a session it held (a shared browser's previous user);
    refused. Later than ``now`` plus the skew: refused too, else it would keep our session fresh for as
    long as it says. Within the skew ahead: taken as ``now``. Within the skew before the start (a clock
    behind ours, or a whole second that began before the start): taken as the start, with its fraction of
    a second, since the login this flow demanded came after it. Before, the upstream's earlier second was
    kept, earlier than the authorization request of our own provider that sent the person to log in, which
    then took the new login for an old one (prompt=login, max_age) and sent him back to the login page for
    ever (review 161, finding 1). The result is our session's login time, what every freshness rule
    measures (adding a passkey, our provider's own prompt=login and max_age)."""
    if auth_time is None:
        raise BrokerRefused(Refusal.LOGIN_NOT_FRESH, "auth_time missing")
    if auth_time < started.timestamp() - MAX_IAT_SKEW.total_seconds():
        raise BrokerRefused(Refusal.LOGIN_NOT_FRESH, "auth_time before the flow's start")
    if auth_time - MAX_IAT_SKEW.total_seconds() > now.timestamp():
        raise BrokerRefused(Refusal.LOGIN_NOT_FRESH, "auth_time in the future")
    return min(max(datetime.fromtimestamp(auth_time, UTC), started), now)


def check_userinfo(userinfo: Mapping[str, Any], *, sub: str) -> None:
    """OIDC Core §5.3.2: the userinfo ``sub`` must equal the id token's, else it is not this person's."""
    if userinfo.get("sub") != sub:
        raise BrokerRefused(Refusal.USERINFO_SUB_MISMATCH, "userinfo sub")


def our_assurance(upstream_acr: str | None, upstream_amr: Sequence[str], *,
                  required: str) -> tuple[str, tuple[str, ...]]:
    """Our (acr, amr) for an upstream login. ``required`` is the level asked for ("basic" or
    "advanced"): a login below it is refused (the provider may ignore a voluntary acr_values)."""
    if upstream_acr == ITSME_ACR_ADVANCED:
        acr = ACR_UPSTREAM
    elif upstream_acr == ITSME_ACR_BASIC and required == "basic":
        acr = ACR_UPSTREAM_BASIC
    else:
        raise BrokerRefused(Refusal.ACR_INSUFFICIENT, f"acr {upstream_acr!r} below {required}")
    passed = [a for a in upstream_amr if a in _RFC8176]
    amr = [AMR_FEDERATED, *passed]
    if acr == ACR_UPSTREAM and AMR_MFA not in amr:
        amr.append(AMR_MFA)  # advanced: the app's PIN or biometric on the phone, two factors
    return acr, tuple(dict.fromkeys(amr))


def level_acr(level: str) -> str:
    """Our acr for a login at the level an upstream is configured to ask for ("basic" or "advanced"), as
    ``our_assurance`` gives it: urn:quaygate:acr:upstream for advanced, urn:quaygate:acr:upstream:basic
    for basic. What a login through that upstream reaches (assurance.login_acrs; review 164, finding 1)."""
    return our_assurance(LEVELS[level], (), required=level)[0]


def national_number(userinfo: Mapping[str, Any], id_claims: Mapping[str, Any]) -> str:
    """The national register number from userinfo (or the id token), separators removed. Its format
    is checked by the caller with identity.domain.bans.national_number_valid."""
    raw = userinfo.get(NATIONAL_NUMBER_CLAIM, id_claims.get(NATIONAL_NUMBER_CLAIM))
    if not isinstance(raw, str):
        raise BrokerRefused(Refusal.NATIONAL_NUMBER_INVALID, "missing")
    return raw.strip().replace(".", "").replace("-", "").replace(" ", "")


class LinkAction(StrEnum):
    LOGIN = "login"
    LINK = "link"
    REBIND = "rebind"


@dataclass(frozen=True, slots=True)
class PasskeyProof:
    """The browser's live login session, when there is one: whose, how and when."""

    person_id: str
    acr: str
    auth_time: datetime


def link_decision(*, linked_person: str | None, hashed_person: str | None, person_linked_sub: str | None,
                  proof: PasskeyProof | None, now: datetime) -> tuple[LinkAction, str]:
    """What to do with an upstream identity (the module docstring's table). Returns the action and the
    person id it applies to.

    ``linked_person``: the person the (issuer, sub) is linked to; ``hashed_person``: the person whose
    national-number hash matches; ``person_linked_sub``: the sub that person is linked to now at this
    issuer (None: not linked); ``proof``: this browser's live session."""
    if linked_person is not None:
        if hashed_person != linked_person:
            raise BrokerRefused(Refusal.IDENTITY_MISMATCH, "the linked person has another national number")
        return LinkAction.LOGIN, linked_person
    if hashed_person is None:
        raise BrokerRefused(Refusal.PERSON_NOT_REGISTERED, "no person with that national number")
    if person_linked_sub is None:
        return LinkAction.LINK, hashed_person
    if (proof is not None and proof.person_id == hashed_person and proof.acr == ACR_PASSKEY
            and now - proof.auth_time <= REBIND_MAX_AUTH_AGE):
        return LinkAction.REBIND, hashed_person
    raise BrokerRefused(Refusal.REBIND_REQUIRED, "upstream sub changed; no recent passkey login of that person")

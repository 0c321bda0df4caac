"""Access token claims: their names and how a token's claim set is built (RFC 9068 §2.2).

Standard library only. The release API maps these claims to an Actor; keep the names stable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .roles import TERMINAL_ROLES, ClientRole

# Registered claims (RFC 7519 §4.1), required in a JWT access token by RFC 9068 §2.2.
ISS = "iss"
SUB = "sub"  # client_id for machine clients, the person's id for people (later slices)
AUD = "aud"
EXP = "exp"
IAT = "iat"
NBF = "nbf"
JTI = "jti"
CLIENT_ID = "client_id"  # RFC 8693 §4.3
SCOPE = "scope"  # RFC 8693 §4.2, space separated
# A NumericDate (RFC 7519 §2) someone else signed is taken only within Python's calendar: 0 (1970) to the
# last second of 9999. JSON carries any integer (10**400) and Python's reads NaN and Infinity; such a
# number in arithmetic with a float clock raised OverflowError (a 500 at the token endpoint).
LATEST_NUMERIC_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z


def numeric_date(value: object) -> int | float | None:
    """``value`` when it is a NumericDate within 0..LATEST_NUMERIC_DATE; else None (a bool, a NaN, too big)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= LATEST_NUMERIC_DATE:
        return None  # comparisons only: float(10**400) itself overflows, and NaN fails them all
    return value


# Private claims (RFC 7519 §4.3): the organisation behind the client and how it is bound.
ORG = "org"  # organisation id, a UUID string
ORG_KIND = "org_kind"  # release_service OrgKind value
ROLE = "role"  # ClientRole value
TERMINAL = "terminal"  # terminal code, terminal clients only
# A person behind the token (authorization code and refresh grants).
PERSON_ID = "person_id"  # the person's id; the release API's Actor.person_id
ROLES = "roles"  # the person's membership roles that count for this client
ACR = "acr"  # OIDC Core §2, identity.domain.assurance
AMR = "amr"  # RFC 8176
AUTH_TIME = "auth_time"  # OIDC Core §2, seconds since the epoch
SID = "sid"  # OIDC Front-Channel Logout §3: the login session at the provider
CNF = "cnf"  # RFC 7800 §3.1; {"jkt": ...} for a DPoP-bound token (RFC 9449 §6.1)
GRANT_ID = "gid"  # the grant a person's token came from: revoking the grant revokes it (one entry)
# ID token only (OIDC Core §2).
NONCE = "nonce"
AT_HASH = "at_hash"
AZP = "azp"
NAME = "name"
GIVEN_NAME = "given_name"
FAMILY_NAME = "family_name"

# Membership roles of a person in an organisation (memberships.role).
MEMBER_ROLES = frozenset({"driver", "dispatcher", "org_admin", "port_security_admin", "badge_office"})
# Who may use the admin API through the admin console (issue 4 "Admin console": "every action is
# role-checked"): port security, and the badge office, which alone sees badge numbers in full.
CONSOLE_ADMIN_ROLES = frozenset({"port_security_admin", "badge_office"})
# The roles in which a person acts for a company on its release rights (release_service parties.py).
COMPANY_ACTING_ROLES = frozenset({"dispatcher", "org_admin"})
# Roles only port security grants, and whose holders only port security issues enrolment codes for:
# whoever holds a person's code logs in as him, so a badge officer must not mint a company's dispatcher
# (or an officer) and then log in as him.
PRIVILEGED_ROLES = CONSOLE_ADMIN_ROLES | COMPANY_ACTING_ROLES
BADGE_OFFICE_ROLE = "badge_office"
# What a person's token may carry through the driver app: never an administrative role, which the
# release API honours (Actor.is_admin); a driver app token sees only the driver's own nominations.
DRIVER_APP_ROLES = frozenset({"driver"})

REQUIRED = (ISS, SUB, AUD, EXP, IAT, JTI, CLIENT_ID)  # RFC 9068 §2.2

# Header "typ" of a JWT access token (RFC 9068 §2.1); "application/at+jwt" is the long form.
ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105 - a media type, not a secret
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})


def audiences_for(role: ClientRole, *, api_audience: str, gate_audience: str) -> list[str]:
    """Gates call the gate verify service as well as the release API."""
    if role is ClientRole.TERMINAL_GATE:
        return [api_audience, gate_audience]
    return [api_audience]


def access_token_claims(
    *,
    issuer: str,
    client_id: str,
    role: ClientRole,
    organisation_id: str | None,
    org_kind: str | None,
    terminal_code: str | None,
    scope: str,
    audiences: list[str],
    now: int,
    ttl: int,
    jti: str,
    subject: str | None = None,
) -> dict[str, Any]:
    """The claim set of a JWT access token; ``now`` in seconds since the epoch."""
    claims: dict[str, Any] = {
        ISS: issuer,
        SUB: subject or client_id,  # RFC 9068 §2.2: the client itself when no person is involved
        AUD: audiences[0] if len(audiences) == 1 else list(audiences),
        EXP: now + ttl,
        IAT: now,
        NBF: now,
        JTI: jti,
        CLIENT_ID: client_id,
        SCOPE: scope,
        ROLE: role.value,
    }
    if organisation_id is not None:
        claims[ORG] = organisation_id
        claims[ORG_KIND] = org_kind
    if role in TERMINAL_ROLES and terminal_code:
        claims[TERMINAL] = terminal_code
    return claims


def person_claims(
    base: dict[str, Any],
    *,
    person_id: str,
    roles: list[str] | tuple[str, ...],
    acr: str | None,
    amr: list[str] | tuple[str, ...],
    auth_time: int | None,
    sid: str | None,
    dpop_jkt: str | None,
    grant_id: str | None = None,
) -> dict[str, Any]:
    """A person's access token: ``base`` (access_token_claims with subject = person id) plus who
    logged in and how (RFC 9068 §2.2.1 auth_time/acr/amr, RFC 9068 §2.2.3.1 roles)."""
    claims = dict(base)
    claims[SUB] = person_id
    claims[PERSON_ID] = person_id
    claims[ROLES] = sorted(set(roles))
    if acr is not None:
        claims[ACR] = acr
    claims[AMR] = list(amr)
    if auth_time is not None:
        claims[AUTH_TIME] = auth_time
    if sid is not None:
        claims[SID] = sid
    if dpop_jkt is not None:
        claims[CNF] = {"jkt": dpop_jkt}
    if grant_id is not None:
        claims[GRANT_ID] = grant_id
    return claims


def id_token_claims(
    *,
    issuer: str,
    person_id: str,
    client_id: str,
    now: int,
    ttl: int,
    auth_time: int | None,
    nonce: str | None,
    acr: str | None,
    amr: list[str] | tuple[str, ...],
    sid: str | None,
    at_hash: str | None,
    names: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """OIDC Core §2 ID token claims (§3.1.3.6 at_hash, §2 azp for the one audience)."""
    claims: dict[str, Any] = {
        ISS: issuer,
        SUB: person_id,
        AUD: client_id,
        AZP: client_id,
        EXP: now + ttl,
        IAT: now,
        AMR: list(amr),
    }
    optional = {AUTH_TIME: auth_time, NONCE: nonce, ACR: acr, SID: sid, AT_HASH: at_hash}
    claims.update({k: v for k, v in optional.items() if v is not None})
    if names is not None:
        claims[GIVEN_NAME], claims[FAMILY_NAME] = names
        claims[NAME] = f"{names[0]} {names[1]}"
    return claims


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    """Who a verified access token speaks for, in plain types (the release API builds its Actor)."""

    client_id: str
    subject: str
    role: str | None
    organisation_id: str | None
    org_kind: str | None
    terminal_code: str | None
    scopes: frozenset[str]

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> TokenIdentity:
        scope = claims.get(SCOPE)
        return cls(
            client_id=str(claims[CLIENT_ID]),
            subject=str(claims[SUB]),
            role=claims.get(ROLE),
            organisation_id=claims.get(ORG),
            org_kind=claims.get(ORG_KIND),
            terminal_code=claims.get(TERMINAL),
            scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
        )

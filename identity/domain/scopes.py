"""Scopes: what a token lets its holder ask for, by client role (RFC 6749 §3.3).

Standard library only. The set is small on purpose; finer rules (which party may transfer which
right, which terminal a gate may verify at) are decided by the release service from the token's
``org``, ``org_kind``, ``role`` and ``terminal`` claims, not by more scopes.

| scope            | lets the client                                                          |
|------------------|--------------------------------------------------------------------------|
| `releases:read`  | read the release rights its organisation can see                         |
| `releases:write` | act on rights as its organisation's kind allows: the line issues,        |
|                  | revokes and sets the commercial light; parties transfer, accept and      |
|                  | nominate; customs sets the customs light, a terminal the terminal light  |
| `gate:verify`    | call the gate verify and confirm endpoints for its terminal              |
| `admin`          | use the admin API (badges, persons, organisations, clients, policies)    |
| `openid`         | OpenID Connect sign-in (driver app and consoles)                         |
| `profile`        | the person's name in the id token and userinfo (OIDC Core §5.4)          |
| `offline_access` | a refresh token (OIDC Core §11)                                          |
| `nominations:respond` | a driver accepts or refuses a pickup nominated to him               |
| `badges:office`  | (admin clients) act as the badge office: see badge numbers unmasked      |
|                  | (the admin console: only for a person holding the badge_office role)     |
"""

from __future__ import annotations

from collections.abc import Iterable

from .roles import ClientRole

RELEASES_READ = "releases:read"
RELEASES_WRITE = "releases:write"
GATE_VERIFY = "gate:verify"
ADMIN = "admin"
OPENID = "openid"
PROFILE = "profile"
OFFLINE_ACCESS = "offline_access"
NOMINATIONS_RESPOND = "nominations:respond"
BADGES_OFFICE = "badges:office"  # issue 4: badge numbers are shown in full only to the badge office

ALL_SCOPES = frozenset(
    {RELEASES_READ, RELEASES_WRITE, GATE_VERIFY, ADMIN, OPENID, PROFILE, OFFLINE_ACCESS, NOMINATIONS_RESPOND,
     BADGES_OFFICE}
)

SCOPES_BY_ROLE: dict[ClientRole, frozenset[str]] = {
    ClientRole.SHIPPING_LINE: frozenset({RELEASES_READ, RELEASES_WRITE}),
    ClientRole.RELEASE_PARTY: frozenset({RELEASES_READ, RELEASES_WRITE}),
    ClientRole.TRANSPORT_OPERATOR: frozenset({RELEASES_READ, RELEASES_WRITE}),
    ClientRole.TERMINAL_OPERATOR: frozenset({RELEASES_READ, RELEASES_WRITE}),
    ClientRole.TERMINAL_GATE: frozenset({GATE_VERIFY}),
    ClientRole.CUSTOMS: frozenset({RELEASES_READ, RELEASES_WRITE}),
    ClientRole.ADMIN: frozenset({ADMIN, RELEASES_READ, BADGES_OFFICE}),
    ClientRole.DRIVER_APP: frozenset({OPENID, PROFILE, OFFLINE_ACCESS, RELEASES_READ, NOMINATIONS_RESPOND}),
    ClientRole.CONSOLE: frozenset({OPENID, PROFILE, OFFLINE_ACCESS, RELEASES_READ, RELEASES_WRITE}),
    # offline_access: the console renews its session with a rotating refresh token (RFC 9700 §4.14.2);
    # the admin API still ends it CONSOLE_SESSION_MAX after the passkey login (identity.api.admin).
    ClientRole.ADMIN_CONSOLE: frozenset({OPENID, PROFILE, OFFLINE_ACCESS, ADMIN, BADGES_OFFICE}),
}


class ScopeRefused(ValueError):
    """A scope outside what the client may have: the token endpoint answers invalid_scope."""


def parse(scope: str | None) -> tuple[str, ...]:
    """RFC 6749 §3.3: space-delimited, case-sensitive, order does not matter, no duplicates kept."""
    return tuple(sorted(set((scope or "").split())))


def registrable(role: ClientRole, requested: Iterable[str] | None) -> tuple[str, ...]:
    """The scopes a new client of ``role`` is registered with (all of its role's by default)."""
    allowed = SCOPES_BY_ROLE[role]
    chosen = allowed if requested is None else frozenset(requested)
    extra = chosen - allowed
    if extra:
        raise ScopeRefused(f"not for a {role} client: {' '.join(sorted(extra))}")
    return tuple(sorted(chosen))


def grant(requested: str | None, registered: Iterable[str]) -> str:
    """The scope of a token: the client's registered scopes when none is asked (RFC 6749 §3.3),
    else exactly what is asked, refused whole when any asked scope is not registered."""
    allowed = frozenset(registered)
    asked = parse(requested)
    if not asked:
        return " ".join(sorted(allowed))
    extra = set(asked) - allowed
    if extra:
        raise ScopeRefused(f"scope not granted to this client: {' '.join(sorted(extra))}")
    return " ".join(asked)

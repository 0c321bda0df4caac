"""Client roles, client authentication methods and the registration rules that bind them.

Standard library only (import-linter contract "identity domain is pure").

A client is one piece of software acting for one organisation. Its role says what kind of software
it is; the organisation's kind says who is behind it. The two must agree, so a haulier's back end can
never be registered as a gate:

| role               | organisation kind  | auth (token endpoint)           | grant                     |
|--------------------|--------------------|---------------------------------|---------------------------|
| shipping_line      | shipping_line      | private_key_jwt or client_secret | client_credentials        |
| release_party      | release_party      | private_key_jwt or client_secret | client_credentials        |
| transport_operator | transport_operator | private_key_jwt or client_secret | client_credentials        |
| terminal_operator  | terminal           | private_key_jwt or client_secret | client_credentials        |
| terminal_gate      | terminal           | private_key_jwt or client_secret | client_credentials        |
| customs            | customs            | private_key_jwt or client_secret | client_credentials        |
| admin              | port_authority     | private_key_jwt or client_secret | client_credentials        |
| driver_app         | (none)             | none (public client, PKCE S256) | authorization_code, refresh|
| console            | any, or none       | private_key_jwt or client_secret | authorization_code, refresh|
| admin_console      | (none)             | none (public client, PKCE S256) | authorization_code        |

Redirect URIs (RFC 6749 §3.1.2, RFC 8252 §7, RFC 9700 §4.1): absolute, no fragment, compared by
exact string at the authorization endpoint; https, or http only on a loopback host (127.0.0.1,
[::1], localhost) for development; the driver app may also use a private-use scheme with a dot
(RFC 8252 §7.1, e.g. ``be.quaygate.driver:/callback``). Machine clients have no redirect URIs.
A confidential console always requires pushed authorization requests (RFC 9126 §6).
"""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import urlsplit

from .bans import TERMINAL_CODE_FORM, is_terminal_code


class ClientRole(StrEnum):
    SHIPPING_LINE = "shipping_line"
    RELEASE_PARTY = "release_party"
    TRANSPORT_OPERATOR = "transport_operator"
    TERMINAL_OPERATOR = "terminal_operator"
    TERMINAL_GATE = "terminal_gate"
    CUSTOMS = "customs"
    ADMIN = "admin"
    DRIVER_APP = "driver_app"
    CONSOLE = "console"
    # The port's own admin console at /console/ (issue 4): a public client like the driver app; its
    # tokens carry the person's roles and the admin API honours them (identity.api.admin).
    ADMIN_CONSOLE = "admin_console"


class AuthMethod(StrEnum):
    """Token endpoint client authentication methods (RFC 7591 §2, OIDC Core §9)."""

    CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 - RFC 6749 §2.3.1, HTTP Basic
    CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105 - RFC 6749 §2.3.1, form parameters
    PRIVATE_KEY_JWT = "private_key_jwt"  # RFC 7523 §2.2, a signed assertion
    NONE = "none"  # public client (the driver app), RFC 7636 PKCE protects it


# Organisation kinds, the values of release_service.domain.parties.OrgKind. Mirrored here because
# the identity core may not import the release service; tests/test_identity_domain.py guards drift.
ORG_KINDS = frozenset(
    {"shipping_line", "release_party", "transport_operator", "terminal", "customs", "port_authority"}
)

# Which organisation kind may stand behind each role. None: the client acts for no organisation.
ORG_KINDS_BY_ROLE: dict[ClientRole, frozenset[str | None]] = {
    ClientRole.SHIPPING_LINE: frozenset({"shipping_line"}),
    ClientRole.RELEASE_PARTY: frozenset({"release_party"}),
    ClientRole.TRANSPORT_OPERATOR: frozenset({"transport_operator"}),
    ClientRole.TERMINAL_OPERATOR: frozenset({"terminal"}),
    ClientRole.TERMINAL_GATE: frozenset({"terminal"}),
    ClientRole.CUSTOMS: frozenset({"customs"}),
    ClientRole.ADMIN: frozenset({"port_authority"}),
    ClientRole.DRIVER_APP: frozenset({None}),
    ClientRole.CONSOLE: frozenset({None, *ORG_KINDS}),
    ClientRole.ADMIN_CONSOLE: frozenset({None}),
}

# Back ends and gates: confidential machine clients using the client credentials grant (RFC 6749 §4.4).
MACHINE_ROLES = frozenset(ORG_KINDS_BY_ROLE) - {ClientRole.DRIVER_APP, ClientRole.CONSOLE, ClientRole.ADMIN_CONSOLE}
# Public clients (RFC 6749 §2.1): code in a browser, no secret; PKCE S256 protects the code (RFC 7636).
PUBLIC_ROLES = frozenset({ClientRole.DRIVER_APP, ClientRole.ADMIN_CONSOLE})
# Bound to one terminal: the token carries its code in the "terminal" claim.
TERMINAL_ROLES = frozenset({ClientRole.TERMINAL_OPERATOR, ClientRole.TERMINAL_GATE})
CONFIDENTIAL_METHODS = frozenset(
    {AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST, AuthMethod.PRIVATE_KEY_JWT}
)
SECRET_METHODS = frozenset({AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST})


class RegistrationRefused(ValueError):
    """A client registration breaks a rule; ``code`` is stable, the message is for operators."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def grant_types_for(role: ClientRole) -> tuple[str, ...]:
    if role in MACHINE_ROLES:
        return ("client_credentials",)
    return ("authorization_code", "refresh_token")


def check_registration(
    role: ClientRole,
    *,
    org_kind: str | None,
    org_terminal_code: str | None,
    terminal_code: str | None,
    auth_method: AuthMethod,
    has_jwks: bool,
) -> str | None:
    """Guard a registration; return the terminal code the client is bound to (or None).

    One guard per rule, each with its own code.
    """
    if org_kind not in ORG_KINDS_BY_ROLE[role]:
        raise RegistrationRefused("role_org_kind_mismatch", f"role {role} cannot act for a {org_kind!r}")
    if role in PUBLIC_ROLES:
        if auth_method is not AuthMethod.NONE:
            raise RegistrationRefused("public_client_method", f"{role} is a public client (none)")
    elif auth_method not in CONFIDENTIAL_METHODS:
        # RFC 6749 §2.1: only public clients may go without client authentication.
        raise RegistrationRefused("confidential_client_method", f"{role} clients must authenticate")
    if auth_method is AuthMethod.PRIVATE_KEY_JWT and not has_jwks:
        raise RegistrationRefused("jwks_required", "private_key_jwt needs the client's public keys")
    if role not in TERMINAL_ROLES:
        if terminal_code is not None:
            raise RegistrationRefused("terminal_not_allowed", f"{role} clients are not bound to a terminal")
        return None
    bound = terminal_code or org_terminal_code
    if not bound:
        raise RegistrationRefused("terminal_required", f"{role} clients must be bound to a terminal")
    if bound != org_terminal_code and not is_terminal_code(bound):
        # Port-limited bans are screened by the port a terminal's code starts with (review 123, finding 1).
        # The organisation's own code is taken as it is: one registered before the rule still serves (a
        # code no port can be read from is screened against every port-limited ban, domain/bans.py).
        raise RegistrationRefused("invalid_terminal_code", f"a terminal code is {TERMINAL_CODE_FORM}")
    if org_terminal_code is not None and bound != org_terminal_code:
        raise RegistrationRefused("terminal_mismatch", "the terminal is not the organisation's terminal")
    return bound


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_REDIRECT_URIS = 10
MAX_URI_LENGTH = 2000


def check_redirect_uri(role: ClientRole, uri: str) -> str:
    """One redirect URI, checked; returned unchanged (it is compared by exact string later)."""
    if not isinstance(uri, str) or not uri or len(uri) > MAX_URI_LENGTH or uri.strip() != uri:
        raise RegistrationRefused("invalid_redirect_uri", "a redirect URI must be a non-empty string")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise RegistrationRefused("invalid_redirect_uri", "unreadable redirect URI") from exc
    if "#" in uri:  # RFC 6749 §3.1.2: MUST NOT include a fragment component
        raise RegistrationRefused("invalid_redirect_uri", "a redirect URI has no fragment")
    scheme = parts.scheme.lower()
    if scheme == "https":
        if not parts.hostname:
            raise RegistrationRefused("invalid_redirect_uri", "https redirect URI without host")
        return uri
    if scheme == "http":
        if parts.hostname in LOOPBACK_HOSTS and "@" not in parts.netloc:
            return uri  # RFC 8252 §7.3 loopback redirection
        raise RegistrationRefused("invalid_redirect_uri", "http only for loopback hosts")
    if role is ClientRole.DRIVER_APP and "." in scheme and scheme not in ("javascript", "data", "file"):
        return uri  # RFC 8252 §7.1 private-use URI scheme (reverse domain name)
    raise RegistrationRefused("invalid_redirect_uri", f"scheme {scheme!r} not allowed")


def check_redirect_uris(role: ClientRole, uris: list[str]) -> tuple[str, ...]:
    """The client's redirect URIs (or post-logout redirect URIs), each checked, no duplicates."""
    if uris and role in MACHINE_ROLES:
        raise RegistrationRefused("redirect_uri_not_allowed", f"{role} clients use no redirects")
    if len(uris) > MAX_REDIRECT_URIS:
        raise RegistrationRefused("invalid_redirect_uri", "too many redirect URIs")
    checked = tuple(check_redirect_uri(role, u) for u in uris)
    if len(set(checked)) != len(checked):
        raise RegistrationRefused("invalid_redirect_uri", "a redirect URI is repeated")
    return checked


def requires_par(role: ClientRole, method: AuthMethod, asked: bool) -> bool:
    """RFC 9126 §6: pushed authorization requests are mandatory for confidential consoles."""
    return asked or (role is ClientRole.CONSOLE and method in CONFIDENTIAL_METHODS)

"""Client metadata (RFC 7591 §2) checked against our rules, before anything is stored.

A pure function of the document, the organisation the client will act for, and (on an update,
RFC 7592 §2.2) the client as registered. One guard per rule; each refusal is an RFC 7591 §3.2.2 code
(``invalid_redirect_uri``, ``invalid_client_metadata``, ``invalid_software_statement``) with a
description safe to return. Role, organisation kind, terminal, method and keys are then checked by
the same rules as every other registration (``domain.roles.check_registration``,
``clients.public_jwks``), by the caller that knows the organisation.

Our extensions: ``quaygate_role`` (a ``ClientRole``; default from the organisation's kind),
``quaygate_organisation_id`` and ``quaygate_terminal`` (read only: set from the initial access token).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..clients import ID_TOKEN_ALGS
from ..domain import assurance
from ..domain import scopes as scope_rules
from ..domain.roles import (
    PUBLIC_ROLES,
    AuthMethod,
    ClientRole,
    RegistrationRefused,
    check_redirect_uris,
    grant_types_for,
    requires_par,
)

INVALID_REDIRECT_URI = "invalid_redirect_uri"
INVALID_CLIENT_METADATA = "invalid_client_metadata"
INVALID_SOFTWARE_STATEMENT = "invalid_software_statement"

ROLE_FIELD = "quaygate_role"
DCR_METHODS = frozenset({AuthMethod.PRIVATE_KEY_JWT, AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.NONE})
MAX_URI_LENGTH = 2000
# The role a client gets when it names none: by the kind of the organisation it acts for.
DEFAULT_ROLE_BY_KIND = {
    "shipping_line": ClientRole.SHIPPING_LINE,
    "release_party": ClientRole.RELEASE_PARTY,
    "transport_operator": ClientRole.TRANSPORT_OPERATOR,
    "terminal": ClientRole.TERMINAL_OPERATOR,
    "customs": ClientRole.CUSTOMS,
    "port_authority": ClientRole.CONSOLE,
}
# RFC 7591 §2 metadata we keep as given (in oauth_clients.extra_metadata) and return.
_EXTRA_URIS = ("client_uri", "logo_uri", "tos_uri", "policy_uri")
_EXTRA_STRINGS = ("software_id", "software_version")
# RFC 7592 §2.2: the client must not send these back in an update.
SERVER_FIELDS = ("registration_access_token", "registration_client_uri", "client_secret_expires_at",
                 "client_id_issued_at")


class MetadataRefused(ValueError):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True, slots=True)
class ClientMetadata:
    name: str
    role: ClientRole
    auth_method: AuthMethod
    grant_types: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    scopes: tuple[str, ...]
    jwks: dict[str, Any] | None
    dpop_bound: bool
    require_par: bool
    min_acr: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def response_types(self) -> tuple[str, ...]:
        return ("code",) if "authorization_code" in self.grant_types else ()


def _refuse(description: str, error: str = INVALID_CLIENT_METADATA) -> MetadataRefused:
    return MetadataRefused(error, description)


def check_metadata(
    doc: Mapping[str, Any],
    *,
    org_kind: str | None,
    allowed_methods: frozenset[AuthMethod] = DCR_METHODS,
    allow_admin: bool = False,
    fixed_role: ClientRole | None = None,
    fixed_method: AuthMethod | None = None,
    login_acrs: frozenset[str] = assurance.login_acrs(),
) -> ClientMetadata:
    """Validate an RFC 7591 §2 metadata document. ``fixed_role``/``fixed_method``: on an update, what
    the client was registered with (neither may change: the role binds the organisation, the method
    the credential we issued). ``login_acrs``: the levels a login here reaches, one of which
    default_acr_values must name (identity.broker.config.login_acrs of the settings; passkeys only, a
    port without an upstream, when not given). Unknown members are ignored (RFC 7591 §2)."""
    if not isinstance(doc, Mapping):
        raise _refuse("The metadata must be a JSON object.")
    _plain_text(doc)
    if "software_statement" in doc:
        raise _refuse("Software statements are not accepted.", INVALID_SOFTWARE_STATEMENT)  # RFC 7591 §3.2.2
    role = _role(doc, org_kind, allow_admin=allow_admin, fixed=fixed_role)
    method = _method(doc, role, allowed_methods, fixed=fixed_method)
    grant_types = _grant_types(doc, role)
    redirect_uris = _uris(doc, "redirect_uris", role)
    if "authorization_code" in grant_types and not redirect_uris:
        raise _refuse("redirect_uris is required for the authorization code grant.", INVALID_REDIRECT_URI)
    if "authorization_code" not in grant_types and redirect_uris:
        raise _refuse("A client without the authorization code grant has no redirect_uris.", INVALID_REDIRECT_URI)
    post_logout = _uris(doc, "post_logout_redirect_uris", role)
    if post_logout and "authorization_code" not in grant_types:
        raise _refuse("post_logout_redirect_uris are for clients that log people in.", INVALID_REDIRECT_URI)
    _response_types(doc, grant_types)
    if "jwks" in doc and "jwks_uri" in doc:
        raise _refuse("jwks and jwks_uri must not both be present.")  # RFC 7591 §2
    if "jwks_uri" in doc:
        raise _refuse("jwks_uri is not supported yet: register the public keys by value (jwks).")
    jwks = doc.get("jwks")
    if jwks is not None and not isinstance(jwks, dict):
        raise _refuse("jwks must be a JWK Set object.")
    return ClientMetadata(
        name=_string(doc, "client_name", 200) or f"{role.value} client",
        role=role,
        auth_method=method,
        grant_types=grant_types,
        redirect_uris=redirect_uris,
        post_logout_redirect_uris=post_logout,
        scopes=_scopes(doc, role),
        jwks=jwks,
        dpop_bound=_bool(doc, "dpop_bound_access_tokens"),  # RFC 9449 §5.2
        # RFC 9126 §6: confidential web clients (consoles) must push their authorization requests.
        require_par=requires_par(role, method, _bool(doc, "require_pushed_authorization_requests")),
        min_acr=_min_acr(doc, login_acrs),
        extra=_extra(doc),
    )


# C0 and C1 controls, DEL, and lone UTF-16 surrogates (which JSON can carry as \\ud800 but UTF-8 cannot
# store or send back): no member of ours means any of them.
_NOT_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_MAX_DEPTH = 8  # a JWK Set inside the document is the deepest member we read (3 levels)


def _plain_text(value: Any, depth: int = 0) -> None:
    """Every string in the document, member names included, is plain text; it nests at most _MAX_DEPTH
    levels. Refused here, once, rather than member by member (a stored or echoed lone surrogate fails
    to encode: a 500, not a refusal)."""
    if depth > _MAX_DEPTH:
        raise _refuse("The metadata nests too deeply.")
    if isinstance(value, str):
        if _NOT_TEXT.search(value):
            raise _refuse("The metadata holds control characters or unpaired surrogates.")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _plain_text(k, depth + 1)
            _plain_text(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _plain_text(v, depth + 1)


def _role(doc: Mapping[str, Any], org_kind: str | None, *, allow_admin: bool, fixed: ClientRole | None) -> ClientRole:
    raw = doc.get(ROLE_FIELD)
    if raw is None:
        if fixed is not None:
            return fixed
        if org_kind is None:
            method = doc.get("token_endpoint_auth_method")
            return ClientRole.DRIVER_APP if method == AuthMethod.NONE.value else ClientRole.CONSOLE
        return DEFAULT_ROLE_BY_KIND.get(org_kind, ClientRole.CONSOLE)
    try:
        role = ClientRole(raw)
    except ValueError as exc:
        raise _refuse(f"Unknown {ROLE_FIELD}.") from exc
    if fixed is not None and role is not fixed:
        raise _refuse(f"{ROLE_FIELD} cannot change: register a new client.")
    if role in (ClientRole.ADMIN, ClientRole.ADMIN_CONSOLE) and not allow_admin:
        # Admin clients hold the keys to every client and person: only an administrator makes one.
        raise _refuse("Admin clients are registered by an administrator, not dynamically.")
    return role


def _method(doc: Mapping[str, Any], role: ClientRole, allowed: frozenset[AuthMethod],
            *, fixed: AuthMethod | None) -> AuthMethod:
    raw = doc.get("token_endpoint_auth_method")
    if raw is None:
        # RFC 7591 §2: the default is client_secret_basic; the driver app is public by our rules.
        default = fixed or (AuthMethod.NONE if role in PUBLIC_ROLES else AuthMethod.CLIENT_SECRET_BASIC)
        return default
    try:
        method = AuthMethod(raw)
    except ValueError as exc:
        raise _refuse("Unknown token_endpoint_auth_method.") from exc
    if method not in allowed:
        raise _refuse(f"token_endpoint_auth_method {method.value} is not offered.")
    if fixed is not None and method is not fixed:
        raise _refuse("token_endpoint_auth_method cannot change: register a new client.")
    return method


def _grant_types(doc: Mapping[str, Any], role: ClientRole) -> tuple[str, ...]:
    allowed = grant_types_for(role)
    raw = doc.get("grant_types")
    if raw is None:
        return allowed
    if not isinstance(raw, list) or not raw or not all(isinstance(g, str) for g in raw):
        raise _refuse("grant_types must be a non-empty list of strings.")
    extra = set(raw) - set(allowed)
    if extra:
        raise _refuse(f"grant type not for a {role.value} client: {' '.join(sorted(extra))}")
    if "refresh_token" in raw and "authorization_code" not in raw:
        raise _refuse("refresh_token needs the authorization_code grant.")
    return tuple(g for g in allowed if g in raw)


def _response_types(doc: Mapping[str, Any], grant_types: tuple[str, ...]) -> None:
    """RFC 7591 §2.1: response_types and grant_types must agree; we offer the code flow only."""
    raw = doc.get("response_types")
    if raw is None:
        return
    expected = ["code"] if "authorization_code" in grant_types else []
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw) or sorted(set(raw)) != expected:
        raise _refuse(f"response_types must be {expected} for these grant_types.")


def _uris(doc: Mapping[str, Any], name: str, role: ClientRole) -> tuple[str, ...]:
    """Redirect URIs by the rules every registration follows (domain.roles.check_redirect_uris):
    absolute, no fragment, https or loopback http (RFC 8252 §7.3), a private-use scheme for the
    native driver app (RFC 8252 §7.1); compared by exact string later (RFC 9700 §4.1.3)."""
    raw = doc.get(name)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _refuse(f"{name} must be a list of URIs.", INVALID_REDIRECT_URI)
    try:
        return check_redirect_uris(role, raw)
    except RegistrationRefused as exc:
        raise _refuse(f"{name}: {exc}", INVALID_REDIRECT_URI) from exc


def _scopes(doc: Mapping[str, Any], role: ClientRole) -> tuple[str, ...]:
    raw = doc.get("scope")
    if raw is not None and not isinstance(raw, str):
        raise _refuse("scope is a space-separated string.")  # RFC 7591 §2
    try:
        return scope_rules.registrable(role, scope_rules.parse(raw) if raw else None)
    except scope_rules.ScopeRefused as exc:
        raise _refuse(str(exc)) from exc


def _string(doc: Mapping[str, Any], name: str, limit: int) -> str | None:
    raw = doc.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > limit or not raw.strip():
        raise _refuse(f"{name} must be a non-empty string of at most {limit} characters.")
    return raw.strip()


def _bool(doc: Mapping[str, Any], name: str) -> bool:
    raw = doc.get(name, False)
    if not isinstance(raw, bool):
        raise _refuse(f"{name} must be true or false.")
    return raw


def _min_acr(doc: Mapping[str, Any], login_acrs: frozenset[str]) -> str | None:
    raw = doc.get("default_acr_values")  # OIDC Dynamic Client Registration 1.0 §2
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise _refuse("default_acr_values must be a list of strings.")
    floor = assurance.weakest_acceptable(raw)
    if raw and floor is None:
        raise _refuse(f"default_acr_values: one of {' '.join(assurance.ORDER)}.")
    if floor is not None and floor not in login_acrs:
        # Kept as the client's minimum, which no login here reaches (face: a step-up no page offers; the
        # national ID without an upstream at level advanced), so every authorization would be
        # unmet_authentication_requirements (review 161, finding 2; review 164, finding 1).
        raise _refuse(f"default_acr_values: at least one a login here reaches, {' '.join(sorted(login_acrs))}.")
    return floor


def _extra(doc: Mapping[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for name in _EXTRA_URIS:
        if name in doc:
            value = _string(doc, name, MAX_URI_LENGTH)
            if value is not None and not value.lower().startswith("https://"):
                raise _refuse(f"{name} must be an https URL.")
            extra[name] = value
    for name in _EXTRA_STRINGS:
        if name in doc:
            extra[name] = _string(doc, name, 200)
    if "id_token_signed_response_alg" in doc:
        extra["id_token_signed_response_alg"] = _id_token_alg(doc["id_token_signed_response_alg"])
    if "contacts" in doc:
        contacts = doc["contacts"]
        if not isinstance(contacts, list) or len(contacts) > 10 or not all(
            isinstance(x, str) and 0 < len(x) <= 200 for x in contacts
        ):
            raise _refuse("contacts must be a list of at most 10 strings.")
        extra["contacts"] = list(contacts)
    return {k: v for k, v in extra.items() if v is not None}


def _id_token_alg(raw: Any) -> str:
    """OIDC Dynamic Client Registration 1.0 §2 id_token_signed_response_alg: one we sign with
    (RS256 when absent). Never "none": our id tokens come from the token endpoint and are signed."""
    if raw not in ID_TOKEN_ALGS:
        raise _refuse(f"id_token_signed_response_alg: one of {' '.join(ID_TOKEN_ALGS)}.")
    return str(raw)

"""The upstream providers of this environment (``QUAYGATE_UPSTREAMS``), as frozen profiles.

One profile today, ``itsme``: everything itsme demands is on and cannot be switched off (encrypted id
token and userinfo, PKCE S256, private_key_jwt RS256). What varies per environment: the discovery URL
(itsme's e2e or production), our client_id, the level asked for, whether a request object is sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..domain import assurance
from ..domain.broker import LEVELS, NATIONAL_NUMBER_CLAIM, level_acr

if TYPE_CHECKING:
    from quaygate.settings import Settings

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
REQUEST_OBJECT_MODES = ("none", "signed", "signed_encrypted")
WELL_KNOWN = "/.well-known/openid-configuration"


class UpstreamConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    discovery_url: str
    issuer: str  # expected issuer (OIDC Discovery §4.3: the document's issuer must equal it)
    client_id: str
    level: str  # "basic" | "advanced": the acr_values asked for, and the minimum accepted
    request_object: str  # none | signed | signed_encrypted
    scope: str
    label: str
    require_encryption: bool = True
    signed_alg: str = "RS256"

    def claims_request(self) -> dict[str, Any]:
        """OIDC Core §5.5: the national number from userinfo (itsme serves it there); acr essential, and
        auth_time (§5.5.1.1), which the broker judges against the flow's start (domain.broker login_time)."""
        return {
            "userinfo": {NATIONAL_NUMBER_CLAIM: {"essential": True}, "given_name": None, "family_name": None},
            "id_token": {"acr": {"essential": True, "values": [LEVELS[self.level]]}, "auth_time": {"essential": True}},
        }


def load(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, Upstream]:
    """The configured upstreams by name; UpstreamConfigError names the first bad entry."""
    found: dict[str, Upstream] = {}
    for name, entry in raw.items():
        if not _NAME.match(name):
            raise UpstreamConfigError(f"upstream name {name!r}: lower-case letters, digits, - and _")
        url = str(entry.get("discovery_url", ""))
        client_id = str(entry.get("client_id", ""))
        level = str(entry.get("level", "advanced"))
        mode = str(entry.get("request_object", "signed_encrypted"))
        if not url.startswith(("https://", "http://")) or not client_id:
            raise UpstreamConfigError(f"upstream {name}: discovery_url and client_id are required")
        if level not in LEVELS or mode not in REQUEST_OBJECT_MODES:
            raise UpstreamConfigError(f"upstream {name}: level basic|advanced, request_object {REQUEST_OBJECT_MODES}")
        issuer = str(entry.get("issuer") or (url[: -len(WELL_KNOWN)] if url.endswith(WELL_KNOWN) else ""))
        if not issuer:
            raise UpstreamConfigError(f"upstream {name}: give the issuer, or a discovery_url ending in {WELL_KNOWN}")
        found[name] = Upstream(name, url, issuer, client_id, level, mode, str(entry.get("scope", "openid profile")),
                               str(entry.get("label", "itsme")))
    return found


def login_acrs(settings: Settings) -> frozenset[str]:
    """The levels a login on this port reaches (assurance.login_acrs), from ``QUAYGATE_UPSTREAMS``: a
    passkey always; urn:quaygate:acr:upstream only with an upstream configured at level advanced. None
    configured (the default: the login page offers passkeys only), or itsme at level basic, and no login
    reaches it, so a client may not require it and authorization answers a requirement of it
    unmet_authentication_requirements, never the login page again and again (review 164, finding 1). A
    configuration that ``load`` refuses builds no broker (identity.broker.service.build): no upstream counts."""
    try:
        upstreams = load(settings.upstreams)
    except UpstreamConfigError:
        return assurance.login_acrs()
    return assurance.login_acrs(level_acr(upstream.level) for upstream in upstreams.values())

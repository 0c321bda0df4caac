"""Brokered login at upstream OpenID providers (itsme-style), issue 6 part 1 (docs/itsme.md).

- ``config``: the upstreams of this environment (``QUAYGATE_UPSTREAMS``), one profile (itsme).
- ``keys``: our RSA encryption keys (use "enc", RSA-OAEP-256), rotation that keeps the old one.
- ``jose``: JWE/JWS with explicit joserfc registries; client assertions; request objects.
- ``upstream``: discovery, the upstream JWKS (cached), the token and userinfo calls.
- ``linking``: who the upstream person is here (upstream_links, national-number hash, bans).
- ``service``: the two use cases, start and callback. The rules are in identity.domain.broker.
"""

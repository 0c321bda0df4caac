"""Issuing a person's tokens from a grant: access token, id token, refresh token (one use case core).

Shared by the authorization code grant (code_grant.py) and the refresh token grant: both hold a
``grants`` row (who logged in, how, for which client and scope) and turn it into a token response
inside the caller's transaction, so that marking the code used / rotating the refresh token, creating
the tokens and the audit entry commit together (STYLE.md #5). The refresh grant's fast path on
PostgreSQL has no transaction: it takes the audit entry back (``audit_into``) and writes it in the one
statement that rotates the token, which commits both or neither.

    grant (+ person, memberships) --check person active, no port ban in force (refresh), org membership-->
      access token (RFC 9068, typ at+jwt, settings.access_token_signing_alg; cnf.jkt if DPoP)
      + id token (OIDC Core §2, §3.1.3.6 at_hash) in the client's id_token_signed_response_alg, when asked
      + refresh token (GrantStore.issue_refresh), when offline_access is granted and asked
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from quaygate.schema import memberships, organisations, persons

from .. import audit
from ..clients import ClientRecord
from ..domain import claims as token_claims
from ..domain import scopes as scope_rules
from ..domain.roles import ClientRole
from ..grants import HOLDER_COLUMNS, HOLDER_MEMBERSHIPS, Grant, GrantStore
from ..keys import SIGNING_ALGORITHMS
from ..tokens import sign_access_token, sign_jwt

if TYPE_CHECKING:
    from quaygate.settings import Settings

    from ..bans.screening import StoredBanScreening
    from ..keys import KeyStore

log = logging.getLogger(__name__)

# RS256 is the OIDC default (Core §15.1); PS256 and ES256 are offered (OIDC Registration §2
# id_token_signed_response_alg). The key store holds one active key for each.
ID_TOKEN_ALGORITHMS: tuple[str, ...] = SIGNING_ALGORITHMS


class IssueRefused(Exception):
    """The grant may no longer give tokens: ``reason`` person_inactive | person_banned | not_member |
    grant_revoked.

    The token endpoint answers invalid_grant (RFC 6749 §5.2)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PersonContext:
    """The person behind a grant as one client sees them."""

    person_id: uuid.UUID
    given_name: str
    family_name: str
    roles: tuple[str, ...]
    organisation_id: uuid.UUID | None  # set only for a console bound to an org the person belongs to
    org_kind: str | None
    # The earliest valid_until of the memberships behind ``roles`` (None: none of them expires): no
    # access token carries a role beyond it (``issue_person_tokens``).
    roles_until: datetime | None = None


_HOLDER = (
    sa.select(*HOLDER_COLUMNS)
    .select_from(persons.outerjoin(memberships, HOLDER_MEMBERSHIPS))
    .where(persons.c.id == sa.bindparam("person_id"))
)


def person_context(conn: sa.Connection, client: ClientRecord, person_id: uuid.UUID,
                   holder: Sequence[Any] | None = None, *, now: datetime,
                   bans: StoredBanScreening | None = None) -> PersonContext:
    """Who the person is for ``client``; raises IssueRefused when they may not use it.

    - suspended persons get nothing;
    - with ``bans`` (a port-ban register configured: identity.bans.screening ``from_settings``), nor do
      persons under a ban in force (``person_banned``, the logins' rule): a ban never changes the status,
      and a grant held from before it must not go on giving tokens (the authorization endpoint and the
      refresh pass it). Screening ``unavailable`` refuses no one. It costs one statement (``ban_check``:
      the person by primary key, his bans by their subject index);
    - a console bound to an organisation serves only that organisation's members, and its tokens
      carry the org and the person's roles in that org;
    - the driver app's tokens carry no org and at most the driver role: the release API treats an
      actor with a person_id and no org as a driver who sees only his own nominations;
    - a console bound to no organisation carries the person's roles in every organisation.

    ``holder``: the rows of ``HOLDER_COLUMNS`` already read with the grant (``GrantStore.rotate``);
    else one statement reads them. A membership whose ``valid_until`` is not after ``now`` counts for
    nothing, whether or not the expiry sweep has deleted it yet (migration 0019).
    """
    found = list(holder) if holder is not None else conn.execute(_HOLDER, {"person_id": person_id}).all()
    given_name, family_name, status = found[0][:3] if found else (None, None, None)
    if status != "active":
        raise IssueRefused("person_inactive")
    if bans is not None and bans.banned(conn, person_id, now):
        raise IssueRefused("person_banned")
    until_of = {(org, role): until for *_, org, role, until in found
                if role is not None and (until is None or until > now)}
    rows = list(until_of)
    org_id, org_kind = None, None
    if client.role is ClientRole.DRIVER_APP:
        roles = {role for _, role in rows} & token_claims.DRIVER_APP_ROLES
    elif client.organisation_id is not None:
        roles = {role for org, role in rows if org == client.organisation_id}
        if not roles:
            raise IssueRefused("not_member")
        org_id, org_kind = client.organisation_id, client.org_kind
        if org_kind is None:
            org_kind = conn.execute(
                sa.select(organisations.c.kind).where(organisations.c.id == org_id)
            ).scalar()
    else:
        roles = {role for _, role in rows}
    carried = roles & token_claims.MEMBER_ROLES
    ends = [end for end in (_carried_until(until_of, role, org_id) for role in carried) if end is not None]
    return PersonContext(
        person_id=person_id,
        given_name=given_name,
        family_name=family_name,
        roles=tuple(sorted(carried)),
        organisation_id=org_id,
        org_kind=org_kind,
        roles_until=min(ends) if ends else None,
    )


def _carried_until(until_of: dict[tuple[Any, str], datetime | None], role: str,
                   org_id: uuid.UUID | None) -> datetime | None:
    """Till when ``role`` is held (in ``org_id``, or in any organisation): None while one membership
    giving it does not expire, else the latest of their ends."""
    ends = [until for (org, held), until in until_of.items() if held == role and (org_id is None or org == org_id)]
    return None if not ends or None in ends else max(e for e in ends if e is not None)


def at_hash(access_token: str) -> str:
    """OIDC Core §3.1.3.6: left half of the SHA-256 of the token's ASCII, base64url (RS/PS/ES256)."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).decode().rstrip("=")


def sign_id_token(claims: dict[str, Any], keys: KeyStore, alg: str) -> str:
    """An id token, typ JWT, signed with our active key for ``alg`` (the key names its alg)."""
    if alg not in ID_TOKEN_ALGORITHMS:
        raise ValueError(f"no signing key for {alg}")
    return sign_jwt(claims, keys.signing_key(alg), typ="JWT", alg=alg)


def issue_person_tokens(
    conn: sa.Connection,
    *,
    settings: Settings,
    keys: KeyStore,
    grants: GrantStore,
    client: ClientRecord,
    grant: Grant,
    scope: str,
    nonce: str | None,
    include_id_token: bool,
    include_refresh: bool,
    dpop_jkt: str | None,
    now: datetime,
    grant_type: str = "authorization_code",
    refresh_token: str | None = None,
    audit_kind: str = "identity.token.issued",
    holder: Sequence[Any] | None = None,
    audit_into: list[audit.Entry] | None = None,
    bans: StoredBanScreening | None = None,
) -> dict[str, Any]:
    """Build the token response (RFC 6749 §5.1, OIDC Core §3.1.3.3) for ``grant``, in ``conn``'s
    transaction. The caller commits (and, for the code grant, has marked the code used in it).

    - ``scope``: what these tokens carry (the grant's scope, or a narrower one on refresh, §6).
    - ``nonce``: the authorization request's nonce for the id token (None on refresh).
    - ``include_id_token``: OIDC Core §3.1.3.3 for the code grant with openid; §12.2 allows it on
      refresh (then without nonce).
    - ``include_refresh``: issue a new refresh token in the grant (only if ``offline_access`` is in
      ``scope``). The refresh grant passes False and gives the already rotated token as
      ``refresh_token``, which is put in the response as is.
    - ``dpop_jkt``: the JWK thumbprint of the verified DPoP proof (RFC 9449 §6.1): the access token
      gets ``cnf.jkt`` and token_type ``DPoP``.
    - ``holder``: the grant's person and memberships, when read with the grant (``person_context``).
    - ``bans``: the port-ban screening, when a ban in force refuses the tokens (``person_context``).
    - ``grant_type``: for the audit entry (``audit_kind``: ``identity.token.issued``, or
      ``identity.token.refreshed`` from the refresh grant).
    - ``audit_into``: the audit entry is appended to this list instead of written in ``conn``: for a
      caller that writes it in its own statement, with what it audits (the refresh's fast path).

    The access token names its grant (``gid``), so revoking the grant (code reuse, refresh reuse,
    logout, RFC 7009) revokes it too, with one revocation entry for the whole grant. Raises
    IssueRefused when the person is suspended (or, with ``bans``, under a port ban) or no longer a
    member of the console's organisation, or the grant is revoked.
    """
    if grant.revoked:
        raise IssueRefused("grant_revoked")
    if grant.person_id is None:
        raise IssueRefused("person_inactive")
    person = person_context(conn, client, grant.person_id, holder, now=now, bans=bans)
    ts = int(now.timestamp())
    # A role given until a time (migration 0019) is in no token beyond it: the APIs read roles from the
    # token, and the expiry sweep that revokes the grants runs only every minute.
    ttl = settings.access_token_ttl
    if person.roles_until is not None:
        ttl = max(1, min(ttl, math.ceil((person.roles_until - now).total_seconds())))
    auth_time = int(grant.auth_time.timestamp()) if grant.auth_time else None
    jti = secrets.token_urlsafe(24)
    base = token_claims.access_token_claims(
        issuer=settings.issuer,
        client_id=client.client_id,
        role=client.role,
        organisation_id=str(person.organisation_id) if person.organisation_id else None,
        org_kind=person.org_kind,
        terminal_code=None,
        scope=scope,
        audiences=token_claims.audiences_for(
            client.role, api_audience=settings.api_audience, gate_audience=settings.gate_audience
        ),
        now=ts,
        ttl=ttl,
        jti=jti,
        subject=str(person.person_id),
    )
    claims = token_claims.person_claims(
        base,
        person_id=str(person.person_id),
        roles=person.roles,
        acr=grant.acr,
        amr=grant.amr,
        auth_time=auth_time,
        sid=grant.sid,
        dpop_jkt=dpop_jkt,
        grant_id=str(grant.id),
    )
    access_token = sign_access_token(claims, keys.signing_key(settings.access_token_signing_alg))
    granted = scope_rules.parse(scope)
    body: dict[str, Any] = {
        "access_token": access_token,
        "token_type": "DPoP" if dpop_jkt else "Bearer",  # RFC 9449 §5
        "expires_in": ttl,
        "scope": scope,
    }
    if include_id_token and scope_rules.OPENID in granted:
        id_claims = token_claims.id_token_claims(
            issuer=settings.issuer,
            person_id=str(person.person_id),
            client_id=client.client_id,
            now=ts,
            ttl=settings.id_token_ttl,
            auth_time=auth_time,
            nonce=nonce,
            acr=grant.acr,
            amr=grant.amr,
            sid=grant.sid,
            at_hash=at_hash(access_token),
            names=(person.given_name, person.family_name) if scope_rules.PROFILE in granted else None,
        )
        body["id_token"] = sign_id_token(id_claims, keys, client.id_token_alg)
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    elif include_refresh and scope_rules.OFFLINE_ACCESS in granted:
        body["refresh_token"] = grants.issue_refresh(conn, grant.id, now=now, started=grant.started)
    actor = {"client_id": client.client_id, "person_id": str(person.person_id)}
    data = {
        "grant_type": grant_type,
        "grant_id": str(grant.id),
        "jti": jti,
        "scope": scope,
        "dpop": bool(dpop_jkt),
        "id_token": "id_token" in body,
        "refresh_token": "refresh_token" in body,
    }
    if audit_into is not None:
        audit_into.append((audit_kind, actor, str(grant.id), data, now))
    else:
        audit.record(audit_kind, at=now, actor=actor, subject=str(grant.id), data=data, conn=conn)
    log.info("identity.token.issued.%s", grant_type.replace("_", "-"))
    return body

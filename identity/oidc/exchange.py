"""The transaction of a token-endpoint grant that may refuse *and* keep what the refusal changed.

A refused code or refresh token can still have to commit something: the code marked used, the grant
revoked on reuse (RFC 6749 §4.1.2, RFC 9700 §4.14.2). Both grants run their exchange through
``run_exchange``: one transaction, committed on success, committed or rolled back on a refusal as the
refusal says, then the refusal logged, audited (``GrantRefused.audited``) and raised as its OAuth error (RFC 6749 §5.2).

A grant may first try a fast path without a transaction (``attempt``, the refresh grant on
PostgreSQL): its statements autocommit one by one, so it answers, or refuses having written nothing,
or gives the case to the transaction from scratch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from authlib.oauth2.rfc6749 import InvalidGrantError, OAuth2Error

from .. import audit
from ..domain.roles import AuthMethod

log = logging.getLogger(__name__)


class GrantRefused(Exception):
    """``keep``: commit what the refusal changed; else roll back. ``grant_id`` names the grant, if known.
    ``audited``: False for a refusal that concerns nothing of ours and no one, a code or refresh token
    that does not exist presented by a public client (``none`` proves no one: anyone can name the driver
    app): logged only, so an anonymous caller cannot grow the audit trail (one row per request, bounded
    only by the per-address rate limit). Every refusal about a real code, token or grant, and every one
    of a client that authenticated, is audited."""

    KEEP_BY_DEFAULT = False

    def __init__(
        self,
        reason: str,
        description: str,
        *,
        error: type[OAuth2Error] = InvalidGrantError,
        keep: bool | None = None,
        grant_id: Any = None,
        audited: bool = True,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.description = description
        self.error = error
        self.keep = self.KEEP_BY_DEFAULT if keep is None else keep
        self.grant_id = grant_id
        self.audited = audited


def proven(request: Any) -> bool:
    """Whether the token request's client authenticated (a secret or an assertion); ``none`` proves no
    one (identity.oidc.server ``authenticate_client``)."""
    return getattr(request, "auth_method", None) not in (None, AuthMethod.NONE.value)


def run_exchange(
    engine: sa.Engine,
    *,
    grant_type: str,
    client_id: str,
    now: datetime,
    exchange: Callable[[sa.Connection], dict[str, Any]],
    attempt: Callable[[sa.Connection], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """``exchange(conn)`` in one transaction; a GrantRefused becomes the OAuth error it names.

    ``attempt(conn)``, if given, runs first, on a connection in autocommit: its answer is the answer;
    a GrantRefused from it must have written nothing; None runs ``exchange``."""
    try:
        body = None
        if attempt is not None:
            with engine.connect() as conn:
                body = attempt(conn.execution_options(isolation_level="AUTOCOMMIT"))
        if body is None:
            with engine.connect() as conn:
                try:
                    body = exchange(conn)
                except GrantRefused as refused:
                    conn.commit() if refused.keep else conn.rollback()
                    raise
                conn.commit()
    except GrantRefused as refused:
        log.info("identity.token.refused.%s.%s", grant_type, refused.reason)
        if not refused.audited:
            raise refused.error(description=refused.description) from None
        audit.record(
            "identity.token.refused",
            at=now,
            actor={"client_id": client_id},
            subject=str(refused.grant_id) if refused.grant_id else None,
            data={"grant_type": grant_type, "reason": refused.reason},
            engine=engine,
        )
        raise refused.error(description=refused.description) from None
    return body

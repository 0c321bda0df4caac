"""Login sessions at the provider: who is logged in in this browser, since when, and how strongly.

The browser holds a random session id in an HttpOnly, SameSite=Lax cookie (``settings.session_cookie``);
the table ``login_sessions`` keeps only its SHA-256, so a leaked table opens no session. Each session
also has a public ``sid`` (OIDC Front-Channel/Back-Channel Logout §2) that goes into id tokens and
names it at RP-initiated logout.

Lifecycle::

    create (passkey login, enrolment, upstream login) --> live --expires_at--> expired
                                                           |
                                                           +--end() (logout, step-down)--> ended
                                                           +--end_for_person() (passkey removed or
                                                              suspended)--> ended

A stronger login in the same browser (face step-up) replaces the session: ``create`` again, ``of`` it;
a new login in a browser that holds a session replaces that one (``create``, ``replacing`` its cookie).
The replacing session carries the grants made in the one it replaces (those of the same person), so
the logout that ends it revokes them too (``GrantStore.revoke_session`` by sid): a step-up or a second
login gives the session a new sid, and before, the refresh tokens issued under the old one -- alive
for 14 days against the session's 12 hours -- outlived the logout (review 120, finding 1).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from quaygate.appstate import built_once
from quaygate.hotsql import HotStatement
from quaygate.schema import login_sessions, persons

from .grants import carry_grants

_INSERT = HotStatement(login_sessions.insert())  # every login writes one (quaygate.hotsql)


@dataclass(frozen=True, slots=True)
class LoginSession:
    sid: str
    person_id: uuid.UUID
    acr: str
    amr: tuple[str, ...]
    auth_time: datetime
    expires_at: datetime
    # The passkey that opened the session (None: an upstream login, or a session older than migration
    # 0022): removing it ends the session (identity.authn.service ``remove``).
    credential_id: str | None = None


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class SessionStore:
    def __init__(self, engine: sa.Engine, *, ttl_seconds: int) -> None:
        self._engine = engine
        self._ttl = timedelta(seconds=ttl_seconds)

    def create(
        self,
        person_id: uuid.UUID,
        *,
        acr: str,
        amr: tuple[str, ...] | list[str],
        now: datetime,
        conn: sa.Connection | None = None,
        of: LoginSession | None = None,
        replacing: str | None = None,
        credential_id: str | None = None,
        auth_time: datetime | None = None,
    ) -> tuple[str, LoginSession]:
        """A new session; returns (the cookie value, shown once, and the session).

        Pass ``conn`` to create it in the caller's transaction (the login's audit entry commits with it).
        ``of``: the session this one replaces in a step-up, whose login time and end it keeps: a step-up
        raises what the session proves, never how recent its login is or how long it lives (else a face
        match on a stolen session would renew it for good, and count as the fresh login that adding a
        passkey asks for), and the passkey that opened it (``credential_id``: the passkey a login or an
        enrolment used; None for an upstream login). ``auth_time``: when the person logged in, if not
        ``now``: an upstream login's is the upstream's (identity.domain.broker ``login_time``).

        ``replacing``: the cookie the browser sent with the login (a new login in a browser that holds a
        session): that session ends, live or lapsed, and, the same person's, gives its grants to this one.
        ``of`` gives its grants too (its caller ends it). Carried, they end with this session's logout.
        """
        cookie = secrets.token_urlsafe(32)
        session = LoginSession(
            sid=secrets.token_urlsafe(16),
            person_id=person_id,
            acr=acr,
            amr=tuple(amr),
            auth_time=of.auth_time if of is not None else auth_time or now,
            expires_at=of.expires_at if of is not None else now + self._ttl,
            credential_id=of.credential_id if of is not None else credential_id,
        )
        row = {
            "id_hash": _hash(cookie),
            "sid": session.sid,
            "person_id": person_id,
            "acr": acr,
            "amr": list(session.amr),
            "auth_time": session.auth_time,
            "created_at": now,
            "expires_at": session.expires_at,
            "credential_id": session.credential_id,
        }
        if conn is not None:
            self._insert(conn, row, session, of=of, replacing=replacing, now=now)
        else:
            with self._engine.begin() as own:
                self._insert(own, row, session, of=of, replacing=replacing, now=now)
        return cookie, session

    @staticmethod
    def _insert(conn: sa.Connection, row: dict[str, Any], session: LoginSession, *, of: LoginSession | None,
                replacing: str | None, now: datetime) -> None:
        """The new session's row; the browser's session it replaces ended, and the grants carried over."""
        _INSERT.execute(conn, row)
        carried_from = of.sid if of is not None else None
        if replacing and len(replacing) <= 100:
            old = conn.execute(
                login_sessions.update()
                .where(login_sessions.c.id_hash == _hash(replacing), login_sessions.c.ended_at.is_(None))
                .values(ended_at=now)
                .returning(login_sessions.c.sid, login_sessions.c.person_id)
            ).first()
            # Another person's session ends (the cookie is his no more) but keeps its grants: they are not
            # this person's. His app's revocation (/oauth2/revoke) ends them, else they run to their expiry
            # (identity.oidc.logout ends a live session's grants only).
            if old is not None and old.person_id == session.person_id:
                carried_from = old.sid
        if carried_from is not None:
            carry_grants(conn, carried_from, session.sid)

    def get(self, cookie: str | None, *, now: datetime) -> LoginSession | None:
        """The live session behind a cookie value, or None (unknown, expired or ended)."""
        if not cookie or len(cookie) > 100:
            return None
        with self._engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            row = conn.execute(
                sa.select(login_sessions).where(login_sessions.c.id_hash == _hash(cookie))
            ).first()
        if row is None or row.ended_at is not None or row.expires_at <= now:
            return None
        return LoginSession(
            sid=row.sid,
            person_id=row.person_id,
            acr=row.acr,
            amr=tuple(row.amr),
            auth_time=row.auth_time,
            expires_at=row.expires_at,
            credential_id=row.credential_id,
        )

    def end(self, sid: str, *, now: datetime, conn: sa.Connection | None = None) -> bool:
        """End a session by its sid; True if it was live."""
        stmt = (
            login_sessions.update()
            .where(login_sessions.c.sid == sid, login_sessions.c.ended_at.is_(None))
            .values(ended_at=now)
        )
        if conn is not None:
            return conn.execute(stmt).rowcount == 1
        with self._engine.begin() as own:
            return own.execute(stmt).rowcount == 1

    def end_for_person(self, conn: sa.Connection, person_id: uuid.UUID, *, now: datetime,
                       keep: str | None = None) -> int:
        """End every live session of a person but ``keep`` (a sid), in the caller's transaction (a
        passkey removed or suspended: whoever held it must not stay logged in); returns how many."""
        stmt = login_sessions.update().where(login_sessions.c.person_id == person_id,
                                             login_sessions.c.ended_at.is_(None))
        if keep is not None:
            stmt = stmt.where(login_sessions.c.sid != keep)
        return int(conn.execute(stmt.values(ended_at=now)).rowcount)


def session_live(conn: sa.Connection, sid: str, *, now: datetime) -> bool:
    """True while the session named by ``sid`` is neither ended nor expired (in the caller's transaction),
    read under a share lock on its row held until the caller's transaction ends. A code exchange takes it
    before it creates its grant (identity.oidc.code_grant): an ending of the session (logout, sign out
    everywhere else, a passkey removed, a suspension's cut-off) committed first is waited for and seen
    here; one that comes after waits for the exchange, whose grant its revocation (a later statement)
    then sees. Read without the lock, an exchange that had read the session live created its grant after
    the cut-off's revocation ran, and the thief's refresh family outlived "sign out everywhere else"
    (review 126)."""
    row = conn.execute(
        sa.select(login_sessions.c.ended_at, login_sessions.c.expires_at).where(login_sessions.c.sid == sid)
        .with_for_update(read=True)
    ).first()
    return row is not None and row.ended_at is None and row.expires_at > now


def hold_person(conn: sa.Connection, person_id: uuid.UUID) -> str | None:
    """The person's status (None: no such person), read under a share lock on the person's row that
    holds until the caller's transaction ends. A login takes it, first, before it writes anything and
    creates its session (identity.authn.service ``finish_authentication``), and judges the status it
    returns: a suspension's UPDATE of the row (identity.authn.cutoff ``suspend_person``) conflicts with
    it, so the two run one after the other. A suspension committed first is waited for and seen here;
    a login committed first is waited for by the suspension, whose cut-off then ends its session. Read
    without the lock, a suspension committing meanwhile left a live session on a suspended person: its
    cut-off could not see the login's uncommitted session, and the login had read "active".

    ``FOR SHARE`` on PostgreSQL, not ``FOR KEY SHARE`` (what the session's foreign key takes): that one
    does not conflict with an UPDATE that leaves the key alone, as the suspension's does. Logins of one
    person share it and do not wait for one another; a role grant or a registration (``FOR NO KEY
    UPDATE``, identity.authn.enrolment ``lock_person``) waits for them, and they for it. SQLite has no
    row locks and needs none: its writers run one at a time (BEGIN IMMEDIATE, quaygate.db)."""
    return conn.execute(
        sa.select(persons.c.status).where(persons.c.id == person_id).with_for_update(read=True)
    ).scalar_one_or_none()


def sessions_for(app: Any) -> SessionStore:
    """The app's SessionStore, built once from ``app.state.container``."""
    def build() -> SessionStore:
        c = app.state.container
        return SessionStore(c.engine, ttl_seconds=c.settings.session_ttl)

    return built_once(app, "identity_sessions", build)

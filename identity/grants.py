"""Grants, refresh tokens and the revocation list.

A *grant* is everything issued from one authorization code (or, for machine clients, nothing: their
access tokens stand alone). Refresh tokens rotate inside their grant (OAuth 2.0 Security BCP
RFC 9700 §4.14.2): each use marks the presented token ``rotated`` and issues a new one. Presenting a
rotated (or revoked) token again means it was stolen or replayed, so the whole grant -- the token's
"family" -- is revoked: its refresh tokens, and the access tokens it issued (listed by jti).

Refresh token lifecycle::

    active --rotate() / rotate_prepared()--> rotated --presented again--> grant revoked (reuse detected;
      |                                                  of a grant bound to a DPoP key, only by a presenter
      |                                                  proving that key: ``key_proven``)
      |
      +--revoke_grant() (logout, revocation endpoint, code reuse, reuse detected,
      |                  revoke_person: a passkey removed or suspended)--> revoked

A family ends ``refresh_max`` seconds after its login (the grant's ``auth_time``, else its ``created_at``:
``family_end``), as Keycloak's SSO Session Max ends a session however often it is refreshed (review 151,
finding 3): no refresh token's ``expires_at`` runs past that end, and a token presented at or past it
(one written before the cap, or a capped one expired there) ends the family (revoked, ``refresh_max_age``)
and is refused ``max_age``.

Refresh tokens are random strings; only their SHA-256 is stored. Rows are marked, never deleted,
so a reuse is recognised (STYLE.md #4). Rotation is one conditional UPDATE ... WHERE status='active',
so two concurrent uses of one token give one new token and one reuse. On PostgreSQL a refresh first
tries ``prepare_rotation`` (a read, no lock) and ``rotate_prepared`` (that UPDATE, guarded by all the
read relied on, with the successor and the audit entry, as one autocommitted statement); ``rotate``
in a transaction takes every case they leave.

Access tokens are self-contained JWTs: revoking one lists its jti in ``revoked_tokens`` (the record)
and in the cache (what resource servers check on every call, ``RevocationList.is_revoked``).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa

from quaygate.cache import Cache
from quaygate.hotsql import HotStatement
from quaygate.schema import (
    grants,
    issued_access_tokens,
    membership_of_active_organisation,
    memberships,
    persons,
    refresh_tokens,
    revoked_tokens,
)
from release_service.adapters.audit import entry_params, insert_entry_from

from .audit import Entry
from .domain.claims import GRANT_ID

log = logging.getLogger(__name__)

REFRESH_PREFIX = "qgr_"  # recognisable in logs and secret scanners, like GitHub's ghr_


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Grant:
    """Who and what a grant is for: what refreshed tokens are built from."""

    id: uuid.UUID
    client_id: str
    person_id: uuid.UUID | None
    sid: str | None
    scope: str
    acr: str | None
    amr: tuple[str, ...]
    auth_time: datetime | None
    dpop_jkt: str | None  # RFC 9449 §5: refresh tokens of a public DPoP client are bound to its key
    revoked: bool
    created_at: datetime

    @property
    def started(self) -> datetime:
        """When the family began: the login it came from, else (no auth_time) the grant's making."""
        return self.auth_time or self.created_at


# The person behind a grant and their memberships (one row per membership, or one row of NULLs
# without any), in this order. Read with the grant on a refresh, so issuing from it needs no query
# of its own; identity.oidc.issue.person_context reads the same columns when it has none, and drops
# the memberships whose valid_until has passed (migration 0019), swept or not.
HOLDER_COLUMNS = (persons.c.given_name, persons.c.family_name, persons.c.status, memberships.c.organisation_id,
                  memberships.c.role, memberships.c.valid_until)


# The memberships a token may carry: those in an active organisation (review 108: a deactivated
# organisation's roles, a console role at a terminal's security desk among them, counted on; the admin API
# already refused to give one there). Their ``valid_until`` is the reader's to judge (person_context).
HOLDER_MEMBERSHIPS = sa.and_(memberships.c.person_id == persons.c.id, membership_of_active_organisation())


def _with_holder(source: Any) -> Any:
    return (source.outerjoin(persons, persons.c.id == grants.c.person_id)
            .outerjoin(memberships, HOLDER_MEMBERSHIPS))


_NOW = sa.bindparam("now", type_=refresh_tokens.c.used_at.type)
# Taking a refresh token: one conditional UPDATE (STYLE.md #4); prebuilt, as refresh is a hot path.
_CONSUME = (
    refresh_tokens.update()
    .where(refresh_tokens.c.token_hash == sa.bindparam("h"), refresh_tokens.c.status == "active",
           refresh_tokens.c.expires_at > _NOW)
    .values(status="rotated", used_at=_NOW)
    .returning(refresh_tokens.c.grant_id)
)
_GRANT_AND_HOLDER = sa.select(grants, *HOLDER_COLUMNS).select_from(_with_holder(grants)).where(
    grants.c.id == sa.bindparam("gid"))
# PostgreSQL: one statement takes the token, inserts its successor and reads the grant and its holder,
# with data-modifying CTEs (PostgreSQL docs 7.8.4: they run once, to completion, whether or not the
# outer query reads them). The successor is inserted only for the grant's own client and a live
# grant; a refusal after it (``check``) rolls it back with the rest. No row: the token was not taken.
_CONSUMED = _CONSUME.cte("consumed")


_EXPIRES = sa.bindparam("expires", type_=refresh_tokens.c.expires_at.type)


def _successor(consumed: Any, *guards: Any, expires: Any = _EXPIRES) -> Any:
    """The INSERT of the consumed token's successor (its hash bound as ``new_h``), as a CTE, from each
    row of ``consumed`` whose grant meets ``guards`` (none: from each row), expiring at ``expires``
    (``expires`` bound, by default)."""
    source = sa.select(sa.bindparam("new_h", type_=refresh_tokens.c.token_hash.type), consumed.c.grant_id,
                       sa.literal("active", type_=refresh_tokens.c.status.type), _NOW, expires)
    if guards:
        source = source.select_from(consumed.join(grants, grants.c.id == consumed.c.grant_id)).where(*guards)
    return refresh_tokens.insert().from_select(
        ["token_hash", "grant_id", "status", "issued_at", "expires_at"], source).cte("successor")


# The successor ends at ``expires`` (now + the TTL) or at its family's end, whichever is first: the grant
# is read in the same statement, so its end is reckoned there (``family_end``; ``max_age`` an interval).
_FAMILY_END = sa.func.coalesce(grants.c.auth_time, grants.c.created_at) + sa.bindparam("max_age", type_=sa.Interval())
_ROTATE_PG = HotStatement(sa.select(grants, *HOLDER_COLUMNS).select_from(
    _with_holder(_CONSUMED.join(grants, grants.c.id == _CONSUMED.c.grant_id))).add_cte(
    _successor(_CONSUMED, grants.c.client_id == sa.bindparam("client_id"), grants.c.revoked_at.is_(None),
               expires=sa.func.least(_EXPIRES, _FAMILY_END, type_=refresh_tokens.c.expires_at.type))))

# The refresh's fast path on PostgreSQL (prepare_rotation, rotate_prepared): two statements, each
# autocommitted, no transaction around them. The READ takes no lock: the token, its grant and holder.
_PREPARE = HotStatement(
    sa.select(refresh_tokens.c.status.label("refresh_status"), refresh_tokens.c.expires_at.label("refresh_expires_at"),
              grants, *HOLDER_COLUMNS)
    .select_from(_with_holder(refresh_tokens.join(grants, grants.c.id == refresh_tokens.c.grant_id)))
    .where(refresh_tokens.c.token_hash == sa.bindparam("h")))
# The WRITE, one statement: the conditional UPDATE consumes the token only if all the READ relied on
# still holds (active, unexpired, the same grant, still the client's, not revoked, its person active);
# the successor and the audit entry are inserted from the consumed row only. Concurrent writers
# serialise on the token's row lock, as in _ROTATE_PG: exactly one consumes it.
_TAKEN = _CONSUME.where(
    refresh_tokens.c.grant_id == sa.bindparam("gid"), grants.c.id == refresh_tokens.c.grant_id,
    grants.c.client_id == sa.bindparam("client_id"), grants.c.revoked_at.is_(None),
    persons.c.id == grants.c.person_id, persons.c.status == "active",
).cte("taken")
_ROTATE_PREPARED = HotStatement(sa.select(_TAKEN.c.grant_id).add_cte(
    _successor(_TAKEN), insert_entry_from(_TAKEN).cte("audited")))
_INSERT_REFRESH = refresh_tokens.insert()


class Rotation(NamedTuple):
    """A used refresh token's grant, the new token (clear, given once) and the grant's holder rows
    (the values of ``HOLDER_COLUMNS``), for ``person_context``. From ``prepare_rotation``: the token is
    not used yet, nor its successor stored, until ``rotate_prepared`` says so."""

    grant: Grant
    token: str
    holder: tuple[Any, ...]


def _holder(rows: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(tuple(r)[-len(HOLDER_COLUMNS):] for r in rows)


def _grant(row: Any) -> Grant:
    return Grant(
        id=row.id,
        client_id=row.client_id,
        person_id=row.person_id,
        sid=row.sid,
        scope=row.scope,
        acr=row.acr,
        amr=tuple(row.amr or ()),
        auth_time=row.auth_time,
        dpop_jkt=row.dpop_jkt,
        revoked=row.revoked_at is not None,
        created_at=row.created_at,
    )


class RefreshRefused(Exception):
    """``reason``: unknown, expired, revoked, reused (the family has now been revoked), wrong_client (its
    grant has now been revoked), max_age (the family's end has come: it has now been revoked); or, for a
    grant bound to a DPoP key whose presenter did not prove that key, reused_unproven and
    wrong_client_unproven (nothing revoked, nothing written: ``key_proven``)."""

    def __init__(self, reason: str, grant_id: uuid.UUID | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.grant_id = grant_id


def key_proven(bound_jkt: str | None, proof_jkt: str | None) -> bool:
    """May a refresh token of a grant bound to ``bound_jkt`` be judged stolen on this request, and its
    family revoked? Only when the presenter proved that key (``proof_jkt``: the thumbprint of the key
    the request's DPoP proof was verified with; None without a proof). A bound family is spent only
    with its key (RFC 9449 §5), so without it another client's presentation or a rotated token's replay
    harms no one, and taking it for theft would let whoever copied the token -- from a log, a backup,
    a screenshot -- end the driver's family by naming another public client or the rotated token alone
    (review 120, finding 2). With the key, a replay is what RFC 9700 §4.14.2 guards against: the family
    goes. An unbound grant is judged as before: its token is all a holder needs."""
    return bound_jkt is None or bound_jkt == proof_jkt


class RevocationList:
    """Revoked access tokens: recorded in ``revoked_tokens``, checked in the cache (fast path).

    Three kinds: one token by its jti; every token of a revoked grant (recorded under the jti
    ``grant:<grant_id>``, matched by the token's ``gid`` claim); and every token of a deactivated
    client issued up to a cutoff (``revoke_client``; recorded under ``client:<client_id>``). A
    resource server asks all three in one round trip (``token_revoked``).

    With Redis, the revocations live only there once loaded (``reload`` at start), and a Redis that
    restarted (it keeps nothing on disk here), was flushed or failed over to an empty replica has
    forgotten them: a revoked token would pass again till it expires. So a whole load also sets
    ``LOADED``; a Redis holding older data than it last served (started again from a snapshot, a
    replica promoted) has it deleted before it is used (``RedisCache.forget_on_new_dataset``).
    ``token_revoked`` reads it in the same round trip as the token's own entries; found missing, the
    list is loaded again from ``revoked_tokens`` (once, whoever finds it first) before the token is
    judged. The gate reads a token's entries in its own scripted round trip (``names``,
    ``judge``), which cannot ask for a key to be present: there ``watch`` looks for ``LOADED`` at most
    once a second in a thread of its own and loads the list again when it is missing, so a revoked
    token passes the gate for at most about a second after Redis lost its data. Eviction must not pick
    these keys: a Redis whose ``maxmemory-policy`` is not noeviction is refused (quaygate/dataset.py).
    """

    PREFIX = "identity:revoked-jti:"
    CLIENT_PREFIX = "identity:revoked-client:"
    CLIENT_ROW = "client:"
    GRANT_ROW = "grant:"
    # Tokens issued this long after the deactivation are refused too: another replica may have served
    # the client from memory for up to ClientRegistry's check_every (one second) after it. Until then the
    # token endpoint issues the client none (ClientRecord.tokens_refused_until, check_issuable).
    CLIENT_MARGIN = timedelta(seconds=5)
    # Set by every whole load, with Redis: gone with the revocations when Redis loses its data.
    LOADED = "identity:revocations-loaded"
    LOADED_TTL = 24 * 3600.0  # a load a day at least, should nothing else clear it

    # Without Redis the cache is this process's own memory, so a revocation another process writes (the
    # CLI deactivating an organisation, a second server on the same database) reaches this one only
    # through the table: it is read again at most this often, on the next token checked.
    FOLLOW_EVERY = 1.0
    # Each read takes again the rows revoked this long before the previous read: a transaction may
    # commit a moment after the revoked_at it wrote.
    FOLLOW_OVERLAP = timedelta(seconds=60)

    def __init__(self, cache: Cache, *, follow: sa.Engine | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        """``follow``: the database whose ``revoked_tokens`` this list keeps up with when ``cache`` is
        in-process (with Redis every process shares the cache, and this is not needed); ``now``: the
        clock the rows' times are compared with."""
        self._cache = cache
        self._follow = follow if not cache.shared else None
        # With Redis and the table to load from: every lookup asks whether the list is still loaded.
        self._source = follow if cache.shared else None
        # Data Redis did not write itself (restarted from an older snapshot, a replica promoted in a
        # failover) holds LOADED and may lack the newest revocations: LOADED is deleted first, on the
        # first connection that finds it so, and the list is loaded again.
        forget = getattr(cache, "forget_on_new_dataset", None)
        if self._source is not None and forget is not None:
            forget(self.LOADED)
        self._reload_lock = threading.Lock()
        self._watching = threading.Lock()
        self._next_watch = 0.0
        self._now = now
        self._followed: datetime | None = None  # rows revoked after this (less the overlap) are read next
        self._next_follow = 0.0
        self._follow_lock = threading.Lock()

    def add(self, conn: sa.Connection, items: Iterable[tuple[str, datetime]], *, now: datetime) -> int:
        """Revoke (jti, expires_at) pairs in the caller's transaction; returns how many were new."""
        rows = [{"jti": jti, "expires_at": exp, "revoked_at": now} for jti, exp in items if exp > now]
        if not rows:
            return 0
        known = set(
            conn.execute(
                sa.select(revoked_tokens.c.jti).where(revoked_tokens.c.jti.in_([r["jti"] for r in rows]))
            ).scalars()
        )
        fresh = [r for r in rows if r["jti"] not in known]
        if fresh:
            conn.execute(revoked_tokens.insert(), fresh)
        for r in rows:
            self._cache.set(self.PREFIX + r["jti"], b"1", (r["expires_at"] - now).total_seconds() + 60)
        return len(fresh)

    def is_revoked(self, jti: str) -> bool:
        self._keep_up()
        return self._read([self.PREFIX + jti])[0] is not None

    def revoke_client(self, conn: sa.Connection, client_id: str, *, now: datetime, token_ttl: int) -> None:
        """Refuse every access token of ``client_id`` issued up to now (plus the margin) until the
        last of them has expired, in the caller's transaction (a client deactivated or deleted)."""
        cutoff = now + self.CLIENT_MARGIN
        expires = cutoff + timedelta(seconds=token_ttl)
        jti = self.CLIENT_ROW + client_id
        conn.execute(revoked_tokens.delete().where(revoked_tokens.c.jti == jti))
        conn.execute(revoked_tokens.insert().values(jti=jti, expires_at=expires, revoked_at=cutoff))
        self._set_client(client_id, cutoff, expires, now)

    def token_revoked(self, claims: dict[str, Any]) -> bool:
        """Is this verified access token revoked, on its own or with its client? One round trip."""
        keys = self.lookup_keys(claims)
        self._keep_up()
        return self.judge(claims, self._read(keys))

    def _read(self, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys``, read with ``LOADED`` (with Redis and a table to load from): the list
        loaded again first when the cache forgot it."""
        if self._source is None:
            return self._cache.get_many(keys)
        *values, loaded = self._cache.get_many([*keys, self.LOADED])
        if loaded is None:
            self._reload_lost()
            values = self._cache.get_many(keys)
        return values

    def lookup_keys(self, claims: dict[str, Any]) -> list[str]:
        """The cache keys whose values settle this token's revocation (``judge``): its jti, its grant,
        and its client's cutoff, in that order."""
        keys = [self.PREFIX + str(claims.get("jti"))]
        grant_id = claims.get(GRANT_ID)
        if grant_id is not None:
            keys.append(self.PREFIX + self.GRANT_ROW + str(grant_id))
        client_id = claims.get("client_id")
        if isinstance(client_id, str):
            keys.append(self.CLIENT_PREFIX + client_id)
        return keys

    def names(self, claims: dict[str, Any]) -> list[str] | None:
        """``lookup_keys`` as Redis names, for a caller that reads them in a Redis script of its own (the
        gate's facts read: one round trip for both); None without Redis."""
        qualify = getattr(self._cache, "qualified", None)
        return None if qualify is None else [qualify(k) for k in self.lookup_keys(claims)]

    def judge(self, claims: dict[str, Any], values: Sequence[bytes | None]) -> bool:
        """Revoked, given the values of ``lookup_keys(claims)`` as read?"""
        by_client_too = isinstance(claims.get("client_id"), str)
        if len(values) != 1 + (claims.get(GRANT_ID) is not None) + by_client_too:
            raise ValueError("the values of lookup_keys(claims), one per key")
        if not by_client_too:
            return any(v is not None for v in values)
        *own, by_client = values
        if any(v is not None for v in own):
            return True
        if by_client is None:
            return False
        iat = claims.get("iat")
        # A token without a usable iat cannot show it came after the cutoff: refused.
        return not isinstance(iat, int | float) or isinstance(iat, bool) or iat <= float(by_client)

    def _set_client(self, client_id: str, cutoff: datetime, expires: datetime, now: datetime) -> None:
        self._cache.set(self.CLIENT_PREFIX + client_id, repr(cutoff.timestamp()).encode(),
                        (expires - now).total_seconds() + 60)

    def reload(self, engine: sa.Engine, *, now: datetime) -> int:
        """Put the unexpired revocations back into the cache (after a cache flush or at start-up)."""
        count = self._load(engine, now=now, since=None)
        if self._follow is not None:
            self._followed, self._next_follow = now, time.monotonic() + self.FOLLOW_EVERY
        if self._cache.shared:
            self._cache.set(self.LOADED, b"1", self.LOADED_TTL)  # last: a load cut short leaves it unset
        return count

    WATCH_EVERY = 1.0

    def watch(self) -> None:
        """For a caller that judged a token on entries it read itself (the gate): see, at most every
        WATCH_EVERY seconds and in a thread of its own (never on the caller's event loop), that the
        cache still holds the list, and load it again if not."""
        if self._source is None or time.monotonic() < self._next_watch:
            return
        if not self._watching.acquire(blocking=False):
            return
        self._next_watch = time.monotonic() + self.WATCH_EVERY
        try:
            threading.Thread(target=self._watch_once, name="revocations-watch", daemon=True).start()
        except BaseException:
            self._watching.release()
            raise

    def _watch_once(self) -> None:
        try:
            if self._cache.get(self.LOADED) is None:
                self._reload_lost()
        except Exception:  # noqa: BLE001 - a cache or database that fails: looked at again next time
            log.warning("identity.revocations.watch_failed", exc_info=True)
        finally:
            self._watching.release()

    def _reload_lost(self) -> None:
        """The cache forgot the revocations: load them again, once (a thread finding another one
        loading waits for it, then finds them loaded). A database that fails raises: refused, not let in.
        Rare (a Redis restart): on the event loop too, it waits for the one read."""
        assert self._source is not None
        with self._reload_lock:
            if self._cache.get(self.LOADED) is not None:
                return
            log.warning("identity.revocations.reloaded_after_cache_loss")
            self.reload(self._source, now=self._now() if self._now is not None else datetime.now(UTC))

    def _keep_up(self) -> None:
        """In-process cache only: read the revocations other processes wrote since the last read, at
        most every FOLLOW_EVERY seconds. A thread finding another one reading goes on with what is known
        (at most that much older); a database that fails leaves it as it was, to be read again next time."""
        if self._follow is None or time.monotonic() < self._next_follow:
            return
        if not self._follow_lock.acquire(blocking=False):
            return
        try:
            if time.monotonic() < self._next_follow:
                return
            now = self._now() if self._now is not None else datetime.now(UTC)
            since = None if self._followed is None else self._followed - self.FOLLOW_OVERLAP
            try:
                self._load(self._follow, now=now, since=since)
            except sa.exc.SQLAlchemyError:
                log.warning("identity.revocations.follow_failed")
            else:
                self._followed = now
            self._next_follow = time.monotonic() + self.FOLLOW_EVERY
        finally:
            self._follow_lock.release()

    def _load(self, engine: sa.Engine, *, now: datetime, since: datetime | None) -> int:
        query = (sa.select(revoked_tokens.c.jti, revoked_tokens.c.expires_at, revoked_tokens.c.revoked_at)
                 .where(revoked_tokens.c.expires_at > now))
        if since is not None:
            query = query.where(revoked_tokens.c.revoked_at > since)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        for jti, exp, revoked_at in rows:
            if jti.startswith(self.CLIENT_ROW):
                self._set_client(jti[len(self.CLIENT_ROW):], revoked_at, exp, now)
            else:
                self._cache.set(self.PREFIX + jti, b"1", (exp - now).total_seconds() + 60)
        return len(rows)


class GrantStore:
    def __init__(self, engine: sa.Engine, revocations: RevocationList, *, refresh_ttl: int,
                 access_ttl: int = 3600, refresh_max: int = 30 * 24 * 3600) -> None:
        """``access_ttl``: the longest an access token lives; a grant's revocation entry lasts that long.
        ``refresh_max``: the longest a family lives from its login (Settings.refresh_max_seconds, whose
        default this is)."""
        self._engine = engine
        self._revocations = revocations
        self.revocations = revocations
        self._refresh_ttl = timedelta(seconds=refresh_ttl)
        self._access_ttl = timedelta(seconds=access_ttl)
        self.refresh_max = timedelta(seconds=refresh_max)

    def family_end(self, grant: Grant) -> datetime:
        """When the grant's refresh family ends, however often it is refreshed."""
        return grant.started + self.refresh_max

    def _expires(self, now: datetime, started: datetime) -> datetime:
        """A new refresh token's expiry: the TTL from now, never past its family's end."""
        return min(now + self._refresh_ttl, started + self.refresh_max)

    # ---- creating ----------------------------------------------------------------------------

    def create(
        self,
        conn: sa.Connection,
        *,
        client_id: str,
        person_id: uuid.UUID | None,
        sid: str | None,
        scope: str,
        acr: str | None,
        amr: Iterable[str],
        auth_time: datetime | None,
        dpop_jkt: str | None,
        now: datetime,
        grant_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """A new grant, in the caller's transaction (the code exchange)."""
        gid = grant_id or uuid.uuid4()
        conn.execute(
            grants.insert().values(
                id=gid,
                client_id=client_id,
                person_id=person_id,
                sid=sid,
                scope=scope,
                acr=acr,
                amr=list(amr),
                auth_time=auth_time,
                dpop_jkt=dpop_jkt,
                created_at=now,
            )
        )
        return gid

    def issue_refresh(self, conn: sa.Connection, grant_id: uuid.UUID, *, now: datetime,
                      started: datetime | None = None) -> str:
        """A new active refresh token in the grant; the clear token is returned once. ``started``: when
        the grant's family began (``Grant.started``; None: now), which its expiry never runs past."""
        token = self._new_refresh()
        self._insert_refresh(conn, token, grant_id, now, self._expires(now, started or now))
        return token

    @staticmethod
    def _new_refresh() -> str:
        return REFRESH_PREFIX + secrets.token_urlsafe(32)

    @staticmethod
    def _insert_refresh(conn: sa.Connection, token: str, grant_id: uuid.UUID, now: datetime,
                        expires: datetime) -> None:
        conn.execute(_INSERT_REFRESH, {"token_hash": token_hash(token), "grant_id": grant_id, "status": "active",
                                       "issued_at": now, "expires_at": expires})

    # ---- using -------------------------------------------------------------------------------

    def rotate(
        self,
        conn: sa.Connection,
        token: str,
        *,
        client_id: str,
        now: datetime,
        check: Callable[[Grant], None] | None = None,
        jkt: str | None = None,
    ) -> Rotation:
        """Use a refresh token: mark it rotated and return its grant, a new token and the grant's holder.

        The token is consumed first, by one conditional UPDATE (active and unexpired, RETURNING its
        grant): under concurrency the row lock lets exactly one use through, and the others find it
        rotated. On PostgreSQL that UPDATE is a CTE of the one statement that also inserts the new
        token and reads the grant and its holder; on SQLite they are three statements. Then ``check``
        (the caller's DPoP binding and scope rules) may raise: the caller then rolls back, and the
        token is active again (and its successor gone). Only a refused token costs
        the diagnostic read that tells unknown, revoked, expired and reused apart.

        Call it first in a transaction the caller manages (``engine.connect()``, not ``engine.begin()``):
        a refused token rolls that transaction back before the diagnosis (see below). Raises
        RefreshRefused; on ``reused``, ``wrong_client`` and ``max_age`` the grant has been revoked in
        ``conn``'s transaction, which the caller must commit (the refusal is the point: RFC 9700 §4.14.2;
        a family past its end, ``family_end``, ends).

        ``jkt``: the key the request's DPoP proof proved (None: no proof). A grant bound to a key is
        revoked for another client's use or a reuse only when ``jkt`` is that key (``key_proven``); else
        the refusal is ``wrong_client_unproven`` or ``reused_unproven``, and the caller rolls back: the
        token it consumed is active again, and nothing is written.
        """
        h = token_hash(token) if token.startswith(REFRESH_PREFIX) else None
        rows: list[Any] = []
        successor, pg = self._new_refresh(), conn.dialect.name == "postgresql"
        if h is not None:
            if pg:  # the successor is inserted by the same statement
                rows = _ROTATE_PG.execute(conn, {"h": h, "now": now, "new_h": token_hash(successor),
                                                 "expires": now + self._refresh_ttl, "max_age": self.refresh_max,
                                                 "client_id": client_id}).all()
            else:  # SQLite has no data-modifying CTE: the UPDATE, then the read (and the insert below)
                grant_id = conn.execute(_CONSUME, {"h": h, "now": now}).scalar()
                if grant_id is not None:
                    rows = conn.execute(_GRANT_AND_HOLDER, {"gid": grant_id}).all()
        if not rows:
            # The UPDATE took nothing, but PostgreSQL may still hold the row lock it took to re-check
            # the row after a concurrent rotation committed (EvalPlanQual). Revoking the grant while
            # holding it would lock token-then-grant against another loser's grant-then-token: a
            # deadlock. Nothing was changed, so end the transaction and diagnose in a fresh one.
            conn.rollback()
            raise self._why_not(conn, h, client_id=client_id, now=now, jkt=jkt)
        grant = _grant(rows[0])
        if grant.client_id != client_id:
            if not key_proven(grant.dpop_jkt, jkt):  # the caller rolls the consumption back
                raise RefreshRefused("wrong_client_unproven", grant.id)
            # RFC 6749 §6: the token was issued to another client. Treat as theft of that client's token.
            self.revoke_grant(conn, grant.id, reason="refresh_wrong_client", now=now)
            raise RefreshRefused("wrong_client", grant.id)
        if grant.revoked:
            raise RefreshRefused("revoked", grant.id)
        if now >= self.family_end(grant):
            # A token written before the cap, still unexpired: the family's end has come all the same.
            # Its successor (PostgreSQL's statement wrote one) is revoked with the rest.
            self.revoke_grant(conn, grant.id, reason="refresh_max_age", now=now)
            raise RefreshRefused("max_age", grant.id)
        if check is not None:
            check(grant)
        if not pg:
            self._insert_refresh(conn, successor, grant.id, now, self._expires(now, grant.started))
        return Rotation(grant, successor, _holder(rows))

    def prepare_rotation(self, conn: sa.Connection, token: str, *, client_id: str, now: datetime) -> Rotation | None:
        """The fast path's READ (PostgreSQL; ``conn`` in autocommit): one statement, no lock. A token
        plainly fit to use -- known, active, unexpired, of a live grant of ``client_id`` -- gives its
        grant, its holder and a successor, none of it written; anything else gives None, and ``rotate``
        in a transaction then tells what it is and does what that calls for (RFC 9700 §4.14.2)."""
        if not token.startswith(REFRESH_PREFIX):
            return None
        rows = _PREPARE.execute(conn, {"h": token_hash(token)}).all()
        if not rows:
            return None
        row = rows[0]
        grant = _grant(row)
        if (row.refresh_status != "active" or row.refresh_expires_at <= now or grant.revoked
                or row.client_id != client_id or now >= self.family_end(grant)):
            return None
        return Rotation(grant, self._new_refresh(), _holder(rows))

    def rotate_prepared(self, conn: sa.Connection, token: str, rotation: Rotation, *, client_id: str,
                        now: datetime, entry: Entry) -> bool:
        """The fast path's WRITE (PostgreSQL; ``conn`` in autocommit): one statement consumes ``token``
        if all ``prepare_rotation`` relied on still holds -- and its person is still active -- and then
        stores the successor and the audit ``entry`` (kind, actor, subject, data, at). Returns whether
        it consumed the token; False: nothing was written (a concurrent use, revocation, expiry or
        suspension came between), and the caller starts over with ``rotate``. The statement commits
        at once, so no row lock it took outlives it into that transaction (see ``rotate``)."""
        return _ROTATE_PREPARED.execute(conn, {
            "h": token_hash(token), "now": now, "gid": rotation.grant.id, "client_id": client_id,
            "new_h": token_hash(rotation.token), "expires": self._expires(now, rotation.grant.started),
            **entry_params(*entry),
        }).first() is not None

    def _why_not(self, conn: sa.Connection, h: str | None, *, client_id: str, now: datetime,
                 jkt: str | None) -> RefreshRefused:
        """Why a token could not be used; revokes the grant of a reused or stolen token (of a grant bound
        to a DPoP key, only when ``jkt`` proves that key: ``key_proven``)."""
        row = None
        if h is not None:
            row = conn.execute(
                sa.select(refresh_tokens, grants.c.client_id, grants.c.revoked_at, grants.c.dpop_jkt,
                          grants.c.auth_time, grants.c.created_at)
                .select_from(refresh_tokens.join(grants, grants.c.id == refresh_tokens.c.grant_id))
                .where(refresh_tokens.c.token_hash == h)
            ).first()
        if row is None:
            return RefreshRefused("unknown")
        if row.client_id != client_id:
            if not key_proven(row.dpop_jkt, jkt):
                return RefreshRefused("wrong_client_unproven", row.grant_id)
            self.revoke_grant(conn, row.grant_id, reason="refresh_wrong_client", now=now)
            return RefreshRefused("wrong_client", row.grant_id)
        if row.revoked_at is not None or row.status == "revoked":
            return RefreshRefused("revoked", row.grant_id)
        if row.expires_at <= now or row.status == "active":  # active but not taken: past its expiry
            if now >= (row.auth_time or row.created_at) + self.refresh_max:
                # Expired at its family's end (capped there), or after it: the family ends, as above.
                self.revoke_grant(conn, row.grant_id, reason="refresh_max_age", now=now)
                return RefreshRefused("max_age", row.grant_id)
            return RefreshRefused("expired", row.grant_id)
        # rotated before: a replay, or the loser of a race with the thief
        if not key_proven(row.dpop_jkt, jkt):
            return RefreshRefused("reused_unproven", row.grant_id)
        self.revoke_grant(conn, row.grant_id, reason="refresh_reuse", now=now)
        return RefreshRefused("reused", row.grant_id)

    def get(self, conn: sa.Connection, grant_id: uuid.UUID) -> Grant | None:
        row = conn.execute(sa.select(grants).where(grants.c.id == grant_id)).first()
        return None if row is None else _grant(row)

    def find_by_refresh(self, conn: sa.Connection, token: str) -> tuple[Grant, str, datetime] | None:
        """(grant, token status, expires_at) for a refresh token, for introspection and revocation."""
        if not token.startswith(REFRESH_PREFIX):
            return None
        row = conn.execute(  # one read: the token and its grant
            sa.select(grants, refresh_tokens.c.status.label("token_status"),
                      refresh_tokens.c.expires_at.label("token_expires_at"))
            .select_from(refresh_tokens.join(grants, grants.c.id == refresh_tokens.c.grant_id))
            .where(refresh_tokens.c.token_hash == token_hash(token))
        ).first()
        return None if row is None else (_grant(row), row.token_status, row.token_expires_at)

    # ---- ending ------------------------------------------------------------------------------

    def revoke_client_tokens(self, conn: sa.Connection, client_id: str, *, reason: str, now: datetime,
                             access_token_ttl: int) -> int:
        """End what a client holds, not the client: its live grants (refresh tokens and their access
        tokens, ``revoke_grant`` with ``reason``), and every access token issued to it up to now
        (``RevocationList.revoke_client``, its margin included), in the caller's transaction. Its
        organisation deactivated (identity.organisations), its secret rotated with ``revoke_tokens``
        (identity.registration). Returns how many grants it revoked."""
        ids = conn.execute(sa.select(grants.c.id).where(grants.c.client_id == client_id,
                                                        grants.c.revoked_at.is_(None))).scalars().all()
        for gid in ids:
            self.revoke_grant(conn, gid, reason=reason, now=now)
        self._revocations.revoke_client(conn, client_id, now=now, token_ttl=access_token_ttl)
        return len(ids)

    def revoke_grant(self, conn: sa.Connection, grant_id: uuid.UUID, *, reason: str, now: datetime) -> bool:
        """Revoke a grant: its refresh tokens and its unexpired access tokens. Returns whether the grant
        was live until now (False when it was already revoked). Idempotent.

        The access tokens carry the grant's id (``gid``): one entry ``grant:<id>`` revokes them all,
        so issuing a token writes nothing for revocation's sake. Tokens issued before that claim
        existed were listed in ``issued_access_tokens``; they are still revoked one by one (that table
        receives nothing new and can go once the last of them has expired)."""
        newly = conn.execute(
            grants.update()
            .where(grants.c.id == grant_id, grants.c.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=reason)
        ).rowcount == 1
        conn.execute(
            refresh_tokens.update()
            .where(refresh_tokens.c.grant_id == grant_id, refresh_tokens.c.status != "revoked")
            .values(status="revoked")
        )
        issued = conn.execute(
            sa.select(issued_access_tokens.c.jti, issued_access_tokens.c.expires_at).where(
                issued_access_tokens.c.grant_id == grant_id, issued_access_tokens.c.expires_at > now
            )
        ).all()
        entries = [(RevocationList.GRANT_ROW + str(grant_id), now + self._access_ttl)]
        self._revocations.add(conn, entries + [(r.jti, r.expires_at) for r in issued], now=now)
        return newly

    def revoke_session(self, conn: sa.Connection, sid: str, *, reason: str, now: datetime) -> int:
        """Revoke every grant made in one login session (RP-initiated logout); returns how many. The grants
        of the sessions it replaced (a step-up, a new login in the same browser) are among them: they were
        carried over (``carry_grants``)."""
        ids = conn.execute(
            sa.select(grants.c.id).where(grants.c.sid == sid, grants.c.revoked_at.is_(None))
        ).scalars().all()
        return sum(self.revoke_grant(conn, gid, reason=reason, now=now) for gid in ids)

    def revoke_person(self, conn: sa.Connection, person_id: uuid.UUID, *, reason: str, now: datetime) -> int:
        """Revoke every live grant of a person, whatever client or session it was made in (a passkey
        removed or suspended: a thief's refresh families and access tokens end with it); returns how
        many. In the caller's transaction."""
        ids = conn.execute(
            sa.select(grants.c.id).where(grants.c.person_id == person_id, grants.c.revoked_at.is_(None))
        ).scalars().all()
        return sum(self.revoke_grant(conn, gid, reason=reason, now=now) for gid in ids)


def carry_grants(conn: sa.Connection, from_sid: str, to_sid: str) -> int:
    """Move the live grants of login session ``from_sid`` to ``to_sid``, the session that replaces it in
    the same browser (identity.sessions ``SessionStore.create``), in the caller's transaction; returns
    how many. A grant is revoked at logout by its session's sid, and a step-up or a new login gives the
    browser's session a new one: left behind, a grant outlived the logout for as long as its refresh
    tokens live (review 120, finding 1). Its refreshed id tokens then name the session that holds it."""
    return int(conn.execute(
        grants.update().where(grants.c.sid == from_sid, grants.c.revoked_at.is_(None)).values(sid=to_sid)
    ).rowcount)


def grants_for(app: Any) -> GrantStore:
    """The app's GrantStore: the identity provider's (its RevocationList is the verifier's hook)."""
    from .bootstrap import provider_for  # the provider owns the one instance per app

    store: GrantStore = provider_for(app).grants
    return store


def revocations_for(app: Any) -> RevocationList:
    return grants_for(app).revocations

"""Load one signed ban feed: verified, judged, applied in one transaction, or refused untouched.

The order (issue 4, "Loading is idempotent and atomic"):

1. the signature (feed.verify_feed), then the fields (domain.bans.parse_feed): nothing touched yet;
2. one transaction: the load lock (PostgreSQL ``pg_advisory_xact_lock``; SQLite's BEGIN IMMEDIATE
   already serialises writers), then the state in force is read and the sequence judged *inside*
   it, so two replicas pulling the same change set at once apply it once and the other sees a replay
   or "already loaded";
3. a snapshot replaces every ban of the register; a change set adds (or amends, same reference) and
   lifts; a lift of a ban the list does not hold is refused (the lists have drifted);
4. every national register number becomes a keyed hash (HMAC-SHA256 under the pepper) before it
   reaches the database or a log; the clear number is dropped here;
5. a ban that is new and in effect deactivates the person's badges at once
   (identity.badges.service.deactivate_for_ban) and every live nomination of that person, whether
   he holds a badge or not, at a terminal the ban applies to, gets a ``screening.ban.nomination_alert``
   audit entry and a webhook to the haulier company holding it (identity/bans/alerts.py); so does an
   amended ban (same reference) that is in effect now and was not before for that subject and those
   ports: window moved onto now, subject corrected, scope widened (then only the nominations at the
   ports it took in). A ban that starts later is acted on by the sweep once it starts
   (identity/bans/sweep.py).

Any refusal raises FeedRefused before the commit: the transaction rolls back and the list in force
stays exactly as it was. Refusals are audited (``screening.ban.feed_refused``) in a small
transaction of their own.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from identity import audit
from identity.badges.service import deactivate_for_ban
from identity.domain.bans import (
    Ban,
    Feed,
    FeedKind,
    FeedRefusal,
    FeedRefused,
    FeedState,
    Verdict,
    decode_scope,
    encode_scope,
    parse_feed,
    sequence_verdict,
)
from quaygate.invalidation import BANS, touch
from quaygate.schema import ban_feed_state, persons, port_bans

from .alerts import ACTOR, Acting, NominationHit, live_nominations_of, raise_alerts
from .feed import RegisterKey, verify_feed

log = logging.getLogger(__name__)

LOAD_LOCK_ID = 0x5147_4241_4E53  # pg_advisory_xact_lock key for ban loads ("QGBANS")
_CHUNK = 5000


@dataclass(frozen=True, slots=True)
class LoadResult:
    status: str  # applied | already_loaded
    register: str
    kind: str
    sequence: int
    bans_in_force: int
    added: int = 0
    lifted: int = 0
    badges_deactivated: int = 0
    nomination_alerts: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        if self.status == "already_loaded":
            return (f"feed {self.register} #{self.sequence} is already in force: nothing changed "
                    f"({self.bans_in_force} bans)")
        return (f"loaded {self.kind} {self.register} #{self.sequence}: {self.bans_in_force} bans in force "
                f"({self.added} new, {self.lifted} lifted); {self.badges_deactivated} badges deactivated, "
                f"{self.nomination_alerts} nomination alerts")


def load_feed(engine: sa.Engine, raw: bytes, *, key: RegisterKey, pepper: bytes, now: datetime,
              max_feed_age: timedelta, source: str = "file") -> LoadResult:
    """Verify, judge and apply ``raw``; FeedRefused (audited) leaves the list in force untouched."""
    try:
        result = _load(engine, raw, key=key, pepper=pepper, now=now, max_feed_age=max_feed_age)
    except FeedRefused as refused:
        log.warning("screening.ban.feed_refused.%s", refused.code.value)
        audit.record("screening.ban.feed_refused", at=now, actor=ACTOR, engine=engine,
                     data={"reason": refused.code.value, "source": source})
        raise
    log.info("screening.ban.feed_%s", result.status)
    return result


def _load(engine: sa.Engine, raw: bytes, *, key: RegisterKey, pepper: bytes, now: datetime,
          max_feed_age: timedelta) -> LoadResult:
    clock = [time.perf_counter()]  # phase timings, for loadtests/bench_bans.py

    def lap() -> float:
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 3)

    digest = hashlib.sha256(raw).hexdigest()
    payload = verify_feed(raw, key)
    timings = {"verify": lap()}
    feed = parse_feed(payload)
    timings["parse"] = lap()
    incoming = feed.bans if feed.kind is FeedKind.SNAPSHOT else feed.added
    # The clear numbers end here: from now on only their keyed hashes exist (SPEC.md "Identity").
    rows = [_row(feed, b, h) for b, h in zip(incoming, _hashes(pepper, incoming), strict=True)]
    timings["hash"] = lap()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LOAD_LOCK_ID)))
        touch(conn, BANS)  # once committed, the gate's cached ban facts are read again (quaygate/invalidation.py)
        in_force = _state(conn)
        verdict = sequence_verdict(feed, digest, in_force, now=now, max_feed_age=max_feed_age)
        if verdict is Verdict.ALREADY_LOADED:
            return LoadResult("already_loaded", feed.register, feed.kind.value, feed.sequence, _count(conn, feed))
        if feed.kind is FeedKind.SNAPSHOT:
            # A snapshot replaces the whole list. Written as a difference from the list in force: a
            # daily snapshot mostly repeats it, and rows that did not change are not rewritten.
            conn.execute(port_bans.delete().where(port_bans.c.register != feed.register))
            held = _held(conn, feed.register)
            incoming_refs = {r["reference"] for r in rows}
            rows = [r for r in rows if held.get(r["reference"]) != _compare(r)]  # new or changed
            _delete(conn, feed.register, [ref for ref in held if ref not in incoming_refs]
                    + [r["reference"] for r in rows if r["reference"] in held])
            new_rows = [r for r in rows if r["reference"] not in held]
            lifted = len(held.keys() - incoming_refs)
        else:
            _lift(conn, feed)
            # an amendment: the register re-sends a ban under its reference
            held = _held_of(conn, feed.register, [r["reference"] for r in rows])
            _delete(conn, feed.register, sorted(held))
            new_rows = [r for r in rows if r["reference"] not in held]
            lifted = len(feed.lifted)
        # New bans, and amended ones that take effect now for someone or somewhere they did not before.
        acting = [_acting(held.get(r["reference"]), r, now) for r in rows
                  if _newly_in_effect(held.get(r["reference"]), r, now)]
        timings["replace"] = lap()
        _insert(conn, rows)
        timings["insert"] = lap()
        _set_state(conn, feed, digest, now, replace=in_force is not None)
        deactivated, alerts = ban_consequences(conn, acting, now)
        total = _count(conn, feed)
        audit.record("screening.ban.feed_loaded", at=now, actor=ACTOR, conn=conn, data={
            "register": feed.register, "kind": feed.kind.value, "sequence": feed.sequence,
            "bans_in_force": total, "added": len(new_rows), "lifted": lifted,
            "badges_deactivated": deactivated, "nomination_alerts": alerts})
        timings["consequences"] = lap()
    timings["commit"] = lap()
    return LoadResult("applied", feed.register, feed.kind.value, feed.sequence, total, len(new_rows), lifted,
                      deactivated, alerts, timings)


def _hashes(pepper: bytes, bans: Sequence[Ban]) -> list[str]:
    """quaygate.crypto.keyed_hash for many numbers: the HMAC key schedule is done once and copied."""
    keyed = hmac.new(pepper, digestmod=hashlib.sha256)
    out: list[str] = []
    for b in bans:
        h = keyed.copy()
        h.update(b.national_number.encode())
        out.append(h.hexdigest())
    return out


def _row(feed: Feed, ban: Ban, subject_hash: str) -> dict[str, Any]:
    return {"register": feed.register, "reference": ban.reference, "subject_hash": subject_hash,
            "scope": encode_scope(ban.scope), "banned_from": ban.starts_at, "banned_until": ban.ends_at,
            "feed_sequence": feed.sequence}


def _state(conn: sa.Connection) -> FeedState | None:
    row = conn.execute(sa.select(ban_feed_state)).mappings().first()
    if row is None:
        return None
    return FeedState(row["register"], row["sequence"], row["issued_at"], row["loaded_at"], row["digest"])


def current_state(engine: sa.Engine) -> FeedState | None:
    with engine.connect() as conn:
        return _state(conn)


def _set_state(conn: sa.Connection, feed: Feed, digest: str, now: datetime, *, replace: bool) -> None:
    if replace:  # one register in force at a time; the verdict refused any other register
        conn.execute(ban_feed_state.delete())
    conn.execute(ban_feed_state.insert().values(register=feed.register, sequence=feed.sequence,
                                                issued_at=feed.issued_at, loaded_at=now, digest=digest))


def _lift(conn: sa.Connection, feed: Feed) -> None:
    if not feed.lifted:
        return
    held = _existing(conn, feed.register, list(feed.lifted))
    missing = sorted(set(feed.lifted) - held)
    if missing:
        raise FeedRefused(FeedRefusal.INCONSISTENT,
                          f"inconsistent feed: lifts ban {missing[0]}, which the list in force does not hold")
    _delete(conn, feed.register, list(feed.lifted))


def _held(conn: sa.Connection, register: str) -> dict[str, tuple[Any, ...]]:
    """The list in force by reference, as (subject_hash, scope, from, until) like ``_compare``."""
    if conn.dialect.name == "postgresql":
        # Plain driver rows: psycopg returns aware datetimes itself; skipping the per-value type
        # processing of 100 000 rows saves most of this read.
        # SET LOCAL TimeZone 'UTC': the times come back under datetime.UTC itself, as the parsed feed's do,
        # so comparing them is cheap (a named zone would be asked for its offset 200 000 times).
        with conn.connection.driver_connection.cursor() as cur:  # type: ignore[union-attr]
            cur.execute("SET LOCAL TimeZone = 'UTC'")
            cur.execute("SELECT reference, subject_hash, scope, banned_from, banned_until FROM port_bans "
                        "WHERE register = %s", (register,))
            return {r[0]: r[1:] for r in cur.fetchall()}
    rows = conn.execute(sa.select(port_bans.c.reference, port_bans.c.subject_hash, port_bans.c.scope,
                                  port_bans.c.banned_from, port_bans.c.banned_until)
                        .where(port_bans.c.register == register))
    return {r[0]: tuple(r[1:]) for r in rows}


def _held_of(conn: sa.Connection, register: str, references: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """``_held`` for some references only (a change set's amendments)."""
    found: dict[str, tuple[Any, ...]] = {}
    for chunk in _chunks(list(references), _CHUNK):
        found.update((r[0], tuple(r[1:])) for r in conn.execute(
            sa.select(port_bans.c.reference, port_bans.c.subject_hash, port_bans.c.scope,
                      port_bans.c.banned_from, port_bans.c.banned_until)
            .where(port_bans.c.register == register, port_bans.c.reference.in_(chunk))))
    return found


def _compare(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["subject_hash"], row["scope"], row["banned_from"], row["banned_until"]


def _newly_in_effect(before: tuple[Any, ...] | None, row: dict[str, Any], now: datetime) -> bool:
    """The row is in effect now and its consequences have not run for it: a new ban, or an amendment
    (``before`` as ``_compare``) that was not in effect, named another subject, or covered fewer ports.
    An amendment that only moves the end of a ban in force acts on nobody again (no repeated alerts)."""
    if not row["banned_from"] <= now < row["banned_until"]:
        return False
    if before is None:
        return True
    subject, scope, start, end = before
    return not start <= now < end or subject != row["subject_hash"] or _widened(scope, row["scope"])


def _acting(before: tuple[Any, ...] | None, row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A row ``_newly_in_effect`` found, for ``ban_consequences``: an amendment in force before on the
    same subject acts only because its scope widened, so it carries the scope it had (``scope_before``)
    and alerts only the nominations at the ports it took in."""
    if before is None:
        return row
    subject, scope, start, end = before
    return {**row, "scope_before": scope} if start <= now < end and subject == row["subject_hash"] else row


def _widened(before: str, after: str) -> bool:
    """The stored scope (``encode_scope``) covers a port it did not."""
    old, new = decode_scope(before), decode_scope(after)
    return old is not None and (new is None or not set(new) <= set(old))


def _delete(conn: sa.Connection, register: str, references: Sequence[str]) -> None:
    if not references:
        return
    if conn.dialect.name == "postgresql":  # one array parameter, not one parameter per reference
        conn.execute(port_bans.delete().where(
            port_bans.c.register == register,
            port_bans.c.reference == sa.func.any(sa.bindparam("refs", list(references),
                                                              type_=postgresql.ARRAY(sa.String)))))
        return
    for chunk in _chunks(list(references), _CHUNK):
        conn.execute(port_bans.delete().where(port_bans.c.register == register, port_bans.c.reference.in_(chunk)))


def _existing(conn: sa.Connection, register: str, references: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(list(references), _CHUNK):
        found.update(conn.execute(sa.select(port_bans.c.reference).where(
            port_bans.c.register == register, port_bans.c.reference.in_(chunk))).scalars())
    return found


_COLUMNS = ("register", "reference", "subject_hash", "scope", "banned_from", "banned_until", "feed_sequence")


def _insert(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    if conn.dialect.name == "postgresql":
        # COPY: a 100 000-ban snapshot must load in 5 s (issue 4). A pipelined executemany (what
        # release_service's batch issue uses) took about 8 s for 100 000 rows here; COPY takes well
        # under one, in the same transaction (the driver connection under this SQLAlchemy connection).
        # The rows go as COPY text built here: every field is validated to hold no tab, newline or
        # backslash (references, port codes, hex hashes, ISO times, integers).
        driver = conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cur, cur.copy(f"COPY port_bans ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
            for chunk in _chunks(rows, 10000):
                copy.write("".join(
                    f"{r['register']}\t{r['reference']}\t{r['subject_hash']}\t{r['scope']}\t"
                    f"{r['banned_from'].isoformat()}\t{r['banned_until'].isoformat()}\t{r['feed_sequence']}\n"
                    for r in chunk))
        return
    for chunk in _chunks(rows, 20000):  # SQLite: one executemany per chunk
        conn.execute(port_bans.insert(), chunk)


def _count(conn: sa.Connection, feed: Feed) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(port_bans)
                            .where(port_bans.c.register == feed.register)).scalar_one())


def ban_consequences(conn: sa.Connection, new_rows: list[dict[str, Any]], now: datetime) -> tuple[int, int]:
    """A ban newly in effect (load, amendment, sweep): the person's badges deactivated at once (any scope),
    each live nomination at a terminal the ban applies to alerted (identity.bans.alerts; a row with
    ``scope_before``, ``_acting``, only where it widened). Runs in the caller's transaction; rows not in
    effect at ``now`` are skipped.

    The persons are taken in ascending id order, the order every writer that locks more than one person
    must use (review 78, finding 2). ``deactivate_for_ban`` locks each person's row (then the badges)
    until the commit, so this transaction holds many person locks at once. Two loads, or a load and a
    sweep, cannot meet here today (both hold ``LOAD_LOCK_ID`` first), but any other writer that takes two
    person locks in another order would deadlock against a load holding them in the order the join
    happened to return. Python orders UUIDs by their 128-bit value, as PostgreSQL orders ``uuid``, so
    a writer locking with ``ORDER BY id`` takes the same order."""
    in_effect: dict[str, list[Acting]] = {}
    for r in new_rows:
        if r["banned_from"] <= now < r["banned_until"]:
            acting = Acting(r["reference"], r["scope"], r.get("scope_before"))
            in_effect.setdefault(r["subject_hash"], []).append(acting)
    if not in_effect:
        return 0, 0
    # One join on the indexed hashes (persons with a national number are few next to the list),
    # rather than 100 000 hashes sent as parameters.
    people = sorted(((pid, h) for pid, h in conn.execute(
        sa.select(persons.c.id, persons.c.national_id_hash)
        .join(port_bans, port_bans.c.subject_hash == persons.c.national_id_hash).distinct()) if h in in_effect),
        key=lambda p: p[0])
    deactivated = 0
    hits: list[NominationHit] = []
    for person_id, subject in people:
        bans = in_effect[subject]
        deactivated += len(deactivate_for_ban(conn, person_id, reference=bans[0].reference, now=now))
        hits += live_nominations_of(conn, person_id, bans, now)
    return deactivated, raise_alerts(conn, hits, now)


def _chunks(items: Sequence[Any] | list[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

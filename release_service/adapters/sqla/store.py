"""Release rights in SQL (SQLAlchemy Core). Repositories flush; only the unit of work commits."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement

from quaygate.hotsql import HotStatement, listed, text_array
from quaygate.invalidation import RIGHTS, touch
from quaygate.schema import gate_decisions, organisations, release_events, release_parties, releases, transfers
from release_service.domain.errors import DomainError, ErrorCode
from release_service.domain.gate import FACE_ATTACKS
from release_service.domain.iso6346 import ContainerNumber
from release_service.domain.parties import Actor, OrgKind
from release_service.domain.plates import Plate
from release_service.domain.release import (
    KEY_CHARACTERS,
    LIVE_STATES,
    PRE_GATE_STATES,
    VESSEL_CALL_FOLDS,
    DriverResponse,
    Event,
    FaceAgainst,
    LastRight,
    Light,
    LightStatus,
    Nomination,
    RefusalReason,
    ReleaseRight,
    Slot,
    State,
    Transfer,
    TransferState,
)
from release_service.ports import ContestedRight, CustomsHold, ReleaseFilter, StoredEvent

T = TypeVar("T")

# Kinds that see every right in their remit rather than only those they are party to.
_SEE_BY_TERMINAL = OrgKind.TERMINAL


class StaleRight(Exception):
    """The row changed under us although we held its lock: a bug, never a user error."""


# Prebuilt statements of the gate commit's hot path: built and cache-keyed once, not per call.
_PENDING = transfers.alias("pending")
# Whether the right's holder is active (port security's word, review 130): the gate refuses it otherwise.
HOLDER_ACTIVE = (sa.select(organisations.c.active).where(organisations.c.id == releases.c.holder_organisation_id)
                 .correlate(releases).scalar_subquery().label("holder_active"))
# A right with its pending transfer, the columns of the latter prefixed t_, and its holder's status.
_PENDING_COLUMNS = (releases, *[c.label("t_" + c.name) for c in _PENDING.c], HOLDER_ACTIVE)
_PENDING_JOIN = releases.outerjoin(_PENDING, _PENDING.c.pending_key == releases.c.id)
_WITH_PENDING = sa.select(*_PENDING_COLUMNS).select_from(_PENDING_JOIN)


def _own_face_against(face: Any) -> sa.ColumnElement[bool]:
    """``gate.own_face_against`` on a ``gate_decisions.face`` column, in SQL: an image the service compared and
    found another person's (not matched, or beyond its tolerance), or caught as an attack. The gate judges
    what is read again; this only finds it."""
    distance, tolerance, unavailable = face["distance"].as_float(), face["tolerance"].as_float(), face["unavailable"]
    return sa.and_(face["kind"].as_string() == "image", sa.or_(
        *(unavailable.as_string() == attack for attack in sorted(FACE_ATTACKS)),  # no list: hot statements
        sa.and_(distance.is_not(None), sa.or_(face["matched"].as_boolean().is_not(True), distance > tolerance))))


# The last gate-in decision on the right whose own face the service found another person's (review 148):
# read with the right by the gate's statements, as ``fa_`` columns (``face_against_of``). A decision that only
# kept such evidence of an earlier one (``against``) is not one: the window runs from the service's own
# judgement, not from each time a gate asked again. On PostgreSQL one probe of the partial index of those
# decisions (ix_gate_decisions_face_against, review 149 finding 5), whose predicate this one is, written out.
_JUDGED = gate_decisions.alias("judged")
_AGAINST = gate_decisions.alias("face_against")


class _JudgedFaceAgainst(ColumnElement[bool]):
    """``direction = 'in'`` and ``_own_face_against`` on the ``judged`` decisions, its constants (the JSON keys,
    the values compared) written into the SQL rather than sent as parameters: a statement the driver prepared
    is planned once for any right (a generic plan), and PostgreSQL uses a partial index then only when the
    query's own predicate, constants and all, is the index's (quaygate.schema.FACE_AGAINST_SQL, held to it by
    tests/test_gate_face_against_index.py)."""

    inherit_cache = True
    type = sa.Boolean()


@compiles(_JudgedFaceAgainst)
def _judged_face_against(element: _JudgedFaceAgainst, compiler: Any, **kw: Any) -> str:
    kw["literal_binds"] = True
    return f"({compiler.process(sa.and_(_JUDGED.c.direction == 'in', _own_face_against(_JUDGED.c.face)), **kw)})"


_LAST_AGAINST = (sa.select(_JUDGED.c.id)
                 .where(_JUDGED.c.release_id == releases.c.id, _JudgedFaceAgainst())
                 .order_by(_JUDGED.c.decided_at.desc(), _JUDGED.c.id).limit(1)
                 .correlate(releases).scalar_subquery())
FACE_AGAINST_ON = _AGAINST.c.id == _LAST_AGAINST
FACE_AGAINST_FROM = _AGAINST
FACE_AGAINST = (_AGAINST.c.id.label("fa_id"), _AGAINST.c.decided_at.label("fa_at"),
                _AGAINST.c.face.label("fa_face"), _AGAINST.c.nomination.label("fa_nomination"))


def face_against_of(row: Any) -> FaceAgainst | None:
    """The ``fa_`` columns of a row read with ``FACE_AGAINST`` (a mapping); None when there are none."""
    if row.get("fa_id") is None:
        return None
    nomination = row["fa_nomination"]
    return FaceAgainst(row["fa_id"], row["fa_at"], dict(row["fa_face"]),
                       tuple(nomination) if isinstance(nomination, list) else None)


# A right as the gate's commit reads it: ``_WITH_PENDING`` and its ``face_against``.
_AT_GATE = sa.select(*_PENDING_COLUMNS, *FACE_AGAINST).select_from(_PENDING_JOIN.outerjoin(_AGAINST, FACE_AGAINST_ON))
# On the driver's cursor (quaygate.hotsql): building the result's metadata of some fifty columns cost
# more than the statement.
_GET = HotStatement(_WITH_PENDING.where(releases.c.id == sa.bindparam("release_id")))
# Every live right of some containers: a gate commit decides on these, read afresh.
_BY_CONTAINERS = _AT_GATE.where(releases.c.container_number.in_(sa.bindparam("containers", expanding=True)),
                                releases.c.state != State.DELETED.value)
_BY_CONTAINERS_PG = HotStatement(_AT_GATE.where(releases.c.container_number == sa.any_(text_array("containers")),
                                                releases.c.state != State.DELETED.value))
# Issues on one container one after the other (``serialise_issues``): advisory locks of class ISSUE_LOCK_CLASS
# ("QGIS"), one per bucket, acquired in the order of the sorted subquery.
ISSUE_BUCKETS = 1024
ISSUE_LOCK_CLASS = 0x51474953
_ISSUE_LOCKS = sa.text("SELECT count(pg_advisory_xact_lock(:class_id, b)) FROM "
                       "(SELECT b FROM unnest(CAST(:buckets AS integer[])) AS b ORDER BY b) AS sorted"
                       ).bindparams(class_id=ISSUE_LOCK_CLASS)
# Locking is a statement of its own, never FOR UPDATE on _GET: after waiting for the lock, PostgreSQL
# re-checks the locked releases row at its newest version but keeps the joined transfer row from the
# statement's older snapshot (EvalPlanQual re-fetches only the locked rows). Two accepts of one pending
# transfer then both saw it pending and both went through. Locked first, _GET then reads with a fresh
# snapshot (READ COMMITTED), after whatever the lock's previous holder committed.
_LOCK = sa.select(releases.c.id).where(releases.c.id == sa.bindparam("release_id")).with_for_update()
# UPDATE .. SET <the columns given>, event_seq = event_seq + :_events WHERE id = :_id AND version =
# :_version RETURNING event_seq: a stale copy updates nothing; the new events' seqs come back with it
# (the row's own counter, fresh under its lock, where a SELECT max(seq) could read an older snapshot).
_SAVE = (releases.update()
         .where(releases.c.id == sa.bindparam("_id"), releases.c.version == sa.bindparam("_version"))
         .values(event_seq=releases.c.event_seq + sa.bindparam("_events"))
         .returning(releases.c.event_seq))


def _shows_as(state: State, now: datetime) -> ColumnElement[bool]:
    """The rows whose state as the answer shows it now (``ReleaseRight.effective_state``) is ``state``: a
    right before the gate whose window has passed is expired before the sweeper writes it (review 159,
    finding 2), so ``expired`` takes it and ``active`` or ``nominated`` does not."""
    lapsed = sa.and_(releases.c.state.in_(sorted(s.value for s in PRE_GATE_STATES)), releases.c.valid_until <= now)
    if state is State.EXPIRED:
        return sa.or_(releases.c.state == state.value, lapsed)
    if state in PRE_GATE_STATES:
        return sa.and_(releases.c.state == state.value, releases.c.valid_until > now)
    return releases.c.state == state.value


# The key's fold (``VESSEL_CALL_FOLDS``) in SQL: the letters it makes two or three of (the sharp s, the
# ligatures) are replaced; a letter it makes one of is matched where that one stands; what it drops is
# matched anywhere around them. Replacing all 43 letters nests replace() too deep for SQLite's parser.
_FOLD_REPLACED = {c: f for c, f in VESSEL_CALL_FOLDS.items() if len(f) > 1}
_FOLD_MATCHED = {k: "[" + k + "".join(c for c, f in VESSEL_CALL_FOLDS.items() if f == k) + "]"
                 for k in KEY_CHARACTERS}
_FOLD_DROPPED = "[^" + KEY_CHARACTERS + "".join(c for c, f in VESSEL_CALL_FOLDS.items() if len(f) == 1) + "]*"


def _vessel_call_is(key: str) -> ColumnElement[bool]:
    """The rows whose vessel call's key (``vessel_call_key``) is ``key``, alike on SQLite and PostgreSQL
    (review 159, finding 3): the call folded as the key folds it, then matched to the key's letters and
    digits in order, whatever the key drops lying around them. Not upper(): PostgreSQL's follows the
    database's collation (a Turkish one makes 'i' an 'İ'), SQLite's knows ASCII alone. The regular
    expression is PostgreSQL's ``~``, and on SQLite Python's ``re.search`` (SQLAlchemy registers REGEXP on
    every connection). The call is keyed in no column: ``active_key`` holds it for live rights only, and as
    written for those keyed before review 99."""
    if not key:
        return sa.false()
    folded: ColumnElement[str] = releases.c.vessel_call
    for letters, fold in _FOLD_REPLACED.items():
        folded = sa.func.replace(folded, letters, fold, type_=sa.String)
    return folded.regexp_match(
        "^" + _FOLD_DROPPED + _FOLD_DROPPED.join(_FOLD_MATCHED[k] for k in key) + _FOLD_DROPPED + "$")


class SqlReleaseStore:
    def __init__(self, conn: sa.Connection, reads: Reads | None = None) -> None:
        self._conn = conn
        self._dialect = conn.dialect.name
        self._reads = reads

    # ---- reads -------------------------------------------------------------------------------

    def get(self, release_id: uuid.UUID, *, for_update: bool = False) -> ReleaseRight | None:
        """The right and its pending transfer, in one prebuilt statement (a gate commit loads a right on
        its hot path); ``for_update`` on PostgreSQL locks the right first, in a statement of its own
        (see ``_LOCK``). SQLite's BEGIN IMMEDIATE already serialises writers."""
        params = {"release_id": release_id}
        if for_update and self._dialect == "postgresql" and self._conn.execute(_LOCK, params).first() is None:
            return None
        found = _GET.execute(self._conn, params).first()
        return None if found is None else self._read(found._asdict())

    def of_containers(self, containers: Sequence[str]) -> list[ReleaseRight]:
        """Every right of these containers but deleted ones, unlocked, in one statement (a gate commit
        decides on them as they are now, and writes only at the version it read)."""
        if not containers:
            return []
        if self._dialect == "postgresql":
            found = _BY_CONTAINERS_PG.execute(self._conn, {"containers": listed(containers)}).all()
            rows = [r._asdict() for r in found]
        else:
            rows = list(self._conn.execute(_BY_CONTAINERS, {"containers": list(containers)}).mappings())
        return [self._read(row) for row in rows]

    def _read(self, row: Any) -> ReleaseRight:
        return read_right(row, self._reads)

    def get_by_transfer(self, transfer_id: uuid.UUID, *, for_update: bool = False) -> ReleaseRight | None:
        release_id = self._conn.execute(
            sa.select(transfers.c.release_id).where(transfers.c.id == transfer_id)
        ).scalar_one_or_none()
        return None if release_id is None else self.get(release_id, for_update=for_update)

    def list_visible(self, actor: Actor, flt: ReleaseFilter, now: datetime) -> list[ReleaseRight]:
        stmt = sa.select(releases)
        if actor.person_id is not None and actor.organisation_id is None:
            stmt = stmt.where(releases.c.driver_person_id == actor.person_id)
        elif actor.is_admin or actor.kind is OrgKind.CUSTOMS:
            pass
        elif actor.kind is _SEE_BY_TERMINAL:
            stmt = stmt.where(releases.c.terminal == (actor.terminal_code or ""))
        else:
            parties = sa.select(release_parties.c.release_id).where(
                release_parties.c.organisation_id == actor.organisation_id
            )
            stmt = stmt.where(releases.c.id.in_(parties))
        if flt.state is not None:
            stmt = stmt.where(_shows_as(flt.state, now))
        if flt.container_number is not None:
            stmt = stmt.where(releases.c.container_number == flt.container_number)
        if flt.vessel_call is not None:
            stmt = stmt.where(_vessel_call_is(flt.vessel_call))
        if flt.terminal is not None:
            stmt = stmt.where(releases.c.terminal == flt.terminal)
        if flt.bill_of_lading:
            stmt = stmt.where(releases.c.bill_of_lading == flt.bill_of_lading)
        if flt.cursor is not None:
            at, last_id = flt.cursor
            stmt = stmt.where(
                sa.or_(releases.c.created_at > at, sa.and_(releases.c.created_at == at, releases.c.id > last_id))
            )
        stmt = stmt.order_by(releases.c.created_at, releases.c.id).limit(flt.limit)
        rows = self._conn.execute(stmt).mappings().all()
        ids = [r["id"] for r in rows]
        pending = {}
        if ids:
            for t in self._conn.execute(sa.select(transfers).where(transfers.c.pending_key.in_(ids))).mappings():
                pending[t["release_id"]] = _transfer_from_row(t)
        return [_right_from_row(r, pending.get(r["id"])) for r in rows]

    def events(self, release_id: uuid.UUID) -> list[StoredEvent]:
        rows = self._conn.execute(
            sa.select(release_events).where(release_events.c.release_id == release_id).order_by(release_events.c.seq)
        ).mappings()
        return [StoredEvent(r["id"], r["release_id"], r["seq"], r["type"], r["actor"], r["data"], r["at"])
                for r in rows]

    def transfers(self, release_id: uuid.UUID) -> list[Transfer]:
        rows = self._conn.execute(
            sa.select(transfers).where(transfers.c.release_id == release_id).order_by(transfers.c.created_at)
        ).mappings()
        return [_transfer_from_row(r) for r in rows]

    def holders_chain(self, release_id: uuid.UUID) -> list[uuid.UUID]:
        right = self.get(release_id)
        if right is None:
            return []
        chain = [right.first_party_organisation_id]
        for t in self.transfers(release_id):
            if t.state is TransferState.ACCEPTED:
                chain.append(t.to_organisation_id)
        return chain

    def has_been_party(self, release_id: uuid.UUID, organisation_id: uuid.UUID) -> bool:
        return self._conn.execute(
            sa.select(sa.literal(1)).where(
                release_parties.c.release_id == release_id, release_parties.c.organisation_id == organisation_id
            )
        ).first() is not None

    def last_rights(self, containers: Sequence[str]) -> dict[str, LastRight]:
        """Each container's last right by issue (any state, deleted too) of those with customs' own hold that
        did not take the container out, else its last right: one row a container, through the container's
        index. The hold stays on the container whatever became of its right (review 149, finding 3): a right
        issued after another, unheld, still takes it. A deleted right whose light still shows a hold it only
        carried (``ReleaseRight.customs_carried``; deleted as any new right: review 152, finding 1) is not
        read: the hold stays on the right it came from, and customs' lift there does not reach a deleted
        right (``of_containers``), so its copy would hand on a hold customs has lifted."""
        t = releases.c
        found: dict[str, LastRight] = {}
        carried_deleted = sa.and_(t.state == State.DELETED.value, t.customs_set_by.is_not(None),
                                  t.customs_status != LightStatus.GREEN.value, t.customs_at < t.created_at)
        standing = sa.case((sa.and_(t.customs_set_by.is_not(None), t.customs_status != LightStatus.GREEN.value,
                                    t.state.not_in([State.GATED_IN.value, State.COMPLETED.value])), 0), else_=1)
        for chunk in _chunks(sorted(set(containers)), 5000):
            rank = sa.func.row_number().over(partition_by=t.container_number,
                                             order_by=(standing, t.created_at.desc(), t.id.desc())).label("rank")
            ranked = sa.select(t.id, t.container_number, t.state, t.customs_status, t.customs_reason, t.customs_at,
                               t.customs_set_by, rank).where(
                t.container_number.in_(chunk), sa.not_(sa.func.coalesce(carried_deleted, False))).subquery()
            for row in self._conn.execute(sa.select(ranked).where(ranked.c.rank == 1)):
                found[row.container_number] = LastRight(row.id, State(row.state), Light(
                    LightStatus(row.customs_status), row.customs_reason, row.customs_at, row.customs_set_by))
        return found

    def customs_holds_by(self, organisation_id: uuid.UUID) -> list[CustomsHold]:
        t = releases.c
        return [CustomsHold(r.id, r.container_number, r.customs_status) for r in self._conn.execute(
            sa.select(t.id, t.container_number, t.customs_status).where(
                t.customs_set_by == organisation_id, t.customs_status != LightStatus.GREEN.value,
                t.state.in_(sorted(s.value for s in LIVE_STATES))).order_by(t.id))]

    def due_to_lapse(self, now: datetime, limit: int) -> list[uuid.UUID]:
        return list(
            self._conn.execute(
                sa.select(releases.c.id)
                .where(releases.c.state.in_([State.ACTIVE.value, State.NOMINATED.value]))
                .where(releases.c.valid_until <= now)
                .limit(limit)
            ).scalars()
        )

    # ---- writes ------------------------------------------------------------------------------

    def add(self, right: ReleaseRight) -> list[StoredEvent]:
        created, events = self.add_many([right])
        if right.id not in created:
            raise DomainError(
                ErrorCode.ACTIVE_RIGHT_EXISTS,
                f"A live release right already exists for {right.container.value} on vessel call {right.vessel_call}.",
            )
        return events

    def containers_with_others(self, containers: Sequence[str], ids: set[uuid.UUID]) -> set[str]:
        wanted = sorted(set(containers))
        shared: set[str] = set()
        for chunk in _chunks(wanted, 5000):
            shared.update(c for rid, c in self._conn.execute(
                sa.select(releases.c.id, releases.c.container_number).where(releases.c.container_number.in_(chunk)))
                if rid not in ids)
        return shared

    def serialise_issues(self, containers: Sequence[str]) -> None:
        """PostgreSQL: a transaction-scoped advisory lock per bucket of container numbers (at most
        ``ISSUE_BUCKETS``, so a 10 000-right batch takes no more than that from the shared lock table),
        taken in ascending order in one statement: two issuers lock alike, and neither waits for the other
        while holding a bucket the other wants first. SQLite has one writer at a time already."""
        if self._dialect != "postgresql" or not containers:
            return
        buckets = sorted({zlib.crc32(c.encode()) % ISSUE_BUCKETS for c in containers})
        self._conn.execute(_ISSUE_LOCKS, {"buckets": buckets})

    def add_many(self, rights: Sequence[ReleaseRight]) -> tuple[set[uuid.UUID], list[StoredEvent]]:
        if not rights:
            return set(), []
        # In the order of their keys: two batches inserting some of the same keys wait for each other in
        # one order, never each for the other's (a deadlock PostgreSQL would break by aborting one).
        rows = sorted(({**_row_from_right(r), "event_seq": len(r.pending_events)} for r in rights),
                      key=lambda row: row["active_key"] or "")
        # INSERT .. ON CONFLICT DO NOTHING: the unique active_key decides, atomically, which of
        # several concurrent issuers gets the container (no check-then-act). The ids are ours
        # (generated here), so the rows now present under them are exactly the ones we created.
        # A plain executemany (psycopg pipelines it) is several times faster than RETURNING with
        # multi-VALUES statements, which psycopg must re-parse for every page.
        insert = postgresql.insert(releases) if self._dialect == "postgresql" else sqlite.insert(releases)
        self._conn.execute(insert.on_conflict_do_nothing(), rows)
        created: set[uuid.UUID] = set()
        ids = [r.id for r in rights]
        for i in range(0, len(ids), 5000):
            created.update(self._conn.execute(
                sa.select(releases.c.id).where(releases.c.id.in_(ids[i : i + 5000]))).scalars())
        kept = [r for r in rights if r.id in created]
        for r in kept:
            touch(self._conn, RIGHTS, r.container.value)
        parties: list[dict[str, Any]] = []
        for r in kept:
            parties.append({"organisation_id": r.issuer_organisation_id, "release_id": r.id, "relation": "issuer"})
            if r.holder_organisation_id != r.issuer_organisation_id:
                parties.append({"organisation_id": r.holder_organisation_id, "release_id": r.id, "relation": "holder"})
        for chunk in _chunks(parties, 2000):
            self._conn.execute(release_parties.insert(), chunk)
        events = self._insert_events(kept, start_seq={r.id: 0 for r in kept})
        return created, events

    def mark_contested(self, keys: Sequence[str], issuer: uuid.UUID, now: datetime) -> list[ContestedRight]:
        if not keys:
            return []
        t = releases.c
        held = sa.select(t.container_number, t.issuer_organisation_id).where(
            t.active_key.in_(list(keys)), t.issuer_organisation_id != issuer)
        return self._marked(releases.update().where(
            sa.tuple_(t.container_number, t.issuer_organisation_id).in_(held), t.contested_at.is_(None),
            t.state != State.COMPLETED.value,
        ), now)

    def inherit_contest(self, ids: Sequence[uuid.UUID], now: datetime) -> list[ContestedRight]:
        if not ids:
            return []
        t, earlier = releases.c, releases.alias("earlier").c
        return self._marked(releases.update().where(
            t.id.in_(list(ids)), t.contested_at.is_(None),
            sa.exists().where(earlier.container_number == t.container_number,
                              earlier.issuer_organisation_id == t.issuer_organisation_id,
                              earlier.contested_at.is_not(None), earlier.state != State.COMPLETED.value,
                              earlier.id != t.id)
        ), now)

    def _marked(self, update: sa.Update, now: datetime) -> list[ContestedRight]:
        """The rights ``update`` selects, marked contested at ``now`` as a change of the right: at its next
        version (review 130). A gate commit reads its rights unlocked and writes its move only at the
        version it read (gate_move.py); a mark landing between that read and the write must make the
        write update nothing, so that the gate reads again and answers ``container_contested``, instead
        of letting the truck in on a right the line was just refused over."""
        t = releases.c
        update = update.values(contested_at=now, version=t.version + 1, updated_at=now)
        marked = [ContestedRight(r.id, r.container_number, r.terminal, r.vessel_call, r.issuer_organisation_id)
                  for r in self._conn.execute(update.returning(
                      t.id, t.container_number, t.terminal, t.vessel_call, t.issuer_organisation_id))]
        for container in sorted({m.container for m in marked}):
            touch(self._conn, RIGHTS, container)
        return marked

    def save(self, right: ReleaseRight) -> list[StoredEvent]:
        values = right_values(right)
        last_seq = self._conn.execute(_SAVE, {"_id": right.id, "_version": right.version,
                                              "_events": len(right.pending_events), **values}).scalar()
        if last_seq is None:
            raise StaleRight(str(right.id))
        touch(self._conn, RIGHTS, right.container.value)
        right.version += 1
        self._save_transfers(right)
        return self._insert_events([right], start_seq={right.id: last_seq - len(right.pending_events)})

    def _save_transfers(self, right: ReleaseRight) -> None:
        """The transfers ``right`` changed, and the party rows they change."""
        if right.changed_transfers:
            for t in right.changed_transfers:
                self._upsert_transfer(t)
                if t.state is TransferState.PENDING:
                    self._add_party(right.id, t.to_organisation_id, "recipient")
                elif t.state is not TransferState.ACCEPTED:
                    self._drop_recipient(right.id, t.to_organisation_id)
            # The holder changes only by an accepted transfer (ReleaseRight.accept_transfer), so the
            # party rows need a look only when a transfer changed; a gate move saves a statement.
            self._add_party(right.id, right.holder_organisation_id, "holder")
        right.changed_transfers.clear()

    def claim_gate_in(self, right: ReleaseRight, *, expected: State) -> list[StoredEvent] | None:
        """Single use (STYLE.md #4): ``UPDATE .. WHERE state = :expected``; one caller wins."""
        result = self._conn.execute(
            releases.update()
            .where(
                releases.c.id == right.id,
                releases.c.state == expected.value,
                # A refusal committed after this gate read the right still wins (no check-then-act).
                sa.or_(releases.c.nomination_response.is_(None),
                       releases.c.nomination_response != DriverResponse.REFUSED.value),
            )
            .values(state=State.GATED_IN.value, gate_in_at=right.gate_in_at, updated_at=right.gate_in_at,
                    version=releases.c.version + 1, event_seq=releases.c.event_seq + len(right.pending_events))
            .returning(releases.c.event_seq)
        )
        last_seq = result.scalar()
        if last_seq is None:
            return None
        touch(self._conn, RIGHTS, right.container.value)
        right.version += 1
        self._save_transfers(right)  # a transfer still pending is cancelled by the gate-in
        return self._insert_events([right], start_seq={right.id: last_seq - len(right.pending_events)})

    def _upsert_transfer(self, t: Transfer) -> None:
        values = {
            "release_id": t.release_id,
            "from_organisation_id": t.from_organisation_id,
            "to_organisation_id": t.to_organisation_id,
            "state": t.state.value,
            "pending_key": t.release_id if t.state is TransferState.PENDING else None,
            "created_at": t.created_at,
            "decided_at": t.decided_at,
        }
        updated = self._conn.execute(transfers.update().where(transfers.c.id == t.id).values(**values))
        if updated.rowcount == 0:
            try:
                with self._conn.begin_nested():
                    self._conn.execute(transfers.insert().values(id=t.id, **values))
            except sa.exc.IntegrityError as exc:
                raise DomainError(ErrorCode.TRANSFER_PENDING, "A transfer of this right is already pending.") from exc

    def _add_party(self, release_id: uuid.UUID, organisation_id: uuid.UUID, relation: str) -> None:
        """A party row (who may see the right: ``has_been_party``, ``list_visible``). A holder's row
        says so for good, over the ``recipient`` row its offer left; a recipient's row never demotes
        an organisation that held the right before."""
        insert = postgresql.insert(release_parties) if self._dialect == "postgresql" else sqlite.insert(release_parties)
        stmt = insert.values(organisation_id=organisation_id, release_id=release_id, relation=relation)
        if relation == "holder":
            self._conn.execute(stmt.on_conflict_do_update(
                index_elements=[release_parties.c.organisation_id, release_parties.c.release_id],
                set_={"relation": relation}, where=release_parties.c.relation == "recipient"))
        else:
            self._conn.execute(stmt.on_conflict_do_nothing())

    def _drop_recipient(self, release_id: uuid.UUID, organisation_id: uuid.UUID) -> None:
        """An offer that ended without acceptance (declined, withdrawn, cancelled) leaves the company it
        was made to nothing to read: it sees the rights it holds or held (``common.can_see``), not those
        it was once offered. An organisation that held the right before keeps its ``holder`` row."""
        self._conn.execute(release_parties.delete().where(
            release_parties.c.release_id == release_id, release_parties.c.organisation_id == organisation_id,
            release_parties.c.relation == "recipient"))

    def _insert_events(self, rights: Sequence[ReleaseRight], start_seq: dict[uuid.UUID, int]) -> list[StoredEvent]:
        stored: list[StoredEvent] = []
        for r in rights:
            seq = start_seq[r.id]
            for e in r.pending_events:
                seq += 1
                stored.append(StoredEvent(uuid.uuid4(), r.id, seq, e.type, e.actor, e.data, e.at))
            r.pending_events.clear()
        rows = [
            {"id": s.id, "release_id": s.release_id, "seq": s.seq, "type": s.type, "actor": s.actor,
             "data": s.data, "at": s.at}
            for s in stored
        ]
        for chunk in _chunks(rows, 2000):
            self._conn.execute(release_events.insert(), chunk)
        return stored


def _chunks(rows: list[T], size: int) -> list[list[T]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


# (id, version) -> the row as ``get`` read it: one dict per unit of work (SqlUnitOfWork), shared by its
# stores, so that a save knows what changed since the read.
Reads = dict[tuple[uuid.UUID, int], dict[str, Any]]


def read_right(row: Any, reads: Reads | None) -> ReleaseRight:
    """A right from a row of ``_WITH_PENDING`` (a mapping); with ``reads``, what the row held at this
    version is kept there: gate_move.py writes what changed."""
    pending = None
    if row["t_id"] is not None:
        pending = _transfer_from_row({c.name: row["t_" + c.name] for c in _PENDING.c})
    right = _right_from_row(row, pending)
    if reads is not None:
        reads[(right.id, right.version)] = _row_from_right(right)
    return right


def right_values(right: ReleaseRight, reads: Reads | None = None) -> dict[str, Any]:
    """What saving ``right`` writes to its row (its id and creation stay; the version is the next).
    With ``reads`` holding the row as read at this version: only what changed since, and the version."""
    values = _row_from_right(right)
    values.pop("id")
    values.pop("created_at")
    if values["active_key"] is not None:
        # A live right's key is written once, at its insert (its container and vessel call never change),
        # and cleared when it ends. Not rewritten: a row keyed before the key's form changed (the vessel
        # call compared as written, until review 99) keeps its key, so two live rights that form let in
        # cannot meet on the unique index at a later save (a failed write, not a right refused).
        values.pop("active_key")
    read = reads.get((right.id, right.version)) if reads is not None else None
    if read is not None:
        values = {k: v for k, v in values.items() if read[k] != v}
    values["version"] = right.version + 1
    return values


def _row_from_right(r: ReleaseRight) -> dict[str, Any]:
    n = r.nomination
    return {
        "id": r.id,
        "container_number": r.container.value,
        "bill_of_lading": r.bill_of_lading,
        "vessel_call": r.vessel_call,
        "terminal": r.terminal,
        "issuer_organisation_id": r.issuer_organisation_id,
        "first_party_organisation_id": r.first_party_organisation_id,
        "holder_organisation_id": r.holder_organisation_id,
        "state": r.state.value,
        "blocked": r.blocked,
        "active_key": r.active_key,
        "commercial_status": r.commercial.status.value,
        "commercial_reason": r.commercial.reason,
        "commercial_at": r.commercial.set_at,
        "customs_status": r.customs.status.value,
        "customs_reason": r.customs.reason,
        "customs_at": r.customs.set_at,
        "customs_set_by": r.customs.set_by,
        "terminal_status": r.terminal_light.status.value,
        "terminal_reason": r.terminal_light.reason,
        "terminal_at": r.terminal_light.set_at,
        "valid_from": r.valid_from,
        "valid_until": r.valid_until,
        "driver_person_id": n.driver_person_id if n else None,
        "plate_text": n.plate.text if n else None,
        "plate_country": n.plate.country if n else None,
        "trailer_plate_text": n.trailer_plate.text if n and n.trailer_plate else None,
        "trailer_plate_country": n.trailer_plate.country if n and n.trailer_plate else None,
        "slot_start": n.slot.start if n and n.slot else None,
        "slot_end": n.slot.end if n and n.slot else None,
        "nominated_by": n.nominated_by if n else None,
        "nominated_at": n.nominated_at if n else None,
        "nomination_response": n.response.value if n else None,
        "nomination_response_reason": n.response_reason.value if n and n.response_reason else None,
        "nomination_responded_at": n.responded_at if n else None,
        "gate_in_at": r.gate_in_at,
        "gate_out_at": r.gate_out_at,
        "version": r.version,
        "created_at": r.created_at,
        "updated_at": _last_change(r),
    }


def _last_change(r: ReleaseRight) -> datetime:
    return r.pending_events[-1].at if r.pending_events else r.created_at


def _right_from_row(row: Any, pending: Transfer | None) -> ReleaseRight:
    nomination = None
    if row["driver_person_id"] is not None:
        trailer = None
        if row["trailer_plate_text"]:
            trailer = Plate(row["trailer_plate_text"], row["trailer_plate_country"])
        slot = Slot(row["slot_start"], row["slot_end"]) if row["slot_start"] else None
        nomination = Nomination(
            driver_person_id=row["driver_person_id"],
            plate=Plate(row["plate_text"], row["plate_country"]),
            trailer_plate=trailer,
            slot=slot,
            nominated_by=row["nominated_by"],
            nominated_at=row["nominated_at"],
            response=DriverResponse(row["nomination_response"] or DriverResponse.PENDING.value),
            response_reason=RefusalReason(row["nomination_response_reason"])
            if row["nomination_response_reason"] else None,
            responded_at=row["nomination_responded_at"],
        )
    return ReleaseRight(
        id=row["id"],
        container=ContainerNumber(row["container_number"]),
        bill_of_lading=row["bill_of_lading"],
        vessel_call=row["vessel_call"],
        terminal=row["terminal"],
        issuer_organisation_id=row["issuer_organisation_id"],
        first_party_organisation_id=row["first_party_organisation_id"],
        holder_organisation_id=row["holder_organisation_id"],
        state=State(row["state"]),
        blocked=row["blocked"],
        commercial=Light(LightStatus(row["commercial_status"]), row["commercial_reason"], row["commercial_at"]),
        customs=Light(LightStatus(row["customs_status"]), row["customs_reason"], row["customs_at"],
                      row["customs_set_by"]),
        terminal_light=Light(LightStatus(row["terminal_status"]), row["terminal_reason"], row["terminal_at"]),
        valid_from=row["valid_from"],
        valid_until=row["valid_until"],
        created_at=row["created_at"],
        nomination=nomination,
        pending_transfer=pending,
        gate_in_at=row["gate_in_at"],
        gate_out_at=row["gate_out_at"],
        contested_at=row.get("contested_at"),
        # Read by the gate's statements (``HOLDER_ACTIVE``); a list or a query that does not read it
        # decides nothing at the gate.
        holder_active=bool(row.get("holder_active", True)),
        face_against=face_against_of(row),  # read by the gate's commit (``_AT_GATE``) only
        version=row["version"],
    )


def _transfer_from_row(row: Any) -> Transfer:
    return Transfer(
        id=row["id"],
        release_id=row["release_id"],
        from_organisation_id=row["from_organisation_id"],
        to_organisation_id=row["to_organisation_id"],
        state=TransferState(row["state"]),
        created_at=row["created_at"],
        decided_at=row["decided_at"],
    )


__all__ = ["Reads", "SqlReleaseStore", "StaleRight", "Event", "right_values"]

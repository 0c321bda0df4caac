"""A gate decision and the gate move it made, written by one statement (PostgreSQL; issue 5's commit).

A gate commit reads its container's rights without a lock, decides, moves the right in the domain, then
writes everything at once, only if the right is still at the version it read and the other rights of the
container are still those it read, each at the version read (``ports.RightsRead``, review 174 finding 2):

    WITH moved   AS (UPDATE releases SET <the right as moved>, version = :version + 1,
                     event_seq = event_seq + n WHERE id = :id AND version = :version
                     AND (SELECT string_agg(id || ':' || version, ',' ORDER BY id) FROM releases
                          WHERE container_number = ANY(:containers) AND state <> 'deleted')
                         = :read                    -- the rights read, this one included
                     RETURNING id, event_seq),
         events  AS (INSERT INTO release_events  SELECT ... FROM moved),   -- seq from the row's counter
         audited AS (INSERT INTO audit_log       SELECT ... FROM moved),   -- {"seq": .., **data}, txid
         hooks   AS (INSERT INTO webhook_deliveries SELECT ... FROM moved JOIN webhook_subscriptions
                     JOIN organisations ON organisations.id = organisation_id    -- by primary key
                     WHERE active AND organisations.active                      -- not deactivated
                     AND organisation_id = ANY(:audience) AND event_types ?| :patterns),
                                          -- payload || {"seq": ..}, due behind the right's queue
         decided AS (INSERT INTO gate_decisions  SELECT ... FROM moved),
         -- one for each audit entry the row carries (``split_entries``: a face match result the gate claimed):
         entry0  AS (INSERT INTO audit_log       SELECT ... FROM moved),
         -- only when the gate-in cancels an offer still pending (ReleaseRight.gate_in):
         ended   AS (UPDATE transfers SET state = 'cancelled', ... WHERE id = :t AND release_id = (moved)),
         unoffered AS (DELETE FROM release_parties WHERE ... relation = 'recipient')
    SELECT count(*) FROM moved

One statement is one transaction (autocommitted: no BEGIN, no COMMIT round trip) and atomic. Every
data-modifying CTE runs to completion (PostgreSQL docs 7.8.4) and reads ``moved``'s RETURNING rows,
so a right that changed since it was read (another gate, a block, a re-nomination: every change of a
right goes through a versioned UPDATE) updates nothing and inserts nothing: 0, the caller reads again.
So does a change of another right of the container (customs' hold on it, which holds this one too:
``gate.container_held``), or another line's right issued on it (``gate.container_contested``): the
decision rested on those rights as read, and neither touches this right's row. The check reads the
container's rights by their index in the same statement, no round trip of its own.
A twin request that recorded the same (terminal, request_id) first fails the decision's unique key,
which rolls the whole statement back, move included: ``DuplicateDecision``.

Under READ COMMITTED, two gates racing on one right both try the UPDATE; the second waits for the
first's row lock, re-checks ``version`` on the committed row (EvalPlanQual), finds it changed and
updates nothing. The other rights are checked on the statement's snapshot: a change of one that
commits after the statement began is ordered after the move (a hold set once the truck is in, held
at its gate-out; a right issued after the gate-in, which no longer holds the truck), as if it had
come a moment later. What was written statement by statement before (the save, the events, the audit and
the outbox in services/common.persist, the decision in ``SqlGateStore.record``), the same rows.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from quaygate.hotsql import HotStatement, listed, text_array
from quaygate.invalidation import RIGHTS, touch
from quaygate.schema import (
    JSON,
    UUID,
    UTCDateTime,
    audit_log,
    gate_decisions,
    organisations,
    release_events,
    release_parties,
    releases,
    transfers,
    webhook_deliveries,
    webhook_subscriptions,
)
from release_service.domain.release import ReleaseRight, State, Transfer, TransferState
from release_service.domain.webhooks import patterns_matching
from release_service.ports import BADGE_ALARM, FACE_CLAIM, ROW_ENTRIES, DuplicateDecision, PublishedEvent, RightsRead

from ..audit import WRITER_TXID, entry_params, insert_entry_from
from ..outbox import delivery_payload, due_behind
from .store import Reads, right_values

_DECISION_KEY = "uq_gate_decisions_terminal_request"
_statements: dict[tuple[int, tuple[str, ...], tuple[str, ...], bool, int], HotStatement] = {}
_audited: dict[tuple[tuple[str, ...], int], HotStatement] = {}
Entry = tuple[str, dict[str, Any], str | None, dict[str, Any], Any]  # kind, actor, subject, data, at
RECORD = HotStatement(gate_decisions.insert())


def split_entries(row: dict[str, Any]) -> tuple[dict[str, Any], tuple[Entry, ...]]:
    """The row's gate_decisions columns, and the audit entries it carries (``ports.ROW_ENTRIES``: a face
    match result the gate claimed, port security's badge alarm; mostly none), at the decision's time."""
    if row.get(FACE_CLAIM) is None and row.get(BADGE_ALARM) is None:  # nearly every row: no generator
        return row, ()
    columns = {k: v for k, v in row.items() if k not in ROW_ENTRIES}
    return columns, tuple((e["kind"], e["actor"], e["subject"], e["data"], row["decided_at"])
                          for e in (row.get(key) for key in ROW_ENTRIES) if e is not None)


def _entry_params(entries: Sequence[Entry]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for k, entry in enumerate(entries):
        params.update(entry_params(*entry, prefix=f"a{k}_"))
    return params


def record_statement(row: dict[str, Any]) -> tuple[HotStatement, dict[str, Any]]:
    """PostgreSQL: the decision's insert and its parameters; with audit entries (``split_entries``), one
    statement that inserts the decision and, from the row inserted, each entry (a twin refused by the
    unique key writes none)."""
    columns, entries = split_entries(row)
    if not entries:
        return RECORD, columns
    key = (tuple(columns), len(entries))
    statement = _audited.get(key)
    if statement is None:
        decided = (gate_decisions.insert()
                   .values({name: sa.bindparam("d_" + name, type_=gate_decisions.c[name].type) for name in key[0]})
                   .returning(gate_decisions.c.id).cte("decided"))
        statement = _audited[key] = HotStatement(sa.select(decided.c.id).add_cte(
            *[insert_entry_from(decided, prefix=f"a{k}_").cte(f"entry{k}") for k in range(len(entries))]))
    return statement, {"d_" + k: v for k, v in columns.items()} | _entry_params(entries)


def record_move(conn: sa.Connection, row: dict[str, Any], right: ReleaseRight,
                audiences: Sequence[frozenset[uuid.UUID]], read: RightsRead, reads: Reads | None = None) -> bool:
    """Write ``right`` (moved, its events pending, read at ``right.version``) with its events, their
    audit entries and webhook deliveries, and the decision ``row``, in one statement. False, with
    nothing written, when the right is no longer at that version, or its containers' other rights are
    no longer those ``read`` (``ports.RightsRead``). Raises DuplicateDecision.
    ``reads``: the rows as read in this unit of work (``SqlReleaseStore``), to write only what changed."""
    statement, params = move_statement(row, right, audiences, read, reads)
    with twin_refused(row):
        moved = statement.execute(conn, params).scalar()
    if not moved:
        return False
    touch(conn, RIGHTS, right.container.value)
    written(right)
    return True


def move_statement(row: dict[str, Any], right: ReleaseRight, audiences: Sequence[frozenset[uuid.UUID]],
                   read: RightsRead, reads: Reads | None) -> tuple[HotStatement, dict[str, Any]]:
    """The one statement of ``record_move`` and its parameters (also sent from the event loop,
    adapters/sqla/gate_loop.py)."""
    events = right.pending_events
    if len(audiences) != len(events):
        raise ValueError("one audience per pending event")
    cancelled = _cancelled_transfer(right)
    # Only the columns the move changed (``reads``: the row as read in this unit of work): a short
    # statement with few parameters, which psycopg parses once and keeps (it parses a statement of
    # over 4 096 characters or 50 parameters again on every call: half a millisecond here).
    values = right_values(right, reads)
    columns, entries = split_entries(row)
    if right.container.value not in read.containers or (right.id, right.version) not in read.versions:
        raise ValueError("a move is written on the rights read with it, the moved one at its version read")
    params: dict[str, Any] = {"m_id": right.id, "m_version": right.version, "m_subject": str(right.id),
                              "m_containers": listed(read.containers), "m_read": listed_read(read),
                              **{"r_" + k: v for k, v in values.items()}, **{"d_" + k: v for k, v in columns.items()},
                              **_entry_params(entries)}
    for k, (event, audience) in enumerate(zip(events, audiences, strict=True)):
        event_id = uuid.uuid4()
        published = PublishedEvent(event_id, event.type, right.id, event.at, audience, event.data)
        params.update({f"e{k}_id": event_id, f"e{k}_type": event.type, f"e{k}_actor": event.actor,
                       f"e{k}_data": event.data, f"e{k}_at": event.at, f"e{k}_audience": listed(sorted(audience)),
                       f"e{k}_patterns": listed(patterns_matching(event.type)),
                       f"e{k}_payload": delivery_payload(published)})
    if cancelled is not None:
        params.update({"t_id": cancelled.id, "t_to": cancelled.to_organisation_id, "t_at": cancelled.decided_at})
    key = (len(events), tuple(values), tuple(columns), cancelled is not None, len(entries))
    statement = _statements.get(key)
    if statement is None:
        statement = _statements[key] = HotStatement(_build(*key))
    return statement, params


def listed_read(read: RightsRead) -> str:
    """The rights read, as the statement lists its containers' rights (``_SAME_RIGHTS``): ``id:version``
    by id (a uuid's order is its bytes', in Python as in PostgreSQL), joined by commas."""
    return ",".join(f"{rid}:{version}" for rid, version in sorted(read.versions))


@contextlib.contextmanager
def twin_refused(row: dict[str, Any]) -> Iterator[None]:
    """The move statement's decision refused by its unique key (a twin recorded first, the whole
    statement rolled back) raised as DuplicateDecision; any other integrity error as it is."""
    try:
        yield
    except sa.exc.IntegrityError as exc:
        if _DECISION_KEY in str(exc.orig):
            raise DuplicateDecision(row["request_id"]) from exc
        raise


def written(right: ReleaseRight) -> None:
    """``right`` as the statement left it: at its next version, its events and transfers saved."""
    right.version += 1
    right.pending_events.clear()
    right.changed_transfers.clear()


def _cancelled_transfer(right: ReleaseRight) -> Transfer | None:
    """The one transfer change a gate move makes: the offer still pending, cancelled by the gate-in
    (``ReleaseRight.gate_in``). Any other is the release store's to write (``SqlReleaseStore.save``)."""
    changed = right.changed_transfers
    if not changed:
        return None
    if len(changed) != 1 or changed[0].state is not TransferState.CANCELLED:
        raise ValueError("a gate move changes no transfer but the one its gate-in cancelled")
    return changed[0]


# The container's rights as the statement finds them, listed as ``listed_read`` lists those the gate read:
# every one but deleted ones, as store.py ``_BY_CONTAINERS_PG`` reads them (by ix_releases_container_number).
# Written out short: psycopg parses a statement of over 4 096 characters again on every call (``_build``).
_SAME_RIGHTS = sa.text(
    "(SELECT coalesce(string_agg(r.id||':'||r.version,','ORDER BY r.id),'')FROM releases r WHERE r.container_number="
    f"ANY(string_to_array(:m_containers,','))AND r.state<>'{State.DELETED.value}')=:m_read")  # ',': ``listed``


def _build(n: int, right_columns: tuple[str, ...], decision_columns: tuple[str, ...],
           cancels: bool, entries: int) -> sa.Select[Any]:
    bp = sa.bindparam
    moved = (
        releases.update()
        .where(releases.c.id == bp("m_id", type_=UUID), releases.c.version == bp("m_version", type_=sa.Integer),
               _SAME_RIGHTS)
        .values({name: bp("r_" + name, type_=releases.c[name].type) for name in right_columns}
                | {"event_seq": releases.c.event_seq + n})
        .returning(releases.c.id, releases.c.event_seq)
        .cte("moved")
    )

    def seq(k: int) -> Any:
        return moved.c.event_seq - (n - 1 - k)

    def e(k: int, name: str, type_: Any) -> Any:
        return bp(f"e{k}_{name}", type_=type_)

    def each(build: Any) -> Any:
        selects = [build(k) for k in range(n)]
        return selects[0] if n == 1 else sa.union_all(*selects)

    events = release_events.insert().from_select(
        ["id", "release_id", "seq", "type", "actor", "data", "at"],
        each(lambda k: sa.select(e(k, "id", UUID), moved.c.id, seq(k), e(k, "type", sa.String),
                                 e(k, "actor", JSON), e(k, "data", JSON), e(k, "at", UTCDateTime()))
             .select_from(moved)),
    ).cte("events")
    audited = audit_log.insert().from_select(
        ["at", "kind", "actor", "subject", "data", "txid"],
        each(lambda k: sa.select(
            e(k, "at", UTCDateTime()), e(k, "type", sa.String), e(k, "actor", JSON), bp("m_subject", type_=sa.String),
            sa.func.jsonb_build_object("seq", seq(k), type_=postgresql.JSONB)
            .op("||", return_type=postgresql.JSONB)(e(k, "data", JSON)),
            WRITER_TXID).select_from(moved)),
    ).cte("audited")
    subs, orgs = webhook_subscriptions, organisations
    # As SqlOutbox: no delivery to an organisation port security has deactivated (its row by primary key);
    # the payload takes the event's seq, known here only; due behind a pending delivery of the right
    # (outbox.due_behind); the ordinal the sequence's, in the events' order (review 171, finding 1).
    hooks = webhook_deliveries.insert().from_select(
        ["id", "subscription_id", "event_id", "event_type", "payload", "status", "attempts", "next_attempt_at",
         "created_at", "release_id"],
        each(lambda k: sa.select(
            sa.func.gen_random_uuid(), subs.c.id, e(k, "id", UUID), e(k, "type", sa.String),
            sa.cast(e(k, "payload", JSON), postgresql.JSONB).op("||", return_type=postgresql.JSONB)(
                sa.func.jsonb_build_object("seq", seq(k), type_=postgresql.JSONB)),
            sa.literal("pending"), sa.literal(0), due_behind(subs.c.id, moved.c.id, e(k, "at", UTCDateTime())),
            e(k, "at", UTCDateTime()), moved.c.id)
            .select_from(moved.join(subs, sa.true()).join(orgs, orgs.c.id == subs.c.organisation_id))
            .where(subs.c.active.is_(True), orgs.c.active.is_(True),
                   subs.c.organisation_id == sa.any_(text_array(f"e{k}_audience", UUID)),
                   sa.cast(subs.c.event_types, postgresql.JSONB).has_any(text_array(f"e{k}_patterns")))),
    ).cte("hooks")
    decided = gate_decisions.insert().from_select(
        list(decision_columns),
        sa.select(*[bp("d_" + name, type_=gate_decisions.c[name].type) for name in decision_columns])
        .select_from(moved),
    ).cte("decided")
    ctes = [events, audited, hooks, decided]
    # The row's audit entries (``split_entries``: a face match result the gate claimed), with the move.
    ctes.extend(insert_entry_from(moved, prefix=f"a{k}_").cte(f"entry{k}") for k in range(entries))
    if cancels:
        # The offer the gate-in cancelled (as ``SqlReleaseStore._upsert_transfer`` and
        # ``_drop_recipient`` write it): no longer pending, and its recipient no longer a party.
        moved_id = sa.select(moved.c.id).scalar_subquery()
        ctes.append(transfers.update()
                    .where(transfers.c.id == bp("t_id", type_=UUID), transfers.c.release_id == moved_id)
                    .values(state=TransferState.CANCELLED.value, pending_key=None,
                            decided_at=bp("t_at", type_=UTCDateTime()))
                    .returning(transfers.c.id).cte("ended"))
        ctes.append(release_parties.delete()
                    .where(release_parties.c.release_id == moved_id,
                           release_parties.c.organisation_id == bp("t_to", type_=UUID),
                           release_parties.c.relation == "recipient")
                    .returning(release_parties.c.organisation_id).cte("unoffered"))
    return sa.select(sa.func.count().label("moved")).select_from(moved).add_cte(*ctes)

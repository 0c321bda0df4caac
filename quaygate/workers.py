"""Background loops each replica runs: audit sealing, webhook delivery, lapsing rights, expiring badges,
acting on port bans once they start, forgetting face-capture digests past the replay window, withdrawing
the face templates of persons who left the port, expiring memberships past their valid_until, pruning
finished webhook deliveries past their retention, pruning Idempotency-Keys past theirs, retiring token
keys past their publication (their private halves erased).

Each loop is safe to run in every replica at once: the sealer takes an advisory lock, the dispatcher
claims deliveries with SKIP LOCKED, the sweeper locks each right it lapses, the badge sweep takes its
badges with SKIP LOCKED, the ban sweep takes the ban loader's advisory lock; two replicas deleting the
same old capture digests at once delete each once; the face retention sweep marks with SKIP LOCKED and
withdraws each template under its person's lock; a membership is expired by whoever deletes its row;
the webhook and idempotency-key prunes take their rows with SKIP LOCKED; key retirement takes the key
store's lock.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import timedelta

from identity.badges.service import BadgeService
from identity.bans.sweep import sweep_bans_in_effect
from identity.bootstrap import grant_store, key_store
from identity.face import retention as face_retention
from identity.face.store import CaptureStore
from identity.memberships import expire_due
from release_service.adapters.audit import AuditSealer
from release_service.adapters.gate_facts import RedisGateFacts
from release_service.adapters.outbox import prune_deliveries
from release_service.adapters.sqla.idempotency import prune_idempotency_keys
from release_service.adapters.sqla.uow import SqlUnitOfWork
from release_service.adapters.webhook_dispatcher import WebhookDispatcher
from release_service.api.routes import unit_of_work
from release_service.services.lifecycle import lapse_due

from .container import Container
from .observability import Metrics

log = logging.getLogger("quaygate.workers")


def gate_facts_for(container: Container) -> RedisGateFacts:
    """The gate's facts in Redis, and the invalidation of their copies after every commit on this
    container's engine that touched them (quaygate/invalidation.py). Every process that writes what a
    gate decision reads needs it, the CLI's too: a badge blocked or a ban loaded from the command line
    must reach the gates' copies as one changed through the API does (``Container.build``)."""
    s = container.settings
    assert s.redis_url, "gate facts live in Redis"
    # The gate claims DPoP proofs on the facts' pipelined connection: it greets as the cache's do, so
    # that a proof from before the dataset's epoch is refused there too (quaygate/dataset.py).
    greeting = getattr(container.cache, "epoch_greeting", None)
    return RedisGateFacts.from_url(s.redis_url, container.engine, lambda: unit_of_work(container),
                                   ttl=s.gate_facts_ttl, request_ttl=s.gate_request_ttl, greeting=greeting)


def start_gate_facts(container: Container) -> RedisGateFacts | None:
    """With Redis configured, the gate decision reads its facts from there (issue 5 "Hot path"), and
    this process drains the check decisions kept there into PostgreSQL."""
    s = container.settings
    if not s.redis_url:
        return None
    facts = container.gate_facts or gate_facts_for(container)
    facts.bump_everything()  # owed by a process that died before it could invalidate
    if s.gate_decision_drain:
        facts.start_drainer(f"{socket.gethostname()}-{os.getpid()}")
    container.gate_facts = facts
    return facts


class BackgroundWorkers:
    def __init__(self, container: Container, *, metrics: Metrics | None = None) -> None:
        self._c = container
        self._metrics = metrics
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        c = self._c
        sealer = AuditSealer(c.engine, c.cipher, witness=c.settings.audit_witness, on_tampered=self._audit_tampered)
        dispatcher = WebhookDispatcher(
            c.engine, c.cipher, clock=c.clock, send_timeout=c.settings.webhook_send_timeout,
            workers=c.settings.webhook_workers, per_organisation=c.settings.webhook_sends_per_organisation,
            allow_local=c.settings.local_webhooks,  # as the subscriptions allow
        )
        self._loop("audit-sealer", c.settings.audit_seal_interval, lambda: sealer.seal_once(c.clock.now()))
        # A pipeline of its own, not rounds: a slot is claimed for as soon as a send ends (the dispatcher's
        # docstring); stopped, it claims no more and its sends in flight end within their deadline.
        webhooks = threading.Thread(target=dispatcher.run_forever, args=(self._stop, c.settings.webhook_interval),
                                    name="webhook-dispatcher", daemon=True)
        webhooks.start()
        self._threads.append(webhooks)
        self._loop("lapse-sweeper", 5.0, self._lapse)
        badges = BadgeService(c.engine)
        self._loop("badge-expiry", 60.0, lambda: badges.expire_due(c.clock.now()))
        # A port ban that starts after its load acts once it starts (identity/bans/sweep.py).
        self._loop("ban-sweeper", 60.0, lambda: sweep_bans_in_effect(c.engine, c.clock.now()))
        # A capture digest older than the replay window refuses nothing: it goes (identity.face.service).
        self._loop("face-capture-prune", 3600.0, self._forget_captures)
        # A face template is kept while its person works in the port: gone, audited, once he has had no
        # badge and no membership for face_retention_days_after_leaving (identity/face/retention.py).
        self._loop("face-retention", 3600.0, lambda: face_retention.sweep(
            c.engine, c.cipher, now=c.clock.now(), after=timedelta(days=c.settings.face_retention_days_after_leaving)))
        # A finished webhook delivery keeps its payload (drivers, plates): gone past its retention, a
        # bounded batch per round, rounds until none is left (release_service/adapters/outbox.py).
        self._loop("webhook-delivery-prune", 3600.0, self._prune_deliveries)
        # An Idempotency-Key's stored answer (a batch of rights, a nomination's driver and plates) goes past
        # its retention, in bounded batches likewise; a key past it replays nothing even before this comes
        # (release_service/adapters/sqla/idempotency.py).
        self._loop("idempotency-key-prune", 3600.0, self._prune_idempotency_keys)
        # A membership past its valid_until counts nowhere at once; this applies a removal's consequences
        # (its grants revoked, the holder of live nominations told) and deletes it (identity.memberships).
        grants = grant_store(c)
        self._loop("membership-expiry", 60.0, lambda: expire_due(c.engine, grants=grants, now=c.clock.now()))
        # A token key whose publication has ended is retired and its private half erased (identity/keys.py):
        # at the next rotation too, but rotations may be months apart.
        keys = key_store(c)
        self._loop("key-retirement", 3600.0, lambda: keys.retire_due(c.clock.now()))

    def _audit_tampered(self, _reason: str) -> None:
        # The sealer has logged audit.tampered (critical) and stopped; the metric keeps it in sight.
        if self._metrics is not None:
            self._metrics.audit_sealing_stopped.set(1)

    def _lapse(self) -> int:
        uow = SqlUnitOfWork(self._c.engine)
        with uow:
            count = lapse_due(uow, self._c.clock.now())
            uow.commit()
        return count

    def _forget_captures(self) -> int:
        c = self._c
        with c.engine.begin() as conn:
            return CaptureStore(conn).forget(c.clock.now() - timedelta(days=c.settings.face_replay_days))

    def _prune_deliveries(self) -> int:
        c = self._c
        now = c.clock.now()
        with c.engine.begin() as conn:
            return prune_deliveries(
                conn, settled_before=now - timedelta(days=c.settings.webhook_delivered_retention_days),
                dead_before=now - timedelta(days=c.settings.webhook_dead_retention_days))

    def _prune_idempotency_keys(self) -> int:
        c = self._c
        before = c.clock.now() - timedelta(seconds=c.settings.idempotency_retention_seconds)
        with c.engine.begin() as conn:
            return prune_idempotency_keys(conn, before=before)

    def _loop(self, name: str, interval: float, step: Callable[[], int]) -> None:
        def body() -> None:
            while not self._stop.is_set():
                try:
                    busy = step()
                except Exception:  # noqa: BLE001 - a loop must survive a passing fault and say so
                    log.exception("quaygate.worker.failed", extra={"fields": {"worker": name}})
                    busy = 0
                if not busy:
                    self._stop.wait(interval)

        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

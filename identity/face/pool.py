"""The face worker pool: CPU-heavy matching in separate processes, off the event loop (STYLE.md #11).

Why processes: dlib releases the GIL only in parts of detection and encoding; threads would still
serialise much of the work and stall the event loop's thread. Why ``spawn``: the server's process
has threads (uvicorn, the database pool, the background workers), and forking a process with threads
can copy a held lock into the child; a spawned worker starts clean and imports only the engine.

Sizing (docs/face.md): one capture costs about 0.1 s of one core (detection and encoding), so one
worker sustains about 10 captures/s. ``QUAYGATE_FACE_WORKERS=0`` (the default) takes one worker per
core this process may use (``os.sched_getaffinity``); a host that also serves heavy HTTP traffic
gives fewer. Jobs are admitted up to ``workers * queue_per_worker`` at once; beyond that the caller
gets ``face_busy`` at once rather than a queue that grows until every gate times out (overload).
A job names the shares it takes (``FaceService``), each admitting at most so many jobs at once:
- a gate's, its terminal's (``gate:<terminal>``): ``per_owner`` (default half of them), so one
  terminal's client, or one stolen gate token, cannot fill the queue and leave every other terminal's
  captures ``face_busy`` (review 131, finding 2);
- all work that is not a gate's (``OFF_GATE``: the step-up, the badge office's enrolments): at most
  ``off_gate``, half of the pool's jobs (floor; one when the pool takes one or two), and within it the
  step-ups together (``STEP_UPS``) and the enrolments (``ENROLMENTS``) a quarter each (at least one),
  one person's step-ups (``step_up:<person>``) two at a time (a retry while the first is matched).
  So a person, or an accomplice with sessions from many addresses, cannot fill the pool with step-ups
  and turn the gate's captures into ``face_busy`` (a review the desk may set aside, where a stranger's
  face was a deny): the gate keeps the other half (review 154, finding 2). A pool of one job reserves
  nothing.
Captures are judged on their header before they are queued (``identity.face.header``):
what a worker is given is a picture of bounded cost.
A worker that dies breaks the executor: the pool builds a new one and the calls in flight fail with
``face_unavailable``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..domain.face import FaceCode, QualityRules
from . import engine
from .header import ImageLimits

log = logging.getLogger(__name__)


OFF_GATE = "off_gate"  # every job that is not a gate's
STEP_UPS = "step_ups"  # the step-ups together
ENROLMENTS = "enrolments"  # the badge office's enrolments together
STEP_UP_OF = "step_up:"  # one person's step-ups: step_up:<person_id>


class FaceUnavailable(Exception):
    def __init__(self, code: FaceCode) -> None:
        super().__init__(code.value)
        self.code = code


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def workers_for(configured: int) -> int:
    """The pool size: as configured, or one per usable core when 0."""
    if configured < 0:
        raise ValueError("QUAYGATE_FACE_WORKERS must be 0 (one per core) or more")
    return configured or cores()


class FacePool:
    """A bounded process pool running ``identity.face.engine.analyse``."""

    def __init__(self, workers: int, *, queue_per_worker: int = 4, max_side: int = 640,
                 limits: ImageLimits | None = None, rules: QualityRules | None = None, per_owner: int = 0) -> None:
        self.workers = workers_for(workers)
        self.limit = self.workers * max(1, queue_per_worker)
        if per_owner < 0:
            raise ValueError("QUAYGATE_FACE_JOBS_PER_TERMINAL must be 0 (half the pool's jobs) or more")
        self.per_owner = min(per_owner, self.limit) if per_owner else max(1, self.limit // 2)
        self.off_gate = max(1, self.limit // 2)  # module docstring
        self.step_ups = self.enrolments = min(self.off_gate, max(1, self.limit // 4))
        self.step_ups_per_person = min(self.step_ups, 2)
        self.max_side = max_side
        self.limits = limits or ImageLimits()
        self.rules = rules or QualityRules()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._owners: dict[str, int] = {}  # jobs admitted per share; a share with none has no key
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    # ---- lifecycle ------------------------------------------------------------------------------

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise FaceUnavailable(FaceCode.UNAVAILABLE)
            if self._executor is None:
                self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            return self._executor

    def warm_up(self) -> list[Future[bool]]:
        """Start every worker and load the models in each (one warm-up job per worker, not awaited)."""
        pool = self._pool()
        hold = 0.5 if self.workers > 1 else 0.0  # one warm-up job per worker, not two in one
        return [pool.submit(engine.warm_up, hold) for _ in range(self.workers)]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    # ---- work -----------------------------------------------------------------------------------

    def share(self, owner: str) -> int:
        """How many jobs the share ``owner`` may have admitted at once (module docstring)."""
        if owner == OFF_GATE:
            return self.off_gate
        if owner == STEP_UPS:
            return self.step_ups
        if owner == ENROLMENTS:
            return self.enrolments
        if owner.startswith(STEP_UP_OF):
            return self.step_ups_per_person
        return self.per_owner  # a gate's terminal

    def submit(self, image: bytes, owner: str | tuple[str, ...] | None = None) -> Future[engine.Analysis]:
        """Queue one capture, or FaceUnavailable(face_busy) when the queue is full, or one of the shares
        ``owner`` names has as many jobs admitted as it may (``share``)."""
        owners = (owner,) if isinstance(owner, str) else tuple(owner or ())
        with self._lock:
            if self._in_flight >= self.limit:
                log.info("identity.face.pool.busy")
                raise FaceUnavailable(FaceCode.BUSY)
            if any(self._owners.get(name, 0) >= self.share(name) for name in owners):
                log.info("identity.face.pool.busy.owner")
                raise FaceUnavailable(FaceCode.BUSY)
            self._in_flight += 1
            for name in owners:
                self._owners[name] = self._owners.get(name, 0) + 1
        release = functools.partial(self._release, owners)
        try:
            future = self._pool().submit(engine.analyse, image, self.rules, self.max_side, self.limits)
        except (BrokenProcessPool, RuntimeError) as exc:
            release(None)
            self._rebuild()
            raise FaceUnavailable(FaceCode.UNAVAILABLE) from exc
        except FaceUnavailable:
            release(None)
            raise
        future.add_done_callback(release)
        return future

    def _release(self, owners: tuple[str, ...], _: Any) -> None:
        with self._lock:
            self._in_flight -= 1
            for name in owners:
                left = self._owners.pop(name) - 1
                if left:
                    self._owners[name] = left

    def _rebuild(self) -> None:
        with self._lock:
            broken, self._executor = self._executor, None
        if broken is not None:
            log.warning("identity.face.pool.rebuilt")
            broken.shutdown(wait=False, cancel_futures=True)

    def _result(self, future: Future[engine.Analysis]) -> engine.Analysis:
        exc = future.exception()
        if isinstance(exc, BrokenProcessPool):
            self._rebuild()
            raise FaceUnavailable(FaceCode.UNAVAILABLE) from exc
        if exc is not None:
            raise exc
        return future.result()

    async def analyse(self, image: bytes, owner: str | tuple[str, ...] | None = None) -> engine.Analysis:
        """Analyse a capture in a worker; the event loop only waits."""
        future = self.submit(image, owner)
        try:
            await asyncio.wrap_future(future)
        except BrokenProcessPool:
            pass  # _result turns it into face_unavailable
        return self._result(future)

    def analyse_blocking(self, image: bytes, owner: str | tuple[str, ...] | None = None) -> engine.Analysis:
        """The same for a plain ``def`` route running in the thread pool (never on the event loop)."""
        future = self.submit(image, owner)
        try:
            future.result()
        except BrokenProcessPool:
            pass
        return self._result(future)

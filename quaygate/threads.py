"""Blocking work off the event loop, for the hottest routes: a thread pool cheaper per call than anyio's.

FastAPI runs a plain ``def`` route through ``anyio.to_thread.run_sync``: a capacity limiter, a cancel
scope, a ``queue.Queue`` (a condition variable and a lock allocated per wait) and a report back. On
this machine that hop costs about 120 microseconds of CPU; the same hop through a ``SimpleQueue`` (C,
one lock) and ``call_soon_threadsafe`` costs about 50. The token endpoint, the passkey login and the
gate's database way are ``async`` routes that hand their blocking part to ``ThreadPool.run``.

- Up to ``max_threads`` threads, started when a job finds none idle; jobs beyond that wait in the
  queue, as anyio's limiter makes them wait. A thread idle for ``idle_seconds`` ends (anyio's workers
  do the same after 10 s). The app sizes it by ``settings.worker_threads`` (4), well under anyio's 40:
  these jobs are short and mostly CPU, and under load more threads than that only add GIL hand-offs
  and database connections beyond the pool's size (loadtests/RESULTS.md, tenth session). Whatever
  may wait long (a face match) does not go here, so it never holds up a token or a gate check.
- The caller's context variables go with the job (``contextvars.copy_context``), as with anyio.
- Cancelling the awaiting task does not stop the job (a thread cannot be stopped; anyio does the
  same unless told to abandon it): the job runs to its end, and its result is dropped.
- ``close()`` lets every thread finish its job and end; threads are daemons, so a stuck job never
  holds the process at exit.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .appstate import built_once

T = TypeVar("T")

_STOP = None


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the caller went away; the job ran all the same
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class ThreadPool:
    def __init__(self, *, max_threads: int = 4, idle_seconds: float = 10.0, name: str = "quaygate-thread") -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._max = max_threads
        self._idle_seconds = idle_seconds
        self._name = name
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a thread of the pool; its result, or its exception raised here."""
        if self._closed:
            raise RuntimeError("the thread pool is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, contextvars.copy_context(), fn, args))
        if not self._idle.acquire(blocking=False):
            self._grow()
        return await future

    @property
    def max_threads(self) -> int:
        return self._max

    @property
    def size(self) -> int:
        return len(self._threads)

    def _grow(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the thread pool is closed")
            if len(self._threads) >= self._max:
                return  # the job waits for the next thread that finishes one
            thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        # ``_idle`` holds one permit per thread waiting after a job: a caller that takes one knows a
        # thread will take its job; a caller that finds none starts a thread. A thread ends after
        # ``idle_seconds`` only if it can take a permit back, so permits never outnumber the threads
        # left to honour them (had a caller just taken it, a job is on its way: the thread stays).
        me = threading.current_thread()
        while True:
            try:
                job = self._jobs.get(timeout=self._idle_seconds)
            except queue.Empty:
                if self._idle.acquire(blocking=False):
                    with self._lock:
                        self._threads.remove(me)
                    return
                continue
            if job is _STOP:
                return
            loop, future, context, fn, args = job
            try:
                result = context.run(fn, *args)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
                self._report(loop, future, None, exc)
            else:
                self._report(loop, future, result, None)
            job = future = result = None  # nothing kept alive while the thread waits
            self._idle.release()

    @staticmethod
    def _report(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any,
                error: BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(_settle, future, result, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(_STOP)
        for thread in threads:
            thread.join(timeout)



def threads_for(app: Any) -> ThreadPool:
    """The app's pool: the lifespan's, or (an app of routers composed by a test) one made on first use."""
    return built_once(app, "threads", ThreadPool)

"""quaygate/threads.py: results and errors come back, context goes along, the pool grows to its limit
and no further, idle threads end, a cancelled caller does not stop its job, and close() ends them all."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from quaygate.threads import ThreadPool

REQUEST = contextvars.ContextVar("request", default="none")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run on a thread of its own: another test may have left an event loop running on this one."""
    with ThreadPoolExecutor(1) as one:
        return one.submit(asyncio.run, coro).result()


def test_a_job_runs_off_the_loop_and_its_result_or_error_comes_back() -> None:
    pool = ThreadPool(max_threads=2)

    async def main() -> None:
        loop_thread = threading.get_ident()
        ran_on = await pool.run(threading.get_ident)
        assert ran_on != loop_thread
        assert await pool.run(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(KeyError, match="nope"):
            await pool.run({}.__getitem__, "nope")
        REQUEST.set("r-17")  # the caller's context variables go with the job
        assert await pool.run(REQUEST.get) == "r-17"

    run(main())
    pool.close()


def test_the_pool_grows_to_its_limit_and_jobs_beyond_it_wait() -> None:
    pool = ThreadPool(max_threads=3)
    gate = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()

    def job(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        gate.wait(5)
        with lock:
            running -= 1
        return i

    async def main() -> list[int]:
        tasks = [asyncio.ensure_future(pool.run(job, i)) for i in range(8)]
        while True:  # three run at once, the other five wait in the queue
            await asyncio.sleep(0.01)
            with lock:
                if running == 3:
                    break
        await asyncio.sleep(0.05)
        with lock:
            assert running == 3
        gate.set()
        return await asyncio.gather(*tasks)

    assert run(main()) == list(range(8))
    assert most == 3 and pool.size == 3
    pool.close()


def test_idle_threads_end_and_the_pool_starts_anew() -> None:
    pool = ThreadPool(max_threads=4, idle_seconds=0.05)
    # The size is taken while all four jobs run at once (the barrier's action, before any is let go):
    # read after the burst, it was a race with the idle threads ending 0.05 s after their job, which a
    # loaded machine lost (one test run in five with the CPU shared by eight busy processes).
    sizes: list[int] = []
    together = threading.Barrier(4, action=lambda: sizes.append(pool.size))

    async def burst() -> None:
        await asyncio.gather(*(pool.run(together.wait, 5) for _ in range(4)))

    run(burst())
    assert sizes == [4]
    deadline = time.monotonic() + 5
    while pool.size and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool.size == 0
    assert run(pool.run(lambda: "again")) == "again"  # a job after they all ended still runs
    pool.close()


def test_a_cancelled_caller_does_not_stop_its_job() -> None:
    pool = ThreadPool(max_threads=1)
    started, finished = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        time.sleep(0.1)
        finished.set()
        return "done"

    async def main() -> None:
        task = asyncio.ensure_future(pool.run(slow))
        while not started.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await pool.run(lambda: "next") == "next"  # the one thread finished the job first

    run(main())
    assert finished.is_set()
    pool.close()


def test_close_ends_every_thread() -> None:
    pool = ThreadPool(max_threads=3, name="closing-pool")

    async def main() -> None:
        await asyncio.gather(*(pool.run(time.sleep, 0.02) for _ in range(3)))

    run(main())
    threads = [t for t in threading.enumerate() if t.name.startswith("closing-pool")]
    assert threads
    pool.close()
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(RuntimeError, match="closed"):
        run(pool.run(lambda: None))


def test_the_app_sizes_its_pool_by_the_settings(tmp_path: Any) -> None:
    from fastapi.testclient import TestClient

    from quaygate.app import create_app
    from quaygate.migrate import upgrade
    from quaygate.settings import Settings

    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    app = create_app(Settings(var_dir=tmp_path, database_url=url, background_workers=False, worker_threads=3))
    with TestClient(app):
        assert app.state.threads.max_threads == 3
    assert Settings(var_dir=tmp_path, database_url=url).worker_threads == 4  # at most db_pool_size (10)

"""Coroutines run to their end from a test."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio


def run_async(fn: Any, *args: Any) -> Any:
    """``anyio.run(fn, *args)`` in a thread of its own: a suite run may leave an event loop running in
    the main thread (Playwright's sync API does), where a second one cannot start."""
    with ThreadPoolExecutor(1) as one:
        return one.submit(anyio.run, fn, *args).result()

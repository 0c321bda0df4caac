"""``quaygate.app:app_from_env`` for a server in a child process whose in-process cache stands for one
that has held its data since long before (as tests/conftest.py gives every test in process): its
dataset's epoch (quaygate/dataset.py) long ago instead of the moment it is made. A server just started
refuses, for the verifier's leeway, a DPoP proof or client assertion that could have been used before
it started (its claim lost with the old process); a test about something else, whose client starts
with the server, uses this factory (``processes.serve_app(..., factory=FACTORY)``)."""

from __future__ import annotations

from typing import Any

from quaygate.app import app_from_env as _app_from_env
from quaygate.cache import MemoryCache

FACTORY = "tests.served_long_ago:app_from_env"


def app_from_env() -> Any:
    made = MemoryCache.__init__

    def long_ago(self: MemoryCache, *, since: float | None = None) -> None:
        made(self, since=0.0 if since is None else since)

    MemoryCache.__init__ = long_ago  # type: ignore[method-assign]
    return _app_from_env()

"""Browser tests: the real app served by uvicorn on http://localhost:<free port>, driven by Debian's
Chromium through Playwright, with Chrome's virtual WebAuthn authenticator (CDP ``WebAuthn`` domain).

Chromium comes from the distribution (``apt-get install -y chromium``), never ``playwright install``.
Without it the tests skip with the reason locally, and fail under CI (CI=true).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..processes import free_port, unavailable

CHROMIUM = os.environ.get("QUAYGATE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: drives a real browser (Chromium via Playwright) against a live server")


def _unavailable(reason: str) -> None:
    unavailable("browser tests", reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium, or skip (fail under CI) with the reason."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _unavailable(f"{CHROMIUM} not found (install it with `apt-get install -y chromium`)")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as exc:  # pragma: no cover - playwright is a pinned test dependency
        _unavailable(f"playwright is not installed ({exc})")
    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
    except Error as exc:
        pw.stop()
        _unavailable(f"Chromium did not start: {str(exc).splitlines()[0]}")
    yield chromium
    chromium.close()
    pw.stop()


@dataclass
class Live:
    base: str
    app: Any
    settings: Any

    @property
    def engine(self) -> Any:
        return self.app.state.container.engine


@pytest.fixture(params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Live]:
    """The whole app (quaygate.app.create_app) under uvicorn in a thread, on a fresh database migrated
    by Alembic: a new SQLite file, or the worker's PostgreSQL database emptied first."""
    import uvicorn

    from quaygate.app import create_app
    from quaygate.migrate import upgrade
    from quaygate.settings import Settings

    if request.param == "postgresql":
        url = request.getfixturevalue("pg_engine").url.render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{tmp_path / 'e2e.db'}"
        upgrade(url)
    port = free_port()
    base = f"http://localhost:{port}"
    settings = Settings(
        var_dir=tmp_path, database_url=url, issuer=base, webauthn_rp_id="localhost", background_workers=False,
        redis_url=None, log_level="WARNING",
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="e2e-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start under uvicorn")
        time.sleep(0.02)
    yield Live(base, app, settings)
    server.should_exit = True
    thread.join(timeout=15)

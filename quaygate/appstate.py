"""One instance per app of what the routes share, kept on ``app.state`` and built on first use.

The lifespan builds the app's services; an app composed of routers by a test has no lifespan, so
every ``*_for(app)`` accessor builds its piece when first asked. ``built_once`` is that accessor's
body, once: the double-checked lock means two requests arriving together still share one instance.
The lock is re-entrant, as one builder may ask for another's piece (the introspector asks for the
identity provider).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.RLock()


def built_once(app: Any, name: str, build: Callable[[], T]) -> T:
    """``app.state.<name>``, set to ``build()`` the first time it is asked for."""
    found: T | None = getattr(app.state, name, None)
    if found is None:
        with _lock:
            found = getattr(app.state, name, None)
            if found is None:
                found = build()
                setattr(app.state, name, found)
    return found

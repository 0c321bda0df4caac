"""Face verification (issue 6): enrolment at the badge office, 1:1 matching as a login step-up and at
the gate. See docs/face.md.

Wiring: the app's lifespan calls ``start_pool(settings)`` and keeps the pool on ``app.state.face_pool``
(closed at shutdown); ``face_for(app)`` gives the ``FaceService`` built on it.

For the gate (release_service), the one call to make::

    match = await face_for(app).verify_face(person_id, image_bytes, tolerance)          # async code
    match = face_for(app).verify_face_blocking(person_id, image_bytes, tolerance)       # a def route
    # -> identity.domain.face.FaceMatch(distance: float | None, matched: bool, reason: str | None,
    #                                   tolerance: float)

``tolerance`` None takes ``QUAYGATE_FACE_TOLERANCE``; a value outside 0.3..0.6 raises FaceError
(``tolerance_invalid``). A bad capture never raises: ``reason`` is face_not_found, face_multiple,
face_too_small, face_blurred, image_unreadable, image_too_large, face_not_enrolled, face_not_live,
face_replayed, face_busy or face_unavailable (no comparison counted, distance None), or face_mismatch
(distance set). A bad capture is judged before a missing enrolment (the gate must not learn whether a
face is enrolled). Pass ``used_for="gate:<terminal>:<request_id>"``: a capture matched before for
another use is ``face_replayed``; the same use again (a retry) is not.
Each call is audited (``identity.face.verify.*``: distance, tolerance, decision; never the image);
pass ``context={"terminal": ..., "request_id": ...}`` to add the gate's ids to that entry.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from quaygate.appstate import built_once
from quaygate.settings import Settings

from ..domain.face import FaceMatch, QualityRules
from .header import ImageLimits
from .pool import FacePool
from .service import FaceError, FaceService

__all__ = ["FaceError", "FaceMatch", "FacePool", "FaceService", "face_for", "pool_from_settings", "start_pool"]



def pool_from_settings(settings: Settings) -> FacePool:
    """A pool sized from the settings; no process starts until the first job (or ``warm_up``)."""
    return FacePool(settings.face_workers, queue_per_worker=settings.face_queue_per_worker,
                    max_side=settings.face_max_side, per_owner=settings.face_jobs_per_terminal,
                    limits=ImageLimits(settings.face_max_image_pixels, settings.face_max_png_pixels),
                    rules=QualityRules(settings.face_min_face_px, settings.face_min_sharpness))


def start_pool(settings: Settings) -> FacePool:
    """The lifespan's call: build the pool and, with background workers on, warm every worker up."""
    pool = pool_from_settings(settings)
    if settings.face_warm_up and settings.background_workers:
        pool.warm_up()
    return pool


def face_for(app: Any) -> FaceService:
    """The app's FaceService on ``app.state.face``, built once from the container and the pool."""
    from ..ratelimit import login_guard_for, rate_limiter_for
    from ..sessions import sessions_for

    def build() -> FaceService:
        c = app.state.container
        pool = getattr(app.state, "face_pool", None)
        if pool is None:  # an app served without its lifespan (a bare test app)
            pool = app.state.face_pool = pool_from_settings(c.settings)
        s = c.settings
        return FaceService(engine=c.engine, cipher=c.cipher, pool=pool, tolerance=s.face_tolerance,
                           max_image_bytes=s.face_max_image_bytes, sessions=sessions_for(app),
                           guard=login_guard_for(app), replay_window=timedelta(days=s.face_replay_days),
                           counter=rate_limiter_for(app), bad_captures=s.face_step_up_bad_captures,
                           bad_capture_window=s.face_step_up_bad_capture_window, step_ups=s.face_step_ups,
                           step_up_window=s.face_step_up_window,
                           previous_digest_keys=s.previous_face_digest_keys_bytes())

    return built_once(app, "face", build)

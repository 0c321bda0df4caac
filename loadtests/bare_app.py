"""The bare endpoint the gate verify is measured against (bench_gate.py): a FastAPI JSON POST that
validates the same request model as POST /gate/v1/verify and answers a response of the same shape,
with nothing behind it (no token, no database). Served by uvicorn exactly as the app is.

    uvicorn loadtests.bare_app:app --no-access-log
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import FastAPI

from release_service.api.gate import VerifyRequest

app = FastAPI()
_DECISION = str(uuid.uuid4())


@app.get("/healthz")
def healthz() -> dict[str, str]:  # what bench_identity._wait polls
    return {"status": "ok"}


def _answer(body: VerifyRequest) -> dict[str, Any]:
    return {"decision": "allow", "reasons": [], "decision_id": _DECISION, "release_id": None,
            "container": body.container.number, "driver": None, "screening": "clear",
            "request_id": body.request_id, "mode": body.mode, "direction": body.direction, "committed": False,
            "repairs": []}


@app.post("/bare/verify")
async def bare_verify(body: VerifyRequest) -> dict[str, Any]:
    """The baseline: an ``async def``, as the verify route is (no thread hop)."""
    return _answer(body)


@app.post("/bare/verify-def")
def bare_verify_def(body: VerifyRequest) -> dict[str, Any]:
    """The same as a plain ``def``, which FastAPI runs on its thread pool and whose answer it validates
    there too (two thread hops): the baseline of the figures before 2026-11-22's eleventh session, when
    the verify route was a ``def``. Printed for comparison with them, never the target's baseline."""
    return _answer(body)

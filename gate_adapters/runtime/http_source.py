"""Reads over HTTP: cameras and devices POST to a small FastAPI app, which parses and enqueues.

Routes (``{lane}`` is our lane id; the adapter serves one terminal)::

    POST /hikvision/{lane}   ISAPI ANPR alarm, bare XML or multipart (sources/hikvision.py)
    POST /axis/{lane}        AXIS License Plate Verifier JSON push (sources/axis.py)
    POST /ocr/{lane}         container OCR portal JSON (sources/ocr_portal.py)
    POST /reads/{lane}       our generic JSON read (sources/generic_json.py)
    GET  /healthz            200 {"status": "ok", "terminal", "lanes"} while the adapter runs

Answers: 202 ``{"accepted": true}`` (enqueued) or ``{"accepted": false}`` (a heartbeat, an Axis
``lost`` event: nothing to correlate); 400 with a plain-text reason for a refused payload
(``SourceError``); 404 for a lane this adapter does not run. Handlers only parse and enqueue
(``LaneWorker.submit``), so the ``async def`` routes never block on the service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from gate_adapters.core.reads import Read, SourceError
from gate_adapters.sources import axis, generic_json, hikvision, ocr_portal

from .lane import LaneWorker

log = logging.getLogger("gate_adapters.source.http")

Parser = Callable[[bytes, str | None, str], Read | None]

PARSERS: dict[str, Parser] = {
    "hikvision": lambda body, ctype, lane: hikvision.parse(body, ctype, lane=lane),
    "axis": lambda body, ctype, lane: axis.parse(body, lane=lane),
    "ocr": lambda body, ctype, lane: ocr_portal.parse(body, lane=lane),
    "reads": lambda body, ctype, lane: generic_json.parse(body, lane=lane),
}


def create_source_app(worker: LaneWorker, terminal: str) -> FastAPI:
    app = FastAPI(title="quaygate gate adapter inputs", openapi_url=None, docs_url=None, redoc_url=None)

    def route(vendor: str, parser: Parser) -> None:
        async def receive(lane: str, request: Request) -> Response:
            if not worker.has_lane(terminal, lane):
                return PlainTextResponse("unknown lane", status_code=404)
            body = await request.body()
            try:
                read = parser(body, request.headers.get("content-type"), lane)
            except SourceError as exc:
                log.warning("gate.source.refused.%s", vendor, extra={"lane": lane, "reason": str(exc)})
                return PlainTextResponse(str(exc), status_code=400)
            if read is None:
                return JSONResponse({"accepted": False}, status_code=202)
            worker.submit(terminal, read)
            return JSONResponse({"accepted": True}, status_code=202)

        app.add_api_route(f"/{vendor}/{{lane}}", receive, methods=["POST"], name=f"receive_{vendor}")

    for vendor, parser in PARSERS.items():
        route(vendor, parser)

    async def healthz() -> Response:
        return JSONResponse({"status": "ok", "terminal": terminal, "lanes": sorted(ln for _, ln in worker.lanes)})

    app.add_api_route("/healthz", healthz, methods=["GET"], name="healthz")
    return app

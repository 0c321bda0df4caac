"""The gate adapter runtime: the edge around the pure core (``gate_adapters.core``, ``gate_adapters.sources``).

Per lane, one truck's reads flow as::

    source (MQTT / HTTP)  ──parse──►  LaneRuntime.feed ──► LaneCorrelator ──► Ready
        ──► Outbox.put (durable, BEFORE any network call) ──► VerifyClient.verify (POST /gate/v1/verify)
        ──► Outbox.done ──► BarrierSink.act (open only on "allow")

Modules: ``outbox`` (SQLite, WAL, synchronous=FULL), ``client`` (verify client and token providers),
``sinks`` (barrier commands over HTTP, MQTT or a log line), ``lane`` (the per-lane runtime and the
worker that feeds and ticks lanes), ``mqtt_source`` and ``http_source`` (the read inputs). These may
use httpx, paho-mqtt, sqlite3 and FastAPI; the core they wrap stays standard library only.
"""

from __future__ import annotations

"""A gate lane runtime as its own process, for the kill/restart and outage tests (test_gate_offline_process).

    python -m tests.gate_offline_lane PLAN.json [CRASH_AFTER]

The plan (JSON) names the service, the token, the lane's files and the trucks, each with fixed
``observed_at`` times so a restarted process makes the same request ids. At start the process
re-sends what its outbox holds (``LaneRuntime.recover``), skips trucks its outbox has already answered,
feeds the rest one after another (``pause`` seconds apart, so a SIGKILL lands mid-run) and appends one
JSON line per result to ``results``. It then ticks until nothing is pending or unreconciled and exits 0.
With ``CRASH_AFTER`` n, the process SIGKILLs itself right after the service's n-th answer arrived and
before the outbox recorded it: the worst moment (the right is used on the server, the lane does not know).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from gate_adapters.core.correlate import LaneCorrelator, request_id_for
from gate_adapters.runtime.client import StaticToken, VerifyClient
from gate_adapters.runtime.lane import LaneResult, LaneRuntime
from gate_adapters.runtime.offline import OfflineMode, PassStore
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.sinks import LogBarrier
from gate_adapters.sources import generic_json


def truck_reads(truck: dict[str, Any], lane: str) -> list[Any]:
    at = datetime.fromisoformat(truck["at"])
    objs = [
        {"kind": "plate", "plate": {"text": truck["plate"], "country": "BE", "confidence": 0.95}},
        {"kind": "container", "container": {"number": truck["container"], "confidence": 0.97}},
        {"kind": "badge", "badge": {"scheme": "alfapass", "number": truck["badge"]}},
    ]
    return [generic_json.parse_object({**o, "lane": lane, "observed_at": at.isoformat()}) for o in objs]


class CrashAfter:
    """The verify client, but the process dies (SIGKILL, nothing runs after it) on the n-th answer."""

    def __init__(self, client: VerifyClient, n: int) -> None:
        self.client, self.n = client, n

    def verify(self, body: Any, *, within: float | None = None) -> dict[str, Any]:
        answer = self.client.verify(body, within=within)
        self.n -= 1
        if self.n == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return answer


def main(plan_path: str, crash_after: int | None = None) -> int:
    plan = json.loads(Path(plan_path).read_text())
    terminal, lane_id = plan["terminal"], plan["lane"]
    client = VerifyClient(plan["base_url"], StaticToken(plan["token"]), attempts=2, timeout=2.0, backoff=0.05)
    outbox = Outbox(plan["outbox"])
    store = PassStore(plan["passes"], issuer=plan["issuer"], terminal=terminal,
                      secret=plan["token"].encode())  # the same at each restart
    offline = OfflineMode(client, store, outbox, reconcile_seconds=0.2, refresh_seconds=30.0)
    results = Path(plan["results"]).open("a", encoding="utf-8")

    def record(result: LaneResult) -> None:
        results.write(json.dumps({"pid": os.getpid(), "request_id": result.request_id,
                                  "response": result.response, "error": result.error}) + "\n")
        results.flush()
        os.fsync(results.fileno())

    # Script time for the correlator: every truck is a minute after the last (the same driver and truck
    # plate come back for each container, which a real camera would not show within one window).
    clock = [0.0]
    sender: Any = client if crash_after is None else CrashAfter(client, crash_after)
    lane = LaneRuntime(terminal, lane_id, "in", "commit", LaneCorrelator(lane_id, terminal, "in"), sender, outbox,
                       LogBarrier(), clock=lambda: clock[0], on_result=record, retry_seconds=0.5, offline=offline,
                       act_seconds=3600.0)
    lane.recover()
    for truck in plan["trucks"]:
        reads = truck_reads(truck, lane_id)
        if outbox.response(request_id_for(terminal, lane_id, "in", reads)) is not None:
            continue  # answered before the restart
        clock[0] += 60.0
        for read in reads:
            lane.feed(read, received_at=read.observed_at.timestamp())  # the plan's fixed times outlive restarts
        lane.tick()
        time.sleep(plan.get("pause", 0.0))
    deadline = time.monotonic() + plan.get("drain_seconds", 60.0)
    while (outbox.pending() or outbox.unreconciled()) and time.monotonic() < deadline:
        time.sleep(0.2)
        clock[0] += 1.0
        lane.tick()
    done = not outbox.pending() and not outbox.unreconciled()
    outbox.close()
    store.close()
    results.close()
    return 0 if done else 3


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None))

"""Locust users for the gate verify figures (run by bench_gate.py, never imported by tests).

The seed file (QG_BENCH_SEED) holds the gate token, the terminal, the driver's badge and plate, and the
container numbers of nominated rights: the first ``check_pool`` for check mode (asked again and again),
the rest for commit mode (each used once). QG_BENCH_PACE, when set, paces every user to that many
requests per second (Locust's constant_throughput): the latency-at-a-given-load runs.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant_throughput, task
from locust.exception import StopUser

SEED: dict[str, Any] = json.loads(Path(os.environ["QG_BENCH_SEED"]).read_text())
PACE = float(os.environ.get("QG_BENCH_PACE") or 0)
_commit_index = itertools.count(SEED["check_pool"])


def _body(number: str, mode: str) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()), "terminal": SEED["terminal"], "lane": "bench-1", "direction": "in",
        "mode": mode, "container": {"number": number, "confidence": 0.97},
        "plate": {"text": SEED["plate"], "country": "BE", "confidence": 0.95},
        "badge": {"scheme": "alfapass", "number": SEED["badge"]}, "observed_at": datetime.now(UTC).isoformat(),
    }


class _Paced(FastHttpUser):
    abstract = True
    if PACE:
        wait_time = constant_throughput(PACE)


class BareUser(_Paced):
    """The bare endpoint, same request body, same server settings."""

    @task
    def bare(self) -> None:
        self.client.post("/bare/verify", json=_body(random.choice(SEED["containers"][:SEED["check_pool"]]), "check"),
                         name="bare POST")


class CheckUser(_Paced):
    @task
    def check(self) -> None:
        number = random.choice(SEED["containers"][:SEED["check_pool"]])
        with self.client.post("/gate/v1/verify", json=_body(number, "check"), name="verify check",
                              headers={"Authorization": f"Bearer {SEED['token']}"}, catch_response=True) as r:
            if r.status_code != 200 or r.json().get("decision") != "allow":
                r.failure(f"{r.status_code} {r.text[:200]}")


class CommitUser(_Paced):
    @task
    def commit(self) -> None:
        i = next(_commit_index)
        if i >= len(SEED["containers"]):
            raise StopUser("every seeded right is used")
        with self.client.post("/gate/v1/verify", json=_body(SEED["containers"][i], "commit"), name="verify commit",
                              headers={"Authorization": f"Bearer {SEED['token']}"}, catch_response=True) as r:
            if r.status_code != 200 or not r.json().get("committed"):
                r.failure(f"{r.status_code} {r.text[:200]}")

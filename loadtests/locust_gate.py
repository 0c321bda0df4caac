"""Locust users for the gate verify figures (run by bench_gate.py and bench_gate_rush.py, never imported by tests).

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
from collections.abc import Iterator
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


class _BareApp(_Paced):
    """One POST to the bare app (bare_app.py), with the verify's request body, on the check pool."""

    abstract = True
    path = ""
    label = ""
    mode = "check"

    @task
    def post(self) -> None:
        self.client.post(self.path, json=_body(random.choice(SEED["containers"][:SEED["check_pool"]]), self.mode),
                         name=self.label)


class BareUser(_BareApp):
    """The bare endpoint, same request body, same server settings."""

    path, label = "/bare/verify", "bare POST"


class BareDefUser(_BareApp):
    """The bare endpoint as a plain def (two thread hops): the earlier sessions' baseline."""

    path, label = "/bare/verify-def", "bare POST (def)"


class FloorUser(_BareApp):
    """The bare endpoint plus the two Redis round trips of an exact, idempotent check on facts read for
    the first time (bare_app.py ``/bare/verify-floor``): read them, keep the decision."""

    path, label = "/bare/verify-floor", "bare POST + 2 Redis round trips"


class Floor1User(_BareApp):
    """The bare endpoint plus the one Redis round trip an exact, idempotent check on facts read before
    cannot skip (bare_app.py ``/bare/verify-floor1``): keep the decision under its request_id. What no
    verify code can beat on this server and this Redis."""

    path, label = "/bare/verify-floor1", "bare POST + 1 Redis round trip"


class CommitFloorUser(_BareApp):
    """The floor of a commit (bare_app.py ``/bare/verify-commit-floor``): the check floor's Redis read,
    then, on the verify's thread pool, one indexed SELECT of the right and one autocommitted INSERT."""

    path, label, mode = "/bare/verify-commit-floor", "bare POST + Redis read + PostgreSQL read and write", "commit"


class CommitFloorAsyncUser(_BareApp):
    """The commit floor's round trips awaited on the event loop with an async driver (bare_app.py
    ``/bare/verify-commit-floor-async``): no thread hop."""

    path, label, mode = ("/bare/verify-commit-floor-async", "bare POST + Redis read + async PostgreSQL read and write",
                         "commit")


def _bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {SEED['token']}"}


def _next_commit(counter: Iterator[int]) -> str:
    """The next right never used (each commit uses one)."""
    i = next(counter)
    if i >= len(SEED["containers"]):
        raise StopUser("every seeded right is used")
    return str(SEED["containers"][i])


def _verify(client: Any, number: str, mode: str, label: str, headers: dict[str, str]) -> None:
    """One verify; a Locust failure unless it allowed (check) or committed (commit)."""
    with client.post("/gate/v1/verify", json=_body(number, mode), name=label, headers=headers,
                     catch_response=True) as r:
        if r.status_code != 200 or not (r.json().get("committed") if mode == "commit"
                                        else r.json().get("decision") == "allow"):
            r.failure(f"{r.status_code} {r.text[:200]}")


class CheckUser(_Paced):
    @task
    def check(self) -> None:
        _verify(self.client, random.choice(SEED["containers"][:SEED["check_pool"]]), "check", "verify check",
                _bearer())


class CommitUser(_Paced):
    @task
    def commit(self) -> None:
        _verify(self.client, _next_commit(_commit_index), "commit", "verify commit", _bearer())


# ---- a DPoP-bound gate token (the gate adapter's way, its example settings' default) ----------------------
# QG_BENCH_PROOFS names a file of proofs made ahead by bench_gate.py (``write_proofs``): signing one costs
# the load generator as much CPU as a small request, on the cores the server shares; each is used once.

_PROOFS = iter(json.loads(Path(os.environ["QG_BENCH_PROOFS"]).read_text()) if os.environ.get("QG_BENCH_PROOFS")
               else ())


def _bound() -> dict[str, str]:
    proof = next(_PROOFS, None)
    if proof is None:
        raise StopUser("every proof made ahead is used")
    return {"Authorization": f"DPoP {SEED['bound_token']}", "DPoP": proof}


class DPoPCheckUser(_Paced):
    @task
    def check(self) -> None:
        _verify(self.client, random.choice(SEED["containers"][:SEED["check_pool"]]), "check",
                "verify check (DPoP)", _bound())


_bound_commit_index = itertools.count(int(os.environ.get("QG_BENCH_COMMIT_FROM") or SEED["check_pool"]))


class DPoPCommitUser(_Paced):
    """Commits from QG_BENCH_COMMIT_FROM on: the rights the bearer commits left unused."""

    @task
    def commit(self) -> None:
        _verify(self.client, _next_commit(_bound_commit_index), "commit", "verify commit (DPoP)", _bound())


# ---- the gate rush: many lanes, mixed valid and invalid reads (bench_gate_rush.py) ----------------------
# SEED["rush"] (written by bench_gate_rush.seed_rush) holds, per kind, the reads whose decision the seed
# fixes. Each request draws its kind by weight; the answer must be that decision with that reason (and, for
# an allow, committed, with the container as repaired), else it is a Locust failure starting "wrong:".

RUSH: dict[str, Any] = SEED.get("rush", {})
RUSH_MIX = (("valid", 70), ("repair", 6), ("unknown_container", 6), ("wrong_plate", 6), ("low_confidence", 4),
            ("unknown_badge", 4), ("already_used", 4))
_rush_next = {kind: itertools.count() for kind, _ in RUSH_MIX}


def rush_case(kind: str) -> tuple[dict[str, Any], str, str | None, str | None]:
    """(body, expected decision, expected reason, expected container) of one truck of ``kind``."""
    i = next(_rush_next[kind])
    lane = f"rush-{random.randrange(RUSH.get('lanes', 24)) + 1}"
    if kind in ("valid", "repair"):  # each allow uses its right: one right per truck
        pool = RUSH[kind]
        if i >= len(pool):
            raise StopUser(f"every seeded {kind} right is used")
        read, number = (pool[i], pool[i]) if kind == "valid" else pool[i]
        return _body(read, "commit") | {"lane": lane}, "allow", None, number
    body = _body(random.choice(RUSH["shared"]), "commit") | {"lane": lane}
    if kind == "unknown_container":
        body["container"]["number"] = random.choice(RUSH["unknown"])
        return body, "deny", "container_unknown", None
    if kind == "wrong_plate":
        body["plate"]["text"] = RUSH["wrong_plate"]
        return body, "deny", "plate_mismatch", None
    if kind == "low_confidence":
        body["plate"]["confidence"] = 0.4
        return body, "review", "plate_low_confidence", None
    if kind == "unknown_badge":
        body["badge"]["number"] = RUSH["unknown_badge"]
        return body, "deny", "badge_unknown", None
    body["container"]["number"] = random.choice(RUSH["used"])
    return body, "deny", "already_used", None


def wrong(answer: dict[str, Any], decision: str, reason: str | None, number: str | None) -> str | None:
    """Why ``answer`` is not the expected one, or None."""
    got, reasons = answer.get("decision"), answer.get("reasons") or []
    if got != decision:
        return f"{decision} expected, got {got} {reasons}"
    if reason is not None and reason not in reasons:
        return f"{decision} for {reason} expected, got {reasons}"
    if decision == "allow" and not answer.get("committed"):
        return "allow not committed"
    if number is not None and answer.get("container") != number:
        return f"container {number} expected, got {answer.get('container')}"
    return None


class GateRushUser(_Paced):
    """One truck after another at a random lane; the kind drawn by RUSH_MIX."""

    @task
    def truck(self) -> None:
        kind = random.choices([k for k, _ in RUSH_MIX], weights=[w for _, w in RUSH_MIX])[0]
        body, decision, reason, number = rush_case(kind)
        with self.client.post("/gate/v1/verify", json=body, name="verify gate rush",
                              headers={"Authorization": f"Bearer {SEED['token']}"}, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code} {r.text[:200]}")
                return
            why = wrong(r.json(), decision, reason, number)
            if why is not None:
                r.failure(f"wrong: {kind}: {why}")

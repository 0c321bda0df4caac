"""The lane simulator: play a script of trucks at lanes, print each decision and a summary.

Two ways to play a script:
- ``drive`` (default): run ``LaneRuntime``s in this process against a running service
  (``--base-url`` plus ``--client-id``/``--client-secret`` or ``--token``; or the env variables
  ``QUAYGATE_SIM_BASE_URL``, ``QUAYGATE_SIM_CLIENT_ID``, ``QUAYGATE_SIM_CLIENT_SECRET``,
  ``QUAYGATE_SIM_TOKEN``). Time is virtual: the correlators see script seconds, so a script of
  ten minutes runs at once unless ``--speed`` asks for real pauses.
- ``mqtt``: publish the reads as generic JSON to ``<prefix>/<terminal>/<lane>/<kind>`` so a running
  adapter picks them up, in real time scaled by ``--speed``, and count the barrier commands heard on
  ``<prefix>/<terminal>/+/barrier`` until ``--wait`` seconds after the last read: ``open`` an allow, a
  hold naming a ``latch`` a hold by the lane's latch (held for an officer already, whatever was decided:
  runtime/lane.py rule 9; counted apart, "held by a latch", never as a review), a hold without a decision
  unanswered, else a hold calling an officer a review and one that does not a deny. ``drive`` counts the
  service's decisions, and a latched hold among them also as "held by a latch".
- ``http``: the same against a running adapter's HTTP source (``quaygate gate-adapter``, its ``[http]``
  section): each read is POSTed to ``--adapter``/reads/<lane>, as the device whose token
  ``--device-token-file`` (or ``QUAYGATE_SIM_DEVICE_TOKEN``) holds; the barrier commands are still
  heard on MQTT (lanes with ``barrier = { kind = "mqtt" }``). An ``https://`` adapter's certificate is
  checked against ``--ca-file``, and ``--cert-file``/``--key-file`` are the device's own certificate
  for an adapter that asks for one.

Script (JSON)::

    {"name": "clean rush", "terminal": "BEANR-K1700",
     "lanes": [{"lane": "in-3", "direction": "in", "mode": "commit"}],
     "window_seconds": 30,                                  # optional, the correlators' window
     "trucks": [
       {"lane": "in-3", "at": 0.0, "expect": "allow",       # expect: allow | deny | review (optional)
        "reads": [{"after": 0.0, "kind": "plate", "plate": {"text": "1-ABC-123", "country": "BE",
                                                            "confidence": 0.95}},
                  {"after": 0.6, "kind": "container", "container": {...}},
                  {"after": 1.2, "kind": "badge", "badge": {...}}]}]}

Each read is a generic JSON read (``sources/generic_json.py``) without ``lane`` and ``observed_at``:
the simulator adds them, so every run makes new request ids: ``drive`` stamps the run's start + ``at``
+ ``after`` (the start placed so that the run ends now: the service refuses a time more than minutes
ahead of its clock) and gives its lanes a wall clock on the same script time; ``mqtt`` and ``http`` stamp the
moment a read is sent, as a device does (an adapter refuses a read observed long before it arrived, or
after: lane.py rule 6). A read the parser refuses is counted as ``refused`` and not fed. A decision is
matched to its truck by ``observed_at``. Exit status: 0, or 1 when ``--check`` and an expectation
failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import httpx

from gate_adapters.core.correlate import LaneCorrelator
from gate_adapters.core.reads import SourceError
from gate_adapters.runtime.client import ClientCredentials, StaticToken, TokenProvider, VerifyClient
from gate_adapters.runtime.config import ConfigError, read_secret_file
from gate_adapters.runtime.lane import LaneResult, LaneRuntime
from gate_adapters.runtime.outbox import Outbox
from gate_adapters.runtime.sinks import LogBarrier
from gate_adapters.sources import generic_json


@dataclass(frozen=True, slots=True)
class LaneSpec:
    lane: str
    direction: str
    mode: str


@dataclass(frozen=True, slots=True)
class ScriptRead:
    at: float
    truck: int
    lane: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    terminal: str
    lanes: tuple[LaneSpec, ...]
    window_seconds: float
    reads: tuple[ScriptRead, ...]  # in time order
    expect: tuple[str | None, ...]  # per truck


@dataclass
class Summary:
    decisions: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    refused_reads: int = 0
    unanswered: int = 0
    latched: int = 0  # barrier holds by a lane's latch (runtime/lane.py rule 9), whatever was decided
    mismatches: list[str] = field(default_factory=list)

    def percentile(self, p: float) -> float | None:
        if not self.latencies:
            return None
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(p) - 1]

    def render(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.0f} ms"

        d = self.decisions
        line = (f"summary: {d['allow']} allow, {d['deny']} deny, {d['review']} review, {self.unanswered} unanswered, "
                f"{self.refused_reads} refused reads, {self.latched} held by a latch; latency p50 "
                f"{ms(self.percentile(50))}, "
                f"p99 {ms(self.percentile(99))}")
        return "\n".join([line, *(f"mismatch: {m}" for m in self.mismatches)])


def load_script(path: str | Path) -> Script:
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    lanes = tuple(LaneSpec(ln["lane"], ln.get("direction", "in"), ln.get("mode", "commit")) for ln in raw["lanes"])
    known = {ln.lane for ln in lanes}
    reads: list[ScriptRead] = []
    expect: list[str | None] = []
    for n, truck in enumerate(raw["trucks"]):
        if truck["lane"] not in known:
            raise ValueError(f"truck {n} is at lane {truck['lane']!r}, which the script does not declare")
        expect.append(truck.get("expect"))
        for read in truck["reads"]:
            payload = {k: v for k, v in read.items() if k != "after"}
            reads.append(ScriptRead(float(truck.get("at", 0.0)) + float(read.get("after", 0.0)), n, truck["lane"],
                                    payload))
    reads.sort(key=lambda r: (r.at, r.truck))
    return Script(raw.get("name", Path(path).stem), raw["terminal"], lanes, float(raw.get("window_seconds", 30.0)),
                  tuple(reads), tuple(expect))


def stamped(read: ScriptRead, observed: datetime) -> dict[str, Any]:
    """The generic JSON read as a device would send it."""
    return {**read.payload, "lane": read.lane, "observed_at": observed.isoformat(), "device": "simulator"}


class VirtualClock:
    """Script seconds for the correlators: a script plays at once, yet windows close as scripted."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Matcher:
    """Matches each decision to its truck through the reads' ``observed_at`` and checks expectations."""

    def __init__(self, script: Script, start: datetime, out: TextIO) -> None:
        self.script, self.out, self.summary = script, out, Summary()
        self.truck_at: dict[datetime, int] = {start + timedelta(seconds=r.at): r.truck for r in script.reads}
        self._lock = threading.Lock()

    def on_result(self, result: LaneResult) -> None:
        with self._lock:
            truck = None
            if result.observed_at is not None:
                truck = self.truck_at.get(datetime.fromisoformat(result.observed_at))
            label = "truck ?" if truck is None else f"truck {truck}"
            if result.response is None:
                self.summary.unanswered += 1
                print(f"{label} lane {result.lane}: no decision ({result.error})", file=self.out)
                got = None
            else:
                got = str(result.decision)
                self.summary.decisions[got] += 1
                self.summary.latencies.append(result.latency)
                reasons = ",".join(result.response.get("reasons", [])) or "-"
                command = result.command.command if result.command is not None else "-"
                held = "" if result.latched is None else f" (latch {result.latched})"
                print(f"{label} lane {result.lane}: {got} [{reasons}] barrier {command}{held} "
                      f"{result.latency * 1000:.0f} ms", file=self.out)
            if result.latched is not None:
                self.summary.latched += 1
            wanted = None if truck is None else self.script.expect[truck]
            if wanted is not None and got != wanted:
                self.summary.mismatches.append(f"{label}: expected {wanted}, got {got}")


def drive(
    script: Script,
    client: VerifyClient,
    *,
    outbox_path: str | Path,
    speed: float = 0.0,
    out: TextIO = sys.stdout,
    sleep: Callable[[float], None] = time.sleep,
) -> Summary:
    """Play ``script`` through in-process lane runtimes; ``speed`` 0 means no real pauses."""
    # The run is stamped to end now: a script plays in script time (at once, with speed 0), and reads
    # stamped ahead of now (start + at) would be refused by the service past 10 minutes (the verify's
    # observed_at, release_service/domain/gate.py check_observed_at).
    span = (script.reads[-1].at if script.reads else 0.0) + script.window_seconds + 1.0
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=math.ceil(span))
    matcher = _Matcher(script, start, out)
    clock = VirtualClock()
    outbox = Outbox(outbox_path, strict=False)  # a rehearsal's file: a loose one is a warning
    lanes = {
        spec.lane: LaneRuntime(
            script.terminal, spec.lane, spec.direction, spec.mode,  # type: ignore[arg-type]
            LaneCorrelator(spec.lane, script.terminal, spec.direction, window_seconds=script.window_seconds),
            client, outbox, LogBarrier(), clock, on_result=matcher.on_result, retry_seconds=float("inf"),
            wall=lambda: start.timestamp() + clock.now,  # script time: a read is received when it is observed
        )
        for spec in script.lanes
    }
    try:
        for read in script.reads:
            if speed > 0 and read.at > clock.now:
                sleep((read.at - clock.now) / speed)
            clock.now = max(clock.now, read.at)
            for lane in lanes.values():
                lane.tick()
            try:
                parsed = generic_json.parse_object(stamped(read, start + timedelta(seconds=read.at)))
            except SourceError as exc:
                matcher.summary.refused_reads += 1
                print(f"truck {read.truck} lane {read.lane}: read refused ({exc})", file=out)
                continue
            lanes[read.lane].feed(parsed)
        clock.now += script.window_seconds + 1.0  # let every truck still collecting time out
        for lane in lanes.values():
            lane.tick()
    finally:
        outbox.close()
    return matcher.summary


def publish(
    script: Script,
    *,
    host: str,
    port: int,
    prefix: str = "quaygate",
    speed: float = 1.0,
    wait: float = 5.0,
    out: TextIO = sys.stdout,
    adapter_url: str | None = None,
    device_token: str | None = None,
    http: httpx.Client | None = None,
) -> Summary:
    """Publish the reads over MQTT (or POST them to ``adapter_url``'s HTTP source, as the device whose
    token is ``device_token``) for a running adapter; count the barrier commands it answers with."""
    from gate_adapters.runtime.mqtt_source import new_client

    summary = Summary()
    heard: list[dict[str, Any]] = []
    client = new_client()
    sender = http or httpx.Client(timeout=5.0)

    def on_message(c: Any, u: Any, message: Any) -> None:
        command = json.loads(message.payload)
        heard.append(command)
        print(f"barrier {message.topic}: {command.get('command')} decision {command.get('decision_id')}", file=out)

    client.on_message = on_message
    client.connect(host, port, 30)
    client.subscribe(f"{prefix}/{script.terminal}/+/barrier", qos=1)
    client.loop_start()
    try:
        began = time.monotonic()
        for read in script.reads:
            delay = read.at / speed - (time.monotonic() - began) if speed > 0 else 0.0
            if delay > 0:
                time.sleep(delay)
            payload = stamped(read, datetime.now(UTC))
            if adapter_url is not None:
                try:
                    r = sender.post(f"{adapter_url.rstrip('/')}/reads/{read.lane}", json=payload,
                                    headers=_device_headers(device_token))
                except httpx.TransportError as exc:  # no connection, a certificate refused either way
                    summary.refused_reads += 1
                    print(f"truck {read.truck} lane {read.lane}: read not delivered ({exc})", file=out)
                    continue
                if r.status_code != 202:
                    summary.refused_reads += 1
                    print(f"truck {read.truck} lane {read.lane}: read refused ({r.status_code} {r.text[:200]})",
                          file=out)
                continue
            topic = f"{prefix}/{script.terminal}/{read.lane}/{payload['kind']}"
            client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(5.0)
        time.sleep(wait)
    finally:
        client.disconnect()
        client.loop_stop()
        if http is None:  # ours: its connections closed (else a socket left for the GC, a ResourceWarning)
            sender.close()
    for command in heard:  # read back through sinks.command_for's rules
        if command.get("command") == "open":
            summary.decisions["allow"] += 1
        elif command.get("latch") is not None:  # sinks.py rule 5: held for the lane's latch, not this truck
            summary.latched += 1
        elif command.get("decision_id") is None:
            summary.unanswered += 1
        else:
            summary.decisions["review" if command.get("call_officer") else "deny"] += 1
    return summary


def _device_headers(token: str | None) -> dict[str, str]:
    """What a device sends the adapter's HTTP source (docs/gate-adapter.md "Who may send reads")."""
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _device_token(args: argparse.Namespace) -> str | None:
    if args.device_token_file:
        return read_secret_file(Path(args.device_token_file), "--device-token-file", strict=False)
    return os.environ.get("QUAYGATE_SIM_DEVICE_TOKEN") or None


def _device_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """How the simulator, as a device, reaches an adapter whose HTTP source serves TLS (its ``[http]
    cert_file``): the source's certificate checked against ``--ca-file`` (else the system's CAs), and
    the device's own certificate shown with ``--cert-file``/``--key-file`` (its ``client_ca_file``).
    None for an ``http://`` adapter. ConfigError for a file that cannot be used."""
    if not args.adapter.lower().startswith("https://"):
        if args.ca_file or args.cert_file:
            raise ConfigError("--ca-file, --cert-file", "they are for an https:// --adapter")
        return None
    if bool(args.cert_file) != bool(args.key_file):
        raise ConfigError("--cert-file, --key-file", "give both or neither")
    try:
        context = ssl.create_default_context(cafile=args.ca_file)
        if args.cert_file:
            context.load_cert_chain(args.cert_file, args.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("--ca-file, --cert-file, --key-file", str(exc)) from None
    return context


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m gate_adapters.simulate", description=__doc__.split("\n\n")[0])
    p.add_argument("script", help="a JSON script of trucks (see tests/fixtures/gate/sim_*.json)")
    p.add_argument("--via", choices=("drive", "mqtt", "http"), default="drive")
    p.add_argument("--adapter", default="http://127.0.0.1:8089",
                   help="a running adapter's HTTP source (--via http)")
    p.add_argument("--device-token-file", help=(
        "a file holding the token of a device the adapter's [[http.devices]] lists for these lanes and kinds "
        "(--via http; or QUAYGATE_SIM_DEVICE_TOKEN); without one, an adapter outside dev refuses every read"))
    p.add_argument("--ca-file", help="the CA that signed an https:// adapter's certificate (--via http)")
    p.add_argument("--cert-file", help="the device's certificate, for an adapter that asks for one (mutual TLS)")
    p.add_argument("--key-file", help="the device certificate's private key")
    p.add_argument("--base-url", default=env("QUAYGATE_SIM_BASE_URL", "http://127.0.0.1:8000"))
    p.add_argument("--client-id", default=env("QUAYGATE_SIM_CLIENT_ID"))
    p.add_argument("--client-secret", default=env("QUAYGATE_SIM_CLIENT_SECRET"))
    p.add_argument("--token", default=env("QUAYGATE_SIM_TOKEN"), help="a bearer token instead of a client")
    p.add_argument("--outbox", help="the outbox file (default: a temporary one)")
    p.add_argument("--speed", type=float, default=None, help="script seconds per real second (0: no pauses)")
    p.add_argument("--mqtt", default="127.0.0.1:1883", help="host:port of the broker (--via mqtt)")
    p.add_argument("--prefix", default="quaygate")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to listen after the last read (--via mqtt)")
    p.add_argument("--check", action="store_true", help="exit 1 when a truck's decision is not the expected one")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, http: httpx.Client | None = None, out: TextIO = sys.stdout) -> int:
    """The command line; ``http`` lets a test run it against an in-process app."""
    args = _arguments(argv)
    script = load_script(args.script)
    if args.via in ("mqtt", "http"):
        try:
            device_token = _device_token(args) if args.via == "http" else None
            tls = _device_tls(args) if args.via == "http" else None
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        own = httpx.Client(timeout=5.0, verify=tls) if tls is not None and http is None else None
        host, _, port = args.mqtt.rpartition(":")
        try:
            summary = publish(script, host=host or "127.0.0.1", port=int(port), prefix=args.prefix,
                              speed=1.0 if args.speed is None else args.speed, wait=args.wait, out=out,
                              adapter_url=args.adapter if args.via == "http" else None, device_token=device_token,
                              http=http or own)
        finally:
            if own is not None:
                own.close()
    else:
        http = http or httpx.Client()
        tokens: TokenProvider
        if args.token:
            tokens = StaticToken(args.token)
        elif args.client_id and args.client_secret:
            tokens = ClientCredentials(args.base_url.rstrip("/") + "/oauth2/token", args.client_id,
                                       args.client_secret, http=http)
        else:
            print("give --token, or --client-id and --client-secret (or their QUAYGATE_SIM_* variables)",
                  file=sys.stderr)
            return 2
        client = VerifyClient(args.base_url, tokens, http=http)
        with tempfile.TemporaryDirectory() as tmp:
            summary = drive(script, client, outbox_path=args.outbox or Path(tmp) / "outbox.sqlite3",
                            speed=args.speed or 0.0, out=out)
    print(summary.render(), file=out)
    return 1 if args.check and summary.mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Barrier sinks: turn a verify answer into a barrier command, over HTTP, MQTT or a log line.

Rules (one place, every sink):
1. Only an ``allow`` that was committed opens: ``mode == "commit"`` and ``committed`` true. A truck may
   not pass a gate whose passage was not recorded (the right would look unused, and the next truck on
   it would be let through too). A ``check`` answer uses no right, so it never opens (``hold``, no
   officer: nothing is wrong); the settings refuse a check lane with a barrier that opens (config.py).
2. ``deny`` holds; ``review`` holds and calls an officer (``call_officer``); no answer at all
   (``None``: service unreachable, request refused) holds and calls an officer too: never open
   without an "allow": the service's, or in an outage the lane's own from a signed gate pass
   (``offline.py``; such an answer carries ``offline`` and is recorded locally, reconciled later).
3. A command carries the lane, ``open``|``hold``, the ``decision_id`` (``None`` without an answer)
   and ``call_officer``; nothing about the driver (barrier controllers log what they receive).
4. With a ``CommandSigner`` (``[barrier_signing]``), the HTTP body and the MQTT payload carry the command
   signed too, as their ``signature`` member (``command_signing.py``): a controller that verifies it opens
   only for this adapter, its own terminal and lane, a few seconds, once. An HTTP barrier also sends its
   credentials (a bearer token, or HTTP Basic) and speaks TLS with the CA and client certificate it is
   given (config.py rule 9); it never follows a redirect, nor goes through a proxy the environment names
   (``HTTP_PROXY`` and the like, review 173): the command and the credentials go to the controller only.
5. A lane latched for an officer (lane.py rule 9) is told ``hold`` with ``call_officer`` whatever the
   decision (``latched_hold``), and ``latch``, the id of the latch that held it: the controller, an
   officer's display and the simulator tell a hold for this truck from one for the lane's latch (only
   such a command carries ``latch``; every other is sent as it always was). A command that calls an
   officer latches its lane (``latches``).
   ``send`` sends a command as it is; ``act`` is ``send(command_for(...))``.
6. A command the barrier did not hear raises ``BarrierUnreachable`` (after ``gate.barrier.unreachable`` is logged):
   an HTTP error or no 2xx, an MQTT publish refused, and any other exception on the way (an ``httpx.InvalidURL``, a
   bug: review 173), so nothing but ``BarrierUnreachable`` leaves ``send``. The lane latches on an "open" not heard
   (lane.py rule 10): its truck stands at a shut barrier, and the next truck's "open" must not be the one that
   lifts it. An "open" is said now or never: it must never wait in a queue to be heard after the truck it was for
   has gone (lane.py rule 2, for late answers, says the same). An HTTP barrier has no queue. Over MQTT an "open" is
   published only while the client is connected, at QoS 0 (paho keeps a QoS 1 or 2 message it could not deliver,
   even one refused with ``MQTT_ERR_NO_CONN``, and sends it on reconnect; ``max_queued_messages_set`` only refuses
   new ones, and a QoS 1 message already handed over is re-sent with DUP when its PUBACK did not come; a QoS 0
   packet not yet written is dropped on reconnect), and counts as sent once paho has written it to the socket
   within ``timeout``; a broker keeps no QoS 0 message for a controller that is away either. Not written within
   ``timeout`` (a broker that stopped reading, a full socket), the packet would still sit in paho's queue and go
   out once the socket drains, after the lane latched (review 116): so the connection is cut there and then
   (``_drop_unwritten``: the socket reset, unsent bytes discarded; paho reconnects, and a reconnect drops every
   queued QoS 0 packet) before ``BarrierUnreachable`` is raised. What TCP itself still holds when a link comes back
   is what the signature's few seconds of life (``[barrier_signing]``, required for MQTT barriers outside dev,
   config.py rule 9) are for. A ``hold`` keeps ``qos`` (1): heard late, it is harmless, and its officer call and
   latch still tell the controller something.
7. An MQTT "open" written to the broker reaches a barrier only if its controller is there: the broker drops
   a QoS 0 message nobody is subscribed to, and a published "open" counted as heard while the truck stood
   at a shut barrier, its right used, nobody called (review 173). With ``presence`` (a lane's ``presence =
   true``, config.py rule 9) each controller keeps a retained status on ``<prefix>/<terminal>/<lane>/
   barrier/status``: ``online`` once connected, its last will ``offline`` (the broker says it when the
   controller is gone without a word). ``BarrierPresence`` holds what each said, heard on the adapter's own
   connection (``mqtt_source.py`` subscribes the topics at each connect and forgets every status at each
   connect and disconnect: a status from before counts for nothing until the broker says it again). An
   "open" is then sent only while its controller is ``online``; a status not yet known (just connected) is
   waited for within ``timeout``; anything else is ``BarrierUnreachable`` and the lane latches. A ``hold``
   needs no presence. It narrows the gap, it does not close it: a controller gone in the last second, before
   the broker noticed (its keep-alive), still "hears" an open; only an acknowledgement would say more.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import struct
import threading
from collections.abc import Generator, Iterable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol

import httpx

from .command_signing import CommandSigner

log = logging.getLogger("gate_adapters.barrier")


class BarrierCommand(StrEnum):
    OPEN = "open"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Command:
    lane: str
    command: BarrierCommand
    decision_id: str | None
    call_officer: bool
    latch: int | None = None  # rule 5: the latch that held the barrier, whatever the decision said

    def as_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in asdict(self).items()
                if k != "latch" or v is not None}


def command_for(response: Mapping[str, Any] | None, lane: str) -> Command:
    """Rules 1 and 2: the only path to ``open``."""
    if response is None or "decision" not in response:
        return Command(lane, BarrierCommand.HOLD, None, call_officer=True)
    decision_id = None if response.get("decision_id") is None else str(response["decision_id"])
    decision = response.get("decision")
    if decision == "allow" and response.get("mode") == "commit" and response.get("committed") is True:
        return Command(lane, BarrierCommand.OPEN, decision_id, call_officer=False)
    checked = decision == "allow" and response.get("mode") == "check"  # a dry run: fine, but no passage
    return Command(lane, BarrierCommand.HOLD, decision_id, call_officer=decision != "deny" and not checked)


def latches(cmd: Command) -> bool:
    """Rule 5: a command that calls an officer latches its lane until an officer clears it."""
    return cmd.call_officer


def latched_hold(cmd: Command, latch: int) -> Command:
    """Rule 5: what a lane latched by ``latch`` tells its barrier instead of ``cmd``: hold, the officer
    called (the decision id kept, so the controller's log names the decision that was held), and the
    latch that held it."""
    return Command(cmd.lane, BarrierCommand.HOLD, cmd.decision_id, call_officer=True, latch=latch)


def signed_json(cmd: Command, signer: CommandSigner | None) -> dict[str, Any]:
    """Rule 4: the command's JSON, with its signature beside it when there is a signer."""
    body = cmd.as_json()
    return body if signer is None else body | {"signature": signer.sign(body)}


class BarrierUnreachable(Exception):
    """Rule 6: the barrier did not hear ``command`` (``reason``: what went wrong, no secrets)."""

    def __init__(self, command: Command, reason: str) -> None:
        super().__init__(f"the barrier of lane {command.lane!r} did not hear {command.command!s}: {reason}")
        self.command, self.reason = command, reason


def _unreachable(cmd: Command, reason: str, **extra: Any) -> BarrierUnreachable:
    """Rule 6: logged, then raised by the caller."""
    log.error("gate.barrier.unreachable", extra={"lane": cmd.lane, "command": str(cmd.command), **extra})
    return BarrierUnreachable(cmd, reason)


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>`` (RFC 6750 §2.1) toward a barrier controller."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def __repr__(self) -> str:  # never the token
        return "BearerAuth(***)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class BarrierSink(Protocol):
    def send(self, cmd: Command) -> Command:
        """Tell the barrier ``cmd``; ``BarrierUnreachable`` when it did not hear it (rule 6)."""
        ...


class LogBarrier:
    """A structured log line per command (a lane without a barrier controller, or a dry run)."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger

    def act(self, response: Mapping[str, Any] | None, lane: str) -> Command:
        return self.send(command_for(response, lane))

    def send(self, cmd: Command) -> Command:
        self._log.info("gate.barrier.%s", cmd.command, extra={"barrier": cmd.as_json()})
        return cmd


class HttpBarrier:
    """POST the command as JSON to the barrier controller's URL (rule 4: signed, with credentials, TLS)."""

    def __init__(self, url: str, *, http: httpx.Client | None = None, timeout: float = 2.0,
                 signer: CommandSigner | None = None, auth: httpx.Auth | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.url, self.timeout, self.signer = url, timeout, signer
        # An injected client brings its own timeouts and TLS; ``auth`` goes with each request either way.
        # ``trust_env=False`` (review 173): never a proxy from HTTP_PROXY/HTTPS_PROXY/ALL_PROXY (with it the
        # proxy got the command and the barrier's credentials, and its 200 counted as heard), nor CA files
        # or .netrc from the environment: the controller is on the terminal's own network (rule 4).
        self._http = http or httpx.Client(timeout=timeout, verify=tls or True, follow_redirects=False,
                                          trust_env=False)
        self._auth = auth

    def act(self, response: Mapping[str, Any] | None, lane: str) -> Command:
        return self.send(command_for(response, lane))

    def send(self, cmd: Command) -> Command:
        try:
            body = signed_json(cmd, self.signer)
            r = (self._http.post(self.url, json=body) if self._auth is None
                 else self._http.post(self.url, json=body, auth=self._auth))
            r.raise_for_status()
        except Exception as exc:  # noqa: BLE001 - rule 6: whatever failed, the barrier did not hear it
            # A barrier that did not hear "open" stays closed: the safe failure; the lane latches (rule 6).
            # Not only httpx.HTTPError: an httpx.InvalidURL (review 173) or a bug below us must not end
            # the lane after the allow was committed, with the truck at a shut barrier and no latch.
            raise _unreachable(cmd, type(exc).__name__, error=type(exc).__name__) from exc
        return cmd


ONLINE, OFFLINE = "online", "offline"  # rule 7: what a controller says on its status topic


def status_topic(prefix: str, terminal: str, lane: str) -> str:
    """Rule 7: where ``lane``'s barrier controller keeps its status (retained)."""
    return f"{prefix}/{terminal}/{lane}/barrier/status"


class BarrierPresence:
    """Rule 7: what each lane's MQTT barrier controller last said of itself on its status topic. Fed by paho's
    network thread (``attach``, then ``heard``), read by the lanes' threads (``status``)."""

    def __init__(self, prefix: str, terminal: str, lanes: Iterable[str]) -> None:
        self._lanes = {status_topic(prefix, terminal, lane): lane for lane in lanes}
        self._status: dict[str, str] = {}
        self._changed = threading.Condition()

    def topics(self) -> list[str]:
        return list(self._lanes)

    def attach(self, client: Any) -> None:
        """Our callback for the status topics on paho's ``client`` (before its ``on_message``)."""
        for topic in self._lanes:
            client.message_callback_add(topic, lambda c, u, message: self.heard(message.topic, message.payload))

    def forget(self) -> None:
        """At each connect and disconnect: nothing is known until the broker says it (again)."""
        with self._changed:
            self._status.clear()

    def heard(self, topic: str, payload: bytes) -> None:
        lane = self._lanes.get(topic)
        if lane is None:
            return
        status = bytes(payload).decode("utf-8", "replace").strip().lower()[:32]  # b"": a status cleared
        with self._changed:
            before = self._status.get(lane)
            self._status[lane] = status
            self._changed.notify_all()
        if status != before:
            level = logging.INFO if status == ONLINE else logging.WARNING
            log.log(level, "gate.barrier.presence: lane %s: the barrier controller is %s", lane,
                    status if status in (ONLINE, OFFLINE) else f"not online ({status or 'no status'})",
                    extra={"lane": lane, "presence": status})

    def status(self, lane: str, wait: float = 0.0) -> str | None:
        """What ``lane``'s controller last said (None: nothing since we connected), waiting up to ``wait``
        seconds for a first word."""
        with self._changed:
            self._changed.wait_for(lambda: lane in self._status, timeout=wait)
            return self._status.get(lane)


class MqttPublisher(Protocol):
    """What we need of paho's ``Client``: ``publish(topic, payload, qos)`` and ``is_connected()``."""

    def publish(self, topic: str, payload: str | bytes | None = None, qos: int = 0, retain: bool = False) -> Any: ...

    def is_connected(self) -> bool: ...

    def socket(self) -> Any: ...


class MqttBarrier:
    """Publish the command to ``<prefix>/<terminal>/<lane>/barrier``: a ``hold`` with ``qos`` (1, at least
    once), an ``open`` at most once and only now (rule 6: QoS 0, while connected, written within
    ``timeout`` seconds)."""

    def __init__(self, client: MqttPublisher, terminal: str, *, prefix: str = "quaygate", qos: int = 1,
                 signer: CommandSigner | None = None, timeout: float = 2.0,
                 presence: BarrierPresence | None = None) -> None:
        self._client, self.terminal, self.prefix, self.qos, self.signer = client, terminal, prefix, qos, signer
        self.timeout, self.presence = timeout, presence  # presence: rule 7 (None: an open written is heard)

    def topic(self, lane: str) -> str:
        return f"{self.prefix}/{self.terminal}/{lane}/barrier"

    def act(self, response: Mapping[str, Any] | None, lane: str) -> Command:
        return self.send(command_for(response, lane))

    def send(self, cmd: Command) -> Command:
        try:
            payload = json.dumps(signed_json(cmd, self.signer))
            if cmd.command is BarrierCommand.OPEN:
                return self._open(cmd, payload)
            info = self._client.publish(self.topic(cmd.lane), payload, qos=self.qos)
        except BarrierUnreachable:
            raise
        except Exception as exc:  # noqa: BLE001 - rule 6: whatever failed, the barrier did not hear it
            raise _unreachable(cmd, type(exc).__name__, error=type(exc).__name__) from exc
        if getattr(info, "rc", 0) != 0:  # paho keeps a hold for the reconnect: harmless, but not heard now
            raise _unreachable(cmd, f"publish rc {info.rc}", rc=int(info.rc))
        return cmd

    def _open(self, cmd: Command, payload: str) -> Command:
        """Rule 6: now or never. Not connected: never handed to paho (it would keep it for the reconnect)."""
        if not self._client.is_connected():
            raise _unreachable(cmd, "not connected to the broker", rc="not_connected")
        if self.presence is not None:  # rule 7: a controller there to hear it
            status = self.presence.status(cmd.lane, wait=self.timeout)
            if status != ONLINE:
                raise _unreachable(cmd, f"its barrier controller is not online (status {status or 'unknown'})",
                                   rc="controller_not_online", presence=status)
        info = self._client.publish(self.topic(cmd.lane), payload, qos=0)
        try:  # QoS 0: paho never stores it; its packet not written when the connection drops is dropped
            info.wait_for_publish(self.timeout)
            written = info.is_published()
        except (RuntimeError, ValueError):  # paho's way of saying rc > 0 (no connection, connection lost)
            written = False
        if not written:
            _drop_unwritten(self._client)
            raise _unreachable(cmd, f"publish not written (rc {getattr(info, 'rc', '?')})", rc=int(info.rc))
        return cmd


def _drop_unwritten(client: MqttPublisher) -> None:
    """Rule 6: an "open" paho did not write in time must never be written later. Cut the connection: with
    ``SO_LINGER`` 0 the close resets it and the kernel discards what it still holds unsent; ``shutdown``
    fails paho's next read or write on it (no byte more goes out), so its network thread closes the
    socket and reconnects, and ``reconnect`` clears every queued QoS 0 packet (paho 2, ``Client.reconnect``).
    Every lane's MQTT goes down for the reconnect: rare (a broker not reading for seconds), and safe."""
    sock = client.socket()
    if sock is None:
        return  # no connection: the reconnect that makes one clears the queue first
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already gone: paho sees it lost and reconnects all the same
        pass
    log.warning("gate.barrier.mqtt.connection_cut: an open not written in time is dropped with the connection")

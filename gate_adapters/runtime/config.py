"""The gate adapter's settings file (TOML), parsed and checked before anything starts.

``parse(doc)`` turns the parsed TOML document into frozen settings or raises ``ConfigError`` naming the
key (``lanes[2].barrier.url``) and what is wrong with it; ``load(path)`` reads the file first. Nothing
here opens a socket or a file other than the settings file itself: the thin main (``gate_adapters.adapter``)
builds the pieces. See docs/gate-adapter.example.toml for every key.

Rules:
1. Unknown keys are refused (a typo such as ``refresh_secnds`` must not silently leave a default).
2. Exactly one way to authenticate: ``client_secret_file`` (client_secret_basic, RFC 6749 §2.3.1) or
   ``private_key_file`` (private_key_jwt, RFC 7523 §2.2). A secret is never written in the file itself:
   it is read from its own file (permissions of its own) or from ``QUAYGATE_GATE_CLIENT_SECRET``.
3. Lane ids are unique; a lane's sources name configured sources; a lane whose barrier is ``mqtt``
   needs the ``[mqtt]`` section; an ``http`` barrier needs an http(s) ``url``. A lane in ``check`` mode
   uses no right, so it may not drive a barrier that opens (``http`` or ``mqtt``): only ``log``
   (an "open" on a check would let every truck on one right through).
4. Outside ``dev = true`` the service must be ``https://`` (gate tokens and decisions cross the network).
5. Reads decide who passes a gate, so nobody on the terminal network may inject one. Each HTTP device
   (``[[http.devices]]``) has a bearer token, held here only as its SHA-256 (``token_sha256``) or read
   from its own file (``token_file``), and is bound to lanes and kinds of read; outside ``dev = true``
   an ``[http]`` section without devices is refused, and so is one that listens beyond this host
   without TLS (``cert_file``, ``key_file``; ``client_ca_file`` adds mutual TLS: a device must show a
   certificate that CA signed): its device tokens and reads would cross the camera network in clear,
   for anyone on it to copy. ``allow_insecure = true`` keeps such a source for a camera network nothing
   else reaches, with a warning at each start (as rule 9 for barriers). An ``[http]`` source may also
   take officers (``[[http.officers]]``, a token each, as devices but never a device's: a camera's
   token clears no latch, lane.py rule 9), and a liveness listener of its own in plain HTTP
   (``health_port``, ``health_host``: ``/livez`` only, status and nothing else, for a load balancer
   that cannot show a client certificate). Outside ``dev = true`` MQTT needs credentials
   (``username`` and ``password_file``, or a TLS client certificate), and TLS unless the broker is on
   this host (a password in clear across the network is no credential). Which topics each broker
   account may publish is the broker's ACL (docs/gate-adapter.md).
6. A face *match result* says the driver was already identified: it is accepted only from a source
   with ``trusted_face_matcher = true`` (an image is matched by the service itself).
7. A lane's read age (``read_age_seconds``, default 30) and clock slack (``clock_slack_seconds``, default 5)
   are positive and bounded (300 s, 60 s): they are what refuses a replayed read (lane.py rule 6), so a
   value that would let a camera's buffer of old reads through is a bad setting, not a choice.
   ``max_pending`` (1 to 64) and ``queue_size`` (1 to 100000) bound what a flood of reads can hold;
   ``queue_size`` is a lane's own (a busy entry lane and a quiet exit lane need different bounds), the
   top-level ``queue_size`` its default. ``[service] timeout`` times ``attempts`` may not exceed
   ``act_seconds`` (review 173, finding 1): past it no answer moves a barrier (lane.py rule 2), and each
   verify call ends by then (client.py rule 8), so tries that could not fit are a bad setting.
8. DPoP (RFC 9449): ``auth.dpop_key_file`` binds the gate tokens to a key of this host (``auth.dpop`` is
   then true unless set false). The example file sets it, so a new adapter sends DPoP; a file without it
   sends bearer tokens (a warning at each start outside ``dev = true``).
9. A barrier controller hears who may open a gate, so its commands are authenticated: an ``http`` barrier
   takes credentials (``token_file``, or ``username`` and ``password_file``; a TLS client certificate),
   TLS settings (``ca_file``, ``cert_file``, ``key_file``: ``https://`` only), and ``[barrier_signing]``
   signs every command (HTTP and MQTT). Outside ``dev = true`` an ``http`` barrier on another host must
   be ``https://`` with credentials or signing, or ``http://`` with signing (credentials in clear are no
   credential), unless it sets ``allow_insecure = true`` (a warning at each start). An ``mqtt`` barrier
   needs ``[barrier_signing]`` outside ``dev = true``, always (no ``allow_insecure``): the broker is a
   store and forward hop, and a command it or the network holds back can be heard after its truck has
   gone; a signed command lives a few seconds (``lifetime_seconds``, 5 by default, at most 10) and is heard once,
   so an "open" heard late is refused by the controller (sinks.py rule 6). The broker's ACL decides
   who may publish on the barrier topics; the signature decides what a controller obeys. ``presence =
   true`` on an ``mqtt`` barrier (and only there) sends an "open" only while its controller's retained
   status says ``online`` (sinks.py rule 7, review 173); without it an "open" counts as heard once written
   to the broker, as before, and each start outside dev says what to set (``presence_risk``): switching it
   on for a controller that keeps no status would latch the lane at every allow.
10. Secrets in files of their own (the client secret, device and officer tokens, the MQTT password,
    barrier credentials) are checked as private keys are (keys.py ``read_private_file``): outside
    ``dev = true`` one that group or others may read or write, or that belongs to another user than
    the adapter's (or root), stops the adapter naming its key and the fix; in dev it is a warning.
    TLS key files are left to the TLS library unchecked, on purpose: 0640 with group ssl-cert is usual.
11. Every URL (``service.base_url``, ``service.issuer``, ``auth.audience``, a barrier's ``url``) is checked
    whole when the settings are read (``url_problem``): http(s), a host that is a host name or an IPv4 or
    bracketed IPv6 address, a port from 1 to 65535, no space or control character. A URL the adapter could
    not send to is a bad setting (``--check`` says so, exit 2), never a barrier that fails at its first
    "open" mid-shift (review 173). A URL holds no secret: a user name, a password, a query string or a
    fragment is refused (rule 10: secrets live in files of their own), since a URL is printed in messages
    and warnings and was logged by httpx for every request (the adapter keeps httpx's log below WARNING
    quiet); the refusal never repeats the URL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import math
import re
import secrets
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

DIRECTIONS = ("in", "out")
MODES = ("check", "commit")
SOURCES = ("http", "mqtt")
BARRIERS = ("log", "http", "mqtt")
READ_KINDS = ("plate", "container", "badge", "face")
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # no ':' (an HTTP Basic user-id, RFC 7617 §2)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_READ_AGE_SECONDS = 300.0  # rule 7: beyond this an old read sent again is no longer refused as a replay
MAX_CLOCK_SLACK_SECONDS = 60.0  # rule 7: a device clock further ahead than this is broken, not slack
MAX_QUEUE_SIZE = 100_000  # rule 7: reads waiting at one lane (a few hundred bytes each): a bound, not a sink


def token_sha256(token: str) -> str:
    """What the settings file holds for a device token. Unsalted SHA-256 is enough for a minted token
    (256 random bits: nothing to guess), never for a password a person chose."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def mint_token() -> tuple[str, str]:
    """A new device token and its ``token_sha256`` (``quaygate gate-adapter --mint-token``)."""
    token = secrets.token_urlsafe(32)
    return token, token_sha256(token)


class ConfigError(ValueError):
    """A bad setting: ``key`` names it as written in the file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def read_secret_file(path: Path, key: str, *, strict: bool = True, may_be_empty: bool = False) -> str:
    """A secret kept in its own file (the client secret, a device or officer token, the MQTT password, a
    barrier credential), read before anything starts, stripped; ``ConfigError`` naming ``key`` when it
    cannot be read, is empty, or (``strict``, outside dev) is not this adapter's alone (rule 10)."""
    from .keys import KeyFileExposed, read_private_file

    try:
        raw = read_private_file(path, strict=strict, risk="whoever reads it can use this secret")
        secret = raw.decode("utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    except KeyFileExposed as exc:
        raise ConfigError(key, str(exc)) from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path} is not UTF-8 text") from None
    if not secret and not may_be_empty:
        raise ConfigError(key, f"{path} is empty")
    return secret


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    base_url: str
    issuer: str
    timeout: float = 2.0
    attempts: int = 3
    max_retry_after: float = 3.0  # client.py rule 7: the most one call waits on a 429's Retry-After


@dataclass(frozen=True, slots=True)
class AuthSettings:
    client_id: str
    client_secret_file: Path | None = None
    private_key_file: Path | None = None
    key_id: str | None = None
    algorithm: str | None = None
    audience: str | None = None
    scope: str | None = None
    dpop_key_file: Path | None = None  # rule 8
    dpop: bool = False


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    """One device (camera, reader, matcher or bridge) allowed to POST reads (rule 5): exactly one of
    ``token_sha256`` and ``token_file``."""

    name: str
    lanes: tuple[str, ...]
    kinds: tuple[str, ...]
    token_sha256: str | None = None
    token_file: Path | None = None
    trusted_face_matcher: bool = False


@dataclass(frozen=True, slots=True)
class OfficerSettings:
    """One officer who may clear a lane's latch over the HTTP source (rule 5, lane.py rule 9): exactly
    one of ``token_sha256`` and ``token_file``, never a device's token."""

    name: str
    token_sha256: str | None = None
    token_file: Path | None = None


@dataclass(frozen=True, slots=True)
class HttpSourceSettings:
    host: str = "127.0.0.1"
    port: int = 8089
    devices: tuple[DeviceSettings, ...] = ()  # empty: no token asked (dev = true only)
    officers: tuple[OfficerSettings, ...] = ()  # who may clear a latch here (none: the CLI only)
    health_host: str | None = None  # the liveness listener (plain HTTP, /livez only); default: host
    health_port: int | None = None  # None: no liveness listener of its own
    cert_file: Path | None = None  # rule 5: TLS, the source's certificate (with key_file)
    key_file: Path | None = None
    client_ca_file: Path | None = None  # mutual TLS: a device must show a certificate this CA signed
    allow_insecure: bool = False  # rule 5: plain HTTP beyond this host outside dev (a warning at each start)

    @property
    def tls(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "quaygate"
    client_id: str = ""
    username: str | None = None
    password_file: Path | None = None
    keepalive: int = 30
    # /healthz's mqtt.status says "reconnecting" for this long after the broker is lost, "down" after it.
    connection_grace_seconds: float = 60.0
    tls: bool = False
    ca_file: Path | None = None  # None with tls: the system's CAs
    cert_file: Path | None = None  # a client certificate (with key_file)
    key_file: Path | None = None
    trusted_face_matcher: bool = False


@dataclass(frozen=True, slots=True)
class OfflineSettings:
    enabled: bool = False
    passes: Path | None = None
    refresh_seconds: float = 60.0
    reconcile_seconds: float = 5.0
    store_max_age_seconds: float = 900.0
    ban_list_max_age_seconds: float = 86400.0


@dataclass(frozen=True, slots=True)
class BarrierSettings:
    kind: str = "log"
    url: str | None = None
    timeout: float = 2.0
    token_file: Path | None = None  # rule 9: Authorization: Bearer <token>
    username: str | None = None  # or HTTP Basic (RFC 7617), the password from password_file
    password_file: Path | None = None
    ca_file: Path | None = None  # https: the CA of the controller's certificate (default: the system's)
    cert_file: Path | None = None  # https: our client certificate (with key_file)
    key_file: Path | None = None
    allow_insecure: bool = False
    presence: bool = False  # mqtt: an "open" only while its controller's status is "online" (sinks.py rule 7)

    @property
    def has_credentials(self) -> bool:
        return self.token_file is not None or self.password_file is not None or self.cert_file is not None


@dataclass(frozen=True, slots=True)
class BarrierSigningSettings:
    """Rule 9: every barrier command signed (a compact JWS, ES256 or Ed25519) with this key."""

    key_file: Path
    key_id: str | None = None
    lifetime_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class LaneSettings:
    lane: str
    direction: str = "in"
    mode: str = "commit"
    window_seconds: float = 30.0
    require: tuple[str, ...] = ("plate", "container", "badge")
    face_wait_seconds: float = 0.0
    sources: tuple[str, ...] = ()
    barrier: BarrierSettings = field(default_factory=BarrierSettings)
    max_pending: int = 4  # trucks gathering reads at once; one more evicts the oldest (hold + officer)
    read_age_seconds: float = 30.0  # a read observed longer before it arrived is refused (a replay)
    clock_slack_seconds: float = 5.0  # a read observed longer after it arrived is refused (a clock ahead)
    queue_size: int = 1000  # reads waiting at this lane; one more is refused (default: the top-level queue_size)


@dataclass(frozen=True, slots=True)
class AdapterSettings:
    terminal: str
    outbox: Path
    service: ServiceSettings
    auth: AuthSettings
    lanes: tuple[LaneSettings, ...]
    http: HttpSourceSettings | None = None
    mqtt: MqttSettings | None = None
    offline: OfflineSettings = field(default_factory=OfflineSettings)
    barrier_signing: BarrierSigningSettings | None = None
    badge_scheme: str = "alfapass"
    act_seconds: float = 60.0
    retry_seconds: float = 5.0
    tick_seconds: float = 0.5
    queue_size: int = 1000  # the lanes' default queue_size (rule 7); one more is refused (HTTP 503, MQTT dropped)
    log_level: str = "INFO"
    dev: bool = False
    # The outbox's and pass store's seal key (seal.py); None: ``default_seal_key_file(outbox)``.
    seal_key_file: Path | None = None

    @property
    def seal_key(self) -> Path:
        return self.seal_key_file or default_seal_key_file(self.outbox)


def default_seal_key_file(outbox: Path) -> Path:
    """Beside the outbox: ``outbox.sqlite3`` has ``outbox-seal.key`` (review 172, finding 1)."""
    return outbox.with_name(outbox.stem + "-seal.key")


def load(path: str | Path) -> AdapterSettings:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError("--config", f"{p} is not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{p} is not valid TOML: {exc}") from None
    return parse(doc, base=p.parent)


# ---- the pieces ----------------------------------------------------------------------------------


class _Table:
    """One TOML table with the key path it came from; every getter names the key in its error."""

    def __init__(self, raw: Any, path: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(path, "must be a table")
        unknown = sorted(set(raw) - set(allowed))
        if unknown:
            raise ConfigError(f"{path}.{unknown[0]}" if path else unknown[0],
                              f"unknown key (known: {', '.join(allowed)})")
        self.raw, self.path = raw, path

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.raw

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.raw.get(name, default)
        if value is None:
            if required:
                raise ConfigError(self.key(name), "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(self.key(name), "must be a non-empty string")
        return value.strip()

    def req(self, name: str) -> str:
        value = self.string(name, required=True)
        assert value is not None
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise ConfigError(self.key(name), f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    def number(self, name: str, default: float, *, low: float = 0.0, high: float = math.inf,
               exclusive_low: bool = True) -> float:
        value = self.raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(self.key(name), "must be a number")
        if (value <= low if exclusive_low else value < low) or value > high:
            bound = f"above {low:g}" if exclusive_low else f"at least {low:g}"
            upper = f" and at most {high:g}" if high < math.inf else ""
            raise ConfigError(self.key(name), f"must be {bound}{upper}")
        return float(value)

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        value = self.raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(self.key(name), f"must be a whole number from {low} to {high}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), "must be true or false")
        return value

    def strings(self, name: str, default: tuple[str, ...], choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
        value = self.raw.get(name, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self.key(name), "must be a list of strings")
        for v in value:
            if choices is not None and v not in choices:
                raise ConfigError(self.key(name), f"{v!r} is not one of {', '.join(choices)}")
        if len(set(value)) != len(value):
            raise ConfigError(self.key(name), "names an entry twice")
        return tuple(value)

    def path_(self, name: str, base: Path, *, required: bool = False) -> Path | None:
        value = self.string(name, required=required)
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p


def _url(t: _Table, name: str, *, required: bool = False, https: bool = False) -> str | None:
    value = t.string(name, required=required)
    if value is None:
        return None
    problem = url_problem(value)
    if problem is not None:
        raise ConfigError(t.key(name), problem)
    if https and urlsplit(value).scheme != "https":
        raise ConfigError(t.key(name), "must be https:// (set dev = true for a local test service)")
    return value.rstrip("/")


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def url_problem(value: str) -> str | None:
    """Rule 11: why the adapter could not send to ``value`` (None: it can), found when the settings are
    read, never at the first command. The message never repeats the URL."""
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        return "must be a URL without spaces or control characters"
    try:
        parts = urlsplit(value)
    except ValueError:
        return ("is not a URL the adapter can use: its host is not written right (an IPv6 address goes in "
                "brackets: http://[fd00::5]:8080/barrier)")
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if "@" in parts.netloc:  # review 173: httpx sent it as HTTP Basic, and it was printed and logged
        return ("may not hold a user name or password: a secret lives in a file of its own (a barrier's "
                "token_file or username and password_file, auth.client_secret_file), never in a URL, which is "
                "printed and logged")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        return ("may not have a query string or fragment ('?', '#'): a secret lives in a file of its own, "
                "never in a URL, which is printed and logged")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.rpartition("@")[2].endswith(":")):
        return "has a port that is not a number from 1 to 65535"
    host = parts.hostname or ""
    if not host:
        return "names no host"
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "names a host in brackets that is not an IPv6 address"
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return "names a host that is not an IPv4 address"
    else:
        name = host[:-1] if host.endswith(".") else host
        if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in name.split(".")):
            return ("names a host that is not a host name (letters, digits and '-', in labels of at most 63, "
                    "written in ASCII: an international name in its xn-- form)")
    try:
        httpx.URL(value)
    except httpx.InvalidURL:
        return "is not a URL the adapter can use"
    return None


_TOP = ("terminal", "outbox", "badge_scheme", "act_seconds", "retry_seconds", "tick_seconds", "log_level", "dev",
        "service", "auth", "http", "mqtt", "offline", "lanes", "queue_size", "barrier_signing", "seal_key_file")


def parse(doc: Mapping[str, Any], *, base: Path = Path(".")) -> AdapterSettings:
    """Rules 1 to 4 over a parsed TOML document; relative file paths are taken from ``base``."""
    top = _Table(doc, "", _TOP)
    dev = top.boolean("dev", False)
    terminal = top.req("terminal")
    outbox = top.path_("outbox", base, required=True)
    assert outbox is not None

    s = _Table(doc.get("service", {}), "service", ("base_url", "issuer", "timeout", "attempts", "max_retry_after"))
    base_url = _url(s, "base_url", required=True, https=not dev)
    assert base_url is not None
    service = ServiceSettings(base_url=base_url, issuer=_url(s, "issuer", https=not dev) or base_url,
                              timeout=s.number("timeout", 2.0, high=60),
                              attempts=s.integer("attempts", 3, low=1, high=10),
                              max_retry_after=s.number("max_retry_after", 3.0, high=30, exclusive_low=False))

    a = _Table(doc.get("auth", {}), "auth", ("client_id", "client_secret_file", "private_key_file", "key_id",
                                             "algorithm", "audience", "scope", "dpop", "dpop_key_file"))
    dpop_key_file = a.path_("dpop_key_file", base)
    auth = AuthSettings(client_id=a.req("client_id"), client_secret_file=a.path_("client_secret_file", base),
                        private_key_file=a.path_("private_key_file", base), key_id=a.string("key_id"),
                        algorithm=a.string("algorithm"), audience=_url(a, "audience"), scope=a.string("scope"),
                        dpop_key_file=dpop_key_file, dpop=a.boolean("dpop", dpop_key_file is not None))
    if auth.dpop and auth.dpop_key_file is None:  # rule 8
        raise ConfigError("auth.dpop_key_file", "is required with dpop = true (make the key: quaygate gate-adapter "
                                                "--config ... --make-keys)")
    if auth.client_secret_file is not None and auth.private_key_file is not None:
        raise ConfigError("auth.private_key_file", "give client_secret_file or private_key_file, not both")
    if auth.algorithm is not None and auth.algorithm not in ("ES256", "PS256", "RS256", "EdDSA"):
        raise ConfigError("auth.algorithm", "must be ES256, PS256, RS256 or EdDSA")

    http = None
    if "http" in doc:
        http = _http(doc["http"], base, dev)
    mqtt = _mqtt(doc["mqtt"], base, dev) if "mqtt" in doc else None

    o = _Table(doc.get("offline", {}), "offline", ("enabled", "passes", "refresh_seconds", "reconcile_seconds",
                                                   "store_max_age_seconds", "ban_list_max_age_seconds"))
    offline = OfflineSettings(
        enabled=o.boolean("enabled", False), passes=o.path_("passes", base),
        refresh_seconds=o.number("refresh_seconds", 60.0, low=1.0, exclusive_low=False, high=3600),
        reconcile_seconds=o.number("reconcile_seconds", 5.0, high=3600),
        store_max_age_seconds=o.number("store_max_age_seconds", 900.0, high=86400),
        ban_list_max_age_seconds=o.number("ban_list_max_age_seconds", 86400.0, high=7 * 86400))
    if offline.enabled and offline.passes is None:
        offline = dataclasses.replace(offline, passes=outbox.with_name(outbox.stem + "-passes.sqlite3"))

    configured = tuple(name for name, section in (("http", http), ("mqtt", mqtt)) if section is not None)
    queue_size = top.integer("queue_size", 1000, low=1, high=MAX_QUEUE_SIZE)  # rule 7: each lane's default
    raw_lanes = doc.get("lanes")
    if not isinstance(raw_lanes, list) or not raw_lanes:
        raise ConfigError("lanes", "give at least one [[lanes]] table")
    lanes = tuple(_lane(raw, i, configured, mqtt is not None, dev, base=base, queue_size=queue_size)
                  for i, raw in enumerate(raw_lanes))
    seen: set[str] = set()
    for i, lane in enumerate(lanes):
        if lane.lane in seen:
            raise ConfigError(f"lanes[{i}].lane", f"lane {lane.lane!r} is configured twice")
        seen.add(lane.lane)
    if not configured:
        raise ConfigError("http", "configure a source: an [http] or an [mqtt] section")
    http_lanes = {ln.lane for ln in lanes if "http" in ln.sources}
    for i, device in enumerate(http.devices if http is not None else ()):
        for name in device.lanes:
            if name not in http_lanes:
                raise ConfigError(f"http.devices[{i}].lanes", f"names {name!r}, which is no lane fed by http")
    barrier_signing = _barrier_signing(doc["barrier_signing"], base) if "barrier_signing" in doc else None
    for i, lane in enumerate(lanes):  # rule 9
        risk = barrier_risk(lane.barrier, signed=barrier_signing is not None)
        if risk is not None and risk[1] and not dev and lane.barrier.kind == "mqtt":
            raise ConfigError(f"lanes[{i}].barrier.kind", f"{risk[0]}; {_SIGNED_MQTT_BARRIER}")
        if risk is not None and risk[1] and not dev and not lane.barrier.allow_insecure:
            raise ConfigError(f"lanes[{i}].barrier.url", f"{risk[0]}; {_SECURE_BARRIER}")

    act_seconds = top.number("act_seconds", 60.0, high=3600)
    if service.timeout * service.attempts > act_seconds:  # lane.py rule 2, client.py rule 8
        raise ConfigError("service.attempts", f"{service.attempts} tries of service.timeout {service.timeout:g} s "
                                              f"take longer than act_seconds ({act_seconds:g} s), past which no "
                                              "answer moves a barrier: lower them or raise act_seconds")

    return AdapterSettings(
        terminal=terminal, outbox=outbox, service=service, auth=auth, lanes=lanes, http=http, mqtt=mqtt,
        offline=offline, barrier_signing=barrier_signing,
        badge_scheme=top.string("badge_scheme", "alfapass") or "alfapass",
        act_seconds=act_seconds,
        retry_seconds=top.number("retry_seconds", 5.0, high=3600),
        tick_seconds=top.number("tick_seconds", 0.5, high=60),
        queue_size=queue_size,
        log_level=top.choice("log_level", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")), dev=dev,
        seal_key_file=top.path_("seal_key_file", base) or default_seal_key_file(outbox))


def _devices(h: _Table, base: Path) -> tuple[DeviceSettings, ...]:
    raw = h.raw.get("devices", [])
    if not isinstance(raw, list):
        raise ConfigError(h.key("devices"), "must be [[http.devices]] tables")
    devices: list[DeviceSettings] = []
    for i, item in enumerate(raw):
        t = _Table(item, f"{h.key('devices')}[{i}]", ("name", "token_sha256", "token_file", "lanes", "kinds",
                                                      "trusted_face_matcher"))
        name, digest, token_file = _credential(t, base, "device", devices)
        if digest is not None and any(d.token_sha256 == digest for d in devices):
            raise ConfigError(t.key("token_sha256"), "is another device's token: give each device its own")
        for key in ("lanes", "kinds"):
            if not t.has(key):
                raise ConfigError(t.key(key), "is required (a device sends only what it is allowed to)")
        lanes = t.strings("lanes", ())  # each a lane fed by http: checked once the lanes are read
        kinds = t.strings("kinds", (), READ_KINDS)
        if not lanes or not kinds:
            raise ConfigError(t.key("lanes" if not lanes else "kinds"), "must name at least one")
        matcher = t.boolean("trusted_face_matcher", False)
        if matcher and "face" not in kinds:
            raise ConfigError(t.key("trusted_face_matcher"), "is true, but kinds does not name \"face\"")
        devices.append(DeviceSettings(name=name, lanes=lanes, kinds=kinds, token_sha256=digest,
                                      token_file=token_file, trusted_face_matcher=matcher))
    return tuple(devices)


def _credential(t: _Table, base: Path, kind: str, earlier: Sequence[DeviceSettings | OfficerSettings]
                ) -> tuple[str, str | None, Path | None]:
    """A device's or an officer's name (unique among ``earlier``), and its token: as a SHA-256 (lower
    case, 64 hex digits) or in a file, exactly one of the two."""
    name = t.req("name")
    if not _DEVICE_NAME.match(name):
        raise ConfigError(t.key("name"), "must be at most 64 letters, digits, '_', '.' or '-'")
    if any(e.name == name for e in earlier):
        raise ConfigError(t.key("name"), f"{kind} {name!r} is configured twice")
    digest, token_file = t.string("token_sha256"), t.path_("token_file", base)
    if (digest is None) == (token_file is None):
        raise ConfigError(t.key("token_sha256"), "give token_sha256 or token_file, exactly one")
    if digest is not None:
        digest = digest.lower()
        if not _SHA256_HEX.match(digest):
            raise ConfigError(t.key("token_sha256"), "must be 64 hex digits (quaygate gate-adapter --mint-token)")
    return name, digest, token_file


def _officers(h: _Table, base: Path, devices: tuple[DeviceSettings, ...]) -> tuple[OfficerSettings, ...]:
    raw = h.raw.get("officers", [])
    if not isinstance(raw, list):
        raise ConfigError(h.key("officers"), "must be [[http.officers]] tables")
    officers: list[OfficerSettings] = []
    for i, item in enumerate(raw):
        t = _Table(item, f"{h.key('officers')}[{i}]", ("name", "token_sha256", "token_file"))
        name, digest, token_file = _credential(t, base, "officer", officers)
        if digest is not None:
            if any(d.token_sha256 == digest for d in devices):
                raise ConfigError(t.key("token_sha256"), "is a device's token: an officer's token is never a "
                                                         "camera's (mint one of its own)")
            if any(o.token_sha256 == digest for o in officers):
                raise ConfigError(t.key("token_sha256"), "is another officer's token: give each officer their own")
        officers.append(OfficerSettings(name=name, token_sha256=digest, token_file=token_file))
    return tuple(officers)


def _http(raw: Any, base: Path, dev: bool) -> HttpSourceSettings:
    """Rule 5: who may post reads (devices), who may clear a latch (officers), and TLS for a source that
    listens beyond this host; the liveness listener."""
    h = _Table(raw, "http", ("host", "port", "devices", "officers", "cert_file", "key_file", "client_ca_file",
                             "allow_insecure", "health_host", "health_port"))
    devices = _devices(h, base)
    host = h.string("host", "127.0.0.1") or "127.0.0.1"
    health_port = h.integer("health_port", 0, low=1, high=65535) if h.has("health_port") else None
    http = HttpSourceSettings(host=host,
                              port=h.integer("port", 8089, low=1, high=65535), devices=devices,
                              officers=_officers(h, base, devices),
                              health_host=(h.string("health_host") or host) if health_port is not None else None,
                              health_port=health_port,
                              cert_file=h.path_("cert_file", base), key_file=h.path_("key_file", base),
                              client_ca_file=h.path_("client_ca_file", base),
                              allow_insecure=h.boolean("allow_insecure", False))
    if h.has("health_host") and health_port is None:
        raise ConfigError(h.key("health_port"), "is required with health_host")
    if health_port is not None and health_port == http.port:
        raise ConfigError(h.key("health_port"), "must differ from port (the liveness listener is a socket of its own)")
    if (http.cert_file is None) != (http.key_file is None):
        raise ConfigError(h.key("key_file" if http.cert_file else "cert_file"), "give cert_file and key_file together")
    if http.client_ca_file is not None and not http.tls:
        raise ConfigError(h.key("client_ca_file"), "needs cert_file and key_file (mutual TLS is TLS first)")
    if dev:
        return http
    if not http.devices:
        raise ConfigError("http.devices", "give each device that POSTs reads a [[http.devices]] entry with "
                                          "its token (mint one: quaygate gate-adapter --mint-token); without "
                                          "one anyone on the network could post reads (set dev = true for a "
                                          "local test only)")
    risk = http_risk(http)
    if risk is not None and not http.allow_insecure:
        raise ConfigError(h.key("cert_file"), f"{risk}: give cert_file and key_file (and client_ca_file for "
                                              f"devices with certificates), or allow_insecure = true for a "
                                              f"camera network nothing else reaches (a warning at each start)")
    return http


def http_risk(http: HttpSourceSettings) -> str | None:
    """Rule 5: what an attacker on the camera network could take from this source; None: nothing (TLS,
    or a source only this host reaches)."""
    if http.tls or _is_loopback(http.host):
        return None
    return (f"the source listens on {http.host} without TLS: device tokens and reads cross the network in "
            f"clear, for anyone on it to copy and post their own")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _mqtt(raw: Any, base: Path, dev: bool) -> MqttSettings:
    m = _Table(raw, "mqtt", ("host", "port", "prefix", "client_id", "username", "password_file", "keepalive",
                             "connection_grace_seconds", "tls", "ca_file", "cert_file", "key_file",
                             "trusted_face_matcher"))
    prefix = m.string("prefix", "quaygate") or "quaygate"
    if any(ch in prefix for ch in "#+\x00") or "" in prefix.split("/"):
        raise ConfigError("mqtt.prefix", "must be a topic prefix of one or more levels ('site/quaygate'), "
                                         "without wildcards or an empty level (a leading, trailing or double '/')")
    tls = m.boolean("tls", False)
    mqtt = MqttSettings(host=m.string("host", "127.0.0.1") or "127.0.0.1",
                        port=m.integer("port", 8883 if tls else 1883, low=1, high=65535), prefix=prefix,
                        client_id=m.string("client_id") or "",
                        username=m.string("username"), password_file=m.path_("password_file", base),
                        keepalive=m.integer("keepalive", 30, low=5, high=3600),
                        connection_grace_seconds=m.number("connection_grace_seconds", 60.0, low=1.0, high=3600.0,
                                                                          exclusive_low=False),
                        tls=tls,
                        ca_file=m.path_("ca_file", base), cert_file=m.path_("cert_file", base),
                        key_file=m.path_("key_file", base),
                        trusted_face_matcher=m.boolean("trusted_face_matcher", False))
    for key in ("ca_file", "cert_file", "key_file"):
        if getattr(mqtt, key) is not None and not tls:
            raise ConfigError(m.key(key), "needs tls = true (without it nothing would be encrypted)")
    if (mqtt.cert_file is None) != (mqtt.key_file is None):
        raise ConfigError(m.key("key_file"), "give cert_file and key_file together")
    if mqtt.password_file is not None and mqtt.username is None:
        raise ConfigError(m.key("username"), "is required with password_file")
    if not dev:
        if mqtt.cert_file is None and (mqtt.username is None or mqtt.password_file is None):
            raise ConfigError(m.key("username"), "give username and password_file, or a TLS client certificate "
                                                 "(cert_file, key_file): a broker that lets us in without them "
                                                 "lets anyone publish reads (set dev = true for a local test broker)")
        if not tls and not _is_loopback(mqtt.host):
            raise ConfigError(m.key("tls"), f"must be true for a broker on another host ({mqtt.host}): the "
                                            f"password and the reads would cross the network in clear")
    return mqtt


def _lane(raw: Any, i: int, configured: tuple[str, ...], has_mqtt: bool, dev: bool, *,
          base: Path = Path("."), queue_size: int = 1000) -> LaneSettings:
    t = _Table(raw, f"lanes[{i}]", ("lane", "direction", "mode", "window_seconds", "require", "face_wait_seconds",
                                    "sources", "barrier", "max_pending", "read_age_seconds", "clock_slack_seconds",
                                    "queue_size"))
    lane = t.req("lane")
    if any(ch in lane for ch in "/#+ ") or len(lane) > 64:
        raise ConfigError(t.key("lane"), "must be at most 64 characters without '/', '#', '+' or spaces")
    sources = t.strings("sources", configured, SOURCES)
    for name in sources:
        if name not in configured:
            raise ConfigError(t.key("sources"), f"names {name!r}, but there is no [{name}] section")
    if not sources:
        raise ConfigError(t.key("sources"), "must name at least one source")
    require = t.strings("require", ("plate", "container", "badge"), READ_KINDS)
    if not require:
        raise ConfigError(t.key("require"), "must name at least one kind of read")
    b = _Table(raw.get("barrier", {}), t.key("barrier"), _BARRIER_KEYS)
    barrier = _barrier(b, base)
    if barrier.kind == "http" and barrier.url is None:
        raise ConfigError(b.key("url"), "is required for an http barrier")
    if barrier.kind == "mqtt" and not has_mqtt:
        raise ConfigError(b.key("kind"), "is mqtt, but there is no [mqtt] section")
    direction, mode = t.choice("direction", "in", DIRECTIONS), t.choice("mode", "commit", MODES)
    if mode == "check" and barrier.kind != "log":
        raise ConfigError(t.key("mode"), f"lane {lane!r} is check, which uses no right, so it cannot drive a "
                                         f"barrier that opens ({b.key('kind')} is {barrier.kind}): use mode "
                                         f"\"commit\" or barrier kind \"log\"")
    return LaneSettings(lane=lane, direction=direction, mode=mode,
                        window_seconds=t.number("window_seconds", 30.0, high=3600), require=require,
                        face_wait_seconds=t.number("face_wait_seconds", 0.0, exclusive_low=False, high=600),
                        sources=sources, barrier=barrier, max_pending=t.integer("max_pending", 4, low=1, high=64),
                        # rule 7: bounded, so a typo cannot let a camera's buffer of old reads replay
                        read_age_seconds=t.number("read_age_seconds", 30.0, high=MAX_READ_AGE_SECONDS),
                        clock_slack_seconds=t.number("clock_slack_seconds", 5.0, high=MAX_CLOCK_SLACK_SECONDS),
                        queue_size=t.integer("queue_size", queue_size, low=1, high=MAX_QUEUE_SIZE))


# ---- barriers (rule 9) ---------------------------------------------------------------------------

_BARRIER_KEYS = ("kind", "url", "timeout", "token_file", "username", "password_file", "ca_file", "cert_file",
                 "key_file", "allow_insecure", "presence")
_HTTP_BARRIER_KEYS = _BARRIER_KEYS[3:10]  # token_file to allow_insecure
_SECURE_BARRIER = ("use https:// with credentials (token_file; username and password_file; or cert_file and "
                   "key_file), or sign the commands ([barrier_signing]) for a controller that verifies them; "
                   "allow_insecure = true accepts it, with a warning at each start, for a controller on a "
                   "cable of its own (docs/gate-adapter.md)")


_SIGNED_MQTT_BARRIER = ("add a [barrier_signing] section (a key file; quaygate gate-adapter --make-keys makes it) "
                        "and give its public key to the barrier controllers, which refuse a command unsigned, "
                        "expired or heard before (docs/gate-adapter.md)")


def _barrier(b: _Table, base: Path) -> BarrierSettings:
    barrier = BarrierSettings(kind=b.choice("kind", "log", BARRIERS), url=_url(b, "url"),
                              timeout=b.number("timeout", 2.0, high=60), token_file=b.path_("token_file", base),
                              username=b.string("username"), password_file=b.path_("password_file", base),
                              ca_file=b.path_("ca_file", base), cert_file=b.path_("cert_file", base),
                              key_file=b.path_("key_file", base), allow_insecure=b.boolean("allow_insecure", False),
                              presence=b.boolean("presence", False))
    if b.has("presence") and barrier.kind != "mqtt":
        raise ConfigError(b.key("presence"), f"is for an mqtt barrier (this one is {barrier.kind})")
    if barrier.kind != "http":
        for key in _HTTP_BARRIER_KEYS:
            if b.has(key):
                raise ConfigError(b.key(key), f"is for an http barrier (this one is {barrier.kind})")
        return barrier
    if barrier.token_file is not None and (barrier.username is not None or barrier.password_file is not None):
        raise ConfigError(b.key("token_file"), "give token_file, or username and password_file, not both")
    if (barrier.username is None) != (barrier.password_file is None):
        raise ConfigError(b.key("password_file" if barrier.username else "username"),
                          "give username and password_file together")
    if barrier.username is not None and ":" in barrier.username:
        raise ConfigError(b.key("username"), "may not contain ':' (RFC 7617 §2)")
    for key in ("ca_file", "cert_file", "key_file"):
        if getattr(barrier, key) is not None and not (barrier.url or "").startswith("https://"):
            raise ConfigError(b.key(key), "needs an https:// url (without it nothing would be encrypted)")
    if (barrier.cert_file is None) != (barrier.key_file is None):
        raise ConfigError(b.key("key_file"), "give cert_file and key_file together")
    return barrier


def barrier_risk(barrier: BarrierSettings, *, signed: bool) -> tuple[str, bool] | None:
    """Rule 9: what an attacker on the terminal network could do to this barrier's commands, and whether
    that refuses the settings outside dev (True) or is a warning at each start (False); None: nothing.
    A controller on this host (loopback) is as safe as the adapter itself. An ``mqtt`` barrier unsigned
    is refused outside dev whatever its broker (the broker may hold a command back, sinks.py rule 6)."""
    if barrier.kind == "mqtt":
        if signed:
            return None
        return ("the mqtt barrier's commands are not signed: an \"open\" the broker or the network held back "
                "could lift the barrier for the truck behind, and anyone the broker lets publish on its topic "
                "could send one", True)
    if barrier.kind != "http" or barrier.url is None:
        return None
    parts = urlsplit(barrier.url)
    if _is_loopback(parts.hostname or ""):
        return None
    if parts.scheme == "http":
        if not signed:
            return (f"{barrier.url} is http:// to another host and the commands are not signed: anyone on the "
                    f"terminal network could send it an \"open\", or replay one it overheard", True)
        if barrier.token_file is not None or barrier.password_file is not None:
            return (f"the token or password for {barrier.url} crosses the network in clear (only the commands' "
                    f"signatures protect them)", False)
        return None
    if not signed and not barrier.has_credentials:
        return (f"{barrier.url} is sent no credentials and the commands are not signed: a controller that "
                f"takes them from us takes them from anyone who reaches it", True)
    return None


def presence_risk(barrier: BarrierSettings, topic: str) -> str | None:
    """Rule 9 (review 173): what an mqtt barrier without ``presence`` leaves open, said at each start outside
    dev; None: nothing (not mqtt, or presence set). ``topic``: its controller's status topic."""
    if barrier.kind != "mqtt" or barrier.presence:
        return None
    return (f"an \"open\" counts as heard once written to the broker, even when no barrier controller listens "
            f"(its truck then stands at a shut barrier, the right used, nobody called): set presence = true on "
            f"this lane's barrier once its controller keeps a retained status on {topic} (\"online\", its last "
            f"will \"offline\"; docs/gate-adapter.md)")


# Rule 9 (review 116): a signed "open" is a replay window as long as it lives; a controller on NTP needs
# a few seconds, and 60 let a held-back open lift a barrier for a truck a minute later.
MAX_SIGNED_LIFETIME = 10.0


def _barrier_signing(raw: Any, base: Path) -> BarrierSigningSettings:
    t = _Table(raw, "barrier_signing", ("key_file", "key_id", "lifetime_seconds"))
    key_file = t.path_("key_file", base, required=True)
    assert key_file is not None
    return BarrierSigningSettings(key_file=key_file, key_id=t.string("key_id"),
                                  lifetime_seconds=t.number("lifetime_seconds", 5.0, low=1.0, exclusive_low=False,
                                                            high=MAX_SIGNED_LIFETIME))

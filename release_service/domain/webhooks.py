"""Webhooks as integrators see them: Standard Webhooks 1.0.0 signing, the retry schedule, the rules.

Integrators verify with off-the-shelf Standard Webhooks code, so every detail below follows the spec
(https://www.standardwebhooks.com, spec/standard-webhooks.md):

- secrets are ``whsec_`` + base64 of 24..64 random bytes; the HMAC key is the decoded bytes;
- the signed content is ``{webhook-id}.{webhook-timestamp}.{body}``, HMAC-SHA256, base64, as ``v1,<sig>``;
- ``webhook-signature`` is a space-delimited list, so during a secret rotation we sign with the new
  and the previous secret and the receiver accepts either ("zero downtime secret rotation");
- ``webhook-id`` stays the same across retries (the receiver's idempotency key), the timestamp is
  the attempt's, and the receiver refuses timestamps outside a tolerance (replay protection).

Standard library only (STYLE.md #1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import re
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from secrets import token_bytes
from urllib.parse import urlsplit

import idna

from . import storable
from .errors import DomainError, ErrorCode

# until an INVALID_WEBHOOK_SUBSCRIPTION code exists. The offending field travels in the context.
INVALID_SUBSCRIPTION = ErrorCode.INVALID_WEBHOOK_SUBSCRIPTION

# ---- signing (Standard Webhooks "Signature scheme" and "Webhook headers") ----------------------------

SECRET_PREFIX = "whsec_"  # noqa: S105 - the spec's marker, not a secret
SECRET_BYTES = 32  # the spec asks for 24..64 bytes
DEFAULT_TOLERANCE = timedelta(minutes=5)  # what the reference libraries use


class SignatureError(Exception):
    """A delivery a receiver must refuse; ``reason`` is a short machine word."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a ``whsec_`` secret."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise ValueError("a webhook secret is whsec_ followed by base64") from exc
    if not 24 <= len(key) <= 64:
        raise ValueError("a webhook secret holds 24 to 64 bytes")
    return key


def sign(secret: str, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64 HMAC-SHA256>`` signature of ``{msg_id}.{timestamp}.{body}``."""
    if "." in msg_id:  # the spec: ids must not contain the delimiter, or content could be shifted
        raise ValueError("a webhook id must not contain '.'")
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secrets: Sequence[str], *, msg_id: str, at: datetime, body: bytes) -> dict[str, str]:
    """The three ``webhook-*`` headers, signed with every secret currently valid."""
    timestamp = int(at.timestamp())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id=msg_id, timestamp=timestamp, body=body)
                                      for s in secrets),
    }


def verify(secret: str, *, body: bytes, headers: Mapping[str, str], now: datetime,
           tolerance: timedelta = DEFAULT_TOLERANCE) -> None:
    """Check a delivery as a receiver would; raises SignatureError. Header names are case-insensitive."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, sigs = (lowered.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and stamp and sigs):
        raise SignatureError("missing_headers")
    if "." in msg_id:  # the delimiter of the signed content: never one of our ids (``sign``)
        raise SignatureError("bad_id")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise SignatureError("bad_timestamp") from None
    if timestamp < (now - tolerance).timestamp():
        raise SignatureError("timestamp_too_old")
    if timestamp > (now + tolerance).timestamp():
        raise SignatureError("timestamp_too_new")
    expected = sign(secret, msg_id=msg_id, timestamp=timestamp, body=body).encode()
    # Constant-time comparison of each offered v1 signature (spec, "Verifying signatures").
    if not any(hmac.compare_digest(expected, s.encode()) for s in sigs.split(" ") if s.startswith("v1,")):
        raise SignatureError("no_matching_signature")


def encode_body(payload: Mapping[str, object]) -> bytes:
    """Minified ASCII JSON: what we sign is byte for byte what we send, and decodes as UTF-8 anywhere."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode()


@dataclass(frozen=True, slots=True)
class SigningSecrets:
    """What is sealed in ``secret_enc``: the current secret, and the previous one during a rotation."""

    current: str
    previous: str | None = None
    previous_until: datetime | None = None

    def active(self, now: datetime) -> tuple[str, ...]:
        if self.previous and self.previous_until and now < self.previous_until:
            return (self.current, self.previous)
        return (self.current,)

    def rotated(self, new: str, *, now: datetime, overlap: timedelta) -> SigningSecrets:
        if overlap <= timedelta(0):
            return SigningSecrets(new)
        return SigningSecrets(new, self.current, now + overlap)

    def to_bytes(self) -> bytes:
        until = self.previous_until.isoformat() if self.previous_until else None
        data = {"current": self.current, "previous": self.previous, "previous_until": until}
        return json.dumps(data).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> SigningSecrets:
        data = json.loads(raw)
        until = data.get("previous_until")
        return cls(data["current"], data.get("previous"), datetime.fromisoformat(until) if until else None)


def secret_aad(subscription_id: uuid.UUID) -> bytes:
    """Associated data binding a sealed secret to its subscription row (and to this use of the key)."""
    return f"webhook-secret:{subscription_id}".encode()


# ---- retries (Standard Webhooks "Deliverability and reliability") -----------------------------------

RETRY_DELAYS = (
    timedelta(seconds=5), timedelta(seconds=30), timedelta(minutes=2), timedelta(minutes=10),
    timedelta(minutes=30), timedelta(hours=1), timedelta(hours=3), timedelta(hours=6),
)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1  # the first try, then one per delay; then the delivery is dead
MAX_JITTER = 0.2  # a delay grows by up to 20%, so failing endpoints are not retried in lockstep
MAX_RETRY_AFTER = timedelta(hours=6)


def retry_delay(failed_attempts: int, *, jitter: float,
                retry_after: timedelta | None = None) -> timedelta | None:
    """How long after the ``failed_attempts``-th failure to try again; None once the last has failed.

    ``jitter`` is a draw in [0, 1] supplied by the caller (0 gives the bare schedule). A receiver's
    ``Retry-After`` may push the next try later, never earlier, and is capped.
    """
    if failed_attempts < 1:
        raise ValueError("failed_attempts starts at 1")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter is a draw in [0, 1]")
    if failed_attempts >= MAX_ATTEMPTS:
        return None
    delay = RETRY_DELAYS[failed_attempts - 1] * (1 + MAX_JITTER * jitter)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


_DELTA_SECONDS = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() also takes '²' and '٣'
_DELTA_DIGITS = 9  # read at most this many: more is longer than MAX_RETRY_AFTER anyway


def parse_retry_after(value: str | None) -> timedelta | None:
    """``Retry-After`` in delta-seconds (RFC 9110 §10.2.3), at most ``MAX_RETRY_AFTER``; anything else
    (the HTTP-date form, ignored for clock skew; signs, spaces inside, other scripts' digits) is None.

    A receiver writes what it likes here, and this runs on the dispatcher's path to recording the
    outcome: it never raises. A value too long to read is taken as the longest wait (RFC 9111 §1.2.2
    does so for a delta-seconds it cannot represent), and capped, before any int or timedelta is made
    of it (a huge one overflowed timedelta; over 4300 digits, int() refused it)."""
    if value is None:
        return None
    value = value.strip()
    if not _DELTA_SECONDS.fullmatch(value):
        return None
    cap = int(MAX_RETRY_AFTER.total_seconds())
    seconds = cap if len(value) > _DELTA_DIGITS else min(int(value), cap)
    return timedelta(seconds=seconds)


# ---- subscriptions -----------------------------------------------------------------------------

# Every event type the release engine emits (release.py ``_emit``); tests guard against drift.
KNOWN_EVENT_TYPES = frozenset({
    "release.issued", "release.updated", "release.blocked", "release.unblocked", "release.revoked",
    "release.deleted", "release.expired",
    "release.transfer.requested", "release.transfer.accepted", "release.transfer.declined",
    "release.transfer.withdrawn",
    "release.transfer.cancelled",  # still pending when the right ended, was used at the gate, or an end was deactivated
    "release.nominated", "release.renominated", "release.nomination.accepted", "release.nomination.refused",
    "release.nomination.screening_alert",  # a port ban landed on the nominated driver (issue 4)
    "release.light.commercial", "release.light.customs", "release.light.terminal",
    "release.gated_in", "release.gate_override", "release.completed",
    "release.gate_offline_flagged",  # an offline gate use collided or lacked a pass (issue 5, gate passes)
    "release.container_contested",  # another line issued a live right on the container here (review 99)
    # port security deactivated / reactivated the company holding the right (review 130): the line decides
    "release.holder_deactivated", "release.holder_reactivated",
})
# "release", "release.transfer", "release.light": what may stand before ".*" in a pattern.
_PREFIXES = frozenset(t.rsplit(".", n)[0] for t in KNOWN_EVENT_TYPES for n in range(1, t.count(".") + 1))
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_EVENT_PATTERNS = 50
# Each active subscription gets a delivery row per event of its organisation's audience (a line's batch of
# 10 000 rights: 10 000 rows each) and a send: a company needs a few endpoints, not a thousand (review 110).
MAX_SUBSCRIPTIONS = 20


@dataclass(frozen=True, slots=True)
class Subscription:
    id: uuid.UUID
    organisation_id: uuid.UUID
    url: str
    event_types: tuple[str, ...]
    active: bool
    created_at: datetime
    # Who made it: the client, and the person when one made it in a console (his subscriptions close when
    # his acting role there ends, services/webhooks.py ``creator_left``). Both None: made before that was
    # kept (migration 0027), by a machine client or by someone unknown.
    created_by_client_id: str | None = None
    created_by_person_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    id: uuid.UUID  # also the ``webhook-id`` header: the same for every attempt
    subscription_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: str  # pending | delivered | dead | withheld | cancelled (adapters/outbox.py)
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, object] = field(default_factory=dict)


def matches(patterns: Iterable[str], event_type: str) -> bool:
    """A pattern is an exact type or ``prefix.*`` (``release.transfer.*`` is not ``release.issued``)."""
    for pattern in patterns:
        if pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def patterns_matching(event_type: str) -> tuple[str, ...]:
    """Every pattern that ``matches`` ``event_type``: the type itself and ``prefix.*`` for each of its
    dotted prefixes (``release.transfer.accepted``: itself, ``release.transfer.*``, ``release.*``). A
    store finds the subscriptions of an event with these, in one statement, by the same rule."""
    stars = [event_type[: i + 1] + "*" for i, ch in enumerate(event_type) if ch == "."]
    return (event_type, *stars)


def validate_event_types(patterns: Iterable[str]) -> tuple[str, ...]:
    """Known types or ``prefix.*`` of known types: a typo must fail now, not silently receive nothing."""
    cleaned = sorted({p.strip() for p in patterns})
    if not cleaned:
        raise DomainError(INVALID_SUBSCRIPTION, "Choose at least one event type.", field="event_types")
    if len(cleaned) > MAX_EVENT_PATTERNS:
        raise DomainError(INVALID_SUBSCRIPTION, "Too many event types.", field="event_types")
    for p in cleaned:
        if p not in KNOWN_EVENT_TYPES and not (p.endswith(".*") and p[:-2] in _PREFIXES):
            raise DomainError(INVALID_SUBSCRIPTION, f"Unknown event type {p[:80]!r}.", field="event_types")
    return tuple(cleaned)


def validate_url(url: str, *, allow_insecure_localhost: bool = False) -> str:
    """An https URL to a public host; plain http only to this machine, and only when allowed (dev).

    Payloads name companies and containers, so they travel only over TLS (spec, "Enforcing HTTPS").
    Literal private, loopback and link-local addresses, in every numeric form and inside every IPv6
    form that carries an IPv4 address (``is_public_address``), are refused as a first guard against
    SSRF (spec, "Server side request forgery"); what a host name resolves to is checked by the egress
    path, at each delivery, by the same rule (adapters/webhook_dispatcher.py).
    """
    url = url.strip()
    if len(url) > 2000:
        raise DomainError(INVALID_SUBSCRIPTION, "The URL is too long.", field="url")
    try:
        storable.text(url)  # urlsplit strips tabs and line breaks, and keeps a NUL for the database to refuse
    except ValueError:
        raise DomainError(INVALID_SUBSCRIPTION, "The URL holds a control character.", field="url") from None
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise DomainError(INVALID_SUBSCRIPTION, "The URL is malformed.", field="url") from None
    if not host or parts.username is not None or parts.password is not None or parts.fragment:
        raise DomainError(INVALID_SUBSCRIPTION, "The URL needs a host, and no credentials or fragment.",
                          field="url")
    try:
        wire = wire_host(host)
    except ValueError:
        raise DomainError(INVALID_SUBSCRIPTION, "The URL's host is not a valid host name.", field="url") from None
    if not host.isascii():  # kept as it is sent and judged: Host, TLS's SNI and the resolver get the ASCII form
        shown = f"[{wire}]" if ":" in wire else wire
        url = parts._replace(netloc=shown + (f":{parts.port}" if parts.port is not None else "")).geturl()
    host = wire
    local = host.removesuffix(".") in LOCAL_HOSTS
    if parts.scheme == "http" and not (local and allow_insecure_localhost):
        raise DomainError(INVALID_SUBSCRIPTION, "Webhook URLs must use https.", field="url")
    if parts.scheme not in ("http", "https"):
        raise DomainError(INVALID_SUBSCRIPTION, "Webhook URLs must use https.", field="url")
    if local and not allow_insecure_localhost:
        raise DomainError(INVALID_SUBSCRIPTION, "Webhook URLs must reach a public host.", field="url")
    if not local and _is_internal_ip(host):
        raise DomainError(INVALID_SUBSCRIPTION, "Webhook URLs must reach a public host.", field="url")
    return url


def wire_host(host: str) -> str:
    """A URL's host (``urlsplit``'s ``hostname``) as it goes on the wire, to the resolver, in Host and in
    TLS's SNI: lower case, a name in Unicode in its IDNA form with UTS #46's mapping, which reads fullwidth
    digits and ideographic full stops as a resolver does (``１２７。0。0。1`` is 127.0.0.1: review 171,
    finding 5). ValueError for a host that has no such form: an empty label (``a..b``), a malformed
    ``xn--`` label, a name IDNA refuses. An IPv6 literal is kept as it is (``hostname`` strips its brackets)."""
    if ":" in host:
        ipaddress.IPv6Address(host.split("%", 1)[0])  # ValueError if it is no address
        return host.lower()
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:  # a UnicodeError: a ValueError, said plainly
            raise ValueError(f"no IDNA form: {exc}") from None
    host = host.lower()
    for label in host.removesuffix(".").split("."):
        if not label:
            raise ValueError("an empty label")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError as exc:
                raise ValueError(f"a malformed A-label: {exc}") from None
    return host


def trail_url(url: str) -> dict[str, str]:
    """What the audit trail keeps of a subscription's URL: where it goes (``url``: scheme, host and
    port), never the path or the query. Receivers often carry a credential there (a per-hook token, a
    signed query string), and the trail is append-only and hash-chained: what it holds cannot be taken
    out later. Not even a digest of the whole URL: a short token beside its origin is found again by
    trying them all (a 6-digit one in half a second). The entry's subject, the subscription, names the
    whole URL for as long as the subscription exists."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    port = parts.port
    return {"url": f"{parts.scheme}://{shown}" + (f":{port}" if port is not None else "")}


def _is_internal_ip(host: str) -> bool:
    """A literal address that is not public, in any form a resolver takes: dotted quads, and the older
    numeric forms ``127.1``, ``2130706433``, ``0x7f.0.0.1`` (no real host name is all digits)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not _NUMERIC_HOST.fullmatch(host):
            return False  # a name, not a literal address: the egress path checks what it resolves to
        try:
            ip = ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            return True  # numeric, but no address: refused
    return not is_public_address(ip)


# IPv6 forms that carry an IPv4 address a packet may end up at (a translator or a tunnel takes it
# there), so ``is_global`` of the IPv6 address says nothing of where it goes: judged by the IPv4
# address inside, or refused outright where none is meant for the public Internet.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix: the last 32 bits
_REFUSED_V6 = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # RFC 8215: NAT64 for local use
    ipaddress.IPv6Network("2001::/32"),  # RFC 4380: Teredo (the client address inside is obfuscated)
    ipaddress.IPv6Network("::/96"),  # RFC 4291 §2.5.5.1: IPv4-compatible, deprecated (and :: and ::1)
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # RFC 2765: IPv4-translated (SIIT)
    ipaddress.IPv6Network("fec0::/10"),  # RFC 3879: site-local, deprecated (global to Python 3.11's is_global)
)


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a webhook may be sent to ``ip``: a global address, and for an IPv6 address that embeds
    an IPv4 one (mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) a global
    IPv4 address inside it; Teredo, local-use NAT64, IPv4-compatible and -translated forms never."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return embedded.is_global
        if any(ip in net for net in _REFUSED_V6):
            return False
    return ip.is_global and not ip.is_multicast  # multicast: never one receiver (global to is_global)


_NUMERIC_HOST = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+))*\.?")

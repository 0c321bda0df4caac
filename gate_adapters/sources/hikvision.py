"""Hikvision ISAPI ANPR alarms (``EventNotificationAlert`` with ``eventType`` ANPR) into plate reads.

A camera in listening ("alarm host") mode POSTs each plate either as bare XML or, with pictures, as
``multipart/form-data``: one XML part (``anpr.xml``) plus JPEG parts (``licensePlatePicture.jpg``,
``detectionPicture.jpg``). We read the XML part only; the pictures are not kept.

The fields we use (ISAPI "XML_EventNotificationAlert_ANPR", namespace
``http://www.hikvision.com/ver20/XMLSchema`` or ``http://www.isapi.org/ver20/XMLSchema``)::

    EventNotificationAlert/ipAddress, macAddress, channelID   camera identity; channel -> lane (mapping)
    EventNotificationAlert/dateTime                           ISO 8601 with offset
    EventNotificationAlert/eventType, eventState              "ANPR", "active"
    EventNotificationAlert/ANPR/licensePlate                  the plate text
    EventNotificationAlert/ANPR/confidenceLevel               0..100 (percent), scaled to 0..1
    EventNotificationAlert/ANPR/country | CRIndex             letters, or a Hikvision numeric index

Rules: a body over ``MAX_BYTES`` is refused before parsing; XML with a DOCTYPE or an ENTITY
declaration is refused (entity expansion, "billion laughs"; we never need a DTD); a channel that is
not in the lane mapping is refused (a read on an unknown lane must not join some truck); a heartbeat
(any non-ANPR event, or ``eventState`` inactive) gives ``None``; "unknown" as plate text is refused
as a missing plate.

Multipart is scanned before ``email.parser`` sees it (``_refuse_hostile_multipart``, review 109): that
parser's time grows with the parts and with each part's header parameters (150 000 tiny parts, or one
header of 40 000 ``a=b;`` parameters, held a thread for seconds to minutes), and it recurses once per
nested multipart (RecursionError at ~1 000 levels). So a body is refused, with the parser never called,
when its content type is over ``MAX_CONTENT_TYPE_CHARS``, when it holds more than ``MAX_PARTS + 1``
boundary delimiters, when a delimiter is not a line of its own (RFC 2046 §5.1.1: the parser would not
split there, so our scan and its parse would disagree), when a part's header block is over
``MAX_PART_HEADER_BYTES``, or when a part is itself multipart or a message (a camera sends an XML part
and JPEGs, never a nested body). Review 116: within those bounds the parser still took seconds (15 parts
each with a ``Content-Type: image/jpeg;`` of 2 000 ``a=b;`` parameters, 121 KB: 4.8 s; a part of 4 MiB
of ``\n``: 2.5 s), so a body is also refused when one header line (the content type too) has more than
``MAX_HEADER_PARAMETERS`` parameters (``;``), or when it has more than ``MAX_LINES`` lines (every part's
together: the parser's work is per line; a 4 MiB JPEG has some 32 000 line-break bytes by chance). What
the scan lets through costs the parser tens of milliseconds.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
import xml.etree.ElementTree as ET  # noqa: S405 - DTDs are refused by _refuse_dtd before ET sees the bytes
import xml.parsers.expat
from collections.abc import Mapping

from gate_adapters.core.reads import PlateRead, SourceError, country_alpha2
from gate_adapters.sources import check_size, parse_iso_datetime

SOURCE = "hikvision"
MAX_BYTES = 4 * 1024 * 1024  # multipart with two JPEGs
MAX_XML_BYTES = 64 * 1024
MAX_PARTS = 16
MAX_PART_HEADER_BYTES = 8 * 1024  # a real part's headers are a few hundred bytes
MAX_CONTENT_TYPE_CHARS = 1024  # "multipart/form-data; boundary=..." is under a hundred
MAX_HEADER_PARAMETERS = 32  # ";" on one header line; a real one has one to three
MAX_LINES = 65_536  # in the whole body: twice what random bytes (a JPEG's) of MAX_BYTES hold
# RFC 2046 §5.1.1: a boundary is 1 to 70 of these characters, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_FOLDED = re.compile(rb"(?:\r\n|\r|\n)[ \t]+")  # a header line continued on the next (RFC 5322 §2.2.3)
_BLANK_LINE = re.compile(rb"\r\n\r\n|\n\n|\r\r")
# A part's Content-Type naming multipart/* or message/* (whatever comes before it on the line: a comment).
_NESTED = re.compile(rb"content-type[ \t]*:[^\r\n]*?(?:multipart|message)\s*/", re.IGNORECASE)
_DELIMITER_END = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n|\Z)")  # after "--boundary": RFC 2046 §5.1.1
NAMESPACES = frozenset(
    {
        "http://www.hikvision.com/ver20/XMLSchema",
        "http://www.isapi.org/ver20/XMLSchema",
        "http://www.std-cgi.com/ver20/XMLSchema",  # older firmware
        "",
    }
)
_NO_PLATE = frozenset({"UNKNOWN", "NOPLATE", ""})


def parse(
    body: bytes,
    content_type: str | None = None,
    *,
    channel_lanes: Mapping[str, str] | None = None,
    lane: str | None = None,
    country_codes: Mapping[str, str] | None = None,
    max_bytes: int = MAX_BYTES,
) -> PlateRead | None:
    """One ANPR alarm to a ``PlateRead`` (or ``None`` for a heartbeat).

    ``lane`` wins when given (MQTT relays name the lane in the topic); otherwise ``channel_lanes``
    maps ``"<ipAddress>/<channelID>"`` or ``"<channelID>"`` to our lane id. ``country_codes`` maps
    Hikvision's numeric country/region index to ISO 3166-1 alpha-2 (the index table is firmware
    documentation we do not copy; an unmapped index gives country ``None``).
    """
    check_size(body, max_bytes)
    xml_bytes = _xml_part(bytes(body), content_type)
    root = _parse_xml(xml_bytes)
    return _to_read(root, channel_lanes=channel_lanes or {}, lane=lane, country_codes=country_codes or {})


def _xml_part(body: bytes, content_type: str | None) -> bytes:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media.startswith("multipart/"):
        return _xml_from_multipart(body, content_type or "")
    if media in ("", "application/xml", "text/xml"):
        return body
    raise SourceError(f"content type {media} is not XML or multipart")


def _xml_from_multipart(body: bytes, content_type: str) -> bytes:
    if "boundary=" not in content_type.lower():
        raise SourceError("multipart body without a boundary")
    if len(content_type) > MAX_CONTENT_TYPE_CHARS:
        raise SourceError(f"multipart content type is longer than {MAX_CONTENT_TYPE_CHARS} characters")
    if content_type.count(";") > MAX_HEADER_PARAMETERS:
        raise SourceError(f"multipart content type has more than {MAX_HEADER_PARAMETERS} parameters "
                          f"(refused before parsing)")
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    try:
        # The boundary as the parser itself reads it from the (short) header: the scan and the parse
        # split the body at the same lines.
        boundary = parser.parsebytes(header, headersonly=True).get_boundary()
        if boundary is None or not _BOUNDARY.fullmatch(boundary):
            raise SourceError("multipart boundary is missing or not 1 to 70 plain characters")
        _refuse_hostile_multipart(body, boundary.encode("ascii"))
        message = parser.parsebytes(header + body)
        if not message.is_multipart():
            raise SourceError("multipart body has no parts")
        parts = list(message.iter_parts())  # type: ignore[attr-defined]
        if len(parts) > MAX_PARTS:
            raise SourceError("multipart body has too many parts")
        for part in parts:
            if part.is_multipart():  # the scan refuses these; never walk into one
                raise SourceError("multipart body nests a multipart or message part")
            media = part.get_content_type()
            filename = (part.get_filename() or part.get_param("name", header="content-disposition") or "").lower()
            if media in ("application/xml", "text/xml") or str(filename).endswith(".xml"):
                payload = part.get_payload(decode=True)
                if not isinstance(payload, bytes) or not payload:
                    raise SourceError("XML part is empty")
                return payload
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - STYLE.md #7: the email package's errors on a hostile body
        # (RecursionError, and the IndexError/AttributeError/ValueError its header parser has raised on
        # malformed parameters) become ours: a 400, never a 500 or a dead thread.
        raise SourceError("multipart body is malformed") from exc
    raise SourceError("multipart body has no XML part")


def _refuse_hostile_multipart(body: bytes, boundary: bytes) -> None:
    """The scan before the parse (module docstring): ``SourceError`` when the body has more delimiters
    than ``MAX_PARTS`` parts need, more than ``MAX_LINES`` lines, a delimiter inside a line, a part's
    headers over ``MAX_PART_HEADER_BYTES``, a header line with more than ``MAX_HEADER_PARAMETERS``
    parameters, or a nested multipart or message part. Linear in the body's size."""
    delimiter = b"--" + boundary
    if body.count(delimiter) > MAX_PARTS + 1:  # the parts' delimiters and the closing one
        raise SourceError(f"multipart body has too many parts: more than {MAX_PARTS} (refused before parsing)")
    # Line breaks as the parser counts them: \r\n, \r or \n (review 116: its time grows per line).
    if body.count(b"\n") + body.count(b"\r") - body.count(b"\r\n") >= MAX_LINES:
        raise SourceError(f"multipart body has more than {MAX_LINES} lines (refused before parsing)")
    start = body.find(delimiter)
    while start != -1:
        if start > 0 and body[start - 1:start] not in (b"\r", b"\n"):
            raise SourceError("multipart boundary appears inside a line (refused before parsing)")
        end = _DELIMITER_END.match(body, start + len(delimiter))
        if end is None:
            raise SourceError("multipart boundary line has more after it (refused before parsing)")
        if end.group(1):  # the closing delimiter: what follows is the epilogue, never parsed
            return
        following = body.find(delimiter, end.end())
        part = body[end.end():len(body) if following == -1 else following]
        if part[:2] == b"\r\n" or part[:1] in (b"\r", b"\n"):
            head = b""  # no headers: the blank line comes first
        else:
            blank = _BLANK_LINE.search(part, 0, MAX_PART_HEADER_BYTES + 4)
            head = part if blank is None else part[:blank.start()]
        if len(head) > MAX_PART_HEADER_BYTES:
            raise SourceError(f"multipart part has more than {MAX_PART_HEADER_BYTES} bytes of headers "
                              f"(refused before parsing)")
        unfolded = _FOLDED.sub(b" ", head)
        if any(line.count(b";") > MAX_HEADER_PARAMETERS for line in unfolded.splitlines()):
            raise SourceError(f"multipart part has a header of more than {MAX_HEADER_PARAMETERS} parameters "
                              f"(refused before parsing)")
        if _NESTED.search(unfolded):
            raise SourceError("multipart body nests a multipart or message part (refused before parsing)")
        start = following


def _refuse_dtd(xml_bytes: bytes) -> None:
    """Scan with expat first: any DOCTYPE or ENTITY declaration stops us before a tree is built."""

    def refuse(*_args: object) -> None:
        raise SourceError("XML with a DOCTYPE or ENTITY declaration is refused")

    scanner = xml.parsers.expat.ParserCreate()
    scanner.StartDoctypeDeclHandler = refuse
    scanner.EntityDeclHandler = refuse
    scanner.UnparsedEntityDeclHandler = refuse
    try:
        scanner.Parse(xml_bytes, True)
    except SourceError:
        raise
    except xml.parsers.expat.ExpatError as exc:
        raise SourceError("XML is malformed or truncated") from exc
    except (LookupError, ValueError) as exc:  # an XML declaration naming an unknown encoding
        raise SourceError("XML declares an unknown encoding") from exc


def _parse_xml(xml_bytes: bytes) -> ET.Element:
    if len(xml_bytes) > MAX_XML_BYTES:
        raise SourceError(f"XML part is larger than {MAX_XML_BYTES} bytes")
    _refuse_dtd(xml_bytes)
    try:
        root = ET.fromstring(xml_bytes)  # noqa: S314 - no DTD can reach here (_refuse_dtd)
    except (ET.ParseError, LookupError, ValueError) as exc:
        raise SourceError("XML is malformed or truncated") from exc
    namespace, local = _split(root.tag)
    if local != "EventNotificationAlert" or namespace not in NAMESPACES:
        raise SourceError("XML is not an ISAPI EventNotificationAlert")
    return root


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag


def _child(parent: ET.Element, name: str) -> ET.Element | None:
    """A direct child by local name, whatever namespace prefix the firmware used."""
    for child in parent:
        if _split(child.tag)[1] == name:
            return child
    return None


def _text(parent: ET.Element, name: str) -> str | None:
    node = _child(parent, name)
    if node is None or node.text is None or not node.text.strip():
        return None
    return node.text.strip()


def _to_read(
    root: ET.Element, *, channel_lanes: Mapping[str, str], lane: str | None, country_codes: Mapping[str, str]
) -> PlateRead | None:
    event_type = (_text(root, "eventType") or "").upper()
    if event_type != "ANPR" or (_text(root, "eventState") or "active").lower() != "active":
        return None  # heartbeat (videoloss/inactive) or an event we do not correlate
    anpr = _child(root, "ANPR")
    if anpr is None:
        raise SourceError("ANPR element is missing")
    plate = _text(anpr, "licensePlate")
    if plate is None or plate.upper() in _NO_PLATE:
        raise SourceError("licensePlate is missing")
    channel = _text(root, "channelID") or _text(root, "dynChannelID") or "1"
    ip = _text(root, "ipAddress") or ""
    the_lane = lane or channel_lanes.get(f"{ip}/{channel}") or channel_lanes.get(channel)
    if the_lane is None:
        raise SourceError("camera channel is not mapped to a lane")
    camera = f"{_text(root, 'macAddress') or ip or 'unknown'}/{channel}"
    return PlateRead(
        lane=the_lane,
        source=SOURCE,
        camera=camera,
        text=plate,
        country=_country(anpr, country_codes),
        confidence=_percent(_text(anpr, "confidenceLevel")),
        observed_at=parse_iso_datetime(_text(root, "dateTime"), "dateTime"),
    )


def _percent(raw: str | None) -> float:
    if raw is None:
        raise SourceError("confidenceLevel is missing")
    try:
        value = float(raw)
    except ValueError as exc:
        raise SourceError("confidenceLevel is not a number") from exc
    if not 0.0 <= value <= 100.0:  # also refuses NaN
        raise SourceError("confidenceLevel is outside 0..100")
    return value / 100.0


def _country(anpr: ET.Element, country_codes: Mapping[str, str]) -> str | None:
    for name in ("CRIndex", "country"):
        raw = _text(anpr, name)
        if raw is None:
            continue
        if raw.isdigit():
            mapped = country_codes.get(raw)
            if mapped is not None:
                return country_alpha2(mapped)
            continue
        return country_alpha2(raw)
    return None
